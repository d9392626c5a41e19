//! The list of addresses Bitrix24 publishes for its event-delivery servers
//! (`app.json`): parsed and validated, merged into a fast address set,
//! fetched politely with a cache file that survives restarts, and published
//! to long-running services through a lock-free handle.
//!
//! ```
//! use b24_nodes::{Limits, NodeList};
//!
//! let list = NodeList::parse(br#"{"nodes": ["195.208.184.200", "2a02:6b8:c00::/48"]}"#, &Limits::default())?;
//! assert!(list.contains("195.208.184.200".parse()?));
//! assert!(!list.contains("195.208.184.201".parse()?));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod addrset;
pub mod cache;
mod fetch;
mod list;
mod live;
pub mod policy;
mod set;
mod source;

pub use addrset::AddrSet;
pub use cache::{CacheError, CacheRecord, write_atomically};
pub use fetch::{
    Acceptance, BASELINE_WINDOW, Baseline, FetchError, FetchOptions, Fetcher, MIN_INTERVAL,
    Outcome, accept_all, age_of,
};
pub use list::{Diff, Limits, NodeList, ParseError, display_network, parse_network};
pub use live::{
    LiveNodes, RefreshStatus, Schedule, SourceState, run_refresh_loop, run_refresh_loops,
};
pub use set::{FetcherSet, cache_path_for, union_of};
pub use source::{DEFAULT_SOURCE, Source, SourceError};
