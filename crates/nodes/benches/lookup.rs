//! Admission-check cost at the list sizes Bitrix24 could plausibly publish:
//! up to 100 000 mixed IPv4/IPv6 entries (the parser's entry limit).

use std::hint::black_box;

use b24_nodes::NodeList;
use b24_testkit::synthetic::{scattered_networks, scattered_probes};
use criterion::{Criterion, criterion_group, criterion_main};

fn lookup(c: &mut Criterion) {
    let probes = scattered_probes(1024);
    for entries in [1_000, 100_000] {
        let list = NodeList::from_networks(scattered_networks(entries));
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
