//! `b24-emulator`: runs one emulated Bitrix24 portal until SIGINT or SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Parser;

const AFTER_LONG_HELP: &str = "\
Endpoints (on --listen):
  /rest/USER_ID/SECRET/METHOD[.json]  REST over an incoming webhook (JSON or form)
  /rest/METHOD?auth=TOKEN             REST in application context (with --app)
  /oauth/token/                       the application's authorization server
  /_emulator/...                      admin API: records, counts, faults, limits,
                                      POST /_emulator/app/install (with --app)

Signals:
  SIGTERM, SIGINT  stop and exit 0

Exit codes:
  0  stopped by a signal
  1  could not start (the address is in use, an unreadable seed file)
  2  usage error (a malformed --webhook, --app or --rate-limit)

Secrets are never logged. Logs go to stderr (RUST_LOG=debug for more).

Examples:
  b24-emulator --domain source.test --webhook 1:SECRET
  b24-emulator --listen 127.0.0.1:7002 --domain hq.test --webhook 1:OTHER:crm,user \\
               --rate-limit 250/5 --seed crates/emulator/seeds/example.json
  b24-emulator --domain app.test --app local.1:S3CRET:crm,bizproc --token-lifetime 60";

/// Runs an emulated Bitrix24 portal (REST over incoming webhooks, cloud
/// limits, outbound events) for tests, benchmarks and trying the relay.
#[derive(Debug, Parser)]
#[command(
    name = "b24-emulator",
    version = env!("B24_VERSION"),
    about = "Runs an emulated Bitrix24 portal for tests, benchmarks and trying the relay",
    long_about = "Runs one emulated Bitrix24 portal: REST over incoming webhooks and, for a \
                  local application, OAuth; the cloud's limits and error shapes; outbound \
                  events as the queue servers send them.",
    after_long_help = AFTER_LONG_HELP
)]
struct Args {
    /// Address to listen on (an IP address and port).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:7001",
          value_parser = b24_cli_support::config::parse_socket_addr)]
    listen: SocketAddr,
    /// The portal's domain as events report it (auth[domain]).
    #[arg(long, value_name = "DOMAIN", default_value = "portal.test")]
    domain: String,
    /// The portal's `member_id` as events and installs report it (random
    /// when not given).
    #[arg(long)]
    member_id: Option<String>,
    /// Incoming webhook as USER_ID:SECRET[:scope,scope...]; repeatable.
    /// Without scopes it gets crm, user, bizproc and im.
    #[arg(
        long = "webhook",
        value_name = "USER_ID:SECRET[:SCOPES]",
        required_unless_present = "app"
    )]
    webhooks: Vec<String>,
    /// A local application as CLIENT_ID:CLIENT_SECRET[:scope,scope...]
    /// (default scopes crm, user, bizproc, im); install it through
    /// POST /_emulator/app/install. Its authorization server is /oauth/token/.
    #[arg(long, value_name = "CLIENT_ID:CLIENT_SECRET[:SCOPES]")]
    app: Option<String>,
    /// Lifetime of the application's access tokens, in seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 3600)]
    token_lifetime: u64,
    /// Leaky bucket as BURST/DRAIN_PER_SECOND (cloud: 50/2, Enterprise: 250/5).
    #[arg(long, value_name = "BURST/DRAIN", default_value = "50/2")]
    rate_limit: String,
    /// Seed data (pipelines, user fields, users, records, handlers) as JSON.
    #[arg(long, value_name = "PATH")]
    seed: Option<PathBuf>,
    /// Serve HTTPS with a self-signed certificate, printed (PEM) at start.
    #[arg(long)]
    tls_self_signed: bool,
    #[command(flatten)]
    log: b24_cli_support::LogOptions,
}

struct WebhookArg {
    user_id: i64,
    secret: String,
    scopes: Vec<String>,
}

fn parse_webhook(text: &str) -> anyhow::Result<WebhookArg> {
    let mut parts = text.splitn(3, ':');
    let user_id = parts
        .next()
        .and_then(|u| u.parse().ok())
        .context("--webhook must look like USER_ID:SECRET (user id is a number)")?;
    let secret = parts
        .next()
        .filter(|s| !s.is_empty())
        .context("--webhook must look like USER_ID:SECRET (secret missing)")?;
    if !secret.chars().all(|c| c.is_ascii_alphanumeric()) {
        bail!("--webhook secret must be letters and digits only");
    }
    let scopes = scope_list(parts.next());
    Ok(WebhookArg {
        user_id,
        secret: secret.to_string(),
        scopes,
    })
}

struct AppArg {
    client_id: String,
    client_secret: String,
    scopes: Vec<String>,
}

/// `CLIENT_ID:CLIENT_SECRET[:scope,scope...]`.
fn parse_app(text: &str) -> anyhow::Result<AppArg> {
    let mut parts = text.splitn(3, ':');
    let client_id = parts
        .next()
        .filter(|s| !s.is_empty())
        .context("--app must look like CLIENT_ID:CLIENT_SECRET (client id missing)")?;
    let secret = parts
        .next()
        .filter(|s| !s.is_empty())
        .context("--app must look like CLIENT_ID:CLIENT_SECRET (secret missing)")?;
    Ok(AppArg {
        client_id: client_id.to_string(),
        client_secret: secret.to_string(),
        scopes: scope_list(parts.next()),
    })
}

fn scope_list(text: Option<&str>) -> Vec<String> {
    match text {
        Some(list) => list
            .split(',')
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect(),
        None => ["crm", "user", "bizproc", "im"]
            .iter()
            .map(|s| s.to_string())
            .collect(),
    }
}

fn parse_rate(text: &str) -> anyhow::Result<(u32, f64)> {
    let (burst, drain) = text
        .split_once('/')
        .context("--rate-limit must look like BURST/DRAIN, e.g. 50/2")?;
    let burst: u32 = burst
        .trim()
        .parse()
        .context("--rate-limit burst must be a whole number")?;
    let drain: f64 = drain
        .trim()
        .parse()
        .context("--rate-limit drain must be a number")?;
    if burst == 0 || !drain.is_finite() || drain < 0.0 {
        bail!("--rate-limit needs a burst above 0 and a non-negative drain");
    }
    Ok((burst, drain))
}

async fn wait_for_signal() -> anyhow::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot listen for SIGTERM")?;
    tokio::select! {
        result = tokio::signal::ctrl_c() => result.context("cannot listen for SIGINT")?,
        _ = term.recv() => {}
    }
    Ok(())
}

fn main() -> std::process::ExitCode {
    b24_cli_support::install_crypto_provider();
    let args = Args::parse();
    b24_cli_support::logging::init(args.log.log_format, "info");
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            let error = anyhow::Error::new(e).context("cannot start the async runtime");
            return b24_cli_support::exit::report("b24-emulator", &error);
        }
    };
    b24_cli_support::exit::finish("b24-emulator", runtime.block_on(run(args)))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let (burst, drain) = parse_rate(&args.rate_limit).map_err(usage)?;
    let mut builder = b24_emulator::Portal::builder()
        .domain(&args.domain)
        .listen(args.listen)
        .rate_limit(burst, drain);
    if let Some(member_id) = &args.member_id {
        builder = builder.member_id(member_id);
    }
    for text in &args.webhooks {
        let hook = parse_webhook(text).map_err(usage)?;
        let scopes: Vec<&str> = hook.scopes.iter().map(String::as_str).collect();
        builder = builder.webhook(hook.user_id, &hook.secret, &scopes);
    }
    if let Some(text) = &args.app {
        let app = parse_app(text).map_err(usage)?;
        let scopes: Vec<&str> = app.scopes.iter().map(String::as_str).collect();
        builder = builder
            .application(&app.client_id, &app.client_secret, &scopes)
            .token_lifetime(std::time::Duration::from_secs(args.token_lifetime));
    }
    if let Some(seed) = &args.seed {
        builder = builder.seed_file(seed);
    }
    if args.tls_self_signed {
        builder = builder.tls_self_signed();
    }
    let portal = builder
        .start()
        .await
        .context("cannot start the emulated portal")?;
    if let Some(pem) = portal.certificate_pem() {
        println!("{pem}");
    }
    println!(
        "emulated portal {} at {} (admin API under {}/_emulator/)",
        portal.domain(),
        portal.url(),
        portal.url()
    );
    wait_for_signal().await?;
    portal.shutdown().await;
    Ok(())
}

/// A malformed argument value: exit 2, like clap's own errors.
fn usage(error: anyhow::Error) -> anyhow::Error {
    b24_cli_support::exit::UsageError(error.to_string()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn webhook_and_rate_arguments_parse_with_clear_errors() {
        let hook = parse_webhook("1:SECRET").unwrap();
        assert_eq!(
            (hook.user_id, hook.secret.as_str(), hook.scopes.len()),
            (1, "SECRET", 4)
        );
        assert_eq!(parse_webhook("7:abc:crm").unwrap().scopes, vec!["crm"]);
        assert!(parse_webhook("x:abc").is_err());
        assert!(parse_webhook("1:").is_err());
        assert_eq!(parse_rate("250/5").unwrap(), (250, 5.0));
        assert!(parse_rate("0/2").is_err());
        assert!(parse_rate("50").is_err());
        let app = parse_app("local.1:s3c:crm,bizproc").unwrap();
        assert_eq!((app.client_id.as_str(), app.scopes.len()), ("local.1", 2));
        assert!(parse_app("local.1").is_err());
    }
}
