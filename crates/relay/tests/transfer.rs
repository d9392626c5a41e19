//! End to end over real HTTP on loopback: two emulated portals and the relay
//! in this process.

mod common;

use std::time::Duration;

use b24_emulator::{EntityType, MethodFaults};
use b24_relay::{Config, JobState, Relay};
use base64::Engine;
use common::*;
use serde_json::json;

const WAIT: Duration = Duration::from_secs(60);

async fn start_relay(config_text: &str) -> (Relay, String) {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("b24_relay=debug")
        .with_test_writer()
        .try_init();
    let relay = Relay::start(Config::parse(config_text).unwrap())
        .await
        .expect("relay starts");
    let url = format!("http://{}", relay.addr);
    (relay, url)
}

async fn jobs_in(relay: &Relay, state: JobState) -> Vec<b24_relay::Job> {
    relay.store.jobs(Some(state), 1000).await.unwrap()
}

async fn idle(relay: &Relay) -> bool {
    jobs_in(relay, JobState::Pending).await.is_empty()
        && jobs_in(relay, JobState::Running).await.is_empty()
}

fn comments_on(portal: &b24_emulator::Portal, deal: i64) -> Vec<String> {
    portal
        .admin()
        .timeline_comments()
        .iter()
        .filter(|c| c["ENTITY_ID"] == json!(deal.to_string()))
        .map(|c| c["COMMENT"].as_str().unwrap_or("").to_owned())
        .collect()
}

/// The full path: an outgoing-webhook event when the deal enters the stage,
/// everything mapped and written once, repeats and updates, and a skip.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_transfers_the_deal_once_with_everything_attached() {
    b24_testkit::install_crypto_provider();
    let (source, target) = start_fast_portals().await;
    let dir = tempfile::tempdir().unwrap();
    let text = config_text(dir.path(), &source, &target, &Options::fast());
    let (relay, url) = start_relay(&text).await;
    let admin = source.admin();
    let contact = admin
        .insert_record(
            EntityType::Contact,
            &record(json!({"name": "Ivan", "lastName": "Partner", "fm": [{"typeId": "PHONE", "value": "+79000000001", "valueType": "WORK"}]})),
        )
        .unwrap();
    let company = admin
        .insert_record(
            EntityType::Company,
            &record(json!({"title": "Horns & Hooves", "fm": [{"typeId": "EMAIL", "value": "office@hh.test", "valueType": "WORK"}]})),
        )
        .unwrap();
    let pdf = base64::engine::general_purpose::STANDARD.encode(b"%PDF-1.4 offer");
    let deal = admin
        .insert_record(
            EntityType::Deal,
            &record(json!({
                "title": "Boiler room", "categoryId": 2, "stageId": "C2:NEW",
                "opportunity": 1500.5, "currencyId": "EUR", "ufCrm_LEVEL": 1,
                "assignedById": 5, "contactId": contact, "companyId": company,
                "ufCrm_DOCS": [["offer.pdf", pdf]]
            })),
        )
        .unwrap();
    rest(
        &source,
        SOURCE_SECRET,
        "crm.item.productrow.set",
        json!({"ownerType": "D", "ownerId": deal, "productRows": [
            {"productName": "Boiler", "price": 1000.5, "quantity": 1},
            {"productName": "Pipe", "price": 50, "quantity": 10}
        ]}),
    )
    .await;
    hook_up(&source, &url);
    // Entering the stage fires the event (and the rule: the same deal, coalesced or repeated).
    rest(
        &source,
        SOURCE_SECRET,
        "crm.item.update",
        json!({"entityTypeId": 2, "id": deal, "fields": {"stageId": "C2:PREPARATION"}}),
    )
    .await;

    wait_until(
        "the deal is transferred and written back",
        WAIT,
        async || {
            admin
                .record(EntityType::Deal, deal)
                .and_then(|d| d.get("ufCrm_ESB_DEAL_ID").cloned())
                .is_some_and(|v| !v.is_null() && v != json!(""))
        },
    )
    .await;
    wait_until("the queue is idle", WAIT, async || idle(&relay).await).await;
    let deals = target_deals(&target);
    assert_eq!(deals.len(), 1, "{deals:?}");
    let moved = &deals[0];
    let target_id = moved["id"].as_i64().unwrap();
    assert_eq!(moved["title"], "Boiler room");
    assert_eq!(moved["opportunity"], 1500.5);
    assert_eq!(moved["currencyId"], "EUR");
    assert_eq!(moved["ufCrm_TIER"], 72, "Gold by label");
    assert_eq!(moved["categoryId"], 3);
    assert_eq!(moved["stageId"], "C3:NEW");
    assert_eq!(moved["sourceId"], "PARTNER");
    assert_eq!(moved["assignedById"], 17, "the user with the same e-mail");
    assert_eq!(moved["originatorId"], "b24-relay:partner");
    assert_eq!(moved["originId"], deal.to_string());
    let rows = target.admin().product_rows(EntityType::Deal, target_id);
    let names: Vec<&str> = rows
        .iter()
        .map(|r| r["productName"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["Boiler", "Pipe"]);
    assert_eq!(rows[1]["quantity"], 10.0);
    // The contact's phone matched the target's existing contact; the company was created.
    let contacts = target.admin().records(EntityType::Contact);
    assert_eq!(contacts.len(), 1, "matched by phone, not created");
    assert_eq!(moved["contactId"], contacts[0]["id"]);
    let companies = target.admin().records(EntityType::Company);
    assert_eq!(companies.len(), 1);
    assert_eq!(companies[0]["title"], "Horns & Hooves");
    assert_eq!(moved["companyId"], companies[0]["id"]);
    // The file arrived with its name and content.
    let file = rest(
        &target,
        TARGET_SECRET,
        "crm.item.get",
        json!({"entityTypeId": 2, "id": target_id}),
    )
    .await;
    let files = file["result"]["item"]["ufCrm_FILES"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(files.len(), 1, "{file}");
    let link = files[0]["urlMachine"].as_str().unwrap();
    let downloaded = client().get(link).send().await.unwrap();
    assert!(
        downloaded.headers()["content-disposition"]
            .to_str()
            .unwrap()
            .contains("offer.pdf")
    );
    assert_eq!(
        downloaded.bytes().await.unwrap().as_ref(),
        b"%PDF-1.4 offer"
    );
    // Write-back: field and a comment with the target id and link.
    assert_eq!(
        admin.record(EntityType::Deal, deal).unwrap()["ufCrm_ESB_DEAL_ID"],
        target_id.to_string()
    );
    let comments = comments_on(&source, deal);
    assert!(
        comments
            .iter()
            .any(|c| c.contains(&format!("deal #{target_id}")) && c.contains("/crm/deal/details/")),
        "{comments:?}"
    );

    // The same event ten times: still one deal, nothing rewritten.
    let event = admin
        .deliveries()
        .into_iter()
        .find(|d| d.kind == "event")
        .expect("an event was delivered");
    for _ in 0..10 {
        let status = client()
            .post(&event.url)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(event.body.clone())
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, 200);
    }
    wait_until("the repeats are handled", WAIT, async || idle(&relay).await).await;
    assert_eq!(target_deals(&target).len(), 1);
    assert_eq!(target.admin().records(EntityType::Company).len(), 1);
    let files_after = rest(
        &target,
        TARGET_SECRET,
        "crm.item.get",
        json!({"entityTypeId": 2, "id": target_id}),
    )
    .await;
    assert_eq!(
        files_after["result"]["item"]["ufCrm_FILES"]
            .as_array()
            .unwrap()
            .len(),
        1,
        "files not copied twice"
    );

    // An update on the source updates the same target deal.
    rest(
        &source,
        SOURCE_SECRET,
        "crm.item.update",
        json!({"entityTypeId": 2, "id": deal, "fields": {"title": "Boiler room, 2 floors"}}),
    )
    .await;
    wait_until("the update arrives", WAIT, async || {
        target
            .admin()
            .record(EntityType::Deal, target_id)
            .is_some_and(|d| d["title"] == "Boiler room, 2 floors")
    })
    .await;
    wait_until("the queue is idle", WAIT, async || idle(&relay).await).await;
    assert_eq!(target_deals(&target).len(), 1);
    assert_eq!(
        files_after["result"]["item"]["ufCrm_FILES"],
        rest(
            &target,
            TARGET_SECRET,
            "crm.item.get",
            json!({"entityTypeId": 2, "id": target_id})
        )
        .await["result"]["item"]["ufCrm_FILES"],
        "existing files kept"
    );

    // A file added on the source is added on the target; the first one stays.
    let kept = admin.record(EntityType::Deal, deal).unwrap()["ufCrm_DOCS"].clone();
    let first_id = kept.as_array().unwrap()[0].clone();
    let note = base64::engine::general_purpose::STANDARD.encode(b"second file");
    rest(&source, SOURCE_SECRET, "crm.item.update", json!({"entityTypeId": 2, "id": deal, "fields": {"ufCrm_DOCS": [{"id": first_id}, ["note.txt", note]]}})).await;
    wait_until("the second file arrives", WAIT, async || {
        target
            .admin()
            .record(EntityType::Deal, target_id)
            .and_then(|d| {
                d.get("ufCrm_FILES")
                    .and_then(|f| f.as_array().map(Vec::len))
            })
            == Some(2)
    })
    .await;
    wait_until("the queue is idle", WAIT, async || idle(&relay).await).await;
    let files_now = rest(
        &target,
        TARGET_SECRET,
        "crm.item.get",
        json!({"entityTypeId": 2, "id": target_id}),
    )
    .await;
    let files_now = files_now["result"]["item"]["ufCrm_FILES"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(files_now.len(), 2);
    assert_eq!(
        files_now[0]["id"], files[0]["id"],
        "the first file is the same one"
    );

    // A deal in another stage is skipped with the reason.
    let other = plain_deal(&source, "Not ready", "C2:NEW");
    rest(
        &source,
        SOURCE_SECRET,
        "crm.item.update",
        json!({"entityTypeId": 2, "id": other, "fields": {"title": "Still not ready"}}),
    )
    .await;
    wait_until("the other deal is skipped", WAIT, async || {
        jobs_in(&relay, JobState::Skipped)
            .await
            .iter()
            .any(|j| j.deal_id == other)
    })
    .await;
    let skipped = jobs_in(&relay, JobState::Skipped).await;
    let reason = skipped
        .iter()
        .find(|j| j.deal_id == other)
        .unwrap()
        .message
        .clone()
        .unwrap();
    assert!(reason.contains("stage C2:NEW"), "{reason}");
    assert_eq!(target_deals(&target).len(), 1);
    assert!(jobs_in(&relay, JobState::Failed).await.is_empty());

    let metrics = relay.metrics.render();
    assert!(
        metrics
            .contains("b24_relay_transfers_total{route=\"partner-to-esb\",result=\"created\"} 1"),
        "{metrics}"
    );
    for secret in [SOURCE_SECRET, TARGET_SECRET, APP_TOKEN, RULE_SECRET] {
        assert!(!metrics.contains(secret));
    }
    relay.shutdown().await;
    source.shutdown().await;
    target.shutdown().await;
}

/// The target runs the create but the response never comes back: the retry
/// finds the deal by originatorId/originId instead of creating a second one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_response_to_the_create_still_gives_one_deal() {
    b24_testkit::install_crypto_provider();
    let (source, target) = start_fast_portals().await;
    let dir = tempfile::tempdir().unwrap();
    let text = config_text(dir.path(), &source, &target, &Options::fast());
    let (relay, url) = start_relay(&text).await;
    // The batch that creates the deal runs, and its answer is lost.
    target.faults().set_method(
        "crm.item.add",
        MethodFaults {
            drop_next: 1,
            ..MethodFaults::default()
        },
    );
    let deal = plain_deal(&source, "Lost answer", "C2:PREPARATION");
    assert_eq!(post_rule(&url, deal).await, 200);
    wait_until("the deal is transferred", WAIT, async || {
        relay
            .store
            .jobs(Some(JobState::Done), 10)
            .await
            .unwrap()
            .iter()
            .any(|j| j.deal_id == deal && j.target_deal_id.is_some())
    })
    .await;
    let deals = target_deals(&target);
    assert_eq!(deals.len(), 1, "{deals:?}");
    assert_eq!(deals[0]["title"], "Lost answer");
    let done = relay.store.jobs(Some(JobState::Done), 10).await.unwrap();
    assert!(
        done.iter().any(|j| j.attempts >= 2),
        "the first attempt failed: {done:?}"
    );
    let job = done.iter().find(|j| j.deal_id == deal).unwrap();
    let attempts = relay.store.attempts(job.id).await.unwrap();
    assert_eq!(
        attempts.first().map(|a| a.outcome.as_str()),
        Some("retry"),
        "{attempts:?}"
    );
    assert!(
        attempts[0].message.contains("may have been executed"),
        "{attempts:?}"
    );
    assert_eq!(attempts.last().map(|a| a.outcome.as_str()), Some("done"));
    // The retry found the deal; for the people on the source it is still
    // the transfer, not "changes sent".
    let comments = comments_on(&source, deal);
    assert!(
        comments
            .iter()
            .any(|c| c.starts_with("Transferred to esb as deal #")),
        "{comments:?}"
    );
    assert!(
        !comments.iter().any(|c| c.starts_with("Changes sent")),
        "{comments:?}"
    );
    let shown = b24_relay::cli::jobs_output(
        Config::parse(&text).unwrap(),
        b24_relay::cli::JobsAction::Show { id: job.id },
    )
    .await
    .unwrap();
    assert!(
        shown
            .iter()
            .any(|l| l.contains("attempt 1") && l.contains("retry")),
        "{shown:?}"
    );
    relay.shutdown().await;
    source.shutdown().await;
    target.shutdown().await;
}

/// An option with no match on the target fails the job with a message
/// naming field and value, comments on the source, and a replay after the
/// configuration is fixed transfers the deal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unmappable_value_fails_and_a_replay_after_the_fix_succeeds() {
    b24_testkit::install_crypto_provider();
    let (source, target) = start_fast_portals().await;
    let dir = tempfile::tempdir().unwrap();
    let text = config_text(dir.path(), &source, &target, &Options::fast());
    let (relay, url) = start_relay(&text).await;
    let deal = source
        .admin()
        .insert_record(EntityType::Deal, &record(json!({"title": "Bronze deal", "categoryId": 2, "stageId": "C2:PREPARATION", "ufCrm_LEVEL": 3})))
        .unwrap();
    assert_eq!(post_rule(&url, deal).await, 200);
    wait_until("the job fails", WAIT, async || {
        !jobs_in(&relay, JobState::Failed).await.is_empty()
    })
    .await;
    let failed = jobs_in(&relay, JobState::Failed).await.remove(0);
    let message = failed.message.clone().unwrap();
    assert!(
        message.contains("ufCrm_LEVEL") && message.contains("Bronze"),
        "{message}"
    );
    assert_eq!(failed.attempts, 1, "a permanent error is not retried");
    wait_until("the failure is commented", WAIT, async || {
        comments_on(&source, deal)
            .iter()
            .any(|c| c.contains("could not be transferred") && c.contains("Bronze"))
    })
    .await;
    assert!(target_deals(&target).is_empty());
    relay.shutdown().await;

    // Fix: a table that says where Bronze goes.
    let fixed = Options {
        values: r#"values.ufCrm_TIER = { "1" = "72", "2" = "71", "3" = "71" }"#,
        ..Options::fast()
    };
    let text = config_text(dir.path(), &source, &target, &fixed);
    let replayed = b24_relay::cli::jobs_output(
        Config::parse(&text).unwrap(),
        b24_relay::cli::JobsAction::Replay {
            id: None,
            failed: true,
        },
    )
    .await
    .unwrap();
    assert_eq!(replayed, ["1 failed deal(s) queued again"]);
    let (relay, _) = start_relay(&text).await;
    wait_until("the replay transfers the deal", WAIT, async || {
        target_deals(&target).len() == 1 && idle(&relay).await
    })
    .await;
    assert_eq!(target_deals(&target)[0]["ufCrm_TIER"], 71);
    assert!(jobs_in(&relay, JobState::Failed).await.is_empty());
    relay.shutdown().await;
    source.shutdown().await;
    target.shutdown().await;
}

/// A box that was not updated answers ERROR_METHOD_NOT_FOUND for
/// `crm.item.*`: the relay reads (and writes back) with `crm.deal.*`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_box_without_crm_item_is_read_with_crm_deal() {
    b24_testkit::install_crypto_provider();
    let (source, target) = start_fast_portals().await;
    let dir = tempfile::tempdir().unwrap();
    let admin = source.admin();
    let contact = admin
        .insert_record(
            EntityType::Contact,
            &record(json!({"name": "Anna", "lastName": "Old-box", "fm": [{"typeId": "EMAIL", "value": "anna@box.test", "valueType": "WORK"}]})),
        )
        .unwrap();
    let deal = admin
        .insert_record(
            EntityType::Deal,
            &record(json!({"title": "From an old box", "categoryId": 2, "stageId": "C2:PREPARATION", "ufCrm_LEVEL": 2, "contactId": contact, "assignedById": 5})),
        )
        .unwrap();
    rest(&source, SOURCE_SECRET, "crm.item.productrow.set", json!({"ownerType": "D", "ownerId": deal, "productRows": [{"productName": "Valve", "price": 7, "quantity": 3}]})).await;
    let missing = MethodFaults {
        fail_next: u32::MAX,
        error: b24_emulator::InjectedError {
            status: 404,
            code: "ERROR_METHOD_NOT_FOUND".into(),
            description: "Method not found!".into(),
        },
        ..MethodFaults::default()
    };
    for method in [
        "crm.item.get",
        "crm.item.update",
        "crm.item.productrow.list",
        "crm.item.fields",
    ] {
        source.faults().set_method(method, missing.clone());
    }
    let options = Options {
        values: r#"values.ufCrm_TIER = { "1" = "72", "2" = "71", "3" = "71" }"#,
        ..Options::fast()
    };
    let text = config_text(dir.path(), &source, &target, &options);
    let (relay, url) = start_relay(&text).await;
    assert_eq!(post_rule(&url, deal).await, 200);
    wait_until(
        "the deal is transferred and written back",
        WAIT,
        async || {
            admin
                .record(EntityType::Deal, deal)
                .and_then(|d| d.get("ufCrm_ESB_DEAL_ID").cloned())
                .is_some_and(|v| !v.is_null() && v != json!(""))
        },
    )
    .await;
    let deals = target_deals(&target);
    assert_eq!(deals.len(), 1);
    assert_eq!(deals[0]["title"], "From an old box");
    assert_eq!(deals[0]["ufCrm_TIER"], 71);
    assert_eq!(deals[0]["assignedById"], 17);
    let rows = target
        .admin()
        .product_rows(EntityType::Deal, deals[0]["id"].as_i64().unwrap());
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["productName"], "Valve");
    assert_eq!(rows[0]["quantity"], 3.0);
    let contacts = target.admin().records(EntityType::Contact);
    let anna = contacts
        .iter()
        .find(|c| c["name"] == "Anna")
        .expect("contact created");
    assert_eq!(deals[0]["contactId"], anna["id"]);
    assert!(
        source.admin().request_count("crm.deal.update") == 0,
        "write-back travels in a batch"
    );
    relay.shutdown().await;
    source.shutdown().await;
    target.shutdown().await;
}

/// A target that is down gives transient errors: the job waits with
/// backoff and succeeds once the portal is back; nothing is created twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_that_is_down_is_retried_until_it_comes_back() {
    b24_testkit::install_crypto_provider();
    let (source, target) = start_fast_portals().await;
    let dir = tempfile::tempdir().unwrap();
    let text = config_text(dir.path(), &source, &target, &Options::fast());
    let (relay, url) = start_relay(&text).await;
    target.admin().set_down(true);
    let deal = plain_deal(&source, "Patience", "C2:PREPARATION");
    assert_eq!(post_rule(&url, deal).await, 200);
    wait_until("a failed attempt is recorded", WAIT, async || {
        relay
            .store
            .jobs(None, 10)
            .await
            .unwrap()
            .iter()
            .any(|j| j.state == JobState::Pending && j.attempts >= 1 && j.message.is_some())
    })
    .await;
    let waiting = relay.store.jobs(None, 10).await.unwrap().remove(0);
    assert!(
        jobs_in(&relay, JobState::Failed).await.is_empty(),
        "{waiting:?}"
    );
    target.admin().set_down(false);
    wait_until("the deal arrives", WAIT, async || {
        target_deals(&target).len() == 1 && idle(&relay).await
    })
    .await;
    let done = jobs_in(&relay, JobState::Done).await;
    assert!(
        done.iter().any(|j| j.deal_id == deal && j.attempts >= 2),
        "{done:?}"
    );
    assert_eq!(target_deals(&target).len(), 1);
    relay.shutdown().await;
    source.shutdown().await;
    target.shutdown().await;
}

/// A target box without `crm.item.*`: the relay notices ERROR_METHOD_NOT_FOUND
/// and writes the deal, its rows, a new company and files with `crm.deal.*`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_box_without_crm_item_is_written_with_crm_deal() {
    b24_testkit::install_crypto_provider();
    let (source, target) = start_fast_portals().await;
    let dir = tempfile::tempdir().unwrap();
    let admin = source.admin();
    let company = admin
        .insert_record(EntityType::Company, &record(json!({"title": "Old Box Ltd", "fm": [{"typeId": "PHONE", "value": "+49 30 1234", "valueType": "WORK"}]})))
        .unwrap();
    let data = base64::engine::general_purpose::STANDARD.encode(b"plan");
    let deal = admin
        .insert_record(
            EntityType::Deal,
            &record(json!({"title": "To an old box", "categoryId": 2, "stageId": "C2:PREPARATION", "ufCrm_LEVEL": 1, "companyId": company, "opportunity": 10, "currencyId": "USD", "ufCrm_DOCS": [["plan.txt", data]]})),
        )
        .unwrap();
    rest(&source, SOURCE_SECRET, "crm.item.productrow.set", json!({"ownerType": "D", "ownerId": deal, "productRows": [{"productName": "Gear", "price": 4, "quantity": 2}]})).await;
    let missing = MethodFaults {
        fail_next: u32::MAX,
        error: b24_emulator::InjectedError {
            status: 404,
            code: "ERROR_METHOD_NOT_FOUND".into(),
            description: "Method not found!".into(),
        },
        ..MethodFaults::default()
    };
    for method in [
        "crm.item.get",
        "crm.item.add",
        "crm.item.update",
        "crm.item.list",
        "crm.item.productrow.set",
        "crm.item.fields",
    ] {
        target.faults().set_method(method, missing.clone());
    }
    let options = Options {
        values: r#"values.ufCrm_TIER = { "1" = "72", "2" = "71", "3" = "71" }"#,
        ..Options::fast()
    };
    let (relay, url) = start_relay(&config_text(dir.path(), &source, &target, &options)).await;
    assert_eq!(post_rule(&url, deal).await, 200);
    wait_until("the deal is transferred", WAIT, async || {
        target_deals(&target).len() == 1 && idle(&relay).await
    })
    .await;
    assert!(
        jobs_in(&relay, JobState::Failed).await.is_empty(),
        "{:?}",
        jobs_in(&relay, JobState::Failed).await
    );
    let moved = &target_deals(&target)[0];
    let target_id = moved["id"].as_i64().unwrap();
    assert_eq!(moved["title"], "To an old box");
    assert_eq!(moved["ufCrm_TIER"], 72);
    assert_eq!(moved["categoryId"], 3);
    assert_eq!(moved["stageId"], "C3:NEW");
    assert_eq!(moved["originId"], deal.to_string());
    assert_eq!(moved["currencyId"], "USD");
    let rows = target.admin().product_rows(EntityType::Deal, target_id);
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["productName"], "Gear");
    let companies = target.admin().records(EntityType::Company);
    assert_eq!(companies.len(), 1);
    assert_eq!(companies[0]["title"], "Old Box Ltd");
    assert_eq!(moved["companyId"], companies[0]["id"]);
    assert_eq!(moved["ufCrm_FILES"].as_array().map(Vec::len), Some(1));
    assert!(target.admin().request_count("batch") >= 2);

    // An update goes through crm.deal.update and keeps the file.
    rest(
        &source,
        SOURCE_SECRET,
        "crm.item.update",
        json!({"entityTypeId": 2, "id": deal, "fields": {"title": "To an old box, v2"}}),
    )
    .await;
    assert_eq!(post_rule(&url, deal).await, 200);
    wait_until("the update arrives", WAIT, async || {
        target
            .admin()
            .record(EntityType::Deal, target_id)
            .is_some_and(|d| d["title"] == "To an old box, v2")
            && idle(&relay).await
    })
    .await;
    assert_eq!(target_deals(&target).len(), 1);
    assert_eq!(
        target.admin().record(EntityType::Deal, target_id).unwrap()["ufCrm_FILES"]
            .as_array()
            .map(Vec::len),
        Some(1)
    );
    relay.shutdown().await;
    source.shutdown().await;
    target.shutdown().await;
}
