//! `loadgen`: the UDP traffic generator and counting receiver of the load tests
//! (`ip netns exec NS loadgen ...`), built so that a test can judge every single
//! packet against the rules in force when it was sent.
//!
//! Modes (each bounded in time and count):
//!
//! * `send --from IP --dst IP --ports P,P,... [--rate PPS] [--count N] [--secs S]
//!   [--sport-base B] [--id K]` — sends up to `N` UDP datagrams at `PPS` per second
//!   (for at most `S` seconds) from `IP` to `dst`, the destination ports taken
//!   round-robin from the list. Every datagram gets a **new 5-tuple**: packet `i`
//!   goes to `ports[i % len]` from source port `B + i / len`, so the switch judges
//!   each as the first packet of a flow by the rules in force at that moment. It
//!   is written on a raw socket (`SOCK_RAW`/`IPPROTO_UDP`: the kernel adds the IP
//!   header, we write the UDP header with a correct checksum), so no socket has to
//!   be bound per source port. The payload carries `(K, seq, send time, dport)`
//!   ([`Payload`]); the send time is `CLOCK_MONOTONIC` in ns, shared with the test
//!   process, read right before the `sendto`. At the end it prints
//!   `sent N failed F secs X`, then `S K SEQ SEND_NS DPORT SPORT` for every
//!   datagram the kernel accepted (a failed `sendto` is counted, not listed, so it
//!   can never be mistaken for a packet the switch dropped).
//! * `recv [--secs S] PORT...` — binds UDP on `0.0.0.0:PORT` for every port (receive
//!   buffers forced to 16 MiB), prints `listening`, then records every datagram
//!   with its arrival time (`CLOCK_MONOTONIC`) until stdin reaches EOF or `S`
//!   seconds (default 60) pass. Then prints `R K SEQ SEND_NS DPORT SPORT RECV_NS SRC`
//!   per datagram (`DPORT` is the port it arrived on), `BAD PORT SRC LEN` for a
//!   datagram whose payload is not ours or names another port, and `end N`.
//!
//! Exit status: 0 on success, 2 on a usage error, 1 when a socket cannot be set up.

use std::io::{self, BufRead, Write};
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use e2e::load::{Payload, mono_ns};
use nix::sys::socket::{
    AddressFamily, MsgFlags, SockFlag, SockProtocol, SockType, SockaddrIn, bind, sendto,
    setsockopt, socket, sockopt,
};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((mode, rest)) = args.split_first() else {
        return usage("no mode given");
    };
    let opts = match Opts::parse(rest) {
        Ok(o) => o,
        Err(e) => return usage(&e),
    };
    match mode.as_str() {
        "send" => send(&opts),
        "recv" => recv(&opts),
        other => usage(&format!("unknown mode {other:?}")),
    }
}

fn usage(why: &str) -> ExitCode {
    eprintln!("loadgen: {why}");
    eprintln!(
        "usage: loadgen send --from IP --dst IP --ports P,P.. [--rate PPS] [--count N] [--secs S] [--sport-base B] [--id K] | recv [--secs S] PORT..."
    );
    ExitCode::from(2)
}

struct Opts {
    from: Option<Ipv4Addr>,
    dst: Option<Ipv4Addr>,
    ports: Vec<u16>,
    rate: u64,
    count: u64,
    secs: u64,
    sport_base: u16,
    id: u16,
    args: Vec<String>,
}

impl Opts {
    fn parse(raw: &[String]) -> Result<Opts, String> {
        let mut o = Opts {
            from: None,
            dst: None,
            ports: Vec::new(),
            rate: 1000,
            count: 10_000,
            secs: 60,
            sport_base: 1024,
            id: 0,
            args: Vec::new(),
        };
        let mut it = raw.iter();
        while let Some(a) = it.next() {
            let mut value = || {
                it.next()
                    .cloned()
                    .ok_or_else(|| format!("{a} needs a value"))
            };
            let num = |v: String| {
                v.parse::<u64>()
                    .map_err(|_| format!("{a}: not a number: {v:?}"))
            };
            let ip = |v: String| {
                v.parse::<Ipv4Addr>()
                    .map_err(|_| format!("{a}: bad address {v:?}"))
            };
            match a.as_str() {
                "--from" => o.from = Some(ip(value()?)?),
                "--dst" => o.dst = Some(ip(value()?)?),
                "--ports" => {
                    o.ports = value()?
                        .split(',')
                        .map(|p| p.parse::<u16>().map_err(|_| format!("bad port {p:?}")))
                        .collect::<Result<_, _>>()?;
                }
                "--rate" => o.rate = num(value()?)?.max(1),
                "--count" => o.count = num(value()?)?,
                "--secs" => o.secs = num(value()?)?,
                "--sport-base" => {
                    o.sport_base = u16::try_from(num(value()?)?)
                        .map_err(|_| "--sport-base: not a port".to_string())?;
                }
                "--id" => {
                    o.id = u16::try_from(num(value()?)?)
                        .map_err(|_| "--id: out of range".to_string())?;
                }
                _ => o.args.push(a.clone()),
            }
        }
        Ok(o)
    }
}

/// Internet checksum of a UDP datagram over IPv4 (RFC 768 pseudo header).
fn udp_checksum(src: Ipv4Addr, dst: Ipv4Addr, udp: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    let mut add = |b: &[u8]| {
        for c in b.chunks(2) {
            let w = if c.len() == 2 {
                u16::from_be_bytes([c[0], c[1]])
            } else {
                u16::from_be_bytes([c[0], 0])
            };
            sum += u32::from(w);
        }
    };
    add(&src.octets());
    add(&dst.octets());
    add(&[0, 17]);
    add(&(udp.len() as u16).to_be_bytes());
    add(udp);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    match !(sum as u16) {
        0 => 0xffff,
        c => c,
    }
}

fn send(o: &Opts) -> ExitCode {
    let (Some(from), Some(dst)) = (o.from, o.dst) else {
        return usage("send needs --from and --dst");
    };
    if o.ports.is_empty() {
        return usage("send needs --ports");
    }
    let nports = o.ports.len() as u64;
    // Every packet its own source port: the count must fit the port space.
    let max = (u64::from(u16::MAX) - u64::from(o.sport_base) + 1) * nports;
    if o.count > max {
        return usage(&format!(
            "--count {} needs more than the {max} source ports above {}",
            o.count, o.sport_base
        ));
    }
    let fd = match socket(
        AddressFamily::Inet,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::Udp,
    ) {
        Ok(fd) => fd,
        Err(e) => {
            eprintln!("loadgen: raw UDP socket: {e}");
            return ExitCode::from(1);
        }
    };
    if let Err(e) = bind(
        fd.as_raw_fd(),
        &SockaddrIn::from(SocketAddrV4::new(from, 0)),
    ) {
        eprintln!("loadgen: bind raw socket to {from}: {e}");
        return ExitCode::from(1);
    }
    let to = SockaddrIn::from(SocketAddrV4::new(dst, 0));
    let mut log: Vec<(u64, u64, u16, u16)> = Vec::with_capacity(o.count as usize);
    let mut failed = 0u64;
    let mut buf = [0u8; 8 + Payload::LEN + 16];
    let start = Instant::now();
    let end = start + Duration::from_secs(o.secs);
    let period_ns = 1_000_000_000 / o.rate;
    for seq in 0..o.count {
        let due = start + Duration::from_nanos(seq * period_ns);
        let now = Instant::now();
        if now >= end {
            break;
        }
        if due > now {
            thread::sleep(due - now);
        }
        let dport = o.ports[(seq % nports) as usize];
        let sport = o.sport_base + (seq / nports) as u16;
        let sent_ns = mono_ns();
        let payload = Payload {
            sender: o.id,
            seq,
            sent_ns,
            dport,
        };
        let len = buf.len() as u16;
        buf[0..2].copy_from_slice(&sport.to_be_bytes());
        buf[2..4].copy_from_slice(&dport.to_be_bytes());
        buf[4..6].copy_from_slice(&len.to_be_bytes());
        buf[6..8].copy_from_slice(&[0, 0]);
        payload.write(&mut buf[8..8 + Payload::LEN]);
        let ck = udp_checksum(from, dst, &buf);
        buf[6..8].copy_from_slice(&ck.to_be_bytes());
        match sendto(fd.as_raw_fd(), &buf, &to, MsgFlags::empty()) {
            Ok(_) => log.push((seq, sent_ns, dport, sport)),
            Err(_) => failed += 1,
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let mut out = io::BufWriter::new(io::stdout().lock());
    let _ = writeln!(out, "sent {} failed {failed} secs {secs:.3}", log.len());
    for (seq, t, dport, sport) in log {
        let _ = writeln!(out, "S {} {seq} {t} {dport} {sport}", o.id);
    }
    let _ = out.flush();
    ExitCode::SUCCESS
}

/// One datagram as the receiver saw it.
struct Got {
    port: u16,
    src: SocketAddrV4,
    recv_ns: u64,
    payload: Option<Payload>,
    len: usize,
}

fn recv(o: &Opts) -> ExitCode {
    let mut socks = Vec::new();
    for p in &o.args {
        let Ok(port) = p.parse::<u16>() else {
            return usage(&format!("bad port {p:?}"));
        };
        let s = match UdpSocket::bind((Ipv4Addr::UNSPECIFIED, port)) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("loadgen: bind udp port {port}: {e}");
                return ExitCode::from(1);
            }
        };
        if let Err(e) = setsockopt(&s, sockopt::RcvBufForce, &(16 << 20)) {
            eprintln!("loadgen: SO_RCVBUFFORCE on port {port}: {e}");
            return ExitCode::from(1);
        }
        let _ = s.set_read_timeout(Some(Duration::from_millis(50)));
        socks.push((port, s));
    }
    if socks.is_empty() {
        return usage("recv needs at least one port");
    }
    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = socks
        .into_iter()
        .map(|(port, s)| {
            let stop = Arc::clone(&stop);
            thread::spawn(move || {
                let mut got = Vec::new();
                let mut buf = [0u8; 2048];
                // Drain what is queued even after the stop, until a read times out.
                loop {
                    match s.recv_from(&mut buf) {
                        Ok((n, std::net::SocketAddr::V4(src))) => got.push(Got {
                            port,
                            src,
                            recv_ns: mono_ns(),
                            payload: Payload::read(&buf[..n]),
                            len: n,
                        }),
                        Ok(_) => {}
                        Err(_) if stop.load(Ordering::Relaxed) => return got,
                        Err(_) => {}
                    }
                }
            })
        })
        .collect();
    println!("listening");
    let _ = io::stdout().flush();
    let deadline = Instant::now() + Duration::from_secs(o.secs);
    let eof = Arc::new(AtomicBool::new(false));
    {
        let eof = Arc::clone(&eof);
        thread::spawn(move || {
            let mut line = String::new();
            while matches!(io::stdin().lock().read_line(&mut line), Ok(n) if n > 0) {
                line.clear();
            }
            eof.store(true, Ordering::Relaxed);
        });
    }
    while !eof.load(Ordering::Relaxed) && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, Ordering::Relaxed);
    let mut out = io::BufWriter::new(io::stdout().lock());
    let mut n = 0usize;
    for r in readers {
        for g in r.join().unwrap_or_default() {
            n += 1;
            match g.payload {
                Some(p) if p.dport == g.port => {
                    let _ = writeln!(
                        out,
                        "R {} {} {} {} {} {} {}",
                        p.sender,
                        p.seq,
                        p.sent_ns,
                        g.port,
                        g.src.port(),
                        g.recv_ns,
                        g.src.ip()
                    );
                }
                _ => {
                    let _ = writeln!(out, "BAD {} {} {}", g.port, g.src, g.len);
                }
            }
        }
    }
    let _ = writeln!(out, "end {n}");
    let _ = out.flush();
    ExitCode::SUCCESS
}
