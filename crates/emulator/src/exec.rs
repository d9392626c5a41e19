//! Running one method the way the portal does: scope, operating-time budget,
//! injected faults, then the handler, and the `time` block every answer carries.

use serde_json::{Value, json};

use crate::clock;
use crate::error::ApiError;
use crate::faults::FaultPlan;
use crate::limits::OperatingState;
use crate::methods::{self, Call, MethodResult, scope_of};
use crate::params::Params;
use crate::shared::{Shared, Webhook};

/// The `time` block: `start, finish, duration, processing, date_start,
/// date_finish` and, where the budget applies, `operating_reset_at, operating`.
pub fn time_block(
    start: f64,
    finish: f64,
    processing: f64,
    operating: Option<OperatingState>,
) -> Value {
    let mut time = json!({
        "start": start,
        "finish": finish,
        "duration": finish - start,
        "processing": processing,
        "date_start": clock::iso8601(start),
        "date_finish": clock::iso8601(finish),
    });
    if let Some(state) = operating {
        if let Some(reset_at) = state.reset_at {
            time["operating_reset_at"] = json!(reset_at.floor() as i64);
        }
        time["operating"] = json!(state.operating);
    }
    time
}

/// Normalises `CRM.Item.Get.json` to `crm.item.get`.
pub fn method_name(raw: &str) -> String {
    let trimmed = raw.trim_end_matches('/');
    let trimmed = trimmed.strip_suffix(".json").unwrap_or(trimmed);
    trimmed.to_ascii_lowercase()
}

/// Checks that do not depend on the handler: the method exists, the webhook
/// has its scope, and its operating budget is not spent.
pub fn precheck(shared: &Shared, webhook: &Webhook, method: &str) -> Result<(), ApiError> {
    let scope = scope_of(method).ok_or_else(ApiError::method_not_found)?;
    if !webhook.has_scope(scope) {
        return Err(if webhook.application {
            ApiError::insufficient_scope_token()
        } else {
            ApiError::insufficient_scope()
        });
    }
    if method != "batch"
        && shared
            .limits
            .operating_blocked(webhook.user_id, method, clock::now_unix())
    {
        return Err(ApiError::operation_time_limit());
    }
    Ok(())
}

/// Runs a non-batch method and returns its outcome and `time` block.
pub async fn run_single(
    shared: &Shared,
    webhook: &Webhook,
    method: &str,
    params: Params,
    plan: &FaultPlan,
) -> (MethodResult, Value) {
    let start = clock::now_unix();
    if let Err(err) = precheck(shared, webhook, method) {
        let now = clock::now_unix();
        return (Err(err), time_block(start, now, 0.0, None));
    }
    if !plan.latency.is_zero() {
        tokio::time::sleep(plan.latency).await;
    }
    let result = match &plan.fail {
        Some(err) => Err(err.clone()),
        // A bug in a handler must look like PHP's fatal error (500), not a
        // dropped connection that a client would read as "maybe executed".
        None => std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            methods::dispatch(
                method,
                &Call {
                    shared,
                    webhook,
                    params,
                },
            )
        }))
        .unwrap_or_else(|_| Err(ApiError::internal())),
    };
    let finish = clock::now_unix();
    let processing = finish - start;
    let operating = shared
        .limits
        .record_operating(webhook.user_id, method, start, processing);
    (
        result,
        time_block(start, finish, processing, Some(operating)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn method_names_lose_suffix_and_case() {
        assert_eq!(method_name("CRM.Item.Get.json"), "crm.item.get");
        assert_eq!(
            method_name("crm.controller.item.getFile/"),
            "crm.controller.item.getfile"
        );
    }

    #[test]
    fn time_block_reports_operating_when_known() {
        let time = time_block(
            10.0,
            10.5,
            0.25,
            Some(OperatingState {
                operating: 3.5,
                reset_at: Some(610.7),
            }),
        );
        assert_eq!(time["duration"], json!(0.5));
        assert_eq!(time["operating_reset_at"], json!(610));
        assert_eq!(time["operating"], json!(3.5));
        assert_eq!(time["date_start"], json!("1970-01-01T00:00:10+00:00"));
        assert!(time_block(1.0, 2.0, 0.0, None).get("operating").is_none());
    }
}
