//! Watches: one long-lived streaming request per watch, resumed from the
//! next needed revision whenever the connection is lost.
//!
//! Contract (see also `etcd.rs`):
//! * [`Watch::poll`] returns whole watch responses ([`WatchBatch`]): etcd
//!   never splits the events of one revision over two responses.
//! * The watch remembers the next revision it needs: the last event's
//!   revision + 1, or a progress notification's header revision + 1 (never
//!   the `created` answer's, which may run ahead of pending events).
//! * Lost connection: the next poll reconnects (any endpoint, backoff 0.1 s
//!   doubling to 2 s) from that revision; nothing is lost or repeated.
//!   `Err(Unreachable)` is transient. `Err(Compacted)` is final: re-read.
//! * etcd 3.4 answers a watch from a compacted revision with `created`, then
//!   a `canceled` response carrying `compact_revision`; both orders are handled.

use std::collections::VecDeque;
use std::io;
use std::net::TcpStream;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::etcd::{
    Client, EtcdError, KeyRange, KeyValue, Result, int, io_text, num, parse_kv, protocol,
    status_error, stream_error, unreachable,
};
use super::http::{Endpoint, HttpReader, connect, invalid, remaining, send_request, set_keepalive};

/// PUT or DELETE.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    Put,
    Delete,
}

/// One change seen by a watch. For a delete, `kv` holds the key and
/// `mod_revision` = the revision of the delete.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub kind: EventKind,
    pub kv: KeyValue,
}

/// The events of one watch response: whole revisions, in revision order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchBatch {
    /// The revision of the last event.
    pub revision: i64,
    pub events: Vec<Event>,
}

const WATCH_BACKOFF_MIN: Duration = Duration::from_millis(100);
const WATCH_BACKOFF_MAX: Duration = Duration::from_secs(2);
/// How long one read of a watch stream blocks before the poll deadline is checked.
const WATCH_READ_SLICE: Duration = Duration::from_millis(200);

struct WatchConn {
    url: String,
    stream: TcpStream,
    reader: HttpReader,
    /// Decoded body bytes not yet parsed as JSON.
    body: Vec<u8>,
}

/// A watch over a key range from a revision: see the module docs.
pub struct Watch {
    client: Client,
    keys: KeyRange,
    /// Every change below this revision has been delivered.
    next_revision: i64,
    conn: Option<WatchConn>,
    pending: VecDeque<Event>,
    /// Set once the resume revision was found compacted: the watch is over.
    compacted: Option<i64>,
    retry_at: Instant,
    backoff: Duration,
}

impl std::fmt::Debug for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watch")
            .field("next_revision", &self.next_revision)
            .field("connected", &self.conn.as_ref().map(|c| c.url.as_str()))
            .finish()
    }
}

impl Watch {
    /// Open a watch of `keys` from `start_revision` and wait for etcd's
    /// confirmation.
    pub(super) fn start(client: &Client, keys: KeyRange, start_revision: i64) -> Result<Watch> {
        let mut w = Watch {
            client: client.clone(),
            keys,
            next_revision: start_revision.max(1),
            conn: None,
            pending: VecDeque::new(),
            compacted: None,
            retry_at: Instant::now(),
            backoff: WATCH_BACKOFF_MIN,
        };
        w.connect()?;
        Ok(w)
    }

    /// The revision the watch resumes from: every change below it has been
    /// returned.
    pub fn next_revision(&self) -> i64 {
        self.next_revision
    }

    /// The endpoint the watch is connected to, if it is.
    pub fn connected_to(&self) -> Option<&str> {
        self.conn.as_ref().map(|c| c.url.as_str())
    }

    /// Wait up to `timeout` for the next batch of changes. `Ok(None)`: none
    /// in time. `Err(Unreachable)` is transient (the next poll reconnects from
    /// [`Watch::next_revision`] after a backoff); `Err(Compacted)` is final.
    pub fn poll(&mut self, timeout: Duration) -> Result<Option<WatchBatch>> {
        if let Some(compact_revision) = self.compacted {
            return Err(EtcdError::Compacted {
                requested: self.next_revision,
                compact_revision,
            });
        }
        let deadline = Instant::now() + timeout;
        loop {
            if self.conn.is_none() {
                let now = Instant::now();
                if now < self.retry_at {
                    if self.retry_at >= deadline {
                        std::thread::sleep(deadline.saturating_duration_since(now));
                        return Ok(None);
                    }
                    std::thread::sleep(self.retry_at - now);
                }
                if let Err(e) = self.connect() {
                    if !matches!(e, EtcdError::Compacted { .. }) {
                        self.retry_at = Instant::now() + self.backoff;
                        self.backoff = (self.backoff * 2).min(WATCH_BACKOFF_MAX);
                    }
                    return Err(e);
                }
            }
            if let Some(batch) = self.next_message(deadline)? {
                return Ok(Some(batch));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
        }
    }

    /// Block until the next batch; transient errors are returned like
    /// [`Watch::poll`]'s.
    pub fn next_batch(&mut self) -> Result<WatchBatch> {
        loop {
            if let Some(b) = self.poll(Duration::from_secs(3600))? {
                return Ok(b);
            }
        }
    }

    /// Open the stream at `next_revision` and wait for etcd's confirmation.
    fn connect(&mut self) -> Result<()> {
        self.conn = None;
        let inner = &self.client.inner;
        let mut create = serde_json::Map::new();
        self.keys.to_json(&mut create);
        create.insert("start_revision".into(), int(self.next_revision));
        create.insert("progress_notify".into(), Value::Bool(true));
        let body = json!({ "create_request": Value::Object(create) }).to_string();
        let n = inner.endpoints.len();
        let start = inner.preferred.load(Ordering::Relaxed) % n;
        let mut failures = Vec::new();
        for i in 0..n {
            let idx = (start + i) % n;
            let ep = &inner.endpoints[idx];
            match self.open(ep, &body) {
                Ok(conn) => {
                    inner.preferred.store(idx, Ordering::Relaxed);
                    self.conn = Some(conn);
                    self.backoff = WATCH_BACKOFF_MIN;
                    return Ok(());
                }
                Err(e @ EtcdError::Compacted { .. }) => {
                    if let EtcdError::Compacted {
                        compact_revision, ..
                    } = e
                    {
                        self.compacted = Some(compact_revision);
                    }
                    return Err(e);
                }
                Err(e) => failures.push(format!("{}: {e}", ep.url)),
            }
        }
        Err(unreachable(&self.client.endpoints(), failures))
    }

    fn open(&self, ep: &Endpoint, body: &str) -> Result<WatchConn> {
        let cfg = &self.client.inner.cfg;
        let io_err = |what: &str, e: io::Error| EtcdError::Unreachable {
            url: ep.url.clone(),
            detail: format!("watch {what}: {}", io_text(&e, cfg)),
        };
        let mut stream = connect(ep, cfg).map_err(|e| io_err("connect", e))?;
        set_keepalive(&stream);
        let deadline = Instant::now() + cfg.request_timeout;
        send_request(&mut stream, ep, "/v3/watch", body, deadline)
            .map_err(|e| io_err("send", e))?;
        let mut conn = WatchConn {
            url: ep.url.clone(),
            stream,
            reader: HttpReader::new(),
            body: Vec::new(),
        };
        let status = loop {
            remaining(deadline)
                .and_then(|t| conn.stream.set_read_timeout(Some(t)))
                .map_err(|e| io_err("answer", e))?;
            if let Some(s) = conn
                .reader
                .read_head(&mut conn.stream)
                .map_err(|e| io_err("answer", e))?
            {
                break s;
            }
        };
        if status != 200 {
            let mut body = Vec::new();
            let _ = conn.reader.read_body(&mut conn.stream, &mut body);
            let v = serde_json::from_slice(&body).unwrap_or(Value::Null);
            return Err(status_error(&ep.url, "watch", status, &v));
        }
        // The first message confirms the watch (`created`), or reports the
        // start revision compacted.
        loop {
            if let Some(msg) = conn.next_json().map_err(|e| io_err("answer", e))? {
                let r = match msg.get("result") {
                    Some(r) => r,
                    None => return Err(stream_error(&ep.url, "watch", &msg)),
                };
                let compact = num(&r["compact_revision"]);
                if compact != 0 {
                    return Err(EtcdError::Compacted {
                        requested: self.next_revision,
                        compact_revision: compact,
                    });
                }
                if r["created"].as_bool() == Some(true) {
                    return Ok(conn);
                }
                return Err(protocol(
                    &ep.url,
                    "watch",
                    format!("expected created, got {msg}"),
                ));
            }
            remaining(deadline)
                .and_then(|t| conn.stream.set_read_timeout(Some(t)))
                .map_err(|e| io_err("answer", e))?;
            conn.read_more().map_err(|e| io_err("answer", e))?;
        }
    }

    /// Read messages until one carries events (→ the batch) or `deadline`.
    /// A lost connection drops `conn` (the caller reconnects).
    fn next_message(&mut self, deadline: Instant) -> Result<Option<WatchBatch>> {
        loop {
            let Some(conn) = self.conn.as_mut() else {
                return Ok(None);
            };
            let msg = match conn.next_json() {
                Ok(Some(m)) => m,
                Ok(None) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Ok(None);
                    }
                    let _ = conn
                        .stream
                        .set_read_timeout(Some(left.min(WATCH_READ_SLICE)));
                    match conn.read_more() {
                        Ok(()) => continue,
                        Err(e)
                            if matches!(
                                e.kind(),
                                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                            ) =>
                        {
                            continue;
                        }
                        Err(_) => {
                            // Lost: the caller reconnects from next_revision.
                            self.conn = None;
                            return Ok(None);
                        }
                    }
                }
                Err(_) => {
                    self.conn = None;
                    return Ok(None);
                }
            };
            let url = conn.url.clone();
            let Some(r) = msg.get("result") else {
                // A stream error (e.g. the member lost its leader): reconnect.
                self.conn = None;
                return Ok(None);
            };
            let compact = num(&r["compact_revision"]);
            if compact != 0 {
                self.conn = None;
                self.compacted = Some(compact);
                return Err(EtcdError::Compacted {
                    requested: self.next_revision,
                    compact_revision: compact,
                });
            }
            if r["canceled"].as_bool() == Some(true) {
                self.conn = None;
                let reason = r["cancel_reason"].as_str().unwrap_or("no reason given");
                return Err(protocol(
                    &url,
                    "watch",
                    format!("etcd cancelled the watch: {reason}"),
                ));
            }
            let mut events = Vec::new();
            if let Some(list) = r["events"].as_array() {
                for e in list {
                    let kind = match e["type"].as_str() {
                        None | Some("PUT") => EventKind::Put,
                        Some("DELETE") => EventKind::Delete,
                        Some(other) => {
                            return Err(protocol(
                                &url,
                                "watch",
                                format!("unknown event type {other}"),
                            ));
                        }
                    };
                    events.push(Event {
                        kind,
                        kv: parse_kv(&url, "watch", &e["kv"])?,
                    });
                }
            }
            if let Some(last) = events.last() {
                let revision = last.kv.mod_revision;
                self.next_revision = revision + 1;
                return Ok(Some(WatchBatch { revision, events }));
            }
            if r["created"].as_bool() != Some(true) {
                // A progress notification: every change up to the header
                // revision has been sent.
                let rev = num(&r["header"]["revision"]);
                if rev >= self.next_revision {
                    self.next_revision = rev + 1;
                }
            }
        }
    }
}

impl Iterator for Watch {
    type Item = Result<Event>;

    /// Events one by one; transient errors are yielded (the next call
    /// reconnects); ends after [`EtcdError::Compacted`].
    fn next(&mut self) -> Option<Result<Event>> {
        if let Some(e) = self.pending.pop_front() {
            return Some(Ok(e));
        }
        if self.compacted.is_some() {
            return None;
        }
        match self.next_batch() {
            Ok(b) => {
                self.pending.extend(b.events);
                self.pending.pop_front().map(Ok)
            }
            Err(e) => Some(Err(e)),
        }
    }
}

impl WatchConn {
    fn read_more(&mut self) -> io::Result<()> {
        let done = self.reader.read_body(&mut self.stream, &mut self.body)?;
        if done {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "watch stream ended",
            ));
        }
        Ok(())
    }

    /// The next complete JSON message of the stream, if buffered.
    fn next_json(&mut self) -> io::Result<Option<Value>> {
        let start = self.body.iter().position(|b| !b.is_ascii_whitespace());
        let Some(start) = start else {
            self.body.clear();
            return Ok(None);
        };
        let mut it = serde_json::Deserializer::from_slice(&self.body[start..]).into_iter::<Value>();
        match it.next() {
            Some(Ok(v)) => {
                let used = start + it.byte_offset();
                self.body.drain(..used);
                Ok(Some(v))
            }
            Some(Err(e)) if e.is_eof() => Ok(None),
            Some(Err(e)) => Err(invalid(format!("bad watch message: {e}"))),
            None => Ok(None),
        }
    }
}
