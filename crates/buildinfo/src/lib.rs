//! Build-script helper: the one place the workspace's `--version` string is
//! made — the crate's version and the git revision it was built from — so
//! that every binary says which commit it is, the same way.
//!
//! In a crate's `build.rs` (with `b24-buildinfo` as a build-dependency):
//! ```no_run
//! b24_buildinfo::emit_git_revision();
//! ```
//! and in the crate: `env!("B24_VERSION")` (`0.1.0 (1a2b3c4d5e)`) for clap's
//! `version`, or `env!("B24_GIT_REVISION")` for the revision alone.

use std::path::PathBuf;
use std::process::Command;

/// The environment variable the revision is exported under.
pub const VARIABLE: &str = "B24_GIT_REVISION";
/// The environment variable the whole version string is exported under.
pub const VERSION_VARIABLE: &str = "B24_VERSION";

fn git(args: &[&str]) -> Option<String> {
    let output = Command::new("git").args(args).output().ok()?;
    if !output.status.success() {
        return None;
    }
    let text = String::from_utf8(output.stdout).ok()?.trim().to_owned();
    (!text.is_empty()).then_some(text)
}

/// The short revision of HEAD, or "unknown" outside a git checkout (a
/// source tarball, a container build without .git).
pub fn git_revision() -> String {
    git(&["rev-parse", "--short=10", "HEAD"]).unwrap_or_else(|| "unknown".into())
}

/// `VERSION (REVISION)`, the form every `--version` prints.
pub fn version_string(package_version: &str, revision: &str) -> String {
    format!("{package_version} ({revision})")
}

/// An absolute path inside the git directory, as git resolves it: per
/// worktree for `HEAD`, in the common directory for refs.
fn git_path(name: &str) -> Option<PathBuf> {
    git(&["rev-parse", "--path-format=absolute", "--git-path", name]).map(PathBuf::from)
}

/// The files whose change means HEAD moved: HEAD itself and the branch it
/// points to (the loose ref, or `packed-refs` when the ref is packed).
/// Only existing files are named: cargo reruns a build script on every
/// build while a watched file is missing, which would rebuild the crate
/// each time (a worktree's refs live in the common directory, not next to
/// its HEAD).
fn watched_files() -> Vec<PathBuf> {
    let mut files = Vec::new();
    if let Some(head) = git_path("HEAD") {
        files.push(head);
    }
    if let Some(reference) = git(&["symbolic-ref", "-q", "HEAD"]) {
        match git_path(&reference) {
            Some(loose) if loose.is_file() => files.push(loose),
            _ => files.extend(git_path("packed-refs")),
        }
    }
    files.retain(|f| f.is_file());
    files
}

/// Prints the cargo directives that set [`VARIABLE`] and [`VERSION_VARIABLE`]
/// and rebuild them when HEAD moves (a commit or a checkout).
pub fn emit_git_revision() {
    let revision = git_revision();
    let package_version = std::env::var("CARGO_PKG_VERSION").unwrap_or_else(|_| "0.0.0".into());
    println!("cargo:rustc-env={VARIABLE}={revision}");
    println!(
        "cargo:rustc-env={VERSION_VARIABLE}={}",
        version_string(&package_version, &revision)
    );
    for file in watched_files() {
        println!("cargo:rerun-if-changed={}", file.display());
    }
    println!("cargo:rerun-if-changed=build.rs");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_version_string_names_the_revision() {
        assert_eq!(version_string("0.1.0", "1a2b3c"), "0.1.0 (1a2b3c)");
    }

    #[test]
    fn only_existing_files_are_watched() {
        // In this repository's checkout (or worktree), HEAD exists; outside
        // git the list is empty rather than naming missing files.
        for file in watched_files() {
            assert!(file.is_absolute() && file.is_file(), "{}", file.display());
        }
    }
}
