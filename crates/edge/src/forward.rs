//! Stage 5 of the request path, forwarding an admitted request to its
//! route's upstream: the request body read whole before the upstream is
//! contacted (or, large and of declared length, streamed), pooled
//! connections, header rewriting, the response streamed back, and
//! failures mapped to one status each.
//!
//! What the upstream receives: the normalized path (see [`crate::head`])
//! with the query as sent; Host and X-Forwarded-Host = the validated host;
//! X-Forwarded-For = the client, then each trusted proxy it came through,
//! then the peer that reached the edge (the chain the edge vouches for —
//! nothing a client wrote about itself); X-Real-IP = the client;
//! X-Forwarded-Proto = https; no hop-by-hop headers, no `Expect`; a body
//! read whole gets its exact Content-Length.

use std::error::Error as StdError;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body::Body as _;
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::Incoming;

use crate::admit::{Route, RouteTable};
use crate::body::{
    ClientBodyError, ForwardBody, StreamedBody, UpstreamBody, client_body_error, discard,
    read_whole,
};
use crate::config::{Limits, RouteConfig};
use crate::metrics::Metrics;
use crate::upstream::{ExchangeError, UpstreamPool};

pub use crate::body::BoxError;
/// The body of every response the edge sends.
pub type EdgeBody = UnsyncBoxBody<Bytes, BoxError>;

/// A short fixed body (denials, errors).
pub fn text_body(text: &'static str) -> EdgeBody {
    http_body_util::Full::new(Bytes::from_static(text.as_bytes()))
        .map_err(|never| match never {})
        .boxed_unsync()
}

#[derive(Debug, thiserror::Error)]
pub enum UpstreamSetupError {
    #[error("cannot read ca_file {path}: {detail}")]
    CaFile { path: String, detail: String },
    #[error("cannot load the system's root certificates: {0}")]
    NativeRoots(String),
    #[error("cannot build the TLS client configuration: {0}")]
    Tls(String),
}

/// Why forwarding failed; each maps to one status code.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    /// The client's body: too large (413), paused too long (408), or
    /// malformed (400). The upstream saw none of it, or a cut-off stream.
    #[error(transparent)]
    ClientBody(#[from] ClientBodyError),
    #[error("cannot connect to the upstream: {0}")]
    Connect(String),
    #[error("the upstream did not answer in time")]
    Timeout,
    #[error("the upstream exchange failed: {0}")]
    Protocol(String),
}

impl ForwardError {
    pub fn status(&self) -> StatusCode {
        match self {
            ForwardError::ClientBody(ClientBodyError::TooLarge) => StatusCode::PAYLOAD_TOO_LARGE,
            ForwardError::ClientBody(ClientBodyError::Timeout) => StatusCode::REQUEST_TIMEOUT,
            ForwardError::ClientBody(ClientBodyError::Malformed(_)) => StatusCode::BAD_REQUEST,
            ForwardError::ClientBody(ClientBodyError::Aborted) => CLIENT_CLOSED_REQUEST,
            ForwardError::Connect(_) | ForwardError::Protocol(_) => StatusCode::BAD_GATEWAY,
            ForwardError::Timeout => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// The `kind` label of the upstream error metric; none for the
    /// client's own faults.
    pub fn metric_kind(&self) -> Option<&'static str> {
        match self {
            ForwardError::ClientBody(_) => None,
            ForwardError::Connect(_) => Some("connect"),
            ForwardError::Timeout => Some("timeout"),
            ForwardError::Protocol(_) => Some("protocol"),
        }
    }

    pub fn body(&self) -> &'static str {
        match self {
            ForwardError::ClientBody(ClientBodyError::TooLarge) => "request body too large\n",
            ForwardError::ClientBody(ClientBodyError::Timeout) => "request body timeout\n",
            ForwardError::ClientBody(ClientBodyError::Malformed(_)) => "bad request body\n",
            ForwardError::ClientBody(ClientBodyError::Aborted) => "client closed request\n",
            ForwardError::Connect(_) | ForwardError::Protocol(_) => "bad gateway\n",
            ForwardError::Timeout => "gateway timeout\n",
        }
    }
}

/// nginx's status for a request whose client went away before it could
/// be answered; it only ever reaches the metrics (the answer has nobody to
/// go to).
pub const CLIENT_CLOSED_REQUEST: StatusCode = match StatusCode::from_u16(499) {
    Ok(status) => status,
    Err(_) => panic!("499 is a valid status code"),
};

/// How much more of an oversized body the edge reads and drops before its
/// 413, and for how long at most.
const LINGER_BYTES: u64 = 16 * 1024 * 1024;
const LINGER_WAIT: Duration = Duration::from_secs(2);

/// What the request stage decided about a request, for its headers.
#[derive(Debug)]
pub struct Forwarded<'a> {
    /// The client address (X-Real-IP).
    pub client: IpAddr,
    /// X-Forwarded-For: the client first, the peer last.
    pub hops: &'a [IpAddr],
    /// The validated host (Host, X-Forwarded-Host); none for HTTP/1.0
    /// without one.
    pub host: Option<HeaderValue>,
    /// The normalized path, when it differs from the request's.
    pub path: Option<String>,
}

/// Where a route's requests go: the upstream's scheme and authority (the
/// request's own path is kept), and for `https` the CA file to trust.
#[derive(Debug, Clone)]
pub struct UpstreamTarget {
    scheme: Scheme,
    authority: Authority,
    ca_file: Option<PathBuf>,
}

impl UpstreamTarget {
    pub fn new(route: &RouteConfig) -> UpstreamTarget {
        UpstreamTarget {
            scheme: route.upstream.scheme().cloned().unwrap_or(Scheme::HTTP),
            authority: route
                .upstream
                .authority()
                .cloned()
                .expect("validated: upstreams have a host"),
            ca_file: route.ca_file.clone(),
        }
    }

    pub fn scheme(&self) -> &Scheme {
        &self.scheme
    }

    pub fn authority(&self) -> &Authority {
        &self.authority
    }

    pub fn ca_file(&self) -> Option<&std::path::Path> {
        self.ca_file.as_deref()
    }
}

/// One pool of upstream connections per route, owned by one worker thread.
pub struct Forwarder {
    /// Indexed by [`Route::id`].
    pools: Vec<UpstreamPool>,
    limits: Limits,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Forwarder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Forwarder")
            .field("upstreams", &self.pools.len())
            .finish()
    }
}

impl Forwarder {
    pub fn new(
        routes: &RouteTable,
        limits: &Limits,
        metrics: Arc<Metrics>,
    ) -> Result<Forwarder, UpstreamSetupError> {
        let pools = routes
            .in_config_order()
            .into_iter()
            .map(|route| UpstreamPool::new(route.upstream(), limits.upstream_connect_timeout))
            .collect::<Result<_, _>>()?;
        Ok(Forwarder {
            pools,
            limits: limits.clone(),
            metrics,
        })
    }

    /// Sends `req` to `route`'s upstream and returns its response with the
    /// body streaming.
    pub async fn forward(
        &self,
        route: &Route,
        req: Request<Incoming>,
        who: Forwarded<'_>,
    ) -> Result<Response<EdgeBody>, ForwardError> {
        let limits = &self.limits;
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let expects_continue = req
            .headers()
            .get(header::EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
        let (mut parts, mut body) = req.into_parts();
        let parts_version_is_h1 = parts.version < Version::HTTP_2;
        let too_large = |mut body: Incoming| async move {
            // So that an HTTP/1.1 client still writing its body sees the
            // 413 rather than a reset; never invited by 100 Continue.
            if parts_version_is_h1 && !expects_continue {
                discard(&mut body, LINGER_BYTES, LINGER_WAIT).await;
            }
            Err(ForwardError::ClientBody(ClientBodyError::TooLarge))
        };
        // Like nginx's proxy_request_buffering: the upstream is contacted
        // only once the body is known to fit, so nothing of an oversized
        // chunked upload ever reaches it. Only a large body of declared
        // (so already checked) length is streamed.
        if declared.is_some_and(|len| len > limits.max_body) {
            return too_large(body).await;
        }
        let (body, body_sent) = if body.is_end_stream() {
            (ForwardBody::Full(None), None)
        } else if declared.is_some_and(|len| len > limits.body_buffer) {
            let (body, sent) = StreamedBody::new(body, limits.max_body, limits.client_body_timeout);
            (ForwardBody::Streamed(body), Some(sent))
        } else {
            match read_whole(&mut body, limits.max_body, limits.client_body_timeout).await {
                Ok(bytes) => (ForwardBody::full(bytes), None),
                Err(ClientBodyError::TooLarge) => return too_large(body).await,
                Err(e) => return Err(e.into()),
            }
        };
        rewrite_request(&mut parts, route.upstream(), who, &body)
            .map_err(ForwardError::Protocol)?;
        let request = Request::from_parts(parts, body);
        let mut exchange = std::pin::pin!(self.pools[route.id()].send(request));
        // The upstream's time starts once it has the whole request: a slow
        // upload is the client's (client_body_timeout), not a 504.
        let result = match body_sent {
            None => tokio::time::timeout(limits.upstream_timeout, exchange).await,
            Some(sent) => tokio::select! {
                answered = exchange.as_mut() => Ok(answered),
                _ = sent => tokio::time::timeout(limits.upstream_timeout, exchange.as_mut()).await,
            },
        };
        let (response, lease) = match result {
            Err(_) => return Err(ForwardError::Timeout),
            Ok(Err(ExchangeError::Connect(e))) => return Err(ForwardError::Connect(e.to_string())),
            Ok(Err(ExchangeError::Exchange(e))) => {
                if let Some(client_fault) = client_body_error(&e) {
                    return Err(ForwardError::ClientBody(client_fault.clone()));
                }
                return Err(ForwardError::Protocol(error_chain(&e)));
            }
            Ok(Ok(answered)) => answered,
        };
        let (mut parts, body) = response.into_parts();
        remove_hop_by_hop(&mut parts.headers);
        if !parts_version_is_h1 {
            detach_values(&mut parts.headers);
        }
        let body = UpstreamBody::new(
            body,
            lease,
            limits.upstream_timeout,
            self.metrics.clone(),
            route.metrics().label().clone(),
        );
        Ok(Response::from_parts(parts, body.boxed_unsync()))
    }
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

/// Points the request at the upstream and sets the forwarding headers.
fn rewrite_request(
    parts: &mut http::request::Parts,
    upstream: &UpstreamTarget,
    who: Forwarded<'_>,
    body: &ForwardBody,
) -> Result<(), String> {
    remove_hop_by_hop(&mut parts.headers);
    // The edge answered (or skipped) the client's 100-continue itself.
    parts.headers.remove(header::EXPECT);

    let real_ip = ip_header_value(who.client);
    // A client that reached the edge itself (the usual case) is the whole
    // chain. `insert` drops every value the client sent.
    let chain = if who.hops == [who.client] {
        real_ip.clone()
    } else {
        let mut chain = String::with_capacity(who.hops.len() * 17);
        for (i, hop) in who.hops.iter().enumerate() {
            if i > 0 {
                chain.push_str(", ");
            }
            let _ = write!(chain, "{hop}");
        }
        header_value(&chain)?
    };
    parts.headers.insert(X_FORWARDED_FOR, chain);
    parts.headers.insert(X_REAL_IP, real_ip);
    parts
        .headers
        .insert(X_FORWARDED_PROTO, HeaderValue::from_static("https"));
    match who.host {
        Some(host) => {
            parts.headers.insert(X_FORWARDED_HOST, host.clone());
            // h2 carries the host in :authority; HTTP/1.1 upstreams need it
            // as a header.
            parts.headers.insert(header::HOST, host);
        }
        None => {
            // HTTP/1.0 without a Host: HTTP/1.1 requires one, the
            // upstream's own name is the one that says nothing new.
            parts.headers.remove(&X_FORWARDED_HOST);
            let authority = HeaderValue::from_str(upstream.authority.as_str())
                .map_err(|_| "the upstream's authority is not a header value".to_owned())?;
            parts.headers.insert(header::HOST, authority);
        }
    }
    if let ForwardBody::Full(bytes) = body {
        let len = bytes.as_ref().map_or(0, Bytes::len);
        if len > 0 || parts.headers.contains_key(header::CONTENT_LENGTH) {
            parts
                .headers
                .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
        }
    }

    let path = match who.path {
        None => parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/")),
        Some(mut path) => {
            if let Some(query) = parts.uri.query() {
                path.push('?');
                path.push_str(query);
            }
            PathAndQuery::try_from(path).map_err(|e| e.to_string())?
        }
    };
    // Origin form: the upstream is the server, not a proxy.
    parts.uri = Uri::from(path);
    parts.version = Version::HTTP_11;
    Ok(())
}

/// An address as a header value, formatted without a temporary `String`.
fn ip_header_value(ip: IpAddr) -> HeaderValue {
    // The longest address text: an IPv6 address with an embedded IPv4 one.
    let mut text = [0u8; 45];
    let mut cursor = std::io::Cursor::new(&mut text[..]);
    let _ = std::io::Write::write_fmt(&mut cursor, format_args!("{ip}"));
    let len = usize::try_from(cursor.position()).unwrap_or(0);
    HeaderValue::from_bytes(&text[..len]).expect("an address is a valid header value")
}

fn header_value(text: &str) -> Result<HeaderValue, String> {
    HeaderValue::from_str(text).map_err(|_| "a forwarding header value is not valid".to_owned())
}

/// Gives every header value its own small allocation. The values hyper
/// parses from an upstream response are slices of that upstream
/// connection's 8 KiB read buffer, and an HTTP/2 client connection's HPACK
/// encoder keeps the values it indexes (Date, Server, Content-Type…) for as
/// long as the connection lives: without the copy, each idle h2 client
/// connection pins a whole upstream read buffer (docs/benchmarks.md).
fn detach_values(headers: &mut HeaderMap) {
    for value in headers.values_mut() {
        let sensitive = value.is_sensitive();
        if let Ok(mut copy) = HeaderValue::from_bytes(value.as_bytes()) {
            copy.set_sensitive(sensitive);
            *value = copy;
        }
    }
}

/// The headers that describe one connection, not the message (RFC 9110
/// §7.6.1).
const HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
];

/// Removes the hop-by-hop headers, plus whatever the `Connection` header
/// names.
pub fn remove_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages carry none of them, or only `Connection`: one pass over
    // the few names present, then a removal for each one found, is cheaper
    // than hashing and probing for all nine.
    let mut present = [false; 9];
    for name in headers.keys() {
        if let Some(i) = HOP_BY_HOP.iter().position(|hop| hop == name) {
            present[i] = true;
        }
    }
    // HOP_BY_HOP[0] is `Connection`.
    if present[0] {
        // `keep-alive` and `close`, the usual tokens, name nothing more
        // to remove: only other names are parsed (and allocated).
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|token| {
                !token.eq_ignore_ascii_case("close")
                    && !HOP_BY_HOP
                        .iter()
                        .any(|hop| hop.as_str().eq_ignore_ascii_case(token))
            })
            .filter_map(|name| HeaderName::from_bytes(name.as_bytes()).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    for (name, present) in HOP_BY_HOP.iter().zip(present) {
        if present {
            headers.remove(name);
        }
    }
}

fn error_chain(e: &dyn StdError) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detached_values_are_equal_copies() {
        let buffer = bytes::Bytes::from_static(b"nginx/1.22.1 text/plain");
        let mut headers = HeaderMap::new();
        let server = HeaderValue::from_maybe_shared(buffer.slice(..12)).unwrap();
        headers.insert(header::SERVER, server);
        let mut token = HeaderValue::from_static("secret");
        token.set_sensitive(true);
        headers.insert(header::SET_COOKIE, token);
        detach_values(&mut headers);
        assert_eq!(headers[header::SERVER], "nginx/1.22.1");
        assert_ne!(
            headers[header::SERVER].as_bytes().as_ptr(),
            buffer.as_ptr(),
            "the value no longer points into the upstream's buffer"
        );
        assert!(headers[header::SET_COOKIE].is_sensitive());
    }

    #[test]
    fn addresses_as_header_values() {
        for ip in [
            "192.0.2.1",
            "255.255.255.255",
            "2001:db8::1",
            "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255",
            "::ffff:192.0.2.1",
        ] {
            let addr: IpAddr = ip.parse().unwrap();
            assert_eq!(ip_header_value(addr), addr.to_string().as_str());
        }
    }

    #[test]
    fn hop_by_hop_headers_go() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONNECTION,
            "keep-alive, X-Secret-Hop ,close".parse().unwrap(),
        );
        headers.insert("x-secret-hop", "1".parse().unwrap());
        headers.insert("keep-alive", "timeout=5".parse().unwrap());
        headers.insert(header::TRANSFER_ENCODING, "chunked".parse().unwrap());
        headers.insert(header::UPGRADE, "websocket".parse().unwrap());
        headers.insert("x-kept", "1".parse().unwrap());
        remove_hop_by_hop(&mut headers);
        assert_eq!(headers.len(), 1, "{headers:?}");
        assert!(headers.contains_key("x-kept"));
    }

    #[test]
    fn one_hop_by_hop_header_among_others_goes() {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, "example.org".parse().unwrap());
        headers.insert(header::CONTENT_TYPE, "text/plain".parse().unwrap());
        remove_hop_by_hop(&mut headers);
        assert_eq!(headers.len(), 2, "nothing to remove, nothing removed");
        headers.insert(header::TE, "trailers".parse().unwrap());
        remove_hop_by_hop(&mut headers);
        assert_eq!(headers.len(), 2, "{headers:?}");
        assert!(!headers.contains_key(header::TE));
    }
}
