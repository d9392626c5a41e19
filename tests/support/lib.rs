//! The harness of the end-to-end tests in `tests/`: the workspace's real
//! binaries as processes on loopback (`b24-emulator` playing the portals,
//! `b24-relay`, `b24-edge`, `nodesync`), each logging into the test's
//! directory and stopped when dropped, and the HTTP calls the tests make
//! to them.
//!
//! The binaries are the ones `cargo test --workspace` builds next to the
//! test (`target/debug/`); `cargo test -p b24-e2e` alone needs a `cargo
//! build --bins` first.

pub mod portal;
pub mod process;

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

pub use portal::EmulatedPortal;
pub use process::Process;

/// Only there so that a broken run fails instead of hanging.
pub const GENEROUS: Duration = Duration::from_secs(60);

/// The path of a workspace binary, next to the running test's directory.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test knows its path");
    // target/debug/deps/end_to_end-HASH → target/debug/NAME
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("the test runs from target/PROFILE/deps");
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} is missing: run `cargo build --bins` (scripts/test builds every binary)",
        path.display()
    );
    path
}

/// A port free on 127.0.0.1 now, for a process that is told its port (and
/// must keep it across a restart).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port on loopback")
        .port()
}

pub fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Polls `check` every 50 ms until it holds; panics after `timeout`.
pub async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A plain HTTP client for the portals' REST and the metrics endpoints.
pub fn http() -> reqwest::Client {
    b24_testkit::install_crypto_provider();
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("an HTTP client")
}

/// An HTTPS client that connects from `from` (127.0.0.N) and trusts only
/// `cert_pem`: a Bitrix24 queue server calling the edge, or a stranger.
pub fn https_from(from: IpAddr, cert_pem: &str) -> reqwest::Client {
    b24_testkit::install_crypto_provider();
    let cert = reqwest::Certificate::from_pem(cert_pem.as_bytes()).expect("a PEM certificate");
    reqwest::Client::builder()
        .tls_certs_only([cert])
        .local_address(from)
        .timeout(Duration::from_secs(30))
        .build()
        .expect("an HTTPS client")
}

/// GETs `url`; the status, or 0 when nothing answered.
pub async fn status_of(client: &reqwest::Client, url: &str) -> u16 {
    match client.get(url).send().await {
        Ok(answer) => answer.status().as_u16(),
        Err(_) => 0,
    }
}

/// The value of one Prometheus sample (`name{labels}`), 0 when absent.
pub async fn metric(url: &str, sample: &str) -> f64 {
    let Ok(answer) = http().get(url).send().await else {
        return 0.0;
    };
    let text = answer.text().await.unwrap_or_default();
    text.lines()
        .filter_map(|line| line.strip_prefix(sample)?.strip_prefix(' '))
        .filter_map(|value| value.trim().parse::<f64>().ok())
        .next()
        .unwrap_or(0.0)
}
