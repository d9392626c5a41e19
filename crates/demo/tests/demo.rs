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
    // The configurations it ran with were printed, and went with its
    // temporary directory.
    let line = out
        .lines()
        .find(|l| l.trim_start().starts_with("configurations"))
        .unwrap_or_else(|| panic!("no configurations line:\n{out}"));
    let relay_toml = line
        .split_whitespace()
        .find(|w| w.ends_with("relay.toml"))
        .expect("relay.toml path");
    assert!(line.contains("edge.toml"), "{line}");
    assert!(
        !std::path::Path::new(relay_toml).exists(),
        "{relay_toml} left behind"
    );
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

/// A base port with the demo's seven ports free on 127.0.0.1 right now
/// (not a fixed port: found at run time, released before the demo binds).
fn free_port_base() -> u16 {
    let start = 20_000 + (std::process::id() % 2_000) as u16 * 10;
    (0..400)
        .map(|step| start + step * 7)
        .find(|&base| {
            let held: Vec<_> = (0..b24_demo::PORTS)
                .map_while(|offset| std::net::TcpListener::bind(("127.0.0.1", base + offset)).ok())
                .collect();
            held.len() == usize::from(b24_demo::PORTS)
        })
        .expect("seven free ports")
}

#[test]
fn serve_on_fixed_ports_writes_its_configurations_and_logs_what_it_relays() {
    let base = free_port_base();
    let dir = tempfile::tempdir().unwrap();
    let kept = dir.path().join("demo");
    let mut running = demo(&[
        "--serve",
        "--port-base",
        &base.to_string(),
        "--dir",
        kept.to_str().unwrap(),
    ]);
    let stdout = running.0.stdout.take().unwrap();
    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if sender.send(line).is_err() {
                break;
            }
        }
    });
    let mut told = String::new();
    let wait_for = |told: &mut String, what: &str| {
        while !told.contains(what) {
            match receiver.recv_timeout(LIMIT) {
                Ok(line) => {
                    told.push_str(&line);
                    told.push('\n');
                }
                Err(_) => panic!("no {what:?} within {LIMIT:?}:\n{told}"),
            }
        }
    };
    wait_for(&mut told, "Press Ctrl-C to stop");
    // The files are where it said, with the ports it was given, and the
    // relay's is a configuration b24-relay loads (as `jobs --config` does).
    let relay_toml = kept.join("relay.toml");
    let edge_toml = kept.join("edge.toml");
    assert!(told.contains(&relay_toml.display().to_string()), "{told}");
    let relay_text = std::fs::read_to_string(&relay_toml).unwrap();
    assert!(
        relay_text.contains(&format!("listen = \"127.0.0.1:{}\"", base + 2)),
        "{relay_text}"
    );
    let edge_text = std::fs::read_to_string(&edge_toml).unwrap();
    assert!(
        edge_text.contains(&format!("listen = \"127.0.0.1:{}\"", base + 4)),
        "{edge_text}"
    );
    b24_relay::Config::load(&relay_toml).expect("the written relay.toml loads");
    b24_edge::Config::load(&edge_toml).expect("the written edge.toml loads");
    assert!(
        told.contains(&format!(
            "b24-relay jobs list --config {}",
            relay_toml.display()
        )),
        "{told}"
    );

    // An event through the queue-server stand-in (port N+6) is relayed and
    // logged, without its token.
    let queue = std::net::SocketAddr::from(([127, 0, 0, 1], base + 6));
    let mut stream = std::net::TcpStream::connect(queue).unwrap();
    let body = "event=ONCRMDEALUPDATE&data[FIELDS][ID]=1&auth[application_token]=demoAppToken5d8e0b&auth[domain]=partner.test";
    use std::io::Write;
    write!(
        stream,
        "POST /hook/event/partner HTTP/1.1\r\nhost: x\r\ncontent-type: application/x-www-form-urlencoded\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    wait_for(
        &mut told,
        "relayed POST /hook/event/partner (ONCRMDEALUPDATE, deal 1) → edge: 200 OK",
    );
    assert_no_secrets(&told);

    b24_testkit::process::signal_child(&running.0, "TERM");
    let (code, _, err) = finish(running);
    assert_eq!(code, Some(0), "stderr:\n{err}");
    assert!(relay_toml.exists(), "--dir files are kept");
}
