//! Reading a whole SQLite store as one snapshot, for `store copy` (a read
//! transaction in WAL mode sees one moment, whatever `serve` writes meanwhile).

use b24_client::{Secret, TokenPair};
use rusqlite::Connection;

use super::copy::{CopiedFileRow, JobRow, LinkRow, RuleCallRow, Snapshot};
use super::{AppInstall, Attempt, Job, JobState, LinkKind, StoreError};

pub(super) fn kind_of(text: &str) -> LinkKind {
    match text {
        "contact" => LinkKind::Contact,
        "company" => LinkKind::Company,
        _ => LinkKind::Deal,
    }
}

pub(super) fn export(c: &Connection) -> Result<Snapshot, StoreError> {
    let tx = c.unchecked_transaction()?;
    let mut snapshot = Snapshot::default();
    {
        let mut rows = tx.prepare(
            "SELECT id, portal, deal_id, trigger, state, attempts, interruptions, coalesced,
                    created_at, updated_at, message, target_deal_id, next_run_at FROM jobs ORDER BY id",
        )?;
        let jobs = rows.query_map([], |row| {
            let state: String = row.get(4)?;
            Ok(JobRow {
                job: Job {
                    id: row.get(0)?,
                    portal: row.get(1)?,
                    deal_id: row.get(2)?,
                    trigger: row.get(3)?,
                    state: JobState::parse(&state).unwrap_or(JobState::Failed),
                    attempts: row.get(5)?,
                    interruptions: row.get(6)?,
                    coalesced: row.get(7)?,
                    created_at_ms: row.get(8)?,
                    updated_at_ms: row.get(9)?,
                    message: row.get(10)?,
                    target_deal_id: row.get(11)?,
                },
                next_run_at_ms: row.get(12)?,
            })
        })?;
        snapshot.jobs = jobs.collect::<Result<_, _>>()?;
    }
    {
        let mut rows = tx.prepare(
            "SELECT job_id, number, started_at, finished_at, outcome, message FROM attempts",
        )?;
        let attempts = rows.query_map([], |row| {
            Ok((
                row.get(0)?,
                Attempt {
                    number: row.get(1)?,
                    started_at_ms: row.get(2)?,
                    finished_at_ms: row.get(3)?,
                    outcome: row.get(4)?,
                    message: row.get(5)?,
                },
            ))
        })?;
        snapshot.attempts = attempts.collect::<Result<_, _>>()?;
    }
    {
        let mut rows = tx.prepare(
            "SELECT kind, source_portal, source_id, target_portal, target_id, synced_hash, updated_at
             FROM links",
        )?;
        let links = rows.query_map([], |row| {
            Ok(LinkRow {
                kind: kind_of(&row.get::<_, String>(0)?),
                source_portal: row.get(1)?,
                source_id: row.get(2)?,
                target_portal: row.get(3)?,
                target_id: row.get(4)?,
                synced_hash: row.get(5)?,
                updated_at_ms: row.get(6)?,
            })
        })?;
        snapshot.links = links.collect::<Result<_, _>>()?;
    }
    {
        let mut rows = tx.prepare(
            "SELECT source_portal, deal_id, target_portal, field, file_id FROM copied_files",
        )?;
        let files = rows.query_map([], |row| {
            Ok(CopiedFileRow {
                source_portal: row.get(0)?,
                deal_id: row.get(1)?,
                target_portal: row.get(2)?,
                field: row.get(3)?,
                file_id: row.get(4)?,
            })
        })?;
        snapshot.copied_files = files.collect::<Result<_, _>>()?;
    }
    {
        let mut rows = tx.prepare(
            "SELECT portal, client_endpoint, domain, member_id, scopes, application_token,
                    access_token, refresh_token, reinstall_reason, updated_at, server_endpoint
             FROM app_installs",
        )?;
        let installs = rows.query_map([], |row| {
            Ok((
                row.get::<_, String>(0)?,
                AppInstall {
                    client_endpoint: row.get(1)?,
                    domain: row.get(2)?,
                    member_id: row.get(3)?,
                    scopes: row.get(4)?,
                    application_token: Secret::new(row.get::<_, String>(5)?),
                    tokens: TokenPair {
                        access_token: Secret::new(row.get::<_, String>(6)?),
                        refresh_token: Secret::new(row.get::<_, String>(7)?),
                    },
                    reinstall_reason: row.get(8)?,
                    updated_at_ms: row.get(9)?,
                    server_endpoint: row.get(10)?,
                },
            ))
        })?;
        snapshot.installs = installs.collect::<Result<_, _>>()?;
    }
    {
        let mut rows = tx.prepare(
            "SELECT portal, job_id, deal_id, workflow_id, event_token, route, created_at,
                    answered_at, answer_error FROM rule_calls ORDER BY id",
        )?;
        let calls = rows.query_map([], |row| {
            Ok(RuleCallRow {
                portal: row.get(0)?,
                job_id: row.get(1)?,
                deal_id: row.get(2)?,
                workflow_id: row.get(3)?,
                event_token: row.get(4)?,
                route: row.get(5)?,
                created_at_ms: row.get(6)?,
                answered_at_ms: row.get(7)?,
                answer_error: row.get(8)?,
            })
        })?;
        snapshot.rule_calls = calls.collect::<Result<_, _>>()?;
    }
    tx.commit()?;
    Ok(snapshot)
}
