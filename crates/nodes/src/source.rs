//! Where a nodes list comes from: a URL or a local file.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use url::Url;

/// The list Bitrix24 publishes (shared/BITRIX24.md §1).
pub const DEFAULT_SOURCE: &str = "https://dl.bitrix24.com/webhook/app.json";

/// A nodes list source: an `http(s)://` URL, or a path to a file in the
/// `app.json` format (for example one that `nodesync --emit json` keeps).
#[derive(Clone, PartialEq, Eq)]
pub enum Source {
    Url(Url),
    File(PathBuf),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SourceError {
    #[error("source {0:?} is not a valid URL: {1}")]
    BadUrl(String, String),
    #[error("source {0:?} uses an unsupported scheme; use https://, http:// or a file path")]
    UnsupportedScheme(String),
    #[error("source is empty")]
    Empty,
}

impl FromStr for Source {
    type Err = SourceError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        if text.is_empty() {
            return Err(SourceError::Empty);
        }
        let lower = text.to_ascii_lowercase();
        if lower.starts_with("http://") || lower.starts_with("https://") {
            let url = Url::parse(text)
                .map_err(|e| SourceError::BadUrl(redact_url_text(text), e.to_string()))?;
            return Ok(Source::Url(url));
        }
        if let Some(path) = lower
            .strip_prefix("file://")
            .map(|_| &text["file://".len()..])
        {
            return Ok(Source::File(PathBuf::from(path)));
        }
        // Anything else with a scheme (ftp://, s3://…) is a mistake, not a
        // relative path named "ftp:".
        if text.contains("://") {
            return Err(SourceError::UnsupportedScheme(redact_url_text(text)));
        }
        Ok(Source::File(PathBuf::from(text)))
    }
}

impl Default for Source {
    fn default() -> Self {
        DEFAULT_SOURCE
            .parse()
            .expect("the default source is a valid URL")
    }
}

/// Shown in logs, errors and the cache file. A URL is shown without its user
/// info and query, which is where credentials would be if someone put them
/// there.
impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Url(url) => {
                let mut shown = url.clone();
                let _ = shown.set_username("");
                let _ = shown.set_password(None);
                if shown.query().is_some() {
                    shown.set_query(Some("…"));
                }
                write!(f, "{shown}")
            }
            Source::File(path) => write!(f, "{}", path.display()),
        }
    }
}

impl fmt::Debug for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Source({self})")
    }
}

fn redact_url_text(text: &str) -> String {
    // Cut at the first '?' and drop anything before an '@' in the authority.
    let no_query = text.split('?').next().unwrap_or(text);
    match no_query.split_once("://") {
        Some((scheme, rest)) => {
            let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
            let host = authority.rsplit('@').next().unwrap_or(authority);
            format!("{scheme}://{host}/{path}")
        }
        None => no_query.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_paths() {
        assert!(matches!(
            "https://dl.bitrix24.com/webhook/app.json".parse(),
            Ok(Source::Url(_))
        ));
        assert!(matches!(
            "HTTP://127.0.0.1:8080/app.json".parse(),
            Ok(Source::Url(_))
        ));
        assert_eq!(
            "/var/lib/nodesync/app.json".parse::<Source>(),
            Ok(Source::File("/var/lib/nodesync/app.json".into()))
        );
        assert_eq!(
            "file:///etc/app.json".parse::<Source>(),
            Ok(Source::File("/etc/app.json".into()))
        );
        assert!(matches!(
            "ftp://x/app.json".parse::<Source>(),
            Err(SourceError::UnsupportedScheme(_))
        ));
        assert_eq!("  ".parse::<Source>(), Err(SourceError::Empty));
        assert_eq!(Source::default().to_string(), DEFAULT_SOURCE);
    }

    #[test]
    fn display_hides_credentials() {
        let source: Source = "https://user:pw@example.test/app.json?token=abc"
            .parse()
            .unwrap();
        let shown = source.to_string();
        assert!(
            !shown.contains("pw") && !shown.contains("abc") && !shown.contains("user"),
            "{shown}"
        );
        let err = "ftp://user:pw@example.test/x?token=abc"
            .parse::<Source>()
            .unwrap_err();
        assert!(
            !err.to_string().contains("pw") && !err.to_string().contains("abc"),
            "{err}"
        );
    }
}
