//! `b24-relay backfill --route NAME`: the source portal's existing deals
//! that match the route moved through the ordinary job queue, so that the
//! running `serve` transfers each exactly once, like a live event.
//!
//! - The deals are read in id order with the batched "ID greater than the
//!   last" scan ([`IdScan`]: 50 pages of 50 per request), never with
//!   `start` offsets, which slow down and skip or repeat records when the
//!   list changes meanwhile.
//! - At most `window` of the backfill's jobs wait or run at any time; more
//!   are queued as they finish. Backfill jobs are claimed after every live
//!   job (see `Store::claim`), so live events never wait behind the bulk.
//! - The cursor (last deal id handled) moves in the same transaction as
//!   each enqueue and is kept in the store with a lease: a stopped or
//!   killed backfill resumes where it was without queueing a deal twice,
//!   and a second backfill of the same route refuses to start.
//! - A deal the target already holds (a deal link) is skipped unless
//!   `--update`; one moved meanwhile by a live event is safe anyway, since
//!   the transfer looks the target deal up by link and by
//!   `originatorId`/`originId` before it creates anything.

mod progress;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use b24_cli_support::exit::UsageError;
use b24_client::IdScan;
use serde_json::{Value, json};

use crate::app::Parts;
use crate::config::Route;
use crate::portals::id_of;
use crate::store::{BackfillCursor, BackfillStart, JobState, LinkKey, LinkKind, Store};
use crate::transfer::{Dialect, TransferError};

pub use progress::{Counts, Progress};

/// The lease a running backfill holds on its route (renewed every few
/// seconds): how long a backfill killed on another host blocks the next.
const LEASE: Duration = Duration::from_secs(30);
/// How often the backfill looks at its jobs while it waits for the window.
const POLL: Duration = Duration::from_millis(300);
/// Ids shown by `--dry-run`.
const SHOWN_IDS: usize = 20;

/// What to move, from the command line.
#[derive(Debug, Clone)]
pub struct Request {
    pub route: String,
    /// `--since`: deals created at or after this (`YYYY-MM-DD` or RFC 3339).
    pub since: Option<String>,
    /// `--stage`: only these stages (a subset of the route's `when.stages`).
    pub stages: Vec<String>,
    pub dry_run: bool,
    /// Jobs of the backfill waiting or running at most.
    pub window: usize,
    /// Start over instead of resuming from the stored cursor.
    pub restart: bool,
    /// Queue deals the target already holds too (they are updated).
    pub update: bool,
    /// No job finished for this long while some wait: say so.
    pub stall_after: Duration,
    /// Progress lines when stderr is not a terminal.
    pub progress_every: Duration,
}

/// The filter a backfill scans with, checked against the route.
#[derive(Debug, Clone, PartialEq)]
pub struct Selection {
    pub category: Option<i64>,
    /// Empty: any stage.
    pub stages: Vec<String>,
    /// As sent to the portal (`YYYY-MM-DDT00:00:00` for a bare date).
    pub since: Option<String>,
}

impl Selection {
    /// The route's `when`, narrowed by `--stage` and `--since`; a stage
    /// the route does not take, or a malformed date, is a usage error.
    pub fn of(route: &Route, stages: &[String], since: Option<&str>) -> Result<Self, UsageError> {
        if !route.when_stages.is_empty() {
            if let Some(bad) = stages.iter().find(|s| !route.when_stages.contains(s)) {
                return Err(UsageError(format!(
                    "--stage {bad}: route `{}` only takes deals in {} (its `when.stages`); a backfill cannot move deals the route would not",
                    route.name,
                    route.when_stages.join(", ")
                )));
            }
        }
        let stages = if stages.is_empty() {
            route.when_stages.clone()
        } else {
            let mut chosen: Vec<String> = stages.to_vec();
            chosen.dedup();
            chosen
        };
        let since = since.map(parse_since).transpose()?;
        Ok(Self {
            category: route.when_category,
            stages,
            since,
        })
    }

    /// The filter as people read it, and as the store tells runs apart.
    pub fn describe(&self) -> String {
        format!(
            "category {}, stages {}, created {}",
            self.category
                .map_or_else(|| "any".to_owned(), |c| c.to_string()),
            if self.stages.is_empty() {
                "any".to_owned()
            } else {
                self.stages.join("|")
            },
            self.since
                .as_deref()
                .map_or_else(|| "any time".to_owned(), |s| format!("since {s}"))
        )
    }

    /// The list filter in the portal's dialect.
    pub fn filter(&self, dialect: Dialect) -> Value {
        let (category, stage, created) = match dialect {
            Dialect::Item => ("=categoryId", "@stageId", ">=createdTime"),
            Dialect::Legacy => ("=CATEGORY_ID", "@STAGE_ID", ">=DATE_CREATE"),
        };
        let mut filter = serde_json::Map::new();
        if let Some(c) = self.category {
            filter.insert(category.into(), json!(c));
        }
        if !self.stages.is_empty() {
            filter.insert(stage.into(), json!(self.stages));
        }
        if let Some(since) = &self.since {
            filter.insert(created.into(), json!(since));
        }
        Value::Object(filter)
    }

    fn scan(&self, dialect: Dialect) -> IdScan {
        match dialect {
            Dialect::Item => IdScan::items(2, self.filter(dialect), &["id"]),
            Dialect::Legacy => IdScan::legacy("crm.deal.list", self.filter(dialect), &["ID"]),
        }
    }
}

/// `YYYY-MM-DD` (midnight in the portal's time zone) or RFC 3339.
pub fn parse_since(text: &str) -> Result<String, UsageError> {
    let bad = || {
        UsageError(format!(
            "--since {text}: write a date as YYYY-MM-DD (2024-03-01) or an RFC 3339 time (2024-03-01T09:00:00+03:00)"
        ))
    };
    let b = text.as_bytes();
    let digits = |range: std::ops::Range<usize>| {
        b.get(range.clone())
            .is_some_and(|s| s.iter().all(u8::is_ascii_digit))
            .then(|| text[range].parse::<u32>().unwrap_or(0))
    };
    let date_ok = b.len() >= 10
        && b[4] == b'-'
        && b[7] == b'-'
        && digits(0..4).is_some()
        && digits(5..7).is_some_and(|m| (1..=12).contains(&m))
        && digits(8..10).is_some_and(|d| (1..=31).contains(&d));
    if !date_ok {
        return Err(bad());
    }
    if b.len() == 10 {
        return Ok(format!("{text}T00:00:00"));
    }
    let time_ok = b.len() >= 19
        && matches!(b[10], b'T' | b't' | b' ')
        && b[13] == b':'
        && b[16] == b':'
        && digits(11..13).is_some_and(|h| h < 24)
        && digits(14..16).is_some_and(|m| m < 60)
        && digits(17..19).is_some_and(|s| s < 61);
    if !time_ok {
        return Err(bad());
    }
    let mut rest = &text[19..];
    if let Some(fraction) = rest.strip_prefix('.') {
        let n = fraction.bytes().take_while(u8::is_ascii_digit).count();
        if n == 0 {
            return Err(bad());
        }
        rest = &fraction[n..];
    }
    let zone_ok = rest.eq_ignore_ascii_case("z")
        || (rest.len() == 6
            && matches!(rest.as_bytes()[0], b'+' | b'-')
            && rest.as_bytes()[3] == b':'
            && rest[1..3].bytes().all(|c| c.is_ascii_digit())
            && rest[4..6].bytes().all(|c| c.is_ascii_digit()));
    if !zone_ok {
        return Err(bad());
    }
    Ok(format!("{}T{}", &text[..10], &text[11..]))
}

/// Why a backfill stopped before the end: a signal. Its exit code is
/// 128 + the signal (130 for Ctrl-C, 143 for SIGTERM); the message says
/// how to resume.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Stopped {
    pub signal: i32,
    pub message: String,
}

impl Stopped {
    pub fn exit_code(&self) -> u8 {
        (128 + self.signal).clamp(0, 255) as u8
    }
}

/// The signal that asked to stop, if any (set by [`watch_signals`]).
pub type StopFlag = Arc<std::sync::atomic::AtomicI32>;

/// Records SIGINT/SIGTERM in the returned flag instead of dying, so the
/// backfill saves its cursor first.
pub fn watch_signals() -> std::io::Result<StopFlag> {
    use tokio::signal::unix::{SignalKind, signal};
    let flag: StopFlag = Arc::default();
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let set = flag.clone();
    tokio::spawn(async move {
        loop {
            let signal = tokio::select! {
                _ = interrupt.recv() => 2,
                _ = terminate.recv() => 15,
            };
            set.store(signal, std::sync::atomic::Ordering::SeqCst);
        }
    });
    Ok(flag)
}

fn stop_signal(flag: &StopFlag) -> Option<i32> {
    match flag.load(std::sync::atomic::Ordering::SeqCst) {
        0 => None,
        signal => Some(signal),
    }
}

/// Sleeps `duration`, or less when a stop is asked.
async fn nap(duration: Duration, stop: &StopFlag) {
    let until = Instant::now() + duration;
    while Instant::now() < until && stop_signal(stop).is_none() {
        tokio::time::sleep((until - Instant::now()).min(Duration::from_millis(100))).await;
    }
}

/// This process as a backfill holder: `host/pid`.
fn holder_name() -> String {
    format!("{}/{}", host_name(), std::process::id())
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "host".into())
}

/// A holder that was a process of this host that no longer runs (killed
/// with SIGKILL, or the host rebooted): its lease need not be waited out.
fn dead_local_holder(holder: &str) -> bool {
    let Some((host, pid)) = holder.rsplit_once('/') else {
        return false;
    };
    host == host_name()
        && pid.parse::<u32>().is_ok_and(|pid| {
            pid != std::process::id() && !std::path::Path::new(&format!("/proc/{pid}")).exists()
        })
}

fn transfer_error(context: &str, error: b24_client::Error) -> anyhow::Error {
    anyhow::anyhow!("{}", TransferError::client(context, error).detailed())
}

/// What a finished (or dry) run did, for its last line and for tests.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Summary {
    pub total: u64,
    pub counts: Counts,
    /// `--dry-run`: the first deal ids that would be queued.
    pub would_queue: Vec<i64>,
}

/// Runs a backfill to its end (every queued job finished) or until `stop`.
pub async fn run(parts: &Parts, request: &Request, stop: &StopFlag) -> anyhow::Result<Summary> {
    let route = crate::cli::route_of(&parts.config, &request.route)?.clone();
    let selection = Selection::of(&route, &request.stages, request.since.as_deref())?;
    let source = parts
        .transfer
        .portal(&route.from)
        .map_err(|e| anyhow::anyhow!("{}", e.detailed()))?;
    // The dialect is found by the catalogue read (crm.item.* or not).
    source
        .deal_catalog(false)
        .await
        .map_err(|e| transfer_error(&format!("reading the deal fields of {}", route.from), e))?;
    let dialect = source.dialect.get();
    let reader = source.reader();
    let total = count(&reader, dialect, &selection)
        .await
        .map_err(|e| transfer_error(&format!("counting the deals of {}", route.from), e))?;
    let what = selection.describe();
    if total == 0 {
        println!(
            "route {}: nothing to move: no deal of {} matches ({what})",
            route.name, route.from
        );
        return Ok(Summary::default());
    }
    if request.dry_run {
        return dry_run(parts, &route, &reader, dialect, &selection, total, request).await;
    }
    let store = &parts.store;
    let holder = holder_name();
    let filter = what.clone();
    let mut start = store
        .begin_backfill(&route.name, &filter, &holder, LEASE, None, request.restart)
        .await?;
    if let BackfillStart::Held(row) = &start {
        if let Some(dead) = row.holder.as_deref().filter(|h| dead_local_holder(h)) {
            start = store
                .begin_backfill(
                    &route.name,
                    &filter,
                    &holder,
                    LEASE,
                    Some(dead),
                    request.restart,
                )
                .await?;
        }
    }
    let (row, resumed) = match start {
        BackfillStart::Started { row, resumed } => (row, resumed),
        BackfillStart::Held(row) => {
            let left = row
                .lease_until_ms
                .map(|u| ((u - crate::store::now_ms()).max(0) / 1000) + 1)
                .unwrap_or(0);
            return Err(anyhow::anyhow!(
                "a backfill of route `{}` is already running ({}, {}); wait for it to end, or stop it \
                 (Ctrl-C or SIGTERM) and run this again; if that process was killed on another host, \
                 its lease lapses in {left} s",
                route.name,
                row.holder.as_deref().unwrap_or("?"),
                row.filter
            ));
        }
    };
    let mut runner = Runner {
        store,
        route: &route,
        holder,
        cursor: row.cursor,
        outstanding: BTreeSet::new(),
        counts: Counts::default(),
        progress: Progress::new(&route.name, total, request.progress_every),
        last_finish: Instant::now(),
        last_save: Instant::now(),
        stall_after: request.stall_after,
        stall_said: false,
    };
    if resumed {
        runner.outstanding = store
            .waiting_backfill_jobs(&route.from)
            .await?
            .into_iter()
            .collect();
        eprintln!(
            "backfill {}: resuming after deal {} ({} queued and {} already on {} before; {} of its jobs still waiting)",
            route.name,
            row.cursor.last_id.unwrap_or(0),
            row.cursor.enqueued,
            row.cursor.already,
            route.to,
            runner.outstanding.len()
        );
    } else if request.restart {
        eprintln!("backfill {}: starting over (--restart)", route.name);
    }
    eprintln!(
        "backfill {}: {total} deal(s) of {} match ({what}; counted with one list request); at most {} queued at a time",
        route.name, route.from, request.window
    );
    let outcome = runner
        .scan_and_queue(&reader, selection.scan(dialect), request, stop)
        .await;
    let scanned = match outcome {
        Ok(scanned) => scanned,
        Err(error) => {
            let _ = store
                .end_backfill(&route.name, &runner.holder, runner.cursor, false)
                .await;
            runner.progress.finish_line();
            return Err(error);
        }
    };
    if scanned {
        runner.drain(stop).await?;
    }
    let finished = scanned && runner.outstanding.is_empty();
    store
        .end_backfill(&route.name, &runner.holder, runner.cursor, finished)
        .await?;
    let handled = runner.handled();
    runner
        .progress
        .show_last(&runner.counts, handled, runner.outstanding.len());
    if let Some(signal) = stop_signal(stop) {
        return Err(runner.stopped(signal, request).into());
    }
    Ok(Summary {
        total,
        counts: runner.counts,
        would_queue: Vec::new(),
    })
}

/// The number of matching deals: one list request (`total`, ids only).
async fn count(
    reader: &b24_client::Client,
    dialect: Dialect,
    selection: &Selection,
) -> Result<u64, b24_client::Error> {
    let (method, params) = match dialect {
        Dialect::Item => (
            "crm.item.list",
            json!({"entityTypeId": 2, "filter": selection.filter(dialect), "select": ["id"], "start": 0}),
        ),
        Dialect::Legacy => (
            "crm.deal.list",
            json!({"filter": selection.filter(dialect), "select": ["ID"], "start": 0}),
        ),
    };
    let response = reader.call(method, &params).await?;
    Ok(response.total.unwrap_or_else(|| {
        let list = match dialect {
            Dialect::Item => &response.result["items"],
            Dialect::Legacy => &response.result,
        };
        list.as_array().map_or(0, |a| a.len() as u64)
    }))
}

async fn already_linked(store: &Store, route: &Route, deal: i64) -> anyhow::Result<bool> {
    let key = LinkKey {
        kind: LinkKind::Deal,
        source_portal: &route.from,
        source_id: deal,
        target_portal: &route.to,
    };
    Ok(store
        .link(&key)
        .await?
        .is_some_and(|l| l.target_id.is_some()))
}

async fn dry_run(
    parts: &Parts,
    route: &Route,
    reader: &b24_client::Client,
    dialect: Dialect,
    selection: &Selection,
    total: u64,
    request: &Request,
) -> anyhow::Result<Summary> {
    let mut scan = selection.scan(dialect);
    let mut summary = Summary {
        total,
        ..Summary::default()
    };
    let mut queued = 0u64;
    while let Some(records) = scan
        .next_chunk(reader)
        .await
        .map_err(|e| transfer_error(&format!("reading the deals of {}", route.from), e))?
    {
        for record in &records {
            let Some(id) = id_of(record.get("id").or_else(|| record.get("ID"))) else {
                continue;
            };
            if !request.update && already_linked(&parts.store, route, id).await? {
                summary.counts.already += 1;
                continue;
            }
            queued += 1;
            if summary.would_queue.len() < SHOWN_IDS {
                summary.would_queue.push(id);
            }
        }
        if scan.is_finished() {
            break;
        }
    }
    summary.counts.enqueued = queued;
    let ids: Vec<String> = summary.would_queue.iter().map(i64::to_string).collect();
    println!(
        "route {}: would queue {queued} of {total} matching deal(s) ({}); {} already on {}; nothing written (--dry-run)",
        route.name,
        selection.describe(),
        summary.counts.already,
        route.to
    );
    if !ids.is_empty() {
        println!(
            "first ids: {}{}",
            ids.join(", "),
            if queued as usize > ids.len() {
                ", ..."
            } else {
                ""
            }
        );
    }
    Ok(summary)
}

/// A running backfill: its cursor, its jobs in the queue, its counts.
struct Runner<'a> {
    store: &'a Store,
    route: &'a Route,
    holder: String,
    cursor: BackfillCursor,
    /// Jobs this backfill queued (or found queued) that have not ended.
    outstanding: BTreeSet<i64>,
    counts: Counts,
    progress: Progress,
    last_finish: Instant,
    last_save: Instant,
    stall_after: Duration,
    stall_said: bool,
}

impl Runner<'_> {
    /// Scans and queues until the list ends (`true`) or a stop (`false`).
    async fn scan_and_queue(
        &mut self,
        reader: &b24_client::Client,
        scan: IdScan,
        request: &Request,
        stop: &StopFlag,
    ) -> anyhow::Result<bool> {
        let mut scan = scan.after(self.cursor.last_id);
        loop {
            if stop_signal(stop).is_some() {
                return Ok(false);
            }
            let records = tokio::select! {
                chunk = scan.next_chunk(reader) => chunk.map_err(|e| {
                    transfer_error(&format!("reading the deals of {}", self.route.from), e)
                })?,
                _ = wait_for_stop(stop) => return Ok(false),
            };
            let Some(records) = records else {
                return Ok(true);
            };
            for record in &records {
                let Some(id) = id_of(record.get("id").or_else(|| record.get("ID"))) else {
                    continue;
                };
                if self.cursor.last_id.is_some_and(|last| id <= last) {
                    continue;
                }
                while self.outstanding.len() >= request.window {
                    if stop_signal(stop).is_some() {
                        return Ok(false);
                    }
                    nap(POLL, stop).await;
                    self.poll().await?;
                }
                if stop_signal(stop).is_some() {
                    return Ok(false);
                }
                self.handle(id, request.update).await?;
                self.progress
                    .maybe_show(&self.counts, self.handled(), self.outstanding.len());
            }
            self.poll().await?;
            if scan.is_finished() {
                return Ok(true);
            }
        }
    }

    /// Queues one deal, or counts it as already on the target.
    async fn handle(&mut self, id: i64, update: bool) -> anyhow::Result<()> {
        let mut next = self.cursor;
        next.last_id = Some(id);
        if !update && already_linked(self.store, self.route, id).await? {
            next.already += 1;
            self.cursor = next;
            self.counts.already += 1;
            if self.last_save.elapsed() > Duration::from_secs(2) {
                self.save().await?;
            }
            return Ok(());
        }
        next.enqueued += 1;
        let queued = self
            .store
            .backfill_enqueue(
                &self.route.name,
                &self.holder,
                &self.route.from,
                id,
                next,
                LEASE,
            )
            .await?;
        let Some(queued) = queued else {
            return Err(self.lost());
        };
        self.cursor = next;
        self.last_save = Instant::now();
        self.counts.enqueued += 1;
        self.outstanding.insert(queued.job_id);
        Ok(())
    }

    fn lost(&self) -> anyhow::Error {
        anyhow::anyhow!(
            "the backfill of route `{}` was taken over by another process (this one's lease lapsed: was it paused?); this one stops, the other continues",
            self.route.name
        )
    }

    async fn save(&mut self) -> anyhow::Result<()> {
        if !self
            .store
            .save_backfill(&self.route.name, &self.holder, self.cursor, LEASE)
            .await?
        {
            return Err(self.lost());
        }
        self.last_save = Instant::now();
        Ok(())
    }

    /// Deals handled so far, over every run: skipped ones and jobs ended.
    fn handled(&self) -> u64 {
        self.cursor.already
            + self
                .cursor
                .enqueued
                .saturating_sub(self.outstanding.len() as u64)
    }

    /// Looks at the outstanding jobs: counts the ended ones, renews the
    /// lease, says so when nothing moves.
    async fn poll(&mut self) -> anyhow::Result<()> {
        if !self.outstanding.is_empty() {
            let ids: Vec<i64> = self.outstanding.iter().copied().collect();
            let states = self.store.job_states(&ids).await?;
            let mut seen = BTreeSet::new();
            for (id, state) in states {
                seen.insert(id);
                let ended = match state {
                    JobState::Pending | JobState::Running => false,
                    JobState::Done => {
                        self.counts.transferred += 1;
                        true
                    }
                    JobState::Skipped => {
                        self.counts.skipped += 1;
                        true
                    }
                    JobState::Failed => {
                        self.counts.failed += 1;
                        true
                    }
                };
                if ended {
                    self.outstanding.remove(&id);
                    self.last_finish = Instant::now();
                    self.stall_said = false;
                }
            }
            // Jobs no longer in the store (a store restored meanwhile).
            self.outstanding.retain(|id| seen.contains(id));
        }
        if self.last_save.elapsed() > LEASE / 6 {
            self.save().await?;
        }
        if !self.outstanding.is_empty()
            && !self.stall_said
            && self.last_finish.elapsed() >= self.stall_after
        {
            self.progress.note(&format!(
                "no job finished for {} s: is `b24-relay serve` running on this store?",
                self.stall_after.as_secs()
            ));
            self.stall_said = true;
        }
        self.progress
            .maybe_show(&self.counts, self.handled(), self.outstanding.len());
        Ok(())
    }

    /// Waits for the queued jobs to end (or a stop).
    async fn drain(&mut self, stop: &StopFlag) -> anyhow::Result<()> {
        while !self.outstanding.is_empty() && stop_signal(stop).is_none() {
            nap(POLL, stop).await;
            self.poll().await?;
        }
        Ok(())
    }

    fn stopped(&self, signal: i32, request: &Request) -> Stopped {
        let name = if signal == 2 { "SIGINT" } else { "SIGTERM" };
        let mut command = format!("b24-relay backfill --route {}", request.route);
        for stage in &request.stages {
            command.push_str(&format!(" --stage {stage}"));
        }
        if let Some(since) = &request.since {
            command.push_str(&format!(" --since {since}"));
        }
        Stopped {
            signal,
            message: format!(
                "backfill {}: stopped by {name} after deal {} ({} queued, {} already on {}); the {} job(s) already queued stay and `serve` transfers them; to resume, run the same command again: {command} --config ...",
                request.route,
                self.cursor.last_id.unwrap_or(0),
                self.cursor.enqueued,
                self.cursor.already,
                self.route.to,
                self.outstanding.len()
            ),
        }
    }
}

async fn wait_for_stop(stop: &StopFlag) {
    while stop_signal(stop).is_none() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_takes_a_date_or_an_rfc3339_time() {
        assert_eq!(parse_since("2024-03-01").unwrap(), "2024-03-01T00:00:00");
        assert_eq!(
            parse_since("2024-03-01T09:30:00+03:00").unwrap(),
            "2024-03-01T09:30:00+03:00"
        );
        assert_eq!(
            parse_since("2024-03-01 09:30:00.5Z").unwrap(),
            "2024-03-01T09:30:00.5Z"
        );
        for bad in [
            "",
            "01.03.2024",
            "2024-13-01",
            "2024-03-01T25:00:00Z",
            "2024-03-01T09:30",
            "2024-03-01T09:30:00",
            "yesterday",
        ] {
            assert!(parse_since(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_dead_holder_of_this_host_is_recognised() {
        assert!(!dead_local_holder(&holder_name()));
        assert!(dead_local_holder(&format!("{}/4000000000", host_name())));
        assert!(!dead_local_holder("another-host/4000000000"));
        assert!(!dead_local_holder("garbage"));
    }
}
