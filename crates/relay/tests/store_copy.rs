//! `b24-relay store copy` from SQLite into PostgreSQL while the SQLite
//! `serve` keeps taking requests: the first copy passes its count check,
//! the copy after the switch brings what arrived meanwhile, a third changes
//! nothing; every acknowledged request, link and installed application is
//! in PostgreSQL exactly once.

mod common;

use std::collections::BTreeSet;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use b24_relay::Store;
use b24_relay::config::StoreConfig;
use b24_relay::store::{AppInstall, JobState, LinkKey, LinkKind, StoreOptions};
use common::client;
use common::postgres::{TestPostgres, unique_schema};

fn write_config(dir: &Path, name: &str, store_line: &str, port: u16) -> std::path::PathBuf {
    std::fs::write(dir.join("hook"), "http://127.0.0.1:9/rest/1/s3cr3t/").unwrap();
    std::fs::write(dir.join("token"), "app-token-123").unwrap();
    // "partner" has no route: its jobs end at once as skipped, as many
    // jobs of a real store did; "other" feeds the route and stays pending.
    let text = format!(
        r#"
listen = "127.0.0.1:{port}"
{store_line}
workers = 2
retry_base_delay = "1h"

[portal.partner]
webhook = {{ file = "{dir}/hook" }}
application_token = {{ file = "{dir}/token" }}

[portal.other]
webhook = {{ file = "{dir}/hook" }}
application_token = {{ file = "{dir}/token" }}

[portal.esb]
webhook = {{ file = "{dir}/hook" }}

[[route]]
name = "other-to-esb"
from = "other"
to = "esb"
when = {{ category = 2, stages = ["C2:PREPARATION"] }}
target = {{ category = 3, stage = "C3:NEW" }}
"#,
        dir = dir.display(),
    );
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

async fn post_event(url: &str, portal: &str, deal: i64) -> u16 {
    static CLIENT: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
    CLIENT
        .get_or_init(client)
        .post(format!("{url}/hook/event/{portal}"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!(
            "event=ONCRMDEALUPDATE&data[FIELDS][ID]={deal}&auth[application_token]=app-token-123"
        ))
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

fn copy(config: &Path, from: &Path) -> (bool, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_b24-relay"))
        .args(["store", "copy", "--from"])
        .arg(format!("sqlite://{}", from.display()))
        .arg("--config")
        .arg(config)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_copy_under_a_running_intake_loses_and_duplicates_nothing() {
    b24_testkit::install_crypto_provider();
    let Some(pg) = TestPostgres::get("store_copy_under_a_running_intake") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("relay.db");
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let sqlite_config = write_config(
        dir.path(),
        "relay.toml",
        &format!("store = \"sqlite://{}\"", db.display()),
        port,
    );
    let schema = unique_schema("store_copy");
    let pg_config = write_config(dir.path(), "pg.toml", &pg.store_line(&schema), port);

    // History a real store has: links, copied files, an installed
    // application, an answered and a waiting rule run.
    {
        let store = Store::open_sqlite(&db).await.unwrap();
        for id in 1..=40 {
            let key = LinkKey {
                kind: if id % 2 == 0 {
                    LinkKind::Deal
                } else {
                    LinkKind::Contact
                },
                source_portal: "other",
                source_id: id,
                target_portal: "esb",
            };
            store
                .set_link(&key, 1000 + id, Some("digest"))
                .await
                .unwrap();
        }
        let deal = LinkKey {
            kind: LinkKind::Deal,
            source_portal: "other",
            source_id: 2,
            target_portal: "esb",
        };
        store
            .add_copied_files(&deal, "ufCrm_DOCS", &[7, 8])
            .await
            .unwrap();
        let install = AppInstall {
            client_endpoint: "https://other.test/rest/".into(),
            domain: "other.test".into(),
            member_id: "m-1".into(),
            scopes: "crm,bizproc".into(),
            application_token: b24_client::Secret::new("app-token"),
            tokens: b24_client::TokenPair {
                access_token: b24_client::Secret::new("access-1"),
                refresh_token: b24_client::Secret::new("refresh-1"),
            },
            reinstall_reason: None,
            updated_at_ms: 0,
            server_endpoint: Some("https://oauth.bitrix24.tech/rest/".into()),
        };
        store.save_app_install("other", &install).await.unwrap();
        let answered = store
            .enqueue_rule_call("other", 501, "W1", "event-token-1", "other-to-esb")
            .await
            .unwrap();
        let job = store.claim(Duration::from_secs(60)).await.unwrap().unwrap();
        assert_eq!(job.id, answered.job_id);
        store
            .finish(job.id, JobState::Done, "created", Some(77))
            .await
            .unwrap();
        let calls = store.rule_calls_to_answer("other", None).await.unwrap();
        store.finish_rule_call(calls[0].id, None).await.unwrap();
        store
            .enqueue_rule_call("other", 502, "W2", "event-token-2", "other-to-esb")
            .await
            .unwrap();
        store.close().await;
    }

    let mut relay = Command::new(env!("CARGO_BIN_EXE_b24-relay"))
        .args(["serve", "--config"])
        .arg(&sqlite_config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}");
    for _ in 0..400 {
        if post_event(&url, "partner", 1).await == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }

    // Intake keeps going while the copies run.
    let acknowledged = Arc::new(Mutex::new(BTreeSet::<(String, i64)>::new()));
    let stop = tokio_util::sync::CancellationToken::new();
    let flood = {
        let (acknowledged, stop, url) = (acknowledged.clone(), stop.clone(), url.clone());
        tokio::spawn(async move {
            let mut deal = 10;
            while !stop.is_cancelled() {
                deal += 1;
                let portal = if deal % 3 == 0 { "other" } else { "partner" };
                if post_event(&url, portal, deal).await == 200 {
                    acknowledged
                        .lock()
                        .unwrap()
                        .insert((portal.to_owned(), deal));
                }
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (ok, text) = tokio::task::spawn_blocking({
        let (pg_config, db) = (pg_config.clone(), db.clone());
        move || copy(&pg_config, &db)
    })
    .await
    .unwrap();
    assert!(ok, "first copy: {text}");
    assert!(text.contains("check passed"), "{text}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.cancel();
    flood.await.unwrap();
    // The switch: the SQLite serve stops, the last copy brings the rest.
    terminate(&relay);
    relay.wait().unwrap();
    let (ok, text) = copy(&pg_config, &db);
    assert!(ok, "second copy: {text}");
    let (ok, text) = copy(&pg_config, &db);
    assert!(ok, "third copy: {text}");
    assert!(
        text.contains("jobs: 0 new"),
        "a third copy changes nothing: {text}"
    );

    let sqlite = Store::open_sqlite(&db).await.unwrap();
    let config = StoreConfig::from_url(&pg.url, None, Some(&schema)).unwrap();
    let postgres = Store::open(&config, StoreOptions::default()).await.unwrap();
    let source = sqlite.export().await.unwrap();
    let copied = postgres.export().await.unwrap();
    let acknowledged = acknowledged.lock().unwrap().clone();
    assert!(
        acknowledged.len() > 50,
        "the flood ran: {}",
        acknowledged.len()
    );
    let in_postgres: BTreeSet<(String, i64)> = copied
        .jobs
        .iter()
        .map(|r| (r.job.portal.clone(), r.job.deal_id))
        .collect();
    let missing: Vec<_> = acknowledged.difference(&in_postgres).collect();
    assert!(
        missing.is_empty(),
        "acknowledged but not copied: {missing:?}"
    );
    assert_eq!(copied.jobs.len(), source.jobs.len(), "one job per job");
    assert_eq!(copied.links.len(), 40);
    assert_eq!(copied.copied_files.len(), 2);
    assert_eq!(copied.installs.len(), 1);
    assert_eq!(
        copied.installs[0].1.tokens.refresh_token.expose(),
        "refresh-1"
    );
    assert_eq!(
        copied.installs[0].1.server_endpoint.as_deref(),
        Some("https://oauth.bitrix24.tech/rest/"),
        "the authorization server travels with the install"
    );
    let open_calls: Vec<_> = copied
        .rule_calls
        .iter()
        .filter(|c| c.answered_at_ms.is_none())
        .collect();
    assert_eq!((copied.rule_calls.len(), open_calls.len()), (2, 1));
    // A waiting job still waits, and its rule run follows it.
    let waiting = copied
        .jobs
        .iter()
        .find(|r| r.job.deal_id == 502)
        .expect("the waiting rule run's job");
    assert_eq!(waiting.job.state, JobState::Pending);
    assert_eq!(open_calls[0].job_id, waiting.job.id);
    sqlite.close().await;
    postgres.close().await;
}

fn terminate(child: &std::process::Child) {
    let status = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(status.success());
}
