//! OAuth tokens of one portal, with a single-flight refresh: however many
//! calls see `expired_token` at once, one refresh reaches the authorization
//! server and the others reuse its result.

use std::sync::{Arc, Mutex};

use serde_json::Value;
use url::Url;

use crate::credentials::{OAuth, TokenPair, TokenStore, portal_key};
use crate::{Error, Observer, Secret};

pub(crate) struct OAuthSession {
    portal: String,
    rest_root: Url,
    client_id: String,
    client_secret: Secret,
    token_server: Url,
    store: Arc<dyn TokenStore>,
    current: Mutex<Current>,
    refresh_gate: tokio::sync::Mutex<()>,
}

struct Current {
    tokens: TokenPair,
    /// Bumped by each refresh, so a caller can tell whether the token it
    /// used is still the current one.
    generation: u64,
}

impl OAuthSession {
    pub(crate) fn new(oauth: OAuth) -> Self {
        Self {
            portal: portal_key(&oauth.rest_root),
            rest_root: oauth.rest_root,
            client_id: oauth.client_id,
            client_secret: oauth.client_secret,
            token_server: oauth.token_server,
            store: oauth.store,
            current: Mutex::new(Current {
                tokens: oauth.tokens,
                generation: 0,
            }),
            refresh_gate: tokio::sync::Mutex::new(()),
        }
    }

    pub(crate) fn portal(&self) -> &str {
        &self.portal
    }

    pub(crate) fn tokens(&self) -> TokenPair {
        self.current
            .lock()
            .expect("token state poisoned")
            .tokens
            .clone()
    }

    /// `https://HOST/rest/METHOD?auth=TOKEN` and the token generation used.
    pub(crate) fn method_url(&self, method: &str) -> (Url, u64) {
        let current = self.current.lock().expect("token state poisoned");
        let mut url = self.rest_root.clone();
        url.path_segments_mut()
            .expect("http(s) URLs have a path")
            .pop_if_empty()
            .push(method);
        url.query_pairs_mut()
            .append_pair("auth", current.tokens.access_token.expose());
        (url, current.generation)
    }

    /// Sets `auth=TOKEN` on a link (replacing any token it came with) and
    /// returns the token generation used.
    pub(crate) fn authorize(&self, url: &mut Url) -> u64 {
        let current = self.current.lock().expect("token state poisoned");
        let kept: Vec<(String, String)> = url
            .query_pairs()
            .filter(|(key, _)| key != "auth")
            .map(|(key, value)| (key.into_owned(), value.into_owned()))
            .collect();
        {
            let mut query = url.query_pairs_mut();
            query.clear();
            for (key, value) in &kept {
                query.append_pair(key, value);
            }
            query.append_pair("auth", current.tokens.access_token.expose());
        }
        current.generation
    }

    /// Refreshes the tokens unless another call already did since
    /// `seen_generation` was handed out.
    pub(crate) async fn refresh(
        &self,
        http: &reqwest::Client,
        seen_generation: u64,
        observer: &dyn Observer,
    ) -> Result<(), Error> {
        let _only_one_refresh = self.refresh_gate.lock().await;
        let refresh_token = {
            let current = self.current.lock().expect("token state poisoned");
            if current.generation != seen_generation {
                return Ok(());
            }
            current.tokens.refresh_token.clone()
        };
        // Exclusive across the processes sharing the store; a pair another
        // one stored meanwhile is taken instead of refreshing again.
        let guard = self
            .store
            .begin_refresh(&self.portal)
            .await
            .map_err(|source| Error::TokenStore {
                portal: self.portal.clone(),
                source,
            })?;
        if let Some(stored) = guard
            .stored
            .as_ref()
            .filter(|stored| stored.refresh_token != refresh_token)
        {
            let mut current = self.current.lock().expect("token state poisoned");
            current.tokens = stored.clone();
            current.generation += 1;
            tracing::info!(host = %self.portal, "OAuth tokens refreshed by another process; using them");
            return Ok(());
        }
        let tokens = self.request_new_tokens(http, &refresh_token).await?;
        // Stored before any call can use them: a process that stops after
        // this point restarts with the pair that works. They are used even
        // if storing failed, since the old refresh token is spent.
        let saved = self.store.save(&self.portal, &tokens).await;
        drop(guard);
        {
            let mut current = self.current.lock().expect("token state poisoned");
            current.tokens = tokens;
            current.generation += 1;
        }
        observer.token_refreshed(&self.portal);
        tracing::info!(host = %self.portal, "OAuth tokens refreshed");
        saved.map_err(|source| Error::TokenStore {
            portal: self.portal.clone(),
            source,
        })
    }

    async fn request_new_tokens(
        &self,
        http: &reqwest::Client,
        refresh_token: &Secret,
    ) -> Result<TokenPair, Error> {
        let mut url = self.token_server.clone();
        url.query_pairs_mut()
            .append_pair("grant_type", "refresh_token")
            .append_pair("client_id", &self.client_id)
            .append_pair("client_secret", self.client_secret.expose())
            .append_pair("refresh_token", refresh_token.expose());
        let transport = |source: reqwest::Error| Error::TokenRefreshTransport {
            portal: self.portal.clone(),
            source: source.without_url(),
        };
        let response = http.get(url).send().await.map_err(transport)?;
        let status = response.status().as_u16();
        let body = response.bytes().await.map_err(transport)?;
        let refused = |code: &str, description: String| Error::TokenRefresh {
            portal: self.portal.clone(),
            code: code.to_owned(),
            description,
        };
        let Ok(answer) = serde_json::from_slice::<Value>(&body) else {
            return Err(refused(
                "invalid_response",
                format!("HTTP {status} with a body that is not JSON"),
            ));
        };
        if let Some(code) = answer.get("error") {
            let code = code.as_str().unwrap_or("unknown_error");
            let description = answer
                .get("error_description")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            return Err(refused(code, description));
        }
        let token = |field: &str| {
            answer
                .get(field)
                .and_then(Value::as_str)
                .filter(|value| !value.is_empty())
                .map(Secret::new)
                .ok_or_else(|| {
                    refused(
                        "invalid_response",
                        format!("HTTP {status} answer without `{field}`"),
                    )
                })
        };
        Ok(TokenPair {
            access_token: token("access_token")?,
            refresh_token: token("refresh_token")?,
        })
    }
}
