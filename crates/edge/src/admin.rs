//! The plain-HTTP admin listener: `/metrics`, `/healthz`, `/readyz`.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::connection::{Activity, Tracked, drive};
use crate::state::EdgeState;

/// Whether the edge can do its job now, and if not, why.
pub fn readiness(state: &EdgeState) -> Result<(), String> {
    if state.draining.load(Ordering::Relaxed) {
        return Err("shutting down".into());
    }
    if state.uses_nodes && state.nodes.current().is_none() {
        let status = state.nodes.status();
        let mut reason = String::from("no nodes list: routes that allow \"nodes\" deny everyone");
        if let Some(error) = &status.last_error {
            reason.push_str("; last refresh error: ");
            reason.push_str(error);
        }
        return Err(reason);
    }
    Ok(())
}

/// What `/readyz` adds to "ready": a nodes list refused as unsafe (an
/// entry too broad or special-purpose) while the last good one serves.
fn nodes_warning(state: &EdgeState) -> Option<String> {
    let refused = state.nodes.status().refused.clone()?;
    Some(format!(
        "the newest nodes list was refused, the last good list is in use: {refused}"
    ))
}

/// Admin connections served at once; more are closed at accept. Scrapers
/// and health checks need a handful.
const MAX_ADMIN_CONNECTIONS: usize = 64;

/// Serves the admin listener until `stop` is cancelled, under the same
/// first-request and idle deadlines as client connections, so that a
/// half-sent request line cannot hold a connection open.
pub async fn serve(listener: TcpListener, state: Arc<EdgeState>, stop: CancellationToken) {
    let slots = Arc::new(Semaphore::new(MAX_ADMIN_CONNECTIONS));
    let mut builder = http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(None);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    debug!(error = %e, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.cancelled() => return,
        };
        let deadline = Instant::now() + state.limits.header_timeout;
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            debug!("admin listener full; connection closed");
            continue;
        };
        let state = state.clone();
        let stop = stop.clone();
        let builder = builder.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let activity = Arc::new(Activity::new());
            let service_activity = activity.clone();
            let service_state = state.clone();
            let service = service_fn(move |req| {
                let in_flight = service_activity.begin();
                let response =
                    answer(&service_state, &req).map(|body| Tracked::new(body, in_flight));
                async move { Ok::<_, Infallible>(response) }
            });
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            let conn = std::pin::pin!(conn);
            drive(
                conn,
                &activity,
                deadline,
                &state.limits,
                &stop,
                &state.metrics,
            )
            .await;
        });
    }
}

fn answer(state: &EdgeState, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let text = |status: StatusCode, body: String| {
        Response::builder()
            .status(status)
            .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
            .body(Full::from(body))
            .expect("static response parts are valid")
    };
    match req.uri().path() {
        "/metrics" => {
            state.metrics.observe_nodes(&state.nodes);
            state
                .metrics
                .certificate_expiry
                .set(state.certs.not_after());
            Response::builder()
                .header(
                    header::CONTENT_TYPE,
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                )
                .body(Full::from(state.metrics.encode()))
                .expect("static response parts are valid")
        }
        "/healthz" => text(StatusCode::OK, "ok\n".into()),
        "/readyz" => match readiness(state) {
            Ok(()) => match nodes_warning(state) {
                None => text(StatusCode::OK, "ready\n".into()),
                Some(warning) => text(StatusCode::OK, format!("ready; warning: {warning}\n")),
            },
            Err(reason) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: {reason}\n"),
            ),
        },
        _ => text(StatusCode::NOT_FOUND, "not found\n".into()),
    }
}
