//! The store's rules on both backends — SQLite, and PostgreSQL with several
//! handles standing for several replicas on one database: a deal is never
//! claimed twice at once, concurrent requests for a deal make one job, a
//! lapsed lease moves to another replica without the first one clobbering
//! its result, links stay one per record, migrations apply once.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use b24_relay::Store;
use b24_relay::config::StoreConfig;
use b24_relay::store::{JobState, LinkKey, LinkKind, StoreOptions};
use common::postgres::{TestPostgres, unique_schema};

const LEASE: Duration = Duration::from_secs(60);

fn options() -> StoreOptions {
    StoreOptions {
        interrupted_delay: Duration::ZERO,
        ..StoreOptions::default()
    }
}

/// Where a scenario runs: `open()` gives a new handle on the same store
/// (for PostgreSQL, another "replica").
enum Backend {
    Sqlite(tempfile::TempDir),
    Postgres(TestPostgres, String),
}

impl Backend {
    fn all(test: &str) -> Vec<Backend> {
        let mut all = vec![Backend::Sqlite(tempfile::tempdir().unwrap())];
        if let Some(pg) = TestPostgres::get(test) {
            all.push(Backend::Postgres(pg, unique_schema(test)));
        }
        all
    }

    fn name(&self) -> &'static str {
        match self {
            Backend::Sqlite(_) => "sqlite",
            Backend::Postgres(..) => "postgres",
        }
    }

    fn config(&self) -> StoreConfig {
        match self {
            Backend::Sqlite(dir) => StoreConfig::from_url(
                &format!("sqlite://{}", dir.path().join("relay.db").display()),
                None,
                None,
            )
            .unwrap(),
            Backend::Postgres(pg, schema) => {
                StoreConfig::from_url(&pg.url, None, Some(schema)).unwrap()
            }
        }
    }

    fn shared_by_replicas(&self) -> bool {
        matches!(self, Backend::Postgres(..))
    }

    async fn open(&self) -> Store {
        Store::open(&self.config(), options()).await.unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_for_one_deal_make_one_job() {
    for backend in Backend::all("concurrent_requests_for_one_deal_make_one_job") {
        let replicas = [backend.open().await, backend.open().await];
        let mut tasks = tokio::task::JoinSet::new();
        for n in 0..60 {
            let store = replicas[n % 2].clone();
            tasks.spawn(async move { store.enqueue("partner", 7, "ONCRMDEALUPDATE").await });
        }
        let mut ids = BTreeSet::new();
        while let Some(done) = tasks.join_next().await {
            ids.insert(done.unwrap().unwrap().job_id);
        }
        assert_eq!(ids.len(), 1, "{}: {ids:?}", backend.name());
        let job = replicas[0]
            .job(*ids.first().unwrap())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(job.coalesced, 59, "{}", backend.name());
    }
}

/// Three replicas claim 150 jobs (50 deals, each announced three times
/// while running) as fast as they can: no job is claimed twice, no deal is
/// transferred by two replicas at once, every job ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_never_claim_a_job_or_a_deal_twice() {
    for backend in Backend::all("replicas_never_claim_a_job_or_a_deal_twice") {
        let replicas = [
            backend.open().await,
            backend.open().await,
            backend.open().await,
        ];
        for deal in 1..=50 {
            replicas[0].enqueue("partner", deal, "rule").await.unwrap();
        }
        let running = std::sync::Arc::new(std::sync::Mutex::new(BTreeSet::<i64>::new()));
        let claimed = std::sync::Arc::new(std::sync::Mutex::new(BTreeMap::<i64, u32>::new()));
        let mut workers = tokio::task::JoinSet::new();
        for (index, store) in replicas.iter().enumerate() {
            for _ in 0..3 {
                let (store, running, claimed) = (store.clone(), running.clone(), claimed.clone());
                workers.spawn(async move {
                    let mut idle = 0;
                    while idle < 20 {
                        let Some(job) = store.claim(LEASE).await.unwrap() else {
                            idle += 1;
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            continue;
                        };
                        idle = 0;
                        assert!(
                            running.lock().unwrap().insert(job.deal_id),
                            "deal {} claimed while running",
                            job.deal_id
                        );
                        *claimed.lock().unwrap().entry(job.id).or_default() += 1;
                        // A new request during the transfer: one more job.
                        if job.trigger == "rule" {
                            store
                                .enqueue("partner", job.deal_id, "again")
                                .await
                                .unwrap();
                        }
                        tokio::time::sleep(Duration::from_millis(2)).await;
                        running.lock().unwrap().remove(&job.deal_id);
                        store
                            .finish(job.id, JobState::Done, &format!("replica {index}"), None)
                            .await
                            .unwrap();
                    }
                });
            }
        }
        while let Some(done) = workers.join_next().await {
            done.unwrap();
        }
        let claimed = claimed.lock().unwrap().clone();
        assert_eq!(claimed.len(), 100, "{}", backend.name());
        assert!(
            claimed.values().all(|n| *n == 1),
            "{}: {claimed:?}",
            backend.name()
        );
        let done = replicas[1].jobs(Some(JobState::Done), 1000).await.unwrap();
        assert_eq!(done.len(), 100, "{}", backend.name());
        if backend.shared_by_replicas() {
            let by: BTreeSet<&str> = done.iter().filter_map(|j| j.message.as_deref()).collect();
            assert!(by.len() >= 2, "the work was shared: {by:?}");
        }
    }
}

/// A replica that stops renewing its lease loses the job to another one;
/// its late result does not overwrite the other replica's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lapsed_lease_moves_the_job_to_another_replica() {
    for backend in Backend::all("a_lapsed_lease_moves_the_job_to_another_replica") {
        let (first, second) = (backend.open().await, backend.open().await);
        let id = first.enqueue("partner", 3, "rule").await.unwrap().job_id;
        let lost = first
            .claim(Duration::from_millis(1))
            .await
            .unwrap()
            .unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        let taken = second.claim(LEASE).await.unwrap().unwrap();
        assert_eq!(
            (taken.id, taken.attempts, taken.interruptions),
            (id, 1, 1),
            "{}",
            backend.name()
        );
        if backend.shared_by_replicas() {
            first
                .finish(lost.id, JobState::Failed, "late", None)
                .await
                .unwrap();
            let job = second.job(id).await.unwrap().unwrap();
            assert_eq!(job.state, JobState::Running, "the late result is ignored");
        }
        second
            .finish(id, JobState::Done, "created", Some(9))
            .await
            .unwrap();
        let job = first.job(id).await.unwrap().unwrap();
        assert_eq!(
            (job.state, job.target_deal_id),
            (JobState::Done, Some(9)),
            "{}",
            backend.name()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn links_rule_runs_and_tokens_behave_alike() {
    for backend in Backend::all("links_rule_runs_and_tokens_behave_alike") {
        let store = backend.open().await;
        let key = LinkKey {
            kind: LinkKind::Contact,
            source_portal: "partner",
            source_id: 11,
            target_portal: "esb",
        };
        let (a, b) = (backend.open().await, backend.open().await);
        let (x, y) = tokio::join!(a.mark_creating(&key), b.mark_creating(&key));
        x.unwrap();
        y.unwrap();
        assert_eq!(store.link(&key).await.unwrap().unwrap().target_id, None);
        store.set_link(&key, 77, Some("h")).await.unwrap();
        store.mark_creating(&key).await.unwrap();
        assert_eq!(store.link(&key).await.unwrap().unwrap().target_id, Some(77));
        let deal = LinkKey {
            kind: LinkKind::Deal,
            ..key.clone()
        };
        store
            .add_copied_files(&deal, "ufCrm_DOCS", &[5, 2, 5])
            .await
            .unwrap();
        assert_eq!(
            store.copied_files(&deal, "ufCrm_DOCS").await.unwrap(),
            vec![2, 5]
        );

        let queued = store
            .enqueue_rule_call("partner", 4, "W1", "token-1", "p2e")
            .await
            .unwrap();
        let job = store.claim(LEASE).await.unwrap().unwrap();
        assert_eq!(job.id, queued.job_id);
        assert!(
            store
                .rule_calls_to_answer("partner", None)
                .await
                .unwrap()
                .is_empty()
        );
        store
            .finish(job.id, JobState::Done, "created", Some(3))
            .await
            .unwrap();
        let calls = store.rule_calls_to_answer("partner", None).await.unwrap();
        assert_eq!(calls.len(), 1, "{}", backend.name());
        store.finish_rule_call(calls[0].id, None).await.unwrap();
        assert!(
            store
                .rule_calls_to_answer("partner", None)
                .await
                .unwrap()
                .is_empty()
        );

        let pair = |a: &str, r: &str| b24_client::TokenPair {
            access_token: b24_client::Secret::new(a),
            refresh_token: b24_client::Secret::new(r),
        };
        let install = b24_relay::store::AppInstall {
            client_endpoint: "https://p.test/rest/".into(),
            domain: "p.test".into(),
            member_id: "m".into(),
            scopes: "crm".into(),
            application_token: b24_client::Secret::new("app"),
            tokens: pair("a1", "r1"),
            reinstall_reason: None,
            updated_at_ms: 0,
            server_endpoint: Some("https://oauth.bitrix24.tech/rest/".into()),
        };
        store.save_app_install("partner", &install).await.unwrap();
        store
            .save_app_tokens("partner", &pair("a2", "r2"))
            .await
            .unwrap();
        store
            .mark_reinstall_needed("partner", "invalid_grant")
            .await
            .unwrap();
        let stored = store.app_install("partner").await.unwrap().unwrap();
        assert_eq!(stored.tokens, pair("a2", "r2"), "{}", backend.name());
        assert_eq!(stored.reinstall_reason.as_deref(), Some("invalid_grant"));
        assert_eq!(
            stored.server_endpoint.as_deref(),
            Some("https://oauth.bitrix24.tech/rest/"),
            "{}",
            backend.name()
        );

        let stats = store.stats().await.unwrap();
        let done = stats
            .by_state
            .iter()
            .find(|(s, _)| *s == JobState::Done)
            .map(|(_, n)| *n);
        assert_eq!(done, Some(1), "{}", backend.name());
    }
}

/// Two replicas starting together on an empty database apply the
/// migrations once; a later start applies nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_apply_once_when_replicas_start_together() {
    let Some(pg) = TestPostgres::get("migrations_apply_once_when_replicas_start_together") else {
        return;
    };
    let schema = unique_schema("migrations");
    let config = StoreConfig::from_url(&pg.url, None, Some(&schema)).unwrap();
    let (a, b, c) = tokio::join!(
        Store::open(&config, options()),
        Store::open(&config, options()),
        Store::open(&config, options())
    );
    let (a, _b, _c) = (a.unwrap(), b.unwrap(), c.unwrap());
    assert_eq!(b24_relay::store::migrate(&config).await.unwrap(), 0);
    a.enqueue("partner", 1, "rule").await.unwrap();
    assert_eq!(a.jobs(None, 10).await.unwrap().len(), 1);
}

/// Three replicas draw requests for one portal from the shared budget at
/// once: together they never exceed what the portal's bucket allows (its
/// size at once, then its drain rate), as if one process sent them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_one_rate_budget_per_portal() {
    let Some(pg) = TestPostgres::get("replicas_share_one_rate_budget_per_portal") else {
        return;
    };
    let schema = unique_schema("budget");
    let config = StoreConfig::from_url(&pg.url, None, Some(&schema)).unwrap();
    let bucket = b24_client::BucketConfig {
        burst: 5,
        drain_per_second: 20.0,
    };
    // The budget itself answers (a failure would fall back to local buckets).
    let probe = Store::open(&config, options()).await.unwrap();
    let budget = probe
        .shared_budget(b24_relay::config::RateScope::Shared)
        .unwrap();
    budget.saturate("probe.test", bucket).await.unwrap();
    let wait = budget.reserve("probe.test", bucket).await.unwrap();
    assert!(wait > Duration::from_millis(40), "{wait:?}");
    let started = std::time::Instant::now();
    let mut sent = tokio::task::JoinSet::new();
    for _ in 0..3 {
        let store = Store::open(&config, options()).await.unwrap();
        let limits = b24_client::RateLimits::new(bucket).unwrap().share_with(
            store
                .shared_budget(b24_relay::config::RateScope::Shared)
                .unwrap(),
        );
        for _ in 0..20 {
            let limiter = limits.portal("portal.test");
            sent.spawn(async move {
                limiter.acquire().await;
                started.elapsed()
            });
        }
    }
    let mut times = Vec::new();
    while let Some(at) = sent.join_next().await {
        times.push(at.unwrap());
    }
    times.sort();
    // The budget starts full (a restarted replica cannot know what the
    // portal still counts): by time t at most drain·t requests (+1 slack).
    for (index, at) in times.iter().enumerate() {
        let allowed = at.as_secs_f64() * bucket.drain_per_second + 1.0;
        assert!(
            (index + 1) as f64 <= allowed,
            "request {} sent at {at:?}: more than the portal's rate",
            index + 1
        );
    }
    assert!(times.last().unwrap() >= &Duration::from_millis(2900));
}

/// An OAuth refresh is single-flight across replicas: the second waits for
/// the first to store its pair, then sees it (and does not refresh).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oauth_refresh_is_single_flight_across_replicas() {
    let Some(pg) = TestPostgres::get("an_oauth_refresh_is_single_flight_across_replicas") else {
        return;
    };
    let schema = unique_schema("refresh");
    let config = StoreConfig::from_url(&pg.url, None, Some(&schema)).unwrap();
    let (first, second) = (
        Store::open(&config, options()).await.unwrap(),
        Store::open(&config, options()).await.unwrap(),
    );
    let pair = |a: &str, r: &str| b24_client::TokenPair {
        access_token: b24_client::Secret::new(a),
        refresh_token: b24_client::Secret::new(r),
    };
    let install = b24_relay::store::AppInstall {
        client_endpoint: "https://p.test/rest/".into(),
        domain: "p.test".into(),
        member_id: "m".into(),
        scopes: "crm".into(),
        application_token: b24_client::Secret::new("app"),
        tokens: pair("a1", "r1"),
        reinstall_reason: None,
        updated_at_ms: 0,
        server_endpoint: None,
    };
    first.save_app_install("partner", &install).await.unwrap();
    let guard = first.begin_refresh("partner").await.unwrap();
    assert_eq!(guard.stored, Some(pair("a1", "r1")));
    let waiting = tokio::spawn(async move {
        let guard = second.begin_refresh("partner").await.unwrap();
        guard.stored
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !waiting.is_finished(),
        "the second refresh waits for the first"
    );
    first
        .save_app_tokens("partner", &pair("a2", "r2"))
        .await
        .unwrap();
    drop(guard);
    let seen = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("released when the first guard is dropped")
        .unwrap();
    assert_eq!(seen, Some(pair("a2", "r2")));
}

/// A party (contact, company) claim has one holder at a time across
/// replicas: the holder may renew it, only the holder releases it, and a
/// lapsed claim is taken over; 40 claims raced from two replicas win once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_party_is_claimed_by_one_holder_at_a_time() {
    for backend in Backend::all("a_party_is_claimed_by_one_holder_at_a_time") {
        let name = backend.name();
        let (a, b) = (backend.open().await, backend.open().await);
        let key = LinkKey {
            kind: LinkKind::Contact,
            source_portal: "partner",
            source_id: 5,
            target_portal: "esb",
        };
        assert!(a.claim_party(&key, "a", LEASE).await.unwrap(), "{name}");
        assert!(
            a.claim_party(&key, "a", LEASE).await.unwrap(),
            "{name}: renew"
        );
        assert!(!b.claim_party(&key, "b", LEASE).await.unwrap(), "{name}");
        b.release_party(&key, "b").await.unwrap();
        assert!(
            !b.claim_party(&key, "b", LEASE).await.unwrap(),
            "{name}: only the holder releases"
        );
        a.release_party(&key, "a").await.unwrap();
        assert!(
            b.claim_party(&key, "b", Duration::ZERO).await.unwrap(),
            "{name}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert!(
            a.claim_party(&key, "c", LEASE).await.unwrap(),
            "{name}: a lapsed claim is taken over"
        );

        let company = LinkKey {
            kind: LinkKind::Company,
            source_id: 9,
            ..key.clone()
        };
        let mut tasks = tokio::task::JoinSet::new();
        for n in 0..40 {
            let store = if n % 2 == 0 { a.clone() } else { b.clone() };
            let company = company.clone();
            tasks.spawn(async move {
                let key = LinkKey {
                    kind: company.kind,
                    source_portal: "partner",
                    source_id: company.source_id,
                    target_portal: "esb",
                };
                store
                    .claim_party(&key, &format!("worker-{n}"), LEASE)
                    .await
                    .unwrap()
            });
        }
        let mut won = 0;
        while let Some(done) = tasks.join_next().await {
            won += usize::from(done.unwrap());
        }
        assert_eq!(won, 1, "{name}");
    }
}

/// The relay's own write-back announces itself: one expected event is an
/// echo (used up), more events mean a person changed the deal too, and a
/// late one is read like any event — the same on every backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expected_echo_is_taken_once_and_more_events_are_real() {
    for backend in Backend::all("an_expected_echo_is_taken_once_and_more_events_are_real") {
        let name = backend.name();
        let (a, b) = (backend.open().await, backend.open().await);
        let window = Duration::from_secs(30);
        assert!(!a.take_echo("partner", 7, 1).await.unwrap(), "{name}");
        a.expect_echo("partner", 7, window).await.unwrap();
        assert!(
            !b.take_echo("partner", 7, 2).await.unwrap(),
            "{name}: two events, one is a person's"
        );
        assert!(
            !b.take_echo("partner", 7, 1).await.unwrap(),
            "{name}: the expectation was used up"
        );
        a.expect_echo("partner", 7, window).await.unwrap();
        a.expect_echo("partner", 7, window).await.unwrap();
        assert!(
            b.take_echo("partner", 7, 2).await.unwrap(),
            "{name}: two echoes"
        );
        assert!(!b.take_echo("partner", 7, 1).await.unwrap(), "{name}");
        a.expect_echo("partner", 8, Duration::ZERO).await.unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert!(
            !b.take_echo("partner", 8, 1).await.unwrap(),
            "{name}: a late echo is read like any event"
        );
    }
}

/// Live before bulk: with backfill jobs waiting, a live request queued
/// after them is claimed first; a live request for a deal whose backfill
/// job waits merges into it and makes it live; a backfill request for a
/// deal with a waiting live job leaves that job live.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_jobs_are_claimed_before_backfill_jobs() {
    use b24_relay::store::BACKFILL_TRIGGER;
    for backend in Backend::all("live_jobs_are_claimed_before_backfill_jobs") {
        let name = backend.name();
        let store = backend.open().await;
        for deal in 1..=5 {
            store
                .enqueue("partner", deal, BACKFILL_TRIGGER)
                .await
                .unwrap();
        }
        let live = store.enqueue("partner", 100, "rule").await.unwrap();
        // A live event for deal 3, whose backfill job waits: one job, live now.
        let merged = store
            .enqueue("partner", 3, "ONCRMDEALUPDATE")
            .await
            .unwrap();
        assert!(merged.coalesced, "{name}");
        let job = store.job(merged.job_id).await.unwrap().unwrap();
        assert_eq!(job.trigger, "ONCRMDEALUPDATE", "{name}");
        // A backfill request for a deal with a live job waiting: still live.
        let live_200 = store.enqueue("partner", 200, "rule").await.unwrap();
        let again = store
            .enqueue("partner", 200, BACKFILL_TRIGGER)
            .await
            .unwrap();
        assert_eq!(again.job_id, live_200.job_id, "{name}");
        assert_eq!(
            store.job(again.job_id).await.unwrap().unwrap().trigger,
            "rule",
            "{name}"
        );
        assert_eq!(
            store.pending_by_trigger().await.unwrap(),
            (3, 4),
            "{name}: (live, backfill) pending"
        );
        let mut order = Vec::new();
        while let Some(job) = store.claim(LEASE).await.unwrap() {
            order.push((job.deal_id, job.trigger.clone()));
            store
                .finish(job.id, JobState::Done, "ok", None)
                .await
                .unwrap();
        }
        let deals: Vec<i64> = order.iter().map(|(d, _)| *d).collect();
        assert_eq!(deals, vec![3, 100, 200, 1, 2, 4, 5], "{name}: {order:?}");
        assert!(!live.coalesced);
    }
}

/// The backfill cursor: one holder at a time, the cursor moves only with
/// the enqueue it records, a run with the same filter resumes, another
/// filter or --restart starts over, a dead holder can be taken over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backfill_has_one_holder_and_resumes_from_its_cursor() {
    use b24_relay::store::{BackfillCursor, BackfillStart};
    for backend in Backend::all("a_backfill_has_one_holder_and_resumes_from_its_cursor") {
        let name = backend.name();
        let (one, two) = (backend.open().await, backend.open().await);
        let filter = "category 2, stages C2:PREPARATION, created any time";
        let started = one
            .begin_backfill("r", filter, "host/1", LEASE, None, false)
            .await
            .unwrap();
        assert!(
            matches!(&started, BackfillStart::Started { resumed: false, row } if row.cursor == BackfillCursor::default()),
            "{name}: {started:?}"
        );
        let held = two
            .begin_backfill("r", filter, "host/2", LEASE, None, false)
            .await
            .unwrap();
        assert!(
            matches!(&held, BackfillStart::Held(row) if row.holder.as_deref() == Some("host/1")),
            "{name}: {held:?}"
        );
        let cursor = BackfillCursor {
            last_id: Some(10),
            enqueued: 1,
            already: 0,
        };
        let queued = one
            .backfill_enqueue("r", "host/1", "partner", 10, cursor, LEASE)
            .await
            .unwrap()
            .expect("the holder queues");
        // Not the holder: nothing queued, the cursor does not move.
        let refused = two
            .backfill_enqueue(
                "r",
                "host/2",
                "partner",
                11,
                BackfillCursor {
                    last_id: Some(11),
                    enqueued: 2,
                    already: 0,
                },
                LEASE,
            )
            .await
            .unwrap();
        assert_eq!(refused, None, "{name}");
        assert_eq!(one.jobs(None, 10).await.unwrap().len(), 1, "{name}");
        let job = one.job(queued.job_id).await.unwrap().unwrap();
        assert_eq!(job.trigger, "backfill", "{name}");
        assert_eq!(
            one.waiting_backfill_jobs("partner").await.unwrap(),
            vec![queued.job_id],
            "{name}"
        );
        assert_eq!(
            one.job_states(&[queued.job_id, 9999]).await.unwrap(),
            vec![(queued.job_id, JobState::Pending)],
            "{name}"
        );
        // A dead holder is taken over on request; its cursor is kept.
        let taken = two
            .begin_backfill("r", filter, "host/2", LEASE, Some("host/1"), false)
            .await
            .unwrap();
        assert!(
            matches!(&taken, BackfillStart::Started { resumed: true, row } if row.cursor == cursor),
            "{name}: {taken:?}"
        );
        // The first holder lost it: its saves say so.
        assert!(
            !one.save_backfill("r", "host/1", cursor, LEASE)
                .await
                .unwrap(),
            "{name}"
        );
        two.end_backfill("r", "host/2", cursor, false)
            .await
            .unwrap();
        let row = one.backfill("r").await.unwrap().unwrap();
        assert_eq!((row.holder, row.finished_at_ms), (None, None), "{name}");
        // Same filter: resumed. Another filter: over again.
        let resumed = one
            .begin_backfill("r", filter, "host/1", LEASE, None, false)
            .await
            .unwrap();
        assert!(
            matches!(&resumed, BackfillStart::Started { resumed: true, row } if row.cursor.last_id == Some(10)),
            "{name}: {resumed:?}"
        );
        one.end_backfill("r", "host/1", cursor, false)
            .await
            .unwrap();
        let other = one
            .begin_backfill(
                "r",
                "category 2, stages any, created any time",
                "host/1",
                LEASE,
                None,
                false,
            )
            .await
            .unwrap();
        assert!(
            matches!(&other, BackfillStart::Started { resumed: false, row } if row.cursor == BackfillCursor::default()),
            "{name}: {other:?}"
        );
        // Finished: the next run starts over; --restart too.
        one.end_backfill("r", "host/1", cursor, true).await.unwrap();
        assert!(
            one.backfill("r")
                .await
                .unwrap()
                .unwrap()
                .finished_at_ms
                .is_some()
        );
        let again = one
            .begin_backfill(
                "r",
                "category 2, stages any, created any time",
                "host/1",
                LEASE,
                None,
                false,
            )
            .await
            .unwrap();
        assert!(
            matches!(&again, BackfillStart::Started { resumed: false, .. }),
            "{name}: {again:?}"
        );
        one.save_backfill("r", "host/1", cursor, LEASE)
            .await
            .unwrap();
        let restarted = one
            .begin_backfill(
                "r",
                "category 2, stages any, created any time",
                "host/1",
                LEASE,
                None,
                true,
            )
            .await
            .unwrap();
        assert!(
            matches!(&restarted, BackfillStart::Started { resumed: false, row } if row.cursor.last_id.is_none()),
            "{name}: {restarted:?}"
        );
    }
}

/// Fairness between sources: while a busy source's jobs hold workers, a
/// quiet source's new job is claimed before the busy source's next one,
/// although it arrived last; live jobs still go before backfill jobs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_source_cannot_take_every_worker() {
    for backend in Backend::all("a_busy_source_cannot_take_every_worker") {
        let name = backend.name();
        let store = backend.open().await;
        for deal in 1..=20 {
            store
                .enqueue("busy", deal, "ONCRMDEALUPDATE")
                .await
                .unwrap();
        }
        let mut running = Vec::new();
        for _ in 0..3 {
            let job = store.claim(LEASE).await.unwrap().unwrap();
            assert_eq!(job.portal, "busy", "{name}: only the busy source waits");
            running.push(job.id);
        }
        store.enqueue("quiet", 1, "ONCRMDEALUPDATE").await.unwrap();
        let next = store.claim(LEASE).await.unwrap().unwrap();
        assert_eq!(
            (next.portal.as_str(), next.deal_id),
            ("quiet", 1),
            "{name}: the quiet source's deal goes before the busy source's 4th"
        );
        // With one running each, the busy source's oldest waiting deal is next.
        store
            .finish(next.id, JobState::Done, "transferred", Some(1))
            .await
            .unwrap();
        let after = store.claim(LEASE).await.unwrap().unwrap();
        assert_eq!(
            (after.portal.as_str(), after.deal_id),
            ("busy", 4),
            "{name}"
        );
    }
}
