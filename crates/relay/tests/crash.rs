//! Crash safety: the relay process is killed with SIGKILL at random moments
//! while it transfers 50 deals (and the target drops some answers after
//! doing the work), restarted each time, and at the end every source deal
//! has exactly one target deal.

mod common;

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use b24_relay::{JobState, Store};
use common::*;
use rand::Rng;

fn spawn_relay(config: &std::path::Path, log: &std::path::Path) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    Command::new(env!("CARGO_BIN_EXE_b24-relay"))
        .args(["serve", "--config"])
        .arg(config)
        .env("RUST_LOG", "b24_relay=debug")
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .spawn()
        .expect("relay binary starts")
}

async fn wait_healthy(url: &str) {
    let health = format!("{url}/healthz");
    for _ in 0..400 {
        if let Ok(response) = client().get(&health).send().await {
            if response.status() == 200 {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the relay did not come up");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_relay_mid_transfer_never_loses_or_duplicates_a_deal() {
    b24_testkit::install_crypto_provider();
    const DEALS: usize = 50;
    let (source, target) = start_portals(250, 10.0).await;
    // Slow answers, so that kills land in the middle of transfers; and the
    // target drops some answers after doing the work (a lost response).
    for (portal, ms, dropped) in [(&source, 60, 0.0), (&target, 250, 0.15)] {
        portal.faults().set_method(
            "batch",
            b24_emulator::MethodFaults {
                latency_ms: ms,
                drop_response_rate: dropped,
                ..Default::default()
            },
        );
    }
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    let options = Options {
        listen: format!("127.0.0.1:{port}"),
        rate: (250, 10.0),
        workers: 4,
        lease: "3s",
        ..Options::default()
    };
    let config = write_config(dir.path(), &source, &target, &options);
    let log = dir.path().join("relay.log");
    let url = format!("http://127.0.0.1:{port}");
    let mut child = spawn_relay(&config, &log);
    wait_healthy(&url).await;
    let ids: Vec<i64> = (0..DEALS)
        .map(|n| plain_deal(&source, &format!("Crash {n}"), "C2:PREPARATION"))
        .collect();
    for id in &ids {
        assert_eq!(post_rule(&url, *id).await, 200, "queued before the kills");
    }
    let mut kills = 0;
    for _ in 0..8 {
        let pause = rand::rng().random_range(150..900);
        tokio::time::sleep(Duration::from_millis(pause)).await;
        child.kill().expect("SIGKILL");
        child.wait().unwrap();
        kills += 1;
        child = spawn_relay(&config, &log);
        wait_healthy(&url).await;
    }
    let store = Store::open_sqlite(&dir.path().join("relay.db"))
        .await
        .unwrap();
    wait_until("every job ends", Duration::from_secs(300), async || {
        store
            .jobs(Some(JobState::Pending), 1)
            .await
            .unwrap()
            .is_empty()
            && store
                .jobs(Some(JobState::Running), 1)
                .await
                .unwrap()
                .is_empty()
    })
    .await;
    child.kill().unwrap();
    child.wait().unwrap();

    let log_text = std::fs::read_to_string(&log).unwrap_or_default();
    for secret in [SOURCE_SECRET, TARGET_SECRET, APP_TOKEN, RULE_SECRET] {
        assert!(!log_text.contains(secret), "a secret is in the log");
    }
    assert!(kills >= 8);
    // Proof that kills landed mid-transfer: a restart found claimed jobs.
    let interrupted = log_text
        .matches("jobs left running by the previous process")
        .count();
    assert!(interrupted >= 1, "no kill interrupted a transfer");
    // Proof that lost responses happened and were resolved by the lookup
    // (15 % of target answers dropped: none in 50+ batches has p < 0.001).
    let found = log_text
        .matches("the target already holds this deal")
        .count();
    assert!(found >= 1, "no create was found by originatorId/originId");
    eprintln!(
        "{interrupted} of {kills} kills interrupted transfers; {found} creates were found by lookup"
    );
    assert!(
        store
            .jobs(Some(JobState::Failed), 10)
            .await
            .unwrap()
            .is_empty(),
        "{:?}",
        store.jobs(Some(JobState::Failed), 10).await.unwrap()
    );
    let deals = target_deals(&target);
    let mut per_source = std::collections::BTreeMap::<String, usize>::new();
    for deal in &deals {
        *per_source
            .entry(deal["originId"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    for id in &ids {
        assert_eq!(
            per_source.get(&id.to_string()),
            Some(&1),
            "deal {id}: {per_source:?}"
        );
    }
    assert_eq!(deals.len(), DEALS);
    source.shutdown().await;
    target.shutdown().await;
}
