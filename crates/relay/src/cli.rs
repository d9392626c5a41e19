//! The command line: `serve`, `check`, `transfer`, `fields`, `jobs`, `app`.

use std::collections::BTreeSet;
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};

use crate::app::{Parts, Relay};
use crate::config::{Config, Route};
use crate::mapping::FieldCatalog;
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
        Command::Fields { config, route } => fields(load(&config)?, &route).await,
        Command::Jobs { config, action } => {
            let config = config.context("--config is required")?;
            jobs(load(&config)?, action).await
        }
        Command::App { config, action } => {
            let config = config.context("--config is required")?;
            crate::cli_app::run(load(&config)?, action).await
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

fn route_of<'a>(config: &'a Config, name: &str) -> anyhow::Result<&'a Route> {
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
    match parts.transfer.run(&portal, deal, true).await {
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

async fn fields(config: Config, route_name: &str) -> anyhow::Result<()> {
    let route = route_of(&config, route_name)?.clone();
    let parts = Parts::open(config).await?;
    let portal = |name: &str| {
        parts
            .transfer
            .portals
            .get(name)
            .with_context(|| format!("portal {name} is not configured"))
    };
    let ttl = parts.config.field_cache_ttl;
    let source = portal(&route.from)?.deal_catalog(ttl, true).await?;
    let target = portal(&route.to)?.deal_catalog(ttl, true).await?;
    println!(
        "{:<28} {:<14} | {:<28} {:<14}",
        route.from, "type", route.to, "type"
    );
    let names: BTreeSet<&String> = source.keys().chain(target.keys()).collect();
    for name in names {
        let side = |c: &FieldCatalog| {
            c.get(name)
                .map(|i| (format!("{name} ({})", i.title), i.kind.clone()))
                .unwrap_or_default()
        };
        let (s, st) = side(&source);
        let (t, tt) = side(&target);
        println!("{s:<28} {st:<14} | {t:<28} {tt:<14}");
    }
    println!("\n# suggested mapping (same name or same title, writable on the target)");
    let mut suggested = Vec::new();
    for (name, info) in source.iter().filter(|(_, i)| !i.read_only) {
        let found = target.get_key_value(name).or_else(|| {
            target
                .iter()
                .find(|(_, t)| !info.title.is_empty() && t.title == info.title)
        });
        if let Some((target_name, target_info)) = found.filter(|(_, t)| !t.read_only) {
            suggested.push(format!("{name} = \"{target_name}\""));
            if target_info.kind == "enumeration" {
                println!("values.{target_name} = {{ match = \"label\" }}");
                for (id, label) in &info.options {
                    let matched = target_info
                        .options
                        .iter()
                        .find(|(_, l)| l.trim().eq_ignore_ascii_case(label.trim()));
                    match matched {
                        Some((tid, _)) => println!("#   {id} \"{label}\" -> {tid}"),
                        None => println!("#   {id} \"{label}\" -> NO MATCH: add a table entry"),
                    }
                }
            }
        }
    }
    println!("fields = {{ {} }}", suggested.join(", "));
    Ok(())
}
