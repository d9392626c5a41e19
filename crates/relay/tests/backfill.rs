//! `b24-relay backfill`: existing source deals moved through the queue by a
//! real `serve`, with live events arriving meanwhile, stops and kills in
//! the middle, and the mistakes an admin makes.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use b24_emulator::{EntityType, Portal};
use b24_relay::store::{BACKFILL_TRIGGER, LinkKey, LinkKind};
use b24_relay::{JobState, Store};
use common::*;
use serde_json::json;

const ROUTE: &str = "partner-to-esb";
/// Fast enough that 2 000 transfers take seconds, not minutes; the
/// standard limit's effect on a backfill is measured by bench/relay.
const RATE: (u32, f64) = (10_000, 5_000.0);
const WORKERS: usize = 8;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Setup {
    dir: tempfile::TempDir,
    config: PathBuf,
    url: String,
    source: Portal,
    target: Portal,
}

impl Setup {
    /// `store`: the TOML value of the `store` key (default: SQLite in the
    /// test's directory).
    async fn new(store: Option<&str>) -> Self {
        b24_testkit::install_crypto_provider();
        let (source, target) = start_portals(RATE.0, RATE.1).await;
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let options = Options {
            listen: format!("127.0.0.1:{port}"),
            rate: RATE,
            workers: WORKERS,
            ..Options::default()
        };
        let mut text = config_text(dir.path(), &source, &target, &options);
        if let Some(store) = store {
            let sqlite = format!(
                "store = \"sqlite://{}\"",
                dir.path().join("relay.db").display()
            );
            assert!(text.contains(&sqlite));
            text = text.replace(&sqlite, &format!("store = {store}"));
        }
        let config = dir.path().join("relay.toml");
        std::fs::write(&config, text).unwrap();
        Self {
            config,
            url: format!("http://127.0.0.1:{port}"),
            dir,
            source,
            target,
        }
    }

    async fn store(&self) -> Store {
        let config = b24_relay::Config::load(&self.config).unwrap();
        Store::open(&config.store, Default::default())
            .await
            .unwrap()
    }

    fn serve(&self) -> Killed {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("serve.log"))
            .unwrap();
        Command::new(env!("CARGO_BIN_EXE_b24-relay"))
            .args(["serve", "--config"])
            .arg(&self.config)
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .map(Killed)
            .expect("serve starts")
    }

    async fn serving(&self) -> Killed {
        let child = self.serve();
        let health = format!("{}/healthz", self.url);
        for _ in 0..400 {
            if let Ok(response) = client().get(&health).send().await {
                if response.status() == 200 {
                    return child;
                }
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("serve did not come up");
    }

    /// `b24-relay backfill --route ROUTE ARGS`, its output in files named `name`.
    fn backfill(&self, name: &str, args: &[&str]) -> Running {
        let out = self.dir.path().join(format!("{name}.out"));
        let err = self.dir.path().join(format!("{name}.err"));
        let child = Command::new(env!("CARGO_BIN_EXE_b24-relay"))
            .args(["backfill", "--route", ROUTE, "--config"])
            .arg(&self.config)
            .args(args)
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::fs::File::create(&err).unwrap())
            .spawn()
            .map(Killed)
            .expect("backfill starts");
        Running { child, out, err }
    }

    async fn run_backfill(&self, name: &str, args: &[&str]) -> Finished {
        self.backfill(name, args).finish().await
    }
}

/// A child process killed when dropped (also when a test fails).
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Running {
    child: Killed,
    out: PathBuf,
    err: PathBuf,
}

struct Finished {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Running {
    async fn finish(mut self) -> Finished {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
        let status = loop {
            if let Some(status) = self.child.0.try_wait().unwrap() {
                break status;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "backfill did not end"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        Finished {
            status,
            stdout: std::fs::read_to_string(&self.out).unwrap(),
            stderr: std::fs::read_to_string(&self.err).unwrap(),
        }
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.child.0.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    fn ended(&mut self) -> bool {
        self.child.0.try_wait().unwrap().is_some()
    }
}

impl Finished {
    fn code(&self) -> Option<i32> {
        self.status.code()
    }
}

impl std::fmt::Debug for Finished {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
            self.status.code(),
            self.stdout,
            self.stderr
        )
    }
}

fn deal_in(source: &Portal, title: &str, category: i64, stage: &str) -> i64 {
    source
        .admin()
        .insert_record(
            EntityType::Deal,
            &record(json!({"title": title, "categoryId": category, "stageId": stage, "opportunity": 100, "currencyId": "RUB", "ufCrm_LEVEL": 1, "assignedById": 5})),
        )
        .expect("deal inserted")
}

/// Target deals per source deal id (`originId`).
fn target_by_origin(target: &Portal) -> BTreeMap<i64, Vec<b24_emulator::Record>> {
    let mut by_origin: BTreeMap<i64, Vec<_>> = BTreeMap::new();
    for deal in target_deals(target) {
        let origin = deal["originId"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .expect("every target deal has the relay's originId");
        by_origin.entry(origin).or_default().push(deal);
    }
    by_origin
}

async fn all_jobs_ended(store: &Store) {
    wait_until("every job ends", Duration::from_secs(300), async || {
        let stats = store.stats().await.unwrap();
        stats
            .by_state
            .iter()
            .filter(|(s, _)| matches!(s, JobState::Pending | JobState::Running))
            .all(|(_, n)| *n == 0)
    })
    .await;
}

fn stop(child: Killed) {
    drop(child);
}

/// 2 000 existing deals in the route's stage, among deals of another stage,
/// another pipeline and deals created before `--since` (none of which may
/// move), with gaps (deleted deals), Cyrillic titles and 20 deals already
/// on the target; live rule runs arrive during the backfill, for new deals
/// and for deals in the backfill. Every matching deal ends as exactly one
/// target deal, and no live job waits behind more backfill jobs than the
/// workers had already claimed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_deals_move_once_and_live_events_go_first() {
    let started = std::time::Instant::now();
    let setup = Setup::new(None).await;
    let source = &setup.source;
    let mut old = Vec::new();
    for n in 0..30 {
        old.push(plain_deal(source, &format!("Old {n}"), "C2:PREPARATION"));
    }
    // createdTime has whole seconds: the next deals are a second younger.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let mut matching = Vec::new();
    let mut other = Vec::new();
    for n in 0..2040 {
        let title = if n % 3 == 0 {
            format!("Сделка «Ромашка» №{n}")
        } else {
            format!("Deal {n}")
        };
        matching.push(plain_deal(source, &title, "C2:PREPARATION"));
        if n % 40 == 0 {
            other.push(plain_deal(source, &format!("Not ready {n}"), "C2:NEW"));
            other.push(deal_in(source, &format!("Other pipeline {n}"), 0, "NEW"));
        }
    }
    // Deleted deals: gaps in the ids.
    let mut deleted = Vec::new();
    for (n, id) in matching.clone().iter().enumerate() {
        if n % 51 == 7 && deleted.len() < 40 {
            assert!(source.admin().delete_record(EntityType::Deal, *id));
            deleted.push(*id);
        }
    }
    matching.retain(|id| !deleted.contains(id));
    assert_eq!(matching.len(), 2000);
    let since = source
        .admin()
        .record(EntityType::Deal, matching[0])
        .unwrap()["createdTime"]
        .as_str()
        .unwrap()
        .to_owned();
    // 20 deals are already on the target (moved earlier, linked).
    let store = setup.store().await;
    let mut already = Vec::new();
    for id in matching.iter().step_by(100) {
        let target_id = setup
            .target
            .admin()
            .insert_record(
                EntityType::Deal,
                &record(
                    json!({"title": "moved earlier", "categoryId": 3, "stageId": "C3:NEW",
                    "originatorId": "b24-relay:partner", "originId": id.to_string()}),
                ),
            )
            .unwrap();
        let key = LinkKey {
            kind: LinkKind::Deal,
            source_portal: "partner",
            source_id: *id,
            target_portal: "esb",
        };
        store.set_link(&key, target_id, None).await.unwrap();
        already.push(*id);
    }
    assert_eq!(already.len(), 20);
    let serve = setup.serving().await;
    let mut backfill = setup.backfill(
        "main",
        &[
            "--since",
            &since,
            "--window",
            "100",
            "--progress-every",
            "2",
        ],
    );
    // Live rule runs while the backfill runs: new deals, and deals of the
    // backfill (whose jobs may be waiting: they merge and become live).
    let mut live_new = Vec::new();
    let mut live_old = BTreeSet::new();
    let mut n = 0;
    while !backfill.ended() && n < 120 {
        n += 1;
        if n % 2 == 0 {
            let id = plain_deal(source, &format!("Live {n}"), "C2:PREPARATION");
            live_new.push(id);
            assert_eq!(post_rule(&setup.url, id).await, 200);
        } else {
            // A deal whose backfill job waits, if one does now.
            let waiting = store
                .jobs(Some(JobState::Pending), 200)
                .await
                .unwrap()
                .into_iter()
                .find(|j| j.trigger == BACKFILL_TRIGGER && !live_old.contains(&j.deal_id));
            let id = waiting.map_or(matching[(n * 37) % matching.len()], |j| j.deal_id);
            live_old.insert(id);
            assert_eq!(post_rule(&setup.url, id).await, 200);
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    let done = backfill.finish().await;
    assert_eq!(done.code(), Some(0), "{done:?}");
    // Deals a live rule run moved before the backfill reached them are
    // "already on esb" too.
    let (queued, already_there) = queued_and_already(&done.stdout);
    assert!(
        done.stdout.contains("2000 deal(s) matched;")
            && queued + already_there == 2000
            && already_there >= 20,
        "{done:?}"
    );
    assert!(done.stderr.contains("2000/2000 (100%)"), "{done:?}");
    assert!(
        done.stderr.contains("/2000 (") && done.stderr.contains("/min, ETA"),
        "progress lines: {done:?}"
    );
    for secret in [SOURCE_SECRET, TARGET_SECRET] {
        assert!(!done.stderr.contains(secret) && !done.stdout.contains(secret));
    }
    all_jobs_ended(&store).await;
    stop(serve);

    // Every matching deal is exactly one target deal; nothing else moved.
    let by_origin = target_by_origin(&setup.target);
    for id in matching.iter().chain(&live_new) {
        let found = by_origin.get(id).map_or(0, Vec::len);
        assert_eq!(found, 1, "deal {id} has {found} target deal(s)");
    }
    for id in old.iter().chain(&other).chain(&deleted) {
        assert!(!by_origin.contains_key(id), "deal {id} must not move");
    }
    assert_eq!(by_origin.len(), matching.len() + live_new.len());
    // Titles arrive as written, Cyrillic ones too.
    let mut cyrillic = 0;
    for id in matching.iter().filter(|id| !already.contains(id)) {
        let title = &source.admin().record(EntityType::Deal, *id).unwrap()["title"];
        assert_eq!(&by_origin[id][0]["title"], title, "deal {id}");
        cyrillic += usize::from(title.as_str().unwrap().starts_with("Сделка «Ромашка»"));
    }
    assert!(cyrillic > 600, "{cyrillic}");
    for id in &already {
        assert_eq!(by_origin[id][0]["title"], json!("moved earlier"));
    }

    // The store: no failure, one backfill job per deal at most, and live
    // jobs claimed before any backfill job queued before them was.
    let jobs = store.jobs(None, u32::MAX).await.unwrap();
    let failed: Vec<_> = jobs
        .iter()
        .filter(|j| j.state == JobState::Failed)
        .collect();
    assert!(failed.is_empty(), "{failed:?}");
    let mut backfill_jobs = BTreeMap::<i64, usize>::new();
    let mut first_start = BTreeMap::<i64, i64>::new();
    for job in &jobs {
        if job.trigger == BACKFILL_TRIGGER {
            *backfill_jobs.entry(job.deal_id).or_default() += 1;
        }
        if let Some(first) = store.attempts(job.id).await.unwrap().first() {
            first_start.insert(job.id, first.started_at_ms);
        }
    }
    assert!(
        backfill_jobs.values().all(|n| *n == 1),
        "a deal queued twice"
    );
    assert!(already.iter().all(|id| !backfill_jobs.contains_key(id)));
    let backfill_starts: Vec<i64> = jobs
        .iter()
        .filter(|j| j.trigger == BACKFILL_TRIGGER)
        .filter_map(|j| first_start.get(&j.id).copied())
        .collect();
    let live_new: BTreeSet<i64> = live_new.into_iter().collect();
    let mut worst = 0;
    let mut measured = 0;
    for job in jobs
        .iter()
        .filter(|j| j.trigger == "rule" && live_new.contains(&j.deal_id))
    {
        let started = first_start[&job.id];
        let overtaken = backfill_starts
            .iter()
            .filter(|s| **s > job.created_at_ms && **s < started)
            .count();
        worst = worst.max(overtaken);
        measured += 1;
    }
    assert!(measured >= 10, "live jobs measured: {measured}");
    assert!(
        worst <= WORKERS,
        "a live job waited while {worst} backfill jobs started (workers: {WORKERS})"
    );
    let made_live = jobs
        .iter()
        .filter(|j| live_old.contains(&j.deal_id) && j.trigger == "rule" && j.coalesced > 0)
        .count();
    eprintln!(
        "{} backfill jobs; {measured} live jobs: at most {worst} backfill job(s) started between a live job's queueing and its start; {made_live} waiting backfill job(s) made live by a rule run; {:.1} s",
        backfill_starts.len(),
        started.elapsed().as_secs_f64()
    );
    store.close().await;
    setup.source.shutdown().await;
    setup.target.shutdown().await;
}

/// "N queued this run" and "M already on esb" of the last line.
fn queued_and_already(stdout: &str) -> (u64, u64) {
    let number_before = |marker: &str| -> u64 {
        let at = stdout.find(marker).expect(marker);
        stdout[..at]
            .rsplit(|c: char| !c.is_ascii_digit())
            .find(|s| !s.is_empty())
            .and_then(|s| s.parse().ok())
            .expect(marker)
    };
    (
        number_before(" queued this run"),
        number_before(" already on esb"),
    )
}

/// The number of jobs per deal.
async fn queued_per_deal(store: &Store) -> BTreeMap<i64, usize> {
    let mut per_deal = BTreeMap::new();
    for job in store.jobs(None, u32::MAX).await.unwrap() {
        *per_deal.entry(job.deal_id).or_default() += 1;
    }
    per_deal
}

async fn enqueued(store: &Store) -> u64 {
    store
        .backfill(ROUTE)
        .await
        .unwrap()
        .map_or(0, |row| row.cursor.enqueued)
}

/// Stopped with SIGTERM, then killed with SIGKILL, then run to the end:
/// each run continues after the last deal the one before queued; no deal
/// is queued twice; every deal arrives once.
async fn stop_and_resume(store: Option<&str>) {
    const DEALS: usize = 400;
    let setup = Setup::new(store).await;
    let ids: Vec<i64> = (0..DEALS)
        .map(|n| plain_deal(&setup.source, &format!("Resume {n}"), "C2:PREPARATION"))
        .collect();
    let store = setup.store().await;
    // Slow transfers, so that the window keeps the backfill waiting.
    setup.target.faults().set_method(
        "batch",
        b24_emulator::MethodFaults {
            latency_ms: 40,
            ..Default::default()
        },
    );
    let serve = setup.serving().await;
    let first = setup.backfill("first", &["--window", "20"]);
    wait_until("100 deals queued", Duration::from_secs(120), async || {
        enqueued(&store).await >= 100
    })
    .await;
    first.signal("TERM");
    let first = first.finish().await;
    assert_eq!(first.code(), Some(143), "{first:?}");
    assert!(
        first.stderr.contains("stopped by SIGTERM")
            && first
                .stderr
                .contains("to resume, run the same command again"),
        "{first:?}"
    );
    let row = store.backfill(ROUTE).await.unwrap().unwrap();
    assert_eq!(row.holder, None, "the lease is let go");
    let status = Command::new(env!("CARGO_BIN_EXE_b24-relay"))
        .args(["store", "status", "--config"])
        .arg(&setup.config)
        .output()
        .unwrap();
    let status = String::from_utf8_lossy(&status.stdout);
    assert!(
        status.contains("backfill partner-to-esb: stopped (run it again to resume)"),
        "{status}"
    );
    let after_first = row.cursor;
    assert!(after_first.enqueued >= 100 && (after_first.enqueued as usize) < DEALS);

    let second = setup.backfill("second", &["--window", "20"]);
    wait_until("250 deals queued", Duration::from_secs(120), async || {
        enqueued(&store).await >= 250
    })
    .await;
    second.signal("KILL");
    let second = second.finish().await;
    assert_eq!(second.code(), None, "killed: {second:?}");
    assert!(
        second.stderr.contains(&format!(
            "resuming after deal {}",
            after_first.last_id.unwrap()
        )),
        "{second:?}"
    );
    let after_second = store.backfill(ROUTE).await.unwrap().unwrap();
    assert!(after_second.holder.is_some(), "a killed run keeps its row");

    // The killed run's lease has not lapsed, but its process is gone.
    let third = setup.run_backfill("third", &["--window", "20"]).await;
    assert_eq!(third.code(), Some(0), "{third:?}");
    assert!(
        third.stderr.contains(&format!(
            "resuming after deal {}",
            after_second.cursor.last_id.unwrap()
        )),
        "{third:?}"
    );
    all_jobs_ended(&store).await;
    stop(serve);
    let per_deal = queued_per_deal(&store).await;
    for id in &ids {
        assert_eq!(per_deal.get(id), Some(&1), "deal {id} queued {per_deal:?}");
    }
    let row = store.backfill(ROUTE).await.unwrap().unwrap();
    assert_eq!(row.cursor.enqueued as usize, DEALS);
    assert!(row.finished_at_ms.is_some());
    let by_origin = target_by_origin(&setup.target);
    assert_eq!(by_origin.len(), DEALS);
    assert!(by_origin.values().all(|deals| deals.len() == 1));

    // Run again after the end: everything is already there.
    let again = setup.run_backfill("again", &[]).await;
    assert_eq!(again.code(), Some(0), "{again:?}");
    assert!(
        again.stdout.contains("0 queued this run") && again.stdout.contains("400 already on esb"),
        "{again:?}"
    );
    store.close().await;
    setup.source.shutdown().await;
    setup.target.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_or_killed_backfill_resumes_without_queueing_a_deal_twice() {
    stop_and_resume(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_or_killed_backfill_resumes_on_postgresql_too() {
    let test = "a_stopped_or_killed_backfill_resumes_on_postgresql_too";
    let Some(pg) = common::postgres::TestPostgres::get(test) else {
        return;
    };
    let schema = common::postgres::unique_schema("backfill");
    let store = format!("{{ url = \"{}\", schema = \"{schema}\" }}", pg.url);
    stop_and_resume(Some(&store)).await;
}

/// The admin's mistakes: an unknown route, a stage the route does not
/// take, a bad date, an empty source, a dry run (writes nothing), two
/// backfills at once, no `serve` running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn careless_admin() {
    let setup = Setup::new(None).await;
    // Nothing to move yet.
    let empty = setup.run_backfill("empty", &[]).await;
    assert_eq!(empty.code(), Some(0), "{empty:?}");
    assert!(empty.stdout.contains("nothing to move"), "{empty:?}");

    let unknown = Command::new(env!("CARGO_BIN_EXE_b24-relay"))
        .args(["backfill", "--route", "partner-to-crm", "--config"])
        .arg(&setup.config)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&unknown.stderr);
    assert_eq!(unknown.status.code(), Some(2), "{text}");
    assert!(
        text.contains("no route `partner-to-crm`; configured: partner-to-esb"),
        "{text}"
    );
    for (args, says) in [
        (
            &["--stage", "C2:NEW"][..],
            "only takes deals in C2:PREPARATION",
        ),
        (&["--since", "01.03.2024"][..], "write a date as YYYY-MM-DD"),
        (&["--window", "0"][..], "--window"),
    ] {
        let wrong = setup.run_backfill("wrong", args).await;
        assert_eq!(wrong.code(), Some(2), "{args:?}: {wrong:?}");
        assert!(wrong.stderr.contains(says), "{args:?}: {wrong:?}");
    }

    for n in 0..30 {
        plain_deal(&setup.source, &format!("Dry {n}"), "C2:PREPARATION");
    }
    plain_deal(&setup.source, "Not ready", "C2:NEW");
    let dry = setup.run_backfill("dry", &["--dry-run"]).await;
    assert_eq!(dry.code(), Some(0), "{dry:?}");
    assert!(
        dry.stdout.contains("would queue 30 of 30 matching deal(s)")
            && dry.stdout.contains("first ids: 1, 2, 3"),
        "{dry:?}"
    );
    let store = setup.store().await;
    assert!(
        store.jobs(None, 10).await.unwrap().is_empty(),
        "dry run queued"
    );
    assert_eq!(
        store.backfill(ROUTE).await.unwrap(),
        None,
        "dry run wrote a cursor"
    );
    assert!(target_deals(&setup.target).is_empty());

    // No serve: the jobs wait, the window fills, the hint comes.
    let first = setup.backfill("first", &["--window", "5", "--stall-after", "1"]);
    wait_until("the window is full", Duration::from_secs(60), async || {
        enqueued(&store).await >= 5
    })
    .await;
    let second = setup.run_backfill("second", &[]).await;
    assert_eq!(second.code(), Some(1), "{second:?}");
    assert!(
        second
            .stderr
            .contains("a backfill of route `partner-to-esb` is already running"),
        "{second:?}"
    );
    wait_until("the hint", Duration::from_secs(30), async || {
        std::fs::read_to_string(&first.err)
            .unwrap()
            .contains("no job finished for 1 s: is `b24-relay serve` running on this store?")
    })
    .await;
    assert_eq!(enqueued(&store).await, 5, "the window holds");
    first.signal("INT");
    let first = first.finish().await;
    assert_eq!(first.code(), Some(130), "{first:?}");
    // serve comes: the rest moves, once.
    let serve = setup.serving().await;
    let rest = setup.run_backfill("rest", &["--window", "5"]).await;
    assert_eq!(rest.code(), Some(0), "{rest:?}");
    all_jobs_ended(&store).await;
    stop(serve);
    let by_origin = target_by_origin(&setup.target);
    assert_eq!(by_origin.len(), 30);
    assert!(by_origin.values().all(|d| d.len() == 1));
    // Again: everything is there. With --update: queued, updated, not created.
    let serve = setup.serving().await;
    let again = setup.run_backfill("again", &[]).await;
    assert!(
        again.stdout.contains("0 queued this run") && again.stdout.contains("30 already on esb"),
        "{again:?}"
    );
    let update = setup.run_backfill("update", &["--update"]).await;
    assert_eq!(update.code(), Some(0), "{update:?}");
    assert!(
        update.stdout.contains("30 queued this run (30 transferred"),
        "{update:?}"
    );
    all_jobs_ended(&store).await;
    stop(serve);
    let by_origin = target_by_origin(&setup.target);
    assert_eq!(by_origin.len(), 30);
    assert!(by_origin.values().all(|d| d.len() == 1));
    store.close().await;
    setup.source.shutdown().await;
    setup.target.shutdown().await;
}
