//! What every b24 binary does the same way where it meets its user:
//! configuration errors located as `file:line:column` with the line shown
//! and secrets hidden ([`config`]), an error and its causes printed once
//! ([`Chain`]), exit codes ([`exit`]), logs for terminals and collectors
//! ([`logging`]), the TLS crypto provider, and the conventions of `--help`.
//!
//! A binary's `main`, in this order:
//! ```no_run
//! # #[derive(clap::Parser)] struct Cli { #[command(flatten)] log: b24_cli_support::LogOptions }
//! # fn run(_: Cli) -> anyhow::Result<()> { Ok(()) }
//! use clap::Parser;
//!
//! fn main() -> std::process::ExitCode {
//!     b24_cli_support::install_crypto_provider();
//!     let cli = Cli::parse();
//!     b24_cli_support::logging::init(cli.log.log_format, "info,rustls=error");
//!     b24_cli_support::exit::finish("b24-example", run(cli))
//! }
//! ```
//!
//! Libraries never install the provider themselves: a library that builds
//! a TLS client or server expects the process to have one (binaries do it
//! first thing, test helpers in `b24-testkit` do it for tests).
//!
//! # Configuration, for a service's `Config::load`
//! ```
//! # use b24_cli_support::{config, ConfigError};
//! # #[derive(serde::Deserialize)] struct Raw { #[serde(deserialize_with = "config::socket_addr")] listen: std::net::SocketAddr }
//! fn from_toml(text: &str) -> Result<std::net::SocketAddr, ConfigError> {
//!     let raw: Raw = config::parse(text)?; // syntax and type errors, located
//!     if raw.listen.port() == 0 {
//!         // semantic checks name the key; locate() finds its line
//!         return Err(ConfigError::invalid("listen", "port 0 picks a random port; write one").locate(text));
//!     }
//!     Ok(raw.listen)
//! }
//! # assert!(from_toml("listen = \"127.0.0.1:0\"").unwrap_err().to_string().starts_with("line 1, column 10: listen:"));
//! ```
//! and `load(path)` adds the file: `config::read(path)` then
//! `from_toml(&text).map_err(|e| e.in_file(path))`. Messages say what to
//! write instead, not only what is wrong.
//!
//! # Errors
//! A message embeds its cause *or* returns it from `source()`, never both;
//! [`Chain`] (and [`exit::report`]) skip a cause already shown, so errors
//! of libraries that embed theirs are not repeated either.
//!
//! # `--help`
//! Every binary and subcommand follows nodesync's model:
//! - `about` one line (`-h`); `long_about` or `after_long_help` with the
//!   details, examples, exit codes and, for services, signals and
//!   endpoints (`--help`). `-h` stays short.
//! - Every argument has a doc comment that says what it does and its unit;
//!   closed sets of values are a `ValueEnum`, so `--help` lists them and
//!   clap refuses others with its usage message.
//! - `--config` is required through clap (never a hand-written check) and
//!   also read from an environment variable: `B24_EDGE_CONFIG`,
//!   `B24_RELAY_CONFIG`.
//! - The help points to the example configuration as installed
//!   ([`EXAMPLES_DIR`]), not to the source tree.
//! - Services take `--log-format` ([`LogOptions`]); exit codes are those of
//!   [`exit`], plus any a binary documents.

pub mod chain;
pub mod config;
pub mod exit;
pub mod logging;

pub use chain::{Chain, anyhow_chain};
pub use config::{ConfigError, Location};
pub use logging::{LogFormat, LogOptions};

/// Where the install steps put the example configurations
/// (`edge.example.toml`, `relay.example.toml`); the help texts name it.
pub const EXAMPLES_DIR: &str = "/usr/share/doc/b24-connect/examples";

/// Installs ring as the process's rustls crypto provider (the workspace's
/// one provider). Idempotent: a second call, or a provider installed by a
/// test helper first, is fine. Binaries call it first thing in `main`.
pub fn install_crypto_provider() {
    // Err only means one is installed already.
    let _ = rustls::crypto::ring::default_provider().install_default();
}
