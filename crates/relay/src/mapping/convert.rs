//! How one source field becomes one target field: decided once from both
//! fields' types ([`FieldPlan::new`], which `check` runs too), then applied
//! to each value ([`FieldPlan::convert`]).
//!
//! Rules (documented in the relay README, "Field types"):
//! - empty values: a cleared single field becomes `null`, a cleared
//!   multiple one `[]`; a create leaves both out;
//! - single → multiple: a list of the one value;
//! - multiple → single: the one value; several values are joined with
//!   ", " for a string target and refused for any other;
//! - list → list by option text (default) or by the route's value table;
//!   list → string: the option text; string → list: by option text;
//! - employee → employee: the target user with the same e-mail (else the
//!   route's `responsible.fallback`); employee → string: the user's name;
//! - CRM binding → CRM binding: `C_`/`CO_`/`D_` through the link table of
//!   records the relay transferred; leads and unknown records are refused;
//! - money ↔ number: the amount, and the deal's currency added;
//! - everything to a string or url field: its text.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Value, json};

use super::catalog::{FieldInfo, FieldType};
use super::labels;
use super::problem::{CrmKind, MappingError, Problem};
use super::scalar;
use crate::config::ValueRule;

/// A source user as the target needs to know them.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SourceUser {
    pub name: String,
    pub email: Option<String>,
}

/// What the mapping looked up before it ran: users and linked records.
#[derive(Debug, Clone, Default)]
pub struct Resolved {
    /// Source user id → name and e-mail.
    pub source_users: BTreeMap<i64, SourceUser>,
    /// Lower-case e-mail → target user id (`None`: no such user).
    pub target_users: BTreeMap<String, Option<i64>>,
    /// Used when a user has no counterpart on the target.
    pub user_fallback: Option<i64>,
    /// A source record → its target id (or a `$result` reference to the
    /// record created in the same batch).
    pub records: BTreeMap<(CrmKind, i64), Value>,
}

/// What the mapping of a deal needs looked up first.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Needs {
    pub users: BTreeSet<i64>,
    pub records: BTreeSet<(CrmKind, i64)>,
}

#[derive(Debug, Clone, PartialEq)]
enum Conversion {
    /// Same kind on both sides.
    Copy,
    List(ValueRule),
    ListToText,
    TextToList,
    MoneyToNumber {
        integer: bool,
    },
    NumberToMoney,
    ToNumber {
        integer: bool,
    },
    ToBoolean,
    ToText,
    DatePart,
    Employee,
    EmployeeToText,
    CrmLink,
}

/// How one mapped field converts, decided from both portals' fields.
#[derive(Debug, Clone)]
pub struct FieldPlan<'a> {
    pub source_field: &'a str,
    pub target_field: &'a str,
    source: Option<&'a FieldInfo>,
    target: Option<&'a FieldInfo>,
    conversion: Conversion,
}

fn is_empty(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::String(text) => text.trim().is_empty(),
        Value::Array(items) => items.iter().all(is_empty),
        Value::Bool(_) | Value::Number(_) | Value::Object(_) => false,
    }
}

/// A value as the list of its non-empty values.
fn values_of(raw: &Value) -> Vec<&Value> {
    match raw {
        Value::Array(items) => items.iter().filter(|v| !is_empty(v)).collect(),
        other if is_empty(other) => Vec::new(),
        other => vec![other],
    }
}

impl<'a> FieldPlan<'a> {
    /// Decides the conversion; `Err` when the two fields cannot map (the
    /// same verdict for `check` and for every transfer). Without a
    /// catalogue side the value is copied as it is.
    pub fn new(
        source_field: &'a str,
        target_field: &'a str,
        source: Option<&'a FieldInfo>,
        target: Option<&'a FieldInfo>,
        rule: Option<&ValueRule>,
    ) -> Result<Self, Problem> {
        use FieldType as T;
        let conversion = match (source, target) {
            (Some(source), Some(target)) => {
                if target.read_only {
                    return Err(Problem::ReadOnly);
                }
                if rule.is_some() && target.kind != T::Enumeration {
                    return Err(Problem::RuleOnNonList {
                        kind: target.kind.name().to_owned(),
                    });
                }
                let incompatible = |fix: &str| Problem::Incompatible {
                    from: source.kind.name().to_owned(),
                    to: target.kind.name().to_owned(),
                    fix: fix.to_owned(),
                };
                match (&source.kind, &target.kind) {
                    (T::File, T::File) => return Err(Problem::FileNotListed),
                    (_, T::File) | (T::File, _) => {
                        return Err(incompatible("files go to file fields only"));
                    }
                    (T::Enumeration, T::Enumeration) => {
                        Conversion::List(rule.cloned().unwrap_or(ValueRule::Label))
                    }
                    (T::String | T::Url, T::Enumeration) => match rule {
                        None | Some(ValueRule::Label) => Conversion::TextToList,
                        Some(ValueRule::Table(_)) => {
                            Conversion::List(rule.cloned().unwrap_or(ValueRule::Label))
                        }
                    },
                    (_, T::Enumeration) => {
                        return Err(incompatible("map a list or a string field to a list"));
                    }
                    (T::Enumeration, T::String | T::Url) => Conversion::ListToText,
                    (T::Employee, T::Employee) => Conversion::Employee,
                    (T::Employee, T::String) => Conversion::EmployeeToText,
                    (T::Employee, _) | (_, T::Employee) => {
                        return Err(incompatible(
                            "employees travel to employee fields (matched by e-mail) or to string fields (as names)",
                        ));
                    }
                    (T::CrmLink, T::CrmLink) => Conversion::CrmLink,
                    (T::CrmLink, _) | (_, T::CrmLink) => {
                        return Err(incompatible(
                            "CRM bindings travel only to CRM binding fields (through the records the relay transferred)",
                        ));
                    }
                    (T::Money, T::Money) => Conversion::Copy,
                    (T::Money, T::Integer | T::Double) => Conversion::MoneyToNumber {
                        integer: target.kind == T::Integer,
                    },
                    (T::Integer | T::Double, T::Money) => Conversion::NumberToMoney,
                    (T::Integer | T::Double | T::String, T::Integer | T::Double) => {
                        Conversion::ToNumber {
                            integer: target.kind == T::Integer,
                        }
                    }
                    (T::Boolean | T::Integer | T::String, T::Boolean) => Conversion::ToBoolean,
                    (T::DateTime, T::Date) => Conversion::DatePart,
                    (T::Date | T::DateTime | T::String, T::Date | T::DateTime) => Conversion::Copy,
                    (T::Enumeration, _) => {
                        return Err(incompatible(
                            "a list's option ids mean nothing on the target: map it to a list or a string field",
                        ));
                    }
                    (_, T::String | T::Url) => Conversion::ToText,
                    (T::Status, T::Status) | (T::String, T::Status) => Conversion::Copy,
                    (T::Other(a), T::Other(b)) if a == b => Conversion::Copy,
                    (T::String, T::Other(_)) => Conversion::Copy,
                    (a, b) if a == b => Conversion::Copy,
                    _ => return Err(incompatible("map fields of the same type")),
                }
            }
            _ => Conversion::Copy,
        };
        Ok(Self {
            source_field,
            target_field,
            source,
            target,
            conversion,
        })
    }

    /// The target field's title (for messages to people).
    pub fn target_title(&self) -> String {
        self.target
            .map(|info| info.shown(self.target_field).to_owned())
            .unwrap_or_else(|| self.target_field.to_owned())
    }

    pub fn error(&self, problem: Problem) -> MappingError {
        MappingError {
            field: self.source_field.to_owned(),
            target_field: self.target_field.to_owned(),
            target_title: self.target_title(),
            problem: Box::new(problem),
        }
    }

    fn target_multiple(&self) -> bool {
        self.target.is_some_and(|t| t.multiple)
    }

    /// What [`FieldPlan::convert`] will need looked up for `raw`.
    pub fn needs(&self, raw: &Value, needs: &mut Needs) {
        for value in values_of(raw) {
            match self.conversion {
                Conversion::Employee | Conversion::EmployeeToText => {
                    if let Some(id) = crate::portals::id_of(Some(value)) {
                        needs.users.insert(id);
                    }
                }
                Conversion::CrmLink => {
                    if let Some(binding) = self.binding(value) {
                        needs.records.insert(binding);
                    }
                }
                _ => {}
            }
        }
    }

    /// `C_5` → (Contact, 5); a bare id when the source field binds one type.
    fn binding(&self, value: &Value) -> Option<(CrmKind, i64)> {
        let text = scalar(value);
        CrmKind::parse_binding(&text).or_else(|| {
            let id = text.trim().parse::<i64>().ok().filter(|id| *id > 0)?;
            let kinds = &self.source?.crm_types;
            let [only] = kinds.as_slice() else {
                return None;
            };
            let kind = [
                CrmKind::Contact,
                CrmKind::Company,
                CrmKind::Deal,
                CrmKind::Lead,
            ]
            .into_iter()
            .find(|k| k.setting() == only)?;
            Some((kind, id))
        })
    }

    /// The target value for the source value `raw`. `currency` is the
    /// deal's (for number → money).
    pub fn convert(
        &self,
        raw: &Value,
        currency: &str,
        resolved: &Resolved,
    ) -> Result<Value, MappingError> {
        let mut out = Vec::new();
        for value in values_of(raw) {
            out.push(
                self.convert_one(value, currency, resolved)
                    .map_err(|problem| self.error(problem))?,
            );
        }
        if self.target.is_none() {
            // No catalogue: keep the value's shape.
            return Ok(match raw {
                Value::Array(_) => Value::Array(out),
                _ => out.into_iter().next().unwrap_or(Value::Null),
            });
        }
        if self.target_multiple() {
            return Ok(Value::Array(out));
        }
        Ok(match out.len() {
            0 => Value::Null,
            1 => out.remove(0),
            _ if self.target.is_some_and(|t| t.kind.is_text()) => {
                Value::String(out.iter().map(scalar).collect::<Vec<_>>().join(", "))
            }
            count => return Err(self.error(Problem::TooManyValues { count })),
        })
    }

    fn source_label(&self, id: &str) -> Option<String> {
        self.source
            .and_then(|info| info.option_text(id))
            .map(str::to_owned)
    }

    fn convert_one(
        &self,
        value: &Value,
        currency: &str,
        resolved: &Resolved,
    ) -> Result<Value, Problem> {
        let text = scalar(value);
        let not_convertible = || Problem::NotConvertible {
            value: text.clone(),
            to: self
                .target
                .map(|t| t.kind.name().to_owned())
                .unwrap_or_default(),
        };
        Ok(match &self.conversion {
            Conversion::Copy => value.clone(),
            Conversion::List(rule) => {
                let label = self.source_label(&text);
                let target_id = match rule {
                    ValueRule::Table(table) => {
                        table
                            .get(&text)
                            .cloned()
                            .ok_or_else(|| Problem::NoTableEntry {
                                value: text.clone(),
                                label: label.clone(),
                            })?
                    }
                    ValueRule::Label => {
                        let label = label.clone().ok_or_else(|| Problem::UnknownSourceOption {
                            value: text.clone(),
                        })?;
                        self.target_option(&label)
                            .ok_or(Problem::NoMatchingOption {
                                value: text.clone(),
                                label,
                            })?
                    }
                };
                if let Some(target) = self.target {
                    if target.option_text(&target_id).is_none() {
                        return Err(Problem::NotATargetOption {
                            value: text,
                            target: target_id,
                        });
                    }
                }
                option_id(&target_id)
            }
            Conversion::ListToText => {
                json!(
                    self.source_label(&text)
                        .ok_or(Problem::UnknownSourceOption { value: text })?
                )
            }
            Conversion::TextToList => {
                let id = self
                    .target_option(&text)
                    .ok_or_else(|| Problem::NoMatchingOption {
                        value: text.clone(),
                        label: text.clone(),
                    })?;
                option_id(&id)
            }
            Conversion::MoneyToNumber { integer } => {
                let amount = text.split('|').next().unwrap_or("").trim();
                number(amount, *integer).ok_or_else(not_convertible)?
            }
            Conversion::NumberToMoney => {
                let amount = number(&text, false).ok_or_else(not_convertible)?;
                json!(format!("{}|{currency}", scalar(&amount)))
            }
            Conversion::ToNumber { integer } => {
                number(&text, *integer).ok_or_else(not_convertible)?
            }
            Conversion::ToBoolean => match text.trim().to_ascii_lowercase().as_str() {
                "y" | "1" | "true" | "yes" => json!("Y"),
                "n" | "0" | "false" | "no" | "" => json!("N"),
                _ => return Err(not_convertible()),
            },
            Conversion::ToText => match value {
                Value::Bool(flag) => json!(if *flag { "Y" } else { "N" }),
                _ => json!(text),
            },
            Conversion::DatePart => json!(text.get(..10).unwrap_or(&text)),
            Conversion::Employee => {
                let id = crate::portals::id_of(Some(value)).ok_or_else(not_convertible)?;
                json!(resolve_user(id, resolved)?)
            }
            Conversion::EmployeeToText => {
                let id = crate::portals::id_of(Some(value)).ok_or_else(not_convertible)?;
                let user = resolved.source_users.get(&id);
                let name = user
                    .map(|u| u.name.clone())
                    .filter(|n| !n.is_empty())
                    .or_else(|| user.and_then(|u| u.email.clone()))
                    .unwrap_or_else(|| format!("user {id}"));
                json!(name)
            }
            Conversion::CrmLink => {
                let (kind, id) = self.binding(value).ok_or_else(not_convertible)?;
                if kind == CrmKind::Lead {
                    return Err(Problem::LeadLink { value: text });
                }
                if let Some(target) = self.target {
                    if !target.crm_types.is_empty()
                        && !target.crm_types.iter().any(|t| t == kind.setting())
                    {
                        return Err(Problem::LinkTypeRefused { value: text, kind });
                    }
                }
                let target_id = resolved
                    .records
                    .get(&(kind, id))
                    .ok_or(Problem::NotTransferred { kind, id })?;
                json!(format!("{}_{}", kind.prefix(), scalar(target_id)))
            }
        })
    }

    fn target_option(&self, label: &str) -> Option<String> {
        let target = self.target?;
        labels::find_option(&target.options, label).map(str::to_owned)
    }

    /// Every option of the source list field, tried as a transfer would:
    /// the problems of those that would fail (for `check`).
    pub fn option_problems(&self) -> Vec<MappingError> {
        let Some(source) = self.source else {
            return Vec::new();
        };
        if !matches!(
            self.conversion,
            Conversion::List(_) | Conversion::ListToText
        ) {
            return Vec::new();
        }
        source
            .options
            .iter()
            .filter_map(|(id, _)| {
                self.convert_one(&json!(id), "", &Resolved::default())
                    .err()
                    .map(|problem| self.error(problem))
            })
            .collect()
    }

    /// Warnings for `check` about values that may fail later: several
    /// values into a single non-text field, bindings to leads.
    pub fn shape_problems(&self) -> Vec<MappingError> {
        let (Some(source), Some(target)) = (self.source, self.target) else {
            return Vec::new();
        };
        let mut problems = Vec::new();
        if source.multiple && !target.multiple && !target.kind.is_text() {
            problems.push(self.error(Problem::TooManyValues { count: 2 }));
        }
        if self.conversion == Conversion::CrmLink {
            for kind in [
                CrmKind::Contact,
                CrmKind::Company,
                CrmKind::Deal,
                CrmKind::Lead,
            ] {
                let source_takes = source.crm_types.iter().any(|t| t == kind.setting());
                let target_takes = target.crm_types.iter().any(|t| t == kind.setting());
                if source_takes && kind == CrmKind::Lead {
                    problems.push(self.error(Problem::LeadLink {
                        value: "L_…".into(),
                    }));
                } else if source_takes && !target_takes {
                    problems.push(self.error(Problem::LinkTypeRefused {
                        value: format!("{}_…", kind.prefix()),
                        kind,
                    }));
                }
            }
        }
        problems
    }

    pub fn is_employee(&self) -> bool {
        matches!(
            self.conversion,
            Conversion::Employee | Conversion::EmployeeToText
        )
    }
}

/// The target user for a source user: same e-mail, else the fallback.
fn resolve_user(source_id: i64, resolved: &Resolved) -> Result<i64, Problem> {
    let email = resolved
        .source_users
        .get(&source_id)
        .and_then(|u| u.email.clone());
    let Some(email) = email else {
        return resolved
            .user_fallback
            .ok_or(Problem::UserWithoutEmail { id: source_id });
    };
    match resolved.target_users.get(&email.trim().to_lowercase()) {
        Some(Some(id)) => Ok(*id),
        _ => resolved.user_fallback.ok_or(Problem::NoSuchUser { email }),
    }
}

fn option_id(id: &str) -> Value {
    match id.parse::<i64>() {
        Ok(number) => json!(number),
        Err(_) => json!(id),
    }
}

/// `"1 234,50"` and `"1234.5"` both read; an integer target drops nothing
/// silently (12.5 is not an integer).
fn number(text: &str, integer: bool) -> Option<Value> {
    let cleaned: String = text
        .trim()
        .chars()
        .filter(|c| !c.is_whitespace())
        .map(|c| if c == ',' { '.' } else { c })
        .collect();
    let parsed = cleaned.parse::<f64>().ok().filter(|n| n.is_finite())?;
    if integer {
        (parsed.fract() == 0.0).then(|| json!(parsed as i64))
    } else if parsed.fract() == 0.0 && parsed.abs() < 9.0e15 {
        Some(json!(parsed as i64))
    } else {
        Some(json!(parsed))
    }
}
