//! `Client::check`: scopes and method availability, with the fallback to the
//! deprecated `methods` on boxes without `method.get`.

mod common;

use b24_client::{Client, MethodStatus, RateLimits};
use common::{MockPortal, Reply, fast_retries};
use serde_json::{Map, Value, json};

fn client_for(portal: &MockPortal) -> Client {
    Client::builder(portal.webhook(), RateLimits::default().starting_empty())
        .retry(fast_retries(2))
        .build()
        .unwrap()
}

const EXISTING: [&str; 3] = ["crm.item.add", "crm.item.get", "bizproc.robot.add"];
const ALLOWED: [&str; 2] = ["crm.item.add", "crm.item.get"];

/// Answers `method.get` commands of a batch from the tables above.
fn answer_method_gets(body: &Value, known: bool) -> Reply {
    let mut results = Map::new();
    let mut errors = Map::new();
    for (name, line) in body["cmd"].as_object().unwrap() {
        let line = line.as_str().unwrap();
        let (method, query) = line.split_once('?').unwrap();
        assert_eq!(method, "method.get");
        let params = b24_phpform::parse_str(query, &Default::default()).unwrap();
        let asked = params["name"].as_str().unwrap();
        if known {
            results.insert(
                name.clone(),
                json!({
                    "isExisting": EXISTING.contains(&asked),
                    "isAvailable": ALLOWED.contains(&asked),
                }),
            );
        } else {
            errors.insert(name.clone(), json!({"error": "ERROR_METHOD_NOT_FOUND", "error_description": "Method not found!"}));
        }
    }
    let errors = if errors.is_empty() {
        json!([])
    } else {
        Value::Object(errors)
    };
    let results = if results.is_empty() {
        json!([])
    } else {
        Value::Object(results)
    };
    Reply::Json(
        200,
        json!({"result": {"result": results, "result_error": errors}}),
    )
}

fn portal_answer(method: &str, body: &Value, has_method_get: bool) -> Reply {
    match method {
        "scope" => Reply::Json(200, json!({"result": ["crm", "user"]})),
        "batch" => answer_method_gets(body, has_method_get),
        "methods" if body.get("full").is_some() => Reply::Json(
            200,
            json!({"result": EXISTING.iter().chain(["scope", "methods"].iter()).collect::<Vec<_>>()}),
        ),
        "methods" => Reply::Json(200, json!({"result": ALLOWED})),
        other => panic!("unexpected method {other}"),
    }
}

fn assert_statuses(report: &b24_client::CheckReport) {
    let statuses: Vec<(&str, &MethodStatus)> = report
        .methods
        .iter()
        .map(|check| (check.method.as_str(), &check.status))
        .collect();
    assert_eq!(
        statuses,
        [
            ("crm.item.add", &MethodStatus::Available),
            (
                "bizproc.robot.add",
                &MethodStatus::NotAvailable {
                    scope: "bizproc".into(),
                    scope_granted: false
                }
            ),
            ("crm.item.productrow.set", &MethodStatus::Missing),
        ]
    );
    assert!(!report.is_ok());
    assert_eq!(report.granted_scopes, ["crm", "user"]);
    let text = report.to_string();
    assert!(text.contains("grant the `bizproc` scope"), "{text}");
    assert!(
        text.contains("crm.item.productrow.set: does not exist"),
        "{text}"
    );
}

const ASKED: [&str; 3] = [
    "crm.item.add",
    "bizproc.robot.add",
    "crm.item.productrow.set",
];

#[tokio::test]
async fn check_uses_scope_and_method_get() {
    b24_testkit::install_crypto_provider();
    let portal = MockPortal::start(|seen| portal_answer(&seen.method(), &seen.json(), true)).await;

    let report = client_for(&portal).check(&ASKED).await.unwrap();

    assert_statuses(&report);
    assert!(!report.used_legacy_methods);
    let methods: Vec<String> = portal.seen().iter().map(|seen| seen.method()).collect();
    assert_eq!(methods, ["scope", "batch"]);
    portal.stop().await;
}

#[tokio::test]
async fn check_falls_back_to_methods_on_old_boxes() {
    b24_testkit::install_crypto_provider();
    let portal = MockPortal::start(|seen| portal_answer(&seen.method(), &seen.json(), false)).await;

    let report = client_for(&portal).check(&ASKED).await.unwrap();

    assert_statuses(&report);
    assert!(report.used_legacy_methods);
    portal.stop().await;
}

#[tokio::test]
async fn check_fails_on_bad_credentials() {
    b24_testkit::install_crypto_provider();
    let portal = MockPortal::start(|_| {
        Reply::Json(
            401,
            json!({"error": "NO_AUTH_FOUND", "error_description": "Wrong authorization data"}),
        )
    })
    .await;

    let error = client_for(&portal).check(&ASKED).await.unwrap_err();

    assert_eq!(error.api().unwrap().code, "NO_AUTH_FOUND");
    portal.stop().await;
}
