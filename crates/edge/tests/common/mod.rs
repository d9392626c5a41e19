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
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
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

pub use b24_testkit::config::{EdgeRoute, EdgeToml};

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
/// `/stall` sends the start of a body and then nothing, `/big` answers
/// 32 MiB, `/hold` answers once [`Upstream::release_held`] is called,
/// anything else answers `upstream saw <path>`.
pub struct Upstream {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    connections: Arc<std::sync::atomic::AtomicUsize>,
    open: Arc<std::sync::atomic::AtomicUsize>,
    release: watch::Sender<bool>,
    _stop: watch::Sender<bool>,
}

/// Counts an upstream connection as open until its task ends.
struct OpenGuard(Arc<std::sync::atomic::AtomicUsize>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
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
        let (release, released) = watch::channel(false);
        let task_seen = seen.clone();
        let connections = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let task_connections = connections.clone();
        let open = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let task_open = open.clone();
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
                task_open.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let open = OpenGuard(task_open.clone());
                let seen = task_seen.clone();
                let released = released.clone();
                let mut conn_stopped = stopped.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    let _open = open;
                    let service =
                        service_fn(move |req| answer(req, seen.clone(), released.clone()));
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
            open,
            release,
            _stop: stop,
        }
    }

    /// Lets every `/hold` request, now and later, have its answer.
    pub fn release_held(&self) {
        self.release.send_replace(true);
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

    /// TCP connections open now (accepted and not yet ended).
    pub fn open_connections(&self) -> usize {
        self.open.load(std::sync::atomic::Ordering::SeqCst)
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

type UpstreamBody = BoxBody<Bytes, Infallible>;

fn full(body: impl Into<Bytes>) -> UpstreamBody {
    Full::new(body.into()).boxed()
}

async fn answer(
    req: Request<Incoming>,
    seen: Arc<Mutex<Vec<Seen>>>,
    mut released: watch::Receiver<bool>,
) -> Result<Response<UpstreamBody>, Infallible> {
    let path = req.uri().path().to_owned();
    let headers = req.headers().clone();
    if path == "/hold" {
        // Recorded first, so a test can tell the request is in flight.
        seen.lock().unwrap().push(Seen {
            path: path.clone(),
            headers,
            body_len: 0,
        });
        let _ = released.wait_for(|released| *released).await;
        return Ok(Response::new(full(format!("upstream saw {path}"))));
    }
    if path == "/stall" {
        seen.lock().unwrap().push(Seen {
            path: path.clone(),
            headers,
            body_len: 0,
        });
        let start = futures_util::stream::once(async {
            Ok::<_, Infallible>(http_body::Frame::data(Bytes::from_static(b"the start")))
        });
        let stream = futures_util::StreamExt::chain(start, futures_util::stream::pending());
        return Ok(Response::new(StreamBody::new(stream).boxed()));
    }
    if let Some(ms) = path.strip_prefix("/slow/") {
        // Record first, so a test can tell the request is in flight.
        seen.lock().unwrap().push(Seen {
            path: path.clone(),
            headers,
            body_len: 0,
        });
        tokio::time::sleep(Duration::from_millis(ms.parse().unwrap_or(1000))).await;
        return Ok(Response::new(full(format!("upstream saw {path}"))));
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
        return Ok(Response::new(full(body)));
    }
    if path == "/big" {
        return Ok(Response::new(full(vec![b'b'; 32 << 20])));
    }
    Ok(Response::new(full(format!("upstream saw {path}"))))
}

/// An edge config for these tests: the test certificate, a listener and an
/// admin listener on ephemeral ports, the default workers (one per CPU, as
/// in production), and special-purpose addresses accepted in nodes lists
/// because the tests list loopback ones.
pub fn edge_config(certs: &TestCerts) -> EdgeToml {
    EdgeToml::new(&certs.cert_path, &certs.key_path)
        .unset_server("workers")
        .allow_special()
}

/// Writes a nodes list holding `entries` as `dir/app.json`, as nodesync
/// does, and returns its path.
pub fn nodes_list(dir: &Path, entries: &[&str]) -> PathBuf {
    let list = dir.join("app.json");
    replace_file(&list, nodes_json(entries).as_bytes());
    list
}

/// [`edge_config`] with a nodes list of `nodes` in `dir` and `/` for them,
/// going to `upstream`: the edge as Bitrix24's deliveries meet it.
pub fn nodes_config(
    certs: &TestCerts,
    dir: &Path,
    nodes: &[&str],
    upstream: &Upstream,
) -> EdgeToml {
    edge_config(certs)
        .nodes_file(&nodes_list(dir, nodes))
        .route(EdgeRoute::new("/", &upstream.url()))
}

pub async fn start_edge(config: &EdgeToml) -> b24_edge::EdgeHandle {
    init();
    let toml = config.render();
    let config = b24_edge::Config::from_toml(&toml).unwrap_or_else(|e| panic!("{e}\n{toml}"));
    b24_edge::start(config).await.unwrap()
}

/// Anyone may use `/`, which goes to `upstream`.
pub async fn open_edge(config: EdgeToml, upstream: &Upstream) -> b24_edge::EdgeHandle {
    start_edge(&config.route(EdgeRoute::new("/", &upstream.url()).allow(&["any"]))).await
}

/// An HTTPS client trusting the test CA, connecting from `local`.
pub fn client(certs: &TestCerts, local: &str, http2: bool) -> reqwest::Client {
    init();
    client_trusting(&certs.ca_pem, ip(local), http2)
}

/// [`client`] from the CA's PEM alone, for a task that cannot borrow the
/// certificates.
fn client_trusting(ca_pem: &str, local: IpAddr, http2: bool) -> reqwest::Client {
    let builder = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(ca_pem.as_bytes()).unwrap()])
        .local_address(local)
        .timeout(GENEROUS)
        .no_proxy();
    let builder = if http2 {
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

/// Whether the edge refused the connection for `url` before TLS (the
/// request fails without any HTTP answer).
pub async fn refused(client: &reqwest::Client, url: &str) -> bool {
    client.get(url).send().await.is_err()
}

/// Whether `url` was denied: the connection refused before TLS, or — on a
/// connection admitted earlier, when the list changed since — a 403.
pub async fn denied(client: &reqwest::Client, url: &str) -> bool {
    match client.get(url).send().await {
        Err(_) => true,
        Ok(response) => response.status() == 403,
    }
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
    try_tcp_from(local, to).await.unwrap()
}

/// The same, for connections the edge may reset at once (a refused peer
/// can see the reset already in `connect`).
pub async fn try_tcp_from(local: &str, to: SocketAddr) -> std::io::Result<TcpStream> {
    let local: SocketAddr = SocketAddr::new(ip(local), 0);
    let socket = if local.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.bind(local)?;
    socket.connect(to).await
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
    send(sender, "GET", path).await
}

/// One request without a body over an HTTP/1.1 connection of the test's
/// own; returns the status and the body read whole.
pub async fn send(
    sender: &mut hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    method: &str,
    path: &str,
) -> (u16, String) {
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "localhost")
        .body(Full::default())
        .unwrap();
    // A response just read may still be finishing in the connection's task.
    sender.ready().await.unwrap();
    let response = sender.send_request(request).await.unwrap();
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// Waits until the edge has a nodes list.
pub async fn list_loaded(edge: &b24_edge::EdgeHandle) {
    eventually("the list is loaded", || async {
        edge.nodes().current().is_some()
    })
    .await;
}

/// A TLS client config trusting the test CA and offering `alpn`.
pub fn tls_client_config(certs: &TestCerts, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    let mut config = rustls::ClientConfig::builder()
        .with_root_certificates(certs.root_store())
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

/// A TLS handshake from `local` offering `alpn` (empty: no ALPN at all).
pub async fn tls_from(
    certs: &TestCerts,
    local: &str,
    to: SocketAddr,
    alpn: &[&[u8]],
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = try_tcp_from(local, to).await?;
    TlsConnector::from(tls_client_config(certs, alpn))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
}

/// An h2 connection over an established TLS stream.
pub async fn h2_over<S>(stream: S) -> hyper::client::conn::http2::SendRequest<Full<Bytes>>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    sender
}

/// Writes raw bytes over TLS (ALPN http/1.1) from `local` and returns
/// everything the edge sends back until it closes the connection, or
/// what came within `wait` if it keeps it open.
pub async fn raw_exchange(
    certs: &TestCerts,
    local: &str,
    to: SocketAddr,
    request: &[u8],
    wait: Duration,
) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tls = tls_from(certs, local, to, &[b"http/1.1"]).await.unwrap();
    tls.write_all(request).await.unwrap();
    let mut got = Vec::new();
    let _ = tokio::time::timeout(wait, tls.read_to_end(&mut got)).await;
    String::from_utf8_lossy(&got).into_owned()
}

/// The status line's code of a raw HTTP/1.1 response ("" for none).
pub fn status_of(raw: &str) -> &str {
    raw.strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .unwrap_or("")
}

/// A client at a listed address that keeps asking, on a new connection
/// each time, while an attack runs: the attack succeeded if any of its
/// requests failed.
pub struct ListedProbe {
    served: Arc<std::sync::atomic::AtomicUsize>,
    failures: Arc<Mutex<Vec<String>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl ListedProbe {
    /// Starts asking `url` from `local` (a fresh client, so a fresh TCP
    /// connection and TLS handshake, per request), expecting 200.
    pub fn start(certs: &TestCerts, local: &str, url: String) -> ListedProbe {
        use std::sync::atomic::Ordering;
        let served = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let ca = certs.ca_pem.clone();
        let local = ip(local);
        let (task_served, task_failures, task_stop) =
            (served.clone(), failures.clone(), stop.clone());
        let task = tokio::spawn(async move {
            let mut http2 = false;
            while !task_stop.load(Ordering::Relaxed) {
                let client = client_trusting(&ca, local, http2);
                http2 = !http2;
                match client.get(&url).send().await {
                    Ok(r) if r.status() == 200 => {
                        task_served.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(r) => task_failures
                        .lock()
                        .unwrap()
                        .push(format!("status {}", r.status())),
                    Err(e) => task_failures.lock().unwrap().push(format!("{e:?}")),
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        ListedProbe {
            served,
            failures,
            stop,
            task,
        }
    }

    pub fn served(&self) -> usize {
        self.served.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Waits until `more` further requests were served.
    pub async fn wait_for(&self, more: usize) {
        let target = self.served() + more;
        eventually("the listed client is served", || async {
            self.served() >= target || !self.failures.lock().unwrap().is_empty()
        })
        .await;
        self.assert_no_failure();
    }

    pub fn assert_no_failure(&self) {
        let failures = self.failures.lock().unwrap();
        assert!(
            failures.is_empty(),
            "the listed client was not served: {failures:?}"
        );
    }

    /// Stops the probe; panics if any of its requests failed.
    pub async fn finish(self) -> usize {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let ListedProbe {
            served,
            failures,
            task,
            ..
        } = self;
        task.await.unwrap();
        let failures = failures.lock().unwrap();
        assert!(
            failures.is_empty(),
            "the listed client was not served: {failures:?}"
        );
        served.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Whether tests that need a system tool may run; without the tool they
/// skip with a message, unless CI requires them (B24_REQUIRE_ROOT_TESTS=1,
/// set by scripts/test as root, where scripts/install-deps installed it).
pub fn tool_available(test: &str, tool: &str) -> bool {
    let found = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(tool).is_file()))
        .unwrap_or(false)
        || Path::new("/usr/sbin").join(tool).is_file();
    if found {
        return true;
    }
    if std::env::var_os("B24_REQUIRE_ROOT_TESTS").is_some_and(|v| v == "1") {
        panic!(
            "{test} must run here (B24_REQUIRE_ROOT_TESTS=1) but {tool} is not installed (scripts/install-deps test)"
        );
    }
    eprintln!("SKIPPED {test}: {tool} is not installed (scripts/install-deps test installs it)");
    false
}

/// A real nginx (from apt) on 127.0.0.1, for a peer that normalizes paths
/// or balances load in front of the edge. Stopped when dropped.
pub struct Nginx {
    pub addr: SocketAddr,
    child: std::process::Child,
    _dir: tempfile::TempDir,
}

impl Nginx {
    /// Starts nginx with `server_body` inside `server { listen ...; }` of a
    /// minimal http block, and waits until it accepts connections.
    pub async fn start(server_body: &str) -> Nginx {
        let dir = tempfile::tempdir().unwrap();
        let port = {
            let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            probe.local_addr().unwrap().port()
        };
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let d = dir.path().display();
        let conf = format!(
            "daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
             events {{ worker_connections 256; }}\n\
             http {{\n access_log off;\n client_body_temp_path {d}/body;\n proxy_temp_path {d}/proxy;\n\
             fastcgi_temp_path {d}/fastcgi;\n uwsgi_temp_path {d}/uwsgi;\n scgi_temp_path {d}/scgi;\n\
             server {{\n listen {addr};\n {server_body}\n }}\n}}\n"
        );
        std::fs::write(dir.path().join("nginx.conf"), conf).unwrap();
        let nginx = if Path::new("/usr/sbin/nginx").is_file() {
            "/usr/sbin/nginx"
        } else {
            "nginx"
        };
        let child = std::process::Command::new(nginx)
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(dir.path().join("nginx.conf"))
            .arg("-e")
            .arg(dir.path().join("error.log"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start nginx");
        let running = Nginx {
            addr,
            child,
            _dir: dir,
        };
        eventually("nginx accepts connections", || async {
            TcpStream::connect(addr).await.is_ok()
        })
        .await;
        running
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An h2 client (the `h2` crate, over real TLS) that gives every stream
/// `window` bytes of flow-control window and never a byte more: it
/// answers PINGs and SETTINGS, but never sends WINDOW_UPDATE.
pub struct StingyH2 {
    send: h2::client::SendRequest<Bytes>,
    _conn: tokio::task::JoinHandle<Result<(), h2::Error>>,
}

/// How a response body ended for a client.
#[derive(Debug, PartialEq, Eq)]
pub enum StreamEnd {
    Complete,
    /// The server reset the stream.
    Reset(h2::Reason),
    /// The stream or connection failed otherwise.
    Failed(String),
    /// Still open after [`GENEROUS`].
    StillOpen,
}

impl StingyH2 {
    pub async fn connect(certs: &TestCerts, local: &str, to: SocketAddr, window: u32) -> StingyH2 {
        let tls = tls_from(certs, local, to, &[b"h2"]).await.unwrap();
        let (send, conn) = h2::client::Builder::new()
            .initial_window_size(window)
            .initial_connection_window_size(1 << 20)
            .handshake::<_, Bytes>(tls)
            .await
            .unwrap();
        StingyH2 {
            send,
            _conn: tokio::spawn(conn),
        }
    }

    /// Sends a GET for `url`; returns the response status and its body.
    pub async fn get(&mut self, url: &str) -> (u16, h2::RecvStream) {
        let request = Request::get(url).body(()).unwrap();
        let mut send = self.send.clone().ready().await.unwrap();
        let (response, _) = send.send_request(request, true).unwrap();
        let response = tokio::time::timeout(GENEROUS, response)
            .await
            .expect("a response head")
            .unwrap();
        let status = response.status().as_u16();
        (status, response.into_body())
    }
}

/// Reads a body to its end without releasing any window: the bytes that
/// came and how it ended.
pub async fn read_without_window(mut body: h2::RecvStream) -> (usize, StreamEnd) {
    let mut received = 0;
    loop {
        match tokio::time::timeout(GENEROUS, body.data()).await {
            Err(_) => return (received, StreamEnd::StillOpen),
            Ok(None) => return (received, StreamEnd::Complete),
            Ok(Some(Ok(data))) => received += data.len(),
            Ok(Some(Err(e))) => {
                return match e.reason() {
                    Some(reason) if e.is_reset() => (received, StreamEnd::Reset(reason)),
                    _ => (received, StreamEnd::Failed(e.to_string())),
                };
            }
        }
    }
}

/// A raw HTTP/1.1 connection from `local` (ALPN http/1.1) that has had
/// `GET path` answered 200: what an idle keep-alive client looks like.
pub async fn answered_once(
    certs: &TestCerts,
    local: &str,
    to: SocketAddr,
    path: &str,
) -> TlsStream<TcpStream> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tls = tls_from(certs, local, to, &[b"http/1.1"]).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n");
    tls.write_all(request.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tls.read(&mut buf).await.unwrap();
    let answer = String::from_utf8_lossy(&buf[..n]);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    tls
}

/// Slowloris: writes `head` a byte every `every`, over and over, until the
/// edge closes the connection; fails the test if it has not within
/// [`GENEROUS`].
pub async fn drip_until_closed<S: tokio::io::AsyncWrite + Unpin>(
    stream: &mut S,
    head: &[u8],
    every: Duration,
) {
    use tokio::io::AsyncWriteExt;
    let drip = async {
        for byte in head.iter().cycle() {
            if stream.write_all(&[*byte]).await.is_err() {
                return;
            }
            tokio::time::sleep(every).await;
        }
    };
    tokio::time::timeout(GENEROUS, drip)
        .await
        .expect("the edge kept the slow connection open");
}

/// Reads until the edge closes the connection; true if it did within
/// [`GENEROUS`].
pub async fn closed_by_edge<S: tokio::io::AsyncRead + Unpin>(stream: &mut S) -> bool {
    use tokio::io::AsyncReadExt;
    let mut sink = Vec::new();
    tokio::time::timeout(GENEROUS, stream.read_to_end(&mut sink))
        .await
        .is_ok()
}
