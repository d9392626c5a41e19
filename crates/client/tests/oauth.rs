//! OAuth: `expired_token` leads to one refresh at the authorization server,
//! however many calls hit it at once, and the new pair is stored.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use b24_client::{Client, Error, OAuth, RateLimits, Secret, TokenPair, TokenStore};
use common::{MockPortal, Recorder, Reply, fast_retries};
use serde_json::json;
use tokio::sync::Barrier;

const CLIENT_SECRET: &str = "cl13nt-s3cr3t";

fn old_pair() -> TokenPair {
    TokenPair {
        access_token: Secret::new("old-access-t0ken"),
        refresh_token: Secret::new("old-refresh-t0ken"),
    }
}

type Stored = Arc<Mutex<Vec<(String, TokenPair)>>>;

fn recording_store(stored: &Stored) -> Arc<dyn TokenStore> {
    let stored = stored.clone();
    Arc::new(move |portal: &str, tokens: &TokenPair| {
        stored
            .lock()
            .unwrap()
            .push((portal.to_owned(), tokens.clone()));
        Ok(())
    })
}

fn oauth_client(
    portal: &MockPortal,
    store: Arc<dyn TokenStore>,
    recorder: &Arc<Recorder>,
) -> Client {
    let oauth = OAuth::new(
        &format!("{}/rest/", portal.base_url()),
        "local.app.1",
        CLIENT_SECRET,
        old_pair(),
        store,
    )
    .unwrap()
    .with_token_server(&format!("{}/oauth/token/", portal.base_url()))
    .unwrap();
    Client::builder(oauth, RateLimits::default().starting_empty())
        .retry(fast_retries(3))
        .request_timeout(Duration::from_secs(10))
        .observer(recorder.clone())
        .build()
        .unwrap()
}

fn refresh_answer() -> Reply {
    Reply::Json(
        200,
        json!({
            "access_token": "new-access-t0ken",
            "refresh_token": "new-refresh-t0ken",
            "expires_in": 3600,
            "client_endpoint": "https://portal.test/rest/",
            "member_id": "abc",
            "status": "L",
        }),
    )
}

#[tokio::test]
async fn concurrent_expired_tokens_cause_exactly_one_refresh() {
    b24_testkit::install_crypto_provider();
    // Both calls must see `expired_token` before either refresh can happen.
    let both_arrived = Arc::new(Barrier::new(2));
    let portal = MockPortal::start_async(move |seen| {
        let both_arrived = both_arrived.clone();
        async move {
            if seen.path == "/oauth/token/" {
                return refresh_answer();
            }
            match seen.query_param("auth").as_deref() {
                Some("old-access-t0ken") => {
                    both_arrived.wait().await;
                    Reply::Json(401, json!({"error": "expired_token", "error_description": "The access token provided has expired."}))
                }
                Some("new-access-t0ken") => Reply::Json(200, json!({"result": {"ok": seen.method()}})),
                _ => Reply::Json(401, json!({"error": "NO_AUTH_FOUND", "error_description": "Wrong authorization data"})),
            }
        }
    })
    .await;
    let stored = Stored::default();
    let recorder = Arc::new(Recorder::default());
    let client = oauth_client(&portal, recording_store(&stored), &recorder);

    let reader = client.clone();
    let first = tokio::spawn(async move {
        reader
            .call("crm.item.get", &json!({"entityTypeId": 2, "id": 1}))
            .await
    });
    let writer = client.clone();
    let second = tokio::spawn(async move {
        writer
            .call("crm.item.add", &json!({"entityTypeId": 2}))
            .await
    });

    assert_eq!(
        first.await.unwrap().unwrap().result,
        json!({"ok": "crm.item.get"})
    );
    assert_eq!(
        second.await.unwrap().unwrap().result,
        json!({"ok": "crm.item.add"})
    );
    assert_eq!(portal.seen_count("/oauth/token/"), 1);
    assert_eq!(*recorder.refreshes.lock().unwrap(), 1);

    let refresh = portal
        .seen()
        .into_iter()
        .find(|seen| seen.path == "/oauth/token/")
        .unwrap();
    assert_eq!(
        refresh.query_param("grant_type").as_deref(),
        Some("refresh_token")
    );
    assert_eq!(
        refresh.query_param("client_id").as_deref(),
        Some("local.app.1")
    );
    assert_eq!(
        refresh.query_param("client_secret").as_deref(),
        Some(CLIENT_SECRET)
    );
    assert_eq!(
        refresh.query_param("refresh_token").as_deref(),
        Some("old-refresh-t0ken")
    );

    let stored = stored.lock().unwrap().clone();
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].0, portal.portal());
    assert_eq!(stored[0].1.access_token.expose(), "new-access-t0ken");
    assert_eq!(stored[0].1.refresh_token.expose(), "new-refresh-t0ken");
    assert_eq!(client.oauth_tokens().unwrap(), stored[0].1);

    // OAuth calls go to /rest/METHOD?auth=TOKEN.
    let call = portal
        .seen()
        .into_iter()
        .find(|seen| seen.path != "/oauth/token/")
        .unwrap();
    assert!(
        call.path == "/rest/crm.item.get" || call.path == "/rest/crm.item.add",
        "{}",
        call.path
    );
    portal.stop().await;
}

#[tokio::test]
async fn a_refused_refresh_is_reported_without_secrets() {
    b24_testkit::install_crypto_provider();
    let portal = MockPortal::start(|seen| {
        if seen.path == "/oauth/token/" {
            Reply::Json(400, json!({"error": "invalid_grant", "error_description": "Invalid refresh token"}))
        } else {
            Reply::Json(401, json!({"error": "expired_token", "error_description": "The access token provided has expired."}))
        }
    })
    .await;
    let stored = Stored::default();
    let recorder = Arc::new(Recorder::default());
    let client = oauth_client(&portal, recording_store(&stored), &recorder);

    let error = client.call("crm.item.get", &json!({})).await.unwrap_err();

    match &error {
        Error::TokenRefresh {
            code, description, ..
        } => {
            assert_eq!(code, "invalid_grant");
            assert_eq!(description, "Invalid refresh token");
        }
        other => panic!("expected a refresh error, got {other:?}"),
    }
    for shown in [
        error.to_string(),
        format!("{error:?}"),
        format!("{client:?}"),
    ] {
        for secret in [CLIENT_SECRET, "old-access-t0ken", "old-refresh-t0ken"] {
            assert!(!shown.contains(secret), "{shown}");
        }
    }
    assert!(stored.lock().unwrap().is_empty());
    assert_eq!(client.oauth_tokens().unwrap(), old_pair());
    portal.stop().await;
}

#[tokio::test]
async fn a_second_expired_token_after_a_refresh_is_an_error_not_a_loop() {
    b24_testkit::install_crypto_provider();
    let portal = MockPortal::start(|seen| {
        if seen.path == "/oauth/token/" {
            refresh_answer()
        } else {
            Reply::Json(401, json!({"error": "expired_token", "error_description": "The access token provided has expired."}))
        }
    })
    .await;
    let stored = Stored::default();
    let recorder = Arc::new(Recorder::default());
    let client = oauth_client(&portal, recording_store(&stored), &recorder);

    let error = client.call("crm.item.get", &json!({})).await.unwrap_err();

    assert_eq!(error.api().unwrap().code, "expired_token");
    assert_eq!(portal.seen_count("/oauth/token/"), 1);
    assert_eq!(portal.seen_count("/rest/crm.item.get"), 2);
    portal.stop().await;
}

#[tokio::test]
async fn a_failing_token_store_fails_the_call_but_keeps_the_new_pair_in_use() {
    b24_testkit::install_crypto_provider();
    let portal = MockPortal::start(|seen| {
        if seen.path == "/oauth/token/" {
            return refresh_answer();
        }
        match seen.query_param("auth").as_deref() {
            Some("new-access-t0ken") => Reply::Json(200, json!({"result": true})),
            _ => Reply::Json(
                401,
                json!({"error": "expired_token", "error_description": "expired"}),
            ),
        }
    })
    .await;
    let failing: Arc<dyn TokenStore> = Arc::new(|_: &str, _: &TokenPair| Err("disk full".into()));
    let recorder = Arc::new(Recorder::default());
    let client = oauth_client(&portal, failing, &recorder);

    let error = client.call("crm.item.get", &json!({})).await.unwrap_err();
    assert!(matches!(error, Error::TokenStore { .. }), "{error:?}");
    assert!(!error.to_string().contains("new-refresh-t0ken"));
    assert_eq!(
        client.oauth_tokens().unwrap().access_token.expose(),
        "new-access-t0ken"
    );

    // The next call works with the new pair, without another refresh.
    assert!(client.call("crm.item.get", &json!({})).await.is_ok());
    assert_eq!(portal.seen_count("/oauth/token/"), 1);
    portal.stop().await;
}

/// A store shared by several processes: what another one stored while this
/// one waited for the refresh lock is used, and no refresh is sent (its
/// refresh token would be spent).
struct SharedStore {
    stored: Mutex<TokenPair>,
    saved: Mutex<u32>,
}

impl TokenStore for SharedStore {
    fn save<'a>(
        &'a self,
        _portal: &'a str,
        tokens: &'a TokenPair,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = b24_client::TokenStoreResult> + Send + 'a>,
    > {
        *self.stored.lock().unwrap() = tokens.clone();
        *self.saved.lock().unwrap() += 1;
        Box::pin(std::future::ready(Ok(())))
    }

    fn begin_refresh<'a>(
        &'a self,
        _portal: &'a str,
    ) -> std::pin::Pin<
        Box<
            dyn std::future::Future<
                    Output = Result<b24_client::RefreshGuard, b24_client::TokenStoreError>,
                > + Send
                + 'a,
        >,
    > {
        let stored = self.stored.lock().unwrap().clone();
        Box::pin(std::future::ready(Ok(b24_client::RefreshGuard {
            stored: Some(stored),
            held: None,
        })))
    }
}

#[tokio::test]
async fn a_pair_another_process_stored_is_used_instead_of_refreshing() {
    b24_testkit::install_crypto_provider();
    let portal = MockPortal::start(|seen| {
        if seen.path == "/oauth/token/" {
            return refresh_answer();
        }
        match seen.query_param("auth").as_deref() {
            Some("other-access") => Reply::Json(200, json!({"result": "ok"})),
            _ => Reply::Json(
                401,
                json!({"error": "expired_token", "error_description": "The access token provided has expired."}),
            ),
        }
    })
    .await;
    let store = Arc::new(SharedStore {
        // Another replica refreshed already and stored its new pair.
        stored: Mutex::new(TokenPair {
            access_token: Secret::new("other-access"),
            refresh_token: Secret::new("other-refresh"),
        }),
        saved: Mutex::new(0),
    });
    let recorder = Arc::new(Recorder::default());
    let client = oauth_client(&portal, store.clone(), &recorder);
    let answer = client.call("profile", &json!({})).await.unwrap();
    assert_eq!(answer.result, json!("ok"));
    assert_eq!(portal.seen_count("/oauth/token/"), 0, "no refresh was sent");
    assert_eq!(*store.saved.lock().unwrap(), 0);
    assert_eq!(
        client.oauth_tokens().unwrap().refresh_token.expose(),
        "other-refresh"
    );
}
