use std::process::ExitCode;

use clap::Parser;
use nodesync::cli::{Args, exit};
use nodesync::run::{Streams, run};

fn main() -> ExitCode {
    b24_cli_support::install_crypto_provider();
    let argv: Vec<String> = std::env::args().collect();
    // clap prints --help and --version itself, and usage errors with exit 2.
    if let Err(e) = Args::try_parse_from(&argv) {
        e.exit();
    }
    let settings = match Args::parse_args(&argv) {
        Ok(settings) => settings,
        Err(message) => {
            eprintln!("nodesync: error: {message}");
            return ExitCode::from(exit::USAGE);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("nodesync: error: cannot start the async runtime: {e}");
            return ExitCode::from(exit::USAGE);
        }
    };
    let (mut out, mut err) = (std::io::stdout().lock(), std::io::stderr().lock());
    let code = runtime.block_on(run(
        &settings,
        Streams {
            out: &mut out,
            err: &mut err,
        },
    ));
    ExitCode::from(code)
}
