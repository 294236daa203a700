//! `attacker`: the hostile-guest tool of the spoofing and exhaustion tests. It
//! runs inside an instance namespace (`ip netns exec NS attacker ...`) and talks
//! Ethernet directly through the datapath's own safe AF_PACKET port
//! ([`switch::afpacket`], no `vnet_hdr`), so it can write frames the instance's
//! kernel would never send (forged MACs and addresses, ARP, DHCP server
//! messages, VLAN tags, odd ethertypes, crafted fragments) and see every frame
//! that reaches an interface.
//!
//! Modes (every one bounded in time and count, so a forgotten process cannot
//! linger):
//!
//! * `send IFACE [--repeat N] [--gap-us G] HEX...` — writes every frame (given
//!   in hex, built by the test with [`e2e::attack`]) in argument order, the whole
//!   list `N` times (default 1, at most 100000), sleeping `G` µs between rounds;
//!   prints `sent K` (frames the kernel accepted) and exits 1 if any write failed.
//! * `sniff IFACE [--max-secs S]` — prints `ready` once the socket is bound, then
//!   `seen TAG LEN` for every received frame that carries the marker
//!   [`e2e::attack::MARKER`] followed by an 8-byte tag, until stdin reaches EOF or
//!   `S` seconds (default 60) pass; then `done N` (frames received in all).
//!   Untagged IPv4 fragments are also listed as `frag ID OFFSET LEN`. Frames
//!   the namespace itself sends are not seen (`PACKET_IGNORE_OUTGOING`).
//! * `flood IFACE --src MAC,IP --dst MAC,IP --dports A-B [--max-frames N]
//!   [--max-secs S]` — TCP SYNs as fast as one core writes them, each the first
//!   packet of a new flow: frame `i` goes to port `A + i mod (B-A+1)` from source
//!   port `1024 + i div (B-A+1)`. Stops after `N` frames (default 200000, at most
//!   2000000), `S` seconds (default 8, at most 60) or at EOF on stdin, whichever
//!   comes first; prints `sent K secs X`.
//!
//! Exit status: 0 on success, 2 on a usage error, 1 when the port cannot be
//! opened or a write fails.

use std::io::{self, Read};
use std::net::Ipv4Addr;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use e2e::attack::{find_tag, hex_decode, parse_mac};
use filter::tcp_flags;
use filter::wire::{self, Endpoint};
use switch::afpacket::{AfPacketConfig, AfPacketQueue, open_afpacket_with};
use switch::port::{PortQueue, VnetHdr};

const MAX_REPEAT: u64 = 100_000;
const MAX_FLOOD_FRAMES: u64 = 2_000_000;
const MAX_SECS: u64 = 60;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((mode, rest)) = args.split_first() else {
        return usage("no mode given");
    };
    let opts = match Opts::parse(rest) {
        Ok(o) => o,
        Err(e) => return usage(&e),
    };
    let res = match mode.as_str() {
        "send" => send(&opts),
        "sniff" => sniff(&opts),
        "flood" => flood(&opts),
        other => return usage(&format!("unknown mode {other:?}")),
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Usage(e)) => usage(&e),
        Err(Failure::Run(e)) => {
            eprintln!("attacker {mode}: {e}");
            ExitCode::from(1)
        }
    }
}

fn usage(why: &str) -> ExitCode {
    eprintln!("attacker: {why}");
    eprintln!(
        "usage: attacker send IFACE [--repeat N] [--gap-us G] HEX... | sniff IFACE [--max-secs S] | flood IFACE --src MAC,IP --dst MAC,IP --dports A-B [--max-frames N] [--max-secs S]"
    );
    ExitCode::from(2)
}

enum Failure {
    Usage(String),
    Run(String),
}

/// Options of all modes; positional arguments stay in `args` (the first is the
/// interface).
#[derive(Default)]
struct Opts {
    repeat: Option<u64>,
    gap_us: u64,
    max_secs: Option<u64>,
    max_frames: Option<u64>,
    src: Option<String>,
    dst: Option<String>,
    dports: Option<String>,
    args: Vec<String>,
}

impl Opts {
    fn parse(raw: &[String]) -> Result<Opts, String> {
        let mut o = Opts::default();
        let mut it = raw.iter();
        while let Some(a) = it.next() {
            let mut value = |name: &str| {
                it.next()
                    .cloned()
                    .ok_or_else(|| format!("{name} needs a value"))
            };
            let num =
                |name: &str, v: String| v.parse::<u64>().map_err(|e| format!("{name} {v:?}: {e}"));
            match a.as_str() {
                "--repeat" => o.repeat = Some(num(a, value(a)?)?),
                "--gap-us" => o.gap_us = num(a, value(a)?)?,
                "--max-secs" => o.max_secs = Some(num(a, value(a)?)?),
                "--max-frames" => o.max_frames = Some(num(a, value(a)?)?),
                "--src" => o.src = Some(value(a)?),
                "--dst" => o.dst = Some(value(a)?),
                "--dports" => o.dports = Some(value(a)?),
                s if s.starts_with("--") => return Err(format!("unknown option {s}")),
                _ => o.args.push(a.clone()),
            }
        }
        Ok(o)
    }

    fn iface(&self) -> Result<&str, Failure> {
        self.args
            .first()
            .map(String::as_str)
            .ok_or_else(|| Failure::Usage("no interface given".into()))
    }
}

/// One plain (no `vnet_hdr`) AF_PACKET queue on `iface`.
fn open(iface: &str) -> Result<AfPacketQueue, Failure> {
    let cfg = AfPacketConfig {
        vnet_hdr: false,
        ..AfPacketConfig::default()
    };
    let mut qs = open_afpacket_with(iface, 1, cfg)
        .map_err(|e| Failure::Run(format!("open AF_PACKET on {iface}: {e}")))?;
    qs.pop()
        .ok_or_else(|| Failure::Run(format!("no queue on {iface}")))
}

fn send(o: &Opts) -> Result<(), Failure> {
    let iface = o.iface()?;
    let frames = o.args[1..]
        .iter()
        .map(|h| hex_decode(h).map_err(Failure::Usage))
        .collect::<Result<Vec<_>, _>>()?;
    if frames.is_empty() {
        return Err(Failure::Usage("no frames given".into()));
    }
    let repeat = o.repeat.unwrap_or(1).clamp(1, MAX_REPEAT);
    let q = open(iface)?;
    let mut sent = 0u64;
    let mut failed = None;
    for round in 0..repeat {
        if round > 0 && o.gap_us > 0 {
            thread::sleep(Duration::from_micros(o.gap_us));
        }
        for f in &frames {
            match q.send(f, &VnetHdr::default()) {
                Ok(()) => sent += 1,
                Err(e) => failed = Some(format!("write of a {}-byte frame: {e}", f.len())),
            }
        }
    }
    println!("sent {sent}");
    match failed {
        Some(e) => Err(Failure::Run(e)),
        None => Ok(()),
    }
}

fn sniff(o: &Opts) -> Result<(), Failure> {
    let iface = o.iface()?;
    let max = Duration::from_secs(o.max_secs.unwrap_or(60).min(MAX_SECS));
    let q = open(iface)?;
    let stop = stop_on_eof();
    println!("ready");
    let start = Instant::now();
    let mut buf = vec![0u8; 65_536 + 64];
    let mut total = 0u64;
    while !stop.load(Ordering::Relaxed) && start.elapsed() < max {
        match q.recv(&mut buf) {
            Ok(Some((n, _))) => {
                total += 1;
                report(&buf[..n]);
            }
            Ok(None) => thread::sleep(Duration::from_millis(1)),
            Err(e) => return Err(Failure::Run(format!("receive on {iface}: {e}"))),
        }
    }
    // Whatever is still in the ring arrived before we were told to stop.
    while let Ok(Some((n, _))) = q.recv(&mut buf) {
        total += 1;
        report(&buf[..n]);
    }
    println!("done {total}");
    Ok(())
}

/// A flag raised when stdin reaches EOF (or fails): the test is done with us.
fn stop_on_eof() -> Arc<AtomicBool> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    thread::spawn(move || {
        let mut sink = [0u8; 256];
        while matches!(io::stdin().read(&mut sink), Ok(n) if n > 0) {}
        flag.store(true, Ordering::Relaxed);
    });
    stop
}

/// Print what the tests look for in one received frame: its tag, and for an
/// untagged IPv4 fragment its id and offset (fragments too short for a tag are
/// told apart by id).
fn report(frame: &[u8]) {
    if let Some(tag) = find_tag(frame) {
        println!("seen {} {}", String::from_utf8_lossy(tag), frame.len());
    }
    if let Some((id, off)) = fragment_of(frame) {
        println!("frag {id} {off} {}", frame.len());
    }
}

/// `(ip id, offset in 8-byte units)` of an untagged IPv4 fragment.
fn fragment_of(frame: &[u8]) -> Option<(u16, u16)> {
    if frame.get(12..14)? != [0x08, 0x00] {
        return None;
    }
    let ip = frame.get(14..34)?;
    let id = u16::from_be_bytes([ip[4], ip[5]]);
    let fo = u16::from_be_bytes([ip[6], ip[7]]);
    (fo & 0x3fff != 0).then_some((id, fo & 0x1fff))
}

/// `MAC,IP` as an [`Endpoint`].
fn endpoint(name: &str, v: Option<&String>) -> Result<Endpoint, Failure> {
    let v = v.ok_or_else(|| Failure::Usage(format!("{name} MAC,IP is required")))?;
    let (mac, ip) = v
        .split_once(',')
        .ok_or_else(|| Failure::Usage(format!("{name} {v:?}: want MAC,IP")))?;
    let mac = parse_mac(mac).map_err(Failure::Usage)?;
    let ip: Ipv4Addr = ip
        .parse()
        .map_err(|e| Failure::Usage(format!("{name} address {ip:?}: {e}")))?;
    Ok(Endpoint::new(mac, ip))
}

fn flood(o: &Opts) -> Result<(), Failure> {
    let iface = o.iface()?;
    let src = endpoint("--src", o.src.as_ref())?;
    let dst = endpoint("--dst", o.dst.as_ref())?;
    let range = o
        .dports
        .as_deref()
        .ok_or_else(|| Failure::Usage("--dports A-B is required".into()))?;
    let (lo, hi) = range
        .split_once('-')
        .and_then(|(a, b)| Some((a.parse::<u16>().ok()?, b.parse::<u16>().ok()?)))
        .filter(|(a, b)| a <= b)
        .ok_or_else(|| Failure::Usage(format!("--dports {range:?}: want A-B, A <= B")))?;
    let span = u64::from(hi - lo) + 1;
    let max_frames = o
        .max_frames
        .unwrap_or(200_000)
        .min(MAX_FLOOD_FRAMES)
        .min(span * 64_000);
    let max = Duration::from_secs(o.max_secs.unwrap_or(8).min(MAX_SECS));
    let q = open(iface)?;
    let stop = stop_on_eof();
    let start = Instant::now();
    let mut sent = 0u64;
    for i in 0..max_frames {
        if i % 1024 == 0 && (start.elapsed() >= max || stop.load(Ordering::Relaxed)) {
            break;
        }
        let dport = lo + u16::try_from(i % span).unwrap_or(0);
        let sport = 1024 + u16::try_from(i / span).unwrap_or(0);
        let f = wire::tcp(src, dst, sport, dport, tcp_flags::SYN, &[]);
        // A full TAP queue drops silently; an error here is a real failure.
        q.send(&f, &VnetHdr::default())
            .map_err(|e| Failure::Run(format!("write SYN {sport}->{dport}: {e}")))?;
        sent += 1;
    }
    println!("sent {sent} secs {:.3}", start.elapsed().as_secs_f64());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(a: &[&str]) -> Opts {
        Opts::parse(&a.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn options_parse() {
        let o = opts(&["eth0", "--repeat", "3", "--gap-us", "50", "aabb"]);
        assert_eq!(o.repeat, Some(3));
        assert_eq!(o.gap_us, 50);
        assert_eq!(o.args, ["eth0", "aabb"]);
        assert!(Opts::parse(&["--repeat".to_string()]).is_err());
        assert!(Opts::parse(&["--bogus".to_string()]).is_err());
    }

    #[test]
    fn endpoints_parse() {
        let v = "02:00:00:00:00:0a,172.31.0.10".to_string();
        let e = endpoint("--src", Some(&v)).ok().unwrap();
        assert_eq!(e.mac, [2, 0, 0, 0, 0, 0xa]);
        assert_eq!(e.ip, Ipv4Addr::new(172, 31, 0, 10));
        let bad = "02:00:00:00:00:0a".to_string();
        assert!(endpoint("--src", Some(&bad)).is_err());
    }

    #[test]
    fn fragments_are_recognised() {
        let a = Endpoint::new([2, 0, 0, 0, 0, 0xa], Ipv4Addr::new(172, 31, 0, 10));
        let b = Endpoint::new([2, 0, 0, 0, 0, 0xb], Ipv4Addr::new(172, 31, 0, 11));
        let seg = e2e::attack::tcp_segment_bytes(a, b, 1, 80, &[0; 32]);
        let first = e2e::attack::ip_fragment(a, b, 6, 0xa001, 0, true, &seg[..24]);
        let last = e2e::attack::ip_fragment(a, b, 6, 0xa001, 3, false, &seg[24..]);
        assert_eq!(fragment_of(&first), Some((0xa001, 0)));
        assert_eq!(fragment_of(&last), Some((0xa001, 3)));
        assert_eq!(fragment_of(&wire::udp(a, b, 1, 2, b"x")), None);
        assert_eq!(fragment_of(&first[..20]), None);
    }

    #[test]
    fn marker_constants_agree() {
        assert_eq!(e2e::attack::MARKER.len() + e2e::attack::TAG_LEN, 14);
    }
}
