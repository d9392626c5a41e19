use std::time::SystemTime;

use thiserror::Error;

/// Everything a call can fail with. No variant carries a URL, a webhook
/// secret or a token: transport errors are stripped of their URL.
#[derive(Debug, Error)]
pub enum Error {
    /// The portal answered with `{"error": CODE, "error_description": ..}`.
    #[error(transparent)]
    Api(#[from] ApiError),

    /// A write was sent but its outcome is unknown (timeout, dropped
    /// connection, or an HTTP 5xx without a Bitrix24 answer). It may have
    /// run: look the target up before sending it again.
    #[error(
        "{method} on {portal} may have been executed ({reason}); look the result up before retrying"
    )]
    MayHaveExecuted {
        portal: String,
        method: String,
        reason: String,
    },

    /// The portal could not be reached, or a read failed in transit, and
    /// retries ran out. `failure` says how (refused, dropped, timed out).
    #[error("{method} on {portal}: {failure}")]
    Transport {
        portal: String,
        method: String,
        failure: TransportFailure,
        #[source]
        source: reqwest::Error,
    },

    /// An HTTP answer that is not a Bitrix24 answer (e.g. a proxy's 404 or
    /// 502 page).
    #[error("{method} on {portal}: HTTP {status} without a Bitrix24 answer")]
    Http {
        portal: String,
        method: String,
        status: u16,
    },

    /// A Bitrix24 answer that does not have the expected shape.
    #[error("{method} on {portal}: unexpected response: {reason}")]
    InvalidResponse {
        portal: String,
        method: String,
        reason: String,
    },

    /// The authorization server refused to refresh the OAuth tokens (e.g.
    /// `invalid_grant`: the refresh token expired or was already used).
    #[error("refreshing the OAuth tokens for {portal} failed: {code}: {description}")]
    TokenRefresh {
        portal: String,
        code: String,
        description: String,
    },

    /// The authorization server could not be reached.
    #[error("refreshing the OAuth tokens for {portal} failed: {source}")]
    TokenRefreshTransport {
        portal: String,
        #[source]
        source: reqwest::Error,
    },

    /// New tokens were obtained and are in use, but the token store could not
    /// persist them: after a restart the old refresh token will not work.
    #[error("new OAuth tokens for {portal} could not be stored: {source}")]
    TokenStore {
        portal: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    /// Invalid client settings (credentials, limits, batch commands).
    #[error("invalid client configuration: {0}")]
    Config(String),
}

impl Error {
    /// The portal's error, when it sent one.
    pub fn api(&self) -> Option<&ApiError> {
        match self {
            Error::Api(api) => Some(api),
            _ => None,
        }
    }

    /// True when the request may have run, so it must not be resent blindly.
    pub fn may_have_executed(&self) -> bool {
        matches!(self, Error::MayHaveExecuted { .. })
    }

    pub(crate) fn transport(portal: &str, method: &str, source: reqwest::Error) -> Self {
        Error::Transport {
            portal: portal.to_owned(),
            method: method.to_owned(),
            failure: TransportFailure::of(&source),
            source: source.without_url(),
        }
    }
}

/// How a request failed on the wire, in the words an operator acts on:
/// a refused connection means the portal (or a firewall) is not listening,
/// a dropped one that something closed it mid-answer, a timeout that it
/// answered too slowly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportFailure {
    /// Nothing listens at the address, or a firewall rejects the connection.
    Refused,
    /// The name of the portal did not resolve.
    NameNotResolved,
    /// The TLS handshake failed (certificate, protocol).
    Tls,
    /// No connection within the connect timeout.
    ConnectTimeout,
    /// Connected, but the answer did not come in time.
    Timeout,
    /// The connection was closed or reset before the whole answer came.
    Dropped,
    /// Anything else (see the source error).
    Other,
}

impl TransportFailure {
    /// Reads what happened from a reqwest error and the errors under it.
    pub fn of(error: &reqwest::Error) -> Self {
        use std::error::Error as _;
        let mut texts = Vec::new();
        let mut current: Option<&(dyn std::error::Error + 'static)> = error.source();
        while let Some(cause) = current {
            if let Some(io) = cause.downcast_ref::<std::io::Error>() {
                match io.kind() {
                    std::io::ErrorKind::ConnectionRefused => return Self::Refused,
                    std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::ConnectionAborted
                    | std::io::ErrorKind::BrokenPipe
                    | std::io::ErrorKind::UnexpectedEof => return Self::Dropped,
                    std::io::ErrorKind::TimedOut if error.is_connect() => {
                        return Self::ConnectTimeout;
                    }
                    std::io::ErrorKind::TimedOut => return Self::Timeout,
                    _ => {}
                }
            }
            texts.push(cause.to_string().to_ascii_lowercase());
            current = cause.source();
        }
        let said = |needle: &str| texts.iter().any(|t| t.contains(needle));
        if error.is_timeout() {
            return if error.is_connect() {
                Self::ConnectTimeout
            } else {
                Self::Timeout
            };
        }
        if said("dns error") || said("failed to lookup") || said("name or service not known") {
            return Self::NameNotResolved;
        }
        if said("certificate") || said("tls") {
            return Self::Tls;
        }
        if said("connection closed")
            || said("connection reset")
            || said("incomplete message")
            || said("unexpected eof")
            || said("broken pipe")
        {
            return Self::Dropped;
        }
        if error.is_connect() && said("refused") {
            return Self::Refused;
        }
        Self::Other
    }

    /// Whether the request surely never reached the portal.
    pub fn before_sending(self) -> bool {
        matches!(
            self,
            Self::Refused | Self::NameNotResolved | Self::Tls | Self::ConnectTimeout
        )
    }
}

impl std::fmt::Display for TransportFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Refused => "connection refused (is the portal up and reachable from here?)",
            Self::NameNotResolved => "the portal's name does not resolve (DNS)",
            Self::Tls => "TLS handshake failed (certificate or protocol)",
            Self::ConnectTimeout => "no connection within the connect timeout",
            Self::Timeout => "timed out waiting for the answer",
            Self::Dropped => "connection dropped before the whole answer came",
            Self::Other => "transport error",
        })
    }
}

/// An error answer from the portal. `description` is the portal's own
/// `error_description`, kept verbatim.
#[derive(Debug, Error, Clone, PartialEq)]
#[error("{method} on {portal}: {code}: {description}")]
pub struct ApiError {
    pub kind: ApiErrorKind,
    pub code: String,
    pub description: String,
    /// HTTP status of the answer (200 for per-command errors in a batch).
    pub status: u16,
    pub method: String,
    pub portal: String,
    /// For `OPERATION_TIME_LIMIT`: when the method is expected to work again.
    pub retry_at: Option<SystemTime>,
}

/// What an error code means for the caller (BITRIX24.md §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ApiErrorKind {
    /// Rate limit: not executed, safe to retry later.
    QueryLimitExceeded,
    /// The method's time budget is used up until `retry_at`.
    OperationTimeLimit,
    /// The portal is blocked by its administrator: stop and alert.
    OverloadLimit,
    /// OAuth access token expired (the client refreshes it itself).
    ExpiredToken,
    /// Wrong or revoked webhook or token: do not retry.
    NoAuthFound,
    InvalidCredentials,
    InvalidToken,
    /// The webhook or application lacks a scope.
    InsufficientScope,
    /// The method does not exist (module missing or box not updated).
    MethodNotFound,
    /// More than 50 commands in a batch.
    BatchLengthExceeded,
    AccessDenied,
    NotFound,
    /// Any other code; see `code`.
    Other,
}

impl ApiErrorKind {
    pub fn from_code(code: &str) -> Self {
        match code {
            "QUERY_LIMIT_EXCEEDED" => Self::QueryLimitExceeded,
            "OPERATION_TIME_LIMIT" => Self::OperationTimeLimit,
            "OVERLOAD_LIMIT" => Self::OverloadLimit,
            "expired_token" => Self::ExpiredToken,
            "NO_AUTH_FOUND" => Self::NoAuthFound,
            "INVALID_CREDENTIALS" => Self::InvalidCredentials,
            "invalid_token" => Self::InvalidToken,
            "insufficient_scope" => Self::InsufficientScope,
            "ERROR_METHOD_NOT_FOUND" => Self::MethodNotFound,
            "ERROR_BATCH_LENGTH_EXCEEDED" => Self::BatchLengthExceeded,
            "ACCESS_DENIED" => Self::AccessDenied,
            "NOT_FOUND" => Self::NotFound,
            _ => Self::Other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_map_to_kinds() {
        let table = [
            ("QUERY_LIMIT_EXCEEDED", ApiErrorKind::QueryLimitExceeded),
            ("OPERATION_TIME_LIMIT", ApiErrorKind::OperationTimeLimit),
            ("OVERLOAD_LIMIT", ApiErrorKind::OverloadLimit),
            ("expired_token", ApiErrorKind::ExpiredToken),
            ("NO_AUTH_FOUND", ApiErrorKind::NoAuthFound),
            ("INVALID_CREDENTIALS", ApiErrorKind::InvalidCredentials),
            ("insufficient_scope", ApiErrorKind::InsufficientScope),
            ("ERROR_METHOD_NOT_FOUND", ApiErrorKind::MethodNotFound),
            (
                "ERROR_BATCH_LENGTH_EXCEEDED",
                ApiErrorKind::BatchLengthExceeded,
            ),
            ("SOMETHING_NEW", ApiErrorKind::Other),
        ];
        for (code, kind) in table {
            assert_eq!(ApiErrorKind::from_code(code), kind, "{code}");
        }
    }

    #[test]
    fn api_error_message_keeps_the_portal_description() {
        let error = Error::from(ApiError {
            kind: ApiErrorKind::InsufficientScope,
            code: "insufficient_scope".into(),
            description:
                "The request requires higher privileges than provided by the webhook token".into(),
            status: 403,
            method: "crm.item.add".into(),
            portal: "source.test".into(),
            retry_at: None,
        });
        assert_eq!(
            error.to_string(),
            "crm.item.add on source.test: insufficient_scope: The request requires higher privileges than provided by the webhook token"
        );
        assert_eq!(error.api().unwrap().kind, ApiErrorKind::InsufficientScope);
    }
}
