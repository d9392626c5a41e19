//! Idle HTTP/1.1 keep-alive connections are parked (hyper's buffers
//! dropped, only the TLS session kept) and resumed by their next request.
//! A client must never notice: the same connection keeps serving, across
//! pauses, pipelined requests, HEAD and bodies; and an attacker must not
//! gain anything: a parked connection still closes at its idle deadline, a
//! slow head after a pause is still cut off, shutdown still closes it.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const CLIENT: &str = "127.0.0.2";

/// Longer than the edge's park delay (50 ms): after it the connection
/// is parked.
const PAUSE: Duration = Duration::from_millis(600);

/// An edge with `/` open to anyone, proxying to a recording upstream (and
/// the directory its files are in, kept while the test runs).
async fn setup(
    configure: impl FnOnce(EdgeToml) -> EdgeToml,
) -> (TestCerts, Upstream, b24_edge::EdgeHandle, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let certs = TestCerts::new(dir.path());
    let upstream = Upstream::start().await;
    let edge = open_edge(configure(edge_config(&certs)), &upstream).await;
    (certs, upstream, edge, dir)
}

async fn request(
    sender: &mut hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    method: &str,
    path: &str,
    body: &'static [u8],
) -> (u16, Option<String>, String) {
    let request = http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "localhost")
        .body(Full::new(Bytes::from_static(body)))
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    let status = response.status().as_u16();
    let connection = response
        .headers()
        .get("connection")
        .map(|v| v.to_str().unwrap().to_owned());
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        connection,
        String::from_utf8_lossy(&body).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_keep_alive_connection_serves_every_kind_of_request_across_pauses() {
    let (certs, upstream, edge, _dir) = setup(|config| config).await;
    let tls = tls_from(&certs, CLIENT, edge.addrs()[0], &[b"http/1.1"])
        .await
        .unwrap();
    let mut sender = h1_over(tls).await;
    // Before the first request too: a connection that waited past the
    // park delay after its handshake still gets served.
    tokio::time::sleep(PAUSE).await;
    let steps: [(&str, &str, &[u8]); 6] = [
        ("GET", "/first", b""),
        ("HEAD", "/head", b""),
        ("POST", "/echo", "тело сделки №1".as_bytes()),
        ("GET", "/after-post", b""),
        ("DELETE", "/echo", b""),
        ("GET", "/last", b""),
    ];
    for (method, path, body) in steps {
        let (status, connection, text) = request(&mut sender, method, path, body).await;
        assert_eq!(status, 200, "{method} {path}");
        assert_eq!(
            connection, None,
            "{method} {path}: the edge ended keep-alive"
        );
        match (method, path) {
            ("HEAD", _) => assert_eq!(text, ""),
            (_, "/echo") => assert_eq!(text.as_bytes(), body),
            _ => assert_eq!(text, format!("upstream saw {path}")),
        }
        tokio::time::sleep(PAUSE).await;
    }
    let metrics = scrape(&edge).await;
    assert_eq!(sample(&metrics, "b24_edge_open_connections"), 1.0);
    assert_eq!(sample(&metrics, "b24_edge_idle_closes_total"), 0.0);
    assert_eq!(upstream.count(), 6);
    drop(sender);
    assert!(edge.shutdown().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_are_all_answered_in_order() {
    let (certs, upstream, edge, _dir) = setup(|config| config).await;
    let mut tls = tls_from(&certs, CLIENT, edge.addrs()[0], &[b"http/1.1"])
        .await
        .unwrap();
    // Three requests in one write, then a fourth whose head comes in two
    // parts a moment apart, after a pause long enough to park.
    tls.write_all(
        b"GET /p1 HTTP/1.1\r\nHost: localhost\r\n\r\n\
          POST /echo HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\n\r\nhello\
          GET /p3 HTTP/1.1\r\nHost: localhost\r\n\r\n",
    )
    .await
    .unwrap();
    let mut got = String::new();
    let mut buf = vec![0u8; 16 * 1024];
    while got.matches("HTTP/1.1 200").count() < 3 || !got.contains("upstream saw /p3") {
        let n = tokio::time::timeout(GENEROUS, tls.read(&mut buf))
            .await
            .expect("all three answers")
            .unwrap();
        assert!(n > 0, "closed after {got:?}");
        got.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    let (p1, echo, p3) = (
        got.find("upstream saw /p1").unwrap(),
        got.find("hello").unwrap(),
        got.find("upstream saw /p3").unwrap(),
    );
    assert!(p1 < echo && echo < p3, "out of order: {got}");
    tokio::time::sleep(PAUSE).await;
    tls.write_all(b"GET /p4 HTTP/1.1\r\nHo").await.unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    tls.write_all(b"st: localhost\r\n\r\n").await.unwrap();
    let n = tokio::time::timeout(GENEROUS, tls.read(&mut buf))
        .await
        .expect("the fourth answer")
        .unwrap();
    let fourth = String::from_utf8_lossy(&buf[..n]);
    assert!(fourth.starts_with("HTTP/1.1 200"), "{fourth}");
    assert!(fourth.contains("upstream saw /p4"), "{fourth}");
    assert_eq!(upstream.count(), 4);
    drop(tls);
    assert!(edge.shutdown().await);
}

/// The one case parking changes (documented in the edge's `park`
/// module): a pipelined head left unfinished past the park delay closes
/// the connection like an idle timeout would; nothing of it is
/// forwarded, and the request before it was answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipelined_head_left_unfinished_is_closed_unforwarded() {
    let (certs, upstream, edge, _dir) = setup(|config| config).await;
    let mut tls = tls_from(&certs, CLIENT, edge.addrs()[0], &[b"http/1.1"])
        .await
        .unwrap();
    tls.write_all(b"GET /answered HTTP/1.1\r\nHost: localhost\r\n\r\nGET /half HTTP/1.1\r\nHo")
        .await
        .unwrap();
    let mut got = Vec::new();
    let closed = tokio::time::timeout(GENEROUS, tls.read_to_end(&mut got)).await;
    assert!(closed.is_ok(), "the connection stayed open");
    let got = String::from_utf8_lossy(&got);
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    assert!(got.contains("upstream saw /answered"), "{got}");
    assert!(!got.contains("/half"), "{got}");
    let paths: Vec<String> = upstream.seen().into_iter().map(|s| s.path).collect();
    assert_eq!(paths, ["/answered"]);
    assert!(edge.shutdown().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_connection_still_closes_at_its_idle_deadline() {
    let (certs, _upstream, edge, _dir) = setup(|config| config.server("idle_timeout", "1s")).await;
    let mut tls = answered_once(&certs, CLIENT, edge.addrs()[0], "/once").await;
    assert!(
        closed_by_edge(&mut tls).await,
        "kept open past idle_timeout"
    );
    let metrics = scrape(&edge).await;
    assert_eq!(sample(&metrics, "b24_edge_idle_closes_total"), 1.0);
    eventually("the connection is no longer counted", || async {
        sample(&scrape(&edge).await, "b24_edge_open_connections") == 0.0
    })
    .await;
    assert!(edge.shutdown().await);
}

/// Slowloris after a pause: the resumed connection is held to the same
/// idle deadline, counted from the last response, however slowly the
/// bytes keep coming.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_head_after_a_parked_pause_is_cut_off() {
    let (certs, upstream, edge, _dir) = setup(|config| config.server("idle_timeout", "2s")).await;
    let mut tls = answered_once(&certs, "127.0.0.66", edge.addrs()[0], "/first").await;
    tokio::time::sleep(PAUSE).await;
    drip_until_closed(
        &mut tls,
        b"GET /second HTTP/1.1\r\nX-Slow: ",
        Duration::from_millis(300),
    )
    .await;
    assert_eq!(upstream.count(), 1);
    assert!(edge.shutdown().await);
}

/// Shutdown closes parked connections at once and still lets a request in
/// flight on another connection finish.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_parked_connections_and_finishes_requests_in_flight() {
    let (certs, upstream, edge, _dir) = setup(|config| config).await;
    let addr = edge.addrs()[0];
    let mut parked = answered_once(&certs, CLIENT, addr, "/before").await;
    let busy = tls_from(&certs, CLIENT, addr, &[b"http/1.1"])
        .await
        .unwrap();
    let mut busy = h1_over(busy).await;
    let in_flight = tokio::spawn(async move { send_get(&mut busy, "/slow/1500").await });
    eventually("the slow request reached the upstream", || async {
        upstream.count() == 2
    })
    .await;
    tokio::time::sleep(PAUSE).await;
    let shutdown = tokio::spawn(edge.shutdown());
    assert!(
        closed_by_edge(&mut parked).await,
        "the parked connection stayed open"
    );
    let (status, body) = in_flight.await.unwrap();
    assert_eq!((status, body.as_str()), (200, "upstream saw /slow/1500"));
    assert!(shutdown.await.unwrap(), "shutdown did not finish in time");
}

/// A client that offers no ALPN (wrk, scripts on raw OpenSSL) is served
/// in whichever protocol it speaks, and parks like any other over HTTP/1.1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_without_alpn_are_served_in_the_protocol_they_speak() {
    let (certs, _upstream, edge, _dir) = setup(|config| config).await;
    let addr = edge.addrs()[0];
    let h1 = tls_from(&certs, CLIENT, addr, &[]).await.unwrap();
    assert_eq!(h1.get_ref().1.alpn_protocol(), None);
    let mut h1 = h1_over(h1).await;
    for path in ["/h1-first", "/h1-after-a-pause"] {
        let (status, connection, text) = request(&mut h1, "GET", path, b"").await;
        assert_eq!((status, connection), (200, None));
        assert_eq!(text, format!("upstream saw {path}"));
        tokio::time::sleep(PAUSE).await;
    }
    let h2 = tls_from(&certs, CLIENT, addr, &[]).await.unwrap();
    let h2 = h2_over(h2).await;
    for path in ["/h2-first", "/h2-after-a-pause"] {
        let request = http::Request::get(format!("https://localhost{path}"))
            .body(Full::default())
            .unwrap();
        let response = h2.clone().send_request(request).await.unwrap();
        assert_eq!(response.status(), 200);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, format!("upstream saw {path}"));
        tokio::time::sleep(PAUSE).await;
    }
    assert_eq!(
        sample(&scrape(&edge).await, "b24_edge_open_connections"),
        2.0
    );
    assert!(edge.shutdown().await);
}
