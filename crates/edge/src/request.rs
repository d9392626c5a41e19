//! One request, from its head to the response head: the head checks
//! ([`crate::head`]), the client address (stage 2, for X-Forwarded-For),
//! the [`Decision`] (stage 4), then forwarding (stage 5) or a refusal.

use std::borrow::Cow;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use http::{HeaderValue, Request, Response, StatusCode, Version, header};
use hyper::body::Incoming;
use tracing::{debug, warn};

use crate::admit::Decision;
use crate::body::{ClientBodyError, discard};
use crate::forward::{EdgeBody, ForwardError, Forwarded, Forwarder, text_body};
use crate::head::{normalize_path, request_host};
use crate::metrics::{BadRequest, RouteMetrics};
use crate::state::EdgeState;

/// Where a connection's requests get their client address.
#[derive(Debug, Clone, Copy)]
pub(crate) enum ClientSource {
    /// Known from the connection: the TCP peer or a PROXY header's source.
    Known(IpAddr),
    /// This trusted proxy tells, in each request's X-Forwarded-For.
    ForwardedBy(IpAddr),
}

/// Checks, decides, then forwards or refuses.
pub(crate) async fn handle(
    state: &EdgeState,
    forwarder: &Forwarder,
    req: Request<Incoming>,
    source: ClientSource,
) -> Response<EdgeBody> {
    let started = Instant::now();
    let version = req.version();
    let unrouted = state.metrics.unrouted();
    let normalized = match normalize_path(req.uri().path()) {
        Ok(Cow::Borrowed(_)) => None,
        Ok(Cow::Owned(path)) => Some(path),
        Err(e) => {
            debug!(error = %e, "bad request path");
            return bad_request(state, unrouted, started, version, BadRequest::Path);
        }
    };
    let host = match request_host(version, req.uri(), req.headers()) {
        Ok(None) => None,
        // The Host header as sent, when that is the host (no copy).
        Ok(Some(text)) => match req.headers().get(header::HOST) {
            Some(sent) if sent.as_bytes() == text.as_bytes() => Some(sent.clone()),
            _ => match HeaderValue::from_str(text) {
                Ok(value) => Some(value),
                Err(_) => return bad_request(state, unrouted, started, version, BadRequest::Host),
            },
        },
        Err(e) => {
            debug!(error = %e, "bad request host");
            return bad_request(state, unrouted, started, version, BadRequest::Host);
        }
    };
    let chain = match source {
        ClientSource::Known(_) => None,
        ClientSource::ForwardedBy(peer) => {
            match state.trusted.forwarded_client(peer, req.headers()) {
                Ok(chain) => Some(chain),
                Err(e) => {
                    debug!(%peer, error = %e, "bad X-Forwarded-For from a trusted proxy");
                    return bad_request(
                        state,
                        unrouted,
                        started,
                        version,
                        BadRequest::ForwardedFor,
                    );
                }
            }
        }
    };
    let known;
    let (client, hops): (IpAddr, &[IpAddr]) = match (&chain, source) {
        (Some(chain), _) => (chain.client(), chain.hops()),
        (None, ClientSource::Known(addr) | ClientSource::ForwardedBy(addr)) => {
            known = [addr];
            (addr, &known)
        }
    };
    let path = normalized.as_deref().unwrap_or(req.uri().path());
    let decision = state.routes.decide(path, client, &state.nodes);
    let route_metrics = decision.route().map_or(unrouted, |route| route.metrics());
    let response = match decision {
        Decision::Forward(route) => {
            let who = Forwarded {
                client,
                hops,
                host,
                path: normalized,
            };
            match forwarder.forward(route, req, who).await {
                Ok(response) => response,
                Err(e) => {
                    match &e {
                        ForwardError::ClientBody(ClientBodyError::Timeout) => {
                            state.metrics.client_body_timeouts.inc();
                        }
                        ForwardError::ClientBody(ClientBodyError::Malformed(detail)) => {
                            debug!(%client, detail, "bad request body");
                            state.metrics.record_bad_request(BadRequest::Body);
                        }
                        ForwardError::ClientBody(ClientBodyError::Aborted) => {
                            debug!(%client, "the client went away during its request body");
                        }
                        _ => {}
                    }
                    if let Some(kind) = e.metric_kind() {
                        state
                            .metrics
                            .record_upstream_error(route.metrics().label(), kind);
                        warn!(route = route.prefix(), error = %e, "forwarding failed");
                    }
                    let mut response = short_response(e.status(), e.body());
                    // The rest of the body was not read: the connection
                    // cannot carry another request.
                    if matches!(e, ForwardError::ClientBody(_)) {
                        close_after(&mut response, version);
                    }
                    response
                }
            }
        }
        Decision::Deny { reason, .. } => {
            state.metrics.record_denial(reason);
            state
                .deny_log
                .denied(client, reason, route_metrics.label().as_str());
            let mut response = short_response(StatusCode::FORBIDDEN, "forbidden\n");
            // A client that waits for 100 Continue is not invited to send
            // its body: it gets the 403 at once, and an HTTP/1.1 connection
            // is closed after it (RFC 9110 §10.1.1), as nginx does.
            let expects_continue = req
                .headers()
                .get(header::EXPECT)
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
            if expects_continue || !drain_refused_body(req.into_body()).await {
                close_after(&mut response, version);
            }
            response
        }
    };
    state
        .metrics
        .record_request(route_metrics, response.status().as_u16(), started.elapsed());
    response
}

fn bad_request(
    state: &EdgeState,
    metrics: &RouteMetrics,
    started: Instant,
    version: Version,
    reason: BadRequest,
) -> Response<EdgeBody> {
    state.metrics.record_bad_request(reason);
    let mut response = short_response(StatusCode::BAD_REQUEST, "bad request\n");
    close_after(&mut response, version);
    state
        .metrics
        .record_request(metrics, 400, started.elapsed());
    response
}

/// Asks hyper to close an HTTP/1.1 connection after this response (h2
/// streams are independent; nothing to do there).
fn close_after(response: &mut Response<EdgeBody>, version: Version) {
    if version < Version::HTTP_2 {
        response.headers_mut().insert(
            header::CONNECTION,
            header::HeaderValue::from_static("close"),
        );
    }
}

/// The most of a refused request's body the edge reads before answering.
const REFUSED_BODY_DRAIN: u64 = 64 * 1024;
/// How long it waits for that body.
const REFUSED_BODY_WAIT: Duration = Duration::from_secs(2);

/// Reads and discards a refused request's body, up to a bound, so that the
/// 403 arrives cleanly: answering before the body is read makes an HTTP/2
/// peer see its stream reset (curl: "Stream error in the HTTP/2 framing
/// layer") and an HTTP/1.1 peer its connection reset. Returns false when the
/// body was larger or slower than the bound; the answer then goes out anyway
/// and an HTTP/1.1 connection is closed after it.
async fn drain_refused_body(mut body: Incoming) -> bool {
    discard(&mut body, REFUSED_BODY_DRAIN, REFUSED_BODY_WAIT).await
}

pub(crate) fn short_response(status: StatusCode, body: &'static str) -> Response<EdgeBody> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(text_body(body))
        .expect("static response parts are valid")
}
