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
//! response body ([`crate::connection::Tracked`]) notes in it when it
//! hands hyper a chunk and when hyper asks for the next one. When a chunk
//! was handed and hyper did not ask again for `send_timeout` (the chunk
//! is waiting for window), the task is dropped: h2 resets the stream
//! (RST_STREAM CANCEL), the upstream response is dropped with its
//! connection, and the connection's other streams carry on. A body that
//! waits for its upstream is not the client's fault and is not timed here
//! (the upstream body timeout is).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

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
