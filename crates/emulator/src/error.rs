//! Errors: the ones a REST client sees (Bitrix24 codes with their HTTP
//! statuses) and the ones the emulator's owner sees when it cannot start.

use http::StatusCode;
use serde_json::{Value, json};

/// An error as Bitrix24 returns it: `{"error": CODE, "error_description": TEXT}`
/// with a particular HTTP status.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: String,
    pub description: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &str, description: impl Into<String>) -> Self {
        Self {
            status,
            code: code.to_string(),
            description: description.into(),
        }
    }

    pub fn body(&self) -> Value {
        json!({"error": self.code, "error_description": self.description})
    }

    pub fn method_not_found() -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "ERROR_METHOD_NOT_FOUND",
            "Method not found!",
        )
    }

    pub fn query_limit() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "QUERY_LIMIT_EXCEEDED",
            "Too many requests",
        )
    }

    pub fn operation_time_limit() -> Self {
        Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "OPERATION_TIME_LIMIT",
            "Method is blocked due to operation time limit.",
        )
    }

    pub fn invalid_credentials() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "INVALID_CREDENTIALS",
            "Invalid request credentials",
        )
    }

    pub fn no_auth_found() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "NO_AUTH_FOUND",
            "Wrong authorization data",
        )
    }

    pub fn invalid_token() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "invalid_token",
            "The access token provided is invalid.",
        )
    }

    pub fn expired_token() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "expired_token",
            "The access token provided has expired.",
        )
    }

    /// The OAuth flavour of `insufficient_scope`.
    pub fn insufficient_scope_token() -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "insufficient_scope",
            "The request requires higher privileges than provided by the access token",
        )
    }

    pub fn insufficient_scope() -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "insufficient_scope",
            "The request requires higher privileges than provided by the webhook token",
        )
    }

    pub fn application_context_required() -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "ACCESS_DENIED",
            "Application context required",
        )
    }

    pub fn not_found(description: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "NOT_FOUND", description)
    }

    pub fn invalid_arg(description: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "INVALID_ARG_VALUE", description)
    }

    pub fn field_not_valid(field: &str) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "CRM_FIELD_ERROR_VALUE_NOT_VALID",
            format!("Invalid value for field \"{field}\""),
        )
    }

    /// The plain `400 {"error": "", "error_description": "..."}` that the
    /// deprecated `crm.deal.*` family answers with.
    pub fn legacy(description: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "", description)
    }

    pub fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "INTERNAL_SERVER_ERROR",
            "Internal server error",
        )
    }
}

/// Why a portal could not be built or started. An I/O cause is the
/// error's `source()` (the chain prints it), not repeated in the message.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr}")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot read seed file {path}")]
    SeedRead {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("invalid seed data: {0}")]
    Seed(String),
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("cannot create the TLS certificate: {0}")]
    Tls(String),
}
