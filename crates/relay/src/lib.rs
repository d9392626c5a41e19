//! The deal relay between Bitrix24 portals: takes events and automation-rule
//! calls in, queues them durably, and transfers each source deal to exactly
//! one target deal (fields, product rows, contact, company, files), then
//! reports back on the source deal.

pub mod app;
pub mod application;
pub mod backfill;
pub mod cli;
pub mod cli_app;
pub mod cli_backfill;
pub mod cli_check;
pub mod cli_fields;
pub mod cli_store;
pub mod config;
pub mod intake;
pub mod links;
pub mod mapping;
pub mod messages;
pub mod metrics;
pub mod portals;
pub mod store;
pub mod transfer;
pub mod worker;

pub use app::{Parts, Relay, StartError};
pub use config::{Config, ConfigError};
pub use store::{Job, JobState, Store};
