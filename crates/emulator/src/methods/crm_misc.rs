//! The CRM helpers around records: `crm.status.list`, `crm.category.list`,
//! `crm.duplicate.findbycomm`, `crm.timeline.comment.*`, and product rows.

use serde_json::{Map, Value, json};

use super::{Call, MethodResult, Output, productrows};
use crate::clock;
use crate::error::ApiError;
use crate::fields::EntityType;
use crate::filter;
use crate::params::{as_i64, as_list, get_ci, scalar_text};

pub fn dispatch(method: &str, call: &Call<'_>) -> Option<MethodResult> {
    Some(match method {
        "crm.status.list" => status_list(call),
        "crm.category.list" => category_list(call),
        "crm.duplicate.findbycomm" => find_by_comm(call),
        "crm.timeline.comment.add" => comment_add(call),
        "crm.timeline.comment.list" => comment_list(call),
        other => return productrows::dispatch(other, call),
    })
}

const FIXED_STATUSES: &[(&str, &[(&str, &str)])] = &[
    (
        "SOURCE",
        &[
            ("CALL", "Call"),
            ("EMAIL", "E-Mail"),
            ("WEB", "Website"),
            ("ADVERTISING", "Advertising"),
            ("OTHER", "Other"),
        ],
    ),
    (
        "DEAL_TYPE",
        &[
            ("SALE", "Sales"),
            ("COMPLEX", "Complex sale"),
            ("GOODS", "Merchandise sale"),
            ("SERVICES", "Service sale"),
            ("SERVICE", "After-sales service"),
        ],
    ),
    (
        "CONTACT_TYPE",
        &[
            ("CLIENT", "Clients"),
            ("SUPPLIER", "Suppliers"),
            ("PARTNER", "Partners"),
            ("OTHER", "Other"),
        ],
    ),
    (
        "COMPANY_TYPE",
        &[
            ("CUSTOMER", "Client"),
            ("SUPPLIER", "Supplier"),
            ("COMPETITOR", "Competitor"),
            ("PARTNER", "Partner"),
            ("OTHER", "Other"),
        ],
    ),
];

fn status_entries(call: &Call<'_>) -> Vec<Map<String, Value>> {
    let state = call.shared.store();
    let mut entries = Vec::new();
    let mut next_id = 0;
    let mut push = |entity_id: &str,
                    status_id: &str,
                    name: &str,
                    sort: usize,
                    category: Option<i64>,
                    semantics: Option<&str>| {
        next_id += 1;
        let extra_semantics = match semantics {
            Some("S") => "success",
            Some("F") => "failure",
            _ => "process",
        };
        let mut entry = json!({
            "ID": next_id.to_string(),
            "ENTITY_ID": entity_id,
            "STATUS_ID": status_id,
            "NAME": name,
            "NAME_INIT": name,
            "SORT": (sort * 10).to_string(),
            "SYSTEM": "N",
            "COLOR": "#39A8EF",
            "SEMANTICS": semantics.filter(|s| *s != "P"),
        });
        if let Some(category) = category {
            // The general pipeline's stages show no category id.
            entry["CATEGORY_ID"] = if category == 0 {
                Value::Null
            } else {
                json!(category.to_string())
            };
            entry["EXTRA"] = json!({"SEMANTICS": extra_semantics, "COLOR": "#39A8EF"});
        }
        entries.push(entry.as_object().cloned().unwrap_or_default());
    };
    for pipeline in &state.pipelines {
        let entity_id = if pipeline.id == 0 {
            "DEAL_STAGE".to_string()
        } else {
            format!("DEAL_STAGE_{}", pipeline.id)
        };
        for (i, stage) in pipeline.stages.iter().enumerate() {
            push(
                &entity_id,
                &stage.id,
                &stage.name,
                i + 1,
                Some(pipeline.id),
                Some(&stage.semantics),
            );
        }
    }
    for (entity_id, statuses) in FIXED_STATUSES {
        for (i, (status_id, name)) in statuses.iter().enumerate() {
            push(entity_id, status_id, name, i + 1, None, None);
        }
    }
    entries
}

fn status_list(call: &Call<'_>) -> MethodResult {
    let entries = status_entries(call);
    let resolve = |name: &str| Some(name.to_ascii_uppercase());
    let conditions =
        filter::parse_filter(&call.params.object("filter"), &resolve).unwrap_or_default();
    let mut matching: Vec<&Map<String, Value>> = entries
        .iter()
        .filter(|e| filter::matches(e, &conditions))
        .collect();
    let order = filter::parse_order(&call.params.object("order"), &resolve).unwrap_or_default();
    filter::sort(&mut matching, &order);
    let rows: Vec<Value> = matching
        .into_iter()
        .map(|e| Value::Object(e.clone()))
        .collect();
    let total = rows.len();
    Ok(Output::page(Value::Array(rows), None, Some(total)))
}

fn category_list(call: &Call<'_>) -> MethodResult {
    let entity_type_id = call.params.int("entityTypeId").unwrap_or(0);
    let entity = EntityType::from_type_id(entity_type_id)
        .ok_or_else(|| ApiError::not_found("Smart process not found"))?;
    let state = call.shared.store();
    let categories: Vec<Value> = if entity == EntityType::Deal {
        state
            .pipelines
            .iter()
            .map(|p| json!({"id": p.id, "name": p.name, "sort": p.sort, "entityTypeId": 2, "isDefault": if p.id == 0 { "Y" } else { "N" }}))
            .collect()
    } else {
        vec![
            json!({"id": 0, "name": "General", "sort": 100, "entityTypeId": entity_type_id, "isDefault": "Y"}),
        ]
    };
    let total = categories.len();
    Ok(Output::page(
        json!({"categories": categories}),
        None,
        Some(total),
    ))
}

fn normalize_comm(kind: &str, value: &str) -> String {
    if kind == "PHONE" {
        value.chars().filter(char::is_ascii_digit).collect()
    } else {
        value.trim().to_lowercase()
    }
}

fn find_by_comm(call: &Call<'_>) -> MethodResult {
    let kind = call
        .params
        .text("type")
        .unwrap_or_default()
        .to_ascii_uppercase();
    // This method words its errors in the code itself, as documented.
    let bad = |code: String, description: &str| {
        Err(ApiError::new(
            http::StatusCode::BAD_REQUEST,
            &code,
            description,
        ))
    };
    if kind.is_empty() {
        return bad(
            "Communication type is not defined".into(),
            "Parameter 'type' is required.",
        );
    }
    if kind != "PHONE" && kind != "EMAIL" {
        return bad(
            format!("Communication type '{kind}' is not supported in current context"),
            "",
        );
    }
    let values: Vec<String> = call
        .params
        .get("values")
        .map(as_list)
        .unwrap_or_default()
        .iter()
        .map(|v| normalize_comm(&kind, &scalar_text(v)))
        .filter(|v| !v.is_empty())
        .collect();
    if values.is_empty() {
        return bad(
            "Communication values is not defined".into(),
            "Parameter 'values' is required.",
        );
    }
    if values.len() > 20 {
        return bad(
            "Too many communication values".into(),
            "No more than 20 values are allowed.",
        );
    }
    let wanted = call
        .params
        .text("entity_type")
        .map(|t| t.to_ascii_uppercase());
    let state = call.shared.store();
    let mut result = Map::new();
    for entity in [EntityType::Contact, EntityType::Company] {
        if wanted.as_deref().is_some_and(|w| w != entity.upper()) {
            continue;
        }
        let ids: Vec<Value> = state
            .records
            .get(&entity)
            .into_iter()
            .flat_map(|records| records.values())
            .filter(|record| {
                as_list(record.get("fm").unwrap_or(&Value::Null))
                    .iter()
                    .any(|row| {
                        row["typeId"] == json!(kind)
                            && values.contains(&normalize_comm(&kind, &scalar_text(&row["value"])))
                    })
            })
            .filter_map(|record| record.get("id").cloned())
            .collect();
        if !ids.is_empty() {
            result.insert(entity.upper().into(), Value::Array(ids));
        }
    }
    // PHP's empty array serialises as [] rather than {}.
    Ok(Output::value(if result.is_empty() {
        json!([])
    } else {
        Value::Object(result)
    }))
}

fn owner_not_found() -> ApiError {
    ApiError::new(
        http::StatusCode::BAD_REQUEST,
        "OWNER_NOT_FOUND",
        "Owner of the item not found",
    )
}

fn comment_add(call: &Call<'_>) -> MethodResult {
    let fields = call.params.object("fields");
    let entity_id = get_ci(&fields, "ENTITY_ID").and_then(as_i64).unwrap_or(0);
    let entity_type = get_ci(&fields, "ENTITY_TYPE")
        .map(scalar_text)
        .unwrap_or_default()
        .to_ascii_lowercase();
    let comment = get_ci(&fields, "COMMENT")
        .map(scalar_text)
        .unwrap_or_default();
    let entity = EntityType::parse(&entity_type).ok_or_else(owner_not_found)?;
    if comment.trim().is_empty() {
        return Err(ApiError::invalid_arg("Empty comment"));
    }
    let mut state = call.shared.store();
    if state.get(entity, entity_id).is_none() {
        return Err(owner_not_found());
    }
    let id = state.comments.len() as i64 + 1;
    let author = get_ci(&fields, "AUTHOR_ID")
        .and_then(as_i64)
        .unwrap_or(call.webhook.user_id);
    let record = json!({
        "ID": id.to_string(),
        "CREATED": clock::iso8601(clock::now_unix()),
        "ENTITY_ID": entity_id.to_string(),
        "ENTITY_TYPE": entity_type,
        "AUTHOR_ID": author.to_string(),
        "COMMENT": comment,
        "FILES": [],
    });
    state
        .comments
        .push(record.as_object().cloned().unwrap_or_default());
    Ok(Output::value(json!(id)))
}

fn comment_list(call: &Call<'_>) -> MethodResult {
    let resolve = |name: &str| Some(name.to_ascii_uppercase());
    let conditions =
        filter::parse_filter(&call.params.object("filter"), &resolve).unwrap_or_default();
    let state = call.shared.store();
    let mut matching: Vec<&Map<String, Value>> = state
        .comments
        .iter()
        .filter(|c| filter::matches(c, &conditions))
        .collect();
    let mut order = filter::parse_order(&call.params.object("order"), &resolve).unwrap_or_default();
    if order.is_empty() {
        order.push(("ID".into(), true));
    }
    filter::sort(&mut matching, &order);
    let page = filter::page(matching.len(), call.params.int("start").unwrap_or(0));
    let rows: Vec<Value> = matching[page.from..page.to]
        .iter()
        .map(|c| Value::Object((*c).clone()))
        .collect();
    Ok(Output::page(Value::Array(rows), page.next, page.total))
}
