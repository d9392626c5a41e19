//! The binary's commands against two emulated portals: `check`, `fields`,
//! `transfer --dry-run`, `transfer` (queues) and `jobs`.

mod common;

use std::process::Command;

use common::*;

fn relay(args: &[&str], config: &std::path::Path) -> (bool, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_b24-relay"))
        .args(args)
        .arg("--config")
        .arg(config)
        .env("RUST_LOG", "warn")
        .output()
        .expect("the binary runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    for secret in [SOURCE_SECRET, TARGET_SECRET, APP_TOKEN, RULE_SECRET] {
        assert!(!text.contains(secret), "a secret in the output: {text}");
    }
    (output.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_fields_dry_run_transfer_and_jobs() {
    b24_testkit::install_crypto_provider();
    let (source, target) = start_portals(50, 2.0).await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &source, &target, &Options::default());

    let (ok, text) = relay(&["check"], &config);
    assert!(ok, "{text}");
    assert!(
        text.contains("everything the routes need is there"),
        "{text}"
    );

    let (ok, text) = relay(&["fields", "--route", "partner-to-esb"], &config);
    assert!(ok, "{text}");
    assert!(
        text.contains("ufCrm_LEVEL") && text.contains("ufCrm_TIER"),
        "{text}"
    );
    assert!(
        text.contains("title = \"title\""),
        "suggested mapping: {text}"
    );

    let deal = plain_deal(&source, "Dry", "C2:PREPARATION");
    let (ok, text) = relay(
        &[
            "transfer",
            "--route",
            "partner-to-esb",
            "--deal",
            &deal.to_string(),
            "--dry-run",
        ],
        &config,
    );
    assert!(ok, "{text}");
    let plan: serde_json::Value = serde_json::from_str(text.trim()).expect(&text);
    assert_eq!(plan["fields"]["title"], "Dry");
    assert_eq!(plan["fields"]["ufCrm_TIER"], 72);
    assert_eq!(plan["fields"]["assignedById"], 17);
    assert_eq!(plan["fields"]["stageId"], "C3:NEW");
    assert!(target_deals(&target).is_empty(), "a dry run writes nothing");

    let (ok, text) = relay(
        &[
            "transfer",
            "--route",
            "partner-to-esb",
            "--deal",
            &deal.to_string(),
        ],
        &config,
    );
    assert!(ok, "{text}");
    assert!(text.contains("queued as job 1"), "{text}");
    let (ok, text) = relay(&["jobs", "list"], &config);
    assert!(
        ok && text.contains("job 1 [pending] partner deal"),
        "{text}"
    );
    let (ok, text) = relay(&["jobs", "show", "1"], &config);
    assert!(ok && text.contains("via cli"), "{text}");
    let (ok, text) = relay(&["jobs", "replay", "1"], &config);
    assert!(!ok && text.contains("only failed"), "{text}");

    // A mapping that does not fit the live fields is reported, exit non-zero.
    let broken = std::fs::read_to_string(&config)
        .unwrap()
        .replace(
            "title = \"title\"",
            "title = \"title\"\nufCrm_NOPE = \"ufCrm_GONE\"",
        )
        .replace("stage = \"C3:NEW\"", "stage = \"C3:NOPE\"");
    let broken_path = dir.path().join("broken.toml");
    std::fs::write(&broken_path, broken).unwrap();
    let (ok, text) = relay(&["check"], &broken_path);
    assert!(!ok, "{text}");
    assert!(
        text.contains("source field ufCrm_NOPE does not exist"),
        "{text}"
    );
    assert!(
        text.contains("target field ufCrm_GONE does not exist"),
        "{text}"
    );
    assert!(
        text.contains("stage C3:NOPE is not in pipeline 3 on esb"),
        "{text}"
    );

    let (ok, text) = relay(&["check"], &dir.path().join("missing.toml"));
    assert!(!ok && text.contains("missing.toml"), "{text}");
    source.shutdown().await;
    target.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_names_a_missing_scope() {
    b24_testkit::install_crypto_provider();
    let source = b24_emulator::Portal::builder()
        .domain("partner.test")
        .webhook(1, SOURCE_SECRET, &["crm", "user"])
        .seed(source_seed())
        .start()
        .await
        .unwrap();
    let target = b24_emulator::Portal::builder()
        .domain("esb.test")
        .webhook(1, TARGET_SECRET, &["user"])
        .seed(target_seed())
        .start()
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &source, &target, &Options::default());
    let (ok, text) = relay(&["check"], &config);
    assert!(!ok, "{text}");
    assert!(
        text.contains("esb: crm.item.add") && text.contains("`crm` scope"),
        "{text}"
    );
    source.shutdown().await;
    target.shutdown().await;
}

/// `check --offline` validates the file and loads its secrets without a
/// single request: the portals here are shut down before it runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_offline_validates_without_contacting_the_portals() {
    b24_testkit::install_crypto_provider();
    let (source, target) = start_portals(50, 2.0).await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &source, &target, &Options::default());
    source.shutdown().await;
    target.shutdown().await;

    let (ok, text) = relay(&["check", "--offline"], &config);
    assert!(ok, "{text}");
    assert!(text.contains("valid; 2 portal(s), 1 route(s)"), "{text}");

    let broken = dir.path().join("broken.toml");
    let original = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &broken,
        original.replace("[[route]]", "[[route]]\nfrom_portal = \"typo\""),
    )
    .unwrap();
    let (ok, text) = relay(&["check", "--offline"], &broken);
    assert!(!ok, "an unknown key must fail: {text}");
    assert!(text.contains("from_portal"), "{text}");
}
