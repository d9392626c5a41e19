//! A stand-in for Bitrix24's queue servers. A portal never calls a handler
//! itself: its events leave from Bitrix24's cloud queue servers, and those
//! addresses are what the nodes list publishes. This forwarder plays that
//! hop: the emulated portal posts its outgoing webhook here (plain HTTP),
//! and it re-sends the request to the edge over HTTPS from 127.0.0.1 — the
//! one address in the demo's nodes list — trusting the demo's certificate.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use b24_cli_support::Chain;

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
    let cert = reqwest::Certificate::from_pem(cert_pem.as_bytes())
        .map_err(|e| start_error("the HTTPS client", Chain(&e.without_url())))?;
    reqwest::Client::builder()
        .tls_certs_only([cert])
        .local_address(from)
        .timeout(std::time::Duration::from_secs(30))
        .build()
        .map_err(|e| start_error("the HTTPS client", Chain(&e.without_url())))
}

/// The running forwarder.
pub struct QueueServer {
    pub addr: SocketAddr,
    /// Print one line per relayed request (`--serve`, after the story).
    log_requests: Arc<AtomicBool>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl QueueServer {
    /// Listens on `listen` and forwards every request to `edge`
    /// (`https://127.0.0.1:PORT`), path and query unchanged.
    pub async fn start(
        listen: SocketAddr,
        edge: String,
        client: reqwest::Client,
    ) -> Result<Self, DemoError> {
        let listener = TcpListener::bind(listen).await.map_err(|e| {
            start_error(
                "the queue-server stand-in",
                format!("cannot listen on {listen}: {}", Chain(&e)),
            )
        })?;
        let addr = listener
            .local_addr()
            .map_err(|e| start_error("the queue-server stand-in", Chain(&e)))?;
        let log_requests = Arc::new(AtomicBool::new(false));
        let log = log_requests.clone();
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
                let log = log.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request| {
                        let edge = edge.clone();
                        let client = client.clone();
                        let log = log.load(Ordering::Relaxed);
                        async move { Ok::<_, Infallible>(forward(&client, &edge, request, log).await) }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(Self {
            addr,
            log_requests,
            stop,
            task,
        })
    }

    /// From now on, print one line per relayed request on stdout.
    pub fn log_requests(&self) {
        self.log_requests.store(true, Ordering::Relaxed);
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
    log: bool,
) -> Response<Full<Bytes>> {
    let started = Instant::now();
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
    let what = log.then(|| describe(&path, &body));
    let mut outgoing = client.post(format!("{edge}{path}")).body(body);
    if let Some(value) = content_type {
        outgoing = outgoing.header(reqwest::header::CONTENT_TYPE, value);
    }
    let (status, body) = match outgoing.send().await {
        Ok(answer) => (
            StatusCode::from_u16(answer.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY),
            answer.bytes().await.unwrap_or_default(),
        ),
        Err(_) => (
            StatusCode::BAD_GATEWAY,
            Bytes::from_static(b"edge unreachable"),
        ),
    };
    if let Some(what) = what {
        println!(
            "relayed {what} → edge: {status} in {} ms",
            started.elapsed().as_millis()
        );
    }
    plain(status, body)
}

/// `POST /hook/event/partner (ONCRMDEALUPDATE, deal 7)`: the path without
/// its query (a rule's URL carries its secret there) and, from a form
/// body, the event and the deal id — never the `auth` block.
pub(crate) fn describe(path: &str, body: &[u8]) -> String {
    let (path, query) = path
        .split_once('?')
        .map_or((path, None), |(p, q)| (p, Some(q)));
    let mut text = format!("POST {path}{}", if query.is_some() { "?…" } else { "" });
    let form = b24_phpform::parse(body, &b24_phpform::Limits::default()).ok();
    let field = |keys: &[&str]| {
        let mut value = form.as_ref()?;
        for key in keys {
            // `a[0]=x&a[1]=y` parses as a list.
            value = match key.parse::<usize>() {
                Ok(index) if value.is_array() => value.get(index)?,
                _ => value.get(key)?,
            };
        }
        match value {
            serde_json::Value::String(s) => Some(s.clone()),
            serde_json::Value::Number(n) => Some(n.to_string()),
            _ => None,
        }
    };
    let event = field(&["event"]);
    let deal = field(&["data", "FIELDS", "ID"])
        .or_else(|| field(&["document_id", "2"]).map(|d| d.trim_start_matches("DEAL_").to_owned()));
    match (event, deal) {
        (Some(event), Some(deal)) => text.push_str(&format!(" ({event}, deal {deal})")),
        (Some(event), None) => text.push_str(&format!(" ({event})")),
        (None, Some(deal)) => text.push_str(&format!(" (deal {deal})")),
        (None, None) => {}
    }
    text
}

fn plain(status: StatusCode, body: Bytes) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_relayed_request_is_described_without_secrets() {
        let body = b"event=ONCRMDEALUPDATE&data[FIELDS][ID]=7&auth[application_token]=t0ken";
        assert_eq!(
            describe("/hook/event/partner", body),
            "POST /hook/event/partner (ONCRMDEALUPDATE, deal 7)"
        );
        let rule = b"document_id[0]=crm&document_id[1]=CCrmDocumentDeal&document_id[2]=DEAL_12";
        let shown = describe("/hook/rule/partner?secret=s3cret", rule);
        assert_eq!(shown, "POST /hook/rule/partner?… (deal 12)");
        assert_eq!(describe("/x", b"not a form \xff"), "POST /x");
    }
}
