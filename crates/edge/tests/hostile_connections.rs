//! Attacks on the edge's connections, each from an unlisted loopback
//! address while a listed client (127.0.0.2, a "Bitrix24 node") keeps
//! measuring that it is served: floods refused before TLS, idle sockets
//! of every protocol, one address hoarding slots, and the admin listener.

mod common;

use std::time::Duration;

use common::*;
use tokio::io::AsyncWriteExt;

const NODE: &str = "127.0.0.2";
const ATTACKER: &str = "127.0.0.66";

/// The HTTP/2 client preface and an empty SETTINGS frame: an h2 client
/// that then never sends HEADERS.
const H2_PREFACE_AND_SETTINGS: &[u8] =
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unlisted_flood_is_refused_before_tls_while_a_node_is_served() {
    let dir = tempfile::tempdir().unwrap();
    let certs = TestCerts::new(dir.path());
    let upstream = Upstream::start().await;
    let edge = start_edge(
        &nodes_config(&certs, dir.path(), &[NODE], &upstream)
            .server("max_connections", 50)
            .route(EdgeRoute::new("/bitrix/admin/", &upstream.url()).allow(&["127.0.0.9/32"])),
    )
    .await;
    list_loaded(&edge).await;
    let addr = edge.addrs()[0];
    let probe = ListedProbe::start(&certs, NODE, url(&edge, "/hook"));
    probe.wait_for(3).await;

    // 200 connections that would hold every slot if they got one (the
    // issue saw 50 idle sockets lock out max_connections = 50), plus 50
    // TLS handshakes.
    let mut held = Vec::new();
    for _ in 0..200 {
        if let Ok(tcp) = try_tcp_from(ATTACKER, addr).await {
            held.push(tcp);
        }
    }
    let mut handshakes_completed = 0;
    for _ in 0..50 {
        if tls_from(&certs, ATTACKER, addr, &[b"h2", b"http/1.1"])
            .await
            .is_ok()
        {
            handshakes_completed += 1;
        }
    }
    assert_eq!(handshakes_completed, 0);
    probe.wait_for(5).await;
    // Every held socket was reset by the edge, none was kept.
    for tcp in &mut held {
        assert!(closed_by_edge(tcp).await);
    }
    let served = probe.finish().await;
    assert!(served >= 8);

    let metrics = scrape(&edge).await;
    let refused = sample(
        &metrics,
        "b24_edge_connections_refused_total{reason=\"denied\"}",
    );
    assert!(refused >= 200.0, "{refused}");
    assert_eq!(
        sample(&metrics, "b24_edge_denials_total{reason=\"not_in_nodes\"}"),
        refused
    );
    // Not one TLS handshake was spent on the attacker.
    assert_eq!(
        sample(&metrics, "b24_edge_tls_handshake_failures_total"),
        0.0
    );
    assert_eq!(
        upstream.seen().iter().filter(|s| s.path != "/hook").count(),
        0
    );
    assert!(edge.shutdown().await);
}

/// One attacking connection: completes TLS with `alpn` (h2 also sends its
/// preface and SETTINGS), then sends nothing. Returns whether the edge let
/// it in at all and whether the edge then closed it.
async fn idle_attacker(
    certs: &TestCerts,
    addr: std::net::SocketAddr,
    alpn: &'static [u8],
) -> (bool, bool) {
    let alpns: &[&[u8]] = if alpn.is_empty() { &[] } else { &[alpn] };
    let Ok(mut tls) = tls_from(certs, ATTACKER, addr, alpns).await else {
        return (false, true);
    };
    if alpn == b"h2" && tls.write_all(H2_PREFACE_AND_SETTINGS).await.is_err() {
        return (true, true);
    }
    (true, closed_by_edge(&mut tls).await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_of_every_protocol_are_closed_and_never_lock_out_a_node() {
    let dir = tempfile::tempdir().unwrap();
    let certs = TestCerts::new(dir.path());
    let upstream = Upstream::start().await;
    // The attacker may use the public route, so it gets through TLS: the
    // deadlines, not the pre-TLS refusal, must save the node here.
    let edge = start_edge(
        &nodes_config(&certs, dir.path(), &[NODE], &upstream)
            .server("max_connections", 24)
            .server("max_connections_per_address", 1000)
            .server("header_timeout", "1s")
            .server("idle_timeout", "1s")
            .route(EdgeRoute::new("/public/", &upstream.url()).allow(&["any"])),
    )
    .await;
    list_loaded(&edge).await;
    let addr = edge.addrs()[0];
    let probe = ListedProbe::start(&certs, NODE, url(&edge, "/hook"));

    // Waves of 36 idle connections (h1, h2, no ALPN), more than all the
    // slots, each wave kept open until the edge closes it.
    let mut admitted = 0;
    let mut waves = 0;
    while waves < 3 || probe.served() < 10 {
        let mut wave = Vec::new();
        for i in 0..36 {
            let alpn: &'static [u8] = match i % 3 {
                0 => b"http/1.1",
                1 => b"h2",
                _ => b"",
            };
            wave.push(idle_attacker(&certs, addr, alpn));
        }
        for (let_in, closed) in futures_util::future::join_all(wave).await {
            assert!(closed, "an idle connection was never closed");
            admitted += usize::from(let_in);
        }
        waves += 1;
        probe.assert_no_failure();
    }
    let served = probe.finish().await;
    assert!(served >= 10);
    assert!(admitted > 0, "the attacker got connections to idle on");

    // Also idle after a request: HTTP/1.1 is closed, h2 gets GOAWAY.
    let tls = tls_from(&certs, ATTACKER, addr, &[b"http/1.1"])
        .await
        .unwrap();
    let mut h1 = h1_over(tls).await;
    assert_eq!(send_get(&mut h1, "/public/once").await.0, 200);
    eventually("the idle HTTP/1.1 connection is closed", || {
        let closed = h1.is_closed();
        async move { closed }
    })
    .await;
    let tls = tls_from(&certs, ATTACKER, addr, &[b"h2"]).await.unwrap();
    let (mut h2, h2_conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tls),
    )
    .await
    .unwrap();
    let h2_conn = tokio::spawn(h2_conn);
    let request = http::Request::get(url(&edge, "/public/once"))
        .body(http_body_util::Full::<bytes::Bytes>::default())
        .unwrap();
    assert_eq!(h2.send_request(request).await.unwrap().status(), 200);
    // The connection ends by itself once the edge sent GOAWAY.
    tokio::time::timeout(GENEROUS, h2_conn)
        .await
        .unwrap()
        .unwrap()
        .unwrap();

    let metrics = scrape(&edge).await;
    assert!(sample(&metrics, "b24_edge_request_head_timeouts_total") >= admitted as f64);
    assert!(sample(&metrics, "b24_edge_idle_closes_total") >= 2.0);
    eventually("every attacking connection is gone", || async {
        sample(&scrape(&edge).await, "b24_edge_open_connections") == 0.0
    })
    .await;
    assert!(edge.shutdown().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_cannot_take_every_slot() {
    let dir = tempfile::tempdir().unwrap();
    let certs = TestCerts::new(dir.path());
    let upstream = Upstream::start().await;
    let edge = start_edge(
        &nodes_config(&certs, dir.path(), &[NODE], &upstream)
            .server("max_connections", 100)
            .server("max_connections_per_address", 5)
            .route(EdgeRoute::new("/public/", &upstream.url()).allow(&["any"])),
    )
    .await;
    list_loaded(&edge).await;
    let addr = edge.addrs()[0];
    let probe = ListedProbe::start(&certs, NODE, url(&edge, "/hook"));
    let mut held = Vec::new();
    let mut turned_away = 0;
    for _ in 0..20 {
        match tls_from(&certs, ATTACKER, addr, &[b"http/1.1"]).await {
            Ok(tls) => held.push(tls),
            Err(_) => turned_away += 1,
        }
    }
    assert_eq!((held.len(), turned_away), (5, 15));
    // Another address is not affected, nor is the node.
    let other = tls_from(&certs, "127.0.0.67", addr, &[b"http/1.1"])
        .await
        .unwrap();
    let mut other = h1_over(other).await;
    assert_eq!(send_get(&mut other, "/public/x").await.0, 200);
    probe.wait_for(5).await;
    probe.finish().await;
    let metrics = scrape(&edge).await;
    assert_eq!(
        sample(
            &metrics,
            "b24_edge_connections_refused_total{reason=\"per_address\"}"
        ),
        15.0
    );
    // The limits are exported beside the open connections, for alerts.
    assert_eq!(sample(&metrics, "b24_edge_max_connections"), 100.0);
    assert_eq!(sample(&metrics, "b24_edge_reserved_connections"), 10.0);
    // The slots come back when the attacker leaves.
    drop(held);
    eventually("the address's slots are free again", || async {
        tls_from(&certs, ATTACKER, addr, &[b"http/1.1"])
            .await
            .is_ok()
    })
    .await;
    assert!(edge.shutdown().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_listener_closes_half_sent_and_idle_connections() {
    let dir = tempfile::tempdir().unwrap();
    let certs = TestCerts::new(dir.path());
    let upstream = Upstream::start().await;
    let edge = open_edge(
        edge_config(&certs)
            .server("header_timeout", "1s")
            .server("idle_timeout", "1s"),
        &upstream,
    )
    .await;
    let admin = edge.metrics_addr().unwrap();
    // A request line that never ends (the issue: held open forever).
    let mut half = try_tcp_from(ATTACKER, admin).await.unwrap();
    half.write_all(b"GET /metr").await.unwrap();
    // A connection that sends nothing at all.
    let mut silent = try_tcp_from(ATTACKER, admin).await.unwrap();
    // One that asks once, then idles.
    let mut once = try_tcp_from(ATTACKER, admin).await.unwrap();
    once.write_all(b"GET /healthz HTTP/1.1\r\nHost: admin\r\n\r\n")
        .await
        .unwrap();
    for stream in [&mut half, &mut silent, &mut once] {
        assert!(closed_by_edge(stream).await);
    }
    // The admin listener still answers.
    assert_eq!(admin_get(&edge, "/healthz").await.0, 200);
    assert!(edge.shutdown().await);
}

/// A slow request head on a kept-alive connection is bounded too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_request_head_sent_byte_by_byte_is_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    let certs = TestCerts::new(dir.path());
    let upstream = Upstream::start().await;
    let edge = open_edge(edge_config(&certs).server("idle_timeout", "1s"), &upstream).await;
    let mut tls = answered_once(&certs, ATTACKER, edge.addrs()[0], "/first").await;
    // Then a second head, a byte every 100 ms, forever: the edge stops
    // waiting at the idle deadline.
    drip_until_closed(
        &mut tls,
        b"GET /second HTTP/1.1\r\nX-Slow: ",
        Duration::from_millis(100),
    )
    .await;
    assert_eq!(upstream.count(), 1);
    assert!(edge.shutdown().await);
}

/// A client that asks for a large answer and never reads it: its
/// connection is dropped at send_timeout instead of holding a slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_its_answer_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let certs = TestCerts::new(dir.path());
    let upstream = Upstream::start().await;
    let edge = open_edge(
        edge_config(&certs).server("send_timeout", "500ms"),
        &upstream,
    )
    .await;
    let mut tls = tls_from(&certs, ATTACKER, edge.addrs()[0], &[b"http/1.1"])
        .await
        .unwrap();
    tls.write_all(b"GET /big HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    eventually("the reader that stopped is dropped", || async {
        let metrics = scrape(&edge).await;
        sample(&metrics, "b24_edge_send_timeouts_total") == 1.0
            && sample(&metrics, "b24_edge_open_connections") == 0.0
    })
    .await;
    drop(tls);
    assert!(edge.shutdown().await);
}

/// An h2 client that answers PINGs but never opens its flow-control
/// window held its stream, and the upstream response, forever. Each such
/// stream is reset at send_timeout and counted, the upstream connection
/// that carried it is let go, and the connection's other streams and a
/// listed client stay served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2_stream_given_no_window_is_reset_and_lets_its_upstream_go() {
    let dir = tempfile::tempdir().unwrap();
    let certs = TestCerts::new(dir.path());
    let upstream = Upstream::start().await;
    // Only the stalled responses go here.
    let big = Upstream::start().await;
    let edge = start_edge(
        &nodes_config(&certs, dir.path(), &[NODE], &upstream)
            .server("send_timeout", "1s")
            .server("idle_timeout", "1h")
            .route(EdgeRoute::new("/public/", &upstream.url()).allow(&["any"]))
            .route(EdgeRoute::new("/big", &big.url()).allow(&["any"])),
    )
    .await;
    list_loaded(&edge).await;
    let addr = edge.addrs()[0];
    let probe = ListedProbe::start(&certs, NODE, url(&edge, "/hook"));
    probe.wait_for(2).await;

    // No window at all: the response head comes, not one byte of its body.
    let mut shut = StingyH2::connect(&certs, ATTACKER, addr, 0).await;
    let (status, body) = shut.get(&url(&edge, "/big")).await;
    assert_eq!(status, 200);
    assert_eq!(
        read_without_window(body).await,
        (0, StreamEnd::Reset(h2::Reason::CANCEL))
    );

    // A tiny window (1 KiB a stream, never reopened): while one stream
    // stalls, the same connection's other streams are served.
    let mut tiny = StingyH2::connect(&certs, ATTACKER, addr, 1024).await;
    let (status, stalled) = tiny.get(&url(&edge, "/big")).await;
    assert_eq!(status, 200);
    let stalled = tokio::spawn(read_without_window(stalled));
    let small = "upstream saw /public/meanwhile".len();
    let (status, body) = tiny.get(&url(&edge, "/public/meanwhile")).await;
    assert_eq!(status, 200);
    assert_eq!(
        read_without_window(body).await,
        (small, StreamEnd::Complete)
    );
    let (received, end) = stalled.await.unwrap();
    assert_eq!(end, StreamEnd::Reset(h2::Reason::CANCEL));
    assert!(received <= 1024, "{received}");
    // The connection outlives its reset stream.
    let (status, body) = tiny.get(&url(&edge, "/public/meanwhile")).await;
    assert_eq!(status, 200);
    assert_eq!(
        read_without_window(body).await,
        (small, StreamEnd::Complete)
    );

    // Both upstream connections that carried a stalled answer are closed,
    // not held for the attacker.
    eventually(
        "the stalled answers' upstream connections are closed",
        || {
            let done = big.connections() == 2 && big.open_connections() == 0;
            async move { done }
        },
    )
    .await;
    // A client that reads gets the whole large answer over h2 (handed to
    // hyper in frame-sized pieces), uncut.
    let reader = client(&certs, NODE, true);
    let response = reader.get(url(&edge, "/big")).send().await.unwrap();
    assert_eq!(response.version(), http::Version::HTTP_2);
    let body = response.bytes().await.unwrap();
    assert_eq!(body.len(), 32 << 20);
    assert!(body.iter().all(|&b| b == b'b'));
    let served = probe.finish().await;
    assert!(served >= 2);
    let metrics = scrape(&edge).await;
    assert_eq!(sample(&metrics, "b24_edge_send_timeouts_total"), 2.0);
    assert_eq!(
        sample(
            &metrics,
            "b24_edge_upstream_errors_total{route=\"/big\",kind=\"body_timeout\"}"
        ),
        0.0,
        "the client's stall is not the upstream's fault"
    );
    drop((shut, tiny));
    assert!(edge.shutdown().await);
}
