//! The portal's data: records of deals, contacts and companies, pipelines,
//! user fields, files, product rows, timeline comments, users. All writes go
//! through here so both API families apply the same rules.

pub mod seed;
pub mod values;

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

use crate::clock;
use crate::error::ApiError;
use crate::fields::{EntityType, FieldDef, FieldKind, standard_fields};
use crate::params::{as_i64, as_list, scalar_text};
use seed::{Pipeline, Seed, SeedStage, SeedUser};
use values::{Api, FileStore, RenderCtx};

pub type Record = Map<String, Value>;

/// Who writes and through which API family.
#[derive(Debug, Clone, Copy)]
pub struct WriteCtx {
    pub user_id: i64,
    pub api: Api,
    /// `useOriginalUfNames=Y`: user fields are named `UF_CRM_...` in `crm.item.*`.
    pub original_uf_names: bool,
}

/// What a write did, for the outbound handlers to react to.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub entity: EntityType,
    pub id: i64,
    pub added: bool,
    pub category_before: Option<i64>,
    pub category_after: Option<i64>,
    pub stage_before: Option<String>,
    pub stage_after: Option<String>,
}

#[derive(Debug)]
pub struct State {
    pub currency: String,
    pub fields: BTreeMap<EntityType, Vec<FieldDef>>,
    pub pipelines: Vec<Pipeline>,
    pub records: BTreeMap<EntityType, BTreeMap<i64, Record>>,
    next_ids: BTreeMap<EntityType, i64>,
    next_multifield_id: i64,
    pub files: FileStore,
    pub product_rows: BTreeMap<(EntityType, i64), Vec<Record>>,
    pub next_row_id: i64,
    pub comments: Vec<Record>,
    pub users: Vec<SeedUser>,
    pub notifications: Vec<Value>,
}

impl State {
    pub fn from_seed(seed: &Seed) -> Result<Self, String> {
        let mut fields: BTreeMap<EntityType, Vec<FieldDef>> = EntityType::ALL
            .iter()
            .map(|e| (*e, standard_fields(*e)))
            .collect();
        for uf in &seed.user_fields {
            let def = uf.to_def()?;
            let list = fields.entry(uf.entity).or_default();
            if list
                .iter()
                .any(|f| f.upper == def.upper || f.camel == def.camel)
            {
                return Err(format!("user field {} is defined twice", def.upper));
            }
            list.push(def);
        }
        let mut users = seed.users.clone();
        if users.is_empty() {
            users.push(SeedUser {
                id: 1,
                name: "Admin".into(),
                last_name: String::new(),
                email: "admin@example.com".into(),
                active: true,
            });
        }
        let mut state = Self {
            currency: seed.currency.clone().unwrap_or_else(|| "RUB".into()),
            fields,
            pipelines: seed.pipelines()?,
            records: BTreeMap::new(),
            next_ids: BTreeMap::new(),
            next_multifield_id: 0,
            files: FileStore::default(),
            product_rows: BTreeMap::new(),
            next_row_id: 0,
            comments: Vec::new(),
            users,
            notifications: Vec::new(),
        };
        let ctx = WriteCtx {
            user_id: 1,
            api: Api::Item,
            original_uf_names: false,
        };
        for (entity, records) in [
            (EntityType::Company, &seed.companies),
            (EntityType::Contact, &seed.contacts),
            (EntityType::Deal, &seed.deals),
        ] {
            for record in records {
                let wanted = record.get("id").and_then(as_i64);
                if let Some(id) = wanted {
                    let next = state.next_ids.entry(entity).or_insert(0);
                    if id <= *next {
                        return Err(format!("seed {entity:?} id {id} is not increasing"));
                    }
                    *next = id - 1;
                }
                state
                    .add(entity, record, ctx)
                    .map_err(|e| format!("seed {entity:?}: {}", e.description))?;
            }
        }
        Ok(state)
    }

    pub fn defs(&self, entity: EntityType) -> &[FieldDef] {
        self.fields.get(&entity).map(Vec::as_slice).unwrap_or(&[])
    }

    pub fn get(&self, entity: EntityType, id: i64) -> Option<&Record> {
        self.records.get(&entity)?.get(&id)
    }

    pub fn stage(&self, stage_id: &str) -> Option<(&Pipeline, &SeedStage)> {
        self.pipelines
            .iter()
            .find_map(|p| p.stages.iter().find(|s| s.id == stage_id).map(|s| (p, s)))
    }

    /// Finds the definition an input key names in the given API family.
    pub fn input_field(&self, entity: EntityType, key: &str, ctx: WriteCtx) -> Option<&FieldDef> {
        self.defs(entity).iter().find(|def| match ctx.api {
            Api::Item => {
                def.in_item_api()
                    && (def.camel == key
                        || (ctx.original_uf_names && def.user_field && def.upper == key))
            }
            Api::Legacy => def.in_legacy_api() && def.legacy.eq_ignore_ascii_case(key),
        })
    }

    pub fn add(
        &mut self,
        entity: EntityType,
        input: &Record,
        ctx: WriteCtx,
    ) -> Result<(i64, Change), ApiError> {
        let id = *self.next_ids.get(&entity).unwrap_or(&0) + 1;
        let mut record = Record::new();
        record.insert("id".into(), json!(id));
        self.apply(entity, &mut record, input, ctx, true)?;
        let now_unix = clock::now_unix();
        let midnight = (now_unix / 86_400.0).floor() * 86_400.0;
        let now = clock::iso8601(now_unix);
        for (key, value) in [
            ("createdBy", json!(ctx.user_id)),
            ("updatedBy", json!(ctx.user_id)),
            ("createdTime", json!(now)),
            ("updatedTime", json!(now)),
        ] {
            record.insert(key.into(), value);
        }
        let defaults = [
            ("opened", json!("Y")),
            ("assignedById", json!(ctx.user_id)),
            ("originatorId", Value::Null),
            ("originId", Value::Null),
        ];
        for (key, value) in defaults {
            record.entry(key).or_insert(value);
        }
        match entity {
            EntityType::Deal => {
                let title = format!("Deal #{id}");
                record.entry("title").or_insert(json!(title));
                for (key, value) in [
                    ("currencyId", json!(self.currency)),
                    ("opportunity", json!(0)),
                    ("isManualOpportunity", json!("N")),
                    ("isNew", json!("Y")),
                    ("isRecurring", json!("N")),
                    ("taxValue", json!(0)),
                    ("begindate", json!(clock::iso8601(midnight))),
                    (
                        "closedate",
                        json!(clock::iso8601(midnight + 7.0 * 86_400.0)),
                    ),
                ] {
                    record.entry(key).or_insert(value);
                }
            }
            EntityType::Company => {
                record
                    .entry("title")
                    .or_insert(json!(format!("Company #{id}")));
                record.entry("currencyId").or_insert(json!(self.currency));
            }
            EntityType::Contact => {}
        }
        let change = Change {
            entity,
            id,
            added: true,
            category_before: None,
            category_after: record.get("categoryId").and_then(as_i64),
            stage_before: None,
            stage_after: record
                .get("stageId")
                .and_then(Value::as_str)
                .map(str::to_string),
        };
        self.next_ids.insert(entity, id);
        self.records.entry(entity).or_default().insert(id, record);
        Ok((id, change))
    }

    pub fn update(
        &mut self,
        entity: EntityType,
        id: i64,
        input: &Record,
        ctx: WriteCtx,
    ) -> Result<Change, ApiError> {
        let mut record = self
            .get(entity, id)
            .cloned()
            .ok_or_else(|| not_found(entity, id, ctx.api))?;
        let category_before = record.get("categoryId").and_then(as_i64);
        let stage_before = record
            .get("stageId")
            .and_then(Value::as_str)
            .map(str::to_string);
        self.apply(entity, &mut record, input, ctx, false)?;
        record.insert("updatedBy".into(), json!(ctx.user_id));
        record.insert(
            "updatedTime".into(),
            json!(clock::iso8601(clock::now_unix())),
        );
        if entity == EntityType::Deal {
            record.insert("isNew".into(), json!("N"));
        }
        let change = Change {
            entity,
            id,
            added: false,
            category_before,
            category_after: record.get("categoryId").and_then(as_i64),
            stage_before,
            stage_after: record
                .get("stageId")
                .and_then(Value::as_str)
                .map(str::to_string),
        };
        self.records.entry(entity).or_default().insert(id, record);
        Ok(change)
    }

    fn apply(
        &mut self,
        entity: EntityType,
        record: &mut Record,
        input: &Record,
        ctx: WriteCtx,
        is_add: bool,
    ) -> Result<(), ApiError> {
        let mut multifields: Vec<(String, Value)> = Vec::new();
        let mut given = Vec::new();
        for (key, raw) in input {
            let Some(def) = self.input_field(entity, key, ctx).cloned() else {
                continue;
            };
            if def.read_only {
                continue;
            }
            given.push(def.camel.clone());
            let scalar = !matches!(raw, Value::Array(_) | Value::Object(_) | Value::Null);
            if ctx.api == Api::Item && def.multiple && scalar && def.multifield_type.is_none() {
                return Err(ApiError::new(
                    http::StatusCode::BAD_REQUEST,
                    "100",
                    format!(
                        "Expected iterable value for multiple field, but got {} instead",
                        php_type(raw)
                    ),
                ));
            }
            match def.kind {
                FieldKind::Multifield => match def.multifield_type {
                    Some(type_id) => multifields.extend(
                        as_list(raw)
                            .into_iter()
                            .map(|row| (type_id.to_string(), row)),
                    ),
                    None => {
                        for row in as_list(raw) {
                            let type_id = ["typeId", "TYPE_ID"]
                                .iter()
                                .find_map(|k| row.get(*k))
                                .map(scalar_text)
                                .unwrap_or_default()
                                .to_ascii_uppercase();
                            if !matches!(
                                type_id.as_str(),
                                "PHONE" | "EMAIL" | "WEB" | "IM" | "LINK"
                            ) {
                                return Err(ApiError::field_not_valid(&def.title));
                            }
                            multifields.push((type_id, row));
                        }
                    }
                },
                FieldKind::File => {
                    let value = values::normalize_files(
                        &mut self.files,
                        &def,
                        raw,
                        record.get(&def.camel),
                    )?;
                    record.insert(def.camel.clone(), value);
                }
                _ => {
                    let value = values::normalize_scalar(&def, raw)?;
                    record.insert(def.camel.clone(), value);
                }
            }
        }
        if !multifields.is_empty() {
            let existing = record.get("fm").map(as_list).unwrap_or_default();
            let merged =
                values::merge_multifields(&existing, &multifields, &mut self.next_multifield_id)?;
            record.insert("fm".into(), Value::Array(merged));
        }
        link_lists(record, &given, "contactId", "contactIds");
        link_lists(record, &given, "companyId", "companyIds");
        if entity == EntityType::Deal {
            self.apply_stage_rules(record, &given, ctx, is_add)?;
        }
        Ok(())
    }

    /// Pipeline and stage rules: a stage implies its pipeline, a new pipeline
    /// without a stage starts at its first stage, and stage semantics decide
    /// `stageSemanticId` and `closed`.
    fn apply_stage_rules(
        &self,
        record: &mut Record,
        given: &[String],
        ctx: WriteCtx,
        is_add: bool,
    ) -> Result<(), ApiError> {
        let stage_given = given.iter().any(|g| g == "stageId")
            && record.get("stageId").is_some_and(|v| !v.is_null());
        let category_given = given.iter().any(|g| g == "categoryId");
        let stage_field = |api: Api| {
            if api == Api::Item {
                "stageId"
            } else {
                "STAGE_ID"
            }
        };
        let category_field = |api: Api| {
            if api == Api::Item {
                "categoryId"
            } else {
                "CATEGORY_ID"
            }
        };
        let before_stage = record
            .get("stageId")
            .and_then(Value::as_str)
            .map(str::to_string);
        if stage_given {
            let stage_id = record["stageId"].as_str().unwrap_or_default().to_string();
            let (pipeline_id, _) = self
                .stage(&stage_id)
                .map(|(p, s)| (p.id, s))
                .ok_or_else(|| ApiError::field_not_valid(stage_field(ctx.api)))?;
            let wanted_category = record.get("categoryId").and_then(as_i64);
            if category_given && wanted_category.is_some_and(|c| c != pipeline_id) {
                return Err(ApiError::field_not_valid(stage_field(ctx.api)));
            }
            record.insert("categoryId".into(), json!(pipeline_id));
        } else if category_given || is_add {
            let category = record.get("categoryId").and_then(as_i64).unwrap_or(0);
            let pipeline = self
                .pipelines
                .iter()
                .find(|p| p.id == category)
                .ok_or_else(|| ApiError::field_not_valid(category_field(ctx.api)))?;
            let current_fits = !is_add
                && before_stage
                    .as_deref()
                    .and_then(|s| self.stage(s))
                    .is_some_and(|(p, _)| p.id == category);
            if !current_fits {
                record.insert("stageId".into(), json!(pipeline.stages[0].id));
            }
            record.insert("categoryId".into(), json!(category));
        }
        let stage_id = record
            .get("stageId")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        if let Some((_, stage)) = self.stage(&stage_id) {
            record.insert("stageSemanticId".into(), json!(stage.semantics));
            let closed = if stage.semantics == "P" { "N" } else { "Y" };
            record.insert("closed".into(), json!(closed));
        }
        if is_add || before_stage.as_deref() != Some(stage_id.as_str()) {
            record.insert("movedTime".into(), json!(clock::iso8601(clock::now_unix())));
            record.insert("movedBy".into(), json!(ctx.user_id));
        }
        Ok(())
    }

    /// A record as the API family shows it (all fields, `select` applied later).
    pub fn render(
        &self,
        entity: EntityType,
        record: &Record,
        api: Api,
        ctx: &RenderCtx,
        original_uf_names: bool,
    ) -> Record {
        let id = record.get("id").and_then(as_i64).unwrap_or(0);
        let owner = (entity.type_id(), id);
        let mut out = Record::new();
        for def in self.defs(entity) {
            match api {
                Api::Item if def.in_item_api() => {
                    let key = if original_uf_names && def.user_field {
                        &def.upper
                    } else {
                        &def.camel
                    };
                    out.insert(
                        key.clone(),
                        values::render(def, record.get(&def.camel), api, ctx, owner),
                    );
                }
                // The deprecated API accepts CONTACT_IDS / COMPANY_IDS on
                // writes but reads them through separate `*.items.get` methods.
                Api::Legacy if def.in_legacy_api() && !def.legacy.ends_with("_IDS") => {
                    let stored = if def.multifield_type.is_some() {
                        record.get("fm")
                    } else {
                        record.get(&def.camel)
                    };
                    out.insert(
                        def.legacy.clone(),
                        values::render(def, stored, api, ctx, owner),
                    );
                }
                _ => {}
            }
        }
        if api == Api::Item {
            out.insert("entityTypeId".into(), json!(entity.type_id()));
        }
        out
    }
}

fn php_type(value: &Value) -> &'static str {
    match value {
        Value::String(_) => "string",
        Value::Number(n) if n.is_f64() => "double",
        Value::Number(_) => "integer",
        Value::Bool(_) => "boolean",
        _ => "array",
    }
}

/// Keeps a single-reference field and its list twin consistent.
fn link_lists(record: &mut Record, given: &[String], single: &str, list: &str) {
    let list_given = given.iter().any(|g| g == list);
    let single_given = given.iter().any(|g| g == single);
    if list_given {
        let first = record
            .get(list)
            .map(as_list)
            .and_then(|l| l.first().cloned())
            .unwrap_or(Value::Null);
        record.insert(single.into(), first);
    } else if single_given {
        let ids = match record.get(single) {
            Some(Value::Null) | None => json!([]),
            Some(id) => json!([id]),
        };
        record.insert(list.into(), ids);
    }
}

pub fn not_found(entity: EntityType, id: i64, api: Api) -> ApiError {
    match api {
        Api::Item => ApiError::not_found(format!("{} with ID {id} not found", entity.title())),
        Api::Legacy => ApiError::legacy("Not found"),
    }
}

#[cfg(test)]
mod tests;
