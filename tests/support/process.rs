//! A workspace binary running as a child process, its stdout and stderr in
//! one log file (appended to across restarts), killed and reaped on drop.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub struct Process {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Process {
    /// Starts binary `name` with `args`, logging to `dir/NAME.log`.
    pub fn start(name: &str, args: &[&str], dir: &Path) -> Process {
        let log = dir.join(format!("{name}.log"));
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("the log file opens");
        let child = Command::new(crate::binary(name))
            .args(args)
            .env("RUST_LOG", "info,rustls=error")
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("the log file is shared"))
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("{name} starts: {e}"));
        Process {
            name: name.to_owned(),
            child,
            log,
        }
    }

    /// Everything the process (and its earlier runs) wrote.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().ok().flatten().is_none()
    }

    /// Sends `signal` (`TERM`, `HUP`, `KILL`…) and waits for the exit.
    pub fn stop_with(&mut self, signal: &str) -> ExitStatus {
        b24_testkit::process::signal(self.child.id(), signal);
        let deadline = Instant::now() + crate::GENEROUS;
        loop {
            if let Some(status) = self.child.try_wait().expect("the child can be waited for") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not exit after SIGTERM:\n{}",
                self.name,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if self.is_running() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Runs binary `name` to its end (a cron job); its exit code and output.
pub fn run(name: &str, args: &[&str]) -> (i32, String) {
    let output = Command::new(crate::binary(name))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{name} runs: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.code().unwrap_or(-1), text)
}
