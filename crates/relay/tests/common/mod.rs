//! Two emulated portals (source "partner", target "esb") and a relay
//! configuration between them, for the relay's end-to-end tests.
#![allow(dead_code)]

pub mod corpus;
pub mod postgres;

use std::path::{Path, PathBuf};
use std::time::Duration;

use b24_emulator::{EntityType, EventHandler, HandlerSeed, Portal, Record, WebhookRule};
use serde_json::{Value, json};

pub const SOURCE_SECRET: &str = "srcS3cr3tHook";
pub const TARGET_SECRET: &str = "tgtS3cr3tHook";
pub const APP_TOKEN: &str = "appT0kenFromPartner";
pub const RULE_SECRET: &str = "ruleS3cr3tXYZ";

pub fn source_seed() -> Value {
    json!({
        "users": [
            {"id": 1, "name": "Admin", "email": "admin@partner.test"},
            {"id": 5, "name": "Olga", "email": "olga@example.com"}
        ],
        "pipelines": [{"id": 2, "name": "Partners", "stages": [
            {"id": "C2:NEW", "name": "New"},
            {"id": "C2:PREPARATION", "name": "Ready to hand over"},
            {"id": "C2:WON", "name": "Won", "semantics": "S"}
        ]}],
        "userFields": [
            {"entity": "deal", "name": "UF_CRM_LEVEL", "type": "enumeration", "options": [
                {"id": 1, "value": "Gold"}, {"id": 2, "value": "Silver"}, {"id": 3, "value": "Bronze"}
            ]},
            {"entity": "deal", "name": "UF_CRM_DOCS", "type": "file", "multiple": true},
            {"entity": "deal", "name": "UF_CRM_ESB_DEAL_ID", "type": "string"}
        ]
    })
}

pub fn target_seed() -> Value {
    json!({
        "users": [
            {"id": 1, "name": "Admin", "email": "admin@esb.test"},
            {"id": 17, "name": "Olga", "email": "olga@example.com"}
        ],
        "pipelines": [{"id": 3, "name": "From partners", "stages": [
            {"id": "C3:NEW", "name": "New"},
            {"id": "C3:WON", "name": "Won", "semantics": "S"}
        ]}],
        "userFields": [
            {"entity": "deal", "name": "UF_CRM_TIER", "type": "enumeration", "options": [
                {"id": 71, "value": "silver"}, {"id": 72, "value": "Gold"}
            ]},
            {"entity": "deal", "name": "UF_CRM_FILES", "type": "file", "multiple": true}
        ],
        "contacts": [
            {"name": "Ivan", "lastName": "Known", "fm": [{"typeId": "PHONE", "value": "+7 900 000-00-01", "valueType": "WORK"}]}
        ]
    })
}

pub async fn start_portals(burst: u32, drain: f64) -> (Portal, Portal) {
    // The relay's clients (Relay::start in-process) need it, as main does.
    b24_testkit::install_crypto_provider();
    let source = Portal::builder()
        .domain("partner.test")
        .webhook(1, SOURCE_SECRET, &["crm", "user", "im"])
        .rate_limit(burst, drain)
        .seed(source_seed())
        .start()
        .await
        .expect("source portal starts");
    let target = Portal::builder()
        .domain("esb.test")
        .webhook(1, TARGET_SECRET, &["crm", "user"])
        .rate_limit(burst, drain)
        .seed(target_seed())
        .start()
        .await
        .expect("target portal starts");
    (source, target)
}

/// Where every source level goes on the target (Bronze has no option
/// of the same text there), for tests that need `check` to pass.
pub const FULL_TABLE: &str = r#"values.ufCrm_TIER = { "1" = "72", "2" = "71", "3" = "71" }"#;

/// A faster drain than the cloud's 2/s for tests that do not measure the
/// limit: the relay's buckets start full (as after a restart), and at 2/s
/// every test would wait half a second per request.
pub const TEST_RATE: (u32, f64) = (50, 20.0);

pub struct Options {
    pub listen: String,
    pub rate: (u32, f64),
    pub workers: usize,
    pub values: &'static str,
    pub writeback_field: bool,
    pub lease: &'static str,
    /// Replaces the route's `fields`, `values` and `files` lines.
    pub mapping: Option<&'static str>,
    /// Lines added to `[portal.partner]` (e.g. `language = "ru"`).
    pub partner_extra: &'static str,
    /// Lines added to the route (e.g. `notify = "always"`).
    pub route_extra: &'static str,
}

impl Options {
    /// [`Options::default`] at [`TEST_RATE`]; start the portals with it too.
    pub fn fast() -> Self {
        Self {
            rate: TEST_RATE,
            ..Self::default()
        }
    }
}

impl Default for Options {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:0".into(),
            rate: (50, 2.0),
            workers: 4,
            values: r#"values.ufCrm_TIER = { match = "label" }"#,
            writeback_field: true,
            lease: "30s",
            mapping: None,
            partner_extra: "",
            route_extra: "",
        }
    }
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

/// A relay.toml between the two portals, secrets in files under `dir`.
pub fn config_text(dir: &Path, source: &Portal, target: &Portal, options: &Options) -> String {
    let source_hook = write(
        dir,
        "partner.webhook",
        &source.webhook_url(1, SOURCE_SECRET),
    );
    let target_hook = write(dir, "esb.webhook", &target.webhook_url(1, TARGET_SECRET));
    let token = write(dir, "partner.token", APP_TOKEN);
    let rule = write(dir, "partner.rule", RULE_SECRET);
    let (burst, drain) = options.rate;
    let field = if options.writeback_field {
        r#", field = "ufCrm_ESB_DEAL_ID""#
    } else {
        ""
    };
    format!(
        r#"
listen = "{listen}"
store = "sqlite://{db}"
workers = {workers}
retry_base_delay = "200ms"
retry_max_delay = "2s"
lease = "{lease}"

[portal.partner]
webhook = {{ file = "{source_hook}" }}
application_token = {{ file = "{token}" }}
rule_secret = {{ file = "{rule}" }}
domain = "partner.test"
rate = {{ burst = {burst}, per_second = {drain} }}
{partner_extra}

[portal.esb]
webhook = {{ file = "{target_hook}" }}
rate = {{ burst = {burst}, per_second = {drain} }}

[[route]]
name = "partner-to-esb"
from = "partner"
to = "esb"
when = {{ category = 2, stages = ["C2:PREPARATION"] }}
target = {{ category = 3, stage = "C3:NEW" }}
{mapping}
constants = {{ sourceId = "PARTNER" }}
products = true
contact = "match"
company = "match"
responsible = {{ match = "email", fallback = 1 }}
writeback = {{ comment = true{field} }}
{route_extra}
"#,
        listen = options.listen,
        db = dir.join("relay.db").display(),
        workers = options.workers,
        lease = options.lease,
        mapping = match options.mapping {
            Some(mapping) => mapping.to_owned(),
            None => format!(
                "fields = {{ title = \"title\", opportunity = \"opportunity\", currencyId = \"currencyId\", ufCrm_LEVEL = \"ufCrm_TIER\", ufCrm_DOCS = \"ufCrm_FILES\" }}\n{}\nfiles = [\"ufCrm_DOCS\"]",
                options.values
            ),
        },
        partner_extra = options.partner_extra,
        route_extra = options.route_extra,
    )
}

pub fn write_config(dir: &Path, source: &Portal, target: &Portal, options: &Options) -> PathBuf {
    let path = dir.join("relay.toml");
    std::fs::write(&path, config_text(dir, source, target, options)).unwrap();
    path
}

/// Points the source portal's outgoing webhook and "Webhook" rule at the relay.
pub fn hook_up(source: &Portal, relay: &str) {
    source.admin().add_handlers(HandlerSeed {
        events: vec![EventHandler {
            event: "ONCRMDEALUPDATE".into(),
            url: format!("{relay}/hook/event/partner"),
            application_token: APP_TOKEN.into(),
        }],
        webhook_rules: vec![WebhookRule {
            stage_id: "C2:PREPARATION".into(),
            url: format!("{relay}/hook/rule/partner?secret={RULE_SECRET}"),
        }],
        robots: vec![],
    });
}

pub fn record(value: Value) -> Record {
    value.as_object().cloned().expect("an object")
}

/// A plain source deal in `stage` (no contact, company, rows or files).
pub fn plain_deal(source: &Portal, title: &str, stage: &str) -> i64 {
    source
        .admin()
        .insert_record(
            EntityType::Deal,
            &record(json!({"title": title, "categoryId": 2, "stageId": stage, "opportunity": 100, "currencyId": "RUB", "ufCrm_LEVEL": 1, "assignedById": 5})),
        )
        .expect("deal inserted")
}

pub fn client() -> reqwest::Client {
    b24_testkit::install_crypto_provider();
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// Calls a REST method of an emulated portal with its webhook.
pub async fn rest(portal: &Portal, secret: &str, method: &str, params: Value) -> Value {
    let url = format!("{}{method}.json", portal.webhook_url(1, secret));
    let response = client().post(url).json(&params).send().await.unwrap();
    response.json().await.unwrap()
}

/// Polls until `check` is true; the timeout only prevents a hang.
pub async fn wait_until(what: &str, timeout: Duration, mut check: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + timeout;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn target_deals(target: &Portal) -> Vec<Record> {
    target.admin().records(EntityType::Deal)
}

/// POSTs the rule call for a deal, as the source portal would.
pub async fn post_rule(relay: &str, deal_id: i64) -> u16 {
    client()
        .post(format!("{relay}/hook/rule/partner?secret={RULE_SECRET}"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!(
            "document_id[0]=crm&document_id[1]=CCrmDocumentDeal&document_id[2]=DEAL_{deal_id}"
        ))
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

/// [`start_portals`] at [`TEST_RATE`].
pub async fn start_fast_portals() -> (Portal, Portal) {
    start_portals(TEST_RATE.0, TEST_RATE.1).await
}

/// Portals seeded with the business-like corpus ([`corpus`]), at [`TEST_RATE`].
pub async fn start_corpus_portals() -> (Portal, Portal) {
    b24_testkit::install_crypto_provider();
    let source = Portal::builder()
        .domain("partner.test")
        .webhook(1, SOURCE_SECRET, &["crm", "user", "im"])
        .webhook(2, "noImS3cret", &["crm", "user"])
        .rate_limit(TEST_RATE.0, TEST_RATE.1)
        .seed(corpus::source_seed())
        .start()
        .await
        .expect("source portal starts");
    let target = Portal::builder()
        .domain("esb.test")
        .webhook(1, TARGET_SECRET, &["crm", "user"])
        .rate_limit(TEST_RATE.0, TEST_RATE.1)
        .seed(corpus::target_seed())
        .start()
        .await
        .expect("target portal starts");
    (source, target)
}
