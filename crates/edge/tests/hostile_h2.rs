//! HTTP/2 frame floods from a client the edge must let through TLS (a
//! public route admits everyone), while a listed client (127.0.0.2, a
//! "Bitrix24 node") keeps measuring that it is served: rapid reset
//! (CVE-2023-44487), CONTINUATION without end (CVE-2024-27316), empty
//! DATA frames, a zero window increment, and PING and SETTINGS floods.
//! The frames are written by hand, as an attacker would, not by a client
//! library that refuses to send them.

mod common;

use std::net::SocketAddr;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const NODE: &str = "127.0.0.2";
const ATTACKER: &str = "127.0.0.66";

const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const WINDOW_UPDATE: u8 = 0x8;
const CONTINUATION: u8 = 0x9;

const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;

const NO_ERROR: u32 = 0x0;
const PROTOCOL_ERROR: u32 = 0x1;
const CANCEL: u32 = 0x8;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap();
    let mut out = len.to_be_bytes()[1..].to_vec();
    out.extend_from_slice(&[kind, flags]);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// A header field as an HPACK literal without indexing, no Huffman: the
/// form that needs no encoder state.
fn literal(name: &str, value: &str) -> Vec<u8> {
    let mut out = vec![0x00, u8::try_from(name.len()).unwrap()];
    out.extend_from_slice(name.as_bytes());
    out.push(u8::try_from(value.len()).unwrap());
    out.extend_from_slice(value.as_bytes());
    out
}

fn request_block(method: &str, path: &str) -> Vec<u8> {
    [
        literal(":method", method),
        literal(":scheme", "https"),
        literal(":path", path),
        literal(":authority", "localhost"),
    ]
    .concat()
}

/// What the edge did to one attacking connection.
#[derive(Debug)]
struct Outcome {
    /// The error code of the edge's GOAWAY, if it sent one.
    goaway: Option<u32>,
    /// Whether the edge closed the connection (rather than the attacker
    /// giving up at the end of its frames).
    closed_by_edge: bool,
}

impl Outcome {
    /// Cut off for the flood: an error GOAWAY, then the connection closed.
    /// (An idle close would be a GOAWAY with NO_ERROR.)
    fn cut_off(&self) -> bool {
        self.closed_by_edge && self.goaway.is_some_and(|code| code != NO_ERROR)
    }
}

/// Whether [`flood`] waits for the edge to close the connection after the
/// last frame, or only a moment for its answers.
#[derive(Clone, Copy, PartialEq)]
enum Then {
    AwaitClose,
    Leave,
}

/// Opens an h2 connection from the attacker's address, writes the preface
/// and then `frames` as fast as the edge takes them while reading
/// everything it answers, and reports how the connection ended.
async fn flood(
    certs: &TestCerts,
    to: SocketAddr,
    frames: impl Iterator<Item = Vec<u8>>,
    then: Then,
) -> Outcome {
    let tls = tls_from(certs, ATTACKER, to, &[b"h2"]).await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut reader, mut writer) = tokio::io::split(tls);
    // Reading all along, so that a flood the edge answers (PING, SETTINGS)
    // is never stopped by the attacker's own full receive buffer.
    let mut answers = tokio::spawn(async move {
        let mut got = Vec::new();
        let result = tokio::time::timeout(GENEROUS, reader.read_to_end(&mut got)).await;
        (got, matches!(result, Ok(Ok(_))))
    });
    let mut batch = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    batch.extend(frame(SETTINGS, 0, 0, &[]));
    let mut frames = frames.peekable();
    let mut refused = false;
    while frames.peek().is_some() {
        for one in frames.by_ref().take(64) {
            batch.extend(one);
        }
        if writer.write_all(&batch).await.is_err() {
            refused = true;
            break;
        }
        batch.clear();
    }
    let joined = if !refused && then == Then::Leave {
        // The attacker's frames are all out and the edge is expected to be
        // fine with the connection: a moment for its answers, no more.
        let _ = writer.flush().await;
        match tokio::time::timeout(std::time::Duration::from_secs(3), &mut answers).await {
            Ok(joined) => joined,
            Err(_) => {
                answers.abort();
                return Outcome {
                    goaway: None,
                    closed_by_edge: false,
                };
            }
        }
    } else {
        answers.await
    };
    let (got, closed) = joined.unwrap();
    Outcome {
        goaway: goaway_code(&got),
        closed_by_edge: closed,
    }
}

/// The error code of the first GOAWAY among `bytes`, read as frames.
fn goaway_code(mut bytes: &[u8]) -> Option<u32> {
    while bytes.len() >= 9 {
        let len = usize::from(bytes[0]) << 16 | usize::from(bytes[1]) << 8 | usize::from(bytes[2]);
        let Some(payload) = bytes.get(9..9 + len) else {
            break;
        };
        if bytes[3] == GOAWAY && payload.len() >= 8 {
            return Some(u32::from_be_bytes(payload[4..8].try_into().unwrap()));
        }
        bytes = &bytes[9 + len..];
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_frame_floods_are_cut_off_while_a_node_is_served() {
    let dir = tempfile::tempdir().unwrap();
    let certs = TestCerts::new(dir.path());
    let upstream = Upstream::start().await;
    let edge = start_edge(
        &nodes_config(&certs, dir.path(), &[NODE], &upstream)
            // So that only the floods, never an idle close, end connections.
            .server("idle_timeout", "1h")
            .route(EdgeRoute::new("/public/", &upstream.url()).allow(&["any"])),
    )
    .await;
    list_loaded(&edge).await;
    let addr = edge.addrs()[0];
    let probe = ListedProbe::start(&certs, NODE, url(&edge, "/hook"));
    probe.wait_for(2).await;
    let reached_upstream = || {
        upstream
            .seen()
            .iter()
            .filter(|s| s.path.starts_with("/public/"))
            .count()
    };

    // Rapid reset: each stream opened whole and cancelled at once, so that
    // it never counts against the concurrent-stream limit. Every opened
    // stream would be an upstream request.
    let rapid_reset = (0..10_000u32).map(|i| {
        let stream = 2 * i + 1;
        let block = request_block("GET", &format!("/public/reset{i}"));
        [
            frame(HEADERS, END_HEADERS | END_STREAM, stream, &block),
            frame(RST_STREAM, 0, stream, &CANCEL.to_be_bytes()),
        ]
        .concat()
    });
    let outcome = flood(&certs, addr, rapid_reset, Then::AwaitClose).await;
    assert!(outcome.cut_off(), "{outcome:?}");
    let forwarded = reached_upstream();
    assert!(
        forwarded <= 100,
        "{forwarded} of the cancelled streams became upstream requests"
    );
    probe.wait_for(2).await;

    // CONTINUATION without end: a header block that never finishes.
    let header = literal("x-padding", &"p".repeat(100));
    let continuation = std::iter::once(frame(
        HEADERS,
        0,
        1,
        &request_block("GET", "/public/continued"),
    ))
    .chain((0..100_000).map(|_| frame(CONTINUATION, 0, 1, &header)));
    let outcome = flood(&certs, addr, continuation, Then::AwaitClose).await;
    assert!(outcome.cut_off(), "{outcome:?}");
    probe.wait_for(2).await;

    // Empty DATA frames: work for the edge, no progress for the stream.
    let empty_data = std::iter::once(frame(
        HEADERS,
        END_HEADERS,
        1,
        &request_block("POST", "/public/empty"),
    ))
    .chain((0..100_000).map(|_| frame(DATA, 0, 1, &[])));
    let outcome = flood(&certs, addr, empty_data, Then::AwaitClose).await;
    assert!(outcome.cut_off(), "{outcome:?}");
    probe.wait_for(2).await;

    // A zero window increment is a connection error (RFC 9113 §6.9).
    let zero_window = std::iter::once(frame(WINDOW_UPDATE, 0, 0, &0u32.to_be_bytes()));
    let outcome = flood(&certs, addr, zero_window, Then::AwaitClose).await;
    assert!(outcome.closed_by_edge, "{outcome:?}");
    assert_eq!(outcome.goaway, Some(PROTOCOL_ERROR), "{outcome:?}");

    // PING and SETTINGS floods from a client that reads the answers: the
    // edge may answer them (each costs it as little as a request head),
    // but the node is served throughout.
    let pings = (0..20_000u64).map(|i| frame(PING, 0, 0, &i.to_be_bytes()));
    flood(&certs, addr, pings, Then::Leave).await;
    probe.wait_for(2).await;
    let settings = (0..20_000).map(|_| frame(SETTINGS, 0, 0, &[]));
    flood(&certs, addr, settings, Then::Leave).await;
    probe.wait_for(2).await;

    assert_eq!(
        upstream
            .seen()
            .iter()
            .filter(|s| s.path == "/public/continued" || s.path == "/public/empty")
            .count(),
        0,
        "an unfinished request reached the upstream"
    );
    let served = probe.finish().await;
    assert!(served >= 12);
    eventually("every attacking connection is gone", || async {
        sample(&scrape(&edge).await, "b24_edge_open_connections") == 0.0
    })
    .await;
    assert!(edge.shutdown().await);
}
