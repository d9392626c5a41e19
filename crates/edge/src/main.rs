//! `b24-edge --config edge.toml`: reads the configuration, starts the edge,
//! reloads the certificate on SIGHUP and drains on SIGTERM/SIGINT (a second
//! one stops at once).

use std::path::PathBuf;

use anyhow::Context;
use b24_cli_support::LogOptions;
use b24_edge::{Config, VERSION};
use clap::Parser;
use tokio::signal::unix::{SignalKind, signal};
use tracing::info;

const AFTER_LONG_HELP: &str = "\
Configuration:
  One TOML file, validated before anything starts; every key with its
  default is in the example, /usr/share/doc/b24-connect/examples/edge.example.toml
  (deploy/config/edge.example.toml in the source). An error names the file,
  line, column and key, and says what to write instead.

Signals:
  SIGHUP           re-read server.tls_cert and server.tls_key (the files are
                   also watched); a broken new pair is refused, the old one stays
  SIGTERM, SIGINT  stop accepting, close idle connections (HTTP/2: GOAWAY) at
                   once, let in-flight requests finish (at most
                   server.shutdown_timeout), exit 0; a second one exits now

Endpoints (plain HTTP on server.metrics_listen, e.g. 127.0.0.1:9901):
  /metrics  Prometheus metrics: requests, denials by reason, connections
            refused before TLS, timeouts, 400s, latency, upstream errors, TLS,
            nodes list size and age
  /healthz  200 while the process runs
  /readyz   200 when every route can admit; 503 with the reason (no nodes list yet)

Exit codes:
  0  stopped after SIGTERM/SIGINT, or --check-config found everything valid
  1  could not start or keep serving (a port in use or already served by
     another b24-edge, an unreadable certificate)
  2  usage or configuration error: nothing was started

Environment:
  B24_EDGE_CONFIG  the configuration file when --config is not given
  B24_LOG_FORMAT   text or json when --log-format is not given
  RUST_LOG         log level and filters (default: info,rustls=error)

Examples:
  b24-edge --config /etc/b24-edge/edge.toml --check-config
  b24-edge --config /etc/b24-edge/edge.toml --log-format json
  systemctl reload b24-edge     # SIGHUP: reload the certificate";

/// TLS edge proxy that admits only Bitrix24's event-delivery servers.
#[derive(Debug, Parser)]
#[command(
    name = "b24-edge",
    version = VERSION,
    about,
    long_about = "TLS edge proxy that admits only Bitrix24's event-delivery servers (the \
                  published nodes list, kept fresh) and forwards their requests to the \
                  upstream of the matching route; everyone else is refused before TLS (or gets \
                  403).",
    after_long_help = AFTER_LONG_HELP
)]
struct Cli {
    /// The configuration file (TOML).
    #[arg(long, short, value_name = "PATH", env = "B24_EDGE_CONFIG")]
    config: PathBuf,
    /// Validate the configuration and load the certificate and key, print
    /// "valid" and exit, without binding any port.
    #[arg(long)]
    check_config: bool,
    #[command(flatten)]
    log: LogOptions,
}

fn main() -> std::process::ExitCode {
    b24_cli_support::install_crypto_provider();
    let cli = Cli::parse();
    // rustls warns about each client that sends an IP address as SNI
    // (health checkers do); that is noise for an edge.
    b24_cli_support::logging::init(cli.log.log_format, "info,rustls=error");
    b24_cli_support::exit::finish("b24-edge", run(cli))
}

fn run(cli: Cli) -> anyhow::Result<()> {
    // The error names the file, line and column itself.
    let config = Config::load(&cli.config)?;
    if cli.check_config {
        b24_edge::tls::load_cert(&config.server.tls_cert, &config.server.tls_key)
            .context("configuration server.tls_cert / server.tls_key")?;
        println!("configuration {} is valid", cli.config.display());
        return Ok(());
    }
    // Requests are served by the edge's own worker threads; this runtime
    // only carries signals and background tasks.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(serve(config))
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let mut hangup = signal(SignalKind::hangup()).context("cannot listen for SIGHUP")?;
    let mut terminate = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?;
    let edge = b24_edge::start(config)
        .await
        .context("cannot start b24-edge")?;
    loop {
        tokio::select! {
            _ = hangup.recv() => {
                info!("SIGHUP: reloading the certificate");
                // The outcome is logged and counted by the edge itself.
                let _ = edge.reload_tls();
            }
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
        }
    }
    info!("stopping: idle connections closed, finishing in-flight requests");
    tokio::select! {
        drained = edge.shutdown() => {
            if drained {
                info!("stopped");
            } else {
                info!("stopped; some connections were still open at the shutdown timeout");
            }
        }
        // A second signal: the operator does not want to wait.
        _ = terminate.recv() => info!("second signal: stopping now"),
        _ = interrupt.recv() => info!("second signal: stopping now"),
    }
    Ok(())
}
