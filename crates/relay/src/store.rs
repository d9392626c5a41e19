//! The durable queue and the link tables. [`Store`] is the interface the rest
//! of the relay uses; [`SqliteStore`] is the embedded implementation (WAL,
//! `synchronous=FULL`, so a commit that acknowledges intake survives a power
//! cut). A PostgreSQL implementation can be added behind the same trait.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use b24_client::{Secret, TokenPair};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("cannot create the directory of {path}: {source}")]
    Directory {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot restrict {path} to its owner (it holds tokens): {source}")]
    Permissions {
        path: String,
        source: std::io::Error,
    },
    #[error("no job {0}")]
    NoSuchJob(i64),
    #[error("job {id} is {state}; only failed (or finished) jobs can be replayed")]
    NotReplayable { id: i64, state: String },
}

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JobState {
    Pending,
    Running,
    Done,
    Skipped,
    Failed,
}

impl JobState {
    pub const ALL: [JobState; 5] = [
        JobState::Pending,
        JobState::Running,
        JobState::Done,
        JobState::Skipped,
        JobState::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Pending => "pending",
            JobState::Running => "running",
            JobState::Done => "done",
            JobState::Skipped => "skipped",
            JobState::Failed => "failed",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        JobState::ALL.into_iter().find(|s| s.as_str() == text)
    }
}

/// One queued request to transfer a source deal.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    pub id: i64,
    /// Configured name of the source portal.
    pub portal: String,
    pub deal_id: i64,
    /// What asked for it: the event name, `rule`, or `cli`.
    pub trigger: String,
    pub state: JobState,
    pub attempts: u32,
    /// Further requests for the same deal merged into this job.
    pub coalesced: u32,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    /// Skip reason, last error, or what the transfer did.
    pub message: Option<String>,
    pub target_deal_id: Option<i64>,
}

/// Whether intake created a job or merged into a waiting one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Enqueued {
    pub job_id: i64,
    pub coalesced: bool,
}

/// What the relay created on a target for one source record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkKind {
    Deal,
    Contact,
    Company,
}

impl LinkKind {
    fn as_str(self) -> &'static str {
        match self {
            LinkKind::Deal => "deal",
            LinkKind::Contact => "contact",
            LinkKind::Company => "company",
        }
    }
}

/// Identifies a link: source portal and record, and the target portal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkKey<'a> {
    pub kind: LinkKind,
    pub source_portal: &'a str,
    pub source_id: i64,
    pub target_portal: &'a str,
}

/// The target record of a link. `target_id` is `None` while a create was
/// sent whose outcome is not known yet: look the target up before creating.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub target_id: Option<i64>,
    /// Digest of what was last written to the target, to skip no-op updates.
    pub synced_hash: Option<String>,
}

/// One try at a job, kept for `jobs show`.
#[derive(Debug, Clone, PartialEq)]
pub struct Attempt {
    pub number: u32,
    pub started_at_ms: i64,
    pub finished_at_ms: i64,
    /// `done`, `skipped`, `retry` or `failed`.
    pub outcome: String,
    pub message: String,
}

/// A portal's installed local application, as its install call gave it
/// (tokens replaced by each refresh). Secrets stay redacted in `Debug`.
#[derive(Debug, Clone, PartialEq)]
pub struct AppInstall {
    /// `auth[client_endpoint]`: the portal's REST root.
    pub client_endpoint: String,
    pub domain: String,
    pub member_id: String,
    /// `auth[scope]` at install, comma-separated.
    pub scopes: String,
    pub application_token: Secret,
    pub tokens: TokenPair,
    /// Set when the authorization server refused a refresh: the application
    /// must be installed again (its tokens are no longer usable).
    pub reinstall_reason: Option<String>,
    pub updated_at_ms: i64,
}

/// One run of the relay's automation rule waiting for its answer
/// (`bizproc.event.send`) until its job ends.
#[derive(Clone, PartialEq)]
pub struct RuleCall {
    pub id: i64,
    pub portal: String,
    pub job_id: i64,
    pub deal_id: i64,
    pub workflow_id: String,
    /// Lets whoever holds it answer the workflow: kept out of `Debug`.
    pub event_token: String,
    /// The route chosen in the rule's settings.
    pub route: String,
}

impl std::fmt::Debug for RuleCall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RuleCall")
            .field("id", &self.id)
            .field("portal", &self.portal)
            .field("job_id", &self.job_id)
            .field("deal_id", &self.deal_id)
            .field("workflow_id", &self.workflow_id)
            .field("route", &self.route)
            .finish_non_exhaustive()
    }
}

/// Counts for metrics.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct QueueStats {
    pub by_state: Vec<(JobState, u64)>,
    pub oldest_pending_age: Option<Duration>,
}

/// The relay's persistent state.
pub trait Store: Send + Sync {
    /// Queues a transfer of `deal_id`, merging into a pending job for the
    /// same deal. Durable when it returns.
    fn enqueue(&self, portal: &str, deal_id: i64, trigger: &str) -> Result<Enqueued, StoreError>;
    /// Claims the next due job whose deal is not being transferred already.
    fn claim(&self, lease: Duration) -> Result<Option<Job>, StoreError>;
    fn heartbeat(&self, job_id: i64, lease: Duration) -> Result<(), StoreError>;
    fn finish(
        &self,
        job_id: i64,
        state: JobState,
        message: &str,
        target_deal_id: Option<i64>,
    ) -> Result<(), StoreError>;
    /// Back to pending, due after `delay`.
    fn retry_later(&self, job_id: i64, delay: Duration, message: &str) -> Result<(), StoreError>;
    /// Makes every running job pending again (start-up of the only worker process).
    fn release_running(&self) -> Result<u64, StoreError>;
    fn job(&self, id: i64) -> Result<Option<Job>, StoreError>;
    fn jobs(&self, state: Option<JobState>, limit: u32) -> Result<Vec<Job>, StoreError>;
    /// Queues a finished or failed job again, attempts reset.
    fn replay(&self, id: i64) -> Result<(), StoreError>;
    fn replay_failed(&self) -> Result<u64, StoreError>;
    fn link(&self, key: &LinkKey<'_>) -> Result<Option<Link>, StoreError>;
    /// Records that a create is about to be sent (before sending it).
    fn mark_creating(&self, key: &LinkKey<'_>) -> Result<(), StoreError>;
    fn set_link(
        &self,
        key: &LinkKey<'_>,
        target_id: i64,
        synced_hash: Option<&str>,
    ) -> Result<(), StoreError>;
    /// Source file ids already copied into a target deal's field.
    fn copied_files(&self, key: &LinkKey<'_>, field: &str) -> Result<Vec<i64>, StoreError>;
    fn add_copied_files(
        &self,
        key: &LinkKey<'_>,
        field: &str,
        file_ids: &[i64],
    ) -> Result<(), StoreError>;
    fn stats(&self) -> Result<QueueStats, StoreError>;
    fn record_attempt(&self, job_id: i64, attempt: &Attempt) -> Result<(), StoreError>;
    /// Tries of a job, oldest first.
    fn attempts(&self, job_id: i64) -> Result<Vec<Attempt>, StoreError>;
    /// Records an install (or re-install): replaces tokens and application
    /// token, clears a re-install flag.
    fn save_app_install(&self, portal: &str, install: &AppInstall) -> Result<(), StoreError>;
    fn app_install(&self, portal: &str) -> Result<Option<AppInstall>, StoreError>;
    /// Replaces the token pair after a refresh (one statement: atomic).
    fn save_app_tokens(&self, portal: &str, tokens: &TokenPair) -> Result<(), StoreError>;
    fn mark_reinstall_needed(&self, portal: &str, reason: &str) -> Result<(), StoreError>;
    /// Queues the deal like [`Store::enqueue`] and, in the same transaction,
    /// records the rule run that waits for the job's result.
    fn enqueue_rule_call(
        &self,
        portal: &str,
        deal_id: i64,
        workflow_id: &str,
        event_token: &str,
        route: &str,
    ) -> Result<Enqueued, StoreError>;
    /// Unanswered rule runs whose job has ended, of one job or one portal.
    fn rule_calls_to_answer(
        &self,
        portal: &str,
        job_id: Option<i64>,
    ) -> Result<Vec<RuleCall>, StoreError>;
    /// The run was answered, or can never be (`error`).
    fn finish_rule_call(&self, id: i64, error: Option<&str>) -> Result<(), StoreError>;
}

pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

mod sqlite;
mod sqlite_app;

pub use sqlite::SqliteStore;

#[cfg(test)]
mod tests;
