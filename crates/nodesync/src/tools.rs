//! Running the system's firewall tools (nft, ipset, iptables, ip) and
//! reporting their failures verbatim: their messages name the line that
//! failed.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

#[derive(Debug, thiserror::Error)]
pub enum ToolError {
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

/// The package that ships a tool, for the "install it" hint.
fn package_of(tool: &str) -> &'static str {
    match tool {
        "nft" => "nftables",
        "ipset" => "ipset",
        "ip" => "iproute2",
        _ => "iptables",
    }
}

/// Fails early, before anything is changed, when a tool is missing.
pub fn require(tool: &str) -> Result<PathBuf, ToolError> {
    find_tool(tool).ok_or_else(|| ToolError::NotFound {
        tool: tool.to_string(),
        package: package_of(tool).to_string(),
    })
}

fn command(tool: &str) -> Result<Command, ToolError> {
    Ok(Command::new(require(tool)?))
}

/// `tool ARGS FILE`, the script written to a private temporary file.
pub fn run_with_file(tool: &str, args: &[&str], script: &str) -> Result<(), ToolError> {
    let shown = format!("{tool} {}", args.join(" "));
    let spawn_error = |source| ToolError::Spawn {
        command: shown.clone(),
        source,
    };
    let mut file = tempfile::Builder::new()
        .prefix("nodesync-")
        .tempfile()
        .map_err(spawn_error)?;
    file.write_all(script.as_bytes()).map_err(spawn_error)?;
    file.flush().map_err(spawn_error)?;
    let mut cmd = command(tool)?;
    cmd.args(args).arg(file.path());
    // The temporary name changes every run; a message that names it would
    // look like a new problem every time.
    let temp = file.path().display().to_string();
    finish(cmd, &format!("{shown} FILE"), None)
        .map(drop)
        .map_err(|e| match e {
            ToolError::Failed {
                command,
                status,
                output,
            } => ToolError::Failed {
                command,
                status,
                output: output.replace(&temp, "FILE"),
            },
            other => other,
        })
}

/// `tool ARGS < input`.
pub fn run_with_stdin(tool: &str, args: &[&str], input: &str) -> Result<(), ToolError> {
    let mut cmd = command(tool)?;
    cmd.args(args);
    finish(cmd, &format!("{tool} {}", args.join(" ")), Some(input)).map(drop)
}

/// `tool ARGS`, returning its standard output.
pub fn run_capture(tool: &str, args: &[&str]) -> Result<String, ToolError> {
    let mut cmd = command(tool)?;
    cmd.args(args);
    finish(cmd, &format!("{tool} {}", args.join(" ")), None)
}

/// `tool ARGS` with owned arguments.
pub fn run_args(tool: &str, args: &[String]) -> Result<String, ToolError> {
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    run_capture(tool, &refs)
}

fn finish(mut cmd: Command, shown: &str, input: Option<&str>) -> Result<String, ToolError> {
    let spawn_error = |source| ToolError::Spawn {
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
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(failed(shown, &output))
    }
}

fn failed(shown: &str, output: &std::process::Output) -> ToolError {
    let mut text = String::from_utf8_lossy(&output.stderr)
        .trim_end()
        .to_string();
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !stdout.trim().is_empty() {
        text.push('\n');
        text.push_str(stdout.trim_end());
    }
    ToolError::Failed {
        command: shown.to_string(),
        status: output.status.to_string(),
        output: text,
    }
}
