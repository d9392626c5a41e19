//! Configuration errors that say where and what to write instead:
//!
//! ```text
//! /etc/b24-edge/edge.toml:3:10: server.listen: "localhost:25080" is not an IP address and port; write 127.0.0.1:25080 (or [::1]:25080): host names are not looked up
//!    3 | listen = "localhost:25080"
//!      |          ^^^^^^^^^^^^^^^^^
//! ```
//!
//! Syntax and type errors come located from the TOML parser; semantic
//! errors (found after parsing, naming a key such as `route[1].allow`) are
//! located by looking the key up in the same text. Lines and columns count
//! from 1, columns in characters (never bytes). A line that may hold a
//! secret (a webhook URL, a token, a password, credentials in a URL) is
//! shown with its strings hidden, and so is any quoted value in the message.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use toml::de::{DeTable, DeValue};

/// A place in a configuration file: 1-based line and column (characters).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    pub line: usize,
    pub column: usize,
}

/// The offending line as shown under the message.
#[derive(Debug, Clone)]
struct Excerpt {
    line: String,
    /// Character range to underline; `None` when the line was redacted
    /// (the underline would no longer match it).
    underline: Option<Range<usize>>,
}

/// A configuration that cannot be used: where (file, line, column), which
/// key, what is wrong and, where it helps, what to write instead.
#[derive(Debug, Clone)]
pub struct ConfigError(Box<Details>);

#[derive(Debug, Clone)]
struct Details {
    file: Option<PathBuf>,
    location: Option<Location>,
    key: Option<String>,
    message: String,
    excerpt: Option<Excerpt>,
}

impl ConfigError {
    /// A problem with one key, found after parsing (`route[1].allow`,
    /// `portal.partner.webhook`). [`ConfigError::locate`] finds the line.
    pub fn invalid(key: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError(Box::new(Details {
            file: None,
            location: None,
            key: Some(key.into()),
            message: message.into(),
            excerpt: None,
        }))
    }

    /// A message written as `KEY: problem` (``route `p2e`.when.stages: …``,
    /// `store: …`): the key is taken from it when it reads as one, so
    /// [`ConfigError::locate`] can find the line; otherwise the whole text is
    /// the message.
    pub fn keyed(text: impl Into<String>) -> Self {
        let text = text.into();
        match text.split_once(": ") {
            Some((key, problem)) if key_path(key).is_some() => Self::invalid(key, problem),
            _ => Self::message(text),
        }
    }

    /// A problem that is not about one key (two keys that contradict each
    /// other, a missing section): the message names what to change.
    pub fn message(message: impl Into<String>) -> Self {
        ConfigError(Box::new(Details {
            file: None,
            location: None,
            key: None,
            message: message.into(),
            excerpt: None,
        }))
    }

    /// The file could not be read. The I/O error is part of the message
    /// (it is not also a `source()`, so no chain prints it twice).
    pub fn read(path: &Path, error: &std::io::Error) -> Self {
        ConfigError(Box::new(Details {
            file: None,
            location: None,
            key: None,
            message: format!("cannot read {}: {error}", path.display()),
            excerpt: None,
        }))
    }

    /// A syntax or type error from the TOML parser, located in `text`.
    pub fn from_toml(text: &str, error: &toml::de::Error) -> Self {
        let key = keys_of(error);
        let mut config_error = ConfigError(Box::new(Details {
            file: None,
            location: None,
            key,
            message: error
                .message()
                .lines()
                .next()
                .unwrap_or("")
                .trim()
                .to_owned(),
            excerpt: None,
        }));
        if let Some(span) = error.span() {
            config_error.place(text, span);
            // The parser's message may quote the value (serde's "invalid
            // type: string \"…\""); ours never quote a secret.
            if config_error
                .0
                .excerpt
                .as_ref()
                .is_some_and(|e| e.underline.is_none())
            {
                config_error.0.message = hide_quoted(&config_error.0.message);
            }
        }
        config_error
    }

    /// Finds the key this error names in `text` (the value's position, or
    /// the nearest enclosing table when the key itself is missing). Errors
    /// that are already located, or name no key, are returned unchanged.
    pub fn locate(mut self, text: &str) -> Self {
        if self.0.location.is_some() {
            return self;
        }
        if let Some(span) = self.0.key.as_deref().and_then(|key| key_span(text, key)) {
            self.place(text, span);
        }
        self
    }

    /// Names the file in the message (`edge.toml:3:10: …`).
    pub fn in_file(mut self, path: &Path) -> Self {
        if self.0.file.is_none() && !self.0.message.starts_with("cannot read ") {
            self.0.file = Some(path.to_owned());
        }
        self
    }

    /// The key the error is about, as written in messages.
    pub fn key(&self) -> Option<&str> {
        self.0.key.as_deref()
    }

    pub fn location(&self) -> Option<Location> {
        self.0.location
    }

    /// What is wrong, without the key and the location.
    pub fn problem(&self) -> &str {
        &self.0.message
    }

    fn place(&mut self, text: &str, span: Range<usize>) {
        let start = floor_char_boundary(text, span.start.min(text.len()));
        let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
        let line_end = text[line_start..]
            .find('\n')
            .map_or(text.len(), |i| line_start + i);
        let line_text = text[line_start..line_end].trim_end_matches('\r');
        let line = text[..line_start].matches('\n').count() + 1;
        let column = text[line_start..start].chars().count() + 1;
        self.0.location = Some(Location { line, column });
        let secret = looks_secret(line_text) || self.0.key.as_deref().is_some_and(key_is_secret);
        if secret {
            self.0.excerpt = Some(Excerpt {
                line: hide_quoted(line_text),
                underline: None,
            });
        } else {
            let end =
                floor_char_boundary(text, span.end.clamp(start, line_start + line_text.len()));
            let width = text[start..end].chars().count().max(1);
            self.0.excerpt = Some(Excerpt {
                line: line_text.to_owned(),
                underline: Some(column - 1..column - 1 + width),
            });
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.0.file, self.0.location) {
            (Some(file), Some(at)) => write!(f, "{}:{}:{}: ", file.display(), at.line, at.column)?,
            (Some(file), None) => write!(f, "{}: ", file.display())?,
            (None, Some(at)) => write!(f, "line {}, column {}: ", at.line, at.column)?,
            (None, None) => {}
        }
        if let Some(key) = &self.0.key {
            write!(f, "{key}: ")?;
        }
        f.write_str(&self.0.message)?;
        if let (Some(excerpt), Some(at)) = (&self.0.excerpt, self.0.location) {
            let number = at.line.to_string();
            let gutter = " ".repeat(number.len().max(4));
            write!(f, "\n{number:>4} | {}", excerpt.line)?;
            if let Some(underline) = &excerpt.underline {
                // Tabs before the column stay tabs, so the mark lines up.
                let pad: String = excerpt
                    .line
                    .chars()
                    .take(underline.start)
                    .map(|c| if c == '\t' { '\t' } else { ' ' })
                    .collect();
                write!(f, "\n{gutter} | {pad}{}", "^".repeat(underline.len()))?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// Reads a configuration file.
pub fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|e| ConfigError::read(path, &e))
}

/// Deserializes `text`, locating any syntax or type error.
pub fn parse<T: DeserializeOwned>(text: &str) -> Result<T, ConfigError> {
    toml::from_str(text).map_err(|e| ConfigError::from_toml(text, &e))
}

/// The keys toml names for an error (`server.listen`); they are only in
/// its Display, after the message, when the input is not attached.
fn keys_of(error: &toml::de::Error) -> Option<String> {
    let mut bare = error.clone();
    bare.set_input(None);
    let shown = bare.to_string();
    let keys = shown
        .lines()
        .rev()
        .find_map(|line| line.strip_prefix("in `")?.strip_suffix('`'))?;
    (!keys.is_empty()).then(|| keys.to_owned())
}

/// One step of a key path: a table key, then array indexes or a name.
#[derive(Debug, PartialEq, Eq)]
enum Step<'k> {
    /// `route[1]`: the element at this index.
    Index(usize),
    /// ``route `p2e` ``: the element whose `name` is this.
    Named(&'k str),
}

/// `route[1].target.stages` → [("route", [Index(1)]), ("target", []), …];
/// ``route `p2e`.when`` → [("route", [Named("p2e")]), ("when", [])].
fn key_path(key: &str) -> Option<Vec<(&str, Vec<Step<'_>>)>> {
    let mut path = Vec::new();
    let mut rest = key;
    while !rest.is_empty() {
        // A backquoted name may hold dots: take it whole.
        let end = match rest.find(" `") {
            Some(open) if rest[..open].find('.').is_none() => {
                let close = rest[open + 2..].find('`')? + open + 2;
                close + 1
            }
            _ => rest.find('.').unwrap_or(rest.len()),
        };
        path.push(key_segment(&rest[..end])?);
        rest = rest[end..].strip_prefix('.').unwrap_or(&rest[end..]);
        if rest.is_empty() && key.ends_with('.') {
            return None;
        }
    }
    (!path.is_empty()).then_some(path)
}

fn key_segment(segment: &str) -> Option<(&str, Vec<Step<'_>>)> {
    if let Some((name, quoted)) = segment.split_once(" `") {
        let named = quoted.strip_suffix('`')?;
        return bare(name).then_some((name, vec![Step::Named(named)]));
    }
    let (name, mut rest) = segment.split_at(segment.find('[').unwrap_or(segment.len()));
    let mut steps = Vec::new();
    while let Some(inside) = rest.strip_prefix('[') {
        let (number, after) = inside.split_once(']')?;
        steps.push(Step::Index(number.parse().ok()?));
        rest = after;
    }
    (rest.is_empty() && bare(name)).then_some((name, steps))
}

fn bare(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// The byte span of the value at `key` in `text`, or of the deepest table
/// on its path that exists.
fn key_span(text: &str, key: &str) -> Option<Range<usize>> {
    let path = key_path(key)?;
    let root = DeTable::parse(text).ok()?;
    let mut found: Option<Range<usize>> = None;
    let mut table: &DeTable<'_> = root.get_ref();
    let mut steps = path.iter().peekable();
    while let Some((name, selectors)) = steps.next() {
        let Some((_, value)) = table.iter().find(|(k, _)| k.get_ref().as_ref() == *name) else {
            break;
        };
        let mut value = value;
        for selector in selectors {
            let DeValue::Array(items) = value.get_ref() else {
                return found.or(Some(value.span()));
            };
            let item = match selector {
                Step::Index(index) => items.get(*index),
                Step::Named(wanted) => items.iter().find(|item| {
                    item.get_ref()
                        .get("name")
                        .and_then(|n| n.get_ref().as_str())
                        == Some(*wanted)
                }),
            };
            match item {
                Some(item) => value = item,
                None => return found.or(Some(value.span())),
            }
        }
        found = Some(value.span());
        match value.get_ref() {
            DeValue::Table(inner) if steps.peek().is_some() => table = inner,
            _ => break,
        }
    }
    found
}

fn floor_char_boundary(text: &str, mut index: usize) -> usize {
    while index > 0 && !text.is_char_boundary(index) {
        index -= 1;
    }
    index
}

/// Key names whose values are credentials or carry them.
const SECRET_WORDS: [&str; 8] = [
    "webhook",
    "token",
    "secret",
    "password",
    "passwd",
    "credential",
    "auth",
    "private",
];

fn key_is_secret(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    SECRET_WORDS.iter().any(|w| key.contains(w))
}

/// Whether a line may show a secret: a secret-named key, a webhook URL
/// (`/rest/USER/SECRET/`), a token in a query, or credentials in a URL.
fn looks_secret(line: &str) -> bool {
    let lower = line.to_ascii_lowercase();
    if SECRET_WORDS.iter().any(|w| lower.contains(w)) || lower.contains("/rest/") {
        return true;
    }
    // scheme://user:password@host
    lower.split("://").skip(1).any(|rest| {
        let authority = rest
            .split(['/', '"', '\'', ' ', '?', '#'])
            .next()
            .unwrap_or("");
        authority.contains('@')
    })
}

/// Replaces what is inside "…" and '…' with `<hidden>` (an unterminated
/// string hides the rest of the text).
fn hide_quoted(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        out.push(c);
        if c != '"' && c != '\'' {
            continue;
        }
        let mut escaped = false;
        let mut closed = false;
        for inner in chars.by_ref() {
            if c == '"' && !escaped && inner == '\\' {
                escaped = true;
                continue;
            }
            if inner == c && !escaped {
                closed = true;
                break;
            }
            escaped = false;
        }
        out.push_str("<hidden>");
        if closed {
            out.push(c);
        }
    }
    out
}

/// Parses a listen address, saying what to write when it is not one.
pub fn parse_socket_addr(text: &str) -> Result<SocketAddr, String> {
    let trimmed = text.trim();
    if let Ok(addr) = trimmed.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let hint = if let Ok(ip) = trimmed.parse::<IpAddr>() {
        match ip {
            IpAddr::V4(_) => format!("add the port: {ip}:PORT"),
            IpAddr::V6(_) => format!("add the port: [{ip}]:PORT"),
        }
    } else if let Some((host, port)) = trimmed
        .rsplit_once(':')
        .filter(|(_, p)| p.parse::<u16>().is_ok())
    {
        if host.eq_ignore_ascii_case("localhost") {
            format!("write 127.0.0.1:{port} (or [::1]:{port}): host names are not looked up")
        } else {
            format!(
                "write the IP address to listen on, like 127.0.0.1:{port} or 0.0.0.0:{port} (all IPv4 addresses): host names are not looked up"
            )
        }
    } else {
        "write an IP address and port, like 127.0.0.1:8080, 0.0.0.0:443 or [::]:443".to_owned()
    };
    Err(format!("{text:?} is not an IP address and port; {hint}"))
}

/// `#[serde(deserialize_with = "b24_cli_support::config::socket_addr")]`:
/// a listen address with [`parse_socket_addr`]'s message, located by the
/// TOML parser.
pub fn socket_addr<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<SocketAddr, D::Error> {
    let text = <String as serde::Deserialize>::deserialize(deserializer)?;
    parse_socket_addr(&text).map_err(serde::de::Error::custom)
}

/// The same for an optional address (`metrics_listen`).
pub fn optional_socket_addr<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<SocketAddr>, D::Error> {
    let text = <Option<String> as serde::Deserialize>::deserialize(deserializer)?;
    text.map(|t| parse_socket_addr(&t).map_err(serde::de::Error::custom))
        .transpose()
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
