//! The application side of the admin handle: install the local application
//! (the ONAPPINSTALL call), the token knobs (expire now, revoke, lifetime),
//! the refresh count, and running its automation rules on deals — as
//! [`Admin`] methods and as `/_emulator/app/...` endpoints.

use std::time::Duration;

use http::{Method, StatusCode};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::admin::{Admin, BadRequest, parse, to_value};
use crate::app::{AppError, AppStatus, Application, EventBinding, IssuedTokens};
use crate::clock;
use crate::outbound::{Delivery, RobotHandler, RobotRun, ordered_form};
use crate::robots::AppRobot;
use crate::server::{HttpResponse, json_response};

/// What an install did: the call to the install URL and the first tokens.
#[derive(Clone)]
pub struct Installed {
    pub delivery: Delivery,
    pub tokens: IssuedTokens,
    pub application_token: String,
}

impl std::fmt::Debug for Installed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Installed")
            .field("delivery", &self.delivery)
            .field("tokens", &self.tokens)
            .field("application_token", &"[redacted]")
            .finish()
    }
}

impl Admin {
    fn app(&self) -> Result<&Application, AppError> {
        self.shared.app.as_ref().ok_or(AppError::NoApplication)
    }

    /// Installs (or re-installs) the application: issues the first token
    /// pair and a new application token, then POSTs the ONAPPINSTALL form to
    /// `install_url` and waits for the answer. Automation-rule handlers must
    /// later be on the same host as `install_url`.
    pub async fn install_application(&self, install_url: &str) -> Result<Installed, AppError> {
        let app = self.app()?;
        let (installation, tokens) = app.install(install_url)?;
        let shared = &self.shared;
        let body = ordered_form(&[
            (&["event"], "ONAPPINSTALL".into()),
            (
                &["event_handler_id"],
                installation.event_handler_id.to_string(),
            ),
            (&["data", "VERSION"], "1".into()),
            (&["data", "ACTIVE"], "Y".into()),
            (&["data", "INSTALLED"], "Y".into()),
            (&["data", "LANGUAGE_ID"], "ru".into()),
            (&["ts"], (clock::now_unix() as i64).to_string()),
            (&["auth", "access_token"], tokens.access_token.clone()),
            (&["auth", "expires"], tokens.expires.to_string()),
            (&["auth", "expires_in"], tokens.expires_in.to_string()),
            (&["auth", "scope"], app.scope_text()),
            (&["auth", "domain"], shared.domain.clone()),
            (
                &["auth", "server_endpoint"],
                "https://oauth.bitrix.info/rest/".into(),
            ),
            (&["auth", "status"], "L".into()),
            (
                &["auth", "client_endpoint"],
                format!("{}/rest/", shared.base_url),
            ),
            (&["auth", "member_id"], shared.member_id.clone()),
            (&["auth", "user_id"], tokens.user_id.to_string()),
            (&["auth", "refresh_token"], tokens.refresh_token.clone()),
            (
                &["auth", "application_token"],
                installation.application_token.clone(),
            ),
        ]);
        let delivery = shared
            .outbound
            .deliver_now("install", install_url, body)
            .await;
        Ok(Installed {
            delivery,
            tokens,
            application_token: installation.application_token,
        })
    }

    /// Installed or not, scopes, refresh counts, registered rules.
    pub fn application_status(&self) -> Result<AppStatus, AppError> {
        Ok(self.app()?.status())
    }

    /// Successful refreshes at the emulated authorization server.
    pub fn refresh_count(&self) -> u64 {
        self.app().map_or(0, |app| app.status().refreshes)
    }

    /// Every access token issued so far answers `expired_token` from now on.
    pub fn expire_access_tokens(&self) -> Result<usize, AppError> {
        Ok(self.app()?.expire_access_tokens())
    }

    /// Lets `calls` more OAuth REST calls succeed, then every access token
    /// issued so far expires: a refresh is needed in the middle of a run.
    pub fn expire_access_tokens_after(&self, calls: u64) -> Result<(), AppError> {
        self.app()?.expire_access_tokens_after(calls);
        Ok(())
    }

    /// Every refresh token stops working (`invalid_grant`).
    pub fn revoke_refresh_tokens(&self) -> Result<usize, AppError> {
        Ok(self.app()?.revoke_refresh_tokens())
    }

    /// Lifetime of access tokens issued from now on.
    pub fn set_token_lifetime(&self, lifetime: Duration) -> Result<(), AppError> {
        self.app()?.set_token_lifetime(lifetime);
        Ok(())
    }

    /// The pair issued last by install or refresh (not the ones that rule
    /// runs and events carry).
    pub fn latest_tokens(&self) -> Option<IssuedTokens> {
        self.app().ok()?.latest_tokens()
    }

    /// Rules the application registered with `bizproc.robot.add`.
    pub fn app_robots(&self) -> Vec<AppRobot> {
        self.app().map(Application::robots).unwrap_or_default()
    }

    /// Handlers the application bound with `event.bind`.
    pub fn app_events(&self) -> Vec<EventBinding> {
        self.app().map(Application::events).unwrap_or_default()
    }

    fn robot_handler(
        &self,
        code: &str,
        stage_id: &str,
        properties: Map<String, Value>,
    ) -> Result<(RobotHandler, i64), AppError> {
        let app = self.app()?;
        let installation = app.installation().ok_or(AppError::NotInstalled)?;
        let robot = app
            .robot(code)
            .ok_or_else(|| AppError::UnknownRobot(code.to_string()))?;
        Ok((
            RobotHandler {
                code: robot.code,
                handler: robot.handler,
                stage_id: stage_id.to_string(),
                properties,
                use_subscription: robot.use_subscription,
                application_token: installation.application_token,
            },
            robot.auth_user_id,
        ))
    }

    /// Runs the registered rule `code` on deal `deal_id` with these property
    /// values, as a workflow would: the payload goes to the rule's handler
    /// in the background. Returns the workflow id ([`Admin::robot_run`]).
    pub fn run_robot(
        &self,
        code: &str,
        deal_id: i64,
        properties: Map<String, Value>,
    ) -> Result<String, AppError> {
        let (handler, user_id) = self.robot_handler(code, "", properties)?;
        Ok(crate::robots::start_run(
            &self.shared,
            &handler,
            deal_id,
            user_id,
        ))
    }

    /// Like [`Admin::run_robot`], but the payload carries `application_token`
    /// instead of the application's (and tokens that work nowhere): what a
    /// forged call to the rule's handler looks like.
    pub fn run_robot_forged(
        &self,
        code: &str,
        deal_id: i64,
        properties: Map<String, Value>,
        application_token: &str,
    ) -> Result<String, AppError> {
        let (mut handler, user_id) = self.robot_handler(code, "", properties)?;
        handler.application_token = application_token.to_string();
        Ok(crate::robots::start_run(
            &self.shared,
            &handler,
            deal_id,
            user_id,
        ))
    }

    /// Places the registered rule `code` on a deal stage: it then runs
    /// whenever a deal enters `stage_id`.
    pub fn place_robot(
        &self,
        code: &str,
        stage_id: &str,
        properties: Map<String, Value>,
    ) -> Result<(), AppError> {
        let (handler, _) = self.robot_handler(code, stage_id, properties)?;
        self.add_handlers(crate::outbound::HandlerSeed {
            robots: vec![handler],
            ..Default::default()
        });
        Ok(())
    }

    pub fn robot_run(&self, workflow_id: &str) -> Option<RobotRun> {
        self.robot_runs()
            .into_iter()
            .find(|r| r.workflow_id == workflow_id)
    }

    /// Waits until the workflow got its `bizproc.event.send` (or `timeout`
    /// passed) and returns the run as it then is.
    pub async fn wait_for_robot_answer(
        &self,
        workflow_id: &str,
        timeout: Duration,
    ) -> Option<RobotRun> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let run = self.robot_run(workflow_id);
            let answered = run.as_ref().is_some_and(|r| r.return_values.is_some());
            if answered || tokio::time::Instant::now() >= deadline {
                return run;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct InstallBody {
    url: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RunBody {
    deal_id: i64,
    #[serde(default)]
    properties: Map<String, Value>,
    /// Sends this application token instead of the real one (a forged call).
    #[serde(default)]
    application_token: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct PlaceBody {
    stage_id: String,
    #[serde(default)]
    properties: Map<String, Value>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ExpireBody {
    after_calls: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LifetimeBody {
    secs: u64,
}

fn ok(value: Value) -> HttpResponse {
    json_response(StatusCode::OK, &value)
}

fn refused(err: &AppError) -> HttpResponse {
    let status = match err {
        AppError::UnknownRobot(_) => StatusCode::NOT_FOUND,
        AppError::NoApplication | AppError::NotInstalled => StatusCode::CONFLICT,
        AppError::InstallUrl(_) => StatusCode::BAD_REQUEST,
    };
    json_response(
        status,
        &json!({"error": "APP_ERROR", "error_description": err.to_string()}),
    )
}

fn answer<T>(result: Result<T, AppError>, shape: impl FnOnce(T) -> Value) -> HttpResponse {
    match result {
        Ok(value) => ok(shape(value)),
        Err(err) => refused(&err),
    }
}

/// Serves `/_emulator/app/...` and `/_emulator/robot-runs/{workflow}`;
/// `None` when the path is not one of these.
pub async fn route(
    admin: &Admin,
    method: &Method,
    parts: &[&str],
    body: &[u8],
) -> Option<Result<HttpResponse, BadRequest>> {
    let response = match (method.as_str(), parts) {
        ("GET", ["app"]) => answer(admin.application_status(), |s| to_value(&s)),
        ("POST", ["app", "install"]) => {
            let wanted: InstallBody = match parse(body) {
                Ok(wanted) => wanted,
                Err(err) => return Some(Err(err)),
            };
            answer(
                admin.install_application(&wanted.url).await,
                |i| json!({"delivery": to_value(&i.delivery)}),
            )
        }
        ("POST", ["app", "expire-tokens"]) => {
            let wanted: ExpireBody = if body.iter().all(u8::is_ascii_whitespace) {
                ExpireBody { after_calls: None }
            } else {
                match parse(body) {
                    Ok(wanted) => wanted,
                    Err(err) => return Some(Err(err)),
                }
            };
            match wanted.after_calls {
                Some(calls) => answer(
                    admin.expire_access_tokens_after(calls),
                    |()| json!({"afterCalls": calls}),
                ),
                None => answer(admin.expire_access_tokens(), |n| json!({"expired": n})),
            }
        }
        ("POST", ["app", "revoke-refresh-tokens"]) => {
            answer(admin.revoke_refresh_tokens(), |n| json!({"revoked": n}))
        }
        ("PUT", ["app", "token-lifetime"]) => match parse::<LifetimeBody>(body) {
            Ok(wanted) => answer(
                admin.set_token_lifetime(Duration::from_secs(wanted.secs)),
                |()| json!({"ok": true}),
            ),
            Err(err) => return Some(Err(err)),
        },
        ("GET", ["app", "robots"]) => ok(to_value(&admin.app_robots())),
        ("GET", ["app", "events"]) => ok(to_value(&admin.app_events())),
        ("POST", ["app", "robots", code, "run"]) => match parse::<RunBody>(body) {
            Ok(wanted) => {
                let started = match &wanted.application_token {
                    Some(forged) => {
                        admin.run_robot_forged(code, wanted.deal_id, wanted.properties, forged)
                    }
                    None => admin.run_robot(code, wanted.deal_id, wanted.properties),
                };
                answer(started, |workflow_id| json!({"workflowId": workflow_id}))
            }
            Err(err) => return Some(Err(err)),
        },
        ("POST", ["app", "robots", code, "place"]) => match parse::<PlaceBody>(body) {
            Ok(wanted) => answer(
                admin.place_robot(code, &wanted.stage_id, wanted.properties),
                |()| json!({"ok": true}),
            ),
            Err(err) => return Some(Err(err)),
        },
        ("GET", ["robot-runs", workflow_id]) => match admin.robot_run(workflow_id) {
            Some(run) => ok(to_value(&run)),
            None => json_response(
                StatusCode::NOT_FOUND,
                &json!({"error": "NOT_FOUND", "error_description": "no such workflow"}),
            ),
        },
        _ => return None,
    };
    Some(Ok(response))
}
