//! Why a transfer did not finish, as a value: what kind of failure, whether
//! trying again can help, what the relay was doing, and the error beneath
//! (kept as `#[source]` so `jobs show` prints the whole chain, e.g.
//! "creating the deal on esb: crm.item.add on esb.test: connection refused").

use std::fmt;
use std::sync::Arc;

use b24_client::{ApiErrorKind, Error as ClientError};

use crate::mapping::MappingError;
use crate::messages::{self, Language};
use crate::store::StoreError;

/// What failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ErrorKind {
    /// The portal answered with an error code.
    Portal(ApiErrorKind),
    /// The portal could not be reached or the answer was lost.
    Transport,
    /// A write was sent and its outcome is unknown.
    OutcomeUnknown,
    /// One or more fields cannot be mapped.
    Mapping,
    /// The relay's store failed.
    Store,
    /// The configuration does not allow it (unknown portal, ...).
    Config,
    /// The source deal (or a record it needs) does not exist.
    NotFound,
    /// Another worker holds a record this transfer needs.
    Busy,
    /// A file could not be copied.
    File,
}

impl ErrorKind {
    fn label(&self) -> &'static str {
        match self {
            Self::Portal(_) => "portal error",
            Self::Transport => "transport",
            Self::OutcomeUnknown => "outcome unknown",
            Self::Mapping => "mapping",
            Self::Store => "store",
            Self::Config => "configuration",
            Self::NotFound => "not found",
            Self::Busy => "busy",
            Self::File => "file",
        }
    }
}

/// Whether another attempt can succeed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Retried with backoff (limits, outages, lost answers).
    Transient,
    /// Fails the job at once: a person must change something first.
    Permanent,
}

type Source = Arc<dyn std::error::Error + Send + Sync>;

/// A typed transfer error. Cheap to clone (the source is shared).
#[derive(Clone)]
pub struct TransferError {
    pub kind: ErrorKind,
    pub retry: Retry,
    /// What the relay was doing ("creating the deal on esb").
    pub context: String,
    source: Option<Source>,
    /// The fields that cannot be mapped, for [`ErrorKind::Mapping`].
    pub mapping: Vec<MappingError>,
}

impl fmt::Debug for TransferError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TransferError")
            .field("kind", &self.kind)
            .field("retry", &self.retry)
            .field("message", &self.to_string())
            .finish()
    }
}

impl fmt::Display for TransferError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.context)?;
        if !self.mapping.is_empty() {
            let all: Vec<String> = self.mapping.iter().map(|e| e.to_string()).collect();
            write!(f, ": {}", all.join("; "))?;
        }
        let mut cause = self.source.as_deref().map(|s| s as &dyn std::error::Error);
        while let Some(error) = cause {
            write!(f, ": {error}")?;
            cause = error.source();
        }
        Ok(())
    }
}

impl std::error::Error for TransferError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|s| s as &(dyn std::error::Error + 'static))
    }
}

impl TransferError {
    pub fn new(kind: ErrorKind, retry: Retry, context: impl Into<String>) -> Self {
        Self {
            kind,
            retry,
            context: context.into(),
            source: None,
            mapping: Vec::new(),
        }
    }

    pub fn permanent(kind: ErrorKind, context: impl Into<String>) -> Self {
        Self::new(kind, Retry::Permanent, context)
    }

    pub fn transient(kind: ErrorKind, context: impl Into<String>) -> Self {
        Self::new(kind, Retry::Transient, context)
    }

    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Arc::new(source));
        self
    }

    /// A portal call failed while doing `context`.
    pub fn client(context: impl Into<String>, error: ClientError) -> Self {
        let (kind, retry) = classify(&error);
        Self::new(kind, retry, context).with_source(error)
    }

    pub fn mapping(context: impl Into<String>, errors: Vec<MappingError>) -> Self {
        Self {
            mapping: errors,
            ..Self::permanent(ErrorKind::Mapping, context)
        }
    }

    pub fn store(error: StoreError) -> Self {
        Self::transient(ErrorKind::Store, "the relay's store").with_source(error)
    }

    pub fn is_transient(&self) -> bool {
        self.retry == Retry::Transient
    }

    /// The message kept in `jobs show`: kind, retry class and the chain.
    pub fn detailed(&self) -> String {
        let retry = match self.retry {
            Retry::Transient => "will retry",
            Retry::Permanent => "permanent",
        };
        format!("[{}, {retry}] {self}", self.kind.label())
    }

    /// In words for the people on the source deal (no commands, no codes).
    pub fn for_people(&self, language: Language) -> String {
        if let Some(first) = self.mapping.first() {
            let mut text = first.for_people(language);
            if self.mapping.len() > 1 {
                let more = self.mapping.len() - 1;
                text.push_str(&match language {
                    Language::Ru => format!(" (и ещё полей с ошибками: {more})"),
                    Language::En => format!(" (and {more} more field(s))"),
                });
            }
            return text;
        }
        match &self.kind {
            ErrorKind::NotFound => messages::reason_deal_missing(language).to_owned(),
            ErrorKind::Portal(
                ApiErrorKind::NoAuthFound
                | ApiErrorKind::InvalidCredentials
                | ApiErrorKind::InvalidToken
                | ApiErrorKind::InsufficientScope
                | ApiErrorKind::AccessDenied
                | ApiErrorKind::MethodNotFound,
            ) => messages::reason_portal_refused(language).to_owned(),
            ErrorKind::Transport | ErrorKind::OutcomeUnknown => {
                messages::reason_unreachable(language).to_owned()
            }
            _ => messages::reason_other(language).to_owned(),
        }
    }
}

impl From<StoreError> for TransferError {
    fn from(error: StoreError) -> Self {
        Self::store(error)
    }
}

/// Sorts a client error into kind and retry class (BITRIX24.md §3).
pub fn classify(error: &ClientError) -> (ErrorKind, Retry) {
    match error {
        ClientError::Api(api) => {
            let retry = match api.kind {
                ApiErrorKind::QueryLimitExceeded
                | ApiErrorKind::OperationTimeLimit
                | ApiErrorKind::OverloadLimit
                | ApiErrorKind::ExpiredToken => Retry::Transient,
                ApiErrorKind::NotFound => Retry::Permanent,
                _ if api.status >= 500 || api.code == "INTERNAL_SERVER_ERROR" => Retry::Transient,
                _ => Retry::Permanent,
            };
            let kind = if api.kind == ApiErrorKind::NotFound {
                ErrorKind::NotFound
            } else {
                ErrorKind::Portal(api.kind)
            };
            (kind, retry)
        }
        ClientError::MayHaveExecuted { .. } => (ErrorKind::OutcomeUnknown, Retry::Transient),
        ClientError::Transport { .. } | ClientError::TokenRefreshTransport { .. } => {
            (ErrorKind::Transport, Retry::Transient)
        }
        ClientError::Http { status, .. } if *status >= 500 => {
            (ErrorKind::Transport, Retry::Transient)
        }
        ClientError::Http {
            status: 401 | 403, ..
        } => (
            ErrorKind::Portal(ApiErrorKind::AccessDenied),
            Retry::Permanent,
        ),
        ClientError::Http { .. } => (ErrorKind::Transport, Retry::Transient),
        ClientError::InvalidResponse { .. } => (ErrorKind::Transport, Retry::Transient),
        ClientError::TokenRefresh { .. } => (
            ErrorKind::Portal(ApiErrorKind::InvalidToken),
            Retry::Transient,
        ),
        ClientError::TokenStore { .. } => (ErrorKind::Store, Retry::Transient),
        ClientError::Config(_) => (ErrorKind::Config, Retry::Permanent),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chain_is_kept_and_people_get_plain_words() {
        let api = b24_client::ApiError {
            kind: ApiErrorKind::InsufficientScope,
            code: "insufficient_scope".into(),
            description: "The request requires higher privileges".into(),
            status: 403,
            method: "crm.item.add".into(),
            portal: "esb.test".into(),
            retry_at: None,
        };
        let error = TransferError::client("creating the deal on esb", ClientError::Api(api));
        assert_eq!(error.retry, Retry::Permanent);
        assert_eq!(
            error.detailed(),
            "[portal error, permanent] creating the deal on esb: crm.item.add on esb.test: insufficient_scope: The request requires higher privileges"
        );
        let people = error.for_people(Language::Ru);
        assert!(
            !people.contains("insufficient_scope") && !people.contains("b24-relay"),
            "{people}"
        );
        let lost = TransferError::client(
            "creating the deal on esb",
            ClientError::MayHaveExecuted {
                portal: "esb.test".into(),
                method: "batch".into(),
                reason: "timed out".into(),
            },
        );
        assert!(lost.is_transient());
        assert_eq!(lost.kind, ErrorKind::OutcomeUnknown);
    }
}
