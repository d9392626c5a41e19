//! The SQLite implementation of [`Store`]: WAL, `synchronous=FULL`, every
//! multi-statement change in an immediate transaction.

use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, params};

use super::{Attempt, Enqueued, Job, JobState, Link, LinkKey, QueueStats, StoreError, now_ms};

/// The SQLite store: one file, one process serving jobs. Its methods
/// block; [`super::Store`] runs them off the async threads.
pub(super) struct SqliteStore {
    connection: Mutex<Connection>,
}

fn ms(duration: Duration) -> i64 {
    duration.as_millis().min(i64::MAX as u128) as i64
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    portal TEXT NOT NULL,
    deal_id INTEGER NOT NULL,
    trigger TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    coalesced INTEGER NOT NULL DEFAULT 0,
    next_run_at INTEGER NOT NULL,
    lease_until INTEGER,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    message TEXT,
    target_deal_id INTEGER
);
CREATE UNIQUE INDEX IF NOT EXISTS jobs_one_pending_per_deal
    ON jobs(portal, deal_id) WHERE state = 'pending';
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs(state, next_run_at);
CREATE TABLE IF NOT EXISTS links (
    kind TEXT NOT NULL,
    source_portal TEXT NOT NULL,
    source_id INTEGER NOT NULL,
    target_portal TEXT NOT NULL,
    target_id INTEGER,
    synced_hash TEXT,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (kind, source_portal, source_id, target_portal)
);
CREATE TABLE IF NOT EXISTS copied_files (
    source_portal TEXT NOT NULL,
    deal_id INTEGER NOT NULL,
    target_portal TEXT NOT NULL,
    field TEXT NOT NULL,
    file_id INTEGER NOT NULL,
    PRIMARY KEY (source_portal, deal_id, target_portal, field, file_id)
);
CREATE TABLE IF NOT EXISTS app_installs (
    portal TEXT PRIMARY KEY,
    client_endpoint TEXT NOT NULL,
    domain TEXT NOT NULL,
    member_id TEXT NOT NULL,
    scopes TEXT NOT NULL,
    application_token TEXT NOT NULL,
    access_token TEXT NOT NULL,
    refresh_token TEXT NOT NULL,
    reinstall_reason TEXT,
    updated_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS rule_calls (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    portal TEXT NOT NULL,
    job_id INTEGER NOT NULL,
    deal_id INTEGER NOT NULL,
    workflow_id TEXT NOT NULL,
    event_token TEXT NOT NULL,
    route TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    answered_at INTEGER,
    answer_error TEXT
);
CREATE INDEX IF NOT EXISTS rule_calls_open ON rule_calls(job_id) WHERE answered_at IS NULL;
CREATE TABLE IF NOT EXISTS attempts (
    job_id INTEGER NOT NULL,
    number INTEGER NOT NULL,
    started_at INTEGER NOT NULL,
    finished_at INTEGER NOT NULL,
    outcome TEXT NOT NULL,
    message TEXT NOT NULL,
    PRIMARY KEY (job_id, number)
);
";

const JOB_COLUMNS: &str = "id, portal, deal_id, trigger, state, attempts, coalesced, created_at, updated_at, message, target_deal_id";

fn job_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Job> {
    let state: String = row.get(4)?;
    Ok(Job {
        id: row.get(0)?,
        portal: row.get(1)?,
        deal_id: row.get(2)?,
        trigger: row.get(3)?,
        state: JobState::parse(&state).unwrap_or(JobState::Failed),
        attempts: row.get(5)?,
        coalesced: row.get(6)?,
        created_at_ms: row.get(7)?,
        updated_at_ms: row.get(8)?,
        message: row.get(9)?,
        target_deal_id: row.get(10)?,
    })
}

/// Queues `deal_id` inside `tx`, merging into a pending job for the deal.
pub(super) fn enqueue_in(
    tx: &rusqlite::Transaction<'_>,
    portal: &str,
    deal_id: i64,
    trigger: &str,
) -> Result<Enqueued, StoreError> {
    let now = now_ms();
    let merged: Option<i64> = tx
        .query_row(
            "UPDATE jobs SET coalesced = coalesced + 1, updated_at = ?3
             WHERE portal = ?1 AND deal_id = ?2 AND state = 'pending' RETURNING id",
            params![portal, deal_id, now],
            |row| row.get(0),
        )
        .optional()?;
    Ok(match merged {
        Some(job_id) => Enqueued {
            job_id,
            coalesced: true,
        },
        None => {
            tx.execute(
                "INSERT INTO jobs (portal, deal_id, trigger, state, next_run_at, created_at, updated_at)
                 VALUES (?1, ?2, ?3, 'pending', ?4, ?4, ?4)",
                params![portal, deal_id, trigger, now],
            )?;
            Enqueued {
                job_id: tx.last_insert_rowid(),
                coalesced: false,
            }
        }
    })
}

/// Rule runs waiting on running jobs that a pending job for the same deal
/// supersedes now wait on that pending job (`stale_before`: only jobs whose
/// lease lapsed before it).
fn move_rule_calls_of_superseded(
    tx: &rusqlite::Transaction<'_>,
    stale_before: Option<i64>,
) -> Result<(), StoreError> {
    tx.execute(
        "UPDATE rule_calls SET job_id = (
            SELECT p.id FROM jobs p JOIN jobs j ON p.portal = j.portal AND p.deal_id = j.deal_id
            WHERE j.id = rule_calls.job_id AND p.state = 'pending')
         WHERE answered_at IS NULL AND job_id IN (
            SELECT j.id FROM jobs j WHERE j.state = 'running'
              AND (?1 IS NULL OR j.lease_until < ?1)
              AND EXISTS (SELECT 1 FROM jobs p WHERE p.portal = j.portal
                          AND p.deal_id = j.deal_id AND p.state = 'pending'))",
        params![stale_before],
    )?;
    Ok(())
}

/// The store holds OAuth tokens and application tokens: create it readable
/// by its owner only, and take group and other access away from an existing
/// file. SQLite gives its -wal and -shm files the database file's mode.
fn restrict_to_owner(path: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let permissions = |source| StoreError::Permissions {
        path: path.display().to_string(),
        source,
    };
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .map_err(permissions)?;
    let mode = file.metadata().map_err(permissions)?.permissions().mode();
    if mode & 0o077 != 0 {
        file.set_permissions(std::fs::Permissions::from_mode(mode & 0o700))
            .map_err(permissions)?;
    }
    Ok(())
}

impl SqliteStore {
    pub(super) fn open(path: &Path) -> Result<Self, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| StoreError::Directory {
                path: dir.display().to_string(),
                source,
            })?;
        }
        restrict_to_owner(path)?;
        let connection = Connection::open(path)?;
        connection.busy_timeout(Duration::from_secs(10))?;
        connection.pragma_update(None, "journal_mode", "WAL")?;
        connection.pragma_update(None, "synchronous", "FULL")?;
        connection.execute_batch(SCHEMA)?;
        Ok(Self {
            connection: Mutex::new(connection),
        })
    }

    pub(super) fn with<T>(
        &self,
        work: impl FnOnce(&mut Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut connection = self.connection.lock().unwrap_or_else(|e| e.into_inner());
        work(&mut connection)
    }
}

impl SqliteStore {
    pub(super) fn enqueue(
        &self,
        portal: &str,
        deal_id: i64,
        trigger: &str,
    ) -> Result<Enqueued, StoreError> {
        self.with(|c| {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let enqueued = enqueue_in(&tx, portal, deal_id, trigger)?;
            tx.commit()?;
            Ok(enqueued)
        })
    }

    pub(super) fn claim(&self, lease: Duration) -> Result<Option<Job>, StoreError> {
        self.with(|c| {
            let now = now_ms();
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            // A lapsed lease means the worker died: its job is due again.
            tx.execute(
                "UPDATE jobs SET state = 'pending', lease_until = NULL
                 WHERE state = 'running' AND lease_until < ?1
                   AND NOT EXISTS (SELECT 1 FROM jobs p WHERE p.portal = jobs.portal
                                   AND p.deal_id = jobs.deal_id AND p.state = 'pending')",
                params![now],
            )?;
            move_rule_calls_of_superseded(&tx, Some(now))?;
            tx.execute(
                "UPDATE jobs SET state = 'done', message = 'superseded by a newer request', lease_until = NULL
                 WHERE state = 'running' AND lease_until < ?1",
                params![now],
            )?;
            let claimed = tx
                .query_row(
                    &format!(
                        "UPDATE jobs SET state = 'running', attempts = attempts + 1,
                                lease_until = ?2, updated_at = ?1
                         WHERE id = (
                            SELECT j.id FROM jobs j
                            WHERE j.state = 'pending' AND j.next_run_at <= ?1
                              AND NOT EXISTS (SELECT 1 FROM jobs r WHERE r.portal = j.portal
                                              AND r.deal_id = j.deal_id AND r.state = 'running')
                            ORDER BY j.next_run_at, j.id LIMIT 1)
                         RETURNING {JOB_COLUMNS}"
                    ),
                    params![now, now + ms(lease)],
                    job_from_row,
                )
                .optional()?;
            tx.commit()?;
            Ok(claimed)
        })
    }

    pub(super) fn heartbeat(&self, job_id: i64, lease: Duration) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute(
                "UPDATE jobs SET lease_until = ?2 WHERE id = ?1 AND state = 'running'",
                params![job_id, now_ms() + ms(lease)],
            )?;
            Ok(())
        })
    }

    pub(super) fn finish(
        &self,
        job_id: i64,
        state: JobState,
        message: &str,
        target_deal_id: Option<i64>,
    ) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute(
                "UPDATE jobs SET state = ?2, message = ?3, target_deal_id = COALESCE(?4, target_deal_id),
                        lease_until = NULL, updated_at = ?5 WHERE id = ?1",
                params![job_id, state.as_str(), message, target_deal_id, now_ms()],
            )?;
            Ok(())
        })
    }

    pub(super) fn retry_later(
        &self,
        job_id: i64,
        delay: Duration,
        message: &str,
    ) -> Result<(), StoreError> {
        self.with(|c| {
            let now = now_ms();
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            // A newer request may already wait for this deal: merge into it.
            let waiting: Option<i64> = tx
                .query_row(
                    "SELECT p.id FROM jobs p JOIN jobs j ON p.portal = j.portal AND p.deal_id = j.deal_id
                     WHERE j.id = ?1 AND p.state = 'pending'",
                    params![job_id],
                    |row| row.get(0),
                )
                .optional()?;
            match waiting {
                Some(other) => {
                    tx.execute(
                        "UPDATE rule_calls SET job_id = ?2 WHERE job_id = ?1 AND answered_at IS NULL",
                        params![job_id, other],
                    )?;
                    tx.execute(
                        "UPDATE jobs SET next_run_at = MAX(next_run_at, ?2) WHERE id = ?1",
                        params![other, now + ms(delay)],
                    )?;
                    tx.execute(
                        "UPDATE jobs SET state = 'done', message = ?2, lease_until = NULL, updated_at = ?3 WHERE id = ?1",
                        params![job_id, format!("merged into job {other} after: {message}"), now],
                    )?;
                }
                None => {
                    tx.execute(
                        "UPDATE jobs SET state = 'pending', next_run_at = ?2, message = ?3,
                                lease_until = NULL, updated_at = ?4 WHERE id = ?1",
                        params![job_id, now + ms(delay), message, now],
                    )?;
                }
            }
            tx.commit()?;
            Ok(())
        })
    }

    pub(super) fn release_running(&self) -> Result<u64, StoreError> {
        self.with(|c| {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            move_rule_calls_of_superseded(&tx, None)?;
            tx.execute(
                "UPDATE jobs SET state = 'done', message = 'superseded by a newer request', lease_until = NULL
                 WHERE state = 'running' AND EXISTS (SELECT 1 FROM jobs p WHERE p.portal = jobs.portal
                       AND p.deal_id = jobs.deal_id AND p.state = 'pending')",
                [],
            )?;
            let released = tx.execute(
                "UPDATE jobs SET state = 'pending', lease_until = NULL WHERE state = 'running'",
                [],
            )?;
            tx.commit()?;
            Ok(released as u64)
        })
    }

    pub(super) fn job(&self, id: i64) -> Result<Option<Job>, StoreError> {
        self.with(|c| {
            Ok(c.query_row(
                &format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?1"),
                params![id],
                job_from_row,
            )
            .optional()?)
        })
    }

    pub(super) fn jobs(&self, state: Option<JobState>, limit: u32) -> Result<Vec<Job>, StoreError> {
        self.with(|c| {
            let mut statement = c.prepare(&format!(
                "SELECT {JOB_COLUMNS} FROM jobs WHERE (?1 IS NULL OR state = ?1) ORDER BY id DESC LIMIT ?2"
            ))?;
            let rows = statement.query_map(params![state.map(JobState::as_str), limit], job_from_row)?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    pub(super) fn replay(&self, id: i64) -> Result<(), StoreError> {
        let job = self.job(id)?.ok_or(StoreError::NoSuchJob(id))?;
        if matches!(job.state, JobState::Pending | JobState::Running) {
            return Err(StoreError::NotReplayable {
                id,
                state: job.state.as_str().into(),
            });
        }
        self.enqueue(&job.portal, job.deal_id, "replay")?;
        Ok(())
    }

    pub(super) fn replay_failed(&self) -> Result<u64, StoreError> {
        let failed = self.jobs(Some(JobState::Failed), u32::MAX)?;
        let mut seen = std::collections::HashSet::new();
        for job in &failed {
            if seen.insert((job.portal.clone(), job.deal_id)) {
                self.enqueue(&job.portal, job.deal_id, "replay")?;
            }
        }
        self.with(|c| {
            c.execute(
                "UPDATE jobs SET state = 'done', message = 'replayed: ' || COALESCE(message, ''), updated_at = ?1
                 WHERE state = 'failed'",
                params![now_ms()],
            )?;
            Ok(())
        })?;
        Ok(seen.len() as u64)
    }

    pub(super) fn link(&self, key: &LinkKey<'_>) -> Result<Option<Link>, StoreError> {
        self.with(|c| {
            Ok(c.query_row(
                "SELECT target_id, synced_hash FROM links
                 WHERE kind = ?1 AND source_portal = ?2 AND source_id = ?3 AND target_portal = ?4",
                params![
                    key.kind.as_str(),
                    key.source_portal,
                    key.source_id,
                    key.target_portal
                ],
                |row| {
                    Ok(Link {
                        target_id: row.get(0)?,
                        synced_hash: row.get(1)?,
                    })
                },
            )
            .optional()?)
        })
    }

    pub(super) fn mark_creating(&self, key: &LinkKey<'_>) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute(
                "INSERT INTO links (kind, source_portal, source_id, target_portal, target_id, updated_at)
                 VALUES (?1, ?2, ?3, ?4, NULL, ?5)
                 ON CONFLICT DO NOTHING",
                params![
                    key.kind.as_str(),
                    key.source_portal,
                    key.source_id,
                    key.target_portal,
                    now_ms()
                ],
            )?;
            Ok(())
        })
    }

    pub(super) fn set_link(
        &self,
        key: &LinkKey<'_>,
        target_id: i64,
        synced_hash: Option<&str>,
    ) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute(
                "INSERT INTO links (kind, source_portal, source_id, target_portal, target_id, synced_hash, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT DO UPDATE SET target_id = excluded.target_id,
                    synced_hash = excluded.synced_hash, updated_at = excluded.updated_at",
                params![
                    key.kind.as_str(),
                    key.source_portal,
                    key.source_id,
                    key.target_portal,
                    target_id,
                    synced_hash,
                    now_ms()
                ],
            )?;
            Ok(())
        })
    }

    pub(super) fn copied_files(
        &self,
        key: &LinkKey<'_>,
        field: &str,
    ) -> Result<Vec<i64>, StoreError> {
        self.with(|c| {
            let mut statement = c.prepare(
                "SELECT file_id FROM copied_files WHERE source_portal = ?1 AND deal_id = ?2
                 AND target_portal = ?3 AND field = ?4 ORDER BY file_id",
            )?;
            let rows = statement.query_map(
                params![key.source_portal, key.source_id, key.target_portal, field],
                |row| row.get(0),
            )?;
            Ok(rows.collect::<Result<Vec<i64>, _>>()?)
        })
    }

    pub(super) fn add_copied_files(
        &self,
        key: &LinkKey<'_>,
        field: &str,
        file_ids: &[i64],
    ) -> Result<(), StoreError> {
        self.with(|c| {
            let tx = c.transaction()?;
            for file_id in file_ids {
                tx.execute(
                    "INSERT OR IGNORE INTO copied_files (source_portal, deal_id, target_portal, field, file_id)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![key.source_portal, key.source_id, key.target_portal, field, file_id],
                )?;
            }
            tx.commit()?;
            Ok(())
        })
    }

    pub(super) fn stats(&self) -> Result<QueueStats, StoreError> {
        self.with(|c| {
            let mut statement = c.prepare("SELECT state, COUNT(*) FROM jobs GROUP BY state")?;
            let counted: Vec<(String, u64)> = statement
                .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?
                .collect::<Result<_, _>>()?;
            let by_state = JobState::ALL
                .into_iter()
                .map(|state| {
                    let count = counted
                        .iter()
                        .find(|(name, _)| name == state.as_str())
                        .map_or(0, |(_, n)| *n);
                    (state, count)
                })
                .collect();
            let oldest: Option<i64> = c.query_row(
                "SELECT MIN(created_at) FROM jobs WHERE state IN ('pending', 'running')",
                [],
                |row| row.get(0),
            )?;
            Ok(QueueStats {
                by_state,
                oldest_pending_age: oldest
                    .map(|at| Duration::from_millis((now_ms() - at).max(0) as u64)),
            })
        })
    }

    pub(super) fn record_attempt(&self, job_id: i64, attempt: &Attempt) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute(
                "INSERT OR REPLACE INTO attempts (job_id, number, started_at, finished_at, outcome, message)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    job_id,
                    attempt.number,
                    attempt.started_at_ms,
                    attempt.finished_at_ms,
                    attempt.outcome,
                    attempt.message
                ],
            )?;
            Ok(())
        })
    }

    pub(super) fn attempts(&self, job_id: i64) -> Result<Vec<Attempt>, StoreError> {
        self.with(|c| {
            let mut statement = c.prepare(
                "SELECT number, started_at, finished_at, outcome, message FROM attempts
                 WHERE job_id = ?1 ORDER BY number",
            )?;
            let rows = statement.query_map(params![job_id], |row| {
                Ok(Attempt {
                    number: row.get(0)?,
                    started_at_ms: row.get(1)?,
                    finished_at_ms: row.get(2)?,
                    outcome: row.get(3)?,
                    message: row.get(4)?,
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }
}
