//! Outbound calls as the queue servers make them: exact form payloads for
//! events, the built-in Webhook rule and application robots; no retries.

mod common;

use b24_emulator::{HandlerSeed, RobotHandler, WebhookRule};
use common::{Receiver, call, portal};
use serde_json::{Map, Value, json};

fn parse_form(body: &str) -> Value {
    b24_phpform::parse_str(body, &b24_phpform::Limits::default()).expect("valid PHP form")
}

fn seed_with(receiver: &Receiver) -> Value {
    json!({
        "pipelines": [{"id": 5, "name": "Wholesale", "stages": [{"id": "C5:NEW", "name": "New"}, {"id": "C5:WON", "name": "Won", "semantics": "S"}]}],
        "handlers": {
            "events": [
                {"event": "ONCRMDEALADD", "url": receiver.url("/events/add"), "applicationToken": "tok-add"},
                {"event": "ONCRMDEALUPDATE", "url": receiver.url("/events/update"), "applicationToken": "tok-upd"},
                {"event": "ONCRMDEALMOVETOCATEGORY", "url": receiver.url("/events/move"), "applicationToken": "tok-move"}
            ],
            "webhookRules": [{"stageId": "C5:WON", "url": receiver.url("/rule?secret=XYZ")}]
        }
    })
}

#[tokio::test]
async fn deal_events_carry_the_documented_form_payload() {
    b24_testkit::install_crypto_provider();
    let receiver = Receiver::start().await;
    let portal = portal(seed_with(&receiver)).await;
    let (_, added) = call(
        &portal,
        "crm.item.add",
        json!({"entityTypeId": 2, "fields": {"title": "E"}}),
    )
    .await;
    let id = added["result"]["item"]["id"].as_i64().unwrap();
    let got = receiver.wait_for(1).await;
    assert_eq!(got[0].path_and_query, "/events/add");
    assert_eq!(got[0].content_type, "application/x-www-form-urlencoded");
    let body = &got[0].body;
    assert!(
        body.starts_with("event=ONCRMDEALADD&event_handler_id=1&"),
        "field order as Bitrix24 sends it: {body}"
    );
    let form = parse_form(body);
    assert_eq!(form["data"]["FIELDS"]["ID"], id.to_string());
    assert_eq!(form["auth"]["domain"], "source.test");
    assert_eq!(form["auth"]["application_token"], "tok-add");
    assert_eq!(form["auth"]["client_endpoint"], "https://source.test/rest/");
    assert_eq!(
        form["auth"]["server_endpoint"],
        "https://oauth.bitrix.info/rest/"
    );
    assert_eq!(form["auth"]["member_id"].as_str().unwrap().len(), 32);
    assert!(form["ts"].as_str().unwrap().parse::<i64>().is_ok());
    assert!(
        form["auth"].get("access_token").is_none(),
        "outgoing webhooks carry no access token"
    );

    call(
        &portal,
        "crm.deal.update",
        json!({"id": id, "fields": {"TITLE": "E2"}}),
    )
    .await;
    let got = receiver.wait_for(2).await;
    assert_eq!(got[1].path_and_query, "/events/update");
    assert_eq!(parse_form(&got[1].body)["event_handler_id"], "2");
    portal.shutdown().await;
    receiver.stop();
}

#[tokio::test]
async fn moving_to_another_pipeline_fires_move_to_category_not_update_and_the_stage_rule() {
    b24_testkit::install_crypto_provider();
    let receiver = Receiver::start().await;
    let portal = portal(seed_with(&receiver)).await;
    let (_, added) = call(
        &portal,
        "crm.item.add",
        json!({"entityTypeId": 2, "fields": {}}),
    )
    .await;
    let id = added["result"]["item"]["id"].as_i64().unwrap();
    receiver.wait_for(1).await;
    call(
        &portal,
        "crm.item.update",
        json!({"entityTypeId": 2, "id": id, "fields": {"stageId": "C5:WON"}}),
    )
    .await;
    let got = receiver.wait_for(3).await;
    let paths: Vec<&str> = got.iter().map(|r| r.path_and_query.as_str()).collect();
    assert!(
        paths.contains(&"/events/move") && !paths.contains(&"/events/update"),
        "{paths:?}"
    );
    let rule = got
        .iter()
        .find(|r| r.path_and_query.starts_with("/rule"))
        .expect("webhook rule fired");
    assert_eq!(
        rule.path_and_query, "/rule?secret=XYZ",
        "the URL's query string is kept"
    );
    assert_eq!(
        rule.body,
        format!("document_id[0]=crm&document_id[1]=CCrmDocumentDeal&document_id[2]=DEAL_{id}")
    );
    assert_eq!(
        parse_form(&rule.body)["document_id"],
        json!(["crm", "CCrmDocumentDeal", format!("DEAL_{id}")])
    );
    let moved = parse_form(
        &got.iter()
            .find(|r| r.path_and_query == "/events/move")
            .unwrap()
            .body,
    );
    assert_eq!(
        moved["data"]["FIELDS"],
        json!({"ID": id.to_string(), "CATEGORY_ID": "5", "STAGE_ID": "C5:WON"})
    );

    // Staying in the stage does not fire the rule again.
    call(
        &portal,
        "crm.item.update",
        json!({"entityTypeId": 2, "id": id, "fields": {"title": "again"}}),
    )
    .await;
    let got = receiver.wait_for(4).await;
    assert_eq!(
        got.iter()
            .filter(|r| r.path_and_query.starts_with("/rule"))
            .count(),
        1
    );
    portal.shutdown().await;
    receiver.stop();
}

#[tokio::test]
async fn robots_get_the_application_payload_and_answer_with_event_send() {
    b24_testkit::install_crypto_provider();
    let receiver = Receiver::start().await;
    let portal = portal(json!({})).await;
    let mut properties = Map::new();
    properties.insert("route".into(), json!("wholesale"));
    portal.admin().add_handlers(HandlerSeed {
        robots: vec![RobotHandler {
            code: "transfer_deal".into(),
            handler: receiver.url("/robot"),
            stage_id: "WON".into(),
            properties,
            use_subscription: true,
            application_token: "robot-app-token".into(),
        }],
        ..HandlerSeed::default()
    });
    call(
        &portal,
        "crm.deal.add",
        json!({"fields": {"STAGE_ID": "WON"}}),
    )
    .await;
    let got = receiver.wait_for(1).await;
    let form = parse_form(&got[0].body);
    assert_eq!(form["code"], "transfer_deal");
    assert_eq!(
        form["document_id"],
        json!(["crm", "CCrmDocumentDeal", "DEAL_1"])
    );
    assert_eq!(
        form["document_type"],
        json!(["crm", "CCrmDocumentDeal", "DEAL"])
    );
    assert_eq!(form["properties"]["route"], "wholesale");
    assert_eq!(form["use_subscription"], "Y");
    for key in [
        "access_token",
        "expires",
        "refresh_token",
        "expires_in",
        "scope",
        "domain",
        "server_endpoint",
        "client_endpoint",
        "member_id",
        "user_id",
        "status",
        "application_token",
    ] {
        assert!(form["auth"].get(key).is_some(), "auth[{key}] missing");
    }
    let token = form["event_token"].as_str().unwrap().to_string();
    let answer = json!({"event_token": token, "return_values": {"targetDealId": "77"}, "log_message": "copied"});
    let (status, sent) = call(&portal, "bizproc.event.send", answer.clone()).await;
    assert_eq!((status, sent["result"].clone()), (200, json!(true)));
    assert_eq!(
        portal.admin().robot_runs()[0].return_values,
        Some(json!({"targetDealId": "77"}))
    );
    let (status, again) = call(&portal, "bizproc.event.send", answer).await;
    assert_eq!(
        (status, again["error"].as_str()),
        (403, Some("ACCESS_DENIED")),
        "a token answers once"
    );
    portal.shutdown().await;
    receiver.stop();
}

#[tokio::test]
async fn failed_deliveries_are_recorded_and_never_retried() {
    b24_testkit::install_crypto_provider();
    // A port with nothing listening: bind, learn the port, close.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let portal = portal(json!({})).await;
    portal.admin().add_handlers(HandlerSeed {
        webhook_rules: vec![WebhookRule {
            stage_id: "NEW".into(),
            url: format!("http://{closed}/hook?secret=abc"),
        }],
        ..HandlerSeed::default()
    });
    call(
        &portal,
        "crm.item.add",
        json!({"entityTypeId": 2, "fields": {}}),
    )
    .await;
    let deliveries = portal
        .admin()
        .wait_for_deliveries(1, std::time::Duration::from_secs(10))
        .await;
    assert_eq!(deliveries.len(), 1);
    assert_eq!(deliveries[0].status, None);
    assert_eq!(deliveries[0].error.as_deref(), Some("connection failed"));
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(portal.admin().deliveries().len(), 1, "no retry");
    portal.shutdown().await;
}
