//! The configuration: one TOML file, deserialized and validated once into
//! [`Config`]. Every error names the key it is about.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use b24_nodes::{MIN_INTERVAL, Source};
use http::Uri;
use ipnet::IpNet;
use serde::Deserialize;

/// Why a configuration was refused: where (`edge.toml:12:10`), the key
/// (`server.listen`, `route[2].allow`…) and what to write instead.
pub use b24_cli_support::ConfigError;

fn invalid(key: impl Into<String>, problem: impl Into<String>) -> ConfigError {
    ConfigError::invalid(key, problem)
}

/// The validated configuration of one edge.
#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerConfig,
    pub nodes: NodesConfig,
    pub client_ip: ClientIpConfig,
    /// In file order; matching is by longest prefix.
    pub routes: Vec<RouteConfig>,
}

/// Where the client address of a listener's connections comes from: one
/// source per listener, never two at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientIpMode {
    /// The TCP peer. Anything a client writes in X-Forwarded-For is ignored.
    Peer,
    /// A PROXY protocol (v1 or v2) header, which every connection must
    /// start with and only `client_ip.trusted_proxies` may send.
    ProxyProtocol,
    /// X-Forwarded-For, believed from `client_ip.trusted_proxies` only.
    XForwardedFor,
}

impl ClientIpMode {
    fn parse(key: &str, text: &str) -> Result<ClientIpMode, ConfigError> {
        match text.trim() {
            "peer" => Ok(ClientIpMode::Peer),
            "proxy_protocol" => Ok(ClientIpMode::ProxyProtocol),
            "x_forwarded_for" => Ok(ClientIpMode::XForwardedFor),
            other => Err(invalid(
                key,
                format!("{other:?} is not \"peer\", \"proxy_protocol\" or \"x_forwarded_for\""),
            )),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ClientIpMode::Peer => "peer",
            ClientIpMode::ProxyProtocol => "proxy_protocol",
            ClientIpMode::XForwardedFor => "x_forwarded_for",
        }
    }
}

/// One address the edge accepts TLS connections on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listener {
    pub addr: SocketAddr,
    pub client_ip: ClientIpMode,
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: Vec<Listener>,
    pub tls_cert: PathBuf,
    pub tls_key: PathBuf,
    /// `/metrics`, `/healthz` and `/readyz` (plain HTTP); none when absent.
    pub metrics_listen: Option<SocketAddr>,
    pub limits: Limits,
    /// Serving threads, each with its own listening sockets and upstream
    /// pool (default: one per CPU).
    pub workers: usize,
    /// How often the certificate files are checked for a new version.
    pub tls_reload_poll: Duration,
    /// Whether a client no route admits is refused when it connects,
    /// before the TLS handshake (else it gets a 403 for each request).
    pub refuse_before_tls: bool,
}

/// Bounds that protect the edge and its upstreams.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Largest request body forwarded, in bytes (413 above it).
    pub max_body: u64,
    /// Bodies up to this size, and every body of unknown length, are read
    /// whole before the upstream is contacted; larger declared bodies are
    /// streamed. At most `max_body`.
    pub body_buffer: u64,
    /// Time a new connection has to deliver its first complete request
    /// head, counted from accept: PROXY header, TLS handshake and the head
    /// itself (h2: preface, SETTINGS and HEADERS).
    pub header_timeout: Duration,
    /// Time a kept-alive connection may wait for its next complete request
    /// head after the previous response (h2: GOAWAY after that).
    pub idle_timeout: Duration,
    /// Most time between two reads of a request body (408 after it).
    pub client_body_timeout: Duration,
    /// Most time a write to a client may wait: a client that stops reading
    /// its response is dropped.
    pub send_timeout: Duration,
    /// Time to connect to an upstream, with an https upstream's TLS
    /// handshake (502 after it).
    pub upstream_connect_timeout: Duration,
    /// Time the upstream has to start its response once the request is
    /// sent (504 after it), and most time between two reads of its body.
    pub upstream_timeout: Duration,
    /// Connections served at once.
    pub max_connections: usize,
    /// Slots only clients admitted by address (the nodes list, `extra`, a
    /// route's networks) may take; everyone else shares the rest.
    pub reserved_connections: usize,
    /// Connections one client address may hold at once.
    pub max_connections_per_address: usize,
    /// On shutdown, how long in-flight requests may take to finish.
    pub shutdown_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body: 10 * 1024 * 1024,
            body_buffer: 1024 * 1024,
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
            client_body_timeout: Duration::from_secs(30),
            send_timeout: Duration::from_secs(30),
            upstream_connect_timeout: Duration::from_secs(5),
            upstream_timeout: Duration::from_secs(30),
            max_connections: 10_000,
            reserved_connections: 1_000,
            max_connections_per_address: 256,
            shutdown_timeout: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Clone)]
pub struct NodesConfig {
    /// One or more sources; their union is admitted, each fetched and
    /// cached on its own.
    pub sources: Vec<Source>,
    pub cache: Option<PathBuf>,
    /// Accept list entries broader than /24 (IPv4) or /48 (IPv6).
    pub allow_broad: bool,
    /// Accept loopback, private, documentation, benchmarking and other
    /// special-purpose addresses in the list.
    pub allow_special: bool,
    /// Between two requests to a URL source; at least 60 s.
    pub refresh: Duration,
    /// Addresses admitted wherever `nodes` is, even with no list at all.
    pub extra: Vec<IpNet>,
    /// How often a file source is checked for a new version.
    pub file_poll: Duration,
}

#[derive(Debug, Clone)]
pub struct ClientIpConfig {
    /// The mode of listeners that do not name their own.
    pub mode: ClientIpMode,
    /// Peers whose X-Forwarded-For and PROXY header are believed.
    pub trusted_proxies: Vec<IpNet>,
}

#[derive(Debug, Clone)]
pub struct RouteConfig {
    /// In normal form (see [`crate::head`]); matched against the normalized
    /// request path as a plain string prefix.
    pub prefix: String,
    /// As written in the file: the `route` label of its metrics.
    pub label: String,
    /// Scheme and authority only; the normalized request path is forwarded.
    pub upstream: Uri,
    /// PEM file of the CA(s) that sign an `https` upstream's certificate;
    /// the system roots are used when absent.
    pub ca_file: Option<PathBuf>,
    pub allow: Vec<Allow>,
}

/// One entry of a route's `allow` list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Allow {
    Any,
    Nodes,
    Network(IpNet),
}

impl RouteConfig {
    pub fn uses_nodes(&self) -> bool {
        self.allow.contains(&Allow::Nodes)
    }
}

impl Config {
    /// Reads and validates a file; errors name it with the line and column.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = b24_cli_support::config::read(path)?;
        Config::from_toml(&text).map_err(|e| e.in_file(path))
    }

    /// Errors are located in `text` (line, column, the line shown with any
    /// secret hidden).
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let raw: RawConfig = b24_cli_support::config::parse(text)?;
        raw.validate().map_err(|e| e.locate(text))
    }

    /// Whether any route admits by the nodes list.
    pub fn uses_nodes(&self) -> bool {
        self.routes.iter().any(RouteConfig::uses_nodes)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    server: RawServer,
    #[serde(default)]
    nodes: RawNodes,
    #[serde(default)]
    client_ip: RawClientIp,
    #[serde(default)]
    route: Vec<RawRoute>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum ListenEntries {
    // A list first: a struct would also accept a list as its fields.
    Many(Vec<RawListen>),
    One(RawListen),
}

/// `"0.0.0.0:443"`, or `{ address = "10.0.0.2:8443", client_ip = "proxy_protocol" }`.
#[derive(Deserialize)]
#[serde(untagged)]
enum RawListen {
    Address(String),
    Table(RawListenTable),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawListenTable {
    address: String,
    client_ip: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Size {
    Bytes(u64),
    Text(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    listen: ListenEntries,
    tls_cert: PathBuf,
    tls_key: PathBuf,
    metrics_listen: Option<String>,
    max_body: Option<Size>,
    body_buffer: Option<Size>,
    header_timeout: Option<String>,
    idle_timeout: Option<String>,
    client_body_timeout: Option<String>,
    send_timeout: Option<String>,
    upstream_connect_timeout: Option<String>,
    upstream_timeout: Option<String>,
    max_connections: Option<usize>,
    reserved_connections: Option<usize>,
    max_connections_per_address: Option<usize>,
    shutdown_timeout: Option<String>,
    workers: Option<usize>,
    tls_reload_poll: Option<String>,
    refuse_before_tls: Option<bool>,
}

/// `source = "…"` or `source = ["…", "…"]`.
#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawNodes {
    source: Option<OneOrMany>,
    cache: Option<PathBuf>,
    #[serde(default)]
    allow_broad: bool,
    #[serde(default)]
    allow_special: bool,
    refresh: Option<String>,
    #[serde(default)]
    extra: Vec<String>,
    file_poll: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawClientIp {
    mode: Option<String>,
    #[serde(default)]
    trusted_proxies: Vec<String>,
    /// Replaced by `mode`; kept only to say so.
    proxy_protocol: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    prefix: String,
    upstream: String,
    ca_file: Option<PathBuf>,
    #[serde(default)]
    allow: Vec<String>,
}

impl RawConfig {
    fn validate(self) -> Result<Config, ConfigError> {
        let client_ip = self.client_ip.validate()?;
        let server = self.server.validate(&client_ip)?;
        let nodes = self.nodes.validate()?;
        if self.route.is_empty() {
            return Err(invalid(
                "route",
                "no [[route]] is configured; the edge would deny everything",
            ));
        }
        let mut routes = Vec::with_capacity(self.route.len());
        for (index, raw) in self.route.into_iter().enumerate() {
            let route = raw.validate(index)?;
            if let Some(earlier) = routes
                .iter()
                .find(|r: &&RouteConfig| r.prefix == route.prefix)
            {
                return Err(invalid(
                    format!("route[{index}].prefix"),
                    format!(
                        "{:?} means the same path as the earlier route's {:?}",
                        route.label, earlier.label
                    ),
                ));
            }
            routes.push(route);
        }
        Ok(Config {
            server,
            nodes,
            client_ip,
            routes,
        })
    }
}

impl RawClientIp {
    fn validate(self) -> Result<ClientIpConfig, ConfigError> {
        if self.proxy_protocol.is_some() {
            return Err(invalid(
                "client_ip.proxy_protocol",
                "was replaced by client_ip.mode = \"proxy_protocol\" (or \"x_forwarded_for\", or \"peer\"): one source of the client address per listener",
            ));
        }
        let mode = match self.mode.as_deref() {
            None => ClientIpMode::Peer,
            Some(text) => ClientIpMode::parse("client_ip.mode", text)?,
        };
        Ok(ClientIpConfig {
            mode,
            trusted_proxies: networks("client_ip.trusted_proxies", &self.trusted_proxies)?,
        })
    }
}

impl RawServer {
    fn validate(self, client_ip: &ClientIpConfig) -> Result<ServerConfig, ConfigError> {
        let entries = match self.listen {
            ListenEntries::One(one) => vec![one],
            ListenEntries::Many(many) => many,
        };
        if entries.is_empty() {
            return Err(invalid("server.listen", "is empty"));
        }
        let mut listen = Vec::with_capacity(entries.len());
        for entry in entries {
            let listener = match entry {
                RawListen::Address(text) => Listener {
                    addr: socket_addr("server.listen", &text)?,
                    client_ip: client_ip.mode,
                },
                RawListen::Table(table) => Listener {
                    addr: socket_addr("server.listen", &table.address)?,
                    client_ip: match table.client_ip.as_deref() {
                        None => client_ip.mode,
                        Some(text) => ClientIpMode::parse("server.listen.client_ip", text)?,
                    },
                },
            };
            if listen.iter().any(|l: &Listener| l.addr == listener.addr) {
                return Err(invalid(
                    "server.listen",
                    format!("{} is listed twice; list each address once", listener.addr),
                ));
            }
            if listener.client_ip != ClientIpMode::Peer && client_ip.trusted_proxies.is_empty() {
                return Err(invalid(
                    "client_ip.trusted_proxies",
                    format!(
                        "is empty, but {} takes the client address from {}; list the load balancers in front of it",
                        listener.addr,
                        listener.client_ip.as_str()
                    ),
                ));
            }
            listen.push(listener);
        }
        if !client_ip.trusted_proxies.is_empty()
            && listen.iter().all(|l| l.client_ip == ClientIpMode::Peer)
        {
            return Err(invalid(
                "client_ip.mode",
                "is \"peer\" on every listener, so client_ip.trusted_proxies would be ignored; set mode = \"x_forwarded_for\" or \"proxy_protocol\", or remove trusted_proxies",
            ));
        }
        let metrics_listen = self
            .metrics_listen
            .as_deref()
            .map(|text| socket_addr("server.metrics_listen", text))
            .transpose()?;
        // Port 0 (tests: any free port) never collides.
        let fixed = |addr: &SocketAddr| addr.port() != 0;
        if let Some(metrics) =
            metrics_listen.filter(|m| fixed(m) && listen.iter().any(|l| l.addr == *m))
        {
            return Err(invalid(
                "server.metrics_listen",
                format!(
                    "{metrics} is also in server.listen; give the metrics their own port, like 127.0.0.1:9901"
                ),
            ));
        }
        let defaults = Limits::default();
        let max_body = match self.max_body {
            None => defaults.max_body,
            Some(Size::Bytes(n)) => n,
            Some(Size::Text(text)) => parse_size(&text).ok_or_else(|| {
                invalid(
                    "server.max_body",
                    format!("{text:?} is not a size like 10485760, \"512KiB\" or \"10MiB\""),
                )
            })?,
        };
        let body_buffer = match self.body_buffer {
            None => defaults.body_buffer,
            Some(Size::Bytes(n)) => n,
            Some(Size::Text(text)) => parse_size(&text).ok_or_else(|| {
                invalid(
                    "server.body_buffer",
                    format!("{text:?} is not a size like 65536, \"64KiB\" or \"1MiB\""),
                )
            })?,
        }
        .min(max_body);
        let max_connections = self.max_connections.unwrap_or(defaults.max_connections);
        if max_connections == 0 {
            return Err(invalid("server.max_connections", "must be at least 1"));
        }
        let reserved_connections = self.reserved_connections.unwrap_or(max_connections / 10);
        if reserved_connections >= max_connections {
            return Err(invalid(
                "server.reserved_connections",
                format!("must be less than server.max_connections ({max_connections})"),
            ));
        }
        let max_connections_per_address = self
            .max_connections_per_address
            .unwrap_or(defaults.max_connections_per_address);
        if max_connections_per_address == 0 {
            return Err(invalid(
                "server.max_connections_per_address",
                "must be at least 1",
            ));
        }
        let workers = match self.workers {
            Some(0) => return Err(invalid("server.workers", "must be at least 1")),
            Some(n) => n,
            None => std::thread::available_parallelism().map_or(1, |n| n.get()),
        };
        let limits = Limits {
            max_body,
            body_buffer,
            header_timeout: duration(
                "server.header_timeout",
                self.header_timeout,
                defaults.header_timeout,
            )?,
            idle_timeout: duration(
                "server.idle_timeout",
                self.idle_timeout,
                defaults.idle_timeout,
            )?,
            client_body_timeout: duration(
                "server.client_body_timeout",
                self.client_body_timeout,
                defaults.client_body_timeout,
            )?,
            send_timeout: duration(
                "server.send_timeout",
                self.send_timeout,
                defaults.send_timeout,
            )?,
            upstream_connect_timeout: duration(
                "server.upstream_connect_timeout",
                self.upstream_connect_timeout,
                defaults.upstream_connect_timeout,
            )?,
            upstream_timeout: duration(
                "server.upstream_timeout",
                self.upstream_timeout,
                defaults.upstream_timeout,
            )?,
            max_connections,
            reserved_connections,
            max_connections_per_address,
            shutdown_timeout: duration(
                "server.shutdown_timeout",
                self.shutdown_timeout,
                defaults.shutdown_timeout,
            )?,
        };
        Ok(ServerConfig {
            listen,
            tls_cert: self.tls_cert,
            tls_key: self.tls_key,
            metrics_listen,
            limits,
            workers,
            tls_reload_poll: duration(
                "server.tls_reload_poll",
                self.tls_reload_poll,
                Duration::from_secs(5),
            )?,
            refuse_before_tls: self.refuse_before_tls.unwrap_or(true),
        })
    }
}

impl RawNodes {
    fn validate(self) -> Result<NodesConfig, ConfigError> {
        let texts = match self.source {
            None => vec![b24_nodes::DEFAULT_SOURCE.to_string()],
            Some(OneOrMany::One(one)) => vec![one],
            Some(OneOrMany::Many(many)) => many,
        };
        if texts.is_empty() {
            return Err(invalid("nodes.source", "is an empty list"));
        }
        let mut sources: Vec<Source> = Vec::with_capacity(texts.len());
        for text in &texts {
            let source = text
                .parse::<Source>()
                .map_err(|e| invalid("nodes.source", e.to_string()))?;
            if sources.contains(&source) {
                return Err(invalid("nodes.source", format!("{source} is listed twice")));
            }
            sources.push(source);
        }
        let refresh = duration("nodes.refresh", self.refresh, Duration::from_secs(300))?;
        if refresh < MIN_INTERVAL {
            return Err(invalid(
                "nodes.refresh",
                format!(
                    "{} is below {}; Bitrix24 asks for at most one request a minute",
                    humantime::format_duration(refresh),
                    humantime::format_duration(MIN_INTERVAL)
                ),
            ));
        }
        Ok(NodesConfig {
            sources,
            cache: self.cache,
            allow_broad: self.allow_broad,
            allow_special: self.allow_special,
            refresh,
            extra: networks("nodes.extra", &self.extra)?,
            file_poll: duration("nodes.file_poll", self.file_poll, Duration::from_secs(1))?,
        })
    }
}

impl RawRoute {
    fn validate(self, index: usize) -> Result<RouteConfig, ConfigError> {
        let key = |name: &str| format!("route[{index}].{name}");
        if !self.prefix.starts_with('/') {
            return Err(invalid(
                key("prefix"),
                format!("{:?} must start with '/'", self.prefix),
            ));
        }
        // Requests are matched in normal form, so the prefix is too.
        let prefix = crate::head::normalize_path(&self.prefix)
            .map_err(|e| {
                invalid(
                    key("prefix"),
                    format!("{:?} has {e}; no request path could match it", self.prefix),
                )
            })?
            .into_owned();
        let upstream: Uri = self
            .upstream
            .parse()
            .map_err(|_| invalid(key("upstream"), "is not a URL like http://127.0.0.1:8080"))?;
        let scheme = upstream.scheme_str().unwrap_or("");
        if scheme != "http" && scheme != "https" {
            return Err(invalid(
                key("upstream"),
                "must start with http:// or https://",
            ));
        }
        if upstream.authority().is_none() {
            return Err(invalid(key("upstream"), "has no host"));
        }
        if upstream
            .authority()
            .is_some_and(|a| a.as_str().contains('@'))
        {
            return Err(invalid(key("upstream"), "must not contain credentials"));
        }
        if upstream
            .path_and_query()
            .is_some_and(|p| p.as_str() != "/" && !p.as_str().is_empty())
        {
            return Err(invalid(
                key("upstream"),
                "must have no path or query; the request's own (normalized) path is forwarded",
            ));
        }
        if self.ca_file.is_some() && scheme != "https" {
            return Err(invalid(
                key("ca_file"),
                "is only used with an https:// upstream",
            ));
        }
        let mut allow = Vec::with_capacity(self.allow.len());
        for entry in &self.allow {
            let parsed = match entry.trim() {
                "any" => Allow::Any,
                "nodes" => Allow::Nodes,
                text => Allow::Network(parse_network(text).ok_or_else(|| {
                    invalid(
                        key("allow"),
                        format!(
                            "{entry:?} is not \"nodes\", \"any\", an IP address or a CIDR network"
                        ),
                    )
                })?),
            };
            allow.push(parsed);
        }
        Ok(RouteConfig {
            prefix,
            label: self.prefix,
            upstream,
            ca_file: self.ca_file,
            allow,
        })
    }
}

fn socket_addr(key: &str, text: &str) -> Result<SocketAddr, ConfigError> {
    b24_cli_support::config::parse_socket_addr(text).map_err(|problem| invalid(key, problem))
}

fn duration(key: &str, text: Option<String>, default: Duration) -> Result<Duration, ConfigError> {
    let Some(text) = text else {
        return Ok(default);
    };
    let value = humantime::parse_duration(text.trim()).map_err(|e| {
        invalid(
            key,
            format!("{text:?} is not a duration like \"30s\" or \"500ms\": {e}"),
        )
    })?;
    if value.is_zero() {
        return Err(invalid(key, "must be more than zero"));
    }
    Ok(value)
}

fn networks(key: &str, entries: &[String]) -> Result<Vec<IpNet>, ConfigError> {
    entries
        .iter()
        .map(|text| {
            parse_network(text).ok_or_else(|| {
                invalid(
                    key,
                    format!("{text:?} is not an IP address or a CIDR network"),
                )
            })
        })
        .collect()
}

/// An address or a network, host bits cleared.
fn parse_network(text: &str) -> Option<IpNet> {
    b24_nodes::parse_network(text.trim()).map(|net| net.trunc())
}

/// `1048576`, `512KiB`, `10MiB`, `1GiB` (also kB/MB/GB, powers of ten).
fn parse_size(text: &str) -> Option<u64> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().ok()?;
    let factor: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kib" | "k" => 1 << 10,
        "mib" | "m" => 1 << 20,
        "gib" | "g" => 1 << 30,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        _ => return None,
    };
    number.checked_mul(factor)
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
