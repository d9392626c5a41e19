//! Field values: turning what a client sends into the stored form, and the
//! stored form into what `crm.item.*` (typed) or `crm.deal.*` (strings) shows.

use std::collections::BTreeMap;

use base64::Engine;
use serde_json::{Value, json};

use crate::error::ApiError;
use crate::fields::{FieldDef, FieldKind};
use crate::params::{as_f64, as_i64, as_list, number, scalar_text};

/// Which API family is asking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    Item,
    Legacy,
}

/// What rendering needs to build file links that work for the caller.
#[derive(Debug, Clone)]
pub struct RenderCtx {
    pub base_url: String,
    /// `/rest/1/SECRET`: file links download with the caller's webhook.
    pub auth_path: String,
    /// An application's access token: its file links carry `auth=` (as
    /// the `urlMachine` example in b24restdocs
    /// `api-reference/files/how-to-update-files.md` shows).
    pub access_token: Option<String>,
}

#[derive(Clone)]
pub struct StoredFile {
    pub name: String,
    pub data: Vec<u8>,
}

impl std::fmt::Debug for StoredFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredFile")
            .field("name", &self.name)
            .field("bytes", &self.data.len())
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Default)]
pub struct FileStore {
    pub files: BTreeMap<i64, StoredFile>,
    next_id: i64,
}

impl FileStore {
    fn store(&mut self, name: String, data: Vec<u8>) -> i64 {
        self.next_id += 1;
        self.files.insert(self.next_id, StoredFile { name, data });
        self.next_id
    }
}

/// Converts a scalar value for a non-file, non-multifield field.
pub fn normalize_scalar(def: &FieldDef, raw: &Value) -> Result<Value, ApiError> {
    if def.multiple {
        let items = as_list(raw);
        let mut out = Vec::with_capacity(items.len());
        for item in &items {
            let value = normalize_one(def, item)?;
            if !value.is_null() {
                out.push(value);
            }
        }
        return Ok(Value::Array(out));
    }
    normalize_one(def, raw)
}

fn is_empty(raw: &Value) -> bool {
    match raw {
        Value::Null => true,
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        _ => false,
    }
}

fn normalize_one(def: &FieldDef, raw: &Value) -> Result<Value, ApiError> {
    if is_empty(raw) {
        return Ok(Value::Null);
    }
    let invalid = || ApiError::field_not_valid(&def.title);
    Ok(match def.kind {
        FieldKind::Integer
        | FieldKind::User
        | FieldKind::Category
        | FieldKind::CompanyRef
        | FieldKind::ContactRef
        | FieldKind::LeadRef => json!(as_i64(raw).ok_or_else(invalid)?),
        FieldKind::Double => number(as_f64(raw).ok_or_else(invalid)?),
        FieldKind::Flag => {
            let text = scalar_text(raw).to_ascii_uppercase();
            match text.as_str() {
                "Y" | "1" | "TRUE" => json!("Y"),
                "N" | "0" | "FALSE" | "" => json!("N"),
                _ => return Err(invalid()),
            }
        }
        FieldKind::Enumeration => {
            let id = as_i64(raw).ok_or_else(invalid)?;
            if !def.options.iter().any(|o| o.id == id) {
                return Err(invalid());
            }
            json!(id)
        }
        FieldKind::Url => {
            let text = scalar_text(raw);
            json!(text.trim())
        }
        FieldKind::CrmLink => {
            let text = scalar_text(raw).trim().to_ascii_uppercase();
            let (prefix, id) = text.split_once('_').ok_or_else(invalid)?;
            let kind = match prefix {
                "L" => "LEAD",
                "D" => "DEAL",
                "C" => "CONTACT",
                "CO" => "COMPANY",
                _ => return Err(invalid()),
            };
            let id_ok = id.parse::<i64>().is_ok_and(|id| id > 0);
            if !id_ok || !def.crm_types.iter().any(|t| t == kind) {
                return Err(invalid());
            }
            json!(format!("{prefix}_{id}"))
        }
        FieldKind::Money => {
            let text = scalar_text(raw);
            let (amount, currency) = text.split_once('|').unwrap_or((text.as_str(), ""));
            let currency_ok = currency.is_empty()
                || (currency.len() == 3 && currency.chars().all(|c| c.is_ascii_uppercase()));
            if amount.trim().parse::<f64>().is_err() || !currency_ok {
                return Err(invalid());
            }
            json!(text)
        }
        _ => json!(scalar_text(raw)),
    })
}

/// Applies an incoming file value. `[name, base64]` and `{fileData: [...]}`
/// upload; `{id: N}` or `N` keeps an existing file of this field; for a
/// multiple field, existing files left out are deleted (as `crm.item.update`).
pub fn normalize_files(
    store: &mut FileStore,
    def: &FieldDef,
    raw: &Value,
    existing: Option<&Value>,
) -> Result<Value, ApiError> {
    let existing_ids: Vec<i64> = existing
        .map(as_list)
        .unwrap_or_default()
        .iter()
        .filter_map(as_i64)
        .collect();
    let items: Vec<Value> = if def.multiple {
        match raw {
            // A bare upload pair is one file, not two values.
            Value::Array(pair) if is_upload_pair(pair) => vec![raw.clone()],
            other => as_list(other),
        }
    } else {
        vec![raw.clone()]
    };
    let mut kept = Vec::new();
    for item in &items {
        if is_empty(item) {
            continue;
        }
        if let Some((name, data)) = upload_of(item).transpose()? {
            kept.push(store.store(name, data));
            continue;
        }
        let id = match item {
            Value::Object(map) => map.get("id").or_else(|| map.get("ID")).and_then(as_i64),
            other => as_i64(other),
        };
        match id {
            Some(id) if existing_ids.contains(&id) => kept.push(id),
            _ => return Err(ApiError::field_not_valid(&def.title)),
        }
    }
    let removed: Vec<i64> = existing_ids
        .into_iter()
        .filter(|id| !kept.contains(id))
        .collect();
    for id in removed {
        store.files.remove(&id);
    }
    if def.multiple {
        Ok(json!(kept))
    } else {
        Ok(kept.first().map(|id| json!(id)).unwrap_or(Value::Null))
    }
}

fn is_upload_pair(pair: &[Value]) -> bool {
    pair.len() == 2 && pair.iter().all(Value::is_string)
}

/// Recognises `[name, base64]`, `{"fileData": [name, base64]}` (and the
/// PHP-form spelling `{"0": name, "1": base64}`).
fn upload_of(item: &Value) -> Option<Result<(String, Vec<u8>), ApiError>> {
    let pair: Vec<Value> = match item {
        Value::Array(pair) if is_upload_pair(pair) => pair.clone(),
        Value::Object(map) if map.contains_key("fileData") => as_list(&map["fileData"]),
        Value::Object(map) if map.contains_key("0") && map.contains_key("1") => as_list(item),
        _ => return None,
    };
    let (Some(Value::String(name)), Some(Value::String(encoded))) = (pair.first(), pair.get(1))
    else {
        return Some(Err(ApiError::invalid_arg(
            "File data must be [name, base64]",
        )));
    };
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .map_err(|_| ApiError::invalid_arg("File content is not valid base64"));
    Some(decoded.and_then(|data| {
        if data.is_empty() {
            Err(ApiError::invalid_arg("File content is empty"))
        } else {
            Ok((name.clone(), data))
        }
    }))
}

/// Merges incoming multifield rows into the existing ones: a row without
/// `ID` is appended (so resending duplicates), a row with `ID` replaces that
/// row, and a row with `ID` and an empty `VALUE` deletes it.
pub fn merge_multifields(
    existing: &[Value],
    incoming: &[(String, Value)],
    next_id: &mut i64,
) -> Result<Vec<Value>, ApiError> {
    let mut rows: Vec<Value> = existing.to_vec();
    for (type_id, row) in incoming {
        let Value::Object(map) = row else {
            return Err(ApiError::invalid_arg("Multifield value must be an object"));
        };
        let lookup = |keys: &[&str]| keys.iter().find_map(|k| map.get(*k)).map(scalar_text);
        let value = lookup(&["VALUE", "value"]).unwrap_or_default();
        let value_type = lookup(&["VALUE_TYPE", "valueType"]).unwrap_or_else(|| "WORK".into());
        let row_id = ["ID", "id"]
            .iter()
            .find_map(|k| map.get(*k))
            .and_then(as_i64);
        match row_id {
            Some(id) => {
                let position = rows.iter().position(|r| r["id"] == json!(id));
                let Some(position) = position else {
                    return Err(ApiError::invalid_arg(format!(
                        "Multifield row {id} not found"
                    )));
                };
                if value.is_empty() {
                    rows.remove(position);
                } else {
                    rows[position] = json!({"id": id, "typeId": type_id, "valueType": value_type, "value": value});
                }
            }
            None if value.is_empty() => {}
            None => {
                *next_id += 1;
                rows.push(json!({"id": *next_id, "typeId": type_id, "valueType": value_type, "value": value}));
            }
        }
    }
    Ok(rows)
}

/// A stored value as the API family shows it.
pub fn render(
    def: &FieldDef,
    stored: Option<&Value>,
    api: Api,
    ctx: &RenderCtx,
    owner: (i64, i64),
) -> Value {
    let stored = stored.unwrap_or(&Value::Null);
    if let Some(type_id) = def.multifield_type {
        let rows: Vec<Value> = as_list(stored)
            .into_iter()
            .filter(|r| r["typeId"] == json!(type_id))
            .map(|r| {
                json!({
                    "ID": scalar_text(&r["id"]),
                    "VALUE_TYPE": r["valueType"],
                    "VALUE": r["value"],
                    "TYPE_ID": r["typeId"],
                })
            })
            .collect();
        return if rows.is_empty() {
            Value::Null
        } else {
            Value::Array(rows)
        };
    }
    // `crm.item.*` shows a multiple field without values as `[]` (the
    // cleared field in b24restdocs `api-reference/files/how-to-update-files.md`,
    // "To delete all files from the field, pass an empty array").
    if api == Api::Item && def.multiple && stored.is_null() {
        return json!([]);
    }
    if def.kind == FieldKind::File {
        let render_file = |id: &Value| file_link(def, id, api, ctx, owner);
        return match stored {
            Value::Array(ids) => Value::Array(ids.iter().map(render_file).collect()),
            Value::Null => Value::Null,
            id => render_file(id),
        };
    }
    match api {
        Api::Item => stored.clone(),
        Api::Legacy => match stored {
            Value::Array(items) => {
                Value::Array(items.iter().map(|v| legacy_scalar(def, v)).collect())
            }
            other => legacy_scalar(def, other),
        },
    }
}

fn legacy_scalar(def: &FieldDef, value: &Value) -> Value {
    match value {
        Value::Null => Value::Null,
        Value::Number(n) if def.kind == FieldKind::Double => {
            json!(format!("{:.2}", n.as_f64().unwrap_or(0.0)))
        }
        Value::Number(n) => json!(n.to_string()),
        other => other.clone(),
    }
}

fn file_link(def: &FieldDef, id: &Value, api: Api, ctx: &RenderCtx, owner: (i64, i64)) -> Value {
    let (entity_type_id, record_id) = owner;
    let file_id = scalar_text(id);
    let token = format!("{entity_type_id}.{record_id}.{}.{file_id}", def.upper);
    let mut machine = format!(
        "{}{}/crm.controller.item.getFile/?token={token}",
        ctx.base_url, ctx.auth_path
    );
    if let Some(access_token) = &ctx.access_token {
        machine.push_str("&auth=");
        machine.push_str(access_token);
    }
    match api {
        Api::Item => json!({
            "id": id,
            "url": format!(
                "{}/bitrix/services/main/ajax.php?action=crm.controller.item.getFile&SITE_ID=s1&entityTypeId={entity_type_id}&id={record_id}&fieldName={}&fileId={file_id}",
                ctx.base_url, def.upper
            ),
            "urlMachine": machine,
        }),
        Api::Legacy => json!({
            "id": id,
            "showUrl": format!("/bitrix/components/bitrix/crm.deal.show/show_file.php?ownerId={record_id}&fieldName={}&dynamic=Y&fileId={file_id}", def.upper),
            "downloadUrl": machine,
        }),
    }
}

/// Decodes a file token from a download link back to its parts.
pub fn parse_file_token(token: &str) -> Option<(i64, i64, String, i64)> {
    let mut parts = token.split('.');
    let entity = parts.next()?.parse().ok()?;
    let record = parts.next()?.parse().ok()?;
    let field = parts.next()?.to_string();
    let file = parts.next()?.parse().ok()?;
    parts
        .next()
        .is_none()
        .then_some((entity, record, field, file))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fields::{EnumOption, FieldDef};

    fn files_field(multiple: bool) -> FieldDef {
        FieldDef::user_field(
            "UF_CRM_DOCS",
            None,
            FieldKind::File,
            "Docs",
            multiple,
            vec![],
        )
    }

    #[test]
    fn enumeration_accepts_only_known_option_ids() {
        let def = FieldDef::user_field(
            "UF_CRM_COLOR",
            None,
            FieldKind::Enumeration,
            "Color",
            false,
            vec![EnumOption {
                id: 45,
                value: "Red".into(),
            }],
        );
        assert_eq!(normalize_scalar(&def, &json!("45")).unwrap(), json!(45));
        assert_eq!(
            normalize_scalar(&def, &json!(46)).unwrap_err().code,
            "CRM_FIELD_ERROR_VALUE_NOT_VALID"
        );
    }

    #[test]
    fn file_update_omitting_existing_ids_deletes_them() {
        let mut store = FileStore::default();
        let def = files_field(true);
        let first = normalize_files(
            &mut store,
            &def,
            &json!([["a.txt", "YQ=="], ["b.txt", "Yg=="]]),
            None,
        )
        .unwrap();
        assert_eq!(first, json!([1, 2]));
        let second = normalize_files(
            &mut store,
            &def,
            &json!([{"id": 2}, ["c.txt", "Yw=="]]),
            Some(&first),
        )
        .unwrap();
        assert_eq!(second, json!([2, 3]));
        assert!(!store.files.contains_key(&1));
        assert!(normalize_files(&mut store, &def, &json!([{"id": 99}]), Some(&second)).is_err());
    }

    #[test]
    fn single_upload_pair_is_one_file() {
        let mut store = FileStore::default();
        let value = normalize_files(
            &mut store,
            &files_field(false),
            &json!({"fileData": ["x.bin", "AAEC"]}),
            None,
        )
        .unwrap();
        assert_eq!(value, json!(1));
        assert_eq!(store.files[&1].data, vec![0, 1, 2]);
    }

    #[test]
    fn multifields_append_without_id_and_edit_with_id() {
        let mut next = 0;
        let rows = merge_multifields(
            &[],
            &[("PHONE".into(), json!({"VALUE": "+1", "VALUE_TYPE": "WORK"}))],
            &mut next,
        )
        .unwrap();
        let again = merge_multifields(
            &rows,
            &[("PHONE".into(), json!({"VALUE": "+1", "VALUE_TYPE": "WORK"}))],
            &mut next,
        )
        .unwrap();
        assert_eq!(again.len(), 2, "resending without ID appends");
        let edited = merge_multifields(
            &again,
            &[("PHONE".into(), json!({"ID": "1", "VALUE": ""}))],
            &mut next,
        )
        .unwrap();
        assert_eq!(edited.len(), 1);
        assert_eq!(edited[0]["id"], json!(2));
    }

    #[test]
    fn file_tokens_round_trip() {
        assert_eq!(
            parse_file_token("2.7.UF_CRM_DOCS.3"),
            Some((2, 7, "UF_CRM_DOCS".into(), 3))
        );
        assert_eq!(parse_file_token("2.7"), None);
    }
}
