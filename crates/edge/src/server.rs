//! The running edge: listeners, the per-connection path (PROXY header, TLS,
//! HTTP/1.1 or h2), the per-request path (client address → route decision →
//! forward or 403), background tasks, and graceful shutdown.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use b24_nodes::{FetchError, FetchOptions, Fetcher, LiveNodes, Schedule, run_refresh_loop};
use http::{Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::client_ip::{TrustedProxies, canonical, read_proxy_header};
use crate::config::{Config, Limits};
use crate::denylog::DenyLog;
use crate::metrics::Metrics;
use crate::proxy::{EdgeBody, Forwarded, Forwarder, UpstreamSetupError, text_body};
use crate::routes::RouteTable;
use crate::tls::{CertStore, TlsError};

/// Why the edge could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("nodes source: {0}")]
    Nodes(#[from] FetchError),
    #[error("upstream: {0}")]
    Upstream(#[from] UpstreamSetupError),
    #[error("cannot listen on {addr}: {detail}")]
    Bind { addr: SocketAddr, detail: String },
}

/// What every connection and request handler shares.
pub struct EdgeState {
    pub(crate) routes: RouteTable,
    route_labels: Vec<String>,
    forwarder: Forwarder,
    pub(crate) nodes: Arc<LiveNodes>,
    trusted: TrustedProxies,
    proxy_protocol: bool,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) certs: Arc<CertStore>,
    deny_log: DenyLog,
    limits: Limits,
    pub(crate) uses_nodes: bool,
    pub(crate) draining: AtomicBool,
}

/// A started edge. Dropping it does not stop it; call [`EdgeHandle::shutdown`].
pub struct EdgeHandle {
    addrs: Vec<SocketAddr>,
    metrics_addr: Option<SocketAddr>,
    state: Arc<EdgeState>,
    stop_accepting: CancellationToken,
    stop_background: CancellationToken,
    accept_tasks: Vec<JoinHandle<()>>,
    graceful: Arc<GracefulShutdown>,
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
    pub async fn shutdown(self) -> bool {
        self.state.draining.store(true, Ordering::Relaxed);
        self.stop_accepting.cancel();
        for task in self.accept_tasks {
            let _ = task.await;
        }
        let graceful = Arc::try_unwrap(self.graceful)
            .unwrap_or_else(|_| unreachable!("only the accept loops hold the shutdown handle"));
        let drained = tokio::time::timeout(self.state.limits.shutdown_timeout, graceful.shutdown())
            .await
            .is_ok();
        self.stop_background.cancel();
        drained
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
pub async fn start(config: Config) -> Result<EdgeHandle, StartError> {
    b24_nodes::install_crypto_provider();
    let certs = Arc::new(CertStore::open(
        &config.server.tls_cert,
        &config.server.tls_key,
    )?);
    let acceptor = TlsAcceptor::from(crate::tls::server_config(certs.clone())?);
    let metrics = Arc::new(Metrics::new());
    metrics.certificate_expiry.set(certs.not_after());

    let fetcher = Fetcher::new(
        config.nodes.source.clone(),
        config.nodes.cache.clone(),
        FetchOptions::default(),
    )?;
    let nodes = Arc::new(LiveNodes::from_fetcher(&fetcher));
    let forwarder = Forwarder::new(&config.routes, &config.server.limits)?;

    let mut listeners = Vec::with_capacity(config.server.listen.len());
    for addr in &config.server.listen {
        listeners.push(bind(*addr).await?);
    }
    let admin_listener = match config.server.metrics_listen {
        Some(addr) => Some(bind(addr).await?),
        None => None,
    };
    let addrs: Vec<SocketAddr> = listeners
        .iter()
        .map(|l| l.local_addr().expect("a bound socket has an address"))
        .collect();
    let metrics_addr = admin_listener
        .as_ref()
        .map(|l| l.local_addr().expect("a bound socket has an address"));

    let state = Arc::new(EdgeState {
        routes: RouteTable::new(&config.routes, &config.nodes.extra),
        route_labels: config.routes.iter().map(|r| r.prefix.clone()).collect(),
        forwarder,
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

    let http = http_builder(&state.limits);
    let graceful = Arc::new(GracefulShutdown::new());
    let stop_accepting = CancellationToken::new();
    let permits = Arc::new(Semaphore::new(state.limits.max_connections));
    let accept_tasks = listeners
        .into_iter()
        .map(|listener| {
            tokio::spawn(accept_loop(
                listener,
                AcceptContext {
                    conn: ConnContext {
                        state: state.clone(),
                        acceptor: acceptor.clone(),
                        http: http.clone(),
                    },
                    permits: permits.clone(),
                    graceful: graceful.clone(),
                },
                stop_accepting.clone(),
            ))
        })
        .collect();
    info!(listen = ?addrs, metrics = ?metrics_addr, routes = config.routes.len(), "b24-edge started");
    Ok(EdgeHandle {
        addrs,
        metrics_addr,
        state,
        stop_accepting,
        stop_background,
        accept_tasks,
        graceful,
    })
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr).await.map_err(|e| StartError::Bind {
        addr,
        detail: e.to_string(),
    })
}

fn http_builder(limits: &Limits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(250);
    builder
}

/// What each connection's task needs.
#[derive(Clone)]
struct ConnContext {
    state: Arc<EdgeState>,
    acceptor: TlsAcceptor,
    http: auto::Builder<TokioExecutor>,
}

/// What an accept loop needs. The shutdown handle stays here: connection
/// tasks get a watcher, so that [`EdgeHandle::shutdown`] can own it again.
struct AcceptContext {
    conn: ConnContext,
    permits: Arc<Semaphore>,
    graceful: Arc<GracefulShutdown>,
}

async fn accept_loop(listener: TcpListener, ctx: AcceptContext, stop: CancellationToken) {
    loop {
        // Wait for a free slot before accepting: over the limit, clients
        // queue in the kernel's backlog instead of being served badly.
        let permit = tokio::select! {
            permit = ctx.permits.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
            _ = stop.cancelled() => return,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: pause, don't spin.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.cancelled() => return,
        };
        let watcher = ctx.graceful.watcher();
        tokio::spawn(serve_connection(
            ctx.conn.clone(),
            stream,
            peer,
            watcher,
            permit,
        ));
    }
}

/// Keeps the open-connections gauge right however the task ends.
struct OpenConnection(Arc<Metrics>);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.open_connections.dec();
    }
}

async fn serve_connection(
    ctx: ConnContext,
    mut stream: TcpStream,
    peer: SocketAddr,
    watcher: Watcher,
    _permit: OwnedSemaphorePermit,
) {
    let state = ctx.state;
    state.metrics.open_connections.inc();
    let _open = OpenConnection(state.metrics.clone());
    let _ = stream.set_nodelay(true);
    let peer_ip = canonical(peer.ip());
    let header_timeout = state.limits.header_timeout;

    // A PROXY header is read only from trusted peers; from anyone else the
    // first bytes must be a TLS handshake.
    let mut hop = peer_ip;
    if state.proxy_protocol && state.trusted.contains(peer_ip) {
        match tokio::time::timeout(header_timeout, read_proxy_header(&mut stream)).await {
            Ok(Ok(Some(source))) => hop = canonical(source.ip()),
            Ok(Ok(None)) => {}
            Ok(Err(e)) => {
                debug!(%peer, error = %e, "PROXY header rejected");
                state.metrics.tls_handshake_failures.inc();
                return;
            }
            Err(_) => {
                debug!(%peer, "no PROXY header in time");
                state.metrics.tls_handshake_failures.inc();
                return;
            }
        }
    }

    let tls = match tokio::time::timeout(header_timeout, ctx.acceptor.accept(stream)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            debug!(%peer, error = %e, "TLS handshake failed");
            state.metrics.tls_handshake_failures.inc();
            return;
        }
        Err(_) => {
            debug!(%peer, "TLS handshake timed out");
            state.metrics.tls_handshake_failures.inc();
            return;
        }
    };

    let hop_trusted = state.trusted.contains(hop);
    let service_state = state.clone();
    let service = service_fn(move |req| {
        let state = service_state.clone();
        async move { Ok::<_, Infallible>(handle(&state, req, hop, hop_trusted).await) }
    });
    let conn = ctx.http.serve_connection(TokioIo::new(tls), service);
    if let Err(e) = watcher.watch(conn.into_owned()).await {
        debug!(%peer, error = %e, "connection ended with an error");
    }
}

/// One request: decide, then forward or refuse.
async fn handle(
    state: &EdgeState,
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
            match state.forwarder.forward(route, req, &who).await {
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
            short_response(StatusCode::FORBIDDEN, "forbidden\n")
        }
    };
    state
        .metrics
        .record_request(label, response.status().as_u16(), started.elapsed());
    response
}

fn short_response(status: StatusCode, body: &'static str) -> Response<EdgeBody> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(text_body(body))
        .expect("static response parts are valid")
}
