//! Fetching the list politely and keeping the last good one.
//!
//! The rules (shared/BITRIX24.md §1): never ask the source more than once a
//! minimum interval (60 s by default, remembered in the cache file so that it
//! holds across processes), use conditional requests, bound every request in
//! time and size, and never let a failed or rejected fetch replace the last
//! good list.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use reqwest::StatusCode;
use reqwest::header::{ETAG, IF_MODIFIED_SINCE, IF_NONE_MATCH, LAST_MODIFIED};
use tracing::{debug, warn};

use crate::cache::{CacheRecord, unix_now};
use crate::list::{Diff, Limits, NodeList, ParseError};
use crate::source::Source;

/// How a [`Fetcher`] talks to its source.
#[derive(Debug, Clone)]
pub struct FetchOptions {
    pub limits: Limits,
    /// Time allowed to establish the TCP (and TLS) connection.
    pub connect_timeout: Duration,
    /// Time allowed for the whole request, body included.
    pub total_timeout: Duration,
    /// The least time between two requests to a URL source. Bitrix24 asks
    /// for at most one request a minute; keep 60 s or more for its servers.
    pub min_interval: Duration,
    /// How long the largest accepted list stays the shrink baseline (see
    /// [`Baseline::peak`]).
    pub baseline_window: Duration,
}

impl Default for FetchOptions {
    fn default() -> Self {
        FetchOptions {
            limits: Limits::default(),
            connect_timeout: Duration::from_secs(5),
            total_timeout: Duration::from_secs(20),
            min_interval: MIN_INTERVAL,
            baseline_window: BASELINE_WINDOW,
        }
    }
}

/// The politeness floor Bitrix24 sets for polling its list.
pub const MIN_INTERVAL: Duration = Duration::from_secs(60);

/// How long the largest list seen stays the baseline a new list is compared
/// with: a day, so that a list cannot be walked down run by run.
pub const BASELINE_WINDOW: Duration = Duration::from_secs(24 * 3600);

/// Why a fetch produced no new list. None of these replaces the last good
/// list.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    #[error("{origin} answered HTTP {status}")]
    Status { origin: String, status: u16 },
    #[error("{origin} did not answer within {seconds} s")]
    Timeout { origin: String, seconds: u64 },
    #[error("cannot connect to {origin}: {detail}")]
    Connect { origin: String, detail: String },
    #[error("request to {origin} failed: {detail}")]
    Transport { origin: String, detail: String },
    #[error("cannot read {origin}: {detail}")]
    File { origin: String, detail: String },
    #[error("{origin} served a list that was rejected: {error}")]
    Invalid { origin: String, error: ParseError },
    #[error("the new list from {origin} was refused: {reason}")]
    Refused { origin: String, reason: String },
    #[error("cannot build an HTTP client: {0}")]
    Client(String),
}

impl FetchError {
    /// Whether the source served a well-formed list that names addresses
    /// that are never Bitrix24's (too broad or special-purpose).
    pub fn is_unsafe_list(&self) -> bool {
        matches!(self, FetchError::Invalid { error, .. } if error.is_unsafe())
    }
}

/// What one refresh did.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// A new list was accepted; `diff` is against the previous one (all
    /// networks are "added" when there was none).
    Changed { list: Arc<NodeList>, diff: Diff },
    /// The source confirmed the current list (304, or the same content).
    Unchanged { list: Arc<NodeList> },
    /// The source was asked less than the minimum interval ago (possibly by
    /// another process), or a file source still holds the version already
    /// rejected; nothing was requested and the cached list stands.
    Throttled {
        list: Option<Arc<NodeList>>,
        retry_in: Duration,
    },
    /// The fetch failed or the list was rejected; `list` is the last good
    /// list, if there is one.
    Failed {
        error: FetchError,
        list: Option<Arc<NodeList>>,
    },
}

impl Outcome {
    /// The list to use after this refresh: the new one, or the last good one.
    pub fn list(&self) -> Option<&Arc<NodeList>> {
        match self {
            Outcome::Changed { list, .. } | Outcome::Unchanged { list } => Some(list),
            Outcome::Throttled { list, .. } | Outcome::Failed { list, .. } => list.as_ref(),
        }
    }
}

/// What a new list is compared with before it is accepted.
#[derive(Debug, Clone, Copy)]
pub struct Baseline<'a> {
    /// The current (last good) list of this source.
    pub previous: Option<&'a NodeList>,
    /// The most networks an accepted list of this source had within the
    /// baseline window (a day by default): a list that shrinks a little on
    /// every run is still compared with where it stood, so it cannot be
    /// walked down. `None` for a source with no history (a new cache, or a
    /// cache left by another source).
    pub peak: Option<usize>,
}

/// A check a caller applies to a new list before it is accepted; an `Err`
/// is recorded as a failure and the old list stays (nodesync's shrink guard).
pub type Acceptance<'a> = &'a (dyn Fn(&Baseline<'_>, &NodeList) -> Result<(), String> + Sync);

/// Accepts every valid list.
pub fn accept_all(_: &Baseline<'_>, _: &NodeList) -> Result<(), String> {
    Ok(())
}

/// Fetches one source, remembering the last good list and the source's state
/// in memory and, if a cache path is given, on disk.
pub struct Fetcher {
    source: Source,
    shown_source: String,
    cache_path: Option<PathBuf>,
    options: FetchOptions,
    http: Option<reqwest::Client>,
    record: CacheRecord,
    list: Option<Arc<NodeList>>,
    /// The version of a file source last looked at, or why it could not
    /// be read.
    file_seen: Option<Result<FileStamp, FetchError>>,
    cache_error: Option<String>,
}

/// What identifies a version of a file source without reading it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FileStamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

impl Fetcher {
    /// Creates a fetcher, loading the cache file if there is one. A damaged
    /// or unreadable cache is reported through [`Fetcher::cache_error`] and
    /// otherwise treated as absent.
    pub fn new(
        source: Source,
        cache_path: Option<PathBuf>,
        options: FetchOptions,
    ) -> Result<Fetcher, FetchError> {
        let shown_source = source.to_string();
        let http = match &source {
            Source::Url(_) => Some(build_client(&options)?),
            Source::File(_) => None,
        };
        let mut cache_error = None;
        let loaded = match cache_path.as_deref().map(CacheRecord::load) {
            Some(Ok(record)) => record,
            Some(Err(e)) => {
                warn!(error = %e, "ignoring the nodes cache");
                cache_error = Some(e.to_string());
                None
            }
            None => None,
        };
        let loaded = loaded.filter(|record| {
            // A cache left by another source (a trial list, a test server)
            // is neither this source's last good list nor its baseline.
            let same = record.source == shown_source;
            if !same {
                debug!(old = %record.source, new = %shown_source, "the nodes cache is another source's; starting afresh");
            }
            same
        });
        let mut record = loaded.unwrap_or_else(|| CacheRecord::new(shown_source.clone()));
        let mut list = record.list().map(Arc::new);
        if let (Some(cached), Some(path)) = (&list, &cache_path)
            && let Err(e) = cached.check(&options.limits)
        {
            // Written under other rules (an older version, or with an escape
            // hatch since removed): not a list to fall back on.
            let message = format!(
                "the cache file {} holds a list the current rules refuse, so it is not used: {e}",
                path.display()
            );
            warn!(error = %message, "ignoring the nodes cache");
            cache_error = Some(message);
            list = None;
            record.nodes.clear();
            record.peak_networks = None;
            record.peak_at = None;
            record.etag = None;
            record.last_modified = None;
        }
        Ok(Fetcher {
            source,
            shown_source,
            cache_path,
            options,
            http,
            record,
            list,
            file_seen: None,
            cache_error,
        })
    }

    pub fn source(&self) -> &Source {
        &self.source
    }

    pub fn options(&self) -> &FetchOptions {
        &self.options
    }

    /// The last good list (from the cache or a fetch), if any.
    pub fn current(&self) -> Option<&Arc<NodeList>> {
        self.list.as_ref()
    }

    /// The state kept in the cache file.
    pub fn record(&self) -> &CacheRecord {
        &self.record
    }

    /// The last problem reading or writing the cache file, if any.
    pub fn cache_error(&self) -> Option<&str> {
        self.cache_error.as_deref()
    }

    /// Refreshes from the source, accepting any valid list.
    pub async fn refresh(&mut self) -> Outcome {
        self.refresh_with(&accept_all).await
    }

    /// Refreshes from the source; a valid new list is accepted only if
    /// `accept` agrees.
    pub async fn refresh_with(&mut self, accept: Acceptance<'_>) -> Outcome {
        let before = self.record.clone();
        let outcome = match self.source.clone() {
            Source::Url(url) => self.refresh_url(url, accept).await,
            Source::File(path) => self.refresh_file(&path, accept),
        };
        if let Outcome::Failed { error, .. } = &outcome {
            self.record.last_error = Some(error.to_string());
            self.record.last_error_unsafe = error.is_unsafe_list();
            self.record.consecutive_failures = self.record.consecutive_failures.saturating_add(1);
        }
        // Only what changed is written: a file source is checked every
        // second, and an unchanged one must not cost a write and an fsync.
        if self.record != before {
            self.persist();
        }
        outcome
    }

    async fn refresh_url(&mut self, url: url::Url, accept: Acceptance<'_>) -> Outcome {
        let now = unix_now();
        if let Some(retry_in) = self.throttled_for(now) {
            return Outcome::Throttled {
                list: self.list.clone(),
                retry_in,
            };
        }
        self.record.attempted_at = Some(now);
        let http = self.http.as_ref().expect("URL sources have a client");
        let mut request = http.get(url);
        if self.list.is_some() {
            if let Some(etag) = &self.record.etag {
                request = request.header(IF_NONE_MATCH, etag);
            }
            if let Some(modified) = &self.record.last_modified {
                request = request.header(IF_MODIFIED_SINCE, modified);
            }
        }
        let response = match request.send().await {
            Ok(r) => r,
            Err(e) => return self.failed(self.transport_error(e)),
        };
        let status = response.status();
        if status == StatusCode::NOT_MODIFIED && self.list.is_some() {
            self.record.fetched_at = Some(now);
            self.mark_success();
            self.note_peak();
            return Outcome::Unchanged {
                list: self.list.clone().expect("checked above"),
            };
        }
        if !status.is_success() {
            return self.failed(FetchError::Status {
                origin: self.shown_source.clone(),
                status: status.as_u16(),
            });
        }
        let etag = header_text(&response, ETAG);
        let last_modified = header_text(&response, LAST_MODIFIED);
        let body = match self.read_limited(response).await {
            Ok(body) => body,
            Err(e) => return self.failed(e),
        };
        let outcome = self.accept_body(&body, accept);
        if !matches!(outcome, Outcome::Failed { .. }) {
            self.record.fetched_at = Some(now);
            self.record.etag = etag;
            self.record.last_modified = last_modified;
        }
        outcome
    }

    fn refresh_file(&mut self, path: &Path, accept: Acceptance<'_>) -> Outcome {
        let seen = file_stamp(path).map_err(|e| self.file_error(e));
        if self.file_seen.as_ref() == Some(&seen) {
            // What was seen last time: confirmed if it was good; if it was
            // rejected or unreadable, there is nothing new to read (one bad
            // version is one failure and one log line, not one a second).
            return match (&self.list, &self.record.last_error) {
                (Some(list), None) => Outcome::Unchanged { list: list.clone() },
                (list, _) => Outcome::Throttled {
                    list: list.clone(),
                    retry_in: Duration::ZERO,
                },
            };
        }
        self.file_seen = Some(seen.clone());
        let stamp = match seen {
            Ok(stamp) => stamp,
            Err(error) => return self.failed(error),
        };
        if stamp.len > self.options.limits.max_bytes as u64 {
            return self.failed(FetchError::Invalid {
                origin: self.shown_source.clone(),
                error: ParseError::TooLarge {
                    size: usize::try_from(stamp.len).unwrap_or(usize::MAX),
                    limit: self.options.limits.max_bytes,
                },
            });
        }
        let body = match std::fs::read(path) {
            Ok(body) => body,
            Err(e) => return self.failed(self.file_error(e)),
        };
        let outcome = self.accept_body(&body, accept);
        if !matches!(outcome, Outcome::Failed { .. }) {
            self.record.fetched_at = Some(unix_now());
        }
        outcome
    }

    /// Parses and checks a body; on success it becomes the current list.
    fn accept_body(&mut self, body: &[u8], accept: Acceptance<'_>) -> Outcome {
        let new = match NodeList::parse(body, &self.options.limits) {
            Ok(list) => list,
            Err(error) => {
                return self.failed(FetchError::Invalid {
                    origin: self.shown_source.clone(),
                    error,
                });
            }
        };
        let baseline = Baseline {
            previous: self.list.as_deref(),
            peak: self.peak(),
        };
        if let Err(reason) = accept(&baseline, &new) {
            return self.failed(FetchError::Refused {
                origin: self.shown_source.clone(),
                reason,
            });
        }
        self.mark_success();
        let outcome = match &self.list {
            Some(old) if **old == new => Outcome::Unchanged { list: old.clone() },
            old => {
                let diff = match old {
                    Some(old) => old.diff(&new),
                    None => NodeList::from_networks([]).diff(&new),
                };
                let list = Arc::new(new);
                self.record.set_list(&list);
                self.record.changed_at = Some(unix_now());
                self.list = Some(list.clone());
                Outcome::Changed { list, diff }
            }
        };
        self.note_peak();
        outcome
    }

    /// The baseline peak, if it is still within the window.
    fn peak(&self) -> Option<usize> {
        let (networks, at) = (self.record.peak_networks?, self.record.peak_at?);
        let age = unix_now().saturating_sub(at);
        (age <= self.options.baseline_window.as_secs()).then_some(networks)
    }

    /// After a success: the current list becomes the peak if it is at least
    /// as large, or if the old peak has left the window.
    fn note_peak(&mut self) {
        let Some(current) = self.list.as_ref().map(|l| l.len()) else {
            return;
        };
        if self.peak().is_none_or(|peak| current >= peak) {
            self.record.peak_networks = Some(current);
            self.record.peak_at = Some(unix_now());
        }
    }

    fn mark_success(&mut self) {
        self.record.last_error = None;
        self.record.last_error_unsafe = false;
        self.record.consecutive_failures = 0;
    }

    fn failed(&self, error: FetchError) -> Outcome {
        Outcome::Failed {
            error,
            list: self.list.clone(),
        }
    }

    /// Time left before the source may be asked again, if any.
    fn throttled_for(&self, now: u64) -> Option<Duration> {
        let last = self.record.attempted_at?;
        // A last request "in the future" means the clock was set back; do not
        // stay silent for that long.
        if last > now {
            return None;
        }
        let elapsed = Duration::from_secs(now - last);
        self.options
            .min_interval
            .checked_sub(elapsed)
            .filter(|left| !left.is_zero())
    }

    async fn read_limited(&self, mut response: reqwest::Response) -> Result<Vec<u8>, FetchError> {
        let limit = self.options.limits.max_bytes;
        let too_large = |size: usize| FetchError::Invalid {
            origin: self.shown_source.clone(),
            error: ParseError::TooLarge { size, limit },
        };
        if let Some(len) = response.content_length()
            && len > limit as u64
        {
            return Err(too_large(usize::try_from(len).unwrap_or(usize::MAX)));
        }
        let mut body = Vec::new();
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    body.extend_from_slice(&chunk);
                    if body.len() > limit {
                        return Err(too_large(body.len()));
                    }
                }
                Ok(None) => return Ok(body),
                Err(e) => return Err(self.transport_error(e)),
            }
        }
    }

    fn transport_error(&self, e: reqwest::Error) -> FetchError {
        let origin = self.shown_source.clone();
        if e.is_timeout() {
            let seconds = self.options.total_timeout.as_secs();
            return FetchError::Timeout { origin, seconds };
        }
        let is_connect = e.is_connect();
        // The URL is already in the message once, without credentials.
        let detail = error_chain(&e.without_url());
        if is_connect {
            FetchError::Connect { origin, detail }
        } else {
            FetchError::Transport { origin, detail }
        }
    }

    fn file_error(&self, e: std::io::Error) -> FetchError {
        FetchError::File {
            origin: self.shown_source.clone(),
            detail: e.to_string(),
        }
    }

    fn persist(&mut self) {
        let Some(path) = &self.cache_path else {
            return;
        };
        match self.record.store(path) {
            Ok(()) => self.cache_error = None,
            Err(e) => {
                warn!(error = %e, "cannot save the nodes cache");
                self.cache_error = Some(e.to_string());
            }
        }
    }
}

fn build_client(options: &FetchOptions) -> Result<reqwest::Client, FetchError> {
    reqwest::Client::builder()
        .connect_timeout(options.connect_timeout)
        .timeout(options.total_timeout)
        .user_agent(concat!("b24-nodes/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| FetchError::Client(error_chain(&e)))
}

fn header_text(response: &reqwest::Response, name: reqwest::header::HeaderName) -> Option<String> {
    response
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

fn file_stamp(path: &Path) -> std::io::Result<FileStamp> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path)?;
    Ok(FileStamp {
        modified: meta.modified().ok(),
        len: meta.len(),
        inode: meta.ino(),
    })
}

/// An error and its causes on one line ("a: b: c").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let part = c.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        cause = c.source();
    }
    text
}

/// Unix seconds of a time, for callers that report ages.
pub fn age_of(unix_secs: u64) -> Duration {
    Duration::from_secs(unix_now().saturating_sub(unix_secs))
}
