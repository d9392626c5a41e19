//! Bitrix24 REST client: incoming-webhook and OAuth credentials (secrets
//! redacted everywhere), JSON or PHP-form bodies, `batch` with automatic
//! splitting, list paging as a stream, a leaky bucket per portal shared
//! through an explicit [`RateLimits`] registry, retries only where they are
//! safe, a single-flight OAuth refresh, typed errors and an install check.
//!
//! ```no_run
//! # async fn demo() -> Result<(), b24_client::Error> {
//! use b24_client::{Client, RateLimits, Webhook};
//! let limits = RateLimits::default(); // once per process, cloned into every client
//! let webhook = Webhook::parse("https://portal.bitrix24.ru/rest/1/secret/")?;
//! let client = Client::builder(webhook, limits.clone()).build()?;
//! let deal = client
//!     .call("crm.item.get", &serde_json::json!({"entityTypeId": 2, "id": 42}))
//!     .await?;
//! # Ok(()) }
//! ```

mod batch;
mod check;
mod client;
mod credentials;
mod error;
mod oauth;
mod observer;
mod paging;
mod rate_limit;
mod references;
mod response;
mod retry;
mod secret;

pub use batch::{
    Batch, BatchCommand, BatchOutcome, CommandOutcome, CommandResult, MAX_BATCH_COMMANDS,
};
pub use check::{CheckReport, MethodCheck, MethodStatus, likely_scope};
pub use client::{BodyFormat, Client, ClientBuilder};
pub use credentials::{Credentials, DEFAULT_TOKEN_SERVER, OAuth, TokenPair, TokenStore, Webhook};
pub use error::{ApiError, ApiErrorKind, Error};
pub use observer::{NoopObserver, Observer, RequestEvent};
pub use paging::{PAGE_SIZE, Paging};
pub use rate_limit::{BucketConfig, PortalLimiter, RateLimits};
pub use response::Response;
pub use retry::{RetryPolicy, is_read_method};
pub use secret::Secret;
