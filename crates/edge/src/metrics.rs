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

use crate::admit::DenyReason;

/// A route's label value: its prefix, or `none` when no route matched.
/// Shared, so that labelling a request costs no allocation.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct RouteLabel(Arc<str>);

impl RouteLabel {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// What a route records into: its label and its duration histogram, looked
/// up once when the route is built so that a request costs no lookup.
#[derive(Clone, Debug)]
pub struct RouteMetrics {
    label: RouteLabel,
    duration: Histogram,
}

impl RouteMetrics {
    pub fn label(&self) -> &RouteLabel {
        &self.label
    }
}

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
    pub route: RouteLabel,
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
    /// Requests no route matched.
    unrouted: RouteMetrics,
    started: SystemTime,
    pub requests: Family<RequestLabels, Counter>,
    /// One counter per reason, in [`DenyReason::ALL`] order.
    denials: Vec<Counter>,
    pub request_duration: HistogramFamily,
    pub upstream_errors: Family<UpstreamErrorLabels, Counter>,
    pub tls_handshake_failures: Counter,
    /// One counter per [`ProxyHeaderFailure`].
    proxy_header_failures: Vec<Counter>,
    /// One counter per [`ConnectionRefusal`].
    connections_refused: Vec<Counter>,
    /// One counter per [`BadRequest`].
    bad_requests: Vec<Counter>,
    pub request_head_timeouts: Counter,
    pub idle_closes: Counter,
    pub client_body_timeouts: Counter,
    pub send_timeouts: Counter,
    pub open_connections: Gauge,
    /// `server.max_connections` and `server.reserved_connections`, so that
    /// alerts and dashboards can compare the open connections with them.
    pub max_connections: Gauge,
    pub reserved_connections: Gauge,
    pub certificate_expiry: Gauge,
    pub certificate_reload_failures: Counter,
    nodes_networks: Family<FamilyLabels, Gauge>,
    nodes_age: Gauge<f64, AtomicU64>,
    nodes_refreshes: Counter,
    nodes_refresh_failures: Counter,
    nodes_refused: Gauge,
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

/// An enum whose values are the `reason` label of one counter family:
/// `ALL` in declaration order (counters are indexed by the value) and the
/// label text of each.
macro_rules! reason_label {
    ($(#[$meta:meta])* pub enum $name:ident { $($(#[$vmeta:meta])* $variant:ident => $text:literal,)+ }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum $name { $($(#[$vmeta])* $variant,)+ }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant,)+];

            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text,)+ }
            }
        }
    };
}

reason_label! {
    /// Why a PROXY protocol header was not accepted.
    pub enum ProxyHeaderFailure {
        /// The connection did not start with a PROXY header.
        Missing => "missing",
        /// It started with one that could not be parsed.
        Malformed => "malformed",
        /// The peer closed the connection before the header was complete.
        Closed => "closed",
        /// The header did not arrive in time.
        Timeout => "timeout",
    }
}

reason_label! {
    /// Why a connection was closed before its TLS handshake.
    pub enum ConnectionRefusal {
        /// No route admits the client (also counted in the denials by
        /// its reason).
        Denied => "denied",
        /// Its address already holds `max_connections_per_address`.
        PerAddress => "per_address",
        /// Every slot it may use was taken.
        MaxConnections => "max_connections",
        /// A listed client waited for a slot until its deadline.
        SlotWait => "slot_wait",
    }
}

reason_label! {
    /// Why the edge answered 400 itself.
    pub enum BadRequest {
        /// An ambiguous or malformed path (see [`crate::head`]).
        Path => "path",
        /// A missing, repeated or malformed Host.
        Host => "host",
        /// X-Forwarded-For from a trusted proxy without a readable client.
        ForwardedFor => "forwarded_for",
        /// A malformed request body (chunked framing, say). A body cut off by
        /// the client leaving is no bad request: it is counted as a 499 in
        /// `requests_total`, as nginx logs it.
        Body => "body",
        /// A request head hyper could not parse (it answers 400 itself).
        Head => "head",
    }
}

/// A counter per value of a `reason` label, created (and so exported as 0)
/// up front, so that counting costs no label lookup.
fn reason_counters(
    family: &Family<ReasonLabels, Counter>,
    reasons: impl IntoIterator<Item = &'static str>,
) -> Vec<Counter> {
    reasons
        .into_iter()
        .map(|reason| family.get_or_create(&ReasonLabels { reason }).clone())
        .collect()
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// A fresh registry with every metric the edge exports. Routes get
    /// their series from [`Metrics::route`].
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "b24_edge_requests",
            "Requests answered, by route prefix (\"none\" when no route matched) and HTTP status",
            requests.clone(),
        );
        let denial_family = Family::<ReasonLabels, Counter>::default();
        let denials = reason_counters(&denial_family, DenyReason::ALL.map(DenyReason::as_str));
        registry.register(
            "b24_edge_denials",
            "Requests refused with 403, and connections refused before TLS, by reason",
            denial_family,
        );
        let refused_family = Family::<ReasonLabels, Counter>::default();
        let connections_refused = reason_counters(
            &refused_family,
            ConnectionRefusal::ALL.iter().map(|r| r.as_str()),
        );
        registry.register(
            "b24_edge_connections_refused",
            "Connections closed before their TLS handshake: the client is admitted by no route (denied), or has no slot (per_address, max_connections, slot_wait)",
            refused_family,
        );
        let bad_family = Family::<ReasonLabels, Counter>::default();
        let bad_requests = reason_counters(&bad_family, BadRequest::ALL.iter().map(|r| r.as_str()));
        registry.register(
            "b24_edge_bad_requests",
            "Requests answered 400 by the edge itself (client errors), by reason",
            bad_family,
        );
        let request_head_timeouts = Counter::default();
        registry.register(
            "b24_edge_request_head_timeouts",
            "Connections closed because no complete first request head arrived within header_timeout",
            request_head_timeouts.clone(),
        );
        let idle_closes = Counter::default();
        registry.register(
            "b24_edge_idle_closes",
            "Kept-alive connections closed (HTTP/2: GOAWAY) after idle_timeout without a new request",
            idle_closes.clone(),
        );
        let send_timeouts = Counter::default();
        registry.register(
            "b24_edge_send_timeouts",
            "Client connections dropped (HTTP/1.1) or h2 streams reset because the client took none of its response for send_timeout",
            send_timeouts.clone(),
        );
        let client_body_timeouts = Counter::default();
        registry.register(
            "b24_edge_client_body_timeouts",
            "Requests answered 408 because the client paused its body longer than client_body_timeout",
            client_body_timeouts.clone(),
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
            "Connections closed because the TLS handshake failed or timed out",
            tls_handshake_failures.clone(),
        );
        let proxy_family = Family::<ReasonLabels, Counter>::default();
        let proxy_header_failures = reason_counters(
            &proxy_family,
            ProxyHeaderFailure::ALL.iter().map(|r| r.as_str()),
        );
        registry.register(
            "b24_edge_proxy_header_failures",
            "Connections from trusted proxies closed because their PROXY protocol header was missing, malformed, cut off or late",
            proxy_family,
        );
        let open_connections = Gauge::default();
        registry.register(
            "b24_edge_open_connections",
            "Client connections open now",
            open_connections.clone(),
        );
        let max_connections = Gauge::default();
        registry.register(
            "b24_edge_max_connections",
            "Client connections the edge serves at once (server.max_connections)",
            max_connections.clone(),
        );
        let reserved_connections = Gauge::default();
        registry.register(
            "b24_edge_reserved_connections",
            "Of those, the slots kept for clients admitted by address (server.reserved_connections)",
            reserved_connections.clone(),
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
        let nodes_refused = Gauge::default();
        registry.register(
            "b24_edge_nodes_refused",
            "Nodes sources whose newest list was refused as unsafe (an entry broader than /24 or /48, or a special-purpose address); the last good list stays in use",
            nodes_refused.clone(),
        );
        let nodes_refresh_failures = Counter::default();
        registry.register(
            "b24_edge_nodes_refresh_failures",
            "Nodes list refreshes that failed or were rejected since start",
            nodes_refresh_failures.clone(),
        );
        let unrouted = route_metrics(&request_duration, "none");
        Metrics {
            registry,
            unrouted,
            started: SystemTime::now(),
            requests,
            denials,
            request_duration,
            upstream_errors,
            tls_handshake_failures,
            proxy_header_failures,
            connections_refused,
            bad_requests,
            request_head_timeouts,
            idle_closes,
            client_body_timeouts,
            send_timeouts,
            open_connections,
            max_connections,
            reserved_connections,
            certificate_expiry,
            certificate_reload_failures,
            nodes_networks,
            nodes_age,
            nodes_refreshes,
            nodes_refresh_failures,
            nodes_refused,
        }
    }

    /// The series of the route with this prefix (its duration histogram
    /// is exported from now on).
    pub fn route(&self, prefix: &str) -> RouteMetrics {
        route_metrics(&self.request_duration, prefix)
    }

    /// The series of requests that matched no route (`route="none"`).
    pub fn unrouted(&self) -> &RouteMetrics {
        &self.unrouted
    }

    /// Counts an answered request.
    pub fn record_request(&self, route: &RouteMetrics, status: u16, elapsed: Duration) {
        self.requests
            .get_or_create(&RequestLabels {
                route: route.label.clone(),
                status,
            })
            .inc();
        route.duration.observe(elapsed.as_secs_f64());
    }

    pub fn record_denial(&self, reason: DenyReason) {
        self.denials[reason as usize].inc();
    }

    pub fn record_proxy_header_failure(&self, failure: ProxyHeaderFailure) {
        self.proxy_header_failures[failure as usize].inc();
    }

    pub fn record_connection_refused(&self, refusal: ConnectionRefusal) {
        self.connections_refused[refusal as usize].inc();
    }

    pub fn record_bad_request(&self, reason: BadRequest) {
        self.bad_requests[reason as usize].inc();
    }

    pub fn record_upstream_error(&self, route: &RouteLabel, kind: &'static str) {
        self.upstream_errors
            .get_or_create(&UpstreamErrorLabels {
                route: route.clone(),
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
        let refused = nodes
            .sources()
            .iter()
            .filter(|part| part.status.refused.is_some())
            .count();
        self.nodes_refused
            .set(i64::try_from(refused).unwrap_or(i64::MAX));
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

fn route_metrics(durations: &HistogramFamily, prefix: &str) -> RouteMetrics {
    let label = RouteLabel(Arc::from(prefix));
    let duration = durations
        .get_or_create(&RouteLabels {
            route: label.clone(),
        })
        .clone();
    RouteMetrics { label, duration }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_conventions() {
        let metrics = Metrics::new();
        let root = metrics.route("/");
        metrics.record_request(&root, 200, Duration::from_millis(3));
        metrics.record_request(metrics.unrouted(), 403, Duration::from_millis(1));
        metrics.record_denial(DenyReason::NotInNodes);
        metrics.record_proxy_header_failure(ProxyHeaderFailure::Timeout);
        metrics.record_upstream_error(root.label(), "connect");
        metrics.record_connection_refused(ConnectionRefusal::Denied);
        metrics.record_bad_request(BadRequest::Path);
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
            "b24_edge_proxy_header_failures_total{reason=\"timeout\"} 1",
            "b24_edge_proxy_header_failures_total{reason=\"missing\"} 0",
            "b24_edge_connections_refused_total{reason=\"denied\"} 1",
            "b24_edge_connections_refused_total{reason=\"per_address\"} 0",
            "b24_edge_bad_requests_total{reason=\"path\"} 1",
            "b24_edge_bad_requests_total{reason=\"host\"} 0",
            "b24_edge_request_head_timeouts_total 0",
            "b24_edge_idle_closes_total 0",
            "b24_edge_client_body_timeouts_total 0",
            "b24_edge_open_connections 0",
            "b24_edge_nodes_networks{family=\"ipv4\"} 0",
            "b24_edge_nodes_refused 0",
            "b24_edge_nodes_last_success_age_seconds ",
            "b24_edge_certificate_expiry_timestamp_seconds 0",
        ] {
            assert!(text.contains(expected), "{expected} missing from\n{text}");
        }
    }
}
