//! Rendering cost at the parser's entry limit (100 000 networks): the
//! nodesync target is ≤ 200 ms for the whole emit.

use std::hint::black_box;

use b24_nodes::NodeList;
use b24_testkit::synthetic::distinct_networks;
use criterion::{Criterion, criterion_group, criterion_main};
use nodesync::emit::{Format, RuleOptions, render};

fn emit(c: &mut Criterion) {
    let list = NodeList::from_networks(distinct_networks(100_000));
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
