//! Nothing the client (or reqwest and hyper under it) logs contains a webhook
//! secret or a token, even at TRACE level. One test per binary: it installs
//! the process-wide subscriber.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};

use b24_client::{Client, OAuth, RateLimits, Secret, TokenPair, TokenStore};
use common::{MockPortal, Reply, SECRET, fast_retries};
use serde_json::json;
use tracing_subscriber::util::SubscriberInitExt;

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn no_secret_reaches_the_logs_even_at_trace_level() {
    b24_testkit::install_crypto_provider();
    let captured = Captured::default();
    let writer = captured.clone();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish()
        .try_init()
        .expect("the only subscriber in this test binary");

    let portal = MockPortal::start(|seen| {
        if seen.path == "/oauth/token/" {
            return Reply::Json(
                200,
                json!({"access_token": "new-access-t0ken", "refresh_token": "new-refresh-t0ken"}),
            );
        }
        match seen.query_param("auth").as_deref() {
            Some("old-access-t0ken") => Reply::Json(
                401,
                json!({"error": "expired_token", "error_description": "expired"}),
            ),
            _ if seen.method() == "crm.item.add" => Reply::Json(
                503,
                json!({"error": "QUERY_LIMIT_EXCEEDED", "error_description": "Too many requests"}),
            ),
            _ => Reply::Json(200, json!({"result": true})),
        }
    })
    .await;
    let limits = RateLimits::default().starting_empty();
    let webhook_client = Client::builder(portal.webhook(), limits.clone())
        .retry(fast_retries(2))
        .build()
        .unwrap();
    let store: Arc<dyn TokenStore> = Arc::new(|_: &str, _: &TokenPair| Ok(()));
    let oauth = OAuth::new(
        &format!("{}/rest/", portal.base_url()),
        "local.app.1",
        "cl13nt-s3cr3t",
        TokenPair {
            access_token: Secret::new("old-access-t0ken"),
            refresh_token: Secret::new("old-refresh-t0ken"),
        },
        store,
    )
    .unwrap()
    .with_token_server(&format!("{}/oauth/token/", portal.base_url()))
    .unwrap();
    let oauth_client = Client::builder(oauth, limits)
        .retry(fast_retries(2))
        .build()
        .unwrap();

    webhook_client.call("profile", &json!({})).await.unwrap();
    let _ = webhook_client
        .call("crm.item.add", &json!({}))
        .await
        .unwrap_err();
    oauth_client.call("profile", &json!({})).await.unwrap();
    portal.stop().await;

    let logs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(
        logs.contains("Bitrix24 request finished"),
        "logging was captured:\n{logs}"
    );
    assert!(logs.contains("OAuth tokens refreshed"), "{logs}");
    // reqwest's own `log` records arrive too, through the tracing-log bridge.
    assert!(logs.contains("starting new connection"), "{logs}");
    for secret in [
        SECRET,
        "cl13nt-s3cr3t",
        "old-access-t0ken",
        "old-refresh-t0ken",
        "new-access-t0ken",
        "new-refresh-t0ken",
    ] {
        assert!(
            !logs.contains(secret),
            "`{secret}` leaked into the logs:\n{logs}"
        );
    }
}
