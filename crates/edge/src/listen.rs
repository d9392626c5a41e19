//! Binding the listening sockets: one per worker and address, with
//! SO_REUSEPORT so the kernel spreads connections across the workers —
//! and the guard that keeps a second b24-edge off an address already served.
//!
//! SO_REUSEPORT lets any process of the same user bind a port that is
//! already bound with it, and the kernel then splits new connections
//! between the two processes, silently. nginx and HAProxy avoid that by
//! binding once in a master process; here two checks run before binding:
//! 1. an *instance lock*: an abstract Unix socket named after the address
//!    (`@b24-edge/listen/0.0.0.0:443`), which the kernel lets one process
//!    hold at a time and frees when it exits, even after `kill -9`; it
//!    makes two starts at the same moment safe;
//! 2. a *probe*: a bind of the address without SO_REUSEPORT, which fails
//!    while anything listens there — another b24-edge on an overlapping
//!    address (`0.0.0.0:443` and `127.0.0.1:443`), an older one without
//!    the lock, or another program using SO_REUSEPORT.

use std::net::SocketAddr;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::UnixListener;

use tokio::net::TcpSocket;

/// Why an address could not be bound.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error(
        "another b24-edge is already serving it; stop that one first (two would split the connections between them)"
    )]
    AlreadyServed,
    #[error(
        "the address is in use by another process (with SO_REUSEPORT the kernel would split connections between the two); stop it first"
    )]
    InUse,
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Held while the edge serves an address; dropping it releases the lock.
#[derive(Debug)]
pub(crate) struct InstanceLock(#[allow(dead_code)] UnixListener);

/// Takes the instance lock of `addr` and, with `probe`, checks that nothing
/// listens there yet (call it before binding any of the edge's own
/// sockets; an address with port 0 needs no probe, the kernel picks a free
/// port).
pub(crate) fn claim(addr: SocketAddr, probe_first: bool) -> Result<InstanceLock, ListenError> {
    let name = format!("b24-edge/listen/{addr}");
    let abstract_addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
    let lock = UnixListener::bind_addr(&abstract_addr).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AddrInUse {
            ListenError::AlreadyServed
        } else {
            ListenError::Io(e)
        }
    })?;
    if probe_first {
        probe(addr)?;
    }
    Ok(InstanceLock(lock))
}

fn new_socket(addr: SocketAddr) -> std::io::Result<TcpSocket> {
    if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
}

/// Binds `addr` without SO_REUSEPORT and lets it go: the bind fails while
/// any socket listens on the address (or on a wildcard covering it).
fn probe(addr: SocketAddr) -> Result<(), ListenError> {
    let socket = new_socket(addr)?;
    socket.set_reuseaddr(true)?;
    match socket.bind(addr) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => Err(ListenError::InUse),
        Err(e) => Err(ListenError::Io(e)),
    }
}

/// Binds a listening socket that the other workers bind too.
pub(crate) fn bind_shared(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let socket = new_socket(addr)?;
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(true)?;
    socket.bind(addr)?;
    // `listen` registers with the current runtime; hand the socket over as
    // a plain one so that the worker's runtime can register it instead.
    socket.listen(1024)?.into_std()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_served_address_cannot_be_claimed_twice() {
        let first = bind_shared("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = first.local_addr().unwrap();
        let lock = claim(addr, false).unwrap();
        assert!(matches!(claim(addr, true), Err(ListenError::AlreadyServed)));
        // Without the lock (another program, an overlapping address), the
        // probe still sees the listener.
        drop(lock);
        assert!(matches!(claim(addr, true), Err(ListenError::InUse)));
        drop(first);
        assert!(claim(addr, true).is_ok());
    }
}
