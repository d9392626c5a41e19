use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use url::Url;

use crate::{Error, Secret};

/// Where the OAuth refresh goes unless configured otherwise (BITRIX24.md §3:
/// always the authorization server, never the portal).
pub const DEFAULT_TOKEN_SERVER: &str = "https://oauth.bitrix.info/oauth/token/";

/// How the client authenticates to one portal.
#[derive(Clone, Debug)]
pub enum Credentials {
    Webhook(Webhook),
    OAuth(OAuth),
}

impl From<Webhook> for Credentials {
    fn from(webhook: Webhook) -> Self {
        Credentials::Webhook(webhook)
    }
}

impl From<OAuth> for Credentials {
    fn from(oauth: OAuth) -> Self {
        Credentials::OAuth(oauth)
    }
}

/// An incoming webhook: `https://HOST/rest/USER_ID/SECRET/`.
#[derive(Clone)]
pub struct Webhook {
    /// Everything up to and including `/rest/`.
    rest_root: Url,
    user_id: String,
    secret: Secret,
}

impl Webhook {
    /// Parses a webhook URL as Bitrix24 shows it (`http://` is accepted for
    /// loopback tests and plain-HTTP boxes). The error never repeats the URL,
    /// since it holds the secret.
    pub fn parse(url: &str) -> Result<Self, Error> {
        const SHAPE: &str = "a webhook URL must look like https://HOST/rest/USER_ID/SECRET/";
        let parsed = Url::parse(url.trim()).map_err(|_| Error::Config(SHAPE.into()))?;
        if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
            return Err(Error::Config(SHAPE.into()));
        }
        if parsed.query().is_some() || parsed.fragment().is_some() {
            return Err(Error::Config(format!("{SHAPE} (without a query string)")));
        }
        let segments: Vec<&str> = parsed
            .path_segments()
            .map(|segments| segments.filter(|s| !s.is_empty()).collect())
            .unwrap_or_default();
        let [prefix @ .., rest, user_id, secret] = segments.as_slice() else {
            return Err(Error::Config(SHAPE.into()));
        };
        if *rest != "rest" || user_id.is_empty() || !user_id.bytes().all(|b| b.is_ascii_digit()) {
            return Err(Error::Config(SHAPE.into()));
        }
        let mut rest_root = parsed.clone();
        let mut root_path = String::from("/");
        for segment in prefix {
            root_path.push_str(segment);
            root_path.push('/');
        }
        root_path.push_str("rest/");
        rest_root.set_path(&root_path);
        Ok(Self {
            rest_root,
            user_id: (*user_id).to_owned(),
            secret: Secret::new(*secret),
        })
    }

    /// `host[:port]`, the key of the portal's rate limit.
    pub fn portal(&self) -> String {
        portal_key(&self.rest_root)
    }

    pub fn user_id(&self) -> &str {
        &self.user_id
    }

    /// The webhook URL with the secret replaced by `***`, safe to log.
    pub fn redacted_url(&self) -> String {
        format!("{}{}/***/", self.rest_root, self.user_id)
    }

    pub(crate) fn method_url(&self, method: &str) -> Url {
        let mut url = self.rest_root.clone();
        url.path_segments_mut()
            .expect("http(s) URLs have a path")
            .pop_if_empty()
            .push(&self.user_id)
            .push(self.secret.expose())
            .push(&format!("{method}.json"));
        url
    }
}

impl fmt::Debug for Webhook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Webhook")
            .field("url", &self.redacted_url())
            .finish()
    }
}

/// An access/refresh token pair, as the authorization server issues it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenPair {
    pub access_token: Secret,
    pub refresh_token: Secret,
}

/// What a [`TokenStore`] answers: done, or why the pair could not be kept.
pub type TokenStoreResult = Result<(), TokenStoreError>;

/// Persists every new token pair. A refresh invalidates the old refresh
/// token, so the pair must be stored before the process can safely stop.
/// Saving is async, so that a store that waits for a disk or a database
/// never blocks the runtime. Any `Fn(&str, &TokenPair) -> Result<..>`
/// closure is also a store (for stores that do not wait); it gets the
/// portal key and the new pair.
pub trait TokenStore: Send + Sync {
    fn save<'a>(
        &'a self,
        portal: &'a str,
        tokens: &'a TokenPair,
    ) -> Pin<Box<dyn Future<Output = TokenStoreResult> + Send + 'a>>;

    /// Called before a refresh: makes it exclusive among every process
    /// sharing this store (several relay replicas on one database), waiting
    /// while another one refreshes, and returns the pair stored now. A
    /// stored pair other than the one that failed means another process
    /// refreshed meanwhile: it is used, and no refresh is sent (its refresh
    /// token would be spent already). The guard is dropped once the new
    /// pair is saved. By default nothing is shared.
    fn begin_refresh<'a>(
        &'a self,
        _portal: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<RefreshGuard, TokenStoreError>> + Send + 'a>> {
        Box::pin(std::future::ready(Ok(RefreshGuard::default())))
    }
}

/// Why a [`TokenStore`] could not do its part.
pub type TokenStoreError = Box<dyn std::error::Error + Send + Sync>;

/// Held while one refresh runs (see [`TokenStore::begin_refresh`]).
#[derive(Default)]
pub struct RefreshGuard {
    /// The pair in the store when the guard was taken.
    pub stored: Option<TokenPair>,
    /// Whatever keeps other processes waiting (a database lock); released
    /// when dropped.
    pub held: Option<Box<dyn Send + Sync>>,
}

impl<F> TokenStore for F
where
    F: Fn(&str, &TokenPair) -> TokenStoreResult + Send + Sync,
{
    fn save<'a>(
        &'a self,
        portal: &'a str,
        tokens: &'a TokenPair,
    ) -> Pin<Box<dyn Future<Output = TokenStoreResult> + Send + 'a>> {
        Box::pin(std::future::ready(self(portal, tokens)))
    }
}

/// OAuth credentials of an application installed on a portal.
///
/// Build one [`Client`](crate::Client) from them and clone that client
/// wherever the portal is called: clones share the tokens, so concurrent
/// `expired_token` answers lead to a single refresh. Two clients built
/// separately from the same pair would each refresh, and the second refresh
/// would fail because the first one used up the refresh token.
#[derive(Clone)]
pub struct OAuth {
    pub(crate) rest_root: Url,
    pub(crate) client_id: String,
    pub(crate) client_secret: Secret,
    pub(crate) tokens: TokenPair,
    pub(crate) token_server: Url,
    pub(crate) store: Arc<dyn TokenStore>,
}

impl OAuth {
    /// `portal` is the portal's domain (`example.bitrix24.ru`, giving
    /// `https://example.bitrix24.ru/rest/`) or its REST root URL as the
    /// install event's `auth[client_endpoint]` carries it.
    pub fn new(
        portal: &str,
        client_id: impl Into<String>,
        client_secret: impl Into<Secret>,
        tokens: TokenPair,
        store: Arc<dyn TokenStore>,
    ) -> Result<Self, Error> {
        let portal = portal.trim();
        let rest_root = if portal.contains("://") {
            let mut url = Url::parse(portal).map_err(|_| {
                Error::Config(format!("OAuth portal `{portal}` is not a valid URL"))
            })?;
            if !url.path().ends_with('/') {
                let path = format!("{}/", url.path());
                url.set_path(&path);
            }
            url
        } else {
            Url::parse(&format!("https://{portal}/rest/"))
                .map_err(|_| Error::Config(format!("OAuth portal `{portal}` is not a domain")))?
        };
        if !matches!(rest_root.scheme(), "http" | "https") || rest_root.host_str().is_none() {
            return Err(Error::Config(format!(
                "OAuth portal `{portal}` must be a domain or an http(s) URL"
            )));
        }
        Ok(Self {
            rest_root,
            client_id: client_id.into(),
            client_secret: client_secret.into(),
            tokens,
            token_server: Url::parse(DEFAULT_TOKEN_SERVER).expect("constant URL"),
            store,
        })
    }

    /// Uses another authorization server (tests; never a portal's own).
    pub fn with_token_server(mut self, url: &str) -> Result<Self, Error> {
        self.token_server = Url::parse(url)
            .map_err(|_| Error::Config(format!("token server `{url}` is not a valid URL")))?;
        Ok(self)
    }

    pub fn portal(&self) -> String {
        portal_key(&self.rest_root)
    }
}

impl fmt::Debug for OAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OAuth")
            .field("rest_root", &self.rest_root.as_str())
            .field("client_id", &self.client_id)
            .field("client_secret", &self.client_secret)
            .field("tokens", &self.tokens)
            .field("token_server", &self.token_server.as_str())
            .finish_non_exhaustive()
    }
}

/// `host[:port]`, lower-case: one rate-limit bucket per portal.
pub(crate) fn portal_key(url: &Url) -> String {
    let host = url.host_str().unwrap_or_default().to_ascii_lowercase();
    match url.port() {
        Some(port) => format!("{host}:{port}"),
        None => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_webhook_urls() {
        let webhook = Webhook::parse("https://Portal.Bitrix24.ru/rest/1/abc123def/").unwrap();
        assert_eq!(webhook.portal(), "portal.bitrix24.ru");
        assert_eq!(webhook.user_id(), "1");
        assert_eq!(
            webhook.method_url("crm.item.get").as_str(),
            "https://portal.bitrix24.ru/rest/1/abc123def/crm.item.get.json"
        );
        let local = Webhook::parse("http://127.0.0.1:8080/rest/7/s3cr3t").unwrap();
        assert_eq!(local.portal(), "127.0.0.1:8080");
        assert_eq!(
            local.method_url("batch").as_str(),
            "http://127.0.0.1:8080/rest/7/s3cr3t/batch.json"
        );
        let nested = Webhook::parse("https://box.example/bitrix/rest/7/s3cr3t/").unwrap();
        assert_eq!(
            nested.method_url("scope").as_str(),
            "https://box.example/bitrix/rest/7/s3cr3t/scope.json"
        );
    }

    #[test]
    fn rejects_bad_webhook_urls_without_echoing_them() {
        for url in [
            "not a url",
            "ftp://host/rest/1/s3cr3t/",
            "https://host/api/1/s3cr3t/",
            "https://host/rest/x/s3cr3t/",
            "https://host/rest/1/",
            "https://host/rest/1/s3cr3t/?x=1",
        ] {
            let error = Webhook::parse(url).unwrap_err();
            assert!(!error.to_string().contains("s3cr3t"), "{url}: {error}");
        }
    }

    #[test]
    fn debug_output_redacts_secrets() {
        let webhook = Webhook::parse("https://portal.test/rest/1/s3cr3t/").unwrap();
        let shown = format!("{webhook:?}");
        assert!(!shown.contains("s3cr3t"), "{shown}");
        assert!(shown.contains("https://portal.test/rest/1/***/"), "{shown}");

        let store: Arc<dyn TokenStore> = Arc::new(|_: &str, _: &TokenPair| Ok(()));
        let oauth = OAuth::new(
            "portal.test",
            "app.123",
            "client-s3cr3t",
            TokenPair {
                access_token: Secret::new("access-s3cr3t"),
                refresh_token: Secret::new("refresh-s3cr3t"),
            },
            store,
        )
        .unwrap();
        let shown = format!("{:?}", Credentials::from(oauth.clone()));
        assert!(!shown.contains("s3cr3t"), "{shown}");
        assert_eq!(oauth.rest_root.as_str(), "https://portal.test/rest/");
    }

    #[test]
    fn oauth_accepts_a_client_endpoint_url() {
        let store: Arc<dyn TokenStore> = Arc::new(|_: &str, _: &TokenPair| Ok(()));
        let tokens = TokenPair {
            access_token: Secret::new("a"),
            refresh_token: Secret::new("r"),
        };
        let oauth = OAuth::new("http://127.0.0.1:9/rest", "id", "secret", tokens, store).unwrap();
        assert_eq!(oauth.rest_root.as_str(), "http://127.0.0.1:9/rest/");
        assert_eq!(oauth.portal(), "127.0.0.1:9");
    }
}
