//! Application mode, automation side: `bizproc.robot.*` in application
//! context (with the documented validation errors), a rule run's exact
//! payload, `bizproc.event.send` answering the workflow, and `event.*`.

mod common;

use std::time::Duration;

use b24_emulator::{Installed, Portal};
use common::{Receiver, app_portal, call, oauth_call, parse_form};
use serde_json::{Map, Value, json};

async fn installed(receiver: &Receiver) -> (Portal, Installed) {
    let portal = app_portal().await;
    let installed = portal
        .admin()
        .install_application(&receiver.url("/app/install/source"))
        .await
        .unwrap();
    (portal, installed)
}

fn rule(handler: &str) -> Value {
    json!({
        "CODE": "transfer_deal",
        "HANDLER": handler,
        "AUTH_USER_ID": 1,
        "USE_SUBSCRIPTION": "Y",
        "NAME": {"ru": "Передать сделку", "en": "Transfer deal"},
        "PROPERTIES": {"route": {"Name": {"ru": "Маршрут", "en": "Route"}, "Type": "select",
            "Options": {"wholesale": "Wholesale", "retail": "Retail"}, "Required": "Y"}},
        "RETURN_PROPERTIES": {
            "targetDealId": {"Name": {"en": "Target deal id"}, "Type": "int"},
            "status": {"Name": {"en": "Status"}, "Type": "string"},
            "message": {"Name": {"en": "Message"}, "Type": "text"}},
        "DOCUMENT_TYPE": ["crm", "CCrmDocumentDeal", "DEAL"],
    })
}

fn with(mut base: Value, key: &str, value: Value) -> Value {
    base[key] = value;
    base
}

fn properties(route: &str) -> Map<String, Value> {
    let mut map = Map::new();
    map.insert("route".into(), json!(route));
    map
}

#[tokio::test]
async fn robot_methods_work_in_application_context_and_validate_like_bitrix24() {
    b24_testkit::install_crypto_provider();
    let receiver = Receiver::start().await;
    let (portal, installed) = installed(&receiver).await;
    let token = installed.tokens.access_token.as_str();
    let handler = receiver.url("/robot");

    let (status, refused) = call(&portal, "bizproc.robot.add", rule(&handler)).await;
    assert_eq!(
        (status, refused["error_description"].as_str()),
        (403, Some("Application context required"))
    );

    let (status, added) = oauth_call(&portal, "bizproc.robot.add", token, rule(&handler)).await;
    assert_eq!(
        (status, added["result"].clone()),
        (200, json!(true)),
        "{added}"
    );
    let (_, listed) = oauth_call(&portal, "bizproc.robot.list", token, json!({})).await;
    assert_eq!(listed["result"], json!(["transfer_deal"]));
    let robots = portal.admin().app_robots();
    assert_eq!(robots[0].name["en"], "Transfer deal");
    assert!(robots[0].use_subscription);
    assert_eq!(robots[0].document_type, ["crm", "CCrmDocumentDeal", "DEAL"]);
    assert_eq!(robots[0].return_properties.len(), 3);

    let cases = [
        (
            rule(&handler),
            "ERROR_ACTIVITY_ALREADY_INSTALLED",
            "Activity or Automation rule already installed!",
        ),
        (
            with(rule(&handler), "CODE", json!("")),
            "ERROR_ACTIVITY_VALIDATION_FAILURE",
            "Empty activity code!",
        ),
        (
            with(rule(&handler), "CODE", json!("bad code!")),
            "ERROR_ACTIVITY_VALIDATION_FAILURE",
            "Wrong activity code!",
        ),
        (
            with(
                with(rule(&handler), "CODE", json!("b")),
                "HANDLER",
                json!("http://127.0.0.2:1/robot"),
            ),
            "ERROR_WRONG_HANDLER_URL",
            "Wrong handler URL",
        ),
        (
            with(
                with(rule(&handler), "CODE", json!("b")),
                "HANDLER",
                json!("ftp://127.0.0.1/robot"),
            ),
            "ERROR_UNSUPPORTED_PROTOCOL",
            "Unsupported handler protocol",
        ),
        (
            with(with(rule(&handler), "CODE", json!("b")), "NAME", json!("")),
            "ERROR_ACTIVITY_VALIDATION_FAILURE",
            "Empty activity NAME!",
        ),
        (
            with(
                with(rule(&handler), "CODE", json!("b")),
                "PROPERTIES",
                json!({"1route": {"Name": "R"}}),
            ),
            "ERROR_ACTIVITY_VALIDATION_FAILURE",
            "Wrong property key 1route!",
        ),
        (
            with(
                with(rule(&handler), "CODE", json!("b")),
                "RETURN_PROPERTIES",
                json!({"status": {"Type": "string"}}),
            ),
            "ERROR_ACTIVITY_VALIDATION_FAILURE",
            "Empty property NAME status!",
        ),
        (
            with(
                with(rule(&handler), "CODE", json!("b")),
                "PROPERTIES",
                json!("route"),
            ),
            "ERROR_ACTIVITY_VALIDATION_FAILURE",
            "Wrong properties array!",
        ),
        (
            with(
                with(rule(&handler), "CODE", json!("b")),
                "DOCUMENT_TYPE",
                json!(["crm", "Deal"]),
            ),
            "ERROR_ACTIVITY_VALIDATION_FAILURE",
            "Wrong activity DOCUMENT_TYPE!",
        ),
        (
            json!({}),
            "ERROR_ACTIVITY_VALIDATION_FAILURE",
            "Empty data!",
        ),
    ];
    for (params, code, description) in cases {
        let (status, refused) = oauth_call(&portal, "bizproc.robot.add", token, params).await;
        assert_eq!(
            (
                status,
                refused["error"].as_str(),
                refused["error_description"].as_str()
            ),
            (400, Some(code), Some(description))
        );
    }

    let (status, updated) = oauth_call(
        &portal,
        "bizproc.robot.update",
        token,
        json!({"CODE": "transfer_deal", "FIELDS": {"NAME": "Copy deal", "USE_SUBSCRIPTION": "N"}}),
    )
    .await;
    assert_eq!((status, updated["result"].clone()), (200, json!(true)));
    let robot = &portal.admin().app_robots()[0];
    assert_eq!(
        (robot.name.clone(), robot.use_subscription),
        (json!("Copy deal"), false)
    );
    let (_, nothing) = oauth_call(
        &portal,
        "bizproc.robot.update",
        token,
        json!({"CODE": "transfer_deal", "FIELDS": {}}),
    )
    .await;
    assert_eq!(nothing["error_description"], "No fields to update");
    let (_, missing) = oauth_call(
        &portal,
        "bizproc.robot.update",
        token,
        json!({"CODE": "nope", "FIELDS": {"NAME": "x"}}),
    )
    .await;
    assert_eq!(missing["error"], "ERROR_ACTIVITY_NOT_FOUND");

    let (status, deleted) = oauth_call(
        &portal,
        "bizproc.robot.delete",
        token,
        json!({"CODE": "transfer_deal"}),
    )
    .await;
    assert_eq!((status, deleted["result"].clone()), (200, json!(true)));
    let (_, listed) = oauth_call(&portal, "bizproc.robot.list", token, json!({})).await;
    assert_eq!(listed["result"], json!([]));
    let (status, again) = oauth_call(
        &portal,
        "bizproc.robot.delete",
        token,
        json!({"CODE": "transfer_deal"}),
    )
    .await;
    assert_eq!(
        (status, again["error"].as_str()),
        (400, Some("ERROR_ACTIVITY_NOT_FOUND"))
    );
    portal.shutdown().await;
    receiver.stop();
}

#[tokio::test]
async fn a_rule_run_posts_the_exact_payload_and_event_send_answers_the_workflow() {
    b24_testkit::install_crypto_provider();
    let receiver = Receiver::start().await;
    let (portal, installed) = installed(&receiver).await;
    let token = installed.tokens.access_token.clone();
    oauth_call(
        &portal,
        "bizproc.robot.add",
        &token,
        rule(&receiver.url("/robot?k=1")),
    )
    .await;
    let (_, deal) = oauth_call(
        &portal,
        "crm.item.add",
        &token,
        json!({"entityTypeId": 2, "fields": {"title": "D"}}),
    )
    .await;
    let deal_id = deal["result"]["item"]["id"].as_i64().unwrap();

    let admin = portal.admin();
    let workflow_id = admin
        .run_robot("transfer_deal", deal_id, properties("wholesale"))
        .unwrap();
    let got = receiver.wait_for(2).await;
    let run = got
        .iter()
        .find(|r| r.path_and_query == "/robot?k=1")
        .expect("rule called");
    assert_eq!(run.content_type, "application/x-www-form-urlencoded");
    let form = parse_form(&run.body);
    let top: Vec<&str> = form
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        top,
        [
            "workflow_id",
            "code",
            "document_id",
            "document_type",
            "event_token",
            "properties",
            "use_subscription",
            "timeout_duration",
            "ts",
            "auth"
        ]
    );
    assert_eq!(form["workflow_id"], workflow_id.as_str());
    assert_eq!(form["code"], "transfer_deal");
    assert_eq!(
        form["document_id"],
        json!(["crm", "CCrmDocumentDeal", format!("DEAL_{deal_id}")])
    );
    assert_eq!(
        form["document_type"],
        json!(["crm", "CCrmDocumentDeal", "DEAL"])
    );
    assert_eq!(form["properties"], json!({"route": "wholesale"}));
    assert_eq!(form["use_subscription"], "Y");
    let event_token = form["event_token"].as_str().unwrap().to_string();
    assert_eq!(event_token.split('|').nth(1), Some(workflow_id.as_str()));
    let auth = &form["auth"];
    assert_eq!(
        auth["application_token"],
        installed.application_token.as_str()
    );
    assert_eq!(auth["client_endpoint"], portal.rest_url().as_str());
    assert_eq!(auth["user_id"], "1");
    // The run's access token is a real one.
    let run_token = auth["access_token"].as_str().unwrap();
    let (status, _) = oauth_call(&portal, "scope", run_token, json!({})).await;
    assert_eq!(status, 200);
    assert!(
        admin
            .robot_run(&workflow_id)
            .unwrap()
            .return_values
            .is_none()
    );

    let answer = json!({"EVENT_TOKEN": event_token,
        "RETURN_VALUES": {"targetDealId": "77", "status": "done", "message": "copied"},
        "LOG_MESSAGE": "Deal copied to target #77"});
    let (status, sent) = oauth_call(&portal, "bizproc.event.send", run_token, answer.clone()).await;
    assert_eq!(
        (status, sent["result"].clone()),
        (200, json!(true)),
        "{sent}"
    );
    let answered = admin
        .wait_for_robot_answer(&workflow_id, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(answered.return_values.unwrap()["targetDealId"], "77");
    assert_eq!(
        answered.log_message.as_deref(),
        Some("Deal copied to target #77")
    );
    assert_eq!(answered.deal_id, deal_id);

    let (status, twice) = oauth_call(&portal, "bizproc.event.send", &token, answer).await;
    assert_eq!(
        (
            status,
            twice["error"].as_str(),
            twice["error_description"].as_str()
        ),
        (403, Some("ACCESS_DENIED"), Some("Access denied!"))
    );
    let forged = json!({"EVENT_TOKEN": format!("x|{workflow_id}|y"), "RETURN_VALUES": {}});
    let (status, _) = oauth_call(&portal, "bizproc.event.send", &token, forged).await;
    assert_eq!(status, 403);

    // A forged call: same shape, another application token, dead tokens.
    let forged = admin
        .run_robot_forged("transfer_deal", deal_id, properties("wholesale"), "f0rged")
        .unwrap();
    let got = receiver.wait_for(3).await;
    let form = parse_form(&got[2].body);
    assert_eq!(form["workflow_id"], forged.as_str());
    assert_eq!(form["auth"]["application_token"], "f0rged");
    let forged_token = form["auth"]["access_token"].as_str().unwrap();
    let (status, _) = oauth_call(&portal, "scope", forged_token, json!({})).await;
    assert_eq!(status, 401);

    // Over HTTP too.
    let http = common::client();
    let run: Value = http
        .get(format!(
            "{}/_emulator/robot-runs/{workflow_id}",
            portal.url()
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(run["returnValues"]["status"], "done");
    assert!(
        run.get("eventToken").is_none(),
        "tokens stay out of the admin API"
    );
    portal.shutdown().await;
    receiver.stop();
}

#[tokio::test]
async fn a_placed_rule_runs_when_a_deal_enters_its_stage_and_no_subscription_means_no_answer() {
    b24_testkit::install_crypto_provider();
    let receiver = Receiver::start().await;
    let (portal, installed) = installed(&receiver).await;
    let token = installed.tokens.access_token.clone();
    let no_wait = with(
        rule(&receiver.url("/robot")),
        "USE_SUBSCRIPTION",
        json!("N"),
    );
    oauth_call(&portal, "bizproc.robot.add", &token, no_wait).await;
    let http = common::client();
    let placed = http
        .post(format!(
            "{}/_emulator/app/robots/transfer_deal/place",
            portal.url()
        ))
        .json(&json!({"stageId": "WON", "properties": {"route": "retail"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(placed.status().as_u16(), 200);
    assert!(portal.admin().run_robot("unknown", 1, Map::new()).is_err());

    oauth_call(
        &portal,
        "crm.item.add",
        &token,
        json!({"entityTypeId": 2, "fields": {"stageId": "WON"}}),
    )
    .await;
    let got = receiver.wait_for(2).await;
    let form = parse_form(&got[1].body);
    assert_eq!(
        (form["code"].as_str(), form["use_subscription"].as_str()),
        (Some("transfer_deal"), Some("N"))
    );
    assert_eq!(form["properties"]["route"], "retail");
    let answer = json!({"event_token": form["event_token"], "return_values": {"status": "done"}});
    let (status, refused) = oauth_call(&portal, "bizproc.event.send", &token, answer).await;
    assert_eq!(
        (status, refused["error"].as_str()),
        (403, Some("ACCESS_DENIED"))
    );
    portal.shutdown().await;
    receiver.stop();
}

#[tokio::test]
async fn event_bind_delivers_deal_events_with_the_application_token() {
    b24_testkit::install_crypto_provider();
    let receiver = Receiver::start().await;
    let (portal, installed) = installed(&receiver).await;
    let token = installed.tokens.access_token.clone();
    let handler = receiver.url("/events");

    let (status, _) = call(
        &portal,
        "event.bind",
        json!({"event": "ONCRMDEALADD", "handler": handler}),
    )
    .await;
    assert_eq!(status, 403, "webhooks cannot bind");
    let bind = json!({"event": "onCrmDealAdd", "handler": handler});
    let (status, bound) = oauth_call(&portal, "event.bind", &token, bind.clone()).await;
    assert_eq!((status, bound["result"].clone()), (200, json!(true)));
    let (_, twice) = oauth_call(&portal, "event.bind", &token, bind.clone()).await;
    assert_eq!(twice["error_description"], "Handler already binded");
    let (status, unknown) = oauth_call(
        &portal,
        "event.bind",
        &token,
        json!({"event": "ONNOTHING", "handler": handler}),
    )
    .await;
    assert_eq!(
        (status, unknown["error"].as_str()),
        (400, Some("ERROR_EVENT_NOT_FOUND"))
    );
    let (_, listed) = oauth_call(&portal, "event.get", &token, json!({})).await;
    assert_eq!(
        listed["result"],
        json!([{"event": "ONCRMDEALADD", "handler": handler, "auth_type": "0", "offline": 0}])
    );

    oauth_call(
        &portal,
        "crm.item.add",
        &token,
        json!({"entityTypeId": 2, "fields": {}}),
    )
    .await;
    let got = receiver.wait_for(2).await;
    let event = parse_form(&got[1].body);
    assert_eq!(event["event"], "ONCRMDEALADD");
    assert_eq!(
        event["auth"]["application_token"],
        installed.application_token.as_str()
    );

    let (_, unbound) = oauth_call(&portal, "event.unbind", &token, bind).await;
    assert_eq!(unbound["result"], json!({"count": 1}));
    oauth_call(
        &portal,
        "crm.item.add",
        &token,
        json!({"entityTypeId": 2, "fields": {}}),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        receiver.received.lock().unwrap().len(),
        2,
        "no event after unbind"
    );
    portal.shutdown().await;
    receiver.stop();
}
