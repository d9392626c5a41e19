//! Runs the real `b24-demo` binary, as a newcomer would, and checks that it
//! finishes with exit code 0 and tells each step of the data path.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// Only there so that a broken demo fails the test instead of hanging it.
const LIMIT: Duration = Duration::from_secs(180);

/// The running binary; killed if a failed assertion leaves it running.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn demo(args: &[&str]) -> Running {
    Running(
        Command::new(env!("CARGO_BIN_EXE_b24-demo"))
            .args(args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("b24-demo starts"),
    )
}

/// Waits for the child; kills it if it outlives [`LIMIT`].
fn finish(mut running: Running) -> (Option<i32>, String, String) {
    let child = &mut running.0;
    // The caller may have taken stdout to read it as it came.
    let stdout = child.stdout.take();
    let mut stderr = child.stderr.take().unwrap();
    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        let mut out = String::new();
        let mut err = String::new();
        if let Some(mut stdout) = stdout {
            let _ = stdout.read_to_string(&mut out);
        }
        let _ = stderr.read_to_string(&mut err);
        let _ = sender.send((out, err));
    });
    let (out, err) = match receiver.recv_timeout(LIMIT) {
        Ok(pair) => pair,
        Err(_) => panic!("b24-demo did not finish within {LIMIT:?}"),
    };
    let status = child.wait().expect("b24-demo exits");
    (status.code(), out, err)
}

fn assert_tells(out: &str, expected: &[&str]) {
    for line in expected {
        assert!(out.contains(line), "missing {line:?} in the output:\n{out}");
    }
}

/// Webhook secrets and the application token live in the demo's files
/// only; none may be printed.
fn assert_no_secrets(text: &str) {
    for secret in [
        "demoSourceHook7f3a",
        "demoTargetHook91c2",
        "demoAppToken5d8e0b",
        "/rest/1/",
    ] {
        assert!(!text.contains(secret), "{secret} printed:\n{text}");
    }
}

#[test]
fn the_demo_runs_end_to_end_and_exits_0() {
    let (code, out, err) = finish(demo(&[]));
    assert_eq!(code, Some(0), "stdout:\n{out}\nstderr:\n{err}");
    assert_tells(
        &out,
        &[
            "source deal #1 → event → queue server → edge (admitted: 127.0.0.1 is listed) → relay: HTTP 200",
            "source deal #1 \"Boiler room\" (C2:PREPARATION) → target deal #",
            "stage C3:RECEIVED, 150000 RUB, products: Boiler ×1, Pipe, 1 m ×10",
            "\"Office fit-out\"",
            "\"Annual support\"",
            "and wrote 3 timeline comments back on the source deals",
            "from 127.0.0.2 → 403 Forbidden",
            "table inet bitrix24 {",
            "127.0.0.1,",
            "b24_edge_denials_total{reason=\"not_in_nodes\"} 1",
            "b24_relay_transfers_total{route=\"partner-to-hq\",result=\"created\"} 3",
            "the certificate expires in 90 days",
            "Done: 3 deals transferred exactly once, the unlisted address refused with 403.",
        ],
    );
    assert_no_secrets(&out);
    assert_no_secrets(&err);
}

#[test]
fn serve_keeps_running_until_interrupted() {
    let mut running = demo(&["--serve"]);
    let stdout = running.0.stdout.take().unwrap();
    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        let mut told = String::new();
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            told.push_str(&line);
            told.push('\n');
            if line.contains("Press Ctrl-C to stop") {
                let _ = sender.send(told.clone());
            }
        }
        let _ = sender.send(told);
    });
    let told = match receiver.recv_timeout(LIMIT) {
        Ok(told) => told,
        Err(_) => panic!("b24-demo --serve did not get to its curl commands within {LIMIT:?}"),
    };
    assert!(told.contains("Press Ctrl-C to stop"), "{told}");
    assert!(told.contains("curl -s --interface 127.0.0.2"), "{told}");
    assert_no_secrets(&told);
    // Still serving: it waits for Ctrl-C rather than exiting.
    assert!(
        running.0.try_wait().unwrap().is_none(),
        "exited without Ctrl-C"
    );
    let interrupted = Command::new("kill")
        .args(["-INT", &running.0.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(interrupted.success());
    let (code, _, err) = finish(running);
    assert_eq!(code, Some(0), "stderr:\n{err}");
}

#[test]
fn version_names_the_git_revision() {
    let output = Command::new(env!("CARGO_BIN_EXE_b24-demo"))
        .arg("--version")
        .output()
        .expect("b24-demo runs");
    assert!(output.status.success());
    let text = String::from_utf8_lossy(&output.stdout);
    // "b24-demo 0.1.0 (abc1234)", or "(unknown)" outside a git checkout.
    let revision = text
        .trim()
        .strip_prefix(concat!("b24-demo ", env!("CARGO_PKG_VERSION"), " ("))
        .and_then(|rest| rest.strip_suffix(')'))
        .unwrap_or_else(|| panic!("unexpected --version output: {text}"));
    assert!(
        revision == "unknown" || revision.chars().all(|c| c.is_ascii_hexdigit()),
        "{text}"
    );
}
