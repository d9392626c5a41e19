//! A store that knows it is healthy, on the real binary: an empty, damaged,
//! lost or read-only store is refused at start with what to do; a small
//! volume filled up gives 503, never a wedge: intake recovers once space is
//! freed, and after a restart. Tests that mount a volume need root; CI runs
//! them (B24_REQUIRE_ROOT_TESTS=1), elsewhere they skip loudly.

mod common;

use std::io::{Seek, SeekFrom, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use b24_relay::Store;
use common::client;

/// A relay.toml whose portals are never reached (a closed local port): the
/// store is what these tests look at.
fn config(dir: &Path, store: &Path, port: u16) -> PathBuf {
    std::fs::write(dir.join("hook"), "http://127.0.0.1:9/rest/1/s3cr3t/").unwrap();
    std::fs::write(dir.join("token"), "app-token-123").unwrap();
    let text = format!(
        r#"
listen = "127.0.0.1:{port}"
store = "sqlite://{store}"
workers = 1
retry_base_delay = "1s"

[portal.partner]
webhook = {{ file = "{dir}/hook" }}
application_token = {{ file = "{dir}/token" }}

[portal.esb]
webhook = {{ file = "{dir}/hook" }}

[[route]]
name = "partner-to-esb"
from = "partner"
to = "esb"
when = {{ category = 2, stages = ["C2:PREPARATION"] }}
target = {{ category = 3, stage = "C3:NEW" }}
"#,
        store = store.display(),
        dir = dir.display(),
    );
    let path = dir.join("relay.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn relay_command(config: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_b24-relay"));
    command
        .args(["serve", "--config"])
        .arg(config)
        .env("RUST_LOG", "b24_relay=info");
    command
}

/// Runs `serve` and expects it to refuse to start: returns its stderr.
fn refused_start(mut command: Command) -> String {
    let output = command
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
        .wait_with_output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(
        !output.status.success(),
        "the relay started on a bad store: {stderr}"
    );
    stderr
}

/// A stopped relay's store with `jobs` jobs in it.
async fn store_with_jobs(path: &Path, jobs: i64) {
    let store = Store::open_sqlite(path).await.unwrap();
    let mut queued = tokio::task::JoinSet::new();
    for deal in 1..=jobs {
        let store = store.clone();
        queued.spawn(async move { store.enqueue("partner", deal, "rule").await.unwrap() });
    }
    while queued.join_next().await.is_some() {}
    store.close().await;
}

fn assert_recovery_told(stderr: &str) {
    for needed in ["links rebuild --route", "README"] {
        assert!(stderr.contains(needed), "{needed}: {stderr}");
    }
}

#[tokio::test]
async fn an_empty_store_file_is_refused_not_taken_for_a_new_store() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("relay.db");
    std::fs::write(&store, b"").unwrap();
    let stderr = refused_start(relay_command(&config(dir.path(), &store, free_port())));
    assert!(stderr.contains("empty file (0 bytes)"), "{stderr}");
    assert_recovery_told(&stderr);
    assert_eq!(std::fs::metadata(&store).unwrap().len(), 0, "left as found");
}

#[tokio::test]
async fn a_store_with_garbage_in_the_middle_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("relay.db");
    store_with_jobs(&store, 3000).await;
    let size = std::fs::metadata(&store).unwrap().len();
    assert!(size > 64 * 1024, "{size}");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .open(&store)
        .unwrap();
    file.seek(SeekFrom::Start(size / 2 / 4096 * 4096)).unwrap();
    let garbage: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    file.write_all(&garbage).unwrap();
    file.sync_all().unwrap();
    drop(file);
    let stderr = refused_start(relay_command(&config(dir.path(), &store, free_port())));
    assert!(stderr.contains("is damaged"), "{stderr}");
    assert_recovery_told(&stderr);
    // The CLI refuses it too, rather than reading half a queue.
    let listed = Command::new(env!("CARGO_BIN_EXE_b24-relay"))
        .args(["jobs", "list", "--config"])
        .arg(dir.path().join("relay.toml"))
        .output()
        .unwrap();
    assert!(!listed.status.success());
    assert!(String::from_utf8_lossy(&listed.stderr).contains("is damaged"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_deleted_under_a_killed_relay_is_refused() {
    b24_testkit::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("relay.db");
    let port = free_port();
    let config = config(dir.path(), &store, port);
    let mut relay = relay_command(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}");
    wait_healthy(&url).await;
    assert_eq!(post_event(&url, 7).await, 200);
    relay.kill().unwrap();
    relay.wait().unwrap();
    std::fs::remove_file(&store).unwrap();
    let stderr = refused_start(relay_command(&config));
    assert!(stderr.contains("is missing but"), "{stderr}");
    assert!(stderr.contains("relay.db-wal"), "{stderr}");
    assert!(!store.exists(), "no new store was created");
}

/// A store the relay may read but not write is refused as read-only, both
/// for a file without write permission (an unprivileged user) and on a
/// read-only file system.
#[tokio::test]
async fn a_read_only_store_is_reported_as_read_only() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("relay.db");
    store_with_jobs(&store, 3).await;
    let config = config(dir.path(), &store, free_port());
    let stderr = if is_root() {
        // As root every file is writable: run the relay as `nobody`, the
        // owner of a store without write permission.
        chown_nobody(dir.path());
        std::fs::set_permissions(&store, std::os::unix::fs::PermissionsExt::from_mode(0o400))
            .unwrap();
        let mut command = Command::new("setpriv");
        command
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg(env!("CARGO_BIN_EXE_b24-relay"))
            .args(["serve", "--config"])
            .arg(&config);
        refused_start(command)
    } else {
        std::fs::set_permissions(&store, std::os::unix::fs::PermissionsExt::from_mode(0o400))
            .unwrap();
        refused_start(relay_command(&config))
    };
    assert!(stderr.contains("is read-only"), "{stderr}");
    assert!(stderr.contains("mode 400"), "{stderr}");
    assert!(!stderr.contains("restrict"), "{stderr}");

    if !can_mount("a_read_only_store_is_reported_as_read_only (file system)") {
        return;
    }
    let volume = Volume::mount(256 * 1024);
    let store = volume.path.join("relay.db");
    store_with_jobs(&store, 3).await;
    volume.remount_read_only();
    let stderr = refused_start(relay_command(&self::config(
        dir.path(),
        &store,
        free_port(),
    )));
    assert!(stderr.contains("is read-only"), "{stderr}");
    assert!(
        stderr.to_lowercase().contains("read-only file system"),
        "{stderr}"
    );
}

/// A 2 MiB volume: the WAL alone filled it before (intake 503 forever, also
/// after a restart). Now the WAL is checkpointed and cut, thousands of
/// events fit, and when the volume is really full intake answers 503 until
/// space is freed, then 200 again — live, and after a kill and a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_small_volume_never_wedges_intake() {
    b24_testkit::install_crypto_provider();
    if !can_mount("a_full_small_volume_never_wedges_intake") {
        return;
    }
    let volume = Volume::mount(2 * 1024 * 1024);
    let dir = tempfile::tempdir().unwrap();
    let store = volume.path.join("relay.db");
    let port = free_port();
    let config = config(dir.path(), &store, port);
    let url = format!("http://127.0.0.1:{port}");
    let log = dir.path().join("relay.log");
    let spawn = || {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        relay_command(&config)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap()
    };
    let mut relay = spawn();
    wait_healthy(&url).await;
    let wal = volume.path.join("relay.db-wal");
    let mut largest_wal = 0;
    for deal in 1..=1500 {
        let status = post_event(&url, deal).await;
        assert_eq!(status, 200, "event {deal} on a volume with room");
        largest_wal = largest_wal.max(std::fs::metadata(&wal).map_or(0, |m| m.len()));
    }
    assert!(
        largest_wal <= 1024 * 1024,
        "WAL grew to {largest_wal} bytes"
    );

    // Fill the volume for real: intake must say 503 (never a lying 200).
    let filler = volume.path.join("filler");
    fill(&filler);
    let mut refused = false;
    for deal in 2000..4000 {
        match post_event(&url, deal).await {
            200 => continue,
            503 => {
                refused = true;
                break;
            }
            other => panic!("unexpected status {other}"),
        }
    }
    assert!(refused, "a full volume must give 503");
    std::fs::remove_file(&filler).unwrap();
    wait_accepting(&url, 5000).await;

    // Full again, the relay killed while full, space freed, restarted.
    fill(&filler);
    relay.kill().unwrap();
    relay.wait().unwrap();
    std::fs::remove_file(&filler).unwrap();
    let mut relay = spawn();
    wait_healthy(&url).await;
    wait_accepting(&url, 6000).await;
    relay.kill().unwrap();
    relay.wait().unwrap();
    // Every 200 is in the store.
    let store = Store::open_sqlite(&store).await.unwrap();
    let jobs = store.jobs(None, 100_000).await.unwrap();
    assert!(jobs.iter().any(|j| j.deal_id == 1500));
    assert!(jobs.iter().any(|j| j.deal_id == 6000));
    store.close().await;
}

/// Fills the volume to its last byte.
fn fill(path: &Path) {
    let mut file = std::fs::File::create(path).unwrap();
    let chunk = vec![0u8; 4096];
    while file.write_all(&chunk).is_ok() {}
    let _ = file.write_all(&[0u8; 1]);
    let _ = file.sync_all();
}

async fn wait_accepting(url: &str, deal: i64) {
    let started = Instant::now();
    loop {
        match post_event(url, deal).await {
            200 => return,
            503 => {}
            other => panic!("unexpected status {other}"),
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "intake still refuses after space was freed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn post_event(url: &str, deal: i64) -> u16 {
    static CLIENT: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
    CLIENT
        .get_or_init(client)
        .post(format!("{url}/hook/event/partner"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!(
            "event=ONCRMDEALUPDATE&data[FIELDS][ID]={deal}&auth[application_token]=app-token-123"
        ))
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

async fn wait_healthy(url: &str) {
    let health = format!("{url}/healthz");
    for _ in 0..400 {
        if let Ok(response) = client().get(&health).send().await {
            if response.status() == 200 {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the relay did not come up");
}

fn is_root() -> bool {
    // /proc/self belongs to the process's effective user.
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

fn chown_nobody(dir: &Path) {
    let status = Command::new("chown")
        .args(["-R", "65534:65534"])
        .arg(dir)
        .status()
        .unwrap();
    assert!(status.success());
}

/// Mounting needs root: CI (B24_REQUIRE_ROOT_TESTS=1) must run these tests,
/// elsewhere they skip with a message.
fn can_mount(test: &str) -> bool {
    if is_root() {
        return true;
    }
    if std::env::var_os("B24_REQUIRE_ROOT_TESTS").is_some_and(|v| v == "1") {
        panic!("{test} must run here (B24_REQUIRE_ROOT_TESTS=1) but cannot: not root");
    }
    eprintln!("SKIPPED {test}: mounting a test volume needs root");
    false
}

/// A tmpfs of a given size on a fresh temporary directory, unmounted when
/// dropped.
struct Volume {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl Volume {
    fn mount(bytes: u64) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("volume");
        std::fs::create_dir(&path).unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes},mode=0700")])
            .arg("b24-relay-test")
            .arg(&path)
            .status()
            .unwrap();
        assert!(status.success(), "mount tmpfs");
        Self { _dir: dir, path }
    }

    fn remount_read_only(&self) {
        let status = Command::new("mount")
            .args(["-o", "remount,ro"])
            .arg(&self.path)
            .status()
            .unwrap();
        assert!(status.success(), "remount read-only");
    }
}

impl Drop for Volume {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}
