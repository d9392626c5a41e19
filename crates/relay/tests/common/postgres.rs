//! PostgreSQL for tests: the cluster scripts/test started (its URL in
//! `B24_TEST_POSTGRES`), or one started here with scripts/postgres. In CI
//! (`CI=true`, or `B24_REQUIRE_POSTGRES_TESTS=1`) a missing PostgreSQL fails
//! the test; elsewhere the test says loudly that it skips.

use std::path::{Path, PathBuf};
use std::process::Command;

pub struct TestPostgres {
    pub url: String,
    /// The data directory of a cluster this test started (stopped on drop).
    own_dir: Option<PathBuf>,
}

fn required() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
        || std::env::var("B24_REQUIRE_POSTGRES_TESTS").is_ok_and(|v| v == "1")
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/postgres")
}

fn unavailable(test: &str, why: &str) -> Option<TestPostgres> {
    if required() {
        panic!("{test} must run here (CI) but PostgreSQL is not available: {why}");
    }
    eprintln!(
        "SKIPPED {test}: PostgreSQL is not available ({why}); run scripts/install-deps test, or scripts/test"
    );
    None
}

impl TestPostgres {
    /// The shared test cluster, else a private one.
    pub fn get(test: &str) -> Option<Self> {
        match std::env::var("B24_TEST_POSTGRES") {
            Ok(url) if !url.is_empty() => Some(Self { url, own_dir: None }),
            _ => Self::private(test),
        }
    }

    /// A cluster of this test's own (one the test may restart).
    pub fn private(test: &str) -> Option<Self> {
        let parent = tempfile::Builder::new()
            .prefix("b24-relay-pg.")
            .tempdir()
            .unwrap()
            .keep();
        let dir = parent.join("pg");
        let output = Command::new(script())
            .arg("start")
            .arg(&dir)
            .output()
            .expect("scripts/postgres runs");
        if output.status.code() == Some(3) {
            let _ = std::fs::remove_dir_all(&parent);
            return unavailable(test, "its server binaries are not installed");
        }
        assert!(
            output.status.success(),
            "scripts/postgres start failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let url = String::from_utf8_lossy(&output.stdout)
            .lines()
            .find_map(|l| l.strip_prefix("B24_TEST_POSTGRES="))
            .expect("the script prints the URL")
            .to_owned();
        Some(Self {
            url,
            own_dir: Some(dir),
        })
    }

    /// Stops the server (fast: connections cut) and starts it again.
    pub fn restart(&self) {
        let dir = self
            .own_dir
            .as_ref()
            .expect("only a private cluster restarts");
        let status = Command::new(script())
            .arg("restart")
            .arg(dir)
            .status()
            .unwrap();
        assert!(status.success(), "scripts/postgres restart");
    }

    /// `store = { … }` for a relay.toml: this database, a schema of its own.
    pub fn store_line(&self, schema: &str) -> String {
        format!(
            "store = {{ url = \"{}\", schema = \"{schema}\" }}",
            self.url
        )
    }
}

impl Drop for TestPostgres {
    fn drop(&mut self) {
        if let Some(dir) = &self.own_dir {
            let _ = Command::new(script()).arg("stop").arg(dir).status();
            if let Some(parent) = dir.parent() {
                let _ = std::fs::remove_dir_all(parent);
            }
        }
    }
}

/// A schema name no other test uses.
pub fn unique_schema(test: &str) -> String {
    let clean: String = test
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .take(20)
        .collect::<String>()
        .to_ascii_lowercase();
    format!(
        "t_{clean}_{}_{:x}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos()
    )
}
