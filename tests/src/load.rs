//! Load-test helpers: a raw JSON-lines client of the daemon's socket that logs
//! when each edit was sent and acknowledged, the UDP traffic generator and
//! counting receiver (`src/bin/loadgen.rs`) run in lab namespaces, and the exact
//! per-packet oracle that judges a run.
//!
//! # The oracle
//!
//! Every datagram is a new 5-tuple, so the switch judges it as a first packet by
//! the rules in force at the instant `j` it classifies it. The test never knows
//! `j`, only an interval that contains it:
//!
//! * a **received** packet was judged in `[sent, received]`;
//! * a **dropped** packet was judged in `[sent, received(next)]`, where `next` is
//!   the next packet of the same sender that was received — when the switch runs
//!   one worker ([`Order::Fifo`]): one sender writes its packets in order into the
//!   one queue of the uplink TAP, which that worker reads in order, so packet `k`
//!   is classified before any later packet of its sender. A dropped packet with
//!   no later received packet is ambiguous. With several workers the kernel
//!   spreads flows over the TAP's queues and a packet may overtake another
//!   ([`Order::Unordered`]): a dropped packet's interval is then unbounded, so
//!   only a rule that no longer changes after it was sent can flag it.
//!
//! An edit flips the rule state at one instant (the snapshot publish) inside
//! `[sent, acked]` of that edit: the daemon commits, publishes, then answers. A
//! rule's state is therefore known exactly outside the edits' windows and
//! unknown inside. [`Timeline::over`] answers "what was the state throughout
//! `[t0, t1]`": [`Known`] when it is the same known value the whole time, else
//! [`Verdict::Ambiguous`]. [`judge`] then flags a received packet whose interval
//! was known *denied* throughout, and a dropped packet whose interval was known
//! *allowed* throughout. Both lists must be empty.
//!
//! All times are `CLOCK_MONOTONIC` nanoseconds ([`mono_ns`]), one clock for the
//! test process and its helpers in every namespace.
//!
//! [`Known`]: Verdict::Known

use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, Write};
use std::net::Ipv4Addr;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::Duration;

use nix::time::{ClockId, clock_gettime};
use serde_json::{Value, json};

use crate::run::{self, describe, kill_wait};

/// `CLOCK_MONOTONIC` now, in nanoseconds.
pub fn mono_ns() -> u64 {
    let t = clock_gettime(ClockId::CLOCK_MONOTONIC).expect("CLOCK_MONOTONIC is always readable");
    t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64
}

/// What `loadgen send` puts in every datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Payload {
    /// `--id` of the sender.
    pub sender: u16,
    pub seq: u64,
    /// [`mono_ns`] right before the `sendto`.
    pub sent_ns: u64,
    /// The destination port the packet was sent to.
    pub dport: u16,
}

impl Payload {
    const MAGIC: &'static [u8; 4] = b"SGLD";
    /// Encoded length: magic, sender, seq, sent_ns, dport.
    pub const LEN: usize = 4 + 2 + 8 + 8 + 2;

    /// Write into `out[..LEN]`.
    pub fn write(&self, out: &mut [u8]) {
        out[0..4].copy_from_slice(Self::MAGIC);
        out[4..6].copy_from_slice(&self.sender.to_be_bytes());
        out[6..14].copy_from_slice(&self.seq.to_be_bytes());
        out[14..22].copy_from_slice(&self.sent_ns.to_be_bytes());
        out[22..24].copy_from_slice(&self.dport.to_be_bytes());
    }

    /// Decode a datagram's payload; `None` unless it starts with our magic.
    pub fn read(b: &[u8]) -> Option<Payload> {
        if b.len() < Self::LEN || &b[0..4] != Self::MAGIC {
            return None;
        }
        let u64_at = |i: usize| u64::from_be_bytes(b[i..i + 8].try_into().unwrap_or([0; 8]));
        Some(Payload {
            sender: u16::from_be_bytes([b[4], b[5]]),
            seq: u64_at(6),
            sent_ns: u64_at(14),
            dport: u16::from_be_bytes([b[22], b[23]]),
        })
    }
}

// ---------------------------------------------------------------------------
// The socket client
// ---------------------------------------------------------------------------

/// Errors of [`ApiConn`].
#[derive(Debug, thiserror::Error)]
pub enum ApiConnError {
    #[error("connect to the daemon socket {path}: {source}")]
    Connect {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("request {request} on {path}: {source}")]
    Io {
        path: PathBuf,
        request: String,
        #[source]
        source: io::Error,
    },
    #[error("request {request} on {path}: the daemon closed the connection")]
    Closed { path: PathBuf, request: String },
    #[error("request {request} on {path}: invalid answer {answer:?}: {source}")]
    BadAnswer {
        path: PathBuf,
        request: String,
        answer: String,
        #[source]
        source: serde_json::Error,
    },
}

/// One answer: `Ok(the "ok" object)` or `Err((code, message))`.
pub type Answer = Result<Value, (String, String)>;

/// A request with the moments it was sent and answered.
#[derive(Clone, Debug)]
pub struct Timed {
    pub answer: Answer,
    pub sent_ns: u64,
    pub acked_ns: u64,
}

/// One persistent connection to the daemon's socket, speaking the JSON-lines
/// protocol of `mgmt/src/api.rs` directly (no CLI process per edit).
pub struct ApiConn {
    path: PathBuf,
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl ApiConn {
    pub fn connect(path: &Path) -> Result<ApiConn, ApiConnError> {
        let s = UnixStream::connect(path).map_err(|source| ApiConnError::Connect {
            path: path.to_path_buf(),
            source,
        })?;
        // A hung daemon fails the test instead of hanging it.
        let _ = s.set_read_timeout(Some(Duration::from_secs(20)));
        let writer = s.try_clone().map_err(|source| ApiConnError::Connect {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(ApiConn {
            path: path.to_path_buf(),
            reader: BufReader::new(s),
            writer,
        })
    }

    /// Send `{"owner": owner, "command": command}` and wait for its answer.
    pub fn call(&mut self, owner: Option<&str>, command: Value) -> Result<Timed, ApiConnError> {
        let req = json!({ "owner": owner, "command": command });
        let mut line = req.to_string();
        line.push('\n');
        let io_err = |source| ApiConnError::Io {
            path: self.path.clone(),
            request: req.to_string(),
            source,
        };
        let sent_ns = mono_ns();
        self.writer.write_all(line.as_bytes()).map_err(io_err)?;
        let mut answer = String::new();
        let n = self
            .reader
            .read_line(&mut answer)
            .map_err(|source| ApiConnError::Io {
                path: self.path.clone(),
                request: req.to_string(),
                source,
            })?;
        let acked_ns = mono_ns();
        if n == 0 || !answer.ends_with('\n') {
            return Err(ApiConnError::Closed {
                path: self.path.clone(),
                request: req.to_string(),
            });
        }
        let v: Value =
            serde_json::from_str(answer.trim_end()).map_err(|source| ApiConnError::BadAnswer {
                path: self.path.clone(),
                request: req.to_string(),
                answer: answer.clone(),
                source,
            })?;
        let answer = match (v.get("ok"), v.get("error")) {
            (Some(ok), _) => Ok(ok.clone()),
            (None, Some(e)) => Err((
                e["code"].as_str().unwrap_or_default().to_string(),
                e["message"].as_str().unwrap_or_default().to_string(),
            )),
            (None, None) => Err(("?".into(), format!("answer with neither ok nor error: {v}"))),
        };
        Ok(Timed {
            answer,
            sent_ns,
            acked_ns,
        })
    }

    /// [`ApiConn::call`] whose answer must be `ok`; returns the `ok` object.
    pub fn ok(&mut self, owner: Option<&str>, command: Value) -> Value {
        let shown = command.to_string();
        let t = self.call(owner, command).unwrap_or_else(|e| panic!("{e}"));
        t.answer
            .unwrap_or_else(|(c, m)| panic!("{shown} as {owner:?}: {c}: {m}"))
    }
}

/// The JSON rule spec of `-P proto -p port -s cidr...`.
pub fn port_spec(proto: &str, port: u16, cidrs: &[String]) -> Value {
    json!({ "proto": proto, "ports": port.to_string(), "icmp": null, "cidrs": cidrs, "groups": [] })
}

// ---------------------------------------------------------------------------
// The oracle
// ---------------------------------------------------------------------------

/// One acknowledged edit of one rule: it turned the rule on (`allow`) or off
/// at an unknown instant inside `[sent_ns, acked_ns]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EditWindow {
    pub allow: bool,
    pub sent_ns: u64,
    pub acked_ns: u64,
}

/// What the rules said about a packet over an interval.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// This state held throughout.
    Known(bool),
    /// An edit window overlaps the interval (or it is unbounded).
    Ambiguous,
}

/// The state of one rule over time: an initial state and the sequential edits
/// of it (each sent after the previous one was acknowledged).
#[derive(Clone, Debug)]
pub struct Timeline {
    initial: bool,
    edits: Vec<EditWindow>,
}

impl Timeline {
    /// Panics if the edits overlap or are out of order (the editor must wait for
    /// each answer before sending the next edit of the same rule).
    pub fn new(initial: bool, edits: Vec<EditWindow>) -> Timeline {
        for w in edits.windows(2) {
            assert!(
                w[0].acked_ns <= w[1].sent_ns,
                "edits of one rule overlap: {:?}",
                &w
            );
        }
        Timeline { initial, edits }
    }

    /// A rule nobody edits.
    pub fn fixed(state: bool) -> Timeline {
        Timeline::new(state, Vec::new())
    }

    /// The state throughout `[t0, t1]` (`t1 = None`: unbounded, known only when
    /// no edit of the rule ends after `t0`).
    pub fn over(&self, t0: u64, t1: Option<u64>) -> Verdict {
        let t1 = t1.unwrap_or(u64::MAX);
        // Edits wholly acknowledged before t0 decide the state at t0.
        let before = self.edits.partition_point(|e| e.acked_ns < t0);
        let state = match before {
            0 => self.initial,
            n => self.edits[n - 1].allow,
        };
        match self.edits.get(before) {
            // The next edit's window starts inside [t0, t1] (or already did).
            Some(e) if e.sent_ns <= t1 => Verdict::Ambiguous,
            _ => Verdict::Known(state),
        }
    }
}

/// A datagram the sender handed to the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sent {
    pub sender: u16,
    pub seq: u64,
    pub sent_ns: u64,
    pub dport: u16,
    pub sport: u16,
}

/// A datagram the receiver got.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Received {
    pub sender: u16,
    pub seq: u64,
    pub sent_ns: u64,
    pub dport: u16,
    pub sport: u16,
    pub recv_ns: u64,
    pub src: Ipv4Addr,
}

/// A packet the oracle flags, with the interval it was judged in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Flagged {
    pub sent: Sent,
    pub judged_by_ns: u64,
}

/// The result of [`judge`].
#[derive(Clone, Debug, Default)]
pub struct Judgement {
    pub sent: usize,
    pub received: usize,
    /// Received although the rules denied it throughout its interval.
    pub received_forbidden: Vec<Flagged>,
    /// Dropped although the rules allowed it throughout its interval.
    pub dropped_allowed: Vec<Flagged>,
    /// Packets with a known verdict (that the switch honoured, unless flagged).
    pub known_allowed: usize,
    pub known_denied: usize,
    pub ambiguous: usize,
    /// Received packets nobody sent, or received twice.
    pub unexpected: Vec<Received>,
    /// Largest `recv - sent` of any received packet.
    pub max_transit_ns: u64,
}

impl Judgement {
    pub fn clean(&self) -> bool {
        self.received_forbidden.is_empty()
            && self.dropped_allowed.is_empty()
            && self.unexpected.is_empty()
    }
}

/// How the switch orders one sender's packets, i.e. what bounds the moment a
/// dropped packet was judged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Order {
    /// One queue, one worker (`--workers 1`): a dropped packet was judged before
    /// the next received packet of its sender arrived.
    Fifo,
    /// Several workers, each with its own queue of the uplink TAP (the kernel
    /// spreads flows over them): a dropped packet may have been judged any time
    /// later, so only a rule that does not change after it was sent can flag it.
    Unordered,
}

/// Judge a run (see the module docs). `rule(sender, dport)` gives the timeline
/// of the rule that decides packets of `sender` to `dport`.
pub fn judge<'a>(
    sent: &[Sent],
    received: &[Received],
    order: Order,
    rule: impl Fn(u16, u16) -> &'a Timeline,
) -> Judgement {
    let mut j = Judgement {
        sent: sent.len(),
        received: received.len(),
        ..Judgement::default()
    };
    let mut got: HashMap<(u16, u64), &Received> = HashMap::with_capacity(received.len());
    for r in received {
        if got.insert((r.sender, r.seq), r).is_some() {
            j.unexpected.push(*r);
        }
    }
    let mut by_sender: HashMap<u16, Vec<&Sent>> = HashMap::new();
    for s in sent {
        by_sender.entry(s.sender).or_default().push(s);
    }
    let mut known: std::collections::HashSet<(u16, u64)> = std::collections::HashSet::new();
    for (_, mut list) in by_sender {
        list.sort_by_key(|s| s.seq);
        // Walk backwards to know the next received packet of this sender.
        let mut next_recv: Option<u64> = None;
        for s in list.into_iter().rev() {
            known.insert((s.sender, s.seq));
            let mut r = got.get(&(s.sender, s.seq)).copied();
            if let Some(x) =
                r.filter(|x| (x.sent_ns, x.dport, x.sport) != (s.sent_ns, s.dport, s.sport))
            {
                // Not the packet that was sent under this number.
                j.unexpected.push(*x);
                r = None;
            }
            let upper = match (r, order) {
                (Some(r), _) => Some(r.recv_ns),
                (None, Order::Fifo) => next_recv,
                (None, Order::Unordered) => None,
            };
            let v = rule(s.sender, s.dport).over(s.sent_ns, upper);
            match v {
                Verdict::Known(true) => j.known_allowed += 1,
                Verdict::Known(false) => j.known_denied += 1,
                Verdict::Ambiguous => j.ambiguous += 1,
            }
            let flag = Flagged {
                sent: *s,
                judged_by_ns: upper.unwrap_or(u64::MAX),
            };
            match (r, v) {
                (Some(_), Verdict::Known(false)) => j.received_forbidden.push(flag),
                (None, Verdict::Known(true)) => j.dropped_allowed.push(flag),
                _ => {}
            }
            if let Some(r) = r {
                j.max_transit_ns = j.max_transit_ns.max(r.recv_ns.saturating_sub(r.sent_ns));
                next_recv = Some(match next_recv {
                    Some(n) => n.min(r.recv_ns),
                    None => r.recv_ns,
                });
            }
        }
    }
    for r in received {
        if !known.contains(&(r.sender, r.seq)) {
            j.unexpected.push(*r);
        }
    }
    j
}

// ---------------------------------------------------------------------------
// loadgen processes
// ---------------------------------------------------------------------------

/// Errors parsing `loadgen` output.
#[derive(Debug, thiserror::Error)]
pub enum LoadOutputError {
    #[error("loadgen line {line:?}: {why}")]
    Line { line: String, why: &'static str },
}

fn fields<const N: usize>(line: &str, tag: &str) -> Result<Option<[String; N]>, LoadOutputError> {
    let mut it = line.split(' ');
    if it.next() != Some(tag) {
        return Ok(None);
    }
    let v: Vec<String> = it.map(str::to_owned).collect();
    v.try_into().map(Some).map_err(|_| LoadOutputError::Line {
        line: line.to_string(),
        why: "wrong number of fields",
    })
}

fn num<T: std::str::FromStr>(line: &str, s: &str) -> Result<T, LoadOutputError> {
    s.parse().map_err(|_| LoadOutputError::Line {
        line: line.to_string(),
        why: "not a number",
    })
}

/// Parse `loadgen send` output: (`S` lines, failed sends).
pub fn parse_sent(out: &str) -> Result<(Vec<Sent>, u64), LoadOutputError> {
    let mut sent = Vec::new();
    let mut failed = 0;
    for l in out.lines() {
        if let Some(rest) = l.strip_prefix("sent ") {
            let f: Vec<&str> = rest.split(' ').collect();
            failed = f.get(2).map_or(Ok(0), |s| num(l, s))?;
        } else if let Some([k, seq, t, d, s]) = fields::<5>(l, "S")? {
            sent.push(Sent {
                sender: num(l, &k)?,
                seq: num(l, &seq)?,
                sent_ns: num(l, &t)?,
                dport: num(l, &d)?,
                sport: num(l, &s)?,
            });
        }
    }
    Ok((sent, failed))
}

/// Parse `loadgen recv` output: (`R` lines, number of `BAD` lines).
pub fn parse_received(out: &str) -> Result<(Vec<Received>, usize), LoadOutputError> {
    let mut got = Vec::new();
    let mut bad = 0;
    for l in out.lines() {
        if l.starts_with("BAD ") {
            bad += 1;
        } else if let Some([k, seq, t, d, s, r, src]) = fields::<7>(l, "R")? {
            got.push(Received {
                sender: num(l, &k)?,
                seq: num(l, &seq)?,
                sent_ns: num(l, &t)?,
                dport: num(l, &d)?,
                sport: num(l, &s)?,
                recv_ns: num(l, &r)?,
                src: num(l, &src)?,
            });
        }
    }
    Ok((got, bad))
}

/// The `loadgen` binary, next to the test's profile dir (built by cargo before
/// any integration test of this crate, like `labhelper`).
pub fn loadgen_bin() -> PathBuf {
    crate::lab::sibling_bin("loadgen")
}

/// A running `loadgen recv` in a namespace; killed by PID on drop.
pub struct UdpReceiver {
    child: Child,
    stdin: Option<ChildStdin>,
    out: Option<std::thread::JoinHandle<String>>,
}

impl UdpReceiver {
    /// Start it in `ns` on `ports` (at most `max_secs` seconds); returns once bound.
    pub fn start(ns: &str, ports: &[u16], max_secs: u64) -> UdpReceiver {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns])
            .arg(loadgen_bin())
            .args(["recv", "--secs", &max_secs.to_string()])
            .args(ports.iter().map(u16::to_string))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", describe(&cmd)));
        let stdin = child.stdin.take();
        let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut first = String::new();
        let _ = stdout.read_line(&mut first);
        let mut r = UdpReceiver {
            child,
            stdin,
            out: None,
        };
        assert_eq!(
            first.trim_end(),
            "listening",
            "{} did not start",
            describe(&cmd)
        );
        r.out = Some(std::thread::spawn(move || {
            let mut s = String::new();
            let _ = io::Read::read_to_string(&mut stdout, &mut s);
            s
        }));
        r
    }

    /// Stop it (stdin EOF) and collect what it received.
    pub fn finish(mut self) -> (Vec<Received>, usize) {
        drop(self.stdin.take());
        let out = self
            .out
            .take()
            .expect("output reader")
            .join()
            .unwrap_or_default();
        let _ = self.child.wait();
        assert!(out.contains("\nend ") || out.starts_with("end "), "{out}");
        parse_received(&out).unwrap_or_else(|e| panic!("{e}"))
    }
}

impl Drop for UdpReceiver {
    fn drop(&mut self) {
        kill_wait(&mut self.child, Duration::ZERO);
    }
}

/// Options of one `loadgen send`.
#[derive(Clone, Debug)]
pub struct SendPlan {
    pub ns: String,
    pub from: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub ports: Vec<u16>,
    pub rate: u64,
    pub count: u64,
    pub secs: u64,
    pub sport_base: u16,
    pub id: u16,
}

/// A running `loadgen send`; killed by PID on drop.
pub struct UdpSender {
    child: Child,
    out: Option<std::thread::JoinHandle<String>>,
    cmd: String,
}

impl UdpSender {
    pub fn start(p: &SendPlan) -> UdpSender {
        let ports: Vec<String> = p.ports.iter().map(u16::to_string).collect();
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &p.ns])
            .arg(loadgen_bin())
            .arg("send")
            .args(["--from", &p.from.to_string()])
            .args(["--dst", &p.dst.to_string()])
            .args(["--ports", &ports.join(",")])
            .args(["--rate", &p.rate.to_string()])
            .args(["--count", &p.count.to_string()])
            .args(["--secs", &p.secs.to_string()])
            .args(["--sport-base", &p.sport_base.to_string()])
            .args(["--id", &p.id.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", describe(&cmd)));
        let mut stdout = child.stdout.take().expect("piped stdout");
        let out = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = io::Read::read_to_string(&mut stdout, &mut s);
            s
        });
        UdpSender {
            child,
            out: Some(out),
            cmd: describe(&cmd),
        }
    }

    /// Wait for it to finish (at most `timeout`): (packets sent, failed sends).
    pub fn finish(mut self, timeout: Duration) -> (Vec<Sent>, u64) {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            match self.child.try_wait() {
                Ok(Some(st)) => {
                    assert!(st.success(), "{} exited {st}", self.cmd);
                    break;
                }
                Ok(None) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                _ => panic!("{} still running after {timeout:?}", self.cmd),
            }
        }
        let out = self
            .out
            .take()
            .expect("output reader")
            .join()
            .unwrap_or_default();
        parse_sent(&out).unwrap_or_else(|e| panic!("{e}"))
    }
}

impl Drop for UdpSender {
    fn drop(&mut self) {
        kill_wait(&mut self.child, Duration::ZERO);
    }
}

/// Pin `ip`'s neighbour entry to `mac` in `ns` (so no ARP resolution can drop
/// or delay the first packets of a run).
pub fn pin_neighbour(ns: &str, dev: &str, ip: Ipv4Addr, mac: &str) {
    let ip = ip.to_string();
    let args = [
        "-n",
        ns,
        "neigh",
        "replace",
        &ip,
        "lladdr",
        mac,
        "dev",
        dev,
        "nud",
        "permanent",
    ];
    let o = run::run(Command::new("ip").args(args), Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(o.success(), "ip {}: {}", args.join(" "), o.stderr);
}

/// `p`-th percentile (0..=100) of `v` (sorted in place); 0 for an empty slice.
pub fn percentile(v: &mut [u64], p: usize) -> u64 {
    if v.is_empty() {
        return 0;
    }
    v.sort_unstable();
    v[((v.len() - 1) * p.min(100)) / 100]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(allow: bool, s: u64, a: u64) -> EditWindow {
        EditWindow {
            allow,
            sent_ns: s,
            acked_ns: a,
        }
    }

    fn sent(seq: u64, t: u64, dport: u16) -> Sent {
        Sent {
            sender: 1,
            seq,
            sent_ns: t,
            dport,
            sport: 1000 + seq as u16,
        }
    }

    fn recv(s: Sent, at: u64) -> Received {
        Received {
            sender: s.sender,
            seq: s.seq,
            sent_ns: s.sent_ns,
            dport: s.dport,
            sport: s.sport,
            recv_ns: at,
            src: Ipv4Addr::new(172, 31, 255, 10),
        }
    }

    #[test]
    fn payload_round_trips_and_rejects_foreign_bytes() {
        let p = Payload {
            sender: 3,
            seq: 1 << 40,
            sent_ns: 123_456_789_012,
            dport: 30001,
        };
        let mut b = [0u8; Payload::LEN];
        p.write(&mut b);
        assert_eq!(Payload::read(&b), Some(p));
        assert_eq!(Payload::read(&b[..Payload::LEN - 1]), None);
        b[0] = b'X';
        assert_eq!(Payload::read(&b), None);
    }

    #[test]
    fn timeline_is_known_only_outside_edit_windows() {
        // off; on in [100, 110]; off in [200, 210].
        let t = Timeline::new(false, vec![w(true, 100, 110), w(false, 200, 210)]);
        assert_eq!(t.over(0, Some(99)), Verdict::Known(false));
        assert_eq!(t.over(0, Some(100)), Verdict::Ambiguous);
        assert_eq!(t.over(105, Some(106)), Verdict::Ambiguous);
        assert_eq!(
            t.over(110, Some(150)),
            Verdict::Ambiguous,
            "ack instant itself"
        );
        assert_eq!(t.over(111, Some(199)), Verdict::Known(true));
        assert_eq!(t.over(111, Some(205)), Verdict::Ambiguous);
        assert_eq!(t.over(50, Some(150)), Verdict::Ambiguous);
        assert_eq!(t.over(211, Some(10_000)), Verdict::Known(false));
        assert_eq!(
            t.over(211, None),
            Verdict::Known(false),
            "after the last edit"
        );
        assert_eq!(t.over(150, None), Verdict::Ambiguous);
        assert_eq!(Timeline::fixed(true).over(0, Some(5)), Verdict::Known(true));
        assert_eq!(Timeline::fixed(false).over(0, None), Verdict::Known(false));
    }

    #[test]
    #[should_panic(expected = "overlap")]
    fn overlapping_edits_of_one_rule_are_refused() {
        Timeline::new(false, vec![w(true, 100, 110), w(false, 105, 120)]);
    }

    #[test]
    fn judge_flags_forbidden_arrivals_and_allowed_losses_only() {
        // Port 1 always allowed, port 2 allowed from 1000 (edit [1000, 1010])
        // until 3000 (edit [3000, 3010]).
        let open = Timeline::fixed(true);
        let toggled = Timeline::new(false, vec![w(true, 1000, 1010), w(false, 3000, 3010)]);
        let rule = |_s: u16, p: u16| if p == 1 { &open } else { &toggled };
        let s = [
            sent(0, 100, 1),  // received: fine
            sent(1, 200, 2),  // received while denied: flagged
            sent(2, 300, 1),  // dropped while allowed (next received at 450): flagged
            sent(3, 400, 2),  // dropped while denied: fine
            sent(4, 420, 1),  // received
            sent(5, 990, 2),  // dropped, interval [990, 1500] crosses the edit: ambiguous
            sent(6, 1500, 1), // received
            sent(7, 2000, 2), // received while allowed: fine
            sent(8, 2100, 2), // dropped, no later arrival (the revoke may come first): ambiguous
        ];
        let r = [
            recv(s[0], 150),
            recv(s[1], 250),
            recv(s[4], 450),
            recv(s[6], 1550),
            recv(s[7], 2050),
        ];
        let j = judge(&s, &r, Order::Fifo, rule);
        let flagged = |v: &[Flagged]| v.iter().map(|f| f.sent.seq).collect::<Vec<_>>();
        assert_eq!(flagged(&j.received_forbidden), vec![1]);
        assert_eq!(flagged(&j.dropped_allowed), vec![2]);
        assert_eq!(j.dropped_allowed[0].judged_by_ns, 450);
        assert_eq!((j.known_allowed, j.known_denied, j.ambiguous), (5, 2, 2));
        assert_eq!(j.max_transit_ns, 50);
        assert!(!j.clean());
        // Unordered: the dropped toggled packets lose their bound; the
        // always-allowed loss (seq 2) is still flagged, the forbidden arrival too.
        let j = judge(&s, &r, Order::Unordered, rule);
        assert_eq!(flagged(&j.received_forbidden), vec![1]);
        assert_eq!(flagged(&j.dropped_allowed), vec![2]);
        assert_eq!(j.dropped_allowed[0].judged_by_ns, u64::MAX);
        assert_eq!((j.known_allowed, j.known_denied, j.ambiguous), (5, 1, 3));
    }

    #[test]
    fn judge_reports_duplicates_and_strangers() {
        let open = Timeline::fixed(true);
        let s = [sent(0, 100, 1)];
        let stranger = recv(sent(9, 100, 1), 200);
        let j = judge(
            &s,
            &[recv(s[0], 150), recv(s[0], 160), stranger],
            Order::Fifo,
            |_, _| &open,
        );
        assert_eq!(j.unexpected.len(), 2);
        assert!(j.received_forbidden.is_empty() && j.dropped_allowed.is_empty());
    }

    #[test]
    fn loadgen_output_parses() {
        let (s, failed) =
            parse_sent("sent 2 failed 1 secs 0.5\nS 1 0 100 30000 1024\nS 1 1 200 30001 1024\n")
                .unwrap();
        assert_eq!(failed, 1);
        assert_eq!(
            s[1],
            Sent {
                sender: 1,
                seq: 1,
                sent_ns: 200,
                dport: 30001,
                sport: 1024
            }
        );
        let (r, bad) =
            parse_received("R 1 0 100 30000 1024 150 172.31.255.10\nBAD 7 1.2.3.4:5 3\nend 2\n")
                .unwrap();
        assert_eq!(bad, 1);
        assert_eq!(r[0].recv_ns, 150);
        assert!(parse_received("R 1 0 100\n").is_err());
    }

    #[test]
    fn percentiles() {
        let mut v = vec![5, 1, 4, 2, 3];
        assert_eq!(percentile(&mut v, 50), 3);
        assert_eq!(percentile(&mut v, 100), 5);
        assert_eq!(percentile(&mut [], 99), 0);
    }
}
