//! The SQLite backend: one file in WAL mode with `synchronous=FULL`.
//!
//! - **Group commit.** One writer thread owns the write connection. Writes
//!   queue up while it commits, and it takes everything queued as one
//!   transaction (each write in its own savepoint, so one failing write
//!   does not undo the others): one fsync for many intake requests, and no
//!   caller is answered before the commit that holds its write is durable.
//! - **Reads** use a small pool of read-only connections on blocking
//!   threads; WAL lets them run beside the writer.
//! - **Checkpoints** keep the WAL small, so that it cannot fill a small
//!   volume: automatic ones every [`CHECKPOINT_PAGES`] pages, a truncating
//!   one whenever the writer is idle, and one after a "disk full".
//! - **Health at open.** A missing, empty, damaged, read-only or foreign
//!   store is refused with what to do; a new store is created whole (in a
//!   temporary file, renamed into place), so a crash never leaves an empty
//!   file behind that could pass for one.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use super::StoreError;

/// WAL pages after which a commit runs a (passive) checkpoint: 512 KiB.
pub(super) const CHECKPOINT_PAGES: u32 = 128;
/// Writes taken into one transaction at most.
const MAX_BATCH: usize = 512;
/// Idle time after which the writer truncates the WAL.
const IDLE: Duration = Duration::from_secs(1);
/// The schema version this build writes (`PRAGMA user_version`).
const SCHEMA_VERSION: i64 = 3;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    portal TEXT NOT NULL,
    deal_id INTEGER NOT NULL,
    trigger TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    interruptions INTEGER NOT NULL DEFAULT 0,
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
    updated_at INTEGER NOT NULL,
    server_endpoint TEXT
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
CREATE TABLE IF NOT EXISTS party_claims (
    kind TEXT NOT NULL,
    source_portal TEXT NOT NULL,
    source_id INTEGER NOT NULL,
    target_portal TEXT NOT NULL,
    holder TEXT NOT NULL,
    until INTEGER NOT NULL,
    PRIMARY KEY (kind, source_portal, source_id, target_portal)
);
CREATE TABLE IF NOT EXISTS backfills (
    route TEXT PRIMARY KEY,
    filter TEXT NOT NULL,
    last_id INTEGER,
    enqueued INTEGER NOT NULL DEFAULT 0,
    already INTEGER NOT NULL DEFAULT 0,
    holder TEXT,
    lease_until INTEGER,
    started_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    finished_at INTEGER
);
CREATE TABLE IF NOT EXISTS expected_echoes (
    portal TEXT NOT NULL,
    deal_id INTEGER NOT NULL,
    expected INTEGER NOT NULL,
    until INTEGER NOT NULL,
    PRIMARY KEY (portal, deal_id)
);
";

/// Tells a write's caller how it ended, given the commit's error if any.
type Deliver = Box<dyn FnOnce(Option<&rusqlite::Error>) + Send>;

/// What a write did, to be told to its caller once the commit is known.
struct Done {
    failed: bool,
    deliver: Deliver,
}

/// A queued write: run on the writer's connection, or told why the
/// transaction could not begin.
type Op = Box<dyn FnOnce(Result<&Connection, &rusqlite::Error>) -> Done + Send>;

/// The SQLite store. Its methods hand work to the writer thread or to a
/// blocking thread; [`super::Store`] is the only caller.
pub(super) struct SqliteStore {
    path: PathBuf,
    /// `None` once closed.
    writer: Mutex<Option<Sender<Op>>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    readers: Mutex<Vec<Connection>>,
    /// Schema versions applied by this open (a new store counts them all).
    pub(super) migrated: usize,
}

fn sqlite_error(path: &Path, error: rusqlite::Error) -> StoreError {
    use rusqlite::ErrorCode;
    match &error {
        rusqlite::Error::SqliteFailure(e, message)
            if matches!(e.code, ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt) =>
        {
            StoreError::Damaged {
                path: path.display().to_string(),
                details: message.clone().unwrap_or_else(|| e.to_string()),
            }
        }
        rusqlite::Error::SqliteFailure(e, _) if e.code == ErrorCode::ReadOnly => {
            StoreError::ReadOnly {
                path: path.display().to_string(),
                why: "SQLite cannot write to it".into(),
            }
        }
        _ => StoreError::Sqlite(error),
    }
}

/// `None` if the current user may write `path`, else why not.
fn not_writable(path: &Path) -> Option<String> {
    use rustix::io::Errno;
    let errno = match rustix::fs::access(path, rustix::fs::Access::WRITE_OK) {
        Ok(()) => return None,
        Err(errno) => errno,
    };
    Some(if errno == Errno::ROFS {
        "it is on a read-only file system".into()
    } else if errno == Errno::ACCESS || errno == Errno::PERM {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path)
            .map(|m| format!("{:o}", m.permissions().mode() & 0o777))
            .unwrap_or_else(|_| "?".into());
        format!("no write permission for the user running the relay (mode {mode})")
    } else {
        format!("not writable: {}", std::io::Error::from(errno))
    })
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// The store holds OAuth tokens and application tokens: readable by its
/// owner only. SQLite gives its -wal and -shm files the database file's mode.
fn restrict_to_owner(path: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::PermissionsExt;
    let permissions = |source| StoreError::Permissions {
        path: path.display().to_string(),
        source,
    };
    let mode = std::fs::metadata(path)
        .map_err(permissions)?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode & 0o700))
            .map_err(permissions)?;
    }
    Ok(())
}

fn configure(connection: &Connection) -> rusqlite::Result<()> {
    connection.busy_timeout(Duration::from_secs(10))?;
    connection.pragma_update(None, "synchronous", "FULL")?;
    connection.pragma_update(None, "wal_autocheckpoint", CHECKPOINT_PAGES)?;
    connection.pragma_update(None, "journal_size_limit", 1024 * 1024)?;
    Ok(())
}

/// Creates a new store whole: schema written in a temporary file, flushed,
/// then renamed into place (and the directory flushed).
fn create(path: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::OpenOptionsExt;
    let temporary = with_suffix(path, ".creating");
    let io = |source| StoreError::Permissions {
        path: temporary.display().to_string(),
        source,
    };
    let _ = std::fs::remove_file(&temporary);
    drop(
        std::fs::OpenOptions::new()
            .create_new(true)
            .write(true)
            .mode(0o600)
            .open(&temporary)
            .map_err(io)?,
    );
    {
        let connection = Connection::open(&temporary)?;
        let mode: String =
            connection.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::Commit(format!(
                "the file system of {} does not support WAL (journal_mode is {mode})",
                path.display()
            )));
        }
        connection.execute_batch(SCHEMA)?;
        connection.pragma_update(None, "user_version", SCHEMA_VERSION)?;
    }
    std::fs::File::open(&temporary)
        .and_then(|f| f.sync_all())
        .map_err(io)?;
    std::fs::rename(&temporary, path).map_err(io)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        let _ = std::fs::File::open(dir).and_then(|d| d.sync_all());
    }
    Ok(())
}

/// Brings an existing store to [`SCHEMA_VERSION`]; returns how many
/// versions it moved.
fn migrate(connection: &mut Connection, path: &Path) -> Result<usize, StoreError> {
    let version: i64 = connection.pragma_query_value(None, "user_version", |r| r.get(0))?;
    let tables: i64 = connection.query_row(
        "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'jobs'",
        [],
        |r| r.get(0),
    )?;
    if tables == 0 {
        return Err(StoreError::Damaged {
            path: path.display().to_string(),
            details: "it is an SQLite database without the relay's tables: not a relay store"
                .into(),
        });
    }
    if version > SCHEMA_VERSION {
        return Err(StoreError::Commit(format!(
            "{} was written by a newer b24-relay (schema {version}; this one knows {SCHEMA_VERSION}): upgrade this b24-relay",
            path.display()
        )));
    }
    if version == SCHEMA_VERSION {
        return Ok(0);
    }
    let tx = connection.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    // 0 → 1: interruptions counted apart from attempts.
    let has_column: i64 = tx.query_row(
        "SELECT COUNT(*) FROM pragma_table_info('jobs') WHERE name = 'interruptions'",
        [],
        |r| r.get(0),
    )?;
    if has_column == 0 {
        tx.execute_batch("ALTER TABLE jobs ADD COLUMN interruptions INTEGER NOT NULL DEFAULT 0;")?;
    }
    // 1 → 2: the authorization server an application was installed with;
    // party claims and expected echoes (new tables, made by SCHEMA).
    let has_column: i64 = tx.query_row(
        "SELECT COUNT(*) FROM pragma_table_info('app_installs') WHERE name = 'server_endpoint'",
        [],
        |r| r.get(0),
    )?;
    let has_table: i64 = tx.query_row(
        "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'app_installs'",
        [],
        |r| r.get(0),
    )?;
    if has_table == 1 && has_column == 0 {
        tx.execute_batch("ALTER TABLE app_installs ADD COLUMN server_endpoint TEXT;")?;
    }
    // 2 → 3: backfill cursors (a new table, made by SCHEMA).
    tx.execute_batch(SCHEMA)?;
    tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
    tx.commit()?;
    tracing::info!(path = %path.display(), from = version, to = SCHEMA_VERSION, "store schema migrated");
    Ok((SCHEMA_VERSION - version) as usize)
}

/// `PRAGMA quick_check`: `Err` with the first problems it reports.
fn quick_check(connection: &Connection, path: &Path) -> Result<(), StoreError> {
    let mut statement = connection.prepare("PRAGMA quick_check(5)")?;
    let found: Vec<String> = statement
        .query_map([], |row| row.get(0))?
        .collect::<Result<_, _>>()?;
    if found.len() == 1 && found[0] == "ok" {
        return Ok(());
    }
    Err(StoreError::Damaged {
        path: path.display().to_string(),
        details: format!("integrity check: {}", found.join("; ")),
    })
}

impl SqliteStore {
    /// Opens the store at `path`, creating it when there is no trace of one.
    pub(super) fn open(path: &Path, group_commit: bool) -> Result<Self, StoreError> {
        let shown = path.display().to_string();
        let dir = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(|source| StoreError::Directory {
            path: dir.display().to_string(),
            source,
        })?;
        let mut created = false;
        match std::fs::metadata(path) {
            Ok(meta) if meta.len() == 0 => return Err(StoreError::Empty { path: shown }),
            Ok(_) => {}
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                for suffix in ["-wal", "-shm"] {
                    let trace = with_suffix(path, suffix);
                    if trace.exists() {
                        return Err(StoreError::Lost {
                            path: shown,
                            trace: trace.display().to_string(),
                        });
                    }
                }
                if let Some(why) = not_writable(dir) {
                    return Err(StoreError::ReadOnly {
                        path: dir.display().to_string(),
                        why: format!("the directory of the store: {why}"),
                    });
                }
                create(path)?;
                created = true;
                tracing::info!(path = %shown, "created a new store");
            }
            Err(source) => {
                return Err(StoreError::Permissions {
                    path: shown,
                    source,
                });
            }
        }
        if let Some(why) = not_writable(path) {
            return Err(StoreError::ReadOnly { path: shown, why });
        }
        if let Some(why) = not_writable(dir) {
            return Err(StoreError::ReadOnly {
                path: shown,
                why: format!("its directory {}: {why}", dir.display()),
            });
        }
        restrict_to_owner(path)?;
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let mut connection =
            Connection::open_with_flags(path, flags).map_err(|e| sqlite_error(path, e))?;
        let prepared = (|| -> rusqlite::Result<String> {
            configure(&connection)?;
            connection.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))
        })();
        let mode = prepared.map_err(|e| sqlite_error(path, e))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::Commit(format!(
                "cannot switch {shown} to WAL (journal_mode is {mode})"
            )));
        }
        if connection.is_readonly(rusqlite::MAIN_DB)? {
            return Err(StoreError::ReadOnly {
                path: shown,
                why: "SQLite opened it read-only".into(),
            });
        }
        quick_check(&connection, path).map_err(|e| match e {
            StoreError::Sqlite(e) => sqlite_error(path, e),
            other => other,
        })?;
        let migrated = migrate(&mut connection, path).map_err(|e| match e {
            StoreError::Sqlite(e) => sqlite_error(path, e),
            other => other,
        })?;
        let migrated = if created {
            SCHEMA_VERSION as usize
        } else {
            migrated
        };
        // What a previous process left in the WAL goes into the database now.
        if let Err(error) = checkpoint(&connection, true) {
            tracing::warn!(path = %shown, %error, "cannot checkpoint the WAL at start");
        }
        let (writer, queue) = std::sync::mpsc::channel::<Op>();
        let thread_path = path.to_owned();
        let thread = std::thread::Builder::new()
            .name("b24-relay-store".into())
            .spawn(move || {
                let max_batch = if group_commit { MAX_BATCH } else { 1 };
                write_loop(connection, queue, &thread_path, max_batch)
            })
            .map_err(|e| StoreError::Commit(format!("cannot start the store's writer: {e}")))?;
        Ok(Self {
            path: path.to_owned(),
            writer: Mutex::new(Some(writer)),
            thread: Mutex::new(Some(thread)),
            readers: Mutex::new(Vec::new()),
            migrated,
        })
    }

    /// Runs `work` in the writer's next transaction; answers once it is
    /// committed (or failed).
    pub(super) async fn write<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (answer, answered) = tokio::sync::oneshot::channel();
        let op: Op = Box::new(move |connection| {
            let result = match connection {
                Ok(connection) => work(connection),
                Err(error) => Err(StoreError::Commit(error.to_string())),
            };
            Done {
                failed: result.is_err(),
                deliver: Box::new(move |commit_error| {
                    let outcome = match (result, commit_error) {
                        (Err(error), _) => Err(error),
                        (Ok(value), None) => Ok(value),
                        (Ok(_), Some(error)) => Err(StoreError::Commit(error.to_string())),
                    };
                    let _ = answer.send(outcome);
                }),
            }
        });
        self.writer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .ok_or(StoreError::WriterStopped)?
            .send(op)
            .map_err(|_| StoreError::WriterStopped)?;
        answered.await.map_err(|_| StoreError::WriterStopped)?
    }

    /// Runs `work` on a read-only connection, on a blocking thread.
    pub(super) async fn read<T: Send + 'static>(
        self: &std::sync::Arc<Self>,
        work: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let store = std::sync::Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            let connection = store.take_reader()?;
            let result = work(&connection);
            store.give_back(connection);
            result
        })
        .await
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic.into_panic()))
    }

    /// Lets the writer finish what is queued, checkpoint the WAL and stop;
    /// later writes fail with [`StoreError::WriterStopped`].
    pub(super) async fn close(&self) {
        drop(self.writer.lock().unwrap_or_else(|e| e.into_inner()).take());
        self.readers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        let thread = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(thread) = thread {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }

    fn take_reader(&self) -> Result<Connection, StoreError> {
        if let Some(connection) = self.readers.lock().unwrap_or_else(|e| e.into_inner()).pop() {
            return Ok(connection);
        }
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let connection = Connection::open_with_flags(&self.path, flags)
            .map_err(|e| sqlite_error(&self.path, e))?;
        connection.busy_timeout(Duration::from_secs(10))?;
        Ok(connection)
    }

    fn give_back(&self, connection: Connection) {
        let mut readers = self.readers.lock().unwrap_or_else(|e| e.into_inner());
        if readers.len() < 4 {
            readers.push(connection);
        }
    }
}

/// `wal_checkpoint(TRUNCATE)` (or `PASSIVE`); `Ok(true)` when the whole WAL
/// went into the database.
fn checkpoint(connection: &Connection, truncate: bool) -> rusqlite::Result<bool> {
    let sql = if truncate {
        "PRAGMA wal_checkpoint(TRUNCATE)"
    } else {
        "PRAGMA wal_checkpoint(PASSIVE)"
    };
    connection.query_row(sql, [], |row| {
        let busy: i64 = row.get(0)?;
        let log: i64 = row.get(1)?;
        let done: i64 = row.get(2)?;
        Ok(busy == 0 && log == done)
    })
}

fn write_loop(connection: Connection, queue: Receiver<Op>, path: &Path, max_batch: usize) {
    let mut wal_dirty = false;
    loop {
        let first = match queue.recv_timeout(IDLE) {
            Ok(op) => op,
            Err(RecvTimeoutError::Timeout) => {
                if wal_dirty {
                    // Idle: the WAL goes into the database and is cut to
                    // nothing, freeing its space on the volume.
                    wal_dirty = !checkpoint(&connection, true).unwrap_or(false);
                }
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => break,
        };
        let mut batch = vec![first];
        while batch.len() < max_batch {
            match queue.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        let full = commit_batch(&connection, batch);
        wal_dirty = true;
        if full {
            tracing::error!(path = %path.display(), "the store's volume is full; intake answers 503 until space is freed");
            if let Ok(true) = checkpoint(&connection, true) {
                wal_dirty = false;
            }
        }
    }
    let _ = checkpoint(&connection, true);
}

/// One transaction for the whole batch, each write in a savepoint. Returns
/// whether the disk was full.
fn commit_batch(connection: &Connection, batch: Vec<Op>) -> bool {
    use std::panic::{AssertUnwindSafe, catch_unwind};
    if let Err(error) = connection.execute_batch("BEGIN IMMEDIATE") {
        for op in batch {
            (op(Err(&error)).deliver)(None);
        }
        if is_full(&error) {
            return true;
        }
        tracing::error!(%error, "cannot begin a store transaction");
        return false;
    }
    let alone = batch.len() == 1;
    let mut dones = Vec::with_capacity(batch.len());
    for op in batch {
        if !alone && connection.execute_batch("SAVEPOINT write").is_err() {
            continue;
        }
        match catch_unwind(AssertUnwindSafe(|| op(Ok(connection)))) {
            Ok(done) => {
                if !alone {
                    let end = if done.failed {
                        "ROLLBACK TO write; RELEASE write"
                    } else {
                        "RELEASE write"
                    };
                    let _ = connection.execute_batch(end);
                }
                dones.push(done);
            }
            Err(_) => {
                tracing::error!("a store write panicked; it is rolled back");
                if !alone {
                    let _ = connection.execute_batch("ROLLBACK TO write; RELEASE write");
                }
            }
        }
    }
    let committed = if alone && dones.first().is_some_and(|d| d.failed) {
        connection.execute_batch("ROLLBACK")
    } else {
        connection.execute_batch("COMMIT")
    };
    match committed {
        Ok(()) => {
            for done in dones {
                (done.deliver)(None);
            }
            false
        }
        Err(error) => {
            let _ = connection.execute_batch("ROLLBACK");
            for done in dones {
                (done.deliver)(Some(&error));
            }
            is_full(&error)
        }
    }
}

fn is_full(error: &rusqlite::Error) -> bool {
    matches!(error, rusqlite::Error::SqliteFailure(e, _) if e.code == rusqlite::ErrorCode::DiskFull)
}
