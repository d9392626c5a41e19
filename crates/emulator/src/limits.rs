//! Cloud limits: the leaky bucket per source address (`QUERY_LIMIT_EXCEEDED`)
//! and the per-method operating-time budget in ten one-minute baskets
//! (`OPERATION_TIME_LIMIT`). Time is passed in, so the rules test without sleeping.

use std::collections::{BTreeMap, VecDeque};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

/// Limit settings of one portal.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LimitConfig {
    /// X: requests the bucket holds before blocking (50, Enterprise 250).
    pub burst: u32,
    /// Y: requests drained per second (2, Enterprise 5).
    pub drain_per_sec: f64,
    /// Operating-time budget per method and webhook over ten minutes.
    pub operating_limit: Duration,
    /// One request must finish within this (60 s in the cloud).
    pub request_time_limit: Duration,
}

impl Default for LimitConfig {
    fn default() -> Self {
        Self {
            burst: 50,
            drain_per_sec: 2.0,
            operating_limit: Duration::from_secs(480),
            request_time_limit: Duration::from_secs(60),
        }
    }
}

/// Counter +1 per request, drained continuously; a request that would push it
/// over the capacity is refused and not counted.
#[derive(Debug, Clone)]
pub struct LeakyBucket {
    capacity: f64,
    drain_per_sec: f64,
    level: f64,
    last: f64,
}

impl LeakyBucket {
    pub fn new(capacity: u32, drain_per_sec: f64, now: f64) -> Self {
        Self {
            capacity: f64::from(capacity),
            drain_per_sec,
            level: 0.0,
            last: now,
        }
    }

    pub fn try_take(&mut self, now: f64) -> bool {
        let elapsed = (now - self.last).max(0.0);
        self.level = (self.level - elapsed * self.drain_per_sec).max(0.0);
        self.last = now;
        if self.level + 1.0 > self.capacity {
            return false;
        }
        self.level += 1.0;
        true
    }

    pub fn level(&self) -> f64 {
        self.level
    }
}

const BASKET_SECONDS: f64 = 60.0;
const BASKET_LIFETIME: f64 = 600.0;

#[derive(Debug, Clone)]
struct Basket {
    opened_at: f64,
    spent: f64,
}

/// Execution time of one method for one webhook, in one-minute baskets that
/// each expire ten minutes after their first call.
#[derive(Debug, Clone, Default)]
pub struct OperatingBudget {
    baskets: VecDeque<Basket>,
}

impl OperatingBudget {
    fn prune(&mut self, now: f64) {
        while self
            .baskets
            .front()
            .is_some_and(|b| now >= b.opened_at + BASKET_LIFETIME)
        {
            self.baskets.pop_front();
        }
    }

    pub fn operating(&mut self, now: f64) -> f64 {
        self.prune(now);
        self.baskets.iter().map(|b| b.spent).sum()
    }

    /// When the oldest basket stops counting (Unix seconds).
    pub fn reset_at(&mut self, now: f64) -> Option<f64> {
        self.prune(now);
        self.baskets.front().map(|b| b.opened_at + BASKET_LIFETIME)
    }

    pub fn record(&mut self, started: f64, seconds: f64) {
        self.prune(started);
        match self.baskets.back_mut() {
            Some(basket) if started < basket.opened_at + BASKET_SECONDS => basket.spent += seconds,
            _ => self.baskets.push_back(Basket {
                opened_at: started,
                spent: seconds,
            }),
        }
    }
}

/// What the `time` block reports about the operating budget.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OperatingState {
    pub operating: f64,
    pub reset_at: Option<f64>,
}

#[derive(Debug)]
pub struct Limits {
    config: Mutex<LimitConfig>,
    buckets: Mutex<BTreeMap<IpAddr, LeakyBucket>>,
    operating: Mutex<BTreeMap<(i64, String), OperatingBudget>>,
}

impl Limits {
    pub fn new(config: LimitConfig) -> Self {
        Self {
            config: Mutex::new(config),
            buckets: Mutex::new(BTreeMap::new()),
            operating: Mutex::new(BTreeMap::new()),
        }
    }

    pub fn config(&self) -> LimitConfig {
        *self.config.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Changes the limits and forgets all counters.
    pub fn set_config(&self, config: LimitConfig) {
        *self.config.lock().unwrap_or_else(|e| e.into_inner()) = config;
        self.reset();
    }

    pub fn reset(&self) {
        self.buckets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        self.operating
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    /// Counts one HTTP request from `ip`; false means QUERY_LIMIT_EXCEEDED.
    pub fn admit(&self, ip: IpAddr, now: f64) -> bool {
        let config = self.config();
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        buckets
            .entry(ip)
            .or_insert_with(|| LeakyBucket::new(config.burst, config.drain_per_sec, now))
            .try_take(now)
    }

    /// Whether the method's budget is already spent (checked before running it).
    pub fn operating_blocked(&self, user_id: i64, method: &str, now: f64) -> bool {
        let limit = self.config().operating_limit.as_secs_f64();
        let mut budgets = self.operating.lock().unwrap_or_else(|e| e.into_inner());
        budgets
            .get_mut(&(user_id, method.to_string()))
            .is_some_and(|b| b.operating(now) > limit)
    }

    pub fn record_operating(
        &self,
        user_id: i64,
        method: &str,
        started: f64,
        seconds: f64,
    ) -> OperatingState {
        let mut budgets = self.operating.lock().unwrap_or_else(|e| e.into_inner());
        let budget = budgets.entry((user_id, method.to_string())).or_default();
        budget.record(started, seconds);
        let now = started + seconds;
        OperatingState {
            operating: budget.operating(now),
            reset_at: budget.reset_at(now),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_allows_the_burst_then_blocks_until_it_drains() {
        let mut bucket = LeakyBucket::new(50, 2.0, 0.0);
        assert!((0..50).all(|_| bucket.try_take(0.0)));
        assert!(
            !bucket.try_take(0.0),
            "51st request in the same instant is refused"
        );
        assert!(!bucket.try_take(0.4), "0.8 drained is not a whole request");
        assert!(
            bucket.try_take(0.5),
            "one request drained after half a second at 2/s"
        );
        assert!(!bucket.try_take(0.5));
        assert!(bucket.try_take(100.0));
        assert!(
            (bucket.level() - 1.0).abs() < 1e-9,
            "fully drained, then one counted"
        );
    }

    #[test]
    fn sustained_rate_at_the_drain_speed_is_never_refused() {
        let mut bucket = LeakyBucket::new(5, 2.0, 0.0);
        assert!((0..1000).all(|i| bucket.try_take(f64::from(i) * 0.5)));
    }

    #[test]
    fn operating_time_accumulates_in_baskets_and_expires() {
        let mut budget = OperatingBudget::default();
        budget.record(1000.0, 20.0);
        budget.record(1030.0, 20.0);
        budget.record(1070.0, 5.0);
        assert_eq!(budget.operating(1080.0), 45.0);
        assert_eq!(budget.reset_at(1080.0), Some(1600.0));
        assert_eq!(budget.operating(1600.0), 5.0, "first basket (40 s) expired");
        assert_eq!(budget.reset_at(1600.0), Some(1670.0));
        assert_eq!(budget.operating(1670.0), 0.0);
    }

    #[test]
    fn method_is_blocked_only_after_exceeding_the_limit() {
        let limits = Limits::new(LimitConfig {
            operating_limit: Duration::from_secs(30),
            ..LimitConfig::default()
        });
        assert!(!limits.operating_blocked(1, "crm.item.list", 0.0));
        limits.record_operating(1, "crm.item.list", 0.0, 20.0);
        assert!(!limits.operating_blocked(1, "crm.item.list", 21.0));
        let state = limits.record_operating(1, "crm.item.list", 21.0, 20.0);
        assert_eq!(state.operating, 40.0);
        assert_eq!(state.reset_at, Some(600.0));
        assert!(limits.operating_blocked(1, "crm.item.list", 42.0));
        assert!(
            !limits.operating_blocked(1, "crm.item.get", 42.0),
            "other methods run"
        );
        assert!(
            !limits.operating_blocked(2, "crm.item.list", 42.0),
            "other webhooks run"
        );
        assert!(
            !limits.operating_blocked(1, "crm.item.list", 600.0),
            "basket expired"
        );
    }
}
