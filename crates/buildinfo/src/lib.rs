//! Build-script helper: records the git revision a binary is built from, so
//! that every `--version` in the workspace says which commit it is.
//!
//! In a crate's `build.rs` (with `b24-buildinfo` as a build-dependency):
//! ```no_run
//! b24_buildinfo::emit_git_revision();
//! ```
//! and in the crate: `env!("B24_GIT_REVISION")`.

use std::process::Command;

/// The name of the environment variable the revision is exported under.
pub const VARIABLE: &str = "B24_GIT_REVISION";

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

/// Prints the cargo directives that set [`VARIABLE`] and rebuild the string
/// when HEAD moves (a commit or a checkout).
pub fn emit_git_revision() {
    println!("cargo:rustc-env={VARIABLE}={}", git_revision());
    if let Some(dir) = git(&["rev-parse", "--absolute-git-dir"]) {
        println!("cargo:rerun-if-changed={dir}/HEAD");
        if let Some(reference) = git(&["symbolic-ref", "-q", "HEAD"]) {
            println!("cargo:rerun-if-changed={dir}/{reference}");
        }
    }
    println!("cargo:rerun-if-changed=build.rs");
}
