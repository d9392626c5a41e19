//! node_exporter textfile-collector metrics for a nodesync run.

use std::fmt::Write;

/// What one run knows about the list and the source.
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    pub v4: usize,
    pub v6: usize,
    /// Unix seconds of the last time the source confirmed the list.
    pub last_success: Option<u64>,
    /// Unix seconds of the last change of the list.
    pub last_change: Option<u64>,
    pub consecutive_failures: u32,
    /// Sources whose newest list was refused as unsafe.
    pub refused_sources: usize,
    /// Whether `--apply` failed or was refused; `None` when the run did
    /// not apply.
    pub apply_failed: Option<bool>,
    /// The run's exit code (see `nodesync --help`).
    pub exit_code: u8,
}

/// The Prometheus text exposition format that the textfile collector reads.
/// A timestamp that is not known yet is written as 0, which alerting on
/// `time() - nodesync_last_success_timestamp_seconds` reads as "very stale".
pub fn render(m: &Metrics) -> String {
    let mut out = String::new();
    let mut gauge = |name: &str, help: &str, samples: &[(&str, String)]| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} gauge");
        for (labels, value) in samples {
            let _ = writeln!(out, "{name}{labels} {value}");
        }
    };
    gauge(
        "nodesync_nodes",
        "Networks in the list nodesync emitted, by address family.",
        &[
            ("{family=\"ipv4\"}", m.v4.to_string()),
            ("{family=\"ipv6\"}", m.v6.to_string()),
        ],
    );
    gauge(
        "nodesync_last_success_timestamp_seconds",
        "When the source last confirmed the list (Unix time; 0 if never).",
        &[("", m.last_success.unwrap_or(0).to_string())],
    );
    gauge(
        "nodesync_last_change_timestamp_seconds",
        "When the list last changed (Unix time; 0 if never).",
        &[("", m.last_change.unwrap_or(0).to_string())],
    );
    gauge(
        "nodesync_consecutive_failures",
        "Failed or rejected fetches since the last success.",
        &[("", m.consecutive_failures.to_string())],
    );
    gauge(
        "nodesync_list_refused",
        "Sources whose newest list was refused as unsafe (an entry too broad or special-purpose); the last good list stays.",
        &[("", m.refused_sources.to_string())],
    );
    gauge(
        "nodesync_exit_code",
        "The exit code of the last run (0 ok, 3 stale, 5 list refused, 6 lock-out refused, 7 not nodesync's…).",
        &[("", m.exit_code.to_string())],
    );
    if let Some(failed) = m.apply_failed {
        gauge(
            "nodesync_apply_failed",
            "1 if the last --apply failed or was refused (the previous rules stayed in place).",
            &[("", u8::from(failed).to_string())],
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_gauge() {
        let text = render(&Metrics {
            v4: 3,
            v6: 1,
            last_success: Some(1_700_000_000),
            last_change: None,
            consecutive_failures: 2,
            refused_sources: 1,
            apply_failed: Some(false),
            exit_code: 5,
        });
        assert!(text.contains("nodesync_nodes{family=\"ipv4\"} 3\n"));
        assert!(text.contains("nodesync_nodes{family=\"ipv6\"} 1\n"));
        assert!(text.contains("nodesync_last_success_timestamp_seconds 1700000000\n"));
        assert!(text.contains("nodesync_last_change_timestamp_seconds 0\n"));
        assert!(text.contains("nodesync_consecutive_failures 2\n"));
        assert!(text.contains("nodesync_apply_failed 0\n"));
        assert!(text.contains("nodesync_list_refused 1\n"));
        assert!(text.contains("nodesync_exit_code 5\n"));
        assert_eq!(text.matches("# TYPE").count(), 7);
    }
}
