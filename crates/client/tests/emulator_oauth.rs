//! The client's OAuth support against the emulator's application mode: the
//! emulator installs a local application, expires its tokens on demand and
//! plays the authorization server, so "exactly one refresh" is counted where
//! the refresh lands, not inferred from the client's own view.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use b24_client::{Client, Error, OAuth, Paging, RateLimits, Secret, TokenPair, TokenStore};
use b24_emulator::{Admin, Installed, Portal};
use common::{MockPortal, Recorder, Reply, fast_retries};
use futures_util::TryStreamExt;
use serde_json::json;

const CLIENT_ID: &str = "local.65a1b2c3d4e5f6.11223344";
const CLIENT_SECRET: &str = "em-cl1ent-s3cret";

/// What the token store saw: the pair, and how many `crm.item.get`
/// requests had reached the portal when it was saved.
type Saved = Arc<Mutex<Vec<(TokenPair, u64)>>>;

struct Setup {
    portal: Portal,
    app_server: MockPortal,
    installed: Installed,
    saved: Saved,
    recorder: Arc<Recorder>,
    client: Client,
}

impl Setup {
    async fn start() -> Self {
        b24_testkit::install_crypto_provider();
        let portal = Portal::builder()
            .domain("source.test")
            .application(CLIENT_ID, CLIENT_SECRET, &["crm", "bizproc"])
            .seed(json!({"userFields": [{"entity": "deal", "name": "UF_CRM_DOCS", "type": "file", "multiple": true}]}))
            .start()
            .await
            .expect("emulator starts");
        // The application's install handler: it only has to answer.
        let app_server =
            MockPortal::start(|_| Reply::Json(200, json!({"status": "success"}))).await;
        let installed = portal
            .admin()
            .install_application(&format!("{}/app/install/source", app_server.base_url()))
            .await
            .expect("install");
        assert_eq!(installed.delivery.status, Some(200));
        let saved = Saved::default();
        let recorder = Arc::new(Recorder::default());
        let client = client_for(&portal, &installed, &saved, &recorder);
        Self {
            portal,
            app_server,
            installed,
            saved,
            recorder,
            client,
        }
    }

    fn admin(&self) -> Admin {
        self.portal.admin()
    }

    async fn stop(self) {
        self.portal.shutdown().await;
        self.app_server.stop().await;
    }
}

fn client_for(
    portal: &Portal,
    installed: &Installed,
    saved: &Saved,
    recorder: &Arc<Recorder>,
) -> Client {
    let admin = portal.admin();
    let saved = saved.clone();
    let store: Arc<dyn TokenStore> = Arc::new(move |_: &str, tokens: &TokenPair| {
        let gets = admin.request_count("crm.item.get");
        saved.lock().unwrap().push((tokens.clone(), gets));
        Ok(())
    });
    let tokens = TokenPair {
        access_token: Secret::new(installed.tokens.access_token.clone()),
        refresh_token: Secret::new(installed.tokens.refresh_token.clone()),
    };
    // The install call's auth[client_endpoint] is the portal's REST root.
    let oauth = OAuth::new(&portal.rest_url(), CLIENT_ID, CLIENT_SECRET, tokens, store)
        .unwrap()
        .with_token_server(&portal.oauth_token_url())
        .unwrap();
    b24_testkit::install_crypto_provider();
    Client::builder(oauth, RateLimits::default().starting_empty())
        .retry(fast_retries(3))
        .request_timeout(Duration::from_secs(10))
        .observer(recorder.clone())
        .build()
        .unwrap()
}

fn latest_pair(admin: &Admin) -> TokenPair {
    let latest = admin.latest_tokens().expect("tokens issued");
    TokenPair {
        access_token: Secret::new(latest.access_token),
        refresh_token: Secret::new(latest.refresh_token),
    }
}

#[tokio::test]
async fn a_token_expiring_mid_run_is_refreshed_once_and_stored_before_use() {
    b24_testkit::install_crypto_provider();
    let setup = Setup::start().await;
    let admin = setup.admin();
    let added = setup
        .client
        .call(
            "crm.item.add",
            &json!({"entityTypeId": 2, "fields": {"title": "A"}}),
        )
        .await
        .unwrap();
    let id = added.result["item"]["id"].as_i64().unwrap();

    admin.expire_access_tokens().unwrap();
    let got = setup
        .client
        .call("crm.item.get", &json!({"entityTypeId": 2, "id": id}))
        .await
        .unwrap();

    assert_eq!(got.result["item"]["title"], "A");
    assert_eq!(
        admin.refresh_count(),
        1,
        "exactly one refresh at the token server"
    );
    assert_eq!(*setup.recorder.refreshes.lock().unwrap(), 1);
    let saved = setup.saved.lock().unwrap().clone();
    assert_eq!(saved.len(), 1);
    let (pair, gets_when_saved) = &saved[0];
    assert_eq!(
        *pair,
        latest_pair(&admin),
        "the store got the server's new pair"
    );
    assert_ne!(
        pair.refresh_token.expose(),
        setup.installed.tokens.refresh_token,
        "both tokens rotated"
    );
    assert_eq!(
        *gets_when_saved, 1,
        "saved after the refused call, before the retry"
    );
    assert_eq!(admin.request_count("crm.item.get"), 2);
    assert_eq!(setup.client.oauth_tokens().unwrap(), *pair);

    // Later calls use the new pair without refreshing again.
    setup
        .client
        .call("crm.item.get", &json!({"entityTypeId": 2, "id": id}))
        .await
        .unwrap();
    assert_eq!(admin.refresh_count(), 1);
    setup.stop().await;
}

#[tokio::test]
async fn a_list_paged_across_the_expiry_reads_everything_with_one_refresh() {
    b24_testkit::install_crypto_provider();
    let setup = Setup::start().await;
    let admin = setup.admin();
    for i in 0..130 {
        let mut deal = serde_json::Map::new();
        deal.insert("title".into(), json!(format!("Deal {i}")));
        admin
            .insert_record(b24_emulator::EntityType::Deal, &deal)
            .unwrap();
    }
    // The first page works; the token expires under the second.
    admin.expire_access_tokens_after(1).unwrap();

    let deals: Vec<_> = setup
        .client
        .list(
            "crm.item.list",
            json!({"entityTypeId": 2}),
            Paging::by_id("id"),
        )
        .try_collect()
        .await
        .unwrap();

    assert_eq!(deals.len(), 130);
    assert_eq!(admin.refresh_count(), 1);
    assert_eq!(setup.saved.lock().unwrap().len(), 1);
    assert_eq!(setup.client.oauth_tokens().unwrap(), latest_pair(&admin));
    setup.stop().await;
}

#[tokio::test]
async fn concurrent_calls_hitting_the_expiry_share_one_refresh() {
    b24_testkit::install_crypto_provider();
    let setup = Setup::start().await;
    let admin = setup.admin();
    admin.expire_access_tokens().unwrap();

    let calls: Vec<_> = (0..8)
        .map(|i| {
            let worker = setup.client.clone();
            tokio::spawn(async move {
                worker
                    .call(
                        "crm.item.add",
                        &json!({"entityTypeId": 2, "fields": {"title": format!("W{i}")}}),
                    )
                    .await
            })
        })
        .collect();
    for call in calls {
        call.await.unwrap().expect("each worker's call succeeds");
    }

    assert_eq!(admin.refresh_count(), 1, "one refresh however many workers");
    assert_eq!(admin.application_status().unwrap().refused_refreshes, 0);
    assert_eq!(setup.saved.lock().unwrap().len(), 1);
    assert_eq!(setup.client.oauth_tokens().unwrap(), latest_pair(&admin));
    assert_eq!(admin.records(b24_emulator::EntityType::Deal).len(), 8);
    setup.stop().await;
}

#[tokio::test]
async fn a_revoked_refresh_token_gives_invalid_grant_without_secrets() {
    b24_testkit::install_crypto_provider();
    let setup = Setup::start().await;
    let admin = setup.admin();
    admin.expire_access_tokens().unwrap();
    admin.revoke_refresh_tokens().unwrap();

    let error = setup
        .client
        .call("crm.item.list", &json!({"entityTypeId": 2}))
        .await
        .unwrap_err();

    match &error {
        Error::TokenRefresh { code, .. } => assert_eq!(code, "invalid_grant"),
        other => panic!("expected a refresh error, got {other:?}"),
    }
    let installed = &setup.installed;
    for shown in [
        error.to_string(),
        format!("{error:?}"),
        format!("{:?}", setup.client),
    ] {
        for secret in [
            CLIENT_SECRET,
            installed.tokens.access_token.as_str(),
            installed.tokens.refresh_token.as_str(),
        ] {
            assert!(!shown.contains(secret), "{shown}");
        }
    }
    assert_eq!(admin.refresh_count(), 0);
    assert_eq!(admin.application_status().unwrap().refused_refreshes, 1);
    assert!(setup.saved.lock().unwrap().is_empty());
    setup.stop().await;
}

#[tokio::test]
async fn a_file_link_whose_token_expired_downloads_after_one_refresh() {
    let setup = Setup::start().await;
    let admin = setup.admin();
    let added = setup
        .client
        .call(
            "crm.item.add",
            &json!({"entityTypeId": 2, "fields": {"ufCrm_DOCS": [["Счёт №7.pdf", "JVBERi0="]]}}),
        )
        .await
        .unwrap();
    let link = added.result["item"]["ufCrm_DOCS"][0]["urlMachine"]
        .as_str()
        .unwrap()
        .to_owned();
    // The token the link was made with expires before the download.
    admin.expire_access_tokens().unwrap();
    let file = setup.client.download(&link).await.unwrap();
    assert_eq!(file.name.as_deref(), Some("Счёт №7.pdf"));
    assert_eq!(file.bytes, b"%PDF-");
    assert_eq!(admin.refresh_count(), 1);
    // A link without any token gets the client's own.
    let bare: String = link.split("&auth=").next().unwrap().to_owned();
    let again = setup.client.download(&bare).await.unwrap();
    assert_eq!(again.bytes, b"%PDF-");
    assert_eq!(admin.refresh_count(), 1);
    setup.stop().await;
}
