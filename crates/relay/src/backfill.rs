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
mod runner;
mod selection;
mod stop;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::app::Parts;
use crate::config::Route;
use crate::portals::id_of;
use crate::store::{BackfillStart, LinkKey, LinkKind, Store};
use crate::transfer::{Dialect, TransferError};

pub use progress::{Counts, Progress};
use runner::Runner;
pub use selection::{Selection, parse_since};
pub use stop::{StopFlag, Stopped, watch_signals};
use stop::{dead_local_holder, holder_name, stop_signal};

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

pub(super) fn transfer_error(context: &str, error: b24_client::Error) -> anyhow::Error {
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
        return dry_run(
            parts, &route, &reader, dialect, &selection, total, request, stop,
        )
        .await;
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

pub(super) async fn already_linked(
    store: &Store,
    route: &Route,
    deal: i64,
) -> anyhow::Result<bool> {
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

#[allow(clippy::too_many_arguments)]
async fn dry_run(
    parts: &Parts,
    route: &Route,
    reader: &b24_client::Client,
    dialect: Dialect,
    selection: &Selection,
    total: u64,
    request: &Request,
    stop: &StopFlag,
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
            if let Some(signal) = stop_signal(stop) {
                return Err(Stopped {
                    signal,
                    message: format!(
                        "backfill {}: dry run stopped; nothing was written",
                        route.name
                    ),
                }
                .into());
            }
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
