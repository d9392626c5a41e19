//! The nodes list over time: refreshes flip admission, failures and garbage
//! keep the last good list, the cache carries it across restarts, no list
//! fails closed, and swaps under load fail no request.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use b24_nodes::{CacheRecord, Limits, NodeList};
use b24_testkit::{NodesServer, Reply};
use common::*;

fn write_cache(path: &std::path::Path, source: &str, entries: &[&str]) {
    let list =
        NodeList::parse(nodes_json(entries).as_bytes(), &Limits::allowing_special()).unwrap();
    // The cache names its source as displayed (no query): a cache naming
    // another source is not used.
    let shown = source.parse::<b24_nodes::Source>().unwrap().to_string();
    let mut record = CacheRecord::new(shown);
    record.set_list(&list);
    record.store(path).unwrap();
}

/// An http:// URL that refuses every connection while it is held: its
/// port is bound (without SO_REUSEADDR, so no other socket can take it)
/// and never listened on, so a connection is reset at once. (A port bound
/// and freed again may meanwhile be another test's listener.)
struct DeadUrl {
    _port: tokio::net::TcpSocket,
    url: String,
}

fn dead_url() -> DeadUrl {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = socket.local_addr().unwrap();
    DeadUrl {
        _port: socket,
        url: format!("http://{addr}/webhook/app.json?token=s3cret-in-url"),
    }
}

/// The one test that waits for a real refresh cycle (the 60 s floor that
/// Bitrix24 asks for): the source fails at start-up, so the cached list
/// serves; then it publishes a new list and admission flips.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn url_source_failure_keeps_cache_then_new_list_flips_admission() {
    let dir = tempfile::tempdir().unwrap();
    let certs = TestCerts::new(dir.path());
    let upstream = Upstream::start().await;
    let nodes = NodesServer::start(Reply::Status(500, "<html>down</html>".into())).await;
    let cache = dir.path().join("cache.json");
    write_cache(&cache, &nodes.url(), &["127.0.0.3"]);
    let edge = start_edge(
        &edge_config(&certs)
            .nodes_source(nodes.url())
            .nodes_cache(&cache)
            .nodes_key("refresh", "60s")
            .route(EdgeRoute::new("/", &upstream.url())),
    )
    .await;
    eventually("the start-up refresh failed", || async {
        edge.nodes().status().total_failures >= 1
    })
    .await;
    let old_node = client(&certs, "127.0.0.3", false);
    let new_node = client(&certs, "127.0.0.2", false);
    assert_eq!(get(&old_node, &url(&edge, "/a")).await.0, 200);
    assert!(denied(&new_node, &url(&edge, "/a")).await);
    assert_eq!(admin_get(&edge, "/readyz").await.0, 200);
    let metrics = scrape(&edge).await;
    assert!(sample(&metrics, "b24_edge_nodes_refresh_failures_total") >= 1.0);

    nodes.set(Reply::nodes(&["127.0.0.2"]));
    eventually("the next refresh brought the new list", || async {
        edge.nodes().contains(ip("127.0.0.2")) == Some(true)
    })
    .await;
    assert_eq!(get(&new_node, &url(&edge, "/b")).await.0, 200);
    assert!(denied(&old_node, &url(&edge, "/b")).await);
    assert_eq!(nodes.hits(), 2, "one request a cycle, no more");
    let saved = CacheRecord::load(&cache).unwrap().unwrap();
    assert_eq!(saved.nodes, vec!["127.0.0.2".to_string()]);
    assert!(edge.shutdown().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starts_from_the_cache_with_the_source_down() {
    let dir = tempfile::tempdir().unwrap();
    let certs = TestCerts::new(dir.path());
    let upstream = Upstream::start().await;
    let dead = dead_url();
    let source = dead.url.clone();
    let cache = dir.path().join("cache.json");
    write_cache(&cache, &source, &["127.0.0.2"]);
    let edge = start_edge(
        &edge_config(&certs)
            .nodes_source(&source)
            .nodes_cache(&cache)
            .route(EdgeRoute::new("/", &upstream.url())),
    )
    .await;
    // Served from the cache before and after the source was found down.
    assert_eq!(
        get(&client(&certs, "127.0.0.2", false), &url(&edge, "/a"))
            .await
            .0,
        200
    );
    eventually("the start-up refresh failed", || async {
        edge.nodes().status().total_failures >= 1
    })
    .await;
    assert_eq!(
        get(&client(&certs, "127.0.0.2", false), &url(&edge, "/a"))
            .await
            .0,
        200
    );
    assert_eq!(admin_get(&edge, "/readyz").await.0, 200);
    assert!(edge.shutdown().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_list_at_all_fails_closed_and_is_not_ready() {
    let dir = tempfile::tempdir().unwrap();
    let certs = TestCerts::new(dir.path());
    let upstream = Upstream::start().await;
    let dead = dead_url();
    let source = dead.url.clone();
    let edge = start_edge(
        &edge_config(&certs)
            .nodes_source(&source)
            .nodes_cache(&dir.path().join("cache.json"))
            .route(EdgeRoute::new("/", &upstream.url()))
            .route(EdgeRoute::new("/public/", &upstream.url()).allow(&["any"])),
    )
    .await;
    eventually("the start-up refresh failed", || async {
        edge.nodes().status().total_failures >= 1
    })
    .await;
    let anyone = client(&certs, "127.0.0.2", false);
    assert_eq!(get(&anyone, &url(&edge, "/a")).await.0, 403);
    assert_eq!(get(&anyone, &url(&edge, "/public/a")).await.0, 200);
    assert_eq!(upstream.count(), 1);
    let (status, body) = admin_get(&edge, "/readyz").await;
    assert_eq!(status, 503);
    assert!(body.contains("no nodes list"), "{body}");
    assert!(
        body.contains("cannot connect"),
        "the reason is shown: {body}"
    );
    assert!(!body.contains("s3cret"), "no secret from the URL: {body}");
    assert_eq!(admin_get(&edge, "/healthz").await.0, 200);
    let metrics = scrape(&edge).await;
    assert_eq!(
        sample(
            &metrics,
            "b24_edge_denials_total{reason=\"nodes_unavailable\"}"
        ),
        1.0
    );
    assert!(!metrics.contains("s3cret"));
    assert!(edge.shutdown().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_source_garbage_keeps_the_list_and_a_rewrite_is_picked_up() {
    let dir = tempfile::tempdir().unwrap();
    let certs = TestCerts::new(dir.path());
    let upstream = Upstream::start().await;
    let list = nodes_list(dir.path(), &["127.0.0.2"]);
    let edge = start_edge(
        &edge_config(&certs)
            .nodes_file(&list)
            .nodes_key("file_poll", "100ms")
            .route(EdgeRoute::new("/", &upstream.url())),
    )
    .await;
    list_loaded(&edge).await;
    let node = client(&certs, "127.0.0.2", false);
    assert_eq!(get(&node, &url(&edge, "/a")).await.0, 200);

    let bad_versions: [&[u8]; 3] = [
        b"<html><body>502 Bad Gateway</body></html>",
        br#"{"nodes": []}"#,
        br#"{"nodes": ["127.0.0.3", "not-an-address"]}"#,
    ];
    for (i, bad) in bad_versions.into_iter().enumerate() {
        let failures_before = edge.nodes().status().total_failures;
        replace_file(&list, bad);
        eventually("the bad version was rejected", || async {
            edge.nodes().status().total_failures > failures_before
        })
        .await;
        assert_eq!(
            get(&node, &url(&edge, "/a")).await.0,
            200,
            "bad version {i}"
        );
    }
    let metrics = scrape(&edge).await;
    assert!(sample(&metrics, "b24_edge_nodes_refresh_failures_total") >= 3.0);

    // nodesync rewrites the file atomically; the edge follows within seconds.
    replace_file(&list, nodes_json(&["127.0.0.3"]).as_bytes());
    eventually("the rewritten file was picked up", || async {
        edge.nodes().contains(ip("127.0.0.3")) == Some(true)
    })
    .await;
    // The kept-alive connection is still judged per request: 403.
    assert_eq!(get(&node, &url(&edge, "/a")).await.0, 403);
    assert_eq!(
        get(&client(&certs, "127.0.0.3", false), &url(&edge, "/a"))
            .await
            .0,
        200
    );
    assert!(edge.shutdown().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_swaps_under_load_fail_no_request() {
    let dir = tempfile::tempdir().unwrap();
    let certs = TestCerts::new(dir.path());
    let upstream = Upstream::start().await;
    let list = nodes_list(dir.path(), &["127.0.0.2", "127.0.9.0"]);
    let edge = start_edge(
        &edge_config(&certs)
            .nodes_file(&list)
            .nodes_key("file_poll", "50ms")
            .route(EdgeRoute::new("/", &upstream.url())),
    )
    .await;
    list_loaded(&edge).await;

    let stop = Arc::new(AtomicBool::new(false));
    let succeeded = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for worker in 0..4 {
        let (stop, succeeded, failed) = (stop.clone(), succeeded.clone(), failed.clone());
        let client = client(&certs, "127.0.0.2", worker % 2 == 1);
        let target = url(&edge, "/load");
        workers.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let ok = match client.get(&target).send().await {
                    Ok(r) => r.status() == 200 && r.text().await.is_ok(),
                    Err(_) => false,
                };
                let counter = if ok { &succeeded } else { &failed };
                counter.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for swap in 1..=20 {
        let marker = format!("127.0.9.{swap}");
        replace_file(&list, nodes_json(&["127.0.0.2", &marker]).as_bytes());
        eventually("the swap was applied", || async {
            edge.nodes().contains(ip(&marker)) == Some(true)
        })
        .await;
        let before = succeeded.load(Ordering::Relaxed);
        eventually("requests went through after the swap", || async {
            succeeded.load(Ordering::Relaxed) > before
        })
        .await;
    }
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.await.unwrap();
    }
    assert_eq!(failed.load(Ordering::Relaxed), 0);
    assert!(succeeded.load(Ordering::Relaxed) >= 20);
    assert!(edge.shutdown().await);
}
