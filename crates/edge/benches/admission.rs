//! The whole per-request decision at 100 000 list entries: longest-prefix
//! route match plus admission (route rules, `extra`, the live nodes list
//! behind its ArcSwap) — what the edge does before forwarding.

use std::hint::black_box;
use std::sync::Arc;

use b24_edge::admit::RouteTable;
use b24_edge::config::Config;
use b24_edge::metrics::Metrics;
use b24_nodes::{LiveNodes, NodeList};
use b24_testkit::synthetic::{scattered_networks, scattered_probes};
use criterion::{Criterion, criterion_group, criterion_main};

const CONFIG: &str = r#"
[server]
listen = "127.0.0.1:0"
tls_cert = "unused"
tls_key = "unused"
[nodes]
extra = ["192.0.2.0/24"]
[[route]]
prefix = "/"
upstream = "http://127.0.0.1:8080"
allow = ["nodes"]
[[route]]
prefix = "/rest/"
upstream = "http://127.0.0.1:8080"
allow = ["nodes", "10.0.0.0/8"]
[[route]]
prefix = "/public/"
upstream = "http://127.0.0.1:8080"
allow = ["any"]
[[route]]
prefix = "/office/"
upstream = "http://127.0.0.1:8080"
allow = ["10.0.0.0/8", "172.16.0.0/12"]
"#;

fn admission(c: &mut Criterion) {
    let config = Config::from_toml(CONFIG).unwrap();
    let table = RouteTable::new(&config.routes, &config.nodes.extra, &Metrics::new());
    let nodes = LiveNodes::new();
    nodes.store(Arc::new(NodeList::from_networks(scattered_networks(
        100_000,
    ))));
    let probes = scattered_probes(1024);
    let paths = ["/rest/1/event.bind", "/webhook/handler.php", "/public/ping"];
    let mut i = 0;
    c.bench_function("route_and_admission/100000_entries", |b| {
        b.iter(|| {
            i = (i + 1) % probes.len();
            let path = paths[i % paths.len()];
            black_box(table.decide(black_box(path), black_box(probes[i]), &nodes))
        })
    });
}

criterion_group!(benches, admission);
criterion_main!(benches);
