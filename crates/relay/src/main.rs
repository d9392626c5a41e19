//! `b24-relay COMMAND --config relay.toml`: the commands are in
//! [`b24_relay::cli`]; this only sets up the process and reports the outcome.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    b24_cli_support::install_crypto_provider();
    let cli = b24_relay::cli::Cli::parse_args();
    b24_cli_support::logging::init(cli.log.log_format, "info");
    let result = b24_relay::cli::run(cli).await;
    // A backfill stopped by a signal says how to resume and exits 128 + N.
    if let Some(stopped) = result
        .as_ref()
        .err()
        .and_then(|e| e.downcast_ref::<b24_relay::backfill::Stopped>())
    {
        eprintln!("b24-relay: {stopped}");
        return std::process::ExitCode::from(stopped.exit_code());
    }
    b24_cli_support::exit::finish("b24-relay", result)
}
