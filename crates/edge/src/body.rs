//! Bodies on their way through the edge: a request body read whole (or
//! streamed, when it is large and its length declared) under `max_body`
//! and `client_body_timeout`, and an upstream's response body under
//! `upstream_timeout` between reads — the split nginx makes between
//! `client_body_timeout` and `proxy_read_timeout`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::sync::oneshot;
use tokio::time::{Instant, Sleep};

use crate::metrics::{Metrics, RouteLabel};
use crate::upstream::Lease;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What went wrong with a client's request body; the client's fault, never
/// the upstream's.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientBodyError {
    #[error("request body over the limit")]
    TooLarge,
    #[error("the client paused its request body longer than client_body_timeout")]
    Timeout,
    #[error("malformed request body: {0}")]
    Malformed(String),
    /// The client closed its connection, or reset its h2 stream, before
    /// the body ended: nobody is left to answer (nginx logs these as 499).
    #[error("the client went away before its request body ended")]
    Aborted,
}

impl ClientBodyError {
    /// What reading a client's body with hyper failed of: the client
    /// leaving (end of input, a reset from its side) or its framing.
    fn reading(e: &hyper::Error) -> ClientBodyError {
        if e.is_incomplete_message() || client_left(e) {
            ClientBodyError::Aborted
        } else {
            ClientBodyError::Malformed(e.to_string())
        }
    }
}

/// Whether `e` comes from the client's side going away: its connection
/// ended or was reset mid-body, or it reset its h2 stream or connection
/// (RST_STREAM, GOAWAY) — not an h2 error the edge detected itself.
fn client_left(e: &hyper::Error) -> bool {
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        if let Some(h2) = c.downcast_ref::<h2::Error>() {
            return h2.is_remote() || h2.is_io();
        }
        if let Some(io) = c.downcast_ref::<std::io::Error>() {
            return matches!(
                io.kind(),
                std::io::ErrorKind::UnexpectedEof
                    | std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::ConnectionAborted
                    | std::io::ErrorKind::BrokenPipe
            );
        }
        cause = c.source();
    }
    false
}

/// The client body error somewhere in `e`'s chain of causes.
pub fn client_body_error<'e>(
    e: &'e (dyn std::error::Error + 'static),
) -> Option<&'e ClientBodyError> {
    let mut cause = Some(e);
    while let Some(c) = cause {
        if let Some(found) = c.downcast_ref::<ClientBodyError>() {
            return Some(found);
        }
        cause = c.source();
    }
    None
}

/// Reads a whole request body of at most `limit` bytes, waiting at most
/// `idle` for each part. A body that arrives in one piece is not copied.
pub async fn read_whole(
    body: &mut Incoming,
    limit: u64,
    idle: Duration,
) -> Result<Bytes, ClientBodyError> {
    let mut first: Option<Bytes> = None;
    let mut rest: Option<BytesMut> = None;
    let mut total: u64 = 0;
    loop {
        let frame = match tokio::time::timeout(idle, body.frame()).await {
            Err(_) => return Err(ClientBodyError::Timeout),
            Ok(None) => break,
            Ok(Some(Err(e))) => return Err(ClientBodyError::reading(&e)),
            Ok(Some(Ok(frame))) => frame,
        };
        // Trailers are not forwarded: the body is re-sent with a length.
        let Ok(data) = frame.into_data() else {
            continue;
        };
        total += data.len() as u64;
        if total > limit {
            return Err(ClientBodyError::TooLarge);
        }
        match (&mut first, &mut rest) {
            (None, _) => first = Some(data),
            (Some(head), None) => {
                let mut joined = BytesMut::with_capacity(head.len() + data.len());
                joined.extend_from_slice(head);
                joined.extend_from_slice(&data);
                rest = Some(joined);
            }
            (Some(_), Some(joined)) => joined.extend_from_slice(&data),
        }
    }
    Ok(match rest {
        Some(joined) => joined.freeze(),
        None => first.unwrap_or_default(),
    })
}

/// Reads and discards what is left of a body, at most `max_bytes` within
/// `wait`; true if it ended within both. Answering an HTTP/1.1 client
/// while it is still sending makes it see a reset instead of the answer;
/// nginx reads on for a while after it answered (`lingering_close`), the
/// edge does it before answering.
pub async fn discard(body: &mut Incoming, max_bytes: u64, wait: Duration) -> bool {
    let drain = async {
        let mut seen = 0u64;
        while let Some(frame) = body.frame().await {
            let Ok(frame) = frame else { return false };
            if let Some(data) = frame.data_ref() {
                seen += data.len() as u64;
                if seen > max_bytes {
                    return false;
                }
            }
        }
        true
    };
    tokio::time::timeout(wait, drain).await.unwrap_or(false)
}

/// A timer that fires when nothing happened for `timeout`: armed only when
/// the body it guards has to wait, moved only after progress.
struct IdleTimer {
    timeout: Duration,
    sleep: Option<Pin<Box<Sleep>>>,
    progressed: bool,
}

impl IdleTimer {
    fn new(timeout: Duration) -> IdleTimer {
        IdleTimer {
            timeout,
            sleep: None,
            progressed: false,
        }
    }

    fn progress(&mut self) {
        self.progressed = true;
    }

    /// Called when the guarded body is pending: whether it waited too long.
    fn poll_expired(&mut self, cx: &mut Context<'_>) -> bool {
        let deadline = Instant::now() + self.timeout;
        match &mut self.sleep {
            None => self.sleep = Some(Box::pin(tokio::time::sleep_until(deadline))),
            Some(sleep) if self.progressed => sleep.as_mut().reset(deadline),
            Some(_) => {}
        }
        self.progressed = false;
        let sleep = self.sleep.as_mut().expect("armed above");
        sleep.as_mut().poll(cx).is_ready()
    }
}

/// The body of a request forwarded upstream.
pub enum ForwardBody {
    /// Read whole before the upstream was contacted (`None`: empty).
    Full(Option<Bytes>),
    /// A large body of declared length, streamed.
    Streamed(StreamedBody),
}

impl ForwardBody {
    pub fn full(bytes: Bytes) -> ForwardBody {
        ForwardBody::Full((!bytes.is_empty()).then_some(bytes))
    }
}

impl Body for ForwardBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ForwardBody::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            ForwardBody::Streamed(streamed) => Pin::new(streamed).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ForwardBody::Full(bytes) => bytes.is_none(),
            ForwardBody::Streamed(streamed) => streamed.inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ForwardBody::Full(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
            ForwardBody::Streamed(streamed) => streamed.inner.size_hint(),
        }
    }
}

/// A request body streamed to the upstream: cut off above the limit or
/// after `client_body_timeout` without data, and telling the forwarder
/// when it is complete (the upstream's own timeout starts then).
pub struct StreamedBody {
    inner: Incoming,
    remaining: u64,
    idle: IdleTimer,
    done: Option<oneshot::Sender<()>>,
}

impl StreamedBody {
    pub fn new(
        inner: Incoming,
        limit: u64,
        idle: Duration,
    ) -> (StreamedBody, oneshot::Receiver<()>) {
        let (done, finished) = oneshot::channel();
        let body = StreamedBody {
            inner,
            remaining: limit,
            idle: IdleTimer::new(idle),
            done: Some(done),
        };
        (body, finished)
    }

    fn finish(&mut self) {
        if let Some(done) = self.done.take() {
            let _ = done.send(());
        }
    }

    fn fail(&mut self, error: ClientBodyError) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.finish();
        Poll::Ready(Some(Err(Box::new(error))))
    }
}

impl Body for StreamedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Pending => {
                if this.idle.poll_expired(cx) {
                    return this.fail(ClientBodyError::Timeout);
                }
                Poll::Pending
            }
            Poll::Ready(None) => {
                this.finish();
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => this.fail(ClientBodyError::reading(&e)),
            Poll::Ready(Some(Ok(frame))) => {
                this.idle.progress();
                if let Some(data) = frame.data_ref() {
                    let len = data.len() as u64;
                    if len > this.remaining {
                        return this.fail(ClientBodyError::TooLarge);
                    }
                    this.remaining -= len;
                }
                if this.inner.is_end_stream() {
                    this.finish();
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

/// The upstream stopped sending its response body.
#[derive(Debug, thiserror::Error)]
#[error("the upstream paused its response body longer than upstream_timeout")]
pub struct UpstreamBodyTimeout;

/// An upstream's response body, given up (and counted as an upstream error
/// of kind `body_timeout`) when no data comes for `upstream_timeout`, as
/// nginx's `proxy_read_timeout` does.
///
/// It holds the upstream connection it comes on, and gives it back to its
/// pool at its end (so a connection is reused only once its response has
/// been read whole).
pub struct UpstreamBody {
    inner: Incoming,
    lease: Lease,
    idle: IdleTimer,
    metrics: Arc<Metrics>,
    route: RouteLabel,
}

impl UpstreamBody {
    pub fn new(
        inner: Incoming,
        mut lease: Lease,
        idle: Duration,
        metrics: Arc<Metrics>,
        route: RouteLabel,
    ) -> Self {
        // A response without a body (HEAD, 204, 304, a zero length) may
        // never be polled.
        if inner.is_end_stream() {
            lease.release();
        }
        UpstreamBody {
            inner,
            lease,
            idle: IdleTimer::new(idle),
            metrics,
            route,
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Pending => {
                if this.idle.poll_expired(cx) {
                    this.metrics
                        .record_upstream_error(&this.route, "body_timeout");
                    return Poll::Ready(Some(Err(Box::new(UpstreamBodyTimeout))));
                }
                Poll::Pending
            }
            Poll::Ready(Some(Ok(frame))) => {
                this.idle.progress();
                // The server sending this body stops polling once it says
                // it has ended.
                if this.inner.is_end_stream() {
                    this.lease.release();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(Box::new(e)))),
            Poll::Ready(None) => {
                this.lease.release();
                Poll::Ready(None)
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
