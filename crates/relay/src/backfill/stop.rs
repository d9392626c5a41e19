//! Stopping a backfill cleanly: signals recorded in a flag (so that the
//! cursor is saved first), the error that carries the exit code, and the
//! lease holder's name, with the check that lets a killed holder's lease
//! be taken without waiting it out.

use std::sync::Arc;
use std::time::{Duration, Instant};

/// Why a backfill stopped before the end: a signal. Its exit code is
/// 128 + the signal (130 for Ctrl-C, 143 for SIGTERM); the message says
/// how to resume.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Stopped {
    pub signal: i32,
    pub message: String,
}

impl Stopped {
    pub fn exit_code(&self) -> u8 {
        (128 + self.signal).clamp(0, 255) as u8
    }
}

/// The signal that asked to stop, if any (set by [`watch_signals`]).
pub type StopFlag = Arc<std::sync::atomic::AtomicI32>;

/// Records SIGINT/SIGTERM in the returned flag instead of dying, so the
/// backfill saves its cursor first.
pub fn watch_signals() -> std::io::Result<StopFlag> {
    use tokio::signal::unix::{SignalKind, signal};
    let flag: StopFlag = Arc::default();
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let set = flag.clone();
    tokio::spawn(async move {
        loop {
            let signal = tokio::select! {
                _ = interrupt.recv() => 2,
                _ = terminate.recv() => 15,
            };
            set.store(signal, std::sync::atomic::Ordering::SeqCst);
        }
    });
    Ok(flag)
}

pub(super) fn stop_signal(flag: &StopFlag) -> Option<i32> {
    match flag.load(std::sync::atomic::Ordering::SeqCst) {
        0 => None,
        signal => Some(signal),
    }
}

/// Sleeps `duration`, or less when a stop is asked.
pub(super) async fn nap(duration: Duration, stop: &StopFlag) {
    let until = Instant::now() + duration;
    while Instant::now() < until && stop_signal(stop).is_none() {
        tokio::time::sleep((until - Instant::now()).min(Duration::from_millis(100))).await;
    }
}

pub(super) async fn wait_for_stop(stop: &StopFlag) {
    while stop_signal(stop).is_none() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// This process as a backfill holder: `host/pid`.
pub(super) fn holder_name() -> String {
    format!("{}/{}", host_name(), std::process::id())
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "host".into())
}

/// A holder that was a process of this host that no longer runs (killed
/// with SIGKILL, or the host rebooted): its lease need not be waited out.
pub(super) fn dead_local_holder(holder: &str) -> bool {
    let Some((host, pid)) = holder.rsplit_once('/') else {
        return false;
    };
    host == host_name()
        && pid.parse::<u32>().is_ok_and(|pid| {
            pid != std::process::id() && !std::path::Path::new(&format!("/proc/{pid}")).exists()
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dead_holder_of_this_host_is_recognised() {
        assert!(!dead_local_holder(&holder_name()));
        assert!(dead_local_holder(&format!("{}/4000000000", host_name())));
        assert!(!dead_local_holder("another-host/4000000000"));
        assert!(!dead_local_holder("garbage"));
    }
}
