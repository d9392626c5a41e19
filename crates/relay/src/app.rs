//! A running relay: store, portals, intake listener, metrics listener and
//! workers, started together and stopped together.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, StoreLocation};
use crate::intake::Intake;
use crate::metrics::Metrics;
use crate::portals::Portals;
use crate::store::{Store, StoreError, StoreOptions};
use crate::transfer::Transfer;
use crate::worker::Workers;

/// Why the relay could not start. A cause is the error's `source()` (the
/// chain prints it), never repeated in the message.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("opening the store {path}")]
    Store { path: String, source: StoreError },
    #[error("portal clients")]
    Client(#[from] b24_client::Error),
    #[error("another `b24-relay serve` already uses {path} (one serving process per SQLite store)")]
    Locked { path: String },
    #[error("cannot lock {path}")]
    Lock {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot listen on {addr}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// The shared parts every command builds on.
pub struct Parts {
    pub config: Arc<Config>,
    pub store: Store,
    pub metrics: Arc<Metrics>,
    pub transfer: Arc<Transfer>,
}

impl Parts {
    pub async fn open(config: Config) -> Result<Self, StartError> {
        let options = StoreOptions {
            max_interruptions: config.max_interruptions,
            ..StoreOptions::default()
        };
        let store = Store::open(&config.store, options)
            .await
            .map_err(|source| StartError::Store {
                path: config.store.location.to_string(),
                source,
            })?;
        let config = Arc::new(config);
        let metrics = Arc::new(Metrics::new());
        let shared = store.shared_budget(config.store.rate_scope);
        let portals = Arc::new(Portals::new(&config, metrics.clone(), shared)?);
        for (_, portal) in portals.iter() {
            if let Err(error) =
                crate::application::connect_installed(portal, &config.app, &store).await
            {
                tracing::error!(portal = %portal.config.name, %error, "cannot use the installed application");
            }
        }
        let transfer = Arc::new(Transfer {
            config: config.clone(),
            portals,
            store: store.clone(),
        });
        Ok(Self {
            config,
            store,
            metrics,
            transfer,
        })
    }
}

/// A started relay; [`Relay::shutdown`] stops it.
pub struct Relay {
    pub addr: SocketAddr,
    pub metrics_addr: Option<SocketAddr>,
    pub metrics: Arc<Metrics>,
    pub store: Store,
    stop: CancellationToken,
    tasks: JoinSet<()>,
    /// Held while serving from SQLite: released jobs assume a single server
    /// (PostgreSQL replicas share the work through leases instead).
    _lock: Option<std::fs::File>,
}

impl Relay {
    /// Opens the store, makes jobs left running by a previous process due
    /// again (one serving process per SQLite file; with PostgreSQL any
    /// number of replicas), binds the listeners and starts the workers.
    pub async fn start(config: Config) -> Result<Self, StartError> {
        let lock = match &config.store.location {
            StoreLocation::Sqlite(path) => Some(lock_store(path)?),
            StoreLocation::Postgres(_) => None,
        };
        let parts = Parts::open(config).await?;
        let released = parts
            .store
            .release_running()
            .await
            .map_err(|source| StartError::Store {
                path: parts.config.store.location.to_string(),
                source,
            })?;
        if released > 0 {
            tracing::info!(
                released,
                "jobs left running by the previous process are due again"
            );
        }
        let listener = bind(parts.config.listen).await?;
        let addr = listener.local_addr().map_err(|source| StartError::Bind {
            addr: parts.config.listen,
            source,
        })?;
        let metrics_listener = match parts.config.metrics_listen {
            Some(metrics_addr) => Some(bind(metrics_addr).await?),
            None => None,
        };
        let metrics_addr = metrics_listener.as_ref().and_then(|l| l.local_addr().ok());
        let stop = CancellationToken::new();
        let wake = Arc::new(Notify::new());
        let mut tasks = JoinSet::new();
        let intake = Arc::new(Intake {
            config: parts.config.clone(),
            store: parts.store.clone(),
            metrics: parts.metrics.clone(),
            wake: wake.clone(),
            portals: parts.transfer.portals.clone(),
            public_url: parts
                .config
                .app
                .public_url
                .clone()
                .unwrap_or_else(|| format!("http://{addr}")),
        });
        tasks.spawn(serve_http(listener, stop.clone(), move |request| {
            let intake = Arc::clone(&intake);
            async move { intake.handle(request).await }
        }));
        if let Some(listener) = metrics_listener {
            let metrics = parts.metrics.clone();
            tasks.spawn(serve_http(listener, stop.clone(), move |request| {
                let metrics = Arc::clone(&metrics);
                async move { metrics_page(&metrics, &request) }
            }));
        }
        let workers = Arc::new(Workers {
            transfer: parts.transfer.clone(),
            metrics: parts.metrics.clone(),
            wake,
        });
        let count = parts.config.workers;
        tasks.spawn(workers.run(count, stop.clone()));
        // Rule runs that ended while the application could not answer
        // (before this start's credentials, or a re-install).
        for (_, portal) in parts.transfer.portals.iter() {
            if portal.app_client().is_some() {
                let (config, portal) = (parts.config.clone(), portal.clone());
                let (store, metrics) = (parts.store.clone(), parts.metrics.clone());
                tasks.spawn(async move {
                    crate::application::answer_finished_calls(
                        &config, &portal, &store, &metrics, None,
                    )
                    .await
                });
            }
        }
        if parts.store.shared_by_replicas() {
            let (store, stop) = (parts.store.clone(), stop.clone());
            let sizes: Vec<(String, f64)> = parts
                .config
                .portals
                .values()
                .map(|p| {
                    let burst = p.rate.burst - crate::portals::headroom(p.rate.burst);
                    (p.webhook.portal(), f64::from(burst))
                })
                .collect();
            tasks.spawn(announce_replica(store, parts.metrics.clone(), sizes, stop));
        }
        tracing::info!(listen = %addr, metrics_listen = %metrics_addr.map_or_else(|| "none".to_owned(), |a| a.to_string()), workers = count, replica = parts.store.replica_name(), "b24-relay serving");
        Ok(Self {
            addr,
            metrics_addr,
            metrics: parts.metrics,
            store: parts.store,
            stop,
            tasks,
            _lock: lock,
        })
    }

    /// Stops accepting and working; transfers in flight are abandoned and
    /// run again on the next start (each step is safe to repeat).
    pub async fn shutdown(mut self) {
        self.stop.cancel();
        let all = async { while self.tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(Duration::from_secs(10), all)
            .await
            .is_err()
        {
            self.tasks.abort_all();
        }
        // What is queued is written and the WAL checkpointed.
        self.store.close().await;
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Keeps this replica in the store's replica list while it serves, and
/// the shared rate budgets in the metrics.
async fn announce_replica(
    store: Store,
    metrics: Arc<Metrics>,
    sizes: Vec<(String, f64)>,
    stop: CancellationToken,
) {
    loop {
        if let Err(error) = store.replica_alive().await {
            tracing::warn!(%error, "cannot record this replica in the store");
        }
        if let Ok(budgets) = store.budgets().await {
            for (host, level) in budgets {
                let size = sizes
                    .iter()
                    .find(|(h, _)| *h == host)
                    .map_or(0.0, |(_, size)| *size);
                metrics.set_shared_budget(&host, level, size);
            }
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
    }
    let _ = store.replica_gone().await;
}

/// An exclusive lock (`flock`) on `<store>.lock`, released when the
/// process ends (also by SIGKILL).
fn lock_store(store: &std::path::Path) -> Result<std::fs::File, StartError> {
    let path = format!("{}.lock", store.display());
    let failed = |error: std::io::Error| match error.kind() {
        // Said as the store's problem: it cannot be written either.
        std::io::ErrorKind::ReadOnlyFilesystem | std::io::ErrorKind::PermissionDenied => {
            StartError::Store {
                path: store.display().to_string(),
                source: StoreError::ReadOnly {
                    path: store.display().to_string(),
                    why: format!("its directory: {error}; the lock file {path} cannot be created"),
                },
            }
        }
        _ => StartError::Lock {
            path: path.clone(),
            source: error,
        },
    };
    if let Some(dir) = store.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(failed)?;
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(failed)?;
    use rustix::fs::{FlockOperation, flock};
    match flock(&file, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(file),
        Err(errno) if errno == rustix::io::Errno::WOULDBLOCK => Err(StartError::Locked { path }),
        Err(errno) => Err(failed(errno.into())),
    }
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { addr, source })
}

fn metrics_page(metrics: &Metrics, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    let (status, body, kind) = match request.uri().path() {
        "/metrics" => (
            StatusCode::OK,
            metrics.render(),
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        ),
        "/healthz" => (StatusCode::OK, "ok\n".to_owned(), "text/plain"),
        _ => (
            StatusCode::NOT_FOUND,
            "not found\n".to_owned(),
            "text/plain",
        ),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, header::HeaderValue::from_static(kind));
    response
}

/// HTTP/1.1 accept loop with keep-alive; connections end with `stop`.
async fn serve_http<F, Fut>(listener: TcpListener, stop: CancellationToken, handler: F)
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let mut connections = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, _) = match accepted {
            Ok(pair) => pair,
            Err(error) => {
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let handler = handler.clone();
        let stop = stop.clone();
        connections.spawn(async move {
            let service = service_fn(move |request| {
                let handler = handler.clone();
                async move { Ok::<_, Infallible>(handler(request).await) }
            });
            let connection = http1::Builder::new()
                .header_read_timeout(Duration::from_secs(10))
                .timer(hyper_util::rt::TokioTimer::new())
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => {}
                _ = stop.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(Duration::from_secs(5), connection).await;
                }
            }
        });
        while connections.try_join_next().is_some() {}
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while connections.join_next().await.is_some() {}
    })
    .await;
}
