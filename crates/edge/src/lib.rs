//! b24-edge: a TLS edge proxy that forwards a request only when its client
//! address is allowed for the route — in practice, only when it comes from
//! one of the servers Bitrix24 publishes in its nodes list.
//!
//! The request path is one module per stage:
//! 1. [`accept`] takes a TCP connection and gives it a slot;
//! 2. [`client_ip`] finds the client address (the peer, a trusted PROXY
//!    header, or a trusted proxy's X-Forwarded-For);
//! 3. [`tls`] terminates TLS;
//! 4. [`admit`] picks the [`admit::Route`] and makes the [`admit::Decision`];
//! 5. [`forward`] sends an admitted request upstream, on a connection
//!    from its route's [`upstream`] pool.
//!
//! [`accept`] also reads the PROXY header and hands out connection
//! [`slots`]; [`connection`] drives one connection through TLS and serves
//! HTTP on it under its deadlines; [`request`] drives one request through
//! the [`head`] checks, 2 (X-Forwarded-For), 4 and 5, with its [`body`].
//! [`server`] builds the shared [`state`] from one [`config::Config`],
//! binds the sockets ([`listen`]) and starts the [`worker`] threads;
//! everything is counted in [`metrics`].

mod accept;
mod admin;
pub mod admit;
mod body;
pub mod client_ip;
pub mod config;
mod connection;
mod denylog;
pub mod forward;
pub mod head;
mod listen;
pub mod metrics;
mod park;
mod request;
pub mod server;
mod slots;
mod sniff;
mod state;
mod stream_deadline;
pub mod tls;
mod upstream;
mod worker;

pub use config::{Config, ConfigError};
pub use server::{EdgeHandle, StartError, start};

/// The version and the git revision it was built from.
pub const VERSION: &str = env!("B24_VERSION");
