//! The running edge: configuration loaded into shared state, the serving
//! threads started (see [`crate::worker`]), background tasks (nodes
//! refresh, certificate watch, admin listener), the per-request decision,
//! and graceful shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use b24_nodes::{FetchError, FetchOptions, Fetcher, LiveNodes, Schedule, run_refresh_loop};
use http::{Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, oneshot};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::client_ip::TrustedProxies;
use crate::config::{Config, Limits};
use crate::denylog::DenyLog;
use crate::metrics::Metrics;
use crate::proxy::{EdgeBody, Forwarded, Forwarder, UpstreamSetupError, text_body};
use crate::routes::RouteTable;
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

/// What every worker and request handler shares (read-mostly; counters and
/// the nodes list are lock-free).
pub(crate) struct EdgeState {
    pub(crate) routes: RouteTable,
    route_labels: Vec<String>,
    pub(crate) nodes: Arc<LiveNodes>,
    pub(crate) trusted: TrustedProxies,
    pub(crate) proxy_protocol: bool,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) certs: Arc<CertStore>,
    deny_log: DenyLog,
    pub(crate) limits: Limits,
    pub(crate) uses_nodes: bool,
    pub(crate) draining: AtomicBool,
}

/// A started edge. Call [`EdgeHandle::shutdown`] to stop it gracefully;
/// dropping it stops it at once.
pub struct EdgeHandle {
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

    /// Stops accepting, lets in-flight requests finish (at most
    /// `server.shutdown_timeout`), then stops everything. Returns whether
    /// every connection finished in time.
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
    let route_prefixes: Vec<String> = config.routes.iter().map(|r| r.prefix.clone()).collect();
    let metrics = Arc::new(Metrics::new(&route_prefixes));
    metrics.certificate_expiry.set(certs.not_after());

    let fetcher = Fetcher::new(
        config.nodes.source.clone(),
        config.nodes.cache.clone(),
        FetchOptions::default(),
    )?;
    let nodes = Arc::new(LiveNodes::from_fetcher(&fetcher));
    let workers = config.server.workers;
    let forwarders = (0..workers)
        .map(|_| Forwarder::new(&config.routes, &config.server.limits))
        .collect::<Result<Vec<_>, _>>()?;

    // Every worker gets its own socket on each address (SO_REUSEPORT). A
    // port 0 is resolved by the first bind and reused for the others.
    let mut addrs = Vec::with_capacity(config.server.listen.len());
    let mut per_worker: Vec<Vec<std::net::TcpListener>> =
        (0..workers).map(|_| Vec::new()).collect();
    for requested in &config.server.listen {
        let bind_err = |e: std::io::Error| StartError::Bind {
            addr: *requested,
            detail: e.to_string(),
        };
        let first = worker::bind_shared(*requested).map_err(bind_err)?;
        let bound = first.local_addr().map_err(bind_err)?;
        per_worker[0].push(first);
        for sockets in per_worker.iter_mut().skip(1) {
            sockets.push(worker::bind_shared(bound).map_err(bind_err)?);
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
        routes: RouteTable::new(&config.routes, &config.nodes.extra),
        route_labels: route_prefixes,
        nodes: nodes.clone(),
        trusted: TrustedProxies::new(&config.client_ip.trusted_proxies),
        proxy_protocol: config.client_ip.proxy_protocol,
        metrics,
        certs: certs.clone(),
        deny_log: DenyLog::new(10),
        limits: config.server.limits.clone(),
        uses_nodes: config.uses_nodes(),
        draining: AtomicBool::new(false),
    });

    let stop_accepting = CancellationToken::new();
    let permits = Arc::new(Semaphore::new(state.limits.max_connections));
    let mut workers_done = Vec::with_capacity(workers);
    for (index, (listeners, forwarder)) in per_worker.into_iter().zip(forwarders).enumerate() {
        let (done, done_rx) = oneshot::channel();
        let setup = WorkerSetup {
            state: state.clone(),
            forwarder,
            acceptor: acceptor.clone(),
            listeners,
            permits: permits.clone(),
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
        tokio::spawn(run_refresh_loop(
            fetcher,
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
    info!(listen = ?addrs, metrics_listen = ?metrics_addr, workers, routes = config.routes.len(), "b24-edge started");
    Ok(EdgeHandle {
        addrs,
        metrics_addr,
        state,
        stop_accepting,
        stop_background,
        workers_done,
    })
}

/// One request: decide, then forward or refuse.
pub(crate) async fn handle(
    state: &EdgeState,
    forwarder: &Forwarder,
    req: Request<Incoming>,
    hop: std::net::IpAddr,
    hop_trusted: bool,
) -> Response<EdgeBody> {
    let started = Instant::now();
    let client = if hop_trusted {
        state.trusted.client_address(hop, req.headers())
    } else {
        hop
    };
    let (route, decision) = state.routes.decide(req.uri().path(), client, &state.nodes);
    let label = route.map_or("none", |index| state.route_labels[index].as_str());
    let response = match (route, decision) {
        (Some(route), Ok(())) => {
            let who = Forwarded {
                client,
                hop,
                hop_trusted,
            };
            match forwarder.forward(route, req, &who).await {
                Ok(response) => response,
                Err(e) => {
                    if let Some(kind) = e.metric_kind() {
                        state.metrics.record_upstream_error(label, kind);
                        warn!(route = label, error = %e, "forwarding failed");
                    }
                    short_response(e.status(), e.body())
                }
            }
        }
        (_, decision) => {
            let reason = decision.err().unwrap_or(crate::routes::DenyReason::NoRoute);
            state.metrics.record_denial(reason);
            state.deny_log.denied(client, reason, label);
            let version = req.version();
            let mut response = short_response(StatusCode::FORBIDDEN, "forbidden\n");
            if !drain_refused_body(req.into_body()).await && version < http::Version::HTTP_2 {
                response.headers_mut().insert(
                    header::CONNECTION,
                    header::HeaderValue::from_static("close"),
                );
            }
            response
        }
    };
    state
        .metrics
        .record_request(route, response.status().as_u16(), started.elapsed());
    response
}

/// The most of a refused request's body the edge reads before answering.
const REFUSED_BODY_DRAIN: usize = 64 * 1024;
/// How long it waits for that body.
const REFUSED_BODY_WAIT: Duration = Duration::from_secs(2);

/// Reads and discards a refused request's body, up to a bound, so that the
/// 403 arrives cleanly: answering before the body is read makes an HTTP/2
/// peer see its stream reset (curl: "Stream error in the HTTP/2 framing
/// layer") and an HTTP/1.1 peer its connection reset. Returns false when the
/// body was larger or slower than the bound; the answer then goes out anyway
/// and an HTTP/1.1 connection is closed after it.
async fn drain_refused_body(mut body: Incoming) -> bool {
    let drain = async {
        let mut seen = 0usize;
        while let Some(frame) = body.frame().await {
            let Ok(frame) = frame else { return false };
            if let Some(data) = frame.data_ref() {
                seen += data.len();
                if seen > REFUSED_BODY_DRAIN {
                    return false;
                }
            }
        }
        true
    };
    tokio::time::timeout(REFUSED_BODY_WAIT, drain)
        .await
        .unwrap_or(false)
}

fn short_response(status: StatusCode, body: &'static str) -> Response<EdgeBody> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(text_body(body))
        .expect("static response parts are valid")
}
