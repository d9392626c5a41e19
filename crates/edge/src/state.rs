//! What every stage of the request path shares: the configuration turned
//! into lookup structures, the live nodes list, the certificate and the
//! metrics. Read-mostly; the counters and the nodes list are lock-free.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use b24_nodes::LiveNodes;

use crate::admit::RouteTable;
use crate::client_ip::TrustedProxies;
use crate::config::Limits;
use crate::denylog::DenyLog;
use crate::metrics::Metrics;
use crate::tls::CertStore;

pub(crate) struct EdgeState {
    pub(crate) routes: RouteTable,
    pub(crate) nodes: Arc<LiveNodes>,
    pub(crate) trusted: TrustedProxies,
    /// Refuse clients no route admits at accept (else: 403 per request).
    pub(crate) refuse_before_tls: bool,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) certs: Arc<CertStore>,
    pub(crate) deny_log: DenyLog,
    pub(crate) limits: Limits,
    /// Whether any route admits by the nodes list (else `/readyz` does not
    /// wait for one).
    pub(crate) uses_nodes: bool,
    /// Set once shutdown began (`/readyz` says so).
    pub(crate) draining: AtomicBool,
}
