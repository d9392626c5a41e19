//! The demo's steps, each told as it happens: deals move on the source,
//! arrive on the target, a stranger is refused, and the firewall rules and
//! metrics show what happened.

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use b24_emulator::EntityType;
use b24_relay::JobState;
use serde_json::{Value, json};

use crate::error::{DemoError, http_error};
use crate::queue::client_from;
use crate::stack::{LISTED, ROUTE, SOURCE_CATEGORY, START_STAGE, Stack, TRIGGER_STAGE};

/// Generous: only there so that a broken run ends instead of hanging.
const WAIT: Duration = Duration::from_secs(60);
/// An address on this machine that is not in the nodes list.
pub const UNLISTED: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));

/// What the run showed, for the caller to check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Source deal id → target deal id.
    pub transferred: Vec<(i64, i64)>,
    /// The edge's answer to the unlisted address.
    pub refused_status: u16,
}

struct DemoDeal {
    title: &'static str,
    rows: &'static [(&'static str, f64, f64)],
}

const DEALS: [DemoDeal; 3] = [
    DemoDeal {
        title: "Boiler room",
        rows: &[("Boiler", 120_000.0, 1.0), ("Pipe, 1 m", 3_000.0, 10.0)],
    },
    DemoDeal {
        title: "Office fit-out",
        rows: &[("Desk", 9_000.0, 6.0), ("Chair", 5_000.0, 6.0)],
    },
    DemoDeal {
        title: "Annual support",
        rows: &[("Support, 1 month", 3_000.0, 12.0)],
    },
];

fn plain_client() -> Result<reqwest::Client, DemoError> {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| http_error("building an HTTP client", e))
}

/// Calls a REST method of the source portal through its incoming webhook.
async fn source_call(stack: &Stack, method: &str, params: Value) -> Result<Value, DemoError> {
    let url = format!("{}{method}.json", stack.source_webhook());
    let answer: Value = plain_client()?
        .post(url)
        .json(&params)
        .send()
        .await
        .map_err(|e| http_error(format!("source portal {method}"), e))?
        .json()
        .await
        .map_err(|e| http_error(format!("source portal {method}"), e))?;
    if let Some(error) = answer.get("error") {
        return Err(DemoError::Unexpected(format!(
            "source portal {method} answered {error}: {}",
            answer["error_description"]
        )));
    }
    Ok(answer)
}

pub fn introduce(stack: &Stack, out: &mut dyn Write) -> Result<(), DemoError> {
    let relay_metrics = stack
        .relay
        .metrics_addr
        .map_or_else(|| "-".into(), |a| format!("http://{a}/metrics"));
    let edge_metrics = stack
        .edge
        .metrics_addr()
        .map_or_else(|| "-".into(), |a| format!("http://{a}/metrics"));
    writeln!(
        out,
        "b24-demo: the whole data path on this machine, every piece on 127.0.0.1"
    )?;
    writeln!(out)?;
    writeln!(
        out,
        "  source portal   {}  ({}, emulated)",
        stack.source.url(),
        stack.source.domain()
    )?;
    writeln!(
        out,
        "  queue server    {}  (stands in for Bitrix24's queue servers: calls the edge from {LISTED})",
        stack.queue.url()
    )?;
    writeln!(
        out,
        "  b24-edge        {}  (generated certificate; nodes list: {LISTED}; metrics {edge_metrics})",
        stack.edge_url()
    )?;
    writeln!(
        out,
        "  b24-relay       http://{}  (SQLite queue in {}; metrics {relay_metrics})",
        stack.relay.addr,
        stack.files.dir.path().display()
    )?;
    writeln!(
        out,
        "  target portal   {}  ({}, emulated)",
        stack.target.url(),
        stack.target.domain()
    )?;
    writeln!(
        out,
        "  configurations  {} and {} (what the relay and the edge run with)",
        stack.files.relay_toml.display(),
        stack.files.edge_toml.display()
    )?;
    writeln!(out)?;
    Ok(())
}

/// Creates the deals (before any handler is subscribed, so creating them
/// sends nothing), then subscribes the relay and moves them into the
/// trigger stage.
pub async fn move_deals(stack: &Stack, out: &mut dyn Write) -> Result<Vec<i64>, DemoError> {
    let mut ids = Vec::new();
    for deal in &DEALS {
        let amount: f64 = deal.rows.iter().map(|(_, price, qty)| price * qty).sum();
        let added = source_call(
            stack,
            "crm.item.add",
            json!({"entityTypeId": 2, "fields": {
                "title": deal.title, "categoryId": SOURCE_CATEGORY, "stageId": START_STAGE,
                "opportunity": amount, "currencyId": "RUB"
            }}),
        )
        .await?;
        let id = added["result"]["item"]["id"]
            .as_i64()
            .ok_or_else(|| DemoError::Unexpected(format!("crm.item.add answered {added}")))?;
        let rows: Vec<Value> = deal
            .rows
            .iter()
            .map(|(name, price, qty)| json!({"productName": name, "price": price, "quantity": qty}))
            .collect();
        source_call(
            stack,
            "crm.item.productrow.set",
            json!({"ownerType": "D", "ownerId": id, "productRows": rows}),
        )
        .await?;
        ids.push(id);
    }
    stack.hook_up();
    writeln!(
        out,
        "1. The source has an outgoing webhook (ONCRMDEALUPDATE) to the edge. {} deals move to {TRIGGER_STAGE}:",
        ids.len()
    )?;
    for id in &ids {
        source_call(
            stack,
            "crm.item.update",
            json!({"entityTypeId": 2, "id": id, "fields": {"stageId": TRIGGER_STAGE}}),
        )
        .await?;
    }
    let deliveries = stack
        .source
        .admin()
        .wait_for_deliveries(ids.len(), WAIT)
        .await;
    if deliveries.len() < ids.len() {
        return Err(DemoError::Timeout {
            what: format!("{} event deliveries from the source portal", ids.len()),
            seconds: WAIT.as_secs(),
        });
    }
    // Deliveries run concurrently; each names its deal in the form body.
    let mut deliveries: Vec<(i64, &b24_emulator::Delivery)> = deliveries
        .iter()
        .map(|d| (delivered_deal(&d.body), d))
        .collect();
    deliveries.sort_by_key(|(id, _)| *id);
    for (id, delivery) in &deliveries {
        let answer = match (delivery.status, &delivery.error) {
            (Some(status), _) => format!("HTTP {status}"),
            (None, Some(error)) => format!("failed: {error}"),
            (None, None) => "no answer".into(),
        };
        writeln!(
            out,
            "   source deal #{id} → event → queue server → edge (admitted: {LISTED} is listed) → relay: {answer}"
        )?;
    }
    if let Some((_, bad)) = deliveries.iter().find(|(_, d)| d.status != Some(200)) {
        return Err(DemoError::Unexpected(format!(
            "an event was not accepted: status {:?}, error {:?}",
            bad.status, bad.error
        )));
    }
    writeln!(out)?;
    Ok(ids)
}

/// `data[FIELDS][ID]` of an event's form body (0 when absent).
fn delivered_deal(body: &str) -> i64 {
    b24_phpform::parse_str(body, &b24_phpform::Limits::default())
        .ok()
        .and_then(|tree| {
            let id = &tree["data"]["FIELDS"]["ID"];
            id.as_i64().or_else(|| id.as_str()?.parse().ok())
        })
        .unwrap_or_default()
}

async fn jobs(stack: &Stack, state: JobState) -> Result<Vec<b24_relay::Job>, DemoError> {
    stack
        .relay
        .store
        .jobs(Some(state), 1000)
        .await
        .map_err(|e| DemoError::Unexpected(format!("reading the relay's queue: {e}")))
}

/// Waits for the relay to finish, then shows each deal on the target.
pub async fn show_transfers(
    stack: &Stack,
    ids: &[i64],
    out: &mut dyn Write,
) -> Result<Vec<(i64, i64)>, DemoError> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let failed = jobs(stack, JobState::Failed).await?;
        if let Some(job) = failed.first() {
            return Err(DemoError::Unexpected(format!(
                "the relay could not transfer deal {}: {}",
                job.deal_id,
                job.message.as_deref().unwrap_or("no message")
            )));
        }
        let busy = jobs(stack, JobState::Pending).await?.len()
            + jobs(stack, JobState::Running).await?.len();
        let done = jobs(stack, JobState::Done).await?;
        if busy == 0 && ids.iter().all(|id| done.iter().any(|j| j.deal_id == *id)) {
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(DemoError::Timeout {
                what: "the relay to transfer the deals".into(),
                seconds: WAIT.as_secs(),
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    writeln!(
        out,
        "2. The relay queued each event, fetched the deal and wrote it to the target (route {ROUTE}):"
    )?;
    let target = stack.target.admin();
    let source = stack.source.admin();
    let mut pairs = Vec::new();
    for id in ids {
        let found: Vec<_> = target
            .records(EntityType::Deal)
            .into_iter()
            .filter(|d| d["originId"] == json!(id.to_string()))
            .collect();
        let [deal] = found.as_slice() else {
            return Err(DemoError::Unexpected(format!(
                "source deal {id} has {} deals on the target, expected exactly one",
                found.len()
            )));
        };
        let target_id = deal["id"].as_i64().unwrap_or_default();
        let rows: Vec<String> = target
            .product_rows(EntityType::Deal, target_id)
            .iter()
            .map(|row| {
                format!(
                    "{} ×{}",
                    row["productName"].as_str().unwrap_or("?"),
                    row["quantity"]
                )
            })
            .collect();
        let stage = source
            .record(EntityType::Deal, *id)
            .map(|d| d["stageId"].as_str().unwrap_or("?").to_owned())
            .unwrap_or_default();
        writeln!(
            out,
            "   source deal #{id} \"{}\" ({stage}) → target deal #{target_id}, stage {}, {} {}, products: {}",
            deal["title"].as_str().unwrap_or("?"),
            deal["stageId"].as_str().unwrap_or("?"),
            deal["opportunity"],
            deal["currencyId"].as_str().unwrap_or("?"),
            rows.join(", ")
        )?;
        pairs.push((*id, target_id));
    }
    let comments = source
        .timeline_comments()
        .iter()
        .filter(|c| ids.iter().any(|id| c["ENTITY_ID"] == json!(id.to_string())))
        .count();
    writeln!(
        out,
        "   and wrote {comments} timeline comments back on the source deals with the target ids"
    )?;
    writeln!(out)?;
    Ok(pairs)
}

/// A request from an address that is not in the nodes list.
pub async fn show_refusal(stack: &Stack, out: &mut dyn Write) -> Result<u16, DemoError> {
    let client = client_from(UNLISTED, &stack.files.cert_pem)?;
    let url = format!("{}/hook/event/partner", stack.edge_url());
    let status = client
        .post(&url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body("event=ONCRMDEALUPDATE&data[FIELDS][ID]=1")
        .send()
        .await
        .map_err(|e| http_error(format!("a request to the edge from {UNLISTED}"), e))?
        .status();
    writeln!(
        out,
        "3. A request from {UNLISTED}, which is not in the nodes list:"
    )?;
    writeln!(
        out,
        "   POST {url} from {UNLISTED} → {status} (refused by the edge; the relay never sees it)"
    )?;
    writeln!(out)?;
    if status != reqwest::StatusCode::FORBIDDEN {
        return Err(DemoError::Unexpected(format!(
            "the edge answered {status} to an unlisted address, expected 403"
        )));
    }
    Ok(status.as_u16())
}

/// The rules nodesync would load for the same list.
pub fn show_firewall(stack: &Stack, out: &mut dyn Write) -> Result<(), DemoError> {
    let body = std::fs::read(&stack.files.nodes)
        .map_err(|e| DemoError::Unexpected(format!("reading the nodes list: {e}")))?;
    // The demo's list is 127.0.0.1, so it needs the escape hatch
    // (nodesync --allow-special).
    let list = b24_nodes::NodeList::parse(&body, &b24_nodes::Limits::allowing_special())
        .map_err(|e| DemoError::Unexpected(format!("the demo's nodes list: {e}")))?;
    let rules = nodesync::emit::render(
        nodesync::emit::Format::Nftables,
        &list,
        &nodesync::emit::RuleOptions::default(),
    );
    writeln!(
        out,
        "4. On a box, nodesync turns the same list into firewall rules (nodesync --emit nftables --allow-special, since this list is loopback):"
    )?;
    for line in rules.lines() {
        writeln!(out, "   | {line}")?;
    }
    writeln!(out)?;
    Ok(())
}

async fn scrape(addr: Option<std::net::SocketAddr>, what: &str) -> Result<String, DemoError> {
    let addr =
        addr.ok_or_else(|| DemoError::Unexpected(format!("{what} has no metrics listener")))?;
    plain_client()?
        .get(format!("http://{addr}/metrics"))
        .send()
        .await
        .map_err(|e| http_error(format!("{what} metrics"), e))?
        .text()
        .await
        .map_err(|e| http_error(format!("{what} metrics"), e))
}

/// Lines of an exposition whose metric name starts with one of `wanted`.
fn pick<'a>(text: &'a str, wanted: &[&str]) -> Vec<&'a str> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter(|line| wanted.iter().any(|w| line.starts_with(w)))
        .collect()
}

pub async fn show_metrics(stack: &Stack, out: &mut dyn Write) -> Result<(), DemoError> {
    let edge = scrape(stack.edge.metrics_addr(), "the edge").await?;
    let relay = scrape(stack.relay.metrics_addr, "the relay").await?;
    writeln!(
        out,
        "5. Key metrics (what Prometheus scrapes; alert rules in deploy/prometheus):"
    )?;
    let edge_lines = pick(
        &edge,
        &[
            "b24_edge_requests_total",
            "b24_edge_denials_total{reason=\"not_in_nodes\"}",
            "b24_edge_nodes_networks{family=\"ipv4\"}",
            "b24_edge_certificate_expiry_timestamp_seconds",
        ],
    );
    let relay_lines = pick(
        &relay,
        &[
            "b24_relay_intake_requests_total",
            "b24_relay_transfers_total",
            "b24_relay_queue_depth",
        ],
    );
    for line in edge_lines.iter().chain(&relay_lines) {
        writeln!(out, "   {line}")?;
    }
    let portal_requests: f64 = pick(&relay, &["b24_relay_portal_requests_total"])
        .iter()
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    let expiry = pick(&edge, &["b24_edge_certificate_expiry_timestamp_seconds"])
        .first()
        .and_then(|line| line.rsplit(' ').next()?.parse::<f64>().ok());
    if let Some(expiry) = expiry {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64();
        let days = ((expiry - now) / 86_400.0).round();
        writeln!(
            out,
            "   (the certificate expires in {days} days; the alert fires under 14)"
        )?;
    }
    writeln!(
        out,
        "   (the relay made {portal_requests} REST requests to the two portals in all)"
    )?;
    writeln!(out)?;
    Ok(())
}

/// With `--serve`: what to try while everything keeps running.
pub fn show_try_it(stack: &Stack, out: &mut dyn Write) -> Result<(), DemoError> {
    let cert = stack.files.path("edge-cert.pem");
    let token = stack.files.path("partner.token");
    let source_hook = stack.files.path("partner.webhook");
    let target_hook = stack.files.path("hq.webhook");
    let edge = stack.edge_url();
    let event = format!(
        "curl -s --cacert {} {edge}/hook/event/partner -d event=ONCRMDEALUPDATE -d 'data[FIELDS][ID]=1' --data-urlencode 'auth[application_token]@{}' -d 'auth[domain]={}'",
        cert.display(),
        token.display(),
        stack.source.domain()
    );
    writeln!(
        out,
        "Everything keeps running. Try (the secrets stay in the files named):"
    )?;
    writeln!(
        out,
        "  # an event from a listed address (127.0.0.1): admitted, queued by the relay"
    )?;
    writeln!(out, "  {event}")?;
    writeln!(
        out,
        "  # a request from 127.0.0.2, not in the list: 403 from the edge"
    )?;
    writeln!(
        out,
        "  curl -s --interface {UNLISTED} --cacert {} -o /dev/null -w '%{{http_code}}\\n' {edge}/hook/event/partner",
        cert.display()
    )?;
    writeln!(
        out,
        "  # a new deal straight in {TRIGGER_STAGE}: it appears on the target within a second"
    )?;
    writeln!(
        out,
        "  curl -s \"$(cat {})crm.item.add.json\" -H 'content-type: application/json' -d '{{\"entityTypeId\":2,\"fields\":{{\"title\":\"Tried with curl\",\"categoryId\":{SOURCE_CATEGORY},\"stageId\":\"{TRIGGER_STAGE}\",\"opportunity\":500}}}}'",
        source_hook.display()
    )?;
    writeln!(
        out,
        "  curl -s \"$(cat {})crm.item.list.json\" -H 'content-type: application/json' -d '{{\"entityTypeId\":2,\"select\":[\"id\",\"title\",\"stageId\",\"originId\"]}}'",
        target_hook.display()
    )?;
    if let Some(addr) = stack.edge.metrics_addr() {
        writeln!(out, "  curl -s http://{addr}/metrics | grep -v '^#'")?;
    }
    if let Some(addr) = stack.relay.metrics_addr {
        writeln!(out, "  curl -s http://{addr}/metrics | grep -v '^#'")?;
    }
    writeln!(
        out,
        "  # the relay's queue, from the command line, beside the running demo"
    )?;
    writeln!(
        out,
        "  b24-relay jobs list --config {}",
        stack.files.relay_toml.display()
    )?;
    writeln!(
        out,
        "Each request the queue-server stand-in relays is logged below. Press Ctrl-C to stop."
    )?;
    out.flush()?;
    Ok(())
}
