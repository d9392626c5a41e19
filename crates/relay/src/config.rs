//! `relay.toml` → one validated [`Config`]. Secrets come from files or
//! environment variables only, and never show in `Debug` output or errors.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use b24_client::{BucketConfig, Secret, Webhook};
use serde::Deserialize;
use serde_json::Value;

mod app;
mod store;

pub use app::{AppCredentials, AppSettings, DEFAULT_ROBOT_CODE};
use app::{RawAppCredentials, RawAppSettings, build_app_settings};
pub use store::{PostgresConfig, RateScope, StoreConfig, StoreLocation};

/// A configuration problem: where (`relay.toml:12:10`), the key
/// (``route `p2e`.when.stages``) and what to write instead.
pub use b24_cli_support::ConfigError;

/// `"KEY: problem"`; the key locates the line in the file.
fn invalid(message: impl Into<String>) -> ConfigError {
    ConfigError::keyed(message)
}

/// The whole relay configuration, validated.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub metrics_listen: Option<SocketAddr>,
    /// Where the queue and links are kept (SQLite or PostgreSQL).
    pub store: StoreConfig,
    pub workers: usize,
    /// Attempts of a job before a transient error marks it failed.
    pub max_attempts: u32,
    /// Attempts cut short by a stopping relay (kill, crash, restart) before
    /// a job fails; counted apart from `max_attempts`.
    pub max_interruptions: u32,
    pub retry_base_delay: Duration,
    pub retry_max_delay: Duration,
    /// How long a claimed job stays claimed without a heartbeat.
    pub lease: Duration,
    /// Largest intake body; more gets 413.
    pub max_body_bytes: usize,
    /// How long fetched field definitions are trusted.
    pub field_cache_ttl: Duration,
    pub portals: BTreeMap<String, PortalConfig>,
    pub routes: Vec<Route>,
    /// Application mode (local applications, OAuth, our automation rule).
    pub app: AppSettings,
}

/// One portal: how we call it and how its calls to us are authenticated.
#[derive(Clone)]
pub struct PortalConfig {
    pub name: String,
    pub webhook: Webhook,
    /// The outgoing webhook's application token (`auth[application_token]`).
    pub application_token: Option<Secret>,
    /// The `?secret=` the built-in "Webhook" automation rule's URL carries.
    pub rule_secret: Option<Secret>,
    /// Expected `auth[domain]` of events, when set.
    pub domain: Option<String>,
    /// Expected `auth[member_id]` of events, when set.
    pub member_id: Option<String>,
    pub rate: BucketConfig,
    /// Base of deal links in comments (`https://HOST`), default from the webhook.
    pub public_url: String,
    /// The portal's local application, when application mode is used.
    pub app: Option<AppCredentials>,
    /// Language of comments and notifications written on this portal
    /// (`language = "ru"|"en"`; default Russian for Russian-region hosts).
    pub language: crate::messages::Language,
}

impl fmt::Debug for PortalConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PortalConfig")
            .field("name", &self.name)
            .field("webhook", &self.webhook)
            .field("application_token", &self.application_token)
            .field("rule_secret", &self.rule_secret)
            .field("domain", &self.domain)
            .field("member_id", &self.member_id)
            .field("rate", &self.rate)
            .field("app", &self.app)
            .field("language", &self.language)
            .finish()
    }
}

/// Which source deals a route takes, and where they go.
#[derive(Debug, Clone)]
pub struct Route {
    pub name: String,
    pub from: String,
    pub to: String,
    pub when_category: Option<i64>,
    /// Empty: any stage.
    pub when_stages: Vec<String>,
    pub target_category: i64,
    /// Stage of a new target deal; `None`: the pipeline's first stage.
    pub target_stage: Option<String>,
    /// Source stage → target stage, applied on create and update.
    pub stage_table: BTreeMap<String, String>,
    /// Source field → target field (camelCase names of `crm.item.*`).
    pub fields: BTreeMap<String, String>,
    /// Target field → how its list values are translated.
    pub values: BTreeMap<String, ValueRule>,
    pub constants: serde_json::Map<String, Value>,
    pub products: bool,
    pub contact: bool,
    pub company: bool,
    /// Source file fields to copy (to the target field `fields` names, or the same name).
    pub files: Vec<String>,
    pub responsible: Option<Responsible>,
    pub writeback_comment: bool,
    pub writeback_field: Option<String>,
    /// When the deal's responsible user gets a personal notification.
    pub notify: Notify,
}

/// `notify = "failure" | "always" | "never"`: an `im.notify` to the source
/// deal's responsible user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Notify {
    /// Only when the deal could not be transferred.
    #[default]
    Failure,
    Always,
    Never,
}

/// How a list (enumeration) value becomes the target portal's option id.
#[derive(Debug, Clone, PartialEq)]
pub enum ValueRule {
    /// Same option text on both portals.
    Label,
    /// Source option id → target option id.
    Table(BTreeMap<String, String>),
}

/// The target deal's responsible user: the user with the same e-mail, else `fallback`.
#[derive(Debug, Clone, PartialEq)]
pub struct Responsible {
    pub fallback: Option<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(deserialize_with = "b24_cli_support::config::socket_addr")]
    listen: SocketAddr,
    #[serde(
        default,
        deserialize_with = "b24_cli_support::config::optional_socket_addr"
    )]
    metrics_listen: Option<SocketAddr>,
    #[serde(default = "store::default_store")]
    store: toml::Value,
    #[serde(default = "default_workers")]
    workers: usize,
    #[serde(default = "default_attempts")]
    max_attempts: u32,
    #[serde(default = "default_interruptions")]
    max_interruptions: u32,
    #[serde(default = "default_retry_base", with = "humantime_serde_lite")]
    retry_base_delay: Duration,
    #[serde(default = "default_retry_max", with = "humantime_serde_lite")]
    retry_max_delay: Duration,
    #[serde(default = "default_lease", with = "humantime_serde_lite")]
    lease: Duration,
    #[serde(default = "default_body")]
    max_body_bytes: usize,
    #[serde(default = "default_field_ttl", with = "humantime_serde_lite")]
    field_cache_ttl: Duration,
    #[serde(default)]
    portal: BTreeMap<String, RawPortal>,
    #[serde(default)]
    route: Vec<RawRoute>,
    #[serde(default)]
    app: RawAppSettings,
}

fn default_workers() -> usize {
    16
}
fn default_attempts() -> u32 {
    10
}
fn default_interruptions() -> u32 {
    10
}
fn default_retry_base() -> Duration {
    Duration::from_secs(5)
}
fn default_retry_max() -> Duration {
    Duration::from_secs(600)
}
fn default_lease() -> Duration {
    Duration::from_secs(120)
}
fn default_body() -> usize {
    64 * 1024
}
fn default_field_ttl() -> Duration {
    Duration::from_secs(600)
}

/// Durations as humantime strings (`"5s"`, `"10m"`).
mod humantime_serde_lite {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text).map_err(serde::de::Error::custom)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSecret {
    file: Option<PathBuf>,
    env: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRate {
    burst: u32,
    per_second: f64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPortal {
    // Kept as raw values so that a secret written inline is refused with our
    // own message; a serde type error would quote it.
    webhook: toml::Value,
    application_token: Option<toml::Value>,
    rule_secret: Option<toml::Value>,
    domain: Option<String>,
    member_id: Option<String>,
    rate: Option<RawRate>,
    public_url: Option<String>,
    app: Option<RawAppCredentials>,
    language: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawWhen {
    category: Option<i64>,
    #[serde(default)]
    stages: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTarget {
    category: i64,
    stage: Option<String>,
    #[serde(default)]
    stages: BTreeMap<String, String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawWriteback {
    #[serde(default)]
    comment: bool,
    field: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawResponsible {
    #[serde(rename = "match")]
    by: String,
    fallback: Option<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    name: String,
    from: String,
    to: String,
    #[serde(default)]
    when: RawWhen,
    target: RawTarget,
    #[serde(default)]
    fields: BTreeMap<String, String>,
    #[serde(default)]
    values: BTreeMap<String, BTreeMap<String, toml::Value>>,
    #[serde(default)]
    constants: BTreeMap<String, toml::Value>,
    #[serde(default)]
    products: bool,
    contact: Option<String>,
    company: Option<String>,
    #[serde(default)]
    files: Vec<String>,
    responsible: Option<RawResponsible>,
    #[serde(default)]
    writeback: RawWriteback,
    notify: Option<String>,
}

impl Config {
    /// Reads and validates a config file; secrets are loaded now. Errors
    /// name the file, line and column.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = b24_cli_support::config::read(path)?;
        Self::parse(&text).map_err(|e| e.in_file(path))
    }

    /// Errors are located in `text` (secrets never shown).
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        Self::build(b24_cli_support::config::parse(text)?).map_err(|e| e.locate(text))
    }

    fn build(raw: RawConfig) -> Result<Self, ConfigError> {
        let store = store::build_store(raw.store)?;
        if raw.workers == 0 || raw.max_attempts == 0 || raw.max_interruptions == 0 {
            return Err(invalid(
                "workers, max_attempts and max_interruptions must be at least 1",
            ));
        }
        let mut portals = BTreeMap::new();
        for (name, portal) in raw.portal {
            portals.insert(name.clone(), build_portal(&name, portal)?);
        }
        let mut routes: Vec<Route> = Vec::new();
        for route in raw.route {
            let route = build_route(route, &portals)?;
            if routes.iter().any(|r| r.name == route.name) {
                return Err(invalid(format!("route `{}` is defined twice", route.name)));
            }
            routes.push(route);
        }
        if let Some(metrics) = raw
            .metrics_listen
            .filter(|m| m.port() != 0 && *m == raw.listen)
        {
            return Err(invalid(format!(
                "metrics_listen: {metrics} is also `listen`; give the metrics their own port, like 127.0.0.1:9902"
            )));
        }
        let app = build_app_settings(raw.app)?;
        Ok(Config {
            app,
            listen: raw.listen,
            metrics_listen: raw.metrics_listen,
            store,
            workers: raw.workers,
            max_attempts: raw.max_attempts,
            max_interruptions: raw.max_interruptions,
            retry_base_delay: raw.retry_base_delay,
            retry_max_delay: raw.retry_max_delay,
            lease: raw.lease.max(Duration::from_secs(1)),
            max_body_bytes: raw.max_body_bytes,
            field_cache_ttl: raw.field_cache_ttl,
            portals,
            routes,
        })
    }

    pub fn route(&self, name: &str) -> Option<&Route> {
        self.routes.iter().find(|r| r.name == name)
    }
}

fn load_secret(key: &str, raw: &toml::Value) -> Result<Secret, ConfigError> {
    let shape = || {
        invalid(format!(
            "{key}: write {{ file = \"/path\" }} or {{ env = \"VAR\" }} (secrets are never inline)"
        ))
    };
    let raw: RawSecret = match raw {
        toml::Value::Table(_) => raw.clone().try_into().map_err(|_| shape())?,
        _ => return Err(shape()),
    };
    let value = match (&raw.file, &raw.env) {
        (Some(path), None) => std::fs::read_to_string(path)
            .map_err(|e| invalid(format!("{key}: cannot read {}: {e}", path.display())))?,
        (None, Some(var)) => std::env::var(var)
            .map_err(|_| invalid(format!("{key}: environment variable {var} is not set")))?,
        _ => {
            return Err(invalid(format!(
                "{key}: give exactly one of `file` or `env` (secrets are never inline)"
            )));
        }
    };
    let value = value.trim();
    if value.is_empty() {
        return Err(invalid(format!("{key}: the secret is empty")));
    }
    Ok(Secret::new(value))
}

fn build_portal(name: &str, raw: RawPortal) -> Result<PortalConfig, ConfigError> {
    let key = format!("portal.{name}");
    let webhook_url = load_secret(&format!("{key}.webhook"), &raw.webhook)?;
    let webhook =
        Webhook::parse(webhook_url.expose()).map_err(|e| invalid(format!("{key}.webhook: {e}")))?;
    let rate = match raw.rate {
        Some(rate) => BucketConfig {
            burst: rate.burst,
            drain_per_second: rate.per_second,
        },
        None => BucketConfig::STANDARD,
    };
    if rate.burst == 0 || !(rate.drain_per_second.is_finite() && rate.drain_per_second > 0.0) {
        return Err(invalid(format!(
            "{key}.rate: burst must be at least 1 and per_second positive"
        )));
    }
    let application_token = raw
        .application_token
        .as_ref()
        .map(|s| load_secret(&format!("{key}.application_token"), s))
        .transpose()?;
    let rule_secret = raw
        .rule_secret
        .as_ref()
        .map(|s| load_secret(&format!("{key}.rule_secret"), s))
        .transpose()?;
    let public_url = raw
        .public_url
        .unwrap_or_else(|| format!("https://{}", webhook.portal()));
    let app = match raw.app {
        Some(app) if app.client_id.trim().is_empty() => {
            return Err(invalid(format!("{key}.app.client_id: must not be empty")));
        }
        Some(app) => Some(AppCredentials {
            client_id: app.client_id.trim().to_owned(),
            client_secret: load_secret(&format!("{key}.app.client_secret"), &app.client_secret)?,
        }),
        None => None,
    };
    let language = match raw.language.as_deref() {
        None => crate::messages::Language::for_host(&webhook.portal()),
        Some(text) => crate::messages::Language::parse(text).ok_or_else(|| {
            invalid(format!(
                "{key}.language: `{text}` is not one of \"ru\", \"en\""
            ))
        })?,
    };
    Ok(PortalConfig {
        app,
        language,
        name: name.to_owned(),
        webhook,
        application_token,
        rule_secret,
        domain: raw.domain,
        member_id: raw.member_id,
        rate,
        public_url: public_url.trim_end_matches('/').to_owned(),
    })
}

/// The pipeline a stage id belongs to: `C5:NEW` → 5, `NEW` → 0 (the
/// general pipeline's stages have no prefix).
fn pipeline_of(stage: &str) -> i64 {
    stage
        .strip_prefix('C')
        .and_then(|rest| rest.split_once(':'))
        .and_then(|(number, _)| number.parse().ok())
        .unwrap_or(0)
}

fn stage_prefix(pipeline: i64) -> String {
    if pipeline == 0 {
        String::new()
    } else {
        format!("C{pipeline}:")
    }
}

/// Stages that can never match: a trigger stage of another pipeline than
/// `when.category`, a target stage outside `target.category`, and a
/// `target.stages` entry for a source stage the route never takes.
fn check_stages(key: &str, raw: &RawRoute) -> Result<(), ConfigError> {
    if let Some(category) = raw.when.category {
        if let Some(stage) = raw.when.stages.iter().find(|s| pipeline_of(s) != category) {
            return Err(invalid(format!(
                "{key}.when.stages: `{stage}` is a stage of pipeline {}, not of when.category = {category}; \
                 its stages look like \"{}NAME\"",
                pipeline_of(stage),
                stage_prefix(category)
            )));
        }
    }
    if !raw.when.stages.is_empty() {
        if let Some(stage) = raw
            .target
            .stages
            .keys()
            .find(|s| !raw.when.stages.contains(s))
        {
            return Err(invalid(format!(
                "{key}.target.stages: source stage `{stage}` is not in when.stages, so no deal in it \
                 is ever transferred; add it to when.stages or remove the entry"
            )));
        }
    }
    let category = raw.target.category;
    let targets = raw.target.stage.iter().map(|s| ("stage", s));
    let mapped = raw.target.stages.values().map(|s| ("stages", s));
    if let Some((name, stage)) = targets
        .chain(mapped)
        .find(|(_, s)| pipeline_of(s) != category)
    {
        return Err(invalid(format!(
            "{key}.target.{name}: `{stage}` is a stage of pipeline {}, not of target.category = {category}; \
             its stages look like \"{}NAME\"",
            pipeline_of(stage),
            stage_prefix(category)
        )));
    }
    Ok(())
}

fn match_mode(key: &str, value: Option<String>) -> Result<bool, ConfigError> {
    match value.as_deref() {
        None | Some("none") => Ok(false),
        Some("match") => Ok(true),
        Some(other) => Err(invalid(format!(
            "{key}: `{other}` is not one of \"match\", \"none\""
        ))),
    }
}

fn toml_to_json(value: toml::Value) -> Value {
    serde_json::to_value(value).unwrap_or(Value::Null)
}

fn build_route(
    raw: RawRoute,
    portals: &BTreeMap<String, PortalConfig>,
) -> Result<Route, ConfigError> {
    let key = format!("route `{}`", raw.name);
    for (side, portal) in [("from", &raw.from), ("to", &raw.to)] {
        if !portals.contains_key(portal) {
            return Err(invalid(format!(
                "{key}.{side}: no [portal.{portal}] is configured"
            )));
        }
    }
    if raw.from == raw.to {
        return Err(invalid(format!("{key}: from and to are the same portal")));
    }
    check_stages(&key, &raw)?;
    let mut values = BTreeMap::new();
    for (field, table) in raw.values {
        let rule = match table.get("match") {
            Some(toml::Value::String(mode)) if mode == "label" && table.len() == 1 => {
                ValueRule::Label
            }
            Some(_) => {
                return Err(invalid(format!(
                    "{key}.values.{field}: use {{ match = \"label\" }} or a table {{ \"45\" = \"101\" }}"
                )));
            }
            None => {
                let mut ids = BTreeMap::new();
                for (from, to) in table {
                    let to = match to {
                        toml::Value::String(text) => text,
                        toml::Value::Integer(n) => n.to_string(),
                        _ => {
                            return Err(invalid(format!(
                                "{key}.values.{field}.{from}: the target option id must be a string or an integer"
                            )));
                        }
                    };
                    ids.insert(from, to);
                }
                ValueRule::Table(ids)
            }
        };
        if !raw.fields.values().any(|target| *target == field) {
            return Err(invalid(format!(
                "{key}.values.{field}: `{field}` is not a target field in `fields`"
            )));
        }
        values.insert(field, rule);
    }
    for (source, target) in &raw.fields {
        if let Some(why) = crate::mapping::reserved(target) {
            return Err(invalid(format!(
                "{key}.fields.{source}: `{target}` is written by the relay itself and cannot be a mapping target: {why}"
            )));
        }
    }
    let mut targets: Vec<&String> = raw.fields.values().collect();
    targets.sort();
    if let Some(twice) = targets.windows(2).find(|w| w[0] == w[1]) {
        return Err(invalid(format!(
            "{key}.fields: `{}` is the target of more than one source field; each target field takes one",
            twice[0]
        )));
    }
    for field in raw.constants.keys() {
        if let Some(why) = crate::mapping::reserved(field) {
            return Err(invalid(format!(
                "{key}.constants.{field}: `{field}` is written by the relay itself: {why}"
            )));
        }
        if raw.fields.values().any(|t| t == field) {
            return Err(invalid(format!(
                "{key}.constants.{field}: `{field}` is also a target in `fields`; keep one of them"
            )));
        }
    }
    for file in &raw.files {
        if let Some(why) = crate::mapping::reserved(raw.fields.get(file).unwrap_or(file)) {
            return Err(invalid(format!("{key}.files: {file}: {why}")));
        }
    }
    let notify = match raw.notify.as_deref() {
        None | Some("failure") => Notify::Failure,
        Some("always") => Notify::Always,
        Some("never") => Notify::Never,
        Some(other) => {
            return Err(invalid(format!(
                "{key}.notify: `{other}` is not one of \"failure\", \"always\", \"never\""
            )));
        }
    };
    let responsible = match raw.responsible {
        None => None,
        Some(r) if r.by == "email" => Some(Responsible {
            fallback: r.fallback,
        }),
        Some(r) => {
            return Err(invalid(format!(
                "{key}.responsible.match: `{}` is not supported; use \"email\"",
                r.by
            )));
        }
    };
    Ok(Route {
        contact: match_mode(&format!("{key}.contact"), raw.contact)?,
        company: match_mode(&format!("{key}.company"), raw.company)?,
        name: raw.name,
        from: raw.from,
        to: raw.to,
        when_category: raw.when.category,
        when_stages: raw.when.stages,
        target_category: raw.target.category,
        target_stage: raw.target.stage,
        stage_table: raw.target.stages,
        fields: raw.fields,
        values,
        constants: raw
            .constants
            .into_iter()
            .map(|(k, v)| (k, toml_to_json(v)))
            .collect(),
        products: raw.products,
        files: raw.files,
        responsible,
        writeback_comment: raw.writeback.comment,
        writeback_field: raw.writeback.field,
        notify,
    })
}

#[cfg(test)]
mod tests;
