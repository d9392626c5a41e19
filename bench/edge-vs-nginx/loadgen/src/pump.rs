//! `edge-loadgen pump`: the floor under any proxy built on tokio, rustls
//! and hyper, as the edge is.
//!
//! - HTTP/1.1 (by ALPN, or none): it terminates TLS with the edge's own
//!   configuration (`b24_edge::tls::server_config`), opens one TCP connection upstream
//!   per client connection and copies bytes both ways. It parses no HTTP,
//!   admits everyone, adds no header and keeps no timer: what the edge costs
//!   above it is the edge's HTTP work; what it costs above nginx is tokio +
//!   rustls + the kernel, which no HTTP core on this stack can undo.
//! - HTTP/2: hyper's HTTP/2 server, with the edge's settings, answers every
//!   request itself with the upstream's body. No proxy on hyper's HTTP/2
//!   can hold an idle connection in less memory. (Its throughput is no
//!   floor for a proxy's: it does not proxy.)
//!
//! Like the edge, it runs one single-threaded runtime per worker thread;
//! the workers share one listening socket (as nginx's do by default).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use b24_edge::tls::{CertStore, server_config};
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

pub struct Options {
    pub listen: SocketAddr,
    pub upstream: SocketAddr,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub workers: usize,
}

/// Serves until the process is killed.
pub fn run(options: Options) -> anyhow::Result<()> {
    let store = CertStore::open(&options.cert, &options.key)
        .context("cannot load the pump's certificate and key")?;
    let acceptor = TlsAcceptor::from(server_config(Arc::new(store))?);
    let listener = std::net::TcpListener::bind(options.listen)
        .with_context(|| format!("cannot listen on {}", options.listen))?;
    listener.set_nonblocking(true)?;
    let mut threads = Vec::new();
    for _ in 0..options.workers.max(1) {
        let listener = listener.try_clone()?;
        let acceptor = acceptor.clone();
        let upstream = options.upstream;
        threads.push(std::thread::spawn(move || -> anyhow::Result<()> {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_io()
                .build()?;
            runtime.block_on(async move {
                let listener = TcpListener::from_std(listener)?;
                loop {
                    let Ok((client, _)) = listener.accept().await else {
                        continue;
                    };
                    tokio::spawn(serve(client, acceptor.clone(), upstream));
                }
            })
        }));
    }
    for thread in threads {
        thread
            .join()
            .map_err(|_| anyhow::anyhow!("a pump worker panicked"))??;
    }
    Ok(())
}

async fn serve(client: TcpStream, acceptor: TlsAcceptor, upstream: SocketAddr) {
    let _ = client.set_nodelay(true);
    let Ok(mut tls) = acceptor.accept(client).await else {
        return;
    };
    if tls.get_ref().1.alpn_protocol() == Some(b"h2") {
        let answer = |_: Request<hyper::body::Incoming>| async {
            Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from_static(
                b"ok from upstream\n",
            ))))
        };
        let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .max_concurrent_streams(250)
            .max_header_list_size(64 * 1024)
            .serve_connection(TokioIo::new(tls), hyper::service::service_fn(answer))
            .await;
        return;
    }
    let Ok(mut backend) = TcpStream::connect(upstream).await else {
        return;
    };
    let _ = backend.set_nodelay(true);
    let _ = tokio::io::copy_bidirectional(&mut tls, &mut backend).await;
}
