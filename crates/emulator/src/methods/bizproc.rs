//! Application-only methods: automation rules (`bizproc.robot.*`), their
//! answers (`bizproc.event.send`) and event bindings (`event.*`). Through an
//! incoming webhook the registering ones answer `ACCESS_DENIED
//! "Application context required"`, as Bitrix24 does.

use http::StatusCode;
use serde_json::{Map, Value, json};

use super::{Call, MethodResult, Output};
use crate::app::{Application, EventBinding};
use crate::error::ApiError;
use crate::outbound::EventHandler;
use crate::params::{as_i64, get_ci, scalar_text};
use crate::robots::AppRobot;

pub fn dispatch(method: &str, call: &Call<'_>) -> Option<MethodResult> {
    let app_method = matches!(
        method,
        "bizproc.robot.add"
            | "bizproc.robot.update"
            | "bizproc.robot.list"
            | "bizproc.robot.delete"
            | "event.bind"
            | "event.get"
            | "event.unbind"
    );
    if method == "bizproc.event.send" {
        return Some(event_send(call));
    }
    if !app_method {
        return None;
    }
    let app = match (call.webhook.application, call.shared.app.as_ref()) {
        (true, Some(app)) => app,
        _ => return Some(Err(ApiError::application_context_required())),
    };
    Some(match method {
        "bizproc.robot.add" => robot_add(call, app),
        "bizproc.robot.update" => robot_update(call, app),
        "bizproc.robot.list" => Ok(Output::value(json!(
            app.robots()
                .iter()
                .map(|r| r.code.clone())
                .collect::<Vec<_>>()
        ))),
        "bizproc.robot.delete" => robot_delete(call, app),
        "event.bind" => event_bind(call, app),
        "event.get" => Ok(Output::value(json!(
            app.events()
                .iter()
                .map(|b| json!({"event": b.event, "handler": b.handler,
                    "auth_type": b.auth_type.to_string(), "offline": 0}))
                .collect::<Vec<_>>()
        ))),
        _ => event_unbind(call, app),
    })
}

fn validation(description: impl Into<String>) -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        "ERROR_ACTIVITY_VALIDATION_FAILURE",
        description,
    )
}

fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        "ERROR_ACTIVITY_NOT_FOUND",
        "Activity or Robot not found!",
    )
}

fn valid_code(code: &str) -> bool {
    !code.is_empty()
        && code
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
}

fn valid_property_key(key: &str) -> bool {
    key.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// A name is a non-empty string or a non-empty map of translations.
fn has_name(value: Option<&Value>) -> bool {
    match value {
        Some(Value::String(s)) => !s.trim().is_empty(),
        Some(Value::Object(map)) => map.values().any(|v| !scalar_text(v).trim().is_empty()),
        _ => false,
    }
}

fn code_param(fields: &Map<String, Value>) -> Result<String, ApiError> {
    let code = get_ci(fields, "CODE").map(scalar_text).unwrap_or_default();
    if code.is_empty() {
        return Err(validation("Empty activity code!"));
    }
    if !valid_code(&code) {
        return Err(validation("Wrong activity code!"));
    }
    Ok(code)
}

fn check_handler(app: &Application, handler: &str) -> Result<(), ApiError> {
    let parsed = url::Url::parse(handler).map_err(|_| wrong_handler())?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "ERROR_UNSUPPORTED_PROTOCOL",
            "Unsupported handler protocol",
        ));
    }
    let host = parsed.host_str().unwrap_or_default().to_ascii_lowercase();
    match app.installation() {
        Some(installation) if installation.host == host => Ok(()),
        _ => Err(wrong_handler()),
    }
}

fn wrong_handler() -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        "ERROR_WRONG_HANDLER_URL",
        "Wrong handler URL",
    )
}

fn properties(value: Option<&Value>) -> Result<Map<String, Value>, ApiError> {
    let map = match value {
        None | Some(Value::Null) => return Ok(Map::new()),
        Some(Value::Object(map)) => map.clone(),
        Some(Value::Array(items)) if items.is_empty() => return Ok(Map::new()),
        Some(_) => return Err(validation("Wrong properties array!")),
    };
    for (key, property) in &map {
        if !valid_property_key(key) {
            return Err(validation(format!("Wrong property key {key}!")));
        }
        let Value::Object(property) = property else {
            return Err(validation("Wrong properties array!"));
        };
        if !has_name(get_ci(property, "NAME")) {
            return Err(validation(format!("Empty property NAME {key}!")));
        }
    }
    Ok(map)
}

/// `['crm', 'CCrmDocumentDeal', 'DEAL']` and the other documented triples.
fn document_type(value: Option<&Value>) -> Result<Vec<String>, ApiError> {
    let Some(value) = value.filter(|v| !v.is_null()) else {
        return Ok(Vec::new());
    };
    let parts: Vec<String> = crate::params::as_list(value)
        .iter()
        .map(scalar_text)
        .collect();
    let known = parts.len() == 3
        && parts[0] == "crm"
        && matches!(
            (parts[1].as_str(), parts[2].as_str()),
            ("CCrmDocumentDeal", "DEAL")
                | ("CCrmDocumentLead", "LEAD")
                | ("CCrmDocumentContact", "CONTACT")
                | ("CCrmDocumentCompany", "COMPANY")
        );
    if known {
        Ok(parts)
    } else {
        Err(validation("Wrong activity DOCUMENT_TYPE!"))
    }
}

fn filter(value: Option<&Value>) -> Result<Value, ApiError> {
    match value {
        None | Some(Value::Null) => Ok(Value::Null),
        Some(Value::Object(map)) => Ok(Value::Object(map.clone())),
        Some(_) => Err(validation("Wrong activity FILTER!")),
    }
}

fn use_subscription(value: Option<&Value>) -> bool {
    value.is_none_or(|v| !scalar_text(v).eq_ignore_ascii_case("N"))
}

fn robot_add(call: &Call<'_>, app: &Application) -> MethodResult {
    let fields = &call.params.0;
    if fields.is_empty() {
        return Err(validation("Empty data!"));
    }
    let code = code_param(fields)?;
    let handler = get_ci(fields, "HANDLER")
        .map(scalar_text)
        .unwrap_or_default();
    check_handler(app, &handler)?;
    if !has_name(get_ci(fields, "NAME")) {
        return Err(validation("Empty activity NAME!"));
    }
    let robot = AppRobot {
        code,
        handler,
        auth_user_id: get_ci(fields, "AUTH_USER_ID")
            .and_then(as_i64)
            .unwrap_or(call.webhook.user_id),
        use_subscription: use_subscription(get_ci(fields, "USE_SUBSCRIPTION")),
        name: get_ci(fields, "NAME").cloned().unwrap_or(Value::Null),
        description: get_ci(fields, "DESCRIPTION")
            .cloned()
            .unwrap_or(Value::Null),
        properties: properties(get_ci(fields, "PROPERTIES"))?,
        return_properties: properties(get_ci(fields, "RETURN_PROPERTIES"))?,
        filter: filter(get_ci(fields, "FILTER"))?,
        document_type: document_type(get_ci(fields, "DOCUMENT_TYPE"))?,
    };
    app.with_robots(|robots| {
        if robots.iter().any(|r| r.code == robot.code) {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "ERROR_ACTIVITY_ALREADY_INSTALLED",
                "Activity or Automation rule already installed!",
            ));
        }
        robots.push(robot);
        Ok(Output::value(json!(true)))
    })
}

fn robot_update(call: &Call<'_>, app: &Application) -> MethodResult {
    let code = code_param(&call.params.0)?;
    let fields = call.params.object("FIELDS");
    if fields.is_empty() {
        return Err(validation("No fields to update"));
    }
    let mut updated = app.robot(&code).ok_or_else(not_found)?;
    if let Some(handler) = get_ci(&fields, "HANDLER") {
        let handler = scalar_text(handler);
        check_handler(app, &handler)?;
        updated.handler = handler;
    }
    if let Some(name) = get_ci(&fields, "NAME") {
        if !has_name(Some(name)) {
            return Err(validation("Empty activity NAME!"));
        }
        updated.name = name.clone();
    }
    if let Some(value) = get_ci(&fields, "AUTH_USER_ID") {
        updated.auth_user_id = as_i64(value).unwrap_or(updated.auth_user_id);
    }
    if let Some(value) = get_ci(&fields, "USE_SUBSCRIPTION") {
        updated.use_subscription = use_subscription(Some(value));
    }
    if let Some(value) = get_ci(&fields, "DESCRIPTION") {
        updated.description = value.clone();
    }
    if let Some(value) = get_ci(&fields, "PROPERTIES") {
        updated.properties = properties(Some(value))?;
    }
    if let Some(value) = get_ci(&fields, "RETURN_PROPERTIES") {
        updated.return_properties = properties(Some(value))?;
    }
    if let Some(value) = get_ci(&fields, "FILTER") {
        updated.filter = filter(Some(value))?;
    }
    if let Some(value) = get_ci(&fields, "DOCUMENT_TYPE") {
        updated.document_type = document_type(Some(value))?;
    }
    app.with_robots(|robots| match robots.iter_mut().find(|r| r.code == code) {
        Some(slot) => {
            *slot = updated;
            Ok(Output::value(json!(true)))
        }
        None => Err(not_found()),
    })
}

fn robot_delete(call: &Call<'_>, app: &Application) -> MethodResult {
    let code = code_param(&call.params.0)?;
    app.with_robots(|robots| {
        let before = robots.len();
        robots.retain(|r| r.code != code);
        if robots.len() == before {
            Err(not_found())
        } else {
            Ok(Output::value(json!(true)))
        }
    })
}

/// The robot's answer, accepted once per pending event token.
fn event_send(call: &Call<'_>) -> MethodResult {
    let token = call.params.text("event_token").unwrap_or_default();
    let return_values = call.params.object("return_values");
    let log_message = call.params.get("log_message").map(scalar_text);
    call.shared
        .outbound
        .complete_robot(&token, Value::Object(return_values), log_message)?;
    Ok(Output::value(json!(true)))
}

/// Events whose names the emulated portal knows (it fires the deal ones).
const KNOWN_EVENTS: &[&str] = &[
    "ONCRMDEALADD",
    "ONCRMDEALUPDATE",
    "ONCRMDEALDELETE",
    "ONCRMDEALMOVETOCATEGORY",
    "ONCRMCONTACTADD",
    "ONCRMCONTACTUPDATE",
    "ONCRMCOMPANYADD",
    "ONCRMCOMPANYUPDATE",
    "ONAPPUNINSTALL",
];

fn binding_params(call: &Call<'_>) -> Result<(String, String), ApiError> {
    let event = call
        .params
        .text("event")
        .unwrap_or_default()
        .to_ascii_uppercase();
    if !KNOWN_EVENTS.contains(&event.as_str()) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "ERROR_EVENT_NOT_FOUND",
            "Event not found",
        ));
    }
    let handler = call.params.text("handler").unwrap_or_default();
    Ok((event, handler))
}

fn event_bind(call: &Call<'_>, app: &Application) -> MethodResult {
    let (event, handler) = binding_params(call)?;
    if url::Url::parse(&handler).is_err() {
        return Err(wrong_handler());
    }
    let application_token = app
        .installation()
        .map(|i| i.application_token)
        .unwrap_or_default();
    let binding = EventBinding {
        event: event.clone(),
        handler: handler.clone(),
        auth_type: call.params.int("auth_type").unwrap_or(0),
    };
    app.with_events(|events| {
        if events
            .iter()
            .any(|b| b.event == event && b.handler == handler)
        {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "ERROR_CORE",
                "Handler already binded",
            ));
        }
        events.push(binding);
        Ok(())
    })?;
    call.shared
        .outbound
        .add_handlers(crate::outbound::HandlerSeed {
            events: vec![EventHandler {
                event,
                url: handler,
                application_token,
            }],
            ..Default::default()
        });
    Ok(Output::value(json!(true)))
}

fn event_unbind(call: &Call<'_>, app: &Application) -> MethodResult {
    let (event, handler) = binding_params(call)?;
    let count = app.with_events(|events| {
        let before = events.len();
        events.retain(|b| !(b.event == event && b.handler == handler));
        before - events.len()
    });
    if count > 0 {
        call.shared
            .outbound
            .remove_events(|h| h.event.eq_ignore_ascii_case(&event) && h.url == handler);
    }
    Ok(Output::value(json!({"count": count})))
}
