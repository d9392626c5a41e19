//! One client connection, from an accepted socket to its last response:
//! the PROXY header from a trusted load balancer (stage 2,
//! [`crate::client_ip`]), the TLS handshake (stage 3, [`crate::tls`]), then
//! HTTP/1.1 or h2, each request handed to [`crate::request`].

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::Watcher;
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tokio_rustls::TlsAcceptor;
use tracing::debug;

use crate::client_ip::{ProxyHeaderError, canonical, read_proxy_header};
use crate::config::Limits;
use crate::forward::Forwarder;
use crate::metrics::{Metrics, ProxyHeaderFailure};
use crate::request::{self, Peer};
use crate::state::EdgeState;

/// What each connection's task needs (cloned per connection).
#[derive(Clone)]
pub(crate) struct ConnContext {
    pub state: Arc<EdgeState>,
    pub forwarder: Arc<Forwarder>,
    pub acceptor: TlsAcceptor,
    pub http: auto::Builder<TokioExecutor>,
}

impl ConnContext {
    pub fn new(state: Arc<EdgeState>, forwarder: Forwarder, acceptor: TlsAcceptor) -> ConnContext {
        ConnContext {
            http: http_builder(&state.limits),
            state,
            forwarder: Arc::new(forwarder),
            acceptor,
        }
    }
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

/// Keeps the open-connections gauge right however the task ends.
struct OpenConnection(Arc<Metrics>);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.open_connections.dec();
    }
}

fn proxy_failure(e: &ProxyHeaderError) -> ProxyHeaderFailure {
    match e {
        ProxyHeaderError::Missing => ProxyHeaderFailure::Missing,
        ProxyHeaderError::Malformed(_) => ProxyHeaderFailure::Malformed,
        ProxyHeaderError::Closed => ProxyHeaderFailure::Closed,
    }
}

pub(crate) async fn serve(
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
                state.metrics.record_proxy_header_failure(proxy_failure(&e));
                return;
            }
            Err(_) => {
                debug!(%peer, "no PROXY header in time");
                state
                    .metrics
                    .record_proxy_header_failure(ProxyHeaderFailure::Timeout);
                return;
            }
        }
    }

    let tls = match crate::tls::handshake(&ctx.acceptor, stream, header_timeout).await {
        Ok(tls) => tls,
        Err(e) => {
            debug!(%peer, error = %e, "TLS handshake failed");
            state.metrics.tls_handshake_failures.inc();
            return;
        }
    };

    let peer = Peer {
        hop,
        hop_trusted: state.trusted.contains(hop),
    };
    let (service_state, forwarder) = (state.clone(), ctx.forwarder.clone());
    let service = service_fn(move |req| {
        let state = service_state.clone();
        let forwarder = forwarder.clone();
        async move { Ok::<_, Infallible>(request::handle(&state, &forwarder, req, peer).await) }
    });
    let conn = ctx.http.serve_connection(TokioIo::new(tls), service);
    if let Err(e) = watcher.watch(conn.into_owned()).await {
        debug!(peer = %peer.hop, error = %e, "connection ended with an error");
    }
}
