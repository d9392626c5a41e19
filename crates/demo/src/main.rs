//! `b24-demo [--serve] [--port-base N] [--dir DIR]`: runs the whole data
//! path on loopback and tells what happens; exits 0 when every step went as
//! promised.

use std::path::PathBuf;

use anyhow::Context;
use b24_demo::{Demo, Options, VERSION};
use clap::Parser;

const AFTER_LONG_HELP: &str = "\
What runs (all on 127.0.0.1, in this one process):
  two emulated portals (source partner.test, target hq.test), b24-relay on a
  SQLite file, b24-edge with a generated certificate and a nodes list that
  holds only 127.0.0.1, and a stand-in for Bitrix24's queue servers. Three
  deals move into the trigger stage and arrive on the target; a request from
  127.0.0.2 is refused with 403; nodesync's nftables rules and the metrics
  are shown.

Files (in a temporary directory removed at the end, or in --dir, kept):
  relay.toml, edge.toml  the configurations the relay and the edge run with
  *.webhook, *.token     the emulated portals' secrets (never printed)
  edge-cert.pem, edge-key.pem, app.json, relay.db

Ports with --port-base N (otherwise free ports; all printed at the start):
  N source portal, N+1 target portal, N+2 relay, N+3 relay metrics,
  N+4 edge (HTTPS), N+5 edge metrics, N+6 queue-server stand-in

Exit codes:
  0  every step went as promised (or --serve was stopped with Ctrl-C)
  1  a step failed or a piece could not start (the message says which)
  2  usage error

Examples:
  b24-demo
  b24-demo --serve --port-base 27000 --dir /tmp/b24-demo
  RUST_LOG=info b24-demo     # the pieces' own logs on stderr";

/// Runs two emulated Bitrix24 portals, b24-relay and b24-edge on 127.0.0.1
/// and moves deals between them end to end.
#[derive(Debug, Parser)]
#[command(
    name = "b24-demo",
    version = VERSION,
    about,
    after_long_help = AFTER_LONG_HELP
)]
struct Cli {
    /// Keep everything running after the story, print curl commands to try
    /// and log each request relayed; stop with Ctrl-C (SIGINT) or SIGTERM.
    #[arg(long)]
    serve: bool,
    /// Listen on fixed ports from N up (7 of them, see below) instead of
    /// free ones.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=65529))]
    port_base: Option<u16>,
    /// Write the demo's files (configurations, secrets, certificate, queue)
    /// here and keep them, instead of a temporary directory.
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
}

fn main() -> std::process::ExitCode {
    b24_cli_support::install_crypto_provider();
    let cli = Cli::parse();
    // Warnings only: the story itself goes to stdout. RUST_LOG=info shows more.
    b24_cli_support::logging::init(b24_cli_support::LogFormat::Text, "warn,rustls=error");
    let result = tokio::runtime::Runtime::new()
        .context("cannot start the async runtime")
        .and_then(|runtime| runtime.block_on(run(cli)));
    b24_cli_support::exit::finish("b24-demo", result)
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let options = Options {
        dir: cli.dir,
        port_base: cli.port_base,
    };
    let demo = Demo::start(&options)
        .await
        .context("the demo could not start")?;
    // Listening for the signals before "Press Ctrl-C" is printed: one that
    // came in between would otherwise end the process the default way.
    let signals = cli.serve.then(Signals::listen).transpose()?;
    let mut out = std::io::stdout();
    let told = demo.tell(&mut out).await;
    if let (Ok(_), Some(signals)) = (&told, signals) {
        demo.tell_how_to_try(&mut out)?;
        signals.wait().await;
    }
    demo.shutdown().await;
    told.context("the demo stopped before the end")?;
    Ok(())
}

/// SIGINT (Ctrl-C) and SIGTERM, both ending `--serve` cleanly.
struct Signals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
}

impl Signals {
    fn listen() -> anyhow::Result<Signals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            interrupt: signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?,
            terminate: signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?,
        })
    }

    async fn wait(mut self) {
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
        }
    }
}
