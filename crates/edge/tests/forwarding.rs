//! Client addresses behind load balancers (X-Forwarded-For, PROXY v1/v2),
//! limits and upstream faults, certificate reload on file change, and the
//! metrics that follow them.

mod common;

use b24_edge::client_ip::encode_v2;
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Nodes: 127.0.0.2 only. Trusted proxy: 127.0.0.5, as `mode`.
async fn edge_behind_proxy(
    certs: &TestCerts,
    dir: &std::path::Path,
    upstream: &Upstream,
    mode: &str,
) -> b24_edge::EdgeHandle {
    let edge = start_edge(
        &nodes_config(certs, dir, &["127.0.0.2"], upstream)
            .client_ip("mode", mode)
            .client_ip("trusted_proxies", vec!["127.0.0.5/32"]),
    )
    .await;
    list_loaded(&edge).await;
    edge
}

async fn get_with_xff(client: &reqwest::Client, url: &str, xff: &str) -> u16 {
    client
        .get(url)
        .header("x-forwarded-for", xff)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_for_is_believed_only_from_trusted_proxies() {
    let dir = tempfile::tempdir().unwrap();
    let certs = TestCerts::new(dir.path());
    let upstream = Upstream::start().await;
    let edge = edge_behind_proxy(&certs, dir.path(), &upstream, "x_forwarded_for").await;
    let target = url(&edge, "/x");
    let balancer = client(&certs, "127.0.0.5", false);
    let stranger = client(&certs, "127.0.0.3", false);

    assert_eq!(get_with_xff(&balancer, &target, "127.0.0.2").await, 200);
    let seen = upstream.seen();
    assert_eq!(seen[0].headers["x-forwarded-for"], "127.0.0.2, 127.0.0.5");
    assert_eq!(seen[0].headers["x-real-ip"], "127.0.0.2");
    // The balancer itself is not a node.
    assert_eq!(get(&balancer, &target).await.0, 403);
    // A client that prepends a node's address does not become one: the
    // rightmost untrusted hop counts.
    assert_eq!(
        get_with_xff(&balancer, &target, "127.0.0.2, 127.0.0.3").await,
        403
    );
    // The same header from anyone else changes nothing: the peer is the
    // client, and no route admits it, so it is refused before TLS.
    assert!(
        stranger
            .get(&target)
            .header("x-forwarded-for", "127.0.0.2")
            .send()
            .await
            .is_err()
    );
    let node = client(&certs, "127.0.0.2", false);
    assert_eq!(get_with_xff(&node, &target, "6.6.6.6").await, 200);
    let seen = upstream.seen();
    assert_eq!(seen.len(), 2);
    // The untrusted claim is not passed on either.
    assert_eq!(seen[1].headers["x-forwarded-for"], "127.0.0.2");
    assert!(edge.shutdown().await);
}

async fn proxied_get(
    certs: &TestCerts,
    from: &str,
    edge: &b24_edge::EdgeHandle,
    header: &[u8],
) -> std::io::Result<(u16, String)> {
    let mut tcp = try_tcp_from(from, edge.addrs()[0]).await?;
    tcp.write_all(header).await?;
    let tls = tls_over(certs, tcp).await?;
    let mut sender = h1_over(tls).await;
    Ok(send_get(&mut sender, "/proxied").await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_protocol_v1_and_v2_from_trusted_peers_only() {
    let dir = tempfile::tempdir().unwrap();
    let certs = TestCerts::new(dir.path());
    let upstream = Upstream::start().await;
    let edge = edge_behind_proxy(&certs, dir.path(), &upstream, "proxy_protocol").await;
    let dst = edge.addrs()[0];

    let v1_node = format!("PROXY TCP4 127.0.0.2 {} 40000 {}\r\n", dst.ip(), dst.port());
    let (status, _) = proxied_get(&certs, "127.0.0.5", &edge, v1_node.as_bytes())
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert_eq!(upstream.seen()[0].headers["x-real-ip"], "127.0.0.2");
    assert_eq!(upstream.seen()[0].headers["x-forwarded-for"], "127.0.0.2");

    // A source no route admits is refused right after its PROXY header,
    // still before TLS.
    let v1_stranger = format!("PROXY TCP4 127.0.0.3 {} 40000 {}\r\n", dst.ip(), dst.port());
    assert!(
        proxied_get(&certs, "127.0.0.5", &edge, v1_stranger.as_bytes())
            .await
            .is_err()
    );

    let v2_node = encode_v2("127.0.0.2:40001".parse().unwrap(), dst);
    assert_eq!(
        proxied_get(&certs, "127.0.0.5", &edge, &v2_node)
            .await
            .unwrap()
            .0,
        200
    );
    let v2_stranger = encode_v2("127.0.0.3:40001".parse().unwrap(), dst);
    assert!(
        proxied_get(&certs, "127.0.0.5", &edge, &v2_stranger)
            .await
            .is_err()
    );
    assert_eq!(upstream.count(), 2);

    // Only trusted peers may connect to a proxy_protocol listener: forged
    // headers and direct connections, even from a node, are refused at
    // accept (its address cannot be believed from an unknown peer).
    let forged = proxied_get(&certs, "127.0.0.3", &edge, v1_node.as_bytes()).await;
    assert!(forged.is_err());
    let forged = proxied_get(&certs, "127.0.0.3", &edge, &v2_node).await;
    assert!(forged.is_err());
    assert!(proxied_get(&certs, "127.0.0.2", &edge, b"").await.is_err());
    assert_eq!(upstream.count(), 2);
    // A trusted peer that sends no header is cut off.
    assert!(proxied_get(&certs, "127.0.0.5", &edge, b"").await.is_err());
    let metrics = scrape(&edge).await;
    assert_eq!(
        sample(&metrics, "b24_edge_tls_handshake_failures_total"),
        0.0
    );
    assert_eq!(
        sample(
            &metrics,
            "b24_edge_denials_total{reason=\"untrusted_peer\"}"
        ),
        3.0
    );
    assert_eq!(
        sample(&metrics, "b24_edge_denials_total{reason=\"not_in_nodes\"}"),
        2.0
    );
    // The trusted peer's missing header is a PROXY failure of its own.
    assert_eq!(
        sample(
            &metrics,
            "b24_edge_proxy_header_failures_total{reason=\"missing\"}"
        ),
        1.0
    );
    assert!(edge.shutdown().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_over_the_limit_get_413() {
    let dir = tempfile::tempdir().unwrap();
    let certs = TestCerts::new(dir.path());
    let upstream = Upstream::start().await;
    let edge = open_edge(edge_config(&certs).server("max_body", "1KiB"), &upstream).await;
    for http2 in [false, true] {
        let client = client(&certs, "127.0.0.3", http2);
        let declared = client
            .post(url(&edge, "/echo"))
            .body(vec![b'x'; 2048])
            .send()
            .await
            .unwrap();
        assert_eq!(declared.status(), 413);
        let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
            (0..8).map(|_| Ok(vec![b'y'; 512])).collect();
        let streamed = client
            .post(url(&edge, "/echo"))
            .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
                chunks,
            )))
            .send()
            .await
            .unwrap();
        assert_eq!(streamed.status(), 413);
        let fits = client
            .post(url(&edge, "/echo"))
            .body(vec![b'z'; 1024])
            .send()
            .await
            .unwrap();
        assert_eq!(fits.status(), 200);
        assert_eq!(fits.bytes().await.unwrap().len(), 1024);
    }
    // Only the bodies that fit arrived whole.
    assert!(upstream.seen().iter().all(|s| s.body_len <= 1024));
    let metrics = scrape(&edge).await;
    assert_eq!(
        sample(
            &metrics,
            "b24_edge_requests_total{route=\"/\",status=\"413\"}"
        ),
        4.0
    );
    assert!(edge.shutdown().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_headers_get_the_connection_closed() {
    let dir = tempfile::tempdir().unwrap();
    let certs = TestCerts::new(dir.path());
    let upstream = Upstream::start().await;
    let edge = open_edge(
        edge_config(&certs).server("header_timeout", "500ms"),
        &upstream,
    )
    .await;
    let tcp = tcp_from("127.0.0.3", edge.addrs()[0]).await;
    let mut tls = tls_over(&certs, tcp).await.unwrap();
    tls.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nX-Slow: ")
        .await
        .unwrap();
    // Then nothing more: the edge must hang up rather than wait forever.
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(GENEROUS, tls.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "the connection stayed open");
    assert!(!String::from_utf8_lossy(&rest).contains("200 OK"));
    assert_eq!(upstream.count(), 0);

    // A TCP client that never starts TLS is cut off too.
    let mut idle = tcp_from("127.0.0.3", edge.addrs()[0]).await;
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(GENEROUS, idle.read(&mut buf)).await;
    assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "{read:?}");
    let metrics = scrape(&edge).await;
    assert!(sample(&metrics, "b24_edge_tls_handshake_failures_total") >= 1.0);
    assert!(edge.shutdown().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_upstream_is_502_and_slow_upstream_is_504() {
    let dir = tempfile::tempdir().unwrap();
    let certs = TestCerts::new(dir.path());
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let closed_addr = closed.local_addr().unwrap();
    drop(closed);
    let upstream = Upstream::start().await;
    let edge = start_edge(
        &edge_config(&certs)
            .server("upstream_timeout", "300ms")
            .route(EdgeRoute::new("/", &upstream.url()).allow(&["any"]))
            .route(EdgeRoute::new("/gone/", &format!("http://{closed_addr}")).allow(&["any"])),
    )
    .await;
    let client = client(&certs, "127.0.0.3", false);
    assert_eq!(get(&client, &url(&edge, "/gone/x")).await.0, 502);
    assert_eq!(get(&client, &url(&edge, "/slow/5000")).await.0, 504);
    assert_eq!(get(&client, &url(&edge, "/slow/0")).await.0, 200);
    let metrics = scrape(&edge).await;
    assert_eq!(
        sample(
            &metrics,
            "b24_edge_upstream_errors_total{route=\"/gone/\",kind=\"connect\"}"
        ),
        1.0
    );
    assert_eq!(
        sample(
            &metrics,
            "b24_edge_upstream_errors_total{route=\"/\",kind=\"timeout\"}"
        ),
        1.0
    );
    assert_eq!(
        sample(
            &metrics,
            "b24_edge_requests_total{route=\"/gone/\",status=\"502\"}"
        ),
        1.0
    );
    assert_eq!(
        sample(
            &metrics,
            "b24_edge_requests_total{route=\"/\",status=\"504\"}"
        ),
        1.0
    );
    assert!(edge.shutdown().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pooled_upstream_connections_are_reused() {
    let dir = tempfile::tempdir().unwrap();
    let certs = TestCerts::new(dir.path());
    let upstream = Upstream::start().await;
    let edge = open_edge(edge_config(&certs), &upstream).await;
    // HTTP/1.1 over one client connection of our own: reqwest may open a
    // second one while its pool takes the first back, and that one can be
    // served by the other worker thread, which has its own upstream pool.
    let tcp = tcp_from("127.0.0.3", edge.addrs()[0]).await;
    let mut h1 = h1_over(tls_over(&certs, tcp).await.unwrap()).await;
    for _ in 0..5 {
        assert_eq!(send_get(&mut h1, "/pooled").await.0, 200);
    }
    // Answers without a body (HEAD, an empty echo) are never polled for
    // one by the server relaying them: their connection must go back to
    // the pool all the same.
    for _ in 0..3 {
        for (method, path) in [("HEAD", "/pooled"), ("POST", "/echo")] {
            let (status, body) = send(&mut h1, method, path).await;
            assert_eq!(status, 200, "{method} {path}");
            assert!(body.is_empty(), "{method} {path}: {body:?}");
        }
    }
    assert_eq!(send_get(&mut h1, "/pooled").await.0, 200);
    assert_eq!(
        upstream.connections(),
        1,
        "sequential requests of every kind on one client connection"
    );
    // HTTP/2: one connection by nature; it may be served by the other
    // worker, so one more upstream connection at most.
    let client = client(&certs, "127.0.0.3", true);
    for _ in 0..3 {
        assert_eq!(get(&client, &url(&edge, "/pooled")).await.0, 200);
        let head = client.head(url(&edge, "/pooled")).send().await.unwrap();
        assert_eq!(head.status(), 200);
        let empty = client
            .post(url(&edge, "/echo"))
            .body("")
            .send()
            .await
            .unwrap();
        assert_eq!(empty.status(), 200);
        assert_eq!(empty.text().await.unwrap(), "");
    }
    assert!(
        upstream.connections() <= 2,
        "h2 requests of every kind on one client connection took {} upstream connections",
        upstream.connections() - 1
    );
    assert!(edge.shutdown().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_files_changing_are_picked_up_for_new_connections() {
    let dir = tempfile::tempdir().unwrap();
    let mut certs = TestCerts::new(dir.path());
    let upstream = Upstream::start().await;
    let edge = open_edge(
        edge_config(&certs).server("tls_reload_poll", "100ms"),
        &upstream,
    )
    .await;
    let first = certs.leaf_der.clone();
    let metrics = scrape(&edge).await;
    let expiry_2031 = 1_924_992_000.0; // 2031-01-01T00:00:00Z
    assert_eq!(
        sample(&metrics, "b24_edge_certificate_expiry_timestamp_seconds"),
        expiry_2031
    );

    // An established connection keeps working across the reload.
    let tcp = tcp_from("127.0.0.3", edge.addrs()[0]).await;
    let tls = tls_over(&certs, tcp).await.unwrap();
    assert_eq!(tls.get_ref().1.peer_certificates().unwrap()[0], first);
    let mut old_conn = h1_over(tls).await;
    assert_eq!(send_get(&mut old_conn, "/before").await.0, 200);

    let not_after = certs.issue(2032);
    assert_eq!(not_after, 1_956_528_000);
    let second = certs.leaf_der.clone();
    eventually("new connections get the new certificate", || async {
        let tcp = tcp_from("127.0.0.3", edge.addrs()[0]).await;
        let tls = tls_over(&certs, tcp).await.unwrap();
        tls.get_ref().1.peer_certificates().unwrap()[0] == second
    })
    .await;
    assert_eq!(send_get(&mut old_conn, "/after").await.0, 200);
    let metrics = scrape(&edge).await;
    assert_eq!(
        sample(&metrics, "b24_edge_certificate_expiry_timestamp_seconds"),
        not_after as f64
    );

    // A broken key file is refused; the current certificate stays.
    replace_file(
        &certs.key_path,
        b"-----BEGIN PRIVATE KEY-----\nbm9wZQ==\n-----END PRIVATE KEY-----\n",
    );
    eventually("the bad reload was counted", || async {
        sample(
            &scrape(&edge).await,
            "b24_edge_certificate_reload_failures_total",
        ) >= 1.0
    })
    .await;
    let tcp = tcp_from("127.0.0.3", edge.addrs()[0]).await;
    let tls = tls_over(&certs, tcp).await.unwrap();
    assert_eq!(tls.get_ref().1.peer_certificates().unwrap()[0], second);
    assert!(edge.shutdown().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_and_nodes_gauges() {
    let dir = tempfile::tempdir().unwrap();
    let certs = TestCerts::new(dir.path());
    let upstream = Upstream::start().await;
    let list = nodes_list(
        dir.path(),
        &["127.0.0.2", "127.0.1.0/24", "::1", "2001:db8::/48"],
    );
    let edge = start_edge(
        &edge_config(&certs)
            .nodes_file(&list)
            .route(EdgeRoute::new("/", &upstream.url())),
    )
    .await;
    list_loaded(&edge).await;
    let metrics = scrape(&edge).await;
    assert_eq!(
        sample(&metrics, "b24_edge_nodes_networks{family=\"ipv4\"}"),
        2.0
    );
    assert_eq!(
        sample(&metrics, "b24_edge_nodes_networks{family=\"ipv6\"}"),
        2.0
    );
    assert_eq!(sample(&metrics, "b24_edge_open_connections"), 0.0);
    assert!(metrics.contains("b24_edge_nodes_last_success_age_seconds "));

    let tcp = tcp_from("127.0.0.2", edge.addrs()[0]).await;
    let mut conn = h1_over(tls_over(&certs, tcp).await.unwrap()).await;
    assert_eq!(send_get(&mut conn, "/a").await.0, 200);
    let metrics = scrape(&edge).await;
    assert_eq!(sample(&metrics, "b24_edge_open_connections"), 1.0);
    assert_eq!(
        sample(
            &metrics,
            "b24_edge_request_duration_seconds_count{route=\"/\"}"
        ),
        1.0
    );
    drop(conn);
    eventually("the closed connection is no longer counted", || async {
        sample(&scrape(&edge).await, "b24_edge_open_connections") == 0.0
    })
    .await;

    let mut garbage = tcp_from("127.0.0.2", edge.addrs()[0]).await;
    garbage.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    let mut sink = Vec::new();
    let _ = tokio::time::timeout(GENEROUS, garbage.read_to_end(&mut sink)).await;
    eventually("the failed handshake is counted", || async {
        sample(
            &scrape(&edge).await,
            "b24_edge_tls_handshake_failures_total",
        ) == 1.0
    })
    .await;
    assert!(edge.shutdown().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_1_2_and_1_3_with_alpn() {
    let dir = tempfile::tempdir().unwrap();
    let certs = TestCerts::new(dir.path());
    let upstream = Upstream::start().await;
    let edge = open_edge(edge_config(&certs), &upstream).await;
    let cases = [
        (
            &rustls::version::TLS12,
            rustls::ProtocolVersion::TLSv1_2,
            &b"h2"[..],
        ),
        (
            &rustls::version::TLS13,
            rustls::ProtocolVersion::TLSv1_3,
            &b"http/1.1"[..],
        ),
    ];
    for (version, expected, alpn) in cases {
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[version])
            .unwrap()
            .with_root_certificates(certs.root_store())
            .with_no_client_auth();
        config.alpn_protocols = vec![alpn.to_vec()];
        let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
        let tcp = tcp_from("127.0.0.3", edge.addrs()[0]).await;
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let tls = connector.connect(name, tcp).await.unwrap();
        let session = tls.get_ref().1;
        assert_eq!(session.protocol_version(), Some(expected));
        assert_eq!(session.alpn_protocol(), Some(alpn));
    }
    assert!(edge.shutdown().await);
}

/// Two slots, one reserved for listed clients: a client of the `any`
/// route gets the other or is turned away at once; a listed client waits
/// for a slot when both are taken, and is served as soon as one frees.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listed_clients_keep_reserved_slots_and_wait_for_a_free_one() {
    let dir = tempfile::tempdir().unwrap();
    let certs = TestCerts::new(dir.path());
    let upstream = Upstream::start().await;
    let edge = start_edge(
        &nodes_config(&certs, dir.path(), &["127.0.0.2"], &upstream)
            .server("max_connections", 2)
            .server("reserved_connections", 1)
            .route(EdgeRoute::new("/public/", &upstream.url()).allow(&["any"])),
    )
    .await;
    list_loaded(&edge).await;
    let addr = edge.addrs()[0];
    let connect = |from: &'static str| {
        let config = tls_client_config(&certs, &[b"http/1.1"]);
        async move {
            let tcp = try_tcp_from(from, addr).await?;
            let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
            tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await
        }
    };
    let mut public = h1_over(connect("127.0.0.3").await.unwrap()).await;
    assert_eq!(send_get(&mut public, "/public/one").await.0, 200);
    // The unlisted share (one slot) is taken: the next one is reset.
    assert!(connect("127.0.0.4").await.is_err());
    let mut listed = h1_over(connect("127.0.0.2").await.unwrap()).await;
    assert_eq!(send_get(&mut listed, "/hook").await.0, 200);

    // Both slots are taken: another listed client waits…
    let waiting = tokio::spawn(connect("127.0.0.2"));
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert!(!waiting.is_finished());
    // …and is served as soon as one leaves.
    drop(public);
    let tls = tokio::time::timeout(GENEROUS, waiting)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let mut second = h1_over(tls).await;
    assert_eq!(send_get(&mut second, "/hook").await.0, 200);
    let metrics = scrape(&edge).await;
    assert_eq!(
        sample(
            &metrics,
            "b24_edge_connections_refused_total{reason=\"max_connections\"}"
        ),
        1.0
    );
    drop((listed, second));
    assert!(edge.shutdown().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_upstream_with_its_own_ca() {
    init();
    let dir = tempfile::tempdir().unwrap();
    let certs = TestCerts::new(dir.path());
    // The upstream's certificate comes from another CA than the edge's.
    let upstream_dir = dir.path().join("upstream");
    std::fs::create_dir(&upstream_dir).unwrap();
    let upstream_certs = TestCerts::new(&upstream_dir);
    let upstream = Upstream::start_tls(&upstream_certs).await;
    let upstream_ca = upstream_dir.join("ca.pem");
    std::fs::write(&upstream_ca, &upstream_certs.ca_pem).unwrap();
    let wrong_ca = dir.path().join("wrong-ca.pem");
    std::fs::write(&wrong_ca, &certs.ca_pem).unwrap();
    let edge = start_edge(
        &edge_config(&certs)
            .route(
                EdgeRoute::new("/", &upstream.https_url())
                    .ca_file(&upstream_ca)
                    .allow(&["any"]),
            )
            .route(
                EdgeRoute::new("/untrusted/", &upstream.https_url())
                    .ca_file(&wrong_ca)
                    .allow(&["any"]),
            ),
    )
    .await;
    let client = client(&certs, "127.0.0.3", false);
    let (status, body) = get(&client, &url(&edge, "/over-tls")).await;
    assert_eq!((status, body.as_str()), (200, "upstream saw /over-tls"));
    // An upstream whose certificate the configured CA did not sign is a
    // bad gateway, and nothing reaches it.
    assert_eq!(get(&client, &url(&edge, "/untrusted/x")).await.0, 502);
    assert_eq!(upstream.count(), 1);
    assert!(edge.shutdown().await);
}
