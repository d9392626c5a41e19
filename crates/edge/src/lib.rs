//! b24-edge: a TLS edge proxy that forwards a request only when its client
//! address is allowed for the route — in practice, only when it comes from
//! one of the servers Bitrix24 publishes in its nodes list.
//!
//! The request path, module by module: [`server`] loads the configuration
//! into shared state and starts one worker thread per CPU, each accepting on
//! its own socket; a worker reads a PROXY header from trusted load balancers
//! ([`client_ip`]), terminates TLS ([`tls`]), and for each request decides
//! the client address ([`client_ip`]), the route and whether the client may
//! use it ([`routes`]), then forwards ([`proxy`]) or answers 403. Everything
//! is counted in [`metrics`] and configured by one [`config::Config`].

mod admin;
pub mod client_ip;
pub mod config;
mod denylog;
pub mod metrics;
pub mod proxy;
pub mod routes;
pub mod server;
pub mod tls;
mod worker;

pub use config::{Config, ConfigError};
pub use server::{EdgeHandle, StartError, start};

/// The version and the git revision it was built from.
pub const VERSION: &str = env!("B24_VERSION");
