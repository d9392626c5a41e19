//! The serving threads. Like nginx's workers, each thread runs its own
//! single-threaded runtime with its own listening sockets (SO_REUSEPORT, so
//! the kernel spreads connections between them) and its own pool of
//! upstream connections: a request is handled start to finish on one
//! thread, with no cross-thread wake-ups on the hot path.

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::warn;

use crate::accept::accept_loop;
use crate::config::ClientIpMode;
use crate::connection::ConnContext;
use crate::forward::Forwarder;
use crate::slots::ConnectionSlots;
use crate::state::EdgeState;

/// What a worker thread is given.
pub(crate) struct WorkerSetup {
    pub state: Arc<EdgeState>,
    pub forwarder: Forwarder,
    pub acceptor: TlsAcceptor,
    /// Its own socket for each listener, with the listener's mode.
    pub listeners: Vec<(std::net::TcpListener, ClientIpMode)>,
    pub slots: Arc<ConnectionSlots>,
    pub stop: CancellationToken,
    /// Sends whether every connection finished within the shutdown timeout.
    pub done: oneshot::Sender<bool>,
}

/// Starts one worker thread. It serves until `stop` is cancelled, then
/// lets its connections finish and reports through `done`.
pub(crate) fn spawn(index: usize, setup: WorkerSetup) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name(format!("b24-edge-worker-{index}"))
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(e) => {
                    warn!(error = %e, "cannot start a worker runtime");
                    let _ = setup.done.send(false);
                    return;
                }
            };
            runtime.block_on(run(setup));
            // Dropping the runtime cancels what is left at the timeout.
        })
        .map(|_| ())
}

async fn run(setup: WorkerSetup) {
    let WorkerSetup {
        state,
        forwarder,
        acceptor,
        listeners,
        slots,
        stop,
        done,
    } = setup;
    let conn = ConnContext::new(state.clone(), forwarder, acceptor, slots, stop);
    let tasks = TaskTracker::new();
    let mut loops = Vec::new();
    for (listener, mode) in listeners {
        let listener = match TcpListener::from_std(listener) {
            Ok(listener) => listener,
            Err(e) => {
                warn!(error = %e, "cannot register a listener");
                continue;
            }
        };
        loops.push(accept_loop(listener, mode, &conn, &tasks));
    }
    futures_util::future::join_all(loops).await;
    // Each connection saw the same cancellation: idle ones are closing
    // now, busy ones once their requests end.
    tasks.close();
    let drained = tokio::time::timeout(state.limits.shutdown_timeout, tasks.wait())
        .await
        .is_ok();
    let _ = done.send(drained);
}
