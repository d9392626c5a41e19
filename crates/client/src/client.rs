use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use reqwest::header::{ACCEPT, CONTENT_TYPE};
use serde_json::Value;
use url::Url;

use crate::credentials::TokenPair;
use crate::oauth::OAuthSession;
use crate::rate_limit::PortalLimiter;
use crate::response::{Answer, operating_reset_at, read_answer};
use crate::retry::is_read_method;
use crate::{
    ApiError, ApiErrorKind, Credentials, Error, NoopObserver, Observer, RateLimits, RequestEvent,
    Response, RetryPolicy, Webhook,
};

/// How request parameters travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BodyFormat {
    /// `application/json` (preferred by Bitrix24).
    #[default]
    Json,
    /// `application/x-www-form-urlencoded` with PHP-style keys.
    Form,
}

/// A Bitrix24 REST client for one portal. Cheap to clone; clones share the
/// connection pool, the OAuth tokens and the rate limiter.
#[derive(Clone)]
pub struct Client {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) portal: String,
    pub(crate) auth: Auth,
    pub(crate) http: reqwest::Client,
    pub(crate) limiter: Arc<PortalLimiter>,
    pub(crate) retry: RetryPolicy,
    format: BodyFormat,
    pub(crate) observer: Arc<dyn Observer>,
    /// Shared `batch` requests, when enabled.
    pub(crate) coalescer: Option<Arc<crate::coalesce::Coalescer>>,
}

pub(crate) enum Auth {
    Webhook(Webhook),
    OAuth(Box<OAuthSession>),
}

/// Settings of a [`Client`]; see [`Client::builder`].
pub struct ClientBuilder {
    credentials: Credentials,
    rate_limits: RateLimits,
    retry: RetryPolicy,
    connect_timeout: Duration,
    request_timeout: Duration,
    format: BodyFormat,
    observer: Arc<dyn Observer>,
    coalesce_batches: bool,
}

impl ClientBuilder {
    /// Let concurrent [`Client::batch`] calls (of clones of this client)
    /// share `batch` requests, up to 50 commands each, when they would
    /// otherwise wait for the portal's bucket one after another. Off by
    /// default; see the `coalesce` module for the rules that keep every
    /// caller's outcomes its own.
    pub fn coalesce_batches(mut self, coalesce: bool) -> Self {
        self.coalesce_batches = coalesce;
        self
    }

    pub fn retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// Default 10 s.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Whole request, from connecting to the last body byte. Default 65 s:
    /// Bitrix24 ends requests at 60 s, and its own answer should win.
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Body format of [`Client::call`]. Default JSON.
    pub fn body_format(mut self, format: BodyFormat) -> Self {
        self.format = format;
        self
    }

    pub fn observer(mut self, observer: Arc<dyn Observer>) -> Self {
        self.observer = observer;
        self
    }

    pub fn build(self) -> Result<Client, Error> {
        if self.retry.max_attempts == 0 {
            return Err(Error::Config(
                "retry.max_attempts must be at least 1".into(),
            ));
        }
        // reqwest is built without a TLS provider: the binary (or the test
        // helper) installs the workspace's one, ring, before any client.
        let http = reqwest::Client::builder()
            .connect_timeout(self.connect_timeout)
            .timeout(self.request_timeout)
            // A redirect would resend the webhook secret or token to wherever
            // it points; Bitrix24's REST API never needs one.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("b24-client/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|error| Error::Config(format!("HTTP client: {}", error.without_url())))?;
        let (portal, auth) = match self.credentials {
            Credentials::Webhook(webhook) => (webhook.portal(), Auth::Webhook(webhook)),
            Credentials::OAuth(oauth) => {
                let session = OAuthSession::new(oauth);
                (session.portal().to_owned(), Auth::OAuth(Box::new(session)))
            }
        };
        Ok(Client {
            inner: Arc::new(Inner {
                limiter: self.rate_limits.portal(&portal),
                portal,
                auth,
                http,
                retry: self.retry,
                format: self.format,
                observer: self.observer,
                coalescer: self
                    .coalesce_batches
                    .then(|| Arc::new(crate::coalesce::Coalescer::default())),
            }),
        })
    }
}

/// What one HTTP attempt came to.
enum Verdict {
    Done(Response),
    /// Give up with this error.
    Fail(Error),
    /// Not executed (or read-only): try again after a backoff.
    Retry(Error),
    ExpiredToken(Error),
    OperatingLimit {
        error: Error,
        until: SystemTime,
    },
}

impl Client {
    /// `rate_limits` is the process-wide registry: give every client the same
    /// one so that all calls to a portal share its bucket.
    pub fn builder(credentials: impl Into<Credentials>, rate_limits: RateLimits) -> ClientBuilder {
        ClientBuilder {
            credentials: credentials.into(),
            rate_limits,
            retry: RetryPolicy::default(),
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(65),
            format: BodyFormat::Json,
            observer: Arc::new(NoopObserver),
            coalesce_batches: false,
        }
    }

    /// `host[:port]` of the portal.
    pub fn portal(&self) -> &str {
        &self.inner.portal
    }

    /// The current OAuth token pair (after any refresh), or `None` for a
    /// webhook.
    pub fn oauth_tokens(&self) -> Option<TokenPair> {
        match &self.inner.auth {
            Auth::OAuth(session) => Some(session.tokens()),
            Auth::Webhook(_) => None,
        }
    }

    /// Calls one REST method. `params` is a JSON object (or `null`).
    ///
    /// Waits for the portal's leaky bucket first. Retries with backoff what
    /// surely did not run (`QUERY_LIMIT_EXCEEDED`, connection failures) and,
    /// for read methods only, timeouts and HTTP 5xx without a Bitrix24
    /// answer; for a write those give [`Error::MayHaveExecuted`]. Waits out
    /// `OPERATION_TIME_LIMIT` up to [`RetryPolicy::max_operating_wait`]. An
    /// OAuth `expired_token` triggers one refresh and one more try.
    pub async fn call(&self, method: &str, params: &Value) -> Result<Response, Error> {
        self.call_as(method, params, self.inner.format).await
    }

    /// [`Client::call`] with an explicit body format.
    pub async fn call_as(
        &self,
        method: &str,
        params: &Value,
        format: BodyFormat,
    ) -> Result<Response, Error> {
        let body = encode_body(params, format)?;
        self.execute(method, &body, is_read_method(method)).await
    }

    pub(crate) async fn execute(
        &self,
        method: &str,
        body: &EncodedBody,
        read_only: bool,
    ) -> Result<Response, Error> {
        self.execute_with(method, body, read_only, false).await
    }

    /// [`Client::execute`] after the caller took the first request's place
    /// in the bucket itself ([`Client::wait_for_bucket`]).
    pub(crate) async fn execute_prepaid(
        &self,
        method: &str,
        body: &EncodedBody,
        read_only: bool,
    ) -> Result<Response, Error> {
        self.execute_with(method, body, read_only, true).await
    }

    /// Waits for a place in the portal's bucket.
    pub(crate) async fn wait_for_bucket(&self) {
        let inner = &*self.inner;
        let waited = inner.limiter.acquire().await;
        if !waited.is_zero() {
            inner.observer.rate_limit_waited(&inner.portal, waited);
        }
    }

    async fn execute_with(
        &self,
        method: &str,
        body: &EncodedBody,
        read_only: bool,
        mut prepaid: bool,
    ) -> Result<Response, Error> {
        validate_method(method)?;
        let inner = &*self.inner;
        let mut attempt = 0u32;
        let mut refreshed = false;
        loop {
            attempt += 1;
            if !std::mem::take(&mut prepaid) {
                self.wait_while_blocked(method).await?;
                self.wait_for_bucket().await;
            }
            let (url, generation) = match &inner.auth {
                Auth::Webhook(webhook) => (webhook.method_url(method), 0),
                Auth::OAuth(session) => session.method_url(method),
            };
            let started = Instant::now();
            let sent = self.send(url, body).await;
            let elapsed = started.elapsed();
            let (outcome, status, verdict) = self.judge(method, read_only, sent);
            inner.observer.request_finished(&RequestEvent {
                portal: &inner.portal,
                method,
                outcome: &outcome,
                status,
                elapsed,
                attempt,
            });
            tracing::debug!(host = %inner.portal, method, outcome, attempt, "Bitrix24 request finished");
            match verdict {
                Verdict::Done(response) => {
                    inner.limiter.method_answered(method);
                    if let Some(at) = response.operating_reset_at() {
                        inner.limiter.note_operating_reset(method, at);
                    }
                    return Ok(response);
                }
                Verdict::Fail(error) => return Err(error),
                Verdict::Retry(error) => {
                    if attempt >= inner.retry.max_attempts {
                        return Err(error);
                    }
                    tokio::time::sleep(inner.retry.backoff(attempt)).await;
                }
                Verdict::ExpiredToken(error) => match &inner.auth {
                    Auth::OAuth(session) if !refreshed => {
                        session
                            .refresh(&inner.http, generation, &*inner.observer)
                            .await?;
                        refreshed = true;
                        // The expired token was not a failed attempt.
                        attempt -= 1;
                    }
                    _ => return Err(error),
                },
                Verdict::OperatingLimit { error, until } => {
                    inner.limiter.block_method(method, until);
                    let wait = until.duration_since(SystemTime::now()).unwrap_or_default();
                    // Give up with the portal's own error; otherwise the next
                    // turn of the loop waits until the method frees up.
                    if attempt >= inner.retry.max_attempts || wait > inner.retry.max_operating_wait
                    {
                        return Err(error);
                    }
                }
            }
        }
    }

    /// Holds a call to a method the portal blocked for its time budget.
    pub(crate) async fn wait_while_blocked(&self, method: &str) -> Result<(), Error> {
        let inner = &*self.inner;
        let now = SystemTime::now();
        let Some(until) = inner.limiter.blocked_until(method, now) else {
            return Ok(());
        };
        let wait = until.duration_since(now).unwrap_or_default();
        if wait > inner.retry.max_operating_wait {
            return Err(Error::Api(ApiError {
                kind: ApiErrorKind::OperationTimeLimit,
                code: "OPERATION_TIME_LIMIT".into(),
                description: format!(
                    "the method's time budget is used up for another {} s",
                    wait.as_secs()
                ),
                status: 429,
                method: method.to_owned(),
                portal: inner.portal.clone(),
                retry_at: Some(until),
            }));
        }
        tokio::time::sleep(wait).await;
        Ok(())
    }

    async fn send(&self, url: Url, body: &EncodedBody) -> Result<(u16, Vec<u8>), reqwest::Error> {
        let content_type = match body.format {
            BodyFormat::Json => "application/json",
            BodyFormat::Form => "application/x-www-form-urlencoded",
        };
        let response = self
            .inner
            .http
            .post(url)
            .header(CONTENT_TYPE, content_type)
            .header(ACCEPT, "application/json")
            .body(body.bytes.clone())
            .send()
            .await?;
        let status = response.status().as_u16();
        let bytes = response.bytes().await?;
        Ok((status, bytes.to_vec()))
    }

    fn judge(
        &self,
        method: &str,
        read_only: bool,
        sent: Result<(u16, Vec<u8>), reqwest::Error>,
    ) -> (String, Option<u16>, Verdict) {
        let portal = &self.inner.portal;
        let (status, body) = match sent {
            Ok(answer) => answer,
            Err(error) if error.is_connect() => {
                let verdict = Verdict::Retry(Error::transport(portal, method, error));
                return ("connect_error".into(), None, verdict);
            }
            Err(error) => {
                let failure = crate::TransportFailure::of(&error);
                let label = if error.is_timeout() {
                    "timeout"
                } else {
                    "transport_error"
                };
                let verdict = if read_only {
                    Verdict::Retry(Error::transport(portal, method, error))
                } else {
                    Verdict::Fail(Error::MayHaveExecuted {
                        portal: portal.clone(),
                        method: method.to_owned(),
                        reason: format!("{failure} after the request was sent"),
                    })
                };
                return (label.into(), None, verdict);
            }
        };
        let verdict = match read_answer(&body) {
            Answer::Success(response) => {
                return ("ok".into(), Some(status), Verdict::Done(response));
            }
            Answer::Failure {
                code,
                description,
                time,
            } => {
                let kind = ApiErrorKind::from_code(&code);
                let mut api = ApiError {
                    kind,
                    code: code.clone(),
                    description,
                    status,
                    method: method.to_owned(),
                    portal: portal.clone(),
                    retry_at: None,
                };
                let verdict = match kind {
                    ApiErrorKind::QueryLimitExceeded => {
                        self.inner.limiter.saturate();
                        Verdict::Retry(api.into())
                    }
                    ApiErrorKind::OperationTimeLimit => {
                        let until = self.operating_block_end(method, time.as_ref());
                        api.retry_at = Some(until);
                        Verdict::OperatingLimit {
                            error: api.into(),
                            until,
                        }
                    }
                    ApiErrorKind::ExpiredToken => Verdict::ExpiredToken(api.into()),
                    _ => Verdict::Fail(api.into()),
                };
                return (code, Some(status), verdict);
            }
            Answer::Foreign => {
                let bare = Error::Http {
                    portal: portal.clone(),
                    method: method.to_owned(),
                    status,
                };
                if (300..500).contains(&status) {
                    Verdict::Fail(bare)
                } else if read_only {
                    Verdict::Retry(bare)
                } else {
                    Verdict::Fail(Error::MayHaveExecuted {
                        portal: portal.clone(),
                        method: method.to_owned(),
                        reason: format!("HTTP {status} without a Bitrix24 answer"),
                    })
                }
            }
        };
        (format!("http_{status}"), Some(status), verdict)
    }

    /// When a method blocked by `OPERATION_TIME_LIMIT` frees up: the reset
    /// time in the answer, else the last one seen for the method, else a
    /// short hold that grows while such answers keep coming.
    fn operating_block_end(&self, method: &str, time: Option<&Value>) -> SystemTime {
        let now = SystemTime::now();
        time.and_then(operating_reset_at)
            .filter(|at| *at > now)
            .or_else(|| {
                self.inner
                    .limiter
                    .last_operating_reset(method)
                    .filter(|at| *at > now)
            })
            .unwrap_or_else(|| now + self.inner.limiter.unexplained_limit_hold(method))
    }
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let auth = match &self.inner.auth {
            Auth::Webhook(webhook) => webhook.redacted_url(),
            Auth::OAuth(session) => format!("OAuth({})", session.portal()),
        };
        f.debug_struct("Client")
            .field("portal", &self.inner.portal)
            .field("auth", &auth)
            .field("format", &self.inner.format)
            .finish_non_exhaustive()
    }
}

/// Method names go into the URL path: allow only what Bitrix24 uses.
pub(crate) fn validate_method(method: &str) -> Result<(), Error> {
    let valid = !method.is_empty()
        && method.len() <= 200
        && method
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_');
    if valid {
        Ok(())
    } else {
        Err(Error::Config(format!(
            "`{method}` is not a REST method name (letters, digits, `.` and `_` only)"
        )))
    }
}

/// A request body ready to send (and to resend on a retry).
pub(crate) struct EncodedBody {
    pub(crate) bytes: Vec<u8>,
    pub(crate) format: BodyFormat,
}

pub(crate) fn encode_body(params: &Value, format: BodyFormat) -> Result<EncodedBody, Error> {
    match params {
        Value::Null | Value::Object(_) => {}
        _ => {
            return Err(Error::Config(
                "call parameters must be a JSON object".into(),
            ));
        }
    }
    let bytes = match format {
        BodyFormat::Json if params.is_null() => b"{}".to_vec(),
        BodyFormat::Json => serde_json::to_vec(params).expect("a JSON value serializes"),
        BodyFormat::Form => b24_phpform::encode(params).into_bytes(),
    };
    Ok(EncodedBody { bytes, format })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn method_names_cannot_escape_the_path() {
        assert!(validate_method("crm.item.get").is_ok());
        assert!(validate_method("user_field.list").is_ok());
        for bad in ["", "../profile", "crm.item.get?x=1", "crm item", "a/b"] {
            assert!(validate_method(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn bodies() {
        let bytes = |params: Value, format| encode_body(&params, format).unwrap().bytes;
        assert_eq!(bytes(Value::Null, BodyFormat::Json), b"{}");
        assert_eq!(bytes(json!({"id": 5}), BodyFormat::Json), br#"{"id":5}"#);
        assert_eq!(
            bytes(
                json!({"fields": {"PHONE": [{"VALUE": "1"}]}}),
                BodyFormat::Form
            ),
            b"fields[PHONE][0][VALUE]=1"
        );
        assert!(encode_body(&json!([1]), BodyFormat::Json).is_err());
    }
}
