//! Stage 1 of the request path, accepting: the listening sockets (one per
//! worker and address, SO_REUSEPORT) and the loop that takes each new TCP
//! connection, gives it a connection slot and hands it to
//! [`crate::connection`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::connection::{self, ConnContext};

/// Binds a listening socket that other workers may bind too.
pub(crate) fn bind_shared(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(true)?;
    socket.bind(addr)?;
    // `listen` registers with the current runtime; hand the socket over as
    // a plain one so that the worker's runtime can register it instead.
    socket.listen(1024)?.into_std()
}

/// Accepts until `stop` is cancelled.
pub(crate) async fn accept_loop(
    listener: TcpListener,
    conn: &ConnContext,
    permits: &Arc<Semaphore>,
    graceful: &GracefulShutdown,
    stop: CancellationToken,
) {
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: pause, don't spin.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.cancelled() => return,
        };
        // Over the limit, this worker holds the one connection it accepted
        // until any worker frees a slot, and accepts nothing more meanwhile:
        // further clients wait in the kernel's backlog. (Waiting for the
        // slot before accepting would strand clients queued on the socket
        // of a worker that is not the next to get a slot.)
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
            _ = stop.cancelled() => return,
        };
        let watcher = graceful.watcher();
        tokio::spawn(connection::serve(
            conn.clone(),
            stream,
            peer,
            watcher,
            permit,
        ));
    }
}
