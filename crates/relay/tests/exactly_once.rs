//! Exactly once without trusting the store: the store deleted mid-run, an
//! old backup restored, a fresh relay on portals that already hold its
//! deals — never a second target deal, contact, company or file; `links
//! rebuild` restores the table from the target. And concurrent workers on
//! deals that share a contact and a company create each once.

mod common;

use std::path::Path;
use std::time::Duration;

use b24_emulator::{EntityType, Portal};
use b24_relay::{Config, JobState, Relay};
use common::corpus;
use common::*;
use serde_json::json;

const WAIT: Duration = Duration::from_secs(60);

async fn settle(relay: &Relay, done: usize) {
    wait_until("the jobs end", WAIT, async || {
        let store = &relay.store;
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
            && store.jobs(Some(JobState::Done), 1000).await.unwrap().len() >= done
    })
    .await;
    let failed = relay.store.jobs(Some(JobState::Failed), 10).await.unwrap();
    assert!(failed.is_empty(), "{failed:?}");
}

fn counts(target: &Portal) -> (usize, usize, usize, usize) {
    let deals = target.admin().records(EntityType::Deal);
    let files = deals
        .iter()
        .map(|d| {
            d.get("ufCrm_FILES")
                .and_then(|f| f.as_array())
                .map_or(0, Vec::len)
        })
        .sum();
    (
        deals.len(),
        target.admin().records(EntityType::Contact).len(),
        target.admin().records(EntityType::Company).len(),
        files,
    )
}

fn store_files(dir: &Path) -> Vec<std::path::PathBuf> {
    ["relay.db", "relay.db-wal", "relay.db-shm"]
        .iter()
        .map(|name| dir.join(name))
        .collect()
}

fn copy_store(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for file in store_files(from) {
        let name = file.file_name().unwrap();
        let _ = std::fs::remove_file(to.join(name));
        if file.exists() {
            std::fs::copy(&file, to.join(name)).unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_or_restored_store_never_gives_a_second_record() {
    let (source, target) = start_corpus_portals().await;
    let dir = tempfile::tempdir().unwrap();
    let options = Options {
        mapping: Some(corpus::ROUTE),
        ..Options::fast()
    };
    let text = config_text(dir.path(), &source, &target, &options);
    let config = || Config::parse(&text).unwrap();
    let [full, empty, shared] = corpus::insert_deals(&source, SOURCE_SECRET).await;

    // Two deals transferred; the store is backed up (the relay stopped).
    let relay = Relay::start(config()).await.unwrap();
    let url = format!("http://{}", relay.addr);
    for deal in [full, empty] {
        assert_eq!(post_rule(&url, deal).await, 200);
    }
    settle(&relay, 2).await;
    relay.shutdown().await;
    let backup = dir.path().join("backup");
    copy_store(dir.path(), &backup);
    assert_eq!(counts(&target), (2, 2, 1, 2));

    // The third deal, then the store is lost.
    let relay = Relay::start(config()).await.unwrap();
    assert_eq!(
        post_rule(&format!("http://{}", relay.addr), shared).await,
        200
    );
    settle(&relay, 3).await;
    relay.shutdown().await;
    assert_eq!(counts(&target), (3, 2, 1, 2));
    for file in store_files(dir.path()) {
        let _ = std::fs::remove_file(file);
    }

    // A fresh store: every deal announced again, each found by its markers.
    let relay = Relay::start(config()).await.unwrap();
    let url = format!("http://{}", relay.addr);
    for deal in [full, empty, shared] {
        assert_eq!(post_rule(&url, deal).await, 200);
    }
    settle(&relay, 3).await;
    relay.shutdown().await;
    assert_eq!(
        counts(&target),
        (3, 2, 1, 2),
        "nothing created twice, no file copied again"
    );

    // The old backup restored: it knows two deals; links rebuild finds the third.
    copy_store(&backup, dir.path());
    let parts = b24_relay::Parts::open(config()).await.unwrap();
    let route = parts.config.routes[0].clone();
    let report = b24_relay::links::rebuild(&parts.transfer, &route, false)
        .await
        .unwrap();
    assert_eq!(report.scanned["deal"], 3, "{report}");
    assert_eq!(report.scanned["contact"], 2, "{report}");
    assert_eq!(report.scanned["company"], 1, "{report}");
    assert_eq!(report.added, 1, "only the third deal was unknown: {report}");
    assert_eq!(report.kept, 5, "{report}");
    assert!(report.conflicts.is_empty(), "{report}");
    assert!(report.requests <= 6, "batched pages: {report}");
    drop(parts);
    let relay = Relay::start(config()).await.unwrap();
    let url = format!("http://{}", relay.addr);
    // A change on the source after the restore still arrives.
    rest(
        &source,
        SOURCE_SECRET,
        "crm.item.update",
        json!({"entityTypeId": 2, "id": shared, "fields": {"title": "Вторая поставка (изм.)"}}),
    )
    .await;
    for deal in [full, empty, shared] {
        assert_eq!(post_rule(&url, deal).await, 200);
    }
    settle(&relay, 5).await;
    relay.shutdown().await;
    assert_eq!(counts(&target), (3, 2, 1, 2));
    let titles: Vec<String> = target
        .admin()
        .records(EntityType::Deal)
        .iter()
        .map(|d| d["title"].as_str().unwrap().to_owned())
        .collect();
    assert!(
        titles.contains(&"Вторая поставка (изм.)".to_owned()),
        "{titles:?}"
    );
    source.shutdown().await;
    target.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_workers_create_a_shared_contact_and_company_once() {
    let (source, target) = start_corpus_portals().await;
    let dir = tempfile::tempdir().unwrap();
    let options = Options {
        mapping: Some(r#"fields = { title = "title" }"#),
        workers: 8,
        ..Options::fast()
    };
    let text = config_text(dir.path(), &source, &target, &options);
    // Slow target answers widen the window in which workers overlap.
    target.faults().set_method(
        "batch",
        b24_emulator::MethodFaults {
            latency_ms: 250,
            ..Default::default()
        },
    );
    let relay = Relay::start(Config::parse(&text).unwrap()).await.unwrap();
    let url = format!("http://{}", relay.addr);
    let deals: Vec<i64> = (0..20)
        .map(|n| {
            source
                .admin()
                .insert_record(
                    EntityType::Deal,
                    &record(json!({"title": format!("Общий клиент {n}"), "categoryId": 2, "stageId": "C2:PREPARATION",
                        "contactIds": [2, 1], "companyId": 1})),
                )
                .unwrap()
        })
        .collect();
    let posted = deals.iter().map(|d| post_rule(&url, *d));
    for status in futures_util::future::join_all(posted).await {
        assert_eq!(status, 200);
    }
    settle(&relay, 20).await;
    let (deals_on_target, contacts, companies, _) = counts(&target);
    assert_eq!((deals_on_target, contacts, companies), (20, 2, 1));
    for deal in target.admin().records(EntityType::Deal) {
        assert_eq!(deal["contactIds"].as_array().unwrap().len(), 2);
    }
    relay.shutdown().await;
    source.shutdown().await;
    target.shutdown().await;
}
