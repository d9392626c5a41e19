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
    /// retries ran out.
    #[error("{method} on {portal}: transport error: {source}")]
    Transport {
        portal: String,
        method: String,
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
            source: source.without_url(),
        }
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
