//! The `[app]` table and `[portal.NAME.app]`: application mode settings.

use std::fmt;

use b24_client::Secret;
use serde::Deserialize;

use super::{ConfigError, invalid};

/// Settings shared by the local applications of all portals.
#[derive(Debug, Clone, PartialEq)]
pub struct AppSettings {
    /// Where Bitrix24 reaches the relay (`https://relay.example.com`); the
    /// rule's handler URL is built on it. `serve` uses its own listening
    /// address when it is not set (tests, a relay reached directly).
    pub public_url: Option<String>,
    /// The OAuth authorization server when configured; refreshes go nowhere
    /// else. `None`: each portal's own, from the `auth[server_endpoint]` it
    /// sends (see [`AppSettings::token_server_for`]).
    pub token_server: Option<String>,
    /// `CODE` of the automation rule the relay registers.
    pub robot_code: String,
}

/// A portal's local application: its client id and secret.
#[derive(Clone)]
pub struct AppCredentials {
    pub client_id: String,
    pub client_secret: Secret,
}

impl fmt::Debug for AppCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AppCredentials")
            .field("client_id", &self.client_id)
            .field("client_secret", &self.client_secret)
            .finish()
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAppSettings {
    pub public_url: Option<String>,
    pub token_server: Option<String>,
    pub robot_code: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAppCredentials {
    pub client_id: String,
    pub client_secret: toml::Value,
}

/// The authorization servers Bitrix24 runs: `oauth.bitrix.info`, and
/// `oauth.bitrix24.tech` for Russian-region portals (BITRIX24.md §3).
const BITRIX_TOKEN_HOSTS: &[&str] = &["oauth.bitrix.info", "oauth.bitrix24.tech"];

impl AppSettings {
    /// Where a portal's tokens are refreshed: the configured server, else
    /// the one its `auth[server_endpoint]` names (`https://HOST/rest/` →
    /// `https://HOST/oauth/token/`) when it is one of Bitrix24's own, else
    /// `oauth.bitrix.info`.
    pub fn token_server_for(&self, server_endpoint: Option<&str>) -> String {
        if let Some(configured) = &self.token_server {
            return configured.clone();
        }
        let host = server_endpoint
            .and_then(|url| url.strip_prefix("https://"))
            .and_then(|rest| rest.split(['/', '?', '#']).next())
            .map(str::to_ascii_lowercase);
        match host {
            Some(host) if BITRIX_TOKEN_HOSTS.contains(&host.as_str()) => {
                format!("https://{host}/oauth/token/")
            }
            Some(host) => {
                tracing::warn!(%host, "auth[server_endpoint] is not a Bitrix24 authorization server; refreshing at oauth.bitrix.info");
                b24_client::DEFAULT_TOKEN_SERVER.to_owned()
            }
            None => b24_client::DEFAULT_TOKEN_SERVER.to_owned(),
        }
    }
}

/// Default `CODE` of the relay's automation rule.
pub const DEFAULT_ROBOT_CODE: &str = "b24_relay_transfer_deal";

pub(super) fn build_app_settings(raw: RawAppSettings) -> Result<AppSettings, ConfigError> {
    let http_url = |key: &str, value: &str| {
        let ok = (value.starts_with("https://") || value.starts_with("http://"))
            && !value.contains('?')
            && !value.contains('#');
        if ok {
            Ok(value.trim_end_matches('/').to_owned())
        } else {
            Err(invalid(format!(
                "app.{key}: `{value}` must be an http(s) URL without a query"
            )))
        }
    };
    let public_url = raw
        .public_url
        .map(|url| http_url("public_url", &url))
        .transpose()?;
    let token_server = match raw.token_server {
        Some(url) => Some(format!("{}/", http_url("token_server", &url)?)),
        None => None,
    };
    let robot_code = raw
        .robot_code
        .unwrap_or_else(|| DEFAULT_ROBOT_CODE.to_owned());
    let code_ok = !robot_code.is_empty()
        && robot_code
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.');
    if !code_ok {
        return Err(invalid(format!(
            "app.robot_code: `{robot_code}` may hold only letters, digits, `_`, `-` and `.`"
        )));
    }
    Ok(AppSettings {
        public_url,
        token_server,
        robot_code,
    })
}
