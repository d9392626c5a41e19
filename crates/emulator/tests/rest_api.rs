//! The REST surface over real loopback sockets: shapes, auth and scope
//! errors, paging, filters and batch.

mod common;

use common::{SECRET, call, call_form, client, portal};
use serde_json::{Value, json};

fn assert_time_block(body: &Value) {
    let time = &body["time"];
    for key in [
        "start",
        "finish",
        "duration",
        "processing",
        "date_start",
        "date_finish",
    ] {
        assert!(time.get(key).is_some(), "time.{key} missing in {body}");
    }
}

#[tokio::test]
async fn item_crud_has_bitrix_shapes() {
    b24_testkit::install_crypto_provider();
    let portal = portal(json!({})).await;
    let (status, added) = call(&portal, "crm.item.add", json!({"entityTypeId": 2, "fields": {"title": "First", "opportunity": 300, "currencyId": "EUR", "originatorId": "src", "originId": "17"}})).await;
    assert_eq!(status, 200, "{added}");
    assert_time_block(&added);
    assert!(
        added["time"]["operating"].is_number(),
        "operating reported: {added}"
    );
    assert!(added["time"]["operating_reset_at"].is_number());
    let item = &added["result"]["item"];
    let id = item["id"].as_i64().unwrap();
    assert_eq!(item["title"], "First");
    assert_eq!(item["opportunity"], 300.0);
    assert_eq!(item["stageId"], "NEW");
    assert_eq!(item["entityTypeId"], 2);

    let (_, got) = call(
        &portal,
        "crm.item.get",
        json!({"entityTypeId": 2, "id": id}),
    )
    .await;
    assert_eq!(got["result"]["item"]["originId"], "17");

    let (_, updated) = call(
        &portal,
        "crm.item.update",
        json!({"entityTypeId": 2, "id": id, "fields": {"stageId": "WON"}}),
    )
    .await;
    assert_eq!(updated["result"]["item"]["stageId"], "WON");
    assert_eq!(updated["result"]["item"]["closed"], "Y");
    assert_eq!(
        updated["result"]["item"]["title"], "First",
        "update keeps fields it was not given"
    );

    let (status, missing) = call(
        &portal,
        "crm.item.get",
        json!({"entityTypeId": 2, "id": 9999}),
    )
    .await;
    assert_eq!(
        (status, missing["error"].as_str()),
        (400, Some("NOT_FOUND"))
    );
    let (status, bad_type) = call(
        &portal,
        "crm.item.get",
        json!({"entityTypeId": 777, "id": 1}),
    )
    .await;
    assert_eq!(
        (status, bad_type["error"].as_str()),
        (400, Some("NOT_FOUND"))
    );
    portal.shutdown().await;
}

#[tokio::test]
async fn legacy_deal_methods_use_upper_case_strings_and_form_bodies() {
    b24_testkit::install_crypto_provider();
    let portal = portal(json!({})).await;
    let (status, added) = call_form(
        &portal,
        "crm.deal.add",
        &json!({"fields": {"TITLE": "Form deal", "OPPORTUNITY": "19999.99", "ORIGIN_ID": "5"}}),
    )
    .await;
    assert_eq!(status, 200, "{added}");
    let id = added["result"]
        .as_i64()
        .expect("crm.deal.add returns the id");
    let (_, got) = call(&portal, "crm.deal.get", json!({"ID": id})).await;
    assert_eq!(got["result"]["ID"], id.to_string());
    assert_eq!(got["result"]["OPPORTUNITY"], "19999.99");
    assert_eq!(got["result"]["CATEGORY_ID"], "0");
    assert_eq!(got["result"]["STAGE_ID"], "NEW");
    let (_, updated) = call(
        &portal,
        "crm.deal.update",
        json!({"id": id, "fields": {"STAGE_ID": "LOSE"}}),
    )
    .await;
    assert_eq!(updated["result"], true);
    let (status, missing) = call(&portal, "crm.deal.get", json!({"id": 12345})).await;
    assert_eq!(
        (status, missing["error_description"].as_str()),
        (400, Some("Not found"))
    );
    let (_, fields) = call(&portal, "crm.deal.fields", json!({})).await;
    assert_eq!(fields["result"]["STAGE_ID"]["type"], "crm_status");
    assert_eq!(fields["result"]["IS_NEW"]["type"], "char");
    portal.shutdown().await;
}

#[tokio::test]
async fn auth_scope_and_unknown_method_errors_match_bitrix() {
    b24_testkit::install_crypto_provider();
    let portal = portal(json!({})).await;
    let http = client();
    let wrong = http
        .post(format!("{}/rest/1/wrong/crm.item.list.json", portal.url()))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status().as_u16(), 401);
    let body: Value = wrong.json().await.unwrap();
    assert_eq!(body["error"], "INVALID_CREDENTIALS");
    assert!(!body.to_string().contains(SECRET));

    let no_auth = http
        .post(format!("{}/rest/crm.item.list", portal.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(no_auth.status().as_u16(), 401);
    assert_eq!(
        no_auth.json::<Value>().await.unwrap()["error"],
        "NO_AUTH_FOUND"
    );
    let bad_token = http
        .post(format!("{}/rest/crm.item.list?auth=abc", portal.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(bad_token.status().as_u16(), 401);
    assert_eq!(
        bad_token.json::<Value>().await.unwrap()["error"],
        "invalid_token"
    );

    let no_scope = http
        .post(format!("{}crm.deal.list", portal.webhook_url(2, "nocrm")))
        .send()
        .await
        .unwrap();
    assert_eq!(no_scope.status().as_u16(), 403);
    assert_eq!(
        no_scope.json::<Value>().await.unwrap()["error"],
        "insufficient_scope"
    );

    let (status, unknown) = call(&portal, "crm.nothing.here", json!({})).await;
    assert_eq!(
        (status, unknown["error"].as_str()),
        (404, Some("ERROR_METHOD_NOT_FOUND"))
    );

    let (status, robot) = call(
        &portal,
        "bizproc.robot.add",
        json!({"CODE": "x", "HANDLER": "https://a/", "NAME": "n"}),
    )
    .await;
    assert_eq!(
        (status, robot["error"].as_str()),
        (403, Some("ACCESS_DENIED"))
    );
    assert_eq!(robot["error_description"], "Application context required");

    // Without `.json`, as a GET with a query string, and with a trailing slash.
    let get = http
        .get(format!("{}scope?x=1", portal.webhook_url(1, SECRET)))
        .send()
        .await
        .unwrap();
    assert_eq!(
        get.json::<Value>().await.unwrap()["result"],
        json!(["crm", "user", "bizproc", "im"])
    );
    let (_, exists) = call(&portal, "method.get", json!({"name": "crm.item.add"})).await;
    assert_eq!(
        exists["result"],
        json!({"isExisting": true, "isAvailable": true})
    );
    let limited = http
        .post(format!("{}method.get", portal.webhook_url(2, "nocrm")))
        .json(&json!({"name": "crm.item.add"}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        limited.json::<Value>().await.unwrap()["result"],
        json!({"isExisting": true, "isAvailable": false})
    );
    portal.shutdown().await;
}

fn many_deals(count: usize) -> Value {
    let deals: Vec<Value> = (1..=count).map(|i| json!({"title": format!("Deal {i}"), "stageId": if i % 2 == 0 { "C5:NEW" } else { "NEW" }, "originId": i.to_string()})).collect();
    json!({
        "pipelines": [{"id": 5, "name": "Wholesale", "stages": [{"id": "C5:NEW", "name": "New"}, {"id": "C5:WON", "name": "Won", "semantics": "S"}]}],
        "deals": deals,
    })
}

#[tokio::test]
async fn lists_page_by_fifty_with_next_total_and_fast_mode() {
    b24_testkit::install_crypto_provider();
    let portal = portal(many_deals(120)).await;
    let (_, first) = call(&portal, "crm.item.list", json!({"entityTypeId": 2})).await;
    assert_eq!(first["result"]["items"].as_array().unwrap().len(), 50);
    assert_eq!(
        (first["next"].as_i64(), first["total"].as_i64()),
        (Some(50), Some(120))
    );
    let (_, last) = call(
        &portal,
        "crm.item.list",
        json!({"entityTypeId": 2, "start": 100}),
    )
    .await;
    assert_eq!(last["result"]["items"].as_array().unwrap().len(), 20);
    assert!(last.get("next").is_none());
    let (_, fast) = call(
        &portal,
        "crm.item.list",
        json!({"entityTypeId": 2, "start": -1, "order": {"ID": "ASC"}, "filter": {">ID": 100}}),
    )
    .await;
    let items = fast["result"]["items"].as_array().unwrap();
    assert_eq!(items.len(), 20);
    assert_eq!(items[0]["id"], 101);
    assert!(
        fast.get("next").is_none() && fast.get("total").is_none(),
        "fast mode has neither: {fast}"
    );

    let (_, legacy) = call(&portal, "crm.deal.list", json!({"filter": {"CATEGORY_ID": 5, ">=ID": 100}, "order": {"ID": "DESC"}, "select": ["ID", "STAGE_ID"]})).await;
    let rows = legacy["result"].as_array().unwrap();
    assert_eq!(legacy["total"], 11);
    assert_eq!(rows[0], json!({"ID": "120", "STAGE_ID": "C5:NEW"}));
    portal.shutdown().await;
}

#[tokio::test]
async fn filters_by_stage_category_and_external_keys() {
    b24_testkit::install_crypto_provider();
    let portal = portal(many_deals(10)).await;
    let list = |filter: Value| {
        let portal = &portal;
        async move {
            let (_, body) = call(
                portal,
                "crm.item.list",
                json!({"entityTypeId": 2, "filter": filter, "select": ["id"]}),
            )
            .await;
            body["result"]["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|i| i["id"].as_i64().unwrap())
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(
        list(json!({"stageId": "C5:NEW", "<id": 5})).await,
        vec![2, 4]
    );
    assert_eq!(list(json!({"categoryId": 0, ">id": 6})).await, vec![7, 9]);
    assert_eq!(list(json!({"=originId": "3"})).await, vec![3]);
    assert_eq!(
        list(json!({"!stageId": "NEW", ">=id": 8})).await,
        vec![8, 10]
    );
    assert_eq!(list(json!({"%title": "deal 1"})).await, vec![1, 10]);
    assert_eq!(list(json!({"originatorId": ""})).await.len(), 10);
    let (status, bad) = call(
        &portal,
        "crm.item.list",
        json!({"entityTypeId": 2, "filter": {"nonsense": 1}}),
    )
    .await;
    assert_eq!(
        (status, bad["error"].as_str()),
        (400, Some("INVALID_ARG_VALUE"))
    );
    portal.shutdown().await;
}

#[tokio::test]
async fn batch_references_earlier_results_and_reports_errors() {
    b24_testkit::install_crypto_provider();
    let portal = portal(json!({})).await;
    let (status, body) = call(
        &portal,
        "batch",
        json!({"halt": 0, "cmd": {
            "add": "crm.item.add?entityTypeId=2&fields[title]=Batched",
            "get": "crm.item.get?entityTypeId=2&id=$result[add][item][id]",
            "bad": "crm.item.get?entityTypeId=2&id=999",
            "list": "crm.item.list?entityTypeId=2&select[]=id",
            "nested": "batch?cmd[a]=scope",
        }}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let result = &body["result"];
    assert_eq!(result["result"]["get"]["item"]["title"], "Batched");
    assert_eq!(result["result_error"]["bad"]["error"], "NOT_FOUND");
    assert_eq!(
        result["result_error"]["nested"]["error"],
        "ERROR_BATCH_METHOD_NOT_ALLOWED"
    );
    assert_eq!(result["result_total"]["list"], 1);
    assert!(result["result_time"]["add"]["operating"].is_number());
    assert!(
        body["time"].get("operating").is_none(),
        "the outer batch is not accounted"
    );

    let (_, halted) = call(
        &portal,
        "batch",
        json!({"halt": 1, "cmd": ["crm.item.get?entityTypeId=2&id=999", "scope"]}),
    )
    .await;
    assert_eq!(
        halted["result"]["result"],
        json!([]),
        "halted before the second command"
    );
    assert_eq!(halted["result"]["result_error"][0]["error"], "NOT_FOUND");

    let cmd: serde_json::Map<String, Value> =
        (0..51).map(|i| (format!("c{i}"), json!("scope"))).collect();
    let (status, too_long) = call(&portal, "batch", json!({"cmd": cmd})).await;
    assert_eq!(
        (status, too_long["error"].as_str()),
        (400, Some("ERROR_BATCH_LENGTH_EXCEEDED"))
    );
    assert_eq!(
        portal.admin().request_count("batch"),
        3,
        "a batch is one HTTP request"
    );
    portal.shutdown().await;
}
