//! Client-side leaky buckets, one per portal, shared by every client that is
//! given the same [`RateLimits`]. Bitrix24 counts +1 per HTTP request and
//! drains Y per second, refusing requests above X (BITRIX24.md §4); waiting
//! here keeps the portal from ever answering `QUERY_LIMIT_EXCEEDED`.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use crate::Error;

/// Bucket size and drain rate of one portal.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BucketConfig {
    /// Requests allowed back to back (X).
    pub burst: u32,
    /// Requests per second the bucket drains (Y).
    pub drain_per_second: f64,
}

impl BucketConfig {
    /// Every plan but Enterprise: X=50, Y=2.
    pub const STANDARD: Self = Self {
        burst: 50,
        drain_per_second: 2.0,
    };
    /// Enterprise plans: X=250, Y=5.
    pub const ENTERPRISE: Self = Self {
        burst: 250,
        drain_per_second: 5.0,
    };

    fn validate(self) -> Result<Self, Error> {
        if self.burst == 0 || !(self.drain_per_second.is_finite() && self.drain_per_second > 0.0) {
            return Err(Error::Config(format!(
                "rate limit needs a burst of at least 1 and a positive drain rate, got burst {} and drain {}/s",
                self.burst, self.drain_per_second
            )));
        }
        Ok(self)
    }
}

impl Default for BucketConfig {
    fn default() -> Self {
        Self::STANDARD
    }
}

/// The registry of per-portal limiters. Create one per process and clone it
/// into every client; clones share the buckets.
#[derive(Clone)]
pub struct RateLimits {
    registry: Arc<Mutex<Registry>>,
}

struct Registry {
    default: BucketConfig,
    /// New buckets start full: after a restart the portal's counter may
    /// still hold the previous process's requests.
    start_full: bool,
    /// Where the buckets live when several processes share them.
    shared: Option<Arc<dyn SharedBucket>>,
    overrides: HashMap<String, BucketConfig>,
    portals: HashMap<String, Arc<PortalLimiter>>,
}

impl RateLimits {
    /// Every portal gets `default` unless [`RateLimits::set_portal`] says otherwise.
    pub fn new(default: BucketConfig) -> Result<Self, Error> {
        Ok(Self {
            registry: Arc::new(Mutex::new(Registry {
                default: default.validate()?,
                start_full: true,
                shared: None,
                overrides: HashMap::new(),
                portals: HashMap::new(),
            })),
        })
    }

    /// New buckets start empty instead of full: for tests and tools that
    /// know no other client called the portal in the last `burst / drain`
    /// seconds. By default a bucket starts full, because the portal's own
    /// counter may still hold the requests of a process that just stopped
    /// (a restart would otherwise meet `QUERY_LIMIT_EXCEEDED`).
    pub fn starting_empty(self) -> Self {
        self.registry
            .lock()
            .expect("rate limit registry poisoned")
            .start_full = false;
        self
    }

    /// Keeps every portal's bucket in `shared` (the relay's replicas keep
    /// one per portal in their database), so that processes calling from
    /// the same address never exceed the portal's limit together. Limiters
    /// already handed out keep their local bucket.
    pub fn share_with(self, shared: Arc<dyn SharedBucket>) -> Self {
        self.registry
            .lock()
            .expect("rate limit registry poisoned")
            .shared = Some(shared);
        self
    }

    /// Sets one portal's bucket (e.g. [`BucketConfig::ENTERPRISE`]); applies
    /// at once, also to clients already running. `portal` is `host[:port]`.
    pub fn set_portal(&self, portal: &str, config: BucketConfig) -> Result<(), Error> {
        let config = config.validate()?;
        let key = portal.to_ascii_lowercase();
        let mut registry = self.registry.lock().expect("rate limit registry poisoned");
        if let Some(limiter) = registry.portals.get(&key) {
            limiter.bucket.lock().expect("bucket poisoned").config = config;
        }
        registry.overrides.insert(key, config);
        Ok(())
    }

    /// The limiter of one portal, created on first use.
    pub fn portal(&self, portal: &str) -> Arc<PortalLimiter> {
        let key = portal.to_ascii_lowercase();
        let mut registry = self.registry.lock().expect("rate limit registry poisoned");
        let config = registry
            .overrides
            .get(&key)
            .copied()
            .unwrap_or(registry.default);
        let full = registry.start_full;
        let shared = registry.shared.clone().map(|shared| (key.clone(), shared));
        registry
            .portals
            .entry(key)
            .or_insert_with(|| Arc::new(PortalLimiter::new(config, full).sharing(shared)))
            .clone()
    }
}

impl Default for RateLimits {
    fn default() -> Self {
        Self::new(BucketConfig::STANDARD).expect("the standard bucket is valid")
    }
}

/// The request bucket of one portal plus the methods the portal has blocked
/// for exceeding their time budget (`OPERATION_TIME_LIMIT`).
pub struct PortalLimiter {
    bucket: Mutex<LeakyBucket>,
    /// The portal's key and the shared bucket, when there is one.
    shared: Option<(String, Arc<dyn SharedBucket>)>,
    blocked_methods: Mutex<HashMap<String, SystemTime>>,
    last_reset_at: Mutex<HashMap<String, SystemTime>>,
    /// `OPERATION_TIME_LIMIT` answers in a row without a reset time, per method.
    unexplained_limits: Mutex<HashMap<String, u32>>,
}

/// First hold of a method after an `OPERATION_TIME_LIMIT` that named no
/// reset time; doubled for each further one in a row, up to a minute (the
/// budget is kept in 1-minute baskets, so a minute always frees some).
const FIRST_UNEXPLAINED_BLOCK: Duration = Duration::from_secs(2);
const LONGEST_UNEXPLAINED_BLOCK: Duration = Duration::from_secs(60);

impl PortalLimiter {
    fn new(config: BucketConfig, full: bool) -> Self {
        let mut bucket = LeakyBucket::new(config, Instant::now());
        if full {
            bucket.saturate(Instant::now());
        }
        Self {
            bucket: Mutex::new(bucket),
            shared: None,
            blocked_methods: Mutex::new(HashMap::new()),
            last_reset_at: Mutex::new(HashMap::new()),
            unexplained_limits: Mutex::new(HashMap::new()),
        }
    }

    fn sharing(mut self, shared: Option<(String, Arc<dyn SharedBucket>)>) -> Self {
        self.shared = shared;
        self
    }

    /// Takes a slot for one HTTP request, waiting first if the bucket is
    /// full. Returns how long it waited. With a shared bucket that cannot
    /// be reached, the local one is used (and the failure logged): requests
    /// go on, and a `QUERY_LIMIT_EXCEEDED` is retried as always.
    pub async fn acquire(&self) -> Duration {
        if let Some((portal, shared)) = &self.shared {
            let config = self.bucket.lock().expect("bucket poisoned").config;
            match shared.reserve(portal, config).await {
                Ok(wait) => {
                    if !wait.is_zero() {
                        tokio::time::sleep(wait).await;
                    }
                    return wait;
                }
                Err(error) => {
                    tracing::warn!(host = %portal, %error, "the shared rate budget is unreachable; using this process's own bucket");
                }
            }
        }
        let wait = self
            .bucket
            .lock()
            .expect("bucket poisoned")
            .reserve(Instant::now());
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        wait
    }

    /// The portal said `QUERY_LIMIT_EXCEEDED`: someone else (another process
    /// or server on the same IP) is using the bucket too, so treat it as full.
    pub fn saturate(&self) {
        let config = {
            let mut bucket = self.bucket.lock().expect("bucket poisoned");
            bucket.saturate(Instant::now());
            bucket.config
        };
        if let Some((portal, shared)) = self.shared.clone() {
            // Not awaited by the caller: it is about to wait and retry anyway.
            tokio::spawn(async move {
                if let Err(error) = shared.saturate(&portal, config).await {
                    tracing::warn!(host = %portal, %error, "cannot mark the shared rate budget full");
                }
            });
        }
    }

    /// Remembers `time.operating_reset_at` from a successful answer.
    pub(crate) fn note_operating_reset(&self, method: &str, at: SystemTime) {
        self.last_reset_at
            .lock()
            .expect("reset map poisoned")
            .insert(method.to_owned(), at);
    }

    /// How long to hold `method` after an `OPERATION_TIME_LIMIT` answer that
    /// gave no `operating_reset_at`: short at first, doubling while they
    /// keep coming, so one such answer does not stop the method for a minute.
    pub(crate) fn unexplained_limit_hold(&self, method: &str) -> Duration {
        let mut counts = self.unexplained_limits.lock().expect("limit map poisoned");
        let count = counts.entry(method.to_owned()).or_insert(0);
        *count = count.saturating_add(1);
        FIRST_UNEXPLAINED_BLOCK
            .saturating_mul(1u32 << (*count - 1).min(10))
            .min(LONGEST_UNEXPLAINED_BLOCK)
    }

    /// `method` answered: its run of unexplained time-limit answers ends.
    pub(crate) fn method_answered(&self, method: &str) {
        let mut counts = self.unexplained_limits.lock().expect("limit map poisoned");
        if !counts.is_empty() {
            counts.remove(method);
        }
    }

    /// The last `operating_reset_at` seen for `method`.
    pub(crate) fn last_operating_reset(&self, method: &str) -> Option<SystemTime> {
        self.last_reset_at
            .lock()
            .expect("reset map poisoned")
            .get(method)
            .copied()
    }

    /// `method` answered `OPERATION_TIME_LIMIT`: hold every call to it until
    /// `until`.
    pub(crate) fn block_method(&self, method: &str, until: SystemTime) {
        let mut blocked = self.blocked_methods.lock().expect("block map poisoned");
        let entry = blocked.entry(method.to_owned()).or_insert(until);
        if *entry < until {
            *entry = until;
        }
    }

    /// When `method` may be called again, if it is blocked now.
    pub(crate) fn blocked_until(&self, method: &str, now: SystemTime) -> Option<SystemTime> {
        let mut blocked = self.blocked_methods.lock().expect("block map poisoned");
        match blocked.get(method) {
            Some(&until) if until > now => Some(until),
            Some(_) => {
                blocked.remove(method);
                None
            }
            None => None,
        }
    }
}

/// What a [`SharedBucket`] answers.
pub type SharedBucketFuture<'a, T> =
    Pin<Box<dyn Future<Output = Result<T, Box<dyn std::error::Error + Send + Sync>>> + Send + 'a>>;

/// A portal's leaky bucket kept outside this process, shared by every
/// process that calls the portal from the same address (Bitrix24 counts per
/// portal and per calling address). Same model as the local bucket: the
/// level counts requests not drained yet, reservations included.
pub trait SharedBucket: Send + Sync {
    /// Reserves one request on `portal`'s bucket (created full if it does
    /// not exist: the portal's counter may hold requests of processes that
    /// just stopped) and returns how long to wait before sending it.
    fn reserve<'a>(
        &'a self,
        portal: &'a str,
        config: BucketConfig,
    ) -> SharedBucketFuture<'a, Duration>;
    /// The portal said `QUERY_LIMIT_EXCEEDED`: treat its bucket as full.
    fn saturate<'a>(&'a self, portal: &'a str, config: BucketConfig) -> SharedBucketFuture<'a, ()>;
}

/// Virtual-scheduling leaky bucket: `level` counts requests not yet drained,
/// including ones reserved for the future, so waiters queue fairly.
#[derive(Debug)]
struct LeakyBucket {
    config: BucketConfig,
    level: f64,
    updated: Instant,
}

impl LeakyBucket {
    fn new(config: BucketConfig, now: Instant) -> Self {
        Self {
            config,
            level: 0.0,
            updated: now,
        }
    }

    fn drain(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.level = (self.level - elapsed * self.config.drain_per_second).max(0.0);
        self.updated = now;
    }

    /// Reserves one request and returns how long to wait before sending it,
    /// so that the portal's counter is at most `burst` when it arrives.
    fn reserve(&mut self, now: Instant) -> Duration {
        self.drain(now);
        let burst = f64::from(self.config.burst);
        let excess = self.level + 1.0 - burst;
        self.level += 1.0;
        if excess <= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(excess / self.config.drain_per_second)
        }
    }

    fn saturate(&mut self, now: Instant) {
        self.drain(now);
        self.level = self.level.max(f64::from(self.config.burst));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bucket(burst: u32, drain: f64) -> (LeakyBucket, Instant) {
        let start = Instant::now();
        let config = BucketConfig {
            burst,
            drain_per_second: drain,
        };
        (LeakyBucket::new(config, start), start)
    }

    #[test]
    fn burst_passes_then_requests_are_spaced_by_the_drain_rate() {
        let (mut bucket, start) = bucket(3, 2.0);
        for _ in 0..3 {
            assert_eq!(bucket.reserve(start), Duration::ZERO);
        }
        assert_eq!(bucket.reserve(start), Duration::from_millis(500));
        assert_eq!(bucket.reserve(start), Duration::from_millis(1000));
        // After the reserved ones drained, the fourth slot frees up again.
        let later = start + Duration::from_secs(1);
        assert_eq!(bucket.reserve(later), Duration::from_millis(500));
    }

    #[test]
    fn draining_frees_slots() {
        let (mut bucket, start) = bucket(2, 2.0);
        bucket.reserve(start);
        bucket.reserve(start);
        assert_eq!(
            bucket.reserve(start + Duration::from_millis(500)),
            Duration::ZERO
        );
        assert_eq!(
            bucket.reserve(start + Duration::from_millis(500)),
            Duration::from_millis(500)
        );
    }

    #[test]
    fn saturation_makes_the_next_request_wait() {
        let (mut bucket, start) = bucket(50, 2.0);
        bucket.saturate(start);
        assert_eq!(bucket.reserve(start), Duration::from_millis(500));
    }

    #[test]
    fn a_new_limiter_starts_full_unless_asked_otherwise() {
        let limits = RateLimits::default();
        let level = |limiter: &PortalLimiter| limiter.bucket.lock().unwrap().level;
        assert_eq!(level(&limits.portal("restarted.test")), 50.0);
        let fresh = RateLimits::default().starting_empty();
        assert_eq!(level(&fresh.portal("fresh.test")), 0.0);
    }

    #[test]
    fn registry_shares_one_limiter_per_portal() {
        let limits = RateLimits::default();
        let clone = limits.clone();
        let a = limits.portal("Portal.Test");
        let b = clone.portal("portal.test");
        let other = limits.portal("other.test");
        assert!(Arc::ptr_eq(&a, &b));
        assert!(!Arc::ptr_eq(&a, &other));
    }

    #[test]
    fn portal_overrides_apply_to_existing_limiters() {
        let limits = RateLimits::default();
        let limiter = limits.portal("big.test");
        limits
            .set_portal("big.test", BucketConfig::ENTERPRISE)
            .unwrap();
        assert_eq!(
            limiter.bucket.lock().unwrap().config,
            BucketConfig::ENTERPRISE
        );
        assert_eq!(
            limits.portal("big.test").bucket.lock().unwrap().config,
            BucketConfig::ENTERPRISE
        );
    }

    #[test]
    fn rejects_useless_configs() {
        for config in [
            BucketConfig {
                burst: 0,
                drain_per_second: 1.0,
            },
            BucketConfig {
                burst: 1,
                drain_per_second: 0.0,
            },
            BucketConfig {
                burst: 1,
                drain_per_second: f64::NAN,
            },
        ] {
            assert!(RateLimits::new(config).is_err(), "{config:?}");
        }
    }

    #[test]
    fn unexplained_time_limits_hold_briefly_then_longer() {
        let limiter = PortalLimiter::new(BucketConfig::STANDARD, false);
        let holds: Vec<u64> = (0..7)
            .map(|_| limiter.unexplained_limit_hold("batch").as_secs())
            .collect();
        assert_eq!(holds, [2, 4, 8, 16, 32, 60, 60]);
        assert_eq!(limiter.unexplained_limit_hold("crm.item.list").as_secs(), 2);
        limiter.method_answered("batch");
        assert_eq!(limiter.unexplained_limit_hold("batch").as_secs(), 2);
    }

    #[test]
    fn blocked_methods_expire() {
        let limiter = PortalLimiter::new(BucketConfig::STANDARD, false);
        let now = SystemTime::now();
        limiter.block_method("crm.item.list", now + Duration::from_secs(30));
        limiter.block_method("crm.item.list", now + Duration::from_secs(10));
        assert_eq!(
            limiter.blocked_until("crm.item.list", now),
            Some(now + Duration::from_secs(30))
        );
        assert_eq!(limiter.blocked_until("crm.item.get", now), None);
        assert_eq!(
            limiter.blocked_until("crm.item.list", now + Duration::from_secs(31)),
            None
        );
    }

    /// Two registries (two processes) on one shared bucket: the second
    /// process's requests wait behind the first one's.
    struct Shared(Mutex<HashMap<String, LeakyBucket>>, Mutex<bool>);

    impl SharedBucket for Shared {
        fn reserve<'a>(
            &'a self,
            portal: &'a str,
            config: BucketConfig,
        ) -> SharedBucketFuture<'a, Duration> {
            if *self.1.lock().unwrap() {
                return Box::pin(std::future::ready(Err("database down".into())));
            }
            let now = Instant::now();
            let wait = self
                .0
                .lock()
                .unwrap()
                .entry(portal.to_owned())
                .or_insert_with(|| LeakyBucket::new(config, now))
                .reserve(now);
            Box::pin(std::future::ready(Ok(wait)))
        }

        fn saturate<'a>(
            &'a self,
            portal: &'a str,
            config: BucketConfig,
        ) -> SharedBucketFuture<'a, ()> {
            let now = Instant::now();
            self.0
                .lock()
                .unwrap()
                .entry(portal.to_owned())
                .or_insert_with(|| LeakyBucket::new(config, now))
                .saturate(now);
            Box::pin(std::future::ready(Ok(())))
        }
    }

    #[tokio::test]
    async fn processes_sharing_a_bucket_wait_for_each_other() {
        let shared = Arc::new(Shared(Mutex::new(HashMap::new()), Mutex::new(false)));
        let config = BucketConfig {
            burst: 2,
            drain_per_second: 4.0,
        };
        let one = RateLimits::new(config).unwrap().share_with(shared.clone());
        let two = RateLimits::new(config).unwrap().share_with(shared.clone());
        assert_eq!(one.portal("p.test").acquire().await, Duration::ZERO);
        assert_eq!(two.portal("p.test").acquire().await, Duration::ZERO);
        // The burst is used up by the two processes together.
        let waited = two.portal("p.test").acquire().await;
        assert!(
            waited > Duration::from_millis(200) && waited <= Duration::from_millis(250),
            "{waited:?}"
        );
        // A shared bucket that cannot be reached: the local one decides.
        *shared.1.lock().unwrap() = true;
        assert_eq!(one.portal("p.test").acquire().await, Duration::ZERO);
    }
}
