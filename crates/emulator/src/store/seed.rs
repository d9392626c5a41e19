//! Seed data: pipelines and stages, user fields (with the option ids that make
//! two portals differ), users, handlers and initial records.

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::fields::{EntityType, EnumOption, FieldDef, FieldKind};

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Seed {
    /// Default currency of the portal (`RUB` unless said otherwise).
    pub currency: Option<String>,
    #[serde(default)]
    pub users: Vec<SeedUser>,
    #[serde(default)]
    pub pipelines: Vec<SeedPipeline>,
    #[serde(default)]
    pub user_fields: Vec<SeedUserField>,
    /// Records in `crm.item.*` shape (camelCase); `id` is kept when given.
    #[serde(default)]
    pub deals: Vec<Map<String, Value>>,
    #[serde(default)]
    pub contacts: Vec<Map<String, Value>>,
    #[serde(default)]
    pub companies: Vec<Map<String, Value>>,
    #[serde(default)]
    pub handlers: crate::outbound::HandlerSeed,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SeedUser {
    pub id: i64,
    pub name: String,
    #[serde(default)]
    pub last_name: String,
    #[serde(default)]
    pub email: String,
    #[serde(default = "yes")]
    pub active: bool,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SeedPipeline {
    pub id: i64,
    pub name: String,
    #[serde(default)]
    pub sort: Option<i64>,
    pub stages: Vec<SeedStage>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SeedStage {
    /// Full stage id as the API shows it: `NEW` in pipeline 0, `C5:NEW` in 5.
    pub id: String,
    pub name: String,
    /// `P` (in progress), `S` (won) or `F` (lost).
    #[serde(default = "in_progress")]
    pub semantics: String,
}

fn in_progress() -> String {
    "P".into()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SeedUserField {
    pub entity: EntityType,
    /// `UF_CRM_...`
    pub name: String,
    /// Overrides the camelCase name (`ufCrm_...`).
    pub camel_name: Option<String>,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub title: Option<String>,
    #[serde(default)]
    pub multiple: bool,
    #[serde(default)]
    pub options: Vec<EnumOption>,
    /// For a `crm` field: the record types it binds (`CONTACT`, `COMPANY`,
    /// `DEAL`, `LEAD`); all four when left out.
    #[serde(default)]
    pub entity_types: Vec<String>,
}

impl SeedUserField {
    pub fn to_def(&self) -> Result<FieldDef, String> {
        if !self.name.starts_with("UF_CRM_") {
            return Err(format!(
                "user field {:?} must be named UF_CRM_...",
                self.name
            ));
        }
        let kind = FieldKind::parse_user_type(&self.kind)
            .ok_or_else(|| format!("user field {}: unsupported type {:?}", self.name, self.kind))?;
        if kind == FieldKind::Enumeration && self.options.is_empty() {
            return Err(format!("list user field {} has no options", self.name));
        }
        let mut def = FieldDef::user_field(
            &self.name,
            self.camel_name.as_deref(),
            kind,
            self.title.as_deref().unwrap_or(&self.name),
            self.multiple,
            self.options.clone(),
        );
        if kind == FieldKind::CrmLink {
            let known = ["LEAD", "CONTACT", "COMPANY", "DEAL"];
            def.crm_types = if self.entity_types.is_empty() {
                known.iter().map(|t| t.to_string()).collect()
            } else {
                self.entity_types
                    .iter()
                    .map(|t| t.to_ascii_uppercase())
                    .collect()
            };
            if let Some(bad) = def.crm_types.iter().find(|t| !known.contains(&t.as_str())) {
                return Err(format!(
                    "crm user field {}: unknown entity type {bad:?}",
                    self.name
                ));
            }
        }
        Ok(def)
    }
}

/// A pipeline with its stages, in order.
#[derive(Debug, Clone)]
pub struct Pipeline {
    pub id: i64,
    pub name: String,
    pub sort: i64,
    pub stages: Vec<SeedStage>,
}

/// Bitrix24's out-of-the-box general pipeline.
pub fn default_pipeline() -> Pipeline {
    let stage = |id: &str, name: &str, semantics: &str| SeedStage {
        id: id.into(),
        name: name.into(),
        semantics: semantics.into(),
    };
    Pipeline {
        id: 0,
        name: "General".into(),
        sort: 100,
        stages: vec![
            stage("NEW", "New", "P"),
            stage("PREPARATION", "Document preparation", "P"),
            stage("PREPAYMENT_INVOICE", "Invoice", "P"),
            stage("EXECUTING", "In progress", "P"),
            stage("FINAL_INVOICE", "Final invoice", "P"),
            stage("WON", "Deal won", "S"),
            stage("LOSE", "Deal lost", "F"),
            stage("APOLOGY", "Analyze failure", "F"),
        ],
    }
}

impl Seed {
    pub fn pipelines(&self) -> Result<Vec<Pipeline>, String> {
        let mut pipelines: Vec<Pipeline> = self
            .pipelines
            .iter()
            .map(|p| Pipeline {
                id: p.id,
                name: p.name.clone(),
                sort: p.sort.unwrap_or(100 + p.id * 10),
                stages: p.stages.clone(),
            })
            .collect();
        if !pipelines.iter().any(|p| p.id == 0) {
            pipelines.insert(0, default_pipeline());
        }
        for pipeline in &pipelines {
            if pipeline.stages.is_empty() {
                return Err(format!("pipeline {} has no stages", pipeline.id));
            }
            for stage in &pipeline.stages {
                let prefixed = stage.id.starts_with(&format!("C{}:", pipeline.id));
                if (pipeline.id == 0 && stage.id.contains(':')) || (pipeline.id != 0 && !prefixed) {
                    return Err(format!(
                        "stage {} does not belong to pipeline {} (use C{}:NAME)",
                        stage.id, pipeline.id, pipeline.id
                    ));
                }
                if !matches!(stage.semantics.as_str(), "P" | "S" | "F") {
                    return Err(format!("stage {}: semantics must be P, S or F", stage.id));
                }
            }
        }
        Ok(pipelines)
    }
}
