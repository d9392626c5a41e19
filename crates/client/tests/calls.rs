//! `Client::call` against a local portal: paths, bodies, typed errors and
//! which failures are retried.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use b24_client::{ApiErrorKind, BodyFormat, BucketConfig, Client, Error, RateLimits, Webhook};
use common::{MockPortal, Recorder, Reply, SECRET, fast_retries};
use serde_json::json;

fn client_for(portal: &MockPortal, recorder: &Arc<Recorder>, attempts: u32) -> Client {
    Client::builder(portal.webhook(), RateLimits::default().starting_empty())
        .retry(fast_retries(attempts))
        .request_timeout(Duration::from_millis(500))
        .observer(recorder.clone())
        .build()
        .unwrap()
}

#[tokio::test]
async fn json_call_goes_to_the_webhook_method_url() {
    b24_testkit::install_crypto_provider();
    let portal = MockPortal::start(|_| {
        Reply::Json(
            200,
            json!({"result": [{"ID": "1"}], "next": 50, "total": 51, "time": {"operating": 0}}),
        )
    })
    .await;
    let recorder = Arc::new(Recorder::default());
    let client = client_for(&portal, &recorder, 3);

    let response = client
        .call("crm.deal.list", &json!({"filter": {"STAGE_ID": "WON"}}))
        .await
        .unwrap();

    assert_eq!(response.result, json!([{"ID": "1"}]));
    assert_eq!((response.next, response.total), (Some(50), Some(51)));
    let seen = portal.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].path, format!("/rest/1/{SECRET}/crm.deal.list.json"));
    assert_eq!(seen[0].content_type.as_deref(), Some("application/json"));
    assert_eq!(seen[0].json(), json!({"filter": {"STAGE_ID": "WON"}}));
    assert_eq!(recorder.outcomes(), ["ok"]);
    portal.stop().await;
}

#[tokio::test]
async fn form_call_sends_php_style_keys_for_lists_of_maps() {
    b24_testkit::install_crypto_provider();
    let portal = MockPortal::start(|_| Reply::Json(200, json!({"result": 15}))).await;
    let recorder = Arc::new(Recorder::default());
    let client = client_for(&portal, &recorder, 1);
    let params = json!({"fields": {
        "NAME": "Анна",
        "PHONE": [{"VALUE": "+7 900 000", "VALUE_TYPE": "WORK"}, {"VALUE": "555", "VALUE_TYPE": "HOME"}],
    }});

    let response = client
        .call_as("crm.contact.add", &params, BodyFormat::Form)
        .await
        .unwrap();

    assert_eq!(response.result, json!(15));
    let seen = &portal.seen()[0];
    assert_eq!(
        seen.content_type.as_deref(),
        Some("application/x-www-form-urlencoded")
    );
    let parsed = b24_phpform::parse(&seen.body, &b24_phpform::Limits::default()).unwrap();
    assert_eq!(parsed, params);
    portal.stop().await;
}

#[tokio::test]
async fn api_errors_are_typed_keep_the_description_and_are_not_retried() {
    b24_testkit::install_crypto_provider();
    let portal = MockPortal::start(|_| {
        Reply::Json(403, json!({
            "error": "insufficient_scope",
            "error_description": "The request requires higher privileges than provided by the webhook token"
        }))
    })
    .await;
    let recorder = Arc::new(Recorder::default());
    let client = client_for(&portal, &recorder, 5);

    let error = client.call("crm.item.add", &json!({})).await.unwrap_err();

    let api = error.api().expect("an API error");
    assert_eq!(api.kind, ApiErrorKind::InsufficientScope);
    assert_eq!(api.status, 403);
    assert!(api.description.contains("higher privileges"));
    assert_eq!(portal.seen().len(), 1);
    assert!(!error.to_string().contains(SECRET));
    assert!(!format!("{error:?}").contains(SECRET));
    portal.stop().await;
}

#[tokio::test]
async fn query_limit_exceeded_is_retried_until_it_passes() {
    b24_testkit::install_crypto_provider();
    let count = AtomicUsize::new(0);
    let portal = MockPortal::start(move |_| {
        if count.fetch_add(1, Ordering::SeqCst) < 2 {
            Reply::Json(
                503,
                json!({"error": "QUERY_LIMIT_EXCEEDED", "error_description": "Too many requests"}),
            )
        } else {
            Reply::Json(200, json!({"result": {"id": 9}}))
        }
    })
    .await;
    let recorder = Arc::new(Recorder::default());
    let client = client_for(&portal, &recorder, 5);

    // A write: QUERY_LIMIT_EXCEEDED means it did not run, so retrying is safe.
    let response = client.call("crm.item.add", &json!({})).await.unwrap();

    assert_eq!(response.result, json!({"id": 9}));
    assert_eq!(
        recorder.outcomes(),
        ["QUERY_LIMIT_EXCEEDED", "QUERY_LIMIT_EXCEEDED", "ok"]
    );
    portal.stop().await;
}

#[tokio::test]
async fn query_limit_exceeded_gives_up_after_the_last_attempt() {
    b24_testkit::install_crypto_provider();
    let portal = MockPortal::start(|_| {
        Reply::Json(
            503,
            json!({"error": "QUERY_LIMIT_EXCEEDED", "error_description": "Too many requests"}),
        )
    })
    .await;
    let recorder = Arc::new(Recorder::default());
    let client = client_for(&portal, &recorder, 3);

    let error = client.call("crm.item.add", &json!({})).await.unwrap_err();

    assert_eq!(error.api().unwrap().kind, ApiErrorKind::QueryLimitExceeded);
    assert_eq!(portal.seen().len(), 3);
    portal.stop().await;
}

#[tokio::test]
async fn connection_failures_are_retried_and_reported_without_the_secret() {
    b24_testkit::install_crypto_provider();
    // A port that was just free: nothing listens there.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    drop(listener);
    let webhook = Webhook::parse(&format!("http://{address}/rest/1/{SECRET}/")).unwrap();
    let recorder = Arc::new(Recorder::default());
    let client = Client::builder(webhook, RateLimits::default().starting_empty())
        .retry(fast_retries(3))
        .observer(recorder.clone())
        .build()
        .unwrap();

    // Even a write is retried: a refused connection never reached the portal.
    let error = client.call("crm.item.add", &json!({})).await.unwrap_err();

    assert!(matches!(error, Error::Transport { .. }), "{error:?}");
    assert_eq!(recorder.outcomes(), ["connect_error"; 3]);
    assert!(!error.to_string().contains(SECRET), "{error}");
    assert!(!format!("{error:?}").contains(SECRET), "{error:?}");
}

#[tokio::test]
async fn a_write_that_times_out_is_not_sent_again() {
    b24_testkit::install_crypto_provider();
    let portal = MockPortal::start(|_| Reply::Hang).await;
    let recorder = Arc::new(Recorder::default());
    let client = client_for(&portal, &recorder, 5);

    let error = client
        .call("crm.item.add", &json!({"entityTypeId": 2}))
        .await
        .unwrap_err();

    assert!(error.may_have_executed(), "{error:?}");
    assert_eq!(portal.seen().len(), 1);
    assert_eq!(recorder.outcomes(), ["timeout"]);
    assert!(!format!("{error:?}").contains(SECRET));
    portal.stop().await;
}

#[tokio::test]
async fn a_read_that_times_out_is_retried() {
    b24_testkit::install_crypto_provider();
    let portal = MockPortal::start(|_| Reply::Hang).await;
    let recorder = Arc::new(Recorder::default());
    let client = client_for(&portal, &recorder, 3);

    let error = client
        .call("crm.item.get", &json!({"entityTypeId": 2, "id": 1}))
        .await
        .unwrap_err();

    assert!(matches!(error, Error::Transport { .. }), "{error:?}");
    assert_eq!(portal.seen().len(), 3);
    portal.stop().await;
}

#[tokio::test]
async fn a_bare_5xx_after_a_write_may_have_executed_but_a_read_is_retried() {
    b24_testkit::install_crypto_provider();
    let count = AtomicUsize::new(0);
    let portal = MockPortal::start(move |seen| {
        if seen.method() == "crm.item.get" && count.fetch_add(1, Ordering::SeqCst) >= 1 {
            return Reply::Json(200, json!({"result": {"item": {"id": 1}}}));
        }
        Reply::Raw(502, "<html>502 Bad Gateway</html>")
    })
    .await;
    let recorder = Arc::new(Recorder::default());
    let client = client_for(&portal, &recorder, 3);

    let write = client
        .call("crm.item.update", &json!({}))
        .await
        .unwrap_err();
    assert!(write.may_have_executed(), "{write:?}");
    assert_eq!(portal.seen_count("crm.item.update.json"), 1);

    let read = client.call("crm.item.get", &json!({})).await.unwrap();
    assert_eq!(read.result, json!({"item": {"id": 1}}));
    assert_eq!(portal.seen_count("crm.item.get.json"), 2);
    portal.stop().await;
}

#[tokio::test]
async fn a_proxy_error_page_is_an_http_error_and_not_retried() {
    b24_testkit::install_crypto_provider();
    let portal = MockPortal::start(|_| Reply::Raw(404, "<html>Not Found</html>")).await;
    let recorder = Arc::new(Recorder::default());
    let client = client_for(&portal, &recorder, 5);

    let error = client.call("crm.item.get", &json!({})).await.unwrap_err();

    assert!(
        matches!(error, Error::Http { status: 404, .. }),
        "{error:?}"
    );
    assert_eq!(portal.seen().len(), 1);
    portal.stop().await;
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[tokio::test]
async fn operation_time_limit_waits_for_the_reset_then_retries() {
    b24_testkit::install_crypto_provider();
    let count = AtomicUsize::new(0);
    let portal = MockPortal::start(move |_| {
        if count.fetch_add(1, Ordering::SeqCst) == 0 {
            Reply::Json(
                429,
                json!({
                    "error": "OPERATION_TIME_LIMIT",
                    "error_description": "Method is blocked due to operation time limit.",
                    "time": {"operating_reset_at": unix_now() + 1}
                }),
            )
        } else {
            Reply::Json(200, json!({"result": []}))
        }
    })
    .await;
    let recorder = Arc::new(Recorder::default());
    let client = client_for(&portal, &recorder, 3);

    let response = client.call("crm.item.list", &json!({})).await.unwrap();

    assert_eq!(response.result, json!([]));
    assert_eq!(recorder.outcomes(), ["OPERATION_TIME_LIMIT", "ok"]);
    portal.stop().await;
}

#[tokio::test]
async fn a_method_blocked_for_too_long_fails_fast_with_its_reset_time() {
    b24_testkit::install_crypto_provider();
    let reset_at = unix_now() + 600;
    let portal = MockPortal::start(move |_| {
        Reply::Json(
            429,
            json!({
                "error": "OPERATION_TIME_LIMIT",
                "error_description": "Method is blocked due to operation time limit.",
                "time": {"operating_reset_at": reset_at}
            }),
        )
    })
    .await;
    let mut retry = fast_retries(3);
    retry.max_operating_wait = Duration::from_secs(5);
    let client = Client::builder(portal.webhook(), RateLimits::default().starting_empty())
        .retry(retry)
        .build()
        .unwrap();

    let first = client.call("crm.item.list", &json!({})).await.unwrap_err();
    let second = client.call("crm.item.list", &json!({})).await.unwrap_err();

    for error in [&first, &second] {
        let api = error.api().expect("an API error");
        assert_eq!(api.kind, ApiErrorKind::OperationTimeLimit);
        assert_eq!(
            api.retry_at,
            Some(UNIX_EPOCH + Duration::from_secs(reset_at))
        );
    }
    // The first error is the portal's own, description and all.
    assert_eq!(
        first.api().unwrap().description,
        "Method is blocked due to operation time limit."
    );
    // The block is remembered: the second call never reached the portal.
    assert_eq!(portal.seen().len(), 1);
    // Other methods are not blocked.
    assert!(client.call("crm.item.get", &json!({})).await.is_err());
    assert_eq!(portal.seen().len(), 2);
    portal.stop().await;
}

#[tokio::test]
async fn clients_sharing_rate_limits_share_the_portal_bucket() {
    b24_testkit::install_crypto_provider();
    let portal = MockPortal::start(|_| Reply::Json(200, json!({"result": true}))).await;
    // One request, then one every ~17 minutes: a second request must wait.
    let slow = BucketConfig {
        burst: 1,
        drain_per_second: 0.001,
    };
    let shared = RateLimits::new(slow).unwrap().starting_empty();
    let first = Client::builder(portal.webhook(), shared.clone())
        .build()
        .unwrap();
    let second = Client::builder(portal.webhook(), shared.clone())
        .build()
        .unwrap();
    let separate = Client::builder(
        portal.webhook(),
        RateLimits::new(slow).unwrap().starting_empty(),
    )
    .build()
    .unwrap();

    first.call("profile", &json!({})).await.unwrap();
    let waiting = tokio::time::timeout(
        Duration::from_millis(300),
        second.call("profile", &json!({})),
    )
    .await;
    assert!(
        waiting.is_err(),
        "the second client must wait for the shared bucket"
    );
    separate.call("profile", &json!({})).await.unwrap();

    assert_eq!(portal.seen().len(), 2);
    portal.stop().await;
}

#[tokio::test]
async fn debug_output_of_a_client_hides_the_secret() {
    b24_testkit::install_crypto_provider();
    let portal = MockPortal::start(|_| Reply::Json(200, json!({"result": true}))).await;
    let client = Client::builder(portal.webhook(), RateLimits::default().starting_empty())
        .build()
        .unwrap();
    let shown = format!("{client:?}");
    assert!(!shown.contains(SECRET), "{shown}");
    assert!(shown.contains("/rest/1/***/"), "{shown}");
    portal.stop().await;
}
