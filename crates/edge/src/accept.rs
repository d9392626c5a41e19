//! Stage 1 of the request path, accepting: who may have a connection at
//! all, decided before the TLS handshake and before a connection slot is
//! held — HAProxy's `tcp-request connection reject`, nginx's stream access
//! phase, here against the live nodes list.
//!
//! The rule, per listener mode (`client_ip.mode`):
//! - `peer`: the TCP peer is the client. A peer that no route admits is
//!   refused at once (closed with a TCP reset), counted in
//!   `b24_edge_denials_total{reason}` and
//!   `b24_edge_connections_refused_total{reason="denied"}` and logged under
//!   the denial log's rate limit.
//! - `proxy_protocol`: only `client_ip.trusted_proxies` may connect (anyone
//!   else: refused, reason `untrusted_peer`); the PROXY header's source is
//!   the client and is judged the same way, still before TLS. A header
//!   without an address (v2 `LOCAL`, v1 `UNKNOWN`: the balancer's own
//!   health check) is let through and judged per request by the
//!   balancer's address.
//! - `x_forwarded_for`: a trusted proxy's connections are let through (their
//!   clients are only known per request, from X-Forwarded-For); any other
//!   peer is the client and is judged as in `peer` mode.
//!
//! With `refuse_before_tls = false` refused clients are let through and
//! get a 403 for each request instead (for debugging with curl).
//! Admitted connections then get a slot ([`crate::slots`]) and go to
//! [`crate::connection`].

use std::net::IpAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use crate::admit::{DenyReason, Screening};
use crate::client_ip::{ProxyHeaderError, canonical, read_proxy_header};
use crate::config::ClientIpMode;
use crate::connection::{self, ConnContext};
use crate::metrics::{ConnectionRefusal, ProxyHeaderFailure};
use crate::request::ClientSource;
use crate::slots::{NoSlot, SlotClass};
use crate::state::EdgeState;

/// What is known of a new connection at accept.
enum Arrival {
    /// Its client is the peer, admitted in this class.
    Direct { client: IpAddr, class: SlotClass },
    /// A trusted proxy on a `proxy_protocol` listener: the header is next.
    ProxyProtocol { peer: IpAddr },
    /// A trusted proxy on an `x_forwarded_for` listener.
    Forwarding { peer: IpAddr },
}

/// Accepts on `listener` until the edge stops; connection tasks go to
/// `tasks` so that shutdown can wait for them.
pub(crate) async fn accept_loop(
    listener: TcpListener,
    mode: ClientIpMode,
    ctx: &ConnContext,
    tasks: &TaskTracker,
) {
    let state = &ctx.state;
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: pause, don't spin.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = ctx.stop.cancelled() => return,
        };
        let accepted = Instant::now();
        let peer = canonical(peer.ip());
        let arrival = match mode {
            ClientIpMode::ProxyProtocol if state.trusted.contains(peer) => {
                Arrival::ProxyProtocol { peer }
            }
            ClientIpMode::ProxyProtocol => {
                refuse(state, stream, peer, DenyReason::UntrustedPeer);
                continue;
            }
            ClientIpMode::XForwardedFor if state.trusted.contains(peer) => {
                Arrival::Forwarding { peer }
            }
            ClientIpMode::Peer | ClientIpMode::XForwardedFor => match class_of(state, peer) {
                Ok(class) => Arrival::Direct {
                    client: peer,
                    class,
                },
                Err(reason) => {
                    refuse(state, stream, peer, reason);
                    continue;
                }
            },
        };
        tasks.spawn(admit(ctx.clone(), stream, arrival, accepted));
    }
}

/// The slot class of a client, or why it is refused before TLS.
fn class_of(state: &EdgeState, client: IpAddr) -> Result<SlotClass, DenyReason> {
    match state.routes.screen(client, &state.nodes) {
        Screening::Listed => Ok(SlotClass::Listed),
        Screening::AnyOnly => Ok(SlotClass::Other),
        Screening::Refused(_) if !state.refuse_before_tls => Ok(SlotClass::Other),
        Screening::Refused(reason) => Err(reason),
    }
}

/// Closes a refused connection with a reset (no FIN exchange, no
/// TIME_WAIT on our side: the cheapest way out) and counts it.
fn refuse(state: &EdgeState, stream: TcpStream, client: IpAddr, reason: DenyReason) {
    state.metrics.record_denial(reason);
    state
        .metrics
        .record_connection_refused(ConnectionRefusal::Denied);
    state.deny_log.refused_connection(client, reason);
    reset(stream);
}

fn reset(stream: TcpStream) {
    let _ = stream.set_zero_linger();
    drop(stream);
}

/// The rest of the accept stage, in the connection's own task: the PROXY
/// header if one is due, the slot, then the connection.
async fn admit(ctx: ConnContext, mut stream: TcpStream, arrival: Arrival, accepted: Instant) {
    let state = &ctx.state;
    let deadline = accepted + state.limits.header_timeout;
    let (source, class, address) = match arrival {
        Arrival::Direct { client, class } => (ClientSource::Known(client), class, Some(client)),
        Arrival::Forwarding { peer } => (ClientSource::ForwardedBy(peer), SlotClass::Other, None),
        Arrival::ProxyProtocol { peer } => {
            match tokio::time::timeout_at(deadline, read_proxy_header(&mut stream)).await {
                Ok(Ok(Some(source))) => {
                    let client = canonical(source.ip());
                    match class_of(state, client) {
                        Ok(class) => (ClientSource::Known(client), class, Some(client)),
                        Err(reason) => {
                            refuse(state, stream, client, reason);
                            return;
                        }
                    }
                }
                // The balancer speaking for itself (health checks).
                Ok(Ok(None)) => (ClientSource::Known(peer), SlotClass::Other, None),
                Ok(Err(e)) => {
                    debug!(%peer, error = %e, "PROXY header rejected");
                    state.metrics.record_proxy_header_failure(match e {
                        ProxyHeaderError::Missing => ProxyHeaderFailure::Missing,
                        ProxyHeaderError::Malformed(_) => ProxyHeaderFailure::Malformed,
                        ProxyHeaderError::Closed => ProxyHeaderFailure::Closed,
                    });
                    return;
                }
                Err(_) => {
                    debug!(%peer, "no PROXY header in time");
                    state
                        .metrics
                        .record_proxy_header_failure(ProxyHeaderFailure::Timeout);
                    return;
                }
            }
        }
    };
    let slot = match ctx.slots.acquire(class, address, deadline).await {
        Ok(slot) => slot,
        Err(no_slot) => {
            debug!(?source, ?no_slot, "no connection slot");
            state.metrics.record_connection_refused(match no_slot {
                NoSlot::PerAddress => ConnectionRefusal::PerAddress,
                NoSlot::MaxConnections => ConnectionRefusal::MaxConnections,
                NoSlot::WaitTimeout => ConnectionRefusal::SlotWait,
            });
            reset(stream);
            return;
        }
    };
    connection::serve(ctx, stream, source, slot, deadline).await;
}
