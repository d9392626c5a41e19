//! The edge's Prometheus metrics: one explicit registry, passed to whoever
//! records into it.

use std::sync::atomic::AtomicU64;
use std::time::{Duration, SystemTime};

use b24_nodes::LiveNodes;
use std::fmt::Write as _;
use std::sync::Arc;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::routes::DenyReason;

/// A route's label value: its prefix, or `none` when no route matched.
/// Shared, so that labelling a request costs no allocation.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct RouteLabel(Arc<str>);

impl EncodeLabelValue for RouteLabel {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> std::fmt::Result {
        encoder.write_str(&self.0)
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub route: RouteLabel,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: RouteLabel,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamErrorLabels {
    pub route: String,
    /// `connect`, `timeout` or `protocol`.
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FamilyLabels {
    pub family: &'static str,
}

type HistogramFamily = Family<RouteLabels, Histogram, fn() -> Histogram>;

/// Every metric the edge exports.
pub struct Metrics {
    registry: Registry,
    /// Per configured route, then one for "no route": its label and its
    /// duration histogram, looked up once at start.
    routes: Vec<(RouteLabel, Histogram)>,
    started: SystemTime,
    pub requests: Family<RequestLabels, Counter>,
    pub denials: Family<ReasonLabels, Counter>,
    pub request_duration: HistogramFamily,
    pub upstream_errors: Family<UpstreamErrorLabels, Counter>,
    pub tls_handshake_failures: Counter,
    pub open_connections: Gauge,
    pub certificate_expiry: Gauge,
    pub certificate_reload_failures: Counter,
    nodes_networks: Family<FamilyLabels, Gauge>,
    nodes_age: Gauge<f64, AtomicU64>,
    nodes_refreshes: Counter,
    nodes_refresh_failures: Counter,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

fn duration_histogram() -> Histogram {
    // 0.5 ms … ~65 s.
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.0005, 2.0, 18,
    ))
}

impl Metrics {
    /// Metrics for an edge with these route prefixes (in configuration
    /// order; [`Metrics::record_request`] takes an index into them).
    pub fn new(route_prefixes: &[String]) -> Metrics {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "b24_edge_requests",
            "Requests answered, by route prefix (\"none\" when no route matched) and HTTP status",
            requests.clone(),
        );
        let denials = Family::<ReasonLabels, Counter>::default();
        for reason in DenyReason::ALL {
            denials
                .get_or_create(&ReasonLabels {
                    reason: reason.as_str(),
                })
                .get();
        }
        registry.register(
            "b24_edge_denials",
            "Requests refused with 403, by reason",
            denials.clone(),
        );
        let request_duration: HistogramFamily = Family::new_with_constructor(duration_histogram);
        registry.register(
            "b24_edge_request_duration_seconds",
            "Time from request headers to response headers, by route prefix",
            request_duration.clone(),
        );
        let upstream_errors = Family::<UpstreamErrorLabels, Counter>::default();
        registry.register(
            "b24_edge_upstream_errors",
            "Forwarding failures, by route prefix and kind (connect, timeout, protocol)",
            upstream_errors.clone(),
        );
        let tls_handshake_failures = Counter::default();
        registry.register(
            "b24_edge_tls_handshake_failures",
            "Connections closed because the TLS handshake (or the PROXY header before it) failed or timed out",
            tls_handshake_failures.clone(),
        );
        let open_connections = Gauge::default();
        registry.register(
            "b24_edge_open_connections",
            "Client connections open now",
            open_connections.clone(),
        );
        let certificate_expiry = Gauge::default();
        registry.register(
            "b24_edge_certificate_expiry_timestamp_seconds",
            "Unix time at which the served certificate expires",
            certificate_expiry.clone(),
        );
        let certificate_reload_failures = Counter::default();
        registry.register(
            "b24_edge_certificate_reload_failures",
            "Certificate reloads that failed (the previous certificate stays in use)",
            certificate_reload_failures.clone(),
        );
        let nodes_networks = Family::<FamilyLabels, Gauge>::default();
        registry.register(
            "b24_edge_nodes_networks",
            "Networks in the current nodes list, by address family",
            nodes_networks.clone(),
        );
        let nodes_age = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "b24_edge_nodes_last_success_age_seconds",
            "Seconds since the nodes source last confirmed a list (since the edge started if it never did)",
            nodes_age.clone(),
        );
        let nodes_refreshes = Counter::default();
        registry.register(
            "b24_edge_nodes_refreshes",
            "Nodes list refreshes attempted since start",
            nodes_refreshes.clone(),
        );
        let nodes_refresh_failures = Counter::default();
        registry.register(
            "b24_edge_nodes_refresh_failures",
            "Nodes list refreshes that failed or were rejected since start",
            nodes_refresh_failures.clone(),
        );
        let routes = route_prefixes
            .iter()
            .map(String::as_str)
            .chain(["none"])
            .map(|prefix| {
                let label = RouteLabel(Arc::from(prefix));
                let histogram = request_duration
                    .get_or_create(&RouteLabels {
                        route: label.clone(),
                    })
                    .clone();
                (label, histogram)
            })
            .collect();
        Metrics {
            registry,
            routes,
            started: SystemTime::now(),
            requests,
            denials,
            request_duration,
            upstream_errors,
            tls_handshake_failures,
            open_connections,
            certificate_expiry,
            certificate_reload_failures,
            nodes_networks,
            nodes_age,
            nodes_refreshes,
            nodes_refresh_failures,
        }
    }

    /// Counts an answered request; `route` is the route's index, `None`
    /// when no route matched.
    pub fn record_request(&self, route: Option<usize>, status: u16, elapsed: Duration) {
        let (label, histogram) = &self.routes[route.unwrap_or(self.routes.len() - 1)];
        self.requests
            .get_or_create(&RequestLabels {
                route: label.clone(),
                status,
            })
            .inc();
        histogram.observe(elapsed.as_secs_f64());
    }

    pub fn record_denial(&self, reason: DenyReason) {
        self.denials
            .get_or_create(&ReasonLabels {
                reason: reason.as_str(),
            })
            .inc();
    }

    pub fn record_upstream_error(&self, route: &str, kind: &'static str) {
        self.upstream_errors
            .get_or_create(&UpstreamErrorLabels {
                route: route.to_owned(),
                kind,
            })
            .inc();
    }

    /// Copies the nodes list's state into the gauges (done at each scrape).
    pub fn observe_nodes(&self, nodes: &LiveNodes) {
        let (v4, v6) = nodes
            .current()
            .map_or((0, 0), |list| (list.v4().len(), list.v6().len()));
        let set = |family, value: usize| {
            self.nodes_networks
                .get_or_create(&FamilyLabels { family })
                .set(i64::try_from(value).unwrap_or(i64::MAX));
        };
        set("ipv4", v4);
        set("ipv6", v6);
        let status = nodes.status();
        let since = status.last_success.unwrap_or(self.started);
        let age = SystemTime::now()
            .duration_since(since)
            .unwrap_or_default()
            .as_secs_f64();
        self.nodes_age.set(age);
        // The refresh loop keeps running totals; counters only move forward.
        self.nodes_refreshes
            .inner()
            .fetch_max(status.total_refreshes, std::sync::atomic::Ordering::Relaxed);
        self.nodes_refresh_failures
            .inner()
            .fetch_max(status.total_failures, std::sync::atomic::Ordering::Relaxed);
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_conventions() {
        let metrics = Metrics::new(&["/".to_string()]);
        metrics.record_request(Some(0), 200, Duration::from_millis(3));
        metrics.record_request(None, 403, Duration::from_millis(1));
        metrics.record_denial(DenyReason::NotInNodes);
        metrics.record_upstream_error("/", "connect");
        metrics.observe_nodes(&LiveNodes::new());
        let text = metrics.encode();
        for expected in [
            "b24_edge_requests_total{route=\"/\",status=\"200\"} 1",
            "b24_edge_denials_total{reason=\"not_in_nodes\"} 1",
            "b24_edge_denials_total{reason=\"no_route\"} 0",
            "b24_edge_request_duration_seconds_count{route=\"/\"} 1",
            "b24_edge_requests_total{route=\"none\",status=\"403\"} 1",
            "b24_edge_upstream_errors_total{route=\"/\",kind=\"connect\"} 1",
            "b24_edge_tls_handshake_failures_total 0",
            "b24_edge_open_connections 0",
            "b24_edge_nodes_networks{family=\"ipv4\"} 0",
            "b24_edge_nodes_last_success_age_seconds ",
            "b24_edge_certificate_expiry_timestamp_seconds 0",
        ] {
            assert!(text.contains(expected), "{expected} missing from\n{text}");
        }
    }
}
