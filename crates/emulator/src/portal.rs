//! Building, starting and stopping one emulated portal.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::admin::Admin;
use crate::app::{AppConfig, Application, DEFAULT_TOKEN_LIFETIME};
use crate::error::StartError;
use crate::faults::Faults;
use crate::limits::{LimitConfig, Limits};
use crate::outbound::Outbound;
use crate::shared::{Shared, Webhook};
use crate::store::State;
use crate::store::seed::Seed;

/// Configures a portal; [`Portal::builder`] starts here.
#[derive(Debug)]
pub struct PortalBuilder {
    domain: String,
    listen: SocketAddr,
    webhooks: Vec<Webhook>,
    limits: LimitConfig,
    seed: Option<Value>,
    seed_file: Option<PathBuf>,
    tls: bool,
    delivery_timeout: Duration,
    app: Option<AppConfig>,
    token_lifetime: Duration,
    member_id: Option<String>,
}

impl Default for PortalBuilder {
    fn default() -> Self {
        Self {
            domain: "portal.test".into(),
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            webhooks: Vec::new(),
            limits: LimitConfig::default(),
            seed: None,
            seed_file: None,
            tls: false,
            delivery_timeout: Duration::from_secs(10),
            app: None,
            token_lifetime: DEFAULT_TOKEN_LIFETIME,
            member_id: None,
        }
    }
}

impl PortalBuilder {
    /// The portal's name as events report it (`auth[domain]`).
    pub fn domain(mut self, domain: &str) -> Self {
        self.domain = domain.to_string();
        self
    }

    /// The portal's `member_id` (in events, installs and rule runs);
    /// random (32 hex digits, as Bitrix24's) when not set.
    pub fn member_id(mut self, member_id: &str) -> Self {
        self.member_id = Some(member_id.to_string());
        self
    }

    /// Adds an incoming webhook `/rest/USER_ID/SECRET/` with these scopes.
    pub fn webhook(mut self, user_id: i64, secret: &str, scopes: &[&str]) -> Self {
        self.webhooks.push(Webhook::new(user_id, secret, scopes));
        self
    }

    /// Registers a local application (`client_id` like `local.5f3e...`) with
    /// the scopes its form grants; install it with [`Admin::install_application`].
    pub fn application(mut self, client_id: &str, client_secret: &str, scopes: &[&str]) -> Self {
        self.app = Some(AppConfig {
            client_id: client_id.to_string(),
            client_secret: client_secret.to_string(),
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            token_lifetime: DEFAULT_TOKEN_LIFETIME,
        });
        self
    }

    /// How long the application's access tokens live (3600 s by default).
    pub fn token_lifetime(mut self, lifetime: Duration) -> Self {
        self.token_lifetime = lifetime;
        self
    }

    /// Leaky bucket: `burst` requests, drained `drain_per_sec` per second.
    pub fn rate_limit(mut self, burst: u32, drain_per_sec: f64) -> Self {
        self.limits.burst = burst;
        self.limits.drain_per_sec = drain_per_sec;
        self
    }

    /// Operating-time budget per method and webhook (480 s by default).
    pub fn operating_limit(mut self, limit: Duration) -> Self {
        self.limits.operating_limit = limit;
        self
    }

    /// How long one request may take before a 504 (60 s, as the cloud).
    pub fn request_time_limit(mut self, limit: Duration) -> Self {
        self.limits.request_time_limit = limit;
        self
    }

    pub fn seed(mut self, seed: Value) -> Self {
        self.seed = Some(seed);
        self
    }

    pub fn seed_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.seed_file = Some(path.into());
        self
    }

    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.listen = addr;
        self
    }

    /// Serves HTTPS with a fresh self-signed certificate ([`Portal::certificate_pem`]).
    pub fn tls_self_signed(mut self) -> Self {
        self.tls = true;
        self
    }

    /// How long an outbound delivery may take before it counts as failed.
    pub fn delivery_timeout(mut self, timeout: Duration) -> Self {
        self.delivery_timeout = timeout;
        self
    }

    fn load_seed(&self) -> Result<Seed, StartError> {
        let value = match (&self.seed, &self.seed_file) {
            (Some(_), Some(_)) => {
                return Err(StartError::Config(
                    "give seed data or a seed file, not both".into(),
                ));
            }
            (Some(value), None) => value.clone(),
            (None, Some(path)) => {
                let text =
                    std::fs::read_to_string(path).map_err(|source| StartError::SeedRead {
                        path: path.clone(),
                        source,
                    })?;
                serde_json::from_str(&text)
                    .map_err(|e| StartError::Seed(format!("{}: {e}", path.display())))?
            }
            (None, None) => return Ok(Seed::default()),
        };
        serde_json::from_value(value).map_err(|e| StartError::Seed(e.to_string()))
    }

    /// Binds the listener and starts serving.
    ///
    /// Installs the workspace's TLS provider (ring) as the process default
    /// if none is installed yet: the emulator plays portals in tests, and the
    /// clients those tests build need one, as the binaries install it at
    /// start-up. Without this a test passes or fails by which test of its
    /// file happened to install it first.
    pub async fn start(self) -> Result<Portal, StartError> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        if self.webhooks.is_empty() && self.app.is_none() {
            return Err(StartError::Config(
                "at least one webhook or an application is needed".into(),
            ));
        }
        let app = self.app.clone().map(|mut config| {
            config.token_lifetime = self.token_lifetime;
            Application::new(config)
        });
        if !(self.limits.drain_per_sec.is_finite() && self.limits.drain_per_sec >= 0.0)
            || self.limits.burst == 0
        {
            return Err(StartError::Config(
                "the rate limit needs a burst above 0 and a non-negative drain rate".into(),
            ));
        }
        let seed = self.load_seed()?;
        let state = State::from_seed(&seed).map_err(StartError::Seed)?;
        let tls = if self.tls {
            Some(crate::tls::self_signed()?)
        } else {
            None
        };
        let listener = TcpListener::bind(self.listen)
            .await
            .map_err(|source| StartError::Bind {
                addr: self.listen,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| StartError::Bind {
            addr: self.listen,
            source,
        })?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        let base_url = format!("{scheme}://{addr}");
        let member_id = self
            .member_id
            .clone()
            .unwrap_or_else(|| format!("{:032x}", rand::random::<u128>()));
        let shared = Arc::new(Shared {
            domain: self.domain,
            member_id,
            base_url: base_url.clone(),
            webhooks: self.webhooks,
            store: Mutex::new(state),
            limits: Limits::new(self.limits),
            faults: Faults::default(),
            requests: Mutex::new(Default::default()),
            limit_refusals: Default::default(),
            outbound: Outbound::new(seed.handlers.clone(), self.delivery_timeout),
            app,
        });
        let cancel = CancellationToken::new();
        let acceptor = tls.as_ref().map(|t| t.acceptor.clone());
        let server = tokio::spawn(crate::server::serve(
            listener,
            Arc::clone(&shared),
            acceptor,
            cancel.clone(),
        ));
        tracing::info!(listen = %addr, domain = %shared.domain, "emulated portal listening");
        Ok(Portal {
            shared,
            addr,
            base_url,
            cancel,
            server: Some(server),
            certificate_pem: tls.map(|t| t.cert_pem),
        })
    }
}

/// A running emulated portal. Dropping it stops the listener; call
/// [`Portal::shutdown`] to also wait for in-flight work.
#[derive(Debug)]
pub struct Portal {
    shared: Arc<Shared>,
    addr: SocketAddr,
    base_url: String,
    cancel: CancellationToken,
    server: Option<JoinHandle<()>>,
    certificate_pem: Option<String>,
}

impl Portal {
    pub fn builder() -> PortalBuilder {
        PortalBuilder::default()
    }

    /// `http://127.0.0.1:PORT` (or `https://` with TLS).
    pub fn url(&self) -> &str {
        &self.base_url
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn domain(&self) -> &str {
        &self.shared.domain
    }

    /// `auth[member_id]` of this portal's outbound calls.
    pub fn member_id(&self) -> &str {
        &self.shared.member_id
    }

    /// `http://127.0.0.1:PORT/rest/USER_ID/SECRET/`
    pub fn webhook_url(&self, user_id: i64, secret: &str) -> String {
        format!("{}/rest/{user_id}/{secret}/", self.base_url)
    }

    /// `http://127.0.0.1:PORT/rest/`: the application's REST root
    /// (`auth[client_endpoint]`); calls add `?auth=ACCESS_TOKEN`.
    pub fn rest_url(&self) -> String {
        format!("{}/rest/", self.base_url)
    }

    /// `http://127.0.0.1:PORT/oauth/token/`: the emulated authorization
    /// server (what `https://oauth.bitrix.info/oauth/token/` is in the cloud).
    pub fn oauth_token_url(&self) -> String {
        format!("{}/oauth/token/", self.base_url)
    }

    /// The self-signed certificate (PEM) when serving HTTPS.
    pub fn certificate_pem(&self) -> Option<&str> {
        self.certificate_pem.as_deref()
    }

    /// Tests' control handle: counts, records, deliveries, limits.
    pub fn admin(&self) -> Admin {
        Admin::new(Arc::clone(&self.shared))
    }

    /// Fault switches (latency, errors, dropped responses, portal down).
    pub fn faults(&self) -> &Faults {
        &self.shared.faults
    }

    /// Stops accepting, closes connections, and waits (bounded) for
    /// outbound deliveries already started.
    pub async fn shutdown(mut self) {
        self.cancel.cancel();
        if let Some(server) = self.server.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), server).await;
        }
        self.shared.outbound.shutdown(Duration::from_secs(10)).await;
    }
}

impl Drop for Portal {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}
