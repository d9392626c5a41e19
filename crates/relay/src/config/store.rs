//! `store`: where the relay keeps its queue and links. Either a URL string
//! (`store = "sqlite:///var/lib/b24-relay/relay.db"`) or a `[store]` table:
//!
//! ```toml
//! [store]
//! url = "postgres://relay@127.0.0.1:5432/relay"
//! password = { file = "/etc/b24-relay/postgres.password" }
//! ```

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use b24_client::Secret;
use serde::Deserialize;

use super::{ConfigError, invalid, load_secret};

/// The validated `store` setting.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub location: StoreLocation,
    /// SQLite: many intake requests share one commit (and one fsync).
    /// `false` commits each write alone (slower; for comparison).
    pub group_commit: bool,
    /// How the portals' rate budgets are shared (PostgreSQL only).
    pub rate_scope: RateScope,
}

/// Which database.
#[derive(Clone)]
pub enum StoreLocation {
    Sqlite(PathBuf),
    Postgres(Box<PostgresConfig>),
}

/// A PostgreSQL database and how to use it.
#[derive(Clone)]
pub struct PostgresConfig {
    /// Parsed from `url`; the password is not in it (see `password`).
    pub connect: tokio_postgres::Config,
    pub password: Option<Secret>,
    /// Schema holding the relay's tables (several relays, or tests, may
    /// share one database with different schemas).
    pub schema: String,
    /// Connections per replica.
    pub pool_size: usize,
    /// `url` with no secret in it, for messages.
    pub shown: String,
}

impl fmt::Debug for StoreLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreLocation::Sqlite(path) => write!(f, "sqlite://{}", path.display()),
            StoreLocation::Postgres(pg) => write!(f, "{} (schema {})", pg.shown, pg.schema),
        }
    }
}

impl fmt::Display for StoreLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// Bitrix24 counts its leaky bucket per portal *and per calling address*
/// (BITRIX24.md §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateScope {
    /// Every replica on this database shares one budget per portal, kept in
    /// the database: right for replicas that reach the portals from one
    /// address (one host, or several behind one NAT).
    Shared,
    /// Each replica keeps its own budget: only for replicas that reach the
    /// portals from different public addresses.
    Replica,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStore {
    url: String,
    password: Option<toml::Value>,
    schema: Option<String>,
    pool_size: Option<usize>,
    group_commit: Option<bool>,
    rate_scope: Option<String>,
}

impl StoreConfig {
    /// A store given by URL alone (`sqlite:///path`, `postgres://USER@HOST/DB`),
    /// as the `store` commands take it; `password` and `schema` as in
    /// `[store]`.
    pub fn from_url(
        url: &str,
        password: Option<Secret>,
        schema: Option<&str>,
    ) -> Result<Self, ConfigError> {
        let mut table = toml::Table::new();
        table.insert("url".into(), toml::Value::String(url.to_owned()));
        if let Some(schema) = schema {
            table.insert("schema".into(), toml::Value::String(schema.to_owned()));
        }
        let mut config = build_store(toml::Value::Table(table))?;
        if let (StoreLocation::Postgres(pg), Some(password)) = (&mut config.location, password) {
            pg.password = Some(password);
        }
        Ok(config)
    }
}

pub(super) fn default_store() -> toml::Value {
    toml::Value::String("sqlite:///var/lib/b24-relay/relay.db".into())
}

/// `store = "URL"` or `[store]`.
pub(super) fn build_store(raw: toml::Value) -> Result<StoreConfig, ConfigError> {
    let raw = match raw {
        toml::Value::String(url) => RawStore {
            url,
            password: None,
            schema: None,
            pool_size: None,
            group_commit: None,
            rate_scope: None,
        },
        table @ toml::Value::Table(_) => table
            .try_into()
            .map_err(|e: toml::de::Error| invalid(format!("store: {}", e.message())))?,
        _ => return Err(invalid("store: write a URL or a [store] table with `url`")),
    };
    let rate_scope = match raw.rate_scope.as_deref() {
        None | Some("shared") => RateScope::Shared,
        Some("replica") => RateScope::Replica,
        Some(other) => {
            return Err(invalid(format!(
                "store.rate_scope: `{other}` is not known; use \"shared\" (replicas reach the portals from one address) or \"replica\" (each from its own)"
            )));
        }
    };
    let location = if let Some(path) = raw.url.strip_prefix("sqlite://") {
        if path.is_empty() {
            return Err(invalid(
                "store: sqlite:// needs a path (sqlite:///var/lib/b24-relay/relay.db)",
            ));
        }
        for (key, set) in [
            ("password", raw.password.is_some()),
            ("schema", raw.schema.is_some()),
            ("pool_size", raw.pool_size.is_some()),
            ("rate_scope", raw.rate_scope.is_some()),
        ] {
            if set {
                return Err(invalid(format!(
                    "store.{key} applies to PostgreSQL only; the store is SQLite"
                )));
            }
        }
        StoreLocation::Sqlite(PathBuf::from(path))
    } else if raw.url.starts_with("postgres://") || raw.url.starts_with("postgresql://") {
        if raw.group_commit.is_some() {
            return Err(invalid(
                "store.group_commit applies to SQLite only (PostgreSQL commits concurrently)",
            ));
        }
        StoreLocation::Postgres(Box::new(postgres(&raw)?))
    } else {
        let scheme = raw.url.split("://").next().unwrap_or("");
        return Err(invalid(format!(
            "store: `{scheme}://…` is not supported; use sqlite:///path/to/relay.db or postgres://USER@HOST:PORT/DATABASE"
        )));
    };
    Ok(StoreConfig {
        location,
        group_commit: raw.group_commit.unwrap_or(true),
        rate_scope,
    })
}

fn postgres(raw: &RawStore) -> Result<PostgresConfig, ConfigError> {
    // Never repeat the URL in an error: it may hold a password.
    let connect = tokio_postgres::Config::from_str(&raw.url).map_err(|_| {
        invalid("store.url: not a valid PostgreSQL URL (postgres://USER@HOST:PORT/DATABASE)")
    })?;
    if connect.get_password().is_some() {
        return Err(invalid(
            "store.url holds a password; remove it and write password = { file = \"/path\" } or { env = \"VAR\" } (secrets are never inline)",
        ));
    }
    if connect.get_user().is_none() {
        return Err(invalid(
            "store.url: name the user (postgres://USER@HOST/DATABASE)",
        ));
    }
    if connect.get_dbname().is_none() {
        return Err(invalid(
            "store.url: name the database (postgres://USER@HOST/DATABASE)",
        ));
    }
    let password = raw
        .password
        .as_ref()
        .map(|p| load_secret("store.password", p))
        .transpose()?;
    let schema = raw.schema.clone().unwrap_or_else(|| "b24_relay".into());
    let valid_schema = !schema.is_empty()
        && schema.len() <= 63
        && schema.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && schema
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if !valid_schema {
        return Err(invalid(format!(
            "store.schema: `{schema}` must be lower-case letters, digits and _ (at most 63)"
        )));
    }
    let pool_size = raw.pool_size.unwrap_or(16);
    if pool_size < 2 {
        return Err(invalid("store.pool_size must be at least 2"));
    }
    let hosts: Vec<String> = connect
        .get_hosts()
        .iter()
        .map(|host| match host {
            tokio_postgres::config::Host::Tcp(name) => name.clone(),
            tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
        })
        .collect();
    let ports = connect.get_ports();
    let shown = format!(
        "postgres://{}@{}{}/{}",
        connect.get_user().unwrap_or_default(),
        hosts.join(","),
        ports.first().map(|p| format!(":{p}")).unwrap_or_default(),
        connect.get_dbname().unwrap_or_default()
    );
    Ok(PostgresConfig {
        connect,
        password,
        schema,
        pool_size,
        shown,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(text: &str) -> toml::Value {
        toml::from_str::<toml::Table>(text).unwrap()["store"].clone()
    }

    #[test]
    fn postgres_urls_and_their_mistakes() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("pg.password");
        std::fs::write(&secret, "s3cr3t-pg\n").unwrap();
        let good = build_store(table(&format!(
            "[store]\nurl = \"postgres://relay@127.0.0.1:5544/relay\"\npassword = {{ file = \"{}\" }}\nschema = \"relay_a\"",
            secret.display()
        )))
        .unwrap();
        let StoreLocation::Postgres(pg) = &good.location else {
            panic!("not postgres");
        };
        assert_eq!(pg.password.as_ref().unwrap().expose(), "s3cr3t-pg");
        assert_eq!(pg.schema, "relay_a");
        assert_eq!(good.rate_scope, RateScope::Shared);
        assert!(!format!("{good:?}").contains("s3cr3t"));

        for (text, expected) in [
            (
                "store = \"postgres://relay:hunter2@127.0.0.1/relay\"",
                "holds a password",
            ),
            ("store = \"postgres://127.0.0.1/relay\"", "name the user"),
            ("store = \"mysql://relay@host/db\"", "not supported"),
            ("store = \"sqlite://\"", "needs a path"),
            (
                "[store]\nurl = \"sqlite:///x.db\"\nrate_scope = \"shared\"",
                "PostgreSQL only",
            ),
            (
                "[store]\nurl = \"postgres://relay@h/d\"\nrate_scope = \"everyone\"",
                "rate_scope",
            ),
            (
                "[store]\nurl = \"postgres://relay@h/d\"\nschema = \"Relay\"",
                "schema",
            ),
        ] {
            let parsed: toml::Table = toml::from_str(text).unwrap();
            let error = build_store(parsed["store"].clone())
                .unwrap_err()
                .to_string();
            assert!(error.contains(expected), "{text}: {error}");
            assert!(!error.contains("hunter2"), "{error}");
        }
    }
}
