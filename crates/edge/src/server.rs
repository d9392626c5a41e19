//! The running edge: configuration loaded into shared state, the serving
//! threads started (see [`crate::worker`]), background tasks (nodes
//! refresh, certificate watch, admin listener), and graceful shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use b24_nodes::{FetchError, FetchOptions, FetcherSet, LiveNodes, Schedule, run_refresh_loops};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::admit::RouteTable;
use crate::client_ip::TrustedProxies;
use crate::config::{ClientIpMode, Config};
use crate::denylog::DenyLog;
use crate::forward::{Forwarder, UpstreamSetupError};
use crate::listen::{InstanceLock, ListenError, bind_shared, claim};
use crate::metrics::Metrics;
use crate::slots::ConnectionSlots;
use crate::state::EdgeState;
use crate::tls::{CertStore, TlsError};
use crate::worker::{self, WorkerSetup};

/// Why the edge could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Tls(#[from] TlsError),
    // The cause is the source (printed by the error chain), not repeated
    // in the message.
    #[error("nodes source")]
    Nodes(#[from] FetchError),
    #[error("upstream")]
    Upstream(#[from] UpstreamSetupError),
    #[error("cannot listen on {addr}: {detail}")]
    Bind { addr: SocketAddr, detail: String },
    #[error("cannot start a worker thread: {0}")]
    Worker(String),
}

/// A started edge. Call [`EdgeHandle::shutdown`] to stop it gracefully;
/// dropping it stops it at once.
pub struct EdgeHandle {
    /// Released when the edge is gone.
    _locks: Vec<InstanceLock>,
    addrs: Vec<SocketAddr>,
    metrics_addr: Option<SocketAddr>,
    state: Arc<EdgeState>,
    stop_accepting: CancellationToken,
    stop_background: CancellationToken,
    workers_done: Vec<oneshot::Receiver<bool>>,
}

impl EdgeHandle {
    /// The addresses the TLS listeners are bound to (in `server.listen` order).
    pub fn addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    pub fn nodes(&self) -> &Arc<LiveNodes> {
        &self.state.nodes
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.state.metrics
    }

    /// Re-reads the certificate and key (SIGHUP). On error the current
    /// certificate stays in use.
    pub fn reload_tls(&self) -> Result<(), TlsError> {
        let result = self.state.certs.reload();
        note_reload(&self.state, &result);
        result
    }

    /// `Ok` when ready, else why not (what `/readyz` says).
    pub fn readiness(&self) -> Result<(), String> {
        crate::admin::readiness(&self.state)
    }

    /// Stops accepting, closes idle connections (h2: GOAWAY) at once, lets
    /// in-flight requests finish (at most `server.shutdown_timeout`), then
    /// stops everything. Returns whether every connection finished in time.
    pub async fn shutdown(mut self) -> bool {
        self.state.draining.store(true, Ordering::Relaxed);
        self.stop_accepting.cancel();
        let mut drained = true;
        for done in std::mem::take(&mut self.workers_done) {
            drained &= done.await.unwrap_or(false);
        }
        self.stop_background.cancel();
        drained
    }
}

impl Drop for EdgeHandle {
    fn drop(&mut self) {
        // Without a graceful shutdown (a test that failed half-way, say),
        // still stop every thread and task this edge started.
        self.stop_accepting.cancel();
        self.stop_background.cancel();
    }
}

fn note_reload(state: &EdgeState, result: &Result<(), TlsError>) {
    match result {
        Ok(()) => {
            state
                .metrics
                .certificate_expiry
                .set(state.certs.not_after());
            info!(not_after = state.certs.not_after(), "certificate reloaded");
        }
        Err(e) => {
            state.metrics.certificate_reload_failures.inc();
            warn!(error = %e, "certificate reload failed; keeping the current certificate");
        }
    }
}

/// Loads everything the configuration names, binds the listeners and starts
/// serving. Fails before serving anything if any part is unusable.
/// Background tasks (nodes refresh, certificate watch, admin listener) run
/// on the caller's runtime; requests are served by `server.workers` threads.
pub async fn start(config: Config) -> Result<EdgeHandle, StartError> {
    let certs = Arc::new(CertStore::open(
        &config.server.tls_cert,
        &config.server.tls_key,
    )?);
    let acceptor = TlsAcceptor::from(crate::tls::server_config(certs.clone())?);
    let metrics = Arc::new(Metrics::new());
    metrics.certificate_expiry.set(certs.not_after());
    let limits = &config.server.limits;
    for (gauge, value) in [
        (&metrics.max_connections, limits.max_connections),
        (&metrics.reserved_connections, limits.reserved_connections),
    ] {
        gauge.set(i64::try_from(value).unwrap_or(i64::MAX));
    }
    let routes = RouteTable::new(&config.routes, &config.nodes.extra, &metrics);

    let options = FetchOptions {
        limits: b24_nodes::Limits {
            allow_broad: config.nodes.allow_broad,
            allow_special: config.nodes.allow_special,
            ..b24_nodes::Limits::default()
        },
        ..FetchOptions::default()
    };
    let fetchers = FetcherSet::new(
        &config.nodes.sources,
        config.nodes.cache.as_deref(),
        options,
    )?;
    let nodes = Arc::new(LiveNodes::from_fetchers(fetchers.fetchers()));
    let workers = config.server.workers;
    let forwarders = (0..workers)
        .map(|_| Forwarder::new(&routes, &config.server.limits, metrics.clone()))
        .collect::<Result<Vec<_>, _>>()?;

    // Every worker gets its own socket on each address (SO_REUSEPORT). A
    // port 0 is resolved by the first bind and reused for the others.
    // Every fixed address is claimed (lock + probe) before any is bound, so
    // that the edge's own sockets never trip its probe.
    let bind_err = |addr: SocketAddr| {
        move |e: ListenError| StartError::Bind {
            addr,
            detail: e.to_string(),
        }
    };
    let mut locks = Vec::with_capacity(config.server.listen.len());
    for listener in &config.server.listen {
        if listener.addr.port() != 0 {
            locks.push(claim(listener.addr, true).map_err(bind_err(listener.addr))?);
        }
    }
    let mut addrs = Vec::with_capacity(config.server.listen.len());
    let mut per_worker: Vec<Vec<(std::net::TcpListener, ClientIpMode)>> =
        (0..workers).map(|_| Vec::new()).collect();
    for listener in &config.server.listen {
        let io_err = |e: std::io::Error| bind_err(listener.addr)(ListenError::Io(e));
        let first = bind_shared(listener.addr).map_err(io_err)?;
        let bound = first.local_addr().map_err(io_err)?;
        if listener.addr.port() == 0 {
            locks.push(claim(bound, false).map_err(bind_err(bound))?);
        }
        per_worker[0].push((first, listener.client_ip));
        for sockets in per_worker.iter_mut().skip(1) {
            sockets.push((bind_shared(bound).map_err(io_err)?, listener.client_ip));
        }
        addrs.push(bound);
    }
    let admin_listener = match config.server.metrics_listen {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .map_err(|e| StartError::Bind {
                    addr,
                    detail: e.to_string(),
                })?,
        ),
        None => None,
    };
    let metrics_addr = admin_listener
        .as_ref()
        .map(|l| l.local_addr().expect("a bound socket has an address"));

    let state = Arc::new(EdgeState {
        routes,
        nodes: nodes.clone(),
        trusted: TrustedProxies::new(&config.client_ip.trusted_proxies),
        refuse_before_tls: config.server.refuse_before_tls,
        metrics,
        certs: certs.clone(),
        deny_log: DenyLog::new(10),
        limits: config.server.limits.clone(),
        uses_nodes: config.uses_nodes(),
        draining: AtomicBool::new(false),
    });

    let stop_accepting = CancellationToken::new();
    let slots = Arc::new(ConnectionSlots::new(&state.limits));
    let mut workers_done = Vec::with_capacity(workers);
    for (index, (listeners, forwarder)) in per_worker.into_iter().zip(forwarders).enumerate() {
        let (done, done_rx) = oneshot::channel();
        let setup = WorkerSetup {
            state: state.clone(),
            forwarder,
            acceptor: acceptor.clone(),
            listeners,
            slots: slots.clone(),
            stop: stop_accepting.clone(),
            done,
        };
        if let Err(e) = worker::spawn(index, setup) {
            stop_accepting.cancel();
            return Err(StartError::Worker(e.to_string()));
        }
        workers_done.push(done_rx);
    }

    let stop_background = CancellationToken::new();
    if state.uses_nodes {
        let schedule = Schedule {
            interval: config.nodes.refresh,
            jitter: 0.1,
            file_poll: config.nodes.file_poll,
        };
        tokio::spawn(run_refresh_loops(
            fetchers.into_fetchers(),
            nodes,
            schedule,
            stop_background.clone(),
        ));
    }
    let watched_state = state.clone();
    tokio::spawn(crate::tls::watch_files(
        certs,
        config.server.tls_reload_poll,
        stop_background.clone(),
        move |result| note_reload(&watched_state, result),
    ));
    if let Some(listener) = admin_listener {
        tokio::spawn(crate::admin::serve(
            listener,
            state.clone(),
            stop_background.clone(),
        ));
    }
    info!(listen = ?addrs, metrics_listen = %metrics_addr.map_or_else(|| "none".to_owned(), |a| a.to_string()), workers, routes = config.routes.len(), "b24-edge started");
    Ok(EdgeHandle {
        _locks: locks,
        addrs,
        metrics_addr,
        state,
        stop_accepting,
        stop_background,
        workers_done,
    })
}
