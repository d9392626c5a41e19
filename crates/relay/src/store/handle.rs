//! [`Store`]: the one async handle the rest of the relay uses. Every method
//! runs the backend's blocking work itself (SQLite on tokio's blocking
//! threads), so no caller ever stalls an async worker thread on a commit,
//! and callers never choose how a backend runs.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use b24_client::TokenPair;

use super::sqlite::SqliteStore;
use super::{
    AppInstall, Attempt, Enqueued, Job, JobState, Link, LinkKey, LinkKind, QueueStats, RuleCall,
    StoreError,
};

/// The relay's persistent state: the durable queue, the link tables and the
/// installed applications. Cheap to clone; clones share one backend.
#[derive(Clone)]
pub struct Store {
    backend: Backend,
}

#[derive(Clone)]
enum Backend {
    Sqlite(Arc<SqliteStore>),
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

/// Runs `work` on a blocking thread: SQLite commits wait for the disk.
async fn blocking<T: Send + 'static>(
    db: &Arc<SqliteStore>,
    work: impl FnOnce(&SqliteStore) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    let db = Arc::clone(db);
    tokio::task::spawn_blocking(move || work(&db))
        .await
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic.into_panic()))
}

impl Store {
    /// Opens (creating if needed) the SQLite store at `path`.
    pub async fn open_sqlite(path: &Path) -> Result<Self, StoreError> {
        let path = path.to_owned();
        let db = tokio::task::spawn_blocking(move || SqliteStore::open(&path))
            .await
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic.into_panic()))?;
        Ok(Self {
            backend: Backend::Sqlite(Arc::new(db)),
        })
    }

    /// Queues a transfer of `deal_id`, merging into a pending job for the
    /// same deal. Durable when it returns.
    pub async fn enqueue(
        &self,
        portal: &str,
        deal_id: i64,
        trigger: &str,
    ) -> Result<Enqueued, StoreError> {
        let (portal, trigger) = (portal.to_owned(), trigger.to_owned());
        match &self.backend {
            Backend::Sqlite(db) => {
                blocking(db, move |db| db.enqueue(&portal, deal_id, &trigger)).await
            }
        }
    }

    /// Claims the next due job whose deal is not being transferred already.
    pub async fn claim(&self, lease: Duration) -> Result<Option<Job>, StoreError> {
        match &self.backend {
            Backend::Sqlite(db) => blocking(db, move |db| db.claim(lease)).await,
        }
    }

    /// Extends the lease of a running job.
    pub async fn heartbeat(&self, job_id: i64, lease: Duration) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Sqlite(db) => blocking(db, move |db| db.heartbeat(job_id, lease)).await,
        }
    }

    pub async fn finish(
        &self,
        job_id: i64,
        state: JobState,
        message: &str,
        target_deal_id: Option<i64>,
    ) -> Result<(), StoreError> {
        let message = message.to_owned();
        match &self.backend {
            Backend::Sqlite(db) => {
                blocking(db, move |db| {
                    db.finish(job_id, state, &message, target_deal_id)
                })
                .await
            }
        }
    }

    /// Back to pending, due after `delay`.
    pub async fn retry_later(
        &self,
        job_id: i64,
        delay: Duration,
        message: &str,
    ) -> Result<(), StoreError> {
        let message = message.to_owned();
        match &self.backend {
            Backend::Sqlite(db) => {
                blocking(db, move |db| db.retry_later(job_id, delay, &message)).await
            }
        }
    }

    /// Makes every running job pending again (start-up of the only worker
    /// process).
    pub async fn release_running(&self) -> Result<u64, StoreError> {
        match &self.backend {
            Backend::Sqlite(db) => blocking(db, |db| db.release_running()).await,
        }
    }

    pub async fn job(&self, id: i64) -> Result<Option<Job>, StoreError> {
        match &self.backend {
            Backend::Sqlite(db) => blocking(db, move |db| db.job(id)).await,
        }
    }

    /// Jobs, newest first, of one state or all.
    pub async fn jobs(&self, state: Option<JobState>, limit: u32) -> Result<Vec<Job>, StoreError> {
        match &self.backend {
            Backend::Sqlite(db) => blocking(db, move |db| db.jobs(state, limit)).await,
        }
    }

    /// Queues a finished or failed job again, attempts reset.
    pub async fn replay(&self, id: i64) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Sqlite(db) => blocking(db, move |db| db.replay(id)).await,
        }
    }

    /// Queues every failed deal again; returns how many deals.
    pub async fn replay_failed(&self) -> Result<u64, StoreError> {
        match &self.backend {
            Backend::Sqlite(db) => blocking(db, |db| db.replay_failed()).await,
        }
    }

    pub async fn link(&self, key: &LinkKey<'_>) -> Result<Option<Link>, StoreError> {
        let key = OwnedKey::of(key);
        match &self.backend {
            Backend::Sqlite(db) => blocking(db, move |db| db.link(&key.key())).await,
        }
    }

    /// Records that a create is about to be sent (before sending it).
    pub async fn mark_creating(&self, key: &LinkKey<'_>) -> Result<(), StoreError> {
        let key = OwnedKey::of(key);
        match &self.backend {
            Backend::Sqlite(db) => blocking(db, move |db| db.mark_creating(&key.key())).await,
        }
    }

    pub async fn set_link(
        &self,
        key: &LinkKey<'_>,
        target_id: i64,
        synced_hash: Option<&str>,
    ) -> Result<(), StoreError> {
        let key = OwnedKey::of(key);
        let synced_hash = synced_hash.map(str::to_owned);
        match &self.backend {
            Backend::Sqlite(db) => {
                blocking(db, move |db| {
                    db.set_link(&key.key(), target_id, synced_hash.as_deref())
                })
                .await
            }
        }
    }

    /// Source file ids already copied into a target deal's field.
    pub async fn copied_files(
        &self,
        key: &LinkKey<'_>,
        field: &str,
    ) -> Result<Vec<i64>, StoreError> {
        let (key, field) = (OwnedKey::of(key), field.to_owned());
        match &self.backend {
            Backend::Sqlite(db) => {
                blocking(db, move |db| db.copied_files(&key.key(), &field)).await
            }
        }
    }

    pub async fn add_copied_files(
        &self,
        key: &LinkKey<'_>,
        field: &str,
        file_ids: &[i64],
    ) -> Result<(), StoreError> {
        let (key, field, file_ids) = (OwnedKey::of(key), field.to_owned(), file_ids.to_vec());
        match &self.backend {
            Backend::Sqlite(db) => {
                blocking(db, move |db| {
                    db.add_copied_files(&key.key(), &field, &file_ids)
                })
                .await
            }
        }
    }

    /// Counts for metrics.
    pub async fn stats(&self) -> Result<QueueStats, StoreError> {
        match &self.backend {
            Backend::Sqlite(db) => blocking(db, |db| db.stats()).await,
        }
    }

    pub async fn record_attempt(&self, job_id: i64, attempt: &Attempt) -> Result<(), StoreError> {
        let attempt = attempt.clone();
        match &self.backend {
            Backend::Sqlite(db) => {
                blocking(db, move |db| db.record_attempt(job_id, &attempt)).await
            }
        }
    }

    /// Tries of a job, oldest first.
    pub async fn attempts(&self, job_id: i64) -> Result<Vec<Attempt>, StoreError> {
        match &self.backend {
            Backend::Sqlite(db) => blocking(db, move |db| db.attempts(job_id)).await,
        }
    }

    /// Records an install (or re-install): replaces tokens and application
    /// token, clears a re-install flag.
    pub async fn save_app_install(
        &self,
        portal: &str,
        install: &AppInstall,
    ) -> Result<(), StoreError> {
        let (portal, install) = (portal.to_owned(), install.clone());
        match &self.backend {
            Backend::Sqlite(db) => blocking(db, move |db| db.save_install(&portal, &install)).await,
        }
    }

    pub async fn app_install(&self, portal: &str) -> Result<Option<AppInstall>, StoreError> {
        let portal = portal.to_owned();
        match &self.backend {
            Backend::Sqlite(db) => blocking(db, move |db| db.install(&portal)).await,
        }
    }

    /// Replaces the token pair after a refresh (one statement: atomic).
    pub async fn save_app_tokens(
        &self,
        portal: &str,
        tokens: &TokenPair,
    ) -> Result<(), StoreError> {
        let (portal, tokens) = (portal.to_owned(), tokens.clone());
        match &self.backend {
            Backend::Sqlite(db) => blocking(db, move |db| db.save_tokens(&portal, &tokens)).await,
        }
    }

    pub async fn mark_reinstall_needed(
        &self,
        portal: &str,
        reason: &str,
    ) -> Result<(), StoreError> {
        let (portal, reason) = (portal.to_owned(), reason.to_owned());
        match &self.backend {
            Backend::Sqlite(db) => {
                blocking(db, move |db| db.flag_reinstall(&portal, &reason)).await
            }
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
        let owned = [portal, workflow_id, event_token, route].map(str::to_owned);
        match &self.backend {
            Backend::Sqlite(db) => {
                blocking(db, move |db| {
                    let [portal, workflow_id, event_token, route] = &owned;
                    db.queue_rule_call(portal, deal_id, workflow_id, event_token, route)
                })
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
        let portal = portal.to_owned();
        match &self.backend {
            Backend::Sqlite(db) => {
                blocking(db, move |db| db.calls_to_answer(&portal, job_id)).await
            }
        }
    }

    /// The run was answered, or can never be (`error`).
    pub async fn finish_rule_call(&self, id: i64, error: Option<&str>) -> Result<(), StoreError> {
        let error = error.map(str::to_owned);
        match &self.backend {
            Backend::Sqlite(db) => blocking(db, move |db| db.answered(id, error.as_deref())).await,
        }
    }
}
