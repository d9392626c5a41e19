//! The fetcher against a real HTTP server on loopback.

use std::sync::Arc;
use std::time::Duration;

use b24_nodes::{
    Baseline, CacheRecord, FetchError, FetchOptions, Fetcher, Limits, LiveNodes, Outcome,
    ParseError, Schedule, Source, run_refresh_loop,
};
use b24_testkit::{NodesServer, Reply};
use tokio_util::sync::CancellationToken;

fn fast() -> FetchOptions {
    FetchOptions {
        min_interval: Duration::ZERO,
        connect_timeout: Duration::from_secs(2),
        total_timeout: Duration::from_secs(2),
        ..polite()
    }
}

/// The default options, with the special-purpose addresses these tests use
/// (10.0.0.0/8, 198.51.100.0/24, 203.0.113.0/24) allowed explicitly.
fn polite() -> FetchOptions {
    FetchOptions {
        limits: Limits::allowing_special(),
        ..FetchOptions::default()
    }
}

fn fetcher(server: &NodesServer, cache: &std::path::Path, options: FetchOptions) -> Fetcher {
    let source: Source = server.url().parse().unwrap();
    Fetcher::new(source, Some(cache.to_owned()), options).unwrap()
}

fn has(outcome: &Outcome, ip: &str) -> bool {
    outcome
        .list()
        .is_some_and(|l| l.contains(ip.parse().unwrap()))
}

#[tokio::test]
async fn success_is_cached_on_disk() {
    b24_testkit::install_crypto_provider();
    let server = NodesServer::start(Reply::nodes(&["195.208.184.200", "2a02:6b8:c00::/48"])).await;
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("nodes.json");
    let mut f = fetcher(&server, &cache, fast());
    let outcome = f.refresh().await;
    assert!(matches!(outcome, Outcome::Changed { .. }), "{outcome:?}");
    assert!(has(&outcome, "195.208.184.200"));
    let record = CacheRecord::load(&cache).unwrap().unwrap();
    assert_eq!(record.nodes, ["195.208.184.200", "2a02:6b8:c00::/48"]);
    assert!(record.etag.is_some() && record.fetched_at.is_some());
    assert_eq!(record.last_error, None);
}

#[tokio::test]
async fn failures_and_bad_documents_keep_the_last_good_list() {
    b24_testkit::install_crypto_provider();
    let server = NodesServer::start(Reply::nodes(&["10.0.0.1"])).await;
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("nodes.json");
    let mut f = fetcher(&server, &cache, fast());
    assert!(matches!(f.refresh().await, Outcome::Changed { .. }));

    let bad = [
        (Reply::Status(500, "oops".into()), "HTTP 500"),
        (
            Reply::Status(502, "<html>Bad gateway</html>".into()),
            "HTTP 502",
        ),
        (
            Reply::raw(
                "<!DOCTYPE html><html><body>maintenance</body></html>",
                "text/html",
            ),
            "HTML page",
        ),
        (
            Reply::raw(r#"{"nodes": []}"#, "application/json"),
            "\"nodes\" is empty",
        ),
        (
            Reply::raw(
                r#"{"nodes": ["10.0.0.2", "10.0.0.300"]}"#,
                "application/json",
            ),
            "10.0.0.300",
        ),
        (
            Reply::raw(r#"{"nodes": ["10.0.0.2", null]}"#, "application/json"),
            "not a string",
        ),
        (
            Reply::raw(r#"{"servers": ["10.0.0.2"]}"#, "application/json"),
            "\"nodes\" key",
        ),
    ];
    for (reply, expected) in bad {
        server.set(reply);
        let outcome = f.refresh().await;
        let Outcome::Failed { error, list } = &outcome else {
            panic!("expected a failure for {expected}, got {outcome:?}");
        };
        assert!(
            error.to_string().contains(expected),
            "{error} should mention {expected}"
        );
        assert!(list.as_ref().unwrap().contains("10.0.0.1".parse().unwrap()));
        let record = CacheRecord::load(&cache).unwrap().unwrap();
        assert_eq!(record.nodes, ["10.0.0.1"], "the cache keeps the good list");
        assert!(record.last_error.unwrap().contains(expected));
    }
    assert_eq!(f.record().consecutive_failures, 7);

    server.set(Reply::nodes(&["10.0.0.1"]));
    assert!(matches!(f.refresh().await, Outcome::Unchanged { .. }));
    assert_eq!(f.record().consecutive_failures, 0);
}

#[tokio::test]
async fn a_server_that_never_answers_times_out() {
    b24_testkit::install_crypto_provider();
    let server = NodesServer::start(Reply::Hang).await;
    let dir = tempfile::tempdir().unwrap();
    let mut f = fetcher(&server, &dir.path().join("nodes.json"), fast());
    let outcome = tokio::time::timeout(Duration::from_secs(30), f.refresh())
        .await
        .unwrap();
    assert!(
        matches!(
            outcome,
            Outcome::Failed {
                error: FetchError::Timeout { .. },
                list: None
            }
        ),
        "{outcome:?}"
    );
}

#[tokio::test]
async fn a_huge_body_is_refused() {
    b24_testkit::install_crypto_provider();
    let mut body = br#"{"nodes": ["10.0.0.1""#.to_vec();
    while body.len() < 10 * 1024 * 1024 {
        body.extend_from_slice(br#", "10.0.0.1""#);
    }
    body.extend_from_slice(b"]}");
    let server = NodesServer::start(Reply::raw(body, "application/json")).await;
    let dir = tempfile::tempdir().unwrap();
    let mut f = fetcher(&server, &dir.path().join("nodes.json"), fast());
    let outcome = f.refresh().await;
    assert!(
        matches!(
            outcome,
            Outcome::Failed {
                error: FetchError::Invalid {
                    error: ParseError::TooLarge { .. },
                    ..
                },
                ..
            }
        ),
        "{outcome:?}"
    );
}

#[tokio::test]
async fn conditional_requests_get_304() {
    b24_testkit::install_crypto_provider();
    let server = NodesServer::start(Reply::nodes(&["10.0.0.1", "10.0.0.2"])).await;
    let dir = tempfile::tempdir().unwrap();
    let mut f = fetcher(&server, &dir.path().join("nodes.json"), fast());
    assert!(matches!(f.refresh().await, Outcome::Changed { .. }));
    let outcome = f.refresh().await;
    assert!(matches!(outcome, Outcome::Unchanged { .. }), "{outcome:?}");
    assert!(has(&outcome, "10.0.0.2"));
    assert_eq!((server.hits(), server.not_modified()), (2, 1));
}

#[tokio::test]
async fn the_minimum_interval_holds_across_fetchers_sharing_a_cache() {
    b24_testkit::install_crypto_provider();
    let server = NodesServer::start(Reply::nodes(&["10.0.0.1"])).await;
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("nodes.json");
    // Two fetchers, as two processes would be, with the default 60 s floor.
    let mut first = fetcher(&server, &cache, polite());
    assert!(matches!(first.refresh().await, Outcome::Changed { .. }));
    let mut second = fetcher(&server, &cache, polite());
    let outcome = second.refresh().await;
    let Outcome::Throttled { list, retry_in } = &outcome else {
        panic!("{outcome:?}")
    };
    assert!(list.as_ref().unwrap().contains("10.0.0.1".parse().unwrap()));
    assert!(*retry_in > Duration::from_secs(50));
    assert_eq!(server.hits(), 1);

    // A failed attempt counts too: it was a request.
    let mut record = CacheRecord::load(&cache).unwrap().unwrap();
    record.attempted_at = record.attempted_at.map(|t| t - 61);
    record.store(&cache).unwrap();
    server.set(Reply::Status(503, "busy".into()));
    let mut third = fetcher(&server, &cache, polite());
    assert!(matches!(third.refresh().await, Outcome::Failed { .. }));
    assert_eq!(server.hits(), 2);
    let mut fourth = fetcher(&server, &cache, polite());
    assert!(matches!(fourth.refresh().await, Outcome::Throttled { .. }));
    assert_eq!(server.hits(), 2);
}

#[tokio::test]
async fn restart_with_the_source_down_uses_the_cache() {
    b24_testkit::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("nodes.json");
    let url = {
        let server = NodesServer::start(Reply::nodes(&["203.0.113.0/24"])).await;
        let mut f = fetcher(&server, &cache, fast());
        assert!(matches!(f.refresh().await, Outcome::Changed { .. }));
        server.url()
    };
    // The server is gone; a new process starts.
    let mut f = Fetcher::new(url.parse().unwrap(), Some(cache.clone()), fast()).unwrap();
    assert!(
        f.current()
            .unwrap()
            .contains("203.0.113.9".parse().unwrap())
    );
    let outcome = f.refresh().await;
    let Outcome::Failed { error, list } = &outcome else {
        panic!("{outcome:?}")
    };
    assert!(matches!(error, FetchError::Connect { .. }), "{error:?}");
    assert!(
        list.as_ref()
            .unwrap()
            .contains("203.0.113.9".parse().unwrap())
    );
    let live = LiveNodes::from_fetcher(&f);
    assert_eq!(live.contains("203.0.113.9".parse().unwrap()), Some(true));
}

#[tokio::test]
async fn a_refused_list_is_not_kept() {
    b24_testkit::install_crypto_provider();
    let server = NodesServer::start(Reply::nodes(&["10.0.0.1", "10.0.0.2", "10.0.0.3"])).await;
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("nodes.json");
    let mut f = fetcher(&server, &cache, fast());
    assert!(matches!(f.refresh().await, Outcome::Changed { .. }));
    server.set(Reply::nodes(&["10.0.0.9"]));
    let refuse_shrink = |baseline: &Baseline<'_>, new: &b24_nodes::NodeList| match baseline.previous
    {
        Some(old) if old.lost_share(new) > 0.5 => Err("too much lost".to_string()),
        _ => Ok(()),
    };
    let outcome = f.refresh_with(&refuse_shrink).await;
    assert!(
        matches!(
            &outcome,
            Outcome::Failed {
                error: FetchError::Refused { .. },
                ..
            }
        ),
        "{outcome:?}"
    );
    assert!(has(&outcome, "10.0.0.1") && !has(&outcome, "10.0.0.9"));
    // Not remembered as the current version either: the next refresh asks
    // for the whole list again instead of getting a 304 for the refused one.
    let record = CacheRecord::load(&cache).unwrap().unwrap();
    let cached = record.list().unwrap();
    assert!(
        cached.contains("10.0.0.3".parse().unwrap())
            && !cached.contains("10.0.0.9".parse().unwrap())
    );
    assert!(matches!(f.refresh().await, Outcome::Changed { .. }));
}

#[tokio::test]
async fn file_sources_are_followed_by_the_refresh_loop() {
    b24_testkit::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("app.json");
    std::fs::write(&file, r#"{"nodes": ["198.51.100.1"]}"#).unwrap();
    let f = Fetcher::new(Source::File(file.clone()), None, polite()).unwrap();
    let live = Arc::new(LiveNodes::new());
    let stop = CancellationToken::new();
    let schedule = Schedule {
        file_poll: Duration::from_millis(100),
        ..Schedule::default()
    };
    let task = tokio::spawn(run_refresh_loop(f, live.clone(), schedule, stop.clone()));

    let wait_for = |ip: &'static str| {
        let live = live.clone();
        async move {
            for _ in 0..200 {
                if live.contains(ip.parse().unwrap()) == Some(true) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            panic!("{ip} never became allowed");
        }
    };
    wait_for("198.51.100.1").await;
    b24_nodes::write_atomically(&file, br#"{"nodes": ["198.51.100.2"]}"#).unwrap();
    wait_for("198.51.100.2").await;
    assert_eq!(live.contains("198.51.100.1".parse().unwrap()), Some(false));
    // Garbage in the file keeps the last good list.
    b24_nodes::write_atomically(&file, b"<html>").unwrap();
    for _ in 0..100 {
        if live.status().last_error.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        live.status()
            .last_error
            .as_deref()
            .unwrap()
            .contains("HTML")
    );
    assert_eq!(live.contains("198.51.100.2".parse().unwrap()), Some(true));
    stop.cancel();
    task.await.unwrap();
}

/// A file source is checked every second for months: an unchanged file —
/// good or bad — must cost a `stat`, not a cache rewrite with fsync, a
/// re-parse, a new failure and a log line each time.
#[tokio::test]
async fn an_unchanged_file_source_is_not_reread_nor_the_cache_rewritten() {
    b24_testkit::install_crypto_provider();
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("app.json");
    let cache = dir.path().join("nodes.json");
    std::fs::write(&file, r#"{"nodes": ["198.51.100.1"]}"#).unwrap();
    let mut f = Fetcher::new(Source::File(file.clone()), Some(cache.clone()), polite()).unwrap();
    assert!(matches!(f.refresh().await, Outcome::Changed { .. }));
    // Each cache write is a rename, so a rewrite shows as a new inode.
    let written = std::fs::metadata(&cache).unwrap().ino();
    for _ in 0..3 {
        assert!(matches!(f.refresh().await, Outcome::Unchanged { .. }));
    }
    assert_eq!(
        std::fs::metadata(&cache).unwrap().ino(),
        written,
        "the cache was rewritten"
    );

    b24_nodes::write_atomically(&file, b"<html>").unwrap();
    assert!(matches!(f.refresh().await, Outcome::Failed { .. }));
    let failed_once = std::fs::metadata(&cache).unwrap().ino();
    for _ in 0..3 {
        let outcome = f.refresh().await;
        assert!(matches!(&outcome, Outcome::Throttled { .. }), "{outcome:?}");
        assert!(
            outcome
                .list()
                .unwrap()
                .contains("198.51.100.1".parse().unwrap())
        );
    }
    assert_eq!(
        f.record().consecutive_failures,
        1,
        "one bad version is one failure"
    );
    assert_eq!(std::fs::metadata(&cache).unwrap().ino(), failed_once);

    // A file that disappears is the same: one failure, then quiet.
    std::fs::remove_file(&file).unwrap();
    assert!(matches!(
        f.refresh().await,
        Outcome::Failed {
            error: FetchError::File { .. },
            ..
        }
    ));
    for _ in 0..3 {
        assert!(matches!(f.refresh().await, Outcome::Throttled { .. }));
    }
    assert_eq!(f.record().consecutive_failures, 2);

    // A new version is read again at once.
    b24_nodes::write_atomically(&file, br#"{"nodes": ["198.51.100.2"]}"#).unwrap();
    assert!(matches!(f.refresh().await, Outcome::Changed { .. }));
    assert_eq!(f.record().consecutive_failures, 0);
}
