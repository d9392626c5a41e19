//! Shared by the edge's integration tests: certificates from rcgen, a
//! recording upstream, config text, clients bound to chosen loopback
//! addresses, and a metrics scraper.
#![allow(dead_code)]

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

pub const GENEROUS: Duration = Duration::from_secs(60);

pub fn init() {
    b24_testkit::install_crypto_provider();
}

pub fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

/// A CA and a server certificate it signed, written as PEM files.
pub struct TestCerts {
    pub dir: PathBuf,
    pub ca_pem: String,
    pub ca_der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
    /// The DER of the certificate now in `cert_path`.
    pub leaf_der: CertificateDer<'static>,
}

impl TestCerts {
    pub fn new(dir: &Path) -> TestCerts {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "b24-edge test CA");
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);
        let mut certs = TestCerts {
            dir: dir.to_owned(),
            ca_pem: ca_cert.pem(),
            ca_der: ca_cert.der().clone(),
            issuer,
            cert_path: dir.join("cert.pem"),
            key_path: dir.join("key.pem"),
            leaf_der: CertificateDer::from(Vec::new()),
        };
        certs.issue(2031);
        certs
    }

    /// Issues a new server certificate expiring on 1 January of `year` and
    /// replaces the files atomically (as certbot's deploy hooks do).
    /// Returns the expiry as Unix seconds.
    pub fn issue(&mut self, year: i32) -> i64 {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec![
            "localhost".to_string(),
            "127.0.0.1".to_string(),
            "::1".to_string(),
        ])
        .unwrap();
        params.not_after = rcgen::date_time_ymd(year, 1, 1);
        params
            .distinguished_name
            .push(DnType::CommonName, format!("edge {year}"));
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        replace_file(&self.cert_path, cert.pem().as_bytes());
        replace_file(&self.key_path, key.serialize_pem().as_bytes());
        self.leaf_der = cert.der().clone();
        params.not_after.unix_timestamp()
    }

    pub fn root_store(&self) -> rustls::RootCertStore {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca_der.clone()).unwrap();
        roots
    }
}

/// Writes a file the way nodesync and certbot do: a temporary file in the
/// same directory, then a rename over the old one.
pub fn replace_file(path: &Path, contents: &[u8]) {
    let tmp = path.with_extension("tmp-write");
    std::fs::write(&tmp, contents).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

pub fn nodes_json(entries: &[&str]) -> String {
    serde_json::json!({ "nodes": entries }).to_string()
}

/// What the upstream saw of one request.
#[derive(Debug, Clone)]
pub struct Seen {
    pub path: String,
    pub headers: http::HeaderMap,
    pub body_len: usize,
}

/// A plain-HTTP upstream on 127.0.0.1 that records requests. Paths:
/// `/slow/<ms>` answers after a delay, `/echo` returns the body it got,
/// anything else answers `upstream saw <path>`.
pub struct Upstream {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    connections: Arc<std::sync::atomic::AtomicUsize>,
    _stop: watch::Sender<bool>,
}

impl Upstream {
    pub async fn start() -> Upstream {
        Upstream::start_with(None).await
    }

    /// The same upstream behind TLS with the test certificate (HTTP/1.1).
    pub async fn start_tls(certs: &TestCerts) -> Upstream {
        let loaded = b24_edge::tls::load_cert(&certs.cert_path, &certs.key_path).unwrap();
        let mut config = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(FixedCert(loaded.key)));
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Upstream::start_with(Some(tokio_rustls::TlsAcceptor::from(Arc::new(config)))).await
    }

    async fn start_with(tls: Option<tokio_rustls::TlsAcceptor>) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (stop, mut stopped) = watch::channel(false);
        let task_seen = seen.clone();
        let connections = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let task_connections = connections.clone();
        tokio::spawn(async move {
            loop {
                let stream = tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok((stream, _)) => stream,
                        Err(_) => continue,
                    },
                    _ = stopped.changed() => return,
                };
                task_connections.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let seen = task_seen.clone();
                let mut conn_stopped = stopped.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| answer(req, seen.clone()));
                    let builder = http1::Builder::new();
                    match tls {
                        None => {
                            let conn = builder.serve_connection(TokioIo::new(stream), service);
                            tokio::select! {
                                _ = conn => {}
                                _ = conn_stopped.changed() => {}
                            }
                        }
                        Some(tls) => {
                            let Ok(stream) = tls.accept(stream).await else {
                                return;
                            };
                            let conn = builder.serve_connection(TokioIo::new(stream), service);
                            tokio::select! {
                                _ = conn => {}
                                _ = conn_stopped.changed() => {}
                            }
                        }
                    }
                });
            }
        });
        Upstream {
            addr,
            seen,
            connections,
            _stop: stop,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn https_url(&self) -> String {
        format!("https://{}", self.addr)
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
}

#[derive(Debug)]
struct FixedCert(Arc<rustls::sign::CertifiedKey>);

impl rustls::server::ResolvesServerCert for FixedCert {
    fn resolve(
        &self,
        _hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.clone())
    }
}

async fn answer(
    req: Request<Incoming>,
    seen: Arc<Mutex<Vec<Seen>>>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path().to_owned();
    let headers = req.headers().clone();
    if let Some(ms) = path.strip_prefix("/slow/") {
        // Record first, so a test can tell the request is in flight.
        seen.lock().unwrap().push(Seen {
            path: path.clone(),
            headers,
            body_len: 0,
        });
        tokio::time::sleep(Duration::from_millis(ms.parse().unwrap_or(1000))).await;
        return Ok(Response::new(Full::from(format!("upstream saw {path}"))));
    }
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    seen.lock().unwrap().push(Seen {
        path: path.clone(),
        headers,
        body_len: body.len(),
    });
    if path == "/echo" {
        return Ok(Response::new(Full::from(body)));
    }
    Ok(Response::new(Full::from(format!("upstream saw {path}"))))
}

/// The `[server]` table for tests: TLS files, a listener and an admin
/// listener on ephemeral ports, plus `extra` lines.
pub fn server_section(certs: &TestCerts, listen: &str, extra: &str) -> String {
    format!(
        "[server]\nlisten = \"{listen}\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\nmetrics_listen = \"127.0.0.1:0\"\n{extra}\n",
        certs.cert_path.display(),
        certs.key_path.display()
    )
}

pub fn route(prefix: &str, upstream: &str, allow: &[&str]) -> String {
    let allow: Vec<String> = allow.iter().map(|a| format!("\"{a}\"")).collect();
    format!(
        "[[route]]\nprefix = \"{prefix}\"\nupstream = \"{upstream}\"\nallow = [{}]\n",
        allow.join(", ")
    )
}

pub async fn start_edge(toml: &str) -> b24_edge::EdgeHandle {
    init();
    let config = b24_edge::Config::from_toml(toml).unwrap_or_else(|e| panic!("{e}\n{toml}"));
    b24_edge::start(config).await.unwrap()
}

/// An HTTPS client trusting the test CA, connecting from `local`.
pub fn client(certs: &TestCerts, local: &str, http2: bool) -> reqwest::Client {
    init();
    let mut builder = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(certs.ca_pem.as_bytes()).unwrap()])
        .local_address(ip(local))
        .timeout(GENEROUS)
        .no_proxy();
    builder = if http2 {
        builder.http2_prior_knowledge()
    } else {
        builder.http1_only()
    };
    builder.build().unwrap()
}

pub fn url(edge: &b24_edge::EdgeHandle, path: &str) -> String {
    let addr = edge.addrs()[0];
    format!("https://{addr}{path}")
}

pub async fn get(client: &reqwest::Client, url: &str) -> (u16, String) {
    let response = client.get(url).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.text().await.unwrap())
}

/// `/metrics` of an edge.
pub async fn scrape(edge: &b24_edge::EdgeHandle) -> String {
    admin_get(edge, "/metrics").await.1
}

pub async fn admin_get(edge: &b24_edge::EdgeHandle, path: &str) -> (u16, String) {
    let addr = edge.metrics_addr().unwrap();
    let response = reqwest::Client::new()
        .get(format!("http://{addr}{path}"))
        .timeout(GENEROUS)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.text().await.unwrap())
}

/// The value of one sample (`name{labels}` exactly as exposed), 0 if absent.
pub fn sample(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|line| {
            line.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
                .map(|value| value.trim().parse::<f64>().unwrap())
        })
        .unwrap_or(0.0)
}

/// Polls `check` until it holds; panics after a generous time.
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while tokio::time::Instant::now() < deadline {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting until {what}");
}

/// A TCP connection from a chosen loopback address.
pub async fn tcp_from(local: &str, to: SocketAddr) -> TcpStream {
    let local: SocketAddr = SocketAddr::new(ip(local), 0);
    let socket = if local.is_ipv4() {
        TcpSocket::new_v4().unwrap()
    } else {
        TcpSocket::new_v6().unwrap()
    };
    socket.bind(local).unwrap();
    socket.connect(to).await.unwrap()
}

/// Completes a TLS handshake over `tcp` trusting the test CA, offering
/// HTTP/1.1 only.
pub async fn tls_over(certs: &TestCerts, tcp: TcpStream) -> std::io::Result<TlsStream<TcpStream>> {
    let mut config = rustls::ClientConfig::builder()
        .with_root_certificates(certs.root_store())
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let connector = TlsConnector::from(Arc::new(config));
    connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
}

/// An HTTP/1.1 connection over an established stream; returns a sender
/// that keeps using this one connection.
pub async fn h1_over<S>(stream: S) -> hyper::client::conn::http1::SendRequest<Full<Bytes>>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    sender
}

pub async fn send_get(
    sender: &mut hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    path: &str,
) -> (u16, String) {
    let request = Request::get(path)
        .header("host", "localhost")
        .body(Full::default())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}
