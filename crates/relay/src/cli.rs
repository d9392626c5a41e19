//! The command line: `serve`, `check`, `transfer`, `fields`, `jobs`, `app`.

use std::collections::BTreeSet;
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};

use crate::app::{Parts, Relay};
use crate::config::{Config, Route, ValueRule};
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
        Command::Check { config, .. } => check(load(&config)?).await,
        Command::Transfer {
            config,
            route,
            deal,
            dry_run,
        } => transfer(load(&config)?, &route, deal, dry_run).await,
        Command::Fields { config, route } => fields(load(&config)?, &route).await,
        Command::Jobs { config, action } => {
            let config = config.context("--config is required")?;
            jobs(load(&config)?, action)
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
pub fn jobs_output(config: Config, action: JobsAction) -> anyhow::Result<Vec<String>> {
    let parts = Parts::open(config)?;
    let store = &parts.store;
    Ok(match action {
        JobsAction::List { state, limit } => {
            let state = match state {
                Some(text) => Some(JobState::parse(&text).with_context(|| {
                    format!("unknown state `{text}`; use pending, running, done, skipped or failed")
                })?),
                None => None,
            };
            store.jobs(state, limit)?.iter().map(show_job).collect()
        }
        JobsAction::Show { id } => {
            let job = store.job(id)?.with_context(|| format!("no job {id}"))?;
            let mut lines = vec![show_job(&job)];
            for attempt in store.attempts(id)? {
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
            store.replay(id)?;
            vec![format!("job {id} queued again")]
        }
        JobsAction::Replay {
            id: None,
            failed: true,
        } => {
            let count = store.replay_failed()?;
            vec![format!("{count} failed deal(s) queued again")]
        }
        JobsAction::Replay { .. } => bail!("give a job id or --failed, not both"),
    })
}

fn jobs(config: Config, action: JobsAction) -> anyhow::Result<()> {
    for line in jobs_output(config, action)? {
        println!("{line}");
    }
    Ok(())
}

async fn transfer(config: Config, route: &str, deal: i64, dry_run: bool) -> anyhow::Result<()> {
    let portal = route_of(&config, route)?.from.clone();
    let parts = Parts::open(config)?;
    if !dry_run {
        // Through the queue, so the serving relay is the only writer.
        let queued = parts.store.enqueue(&portal, deal, "cli")?;
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

fn methods_for(config: &Config, portal: &str) -> Vec<&'static str> {
    let mut methods = BTreeSet::new();
    for route in config.routes.iter().filter(|r| r.from == portal) {
        methods.extend(["batch", "crm.item.get", "crm.status.list"]);
        if route.products {
            methods.insert("crm.item.productrow.list");
        }
        if route.writeback_comment {
            methods.insert("crm.timeline.comment.add");
        }
        if route.writeback_field.is_some() {
            methods.insert("crm.item.update");
        }
        if route.responsible.is_some() {
            methods.insert("user.get");
        }
        if !route.values.is_empty() {
            methods.insert("crm.item.fields");
        }
    }
    for route in config.routes.iter().filter(|r| r.to == portal) {
        methods.extend([
            "batch",
            "crm.item.add",
            "crm.item.update",
            "crm.item.list",
            "crm.status.list",
        ]);
        if route.products {
            methods.insert("crm.item.productrow.set");
        }
        if route.contact || route.company {
            methods.insert("crm.duplicate.findbycomm");
        }
        if route.responsible.is_some() {
            methods.insert("user.get");
        }
        if !route.values.is_empty() {
            methods.insert("crm.item.fields");
        }
    }
    methods.into_iter().collect()
}

/// Stage ids of a deal pipeline (`crm.status.list`, `DEAL_STAGE[_N]`).
async fn pipeline_stages(
    portal: &crate::portals::PortalHandle,
    category: i64,
) -> Result<BTreeSet<String>, b24_client::Error> {
    let entity = match category {
        0 => "DEAL_STAGE".to_owned(),
        n => format!("DEAL_STAGE_{n}"),
    };
    let response = portal
        .client
        .call(
            "crm.status.list",
            &serde_json::json!({"filter": {"ENTITY_ID": entity}}),
        )
        .await?;
    Ok(response
        .result
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|status| status["STATUS_ID"].as_str().map(str::to_owned))
        .collect())
}

/// The deprecated method a box without `crm.item.*` is served with.
fn legacy_twin(method: &str) -> Option<&'static str> {
    Some(match method {
        "crm.item.get" => "crm.deal.get",
        "crm.item.add" => "crm.deal.add",
        "crm.item.update" => "crm.deal.update",
        "crm.item.list" => "crm.deal.list",
        "crm.item.fields" => "crm.deal.fields",
        "crm.item.productrow.list" => "crm.deal.productrows.get",
        "crm.item.productrow.set" => "crm.deal.productrows.set",
        _ => return None,
    })
}

/// The relay needs a `crm.item.*` method or its `crm.deal.*` twin: keeps
/// whichever is usable (the item one when both are), so that only real gaps
/// are reported.
fn accept_legacy_twins(report: &mut b24_client::CheckReport) {
    let usable = |report: &b24_client::CheckReport, method: &str| {
        report
            .methods
            .iter()
            .any(|m| m.method == method && m.status == b24_client::MethodStatus::Available)
    };
    let mut dropped: BTreeSet<String> = BTreeSet::new();
    for check in &report.methods {
        if let Some(twin) = legacy_twin(&check.method) {
            let keep_item = usable(report, &check.method) || !usable(report, twin);
            dropped.insert(if keep_item {
                twin.to_owned()
            } else {
                check.method.clone()
            });
        }
    }
    report
        .methods
        .retain(|m| !dropped.contains(m.method.as_str()));
}

/// Problems of a route's mapping against the portals' live deal fields.
pub fn mapping_problems(
    route: &Route,
    source: &FieldCatalog,
    target: &FieldCatalog,
) -> Vec<String> {
    let mut problems = Vec::new();
    for (from, to) in &route.fields {
        if !source.contains_key(from) {
            problems.push(format!(
                "route {}: source field {from} does not exist on {}",
                route.name, route.from
            ));
        }
        match target.get(to) {
            None => problems.push(format!(
                "route {}: target field {to} does not exist on {}",
                route.name, route.to
            )),
            Some(info) if info.read_only => problems.push(format!(
                "route {}: target field {to} is read-only",
                route.name
            )),
            Some(_) => {}
        }
    }
    for (field, rule) in &route.values {
        let Some(info) = target.get(field) else {
            continue;
        };
        if let ValueRule::Table(table) = rule {
            for (from, to) in table {
                if !info.options.iter().any(|(id, _)| id == to) {
                    problems.push(format!(
                        "route {}: values.{field}: \"{from}\" maps to {to}, which is not an option of {field} on {}",
                        route.name, route.to
                    ));
                }
            }
        }
    }
    for field in route.files.iter().chain(route.writeback_field.iter()) {
        if !source.contains_key(field) {
            problems.push(format!(
                "route {}: field {field} does not exist on {}",
                route.name, route.from
            ));
        }
    }
    for field in route.constants.keys() {
        if !target.contains_key(field) {
            problems.push(format!(
                "route {}: constant field {field} does not exist on {}",
                route.name, route.to
            ));
        }
    }
    problems
}

async fn check(config: Config) -> anyhow::Result<()> {
    let parts = Parts::open(config)?;
    let config = &parts.config;
    let mut problems = Vec::new();
    for (name, portal) in parts.transfer.portals.iter() {
        let mut methods = methods_for(config, name);
        methods.extend(
            methods
                .iter()
                .filter_map(|m| legacy_twin(m))
                .collect::<Vec<_>>(),
        );
        match portal.client.check(&methods).await {
            Ok(mut report) => {
                accept_legacy_twins(&mut report);
                println!("{name}: {report}");
                problems.extend(
                    report
                        .problems()
                        .into_iter()
                        .map(|p| format!("{name}: {p}")),
                );
            }
            Err(error) => problems.push(format!("{name}: {error}")),
        }
    }
    problems.extend(crate::cli_app::check_apps(&parts).await);
    let ttl = config.field_cache_ttl;
    for route in &config.routes {
        let (Some(from), Some(to)) = (
            parts.transfer.portals.get(&route.from),
            parts.transfer.portals.get(&route.to),
        ) else {
            continue;
        };
        match (
            from.deal_catalog(ttl, true).await,
            to.deal_catalog(ttl, true).await,
        ) {
            (Ok(source), Ok(target)) => problems.extend(mapping_problems(route, &source, &target)),
            (Err(error), _) | (_, Err(error)) => problems.push(format!(
                "route {}: reading deal fields: {error}",
                route.name
            )),
        }
        let target_stages: Vec<&String> = route
            .target_stage
            .iter()
            .chain(route.stage_table.values())
            .collect();
        let checks = [
            (
                from,
                route.when_category,
                route.when_stages.iter().collect::<Vec<_>>(),
                &route.from,
            ),
            (to, Some(route.target_category), target_stages, &route.to),
        ];
        for (portal, category, stages, portal_name) in checks {
            let Some(category) = category.filter(|_| !stages.is_empty()) else {
                continue;
            };
            match pipeline_stages(portal, category).await {
                Ok(known) => problems
                    .extend(stages.iter().filter(|s| !known.contains(**s)).map(|stage| {
                    format!(
                        "route {}: stage {stage} is not in pipeline {category} on {portal_name}",
                        route.name
                    )
                })),
                Err(error) => problems.push(format!(
                    "route {}: reading the stages of pipeline {category} on {portal_name}: {error}",
                    route.name
                )),
            }
        }
    }
    if problems.is_empty() {
        println!("everything the routes need is there");
        return Ok(());
    }
    for problem in &problems {
        println!("PROBLEM {problem}");
    }
    bail!("{} problem(s) found", problems.len())
}

async fn fields(config: Config, route_name: &str) -> anyhow::Result<()> {
    let route = route_of(&config, route_name)?.clone();
    let parts = Parts::open(config)?;
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

#[cfg(test)]
mod tests {
    use b24_client::{CheckReport, MethodCheck, MethodStatus};

    use super::*;

    fn report(methods: &[(&str, MethodStatus)]) -> CheckReport {
        CheckReport {
            portal: "box.test".into(),
            granted_scopes: vec!["crm".into()],
            methods: methods
                .iter()
                .map(|(method, status)| MethodCheck {
                    method: (*method).into(),
                    status: status.clone(),
                })
                .collect(),
            used_legacy_methods: false,
        }
    }

    #[test]
    fn a_crm_deal_twin_stands_in_for_a_missing_crm_item_method() {
        use MethodStatus::{Available, Missing};
        let mut old_box = report(&[
            ("crm.item.add", Missing),
            ("crm.deal.add", Available),
            ("batch", Available),
        ]);
        accept_legacy_twins(&mut old_box);
        assert!(old_box.is_ok(), "{:?}", old_box.problems());
        assert_eq!(old_box.methods.len(), 2);

        let mut new_box = report(&[("crm.item.add", Available), ("crm.deal.add", Missing)]);
        accept_legacy_twins(&mut new_box);
        assert!(new_box.is_ok());

        let mut neither = report(&[("crm.item.add", Missing), ("crm.deal.add", Missing)]);
        accept_legacy_twins(&mut neither);
        assert_eq!(neither.problems().len(), 1);
        assert!(neither.problems()[0].starts_with("crm.item.add"));
    }
}
