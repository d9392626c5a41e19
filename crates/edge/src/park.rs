//! HTTP/1.1 keep-alive connections that hold no HTTP buffers while idle.
//!
//! hyper keeps an 8 KiB read buffer and a header write buffer for a
//! connection's whole life, so thousands of idle keep-alive clients would
//! cost the edge twice what they cost nginx, which frees its buffers on an
//! idle connection. Here an HTTP/1.1 connection with nothing in flight for
//! [`PARK_AFTER`] is *parked*: the [`Parking`] stream tells hyper the client
//! closed (a read of 0 bytes, after the last response was flushed), hyper
//! hands the stream back without shutting it down, its connection state is
//! dropped, and the task waits for the socket to become readable with only
//! the TLS session left. The next request starts a new hyper connection on
//! the same TLS stream; the client sees one keep-alive connection.
//!
//! A busy client never parks (its next request arrives within
//! [`PARK_AFTER`]), so parking costs nothing per request.
//!
//! One case is lost compared with staying in hyper: a client that pipelines
//! a request behind another and leaves its head unfinished for longer than
//! [`PARK_AFTER`] is closed before that request is served, as when its idle
//! keep-alive connection times out while it writes (a client retries such a
//! request on a new connection). No request whose head was complete is
//! affected.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use http_body::Body;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;

use crate::config::Limits;
use crate::connection::{Activity, CLOSE_GRACE, ConnContext, Ended, Served, WriteDeadline, drive};
use crate::metrics::Metrics;
use crate::sniff::{Prefixed, delegate_writes};

/// How long an HTTP/1.1 connection with nothing in flight keeps hyper's
/// buffers before it parks: longer than a busy client's gap between a
/// response and its next request on a local network (a client further
/// away parks between requests, which costs a few microseconds each), and
/// short enough that a burst of clients going idle gives its memory back
/// before the allocator has to keep much of it (nginx frees at once).
pub(crate) const PARK_AFTER: Duration = Duration::from_millis(50);

/// Asks a connection to close as soon as nothing is in flight instead of
/// keeping it alive: shared between the driver and the stream under hyper.
#[derive(Default)]
pub(crate) struct CloseWhenIdle(AtomicBool);

impl CloseWhenIdle {
    pub(crate) fn ask(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    pub(crate) fn asked(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// The client stream as hyper sees it: passes everything through, and
/// ends the read side once the connection has been idle for `delay` (or at
/// once when [`CloseWhenIdle`] was asked), which makes hyper finish the
/// connection cleanly between two requests.
pub(crate) struct Parking<IO> {
    inner: IO,
    activity: Arc<Activity>,
    close: Arc<CloseWhenIdle>,
    delay: Duration,
    /// A flush found nothing in flight and nothing has been read since:
    /// hyper is between requests.
    idle: bool,
    /// The idle timer runs for the current idle spell.
    timing: bool,
    timer: Option<Pin<Box<Sleep>>>,
    parked: bool,
}

impl<IO> Parking<IO> {
    pub(crate) fn new(
        inner: IO,
        activity: Arc<Activity>,
        close: Arc<CloseWhenIdle>,
        delay: Duration,
    ) -> Parking<IO> {
        Parking {
            inner,
            activity,
            close,
            delay,
            idle: false,
            timing: false,
            timer: None,
            parked: false,
        }
    }

    /// Whether hyper was told the read side ended because the connection
    /// was idle (rather than the client closing or an error).
    pub(crate) fn parked(&self) -> bool {
        self.parked
    }

    pub(crate) fn into_inner(self) -> IO {
        self.inner
    }

    /// Ready when the connection should park now; otherwise the timer
    /// wakes the task when it should.
    fn poll_park(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if !self.idle || self.activity.in_flight() > 0 {
            return Poll::Pending;
        }
        if self.close.asked() {
            return Poll::Ready(());
        }
        if !self.timing {
            // The clock is read once per idle spell, not at every poll.
            let deadline = Instant::now() + self.delay;
            match &mut self.timer {
                Some(timer) => timer.as_mut().reset(deadline),
                None => self.timer = Some(Box::pin(tokio::time::sleep_until(deadline))),
            }
            self.timing = true;
        }
        let timer = self.timer.as_mut().expect("armed above");
        timer.as_mut().poll(cx)
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Parking<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if this.parked {
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        if let Poll::Ready(read) = Pin::new(&mut this.inner).poll_read(cx, buf) {
            if buf.filled().len() > before {
                this.idle = false;
                this.timing = false;
            }
            return Poll::Ready(read);
        }
        ready!(this.poll_park(cx));
        this.parked = true;
        Poll::Ready(Ok(()))
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Parking<IO> {
    delegate_writes!();

    /// hyper flushes after each response (and on every turn of its loop):
    /// a flush that completes with nothing in flight means everything the
    /// client was owed has been written.
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        let flushed = ready!(Pin::new(&mut this.inner).poll_flush(cx));
        if flushed.is_ok() && !this.idle && this.activity.in_flight() == 0 {
            this.idle = true;
            // hyper polled its read before this flush and will not read
            // again until the socket wakes it: the timer must.
            if this.poll_park(cx).is_ready() {
                cx.waker().wake_by_ref();
            }
        }
        Poll::Ready(flushed)
    }
}

/// Boxed, so that moving it between hyper and the parked wait copies a
/// pointer, and the task keeps room for one of it, not one per state.
pub(crate) type ClientStream = Box<Prefixed<WriteDeadline<TlsStream<TcpStream>>>>;

/// The TLS stream under a client stream's wrappers.
pub(crate) fn tls_of(io: &ClientStream) -> &TlsStream<TcpStream> {
    io.get_ref().get_ref()
}

/// Serves an HTTP/1.1 connection (by ALPN or sniffed) as a series of hyper
/// connections on the same TLS stream, parked in between while idle
/// ([`crate::park`]): an idle client holds its TLS session and nothing else.
pub(crate) async fn serve_http1<S>(
    ctx: &ConnContext,
    mut io: ClientStream,
    service: S,
    activity: Arc<Activity>,
    first_deadline: Instant,
) where
    S: hyper::service::HttpService<hyper::body::Incoming> + Clone + Send + Unpin + 'static,
    S::Future: Send + 'static,
    S::ResBody: Send + 'static,
    <S::ResBody as Body>::Data: Send,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    <S::ResBody as Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (limits, metrics) = (&ctx.state.limits, &ctx.state.metrics);
    loop {
        let close = Arc::new(CloseWhenIdle::default());
        let parking = Parking::new(io, activity.clone(), close.clone(), PARK_AFTER);
        let conn = ctx
            .http
            .h1
            .serve_connection(TokioIo::new(parking), service.clone())
            .without_shutdown();
        // Both boxed, so that a parked connection's task keeps room for
        // neither hyper's state nor the parts it hands back (inline, they
        // would add 150 bytes to every connection's task).
        let mut run = Box::pin(ParkableHttp1 {
            conn: Box::pin(conn),
            close,
            parts: None,
        });
        drive(
            run.as_mut(),
            &activity,
            first_deadline,
            limits,
            &ctx.stop,
            metrics,
        )
        .await;
        let Some(parts) = run.parts.take() else {
            // Closed by the client, by an error or by a deadline.
            return;
        };
        let close_asked = run.close.asked();
        drop(run);
        let parking = parts.io.into_inner();
        let parked = parking.parked();
        io = parking.into_inner();
        if !parked || close_asked || ctx.stop.is_cancelled() || !parts.read_buf.is_empty() {
            // hyper ended the connection itself (the client closed, or
            // keep-alive ended), or the edge is stopping. (hyper never
            // hands back unparsed bytes here: a read ends only with its
            // buffer empty.)
            close_gently(&mut io).await;
            return;
        }
        if !wait_for_request(&io, &activity, first_deadline, limits, &ctx.stop, metrics).await {
            close_gently(&mut io).await;
            return;
        }
    }
}

/// Waits, parked, until the client sends something: `false` when the
/// connection should close instead (its idle or first-request deadline
/// passed, or the edge is stopping).
async fn wait_for_request(
    io: &ClientStream,
    activity: &Activity,
    first_deadline: Instant,
    limits: &Limits,
    stop: &CancellationToken,
    metrics: &Metrics,
) -> bool {
    let (tcp, session) = tls_of(io).get_ref();
    if io.has_prefix() || !session.wants_read() {
        // Decrypted bytes (or the client's close_notify) are already
        // waiting: hyper reads them.
        return true;
    }
    let deadline = activity
        .idle_deadline(first_deadline, limits.idle_timeout)
        .unwrap_or_else(|| Instant::now() + limits.idle_timeout);
    tokio::select! {
        biased;
        readable = tcp.readable() => readable.is_ok(),
        () = tokio::time::sleep_until(deadline) => {
            if activity.served() {
                metrics.idle_closes.inc();
            } else {
                metrics.request_head_timeouts.inc();
            }
            false
        }
        () = stop.cancelled() => false,
    }
}

/// Sends TLS close_notify and closes, giving a client that does not read
/// [`CLOSE_GRACE`] before the socket is simply dropped.
async fn close_gently(io: &mut ClientStream) {
    use tokio::io::AsyncWriteExt;
    let _ = tokio::time::timeout(CLOSE_GRACE, io.shutdown()).await;
}

/// An HTTP/1.1 connection run until it ends or parks; on a clean end
/// hyper's [`Parts`](http1::Parts) are kept for the caller.
struct ParkableHttp1<F, P> {
    conn: Pin<Box<F>>,
    close: Arc<CloseWhenIdle>,
    parts: Option<P>,
}

impl<F, P> Served for ParkableHttp1<F, P>
where
    F: std::future::Future<Output = hyper::Result<P>> + Send,
    P: Send + Unpin,
{
    fn poll_served(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Ended> {
        let this = self.get_mut();
        let ended = std::task::ready!(this.conn.as_mut().poll(cx));
        Poll::Ready(match ended {
            Ok(parts) => {
                this.parts = Some(parts);
                Ended::Cleanly
            }
            Err(e) => Ended::failed(&e),
        })
    }

    /// hyper's graceful shutdown for HTTP/1.1 would also mark the response
    /// in flight `Connection: close`; asking the stream to end once nothing
    /// is in flight closes at the same moment.
    fn shut_down(self: Pin<&mut Self>) {
        self.close.ask();
    }
}
