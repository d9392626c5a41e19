//! The cache file: the last good list and what we know about the source.
//!
//! It is what makes the tool safe across restarts and cron runs: a process
//! that starts while the source is down still has the last good list, and
//! the time of the last request is shared by every run, so the source is
//! never asked more than once per minimum interval.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::list::{NodeList, display_network, parse_network};

/// Cache file format version; a file with another version is ignored.
const FORMAT_VERSION: u32 = 1;

/// The on-disk record. Times are Unix seconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CacheRecord {
    pub version: u32,
    /// The source as displayed (credentials removed).
    pub source: String,
    /// The last good list, merged, in `app.json` entry form.
    pub nodes: Vec<String>,
    /// When the source last confirmed the list (a 200 or a 304).
    pub fetched_at: Option<u64>,
    /// When the source was last asked, successfully or not.
    pub attempted_at: Option<u64>,
    /// When the list last changed.
    pub changed_at: Option<u64>,
    pub etag: Option<String>,
    pub last_modified: Option<String>,
    /// The last failure, if the last attempt failed.
    pub last_error: Option<String>,
    pub consecutive_failures: u32,
    /// Whether the last failure was a list refused as unsafe (entries too
    /// broad or special-purpose).
    #[serde(default)]
    pub last_error_unsafe: bool,
    /// The shrink baseline: the most networks an accepted list had within
    /// the baseline window, and when a list that large was last seen.
    #[serde(default)]
    pub peak_networks: Option<usize>,
    #[serde(default)]
    pub peak_at: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("cannot read cache file {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("cache file {path} is damaged ({detail}); it will be rewritten on the next good fetch")]
    Damaged { path: PathBuf, detail: String },
    #[error("cannot write cache file {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
}

impl CacheRecord {
    pub fn new(source: String) -> CacheRecord {
        CacheRecord {
            version: FORMAT_VERSION,
            source,
            ..CacheRecord::default()
        }
    }

    /// The stored list, if there is a usable one. It is not checked against
    /// any entry rules; [`NodeList::check`] does that.
    pub fn list(&self) -> Option<NodeList> {
        let nets: Option<Vec<_>> = self.nodes.iter().map(|n| parse_network(n)).collect();
        let list = NodeList::from_networks(nets?);
        (!list.is_empty()).then_some(list)
    }

    pub fn set_list(&mut self, list: &NodeList) {
        self.nodes = list.networks().map(|n| display_network(&n)).collect();
    }

    /// Reads the record; `Ok(None)` when there is no file yet.
    pub fn load(path: &Path) -> Result<Option<CacheRecord>, CacheError> {
        let bytes = match fs::read(path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(CacheError::Read {
                    path: path.to_owned(),
                    source,
                });
            }
        };
        let record: CacheRecord =
            serde_json::from_slice(&bytes).map_err(|e| CacheError::Damaged {
                path: path.to_owned(),
                detail: e.to_string(),
            })?;
        if record.version != FORMAT_VERSION {
            return Err(CacheError::Damaged {
                path: path.to_owned(),
                detail: format!("format version {} is not {FORMAT_VERSION}", record.version),
            });
        }
        Ok(Some(record))
    }

    /// Writes the record atomically (see [`write_atomically`]).
    pub fn store(&self, path: &Path) -> Result<(), CacheError> {
        let mut body = serde_json::to_vec_pretty(self).expect("the record always serializes");
        body.push(b'\n');
        write_atomically(path, &body).map_err(|source| CacheError::Write {
            path: path.to_owned(),
            source,
        })
    }
}

/// Writes `contents` to `path` so that readers see either the old file or the
/// new one, never a part: a temporary file in the same directory, fsync,
/// rename over the target, fsync of the directory. The file mode of an
/// existing target is kept (a firewall script stays non-world-readable).
pub fn write_atomically(path: &Path, contents: &[u8]) -> io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".{}.tmp", std::process::id()));
    let tmp = dir.join(tmp_name);

    let result = (|| {
        let mut file = File::create(&tmp)?;
        if let Ok(meta) = fs::metadata(path) {
            file.set_permissions(meta.permissions())?;
        }
        file.write_all(contents)?;
        file.sync_all()?;
        drop(file);
        fs::rename(&tmp, path)?;
        // The rename is durable only once the directory entry is.
        if let Ok(d) = File::open(&dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Now, as Unix seconds.
pub fn unix_now() -> u64 {
    to_unix(SystemTime::now())
}

pub fn to_unix(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs()
}

pub fn from_unix(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_missing_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nodes.json");
        assert!(CacheRecord::load(&path).unwrap().is_none());

        let list = NodeList::parse(
            br#"{"nodes": ["10.0.0.0/24", "2001:db8::1"]}"#,
            &crate::Limits::allowing_special(),
        )
        .unwrap();
        let mut record = CacheRecord::new("https://example.test/app.json".into());
        record.set_list(&list);
        record.fetched_at = Some(1_700_000_000);
        record.etag = Some("\"abc\"".into());
        record.store(&path).unwrap();

        let loaded = CacheRecord::load(&path).unwrap().unwrap();
        assert_eq!(loaded, record);
        assert_eq!(loaded.list().unwrap(), list);
        // No temporary file is left behind.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn damaged_file_is_reported_not_trusted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nodes.json");
        fs::write(&path, b"{\"version\": 1, \"nodes\": [").unwrap();
        let err = CacheRecord::load(&path).unwrap_err();
        assert!(err.to_string().contains("damaged"), "{err}");
    }

    #[test]
    fn atomic_write_keeps_mode() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rules.nft");
        fs::write(&path, b"old").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        write_atomically(&path, b"new").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"new");
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
}
