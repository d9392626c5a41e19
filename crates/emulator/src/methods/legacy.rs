//! The deprecated `crm.deal.*`, `crm.contact.*` and `crm.company.*` methods:
//! UPPER_CASE fields, values as strings, bare ids and `true` as results.

use serde_json::{Map, Value, json};

use super::{Call, MethodResult, Output};
use crate::error::ApiError;
use crate::fields::{EntityType, FieldKind};
use crate::filter;
use crate::params::{as_list, scalar_text};
use crate::store::values::Api;
use crate::store::{State, WriteCtx, not_found};

pub fn dispatch(method: &str, call: &Call<'_>) -> Option<MethodResult> {
    let rest = method.strip_prefix("crm.")?;
    let (family, action) = rest.split_once('.')?;
    let entity = match family {
        "deal" => EntityType::Deal,
        "contact" => EntityType::Contact,
        "company" => EntityType::Company,
        _ => return None,
    };
    Some(match action {
        "get" => get(call, entity),
        "add" => add(call, entity),
        "update" => update(call, entity),
        "list" => list(call, entity),
        "fields" => fields(call, entity),
        _ => return None,
    })
}

fn write_ctx(call: &Call<'_>) -> WriteCtx {
    WriteCtx {
        user_id: call.webhook.user_id,
        api: Api::Legacy,
        original_uf_names: false,
    }
}

fn id(call: &Call<'_>) -> Result<i64, ApiError> {
    call.params
        .int("id")
        .filter(|id| *id > 0)
        .ok_or_else(|| ApiError::legacy("ID is not defined or invalid."))
}

fn fields_param(call: &Call<'_>) -> Result<Map<String, Value>, ApiError> {
    match call.params.get("fields") {
        Some(Value::Object(map)) => Ok(map.clone()),
        _ => Err(ApiError::legacy("Parameter 'fields' must be array.")),
    }
}

fn get(call: &Call<'_>, entity: EntityType) -> MethodResult {
    let id = id(call)?;
    let state = call.shared.store();
    let record = state
        .get(entity, id)
        .ok_or_else(|| not_found(entity, id, Api::Legacy))?;
    let rendered = state.render(entity, record, Api::Legacy, &call.render_ctx(), false);
    Ok(Output::value(Value::Object(rendered)))
}

fn add(call: &Call<'_>, entity: EntityType) -> MethodResult {
    let input = fields_param(call)?;
    let (id, change) = call
        .shared
        .store()
        .add(entity, &input, write_ctx(call))
        .map_err(as_legacy)?;
    call.shared.outbound.on_change(call.shared, &change);
    Ok(Output::value(json!(id)))
}

fn update(call: &Call<'_>, entity: EntityType) -> MethodResult {
    let id = id(call)?;
    let input = fields_param(call)?;
    let change = call
        .shared
        .store()
        .update(entity, id, &input, write_ctx(call))?;
    call.shared.outbound.on_change(call.shared, &change);
    Ok(Output::value(json!(true)))
}

/// The old CRM classes report validation problems as a bare 400 with an
/// empty error code and the message in `error_description`.
fn as_legacy(err: ApiError) -> ApiError {
    if err.status == http::StatusCode::BAD_REQUEST {
        ApiError::legacy(err.description)
    } else {
        err
    }
}

fn resolve_legacy(state: &State, entity: EntityType, name: &str) -> Option<String> {
    state
        .defs(entity)
        .iter()
        .find(|d| {
            d.in_legacy_api() && d.multifield_type.is_none() && d.legacy.eq_ignore_ascii_case(name)
        })
        .map(|d| d.camel.clone())
}

fn list(call: &Call<'_>, entity: EntityType) -> MethodResult {
    let state = call.shared.store();
    let resolve = |name: &str| resolve_legacy(&state, entity, name);
    // The old CRM list methods skip filter keys they do not know.
    let known: Map<String, Value> = call
        .params
        .object("filter")
        .into_iter()
        .filter(|(key, _)| {
            key.eq_ignore_ascii_case("logic") || resolve(filter::split_key(key).1).is_some()
        })
        .collect();
    let conditions = filter::parse_filter(&known, &resolve).unwrap_or_default();
    // PHONE / EMAIL / WEB / IM filter on any row of that multifield by value.
    let multifield_filters: Vec<(String, Vec<String>)> = call
        .params
        .object("filter")
        .iter()
        .filter_map(|(key, value)| {
            let kind = key.trim_start_matches('=').to_ascii_uppercase();
            let is_multifield = entity != EntityType::Deal
                && matches!(kind.as_str(), "PHONE" | "EMAIL" | "WEB" | "IM");
            is_multifield.then(|| {
                (
                    kind,
                    as_list(value)
                        .iter()
                        .map(|v| scalar_text(v).to_lowercase())
                        .collect(),
                )
            })
        })
        .collect();
    let has_multifield = |record: &Map<String, Value>| {
        let rows = as_list(record.get("fm").unwrap_or(&Value::Null));
        multifield_filters.iter().all(|(kind, wanted)| {
            rows.iter().any(|row| {
                row["typeId"] == kind.as_str()
                    && wanted.contains(&scalar_text(&row["value"]).to_lowercase())
            })
        })
    };
    let order_param = call.params.object("order");
    let mut order: Vec<(String, bool)> = order_param
        .iter()
        .filter_map(|(key, dir)| {
            resolve(key).map(|f| (f, scalar_text(dir).eq_ignore_ascii_case("desc")))
        })
        .collect();
    if order.is_empty() {
        order.push(("id".into(), false));
    }
    let select: Vec<String> = call
        .params
        .get("select")
        .map(as_list)
        .unwrap_or_default()
        .iter()
        .map(|s| scalar_text(s).to_ascii_uppercase())
        .collect();
    let defs = state.defs(entity);
    let wanted = |legacy: &str| {
        let Some(def) = defs.iter().find(|d| d.legacy == legacy) else {
            return false;
        };
        let standard = !def.user_field && def.kind != FieldKind::Multifield;
        if standard && (select.is_empty() || select.iter().any(|s| s == "*")) {
            return true;
        }
        (def.user_field && select.iter().any(|s| s == "UF_*"))
            || select.iter().any(|s| s == legacy)
            || legacy == "ID"
    };
    let empty = std::collections::BTreeMap::new();
    let records = state.records.get(&entity).unwrap_or(&empty);
    let mut matching: Vec<&Map<String, Value>> = records
        .values()
        .filter(|r| filter::matches(r, &conditions) && has_multifield(r))
        .collect();
    filter::sort(&mut matching, &order);
    let page = filter::page(matching.len(), call.params.int("start").unwrap_or(0));
    let ctx = call.render_ctx();
    let rows: Vec<Value> = matching[page.from..page.to]
        .iter()
        .map(|record| {
            let rendered = state.render(entity, record, Api::Legacy, &ctx, false);
            Value::Object(rendered.into_iter().filter(|(k, _)| wanted(k)).collect())
        })
        .collect();
    Ok(Output::page(Value::Array(rows), page.next, page.total))
}

fn fields(call: &Call<'_>, entity: EntityType) -> MethodResult {
    let state = call.shared.store();
    let fields: Map<String, Value> = state
        .defs(entity)
        .iter()
        .filter(|d| d.in_legacy_api())
        .map(|d| (d.legacy.clone(), d.describe_legacy()))
        .collect();
    Ok(Output::value(Value::Object(fields)))
}
