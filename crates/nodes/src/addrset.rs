//! A read-only set of IPv4 and IPv6 addresses with fast membership checks.
//!
//! Networks are stored as sorted, merged, non-adjacent inclusive ranges of
//! integers, split into two parallel arrays (starts and ends) so that a lookup
//! is one binary search over a dense `Vec` — a few cache lines even at
//! 100 000 entries.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

/// Sorted, merged ranges of one address family.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Ranges<T> {
    starts: Vec<T>,
    ends: Vec<T>,
}

impl<T: Copy + Ord + RangeBound> Ranges<T> {
    fn from_unsorted(mut ranges: Vec<(T, T)>) -> Self {
        ranges.sort_unstable();
        let mut starts: Vec<T> = Vec::with_capacity(ranges.len());
        let mut ends: Vec<T> = Vec::with_capacity(ranges.len());
        for (start, end) in ranges {
            if let Some(last_end) = ends.last_mut() {
                // Overlapping or directly adjacent: extend the previous range.
                if *last_end >= start || last_end.next() == Some(start) {
                    if end > *last_end {
                        *last_end = end;
                    }
                    continue;
                }
            }
            starts.push(start);
            ends.push(end);
        }
        Ranges { starts, ends }
    }

    #[inline]
    fn contains(&self, value: T) -> bool {
        // Index of the first range starting after `value`; the candidate is
        // the one before it.
        let after = self.starts.partition_point(|start| *start <= value);
        after > 0 && self.ends[after - 1] >= value
    }

    /// Whether the whole inclusive range lies inside one stored range (ranges
    /// are merged, so a range covered at all is covered by exactly one).
    fn contains_range(&self, start: T, end: T) -> bool {
        let after = self.starts.partition_point(|s| *s <= start);
        after > 0 && self.ends[after - 1] >= end
    }

    fn len(&self) -> usize {
        self.starts.len()
    }
}

/// The successor of an integer address, if any (used to merge adjacent ranges).
trait RangeBound: Sized {
    fn next(self) -> Option<Self>;
}

impl RangeBound for u32 {
    fn next(self) -> Option<Self> {
        self.checked_add(1)
    }
}

impl RangeBound for u128 {
    fn next(self) -> Option<Self> {
        self.checked_add(1)
    }
}

/// An immutable set of addresses built from CIDR networks.
///
/// IPv4-mapped IPv6 addresses (`::ffff:192.0.2.1`, as seen by a socket bound
/// to `[::]`) are looked up as the IPv4 address they carry, so a dual-stack
/// listener admits exactly what an IPv4 listener would.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AddrSet {
    v4: Ranges<u32>,
    v6: Ranges<u128>,
}

impl AddrSet {
    /// Builds the set; overlapping and adjacent networks are merged.
    pub fn from_networks<'a>(networks: impl IntoIterator<Item = &'a IpNet>) -> Self {
        let mut v4 = Vec::new();
        let mut v6 = Vec::new();
        for net in networks {
            match net {
                IpNet::V4(net) => v4.push(v4_bounds(net)),
                IpNet::V6(net) => v6.push(v6_bounds(net)),
            }
        }
        AddrSet {
            v4: Ranges::from_unsorted(v4),
            v6: Ranges::from_unsorted(v6),
        }
    }

    /// Whether `addr` belongs to one of the networks.
    #[inline]
    pub fn contains(&self, addr: IpAddr) -> bool {
        match addr {
            IpAddr::V4(v4) => self.contains_v4(v4),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => self.contains_v4(v4),
                None => self.contains_v6(v6),
            },
        }
    }

    #[inline]
    pub fn contains_v4(&self, addr: Ipv4Addr) -> bool {
        self.v4.contains(u32::from(addr))
    }

    #[inline]
    pub fn contains_v6(&self, addr: Ipv6Addr) -> bool {
        self.v6.contains(u128::from(addr))
    }

    /// Whether every address of `net` is in the set.
    pub fn contains_network(&self, net: &IpNet) -> bool {
        match net {
            IpNet::V4(n) => {
                let (start, end) = v4_bounds(n);
                self.v4.contains_range(start, end)
            }
            IpNet::V6(n) => {
                let (start, end) = v6_bounds(n);
                self.v6.contains_range(start, end)
            }
        }
    }

    /// Number of disjoint address ranges (after merging), per family.
    pub fn range_counts(&self) -> (usize, usize) {
        (self.v4.len(), self.v6.len())
    }

    pub fn is_empty(&self) -> bool {
        self.v4.len() == 0 && self.v6.len() == 0
    }
}

fn v4_bounds(net: &Ipv4Net) -> (u32, u32) {
    (u32::from(net.network()), u32::from(net.broadcast()))
}

fn v6_bounds(net: &Ipv6Net) -> (u128, u128) {
    (u128::from(net.network()), u128::from(net.broadcast()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn set(nets: &[&str]) -> AddrSet {
        let nets: Vec<IpNet> = nets.iter().map(|n| n.parse().unwrap()).collect();
        AddrSet::from_networks(&nets)
    }

    #[test]
    fn membership_at_network_edges() {
        let s = set(&["10.0.0.0/24", "192.0.2.7/32", "2001:db8::/126"]);
        assert!(s.contains("10.0.0.0".parse().unwrap()));
        assert!(s.contains("10.0.0.255".parse().unwrap()));
        assert!(!s.contains("10.0.1.0".parse().unwrap()));
        assert!(!s.contains("9.255.255.255".parse().unwrap()));
        assert!(s.contains("192.0.2.7".parse().unwrap()));
        assert!(!s.contains("192.0.2.8".parse().unwrap()));
        assert!(s.contains("2001:db8::3".parse().unwrap()));
        assert!(!s.contains("2001:db8::4".parse().unwrap()));
    }

    #[test]
    fn mapped_ipv6_is_looked_up_as_ipv4() {
        let s = set(&["192.0.2.0/24"]);
        assert!(s.contains("::ffff:192.0.2.10".parse().unwrap()));
        assert!(!s.contains("::ffff:192.0.3.10".parse().unwrap()));
    }

    #[test]
    fn adjacent_and_overlapping_ranges_merge() {
        let s = set(&[
            "10.0.0.0/25",
            "10.0.0.128/25",
            "10.0.0.64/26",
            "10.0.1.0/24",
        ]);
        assert_eq!(s.range_counts(), (1, 0));
        let s = set(&["0.0.0.0/0", "255.255.255.255/32"]);
        assert_eq!(s.range_counts(), (1, 0));
        assert!(s.contains("255.255.255.255".parse().unwrap()));
    }

    #[test]
    fn empty_set_contains_nothing() {
        let s = AddrSet::default();
        assert!(s.is_empty());
        assert!(!s.contains("0.0.0.0".parse().unwrap()));
        assert!(!s.contains("::".parse().unwrap()));
    }

    fn arb_v4_net() -> impl Strategy<Value = IpNet> {
        // Addresses concentrated in a small space so that overlaps happen.
        (0u32..4096, 20u8..=32).prop_map(|(low, prefix)| {
            let addr = Ipv4Addr::from(0x0a00_0000 | low);
            IpNet::V4(Ipv4Net::new(addr, prefix).unwrap().trunc())
        })
    }

    fn arb_v6_net() -> impl Strategy<Value = IpNet> {
        (0u128..4096, 116u8..=128).prop_map(|(low, prefix)| {
            let addr = Ipv6Addr::from(0x2001_0db8_u128 << 96 | low);
            IpNet::V6(Ipv6Net::new(addr, prefix).unwrap().trunc())
        })
    }

    proptest! {
        #[test]
        fn agrees_with_naive_check(
            nets in proptest::collection::vec(prop_oneof![arb_v4_net(), arb_v6_net()], 0..60),
            probes_v4 in proptest::collection::vec(0u32..5000, 50),
            probes_v6 in proptest::collection::vec(0u128..5000, 50),
        ) {
            let s = AddrSet::from_networks(&nets);
            let probes = probes_v4
                .into_iter()
                .map(|low| IpAddr::V4(Ipv4Addr::from(0x0a00_0000 | low)))
                .chain(probes_v6.into_iter().map(|low| IpAddr::V6(Ipv6Addr::from(0x2001_0db8_u128 << 96 | low))));
            for ip in probes {
                let naive = nets.iter().any(|n| n.contains(&ip));
                prop_assert_eq!(s.contains(ip), naive, "address {}", ip);
            }
        }
    }
}
