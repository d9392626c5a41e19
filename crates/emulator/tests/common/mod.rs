//! Shared helpers for the emulator's HTTP tests: start a portal, call REST
//! methods with JSON or form bodies, and receive outbound deliveries.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use b24_emulator::Portal;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub const SECRET: &str = "k3y9secret";

pub fn client() -> reqwest::Client {
    b24_testkit::install_crypto_provider();
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

pub async fn portal(seed: Value) -> Portal {
    Portal::builder()
        .domain("source.test")
        .webhook(1, SECRET, &["crm", "user", "bizproc", "im"])
        .webhook(2, "nocrm", &["user"])
        .seed(seed)
        .start()
        .await
        .expect("portal starts")
}

/// POSTs a JSON body to `METHOD.json`; returns status and parsed body.
pub async fn call(portal: &Portal, method: &str, params: Value) -> (u16, Value) {
    let url = format!("{}{method}.json", portal.webhook_url(1, SECRET));
    let response = client()
        .post(url)
        .json(&params)
        .send()
        .await
        .expect("request");
    let status = response.status().as_u16();
    (status, response.json().await.expect("json body"))
}

/// POSTs a PHP-style form body (built by the shared encoder).
pub async fn call_form(portal: &Portal, method: &str, params: &Value) -> (u16, Value) {
    let url = format!("{}{method}", portal.webhook_url(1, SECRET));
    let response = client()
        .post(url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(b24_phpform::encode(params))
        .send()
        .await
        .expect("request");
    let status = response.status().as_u16();
    (status, response.json().await.expect("json body"))
}

/// One request an outbound handler received.
#[derive(Debug, Clone)]
pub struct Received {
    pub path_and_query: String,
    pub content_type: String,
    pub body: String,
}

/// A loopback HTTP server that records every request and answers 200.
pub struct Receiver {
    pub addr: SocketAddr,
    pub received: Arc<Mutex<Vec<Received>>>,
    cancel: CancellationToken,
}

impl Receiver {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let cancel = CancellationToken::new();
        let (store, stop) = (Arc::clone(&received), cancel.clone());
        tokio::spawn(async move {
            loop {
                let (stream, _) = tokio::select! {
                    _ = stop.cancelled() => break,
                    accepted = listener.accept() => accepted.unwrap(),
                };
                let store = Arc::clone(&store);
                tokio::spawn(async move {
                    let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let store = Arc::clone(&store);
                        async move {
                            let path_and_query = req
                                .uri()
                                .path_and_query()
                                .map(|p| p.to_string())
                                .unwrap_or_default();
                            let content_type = req
                                .headers()
                                .get("content-type")
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or("")
                                .to_string();
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            store.lock().unwrap().push(Received {
                                path_and_query,
                                content_type,
                                body: String::from_utf8_lossy(&body).into_owned(),
                            });
                            Ok::<_, hyper::Error>(hyper::Response::new(Full::new(
                                Bytes::from_static(b"ok"),
                            )))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self {
            addr,
            received,
            cancel,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Waits (bounded, to avoid hangs only) until `count` requests arrived.
    pub async fn wait_for(&self, count: usize) -> Vec<Received> {
        for _ in 0..300 {
            let got = self.received.lock().unwrap().clone();
            if got.len() >= count {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.received.lock().unwrap().clone()
    }

    pub fn stop(&self) {
        self.cancel.cancel();
    }
}

pub const CLIENT_ID: &str = "local.6f1e2d3c4b5a69.12345678";
pub const CLIENT_SECRET: &str = "cl1entS3cretValue";

/// A portal with a webhook and a local application (crm, bizproc, user).
pub async fn app_portal() -> Portal {
    Portal::builder()
        .domain("source.test")
        .webhook(1, SECRET, &["crm", "user", "bizproc", "im"])
        .application(CLIENT_ID, CLIENT_SECRET, &["crm", "bizproc", "user"])
        .start()
        .await
        .expect("portal starts")
}

/// POSTs a JSON body to `/rest/METHOD?auth=TOKEN`, the application form.
pub async fn oauth_call(portal: &Portal, method: &str, token: &str, params: Value) -> (u16, Value) {
    let url = format!("{}{method}?auth={token}", portal.rest_url());
    let response = client()
        .post(url)
        .json(&params)
        .send()
        .await
        .expect("request");
    let status = response.status().as_u16();
    (status, response.json().await.expect("json body"))
}

/// GETs the emulated authorization server with these query pairs.
pub async fn token_request(portal: &Portal, pairs: &[(&str, &str)]) -> (u16, Value) {
    let mut url = url::Url::parse(&portal.oauth_token_url()).unwrap();
    url.query_pairs_mut().extend_pairs(pairs);
    let response = client().get(url).send().await.expect("request");
    let status = response.status().as_u16();
    (status, response.json().await.expect("json body"))
}

pub fn refresh_pairs(refresh_token: &str) -> [(&str, &str); 4] {
    [
        ("grant_type", "refresh_token"),
        ("client_id", CLIENT_ID),
        ("client_secret", CLIENT_SECRET),
        ("refresh_token", refresh_token),
    ]
}

pub fn parse_form(body: &str) -> Value {
    b24_phpform::parse_str(body, &b24_phpform::Limits::default()).expect("valid PHP form")
}
