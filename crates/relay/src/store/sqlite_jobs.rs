//! The queue, links, copied files and attempts in SQLite, as functions of a
//! connection. Writes run inside the writer's transaction (see
//! [`super::sqlite`]): they never begin or commit one themselves.

use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, params};

use super::{
    Attempt, Enqueued, Job, JobState, Link, LinkKey, QueueStats, StoreError, StoreOptions, now_ms,
};

pub(super) fn ms(duration: Duration) -> i64 {
    duration.as_millis().min(i64::MAX as u128) as i64
}

const JOB_COLUMNS: &str = "id, portal, deal_id, trigger, state, attempts, interruptions, coalesced, created_at, updated_at, message, target_deal_id";

fn job_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Job> {
    let state: String = row.get(4)?;
    Ok(Job {
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
    })
}

/// What a bulk transfer (`b24-relay backfill`) queues its jobs as: they
/// are claimed after every due live job, and a live request merged into
/// one of them makes it live.
pub const BACKFILL_TRIGGER: &str = "backfill";

/// Queues `deal_id`, merging into a pending job for the deal (which takes
/// the new trigger if it was a backfill job: a live request must not wait
/// behind the bulk).
pub(super) fn enqueue(
    c: &Connection,
    portal: &str,
    deal_id: i64,
    trigger: &str,
) -> Result<Enqueued, StoreError> {
    let now = now_ms();
    let merged: Option<i64> = c
        .query_row(
            "UPDATE jobs SET coalesced = coalesced + 1, updated_at = ?3,
                    trigger = CASE WHEN trigger = ?5 THEN ?4 ELSE trigger END
             WHERE portal = ?1 AND deal_id = ?2 AND state = 'pending' RETURNING id",
            params![portal, deal_id, now, trigger, BACKFILL_TRIGGER],
            |row| row.get(0),
        )
        .optional()?;
    Ok(match merged {
        Some(job_id) => Enqueued {
            job_id,
            coalesced: true,
        },
        None => {
            c.execute(
                "INSERT INTO jobs (portal, deal_id, trigger, state, next_run_at, created_at, updated_at)
                 VALUES (?1, ?2, ?3, 'pending', ?4, ?4, ?4)",
                params![portal, deal_id, trigger, now],
            )?;
            Enqueued {
                job_id: c.last_insert_rowid(),
                coalesced: false,
            }
        }
    })
}

/// Rule runs waiting on running jobs that a pending job for the same deal
/// supersedes now wait on that pending job (`stale_before`: only jobs whose
/// lease lapsed before it).
fn move_rule_calls_of_superseded(
    c: &Connection,
    stale_before: Option<i64>,
) -> Result<(), StoreError> {
    c.execute(
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

/// Running jobs whose attempt was cut short (lease lapsed before
/// `stale_before`, or all of them at the start of the only serving
/// process): superseded by a pending job for the same deal, or due again —
/// the interrupted attempt given back and counted as an interruption, the
/// job put after the others for a while (`2^n` times `interrupted_delay`)
/// so that one job cannot absorb every restart — or failed after
/// `max_interruptions`.
fn interrupted(
    c: &Connection,
    stale_before: Option<i64>,
    options: &StoreOptions,
) -> Result<u64, StoreError> {
    let now = now_ms();
    let max_interruptions = options.max_interruptions;
    let released = c.execute(
        "UPDATE jobs SET state = 'pending', lease_until = NULL,
                attempts = MAX(attempts - 1, 0), interruptions = interruptions + 1,
                next_run_at = ?2 + ?3 * (1 << MIN(interruptions + 1, 6)),
                message = 'interrupted: the relay stopped during an attempt', updated_at = ?2
         WHERE state = 'running' AND (?1 IS NULL OR lease_until < ?1)
           AND NOT EXISTS (SELECT 1 FROM jobs p WHERE p.portal = jobs.portal
                           AND p.deal_id = jobs.deal_id AND p.state = 'pending')",
        params![stale_before, now, ms(options.interrupted_delay)],
    )?;
    move_rule_calls_of_superseded(c, stale_before)?;
    c.execute(
        "UPDATE jobs SET state = 'done', message = 'superseded by a newer request', lease_until = NULL,
                updated_at = ?2
         WHERE state = 'running' AND (?1 IS NULL OR lease_until < ?1)",
        params![stale_before, now],
    )?;
    c.execute(
        "UPDATE jobs SET state = 'failed', updated_at = ?2, message =
            'the relay stopped ' || interruptions || ' times while transferring this deal '
            || '(killed, crashed or restarted mid-transfer); not tried again automatically: '
            || 'find in the log what stopped it, then run `b24-relay jobs replay ' || id || '`'
         WHERE state = 'pending' AND interruptions > ?1",
        params![max_interruptions, now],
    )?;
    Ok(released as u64)
}

/// Claims the next due job whose deal is not being transferred already:
/// live jobs (events, rules, the CLI) before backfill jobs, then the job of
/// the source portal with the fewest jobs running (one busy source cannot
/// take every worker while another source's deals wait), then the earliest
/// due.
pub(super) fn claim(
    c: &Connection,
    lease: Duration,
    options: &StoreOptions,
) -> Result<Option<Job>, StoreError> {
    let now = now_ms();
    interrupted(c, Some(now), options)?;
    Ok(c.query_row(
        &format!(
            "UPDATE jobs SET state = 'running', attempts = attempts + 1,
                    lease_until = ?2, updated_at = ?1
             WHERE id = (
                SELECT j.id FROM jobs j
                WHERE j.state = 'pending' AND j.next_run_at <= ?1
                  AND NOT EXISTS (SELECT 1 FROM jobs r WHERE r.portal = j.portal
                                  AND r.deal_id = j.deal_id AND r.state = 'running')
                ORDER BY (j.trigger = ?3),
                         (SELECT COUNT(*) FROM jobs b WHERE b.portal = j.portal AND b.state = 'running'),
                         j.next_run_at, j.id LIMIT 1)
             RETURNING {JOB_COLUMNS}"
        ),
        params![now, now + ms(lease), BACKFILL_TRIGGER],
        job_from_row,
    )
    .optional()?)
}

/// Makes every running job pending again (start-up of the only worker
/// process): each is an interrupted attempt.
pub(super) fn release_running(c: &Connection, options: &StoreOptions) -> Result<u64, StoreError> {
    interrupted(c, None, options)
}

/// Gives a claimed job back on a graceful stop: pending and due at once,
/// its attempt not counted (it did not run to an outcome) and no
/// interruption counted either.
pub(super) fn release(c: &Connection, job_id: i64) -> Result<(), StoreError> {
    c.execute(
        "UPDATE jobs SET state = 'pending', lease_until = NULL, attempts = MAX(attempts - 1, 0),
                updated_at = ?2
         WHERE id = ?1 AND state = 'running'
           AND NOT EXISTS (SELECT 1 FROM jobs p WHERE p.portal = jobs.portal
                           AND p.deal_id = jobs.deal_id AND p.state = 'pending')",
        params![job_id, now_ms()],
    )?;
    // A newer request for the deal waits: it covers this one.
    c.execute(
        "UPDATE rule_calls SET job_id = (
            SELECT p.id FROM jobs p JOIN jobs j ON p.portal = j.portal AND p.deal_id = j.deal_id
            WHERE j.id = ?1 AND p.state = 'pending')
         WHERE answered_at IS NULL AND job_id = ?1
           AND EXISTS (SELECT 1 FROM jobs p JOIN jobs j ON p.portal = j.portal
                       AND p.deal_id = j.deal_id WHERE j.id = ?1 AND p.state = 'pending')",
        params![job_id],
    )?;
    c.execute(
        "UPDATE jobs SET state = 'done', message = 'superseded by a newer request', lease_until = NULL
         WHERE id = ?1 AND state = 'running'",
        params![job_id],
    )?;
    Ok(())
}

pub(super) fn heartbeat(c: &Connection, job_id: i64, lease: Duration) -> Result<(), StoreError> {
    c.execute(
        "UPDATE jobs SET lease_until = ?2 WHERE id = ?1 AND state = 'running'",
        params![job_id, now_ms() + ms(lease)],
    )?;
    Ok(())
}

pub(super) fn finish(
    c: &Connection,
    job_id: i64,
    state: JobState,
    message: &str,
    target_deal_id: Option<i64>,
) -> Result<(), StoreError> {
    c.execute(
        "UPDATE jobs SET state = ?2, message = ?3, target_deal_id = COALESCE(?4, target_deal_id),
                lease_until = NULL, updated_at = ?5 WHERE id = ?1",
        params![job_id, state.as_str(), message, target_deal_id, now_ms()],
    )?;
    Ok(())
}

pub(super) fn retry_later(
    c: &Connection,
    job_id: i64,
    delay: Duration,
    message: &str,
) -> Result<(), StoreError> {
    let now = now_ms();
    // A newer request may already wait for this deal: merge into it.
    let waiting: Option<i64> = c
        .query_row(
            "SELECT p.id FROM jobs p JOIN jobs j ON p.portal = j.portal AND p.deal_id = j.deal_id
             WHERE j.id = ?1 AND p.state = 'pending'",
            params![job_id],
            |row| row.get(0),
        )
        .optional()?;
    match waiting {
        Some(other) => {
            c.execute(
                "UPDATE rule_calls SET job_id = ?2 WHERE job_id = ?1 AND answered_at IS NULL",
                params![job_id, other],
            )?;
            c.execute(
                "UPDATE jobs SET next_run_at = MAX(next_run_at, ?2) WHERE id = ?1",
                params![other, now + ms(delay)],
            )?;
            c.execute(
                "UPDATE jobs SET state = 'done', message = ?2, lease_until = NULL, updated_at = ?3 WHERE id = ?1",
                params![job_id, format!("merged into job {other} after: {message}"), now],
            )?;
        }
        None => {
            c.execute(
                "UPDATE jobs SET state = 'pending', next_run_at = ?2, message = ?3,
                        lease_until = NULL, updated_at = ?4 WHERE id = ?1",
                params![job_id, now + ms(delay), message, now],
            )?;
        }
    }
    Ok(())
}

pub(super) fn job(c: &Connection, id: i64) -> Result<Option<Job>, StoreError> {
    Ok(c.query_row(
        &format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?1"),
        params![id],
        job_from_row,
    )
    .optional()?)
}

pub(super) fn jobs(
    c: &Connection,
    state: Option<JobState>,
    limit: u32,
) -> Result<Vec<Job>, StoreError> {
    let mut statement = c.prepare_cached(&format!(
        "SELECT {JOB_COLUMNS} FROM jobs WHERE (?1 IS NULL OR state = ?1) ORDER BY id DESC LIMIT ?2"
    ))?;
    let rows = statement.query_map(params![state.map(JobState::as_str), limit], job_from_row)?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}

pub(super) fn replay(c: &Connection, id: i64) -> Result<(), StoreError> {
    let job = job(c, id)?.ok_or(StoreError::NoSuchJob(id))?;
    if matches!(job.state, JobState::Pending | JobState::Running) {
        return Err(StoreError::NotReplayable {
            id,
            state: job.state.as_str().into(),
        });
    }
    enqueue(c, &job.portal, job.deal_id, "replay")?;
    Ok(())
}

pub(super) fn replay_failed(c: &Connection) -> Result<u64, StoreError> {
    let failed = jobs(c, Some(JobState::Failed), u32::MAX)?;
    let mut seen = std::collections::HashSet::new();
    for job in &failed {
        if seen.insert((job.portal.clone(), job.deal_id)) {
            enqueue(c, &job.portal, job.deal_id, "replay")?;
        }
    }
    c.execute(
        "UPDATE jobs SET state = 'done', message = 'replayed: ' || COALESCE(message, ''), updated_at = ?1
         WHERE state = 'failed'",
        params![now_ms()],
    )?;
    Ok(seen.len() as u64)
}

pub(super) fn link(c: &Connection, key: &LinkKey<'_>) -> Result<Option<Link>, StoreError> {
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
}

pub(super) fn mark_creating(c: &Connection, key: &LinkKey<'_>) -> Result<(), StoreError> {
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
}

pub(super) fn set_link(
    c: &Connection,
    key: &LinkKey<'_>,
    target_id: i64,
    synced_hash: Option<&str>,
) -> Result<(), StoreError> {
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
}

pub(super) fn copied_files(
    c: &Connection,
    key: &LinkKey<'_>,
    field: &str,
) -> Result<Vec<i64>, StoreError> {
    let mut statement = c.prepare_cached(
        "SELECT file_id FROM copied_files WHERE source_portal = ?1 AND deal_id = ?2
         AND target_portal = ?3 AND field = ?4 ORDER BY file_id",
    )?;
    let rows = statement.query_map(
        params![key.source_portal, key.source_id, key.target_portal, field],
        |row| row.get(0),
    )?;
    Ok(rows.collect::<Result<Vec<i64>, _>>()?)
}

pub(super) fn add_copied_files(
    c: &Connection,
    key: &LinkKey<'_>,
    field: &str,
    file_ids: &[i64],
) -> Result<(), StoreError> {
    for file_id in file_ids {
        c.execute(
            "INSERT OR IGNORE INTO copied_files (source_portal, deal_id, target_portal, field, file_id)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![key.source_portal, key.source_id, key.target_portal, field, file_id],
        )?;
    }
    Ok(())
}

pub(super) fn stats(c: &Connection) -> Result<QueueStats, StoreError> {
    let mut statement = c.prepare_cached("SELECT state, COUNT(*) FROM jobs GROUP BY state")?;
    let counted: Vec<(String, u64)> = statement
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?
        .collect::<Result<_, _>>()?;
    let oldest: Option<i64> = c.query_row(
        "SELECT MIN(created_at) FROM jobs WHERE state IN ('pending', 'running')",
        [],
        |row| row.get(0),
    )?;
    Ok(QueueStats::from_counts(&counted, oldest))
}

pub(super) fn record_attempt(
    c: &Connection,
    job_id: i64,
    attempt: &Attempt,
) -> Result<(), StoreError> {
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
}

pub(super) fn attempts(c: &Connection, job_id: i64) -> Result<Vec<Attempt>, StoreError> {
    let mut statement = c.prepare_cached(
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
}
