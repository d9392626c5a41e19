//! `crm.item.*` for deals (2), contacts (3) and companies (4): camelCase
//! fields, typed values, `{item}` / `{items}` wrappers.

use serde_json::{Map, Value, json};

use super::{Call, MethodResult, Output};
use crate::error::ApiError;
use crate::fields::EntityType;
use crate::filter;
use crate::params::{as_list, scalar_text};
use crate::store::values::Api;
use crate::store::{State, WriteCtx, not_found};

pub fn dispatch(method: &str, call: &Call<'_>) -> Option<MethodResult> {
    Some(match method {
        "crm.item.get" => get(call),
        "crm.item.add" => add(call),
        "crm.item.update" => update(call),
        "crm.item.list" => list(call),
        "crm.item.fields" => fields(call),
        _ => return None,
    })
}

fn entity(call: &Call<'_>) -> Result<EntityType, ApiError> {
    call.params
        .int("entityTypeId")
        .and_then(EntityType::from_type_id)
        .ok_or_else(|| ApiError::not_found("Smart process not found"))
}

fn id(call: &Call<'_>) -> Result<i64, ApiError> {
    call.params
        .int("id")
        .filter(|id| *id > 0)
        .ok_or_else(|| ApiError::invalid_arg("Required parameter \"id\" is missing"))
}

fn write_ctx(call: &Call<'_>) -> WriteCtx {
    WriteCtx {
        user_id: call.webhook.user_id,
        api: Api::Item,
        original_uf_names: call.params.flag("useOriginalUfNames"),
    }
}

fn render_one(
    call: &Call<'_>,
    state: &State,
    entity: EntityType,
    id: i64,
) -> Result<Value, ApiError> {
    let record = state
        .get(entity, id)
        .ok_or_else(|| not_found(entity, id, Api::Item))?;
    let rendered = state.render(
        entity,
        record,
        Api::Item,
        &call.render_ctx(),
        call.params.flag("useOriginalUfNames"),
    );
    Ok(Value::Object(rendered))
}

fn get(call: &Call<'_>) -> MethodResult {
    let (entity, id) = (entity(call)?, id(call)?);
    let state = call.shared.store();
    Ok(Output::value(
        json!({"item": render_one(call, &state, entity, id)?}),
    ))
}

fn fields_param(call: &Call<'_>) -> Result<Map<String, Value>, ApiError> {
    match call.params.get("fields") {
        Some(Value::Object(map)) => Ok(map.clone()),
        _ => Err(ApiError::invalid_arg(
            "Required parameter \"fields\" is missing",
        )),
    }
}

fn add(call: &Call<'_>) -> MethodResult {
    let entity = entity(call)?;
    let input = fields_param(call)?;
    let (item, change) = {
        let mut state = call.shared.store();
        let (id, change) = state.add(entity, &input, write_ctx(call))?;
        (render_one(call, &state, entity, id)?, change)
    };
    call.shared.outbound.on_change(call.shared, &change);
    Ok(Output::value(json!({"item": item})))
}

fn update(call: &Call<'_>) -> MethodResult {
    let (entity, id) = (entity(call)?, id(call)?);
    let input = fields_param(call)?;
    let (item, change) = {
        let mut state = call.shared.store();
        let change = state.update(entity, id, &input, write_ctx(call))?;
        (render_one(call, &state, entity, id)?, change)
    };
    call.shared.outbound.on_change(call.shared, &change);
    Ok(Output::value(json!({"item": item})))
}

/// Item-API field names in filters, orders and selects: camelCase, or the
/// UPPER_CASE name (the official SDKs page with `>ID` and `order[ID]`).
pub fn resolve_item_field(state: &State, entity: EntityType, name: &str) -> Option<String> {
    let defs = state.defs(entity);
    defs.iter()
        .filter(|d| d.in_item_api())
        .find(|d| d.camel == name)
        .or_else(|| {
            defs.iter()
                .filter(|d| d.in_item_api())
                .find(|d| d.upper.eq_ignore_ascii_case(name) || d.camel.eq_ignore_ascii_case(name))
        })
        .map(|d| d.camel.clone())
}

fn list(call: &Call<'_>) -> MethodResult {
    let entity = entity(call)?;
    let original_uf = call.params.flag("useOriginalUfNames");
    let state = call.shared.store();
    let resolve = |name: &str| resolve_item_field(&state, entity, name);
    let conditions =
        filter::parse_filter(&call.params.object("filter"), &resolve).map_err(|field| {
            ApiError::invalid_arg(format!(
                "Invalid filter: field '{field}' is not allowed in filter"
            ))
        })?;
    let order_param = call.params.object("order");
    for (field, dir) in &order_param {
        let dir = scalar_text(dir);
        if !dir.eq_ignore_ascii_case("asc") && !dir.eq_ignore_ascii_case("desc") {
            return Err(ApiError::invalid_arg(format!(
                "Invalid order: allowed sort directions are ASC, DESC. But got '{dir}' for field '{field}'"
            )));
        }
    }
    let mut order = filter::parse_order(&order_param, &resolve).map_err(|field| {
        ApiError::invalid_arg(format!(
            "Invalid order: field '{field}' is not allowed in order"
        ))
    })?;
    if order.is_empty() {
        order.push(("id".into(), false));
    }
    let select: Vec<String> = call
        .params
        .get("select")
        .map(as_list)
        .unwrap_or_default()
        .iter()
        .map(scalar_text)
        .collect();
    let select_all = select.is_empty() || select.iter().any(|s| s == "*");
    let mut selected: Vec<String> = select.iter().filter_map(|s| resolve(s)).collect();
    selected.push("id".into());

    let empty = std::collections::BTreeMap::new();
    let records = state.records.get(&entity).unwrap_or(&empty);
    let mut matching: Vec<&Map<String, Value>> = records
        .values()
        .filter(|r| filter::matches(r, &conditions))
        .collect();
    filter::sort(&mut matching, &order);
    let page = filter::page(matching.len(), call.params.int("start").unwrap_or(0));
    let ctx = call.render_ctx();
    let defs = state.defs(entity);
    let items: Vec<Value> = matching[page.from..page.to]
        .iter()
        .map(|record| {
            let rendered = state.render(entity, record, Api::Item, &ctx, original_uf);
            let kept = rendered.into_iter().filter(|(key, _)| {
                if select_all {
                    return true;
                }
                let camel = defs
                    .iter()
                    .find(|d| &d.camel == key || &d.upper == key)
                    .map(|d| d.camel.as_str());
                camel.is_some_and(|c| c != "fm" && selected.iter().any(|s| s == c))
            });
            Value::Object(kept.collect())
        })
        .collect();
    Ok(Output::page(json!({"items": items}), page.next, page.total))
}

fn fields(call: &Call<'_>) -> MethodResult {
    let entity = entity(call)?;
    let original_uf = call.params.flag("useOriginalUfNames");
    let state = call.shared.store();
    let fields: Map<String, Value> = state
        .defs(entity)
        .iter()
        .filter(|d| d.in_item_api())
        .map(|d| {
            let key = if original_uf && d.user_field {
                d.upper.clone()
            } else {
                d.camel.clone()
            };
            (key, d.describe_item())
        })
        .collect();
    Ok(Output::value(json!({"fields": fields})))
}
