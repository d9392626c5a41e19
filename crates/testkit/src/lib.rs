//! Test-only helpers shared by the workspace's tests and benchmarks: a
//! scriptable HTTP server on loopback that plays the Bitrix24 `app.json`
//! endpoint (answers, failures, ETags, hangs) and counts what it was asked,
//! deterministic synthetic lists, typed builders for `edge.toml` and
//! `relay.toml` ([`config`]), and the set-up every test shares (the TLS
//! crypto provider, signals to child processes).

pub mod config;
pub mod process;
pub mod synthetic;
pub mod tls;

/// Installs the workspace's rustls crypto provider (ring), as a binary's
/// `main` does; libraries never do. Call it first in any test that builds
/// an HTTP client or a TLS server; calling it again is harmless.
pub fn install_crypto_provider() {
    b24_cli_support::install_crypto_provider();
}

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// What the server answers to the next requests.
#[derive(Debug, Clone)]
pub enum Reply {
    /// 200 with this body; with `etag`, a matching `If-None-Match` gets 304.
    Body {
        body: Vec<u8>,
        etag: Option<String>,
        content_type: &'static str,
    },
    /// This status with a short body.
    Status(u16, String),
    /// Accept the request and never answer.
    Hang,
}

impl Reply {
    /// A well-formed `app.json` with these entries, and an ETag derived from
    /// its content (as a CDN would send).
    pub fn nodes(entries: &[&str]) -> Reply {
        let body = serde_json::to_vec(&serde_json::json!({ "nodes": entries })).unwrap();
        let etag = format!("\"{:x}\"", fnv1a(&body));
        Reply::Body {
            body,
            etag: Some(etag),
            content_type: "application/json",
        }
    }

    /// 200 with this raw text and no ETag.
    pub fn raw(body: impl Into<Vec<u8>>, content_type: &'static str) -> Reply {
        Reply::Body {
            body: body.into(),
            etag: None,
            content_type,
        }
    }
}

#[derive(Debug, Default)]
struct Counters {
    requests: AtomicUsize,
    not_modified: AtomicUsize,
}

/// A scriptable `app.json` server on 127.0.0.1. Dropping it stops it.
pub struct NodesServer {
    addr: SocketAddr,
    reply: Arc<Mutex<Reply>>,
    counters: Arc<Counters>,
    stop: watch::Sender<bool>,
}

impl NodesServer {
    /// Starts the server on an ephemeral port, answering `reply`.
    pub async fn start(reply: Reply) -> NodesServer {
        NodesServer::start_on("127.0.0.1:0".parse().unwrap(), reply).await
    }

    pub async fn start_on(bind: SocketAddr, reply: Reply) -> NodesServer {
        let listener = TcpListener::bind(bind).await.expect("bind the test server");
        let addr = listener.local_addr().unwrap();
        let reply = Arc::new(Mutex::new(reply));
        let counters = Arc::new(Counters::default());
        let (stop, mut stopped) = watch::channel(false);
        let (task_reply, task_counters) = (reply.clone(), counters.clone());
        tokio::spawn(async move {
            loop {
                let (stream, _) = tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok(a) => a,
                        Err(_) => continue,
                    },
                    _ = stopped.changed() => return,
                };
                let (reply, counters) = (task_reply.clone(), task_counters.clone());
                let mut conn_stopped = stopped.clone();
                tokio::spawn(async move {
                    let service =
                        service_fn(move |req| answer(req, reply.clone(), counters.clone()));
                    let conn =
                        http1::Builder::new().serve_connection(TokioIo::new(stream), service);
                    tokio::select! {
                        _ = conn => {}
                        _ = conn_stopped.changed() => {}
                    }
                });
            }
        });
        NodesServer {
            addr,
            reply,
            counters,
            stop,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The URL of the list.
    pub fn url(&self) -> String {
        format!("http://{}/webhook/app.json", self.addr)
    }

    /// Changes what the next requests get.
    pub fn set(&self, reply: Reply) {
        *self.reply.lock().unwrap() = reply;
    }

    /// Requests received so far (including those answered 304).
    pub fn hits(&self) -> usize {
        self.counters.requests.load(Ordering::SeqCst)
    }

    /// Requests answered 304 Not Modified.
    pub fn not_modified(&self) -> usize {
        self.counters.not_modified.load(Ordering::SeqCst)
    }
}

impl Drop for NodesServer {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

async fn answer(
    req: Request<Incoming>,
    reply: Arc<Mutex<Reply>>,
    counters: Arc<Counters>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    counters.requests.fetch_add(1, Ordering::SeqCst);
    let reply = reply.lock().unwrap().clone();
    let response = match reply {
        Reply::Hang => {
            // Longer than any client timeout in the tests; the connection
            // task is dropped when the server stops.
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Response::new(Full::default())
        }
        Reply::Status(code, body) => Response::builder()
            .status(StatusCode::from_u16(code).unwrap())
            .header("content-type", "text/html")
            .body(Full::from(body))
            .unwrap(),
        Reply::Body {
            body,
            etag,
            content_type,
        } => {
            let matches = etag.as_deref().is_some_and(|tag| {
                req.headers()
                    .get("if-none-match")
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|sent| sent == tag)
            });
            if matches {
                counters.not_modified.fetch_add(1, Ordering::SeqCst);
                Response::builder()
                    .status(StatusCode::NOT_MODIFIED)
                    .header("etag", etag.unwrap())
                    .body(Full::default())
                    .unwrap()
            } else {
                let mut builder = Response::builder().header("content-type", content_type);
                if let Some(tag) = etag {
                    builder = builder.header("etag", tag);
                }
                builder.body(Full::from(body)).unwrap()
            }
        }
    };
    Ok(response)
}

/// A small stable hash for ETags (not for security).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3)
    })
}
