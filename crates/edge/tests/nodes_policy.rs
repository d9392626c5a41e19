//! The `[nodes]` keys nodesync's engineer owns: a list that would open the
//! edge to everyone (or to loopback, or the LAN) is refused, shown in
//! `/readyz` and a metric, and the last good list keeps serving; several
//! sources are admitted as a union. (Refusal is asked as a TLS 403 so that
//! the answer can be read; by default it is a reset before TLS.)

mod common;

use common::*;

/// Debug mode (a 403 after TLS), `sources` as a list polled every 50 ms.
fn policy_config(certs: &TestCerts, sources: &[&std::path::Path], upstream: &Upstream) -> EdgeToml {
    let sources: Vec<String> = sources.iter().map(|p| p.display().to_string()).collect();
    edge_config(certs)
        .server("refuse_before_tls", false)
        .nodes_key("source", sources)
        .nodes_key("file_poll", "50ms")
        .route(EdgeRoute::new("/", &upstream.url()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loopback_list_is_refused_without_allow_special() {
    let dir = tempfile::tempdir().unwrap();
    let certs = TestCerts::new(dir.path());
    let upstream = Upstream::start().await;
    let list = nodes_list(dir.path(), &["127.0.0.2"]);
    // What is under test: no allow_special (the other tests need it).
    let edge =
        start_edge(&policy_config(&certs, &[&list], &upstream).nodes_key("allow_special", false))
            .await;
    eventually("the list was refused", || async {
        edge.nodes().status().refused.is_some()
    })
    .await;
    assert_eq!(
        get(&client(&certs, "127.0.0.2", false), &url(&edge, "/a"))
            .await
            .0,
        403
    );
    let (status, body) = admin_get(&edge, "/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("127.0.0.2") && body.contains("allow_special = true"),
        "{body}"
    );
    assert_eq!(sample(&scrape(&edge).await, "b24_edge_nodes_refused"), 1.0);
    assert!(edge.shutdown().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_list_that_opens_the_world_keeps_the_last_good_list_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let certs = TestCerts::new(dir.path());
    let upstream = Upstream::start().await;
    let list = nodes_list(dir.path(), &["127.0.0.2"]);
    // Loopback is what the test can use (allow_special); broad entries
    // stay refused.
    let edge = start_edge(&policy_config(&certs, &[&list], &upstream)).await;
    eventually("the list is loaded", || async {
        edge.nodes().contains(ip("127.0.0.2")) == Some(true)
    })
    .await;
    let listed = client(&certs, "127.0.0.2", false);
    let unlisted = client(&certs, "127.0.0.3", false);
    for attack in [
        nodes_json(&["127.0.0.2", "0.0.0.0/0"]),
        nodes_json(&["0.0.0.0/1", "128.0.0.0/1"]),
        nodes_json(&["127.0.0.2", "127.0.0.0/8"]),
    ] {
        let before = edge.nodes().status().total_failures;
        replace_file(&list, attack.as_bytes());
        eventually("the list was refused", || async {
            edge.nodes().status().total_failures > before
        })
        .await;
        assert_eq!(get(&listed, &url(&edge, "/a")).await.0, 200, "{attack}");
        assert_eq!(get(&unlisted, &url(&edge, "/a")).await.0, 403, "{attack}");
        let (status, body) = admin_get(&edge, "/readyz").await;
        assert_eq!(status, 200, "the last good list serves: {body}");
        assert!(
            body.contains("refused") && body.contains("allow_broad = true"),
            "{body}"
        );
        assert_eq!(sample(&scrape(&edge).await, "b24_edge_nodes_refused"), 1.0);
    }
    replace_file(&list, nodes_json(&["127.0.0.3"]).as_bytes());
    eventually("the good list is in use", || async {
        edge.nodes().contains(ip("127.0.0.3")) == Some(true)
    })
    .await;
    assert_eq!(get(&unlisted, &url(&edge, "/a")).await.0, 200);
    assert_eq!(admin_get(&edge, "/readyz").await, (200, "ready\n".into()));
    assert_eq!(sample(&scrape(&edge).await, "b24_edge_nodes_refused"), 0.0);
    assert!(edge.shutdown().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_sources_are_admitted_as_a_union() {
    let dir = tempfile::tempdir().unwrap();
    let certs = TestCerts::new(dir.path());
    let upstream = Upstream::start().await;
    let world = dir.path().join("app-world.json");
    let russia = dir.path().join("app-ru.json");
    replace_file(&world, nodes_json(&["127.0.0.2"]).as_bytes());
    replace_file(&russia, nodes_json(&["127.0.0.3"]).as_bytes());
    let edge = start_edge(
        &policy_config(&certs, &[&world, &russia], &upstream)
            .nodes_cache(&dir.path().join("cache.json")),
    )
    .await;
    eventually("both parts are loaded", || async {
        edge.nodes().contains(ip("127.0.0.2")) == Some(true)
            && edge.nodes().contains(ip("127.0.0.3")) == Some(true)
    })
    .await;
    for from in ["127.0.0.2", "127.0.0.3"] {
        assert_eq!(
            get(&client(&certs, from, false), &url(&edge, "/a")).await.0,
            200
        );
    }
    assert_eq!(
        get(&client(&certs, "127.0.0.4", false), &url(&edge, "/a"))
            .await
            .0,
        403
    );
    // One source turns bad: it keeps its last good part.
    replace_file(&russia, b"<html>maintenance</html>");
    eventually("the bad version was rejected", || async {
        edge.nodes().status().last_error.is_some()
    })
    .await;
    assert_eq!(
        get(&client(&certs, "127.0.0.3", false), &url(&edge, "/a"))
            .await
            .0,
        200
    );
    let error = edge.nodes().status().last_error.clone().unwrap();
    assert!(error.contains("app-ru.json"), "{error}");
    assert!(edge.shutdown().await);
}
