//! `b24-relay store copy`: everything of one store into another (SQLite →
//! PostgreSQL, to grow from one box to replicas), then a count check.
//!
//! The source is read as one consistent snapshot, so a `serve` may keep
//! taking requests on it meanwhile; what arrives after the snapshot is not
//! in this copy. Copying again is safe and copies the rest: each copied job
//! is remembered with its source id (`copied_jobs`), so a second run updates
//! instead of duplicating, and a waiting job merges into the destination's
//! waiting job for the same deal (the destination's replicas may already be
//! serving). Party claims and expected echoes are short-lived and are not
//! copied; rate budgets and the replica list neither. Backfill cursors are
//! not copied either: a cursor is only valid with the jobs it queued, and a
//! copied job is a new job of the destination; `backfill` run again on the
//! destination scans from the start and skips every deal already linked
//! (links are copied), so nothing is moved twice and nothing is missed.

use super::{AppInstall, Attempt, Job, JobState, LinkKind, StoreError};

/// One job with what a copy needs beyond [`Job`].
#[derive(Debug, Clone)]
pub struct JobRow {
    pub job: Job,
    pub next_run_at_ms: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LinkRow {
    pub kind: LinkKind,
    pub source_portal: String,
    pub source_id: i64,
    pub target_portal: String,
    pub target_id: Option<i64>,
    pub synced_hash: Option<String>,
    pub updated_at_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CopiedFileRow {
    pub source_portal: String,
    pub deal_id: i64,
    pub target_portal: String,
    pub field: String,
    pub file_id: i64,
}

#[derive(Clone)]
pub struct RuleCallRow {
    pub portal: String,
    pub job_id: i64,
    pub deal_id: i64,
    pub workflow_id: String,
    pub event_token: String,
    pub route: String,
    pub created_at_ms: i64,
    pub answered_at_ms: Option<i64>,
    pub answer_error: Option<String>,
}

/// Everything a store holds that outlives a transfer.
#[derive(Default)]
pub struct Snapshot {
    pub jobs: Vec<JobRow>,
    pub attempts: Vec<(i64, Attempt)>,
    pub links: Vec<LinkRow>,
    pub copied_files: Vec<CopiedFileRow>,
    pub installs: Vec<(String, AppInstall)>,
    pub rule_calls: Vec<RuleCallRow>,
}

/// What one copy did, table by table.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct CopyReport {
    pub jobs_inserted: u64,
    pub jobs_updated: u64,
    /// Waiting source jobs merged into a waiting destination job.
    pub jobs_merged: u64,
    pub attempts: u64,
    pub links: u64,
    /// Links whose target differs between the stores: the destination's is
    /// kept, and each is listed for a person to look at.
    pub link_conflicts: Vec<String>,
    pub copied_files: u64,
    pub installs: u64,
    pub rule_calls: u64,
    /// Source job id → destination job id, for every job of the source.
    pub job_map: std::collections::HashMap<i64, i64>,
    /// Source jobs that went into a waiting destination job.
    pub merged: std::collections::HashSet<i64>,
}

/// The count check: every source row is in the destination.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckLine {
    pub table: &'static str,
    pub source: u64,
    pub found: u64,
}

impl CheckLine {
    pub fn complete(&self) -> bool {
        self.found == self.source
    }
}

/// Compares `source` with `destination` after a copy whose job map
/// (source id → destination id) is `copied`; `merged` are the source jobs
/// that went into a destination job waiting for the same deal (their
/// attempts stay with the source's history).
pub fn check(
    source: &Snapshot,
    destination: &Snapshot,
    copied: &std::collections::HashMap<i64, i64>,
    merged: &std::collections::HashSet<i64>,
) -> Vec<CheckLine> {
    use std::collections::HashSet;
    let dest_jobs: HashSet<i64> = destination.jobs.iter().map(|r| r.job.id).collect();
    let in_destination = |source_id: &i64| {
        copied
            .get(source_id)
            .is_some_and(|id| dest_jobs.contains(id))
    };
    let jobs_found = source
        .jobs
        .iter()
        .filter(|r| in_destination(&r.job.id))
        .count();
    let dest_attempts: HashSet<(i64, u32)> = destination
        .attempts
        .iter()
        .map(|(job, a)| (*job, a.number))
        .collect();
    let attempts: Vec<&(i64, Attempt)> = source
        .attempts
        .iter()
        .filter(|(job, _)| !merged.contains(job))
        .collect();
    let attempts_found = attempts
        .iter()
        .filter(|(job, a)| {
            copied
                .get(job)
                .is_some_and(|id| dest_attempts.contains(&(*id, a.number)))
        })
        .count();
    let link_key = |l: &LinkRow| {
        (
            l.kind,
            l.source_portal.clone(),
            l.source_id,
            l.target_portal.clone(),
        )
    };
    let dest_links: HashSet<_> = destination.links.iter().map(link_key).collect();
    let links_found = source
        .links
        .iter()
        .filter(|l| dest_links.contains(&link_key(l)))
        .count();
    let dest_files: HashSet<&CopiedFileRow> = destination.copied_files.iter().collect();
    let files_found = source
        .copied_files
        .iter()
        .filter(|f| dest_files.contains(f))
        .count();
    let dest_installs: HashSet<&str> = destination
        .installs
        .iter()
        .map(|(p, _)| p.as_str())
        .collect();
    let installs_found = source
        .installs
        .iter()
        .filter(|(p, _)| dest_installs.contains(p.as_str()))
        .count();
    let dest_calls: HashSet<&str> = destination
        .rule_calls
        .iter()
        .map(|c| c.event_token.as_str())
        .collect();
    let calls_found = source
        .rule_calls
        .iter()
        .filter(|c| dest_calls.contains(c.event_token.as_str()))
        .count();
    let line = |table, source: usize, found: usize| CheckLine {
        table,
        source: source as u64,
        found: found as u64,
    };
    vec![
        line("jobs", source.jobs.len(), jobs_found),
        line("attempts", attempts.len(), attempts_found),
        line("links", source.links.len(), links_found),
        line("copied files", source.copied_files.len(), files_found),
        line(
            "installed applications",
            source.installs.len(),
            installs_found,
        ),
        line("rule runs", source.rule_calls.len(), calls_found),
    ]
}

/// A running source job is copied as waiting: its transfer runs again on
/// the destination, which every step of a transfer allows.
pub(super) fn copied_state(state: JobState) -> JobState {
    match state {
        JobState::Running => JobState::Pending,
        other => other,
    }
}

pub(super) fn not_supported(what: &str) -> StoreError {
    StoreError::Unavailable(format!("store copy: {what} is not supported"))
}
