//! Stage 5's connections to one route's upstream, one pool per route per
//! worker thread: opened on demand (TCP with `TCP_NODELAY`, then TLS for an
//! `https` upstream, HTTP/1.1 on it), kept while idle for the next request,
//! and handed back once a response has been read to its end.
//!
//! Why not hyper-util's pooled client: it is built to be shared between
//! threads and hosts — a keyed map of pools behind a lock, a connect future
//! prepared (and dropped) for every request even when an idle connection
//! is there, and a spawned task per response to wait until its connection
//! is idle again. A worker thread of the edge has one upstream per route
//! and knows when a response ends (its body says so), so its pool is a
//! stack of idle connections, the most recently used on top.
//!
//! Limits, like nginx's `keepalive` in an `upstream` block: at most
//! [`MAX_IDLE`] idle connections per route per worker (the least recently
//! used close first) and none kept idle longer than [`IDLE_TIMEOUT`].
//! Connecting — the TCP connection (the addresses of a name tried in
//! turn, each given its share of the time) and, for `https`, the TLS
//! handshake — has `upstream_connect_timeout` in all, as nginx's
//! `proxy_connect_timeout` covers its upstream SSL handshake too.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use http::uri::Scheme;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;
use tracing::debug;

use crate::body::ForwardBody;
use crate::forward::{UpstreamSetupError, UpstreamTarget};

/// Idle connections kept per route per worker thread.
pub const MAX_IDLE: usize = 128;
/// How long an idle connection is kept.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Why no connection to the upstream could be opened.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("cannot resolve {host}: {source}")]
    Resolve {
        host: String,
        source: std::io::Error,
    },
    #[error("{host} resolves to no address")]
    NoAddress { host: String },
    #[error("TCP connection to {addr} failed: {source}")]
    Tcp {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("no connection within upstream_connect_timeout ({0:?})")]
    TimedOut(Duration),
    #[error("TLS handshake with the upstream failed: {0}")]
    Tls(std::io::Error),
    #[error("HTTP/1.1 handshake with the upstream failed: {0}")]
    Handshake(hyper::Error),
}

/// Why an exchange with the upstream failed.
#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The request could not be sent or its response not read; the
    /// request body's own errors are among its causes.
    #[error(transparent)]
    Exchange(hyper::Error),
}

/// The connections of one worker thread to one route's upstream.
pub struct UpstreamPool {
    shared: Arc<Shared>,
}

struct Shared {
    host: String,
    port: u16,
    /// For an `https` upstream: the connector and the name its
    /// certificate must carry.
    tls: Option<(TlsConnector, ServerName<'static>)>,
    connect_timeout: Duration,
    idle_timeout: Duration,
    /// Oldest first: a connection is pushed when its response ends.
    idle: Mutex<Vec<IdleConnection>>,
    reaper_started: AtomicBool,
}

struct IdleConnection {
    sender: SendRequest<ForwardBody>,
    since: Instant,
}

/// A connection lent to one exchange; [`Lease::release`] gives it back to
/// its pool once the response has been read to its end. Dropped without
/// that (an error, a client gone mid-response), the connection closes.
pub struct Lease {
    sender: Option<SendRequest<ForwardBody>>,
    pool: Arc<Shared>,
}

impl std::fmt::Debug for UpstreamPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamPool")
            .field("host", &self.shared.host)
            .field("port", &self.shared.port)
            .field("tls", &self.shared.tls.is_some())
            .finish()
    }
}

impl UpstreamPool {
    pub fn new(
        target: &UpstreamTarget,
        connect_timeout: Duration,
    ) -> Result<UpstreamPool, UpstreamSetupError> {
        UpstreamPool::with_idle_timeout(target, connect_timeout, IDLE_TIMEOUT)
    }

    fn with_idle_timeout(
        target: &UpstreamTarget,
        connect_timeout: Duration,
        idle_timeout: Duration,
    ) -> Result<UpstreamPool, UpstreamSetupError> {
        let authority = target.authority();
        let https = *target.scheme() == Scheme::HTTPS;
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
        let tls = if https {
            let config = tls_config(target.ca_file())?;
            let name = ServerName::try_from(host.clone())
                .map_err(|e| UpstreamSetupError::Tls(format!("{host}: {e}")))?;
            Some((TlsConnector::from(Arc::new(config)), name))
        } else {
            None
        };
        Ok(UpstreamPool {
            shared: Arc::new(Shared {
                host,
                port,
                tls,
                connect_timeout,
                idle_timeout,
                idle: Mutex::new(Vec::new()),
                reaper_started: AtomicBool::new(false),
            }),
        })
    }

    /// Sends `request` on an idle connection, or a new one, and returns
    /// the response head with the connection it came on. A request that a
    /// reused connection closed before taking is sent again on another one
    /// (it never reached the upstream); nothing that was sent is resent.
    pub async fn send(
        &self,
        mut request: Request<ForwardBody>,
    ) -> Result<(Response<Incoming>, Lease), ExchangeError> {
        loop {
            let (mut sender, reused) = match self.shared.checkout() {
                Some(sender) => (sender, true),
                // Boxed: the TLS handshake's state would otherwise make
                // every request's future (moved into hyper's per-request
                // slot) as large as a rare connect needs.
                None => (Box::pin(self.shared.connect()).await?, false),
            };
            match sender.try_send_request(request).await {
                Ok(response) => {
                    let lease = Lease {
                        sender: Some(sender),
                        pool: self.shared.clone(),
                    };
                    return Ok((response, lease));
                }
                Err(mut failed) => match failed.take_message() {
                    Some(unsent) if reused => request = unsent,
                    _ => return Err(ExchangeError::Exchange(failed.into_error())),
                },
            }
        }
    }

    /// Idle connections held now.
    #[cfg(test)]
    fn idle_count(&self) -> usize {
        self.shared.idle().len()
    }
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease")
            .field("held", &self.sender.is_some())
            .finish()
    }
}

impl Lease {
    /// Gives the connection back to its pool: its response has ended.
    pub fn release(&mut self) {
        if let Some(sender) = self.sender.take() {
            self.pool.put(sender);
        }
    }
}

impl Shared {
    fn idle(&self) -> MutexGuard<'_, Vec<IdleConnection>> {
        // Nothing is left half-done under this lock: a panic elsewhere
        // cannot make the list wrong.
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The most recently used connection that can take a request now.
    /// One whose previous response is still being finished by its task
    /// stays for later; closed and expired ones go.
    fn checkout(&self) -> Option<SendRequest<ForwardBody>> {
        let mut idle = self.idle();
        let mut i = idle.len();
        while i > 0 {
            i -= 1;
            let conn = &idle[i];
            if conn.sender.is_closed() || conn.since.elapsed() >= self.idle_timeout {
                idle.remove(i);
            } else if conn.sender.is_ready() {
                return Some(idle.remove(i).sender);
            }
        }
        None
    }

    fn put(self: &Arc<Self>, sender: SendRequest<ForwardBody>) {
        if sender.is_closed() {
            return;
        }
        {
            let mut idle = self.idle();
            if idle.len() >= MAX_IDLE {
                idle.remove(0);
            }
            idle.push(IdleConnection {
                sender,
                since: Instant::now(),
            });
        }
        self.start_reaper();
    }

    /// Closes the connections idle past their timeout even when no
    /// request comes to find them: one timer per pool, started with the
    /// first idle connection on the worker's runtime, ending with the pool.
    fn start_reaper(self: &Arc<Self>) {
        if self.reaper_started.swap(true, Ordering::Relaxed) {
            return;
        }
        let pool: Weak<Shared> = Arc::downgrade(self);
        let period = self.idle_timeout / 4;
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval_at(Instant::now() + period, period);
            loop {
                ticks.tick().await;
                let Some(pool) = pool.upgrade() else { return };
                let timeout = pool.idle_timeout;
                pool.idle()
                    .retain(|c| !c.sender.is_closed() && c.since.elapsed() < timeout);
            }
        });
    }

    async fn connect(&self) -> Result<SendRequest<ForwardBody>, ConnectError> {
        let deadline = Instant::now() + self.connect_timeout;
        let tcp = self.connect_tcp(deadline).await?;
        let _ = tcp.set_nodelay(true);
        match &self.tls {
            None => handshake(tcp).await,
            Some((connector, name)) => {
                let tls = tokio::time::timeout_at(deadline, connector.connect(name.clone(), tcp))
                    .await
                    .map_err(|_| ConnectError::TimedOut(self.connect_timeout))?
                    .map_err(ConnectError::Tls)?;
                handshake(tls).await
            }
        }
    }

    /// Tries the addresses the host resolves to in turn, each within its
    /// share of the time left, so that one that never answers leaves time
    /// for the next.
    async fn connect_tcp(&self, deadline: Instant) -> Result<TcpStream, ConnectError> {
        let timed_out = || ConnectError::TimedOut(self.connect_timeout);
        let addrs: Vec<SocketAddr> = tokio::time::timeout_at(
            deadline,
            tokio::net::lookup_host((self.host.as_str(), self.port)),
        )
        .await
        .map_err(|_| timed_out())?
        .map_err(|source| ConnectError::Resolve {
            host: self.host.clone(),
            source,
        })?
        .collect();
        let mut last_error = None;
        for (i, addr) in addrs.iter().enumerate() {
            let left = deadline.saturating_duration_since(Instant::now());
            let share = left / (addrs.len() - i) as u32;
            match tokio::time::timeout(share, TcpStream::connect(addr)).await {
                Ok(Ok(tcp)) => return Ok(tcp),
                Ok(Err(source)) => {
                    last_error = Some(ConnectError::Tcp {
                        addr: *addr,
                        source,
                    })
                }
                Err(_) => last_error = Some(timed_out()),
            }
        }
        Err(last_error.unwrap_or_else(|| ConnectError::NoAddress {
            host: self.host.clone(),
        }))
    }
}

/// Starts HTTP/1.1 on `io`; the connection runs in its own task on the
/// worker's runtime and ends when the upstream closes it or the pool lets
/// it go.
async fn handshake<IO>(io: IO) -> Result<SendRequest<ForwardBody>, ConnectError>
where
    IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (sender, connection) = http1::Builder::new()
        .handshake(TokioIo::new(io))
        .await
        .map_err(ConnectError::Handshake)?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            debug!(error = %e, "upstream connection ended with an error");
        }
    });
    Ok(sender)
}

/// The TLS client configuration of an `https` upstream: its own CA file
/// when the route names one, else the system's roots; HTTP/1.1 by ALPN.
fn tls_config(ca_file: Option<&Path>) -> Result<rustls::ClientConfig, UpstreamSetupError> {
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let ca_err = |detail: String| UpstreamSetupError::CaFile {
                path: path.display().to_string(),
                detail,
            };
            let certs = crate::tls::pem_certificates(path).map_err(ca_err)?;
            if certs.is_empty() {
                return Err(ca_err("no PEM certificate in it".into()));
            }
            for cert in certs {
                roots.add(cert).map_err(|e| ca_err(e.to_string()))?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            if found.certs.is_empty() {
                let why = found
                    .errors
                    .first()
                    .map_or_else(|| "none found".to_owned(), ToString::to_string);
                return Err(UpstreamSetupError::NativeRoots(why));
            }
            // Like a browser: a certificate the store cannot parse is
            // skipped, not fatal.
            let _ = roots.add_parsable_certificates(found.certs);
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| UpstreamSetupError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

#[cfg(test)]
#[path = "upstream_tests.rs"]
mod tests;
