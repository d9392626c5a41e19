//! Install-time check: are the credentials good, the scopes granted and the
//! methods there? (BITRIX24.md §3: `scope`, `method.get`, falling back to the
//! deprecated `methods` on boxes that lack `method.get`.)

use std::collections::HashSet;
use std::fmt;

use serde_json::{Value, json};

use crate::{ApiErrorKind, Batch, Client, CommandOutcome, Error};

/// What the portal says about the methods an integration needs.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckReport {
    pub portal: String,
    /// Scopes the webhook or application has.
    pub granted_scopes: Vec<String>,
    pub methods: Vec<MethodCheck>,
    /// True when the box has no `method.get` and `methods` was used.
    pub used_legacy_methods: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct MethodCheck {
    pub method: String,
    pub status: MethodStatus,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MethodStatus {
    Available,
    /// The method exists but these credentials may not call it, usually for
    /// a missing scope (`scope` is the likely one, from the method's name).
    NotAvailable {
        scope: String,
        scope_granted: bool,
    },
    /// The method does not exist: its module is not installed or the box
    /// is not updated.
    Missing,
}

impl CheckReport {
    pub fn is_ok(&self) -> bool {
        self.methods
            .iter()
            .all(|check| check.status == MethodStatus::Available)
    }

    /// One line per method that cannot be used, saying why.
    pub fn problems(&self) -> Vec<String> {
        self.methods
            .iter()
            .filter_map(|check| match &check.status {
                MethodStatus::Available => None,
                MethodStatus::NotAvailable {
                    scope,
                    scope_granted: false,
                } => Some(format!(
                    "{}: not allowed; grant the `{scope}` scope to the webhook or application",
                    check.method
                )),
                MethodStatus::NotAvailable { scope, .. } => Some(format!(
                    "{}: not allowed although the `{scope}` scope is granted; check the user's permissions",
                    check.method
                )),
                MethodStatus::Missing => Some(format!(
                    "{}: does not exist on this portal; install its module or update the box",
                    check.method
                )),
            })
            .collect()
    }
}

impl fmt::Display for CheckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{}: granted scopes: {}",
            self.portal,
            if self.granted_scopes.is_empty() {
                "(none)".to_owned()
            } else {
                self.granted_scopes.join(", ")
            }
        )?;
        let problems = self.problems();
        if problems.is_empty() {
            writeln!(f, "  all {} methods are available", self.methods.len())
        } else {
            problems
                .iter()
                .try_for_each(|problem| writeln!(f, "  {problem}"))
        }
    }
}

/// The scope a method most likely needs, from its first name segment.
pub fn likely_scope(method: &str) -> String {
    let first = method.split('.').next().unwrap_or_default();
    match first {
        "tasks" => "task",
        "voximplant" => "telephony",
        "department" => "department",
        other => other,
    }
    .to_owned()
}

impl Client {
    /// Checks credentials, scopes and that each method exists and may be
    /// called. Fails only when the portal cannot be asked at all (bad
    /// credentials, unreachable); everything else is in the report.
    pub async fn check(&self, methods: &[&str]) -> Result<CheckReport, Error> {
        let granted_scopes = self.granted_scopes().await?;
        let (answers, used_legacy_methods) = match self.ask_method_get(methods).await? {
            Some(answers) => (answers, false),
            None => (self.ask_legacy_methods(methods).await?, true),
        };
        let granted: HashSet<&str> = granted_scopes.iter().map(String::as_str).collect();
        let methods = methods
            .iter()
            .zip(answers)
            .map(|(method, (exists, available))| {
                let status = if !exists {
                    MethodStatus::Missing
                } else if available {
                    MethodStatus::Available
                } else {
                    let scope = likely_scope(method);
                    MethodStatus::NotAvailable {
                        scope_granted: granted.contains(scope.as_str()),
                        scope,
                    }
                };
                MethodCheck {
                    method: (*method).to_owned(),
                    status,
                }
            })
            .collect();
        Ok(CheckReport {
            portal: self.portal().to_owned(),
            granted_scopes,
            methods,
            used_legacy_methods,
        })
    }

    async fn granted_scopes(&self) -> Result<Vec<String>, Error> {
        let response = self.call("scope", &Value::Null).await?;
        string_list(&response.result)
            .ok_or_else(|| self.unexpected("scope", "the result is not a list of names"))
    }

    /// (exists, available) per method from `method.get`, batched; `None`
    /// when the portal does not know `method.get`.
    async fn ask_method_get(&self, methods: &[&str]) -> Result<Option<Vec<(bool, bool)>>, Error> {
        let mut batch = Batch::new();
        for (index, method) in methods.iter().enumerate() {
            batch.push(format!("m{index}"), "method.get", json!({ "name": method }))?;
        }
        let outcome = self.batch(&batch).await;
        if let Some(error) = outcome.stopped_by {
            return Err(error);
        }
        let mut answers = Vec::with_capacity(methods.len());
        for (_, command_outcome) in outcome.commands {
            match command_outcome {
                CommandOutcome::Done(done) => answers.push((
                    flag(&done.result, "isExisting"),
                    flag(&done.result, "isAvailable"),
                )),
                CommandOutcome::Failed(error) if error.kind == ApiErrorKind::MethodNotFound => {
                    return Ok(None);
                }
                CommandOutcome::Failed(error) => return Err(error.into()),
                CommandOutcome::NotRun | CommandOutcome::Unknown => {
                    return Err(self.unexpected("batch", "a method.get command did not run"));
                }
            }
        }
        Ok(Some(answers))
    }

    /// Old boxes: `methods` with `full=true` lists every method, without it
    /// the ones these credentials may call.
    async fn ask_legacy_methods(&self, methods: &[&str]) -> Result<Vec<(bool, bool)>, Error> {
        let all = self.call("methods", &json!({"full": true})).await?;
        let allowed = self.call("methods", &Value::Null).await?;
        let names = |value: &Value| -> Result<HashSet<String>, Error> {
            string_list(value)
                .map(|list| {
                    list.into_iter()
                        .map(|name| name.to_ascii_lowercase())
                        .collect()
                })
                .ok_or_else(|| self.unexpected("methods", "the result is not a list of names"))
        };
        let (all, allowed) = (names(&all.result)?, names(&allowed.result)?);
        Ok(methods
            .iter()
            .map(|method| {
                let method = method.to_ascii_lowercase();
                (all.contains(&method), allowed.contains(&method))
            })
            .collect())
    }

    fn unexpected(&self, method: &str, reason: &str) -> Error {
        Error::InvalidResponse {
            portal: self.portal().to_owned(),
            method: method.to_owned(),
            reason: reason.to_owned(),
        }
    }
}

fn string_list(value: &Value) -> Option<Vec<String>> {
    value
        .as_array()?
        .iter()
        .map(|item| item.as_str().map(str::to_owned))
        .collect()
}

/// Bitrix24 answers booleans as `true`, `"Y"` or `1`.
fn flag(result: &Value, field: &str) -> bool {
    match result.get(field) {
        Some(Value::Bool(value)) => *value,
        Some(Value::String(text)) => matches!(text.as_str(), "Y" | "y" | "1" | "true"),
        Some(Value::Number(number)) => number.as_i64() == Some(1),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_explains_each_problem() {
        let report = CheckReport {
            portal: "portal.test".into(),
            granted_scopes: vec!["crm".into()],
            methods: vec![
                MethodCheck {
                    method: "crm.item.add".into(),
                    status: MethodStatus::Available,
                },
                MethodCheck {
                    method: "bizproc.robot.add".into(),
                    status: MethodStatus::NotAvailable {
                        scope: "bizproc".into(),
                        scope_granted: false,
                    },
                },
                MethodCheck {
                    method: "crm.item.productrow.set".into(),
                    status: MethodStatus::Missing,
                },
            ],
            used_legacy_methods: false,
        };
        assert!(!report.is_ok());
        let text = report.to_string();
        assert!(text.contains("granted scopes: crm"), "{text}");
        assert!(
            text.contains("bizproc.robot.add: not allowed; grant the `bizproc` scope"),
            "{text}"
        );
        assert!(
            text.contains("crm.item.productrow.set: does not exist"),
            "{text}"
        );
        assert!(!text.contains("crm.item.add"), "{text}");
    }

    #[test]
    fn flags_and_scopes() {
        assert!(flag(&json!({"isExisting": true}), "isExisting"));
        assert!(flag(&json!({"isExisting": "Y"}), "isExisting"));
        assert!(!flag(&json!({"isExisting": false}), "isExisting"));
        assert!(!flag(&json!({}), "isExisting"));
        assert_eq!(likely_scope("crm.item.add"), "crm");
        assert_eq!(likely_scope("tasks.task.add"), "task");
    }
}
