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

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use crate::connection::Activity;

/// How long an HTTP/1.1 connection with nothing in flight keeps hyper's
/// buffers before it parks: longer than a busy client's gap between a
/// response and its next request, short enough that idle connections give
/// their memory back at once.
pub(crate) const PARK_AFTER: Duration = Duration::from_millis(200);

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
        let deadline = Instant::now() + self.delay;
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if !self.timing {
            timer.as_mut().reset(deadline);
            self.timing = true;
        }
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
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

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

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
