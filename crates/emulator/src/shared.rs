//! What every part of one running portal shares: its identity, webhooks,
//! data, limits, fault switches, counters and outbound handlers.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};

use subtle::ConstantTimeEq;

use crate::app::Application;
use crate::faults::Faults;
use crate::limits::Limits;
use crate::outbound::Outbound;
use crate::store::State;

/// Who calls a REST method: an incoming webhook (`/rest/USER_ID/SECRET/`)
/// or the installed application acting for a user (`/rest/METHOD?auth=`).
#[derive(Clone)]
pub struct Webhook {
    pub user_id: i64,
    secret: String,
    pub scopes: Vec<String>,
    /// Application context: `bizproc.robot.*` and `event.*` work only here.
    pub application: bool,
    /// The access token an application called with (file links carry it).
    pub access_token: Option<String>,
}

impl Webhook {
    pub fn new(user_id: i64, secret: &str, scopes: &[&str]) -> Self {
        Self {
            user_id,
            secret: secret.to_string(),
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            application: false,
            access_token: None,
        }
    }

    /// The application calling as `user_id` with its granted scopes.
    pub fn application(user_id: i64, scopes: &[String]) -> Self {
        Self {
            user_id,
            secret: String::new(),
            scopes: scopes.to_vec(),
            application: true,
            access_token: None,
        }
    }

    pub fn secret_matches(&self, candidate: &str) -> bool {
        self.secret.as_bytes().ct_eq(candidate.as_bytes()).into()
    }

    pub fn secret(&self) -> &str {
        &self.secret
    }

    pub fn has_scope(&self, scope: &str) -> bool {
        scope.is_empty() || self.scopes.iter().any(|s| s == scope)
    }

    /// `/rest/1/SECRET`, the prefix of every URL this webhook calls; an
    /// application calls `/rest` and adds `auth=TOKEN` itself.
    pub fn auth_path(&self) -> String {
        if self.application {
            "/rest".to_string()
        } else {
            format!("/rest/{}/{}", self.user_id, self.secret)
        }
    }
}

impl std::fmt::Debug for Webhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhook")
            .field("user_id", &self.user_id)
            .field("secret", &"[redacted]")
            .field("scopes", &self.scopes)
            .field("application", &self.application)
            .finish()
    }
}

#[derive(Debug)]
pub struct Shared {
    pub domain: String,
    /// Stable per portal, as `auth[member_id]` in event payloads.
    pub member_id: String,
    pub base_url: String,
    pub webhooks: Vec<Webhook>,
    pub store: Mutex<State>,
    pub limits: Limits,
    pub faults: Faults,
    /// HTTP requests per REST method (batch counts once, as `batch`).
    pub requests: Mutex<BTreeMap<String, u64>>,
    /// Requests refused with QUERY_LIMIT_EXCEEDED by the leaky bucket
    /// (not injected faults).
    pub limit_refusals: std::sync::atomic::AtomicU64,
    pub outbound: Outbound,
    /// The local application, when the portal was built with one.
    pub app: Option<Application>,
}

impl Shared {
    /// The data lock; a panic while holding it must not wedge the portal.
    pub fn store(&self) -> MutexGuard<'_, State> {
        self.store.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn count_request(&self, method: &str) {
        let mut counts = self.requests.lock().unwrap_or_else(|e| e.into_inner());
        *counts.entry(method.to_string()).or_insert(0) += 1;
    }

    pub fn webhook(&self, user_id: &str, secret: &str) -> Option<&Webhook> {
        let user_id: i64 = user_id.parse().ok()?;
        self.webhooks
            .iter()
            .find(|w| w.user_id == user_id && w.secret_matches(secret))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_never_shows_the_secret() {
        let hook = Webhook::new(1, "s3cr3t-value", &["crm"]);
        let text = format!("{hook:?}");
        assert!(!text.contains("s3cr3t-value"), "{text}");
        assert!(hook.secret_matches("s3cr3t-value"));
        assert!(!hook.secret_matches("s3cr3t-valuX"));
    }
}
