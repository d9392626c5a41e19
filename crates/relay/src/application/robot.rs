//! The relay's automation rule as `bizproc.robot.add` registers it: a route
//! select in its settings, the target deal id, status and message returned
//! into the workflow, and a handler on the relay's public URL.

use b24_client::{Client, Error as ClientError};
use serde_json::{Map, Value, json};

use crate::config::Config;

/// What registering did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RobotAction {
    Added,
    Updated,
}

impl RobotAction {
    pub fn as_str(self) -> &'static str {
        match self {
            RobotAction::Added => "added",
            RobotAction::Updated => "updated",
        }
    }
}

/// `{public_url}/hook/app/{portal}`.
pub fn handler_url(public_url: &str, portal: &str) -> String {
    format!("{}/hook/app/{portal}", public_url.trim_end_matches('/'))
}

/// The fields of the rule for `portal` (everything but `CODE`).
pub fn robot_definition(config: &Config, portal: &str, public_url: &str) -> Map<String, Value> {
    let routes: Vec<_> = config.routes.iter().filter(|r| r.from == portal).collect();
    let mut options = Map::new();
    for route in &routes {
        options.insert(route.name.clone(), json!(route.name));
    }
    let mut targets: Vec<&str> = routes.iter().map(|r| r.to.as_str()).collect();
    targets.dedup();
    let (name_ru, name_en) = match targets.as_slice() {
        [one] => (
            format!("Передать сделку в {one}"),
            format!("Transfer deal to {one}"),
        ),
        _ => (
            "Передать сделку в другой портал".to_owned(),
            "Transfer deal to another portal".to_owned(),
        ),
    };
    let fields = json!({
        "HANDLER": handler_url(public_url, portal),
        "USE_SUBSCRIPTION": "Y",
        "NAME": {"ru": name_ru, "en": name_en},
        "DESCRIPTION": {
            "ru": "Создаёт или обновляет сделку в другом портале (b24-relay) и возвращает её ID",
            "en": "Creates or updates the deal on another portal (b24-relay) and returns its ID"
        },
        "DOCUMENT_TYPE": ["crm", "CCrmDocumentDeal", "DEAL"],
        "PROPERTIES": {
            "route": {
                "Name": {"ru": "Маршрут", "en": "Route"},
                "Type": "select",
                "Options": options,
                "Required": "Y",
                "Multiple": "N",
                "Default": routes.first().map(|r| r.name.clone()).unwrap_or_default(),
            }
        },
        "RETURN_PROPERTIES": {
            "targetDealId": {"Name": {"ru": "ID сделки в целевом портале", "en": "Target deal ID"}, "Type": "int"},
            "status": {"Name": {"ru": "Статус", "en": "Status"}, "Type": "string"},
            "message": {"Name": {"ru": "Сообщение", "en": "Message"}, "Type": "text"}
        }
    });
    match fields {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

/// Adds the rule, or updates it when it exists already (idempotent).
pub async fn register_robot(
    client: &Client,
    code: &str,
    fields: Map<String, Value>,
) -> Result<RobotAction, ClientError> {
    let mut add = fields.clone();
    add.insert("CODE".into(), json!(code));
    match client.call("bizproc.robot.add", &Value::Object(add)).await {
        Ok(_) => Ok(RobotAction::Added),
        Err(ClientError::Api(api)) if api.code == "ERROR_ACTIVITY_ALREADY_INSTALLED" => {
            client
                .call(
                    "bizproc.robot.update",
                    &json!({"CODE": code, "FIELDS": fields}),
                )
                .await?;
            Ok(RobotAction::Updated)
        }
        Err(error) => Err(error),
    }
}

/// Deletes the rule; `false` when it was not registered.
pub async fn unregister_robot(client: &Client, code: &str) -> Result<bool, ClientError> {
    match client
        .call("bizproc.robot.delete", &json!({"CODE": code}))
        .await
    {
        Ok(_) => Ok(true),
        Err(ClientError::Api(api)) if api.code == "ERROR_ACTIVITY_NOT_FOUND" => Ok(false),
        Err(error) => Err(error),
    }
}
