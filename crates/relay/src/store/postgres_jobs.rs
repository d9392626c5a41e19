//! The queue, links, copied files and attempts in PostgreSQL. The rules are
//! those of the SQLite backend (see `sqlite_jobs`), made safe for several
//! replicas: row locks with `SKIP LOCKED` for claims, a per-deal advisory
//! lock before any change that makes a job waiting, and lease owners so a
//! replica never finishes a job another replica has taken over.

use std::time::Duration;

use tokio_postgres::Row;
use tokio_postgres::error::SqlState;

use super::postgres::PgStore;
use super::sqlite_jobs::ms;
use super::{
    Attempt, Enqueued, Job, JobState, Link, LinkKey, QueueStats, StoreError, StoreOptions,
};

const JOB_COLUMNS: &str = "id, portal, deal_id, trigger, state, attempts, interruptions, coalesced, created_at, updated_at, message, target_deal_id";

/// How a request merges into the deal's pending job (`ON CONFLICT`): one
/// more request counted, and a backfill job made live by a live request
/// (see `sqlite_jobs::enqueue`).
pub(super) const MERGE: &str = "coalesced = jobs.coalesced + 1, updated_at = EXCLUDED.updated_at,
    trigger = CASE WHEN jobs.trigger = 'backfill' THEN EXCLUDED.trigger ELSE jobs.trigger END";

/// The per-deal advisory lock (held to the end of the transaction).
const DEAL_LOCK: &str =
    "SELECT pg_advisory_xact_lock(hashtextextended($1::text || '/' || $2::bigint::text, 0))";

fn job_from_row(row: &Row) -> Job {
    let state: String = row.get(4);
    let count = |index: usize| row.get::<_, i32>(index).max(0) as u32;
    Job {
        id: row.get(0),
        portal: row.get(1),
        deal_id: row.get(2),
        trigger: row.get(3),
        state: JobState::parse(&state).unwrap_or(JobState::Failed),
        attempts: count(5),
        interruptions: count(6),
        coalesced: count(7),
        created_at_ms: row.get(8),
        updated_at_ms: row.get(9),
        message: row.get(10),
        target_deal_id: row.get(11),
    }
}

impl PgStore {
    /// Queues `deal_id`, merging into a pending job for the deal: one
    /// statement (deal lock, insert or merge).
    pub(super) async fn enqueue(
        &self,
        portal: &str,
        deal_id: i64,
        trigger: &str,
    ) -> Result<Enqueued, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_one(
                &format!("WITH locked AS (
                    SELECT pg_advisory_xact_lock(hashtextextended($1::text || '/' || $2::bigint::text, 0)))
                 INSERT INTO jobs (portal, deal_id, trigger, state, next_run_at, created_at, updated_at)
                 SELECT $1, $2, $3, 'pending', b24_now_ms(), b24_now_ms(), b24_now_ms() FROM locked
                 ON CONFLICT (portal, deal_id) WHERE state = 'pending'
                 DO UPDATE SET {MERGE}
                 RETURNING id, (xmax::text <> '0') AS merged"),
                &[&portal, &deal_id, &trigger],
            )
            .await?;
        Ok(Enqueued {
            job_id: row.get(0),
            coalesced: row.get(1),
        })
    }

    /// [`Self::enqueue`] and the rule run waiting for the job, together.
    pub(super) async fn enqueue_rule_call(
        &self,
        portal: &str,
        deal_id: i64,
        workflow_id: &str,
        event_token: &str,
        route: &str,
    ) -> Result<Enqueued, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        tx.execute(DEAL_LOCK, &[&portal, &deal_id]).await?;
        let row = tx
            .query_one(
                &format!("INSERT INTO jobs (portal, deal_id, trigger, state, next_run_at, created_at, updated_at)
                 VALUES ($1, $2, 'app-rule', 'pending', b24_now_ms(), b24_now_ms(), b24_now_ms())
                 ON CONFLICT (portal, deal_id) WHERE state = 'pending'
                 DO UPDATE SET {MERGE}
                 RETURNING id, (xmax::text <> '0') AS merged"),
                &[&portal, &deal_id],
            )
            .await?;
        let enqueued = Enqueued {
            job_id: row.get(0),
            coalesced: row.get(1),
        };
        tx.execute(
            "INSERT INTO rule_calls (portal, job_id, deal_id, workflow_id, event_token, route, created_at)
             VALUES ($1, $2, $3, $4, $5, $6, b24_now_ms())",
            &[&portal, &enqueued.job_id, &deal_id, &workflow_id, &event_token, &route],
        )
        .await?;
        tx.commit().await?;
        Ok(enqueued)
    }

    /// Jobs whose lease lapsed: each is an interrupted attempt, handled in
    /// its own transaction under the deal's lock (see `sqlite_jobs`).
    async fn recover_lapsed(&self, options: &StoreOptions) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let lapsed = client
            .query(
                "SELECT id, portal, deal_id FROM jobs
                 WHERE state = 'running' AND lease_until < b24_now_ms() LIMIT 20",
                &[],
            )
            .await?;
        for row in lapsed {
            let (id, portal, deal_id): (i64, String, i64) = (row.get(0), row.get(1), row.get(2));
            let tx = client.transaction().await?;
            tx.execute(DEAL_LOCK, &[&portal, &deal_id]).await?;
            let still = tx
                .query_opt(
                    "SELECT id FROM jobs WHERE id = $1 AND state = 'running'
                       AND lease_until < b24_now_ms() FOR UPDATE SKIP LOCKED",
                    &[&id],
                )
                .await?;
            if still.is_none() {
                continue;
            }
            if !supersede_by_waiting(&tx, id, &portal, deal_id).await? {
                let delay = ms(options.interrupted_delay);
                let max = i32::try_from(options.max_interruptions).unwrap_or(i32::MAX);
                tx.execute(
                    "UPDATE jobs SET state = 'pending', lease_until = NULL, lease_owner = NULL,
                            attempts = GREATEST(attempts - 1, 0), interruptions = interruptions + 1,
                            next_run_at = b24_now_ms() + $2::bigint * (1 << LEAST(interruptions + 1, 6)),
                            message = 'interrupted: the relay stopped during an attempt',
                            updated_at = b24_now_ms()
                     WHERE id = $1",
                    &[&id, &delay],
                )
                .await?;
                tx.execute(
                    "UPDATE jobs SET state = 'failed', updated_at = b24_now_ms(), message =
                        'the relay stopped ' || interruptions || ' times while transferring this deal '
                        || '(killed, crashed or restarted mid-transfer); not tried again automatically: '
                        || 'find in the log what stopped it, then run `b24-relay jobs replay ' || id || '`'
                     WHERE id = $1 AND interruptions > $2",
                    &[&id, &max],
                )
                .await?;
            }
            tx.commit().await?;
        }
        Ok(())
    }

    /// Claims the next due job whose deal no replica is transferring: live
    /// jobs before backfill jobs (see `sqlite_jobs::claim`).
    pub(super) async fn claim(
        &self,
        lease: Duration,
        options: &StoreOptions,
    ) -> Result<Option<Job>, StoreError> {
        self.recover_lapsed(options).await?;
        let client = self.client().await?;
        let claimed = client
            .query_opt(
                &format!(
                    "UPDATE jobs SET state = 'running', attempts = attempts + 1,
                            lease_until = b24_now_ms() + $1, lease_owner = $2, updated_at = b24_now_ms()
                     WHERE id = (
                        SELECT j.id FROM jobs j
                        WHERE j.state = 'pending' AND j.next_run_at <= b24_now_ms()
                          AND NOT EXISTS (SELECT 1 FROM jobs r WHERE r.portal = j.portal
                                          AND r.deal_id = j.deal_id AND r.state = 'running')
                        ORDER BY (j.trigger = 'backfill'),
                                 (SELECT COUNT(*) FROM jobs b WHERE b.portal = j.portal AND b.state = 'running'),
                                 j.next_run_at, j.id
                        LIMIT 1 FOR UPDATE SKIP LOCKED)
                     RETURNING {JOB_COLUMNS}"
                ),
                &[&ms(lease), &self.replica],
            )
            .await;
        match claimed {
            Ok(row) => Ok(row.as_ref().map(job_from_row)),
            // Another replica started this deal a moment ago: nothing now.
            Err(error) if error.code() == Some(&SqlState::UNIQUE_VIOLATION) => Ok(None),
            Err(error) => Err(error.into()),
        }
    }

    pub(super) async fn heartbeat(&self, job_id: i64, lease: Duration) -> Result<(), StoreError> {
        let client = self.client().await?;
        client
            .execute(
                "UPDATE jobs SET lease_until = b24_now_ms() + $2
                 WHERE id = $1 AND state = 'running' AND lease_owner = $3",
                &[&job_id, &ms(lease), &self.replica],
            )
            .await?;
        Ok(())
    }

    /// Ends a job, unless another replica has taken it over meanwhile.
    pub(super) async fn finish(
        &self,
        job_id: i64,
        state: JobState,
        message: &str,
        target_deal_id: Option<i64>,
    ) -> Result<(), StoreError> {
        let client = self.client().await?;
        let changed = client
            .execute(
                "UPDATE jobs SET state = $2, message = $3,
                        target_deal_id = COALESCE($4, target_deal_id),
                        lease_until = NULL, lease_owner = NULL, updated_at = b24_now_ms()
                 WHERE id = $1 AND NOT (state = 'running' AND lease_owner IS DISTINCT FROM $5)",
                &[
                    &job_id,
                    &state.as_str(),
                    &message,
                    &target_deal_id,
                    &self.replica,
                ],
            )
            .await?;
        if changed == 0 {
            tracing::warn!(
                job = job_id,
                "another replica took this job over (its lease lapsed); its end is theirs to record"
            );
        }
        Ok(())
    }

    pub(super) async fn retry_later(
        &self,
        job_id: i64,
        delay: Duration,
        message: &str,
    ) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let Some(job) = tx
            .query_opt("SELECT portal, deal_id FROM jobs WHERE id = $1", &[&job_id])
            .await?
        else {
            return Ok(());
        };
        let (portal, deal_id): (String, i64) = (job.get(0), job.get(1));
        tx.execute(DEAL_LOCK, &[&portal, &deal_id]).await?;
        let mine = tx
            .query_opt(
                "SELECT id FROM jobs WHERE id = $1
                   AND NOT (state = 'running' AND lease_owner IS DISTINCT FROM $2) FOR UPDATE",
                &[&job_id, &self.replica],
            )
            .await?;
        if mine.is_none() {
            return Ok(());
        }
        let waiting: Option<i64> = tx
            .query_opt(
                "SELECT id FROM jobs WHERE portal = $1 AND deal_id = $2 AND state = 'pending' AND id <> $3",
                &[&portal, &deal_id, &job_id],
            )
            .await?
            .map(|r| r.get(0));
        match waiting {
            Some(other) => {
                tx.execute(
                    "UPDATE rule_calls SET job_id = $2 WHERE job_id = $1 AND answered_at IS NULL",
                    &[&job_id, &other],
                )
                .await?;
                tx.execute(
                    "UPDATE jobs SET next_run_at = GREATEST(next_run_at, b24_now_ms() + $2) WHERE id = $1",
                    &[&other, &ms(delay)],
                )
                .await?;
                tx.execute(
                    "UPDATE jobs SET state = 'done', message = $2, lease_until = NULL,
                            lease_owner = NULL, updated_at = b24_now_ms() WHERE id = $1",
                    &[
                        &job_id,
                        &format!("merged into job {other} after: {message}"),
                    ],
                )
                .await?;
            }
            None => {
                tx.execute(
                    "UPDATE jobs SET state = 'pending', next_run_at = b24_now_ms() + $2, message = $3,
                            lease_until = NULL, lease_owner = NULL, updated_at = b24_now_ms()
                     WHERE id = $1",
                    &[&job_id, &ms(delay), &message],
                )
                .await?;
            }
        }
        tx.commit().await?;
        Ok(())
    }

    /// Gives a job back on a graceful stop: due at once, nothing counted.
    pub(super) async fn release(&self, job_id: i64) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let Some(job) = tx
            .query_opt(
                "SELECT portal, deal_id FROM jobs WHERE id = $1 AND state = 'running' AND lease_owner = $2",
                &[&job_id, &self.replica],
            )
            .await?
        else {
            return Ok(());
        };
        let (portal, deal_id): (String, i64) = (job.get(0), job.get(1));
        tx.execute(DEAL_LOCK, &[&portal, &deal_id]).await?;
        if !supersede_by_waiting(&tx, job_id, &portal, deal_id).await? {
            tx.execute(
                "UPDATE jobs SET state = 'pending', lease_until = NULL, lease_owner = NULL,
                        attempts = GREATEST(attempts - 1, 0), next_run_at = b24_now_ms(),
                        updated_at = b24_now_ms()
                 WHERE id = $1",
                &[&job_id],
            )
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    pub(super) async fn job(&self, id: i64) -> Result<Option<Job>, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                &format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1"),
                &[&id],
            )
            .await?;
        Ok(row.as_ref().map(job_from_row))
    }

    pub(super) async fn jobs(
        &self,
        state: Option<JobState>,
        limit: u32,
    ) -> Result<Vec<Job>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                &format!(
                    "SELECT {JOB_COLUMNS} FROM jobs WHERE ($1::text IS NULL OR state = $1)
                     ORDER BY id DESC LIMIT $2"
                ),
                &[&state.map(JobState::as_str), &i64::from(limit)],
            )
            .await?;
        Ok(rows.iter().map(job_from_row).collect())
    }

    pub(super) async fn replay(&self, id: i64) -> Result<(), StoreError> {
        let job = self.job(id).await?.ok_or(StoreError::NoSuchJob(id))?;
        if matches!(job.state, JobState::Pending | JobState::Running) {
            return Err(StoreError::NotReplayable {
                id,
                state: job.state.as_str().into(),
            });
        }
        self.enqueue(&job.portal, job.deal_id, "replay").await?;
        Ok(())
    }

    pub(super) async fn replay_failed(&self) -> Result<u64, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let failed = tx
            .query(
                "SELECT DISTINCT portal, deal_id FROM jobs WHERE state = 'failed' ORDER BY portal, deal_id",
                &[],
            )
            .await?;
        for row in &failed {
            let (portal, deal_id): (String, i64) = (row.get(0), row.get(1));
            tx.execute(DEAL_LOCK, &[&portal, &deal_id]).await?;
            tx.execute(
                &format!("INSERT INTO jobs (portal, deal_id, trigger, state, next_run_at, created_at, updated_at)
                 VALUES ($1, $2, 'replay', 'pending', b24_now_ms(), b24_now_ms(), b24_now_ms())
                 ON CONFLICT (portal, deal_id) WHERE state = 'pending'
                 DO UPDATE SET {MERGE}"),
                &[&portal, &deal_id],
            )
            .await?;
        }
        tx.execute(
            "UPDATE jobs SET state = 'done', message = 'replayed: ' || COALESCE(message, ''),
                    updated_at = b24_now_ms()
             WHERE state = 'failed'",
            &[],
        )
        .await?;
        tx.commit().await?;
        Ok(failed.len() as u64)
    }

    pub(super) async fn link(&self, key: &LinkKey<'_>) -> Result<Option<Link>, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "SELECT target_id, synced_hash FROM links
                 WHERE kind = $1 AND source_portal = $2 AND source_id = $3 AND target_portal = $4",
                &[
                    &key.kind.as_str(),
                    &key.source_portal,
                    &key.source_id,
                    &key.target_portal,
                ],
            )
            .await?;
        Ok(row.map(|row| Link {
            target_id: row.get(0),
            synced_hash: row.get(1),
        }))
    }

    pub(super) async fn mark_creating(&self, key: &LinkKey<'_>) -> Result<(), StoreError> {
        let client = self.client().await?;
        client
            .execute(
                "INSERT INTO links (kind, source_portal, source_id, target_portal, target_id, updated_at)
                 VALUES ($1, $2, $3, $4, NULL, b24_now_ms())
                 ON CONFLICT DO NOTHING",
                &[
                    &key.kind.as_str(),
                    &key.source_portal,
                    &key.source_id,
                    &key.target_portal,
                ],
            )
            .await?;
        Ok(())
    }

    pub(super) async fn set_link(
        &self,
        key: &LinkKey<'_>,
        target_id: i64,
        synced_hash: Option<&str>,
    ) -> Result<(), StoreError> {
        let client = self.client().await?;
        client
            .execute(
                "INSERT INTO links (kind, source_portal, source_id, target_portal, target_id, synced_hash, updated_at)
                 VALUES ($1, $2, $3, $4, $5, $6, b24_now_ms())
                 ON CONFLICT (kind, source_portal, source_id, target_portal) DO UPDATE
                 SET target_id = EXCLUDED.target_id, synced_hash = EXCLUDED.synced_hash,
                     updated_at = EXCLUDED.updated_at",
                &[
                    &key.kind.as_str(),
                    &key.source_portal,
                    &key.source_id,
                    &key.target_portal,
                    &target_id,
                    &synced_hash,
                ],
            )
            .await?;
        Ok(())
    }

    pub(super) async fn copied_files(
        &self,
        key: &LinkKey<'_>,
        field: &str,
    ) -> Result<Vec<i64>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT file_id FROM copied_files WHERE source_portal = $1 AND deal_id = $2
                 AND target_portal = $3 AND field = $4 ORDER BY file_id",
                &[
                    &key.source_portal,
                    &key.source_id,
                    &key.target_portal,
                    &field,
                ],
            )
            .await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    pub(super) async fn add_copied_files(
        &self,
        key: &LinkKey<'_>,
        field: &str,
        file_ids: &[i64],
    ) -> Result<(), StoreError> {
        let client = self.client().await?;
        client
            .execute(
                "INSERT INTO copied_files (source_portal, deal_id, target_portal, field, file_id)
                 SELECT $1, $2, $3, $4, unnest($5::bigint[])
                 ON CONFLICT DO NOTHING",
                &[
                    &key.source_portal,
                    &key.source_id,
                    &key.target_portal,
                    &field,
                    &file_ids,
                ],
            )
            .await?;
        Ok(())
    }

    pub(super) async fn stats(&self) -> Result<QueueStats, StoreError> {
        let client = self.client().await?;
        let counted: Vec<(String, u64)> = client
            .query("SELECT state, COUNT(*) FROM jobs GROUP BY state", &[])
            .await?
            .iter()
            .map(|row| (row.get(0), row.get::<_, i64>(1).max(0) as u64))
            .collect();
        let oldest: Option<i64> = client
            .query_one(
                "SELECT MIN(created_at) FROM jobs WHERE state IN ('pending', 'running')",
                &[],
            )
            .await?
            .get(0);
        let replicas: i64 = client
            .query_one(
                "SELECT COUNT(*) FROM replicas WHERE seen_at > b24_now_ms() - 15000",
                &[],
            )
            .await?
            .get(0);
        let mut stats = QueueStats::from_counts(&counted, oldest);
        stats.replicas = Some(replicas.max(0) as u64);
        Ok(stats)
    }

    pub(super) async fn record_attempt(
        &self,
        job_id: i64,
        attempt: &Attempt,
    ) -> Result<(), StoreError> {
        let client = self.client().await?;
        client
            .execute(
                "INSERT INTO attempts (job_id, number, started_at, finished_at, outcome, message)
                 VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT (job_id, number) DO UPDATE SET started_at = EXCLUDED.started_at,
                    finished_at = EXCLUDED.finished_at, outcome = EXCLUDED.outcome,
                    message = EXCLUDED.message",
                &[
                    &job_id,
                    &i32::try_from(attempt.number).unwrap_or(i32::MAX),
                    &attempt.started_at_ms,
                    &attempt.finished_at_ms,
                    &attempt.outcome,
                    &attempt.message,
                ],
            )
            .await?;
        Ok(())
    }

    pub(super) async fn attempts(&self, job_id: i64) -> Result<Vec<Attempt>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT number, started_at, finished_at, outcome, message FROM attempts
                 WHERE job_id = $1 ORDER BY number",
                &[&job_id],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|row| Attempt {
                number: row.get::<_, i32>(0).max(0) as u32,
                started_at_ms: row.get(1),
                finished_at_ms: row.get(2),
                outcome: row.get(3),
                message: row.get(4),
            })
            .collect())
    }
}

/// If a newer job waits for the same deal, `job_id` is ended as superseded
/// and its unanswered rule runs follow the waiting job; `true` then. Runs in
/// the caller's transaction, under its deal lock.
async fn supersede_by_waiting(
    tx: &tokio_postgres::Transaction<'_>,
    job_id: i64,
    portal: &str,
    deal_id: i64,
) -> Result<bool, StoreError> {
    let waiting: Option<i64> = tx
        .query_opt(
            "SELECT id FROM jobs WHERE portal = $1 AND deal_id = $2 AND state = 'pending'",
            &[&portal, &deal_id],
        )
        .await?
        .map(|r| r.get(0));
    let Some(waiting) = waiting else {
        return Ok(false);
    };
    tx.execute(
        "UPDATE rule_calls SET job_id = $2 WHERE job_id = $1 AND answered_at IS NULL",
        &[&job_id, &waiting],
    )
    .await?;
    tx.execute(
        "UPDATE jobs SET state = 'done', message = 'superseded by a newer request',
                lease_until = NULL, lease_owner = NULL, updated_at = b24_now_ms()
         WHERE id = $1",
        &[&job_id],
    )
    .await?;
    Ok(true)
}
