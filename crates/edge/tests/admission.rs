//! Who gets through: the nodes list, `any` and CIDR routes, IPv6, HTTP/1.1
//! and h2 — real sockets, real TLS.

mod common;

use b24_testkit::{NodesServer, Reply};
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_are_admitted_and_others_refused_before_tls() {
    let dir = tempfile::tempdir().unwrap();
    let certs = TestCerts::new(dir.path());
    let upstream = Upstream::start().await;
    let nodes = NodesServer::start(Reply::nodes(&["127.0.0.2", "127.0.1.0/24"])).await;
    let edge = start_edge(
        &edge_config(&certs)
            .nodes_source(nodes.url())
            .nodes_cache(&dir.path().join("nodes-cache.json"))
            .route(EdgeRoute::new("/", &upstream.url())),
    )
    .await;
    // The first refresh happens at start-up.
    list_loaded(&edge).await;
    assert_eq!(nodes.hits(), 1);

    let (status, body) = get(
        &client(&certs, "127.0.0.2", false),
        &url(&edge, "/hook?x=1"),
    )
    .await;
    assert_eq!((status, body.as_str()), (200, "upstream saw /hook"));
    let seen = upstream.seen();
    assert_eq!(seen.len(), 1);
    let headers = &seen[0].headers;
    assert_eq!(headers["x-forwarded-for"], "127.0.0.2");
    assert_eq!(headers["x-real-ip"], "127.0.0.2");
    assert_eq!(headers["x-forwarded-proto"], "https");
    assert_eq!(headers["x-forwarded-host"], edge.addrs()[0].to_string());
    assert_eq!(headers["host"], edge.addrs()[0].to_string());

    // A CIDR entry of the list admits every address in it.
    let (status, _) = get(&client(&certs, "127.0.1.77", false), &url(&edge, "/hook")).await;
    assert_eq!(status, 200);
    assert_eq!(upstream.count(), 2);

    // No route admits 127.0.0.3: its connection is reset before the TLS
    // handshake, over either protocol.
    for http2 in [false, true] {
        let refused = client(&certs, "127.0.0.3", http2)
            .get(url(&edge, "/hook"))
            .send()
            .await;
        assert!(refused.is_err(), "{refused:?}");
    }
    assert!(
        tls_from(&certs, "127.0.0.3", edge.addrs()[0], &[b"h2"])
            .await
            .is_err()
    );
    assert_eq!(
        upstream.count(),
        2,
        "a denied request never reaches the upstream"
    );

    let metrics = scrape(&edge).await;
    assert_eq!(
        sample(&metrics, "b24_edge_denials_total{reason=\"not_in_nodes\"}"),
        3.0
    );
    assert_eq!(
        sample(
            &metrics,
            "b24_edge_connections_refused_total{reason=\"denied\"}"
        ),
        3.0
    );
    // Refused before any handshake was attempted, and never given a slot.
    assert_eq!(
        sample(&metrics, "b24_edge_tls_handshake_failures_total"),
        0.0
    );
    assert_eq!(sample(&metrics, "b24_edge_open_connections"), 0.0);
    assert_eq!(
        sample(
            &metrics,
            "b24_edge_requests_total{route=\"/\",status=\"200\"}"
        ),
        2.0
    );
    assert_eq!(
        sample(
            &metrics,
            "b24_edge_requests_total{route=\"/\",status=\"403\"}"
        ),
        0.0,
        "no request was ever read from the refused client"
    );
    assert!(edge.shutdown().await);
}

/// The same client in `refuse_before_tls = false` mode (for debugging with
/// curl): it completes the handshake and gets a 403 it can see.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debug_mode_answers_403_after_tls() {
    let dir = tempfile::tempdir().unwrap();
    let certs = TestCerts::new(dir.path());
    let upstream = Upstream::start().await;
    let edge = start_edge(
        &nodes_config(&certs, dir.path(), &["127.0.0.2"], &upstream)
            .server("refuse_before_tls", false),
    )
    .await;
    list_loaded(&edge).await;
    for http2 in [false, true] {
        let (status, body) = get(&client(&certs, "127.0.0.3", http2), &url(&edge, "/hook")).await;
        assert_eq!(status, 403);
        assert!(body.len() < 64, "a short body: {body:?}");
    }
    assert_eq!(upstream.count(), 0);
    let metrics = scrape(&edge).await;
    assert_eq!(
        sample(&metrics, "b24_edge_denials_total{reason=\"not_in_nodes\"}"),
        2.0
    );
    assert_eq!(
        sample(
            &metrics,
            "b24_edge_connections_refused_total{reason=\"denied\"}"
        ),
        0.0
    );
    assert!(edge.shutdown().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_and_cidr_routes_and_longest_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let certs = TestCerts::new(dir.path());
    let upstream = Upstream::start().await;
    let edge = start_edge(
        &nodes_config(&certs, dir.path(), &["127.0.0.2"], &upstream)
            .route(EdgeRoute::new("/public/", &upstream.url()).allow(&["any"]))
            .route(
                EdgeRoute::new("/office/", &upstream.url())
                    .allow(&["127.0.0.4/32", "127.0.2.0/24"]),
            )
            .route(EdgeRoute::new("/office/events/", &upstream.url())),
    )
    .await;
    list_loaded(&edge).await;
    let stranger = client(&certs, "127.0.0.3", false);
    let office = client(&certs, "127.0.2.9", false);
    let node = client(&certs, "127.0.0.2", false);

    assert_eq!(get(&stranger, &url(&edge, "/public/status")).await.0, 200);
    assert_eq!(get(&stranger, &url(&edge, "/office/a")).await.0, 403);
    assert_eq!(get(&office, &url(&edge, "/office/a")).await.0, 200);
    assert_eq!(
        get(
            &client(&certs, "127.0.0.4", false),
            &url(&edge, "/office/a")
        )
        .await
        .0,
        200
    );
    // The longer prefix wins: the office network is not a node.
    assert_eq!(get(&office, &url(&edge, "/office/events/1")).await.0, 403);
    assert_eq!(get(&node, &url(&edge, "/office/events/1")).await.0, 200);
    assert_eq!(get(&node, &url(&edge, "/office/a")).await.0, 403);
    assert_eq!(upstream.count(), 4);
    let paths: Vec<String> = upstream.seen().into_iter().map(|s| s.path).collect();
    assert_eq!(
        paths,
        [
            "/public/status",
            "/office/a",
            "/office/a",
            "/office/events/1"
        ]
    );

    let metrics = scrape(&edge).await;
    assert_eq!(
        sample(&metrics, "b24_edge_denials_total{reason=\"not_allowed\"}"),
        2.0
    );
    assert_eq!(
        sample(&metrics, "b24_edge_denials_total{reason=\"not_in_nodes\"}"),
        1.0
    );
    assert!(edge.shutdown().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_route_is_denied() {
    let dir = tempfile::tempdir().unwrap();
    let certs = TestCerts::new(dir.path());
    let upstream = Upstream::start().await;
    let edge = start_edge(
        &edge_config(&certs).route(EdgeRoute::new("/hooks/", &upstream.url()).allow(&["any"])),
    )
    .await;
    let anyone = client(&certs, "127.0.0.3", false);
    assert_eq!(get(&anyone, &url(&edge, "/hooks/1")).await.0, 200);
    assert_eq!(get(&anyone, &url(&edge, "/elsewhere")).await.0, 403);
    assert_eq!(upstream.count(), 1);
    let metrics = scrape(&edge).await;
    assert_eq!(
        sample(&metrics, "b24_edge_denials_total{reason=\"no_route\"}"),
        1.0
    );
    assert_eq!(
        sample(
            &metrics,
            "b24_edge_requests_total{route=\"none\",status=\"403\"}"
        ),
        1.0
    );
    // No route uses the nodes list, so there is nothing to be unready about.
    assert_eq!(admin_get(&edge, "/readyz").await.0, 200);
    assert!(edge.shutdown().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_clients() {
    let dir = tempfile::tempdir().unwrap();
    let certs = TestCerts::new(dir.path());
    let upstream = Upstream::start().await;
    let edge = start_edge(
        &nodes_config(&certs, dir.path(), &["::1"], &upstream)
            .listen("[::1]:0")
            .route(EdgeRoute::new("/v4/", &upstream.url()).allow(&["127.0.0.0/8"])),
    )
    .await;
    list_loaded(&edge).await;
    let v6 = client(&certs, "::1", false);
    let (status, body) = get(&v6, &url(&edge, "/hook")).await;
    assert_eq!((status, body.as_str()), (200, "upstream saw /hook"));
    assert_eq!(upstream.seen()[0].headers["x-forwarded-for"], "::1");
    assert_eq!(get(&v6, &url(&edge, "/v4/x")).await.0, 403);
    assert_eq!(upstream.count(), 1);
    assert!(edge.shutdown().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_and_streaming_bodies() {
    let dir = tempfile::tempdir().unwrap();
    let certs = TestCerts::new(dir.path());
    let upstream = Upstream::start().await;
    let edge = start_edge(&nodes_config(&certs, dir.path(), &["127.0.0.2"], &upstream)).await;
    list_loaded(&edge).await;

    // ALPN picks h2 when the client offers it.
    let h2 = client(&certs, "127.0.0.2", true);
    let response = h2.get(url(&edge, "/over-h2")).send().await.unwrap();
    assert_eq!(response.version(), reqwest::Version::HTTP_2);
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), "upstream saw /over-h2");
    assert_eq!(upstream.seen()[0].headers["x-forwarded-for"], "127.0.0.2");
    assert!(refused(&client(&certs, "127.0.0.3", true), &url(&edge, "/over-h2")).await);

    // A 4 MiB upload sent in chunks, echoed back in full, over both protocols.
    for client in [h2, client(&certs, "127.0.0.2", false)] {
        let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
            (0..64).map(|i| Ok(vec![i as u8; 64 * 1024])).collect();
        let body = reqwest::Body::wrap_stream(futures_util::stream::iter(chunks));
        let response = client
            .post(url(&edge, "/echo"))
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let echoed = response.bytes().await.unwrap();
        assert_eq!(echoed.len(), 4 * 1024 * 1024);
        assert!(echoed[..64 * 1024].iter().all(|b| *b == 0));
        assert!(echoed[63 * 64 * 1024..].iter().all(|b| *b == 63));
    }
    assert!(edge.shutdown().await);
}

/// Bitrix24 POSTs its events with a form body. A refused POST (here in the
/// debug mode that answers unlisted clients after TLS) must still get its
/// 403 — not a reset because the edge answered without reading the
/// body (an HTTP/2 client sees its stream reset) — on fresh and kept-alive
/// connections, HTTP/1.1 and h2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_posts_with_a_body_get_a_clean_403() {
    let dir = tempfile::tempdir().unwrap();
    let certs = TestCerts::new(dir.path());
    let upstream = Upstream::start().await;
    let edge = start_edge(
        &nodes_config(&certs, dir.path(), &["127.0.0.2"], &upstream)
            .server("refuse_before_tls", false),
    )
    .await;
    list_loaded(&edge).await;
    let event = format!(
        "event=ONCRMDEALUPDATE&data[FIELDS][ID]=662&ts=1724140800&auth[domain]=partner.bitrix24.ru{}",
        "&auth[application_token]=51856fefc120afa4b628cc82d3935cce".repeat(40)
    );
    let kept_alive_h1 = client(&certs, "127.0.0.3", false);
    let kept_alive_h2 = client(&certs, "127.0.0.3", true);
    for attempt in 0..40 {
        let (fresh_h1, fresh_h2) = (
            client(&certs, "127.0.0.3", false),
            client(&certs, "127.0.0.3", true),
        );
        let clients = [
            ("fresh HTTP/1.1", &fresh_h1),
            ("kept-alive HTTP/1.1", &kept_alive_h1),
            ("fresh h2", &fresh_h2),
            ("kept-alive h2", &kept_alive_h2),
        ];
        for (which, c) in clients {
            let response = c
                .post(url(&edge, "/hook/event/partner"))
                .header("content-type", "application/x-www-form-urlencoded")
                .body(event.clone())
                .send()
                .await
                .unwrap_or_else(|e| panic!("attempt {attempt}, {which} connection: {e:?}"));
            assert_eq!(response.status(), 403, "attempt {attempt}, {which}");
        }
    }
    // curl is stricter than reqwest about a stream reset after the answer
    // (it fails with "Stream error in the HTTP/2 framing layer"), and it is
    // what admins test with.
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &certs.ca_pem).unwrap();
    let target = url(&edge, "/hook/event/partner");
    let codes = tokio::task::spawn_blocking(move || {
        (0..40)
            .map(|_| {
                let out = std::process::Command::new("curl")
                    .args([
                        "-sS",
                        "--http2",
                        "--interface",
                        "127.0.0.3",
                        "--max-time",
                        "10",
                    ])
                    .arg("--cacert")
                    .arg(&ca)
                    .args([
                        "-o",
                        "/dev/null",
                        "-w",
                        "%{http_code}",
                        "-d",
                        &event,
                        &target,
                    ])
                    .output()
                    .expect("curl is installed by scripts/install-deps");
                String::from_utf8_lossy(&out.stdout).into_owned()
                    + &String::from_utf8_lossy(&out.stderr)
            })
            .collect::<Vec<_>>()
    })
    .await
    .unwrap();
    assert!(codes.iter().all(|c| c == "403"), "curl got {codes:?}");
    assert_eq!(upstream.count(), 0);
    edge.shutdown().await;
}
