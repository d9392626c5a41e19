//! Intake under concurrency, side by side (run through `bench/relay`):
//! `--connections` keep-alive connections POST events as fast as they are
//! answered; every 200 means the job is committed (SQLite: WAL,
//! synchronous=FULL; PostgreSQL: a committed transaction). Modes, in
//! alternating rounds on the same machine:
//!
//! - SQLite, one commit (and one fsync) per request (`group_commit = false`);
//! - SQLite with group commit (the default);
//! - PostgreSQL with 1, 2 and 3 `serve` replicas in this process on one
//!   database, the connections spread over them (with `--postgres URL`, or
//!   `B24_TEST_POSTGRES`; scripts/postgres starts a throwaway cluster).
//!
//! The events are for a portal without routes, so workers end their jobs
//! without calling a portal; claiming and finishing them competes with
//! intake for the database, as in production. After each run the store is
//! counted: as many jobs as 200s, or the run fails.

use std::time::{Duration, Instant};

use b24_relay::{Config, Relay};

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

fn number(name: &str, default: usize) -> usize {
    arg(name).and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    SqliteEachCommit,
    SqliteGroupCommit,
    Postgres(usize),
}

impl Mode {
    fn name(self) -> String {
        match self {
            Mode::SqliteEachCommit => "SQLite, one commit per request".into(),
            Mode::SqliteGroupCommit => "SQLite, group commit".into(),
            Mode::Postgres(n) => format!("PostgreSQL, {n} replica(s)"),
        }
    }
}

struct Outcome {
    latencies: Vec<Duration>,
    took: Duration,
    refused: usize,
}

async fn run(
    mode: Mode,
    round: usize,
    connections: usize,
    requests: usize,
    postgres: Option<&str>,
) -> Outcome {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("hook"), "http://127.0.0.1:9/rest/1/unused/").unwrap();
    std::fs::write(dir.path().join("token"), "bench-token").unwrap();
    let store = match mode {
        Mode::SqliteEachCommit => format!(
            "store = {{ url = \"sqlite://{}\", group_commit = false }}",
            dir.path().join("relay.db").display()
        ),
        Mode::SqliteGroupCommit => format!(
            "store = \"sqlite://{}\"",
            dir.path().join("relay.db").display()
        ),
        Mode::Postgres(n) => format!(
            "store = {{ url = \"{}\", schema = \"bench_{}_{n}_{round}\" }}",
            postgres.expect("a PostgreSQL URL"),
            std::process::id()
        ),
    };
    let config = format!(
        r#"
listen = "127.0.0.1:0"
{store}
workers = 4
[portal.quiet]
webhook = {{ file = "{dir}/hook" }}
application_token = {{ file = "{dir}/token" }}
[portal.esb]
webhook = {{ file = "{dir}/hook" }}
"#,
        dir = dir.path().display()
    );
    let replicas = match mode {
        Mode::Postgres(n) => n,
        _ => 1,
    };
    let mut relays = Vec::new();
    for _ in 0..replicas {
        relays.push(Relay::start(Config::parse(&config).unwrap()).await.unwrap());
    }
    let urls: Vec<String> = relays
        .iter()
        .map(|r| format!("http://{}/hook/event/quiet", r.addr))
        .collect();
    let per_connection = requests / connections;
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for connection in 0..connections {
        let url = urls[connection % urls.len()].clone();
        tasks.spawn(async move {
            let http = reqwest::Client::builder()
                .pool_max_idle_per_host(1)
                .build()
                .unwrap();
            let mut latencies = Vec::with_capacity(per_connection);
            let mut refused = 0;
            for n in 0..per_connection {
                let deal = (connection * per_connection + n + 1) as i64;
                let body = format!(
                    "event=ONCRMDEALUPDATE&data[FIELDS][ID]={deal}&auth[application_token]=bench-token"
                );
                let sent = Instant::now();
                let status = http
                    .post(&url)
                    .header("content-type", "application/x-www-form-urlencoded")
                    .body(body)
                    .send()
                    .await
                    .map(|r| r.status().as_u16())
                    .unwrap_or(0);
                latencies.push(sent.elapsed());
                if status != 200 {
                    refused += 1;
                }
            }
            (latencies, refused)
        });
    }
    let mut latencies = Vec::with_capacity(requests);
    let mut refused = 0;
    while let Some(done) = tasks.join_next().await {
        let (mut more, r) = done.unwrap();
        latencies.append(&mut more);
        refused += r;
    }
    let took = started.elapsed();
    let jobs = relays[0].store.jobs(None, u32::MAX).await.unwrap().len();
    assert_eq!(
        jobs + refused,
        per_connection * connections,
        "{}: every 200 must be a stored job",
        mode.name()
    );
    for relay in relays {
        relay.shutdown().await;
    }
    latencies.sort();
    Outcome {
        latencies,
        took,
        refused,
    }
}

#[tokio::main]
async fn main() {
    b24_cli_support::install_crypto_provider();
    let connections = number("--connections", 32);
    let requests = number("--requests", 3200);
    let rounds = number("--rounds", 2);
    let postgres = arg("--postgres").or_else(|| std::env::var("B24_TEST_POSTGRES").ok());
    let mut modes = vec![Mode::SqliteEachCommit, Mode::SqliteGroupCommit];
    if postgres.is_some() {
        modes.extend([Mode::Postgres(1), Mode::Postgres(2), Mode::Postgres(3)]);
    } else {
        eprintln!("(no --postgres URL and no B24_TEST_POSTGRES: PostgreSQL modes skipped)");
    }
    println!(
        "intake: {connections} keep-alive connections, {requests} events per run, {rounds} round(s), each answer after the commit"
    );
    println!(
        "{:<34} {:>9} {:>9} {:>9} {:>9} {:>11}",
        "mode", "p50 ms", "p99 ms", "max ms", "req/s", "not 200"
    );
    for round in 0..rounds {
        for &mode in &modes {
            let outcome = run(mode, round, connections, requests, postgres.as_deref()).await;
            let ms = |d: Duration| d.as_secs_f64() * 1000.0;
            println!(
                "{:<34} {:>9.2} {:>9.2} {:>9.2} {:>9.0} {:>11}",
                mode.name(),
                ms(percentile(&outcome.latencies, 0.50)),
                ms(percentile(&outcome.latencies, 0.99)),
                ms(*outcome.latencies.last().unwrap()),
                outcome.latencies.len() as f64 / outcome.took.as_secs_f64(),
                outcome.refused
            );
        }
    }
}
