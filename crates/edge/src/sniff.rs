//! Which HTTP a client that offered no ALPN speaks (wrk, old curl, scripts
//! on raw OpenSSL): h2 if it opens with the HTTP/2 preface, HTTP/1.1
//! otherwise, decided from at most the preface's 24 bytes, which are then
//! handed to the chosen server through [`Prefixed`] so that none is lost.
//! Deciding here rather than inside hyper lets such HTTP/1.1 clients be
//! parked like any other ([`crate::park`]).

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

/// What a client without ALPN sends first, when it speaks h2.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Protocol {
    Http1,
    H2,
}

/// Reads until the bytes so far either are the whole h2 preface or cannot
/// be; what was read stays in `io`'s prefix. An error for a client that
/// closed (or failed) before that.
pub(crate) async fn sniff<IO: AsyncRead + Unpin>(
    io: &mut Prefixed<IO>,
) -> std::io::Result<Protocol> {
    let mut seen = [0u8; H2_PREFACE.len()];
    let mut len = 0;
    let protocol = loop {
        let n = io.inner.read(&mut seen[len..]).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        len += n;
        if !H2_PREFACE.starts_with(&seen[..len]) {
            break Protocol::Http1;
        }
        if len == H2_PREFACE.len() {
            break Protocol::H2;
        }
    };
    io.prefix = Bytes::copy_from_slice(&seen[..len]);
    Ok(protocol)
}

/// The `AsyncWrite` methods a stream wrapper passes straight to its
/// `inner` stream; the wrapper writes its own `poll_flush`.
macro_rules! delegate_writes {
    () => {
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

        fn poll_shutdown(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.inner).poll_shutdown(cx)
        }
    };
}
pub(crate) use delegate_writes;

/// A stream whose first reads return `prefix`, then what the stream reads.
pub(crate) struct Prefixed<IO> {
    prefix: Bytes,
    inner: IO,
}

impl<IO> Prefixed<IO> {
    pub(crate) fn new(inner: IO) -> Prefixed<IO> {
        Prefixed {
            prefix: Bytes::new(),
            inner,
        }
    }

    /// Whether bytes are waiting to be read without touching the stream.
    pub(crate) fn has_prefix(&self) -> bool {
        !self.prefix.is_empty()
    }

    pub(crate) fn get_ref(&self) -> &IO {
        &self.inner
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Prefixed<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.prefix.is_empty() {
            return Pin::new(&mut self.inner).poll_read(cx, buf);
        }
        let n = self.prefix.len().min(buf.remaining());
        buf.put_slice(&self.prefix[..n]);
        self.prefix.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Prefixed<IO> {
    delegate_writes!();

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    async fn sniffed(chunks: &[&[u8]]) -> (std::io::Result<Protocol>, Vec<u8>) {
        let (mut client, server) = tokio::io::duplex(1024);
        let mut server = Prefixed::new(server);
        for chunk in chunks {
            client.write_all(chunk).await.unwrap();
        }
        drop(client);
        let protocol = sniff(&mut server).await;
        let mut everything = Vec::new();
        server.read_to_end(&mut everything).await.unwrap();
        (protocol, everything)
    }

    #[tokio::test]
    async fn the_h2_preface_in_pieces_is_h2_and_every_byte_is_kept() {
        let (protocol, bytes) =
            sniffed(&[b"PRI * HT", b"TP/2.0\r\n\r\nSM\r\n\r\n", b"\x00\x00"]).await;
        assert_eq!(protocol.unwrap(), Protocol::H2);
        assert_eq!(bytes, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00");
    }

    #[tokio::test]
    async fn anything_else_is_http1_from_its_first_differing_byte() {
        let (protocol, bytes) = sniffed(&[b"P", b"OST /hook HTTP/1.1\r\n"]).await;
        assert_eq!(protocol.unwrap(), Protocol::Http1);
        assert_eq!(bytes, b"POST /hook HTTP/1.1\r\n");
        let (protocol, bytes) = sniffed(&[b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"]).await;
        assert_eq!(protocol.unwrap(), Protocol::Http1);
        assert_eq!(bytes, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    }

    #[tokio::test]
    async fn a_client_that_closes_before_deciding_is_an_error() {
        assert!(sniffed(&[]).await.0.is_err());
        assert!(sniffed(&[b"PRI * HTTP/2"]).await.0.is_err());
    }
}
