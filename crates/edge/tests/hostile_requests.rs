//! Attacks inside requests, from unlisted loopback addresses: path tricks
//! against a normalizing backend (a real nginx), X-Forwarded-For tricks
//! behind a real nginx balancer, PROXY protocol plus X-Forwarded-For, and
//! bodies and heads that try to reach or tie up the upstream.

mod common;

use std::time::Duration;

use b24_edge::client_ip::encode_v2;
use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const NODE: &str = "127.0.0.2";
const OFFICE: &str = "127.0.0.9";
const BALANCER: &str = "127.0.0.5";
const ATTACKER: &str = "127.0.0.66";

/// Sends one GET with `path` exactly as given (no client-side URL
/// clean-up) over HTTP/1.1 or h2, from `from`.
async fn raw_get(
    certs: &TestCerts,
    from: &str,
    edge: &b24_edge::EdgeHandle,
    path: &str,
    http2: bool,
) -> (u16, String) {
    let addr = edge.addrs()[0];
    if http2 {
        let tls = tls_from(certs, from, addr, &[b"h2"]).await.unwrap();
        let mut sender = h2_over(tls).await;
        let uri = http::Uri::builder()
            .scheme("https")
            .authority(format!("localhost:{}", addr.port()))
            .path_and_query(path)
            .build()
            .unwrap();
        let request = http::Request::get(uri)
            .body(Full::<Bytes>::default())
            .unwrap();
        let response = sender.send_request(request).await.unwrap();
        let status = response.status().as_u16();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    } else {
        let tls = tls_from(certs, from, addr, &[b"http/1.1"]).await.unwrap();
        let mut sender = h1_over(tls).await;
        send_get(&mut sender, path).await
    }
}

/// nginx as the upstream: three locations that say which one served.
const NORMALIZING_BACKEND: &str = r#"
    location / { return 200 "public $uri\n"; }
    location /hook/ { return 200 "hook $uri\n"; }
    location /bitrix/admin/ { return 200 "admin $uri\n"; }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_tricks_do_not_cross_route_allow_lists() {
    let test = "path_tricks_do_not_cross_route_allow_lists";
    if !tool_available(test, "nginx") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let certs = TestCerts::new(dir.path());
    let backend = Nginx::start(NORMALIZING_BACKEND).await;
    let edge = start_edge(
        &edge_config(&certs)
            .nodes_file(&nodes_list(dir.path(), &[NODE]))
            .route(EdgeRoute::new("/", &backend.url()).allow(&["any"]))
            .route(EdgeRoute::new("/hook/", &backend.url()))
            .route(
                EdgeRoute::new("/bitrix/admin/", &backend.url()).allow(&[&format!("{OFFICE}/32")]),
            ),
    )
    .await;
    list_loaded(&edge).await;

    // Each trick names a protected handler to nginx (checked directly, so
    // that the test cannot pass because a trick is simply wrong)…
    let tricks = [
        ("//hook/x", "hook"),
        ("/%68ook/x", "hook"),
        ("/x/%2e%2e/hook/x", "hook"),
        ("/x/%2E%2E/hook/x", "hook"),
        ("/./hook/x", "hook"),
        ("/x/../hook/x", "hook"),
        ("/bitrix/%61dmin/", "admin"),
        ("//bitrix//admin/", "admin"),
        ("/bitrix/./admin/x", "admin"),
    ];
    for (trick, handler) in tricks {
        let direct = raw_plain_get(&backend, trick).await;
        assert!(
            direct.contains(&format!("\r\n\r\n{handler} ")),
            "nginx itself does not take {trick} to {handler}: {direct}"
        );
    }
    // …and through the edge, from an unlisted client, none gets there,
    // over either protocol.
    for http2 in [false, true] {
        for (trick, handler) in tricks {
            let (status, body) = raw_get(&certs, ATTACKER, &edge, trick, http2).await;
            assert_eq!(status, 403, "{trick} (h2: {http2}): {body}");
            assert!(!body.starts_with(handler), "{trick}: {body}");
        }
        // Forms servers read differently are refused outright.
        for ambiguous in [
            "/hook%2fx",
            "/bitrix%2Fadmin/",
            "/hook/%5c",
            "/hook/%00",
            "/%ff",
            "/..",
        ] {
            let (status, body) = raw_get(&certs, ATTACKER, &edge, ambiguous, http2).await;
            assert_eq!(status, 400, "{ambiguous} (h2: {http2}): {body}");
        }
    }
    // A raw backslash (which http::Uri would not even build).
    let raw = raw_exchange(
        &certs,
        ATTACKER,
        edge.addrs()[0],
        b"GET /hook\\x HTTP/1.1\r\nHost: localhost\r\n\r\n",
        GENEROUS,
    )
    .await;
    assert_eq!(status_of(&raw), "400", "{raw}");

    // The listed clients reach their handlers with the same tricks, and
    // the backend is given the normalized path.
    let (status, body) = raw_get(&certs, NODE, &edge, "//hook/%78", true).await;
    assert_eq!((status, body.as_str()), (200, "hook /hook/x\n"));
    let (status, body) = raw_get(&certs, OFFICE, &edge, "/bitrix/%61dmin/", false).await;
    assert_eq!((status, body.as_str()), (200, "admin /bitrix/admin/\n"));
    // The public route is still public.
    let (status, body) = raw_get(&certs, ATTACKER, &edge, "/hooks", false).await;
    assert_eq!((status, body.as_str()), (200, "public /hooks\n"));

    let metrics = scrape(&edge).await;
    assert_eq!(
        sample(&metrics, "b24_edge_bad_requests_total{reason=\"path\"}"),
        13.0
    );
    assert!(edge.shutdown().await);
}

/// A plain-HTTP GET straight to nginx, the path as given.
async fn raw_plain_get(nginx: &Nginx, path: &str) -> String {
    let mut tcp = tokio::net::TcpStream::connect(nginx.addr).await.unwrap();
    tcp.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut out = Vec::new();
    tcp.read_to_end(&mut out).await.unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

/// Raw bytes in plain HTTP to nginx from `from`; the whole answer.
async fn plain_exchange(from: &str, to: std::net::SocketAddr, request: &[u8]) -> String {
    let mut tcp = tcp_from(from, to).await;
    tcp.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(GENEROUS, tcp.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_for_behind_a_real_nginx_balancer() {
    let test = "forwarded_for_behind_a_real_nginx_balancer";
    if !tool_available(test, "nginx") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let certs = TestCerts::new(dir.path());
    let upstream = Upstream::start().await;
    // The balancer's own address is allowed on an internal route: the
    // attack is to be taken for the balancer.
    let balancer_net = format!("{BALANCER}/32");
    let edge = start_edge(
        &nodes_config(&certs, dir.path(), &[NODE], &upstream)
            .client_ip("mode", "x_forwarded_for")
            .client_ip("trusted_proxies", vec![balancer_net.as_str()])
            .route(EdgeRoute::new("/internal/", &upstream.url()).allow(&[&balancer_net])),
    )
    .await;
    list_loaded(&edge).await;
    let edge_addr = edge.addrs()[0];
    let proxy = format!(
        "proxy_pass https://{edge_addr}; proxy_bind {BALANCER}; proxy_ssl_verify off;\n\
         proxy_http_version 1.1; proxy_set_header Connection \"\";"
    );
    let balancer = Nginx::start(&format!(
        "location / {{ {proxy} proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for; }}\n\
         # A careless balancer that passes the client's header on unchanged.\n\
         location /careless/ {{ {proxy} proxy_set_header X-Forwarded-For $http_x_forwarded_for; }}"
    ))
    .await;
    let via_balancer = |from: &'static str, path: &'static str, xff: &'static [u8]| {
        let mut request =
            format!("GET {path} HTTP/1.1\r\nHost: portal.example\r\nConnection: close\r\n")
                .into_bytes();
        if !xff.is_empty() {
            request.extend_from_slice(b"X-Forwarded-For: ");
            request.extend_from_slice(xff);
            request.extend_from_slice(b"\r\n");
        }
        request.extend_from_slice(b"\r\n");
        let to = balancer.addr;
        async move { plain_exchange(from, to, &request).await }
    };

    // One non-ASCII byte in the attacker's own header (issue 10, item 3):
    // the edge finds the attacker, not the balancer.
    for xff in [
        &b"\xff"[..],
        b"\xd0\xbf\xd1\x80\xd0\xb8, 1.1.1.1",
        b"nonsense",
        b"",
    ] {
        let answer = via_balancer(ATTACKER, "/internal/x", xff).await;
        assert_eq!(status_of(&answer), "403", "{xff:?}: {answer}");
    }
    // A node's address written by the attacker does not make it a node.
    let answer = via_balancer(ATTACKER, "/hook", b"127.0.0.2").await;
    assert_eq!(status_of(&answer), "403", "{answer}");
    // The node is found whatever garbage it carries to the left.
    let answer = via_balancer(NODE, "/hook", b"\xff, nonsense").await;
    assert_eq!(status_of(&answer), "200", "{answer}");
    let seen = upstream.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].headers["x-real-ip"], NODE);
    assert_eq!(seen[0].headers["x-forwarded-for"], "127.0.0.2, 127.0.0.5");

    // Behind the careless location the attacker's own words reach the edge
    // as the last hop: an address is believed as it would be by nginx's
    // realip (so the balancer must not pass them on), garbage is a 400 —
    // never the balancer's address.
    for xff in [&b"\xff"[..], b"nonsense", b"1.1.1.1, \xff"] {
        let answer = via_balancer(ATTACKER, "/careless/x", xff).await;
        assert_eq!(status_of(&answer), "400", "{xff:?}: {answer}");
    }
    assert_eq!(upstream.count(), 1);
    let metrics = scrape(&edge).await;
    assert_eq!(
        sample(
            &metrics,
            "b24_edge_bad_requests_total{reason=\"forwarded_for\"}"
        ),
        3.0
    );
    assert!(edge.shutdown().await);
}

/// Sends `header` then one HTTP/1.1 request with `xff` over TLS, as an L4
/// balancer at 127.0.0.5 would; the status, or None if refused.
async fn proxied(
    certs: &TestCerts,
    edge: &b24_edge::EdgeHandle,
    header: &[u8],
    path: &str,
    xff: &str,
) -> Option<u16> {
    let mut tcp = try_tcp_from(BALANCER, edge.addrs()[0]).await.ok()?;
    tcp.write_all(header).await.ok()?;
    let tls = tokio_rustls::TlsConnector::from(tls_client_config(certs, &[b"http/1.1"]))
        .connect(
            rustls::pki_types::ServerName::try_from("localhost").unwrap(),
            tcp,
        )
        .await
        .ok()?;
    let mut sender = h1_over(tls).await;
    let request = http::Request::get(path)
        .header("host", "localhost")
        .header("x-forwarded-for", xff)
        .body(Full::<Bytes>::default())
        .unwrap();
    Some(sender.send_request(request).await.ok()?.status().as_u16())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_protocol_never_believes_x_forwarded_for() {
    let dir = tempfile::tempdir().unwrap();
    let certs = TestCerts::new(dir.path());
    let upstream = Upstream::start().await;
    let edge = start_edge(
        &nodes_config(&certs, dir.path(), &[NODE], &upstream)
            .client_ip("mode", "proxy_protocol")
            .client_ip("trusted_proxies", vec![format!("{BALANCER}/32")])
            .route(EdgeRoute::new("/public/", &upstream.url()).allow(&["any"])),
    )
    .await;
    list_loaded(&edge).await;
    let dst = edge.addrs()[0];
    let from = |src: &str| encode_v2(format!("{src}:40000").parse().unwrap(), dst);
    // An unlisted source that claims to forward for a node: XFF is the
    // client's own words behind an L4 balancer and is not read.
    assert_eq!(
        proxied(&certs, &edge, &from(ATTACKER), "/hook", NODE).await,
        Some(403)
    );
    // A header without an address (a health check) with a node's address
    // in XFF: judged as the balancer, which is no node.
    assert_eq!(
        proxied(&certs, &edge, b"PROXY UNKNOWN\r\n", "/hook", NODE).await,
        Some(403)
    );
    let mut local = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    local.extend_from_slice(&[0x20, 0x00, 0x00, 0x00]);
    assert_eq!(
        proxied(&certs, &edge, &local, "/hook", NODE).await,
        Some(403)
    );
    assert_eq!(upstream.count(), 0);
    // The node itself, whatever it writes; the upstream hears only the
    // address the PROXY header vouched for.
    assert_eq!(
        proxied(&certs, &edge, &from(NODE), "/hook", "6.6.6.6").await,
        Some(200)
    );
    let seen = upstream.seen();
    assert_eq!(seen[0].headers["x-forwarded-for"], NODE);
    assert_eq!(seen[0].headers["x-real-ip"], NODE);
    assert!(edge.shutdown().await);
}

fn chunks(count: usize, size: usize) -> reqwest::Body {
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..count).map(|_| Ok(vec![b'x'; size])).collect();
    reqwest::Body::wrap_stream(futures_util::stream::iter(chunks))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_bodies_never_reach_the_upstream() {
    let dir = tempfile::tempdir().unwrap();
    let certs = TestCerts::new(dir.path());
    let upstream = Upstream::start().await;
    let edge = open_edge(edge_config(&certs).server("max_body", "1MiB"), &upstream).await;
    for http2 in [false, true] {
        let client = client(&certs, ATTACKER, http2);
        // 2.5 MiB of unknown length: chunked over HTTP/1.1, no
        // content-length over h2 (issue 10, item 5).
        let streamed = client
            .post(url(&edge, "/echo"))
            .body(chunks(40, 64 * 1024))
            .send()
            .await
            .unwrap();
        assert_eq!(streamed.status(), 413, "h2: {http2}");
        let declared = client
            .post(url(&edge, "/echo"))
            .body(vec![b'y'; 2_621_440])
            .send()
            .await;
        // With a declared length the 413 may come before the client has
        // written it all (then the client sees the connection go).
        if let Ok(declared) = declared {
            assert_eq!(declared.status(), 413);
        }
    }
    assert_eq!(upstream.connections(), 0, "not even the headers reached it");
    // A body that fits arrives whole, with its length.
    let fits = client(&certs, ATTACKER, false)
        .post(url(&edge, "/echo"))
        .body(chunks(15, 64 * 1024))
        .send()
        .await
        .unwrap();
    assert_eq!(fits.status(), 200);
    assert_eq!(fits.bytes().await.unwrap().len(), 15 * 64 * 1024);
    let seen = upstream.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(
        seen[0].headers["content-length"],
        (15 * 64 * 1024).to_string()
    );
    assert!(!seen[0].headers.contains_key("transfer-encoding"));
    assert!(edge.shutdown().await);
}

/// Writes a request head and then `body` in `parts`, `pause` apart;
/// returns the answer.
async fn slow_post(
    certs: &TestCerts,
    edge: &b24_edge::EdgeHandle,
    head: &str,
    body: &[u8],
    parts: usize,
    pause: Duration,
) -> String {
    let mut tls = tls_from(certs, ATTACKER, edge.addrs()[0], &[b"http/1.1"])
        .await
        .unwrap();
    tls.write_all(head.as_bytes()).await.unwrap();
    for part in body.chunks(body.len().div_ceil(parts)) {
        tokio::time::sleep(pause).await;
        tls.write_all(part).await.unwrap();
    }
    let mut out = Vec::new();
    let _ = tokio::time::timeout(GENEROUS, tls.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_uploads_are_the_clients_time_and_stalled_ones_get_408() {
    let dir = tempfile::tempdir().unwrap();
    let certs = TestCerts::new(dir.path());
    let upstream = Upstream::start().await;
    let edge = open_edge(
        edge_config(&certs)
            .server("upstream_timeout", "300ms")
            .server("client_body_timeout", "3s")
            .server("body_buffer", "1KiB"),
        &upstream,
    )
    .await;
    // Steady but slow — longer in total than upstream_timeout, each pause
    // far inside client_body_timeout: served (issue 10, item 6: it was a
    // 504 and an upstream timeout). Streamed (declared, over body_buffer)…
    let body = vec![b'z'; 8192];
    let head = "POST /echo HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: 8192\r\n\r\n";
    let answer = slow_post(&certs, &edge, head, &body, 8, Duration::from_millis(100)).await;
    assert_eq!(status_of(&answer), "200", "{answer}");
    // …and buffered (chunked).
    let mut chunked = Vec::new();
    for _ in 0..8 {
        chunked.extend_from_slice(b"80\r\n");
        chunked.extend_from_slice(&[b'c'; 128]);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let head = "POST /echo HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n";
    let answer = slow_post(&certs, &edge, head, &chunked, 8, Duration::from_millis(100)).await;
    assert_eq!(status_of(&answer), "200", "{answer}");
    assert_eq!(upstream.count(), 2);

    // A client that stops sending its body gets 408, counted as its own.
    for head in [
        "POST /echo HTTP/1.1\r\nHost: localhost\r\nContent-Length: 8192\r\n\r\n",
        "POST /echo HTTP/1.1\r\nHost: localhost\r\nContent-Length: 512\r\n\r\n",
    ] {
        let mut tls = tls_from(&certs, ATTACKER, edge.addrs()[0], &[b"http/1.1"])
            .await
            .unwrap();
        tls.write_all(head.as_bytes()).await.unwrap();
        tls.write_all(&[b'p'; 100]).await.unwrap();
        let mut out = Vec::new();
        let _ = tokio::time::timeout(GENEROUS, tls.read_to_end(&mut out)).await;
        let answer = String::from_utf8_lossy(&out).into_owned();
        assert_eq!(status_of(&answer), "408", "{answer}");
    }
    let metrics = scrape(&edge).await;
    assert_eq!(sample(&metrics, "b24_edge_client_body_timeouts_total"), 2.0);
    assert!(
        !metrics.contains("b24_edge_upstream_errors_total{"),
        "nothing was blamed on the upstream:\n{metrics}"
    );
    assert!(edge.shutdown().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_framing_and_hosts_are_client_errors() {
    let dir = tempfile::tempdir().unwrap();
    let certs = TestCerts::new(dir.path());
    let upstream = Upstream::start().await;
    let edge = open_edge(edge_config(&certs), &upstream).await;
    let addr = edge.addrs()[0];
    let exchange = |request: &'static [u8]| raw_exchange(&certs, ATTACKER, addr, request, GENEROUS);

    // Malformed chunked framing (issue 10, item 7: it was a 502, an
    // upstream error and a WARN line each time).
    let answer = exchange(b"POST /echo HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n").await;
    assert_eq!(status_of(&answer), "400", "{answer}");
    // A head hyper cannot parse.
    let answer =
        exchange(b"POST /echo HTTP/1.1\r\nHost: localhost\r\nContent-Length: ten\r\n\r\n").await;
    assert_eq!(status_of(&answer), "400", "{answer}");

    // Host like nginx: missing, repeated or malformed is 400.
    let bad_hosts: [&[u8]; 5] = [
        b"GET /x HTTP/1.1\r\n\r\n",
        b"GET /x HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\n\r\n",
        b"GET /x HTTP/1.1\r\nHost: a..example\r\n\r\n",
        b"GET /x HTTP/1.1\r\nHost: user@a.example\r\n\r\n",
        b"GET /x HTTP/1.1\r\nHost: a.example:port\r\n\r\n",
    ];
    for request in bad_hosts {
        let answer = exchange(request).await;
        assert_eq!(
            status_of(&answer),
            "400",
            "{}: {answer}",
            String::from_utf8_lossy(request)
        );
    }
    // HTTP/1.0 may leave Host out; the absolute form's host wins.
    let answer = exchange(b"GET /old HTTP/1.0\r\n\r\n").await;
    assert!(
        answer.starts_with("HTTP/1.1 200") || answer.starts_with("HTTP/1.0 200"),
        "{answer}"
    );
    let answer = exchange(b"GET https://portal.example/abs HTTP/1.1\r\nHost: other.example\r\nConnection: close\r\n\r\n").await;
    assert_eq!(status_of(&answer), "200", "{answer}");
    let seen = upstream.seen();
    assert_eq!(seen.len(), 2, "no bad request reached the upstream");
    assert_eq!(seen[1].headers["host"], "portal.example");
    assert_eq!(seen[1].headers["x-forwarded-host"], "portal.example");
    // h2: :authority and Host must agree.
    let tls = tls_from(&certs, ATTACKER, addr, &[b"h2"]).await.unwrap();
    let mut h2 = h2_over(tls).await;
    let request = http::Request::get(format!("https://a.example:{}/x", addr.port()))
        .header("host", "b.example")
        .body(Full::<Bytes>::default())
        .unwrap();
    assert_eq!(h2.send_request(request).await.unwrap().status(), 400);

    let metrics = scrape(&edge).await;
    assert_eq!(
        sample(&metrics, "b24_edge_bad_requests_total{reason=\"body\"}"),
        1.0
    );
    assert_eq!(
        sample(&metrics, "b24_edge_bad_requests_total{reason=\"head\"}"),
        1.0
    );
    assert_eq!(
        sample(&metrics, "b24_edge_bad_requests_total{reason=\"host\"}"),
        6.0
    );
    assert!(
        !metrics.contains("b24_edge_upstream_errors_total{"),
        "{metrics}"
    );
    assert!(edge.shutdown().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_hosts_are_refused_by_nginx() {
    let test = "the_same_hosts_are_refused_by_nginx";
    if !tool_available(test, "nginx") {
        return;
    }
    let nginx = Nginx::start(r#"location / { return 200 "ok\n"; }"#).await;
    for request in [
        &b"GET /x HTTP/1.1\r\nConnection: close\r\n\r\n"[..],
        b"GET /x HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\nConnection: close\r\n\r\n",
        b"GET /x HTTP/1.1\r\nHost: a..example\r\nConnection: close\r\n\r\n",
    ] {
        let answer = plain_exchange("127.0.0.1", nginx.addr, request).await;
        assert_eq!(status_of(&answer), "400", "{answer}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denied_clients_are_not_invited_to_upload() {
    let dir = tempfile::tempdir().unwrap();
    let certs = TestCerts::new(dir.path());
    let upstream = Upstream::start().await;
    let edge = start_edge(
        &nodes_config(&certs, dir.path(), &[NODE], &upstream)
            .route(EdgeRoute::new("/public/", &upstream.url()).allow(&["any"])),
    )
    .await;
    list_loaded(&edge).await;
    let head = b"POST /hook HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100000\r\nExpect: 100-continue\r\n\r\n";
    let answer = raw_exchange(&certs, ATTACKER, edge.addrs()[0], head, GENEROUS).await;
    // The 403 at once, no 100 Continue, and the connection closed (the
    // body was never read).
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    assert!(!answer.contains("100 Continue"), "{answer}");
    // An admitted client is invited as usual.
    let mut tls = tls_from(&certs, ATTACKER, edge.addrs()[0], &[b"http/1.1"])
        .await
        .unwrap();
    tls.write_all(b"POST /public/up HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 256];
    let n = tls.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 100 Continue"));
    tls.write_all(b"hello").await.unwrap();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(GENEROUS, tls.read_to_end(&mut rest)).await;
    assert!(String::from_utf8_lossy(&rest).contains("200 OK"));
    let seen = upstream.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].body_len, 5);
    assert!(!seen[0].headers.contains_key("expect"));
    assert!(edge.shutdown().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_upstream_body_is_given_up() {
    let dir = tempfile::tempdir().unwrap();
    let certs = TestCerts::new(dir.path());
    let upstream = Upstream::start().await;
    let edge = open_edge(
        edge_config(&certs).server("upstream_timeout", "300ms"),
        &upstream,
    )
    .await;
    for http2 in [false, true] {
        let response = client(&certs, ATTACKER, http2)
            .get(url(&edge, "/stall"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        // The body starts, then the edge gives up instead of holding the
        // client (and its slot) forever.
        assert!(response.bytes().await.is_err(), "h2: {http2}");
    }
    let metrics = scrape(&edge).await;
    assert_eq!(
        sample(
            &metrics,
            "b24_edge_upstream_errors_total{route=\"/\",kind=\"body_timeout\"}"
        ),
        2.0
    );
    eventually("the connections are gone", || async {
        sample(&scrape(&edge).await, "b24_edge_open_connections") == 0.0
    })
    .await;
    assert!(edge.shutdown().await);
}
