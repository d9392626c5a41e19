//! The whole product as its users run it, every piece a real process on
//! loopback: nodesync writes the nodes file from a published list, b24-edge
//! admits by that file, b24-relay moves deals from one emulated portal to
//! another. Events arrive as Bitrix24's queue servers send them, from a
//! listed address (127.0.0.2); a stranger (127.0.0.3) is refused before the
//! relay sees anything. Each of our three programs is run again or
//! restarted once mid-run — nodesync on the next tick with a changed list,
//! the edge with SIGTERM, the relay with SIGKILL in the middle of a transfer
//! — and the target portal goes down for a while; no deal is lost or
//! written twice.

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::time::Duration;

use b24_e2e::process::run;
use b24_e2e::{
    EmulatedPortal, GENEROUS, Process, free_port, http, https_from, local, metric, status_of,
    wait_until,
};
use b24_testkit::config::{EdgeRoute, EdgeToml, RelayPortal, RelayRoute, RelayToml, write};
use b24_testkit::tls::SelfSigned;
use b24_testkit::{NodesServer, Reply};
use serde_json::{Value, json};

const QUEUE_SERVER: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
const SECOND_SERVER: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3));
const STRANGER: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 4));
const SOURCE_SECRET: &str = "e2eSourceHook41";
const TARGET_SECRET: &str = "e2eTargetHook52";
const APP_TOKEN: &str = "e2eAppToken63";

fn source_seed() -> Value {
    json!({"users": [{"id": 1, "name": "Admin", "email": "admin@partner.test"}],
           "pipelines": [{"id": 2, "name": "Partners", "stages": [
               {"id": "C2:NEW", "name": "New"},
               {"id": "C2:PREPARATION", "name": "Hand over"},
               {"id": "C2:WON", "name": "Won", "semantics": "S"}]}]})
}

fn target_seed() -> Value {
    json!({"users": [{"id": 1, "name": "Admin", "email": "admin@hq.test"}],
           "pipelines": [{"id": 3, "name": "From partners", "stages": [
               {"id": "C3:NEW", "name": "New"},
               {"id": "C3:WON", "name": "Won", "semantics": "S"}]}]})
}

/// The edge refused a client: 403, or (for an unlisted peer) the
/// connection closed before any answer.
fn refused(status: u16) -> bool {
    status == 403 || status == 0
}

/// Everything one run of the product needs: ports, files, processes.
struct Product {
    dir: tempfile::TempDir,
    source: EmulatedPortal,
    target: EmulatedPortal,
    relay: Process,
    relay_args: Vec<String>,
    relay_metrics: String,
    edge: Process,
    edge_args: Vec<String>,
    edge_url: String,
    edge_ready: String,
    cert_pem: String,
}

/// nodesync's cron line, with its own cache file and the list's source.
fn nodesync(dir: &Path, source: &str, cache: &str) -> (i32, String) {
    let output = dir.join("app.json");
    let cache = dir.join(cache);
    run(
        "nodesync",
        &[
            "--emit",
            "json",
            "--source",
            source,
            "--cache",
            cache.to_str().unwrap(),
            "--output",
            output.to_str().unwrap(),
            "--allow-special",
        ],
    )
}

async fn start_product(nodes_url: &str) -> Product {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();

    // nodesync writes the file the edge reads.
    let (code, text) = nodesync(d, nodes_url, "nodesync-cache.json");
    assert_eq!(code, 0, "nodesync: {text}");
    let written = std::fs::read_to_string(d.join("app.json")).unwrap();
    assert!(written.contains("127.0.0.2"), "{written}");

    let source = EmulatedPortal::start(
        d,
        "partner.test",
        free_port(),
        SOURCE_SECRET,
        &source_seed(),
    )
    .await;
    let target =
        EmulatedPortal::start(d, "hq.test", free_port(), TARGET_SECRET, &target_seed()).await;

    let relay_port = free_port();
    let relay_metrics_port = free_port();
    let relay_toml = RelayToml::new(&d.join("relay.db"))
        .listen(local(relay_port))
        .metrics_listen(local(relay_metrics_port))
        .portal(
            RelayPortal::new(
                "partner",
                &write(d, "partner.webhook", &source.webhook_url()),
            )
            .application_token(&write(d, "partner.token", APP_TOKEN))
            .domain("partner.test"),
        )
        .portal(RelayPortal::new(
            "hq",
            &write(d, "hq.webhook", &target.webhook_url()),
        ))
        .route(
            RelayRoute::new("partner-to-hq", "partner", "hq")
                .when(2, &["C2:PREPARATION"])
                .target(3, Some("C3:NEW"), &[])
                .fields(&[("title", "title"), ("opportunity", "opportunity")]),
        )
        .write(d);
    let relay_args = vec![
        "serve".to_owned(),
        "--config".to_owned(),
        relay_toml.display().to_string(),
    ];
    let relay_metrics = format!("http://{}/metrics", local(relay_metrics_port));
    let relay = start(
        "b24-relay",
        &relay_args,
        d,
        &format!("http://{}/healthz", local(relay_metrics_port)),
    )
    .await;

    let cert = SelfSigned::write(d);
    let edge_port = free_port();
    let edge_admin = free_port();
    let edge_toml = EdgeToml::new(&cert.cert_path, &cert.key_path)
        .listen(local(edge_port))
        .metrics_listen(local(edge_admin))
        .nodes_source(d.join("app.json").display().to_string())
        .nodes_cache(&d.join("edge-nodes-cache.json"))
        .nodes_key("file_poll", "100ms")
        .allow_special()
        .route(EdgeRoute::new("/", &format!("http://{}", local(relay_port))).allow(&["nodes"]))
        .write(d);
    let edge_args = vec!["--config".to_owned(), edge_toml.display().to_string()];
    let edge_ready = format!("http://{}/readyz", local(edge_admin));
    let edge = start("b24-edge", &edge_args, d, &edge_ready).await;

    Product {
        source,
        target,
        relay,
        relay_args,
        relay_metrics,
        edge,
        edge_args,
        edge_url: format!("https://127.0.0.1:{edge_port}"),
        edge_ready,
        cert_pem: cert.cert_pem,
        dir,
    }
}

/// Starts a service and waits until `ready` answers 200.
async fn start(name: &str, args: &[String], dir: &Path, ready: &str) -> Process {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut process = Process::start(name, &args, dir);
    let client = http();
    let url = ready.to_owned();
    let mut exited = false;
    wait_until(&format!("{name} is ready"), GENEROUS, || {
        let client = client.clone();
        let url = url.clone();
        exited = !process.is_running();
        async move { exited || status_of(&client, &url).await == 200 }
    })
    .await;
    assert!(process.is_running(), "{name} exited:\n{}", process.log());
    process
}

impl Product {
    /// A deal on the source, already in the trigger stage.
    async fn new_deal(&self, title: &str) -> i64 {
        let answer = self
            .source
            .call(
                "crm.item.add",
                json!({"entityTypeId": 2, "fields": {"title": title, "categoryId": 2,
                       "stageId": "C2:PREPARATION", "opportunity": 1000, "currencyId": "RUB"}}),
            )
            .await;
        answer["result"]["item"]["id"]
            .as_i64()
            .unwrap_or_else(|| panic!("crm.item.add: {answer}"))
    }

    /// The outgoing webhook's event for `deal`, as a queue server at `from`
    /// POSTs it to the edge; the HTTP status, or 0 if the connection was
    /// refused before any answer.
    async fn send_event(&self, from: IpAddr, deal: i64) -> u16 {
        let body = format!(
            "event=ONCRMDEALUPDATE&data[FIELDS][ID]={deal}&ts=1724140800\
             &auth[domain]=partner.test&auth[application_token]={APP_TOKEN}"
        );
        let answer = https_from(from, &self.cert_pem)
            .post(format!("{}/hook/event/partner", self.edge_url))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await;
        match answer {
            Ok(answer) => answer.status().as_u16(),
            Err(_) => 0,
        }
    }

    /// Target deals that came from source deal `deal`.
    async fn copies_of(&self, deal: i64) -> usize {
        self.target
            .deals()
            .await
            .iter()
            .filter(|d| d["originId"].as_str() == Some(&deal.to_string()))
            .count()
    }

    async fn wait_for_copy(&self, deal: i64) {
        wait_until(
            &format!("source deal {deal} is on the target"),
            GENEROUS,
            || async move { self.copies_of(deal).await >= 1 },
        )
        .await;
    }

    async fn admitted_events(&self) -> f64 {
        metric(
            &self.relay_metrics,
            "b24_relay_intake_requests_total{kind=\"event\",status=\"200\"}",
        )
        .await
    }

    fn logs(&self) -> String {
        format!(
            "--- relay\n{}\n--- edge\n{}",
            self.relay.log(),
            self.edge.log()
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_from_listed_servers_reach_the_target_once_across_restarts() {
    b24_testkit::install_crypto_provider();
    let list = NodesServer::start(Reply::nodes(&["127.0.0.2"])).await;
    let mut p = start_product(&list.url()).await;
    let d = p.dir.path().to_owned();

    // 1. A listed queue server's event goes through the edge into the
    // relay and onto the target portal.
    let first = p.new_deal("First").await;
    assert_eq!(p.send_event(QUEUE_SERVER, first).await, 200, "{}", p.logs());
    p.wait_for_copy(first).await;

    // 2. A stranger is refused by the edge; the relay never sees it.
    let before = p.admitted_events().await;
    let status = p.send_event(STRANGER, first).await;
    assert!(refused(status), "a stranger got {status}");
    assert_eq!(p.admitted_events().await, before);

    // 3. nodesync on its next tick: within 60 s of the last request it does
    // not ask the source again and changes nothing.
    list.set(Reply::nodes(&["127.0.0.2", "127.0.0.3"]));
    let asked = list.hits();
    let (code, text) = nodesync(&d, &list.url(), "nodesync-cache.json");
    assert_eq!(
        (code, text.as_str()),
        (0, ""),
        "a quiet tick prints nothing"
    );
    assert_eq!(list.hits(), asked, "asked again within 60 s");
    let status = p.send_event(SECOND_SERVER, first).await;
    assert!(refused(status), "not listed yet, got {status}");
    // A later tick (its own cache: as after the minimum interval) takes the
    // new list; the edge follows the file without a restart.
    let (code, text) = nodesync(&d, &list.url(), "nodesync-cache-later.json");
    assert_eq!(code, 0, "{text}");
    let second = p.new_deal("Second").await;
    let edge_url = p.edge_url.clone();
    wait_until("the edge admits the new server", GENEROUS, || {
        let cert = p.cert_pem.clone();
        let url = format!("{edge_url}/healthz-probe");
        async move {
            // Any answer but a refusal means admitted (404 from the relay).
            let status = match https_from(SECOND_SERVER, &cert).get(url).send().await {
                Ok(answer) => answer.status().as_u16(),
                Err(_) => 0,
            };
            !refused(status)
        }
    })
    .await;
    assert_eq!(
        p.send_event(SECOND_SERVER, second).await,
        200,
        "{}",
        p.logs()
    );
    p.wait_for_copy(second).await;

    // 4. The edge restarted (SIGTERM: drains, exits 0); the relay kept
    // running and nothing was lost.
    let status = p.edge.stop_with("TERM");
    assert!(status.success(), "edge: {status}\n{}", p.edge.log());
    let third = p.new_deal("Third").await;
    assert_eq!(
        p.send_event(QUEUE_SERVER, third).await,
        0,
        "nobody listens while stopped"
    );
    p.edge = start("b24-edge", &p.edge_args, &d, &p.edge_ready).await;
    assert_eq!(p.send_event(QUEUE_SERVER, third).await, 200, "{}", p.logs());
    p.wait_for_copy(third).await;

    // 5. The relay killed (-9) while a transfer waits for a slow target,
    // then started again: the deal arrives once.
    p.target
        .faults(json!({"methods": {"*": {"latencyMs": 1500}}}))
        .await;
    let fourth = p.new_deal("Fourth").await;
    let asked = p.target.requests().await;
    assert_eq!(
        p.send_event(QUEUE_SERVER, fourth).await,
        200,
        "{}",
        p.logs()
    );
    wait_until("the relay is talking to the target", GENEROUS, || async {
        p.target.requests().await > asked
    })
    .await;
    p.relay.stop_with("KILL");
    p.target.faults(json!({"methods": {}})).await;
    let relay_ready = p.relay_metrics.replace("/metrics", "/healthz");
    p.relay = start("b24-relay", &p.relay_args, &d, &relay_ready).await;
    p.wait_for_copy(fourth).await;

    // 6. The target portal down (REST connections closed without an
    // answer) while an event comes: the relay retries until it is back.
    p.target.faults(json!({"down": true})).await;
    let fifth = p.new_deal("Fifth").await;
    assert_eq!(p.send_event(QUEUE_SERVER, fifth).await, 200, "{}", p.logs());
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(p.copies_of(fifth).await, 0);
    p.target.faults(json!({"down": false})).await;
    p.wait_for_copy(fifth).await;

    // Exactly one target deal per source deal, and no job left failed.
    for deal in [first, second, third, fourth, fifth] {
        assert_eq!(
            p.copies_of(deal).await,
            1,
            "source deal {deal}\n{}",
            p.logs()
        );
    }
    let relay_toml = d.join("relay.toml");
    let (code, text) = run(
        "b24-relay",
        &[
            "jobs",
            "list",
            "--state",
            "failed",
            "--config",
            relay_toml.to_str().unwrap(),
        ],
    );
    assert_eq!((code, text.trim()), (0, ""), "failed jobs");
    for secret in [SOURCE_SECRET, TARGET_SECRET, APP_TOKEN] {
        assert!(!p.logs().contains(secret), "{secret} in a log");
    }
}
