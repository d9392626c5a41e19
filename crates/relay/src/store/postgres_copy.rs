//! `store copy` on PostgreSQL: a snapshot of everything (one repeatable-read
//! transaction) and the import of another store's snapshot (one
//! transaction; see `copy` for the rules).

use b24_client::{Secret, TokenPair};
use tokio_postgres::IsolationLevel;

use super::copy::{
    CopiedFileRow, CopyReport, JobRow, LinkRow, RuleCallRow, Snapshot, copied_state,
};
use super::postgres::PgStore;
use super::sqlite_copy::kind_of;
use super::{AppInstall, Attempt, Job, JobState, StoreError};

const DEAL_LOCK: &str =
    "SELECT pg_advisory_xact_lock(hashtextextended($1::text || '/' || $2::bigint::text, 0))";

fn count(value: u32) -> i32 {
    i32::try_from(value).unwrap_or(i32::MAX)
}

impl PgStore {
    pub(super) async fn export(&self) -> Result<Snapshot, StoreError> {
        let mut client = self.client().await?;
        let tx = client
            .build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await?;
        let mut snapshot = Snapshot::default();
        for row in tx
            .query(
                "SELECT id, portal, deal_id, trigger, state, attempts, interruptions, coalesced,
                        created_at, updated_at, message, target_deal_id, next_run_at FROM jobs ORDER BY id",
                &[],
            )
            .await?
        {
            let state: String = row.get(4);
            let n = |i: usize| row.get::<_, i32>(i).max(0) as u32;
            snapshot.jobs.push(JobRow {
                job: Job {
                    id: row.get(0),
                    portal: row.get(1),
                    deal_id: row.get(2),
                    trigger: row.get(3),
                    state: JobState::parse(&state).unwrap_or(JobState::Failed),
                    attempts: n(5),
                    interruptions: n(6),
                    coalesced: n(7),
                    created_at_ms: row.get(8),
                    updated_at_ms: row.get(9),
                    message: row.get(10),
                    target_deal_id: row.get(11),
                },
                next_run_at_ms: row.get(12),
            });
        }
        for row in tx
            .query(
                "SELECT job_id, number, started_at, finished_at, outcome, message FROM attempts",
                &[],
            )
            .await?
        {
            snapshot.attempts.push((
                row.get(0),
                Attempt {
                    number: row.get::<_, i32>(1).max(0) as u32,
                    started_at_ms: row.get(2),
                    finished_at_ms: row.get(3),
                    outcome: row.get(4),
                    message: row.get(5),
                },
            ));
        }
        for row in tx
            .query(
                "SELECT kind, source_portal, source_id, target_portal, target_id, synced_hash, updated_at
                 FROM links",
                &[],
            )
            .await?
        {
            snapshot.links.push(LinkRow {
                kind: kind_of(row.get(0)),
                source_portal: row.get(1),
                source_id: row.get(2),
                target_portal: row.get(3),
                target_id: row.get(4),
                synced_hash: row.get(5),
                updated_at_ms: row.get(6),
            });
        }
        for row in tx
            .query(
                "SELECT source_portal, deal_id, target_portal, field, file_id FROM copied_files",
                &[],
            )
            .await?
        {
            snapshot.copied_files.push(CopiedFileRow {
                source_portal: row.get(0),
                deal_id: row.get(1),
                target_portal: row.get(2),
                field: row.get(3),
                file_id: row.get(4),
            });
        }
        for row in tx
            .query(
                "SELECT portal, client_endpoint, domain, member_id, scopes, application_token,
                        access_token, refresh_token, reinstall_reason, updated_at, server_endpoint
                 FROM app_installs",
                &[],
            )
            .await?
        {
            snapshot.installs.push((
                row.get(0),
                AppInstall {
                    client_endpoint: row.get(1),
                    domain: row.get(2),
                    member_id: row.get(3),
                    scopes: row.get(4),
                    application_token: Secret::new(row.get::<_, String>(5)),
                    tokens: TokenPair {
                        access_token: Secret::new(row.get::<_, String>(6)),
                        refresh_token: Secret::new(row.get::<_, String>(7)),
                    },
                    reinstall_reason: row.get(8),
                    updated_at_ms: row.get(9),
                    server_endpoint: row.get(10),
                },
            ));
        }
        for row in tx
            .query(
                "SELECT portal, job_id, deal_id, workflow_id, event_token, route, created_at,
                        answered_at, answer_error FROM rule_calls ORDER BY id",
                &[],
            )
            .await?
        {
            snapshot.rule_calls.push(RuleCallRow {
                portal: row.get(0),
                job_id: row.get(1),
                deal_id: row.get(2),
                workflow_id: row.get(3),
                event_token: row.get(4),
                route: row.get(5),
                created_at_ms: row.get(6),
                answered_at_ms: row.get(7),
                answer_error: row.get(8),
            });
        }
        tx.commit().await?;
        Ok(snapshot)
    }

    /// Imports `snapshot`, taken from the store named `source`.
    pub(super) async fn import(
        &self,
        source: &str,
        snapshot: &Snapshot,
    ) -> Result<CopyReport, StoreError> {
        let mut report = CopyReport::default();
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        for row in &snapshot.jobs {
            let job = &row.job;
            let state = copied_state(job.state);
            let known: Option<i64> = tx
                .query_opt(
                    "SELECT c.job_id FROM copied_jobs c JOIN jobs j ON j.id = c.job_id
                     WHERE c.source = $1 AND c.source_id = $2",
                    &[&source, &job.id],
                )
                .await?
                .map(|r| r.get(0));
            let waiting = state == JobState::Pending;
            if waiting {
                tx.execute(DEAL_LOCK, &[&job.portal, &job.deal_id]).await?;
            }
            let pending: Option<i64> = if waiting {
                tx.query_opt(
                    "SELECT id FROM jobs WHERE portal = $1 AND deal_id = $2 AND state = 'pending'",
                    &[&job.portal, &job.deal_id],
                )
                .await?
                .map(|r| r.get(0))
            } else {
                None
            };
            let destination = match (known, pending) {
                (Some(id), _) => {
                    // Copied before: take the source's newer state, unless a
                    // replica is working on it or it would make a second
                    // waiting job for the deal.
                    let blocked = waiting && pending.is_some_and(|p| p != id);
                    let changed = if blocked {
                        0
                    } else {
                        tx.execute(
                            "UPDATE jobs SET state = $2, attempts = $3, interruptions = $4,
                                    coalesced = $5, updated_at = $6, message = $7,
                                    target_deal_id = COALESCE($8, target_deal_id), next_run_at = $9
                             WHERE id = $1 AND state <> 'running' AND updated_at < $6",
                            &[
                                &id,
                                &state.as_str(),
                                &count(job.attempts),
                                &count(job.interruptions),
                                &count(job.coalesced),
                                &job.updated_at_ms,
                                &job.message,
                                &job.target_deal_id,
                                &row.next_run_at_ms,
                            ],
                        )
                        .await?
                    };
                    report.jobs_updated += changed;
                    id
                }
                (None, Some(waiting_job)) => {
                    tx.execute(
                        "UPDATE jobs SET coalesced = coalesced + 1 + $2, updated_at = b24_now_ms(),
                                next_run_at = LEAST(next_run_at, $3)
                         WHERE id = $1",
                        &[&waiting_job, &count(job.coalesced), &row.next_run_at_ms],
                    )
                    .await?;
                    report.jobs_merged += 1;
                    report.merged.insert(job.id);
                    waiting_job
                }
                (None, None) => {
                    let id: i64 = tx
                        .query_one(
                            "INSERT INTO jobs (portal, deal_id, trigger, state, attempts, interruptions,
                                    coalesced, next_run_at, created_at, updated_at, message, target_deal_id)
                             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) RETURNING id",
                            &[
                                &job.portal,
                                &job.deal_id,
                                &job.trigger,
                                &state.as_str(),
                                &count(job.attempts),
                                &count(job.interruptions),
                                &count(job.coalesced),
                                &row.next_run_at_ms,
                                &job.created_at_ms,
                                &job.updated_at_ms,
                                &job.message,
                                &job.target_deal_id,
                            ],
                        )
                        .await?
                        .get(0);
                    report.jobs_inserted += 1;
                    id
                }
            };
            tx.execute(
                "INSERT INTO copied_jobs (source, source_id, job_id) VALUES ($1, $2, $3)
                 ON CONFLICT (source, source_id) DO UPDATE SET job_id = EXCLUDED.job_id",
                &[&source, &job.id, &destination],
            )
            .await?;
            if known.is_some() && pending.is_some() && waiting && known != pending {
                report.merged.insert(job.id);
            }
            report.job_map.insert(job.id, destination);
        }
        for (job_id, attempt) in &snapshot.attempts {
            let Some(destination) = report
                .job_map
                .get(job_id)
                .filter(|_| !report.merged.contains(job_id))
            else {
                continue;
            };
            report.attempts += tx
                .execute(
                    "INSERT INTO attempts (job_id, number, started_at, finished_at, outcome, message)
                     VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (job_id, number) DO NOTHING",
                    &[
                        destination,
                        &count(attempt.number),
                        &attempt.started_at_ms,
                        &attempt.finished_at_ms,
                        &attempt.outcome,
                        &attempt.message,
                    ],
                )
                .await?;
        }
        for link in &snapshot.links {
            let existing = tx
                .query_opt(
                    "SELECT target_id FROM links WHERE kind = $1 AND source_portal = $2
                       AND source_id = $3 AND target_portal = $4 FOR UPDATE",
                    &[
                        &link.kind.as_str(),
                        &link.source_portal,
                        &link.source_id,
                        &link.target_portal,
                    ],
                )
                .await?
                .map(|r| r.get::<_, Option<i64>>(0));
            match existing {
                None => {
                    tx.execute(
                        "INSERT INTO links (kind, source_portal, source_id, target_portal, target_id,
                                synced_hash, updated_at)
                         VALUES ($1, $2, $3, $4, $5, $6, $7)",
                        &[
                            &link.kind.as_str(),
                            &link.source_portal,
                            &link.source_id,
                            &link.target_portal,
                            &link.target_id,
                            &link.synced_hash,
                            &link.updated_at_ms,
                        ],
                    )
                    .await?;
                    report.links += 1;
                }
                Some(None) if link.target_id.is_some() => {
                    tx.execute(
                        "UPDATE links SET target_id = $5, synced_hash = $6, updated_at = $7
                         WHERE kind = $1 AND source_portal = $2 AND source_id = $3 AND target_portal = $4",
                        &[
                            &link.kind.as_str(),
                            &link.source_portal,
                            &link.source_id,
                            &link.target_portal,
                            &link.target_id,
                            &link.synced_hash,
                            &link.updated_at_ms,
                        ],
                    )
                    .await?;
                    report.links += 1;
                }
                Some(Some(kept)) if link.target_id.is_some_and(|t| t != kept) => {
                    report.link_conflicts.push(format!(
                        "{} {} {} → {}: the source store says {}, the destination {} (kept)",
                        link.kind.as_str(),
                        link.source_portal,
                        link.source_id,
                        link.target_portal,
                        link.target_id.unwrap_or_default(),
                        kept
                    ));
                }
                Some(_) => {}
            }
        }
        for file in &snapshot.copied_files {
            report.copied_files += tx
                .execute(
                    "INSERT INTO copied_files (source_portal, deal_id, target_portal, field, file_id)
                     VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
                    &[
                        &file.source_portal,
                        &file.deal_id,
                        &file.target_portal,
                        &file.field,
                        &file.file_id,
                    ],
                )
                .await?;
        }
        for (portal, install) in &snapshot.installs {
            // The newest pair wins: an older refresh token is spent.
            report.installs += tx
                .execute(
                    "INSERT INTO app_installs (portal, client_endpoint, domain, member_id, scopes,
                        application_token, access_token, refresh_token, reinstall_reason, updated_at,
                        server_endpoint)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
                     ON CONFLICT (portal) DO UPDATE SET client_endpoint = EXCLUDED.client_endpoint,
                        server_endpoint = EXCLUDED.server_endpoint,
                        domain = EXCLUDED.domain, member_id = EXCLUDED.member_id, scopes = EXCLUDED.scopes,
                        application_token = EXCLUDED.application_token,
                        access_token = EXCLUDED.access_token, refresh_token = EXCLUDED.refresh_token,
                        reinstall_reason = EXCLUDED.reinstall_reason, updated_at = EXCLUDED.updated_at
                     WHERE app_installs.updated_at < EXCLUDED.updated_at",
                    &[
                        portal,
                        &install.client_endpoint,
                        &install.domain,
                        &install.member_id,
                        &install.scopes,
                        &install.application_token.expose(),
                        &install.tokens.access_token.expose(),
                        &install.tokens.refresh_token.expose(),
                        &install.reinstall_reason,
                        &install.updated_at_ms,
                        &install.server_endpoint,
                    ],
                )
                .await?;
        }
        for call in &snapshot.rule_calls {
            let Some(job_id) = report.job_map.get(&call.job_id) else {
                continue;
            };
            let existing = tx
                .query_opt(
                    "SELECT id FROM rule_calls WHERE event_token = $1",
                    &[&call.event_token],
                )
                .await?;
            match existing {
                Some(row) => {
                    let id: i64 = row.get(0);
                    tx.execute(
                        "UPDATE rule_calls SET answered_at = $2, answer_error = $3
                         WHERE id = $1 AND answered_at IS NULL AND $2::bigint IS NOT NULL",
                        &[&id, &call.answered_at_ms, &call.answer_error],
                    )
                    .await?;
                }
                None => {
                    tx.execute(
                        "INSERT INTO rule_calls (portal, job_id, deal_id, workflow_id, event_token, route,
                                created_at, answered_at, answer_error)
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                        &[
                            &call.portal,
                            job_id,
                            &call.deal_id,
                            &call.workflow_id,
                            &call.event_token,
                            &call.route,
                            &call.created_at_ms,
                            &call.answered_at_ms,
                            &call.answer_error,
                        ],
                    )
                    .await?;
                    report.rule_calls += 1;
                }
            }
        }
        tx.commit().await?;
        Ok(report)
    }
}
