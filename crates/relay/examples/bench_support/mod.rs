//! What the relay's benchmarks share: arguments, emulated portals at the
//! standard limit, secret files, waiting for the transfers and their
//! sustained rate.

use std::time::{Duration, Instant};

use b24_emulator::Portal;
use b24_relay::{Job, JobState, Store};

/// `--name N` from the command line, or `default`.
pub fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// An emulated portal at the standard limit (burst 50, 2 requests/s).
pub async fn portal(domain: &str, secret: &str, seed: serde_json::Value) -> Portal {
    Portal::builder()
        .domain(domain)
        .webhook(1, secret, &["crm", "user"])
        .rate_limit(50, 2.0)
        .seed(seed)
        .start()
        .await
        .expect("portal starts")
}

/// Writes `text` to `dir/name` and returns the path (a secret file).
pub fn write(dir: &std::path::Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

/// Polls `store` until `count` jobs that `counted` accepts are done with a
/// target deal; returns when each of the first `count` was first seen done
/// (since `started`), in order. Panics as soon as any job failed.
pub async fn wait_for_transfers(
    store: &Store,
    count: usize,
    started: Instant,
    counted: impl Fn(&Job) -> bool,
) -> Vec<Duration> {
    let mut finished_at: Vec<Duration> = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    while seen.len() < count {
        for job in store.jobs(Some(JobState::Done), 100_000).await.unwrap() {
            if counted(&job) && job.target_deal_id.is_some() && seen.insert(job.id) {
                finished_at.push(started.elapsed());
            }
        }
        assert!(
            store
                .jobs(Some(JobState::Failed), 1)
                .await
                .unwrap()
                .is_empty(),
            "a transfer failed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    finished_at.sort();
    finished_at.truncate(count);
    finished_at
}

/// Completions per minute after the first `skip` (the portals' burst):
/// the rate the bucket's refill sustains.
pub fn sustained_per_minute(finished_at: &[Duration], skip: usize) -> f64 {
    let last = finished_at.len();
    let window = finished_at[last - 1] - finished_at[skip - 1];
    (last - skip) as f64 / window.as_secs_f64() * 60.0
}
