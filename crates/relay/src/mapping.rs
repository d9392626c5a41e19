//! Pure translation of a source deal into target fields: renames,
//! constants, list values (by id table or by option label), stage and
//! pipeline, money. Anything that cannot be translated is a
//! [`MappingError`] naming the field and the value, never a silent drop.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

use crate::config::{Route, ValueRule};

/// A value the route cannot translate. The message says what to change.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("field {field}: {problem}")]
pub struct MappingError {
    pub field: String,
    pub problem: String,
}

/// One field of `crm.item.fields`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct FieldInfo {
    pub kind: String,
    pub title: String,
    pub multiple: bool,
    pub read_only: bool,
    /// List options: (id, text).
    pub options: Vec<(String, String)>,
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
            let flag = |key: &str| info.get(key).and_then(Value::as_bool).unwrap_or(false);
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
            let info = FieldInfo {
                kind: text("type"),
                title: text("title"),
                multiple: flag("isMultiple"),
                read_only: flag("isReadOnly"),
                options,
            };
            (name.clone(), info)
        })
        .collect()
}

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

/// The target deal's fields for one source deal.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct MappedDeal {
    /// Written on create and on every update.
    pub fields: Map<String, Value>,
    /// Written on create only (pipeline and starting stage).
    pub on_create: Map<String, Value>,
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

/// Maps the deal's own fields. `responsible` is the target user id already
/// resolved by e-mail, if the route asks for it.
pub fn map_deal(
    route: &Route,
    deal: &Map<String, Value>,
    catalogs: Catalogs<'_>,
    responsible: Option<i64>,
) -> Result<MappedDeal, MappingError> {
    let mut mapped = MappedDeal::default();
    for (source_field, target_field) in &route.fields {
        if route.files.contains(source_field) {
            continue;
        }
        let raw = deal.get(source_field).cloned().unwrap_or(Value::Null);
        let value = match route.values.get(target_field) {
            Some(rule) => map_list_value(rule, source_field, target_field, &raw, catalogs)?,
            None => convert_money(&raw, target_field, deal, catalogs),
        };
        mapped.fields.insert(target_field.clone(), value);
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

fn option_text(catalog: Option<&FieldCatalog>, field: &str, id: &str) -> Option<String> {
    catalog?
        .get(field)?
        .options
        .iter()
        .find(|(option, _)| option == id)
        .map(|(_, text)| text.clone())
}

fn map_list_value(
    rule: &ValueRule,
    source_field: &str,
    target_field: &str,
    raw: &Value,
    catalogs: Catalogs<'_>,
) -> Result<Value, MappingError> {
    let one = |value: &Value| -> Result<Value, MappingError> {
        let id = scalar(value);
        if id.is_empty() {
            return Ok(Value::Null);
        }
        let shown = match option_text(catalogs.source, source_field, &id) {
            Some(text) => format!("{id} (\"{text}\")"),
            None => id.clone(),
        };
        let error = |problem: String| MappingError {
            field: source_field.to_owned(),
            problem,
        };
        let target_id = match rule {
            ValueRule::Table(table) => table.get(&id).cloned().ok_or_else(|| {
                error(format!(
                    "value {shown} has no entry in values.{target_field}; add \"{id}\" = \"<target option id>\""
                ))
            })?,
            ValueRule::Label => {
                let text = option_text(catalogs.source, source_field, &id).ok_or_else(|| {
                    error(format!(
                        "value {id} is not an option of {source_field} on the source portal"
                    ))
                })?;
                let target = catalogs.target.and_then(|c| c.get(target_field));
                target
                    .and_then(|info| {
                        info.options.iter().find(|(_, label)| {
                            label.trim().eq_ignore_ascii_case(text.trim())
                        })
                    })
                    .map(|(option, _)| option.clone())
                    .ok_or_else(|| {
                        error(format!(
                            "value {shown} has no option with the same text in {target_field} on the target portal; add the option there or map it with a table in values.{target_field}"
                        ))
                    })?
            }
        };
        Ok(match target_id.parse::<i64>() {
            Ok(number) => json!(number),
            Err(_) => json!(target_id),
        })
    };
    match raw {
        Value::Array(values) => values
            .iter()
            .map(one)
            .filter(|v| !matches!(v, Ok(Value::Null)))
            .collect::<Result<Vec<_>, _>>()
            .map(Value::Array),
        other => one(other),
    }
}

/// Money fields hold `"300|RUB"`; numeric fields a plain amount. Converts
/// between the two when the target field's type says so.
fn convert_money(
    raw: &Value,
    target_field: &str,
    deal: &Map<String, Value>,
    catalogs: Catalogs<'_>,
) -> Value {
    let Some(kind) = catalogs
        .target
        .and_then(|c| c.get(target_field))
        .map(|i| i.kind.as_str())
    else {
        return raw.clone();
    };
    match (kind, raw) {
        ("double" | "integer", Value::String(text)) if text.contains('|') => {
            let amount = text.split('|').next().unwrap_or("").trim();
            amount
                .parse::<f64>()
                .map(|n| json!(n))
                .unwrap_or(Value::Null)
        }
        ("money", Value::Number(amount)) => {
            let currency = deal.get("currencyId").map(scalar).unwrap_or_default();
            json!(format!("{amount}|{currency}"))
        }
        _ => raw.clone(),
    }
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
