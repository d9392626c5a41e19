//! Application mode, OAuth side: the install call (ONAPPINSTALL payload),
//! REST over `auth=ACCESS_TOKEN`, token expiry, and the authorization
//! server's refresh (rotation, `invalid_grant`, `invalid_client`,
//! `wrong_client`).

mod common;

use std::time::Duration;

use common::{
    CLIENT_ID, CLIENT_SECRET, Receiver, app_portal, client, oauth_call, parse_form, refresh_pairs,
    token_request,
};
use serde_json::{Value, json};

#[tokio::test]
async fn install_posts_the_onappinstall_form_and_issues_working_tokens() {
    b24_testkit::install_crypto_provider();
    let receiver = Receiver::start().await;
    let portal = app_portal().await;
    let installed = portal
        .admin()
        .install_application(&receiver.url("/app/install/source"))
        .await
        .unwrap();
    assert_eq!(installed.delivery.status, Some(200));

    let got = receiver.wait_for(1).await;
    assert_eq!(got[0].path_and_query, "/app/install/source");
    assert_eq!(got[0].content_type, "application/x-www-form-urlencoded");
    assert!(
        got[0]
            .body
            .starts_with("event=ONAPPINSTALL&event_handler_id=1&data[VERSION]=1&data[ACTIVE]=Y&"),
        "{}",
        got[0].body
    );
    let form = parse_form(&got[0].body);
    assert_eq!(
        form["data"],
        json!({"VERSION": "1", "ACTIVE": "Y", "INSTALLED": "Y", "LANGUAGE_ID": "ru"})
    );
    assert!(form["ts"].as_str().unwrap().parse::<i64>().is_ok());
    let auth = &form["auth"];
    let keys: Vec<&str> = auth
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        [
            "access_token",
            "expires",
            "expires_in",
            "scope",
            "domain",
            "server_endpoint",
            "status",
            "client_endpoint",
            "member_id",
            "user_id",
            "refresh_token",
            "application_token"
        ]
    );
    assert_eq!(auth["access_token"], installed.tokens.access_token.as_str());
    assert_eq!(
        auth["refresh_token"],
        installed.tokens.refresh_token.as_str()
    );
    assert_eq!(
        auth["application_token"],
        installed.application_token.as_str()
    );
    assert_eq!(auth["expires_in"], "3600");
    assert_eq!(auth["scope"], "crm,bizproc,user");
    assert_eq!(auth["domain"], "source.test");
    assert_eq!(auth["status"], "L");
    assert_eq!(auth["user_id"], "1");
    assert_eq!(auth["client_endpoint"], portal.rest_url().as_str());
    assert_eq!(auth["member_id"].as_str().unwrap().len(), 32);

    // The access token works at client_endpoint.
    let token = auth["access_token"].as_str().unwrap();
    let (status, scope) = oauth_call(&portal, "scope", token, json!({})).await;
    assert_eq!(
        (status, scope["result"].clone()),
        (200, json!(["crm", "bizproc", "user"]))
    );
    let status = portal.admin().application_status().unwrap();
    assert!(status.installed);
    // Debug output of what install returned shows no token.
    let shown = format!("{installed:?}");
    for secret in [
        installed.tokens.access_token.as_str(),
        installed.tokens.refresh_token.as_str(),
        installed.application_token.as_str(),
    ] {
        assert!(!shown.contains(secret), "{shown}");
    }
    portal.shutdown().await;
    receiver.stop();
}

#[tokio::test]
async fn rest_over_oauth_checks_token_scope_and_accepts_auth_in_the_body() {
    b24_testkit::install_crypto_provider();
    let receiver = Receiver::start().await;
    let portal = app_portal().await;
    let installed = portal
        .admin()
        .install_application(&receiver.url("/install"))
        .await
        .unwrap();
    let token = installed.tokens.access_token.clone();

    let (status, added) = oauth_call(
        &portal,
        "crm.item.add",
        &token,
        json!({"entityTypeId": 2, "fields": {"title": "By app"}}),
    )
    .await;
    assert_eq!(status, 200, "{added}");
    let id = added["result"]["item"]["id"].as_i64().unwrap();

    // `auth` in a form body, with `.json` on the method.
    let body = b24_phpform::encode(&json!({"auth": token, "entityTypeId": 2, "id": id}));
    let response = client()
        .post(format!("{}crm.item.get.json", portal.rest_url()))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let got: Value = response.json().await.unwrap();
    assert_eq!(got["result"]["item"]["title"], "By app");

    // A scope the application was not granted.
    let (status, refused) = oauth_call(&portal, "im.notify", &token, json!({"to": 1})).await;
    assert_eq!(
        (status, refused["error"].as_str()),
        (403, Some("insufficient_scope"))
    );
    // Unknown token, and none at all.
    let (status, unknown) = oauth_call(&portal, "scope", "0123abcd", json!({})).await;
    assert_eq!(
        (status, unknown["error"].as_str()),
        (401, Some("invalid_token"))
    );
    let response = client()
        .post(format!("{}scope", portal.rest_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 401);
    let none: Value = response.json().await.unwrap();
    assert_eq!(none["error"], "NO_AUTH_FOUND");
    portal.shutdown().await;
    receiver.stop();
}

#[tokio::test]
async fn expired_tokens_get_expired_token_until_refreshed_and_refresh_rotates() {
    b24_testkit::install_crypto_provider();
    let receiver = Receiver::start().await;
    let portal = app_portal().await;
    let admin = portal.admin();
    let installed = admin
        .install_application(&receiver.url("/install"))
        .await
        .unwrap();
    let first = installed.tokens;
    assert!(admin.expire_access_tokens().unwrap() >= 1);

    let (status, expired) = oauth_call(&portal, "scope", &first.access_token, json!({})).await;
    assert_eq!(status, 401);
    assert_eq!(
        expired,
        json!({"error": "expired_token", "error_description": "The access token provided has expired."})
    );

    let (status, fresh) = token_request(&portal, &refresh_pairs(&first.refresh_token)).await;
    assert_eq!(status, 200, "{fresh}");
    let keys: Vec<&str> = fresh
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        [
            "access_token",
            "expires",
            "expires_in",
            "scope",
            "domain",
            "server_endpoint",
            "status",
            "client_endpoint",
            "member_id",
            "user_id",
            "refresh_token"
        ]
    );
    assert_eq!(fresh["expires_in"], 3600);
    assert_eq!(fresh["domain"], "oauth.bitrix.info");
    assert_eq!(fresh["client_endpoint"], portal.rest_url().as_str());
    assert_eq!(fresh["user_id"], 1);
    let new_access = fresh["access_token"].as_str().unwrap();
    let new_refresh = fresh["refresh_token"].as_str().unwrap();
    assert_ne!(new_access, first.access_token);
    assert_ne!(new_refresh, first.refresh_token);
    let (status, _) = oauth_call(&portal, "scope", new_access, json!({})).await;
    assert_eq!(status, 200);
    assert_eq!(admin.refresh_count(), 1);

    // The used refresh token is gone.
    let (status, reused) = token_request(&portal, &refresh_pairs(&first.refresh_token)).await;
    assert_eq!(
        (status, reused["error"].as_str()),
        (400, Some("invalid_grant"))
    );
    assert_eq!(admin.refresh_count(), 1);
    assert_eq!(admin.application_status().unwrap().refused_refreshes, 1);
    portal.shutdown().await;
    receiver.stop();
}

#[tokio::test]
async fn revoked_refresh_tokens_and_wrong_clients_are_refused() {
    b24_testkit::install_crypto_provider();
    let receiver = Receiver::start().await;
    let portal = app_portal().await;
    let admin = portal.admin();
    let installed = admin
        .install_application(&receiver.url("/install"))
        .await
        .unwrap();
    let refresh = installed.tokens.refresh_token.clone();

    let wrong_secret = [
        ("grant_type", "refresh_token"),
        ("client_id", CLIENT_ID),
        ("client_secret", "not-the-secret"),
        ("refresh_token", refresh.as_str()),
    ];
    let (status, refused) = token_request(&portal, &wrong_secret).await;
    assert_eq!(
        (status, refused["error"].as_str()),
        (400, Some("invalid_client"))
    );
    let wrong_client = [
        ("grant_type", "refresh_token"),
        ("client_id", "local.someone.else"),
        ("client_secret", CLIENT_SECRET),
        ("refresh_token", refresh.as_str()),
    ];
    let (status, refused) = token_request(&portal, &wrong_client).await;
    assert_eq!((status, refused), (200, json!({"error": "wrong_client"})));
    let (status, refused) = token_request(&portal, &refresh_pairs("")).await;
    assert_eq!(
        (status, refused["error_description"].as_str()),
        (400, Some("No \"refresh_token\" parameter found"))
    );
    let wrong_grant = [
        ("grant_type", "authorization_code"),
        ("client_id", CLIENT_ID),
        ("client_secret", CLIENT_SECRET),
    ];
    let (_, refused) = token_request(&portal, &wrong_grant).await;
    assert_eq!(refused["error"], "unsupported_grant_type");

    assert_eq!(admin.revoke_refresh_tokens().unwrap(), 1);
    let (status, refused) = token_request(&portal, &refresh_pairs(&refresh)).await;
    assert_eq!(
        (status, refused["error"].as_str()),
        (400, Some("invalid_grant"))
    );
    assert_eq!(admin.refresh_count(), 0);
    portal.shutdown().await;
    receiver.stop();
}

#[tokio::test]
async fn admin_http_endpoints_install_expire_and_count() {
    b24_testkit::install_crypto_provider();
    let receiver = Receiver::start().await;
    let portal = app_portal().await;
    let http = client();
    let admin_url = |path: &str| format!("{}/_emulator/{path}", portal.url());

    let installed: Value = http
        .post(admin_url("app/install"))
        .json(&json!({"url": receiver.url("/install")}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(installed["delivery"]["status"], 200, "{installed}");
    let token = portal.admin().latest_tokens().unwrap();

    let response = http
        .put(admin_url("app/token-lifetime"))
        .json(&json!({"secs": 60}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let expired: Value = http
        .post(admin_url("app/expire-tokens"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(expired["expired"], 1);
    let (status, _) = oauth_call(&portal, "scope", &token.access_token, json!({})).await;
    assert_eq!(status, 401);
    let (_, fresh) = token_request(&portal, &refresh_pairs(&token.refresh_token)).await;
    assert_eq!(fresh["expires_in"], 60, "the new lifetime applies");

    // Mid-run expiry: two more calls work, the third finds the token expired.
    let fresh_access = fresh["access_token"].as_str().unwrap();
    let armed: Value = http
        .post(admin_url("app/expire-tokens"))
        .json(&json!({"afterCalls": 2}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(armed, json!({"afterCalls": 2}));
    for _ in 0..2 {
        let (status, _) = oauth_call(&portal, "scope", fresh_access, json!({})).await;
        assert_eq!(status, 200);
    }
    let (status, expired) = oauth_call(&portal, "scope", fresh_access, json!({})).await;
    assert_eq!(
        (status, expired["error"].as_str()),
        (401, Some("expired_token"))
    );

    let status: Value = http
        .get(admin_url("app"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(status["refreshes"], 1);
    assert_eq!(status["installed"], true);
    assert_eq!(status["tokenLifetimeSecs"], 60);
    let text = status.to_string();
    assert!(!text.contains(CLIENT_SECRET) && !text.contains(&token.refresh_token));
    portal.shutdown().await;
    receiver.stop();
}

#[tokio::test]
async fn a_portal_without_an_application_refuses_tokens() {
    b24_testkit::install_crypto_provider();
    let portal = common::portal(json!({})).await;
    let (status, refused) = token_request(&portal, &refresh_pairs("abc")).await;
    assert_eq!((status, refused), (200, json!({"error": "wrong_client"})));
    let (status, refused) = oauth_call(&portal, "scope", "abc", json!({})).await;
    assert_eq!(
        (status, refused["error"].as_str()),
        (401, Some("invalid_token"))
    );
    assert!(
        portal
            .admin()
            .install_application("http://127.0.0.1:9/")
            .await
            .is_err()
    );
    tokio::time::timeout(Duration::from_secs(10), portal.shutdown())
        .await
        .unwrap();
}
