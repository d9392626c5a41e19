//! The `b24-emulator` binary: starts from flags and a seed file, serves the
//! REST API, and exits cleanly on SIGTERM.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

#[tokio::test]
async fn binary_serves_the_seed_and_stops_on_sigterm() {
    let seed = concat!(env!("CARGO_MANIFEST_DIR"), "/seeds/example.json");
    let mut child = Command::new(env!("CARGO_BIN_EXE_b24-emulator"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--domain",
            "source.test",
            "--webhook",
            "1:BINSECRET:crm",
            "--rate-limit",
            "50/2",
            "--seed",
            seed,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("binary starts");
    let stdout = child.stdout.take().unwrap();
    let line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).map(|_| line)
    });
    let line = tokio::time::timeout(Duration::from_secs(30), line)
        .await
        .expect("startup line in time")
        .unwrap()
        .unwrap();
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .expect("url printed")
        .to_string();

    b24_testkit::install_crypto_provider();
    let client = reqwest::Client::new();
    let deal: Value = client
        .post(format!("{url}/rest/1/BINSECRET/crm.item.get"))
        .json(&serde_json::json!({"entityTypeId": 2, "id": 1}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(deal["result"]["item"]["stageId"], "C5:NEW");
    assert_eq!(deal["result"]["item"]["ufCrm_BUDGET"], "1500|EUR");
    let no_user_scope = client
        .post(format!("{url}/rest/1/BINSECRET/user.get"))
        .send()
        .await
        .unwrap();
    assert_eq!(no_user_scope.status().as_u16(), 403);

    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(
        status.status.success(),
        "exit after SIGTERM: {:?}",
        status.status
    );
    let logs = String::from_utf8_lossy(&status.stderr);
    assert!(!logs.contains("BINSECRET"), "secret in logs: {logs}");
}

#[test]
fn binary_rejects_bad_flags_with_a_clear_message() {
    let output = Command::new(env!("CARGO_BIN_EXE_b24-emulator"))
        .args(["--webhook", "one:SECRET"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("USER_ID:SECRET"));
    let output = Command::new(env!("CARGO_BIN_EXE_b24-emulator"))
        .args([
            "--webhook",
            "1:S",
            "--listen",
            "127.0.0.1:0",
            "--seed",
            "/nonexistent/seed.json",
        ])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("/nonexistent/seed.json"));
}

#[tokio::test]
async fn binary_runs_an_application_without_webhooks() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_b24-emulator"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--app",
            "local.bin.1:APPS3CRET:crm,bizproc",
            "--token-lifetime",
            "120",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("binary starts");
    let stdout = child.stdout.take().unwrap();
    let line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).map(|_| line)
    });
    let line = tokio::time::timeout(Duration::from_secs(30), line)
        .await
        .expect("startup line in time")
        .unwrap()
        .unwrap();
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .expect("url printed")
        .to_string();
    // An install URL nobody listens on: the tokens are issued all the same.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();

    b24_testkit::install_crypto_provider();
    let client = reqwest::Client::new();
    let installed: Value = client
        .post(format!("{url}/_emulator/app/install"))
        .json(&serde_json::json!({"url": format!("http://{closed}/install")}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(installed["delivery"]["error"], "connection failed");
    let body = installed["delivery"]["body"].as_str().unwrap();
    let form = b24_phpform::parse_str(body, &b24_phpform::Limits::default()).unwrap();
    let refresh_token = form["auth"]["refresh_token"].as_str().unwrap().to_string();
    assert_eq!(form["auth"]["expires_in"], "120");

    let fresh: Value = client
        .get(format!(
            "{url}/oauth/token/?grant_type=refresh_token&client_id=local.bin.1\
             &client_secret=APPS3CRET&refresh_token={refresh_token}"
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(fresh["expires_in"], 120);
    assert_eq!(fresh["scope"], "crm,bizproc");
    let access = fresh["access_token"].as_str().unwrap().to_string();
    let scope: Value = client
        .get(format!("{url}/rest/scope.json?auth={access}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(scope["result"], serde_json::json!(["crm", "bizproc"]));

    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(status.status.success(), "{:?}", status.status);
    let logs = String::from_utf8_lossy(&status.stderr);
    for secret in ["APPS3CRET", refresh_token.as_str(), access.as_str()] {
        assert!(!logs.contains(secret), "secret in logs: {logs}");
    }
}
