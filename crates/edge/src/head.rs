//! Checks of a request head before it is routed: the path in one normal
//! form, and the Host.
//!
//! **One meaning per path.** The route decision and the upstream must see
//! the same resource, so the edge matches routes on the normalized path
//! and forwards exactly that form (the query string is passed unchanged):
//! - percent-encoded unreserved characters (`A–Z a–z 0–9 - . _ ~`) are
//!   decoded (`/%68ook` → `/hook`), other escapes get upper-case hex
//!   (`%3b` → `%3B`), raw non-ASCII UTF-8 is percent-encoded;
//! - `.` and `..` segments are resolved (`/x/%2e%2e/hook` → `/hook`), and a
//!   `..` above the root is refused;
//! - repeated slashes are merged (`//hook` → `/hook`), as nginx's
//!   `merge_slashes on` does;
//! - forms that servers disagree on are refused with 400: an encoded `/`
//!   (`%2F`) or `\` (`%5C`), a raw `\`, NUL and other control characters,
//!   a malformed escape, and escapes that decode to invalid UTF-8.
//!
//! nginx resolves the same forms before matching its locations (it also
//! decodes `%2F`, which the edge refuses: an upstream that keeps it encoded
//! would see another path). Matching stays case-sensitive, like nginx's
//! prefix locations. What nginx does not protect against either: upstreams
//! that decode twice (`%2568` kept as is), or that strip `;parameters`
//! from segments (Tomcat, Spring) — put such an upstream behind a route
//! whose rule covers all its paths.
//!
//! **Host**, checked like nginx does (400 otherwise): an HTTP/1.1 request
//! carries exactly one Host; an h2 request has `:authority` or Host, and
//! both agree when both are present; the value is a DNS name, IPv4 or
//! bracketed IPv6 address with an optional numeric port — no `..`, `/`,
//! `\`, `@`, spaces or control characters. In HTTP/1.1's absolute form
//! (`GET https://host/path`) the request line's host wins, as RFC 9112
//! says.

use std::borrow::Cow;
use std::net::Ipv6Addr;

use http::{HeaderMap, Uri, Version, header};

/// Why a request path was refused (400).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("the request target is not an absolute path")]
    NotOriginForm,
    #[error("malformed percent-encoding")]
    BadPercent,
    #[error("an encoded '/' (%2F)")]
    EncodedSlash,
    #[error("a backslash")]
    Backslash,
    #[error("a NUL or control character")]
    Control,
    #[error("escapes that decode to invalid UTF-8")]
    InvalidUtf8,
    #[error("a '..' segment above the root")]
    AboveRoot,
}

/// The normal form of an absolute request path (no query), or why it is
/// refused. Borrowed when the path is already normal, which is the case
/// for every path a well-behaved client sends.
pub fn normalize_path(path: &str) -> Result<Cow<'_, str>, PathError> {
    if !path.starts_with('/') {
        return Err(PathError::NotOriginForm);
    }
    if is_normal(path) {
        return Ok(Cow::Borrowed(path));
    }
    let raw: Vec<&str> = path[1..].split('/').collect();
    let last = raw.len() - 1;
    let mut segments: Vec<String> = Vec::with_capacity(raw.len());
    let mut trailing_slash = false;
    for (index, raw_segment) in raw.into_iter().enumerate() {
        let segment = normalize_segment(raw_segment)?;
        let is_last = index == last;
        match segment.as_str() {
            "" | "." => trailing_slash = is_last,
            ".." => {
                if segments.pop().is_none() {
                    return Err(PathError::AboveRoot);
                }
                trailing_slash = is_last;
            }
            _ => {
                segments.push(segment);
                trailing_slash = false;
            }
        }
    }
    let mut out = String::with_capacity(path.len());
    out.push('/');
    out.push_str(&segments.join("/"));
    if trailing_slash && !segments.is_empty() {
        out.push('/');
    }
    Ok(Cow::Owned(out))
}

/// Whether `path` is already in normal form: plain printable ASCII with no
/// escape or backslash, no empty segment but the last, no dot segment.
fn is_normal(path: &str) -> bool {
    let bytes = path.as_bytes();
    if bytes
        .iter()
        .any(|&b| !(0x21..0x7f).contains(&b) || b == b'%' || b == b'\\')
    {
        return false;
    }
    let mut segments = path[1..].split('/').peekable();
    while let Some(segment) = segments.next() {
        let is_last = segments.peek().is_none();
        if (segment.is_empty() && !is_last) || segment == "." || segment == ".." {
            return false;
        }
    }
    true
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn push_escaped(out: &mut String, b: u8) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.push('%');
    out.push(HEX[usize::from(b >> 4)] as char);
    out.push(HEX[usize::from(b & 0x0f)] as char);
}

/// One segment in normal form; its fully decoded bytes must be UTF-8.
fn normalize_segment(raw: &str) -> Result<String, PathError> {
    let bytes = raw.as_bytes();
    let mut out = String::with_capacity(raw.len());
    let mut decoded = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let (Some(hi), Some(lo)) = (
                bytes.get(i + 1).copied().and_then(hex_value),
                bytes.get(i + 2).copied().and_then(hex_value),
            ) else {
                return Err(PathError::BadPercent);
            };
            let value = hi << 4 | lo;
            match value {
                b'/' => return Err(PathError::EncodedSlash),
                b'\\' => return Err(PathError::Backslash),
                v if v < 0x20 || v == 0x7f => return Err(PathError::Control),
                v if is_unreserved(v) => out.push(v as char),
                v => push_escaped(&mut out, v),
            }
            decoded.push(value);
            i += 3;
            continue;
        }
        match b {
            b'\\' => return Err(PathError::Backslash),
            b if b < 0x20 || b == 0x7f => return Err(PathError::Control),
            b if b >= 0x80 || b == b' ' => push_escaped(&mut out, b),
            b => out.push(b as char),
        }
        decoded.push(b);
        i += 1;
    }
    std::str::from_utf8(&decoded).map_err(|_| PathError::InvalidUtf8)?;
    Ok(out)
}

/// Why a request's Host was refused (400).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HostError {
    #[error("no Host header")]
    Missing,
    #[error("more than one Host header")]
    Duplicate,
    #[error("a malformed Host")]
    Invalid,
    #[error(":authority and Host disagree")]
    Conflict,
}

/// The host the request is for (what the upstream gets as Host and
/// X-Forwarded-Host): the request target's authority (h2 `:authority`, or
/// HTTP/1.1's absolute form), else the Host header. `None` only for an
/// HTTP/1.0 request without one.
pub fn request_host<'r>(
    version: Version,
    uri: &'r Uri,
    headers: &'r HeaderMap,
) -> Result<Option<&'r str>, HostError> {
    let mut hosts = headers.get_all(header::HOST).iter();
    let host_header = hosts.next();
    if hosts.next().is_some() {
        return Err(HostError::Duplicate);
    }
    let host_header = match host_header {
        Some(value) => {
            let text = value.to_str().map_err(|_| HostError::Invalid)?;
            if !valid_host(text) {
                return Err(HostError::Invalid);
            }
            Some(text)
        }
        None => None,
    };
    let authority = match uri.authority() {
        Some(authority) => {
            let text = authority.as_str();
            if !valid_host(text) {
                return Err(HostError::Invalid);
            }
            Some(text)
        }
        None => None,
    };
    match (authority, host_header) {
        (Some(authority), Some(host))
            if version == Version::HTTP_2 && !authority.eq_ignore_ascii_case(host) =>
        {
            Err(HostError::Conflict)
        }
        (Some(authority), _) => Ok(Some(authority)),
        (None, Some(host)) => Ok(Some(host)),
        (None, None) if version <= Version::HTTP_10 => Ok(None),
        (None, None) => Err(HostError::Missing),
    }
}

/// `name`, `1.2.3.4` or `[v6]`, each with an optional `:port`.
fn valid_host(text: &str) -> bool {
    if text.is_empty() || text.len() > 255 {
        return false;
    }
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        let Some((literal, after)) = rest.split_once(']') else {
            return false;
        };
        if literal.parse::<Ipv6Addr>().is_err() {
            return false;
        }
        match after {
            "" => return true,
            after => match after.strip_prefix(':') {
                Some(port) => ("[]", port),
                None => return false,
            },
        }
    } else {
        match text.rsplit_once(':') {
            Some((host, port)) => (host, port),
            None => (text, ""),
        }
    };
    let port_ok = port.len() <= 5
        && port.bytes().all(|b| b.is_ascii_digit())
        && port.parse::<u32>().map_or(port.is_empty(), |p| p <= 65535);
    if !port_ok {
        return false;
    }
    if host == "[]" {
        return true;
    }
    !host.is_empty()
        && !host.starts_with('.')
        && !host.contains("..")
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(path: &str) -> Result<String, PathError> {
        normalize_path(path).map(Cow::into_owned)
    }

    #[test]
    fn normal_paths_are_borrowed() {
        for path in [
            "/",
            "/hook/",
            "/hook/event/partner",
            "/a-b_c.~d/x:y@z",
            "/rest/1/x.json",
        ] {
            assert!(
                matches!(normalize_path(path), Ok(Cow::Borrowed(p)) if p == path),
                "{path}"
            );
        }
    }

    #[test]
    fn the_tricks_of_issue_10_resolve_to_the_path_they_mean() {
        let cases = [
            ("//hook/x", "/hook/x"),
            ("/%68ook/x", "/hook/x"),
            ("/x/%2e%2e/hook/x", "/hook/x"),
            ("/x/%2E%2E/hook/x", "/hook/x"),
            ("/bitrix/%61dmin/", "/bitrix/admin/"),
            ("/hook/./x", "/hook/x"),
            ("/hook/x/..", "/hook/"),
            ("/hook/x/.", "/hook/x/"),
            ("/hook//", "/hook/"),
            ("/a/b/../../hook", "/hook"),
            ("/a/.%2e/", "/"),
            ("/%3b/%3f", "/%3B/%3F"),
            ("/%25", "/%25"),
            ("/хук/", "/%D1%85%D1%83%D0%BA/"),
            ("/%d1%85", "/%D1%85"),
            ("/a b", "/a%20b"),
        ];
        for (raw, expected) in cases {
            assert_eq!(norm(raw).as_deref(), Ok(expected), "{raw}");
            // Normal forms are fixed points.
            assert_eq!(norm(expected).as_deref(), Ok(expected), "{expected}");
        }
    }

    #[test]
    fn ambiguous_forms_are_refused() {
        let cases = [
            ("/hook%2fx", PathError::EncodedSlash),
            ("/hook%2Fx", PathError::EncodedSlash),
            ("/hook%5cx", PathError::Backslash),
            ("/hook\\x", PathError::Backslash),
            ("/hook%00", PathError::Control),
            ("/hook%0a", PathError::Control),
            ("/hook%7f", PathError::Control),
            ("/hook%", PathError::BadPercent),
            ("/hook%4", PathError::BadPercent),
            ("/hook%zz", PathError::BadPercent),
            ("/hook%ff", PathError::InvalidUtf8),
            ("/hook%c3", PathError::InvalidUtf8),
            ("/..", PathError::AboveRoot),
            ("/a/../../hook", PathError::AboveRoot),
            ("/%2e%2e/hook", PathError::AboveRoot),
            ("*", PathError::NotOriginForm),
            ("", PathError::NotOriginForm),
        ];
        for (raw, error) in cases {
            assert_eq!(norm(raw), Err(error), "{raw}");
        }
    }

    fn host_of(version: Version, uri: &str, hosts: &[&[u8]]) -> Result<Option<String>, HostError> {
        let uri: Uri = uri.parse().unwrap();
        let mut headers = HeaderMap::new();
        for host in hosts {
            headers.append(header::HOST, http::HeaderValue::from_bytes(host).unwrap());
        }
        request_host(version, &uri, &headers).map(|h| h.map(str::to_owned))
    }

    #[test]
    fn host_rules() {
        use Version as V;
        let ok = |v, uri, hosts: &[&[u8]], expected: &str| {
            assert_eq!(
                host_of(v, uri, hosts),
                Ok(Some(expected.to_owned())),
                "{hosts:?}"
            );
        };
        ok(
            V::HTTP_11,
            "/",
            &[b"portal.example.com"],
            "portal.example.com",
        );
        ok(
            V::HTTP_11,
            "/",
            &[b"portal.example.com:8443"],
            "portal.example.com:8443",
        );
        ok(V::HTTP_11, "/", &[b"192.0.2.1"], "192.0.2.1");
        ok(
            V::HTTP_11,
            "/",
            &[b"[2001:db8::1]:443"],
            "[2001:db8::1]:443",
        );
        ok(V::HTTP_11, "/", &[b"[::1]"], "[::1]");
        ok(V::HTTP_11, "/", &[b"example.com."], "example.com.");
        // Absolute form: the request line's host wins.
        ok(
            V::HTTP_11,
            "https://a.example/x",
            &[b"b.example"],
            "a.example",
        );
        // h2: :authority, with or without an agreeing Host.
        ok(V::HTTP_2, "https://a.example/x", &[], "a.example");
        ok(
            V::HTTP_2,
            "https://a.example/x",
            &[b"A.example"],
            "a.example",
        );
        ok(V::HTTP_2, "/x", &[b"a.example"], "a.example");
        assert_eq!(host_of(V::HTTP_10, "/", &[]), Ok(None));

        let bad = |v, uri, hosts: &[&[u8]], error| {
            assert_eq!(host_of(v, uri, hosts), Err(error), "{hosts:?}");
        };
        bad(V::HTTP_11, "/", &[], HostError::Missing);
        bad(V::HTTP_2, "/x", &[], HostError::Missing);
        bad(
            V::HTTP_11,
            "/",
            &[b"a.example", b"a.example"],
            HostError::Duplicate,
        );
        bad(
            V::HTTP_2,
            "https://a.example/x",
            &[b"b.example"],
            HostError::Conflict,
        );
        for invalid in [
            &b""[..],
            b"a..example",
            b".example",
            b"a/b",
            b"a\\b",
            b"user@a.example",
            b"a example",
            b"a.example:http",
            b"a.example:99999",
            b"[::1",
            b"[not-v6]",
            b"[::1]x",
            b"\xd0\xbf.example",
        ] {
            bad(V::HTTP_11, "/", &[invalid], HostError::Invalid);
        }
    }
}
