//! The relay configuration shipped for the container parses, with its
//! secret files supplied (the relay has no offline check of its own; the
//! edge configs are checked with `b24-edge --check-config` by
//! scripts/check-deploy).

use std::path::Path;

fn deploy(path: &str) -> String {
    let file = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../deploy")
        .join(path);
    std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()))
}

#[test]
fn the_container_relay_config_is_valid() {
    let dir = tempfile::tempdir().unwrap();
    let mut text = deploy("container/relay.toml");
    for (name, value) in [
        (
            "partner.webhook",
            "https://partner.bitrix24.ru/rest/1/s3cr3t/",
        ),
        ("partner.token", "token"),
        ("partner.rule-secret", "rule"),
        ("esb.webhook", "https://esb.bitrix24.ru/rest/9/s3cr3t2/"),
    ] {
        let path = dir.path().join(name);
        std::fs::write(&path, value).unwrap();
        text = text.replace(
            &format!("/etc/b24-relay/secrets/{name}"),
            &path.display().to_string(),
        );
    }
    let config = b24_relay::Config::parse(&text).expect("deploy/container/relay.toml parses");
    assert_eq!(
        config.listen.port(),
        8080,
        "compose.yaml's edge forwards to relay:8080"
    );
    assert_eq!(config.metrics_listen.map(|a| a.port()), Some(9902));
    assert!(config.route("partner-to-esb").is_some());
    assert!(
        matches!(&config.store.location,
            b24_relay::config::StoreLocation::Sqlite(path) if path == Path::new("/var/lib/b24/relay.db")),
        "the relay-state volume"
    );
}

#[test]
fn compose_forwards_the_edge_to_the_relay_port() {
    let edge = deploy("container/edge.toml");
    let compose = deploy("container/compose.yaml");
    assert!(edge.contains("upstream = \"http://relay:8080\""));
    assert!(compose.contains("\"8080\""), "the relay exposes 8080");
    assert!(compose.contains("443:8443") && edge.contains("listen = \"0.0.0.0:8443\""));
}
