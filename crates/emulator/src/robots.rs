//! Application automation rules ("robots"): what `bizproc.robot.add`
//! registers, and one run of a rule on a deal — the exact form payload the
//! queue server POSTs to the rule's handler, with a pending event token that
//! `bizproc.event.send` answers.

use serde::Serialize;
use serde_json::{Map, Value};

use crate::clock;
use crate::outbound::{RobotHandler, RobotRun, ordered_form, random_hex};
use crate::shared::Shared;

/// A rule registered by the application with `bizproc.robot.add`.
#[derive(Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AppRobot {
    pub code: String,
    pub handler: String,
    pub auth_user_id: i64,
    /// Waits for `bizproc.event.send` unless registered with `N`.
    pub use_subscription: bool,
    /// A string or `{"ru": .., "en": ..}`.
    pub name: Value,
    pub description: Value,
    pub properties: Map<String, Value>,
    pub return_properties: Map<String, Value>,
    /// `["crm", "CCrmDocumentDeal", "DEAL"]` when given.
    pub document_type: Vec<String>,
    pub filter: Value,
}

impl std::fmt::Debug for AppRobot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppRobot")
            .field("code", &self.code)
            .field("handler", &crate::outbound::redact_url(&self.handler))
            .field("auth_user_id", &self.auth_user_id)
            .field("use_subscription", &self.use_subscription)
            .field("properties", &self.properties.keys().collect::<Vec<_>>())
            .field(
                "return_properties",
                &self.return_properties.keys().collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

/// `A51601_82584_96831_81132`, as the portal names workflows.
fn workflow_id() -> String {
    format!(
        "A{}_{}_{}_{}",
        rand::random_range(10_000..100_000),
        rand::random_range(10_000..100_000),
        rand::random_range(10_000..100_000),
        rand::random_range(10_000..100_000)
    )
}

/// `<uniqid>|<workflow>|<32 chars>.<64 hex>`, the portal's token shape.
fn event_token(workflow_id: &str) -> String {
    format!(
        "{}.{}|{workflow_id}|{}.{}",
        random_hex(14),
        rand::random_range(10_000_000..100_000_000),
        random_hex(32),
        random_hex(32) + &random_hex(32)
    )
}

/// Starts one run of `robot` on deal `deal_id`: records it as pending and
/// POSTs the payload to the handler (once, no retry). Returns the workflow id.
///
/// When the robot belongs to the installed application, `auth[...]` carries
/// real tokens of `user_id` that work against this portal
/// (`client_endpoint` is the emulator's own `/rest/`); otherwise (seeded
/// robots) the tokens only have the right shape.
pub fn start_run(shared: &Shared, robot: &RobotHandler, deal_id: i64, user_id: i64) -> String {
    let workflow_id = workflow_id();
    let event_token = event_token(&workflow_id);
    let document = format!("DEAL_{deal_id}");
    let mut leaves: Vec<(Vec<String>, String)> = Vec::new();
    let mut leaf = |path: &[&str], value: String| {
        leaves.push((path.iter().map(|s| s.to_string()).collect(), value));
    };
    leaf(&["workflow_id"], workflow_id.clone());
    leaf(&["code"], robot.code.clone());
    leaf(&["document_id", "0"], "crm".into());
    leaf(&["document_id", "1"], "CCrmDocumentDeal".into());
    leaf(&["document_id", "2"], document);
    leaf(&["document_type", "0"], "crm".into());
    leaf(&["document_type", "1"], "CCrmDocumentDeal".into());
    leaf(&["document_type", "2"], "DEAL".into());
    leaf(&["event_token"], event_token.clone());
    for (name, value) in &robot.properties {
        leaf(
            &["properties", name.as_str()],
            crate::params::scalar_text(value),
        );
    }
    let use_subscription = if robot.use_subscription { "Y" } else { "N" };
    leaf(&["use_subscription"], use_subscription.into());
    leaf(&["timeout_duration"], "0".into());
    let now = clock::now_unix() as i64;
    leaf(&["ts"], now.to_string());

    let app = shared
        .app
        .as_ref()
        .filter(|app| app.application_token_matches(&robot.application_token));
    let issued = app.and_then(|app| app.issue_for_run(user_id));
    let (access_token, refresh_token, expires, expires_in, scope, client_endpoint) =
        match (app, issued) {
            (Some(app), Some(tokens)) => (
                tokens.access_token,
                tokens.refresh_token,
                tokens.expires,
                tokens.expires_in,
                app.scope_text(),
                format!("{}/rest/", shared.base_url),
            ),
            _ => (
                random_hex(70),
                random_hex(70),
                now + 3600,
                3600,
                "crm,bizproc".to_string(),
                format!("https://{}/rest/", shared.domain),
            ),
        };
    // Field order as the portal sends it; `expires` and `refresh_token` are
    // read by the official SDK's workflow-payload parser.
    let auth = [
        ("access_token", access_token),
        ("expires", expires.to_string()),
        ("expires_in", expires_in.to_string()),
        ("scope", scope),
        ("domain", shared.domain.clone()),
        (
            "server_endpoint",
            "https://oauth.bitrix.info/rest/".to_string(),
        ),
        ("status", "L".to_string()),
        ("client_endpoint", client_endpoint),
        ("member_id", shared.member_id.clone()),
        ("user_id", user_id.to_string()),
        ("refresh_token", refresh_token),
        ("application_token", robot.application_token.clone()),
    ];
    for (key, value) in auth {
        leaf(&["auth", key], value);
    }
    let borrowed: Vec<(Vec<&str>, String)> = leaves
        .iter()
        .map(|(p, v)| (p.iter().map(String::as_str).collect(), v.clone()))
        .collect();
    let refs: Vec<(&[&str], String)> = borrowed
        .iter()
        .map(|(p, v)| (p.as_slice(), v.clone()))
        .collect();
    shared.outbound.record_run(RobotRun {
        event_token,
        workflow_id: workflow_id.clone(),
        code: robot.code.clone(),
        deal_id,
        properties: robot.properties.clone(),
        use_subscription: robot.use_subscription,
        return_values: None,
        log_message: None,
    });
    shared
        .outbound
        .deliver("robot", &robot.handler, ordered_form(&refs));
    workflow_id
}
