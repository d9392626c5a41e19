//! What the relay depends on, checked against the docs or public core
//! source each behaviour cites: `url` and `crm` user fields, an unset
//! multiple field, derived product-row prices, a settable `member_id`,
//! `Content-Disposition` of downloads, and file links read over OAuth.

mod common;

use base64::Engine;
use common::{Receiver, SECRET, call, client, oauth_call};
use serde_json::json;

fn seed() -> serde_json::Value {
    json!({"userFields": [
        {"entity": "deal", "name": "UF_CRM_SITE", "type": "url"},
        {"entity": "deal", "name": "UF_CRM_PARTY", "type": "crm", "entityTypes": ["CONTACT", "COMPANY"]},
        {"entity": "deal", "name": "UF_CRM_PARTIES", "type": "crm", "multiple": true},
        {"entity": "deal", "name": "UF_CRM_TAGS", "type": "string", "multiple": true},
        {"entity": "deal", "name": "UF_CRM_DOCS", "type": "file", "multiple": true}
    ]})
}

#[tokio::test]
async fn url_and_crm_binding_fields_validate_like_the_portal() {
    b24_testkit::install_crypto_provider();
    let portal = common::portal(seed()).await;
    let (_, fields) = call(&portal, "crm.item.fields", json!({"entityTypeId": 2})).await;
    let fields = &fields["result"]["fields"];
    assert_eq!(fields["ufCrm_SITE"]["type"], "url");
    assert_eq!(fields["ufCrm_PARTY"]["type"], "crm");
    assert_eq!(
        fields["ufCrm_PARTY"]["settings"],
        json!({"LEAD": "N", "CONTACT": "Y", "COMPANY": "Y", "DEAL": "N"})
    );
    let (status, added) = call(&portal, "crm.item.add", json!({"entityTypeId": 2, "fields": {
        "ufCrm_SITE": "https://example.com/a?b=1", "ufCrm_PARTY": "co_3", "ufCrm_PARTIES": ["C_5", "D_7", "L_1"]}})).await;
    assert_eq!(status, 200, "{added}");
    let item = &added["result"]["item"];
    assert_eq!(item["ufCrm_SITE"], "https://example.com/a?b=1");
    assert_eq!(item["ufCrm_PARTY"], "CO_3");
    assert_eq!(item["ufCrm_PARTIES"], json!(["C_5", "D_7", "L_1"]));
    for wrong in ["D_7", "5", "C_x", "X_5"] {
        let (status, refused) = call(
            &portal,
            "crm.item.add",
            json!({"entityTypeId": 2, "fields": {"ufCrm_PARTY": wrong}}),
        )
        .await;
        assert_eq!(
            (status, refused["error"].as_str()),
            (400, Some("CRM_FIELD_ERROR_VALUE_NOT_VALID")),
            "{wrong}: {refused}"
        );
    }
    portal.shutdown().await;
}

#[tokio::test]
async fn an_unset_multiple_field_reads_as_an_empty_list() {
    b24_testkit::install_crypto_provider();
    let portal = common::portal(seed()).await;
    let (_, added) = call(
        &portal,
        "crm.item.add",
        json!({"entityTypeId": 2, "fields": {"title": "No tags"}}),
    )
    .await;
    let item = &added["result"]["item"];
    for field in ["ufCrm_TAGS", "ufCrm_PARTIES", "ufCrm_DOCS", "contactIds"] {
        assert_eq!(item[field], json!([]), "{field}: {item}");
    }
    assert_eq!(item["ufCrm_SITE"], json!(null));
    let id = item["id"].as_i64().unwrap();
    call(
        &portal,
        "crm.item.update",
        json!({"entityTypeId": 2, "id": id, "fields": {"ufCrm_TAGS": ["a", "b"]}}),
    )
    .await;
    let (_, cleared) = call(
        &portal,
        "crm.item.update",
        json!({"entityTypeId": 2, "id": id, "fields": {"ufCrm_TAGS": []}}),
    )
    .await;
    assert_eq!(cleared["result"]["item"]["ufCrm_TAGS"], json!([]));
    let (status, refused) = call(
        &portal,
        "crm.item.update",
        json!({"entityTypeId": 2, "id": id, "fields": {"ufCrm_TAGS": ""}}),
    )
    .await;
    assert_eq!((status, refused["error"].as_str()), (400, Some("100")));
    portal.shutdown().await;
}

#[tokio::test]
async fn product_rows_carry_the_prices_derived_from_discount_and_tax() {
    b24_testkit::install_crypto_provider();
    let portal = common::portal(json!({})).await;
    let (_, deal) = call(
        &portal,
        "crm.item.add",
        json!({"entityTypeId": 2, "fields": {}}),
    )
    .await;
    let id = deal["result"]["item"]["id"].as_i64().unwrap();
    let (_, set) = call(&portal, "crm.item.productrow.set", json!({"ownerType": "D", "ownerId": id, "productRows": [
        {"productName": "iphone 14", "price": 80000, "quantity": 2, "discountTypeId": 2, "discountRate": 20, "taxRate": 20, "taxIncluded": "Y"}
    ]})).await;
    let row = &set["result"]["productRows"][0];
    assert_eq!(row["priceExclusive"], json!(66666.67));
    assert_eq!(row["priceNetto"], json!(83333.34));
    assert_eq!(row["priceBrutto"], json!(100000.01));
    assert_eq!(row["discountSum"], json!(16666.67));
    portal.shutdown().await;
}

#[tokio::test]
async fn member_id_is_settable_and_downloads_name_files_like_the_portal() {
    b24_testkit::install_crypto_provider();
    let portal = b24_emulator::Portal::builder()
        .webhook(1, SECRET, &["crm"])
        .member_id("a223c6b3710f85df22e9377d6c4f7553")
        .seed(seed())
        .start()
        .await
        .unwrap();
    assert_eq!(portal.member_id(), "a223c6b3710f85df22e9377d6c4f7553");
    let encoded = base64::engine::general_purpose::STANDARD.encode(b"contract");
    let (_, added) = call(
        &portal,
        "crm.item.add",
        json!({"entityTypeId": 2, "fields": {"ufCrm_DOCS": [["Договор №42.pdf", encoded]]}}),
    )
    .await;
    let link = added["result"]["item"]["ufCrm_DOCS"][0]["urlMachine"]
        .as_str()
        .unwrap()
        .to_owned();
    let response = client().get(link).send().await.unwrap();
    let disposition = response.headers()["content-disposition"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        disposition,
        "attachment; filename=\"dogovor-_42.pdf\"; filename*=utf-8''%D0%94%D0%BE%D0%B3%D0%BE%D0%B2%D0%BE%D1%80%20%E2%84%9642.pdf"
    );
    portal.shutdown().await;
}

#[tokio::test]
async fn file_links_read_over_oauth_carry_the_access_token() {
    b24_testkit::install_crypto_provider();
    let receiver = Receiver::start().await;
    let portal = b24_emulator::Portal::builder()
        .webhook(1, SECRET, &["crm"])
        .application(common::CLIENT_ID, common::CLIENT_SECRET, &["crm"])
        .seed(seed())
        .start()
        .await
        .unwrap();
    portal
        .admin()
        .install_application(&receiver.url("/app/install/source"))
        .await
        .unwrap();
    let token = portal.admin().latest_tokens().unwrap().access_token;
    let encoded = base64::engine::general_purpose::STANDARD.encode(b"offer");
    let (_, added) = oauth_call(
        &portal,
        "crm.item.add",
        &token,
        json!({"entityTypeId": 2, "fields": {"ufCrm_DOCS": [["offer.pdf", encoded]]}}),
    )
    .await;
    let link = added["result"]["item"]["ufCrm_DOCS"][0]["urlMachine"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(link.ends_with(&format!("&auth={token}")), "{link}");
    let got = client().get(&link).send().await.unwrap();
    assert_eq!(got.status().as_u16(), 200);
    assert_eq!(got.bytes().await.unwrap().as_ref(), b"offer");
    // Without a token, or with an expired one, the link does not work.
    let bare = link.replace(&format!("&auth={token}"), "");
    assert_eq!(
        client().get(&bare).send().await.unwrap().status().as_u16(),
        401
    );
    portal.admin().expire_access_tokens().unwrap();
    let expired = client().get(&link).send().await.unwrap();
    assert_eq!(expired.status().as_u16(), 401);
    let body: serde_json::Value = expired.json().await.unwrap();
    assert_eq!(body["error"], "expired_token");
    receiver.stop();
    portal.shutdown().await;
}
