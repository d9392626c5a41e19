//! A scriptable stand-in for a Bitrix24 portal on 127.0.0.1: every test
//! starts one with its own answers and stops it at the end.

#![allow(dead_code)] // each test file uses a different part of the helper

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use b24_client::{Observer, RequestEvent, RetryPolicy, Webhook};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinSet;

pub const SECRET: &str = "w3bh00k-s3cr3t";

/// One request as the portal saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub path: String,
    pub query: Option<String>,
    pub content_type: Option<String>,
    pub body: Vec<u8>,
}

impl Seen {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("JSON body")
    }

    /// The REST method named by the last path segment (`crm.item.get.json`).
    pub fn method(&self) -> String {
        let last = self.path.rsplit('/').next().unwrap_or_default();
        last.trim_end_matches(".json").to_owned()
    }

    pub fn query_param(&self, name: &str) -> Option<String> {
        let query = self.query.as_deref().unwrap_or_default();
        url::form_urlencoded::parse(query.as_bytes())
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.into_owned())
    }
}

/// How the portal answers one request.
pub enum Reply {
    Json(u16, Value),
    Raw(u16, &'static str),
    /// Never answer (the client's timeout fires).
    Hang,
}

type Handler = Arc<dyn Fn(Seen) -> Pin<Box<dyn Future<Output = Reply> + Send>> + Send + Sync>;

pub struct MockPortal {
    address: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    stop: Option<oneshot::Sender<()>>,
    server: tokio::task::JoinHandle<()>,
}

impl MockPortal {
    /// A portal whose answers come from a plain function.
    pub async fn start(handler: impl Fn(&Seen) -> Reply + Send + Sync + 'static) -> Self {
        let handler = Arc::new(handler);
        Self::start_async(move |seen| {
            let handler = handler.clone();
            async move { handler(&seen) }
        })
        .await
    }

    /// A portal whose answers may wait for other requests.
    pub async fn start_async<F, Fut>(handler: F) -> Self
    where
        F: Fn(Seen) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Reply> + Send + 'static,
    {
        let handler: Handler = Arc::new(move |seen| Box::pin(handler(seen)));
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let address = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (stop, mut stopped) = oneshot::channel();
        let log = seen.clone();
        let server = tokio::spawn(async move {
            let mut connections = JoinSet::new();
            loop {
                tokio::select! {
                    _ = &mut stopped => break,
                    accepted = listener.accept() => {
                        let Ok((stream, _)) = accepted else { continue };
                        let handler = handler.clone();
                        let log = log.clone();
                        connections.spawn(async move {
                            let service = service_fn(move |request| {
                                let handler = handler.clone();
                                let log = log.clone();
                                async move { answer(request, handler, log).await }
                            });
                            let _ = hyper::server::conn::http1::Builder::new()
                                .serve_connection(TokioIo::new(stream), service)
                                .await;
                        });
                    }
                }
            }
            connections.shutdown().await;
        });
        Self {
            address,
            seen,
            stop: Some(stop),
            server,
        }
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.address)
    }

    pub fn portal(&self) -> String {
        self.address.to_string()
    }

    pub fn webhook(&self) -> Webhook {
        Webhook::parse(&format!("{}/rest/1/{SECRET}/", self.base_url())).unwrap()
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub fn seen_count(&self, path_suffix: &str) -> usize {
        self.seen()
            .iter()
            .filter(|seen| seen.path.ends_with(path_suffix))
            .count()
    }

    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.server).await;
    }
}

impl Drop for MockPortal {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn answer(
    request: hyper::Request<Incoming>,
    handler: Handler,
    log: Arc<Mutex<Vec<Seen>>>,
) -> Result<hyper::Response<Full<Bytes>>, hyper::Error> {
    let path = request.uri().path().to_owned();
    let query = request.uri().query().map(str::to_owned);
    let content_type = request
        .headers()
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned);
    let body = request.into_body().collect().await?.to_bytes().to_vec();
    let seen = Seen {
        path,
        query,
        content_type,
        body,
    };
    log.lock().unwrap().push(seen.clone());
    let (status, content_type, body) = match handler(seen).await {
        Reply::Json(status, value) => (status, "application/json", value.to_string()),
        Reply::Raw(status, text) => (status, "text/html", text.to_owned()),
        Reply::Hang => {
            std::future::pending::<()>().await;
            unreachable!("pending never completes")
        }
    };
    Ok(hyper::Response::builder()
        .status(status)
        .header(hyper::header::CONTENT_TYPE, content_type)
        .body(Full::new(Bytes::from(body)))
        .unwrap())
}

/// Retries quickly so tests do not sleep for long.
pub fn fast_retries(max_attempts: u32) -> RetryPolicy {
    RetryPolicy {
        max_attempts,
        base_delay: Duration::from_millis(10),
        max_delay: Duration::from_millis(50),
        max_operating_wait: Duration::from_secs(30),
    }
}

/// Counts what the client reports, for assertions on attempts and outcomes.
#[derive(Default)]
pub struct Recorder {
    pub outcomes: Mutex<Vec<(String, String, u32)>>,
    pub waits: Mutex<Vec<Duration>>,
    pub refreshes: Mutex<u32>,
}

impl Recorder {
    pub fn outcomes(&self) -> Vec<String> {
        self.outcomes
            .lock()
            .unwrap()
            .iter()
            .map(|(_, outcome, _)| outcome.clone())
            .collect()
    }
}

impl Observer for Recorder {
    fn request_finished(&self, event: &RequestEvent<'_>) {
        self.outcomes.lock().unwrap().push((
            event.method.to_owned(),
            event.outcome.to_owned(),
            event.attempt,
        ));
    }

    fn rate_limit_waited(&self, _portal: &str, waited: Duration) {
        self.waits.lock().unwrap().push(waited);
    }

    fn token_refreshed(&self, _portal: &str) {
        *self.refreshes.lock().unwrap() += 1;
    }
}
