//! The idle-connection holder: `count` keep-alive connections, each after
//! one successful request, then nothing. The bench samples the server's
//! memory while they are held.

use std::io::BufRead;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use serde_json::json;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::Proto;
use crate::client::{Sender, connector_for, open};

pub async fn run(
    target: SocketAddr,
    source: IpAddr,
    count: usize,
    proto: Proto,
    concurrency: usize,
) -> anyhow::Result<String> {
    let connector = connector_for(proto);
    let live = Arc::new(AtomicUsize::new(0));
    let permits = Arc::new(Semaphore::new(concurrency.max(1)));
    let started = Instant::now();
    let mut opening = JoinSet::new();
    for _ in 0..count {
        let permit = permits.clone().acquire_owned().await?;
        let (connector, live) = (connector.clone(), live.clone());
        opening.spawn(async move {
            let result = async {
                let sender = open(proto, &connector, source, target, Some(live)).await?;
                let status = sender.get(target, false).await?;
                anyhow::ensure!(status == 200, "answered {status}");
                Ok::<Sender, anyhow::Error>(sender)
            }
            .await;
            drop(permit);
            result
        });
    }
    // The senders are kept so that no connection is closed from this side.
    let mut held = Vec::with_capacity(count);
    let mut failed = 0usize;
    let mut first_error = None;
    while let Some(done) = opening.join_next().await {
        match done? {
            Ok(sender) => held.push(sender),
            Err(e) => {
                failed += 1;
                first_error.get_or_insert_with(|| format!("{e:#}"));
            }
        }
    }
    let open_seconds = started.elapsed().as_secs_f64();
    let open_at_ready = live.load(Ordering::Relaxed);
    eprintln!("ready {open_at_ready}");
    // The bench samples memory now and then writes a line (or closes stdin).
    tokio::task::spawn_blocking(|| {
        let mut line = String::new();
        let _ = std::io::stdin().lock().read_line(&mut line);
    })
    .await?;
    let still_open = live.load(Ordering::Relaxed);
    drop(held);
    Ok(json!({
        "opened": count - failed,
        "failed": failed,
        "first_error": first_error,
        "open_seconds": open_seconds,
        "open_at_ready": open_at_ready,
        "still_open": still_open,
    })
    .to_string())
}
