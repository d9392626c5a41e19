//! The test-facing control surface: request counts, stored records, handler
//! deliveries, fault switches and limits — as a Rust handle ([`Admin`]) and as
//! JSON endpoints under `/_emulator/` that call the same handle.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use http::{Method, StatusCode};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::error::ApiError;
use crate::faults::{FaultSettings, Faults};
use crate::fields::EntityType;
use crate::limits::LimitConfig;
use crate::outbound::{Delivery, HandlerSeed, RobotRun};
use crate::server::{HttpResponse, json_response};
use crate::shared::Shared;
use crate::store::values::Api;
use crate::store::{Record, WriteCtx};

/// Direct control of a running portal (cheap to clone).
#[derive(Debug, Clone)]
pub struct Admin {
    pub(crate) shared: Arc<Shared>,
}

impl Admin {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }

    /// HTTP requests per REST method name (lower case, without `.json`).
    pub fn request_counts(&self) -> BTreeMap<String, u64> {
        self.shared
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn request_count(&self, method: &str) -> u64 {
        self.request_counts()
            .get(&method.to_ascii_lowercase())
            .copied()
            .unwrap_or(0)
    }

    /// Requests the portal's leaky bucket refused (QUERY_LIMIT_EXCEEDED),
    /// injected faults not included.
    pub fn limit_refusals(&self) -> u64 {
        self.shared
            .limit_refusals
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn total_requests(&self) -> u64 {
        self.request_counts().values().sum()
    }

    pub fn reset_request_counts(&self) {
        self.shared
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    /// Stored records of one type, as kept (camelCase, typed values).
    pub fn records(&self, entity: EntityType) -> Vec<Record> {
        self.shared
            .store()
            .records
            .get(&entity)
            .map(|r| r.values().cloned().collect())
            .unwrap_or_default()
    }

    pub fn record(&self, entity: EntityType, id: i64) -> Option<Record> {
        self.shared.store().get(entity, id).cloned()
    }

    /// Adds a record without firing events (like seed data), in `crm.item.*` shape.
    pub fn insert_record(&self, entity: EntityType, fields: &Record) -> Result<i64, ApiError> {
        let ctx = WriteCtx {
            user_id: 1,
            api: Api::Item,
            original_uf_names: false,
        };
        self.shared
            .store()
            .add(entity, fields, ctx)
            .map(|(id, _)| id)
    }

    /// Deletes a record as a user on the portal would (no events): its id
    /// is not given again, so id lists have a gap there. `false` if absent.
    pub fn delete_record(&self, entity: EntityType, id: i64) -> bool {
        let mut store = self.shared.store();
        store.product_rows.remove(&(entity, id));
        store
            .records
            .get_mut(&entity)
            .is_some_and(|records| records.remove(&id).is_some())
    }

    pub fn product_rows(&self, entity: EntityType, id: i64) -> Vec<Record> {
        self.shared
            .store()
            .product_rows
            .get(&(entity, id))
            .cloned()
            .unwrap_or_default()
    }

    /// A stored file's name and content.
    pub fn file(&self, id: i64) -> Option<(String, Vec<u8>)> {
        self.shared
            .store()
            .files
            .files
            .get(&id)
            .map(|file| (file.name.clone(), file.data.clone()))
    }

    pub fn timeline_comments(&self) -> Vec<Record> {
        self.shared.store().comments.clone()
    }

    pub fn notifications(&self) -> Vec<Value> {
        self.shared.store().notifications.clone()
    }

    pub fn deliveries(&self) -> Vec<Delivery> {
        self.shared.outbound.deliveries()
    }

    /// Waits until at least `count` deliveries finished (or `timeout`
    /// passed) and returns what there is; deliveries run in the background.
    pub async fn wait_for_deliveries(&self, count: usize, timeout: Duration) -> Vec<Delivery> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let deliveries = self.deliveries();
            if deliveries.len() >= count || tokio::time::Instant::now() >= deadline {
                return deliveries;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub fn robot_runs(&self) -> Vec<RobotRun> {
        self.shared.outbound.robot_runs()
    }

    pub fn handlers(&self) -> HandlerSeed {
        self.shared.outbound.handlers()
    }

    pub fn add_handlers(&self, handlers: HandlerSeed) {
        self.shared.outbound.add_handlers(handlers);
    }

    pub fn faults(&self) -> &Faults {
        &self.shared.faults
    }

    /// Takes the portal down (connections close without an answer) or back up.
    pub fn set_down(&self, down: bool) {
        self.shared.faults.set_down(down);
    }

    pub fn limits(&self) -> LimitConfig {
        self.shared.limits.config()
    }

    pub fn set_limits(&self, config: LimitConfig) {
        self.shared.limits.set_config(config);
    }

    /// Empties the rate-limit bucket and the operating-time baskets.
    pub fn reset_limits(&self) {
        self.shared.limits.reset();
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct LimitsBody {
    burst: Option<u32>,
    drain_per_sec: Option<f64>,
    operating_limit_secs: Option<f64>,
    request_time_limit_secs: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DownBody {
    down: bool,
}

fn bad_request(message: impl Into<String>) -> HttpResponse {
    json_response(
        StatusCode::BAD_REQUEST,
        &json!({"error": "BAD_REQUEST", "error_description": message.into()}),
    )
}

/// A malformed admin request; answered as 400 with the message.
pub(crate) struct BadRequest(String);

pub(crate) fn parse<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, BadRequest> {
    serde_json::from_slice(body).map_err(|e| BadRequest(format!("invalid JSON body: {e}")))
}

fn ok(value: Value) -> HttpResponse {
    json_response(StatusCode::OK, &value)
}

pub(crate) fn to_value<T: serde::Serialize>(value: &T) -> Value {
    serde_json::to_value(value).unwrap_or(Value::Null)
}

fn seconds(value: f64, name: &str) -> Result<Duration, BadRequest> {
    Duration::try_from_secs_f64(value)
        .map_err(|_| BadRequest(format!("{name} must be a non-negative number of seconds")))
}

/// Serves `/_emulator/<path>`.
pub async fn handle(
    shared: &Arc<Shared>,
    method: &Method,
    path: &str,
    body: &[u8],
) -> HttpResponse {
    let admin = Admin::new(Arc::clone(shared));
    let parts: Vec<&str> = path.trim_end_matches('/').split('/').collect();
    let result = match crate::admin_app::route(&admin, method, &parts, body).await {
        Some(result) => result,
        None => route(&admin, method, &parts, body),
    };
    result.unwrap_or_else(|BadRequest(message)| bad_request(message))
}

fn route(
    admin: &Admin,
    method: &Method,
    parts: &[&str],
    body: &[u8],
) -> Result<HttpResponse, BadRequest> {
    let entity = |name: &str| {
        EntityType::parse(name).ok_or_else(|| BadRequest(format!("unknown entity {name:?}")))
    };
    Ok(match (method.as_str(), parts) {
        ("GET", ["requests"]) => ok(to_value(&admin.request_counts())),
        ("DELETE", ["requests"]) => {
            admin.reset_request_counts();
            ok(json!({"ok": true}))
        }
        ("GET", ["records", name]) => ok(to_value(&admin.records(entity(name)?))),
        ("GET", ["records", name, id]) => {
            let id: i64 = id
                .parse()
                .map_err(|_| BadRequest("id must be a number".into()))?;
            match admin.record(entity(name)?, id) {
                Some(record) => ok(Value::Object(record)),
                None => json_response(
                    StatusCode::NOT_FOUND,
                    &json!({"error": "NOT_FOUND", "error_description": "no such record"}),
                ),
            }
        }
        ("POST", ["records", name]) => {
            let fields: Map<String, Value> = parse(body)?;
            match admin.insert_record(entity(name)?, &fields) {
                Ok(id) => ok(json!({"id": id})),
                Err(err) => json_response(err.status, &err.body()),
            }
        }
        ("GET", ["product-rows", name, id]) => {
            let id: i64 = id
                .parse()
                .map_err(|_| BadRequest("id must be a number".into()))?;
            ok(to_value(&admin.product_rows(entity(name)?, id)))
        }
        ("GET", ["comments"]) => ok(to_value(&admin.timeline_comments())),
        ("GET", ["notifications"]) => ok(to_value(&admin.notifications())),
        ("GET", ["deliveries"]) => ok(to_value(&admin.deliveries())),
        ("GET", ["robot-runs"]) => ok(to_value(&admin.robot_runs())),
        ("GET", ["handlers"]) => ok(to_value(&admin.handlers())),
        ("POST", ["handlers"]) => {
            admin.add_handlers(parse(body)?);
            ok(json!({"ok": true}))
        }
        ("GET", ["faults"]) => ok(to_value(&admin.faults().settings())),
        ("PUT", ["faults"]) => {
            let settings: FaultSettings = parse(body)?;
            admin.faults().set(settings);
            ok(json!({"ok": true}))
        }
        ("DELETE", ["faults"]) => {
            admin.faults().clear();
            ok(json!({"ok": true}))
        }
        ("POST", ["down"]) => {
            let down: DownBody = parse(body)?;
            admin.set_down(down.down);
            ok(json!({"ok": true}))
        }
        ("GET", ["limits"]) => {
            let config = admin.limits();
            ok(json!({
                "burst": config.burst,
                "drainPerSec": config.drain_per_sec,
                "operatingLimitSecs": config.operating_limit.as_secs_f64(),
                "requestTimeLimitSecs": config.request_time_limit.as_secs_f64(),
            }))
        }
        ("PUT", ["limits"]) => {
            let wanted: LimitsBody = parse(body)?;
            let mut config = admin.limits();
            if let Some(burst) = wanted.burst {
                config.burst = burst;
            }
            if let Some(drain) = wanted.drain_per_sec {
                if !(drain.is_finite() && drain >= 0.0) {
                    return Err(BadRequest(
                        "drainPerSec must be a non-negative number".into(),
                    ));
                }
                config.drain_per_sec = drain;
            }
            if let Some(secs) = wanted.operating_limit_secs {
                config.operating_limit = seconds(secs, "operatingLimitSecs")?;
            }
            if let Some(secs) = wanted.request_time_limit_secs {
                config.request_time_limit = seconds(secs, "requestTimeLimitSecs")?;
            }
            admin.set_limits(config);
            ok(json!({"ok": true}))
        }
        ("DELETE", ["limits"]) => {
            admin.reset_limits();
            ok(json!({"ok": true}))
        }
        _ => json_response(
            StatusCode::NOT_FOUND,
            &json!({"error": "NOT_FOUND", "error_description": "unknown admin endpoint"}),
        ),
    })
}
