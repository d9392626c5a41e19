//! Several sources at once: Bitrix24 publishes its list at more than one
//! place (`dl.bitrix24.com/webhook/app.json`, `…/app-world.json`,
//! `repos.1c-bitrix.ru/webhook/app.json`), and a box may need the union.
//!
//! Each source is fetched and cached on its own — its own cache file, its
//! own 60 s rule, its own last good list and shrink baseline — so one
//! failing or refused source keeps its last good part while the others
//! move on. What is admitted is the union of the parts.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::fetch::{FetchError, FetchOptions, Fetcher};
use crate::list::NodeList;
use crate::source::Source;

/// One fetcher per source, in the order given.
pub struct FetcherSet {
    fetchers: Vec<Fetcher>,
}

impl FetcherSet {
    /// Creates a fetcher for each distinct source. With one source the
    /// cache file is `cache` itself (as it always was); with several, each
    /// source gets its own file next to it (see [`cache_path_for`]).
    pub fn new(
        sources: &[Source],
        cache: Option<&Path>,
        options: FetchOptions,
    ) -> Result<FetcherSet, FetchError> {
        let mut distinct: Vec<&Source> = Vec::with_capacity(sources.len());
        for source in sources {
            if !distinct.contains(&source) {
                distinct.push(source);
            }
        }
        let count = distinct.len();
        let fetchers = distinct
            .into_iter()
            .map(|source| {
                let path = cache.map(|base| {
                    let path = cache_path_for(base, source, count);
                    adopt_single_source_cache(base, &path, source);
                    path
                });
                Fetcher::new(source.clone(), path, options.clone())
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(FetcherSet { fetchers })
    }

    pub fn fetchers(&self) -> &[Fetcher] {
        &self.fetchers
    }

    pub fn fetchers_mut(&mut self) -> &mut [Fetcher] {
        &mut self.fetchers
    }

    pub fn into_fetchers(self) -> Vec<Fetcher> {
        self.fetchers
    }

    /// The union of every source's current list; `None` when no source has
    /// one.
    pub fn union(&self) -> Option<Arc<NodeList>> {
        union_of(self.fetchers.iter().filter_map(|f| f.current().cloned()))
    }
}

/// The union of lists; one list is returned as is (no copy), none gives
/// `None`.
pub fn union_of(lists: impl IntoIterator<Item = Arc<NodeList>>) -> Option<Arc<NodeList>> {
    let mut lists = lists.into_iter();
    let first = lists.next()?;
    let rest: Vec<Arc<NodeList>> = lists.collect();
    if rest.is_empty() {
        return Some(first);
    }
    let all = first
        .networks()
        .chain(rest.iter().flat_map(|l| l.networks()))
        .collect::<Vec<_>>();
    Some(Arc::new(NodeList::from_networks(all)))
}

/// The cache file of `source` when `count` sources share the base path
/// `base`: `base` itself for a single source; otherwise
/// `<stem>.<host>-<hash>.<ext>` next to it, named after the source (not its
/// position), so that reordering the sources keeps each one's history.
pub fn cache_path_for(base: &Path, source: &Source, count: usize) -> PathBuf {
    if count <= 1 {
        return base.to_path_buf();
    }
    let stem = base
        .file_stem()
        .map_or("cache".into(), |s| s.to_string_lossy().into_owned());
    let ext = base
        .extension()
        .map_or("json".into(), |s| s.to_string_lossy().into_owned());
    let (label, identity) = match source {
        Source::Url(url) => (
            url.host_str().unwrap_or("url").to_string(),
            url.as_str().to_string(),
        ),
        Source::File(path) => (
            path.file_stem()
                .map_or("file".into(), |s| s.to_string_lossy().into_owned()),
            path.display().to_string(),
        ),
    };
    let label: String = label
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .take(40)
        .collect();
    let name = format!(
        "{stem}.{label}-{:08x}.{ext}",
        fnv1a(identity.as_bytes()) as u32
    );
    base.with_file_name(name)
}

/// When a second source is added, the first one's history is in the
/// single-source cache file: copy it to that source's own file once, so its
/// last good list, 60 s rule and baseline carry over.
fn adopt_single_source_cache(base: &Path, own: &Path, source: &Source) {
    if own == base || own.exists() {
        return;
    }
    let Ok(Some(record)) = crate::cache::CacheRecord::load(base) else {
        return;
    };
    if record.source == source.to_string() {
        let _ = record.store(own);
    }
}

/// FNV-1a, 64 bits: a stable name for a source, not a secret.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_source_keeps_the_given_path_several_get_their_own() {
        let base = Path::new("/var/lib/nodesync/cache.json");
        let a: Source = "https://dl.bitrix24.com/webhook/app.json".parse().unwrap();
        let b: Source = "https://repos.1c-bitrix.ru/webhook/app.json"
            .parse()
            .unwrap();
        assert_eq!(cache_path_for(base, &a, 1), base);
        let pa = cache_path_for(base, &a, 2);
        let pb = cache_path_for(base, &b, 2);
        assert_ne!(pa, pb);
        assert_eq!(pa.parent(), base.parent());
        let name = pa.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            name.starts_with("cache.dl.bitrix24.com-") && name.ends_with(".json"),
            "{name}"
        );
        // Stable: the same source always maps to the same file.
        assert_eq!(cache_path_for(base, &a, 3), pa);
    }

    #[test]
    fn union_merges_the_parts() {
        let a = Arc::new(NodeList::from_networks(["195.208.184.200/32"
            .parse()
            .unwrap()]));
        let b = Arc::new(NodeList::from_networks([
            "195.208.184.201/32".parse().unwrap(),
            "89.208.230.2/32".parse().unwrap(),
        ]));
        let union = union_of([a.clone(), b]).unwrap();
        assert_eq!(union.len(), 2, "adjacent addresses merge: {:?}", union.v4());
        assert!(Arc::ptr_eq(&union_of([a.clone()]).unwrap(), &a));
        assert!(union_of(Vec::new()).is_none());
    }
}
