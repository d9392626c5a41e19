//! CRM data rules over real loopback sockets: portal-specific list options,
//! files, multifields and duplicates, product rows, statuses, pipelines,
//! timeline comments, users and notifications.

mod common;

use base64::Engine;
use common::{SECRET, call, client, portal};
use serde_json::json;

#[tokio::test]
async fn list_fields_carry_portal_specific_option_ids() {
    b24_testkit::install_crypto_provider();
    let uf = |ids: [i64; 2]| {
        json!({"userFields": [{"entity": "deal", "name": "UF_CRM_COLOR", "type": "enumeration", "title": "Color",
        "options": [{"id": ids[0], "value": "Red"}, {"id": ids[1], "value": "Blue"}]}]})
    };
    let source = portal(uf([45, 46])).await;
    let target = portal(uf([101, 102])).await;
    let (_, fields) = call(&target, "crm.item.fields", json!({"entityTypeId": 2})).await;
    let color = &fields["result"]["fields"]["ufCrm_COLOR"];
    assert_eq!(color["upperName"], "UF_CRM_COLOR");
    assert_eq!(
        color["items"],
        json!([{"ID": "101", "VALUE": "Red"}, {"ID": "102", "VALUE": "Blue"}])
    );
    let (status, _) = call(
        &source,
        "crm.item.add",
        json!({"entityTypeId": 2, "fields": {"ufCrm_COLOR": 45}}),
    )
    .await;
    assert_eq!(status, 200);
    let (status, legacy) = call(
        &target,
        "crm.deal.add",
        json!({"fields": {"UF_CRM_COLOR": 45}}),
    )
    .await;
    assert_eq!(
        (status, legacy["error"].as_str()),
        (400, Some("")),
        "the deprecated API answers with an empty code: {legacy}"
    );
    let (status, scalar) = call(
        &target,
        "crm.item.add",
        json!({"entityTypeId": 2, "fields": {"contactIds": 5}}),
    )
    .await;
    assert_eq!(
        (status, scalar["error"].as_str()),
        (400, Some("100")),
        "a multiple field needs a list: {scalar}"
    );
    let (status, wrong) = call(
        &target,
        "crm.item.add",
        json!({"entityTypeId": 2, "fields": {"ufCrm_COLOR": 45}}),
    )
    .await;
    assert_eq!(
        (status, wrong["error"].as_str()),
        (400, Some("CRM_FIELD_ERROR_VALUE_NOT_VALID")),
        "a source option id is not valid on the target"
    );
    source.shutdown().await;
    target.shutdown().await;
}

#[tokio::test]
async fn files_upload_as_base64_and_download_with_the_webhook() {
    b24_testkit::install_crypto_provider();
    let portal = portal(json!({"userFields": [{"entity": "deal", "name": "UF_CRM_DOCS", "type": "file", "multiple": true}]})).await;
    let content = b"%PDF-1.4 emulated";
    let encoded = base64::engine::general_purpose::STANDARD.encode(content);
    let (_, added) = call(&portal, "crm.item.add", json!({"entityTypeId": 2, "fields": {"ufCrm_DOCS": [["contract.pdf", encoded], ["b.txt", "Yg=="]]}})).await;
    let files = added["result"]["item"]["ufCrm_DOCS"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(files.len(), 2);
    let machine = files[0]["urlMachine"].as_str().unwrap();
    let downloaded = client().get(machine).send().await.unwrap();
    assert_eq!(downloaded.status().as_u16(), 200);
    assert_eq!(downloaded.bytes().await.unwrap().as_ref(), content);
    let forged = machine.replace(SECRET, "wrong");
    assert_eq!(
        client().get(forged).send().await.unwrap().status().as_u16(),
        401
    );

    let id = added["result"]["item"]["id"].as_i64().unwrap();
    let keep_second =
        json!({"entityTypeId": 2, "id": id, "fields": {"ufCrm_DOCS": [{"id": files[1]["id"]}]}});
    let (_, updated) = call(&portal, "crm.item.update", keep_second).await;
    assert_eq!(
        updated["result"]["item"]["ufCrm_DOCS"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        client()
            .get(machine)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16(),
        400,
        "omitted file was deleted"
    );

    let (_, legacy) = call(&portal, "crm.deal.get", json!({"id": id})).await;
    assert!(legacy["result"]["UF_CRM_DOCS"][0]["downloadUrl"].is_string());
    portal.shutdown().await;
}

#[tokio::test]
async fn multifields_append_without_row_id_and_duplicates_are_found() {
    b24_testkit::install_crypto_provider();
    let portal = portal(json!({})).await;
    let (_, added) = call(&portal, "crm.contact.add", json!({"fields": {"NAME": "Ann", "PHONE": [{"VALUE": "+1 (555) 010-20", "VALUE_TYPE": "WORK"}], "EMAIL": [{"VALUE": "Ann@Example.com", "VALUE_TYPE": "WORK"}]}})).await;
    let id = added["result"].as_i64().unwrap();
    call(&portal, "crm.contact.update", json!({"id": id, "fields": {"PHONE": [{"VALUE": "+1 (555) 010-20", "VALUE_TYPE": "WORK"}]}})).await;
    let (_, got) = call(&portal, "crm.contact.get", json!({"id": id})).await;
    let phones = got["result"]["PHONE"].as_array().unwrap();
    assert_eq!(phones.len(), 2, "resending without ID appended a row");
    assert_eq!(phones[0]["VALUE_TYPE"], "WORK");
    let row_id = phones[1]["ID"].clone();
    call(
        &portal,
        "crm.contact.update",
        json!({"id": id, "fields": {"PHONE": [{"ID": row_id, "VALUE": ""}]}}),
    )
    .await;
    let (_, got) = call(&portal, "crm.contact.get", json!({"id": id})).await;
    assert_eq!(got["result"]["PHONE"].as_array().unwrap().len(), 1);

    let (_, dup) = call(
        &portal,
        "crm.duplicate.findbycomm",
        json!({"entity_type": "CONTACT", "type": "PHONE", "values": ["+15550102 0"]}),
    )
    .await;
    assert_eq!(dup["result"], json!({"CONTACT": [id]}));
    let (_, by_email) = call(
        &portal,
        "crm.duplicate.findbycomm",
        json!({"type": "EMAIL", "values": ["ann@example.com"]}),
    )
    .await;
    assert_eq!(by_email["result"]["CONTACT"], json!([id]));
    let (_, none) = call(
        &portal,
        "crm.duplicate.findbycomm",
        json!({"type": "EMAIL", "values": ["nobody@example.com"]}),
    )
    .await;
    assert_eq!(none["result"], json!([]));
    let (_, listed) = call(
        &portal,
        "crm.contact.list",
        json!({"filter": {"EMAIL": "ann@example.com"}, "select": ["ID", "EMAIL"]}),
    )
    .await;
    assert_eq!(listed["result"][0]["ID"], id.to_string());
    assert_eq!(listed["result"][0]["EMAIL"][0]["VALUE"], "Ann@Example.com");
    let (_, nobody) = call(
        &portal,
        "crm.contact.list",
        json!({"filter": {"PHONE": "+0"}}),
    )
    .await;
    assert_eq!(nobody["total"], 0);
    let (status, untyped) = call(
        &portal,
        "crm.duplicate.findbycomm",
        json!({"values": ["x"]}),
    )
    .await;
    assert_eq!(
        (status, untyped["error"].as_str()),
        (400, Some("Communication type is not defined"))
    );
    let (_, item) = call(
        &portal,
        "crm.item.get",
        json!({"entityTypeId": 3, "id": id}),
    )
    .await;
    assert_eq!(item["result"]["item"]["fm"].as_array().unwrap().len(), 2);
    portal.shutdown().await;
}

#[tokio::test]
async fn product_rows_replace_and_set_the_amount() {
    b24_testkit::install_crypto_provider();
    let portal = portal(json!({})).await;
    let (_, added) = call(
        &portal,
        "crm.item.add",
        json!({"entityTypeId": 2, "fields": {"title": "P"}}),
    )
    .await;
    let id = added["result"]["item"]["id"].as_i64().unwrap();
    let rows = json!({"ownerType": "D", "ownerId": id, "productRows": [{"productName": "A", "price": 100, "quantity": 2}, {"productName": "B", "price": 50.5, "quantity": 1}]});
    let (status, set) = call(&portal, "crm.item.productrow.set", rows).await;
    assert_eq!(status, 200, "{set}");
    assert_eq!(set["result"]["productRows"].as_array().unwrap().len(), 2);
    let (_, listed) = call(
        &portal,
        "crm.item.productrow.list",
        json!({"filter": {"=ownerType": "D", "=ownerId": id}}),
    )
    .await;
    assert_eq!(listed["result"]["productRows"][1]["productName"], "B");
    let (_, deal) = call(
        &portal,
        "crm.item.get",
        json!({"entityTypeId": 2, "id": id}),
    )
    .await;
    assert_eq!(deal["result"]["item"]["opportunity"], 250.5);
    call(
        &portal,
        "crm.deal.productrows.set",
        json!({"id": id, "rows": [{"PRODUCT_NAME": "C", "PRICE": 10, "QUANTITY": 3}]}),
    )
    .await;
    let (_, legacy) = call(&portal, "crm.deal.productrows.get", json!({"id": id})).await;
    let rows = legacy["result"].as_array().unwrap();
    assert_eq!(
        (rows.len(), rows[0]["PRODUCT_NAME"].as_str()),
        (1, Some("C")),
        "set replaces all rows"
    );
    portal.shutdown().await;
}

#[tokio::test]
async fn statuses_categories_comments_users_and_notifications() {
    b24_testkit::install_crypto_provider();
    let portal = portal(json!({
        "pipelines": [{"id": 5, "name": "Wholesale", "stages": [{"id": "C5:NEW", "name": "New"}, {"id": "C5:WON", "name": "Won", "semantics": "S"}]}],
        "users": [{"id": 1, "name": "Admin", "email": "admin@example.com"}, {"id": 7, "name": "Eve", "email": "eve@example.com"}]
    })).await;
    let (_, stages) = call(
        &portal,
        "crm.status.list",
        json!({"filter": {"ENTITY_ID": "DEAL_STAGE_5"}}),
    )
    .await;
    let ids: Vec<&str> = stages["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["STATUS_ID"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec!["C5:NEW", "C5:WON"]);
    assert_eq!(stages["result"][1]["SEMANTICS"], "S");
    let (_, categories) = call(&portal, "crm.category.list", json!({"entityTypeId": 2})).await;
    assert_eq!(categories["result"]["categories"][1]["id"], 5);

    let (_, deal) = call(
        &portal,
        "crm.item.add",
        json!({"entityTypeId": 2, "fields": {}}),
    )
    .await;
    let id = deal["result"]["item"]["id"].as_i64().unwrap();
    let (_, comment) = call(
        &portal,
        "crm.timeline.comment.add",
        json!({"fields": {"ENTITY_ID": id, "ENTITY_TYPE": "deal", "COMMENT": "Copied as deal 9"}}),
    )
    .await;
    assert!(comment["result"].as_i64().is_some());
    let (_, comments) = call(
        &portal,
        "crm.timeline.comment.list",
        json!({"filter": {"ENTITY_ID": id, "ENTITY_TYPE": "deal"}}),
    )
    .await;
    assert_eq!(comments["result"][0]["COMMENT"], "Copied as deal 9");
    let (status, _) = call(
        &portal,
        "crm.timeline.comment.add",
        json!({"fields": {"ENTITY_ID": 999, "ENTITY_TYPE": "deal", "COMMENT": "x"}}),
    )
    .await;
    assert_eq!(status, 400);

    let (_, users) = call(&portal, "user.get", json!({"EMAIL": "eve@example.com"})).await;
    assert_eq!(users["result"][0]["ID"], "7");
    assert_eq!(users["total"], 1);
    let (_, notified) = call(
        &portal,
        "im.notify",
        json!({"to": 7, "message": "Deal failed to copy"}),
    )
    .await;
    assert!(notified["result"].as_i64().is_some());
    assert_eq!(
        portal.admin().notifications()[0]["message"],
        "Deal failed to copy"
    );
    portal.shutdown().await;
}
