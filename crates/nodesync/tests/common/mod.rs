//! Helpers shared by nodesync's integration tests.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Output};

/// Whether tests that need root and kernel tools must run (CI sets this) or
/// may skip with a message.
pub fn root_tests_required() -> bool {
    std::env::var_os("B24_REQUIRE_ROOT_TESTS").is_some_and(|v| v == "1")
}

/// True when the test can use `tool` as root; otherwise prints why it skips
/// (or panics when CI requires these tests).
pub fn can_run_as_root(test: &str, tools: &[&str]) -> bool {
    let is_root = unsafe_free_euid() == 0;
    let missing: Vec<&str> = tools
        .iter()
        .copied()
        .filter(|t| nodesync::apply::find_tool(t).is_none())
        .collect();
    if is_root && missing.is_empty() {
        return true;
    }
    let why = if !is_root {
        "not running as root".to_string()
    } else {
        format!("missing tools: {}", missing.join(", "))
    };
    if root_tests_required() {
        panic!("{test} must run here (B24_REQUIRE_ROOT_TESTS=1) but cannot: {why}");
    }
    eprintln!("SKIPPED {test}: {why} (run .ci/run as root to include it)");
    false
}

fn unsafe_free_euid() -> u32 {
    // /proc/self/status has "Uid: real effective saved fs".
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(u32::MAX)
}

/// Runs the real nodesync binary.
pub fn nodesync(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_nodesync"))
        .args(args)
        .output()
        .expect("run nodesync")
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `nft -c -f FILE`: the kernel's own parser and validator, without loading.
pub fn nft_check(path: &Path) -> Result<(), String> {
    let out = Command::new(nodesync::apply::find_tool("nft").unwrap())
        .args(["-c", "-f"])
        .arg(path)
        .output()
        .unwrap();
    if out.status.success() {
        Ok(())
    } else {
        Err(text(&out.stderr))
    }
}

pub fn workspace_file(rel: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(rel)
}
