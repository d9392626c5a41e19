//! Logs for people and for machines, the same way in every service.
//!
//! - `--log-format text|json` (or `B24_LOG_FORMAT`): text for a terminal
//!   or journald, JSON (one object a line) for log collectors.
//! - Colour only when stderr is a terminal and `NO_COLOR` is unset: a file
//!   or journald never gets ANSI codes.
//! - The level from `RUST_LOG` (`info`, `b24_relay=debug`, …), each binary
//!   with its own default.
//! - JSON lines carry `timestamp`, `level`, `target`, `message` and the
//!   event's fields at the top level. Field names mean the same in every
//!   service: `portal` (the configured portal name), `route`, `deal`,
//!   `job`, `peer` (the TCP peer), `client` (the client address after
//!   proxies), `listen` / `metrics_listen` (bound addresses), `error` (the
//!   error with its causes, [`crate::Chain`]).

use std::io::IsTerminal;

use clap::ValueEnum;
use tracing_subscriber::EnvFilter;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines (no colour unless stderr is a terminal).
    #[default]
    Text,
    /// One JSON object per line, fields at the top level.
    Json,
}

/// The `--log-format` option, for `#[command(flatten)]` in a service's
/// arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct LogOptions {
    /// Log line format: text for people and journald, json (one object a
    /// line) for log collectors. The level comes from RUST_LOG.
    #[arg(
        long,
        value_enum,
        value_name = "FORMAT",
        default_value_t = LogFormat::Text,
        env = "B24_LOG_FORMAT",
        global = true
    )]
    pub log_format: LogFormat,
}

/// Whether text logs get colour.
pub fn use_colour() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// Installs the global subscriber: logs to stderr in `format`, level from
/// `RUST_LOG` or `default_filter` (`"info,rustls=error"`). Call once, in
/// `main`.
pub fn init(format: LogFormat, default_filter: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.with_ansi(use_colour()).init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .init(),
    }
}
