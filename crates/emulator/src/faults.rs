//! Fault injection for tests: added latency, errors per method (by rate or
//! for the next N calls), "execute the write but drop the response", and a
//! switch that takes the whole portal down.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use http::StatusCode;
use serde::{Deserialize, Serialize};

use crate::error::ApiError;

/// The error an injected failure answers with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InjectedError {
    pub status: u16,
    pub code: String,
    #[serde(default)]
    pub description: String,
}

impl Default for InjectedError {
    fn default() -> Self {
        Self {
            status: 500,
            code: "INTERNAL_SERVER_ERROR".into(),
            description: "Internal server error".into(),
        }
    }
}

impl InjectedError {
    fn to_api(&self) -> ApiError {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        ApiError::new(status, &self.code, self.description.clone())
    }
}

/// Faults of one method; the key `*` applies to every method.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct MethodFaults {
    pub latency_ms: u64,
    /// Probability (0..=1) that a call fails with `error` without running.
    pub error_rate: f64,
    /// The next N calls fail with `error` without running.
    pub fail_next: u32,
    pub error: InjectedError,
    /// Probability that a call runs but its response is never sent.
    pub drop_response_rate: f64,
    /// The next N calls run but their responses are never sent.
    pub drop_next: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct FaultSettings {
    /// Every connection is closed at once, as if the portal were unreachable.
    pub down: bool,
    pub methods: BTreeMap<String, MethodFaults>,
}

/// What to do to one call.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FaultPlan {
    pub latency: Duration,
    pub fail: Option<ApiError>,
    pub drop_response: bool,
}

#[derive(Debug, Default)]
pub struct Faults {
    settings: Mutex<FaultSettings>,
}

impl Faults {
    pub fn settings(&self) -> FaultSettings {
        self.settings
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn set(&self, settings: FaultSettings) {
        *self.settings.lock().unwrap_or_else(|e| e.into_inner()) = settings;
    }

    pub fn set_method(&self, method: &str, faults: MethodFaults) {
        let mut settings = self.settings.lock().unwrap_or_else(|e| e.into_inner());
        settings.methods.insert(method.to_ascii_lowercase(), faults);
    }

    pub fn set_down(&self, down: bool) {
        self.settings.lock().unwrap_or_else(|e| e.into_inner()).down = down;
    }

    pub fn is_down(&self) -> bool {
        self.settings.lock().unwrap_or_else(|e| e.into_inner()).down
    }

    pub fn clear(&self) {
        self.set(FaultSettings::default());
    }

    /// Decides the faults of one call; consumes `fail_next` / `drop_next`.
    pub fn plan(&self, method: &str) -> FaultPlan {
        let mut settings = self.settings.lock().unwrap_or_else(|e| e.into_inner());
        let mut plan = FaultPlan::default();
        let method = method.to_ascii_lowercase();
        for key in ["*", method.as_str()] {
            let Some(faults) = settings.methods.get_mut(key) else {
                continue;
            };
            plan.latency += Duration::from_millis(faults.latency_ms);
            if plan.fail.is_none() {
                if faults.fail_next > 0 {
                    faults.fail_next -= 1;
                    plan.fail = Some(faults.error.to_api());
                } else if faults.error_rate > 0.0 && rand::random::<f64>() < faults.error_rate {
                    plan.fail = Some(faults.error.to_api());
                }
            }
            if faults.drop_next > 0 {
                faults.drop_next -= 1;
                plan.drop_response = true;
            } else if faults.drop_response_rate > 0.0
                && rand::random::<f64>() < faults.drop_response_rate
            {
                plan.drop_response = true;
            }
        }
        plan
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fail_next_counts_down_and_applies_only_to_its_method() {
        let faults = Faults::default();
        faults.set_method(
            "crm.item.add",
            MethodFaults {
                fail_next: 2,
                error: InjectedError {
                    status: 503,
                    code: "QUERY_LIMIT_EXCEEDED".into(),
                    description: "Too many requests".into(),
                },
                ..MethodFaults::default()
            },
        );
        assert!(faults.plan("crm.item.get").fail.is_none());
        assert_eq!(
            faults.plan("CRM.ITEM.ADD").fail.unwrap().code,
            "QUERY_LIMIT_EXCEEDED"
        );
        assert!(faults.plan("crm.item.add").fail.is_some());
        assert!(faults.plan("crm.item.add").fail.is_none());
    }

    #[test]
    fn wildcard_latency_adds_to_method_latency_and_rates_are_certain_at_one() {
        let faults = Faults::default();
        faults.set_method(
            "*",
            MethodFaults {
                latency_ms: 5,
                ..MethodFaults::default()
            },
        );
        faults.set_method(
            "crm.item.add",
            MethodFaults {
                latency_ms: 7,
                drop_response_rate: 1.0,
                error_rate: 0.0,
                ..MethodFaults::default()
            },
        );
        let plan = faults.plan("crm.item.add");
        assert_eq!(plan.latency, Duration::from_millis(12));
        assert!(plan.drop_response);
        assert!(plan.fail.is_none());
        faults.clear();
        assert_eq!(faults.plan("crm.item.add"), FaultPlan::default());
    }
}
