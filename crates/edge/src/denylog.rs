//! Logging denied requests without letting a flood of them flood the log:
//! at most a few lines a second, then one line saying how many were left out.

use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Instant;

use tracing::{info, warn};

use crate::admit::DenyReason;

/// A per-second budget of log lines.
#[derive(Debug)]
pub struct DenyLog {
    per_second: u32,
    started: Instant,
    window: Mutex<Window>,
}

#[derive(Debug, Default)]
struct Window {
    second: u64,
    logged: u32,
    suppressed: u64,
}

impl DenyLog {
    pub fn new(per_second: u32) -> DenyLog {
        DenyLog {
            per_second,
            started: Instant::now(),
            window: Mutex::new(Window::default()),
        }
    }

    /// Whether a line may be written now; with it, how many lines the
    /// previous windows left out (to be reported once).
    pub fn admit(&self) -> (bool, u64) {
        let second = self.started.elapsed().as_secs();
        let mut window = self.window.lock().expect("deny log lock");
        let mut left_out = 0;
        if window.second != second {
            left_out = window.suppressed;
            *window = Window {
                second,
                ..Window::default()
            };
        }
        if window.logged < self.per_second {
            window.logged += 1;
            (true, left_out)
        } else {
            window.suppressed += 1;
            (false, left_out)
        }
    }

    /// Logs one denial, if the budget allows. The path is not logged: a
    /// webhook URL carries its secret in the path.
    pub fn denied(&self, client: IpAddr, reason: DenyReason, route: &str) {
        if self.budget() {
            info!(%client, reason = reason.as_str(), route, "request denied");
        }
    }

    /// Logs one connection refused before TLS, on the same budget.
    pub fn refused_connection(&self, client: IpAddr, reason: DenyReason) {
        if self.budget() {
            info!(%client, reason = reason.as_str(), "connection refused before TLS");
        }
    }

    fn budget(&self) -> bool {
        let (write, left_out) = self.admit();
        if left_out > 0 {
            warn!(count = left_out, "denials not logged (rate limit)");
        }
        write
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_per_second() {
        let log = DenyLog::new(3);
        let written: Vec<bool> = (0..10).map(|_| log.admit().0).collect();
        // All within one second unless the machine stalls; count, don't time.
        let count = written.iter().filter(|w| **w).count();
        assert!((3..=6).contains(&count), "{written:?}");
        let mut window = log.window.lock().unwrap();
        window.second = u64::MAX; // force a new window at the next call
        let suppressed = window.suppressed;
        drop(window);
        assert_eq!(log.admit(), (true, suppressed));
    }
}
