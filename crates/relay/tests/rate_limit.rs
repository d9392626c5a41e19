//! 300 deals triggered at once against portals with a leaky bucket: every
//! deal arrives, the relay waits for the bucket instead of provoking
//! `QUERY_LIMIT_EXCEEDED`, and nothing surfaces as a failure.
//!
//! The emulators run at burst 250 / 10 per second — the ratio of the
//! standard 50 / 2 per second (25 s to drain a full bucket) with a drain
//! five times faster, so 300 transfers (about 600 source requests) take
//! about 35 s instead of about 3 minutes. The relay is configured with the
//! same bucket as the portals, as it would be in production.

mod common;

use std::time::Duration;

use b24_relay::{Config, JobState, Relay};
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hundred_deals_at_once_stay_within_the_rate_limit() {
    b24_testkit::install_crypto_provider();
    const DEALS: usize = 300;
    let (burst, drain) = (250, 10.0);
    let (source, target) = start_portals(burst, drain).await;
    let dir = tempfile::tempdir().unwrap();
    let options = Options {
        rate: (burst, drain),
        workers: 8,
        ..Options::default()
    };
    let text = config_text(dir.path(), &source, &target, &options);
    let relay = Relay::start(Config::parse(&text).unwrap()).await.unwrap();
    let url = format!("http://{}", relay.addr);
    let ids: Vec<i64> = (0..DEALS)
        .map(|n| plain_deal(&source, &format!("Deal {n}"), "C2:PREPARATION"))
        .collect();
    let mut posts = tokio::task::JoinSet::new();
    for id in ids {
        let url = url.clone();
        posts.spawn(async move { post_rule(&url, id).await });
    }
    while let Some(status) = posts.join_next().await {
        assert_eq!(status.unwrap(), 200);
    }
    wait_until(
        "all deals are transferred",
        Duration::from_secs(600),
        async || {
            relay
                .store
                .jobs(Some(JobState::Pending), 1)
                .await
                .unwrap()
                .is_empty()
                && relay
                    .store
                    .jobs(Some(JobState::Running), 1)
                    .await
                    .unwrap()
                    .is_empty()
        },
    )
    .await;
    let deals = target_deals(&target);
    assert_eq!(deals.len(), DEALS);
    let origins: std::collections::BTreeSet<String> = deals
        .iter()
        .map(|d| d["originId"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(origins.len(), DEALS, "one target deal per source deal");
    assert!(
        relay
            .store
            .jobs(Some(JobState::Failed), 10)
            .await
            .unwrap()
            .is_empty()
    );
    let done = relay.store.jobs(Some(JobState::Done), 1000).await.unwrap();
    assert!(
        done.iter()
            .all(|j| j.message.as_deref().is_some_and(|m| m.contains("created")))
    );

    let metrics = relay.metrics.render();
    let limited: u64 = metrics
        .lines()
        .filter(|l| l.contains("code=\"QUERY_LIMIT_EXCEEDED\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    assert!(
        limited <= 5,
        "{limited} requests were refused by the portal:\n{metrics}"
    );
    // Requests per transfer as the portals counted them.
    let per_transfer =
        |portal: &b24_emulator::Portal| portal.admin().total_requests() as f64 / DEALS as f64;
    let (on_source, on_target) = (per_transfer(&source), per_transfer(&target));
    assert!(
        on_source <= 2.0 + 0.05,
        "source: {on_source} requests per transfer"
    );
    assert!(
        on_target <= 2.0 + 0.05,
        "target: {on_target} requests per transfer"
    );
    relay.shutdown().await;
    source.shutdown().await;
    target.shutdown().await;
}
