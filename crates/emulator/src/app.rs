//! A local application on the portal: its OAuth tokens (issued at install,
//! checked on every REST call, expired on demand, rotated by the
//! authorization server), its install state and what it registered
//! (automation rules, event bindings).

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use http::StatusCode;
use serde::Serialize;
use subtle::ConstantTimeEq;

use crate::clock;
use crate::error::ApiError;
use crate::outbound::random_hex;
use crate::robots::AppRobot;

/// Access tokens live an hour on Bitrix24 unless configured otherwise.
pub const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(3600);

/// The application as its form in the portal defines it.
#[derive(Clone)]
pub struct AppConfig {
    pub client_id: String,
    pub client_secret: String,
    pub scopes: Vec<String>,
    pub token_lifetime: Duration,
}

impl std::fmt::Debug for AppConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppConfig")
            .field("client_id", &self.client_id)
            .field("client_secret", &"[redacted]")
            .field("scopes", &self.scopes)
            .field("token_lifetime", &self.token_lifetime)
            .finish()
    }
}

/// Why an application action of the admin handle could not run.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AppError {
    #[error("the portal has no application (build it with PortalBuilder::application)")]
    NoApplication,
    #[error("the application is not installed")]
    NotInstalled,
    #[error("invalid install URL: {0}")]
    InstallUrl(String),
    #[error("the application registered no automation rule {0:?}")]
    UnknownRobot(String),
}

/// A freshly issued token pair and what the portal reports with it.
#[derive(Clone)]
pub struct IssuedTokens {
    pub access_token: String,
    pub refresh_token: String,
    /// Unix time the access token stops working.
    pub expires: i64,
    pub expires_in: u64,
    pub user_id: i64,
}

impl std::fmt::Debug for IssuedTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedTokens")
            .field("access_token", &"[redacted]")
            .field("refresh_token", &"[redacted]")
            .field("expires", &self.expires)
            .field("expires_in", &self.expires_in)
            .field("user_id", &self.user_id)
            .finish()
    }
}

/// Where the application lives: set by the install call.
#[derive(Clone)]
pub struct Installation {
    pub install_url: String,
    /// Automation-rule handlers must be on this host (the docs: "the same
    /// domain where the application is installed").
    pub host: String,
    pub application_token: String,
    /// `event_handler_id` of the ONAPPINSTALL call (one per install).
    pub event_handler_id: u64,
}

/// A handler bound with `event.bind`.
#[derive(Clone, PartialEq, Serialize)]
pub struct EventBinding {
    pub event: String,
    pub handler: String,
    pub auth_type: i64,
}

impl std::fmt::Debug for EventBinding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventBinding")
            .field("event", &self.event)
            .field("handler", &crate::outbound::redact_url(&self.handler))
            .field("auth_type", &self.auth_type)
            .finish()
    }
}

/// What tests read about the application; no token values.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AppStatus {
    pub client_id: String,
    pub scopes: Vec<String>,
    pub installed: bool,
    pub token_lifetime_secs: u64,
    /// Successful refreshes at the authorization server.
    pub refreshes: u64,
    /// Refresh requests the authorization server refused.
    pub refused_refreshes: u64,
    pub robots: Vec<String>,
}

/// An authorization-server refusal. Shapes as the official Python SDK
/// documents them: a bare `{"error": CODE}` for `invalid_grant`,
/// `invalid_client` (wrong secret) and `wrong_client` (unknown client id,
/// with HTTP 200); `invalid_request` has a description.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenError {
    pub status: StatusCode,
    pub code: &'static str,
    pub description: Option<&'static str>,
}

impl TokenError {
    fn new(status: StatusCode, code: &'static str, description: Option<&'static str>) -> Self {
        Self {
            status,
            code,
            description,
        }
    }

    pub fn invalid_request(description: &'static str) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            Some(description),
        )
    }

    pub fn wrong_client() -> Self {
        Self::new(StatusCode::OK, "wrong_client", None)
    }

    pub fn invalid_client() -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_client", None)
    }

    pub fn invalid_grant() -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_grant", None)
    }

    pub fn unsupported_grant_type() -> Self {
        Self::new(StatusCode::BAD_REQUEST, "unsupported_grant_type", None)
    }
}

struct Grant {
    user_id: i64,
    expires_at: f64,
}

#[derive(Default)]
struct State {
    installation: Option<Installation>,
    access: HashMap<String, Grant>,
    /// refresh token → user id; a token leaves when used or revoked.
    refresh: HashMap<String, i64>,
    latest: Option<IssuedTokens>,
    refreshes: u64,
    refused_refreshes: u64,
    installs: u64,
    /// Successful REST calls left before every access token expires.
    expire_after: Option<u64>,
    robots: Vec<AppRobot>,
    events: Vec<EventBinding>,
}

/// The application and everything it holds on the portal.
pub struct Application {
    config: AppConfig,
    lifetime: Mutex<Duration>,
    state: Mutex<State>,
}

impl std::fmt::Debug for Application {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Application")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Application {
    pub fn new(config: AppConfig) -> Self {
        Self {
            lifetime: Mutex::new(config.token_lifetime),
            config,
            state: Mutex::new(State::default()),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn client_id(&self) -> &str {
        &self.config.client_id
    }

    /// `crm,bizproc`, as payloads and the authorization server report it.
    pub fn scope_text(&self) -> String {
        self.config.scopes.join(",")
    }

    pub fn scopes(&self) -> &[String] {
        &self.config.scopes
    }

    pub fn token_lifetime(&self) -> Duration {
        *self.lifetime.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn set_token_lifetime(&self, lifetime: Duration) {
        *self.lifetime.lock().unwrap_or_else(|e| e.into_inner()) = lifetime;
    }

    fn issue_locked(&self, state: &mut State, user_id: i64) -> IssuedTokens {
        let lifetime = self.token_lifetime();
        let now = clock::now_unix();
        let tokens = IssuedTokens {
            access_token: random_hex(70),
            refresh_token: random_hex(70),
            expires: (now + lifetime.as_secs_f64()).floor() as i64,
            expires_in: lifetime.as_secs(),
            user_id,
        };
        state.access.insert(
            tokens.access_token.clone(),
            Grant {
                user_id,
                expires_at: now + lifetime.as_secs_f64(),
            },
        );
        state.refresh.insert(tokens.refresh_token.clone(), user_id);
        tokens
    }

    /// Tokens for the `auth[...]` block of a rule run or an event (the
    /// rule's user); they do not count as the latest pair.
    pub fn issue_for_run(&self, user_id: i64) -> Option<IssuedTokens> {
        let mut state = self.state();
        state.installation.as_ref()?;
        Some(self.issue_locked(&mut state, user_id))
    }

    /// (Re)installs: every earlier token stops working, a new application
    /// token is made, and the first pair is issued for the installing admin.
    pub fn install(&self, install_url: &str) -> Result<(Installation, IssuedTokens), AppError> {
        let invalid = |why: &str| AppError::InstallUrl(why.to_string());
        let parsed = url::Url::parse(install_url).map_err(|_| invalid("not a valid URL"))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(invalid("must be http or https"));
        }
        let host = parsed
            .host_str()
            .ok_or_else(|| invalid("no host"))?
            .to_ascii_lowercase();
        let mut state = self.state();
        state.installs += 1;
        let installation = Installation {
            install_url: install_url.to_string(),
            host,
            application_token: random_hex(32),
            event_handler_id: state.installs,
        };
        state.access.clear();
        state.refresh.clear();
        state.installation = Some(installation.clone());
        let tokens = self.issue_locked(&mut state, 1);
        state.latest = Some(tokens.clone());
        Ok((installation, tokens))
    }

    pub fn installation(&self) -> Option<Installation> {
        self.state().installation.clone()
    }

    pub fn application_token_matches(&self, candidate: &str) -> bool {
        self.state().installation.as_ref().is_some_and(|i| {
            i.application_token
                .as_bytes()
                .ct_eq(candidate.as_bytes())
                .into()
        })
    }

    /// The user behind a REST call's `auth=` token.
    pub fn check_access(&self, token: &str) -> Result<i64, ApiError> {
        let mut state = self.state();
        let grant = state
            .access
            .get(token)
            .filter(|_| !token.is_empty())
            .ok_or_else(ApiError::invalid_token)?;
        if clock::now_unix() >= grant.expires_at {
            return Err(ApiError::expired_token());
        }
        let user_id = grant.user_id;
        match state.expire_after {
            Some(0) => {
                state.expire_after = None;
                Self::expire_locked(&mut state);
                Err(ApiError::expired_token())
            }
            Some(left) => {
                state.expire_after = Some(left - 1);
                Ok(user_id)
            }
            None => Ok(user_id),
        }
    }

    /// `grant_type=refresh_token`: rotates both tokens; the used refresh
    /// token stops working.
    pub fn refresh(
        &self,
        client_id: &str,
        client_secret: &str,
        refresh_token: &str,
    ) -> Result<IssuedTokens, TokenError> {
        let mut state = self.state();
        let result = self.refresh_locked(&mut state, client_id, client_secret, refresh_token);
        match &result {
            Ok(_) => state.refreshes += 1,
            Err(_) => state.refused_refreshes += 1,
        }
        result
    }

    fn refresh_locked(
        &self,
        state: &mut State,
        client_id: &str,
        client_secret: &str,
        refresh_token: &str,
    ) -> Result<IssuedTokens, TokenError> {
        let secret_ok: bool = self
            .config
            .client_secret
            .as_bytes()
            .ct_eq(client_secret.as_bytes())
            .into();
        if client_id != self.config.client_id || state.installation.is_none() {
            return Err(TokenError::wrong_client());
        }
        if !secret_ok {
            return Err(TokenError::invalid_client());
        }
        let user_id = state
            .refresh
            .remove(refresh_token)
            .ok_or_else(TokenError::invalid_grant)?;
        let tokens = self.issue_locked(state, user_id);
        state.latest = Some(tokens.clone());
        Ok(tokens)
    }

    /// Makes every access token issued so far expired (the test knob).
    pub fn expire_access_tokens(&self) -> usize {
        Self::expire_locked(&mut self.state())
    }

    fn expire_locked(state: &mut State) -> usize {
        let past = clock::now_unix() - 1.0;
        for grant in state.access.values_mut() {
            grant.expires_at = grant.expires_at.min(past);
        }
        state.access.len()
    }

    /// Lets `calls` more REST calls with a live token succeed, then expires
    /// every access token issued so far: "the token expires mid-run" without
    /// the test knowing when the run is at that point.
    pub fn expire_access_tokens_after(&self, calls: u64) {
        self.state().expire_after = Some(calls);
    }

    /// Revokes every refresh token: the next refresh gets `invalid_grant`.
    pub fn revoke_refresh_tokens(&self) -> usize {
        let mut state = self.state();
        let count = state.refresh.len();
        state.refresh.clear();
        count
    }

    /// The pair issued last by install or refresh.
    pub fn latest_tokens(&self) -> Option<IssuedTokens> {
        self.state().latest.clone()
    }

    pub fn status(&self) -> AppStatus {
        let state = self.state();
        AppStatus {
            client_id: self.config.client_id.clone(),
            scopes: self.config.scopes.clone(),
            installed: state.installation.is_some(),
            token_lifetime_secs: self.token_lifetime().as_secs(),
            refreshes: state.refreshes,
            refused_refreshes: state.refused_refreshes,
            robots: state.robots.iter().map(|r| r.code.clone()).collect(),
        }
    }

    pub fn robots(&self) -> Vec<AppRobot> {
        self.state().robots.clone()
    }

    pub fn robot(&self, code: &str) -> Option<AppRobot> {
        self.state().robots.iter().find(|r| r.code == code).cloned()
    }

    /// Runs `change` on the robot list under the lock.
    pub fn with_robots<T>(&self, change: impl FnOnce(&mut Vec<AppRobot>) -> T) -> T {
        change(&mut self.state().robots)
    }

    pub fn events(&self) -> Vec<EventBinding> {
        self.state().events.clone()
    }

    pub fn with_events<T>(&self, change: impl FnOnce(&mut Vec<EventBinding>) -> T) -> T {
        change(&mut self.state().events)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app() -> Application {
        Application::new(AppConfig {
            client_id: "local.abc".into(),
            client_secret: "cl1ent-s3cret".into(),
            scopes: vec!["crm".into(), "bizproc".into()],
            token_lifetime: DEFAULT_TOKEN_LIFETIME,
        })
    }

    #[test]
    fn refresh_rotates_both_tokens_once() {
        let app = app();
        let (_, first) = app.install("http://127.0.0.1:9/app/install/p").unwrap();
        assert_eq!(app.check_access(&first.access_token), Ok(1));
        let second = app
            .refresh("local.abc", "cl1ent-s3cret", &first.refresh_token)
            .unwrap();
        assert_ne!(second.access_token, first.access_token);
        assert_ne!(second.refresh_token, first.refresh_token);
        assert_eq!(
            app.refresh("local.abc", "cl1ent-s3cret", &first.refresh_token)
                .unwrap_err()
                .code,
            "invalid_grant"
        );
        assert_eq!(
            app.refresh("local.abc", "wrong", &second.refresh_token)
                .unwrap_err()
                .code,
            "invalid_client"
        );
        assert_eq!(
            app.refresh("local.other", "cl1ent-s3cret", &second.refresh_token)
                .unwrap_err()
                .code,
            "wrong_client"
        );
        let status = app.status();
        assert_eq!((status.refreshes, status.refused_refreshes), (1, 3));
    }

    #[test]
    fn tokens_can_expire_after_a_number_of_calls() {
        let app = app();
        let (_, tokens) = app.install("https://relay.test/install").unwrap();
        app.expire_access_tokens_after(2);
        assert_eq!(
            app.check_access("unknown").unwrap_err().code,
            "invalid_token"
        );
        assert!(app.check_access(&tokens.access_token).is_ok());
        assert!(app.check_access(&tokens.access_token).is_ok());
        for _ in 0..2 {
            assert_eq!(
                app.check_access(&tokens.access_token).unwrap_err().code,
                "expired_token"
            );
        }
        let fresh = app
            .refresh("local.abc", "cl1ent-s3cret", &tokens.refresh_token)
            .unwrap();
        assert!(app.check_access(&fresh.access_token).is_ok());
    }

    #[test]
    fn expired_and_unknown_tokens_are_told_apart() {
        let app = app();
        assert_eq!(app.check_access("x").unwrap_err().code, "invalid_token");
        let (_, tokens) = app.install("https://relay.test/install").unwrap();
        app.expire_access_tokens();
        assert_eq!(
            app.check_access(&tokens.access_token).unwrap_err().code,
            "expired_token"
        );
        app.revoke_refresh_tokens();
        assert_eq!(
            app.refresh("local.abc", "cl1ent-s3cret", &tokens.refresh_token)
                .unwrap_err()
                .code,
            "invalid_grant"
        );
        let shown = format!("{app:?} {tokens:?}");
        for secret in ["cl1ent-s3cret", &tokens.access_token, &tokens.refresh_token] {
            assert!(!shown.contains(secret), "{shown}");
        }
    }
}
