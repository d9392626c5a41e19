//! Backfill cursors and leases in PostgreSQL (see `backfills`): the row is
//! locked (`FOR UPDATE`) while it is taken, and every cursor move checks
//! the holder in the same transaction as the enqueue it records.

use std::time::Duration;

use tokio_postgres::Row;

use super::backfills::{BackfillCursor, BackfillRow, BackfillStart, COLUMNS, may_take};
use super::postgres::PgStore;
use super::postgres_jobs::MERGE;
use super::sqlite_jobs::{BACKFILL_TRIGGER, ms};
use super::{Enqueued, JobState, StoreError};

fn row_from(row: &Row) -> BackfillRow {
    BackfillRow {
        route: row.get(0),
        filter: row.get(1),
        cursor: BackfillCursor {
            last_id: row.get(2),
            enqueued: row.get::<_, i64>(3).max(0) as u64,
            already: row.get::<_, i64>(4).max(0) as u64,
        },
        holder: row.get(5),
        lease_until_ms: row.get(6),
        started_at_ms: row.get(7),
        updated_at_ms: row.get(8),
        finished_at_ms: row.get(9),
    }
}

const SAVE: &str = "UPDATE backfills SET last_id = $3, enqueued = $4, already = $5,
        lease_until = b24_now_ms() + $6, updated_at = b24_now_ms()
     WHERE route = $1 AND holder = $2";

impl PgStore {
    pub(super) async fn backfill(&self, route: &str) -> Result<Option<BackfillRow>, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                &format!("SELECT {COLUMNS} FROM backfills WHERE route = $1"),
                &[&route],
            )
            .await?;
        Ok(row.as_ref().map(row_from))
    }

    pub(super) async fn begin_backfill(
        &self,
        route: &str,
        filter: &str,
        holder: &str,
        lease: Duration,
        take_over: Option<&str>,
        restart: bool,
    ) -> Result<BackfillStart, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let inserted = tx
            .execute(
                "INSERT INTO backfills (route, filter, enqueued, already, holder, lease_until, started_at, updated_at)
                 VALUES ($1, $2, 0, 0, $3, b24_now_ms() + $4, b24_now_ms(), b24_now_ms())
                 ON CONFLICT (route) DO NOTHING",
                &[&route, &filter, &holder, &ms(lease)],
            )
            .await?;
        let select = format!("SELECT {COLUMNS} FROM backfills WHERE route = $1 FOR UPDATE");
        let row = row_from(&tx.query_one(&select, &[&route]).await?);
        let resumed = if inserted == 1 {
            false
        } else {
            let now: i64 = tx.query_one("SELECT b24_now_ms()", &[]).await?.get(0);
            if !may_take(&row, holder, take_over, now) {
                return Ok(BackfillStart::Held(row));
            }
            let resume = !restart && row.filter == filter && row.finished_at_ms.is_none();
            if !resume {
                tx.execute(
                    "UPDATE backfills SET filter = $2, last_id = NULL, enqueued = 0, already = 0,
                            started_at = b24_now_ms(), finished_at = NULL WHERE route = $1",
                    &[&route, &filter],
                )
                .await?;
            }
            tx.execute(
                "UPDATE backfills SET holder = $2, lease_until = b24_now_ms() + $3,
                        updated_at = b24_now_ms() WHERE route = $1",
                &[&route, &holder, &ms(lease)],
            )
            .await?;
            resume
        };
        let row = row_from(&tx.query_one(&select, &[&route]).await?);
        tx.commit().await?;
        Ok(BackfillStart::Started { row, resumed })
    }

    pub(super) async fn backfill_enqueue(
        &self,
        route: &str,
        holder: &str,
        portal: &str,
        deal_id: i64,
        cursor: BackfillCursor,
        lease: Duration,
    ) -> Result<Option<Enqueued>, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let (enqueued, already) = (cursor.enqueued as i64, cursor.already as i64);
        let saved = tx
            .execute(
                SAVE,
                &[
                    &route,
                    &holder,
                    &cursor.last_id,
                    &enqueued,
                    &already,
                    &ms(lease),
                ],
            )
            .await?;
        if saved != 1 {
            return Ok(None);
        }
        tx.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended($1::text || '/' || $2::bigint::text, 0))",
            &[&portal, &deal_id],
        )
        .await?;
        let row = tx
            .query_one(
                &format!(
                    "INSERT INTO jobs (portal, deal_id, trigger, state, next_run_at, created_at, updated_at)
                     VALUES ($1, $2, $3, 'pending', b24_now_ms(), b24_now_ms(), b24_now_ms())
                     ON CONFLICT (portal, deal_id) WHERE state = 'pending'
                     DO UPDATE SET {MERGE}
                     RETURNING id, (xmax::text <> '0') AS merged"
                ),
                &[&portal, &deal_id, &BACKFILL_TRIGGER],
            )
            .await?;
        tx.commit().await?;
        Ok(Some(Enqueued {
            job_id: row.get(0),
            coalesced: row.get(1),
        }))
    }

    pub(super) async fn save_backfill(
        &self,
        route: &str,
        holder: &str,
        cursor: BackfillCursor,
        lease: Duration,
    ) -> Result<bool, StoreError> {
        let client = self.client().await?;
        let (enqueued, already) = (cursor.enqueued as i64, cursor.already as i64);
        let saved = client
            .execute(
                SAVE,
                &[
                    &route,
                    &holder,
                    &cursor.last_id,
                    &enqueued,
                    &already,
                    &ms(lease),
                ],
            )
            .await?;
        Ok(saved == 1)
    }

    pub(super) async fn end_backfill(
        &self,
        route: &str,
        holder: &str,
        cursor: BackfillCursor,
        finished: bool,
    ) -> Result<(), StoreError> {
        let client = self.client().await?;
        let (enqueued, already) = (cursor.enqueued as i64, cursor.already as i64);
        client
            .execute(
                "UPDATE backfills SET last_id = $3, enqueued = $4, already = $5, holder = NULL,
                        lease_until = NULL, updated_at = b24_now_ms(),
                        finished_at = CASE WHEN $6 THEN b24_now_ms() ELSE finished_at END
                 WHERE route = $1 AND holder = $2",
                &[
                    &route,
                    &holder,
                    &cursor.last_id,
                    &enqueued,
                    &already,
                    &finished,
                ],
            )
            .await?;
        Ok(())
    }

    pub(super) async fn job_states(&self, ids: &[i64]) -> Result<Vec<(i64, JobState)>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query("SELECT id, state FROM jobs WHERE id = ANY($1)", &[&ids])
            .await?;
        Ok(rows
            .iter()
            .filter_map(|row| {
                let state: String = row.get(1);
                JobState::parse(&state).map(|s| (row.get::<_, i64>(0), s))
            })
            .collect())
    }

    pub(super) async fn waiting_backfill_jobs(&self, portal: &str) -> Result<Vec<i64>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT id FROM jobs WHERE portal = $1 AND trigger = $2
                 AND state IN ('pending', 'running') ORDER BY id",
                &[&portal, &BACKFILL_TRIGGER],
            )
            .await?;
        Ok(rows.iter().map(|row| row.get(0)).collect())
    }

    pub(super) async fn pending_by_trigger(&self) -> Result<(u64, u64), StoreError> {
        let client = self.client().await?;
        let row = client
            .query_one(
                "SELECT COUNT(*) FILTER (WHERE trigger <> $1), COUNT(*) FILTER (WHERE trigger = $1)
                 FROM jobs WHERE state = 'pending'",
                &[&BACKFILL_TRIGGER],
            )
            .await?;
        Ok((
            row.get::<_, i64>(0).max(0) as u64,
            row.get::<_, i64>(1).max(0) as u64,
        ))
    }
}
