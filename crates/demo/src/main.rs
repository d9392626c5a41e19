//! `b24-demo [--serve]`: runs the whole data path on loopback and tells
//! what happens; exits 0 when every step went as promised.

use anyhow::Context;
use b24_demo::{Demo, VERSION};
use clap::Parser;

/// Runs two emulated Bitrix24 portals, b24-relay and b24-edge on 127.0.0.1
/// and moves deals between them end to end.
#[derive(Debug, Parser)]
#[command(name = "b24-demo", version = VERSION, about)]
struct Cli {
    /// Keep everything running after the story, with curl commands to try;
    /// stop with Ctrl-C.
    #[arg(long)]
    serve: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // Warnings only: the story itself goes to stdout. RUST_LOG=info shows more.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,rustls=error"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let demo = Demo::start().await.context("the demo could not start")?;
    let mut out = std::io::stdout();
    let told = demo.tell(&mut out).await;
    if told.is_ok() && cli.serve {
        demo.tell_how_to_try(&mut out)?;
        tokio::signal::ctrl_c()
            .await
            .context("cannot wait for Ctrl-C")?;
    }
    demo.shutdown().await;
    told.context("the demo stopped before the end")?;
    Ok(())
}
