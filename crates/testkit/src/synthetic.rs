//! Deterministic synthetic nodes lists for benchmarks and large-list tests,
//! so every run and every crate measures the same set.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

/// A linear congruential generator: deterministic, dependency-free, good
/// enough to scatter addresses.
fn lcg(seed: &mut u64) -> u64 {
    *seed = seed
        .wrapping_mul(6_364_136_223_846_793_005)
        .wrapping_add(1_442_695_040_888_963_407);
    *seed >> 16
}

/// `entries` networks scattered over the whole address space, like a list
/// of cloud servers: three in four IPv4 (/32, /28 or /24), one in four IPv6
/// /64. Some overlap, so the merged list is a little shorter.
pub fn scattered_networks(entries: usize) -> Vec<IpNet> {
    let mut seed = 42;
    (0..entries)
        .map(|i| {
            let r = lcg(&mut seed);
            if i % 4 == 3 {
                let addr = Ipv6Addr::from((0x2a02_u128 << 112) | (u128::from(r) << 32));
                IpNet::V6(Ipv6Net::new(addr, 64).unwrap().trunc())
            } else {
                let prefix = [32, 32, 28, 24][(r % 4) as usize];
                IpNet::V4(
                    Ipv4Net::new(Ipv4Addr::from(r as u32), prefix)
                        .unwrap()
                        .trunc(),
                )
            }
        })
        .collect()
}

/// Addresses to look up against [`scattered_networks`]: the same families
/// in the same proportion, some inside the list and most outside it.
pub fn scattered_probes(count: usize) -> Vec<IpAddr> {
    let mut seed = 7;
    (0..count)
        .map(|i| {
            let r = lcg(&mut seed);
            if i % 4 == 3 {
                IpAddr::V6(Ipv6Addr::from(
                    (0x2a02_u128 << 112) | (u128::from(r) << 32) | 1,
                ))
            } else {
                IpAddr::V4(Ipv4Addr::from(r as u32))
            }
        })
        .collect()
}

/// `entries` networks that never merge (every other IPv4 /31 from
/// 11.0.0.0, and one IPv6 /64 in five): the worst case for list size.
pub fn distinct_networks(entries: u32) -> Vec<IpNet> {
    (0..entries)
        .map(|i| {
            if i % 5 == 4 {
                let addr = Ipv6Addr::from((0x2a02_u128 << 112) | (u128::from(i) << 65));
                IpNet::V6(Ipv6Net::new(addr, 64).unwrap())
            } else {
                IpNet::V4(Ipv4Net::new(Ipv4Addr::from(0x0b00_0000 + i * 4), 31).unwrap())
            }
        })
        .collect()
}
