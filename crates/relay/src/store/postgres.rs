//! The PostgreSQL backend, for several `serve` replicas on one database.
//!
//! - Jobs are claimed with `FOR UPDATE SKIP LOCKED` and carry a lease with
//!   the claiming replica's name; partial unique indexes keep one waiting
//!   and one running job per deal whatever the replicas do, and every change
//!   that makes a job waiting takes a per-deal advisory lock first.
//! - Times come from the database's clock (`b24_now_ms()`), so replicas
//!   whose clocks differ agree on leases.
//! - Migrations are embedded and applied at open under an advisory lock, so
//!   replicas starting together apply each exactly once.

use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod, Runtime};
use tokio_postgres::NoTls;

use super::StoreError;
use crate::config::PostgresConfig;

/// Embedded migrations, in order; the number is the schema version.
const MIGRATIONS: &[(i32, &str)] = &[
    (1, include_str!("postgres/0001_init.sql")),
    (2, include_str!("postgres/0002_claims.sql")),
    (3, include_str!("postgres/0003_backfill.sql")),
];

/// Key of the advisory lock taken while migrating.
const MIGRATION_LOCK: i64 = 0x6232_3472_656c_6179; // "b24relay"

pub(super) struct PgStore {
    pool: Pool,
    /// This process, as it appears in leases and the replicas table.
    pub(super) replica: String,
    pub(super) shown: String,
    /// Migrations this open applied.
    pub(super) applied: usize,
}

/// A PostgreSQL error as a person can read it: the server's message, its
/// detail and SQLSTATE (tokio-postgres' own Display says only "db error").
pub(super) fn pg_error(error: tokio_postgres::Error) -> StoreError {
    if let Some(db) = error.as_db_error() {
        let mut text = format!("{}: {}", db.severity(), db.message());
        if let Some(detail) = db.detail() {
            text.push_str(&format!(" ({detail})"));
        }
        text.push_str(&format!(" [SQLSTATE {}]", db.code().code()));
        return StoreError::Postgres(text);
    }
    let mut text = error.to_string();
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    StoreError::Postgres(text)
}

impl From<tokio_postgres::Error> for StoreError {
    fn from(error: tokio_postgres::Error) -> Self {
        pg_error(error)
    }
}

fn replica_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "host".into());
    format!(
        "{host}/{}/{:x}",
        std::process::id(),
        super::now_ms() & 0xff_ffff
    )
}

impl PgStore {
    /// Connects, creates the schema if needed and applies the migrations.
    pub(super) async fn open(config: &PostgresConfig) -> Result<Self, StoreError> {
        let mut connect = config.connect.clone();
        if let Some(password) = &config.password {
            connect.password(password.expose());
        }
        connect.application_name("b24-relay");
        if connect.get_connect_timeout().is_none() {
            connect.connect_timeout(Duration::from_secs(5));
        }
        // Schema names are validated as [a-z0-9_]: safe to splice.
        connect.options(format!(
            "-c search_path={} -c client_min_messages=warning",
            config.schema
        ));
        let manager = Manager::from_config(
            connect,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(config.pool_size)
            .wait_timeout(Some(Duration::from_secs(10)))
            .create_timeout(Some(Duration::from_secs(5)))
            .runtime(Runtime::Tokio1)
            .build()
            .map_err(|e| StoreError::Unavailable(format!("PostgreSQL pool: {e}")))?;
        let mut store = Self {
            pool,
            replica: replica_name(),
            shown: config.shown.clone(),
            applied: 0,
        };
        store.applied = store.migrate(&config.schema).await?;
        Ok(store)
    }

    /// A pooled connection; a PostgreSQL that cannot be reached is said so.
    pub(super) async fn client(&self) -> Result<Object, StoreError> {
        self.pool.get().await.map_err(|error| {
            let why = match error {
                deadpool_postgres::PoolError::Backend(e) => match pg_error(e) {
                    StoreError::Postgres(text) => text,
                    other => other.to_string(),
                },
                other => other.to_string(),
            };
            StoreError::Unavailable(format!("cannot reach PostgreSQL at {}: {why}", self.shown))
        })
    }

    /// Applies the embedded migrations not applied yet; returns how many.
    pub(super) async fn migrate(&self, schema: &str) -> Result<usize, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .await?;
        tx.batch_execute(&format!(
            "CREATE SCHEMA IF NOT EXISTS {schema};
             CREATE TABLE IF NOT EXISTS {schema}.schema_migrations (
                 version INTEGER PRIMARY KEY,
                 applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
        ))
        .await?;
        let applied: Vec<i32> = tx
            .query(
                "SELECT version FROM schema_migrations ORDER BY version",
                &[],
            )
            .await?
            .iter()
            .map(|row| row.get(0))
            .collect();
        let newest = MIGRATIONS.last().map_or(0, |(v, _)| *v);
        if let Some(unknown) = applied.iter().find(|v| **v > newest) {
            return Err(StoreError::Unavailable(format!(
                "the database {} (schema {schema}) was migrated by a newer b24-relay (version {unknown}; this one knows {newest}): upgrade this b24-relay",
                self.shown
            )));
        }
        let mut count = 0;
        for (version, sql) in MIGRATIONS {
            if applied.contains(version) {
                continue;
            }
            tx.batch_execute(sql).await?;
            tx.execute(
                "INSERT INTO schema_migrations (version) VALUES ($1)",
                &[version],
            )
            .await?;
            count += 1;
        }
        tx.commit().await?;
        if count > 0 {
            tracing::info!(store = %self.shown, %schema, applied = count, "PostgreSQL migrations applied");
        }
        Ok(count)
    }

    /// Records this process as a serving replica (and that it is alive).
    pub(super) async fn replica_seen(&self) -> Result<(), StoreError> {
        let client = self.client().await?;
        client
            .execute(
                "INSERT INTO replicas (name, started_at, seen_at) VALUES ($1, b24_now_ms(), b24_now_ms())
                 ON CONFLICT (name) DO UPDATE SET seen_at = EXCLUDED.seen_at",
                &[&self.replica],
            )
            .await?;
        Ok(())
    }

    /// This replica stops serving.
    pub(super) async fn replica_gone(&self) -> Result<(), StoreError> {
        let client = self.client().await?;
        client
            .execute("DELETE FROM replicas WHERE name = $1", &[&self.replica])
            .await?;
        Ok(())
    }

    pub(super) async fn close(&self) {
        self.pool.close();
    }
}
