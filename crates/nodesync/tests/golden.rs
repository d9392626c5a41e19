//! Every output format against a checked-in expected file, and every
//! nftables variant through the real `nft -c -f`.
//!
//! To accept intended changes: `UPDATE_GOLDEN=1 cargo test -p nodesync --test golden`.

mod common;

use std::path::PathBuf;

use b24_nodes::NodeList;
use nodesync::emit::{Format, RuleOptions, render};

fn example_list() -> NodeList {
    let doc = std::fs::read(common::workspace_file("deploy/examples/app.json")).unwrap();
    NodeList::parse(&doc, &Default::default()).unwrap()
}

fn full_options() -> RuleOptions {
    RuleOptions {
        ports: vec![443, 80],
        iface: Some("eth0".into()),
        table: "bitrix24".into(),
        set_only: false,
        forward: true,
        extra: vec![
            "192.168.10.0/24".parse().unwrap(),
            "fd12:3456::/48".parse().unwrap(),
        ],
    }
}

fn cases() -> Vec<(&'static str, Format, RuleOptions)> {
    let sets_only = RuleOptions {
        set_only: true,
        ..RuleOptions::default()
    };
    vec![
        (
            "nftables-default.nft",
            Format::Nftables,
            RuleOptions::default(),
        ),
        ("nftables-full.nft", Format::Nftables, full_options()),
        ("nftables-set-only.nft", Format::Nftables, sets_only),
        ("ipset.txt", Format::Ipset, full_options()),
        ("iptables.rules", Format::Iptables, full_options()),
        ("ip6tables.rules", Format::Ip6tables, full_options()),
        ("nginx.conf", Format::Nginx, full_options()),
        ("plain.txt", Format::Plain, full_options()),
        ("app.json", Format::Json, full_options()),
    ]
}

fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

#[test]
fn outputs_match_golden_files() {
    let list = example_list();
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    let mut mismatches = Vec::new();
    for (name, format, options) in cases() {
        let rendered = render(format, &list, &options);
        let path = golden_dir().join(name);
        if update {
            std::fs::write(&path, &rendered).unwrap();
            continue;
        }
        let expected = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e} (UPDATE_GOLDEN=1 creates it)", path.display()));
        if rendered != expected {
            mismatches.push(format!(
                "--- {name} expected\n{expected}\n--- {name} got\n{rendered}"
            ));
        }
    }
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
}

#[test]
fn nftables_outputs_pass_nft_check() {
    if !common::can_run_as_root("nftables_outputs_pass_nft_check", &["nft"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // The golden lists, plus a v4-only and a v6-only list (an empty set has
    // no elements clause) and a large list.
    let v4_only = NodeList::parse(
        br#"{"nodes": ["192.0.2.1"]}"#,
        &b24_nodes::Limits::allowing_special(),
    )
    .unwrap();
    let v6_only = NodeList::parse(
        br#"{"nodes": ["2001:db8::1"]}"#,
        &b24_nodes::Limits::allowing_special(),
    )
    .unwrap();
    let large = NodeList::from_networks((0..20_000u32).map(|i| {
        ipnet::IpNet::V4(
            ipnet::Ipv4Net::new(std::net::Ipv4Addr::from(0x0b00_0000 + i * 4), 31).unwrap(),
        )
    }));
    let mut checked = 0;
    for list in [example_list(), v4_only, v6_only, large] {
        for (name, format, options) in cases() {
            if format != Format::Nftables {
                continue;
            }
            let path = dir.path().join(name);
            std::fs::write(&path, render(format, &list, &options)).unwrap();
            if let Err(e) = common::nft_check(&path) {
                panic!(
                    "nft -c rejected {name} for a list of {} networks:\n{e}",
                    list.len()
                );
            }
            checked += 1;
        }
    }
    assert_eq!(checked, 12);
}
