//! Many source portals into one target (run through `bench/relay`): S
//! emulated partner portals, each at the standard limit (burst 50, 2
//! requests per second), feed one target portal at the same limit; D plain
//! deals per source (fields, two product rows, comment write-back) are
//! announced at once. Measured: sustained transfers per minute, requests and
//! batch fill on the target, against two bounds —
//! - one request per deal into the target: 2 req/s × 60 = 120/min;
//! - the physical bound: the target's 2 requests/s × 50 commands ÷ the
//!   commands a transfer costs there, and the sources' own drain (each
//!   source's 2 requests/s ÷ its requests per transfer), whichever is lower.
//!
//! Usage: cargo run --release -p b24-relay --example fanin_bench -- [--sources S] [--deals D] [--workers W]

mod bench_support;

use std::time::Instant;

use b24_emulator::EntityType;
use b24_relay::{Config, Relay};
use bench_support::{arg, portal, sustained_per_minute, wait_for_transfers, write};
use serde_json::json;

const SECRET: &str = "benchHookSecret";
const RULE_SECRET: &str = "benchRuleSecret";

/// The sum of a metric's samples whose line contains `filter`.
fn metric(text: &str, name: &str, filter: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l.contains(filter))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::main]
async fn main() {
    b24_cli_support::install_crypto_provider();
    let sources_n = arg("--sources", 20);
    let deals_per_source = arg("--deals", 15);
    let workers = arg("--workers", 64);
    let source_seed = json!({"pipelines": [{"id": 2, "name": "P", "stages": [{"id": "C2:NEW", "name": "New"}, {"id": "C2:PREPARATION", "name": "Ready"}]}]});
    let mut sources = Vec::new();
    for n in 0..sources_n {
        sources.push(portal(&format!("partner{n}.test"), SECRET, source_seed.clone()).await);
    }
    let target = portal(
        "esb.test",
        SECRET,
        json!({"pipelines": [{"id": 3, "name": "T", "stages": [{"id": "C3:NEW", "name": "New"}]}]}),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let rule = write(d, "rule", RULE_SECRET);
    let mut config = format!(
        "listen = \"127.0.0.1:0\"\nstore = \"sqlite://{}\"\nworkers = {workers}\n\n[portal.esb]\nwebhook = {{ file = \"{}\" }}\nrate = {{ burst = 50, per_second = 2 }}\n",
        d.join("relay.db").display(),
        write(d, "esb.hook", &target.webhook_url(1, SECRET)),
    );
    for (n, source) in sources.iter().enumerate() {
        config.push_str(&format!(
            "\n[portal.p{n}]\nwebhook = {{ file = \"{}\" }}\nrule_secret = {{ file = \"{rule}\" }}\nrate = {{ burst = 50, per_second = 2 }}\n",
            write(d, &format!("p{n}.hook"), &source.webhook_url(1, SECRET)),
        ));
    }
    for n in 0..sources_n {
        config.push_str(&format!(
            r#"
[[route]]
name = "p{n}-to-esb"
from = "p{n}"
to = "esb"
when = {{ category = 2, stages = ["C2:PREPARATION"] }}
target = {{ category = 3, stage = "C3:NEW" }}
fields = {{ title = "title", opportunity = "opportunity", currencyId = "currencyId" }}
products = true
writeback = {{ comment = true }}
"#
        ));
    }
    let relay = Relay::start(Config::parse(&config).unwrap()).await.unwrap();
    let base = format!("http://{}", relay.addr);
    let http = reqwest::Client::new();

    // Deals with two product rows each, seeded over REST with the limit lifted.
    let mut announced = Vec::new();
    for (n, source) in sources.iter().enumerate() {
        let limits = source.admin().limits();
        source.admin().set_limits(b24_emulator::LimitConfig {
            burst: 1_000_000,
            ..limits
        });
        for k in 0..deals_per_source {
            let id = source
                .admin()
                .insert_record(
                    EntityType::Deal,
                    json!({"title": format!("Сделка {n}-{k}"), "categoryId": 2, "stageId": "C2:PREPARATION", "opportunity": 100 + k, "currencyId": "RUB"})
                        .as_object()
                        .unwrap(),
                )
                .unwrap();
            let _ = http
                .post(format!("{}/rest/1/{SECRET}/crm.item.productrow.set.json", source.url()))
                .json(&json!({"ownerType": "D", "ownerId": id, "productRows": [{"productName": "A", "price": 10, "quantity": 2}, {"productName": "B", "price": 5, "quantity": 1}]}))
                .send()
                .await;
            announced.push((n, id));
        }
        source.admin().set_limits(limits);
        source.admin().reset_request_counts();
        source.admin().reset_limits();
    }
    target.admin().reset_request_counts();
    let total = announced.len();
    let started = Instant::now();
    for (n, id) in &announced {
        let response = http
            .post(format!("{base}/hook/rule/p{n}?secret={RULE_SECRET}"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!(
                "document_id[0]=crm&document_id[1]=CCrmDocumentDeal&document_id[2]=DEAL_{id}"
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
    let store = relay.store.clone();
    let finished_at = wait_for_transfers(&store, total, started, |_| true).await;
    let target_deals = target.admin().records(EntityType::Deal).len();
    assert_eq!(target_deals, total, "one target deal per source deal");
    let metrics = relay.metrics.render();
    let target_requests = target.admin().total_requests() as f64;
    let source_requests: f64 = sources
        .iter()
        .map(|s| s.admin().total_requests() as f64)
        .sum::<f64>()
        / total as f64;
    let commands = metric(&metrics, "b24_relay_batch_commands_total", "portal=\"esb\"");
    let shared = metric(&metrics, "b24_relay_batch_requests_total", "portal=\"esb\"");
    let callers = metric(&metrics, "b24_relay_batch_callers_total", "portal=\"esb\"");
    let refused = metric(
        &metrics,
        "b24_relay_portal_requests",
        "QUERY_LIMIT_EXCEEDED",
    );
    // After the target's initial burst (50 requests) is spent.
    let skip = (total / 3).max(1);
    let sustained = sustained_per_minute(&finished_at, skip);
    let target_commands_per_deal = commands / total as f64;
    let target_bound = 2.0 * 50.0 / target_commands_per_deal * 60.0;
    let source_bound = sources_n as f64 * 2.0 / source_requests * 60.0;
    let bound = target_bound.min(source_bound);
    println!(
        "fan-in: {sources_n} sources -> 1 target, {total} deals in {:.1} s, {workers} workers",
        finished_at[total - 1].as_secs_f64()
    );
    println!(
        "target: {target_requests:.0} requests ({:.3} per deal), batch fill {:.1} commands / {:.1} transfer steps per request; sources: {source_requests:.2} requests per deal",
        target_requests / total as f64,
        commands / shared.max(1.0),
        callers / shared.max(1.0),
    );
    println!(
        "sustained: {sustained:.0} transfers/min (last {} deals) = {:.1}x the one-request-per-deal bound (120/min); physical bound {bound:.0}/min (target {target_bound:.0}, sources {source_bound:.0}) = {:.0} %",
        total - skip,
        sustained / 120.0,
        sustained / bound * 100.0
    );
    println!(
        "QUERY_LIMIT_EXCEEDED answers seen by the relay: {}",
        refused as u64
    );
    relay.shutdown().await;
    for source in sources {
        source.shutdown().await;
    }
    target.shutdown().await;
}
