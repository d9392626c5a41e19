//! `Client::batch` against a local portal that runs `batch` the way Bitrix24
//! does: commands in body order, per-command errors, `halt`.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use b24_client::{ApiErrorKind, Batch, Client, CommandOutcome, RateLimits};
use common::{MockPortal, Reply, Seen, fast_retries};
use serde_json::{Map, Value, json};

type Executed = Arc<Mutex<Vec<(String, String, Value)>>>;

/// The commands of a `batch` body, in the order they appear in it.
fn commands_in_body_order(seen: &Seen) -> (bool, Vec<(String, String, Value)>) {
    let text = String::from_utf8(seen.body.clone()).unwrap();
    let body = seen.json();
    let halt = body["halt"] == json!(1);
    let mut commands: Vec<(String, String, Value)> = body["cmd"]
        .as_object()
        .expect("cmd object")
        .iter()
        .map(|(name, line)| {
            let line = line.as_str().expect("command line");
            let (method, query) = line.split_once('?').unwrap_or((line, ""));
            let params = b24_phpform::parse_str(query, &b24_phpform::Limits::default()).unwrap();
            (name.clone(), method.to_owned(), params)
        })
        .collect();
    commands.sort_by_key(|(name, ..)| {
        text.find(&format!("{}:", Value::from(name.as_str())))
            .unwrap()
    });
    (halt, commands)
}

/// Runs a batch request: `run` gives each command's result or error code.
fn run_batch(
    seen: &Seen,
    executed: &Executed,
    run: impl Fn(&str, &str, &Value) -> Result<Value, &'static str>,
) -> Reply {
    let (halt, commands) = commands_in_body_order(seen);
    let mut results = Map::new();
    let mut errors = Map::new();
    for (name, method, params) in commands {
        executed
            .lock()
            .unwrap()
            .push((name.clone(), method.clone(), params.clone()));
        match run(&name, &method, &params) {
            Ok(result) => {
                results.insert(name, result);
            }
            Err(code) => {
                errors.insert(name, json!({"error": code, "error_description": format!("{code} from the test portal")}));
                if halt {
                    break;
                }
            }
        }
    }
    let errors = if errors.is_empty() {
        json!([])
    } else {
        Value::Object(errors)
    };
    Reply::Json(
        200,
        json!({
            "result": {"result": results, "result_error": errors, "result_total": [], "result_next": [], "result_time": []},
            "time": {"start": 0}
        }),
    )
}

fn client_for(portal: &MockPortal) -> Client {
    Client::builder(portal.webhook(), RateLimits::default().starting_empty())
        .retry(fast_retries(3))
        .build()
        .unwrap()
}

fn names(executed: &Executed) -> Vec<String> {
    executed
        .lock()
        .unwrap()
        .iter()
        .map(|(name, ..)| name.clone())
        .collect()
}

#[tokio::test]
async fn a_long_batch_is_split_into_requests_of_fifty_in_order() {
    b24_testkit::install_crypto_provider();
    let executed = Executed::default();
    let log = executed.clone();
    let portal = MockPortal::start(move |seen| {
        run_batch(seen, &log, |_, _, params| Ok(json!({"id": params["id"]})))
    })
    .await;
    let mut batch = Batch::new();
    for i in 0..120 {
        batch
            .push(
                format!("c{i}"),
                "crm.item.get",
                json!({"entityTypeId": 2, "id": i}),
            )
            .unwrap();
    }

    let outcome = client_for(&portal).batch(&batch).await;

    assert!(outcome.all_done(), "{outcome:?}");
    assert!(outcome.stopped_by.is_none());
    assert_eq!(outcome.requests, 3);
    let sizes: Vec<usize> = portal
        .seen()
        .iter()
        .map(|seen| commands_in_body_order(seen).1.len())
        .collect();
    assert_eq!(sizes, [50, 50, 20]);
    let expected: Vec<String> = (0..120).map(|i| format!("c{i}")).collect();
    assert_eq!(names(&executed), expected);
    assert_eq!(outcome.result("c77"), Some(&json!({"id": "77"})));
    portal.stop().await;
}

#[tokio::test]
async fn per_command_errors_keep_their_code_and_do_not_stop_the_batch() {
    b24_testkit::install_crypto_provider();
    let executed = Executed::default();
    let log = executed.clone();
    let portal = MockPortal::start(move |seen| {
        run_batch(seen, &log, |name, _, _| {
            if name == "missing" {
                Err("NOT_FOUND")
            } else {
                Ok(json!(true))
            }
        })
    })
    .await;
    let batch = Batch::new()
        .with("first", "crm.item.get", json!({"id": 1}))
        .unwrap()
        .with("missing", "crm.item.get", json!({"id": 2}))
        .unwrap()
        .with("last", "crm.item.get", json!({"id": 3}))
        .unwrap();

    let outcome = client_for(&portal).batch(&batch).await;

    assert_eq!(outcome.result("first"), Some(&json!(true)));
    assert_eq!(outcome.result("last"), Some(&json!(true)));
    let Some(CommandOutcome::Failed(error)) = outcome.get("missing") else {
        panic!("expected a failure: {outcome:?}")
    };
    assert_eq!(error.kind, ApiErrorKind::NotFound);
    assert_eq!(error.description, "NOT_FOUND from the test portal");
    assert_eq!(error.method, "crm.item.get");
    portal.stop().await;
}

#[tokio::test]
async fn halt_on_error_stops_and_reports_the_rest_as_not_run() {
    b24_testkit::install_crypto_provider();
    let executed = Executed::default();
    let log = executed.clone();
    let portal = MockPortal::start(move |seen| {
        run_batch(seen, &log, |name, _, _| {
            if name == "c10" {
                Err("ACCESS_DENIED")
            } else {
                Ok(json!(1))
            }
        })
    })
    .await;
    let mut batch = Batch::new().halt_on_error(true);
    for i in 0..60 {
        batch
            .push(format!("c{i}"), "crm.item.update", json!({"id": i}))
            .unwrap();
    }

    let outcome = client_for(&portal).batch(&batch).await;

    assert_eq!(outcome.requests, 1);
    assert_eq!(portal.seen().len(), 1);
    assert!(matches!(outcome.get("c9"), Some(CommandOutcome::Done(_))));
    assert!(
        matches!(outcome.get("c10"), Some(CommandOutcome::Failed(e)) if e.kind == ApiErrorKind::AccessDenied)
    );
    assert_eq!(outcome.get("c11"), Some(&CommandOutcome::NotRun));
    assert_eq!(outcome.get("c59"), Some(&CommandOutcome::NotRun));
    let again = outcome.not_run();
    assert_eq!(again.len(), 49);
    assert_eq!(again.commands()[0].name, "c11");
    portal.stop().await;
}

#[tokio::test]
async fn a_batch_that_partly_ran_is_never_resent_whole() {
    b24_testkit::install_crypto_provider();
    let executed = Executed::default();
    let log = executed.clone();
    let requests = AtomicUsize::new(0);
    let portal = MockPortal::start(move |seen| {
        if requests.fetch_add(1, Ordering::SeqCst) == 1 {
            return Reply::Raw(502, "<html>502 Bad Gateway</html>");
        }
        run_batch(seen, &log, |_, _, _| Ok(json!({"item": {"id": 5}})))
    })
    .await;
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

    let outcome = client_for(&portal).batch(&batch).await;

    assert_eq!(
        portal.seen().len(),
        2,
        "the failed chunk must not be repeated"
    );
    assert_eq!(outcome.requests, 2);
    assert!(
        outcome
            .stopped_by
            .as_ref()
            .is_some_and(|e| e.may_have_executed())
    );
    assert!(matches!(
        outcome.get("add49"),
        Some(CommandOutcome::Done(_))
    ));
    assert_eq!(outcome.get("add50"), Some(&CommandOutcome::Unknown));
    assert_eq!(outcome.get("add99"), Some(&CommandOutcome::Unknown));
    assert_eq!(outcome.get("add100"), Some(&CommandOutcome::NotRun));
    let later = outcome.not_run();
    assert_eq!(later.len(), 20);
    assert_eq!(later.commands()[0].name, "add100");
    portal.stop().await;
}

#[tokio::test]
async fn a_read_only_batch_is_retried_after_a_bare_5xx() {
    b24_testkit::install_crypto_provider();
    let executed = Executed::default();
    let log = executed.clone();
    let requests = AtomicUsize::new(0);
    let portal = MockPortal::start(move |seen| {
        if requests.fetch_add(1, Ordering::SeqCst) == 0 {
            return Reply::Raw(503, "busy");
        }
        run_batch(seen, &log, |_, _, _| Ok(json!([])))
    })
    .await;
    let batch = Batch::new()
        .with("deals", "crm.item.list", json!({"entityTypeId": 2}))
        .unwrap()
        .with("fields", "crm.item.fields", json!({"entityTypeId": 2}))
        .unwrap();

    let outcome = client_for(&portal).batch(&batch).await;

    assert!(outcome.all_done(), "{outcome:?}");
    assert_eq!(portal.seen().len(), 2);
    portal.stop().await;
}

#[tokio::test]
async fn references_across_requests_are_filled_in_from_earlier_results() {
    b24_testkit::install_crypto_provider();
    let executed = Executed::default();
    let log = executed.clone();
    let portal = MockPortal::start(move |seen| {
        run_batch(seen, &log, |name, _, _| match name {
            "contact" => Ok(json!(41)),
            "bad" => Err("NOT_FOUND"),
            _ => Ok(json!({"id": 7})),
        })
    })
    .await;
    let mut batch = Batch::new();
    batch
        .push(
            "contact",
            "crm.contact.add",
            json!({"fields": {"NAME": "Anna"}}),
        )
        .unwrap();
    batch
        .push("bad", "crm.item.get", json!({"id": 999}))
        .unwrap();
    for i in 2..60 {
        batch
            .push(format!("f{i}"), "crm.item.get", json!({"id": i}))
            .unwrap();
    }
    batch
        .push(
            "deal",
            "crm.item.add",
            json!({"entityTypeId": 2, "fields": {
                "contactId": "$result[contact]",
                "title": "Deal for contact $result[contact]",
                "companyId": "$result[f55][id]",
            }}),
        )
        .unwrap();
    batch
        .push(
            "uses_bad",
            "crm.timeline.comment.add",
            json!({"fields": {"ENTITY_ID": "$result[bad][ID]"}}),
        )
        .unwrap();

    let outcome = client_for(&portal).batch(&batch).await;

    assert_eq!(outcome.requests, 2);
    let executed = executed.lock().unwrap().clone();
    let (_, _, deal_params) = executed
        .iter()
        .find(|(name, ..)| name == "deal")
        .expect("deal was sent");
    assert_eq!(deal_params["fields"]["contactId"], "41");
    assert_eq!(deal_params["fields"]["title"], "Deal for contact 41");
    // f55 runs in the same request as `deal`: the portal fills that one in.
    assert_eq!(deal_params["fields"]["companyId"], "$result[f55][id]");
    assert!(!executed.iter().any(|(name, ..)| name == "uses_bad"));
    assert_eq!(outcome.get("uses_bad"), Some(&CommandOutcome::NotRun));
    portal.stop().await;
}
