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

    let _ = rustls::crypto::ring::default_provider().install_default();
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
