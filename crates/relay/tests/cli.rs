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
    let (source, target) = start_fast_portals().await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &source,
        &target,
        &Options {
            values: FULL_TABLE,
            ..Options::fast()
        },
    );

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
    assert_eq!(plan["onCreate"]["stageId"], "C3:NEW");
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
        text.contains("ufCrm_NOPE → ufCrm_GONE: the source field does not exist on partner"),
        "{text}"
    );
    assert!(
        text.contains("ufCrm_NOPE → ufCrm_GONE: the target field does not exist on esb"),
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
        .webhook(1, SOURCE_SECRET, &["crm", "user", "im"])
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
    let config = write_config(dir.path(), &source, &target, &Options::fast());
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
    let (source, target) = start_fast_portals().await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &source, &target, &Options::fast());
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

/// `check` runs every test a transfer would and lists each problem of a
/// deliberately broken mapping, with the fix; the relay's own fields are
/// refused before that, by the configuration.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_lists_every_problem_of_a_broken_mapping() {
    let (source, target) = start_corpus_portals().await;
    let dir = tempfile::tempdir().unwrap();
    // The source webhook without `im`: notify needs it.
    let source_hook = dir.path().join("partner-no-im.webhook");
    let broken = Options {
        mapping: Some(
            r#"fields = { title = "title", ufCrm_DELIVERY = "ufCrm_SHIPPING", ufCrm_COLORS = "ufCrm_NOTES", ufCrm_TAGS = "ufCrm_QTY", ufCrm_MANAGER = "ufCrm_SITE_X", ufCrm_PARTY = "ufCrm_WEIGHT", ufCrm_QTY = "createdTime", ufCrm_GONE = "comments", ufCrm_SITE = "ufCrm_NOPE" }
values.ufCrm_SHIPPING = { "1" = "71", "2" = "99" }
files = ["ufCrm_DOCS"]"#,
        ),
        route_extra: "",
        ..Options::fast()
    };
    std::fs::write(&source_hook, source.webhook_url(2, "noImS3cret")).unwrap();
    let hook = source_hook.display().to_string();
    let text = edited(
        &config_text(dir.path(), &source, &target, &broken),
        |table| {
            first_route(table)["constants"]
                .as_table_mut()
                .unwrap()
                .insert("ufCrm_COLORS".into(), 5.into());
            table["portal"]["partner"]["webhook"]
                .as_table_mut()
                .unwrap()
                .insert("file".into(), hook.into());
        },
    );
    let config = dir.path().join("broken.toml");
    std::fs::write(&config, &text).unwrap();
    let (ok, output) = relay(&["check"], &config);
    assert!(!ok, "{output}");
    let problems: Vec<&str> = output
        .lines()
        .filter(|l| l.starts_with("PROBLEM"))
        .collect();
    for expected in [
        // A value table entry pointing at no option, and a gap in the table.
        "values.ufCrm_SHIPPING: \"2\" maps to 99, which is not an option",
        "option 3 (\"Самовывоз\") has no entry in the route's value table",
        // list -> string: by label, fine; multiple string -> integer: refused.
        "ufCrm_TAGS → ufCrm_QTY: the deal has 2 values and the target field holds one",
        // Employees go to employee or string fields only.
        "ufCrm_MANAGER → ufCrm_SITE_X: the target field does not exist on esb",
        "ufCrm_PARTY → ufCrm_WEIGHT: a crm binding field cannot be written to a double field",
        "ufCrm_QTY → createdTime: the target field is read-only",
        "ufCrm_GONE → comments: the source field does not exist on partner",
        "ufCrm_SITE → ufCrm_NOPE: the target field does not exist on esb",
        "files: target field ufCrm_DOCS does not exist on esb",
        "constant ufCrm_COLORS = 5 is not an option of ufCrm_COLORS on esb",
    ] {
        assert!(
            problems.iter().any(|p| p.contains(expected)),
            "missing: {expected}\n{output}"
        );
    }
    assert!(
        output.contains("PROBLEM partner: "),
        "the webhook's missing scope: {output}"
    );
    // Reserved target fields: refused by the configuration itself.
    let reserved = edited(&text, |table| {
        first_route(table)["fields"]
            .as_table_mut()
            .unwrap()
            .insert("ufCrm_NOTE".into(), "originId".into());
    });
    std::fs::write(&config, reserved).unwrap();
    let (ok, output) = relay(&["check", "--offline"], &config);
    assert!(!ok, "{output}");
    assert!(
        output.contains("`originId` is written by the relay itself"),
        "{output}"
    );
    source.shutdown().await;
    target.shutdown().await;
}
