//! The configured portals at run time: one REST client each (all sharing one
//! rate-limit registry, so every call to a portal waits for its bucket), the
//! deal field catalogue cached with a time to live, users found by e-mail,
//! and file downloads through the same bucket.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use b24_client::{ApiErrorKind, Client, Error as ClientError, RateLimits};
use serde_json::{Value, json};

use crate::config::{AppSettings, Config, PortalConfig};
use crate::mapping::{FieldCatalog, camel_name, parse_catalog, scalar};
use crate::metrics::{Metrics, PortalObserver};
use crate::store::{AppInstall, Store};

/// All portals of the configuration.
pub struct Portals {
    by_name: BTreeMap<String, Arc<PortalHandle>>,
}

/// One portal: its client and caches.
pub struct PortalHandle {
    pub config: PortalConfig,
    pub client: Client,
    rate_limits: RateLimits,
    downloader: reqwest::Client,
    metrics: Arc<Metrics>,
    // Async locks held across the fetch: many workers needing the same
    // catalogue or user make one request, not one each.
    catalog: tokio::sync::Mutex<Option<(Instant, Arc<FieldCatalog>)>>,
    users_by_email: tokio::sync::Mutex<HashMap<String, Option<i64>>>,
    /// Set once the portal answered that `crm.item.*` does not exist (a box
    /// not updated): its deals are read with the deprecated `crm.deal.*`.
    pub legacy_crm: std::sync::atomic::AtomicBool,
    /// The installed local application's client, while its tokens work.
    /// One client per portal: its clones share the tokens, so concurrent
    /// `expired_token` answers make one refresh.
    app: std::sync::Mutex<Option<AppSlot>>,
    /// Held while answering rule runs, so that no run is answered twice.
    pub answering: tokio::sync::Mutex<()>,
}

/// The application's client and what rebuilding it needs.
struct AppSlot {
    client: Client,
    store: Store,
    settings: AppSettings,
}

/// Requests of the bucket the relay leaves unused, so that timing jitter
/// between our count and the portal's (and a few calls from other tools on
/// the same webhook) do not reach the portal's limit. The drain rate, which
/// sets sustained throughput, is kept.
pub fn headroom(burst: u32) -> u32 {
    (burst / 20).max(3).min(burst.saturating_sub(1))
}

impl Portals {
    pub fn new(config: &Config, metrics: Arc<Metrics>) -> Result<Self, ClientError> {
        let rate_limits = RateLimits::default();
        let downloader = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(120))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| ClientError::Config(format!("HTTP client: {}", e.without_url())))?;
        let mut by_name = BTreeMap::new();
        for (name, portal) in &config.portals {
            let bucket = b24_client::BucketConfig {
                burst: portal.rate.burst - headroom(portal.rate.burst),
                drain_per_second: portal.rate.drain_per_second,
            };
            rate_limits.set_portal(&portal.webhook.portal(), bucket)?;
            let client = Client::builder(portal.webhook.clone(), rate_limits.clone())
                .observer(PortalObserver::new(name, metrics.clone()))
                .build()?;
            by_name.insert(
                name.clone(),
                Arc::new(PortalHandle {
                    config: portal.clone(),
                    client,
                    rate_limits: rate_limits.clone(),
                    downloader: downloader.clone(),
                    metrics: metrics.clone(),
                    catalog: tokio::sync::Mutex::new(None),
                    users_by_email: tokio::sync::Mutex::new(HashMap::new()),
                    legacy_crm: std::sync::atomic::AtomicBool::new(false),
                    app: std::sync::Mutex::new(None),
                    answering: tokio::sync::Mutex::new(()),
                }),
            );
        }
        Ok(Self { by_name })
    }

    pub fn get(&self, name: &str) -> Option<&Arc<PortalHandle>> {
        self.by_name.get(name)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &Arc<PortalHandle>)> {
        self.by_name.iter()
    }
}

impl PortalHandle {
    /// A client for the installed application (sharing the portal's rate
    /// bucket), made the portal's application client.
    pub fn build_app_client(&self, oauth: b24_client::OAuth) -> Result<Client, ClientError> {
        Client::builder(oauth, self.rate_limits.clone())
            .observer(PortalObserver::new(&self.config.name, self.metrics.clone()))
            .build()
    }

    /// Makes `client` the portal's application client; `store` records a
    /// refused refresh and holds the pair another process may have stored.
    pub fn use_app(&self, client: Client, store: Store, settings: AppSettings) {
        *self.app.lock().unwrap_or_else(|e| e.into_inner()) = Some(AppSlot {
            client,
            store,
            settings,
        });
        self.metrics.set_reinstall_needed(&self.config.name, false);
    }

    /// The application's client, unless none is installed or its tokens
    /// were refused.
    pub fn app_client(&self) -> Option<Client> {
        self.app
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|slot| slot.client.clone())
    }

    /// Stops using the application: it must be installed again.
    pub fn disconnect_app(&self) {
        *self.app.lock().unwrap_or_else(|e| e.into_inner()) = None;
        self.metrics.set_reinstall_needed(&self.config.name, true);
    }

    /// After an error of the application's client `failed`: if the
    /// authorization server refused the refresh (`invalid_grant` …) or the
    /// portal answered `invalid_token`, and no
    /// other process (a CLI command) stored a newer pair meanwhile, the
    /// tokens are dead: the portal is flagged in the store as needing a
    /// re-install, the application is no longer used, and `true` is
    /// returned. With a newer stored pair the client is rebuilt from it and
    /// `false` is returned (try again).
    pub async fn app_refused(&self, failed: &Client, error: &ClientError) -> bool {
        let code = match error {
            ClientError::TokenRefresh { code, .. } => code.clone(),
            // The portal no longer knows the token (application deleted or
            // installed again elsewhere): as dead as a refused refresh.
            ClientError::Api(api) if api.kind == b24_client::ApiErrorKind::InvalidToken => {
                api.code.clone()
            }
            _ => return false,
        };
        let name = &self.config.name;
        // The stored pair is read before taking the slot's lock, which is
        // never held across an await; the checks are repeated under it.
        let store = match self.app_store(failed) {
            Ok(store) => store,
            Err(answer) => return answer,
        };
        let stored = store.app_install(name).await.ok().flatten();
        let taken = match self.take_dead_app(failed, stored) {
            Ok(taken) => taken,
            Err(answer) => return answer,
        };
        self.metrics.set_reinstall_needed(name, true);
        self.metrics.token_refresh_refused(name);
        let reason = format!(
            "the authorization server refused to refresh the tokens ({code}); install the application again"
        );
        tracing::error!(portal = %name, %code, "OAuth refresh refused; the local application must be installed again");
        if let Err(store_error) = taken.store.mark_reinstall_needed(name, &reason).await {
            tracing::error!(portal = %name, error = %store_error, "cannot record that the application needs a re-install");
        }
        true
    }

    /// The store of the application whose client `failed`; `Err` is what
    /// [`Self::app_refused`] answers when there is none (`true`) or the
    /// client was already replaced by an earlier caller (`false`).
    fn app_store(&self, failed: &Client) -> Result<Store, bool> {
        let slot = self.app.lock().unwrap_or_else(|e| e.into_inner());
        match slot.as_ref() {
            None => Err(true),
            Some(current) if current.client.oauth_tokens() != failed.oauth_tokens() => Err(false),
            Some(current) => Ok(current.store.clone()),
        }
    }

    /// Under the slot's lock, the checks of [`Self::app_store`] again, then:
    /// `Err(false)` if `stored` holds a newer pair (the client is rebuilt
    /// from it); else the slot is emptied and its application returned.
    fn take_dead_app(&self, failed: &Client, stored: Option<AppInstall>) -> Result<AppSlot, bool> {
        let name = &self.config.name;
        let mut slot = self.app.lock().unwrap_or_else(|e| e.into_inner());
        let current = slot.as_ref().ok_or(true)?;
        if current.client.oauth_tokens() != failed.oauth_tokens() {
            return Err(false);
        }
        if let (Some(install), Some(credentials)) = (stored, &self.config.app) {
            let newer = install.reinstall_reason.is_none()
                && Some(&install.tokens) != current.client.oauth_tokens().as_ref();
            if newer {
                let rebuilt = crate::application::oauth_for(
                    name,
                    credentials,
                    &current.settings,
                    &install,
                    current.store.clone(),
                )
                .and_then(|oauth| self.build_app_client(oauth));
                if let Ok(client) = rebuilt {
                    tracing::info!(portal = %name, "another process refreshed the tokens; using the stored pair");
                    if let Some(current) = slot.as_mut() {
                        current.client = client;
                    }
                    return Err(false);
                }
            }
        }
        slot.take().ok_or(true)
    }

    /// Source reads go through the application when it is installed (no
    /// second webhook needed), else through the webhook.
    pub fn reader(&self) -> Client {
        self.app_client().unwrap_or_else(|| self.client.clone())
    }

    /// Deal fields (`crm.item.fields`), fetched at most once per `ttl`
    /// unless `refresh` asks for a fresh copy.
    pub async fn deal_catalog(
        &self,
        ttl: Duration,
        refresh: bool,
    ) -> Result<Arc<FieldCatalog>, ClientError> {
        let mut cached = self.catalog.lock().await;
        if let Some((_, catalog)) = cached
            .as_ref()
            .filter(|(at, _)| !refresh && at.elapsed() < ttl)
        {
            return Ok(catalog.clone());
        }
        let catalog = Arc::new(self.fetch_catalog().await?);
        *cached = Some((Instant::now(), catalog.clone()));
        Ok(catalog)
    }

    async fn fetch_catalog(&self) -> Result<FieldCatalog, ClientError> {
        if !self.legacy_crm.load(Ordering::Relaxed) {
            match self
                .client
                .call("crm.item.fields", &json!({"entityTypeId": 2}))
                .await
            {
                Ok(response) => return Ok(parse_catalog(&response.result)),
                Err(ClientError::Api(api)) if api.kind == ApiErrorKind::MethodNotFound => {
                    tracing::warn!(portal = %self.config.name, "crm.item.* is missing; using crm.deal.*");
                    self.legacy_crm.store(true, Ordering::Relaxed);
                }
                Err(error) => return Err(error),
            }
        }
        // `crm.deal.fields`: UPPER_CASE keys straight under `result`.
        let response = self.client.call("crm.deal.fields", &json!({})).await?;
        Ok(parse_catalog(&json!({"fields": response.result}))
            .into_iter()
            .map(|(name, mut info)| {
                if info.title.is_empty() {
                    info.title = name.clone();
                }
                (camel_name(&name), info)
            })
            .collect())
    }

    /// The active user with this e-mail (cached, also when there is none).
    pub async fn user_by_email(&self, email: &str) -> Result<Option<i64>, ClientError> {
        let key = email.trim().to_ascii_lowercase();
        let mut users = self.users_by_email.lock().await;
        if let Some(found) = users.get(&key) {
            return Ok(*found);
        }
        let response = self
            .client
            .call(
                "user.get",
                &json!({"FILTER": {"EMAIL": email, "ACTIVE": true}}),
            )
            .await?;
        let found = response
            .result
            .as_array()
            .and_then(|users| users.first())
            .and_then(|user| scalar(&user["ID"]).parse::<i64>().ok());
        users.insert(key, found);
        Ok(found)
    }

    /// Downloads a file by its `urlMachine` link (it carries the webhook's
    /// auth), waiting for the portal's bucket like every other request.
    /// Errors never include the URL.
    pub async fn download(&self, url: &str) -> Result<(String, Vec<u8>), String> {
        let waited = self
            .rate_limits
            .portal(self.client.portal())
            .acquire()
            .await;
        if !waited.is_zero() {
            b24_client::Observer::rate_limit_waited(&*self.metrics, &self.config.name, waited);
        }
        let response = self
            .downloader
            .get(url)
            .send()
            .await
            .map_err(|e| format!("file download failed: {}", e.without_url()))?;
        let status = response.status().as_u16();
        b24_client::Observer::request_finished(
            &*self.metrics,
            &b24_client::RequestEvent {
                portal: &self.config.name,
                method: "file.download",
                outcome: if status == 200 { "ok" } else { "http_error" },
                status: Some(status),
                elapsed: Duration::ZERO,
                attempt: 1,
            },
        );
        if status != 200 {
            return Err(format!("file download answered HTTP {status}"));
        }
        let name = response
            .headers()
            .get(http::header::CONTENT_DISPOSITION)
            .and_then(|v| v.to_str().ok())
            .and_then(filename_of)
            .unwrap_or_else(|| "file".to_owned());
        let bytes = response
            .bytes()
            .await
            .map_err(|e| format!("file download failed: {}", e.without_url()))?;
        Ok((name, bytes.to_vec()))
    }
}

/// `attachment; filename="a.pdf"` → `a.pdf`.
fn filename_of(disposition: &str) -> Option<String> {
    let start = disposition.find("filename=")? + "filename=".len();
    let name = disposition[start..]
        .split(';')
        .next()?
        .trim()
        .trim_matches('"');
    (!name.is_empty()).then(|| name.to_owned())
}

/// Numeric id from a JSON value (`5`, `"5"`); zero and junk are `None`.
pub fn id_of(value: Option<&Value>) -> Option<i64> {
    value
        .map(scalar)
        .and_then(|text| text.parse::<i64>().ok())
        .filter(|id| *id > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_file_names_and_ids() {
        assert_eq!(
            filename_of("attachment; filename=\"offer.pdf\"").as_deref(),
            Some("offer.pdf")
        );
        assert_eq!(filename_of("attachment").as_deref(), None);
        assert_eq!(id_of(Some(&json!("12"))), Some(12));
        assert_eq!(id_of(Some(&json!(0))), None);
        assert_eq!(id_of(None), None);
        assert_eq!(headroom(50), 3);
        assert_eq!(headroom(250), 12);
        assert_eq!(headroom(2), 1);
    }
}
