//! One run at a time: an exclusive `flock` on a file next to the cache,
//! held for the whole run, so that two runs (cron and a hand-run, or a slow
//! run overtaken by the next one) never fetch, write the cache or load
//! rules at the same time. A second run waits a bounded time, then gives up
//! with its own exit code.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The held lock; released when dropped (or when the process dies).
#[derive(Debug)]
pub struct RunLock {
    _file: File,
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("cannot open the lock file {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "another nodesync run ({holder}) holds {path} and did not finish within {waited} s; this run did nothing"
    )]
    Busy {
        path: PathBuf,
        holder: String,
        waited: u64,
    },
}

impl RunLock {
    /// Takes the lock, waiting at most `wait`.
    pub fn acquire(path: &Path, wait: Duration) -> Result<RunLock, LockError> {
        let open_error = |source| LockError::Open {
            path: path.to_owned(),
            source,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(open_error)?;
        let deadline = Instant::now() + wait;
        loop {
            match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
                Ok(()) => break,
                Err(rustix::io::Errno::WOULDBLOCK) => {}
                Err(e) => return Err(open_error(e.into())),
            }
            if Instant::now() >= deadline {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = match holder.trim() {
                    "" => "pid unknown".to_string(),
                    pid => format!("pid {pid}"),
                };
                return Err(LockError::Busy {
                    path: path.to_owned(),
                    holder,
                    waited: wait.as_secs(),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // Who holds it, for the message a waiting run prints.
        let _ = file.set_len(0);
        let _ = file.rewind();
        let _ = writeln!(file, "{}", std::process::id());
        Ok(RunLock { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_taker_waits_then_gives_up() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nodesync.lock");
        let held = RunLock::acquire(&path, Duration::ZERO).unwrap();
        let started = Instant::now();
        let err = RunLock::acquire(&path, Duration::from_millis(300)).unwrap_err();
        assert!(started.elapsed() >= Duration::from_millis(300));
        assert!(
            err.to_string()
                .contains(&format!("pid {}", std::process::id())),
            "{err}"
        );
        drop(held);
        assert!(RunLock::acquire(&path, Duration::ZERO).is_ok());
    }
}
