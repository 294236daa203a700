//! `sgswitch capture`: frames at a port as a pcapng stream, daemon side
//! ([`stream`]) and client side ([`receive`]).
//!
//! Protocol (on the API socket, after the request line of
//! [`Command::Capture`](crate::api::Command::Capture)):
//! * The daemon answers one JSON line like any request: an error (bad target,
//!   bad limit, another capture running: the connection stays usable), or
//!   `{"ok": {"capture-started": ...}}` with the limits in force. From then
//!   on the connection carries only the capture, as frames of
//!   `TAG (1 byte) LEN (u32 big-endian) PAYLOAD`: `D` pcapng bytes (always
//!   whole blocks), `K` keep-alive (empty, every [`KEEPALIVE`] without
//!   data: a client that went away is noticed), and one last `E` whose payload
//!   is the JSON [`Summary`]; then the daemon closes the connection.
//! * The capture ends at the first of: `count` frames written, the file
//!   reaching `max_bytes` (the frame that would pass it is not written), the
//!   duration, the client shutting down its sending side (Ctrl-C: the client
//!   does that and still reads to the end, so its file is whole), the client
//!   gone, or the daemon stopping.
//! * The capture runs on the connection's own thread (the management thread
//!   only starts it), so other commands go on meanwhile. The daemon runs one
//!   capture at a time; a second start is refused (`ServiceUnavailable`).
//! * The file: one section, an interface per port as first seen (`if_name` =
//!   the port name: the instance id, or the uplink's name), EPBs in µs with
//!   the direction in `epb_flags` and `drop: REASON` as `opt_comment` for a
//!   dropped frame ([`crate::pcapng`]).

use std::collections::{BTreeMap, HashMap};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use switch::PortId;
use switch::capture::{Capture, Direction, MAX_SNAPLEN, Record};

use crate::api::{ApiError, ErrorCode};
use crate::pcapng;

/// Default limits: frames, file size, seconds.
pub const DEFAULT_COUNT: u64 = 10_000;
pub const DEFAULT_MAX_BYTES: u64 = 64 << 20;
pub const DEFAULT_DURATION_SECS: u64 = 60;
/// Longest capture asked for.
pub const MAX_DURATION_SECS: u64 = 24 * 3600;
/// How often the daemon drains the workers' rings.
pub const DRAIN_EVERY: Duration = Duration::from_millis(10);
/// Keep-alive period of an idle capture.
pub const KEEPALIVE: Duration = Duration::from_millis(500);

pub const TAG_DATA: u8 = b'D';
pub const TAG_KEEPALIVE: u8 = b'K';
pub const TAG_END: u8 = b'E';

/// The limits of a capture, defaults filled in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    pub count: u64,
    pub max_bytes: u64,
    pub duration_secs: u64,
    pub snaplen: u32,
    pub drops_only: bool,
}

impl Limits {
    /// Check the values asked for (`None` = default); an error names the bad one.
    pub fn of(
        drops: bool,
        count: Option<u64>,
        max_bytes: Option<u64>,
        duration_secs: Option<u64>,
        snaplen: Option<u32>,
    ) -> Result<Limits, ApiError> {
        let bad = |what: &str, v: u64, range: String| {
            Err(ApiError::new(
                ErrorCode::InvalidParameterValue,
                format!("capture {what} {v} is out of range {range}"),
            ))
        };
        let l = Limits {
            count: count.unwrap_or(DEFAULT_COUNT),
            max_bytes: max_bytes.unwrap_or(DEFAULT_MAX_BYTES),
            duration_secs: duration_secs.unwrap_or(DEFAULT_DURATION_SECS),
            snaplen: snaplen.unwrap_or(switch::capture::DEFAULT_SNAPLEN as u32),
            drops_only: drops,
        };
        if l.count == 0 {
            return bad("count", 0, "1..".into());
        }
        if l.max_bytes < 4096 {
            return bad("max-bytes", l.max_bytes, "4096..".into());
        }
        if l.duration_secs == 0 || l.duration_secs > MAX_DURATION_SECS {
            return bad(
                "duration",
                l.duration_secs,
                format!("1..={MAX_DURATION_SECS} seconds"),
            );
        }
        if l.snaplen == 0 || l.snaplen as usize > MAX_SNAPLEN {
            return bad("snaplen", l.snaplen.into(), format!("1..={MAX_SNAPLEN}"));
        }
        Ok(l)
    }
}

/// A capture the management thread started, for the connection to stream.
pub struct Started {
    pub capture: Capture,
    pub limits: Limits,
    /// What was asked for (`i-...`, a port name, or `all`).
    pub target: String,
}

/// How a capture went: the `E` frame's payload.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    /// Frames written (EPBs).
    pub frames: u64,
    /// Bytes of pcapng written.
    pub bytes: u64,
    /// Dropped frames written, by reason.
    pub dropped: BTreeMap<String, u64>,
    /// Frames that matched but were not captured because a ring was full.
    pub not_captured: u64,
    /// `count`, `max-bytes`, `duration`, `client` (stopped by the client),
    /// `client-gone` or `daemon-stopping`.
    pub stopped_by: String,
}

fn write_frame(w: &mut impl Write, tag: u8, payload: &[u8]) -> io::Result<()> {
    let mut head = [0u8; 5];
    head[0] = tag;
    head[1..].copy_from_slice(&(payload.len() as u32).to_be_bytes());
    w.write_all(&head)?;
    w.write_all(payload)?;
    w.flush()
}

/// The file being written: interfaces met so far, bounds, counts.
struct FileState {
    ifaces: HashMap<PortId, u32>,
    limits: Limits,
    summary: Summary,
}

impl FileState {
    /// Append `r` to `buf`, or say which bound stops the capture.
    fn add(&mut self, cap: &Capture, r: &Record, buf: &mut Vec<u8>) -> Result<(), &'static str> {
        if self.summary.frames >= self.limits.count {
            return Err("count");
        }
        let start = buf.len();
        let n = self.ifaces.len() as u32;
        let iface = *self.ifaces.entry(r.port).or_insert_with(|| {
            pcapng::write_interface(buf, &cap.port_name(r.port), self.limits.snaplen);
            n
        });
        let comment = r.dropped.map(|v| format!("drop: {}", v.name()));
        let flags = match r.dir {
            Direction::In => pcapng::FLAG_INBOUND,
            Direction::Out => pcapng::FLAG_OUTBOUND,
        };
        pcapng::write_packet(
            buf,
            iface,
            r.ts_ns / 1000,
            r.orig_len,
            &r.data,
            Some(flags),
            comment.as_deref(),
        );
        let added = (buf.len() - start) as u64;
        if self.summary.bytes + added > self.limits.max_bytes {
            buf.truncate(start);
            if self.ifaces.get(&r.port) == Some(&n) {
                self.ifaces.remove(&r.port);
            }
            return Err("max-bytes");
        }
        self.summary.bytes += added;
        self.summary.frames += 1;
        if let Some(v) = r.dropped {
            *self.summary.dropped.entry(v.name().to_owned()).or_default() += 1;
        }
        Ok(())
    }
}

/// Daemon side: stream `started` to the client on `stream` (its ok line
/// already sent) until a bound, the client or the daemon ends it; then send
/// the summary and close. Returns the summary.
pub fn stream(stream: UnixStream, started: Started) -> io::Result<Summary> {
    let Started {
        capture,
        limits,
        target,
    } = started;
    // The client stops the capture by shutting down its side (or going away).
    let client_done = Arc::new(AtomicBool::new(false));
    if let Ok(mut r) = stream.try_clone() {
        let done = client_done.clone();
        let _ = std::thread::Builder::new()
            .name("sgswitch-capture-watch".into())
            .spawn(move || {
                // The connection's idle timeout applies to this read too:
                // a quiet client is no client gone.
                let mut b = [0u8; 64];
                loop {
                    match r.read(&mut b) {
                        Ok(0) => break,
                        Ok(_) => {}
                        Err(e)
                            if matches!(
                                e.kind(),
                                io::ErrorKind::WouldBlock
                                    | io::ErrorKind::TimedOut
                                    | io::ErrorKind::Interrupted
                            ) => {}
                        Err(_) => break,
                    }
                }
                done.store(true, Ordering::Release);
            });
    }
    let mut out = io::BufWriter::new(&stream);
    let mut st = FileState {
        ifaces: HashMap::new(),
        limits,
        summary: Summary::default(),
    };
    let mut buf = Vec::with_capacity(256 * 1024);
    pcapng::write_section(&mut buf, &format!("sgswitch {}", env!("CARGO_PKG_VERSION")));
    st.summary.bytes = buf.len() as u64;
    let t0 = Instant::now();
    let deadline = Duration::from_secs(limits.duration_secs);
    let mut last_write = Instant::now();
    let mut recs: Vec<Record> = Vec::with_capacity(4096);
    let mut stopped: Option<&'static str> = None;
    let mut sent = Ok(());
    loop {
        if stopped.is_none() {
            stopped = if client_done.load(Ordering::Acquire) {
                Some("client")
            } else if t0.elapsed() >= deadline {
                Some("duration")
            } else if capture.switch_stopped() {
                Some("daemon-stopping")
            } else {
                None
            };
        }
        capture.session().drain(&mut recs);
        recs.sort_by_key(|r| r.ts_ns);
        for r in recs.drain(..) {
            if stopped.is_none()
                && let Err(why) = st.add(&capture, &r, &mut buf)
            {
                stopped = Some(why);
            }
            capture.session().recycle(r);
        }
        if stopped.is_none() && st.summary.frames >= limits.count {
            stopped = Some("count");
        }
        if !buf.is_empty() {
            sent = write_frame(&mut out, TAG_DATA, &buf);
            buf.clear();
            last_write = Instant::now();
        } else if last_write.elapsed() >= KEEPALIVE {
            sent = write_frame(&mut out, TAG_KEEPALIVE, &[]);
            last_write = Instant::now();
        }
        if sent.is_err() {
            stopped = Some("client-gone");
        }
        if stopped.is_some() {
            break;
        }
        std::thread::sleep(DRAIN_EVERY);
    }
    st.summary.not_captured = capture.session().lost();
    st.summary.stopped_by = stopped.unwrap_or("client").to_owned();
    drop(capture); // disarm: the workers stop copying
    tracing::info!(
        target = %target,
        frames = st.summary.frames,
        bytes = st.summary.bytes,
        not_captured = st.summary.not_captured,
        stopped_by = %st.summary.stopped_by,
        "capture at {target} ended ({}): {} frames",
        st.summary.stopped_by,
        st.summary.frames
    );
    if sent.is_ok() {
        let json = serde_json::to_vec(&st.summary).unwrap_or_default();
        let _ = write_frame(&mut out, TAG_END, &json);
    }
    drop(out);
    // Wakes the watcher thread's read as well.
    let _ = stream.shutdown(std::net::Shutdown::Both);
    Ok(st.summary)
}

/// Errors of the client side.
#[derive(Debug, thiserror::Error)]
pub enum ReceiveError {
    #[error("reading the capture from the daemon")]
    Io(#[source] io::Error),
    #[error("the daemon sent a capture frame this client does not know (tag {0:#04x})")]
    BadFrame(u8),
    #[error("the daemon ended the capture without a summary")]
    NoSummary,
    #[error("the daemon sent an invalid capture summary")]
    BadSummary(#[source] serde_json::Error),
}

/// Client side, after the ok line: copy the pcapng bytes to `out` (flushed
/// per frame, so a pipe reader sees frames at once) until the summary comes.
/// When `stop` becomes true (Ctrl-C), ask the daemon to end the capture and
/// read on to the end, so that `out` holds a whole file. When `out` fails (a
/// pipe reader exited), stop the same way and discard the rest.
pub fn receive(
    reader: &mut BufReader<UnixStream>,
    out: &mut dyn Write,
    stop: &AtomicBool,
) -> Result<(Summary, Option<io::Error>), ReceiveError> {
    let _ = reader
        .get_ref()
        .set_read_timeout(Some(Duration::from_millis(100)));
    let mut asked_stop = false;
    let mut out_err: Option<io::Error> = None;
    let mut pending: Vec<u8> = Vec::new();
    loop {
        if !asked_stop && (stop.load(Ordering::Acquire) || out_err.is_some()) {
            asked_stop = true;
            let _ = reader.get_ref().shutdown(std::net::Shutdown::Write);
        }
        // Whole frames first.
        while pending.len() >= 5 {
            let len = u32::from_be_bytes([pending[1], pending[2], pending[3], pending[4]]) as usize;
            if pending.len() < 5 + len {
                break;
            }
            let tag = pending[0];
            let payload = &pending[5..5 + len];
            match tag {
                TAG_DATA => {
                    if out_err.is_none()
                        && let Err(e) = out.write_all(payload).and_then(|()| out.flush())
                    {
                        out_err = Some(e);
                    }
                }
                TAG_KEEPALIVE => {}
                TAG_END => {
                    let s = serde_json::from_slice(payload).map_err(ReceiveError::BadSummary)?;
                    return Ok((s, out_err));
                }
                other => return Err(ReceiveError::BadFrame(other)),
            }
            pending.drain(..5 + len);
        }
        let buf = reader.fill_buf();
        match buf {
            Ok([]) => return Err(ReceiveError::NoSummary),
            Ok(b) => {
                let n = b.len();
                pending.extend_from_slice(b);
                reader.consume(n);
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) => {}
            Err(e) => return Err(ReceiveError::Io(e)),
        }
    }
}

/// `sgswitch capture` (the client): send `req` to the daemon at `socket`,
/// write the pcapng stream to `out`, and return the summary line(s) for
/// stderr and the exit code (0, or 1 on an API or connection error: then
/// nothing was written).
pub fn client(
    socket: &std::path::Path,
    req: &crate::api::Request,
    out: &mut dyn Write,
    stop: &AtomicBool,
) -> (String, i32) {
    let path = socket.display().to_string();
    let mut stream = match UnixStream::connect(socket) {
        Ok(s) => s,
        Err(source) => {
            let e = crate::api::ClientError::Connect { path, source };
            return (format!("sgswitch: {}\n", crate::api::error_chain(&e)), 1);
        }
    };
    let mut line = serde_json::to_vec(req).unwrap_or_default();
    line.push(b'\n');
    if let Err(e) = stream.write_all(&line) {
        return (
            format!("sgswitch: talking to the daemon at {path}: {e}\n"),
            1,
        );
    }
    let mut reader = BufReader::new(stream);
    let mut answer = String::new();
    match reader.read_line(&mut answer) {
        Ok(0) => {
            return (
                format!("sgswitch: the daemon at {path} closed the connection without answering\n"),
                1,
            );
        }
        Ok(_) => {}
        Err(e) => {
            return (
                format!("sgswitch: talking to the daemon at {path}: {e}\n"),
                1,
            );
        }
    }
    let reply: crate::api::Reply = match serde_json::from_str::<crate::api::WireReply>(&answer) {
        Ok(w) => w.into(),
        Err(e) => {
            return (
                format!("sgswitch: the daemon at {path} sent an invalid answer: {e}\n"),
                1,
            );
        }
    };
    let target = match reply {
        Ok(crate::api::Response::CaptureStarted { target, .. }) => target,
        Ok(other) => return (format!("sgswitch: unexpected answer: {other:?}\n"), 1),
        Err(e) => return (format!("{}: {}\n", e.code, e.message), 1),
    };
    match receive(&mut reader, out, stop) {
        Ok((s, out_err)) => {
            let mut msg = format!(
                "sgswitch: captured {} frames ({} bytes) at {target}, stopped by {}",
                s.frames, s.bytes, s.stopped_by
            );
            if !s.dropped.is_empty() {
                let reasons: Vec<String> =
                    s.dropped.iter().map(|(r, n)| format!("{r} {n}")).collect();
                msg.push_str(&format!("; dropped: {}", reasons.join(", ")));
            }
            msg.push('\n');
            if s.not_captured > 0 {
                msg.push_str(&format!(
                    "sgswitch: {} frames not captured (ring full)\n",
                    s.not_captured
                ));
            }
            match out_err {
                // A pipe reader that left (tcpdump -c N) is no failure.
                Some(e) if e.kind() != io::ErrorKind::BrokenPipe => {
                    msg.push_str(&format!("sgswitch: writing the capture: {e}\n"));
                    (msg, 1)
                }
                _ => (msg, 0),
            }
        }
        Err(e) => (format!("sgswitch: {}\n", crate::api::error_chain(&e)), 1),
    }
}

/// One line per frame of a capture file (`sgswitch capture -r`):
/// `TIME IFACE in|out LEN WHAT[  drop: REASON]`, `WHAT` a short decode.
pub fn describe(bytes: &[u8]) -> Result<Vec<String>, pcapng::ReadError> {
    let mut names: Vec<String> = Vec::new();
    let mut lines = Vec::new();
    for b in pcapng::read(bytes)? {
        match b {
            pcapng::Block::Section { .. } => names.clear(),
            pcapng::Block::Interface { name, .. } => {
                names.push(name.unwrap_or_else(|| format!("if{}", names.len())));
            }
            pcapng::Block::Packet(p) => {
                let secs = p.ts_us / 1_000_000;
                let (h, m, s) = ((secs / 3600) % 24, (secs / 60) % 60, secs % 60);
                let dir = match p.flags.map(|f| f & 3) {
                    Some(pcapng::FLAG_INBOUND) => "in",
                    Some(pcapng::FLAG_OUTBOUND) => "out",
                    _ => "-",
                };
                let iface = names
                    .get(p.iface as usize)
                    .cloned()
                    .unwrap_or_else(|| format!("if{}", p.iface));
                let mut line = format!(
                    "{h:02}:{m:02}:{s:02}.{:06} {iface} {dir} {} {}",
                    p.ts_us % 1_000_000,
                    p.orig_len,
                    decode(&p.data)
                );
                if let Some(c) = p.comment {
                    line.push_str("  ");
                    line.push_str(&c);
                }
                lines.push(line);
            }
            pcapng::Block::Other(_) => {}
        }
    }
    Ok(lines)
}

/// A short decode of an Ethernet frame: `ARP`, or `PROTO SRC[:PORT] > DST[:PORT]`.
fn decode(frame: &[u8]) -> String {
    use filter::parse::Parsed;
    match filter::parse_frame(frame) {
        Ok(Parsed::Arp { arp, .. }) if arp.op == filter::parse::ARP_REQUEST => {
            format!("ARP who-has {} tell {}", arp.tpa, arp.spa)
        }
        Ok(Parsed::Arp { arp, .. }) => {
            let mac = crate::store::format_mac(&arp.sha);
            format!("ARP reply {} is-at {mac}", arp.spa)
        }
        Ok(Parsed::Ipv4 { pkt, .. }) => {
            let k = pkt.key;
            match k.proto {
                filter::proto::TCP => {
                    format!("TCP {}:{} > {}:{}", k.src, k.sport, k.dst, k.dport)
                }
                filter::proto::UDP => {
                    format!("UDP {}:{} > {}:{}", k.src, k.sport, k.dst, k.dport)
                }
                filter::proto::ICMP => format!("ICMP {} > {}", k.src, k.dst),
                p => format!("IP proto {p} {} > {}", k.src, k.dst),
            }
        }
        // IPv6 is not decoded yet: shown as its ethertype, as before the
        // parser knew it.
        Ok(Parsed::Ipv6 { .. }) => {
            format!(
                "ethertype {:#06x}",
                u16::from_be_bytes([frame[12], frame[13]])
            )
        }
        Err(_) if frame.len() >= 14 => {
            format!(
                "ethertype {:#06x}",
                u16::from_be_bytes([frame[12], frame[13]])
            )
        }
        Err(r) => format!("({})", r.name()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_default_and_bad_values_are_named() {
        let l = Limits::of(true, None, None, None, None).expect("defaults");
        assert_eq!(
            l,
            Limits {
                count: 10_000,
                max_bytes: 64 << 20,
                duration_secs: 60,
                snaplen: 2048,
                drops_only: true
            }
        );
        let msg = |r: Result<Limits, ApiError>| r.unwrap_err().message;
        assert!(msg(Limits::of(false, Some(0), None, None, None)).contains("count 0"));
        assert!(msg(Limits::of(false, None, Some(10), None, None)).contains("max-bytes 10"));
        assert!(msg(Limits::of(false, None, None, Some(0), None)).contains("duration 0"));
        assert!(msg(Limits::of(false, None, None, None, Some(70_000))).contains("snaplen 70000"));
    }

    /// A UDP datagram between two instances of the test segment.
    fn udp(src: u8, dst: u8, payload: usize) -> Vec<u8> {
        let mut f = vec![2, 0, 0, 0, 0, dst, 2, 0, 0, 0, 0, src, 0x08, 0x00];
        let total = (20 + 8 + payload) as u16;
        f.extend_from_slice(&[
            0x45,
            0,
            (total >> 8) as u8,
            total as u8,
            0,
            0,
            0x40,
            0,
            64,
            17,
        ]);
        f.extend_from_slice(&[0, 0, 172, 31, 0, src, 172, 31, 0, dst]);
        let sum = ip_checksum(&f[14..34]);
        f[24..26].copy_from_slice(&sum.to_be_bytes());
        let ulen = (8 + payload) as u16;
        f.extend_from_slice(&[0x0f, 0xa0, 0, 53, (ulen >> 8) as u8, ulen as u8, 0, 0]);
        f.extend(std::iter::repeat_n(7u8, payload));
        f
    }

    fn ip_checksum(h: &[u8]) -> u16 {
        let mut sum: u32 = h
            .chunks(2)
            .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
            .sum();
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        !(sum as u16)
    }

    /// The daemon side against a real datapath (in-memory ports): the file
    /// stops before passing max-bytes, and reads back whole.
    #[test]
    fn the_stream_stops_before_max_bytes_with_a_whole_file() {
        use filter::model::{Instance, Model, Owner, RuleSpec};
        use switch::port::VnetHdr;
        use switch::{PortRole, PortSpec, SwitchConfig, mem_port};

        let owner = Owner("111122223333".into());
        let mut m = Model::new(filter::model::Limits::default());
        m.add_group(&owner, "g", "t").unwrap();
        let rule = RuleSpec {
            proto: Some("udp".into()),
            ports: Some("53".into()),
            cidrs: vec!["172.31.0.0/16".into()],
            ..RuleSpec::default()
        };
        m.authorize(&owner, "g", &rule).unwrap();
        let dp = switch::Datapath::new(SwitchConfig {
            workers: 1,
            ct: filter::CtConfig::with_capacity(1 << 12),
            ..SwitchConfig::default()
        })
        .unwrap();
        let mut peers = Vec::new();
        for k in [10u8, 11] {
            let (mac, ip) = ([2, 0, 0, 0, 0, k], std::net::Ipv4Addr::new(172, 31, 0, k));
            let id = format!("i-{k:08x}");
            m.add_instance(Instance {
                id: id.clone(),
                owner: owner.clone(),
                mac,
                ip,
                groups: vec!["g".into()],
            })
            .unwrap();
            let (queues, peer) = mem_port(1);
            let role = PortRole::Instance {
                id: id.clone(),
                mac,
                ip,
            };
            dp.add_port(PortSpec {
                name: id,
                role,
                queues,
            })
            .unwrap();
            peers.push(peer);
        }
        dp.publish_rules(filter::compile(&m, 1));
        let capture = dp
            .start_capture(switch::capture::CaptureSpec::default())
            .unwrap();
        let limits = Limits::of(false, None, Some(4096), Some(20), None).unwrap();
        let (server, client) = UnixStream::pair().unwrap();
        let daemon = std::thread::spawn(move || {
            let target = "all".to_owned();
            stream(
                server,
                Started {
                    capture,
                    limits,
                    target,
                },
            )
            .unwrap()
        });
        let mut w = dp.worker(0);
        for _ in 0..40 {
            peers[0]
                .inject(0, &udp(10, 11, 200), VnetHdr::default())
                .unwrap();
        }
        while w.poll_once() > 0 {}
        let mut file = Vec::new();
        let stop = AtomicBool::new(false);
        let (s, err) = receive(&mut BufReader::new(client), &mut file, &stop).unwrap();
        assert!(err.is_none());
        assert_eq!(s, daemon.join().unwrap());
        assert_eq!(s.stopped_by, "max-bytes");
        assert_eq!(s.bytes, file.len() as u64);
        assert!(
            file.len() <= 4096 && file.len() > 4096 - 300,
            "{}",
            file.len()
        );
        let blocks = pcapng::read(&file).expect("whole file");
        let packets = blocks
            .iter()
            .filter(|b| matches!(b, pcapng::Block::Packet(_)))
            .count();
        assert_eq!(packets as u64, s.frames);
        // Received at i-0000000a, sent to i-0000000b: two interfaces.
        let names: Vec<&str> = blocks
            .iter()
            .filter_map(|b| match b {
                pcapng::Block::Interface { name, .. } => name.as_deref(),
                _ => None,
            })
            .collect();
        assert_eq!(names, ["i-0000000a", "i-0000000b"]);
        // The capture was disarmed: a new one can start.
        assert!(
            dp.start_capture(switch::capture::CaptureSpec::default())
                .is_ok()
        );
    }

    #[test]
    fn frames_round_trip_and_a_stop_request_is_sent() {
        let (a, b) = UnixStream::pair().expect("pair");
        let mut file = Vec::new();
        let mut w = &a;
        let mut shb = Vec::new();
        pcapng::write_section(&mut shb, "t");
        write_frame(&mut w, TAG_DATA, &shb).unwrap();
        write_frame(&mut w, TAG_KEEPALIVE, &[]).unwrap();
        let s = Summary {
            frames: 0,
            bytes: shb.len() as u64,
            stopped_by: "client".into(),
            ..Summary::default()
        };
        let stop = AtomicBool::new(true);
        let mut r = BufReader::new(b);
        let end = std::thread::spawn(move || {
            // The client's stop request: its sending side shut down.
            let mut x = [0u8; 1];
            assert_eq!((&a).read(&mut x).unwrap(), 0);
            write_frame(&mut &a, TAG_END, &serde_json::to_vec(&s).unwrap()).unwrap();
            s
        });
        let (got, err) = receive(&mut r, &mut file, &stop).expect("summary");
        assert!(err.is_none());
        assert_eq!(got, end.join().unwrap());
        assert_eq!(file, shb);
    }
}
