//! A stand-in for Bitrix24's queue servers. A portal never calls a handler
//! itself: its events leave from Bitrix24's cloud queue servers, and those
//! addresses are what the nodes list publishes. This forwarder plays that
//! hop: the emulated portal posts its outgoing webhook here (plain HTTP),
//! and it re-sends the request to the edge over HTTPS from 127.0.0.1 — the
//! one address in the demo's nodes list — trusting the demo's certificate.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::error::{DemoError, start_error};

/// An HTTPS client that trusts only `cert_pem` and connects from `from`.
pub fn client_from(from: IpAddr, cert_pem: &str) -> Result<reqwest::Client, DemoError> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cert = reqwest::Certificate::from_pem(cert_pem.as_bytes())
        .map_err(|e| start_error("the HTTPS client", e.without_url()))?;
    reqwest::Client::builder()
        .tls_certs_only([cert])
        .local_address(from)
        .timeout(std::time::Duration::from_secs(30))
        .build()
        .map_err(|e| start_error("the HTTPS client", e.without_url()))
}

/// The running forwarder.
pub struct QueueServer {
    pub addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl QueueServer {
    /// Listens on 127.0.0.1 and forwards every request to `edge`
    /// (`https://127.0.0.1:PORT`), path and query unchanged.
    pub async fn start(edge: String, client: reqwest::Client) -> Result<Self, DemoError> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| start_error("the queue-server stand-in", e))?;
        let addr = listener
            .local_addr()
            .map_err(|e| start_error("the queue-server stand-in", e))?;
        let (stop, mut stopped) = watch::channel(false);
        let task = tokio::spawn(async move {
            loop {
                let (stream, _) = tokio::select! {
                    _ = stopped.changed() => break,
                    accepted = listener.accept() => match accepted {
                        Ok(pair) => pair,
                        Err(_) => continue,
                    },
                };
                let edge = edge.clone();
                let client = client.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request| {
                        let edge = edge.clone();
                        let client = client.clone();
                        async move { Ok::<_, Infallible>(forward(&client, &edge, request).await) }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(Self { addr, stop, task })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

async fn forward(
    client: &reqwest::Client,
    edge: &str,
    request: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let path = request
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    let content_type = request.headers().get(hyper::header::CONTENT_TYPE).cloned();
    let body = match request.into_body().collect().await {
        Ok(body) => body.to_bytes(),
        Err(_) => return plain(StatusCode::BAD_REQUEST, Bytes::from_static(b"bad body")),
    };
    let mut outgoing = client.post(format!("{edge}{path}")).body(body);
    if let Some(value) = content_type {
        outgoing = outgoing.header(reqwest::header::CONTENT_TYPE, value);
    }
    match outgoing.send().await {
        Ok(answer) => {
            let status =
                StatusCode::from_u16(answer.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
            plain(status, answer.bytes().await.unwrap_or_default())
        }
        Err(_) => plain(
            StatusCode::BAD_GATEWAY,
            Bytes::from_static(b"edge unreachable"),
        ),
    }
}

fn plain(status: StatusCode, body: Bytes) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    response
}
