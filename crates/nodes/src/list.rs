//! The validated nodes list and the `app.json` document it comes from.

use std::collections::BTreeSet;
use std::fmt;
use std::net::IpAddr;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde_json::Value;

use crate::addrset::AddrSet;
use crate::policy::{BROADEST_V4, BROADEST_V6, Special, broadest_for, special_range};

/// Bounds on a document and on what its entries may be, checked before and
/// while parsing it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest accepted body in bytes.
    pub max_bytes: usize,
    /// Largest accepted number of entries in `nodes`.
    pub max_entries: usize,
    /// Accept entries broader than /24 (IPv4) or /48 (IPv6). Off by default:
    /// Bitrix24 publishes single addresses.
    pub allow_broad: bool,
    /// Accept unspecified, loopback, private, link-local, multicast,
    /// documentation, benchmarking and other reserved ranges. Off by
    /// default; tests that use loopback or 198.18.0.0/15 turn it on.
    pub allow_special: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_bytes: 4 * 1024 * 1024,
            max_entries: 100_000,
            allow_broad: false,
            allow_special: false,
        }
    }
}

impl Limits {
    /// The default limits with special-purpose addresses allowed: what a
    /// test on loopback or in a network namespace needs.
    pub fn allowing_special() -> Limits {
        Limits {
            allow_special: true,
            ..Limits::default()
        }
    }
}

/// How the escape hatches are spelled, for error messages.
const BROAD_HATCH: &str = "nodesync --allow-broad, or allow_broad = true in b24-edge's [nodes]";
const SPECIAL_HATCH: &str =
    "nodesync --allow-special, or allow_special = true in b24-edge's [nodes]";

/// Why a document was rejected. Each message names the problem and, where
/// there is one, the offending entry, so an admin can see what the source
/// served.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("document is {size} bytes, over the limit of {limit} bytes")]
    TooLarge { size: usize, limit: usize },
    #[error("document is not JSON ({detail}); it starts with {start:?}")]
    NotJson { detail: String, start: String },
    #[error("document is an HTML page, not the JSON nodes list; it starts with {start:?}")]
    Html { start: String },
    #[error("document is JSON but not an object with a \"nodes\" key")]
    MissingNodes,
    #[error("\"nodes\" is not a list")]
    NodesNotList,
    #[error("\"nodes\" is empty")]
    Empty,
    #[error("\"nodes\" has {count} entries, over the limit of {limit}")]
    TooManyEntries { count: usize, limit: usize },
    #[error("entry #{index} of \"nodes\" is not a string: {value}")]
    NotAString { index: usize, value: String },
    #[error("entry #{index} of \"nodes\" is not an IP address or CIDR network: {entry:?}")]
    InvalidEntry { index: usize, entry: String },
    #[error(
        "entry #{index} of \"nodes\" is {entry}, broader than /{bound}; Bitrix24 publishes single \
         addresses, so the whole list is refused (to accept such entries on purpose: {BROAD_HATCH})"
    )]
    TooBroad {
        index: usize,
        entry: String,
        bound: u8,
    },
    #[error(
        "the entries of \"nodes\" merge into {network}, broader than /{bound}; Bitrix24 publishes \
         single addresses, so the whole list is refused (to accept such lists on purpose: {BROAD_HATCH})"
    )]
    MergedTooBroad { network: String, bound: u8 },
    #[error(
        "entry #{index} of \"nodes\" is {entry}, which is {kind} address space ({range}), never a \
         Bitrix24 server; the whole list is refused (to accept such entries on purpose: {SPECIAL_HATCH})"
    )]
    SpecialAddress {
        index: usize,
        entry: String,
        kind: Special,
        range: String,
    },
}

impl ParseError {
    /// Whether the document was valid but names addresses that are never
    /// Bitrix24's (too broad, or special-purpose): a list that would open
    /// the protected ports, refused by policy rather than for its syntax.
    pub fn is_unsafe(&self) -> bool {
        matches!(
            self,
            ParseError::TooBroad { .. }
                | ParseError::MergedTooBroad { .. }
                | ParseError::SpecialAddress { .. }
        )
    }
}

/// A validated, deduplicated and merged list of the networks Bitrix24 sends
/// events from, with a fast membership check.
///
/// The networks are kept in their minimal CIDR form (overlapping and
/// adjacent networks aggregated), sorted, so that every output derived from
/// the list is stable and diffs between two lists are meaningful.
#[derive(Clone, PartialEq, Eq)]
pub struct NodeList {
    v4: Vec<Ipv4Net>,
    v6: Vec<Ipv6Net>,
    set: AddrSet,
}

impl fmt::Debug for NodeList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeList")
            .field("v4", &self.v4.len())
            .field("v6", &self.v6.len())
            .finish()
    }
}

impl NodeList {
    /// Parses and validates an `app.json` document:
    /// `{"nodes": ["195.208.184.200", "2a02:6b8::/32", ...]}`.
    ///
    /// The whole document is rejected on the first problem: a list that is
    /// partly garbage is not a list to trust.
    pub fn parse(body: &[u8], limits: &Limits) -> Result<NodeList, ParseError> {
        if body.len() > limits.max_bytes {
            return Err(ParseError::TooLarge {
                size: body.len(),
                limit: limits.max_bytes,
            });
        }
        let doc: Value = serde_json::from_slice(body).map_err(|e| not_json(body, e))?;
        let nodes = doc.get("nodes").ok_or(ParseError::MissingNodes)?;
        let entries = nodes.as_array().ok_or(ParseError::NodesNotList)?;
        if entries.is_empty() {
            return Err(ParseError::Empty);
        }
        if entries.len() > limits.max_entries {
            return Err(ParseError::TooManyEntries {
                count: entries.len(),
                limit: limits.max_entries,
            });
        }
        let mut networks = Vec::with_capacity(entries.len());
        for (index, entry) in entries.iter().enumerate() {
            let text = entry.as_str().ok_or_else(|| ParseError::NotAString {
                index,
                value: truncate(&entry.to_string(), 60),
            })?;
            let net = parse_network(text).ok_or_else(|| ParseError::InvalidEntry {
                index,
                entry: truncate(text, 60),
            })?;
            check_entry(index, &net, limits)?;
            networks.push(net);
        }
        let list = NodeList::from_networks(networks);
        list.check_merged(limits)?;
        Ok(list)
    }

    /// Checks an already built list (one read back from a cache file, say)
    /// against the entry rules of `limits`, as [`NodeList::parse`] would.
    pub fn check(&self, limits: &Limits) -> Result<(), ParseError> {
        for (index, net) in self.networks().enumerate() {
            check_entry(index, &net, limits)?;
        }
        self.check_merged(limits)
    }

    /// Many narrow entries can add up to one broad block (two adjacent /25s
    /// are a /24; 512 adjacent /32s are a /23): the bound holds for what the
    /// firewall will actually admit.
    fn check_merged(&self, limits: &Limits) -> Result<(), ParseError> {
        if limits.allow_broad {
            return Ok(());
        }
        let v4 = self
            .v4
            .iter()
            .find(|n| n.prefix_len() < BROADEST_V4)
            .map(|n| (n.to_string(), BROADEST_V4));
        let v6 = self
            .v6
            .iter()
            .find(|n| n.prefix_len() < BROADEST_V6)
            .map(|n| (n.to_string(), BROADEST_V6));
        match v4.or(v6) {
            Some((network, bound)) => Err(ParseError::MergedTooBroad { network, bound }),
            None => Ok(()),
        }
    }

    /// Builds a list from networks (host bits are cleared, duplicates and
    /// overlaps merged). An empty input gives an empty list; callers that
    /// must never act on an empty list check [`NodeList::is_empty`].
    pub fn from_networks(networks: impl IntoIterator<Item = IpNet>) -> NodeList {
        let mut v4 = Vec::new();
        let mut v6 = Vec::new();
        for net in networks {
            match net.trunc() {
                IpNet::V4(n) => v4.push(n),
                IpNet::V6(n) => v6.push(n),
            }
        }
        let v4 = Ipv4Net::aggregate(&v4);
        let v6 = Ipv6Net::aggregate(&v6);
        let all: Vec<IpNet> = v4
            .iter()
            .copied()
            .map(IpNet::V4)
            .chain(v6.iter().copied().map(IpNet::V6))
            .collect();
        let set = AddrSet::from_networks(&all);
        NodeList { v4, v6, set }
    }

    /// Whether the address belongs to the list (IPv4-mapped IPv6 addresses
    /// are checked as IPv4).
    #[inline]
    pub fn contains(&self, addr: IpAddr) -> bool {
        self.set.contains(addr)
    }

    pub fn v4(&self) -> &[Ipv4Net] {
        &self.v4
    }

    pub fn v6(&self) -> &[Ipv6Net] {
        &self.v6
    }

    /// All networks, IPv4 first, each family sorted.
    pub fn networks(&self) -> impl Iterator<Item = IpNet> + '_ {
        self.v4
            .iter()
            .copied()
            .map(IpNet::V4)
            .chain(self.v6.iter().copied().map(IpNet::V6))
    }

    /// Number of networks after merging.
    pub fn len(&self) -> usize {
        self.v4.len() + self.v6.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The list in `app.json` form, one entry per network, single addresses
    /// written without a prefix length as Bitrix24 does.
    pub fn to_json(&self) -> String {
        let nodes: Vec<String> = self.networks().map(|n| display_network(&n)).collect();
        let mut out = serde_json::to_string_pretty(&serde_json::json!({ "nodes": nodes }))
            .expect("a list of strings always serializes");
        out.push('\n');
        out
    }

    /// Networks added and removed going from `self` to `newer`.
    pub fn diff(&self, newer: &NodeList) -> Diff {
        let old: BTreeSet<IpNet> = self.networks().collect();
        let new: BTreeSet<IpNet> = newer.networks().collect();
        Diff {
            added: new.difference(&old).copied().collect(),
            removed: old.difference(&new).copied().collect(),
        }
    }

    /// The share (0.0–1.0) of this list's networks that `newer` no longer
    /// covers at all. Coverage, not a count of entries, so a list that merely
    /// merges neighbours into a wider network does not look like a shrink.
    pub fn lost_share(&self, newer: &NodeList) -> f64 {
        if self.is_empty() {
            return 0.0;
        }
        let lost = self.networks().filter(|net| !newer.covers(net)).count();
        lost as f64 / self.len() as f64
    }

    /// Whether every address of `net` is in the list.
    fn covers(&self, net: &IpNet) -> bool {
        self.set.contains_network(net)
    }
}

/// What changed between two lists.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Diff {
    pub added: Vec<IpNet>,
    pub removed: Vec<IpNet>,
}

impl Diff {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty()
    }
}

/// Refuses an entry that is broader than the bound or touches a special
/// range, unless `limits` allows it.
fn check_entry(index: usize, net: &IpNet, limits: &Limits) -> Result<(), ParseError> {
    let bound = broadest_for(net);
    if !limits.allow_broad && net.prefix_len() < bound {
        return Err(ParseError::TooBroad {
            index,
            entry: display_network(net),
            bound,
        });
    }
    if !limits.allow_special
        && let Some((range, kind)) = special_range(net)
    {
        return Err(ParseError::SpecialAddress {
            index,
            entry: display_network(net),
            kind,
            range: range.to_string(),
        });
    }
    Ok(())
}

/// Parses one entry: an address (a host network) or a CIDR network. Host
/// bits set in a CIDR entry (`10.0.0.1/24`) are accepted and cleared, as
/// firewalls do.
pub fn parse_network(text: &str) -> Option<IpNet> {
    let text = text.trim();
    if text.contains('/') {
        text.parse::<IpNet>().ok().map(|n| n.trunc())
    } else {
        text.parse::<IpAddr>().ok().map(IpNet::from)
    }
}

/// A network as Bitrix24 and firewall admins write it: single addresses
/// without `/32` or `/128`.
pub fn display_network(net: &IpNet) -> String {
    if net.prefix_len() == net.max_prefix_len() {
        net.addr().to_string()
    } else {
        net.to_string()
    }
}

fn not_json(body: &[u8], err: serde_json::Error) -> ParseError {
    let text = String::from_utf8_lossy(&body[..body.len().min(80)]);
    let start = truncate(text.trim_start(), 40);
    let lower = start.to_ascii_lowercase();
    if lower.starts_with("<!doctype html") || lower.starts_with("<html") || lower.starts_with('<') {
        ParseError::Html { start }
    } else {
        ParseError::NotJson {
            detail: err.to_string(),
            start,
        }
    }
}

fn truncate(text: &str, max_chars: usize) -> String {
    match text.char_indices().nth(max_chars) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses with the entry rules off: these tests are about the format.
    fn parse(doc: &str) -> Result<NodeList, ParseError> {
        let limits = Limits {
            allow_broad: true,
            allow_special: true,
            ..Limits::default()
        };
        NodeList::parse(doc.as_bytes(), &limits)
    }

    fn parse_strict(doc: &str) -> Result<NodeList, ParseError> {
        NodeList::parse(doc.as_bytes(), &Limits::default())
    }

    #[test]
    fn the_real_list_shape_passes_the_entry_rules() {
        let list = parse_strict(
            r#"{"nodes": ["195.208.184.200", "89.208.230.2", "185.230.60.0/24", "2a02:6b8:c00::/48"]}"#,
        )
        .unwrap();
        assert_eq!(list.len(), 4);
    }

    #[test]
    fn a_list_that_opens_the_world_is_refused_whole() {
        for (doc, entry) in [
            (
                r#"{"nodes": ["195.208.184.200", "0.0.0.0/0"]}"#,
                "0.0.0.0/0",
            ),
            (r#"{"nodes": ["195.208.184.200", "::/0"]}"#, "::/0"),
            (r#"{"nodes": ["0.0.0.0/1", "128.0.0.0/1"]}"#, "0.0.0.0/1"),
            (r#"{"nodes": ["89.208.0.0/16"]}"#, "89.208.0.0/16"),
            (r#"{"nodes": ["2a02:6b8::/32"]}"#, "2a02:6b8::/32"),
        ] {
            let err = parse_strict(doc).unwrap_err();
            assert!(
                matches!(&err, ParseError::TooBroad { entry: e, .. } if e == entry),
                "{doc}: {err:?}"
            );
            assert!(err.is_unsafe());
            let text = err.to_string();
            assert!(
                text.contains(entry)
                    && text.contains("--allow-broad")
                    && text.contains("allow_broad = true"),
                "{text}"
            );
        }
        // Narrow entries that add up to a broad block are refused too.
        let halves = r#"{"nodes": ["89.208.230.0/25", "89.208.230.128/25", "89.208.231.0/24"]}"#;
        let err = parse_strict(halves).unwrap_err();
        assert_eq!(
            err,
            ParseError::MergedTooBroad {
                network: "89.208.230.0/23".into(),
                bound: 24
            }
        );
        // Exactly the bound is fine.
        assert!(parse_strict(r#"{"nodes": ["89.208.230.0/25", "89.208.230.128/25"]}"#).is_ok());
    }

    #[test]
    fn special_addresses_are_refused_whole_and_named() {
        for (entry, says) in [
            ("127.0.0.1", "loopback"),
            ("10.0.0.0/24", "private"),
            ("192.168.1.10", "private"),
            ("169.254.0.5", "link-local"),
            ("224.0.0.251", "multicast"),
            ("192.0.2.1", "documentation"),
            ("198.18.0.2", "benchmarking"),
            ("0.0.0.0", "unspecified"),
            ("::1", "loopback"),
            ("fe80::1", "link-local"),
            ("fd12:3456::1", "unique-local"),
            ("2001:db8::1", "documentation"),
            ("2001:2::7", "benchmarking"),
        ] {
            let doc = format!(r#"{{"nodes": ["195.208.184.200", "{entry}"]}}"#);
            let err = parse_strict(&doc).unwrap_err();
            assert!(
                matches!(&err, ParseError::SpecialAddress { index: 1, .. }),
                "{entry}: {err:?}"
            );
            let text = err.to_string();
            assert!(
                text.contains(entry) && text.contains(says) && text.contains("--allow-special"),
                "{text}"
            );
        }
    }

    #[test]
    fn each_escape_hatch_opens_only_its_own_door() {
        let special = Limits::allowing_special();
        let broad = Limits {
            allow_broad: true,
            ..Limits::default()
        };
        assert!(NodeList::parse(br#"{"nodes": ["127.0.0.1", "198.18.0.0/24"]}"#, &special).is_ok());
        assert!(matches!(
            NodeList::parse(br#"{"nodes": ["198.18.0.0/16"]}"#, &special),
            Err(ParseError::TooBroad { .. })
        ));
        assert!(NodeList::parse(br#"{"nodes": ["89.0.0.0/8"]}"#, &broad).is_ok());
        // The whole internet also covers private and loopback space: both
        // hatches are needed for it.
        assert!(matches!(
            NodeList::parse(br#"{"nodes": ["0.0.0.0/0"]}"#, &broad),
            Err(ParseError::SpecialAddress { .. })
        ));
    }

    #[test]
    fn check_applies_the_same_rules_to_a_built_list() {
        let list = NodeList::from_networks(["127.0.0.1/32".parse().unwrap()]);
        assert!(list.check(&Limits::default()).unwrap_err().is_unsafe());
        assert!(list.check(&Limits::allowing_special()).is_ok());
    }

    #[test]
    fn parses_addresses_and_networks_of_both_families() {
        let list = parse(
            r#"{"nodes": ["195.208.184.200", "89.208.230.2", "2a02:6b8::/32", "10.1.0.0/16"]}"#,
        )
        .unwrap();
        assert_eq!(list.v4().len(), 3);
        assert_eq!(list.v6().len(), 1);
        assert!(list.contains("195.208.184.200".parse().unwrap()));
        assert!(list.contains("10.1.200.3".parse().unwrap()));
        assert!(list.contains("2a02:6b8:1::5".parse().unwrap()));
        assert!(!list.contains("195.208.184.201".parse().unwrap()));
    }

    #[test]
    fn deduplicates_and_merges() {
        let list = parse(
            r#"{"nodes": ["10.0.0.1", "10.0.0.1", "10.0.0.0/25", "10.0.0.128/25", "10.0.0.7/32", " 10.0.1.5/24 "]}"#,
        )
        .unwrap();
        let nets: Vec<String> = list.networks().map(|n| display_network(&n)).collect();
        assert_eq!(nets, ["10.0.0.0/23"]);
    }

    #[test]
    fn rejects_what_is_not_a_nodes_list() {
        assert!(matches!(
            parse("<!DOCTYPE html><html>502 Bad Gateway</html>"),
            Err(ParseError::Html { .. })
        ));
        assert!(matches!(
            parse("nodes: 1.2.3.4"),
            Err(ParseError::NotJson { .. })
        ));
        assert_eq!(
            parse(r#"{"hosts": ["1.2.3.4"]}"#),
            Err(ParseError::MissingNodes)
        );
        assert_eq!(parse(r#"["1.2.3.4"]"#), Err(ParseError::MissingNodes));
        assert_eq!(
            parse(r#"{"nodes": "1.2.3.4"}"#),
            Err(ParseError::NodesNotList)
        );
        assert_eq!(parse(r#"{"nodes": []}"#), Err(ParseError::Empty));
        assert_eq!(
            parse(r#"{"nodes": ["1.2.3.4", 5]}"#),
            Err(ParseError::NotAString {
                index: 1,
                value: "5".into()
            })
        );
        assert_eq!(
            parse(r#"{"nodes": ["1.2.3.4", "1.2.3.400"]}"#),
            Err(ParseError::InvalidEntry {
                index: 1,
                entry: "1.2.3.400".into()
            })
        );
        assert!(matches!(
            parse(r#"{"nodes": ["1.2.3.0/33"]}"#),
            Err(ParseError::InvalidEntry { index: 0, .. })
        ));
        assert!(matches!(
            parse(r#"{"nodes": ["example.com"]}"#),
            Err(ParseError::InvalidEntry { .. })
        ));
    }

    #[test]
    fn error_messages_name_the_offending_entry() {
        let err = parse(r#"{"nodes": ["1.2.3.4", "not-an-ip"]}"#).unwrap_err();
        assert_eq!(
            err.to_string(),
            "entry #1 of \"nodes\" is not an IP address or CIDR network: \"not-an-ip\""
        );
        let err = parse("<html><body>Service unavailable</body></html>").unwrap_err();
        assert!(err.to_string().contains("HTML page"), "{err}");
    }

    #[test]
    fn enforces_size_and_entry_limits() {
        let limits = Limits {
            max_bytes: 64,
            max_entries: 2,
            ..Limits::default()
        };
        let big = format!(r#"{{"nodes": ["{}"]}}"#, "1".repeat(100));
        assert!(matches!(
            NodeList::parse(big.as_bytes(), &limits),
            Err(ParseError::TooLarge { limit: 64, .. })
        ));
        let many = r#"{"nodes": ["1.1.1.1", "2.2.2.2", "3.3.3.3"]}"#;
        assert_eq!(
            NodeList::parse(many.as_bytes(), &limits),
            Err(ParseError::TooManyEntries { count: 3, limit: 2 })
        );
    }

    #[test]
    fn json_round_trip_keeps_the_list() {
        let list =
            parse(r#"{"nodes": ["2a02:6b8::/32", "195.208.184.200", "10.0.0.0/8"]}"#).unwrap();
        let again = parse(&list.to_json()).unwrap();
        assert_eq!(list, again);
        assert!(list.to_json().contains("\"195.208.184.200\""));
    }

    #[test]
    fn diff_and_lost_share() {
        let old = parse(r#"{"nodes": ["1.1.1.1", "2.2.2.2", "3.3.3.3", "4.4.4.4"]}"#).unwrap();
        let new = parse(r#"{"nodes": ["1.1.1.1", "5.5.5.5"]}"#).unwrap();
        let diff = old.diff(&new);
        assert_eq!(diff.added, vec!["5.5.5.5/32".parse::<IpNet>().unwrap()]);
        assert_eq!(diff.removed.len(), 3);
        assert_eq!(old.lost_share(&new), 0.75);
        // Merging neighbours into a wider network loses nothing.
        let merged =
            parse(r#"{"nodes": ["1.1.1.0/24", "2.2.2.0/24", "3.3.3.3", "4.4.4.4"]}"#).unwrap();
        assert_eq!(old.lost_share(&merged), 0.0);
    }
}
