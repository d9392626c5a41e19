//! The whole per-request decision at 100 000 list entries: longest-prefix
//! route match plus admission (route rules, `extra`, the live nodes list
//! behind its ArcSwap) — what the edge does before forwarding.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use b24_edge::config::Config;
use b24_edge::routes::RouteTable;
use b24_nodes::{LiveNodes, NodeList};
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
    let table = RouteTable::new(&config.routes, &config.nodes.extra);
    let nodes = LiveNodes::new();
    nodes.store(Arc::new(list_of(100_000)));
    let probes = probes();
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
