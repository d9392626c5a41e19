//! What one run leaves for the next (beside the per-source caches): the
//! options of the last successful `--apply`, so that `--restore` can load
//! the same rules at boot from the cache alone, and the problems already
//! reported, so that cron mails a problem when it begins, changes or ends —
//! not every five minutes while it lasts.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

const VERSION: u32 = 1;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RunState {
    pub version: u32,
    /// The arguments (without the program name) of the last run whose
    /// `--apply` succeeded.
    pub applied_args: Option<Vec<String>>,
    pub applied_at: Option<u64>,
    /// Problems reported by earlier runs, by area ("apply", "metrics"…).
    #[serde(default)]
    pub reported: BTreeMap<String, String>,
}

impl RunState {
    /// Reads the state; a missing or damaged file is an empty state (the
    /// worst outcome is one repeated message).
    pub fn load(path: &Path) -> RunState {
        std::fs::read(path)
            .ok()
            .and_then(|bytes| serde_json::from_slice::<RunState>(&bytes).ok())
            .filter(|s| s.version == VERSION)
            .unwrap_or_else(|| RunState {
                version: VERSION,
                ..RunState::default()
            })
    }

    pub fn store(&self, path: &Path) -> std::io::Result<()> {
        let mut body = serde_json::to_vec_pretty(self).expect("the state always serializes");
        body.push(b'\n');
        b24_nodes::write_atomically(path, &body)
    }

    /// Records the problem of `area` (`None`: there is none now) and says
    /// what is news: the problem when it is new or different, a recovery
    /// line when one has ended.
    pub fn note(&mut self, area: &str, problem: Option<String>) -> Note {
        let before = self.reported.get(area).cloned();
        match (before, problem) {
            (None, None) => Note::Quiet,
            (Some(old), None) => {
                self.reported.remove(area);
                Note::Ended(old)
            }
            (Some(old), Some(new)) if old == new => Note::Quiet,
            (_, Some(new)) => {
                self.reported.insert(area.to_string(), new.clone());
                Note::New(new)
            }
        }
    }
}

/// What [`RunState::note`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Note {
    Quiet,
    New(String),
    Ended(String),
}

/// The files that live next to the cache: `<dir>/<stem>.state.json` and
/// `<dir>/<stem>.lock`.
pub fn sibling(cache: &Path, suffix: &str) -> PathBuf {
    let stem = cache
        .file_stem()
        .map_or("cache".into(), |s| s.to_string_lossy().into_owned());
    cache.with_file_name(format!("{stem}.{suffix}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problems_are_news_when_they_begin_change_and_end() {
        let mut state = RunState::default();
        assert_eq!(state.note("apply", None), Note::Quiet);
        assert_eq!(
            state.note("apply", Some("nft failed".into())),
            Note::New("nft failed".into())
        );
        assert_eq!(state.note("apply", Some("nft failed".into())), Note::Quiet);
        assert_eq!(
            state.note("apply", Some("locked out".into())),
            Note::New("locked out".into())
        );
        assert_eq!(state.note("apply", None), Note::Ended("locked out".into()));
        assert_eq!(state.note("apply", None), Note::Quiet);
    }

    #[test]
    fn round_trip_and_siblings() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cache.state.json");
        assert_eq!(RunState::load(&path).version, 1);
        let mut state = RunState::load(&path);
        state.applied_args = Some(vec!["--emit".into(), "nftables".into()]);
        state.store(&path).unwrap();
        assert_eq!(RunState::load(&path), state);
        assert_eq!(
            sibling(Path::new("/var/lib/nodesync/cache.json"), "lock"),
            Path::new("/var/lib/nodesync/cache.lock")
        );
    }
}
