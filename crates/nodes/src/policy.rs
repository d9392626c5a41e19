//! What a published list may contain: how broad an entry may be, and which
//! address ranges are never Bitrix24's servers.
//!
//! Bitrix24 publishes the single addresses of its queue servers. A list that
//! holds `0.0.0.0/0`, two `/1` halves, `10.0.0.0/8` or `127.0.0.1` is a
//! publishing mistake or an attack on the source, and admitting it would open
//! the protected ports to everyone (or to the LAN, or to the box itself). So a
//! list with any such entry is refused as a whole, and the last good list
//! stays; the two escape hatches are explicit options of each program
//! (`--allow-broad` / `--allow-special` for nodesync, `allow_broad` /
//! `allow_special` in b24-edge's `[nodes]`).

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

/// The broadest IPv4 entry accepted without `allow_broad`: a /24 (256
/// addresses), the smallest block announced on the internet.
pub const BROADEST_V4: u8 = 24;
/// The broadest IPv6 entry accepted without `allow_broad`: a /48, one site.
pub const BROADEST_V6: u8 = 48;

/// Why an address range is never a Bitrix24 server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Special {
    Unspecified,
    Loopback,
    Private,
    SharedCgn,
    LinkLocal,
    Multicast,
    Documentation,
    Benchmarking,
    Broadcast,
    Reserved,
    Ipv4Mapped,
    Translation,
    Discard,
    UniqueLocal,
    SiteLocal,
    SixToFour,
    ProtocolAssignments,
    NotGlobalUnicast,
}

impl Special {
    pub fn describe(self) -> &'static str {
        match self {
            Special::Unspecified => "the unspecified (\"this network\") range",
            Special::Loopback => "loopback",
            Special::Private => "private (RFC 1918)",
            Special::SharedCgn => "carrier-grade NAT shared space (RFC 6598)",
            Special::LinkLocal => "link-local",
            Special::Multicast => "multicast",
            Special::Documentation => "documentation-only",
            Special::Benchmarking => "benchmarking (RFC 2544 / RFC 5180)",
            Special::Broadcast => "the broadcast address",
            Special::Reserved => "reserved (240.0.0.0/4)",
            Special::Ipv4Mapped => "IPv4-mapped IPv6",
            Special::Translation => "IPv4/IPv6 translation",
            Special::Discard => "discard-only (RFC 6666)",
            Special::UniqueLocal => "unique-local (fc00::/7)",
            Special::SiteLocal => "deprecated site-local",
            Special::SixToFour => "6to4",
            Special::ProtocolAssignments => "IETF protocol assignments",
            Special::NotGlobalUnicast => "outside the global unicast space 2000::/3",
        }
    }
}

impl fmt::Display for Special {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.describe())
    }
}

/// The IPv4 special-purpose ranges (IANA registry), most specific first
/// where they nest.
const SPECIAL_V4: &[(Ipv4Addr, u8, Special)] = &[
    (Ipv4Addr::new(0, 0, 0, 0), 8, Special::Unspecified),
    (Ipv4Addr::new(10, 0, 0, 0), 8, Special::Private),
    (Ipv4Addr::new(100, 64, 0, 0), 10, Special::SharedCgn),
    (Ipv4Addr::new(127, 0, 0, 0), 8, Special::Loopback),
    (Ipv4Addr::new(169, 254, 0, 0), 16, Special::LinkLocal),
    (Ipv4Addr::new(172, 16, 0, 0), 12, Special::Private),
    (
        Ipv4Addr::new(192, 0, 0, 0),
        24,
        Special::ProtocolAssignments,
    ),
    (Ipv4Addr::new(192, 0, 2, 0), 24, Special::Documentation),
    (Ipv4Addr::new(192, 88, 99, 0), 24, Special::SixToFour),
    (Ipv4Addr::new(192, 168, 0, 0), 16, Special::Private),
    (Ipv4Addr::new(198, 18, 0, 0), 15, Special::Benchmarking),
    (Ipv4Addr::new(198, 51, 100, 0), 24, Special::Documentation),
    (Ipv4Addr::new(203, 0, 113, 0), 24, Special::Documentation),
    (Ipv4Addr::new(224, 0, 0, 0), 4, Special::Multicast),
    (Ipv4Addr::new(255, 255, 255, 255), 32, Special::Broadcast),
    (Ipv4Addr::new(240, 0, 0, 0), 4, Special::Reserved),
];

const fn v6(segments: [u16; 8]) -> Ipv6Addr {
    Ipv6Addr::new(
        segments[0],
        segments[1],
        segments[2],
        segments[3],
        segments[4],
        segments[5],
        segments[6],
        segments[7],
    )
}

/// The IPv6 special-purpose ranges inside 2000::/3 (IANA registry), and the
/// named ones outside it; everything else outside 2000::/3 is reported as
/// not global unicast.
const SPECIAL_V6: &[(Ipv6Addr, u8, Special)] = &[
    (v6([0, 0, 0, 0, 0, 0, 0, 0]), 128, Special::Unspecified),
    (v6([0, 0, 0, 0, 0, 0, 0, 1]), 128, Special::Loopback),
    (v6([0, 0, 0, 0, 0, 0xffff, 0, 0]), 96, Special::Ipv4Mapped),
    (
        v6([0x64, 0xff9b, 0, 0, 0, 0, 0, 0]),
        96,
        Special::Translation,
    ),
    (
        v6([0x64, 0xff9b, 1, 0, 0, 0, 0, 0]),
        48,
        Special::Translation,
    ),
    (v6([0x100, 0, 0, 0, 0, 0, 0, 0]), 64, Special::Discard),
    (v6([0x2001, 2, 0, 0, 0, 0, 0, 0]), 48, Special::Benchmarking),
    (
        v6([0x2001, 0, 0, 0, 0, 0, 0, 0]),
        23,
        Special::ProtocolAssignments,
    ),
    (
        v6([0x2001, 0xdb8, 0, 0, 0, 0, 0, 0]),
        32,
        Special::Documentation,
    ),
    (v6([0x2002, 0, 0, 0, 0, 0, 0, 0]), 16, Special::SixToFour),
    (
        v6([0x3fff, 0, 0, 0, 0, 0, 0, 0]),
        20,
        Special::Documentation,
    ),
    (v6([0xfc00, 0, 0, 0, 0, 0, 0, 0]), 7, Special::UniqueLocal),
    (v6([0xfe80, 0, 0, 0, 0, 0, 0, 0]), 10, Special::LinkLocal),
    (v6([0xfec0, 0, 0, 0, 0, 0, 0, 0]), 10, Special::SiteLocal),
    (v6([0xff00, 0, 0, 0, 0, 0, 0, 0]), 8, Special::Multicast),
];

/// The special range `net` overlaps, if any: an entry that covers even part
/// of a special range would admit addresses that are not Bitrix24's.
/// (Integer bounds, no allocation: it runs for every entry of a list.)
pub fn special_range(net: &IpNet) -> Option<(IpNet, Special)> {
    match net {
        IpNet::V4(net) => {
            let (start, end) = (u32::from(net.network()), u32::from(net.broadcast()));
            SPECIAL_V4.iter().find_map(|&(addr, len, kind)| {
                let lo = u32::from(addr);
                let hi = lo | u32::MAX.checked_shr(u32::from(len)).unwrap_or(0);
                (start <= hi && lo <= end).then(|| {
                    let range = Ipv4Net::new(addr, len).expect("valid table entry");
                    (IpNet::V4(range), kind)
                })
            })
        }
        IpNet::V6(net) => {
            let (start, end) = (u128::from(net.network()), u128::from(net.broadcast()));
            let overlaps = |addr: Ipv6Addr, len: u8| {
                let lo = u128::from(addr);
                let hi = lo | u128::MAX.checked_shr(u32::from(len)).unwrap_or(0);
                start <= hi && lo <= end
            };
            let named = SPECIAL_V6.iter().find_map(|&(addr, len, kind)| {
                overlaps(addr, len).then(|| {
                    let range = Ipv6Net::new(addr, len).expect("valid table entry");
                    (IpNet::V6(range), kind)
                })
            });
            named.or_else(|| {
                let global = v6([0x2000, 0, 0, 0, 0, 0, 0, 0]);
                // Inside 2000::/3 means both ends are.
                let inside = |a: u128| a >> 125 == u128::from(global) >> 125;
                (!(inside(start) && inside(end))).then(|| {
                    let range = Ipv6Net::new(global, 3).expect("valid");
                    (IpNet::V6(range), Special::NotGlobalUnicast)
                })
            })
        }
    }
}

/// The broadest prefix length accepted for the family of `net` without
/// `allow_broad`.
pub fn broadest_for(net: &IpNet) -> u8 {
    match net {
        IpNet::V4(_) => BROADEST_V4,
        IpNet::V6(_) => BROADEST_V6,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn special(text: &str) -> Option<Special> {
        special_range(&text.parse().unwrap()).map(|(_, kind)| kind)
    }

    #[test]
    fn public_addresses_are_not_special() {
        for public in [
            "195.208.184.200/32",
            "89.208.230.2/32",
            "185.230.60.0/24",
            "8.8.8.8/32",
            "2a02:6b8:c00::/48",
            "2001:4860::8888/128",
        ] {
            assert_eq!(special(public), None, "{public}");
        }
    }

    #[test]
    fn every_kind_of_special_range_is_named() {
        for (text, kind) in [
            ("0.0.0.0/32", Special::Unspecified),
            ("127.0.0.1/32", Special::Loopback),
            ("10.1.2.3/32", Special::Private),
            ("172.31.0.0/16", Special::Private),
            ("192.168.1.0/24", Special::Private),
            ("100.100.0.1/32", Special::SharedCgn),
            ("169.254.1.1/32", Special::LinkLocal),
            ("224.0.0.1/32", Special::Multicast),
            ("192.0.2.1/32", Special::Documentation),
            ("198.51.100.7/32", Special::Documentation),
            ("203.0.113.0/24", Special::Documentation),
            ("198.18.0.1/32", Special::Benchmarking),
            ("198.19.255.255/32", Special::Benchmarking),
            ("255.255.255.255/32", Special::Broadcast),
            ("250.1.1.1/32", Special::Reserved),
            ("::/128", Special::Unspecified),
            ("::1/128", Special::Loopback),
            ("::ffff:1.2.3.4/128", Special::Ipv4Mapped),
            ("fd00::1/128", Special::UniqueLocal),
            ("fe80::1/128", Special::LinkLocal),
            ("ff02::1/128", Special::Multicast),
            ("2001:db8::1/128", Special::Documentation),
            ("2001:2::5/128", Special::Benchmarking),
            ("2002:c000:0204::/48", Special::SixToFour),
            ("4000::1/128", Special::NotGlobalUnicast),
        ] {
            assert_eq!(special(text), Some(kind), "{text}");
        }
    }

    #[test]
    fn a_network_overlapping_a_special_range_is_special() {
        // 8.0.0.0/6 covers 10.0.0.0/8.
        assert_eq!(special("8.0.0.0/6"), Some(Special::Private));
        assert_eq!(special("0.0.0.0/0"), Some(Special::Unspecified));
        assert_eq!(special("::/0"), Some(Special::Unspecified));
        assert_eq!(special("198.16.0.0/13"), Some(Special::Benchmarking));
        // Right next to 198.18.0.0/15, outside it.
        assert_eq!(special("198.20.0.0/24"), None);
    }
}
