//! The list as long-running services see it: swapped atomically under
//! readers, refreshed in the background.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::{ArcSwap, ArcSwapOption};
use rand::Rng;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::cache::from_unix;
use crate::fetch::{Fetcher, Outcome};
use crate::list::{NodeList, display_network};
use crate::set::union_of;
use crate::source::Source;

/// What the refresh loop last did, for `/readyz` and metrics.
#[derive(Debug, Clone, Default)]
pub struct RefreshStatus {
    /// When the source last confirmed a list (from the cache at start-up).
    pub last_success: Option<SystemTime>,
    /// When the list last changed.
    pub last_change: Option<SystemTime>,
    pub consecutive_failures: u32,
    /// Failures since the process started.
    pub total_failures: u64,
    /// Refreshes that were attempted since the process started.
    pub total_refreshes: u64,
    pub last_error: Option<String>,
    /// Set while the newest list from the source was refused as unsafe
    /// (entries too broad or special-purpose): the refusal, naming the
    /// entry. The last good list stays in use.
    pub refused: Option<String>,
}

/// One source's part of the live list.
#[derive(Debug, Clone)]
pub struct SourceState {
    /// The source as displayed (credentials removed).
    pub source: String,
    pub list: Option<Arc<NodeList>>,
    pub status: RefreshStatus,
}

/// The current nodes list, shared by every request handler: the union of
/// every source's last good list.
///
/// Readers never block and never see a half-updated list: the list is an
/// immutable value behind an [`ArcSwapOption`], replaced whole. There is
/// one writer, the refresh loop.
#[derive(Debug, Default)]
pub struct LiveNodes {
    list: ArcSwapOption<NodeList>,
    status: ArcSwap<RefreshStatus>,
    parts: ArcSwap<Vec<SourceState>>,
}

impl LiveNodes {
    pub fn new() -> LiveNodes {
        LiveNodes::default()
    }

    /// Starts with the last good list a fetcher holds (from its cache file).
    pub fn from_fetcher(fetcher: &Fetcher) -> LiveNodes {
        LiveNodes::from_fetchers(std::slice::from_ref(fetcher))
    }

    /// Starts with the union of the last good lists the fetchers hold.
    pub fn from_fetchers(fetchers: &[Fetcher]) -> LiveNodes {
        let parts = fetchers
            .iter()
            .map(|fetcher| {
                let record = fetcher.record();
                let refused = record
                    .last_error
                    .clone()
                    .filter(|_| record.last_error_unsafe);
                SourceState {
                    source: fetcher.source().to_string(),
                    list: fetcher.current().cloned(),
                    status: RefreshStatus {
                        last_success: record.fetched_at.map(from_unix),
                        last_change: record.changed_at.map(from_unix),
                        consecutive_failures: record.consecutive_failures,
                        last_error: record.last_error.clone(),
                        refused,
                        ..RefreshStatus::default()
                    },
                }
            })
            .collect();
        let live = LiveNodes::new();
        live.publish(parts);
        live
    }

    /// Each source's part, in configuration order.
    pub fn sources(&self) -> Arc<Vec<SourceState>> {
        self.parts.load_full()
    }

    /// Publishes new parts: their union becomes the list, their statuses
    /// the combined status.
    fn publish(&self, parts: Vec<SourceState>) {
        let union = union_of(parts.iter().filter_map(|p| p.list.clone()));
        // Swap only when the admitted set really changed: an unchanged
        // union keeps the same allocation readers already hold.
        let current = self.list.load_full();
        let same = match (&current, &union) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b) || **a == **b,
            (None, None) => true,
            _ => false,
        };
        if !same {
            self.list.store(union);
        }
        self.status.store(Arc::new(combined_status(&parts)));
        self.parts.store(Arc::new(parts));
    }

    /// The current list, if there is one.
    pub fn current(&self) -> Option<Arc<NodeList>> {
        self.list.load_full()
    }

    /// Whether `addr` is in the current list; `None` when there is no list
    /// at all (callers fail closed and say why).
    #[inline]
    pub fn contains(&self, addr: IpAddr) -> Option<bool> {
        self.list.load().as_ref().map(|list| list.contains(addr))
    }

    pub fn status(&self) -> Arc<RefreshStatus> {
        self.status.load_full()
    }

    /// Replaces the list (the refresh loop does this; tests may too).
    pub fn store(&self, list: Arc<NodeList>) {
        self.list.store(Some(list));
    }

    /// Records the outcome of one refresh of the only (or first) source.
    pub fn apply(&self, outcome: &Outcome) {
        self.apply_source(0, outcome);
    }

    /// Records the outcome of one refresh of source `index`, swapping in a
    /// new union if its list changed.
    pub fn apply_source(&self, index: usize, outcome: &Outcome) {
        if matches!(outcome, Outcome::Throttled { .. }) {
            return;
        }
        let mut parts = Vec::clone(&self.parts.load());
        if parts.len() <= index {
            parts.resize_with(index + 1, || SourceState {
                source: String::new(),
                list: None,
                status: RefreshStatus::default(),
            });
        }
        let part = &mut parts[index];
        let now = SystemTime::now();
        let status = &mut part.status;
        match outcome {
            Outcome::Changed { list, .. } => {
                part.list = Some(list.clone());
                status.total_refreshes += 1;
                status.last_success = Some(now);
                status.last_change = Some(now);
                status.consecutive_failures = 0;
                status.last_error = None;
                status.refused = None;
            }
            Outcome::Unchanged { list } => {
                // A handle created empty (not from the fetcher) learns the
                // list from the first confirmation, e.g. a 304 for the
                // cached list.
                if part.list.is_none() {
                    part.list = Some(list.clone());
                }
                status.total_refreshes += 1;
                status.last_success = Some(now);
                status.consecutive_failures = 0;
                status.last_error = None;
                status.refused = None;
            }
            Outcome::Throttled { .. } => unreachable!("returned above"),
            Outcome::Failed { error, .. } => {
                status.total_refreshes += 1;
                status.total_failures += 1;
                status.consecutive_failures = status.consecutive_failures.saturating_add(1);
                status.last_error = Some(error.to_string());
                status.refused = error.is_unsafe_list().then(|| error.to_string());
            }
        }
        self.publish(parts);
    }
}

/// What `/readyz` and the metrics see for several sources: the worst of
/// each (the oldest confirmation, the longest failure streak), the sums of
/// the counters, and every source's error named by its source.
fn combined_status(parts: &[SourceState]) -> RefreshStatus {
    if let [only] = parts {
        return only.status.clone();
    }
    let named = |pick: fn(&RefreshStatus) -> Option<&String>| {
        let texts: Vec<String> = parts
            .iter()
            .filter_map(|p| pick(&p.status).map(|e| format!("{}: {e}", p.source)))
            .collect();
        (!texts.is_empty()).then(|| texts.join("; "))
    };
    RefreshStatus {
        last_success: parts.iter().map(|p| p.status.last_success).min().flatten(),
        last_change: parts.iter().filter_map(|p| p.status.last_change).max(),
        consecutive_failures: parts
            .iter()
            .map(|p| p.status.consecutive_failures)
            .max()
            .unwrap_or(0),
        total_failures: parts.iter().map(|p| p.status.total_failures).sum(),
        total_refreshes: parts.iter().map(|p| p.status.total_refreshes).sum(),
        last_error: named(|s| s.last_error.as_ref()),
        refused: named(|s| s.refused.as_ref()),
    }
}

/// When the refresh loop runs.
#[derive(Debug, Clone)]
pub struct Schedule {
    /// Between two requests to a URL source (default 5 min). Never below
    /// the fetcher's minimum interval (60 s unless a test lowers it).
    pub interval: Duration,
    /// Each wait is the interval ± this share of it, so that many servers
    /// started together do not poll in step.
    pub jitter: f64,
    /// How often a file source is checked for a new version (a `stat`; the
    /// file is read only when it changed).
    pub file_poll: Duration,
}

impl Default for Schedule {
    fn default() -> Self {
        Schedule {
            interval: Duration::from_secs(300),
            jitter: 0.1,
            file_poll: Duration::from_secs(1),
        }
    }
}

impl Schedule {
    /// The next wait after an outcome: the polling period for a file; for a
    /// URL, the jittered interval, or after a failure a shorter retry that
    /// doubles (60 s, 120 s…) up to the interval.
    fn next_wait(
        &self,
        source: &Source,
        outcome: &Outcome,
        failures: u32,
        floor: Duration,
    ) -> Duration {
        if let Source::File(_) = source {
            return self.file_poll;
        }
        let interval = self.interval.max(floor);
        let base = match outcome {
            Outcome::Failed { .. } => {
                let doubling = 2u32.saturating_pow(failures.saturating_sub(1).min(16));
                floor.saturating_mul(doubling).min(interval)
            }
            Outcome::Throttled { retry_in, .. } => return *retry_in + Duration::from_millis(100),
            _ => interval,
        };
        jittered(base, self.jitter, floor)
    }
}

fn jittered(base: Duration, jitter: f64, floor: Duration) -> Duration {
    let jitter = jitter.clamp(0.0, 0.5);
    if jitter == 0.0 {
        return base;
    }
    let factor = rand::rng().random_range(1.0 - jitter..=1.0 + jitter);
    base.mul_f64(factor).max(floor.min(base))
}

/// Runs the refresh loop of one source until `stop` is cancelled (see
/// [`run_refresh_loops`]).
pub async fn run_refresh_loop(
    fetcher: Fetcher,
    live: Arc<LiveNodes>,
    schedule: Schedule,
    stop: CancellationToken,
) {
    run_refresh_loops(vec![fetcher], live, schedule, stop).await
}

/// Runs the refresh loop of several sources until `stop` is cancelled: each
/// source is refreshed on its own schedule (its own interval, back-off and
/// 60 s rule), its outcome published into `live` as its part of the union,
/// and what changed logged. The first refresh of each happens at once (it
/// is throttled by its cache file if the source was asked recently). One
/// task drives them all, so `live` has a single writer.
pub async fn run_refresh_loops(
    mut fetchers: Vec<Fetcher>,
    live: Arc<LiveNodes>,
    schedule: Schedule,
    stop: CancellationToken,
) {
    if fetchers.is_empty() {
        return;
    }
    let start = tokio::time::Instant::now();
    let mut due = vec![start; fetchers.len()];
    loop {
        let (index, when) = due
            .iter()
            .copied()
            .enumerate()
            .min_by_key(|(_, when)| *when)
            .expect("at least one source");
        tokio::select! {
            _ = tokio::time::sleep_until(when) => {}
            _ = stop.cancelled() => return,
        }
        let fetcher = &mut fetchers[index];
        let outcome = tokio::select! {
            outcome = fetcher.refresh() => outcome,
            _ = stop.cancelled() => return,
        };
        let source = fetcher.source().clone();
        log_outcome(&source, &outcome);
        live.apply_source(index, &outcome);
        let failures = live
            .sources()
            .get(index)
            .map_or(0, |p| p.status.consecutive_failures);
        let wait = schedule.next_wait(&source, &outcome, failures, fetcher.options().min_interval);
        due[index] = tokio::time::Instant::now() + wait;
    }
}

fn log_outcome(source: &Source, outcome: &Outcome) {
    match outcome {
        Outcome::Changed { list, diff } => {
            let shown = |nets: &[ipnet::IpNet]| {
                let mut text: Vec<String> = nets.iter().take(20).map(display_network).collect();
                if nets.len() > 20 {
                    text.push(format!("… {} more", nets.len() - 20));
                }
                text.join(" ")
            };
            info!(
                %source,
                networks = list.len(),
                added = %shown(&diff.added),
                removed = %shown(&diff.removed),
                "nodes list changed"
            );
        }
        Outcome::Failed { error, list } => warn!(
            %source,
            %error,
            keeping = list.as_ref().map_or(0, |l| l.len()),
            "nodes refresh failed; keeping the last good list"
        ),
        Outcome::Unchanged { .. } | Outcome::Throttled { .. } => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fetch::{FetchError, MIN_INTERVAL};

    fn list(doc: &str) -> Arc<NodeList> {
        Arc::new(NodeList::parse(doc.as_bytes(), &Default::default()).unwrap())
    }

    #[test]
    fn failures_keep_the_list_and_count() {
        let live = LiveNodes::new();
        assert_eq!(live.contains("1.1.1.1".parse().unwrap()), None);
        let first = list(r#"{"nodes": ["1.1.1.1"]}"#);
        live.apply(&Outcome::Changed {
            list: first.clone(),
            diff: Default::default(),
        });
        assert_eq!(live.contains("1.1.1.1".parse().unwrap()), Some(true));
        live.apply(&Outcome::Failed {
            error: FetchError::Status {
                origin: "s".into(),
                status: 500,
            },
            list: Some(first),
        });
        assert_eq!(live.contains("1.1.1.1".parse().unwrap()), Some(true));
        let status = live.status();
        assert_eq!(status.consecutive_failures, 1);
        assert_eq!(status.total_failures, 1);
        assert!(status.last_error.as_deref().unwrap().contains("500"));
    }

    #[test]
    fn waits_respect_the_floor_and_back_off() {
        let url: Source = "https://example.test/app.json".parse().unwrap();
        let schedule = Schedule {
            interval: Duration::from_secs(10),
            jitter: 0.0,
            ..Default::default()
        };
        let ok = Outcome::Unchanged {
            list: list(r#"{"nodes": ["1.1.1.1"]}"#),
        };
        assert_eq!(schedule.next_wait(&url, &ok, 0, MIN_INTERVAL), MIN_INTERVAL);
        let schedule = Schedule {
            interval: Duration::from_secs(600),
            jitter: 0.0,
            ..Default::default()
        };
        let failed = Outcome::Failed {
            error: FetchError::Status {
                origin: "s".into(),
                status: 500,
            },
            list: None,
        };
        assert_eq!(
            schedule.next_wait(&url, &failed, 1, MIN_INTERVAL),
            Duration::from_secs(60)
        );
        assert_eq!(
            schedule.next_wait(&url, &failed, 2, MIN_INTERVAL),
            Duration::from_secs(120)
        );
        assert_eq!(
            schedule.next_wait(&url, &failed, 30, MIN_INTERVAL),
            Duration::from_secs(600)
        );
        let jittered_schedule = Schedule {
            interval: Duration::from_secs(300),
            jitter: 0.1,
            ..Default::default()
        };
        for _ in 0..100 {
            let wait = jittered_schedule.next_wait(&url, &ok, 0, MIN_INTERVAL);
            assert!(
                wait >= Duration::from_secs(270) && wait <= Duration::from_secs(330),
                "{wait:?}"
            );
        }
        let file: Source = "/tmp/app.json".parse().unwrap();
        assert_eq!(
            schedule.next_wait(&file, &failed, 3, MIN_INTERVAL),
            Duration::from_secs(1)
        );
    }
}
