//! Where a bulk transfer (`b24-relay backfill`) stands, kept in the store
//! so that it can be stopped and resumed: one row per route with the last
//! source deal id handled and a lease naming the process running it, so
//! that two backfills of one route never run at once.
//!
//! The cursor moves in the same transaction as the enqueue of each deal:
//! a backfill killed at any moment resumes after the last deal it queued,
//! and never queues one twice.

use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, params};

use super::handle::Backend;
use super::sqlite_jobs::{self as jobs, BACKFILL_TRIGGER, ms};
use super::{Enqueued, JobState, Store, StoreError, now_ms};

/// A route's backfill as the store keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackfillRow {
    pub route: String,
    /// The filter it scans (category, stages, since), as shown to people:
    /// a run with another filter starts over.
    pub filter: String,
    pub cursor: BackfillCursor,
    /// The process running it, while it runs (`host/pid`).
    pub holder: Option<String>,
    pub lease_until_ms: Option<i64>,
    pub started_at_ms: i64,
    pub updated_at_ms: i64,
    /// Set when the scan reached the end of the list.
    pub finished_at_ms: Option<i64>,
}

/// How far a backfill got.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BackfillCursor {
    /// The last source deal id handled (queued or skipped); the scan
    /// resumes after it.
    pub last_id: Option<i64>,
    /// Deals queued.
    pub enqueued: u64,
    /// Deals skipped because the target already holds them (a link).
    pub already: u64,
}

/// What [`Store::begin_backfill`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackfillStart {
    /// This process holds the backfill now. `resumed`: it continues from
    /// the row's cursor (same filter, not finished, no restart asked).
    Started { row: BackfillRow, resumed: bool },
    /// Another process holds it and its lease has not lapsed.
    Held(BackfillRow),
}

pub(super) const COLUMNS: &str = "route, filter, last_id, enqueued, already, holder, lease_until, started_at, updated_at, finished_at";

fn row_from(row: &rusqlite::Row<'_>) -> rusqlite::Result<BackfillRow> {
    Ok(BackfillRow {
        route: row.get(0)?,
        filter: row.get(1)?,
        cursor: BackfillCursor {
            last_id: row.get(2)?,
            enqueued: row.get::<_, i64>(3)?.max(0) as u64,
            already: row.get::<_, i64>(4)?.max(0) as u64,
        },
        holder: row.get(5)?,
        lease_until_ms: row.get(6)?,
        started_at_ms: row.get(7)?,
        updated_at_ms: row.get(8)?,
        finished_at_ms: row.get(9)?,
    })
}

/// Whether `row` may be taken by `holder` at `now` (free, lapsed, its own,
/// or the named dead holder's).
pub(super) fn may_take(row: &BackfillRow, holder: &str, take_over: Option<&str>, now: i64) -> bool {
    match (&row.holder, row.lease_until_ms) {
        (None, _) => true,
        (Some(held), until) => {
            held == holder || Some(held.as_str()) == take_over || until.is_none_or(|u| u < now)
        }
    }
}

fn get(c: &Connection, route: &str) -> Result<Option<BackfillRow>, StoreError> {
    Ok(c.query_row(
        &format!("SELECT {COLUMNS} FROM backfills WHERE route = ?1"),
        params![route],
        row_from,
    )
    .optional()?)
}

fn begin(
    c: &Connection,
    route: &str,
    filter: &str,
    holder: &str,
    lease: Duration,
    take_over: Option<&str>,
    restart: bool,
) -> Result<BackfillStart, StoreError> {
    let now = now_ms();
    let until = now + ms(lease);
    let resumed = match get(c, route)? {
        None => {
            c.execute(
                "INSERT INTO backfills (route, filter, enqueued, already, holder, lease_until, started_at, updated_at)
                 VALUES (?1, ?2, 0, 0, ?3, ?4, ?5, ?5)",
                params![route, filter, holder, until, now],
            )?;
            false
        }
        Some(row) if !may_take(&row, holder, take_over, now) => {
            return Ok(BackfillStart::Held(row));
        }
        Some(row) => {
            let resume = !restart && row.filter == filter && row.finished_at_ms.is_none();
            if !resume {
                c.execute(
                    "UPDATE backfills SET filter = ?2, last_id = NULL, enqueued = 0, already = 0,
                            started_at = ?3, finished_at = NULL WHERE route = ?1",
                    params![route, filter, now],
                )?;
            }
            c.execute(
                "UPDATE backfills SET holder = ?2, lease_until = ?3, updated_at = ?4 WHERE route = ?1",
                params![route, holder, until, now],
            )?;
            resume
        }
    };
    let row = get(c, route)?.expect("written above");
    Ok(BackfillStart::Started { row, resumed })
}

/// Saves the cursor if `holder` still holds the backfill; `false` if not.
fn save(
    c: &Connection,
    route: &str,
    holder: &str,
    cursor: &BackfillCursor,
    lease: Duration,
) -> Result<bool, StoreError> {
    let now = now_ms();
    let changed = c.execute(
        "UPDATE backfills SET last_id = ?3, enqueued = ?4, already = ?5, lease_until = ?6, updated_at = ?7
         WHERE route = ?1 AND holder = ?2",
        params![
            route,
            holder,
            cursor.last_id,
            cursor.enqueued as i64,
            cursor.already as i64,
            now + ms(lease),
            now
        ],
    )?;
    Ok(changed == 1)
}

fn end(
    c: &Connection,
    route: &str,
    holder: &str,
    cursor: &BackfillCursor,
    finished: bool,
) -> Result<(), StoreError> {
    let now = now_ms();
    c.execute(
        "UPDATE backfills SET last_id = ?3, enqueued = ?4, already = ?5, holder = NULL,
                lease_until = NULL, updated_at = ?6,
                finished_at = CASE WHEN ?7 THEN ?6 ELSE finished_at END
         WHERE route = ?1 AND holder = ?2",
        params![
            route,
            holder,
            cursor.last_id,
            cursor.enqueued as i64,
            cursor.already as i64,
            now,
            finished
        ],
    )?;
    Ok(())
}

fn states(c: &Connection, ids: &[i64]) -> Result<Vec<(i64, JobState)>, StoreError> {
    let mut statement = c.prepare_cached("SELECT state FROM jobs WHERE id = ?1")?;
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        let state: Option<String> = statement
            .query_row(params![id], |row| row.get(0))
            .optional()?;
        if let Some(state) = state.as_deref().and_then(JobState::parse) {
            out.push((*id, state));
        }
    }
    Ok(out)
}

fn waiting_backfill_jobs(c: &Connection, portal: &str) -> Result<Vec<i64>, StoreError> {
    let mut statement = c.prepare_cached(
        "SELECT id FROM jobs WHERE portal = ?1 AND trigger = ?2
         AND state IN ('pending', 'running') ORDER BY id",
    )?;
    let rows = statement.query_map(params![portal, BACKFILL_TRIGGER], |row| row.get(0))?;
    Ok(rows.collect::<Result<Vec<i64>, _>>()?)
}

fn pending_by_trigger(c: &Connection) -> Result<(u64, u64), StoreError> {
    Ok(c.query_row(
        "SELECT COALESCE(SUM(trigger <> ?1), 0), COALESCE(SUM(trigger = ?1), 0)
         FROM jobs WHERE state = 'pending'",
        params![BACKFILL_TRIGGER],
        |row| Ok((row.get::<_, i64>(0)? as u64, row.get::<_, i64>(1)? as u64)),
    )?)
}

impl Store {
    /// The backfill row of `route`, if one ever ran.
    pub async fn backfill(&self, route: &str) -> Result<Option<BackfillRow>, StoreError> {
        match &self.backend {
            Backend::Sqlite(db) => {
                let route = route.to_owned();
                db.read(move |c| get(c, &route)).await
            }
            Backend::Postgres(pg) => pg.backfill(route).await,
        }
    }

    /// Takes the backfill of `route` for `holder` (a lease of `lease`,
    /// renewed by every save), unless another live process holds it.
    /// `take_over`: a holder known to be dead (a process of this host that
    /// no longer exists). Resumes from the stored cursor when the filter is
    /// the same and the last run did not finish, unless `restart`.
    pub async fn begin_backfill(
        &self,
        route: &str,
        filter: &str,
        holder: &str,
        lease: Duration,
        take_over: Option<&str>,
        restart: bool,
    ) -> Result<BackfillStart, StoreError> {
        match &self.backend {
            Backend::Sqlite(db) => {
                let (route, filter, holder) =
                    (route.to_owned(), filter.to_owned(), holder.to_owned());
                let take_over = take_over.map(str::to_owned);
                db.write(move |c| {
                    begin(
                        c,
                        &route,
                        &filter,
                        &holder,
                        lease,
                        take_over.as_deref(),
                        restart,
                    )
                })
                .await
            }
            Backend::Postgres(pg) => {
                pg.begin_backfill(route, filter, holder, lease, take_over, restart)
                    .await
            }
        }
    }

    /// Queues `deal_id` of `portal` as a backfill job and moves the cursor
    /// to `cursor` (which counts this deal) in one transaction; `None`
    /// (nothing queued) when `holder` no longer holds the backfill.
    pub async fn backfill_enqueue(
        &self,
        route: &str,
        holder: &str,
        portal: &str,
        deal_id: i64,
        cursor: BackfillCursor,
        lease: Duration,
    ) -> Result<Option<Enqueued>, StoreError> {
        match &self.backend {
            Backend::Sqlite(db) => {
                let (route, holder, portal) =
                    (route.to_owned(), holder.to_owned(), portal.to_owned());
                db.write(move |c| {
                    if !save(c, &route, &holder, &cursor, lease)? {
                        return Ok(None);
                    }
                    jobs::enqueue(c, &portal, deal_id, BACKFILL_TRIGGER).map(Some)
                })
                .await
            }
            Backend::Postgres(pg) => {
                pg.backfill_enqueue(route, holder, portal, deal_id, cursor, lease)
                    .await
            }
        }
    }

    /// Saves the cursor and renews the lease; `false` when `holder` no
    /// longer holds the backfill (its lease lapsed and another took it).
    pub async fn save_backfill(
        &self,
        route: &str,
        holder: &str,
        cursor: BackfillCursor,
        lease: Duration,
    ) -> Result<bool, StoreError> {
        match &self.backend {
            Backend::Sqlite(db) => {
                let (route, holder) = (route.to_owned(), holder.to_owned());
                db.write(move |c| save(c, &route, &holder, &cursor, lease))
                    .await
            }
            Backend::Postgres(pg) => pg.save_backfill(route, holder, cursor, lease).await,
        }
    }

    /// Saves the cursor and lets the backfill go; `finished`: the scan
    /// reached the end (a next run starts over).
    pub async fn end_backfill(
        &self,
        route: &str,
        holder: &str,
        cursor: BackfillCursor,
        finished: bool,
    ) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Sqlite(db) => {
                let (route, holder) = (route.to_owned(), holder.to_owned());
                db.write(move |c| end(c, &route, &holder, &cursor, finished))
                    .await
            }
            Backend::Postgres(pg) => pg.end_backfill(route, holder, cursor, finished).await,
        }
    }

    /// The states of these jobs (unknown ids left out).
    pub async fn job_states(&self, ids: &[i64]) -> Result<Vec<(i64, JobState)>, StoreError> {
        match &self.backend {
            Backend::Sqlite(db) => {
                let ids = ids.to_vec();
                db.read(move |c| states(c, &ids)).await
            }
            Backend::Postgres(pg) => pg.job_states(ids).await,
        }
    }

    /// Backfill jobs of `portal` still waiting or running (a resumed
    /// backfill counts them in its window).
    pub async fn waiting_backfill_jobs(&self, portal: &str) -> Result<Vec<i64>, StoreError> {
        match &self.backend {
            Backend::Sqlite(db) => {
                let portal = portal.to_owned();
                db.read(move |c| waiting_backfill_jobs(c, &portal)).await
            }
            Backend::Postgres(pg) => pg.waiting_backfill_jobs(portal).await,
        }
    }

    /// Pending jobs as (live, backfill) counts, for metrics.
    pub async fn pending_by_trigger(&self) -> Result<(u64, u64), StoreError> {
        match &self.backend {
            Backend::Sqlite(db) => db.read(pending_by_trigger).await,
            Backend::Postgres(pg) => pg.pending_by_trigger().await,
        }
    }
}
