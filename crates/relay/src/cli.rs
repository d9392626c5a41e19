//! The command line: `serve`, `check`, `transfer`, `fields`, `jobs`, `app`.

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};

use crate::app::{Parts, Relay};
use crate::config::{Config, Route};
use crate::store::{Job, JobState};
use crate::transfer::{RouteOutcome, Transferred};

#[derive(Debug, Parser)]
#[command(
    name = "b24-relay",
    version = concat!(env!("CARGO_PKG_VERSION"), " (", env!("B24_GIT_REVISION"), ")"),
    about = "Transfers deals between Bitrix24 portals, exactly once"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run intake, workers and metrics.
    Serve {
        #[arg(long)]
        config: PathBuf,
    },
    /// Check credentials, scopes, methods and the mapping against live fields.
    Check {
        #[arg(long)]
        config: PathBuf,
        /// Only validate the configuration and load its secrets; do not
        /// contact the portals (for CI, packaging and config management).
        #[arg(long)]
        offline: bool,
    },
    /// Queue one deal for transfer, or show what would be written (--dry-run).
    Transfer {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        route: String,
        #[arg(long)]
        deal: i64,
        #[arg(long)]
        dry_run: bool,
    },
    /// Both portals' deal fields and list options side by side, and a suggested mapping.
    Fields {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        route: String,
    },
    /// List, show and replay jobs.
    Jobs {
        #[arg(long, global = true)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        action: JobsAction,
    },
    /// Application mode: the "Transfer deal" rule of the local application.
    App {
        #[arg(long, global = true)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        action: crate::cli_app::AppAction,
    },
    /// The link table (source record → target record).
    Links {
        #[arg(long, global = true)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        action: LinksAction,
    },
}

#[derive(Debug, Subcommand)]
pub enum LinksAction {
    /// Rebuild the links of a route from the target portal's records
    /// (originatorId/originId), after the store was lost or restored from
    /// an old backup. Safe beside a running server; never creates records.
    Rebuild {
        #[arg(long)]
        route: String,
        /// Only report what would be linked.
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum JobsAction {
    List {
        #[arg(long)]
        state: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    Show {
        id: i64,
    },
    /// Queue a finished or failed job again (after fixing its cause).
    Replay {
        id: Option<i64>,
        #[arg(long)]
        failed: bool,
    },
}

fn load(path: &std::path::Path) -> anyhow::Result<Config> {
    Config::load(path).with_context(|| format!("configuration {}", path.display()))
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve { config } => {
            let relay = Relay::start(load(&config)?).await?;
            wait_for_signal().await;
            tracing::info!("stopping");
            relay.shutdown().await;
            Ok(())
        }
        Command::Check {
            config,
            offline: true,
        } => {
            let loaded = load(&config)?;
            println!(
                "{}: valid; {} portal(s), {} route(s); portals not contacted (--offline)",
                config.display(),
                loaded.portals.len(),
                loaded.routes.len()
            );
            Ok(())
        }
        Command::Check { config, .. } => crate::cli_check::check(load(&config)?).await,
        Command::Transfer {
            config,
            route,
            deal,
            dry_run,
        } => transfer(load(&config)?, &route, deal, dry_run).await,
        Command::Fields { config, route } => {
            crate::cli_fields::fields(load(&config)?, &route).await
        }
        Command::Jobs { config, action } => {
            let config = config.context("--config is required")?;
            jobs(load(&config)?, action).await
        }
        Command::App { config, action } => {
            let config = config.context("--config is required")?;
            crate::cli_app::run(load(&config)?, action).await
        }
        Command::Links {
            config,
            action: LinksAction::Rebuild { route, dry_run },
        } => {
            let config = config.context("--config is required")?;
            let config = load(&config)?;
            let route = route_of(&config, &route)?.clone();
            let parts = Parts::open(config).await?;
            let report = crate::links::rebuild(&parts.transfer, &route, dry_run)
                .await
                .map_err(|e| anyhow::anyhow!("links rebuild: {}", e.detailed()))?;
            let verb = if dry_run { "would rebuild" } else { "rebuilt" };
            println!("route {}: {verb}: {report}", route.name);
            Ok(())
        }
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
        "job {} [{}] {} deal {} via {} attempts {}{}{}",
        job.id,
        job.state.as_str(),
        job.portal,
        job.deal_id,
        job.trigger,
        job.attempts,
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
        JobsAction::List { state, limit } => {
            let state = match state {
                Some(text) => Some(JobState::parse(&text).with_context(|| {
                    format!("unknown state `{text}`; use pending, running, done, skipped or failed")
                })?),
                None => None,
            };
            store
                .jobs(state, limit)
                .await?
                .iter()
                .map(show_job)
                .collect()
        }
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
        JobsAction::Replay { .. } => bail!("give a job id or --failed, not both"),
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
