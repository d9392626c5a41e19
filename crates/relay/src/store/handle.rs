//! [`Store`]: the one async handle the rest of the relay uses. Every method
//! runs the backend's work itself — SQLite on its writer thread and on
//! tokio's blocking threads, PostgreSQL through its async pool — so no
//! caller ever stalls an async worker thread, and callers never choose how
//! a backend runs.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use b24_client::TokenPair;

use super::postgres::PgStore;
use super::sqlite::SqliteStore;
use super::{
    AppInstall, Attempt, Enqueued, Job, JobState, Link, LinkKey, LinkKind, QueueStats, RuleCall,
    StoreError,
};
use super::{sqlite_app as app, sqlite_claims as claims, sqlite_jobs as jobs};
use crate::config::{StoreConfig, StoreLocation};

/// The relay's persistent state: the durable queue, the link tables and the
/// installed applications. Cheap to clone; clones share one backend.
#[derive(Clone)]
pub struct Store {
    pub(super) backend: Backend,
    options: StoreOptions,
}

#[derive(Clone)]
pub(super) enum Backend {
    Sqlite(Arc<SqliteStore>),
    Postgres(Arc<PgStore>),
}

/// How the store treats jobs, whatever the backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreOptions {
    /// Attempts cut short by a stopping relay before a job fails.
    pub max_interruptions: u32,
    /// An interrupted job waits `2^n` times this (at most 64 times) before
    /// it is due again, so that the others go first.
    pub interrupted_delay: Duration,
    /// SQLite: one commit for every write queued meanwhile (`false`: one
    /// commit, and one fsync, per write).
    pub group_commit: bool,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            max_interruptions: 10,
            interrupted_delay: Duration::from_secs(1),
            group_commit: true,
        }
    }
}

/// An owned [`LinkKey`], for work that outlives the caller's borrow.
struct OwnedKey {
    kind: LinkKind,
    source_portal: String,
    source_id: i64,
    target_portal: String,
}

impl OwnedKey {
    fn of(key: &LinkKey<'_>) -> Self {
        Self {
            kind: key.kind,
            source_portal: key.source_portal.to_owned(),
            source_id: key.source_id,
            target_portal: key.target_portal.to_owned(),
        }
    }

    fn key(&self) -> LinkKey<'_> {
        LinkKey {
            kind: self.kind,
            source_portal: &self.source_portal,
            source_id: self.source_id,
            target_portal: &self.target_portal,
        }
    }
}

impl Store {
    /// Opens the configured store: SQLite (created when there is no trace
    /// of one; refused when empty, damaged, lost or read-only) or
    /// PostgreSQL (migrations applied).
    pub async fn open(config: &StoreConfig, options: StoreOptions) -> Result<Self, StoreError> {
        let options = StoreOptions {
            group_commit: config.group_commit,
            ..options
        };
        match &config.location {
            StoreLocation::Sqlite(path) => Self::open_sqlite_with(path, options).await,
            StoreLocation::Postgres(pg) => Ok(Self {
                backend: Backend::Postgres(Arc::new(PgStore::open(pg).await?)),
                options,
            }),
        }
    }

    /// Opens the SQLite store at `path` with the default options.
    pub async fn open_sqlite(path: &Path) -> Result<Self, StoreError> {
        Self::open_sqlite_with(path, StoreOptions::default()).await
    }

    pub async fn open_sqlite_with(path: &Path, options: StoreOptions) -> Result<Self, StoreError> {
        let path = path.to_owned();
        let group_commit = options.group_commit;
        let db = tokio::task::spawn_blocking(move || SqliteStore::open(&path, group_commit))
            .await
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic.into_panic()))?;
        Ok(Self {
            backend: Backend::Sqlite(Arc::new(db)),
            options,
        })
    }

    /// Applies the store's schema migrations (`b24-relay store migrate`;
    /// `serve` does it at start too): returns how many were applied.
    pub async fn migrate(config: &StoreConfig) -> Result<usize, StoreError> {
        match &config.location {
            StoreLocation::Sqlite(path) => {
                let store = Self::open_sqlite(path).await?;
                let migrated = match &store.backend {
                    Backend::Sqlite(db) => db.migrated,
                    Backend::Postgres(_) => 0,
                };
                store.close().await;
                Ok(migrated)
            }
            StoreLocation::Postgres(pg) => {
                let store = PgStore::open(pg).await?;
                let applied = store.applied;
                store.close().await;
                Ok(applied)
            }
        }
    }

    /// Everything the store holds, as one consistent snapshot (`store copy`).
    pub async fn export(&self) -> Result<super::copy::Snapshot, StoreError> {
        match &self.backend {
            Backend::Sqlite(db) => db.read(super::sqlite_copy::export).await,
            Backend::Postgres(pg) => pg.export().await,
        }
    }

    /// Imports another store's snapshot (`store copy`); `source` names that
    /// store, so that copying again updates what was copied.
    pub async fn import(
        &self,
        source: &str,
        snapshot: &super::copy::Snapshot,
    ) -> Result<super::copy::CopyReport, StoreError> {
        match &self.backend {
            Backend::Sqlite(_) => Err(super::copy::not_supported(
                "copying into SQLite (copy into PostgreSQL, or keep the SQLite file)",
            )),
            Backend::Postgres(pg) => pg.import(source, snapshot).await,
        }
    }

    /// The rate budget every replica of this store shares (PostgreSQL with
    /// `rate_scope = "shared"`); `None`: each process keeps its own.
    pub fn shared_budget(
        &self,
        scope: crate::config::RateScope,
    ) -> Option<Arc<dyn b24_client::SharedBucket>> {
        match (&self.backend, scope) {
            (Backend::Postgres(pg), crate::config::RateScope::Shared) => {
                Some(Arc::new(super::postgres_shared::PgBudget {
                    store: pg.clone(),
                }))
            }
            _ => None,
        }
    }

    /// The shared budgets' levels (requests not drained at their last
    /// reservation), by portal host, for metrics.
    pub async fn budgets(&self) -> Result<Vec<(String, f64)>, StoreError> {
        match &self.backend {
            Backend::Sqlite(_) => Ok(Vec::new()),
            Backend::Postgres(pg) => pg.budgets().await,
        }
    }

    /// Makes an OAuth refresh of `portal`'s application exclusive across
    /// the replicas (PostgreSQL: an advisory lock held by the returned
    /// guard), and returns the pair stored now.
    pub async fn begin_refresh(
        &self,
        portal: &str,
    ) -> Result<b24_client::RefreshGuard, StoreError> {
        match &self.backend {
            Backend::Sqlite(_) => Ok(b24_client::RefreshGuard {
                stored: self
                    .app_install(portal)
                    .await?
                    .map(|install| install.tokens),
                held: None,
            }),
            Backend::Postgres(pg) => pg.begin_refresh(portal).await,
        }
    }

    /// Whether several `serve` processes may share this store.
    pub fn shared_by_replicas(&self) -> bool {
        matches!(self.backend, Backend::Postgres(_))
    }

    /// This process's name in leases and in the replicas table (PostgreSQL).
    pub fn replica_name(&self) -> Option<&str> {
        match &self.backend {
            Backend::Sqlite(_) => None,
            Backend::Postgres(pg) => Some(&pg.replica),
        }
    }

    /// Says that this process serves (PostgreSQL: a row in `replicas`,
    /// refreshed by [`Store::replica_alive`]).
    pub async fn replica_alive(&self) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Sqlite(_) => Ok(()),
            Backend::Postgres(pg) => pg.replica_seen().await,
        }
    }

    /// This process stops serving.
    pub async fn replica_gone(&self) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Sqlite(_) => Ok(()),
            Backend::Postgres(pg) => pg.replica_gone().await,
        }
    }

    /// Finishes the queued writes and closes the store (for every clone of
    /// this handle); a command that is about to exit calls it.
    pub async fn close(&self) {
        match &self.backend {
            Backend::Sqlite(db) => db.close().await,
            Backend::Postgres(pg) => pg.close().await,
        }
    }

    /// Queues a transfer of `deal_id`, merging into a pending job for the
    /// same deal. Durable when it returns.
    pub async fn enqueue(
        &self,
        portal: &str,
        deal_id: i64,
        trigger: &str,
    ) -> Result<Enqueued, StoreError> {
        match &self.backend {
            Backend::Sqlite(db) => {
                let (portal, trigger) = (portal.to_owned(), trigger.to_owned());
                db.write(move |c| jobs::enqueue(c, &portal, deal_id, &trigger))
                    .await
            }
            Backend::Postgres(pg) => pg.enqueue(portal, deal_id, trigger).await,
        }
    }

    /// Claims the next due job whose deal is not being transferred already.
    pub async fn claim(&self, lease: Duration) -> Result<Option<Job>, StoreError> {
        let options = self.options;
        match &self.backend {
            Backend::Sqlite(db) => db.write(move |c| jobs::claim(c, lease, &options)).await,
            Backend::Postgres(pg) => pg.claim(lease, &options).await,
        }
    }

    /// Extends the lease of a running job.
    pub async fn heartbeat(&self, job_id: i64, lease: Duration) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Sqlite(db) => db.write(move |c| jobs::heartbeat(c, job_id, lease)).await,
            Backend::Postgres(pg) => pg.heartbeat(job_id, lease).await,
        }
    }

    pub async fn finish(
        &self,
        job_id: i64,
        state: JobState,
        message: &str,
        target_deal_id: Option<i64>,
    ) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Sqlite(db) => {
                let message = message.to_owned();
                db.write(move |c| jobs::finish(c, job_id, state, &message, target_deal_id))
                    .await
            }
            Backend::Postgres(pg) => pg.finish(job_id, state, message, target_deal_id).await,
        }
    }

    /// Back to pending, due after `delay`.
    pub async fn retry_later(
        &self,
        job_id: i64,
        delay: Duration,
        message: &str,
    ) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Sqlite(db) => {
                let message = message.to_owned();
                db.write(move |c| jobs::retry_later(c, job_id, delay, &message))
                    .await
            }
            Backend::Postgres(pg) => pg.retry_later(job_id, delay, message).await,
        }
    }

    /// At the start of the only serving process (SQLite): every running job
    /// is pending again, as an interrupted attempt. With PostgreSQL other
    /// replicas may be working: nothing is released here, and a killed
    /// replica's jobs are due again when their lease lapses.
    pub async fn release_running(&self) -> Result<u64, StoreError> {
        let options = self.options;
        match &self.backend {
            Backend::Sqlite(db) => db.write(move |c| jobs::release_running(c, &options)).await,
            Backend::Postgres(_) => Ok(0),
        }
    }

    /// Gives a claimed job back on a graceful stop: due again at once, the
    /// unfinished attempt not counted, and no interruption either.
    pub async fn release(&self, job_id: i64) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Sqlite(db) => db.write(move |c| jobs::release(c, job_id)).await,
            Backend::Postgres(pg) => pg.release(job_id).await,
        }
    }

    pub async fn job(&self, id: i64) -> Result<Option<Job>, StoreError> {
        match &self.backend {
            Backend::Sqlite(db) => db.read(move |c| jobs::job(c, id)).await,
            Backend::Postgres(pg) => pg.job(id).await,
        }
    }

    /// Jobs, newest first, of one state or all.
    pub async fn jobs(&self, state: Option<JobState>, limit: u32) -> Result<Vec<Job>, StoreError> {
        match &self.backend {
            Backend::Sqlite(db) => db.read(move |c| jobs::jobs(c, state, limit)).await,
            Backend::Postgres(pg) => pg.jobs(state, limit).await,
        }
    }

    /// Queues a finished or failed job again, attempts reset.
    pub async fn replay(&self, id: i64) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Sqlite(db) => db.write(move |c| jobs::replay(c, id)).await,
            Backend::Postgres(pg) => pg.replay(id).await,
        }
    }

    /// Queues every failed deal again; returns how many deals.
    pub async fn replay_failed(&self) -> Result<u64, StoreError> {
        match &self.backend {
            Backend::Sqlite(db) => db.write(jobs::replay_failed).await,
            Backend::Postgres(pg) => pg.replay_failed().await,
        }
    }

    pub async fn link(&self, key: &LinkKey<'_>) -> Result<Option<Link>, StoreError> {
        match &self.backend {
            Backend::Sqlite(db) => {
                let key = OwnedKey::of(key);
                db.read(move |c| jobs::link(c, &key.key())).await
            }
            Backend::Postgres(pg) => pg.link(key).await,
        }
    }

    /// Records that a create is about to be sent (before sending it).
    pub async fn mark_creating(&self, key: &LinkKey<'_>) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Sqlite(db) => {
                let key = OwnedKey::of(key);
                db.write(move |c| jobs::mark_creating(c, &key.key())).await
            }
            Backend::Postgres(pg) => pg.mark_creating(key).await,
        }
    }

    pub async fn set_link(
        &self,
        key: &LinkKey<'_>,
        target_id: i64,
        synced_hash: Option<&str>,
    ) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Sqlite(db) => {
                let key = OwnedKey::of(key);
                let synced_hash = synced_hash.map(str::to_owned);
                db.write(move |c| jobs::set_link(c, &key.key(), target_id, synced_hash.as_deref()))
                    .await
            }
            Backend::Postgres(pg) => pg.set_link(key, target_id, synced_hash).await,
        }
    }

    /// Source file ids already copied into a target deal's field.
    pub async fn copied_files(
        &self,
        key: &LinkKey<'_>,
        field: &str,
    ) -> Result<Vec<i64>, StoreError> {
        match &self.backend {
            Backend::Sqlite(db) => {
                let (key, field) = (OwnedKey::of(key), field.to_owned());
                db.read(move |c| jobs::copied_files(c, &key.key(), &field))
                    .await
            }
            Backend::Postgres(pg) => pg.copied_files(key, field).await,
        }
    }

    pub async fn add_copied_files(
        &self,
        key: &LinkKey<'_>,
        field: &str,
        file_ids: &[i64],
    ) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Sqlite(db) => {
                let (key, field, file_ids) =
                    (OwnedKey::of(key), field.to_owned(), file_ids.to_vec());
                db.write(move |c| jobs::add_copied_files(c, &key.key(), &field, &file_ids))
                    .await
            }
            Backend::Postgres(pg) => pg.add_copied_files(key, field, file_ids).await,
        }
    }

    /// Counts for metrics.
    pub async fn stats(&self) -> Result<QueueStats, StoreError> {
        match &self.backend {
            Backend::Sqlite(db) => db.read(jobs::stats).await,
            Backend::Postgres(pg) => pg.stats().await,
        }
    }

    pub async fn record_attempt(&self, job_id: i64, attempt: &Attempt) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Sqlite(db) => {
                let attempt = attempt.clone();
                db.write(move |c| jobs::record_attempt(c, job_id, &attempt))
                    .await
            }
            Backend::Postgres(pg) => pg.record_attempt(job_id, attempt).await,
        }
    }

    /// Tries of a job, oldest first.
    pub async fn attempts(&self, job_id: i64) -> Result<Vec<Attempt>, StoreError> {
        match &self.backend {
            Backend::Sqlite(db) => db.read(move |c| jobs::attempts(c, job_id)).await,
            Backend::Postgres(pg) => pg.attempts(job_id).await,
        }
    }

    /// Records an install (or re-install): replaces tokens and application
    /// token, clears a re-install flag.
    pub async fn save_app_install(
        &self,
        portal: &str,
        install: &AppInstall,
    ) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Sqlite(db) => {
                let (portal, install) = (portal.to_owned(), install.clone());
                db.write(move |c| app::save_install(c, &portal, &install))
                    .await
            }
            Backend::Postgres(pg) => pg.save_install(portal, install).await,
        }
    }

    pub async fn app_install(&self, portal: &str) -> Result<Option<AppInstall>, StoreError> {
        match &self.backend {
            Backend::Sqlite(db) => {
                let portal = portal.to_owned();
                db.read(move |c| app::install(c, &portal)).await
            }
            Backend::Postgres(pg) => pg.install(portal).await,
        }
    }

    /// Replaces the token pair after a refresh (one statement: atomic).
    pub async fn save_app_tokens(
        &self,
        portal: &str,
        tokens: &TokenPair,
    ) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Sqlite(db) => {
                let (portal, tokens) = (portal.to_owned(), tokens.clone());
                db.write(move |c| app::save_tokens(c, &portal, &tokens))
                    .await
            }
            Backend::Postgres(pg) => pg.save_tokens(portal, tokens).await,
        }
    }

    pub async fn mark_reinstall_needed(
        &self,
        portal: &str,
        reason: &str,
    ) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Sqlite(db) => {
                let (portal, reason) = (portal.to_owned(), reason.to_owned());
                db.write(move |c| app::flag_reinstall(c, &portal, &reason))
                    .await
            }
            Backend::Postgres(pg) => pg.flag_reinstall(portal, reason).await,
        }
    }

    /// Queues the deal like [`Store::enqueue`] and, in the same
    /// transaction, records the rule run that waits for the job's result.
    pub async fn enqueue_rule_call(
        &self,
        portal: &str,
        deal_id: i64,
        workflow_id: &str,
        event_token: &str,
        route: &str,
    ) -> Result<Enqueued, StoreError> {
        match &self.backend {
            Backend::Sqlite(db) => {
                let owned = [portal, workflow_id, event_token, route].map(str::to_owned);
                db.write(move |c| {
                    let [portal, workflow_id, event_token, route] = &owned;
                    app::queue_rule_call(c, portal, deal_id, workflow_id, event_token, route)
                })
                .await
            }
            Backend::Postgres(pg) => {
                pg.enqueue_rule_call(portal, deal_id, workflow_id, event_token, route)
                    .await
            }
        }
    }

    /// Unanswered rule runs whose job has ended, of one job or one portal.
    pub async fn rule_calls_to_answer(
        &self,
        portal: &str,
        job_id: Option<i64>,
    ) -> Result<Vec<RuleCall>, StoreError> {
        match &self.backend {
            Backend::Sqlite(db) => {
                let portal = portal.to_owned();
                db.read(move |c| app::calls_to_answer(c, &portal, job_id))
                    .await
            }
            Backend::Postgres(pg) => pg.calls_to_answer(portal, job_id).await,
        }
    }

    /// The run was answered, or can never be (`error`).
    pub async fn finish_rule_call(&self, id: i64, error: Option<&str>) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Sqlite(db) => {
                let error = error.map(str::to_owned);
                db.write(move |c| app::answered(c, id, error.as_deref()))
                    .await
            }
            Backend::Postgres(pg) => pg.answered(id, error).await,
        }
    }

    /// Claims the right to look up and create the target record of a
    /// source party (contact, company) for `lease`; `false` while another
    /// holder's claim runs. The holder may renew its own claim.
    pub async fn claim_party(
        &self,
        key: &LinkKey<'_>,
        holder: &str,
        lease: Duration,
    ) -> Result<bool, StoreError> {
        let (key, holder) = (OwnedKey::of(key), holder.to_owned());
        match &self.backend {
            Backend::Sqlite(db) => {
                db.write(move |c| claims::claim_party(c, &key.key(), &holder, lease))
                    .await
            }
            Backend::Postgres(pg) => pg.claim_party(&key.key(), &holder, lease).await,
        }
    }

    /// Ends `holder`'s claim on a party (its link is written, or it failed).
    pub async fn release_party(&self, key: &LinkKey<'_>, holder: &str) -> Result<(), StoreError> {
        let (key, holder) = (OwnedKey::of(key), holder.to_owned());
        match &self.backend {
            Backend::Sqlite(db) => {
                db.write(move |c| claims::release_party(c, &key.key(), &holder))
                    .await
            }
            Backend::Postgres(pg) => pg.release_party(&key.key(), &holder).await,
        }
    }

    /// The relay wrote to a source deal: one event about it, within
    /// `window`, is its own echo.
    pub async fn expect_echo(
        &self,
        portal: &str,
        deal_id: i64,
        window: Duration,
    ) -> Result<(), StoreError> {
        let portal = portal.to_owned();
        match &self.backend {
            Backend::Sqlite(db) => {
                db.write(move |c| claims::expect_echo(c, &portal, deal_id, window))
                    .await
            }
            Backend::Postgres(pg) => pg.expect_echo(&portal, deal_id, window).await,
        }
    }

    /// Whether a job of `events` events about a deal is only the relay's
    /// own echoes (they are then used up); more events than expected
    /// echoes means a person changed the deal too.
    pub async fn take_echo(
        &self,
        portal: &str,
        deal_id: i64,
        events: u32,
    ) -> Result<bool, StoreError> {
        let portal = portal.to_owned();
        match &self.backend {
            Backend::Sqlite(db) => {
                db.write(move |c| claims::take_echo(c, &portal, deal_id, events))
                    .await
            }
            Backend::Postgres(pg) => pg.take_echo(&portal, deal_id, events).await,
        }
    }
}
