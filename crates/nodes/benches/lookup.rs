//! Admission-check cost at the list sizes Bitrix24 could plausibly publish:
//! 100 000 mixed IPv4/IPv6 entries (the parser's entry limit).

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use b24_nodes::NodeList;
use criterion::{Criterion, criterion_group, criterion_main};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};

/// A deterministic pseudo-random sequence, so every run measures the same set.
fn lcg(seed: &mut u64) -> u64 {
    *seed = seed
        .wrapping_mul(6_364_136_223_846_793_005)
        .wrapping_add(1_442_695_040_888_963_407);
    *seed >> 16
}

fn list_of(entries: usize) -> NodeList {
    let mut seed = 42;
    let nets = (0..entries).map(|i| {
        let r = lcg(&mut seed);
        if i % 4 == 3 {
            let addr = Ipv6Addr::from((0x2a02_u128 << 112) | u128::from(r) << 32);
            IpNet::V6(Ipv6Net::new(addr, 64).unwrap().trunc())
        } else {
            let prefix = [32, 32, 28, 24][(r % 4) as usize];
            IpNet::V4(
                Ipv4Net::new(Ipv4Addr::from(r as u32), prefix)
                    .unwrap()
                    .trunc(),
            )
        }
    });
    NodeList::from_networks(nets)
}

fn probes() -> Vec<IpAddr> {
    let mut seed = 7;
    (0..1024)
        .map(|i| {
            let r = lcg(&mut seed);
            if i % 4 == 3 {
                IpAddr::V6(Ipv6Addr::from(
                    (0x2a02_u128 << 112) | u128::from(r) << 32 | 1,
                ))
            } else {
                IpAddr::V4(Ipv4Addr::from(r as u32))
            }
        })
        .collect()
}

fn lookup(c: &mut Criterion) {
    let probes = probes();
    for entries in [1_000, 100_000] {
        let list = list_of(entries);
        let mut i = 0;
        c.bench_function(&format!("contains/{entries}_entries"), |b| {
            b.iter(|| {
                i = (i + 1) % probes.len();
                black_box(list.contains(black_box(probes[i])))
            })
        });
    }
}

criterion_group!(benches, lookup);
criterion_main!(benches);
