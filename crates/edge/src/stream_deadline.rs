//! The h2 half of `send_timeout`: a stream whose response the client gives
//! no flow-control window for is reset after `send_timeout`.
//!
//! On HTTP/1.1 a client that stops reading fills the socket buffer, and
//! the connection's write deadline ([`crate::connection`]) drops it. An h2
//! client can stall one stream without ever blocking the socket: it
//! answers PINGs, but sends no WINDOW_UPDATE (or a tiny
//! SETTINGS_INITIAL_WINDOW_SIZE), so hyper holds the response's next chunk
//! waiting for window forever, and with it the upstream's connection and
//! the request's in-flight count (which also keeps SIGTERM waiting). nginx
//! gives such a stream `send_timeout` too (its "exhausted" send window
//! arms the same timer) and then closes it.
//!
//! hyper runs each h2 stream as a task it hands to the connection's
//! executor, so [`StreamExecutor`] wraps every such task in a [`Watched`]
//! future and lends it a [`SendProgress`] through a task-local. The
//! response body ([`crate::connection::Tracked`], through [`StreamSend`])
//! notes in it when it hands hyper a chunk and when hyper asks for the
//! next one. When a chunk was handed and hyper did not ask again for
//! `send_timeout` (the chunk is waiting for window), the task is dropped:
//! h2 resets the stream (RST_STREAM CANCEL), the upstream response is
//! dropped with its connection, and the connection's other streams carry
//! on. A body that waits for its upstream is not the client's fault and
//! is not timed here (the upstream body timeout is).
//!
//! Chunks are handed at most [`PIECE`] bytes at a time (slices, not
//! copies): hyper queues a whole chunk once the window has room for one
//! byte of it, and a stream's last chunk, once queued, is no longer
//! watched. So whatever a client's window, "asked again" means it took
//! about a frame more, and what it can leave queued on a stream it stalls
//! at the very end is one frame, not an upstream read buffer.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::task::futures::TaskLocalFuture;
use tokio::time::{Instant, Sleep};
use tracing::debug;

use crate::metrics::Metrics;

tokio::task_local! {
    static STREAM: Arc<SendProgress>;
}

/// What a stream's response body tells its watchdog.
#[derive(Debug, Default)]
pub(crate) struct SendProgress {
    /// How many times hyper asked the body for a frame.
    pulls: AtomicU64,
    /// The body handed hyper a chunk, and hyper has not asked for more.
    handed: AtomicBool,
}

impl SendProgress {
    /// The progress handle of the h2 stream being served on this task, if
    /// it is one.
    pub(crate) fn current() -> Option<Arc<SendProgress>> {
        STREAM.try_with(Arc::clone).ok()
    }

    /// hyper asks the body for its next frame.
    pub(crate) fn pulled(&self) {
        self.pulls.fetch_add(1, Ordering::Relaxed);
        self.handed.store(false, Ordering::Relaxed);
    }

    /// The body handed hyper a data chunk: until hyper asks again, the
    /// client's window is what the stream waits for.
    pub(crate) fn handed_chunk(&self) {
        self.handed.store(true, Ordering::Relaxed);
    }
}

/// The most of a response chunk handed to hyper at once: h2's default
/// frame size.
pub(crate) const PIECE: usize = 16 * 1024;

/// A response body's h2 side: hands hyper at most [`PIECE`] bytes at a
/// time and notes for the stream's [`Watched`] deadline how hyper takes
/// them.
pub(crate) struct StreamSend {
    progress: Arc<SendProgress>,
    /// What is left of a chunk larger than a piece.
    rest: Option<Bytes>,
}

impl StreamSend {
    /// For a body made on the task of an h2 stream; `None` elsewhere
    /// (HTTP/1.1 has the connection's write deadline).
    pub(crate) fn current() -> Option<StreamSend> {
        SendProgress::current().map(|progress| StreamSend {
            progress,
            rest: None,
        })
    }

    pub(crate) fn poll_frame<B>(
        &mut self,
        inner: &mut B,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>>
    where
        B: Body<Data = Bytes> + Unpin,
    {
        self.progress.pulled();
        let mut data = match self.rest.take() {
            Some(rest) => rest,
            None => match std::task::ready!(Pin::new(inner).poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => data,
                    Err(trailers) => return Poll::Ready(Some(Ok(trailers))),
                },
                ended => return Poll::Ready(ended),
            },
        };
        if data.len() > PIECE {
            self.rest = Some(data.split_off(PIECE));
        }
        if !data.is_empty() {
            self.progress.handed_chunk();
        }
        Poll::Ready(Some(Ok(Frame::data(data))))
    }

    /// Whether the body is done, given whether the inner body is.
    pub(crate) fn is_end_stream(&self, inner_ended: bool) -> bool {
        self.rest.is_none() && inner_ended
    }

    /// The inner body's size hint plus what is left of its last chunk.
    pub(crate) fn size_hint(&self, inner: SizeHint) -> SizeHint {
        let held = self.rest.as_ref().map_or(0, |rest| rest.len() as u64);
        let mut hint = SizeHint::new();
        if let Some(upper) = inner.upper() {
            hint.set_upper(upper.saturating_add(held));
        }
        hint.set_lower(inner.lower().saturating_add(held));
        hint
    }
}

/// The executor of the edge's h2 connections: spawns each stream's task
/// on the current runtime under a [`Watched`] send deadline.
#[derive(Clone)]
pub(crate) struct StreamExecutor {
    send_timeout: Duration,
    metrics: Arc<Metrics>,
}

impl StreamExecutor {
    pub(crate) fn new(send_timeout: Duration, metrics: Arc<Metrics>) -> StreamExecutor {
        StreamExecutor {
            send_timeout,
            metrics,
        }
    }
}

impl<F> hyper::rt::Executor<F> for StreamExecutor
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, task: F) {
        let progress = Arc::new(SendProgress::default());
        tokio::spawn(Watched {
            task: Box::pin(STREAM.scope(progress.clone(), task)),
            progress,
            send_timeout: self.send_timeout,
            deadline: None,
            metrics: self.metrics.clone(),
        });
    }
}

/// One h2 stream's task, dropped when its response waited for the
/// client's window longer than `send_timeout`.
struct Watched<F: Future> {
    task: Pin<Box<TaskLocalFuture<Arc<SendProgress>, F>>>,
    progress: Arc<SendProgress>,
    send_timeout: Duration,
    /// Armed while a handed chunk waits: the pull count it was armed at
    /// and the timer.
    deadline: Option<(u64, Pin<Box<Sleep>>)>,
    metrics: Arc<Metrics>,
}

impl<F: Future> Future for Watched<F> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        // Every field is Unpin (the task is boxed).
        let this = self.get_mut();
        if this.task.as_mut().poll(cx).is_ready() {
            return Poll::Ready(());
        }
        // The body is only touched inside the task's poll, so what it
        // noted is current here.
        if !this.progress.handed.load(Ordering::Relaxed) {
            this.deadline = None;
            return Poll::Pending;
        }
        let pulls = this.progress.pulls.load(Ordering::Relaxed);
        let send_timeout = this.send_timeout;
        match &mut this.deadline {
            Some((armed_at, _)) if *armed_at == pulls => {}
            Some((armed_at, sleep)) => {
                *armed_at = pulls;
                sleep.as_mut().reset(Instant::now() + send_timeout);
            }
            None => {
                this.deadline = Some((pulls, Box::pin(tokio::time::sleep(send_timeout))));
            }
        }
        let (_, sleep) = this.deadline.as_mut().expect("armed above");
        if sleep.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        // Dropping the task drops hyper's handle on the stream (h2 sends
        // RST_STREAM) and the response body with its upstream connection.
        this.metrics.send_timeouts.inc();
        debug!("h2 stream reset: the client gave its response no window for send_timeout");
        Poll::Ready(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::Full;

    fn frame_len(polled: Poll<Option<Result<Frame<Bytes>, std::convert::Infallible>>>) -> usize {
        match polled {
            Poll::Ready(Some(Ok(frame))) => frame.into_data().unwrap().len(),
            other => panic!("expected data, got {other:?}"),
        }
    }

    #[test]
    fn a_large_chunk_is_handed_piece_by_piece_and_each_piece_is_noted() {
        let progress = Arc::new(SendProgress::default());
        let mut send = StreamSend {
            progress: progress.clone(),
            rest: None,
        };
        let mut body = Full::new(Bytes::from(vec![7u8; 2 * PIECE + 100]));
        let mut cx = Context::from_waker(futures_util::task::noop_waker_ref());
        assert_eq!(
            send.size_hint(body.size_hint()).exact(),
            Some(2 * PIECE as u64 + 100)
        );
        let mut pieces = Vec::new();
        while !send.is_end_stream(body.is_end_stream()) {
            pieces.push(frame_len(send.poll_frame(&mut body, &mut cx)));
            assert!(progress.handed.load(Ordering::Relaxed));
        }
        assert_eq!(pieces, [PIECE, PIECE, 100]);
        assert_eq!(progress.pulls.load(Ordering::Relaxed), 3);
        assert!(matches!(
            send.poll_frame(&mut body, &mut cx),
            Poll::Ready(None)
        ));
        assert!(
            !progress.handed.load(Ordering::Relaxed),
            "asked again: nothing waits"
        );
    }
}
