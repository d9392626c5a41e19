//! Workers: claim a job, transfer, then finish, retry later (backoff with
//! jitter) or fail with a message. A claimed job carries a lease renewed by
//! a heartbeat, so a job held by a killed process becomes due again.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::store::{Attempt, Job, JobState};
use crate::transfer::{Transfer, TransferError, Transferred};

/// Delay before attempt `attempts + 1`: exponential, capped, half jitter.
pub fn backoff(base: Duration, max: Duration, attempts: u32) -> Duration {
    let exponent = attempts.saturating_sub(1).min(20);
    let ceiling = base.saturating_mul(1u32 << exponent).min(max);
    let half = ceiling / 2;
    let jitter = rand::rng().random_range(0..=half.as_millis().max(1) as u64);
    half + Duration::from_millis(jitter)
}

/// The worker pool of one relay process.
pub struct Workers {
    pub transfer: Arc<Transfer>,
    pub metrics: Arc<Metrics>,
    /// Woken by intake when a job is queued.
    pub wake: Arc<Notify>,
}

impl Workers {
    /// Runs `count` workers and the queue-metrics refresher until `stop`.
    pub async fn run(self: Arc<Self>, count: usize, stop: CancellationToken) {
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..count {
            let workers = Arc::clone(&self);
            let stop = stop.clone();
            tasks.spawn(async move { workers.work(stop).await });
        }
        let workers = Arc::clone(&self);
        let stop_stats = stop.clone();
        tasks.spawn(async move {
            loop {
                if let Ok(stats) = workers.transfer.store.stats().await {
                    workers.metrics.set_queue(&stats);
                }
                tokio::select! {
                    _ = stop_stats.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                }
            }
        });
        while tasks.join_next().await.is_some() {}
    }

    async fn work(&self, stop: CancellationToken) {
        let store = &self.transfer.store;
        let lease = self.transfer.config.lease;
        while !stop.is_cancelled() {
            let claimed = store.claim(lease).await;
            let job = match claimed {
                Ok(Some(job)) => job,
                Ok(None) => {
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = self.wake.notified() => {}
                        _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                    }
                    continue;
                }
                Err(error) => {
                    tracing::error!(%error, "cannot claim a job");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            // A stop mid-transfer abandons the job; its lease lapses and it
            // runs again, which every step of a transfer allows.
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = self.process(job) => {}
            }
        }
    }

    /// Transfers one claimed job and records how it ended.
    pub async fn process(&self, job: Job) {
        let started = Instant::now();
        let store = &self.transfer.store;
        let lease = self.transfer.config.lease;
        let heartbeat = {
            let store = store.clone();
            let id = job.id;
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(lease / 3).await;
                    let _ = store.heartbeat(id, lease).await;
                }
            })
        };
        let started_at_ms = crate::store::now_ms();
        let result = self.transfer.run(&job.portal, job.deal_id, false).await;
        heartbeat.abort();
        let (outcome, summary) = match &result {
            Ok(Transferred::Skipped(reason)) => ("skipped", reason.clone()),
            Ok(Transferred::Routes(outcomes)) => (
                "done",
                outcomes
                    .iter()
                    .map(|o| format!("{}: {}", o.route(), o.result_label()))
                    .collect::<Vec<_>>()
                    .join("; "),
            ),
            Err(TransferError::Transient(m)) => ("retry", m.clone()),
            Err(TransferError::Permanent(m)) => ("failed", m.clone()),
        };
        let attempt = Attempt {
            number: job.attempts,
            started_at_ms,
            finished_at_ms: crate::store::now_ms(),
            outcome: outcome.to_owned(),
            message: summary,
        };
        let id = job.id;
        if let Err(error) = store.record_attempt(id, &attempt).await {
            tracing::warn!(job = id, %error, "cannot record the attempt");
        }
        let took = started.elapsed();
        let config = &self.transfer.config;
        let recorded = match result {
            Ok(Transferred::Skipped(reason)) => {
                tracing::info!(job = id, deal = job.deal_id, %reason, "skipped");
                self.metrics.transfer_finished("-", "skipped", took);
                store.finish(id, JobState::Skipped, &reason, None).await
            }
            Ok(Transferred::Routes(outcomes)) => {
                let summary: Vec<String> = outcomes
                    .iter()
                    .map(|o| {
                        self.metrics
                            .transfer_finished(o.route(), o.result_label(), took);
                        match o.target_id() {
                            Some(t) => format!("{}: {} deal {t}", o.route(), o.result_label()),
                            None => format!("{}: {}", o.route(), o.result_label()),
                        }
                    })
                    .collect();
                let target = outcomes.iter().find_map(|o| o.target_id());
                tracing::info!(job = id, deal = job.deal_id, result = %summary.join("; "), "transferred");
                let message = summary.join("; ");
                store.finish(id, JobState::Done, &message, target).await
            }
            Err(TransferError::Transient(message)) if job.attempts < config.max_attempts => {
                let delay = backoff(
                    config.retry_base_delay,
                    config.retry_max_delay,
                    job.attempts,
                );
                tracing::warn!(job = id, deal = job.deal_id, attempt = job.attempts, %message, retry_in = ?delay, "transfer failed; will retry");
                self.metrics.transfer_finished("-", "retry", took);
                store.retry_later(id, delay, &message).await
            }
            Err(error) => {
                let message = match &error {
                    TransferError::Transient(m) => {
                        format!("{m} (gave up after {} attempts)", job.attempts)
                    }
                    TransferError::Permanent(m) => m.clone(),
                };
                tracing::error!(job = id, deal = job.deal_id, %message, "transfer failed");
                self.metrics.transfer_finished("-", "failed", took);
                self.transfer
                    .report_failure(&job.portal, job.deal_id, &message)
                    .await;
                store.finish(id, JobState::Failed, &message, None).await
            }
        };
        if let Err(error) = recorded {
            tracing::error!(job = id, %error, "cannot record the end of a job; it will run again");
            return;
        }
        // Rule runs waiting on this job (and any left unanswered before).
        if let Some(portal) = self.transfer.portals.get(&job.portal) {
            crate::application::answer_finished_calls(
                &self.transfer.config,
                portal,
                store,
                &self.metrics,
                None,
            )
            .await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_within_bounds() {
        let base = Duration::from_secs(2);
        let max = Duration::from_secs(60);
        for _ in 0..50 {
            let first = backoff(base, max, 1);
            assert!(first >= Duration::from_secs(1) && first <= base);
            let late = backoff(base, max, 30);
            assert!(late >= max / 2 && late <= max);
        }
    }
}
