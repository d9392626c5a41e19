//! `b24-relay store migrate|status|copy`.

use std::path::PathBuf;

use anyhow::{Context, bail};
use b24_client::Secret;
use clap::Subcommand;

use crate::config::{Config, StoreConfig, StoreLocation};
use crate::store::{Store, StoreOptions};

pub const STORE_HELP: &str = "\
The store keeps the queue, the links between source and target records and
the installed applications: SQLite (one file, one `serve`) or PostgreSQL
(any number of `serve` replicas on one database).

  migrate  apply the schema migrations (serve does it at start too)
  status   what the store holds: jobs by state, links, serving replicas
  copy     copy another store into this one (SQLite -> PostgreSQL), with a
           count check; safe while the source's serve keeps taking requests,
           and safe to run again (it then copies what arrived meanwhile)

Moving from SQLite to PostgreSQL without losing a request:
  1. b24-relay store copy --from sqlite:///var/lib/b24-relay/relay.db --config pg.toml
  2. start the PostgreSQL replicas (pg.toml), point b24-edge at them
  3. stop the SQLite serve, then run the same copy again

Examples:
  b24-relay store migrate --config relay.toml
  b24-relay store status --config relay.toml
  b24-relay store copy --from sqlite:///var/lib/b24-relay/relay.db --config relay.toml";

#[derive(Debug, Subcommand)]
pub enum StoreAction {
    /// Apply the schema migrations of the configured store.
    #[command(
        after_long_help = "Creates an empty store when there is none (after moving a damaged one \
                           aside). serve applies migrations at start too; run this to do it \
                           ahead of an upgrade, or from one host for many replicas.\n\n\
                           Example:\n  b24-relay store migrate --config relay.toml"
    )]
    Migrate,
    /// Jobs by state, links, installed applications and serving replicas.
    #[command(after_long_help = "Example:\n  b24-relay store status --config relay.toml")]
    Status,
    /// Copy another store into the configured one (or into --to), then
    /// check that every row arrived.
    #[command(
        after_long_help = "Exit 1 if a row is missing from the destination or a link points at \
                           a different target record in the two stores.\n\n\
                           Examples:\n  \
                           b24-relay store copy --from sqlite:///var/lib/b24-relay/relay.db --config pg.toml\n  \
                           b24-relay store copy --from sqlite:///backup/relay.db --to postgres://b24relay@db:5432/b24relay \\\n      \
                           --to-password-file /etc/b24-relay/postgres.password --config relay.toml"
    )]
    Copy {
        /// The store to copy from: sqlite:///PATH or postgres://USER@HOST:PORT/DB.
        #[arg(long, value_name = "URL")]
        from: String,
        /// The store to copy into (default: the configured store).
        #[arg(long, value_name = "URL")]
        to: Option<String>,
        /// A file holding the password of the --from PostgreSQL user.
        #[arg(long, value_name = "PATH")]
        from_password_file: Option<PathBuf>,
        /// A file holding the password of the --to PostgreSQL user.
        #[arg(long, value_name = "PATH")]
        to_password_file: Option<PathBuf>,
        /// Schema of a --from or --to PostgreSQL store (default b24_relay).
        #[arg(long, value_name = "NAME")]
        schema: Option<String>,
    },
}

fn password(path: Option<&PathBuf>) -> anyhow::Result<Option<Secret>> {
    path.map(|path| {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the password file {}", path.display()))?;
        Ok(Secret::new(text.trim()))
    })
    .transpose()
}

/// `sqlite:PATH` is accepted for `sqlite://PATH`.
fn store_at(
    url: &str,
    password: Option<Secret>,
    schema: Option<&str>,
) -> anyhow::Result<StoreConfig> {
    let url = match url.strip_prefix("sqlite:") {
        Some(rest) if !rest.starts_with("//") => format!("sqlite://{rest}"),
        _ => url.to_owned(),
    };
    Ok(StoreConfig::from_url(&url, password, schema)?)
}

/// What names a store in the destination's copy records.
fn source_name(config: &StoreConfig) -> String {
    match &config.location {
        StoreLocation::Sqlite(path) => {
            let path = std::fs::canonicalize(path).unwrap_or_else(|_| path.clone());
            format!("sqlite://{}", path.display())
        }
        StoreLocation::Postgres(pg) => format!("{} (schema {})", pg.shown, pg.schema),
    }
}

/// Opens an existing store: reading one that is not there must not create
/// an empty one (a mistyped `--from` would copy nothing and pass).
async fn open(config: &StoreConfig, what: &str) -> anyhow::Result<Store> {
    if let StoreLocation::Sqlite(path) = &config.location {
        if !path.exists() {
            bail!("the {what} store {} does not exist", path.display());
        }
    }
    Store::open(config, StoreOptions::default())
        .await
        .with_context(|| format!("opening the {what} store {}", config.location))
}

pub async fn run(config: Config, action: StoreAction) -> anyhow::Result<()> {
    match action {
        StoreAction::Migrate => {
            let applied = Store::migrate(&config.store)
                .await
                .with_context(|| format!("migrating {}", config.store.location))?;
            match applied {
                0 => println!("{}: up to date", config.store.location),
                n => println!("{}: {n} migration(s) applied", config.store.location),
            }
            Ok(())
        }
        StoreAction::Status => {
            let store = open(&config.store, "configured").await?;
            let stats = store.stats().await?;
            let snapshot = store.export().await?;
            println!("store {}", config.store.location);
            let states: Vec<String> = stats
                .by_state
                .iter()
                .map(|(state, n)| format!("{} {n}", state.as_str()))
                .collect();
            println!("  jobs: {}", states.join(", "));
            if let Some(age) = stats.oldest_pending_age {
                println!("  oldest waiting job: {} s", age.as_secs());
            }
            println!(
                "  links: {}; installed applications: {}; rule runs waiting: {}",
                snapshot.links.len(),
                snapshot.installs.len(),
                snapshot
                    .rule_calls
                    .iter()
                    .filter(|c| c.answered_at_ms.is_none())
                    .count()
            );
            if let Some(replicas) = stats.replicas {
                println!("  serving replicas: {replicas}");
            }
            let (live, backfill) = store.pending_by_trigger().await?;
            println!("  waiting jobs: {live} live, {backfill} backfill");
            for route in &config.routes {
                if let Some(row) = store.backfill(&route.name).await? {
                    let state = match (&row.holder, row.finished_at_ms) {
                        (Some(holder), _) => format!("running ({holder})"),
                        (None, Some(_)) => "finished".to_owned(),
                        (None, None) => "stopped (run it again to resume)".to_owned(),
                    };
                    println!(
                        "  backfill {}: {state}; {} queued, {} already there, after deal {} ({})",
                        route.name,
                        row.cursor.enqueued,
                        row.cursor.already,
                        row.cursor.last_id.unwrap_or(0),
                        row.filter
                    );
                }
            }
            store.close().await;
            Ok(())
        }
        StoreAction::Copy {
            from,
            to,
            from_password_file,
            to_password_file,
            schema,
        } => {
            let from = store_at(
                &from,
                password(from_password_file.as_ref())?,
                schema.as_deref(),
            )?;
            let to = match to {
                Some(url) => store_at(
                    &url,
                    password(to_password_file.as_ref())?,
                    schema.as_deref(),
                )?,
                None => config.store.clone(),
            };
            if matches!(to.location, StoreLocation::Sqlite(_)) {
                bail!(
                    "store copy copies into PostgreSQL; {} is SQLite (give --to postgres://… or configure [store] url = \"postgres://…\")",
                    to.location
                );
            }
            let source = open(&from, "source").await?;
            let destination = Store::open(&to, StoreOptions::default())
                .await
                .with_context(|| format!("opening the destination store {}", to.location))?;
            let (report, check) =
                crate::store::copy_store(&source, &source_name(&from), &destination).await?;
            println!("copied {} into {}", from.location, to.location);
            println!(
                "  jobs: {} new, {} updated, {} merged into a waiting job for the same deal",
                report.jobs_inserted, report.jobs_updated, report.jobs_merged
            );
            println!(
                "  attempts {}, links {}, copied files {}, installed applications {}, rule runs {} (new or changed rows)",
                report.attempts,
                report.links,
                report.copied_files,
                report.installs,
                report.rule_calls
            );
            println!("count check (rows of the source snapshot found in the destination):");
            let mut complete = true;
            for line in &check {
                complete &= line.complete();
                println!(
                    "  {:<24} {:>8} of {:<8} {}",
                    line.table,
                    line.found,
                    line.source,
                    if line.complete() { "ok" } else { "MISSING" }
                );
            }
            for conflict in &report.link_conflicts {
                println!("  LINK CONFLICT {conflict}");
            }
            source.close().await;
            destination.close().await;
            if !complete {
                bail!("the count check failed: rows of the source are missing in the destination");
            }
            if !report.link_conflicts.is_empty() {
                bail!(
                    "{} link(s) point at different target records in the two stores; the destination's were kept: look at those records on the target portal",
                    report.link_conflicts.len()
                );
            }
            println!(
                "check passed. Requests the source took after its snapshot are not in this copy: run the same command again once intake goes to the new store."
            );
            Ok(())
        }
    }
}
