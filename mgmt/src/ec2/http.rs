//! A small HTTP/1.1 server on `std::net` for the EC2 Query API.
//!
//! Contract:
//! * One thread per connection, at most [`MAX_CONNECTIONS`] at once (more are
//!   answered `503` and closed). Persistent connections (HTTP/1.1 keep-alive,
//!   `Connection: close` honoured) as awscli/boto's connection pools expect.
//! * Bounded: the request line and headers together at most [`MAX_HEAD`] bytes
//!   and [`MAX_HEADERS`] headers (else `431`), the body at most [`MAX_BODY`]
//!   bytes and only with `Content-Length` (else `413`/`411`; no chunked bodies),
//!   a connection idle for [`IDLE_TIMEOUT`] or a request not complete within
//!   [`REQUEST_TIMEOUT`] is closed. `Expect: 100-continue` is answered.
//! * The request head is parsed by `httparse` once its end (an empty line)
//!   has arrived, found by scanning only new bytes (linear however the head
//!   trickles in); the limits above are checked before it is parsed.
//! * Hostile input never panics: any malformed request gets a `400` and the
//!   connection is closed; the server keeps serving others.

use std::io::{self, BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::api::Slot;

/// Request line plus headers, bytes.
pub const MAX_HEAD: usize = 16 * 1024;
/// Headers per request.
pub const MAX_HEADERS: usize = 64;
/// Body bytes.
pub const MAX_BODY: usize = 1 << 20;
/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 64;
/// A keep-alive connection idle this long is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// A request must arrive completely within this time of its first byte.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);

/// One parsed request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpRequest {
    pub method: String,
    /// Raw path, before `?`.
    pub path: String,
    /// Raw query string, after `?` (empty if none).
    pub query: String,
    /// Headers in order, names as sent.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The client wants the connection closed after this request.
    pub close: bool,
}

impl HttpRequest {
    /// First header named `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A response: status, content type and body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpResponse {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
}

/// Why no request could be read.
#[derive(Debug)]
pub enum ReadError {
    /// The peer closed (or went idle) between requests: not an error.
    Closed,
    /// Answer with this status and message, then close.
    Reject(u16, String),
    Io(io::Error),
}

fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        411 => "Length Required",
        412 => "Precondition Failed",
        413 => "Payload Too Large",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        505 => "HTTP Version Not Supported",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

/// Whether `buf` holds the end of a request head (an empty line), looking
/// only at the bytes from `from` on (and the three before, where the end may
/// have started).
fn head_complete(buf: &[u8], from: usize) -> bool {
    let start = from.saturating_sub(3);
    buf[start..]
        .windows(2)
        .enumerate()
        .any(|(i, w)| w == b"\n\n" || (w == b"\n\r" && buf.get(start + i + 2) == Some(&b'\n')))
}

/// The status and message for an `httparse` error.
fn parse_error(e: httparse::Error) -> ReadError {
    match e {
        httparse::Error::TooManyHeaders => {
            ReadError::Reject(431, format!("more than {MAX_HEADERS} headers"))
        }
        httparse::Error::Version => ReadError::Reject(505, "unsupported HTTP version".into()),
        other => ReadError::Reject(400, format!("malformed request head: {other}")),
    }
}

/// Read the request head (request line and headers) into `head`, at most
/// [`MAX_HEAD`] bytes, consuming exactly its bytes from `r`.
fn read_head<R: BufRead>(r: &mut R, head: &mut Vec<u8>, started: Instant) -> Result<(), ReadError> {
    loop {
        if started.elapsed() > REQUEST_TIMEOUT {
            return Err(ReadError::Reject(
                408,
                "request not complete in time".into(),
            ));
        }
        let buf = match r.fill_buf() {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(ReadError::Reject(
                    408,
                    "request not complete in time".into(),
                ));
            }
            Err(e) => return Err(ReadError::Io(e)),
        };
        if buf.is_empty() {
            return Err(ReadError::Reject(
                400,
                "connection closed inside the request head".into(),
            ));
        }
        let before = head.len();
        let take = buf.len().min(MAX_HEAD - before);
        head.extend_from_slice(&buf[..take]);
        // Look for the end of the head only in the new bytes (and the
        // three before): linear in the head's length however it trickles in.
        if head_complete(head, before) {
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut req = httparse::Request::new(&mut headers);
            match req.parse(head).map_err(parse_error)? {
                httparse::Status::Complete(n) => {
                    r.consume(n - before);
                    head.truncate(n);
                    return Ok(());
                }
                // Leading empty lines only: keep reading.
                httparse::Status::Partial => {}
            }
        }
        r.consume(take);
        if head.len() >= MAX_HEAD {
            return Err(ReadError::Reject(
                431,
                format!("request head longer than {MAX_HEAD} bytes"),
            ));
        }
    }
}

/// Read one request from `r`; `w` gets the `100 Continue` if asked for.
/// The head is parsed by `httparse` (a maintained HTTP/1.x parser), under
/// this module's limits.
pub fn read_request<R: BufRead, W: Write>(r: &mut R, w: &mut W) -> Result<HttpRequest, ReadError> {
    // Wait (up to the connection's idle timeout) for the first byte: the
    // request's own deadline runs from there.
    loop {
        match r.fill_buf() {
            Ok([]) => return Err(ReadError::Closed),
            Ok(_) => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(ReadError::Closed);
            }
            Err(e) => return Err(ReadError::Io(e)),
        }
    }
    let started = Instant::now();
    let bad = |m: &str| ReadError::Reject(400, m.to_owned());
    let mut head = Vec::with_capacity(1024);
    read_head(r, &mut head, started)?;
    let mut parsed = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut parsed);
    req.parse(&head).map_err(parse_error)?;
    let (Some(method), Some(target), Some(minor)) = (req.method, req.path, req.version) else {
        return Err(bad("malformed request line"));
    };
    if !method.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(bad("malformed method"));
    }
    let http11 = minor == 1;
    if !target.starts_with('/') {
        return Err(bad("request target must be a path"));
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut headers = Vec::with_capacity(req.headers.len());
    for h in req.headers.iter() {
        let v = std::str::from_utf8(h.value).map_err(|_| bad("header value is not UTF-8"))?;
        headers.push((h.name.to_owned(), v.trim().to_owned()));
    }
    let (method, path, query) = (method.to_owned(), path.to_owned(), query.to_owned());
    let get = |n: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(n))
            .map(|(_, v)| v.as_str())
    };
    if get("transfer-encoding").is_some() {
        return Err(ReadError::Reject(
            411,
            "chunked bodies are not accepted; send Content-Length".into(),
        ));
    }
    let lengths: Vec<&str> = headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .map(|(_, v)| v.as_str())
        .collect();
    let len = match lengths[..] {
        [] => 0,
        [l] => l
            .parse::<usize>()
            .map_err(|_| bad("invalid Content-Length"))?,
        _ => return Err(bad("more than one Content-Length")),
    };
    if len > MAX_BODY {
        return Err(ReadError::Reject(
            413,
            format!("body of {len} bytes is over the {MAX_BODY} byte limit"),
        ));
    }
    let conn = get("connection").unwrap_or("").to_ascii_lowercase();
    let close = if http11 {
        conn.contains("close")
    } else {
        !conn.contains("keep-alive")
    };
    if len > 0 && get("expect").is_some_and(|e| e.eq_ignore_ascii_case("100-continue")) {
        w.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
            .map_err(ReadError::Io)?;
        w.flush().map_err(ReadError::Io)?;
    }
    let mut body = vec![0u8; len];
    let mut got = 0;
    while got < len {
        if started.elapsed() > REQUEST_TIMEOUT {
            return Err(ReadError::Reject(
                408,
                "request body not complete in time".into(),
            ));
        }
        match r.read(&mut body[got..]) {
            Ok(0) => return Err(bad("connection closed inside the body")),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(ReadError::Reject(
                    408,
                    "request body not complete in time".into(),
                ));
            }
            Err(e) => return Err(ReadError::Io(e)),
        }
    }
    Ok(HttpRequest {
        method,
        path,
        query,
        headers,
        body,
        close,
    })
}

/// Write `resp` (with `Connection: close` when `close`).
pub fn write_response<W: Write>(w: &mut W, resp: &HttpResponse, close: bool) -> io::Result<()> {
    let head = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nServer: sgswitch\r\n{}\r\n",
        resp.status,
        reason(resp.status),
        resp.content_type,
        resp.body.len(),
        if close { "Connection: close\r\n" } else { "" }
    );
    w.write_all(head.as_bytes())?;
    w.write_all(&resp.body)?;
    w.flush()
}

/// A plain-text response.
pub fn text(status: u16, msg: &str) -> HttpResponse {
    HttpResponse {
        status,
        content_type: "text/plain; charset=utf-8",
        body: format!("{msg}\n").into_bytes(),
    }
}

/// Serve one connection until it closes, errs, idles out or asks to close.
pub fn serve_connection(
    stream: TcpStream,
    handler: &(dyn Fn(HttpRequest) -> HttpResponse + Send + Sync),
) -> io::Result<()> {
    stream.set_read_timeout(Some(IDLE_TIMEOUT))?;
    stream.set_write_timeout(Some(IDLE_TIMEOUT))?;
    let _ = stream.set_nodelay(true);
    let mut w = stream.try_clone()?;
    let mut r = BufReader::with_capacity(16 * 1024, stream);
    loop {
        match read_request(&mut r, &mut w) {
            Ok(req) => {
                let close = req.close;
                let resp = handler(req);
                write_response(&mut w, &resp, close)?;
                if close {
                    return Ok(());
                }
            }
            Err(ReadError::Closed) => return Ok(()),
            Err(ReadError::Reject(status, msg)) => {
                let _ = write_response(&mut w, &text(status, &msg), true);
                return Ok(());
            }
            Err(ReadError::Io(e)) => return Err(e),
        }
    }
}

/// Accept connections until `stop` is set (wake the loop with a connection).
pub fn serve(
    listener: TcpListener,
    handler: Arc<dyn Fn(HttpRequest) -> HttpResponse + Send + Sync>,
    stop: Arc<AtomicBool>,
) {
    let active = Arc::new(AtomicUsize::new(0));
    for conn in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let mut stream = match conn {
            Ok(s) => s,
            Err(_) => {
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        let Some(slot) = Slot::take(&active, MAX_CONNECTIONS) else {
            let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
            let _ = write_response(&mut stream, &text(503, "too many connections"), true);
            continue;
        };
        let handler = handler.clone();
        let _ = std::thread::Builder::new()
            .name("sgswitch-ec2".into())
            .spawn(move || {
                let _slot = slot;
                // Its requests run on this thread (`MgmtHandle::call`): at the
                // edit path's priority, as the API socket's connections.
                crate::sched::apply("sgswitch-ec2");
                let _ = serve_connection(stream, &*handler);
            });
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    fn parse(raw: &[u8]) -> (Result<HttpRequest, ReadError>, Vec<u8>) {
        let mut r = BufReader::new(raw);
        let mut w = Vec::new();
        (read_request(&mut r, &mut w), w)
    }

    fn status(raw: &[u8]) -> u16 {
        match parse(raw).0 {
            Err(ReadError::Reject(s, _)) => s,
            other => panic!(
                "expected a rejection for {:?}, got {other:?}",
                String::from_utf8_lossy(raw)
            ),
        }
    }

    #[test]
    fn post_with_body_query_and_keep_alive() {
        let raw = b"POST /?a=1 HTTP/1.1\r\nHost: 127.0.0.1:8773\r\nContent-Length: 11\r\nX-Amz-Date: 20150830T123600Z\r\n\r\nAction=Test";
        let (req, w) = parse(raw);
        let req = req.unwrap();
        assert_eq!(
            (req.method.as_str(), req.path.as_str(), req.query.as_str()),
            ("POST", "/", "a=1")
        );
        assert_eq!(req.body, b"Action=Test");
        assert_eq!(req.header("host"), Some("127.0.0.1:8773"));
        assert!(!req.close);
        assert!(w.is_empty());
        // Two requests on one stream; HTTP/1.0 closes by default.
        let two = b"GET / HTTP/1.1\r\nConnection: close\r\n\r\nGET /x HTTP/1.0\r\n\r\n";
        let mut r = BufReader::new(&two[..]);
        let mut w = Vec::new();
        assert!(read_request(&mut r, &mut w).unwrap().close);
        let second = read_request(&mut r, &mut w).unwrap();
        assert_eq!(second.path, "/x");
        assert!(second.close);
        assert!(matches!(
            read_request(&mut r, &mut w),
            Err(ReadError::Closed)
        ));
    }

    /// A reader that hands out one byte per read (a client trickling).
    struct Trickle<'a>(&'a [u8]);

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.0.len().min(buf.len()).min(1);
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    #[test]
    fn head_in_single_bytes_and_leading_empty_lines_parse_alike() {
        let raw = b"\r\n\r\nPOST /p?x=%20 HTTP/1.1\r\nHost: h\r\nX-A:  v w \r\nContent-Length: 3\r\n\r\nabcGET / HTTP/1.1\r\n\r\n";
        let whole = {
            let mut r = BufReader::new(&raw[..]);
            read_request(&mut r, &mut Vec::new()).unwrap()
        };
        let mut r = BufReader::with_capacity(1, Trickle(raw));
        let mut w = Vec::new();
        let trickled = read_request(&mut r, &mut w).unwrap();
        assert_eq!(whole, trickled);
        assert_eq!(
            (
                whole.path.as_str(),
                whole.query.as_str(),
                whole.header("x-a")
            ),
            ("/p", "x=%20", Some("v w"))
        );
        assert_eq!(whole.body, b"abc");
        // The next request on the stream starts right after the body.
        assert_eq!(read_request(&mut r, &mut w).unwrap().method, "GET");
    }

    #[test]
    fn expect_100_continue_is_answered() {
        let (req, w) =
            parse(b"POST / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nok");
        assert_eq!(req.unwrap().body, b"ok");
        assert_eq!(w, b"HTTP/1.1 100 Continue\r\n\r\n");
    }

    #[test]
    fn hostile_requests_are_rejected_with_a_status() {
        assert_eq!(status(b"GARBAGE\r\n\r\n"), 400);
        assert_eq!(status(b"get / HTTP/1.1\r\n\r\n"), 400);
        assert_eq!(status(b"GET / HTTP/2.0\r\n\r\n"), 505);
        assert_eq!(status(b"GET http://x/ HTTP/1.1\r\n\r\n"), 400);
        assert_eq!(status(b"GET / HTTP/1.1\r\nNoColon\r\n\r\n"), 400);
        assert_eq!(status(b"GET / HTTP/1.1\r\n\xff\xfe: x\r\n\r\n"), 400);
        assert_eq!(status(b"POST / HTTP/1.1\r\nContent-Length: x\r\n\r\n"), 400);
        assert_eq!(
            status(b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab"),
            400
        );
        assert_eq!(
            status(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
            411
        );
        assert_eq!(
            status(b"POST / HTTP/1.1\r\nContent-Length: 99999999999\r\n\r\n"),
            413
        );
        assert_eq!(
            status(b"POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\nshort"),
            400
        );
        assert_eq!(status(b"POST / HTTP/1.1\r\nContent-Len"), 400);
        let mut many = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..=MAX_HEADERS {
            many.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert_eq!(status(&many), 431);
        let mut long = b"GET / HTTP/1.1\r\nX: ".to_vec();
        long.extend(std::iter::repeat_n(b'a', MAX_HEAD));
        assert_eq!(status(&long), 431);
        // Nothing at all is a clean close.
        assert!(matches!(parse(b"").0, Err(ReadError::Closed)));
    }

    #[test]
    fn server_answers_rejects_and_keeps_serving() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let handler: Arc<dyn Fn(HttpRequest) -> HttpResponse + Send + Sync> =
            Arc::new(|req: HttpRequest| text(200, &format!("{} {}", req.method, req.body.len())));
        let stop2 = stop.clone();
        let t = std::thread::spawn(move || serve(listener, handler, stop2));
        let exchange = |raw: &[u8]| {
            let mut s = TcpStream::connect(addr).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            s.write_all(raw).unwrap();
            let mut out = String::new();
            let _ = s.read_to_string(&mut out);
            out
        };
        let ok = exchange(b"POST / HTTP/1.1\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc");
        assert!(
            ok.starts_with("HTTP/1.1 200 OK\r\n") && ok.ends_with("POST 3\n"),
            "{ok}"
        );
        let bad = exchange(b"\x16\x03\x01\x02\x00garbage\r\n\r\n");
        assert!(bad.starts_with("HTTP/1.1 400 "), "{bad}");
        // Keep-alive: two answers on one connection.
        let two = exchange(b"GET / HTTP/1.1\r\n\r\nGET / HTTP/1.1\r\nConnection: close\r\n\r\n");
        assert_eq!(two.matches("HTTP/1.1 200 OK").count(), 2, "{two}");
        stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(addr);
        t.join().unwrap();
    }
}
