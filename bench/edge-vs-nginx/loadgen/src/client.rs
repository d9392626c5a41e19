//! The latency-recording client: `connections` closed loops of requests
//! for a fixed time, each latency kept (microseconds), then the rate and
//! percentiles. Also the connection opener the holder uses.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::Request;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::json;
use tokio::task::JoinSet;
use tokio_rustls::TlsConnector;

use crate::{Proto, percentile_ms, tls};

pub struct Options {
    pub target: SocketAddr,
    pub source: IpAddr,
    pub proto: Proto,
    pub connections: usize,
    pub streams: usize,
    pub duration: Duration,
}

/// A request longer than this counts as an error (and ends its loop's
/// connection), so a stalled server cannot hang the bench.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// An open connection that can send requests.
#[derive(Clone)]
pub enum Sender {
    H1(Arc<tokio::sync::Mutex<http1::SendRequest<Empty<Bytes>>>>),
    H2(http2::SendRequest<Empty<Bytes>>),
}

pub fn connector_for(proto: Proto) -> TlsConnector {
    match proto {
        Proto::H2 => tls::connector(&[b"h2"]),
        Proto::H1 | Proto::H1NewConn => tls::connector(&[b"http/1.1"]),
    }
}

/// Opens a TLS connection speaking `proto`; `live` counts connections
/// until they end (for the holder).
pub async fn open(
    proto: Proto,
    connector: &TlsConnector,
    source: IpAddr,
    target: SocketAddr,
    live: Option<Arc<AtomicUsize>>,
) -> anyhow::Result<Sender> {
    let stream = tls::tcp_connect(source, target).await.context("connect")?;
    let tls = tls::handshake(connector, target, stream)
        .await
        .context("TLS handshake")?;
    let io = TokioIo::new(tls);
    let guard = live.map(LiveGuard::new);
    match proto {
        Proto::H2 => {
            let (sender, conn) = http2::handshake(TokioExecutor::new(), io).await?;
            tokio::spawn(async move {
                let _ = conn.await;
                drop(guard);
            });
            Ok(Sender::H2(sender))
        }
        Proto::H1 | Proto::H1NewConn => {
            let (sender, conn) = http1::handshake(io).await?;
            tokio::spawn(async move {
                let _ = conn.await;
                drop(guard);
            });
            Ok(Sender::H1(Arc::new(tokio::sync::Mutex::new(sender))))
        }
    }
}

struct LiveGuard(Arc<AtomicUsize>);

impl LiveGuard {
    fn new(count: Arc<AtomicUsize>) -> LiveGuard {
        count.fetch_add(1, Ordering::Relaxed);
        LiveGuard(count)
    }
}

impl Drop for LiveGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Sender {
    /// One GET; the body is read to its end. Returns the status.
    pub async fn get(&self, target: SocketAddr, close: bool) -> anyhow::Result<u16> {
        let mut request = Request::get(format!("https://{target}/hook/bench"));
        if let Sender::H1(_) = self {
            request = request.header(hyper::header::HOST, target.to_string());
            if close {
                request = request.header(hyper::header::CONNECTION, "close");
            }
        }
        let request = request.body(Empty::<Bytes>::new())?;
        let response = match self {
            Sender::H1(sender) => {
                let mut sender = sender.lock().await;
                sender.ready().await?;
                sender.send_request(request).await?
            }
            Sender::H2(sender) => {
                let mut sender = sender.clone();
                sender.ready().await?;
                sender.send_request(request).await?
            }
        };
        let status = response.status().as_u16();
        response.into_body().collect().await?;
        Ok(status)
    }
}

pub async fn run(options: Options) -> anyhow::Result<String> {
    let connector = connector_for(options.proto);
    let deadline = Instant::now() + options.duration;
    let started = Instant::now();
    let mut loops = JoinSet::new();
    for _ in 0..options.connections {
        let (connector, source, target, proto) = (
            connector.clone(),
            options.source,
            options.target,
            options.proto,
        );
        if proto == Proto::H1NewConn {
            loops.spawn(
                async move { new_connection_loop(&connector, source, target, deadline).await },
            );
            continue;
        }
        let sender = match open(proto, &connector, source, target, None).await {
            Ok(sender) => sender,
            Err(e) => return Err(anyhow!("cannot open a connection to {target}: {e:#}")),
        };
        let streams = if proto == Proto::H2 {
            options.streams.max(1)
        } else {
            1
        };
        for _ in 0..streams {
            let sender = sender.clone();
            loops.spawn(async move { keep_alive_loop(&sender, target, deadline).await });
        }
    }
    let mut samples = Vec::new();
    let (mut errors, mut non_200) = (0u64, 0u64);
    while let Some(done) = loops.join_next().await {
        let tally = done?;
        samples.extend(tally.samples);
        errors += tally.errors;
        non_200 += tally.non_200;
    }
    let elapsed = started.elapsed().as_secs_f64();
    samples.sort_unstable();
    Ok(json!({
        "requests": samples.len(),
        "errors": errors,
        "non_200": non_200,
        "seconds": elapsed,
        "rate": samples.len() as f64 / elapsed,
        "p50_ms": percentile_ms(&samples, 50.0),
        "p90_ms": percentile_ms(&samples, 90.0),
        "p99_ms": percentile_ms(&samples, 99.0),
        "p999_ms": percentile_ms(&samples, 99.9),
        "max_ms": percentile_ms(&samples, 100.0),
    })
    .to_string())
}

#[derive(Default)]
struct Tally {
    samples: Vec<u32>,
    errors: u64,
    non_200: u64,
}

impl Tally {
    fn record(&mut self, started: Instant, outcome: anyhow::Result<u16>) -> bool {
        match outcome {
            Ok(status) => {
                let micros = started.elapsed().as_micros();
                self.samples.push(u32::try_from(micros).unwrap_or(u32::MAX));
                if status != 200 {
                    self.non_200 += 1;
                }
                true
            }
            Err(_) => {
                self.errors += 1;
                false
            }
        }
    }
}

async fn keep_alive_loop(sender: &Sender, target: SocketAddr, deadline: Instant) -> Tally {
    let mut tally = Tally::default();
    while Instant::now() < deadline {
        let started = Instant::now();
        let outcome = tokio::time::timeout(REQUEST_TIMEOUT, sender.get(target, false))
            .await
            .unwrap_or_else(|_| Err(anyhow!("timed out")));
        if !tally.record(started, outcome) {
            // A broken connection is not retried: the error count says so.
            break;
        }
    }
    tally
}

/// Each request on a new connection: TCP connect + full TLS handshake +
/// request + answer, all inside the recorded latency.
async fn new_connection_loop(
    connector: &TlsConnector,
    source: IpAddr,
    target: SocketAddr,
    deadline: Instant,
) -> Tally {
    let mut tally = Tally::default();
    while Instant::now() < deadline {
        let started = Instant::now();
        let exchange = async {
            let sender = open(Proto::H1NewConn, connector, source, target, None).await?;
            sender.get(target, true).await
        };
        let outcome = tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .unwrap_or_else(|_| Err(anyhow!("timed out")));
        if !tally.record(started, outcome) {
            // Back off a little so a refusing server is not spun against.
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    tally
}
