//! Shared `batch` requests (`ClientBuilder::coalesce_batches`) against the
//! emulator: concurrent callers' batches travel together, up to 50 commands
//! a request, and every caller still gets exactly its own outcomes — its
//! references resolved within its own commands, its failures its own, a lost
//! answer "may have run" for writers and read again for readers, and a
//! caller that gave up never has its writes sent later.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use b24_client::{
    ApiErrorKind, Batch, BucketConfig, Client, CommandOutcome, Observer, RateLimits, Webhook,
};
use b24_emulator::{EntityType, MethodFaults, Portal};
use common::fast_retries;
use serde_json::json;

const SECRET: &str = "shared-s3cr3t";

/// Every shared request: (callers, commands).
#[derive(Default)]
struct Shared(Mutex<Vec<(usize, usize)>>);

impl Observer for Shared {
    fn batch_sent(&self, _portal: &str, callers: usize, commands: usize) {
        self.0.lock().unwrap().push((callers, commands));
    }
}

async fn portal() -> Portal {
    Portal::builder()
        .domain("target.test")
        .webhook(1, SECRET, &["crm"])
        .start()
        .await
        .expect("emulator starts")
}

/// A client whose bucket lets one request through every `1 / per_second`
/// seconds, starting empty: concurrent callers queue behind it.
fn client(portal: &Portal, per_second: f64, shared: Arc<Shared>) -> Client {
    let limits = RateLimits::new(BucketConfig {
        burst: 1,
        drain_per_second: per_second,
    })
    .unwrap()
    .starting_empty();
    Client::builder(
        Webhook::parse(&portal.webhook_url(1, SECRET)).unwrap(),
        limits,
    )
    .retry(fast_retries(3))
    .request_timeout(Duration::from_secs(3))
    .coalesce_batches(true)
    .observer(shared)
    .build()
    .unwrap()
}

/// A contact, then a deal bound to it by reference: what a transfer writes.
fn contact_and_deal(n: usize) -> Batch {
    Batch::new()
        .with(
            "contact",
            "crm.item.add",
            json!({"entityTypeId": 3, "fields": {"name": format!("Контакт {n}")}}),
        )
        .unwrap()
        .with(
            "deal",
            "crm.item.add",
            json!({"entityTypeId": 2, "fields": {
                "title": format!("Сделка №{n}"),
                "contactId": "$result[contact][item][id]",
            }}),
        )
        .unwrap()
}

fn deal_titled(portal: &Portal, title: &str) -> Vec<b24_emulator::Record> {
    portal
        .admin()
        .records(EntityType::Deal)
        .into_iter()
        .filter(|deal| deal["title"] == json!(title))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_batches_share_requests_and_each_gets_its_own_outcomes() {
    let portal = portal().await;
    let shared = Arc::new(Shared::default());
    let client = client(&portal, 4.0, shared.clone());
    let mut tasks = Vec::new();
    for n in 0..30 {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let mut batch = contact_and_deal(n);
            if n == 7 {
                // One caller's failing command is its own.
                batch
                    .push(
                        "missing",
                        "crm.item.get",
                        json!({"entityTypeId": 2, "id": 999_999}),
                    )
                    .unwrap();
            }
            (n, client.batch(&batch).await)
        }));
    }
    for task in tasks {
        let (n, outcome) = task.await.unwrap();
        let contact_id = outcome.result("contact").expect("contact added")["item"]["id"]
            .as_i64()
            .unwrap();
        let deal = outcome.result("deal").expect("deal added");
        assert_eq!(
            deal["item"]["contactId"].as_i64(),
            Some(contact_id),
            "caller {n}: its deal is bound to its own contact"
        );
        let stored = deal_titled(&portal, &format!("Сделка №{n}"));
        assert_eq!(stored.len(), 1, "caller {n}: one deal");
        let contact = portal
            .admin()
            .record(EntityType::Contact, contact_id)
            .unwrap();
        assert_eq!(contact["name"], json!(format!("Контакт {n}")));
        if n == 7 {
            match outcome.get("missing") {
                Some(CommandOutcome::Failed(error)) => {
                    assert_eq!(error.kind, ApiErrorKind::NotFound)
                }
                other => panic!("caller 7's own failure: {other:?}"),
            }
        } else {
            assert!(outcome.all_done(), "caller {n}: {:?}", outcome.stopped_by);
        }
    }
    let requests = portal.admin().request_count("batch");
    let sent = shared.0.lock().unwrap().clone();
    assert!(
        sent.iter().all(|(_, commands)| *commands <= 50),
        "at most 50 commands a request: {sent:?}"
    );
    assert_eq!(
        sent.iter().map(|(callers, _)| callers).sum::<usize>(),
        30,
        "every caller travelled once: {sent:?}"
    );
    assert!(
        requests <= 10,
        "30 batches waiting for one bucket took {requests} requests: {sent:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_shared_answer_may_have_run_for_writers_and_is_read_again_for_readers() {
    let portal = portal().await;
    let existing = portal
        .admin()
        .insert_record(
            EntityType::Deal,
            &serde_json::from_value(json!({"title": "Есть"})).unwrap(),
        )
        .unwrap();
    let shared = Arc::new(Shared::default());
    let client = client(&portal, 2.0, shared.clone());
    // The first request with a crm.item.add in it runs, and its answer is lost.
    portal.admin().faults().set_method(
        "crm.item.add",
        MethodFaults {
            drop_next: 1,
            ..MethodFaults::default()
        },
    );
    let mut tasks = Vec::new();
    for n in 0..6 {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let batch = if n % 2 == 0 {
                contact_and_deal(n)
            } else {
                Batch::new()
                    .with(
                        "read",
                        "crm.item.get",
                        json!({"entityTypeId": 2, "id": existing}),
                    )
                    .unwrap()
            };
            (n, client.batch(&batch).await)
        }));
    }
    let mut unknown_writers = 0;
    for task in tasks {
        let (n, outcome) = task.await.unwrap();
        if n % 2 == 1 {
            assert!(
                outcome.all_done(),
                "reader {n} reads again after a lost answer: {:?}",
                outcome.stopped_by
            );
            assert_eq!(
                outcome.result("read").unwrap()["item"]["title"],
                json!("Есть")
            );
            continue;
        }
        match outcome.get("deal") {
            Some(CommandOutcome::Done(_)) => {}
            Some(CommandOutcome::Unknown) => {
                unknown_writers += 1;
                let error = outcome.stopped_by.as_ref().expect("why");
                assert!(error.may_have_executed(), "{error}");
            }
            other => panic!("writer {n}: {other:?}"),
        }
        // Whatever the writer was told, the portal holds its deal at most once.
        assert!(deal_titled(&portal, &format!("Сделка №{n}")).len() <= 1);
    }
    assert!(
        unknown_writers >= 1,
        "the lost answer reached at least its own writer"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_that_gave_up_never_has_its_writes_sent_later() {
    let portal = portal().await;
    let shared = Arc::new(Shared::default());
    // One request every 2 s: the queue forms behind the first.
    let client = client(&portal, 0.5, shared.clone());
    let mut tasks = Vec::new();
    for n in 0..5 {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            client.batch(&contact_and_deal(n)).await
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Caller 4 gives up (a stopped worker) while it waits in the queue.
    tasks.pop().unwrap().abort();
    for task in tasks {
        assert!(task.await.unwrap().all_done());
    }
    // Whatever comes after would have carried it.
    client.batch(&contact_and_deal(99)).await;
    assert!(
        deal_titled(&portal, "Сделка №4").is_empty(),
        "an abandoned caller's deal was written"
    );
    assert_eq!(deal_titled(&portal, "Сделка №99").len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn halting_batches_travel_alone() {
    let portal = portal().await;
    let shared = Arc::new(Shared::default());
    let client = client(&portal, 4.0, shared.clone());
    let mut tasks = Vec::new();
    for n in 0..6 {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let mut batch = contact_and_deal(n).halt_on_error(n == 0);
            if n == 0 {
                batch
                    .push(
                        "after",
                        "crm.item.get",
                        json!({"entityTypeId": 2, "id": 999_999}),
                    )
                    .unwrap();
            }
            client.batch(&batch).await
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let sent = shared.0.lock().unwrap().clone();
    assert_eq!(
        sent.iter().map(|(callers, _)| callers).sum::<usize>(),
        5,
        "the halting batch is not among the shared ones: {sent:?}"
    );
    assert_eq!(
        portal.admin().request_count("batch") as usize,
        sent.len() + 1
    );
}
