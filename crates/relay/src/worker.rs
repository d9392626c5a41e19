//! Workers: claim a job, transfer, then finish, retry later (backoff with
//! jitter) or fail with a message. A claimed job carries a lease renewed by
//! a heartbeat, so a job held by a killed process becomes due again.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::store::{Attempt, Job, JobState};
use crate::transfer::{RouteOutcome, Transfer, TransferError, Transferred};

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
                if let Ok((live, backfill)) = workers.transfer.store.pending_by_trigger().await {
                    workers.metrics.set_pending_by_kind(live, backfill);
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
            // A stop mid-transfer abandons the attempt and gives the job
            // back uncounted; it runs again, which every step of a transfer
            // allows (if even that fails, its lease lapses).
            let id = job.id;
            tokio::select! {
                _ = stop.cancelled() => {
                    if let Err(error) = store.release(id).await {
                        tracing::warn!(job = id, %error, "cannot give the job back; it runs again when its lease lapses");
                    }
                    break;
                }
                _ = self.process(job) => {}
            }
        }
    }

    /// Transfers one claimed job and records how it ended. Cancelling the
    /// returned future (a stop mid-transfer) also ends its heartbeat, so
    /// the lease lapses and the job runs again.
    pub async fn process(&self, job: Job) {
        let started = Instant::now();
        let store = &self.transfer.store;
        let lease = self.transfer.config.lease;
        let heartbeat = {
            let store = store.clone();
            let id = job.id;
            AbortOnDrop(tokio::spawn(async move {
                loop {
                    tokio::time::sleep(lease / 3).await;
                    let _ = store.heartbeat(id, lease).await;
                }
            }))
        };
        let started_at_ms = crate::store::now_ms();
        let result = if self.is_echo(&job).await {
            Ok(Transferred::Skipped(
                "the relay's own write-back, seen as an event: nothing changed".to_owned(),
            ))
        } else {
            let holder = format!("job-{}-{}", job.id, job.attempts);
            self.transfer
                .run(&job.portal, job.deal_id, false, &holder)
                .await
        };
        drop(heartbeat);
        let verdict = Verdict::of(&job, result, &self.transfer.config);
        let attempt = Attempt {
            number: job.attempts,
            started_at_ms,
            finished_at_ms: crate::store::now_ms(),
            outcome: verdict.label().to_owned(),
            message: verdict.message(),
        };
        let id = job.id;
        if let Err(error) = store.record_attempt(id, &attempt).await {
            tracing::warn!(job = id, %error, "cannot record the attempt");
        }
        let took = started.elapsed();
        let recorded = match verdict {
            Verdict::Skipped(reason) => {
                tracing::info!(job = id, deal = job.deal_id, %reason, "skipped");
                self.metrics.transfer_finished("-", "skipped", took);
                store.finish(id, JobState::Skipped, &reason, None).await
            }
            Verdict::Done { outcomes } => {
                for o in &outcomes {
                    self.metrics
                        .transfer_finished(o.route(), o.result_label(), took);
                }
                let message = summary(&outcomes);
                let target = outcomes.iter().find_map(|o| o.target_id());
                tracing::info!(job = id, deal = job.deal_id, result = %message, "transferred");
                store.finish(id, JobState::Done, &message, target).await
            }
            Verdict::Retry { error, delay } => {
                let message = error.detailed();
                tracing::warn!(job = id, deal = job.deal_id, attempt = job.attempts, %message, retry_in = ?delay, "transfer failed; will retry");
                self.metrics.transfer_finished("-", "retry", took);
                store.retry_later(id, delay, &message).await
            }
            Verdict::Failed { error, message } => {
                tracing::error!(job = id, deal = job.deal_id, %message, "transfer failed");
                self.metrics.transfer_finished("-", "failed", took);
                crate::transfer::report_failure(&self.transfer, &job.portal, job.deal_id, &error)
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

    /// A job made only of deal-update events that the relay's own
    /// write-back caused (see `transfer::writeback`): nothing to read.
    async fn is_echo(&self, job: &Job) -> bool {
        if !job.trigger.eq_ignore_ascii_case("ONCRMDEALUPDATE") {
            return false;
        }
        let events = job.coalesced.saturating_add(1);
        match self
            .transfer
            .store
            .take_echo(&job.portal, job.deal_id, events)
            .await
        {
            Ok(echo) => echo,
            Err(error) => {
                tracing::warn!(job = job.id, %error, "cannot check for an echo; reading the deal");
                false
            }
        }
    }
}

/// Aborts the task when dropped: the heartbeat ends with the transfer,
/// also when the transfer's future is cancelled.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// How a job's attempt ended, decided once: the attempt record and the
/// job's new state both come from it.
#[derive(Debug)]
enum Verdict {
    Skipped(String),
    Done {
        outcomes: Vec<RouteOutcome>,
    },
    Retry {
        error: TransferError,
        delay: Duration,
    },
    Failed {
        error: TransferError,
        message: String,
    },
}

impl Verdict {
    fn of(job: &Job, result: Result<Transferred, TransferError>, config: &Config) -> Self {
        match result {
            Ok(Transferred::Skipped(reason)) => Verdict::Skipped(reason),
            Ok(Transferred::Routes(outcomes)) => Verdict::Done { outcomes },
            Err(error) if error.is_transient() && job.attempts < config.max_attempts => {
                Verdict::Retry {
                    delay: backoff(
                        config.retry_base_delay,
                        config.retry_max_delay,
                        job.attempts,
                    ),
                    error,
                }
            }
            Err(error) => {
                let message = if error.is_transient() {
                    format!(
                        "{} (gave up after {} attempts)",
                        error.detailed(),
                        job.attempts
                    )
                } else {
                    error.detailed()
                };
                Verdict::Failed { error, message }
            }
        }
    }

    fn label(&self) -> &'static str {
        match self {
            Verdict::Skipped(_) => "skipped",
            Verdict::Done { .. } => "done",
            Verdict::Retry { .. } => "retry",
            Verdict::Failed { .. } => "failed",
        }
    }

    fn message(&self) -> String {
        match self {
            Verdict::Skipped(reason) => reason.clone(),
            Verdict::Done { outcomes } => summary(outcomes),
            Verdict::Retry { error, .. } => error.detailed(),
            Verdict::Failed { message, .. } => message.clone(),
        }
    }
}

fn summary(outcomes: &[RouteOutcome]) -> String {
    outcomes
        .iter()
        .map(|o| match o.target_id() {
            Some(t) => format!("{}: {} deal {t}", o.route(), o.result_label()),
            None => format!("{}: {}", o.route(), o.result_label()),
        })
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(attempts: u32) -> Job {
        Job {
            id: 1,
            portal: "partner".into(),
            deal_id: 7,
            trigger: "rule".into(),
            state: JobState::Running,
            attempts,
            interruptions: 0,
            coalesced: 0,
            created_at_ms: 0,
            updated_at_ms: 0,
            message: None,
            target_deal_id: None,
        }
    }

    fn config(max_attempts: u32) -> Config {
        let mut config = Config::parse("listen = \"127.0.0.1:0\"").unwrap();
        config.max_attempts = max_attempts;
        config
    }

    #[test]
    fn the_last_attempt_of_a_transient_failure_is_recorded_as_failed() {
        let config = config(3);
        let transient = || {
            TransferError::transient(
                crate::transfer::ErrorKind::Transport,
                "reading the source deal",
            )
        };
        let early = Verdict::of(&job(1), Err(transient()), &config);
        assert_eq!(early.label(), "retry");
        let last = Verdict::of(&job(3), Err(transient()), &config);
        assert_eq!(last.label(), "failed", "the attempt and the job agree");
        assert!(
            last.message().contains("gave up after 3 attempts"),
            "{}",
            last.message()
        );
        assert!(
            last.message().starts_with("[transport, will retry]"),
            "{}",
            last.message()
        );
        let permanent = TransferError::permanent(crate::transfer::ErrorKind::Config, "no portal");
        assert_eq!(
            Verdict::of(&job(1), Err(permanent), &config).label(),
            "failed"
        );
    }

    #[tokio::test]
    async fn a_cancelled_transfer_ends_its_heartbeat() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
        let guard = AbortOnDrop(tokio::spawn(async move {
            loop {
                let _ = tx.send(());
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }));
        let work = async move {
            let _guard = guard;
            std::future::pending::<()>().await;
        };
        // The transfer is cancelled (as by a stop) after a short while.
        let _ = tokio::time::timeout(Duration::from_millis(30), work).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        while rx.try_recv().is_ok() {}
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert!(
            rx.try_recv().is_err(),
            "the heartbeat outlived the cancelled transfer"
        );
    }

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
