//! The install call (ONAPPINSTALL) and the rule's runs as they arrive: what
//! they carry, and the checks that decide whether the relay trusts them.

use std::sync::Arc;

use b24_client::{Secret, TokenPair};
use serde_json::{Value, json};
use subtle::ConstantTimeEq;

use super::robot::{RobotAction, register_robot, robot_definition};
use super::{answer_finished_calls, oauth_for};
use crate::config::{AppCredentials, Config};
use crate::mapping::scalar;
use crate::metrics::Metrics;
use crate::portals::PortalHandle;
use crate::store::{AppInstall, Store};

/// Why an install or a rule run was refused; `status` is the HTTP answer.
/// Messages never hold a token.
#[derive(Debug, thiserror::Error)]
#[error("{reason}")]
pub struct InstallError {
    pub status: u16,
    pub reason: String,
}

fn refused(status: u16, reason: impl Into<String>) -> InstallError {
    InstallError {
        status,
        reason: reason.into(),
    }
}

/// The `auth[...]` block of an install call.
#[derive(Clone)]
pub struct InstallPayload {
    pub client_endpoint: String,
    pub domain: String,
    pub member_id: String,
    pub scopes: String,
    pub application_token: Secret,
    pub tokens: TokenPair,
    /// `auth[server_endpoint]`: the portal's authorization server.
    pub server_endpoint: Option<String>,
}

impl std::fmt::Debug for InstallPayload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InstallPayload")
            .field("client_endpoint", &self.client_endpoint)
            .field("domain", &self.domain)
            .field("member_id", &self.member_id)
            .field("scopes", &self.scopes)
            .finish_non_exhaustive()
    }
}

impl InstallPayload {
    /// Reads an ONAPPINSTALL form (already parsed into a tree).
    pub fn read(tree: &Value) -> Result<Self, InstallError> {
        let event = scalar(&tree["event"]);
        if !event.eq_ignore_ascii_case("ONAPPINSTALL") {
            return Err(refused(400, "not an ONAPPINSTALL call"));
        }
        let auth = &tree["auth"];
        let field = |name: &str| {
            let value = scalar(&auth[name]);
            if value.is_empty() {
                Err(refused(400, format!("auth[{name}] is missing")))
            } else {
                Ok(value)
            }
        };
        Ok(Self {
            client_endpoint: field("client_endpoint")?,
            domain: field("domain")?,
            member_id: field("member_id")?,
            scopes: scalar(&auth["scope"]),
            application_token: Secret::new(field("application_token")?),
            tokens: TokenPair {
                access_token: Secret::new(field("access_token")?),
                refresh_token: Secret::new(field("refresh_token")?),
            },
            server_endpoint: Some(scalar(&auth["server_endpoint"])).filter(|s| !s.is_empty()),
        })
    }
}

/// `host[:port]` of an http(s) URL, lower-case.
fn host_of(url: &str) -> Option<String> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))?;
    let host = rest.split(['/', '?', '#']).next()?;
    (!host.is_empty() && !host.contains('@')).then(|| host.to_ascii_lowercase())
}

/// Handles an install: checks that it comes from the configured portal,
/// verifies the tokens with a call (`scope`), stores them, makes them the
/// portal's application client, registers the rule (add or update) and
/// answers rule runs that waited for a re-install.
pub async fn install(
    config: &Arc<Config>,
    portal: &Arc<PortalHandle>,
    store: &Store,
    metrics: &Arc<Metrics>,
    public_url: &str,
    tree: &Value,
) -> Result<RobotAction, InstallError> {
    let name = portal.config.name.clone();
    let payload = InstallPayload::read(tree)?;
    let expected_host = portal.config.webhook.portal();
    if host_of(&payload.client_endpoint).as_deref() != Some(expected_host.as_str()) {
        return Err(refused(
            403,
            format!("auth[client_endpoint] is not the configured portal {expected_host}"),
        ));
    }
    if let Some(member) = &portal.config.member_id {
        if payload.member_id != *member {
            return Err(refused(403, "auth[member_id] is not the configured portal"));
        }
    }
    let record = AppInstall {
        client_endpoint: payload.client_endpoint.clone(),
        domain: payload.domain.clone(),
        member_id: payload.member_id.clone(),
        scopes: payload.scopes.clone(),
        application_token: payload.application_token.clone(),
        tokens: payload.tokens.clone(),
        server_endpoint: payload.server_endpoint.clone(),
        reinstall_reason: None,
        updated_at_ms: 0,
    };
    // Without [portal.NAME.app] yet (the portal shows client id and secret
    // only after this call), the fresh tokens still work for an hour, but
    // no refresh can succeed: they are stored and used after a restart
    // with the credentials.
    let placeholder = AppCredentials {
        client_id: String::new(),
        client_secret: Secret::new(""),
    };
    let credentials = portal.config.app.as_ref();
    let oauth = oauth_for(
        &name,
        credentials.unwrap_or(&placeholder),
        &config.app,
        &record,
        store.clone(),
    )
    .map_err(|e| refused(400, format!("application credentials: {e}")))?;
    let client = portal
        .build_app_client(oauth)
        .map_err(|e| refused(500, format!("application client: {e}")))?;
    // A forged call cannot pass this: the tokens must work on the portal.
    let granted = client
        .call("scope", &json!({}))
        .await
        .map_err(|e| refused(403, format!("the install tokens do not work: {e}")))?;
    let mut record = record;
    // A refresh during the check replaced the pair: keep the current one.
    if let Some(tokens) = client.oauth_tokens() {
        record.tokens = tokens;
    }
    if let Some(scopes) = granted.result.as_array() {
        record.scopes = scopes.iter().map(scalar).collect::<Vec<_>>().join(",");
    }
    let saved = record.clone();
    store.save_app_install(&name, &saved).await.map_err(|e| {
        tracing::error!(portal = %name, error = %e, "cannot store the installed application");
        refused(503, "the store is not available")
    })?;
    if credentials.is_some() {
        portal.use_app(client.clone(), store.clone(), config.app.clone());
        tracing::info!(portal = %name, domain = %record.domain, scopes = %record.scopes, "local application installed");
    } else {
        tracing::warn!(portal = %name, domain = %record.domain, scopes = %record.scopes,
            "local application installed; add [portal.{name}.app] with the client id and secret the portal shows, then restart");
    }
    let fields = robot_definition(config, &name, public_url);
    let action = register_robot(&client, &config.app.robot_code, fields)
        .await
        .map_err(|e| {
            refused(
                502,
                format!(
                    "tokens stored, but registering the rule failed: {e}; run `b24-relay app register`"
                ),
            )
        })?;
    tracing::info!(portal = %name, code = %config.app.robot_code, action = action.as_str(), "automation rule registered");
    let (config, portal, store, metrics) = (
        config.clone(),
        portal.clone(),
        store.clone(),
        metrics.clone(),
    );
    tokio::spawn(
        async move { answer_finished_calls(&config, &portal, &store, &metrics, None).await },
    );
    Ok(action)
}

/// One run of the relay's rule, as its handler receives it.
#[derive(Clone)]
pub struct RuleRun {
    pub deal_id: i64,
    pub workflow_id: String,
    pub event_token: String,
    pub route: String,
    /// `use_subscription` is not `N`: the workflow waits for
    /// `bizproc.event.send`. With `N` the portal refuses an answer, so none
    /// is sent (BITRIX24.md §2).
    pub wants_answer: bool,
}

impl std::fmt::Debug for RuleRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RuleRun")
            .field("deal_id", &self.deal_id)
            .field("workflow_id", &self.workflow_id)
            .field("route", &self.route)
            .field("wants_answer", &self.wants_answer)
            .finish_non_exhaustive()
    }
}

/// Checks a run against the stored install (application token in
/// constant time, member id) and reads what it asks for.
pub fn read_rule_run(
    config: &Config,
    install: Option<&AppInstall>,
    tree: &Value,
) -> Result<RuleRun, InstallError> {
    let install = install.ok_or_else(|| refused(401, "the application is not installed"))?;
    let auth = &tree["auth"];
    let token = scalar(&auth["application_token"]);
    let token_ok = bool::from(
        token
            .as_bytes()
            .ct_eq(install.application_token.expose().as_bytes()),
    );
    if !token_ok {
        return Err(refused(401, "wrong application token"));
    }
    if scalar(&auth["member_id"]) != install.member_id {
        return Err(refused(401, "auth[member_id] is not the installed portal"));
    }
    let code = scalar(&tree["code"]);
    if !code.is_empty() && code != config.app.robot_code {
        return Err(refused(400, format!("unknown rule code {code}")));
    }
    let deal_id = crate::intake::deal_of_document(tree).map_err(|reason| refused(400, reason))?;
    let wants_answer = !scalar(&tree["use_subscription"]).eq_ignore_ascii_case("N");
    let event_token = scalar(&tree["event_token"]);
    if event_token.is_empty() && wants_answer {
        return Err(refused(400, "event_token is missing"));
    }
    let route = scalar(&tree["properties"]["route"]);
    Ok(RuleRun {
        deal_id,
        workflow_id: scalar(&tree["workflow_id"]),
        event_token,
        route,
        wants_answer,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_of_endpoints() {
        assert_eq!(
            host_of("https://Partner.bitrix24.ru/rest/").as_deref(),
            Some("partner.bitrix24.ru")
        );
        assert_eq!(
            host_of("http://127.0.0.1:5000/rest/").as_deref(),
            Some("127.0.0.1:5000")
        );
        assert_eq!(host_of("ftp://x/"), None);
        assert_eq!(host_of("https://user@evil.test/"), None);
    }

    #[test]
    fn install_payload_debug_hides_tokens() {
        let tree = json!({"event": "ONAPPINSTALL", "auth": {
            "client_endpoint": "https://p.test/rest/", "domain": "p.test", "member_id": "m1",
            "scope": "crm,bizproc", "application_token": "APPTOKEN1",
            "access_token": "ACCESS1", "refresh_token": "REFRESH1"}});
        let payload = InstallPayload::read(&tree).unwrap();
        let shown = format!("{payload:?}");
        for secret in ["APPTOKEN1", "ACCESS1", "REFRESH1"] {
            assert!(!shown.contains(secret), "{shown}");
        }
        let mut missing = tree.clone();
        missing["auth"]["refresh_token"] = json!("");
        assert_eq!(InstallPayload::read(&missing).unwrap_err().status, 400);
    }
}
