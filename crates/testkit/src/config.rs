//! Typed builders for the services' configuration files in tests, instead
//! of `format!`-built TOML repeated across test files: a test names what it
//! changes (`.allow_special()`, `.route(...)`) and the rest keeps working
//! defaults. Rendered with the `toml` crate, so paths and strings are always
//! quoted right.
//!
//! ```
//! use b24_testkit::config::{EdgeToml, EdgeRoute};
//! let text = EdgeToml::new("/tmp/cert.pem", "/tmp/key.pem")
//!     .nodes_source("/var/lib/nodesync/app.json")
//!     .allow_special()
//!     .route(EdgeRoute::new("/", "http://127.0.0.1:8080").allow(&["nodes"]))
//!     .render();
//! assert!(text.contains("allow_special = true"));
//! ```

use std::path::{Path, PathBuf};

use toml::{Table, Value};

/// Anything that goes into a TOML value.
fn value(v: impl Into<Value>) -> Value {
    v.into()
}

fn path_value(path: &Path) -> Value {
    Value::String(path.display().to_string())
}

fn strings(items: &[&str]) -> Value {
    Value::Array(items.iter().map(|s| value(*s)).collect())
}

/// `{ file = "PATH" }`: how the relay reads a secret.
pub fn secret_file(path: &Path) -> Value {
    let mut table = Table::new();
    table.insert("file".into(), path_value(path));
    Value::Table(table)
}

/// `{ env = "VAR" }`.
pub fn secret_env(var: &str) -> Value {
    let mut table = Table::new();
    table.insert("env".into(), value(var));
    Value::Table(table)
}

/// Writes `text` as `dir/name` and returns the path.
pub fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    path
}

/// One `[[route]]` of the edge.
#[derive(Debug, Clone)]
pub struct EdgeRoute(Table);

impl EdgeRoute {
    pub fn new(prefix: &str, upstream: &str) -> Self {
        let mut table = Table::new();
        table.insert("prefix".into(), value(prefix));
        table.insert("upstream".into(), value(upstream));
        table.insert("allow".into(), strings(&["nodes"]));
        EdgeRoute(table)
    }

    /// `nodes`, `any`, addresses or networks (default: `["nodes"]`).
    pub fn allow(mut self, allow: &[&str]) -> Self {
        self.0.insert("allow".into(), strings(allow));
        self
    }

    pub fn ca_file(mut self, path: &Path) -> Self {
        self.0.insert("ca_file".into(), path_value(path));
        self
    }
}

/// `edge.toml`: `[server]` on 127.0.0.1 with any free port, metrics too,
/// one worker, no route until one is added.
#[derive(Debug, Clone)]
pub struct EdgeToml {
    server: Table,
    nodes: Table,
    client_ip: Table,
    routes: Vec<EdgeRoute>,
}

impl EdgeToml {
    pub fn new(cert: impl AsRef<Path>, key: impl AsRef<Path>) -> Self {
        let mut server = Table::new();
        server.insert("listen".into(), value("127.0.0.1:0"));
        server.insert("tls_cert".into(), path_value(cert.as_ref()));
        server.insert("tls_key".into(), path_value(key.as_ref()));
        server.insert("metrics_listen".into(), value("127.0.0.1:0"));
        server.insert("workers".into(), value(1));
        EdgeToml {
            server,
            nodes: Table::new(),
            client_ip: Table::new(),
            routes: Vec::new(),
        }
    }

    pub fn listen(mut self, addr: impl ToString) -> Self {
        self.server.insert("listen".into(), value(addr.to_string()));
        self
    }

    pub fn metrics_listen(mut self, addr: impl ToString) -> Self {
        self.server
            .insert("metrics_listen".into(), value(addr.to_string()));
        self
    }

    /// Any other `[server]` key (`header_timeout`, `max_body`…).
    pub fn server(mut self, key: &str, v: impl Into<Value>) -> Self {
        self.server.insert(key.into(), v.into());
        self
    }

    /// Leaves a default `[server]` key out (`workers`: one per CPU, as in
    /// production).
    pub fn unset_server(mut self, key: &str) -> Self {
        self.server.remove(key);
        self
    }

    /// `[nodes] source`: a URL or a file (as nodesync writes it).
    pub fn nodes_source(mut self, source: impl AsRef<str>) -> Self {
        self.nodes
            .insert("source".into(), value(source.as_ref().to_owned()));
        self
    }

    /// `[nodes] source` as a file (what nodesync writes), given as a path.
    pub fn nodes_file(mut self, path: &Path) -> Self {
        self.nodes.insert("source".into(), path_value(path));
        self
    }

    pub fn nodes_cache(mut self, path: &Path) -> Self {
        self.nodes.insert("cache".into(), path_value(path));
        self
    }

    /// Loopback and other special-purpose addresses in the list are
    /// accepted (tests list 127.0.0.N).
    pub fn allow_special(self) -> Self {
        self.nodes_key("allow_special", true)
    }

    /// Any other `[nodes]` key (`file_poll`, `refresh`, `extra`…).
    pub fn nodes_key(mut self, key: &str, v: impl Into<Value>) -> Self {
        self.nodes.insert(key.into(), v.into());
        self
    }

    /// Any `[client_ip]` key (`trusted_proxies`, `proxy_protocol`).
    pub fn client_ip(mut self, key: &str, v: impl Into<Value>) -> Self {
        self.client_ip.insert(key.into(), v.into());
        self
    }

    pub fn route(mut self, route: EdgeRoute) -> Self {
        self.routes.push(route);
        self
    }

    pub fn render(&self) -> String {
        let mut root = Table::new();
        root.insert("server".into(), Value::Table(self.server.clone()));
        if !self.nodes.is_empty() {
            root.insert("nodes".into(), Value::Table(self.nodes.clone()));
        }
        if !self.client_ip.is_empty() {
            root.insert("client_ip".into(), Value::Table(self.client_ip.clone()));
        }
        if !self.routes.is_empty() {
            let routes = self.routes.iter().map(|r| Value::Table(r.0.clone()));
            root.insert("route".into(), Value::Array(routes.collect()));
        }
        toml::to_string(&root).expect("a TOML table renders")
    }

    /// Renders into `dir/edge.toml`.
    pub fn write(&self, dir: &Path) -> PathBuf {
        write(dir, "edge.toml", &self.render())
    }
}

/// One `[portal.NAME]` of the relay.
#[derive(Debug, Clone)]
pub struct RelayPortal {
    name: String,
    table: Table,
}

impl RelayPortal {
    /// A portal whose incoming webhook URL is in the file `webhook`.
    pub fn new(name: &str, webhook: &Path) -> Self {
        let mut table = Table::new();
        table.insert("webhook".into(), secret_file(webhook));
        RelayPortal {
            name: name.to_owned(),
            table,
        }
    }

    /// The outgoing webhook's application token, from a file.
    pub fn application_token(self, path: &Path) -> Self {
        self.set("application_token", secret_file(path))
    }

    /// The built-in "Webhook" rule's `?secret=`, from a file.
    pub fn rule_secret(self, path: &Path) -> Self {
        self.set("rule_secret", secret_file(path))
    }

    pub fn domain(self, domain: &str) -> Self {
        self.set("domain", domain)
    }

    /// `rate = { burst, per_second }`.
    pub fn rate(self, burst: u32, per_second: f64) -> Self {
        let mut rate = Table::new();
        rate.insert("burst".into(), value(i64::from(burst)));
        rate.insert("per_second".into(), value(per_second));
        self.set("rate", Value::Table(rate))
    }

    /// Any other key of the portal.
    pub fn set(mut self, key: &str, v: impl Into<Value>) -> Self {
        self.table.insert(key.into(), v.into());
        self
    }
}

/// One `[[route]]` of the relay.
#[derive(Debug, Clone)]
pub struct RelayRoute(Table);

impl RelayRoute {
    /// From `from` to `to`, any stage, into pipeline 0.
    pub fn new(name: &str, from: &str, to: &str) -> Self {
        let mut table = Table::new();
        table.insert("name".into(), value(name));
        table.insert("from".into(), value(from));
        table.insert("to".into(), value(to));
        let mut target = Table::new();
        target.insert("category".into(), value(0));
        table.insert("target".into(), Value::Table(target));
        RelayRoute(table)
    }

    /// `when = { category, stages }`.
    pub fn when(mut self, category: i64, stages: &[&str]) -> Self {
        let mut when = Table::new();
        when.insert("category".into(), value(category));
        when.insert("stages".into(), strings(stages));
        self.0.insert("when".into(), Value::Table(when));
        self
    }

    /// `target = { category, stage, stages = { source = target } }`.
    pub fn target(mut self, category: i64, stage: Option<&str>, stages: &[(&str, &str)]) -> Self {
        let mut target = Table::new();
        target.insert("category".into(), value(category));
        if let Some(stage) = stage {
            target.insert("stage".into(), value(stage));
        }
        if !stages.is_empty() {
            let map: Table = stages
                .iter()
                .map(|(from, to)| ((*from).to_owned(), value(*to)))
                .collect();
            target.insert("stages".into(), Value::Table(map));
        }
        self.0.insert("target".into(), Value::Table(target));
        self
    }

    /// `fields = { source = target, … }`.
    pub fn fields(self, pairs: &[(&str, &str)]) -> Self {
        let map: Table = pairs
            .iter()
            .map(|(from, to)| ((*from).to_owned(), value(*to)))
            .collect();
        self.set("fields", Value::Table(map))
    }

    /// Any other key (`products`, `contact`, `writeback`, `constants`…).
    pub fn set(mut self, key: &str, v: impl Into<Value>) -> Self {
        self.0.insert(key.into(), v.into());
        self
    }
}

/// `relay.toml`: 127.0.0.1 with free ports, the SQLite store given, two
/// workers and short retries, no portal or route until added.
#[derive(Debug, Clone)]
pub struct RelayToml {
    root: Table,
    portals: Vec<RelayPortal>,
    routes: Vec<RelayRoute>,
}

impl RelayToml {
    pub fn new(store: &Path) -> Self {
        let mut root = Table::new();
        root.insert("listen".into(), value("127.0.0.1:0"));
        root.insert("metrics_listen".into(), value("127.0.0.1:0"));
        root.insert(
            "store".into(),
            value(format!("sqlite://{}", store.display())),
        );
        root.insert("workers".into(), value(2));
        root.insert("retry_base_delay".into(), value("100ms"));
        root.insert("retry_max_delay".into(), value("1s"));
        RelayToml {
            root,
            portals: Vec::new(),
            routes: Vec::new(),
        }
    }

    pub fn listen(self, addr: impl ToString) -> Self {
        self.set("listen", addr.to_string())
    }

    pub fn metrics_listen(self, addr: impl ToString) -> Self {
        self.set("metrics_listen", addr.to_string())
    }

    /// Any other top-level key (`workers`, `max_attempts`, `lease`…).
    pub fn set(mut self, key: &str, v: impl Into<Value>) -> Self {
        self.root.insert(key.into(), v.into());
        self
    }

    /// Leaves a default key out (`metrics_listen`: no metrics listener).
    pub fn unset(mut self, key: &str) -> Self {
        self.root.remove(key);
        self
    }

    pub fn portal(mut self, portal: RelayPortal) -> Self {
        self.portals.push(portal);
        self
    }

    pub fn route(mut self, route: RelayRoute) -> Self {
        self.routes.push(route);
        self
    }

    pub fn render(&self) -> String {
        let mut root = self.root.clone();
        if !self.portals.is_empty() {
            let portals: Table = self
                .portals
                .iter()
                .map(|p| (p.name.clone(), Value::Table(p.table.clone())))
                .collect();
            root.insert("portal".into(), Value::Table(portals));
        }
        if !self.routes.is_empty() {
            let routes = self.routes.iter().map(|r| Value::Table(r.0.clone()));
            root.insert("route".into(), Value::Array(routes.collect()));
        }
        toml::to_string(&root).expect("a TOML table renders")
    }

    /// Renders into `dir/relay.toml`.
    pub fn write(&self, dir: &Path) -> PathBuf {
        write(dir, "relay.toml", &self.render())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_edge_config_renders_what_was_set() {
        let text = EdgeToml::new("/c dir/cert.pem", "/k.pem")
            .listen("127.0.0.1:8443")
            .nodes_source("/var/lib/nodesync/app.json")
            .allow_special()
            .server("header_timeout", "2s")
            .route(EdgeRoute::new("/hook/", "http://127.0.0.1:1").allow(&["nodes", "10.0.0.0/8"]))
            .render();
        let parsed: Table = toml::from_str(&text).unwrap();
        assert_eq!(
            parsed["server"]["tls_cert"].as_str(),
            Some("/c dir/cert.pem")
        );
        assert_eq!(parsed["server"]["header_timeout"].as_str(), Some("2s"));
        assert_eq!(parsed["nodes"]["allow_special"].as_bool(), Some(true));
        let route = &parsed["route"].as_array().unwrap()[0];
        assert_eq!(route["allow"].as_array().unwrap().len(), 2);
    }

    #[test]
    fn an_edge_config_leaves_out_an_unset_key_and_takes_a_list_file() {
        let text = EdgeToml::new("/c.pem", "/k.pem")
            .unset_server("workers")
            .nodes_file(Path::new("/var/lib/nodesync/app.json"))
            .render();
        let parsed: Table = toml::from_str(&text).unwrap();
        assert!(parsed["server"].get("workers").is_none(), "{text}");
        assert_eq!(
            parsed["nodes"]["source"].as_str(),
            Some("/var/lib/nodesync/app.json")
        );
    }

    #[test]
    fn a_relay_config_renders_portals_routes_and_secret_files() {
        let text = RelayToml::new(Path::new("/tmp/r.db"))
            .portal(
                RelayPortal::new("partner", Path::new("/s/p.webhook"))
                    .application_token(Path::new("/s/p.token"))
                    .domain("partner.test")
                    .rate(50, 2.0),
            )
            .route(
                RelayRoute::new("p2h", "partner", "hq")
                    .when(2, &["C2:WON"])
                    .target(3, Some("C3:NEW"), &[("C2:WON", "C3:WON")])
                    .fields(&[("title", "title")])
                    .set("products", true),
            )
            .render();
        let parsed: Table = toml::from_str(&text).unwrap();
        assert_eq!(parsed["store"].as_str(), Some("sqlite:///tmp/r.db"));
        assert_eq!(
            parsed["portal"]["partner"]["webhook"]["file"].as_str(),
            Some("/s/p.webhook")
        );
        let route = &parsed["route"].as_array().unwrap()[0];
        assert_eq!(route["target"]["stages"]["C2:WON"].as_str(), Some("C3:WON"));
        assert_eq!(route["products"].as_bool(), Some(true));
    }
}
