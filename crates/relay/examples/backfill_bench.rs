//! The backfill's benchmark (run through `bench/relay`): N existing deals
//! on a source portal at the standard limit (burst 50, 2 requests per
//! second on each portal), the relay serving in this process and
//! `backfill` run beside it as the command would run it; deals per minute
//! after the initial burst, against the bound the drain rate sets for the
//! requests one transfer costs on the busiest portal.

use std::time::{Duration, Instant};

mod bench_support;

use b24_emulator::EntityType;
use b24_relay::backfill::{self, Request};
use b24_relay::{Config, Parts, Relay};
use bench_support::{arg, portal, sustained_per_minute, wait_for_transfers, write};
use serde_json::json;

const SOURCE_SECRET: &str = "benchSourceSecret";
const TARGET_SECRET: &str = "benchTargetSecret";

#[tokio::main]
async fn main() {
    b24_cli_support::install_crypto_provider();
    let deals = arg("--backfill-deals", 2000);
    // The relay's default; transfers waiting for the same portal share its
    // batch requests, so more workers move more deals per request.
    let workers = arg("--workers", 16);
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
    for n in 0..deals {
        source
            .admin()
            .insert_record(
                EntityType::Deal,
                json!({"title": format!("Backfill {n}"), "categoryId": 2, "stageId": "C2:PREPARATION", "opportunity": 100 + n, "currencyId": "RUB"})
                    .as_object()
                    .unwrap(),
            )
            .unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let config = format!(
        r#"
listen = "127.0.0.1:0"
store = "sqlite://{db}"
workers = {workers}
[portal.partner]
webhook = {{ file = "{sh}" }}
rate = {{ burst = 50, per_second = 2 }}
[portal.esb]
webhook = {{ file = "{th}" }}
rate = {{ burst = 50, per_second = 2 }}
[[route]]
name = "partner-to-esb"
from = "partner"
to = "esb"
when = {{ category = 2, stages = ["C2:PREPARATION"] }}
target = {{ category = 3, stage = "C3:NEW" }}
fields = {{ title = "title", opportunity = "opportunity", currencyId = "currencyId" }}
constants = {{ sourceId = "PARTNER" }}
writeback = {{ comment = true, field = "ufCrm_ESB_DEAL_ID" }}
"#,
        db = d.join("relay.db").display(),
        sh = write(d, "s", &source.webhook_url(1, SOURCE_SECRET)),
        th = write(d, "t", &target.webhook_url(1, TARGET_SECRET)),
    );
    let relay = Relay::start(Config::parse(&config).unwrap()).await.unwrap();
    source.admin().reset_request_counts();
    target.admin().reset_request_counts();
    let started = Instant::now();
    let parts = Parts::open(Config::parse(&config).unwrap()).await.unwrap();
    let request = Request {
        route: "partner-to-esb".into(),
        since: None,
        stages: Vec::new(),
        dry_run: false,
        window: 200,
        restart: false,
        update: false,
        stall_after: Duration::from_secs(60),
        progress_every: Duration::from_secs(30),
    };
    let stop = backfill::StopFlag::default();
    let running = tokio::spawn(async move {
        let summary = backfill::run(&parts, &request, &stop).await;
        parts.store.close().await;
        summary
    });
    let store = relay.store.clone();
    let finished_at = wait_for_transfers(&store, deals, started, |_| true).await;
    let summary = running.await.unwrap().expect("the backfill ends");
    assert_eq!(summary.counts.enqueued as usize, deals);
    let source_requests = source.admin().total_requests() as f64 / deals as f64;
    let target_requests = target.admin().total_requests() as f64 / deals as f64;
    let skip = (deals / 4).max(1);
    let sustained = sustained_per_minute(&finished_at, skip);
    let busiest = source_requests.max(target_requests);
    let bound = 2.0 / busiest * 60.0;
    println!(
        "backfill: {deals} deals in {:.1} s ({:.1}/min overall); requests per transfer (the backfill's count and scan included): source {source_requests:.2}, target {target_requests:.2}",
        finished_at[deals - 1].as_secs_f64(),
        deals as f64 / finished_at[deals - 1].as_secs_f64() * 60.0
    );
    println!(
        "backfill sustained: {sustained:.1} deals/min (last {} deals), bound at 2 req/s and {busiest:.2} requests/transfer: {bound:.1}/min = {:.0} %",
        deals - skip,
        sustained / bound * 100.0
    );
    println!(
        "QUERY_LIMIT_EXCEEDED refused by the portals: source {}, target {}",
        source.admin().limit_refusals(),
        target.admin().limit_refusals()
    );
    relay.shutdown().await;
    source.shutdown().await;
    target.shutdown().await;
}
