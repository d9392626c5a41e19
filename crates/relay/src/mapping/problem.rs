//! What can stop one field from being mapped: for the log and `jobs show`
//! in technical words with the fix, and for the people on the source deal
//! in words they can act on, in their portal's language.

use crate::messages::Language;

/// One field that cannot be mapped, and why.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("field {field} → {target_field}: {problem}")]
pub struct MappingError {
    /// Source field (camelCase).
    pub field: String,
    /// Target field (camelCase).
    pub target_field: String,
    /// The target field's title, for people.
    pub target_title: String,
    /// Boxed: errors travel in `Result`s and the problem is the big part.
    pub problem: Box<Problem>,
}

impl MappingError {
    /// What a sales manager reads on the source deal.
    pub fn for_people(&self, language: Language) -> String {
        let field = &self.target_title;
        match language {
            Language::Ru => match &*self.problem {
                Problem::NoMatchingOption { label, .. }
                | Problem::NoTableEntry {
                    label: Some(label), ..
                } => format!(
                    "обратитесь к администратору: в поле «{field}» на целевом портале нет варианта «{label}»"
                ),
                Problem::NoSuchUser { email } => format!(
                    "обратитесь к администратору: на целевом портале нет сотрудника с e-mail {email} (поле «{field}»)"
                ),
                Problem::TooManyValues { count } => format!(
                    "в поле «{field}» на целевом портале помещается одно значение, а в сделке их {count}: оставьте одно или попросите администратора сделать поле множественным"
                ),
                Problem::NotTransferred { id, kind } => format!(
                    "поле «{field}» ссылается на {} №{id}, который(ая) ещё не передан(а) на целевой портал: обратитесь к администратору",
                    kind.ru()
                ),
                Problem::LeadLink { .. } => format!(
                    "поле «{field}» ссылается на лид, а лиды не передаются: уберите лид из поля или попросите администратора изменить настройку"
                ),
                Problem::NotConvertible { value, .. } => format!(
                    "значение «{value}» не подходит для поля «{field}» на целевом портале: исправьте значение в сделке или обратитесь к администратору"
                ),
                _ => format!(
                    "обратитесь к администратору: поле «{field}» настроено для передачи неверно"
                ),
            },
            Language::En => match &*self.problem {
                Problem::NoMatchingOption { label, .. }
                | Problem::NoTableEntry {
                    label: Some(label), ..
                } => format!(
                    "ask your administrator: option «{label}» is missing in field «{field}» on the target portal"
                ),
                Problem::NoSuchUser { email } => format!(
                    "ask your administrator: there is no employee with the e-mail {email} on the target portal (field «{field}»)"
                ),
                Problem::TooManyValues { count } => format!(
                    "field «{field}» on the target portal holds one value and the deal has {count}: keep one, or ask your administrator to make the field multiple"
                ),
                Problem::NotTransferred { id, kind } => format!(
                    "field «{field}» points at {} #{id}, which has not been transferred to the target portal: ask your administrator",
                    kind.en()
                ),
                Problem::LeadLink { .. } => format!(
                    "field «{field}» points at a lead, and leads are not transferred: remove the lead from the field or ask your administrator"
                ),
                Problem::NotConvertible { value, .. } => format!(
                    "the value «{value}» does not fit field «{field}» on the target portal: correct it on the deal or ask your administrator"
                ),
                _ => format!(
                    "ask your administrator: field «{field}» is not set up correctly for the transfer"
                ),
            },
        }
    }
}

/// The kind of CRM record a binding points at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CrmKind {
    Contact,
    Company,
    Deal,
    Lead,
}

impl CrmKind {
    /// `C_5` → (Contact, 5); `co_3` too.
    pub fn parse_binding(text: &str) -> Option<(Self, i64)> {
        let (prefix, id) = text.trim().split_once('_')?;
        let kind = match prefix.to_ascii_uppercase().as_str() {
            "C" => Self::Contact,
            "CO" => Self::Company,
            "D" => Self::Deal,
            "L" => Self::Lead,
            _ => return None,
        };
        let id = id.parse::<i64>().ok().filter(|id| *id > 0)?;
        Some((kind, id))
    }

    pub fn prefix(self) -> &'static str {
        match self {
            Self::Contact => "C",
            Self::Company => "CO",
            Self::Deal => "D",
            Self::Lead => "L",
        }
    }

    /// The name a binding field's settings use (`CONTACT`, ...).
    pub fn setting(self) -> &'static str {
        match self {
            Self::Contact => "CONTACT",
            Self::Company => "COMPANY",
            Self::Deal => "DEAL",
            Self::Lead => "LEAD",
        }
    }

    fn en(self) -> &'static str {
        match self {
            Self::Contact => "contact",
            Self::Company => "company",
            Self::Deal => "deal",
            Self::Lead => "lead",
        }
    }

    fn ru(self) -> &'static str {
        match self {
            Self::Contact => "контакт",
            Self::Company => "компанию",
            Self::Deal => "сделку",
            Self::Lead => "лид",
        }
    }
}

/// Why a field or one of its values cannot be mapped. The messages end
/// with what to change.
#[derive(Debug, Clone, PartialEq)]
pub enum Problem {
    /// The field is not on the source portal.
    NoSourceField {
        portal: String,
    },
    /// The field is not on the target portal.
    NoTargetField {
        portal: String,
    },
    ReadOnly,
    /// These types do not map onto each other.
    Incompatible {
        from: String,
        to: String,
        fix: String,
    },
    /// A list option has no option with the same text on the target.
    NoMatchingOption {
        value: String,
        label: String,
    },
    /// A list value is missing from the route's value table.
    NoTableEntry {
        value: String,
        label: Option<String>,
    },
    /// The value table maps to an id the target field does not have.
    NotATargetOption {
        value: String,
        target: String,
    },
    /// The value is not an option of the source field (deleted option).
    UnknownSourceOption {
        value: String,
    },
    /// This value cannot become the target type.
    NotConvertible {
        value: String,
        to: String,
    },
    /// More values than a single-value field takes.
    TooManyValues {
        count: usize,
    },
    /// No active user with this e-mail on the target.
    NoSuchUser {
        email: String,
    },
    /// The source user has no e-mail (or does not exist).
    UserWithoutEmail {
        id: i64,
    },
    /// The record the binding points at was not transferred.
    NotTransferred {
        kind: CrmKind,
        id: i64,
    },
    /// A binding to a lead: leads are not transferred.
    LeadLink {
        value: String,
    },
    /// The target binding field does not accept this record type.
    LinkTypeRefused {
        value: String,
        kind: CrmKind,
    },
    /// A `values` rule on a field that is not a list on the target.
    RuleOnNonList {
        kind: String,
    },
    /// A file field listed in `fields` but not in `files`.
    FileNotListed,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Problem::NoSourceField { portal } => write!(
                f,
                "the source field does not exist on {portal}; check the name with `b24-relay fields`"
            ),
            Problem::NoTargetField { portal } => write!(
                f,
                "the target field does not exist on {portal}; check the name with `b24-relay fields` or create the field"
            ),
            Problem::ReadOnly => write!(f, "the target field is read-only; map another field"),
            Problem::Incompatible { from, to, fix } => {
                write!(f, "a {from} field cannot be written to a {to} field; {fix}")
            }
            Problem::NoMatchingOption { value, label } => write!(
                f,
                "option {value} (\"{label}\") has no option with the same text on the target; add the option there or map it in a table under values"
            ),
            Problem::NoTableEntry { value, label } => match label {
                Some(label) => write!(
                    f,
                    "option {value} (\"{label}\") has no entry in the route's value table; add \"{value}\" = \"<target option id>\""
                ),
                None => write!(
                    f,
                    "value {value} has no entry in the route's value table; add \"{value}\" = \"<target option id>\""
                ),
            },
            Problem::NotATargetOption { value, target } => write!(
                f,
                "the value table maps \"{value}\" to {target}, which is not an option of the target field; fix the table"
            ),
            Problem::UnknownSourceOption { value } => write!(
                f,
                "value {value} is not an option of the source field (deleted?); add it back or map it in a table under values"
            ),
            Problem::NotConvertible { value, to } => write!(
                f,
                "value \"{value}\" is not a valid {to}; correct it on the source deal or map another field"
            ),
            Problem::TooManyValues { count } => write!(
                f,
                "the deal has {count} values and the target field holds one; make the target field multiple, or map to a string field (values are joined)"
            ),
            Problem::NoSuchUser { email } => write!(
                f,
                "no active user with the e-mail {email} on the target; invite the user there, or set responsible.fallback"
            ),
            Problem::UserWithoutEmail { id } => write!(
                f,
                "source user {id} has no e-mail to find them by on the target; add the e-mail, or set responsible.fallback"
            ),
            Problem::NotTransferred { kind, id } => write!(
                f,
                "points at {} {id}, which the relay has not transferred; transfer it first (contacts and companies travel with their deals)",
                kind.en()
            ),
            Problem::LeadLink { value } => write!(
                f,
                "value {value} is a lead, and leads are not transferred; remove it or stop mapping this field"
            ),
            Problem::LinkTypeRefused { value, kind } => write!(
                f,
                "value {value} is a {}, which the target field does not accept; allow {} in its settings",
                kind.en(),
                kind.setting()
            ),
            Problem::RuleOnNonList { kind } => write!(
                f,
                "a `values` rule is set, but the target field is a {kind}, not a list; remove the rule"
            ),
            Problem::FileNotListed => {
                write!(f, "a file field must be listed in `files` to be copied")
            }
        }
    }
}
