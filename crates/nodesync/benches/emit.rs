//! Rendering cost at the parser's entry limit (100 000 networks): the
//! nodesync target is ≤ 200 ms for the whole emit.

use std::hint::black_box;
use std::net::{Ipv4Addr, Ipv6Addr};

use b24_nodes::NodeList;
use criterion::{Criterion, criterion_group, criterion_main};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use nodesync::emit::{Format, RuleOptions, render};

fn list_of(entries: u32) -> NodeList {
    // Every other /31 in 11.0.0.0/8 and some /64s: nothing merges, so the
    // list really has `entries` networks.
    NodeList::from_networks((0..entries).map(|i| {
        if i % 5 == 4 {
            IpNet::V6(
                Ipv6Net::new(
                    Ipv6Addr::from((0x2a02_u128 << 112) | u128::from(i) << 65),
                    64,
                )
                .unwrap(),
            )
        } else {
            IpNet::V4(Ipv4Net::new(Ipv4Addr::from(0x0b00_0000 + i * 4), 31).unwrap())
        }
    }))
}

fn emit(c: &mut Criterion) {
    let list = list_of(100_000);
    assert_eq!(list.len(), 100_000);
    let options = RuleOptions::default();
    let mut group = c.benchmark_group("emit_100000");
    group.sample_size(20);
    for format in [Format::Nftables, Format::Ipset, Format::Nginx, Format::Json] {
        group.bench_function(format!("{format:?}").to_lowercase(), |b| {
            b.iter(|| black_box(render(format, black_box(&list), &options)))
        });
    }
    group.bench_function("parse_app_json", |b| {
        let doc = list.to_json();
        b.iter(|| black_box(NodeList::parse(doc.as_bytes(), &Default::default()).unwrap()))
    });
    group.finish();
}

criterion_group!(benches, emit);
criterion_main!(benches);
