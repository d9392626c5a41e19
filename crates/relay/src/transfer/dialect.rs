//! The two ways of writing CRM records on a target: `crm.item.*` (camelCase,
//! `{item: ...}` answers) and, for boxes without it, the deprecated
//! `crm.deal.*` / `crm.contact.*` / `crm.company.*` (UPPER_CASE fields,
//! bare ids, multifields as `PHONE: [{VALUE, VALUE_TYPE}]`, files as
//! `{fileData: [name, base64]}`).

use serde_json::{Map, Value, json};

use crate::mapping::{scalar, upper_name};
use crate::portals::id_of;

/// Which API family a portal's records are written with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Item,
    Legacy,
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
