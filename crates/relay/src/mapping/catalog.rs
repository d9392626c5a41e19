//! A portal's deal fields as `crm.item.fields` (or `crm.deal.fields`)
//! describes them: type, multiple, read-only, list options, the record
//! types a CRM binding field accepts.

use std::collections::BTreeMap;

use serde_json::Value;

use super::scalar;

/// What a field holds, as far as moving values between portals matters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FieldType {
    String,
    Integer,
    Double,
    Boolean,
    Date,
    DateTime,
    /// A list (`enumeration`): option ids, which differ between portals.
    Enumeration,
    /// `"300|RUB"`.
    Money,
    File,
    /// A user of the portal (`employee` user fields, `user` standard ones).
    Employee,
    Url,
    /// A binding to CRM records (`C_5`, `CO_3`, `D_7`, `L_4`).
    CrmLink,
    /// A code from `crm.status.list` (stage, source, type): the same codes
    /// on both portals by default.
    Status,
    /// Anything else (`crm_currency`, `crm_category`, `crm_contact`, ...),
    /// by its type name.
    Other(String),
}

impl FieldType {
    pub fn parse(name: &str) -> Self {
        match name {
            "string" | "text" => Self::String,
            "integer" => Self::Integer,
            "double" => Self::Double,
            "boolean" | "char" => Self::Boolean,
            "date" => Self::Date,
            "datetime" => Self::DateTime,
            "enumeration" => Self::Enumeration,
            "money" => Self::Money,
            "file" => Self::File,
            "employee" | "user" => Self::Employee,
            "url" => Self::Url,
            "crm" => Self::CrmLink,
            "crm_status" => Self::Status,
            other => Self::Other(other.to_owned()),
        }
    }

    /// The portal's own name for the type, for messages.
    pub fn name(&self) -> &str {
        match self {
            Self::String => "string",
            Self::Integer => "integer",
            Self::Double => "double",
            Self::Boolean => "boolean",
            Self::Date => "date",
            Self::DateTime => "datetime",
            Self::Enumeration => "list",
            Self::Money => "money",
            Self::File => "file",
            Self::Employee => "employee",
            Self::Url => "url",
            Self::CrmLink => "crm binding",
            Self::Status => "crm_status",
            Self::Other(name) => name,
        }
    }

    pub fn is_text(&self) -> bool {
        matches!(self, Self::String | Self::Url)
    }
}

/// One field of a deal.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldInfo {
    pub kind: FieldType,
    pub title: String,
    pub multiple: bool,
    pub read_only: bool,
    /// List options: (id, text).
    pub options: Vec<(String, String)>,
    /// For a CRM binding field: the record types it accepts
    /// (`CONTACT`, `COMPANY`, `DEAL`, `LEAD`).
    pub crm_types: Vec<String>,
}

impl Default for FieldInfo {
    fn default() -> Self {
        Self {
            kind: FieldType::String,
            title: String::new(),
            multiple: false,
            read_only: false,
            options: Vec::new(),
            crm_types: Vec::new(),
        }
    }
}

impl FieldInfo {
    /// The title when the portal gives one, else the field's name.
    pub fn shown<'a>(&'a self, name: &'a str) -> &'a str {
        if self.title.is_empty() {
            name
        } else {
            &self.title
        }
    }

    /// The text of option `id`.
    pub fn option_text(&self, id: &str) -> Option<&str> {
        self.options
            .iter()
            .find(|(option, _)| option == id)
            .map(|(_, text)| text.as_str())
    }
}

/// A portal's deal fields by camelCase name.
pub type FieldCatalog = BTreeMap<String, FieldInfo>;

/// Reads the `result` of `crm.item.fields` (`{fields: {name: {...}}}`).
pub fn parse_catalog(result: &Value) -> FieldCatalog {
    let fields = result.get("fields").unwrap_or(result);
    let Some(fields) = fields.as_object() else {
        return FieldCatalog::new();
    };
    fields
        .iter()
        .map(|(name, info)| {
            let text = |key: &str| {
                info.get(key)
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned()
            };
            let flag = |key: &str| match info.get(key) {
                Some(Value::Bool(flag)) => *flag,
                Some(Value::String(text)) => text == "Y",
                _ => false,
            };
            let options = info
                .get("items")
                .and_then(Value::as_array)
                .map(|items| {
                    items
                        .iter()
                        .map(|item| (scalar(&item["ID"]), scalar(&item["VALUE"])))
                        .collect()
                })
                .unwrap_or_default();
            let crm_types = info
                .get("settings")
                .and_then(Value::as_object)
                .map(|settings| {
                    ["CONTACT", "COMPANY", "DEAL", "LEAD"]
                        .into_iter()
                        .filter(|kind| settings.get(*kind).map(scalar).as_deref() == Some("Y"))
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default();
            let info = FieldInfo {
                kind: FieldType::parse(&text("type")),
                title: text("title"),
                multiple: flag("isMultiple"),
                read_only: flag("isReadOnly"),
                options,
                crm_types,
            };
            (name.clone(), info)
        })
        .collect()
}
