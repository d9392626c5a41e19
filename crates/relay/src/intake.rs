//! Intake: `POST /hook/event/{portal}` (outgoing-webhook events),
//! `POST /hook/rule/{portal}?secret=…` (the built-in "Webhook" automation
//! rule), and in application mode `POST /app/install/{portal}` (the local
//! application's install call) and `POST /hook/app/{portal}` (runs of the
//! relay's own rule). A request is authenticated, validated, committed to the queue and
//! answered at once; the transfer happens later in a worker, because
//! Bitrix24 never re-sends an event and slows down slow handlers.

use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use serde_json::{Value, json};
use subtle::ConstantTimeEq;
use tokio::sync::Notify;

use crate::application;
use crate::config::{Config, PortalConfig};
use crate::mapping::scalar;
use crate::metrics::Metrics;
use crate::portals::{PortalHandle, Portals};
use crate::store::{Enqueued, Store, StoreError};

/// What intake needs, shared by all connections.
pub struct Intake {
    pub config: Arc<Config>,
    pub store: Store,
    pub metrics: Arc<Metrics>,
    pub wake: Arc<Notify>,
    pub portals: Arc<Portals>,
    /// Base of the rule's handler URL (`app.public_url`, else the relay's
    /// own address).
    pub public_url: String,
}

pub type HttpResponse = Response<Full<Bytes>>;

fn answer(status: StatusCode, body: Value) -> HttpResponse {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}

fn refuse(status: StatusCode, reason: impl Into<String>) -> HttpResponse {
    answer(status, json!({"error": reason.into()}))
}

/// Why a request was refused; becomes its status and message.
struct Refusal(StatusCode, String);

fn secret_matches(given: &str, expected: &b24_client::Secret) -> bool {
    bool::from(given.as_bytes().ct_eq(expected.expose().as_bytes()))
}

impl Intake {
    pub async fn handle<B>(&self, request: Request<B>) -> HttpResponse
    where
        B: hyper::body::Body<Data = Bytes> + Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let path = request.uri().path().to_owned();
        let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
        let kind = match parts.as_slice() {
            ["healthz"] => return answer(StatusCode::OK, json!({"ok": true})),
            ["hook", kind @ ("event" | "rule" | "app"), _] => *kind,
            ["app", "install", _] => "install",
            _ => return refuse(StatusCode::NOT_FOUND, "unknown path"),
        };
        let result = self.accept(kind, parts[2], request).await;
        let response = match result {
            Ok(response) => response,
            Err(Refusal(status, reason)) => {
                tracing::info!(kind, status = status.as_u16(), %reason, "intake request refused");
                refuse(status, reason)
            }
        };
        self.metrics
            .intake_answered(kind, response.status().as_u16());
        response
    }

    async fn accept<B>(
        &self,
        kind: &str,
        portal_name: &str,
        request: Request<B>,
    ) -> Result<HttpResponse, Refusal>
    where
        B: hyper::body::Body<Data = Bytes> + Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        if request.method() != Method::POST {
            return Err(Refusal(StatusCode::METHOD_NOT_ALLOWED, "use POST".into()));
        }
        let portal = self.config.portals.get(portal_name).ok_or_else(|| {
            Refusal(
                StatusCode::NOT_FOUND,
                format!("unknown portal {portal_name}"),
            )
        })?;
        if kind == "rule" {
            check_rule_secret(portal, request.uri().query().unwrap_or(""))?;
        }
        let json_body = request
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.to_ascii_lowercase().contains("json"));
        let limit = self.config.max_body_bytes;
        let too_large = || {
            Refusal(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("body larger than {limit} bytes"),
            )
        };
        let declared = request
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        if declared.is_some_and(|n| n > limit) {
            return Err(too_large());
        }
        let body = Limited::new(request.into_body(), limit)
            .collect()
            .await
            .map_err(|_| too_large())?
            .to_bytes();
        let tree = parse_body(&body, json_body)
            .map_err(|reason| Refusal(StatusCode::BAD_REQUEST, reason))?;
        match kind {
            "install" => return self.install(portal_name, &tree).await,
            "app" => return self.rule_run(portal_name, &tree).await,
            _ => {}
        }
        let (deal_id, trigger) = match kind {
            "event" => match read_event(portal, &tree)? {
                Some(found) => found,
                None => {
                    return Ok(answer(
                        StatusCode::OK,
                        json!({"ignored": "not a deal add/update event"}),
                    ));
                }
            },
            _ => (read_rule(&tree)?, "rule".to_owned()),
        };
        self.commit(self.store.enqueue(&portal.name, deal_id, &trigger))
            .await
    }
}

impl Intake {
    /// Any configured portal: the portal calls the install URL right after
    /// the local application is saved, before its client id and secret can
    /// be in the configuration.
    fn app_portal(&self, name: &str) -> Result<&Arc<PortalHandle>, Refusal> {
        self.portals
            .get(name)
            .ok_or_else(|| Refusal(StatusCode::NOT_FOUND, format!("unknown portal {name}")))
    }

    /// The local application's install call: tokens stored, rule registered.
    async fn install(&self, portal_name: &str, tree: &Value) -> Result<HttpResponse, Refusal> {
        let portal = self.app_portal(portal_name)?;
        let action = application::install(
            &self.config,
            portal,
            &self.store,
            &self.metrics,
            &self.public_url,
            tree,
        )
        .await
        .map_err(from_install_error)?;
        Ok(answer(
            StatusCode::OK,
            json!({"ok": true, "rule": action.as_str()}),
        ))
    }

    /// A run of the relay's rule: checked against the stored install, then
    /// queued with its event token; answered later by `bizproc.event.send`.
    async fn rule_run(&self, portal_name: &str, tree: &Value) -> Result<HttpResponse, Refusal> {
        self.app_portal(portal_name)?;
        let install = self.store.app_install(portal_name).await.map_err(|error| {
            tracing::error!(%error, "cannot read the installed application");
            Refusal(
                StatusCode::SERVICE_UNAVAILABLE,
                "the store is not available".into(),
            )
        })?;
        let run = application::read_rule_run(&self.config, install.as_ref(), tree)
            .map_err(from_install_error)?;
        let known_route = self
            .config
            .route(&run.route)
            .is_some_and(|r| r.from == portal_name);
        if !run.wants_answer {
            // use_subscription=N: the workflow takes no answer; the deal is
            // transferred like any announced deal.
            if !known_route {
                return Ok(answer_json_unknown_route());
            }
            return self
                .commit(self.store.enqueue(portal_name, run.deal_id, "app-rule"))
                .await;
        }
        if !known_route {
            // Nothing to queue; the workflow still gets its answer.
            let answer = application::RuleAnswer {
                target_deal_id: None,
                status: "failed",
                message: format!("route `{}` is not configured for this portal", run.route),
            };
            let portal = self.app_portal(portal_name)?.clone();
            let metrics = self.metrics.clone();
            tokio::spawn(async move {
                application::answer_now(&portal, &metrics, &run.event_token, &run.route, &answer)
                    .await
            });
            return Ok(answer_json_unknown_route());
        }
        self.commit(self.store.enqueue_rule_call(
            portal_name,
            run.deal_id,
            &run.workflow_id,
            &run.event_token,
            &run.route,
        ))
        .await
    }

    /// Commits a valid request to the store, wakes a worker and answers 200:
    /// the acknowledgement Bitrix24 gets means the job is on disk.
    async fn commit(
        &self,
        enqueue: impl Future<Output = Result<Enqueued, StoreError>>,
    ) -> Result<HttpResponse, Refusal> {
        let enqueued = enqueue.await.map_err(|error| {
            tracing::error!(%error, "cannot queue an intake request");
            Refusal(
                StatusCode::SERVICE_UNAVAILABLE,
                "the queue is not available".into(),
            )
        })?;
        self.wake.notify_one();
        Ok(answer(
            StatusCode::OK,
            json!({"ok": true, "job": enqueued.job_id, "coalesced": enqueued.coalesced}),
        ))
    }
}

fn answer_json_unknown_route() -> HttpResponse {
    answer(
        StatusCode::OK,
        json!({"ok": false, "answered": "the route is not configured for this portal"}),
    )
}

fn from_install_error(error: application::InstallError) -> Refusal {
    Refusal(
        StatusCode::from_u16(error.status).unwrap_or(StatusCode::BAD_REQUEST),
        error.reason,
    )
}

/// The `secret` of the rule's URL. Bitrix24 sends the URL exactly as the
/// user typed it, where `+` is a literal character (RFC 3986), while form
/// decoding reads `+` as a space: both readings are tried, so a secret with
/// `+` works whether it was typed as `+`, `%2B` or (for a space) `+`.
fn check_rule_secret(portal: &PortalConfig, query: &str) -> Result<(), Refusal> {
    let unauthorized = || Refusal(StatusCode::UNAUTHORIZED, "wrong or missing secret".into());
    let expected = portal.rule_secret.as_ref().ok_or_else(unauthorized)?;
    let given = query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .rfind(|(name, _)| *name == "secret")
        .map(|(_, value)| value)
        .unwrap_or("");
    let literal = percent_encoding::percent_decode_str(given).decode_utf8_lossy();
    let spaced = given.replace('+', " ");
    let form = percent_encoding::percent_decode_str(&spaced).decode_utf8_lossy();
    // Both compared, always: the time taken does not tell which matched.
    let matched = secret_matches(&literal, expected) | secret_matches(&form, expected);
    if matched && !given.is_empty() {
        Ok(())
    } else {
        Err(unauthorized())
    }
}

/// Whether a body is JSON: by its content type, or by its first byte when
/// a hand-made call sends JSON with the form content type (a form body
/// never starts with `{`).
fn is_json_body(content_type_says_json: bool, body: &[u8]) -> bool {
    content_type_says_json || body.trim_ascii_start().first() == Some(&b'{')
}

fn parse_body(body: &[u8], json_body: bool) -> Result<Value, String> {
    if body.is_empty() {
        return Err("empty body".into());
    }
    let tree = if is_json_body(json_body, body) {
        serde_json::from_slice::<Value>(body).map_err(|e| format!("invalid JSON: {e}"))?
    } else {
        b24_phpform::parse(body, &b24_phpform::Limits::default())
            .map_err(|e| format!("invalid form body: {e}"))?
    };
    if !tree.is_object() {
        return Err("the body must be an object or a form".into());
    }
    Ok(tree)
}

/// The deal id and event name of an outgoing-webhook event, after checking
/// its token (constant time), domain and member id. `None`: an event the
/// relay does not act on.
fn read_event(portal: &PortalConfig, tree: &Value) -> Result<Option<(i64, String)>, Refusal> {
    let unauthorized = |why: &str| Refusal(StatusCode::UNAUTHORIZED, why.to_owned());
    let auth = &tree["auth"];
    let token = auth["application_token"].as_str().unwrap_or("");
    let expected = portal
        .application_token
        .as_ref()
        .ok_or_else(|| unauthorized("this portal has no application token configured"))?;
    if !secret_matches(token, expected) {
        return Err(unauthorized("wrong application token"));
    }
    if let Some(domain) = &portal.domain {
        if !scalar(&auth["domain"]).eq_ignore_ascii_case(domain) {
            return Err(unauthorized("auth[domain] is not the configured portal"));
        }
    }
    if let Some(member) = &portal.member_id {
        if scalar(&auth["member_id"]) != *member {
            return Err(unauthorized("auth[member_id] is not the configured portal"));
        }
    }
    let event = tree["event"].as_str().unwrap_or("").to_ascii_uppercase();
    if event.is_empty() {
        return Err(Refusal(StatusCode::BAD_REQUEST, "missing event".into()));
    }
    if !matches!(
        event.as_str(),
        "ONCRMDEALADD" | "ONCRMDEALUPDATE" | "ONCRMDEALMOVETOCATEGORY"
    ) {
        return Ok(None);
    }
    let id = scalar(&tree["data"]["FIELDS"]["ID"]);
    let deal_id = positive_id(&id).ok_or_else(|| {
        Refusal(
            StatusCode::BAD_REQUEST,
            "data[FIELDS][ID] must be a deal id".into(),
        )
    })?;
    Ok(Some((deal_id, event)))
}

/// The deal of a rule call's `document_id`: `[0]=crm`, `[1]=CCrmDocumentDeal`,
/// `[2]=DEAL_<id>`, read by index (PHP keys by index, whatever the order the
/// pairs came in). A lead's or any other document is refused, even with a
/// `DEAL_` id.
pub fn deal_of_document(tree: &Value) -> Result<i64, String> {
    let document = &tree["document_id"];
    let part = |index| scalar(b24_phpform::item(document, index));
    let (module, kind, id) = (part(0), part(1), part(2));
    if !module.eq_ignore_ascii_case("crm") || !kind.eq_ignore_ascii_case("CCrmDocumentDeal") {
        return Err(format!(
            "document_id must be crm, CCrmDocumentDeal, DEAL_<id> (the rule must be on a deal), not {}, {}, {}",
            shown(&module),
            shown(&kind),
            shown(&id)
        ));
    }
    id.strip_prefix("DEAL_")
        .and_then(positive_id)
        .ok_or_else(|| format!("document_id[2] must be DEAL_<id>, not {}", shown(&id)))
}

/// A short, printable rendering of a value sent by a caller, for messages.
fn shown(text: &str) -> String {
    if text.is_empty() {
        return "nothing".into();
    }
    let cut: String = text.chars().take(40).collect();
    format!("{cut:?}")
}

/// `document_id[2]=DEAL_123` → 123.
fn read_rule(tree: &Value) -> Result<i64, Refusal> {
    deal_of_document(tree).map_err(|reason| Refusal(StatusCode::BAD_REQUEST, reason))
}

fn positive_id(text: &str) -> Option<i64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse::<i64>().ok().filter(|id| *id > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_must_be_plain_positive_numbers() {
        assert_eq!(positive_id("42"), Some(42));
        for bad in ["", "0", "-1", "4x", " 4", "99999999999999999999"] {
            assert_eq!(positive_id(bad), None, "{bad}");
        }
        let rule = b24_phpform::parse_str(
            "document_id[0]=crm&document_id[1]=CCrmDocumentDeal&document_id[2]=DEAL_17",
            &b24_phpform::Limits::default(),
        )
        .unwrap();
        assert_eq!(read_rule(&rule).ok(), Some(17));
        let lead = json!({"document_id": ["crm", "CCrmDocumentLead", "LEAD_17"]});
        assert!(read_rule(&lead).is_err());
    }

    #[test]
    fn a_document_is_read_by_index_and_must_be_a_deal() {
        let limits = b24_phpform::Limits::default();
        let reversed = b24_phpform::parse_str(
            "document_id[2]=DEAL_103&document_id[1]=CCrmDocumentDeal&document_id[0]=crm",
            &limits,
        )
        .unwrap();
        assert_eq!(deal_of_document(&reversed), Ok(103));
        let keyed = json!({"document_id": {"2": "DEAL_103", "0": "crm", "1": "CCrmDocumentDeal"}});
        assert_eq!(deal_of_document(&keyed), Ok(103));
        for (body, expected) in [
            (
                "document_id[0]=crm&document_id[1]=CCrmDocumentLead&document_id[2]=DEAL_103",
                "CCrmDocumentLead",
            ),
            ("document_id[2]=DEAL_103", "crm, CCrmDocumentDeal"),
            (
                "document_id[0]=crm&document_id[1]=CCrmDocumentDeal&document_id[2]=LEAD_5",
                "LEAD_5",
            ),
        ] {
            let tree = b24_phpform::parse_str(body, &limits).unwrap();
            let error = deal_of_document(&tree).unwrap_err();
            assert!(error.contains(expected), "{body}: {error}");
        }
    }

    #[test]
    fn json_is_recognised_by_its_first_byte_too() {
        assert!(is_json_body(false, b" {\"event\": 1}"));
        assert!(is_json_body(true, b"event=1"));
        assert!(!is_json_body(false, b"event=ONCRMDEALUPDATE"));
        let tree = parse_body(br#"{"event":"ONCRMDEALUPDATE"}"#, false).unwrap();
        assert_eq!(tree["event"], "ONCRMDEALUPDATE");
    }
}
