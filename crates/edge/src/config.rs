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

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: Vec<SocketAddr>,
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
}

/// Bounds that protect the edge and its upstreams.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Largest request body forwarded, in bytes (413 above it).
    pub max_body: u64,
    /// Time a client has to complete the TLS handshake and each request's
    /// headers before its connection is closed; also the idle time after
    /// which an HTTP/1.1 keep-alive connection is closed.
    pub header_timeout: Duration,
    pub upstream_connect_timeout: Duration,
    /// Time the upstream has to start its response (504 after it).
    pub upstream_timeout: Duration,
    /// Connections served at once; further clients wait to be accepted.
    pub max_connections: usize,
    /// On shutdown, how long in-flight requests may take to finish.
    pub shutdown_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body: 10 * 1024 * 1024,
            header_timeout: Duration::from_secs(10),
            upstream_connect_timeout: Duration::from_secs(5),
            upstream_timeout: Duration::from_secs(30),
            max_connections: 10_000,
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

#[derive(Debug, Clone, Default)]
pub struct ClientIpConfig {
    /// Peers whose X-Forwarded-For and PROXY header are believed.
    pub trusted_proxies: Vec<IpNet>,
    /// Expect a PROXY protocol (v1 or v2) header from trusted peers.
    pub proxy_protocol: bool,
}

#[derive(Debug, Clone)]
pub struct RouteConfig {
    /// Matched against the request path as a plain string prefix.
    pub prefix: String,
    /// Scheme and authority only; the request path is forwarded unchanged.
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
enum OneOrMany {
    One(String),
    Many(Vec<String>),
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
    listen: OneOrMany,
    tls_cert: PathBuf,
    tls_key: PathBuf,
    metrics_listen: Option<String>,
    max_body: Option<Size>,
    header_timeout: Option<String>,
    upstream_connect_timeout: Option<String>,
    upstream_timeout: Option<String>,
    max_connections: Option<usize>,
    shutdown_timeout: Option<String>,
    workers: Option<usize>,
    tls_reload_poll: Option<String>,
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
    #[serde(default)]
    trusted_proxies: Vec<String>,
    #[serde(default)]
    proxy_protocol: bool,
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
        let server = self.server.validate()?;
        let nodes = self.nodes.validate()?;
        let client_ip = ClientIpConfig {
            trusted_proxies: networks(
                "client_ip.trusted_proxies",
                &self.client_ip.trusted_proxies,
            )?,
            proxy_protocol: self.client_ip.proxy_protocol,
        };
        if client_ip.proxy_protocol && client_ip.trusted_proxies.is_empty() {
            return Err(invalid(
                "client_ip.proxy_protocol",
                "is on but client_ip.trusted_proxies is empty; list the load balancers that send the PROXY header",
            ));
        }
        if self.route.is_empty() {
            return Err(invalid(
                "route",
                "no [[route]] is configured; the edge would deny everything",
            ));
        }
        let mut routes = Vec::with_capacity(self.route.len());
        for (index, raw) in self.route.into_iter().enumerate() {
            let route = raw.validate(index)?;
            if routes
                .iter()
                .any(|r: &RouteConfig| r.prefix == route.prefix)
            {
                return Err(invalid(
                    format!("route[{index}].prefix"),
                    format!("{:?} is used by an earlier route", route.prefix),
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

impl RawServer {
    fn validate(self) -> Result<ServerConfig, ConfigError> {
        let listen_texts = match self.listen {
            OneOrMany::One(one) => vec![one],
            OneOrMany::Many(many) => many,
        };
        if listen_texts.is_empty() {
            return Err(invalid("server.listen", "is empty"));
        }
        let listen = listen_texts
            .iter()
            .map(|text| socket_addr("server.listen", text))
            .collect::<Result<Vec<_>, _>>()?;
        let metrics_listen = self
            .metrics_listen
            .as_deref()
            .map(|text| socket_addr("server.metrics_listen", text))
            .transpose()?;
        // Port 0 (tests: any free port) never collides.
        let fixed = |addr: &SocketAddr| addr.port() != 0;
        if let Some(twice) = listen
            .iter()
            .enumerate()
            .find(|(i, a)| fixed(a) && listen[..*i].contains(a))
        {
            return Err(invalid(
                "server.listen",
                format!("{} is listed twice; list each address once", twice.1),
            ));
        }
        if let Some(metrics) = metrics_listen.filter(|m| fixed(m) && listen.contains(m)) {
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
        let max_connections = self.max_connections.unwrap_or(defaults.max_connections);
        if max_connections == 0 {
            return Err(invalid("server.max_connections", "must be at least 1"));
        }
        let workers = match self.workers {
            Some(0) => return Err(invalid("server.workers", "must be at least 1")),
            Some(n) => n,
            None => std::thread::available_parallelism().map_or(1, |n| n.get()),
        };
        let limits = Limits {
            max_body,
            header_timeout: duration(
                "server.header_timeout",
                self.header_timeout,
                defaults.header_timeout,
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
                "must have no path or query; the request path is forwarded unchanged",
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
            prefix: self.prefix,
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
