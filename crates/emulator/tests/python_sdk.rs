//! Compatibility with the official Python SDK (`b24pysdk` from PyPI): the
//! test makes a venv under the cargo target dir, installs the SDK, and runs
//! `tests/sdk/compat.py` (webhook) and `tests/sdk/app_compat.py` (local
//! application over OAuth) against an HTTPS emulated portal. Where the SDK
//! and the emulator disagree, the emulator is wrong.
//!
//! Needs `python3` with the `venv` module (Debian: `python3-venv`) and access
//! to PyPI. Without the venv module the test prints why and skips.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use b24_emulator::{EventHandler, HandlerSeed, Portal, RobotHandler};
use common::{Receiver, SECRET};

fn venv_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("b24pysdk-venv")
}

fn run(command: &mut Command) -> std::process::Output {
    command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"))
}

/// Makes the venv and installs the SDK once; `None` means python3's venv
/// module is missing on this machine. Tests in this file run in parallel, so
/// only one of them builds the venv.
fn sdk_python() -> Option<PathBuf> {
    static SETUP: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _only_one = SETUP.lock().unwrap_or_else(|e| e.into_inner());
    let dir = venv_dir();
    let python = dir.join("bin").join("python3");
    let installed = python.exists()
        && run(Command::new(&python).args(["-c", "import b24pysdk"]))
            .status
            .success();
    if installed {
        return Some(python);
    }
    let made = run(Command::new("python3")
        .args(["-m", "venv", "--clear"])
        .arg(&dir));
    if !made.status.success() {
        eprintln!(
            "SKIPPED python SDK compatibility test: `python3 -m venv` failed (install the Debian package python3-venv): {}",
            String::from_utf8_lossy(&made.stderr)
        );
        return None;
    }
    let pip = run(Command::new(&python).args([
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
        "b24pysdk",
    ]));
    assert!(
        pip.status.success(),
        "pip install b24pysdk failed: {}",
        String::from_utf8_lossy(&pip.stderr)
    );
    Some(python)
}

fn write_ca(dir: &Path, pem: &str) -> PathBuf {
    let path = dir.join("emulator-ca.pem");
    std::fs::write(&path, pem).expect("write certificate");
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_python_sdk_sees_a_bitrix24_portal() {
    b24_testkit::install_crypto_provider();
    let Some(python) = tokio::task::spawn_blocking(sdk_python).await.unwrap() else {
        return;
    };
    let receiver = Receiver::start().await;
    let mut properties = serde_json::Map::new();
    properties.insert("route".into(), serde_json::json!("wholesale"));
    let portal = Portal::builder()
        .domain("sdk.test")
        .webhook(1, SECRET, &["crm", "user", "bizproc"])
        .tls_self_signed()
        .start()
        .await
        .expect("portal starts");
    portal.admin().add_handlers(HandlerSeed {
        events: vec![EventHandler {
            event: "ONCRMDEALUPDATE".into(),
            url: receiver.url("/events"),
            application_token: "sdk-app-token".into(),
        }],
        robots: vec![RobotHandler {
            code: "transfer_deal".into(),
            handler: receiver.url("/robot"),
            stage_id: "WON".into(),
            properties,
            use_subscription: true,
            application_token: "sdk-app-token".into(),
        }],
        ..HandlerSeed::default()
    });
    let scratch = tempfile::tempdir().unwrap();
    let ca = write_ca(
        scratch.path(),
        portal
            .certificate_pem()
            .expect("TLS portal has a certificate"),
    );
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sdk/compat.py");
    let domain = format!("127.0.0.1:{}", portal.addr().port());
    let mut command = tokio::process::Command::new(&python);
    command
        .arg(&script)
        .arg(&domain)
        .arg(format!("1/{SECRET}"))
        .arg(portal.url())
        .arg(&ca)
        .env("REQUESTS_CA_BUNDLE", &ca)
        .kill_on_drop(true);
    let output = tokio::time::timeout(Duration::from_secs(300), command.output())
        .await
        .expect("SDK script finished in time")
        .expect("SDK script ran");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    assert!(
        output.status.success() && stdout.contains("SDK COMPATIBLE"),
        "SDK disagrees with the emulator:\n{stdout}\n{stderr}"
    );
    assert!(
        !stderr.contains(SECRET) && !stdout.contains(SECRET),
        "the webhook secret leaked into the SDK's output"
    );
    portal.shutdown().await;
    receiver.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_python_sdk_runs_a_local_application() {
    b24_testkit::install_crypto_provider();
    let Some(python) = tokio::task::spawn_blocking(sdk_python).await.unwrap() else {
        return;
    };
    const CLIENT_ID: &str = "local.sdk0123456789.00000001";
    const CLIENT_SECRET: &str = "sdkCl1entS3cret";
    let receiver = Receiver::start().await;
    let portal = Portal::builder()
        .domain("sdk.test")
        .application(CLIENT_ID, CLIENT_SECRET, &["crm", "bizproc"])
        .tls_self_signed()
        .start()
        .await
        .expect("portal starts");
    let installed = portal
        .admin()
        .install_application(&receiver.url("/app/install"))
        .await
        .expect("install");
    let scratch = tempfile::tempdir().unwrap();
    let ca = write_ca(
        scratch.path(),
        portal
            .certificate_pem()
            .expect("TLS portal has a certificate"),
    );
    let install_body = scratch.path().join("install.form");
    std::fs::write(&install_body, &installed.delivery.body).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sdk/app_compat.py");
    let mut command = tokio::process::Command::new(&python);
    command
        .arg(&script)
        .arg(format!("127.0.0.1:{}", portal.addr().port()))
        .arg(portal.url())
        .arg(CLIENT_ID)
        .arg(CLIENT_SECRET)
        .arg(&install_body)
        .arg(receiver.url(""))
        .env("REQUESTS_CA_BUNDLE", &ca)
        .kill_on_drop(true);
    let output = tokio::time::timeout(Duration::from_secs(300), command.output())
        .await
        .expect("SDK script finished in time")
        .expect("SDK script ran");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    assert!(
        output.status.success() && stdout.contains("SDK APP COMPATIBLE"),
        "SDK disagrees with the emulator's application mode:\n{stdout}\n{stderr}"
    );
    for secret in [CLIENT_SECRET, installed.tokens.refresh_token.as_str()] {
        assert!(
            !stderr.contains(secret) && !stdout.contains(secret),
            "a secret leaked into the SDK's output"
        );
    }
    portal.shutdown().await;
    receiver.stop();
}
