//! The pool against real upstreams on loopback: a hyper server that counts
//! its connections, and raw sockets for the upstreams that misbehave.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use super::*;
use crate::body::{ForwardBody, UpstreamBody};
use crate::config::RouteConfig;
use crate::metrics::Metrics;

/// An upstream that answers `/ok` with "ok", `/close` with
/// `Connection: close`, `/big` with 1 MiB, and `/hold` once a permit is
/// added to its gate.
struct TestUpstream {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    open: Arc<AtomicUsize>,
    requests: Arc<AtomicUsize>,
    gate: Arc<Semaphore>,
    task: tokio::task::JoinHandle<()>,
}

impl TestUpstream {
    async fn start() -> TestUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let open = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(AtomicUsize::new(0));
        let gate = Arc::new(Semaphore::new(0));
        let (a, o, r, g) = (
            accepted.clone(),
            open.clone(),
            requests.clone(),
            gate.clone(),
        );
        let task = tokio::spawn(async move {
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                a.fetch_add(1, Ordering::SeqCst);
                o.fetch_add(1, Ordering::SeqCst);
                let (o, r, g) = (o.clone(), r.clone(), g.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let (r, g) = (r.clone(), g.clone());
                        async move {
                            r.fetch_add(1, Ordering::SeqCst);
                            let mut answer = Response::builder();
                            let body = match req.uri().path() {
                                "/close" => {
                                    answer = answer.header("connection", "close");
                                    Bytes::from_static(b"bye")
                                }
                                "/big" => Bytes::from(vec![b'x'; 1 << 20]),
                                "/204" => {
                                    answer = answer.status(StatusCode::NO_CONTENT);
                                    Bytes::new()
                                }
                                "/304" => {
                                    answer = answer.status(StatusCode::NOT_MODIFIED);
                                    Bytes::new()
                                }
                                "/hold" => {
                                    g.acquire().await.unwrap().forget();
                                    Bytes::from_static(b"held")
                                }
                                _ => Bytes::from_static(b"ok"),
                            };
                            Ok::<_, Infallible>(answer.body(Full::new(body)).unwrap())
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), service)
                        .await;
                    o.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        TestUpstream {
            addr,
            accepted,
            open,
            requests,
            gate,
            task,
        }
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    fn open(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }
}

impl Drop for TestUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn target(upstream: &str, ca_file: Option<std::path::PathBuf>) -> UpstreamTarget {
    UpstreamTarget::new(&RouteConfig {
        prefix: "/".into(),
        label: "/".into(),
        upstream: upstream.parse().unwrap(),
        ca_file,
        allow: Vec::new(),
    })
}

fn pool_for(addr: SocketAddr) -> UpstreamPool {
    UpstreamPool::new(
        &target(&format!("http://{addr}"), None),
        Duration::from_secs(2),
    )
    .unwrap()
}

fn get(path: &str) -> Request<ForwardBody> {
    Request::get(path)
        .header("host", "upstream.test")
        .body(ForwardBody::Full(None))
        .unwrap()
}

/// Sends `path` and reads the answer whole through the body the edge
/// gives its clients, which hands the connection back at its end.
async fn fetch(pool: &UpstreamPool, path: &str) -> (StatusCode, Bytes) {
    exchange(pool, get(path)).await
}

async fn exchange(pool: &UpstreamPool, request: Request<ForwardBody>) -> (StatusCode, Bytes) {
    let (response, lease) = pool.send(request).await.unwrap();
    let (parts, body) = response.into_parts();
    let metrics = Arc::new(Metrics::new());
    let label = metrics.route("/").label().clone();
    let body = UpstreamBody::new(body, lease, Duration::from_secs(5), metrics, label);
    // As hyper's server does: a body that says it has ended is not polled.
    if http_body::Body::is_end_stream(&body) {
        return (parts.status, Bytes::new());
    }
    (parts.status, body.collect().await.unwrap().to_bytes())
}

/// For the raw upstreams below: reads one request head (no body).
async fn read_head(tcp: &mut tokio::net::TcpStream) {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tcp.read(&mut buf).await.unwrap();
        assert!(n > 0, "the request head was cut off");
        head.extend_from_slice(&buf[..n]);
    }
}

async fn until(what: &str, mut done: impl FnMut() -> bool) {
    for _ in 0..500 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{what} did not happen within 5 s");
}

#[tokio::test]
async fn sequential_requests_share_one_connection() {
    let upstream = TestUpstream::start().await;
    let pool = pool_for(upstream.addr);
    for _ in 0..5 {
        assert_eq!(fetch(&pool, "/ok").await, (StatusCode::OK, "ok".into()));
    }
    assert_eq!(upstream.accepted(), 1, "five requests, one connection");
    assert_eq!(pool.idle_count(), 1);
}

/// Answers without a body may never have their body polled by the server
/// sending them on: their connection goes back at once.
#[tokio::test]
async fn answers_without_a_body_give_their_connection_back() {
    let upstream = TestUpstream::start().await;
    let pool = pool_for(upstream.addr);
    let head = Request::head("/ok")
        .header("host", "upstream.test")
        .body(ForwardBody::Full(None))
        .unwrap();
    assert_eq!(exchange(&pool, head).await, (StatusCode::OK, Bytes::new()));
    assert_eq!(pool.idle_count(), 1);
    assert_eq!(fetch(&pool, "/204").await.0, StatusCode::NO_CONTENT);
    assert_eq!(fetch(&pool, "/304").await.0, StatusCode::NOT_MODIFIED);
    let upload = Request::post("/ok")
        .header("host", "upstream.test")
        .header("content-length", "12")
        .body(ForwardBody::full(Bytes::from("сделка")))
        .unwrap();
    assert_eq!(exchange(&pool, upload).await, (StatusCode::OK, "ok".into()));
    assert_eq!(fetch(&pool, "/ok").await, (StatusCode::OK, "ok".into()));
    assert_eq!(upstream.accepted(), 1, "one connection for all five");
}

#[tokio::test]
async fn a_response_left_unread_is_not_reused_and_its_connection_closes() {
    let upstream = TestUpstream::start().await;
    let pool = pool_for(upstream.addr);
    let (response, lease) = pool.send(get("/big")).await.unwrap();
    let mut body = response.into_body();
    let first = body.frame().await.unwrap().unwrap();
    assert!(first.data_ref().is_some_and(|d| !d.is_empty()));
    drop((body, lease));
    // The next request must not land on a connection with 1 MiB of an
    // old answer still in it.
    assert_eq!(fetch(&pool, "/ok").await, (StatusCode::OK, "ok".into()));
    assert_eq!(upstream.accepted(), 2);
    until("the abandoned connection closing", || upstream.open() == 1).await;
}

#[tokio::test]
async fn connection_close_answers_are_not_pooled() {
    let upstream = TestUpstream::start().await;
    let pool = pool_for(upstream.addr);
    assert_eq!(fetch(&pool, "/close").await, (StatusCode::OK, "bye".into()));
    until("the upstream's close", || upstream.open() == 0).await;
    assert_eq!(fetch(&pool, "/ok").await, (StatusCode::OK, "ok".into()));
    assert_eq!(upstream.accepted(), 2);
}

/// Apache closes an idle keep-alive connection after 5 s: the pool must
/// not hand out the dead connection, and no request may fail for it.
#[tokio::test]
async fn a_connection_the_upstream_closed_while_idle_is_not_used() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let mut served = 0;
        loop {
            let (mut tcp, _) = listener.accept().await.unwrap();
            read_head(&mut tcp).await;
            served += 1;
            let answer = format!("HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n{served}");
            tcp.write_all(answer.as_bytes()).await.unwrap();
            // Keep-alive as far as the client knows, then an idle close.
            tokio::time::sleep(Duration::from_millis(50)).await;
            drop(tcp);
        }
    });
    let pool = pool_for(addr);
    assert_eq!(fetch(&pool, "/").await.1, "1");
    assert_eq!(pool.idle_count(), 1);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(fetch(&pool, "/").await.1, "2", "served on a new connection");
    server.abort();
}

#[tokio::test]
async fn idle_connections_are_capped_and_closed_after_their_timeout() {
    let upstream = TestUpstream::start().await;
    let pool = UpstreamPool::with_idle_timeout(
        &target(&format!("http://{}", upstream.addr), None),
        Duration::from_secs(2),
        Duration::from_millis(400),
    )
    .unwrap();
    let pool = Arc::new(pool);
    let concurrent = MAX_IDLE + 5;
    let held: Vec<_> = (0..concurrent)
        .map(|_| {
            let pool = pool.clone();
            tokio::spawn(async move { fetch(&pool, "/hold").await })
        })
        .collect();
    until("every held request reaching the upstream", || {
        upstream.requests.load(Ordering::SeqCst) == concurrent
    })
    .await;
    upstream.gate.add_permits(concurrent);
    for answer in held {
        assert_eq!(answer.await.unwrap().1, "held");
    }
    assert_eq!(upstream.accepted(), concurrent);
    assert_eq!(
        pool.idle_count(),
        MAX_IDLE,
        "the least recently used closed"
    );
    until("the surplus closing at the upstream", || {
        upstream.open() == MAX_IDLE
    })
    .await;
    // No request comes: the pool's own timer closes them all.
    until("the idle timeout", || pool.idle_count() == 0).await;
    until("the upstream seeing them close", || upstream.open() == 0).await;
    assert_eq!(fetch(&pool, "/ok").await.1, "ok");
}

#[tokio::test]
async fn refused_connections_are_connect_errors() {
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = closed.local_addr().unwrap();
    drop(closed);
    let pool = pool_for(addr);
    match pool.send(get("/")).await {
        Err(ExchangeError::Connect(ConnectError::Tcp { addr: to, .. })) => assert_eq!(to, addr),
        other => panic!("expected a refused connection, got {other:?}"),
    }
}

/// An `https` upstream that accepts TCP and never answers the TLS
/// handshake is given up at `upstream_connect_timeout`, as nginx does.
#[tokio::test]
async fn a_silent_tls_upstream_is_given_up_at_the_connect_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let ca = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca.cert.pem()).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let silent = tokio::spawn(async move {
        let mut held = Vec::new();
        loop {
            held.push(listener.accept().await.unwrap().0);
        }
    });
    let pool = UpstreamPool::new(
        &target(&format!("https://{addr}"), Some(ca_file)),
        Duration::from_millis(300),
    )
    .unwrap();
    match pool.send(get("/")).await {
        Err(ExchangeError::Connect(ConnectError::TimedOut(t))) => {
            assert_eq!(t, Duration::from_millis(300));
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
    silent.abort();
}

#[test]
fn a_ca_file_without_certificates_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("empty.pem");
    std::fs::write(&ca_file, "not a certificate\n").unwrap();
    let err = UpstreamPool::new(
        &target("https://127.0.0.1:8443", Some(ca_file)),
        Duration::from_secs(1),
    )
    .unwrap_err();
    assert!(err.to_string().contains("no PEM certificate"), "{err}");
}

/// An upstream (or a desynchronised backend behind it) that sends more
/// than its response's length: the surplus is never delivered as the next
/// request's answer, and that connection is not reused.
#[tokio::test]
async fn bytes_after_a_response_never_answer_the_next_request() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let mut connections = 0;
        let mut open = Vec::new();
        loop {
            let (mut tcp, _) = listener.accept().await.unwrap();
            connections += 1;
            read_head(&mut tcp).await;
            let answer = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n{connections}\
                 HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nsmuggled"
            );
            tcp.write_all(answer.as_bytes()).await.unwrap();
            open.push(tcp);
        }
    });
    let pool = pool_for(addr);
    assert_eq!(fetch(&pool, "/").await.1, "1");
    assert_eq!(fetch(&pool, "/").await.1, "2", "a new connection answered");
    assert_eq!(fetch(&pool, "/").await.1, "3");
    server.abort();
}
