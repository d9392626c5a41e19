//! The real `b24-edge` binary: `--version`, `--check-config`, config errors,
//! SIGHUP certificate reload and SIGTERM drain, and no secrets in its logs.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;

use common::*;
use tokio::process::{Child, Command};

const BINARY: &str = env!("CARGO_BIN_EXE_b24-edge");

struct Running {
    child: Child,
    https: std::net::SocketAddr,
    admin: std::net::SocketAddr,
    log: PathBuf,
}

impl Running {
    fn signal(&self, signal: &str) {
        b24_testkit::process::signal(self.child.id().expect("still running"), signal);
    }

    fn log(&self) -> String {
        read_log(&self.log)
    }
}

/// Starts the binary with `config` (its listeners on port 0 unless the
/// test chose), and waits until it says it started: the addresses come
/// from that line, so no port is picked, freed and raced for.
async fn run_edge(dir: &Path, config: &EdgeToml) -> Running {
    let path = config.write(dir);
    let log = dir.join("edge.log");
    let child = Command::new(BINARY)
        .arg("--config")
        .arg(&path)
        .env("RUST_LOG", "debug")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut child = child;
    let mut started = None;
    eventually("the binary says it started", || {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("b24-edge exited at start-up ({status}): {}", read_log(&log));
        }
        started = started_addresses(&read_log(&log));
        let done = started.is_some();
        async move { done }
    })
    .await;
    let (https, admin) = started.expect("waited for it");
    let running = Running {
        child,
        https,
        admin,
        log,
    };
    let healthz = reqwest::get(format!("http://{admin}/healthz"))
        .await
        .unwrap();
    assert_eq!(healthz.status(), 200);
    running
}

fn read_log(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// The first listen address and the admin address from the binary's
/// "b24-edge started" line (logged once every socket is bound).
fn started_addresses(log: &str) -> Option<(std::net::SocketAddr, std::net::SocketAddr)> {
    let line = log.lines().find(|l| l.contains("b24-edge started"))?;
    let listen = line.split(" listen=[").nth(1)?;
    let listen = listen.split([',', ']']).next()?.parse().ok()?;
    let admin = line.split(" metrics_listen=").nth(1)?;
    let admin = admin.split_whitespace().next()?.parse().ok()?;
    Some((listen, admin))
}

/// A nodes source that is never reachable, with a secret in its URL that
/// the logs must not show.
const SOURCE: &str = "http://127.0.0.1:9/webhook/app.json?token=s3cret-token";

/// [`SOURCE`] and a cache in `dir` holding 127.0.0.1; `route` the only
/// route.
fn routed_config(certs: &TestCerts, dir: &Path, route: EdgeRoute) -> EdgeToml {
    edge_config(certs)
        .nodes_source(SOURCE)
        .nodes_cache(&NodeListFile::write(&dir.join("cache.json")))
        .route(route)
}

/// [`routed_config`] with `/` for the nodes only, going to `upstream`.
fn binary_config(certs: &TestCerts, dir: &Path, upstream: &Upstream) -> EdgeToml {
    routed_config(certs, dir, EdgeRoute::new("/", &upstream.url()))
}

/// A cache file holding 127.0.0.1, for a source that is never reachable.
struct NodeListFile;

impl NodeListFile {
    fn write(path: &Path) -> PathBuf {
        let list = b24_nodes::NodeList::parse(
            nodes_json(&["127.0.0.1"]).as_bytes(),
            &b24_nodes::Limits::allowing_special(),
        )
        .unwrap();
        // The source as the cache names it (query hidden): the config's.
        let source: b24_nodes::Source = SOURCE.parse().unwrap();
        let mut record = b24_nodes::CacheRecord::new(source.to_string());
        record.set_list(&list);
        record.store(path).unwrap();
        path.to_owned()
    }
}

#[tokio::test]
async fn version_names_the_revision() {
    let output = Command::new(BINARY)
        .arg("--version")
        .output()
        .await
        .unwrap();
    assert!(output.status.success());
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(
        text.starts_with(&format!("b24-edge {} (", env!("CARGO_PKG_VERSION"))),
        "{text}"
    );
    assert!(text.trim_end().ends_with(')'), "{text}");
}

#[tokio::test]
async fn check_config_accepts_good_and_names_the_bad_key() {
    init();
    let dir = tempfile::tempdir().unwrap();
    let certs = TestCerts::new(dir.path());
    let upstream = Upstream::start().await;
    // Fixed ports: --check-config binds nothing.
    let good = |route: EdgeRoute| {
        routed_config(&certs, dir.path(), route)
            .listen("127.0.0.1:8443")
            .metrics_listen("127.0.0.1:9901")
    };
    let nodes_route = || EdgeRoute::new("/", &upstream.url());
    let path = good(nodes_route()).write(dir.path());
    let output = Command::new(BINARY)
        .arg("--config")
        .arg(&path)
        .arg("--check-config")
        .output()
        .await
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    let cases = [
        (
            good(nodes_route()).nodes_key("refresh", "10s"),
            "nodes.refresh",
        ),
        (good(nodes_route().allow(&["everyone"])), "route[0].allow"),
        (good(nodes_route()).listen("localhost"), "server.listen"),
        (
            good(nodes_route()).server("tls_key", "/nonexistent/key.pem"),
            "/nonexistent/key.pem",
        ),
    ];
    for (config, key) in cases {
        config.write(dir.path());
        let output = Command::new(BINARY)
            .arg("--config")
            .arg(&path)
            .arg("--check-config")
            .output()
            .await
            .unwrap();
        assert!(!output.status.success(), "{key}");
        let stderr = String::from_utf8(output.stderr).unwrap();
        assert!(stderr.contains(key), "{key}: {stderr}");
        // One message, then at most the offending line and its marker.
        let lines: Vec<&str> = stderr.trim_end().lines().collect();
        assert!(lines[0].contains(key), "the first line names it: {stderr}");
        assert!(
            lines.len() <= 3 && lines[1..].iter().all(|l| l.starts_with("  ")),
            "one message: {stderr}"
        );
        assert!(!stderr.contains("s3cret"), "{stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_certificate_for_new_connections() {
    init();
    let dir = tempfile::tempdir().unwrap();
    let mut certs = TestCerts::new(dir.path());
    let upstream = Upstream::start().await;
    // The file watcher is slowed down so that only SIGHUP can explain a reload.
    let config = binary_config(&certs, dir.path(), &upstream).server("tls_reload_poll", "1h");
    let edge = run_edge(dir.path(), &config).await;
    let first = certs.leaf_der.clone();

    let tls = tls_over(&certs, tcp_from("127.0.0.1", edge.https).await)
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.peer_certificates().unwrap()[0], first);
    let mut old_conn = h1_over(tls).await;
    assert_eq!(send_get(&mut old_conn, "/before").await.0, 200);

    certs.issue(2032);
    let second = certs.leaf_der.clone();
    let tls = tls_over(&certs, tcp_from("127.0.0.1", edge.https).await)
        .await
        .unwrap();
    assert_eq!(
        tls.get_ref().1.peer_certificates().unwrap()[0],
        first,
        "no reload without a signal"
    );

    edge.signal("HUP");
    eventually("new connections get the new certificate", || async {
        let tls = tls_over(&certs, tcp_from("127.0.0.1", edge.https).await)
            .await
            .unwrap();
        tls.get_ref().1.peer_certificates().unwrap()[0] == second
    })
    .await;
    assert_eq!(
        send_get(&mut old_conn, "/after").await.0,
        200,
        "the old connection still works"
    );
    let metrics = reqwest::get(format!("http://{}/metrics", edge.admin))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(
        sample(&metrics, "b24_edge_certificate_expiry_timestamp_seconds"),
        1_956_528_000.0
    );
    let mut edge = edge;
    edge.signal("TERM");
    let status = tokio::time::timeout(GENEROUS, edge.child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success());
    assert!(edge.log().contains("certificate reloaded"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_the_request_in_flight_and_exits_0() {
    init();
    let dir = tempfile::tempdir().unwrap();
    let certs = TestCerts::new(dir.path());
    let upstream = Upstream::start().await;
    // Unlisted clients get a 403 after TLS here, so that a denied request
    // whose path carries a webhook secret is logged, but without the path.
    let config = binary_config(&certs, dir.path(), &upstream).server("refuse_before_tls", false);
    let mut edge = run_edge(dir.path(), &config).await;

    let stranger = tls_over(&certs, tcp_from("127.0.0.3", edge.https).await)
        .await
        .unwrap();
    let mut stranger = h1_over(stranger).await;
    let (status, _) = send_get(&mut stranger, "/rest/1/s3cret-webhook-key/crm.deal.add").await;
    assert_eq!(status, 403);

    let tls = tls_over(&certs, tcp_from("127.0.0.1", edge.https).await)
        .await
        .unwrap();
    // What the log is checked for below has happened before the signal.
    eventually("the start-up refresh failed", || async {
        edge.log().contains("nodes refresh failed")
    })
    .await;
    let mut conn = h1_over(tls).await;
    // The upstream holds its answer until the test lets it go: the request
    // is in flight when the signal comes, whatever the machine's speed.
    let in_flight = tokio::spawn(async move { send_get(&mut conn, "/hold").await });
    eventually("the request reached the upstream", || async {
        upstream.count() == 1
    })
    .await;

    edge.signal("TERM");
    eventually("b24-edge took the signal", || async {
        edge.log().contains("finishing in-flight requests")
    })
    .await;
    assert!(!in_flight.is_finished(), "the request is still in flight");
    upstream.release_held();
    let (status, body) = tokio::time::timeout(GENEROUS, in_flight)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((status, body.as_str()), (200, "upstream saw /hold"));
    let exit = tokio::time::timeout(GENEROUS, edge.child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(exit.success(), "{exit:?}");
    // Once stopped, nothing accepts connections.
    assert!(tokio::net::TcpStream::connect(edge.https).await.is_err());

    let log = edge.log();
    // The source URL's token never reaches the log, even at debug level and
    // with the source failing.
    assert!(log.contains("nodes refresh failed"), "{log}");
    assert!(log.contains("request denied"), "{log}");
    assert!(!log.contains("s3cret"), "{log}");
}

/// Issue 10, item 6: one idle h2 client made every SIGTERM wait the whole
/// shutdown_timeout. Idle connections of every kind are closed at once
/// (h2 with GOAWAY) and the process exits long before the hour.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_idle_connections_exits_at_once() {
    init();
    let dir = tempfile::tempdir().unwrap();
    let certs = TestCerts::new(dir.path());
    let upstream = Upstream::start().await;
    let config = binary_config(&certs, dir.path(), &upstream)
        .server("shutdown_timeout", "1h")
        .server("idle_timeout", "1h")
        .server("header_timeout", "1h");
    let mut edge = run_edge(dir.path(), &config).await;
    // An h2 client idle after one request…
    let tls = tls_from(&certs, "127.0.0.1", edge.https, &[b"h2"])
        .await
        .unwrap();
    let (mut h2, h2_conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tls),
    )
    .await
    .unwrap();
    let h2_conn = tokio::spawn(h2_conn);
    let request = http::Request::get(format!("https://localhost:{}/a", edge.https.port()))
        .body(http_body_util::Full::<bytes::Bytes>::default())
        .unwrap();
    assert_eq!(h2.send_request(request).await.unwrap().status(), 200);
    // …an HTTP/1.1 one, and TLS connections that never sent a request.
    let mut h1 = h1_over(
        tls_from(&certs, "127.0.0.1", edge.https, &[b"http/1.1"])
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(send_get(&mut h1, "/b").await.0, 200);
    let _silent_h2 = tls_from(&certs, "127.0.0.1", edge.https, &[b"h2"])
        .await
        .unwrap();
    let _silent = tls_from(&certs, "127.0.0.1", edge.https, &[])
        .await
        .unwrap();

    edge.signal("TERM");
    let exit = tokio::time::timeout(GENEROUS, edge.child.wait())
        .await
        .expect("b24-edge waited for its idle connections")
        .unwrap();
    assert!(exit.success(), "{exit:?}");
    // The h2 client was told (GOAWAY) and its connection ended cleanly.
    tokio::time::timeout(GENEROUS, h2_conn)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(edge.log().contains("stopped"), "{}", edge.log());
}

/// An h2 client that never opens its window for a response held the
/// request in flight, so SIGTERM waited the whole shutdown_timeout. Its
/// stream is reset at send_timeout and the process exits, drained.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_a_stream_given_no_window_exits_at_send_timeout() {
    init();
    let dir = tempfile::tempdir().unwrap();
    let certs = TestCerts::new(dir.path());
    let upstream = Upstream::start().await;
    let config = binary_config(&certs, dir.path(), &upstream)
        .server("shutdown_timeout", "1h")
        .server("send_timeout", "2s");
    let mut edge = run_edge(dir.path(), &config).await;
    // A listed client (127.0.0.1 is in the list) with no window at all.
    let mut stingy = StingyH2::connect(&certs, "127.0.0.1", edge.https, 0).await;
    let (status, body) = stingy
        .get(&format!("https://localhost:{}/big", edge.https.port()))
        .await;
    assert_eq!(status, 200);

    edge.signal("TERM");
    let exit = tokio::time::timeout(GENEROUS, edge.child.wait())
        .await
        .expect("b24-edge waited for the stalled stream")
        .unwrap();
    assert!(exit.success(), "{exit:?}");
    let log = edge.log();
    assert!(log.contains("stopped"), "{log}");
    assert!(!log.contains("still open at the shutdown timeout"), "{log}");
    let (received, end) = read_without_window(body).await;
    assert_eq!(received, 0);
    assert_ne!(end, StreamEnd::Complete);
    assert_ne!(end, StreamEnd::StillOpen);
    // The upstream connection that carried the answer was let go too.
    eventually("the upstream connection is closed", || {
        let closed = upstream.open_connections() == 0;
        async move { closed }
    })
    .await;
}

/// Issue 10, item 7: a second b24-edge on the same `listen` address started
/// silently and the kernel split the connections (SO_REUSEPORT). It must
/// refuse to start, saying why, and leave the first one serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_instance_on_a_served_address_refuses_to_start() {
    init();
    let dir = tempfile::tempdir().unwrap();
    let certs = TestCerts::new(dir.path());
    let upstream = Upstream::start().await;
    let config = binary_config(&certs, dir.path(), &upstream);
    let first = run_edge(dir.path(), &config).await;
    // The same listen address, another admin port.
    let second_dir = dir.path().join("second");
    std::fs::create_dir(&second_dir).unwrap();
    let path = config.listen(first.https).write(&second_dir);
    let output = tokio::time::timeout(
        GENEROUS,
        Command::new(BINARY).arg("--config").arg(&path).output(),
    )
    .await
    .expect("the second instance did not stop")
    .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&first.https.to_string()) && stderr.contains("already serving"),
        "{stderr}"
    );
    // Every connection still goes to the first one.
    for _ in 0..20 {
        let mut conn = h1_over(
            tls_from(&certs, "127.0.0.1", first.https, &[b"http/1.1"])
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(send_get(&mut conn, "/still-here").await.0, 200);
    }
    assert_eq!(upstream.count(), 20);
}
