//! A Bitrix24 portal emulator: one process plays one portal, answering REST calls
//! over incoming-webhook URLs and, for an installed local application, over
//! OAuth (with an authorization server for token refresh) the way the cloud
//! does (shapes, errors, limits), and delivering outbound calls (events,
//! install, automation rules), so tests and benchmarks never need a real portal.
//!
//! ```no_run
//! # async fn demo() -> Result<(), b24_emulator::StartError> {
//! let portal = b24_emulator::Portal::builder()
//!     .domain("source.test")
//!     .webhook(1, "SECRET", &["crm", "user"])
//!     .start()
//!     .await?;
//! let url = portal.webhook_url(1, "SECRET"); // http://127.0.0.1:PORT/rest/1/SECRET/
//! # let _ = url;
//! portal.shutdown().await;
//! # Ok(()) }
//! ```

mod admin;
mod admin_app;
pub mod app;
mod batch;
mod clock;
mod disposition;
mod error;
mod exec;
pub mod faults;
mod fields;
mod filter;
pub mod limits;
mod methods;
mod oauth;
pub mod outbound;
mod params;
mod portal;
pub mod robots;
mod server;
mod shared;
mod store;
mod tls;

pub use admin::Admin;
pub use admin_app::Installed;
pub use app::{AppError, AppStatus, EventBinding, IssuedTokens};
pub use error::{ApiError, StartError};
pub use faults::{FaultSettings, Faults, InjectedError, MethodFaults};
pub use fields::EntityType;
pub use limits::LimitConfig;
pub use outbound::{Delivery, EventHandler, HandlerSeed, RobotHandler, RobotRun, WebhookRule};
pub use portal::{Portal, PortalBuilder};
pub use robots::AppRobot;
pub use store::Record;
