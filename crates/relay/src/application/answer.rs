//! Answering the rule's runs: when a job ends, every run waiting on it gets
//! `bizproc.event.send` with the chosen route's target deal id, a status and
//! a message. Runs stay waiting (nothing is lost) while the application
//! has no working tokens, and are answered after the next install.

use std::sync::Arc;

use b24_client::{ApiErrorKind, Error as ClientError};
use serde_json::{Value, json};

use crate::config::Config;
use crate::metrics::Metrics;
use crate::portals::PortalHandle;
use crate::store::{Job, JobState, LinkKey, LinkKind, RuleCall, Store, StoreError};

/// What goes back into the workflow.
#[derive(Debug, Clone, PartialEq)]
pub struct RuleAnswer {
    pub target_deal_id: Option<i64>,
    /// `done`, `skipped` or `failed`.
    pub status: &'static str,
    pub message: String,
}

impl RuleAnswer {
    fn log_message(&self, route: &str) -> String {
        match (self.status, self.target_deal_id) {
            ("done", Some(id)) => format!("b24-relay: route {route}: target deal {id}"),
            _ => format!(
                "b24-relay: route {route}: {}: {}",
                self.status, self.message
            ),
        }
    }
}

/// The answer for a run on `route`, from its ended job and the route's link.
pub fn answer_values(
    job: &Job,
    route_exists: bool,
    target: Option<i64>,
    route: &str,
) -> RuleAnswer {
    let message = job.message.clone().unwrap_or_default();
    if !route_exists {
        return RuleAnswer {
            target_deal_id: None,
            status: "failed",
            message: format!("route `{route}` is not configured for this portal"),
        };
    }
    match (job.state, target) {
        (JobState::Failed, _) => RuleAnswer {
            target_deal_id: target,
            status: "failed",
            message,
        },
        (_, Some(id)) => RuleAnswer {
            target_deal_id: Some(id),
            status: "done",
            message,
        },
        _ => RuleAnswer {
            target_deal_id: None,
            status: "skipped",
            message: if message.is_empty() {
                format!("route `{route}` did not take this deal")
            } else {
                message
            },
        },
    }
}

/// Answers every run of `portal` whose job has ended (of `job_id` only, when
/// given). One answerer per portal at a time, so no run is answered twice.
pub async fn answer_finished_calls(
    config: &Config,
    portal: &Arc<PortalHandle>,
    store: &Store,
    metrics: &Arc<Metrics>,
    job_id: Option<i64>,
) {
    if portal.config.app.is_none() {
        return;
    }
    let _one_answerer = portal.answering.lock().await;
    let Some(mut client) = portal.app_client() else {
        return;
    };
    let name = portal.config.name.clone();
    let calls = store.rule_calls_to_answer(&name, job_id).await;
    let calls = match calls {
        Ok(calls) => calls,
        Err(error) => {
            tracing::error!(portal = %name, %error, "cannot read rule runs to answer");
            return;
        }
    };
    for call in calls {
        let answer = match compute(config, store, &call).await {
            Ok(answer) => answer,
            Err(error) => {
                tracing::error!(portal = %name, %error, "cannot read the job of a rule run");
                return;
            }
        };
        let params = json!({
            "EVENT_TOKEN": call.event_token,
            "RETURN_VALUES": {
                "targetDealId": answer.target_deal_id.map_or(Value::from(""), Value::from),
                "status": answer.status,
                "message": answer.message,
            },
            "LOG_MESSAGE": answer.log_message(&call.route),
        });
        let id = call.id;
        let mut sent = client.call("bizproc.event.send", &params).await;
        if let Err(error) = &sent {
            // Another process may have refreshed the pair: with the
            // rebuilt client, one more try.
            if !portal.app_refused(&client, error).await {
                if let Some(rebuilt) = portal
                    .app_client()
                    .filter(|c| c.oauth_tokens() != client.oauth_tokens())
                {
                    client = rebuilt;
                    sent = client.call("bizproc.event.send", &params).await;
                }
            } else {
                metrics.rule_answered(&name, "deferred");
                tracing::warn!(portal = %name, workflow = %call.workflow_id, "rule runs wait for the application to be installed again");
                return;
            }
        }
        match sent {
            Ok(_) => {
                tracing::info!(portal = %name, workflow = %call.workflow_id, deal = call.deal_id, status = answer.status, "rule run answered");
                metrics.rule_answered(&name, "sent");
                let _ = store.finish_rule_call(id, None).await;
            }
            Err(error) if portal.app_refused(&client, &error).await => {
                metrics.rule_answered(&name, "deferred");
                return;
            }
            Err(ClientError::Api(api))
                if matches!(
                    api.kind,
                    ApiErrorKind::AccessDenied | ApiErrorKind::InvalidCredentials
                ) || api.status == 400 =>
            {
                // The workflow no longer takes an answer (token used,
                // expired or the run was cancelled): give up on this one.
                let message = format!("{}: {}", api.code, api.description);
                tracing::warn!(portal = %name, workflow = %call.workflow_id, %message, "the workflow refused the answer");
                metrics.rule_answered(&name, "refused");
                let _ = store.finish_rule_call(id, Some(&message)).await;
            }
            Err(error) => {
                // Tried again when the next job of this portal ends or at
                // the next install.
                tracing::warn!(portal = %name, workflow = %call.workflow_id, %error, "could not answer a rule run; will try again");
                metrics.rule_answered(&name, "failed");
                return;
            }
        }
    }
}

/// Answers a run at once with `answer` (a run the relay will not queue).
pub async fn answer_now(
    portal: &PortalHandle,
    metrics: &Metrics,
    event_token: &str,
    route: &str,
    answer: &RuleAnswer,
) {
    let Some(client) = portal.app_client() else {
        tracing::warn!(portal = %portal.config.name, "cannot answer a refused rule run: the application is not usable");
        return;
    };
    let params = json!({
        "EVENT_TOKEN": event_token,
        "RETURN_VALUES": {"targetDealId": "", "status": answer.status, "message": answer.message},
        "LOG_MESSAGE": answer.log_message(route),
    });
    let result = match client.call("bizproc.event.send", &params).await {
        Ok(_) => "sent",
        Err(error) => {
            portal.app_refused(&client, &error).await;
            tracing::warn!(portal = %portal.config.name, %error, "could not answer a refused rule run");
            "failed"
        }
    };
    metrics.rule_answered(&portal.config.name, result);
}

async fn compute(
    config: &Config,
    store: &Store,
    call: &RuleCall,
) -> Result<RuleAnswer, StoreError> {
    let route = config
        .route(&call.route)
        .filter(|r| r.from == call.portal)
        .map(|r| r.to.clone());
    let job_id = call.job_id;
    let job = store
        .job(job_id)
        .await?
        .ok_or(StoreError::NoSuchJob(job_id))?;
    let target = match &route {
        Some(to) => store
            .link(&LinkKey {
                kind: LinkKind::Deal,
                source_portal: &call.portal,
                source_id: call.deal_id,
                target_portal: to,
            })
            .await?
            .and_then(|l| l.target_id),
        None => None,
    };
    Ok(answer_values(&job, route.is_some(), target, &call.route))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(state: JobState, message: &str) -> Job {
        Job {
            id: 1,
            portal: "partner".into(),
            deal_id: 7,
            trigger: "app-rule".into(),
            state,
            attempts: 1,
            interruptions: 0,
            coalesced: 0,
            created_at_ms: 0,
            updated_at_ms: 0,
            message: Some(message.into()),
            target_deal_id: None,
        }
    }

    #[test]
    fn answers_follow_the_job_and_the_chosen_route() {
        let done = answer_values(
            &job(JobState::Done, "p2e: created deal 5"),
            true,
            Some(5),
            "p2e",
        );
        assert_eq!((done.status, done.target_deal_id), ("done", Some(5)));
        assert!(done.log_message("p2e").contains("target deal 5"));
        // Done, but this route did not take the deal (another route did).
        let other = answer_values(&job(JobState::Done, ""), true, None, "p2e");
        assert_eq!(other.status, "skipped");
        assert!(other.message.contains("did not take"));
        let failed = answer_values(&job(JobState::Failed, "no such option"), true, None, "p2e");
        assert_eq!(
            (failed.status, failed.message.as_str()),
            ("failed", "no such option")
        );
        let unknown = answer_values(&job(JobState::Done, "x"), false, None, "gone");
        assert_eq!(unknown.status, "failed");
        assert!(unknown.message.contains("`gone`"));
    }
}
