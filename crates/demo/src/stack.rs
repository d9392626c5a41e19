//! Everything the demo runs, started in one process on 127.0.0.1 with
//! ephemeral ports and a temporary directory, and stopped together.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use b24_emulator::{EventHandler, HandlerSeed, Portal};
use serde_json::{Value, json};

use crate::error::{DemoError, start_error};
use crate::queue::{QueueServer, client_from};

/// Webhook secrets and the outgoing webhook's token of the emulated
/// portals. They live in files under the demo's directory and are never
/// printed.
const SOURCE_SECRET: &str = "demoSourceHook7f3a";
const TARGET_SECRET: &str = "demoTargetHook91c2";
const APP_TOKEN: &str = "demoAppToken5d8e0b";

/// The source pipeline and the stage that hands a deal over.
pub const SOURCE_CATEGORY: i64 = 2;
pub const START_STAGE: &str = "C2:NEW";
pub const TRIGGER_STAGE: &str = "C2:PREPARATION";
pub const ROUTE: &str = "partner-to-hq";
/// The address in the demo's nodes list: the queue servers' stand-in.
pub const LISTED: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

fn source_seed() -> Value {
    json!({
        "users": [{"id": 1, "name": "Admin", "email": "admin@partner.test"}],
        "pipelines": [{"id": SOURCE_CATEGORY, "name": "Partners", "stages": [
            {"id": START_STAGE, "name": "New"},
            {"id": TRIGGER_STAGE, "name": "Ready to hand over"},
            {"id": "C2:WON", "name": "Won", "semantics": "S"}
        ]}]
    })
}

fn target_seed() -> Value {
    json!({
        "users": [{"id": 1, "name": "Admin", "email": "admin@hq.test"}],
        "pipelines": [{"id": 3, "name": "From partners", "stages": [
            {"id": "C3:NEW", "name": "New"},
            {"id": "C3:RECEIVED", "name": "Received from a partner"},
            {"id": "C3:WON", "name": "Won", "semantics": "S"}
        ]}]
    })
}

/// Files the demo writes (config, secrets, certificate, nodes list).
pub struct Files {
    pub dir: tempfile::TempDir,
    pub cert_pem: String,
    pub nodes: PathBuf,
}

impl Files {
    /// A file in the demo's directory (`partner.webhook`, `edge-cert.pem`…).
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

fn write(dir: &Path, name: &str, text: &str) -> Result<PathBuf, DemoError> {
    let path = dir.join(name);
    std::fs::write(&path, text).map_err(|e| start_error("the demo's files", e))?;
    Ok(path)
}

/// The edge's certificate: self-signed for 127.0.0.1 and localhost, valid
/// for 90 days like a Let's Encrypt one (the edge exports its expiry).
fn certificate(dir: &Path) -> Result<(String, PathBuf, PathBuf), DemoError> {
    let mut params =
        rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
            .map_err(|e| start_error("the edge's certificate", e))?;
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(90);
    let key = rcgen::KeyPair::generate().map_err(|e| start_error("the edge's certificate", e))?;
    let cert = params
        .self_signed(&key)
        .map_err(|e| start_error("the edge's certificate", e))?;
    let cert_pem = cert.pem();
    let cert_path = write(dir, "edge-cert.pem", &cert_pem)?;
    let key_path = write(dir, "edge-key.pem", &key.serialize_pem())?;
    Ok((cert_pem, cert_path, key_path))
}

fn relay_config(dir: &Path, source: &Portal, target: &Portal) -> Result<String, DemoError> {
    let source_hook = write(
        dir,
        "partner.webhook",
        &source.webhook_url(1, SOURCE_SECRET),
    )?;
    let target_hook = write(dir, "hq.webhook", &target.webhook_url(1, TARGET_SECRET))?;
    let token = write(dir, "partner.token", APP_TOKEN)?;
    Ok(format!(
        r#"
listen = "127.0.0.1:0"
metrics_listen = "127.0.0.1:0"
store = "sqlite://{db}"
workers = 2
retry_base_delay = "200ms"
retry_max_delay = "2s"

[portal.partner]
webhook = {{ file = "{source_hook}" }}
application_token = {{ file = "{token}" }}
domain = "{domain}"

[portal.hq]
webhook = {{ file = "{target_hook}" }}

[[route]]
name = "{ROUTE}"
from = "partner"
to = "hq"
when = {{ category = {SOURCE_CATEGORY}, stages = ["{TRIGGER_STAGE}"] }}
target = {{ category = 3, stage = "C3:NEW", stages = {{ "{TRIGGER_STAGE}" = "C3:RECEIVED" }} }}
fields = {{ title = "title", opportunity = "opportunity", currencyId = "currencyId" }}
constants = {{ sourceId = "PARTNER" }}
products = true
writeback = {{ comment = true }}
"#,
        db = dir.join("relay.db").display(),
        source_hook = source_hook.display(),
        target_hook = target_hook.display(),
        token = token.display(),
        domain = source.domain(),
    ))
}

fn edge_config(cert: &Path, key: &Path, nodes: &Path, relay: SocketAddr) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
tls_cert = "{cert}"
tls_key = "{key}"
metrics_listen = "127.0.0.1:0"
workers = 1
shutdown_timeout = "5s"
# The demo shows the unlisted client its 403 (a production edge resets
# such a connection before TLS).
refuse_before_tls = false

[nodes]
source = "{nodes}"
# The demo's "queue server" is 127.0.0.1: loopback is refused in a list
# unless allowed explicitly.
allow_special = true

[[route]]
prefix = "/"
upstream = "http://{relay}"
allow = ["nodes"]
"#,
        cert = cert.display(),
        key = key.display(),
        nodes = nodes.display(),
    )
}

/// The running pieces.
pub struct Stack {
    pub source: Portal,
    pub target: Portal,
    pub relay: b24_relay::Relay,
    pub edge: b24_edge::EdgeHandle,
    pub queue: QueueServer,
    pub files: Files,
}

impl Stack {
    pub async fn start() -> Result<Stack, DemoError> {
        let dir = tempfile::Builder::new()
            .prefix("b24-demo-")
            .tempdir()
            .map_err(|e| start_error("the demo's directory", e))?;
        let source = Portal::builder()
            .domain("partner.test")
            .webhook(1, SOURCE_SECRET, &["crm", "user"])
            .seed(source_seed())
            .start()
            .await
            .map_err(|e| start_error("the source portal", e))?;
        let target = Portal::builder()
            .domain("hq.test")
            .webhook(1, TARGET_SECRET, &["crm", "user"])
            .seed(target_seed())
            .start()
            .await
            .map_err(|e| start_error("the target portal", e))?;

        let relay_text = relay_config(dir.path(), &source, &target)?;
        let relay_config =
            b24_relay::Config::parse(&relay_text).map_err(|e| start_error("the relay", e))?;
        let relay = b24_relay::Relay::start(relay_config)
            .await
            .map_err(|e| start_error("the relay", e))?;

        let (cert_pem, cert, key) = certificate(dir.path())?;
        let nodes = write(
            dir.path(),
            "app.json",
            &format!("{{\"nodes\": [\"{LISTED}\"]}}\n"),
        )?;
        let edge_config =
            b24_edge::Config::from_toml(&edge_config(&cert, &key, &nodes, relay.addr))
                .map_err(|e| start_error("the edge", e))?;
        let edge = b24_edge::start(edge_config)
            .await
            .map_err(|e| start_error("the edge", e))?;
        wait_ready(&edge).await?;

        let edge_url = format!("https://{}", edge.addrs()[0]);
        let queue = QueueServer::start(edge_url, client_from(LISTED, &cert_pem)?).await?;
        Ok(Stack {
            source,
            target,
            relay,
            edge,
            queue,
            files: Files {
                dir,
                cert_pem,
                nodes,
            },
        })
    }

    /// Subscribes the relay (through the queue-server stand-in and the
    /// edge) to the source portal's deal events, as an administrator does
    /// with an outgoing webhook.
    pub fn hook_up(&self) {
        let url = format!("{}/hook/event/partner", self.queue.url());
        let events = ["ONCRMDEALADD", "ONCRMDEALUPDATE"]
            .into_iter()
            .map(|event| EventHandler {
                event: event.into(),
                url: url.clone(),
                application_token: APP_TOKEN.into(),
            })
            .collect();
        self.source.admin().add_handlers(HandlerSeed {
            events,
            ..HandlerSeed::default()
        });
    }

    pub fn edge_url(&self) -> String {
        format!("https://{}", self.edge.addrs()[0])
    }

    /// The source portal's incoming-webhook URL (holds its secret: for
    /// requests only, never for output).
    pub fn source_webhook(&self) -> String {
        self.source.webhook_url(1, SOURCE_SECRET)
    }

    /// Stops everything: deliveries first, then the edge, then the relay.
    pub async fn shutdown(self) {
        self.source.shutdown().await;
        self.target.shutdown().await;
        self.queue.shutdown().await;
        self.edge.shutdown().await;
        self.relay.shutdown().await;
        drop(self.files.dir);
    }
}

/// The edge reads the nodes file in the background; wait until it admits.
async fn wait_ready(edge: &b24_edge::EdgeHandle) -> Result<(), DemoError> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match edge.readiness() {
            Ok(()) => return Ok(()),
            Err(reason) if tokio::time::Instant::now() >= deadline => {
                return Err(start_error("the edge", format!("not ready: {reason}")));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}
