//! The durable queue and the link tables. [`Store`] is the async handle the
//! rest of the relay uses; behind it, SQLite is the embedded backend (WAL,
//! `synchronous=FULL`, so a commit that acknowledges intake survives a power
//! cut).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use b24_client::{Secret, TokenPair};

/// How to get going again after a store is refused as damaged, empty or
/// lost: appended to those errors, and documented in the README.
pub const RECOVERY: &str = "to recover: stop every relay process; move the store aside with its \
-wal and -shm files (keep them for analysis); create an empty store with `b24-relay store \
migrate`; then run `b24-relay links rebuild --route NAME` for every route, which links the \
deals already on the target portals so that none is created twice (README: \"A damaged or \
lost store\")";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A batch of writes could not be committed; none of it is stored.
    #[error("database: the commit failed: {0}")]
    Commit(String),
    #[error("the store's writer has stopped")]
    WriterStopped,
    #[error("PostgreSQL: {0}")]
    Postgres(String),
    /// The database cannot be reached (or its pool gave up waiting).
    #[error("{0}")]
    Unavailable(String),
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
    #[error(
        "the store {path} is read-only ({why}): the relay writes every request it accepts to it; make it writable by the user running the relay"
    )]
    ReadOnly { path: String, why: String },
    #[error(
        "the store {path} is damaged ({details}); it is not used, so that no deal is transferred twice; {RECOVERY}"
    )]
    Damaged { path: String, details: String },
    #[error(
        "the store {path} is an empty file (0 bytes): it was truncated or replaced, and starting on it as a new store would transfer announced deals again; {RECOVERY}"
    )]
    Empty { path: String },
    #[error(
        "the store {path} is missing but {trace} is there: the store was deleted or moved; put it back, or {RECOVERY}"
    )]
    Lost { path: String, trace: String },
    #[error("no job {0}")]
    NoSuchJob(i64),
    #[error("job {id} is {state}; only failed (or finished) jobs can be replayed")]
    NotReplayable { id: i64, state: String },
}

impl StoreError {
    /// The disk (or the database's volume) is full: answered with 503 and
    /// retried by the caller; the store recovers by itself once space is
    /// freed.
    pub fn is_disk_full(&self) -> bool {
        match self {
            StoreError::Sqlite(rusqlite::Error::SqliteFailure(e, _)) => {
                e.code == rusqlite::ErrorCode::DiskFull
            }
            StoreError::Commit(message) => message.contains("disk is full"),
            StoreError::Postgres(message) => message.contains("SQLSTATE 53100"),
            _ => false,
        }
    }
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
    /// Attempts that ran to an outcome (done, retry, failed), the one
    /// running included; never above `max_attempts`.
    pub attempts: u32,
    /// Attempts cut short because the relay stopped (killed, crashed,
    /// restarted) before they ended; counted apart, up to
    /// `max_interruptions`, so that restarts do not use up `max_attempts`.
    pub interruptions: u32,
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
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
    /// `auth[server_endpoint]` (`https://oauth.bitrix.info/rest/`, or
    /// `https://oauth.bitrix24.tech/rest/` for Russian-region portals): the
    /// authorization server this portal's tokens are refreshed at.
    pub server_endpoint: Option<String>,
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
    /// Replicas serving from this store now (PostgreSQL; `None` for SQLite).
    pub replicas: Option<u64>,
}

impl QueueStats {
    /// From `(state, count)` rows and the creation time of the oldest
    /// waiting job (ms since the epoch).
    pub(crate) fn from_counts(counted: &[(String, u64)], oldest_ms: Option<i64>) -> Self {
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
        QueueStats {
            by_state,
            oldest_pending_age: oldest_ms
                .map(|at| Duration::from_millis((now_ms() - at).max(0) as u64)),
            replicas: None,
        }
    }
}

pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

mod backfills;
pub mod copy;
mod handle;
mod postgres;
mod postgres_app;
mod postgres_backfills;
mod postgres_claims;
mod postgres_copy;
mod postgres_jobs;
mod postgres_shared;
mod sqlite;
mod sqlite_app;
mod sqlite_claims;
mod sqlite_copy;
mod sqlite_jobs;

pub use backfills::{BackfillCursor, BackfillRow, BackfillStart};
pub use handle::{Store, StoreOptions};
pub use sqlite_jobs::BACKFILL_TRIGGER;

/// Copies everything of `from` (named `from_name` in the destination's
/// records) into `to`, then checks that every row of the snapshot is there.
pub async fn copy_store(
    from: &Store,
    from_name: &str,
    to: &Store,
) -> Result<(copy::CopyReport, Vec<copy::CheckLine>), StoreError> {
    let snapshot = from.export().await?;
    let report = to.import(from_name, &snapshot).await?;
    let after = to.export().await?;
    let lines = copy::check(&snapshot, &after, &report.job_map, &report.merged);
    Ok((report, lines))
}

/// Applies the configured store's schema migrations; returns how many.
pub async fn migrate(config: &crate::config::StoreConfig) -> Result<usize, StoreError> {
    Store::migrate(config).await
}

#[cfg(test)]
mod tests;
