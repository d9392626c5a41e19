//! Downloading a file a CRM record links to (`urlMachine`, `downloadUrl`):
//! through the portal's bucket, with the client's own credentials, and with
//! the file's real name from `Content-Disposition` (`filename*` first).
//!
//! A link read through a webhook carries the webhook path; one read through
//! OAuth needs an access token (`auth=`), and the token a link was made
//! with may have expired since (BITRIX24.md §7): the client sets its current
//! token, and refreshes once after `expired_token` like any call.

use std::time::Instant;

use reqwest::header::CONTENT_DISPOSITION;
use url::Url;

use crate::client::Auth;
use crate::response::{Answer, read_answer};
use crate::{ApiError, ApiErrorKind, Client, Error, RequestEvent};

/// A downloaded file.
#[derive(Clone, PartialEq, Eq)]
pub struct Download {
    /// The name the portal gives it, when it gives a usable one.
    pub name: Option<String>,
    pub bytes: Vec<u8>,
}

impl std::fmt::Debug for Download {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Download")
            .field("name", &self.name)
            .field("bytes", &self.bytes.len())
            .finish()
    }
}

const METHOD: &str = "file.download";

impl Client {
    /// Downloads a file by a link from a record of this portal. The link
    /// must point at the portal itself (the client's credentials go nowhere
    /// else). Errors never hold the link, which may hold a secret.
    pub async fn download(&self, link: &str) -> Result<Download, Error> {
        let inner = &*self.inner;
        let mut url = Url::parse(link).map_err(|_| Error::InvalidResponse {
            portal: inner.portal.clone(),
            method: METHOD.into(),
            reason: "a file link is not a URL".into(),
        })?;
        if crate::credentials::portal_key(&url) != inner.portal {
            return Err(Error::Config(format!(
                "a file link points outside {}; not sending credentials there",
                inner.portal
            )));
        }
        let mut refreshed = false;
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let waited = inner.limiter.acquire().await;
            if !waited.is_zero() {
                inner.observer.rate_limit_waited(&inner.portal, waited);
            }
            let generation = match &inner.auth {
                Auth::Webhook(_) => 0,
                Auth::OAuth(session) => session.authorize(&mut url),
            };
            let started = Instant::now();
            let sent = self.fetch(url.clone()).await;
            let (outcome, status, verdict) = match sent {
                Ok((200, name, bytes)) => {
                    ("ok".to_owned(), Some(200), Ok(Download { name, bytes }))
                }
                Ok((status, _, body)) => {
                    let error = match read_answer(&body) {
                        Answer::Failure {
                            code, description, ..
                        } => Error::Api(ApiError {
                            kind: ApiErrorKind::from_code(&code),
                            code,
                            description,
                            status,
                            method: METHOD.into(),
                            portal: inner.portal.clone(),
                            retry_at: None,
                        }),
                        _ => Error::Http {
                            portal: inner.portal.clone(),
                            method: METHOD.into(),
                            status,
                        },
                    };
                    (format!("http_{status}"), Some(status), Err(error))
                }
                Err(error) => (
                    "transport_error".to_owned(),
                    None,
                    Err(Error::transport(&inner.portal, METHOD, error)),
                ),
            };
            inner.observer.request_finished(&RequestEvent {
                portal: &inner.portal,
                method: METHOD,
                outcome: &outcome,
                status,
                elapsed: started.elapsed(),
                attempt,
            });
            let error = match verdict {
                Ok(download) => return Ok(download),
                Err(error) => error,
            };
            match (&error, &inner.auth) {
                (Error::Api(api), Auth::OAuth(session))
                    if api.kind == ApiErrorKind::ExpiredToken && !refreshed =>
                {
                    session
                        .refresh(&inner.http, generation, &*inner.observer)
                        .await?;
                    refreshed = true;
                    attempt -= 1;
                }
                (Error::Api(api), _) if api.kind == ApiErrorKind::QueryLimitExceeded => {
                    inner.limiter.saturate();
                    if attempt >= inner.retry.max_attempts {
                        return Err(error);
                    }
                }
                // A download reads: repeating it changes nothing.
                (Error::Transport { .. }, _) | (Error::Http { status: 500.., .. }, _)
                    if attempt < inner.retry.max_attempts =>
                {
                    tokio::time::sleep(inner.retry.backoff(attempt)).await;
                }
                _ => return Err(error),
            }
        }
    }

    async fn fetch(&self, url: Url) -> Result<(u16, Option<String>, Vec<u8>), reqwest::Error> {
        let response = self.inner.http.get(url).send().await?;
        let status = response.status().as_u16();
        let name = response
            .headers()
            .get(CONTENT_DISPOSITION)
            .and_then(|value| file_name(value.as_bytes()));
        let bytes = response.bytes().await?;
        Ok((status, name, bytes.to_vec()))
    }
}

/// The file name in a `Content-Disposition` value. `filename*` (RFC 6266 /
/// RFC 8187: `charset'lang'percent-encoded`) wins over `filename`, which
/// Bitrix24 sends transliterated for the sake of old clients; a plain
/// `filename` that is raw UTF-8 is read as UTF-8. Path separators and
/// control characters are removed; `None` when nothing usable is left.
pub fn file_name(disposition: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(disposition);
    let mut plain = None;
    let mut extended = None;
    for (key, value) in parameters(&text) {
        match key.to_ascii_lowercase().as_str() {
            "filename*" => extended = extended.or_else(|| decode_extended(&value)),
            "filename" => plain = plain.or(Some(value)),
            _ => {}
        }
    }
    extended
        .or(plain)
        .map(|name| sanitize(&name))
        .filter(|name| !name.is_empty())
}

/// `attachment; a="x; y"; b=z` → `[(a, x; y), (b, z)]`, quoted strings unescaped.
fn parameters(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = match text.split_once(';') {
        Some((_, rest)) => rest,
        None => return out,
    };
    loop {
        rest = rest.trim_start_matches([' ', '\t', ';']);
        let Some(eq) = rest.find('=') else {
            break;
        };
        let key = rest[..eq].trim().to_owned();
        rest = rest[eq + 1..].trim_start();
        let value;
        if let Some(quoted) = rest.strip_prefix('"') {
            let mut unescaped = String::new();
            let mut chars = quoted.char_indices();
            let mut end = quoted.len();
            while let Some((index, c)) = chars.next() {
                match c {
                    '\\' => {
                        if let Some((_, next)) = chars.next() {
                            unescaped.push(next);
                        }
                    }
                    '"' => {
                        end = index + 1;
                        break;
                    }
                    other => unescaped.push(other),
                }
            }
            value = unescaped;
            rest = &quoted[end.min(quoted.len())..];
        } else {
            let end = rest.find(';').unwrap_or(rest.len());
            value = rest[..end].trim().to_owned();
            rest = &rest[end..];
        }
        if !key.is_empty() {
            out.push((key, value));
        }
    }
    out
}

/// `utf-8''%D0%94...` → text; ISO-8859-1 is read too; other charsets are not.
fn decode_extended(value: &str) -> Option<String> {
    let mut parts = value.splitn(3, '\'');
    let charset = parts.next()?.trim().to_ascii_lowercase();
    let _language = parts.next()?;
    let encoded = parts.next()?;
    let bytes = percent_decode(encoded)?;
    match charset.as_str() {
        "utf-8" | "utf8" => String::from_utf8(bytes).ok(),
        "iso-8859-1" | "latin1" => Some(bytes.iter().map(|&b| char::from(b)).collect()),
        _ => None,
    }
}

fn percent_decode(text: &str) -> Option<Vec<u8>> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        if bytes[index] == b'%' {
            let hex = text.get(index + 1..index + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            index += 3;
        } else {
            out.push(bytes[index]);
            index += 1;
        }
    }
    Some(out)
}

/// A name safe to use as a file name anywhere: no directories, no controls.
fn sanitize(name: &str) -> String {
    let last = name.rsplit(['/', '\\']).next().unwrap_or_default();
    let clean: String = last.chars().filter(|c| !c.is_control()).collect();
    let clean = clean.trim();
    if clean.chars().all(|c| c == '.') {
        String::new()
    } else {
        clean.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extended_names_win_and_are_utf8() {
        let header = "attachment; filename=\"Dogovor No42.pdf\"; filename*=utf-8''%D0%94%D0%BE%D0%B3%D0%BE%D0%B2%D0%BE%D1%80%20%E2%84%9642.pdf";
        assert_eq!(
            file_name(header.as_bytes()).as_deref(),
            Some("Договор №42.pdf")
        );
        // Order does not matter, case of the charset does not either.
        let header = "attachment; filename*=UTF-8''%C3%A9t%C3%A9.txt; filename=\"ete.txt\"";
        assert_eq!(file_name(header.as_bytes()).as_deref(), Some("été.txt"));
        let latin = "attachment; filename*=iso-8859-1'en'%E9t%E9.txt";
        assert_eq!(file_name(latin.as_bytes()).as_deref(), Some("été.txt"));
    }

    #[test]
    fn plain_names_quoted_or_not_and_raw_utf8() {
        assert_eq!(
            file_name(b"attachment; filename=\"offer; v2.pdf\"").as_deref(),
            Some("offer; v2.pdf")
        );
        assert_eq!(
            file_name(b"attachment; filename=a.pdf").as_deref(),
            Some("a.pdf")
        );
        assert_eq!(
            file_name("attachment; filename=\"Счёт.xlsx\"".as_bytes()).as_deref(),
            Some("Счёт.xlsx")
        );
        assert_eq!(
            file_name(b"attachment; filename=\"say \\\"hi\\\".txt\"").as_deref(),
            Some("say \"hi\".txt")
        );
        assert_eq!(file_name(b"attachment").as_deref(), None);
        assert_eq!(file_name(b"inline; filename=\"\"").as_deref(), None);
    }

    #[test]
    fn names_cannot_climb_out_of_a_directory() {
        assert_eq!(
            file_name(b"attachment; filename=\"../../etc/passwd\"").as_deref(),
            Some("passwd")
        );
        assert_eq!(
            file_name(b"attachment; filename*=utf-8''..%2F..%2Fx%0D.txt").as_deref(),
            Some("x.txt")
        );
        assert_eq!(file_name(b"attachment; filename=\"..\"").as_deref(), None);
        assert_eq!(
            file_name(b"attachment; filename=\".env\"").as_deref(),
            Some(".env")
        );
        // A broken filename* falls back to filename.
        assert_eq!(
            file_name(b"attachment; filename=\"ok.txt\"; filename*=utf-8''%ZZ").as_deref(),
            Some("ok.txt")
        );
    }
}
