//! The serving threads. Like nginx's workers, each thread runs its own
//! single-threaded runtime with its own listening sockets (SO_REUSEPORT, so
//! the kernel spreads connections between them) and its own pool of
//! upstream connections: a request is handled start to finish on one
//! thread, with no cross-thread wake-ups on the hot path.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::client_ip::{canonical, read_proxy_header};
use crate::config::Limits;
use crate::metrics::Metrics;
use crate::proxy::Forwarder;
use crate::server::{EdgeState, handle};

/// Binds a listening socket that other workers may bind too.
pub(crate) fn bind_shared(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(true)?;
    socket.bind(addr)?;
    // `listen` registers with the current runtime; hand the socket over as
    // a plain one so that the worker's runtime can register it instead.
    socket.listen(1024)?.into_std()
}

/// What a worker thread is given.
pub(crate) struct WorkerSetup {
    pub state: Arc<EdgeState>,
    pub forwarder: Forwarder,
    pub acceptor: TlsAcceptor,
    pub listeners: Vec<std::net::TcpListener>,
    pub permits: Arc<Semaphore>,
    pub stop: CancellationToken,
    /// Sends whether every connection finished within the shutdown timeout.
    pub done: oneshot::Sender<bool>,
}

/// Starts one worker thread. It serves until `stop` is cancelled, then
/// drains its connections and reports through `done`.
pub(crate) fn spawn(index: usize, setup: WorkerSetup) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name(format!("b24-edge-worker-{index}"))
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(e) => {
                    warn!(error = %e, "cannot start a worker runtime");
                    let _ = setup.done.send(false);
                    return;
                }
            };
            runtime.block_on(run(setup));
        })
        .map(|_| ())
}

async fn run(setup: WorkerSetup) {
    let WorkerSetup {
        state,
        forwarder,
        acceptor,
        listeners,
        permits,
        stop,
        done,
    } = setup;
    let graceful = GracefulShutdown::new();
    let conn = ConnContext {
        http: http_builder(&state.limits),
        state: state.clone(),
        forwarder: Arc::new(forwarder),
        acceptor,
    };
    let mut loops = Vec::new();
    for listener in listeners {
        let listener = match TcpListener::from_std(listener) {
            Ok(listener) => listener,
            Err(e) => {
                warn!(error = %e, "cannot register a listener");
                continue;
            }
        };
        loops.push(accept_loop(
            listener,
            &conn,
            &permits,
            &graceful,
            stop.clone(),
        ));
    }
    futures_util::future::join_all(loops).await;
    let drained = tokio::time::timeout(state.limits.shutdown_timeout, graceful.shutdown())
        .await
        .is_ok();
    let _ = done.send(drained);
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
    forwarder: Arc<Forwarder>,
    acceptor: TlsAcceptor,
    http: auto::Builder<TokioExecutor>,
}

async fn accept_loop(
    listener: TcpListener,
    conn: &ConnContext,
    permits: &Arc<Semaphore>,
    graceful: &GracefulShutdown,
    stop: CancellationToken,
) {
    loop {
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
        // Over the limit, this worker holds the one connection it accepted
        // until any worker frees a slot, and accepts nothing more meanwhile:
        // further clients wait in the kernel's backlog. (Waiting for the
        // slot before accepting would strand clients queued on the socket
        // of a worker that is not the next to get a slot.)
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
            _ = stop.cancelled() => return,
        };
        let watcher = graceful.watcher();
        tokio::spawn(serve_connection(
            conn.clone(),
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
    let mut hop: IpAddr = peer_ip;
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
    let (service_state, forwarder) = (state.clone(), ctx.forwarder.clone());
    let service = service_fn(move |req| {
        let state = service_state.clone();
        let forwarder = forwarder.clone();
        async move { Ok::<_, Infallible>(handle(&state, &forwarder, req, hop, hop_trusted).await) }
    });
    let conn = ctx.http.serve_connection(TokioIo::new(tls), service);
    if let Err(e) = watcher.watch(conn.into_owned()).await {
        debug!(%peer, error = %e, "connection ended with an error");
    }
}
