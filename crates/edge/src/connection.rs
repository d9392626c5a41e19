//! One admitted client connection, from its slot to its last response: the
//! TLS handshake (stage 3, [`crate::tls`]), then HTTP/1.1 or h2 as ALPN
//! chose, each request handed to [`crate::request`] — under deadlines that
//! no client can stretch:
//!
//! - **first request**: a connection must deliver its first complete
//!   request head within `header_timeout` of being accepted (PROXY header,
//!   TLS handshake, then the head; for h2 the preface, SETTINGS and a
//!   HEADERS frame; without ALPN, whichever protocol it speaks), else it
//!   is closed — nginx's `client_header_timeout`, HAProxy's `timeout
//!   http-request`;
//! - **idle**: with no request in flight, the next complete head must come
//!   within `idle_timeout` of the last response, else an HTTP/1.1
//!   connection is closed and an h2 one gets GOAWAY (nginx's
//!   `keepalive_timeout`); while requests run, h2 PINGs find dead peers;
//! - **sending**: a write that waits longer than `send_timeout` (the
//!   client stopped reading its response) drops the connection, as nginx's
//!   `send_timeout` does; an h2 client that stops reading altogether also
//!   misses the PINGs, and an h2 stream whose response waits longer than
//!   `send_timeout` for the client's flow-control window is reset
//!   ([`crate::stream_deadline`]);
//! - **shutdown**: idle connections are closed (h2: GOAWAY) at once,
//!   busy ones once their requests end.
//!
//! The same driver serves the admin listener.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulConnection;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::config::Limits;
use crate::forward::Forwarder;
use crate::metrics::{BadRequest, Metrics};
use crate::park::{self, ClientStream};
use crate::request::{self, ClientSource};
use crate::slots::{ConnectionSlots, Slot};
use crate::sniff::{Prefixed, Protocol, sniff};
use crate::state::EdgeState;
use crate::stream_deadline::{StreamExecutor, StreamSend};

/// After GOAWAY (or the close of an idle HTTP/1.1 connection), how long a
/// connection with nothing in flight may take to go away by itself.
pub(crate) const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// What each connection's task needs (cloned per connection, so every
/// field is a handle: the task's size is memory each idle connection holds).
#[derive(Clone)]
pub(crate) struct ConnContext {
    pub state: Arc<EdgeState>,
    pub forwarder: Arc<Forwarder>,
    pub acceptor: TlsAcceptor,
    pub slots: Arc<ConnectionSlots>,
    /// Cancelled when the edge shuts down.
    pub stop: CancellationToken,
    pub http: Arc<HttpBuilders>,
}

/// One builder per protocol, chosen by ALPN or, without it, by
/// [`crate::sniff`].
#[derive(Clone)]
pub(crate) struct HttpBuilders {
    /// hyper's own HTTP/1.1 server, whose connections can be parked
    /// ([`crate::park`]).
    pub h1: http1::Builder,
    h2: auto::Builder<StreamExecutor>,
}

impl ConnContext {
    pub fn new(
        state: Arc<EdgeState>,
        forwarder: Forwarder,
        acceptor: TlsAcceptor,
        slots: Arc<ConnectionSlots>,
        stop: CancellationToken,
    ) -> ConnContext {
        ConnContext {
            http: Arc::new(HttpBuilders {
                h1: http1_builder(),
                h2: h2_builder(&state.limits, &state.metrics),
            }),
            state,
            forwarder: Arc::new(forwarder),
            acceptor,
            slots,
            stop,
        }
    }
}

fn http1_builder() -> http1::Builder {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        // The driver below keeps the deadlines, for both protocols alike.
        .header_read_timeout(None)
        .keep_alive(true);
    builder
}

fn h2_builder(limits: &Limits, metrics: &Arc<Metrics>) -> auto::Builder<StreamExecutor> {
    let executor = StreamExecutor::new(limits.send_timeout, metrics.clone());
    let mut builder = auto::Builder::new(executor).http2_only();
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(250)
        .max_header_list_size(64 * 1024)
        .keep_alive_interval(Some(limits.idle_timeout))
        .keep_alive_timeout(limits.header_timeout);
    builder
}

/// Keeps the open-connections gauge right however the task ends.
struct OpenConnection(Arc<Metrics>);

impl OpenConnection {
    fn new(metrics: &Arc<Metrics>) -> OpenConnection {
        metrics.open_connections.inc();
        OpenConnection(metrics.clone())
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.open_connections.dec();
    }
}

/// Serves a connection that holds `slot` until it ends. `deadline` is its
/// first-request deadline.
pub(crate) async fn serve(
    ctx: ConnContext,
    stream: TcpStream,
    source: ClientSource,
    slot: Slot,
    deadline: Instant,
) {
    let _slot = slot;
    let state = &ctx.state;
    let _open = OpenConnection::new(&state.metrics);
    let _ = stream.set_nodelay(true);
    let remaining = deadline.saturating_duration_since(Instant::now());
    // Boxed like everything a connection only needs for a while: the
    // task's size is memory every idle connection holds.
    let handshake = Box::pin(crate::tls::handshake(&ctx.acceptor, stream, remaining));
    let tls = match handshake.await {
        Ok(tls) => tls,
        Err(e) => {
            debug!(?source, error = %e, "TLS handshake failed");
            state.metrics.tls_handshake_failures.inc();
            return;
        }
    };
    let activity = Arc::new(Activity::new());
    let service_activity = activity.clone();
    let (service_state, forwarder) = (ctx.state.clone(), ctx.forwarder.clone());
    let service = service_fn(move |req| {
        let in_flight = service_activity.begin();
        let state = service_state.clone();
        let forwarder = forwarder.clone();
        async move {
            let response = request::handle(&state, &forwarder, req, source).await;
            Ok::<_, Infallible>(response.map(|body| Tracked::new(body, in_flight)))
        }
    });
    let mut io: ClientStream = Box::new(Prefixed::new(WriteDeadline::new(
        tls,
        state.limits.send_timeout,
        state.metrics.clone(),
    )));
    let protocol = match park::tls_of(&io).get_ref().1.alpn_protocol() {
        Some(b"h2") => Protocol::H2,
        Some(_) => Protocol::Http1,
        None => tokio::select! {
            sniffed = sniff(&mut io) => match sniffed {
                Ok(protocol) => protocol,
                Err(e) => {
                    debug!(?source, error = %e, "closed before its first request");
                    return;
                }
            },
            () = tokio::time::sleep_until(deadline) => {
                state.metrics.request_head_timeouts.inc();
                return;
            }
            // Nothing was ever asked of this connection: nothing is owed.
            () = ctx.stop.cancelled() => return,
        },
    };
    if protocol == Protocol::Http1 {
        return park::serve_http1(&ctx, io, service, activity, deadline).await;
    }
    let builder = &ctx.http.h2;
    // Owned, so that the future does not borrow the builder (which also
    // keeps the compiler's Send check simple).
    let mut conn = Box::pin(
        builder
            .serve_connection(TokioIo::new(io), service)
            .into_owned(),
    );
    drive(
        conn.as_mut(),
        &activity,
        deadline,
        &state.limits,
        &ctx.stop,
        &state.metrics,
    )
    .await;
}

/// A served HTTP connection as the driver sees it. (A trait object rather
/// than a generic: hyper-util's `GracefulConnection` bounds, checked inside
/// an async fn, trip the compiler's higher-ranked Send check.)
pub(crate) trait Served: Send {
    /// Ready when the connection ended.
    fn poll_served(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Ended>;
    /// hyper's graceful shutdown: HTTP/1.1 closes when idle, h2 sends GOAWAY.
    fn shut_down(self: Pin<&mut Self>);
}

/// How a served connection ended.
pub(crate) enum Ended {
    Cleanly,
    /// hyper could not parse a request head (it answered 400 or 431).
    BadHead(String),
    Error(String),
}

impl Ended {
    pub(crate) fn failed(error: &impl ConnectionError) -> Ended {
        match error.as_hyper() {
            Some(h) if h.is_parse() || h.is_parse_too_large() => Ended::BadHead(error.to_string()),
            _ => Ended::Error(error.to_string()),
        }
    }
}

impl<C> Served for C
where
    C: GracefulConnection + Send,
    C::Error: ConnectionError,
{
    fn poll_served(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Ended> {
        self.poll(cx).map(|ended| match ended {
            Ok(()) => Ended::Cleanly,
            Err(e) => Ended::failed(&e),
        })
    }

    fn shut_down(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

/// Runs an HTTP connection to its end under the first-request, idle and
/// shutdown rules (see the module documentation).
pub(crate) async fn drive(
    conn: Pin<&mut (dyn Served + '_)>,
    activity: &Activity,
    first_deadline: Instant,
    limits: &Limits,
    stop: &CancellationToken,
    metrics: &Metrics,
) {
    enum Phase {
        Serving,
        /// Graceful shutdown asked; once nothing is in flight, the
        /// connection gets [`CLOSE_GRACE`] to go.
        Closing {
            grace_until: Option<Instant>,
        },
    }
    let mut conn = conn;
    let timer = tokio::time::sleep_until(first_deadline);
    let mut timer = std::pin::pin!(timer);
    let mut phase = Phase::Serving;
    loop {
        tokio::select! {
            biased;
            ended = std::future::poll_fn(|cx| conn.as_mut().poll_served(cx)) => {
                match ended {
                    Ended::Cleanly => {}
                    Ended::BadHead(error) => {
                        metrics.record_bad_request(BadRequest::Head);
                        debug!(error, "unparsable request head");
                    }
                    Ended::Error(error) => debug!(error, "connection ended with an error"),
                }
                return;
            }
            () = &mut timer => {
                let now = Instant::now();
                match phase {
                    Phase::Serving => match activity.idle_deadline(first_deadline, limits.idle_timeout) {
                        None => timer.as_mut().reset(now + limits.idle_timeout),
                        Some(deadline) if deadline > now => timer.as_mut().reset(deadline),
                        Some(_) if !activity.served() => {
                            metrics.request_head_timeouts.inc();
                            return;
                        }
                        Some(_) => {
                            metrics.idle_closes.inc();
                            conn.as_mut().shut_down();
                            phase = Phase::Closing { grace_until: None };
                            timer.as_mut().reset(now);
                        }
                    },
                    Phase::Closing { grace_until } => {
                        if activity.in_flight() > 0 {
                            timer.as_mut().reset(now + limits.idle_timeout);
                        } else if let Some(until) = grace_until {
                            if until <= now {
                                return;
                            }
                            timer.as_mut().reset(until);
                        } else {
                            if !activity.served() {
                                // Nothing ever came: no GOAWAY owed.
                                return;
                            }
                            phase = Phase::Closing { grace_until: Some(now + CLOSE_GRACE) };
                            timer.as_mut().reset(now + CLOSE_GRACE);
                        }
                    }
                }
            }
            () = stop.cancelled(), if matches!(phase, Phase::Serving) => {
                conn.as_mut().shut_down();
                phase = Phase::Closing { grace_until: None };
                timer.as_mut().reset(Instant::now());
            }
        }
    }
}

/// The error a served connection ends with: hyper's own, or boxed by
/// hyper-util's protocol-sniffing connection.
pub(crate) trait ConnectionError: std::fmt::Display {
    fn as_hyper(&self) -> Option<&hyper::Error>;
}

impl ConnectionError for hyper::Error {
    fn as_hyper(&self) -> Option<&hyper::Error> {
        Some(self)
    }
}

impl ConnectionError for Box<dyn std::error::Error + Send + Sync> {
    fn as_hyper(&self) -> Option<&hyper::Error> {
        self.downcast_ref()
    }
}

/// What the driver knows of a connection's requests, kept by the service
/// with a few atomic operations per request and no wake-ups.
pub(crate) struct Activity {
    base: std::time::Instant,
    in_flight: AtomicUsize,
    served: AtomicBool,
    /// When the last response ended, in milliseconds since `base`.
    last_end_ms: AtomicU64,
}

impl Activity {
    pub(crate) fn new() -> Activity {
        Activity {
            base: std::time::Instant::now(),
            in_flight: AtomicUsize::new(0),
            served: AtomicBool::new(false),
            last_end_ms: AtomicU64::new(0),
        }
    }

    /// A request head arrived; the guard ends it when its response body is
    /// done or dropped.
    pub(crate) fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.served.store(true, Ordering::Relaxed);
        InFlight(self.clone())
    }

    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    pub(crate) fn served(&self) -> bool {
        self.served.load(Ordering::Relaxed)
    }

    /// When the connection must have shown a new request head: `None`
    /// while requests are in flight.
    pub(crate) fn idle_deadline(&self, first_deadline: Instant, idle: Duration) -> Option<Instant> {
        if self.in_flight() > 0 {
            return None;
        }
        if !self.served() {
            return Some(first_deadline);
        }
        let since_base = Duration::from_millis(self.last_end_ms.load(Ordering::Relaxed));
        Some(Instant::from_std(self.base + since_base) + idle)
    }
}

/// One request in flight.
pub(crate) struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let elapsed = u64::try_from(self.0.base.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.0.last_end_ms.store(elapsed, Ordering::Relaxed);
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A response body that keeps its request counted as in flight until it
/// is sent or dropped; on h2 it goes through the stream's [`StreamSend`].
pub(crate) struct Tracked<B> {
    inner: B,
    _in_flight: InFlight,
    send: Option<StreamSend>,
}

impl<B> Tracked<B> {
    /// Called on the task that serves the request (for h2, the stream's).
    pub(crate) fn new(inner: B, in_flight: InFlight) -> Tracked<B> {
        Tracked {
            inner,
            _in_flight: in_flight,
            send: StreamSend::current(),
        }
    }
}

impl<B: Body<Data = Bytes> + Unpin> Body for Tracked<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = &mut *self;
        match &mut this.send {
            None => Pin::new(&mut this.inner).poll_frame(cx),
            Some(send) => send.poll_frame(&mut this.inner, cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        let ended = self.inner.is_end_stream();
        self.send
            .as_ref()
            .map_or(ended, |send| send.is_end_stream(ended))
    }

    fn size_hint(&self) -> SizeHint {
        let hint = self.inner.size_hint();
        match &self.send {
            None => hint,
            Some(send) => send.size_hint(hint),
        }
    }
}

/// A client stream whose writes may not wait longer than `timeout`: armed
/// only while a write is pending (the socket buffer is full), so it costs
/// nothing while the client keeps reading.
pub(crate) struct WriteDeadline<IO> {
    inner: IO,
    timeout: Duration,
    stalled: Option<Pin<Box<tokio::time::Sleep>>>,
    metrics: Arc<Metrics>,
}

impl<IO> WriteDeadline<IO> {
    pub(crate) fn get_ref(&self) -> &IO {
        &self.inner
    }

    pub(crate) fn new(inner: IO, timeout: Duration, metrics: Arc<Metrics>) -> WriteDeadline<IO> {
        WriteDeadline {
            inner,
            timeout,
            stalled: None,
            metrics,
        }
    }

    /// After a write attempt: clears the deadline on progress, arms it on
    /// a wait, and turns a wait past it into an error.
    fn watch<T>(
        &mut self,
        cx: &mut Context<'_>,
        attempt: Poll<std::io::Result<T>>,
    ) -> Poll<std::io::Result<T>> {
        if attempt.is_ready() {
            self.stalled = None;
            return attempt;
        }
        let timeout = self.timeout;
        let stalled = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        if stalled.as_mut().poll(cx).is_ready() {
            self.metrics.send_timeouts.inc();
            return Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the client stopped reading (send_timeout)",
            )));
        }
        Poll::Pending
    }
}

impl<IO: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for WriteDeadline<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<IO: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for WriteDeadline<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let attempt = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.watch(cx, attempt)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let attempt = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.watch(cx, attempt)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let attempt = Pin::new(&mut self.inner).poll_flush(cx);
        self.watch(cx, attempt)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let attempt = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.watch(cx, attempt)
    }
}
