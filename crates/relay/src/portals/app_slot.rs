//! The portal's installed local application: its OAuth client while its
//! tokens work, rebuilt from a pair another process stored, and dropped
//! (with the portal flagged for a re-install) when the authorization
//! server refuses a refresh.

use b24_client::{Client, Error as ClientError};

use super::PortalHandle;
use crate::config::AppSettings;
use crate::metrics::PortalObserver;
use crate::store::{AppInstall, Store};

/// The application's client and what rebuilding it needs.
pub(super) struct AppSlot {
    pub(super) client: Client,
    pub(super) store: Store,
    pub(super) settings: AppSettings,
}

impl PortalHandle {
    /// A client for the installed application (sharing the portal's rate
    /// bucket), made the portal's application client.
    pub fn build_app_client(&self, oauth: b24_client::OAuth) -> Result<Client, ClientError> {
        Client::builder(oauth, self.rate_limits.clone())
            .observer(PortalObserver::new(&self.config.name, self.metrics.clone()))
            // Transfers of different deals to one portal share batch requests.
            .coalesce_batches(true)
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
}
