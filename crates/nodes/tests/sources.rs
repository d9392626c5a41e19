//! What a source may do to the list, against a real HTTP server on
//! loopback: publish something that opens the world, leave a cache behind
//! for another source, shrink a little at a time, or be one of several.

use std::sync::Arc;
use std::time::Duration;

use b24_nodes::{
    Baseline, CacheRecord, FetchOptions, Fetcher, FetcherSet, Limits, LiveNodes, NodeList, Outcome,
    Schedule, Source, run_refresh_loops,
};
use b24_testkit::{NodesServer, Reply};
use tokio_util::sync::CancellationToken;

/// Public addresses (the entry rules are on, as in production).
const GOOD: &[&str] = &["195.208.184.200", "89.208.230.2", "185.230.60.0/24"];

fn fast(limits: Limits) -> FetchOptions {
    FetchOptions {
        min_interval: Duration::ZERO,
        limits,
        ..FetchOptions::default()
    }
}

fn has(list: Option<&Arc<NodeList>>, ip: &str) -> bool {
    list.is_some_and(|l| l.contains(ip.parse().unwrap()))
}

#[tokio::test]
async fn a_list_that_opens_the_world_is_refused_and_the_last_good_list_stays() {
    b24_testkit::install_crypto_provider();
    let server = NodesServer::start(Reply::nodes(GOOD)).await;
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache.json");
    let source: Source = server.url().parse().unwrap();
    let mut f = Fetcher::new(source, Some(cache.clone()), fast(Limits::default())).unwrap();
    let live = LiveNodes::new();
    live.apply(&f.refresh().await);

    let attacks: &[(&[&str], &str)] = &[
        (&["195.208.184.200", "0.0.0.0/0"], "0.0.0.0/0"),
        (&["195.208.184.200", "::/0"], "::/0"),
        (&["0.0.0.0/1", "128.0.0.0/1"], "0.0.0.0/1"),
        (&["195.208.184.200", "10.0.0.0/24"], "10.0.0.0/24"),
        (&["195.208.184.200", "127.0.0.1"], "127.0.0.1"),
        (&["195.208.184.200", "198.18.0.2"], "198.18.0.2"),
    ];
    for (entries, named) in attacks {
        server.set(Reply::nodes(entries));
        let outcome = f.refresh().await;
        live.apply(&outcome);
        let Outcome::Failed { error, list } = &outcome else {
            panic!("{entries:?} was not refused: {outcome:?}");
        };
        assert!(error.is_unsafe_list(), "{error}");
        assert!(error.to_string().contains(named), "{error}");
        // Nothing outside the good list became admitted.
        assert!(has(list.as_ref(), "89.208.230.2"));
        for outsider in ["8.8.8.8", "10.0.0.1", "127.0.0.1", "198.18.0.2"] {
            assert_eq!(
                live.contains(outsider.parse().unwrap()),
                Some(false),
                "{outsider}"
            );
        }
        let status = live.status();
        assert!(status.refused.as_deref().unwrap().contains(named));
        let record = CacheRecord::load(&cache).unwrap().unwrap();
        assert!(record.last_error_unsafe);
        assert!(
            record
                .list()
                .unwrap()
                .contains("185.230.60.9".parse().unwrap())
        );
    }
    // A restart while the source still serves the bad list knows it was
    // refused; a good list clears it.
    let restarted = Fetcher::new(
        server.url().parse().unwrap(),
        Some(cache.clone()),
        fast(Limits::default()),
    )
    .unwrap();
    assert!(
        LiveNodes::from_fetcher(&restarted)
            .status()
            .refused
            .is_some()
    );
    server.set(Reply::nodes(GOOD));
    live.apply(&f.refresh().await);
    assert_eq!(live.status().refused, None);

    // The escape hatches, explicitly: the same bad list is then taken.
    server.set(Reply::nodes(&["195.208.184.200", "198.18.0.2"]));
    let mut lax = Fetcher::new(
        server.url().parse().unwrap(),
        None,
        fast(Limits::allowing_special()),
    )
    .unwrap();
    assert!(matches!(lax.refresh().await, Outcome::Changed { .. }));
}

#[tokio::test]
async fn a_cache_left_by_another_source_is_not_inherited() {
    b24_testkit::install_crypto_provider();
    let trial = NodesServer::start(Reply::nodes(&["195.208.184.200", "89.208.230.2"])).await;
    let real = NodesServer::start(Reply::Status(503, "down".into())).await;
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache.json");
    let mut f = Fetcher::new(
        trial.url().parse().unwrap(),
        Some(cache.clone()),
        fast(Limits::default()),
    )
    .unwrap();
    assert!(matches!(f.refresh().await, Outcome::Changed { .. }));
    assert!(CacheRecord::load(&cache).unwrap().unwrap().peak_networks == Some(2));

    // The admin points the same cache at the real source, which is down.
    let mut f = Fetcher::new(
        real.url().parse().unwrap(),
        Some(cache.clone()),
        fast(Limits::default()),
    )
    .unwrap();
    assert!(
        f.current().is_none(),
        "the trial list is not this source's last good list"
    );
    let outcome = f.refresh().await;
    assert!(
        matches!(outcome, Outcome::Failed { list: None, .. }),
        "{outcome:?}"
    );

    // And the first list of the new source has no baseline to be refused
    // against.
    real.set(Reply::nodes(&["195.208.184.200"]));
    let seen = std::sync::Mutex::new(None);
    let record_baseline = |b: &Baseline<'_>, _: &NodeList| {
        *seen.lock().unwrap() = Some((b.previous.map(|l| l.len()), b.peak));
        Ok(())
    };
    assert!(matches!(
        f.refresh_with(&record_baseline).await,
        Outcome::Changed { .. }
    ));
    assert_eq!(*seen.lock().unwrap(), Some((None, None)));
    assert_eq!(
        CacheRecord::load(&cache).unwrap().unwrap().source,
        real.url()
    );
}

#[tokio::test]
async fn a_cache_the_current_rules_refuse_is_not_used() {
    b24_testkit::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache.json");
    let source = "https://dl.bitrix24.com/webhook/app.json";
    // Written by an older version, or while allow_special was on.
    let mut record = CacheRecord::new(source.into());
    record.nodes = vec!["195.208.184.200".into(), "0.0.0.0/0".into()];
    record.store(&cache).unwrap();
    let f = Fetcher::new(
        source.parse().unwrap(),
        Some(cache.clone()),
        FetchOptions::default(),
    )
    .unwrap();
    assert!(f.current().is_none());
    let why = f.cache_error().unwrap();
    assert!(
        why.contains("0.0.0.0/0") && why.contains("not used"),
        "{why}"
    );
}

/// The baseline guard nodesync uses, with a 50 % limit: against the last
/// list and against the largest one within the window.
fn half_guard(baseline: &Baseline<'_>, new: &NodeList) -> Result<(), String> {
    if let Some(old) = baseline.previous
        && old.lost_share(new) > 0.5
    {
        return Err("lost more than half of the last list".into());
    }
    if let Some(peak) = baseline.peak
        && (new.len() as f64) < peak as f64 * 0.5
    {
        return Err(format!(
            "{} networks is under half of the peak {peak}",
            new.len()
        ));
    }
    Ok(())
}

fn addresses(count: usize) -> Vec<String> {
    (0..count)
        .map(|i| format!("89.208.{}.{}", i / 100, 1 + (i % 100) * 2))
        .collect()
}

#[tokio::test]
async fn the_baseline_cannot_be_walked_down_within_the_window() {
    b24_testkit::install_crypto_provider();
    let all = addresses(40);
    let server = NodesServer::start(Reply::nodes(
        &all.iter().map(String::as_str).collect::<Vec<_>>(),
    ))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache.json");
    let mut f = Fetcher::new(
        server.url().parse().unwrap(),
        Some(cache.clone()),
        fast(Limits::default()),
    )
    .unwrap();
    assert!(matches!(f.refresh().await, Outcome::Changed { .. }));

    // 40 → 20 is within the limit; 20 → 10 would be too, against the last
    // list only, but not against the day's peak of 40.
    let mut accepted = vec![40];
    for size in [20, 10, 5, 3, 2] {
        let entries: Vec<&str> = all[..size].iter().map(String::as_str).collect();
        server.set(Reply::nodes(&entries));
        if matches!(f.refresh_with(&half_guard).await, Outcome::Changed { .. }) {
            accepted.push(size);
        }
    }
    assert_eq!(accepted, [40, 20], "walked down past the baseline");
    assert_eq!(f.current().unwrap().len(), 20);

    // A day later the peak has left the window: the current list is the new
    // baseline, and one more halving is accepted.
    let mut record = CacheRecord::load(&cache).unwrap().unwrap();
    record.peak_at = record.peak_at.map(|t| t - 25 * 3600);
    record.store(&cache).unwrap();
    let mut f = Fetcher::new(
        server.url().parse().unwrap(),
        Some(cache.clone()),
        fast(Limits::default()),
    )
    .unwrap();
    let entries: Vec<&str> = all[..10].iter().map(String::as_str).collect();
    server.set(Reply::nodes(&entries));
    assert!(matches!(
        f.refresh_with(&half_guard).await,
        Outcome::Changed { .. }
    ));
    assert_eq!(
        CacheRecord::load(&cache).unwrap().unwrap().peak_networks,
        Some(10)
    );
}

#[tokio::test]
async fn several_sources_are_fetched_cached_and_throttled_each_on_its_own() {
    b24_testkit::install_crypto_provider();
    let world = NodesServer::start(Reply::nodes(&["195.208.184.200"])).await;
    let russia = NodesServer::start(Reply::nodes(&["89.208.230.2"])).await;
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("cache.json");
    let sources: Vec<Source> = [world.url(), russia.url()]
        .iter()
        .map(|u| u.parse().unwrap())
        .collect();
    let mut set = FetcherSet::new(&sources, Some(&base), FetchOptions::default()).unwrap();
    for f in set.fetchers_mut() {
        assert!(matches!(f.refresh().await, Outcome::Changed { .. }));
    }
    let union = set.union().unwrap();
    assert!(
        union.contains("195.208.184.200".parse().unwrap())
            && union.contains("89.208.230.2".parse().unwrap())
    );
    // Two cache files, one per source, none at the base path.
    let mut files: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(files.len(), 2, "{files:?}");
    assert!(
        files.iter().all(|f| f.starts_with("cache.127.0.0.1-")),
        "{files:?}"
    );

    // A second process within the minute asks neither source.
    let mut again = FetcherSet::new(&sources, Some(&base), FetchOptions::default()).unwrap();
    for f in again.fetchers_mut() {
        assert!(matches!(f.refresh().await, Outcome::Throttled { .. }));
    }
    assert_eq!((world.hits(), russia.hits()), (1, 1));

    // One source fails: its last good part stays in the union.
    russia.set(Reply::Status(500, "oops".into()));
    let mut third = FetcherSet::new(&sources, Some(&base), fast(Limits::default())).unwrap();
    let outcomes: Vec<Outcome> = {
        let mut v = Vec::new();
        for f in third.fetchers_mut() {
            v.push(f.refresh().await);
        }
        v
    };
    assert!(matches!(outcomes[1], Outcome::Failed { .. }));
    assert!(
        third
            .union()
            .unwrap()
            .contains("89.208.230.2".parse().unwrap())
    );
}

#[tokio::test]
async fn adding_a_second_source_keeps_the_first_ones_history() {
    b24_testkit::install_crypto_provider();
    let first = NodesServer::start(Reply::nodes(&["195.208.184.200"])).await;
    let second = NodesServer::start(Reply::Status(503, "down".into())).await;
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("cache.json");
    let one: Vec<Source> = vec![first.url().parse().unwrap()];
    let mut set = FetcherSet::new(&one, Some(&base), FetchOptions::default()).unwrap();
    set.fetchers_mut()[0].refresh().await;
    first.set(Reply::Status(503, "down".into()));

    let two: Vec<Source> = vec![first.url().parse().unwrap(), second.url().parse().unwrap()];
    let set = FetcherSet::new(&two, Some(&base), FetchOptions::default()).unwrap();
    assert!(
        set.union()
            .unwrap()
            .contains("195.208.184.200".parse().unwrap())
    );
    // Its 60 s rule carried over too.
    let mut set = set;
    assert!(matches!(
        set.fetchers_mut()[0].refresh().await,
        Outcome::Throttled { .. }
    ));
    assert_eq!(first.hits(), 1);
}

#[tokio::test]
async fn the_refresh_loop_admits_the_union_of_file_sources() {
    b24_testkit::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("world.json");
    let b = dir.path().join("russia.json");
    std::fs::write(&a, r#"{"nodes": ["195.208.184.200"]}"#).unwrap();
    std::fs::write(&b, r#"{"nodes": ["89.208.230.2"]}"#).unwrap();
    let sources = vec![Source::File(a.clone()), Source::File(b.clone())];
    let set = FetcherSet::new(&sources, None, FetchOptions::default()).unwrap();
    let live = Arc::new(LiveNodes::from_fetchers(set.fetchers()));
    let stop = CancellationToken::new();
    let schedule = Schedule {
        file_poll: Duration::from_millis(50),
        ..Schedule::default()
    };
    let task = tokio::spawn(run_refresh_loops(
        set.into_fetchers(),
        live.clone(),
        schedule,
        stop.clone(),
    ));
    let admits = |ip: &str| live.contains(ip.parse().unwrap()) == Some(true);
    for _ in 0..200 {
        if admits("195.208.184.200") && admits("89.208.230.2") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(admits("195.208.184.200") && admits("89.208.230.2"));
    assert_eq!(live.sources().len(), 2);

    // One source turns bad: its part stays, the other moves on.
    b24_nodes::write_atomically(&b, br#"{"nodes": ["0.0.0.0/0"]}"#).unwrap();
    b24_nodes::write_atomically(&a, br#"{"nodes": ["195.208.184.201"]}"#).unwrap();
    for _ in 0..200 {
        if admits("195.208.184.201") && live.status().refused.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(admits("195.208.184.201") && !admits("195.208.184.200"));
    assert!(
        admits("89.208.230.2"),
        "the bad source keeps its last good part"
    );
    assert!(!admits("8.8.8.8"));
    let refused = live.status().refused.clone().unwrap();
    assert!(
        refused.contains("russia.json") && refused.contains("0.0.0.0/0"),
        "{refused}"
    );
    stop.cancel();
    task.await.unwrap();
}
