//! One request, from its head to the response head: the client address
//! (stage 2, for X-Forwarded-For), the [`Decision`] (stage 4), then
//! forwarding (stage 5) or a refusal.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use http::{Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tracing::warn;

use crate::admit::Decision;
use crate::forward::{EdgeBody, Forwarded, Forwarder, text_body};
use crate::state::EdgeState;

/// What the connection stages learned about who is talking.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Peer {
    /// The hop that reached us: the TCP peer, or the source a trusted PROXY
    /// header gave.
    pub hop: IpAddr,
    /// Whether `hop` is a trusted proxy, whose X-Forwarded-For is believed.
    pub hop_trusted: bool,
}

/// Decides, then forwards or refuses.
pub(crate) async fn handle(
    state: &EdgeState,
    forwarder: &Forwarder,
    req: Request<Incoming>,
    peer: Peer,
) -> Response<EdgeBody> {
    let started = Instant::now();
    let client = if peer.hop_trusted {
        state.trusted.client_address(peer.hop, req.headers())
    } else {
        peer.hop
    };
    let decision = state.routes.decide(req.uri().path(), client, &state.nodes);
    let route_metrics = decision
        .route()
        .map_or(state.metrics.unrouted(), |route| route.metrics());
    let response = match decision {
        Decision::Forward(route) => {
            let who = Forwarded {
                client,
                hop: peer.hop,
                hop_trusted: peer.hop_trusted,
            };
            match forwarder.forward(route, req, &who).await {
                Ok(response) => response,
                Err(e) => {
                    if let Some(kind) = e.metric_kind() {
                        state.metrics.record_upstream_error(route.metrics(), kind);
                        warn!(route = route.prefix(), error = %e, "forwarding failed");
                    }
                    short_response(e.status(), e.body())
                }
            }
        }
        Decision::Deny { reason, .. } => {
            state.metrics.record_denial(reason);
            state
                .deny_log
                .denied(client, reason, route_metrics.label().as_str());
            let version = req.version();
            let mut response = short_response(StatusCode::FORBIDDEN, "forbidden\n");
            if !drain_refused_body(req.into_body()).await && version < http::Version::HTTP_2 {
                response.headers_mut().insert(
                    header::CONNECTION,
                    header::HeaderValue::from_static("close"),
                );
            }
            response
        }
    };
    state
        .metrics
        .record_request(route_metrics, response.status().as_u16(), started.elapsed());
    response
}

/// The most of a refused request's body the edge reads before answering.
const REFUSED_BODY_DRAIN: usize = 64 * 1024;
/// How long it waits for that body.
const REFUSED_BODY_WAIT: Duration = Duration::from_secs(2);

/// Reads and discards a refused request's body, up to a bound, so that the
/// 403 arrives cleanly: answering before the body is read makes an HTTP/2
/// peer see its stream reset (curl: "Stream error in the HTTP/2 framing
/// layer") and an HTTP/1.1 peer its connection reset. Returns false when the
/// body was larger or slower than the bound; the answer then goes out anyway
/// and an HTTP/1.1 connection is closed after it.
async fn drain_refused_body(mut body: Incoming) -> bool {
    let drain = async {
        let mut seen = 0usize;
        while let Some(frame) = body.frame().await {
            let Ok(frame) = frame else { return false };
            if let Some(data) = frame.data_ref() {
                seen += data.len();
                if seen > REFUSED_BODY_DRAIN {
                    return false;
                }
            }
        }
        true
    };
    tokio::time::timeout(REFUSED_BODY_WAIT, drain)
        .await
        .unwrap_or(false)
}

pub(crate) fn short_response(status: StatusCode, body: &'static str) -> Response<EdgeBody> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(text_body(body))
        .expect("static response parts are valid")
}
