//! What PostgreSQL replicas share besides the queue: one rate budget per
//! portal (a leaky bucket row per portal, reserved in one statement) and the
//! lock that makes an OAuth refresh single-flight across replicas.

use std::sync::Arc;
use std::time::Duration;

use b24_client::{BucketConfig, RefreshGuard, Secret, SharedBucket, SharedBucketFuture, TokenPair};

use super::StoreError;
use super::postgres::PgStore;

/// The database's clock in microseconds.
const NOW_US: &str = "(EXTRACT(EPOCH FROM clock_timestamp()) * 1000000)::BIGINT";

/// Key space of the refresh locks (apart from the per-deal locks).
fn refresh_lock_key(portal: &str) -> String {
    format!("oauth-refresh/{portal}")
}

/// The shared rate budget on PostgreSQL (`rate_scope = "shared"`).
pub struct PgBudget {
    pub(super) store: Arc<PgStore>,
}

impl PgStore {
    /// Reserves one request on `portal`'s bucket; returns the wait.
    async fn reserve(&self, portal: &str, config: BucketConfig) -> Result<Duration, StoreError> {
        let client = self.client().await?;
        let burst = f64::from(config.burst);
        // A new row starts full: the portal's counter may hold requests of
        // replicas that just stopped.
        let row = client
            .query_one(
                &format!(
                    "INSERT INTO rate_buckets AS b (portal, level, updated_us) VALUES ($1, $2::float8 + 1, {NOW_US})
                     ON CONFLICT (portal) DO UPDATE SET
                        level = GREATEST(b.level - (EXCLUDED.updated_us - b.updated_us)::float8 / 1e6 * $3::float8, 0) + 1,
                        updated_us = EXCLUDED.updated_us
                     RETURNING level"
                ),
                &[&portal, &burst, &config.drain_per_second],
            )
            .await?;
        let level: f64 = row.get(0);
        let excess = level - burst;
        Ok(if excess <= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(excess / config.drain_per_second)
        })
    }

    async fn saturate(&self, portal: &str, config: BucketConfig) -> Result<(), StoreError> {
        let client = self.client().await?;
        client
            .execute(
                &format!(
                    "INSERT INTO rate_buckets AS b (portal, level, updated_us) VALUES ($1, $2::float8, {NOW_US})
                     ON CONFLICT (portal) DO UPDATE SET
                        level = GREATEST(GREATEST(b.level - (EXCLUDED.updated_us - b.updated_us)::float8 / 1e6 * $3::float8, 0), $2::float8),
                        updated_us = EXCLUDED.updated_us"
                ),
                &[&portal, &f64::from(config.burst), &config.drain_per_second],
            )
            .await?;
        Ok(())
    }

    /// The shared budgets now: `(portal host, requests not drained yet)`.
    pub(super) async fn budgets(&self) -> Result<Vec<(String, f64)>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT portal, level FROM rate_buckets ORDER BY portal",
                &[],
            )
            .await?;
        // The level as of now: drained since the last reservation (the
        // drain rate is the caller's; here only what was stored).
        Ok(rows
            .iter()
            .map(|row| (row.get(0), row.get::<_, f64>(1)))
            .collect())
    }

    /// Waits for every other replica's refresh of `portal` and holds the
    /// lock until the guard is dropped (its connection is then closed,
    /// which ends the transaction and releases the lock). Returns the pair
    /// stored now.
    pub(super) async fn begin_refresh(&self, portal: &str) -> Result<RefreshGuard, StoreError> {
        let client = self.client().await?;
        client.batch_execute("BEGIN").await?;
        client
            .execute(
                "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
                &[&refresh_lock_key(portal)],
            )
            .await?;
        let stored = client
            .query_opt(
                "SELECT access_token, refresh_token FROM app_installs WHERE portal = $1",
                &[&portal],
            )
            .await?
            .map(|row| TokenPair {
                access_token: Secret::new(row.get::<_, String>(0)),
                refresh_token: Secret::new(row.get::<_, String>(1)),
            });
        Ok(RefreshGuard {
            stored,
            held: Some(Box::new(HeldConnection(Some(client)))),
        })
    }
}

/// A pooled connection in a transaction holding a lock; never given back
/// to the pool, closed on drop.
struct HeldConnection(Option<deadpool_postgres::Object>);

impl Drop for HeldConnection {
    fn drop(&mut self) {
        if let Some(object) = self.0.take() {
            drop(deadpool_postgres::Object::take(object));
        }
    }
}

impl SharedBucket for PgBudget {
    fn reserve<'a>(
        &'a self,
        portal: &'a str,
        config: BucketConfig,
    ) -> SharedBucketFuture<'a, Duration> {
        Box::pin(async move { self.store.reserve(portal, config).await.map_err(Into::into) })
    }

    fn saturate<'a>(&'a self, portal: &'a str, config: BucketConfig) -> SharedBucketFuture<'a, ()> {
        Box::pin(async move {
            self.store
                .saturate(portal, config)
                .await
                .map_err(Into::into)
        })
    }
}
