//! Stage 2 of the request path, the client address: the TCP peer, unless
//! the listener takes it from a trusted proxy — in a PROXY protocol header
//! (v1 or v2) or in X-Forwarded-For (rightmost untrusted hop), one or the
//! other, never both. What anyone else claims is ignored.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use b24_nodes::AddrSet;
use http::HeaderMap;
use ipnet::IpNet;
use tokio::io::{AsyncRead, AsyncReadExt};

/// The peers whose word about the client is believed.
#[derive(Debug, Clone)]
pub struct TrustedProxies {
    set: AddrSet,
    empty: bool,
}

impl TrustedProxies {
    pub fn new(networks: &[IpNet]) -> TrustedProxies {
        TrustedProxies {
            set: AddrSet::from_networks(networks),
            empty: networks.is_empty(),
        }
    }

    #[inline]
    pub fn contains(&self, addr: IpAddr) -> bool {
        !self.empty && self.set.contains(addr)
    }

    /// Who sent a request that reached the edge from `peer`, walking
    /// X-Forwarded-For the way nginx's realip module does (`real_ip_recursive
    /// on`), on the raw bytes: from the right, every entry that is a trusted
    /// proxy is stepped over; the first one that is not is the client. An
    /// entry that is not an address (garbage, non-ASCII) before the client
    /// is found ends the walk with an error — the request cannot be
    /// attributed to anyone, least of all to the proxy. Entries left of the
    /// client are the client's own words and are never read. A trusted peer
    /// that sends no header is itself the client (health checks).
    ///
    /// From an untrusted peer the header is not read at all.
    pub fn forwarded_client(
        &self,
        peer: IpAddr,
        headers: &HeaderMap,
    ) -> Result<ForwardedChain, BadForwardedFor> {
        // Collected right to left, reversed at the end.
        let mut hops = vec![peer];
        if self.contains(peer) {
            'walk: for value in headers.get_all(X_FORWARDED_FOR).iter().rev() {
                for entry in value.as_bytes().rsplit(|b| *b == b',') {
                    let entry = entry.trim_ascii();
                    if entry.is_empty() {
                        continue;
                    }
                    let addr = parse_forwarded_addr(entry).ok_or(BadForwardedFor)?;
                    hops.push(addr);
                    if !self.contains(addr) {
                        break 'walk;
                    }
                }
            }
        }
        hops.reverse();
        Ok(ForwardedChain { hops })
    }
}

const X_FORWARDED_FOR: &str = "x-forwarded-for";

/// An X-Forwarded-For entry that is not an address stood where the client
/// was looked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("X-Forwarded-For has an entry that is not an IP address where the client should be")]
pub struct BadForwardedFor;

/// The part of an X-Forwarded-For chain the edge can vouch for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardedChain {
    /// The client first, then each trusted proxy the request passed, the
    /// peer that reached the edge last.
    hops: Vec<IpAddr>,
}

impl ForwardedChain {
    pub fn client(&self) -> IpAddr {
        self.hops[0]
    }

    /// What the upstream's X-Forwarded-For lists.
    pub fn hops(&self) -> &[IpAddr] {
        &self.hops
    }
}

/// Maps IPv4-mapped IPv6 addresses (from a dual-stack socket) to IPv4.
pub fn canonical(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

/// An X-Forwarded-For entry: an address, possibly with a port
/// (`1.2.3.4:5678`, `[2001:db8::1]:443`), as nginx accepts them.
fn parse_forwarded_addr(entry: &[u8]) -> Option<IpAddr> {
    let entry = std::str::from_utf8(entry).ok()?;
    if let Ok(addr) = entry.parse::<IpAddr>() {
        return Some(canonical(addr));
    }
    entry
        .parse::<SocketAddr>()
        .ok()
        .map(|sa| canonical(sa.ip()))
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProxyHeaderError {
    #[error("the connection does not start with a PROXY protocol header")]
    Missing,
    #[error("malformed PROXY protocol header: {0}")]
    Malformed(&'static str),
    #[error("connection closed while reading the PROXY header")]
    Closed,
}

const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
const V1_MAX: usize = 107;

/// Reads a PROXY protocol header (v1 or v2) from the start of a connection,
/// consuming exactly its bytes. `Ok(None)` means the header carries no
/// client address (v1 `UNKNOWN`, v2 `LOCAL` or a non-IP family): the
/// peer stands.
pub async fn read_proxy_header<S: AsyncRead + Unpin>(
    stream: &mut S,
) -> Result<Option<SocketAddr>, ProxyHeaderError> {
    let mut start = [0u8; 12];
    read_exact(stream, &mut start).await?;
    if start == V2_SIGNATURE {
        let mut fixed = [0u8; 4];
        read_exact(stream, &mut fixed).await?;
        let len = usize::from(u16::from_be_bytes([fixed[2], fixed[3]]));
        let mut rest = vec![0u8; len];
        read_exact(stream, &mut rest).await?;
        return parse_v2(fixed[0], fixed[1], &rest);
    }
    if !start.starts_with(b"PROXY ") {
        return Err(ProxyHeaderError::Missing);
    }
    // v1 is a text line; read it byte by byte so that not one byte of the
    // TLS handshake behind it is consumed.
    let mut line = start.to_vec();
    while !line.ends_with(b"\r\n") {
        if line.len() >= V1_MAX {
            return Err(ProxyHeaderError::Malformed("v1 line longer than 107 bytes"));
        }
        let mut byte = [0u8; 1];
        read_exact(stream, &mut byte).await?;
        line.push(byte[0]);
    }
    parse_v1(&line)
}

async fn read_exact<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut [u8],
) -> Result<(), ProxyHeaderError> {
    stream
        .read_exact(buf)
        .await
        .map(|_| ())
        .map_err(|_| ProxyHeaderError::Closed)
}

/// `PROXY TCP4 src dst sport dport\r\n` (or `TCP6`, or `UNKNOWN ...`).
pub fn parse_v1(line: &[u8]) -> Result<Option<SocketAddr>, ProxyHeaderError> {
    let malformed = ProxyHeaderError::Malformed;
    let text = std::str::from_utf8(line).map_err(|_| malformed("v1 line is not ASCII"))?;
    let text = text
        .strip_suffix("\r\n")
        .ok_or(malformed("v1 line does not end with CRLF"))?;
    let mut parts = text.split(' ');
    if parts.next() != Some("PROXY") {
        return Err(malformed("v1 line does not start with PROXY"));
    }
    let family = parts.next().ok_or(malformed("v1 line has no protocol"))?;
    if family == "UNKNOWN" {
        return Ok(None);
    }
    let fields: Vec<&str> = parts.collect();
    if fields.len() != 4 {
        return Err(malformed("v1 line needs source, destination and two ports"));
    }
    let src: IpAddr = match family {
        "TCP4" => fields[0]
            .parse::<Ipv4Addr>()
            .map(IpAddr::V4)
            .map_err(|_| malformed("v1 TCP4 source is not an IPv4 address"))?,
        "TCP6" => fields[0]
            .parse::<Ipv6Addr>()
            .map(IpAddr::V6)
            .map_err(|_| malformed("v1 TCP6 source is not an IPv6 address"))?,
        _ => return Err(malformed("v1 protocol is not TCP4, TCP6 or UNKNOWN")),
    };
    let port: u16 = fields[2]
        .parse()
        .map_err(|_| malformed("v1 source port is not a number"))?;
    Ok(Some(SocketAddr::new(canonical(src), port)))
}

/// The part of a v2 header after the signature: version/command byte,
/// family/protocol byte, then the address block (`rest`).
pub fn parse_v2(
    version_command: u8,
    family_protocol: u8,
    rest: &[u8],
) -> Result<Option<SocketAddr>, ProxyHeaderError> {
    let malformed = ProxyHeaderError::Malformed;
    if version_command >> 4 != 2 {
        return Err(malformed("v2 version is not 2"));
    }
    match version_command & 0x0f {
        0 => return Ok(None), // LOCAL: a health check from the proxy itself
        1 => {}
        _ => return Err(malformed("v2 command is neither LOCAL nor PROXY")),
    }
    match family_protocol >> 4 {
        1 => {
            if rest.len() < 12 {
                return Err(malformed("v2 IPv4 address block is short"));
            }
            let src = Ipv4Addr::new(rest[0], rest[1], rest[2], rest[3]);
            let port = u16::from_be_bytes([rest[8], rest[9]]);
            Ok(Some(SocketAddr::new(IpAddr::V4(src), port)))
        }
        2 => {
            if rest.len() < 36 {
                return Err(malformed("v2 IPv6 address block is short"));
            }
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&rest[..16]);
            let port = u16::from_be_bytes([rest[32], rest[33]]);
            Ok(Some(SocketAddr::new(
                canonical(IpAddr::V6(Ipv6Addr::from(octets))),
                port,
            )))
        }
        // UNSPEC or AF_UNIX: no IP to take.
        _ => Ok(None),
    }
}

/// Encodes a v2 PROXY header for a TCP connection from `src` to `dst`
/// (tests and tools that play a load balancer).
pub fn encode_v2(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let mut out = V2_SIGNATURE.to_vec();
    out.push(0x21);
    match (src, dst) {
        (SocketAddr::V4(s), SocketAddr::V4(d)) => {
            out.push(0x11);
            out.extend_from_slice(&12u16.to_be_bytes());
            out.extend_from_slice(&s.ip().octets());
            out.extend_from_slice(&d.ip().octets());
            out.extend_from_slice(&s.port().to_be_bytes());
            out.extend_from_slice(&d.port().to_be_bytes());
        }
        _ => {
            let v6 = |a: SocketAddr| match a.ip() {
                IpAddr::V4(v4) => v4.to_ipv6_mapped(),
                IpAddr::V6(v6) => v6,
            };
            out.push(0x21);
            out.extend_from_slice(&36u16.to_be_bytes());
            out.extend_from_slice(&v6(src).octets());
            out.extend_from_slice(&v6(dst).octets());
            out.extend_from_slice(&src.port().to_be_bytes());
            out.extend_from_slice(&dst.port().to_be_bytes());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn client_of(
        trusted: &TrustedProxies,
        peer: &str,
        xff: &[&[u8]],
    ) -> Result<IpAddr, BadForwardedFor> {
        let mut map = HeaderMap::new();
        for value in xff {
            map.append(
                "x-forwarded-for",
                http::HeaderValue::from_bytes(value).unwrap(),
            );
        }
        trusted.forwarded_client(ip(peer), &map).map(|c| c.client())
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_peers() {
        let trusted = TrustedProxies::new(&["10.0.0.0/8".parse().unwrap()]);
        let node = b"195.208.184.200";
        assert_eq!(
            client_of(&trusted, "203.0.113.9", &[node]),
            Ok(ip("203.0.113.9"))
        );
        assert_eq!(
            client_of(&trusted, "10.0.0.1", &[node]),
            Ok(ip("195.208.184.200"))
        );
        // The client prepends a fake hop; the rightmost untrusted one wins.
        assert_eq!(
            client_of(
                &trusted,
                "10.0.0.1",
                &[b"1.1.1.1, 203.0.113.9", b"10.0.0.7"]
            ),
            Ok(ip("203.0.113.9"))
        );
        // Ports, brackets, empty entries and odd spacing are tolerated.
        assert_eq!(
            client_of(&trusted, "10.0.0.1", &[b"[2001:db8::1]:443"]),
            Ok(ip("2001:db8::1"))
        );
        assert_eq!(
            client_of(
                &trusted,
                "10.0.0.1",
                &[b" 203.0.113.9:5000 ,, \t10.0.0.7 ,"]
            ),
            Ok(ip("203.0.113.9"))
        );
        // No header: the peer.
        assert_eq!(client_of(&trusted, "10.0.0.1", &[]), Ok(ip("10.0.0.1")));
        // All entries trusted: the leftmost, like nginx.
        assert_eq!(
            client_of(&trusted, "10.0.0.1", &[b"10.9.9.9, 10.0.0.7"]),
            Ok(ip("10.9.9.9"))
        );
        let nobody = TrustedProxies::new(&[]);
        assert_eq!(client_of(&nobody, "10.0.0.1", &[node]), Ok(ip("10.0.0.1")));
    }

    #[test]
    fn forwarded_for_is_walked_on_raw_bytes_and_garbage_is_refused() {
        let trusted = TrustedProxies::new(&["10.0.0.0/8".parse().unwrap()]);
        // A non-ASCII byte in the client's own part is never read: the
        // client the balancer appended is found (issue 10, item 3).
        assert_eq!(
            client_of(&trusted, "10.0.0.1", &[b"\xff\xfe, 203.0.113.9"]),
            Ok(ip("203.0.113.9"))
        );
        assert_eq!(
            client_of(
                &trusted,
                "10.0.0.1",
                &[b"\xd0\xbf\xd1\x80\xd0\xb8", b"203.0.113.9"]
            ),
            Ok(ip("203.0.113.9"))
        );
        // Garbage where the client should be is an error, never the proxy.
        for garbage in [
            &b"nonsense"[..],
            b"1.1.1.1, nonsense, 10.0.0.7",
            b"\xff",
            b"unknown",
            b"203.0.113.9\xff",
            b"1.2.3.4.5",
        ] {
            assert_eq!(
                client_of(&trusted, "10.0.0.1", &[garbage]),
                Err(BadForwardedFor),
                "{garbage:?}"
            );
        }
        // The chain the upstream gets: client, trusted hops, peer.
        let mut map = HeaderMap::new();
        map.append(
            "x-forwarded-for",
            "6.6.6.6, 203.0.113.9, 10.0.0.7".parse().unwrap(),
        );
        let chain = trusted.forwarded_client(ip("10.0.0.1"), &map).unwrap();
        assert_eq!(
            chain.hops(),
            [ip("203.0.113.9"), ip("10.0.0.7"), ip("10.0.0.1")]
        );
    }

    #[test]
    fn proxy_v1() {
        let parsed = parse_v1(b"PROXY TCP4 192.0.2.1 192.0.2.2 5555 443\r\n").unwrap();
        assert_eq!(parsed, Some("192.0.2.1:5555".parse().unwrap()));
        let parsed = parse_v1(b"PROXY TCP6 2001:db8::1 2001:db8::2 5555 443\r\n").unwrap();
        assert_eq!(parsed, Some("[2001:db8::1]:5555".parse().unwrap()));
        assert_eq!(parse_v1(b"PROXY UNKNOWN\r\n").unwrap(), None);
        assert!(parse_v1(b"PROXY TCP4 192.0.2.1 192.0.2.2 5555\r\n").is_err());
        assert!(parse_v1(b"PROXY TCP4 2001:db8::1 192.0.2.2 5555 443\r\n").is_err());
        assert!(parse_v1(b"PROXY UDP4 192.0.2.1 192.0.2.2 5555 443\r\n").is_err());
    }

    #[test]
    fn proxy_v2_round_trip() {
        for (src, dst) in [
            ("192.0.2.1:5555", "192.0.2.2:443"),
            ("[2001:db8::1]:5555", "[2001:db8::2]:443"),
        ] {
            let (src, dst): (SocketAddr, SocketAddr) = (src.parse().unwrap(), dst.parse().unwrap());
            let bytes = encode_v2(src, dst);
            assert_eq!(bytes[..12], V2_SIGNATURE);
            assert_eq!(
                parse_v2(bytes[12], bytes[13], &bytes[16..]).unwrap(),
                Some(src)
            );
        }
        assert_eq!(parse_v2(0x20, 0x00, &[]).unwrap(), None);
        assert!(parse_v2(0x21, 0x11, &[1, 2, 3]).is_err());
        assert!(parse_v2(0x11, 0x11, &[0; 12]).is_err());
    }

    #[tokio::test]
    async fn reads_exactly_the_header() {
        let mut input: &[u8] = b"PROXY TCP4 192.0.2.1 192.0.2.2 5555 443\r\n\x16\x03\x01";
        let got = read_proxy_header(&mut input).await.unwrap();
        assert_eq!(got, Some("192.0.2.1:5555".parse().unwrap()));
        assert_eq!(input, b"\x16\x03\x01");
        let mut v2 = encode_v2(
            "192.0.2.1:5555".parse().unwrap(),
            "192.0.2.2:443".parse().unwrap(),
        );
        v2.extend_from_slice(b"\x16\x03\x01");
        let mut input: &[u8] = &v2;
        assert!(read_proxy_header(&mut input).await.unwrap().is_some());
        assert_eq!(input, b"\x16\x03\x01");
        let mut tls_first: &[u8] = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\x00\x00";
        assert_eq!(
            read_proxy_header(&mut tls_first).await,
            Err(ProxyHeaderError::Missing)
        );
        let mut endless = vec![b'P', b'R', b'O', b'X', b'Y', b' '];
        endless.extend(std::iter::repeat_n(b'1', 200));
        let mut input: &[u8] = &endless;
        assert!(matches!(
            read_proxy_header(&mut input).await,
            Err(ProxyHeaderError::Malformed(_))
        ));
    }
}
