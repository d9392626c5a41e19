//! Portal-level methods: `scope`, `method.get`, `methods`, `server.time`,
//! `user.get`, `im.notify`.

use serde_json::{Map, Value, json};

use super::{Call, METHODS, MethodResult, Output, scope_of};
use crate::clock;
use crate::error::ApiError;
use crate::filter;
use crate::params::as_i64;

pub fn dispatch(method: &str, call: &Call<'_>) -> Option<MethodResult> {
    Some(match method {
        "scope" => Ok(Output::value(json!(call.webhook.scopes))),
        "methods" => methods(call),
        "method.get" => method_get(call),
        "server.time" => Ok(Output::value(json!(clock::iso8601(clock::now_unix())))),
        "user.get" => user_get(call),
        "im.notify" => im_notify(call),
        _ => return None,
    })
}

fn methods(call: &Call<'_>) -> MethodResult {
    let full = call.params.flag("full");
    let names: Vec<&str> = METHODS
        .iter()
        .filter(|(_, scope)| full || call.webhook.has_scope(scope))
        .map(|(name, _)| *name)
        .collect();
    Ok(Output::value(json!(names)))
}

fn method_get(call: &Call<'_>) -> MethodResult {
    let name = call.params.text("name").unwrap_or_default();
    let scope = scope_of(&name);
    Ok(Output::value(json!({
        "isExisting": scope.is_some(),
        "isAvailable": scope.is_some_and(|s| call.webhook.has_scope(s)),
    })))
}

fn user_get(call: &Call<'_>) -> MethodResult {
    let users: Vec<Map<String, Value>> = call
        .shared
        .store()
        .users
        .iter()
        .map(|u| {
            json!({
                "ID": u.id.to_string(),
                "XML_ID": format!("user_{}", u.id),
                "ACTIVE": u.active,
                "NAME": u.name,
                "LAST_NAME": u.last_name,
                "SECOND_NAME": "",
                "EMAIL": u.email,
                "USER_TYPE": "employee",
                "UF_DEPARTMENT": [1],
            })
            .as_object()
            .cloned()
            .unwrap_or_default()
        })
        .collect();
    // Filters come as FILTER or as top-level keys (`ID`, `EMAIL`, `ACTIVE`).
    let mut filter_map = call.params.object("FILTER");
    if filter_map.is_empty() {
        filter_map = call.params.object("filter");
    }
    for (key, value) in &call.params.0 {
        let upper = key.to_ascii_uppercase();
        if !matches!(
            upper.as_str(),
            "FILTER" | "SORT" | "ORDER" | "START" | "ADMIN_MODE"
        ) {
            filter_map.insert(key.clone(), value.clone());
        }
    }
    let resolve = |name: &str| Some(name.to_ascii_uppercase());
    let conditions = filter::parse_filter(&filter_map, &resolve).unwrap_or_default();
    let matching: Vec<&Map<String, Value>> = users
        .iter()
        .filter(|u| filter::matches(u, &conditions))
        .collect();
    let page = filter::page(matching.len(), call.params.int("start").unwrap_or(0));
    let rows: Vec<Value> = matching[page.from..page.to]
        .iter()
        .map(|u| Value::Object((*u).clone()))
        .collect();
    Ok(Output::page(Value::Array(rows), page.next, page.total))
}

fn im_notify(call: &Call<'_>) -> MethodResult {
    let to = call.params.get("to").and_then(as_i64).unwrap_or(0);
    let message = call.params.text("message").unwrap_or_default();
    if message.trim().is_empty() {
        return Err(ApiError::new(
            http::StatusCode::BAD_REQUEST,
            "MESSAGE_EMPTY",
            "Message can't be empty",
        ));
    }
    let mut state = call.shared.store();
    if !state.users.iter().any(|u| u.id == to) {
        return Err(ApiError::new(
            http::StatusCode::BAD_REQUEST,
            "USER_ID_EMPTY",
            "Recipient user id can't be empty",
        ));
    }
    let id = state.notifications.len() as i64 + 1;
    state.notifications.push(json!({
        "id": id,
        "to": to,
        "from": call.webhook.user_id,
        "message": message,
        "type": call.params.text("type").unwrap_or_else(|| "USER".into()),
    }));
    Ok(Output::value(json!(id)))
}
