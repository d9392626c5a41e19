//! Cloud limits and injected faults, seen from a client over loopback.

mod common;

use std::time::Duration;

use b24_emulator::{EntityType, InjectedError, LimitConfig, MethodFaults, Portal};
use common::{SECRET, call, client};
use serde_json::{Value, json};

#[tokio::test]
async fn leaky_bucket_answers_503_query_limit_exceeded() {
    b24_testkit::install_crypto_provider();
    // Drain 0: the bucket never empties, so the count is exact on any machine.
    let portal = Portal::builder()
        .webhook(1, SECRET, &["crm"])
        .rate_limit(3, 0.0)
        .start()
        .await
        .unwrap();
    for _ in 0..3 {
        let (status, _) = call(&portal, "scope", json!({})).await;
        assert_eq!(status, 200);
    }
    let (status, body) = call(&portal, "crm.item.list", json!({"entityTypeId": 2})).await;
    assert_eq!(status, 503);
    assert_eq!(
        body,
        json!({"error": "QUERY_LIMIT_EXCEEDED", "error_description": "Too many requests"})
    );
    portal.admin().reset_limits();
    assert_eq!(call(&portal, "scope", json!({})).await.0, 200);
    portal.shutdown().await;
}

#[tokio::test]
async fn operating_time_budget_blocks_the_method_with_429() {
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
    let (status, first) = call(&portal, "crm.item.list", json!({"entityTypeId": 2})).await;
    assert_eq!(status, 200);
    assert!(first["time"]["operating"].as_f64().unwrap() >= 0.04);
    let reset_at = first["time"]["operating_reset_at"].as_i64().unwrap();
    assert!(reset_at >= first["time"]["start"].as_f64().unwrap() as i64 + 599);
    let (status, blocked) = call(&portal, "crm.item.list", json!({"entityTypeId": 2})).await;
    assert_eq!(
        (status, blocked["error"].as_str()),
        (429, Some("OPERATION_TIME_LIMIT"))
    );
    let (status, _) = call(&portal, "crm.item.fields", json!({"entityTypeId": 2})).await;
    assert_eq!(status, 200, "other methods keep working");
    portal.shutdown().await;
}

#[tokio::test]
async fn requests_over_the_time_limit_get_a_gateway_timeout() {
    b24_testkit::install_crypto_provider();
    let portal = Portal::builder()
        .webhook(1, SECRET, &["crm"])
        .request_time_limit(Duration::from_millis(50))
        .start()
        .await
        .unwrap();
    portal.faults().set_method(
        "crm.item.add",
        MethodFaults {
            latency_ms: 2_000,
            ..MethodFaults::default()
        },
    );
    let response = client()
        .post(format!("{}crm.item.add", portal.webhook_url(1, SECRET)))
        .json(&json!({"entityTypeId": 2, "fields": {}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 504);
    portal.shutdown().await;
}

#[tokio::test]
async fn injected_errors_fail_without_running() {
    b24_testkit::install_crypto_provider();
    let portal = common::portal(json!({})).await;
    portal.faults().set_method(
        "crm.item.add",
        MethodFaults {
            fail_next: 1,
            error: InjectedError {
                status: 503,
                code: "QUERY_LIMIT_EXCEEDED".into(),
                description: "Too many requests".into(),
            },
            ..MethodFaults::default()
        },
    );
    let add = json!({"entityTypeId": 2, "fields": {"title": "x"}});
    let (status, body) = call(&portal, "crm.item.add", add.clone()).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (503, Some("QUERY_LIMIT_EXCEEDED"))
    );
    assert!(
        portal.admin().records(EntityType::Deal).is_empty(),
        "not executed"
    );
    assert_eq!(call(&portal, "crm.item.add", add).await.0, 200);

    portal.faults().set_method(
        "crm.item.get",
        MethodFaults {
            error_rate: 1.0,
            ..MethodFaults::default()
        },
    );
    let (status, body) = call(
        &portal,
        "batch",
        json!({"cmd": {"a": "crm.item.get?entityTypeId=2&id=1", "b": "scope"}}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        body["result"]["result_error"]["a"]["error"],
        "INTERNAL_SERVER_ERROR"
    );
    assert!(body["result"]["result"]["b"].is_array());
    portal.shutdown().await;
}

#[tokio::test]
async fn dropped_response_still_executes_the_write() {
    b24_testkit::install_crypto_provider();
    let portal = common::portal(json!({})).await;
    portal.faults().set_method(
        "crm.item.add",
        MethodFaults {
            drop_next: 1,
            ..MethodFaults::default()
        },
    );
    let sent = client()
        .post(format!("{}crm.item.add", portal.webhook_url(1, SECRET)))
        .json(&json!({"entityTypeId": 2, "fields": {"title": "lost answer", "originId": "42"}}))
        .send()
        .await;
    assert!(sent.is_err(), "the client never gets an answer");
    let deals = portal.admin().records(EntityType::Deal);
    assert_eq!(deals.len(), 1, "but the deal exists");
    let (_, found) = call(
        &portal,
        "crm.item.list",
        json!({"entityTypeId": 2, "filter": {"=originId": "42"}}),
    )
    .await;
    assert_eq!(found["result"]["items"][0]["title"], "lost answer");
    portal.shutdown().await;
}

#[tokio::test]
async fn a_down_portal_closes_connections_until_it_is_back() {
    b24_testkit::install_crypto_provider();
    let portal = common::portal(json!({})).await;
    portal.admin().set_down(true);
    assert!(
        client()
            .post(format!("{}scope", portal.webhook_url(1, SECRET)))
            .send()
            .await
            .is_err()
    );
    // The admin API stays reachable so a test (or a person) can bring it back.
    let up = client()
        .post(format!("{}/_emulator/down", portal.url()))
        .json(&json!({"down": false}))
        .send()
        .await
        .unwrap();
    assert_eq!(up.status().as_u16(), 200);
    assert_eq!(call(&portal, "scope", json!({})).await.0, 200);
    portal.shutdown().await;
}

#[tokio::test]
async fn admin_http_api_controls_limits_faults_and_shows_state() {
    b24_testkit::install_crypto_provider();
    let portal = common::portal(json!({})).await;
    let http = client();
    let admin = |path: &str| format!("{}/_emulator/{path}", portal.url());
    call(
        &portal,
        "crm.item.add",
        json!({"entityTypeId": 2, "fields": {"title": "seen"}}),
    )
    .await;
    call(&portal, "crm.item.list", json!({"entityTypeId": 2})).await;
    let counts: Value = http
        .get(admin("requests"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(counts, json!({"crm.item.add": 1, "crm.item.list": 1}));
    let records: Value = http
        .get(admin("records/deal"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(records[0]["title"], "seen");
    let inserted: Value = http
        .post(admin("records/contact"))
        .json(&json!({"name": "Direct"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(inserted["id"], 1);

    let faults = json!({"methods": {"scope": {"failNext": 1, "error": {"status": 500, "code": "INTERNAL_SERVER_ERROR", "description": "boom"}}}});
    assert_eq!(
        http.put(admin("faults"))
            .json(&faults)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16(),
        200
    );
    assert_eq!(call(&portal, "scope", json!({})).await.0, 500);
    assert_eq!(call(&portal, "scope", json!({})).await.0, 200);

    let limits = http
        .put(admin("limits"))
        .json(&json!({"burst": 1, "drainPerSec": 0}))
        .send()
        .await
        .unwrap();
    assert_eq!(limits.status().as_u16(), 200);
    assert_eq!(
        portal.admin().limits(),
        LimitConfig {
            burst: 1,
            drain_per_sec: 0.0,
            ..LimitConfig::default()
        }
    );
    assert_eq!(call(&portal, "scope", json!({})).await.0, 200);
    assert_eq!(call(&portal, "scope", json!({})).await.0, 503);
    let bad = http
        .put(admin("limits"))
        .json(&json!({"burst": "lots"}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status().as_u16(), 400);
    portal.shutdown().await;
}

#[tokio::test]
async fn secrets_never_show_in_debug_output_or_errors() {
    b24_testkit::install_crypto_provider();
    let portal = common::portal(json!({"handlers": {"events": [{"event": "ONCRMDEALADD", "url": "http://127.0.0.1:9/x", "applicationToken": "apptok-123"}]}})).await;
    let debug = format!("{portal:?} {:?}", portal.admin().handlers());
    assert!(!debug.contains(SECRET), "webhook secret leaked: {debug}");
    assert!(!debug.contains("apptok-123"), "application token leaked");
    let (_, wrong) = call(&portal, "crm.nothing", json!({})).await;
    assert!(!wrong.to_string().contains(SECRET));
    portal.shutdown().await;
}
