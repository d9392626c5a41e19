//! Application mode end to end on loopback: the source portal (emulated)
//! installs the local application on the relay, runs the relay's own
//! automation rule, and the relay answers with `bizproc.event.send`; OAuth
//! expiry, concurrent expiry, a revoked refresh token, forged runs.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use b24_emulator::{Portal, RobotRun};
use b24_relay::{Config, JobState, Relay};
use common::*;
use serde_json::{Map, Value, json};

const WAIT: Duration = Duration::from_secs(60);
const CLIENT_ID: &str = "local.65a1b2c3d4e5f6.12345678";
const CLIENT_SECRET: &str = "cl1entS3cretOfTheApp";
const ROBOT: &str = "b24_relay_transfer_deal";
const ROUTE: &str = "partner-to-esb";

/// Everything the relay (and the client) log in this test binary, to check
/// that no secret is ever written.
fn logs() -> &'static Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let writer = buffer.clone();
        let _ = tracing_subscriber::fmt()
            .with_env_filter("b24_relay=debug,b24_client=debug")
            .with_ansi(false)
            .with_writer(move || LogWriter(writer.clone()))
            .try_init();
        buffer
    })
}

struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl Write for LogWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        std::io::stderr().write_all(bytes)?;
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn logged() -> String {
    String::from_utf8_lossy(&logs().lock().unwrap()).into_owned()
}

async fn start_app_portals(corpus: bool) -> (Portal, Portal) {
    let (source_seed, target_seed) = if corpus {
        (corpus::source_seed(), corpus::target_seed())
    } else {
        (source_seed(), target_seed())
    };
    let source = Portal::builder()
        .domain("partner.test")
        .webhook(1, SOURCE_SECRET, &["crm", "user", "im"])
        .application(CLIENT_ID, CLIENT_SECRET, &["crm", "bizproc", "user"])
        .rate_limit(TEST_RATE.0, TEST_RATE.1)
        .seed(source_seed)
        .start()
        .await
        .expect("source portal starts");
    let target = Portal::builder()
        .domain("esb.test")
        .webhook(1, TARGET_SECRET, &["crm", "user"])
        .rate_limit(TEST_RATE.0, TEST_RATE.1)
        .seed(target_seed)
        .start()
        .await
        .expect("target portal starts");
    (source, target)
}

struct Setup {
    source: Portal,
    target: Portal,
    relay: Relay,
    url: String,
    config_text: String,
    dir: tempfile::TempDir,
}

async fn setup(workers: usize) -> Setup {
    setup_with(workers, true).await
}

/// `with_credentials: false`: no [portal.partner.app] yet, as when the
/// portal calls the install URL right after the application is saved.
async fn setup_with(workers: usize, with_credentials: bool) -> Setup {
    setup_full(workers, with_credentials, false).await
}

/// `corpus`: the business-like portals and mapping of `common::corpus`.
async fn setup_full(workers: usize, with_credentials: bool, corpus: bool) -> Setup {
    logs();
    let (source, target) = start_app_portals(corpus).await;
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("partner.client_secret");
    std::fs::write(&secret, CLIENT_SECRET).unwrap();
    let options = Options {
        workers,
        values: FULL_TABLE,
        mapping: corpus.then_some(corpus::ROUTE),
        ..Options::fast()
    };
    let credentials = format!(
        "\n[portal.partner.app]\nclient_id = \"{CLIENT_ID}\"\nclient_secret = {{ file = \"{}\" }}\n",
        secret.display()
    );
    let text = format!(
        "{}{}\n[app]\ntoken_server = \"{}\"\n",
        config_text(dir.path(), &source, &target, &options),
        if with_credentials {
            credentials.as_str()
        } else {
            ""
        },
        source.oauth_token_url(),
    );
    let relay = Relay::start(Config::parse(&text).unwrap())
        .await
        .expect("relay starts");
    let url = format!("http://{}", relay.addr);
    Setup {
        source,
        target,
        relay,
        url,
        config_text: text,
        dir,
    }
}

impl Setup {
    async fn install(&self) {
        let installed = self
            .source
            .admin()
            .install_application(&format!("{}/app/install/partner", self.url))
            .await
            .expect("install call made");
        assert_eq!(
            installed.delivery.status,
            Some(200),
            "install answered: {:?}",
            installed.delivery.error
        );
    }

    async fn run_rule(&self, deal: i64) -> RobotRun {
        let workflow = self.start_rule(deal);
        self.answer_of(&workflow).await
    }

    fn start_rule(&self, deal: i64) -> String {
        let mut properties = Map::new();
        properties.insert("route".into(), json!(ROUTE));
        self.source
            .admin()
            .run_robot(ROBOT, deal, properties)
            .expect("the rule is registered")
    }

    async fn answer_of(&self, workflow: &str) -> RobotRun {
        let run = self
            .source
            .admin()
            .wait_for_robot_answer(workflow, WAIT)
            .await
            .expect("the run exists");
        assert!(run.return_values.is_some(), "no answer for {workflow}");
        run
    }

    async fn stored_tokens(&self) -> (String, String) {
        let install = self
            .relay
            .store
            .app_install("partner")
            .await
            .unwrap()
            .expect("install stored");
        (
            install.tokens.access_token.expose().to_owned(),
            install.tokens.refresh_token.expose().to_owned(),
        )
    }

    fn latest_tokens(&self) -> (String, String) {
        let latest = self.source.admin().latest_tokens().expect("tokens issued");
        (latest.access_token, latest.refresh_token)
    }

    fn target_id_of(&self, title: &str) -> i64 {
        target_deals(&self.target)
            .iter()
            .find(|d| d["title"] == json!(title))
            .and_then(|d| d["id"].as_i64())
            .unwrap_or_else(|| panic!("no target deal {title}"))
    }

    async fn wait_jobs_done(&self, count: usize) {
        let relay = &self.relay;
        wait_until("jobs done", WAIT, async || {
            relay
                .store
                .jobs(Some(JobState::Done), 100)
                .await
                .unwrap()
                .len()
                >= count
        })
        .await;
    }

    async fn stop(self) {
        self.relay.shutdown().await;
    }
}

fn secrets_absent(text: &str, secrets: &[&str]) {
    for secret in secrets {
        assert!(!secret.is_empty());
        assert!(!text.contains(secret), "a secret appears in:\n{text}");
    }
}

/// Install → tokens stored, rule registered (bizproc.robot.list); a run of
/// the rule → the target deal is created and the workflow gets its id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn install_registers_the_rule_and_a_run_returns_the_target_deal() {
    b24_testkit::install_crypto_provider();
    let s = setup(4).await;
    s.install().await;
    assert_eq!(s.stored_tokens().await, s.latest_tokens());
    let (access, _) = s.latest_tokens();
    let listed: Value = client()
        .post(format!(
            "{}bizproc.robot.list?auth={access}",
            s.source.rest_url()
        ))
        .json(&json!({}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed["result"], json!([ROBOT]), "{listed}");
    let robot = &s.source.admin().app_robots()[0];
    assert_eq!(robot.handler, format!("{}/hook/app/partner", s.url));
    assert!(robot.use_subscription);
    assert_eq!(robot.name["en"], "Transfer deal to esb");
    assert_eq!(robot.name["ru"], "Передать сделку в esb");
    assert_eq!(robot.document_type, ["crm", "CCrmDocumentDeal", "DEAL"]);
    assert_eq!(robot.properties["route"]["Options"][ROUTE], json!(ROUTE));
    let returns: Vec<&String> = robot.return_properties.keys().collect();
    assert_eq!(returns, ["targetDealId", "status", "message"]);

    // Installing again updates the rule instead of failing.
    s.install().await;
    assert_eq!(s.source.admin().app_robots().len(), 1);

    let deal = plain_deal(&s.source, "Rule deal", "C2:PREPARATION");
    let run = s.run_rule(deal).await;
    let target = s.target_id_of("Rule deal");
    let values = run.return_values.unwrap();
    assert_eq!(
        values["targetDealId"].to_string().trim_matches('"'),
        target.to_string()
    );
    assert_eq!(values["status"], "done");
    assert!(
        run.log_message
            .unwrap()
            .contains(&format!("target deal {target}"))
    );
    assert_eq!(target_deals(&s.target).len(), 1);
    assert_eq!(s.source.admin().refresh_count(), 0);

    // A route that is not configured (any more): answered at once, nothing queued.
    let jobs_before = s.relay.store.jobs(None, 100).await.unwrap().len();
    let mut properties = Map::new();
    properties.insert("route".into(), json!("gone-route"));
    let workflow = s.source.admin().run_robot(ROBOT, deal, properties).unwrap();
    let run = s.answer_of(&workflow).await;
    let values = run.return_values.unwrap();
    assert_eq!(values["status"], "failed");
    assert!(values["message"].as_str().unwrap().contains("gone-route"));
    assert_eq!(
        s.relay.store.jobs(None, 100).await.unwrap().len(),
        jobs_before
    );
    s.stop().await;
}

/// The access token expires in the middle of the run: exactly one refresh,
/// the new pair in the store, the transfer done and answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_expiring_mid_run_is_refreshed_once_and_persisted() {
    b24_testkit::install_crypto_provider();
    let s = setup(4).await;
    s.install().await;
    let deal = plain_deal(&s.source, "Expiring", "C2:PREPARATION");
    // The source read works; every later OAuth call sees expired_token.
    s.source.admin().expire_access_tokens_after(1).unwrap();
    let run = s.run_rule(deal).await;
    assert_eq!(run.return_values.unwrap()["status"], "done");
    assert_eq!(s.source.admin().refresh_count(), 1);
    assert_eq!(s.stored_tokens().await, s.latest_tokens());
    let metrics = s.relay.metrics.render();
    assert!(
        metrics.contains("b24_relay_oauth_token_refreshes_total{portal=")
            && metrics.contains("result=\"ok\"} 1"),
        "{metrics}"
    );
    let (access, refresh) = s.latest_tokens();
    secrets_absent(&metrics, &[&access, &refresh, CLIENT_SECRET]);
    secrets_absent(&logged(), &[&access, &refresh, CLIENT_SECRET]);
    let install = s.relay.store.app_install("partner").await.unwrap().unwrap();
    secrets_absent(&format!("{install:?}"), &[&access, &refresh]);
    s.stop().await;
}

/// Several workers meet the expired token at once: still one refresh.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_expiry_makes_a_single_refresh() {
    b24_testkit::install_crypto_provider();
    let s = setup(4).await;
    s.install().await;
    let deals: Vec<i64> = (0..4)
        .map(|n| plain_deal(&s.source, &format!("Parallel {n}"), "C2:PREPARATION"))
        .collect();
    s.source.admin().expire_access_tokens().unwrap();
    let workflows: Vec<String> = deals.iter().map(|d| s.start_rule(*d)).collect();
    for workflow in &workflows {
        let run = s.answer_of(workflow).await;
        assert_eq!(run.return_values.unwrap()["status"], "done");
    }
    assert_eq!(s.source.admin().refresh_count(), 1);
    assert_eq!(s.stored_tokens().await, s.latest_tokens());
    assert_eq!(target_deals(&s.target).len(), 4);
    s.stop().await;
}

/// The refresh token is revoked: the portal is flagged (store, metric,
/// log), the transfer still happens through the webhook, and the run is
/// answered once the application is installed again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_refresh_token_flags_the_portal_and_loses_nothing() {
    b24_testkit::install_crypto_provider();
    let s = setup(2).await;
    s.install().await;
    let deal = plain_deal(&s.source, "Revoked", "C2:PREPARATION");
    let admin = s.source.admin();
    admin.revoke_refresh_tokens().unwrap();
    admin.expire_access_tokens().unwrap();
    let workflow = s.start_rule(deal);
    s.wait_jobs_done(1).await;
    let target = s.target_id_of("Revoked");
    let install = s.relay.store.app_install("partner").await.unwrap().unwrap();
    let reason = install.reinstall_reason.expect("portal flagged");
    assert!(reason.contains("invalid_grant"), "{reason}");
    assert!(
        s.relay
            .metrics
            .render()
            .contains("b24_relay_app_reinstall_needed{portal=\"partner\"} 1")
    );
    // No application client is left to answer with: the run waits.
    assert!(admin.robot_run(&workflow).unwrap().return_values.is_none());
    let (ok, text) = relay_command(&s, &["check"]);
    assert!(
        !ok && text.contains("partner: the application must be installed again")
            && text.contains("invalid_grant"),
        "{text}"
    );
    let (ok, text) = relay_command(&s, &["app", "status"]);
    assert!(ok && text.contains("NEEDS RE-INSTALL"), "{text}");

    s.install().await;
    let run = s.answer_of(&workflow).await;
    let values = run.return_values.unwrap();
    assert_eq!(values["status"], "done");
    assert_eq!(
        values["targetDealId"].to_string().trim_matches('"'),
        target.to_string()
    );
    assert!(
        s.relay
            .metrics
            .render()
            .contains("b24_relay_app_reinstall_needed{portal=\"partner\"} 0")
    );
    assert!(
        s.relay
            .store
            .app_install("partner")
            .await
            .unwrap()
            .unwrap()
            .reinstall_reason
            .is_none()
    );
    assert_eq!(target_deals(&s.target).len(), 1);
    s.stop().await;
}

async fn post_run(url: &str, body: String) -> u16 {
    client()
        .post(format!("{url}/hook/app/partner"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

fn run_body(application_token: &str, member_id: &str) -> String {
    format!(
        "workflow_id=W1&code={ROBOT}&document_id[0]=crm&document_id[1]=CCrmDocumentDeal&document_id[2]=DEAL_1\
         &event_token=T1&properties[route]={ROUTE}&auth[member_id]={member_id}&auth[application_token]={application_token}"
    )
}

/// Runs with a wrong application token or member id, or before any install,
/// are refused with 401 and queue nothing; a forged install is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_runs_and_installs_are_refused() {
    b24_testkit::install_crypto_provider();
    let s = setup(1).await;
    assert_eq!(post_run(&s.url, run_body("anything", "m")).await, 401);
    s.install().await;
    let install = s.relay.store.app_install("partner").await.unwrap().unwrap();
    let token = install.application_token.expose().to_owned();
    assert_eq!(
        post_run(&s.url, run_body("wrong-token", &install.member_id)).await,
        401
    );
    assert_eq!(
        post_run(&s.url, run_body(&token, "another-member")).await,
        401
    );
    // The emulator's own forged run reaches the handler and is refused too.
    let deal = plain_deal(&s.source, "Forged", "C2:PREPARATION");
    let mut properties = Map::new();
    properties.insert("route".into(), json!(ROUTE));
    s.source
        .admin()
        .run_robot_forged(ROBOT, deal, properties, "forged-app-token")
        .unwrap();
    wait_until("forged run delivered", WAIT, async || {
        s.source
            .admin()
            .deliveries()
            .iter()
            .any(|d| d.url.contains("/hook/app/partner") && d.status.is_some())
    })
    .await;
    let forged = s.source.admin().deliveries();
    let forged = forged
        .iter()
        .find(|d| d.url.contains("/hook/app/partner"))
        .unwrap();
    assert_eq!(forged.status, Some(401));
    assert!(s.relay.store.jobs(None, 10).await.unwrap().is_empty());

    // An install call with made-up tokens for this portal does not work.
    let fake = format!(
        "event=ONAPPINSTALL&auth[access_token]=fake&auth[refresh_token]=fake&auth[member_id]=m\
         &auth[application_token]=evil&auth[domain]=partner.test&auth[client_endpoint]={}&auth[scope]=crm",
        s.source.rest_url()
    );
    let status = client()
        .post(format!("{}/app/install/partner", s.url))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(fake)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16();
    assert_eq!(status, 403);
    // The real install is untouched.
    let still = s.relay.store.app_install("partner").await.unwrap().unwrap();
    assert_eq!(still.application_token.expose(), token);
    secrets_absent(&logged(), &[&token]);
    s.stop().await;
}

/// Runs the binary with a config whose `app.public_url` is the relay's.
fn relay_command(s: &Setup, args: &[&str]) -> (bool, String) {
    let path = s.dir.path().join("cli.toml");
    std::fs::write(
        &path,
        format!("{}public_url = \"{}\"\n", s.config_text, s.url),
    )
    .unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_b24-relay"))
        .args(args)
        .arg("--config")
        .arg(&path)
        .env("RUST_LOG", "debug")
        .output()
        .expect("the binary runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

/// `app status|unregister|register` and `check` while `serve` runs: the
/// command refreshes the expired pair and stores it; the serving relay,
/// refused with its older pair, takes the stored one instead of flagging
/// the portal. No output holds a secret.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_commands_and_check_work_beside_the_server() {
    b24_testkit::install_crypto_provider();
    let s = setup(2).await;
    let (ok, text) = relay_command(&s, &["app", "status"]);
    assert!(ok && text.contains("partner: not installed"), "{text}");
    s.install().await;
    let install = s.relay.store.app_install("partner").await.unwrap().unwrap();
    let app_token = install.application_token.expose().to_owned();
    let admin = s.source.admin();
    admin.expire_access_tokens().unwrap();

    let (ok, text) = relay_command(&s, &["app", "status"]);
    assert!(ok, "{text}");
    assert!(
        text.contains("partner: installed on partner.test") && text.contains("rule registered"),
        "{text}"
    );
    assert_eq!(admin.refresh_count(), 1);
    assert_eq!(s.stored_tokens().await, s.latest_tokens());

    let (ok, text) = relay_command(&s, &["app", "unregister"]);
    assert!(
        ok && text.contains(&format!("rule {ROBOT} deleted")),
        "{text}"
    );
    assert!(admin.app_robots().is_empty());
    let (ok, text) = relay_command(&s, &["app", "unregister"]);
    assert!(ok && text.contains("was not registered"), "{text}");
    let (ok, text) = relay_command(&s, &["app", "register"]);
    assert!(
        ok && text.contains(&format!("rule {ROBOT} added")),
        "{text}"
    );
    let (ok, text) = relay_command(&s, &["app", "register", "--portal", "partner"]);
    assert!(
        ok && text.contains(&format!("rule {ROBOT} updated")),
        "{text}"
    );
    assert_eq!(
        admin.app_robots()[0].handler,
        format!("{}/hook/app/partner", s.url)
    );

    let (ok, text) = relay_command(&s, &["check"]);
    assert!(ok, "{text}");
    assert!(
        text.contains("partner (application)") && text.contains("bizproc"),
        "{text}"
    );

    // The server still holds the pair the command replaced.
    let deal = plain_deal(&s.source, "Beside", "C2:PREPARATION");
    let run = s.run_rule(deal).await;
    assert_eq!(run.return_values.unwrap()["status"], "done");
    let install = s.relay.store.app_install("partner").await.unwrap().unwrap();
    assert!(install.reinstall_reason.is_none());

    let (access, refresh) = s.latest_tokens();
    for output in [text, logged()] {
        secrets_absent(&output, &[&access, &refresh, &app_token, CLIENT_SECRET]);
    }
    s.stop().await;
}

/// The portal calls the install URL as soon as the application is saved,
/// before its client id and secret are in the configuration: the tokens
/// are stored and the rule registered; runs are queued and transferred;
/// after a restart with the credentials the expired pair is refreshed once
/// and the waiting run is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_install_before_the_credentials_are_configured_is_kept() {
    b24_testkit::install_crypto_provider();
    let s = setup_with(2, false).await;
    s.install().await;
    assert_eq!(s.stored_tokens().await, s.latest_tokens());
    assert_eq!(s.source.admin().app_robots().len(), 1);
    let (ok, text) = relay_command(&s, &["check"]);
    assert!(!ok && text.contains("[portal.partner.app]"), "{text}");

    let deal = plain_deal(&s.source, "Early", "C2:PREPARATION");
    let workflow = s.start_rule(deal);
    s.wait_jobs_done(1).await;
    let target_id = s.target_id_of("Early");
    let admin = s.source.admin();
    // Without credentials the relay does not use the application.
    assert!(admin.robot_run(&workflow).unwrap().return_values.is_none());
    admin.expire_access_tokens().unwrap();

    let secret = s.dir.path().join("partner.client_secret");
    let with_credentials = format!(
        "{}\n[portal.partner.app]\nclient_id = \"{CLIENT_ID}\"\nclient_secret = {{ file = \"{}\" }}\n",
        s.config_text.replace(
            &format!(
                "\n[app]\ntoken_server = \"{}\"\n",
                s.source.oauth_token_url()
            ),
            ""
        ),
        secret.display()
    ) + &format!(
        "\n[app]\ntoken_server = \"{}\"\n",
        s.source.oauth_token_url()
    );
    let Setup {
        source,
        target,
        relay,
        dir,
        ..
    } = s;
    relay.shutdown().await;
    let relay = Relay::start(Config::parse(&with_credentials).unwrap())
        .await
        .expect("relay starts again");
    let s = Setup {
        url: format!("http://{}", relay.addr),
        source,
        target,
        relay,
        config_text: with_credentials,
        dir,
    };
    let run = s.answer_of(&workflow).await;
    let values = run.return_values.unwrap();
    assert_eq!(values["status"], "done");
    assert_eq!(
        values["targetDealId"].to_string().trim_matches('"'),
        target_id.to_string()
    );
    assert_eq!(s.source.admin().refresh_count(), 1);
    assert_eq!(s.stored_tokens().await, s.latest_tokens());
    s.stop().await;
}

/// Application mode, the business corpus: the deal is read with the
/// application's token, its files (Cyrillic names) are downloaded with it
/// even when the token expired after the read, and every field arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn business_deals_with_files_arrive_in_application_mode() {
    let s = setup_full(2, true, true).await;
    s.install().await;
    let [full, empty, _] = corpus::insert_deals(&s.source, SOURCE_SECRET).await;
    // The read works; the token the file links carry is dead by the download.
    s.source.admin().expire_access_tokens_after(2).unwrap();
    let run = s.run_rule(full).await;
    assert_eq!(
        run.return_values.as_ref().unwrap()["status"],
        "done",
        "{run:?}"
    );
    let deal = target_deals(&s.target)
        .into_iter()
        .find(|d| d.get("originId") == Some(&json!(full.to_string())))
        .unwrap();
    corpus::assert_fields("full deal (application)", &deal, &corpus::expected_full(23));
    let files: Vec<(String, Vec<u8>)> = deal["ufCrm_FILES"]
        .as_array()
        .unwrap()
        .iter()
        .map(|id| s.target.admin().file(id.as_i64().unwrap()).unwrap())
        .collect();
    assert_eq!(
        files,
        vec![
            ("Договор №42.pdf".to_owned(), corpus::CONTRACT.to_vec()),
            ("Счёт-фактура.xlsx".to_owned(), corpus::INVOICE.to_vec())
        ]
    );
    assert!(
        s.source.admin().refresh_count() >= 1,
        "the download refreshed the token"
    );
    assert_eq!(
        s.source
            .admin()
            .request_count("crm.controller.item.getfile"),
        3,
        "two files, one of them asked again after the refresh"
    );
    let run = s.run_rule(empty).await;
    assert_eq!(run.return_values.unwrap()["status"], "done");
    s.stop().await;
}

/// A rule registered with USE_SUBSCRIPTION=N takes no answer: the deal is
/// transferred, and bizproc.event.send is never called.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rule_without_subscription_transfers_and_sends_no_answer() {
    let s = setup(2).await;
    s.install().await;
    let (access, _) = s.latest_tokens();
    let updated: Value = client()
        .post(format!(
            "{}bizproc.robot.update?auth={access}",
            s.source.rest_url()
        ))
        .json(&json!({"CODE": ROBOT, "FIELDS": {"USE_SUBSCRIPTION": "N"}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(updated["result"], json!(true), "{updated}");
    let deal = plain_deal(&s.source, "No answer wanted", "C2:PREPARATION");
    s.start_rule(deal);
    wait_until("the deal is transferred", WAIT, async || {
        target_deals(&s.target)
            .iter()
            .any(|d| d["title"] == "No answer wanted")
    })
    .await;
    s.wait_jobs_done(1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(s.source.admin().request_count("bizproc.event.send"), 0);
    s.stop().await;
}
