//! `b24-relay COMMAND --config relay.toml`: the commands are in
//! [`b24_relay::cli`]; this only sets up the process and reports the outcome.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    b24_cli_support::install_crypto_provider();
    let cli = b24_relay::cli::Cli::parse_args();
    b24_cli_support::logging::init(cli.log.log_format, "info");
    b24_cli_support::exit::finish("b24-relay", b24_relay::cli::run(cli).await)
}
