//! Request framing from a client on a public route. Smuggling: HTTP/1.1
//! heads whose body length two parsers could read differently — whatever
//! the edge answers, the upstream (a real HTTP parser, hyper) must see only
//! the request the edge answered for, framed by the edge, and never a
//! second request hidden in the first one's body. And bodies cut off by
//! the client leaving, which are neither the client's bad framing nor the
//! upstream's fault.

mod common;

use bytes::Bytes;
use common::*;
use tokio::io::AsyncWriteExt;

const ATTACKER: &str = "127.0.0.66";

/// A request the edge may only answer `status` to. `smuggled` is a path
/// that must never reach the upstream.
struct Case {
    name: &'static str,
    request: &'static [u8],
    status: &'static str,
    /// The body length the upstream gets, for the cases forwarded.
    forwarded_body: Option<usize>,
}

const CASES: &[Case] = &[
    // Both lengths: the chunked framing wins (RFC 9112 §6.3), Content-Length
    // is dropped, and the connection closes after the answer, so what
    // follows the empty chunked body is never read as a request. (nginx
    // answers 400 instead; HAProxy does what the edge does.)
    Case {
        name: "Content-Length then Transfer-Encoding",
        request: b"POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: h\r\n\r\n",
        status: "200",
        forwarded_body: Some(0),
    },
    Case {
        name: "Transfer-Encoding then Content-Length",
        request: b"POST /a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nContent-Length: 40\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: h\r\n\r\n",
        status: "200",
        forwarded_body: Some(0),
    },
    Case {
        name: "two different Content-Lengths",
        request: b"POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\nContent-Length: 41\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: h\r\n\r\n",
        status: "400",
        forwarded_body: None,
    },
    Case {
        name: "a Content-Length list",
        request: b"POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 5, 5\r\n\r\nhelloGET /smuggled HTTP/1.1\r\nHost: h\r\n\r\n",
        status: "400",
        forwarded_body: None,
    },
    Case {
        name: "an unknown transfer coding",
        request: b"POST /a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: h\r\n\r\n",
        status: "400",
        forwarded_body: None,
    },
    Case {
        name: "chunked not last",
        request: b"POST /a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: h\r\n\r\n",
        status: "400",
        forwarded_body: None,
    },
    Case {
        name: "a second Transfer-Encoding line",
        request: b"POST /a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: h\r\n\r\n",
        status: "400",
        forwarded_body: None,
    },
    Case {
        name: "a space before the colon",
        request: b"POST /a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: h\r\n\r\n",
        status: "400",
        forwarded_body: None,
    },
    Case {
        name: "a folded Transfer-Encoding",
        request: b"POST /a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: h\r\n\r\n",
        status: "400",
        forwarded_body: None,
    },
    Case {
        name: "chunked in HTTP/1.0",
        request: b"POST /a HTTP/1.0\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: h\r\n\r\n",
        status: "400",
        forwarded_body: None,
    },
    Case {
        name: "a chunk size that overflows 64 bits",
        request: b"POST /a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n10000000000000005\r\nhello\r\n0\r\n\r\n",
        status: "400",
        forwarded_body: None,
    },
    Case {
        name: "a 0x chunk size",
        request: b"POST /a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n",
        status: "400",
        forwarded_body: None,
    },
    Case {
        name: "bare LF in chunked framing",
        request: b"POST /a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\n0\n\n",
        status: "400",
        forwarded_body: None,
    },
    Case {
        name: "a NUL in a header value",
        request: b"GET /a HTTP/1.1\r\nHost: h\r\nX-A: a\x00b\r\n\r\n",
        status: "400",
        forwarded_body: None,
    },
    Case {
        name: "a header line without a colon",
        request: b"GET /a HTTP/1.1\r\nHost: h\r\nGET /smuggled HTTP/1.1\r\n\r\n",
        status: "400",
        forwarded_body: None,
    },
    Case {
        name: "a bare CR",
        request: b"GET /a HTTP/1.1\rHost: h\r\n\r\n",
        status: "400",
        forwarded_body: None,
    },
    // Chunk extensions are skipped; trailer fields are not forwarded, so a
    // Content-Length in them cannot re-frame the body upstream.
    Case {
        name: "a chunk extension and a Content-Length trailer",
        request: b"POST /a HTTP/1.1\r\nHost: h\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n0\r\nContent-Length: 99\r\nX-Trailer: t\r\n\r\n",
        status: "200",
        forwarded_body: Some(5),
    },
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smuggled_requests_never_reach_the_upstream() {
    let dir = tempfile::tempdir().unwrap();
    let certs = TestCerts::new(dir.path());
    let upstream = Upstream::start().await;
    let edge = open_edge(edge_config(&certs), &upstream).await;
    let addr = edge.addrs()[0];
    let mut forwarded = Vec::new();
    for case in CASES {
        let answer = raw_exchange(&certs, ATTACKER, addr, case.request, GENEROUS).await;
        assert_eq!(status_of(&answer), case.status, "{}: {answer}", case.name);
        // One answer, then the edge closed the connection (raw_exchange
        // returned before GENEROUS): nothing after it was read as a request.
        assert_eq!(
            answer.matches("HTTP/1.1 ").count(),
            1,
            "{}: {answer}",
            case.name
        );
        if let Some(len) = case.forwarded_body {
            forwarded.push((case.name, len));
        }
    }
    let seen = upstream.seen();
    let got: Vec<_> = seen.iter().map(|s| (s.path.as_str(), s.body_len)).collect();
    let want: Vec<_> = forwarded.iter().map(|&(_, len)| ("/a", len)).collect();
    assert_eq!(got, want, "forwarded: {forwarded:?}");
    for request in &seen {
        assert!(!request.headers.contains_key("transfer-encoding"));
        assert!(!request.headers.contains_key("x-trailer"));
    }
    let metrics = scrape(&edge).await;
    let failed = CASES.iter().filter(|c| c.status == "400").count();
    assert_eq!(
        sample(&metrics, "b24_edge_bad_requests_total{reason=\"head\"}")
            + sample(&metrics, "b24_edge_bad_requests_total{reason=\"body\"}"),
        failed as f64,
        "{metrics}"
    );
    assert!(
        !metrics.contains("b24_edge_upstream_errors_total{"),
        "{metrics}"
    );
    assert!(edge.shutdown().await);
}

/// A client that leaves during its upload — closes its connection in the
/// middle of a declared or chunked body, or resets its h2 stream — is
/// counted as nginx logs it (499, "client closed request"), not as a bad
/// request (its framing was fine so far) nor as an upstream error, and the
/// upstream sees nothing of it. Before, each was a 400 with a
/// `bad_requests_total{reason="body"}`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_leave_mid_body_are_499_not_bad_requests() {
    let dir = tempfile::tempdir().unwrap();
    let certs = TestCerts::new(dir.path());
    let upstream = Upstream::start().await;
    let edge = open_edge(edge_config(&certs), &upstream).await;
    let addr = edge.addrs()[0];

    let cut_off: [&[u8]; 2] = [
        b"POST /echo HTTP/1.1\r\nHost: h\r\nContent-Length: 100\r\n\r\n0123456789",
        b"POST /echo HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\na\r\n0123456789\r\n",
    ];
    for request in cut_off {
        let mut tls = tls_from(&certs, ATTACKER, addr, &[b"http/1.1"])
            .await
            .unwrap();
        tls.write_all(request).await.unwrap();
        tls.flush().await.unwrap();
        // close_notify and FIN: the client is done, mid-body.
        tls.shutdown().await.unwrap();
        assert!(closed_by_edge(&mut tls).await);
    }

    let tls = tls_from(&certs, ATTACKER, addr, &[b"h2"]).await.unwrap();
    let (mut h2, mut connection) = h2::client::handshake(tls).await.unwrap();
    let mut ping_pong = connection.ping_pong().unwrap();
    let connection = tokio::spawn(connection);
    let request = http::Request::post(format!("https://localhost:{}/echo", addr.port()))
        .body(())
        .unwrap();
    let (_response, mut stream) = h2.send_request(request, false).unwrap();
    stream
        .send_data(Bytes::from_static(b"0123456789"), false)
        .unwrap();
    // The PONG comes after the edge has read (and taken) the stream's
    // HEADERS and DATA, so the reset below cuts a body it is reading.
    ping_pong.ping(h2::Ping::opaque()).await.unwrap();
    stream.send_reset(h2::Reason::CANCEL);

    eventually("the three requests are counted as 499", || async {
        sample(
            &scrape(&edge).await,
            "b24_edge_requests_total{route=\"/\",status=\"499\"}",
        ) == 3.0
    })
    .await;
    let metrics = scrape(&edge).await;
    assert_eq!(
        sample(&metrics, "b24_edge_bad_requests_total{reason=\"body\"}"),
        0.0
    );
    assert!(
        !metrics.contains("b24_edge_upstream_errors_total{"),
        "{metrics}"
    );
    assert!(!metrics.contains("status=\"400\""), "{metrics}");
    assert!(upstream.seen().is_empty());
    drop(h2);
    connection.abort();
    assert!(edge.shutdown().await);
}

/// CONNECT (a tunnel to wherever the client names) and the asterisk form
/// (`OPTIONS *`, a question to the server itself) name no resource of a
/// route: 400 (CONNECT over HTTP/1.1 and h2), and the upstream never sees
/// them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tunnels_and_asterisk_requests_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let certs = TestCerts::new(dir.path());
    let upstream = Upstream::start().await;
    let edge = open_edge(edge_config(&certs), &upstream).await;
    let addr = edge.addrs()[0];

    let h1: [&[u8]; 2] = [
        b"CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\n\r\n",
        b"OPTIONS * HTTP/1.1\r\nHost: localhost\r\n\r\n",
    ];
    for request in h1 {
        let answer = raw_exchange(&certs, ATTACKER, addr, request, GENEROUS).await;
        assert_eq!(status_of(&answer), "400", "{answer}");
    }

    let tls = tls_from(&certs, ATTACKER, addr, &[b"h2"]).await.unwrap();
    let (h2, connection) = h2::client::handshake(tls).await.unwrap();
    let connection = tokio::spawn(connection);
    // (An h2 client library cannot send `:path: *` with an authority; the
    // h1 case above stands for the asterisk form.)
    let mut h2 = h2.ready().await.unwrap();
    let request = http::Request::builder()
        .method("CONNECT")
        .uri("evil.example:443")
        .body(())
        .unwrap();
    let (response, _) = h2.send_request(request, true).unwrap();
    assert_eq!(response.await.unwrap().status(), 400);
    assert!(upstream.seen().is_empty());
    drop(h2);
    connection.abort();
    assert!(edge.shutdown().await);
}
