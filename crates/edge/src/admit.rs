//! Stage 4 of the request path, admission: which [`Route`] a request takes
//! (longest path prefix) and whether its client may use it, as one
//! [`Decision`]. Denial is the default: a route admits only what its
//! `allow` list names.

use std::net::IpAddr;

use b24_nodes::{AddrSet, LiveNodes};
use ipnet::IpNet;

use crate::config::{Allow, RouteConfig};
use crate::forward::UpstreamTarget;
use crate::metrics::{Metrics, RouteMetrics};

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
    /// A `proxy_protocol` listener was reached by a peer that is not a
    /// trusted proxy (so no client address can be believed).
    UntrustedPeer,
}

impl DenyReason {
    /// Every reason, in declaration order (the metrics index by it).
    pub const ALL: [DenyReason; 5] = [
        DenyReason::NoRoute,
        DenyReason::NotInNodes,
        DenyReason::NodesUnavailable,
        DenyReason::NotAllowed,
        DenyReason::UntrustedPeer,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DenyReason::NoRoute => "no_route",
            DenyReason::NotInNodes => "not_in_nodes",
            DenyReason::NodesUnavailable => "nodes_unavailable",
            DenyReason::NotAllowed => "not_allowed",
            DenyReason::UntrustedPeer => "untrusted_peer",
        }
    }
}

/// Who may use a route: anyone, the nodes list (plus `nodes.extra`), and/or
/// fixed networks.
#[derive(Debug, Clone)]
pub struct AllowRule {
    any: bool,
    nodes: bool,
    networks: Option<AddrSet>,
}

impl AllowRule {
    fn new(allow: &[Allow]) -> AllowRule {
        let networks: Vec<IpNet> = allow
            .iter()
            .filter_map(|a| match a {
                Allow::Network(net) => Some(*net),
                _ => None,
            })
            .collect();
        AllowRule {
            any: allow.contains(&Allow::Any),
            nodes: allow.contains(&Allow::Nodes),
            networks: set_of(&networks),
        }
    }

    pub fn admits_anyone(&self) -> bool {
        self.any
    }

    pub fn uses_nodes(&self) -> bool {
        self.nodes
    }
}

/// One configured route: everything a request that takes it needs.
#[derive(Debug)]
pub struct Route {
    /// Position in the configuration; keys the per-worker upstream pools.
    id: usize,
    prefix: String,
    rule: AllowRule,
    upstream: UpstreamTarget,
    metrics: RouteMetrics,
}

impl Route {
    pub fn id(&self) -> usize {
        self.id
    }

    /// The path prefix it matches.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn rule(&self) -> &AllowRule {
        &self.rule
    }

    pub fn upstream(&self) -> &UpstreamTarget {
        &self.upstream
    }

    pub fn metrics(&self) -> &RouteMetrics {
        &self.metrics
    }
}

/// What to do with a request.
#[derive(Debug, Clone, Copy)]
pub enum Decision<'t> {
    /// Forward it to this route's upstream.
    Forward(&'t Route),
    /// Refuse it (403); `route` is the route it matched, if any.
    Deny {
        route: Option<&'t Route>,
        reason: DenyReason,
    },
}

impl<'t> Decision<'t> {
    /// The route the request matched, admitted or not.
    pub fn route(&self) -> Option<&'t Route> {
        match *self {
            Decision::Forward(route) => Some(route),
            Decision::Deny { route, .. } => route,
        }
    }
}

/// What a client address alone says, before any request names a path:
/// the check that lets the edge refuse a connection before TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Screening {
    /// Some route admits this address by name (nodes, `extra`, networks).
    Listed,
    /// Only `any` routes admit it.
    AnyOnly,
    /// No route admits it, and why (the reason a request would get).
    Refused(DenyReason),
}

/// The routes, ordered for longest-prefix matching.
#[derive(Debug)]
pub struct RouteTable {
    /// Longest prefix first.
    routes: Vec<Route>,
    /// Addresses admitted wherever `nodes` is (`nodes.extra`).
    extra: Option<AddrSet>,
    /// For [`RouteTable::screen`]: the union of every route's rule.
    any_route: bool,
    nodes_route: bool,
    all_networks: Option<AddrSet>,
}

fn set_of(networks: &[IpNet]) -> Option<AddrSet> {
    (!networks.is_empty()).then(|| AddrSet::from_networks(networks))
}

impl RouteTable {
    /// The configured routes, each with its series in `metrics`.
    pub fn new(configs: &[RouteConfig], extra: &[IpNet], metrics: &Metrics) -> RouteTable {
        let mut routes: Vec<Route> = configs
            .iter()
            .enumerate()
            .map(|(id, config)| Route {
                id,
                prefix: config.prefix.clone(),
                rule: AllowRule::new(&config.allow),
                upstream: UpstreamTarget::new(config),
                metrics: metrics.route(&config.label),
            })
            .collect();
        routes.sort_by_key(|route| std::cmp::Reverse(route.prefix.len()));
        let networks: Vec<IpNet> = configs
            .iter()
            .flat_map(|config| config.allow.iter())
            .filter_map(|a| match a {
                Allow::Network(net) => Some(*net),
                _ => None,
            })
            .collect();
        RouteTable {
            any_route: routes.iter().any(|r| r.rule.any),
            nodes_route: routes.iter().any(|r| r.rule.nodes),
            all_networks: set_of(&networks),
            routes,
            extra: set_of(extra),
        }
    }

    /// Whether any route could admit `client`, whatever the path.
    #[inline]
    pub fn screen(&self, client: IpAddr, nodes: &LiveNodes) -> Screening {
        if self
            .all_networks
            .as_ref()
            .is_some_and(|set| set.contains(client))
        {
            return Screening::Listed;
        }
        let reason = if self.nodes_route {
            if self.extra.as_ref().is_some_and(|set| set.contains(client)) {
                return Screening::Listed;
            }
            match nodes.contains(client) {
                Some(true) => return Screening::Listed,
                Some(false) => DenyReason::NotInNodes,
                None => DenyReason::NodesUnavailable,
            }
        } else {
            DenyReason::NotAllowed
        };
        if self.any_route {
            Screening::AnyOnly
        } else {
            Screening::Refused(reason)
        }
    }

    /// The routes in configuration order.
    pub fn in_config_order(&self) -> Vec<&Route> {
        let mut routes: Vec<&Route> = self.routes.iter().collect();
        routes.sort_by_key(|route| route.id);
        routes
    }

    /// The route for `path` and whether `client` may use it.
    #[inline]
    pub fn decide(&self, path: &str, client: IpAddr, nodes: &LiveNodes) -> Decision<'_> {
        let Some(route) = self
            .routes
            .iter()
            .find(|route| path.starts_with(route.prefix.as_str()))
        else {
            return Decision::Deny {
                route: None,
                reason: DenyReason::NoRoute,
            };
        };
        match self.admit(&route.rule, client, nodes) {
            Ok(()) => Decision::Forward(route),
            Err(reason) => Decision::Deny {
                route: Some(route),
                reason,
            },
        }
    }

    #[inline]
    fn admit(&self, rule: &AllowRule, client: IpAddr, nodes: &LiveNodes) -> Result<(), DenyReason> {
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
        RouteTable::new(&config.routes, &config.nodes.extra, &Metrics::new())
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    /// The decision as (matched route id, admitted or why not).
    fn outcome(decision: Decision<'_>) -> (Option<usize>, Result<(), DenyReason>) {
        let route = decision.route().map(Route::id);
        match decision {
            Decision::Forward(_) => (route, Ok(())),
            Decision::Deny { reason, .. } => (route, Err(reason)),
        }
    }

    #[test]
    fn longest_prefix_and_rules() {
        let table = table();
        let nodes = LiveNodes::new();
        let decide = |path: &str, client: &str| outcome(table.decide(path, ip(client), &nodes));
        // No list yet: nodes routes fail closed, except for `extra`.
        assert_eq!(
            decide("/hook", "1.1.1.1"),
            (Some(0), Err(DenyReason::NodesUnavailable))
        );
        assert_eq!(decide("/hook", "192.0.2.9"), (Some(0), Ok(())));
        nodes.store(Arc::new(
            NodeList::parse(br#"{"nodes":["1.1.1.1"]}"#, &Default::default()).unwrap(),
        ));
        let decide = |path: &str, client: &str| outcome(table.decide(path, ip(client), &nodes));
        assert_eq!(decide("/hook", "1.1.1.1"), (Some(0), Ok(())));
        assert_eq!(
            decide("/hook", "1.1.1.2"),
            (Some(0), Err(DenyReason::NotInNodes))
        );
        assert_eq!(decide("/public/x", "1.1.1.2"), (Some(1), Ok(())));
        assert_eq!(decide("/office/a", "10.1.1.1"), (Some(2), Ok(())));
        assert_eq!(decide("/office/a", "2001:db8::5"), (Some(2), Ok(())));
        assert_eq!(
            decide("/office/a", "1.1.1.1"),
            (Some(2), Err(DenyReason::NotAllowed))
        );
        assert_eq!(decide("/office/events/1", "1.1.1.1"), (Some(3), Ok(())));
        assert_eq!(decide("/office/events/1", "10.2.2.2"), (Some(3), Ok(())));
        assert_eq!(
            decide("/office/events/1", "8.8.8.8"),
            (Some(3), Err(DenyReason::NotInNodes))
        );
        // IPv4-mapped IPv6 is the IPv4 address.
        assert_eq!(decide("/hook", "::ffff:1.1.1.1"), (Some(0), Ok(())));
    }

    #[test]
    fn screening_before_any_path_is_known() {
        let table = table();
        let nodes = LiveNodes::new();
        // No list: only the networks and `extra` are listed; `/public/` is
        // `any`, so nobody is refused outright.
        assert_eq!(table.screen(ip("10.1.1.1"), &nodes), Screening::Listed);
        assert_eq!(table.screen(ip("192.0.2.9"), &nodes), Screening::Listed);
        assert_eq!(table.screen(ip("1.1.1.1"), &nodes), Screening::AnyOnly);

        let config = Config::from_toml(
            r#"
            [server]
            listen = "127.0.0.1:0"
            tls_cert = "c"
            tls_key = "k"
            [[route]]
            prefix = "/"
            upstream = "http://127.0.0.1:1"
            allow = ["nodes"]
            [[route]]
            prefix = "/bitrix/admin/"
            upstream = "http://127.0.0.1:1"
            allow = ["10.0.0.0/8"]
            "#,
        )
        .unwrap();
        let table = RouteTable::new(&config.routes, &[], &Metrics::new());
        assert_eq!(
            table.screen(ip("1.1.1.1"), &nodes),
            Screening::Refused(DenyReason::NodesUnavailable)
        );
        nodes.store(Arc::new(
            NodeList::parse(br#"{"nodes":["1.1.1.1"]}"#, &Default::default()).unwrap(),
        ));
        assert_eq!(table.screen(ip("1.1.1.1"), &nodes), Screening::Listed);
        assert_eq!(table.screen(ip("10.0.0.1"), &nodes), Screening::Listed);
        assert_eq!(
            table.screen(ip("1.1.1.2"), &nodes),
            Screening::Refused(DenyReason::NotInNodes)
        );
    }

    #[test]
    fn no_route_without_a_catch_all() {
        let config = Config::from_toml(
            "[server]\nlisten = \"127.0.0.1:0\"\ntls_cert = \"c\"\ntls_key = \"k\"\n\
             [[route]]\nprefix = \"/hooks/\"\nupstream = \"http://127.0.0.1:1\"\nallow = [\"any\"]\n",
        )
        .unwrap();
        let table = RouteTable::new(&config.routes, &[], &Metrics::new());
        let nodes = LiveNodes::new();
        assert_eq!(
            outcome(table.decide("/other", ip("1.1.1.1"), &nodes)),
            (None, Err(DenyReason::NoRoute))
        );
        assert_eq!(
            outcome(table.decide("/hooks/1", ip("1.1.1.1"), &nodes)),
            (Some(0), Ok(()))
        );
    }

    #[test]
    fn reasons_are_listed_in_declaration_order() {
        for (index, reason) in DenyReason::ALL.into_iter().enumerate() {
            assert_eq!(reason as usize, index);
        }
    }
}
