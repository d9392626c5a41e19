//! The two API families a portal's CRM records are read and written with:
//! `crm.item.*` (camelCase, `{item: ...}` answers) and, for boxes without
//! it, the deprecated `crm.deal.*` / `crm.contact.*` / `crm.company.*`
//! (UPPER_CASE fields, bare ids, multifields as `PHONE: [{VALUE,
//! VALUE_TYPE}]`, files as `{fileData: [name, base64]}`). Each portal's
//! family is found once ([`DialectCell`]) and used for every read and write.

use std::sync::atomic::{AtomicU8, Ordering};

use b24_client::{ApiError, ApiErrorKind, BatchOutcome, CommandOutcome};
use serde_json::{Map, Value, json};

use crate::mapping::{camel_name, scalar, upper_name};
use crate::portals::id_of;

/// Which API family a portal's records are read and written with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Item,
    Legacy,
}

/// A portal's dialect: `crm.item.*` until the portal answers that it does
/// not have it (`ERROR_METHOD_NOT_FOUND`), then `crm.deal.*` for good.
#[derive(Debug, Default)]
pub struct DialectCell(AtomicU8);

const LEGACY: u8 = 1;

impl DialectCell {
    pub fn get(&self) -> Dialect {
        if self.0.load(Ordering::Relaxed) == LEGACY {
            Dialect::Legacy
        } else {
            Dialect::Item
        }
    }

    /// Takes note of an error: `true` when it says `crm.item.*` is missing
    /// (the portal is a box that was not updated), and from now on the
    /// portal is read and written with `crm.deal.*`.
    pub fn notice(&self, error: &ApiError, portal: &str) -> bool {
        let missing =
            error.kind == ApiErrorKind::MethodNotFound && error.method.starts_with("crm.item.");
        if missing && self.0.swap(LEGACY, Ordering::Relaxed) != LEGACY {
            tracing::warn!(
                portal,
                "crm.item.* is missing; reading and writing with crm.deal.*"
            );
        }
        missing
    }

    /// [`DialectCell::notice`] for every command of a batch.
    pub fn notice_batch(&self, done: &BatchOutcome, portal: &str) -> bool {
        let mut missing = false;
        for (command, outcome) in &done.commands {
            if let CommandOutcome::Failed(api) = outcome {
                let api = ApiError {
                    method: command.method.clone(),
                    ..api.clone()
                };
                missing |= self.notice(&api, portal);
            }
        }
        missing
    }
}

/// A REST call to put into a batch.
pub type Call = (&'static str, Value);

fn legacy_entity(entity_type_id: i64) -> &'static str {
    match entity_type_id {
        3 => "contact",
        4 => "company",
        _ => "deal",
    }
}

impl Dialect {
    /// Reads one record (`entity_type_id` 2, 3, 4); `id` may be a reference.
    pub fn get(self, entity_type_id: i64, id: Value) -> Call {
        match self {
            Dialect::Item => (
                "crm.item.get",
                json!({"entityTypeId": entity_type_id, "id": id}),
            ),
            Dialect::Legacy => (
                match legacy_entity(entity_type_id) {
                    "contact" => "crm.contact.get",
                    "company" => "crm.company.get",
                    _ => "crm.deal.get",
                },
                json!({"id": id}),
            ),
        }
    }

    /// The record in a [`Dialect::get`] answer, in `crm.item.*` shape.
    pub fn record(self, result: &Value) -> Option<Map<String, Value>> {
        match self {
            Dialect::Item => result["item"].as_object().cloned(),
            Dialect::Legacy => result.as_object().map(camel_record),
        }
    }

    /// A reference to a field of the deal read by command `name`.
    pub fn deal_field_reference(self, name: &str, field: &str) -> Value {
        match self {
            Dialect::Item => json!(format!("$result[{name}][item][{field}]")),
            Dialect::Legacy => json!(format!("$result[{name}][{}]", upper_name(field))),
        }
    }

    /// The product rows of deal `deal_id`.
    pub fn list_rows(self, deal_id: i64) -> Call {
        match self {
            Dialect::Item => (
                "crm.item.productrow.list",
                json!({"filter": {"=ownerType": "D", "=ownerId": deal_id}}),
            ),
            Dialect::Legacy => ("crm.deal.productrows.get", json!({"id": deal_id})),
        }
    }

    /// Rows in a [`Dialect::list_rows`] answer, camelCase.
    pub fn rows(self, result: &Value) -> Option<Vec<Value>> {
        match self {
            Dialect::Item => result["productRows"].as_array().cloned(),
            Dialect::Legacy => result.as_array().map(|rows| {
                rows.iter()
                    .filter_map(Value::as_object)
                    .map(|row| Value::Object(camel_record(row)))
                    .collect()
            }),
        }
    }

    /// Records with this `originatorId` / `originId`, ids only.
    pub fn find_by_origin(self, entity_type_id: i64, originator: &str, origin_id: i64) -> Call {
        match self {
            Dialect::Item => (
                "crm.item.list",
                json!({"entityTypeId": entity_type_id, "filter": {"=originatorId": originator, "=originId": origin_id.to_string()}, "select": ["id"]}),
            ),
            Dialect::Legacy => (
                match legacy_entity(entity_type_id) {
                    "contact" => "crm.contact.list",
                    "company" => "crm.company.list",
                    _ => "crm.deal.list",
                },
                json!({"filter": {"=ORIGINATOR_ID": originator, "=ORIGIN_ID": origin_id.to_string()}, "select": ["ID"]}),
            ),
        }
    }

    /// The smallest id in a list answer of [`Dialect::find_by_origin`].
    pub fn first_id(self, result: &Value) -> Option<i64> {
        let (items, key) = match self {
            Dialect::Item => (&result["items"], "id"),
            Dialect::Legacy => (result, "ID"),
        };
        items
            .as_array()
            .and_then(|items| items.iter().filter_map(|i| id_of(i.get(key))).min())
    }

    pub fn get_deal(self, id: i64) -> Call {
        match self {
            Dialect::Item => ("crm.item.get", json!({"entityTypeId": 2, "id": id})),
            Dialect::Legacy => ("crm.deal.get", json!({"id": id})),
        }
    }

    /// File ids in a field of a [`Dialect::get_deal`] answer.
    pub fn file_ids(self, result: &Value, field: &str) -> Vec<i64> {
        let value = match self {
            Dialect::Item => &result["item"][field],
            Dialect::Legacy => &result[upper_name(field)],
        };
        match value {
            Value::Array(items) => items.iter().filter_map(|v| id_of(v.get("id"))).collect(),
            Value::Object(one) => id_of(one.get("id")).into_iter().collect(),
            _ => Vec::new(),
        }
    }

    /// A new file for a file field.
    pub fn upload(self, name: &str, base64: String) -> Value {
        match self {
            Dialect::Item => json!([name, base64]),
            Dialect::Legacy => json!({"fileData": [name, base64]}),
        }
    }

    pub fn add(self, entity_type_id: i64, fields: Map<String, Value>) -> Call {
        match self {
            Dialect::Item => (
                "crm.item.add",
                json!({"entityTypeId": entity_type_id, "fields": fields}),
            ),
            Dialect::Legacy => (
                match legacy_entity(entity_type_id) {
                    "contact" => "crm.contact.add",
                    "company" => "crm.company.add",
                    _ => "crm.deal.add",
                },
                json!({"fields": legacy_fields(fields)}),
            ),
        }
    }

    pub fn update_deal(self, id: i64, fields: Map<String, Value>) -> Call {
        match self {
            Dialect::Item => (
                "crm.item.update",
                json!({"entityTypeId": 2, "id": id, "fields": fields}),
            ),
            Dialect::Legacy => (
                "crm.deal.update",
                json!({"id": id, "fields": legacy_fields(fields)}),
            ),
        }
    }

    /// The id of a record written by command `name` (for a create: its new
    /// id), as a `$result` reference for later commands of the same batch.
    pub fn reference(self, name: &str) -> Value {
        match self {
            Dialect::Item => json!(format!("$result[{name}][item][id]")),
            Dialect::Legacy => json!(format!("$result[{name}]")),
        }
    }

    /// The record id in the answer of an add or update.
    pub fn written_id(self, result: &Value, updated_id: Option<i64>) -> Option<i64> {
        match self {
            Dialect::Item => id_of(result["item"].get("id")),
            // crm.*.add answers the new id; crm.*.update answers `true`.
            Dialect::Legacy => match updated_id {
                Some(id) if result.as_bool() == Some(true) => Some(id),
                Some(_) => None,
                None => id_of(Some(result)),
            },
        }
    }

    pub fn set_rows(self, owner: Value, rows: Vec<Value>) -> Call {
        match self {
            Dialect::Item => (
                "crm.item.productrow.set",
                json!({"ownerType": "D", "ownerId": owner, "productRows": rows}),
            ),
            Dialect::Legacy => (
                "crm.deal.productrows.set",
                json!({"id": owner, "rows": rows.into_iter().map(|row| match row {
                    Value::Object(fields) => Value::Object(legacy_fields(fields)),
                    other => other,
                }).collect::<Vec<_>>()}),
            ),
        }
    }
}

/// A `crm.deal.*`-shaped record in `crm.item.*` shape: camelCase keys,
/// multifields (`PHONE`, `EMAIL`, ...) as `fm` rows, file links as
/// `urlMachine`.
pub fn camel_record(record: &Map<String, Value>) -> Map<String, Value> {
    let mut out = Map::new();
    let mut fm = Vec::new();
    for (key, value) in record {
        if matches!(key.as_str(), "PHONE" | "EMAIL" | "WEB" | "IM") {
            for row in value.as_array().into_iter().flatten() {
                fm.push(
                    json!({"typeId": key, "value": row["VALUE"], "valueType": row["VALUE_TYPE"]}),
                );
            }
            continue;
        }
        let value = match value {
            Value::Array(items) => Value::Array(items.iter().map(legacy_file).collect()),
            other => legacy_file(other),
        };
        out.insert(camel_name(key), value);
    }
    if !fm.is_empty() {
        out.insert("fm".into(), Value::Array(fm));
    }
    out
}

fn legacy_file(value: &Value) -> Value {
    match value.get("downloadUrl") {
        Some(url) => json!({"id": value["id"], "urlMachine": url}),
        None => value.clone(),
    }
}

/// camelCase fields to UPPER_CASE ones; `fm` rows to `PHONE`/`EMAIL`/... lists.
fn legacy_fields(fields: Map<String, Value>) -> Map<String, Value> {
    let mut out = Map::new();
    for (key, value) in fields {
        if key == "fm" {
            for row in value.as_array().into_iter().flatten() {
                let kind = scalar(&row["typeId"]);
                let list = out.entry(kind).or_insert_with(|| json!([]));
                if let Value::Array(list) = list {
                    list.push(json!({"VALUE": row["value"], "VALUE_TYPE": row["valueType"]}));
                }
            }
            continue;
        }
        out.insert(upper_name(&key), value);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legacy_names_and_records_become_item_shaped() {
        let record = json!({"ID": "3", "NAME": "Ivan", "PHONE": [{"ID": "9", "VALUE": "+1", "VALUE_TYPE": "WORK", "TYPE_ID": "PHONE"}],
                            "UF_CRM_DOCS": [{"id": 4, "showUrl": "/x", "downloadUrl": "http://h/d"}]});
        let camel = camel_record(record.as_object().unwrap());
        assert_eq!(camel["id"], "3");
        assert_eq!(
            camel["fm"],
            json!([{"typeId": "PHONE", "value": "+1", "valueType": "WORK"}])
        );
        assert_eq!(
            camel["ufCrm_DOCS"],
            json!([{"id": 4, "urlMachine": "http://h/d"}])
        );
    }

    #[test]
    fn legacy_calls_use_upper_case_and_bare_ids() {
        let fields = json!({"title": "T", "ufCrm_X": 5, "fm": [{"typeId": "PHONE", "value": "+1", "valueType": "WORK"}]});
        let (method, params) = Dialect::Legacy.add(3, fields.as_object().unwrap().clone());
        assert_eq!(method, "crm.contact.add");
        assert_eq!(
            params,
            json!({"fields": {"TITLE": "T", "UF_CRM_X": 5, "PHONE": [{"VALUE": "+1", "VALUE_TYPE": "WORK"}]}})
        );
        assert_eq!(Dialect::Legacy.written_id(&json!(42), None), Some(42));
        assert_eq!(Dialect::Legacy.written_id(&json!(true), Some(7)), Some(7));
        assert_eq!(
            Dialect::Item.written_id(&json!({"item": {"id": 9}}), None),
            Some(9)
        );
        assert_eq!(
            Dialect::Legacy.first_id(&json!([{"ID": "12"}, {"ID": "4"}])),
            Some(4)
        );
        assert_eq!(Dialect::Item.first_id(&json!({"items": []})), None);
        assert_eq!(Dialect::Legacy.reference("deal"), json!("$result[deal]"));
        let (method, params) =
            Dialect::Legacy.set_rows(json!(3), vec![json!({"productName": "A", "price": 1})]);
        assert_eq!(method, "crm.deal.productrows.set");
        assert_eq!(
            params,
            json!({"id": 3, "rows": [{"PRODUCT_NAME": "A", "PRICE": 1}]})
        );
        assert_eq!(
            Dialect::Legacy.file_ids(
                &json!({"UF_CRM_DOCS": [{"id": 3, "downloadUrl": "x"}]}),
                "ufCrm_DOCS"
            ),
            vec![3]
        );
    }
}
