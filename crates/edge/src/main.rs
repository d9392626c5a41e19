//! `b24-edge --config edge.toml`: reads the configuration, starts the edge,
//! reloads the certificate on SIGHUP and drains on SIGTERM/SIGINT (a second
//! one stops at once).

use std::path::PathBuf;

use anyhow::Context;
use b24_edge::{Config, VERSION};
use clap::{Parser, ValueEnum};
use tokio::signal::unix::{SignalKind, signal};
use tracing::info;

// Proxying allocates and frees many small buffers per request; mimalloc
// does that measurably cheaper than glibc (docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// TLS edge proxy that admits only Bitrix24's event-delivery servers.
#[derive(Debug, Parser)]
#[command(name = "b24-edge", version = VERSION, about)]
struct Cli {
    /// The configuration file (see deploy/config/edge.example.toml).
    #[arg(long, short, env = "B24_EDGE_CONFIG")]
    config: PathBuf,
    /// Validate the configuration and the certificate, then exit.
    #[arg(long)]
    check_config: bool,
    /// Log line format. The level comes from RUST_LOG (default "info,rustls=error").
    #[arg(long, value_enum, default_value = "text", env = "B24_EDGE_LOG_FORMAT")]
    log_format: LogFormat,
}

fn main() -> std::process::ExitCode {
    b24_nodes::install_crypto_provider();
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // One line on stderr, whatever the log level.
            eprintln!("b24-edge: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        // rustls warns about each client that sends an IP address as SNI
        // (health checkers do); that is noise for an edge.
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,rustls=error"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let config = Config::load(&cli.config)
        .with_context(|| format!("configuration {}", cli.config.display()))?;
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
