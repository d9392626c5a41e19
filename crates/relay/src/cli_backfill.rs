//! `b24-relay backfill --route NAME`: the arguments, and the run reported
//! for people (see [`crate::backfill`] for how it works).

use std::time::Duration;

use b24_cli_support::exit::UsageError;
use clap::Args;

use crate::app::Parts;
use crate::backfill::{self, Request, Selection};
use crate::config::Config;

pub const BACKFILL_HELP: &str = "\
Moves the deals already on a route's source portal (an initial migration):
each matching deal is queued like a live event, and the running `serve`
transfers it exactly once, with its fields, products, contact, company and
files. Run it on the host of a `serve` (or of one of its replicas): it only
reads the source portal and writes jobs to the store.

Which deals: the route's `when` (category and stages); --stage narrows the
stages, --since takes only deals created at or after a date. The total is
counted with one list request (`total` of crm.item.list, ids only); the
deals are then read in id order, 50 pages of 50 per request (\"ID greater
than the last\" paging), so 2 000 deals cost 2 requests.

Live before bulk: at most --window of the backfill's jobs wait or run at
once, more are queued as they finish, and every live event (a stage change,
a rule run) is taken by the workers before any backfill job.

Already moved: a deal the target already holds (a link in the store) is
skipped and counted as \"already there\"; --update queues it too (its target
deal is updated). A deal moved meanwhile by a live event is never created
twice: the transfer looks it up by originatorId/originId first.

Stop and resume: Ctrl-C or SIGTERM stops queueing, saves where it was and
exits 130 (Ctrl-C) or 143 (SIGTERM) with the command that resumes; the jobs
already queued stay and `serve` transfers them. The same command (same route
and filter) continues after the last deal queued, even after a kill -9;
--restart starts over. A second backfill of the same route refuses to start
while the first runs.

Progress: on stderr, a live bar on a terminal, one line every 10 s
otherwise: deals handled/total, transferred, already there, failed, jobs in
the queue, deals per minute and time left. At the standard limit (2 requests
per second per portal) expect about 60 deals per minute per source portal.
If no job finishes for 60 s while some wait it says so: is `serve` running?

Exit codes:
  0    every matching deal was handled (or nothing to move, or --dry-run)
  1    a portal or the store failed (run again to resume), or another
       backfill of the route is running
  2    usage error (unknown route, a stage the route does not take, a bad date)
  130  stopped by Ctrl-C; 143  stopped by SIGTERM (run again to resume)

Examples:
  b24-relay backfill --route partner-to-esb --dry-run --config relay.toml
  b24-relay backfill --route partner-to-esb --config relay.toml
  b24-relay backfill --route partner-to-esb --since 2024-01-01 --stage C2:PREPARATION --config relay.toml
  b24-relay backfill --route partner-to-esb --restart --window 500 --config relay.toml";

#[derive(Debug, Clone, Args)]
pub struct BackfillArgs {
    /// The route (`[[route]] name`) whose source deals are moved.
    #[arg(long, value_name = "NAME")]
    pub route: String,
    /// Only deals created at or after this: YYYY-MM-DD (midnight in the
    /// portal's time zone) or an RFC 3339 time (2024-03-01T09:00:00+03:00).
    #[arg(long, value_name = "DATE")]
    pub since: Option<String>,
    /// Only deals in this stage (repeatable; each must be one of the
    /// route's `when.stages`). Default: the route's stages.
    #[arg(long = "stage", value_name = "STAGE")]
    pub stages: Vec<String>,
    /// Count and list what would be queued (count and first ids); write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// The backfill's jobs waiting or running at most.
    #[arg(long, value_name = "N", default_value_t = 200,
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub window: u32,
    /// Start over from the first deal instead of resuming.
    #[arg(long)]
    pub restart: bool,
    /// Queue deals the target already holds too (their target deals are updated).
    #[arg(long)]
    pub update: bool,
    /// Seconds without a finished job (while some wait) before the hint
    /// that `serve` may not be running.
    #[arg(long, value_name = "SECONDS", default_value_t = 60, hide = true)]
    pub stall_after: u64,
    /// Seconds between progress lines when stderr is not a terminal.
    #[arg(long, value_name = "SECONDS", default_value_t = 10, hide = true)]
    pub progress_every: u64,
}

/// Runs the backfill; a signal ends it with [`backfill::Stopped`].
pub async fn run(config: Config, args: BackfillArgs) -> anyhow::Result<()> {
    // Everything the command line says is checked before the store is opened.
    let route = config.route(&args.route).cloned().ok_or_else(|| {
        let known: Vec<&str> = config.routes.iter().map(|r| r.name.as_str()).collect();
        UsageError(format!(
            "no route `{}`; configured: {}",
            args.route,
            known.join(", ")
        ))
    })?;
    Selection::of(&route, &args.stages, args.since.as_deref())?;
    let stop = backfill::watch_signals()?;
    let request = Request {
        route: args.route,
        since: args.since,
        stages: args.stages,
        dry_run: args.dry_run,
        window: args.window as usize,
        restart: args.restart,
        update: args.update,
        stall_after: Duration::from_secs(args.stall_after),
        progress_every: Duration::from_secs(args.progress_every.max(1)),
    };
    let parts = Parts::open(config).await?;
    let result = backfill::run(&parts, &request, &stop).await;
    parts.store.close().await;
    let summary = result?;
    if !request.dry_run && summary.total > 0 {
        let c = summary.counts;
        println!(
            "route {}: backfill done: {} deal(s) matched; {} queued this run ({} transferred, {} failed, {} skipped by the route), {} already on {}",
            route.name,
            summary.total,
            c.enqueued,
            c.transferred,
            c.failed,
            c.skipped,
            c.already,
            route.to
        );
        if c.failed > 0 {
            println!(
                "see them with `b24-relay jobs list --state failed`; fix the cause, then `b24-relay jobs replay --failed`"
            );
        }
    }
    Ok(())
}
