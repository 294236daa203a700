//! Hostile guests for the end-to-end tests: crafted frames, a sniffer at the
//! destination, the switch's drop counters, and the daemon's memory.
//!
//! Contract:
//! * Frames are built here (on top of [`filter::wire`], so checksums are right
//!   and only the field under attack is wrong) and written from inside an
//!   instance namespace by the `attacker` helper binary (`src/bin/attacker.rs`),
//!   which uses the datapath's own AF_PACKET port: no raw-socket `unsafe` here.
//! * Every attack frame carries [`MARKER`] and an 8-byte tag somewhere the
//!   switch does not look at (L4 payload, ARP/Ethernet padding, DHCP options
//!   padding, after an ICMP error's quote), so a [`Sniffer`] at a destination
//!   can tell exactly which crafted frames arrived. Tests pair each attack with
//!   a *control* frame that the rules allow, sent after it on the same port, and
//!   wait until the control arrives: then the attack frame had its chance to
//!   arrive too (one port, one queue, one worker: frames stay in order).
//! * [`Drops`] reads `sgswitch --json stats`; the per-reason counters only grow,
//!   so a test asserts each attack raised its reason by at least the number of
//!   frames it sent (other traffic can only add).
//! * Everything runs under a deadline; the sniffer and flood processes are
//!   killed by PID when dropped.

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use filter::Mac;
use filter::wire::{self, Endpoint, IpOpts};

use crate::lab::Lab;
use crate::run::{describe, kill_wait};

/// What every crafted frame carries before its tag.
pub const MARKER: &[u8] = b"SGATK:";
/// Length of a tag after [`MARKER`].
pub const TAG_LEN: usize = 8;

/// [`MARKER`] + `tag` (cut or padded with `.` to [`TAG_LEN`] bytes).
pub fn marked(tag: &str) -> Vec<u8> {
    let mut v = MARKER.to_vec();
    let mut t: Vec<u8> = tag.bytes().take(TAG_LEN).collect();
    t.resize(TAG_LEN, b'.');
    v.extend_from_slice(&t);
    v
}

/// The tag as the sniffer prints it (see [`marked`]).
pub fn tag_name(tag: &str) -> String {
    String::from_utf8_lossy(&marked(tag)[MARKER.len()..]).into_owned()
}

/// The tag following the first [`MARKER`] in `frame`, if any.
pub fn find_tag(frame: &[u8]) -> Option<&[u8]> {
    let at = frame.windows(MARKER.len()).position(|w| w == MARKER)?;
    frame.get(at + MARKER.len()..at + MARKER.len() + TAG_LEN)
}

/// Lowercase hex of `bytes`.
pub fn hex_encode(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Bytes of a hex string (even length, `[0-9a-fA-F]`).
pub fn hex_decode(s: &str) -> Result<Vec<u8>, String> {
    if !s.len().is_multiple_of(2) {
        return Err(format!("hex string of odd length {}", s.len()));
    }
    (0..s.len())
        .step_by(2)
        .map(|i| {
            s.get(i..i + 2)
                .and_then(|p| u8::from_str_radix(p, 16).ok())
                .ok_or_else(|| format!("bad hex at {i} in {s:?}"))
        })
        .collect()
}

/// `aa:bb:cc:dd:ee:ff` → MAC.
pub fn parse_mac(s: &str) -> Result<Mac, String> {
    let parts: Vec<&str> = s.split(':').collect();
    let mut mac = [0u8; 6];
    if parts.len() != 6 {
        return Err(format!("MAC {s:?}: want six hex bytes separated by ':'"));
    }
    for (m, p) in mac.iter_mut().zip(parts) {
        *m = u8::from_str_radix(p, 16).map_err(|e| format!("MAC {s:?}: {e}"))?;
    }
    Ok(mac)
}

/// MAC → `aa:bb:cc:dd:ee:ff`.
pub fn fmt_mac(m: Mac) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

// ---------------------------------------------------------------- frames ---

/// A TCP frame with the tag as payload.
pub fn tcp_marked(from: Endpoint, to: Endpoint, sport: u16, dport: u16, tag: &str) -> Vec<u8> {
    wire::tcp(from, to, sport, dport, filter::tcp_flags::SYN, &marked(tag))
}

/// A UDP frame with the tag as payload.
pub fn udp_marked(from: Endpoint, to: Endpoint, sport: u16, dport: u16, tag: &str) -> Vec<u8> {
    wire::udp(from, to, sport, dport, &marked(tag))
}

/// An ARP frame (any field forged) with the tag in its padding.
pub fn arp_marked(
    op: u16,
    eth_dst: Mac,
    eth_src: Mac,
    sender: Endpoint,
    target: Endpoint,
    tag: &str,
) -> Vec<u8> {
    let mut f = wire::arp(op, eth_dst, sender.mac, sender.ip, target.mac, target.ip);
    f[6..12].copy_from_slice(&eth_src);
    f.extend_from_slice(&marked(tag));
    f
}

/// A frame of any ethertype whose payload is the tag (padded to 46 bytes).
pub fn ethertype_marked(dst: Mac, src: Mac, ethertype: u16, tag: &str) -> Vec<u8> {
    let mut p = marked(tag);
    p.resize(46, 0);
    wire::ethernet(dst, src, ethertype, &p)
}

/// DHCP message types.
pub const DHCP_OFFER: u8 = 2;
pub const DHCP_ACK: u8 = 5;

/// A DHCP server message (BOOTREPLY, UDP 67 → 68) from `from` offering
/// `yiaddr` with `from` as router and server, sent to `to` (a MAC and an address,
/// e.g. broadcast), the tag after the end option.
pub fn dhcp_server_marked(
    from: Endpoint,
    to: Endpoint,
    msg_type: u8,
    xid: u32,
    chaddr: Mac,
    yiaddr: Ipv4Addr,
    tag: &str,
) -> Vec<u8> {
    let mut b = vec![2u8, 1, 6, 0];
    b.extend_from_slice(&xid.to_be_bytes());
    b.extend_from_slice(&[0, 0, 0x80, 0]); // secs, flags: broadcast
    b.extend_from_slice(&[0; 4]); // ciaddr
    b.extend_from_slice(&yiaddr.octets());
    b.extend_from_slice(&from.ip.octets()); // siaddr
    b.extend_from_slice(&[0; 4]); // giaddr
    let mut ch = [0u8; 16];
    ch[..6].copy_from_slice(&chaddr);
    b.extend_from_slice(&ch);
    b.extend_from_slice(&[0; 64 + 128]); // sname, file
    b.extend_from_slice(&[99, 130, 83, 99]);
    b.extend_from_slice(&[53, 1, msg_type]);
    b.extend_from_slice(&[54, 4]);
    b.extend_from_slice(&from.ip.octets());
    b.extend_from_slice(&[1, 4, 255, 255, 0, 0]);
    b.extend_from_slice(&[3, 4]);
    b.extend_from_slice(&from.ip.octets());
    b.extend_from_slice(&[51, 4, 0, 0, 0x0e, 0x10]);
    b.push(255);
    b.extend_from_slice(&marked(tag));
    wire::udp(from, to, 67, 68, &b)
}

/// One IPv4 fragment from `from` to `to`: `data` at `offset` (8-byte units) of
/// datagram `id`, with MF as given. `data` is taken verbatim (the caller makes
/// it the slice of an L4 segment it wants the destination to reassemble).
pub fn ip_fragment(
    from: Endpoint,
    to: Endpoint,
    proto: u8,
    id: u16,
    offset: u16,
    more: bool,
    data: &[u8],
) -> Vec<u8> {
    let opts = IpOpts {
        id,
        dont_fragment: false,
        more_fragments: more,
        frag_offset: offset,
        ..IpOpts::default()
    };
    wire::ipv4_frame(from, to, proto, &opts, data)
}

/// A TCP SYN segment `sport → dport` between `from` and `to` (checksum over the
/// whole segment) whose payload is `payload`: the bytes to cut into fragments.
pub fn tcp_segment_bytes(
    from: Endpoint,
    to: Endpoint,
    sport: u16,
    dport: u16,
    payload: &[u8],
) -> Vec<u8> {
    wire::tcp_segment(
        from.ip,
        to.ip,
        sport,
        dport,
        1,
        0,
        filter::tcp_flags::SYN,
        payload,
    )
}

/// An ICMP error (`ty`/`code`) from `from` to `to` quoting the first 28 bytes
/// of a UDP datagram `quoted_src:qsport → quoted_dst:qdport` (as if `to` had
/// sent it), followed by the tag (RFC 1812 lets routers quote more).
#[allow(clippy::too_many_arguments)]
pub fn icmp_error_marked(
    from: Endpoint,
    to: Endpoint,
    ty: u8,
    code: u8,
    quoted_src: Ipv4Addr,
    qsport: u16,
    quoted_dst: Ipv4Addr,
    qdport: u16,
    tag: &str,
) -> Vec<u8> {
    let udp = wire::udp_datagram(quoted_src, quoted_dst, qsport, qdport, b"data");
    let inner = wire::ipv4_packet(
        quoted_src,
        quoted_dst,
        filter::proto::UDP,
        &IpOpts::default(),
        &udp,
    );
    let mut data = inner[..28].to_vec();
    data.extend_from_slice(&marked(tag));
    let msg = wire::icmp_message(ty, code, [0; 4], &data);
    let opts = IpOpts {
        dont_fragment: false,
        ..IpOpts::default()
    };
    wire::ipv4_frame(from, to, filter::proto::ICMP, &opts, &msg)
}

// ------------------------------------------------------------------ lab ---

/// The `attacker` binary next to the test executable's profile dir.
pub fn attacker_bin() -> PathBuf {
    crate::lab::sibling_bin("attacker")
}

/// Write `frames` in order from `eth0` inside `ns`, the whole list `repeat`
/// times; panics unless every write succeeded.
pub fn send(lab: &Lab, ns: &str, frames: &[Vec<u8>], repeat: u32) {
    send_on(lab, ns, "eth0", frames, repeat);
}

/// [`send`] from interface `iface` of `ns` (e.g. the uplink in its namespace).
pub fn send_on(lab: &Lab, ns: &str, iface: &str, frames: &[Vec<u8>], repeat: u32) {
    let bin = attacker_bin();
    let mut args: Vec<String> = vec![
        "send".into(),
        iface.into(),
        "--repeat".into(),
        repeat.to_string(),
    ];
    args.extend(frames.iter().map(|f| hex_encode(f)));
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = lab.exec(
        ns,
        bin.to_str().expect("utf-8 path"),
        &argv,
        Duration::from_secs(20),
    );
    let want = format!("sent {}", frames.len() as u64 * u64::from(repeat));
    assert!(
        o.success() && o.stdout.trim() == want,
        "attacker send in {ns}: {o:?}"
    );
}

/// An `attacker sniff` on `eth0` inside a namespace: the tags of the marked
/// frames that arrived there, as they come.
pub struct Sniffer {
    pub ns: String,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Sniffer {
    /// Start sniffing on `eth0` in `ns` (at most `max_secs`); returns once the
    /// socket is bound.
    pub fn start(ns: &str, max_secs: u64) -> Sniffer {
        Sniffer::start_on(ns, "eth0", max_secs)
    }

    /// Start sniffing on `iface` in `ns` (at most `max_secs`).
    pub fn start_on(ns: &str, iface: &str, max_secs: u64) -> Sniffer {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns])
            .arg(attacker_bin())
            .args(["sniff", iface, "--max-secs", &max_secs.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", describe(&cmd)));
        let stdin = child.stdin.take();
        let out = child.stdout.take().expect("piped stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&lines);
        thread::spawn(move || {
            let mut first = true;
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { return };
                if first {
                    first = false;
                    let _ = tx.send(line);
                    continue;
                }
                sink.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(line);
            }
        });
        let mut s = Sniffer {
            ns: ns.to_owned(),
            child,
            stdin,
            lines,
        };
        match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(l) if l == "ready" => s,
            other => {
                kill_wait(&mut s.child, Duration::ZERO);
                panic!("{} did not start: {other:?}", describe(&cmd));
            }
        }
    }

    /// How many frames tagged `tag` arrived so far.
    pub fn count(&self, tag: &str) -> usize {
        let want = format!("seen {} ", tag_name(tag));
        self.lines
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|l| l.starts_with(&want))
            .count()
    }

    /// Wait (at most `timeout`) until at least `n` frames tagged `tag` arrived.
    pub fn wait_for(&self, tag: &str, n: usize, timeout: Duration) -> bool {
        let end = Instant::now() + timeout;
        while Instant::now() < end {
            if self.count(tag) >= n {
                return true;
            }
            thread::sleep(Duration::from_millis(5));
        }
        self.count(tag) >= n
    }

    /// Offsets (8-byte units) of the IPv4 fragments with id `id` that arrived.
    pub fn frags(&self, id: u16) -> Vec<u16> {
        let want = format!("frag {id} ");
        self.lines
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter_map(|l| l.strip_prefix(&want)?.split(' ').next()?.parse().ok())
            .collect()
    }

    /// Every tag seen so far, with counts.
    pub fn tags(&self) -> BTreeMap<String, usize> {
        let mut m = BTreeMap::new();
        for l in self
            .lines
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
        {
            if let Some(t) = l.strip_prefix("seen ").and_then(|r| r.split(' ').next()) {
                *m.entry(t.to_owned()).or_insert(0) += 1;
            }
        }
        m
    }

    /// Stop (stdin EOF), wait for the final ring drain, and return the tags.
    pub fn stop(mut self) -> BTreeMap<String, usize> {
        drop(self.stdin.take());
        let end = Instant::now() + Duration::from_secs(5);
        while Instant::now() < end {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                break;
            }
            thread::sleep(Duration::from_millis(5));
        }
        // Let the reader thread take the last lines.
        thread::sleep(Duration::from_millis(20));
        self.tags()
    }
}

impl Drop for Sniffer {
    fn drop(&mut self) {
        drop(self.stdin.take());
        kill_wait(&mut self.child, Duration::from_millis(200));
    }
}

/// A running `attacker flood` (see `src/bin/attacker.rs`), killed by PID when
/// dropped.
pub struct Flood {
    child: Child,
    stdin: Option<ChildStdin>,
    pub started: Instant,
}

impl Flood {
    /// Start flooding TCP SYNs from `eth0` of `ns` (`from` is the instance's own
    /// MAC and address) to `to`, each to a new 5-tuple on ports `dports`, for at
    /// most `max_frames` frames and `max_secs` seconds.
    pub fn start(
        ns: &str,
        from: Endpoint,
        to: Endpoint,
        dports: (u16, u16),
        max_frames: u64,
        max_secs: u64,
    ) -> Flood {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns])
            .arg(attacker_bin())
            .args(["flood", "eth0"])
            .args(["--src", &format!("{},{}", fmt_mac(from.mac), from.ip)])
            .args(["--dst", &format!("{},{}", fmt_mac(to.mac), to.ip)])
            .args(["--dports", &format!("{}-{}", dports.0, dports.1)])
            .args(["--max-frames", &max_frames.to_string()])
            .args(["--max-secs", &max_secs.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", describe(&cmd)));
        Flood {
            stdin: child.stdin.take(),
            child,
            started: Instant::now(),
        }
    }

    /// Ask the flood to stop now (EOF on its stdin); [`Flood::finish`] reports.
    pub fn stop(&mut self) {
        drop(self.stdin.take());
    }

    /// Whether the flood still runs.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Wait for the end (at most `timeout`); returns (frames sent, seconds).
    pub fn finish(mut self, timeout: Duration) -> (u64, f64) {
        let end = Instant::now() + timeout;
        while self.running() {
            assert!(
                Instant::now() < end,
                "flood still running after {timeout:?}"
            );
            thread::sleep(Duration::from_millis(10));
        }
        let mut out = String::new();
        let mut err = String::new();
        if let Some(mut o) = self.child.stdout.take() {
            let _ = std::io::Read::read_to_string(&mut o, &mut out);
        }
        if let Some(mut e) = self.child.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut e, &mut err);
        }
        parse_flood_report(&out).unwrap_or_else(|| panic!("flood printed {out:?}, {err:?}"))
    }
}

impl Drop for Flood {
    fn drop(&mut self) {
        drop(self.stdin.take());
        kill_wait(&mut self.child, Duration::ZERO);
    }
}

/// `sent N secs X` → (N, X).
pub fn parse_flood_report(out: &str) -> Option<(u64, f64)> {
    let f: Vec<&str> = out.split_whitespace().collect();
    match f.as_slice() {
        ["sent", n, "secs", x] => Some((n.parse().ok()?, x.parse().ok()?)),
        _ => None,
    }
}

/// The drop counters of `sgswitch stats`, by reason name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Drops(pub BTreeMap<String, u64>);

impl Drops {
    /// Counter `reason` (panics on an unknown name, so a renamed reason fails
    /// loudly instead of reading as 0).
    pub fn get(&self, reason: &str) -> u64 {
        self.try_get(reason)
            .unwrap_or_else(|| panic!("no drop reason {reason:?} in {:?}", self.0.keys()))
    }

    /// Counter `reason`, if the switch has such a reason.
    pub fn try_get(&self, reason: &str) -> Option<u64> {
        self.0.get(reason).copied()
    }

    /// How much `reason` grew since `before`.
    pub fn delta(&self, before: &Drops, reason: &str) -> u64 {
        self.get(reason).saturating_sub(before.get(reason))
    }
}

/// `sgswitch --json stats` as JSON.
pub fn stats_json(lab: &Lab) -> serde_json::Value {
    let out = lab.cli_ok(&["--json", "stats"]);
    let v: serde_json::Value =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("stats JSON: {e}\n{out}"));
    v.get("stats")
        .cloned()
        .unwrap_or_else(|| panic!("no \"stats\" in {out}"))
}

/// Parse the `drops` list (`[{"name": NAME, "count": N}, ...]`, docs/json.md)
/// of a stats report.
pub fn parse_drops(stats: &serde_json::Value) -> Drops {
    let list = stats
        .get("drops")
        .and_then(|d| d.as_array())
        .unwrap_or_else(|| panic!("no drops list in {stats}"));
    Drops(
        list.iter()
            .filter_map(|p| {
                Some((
                    p.get("name")?.as_str()?.to_owned(),
                    p.get("count")?.as_u64()?,
                ))
            })
            .collect(),
    )
}

/// The drop counters now.
pub fn drops(lab: &Lab) -> Drops {
    parse_drops(&stats_json(lab))
}

/// The daemon's tracked flows now.
pub fn conntrack_entries(lab: &Lab) -> u64 {
    stats_json(lab)
        .get("conntrack_entries")
        .and_then(|v| v.as_u64())
        .expect("conntrack_entries in stats")
}

/// The MAC of `eth0` in namespace `ns`.
pub fn mac_of(lab: &Lab, ns: &str) -> Mac {
    mac_of_iface(lab, ns, "eth0")
}

/// The MAC of `iface` in namespace `ns`.
pub fn mac_of_iface(lab: &Lab, ns: &str, iface: &str) -> Mac {
    let path = format!("/sys/class/net/{iface}/address");
    let o = lab.exec(ns, "cat", &[&path], Duration::from_secs(5));
    assert!(o.success(), "read {iface} MAC in {ns}: {o:?}");
    parse_mac(o.stdout.trim()).unwrap_or_else(|e| panic!("{e}"))
}

/// `ip neigh show dev eth0` inside `ns`.
pub fn neighbours(lab: &Lab, ns: &str) -> String {
    let o = lab.exec(
        ns,
        "ip",
        &["neigh", "show", "dev", "eth0"],
        Duration::from_secs(5),
    );
    assert!(o.success(), "ip neigh in {ns}: {o:?}");
    o.stdout
}

/// The MAC `ip neigh` shows for `ip` (any state but FAILED/INCOMPLETE).
pub fn neighbour_mac(table: &str, ip: Ipv4Addr) -> Option<Mac> {
    let want = ip.to_string();
    table.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.first() != Some(&want.as_str()) {
            return None;
        }
        let at = f.iter().position(|w| *w == "lladdr")?;
        parse_mac(f.get(at + 1)?).ok()
    })
}

/// `VmRSS` of process `pid` in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    let text = fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("read /proc/{pid}/status: {e}"));
    status_kib(&text, "VmRSS").unwrap_or_else(|| panic!("no VmRSS for {pid}:\n{text}"))
}

/// A `Name:   N kB` field of `/proc/PID/status`.
pub fn status_kib(text: &str, field: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(field)?.strip_prefix(':')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use filter::parse::{Parsed, parse_frame};
    use filter::{DropReason, Frag, IcmpKind, L4};

    const A: Endpoint = Endpoint::new([2, 0, 0, 0, 0, 0xa], Ipv4Addr::new(172, 31, 0, 10));
    const B: Endpoint = Endpoint::new([2, 0, 0, 0, 0, 0xb], Ipv4Addr::new(172, 31, 0, 11));

    #[test]
    fn hex_round_trip_and_errors() {
        let b = [0u8, 1, 0xab, 0xff];
        assert_eq!(hex_encode(&b), "0001abff");
        assert_eq!(hex_decode("0001ABff").unwrap(), b);
        assert!(hex_decode("abc").is_err());
        assert!(hex_decode("zz").is_err());
    }

    #[test]
    fn macs_parse_and_print() {
        let m = parse_mac("02:00:81:af:a6:5f").unwrap();
        assert_eq!(m, [2, 0, 0x81, 0xaf, 0xa6, 0x5f]);
        assert_eq!(fmt_mac(m), "02:00:81:af:a6:5f");
        assert!(parse_mac("02:00:81:af:a6").is_err());
        assert!(parse_mac("02:00:81:af:a6:zz").is_err());
    }

    #[test]
    fn tags_are_found_in_every_kind_of_frame() {
        let frames = [
            tcp_marked(A, B, 1000, 80, "tcp"),
            udp_marked(A, B, 1000, 9999, "udp"),
            arp_marked(2, B.mac, A.mac, A, B, "arp"),
            ethertype_marked(B.mac, A.mac, 0x88b5, "local"),
            dhcp_server_marked(A, B, DHCP_OFFER, 7, B.mac, B.ip, "dhcp"),
            icmp_error_marked(A, B, 3, 3, B.ip, 7001, A.ip, 4444, "icmp"),
        ];
        let want = ["tcp", "udp", "arp", "local", "dhcp", "icmp"];
        for (f, t) in frames.iter().zip(want) {
            assert_eq!(find_tag(f), Some(tag_name(t).as_bytes()), "{t}");
        }
        assert_eq!(find_tag(&wire::udp(A, B, 1, 2, b"plain")), None);
        assert_eq!(tag_name("abcdefghij"), "abcdefgh");
    }

    #[test]
    fn crafted_frames_parse_as_intended() {
        // The forged ARP keeps its forged sender and the Ethernet source given.
        let f = arp_marked(2, B.mac, A.mac, Endpoint::new(A.mac, B.ip), B, "x");
        let Ok(Parsed::Arp { eth, arp }) = parse_frame(&f) else {
            panic!("not ARP")
        };
        assert_eq!((eth.src, arp.sha, arp.spa), (A.mac, A.mac, B.ip));

        let f = dhcp_server_marked(A, B, DHCP_ACK, 7, B.mac, B.ip, "x");
        let Ok(Parsed::Ipv4 { pkt, .. }) = parse_frame(&f) else {
            panic!("not IPv4")
        };
        assert_eq!((pkt.key.sport, pkt.key.dport), (67, 68));

        let f = icmp_error_marked(A, B, 3, 3, B.ip, 7001, A.ip, 4444, "x");
        let Ok(Parsed::Ipv4 { pkt, .. }) = parse_frame(&f) else {
            panic!("not IPv4")
        };
        let L4::Icmp {
            kind: IcmpKind::Error { inner },
            ..
        } = pkt.l4
        else {
            panic!("not an ICMP error: {:?}", pkt.l4)
        };
        assert_eq!((inner.src, inner.sport), (B.ip, 7001));
        assert_eq!((inner.dst, inner.dport), (A.ip, 4444));
    }

    #[test]
    fn fragments_parse_as_intended() {
        let seg = tcp_segment_bytes(A, B, 1000, 22, &marked("frag"));
        // A first fragment of 8 bytes cannot hold the TCP header.
        let tiny = ip_fragment(A, B, filter::proto::TCP, 9, 0, true, &seg[..8]);
        assert_eq!(parse_frame(&tiny).err(), Some(DropReason::TinyFragment));
        // The rest at offset 1 (8 bytes) is the RFC 1858 overlap.
        let rest = ip_fragment(A, B, filter::proto::TCP, 9, 1, false, &seg[8..]);
        assert_eq!(parse_frame(&rest).err(), Some(DropReason::TinyFragment));
        let later = ip_fragment(A, B, filter::proto::TCP, 9, 3, false, &seg[24..]);
        let Ok(Parsed::Ipv4 { pkt, .. }) = parse_frame(&later) else {
            panic!("later fragment")
        };
        assert_eq!(pkt.frag, Frag::Later { id: 9 });
        let first = ip_fragment(A, B, filter::proto::TCP, 9, 0, true, &seg[..24]);
        let Ok(Parsed::Ipv4 { pkt, .. }) = parse_frame(&first) else {
            panic!("first fragment")
        };
        assert_eq!((pkt.frag, pkt.key.dport), (Frag::First { id: 9 }, 22));
    }

    #[test]
    fn drops_and_status_parse() {
        let v: serde_json::Value = serde_json::from_str(
            r#"{"drops": [{"name": "spoofed_ip", "count": 3}, {"name": "no_rule", "count": 0}], "conntrack_entries": 5}"#,
        )
        .unwrap();
        let d = parse_drops(&v);
        assert_eq!(d.get("spoofed_ip"), 3);
        let before = Drops([("spoofed_ip".to_string(), 1), ("no_rule".into(), 0)].into());
        assert_eq!(d.delta(&before, "spoofed_ip"), 2);
        assert_eq!(d.try_get("nosuch"), None);
        let status = "Name:\tsgswitch\nVmHWM:\t  90000 kB\nVmRSS:\t   81234 kB\n";
        assert_eq!(status_kib(status, "VmRSS"), Some(81234));
        assert_eq!(status_kib(status, "VmHWM"), Some(90000));
        assert_eq!(status_kib(status, "VmSwap"), None);
    }

    #[test]
    fn flood_report_parses() {
        assert_eq!(parse_flood_report("sent 12 secs 0.500\n"), Some((12, 0.5)));
        assert_eq!(parse_flood_report("sent 12\n"), None);
    }

    #[test]
    fn neighbour_table_parses() {
        let t = "172.31.0.3 lladdr 02:00:11:22:33:44 REACHABLE\n\
                 172.31.0.1 lladdr 02:53:47:57:00:01 STALE\n\
                 172.31.0.9  FAILED\n";
        assert_eq!(
            neighbour_mac(t, Ipv4Addr::new(172, 31, 0, 1)),
            Some([0x02, 0x53, 0x47, 0x57, 0, 1])
        );
        assert_eq!(neighbour_mac(t, Ipv4Addr::new(172, 31, 0, 9)), None);
        assert_eq!(neighbour_mac(t, Ipv4Addr::new(172, 31, 0, 30)), None);
    }
}
