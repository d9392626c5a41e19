//! Three `serve` replicas on one PostgreSQL: 300 deals from 10 source portals
//! into one target, with the target dropping answers after doing the work,
//! answering 503 and storms of QUERY_LIMIT_EXCEEDED; replicas SIGKILLed at
//! random and restarted, PostgreSQL itself restarted once. At the end every
//! source deal has exactly one target deal, no contact is created twice, no
//! job is lost or failed, and no portal ever refused a request for its rate
//! limit (the replicas share one budget per portal).
//!
//! Rate limits run at burst 250 and 10 per second — the ratio of the
//! standard 50 / 2 per second with a drain five times faster — so that the
//! run takes about a minute instead of five; the relay is configured with
//! the same buckets as the portals, as in production. The PostgreSQL
//! cluster is this test's own (it is restarted).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use b24_emulator::{EntityType, MethodFaults, Portal};
use b24_relay::Store;
use b24_relay::config::StoreConfig;
use b24_relay::store::{JobState, StoreOptions};
use common::postgres::{TestPostgres, unique_schema};
use common::{client, record};
use rand::Rng;
use serde_json::json;

const SOURCES: usize = 10;
const DEALS_PER_SOURCE: usize = 30;
const REPLICAS: usize = 3;
const BURST: u32 = 250;
const DRAIN: f64 = 10.0;
const SECRET: &str = "hookS3cr3t";
const RULE_SECRET: &str = "ruleS3cr3tReplicas";

fn source_name(index: usize) -> String {
    format!("src{index}")
}

async fn source_portal(index: usize) -> Portal {
    Portal::builder()
        .domain(&format!("src{index}.test"))
        .webhook(1, SECRET, &["crm", "user"])
        .rate_limit(BURST, DRAIN)
        .seed(json!({
            "users": [{"id": 1, "name": "Admin", "email": format!("admin@src{index}.test")}],
            "pipelines": [{"id": 2, "name": "Partners", "stages": [
                {"id": "C2:NEW", "name": "New"},
                {"id": "C2:PREPARATION", "name": "Ready to hand over"}
            ]}]
        }))
        .start()
        .await
        .expect("source portal starts")
}

async fn target_portal() -> Portal {
    Portal::builder()
        .domain("hq.test")
        .webhook(1, SECRET, &["crm", "user"])
        .rate_limit(BURST, DRAIN)
        .seed(json!({
            "users": [{"id": 1, "name": "Admin", "email": "admin@hq.test"}],
            "pipelines": [{"id": 3, "name": "From partners", "stages": [{"id": "C3:NEW", "name": "New"}]}]
        }))
        .start()
        .await
        .expect("target portal starts")
}

fn config(dir: &Path, sources: &[Portal], target: &Portal, store_line: &str, port: u16) -> PathBuf {
    let write = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    };
    let rule = write("rule", RULE_SECRET);
    let mut text = format!(
        "listen = \"127.0.0.1:{port}\"\n{store_line}\nworkers = 4\nlease = \"3s\"\n\
         retry_base_delay = \"200ms\"\nretry_max_delay = \"2s\"\nmax_attempts = 30\n\n\
         [portal.hq]\nwebhook = {{ file = \"{}\" }}\nrate = {{ burst = {BURST}, per_second = {DRAIN} }}\n",
        write("hq.webhook", &target.webhook_url(1, SECRET)),
    );
    for (index, source) in sources.iter().enumerate() {
        let name = source_name(index);
        text.push_str(&format!(
            "\n[portal.{name}]\nwebhook = {{ file = \"{}\" }}\nrule_secret = {{ file = \"{rule}\" }}\n\
             rate = {{ burst = {BURST}, per_second = {DRAIN} }}\n",
            write(&format!("{name}.webhook"), &source.webhook_url(1, SECRET)),
        ));
    }
    for index in 0..sources.len() {
        let name = source_name(index);
        text.push_str(&format!(
            "\n[[route]]\nname = \"{name}-to-hq\"\nfrom = \"{name}\"\nto = \"hq\"\n\
             when = {{ category = 2, stages = [\"C2:PREPARATION\"] }}\n\
             target = {{ category = 3, stage = \"C3:NEW\" }}\n\
             fields = {{ title = \"title\", opportunity = \"opportunity\", currencyId = \"currencyId\" }}\n\
             contact = \"match\"\nwriteback = {{ comment = true }}\n"
        ));
    }
    let path = dir.join(format!("relay-{port}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

struct Replica {
    config: PathBuf,
    log: PathBuf,
    url: String,
    child: Option<Child>,
}

impl Replica {
    fn start(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        self.child = Some(
            Command::new(env!("CARGO_BIN_EXE_b24-relay"))
                .args(["serve", "--config"])
                .arg(&self.config)
                .env("RUST_LOG", "b24_relay=info")
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap(),
        );
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.kill();
    }
}

/// POSTs the rule call of a deal to some replica, trying the others (and
/// again) until one answers 200: what Bitrix24 would need from a load
/// balancer in front of the replicas.
async fn announce(http: &reqwest::Client, urls: &[String], portal: &str, deal: i64) {
    let started = Instant::now();
    let mut attempt = rand::rng().random_range(0..urls.len());
    loop {
        let url = format!(
            "{}/hook/rule/{portal}?secret={RULE_SECRET}",
            urls[attempt % urls.len()]
        );
        let status = http
            .post(url)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!(
                "document_id[0]=crm&document_id[1]=CCrmDocumentDeal&document_id[2]=DEAL_{deal}"
            ))
            .send()
            .await
            .map(|r| r.status().as_u16())
            .unwrap_or(0);
        if status == 200 {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no replica took deal {deal} of {portal}"
        );
        attempt += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_kills_and_a_postgres_restart_lose_and_duplicate_nothing() {
    b24_testkit::install_crypto_provider();
    let Some(pg) = TestPostgres::private("three_replicas_kills_and_a_postgres_restart") else {
        return;
    };
    let mut sources = Vec::new();
    for index in 0..SOURCES {
        sources.push(source_portal(index).await);
    }
    let target = target_portal().await;
    target.faults().set_method(
        "batch",
        MethodFaults {
            latency_ms: 40,
            drop_response_rate: 0.08,
            ..MethodFaults::default()
        },
    );
    // Bare 503s (the portal's front failing) on one source, injected
    // QUERY_LIMIT_EXCEEDED storms on two others.
    sources[1].faults().set_method(
        "batch",
        MethodFaults {
            error_rate: 0.15,
            error: b24_emulator::InjectedError {
                status: 503,
                code: "SERVICE_UNAVAILABLE".into(),
                description: "Service unavailable".into(),
            },
            ..MethodFaults::default()
        },
    );
    for storm in [&sources[2], &sources[3]] {
        storm.faults().set_method(
            "batch",
            MethodFaults {
                fail_next: 12,
                error: b24_emulator::InjectedError {
                    status: 503,
                    code: "QUERY_LIMIT_EXCEEDED".into(),
                    description: "Too many requests".into(),
                },
                ..MethodFaults::default()
            },
        );
    }
    let mut expected = BTreeSet::new();
    for (index, source) in sources.iter().enumerate() {
        let admin = source.admin();
        for n in 0..DEALS_PER_SOURCE {
            let contact = admin
                .insert_record(
                    EntityType::Contact,
                    &record(json!({"name": format!("Contact {index}-{n}"),
                        "fm": [{"typeId": "PHONE", "value": format!("+7900{index:02}{n:05}"), "valueType": "WORK"}]})),
                )
                .unwrap();
            let deal = admin
                .insert_record(
                    EntityType::Deal,
                    &record(
                        json!({"title": format!("Deal {index}-{n}"), "categoryId": 2,
                        "stageId": "C2:PREPARATION", "opportunity": 100 + n, "currencyId": "RUB",
                        "contactId": contact, "assignedById": 1}),
                    ),
                )
                .unwrap();
            expected.insert((source_name(index), deal));
        }
    }

    let dir = tempfile::tempdir().unwrap();
    let schema = unique_schema("replicas");
    let mut replicas: Vec<Replica> = (0..REPLICAS)
        .map(|index| {
            let port = TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            Replica {
                config: config(dir.path(), &sources, &target, &pg.store_line(&schema), port),
                log: dir.path().join(format!("replica-{index}.log")),
                url: format!("http://127.0.0.1:{port}"),
                child: None,
            }
        })
        .collect();
    for replica in &mut replicas {
        replica.start();
    }
    let urls: Vec<String> = replicas.iter().map(|r| r.url.clone()).collect();
    let http = client();
    for url in &urls {
        let started = Instant::now();
        while http.get(format!("{url}/healthz")).send().await.is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "{url} did not come up"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    // Announce every deal (spread over the replicas) while replicas die.
    let announcing = {
        let (http, urls, deals) = (http.clone(), urls.clone(), expected.clone());
        tokio::spawn(async move {
            for (portal, deal) in deals {
                announce(&http, &urls, &portal, deal).await;
            }
        })
    };
    let mut kills = 0;
    let chaos_until = Instant::now() + Duration::from_secs(25);
    let mut restarted_postgres = false;
    while Instant::now() < chaos_until {
        tokio::time::sleep(Duration::from_millis(rand::rng().random_range(400..1500))).await;
        let victim = rand::rng().random_range(0..REPLICAS);
        replicas[victim].kill();
        kills += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
        replicas[victim].start();
        if !restarted_postgres && kills == 6 {
            tokio::task::block_in_place(|| pg.restart());
            restarted_postgres = true;
        }
    }
    announcing.await.unwrap();
    assert!(restarted_postgres, "PostgreSQL was restarted once");

    let store_config = StoreConfig::from_url(&pg.url, None, Some(&schema)).unwrap();
    let store = Store::open(&store_config, StoreOptions::default())
        .await
        .unwrap();
    let started = Instant::now();
    loop {
        let waiting = store.jobs(Some(JobState::Pending), 1).await.unwrap().len()
            + store.jobs(Some(JobState::Running), 1).await.unwrap().len();
        if waiting == 0 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(180),
            "jobs still waiting: {:?}",
            store.stats().await.unwrap()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    for replica in &mut replicas {
        replica.kill();
    }

    let failed = store.jobs(Some(JobState::Failed), 20).await.unwrap();
    assert!(failed.is_empty(), "{failed:?}");
    // Every source deal: exactly one target deal.
    let mut per_source: BTreeMap<(String, i64), usize> = BTreeMap::new();
    for deal in target.admin().records(EntityType::Deal) {
        let portal = deal["originatorId"]
            .as_str()
            .and_then(|o| o.strip_prefix("b24-relay:"))
            .unwrap_or("?")
            .to_owned();
        let id: i64 = deal["originId"]
            .as_str()
            .unwrap_or("0")
            .parse()
            .unwrap_or(0);
        *per_source.entry((portal, id)).or_default() += 1;
    }
    let duplicated: Vec<_> = per_source.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        duplicated.is_empty(),
        "duplicated target deals: {duplicated:?}"
    );
    let arrived: BTreeSet<(String, i64)> = per_source.keys().cloned().collect();
    let lost: Vec<_> = expected.difference(&arrived).collect();
    assert!(lost.is_empty(), "deals never transferred: {lost:?}");
    // Every contact once.
    let contacts = target.admin().records(EntityType::Contact);
    assert_eq!(
        contacts.len(),
        SOURCES * DEALS_PER_SOURCE,
        "one target contact per source contact"
    );
    // The portals' own limits were never hit: the budget is shared.
    let refused: u64 = sources
        .iter()
        .chain(std::iter::once(&target))
        .map(|p| p.admin().limit_refusals())
        .sum();
    assert_eq!(
        refused, 0,
        "QUERY_LIMIT_EXCEEDED answered by a portal's bucket"
    );
    let logs: String = replicas
        .iter()
        .map(|r| std::fs::read_to_string(&r.log).unwrap_or_default())
        .collect();
    assert!(
        !logs.contains(SECRET) && !logs.contains(RULE_SECRET),
        "a secret is in a log"
    );
    eprintln!(
        "{kills} kills, PostgreSQL restarted once; {} target deals, {} contacts",
        per_source.len(),
        contacts.len()
    );
    store.close().await;
}
