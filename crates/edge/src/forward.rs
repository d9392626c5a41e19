//! Stage 5 of the request path, forwarding an admitted request to its
//! route's upstream: pooled connections, header rewriting, bodies streamed
//! both ways with the request body capped, and timeouts mapped to 502/504.

use std::error::Error as StdError;
use std::net::IpAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, Uri, Version};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::Incoming;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use crate::admit::{Route, RouteTable};
use crate::config::{Limits, RouteConfig};

pub type BoxError = Box<dyn StdError + Send + Sync>;
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
    #[error("request body over the limit")]
    TooLarge,
    #[error("cannot connect to the upstream: {0}")]
    Connect(String),
    #[error("the upstream did not answer in time")]
    Timeout,
    #[error("the upstream exchange failed: {0}")]
    Protocol(String),
}

impl ForwardError {
    pub fn status(&self) -> http::StatusCode {
        match self {
            ForwardError::TooLarge => http::StatusCode::PAYLOAD_TOO_LARGE,
            ForwardError::Connect(_) | ForwardError::Protocol(_) => http::StatusCode::BAD_GATEWAY,
            ForwardError::Timeout => http::StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// The `kind` label of the upstream error metric (none for a client's
    /// oversized body, which is not the upstream's fault).
    pub fn metric_kind(&self) -> Option<&'static str> {
        match self {
            ForwardError::TooLarge => None,
            ForwardError::Connect(_) => Some("connect"),
            ForwardError::Timeout => Some("timeout"),
            ForwardError::Protocol(_) => Some("protocol"),
        }
    }

    pub fn body(&self) -> &'static str {
        match self {
            ForwardError::TooLarge => "request body too large\n",
            ForwardError::Connect(_) | ForwardError::Protocol(_) => "bad gateway\n",
            ForwardError::Timeout => "gateway timeout\n",
        }
    }
}

/// Who sent a request, as far as forwarding headers are concerned.
#[derive(Debug, Clone, Copy)]
pub struct Forwarded {
    /// The client address the edge decided on (X-Real-IP).
    pub client: IpAddr,
    /// The hop that reached us: the TCP peer, or the PROXY header's source.
    pub hop: IpAddr,
    /// Whether `hop` is a trusted proxy (its X-Forwarded-For is kept).
    pub hop_trusted: bool,
}

type UpstreamClient = Client<HttpsConnector<HttpConnector>, LimitedBody>;

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
}

/// One pooled client per route, owned by one worker thread.
pub struct Forwarder {
    /// Indexed by [`Route::id`].
    clients: Vec<UpstreamClient>,
    max_body: u64,
    upstream_timeout: Duration,
}

impl std::fmt::Debug for Forwarder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Forwarder")
            .field("upstreams", &self.clients.len())
            .finish()
    }
}

impl Forwarder {
    pub fn new(routes: &RouteTable, limits: &Limits) -> Result<Forwarder, UpstreamSetupError> {
        let clients = routes
            .in_config_order()
            .into_iter()
            .map(|route| build_client(route.upstream(), limits))
            .collect::<Result<_, _>>()?;
        Ok(Forwarder {
            clients,
            max_body: limits.max_body,
            upstream_timeout: limits.upstream_timeout,
        })
    }

    /// Sends `req` to `route`'s upstream and returns its response with the
    /// body streaming.
    pub async fn forward(
        &self,
        route: &Route,
        req: Request<Incoming>,
        who: &Forwarded,
    ) -> Result<Response<EdgeBody>, ForwardError> {
        let upstream = route.upstream();
        let client = &self.clients[route.id()];
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|len| len > self.max_body) {
            return Err(ForwardError::TooLarge);
        }
        let client_version = req.version();
        let (mut parts, body) = req.into_parts();
        rewrite_request(&mut parts, upstream, who).map_err(ForwardError::Protocol)?;
        let body = LimitedBody {
            inner: body,
            remaining: self.max_body,
        };
        let request = Request::from_parts(parts, body);
        let result = tokio::time::timeout(self.upstream_timeout, client.request(request)).await;
        let response = match result {
            Err(_) => return Err(ForwardError::Timeout),
            Ok(Err(e)) if caused_by_too_large(&e) => return Err(ForwardError::TooLarge),
            Ok(Err(e)) if e.is_connect() => return Err(ForwardError::Connect(error_chain(&e))),
            Ok(Err(e)) => return Err(ForwardError::Protocol(error_chain(&e))),
            Ok(Ok(response)) => response,
        };
        let (mut parts, body) = response.into_parts();
        remove_hop_by_hop(&mut parts.headers);
        if client_version == Version::HTTP_2 {
            detach_values(&mut parts.headers);
        }
        Ok(Response::from_parts(
            parts,
            body.map_err(BoxError::from).boxed_unsync(),
        ))
    }
}

fn build_client(
    upstream: &UpstreamTarget,
    limits: &Limits,
) -> Result<UpstreamClient, UpstreamSetupError> {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(limits.upstream_connect_timeout));
    let builder = HttpsConnectorBuilder::new();
    let builder = match &upstream.ca_file {
        Some(path) => {
            let ca_err = |detail: String| UpstreamSetupError::CaFile {
                path: path.display().to_string(),
                detail,
            };
            let mut roots = rustls::RootCertStore::empty();
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
                .map_err(|e| ca_err(e.to_string()))?
                .collect::<Result<_, _>>()
                .map_err(|e| ca_err(e.to_string()))?;
            if certs.is_empty() {
                return Err(ca_err("no PEM certificate in it".into()));
            }
            for cert in certs {
                roots.add(cert).map_err(|e| ca_err(e.to_string()))?;
            }
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let config = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|e| UpstreamSetupError::Tls(e.to_string()))?
                .with_root_certificates(roots)
                .with_no_client_auth();
            builder.with_tls_config(config)
        }
        None if upstream.scheme == Scheme::HTTPS => builder
            .with_native_roots()
            .map_err(|e| UpstreamSetupError::NativeRoots(e.to_string()))?,
        // Plain HTTP: a TLS configuration is still required by the type but
        // never used.
        None => {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let config = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|e| UpstreamSetupError::Tls(e.to_string()))?
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth();
            builder.with_tls_config(config)
        }
    };
    let connector = builder.https_or_http().enable_http1().wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(60))
        .build(connector))
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

/// Points the request at the upstream and sets the forwarding headers.
fn rewrite_request(
    parts: &mut http::request::Parts,
    upstream: &UpstreamTarget,
    who: &Forwarded,
) -> Result<(), String> {
    let host = parts
        .uri
        .authority()
        .map(|a| a.as_str().to_owned())
        .or_else(|| {
            parts
                .headers
                .get(header::HOST)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        });
    remove_hop_by_hop(&mut parts.headers);

    // A trusted proxy's chain is kept and extended; anyone else's claim is
    // dropped so the upstream cannot be misled either.
    let prior: Vec<String> = if who.hop_trusted {
        parts
            .headers
            .get_all(&X_FORWARDED_FOR)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(str::to_owned)
            .collect()
    } else {
        Vec::new()
    };
    parts.headers.remove(&X_FORWARDED_FOR);
    let mut chain = prior.join(", ");
    if !chain.is_empty() {
        chain.push_str(", ");
    }
    chain.push_str(&who.hop.to_string());
    parts.headers.insert(X_FORWARDED_FOR, header_value(&chain)?);
    parts
        .headers
        .insert(X_REAL_IP, header_value(&who.client.to_string())?);
    parts
        .headers
        .insert(X_FORWARDED_PROTO, HeaderValue::from_static("https"));
    match &host {
        Some(host) => {
            let value = header_value(host)?;
            parts.headers.insert(X_FORWARDED_HOST, value.clone());
            // h2 carries the host in :authority; HTTP/1.1 upstreams need it
            // as a header.
            parts.headers.insert(header::HOST, value);
        }
        None => {
            parts.headers.remove(&X_FORWARDED_HOST);
        }
    }

    let path = parts
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    parts.uri = Uri::builder()
        .scheme(upstream.scheme.clone())
        .authority(upstream.authority.clone())
        .path_and_query(path)
        .build()
        .map_err(|e| e.to_string())?;
    parts.version = Version::HTTP_11;
    Ok(())
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
    // Most messages carry none of them (a request through the edge usually
    // has no `Connection` header at all): one pass over the few names
    // present is cheaper than hashing and probing for all nine.
    if !headers.keys().any(|name| HOP_BY_HOP.contains(name)) {
        return;
    }
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
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

#[derive(Debug, thiserror::Error)]
#[error("request body over the limit")]
struct BodyTooLarge;

/// A request body that fails once more than `remaining` bytes went through,
/// so an oversized chunked upload is cut off without ever being buffered.
pub struct LimitedBody {
    inner: Incoming,
    remaining: u64,
}

/// Whether forwarding failed because [`LimitedBody`] cut the body off.
fn caused_by_too_large(e: &(dyn StdError + 'static)) -> bool {
    let mut cause = Some(e);
    while let Some(c) = cause {
        if c.is::<BodyTooLarge>() {
            return true;
        }
        cause = c.source();
    }
    false
}

impl Body for LimitedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let len = data.len() as u64;
                    if len > self.remaining {
                        return Poll::Ready(Some(Err(BodyTooLarge.into())));
                    }
                    self.remaining -= len;
                }
                Poll::Ready(Some(Ok(frame)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
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
    fn hop_by_hop_headers_go() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONNECTION,
            "keep-alive, x-secret-hop".parse().unwrap(),
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
