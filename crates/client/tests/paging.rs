//! `Client::list`: fast `start=-1` / `>ID` paging and classic `start`/`next`.

mod common;

use b24_client::{Client, Error, Paging, RateLimits};
use common::{MockPortal, Reply, fast_retries};
use futures_util::TryStreamExt;
use serde_json::{Value, json};

fn client_for(portal: &MockPortal) -> Client {
    Client::builder(portal.webhook(), RateLimits::default().starting_empty())
        .retry(fast_retries(2))
        .build()
        .unwrap()
}

/// 120 deals with IDs 1..=120 in category 5, served like `crm.item.list`.
fn item_list(params: &Value) -> Reply {
    let after = params["filter"][">id"].as_u64().unwrap_or(0);
    assert_eq!(
        params["filter"]["categoryId"],
        json!(5),
        "the caller's filter is kept"
    );
    let page: Vec<Value> = (after + 1..=120)
        .take(50)
        .map(|id| json!({"id": id, "title": format!("Deal {id}")}))
        .collect();
    Reply::Json(200, json!({"result": {"items": page}}))
}

#[tokio::test]
async fn fast_paging_walks_by_id_and_stops_on_a_short_page() {
    b24_testkit::install_crypto_provider();
    let portal = MockPortal::start(|seen| item_list(&seen.json())).await;

    let records: Vec<Value> = client_for(&portal)
        .list(
            "crm.item.list",
            json!({"entityTypeId": 2, "filter": {"categoryId": 5}, "select": ["title"]}),
            Paging::by_id("id"),
        )
        .try_collect()
        .await
        .unwrap();

    let ids: Vec<u64> = records.iter().map(|r| r["id"].as_u64().unwrap()).collect();
    assert_eq!(ids, (1..=120).collect::<Vec<_>>());
    let bodies: Vec<Value> = portal.seen().iter().map(|seen| seen.json()).collect();
    assert_eq!(bodies.len(), 3);
    for body in &bodies {
        assert_eq!(body["start"], json!(-1));
        assert_eq!(body["order"], json!({"id": "ASC"}));
        assert_eq!(body["select"], json!(["title", "id"]));
    }
    assert_eq!(bodies[0]["filter"].get(">id"), None);
    assert_eq!(bodies[1]["filter"][">id"], json!(50));
    assert_eq!(bodies[2]["filter"][">id"], json!(100));
    portal.stop().await;
}

#[tokio::test]
async fn classic_paging_follows_next() {
    b24_testkit::install_crypto_provider();
    let portal = MockPortal::start(|seen| {
        let start = seen.json()["start"].as_u64().unwrap();
        let page: Vec<Value> = (start + 1..=120)
            .take(50)
            .map(|id| json!({"ID": id.to_string()}))
            .collect();
        let mut answer = json!({"result": page, "total": 120});
        if start + 50 < 120 {
            answer["next"] = json!(start + 50);
        }
        Reply::Json(200, answer)
    })
    .await;

    let records: Vec<Value> = client_for(&portal)
        .list(
            "crm.deal.list",
            json!({"filter": {"CATEGORY_ID": 0}}),
            Paging::Classic,
        )
        .try_collect()
        .await
        .unwrap();

    assert_eq!(records.len(), 120);
    assert_eq!(records[119]["ID"], "120");
    let starts: Vec<Value> = portal
        .seen()
        .iter()
        .map(|seen| seen.json()["start"].clone())
        .collect();
    assert_eq!(starts, [json!(0), json!(50), json!(100)]);
    portal.stop().await;
}

#[tokio::test]
async fn an_error_ends_the_stream_after_the_records_already_read() {
    b24_testkit::install_crypto_provider();
    let portal = MockPortal::start(|seen| {
        if seen.json()["filter"].get(">ID").is_some() {
            Reply::Json(
                400,
                json!({"error": "INVALID_FILTER", "error_description": "bad filter"}),
            )
        } else {
            let page: Vec<Value> = (1..=50).map(|id| json!({"ID": id.to_string()})).collect();
            Reply::Json(200, json!({"result": page}))
        }
    })
    .await;

    let results: Vec<Result<Value, Error>> = futures_util::StreamExt::collect(
        client_for(&portal).list("crm.deal.list", json!({}), Paging::by_id("ID")),
    )
    .await;

    assert_eq!(results.len(), 51);
    assert!(results[..50].iter().all(Result::is_ok));
    let error = results[50].as_ref().unwrap_err();
    assert_eq!(error.api().unwrap().code, "INVALID_FILTER");
    portal.stop().await;
}
