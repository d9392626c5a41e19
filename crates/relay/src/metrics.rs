//! Prometheus metrics of the relay. Labels carry portal names, methods,
//! routes and outcomes, never a secret.

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use b24_client::{Observer, RequestEvent};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::store::QueueStats;

type Labels = Vec<(&'static str, String)>;

/// Every metric the relay exports, registered once.
pub struct Metrics {
    registry: Registry,
    jobs: Family<Labels, Gauge>,
    queue_depth: Gauge,
    pending_by_kind: Family<Labels, Gauge>,
    replicas: Gauge,
    shared_budget: Family<Labels, Gauge<f64, AtomicU64>>,
    shared_budget_size: Family<Labels, Gauge<f64, AtomicU64>>,
    oldest_pending: Gauge<f64, AtomicU64>,
    transfers: Family<Labels, Counter>,
    transfer_seconds: Histogram,
    portal_requests: Family<Labels, Counter>,
    rate_limit_waits: Family<Labels, Counter>,
    rate_limit_wait_seconds: Family<Labels, Counter<f64, AtomicU64>>,
    intake: Family<Labels, Counter>,
    token_refreshes: Family<Labels, Counter>,
    app_reinstall_needed: Family<Labels, Gauge>,
    rule_answers: Family<Labels, Counter>,
    batch_requests: Family<Labels, Counter>,
    batch_callers: Family<Labels, Counter>,
    batch_commands: Family<Labels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("b24_relay");
        let jobs = Family::<Labels, Gauge>::default();
        registry.register("jobs", "Jobs by state", jobs.clone());
        let queue_depth = Gauge::default();
        registry.register(
            "queue_depth",
            "Jobs waiting or running",
            queue_depth.clone(),
        );
        let pending_by_kind = Family::<Labels, Gauge>::default();
        registry.register(
            "pending_jobs",
            "Jobs waiting, by kind: live (events, rule runs, the CLI) or backfill (`b24-relay backfill`, claimed after every live job)",
            pending_by_kind.clone(),
        );
        let replicas = Gauge::default();
        registry.register(
            "replicas",
            "Relay processes serving from this store (PostgreSQL: replicas seen in the last 15 s; SQLite: 1)",
            replicas.clone(),
        );
        let shared_budget = Family::<Labels, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "shared_rate_budget_level",
            "Requests in each portal's shared rate budget not drained yet at its last reservation, by host (PostgreSQL, rate_scope = shared); compare with shared_rate_budget_size",
            shared_budget.clone(),
        );
        let shared_budget_size = Family::<Labels, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "shared_rate_budget_size",
            "Requests each portal's shared budget lets through back to back (the configured burst less the relay's headroom), by host",
            shared_budget_size.clone(),
        );
        let oldest_pending = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "oldest_pending_job_age_seconds",
            "Age of the oldest job not finished yet",
            oldest_pending.clone(),
        );
        let transfers = Family::<Labels, Counter>::default();
        registry.register(
            "transfers",
            "Transfers by route and result",
            transfers.clone(),
        );
        let transfer_seconds = Histogram::new(exponential_buckets(0.05, 2.0, 14));
        registry.register(
            "transfer_duration_seconds",
            "Time from claiming a job to its end",
            transfer_seconds.clone(),
        );
        let portal_requests = Family::<Labels, Counter>::default();
        registry.register(
            "portal_requests",
            "HTTP requests to portals by portal, method and outcome code",
            portal_requests.clone(),
        );
        let rate_limit_waits = Family::<Labels, Counter>::default();
        registry.register(
            "rate_limit_waits",
            "Requests that waited for the portal's leaky bucket",
            rate_limit_waits.clone(),
        );
        let rate_limit_wait_seconds = Family::<Labels, Counter<f64, AtomicU64>>::default();
        registry.register(
            "rate_limit_wait_seconds",
            "Time spent waiting for portals' leaky buckets",
            rate_limit_wait_seconds.clone(),
        );
        let intake = Family::<Labels, Counter>::default();
        registry.register(
            "intake_requests",
            "Intake requests by kind and HTTP status",
            intake.clone(),
        );
        let token_refreshes = Family::<Labels, Counter>::default();
        registry.register(
            "oauth_token_refreshes",
            "OAuth token refreshes by portal and result",
            token_refreshes.clone(),
        );
        let app_reinstall_needed = Family::<Labels, Gauge>::default();
        registry.register(
            "app_reinstall_needed",
            "1 while a portal's local application must be installed again (its refresh was refused)",
            app_reinstall_needed.clone(),
        );
        let rule_answers = Family::<Labels, Counter>::default();
        registry.register(
            "rule_answers",
            "Answers to the automation rule (bizproc.event.send) by portal and result",
            rule_answers.clone(),
        );
        // Batch fill: commands per shared request = commands / requests;
        // jobs sharing a request = callers / requests.
        let batch_requests = Family::<Labels, Counter>::default();
        registry.register(
            "batch_requests",
            "batch requests sent on behalf of the transfers, by portal",
            batch_requests.clone(),
        );
        let batch_callers = Family::<Labels, Counter>::default();
        registry.register(
            "batch_callers",
            "Transfer steps carried by those batch requests (several share one while the portal's bucket is the limit)",
            batch_callers.clone(),
        );
        let batch_commands = Family::<Labels, Counter>::default();
        registry.register(
            "batch_commands",
            "Commands carried by those batch requests (at most 50 each)",
            batch_commands.clone(),
        );
        Self {
            batch_requests,
            batch_callers,
            batch_commands,
            token_refreshes,
            app_reinstall_needed,
            rule_answers,
            registry,
            jobs,
            queue_depth,
            pending_by_kind,
            replicas,
            shared_budget,
            shared_budget_size,
            oldest_pending,
            transfers,
            transfer_seconds,
            portal_requests,
            rate_limit_waits,
            rate_limit_wait_seconds,
            intake,
        }
    }

    /// One shared `batch` request to `portal` with `callers` transfer
    /// steps and `commands` commands in it.
    pub fn batch_sent(&self, portal: &str, callers: usize, commands: usize) {
        let labels = vec![("portal", portal.to_owned())];
        self.batch_requests.get_or_create(&labels).inc();
        self.batch_callers
            .get_or_create(&labels)
            .inc_by(callers as u64);
        self.batch_commands
            .get_or_create(&labels)
            .inc_by(commands as u64);
    }

    pub fn transfer_finished(&self, route: &str, result: &str, took: Duration) {
        self.transfers
            .get_or_create(&vec![
                ("route", route.to_owned()),
                ("result", result.to_owned()),
            ])
            .inc();
        self.transfer_seconds.observe(took.as_secs_f64());
    }

    pub fn intake_answered(&self, kind: &str, status: u16) {
        self.intake
            .get_or_create(&vec![
                ("kind", kind.to_owned()),
                ("status", status.to_string()),
            ])
            .inc();
    }

    pub fn set_queue(&self, stats: &QueueStats) {
        let mut depth = 0;
        for (state, count) in &stats.by_state {
            self.jobs
                .get_or_create(&vec![("state", state.as_str().to_owned())])
                .set(*count as i64);
            if matches!(
                state,
                crate::store::JobState::Pending | crate::store::JobState::Running
            ) {
                depth += *count as i64;
            }
        }
        self.queue_depth.set(depth);
        self.replicas.set(
            stats
                .replicas
                .map_or(1, |n| i64::try_from(n).unwrap_or(i64::MAX)),
        );
        self.oldest_pending.set(
            stats
                .oldest_pending_age
                .map_or(0.0, |age| age.as_secs_f64()),
        );
    }

    /// Waiting jobs: live ones and backfill ones.
    pub fn set_pending_by_kind(&self, live: u64, backfill: u64) {
        for (kind, count) in [("live", live), ("backfill", backfill)] {
            self.pending_by_kind
                .get_or_create(&vec![("kind", kind.to_owned())])
                .set(i64::try_from(count).unwrap_or(i64::MAX));
        }
    }

    /// The shared rate budget of a portal host: its level and its size.
    pub fn set_shared_budget(&self, host: &str, level: f64, size: f64) {
        let labels = vec![("host", host.to_owned())];
        self.shared_budget.get_or_create(&labels).set(level);
        self.shared_budget_size.get_or_create(&labels).set(size);
    }

    /// A refresh was refused (`refused`) for a configured portal.
    pub fn token_refresh_refused(&self, portal: &str) {
        self.token_refreshes
            .get_or_create(&vec![
                ("portal", portal.to_owned()),
                ("result", "refused".to_owned()),
            ])
            .inc();
    }

    pub fn set_reinstall_needed(&self, portal: &str, needed: bool) {
        self.app_reinstall_needed
            .get_or_create(&vec![("portal", portal.to_owned())])
            .set(i64::from(needed));
    }

    pub fn rule_answered(&self, portal: &str, result: &str) {
        self.rule_answers
            .get_or_create(&vec![
                ("portal", portal.to_owned()),
                ("result", result.to_owned()),
            ])
            .inc();
    }

    /// Requests counted for one portal and outcome code (for tests and benchmarks).
    pub fn portal_request_count(&self, portal: &str, method: &str, code: &str) -> u64 {
        self.portal_requests
            .get_or_create(&vec![
                ("portal", portal.to_owned()),
                ("method", method.to_owned()),
                ("code", code.to_owned()),
            ])
            .get()
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

impl Observer for Metrics {
    fn request_finished(&self, event: &RequestEvent<'_>) {
        self.portal_requests
            .get_or_create(&vec![
                ("portal", event.portal.to_owned()),
                ("method", event.method.to_owned()),
                ("code", event.outcome.to_owned()),
            ])
            .inc();
    }

    fn token_refreshed(&self, portal: &str) {
        self.token_refreshes
            .get_or_create(&vec![
                ("portal", portal.to_owned()),
                ("result", "ok".to_owned()),
            ])
            .inc();
    }

    fn rate_limit_waited(&self, portal: &str, waited: Duration) {
        let labels = vec![("portal", portal.to_owned())];
        self.rate_limit_waits.get_or_create(&labels).inc();
        self.rate_limit_wait_seconds
            .get_or_create(&labels)
            .inc_by(waited.as_secs_f64());
    }
}

/// The relay's metrics as one portal's clients report to them: the client
/// knows the portal by its host; every metric is labelled with the
/// configured name (`portal="partner"`), like the rest of the relay's.
pub struct PortalObserver {
    name: String,
    metrics: std::sync::Arc<Metrics>,
}

impl PortalObserver {
    pub fn new(name: &str, metrics: std::sync::Arc<Metrics>) -> std::sync::Arc<Self> {
        std::sync::Arc::new(PortalObserver {
            name: name.to_owned(),
            metrics,
        })
    }
}

impl Observer for PortalObserver {
    fn request_finished(&self, event: &RequestEvent<'_>) {
        self.metrics.request_finished(&RequestEvent {
            portal: &self.name,
            ..event.clone()
        });
    }

    fn token_refreshed(&self, _host: &str) {
        self.metrics.token_refreshed(&self.name);
    }

    fn rate_limit_waited(&self, _host: &str, waited: Duration) {
        self.metrics.rate_limit_waited(&self.name, waited);
    }

    fn batch_sent(&self, _host: &str, callers: usize, commands: usize) {
        self.metrics.batch_sent(&self.name, callers, commands);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::JobState;

    #[test]
    fn renders_the_documented_families() {
        let metrics = Metrics::new();
        metrics.transfer_finished("p2e", "created", Duration::from_millis(300));
        metrics.intake_answered("event", 200);
        metrics.set_queue(&QueueStats {
            by_state: vec![(JobState::Pending, 3), (JobState::Running, 1)],
            oldest_pending_age: Some(Duration::from_secs(7)),
            replicas: Some(3),
        });
        metrics.set_pending_by_kind(2, 40);
        metrics.request_finished(&RequestEvent {
            portal: "127.0.0.1:5",
            method: "batch",
            outcome: "ok",
            status: Some(200),
            elapsed: Duration::from_millis(3),
            attempt: 1,
        });
        metrics.rate_limit_waited("127.0.0.1:5", Duration::from_millis(500));
        let text = metrics.render();
        for expected in [
            "b24_relay_transfers_total{route=\"p2e\",result=\"created\"} 1",
            "b24_relay_queue_depth 4",
            "b24_relay_replicas 3",
            "b24_relay_oldest_pending_job_age_seconds 7",
            "b24_relay_jobs{state=\"pending\"} 3",
            "b24_relay_pending_jobs{kind=\"live\"} 2",
            "b24_relay_pending_jobs{kind=\"backfill\"} 40",
            "b24_relay_portal_requests_total{portal=\"127.0.0.1:5\",method=\"batch\",code=\"ok\"} 1",
            "b24_relay_rate_limit_waits_total{portal=\"127.0.0.1:5\"} 1",
            "b24_relay_intake_requests_total{kind=\"event\",status=\"200\"} 1",
            "b24_relay_transfer_duration_seconds_bucket",
        ] {
            assert!(text.contains(expected), "{expected} missing in\n{text}");
        }
        assert_eq!(
            metrics.portal_request_count("127.0.0.1:5", "batch", "ok"),
            1
        );
    }

    #[test]
    fn a_portal_client_reports_under_the_configured_name() {
        let metrics = std::sync::Arc::new(Metrics::new());
        let observer = PortalObserver::new("partner", metrics.clone());
        observer.request_finished(&RequestEvent {
            portal: "127.0.0.1:39735",
            method: "crm.item.get",
            outcome: "ok",
            status: Some(200),
            elapsed: Duration::from_millis(3),
            attempt: 1,
        });
        observer.rate_limit_waited("127.0.0.1:39735", Duration::from_millis(5));
        observer.token_refreshed("127.0.0.1:39735");
        let text = metrics.render();
        assert!(!text.contains("127.0.0.1:39735"), "{text}");
        assert_eq!(
            metrics.portal_request_count("partner", "crm.item.get", "ok"),
            1
        );
        assert!(
            text.contains("b24_relay_rate_limit_waits_total{portal=\"partner\"} 1"),
            "{text}"
        );
    }
}
