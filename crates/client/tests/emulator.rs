//! The client against the team's Bitrix24 emulator (`b24-emulator`): real
//! REST shapes, limits and faults, over loopback.

mod common;

use std::sync::Arc;
use std::time::Duration;

use b24_client::{
    ApiErrorKind, Batch, BodyFormat, BucketConfig, Client, MethodStatus, Paging, RateLimits,
    Webhook,
};
use b24_emulator::{EntityType, MethodFaults, Portal};
use common::{Recorder, fast_retries};
use futures_util::TryStreamExt;
use serde_json::{Value, json};

const SECRET: &str = "em-s3cr3t";

async fn portal() -> Portal {
    Portal::builder()
        .domain("source.test")
        .webhook(1, SECRET, &["crm", "user"])
        .webhook(2, "user-only-s3cr3t", &["user"])
        .start()
        .await
        .expect("emulator starts")
}

fn webhook(portal: &Portal, user: i64, secret: &str) -> Webhook {
    Webhook::parse(&portal.webhook_url(user, secret)).unwrap()
}

fn client(portal: &Portal) -> Client {
    Client::builder(
        webhook(portal, 1, SECRET),
        RateLimits::default().starting_empty(),
    )
    .retry(fast_retries(5))
    .request_timeout(Duration::from_secs(10))
    .build()
    .unwrap()
}

#[tokio::test]
async fn batch_adds_then_both_paging_modes_read_everything_back() {
    b24_testkit::install_crypto_provider();
    let portal = portal().await;
    let client = client(&portal);
    let mut batch = Batch::new();
    for i in 0..120 {
        batch
            .push(
                format!("add{i}"),
                "crm.item.add",
                json!({"entityTypeId": 2, "fields": {"title": format!("Deal {i}")}}),
            )
            .unwrap();
    }

    let added = client.batch(&batch).await;

    assert!(added.all_done(), "{:?}", added.stopped_by);
    assert_eq!(added.requests, 3);
    assert_eq!(portal.admin().request_count("batch"), 3);
    assert_eq!(portal.admin().records(EntityType::Deal).len(), 120);
    assert_eq!(added.result("add0").unwrap()["item"]["title"], "Deal 0");

    let fast: Vec<Value> = client
        .list(
            "crm.item.list",
            json!({"entityTypeId": 2, "select": ["title"]}),
            Paging::by_id("id"),
        )
        .try_collect()
        .await
        .unwrap();
    let classic: Vec<Value> = client
        .list("crm.item.list", json!({"entityTypeId": 2}), Paging::Classic)
        .try_collect()
        .await
        .unwrap();

    for records in [&fast, &classic] {
        let titles: Vec<&str> = records
            .iter()
            .map(|r| r["title"].as_str().unwrap())
            .collect();
        let expected: Vec<String> = (0..120).map(|i| format!("Deal {i}")).collect();
        assert_eq!(titles, expected);
    }
    portal.shutdown().await;
}

#[tokio::test]
async fn references_inside_one_batch_request_are_resolved_by_the_portal() {
    b24_testkit::install_crypto_provider();
    let portal = portal().await;
    let client = client(&portal);
    let batch = Batch::new()
        .with("contact", "crm.contact.add", json!({"fields": {"NAME": "Anna"}})).unwrap()
        .with("deal", "crm.item.add", json!({"entityTypeId": 2, "fields": {"title": "For $result[contact]", "contactId": "$result[contact]"}})).unwrap();

    let outcome = client.batch(&batch).await;

    assert!(outcome.all_done(), "{outcome:?}");
    let contact_id = match outcome.result("contact").unwrap() {
        Value::Number(id) => id.to_string(),
        Value::String(id) => id.clone(),
        other => panic!("contact id {other}"),
    };
    let deal = &outcome.result("deal").unwrap()["item"];
    assert_eq!(deal["title"], format!("For {contact_id}"));
    portal.shutdown().await;
}

#[tokio::test]
async fn a_form_body_with_a_list_of_maps_reaches_the_portal_intact() {
    b24_testkit::install_crypto_provider();
    let portal = portal().await;
    let client = client(&portal);
    let added = client
        .call_as(
            "crm.contact.add",
            &json!({"fields": {"NAME": "Анна", "PHONE": [
                {"VALUE": "+7 900 000-00-00", "VALUE_TYPE": "WORK"},
                {"VALUE": "555 & 777", "VALUE_TYPE": "HOME"}
            ]}}),
            BodyFormat::Form,
        )
        .await
        .unwrap();
    let id = added.result.clone();

    let contact = client
        .call("crm.contact.get", &json!({"id": id}))
        .await
        .unwrap();

    assert_eq!(contact.result["NAME"], "Анна");
    let phones: Vec<(&str, &str)> = contact.result["PHONE"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["VALUE"].as_str().unwrap(),
                p["VALUE_TYPE"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        phones,
        [("+7 900 000-00-00", "WORK"), ("555 & 777", "HOME")]
    );
    portal.shutdown().await;
}

#[tokio::test]
async fn portal_errors_arrive_typed() {
    b24_testkit::install_crypto_provider();
    let portal = portal().await;
    let user_only = Client::builder(
        webhook(&portal, 2, "user-only-s3cr3t"),
        RateLimits::default().starting_empty(),
    )
    .build()
    .unwrap();
    let wrong_secret = Client::builder(
        webhook(&portal, 1, "wrong-s3cr3t"),
        RateLimits::default().starting_empty(),
    )
    .build()
    .unwrap();

    let scope = user_only
        .call("crm.item.get", &json!({"entityTypeId": 2, "id": 1}))
        .await
        .unwrap_err();
    let missing = client(&portal)
        .call("crm.nothing.here", &json!({}))
        .await
        .unwrap_err();
    let auth = wrong_secret.call("scope", &json!({})).await.unwrap_err();

    assert_eq!(scope.api().unwrap().kind, ApiErrorKind::InsufficientScope);
    assert_eq!(missing.api().unwrap().kind, ApiErrorKind::MethodNotFound);
    let auth_kind = auth.api().unwrap().kind;
    assert!(
        matches!(
            auth_kind,
            ApiErrorKind::NoAuthFound | ApiErrorKind::InvalidCredentials
        ),
        "{auth:?}"
    );
    assert!(!auth.to_string().contains("wrong-s3cr3t"));
    portal.shutdown().await;
}

#[tokio::test]
async fn check_reports_missing_scopes_and_methods() {
    b24_testkit::install_crypto_provider();
    let portal = portal().await;

    let report = client(&portal)
        .check(&[
            "crm.item.add",
            "bizproc.robot.add",
            "crm.item.nonexistent",
            "user.get",
        ])
        .await
        .unwrap();

    let statuses: Vec<&MethodStatus> = report.methods.iter().map(|check| &check.status).collect();
    assert_eq!(
        statuses,
        [
            &MethodStatus::Available,
            &MethodStatus::NotAvailable {
                scope: "bizproc".into(),
                scope_granted: false
            },
            &MethodStatus::Missing,
            &MethodStatus::Available,
        ]
    );
    assert_eq!(report.granted_scopes, ["crm", "user"]);
    portal.shutdown().await;
}

#[tokio::test]
async fn a_write_whose_answer_is_lost_is_reported_and_not_repeated() {
    b24_testkit::install_crypto_provider();
    let portal = portal().await;
    portal.faults().set_method(
        "crm.item.add",
        MethodFaults {
            drop_next: 1,
            ..MethodFaults::default()
        },
    );
    let client = client(&portal);

    let error = client
        .call(
            "crm.item.add",
            &json!({"entityTypeId": 2, "fields": {"title": "lost answer"}}),
        )
        .await
        .unwrap_err();

    assert!(error.may_have_executed(), "{error:?}");
    assert_eq!(portal.admin().request_count("crm.item.add"), 1);
    assert_eq!(
        portal.admin().records(EntityType::Deal).len(),
        1,
        "it did run"
    );
    portal.shutdown().await;
}

#[tokio::test]
async fn a_read_whose_answer_is_lost_is_retried() {
    b24_testkit::install_crypto_provider();
    let portal = portal().await;
    let client = client(&portal);
    let added = client
        .call(
            "crm.item.add",
            &json!({"entityTypeId": 2, "fields": {"title": "x"}}),
        )
        .await
        .unwrap();
    let id = added.result["item"]["id"].clone();
    portal.faults().set_method(
        "crm.item.get",
        MethodFaults {
            drop_next: 1,
            ..MethodFaults::default()
        },
    );

    let got = client
        .call("crm.item.get", &json!({"entityTypeId": 2, "id": id}))
        .await
        .unwrap();

    assert_eq!(got.result["item"]["title"], "x");
    assert_eq!(portal.admin().request_count("crm.item.get"), 2);
    portal.shutdown().await;
}

#[tokio::test]
async fn a_client_bucket_below_the_portal_limit_never_meets_query_limit_exceeded() {
    b24_testkit::install_crypto_provider();
    let portal = Portal::builder()
        .webhook(1, SECRET, &["crm"])
        .rate_limit(10, 5.0)
        .start()
        .await
        .unwrap();
    // Stricter than the portal, so scheduling jitter cannot push it over.
    let limits = RateLimits::new(BucketConfig {
        burst: 3,
        drain_per_second: 5.0,
    })
    .unwrap();
    let recorder = Arc::new(Recorder::default());
    let client = Client::builder(webhook(&portal, 1, SECRET), limits)
        .retry(fast_retries(1))
        .observer(recorder.clone())
        .build()
        .unwrap();

    let calls: Vec<_> = (0..12)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move {
                client
                    .call("crm.item.fields", &json!({"entityTypeId": 2}))
                    .await
            })
        })
        .collect();
    for call in calls {
        call.await.unwrap().expect("no call is refused");
    }

    assert!(
        !recorder
            .outcomes()
            .iter()
            .any(|o| o == "QUERY_LIMIT_EXCEEDED")
    );
    assert!(
        !recorder.waits.lock().unwrap().is_empty(),
        "calls beyond the burst waited"
    );
    portal.shutdown().await;
}

#[tokio::test]
async fn query_limit_exceeded_from_the_portal_is_retried_until_it_drains() {
    b24_testkit::install_crypto_provider();
    let portal = Portal::builder()
        .webhook(1, SECRET, &["crm"])
        .rate_limit(3, 20.0)
        .start()
        .await
        .unwrap();
    let no_client_limit = RateLimits::new(BucketConfig {
        burst: 10_000,
        drain_per_second: 10_000.0,
    })
    .unwrap();
    let client = Client::builder(webhook(&portal, 1, SECRET), no_client_limit)
        .retry(fast_retries(60))
        .build()
        .unwrap();

    let calls: Vec<_> = (0..10)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move {
                client
                    .call("crm.item.fields", &json!({"entityTypeId": 2}))
                    .await
            })
        })
        .collect();
    for call in calls {
        call.await
            .unwrap()
            .expect("retried until the portal let it through");
    }
    portal.shutdown().await;
}

#[tokio::test]
async fn a_method_over_its_time_budget_fails_fast_with_the_reset_time() {
    b24_testkit::install_crypto_provider();
    let portal = Portal::builder()
        .webhook(1, SECRET, &["crm"])
        .operating_limit(Duration::from_millis(30))
        .start()
        .await
        .unwrap();
    portal.faults().set_method(
        "crm.item.list",
        MethodFaults {
            latency_ms: 40,
            ..MethodFaults::default()
        },
    );
    let mut retry = fast_retries(3);
    retry.max_operating_wait = Duration::from_secs(2);
    let client = Client::builder(
        webhook(&portal, 1, SECRET),
        RateLimits::default().starting_empty(),
    )
    .retry(retry)
    .build()
    .unwrap();

    let first = client
        .call("crm.item.list", &json!({"entityTypeId": 2}))
        .await
        .unwrap();
    let reset_at = first.operating_reset_at().expect("the budget's reset time");
    let blocked = client
        .call("crm.item.list", &json!({"entityTypeId": 2}))
        .await
        .unwrap_err();
    let again = client
        .call("crm.item.list", &json!({"entityTypeId": 2}))
        .await
        .unwrap_err();

    for error in [&blocked, &again] {
        let api = error.api().unwrap();
        assert_eq!(api.kind, ApiErrorKind::OperationTimeLimit);
        assert_eq!(api.retry_at, Some(reset_at));
    }
    assert_eq!(
        portal.admin().request_count("crm.item.list"),
        2,
        "the third call waited at home"
    );
    assert!(
        client
            .call("crm.item.fields", &json!({"entityTypeId": 2}))
            .await
            .is_ok()
    );
    portal.shutdown().await;
}

async fn portal_with_fields() -> Portal {
    Portal::builder()
        .domain("source.test")
        .webhook(1, SECRET, &["crm", "user"])
        .seed(json!({"userFields": [
            {"entity": "deal", "name": "UF_CRM_TAGS", "type": "string", "multiple": true},
            {"entity": "deal", "name": "UF_CRM_DOCS", "type": "file", "multiple": true}
        ]}))
        .start()
        .await
        .expect("emulator starts")
}

#[tokio::test]
async fn clearing_a_multiple_field_inside_a_batch_reaches_the_portal() {
    let portal = portal_with_fields().await;
    let client = client(&portal);
    let batch = Batch::new()
        .with("deal", "crm.item.add", json!({"entityTypeId": 2, "fields": {"title": "Tagged", "ufCrm_TAGS": ["a", "b"]}}))
        .unwrap()
        .with("clear", "crm.item.update", json!({"entityTypeId": 2, "id": "$result[deal][item][id]", "fields": {"ufCrm_TAGS": [], "ufCrm_DOCS": [], "comments": null}}))
        .unwrap()
        .with("read", "crm.item.get", json!({"entityTypeId": 2, "id": "$result[deal][item][id]"}))
        .unwrap();
    let done = client.batch(&batch).await;
    assert!(done.all_done(), "{:?}", done.commands);
    assert_eq!(
        done.requests, 3,
        "the clearing command travels alone, in its place"
    );
    assert_eq!(
        done.result("read").unwrap()["item"]["ufCrm_TAGS"],
        json!([])
    );
    let deal = portal.admin().records(EntityType::Deal).remove(0);
    assert_eq!(deal["ufCrm_TAGS"], json!([]));
    portal.shutdown().await;
}

#[tokio::test]
async fn downloads_take_the_real_name_and_stay_on_the_portal() {
    let portal = portal_with_fields().await;
    let client = client(&portal);
    let added = client
        .call(
            "crm.item.add",
            &json!({"entityTypeId": 2, "fields": {"ufCrm_DOCS": [["Договор №42.pdf", "JVBERi0="]]}}),
        )
        .await
        .unwrap();
    let link = added.result["item"]["ufCrm_DOCS"][0]["urlMachine"]
        .as_str()
        .unwrap()
        .to_owned();
    let file = client.download(&link).await.unwrap();
    assert_eq!(file.name.as_deref(), Some("Договор №42.pdf"));
    assert_eq!(file.bytes, b"%PDF-");
    let elsewhere = link.replace("127.0.0.1", "localhost");
    let refused = client.download(&elsewhere).await.unwrap_err();
    assert!(refused.to_string().contains("outside"), "{refused}");
    assert!(!refused.to_string().contains(SECRET));
    portal.shutdown().await;
}

#[tokio::test]
async fn a_portal_that_is_not_listening_is_reported_as_refused() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let webhook = Webhook::parse(&format!("http://{addr}/rest/1/{SECRET}/")).unwrap();
    let client = Client::builder(webhook, RateLimits::default().starting_empty())
        .retry(fast_retries(1))
        .build()
        .unwrap();
    let error = client
        .call("crm.item.get", &json!({"id": 1}))
        .await
        .unwrap_err();
    let text = error.to_string();
    assert!(text.contains("connection refused"), "{text}");
    assert!(!text.contains(SECRET), "{text}");
    assert!(matches!(
        error,
        b24_client::Error::Transport {
            failure: b24_client::TransportFailure::Refused,
            ..
        }
    ));
}

#[tokio::test]
async fn an_id_scan_reads_many_pages_per_request_and_resumes() {
    let portal = portal().await;
    let client = client(&portal);
    for i in 0..130 {
        portal
            .admin()
            .insert_record(
                EntityType::Deal,
                json!({"title": format!("Old {i}"), "originatorId": if i % 2 == 0 { "b24-relay:p" } else { "other" }})
                    .as_object()
                    .unwrap(),
            )
            .unwrap();
    }
    portal.admin().reset_request_counts();
    let mut scan = b24_client::IdScan::items(
        2,
        json!({"=originatorId": "b24-relay:p"}),
        &["id", "originatorId"],
    )
    .pages_per_request(3);
    let mut seen = Vec::new();
    while let Some(chunk) = scan.next_chunk(&client).await.unwrap() {
        seen.extend(chunk.into_iter().map(|r| r["id"].as_i64().unwrap()));
    }
    assert_eq!(seen.len(), 65);
    assert!(
        seen.windows(2).all(|w| w[0] < w[1]),
        "in id order, no repeats"
    );
    assert_eq!(
        portal.admin().request_count("batch"),
        1,
        "65 records, 2 pages, one request"
    );
    // Stopped and resumed from the last id: nothing read twice.
    let mut first = b24_client::IdScan::items(2, json!({}), &["id"]).pages_per_request(1);
    let one = first.next_chunk(&client).await.unwrap().unwrap();
    assert_eq!(one.len(), 50);
    let mut resumed = b24_client::IdScan::items(2, json!({}), &["id"]).after(first.last_id());
    let rest = resumed.next_chunk(&client).await.unwrap().unwrap();
    assert_eq!(rest.len(), 80);
    assert_eq!(rest[0]["id"], 51);
    assert!(resumed.next_chunk(&client).await.unwrap().is_none());
    portal.shutdown().await;
}
