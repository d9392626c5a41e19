use std::time::Duration;

use rand::Rng;

/// When and how often a call is repeated. Only requests that surely did not
/// run (rate limited, connection refused) or that are read-only are retried;
/// see [`Client::call`](crate::Client::call).
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Attempts per call, the first one included.
    pub max_attempts: u32,
    /// Backoff before the second attempt; doubles each time, with jitter.
    pub base_delay: Duration,
    pub max_delay: Duration,
    /// Longest wait for a method blocked by `OPERATION_TIME_LIMIT`; beyond
    /// it the call fails at once with the time the method frees up.
    pub max_operating_wait: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            base_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(30),
            max_operating_wait: Duration::from_secs(90),
        }
    }
}

impl RetryPolicy {
    /// "Equal jitter" backoff after failed attempt number `attempt` (1-based):
    /// half of the exponential delay, plus a random share of the other half,
    /// so that many clients do not retry in step.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let exponent = attempt.saturating_sub(1).min(20);
        let ceiling = self
            .base_delay
            .saturating_mul(1u32 << exponent)
            .min(self.max_delay);
        let half = ceiling / 2;
        let jitter_nanos = rand::rng().random_range(0..=half.as_nanos().max(1) as u64);
        half + Duration::from_nanos(jitter_nanos)
    }
}

/// Whether repeating `method` cannot change anything on the portal, judged by
/// Bitrix24's naming (`*.get`, `*.list`, `*.fields`, ...). Unknown methods
/// count as writes.
pub fn is_read_method(method: &str) -> bool {
    let method = method.to_ascii_lowercase();
    if matches!(
        method.as_str(),
        "scope"
            | "methods"
            | "method.get"
            | "profile"
            | "server.time"
            | "app.info"
            | "user.current"
    ) {
        return true;
    }
    let last = method.rsplit('.').next().unwrap_or_default();
    matches!(
        last,
        "get" | "list" | "fields" | "getfields" | "getlist" | "search" | "current" | "findbycomm"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_stays_within_bounds() {
        let policy = RetryPolicy {
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
            ..RetryPolicy::default()
        };
        for _ in 0..100 {
            let first = policy.backoff(1);
            assert!(first >= Duration::from_millis(50) && first <= Duration::from_millis(100));
            let third = policy.backoff(3);
            assert!(third >= Duration::from_millis(200) && third <= Duration::from_millis(400));
            let late = policy.backoff(40);
            assert!(late >= Duration::from_millis(500) && late <= Duration::from_secs(1));
        }
    }

    #[test]
    fn classifies_reads_and_writes() {
        for method in [
            "crm.item.get",
            "crm.item.list",
            "crm.deal.fields",
            "crm.item.productrow.list",
            "crm.duplicate.findbycomm",
            "scope",
            "method.get",
            "user.current",
        ] {
            assert!(is_read_method(method), "{method}");
        }
        for method in [
            "crm.item.add",
            "crm.item.update",
            "crm.item.productrow.set",
            "crm.timeline.comment.add",
            "bizproc.event.send",
            "batch",
            "something.unknown",
        ] {
            assert!(!is_read_method(method), "{method}");
        }
    }
}
