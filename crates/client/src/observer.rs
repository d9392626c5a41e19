use std::time::Duration;

/// Hooks for metrics. Pass one to [`ClientBuilder::observer`](crate::ClientBuilder::observer);
/// every method has an empty default, so implement only what you count.
/// Nothing handed to an observer contains a secret.
pub trait Observer: Send + Sync {
    /// One HTTP request to the portal finished (every attempt counts).
    fn request_finished(&self, _event: &RequestEvent<'_>) {}
    /// A request waited for the portal's leaky bucket before being sent.
    fn rate_limit_waited(&self, _portal: &str, _waited: Duration) {}
    /// The OAuth tokens of `portal` were refreshed.
    fn token_refreshed(&self, _portal: &str) {}
    /// A shared `batch` request is sent: `callers` batches with `commands`
    /// commands in all (see [`ClientBuilder::coalesce_batches`](crate::ClientBuilder::coalesce_batches)).
    fn batch_sent(&self, _portal: &str, _callers: usize, _commands: usize) {}
}

/// One finished HTTP request.
#[derive(Debug, Clone)]
pub struct RequestEvent<'a> {
    /// `host[:port]`.
    pub portal: &'a str,
    pub method: &'a str,
    /// `ok`, the portal's error code (`QUERY_LIMIT_EXCEEDED`, ...), or one
    /// of `connect_error`, `timeout`, `transport_error`, `http_<status>`.
    pub outcome: &'a str,
    /// HTTP status, when an answer came.
    pub status: Option<u16>,
    pub elapsed: Duration,
    /// 1 for the first attempt of a call.
    pub attempt: u32,
}

/// An observer that ignores everything.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoopObserver;

impl Observer for NoopObserver {}
