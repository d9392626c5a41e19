//! The command line: `serve`, `check`, `transfer`, `fields`, `jobs`, `app`, `store`, `links`, `backfill`.

use std::path::PathBuf;

use anyhow::{Context, bail};
use b24_cli_support::LogOptions;
use b24_cli_support::exit::UsageError;
use clap::{CommandFactory, Parser, Subcommand, ValueEnum};

use crate::app::{Parts, Relay};
use crate::config::{Config, Route};
use crate::store::{Job, JobState};
use crate::transfer::{RouteOutcome, Transferred};

const AFTER_LONG_HELP: &str = "\
Configuration:
  One TOML file for every command (--config, or B24_RELAY_CONFIG); every key is
  in the example, /usr/share/doc/b24-connect/examples/relay.example.toml
  (deploy/config/relay.example.toml in the source). Secrets are never inline:
  { file = \"/path\" } or { env = \"VAR\" }. An error names the file, line,
  column and key, and says what to write instead.

Exit codes:
  0  done (check: everything the routes need is there)
  1  the command ran and failed, or check found something missing (it prints what)
  2  usage or configuration error: nothing was done

Environment:
  B24_RELAY_CONFIG  the configuration file when --config is not given
  B24_LOG_FORMAT    text or json when --log-format is not given
  RUST_LOG          log level and filters (default: info)

Examples:
  b24-relay check --config /etc/b24-relay/relay.toml
  b24-relay serve --config /etc/b24-relay/relay.toml
  b24-relay jobs list --state failed --config /etc/b24-relay/relay.toml
  b24-relay jobs replay --failed --config /etc/b24-relay/relay.toml
  b24-relay backfill --route partner-to-esb --dry-run --config /etc/b24-relay/relay.toml

Run `b24-relay help COMMAND` (or COMMAND --help) for a command's details.";

const SERVE_HELP: &str = "\
Endpoints on `listen` (put b24-edge in front; only Bitrix24 calls these):
  POST /hook/event/PORTAL          outgoing-webhook events (ONCRMDEALUPDATE...)
  POST /hook/rule/PORTAL?secret=S  the built-in \"Webhook\" automation rule
  POST /app/install/PORTAL         the local application's install call
  POST /hook/app/PORTAL            runs of the application's \"Transfer deal\" rule
Each request is stored in the queue before it is answered (in milliseconds).

Endpoints on `metrics_listen` (plain HTTP, keep it local):
  /metrics  Prometheus metrics (b24_relay_*)   /healthz  200 while running

Signals:
  SIGTERM, SIGINT  stop taking requests, let running transfers finish, exit 0

One serve per SQLite store: a second serve on the same file refuses to start.
With [store] url = \"postgres://...\" any number of serve replicas share the
work (jobs claimed with leases; see `b24-relay store --help`).

Examples:
  b24-relay serve --config /etc/b24-relay/relay.toml
  b24-relay serve --config relay.toml --log-format json";

const CHECK_HELP: &str = "\
For every portal: the webhook answers, its scopes are granted, and every
method the routes need exists (method.get); then each route's fields, list
values and stages against the portals' own. Prints one line per problem with
what to do (\"grant the `user` scope to the incoming webhook of ...\").
Exit 0 when everything is there, 1 when something is missing.

Examples:
  b24-relay check --config /etc/b24-relay/relay.toml
  b24-relay check --offline --config relay.toml   # CI: the file and its secrets only";

const TRANSFER_HELP: &str = "\
Without --dry-run the deal is queued (job id printed) and the running
`serve` transfers it, exactly once like any event. With --dry-run nothing is
queued or written: the target fields the route would write are printed as JSON.

Examples:
  b24-relay transfer --route partner-to-esb --deal 4521 --dry-run --config relay.toml
  b24-relay transfer --route partner-to-esb --deal 4521 --config relay.toml";

const FIELDS_HELP: &str = "\
Reads both portals' deal fields (crm.item.fields) and prints them side by
side, then a suggested `fields = { ... }` and `values` tables for the route
(same name or same title, writable on the target; list options matched by
label), ready to paste into the configuration.

Example:
  b24-relay fields --route partner-to-esb --config relay.toml";

const JOBS_HELP: &str = "\
Each job is one source deal to transfer: its state, attempts, the target deal
and the last message. A failed job stopped on a permanent error (bad
credentials, a missing scope, a list value with no match): fix the cause,
then replay it. These commands may run beside `serve`.

Examples:
  b24-relay jobs list --state failed --config relay.toml
  b24-relay jobs show 42 --config relay.toml
  b24-relay jobs replay --failed --config relay.toml";

const APP_HELP: &str = "\
For portals with a [portal.NAME.app] section (a local application installed
with the relay's install URL; see the application-mode guide,
/usr/share/doc/b24-connect/application-mode.md). register is idempotent: it
adds the rule or updates it. These commands may run beside `serve`.

Examples:
  b24-relay app status --config relay.toml
  b24-relay app register --portal partner --config relay.toml";

const LINKS_HELP: &str = "\
After the store was lost, or restored from an old backup: reads the target
portal's deals, contacts and companies that carry the relay's
originatorId/originId and writes the links, so nothing already transferred
is created again. Reads only (ID-greater paging); may run beside `serve`.

Example:
  b24-relay links rebuild --route partner-to-esb --config relay.toml";

/// Transfers deals between Bitrix24 portals, exactly once.
#[derive(Debug, Parser)]
#[command(
    name = "b24-relay",
    version = env!("B24_VERSION"),
    about = "Transfers deals between Bitrix24 portals, exactly once",
    long_about = "Transfers CRM deals between Bitrix24 portals exactly once: events reach \
                  `serve` (behind b24-edge), are queued durably, and each deal is moved \
                  with its fields, product rows, contact, company and files, then \
                  reported back on the source deal.",
    after_long_help = AFTER_LONG_HELP,
    propagate_version = true
)]
pub struct Cli {
    /// The configuration file (TOML); required by every command.
    #[arg(
        long,
        short,
        global = true,
        value_name = "PATH",
        env = "B24_RELAY_CONFIG"
    )]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub log: LogOptions,
    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// Parses the command line. `--config` is global (it may follow any
    /// subcommand), so clap cannot require it itself; a missing one is
    /// reported the way clap reports a missing argument, with the usage.
    pub fn parse_args() -> Cli {
        let cli = Cli::parse();
        if cli.config.is_none() {
            Cli::command()
                .error(
                    clap::error::ErrorKind::MissingRequiredArgument,
                    "the following required argument was not provided:\n  --config <PATH>  \
                     (or set B24_RELAY_CONFIG)",
                )
                .exit();
        }
        cli
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run intake, the workers and the metrics endpoint until SIGTERM.
    #[command(after_long_help = SERVE_HELP)]
    Serve,
    /// Check credentials, scopes, methods and the mapping against the live portals.
    #[command(after_long_help = CHECK_HELP)]
    Check {
        /// Only validate the configuration and load its secrets; do not
        /// contact the portals (for CI, packaging and config management).
        #[arg(long)]
        offline: bool,
    },
    /// Queue one deal for transfer, or show what would be written (--dry-run).
    #[command(after_long_help = TRANSFER_HELP)]
    Transfer {
        /// The route (`[[route]] name`) that decides where the deal goes.
        #[arg(long, value_name = "NAME")]
        route: String,
        /// The source deal's id on the route's `from` portal.
        #[arg(long, value_name = "ID")]
        deal: i64,
        /// Read the deal and print the target fields the route would write;
        /// queue nothing, write nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Both portals' deal fields and list options side by side, and a suggested mapping.
    #[command(after_long_help = FIELDS_HELP)]
    Fields {
        /// The route whose two portals are compared.
        #[arg(long, value_name = "NAME")]
        route: String,
    },
    /// List, show and replay jobs (one per source deal to transfer).
    #[command(after_long_help = JOBS_HELP)]
    Jobs {
        #[command(subcommand)]
        action: JobsAction,
    },
    /// Application mode: the "Transfer deal" rule of the local application.
    #[command(after_long_help = APP_HELP)]
    App {
        #[command(subcommand)]
        action: crate::cli_app::AppAction,
    },
    /// The store: migrate its schema, show what it holds, copy another store into it.
    #[command(after_long_help = crate::cli_store::STORE_HELP)]
    Store {
        #[command(subcommand)]
        action: crate::cli_store::StoreAction,
    },
    /// The link table (source record → target record): rebuild it from the target portal.
    #[command(after_long_help = LINKS_HELP)]
    Links {
        #[command(subcommand)]
        action: LinksAction,
    },
    /// Move a route's existing source deals through the queue (an initial migration).
    #[command(after_long_help = crate::cli_backfill::BACKFILL_HELP)]
    Backfill(crate::cli_backfill::BackfillArgs),
}

#[derive(Debug, Subcommand)]
pub enum LinksAction {
    /// Rebuild a route's links from the target portal's records
    /// (originatorId/originId), after the store was lost or restored from
    /// an old backup. Safe beside a running server; never creates records.
    #[command(
        after_long_help = "Examples:\n  b24-relay links rebuild --route partner-to-esb --dry-run --config relay.toml\n  \
                           b24-relay links rebuild --route partner-to-esb --config relay.toml"
    )]
    Rebuild {
        /// The route (`[[route]] name`) whose target portal is read.
        #[arg(long, value_name = "NAME")]
        route: String,
        /// Only report what would be linked; write nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

/// A job state, as `jobs list --state` takes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StateArg {
    /// Waiting for a worker (new, or retrying after a transient error).
    Pending,
    /// Claimed by a worker now.
    Running,
    /// Transferred.
    Done,
    /// Not taken by any route (another stage or pipeline).
    Skipped,
    /// Stopped on a permanent error; see its message, then replay it.
    Failed,
}

impl From<StateArg> for JobState {
    fn from(state: StateArg) -> JobState {
        match state {
            StateArg::Pending => JobState::Pending,
            StateArg::Running => JobState::Running,
            StateArg::Done => JobState::Done,
            StateArg::Skipped => JobState::Skipped,
            StateArg::Failed => JobState::Failed,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum JobsAction {
    /// The most recent jobs, newest first, one line each.
    #[command(
        after_long_help = "Each line: job id, [state], portal, deal, what asked for it, attempts, \
                                 the target deal and the last message.\n\n\
                                 Examples:\n  b24-relay jobs list --state failed --config relay.toml\n  \
                                 b24-relay jobs list --limit 500 --config relay.toml"
    )]
    List {
        /// Only jobs in this state.
        #[arg(long, value_enum, value_name = "STATE")]
        state: Option<StateArg>,
        /// At most this many jobs.
        #[arg(long, value_name = "N", default_value_t = 50)]
        limit: u32,
    },
    /// One job with every attempt (duration, outcome, message).
    #[command(after_long_help = "Example:\n  b24-relay jobs show 42 --config relay.toml")]
    Show {
        /// The job id (`jobs list` shows it).
        #[arg(value_name = "ID")]
        id: i64,
    },
    /// Queue a finished or failed job again (after fixing its cause).
    #[command(
        after_long_help = "The running serve picks it up; a deal already on the target is \
                                 updated, never created twice.\n\n\
                                 Examples:\n  b24-relay jobs replay 42 --config relay.toml\n  \
                                 b24-relay jobs replay --failed --config relay.toml"
    )]
    Replay {
        /// The job to queue again.
        #[arg(
            value_name = "ID",
            required_unless_present = "failed",
            conflicts_with = "failed"
        )]
        id: Option<i64>,
        /// Queue every failed job again.
        #[arg(long)]
        failed: bool,
    },
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let path = cli
        .config
        .clone()
        .ok_or_else(|| UsageError("--config is required (or set B24_RELAY_CONFIG)".into()))?;
    // The error names the file, line and column itself.
    let config = Config::load(&path)?;
    match cli.command {
        Command::Serve => {
            let relay = Relay::start(config).await?;
            wait_for_signal().await;
            tracing::info!("stopping");
            relay.shutdown().await;
            Ok(())
        }
        Command::Check { offline: true } => {
            println!(
                "{}: valid; {} portal(s), {} route(s); portals not contacted (--offline)",
                path.display(),
                config.portals.len(),
                config.routes.len()
            );
            Ok(())
        }
        Command::Check { .. } => crate::cli_check::check(config).await,
        Command::Transfer {
            route,
            deal,
            dry_run,
        } => transfer(config, &route, deal, dry_run).await,
        Command::Fields { route } => crate::cli_fields::fields(config, &route).await,
        Command::Jobs { action } => jobs(config, action).await,
        Command::App { action } => crate::cli_app::run(config, action).await,
        Command::Store { action } => crate::cli_store::run(config, action).await,
        Command::Links {
            action: LinksAction::Rebuild { route, dry_run },
        } => links_rebuild(config, &route, dry_run).await,
        Command::Backfill(args) => crate::cli_backfill::run(config, args).await,
    }
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

pub(crate) fn route_of<'a>(config: &'a Config, name: &str) -> anyhow::Result<&'a Route> {
    config.route(name).with_context(|| {
        let known: Vec<&str> = config.routes.iter().map(|r| r.name.as_str()).collect();
        format!("no route `{name}`; configured: {}", known.join(", "))
    })
}

fn show_job(job: &Job) -> String {
    format!(
        "job {} [{}] {} deal {} via {} attempts {}{}{}{}",
        job.id,
        job.state.as_str(),
        job.portal,
        job.deal_id,
        job.trigger,
        job.attempts,
        if job.interruptions > 0 {
            format!(" interrupted {}", job.interruptions)
        } else {
            String::new()
        },
        job.target_deal_id
            .map(|t| format!(" target {t}"))
            .unwrap_or_default(),
        job.message
            .as_deref()
            .map(|m| format!(": {m}"))
            .unwrap_or_default(),
    )
}

/// `jobs list|show|replay`; returns what it printed (tests read it).
pub async fn jobs_output(config: Config, action: JobsAction) -> anyhow::Result<Vec<String>> {
    let parts = Parts::open(config).await?;
    let store = &parts.store;
    Ok(match action {
        JobsAction::List { state, limit } => store
            .jobs(state.map(JobState::from), limit)
            .await?
            .iter()
            .map(show_job)
            .collect(),
        JobsAction::Show { id } => {
            let job = store
                .job(id)
                .await?
                .with_context(|| format!("no job {id}"))?;
            let mut lines = vec![show_job(&job)];
            for attempt in store.attempts(id).await? {
                lines.push(format!(
                    "  attempt {} ({} ms): {}: {}",
                    attempt.number,
                    attempt.finished_at_ms - attempt.started_at_ms,
                    attempt.outcome,
                    attempt.message
                ));
            }
            lines
        }
        JobsAction::Replay {
            id: Some(id),
            failed: false,
        } => {
            store.replay(id).await?;
            vec![format!("job {id} queued again")]
        }
        JobsAction::Replay {
            id: None,
            failed: true,
        } => {
            let count = store.replay_failed().await?;
            vec![format!("{count} failed deal(s) queued again")]
        }
        JobsAction::Replay { .. } => {
            return Err(UsageError("give a job id or --failed, not both".into()).into());
        }
    })
}

async fn jobs(config: Config, action: JobsAction) -> anyhow::Result<()> {
    for line in jobs_output(config, action).await? {
        println!("{line}");
    }
    Ok(())
}

async fn transfer(config: Config, route: &str, deal: i64, dry_run: bool) -> anyhow::Result<()> {
    let portal = route_of(&config, route)?.from.clone();
    let parts = Parts::open(config).await?;
    if !dry_run {
        // Through the queue, so the serving relay is the only writer.
        let queued = parts.store.enqueue(&portal, deal, "cli").await?;
        println!(
            "deal {deal} queued as job {}{}; the running relay transfers it",
            queued.job_id,
            if queued.coalesced { " (merged)" } else { "" }
        );
        return Ok(());
    }
    match parts.transfer.run(&portal, deal, true, "cli-dry-run").await {
        Ok(Transferred::Skipped(reason)) => println!("would skip: {reason}"),
        Ok(Transferred::Routes(outcomes)) => {
            for outcome in outcomes.iter().filter(|o| o.route() == route) {
                if let RouteOutcome::Planned { fields, .. } = outcome {
                    println!("{}", serde_json::to_string_pretty(fields)?);
                }
            }
        }
        Err(error) => bail!("dry run failed: {error}"),
    }
    Ok(())
}

async fn links_rebuild(config: Config, route: &str, dry_run: bool) -> anyhow::Result<()> {
    let route = route_of(&config, route)?.clone();
    let parts = Parts::open(config).await?;
    let report = crate::links::rebuild(&parts.transfer, &route, dry_run)
        .await
        .map_err(|e| anyhow::anyhow!("links rebuild: {}", e.detailed()))?;
    let verb = if dry_run { "would rebuild" } else { "rebuilt" };
    println!("route {}: {verb}: {report}", route.name);
    Ok(())
}
