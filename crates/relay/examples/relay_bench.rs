//! The relay's benchmark (run through `bench/relay`): two emulated portals
//! at the standard limit (burst 50, 2 requests per second), the relay in
//! this process, real HTTP on loopback.
//!
//! 1. Intake latency: sequential `POST /hook/rule/...` on one keep-alive
//!    connection, each committed to SQLite (WAL, synchronous=FULL) before
//!    the answer; p50/p99 as the client sees them. These jobs go to a portal
//!    without routes, so workers finish them without touching the portals.
//! 2. Throughput: N plain deals (fields + two product rows) triggered at
//!    once; requests per transfer as each portal counted them; sustained
//!    transfers per minute after the initial burst, against the bound the
//!    drain rate sets for that many requests per transfer.

use std::time::{Duration, Instant};

mod bench_support;

use b24_emulator::EntityType;
use b24_relay::{Config, JobState, Relay};
use bench_support::{arg, portal, sustained_per_minute, wait_for_transfers, write};
use serde_json::json;

const SOURCE_SECRET: &str = "benchSourceSecret";
const TARGET_SECRET: &str = "benchTargetSecret";
const RULE_SECRET: &str = "benchRuleSecret";

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

#[tokio::main]
async fn main() {
    let deals = arg("--deals", 150);
    let intake_requests = arg("--intake", 2000);
    let source = portal(
        "partner.test",
        SOURCE_SECRET,
        json!({"pipelines": [{"id": 2, "name": "P", "stages": [{"id": "C2:NEW", "name": "New"}, {"id": "C2:PREPARATION", "name": "Ready"}]}],
               "userFields": [{"entity": "deal", "name": "UF_CRM_ESB_DEAL_ID", "type": "string"}]}),
    )
    .await;
    let target = portal(
        "esb.test",
        TARGET_SECRET,
        json!({"pipelines": [{"id": 3, "name": "T", "stages": [{"id": "C3:NEW", "name": "New"}]}]}),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let config = format!(
        r#"
listen = "127.0.0.1:0"
store = "sqlite://{db}"
workers = 8
[portal.partner]
webhook = {{ file = "{sh}" }}
rule_secret = {{ file = "{rs}" }}
rate = {{ burst = 50, per_second = 2 }}
[portal.esb]
webhook = {{ file = "{th}" }}
rate = {{ burst = 50, per_second = 2 }}
[portal.quiet]
webhook = {{ file = "{qh}" }}
rule_secret = {{ file = "{rs}" }}
[[route]]
name = "partner-to-esb"
from = "partner"
to = "esb"
when = {{ category = 2, stages = ["C2:PREPARATION"] }}
target = {{ category = 3, stage = "C3:NEW" }}
fields = {{ title = "title", opportunity = "opportunity", currencyId = "currencyId" }}
constants = {{ sourceId = "PARTNER" }}
products = true
writeback = {{ comment = true, field = "ufCrm_ESB_DEAL_ID" }}
"#,
        db = d.join("relay.db").display(),
        sh = write(d, "s", &source.webhook_url(1, SOURCE_SECRET)),
        th = write(d, "t", &target.webhook_url(1, TARGET_SECRET)),
        qh = write(d, "q", "http://127.0.0.1:9/rest/1/unused/"),
        rs = write(d, "r", RULE_SECRET),
    );
    let relay = Relay::start(Config::parse(&config).unwrap()).await.unwrap();
    let base = format!("http://{}", relay.addr);
    b24_cli_support::install_crypto_provider();
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(1)
        .build()
        .unwrap();

    // 1. Intake latency.
    let mut latencies = Vec::with_capacity(intake_requests);
    for n in 0..intake_requests {
        let body = format!(
            "document_id[0]=crm&document_id[1]=CCrmDocumentDeal&document_id[2]=DEAL_{}",
            n + 1
        );
        let started = Instant::now();
        let response = http
            .post(format!("{base}/hook/rule/quiet?secret={RULE_SECRET}"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let _ = response.bytes().await;
        latencies.push(started.elapsed());
    }
    latencies.sort();
    println!(
        "intake: {} requests, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        intake_requests,
        percentile(&latencies, 0.50).as_secs_f64() * 1e3,
        percentile(&latencies, 0.99).as_secs_f64() * 1e3,
        latencies.last().unwrap().as_secs_f64() * 1e3,
    );
    let store = relay.store.clone();
    while !store
        .jobs(Some(JobState::Pending), 1)
        .await
        .unwrap()
        .is_empty()
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // 2. Throughput at 50 / 2 per second.
    let ids: Vec<i64> = (0..deals)
        .map(|n| {
            source
                .admin()
                .insert_record(
                    EntityType::Deal,
                    json!({"title": format!("Bench {n}"), "categoryId": 2, "stageId": "C2:PREPARATION", "opportunity": 100 + n, "currencyId": "RUB"})
                        .as_object()
                        .unwrap(),
                )
                .unwrap()
        })
        .collect();
    // Product rows are seeded over REST with the limit lifted, then the
    // limit, the bucket and the counters are put back.
    let limits = source.admin().limits();
    source.admin().set_limits(b24_emulator::LimitConfig {
        burst: 1_000_000,
        ..limits
    });
    for id in &ids {
        let url = format!(
            "{}/rest/1/{SOURCE_SECRET}/crm.item.productrow.set.json",
            source.url()
        );
        let _ = http
            .post(url)
            .json(&json!({"ownerType": "D", "ownerId": id, "productRows": [{"productName": "A", "price": 10, "quantity": 2}, {"productName": "B", "price": 5, "quantity": 1}]}))
            .send()
            .await;
    }
    source.admin().set_limits(limits);
    source.admin().reset_request_counts();
    source.admin().reset_limits();
    target.admin().reset_request_counts();
    let started = Instant::now();
    for id in &ids {
        let response = http
            .post(format!("{base}/hook/rule/partner?secret={RULE_SECRET}"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!(
                "document_id[0]=crm&document_id[1]=CCrmDocumentDeal&document_id[2]=DEAL_{id}"
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
    let finished_at =
        wait_for_transfers(&store, deals, started, |job| job.portal == "partner").await;
    let source_requests = source.admin().total_requests() as f64 / deals as f64;
    let target_requests = target.admin().total_requests() as f64 / deals as f64;
    // Sustained: completions after the burst is spent, per minute.
    let skip = (deals / 3).max(1);
    let sustained = sustained_per_minute(&finished_at, skip);
    let busiest = source_requests.max(target_requests);
    let bound = 2.0 / busiest * 60.0;
    println!(
        "transfers: {deals} deals in {:.1} s; requests per transfer: source {source_requests:.2}, target {target_requests:.2}",
        finished_at[deals - 1].as_secs_f64()
    );
    println!(
        "sustained: {sustained:.1} transfers/min (last {} deals), bound at 2 req/s and {busiest:.2} requests/transfer: {bound:.1}/min = {:.0} %",
        deals - skip,
        sustained / bound * 100.0
    );
    let metrics = relay.metrics.render();
    let refused: u64 = metrics
        .lines()
        .filter(|l| l.contains("code=\"QUERY_LIMIT_EXCEEDED\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    println!("QUERY_LIMIT_EXCEEDED answers seen by the relay: {refused}");
    relay.shutdown().await;
    source.shutdown().await;
    target.shutdown().await;
}
