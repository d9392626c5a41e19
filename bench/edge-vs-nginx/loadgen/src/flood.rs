//! The flood: new connections from unlisted source addresses, started at a
//! fixed rate (open loop, so a server that refuses slowly is not offered
//! fewer connections), each trying a TLS handshake and one request. Every
//! attempt is classified by how it ended, which tells where the server
//! refused it: at accept (before TLS), with a 403 after TLS, or not at all.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::tls;

pub struct Options {
    pub target: SocketAddr,
    pub sources: Vec<IpAddr>,
    pub rate: u32,
    pub concurrency: usize,
    pub duration: Duration,
}

/// How one attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// connect() failed (refused: nothing listening).
    ConnectFailed,
    /// The server closed or reset the connection before TLS completed
    /// (also when the reset arrived while connect() was completing).
    RefusedBeforeTls,
    /// TLS completed and the server answered 403.
    Refused403,
    /// TLS completed and the server answered something else.
    Answered(u16),
    /// TLS completed, then the connection ended with no status line.
    ClosedAfterTls,
    /// A step took longer than the step timeout.
    TimedOut,
}

/// Each step (connect, handshake, answer) of an attempt gets this long.
const STEP_TIMEOUT: Duration = Duration::from_secs(5);
/// Ticks per second of the rate limiter.
const TICKS_PER_SECOND: u32 = 200;

pub async fn run(options: Options) -> anyhow::Result<String> {
    let connector = tls::connector(&[b"http/1.1"]);
    let permits = Arc::new(Semaphore::new(options.concurrency));
    let mut tasks = JoinSet::new();
    let started = Instant::now();
    let mut ticker = tokio::time::interval(Duration::from_secs(1) / TICKS_PER_SECOND);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut due = 0f64;
    let per_tick = f64::from(options.rate) / f64::from(TICKS_PER_SECOND);
    let (mut offered, mut skipped, mut next_source) = (0u64, 0u64, 0usize);
    let mut counts = Counts::default();
    while started.elapsed() < options.duration {
        ticker.tick().await;
        due += per_tick;
        while due >= 1.0 {
            due -= 1.0;
            offered += 1;
            let Ok(permit) = permits.clone().try_acquire_owned() else {
                skipped += 1;
                continue;
            };
            let source = options.sources[next_source % options.sources.len()];
            next_source += 1;
            let connector = connector.clone();
            let target = options.target;
            tasks.spawn(async move {
                let outcome = attempt(&connector, source, target).await;
                drop(permit);
                outcome
            });
        }
        while let Some(done) = tasks.try_join_next() {
            counts.add(done?);
        }
    }
    let offer_elapsed = started.elapsed();
    // Attempts still in flight finish (each step is bounded).
    while let Some(done) = tasks.join_next().await {
        counts.add(done?);
    }
    Ok(json!({
        "offered": offered,
        "skipped": skipped,
        "started": offered - skipped,
        "seconds": offer_elapsed.as_secs_f64(),
        "outcomes": counts.as_json(),
    })
    .to_string())
}

#[derive(Debug, Default)]
struct Counts {
    connect_failed: u64,
    refused_before_tls: u64,
    refused_403: u64,
    answered_other: u64,
    closed_after_tls: u64,
    timed_out: u64,
}

impl Counts {
    fn add(&mut self, outcome: Outcome) {
        match outcome {
            Outcome::ConnectFailed => self.connect_failed += 1,
            Outcome::RefusedBeforeTls => self.refused_before_tls += 1,
            Outcome::Refused403 => self.refused_403 += 1,
            Outcome::Answered(_) => self.answered_other += 1,
            Outcome::ClosedAfterTls => self.closed_after_tls += 1,
            Outcome::TimedOut => self.timed_out += 1,
        }
    }

    fn as_json(&self) -> serde_json::Value {
        json!({
            "connect_failed": self.connect_failed,
            "refused_before_tls": self.refused_before_tls,
            "refused_403": self.refused_403,
            "answered_other": self.answered_other,
            "closed_after_tls": self.closed_after_tls,
            "timed_out": self.timed_out,
        })
    }
}

async fn attempt(
    connector: &tokio_rustls::TlsConnector,
    source: IpAddr,
    target: SocketAddr,
) -> Outcome {
    let stream = match tokio::time::timeout(STEP_TIMEOUT, tls::tcp_connect(source, target)).await {
        Err(_) => return Outcome::TimedOut,
        // A server that accepts and resets at once (refusal at accept) can
        // beat the client's own view of the completed connect: the reset
        // then surfaces as the connect's error.
        Ok(Err(e)) if was_reset(&e) => return Outcome::RefusedBeforeTls,
        Ok(Err(_)) => return Outcome::ConnectFailed,
        Ok(Ok(stream)) => stream,
    };
    let mut tls =
        match tokio::time::timeout(STEP_TIMEOUT, tls::handshake(connector, target, stream)).await {
            Err(_) => return Outcome::TimedOut,
            Ok(Err(_)) => return Outcome::RefusedBeforeTls,
            Ok(Ok(tls)) => tls,
        };
    let request =
        format!("GET /hook/flood HTTP/1.1\r\nHost: {target}\r\nConnection: close\r\n\r\n");
    let exchange = async {
        tls.write_all(request.as_bytes()).await?;
        let mut answer = Vec::with_capacity(512);
        let mut chunk = [0u8; 2048];
        // The status line is enough; then read on to the close so the
        // server, not this client, ends the connection.
        loop {
            let n = tls.read(&mut chunk).await?;
            if n == 0 || answer.len() > 64 * 1024 {
                break;
            }
            answer.extend_from_slice(&chunk[..n]);
        }
        Ok::<_, std::io::Error>(answer)
    };
    match tokio::time::timeout(STEP_TIMEOUT, exchange).await {
        Err(_) => Outcome::TimedOut,
        Ok(Err(_)) => Outcome::ClosedAfterTls,
        Ok(Ok(answer)) => match status_of(&answer) {
            Some(403) => Outcome::Refused403,
            Some(status) => Outcome::Answered(status),
            None => Outcome::ClosedAfterTls,
        },
    }
}

fn was_reset(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionReset
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::BrokenPipe
    )
}

/// The status code of an HTTP/1.x answer.
fn status_of(answer: &[u8]) -> Option<u16> {
    let line = answer.split(|&b| b == b'\n').next()?;
    let code = line.strip_prefix(b"HTTP/1.")?.get(2..5)?;
    std::str::from_utf8(code).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::status_of;

    #[test]
    fn status_lines() {
        assert_eq!(status_of(b"HTTP/1.1 403 Forbidden\r\n\r\n"), Some(403));
        assert_eq!(status_of(b"HTTP/1.0 200 OK\r\n"), Some(200));
        assert_eq!(status_of(b""), None);
        assert_eq!(status_of(b"garbage"), None);
    }
}
