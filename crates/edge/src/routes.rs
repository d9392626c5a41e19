//! Which route a request takes (longest path prefix) and whether its client
//! may use it. Denial is the default: a route admits only what its `allow`
//! list names.

use std::net::IpAddr;

use b24_nodes::{AddrSet, LiveNodes};
use ipnet::IpNet;

use crate::config::{Allow, RouteConfig};

/// Why a request was refused; also the `reason` label of the denial metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DenyReason {
    /// No route's prefix matches the path.
    NoRoute,
    /// The route admits the nodes list and the client is not in it.
    NotInNodes,
    /// The route admits the nodes list, and there is no list at all.
    NodesUnavailable,
    /// The route admits only networks the client is not in.
    NotAllowed,
}

impl DenyReason {
    pub const ALL: [DenyReason; 4] = [
        DenyReason::NoRoute,
        DenyReason::NotInNodes,
        DenyReason::NodesUnavailable,
        DenyReason::NotAllowed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DenyReason::NoRoute => "no_route",
            DenyReason::NotInNodes => "not_in_nodes",
            DenyReason::NodesUnavailable => "nodes_unavailable",
            DenyReason::NotAllowed => "not_allowed",
        }
    }
}

/// One route's admission rule.
#[derive(Debug, Clone)]
struct Rule {
    any: bool,
    nodes: bool,
    networks: Option<AddrSet>,
}

/// The routes, ordered for longest-prefix matching.
#[derive(Debug, Clone)]
pub struct RouteTable {
    /// (prefix, index into the configured routes, rule), longest prefix first.
    entries: Vec<(String, usize, Rule)>,
    /// Addresses admitted wherever `nodes` is (`nodes.extra`).
    extra: Option<AddrSet>,
}

fn set_of(networks: &[IpNet]) -> Option<AddrSet> {
    (!networks.is_empty()).then(|| AddrSet::from_networks(networks))
}

impl RouteTable {
    pub fn new(routes: &[RouteConfig], extra: &[IpNet]) -> RouteTable {
        let mut entries: Vec<(String, usize, Rule)> = routes
            .iter()
            .enumerate()
            .map(|(index, route)| {
                let networks: Vec<IpNet> = route
                    .allow
                    .iter()
                    .filter_map(|a| match a {
                        Allow::Network(net) => Some(*net),
                        _ => None,
                    })
                    .collect();
                let rule = Rule {
                    any: route.allow.contains(&Allow::Any),
                    nodes: route.allow.contains(&Allow::Nodes),
                    networks: set_of(&networks),
                };
                (route.prefix.clone(), index, rule)
            })
            .collect();
        entries.sort_by_key(|entry| std::cmp::Reverse(entry.0.len()));
        RouteTable {
            entries,
            extra: set_of(extra),
        }
    }

    /// The route for `path` (its index in the configuration) if `client` may
    /// use it, else why not. The second value is the matched route's index
    /// even when the client is denied.
    #[inline]
    pub fn decide(
        &self,
        path: &str,
        client: IpAddr,
        nodes: &LiveNodes,
    ) -> (Option<usize>, Result<(), DenyReason>) {
        let Some((_, index, rule)) = self
            .entries
            .iter()
            .find(|(prefix, _, _)| path.starts_with(prefix.as_str()))
        else {
            return (None, Err(DenyReason::NoRoute));
        };
        (Some(*index), self.admit(rule, client, nodes))
    }

    #[inline]
    fn admit(&self, rule: &Rule, client: IpAddr, nodes: &LiveNodes) -> Result<(), DenyReason> {
        if rule.any {
            return Ok(());
        }
        if rule
            .networks
            .as_ref()
            .is_some_and(|set| set.contains(client))
        {
            return Ok(());
        }
        if !rule.nodes {
            return Err(DenyReason::NotAllowed);
        }
        if self.extra.as_ref().is_some_and(|set| set.contains(client)) {
            return Ok(());
        }
        match nodes.contains(client) {
            Some(true) => Ok(()),
            Some(false) => Err(DenyReason::NotInNodes),
            None => Err(DenyReason::NodesUnavailable),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use b24_nodes::NodeList;
    use std::sync::Arc;

    fn table() -> RouteTable {
        let config = Config::from_toml(
            r#"
            [server]
            listen = "127.0.0.1:0"
            tls_cert = "c"
            tls_key = "k"
            [nodes]
            extra = ["192.0.2.9"]
            [[route]]
            prefix = "/"
            upstream = "http://127.0.0.1:1"
            allow = ["nodes"]
            [[route]]
            prefix = "/public/"
            upstream = "http://127.0.0.1:1"
            allow = ["any"]
            [[route]]
            prefix = "/office/"
            upstream = "http://127.0.0.1:1"
            allow = ["10.0.0.0/8", "2001:db8::/32"]
            [[route]]
            prefix = "/office/events/"
            upstream = "http://127.0.0.1:1"
            allow = ["nodes", "10.0.0.0/8"]
            "#,
        )
        .unwrap();
        RouteTable::new(&config.routes, &config.nodes.extra)
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn longest_prefix_and_rules() {
        let table = table();
        let nodes = LiveNodes::new();
        // No list yet: nodes routes fail closed, except for `extra`.
        assert_eq!(
            table.decide("/hook", ip("1.1.1.1"), &nodes),
            (Some(0), Err(DenyReason::NodesUnavailable))
        );
        assert_eq!(
            table.decide("/hook", ip("192.0.2.9"), &nodes),
            (Some(0), Ok(()))
        );
        nodes.store(Arc::new(
            NodeList::parse(br#"{"nodes":["1.1.1.1"]}"#, &Default::default()).unwrap(),
        ));
        assert_eq!(
            table.decide("/hook", ip("1.1.1.1"), &nodes),
            (Some(0), Ok(()))
        );
        assert_eq!(
            table.decide("/hook", ip("1.1.1.2"), &nodes),
            (Some(0), Err(DenyReason::NotInNodes))
        );
        assert_eq!(
            table.decide("/public/x", ip("1.1.1.2"), &nodes),
            (Some(1), Ok(()))
        );
        assert_eq!(
            table.decide("/office/a", ip("10.1.1.1"), &nodes),
            (Some(2), Ok(()))
        );
        assert_eq!(
            table.decide("/office/a", ip("2001:db8::5"), &nodes),
            (Some(2), Ok(()))
        );
        assert_eq!(
            table.decide("/office/a", ip("1.1.1.1"), &nodes),
            (Some(2), Err(DenyReason::NotAllowed))
        );
        assert_eq!(
            table.decide("/office/events/1", ip("1.1.1.1"), &nodes),
            (Some(3), Ok(()))
        );
        assert_eq!(
            table.decide("/office/events/1", ip("10.2.2.2"), &nodes),
            (Some(3), Ok(()))
        );
        assert_eq!(
            table.decide("/office/events/1", ip("8.8.8.8"), &nodes),
            (Some(3), Err(DenyReason::NotInNodes))
        );
        // IPv4-mapped IPv6 is the IPv4 address.
        assert_eq!(
            table.decide("/hook", ip("::ffff:1.1.1.1"), &nodes),
            (Some(0), Ok(()))
        );
    }

    #[test]
    fn no_route_without_a_catch_all() {
        let config = Config::from_toml(
            "[server]\nlisten = \"127.0.0.1:0\"\ntls_cert = \"c\"\ntls_key = \"k\"\n\
             [[route]]\nprefix = \"/hooks/\"\nupstream = \"http://127.0.0.1:1\"\nallow = [\"any\"]\n",
        )
        .unwrap();
        let table = RouteTable::new(&config.routes, &[]);
        let nodes = LiveNodes::new();
        assert_eq!(
            table.decide("/other", ip("1.1.1.1"), &nodes),
            (None, Err(DenyReason::NoRoute))
        );
        assert_eq!(
            table.decide("/hooks/1", ip("1.1.1.1"), &nodes),
            (Some(0), Ok(()))
        );
    }
}
