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
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::debug;

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

pub async fn serve(listener: TcpListener, state: Arc<EdgeState>, stop: CancellationToken) {
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
        let state = state.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(answer(&state, &req)) }
            });
            let conn = http1::Builder::new().serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                _ = conn => {}
                _ = stop.cancelled() => {}
            }
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
