//! Application mode: a local application installed on a source portal gives
//! the relay OAuth tokens (kept in the store, replaced atomically after each
//! refresh) and lets it register its own automation rule, "Transfer deal",
//! whose runs are queued like events and answered with
//! `bizproc.event.send` when their job ends (BITRIX24.md §2, §3).

mod answer;
mod install;
mod robot;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use b24_client::{
    Client, OAuth, RefreshGuard, TokenPair, TokenStore, TokenStoreError, TokenStoreResult,
};

use crate::config::{AppCredentials, AppSettings};
use crate::portals::PortalHandle;
use crate::store::{AppInstall, Store, StoreError};

pub use answer::{RuleAnswer, answer_finished_calls, answer_now, answer_values};
pub use install::{InstallError, InstallPayload, RuleRun, install, read_rule_run};
pub use robot::{RobotAction, register_robot, robot_definition, unregister_robot};

/// Keeps a portal's refreshed pairs in the relay's store.
struct AppTokens {
    portal: String,
    store: Store,
}

impl TokenStore for AppTokens {
    fn save<'a>(
        &'a self,
        _host: &'a str,
        tokens: &'a TokenPair,
    ) -> Pin<Box<dyn Future<Output = TokenStoreResult> + Send + 'a>> {
        Box::pin(async move {
            self.store
                .save_app_tokens(&self.portal, tokens)
                .await
                .map_err(Into::into)
        })
    }

    /// One refresh at a time across the replicas of the store; a pair
    /// another replica stored meanwhile is used instead.
    fn begin_refresh<'a>(
        &'a self,
        _host: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<RefreshGuard, TokenStoreError>> + Send + 'a>> {
        Box::pin(async move {
            self.store
                .begin_refresh(&self.portal)
                .await
                .map_err(Into::into)
        })
    }
}

/// The OAuth credentials of an installed application; every new pair the
/// client gets from a refresh is written to the store before the refresh
/// call returns.
pub fn oauth_for(
    portal_name: &str,
    credentials: &AppCredentials,
    settings: &AppSettings,
    install: &AppInstall,
    store: Store,
) -> Result<OAuth, b24_client::Error> {
    let save = AppTokens {
        portal: portal_name.to_owned(),
        store,
    };
    OAuth::new(
        &install.client_endpoint,
        credentials.client_id.clone(),
        credentials.client_secret.clone(),
        install.tokens.clone(),
        Arc::new(save),
    )?
    .with_token_server(&settings.token_server_for(install.server_endpoint.as_deref()))
}

/// Connects a portal to the application installed earlier (at start-up),
/// unless its tokens were refused. Returns the client when connected.
pub async fn connect_installed(
    portal: &PortalHandle,
    settings: &AppSettings,
    store: &Store,
) -> Result<Option<Client>, ConnectError> {
    let Some(credentials) = &portal.config.app else {
        return Ok(None);
    };
    let Some(install) = store.app_install(&portal.config.name).await? else {
        return Ok(None);
    };
    if install.reinstall_reason.is_some() {
        portal.disconnect_app();
        return Ok(None);
    }
    let oauth = oauth_for(
        &portal.config.name,
        credentials,
        settings,
        &install,
        store.clone(),
    )?;
    let client = portal.build_app_client(oauth)?;
    portal.use_app(client.clone(), store.clone(), settings.clone());
    Ok(Some(client))
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("reading the installed application: {0}")]
    Store(#[from] StoreError),
    #[error("application client: {0}")]
    Client(#[from] b24_client::Error),
}
