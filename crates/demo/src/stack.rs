//! Everything the demo runs, started in one process on 127.0.0.1 (free
//! ports, or fixed ones from `--port-base`) with its files in a directory
//! (temporary, or `--dir`), and stopped together.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use b24_emulator::{EventHandler, HandlerSeed, Portal};
use serde_json::{Value, json};

use b24_cli_support::Chain;

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

/// Where the demo keeps its files: a temporary directory removed at the
/// end, or one the user named (`--dir`), kept.
pub enum Dir {
    Temporary(tempfile::TempDir),
    Kept(PathBuf),
}

impl Dir {
    pub fn path(&self) -> &Path {
        match self {
            Dir::Temporary(dir) => dir.path(),
            Dir::Kept(path) => path,
        }
    }
}

/// Files the demo writes (configs, secrets, certificate, nodes list).
pub struct Files {
    pub dir: Dir,
    pub cert_pem: String,
    pub nodes: PathBuf,
    /// The configurations the relay and the edge run with, as files a user
    /// can copy or point `b24-relay jobs --config` at.
    pub relay_toml: PathBuf,
    pub edge_toml: PathBuf,
}

impl Files {
    /// A file in the demo's directory (`partner.webhook`, `edge-cert.pem`…).
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// How the demo runs: where its files go and which ports it takes.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Keep the files in this directory (created if missing) instead of a
    /// temporary one removed at the end.
    pub dir: Option<PathBuf>,
    /// Listen on fixed ports from this one up ([`PORTS`] of them, in the
    /// order of [`Ports`]) instead of free ones the system picks.
    pub port_base: Option<u16>,
}

/// How many consecutive ports `--port-base` takes.
pub const PORTS: u16 = 7;

/// Every listening address of the demo, all on 127.0.0.1; port 0 (any
/// free port) unless `--port-base` fixes them.
#[derive(Debug, Clone, Copy)]
pub struct Ports {
    pub source: SocketAddr,
    pub target: SocketAddr,
    pub relay: SocketAddr,
    pub relay_metrics: SocketAddr,
    pub edge: SocketAddr,
    pub edge_metrics: SocketAddr,
    pub queue: SocketAddr,
}

impl Ports {
    pub fn new(base: Option<u16>) -> Result<Ports, DemoError> {
        let at = |offset: u16| -> Result<SocketAddr, DemoError> {
            let port = match base {
                None => 0,
                Some(base) => base.checked_add(offset).ok_or_else(|| {
                    start_error(
                        "the demo",
                        format!("--port-base {base} leaves no room for {PORTS} ports below 65536"),
                    )
                })?,
            };
            Ok(SocketAddr::new(LISTED, port))
        };
        Ok(Ports {
            source: at(0)?,
            target: at(1)?,
            relay: at(2)?,
            relay_metrics: at(3)?,
            edge: at(4)?,
            edge_metrics: at(5)?,
            queue: at(6)?,
        })
    }
}

fn write(dir: &Path, name: &str, text: &str) -> Result<PathBuf, DemoError> {
    let path = dir.join(name);
    std::fs::write(&path, text).map_err(|e| start_error("the demo's files", Chain(&e)))?;
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

/// The relay's configuration; `listen` and `metrics_listen` as given (port
/// 0 before the start, the bound ports in the file written after it).
fn relay_config(
    dir: &Path,
    source: &Portal,
    target: &Portal,
    listen: SocketAddr,
    metrics_listen: SocketAddr,
) -> Result<String, DemoError> {
    let source_hook = write(
        dir,
        "partner.webhook",
        &source.webhook_url(1, SOURCE_SECRET),
    )?;
    let target_hook = write(dir, "hq.webhook", &target.webhook_url(1, TARGET_SECRET))?;
    let token = write(dir, "partner.token", APP_TOKEN)?;
    Ok(format!(
        r#"
listen = "{listen}"
metrics_listen = "{metrics_listen}"
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

fn edge_config(
    cert: &Path,
    key: &Path,
    nodes: &Path,
    relay: SocketAddr,
    listen: SocketAddr,
    metrics_listen: SocketAddr,
) -> String {
    format!(
        r#"
[server]
listen = "{listen}"
tls_cert = "{cert}"
tls_key = "{key}"
metrics_listen = "{metrics_listen}"
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

/// The relay's configuration with the addresses it bound.
fn relay_config_text_bound(
    dir: &Path,
    source: &Portal,
    target: &Portal,
    relay: &b24_relay::Relay,
) -> Result<String, DemoError> {
    let metrics = relay.metrics_addr.unwrap_or(relay.addr);
    Ok(format!(
        "{}{}",
        written_header("b24-relay", dir),
        relay_config(dir, source, target, relay.addr, metrics)?
    ))
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

/// The header of the configuration files the demo writes.
fn written_header(program: &str, dir: &Path) -> String {
    let path = dir.join("relay.toml");
    format!(
        "# The configuration b24-demo runs {program} with, ports as bound in this run\n\
         # (--port-base fixes them). The secrets are in the files it names.\n\
         # While the demo runs: b24-relay jobs list --config {}\n",
        path.display()
    )
}

impl Stack {
    pub async fn start(options: &Options) -> Result<Stack, DemoError> {
        let ports = Ports::new(options.port_base)?;
        let dir = match &options.dir {
            Some(path) => {
                std::fs::create_dir_all(path)
                    .map_err(|e| start_error("the demo's directory", Chain(&e)))?;
                Dir::Kept(path.clone())
            }
            None => Dir::Temporary(
                tempfile::Builder::new()
                    .prefix("b24-demo-")
                    .tempdir()
                    .map_err(|e| start_error("the demo's directory", Chain(&e)))?,
            ),
        };
        let source = Portal::builder()
            .domain("partner.test")
            .listen(ports.source)
            .webhook(1, SOURCE_SECRET, &["crm", "user"])
            .seed(source_seed())
            .start()
            .await
            .map_err(|e| start_error("the source portal", Chain(&e)))?;
        let target = Portal::builder()
            .domain("hq.test")
            .listen(ports.target)
            .webhook(1, TARGET_SECRET, &["crm", "user"])
            .seed(target_seed())
            .start()
            .await
            .map_err(|e| start_error("the target portal", Chain(&e)))?;

        let relay_text = relay_config(
            dir.path(),
            &source,
            &target,
            ports.relay,
            ports.relay_metrics,
        )?;
        let parsed = b24_relay::Config::parse(&relay_text)
            .map_err(|e| start_error("the relay", Chain(&e)))?;
        let relay = b24_relay::Relay::start(parsed)
            .await
            .map_err(|e| start_error("the relay", Chain(&e)))?;
        let relay_bound = relay_config_text_bound(dir.path(), &source, &target, &relay)?;
        let relay_toml = write(dir.path(), "relay.toml", &relay_bound)?;

        let (cert_pem, cert, key) = certificate(dir.path())?;
        let nodes = write(
            dir.path(),
            "app.json",
            &format!("{{\"nodes\": [\"{LISTED}\"]}}\n"),
        )?;
        let edge_text = edge_config(
            &cert,
            &key,
            &nodes,
            relay.addr,
            ports.edge,
            ports.edge_metrics,
        );
        let parsed = b24_edge::Config::from_toml(&edge_text)
            .map_err(|e| start_error("the edge", Chain(&e)))?;
        let edge = b24_edge::start(parsed)
            .await
            .map_err(|e| start_error("the edge", Chain(&e)))?;
        let edge_metrics = edge.metrics_addr().unwrap_or(ports.edge_metrics);
        let edge_bound = format!(
            "{}{}",
            written_header("b24-edge", dir.path()),
            edge_config(
                &cert,
                &key,
                &nodes,
                relay.addr,
                edge.addrs()[0],
                edge_metrics
            )
        );
        let edge_toml = write(dir.path(), "edge.toml", &edge_bound)?;
        wait_ready(&edge).await?;

        let edge_url = format!("https://{}", edge.addrs()[0]);
        let queue =
            QueueServer::start(ports.queue, edge_url, client_from(LISTED, &cert_pem)?).await?;
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
                relay_toml,
                edge_toml,
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
        // A temporary directory goes now; a --dir one is kept.
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
