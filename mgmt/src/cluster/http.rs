//! The HTTP/1.1 side of the etcd client: endpoints, connecting with a
//! timeout, one POST per connection, and an incremental response reader.
//!
//! Contract:
//! * Requests carry `Content-Length` and `Connection: close`; responses may
//!   use `Content-Length`, chunked transfer encoding (with trailers, as
//!   grpc-gateway sends them) or end at close.
//! * [`HttpReader`] keeps its state across reads, so a read that times out
//!   can simply be repeated: the watch polls with short read timeouts.
//! * Bounded: a response head of at most 16 KiB, a body of at most
//!   [`MAX_BODY`] bytes; anything else is an `InvalidData` error.

use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::etcd::{Config, EtcdError, Result};

/// Largest response body accepted from etcd (a range of the whole lab fits).
pub const MAX_BODY: usize = 256 << 20;
/// Longest status line plus headers accepted.
const MAX_HEAD: usize = 16 * 1024;

/// One etcd endpoint.
#[derive(Clone, Debug)]
pub(super) struct Endpoint {
    /// As given, normalised to `http://host:port`.
    pub(super) url: String,
    /// `host:port` for connecting and the Host header.
    pub(super) authority: String,
}

pub(super) fn parse_endpoint(raw: &str) -> Result<Endpoint> {
    let bad = |reason| EtcdError::BadEndpoint {
        value: raw.to_owned(),
        reason,
    };
    if raw.is_empty() {
        return Err(bad("empty endpoint"));
    }
    if raw.starts_with("https://") {
        return Err(bad(
            "https is not supported (plain http on a trusted underlay)",
        ));
    }
    let rest = raw.strip_prefix("http://").unwrap_or(raw);
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.contains('/') || authority.contains('@') || authority.contains("://") {
        return Err(bad("expected http://HOST:PORT"));
    }
    let port_ok = authority
        .rsplit_once(':')
        .and_then(|(host, port)| (!host.is_empty()).then_some(port))
        .is_some_and(|p| p.parse::<u16>().is_ok_and(|p| p != 0));
    if !port_ok {
        return Err(bad("expected http://HOST:PORT with a port"));
    }
    Ok(Endpoint {
        url: format!("http://{authority}"),
        authority: authority.to_owned(),
    })
}

pub(super) fn connect(ep: &Endpoint, cfg: &Config) -> io::Result<TcpStream> {
    let addrs: Vec<SocketAddr> = ep.authority.to_socket_addrs()?.collect();
    let mut last = io::Error::new(io::ErrorKind::NotFound, "no address");
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, cfg.connect_timeout) {
            Ok(s) => {
                s.set_nodelay(true)?;
                return Ok(s);
            }
            Err(e) => last = e,
        }
    }
    Err(last)
}

pub(super) fn send_request(
    stream: &mut TcpStream,
    ep: &Endpoint,
    path: &str,
    body: &str,
    deadline: Instant,
) -> io::Result<()> {
    stream.set_write_timeout(Some(remaining(deadline)?))?;
    let mut req = String::with_capacity(body.len() + 160);
    let _ = write!(
        req,
        "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nAccept: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        ep.authority,
        body.len()
    );
    stream.write_all(req.as_bytes())
}

pub(super) fn remaining(deadline: Instant) -> io::Result<Duration> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        Err(io::Error::new(io::ErrorKind::TimedOut, "no answer in time"))
    } else {
        Ok(left)
    }
}

/// Read a whole response: status and JSON body.
pub(super) fn read_unary(stream: &mut TcpStream, deadline: Instant) -> io::Result<(u16, Value)> {
    let mut r = HttpReader::new();
    let status = loop {
        stream.set_read_timeout(Some(remaining(deadline)?))?;
        if let Some(status) = r.read_head(stream)? {
            break status;
        }
    };
    let mut body = Vec::new();
    loop {
        stream.set_read_timeout(Some(remaining(deadline)?))?;
        if r.read_body(stream, &mut body)? {
            break;
        }
    }
    let v = if body.iter().all(u8::is_ascii_whitespace) {
        Value::Null
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            io::Error::new(io::ErrorKind::InvalidData, format!("body is not JSON: {e}"))
        })?
    };
    Ok((status, v))
}

/// How the body is delimited.
#[derive(Debug)]
enum Framing {
    Length(usize),
    /// In a chunk header (`size\r\n`).
    ChunkSize,
    /// Inside a chunk, this many bytes left.
    ChunkData(usize),
    /// After a chunk's data: expecting `\r\n`.
    ChunkEnd,
    /// After the last chunk: trailers until an empty line.
    Trailers,
    UntilClose,
    Done,
}

/// An incremental HTTP/1.1 response reader: every read may time out and be
/// called again without losing state (the watch polls with short timeouts).
pub(super) struct HttpReader {
    /// Raw bytes read and not yet consumed.
    buf: Vec<u8>,
    framing: Option<Framing>,
    body_len: usize,
    eof: bool,
}

impl HttpReader {
    pub(super) fn new() -> HttpReader {
        HttpReader {
            buf: Vec::new(),
            framing: None,
            body_len: 0,
            eof: false,
        }
    }

    /// Read once from `stream` into `buf`.
    fn fill(&mut self, stream: &mut TcpStream) -> io::Result<()> {
        let mut tmp = [0u8; 16 * 1024];
        let n = stream.read(&mut tmp)?;
        if n == 0 {
            self.eof = true;
        }
        self.buf.extend_from_slice(&tmp[..n]);
        Ok(())
    }

    /// Parse the status line and headers, reading if needed. `None`: not yet
    /// complete (call again).
    pub(super) fn read_head(&mut self, stream: &mut TcpStream) -> io::Result<Option<u16>> {
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut resp = httparse::Response::new(&mut headers);
            match resp.parse(&self.buf) {
                Ok(httparse::Status::Complete(len)) => {
                    let status = resp.code.unwrap_or(0);
                    let header = |name: &str| {
                        resp.headers
                            .iter()
                            .find(|h| h.name.eq_ignore_ascii_case(name))
                            .map(|h| String::from_utf8_lossy(h.value).trim().to_ascii_lowercase())
                    };
                    let framing =
                        if header("transfer-encoding").is_some_and(|t| t.contains("chunked")) {
                            Framing::ChunkSize
                        } else if let Some(n) = header("content-length") {
                            let n: usize = n
                                .parse()
                                .map_err(|_| invalid(format!("bad Content-Length {n:?}")))?;
                            if n > MAX_BODY {
                                return Err(invalid(format!("body of {n} bytes is too large")));
                            }
                            Framing::Length(n)
                        } else {
                            Framing::UntilClose
                        };
                    self.framing = Some(framing);
                    self.buf.drain(..len);
                    return Ok(Some(status));
                }
                Ok(httparse::Status::Partial) => {
                    if self.buf.len() > MAX_HEAD {
                        return Err(invalid("response head too large".to_owned()));
                    }
                    if self.eof {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "connection closed before a response",
                        ));
                    }
                    self.fill(stream)?;
                    if self.eof && self.buf.is_empty() {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "connection closed before a response",
                        ));
                    }
                }
                Err(e) => return Err(invalid(format!("bad response head: {e}"))),
            }
        }
    }

    /// Decode the body bytes buffered so far into `out`; when nothing could be
    /// decoded, read once from `stream` first. True when the body is complete.
    pub(super) fn read_body(
        &mut self,
        stream: &mut TcpStream,
        out: &mut Vec<u8>,
    ) -> io::Result<bool> {
        let before = out.len();
        if self.decode(out)? {
            return Ok(true);
        }
        if out.len() > before {
            return Ok(false);
        }
        if self.eof {
            return match self.framing {
                Some(Framing::UntilClose) => Ok(true),
                _ => Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed inside the body",
                )),
            };
        }
        self.fill(stream)?;
        self.decode(out)
    }

    /// Move decodable body bytes from `buf` to `out`. True when complete.
    fn decode(&mut self, out: &mut Vec<u8>) -> io::Result<bool> {
        let start = out.len();
        loop {
            let framing = self.framing.take().unwrap_or(Framing::Done);
            let (next, progressed) = match framing {
                Framing::Done => {
                    self.framing = Some(Framing::Done);
                    return Ok(true);
                }
                Framing::Length(n) => {
                    let take = n.min(self.buf.len());
                    out.extend(self.buf.drain(..take));
                    let left = n - take;
                    (
                        if left == 0 {
                            Framing::Done
                        } else {
                            Framing::Length(left)
                        },
                        take > 0 || left == 0,
                    )
                }
                Framing::UntilClose => {
                    out.append(&mut self.buf);
                    (Framing::UntilClose, false)
                }
                Framing::ChunkSize => match httparse::parse_chunk_size(&self.buf) {
                    Ok(httparse::Status::Complete((len, size))) => {
                        self.buf.drain(..len);
                        let size = usize::try_from(size)
                            .map_err(|_| invalid("chunk too large".to_owned()))?;
                        (
                            if size == 0 {
                                Framing::Trailers
                            } else {
                                Framing::ChunkData(size)
                            },
                            true,
                        )
                    }
                    Ok(httparse::Status::Partial) => (Framing::ChunkSize, false),
                    Err(_) => return Err(invalid("bad chunk size".to_owned())),
                },
                Framing::ChunkData(n) => {
                    let take = n.min(self.buf.len());
                    out.extend(self.buf.drain(..take));
                    let left = n - take;
                    (
                        if left == 0 {
                            Framing::ChunkEnd
                        } else {
                            Framing::ChunkData(left)
                        },
                        take > 0,
                    )
                }
                Framing::ChunkEnd => {
                    if self.buf.len() < 2 {
                        (Framing::ChunkEnd, false)
                    } else if &self.buf[..2] == b"\r\n" {
                        self.buf.drain(..2);
                        (Framing::ChunkSize, true)
                    } else {
                        return Err(invalid("chunk not followed by CRLF".to_owned()));
                    }
                }
                Framing::Trailers => match self.buf.windows(2).position(|w| w == b"\r\n") {
                    Some(0) => {
                        self.buf.drain(..2);
                        (Framing::Done, true)
                    }
                    Some(p) => {
                        self.buf.drain(..p + 2);
                        (Framing::Trailers, true)
                    }
                    None => (Framing::Trailers, false),
                },
            };
            self.framing = Some(next);
            self.body_len += out.len() - start;
            if self.body_len > MAX_BODY {
                return Err(invalid("response body too large".to_owned()));
            }
            if !progressed {
                return Ok(matches!(self.framing, Some(Framing::Done)));
            }
        }
    }
}

pub(super) fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

/// TCP keepalive on a long-lived stream: a member that vanished without a
/// reset is noticed in about 5 + 3 × 2 s. Failure to set it is not fatal.
pub(super) fn set_keepalive(stream: &TcpStream) {
    use nix::sys::socket::{setsockopt, sockopt};
    let _ = setsockopt(stream, sockopt::KeepAlive, &true);
    let _ = setsockopt(stream, sockopt::TcpKeepIdle, &5);
    let _ = setsockopt(stream, sockopt::TcpKeepInterval, &2);
    let _ = setsockopt(stream, sockopt::TcpKeepCount, &3);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// Feed `raw` to a reader one byte at a time (as short reads deliver it).
    fn decode_bytewise(framing: Framing, raw: &[u8]) -> io::Result<(Vec<u8>, Vec<usize>)> {
        let mut r = HttpReader::new();
        r.framing = Some(framing);
        let mut out = Vec::new();
        let mut done_at = Vec::new();
        for (i, b) in raw.iter().enumerate() {
            r.buf.push(*b);
            if r.decode(&mut out)? {
                done_at.push(i);
            }
        }
        Ok((out, done_at))
    }

    #[test]
    fn chunked_bodies_decode_across_any_split_with_trailers() {
        let raw = b"5\r\nhello\r\n3;ext=1\r\n, w\r\n0\r\nGrpc-Trailer-Content-Type: application/grpc\r\n\r\n";
        let (out, done_at) = decode_bytewise(Framing::ChunkSize, raw).unwrap();
        assert_eq!(out, b"hello, w");
        assert_eq!(
            done_at.first(),
            Some(&(raw.len() - 1)),
            "complete only at the very end"
        );
        let (out, done_at) = decode_bytewise(Framing::ChunkSize, b"0\r\n\r\n").unwrap();
        assert!(out.is_empty() && done_at == [4]);
    }

    #[test]
    fn content_length_bodies_stop_at_the_length() {
        let (out, done_at) = decode_bytewise(Framing::Length(3), b"abc").unwrap();
        assert_eq!((out.as_slice(), done_at.first()), (&b"abc"[..], Some(&2)));
    }

    #[test]
    fn malformed_chunks_are_errors() {
        for raw in [&b"zz\r\nab"[..], b"2\r\nabXY"] {
            let e = decode_bytewise(Framing::ChunkSize, raw).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{raw:?}");
        }
    }

    #[test]
    fn a_response_split_over_slow_writes_is_read_whole() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let parts: [&[u8]; 4] = [
                b"HTTP/1.1 200 OK\r\nContent-Ty",
                b"pe: application/json\r\nTransfer-Encoding: chunked\r\n\r\n7\r\n{\"a\":",
                b"1}\r\n",
                b"0\r\n\r\n",
            ];
            for p in parts {
                s.write_all(p).unwrap();
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        let mut stream = TcpStream::connect(addr).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        let (status, v) = read_unary(&mut stream, deadline).unwrap();
        assert_eq!((status, v), (200, serde_json::json!({"a": 1})));
        server.join().unwrap();
    }

    #[test]
    fn endpoints_normalise() {
        let e = parse_endpoint("127.0.0.1:2379/").unwrap();
        assert_eq!(
            (e.url.as_str(), e.authority.as_str()),
            ("http://127.0.0.1:2379", "127.0.0.1:2379")
        );
    }
}
