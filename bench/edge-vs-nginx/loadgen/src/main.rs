//! `edge-loadgen`: the parts of bench/edge-vs-nginx that no packaged tool
//! does — a flood of new TLS connections from many loopback source
//! addresses, a holder of thousands of idle keep-alive connections, and a
//! client that records every request's latency (keep-alive HTTP/1.1,
//! HTTP/2, or a new TLS connection per request). Each mode prints one JSON
//! object on stdout for the bench script to read.
//!
//! It only ever connects to the `--target` it is given; the bench script
//! points it at loopback.

mod client;
mod flood;
mod hold;
mod pump;
mod tls;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand, ValueEnum};

/// Load generator for the edge-vs-nginx benchmark.
#[derive(Debug, Parser)]
#[command(name = "edge-loadgen")]
struct Cli {
    /// Runtime threads (the machine is shared with the servers measured).
    #[arg(long, default_value_t = 1, global = true)]
    threads: usize,
    #[command(subcommand)]
    mode: Mode,
}

/// The protocol a client or holder speaks after TLS (negotiated by ALPN).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Proto {
    /// HTTP/1.1 with keep-alive.
    H1,
    /// HTTP/2.
    H2,
    /// HTTP/1.1, a new TCP + TLS connection (full handshake) per request.
    H1NewConn,
}

#[derive(Debug, Subcommand)]
enum Mode {
    /// New TLS connections from rotating source addresses at a fixed rate,
    /// each sending one `Connection: close` request; counts how each ended.
    Flood {
        #[arg(long)]
        target: SocketAddr,
        /// First and last source address, e.g. 127.0.0.2-127.0.0.250.
        #[arg(long, default_value = "127.0.0.2-127.0.0.250")]
        sources: String,
        /// Connection attempts started per second.
        #[arg(long, default_value_t = 1000)]
        rate: u32,
        /// Attempts in flight at most; a tick with none free is skipped
        /// (counted), so the offered rate never queues up.
        #[arg(long, default_value_t = 256)]
        concurrency: usize,
        /// Seconds.
        #[arg(long, default_value_t = 10.0)]
        duration: f64,
    },
    /// Opens `count` TLS connections, makes one request on each, keeps them
    /// idle, prints `ready N` on stderr, waits for a line (or EOF) on stdin,
    /// then reports how many are still open.
    Hold {
        #[arg(long)]
        target: SocketAddr,
        #[arg(long, default_value = "127.0.0.1")]
        source: IpAddr,
        #[arg(long, default_value_t = 5000)]
        count: usize,
        #[arg(long, value_enum, default_value = "h1")]
        proto: Proto,
        /// Connections being opened at once.
        #[arg(long, default_value_t = 100)]
        concurrency: usize,
    },
    /// Closed-loop requests for `duration` seconds, every latency recorded.
    Client {
        #[arg(long)]
        target: SocketAddr,
        #[arg(long, default_value = "127.0.0.1")]
        source: IpAddr,
        #[arg(long, value_enum, default_value = "h1")]
        proto: Proto,
        /// Connections (for h1-new-conn: requests in flight).
        #[arg(long, default_value_t = 4)]
        connections: usize,
        /// Requests in flight per HTTP/2 connection.
        #[arg(long, default_value_t = 1)]
        streams: usize,
        /// Seconds.
        #[arg(long, default_value_t = 10.0)]
        duration: f64,
    },
    /// A TLS byte pump to `upstream`, no HTTP: the floor under any proxy on
    /// tokio + rustls (bench.py --floor). Serves until killed.
    Pump {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long)]
        upstream: SocketAddr,
        #[arg(long)]
        cert: std::path::PathBuf,
        #[arg(long)]
        key: std::path::PathBuf,
        /// Worker threads, one single-threaded runtime each (the edge's
        /// default: one per CPU).
        #[arg(long)]
        workers: Option<usize>,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Mode::Pump {
        listen,
        upstream,
        cert,
        key,
        workers,
    } = cli.mode
    {
        let workers = workers.unwrap_or_else(|| {
            std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
        });
        return pump::run(pump::Options {
            listen,
            upstream,
            cert,
            key,
            workers,
        });
    }
    let runtime = if cli.threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(cli.threads)
            .enable_all()
            .build()?
    };
    let report = runtime.block_on(async {
        match cli.mode {
            Mode::Flood {
                target,
                sources,
                rate,
                concurrency,
                duration,
            } => {
                let sources = parse_sources(&sources)?;
                flood::run(flood::Options {
                    target,
                    sources,
                    rate,
                    concurrency,
                    duration: seconds(duration)?,
                })
                .await
            }
            Mode::Hold {
                target,
                source,
                count,
                proto,
                concurrency,
            } => hold::run(target, source, count, proto, concurrency).await,
            Mode::Client {
                target,
                source,
                proto,
                connections,
                streams,
                duration,
            } => {
                client::run(client::Options {
                    target,
                    source,
                    proto,
                    connections,
                    streams,
                    duration: seconds(duration)?,
                })
                .await
            }
            Mode::Pump { .. } => unreachable!("served above"),
        }
    })?;
    println!("{report}");
    Ok(())
}

fn seconds(value: f64) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(value).context("--duration must be a positive number of seconds")
}

/// `A-B` (inclusive) or a single IPv4 address.
fn parse_sources(text: &str) -> anyhow::Result<Vec<IpAddr>> {
    let (first, last) = text.split_once('-').unwrap_or((text, text));
    let first: Ipv4Addr = first.trim().parse().context("--sources: first address")?;
    let last: Ipv4Addr = last.trim().parse().context("--sources: last address")?;
    let (first, last) = (u32::from(first), u32::from(last));
    if last < first {
        bail!("--sources: the last address is before the first");
    }
    Ok((first..=last)
        .map(|n| IpAddr::V4(Ipv4Addr::from(n)))
        .collect())
}

/// The `p`-th percentile (0–100) of sorted microsecond samples, in ms.
pub fn percentile_ms(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    let index = rank.clamp(1, sorted.len()) - 1;
    f64::from(sorted[index]) / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_ranges() {
        let sources = parse_sources("127.0.0.2-127.0.0.4").unwrap();
        assert_eq!(sources.len(), 3);
        assert_eq!(sources[2], "127.0.0.4".parse::<IpAddr>().unwrap());
        assert_eq!(parse_sources("127.0.0.9").unwrap().len(), 1);
        assert!(parse_sources("127.0.0.9-127.0.0.1").is_err());
    }

    #[test]
    fn percentiles() {
        let samples: Vec<u32> = (1..=100).map(|n| n * 1000).collect();
        assert_eq!(percentile_ms(&samples, 50.0), 50.0);
        assert_eq!(percentile_ms(&samples, 99.0), 99.0);
        assert_eq!(percentile_ms(&samples, 100.0), 100.0);
        assert_eq!(percentile_ms(&[], 99.0), 0.0);
    }
}
