//! Child processes in tests: signals without `unsafe` (the workspace
//! forbids it), through kill(1).

use std::process::Command;

/// Sends `signal` (`"HUP"`, `"TERM"`, `"KILL"`…) to process `pid`.
///
/// # Panics
/// When kill(1) cannot be run or refuses (no such process): a test that
/// signals a process expects it to be there.
pub fn signal(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .args(["-s", signal, &pid.to_string()])
        .status()
        .expect("kill(1) runs");
    assert!(status.success(), "kill -s {signal} {pid} failed: {status}");
}

/// [`signal`] for a child that is still running.
pub fn signal_child(child: &std::process::Child, name: &str) {
    signal(child.id(), name);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signal_reaches_the_child() {
        let mut child = Command::new("sleep").arg("30").spawn().unwrap();
        signal_child(&child, "TERM");
        let status = child.wait().unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(15));
    }
}
