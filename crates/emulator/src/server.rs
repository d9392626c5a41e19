//! The HTTP side: accepts connections (plain or TLS), routes `/rest/...` to
//! the REST pipeline (auth, rate limit, faults, method, `time`) and
//! `/_emulator/...` to the admin API.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::error::ApiError;
use crate::methods::MethodResult;
use crate::params::{Params, parse_body, parse_query};
use crate::shared::{Shared, Webhook};
use crate::store::values::parse_file_token;
use crate::{admin, batch, clock, exec};

const MAX_BODY_BYTES: usize = 64 * 1024 * 1024;

pub type HttpResponse = Response<Full<Bytes>>;

/// Returned instead of a response when the connection must close silently
/// (the portal is down, or a fault drops the answer).
#[derive(Debug)]
pub struct DropConnection;

impl std::fmt::Display for DropConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("response dropped by the emulator")
    }
}

impl std::error::Error for DropConnection {}

pub fn json_response(status: StatusCode, body: &Value) -> HttpResponse {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json; charset=utf-8"),
    );
    response
}

fn error_response(err: &ApiError) -> HttpResponse {
    json_response(err.status, &err.body())
}

/// Accepts connections until `cancel` fires; every connection task is tracked.
pub async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    tls: Option<TlsAcceptor>,
    cancel: CancellationToken,
) {
    let connections = TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            _ = cancel.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let Ok((stream, peer)) = accepted else {
            continue;
        };
        let shared = Arc::clone(&shared);
        let tls = tls.clone();
        let cancel = cancel.clone();
        connections.spawn(async move {
            let service = service_fn(move |req| handle(Arc::clone(&shared), peer, req));
            let builder = auto::Builder::new(TokioExecutor::new());
            match tls {
                Some(acceptor) => {
                    let Ok(Ok(stream)) = tokio::time::timeout(
                        std::time::Duration::from_secs(10),
                        acceptor.accept(stream),
                    )
                    .await
                    else {
                        return;
                    };
                    let conn = builder.serve_connection(TokioIo::new(stream), service);
                    tokio::select! { _ = conn => {}, _ = cancel.cancelled() => {} }
                }
                None => {
                    let conn = builder.serve_connection(TokioIo::new(stream), service);
                    tokio::select! { _ = conn => {}, _ = cancel.cancelled() => {} }
                }
            }
        });
    }
    connections.close();
    connections.wait().await;
}

async fn read_body(req: Request<Incoming>) -> Result<(http::request::Parts, Bytes), HttpResponse> {
    let (parts, body) = req.into_parts();
    match Limited::new(body, MAX_BODY_BYTES).collect().await {
        Ok(collected) => Ok((parts, collected.to_bytes())),
        Err(_) => Err(error_response(&ApiError::invalid_arg(
            "Request body is too large or broken",
        ))),
    }
}

async fn handle(
    shared: Arc<Shared>,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Result<HttpResponse, DropConnection> {
    let path = req.uri().path().to_string();
    if let Some(rest) = path.strip_prefix("/_emulator/") {
        let rest = rest.to_string();
        return Ok(match read_body(req).await {
            Ok((parts, body)) => admin::handle(&shared, &parts.method, &rest, &body).await,
            Err(response) => response,
        });
    }
    if crate::oauth::is_token_path(&path) {
        // The authorization server is not the portal: "down" does not touch it.
        let query = req.uri().query().unwrap_or("").to_string();
        let content_type = content_type_of(&req);
        return Ok(match read_body(req).await {
            Ok((_, body)) => crate::oauth::token_endpoint(&shared, &query, &content_type, &body),
            Err(response) => response,
        });
    }
    if shared.faults.is_down() {
        return Err(DropConnection);
    }
    let Some(rest_path) = path.strip_prefix("/rest/") else {
        return Ok(json_response(
            StatusCode::NOT_FOUND,
            &json!({"error": "NOT_FOUND", "error_description": "Not found"}),
        ));
    };
    let segments: Vec<&str> = rest_path.splitn(3, '/').collect();
    // `/rest/USER_ID/SECRET/METHOD` is a webhook; `/rest/METHOD?auth=...`
    // (or `auth` in the body) is the application form.
    let webhook_path = match segments.as_slice() {
        [user_id, secret, method] if !method.is_empty() => {
            Some((user_id.to_string(), secret.to_string(), method.to_string()))
        }
        _ => None,
    };
    let method = match &webhook_path {
        Some((_, _, raw)) => exec::method_name(raw),
        None => exec::method_name(rest_path),
    };
    // Every HTTP request is counted, refused ones too: tests assert on what
    // a client sent, not on what succeeded.
    shared.count_request(&method);
    let query = req.uri().query().unwrap_or("").to_string();
    let content_type = content_type_of(&req);
    let (_, body) = match read_body(req).await {
        Ok(read) => read,
        Err(response) => return Ok(response),
    };
    let mut params = match merged_params(&query, &content_type, &body) {
        Ok(params) => params,
        Err(err) => return Ok(error_response(&err)),
    };
    let webhook = match &webhook_path {
        Some((user_id, secret, _)) => match shared.webhook(user_id, secret) {
            Some(webhook) => webhook.clone(),
            None => return Ok(error_response(&ApiError::invalid_credentials())),
        },
        None => match crate::oauth::authenticate(&shared, &mut params.0) {
            Ok(caller) => caller,
            Err(err) => return Ok(error_response(&err)),
        },
    };
    let started = clock::now_unix();
    if !shared.limits.admit(peer.ip(), started) {
        shared
            .limit_refusals
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        return Ok(error_response(&ApiError::query_limit()));
    }
    if method == "crm.controller.item.getfile" {
        return Ok(download_file(&shared, &params));
    }
    let plan = shared.faults.plan(&method);
    let limit = shared.limits.config().request_time_limit;
    let work = run_rest(&shared, &webhook, &method, params, &plan, started);
    let (response, inner_dropped) = match tokio::time::timeout(limit, work).await {
        Ok(done) => done,
        Err(_) => (gateway_timeout(), false),
    };
    if plan.drop_response || inner_dropped {
        return Err(DropConnection);
    }
    Ok(response)
}

fn content_type_of(req: &Request<Incoming>) -> String {
    req.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string()
}

fn merged_params(query: &str, content_type: &str, body: &[u8]) -> Result<Params, ApiError> {
    let mut params = parse_query(query)?;
    for (key, value) in parse_body(content_type, body)? {
        params.insert(key, value);
    }
    Ok(Params(params))
}

async fn run_rest(
    shared: &Shared,
    webhook: &Webhook,
    method: &str,
    params: Params,
    plan: &crate::faults::FaultPlan,
    started: f64,
) -> (HttpResponse, bool) {
    if method == "batch" {
        if !plan.latency.is_zero() {
            tokio::time::sleep(plan.latency).await;
        }
        let mut drop_response = false;
        let result: MethodResult = match &plan.fail {
            Some(err) => Err(err.clone()),
            None => batch::run(shared, webhook, &params, &mut drop_response).await,
        };
        let finish = clock::now_unix();
        let response = rest_response(
            result,
            exec::time_block(started, finish, finish - started, None),
        );
        return (response, drop_response);
    }
    let (result, mut time) = exec::run_single(shared, webhook, method, params, plan).await;
    // Duration covers the whole request, processing only the method itself.
    let finish = clock::now_unix();
    time["start"] = json!(started);
    time["finish"] = json!(finish);
    time["duration"] = json!(finish - started);
    time["date_start"] = json!(clock::iso8601(started));
    time["date_finish"] = json!(clock::iso8601(finish));
    (rest_response(result, time), false)
}

fn rest_response(result: MethodResult, time: Value) -> HttpResponse {
    match result {
        Ok(output) => {
            let mut body = serde_json::Map::new();
            body.insert("result".into(), output.result);
            if let Some(next) = output.next {
                body.insert("next".into(), json!(next));
            }
            if let Some(total) = output.total {
                body.insert("total".into(), json!(total));
            }
            body.insert("time".into(), time);
            json_response(StatusCode::OK, &Value::Object(body))
        }
        Err(err) => error_response(&err),
    }
}

/// What a client sees when the portal's front end gives up on a request.
fn gateway_timeout() -> HttpResponse {
    let mut response = Response::new(Full::new(Bytes::from_static(
        b"<html><head><title>504 Gateway Time-out</title></head><body><center><h1>504 Gateway Time-out</h1></center></body></html>",
    )));
    *response.status_mut() = StatusCode::GATEWAY_TIMEOUT;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/html"),
    );
    response
}

/// `urlMachine` downloads: the token names the record, field and file, and
/// the file must still be attached there.
fn download_file(shared: &Shared, params: &Params) -> HttpResponse {
    let token = params.text("token").unwrap_or_default();
    let not_found = || error_response(&ApiError::not_found("File not found"));
    let Some((entity_type_id, record_id, field, file_id)) = parse_file_token(&token) else {
        return not_found();
    };
    let Some(entity) = crate::fields::EntityType::from_type_id(entity_type_id) else {
        return not_found();
    };
    let state = shared.store();
    let Some(def) = state.defs(entity).iter().find(|d| d.upper == field) else {
        return not_found();
    };
    let attached = state
        .get(entity, record_id)
        .and_then(|r| r.get(&def.camel))
        .map(crate::params::as_list)
        .unwrap_or_default()
        .iter()
        .any(|v| crate::params::as_i64(v) == Some(file_id));
    let Some(file) = state.files.files.get(&file_id).filter(|_| attached) else {
        return not_found();
    };
    let mut response = Response::new(Full::new(Bytes::from(file.data.clone())));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/octet-stream"),
    );
    let disposition = crate::disposition::content_disposition(&file.name);
    if let Ok(value) = header::HeaderValue::from_str(&disposition) {
        headers.insert(header::CONTENT_DISPOSITION, value);
    }
    response
}
