//! What can stop the demo, with enough said to act on it.

/// Why the demo could not run to the end.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// A piece could not start (a port, the certificate, a config).
    #[error("cannot start {what}: {detail}")]
    Start { what: &'static str, detail: String },
    /// Something the demo waits for did not happen in time.
    #[error("timed out after {seconds} s waiting for {what}")]
    Timeout { what: String, seconds: u64 },
    /// A step went differently than the data path promises.
    #[error("{0}")]
    Unexpected(String),
    /// The demo's own HTTP calls (to the portals, the edge, the metrics).
    #[error("{what}: {detail}")]
    Http { what: String, detail: String },
    #[error("writing the demo's output: {0}")]
    Output(#[from] std::io::Error),
}

pub(crate) fn start_error(what: &'static str, detail: impl std::fmt::Display) -> DemoError {
    DemoError::Start {
        what,
        detail: detail.to_string(),
    }
}

/// A reqwest error without its URL: demo URLs hold webhook secrets.
pub(crate) fn http_error(what: impl Into<String>, error: reqwest::Error) -> DemoError {
    DemoError::Http {
        what: what.into(),
        detail: error.without_url().to_string(),
    }
}
