//! Bitrix24 REST client: incoming-webhook and OAuth credentials (secrets
//! redacted everywhere), JSON or PHP-form bodies, `batch` with automatic
//! splitting, list paging as a stream, a leaky bucket per portal shared
//! through an explicit [`RateLimits`] registry, retries only where they are
//! safe, a single-flight OAuth refresh, typed errors and an install check.
//!
//! ```no_run
//! # async fn demo() -> Result<(), b24_client::Error> {
//! use b24_client::{Batch, Client, Paging, RateLimits, Webhook};
//! use futures_util::TryStreamExt;
//! use serde_json::json;
//!
//! let limits = RateLimits::default(); // once per process, cloned into every client
//! let webhook = Webhook::parse("https://portal.bitrix24.ru/rest/1/secret/")?;
//! let client = Client::builder(webhook, limits.clone()).build()?;
//!
//! let deal = client.call("crm.item.get", &json!({"entityTypeId": 2, "id": 42})).await?;
//!
//! let batch = Batch::new()
//!     .with("contact", "crm.contact.add", json!({"fields": {"NAME": "Anna"}}))?
//!     .with("deal", "crm.item.add", json!({"entityTypeId": 2,
//!         "fields": {"title": "New", "contactId": "$result[contact]"}}))?;
//! let outcome = client.batch(&batch).await;
//! let later = outcome.safe_to_resend(); // never the commands that did run
//!
//! let deals: Vec<_> = client
//!     .list("crm.item.list", json!({"entityTypeId": 2}), Paging::by_id("id"))
//!     .try_collect()
//!     .await?;
//! # let _ = (deal, later, deals);
//! # Ok(()) }
//! ```
//!
//! # What is retried (BITRIX24.md §3)
//! - Always, with backoff and jitter: `QUERY_LIMIT_EXCEEDED` and connection
//!   failures; neither ran on the portal.
//! - Read methods only (`*.get`, `*.list`, `*.fields`, ...; see
//!   [`is_read_method`]): timeouts, broken connections and HTTP 5xx without
//!   a Bitrix24 answer. For a write these give [`Error::MayHaveExecuted`]:
//!   look the target up before sending it again.
//! - `OPERATION_TIME_LIMIT`: the method is held until
//!   `time.operating_reset_at`, up to [`RetryPolicy::max_operating_wait`].
//! - `expired_token` (OAuth): one refresh at the authorization server, shared
//!   by every concurrent call of the client and its clones, then one retry.
//! - Every other portal error is returned as [`ApiError`], with its code,
//!   [`ApiErrorKind`] and the portal's `error_description`.

mod batch;
mod check;
mod client;
mod coalesce;
mod credentials;
mod download;
mod error;
mod oauth;
mod observer;
mod paging;
mod rate_limit;
mod references;
mod response;
mod retry;
mod scan;
mod secret;

pub use batch::{
    Batch, BatchCommand, BatchOutcome, CommandOutcome, CommandResult, MAX_BATCH_COMMANDS,
    survives_query_string,
};
pub use check::{CheckReport, MethodCheck, MethodStatus, likely_scope};
pub use client::{BodyFormat, Client, ClientBuilder};
pub use credentials::{
    Credentials, DEFAULT_TOKEN_SERVER, OAuth, RefreshGuard, TokenPair, TokenStore, TokenStoreError,
    TokenStoreResult, Webhook,
};
pub use download::{Download, file_name};
pub use error::{ApiError, ApiErrorKind, Error, TransportFailure};
pub use observer::{NoopObserver, Observer, RequestEvent};
pub use paging::{PAGE_SIZE, Paging};
pub use rate_limit::{BucketConfig, PortalLimiter, RateLimits, SharedBucket, SharedBucketFuture};
pub use response::Response;
pub use retry::{RetryPolicy, is_read_method};
pub use scan::IdScan;
pub use secret::Secret;
