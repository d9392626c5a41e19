//! Loading rendered rules into the kernel with the system's own tools.
//!
//! Each format is loaded so that a failure leaves the previous rules in
//! place: `nft -f` is one transaction, `ipset restore` stops before the swap,
//! `iptables-restore` commits a table at once. The tool's own error output is
//! returned verbatim: it names the line that failed.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use b24_nodes::NodeList;

use crate::emit::{self, Family, Format, RuleOptions};

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(
        "`{tool}` was not found (looked in PATH, /usr/sbin and /sbin); install the {package} package"
    )]
    NotFound { tool: String, package: String },
    #[error("`{command}` failed ({status}):\n{output}")]
    Failed {
        command: String,
        status: String,
        output: String,
    },
    #[error("cannot run `{command}`: {source}")]
    Spawn {
        command: String,
        source: std::io::Error,
    },
    #[error("--apply is not available for --emit {0}: it only writes a file")]
    Unsupported(String),
}

/// Loads the rules for `format` (the text `render` produced for it).
pub fn apply(
    format: Format,
    rendered: &str,
    list: &NodeList,
    options: &RuleOptions,
) -> Result<(), ApplyError> {
    match format {
        Format::Nftables => run_with_file("nft", "nftables", &["-f"], rendered),
        Format::Ipset => run_with_stdin("ipset", "ipset", &["restore"], rendered),
        Format::Iptables | Format::Ip6tables => {
            let v6 = format == Format::Ip6tables;
            let family = if v6 { Family::V6 } else { Family::V4 };
            // The rules name the set, so the set must exist first.
            let sets = emit::ipset(list, options, family);
            run_with_stdin("ipset", "ipset", &["restore"], &sets)?;
            let (tool, restore) = if v6 {
                ("ip6tables", "ip6tables-restore")
            } else {
                ("iptables", "iptables-restore")
            };
            run_with_file(restore, "iptables", &["--noflush"], rendered)?;
            ensure_jump(tool, options)
        }
        Format::Nginx | Format::Plain | Format::Json => Err(ApplyError::Unsupported(
            format!("{format:?}").to_lowercase(),
        )),
    }
}

/// Makes INPUT send the protected ports to our chain exactly once, removing
/// jumps left by an earlier run with other ports or interface.
fn ensure_jump(tool: &str, options: &RuleOptions) -> Result<(), ApplyError> {
    let wanted = emit::jump_rule(options);
    let wanted_line = format!("-A INPUT {}", wanted.join(" "));
    let chain_target = format!("-j {}", options.iptables_chain());
    let listing = run_capture(tool, "iptables", &["-S", "INPUT"])?;
    let mut present = false;
    for line in listing.lines().map(str::trim) {
        if !line.starts_with("-A INPUT ") || !line.ends_with(&chain_target) {
            continue;
        }
        if line == wanted_line && !present {
            present = true;
            continue;
        }
        let mut args = vec!["-D".to_string(), "INPUT".to_string()];
        args.extend(
            line["-A INPUT ".len()..]
                .split_whitespace()
                .map(str::to_string),
        );
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run_capture(tool, "iptables", &args)?;
    }
    if !present {
        let mut args = vec!["-I", "INPUT", "1"];
        args.extend(wanted.iter().map(String::as_str));
        run_capture(tool, "iptables", &args)?;
    }
    Ok(())
}

/// Finds an admin tool even under cron, whose PATH usually lacks /usr/sbin.
pub fn find_tool(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|dir| dir.join(tool))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

fn command(tool: &str, package: &str) -> Result<Command, ApplyError> {
    let path = find_tool(tool).ok_or_else(|| ApplyError::NotFound {
        tool: tool.to_string(),
        package: package.to_string(),
    })?;
    Ok(Command::new(path))
}

fn run_with_file(tool: &str, package: &str, args: &[&str], script: &str) -> Result<(), ApplyError> {
    let shown = format!("{tool} {}", args.join(" "));
    let spawn_error = |source| ApplyError::Spawn {
        command: shown.clone(),
        source,
    };
    let mut file = tempfile::Builder::new()
        .prefix("nodesync-")
        .tempfile()
        .map_err(spawn_error)?;
    file.write_all(script.as_bytes()).map_err(spawn_error)?;
    file.flush().map_err(spawn_error)?;
    let mut cmd = command(tool, package)?;
    cmd.args(args).arg(file.path());
    finish(cmd, &format!("{shown} FILE"), None)
}

fn run_with_stdin(tool: &str, package: &str, args: &[&str], input: &str) -> Result<(), ApplyError> {
    let mut cmd = command(tool, package)?;
    cmd.args(args);
    finish(cmd, &format!("{tool} {}", args.join(" ")), Some(input))
}

fn run_capture(tool: &str, package: &str, args: &[&str]) -> Result<String, ApplyError> {
    let mut cmd = command(tool, package)?;
    cmd.args(args);
    let shown = format!("{tool} {}", args.join(" "));
    let output = cmd.output().map_err(|source| ApplyError::Spawn {
        command: shown.clone(),
        source,
    })?;
    if !output.status.success() {
        return Err(failed(&shown, &output));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

fn finish(mut cmd: Command, shown: &str, input: Option<&str>) -> Result<(), ApplyError> {
    let spawn_error = |source| ApplyError::Spawn {
        command: shown.to_string(),
        source,
    };
    cmd.stdin(if input.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(spawn_error)?;
    if let (Some(input), Some(mut stdin)) = (input, child.stdin.take()) {
        // A tool that stops reading early (a bad line) closes the pipe; its
        // exit status says why, so a write error here is not the story.
        let _ = stdin.write_all(input.as_bytes());
    }
    let output = child.wait_with_output().map_err(spawn_error)?;
    if output.status.success() {
        Ok(())
    } else {
        Err(failed(shown, &output))
    }
}

fn failed(shown: &str, output: &std::process::Output) -> ApplyError {
    let mut text = String::from_utf8_lossy(&output.stderr)
        .trim_end()
        .to_string();
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !stdout.trim().is_empty() {
        text.push('\n');
        text.push_str(stdout.trim_end());
    }
    ApplyError::Failed {
        command: shown.to_string(),
        status: output.status.to_string(),
        output: text,
    }
}
