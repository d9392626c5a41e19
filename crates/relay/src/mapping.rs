//! Pure translation of a source deal into target fields: renames,
//! constants, list values (by id table or by option label), employees by
//! e-mail, CRM bindings through the link table, money, single ↔ multiple,
//! stage and pipeline. What each pair of field types does is decided once
//! ([`plan_fields`], which `check` runs too) and applied to every value.
//! Anything that cannot be translated is a [`MappingError`] naming the
//! field, the value and the fix, never a silent drop.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

use crate::config::Route;

mod catalog;
mod convert;
mod labels;
mod problem;
mod reserved;

pub use catalog::{FieldCatalog, FieldInfo, FieldType, parse_catalog};
pub use convert::{FieldPlan, Needs, Resolved, SourceUser};
pub use labels::{find_option, normalize as normalize_label, same_label};
pub use problem::{CrmKind, MappingError, Problem};
pub use reserved::{RESERVED, reserved};

/// A JSON scalar as text (`5` and `"5"` both give `5`).
pub fn scalar(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// Both portals' field catalogues, when the route needs them.
#[derive(Debug, Clone, Copy, Default)]
pub struct Catalogs<'a> {
    pub source: Option<&'a FieldCatalog>,
    pub target: Option<&'a FieldCatalog>,
}

/// The target deal's fields for one source deal. Cleared values are
/// `null` (single) or `[]` (multiple): an update clears the target field,
/// a create leaves it out.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct MappedDeal {
    /// Written on create and on every update.
    pub fields: Map<String, Value>,
    /// Written on create only (pipeline and starting stage).
    pub on_create: Map<String, Value>,
}

impl MappedDeal {
    /// The fields a create sends: everything but empty values.
    pub fn for_create(&self) -> Map<String, Value> {
        let mut create = self.on_create.clone();
        for (key, value) in &self.fields {
            let empty = match value {
                Value::Null => true,
                Value::Array(items) => items.is_empty(),
                Value::String(text) => text.is_empty(),
                _ => false,
            };
            if !empty {
                create.insert(key.clone(), value.clone());
            }
        }
        create
    }
}

/// The conversion plan of every mapped field of a route (files aside),
/// or every field that cannot map. `check` and transfers both use it.
pub fn plan_fields<'a>(
    route: &'a Route,
    catalogs: Catalogs<'a>,
) -> Result<Vec<FieldPlan<'a>>, Vec<MappingError>> {
    let mut plans = Vec::new();
    let mut errors = Vec::new();
    for planned in plan_each(route, catalogs) {
        match planned {
            Ok(plan) => plans.push(plan),
            Err(error) => errors.push(error),
        }
    }
    if errors.is_empty() {
        Ok(plans)
    } else {
        Err(errors)
    }
}

/// [`plan_fields`] field by field: `check` reports the fields that cannot
/// map and also tries the values of those that can.
pub fn plan_each<'a>(
    route: &'a Route,
    catalogs: Catalogs<'a>,
) -> Vec<Result<FieldPlan<'a>, MappingError>> {
    let mut out = Vec::new();
    for (source_field, target_field) in &route.fields {
        if route.files.contains(source_field) {
            continue;
        }
        let source = catalogs.source.map(|c| c.get(source_field));
        let target = catalogs.target.map(|c| c.get(target_field));
        let error = |problem| MappingError {
            field: source_field.clone(),
            target_field: target_field.clone(),
            target_title: target
                .flatten()
                .map(|t| t.shown(target_field).to_owned())
                .unwrap_or_else(|| target_field.clone()),
            problem: Box::new(problem),
        };
        let missing_source = matches!(source, Some(None));
        let missing_target = matches!(target, Some(None));
        if missing_source {
            out.push(Err(error(Problem::NoSourceField {
                portal: route.from.clone(),
            })));
        }
        if missing_target {
            out.push(Err(error(Problem::NoTargetField {
                portal: route.to.clone(),
            })));
        }
        if missing_source || missing_target {
            continue;
        }
        out.push(
            FieldPlan::new(
                source_field,
                target_field,
                source.flatten(),
                target.flatten(),
                route.values.get(target_field),
            )
            .map_err(error),
        );
    }
    out
}

/// What mapping this deal needs looked up (users, linked records).
pub fn needs(plans: &[FieldPlan<'_>], deal: &Map<String, Value>) -> Needs {
    let mut needs = Needs::default();
    for plan in plans {
        let raw = deal.get(plan.source_field).unwrap_or(&Value::Null);
        plan.needs(raw, &mut needs);
    }
    needs
}

/// Whether the deal is one the route takes; `Err` says why not.
pub fn route_accepts(route: &Route, deal: &Map<String, Value>) -> Result<(), String> {
    let category = deal.get("categoryId").map(scalar).unwrap_or_default();
    let stage = deal.get("stageId").map(scalar).unwrap_or_default();
    if let Some(wanted) = route.when_category.filter(|w| category != w.to_string()) {
        return Err(format!(
            "route {}: deal is in pipeline {category}, not {wanted}",
            route.name
        ));
    }
    if !route.when_stages.is_empty() && !route.when_stages.contains(&stage) {
        return Err(format!(
            "route {}: deal is in stage {stage}, not {}",
            route.name,
            route.when_stages.join(" or ")
        ));
    }
    Ok(())
}

/// Maps the deal's own fields with the plans of [`plan_fields`].
/// `responsible` is the target user id already resolved by e-mail, if the
/// route asks for it. Every field that cannot map is reported.
pub fn map_deal(
    route: &Route,
    plans: &[FieldPlan<'_>],
    deal: &Map<String, Value>,
    resolved: &Resolved,
    responsible: Option<i64>,
) -> Result<MappedDeal, Vec<MappingError>> {
    let mut mapped = MappedDeal::default();
    let mut errors = Vec::new();
    let currency = deal.get("currencyId").map(scalar).unwrap_or_default();
    for plan in plans {
        let raw = deal.get(plan.source_field).unwrap_or(&Value::Null);
        match plan.convert(raw, &currency, resolved) {
            Ok(value) => {
                mapped.fields.insert(plan.target_field.to_owned(), value);
            }
            Err(error) => errors.push(error),
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    // The amount and whether it was typed in or summed from the rows
    // travel together, so the target keeps the same amount.
    if route.fields.get("opportunity").map(String::as_str) == Some("opportunity") {
        if let Some(manual) = deal.get("isManualOpportunity").filter(|v| !v.is_null()) {
            mapped
                .fields
                .insert("isManualOpportunity".into(), json!(scalar(manual)));
        }
    }
    for (field, value) in &route.constants {
        mapped.fields.insert(field.clone(), value.clone());
    }
    if let Some(user) = responsible {
        mapped.fields.insert("assignedById".into(), json!(user));
    }
    let stage = deal.get("stageId").map(scalar).unwrap_or_default();
    mapped
        .on_create
        .insert("categoryId".into(), json!(route.target_category));
    match route.stage_table.get(&stage) {
        Some(target_stage) => {
            mapped.fields.insert("stageId".into(), json!(target_stage));
        }
        None => {
            if let Some(target_stage) = &route.target_stage {
                mapped
                    .on_create
                    .insert("stageId".into(), json!(target_stage));
            }
        }
    }
    Ok(mapped)
}

/// Product rows as the target's `crm.item.productrow.set` takes them.
/// Catalogue product ids differ between portals, so rows travel as
/// free-text rows (name, price, quantity, discount, tax, measure).
pub fn map_product_rows(rows: &[Value]) -> Vec<Value> {
    const KEPT: &[&str] = &[
        "productName",
        "price",
        "quantity",
        "discountTypeId",
        "discountRate",
        "discountSum",
        "taxRate",
        "taxIncluded",
        "measureCode",
        "measureName",
        "sort",
    ];
    rows.iter()
        .map(|row| {
            let mut out = Map::new();
            for key in KEPT {
                if let Some(value) = row.get(*key).filter(|v| !v.is_null()) {
                    out.insert((*key).to_owned(), value.clone());
                }
            }
            Value::Object(out)
        })
        .collect()
}

/// `ASSIGNED_BY_ID` → `assignedById`, `UF_CRM_X` → `ufCrm_X`, `ID` → `id`.
pub fn camel_name(upper: &str) -> String {
    if let Some(rest) = upper.strip_prefix("UF_CRM_") {
        return format!("ufCrm_{rest}");
    }
    let mut out = String::new();
    for (index, word) in upper.split('_').filter(|w| !w.is_empty()).enumerate() {
        let lower = word.to_ascii_lowercase();
        if index == 0 {
            out.push_str(&lower);
        } else {
            let mut chars = lower.chars();
            if let Some(first) = chars.next() {
                out.push(first.to_ascii_uppercase());
                out.extend(chars);
            }
        }
    }
    out
}

/// `ufCrm_X` → `UF_CRM_X`, `assignedById` → `ASSIGNED_BY_ID`.
pub fn upper_name(camel: &str) -> String {
    if let Some(rest) = camel.strip_prefix("ufCrm_") {
        return format!("UF_CRM_{rest}");
    }
    let mut out = String::new();
    for c in camel.chars() {
        if c.is_ascii_uppercase() && !out.is_empty() {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

/// A stable digest of a JSON value (keys sorted), to notice "nothing changed".
pub fn digest(value: &Value) -> String {
    fn canonical(value: &Value, out: &mut String) {
        match value {
            Value::Object(map) => {
                let sorted: BTreeMap<&String, &Value> = map.iter().collect();
                out.push('{');
                for (key, value) in sorted {
                    out.push_str(&serde_json::to_string(key).unwrap_or_default());
                    out.push(':');
                    canonical(value, out);
                    out.push(',');
                }
                out.push('}');
            }
            Value::Array(items) => {
                out.push('[');
                for item in items {
                    canonical(item, out);
                    out.push(',');
                }
                out.push(']');
            }
            other => out.push_str(&other.to_string()),
        }
    }
    let mut text = String::new();
    canonical(value, &mut text);
    // FNV-1a, 64 bit: stable across builds, unlike std's hasher.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in text.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{hash:016x}")
}

#[cfg(test)]
mod tests;
