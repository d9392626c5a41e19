//! Outbound calls, as Bitrix24's queue servers make them: outgoing webhooks
//! (events with an application token), the built-in "Webhook" automation rule,
//! and application robots. Form-encoded, fired once, never retried.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use tokio_util::task::TaskTracker;

use crate::clock;
use crate::error::ApiError;
use crate::fields::EntityType;
use crate::shared::Shared;
use crate::store::Change;

/// An outgoing webhook bound to an event (`ONCRMDEALUPDATE`, ...).
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EventHandler {
    pub event: String,
    pub url: String,
    pub application_token: String,
}

/// The built-in "Webhook" automation rule on a deal stage.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WebhookRule {
    pub stage_id: String,
    pub url: String,
}

/// An application's automation rule (robot) placed on a deal stage.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RobotHandler {
    pub code: String,
    pub handler: String,
    pub stage_id: String,
    #[serde(default)]
    pub properties: Map<String, Value>,
    #[serde(default = "yes")]
    pub use_subscription: bool,
    pub application_token: String,
}

fn yes() -> bool {
    true
}

/// A URL fit for Debug output: a handler URL may carry a secret in its
/// query string (`?secret=...`) or user info, so both are hidden.
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) => {
            let had_query = parsed.query().is_some();
            parsed.set_query(None);
            let _ = parsed.set_username("");
            let _ = parsed.set_password(None);
            let mut text = parsed.to_string();
            if had_query {
                text.push_str("?[redacted]");
            }
            text
        }
        Err(_) => "[unparsable url]".into(),
    }
}

impl std::fmt::Debug for EventHandler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventHandler")
            .field("event", &self.event)
            .field("url", &redact_url(&self.url))
            .field("application_token", &"[redacted]")
            .finish()
    }
}

impl std::fmt::Debug for RobotHandler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RobotHandler")
            .field("code", &self.code)
            .field("handler", &redact_url(&self.handler))
            .field("stage_id", &self.stage_id)
            .field("properties", &self.properties)
            .field("use_subscription", &self.use_subscription)
            .field("application_token", &"[redacted]")
            .finish()
    }
}

impl std::fmt::Debug for WebhookRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookRule")
            .field("stage_id", &self.stage_id)
            .field("url", &redact_url(&self.url))
            .finish()
    }
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("kind", &self.kind)
            .field("url", &redact_url(&self.url))
            .field(
                "body",
                &format_args!("[{} bytes, may hold tokens]", self.body.len()),
            )
            .field("status", &self.status)
            .field("error", &self.error)
            .field("at", &self.at)
            .finish()
    }
}

impl std::fmt::Debug for RobotRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RobotRun")
            .field("event_token", &"[redacted]")
            .field("workflow_id", &self.workflow_id)
            .field("code", &self.code)
            .field("deal_id", &self.deal_id)
            .field("properties", &self.properties)
            .field("use_subscription", &self.use_subscription)
            .field("return_values", &self.return_values)
            .field("log_message", &self.log_message)
            .finish()
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct HandlerSeed {
    pub events: Vec<EventHandler>,
    pub webhook_rules: Vec<WebhookRule>,
    pub robots: Vec<RobotHandler>,
}

/// One outbound call and how it went.
#[derive(Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Delivery {
    pub kind: String,
    pub url: String,
    /// The exact form body sent.
    pub body: String,
    pub status: Option<u16>,
    pub error: Option<String>,
    pub at: f64,
}

/// A robot run waiting for (or answered by) `bizproc.event.send`.
#[derive(Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RobotRun {
    #[serde(skip)]
    pub event_token: String,
    pub workflow_id: String,
    pub code: String,
    pub deal_id: i64,
    /// `properties[...]` as sent to the handler.
    pub properties: Map<String, Value>,
    /// Only robots registered with `USE_SUBSCRIPTION` may answer.
    pub use_subscription: bool,
    pub return_values: Option<Value>,
    pub log_message: Option<String>,
}

#[derive(Debug)]
pub struct Outbound {
    handlers: Mutex<HandlerSeed>,
    deliveries: Arc<Mutex<Vec<Delivery>>>,
    robot_runs: Mutex<Vec<RobotRun>>,
    client: reqwest::Client,
    tasks: TaskTracker,
}

pub(crate) fn random_hex(len: usize) -> String {
    (0..len)
        .map(|_| char::from(b"0123456789abcdef"[rand::random_range(0..16)]))
        .collect()
}

/// Builds a PHP-style form body keeping the field order Bitrix24 uses:
/// each leaf is encoded on its own by the shared encoder and joined.
pub(crate) fn ordered_form(leaves: &[(&[&str], String)]) -> String {
    leaves
        .iter()
        .map(|(path, value)| {
            let mut nested = json!(value);
            for segment in path.iter().rev() {
                nested = json!({ *segment: nested });
            }
            b24_phpform::encode(&nested)
        })
        .collect::<Vec<_>>()
        .join("&")
}

impl Outbound {
    pub fn new(handlers: HandlerSeed, delivery_timeout: Duration) -> Self {
        let client = reqwest::Client::builder()
            .timeout(delivery_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap_or_default();
        Self {
            handlers: Mutex::new(handlers),
            deliveries: Arc::new(Mutex::new(Vec::new())),
            robot_runs: Mutex::new(Vec::new()),
            client,
            tasks: TaskTracker::new(),
        }
    }

    pub fn handlers(&self) -> HandlerSeed {
        self.handlers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn add_handlers(&self, more: HandlerSeed) {
        let mut handlers = self.handlers.lock().unwrap_or_else(|e| e.into_inner());
        handlers.events.extend(more.events);
        handlers.webhook_rules.extend(more.webhook_rules);
        handlers.robots.extend(more.robots);
    }

    /// Drops the event handlers `unwanted` picks; returns how many went.
    pub fn remove_events(&self, unwanted: impl Fn(&EventHandler) -> bool) -> usize {
        let mut handlers = self.handlers.lock().unwrap_or_else(|e| e.into_inner());
        let before = handlers.events.len();
        handlers.events.retain(|h| !unwanted(h));
        before - handlers.events.len()
    }

    pub fn deliveries(&self) -> Vec<Delivery> {
        self.deliveries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn robot_runs(&self) -> Vec<RobotRun> {
        self.robot_runs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Stops accepting deliveries and waits (bounded) for those in flight.
    pub async fn shutdown(&self, grace: Duration) {
        self.tasks.close();
        let _ = tokio::time::timeout(grace, self.tasks.wait()).await;
    }

    /// Reacts to a write: events for deals, and stage automation when a deal
    /// enters a stage.
    pub fn on_change(&self, shared: &Shared, change: &Change) {
        if change.entity != EntityType::Deal {
            return;
        }
        let handlers = self.handlers();
        let event = if change.added {
            "ONCRMDEALADD"
        } else if change.category_before != change.category_after {
            "ONCRMDEALMOVETOCATEGORY"
        } else {
            "ONCRMDEALUPDATE"
        };
        let ts = (clock::now_unix() as i64).to_string();
        for (index, handler) in handlers.events.iter().enumerate() {
            if !handler.event.eq_ignore_ascii_case(event) {
                continue;
            }
            let mut leaves: Vec<(&[&str], String)> = vec![
                (&["event"], event.to_string()),
                (&["event_handler_id"], (index + 1).to_string()),
                (&["data", "FIELDS", "ID"], change.id.to_string()),
            ];
            if event == "ONCRMDEALMOVETOCATEGORY" {
                leaves.push((
                    &["data", "FIELDS", "CATEGORY_ID"],
                    change.category_after.unwrap_or(0).to_string(),
                ));
                leaves.push((
                    &["data", "FIELDS", "STAGE_ID"],
                    change.stage_after.clone().unwrap_or_default(),
                ));
            }
            leaves.push((&["ts"], ts.clone()));
            leaves.extend(event_auth(shared, &handler.application_token));
            self.deliver("event", &handler.url, ordered_form(&leaves));
        }
        let entered = change.stage_after.is_some() && change.stage_after != change.stage_before;
        let Some(stage) = change.stage_after.as_deref().filter(|_| entered) else {
            return;
        };
        let document = format!("DEAL_{}", change.id);
        for rule in handlers
            .webhook_rules
            .iter()
            .filter(|r| r.stage_id == stage)
        {
            let body = ordered_form(&[
                (&["document_id", "0"], "crm".into()),
                (&["document_id", "1"], "CCrmDocumentDeal".into()),
                (&["document_id", "2"], document.clone()),
            ]);
            self.deliver("webhookRule", &rule.url, body);
        }
        for robot in handlers.robots.iter().filter(|r| r.stage_id == stage) {
            crate::robots::start_run(shared, robot, change.id, 1);
        }
    }

    pub fn record_run(&self, run: RobotRun) {
        self.robot_runs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(run);
    }

    /// `bizproc.event.send`: the robot's answer, accepted once per token.
    pub fn complete_robot(
        &self,
        token: &str,
        return_values: Value,
        log_message: Option<String>,
    ) -> Result<(), ApiError> {
        let mut runs = self.robot_runs.lock().unwrap_or_else(|e| e.into_inner());
        let run = runs
            .iter_mut()
            .find(|r| {
                !token.is_empty()
                    && r.event_token == token
                    && r.use_subscription
                    && r.return_values.is_none()
            })
            .ok_or_else(|| {
                ApiError::new(
                    http::StatusCode::FORBIDDEN,
                    "ACCESS_DENIED",
                    "Access denied!",
                )
            })?;
        run.return_values = Some(return_values);
        run.log_message = log_message;
        Ok(())
    }

    /// Fires one delivery in the background; the result lands in `deliveries`.
    pub fn deliver(&self, kind: &str, url: &str, body: String) {
        let client = self.client.clone();
        let deliveries = Arc::clone(&self.deliveries);
        let (kind, url) = (kind.to_string(), url.to_string());
        self.tasks.spawn(async move {
            let delivery = send(&client, kind, url, body).await;
            deliveries
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(delivery);
        });
    }

    /// Delivers and waits for the outcome (the install call), recording it too.
    pub async fn deliver_now(&self, kind: &str, url: &str, body: String) -> Delivery {
        let delivery = send(&self.client, kind.to_string(), url.to_string(), body).await;
        self.deliveries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(delivery.clone());
        delivery
    }
}

async fn send(client: &reqwest::Client, kind: String, url: String, body: String) -> Delivery {
    let at = clock::now_unix();
    let result = client
        .post(&url)
        .header(
            http::header::CONTENT_TYPE,
            "application/x-www-form-urlencoded",
        )
        .body(body.clone())
        .send()
        .await;
    let (status, error) = match result {
        Ok(response) => (Some(response.status().as_u16()), None),
        Err(err) => (None, Some(describe_error(&err))),
    };
    tracing::debug!(kind, status, "outbound delivery finished");
    Delivery {
        kind,
        url,
        body,
        status,
        error,
        at,
    }
}

/// The `auth[...]` block of an event. A handler the installed application
/// bound gets working tokens — the docs' application-event example plus
/// `expires` (which the official Python SDK requires), `user_id` and
/// `refresh_token`, as in rule payloads; an outgoing webhook gets none.
fn event_auth(shared: &Shared, application_token: &str) -> Vec<(&'static [&'static str], String)> {
    let app = shared
        .app
        .as_ref()
        .filter(|app| app.application_token_matches(application_token));
    if let Some((app, tokens)) = app.and_then(|app| Some((app, app.issue_for_run(1)?))) {
        return vec![
            (&["auth", "access_token"], tokens.access_token),
            (&["auth", "expires"], tokens.expires.to_string()),
            (&["auth", "expires_in"], tokens.expires_in.to_string()),
            (&["auth", "scope"], app.scope_text()),
            (&["auth", "domain"], shared.domain.clone()),
            (
                &["auth", "server_endpoint"],
                "https://oauth.bitrix.info/rest/".to_string(),
            ),
            (&["auth", "status"], "L".to_string()),
            (
                &["auth", "client_endpoint"],
                format!("{}/rest/", shared.base_url),
            ),
            (&["auth", "member_id"], shared.member_id.clone()),
            (&["auth", "user_id"], tokens.user_id.to_string()),
            (&["auth", "refresh_token"], tokens.refresh_token),
            (
                &["auth", "application_token"],
                application_token.to_string(),
            ),
        ];
    }
    vec![
        (&["auth", "domain"], shared.domain.clone()),
        (
            &["auth", "client_endpoint"],
            format!("https://{}/rest/", shared.domain),
        ),
        (
            &["auth", "server_endpoint"],
            "https://oauth.bitrix.info/rest/".to_string(),
        ),
        (&["auth", "member_id"], shared.member_id.clone()),
        (
            &["auth", "application_token"],
            application_token.to_string(),
        ),
    ]
}

/// A transport error without the URL (which may carry a secret).
fn describe_error(err: &reqwest::Error) -> String {
    if err.is_timeout() {
        "timed out".into()
    } else if err.is_connect() {
        "connection failed".into()
    } else {
        "request failed".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_hides_tokens_and_url_secrets() {
        let handlers = HandlerSeed {
            events: vec![EventHandler {
                event: "ONCRMDEALADD".into(),
                url: "https://u:pw@relay.test/in?key=s1".into(),
                application_token: "tok-a".into(),
            }],
            webhook_rules: vec![WebhookRule {
                stage_id: "WON".into(),
                url: "https://relay.test/hook?secret=s2".into(),
            }],
            robots: vec![RobotHandler {
                code: "c".into(),
                handler: "https://relay.test/robot?k=s3".into(),
                stage_id: "WON".into(),
                properties: Map::new(),
                use_subscription: true,
                application_token: "tok-b".into(),
            }],
        };
        let delivery = Delivery {
            kind: "event".into(),
            url: "https://relay.test/hook?secret=s4".into(),
            body: "auth[application_token]=tok-c".into(),
            status: Some(200),
            error: None,
            at: 0.0,
        };
        let run = RobotRun {
            event_token: "tok-d".into(),
            workflow_id: "A1_2_3_4".into(),
            code: "c".into(),
            deal_id: 1,
            properties: Map::new(),
            use_subscription: true,
            return_values: None,
            log_message: None,
        };
        let text = format!("{handlers:?} {delivery:?} {run:?}");
        for secret in [
            "pw", "s1", "s2", "s3", "s4", "tok-a", "tok-b", "tok-c", "tok-d",
        ] {
            assert!(!text.contains(secret), "{secret} leaked: {text}");
        }
        assert!(text.contains("https://relay.test/hook?[redacted]"));
    }
}
