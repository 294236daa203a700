//! `flowgen`: small-UDP load generator and the counting receiver of the
//! end-to-end benchmark.
//!
//! ```text
//! flowgen send --dst IP [--threads 2] [--count N] [--secs S] [--fixed]
//!              [--dport-base 1024] [--dport-span 60000] [--sport-base 20000] [--size 18]
//! flowgen count [--iface eth0] [--secs 10] [--idle-ms 300] [--interval-us 500]
//! ```
//!
//! Contract:
//! * `send` runs `--threads` sender threads, started together, each with its own
//!   UDP sockets, sending `--size`-byte datagrams to `--dst` (an IPv4 or an
//!   IPv6 address: the sockets are of its family) as fast as the
//!   kernel takes them until `--count` datagrams in all (split evenly) or
//!   `--secs` seconds, whichever comes first (both bounded: the default count
//!   is 10 million, the default time 10 s).
//!   * new-flow mode (default): every datagram has a 5-tuple never used before
//!     in this run: destination ports cycle through `--dport-span` ports from
//!     `--dport-base`, and each thread takes a new source port (a new socket)
//!     whenever its destination ports wrap; source ports are
//!     `sport-base + thread + threads * k`, so threads never collide. Runs that
//!     must not meet each other's flows use different `--sport-base`s.
//!   * `--fixed`: one flow per thread (source port `sport-base + thread`,
//!     destination port `dport-base`), for packets-per-second runs.
//!
//!   Datagrams go out in batches of 32 per `sendmmsg(2)` (the generator should
//!   not be the limit). A send the kernel refuses (`ENOBUFS`/`EAGAIN`: a full
//!   queue) is counted as an error, not as sent. Prints one line:
//!   `flowgen: sent N errors E secs S pps R`.
//! * `count` counts frames *received* by interface `--iface` of the namespace it
//!   runs in (its `rx_packets` counter, sampled every `--interval-us`): it prints
//!   `flowgen: ready`, waits for the counter to move, and stops `--idle-ms` after
//!   it last moved (or after `--secs`). It prints
//!   `flowgen: received N window_s W pps R`, the window running from the last
//!   sample before the first increase to the sample of the last one, so the rate
//!   is never overstated. Receiving by counter means no socket or listener is
//!   needed and the receiving stack's cost is what any receiver pays.

use std::fs::File;
use std::io::IoSlice;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, UdpSocket};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use nix::sys::socket::{
    ControlMessage, MsgFlags, MultiHeaders, SockaddrIn, SockaddrIn6, SockaddrLike, sendmmsg,
};

#[derive(Parser, Debug)]
#[command(about = "Small-UDP new-flow generator and counting receiver")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Send small UDP datagrams (a new 5-tuple each unless --fixed).
    Send(SendArgs),
    /// Count frames received by an interface until it goes idle.
    Count(CountArgs),
}

#[derive(clap::Args, Debug, Clone)]
struct SendArgs {
    /// IPv4 or IPv6 destination.
    #[arg(long)]
    dst: IpAddr,
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Datagrams in all (bounded).
    #[arg(long, default_value_t = 10_000_000)]
    count: u64,
    /// Seconds at most.
    #[arg(long, default_value_t = 10.0)]
    secs: f64,
    /// One flow per thread instead of a new 5-tuple per datagram.
    #[arg(long)]
    fixed: bool,
    #[arg(long, default_value_t = 1024)]
    dport_base: u16,
    #[arg(long, default_value_t = 60_000)]
    dport_span: u16,
    #[arg(long, default_value_t = 20_000)]
    sport_base: u16,
    /// UDP payload bytes.
    #[arg(long, default_value_t = 18)]
    size: usize,
}

#[derive(clap::Args, Debug, Clone)]
struct CountArgs {
    #[arg(long, default_value = "eth0")]
    iface: String,
    /// Seconds at most.
    #[arg(long, default_value_t = 10.0)]
    secs: f64,
    /// Stop this long after the counter last moved.
    #[arg(long, default_value_t = 300)]
    idle_ms: u64,
    /// Sampling interval.
    #[arg(long, default_value_t = 500)]
    interval_us: u64,
}

#[derive(Debug, thiserror::Error)]
enum GenError {
    #[error("bind UDP socket to source port {port}")]
    Bind {
        port: u16,
        #[source]
        source: std::io::Error,
    },
    #[error("send to {dst}")]
    Send {
        dst: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid arguments: {0}")]
    Args(String),
    #[error("read {path}")]
    Counter {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("counter {path} holds {text:?}, not a number")]
    CounterText { path: String, text: String },
}

/// What one sender thread did.
#[derive(Debug, Default, Clone, Copy)]
struct Sent {
    sent: u64,
    errors: u64,
}

/// The source and destination port of datagram `i` of thread `t` (new-flow
/// mode): see the module docs.
fn tuple_of(a: &SendArgs, t: usize, i: u64) -> (u16, u16) {
    let span = u64::from(a.dport_span.max(1));
    let dport = a.dport_base as u64 + i % span;
    let k = i / span;
    let sport = a.sport_base as u64 + t as u64 + a.threads as u64 * k;
    (sport as u16, dport as u16)
}

/// A UDP socket of `dst`'s family bound to source port `port`.
fn bind(dst: IpAddr, port: u16) -> Result<UdpSocket, GenError> {
    let any: SocketAddr = match dst {
        IpAddr::V4(_) => SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port).into(),
        IpAddr::V6(_) => SocketAddrV6::new(Ipv6Addr::UNSPECIFIED, port, 0, 0).into(),
    };
    UdpSocket::bind(any).map_err(|source| GenError::Bind { port, source })
}

/// A destination socket address for `sendmmsg(2)` (IPv4 or IPv6).
trait Dst: SockaddrLike + Copy {
    fn new(ip: IpAddr, port: u16) -> Self;
}

impl Dst for SockaddrIn {
    fn new(ip: IpAddr, port: u16) -> Self {
        let IpAddr::V4(ip) = ip else {
            unreachable!("an IPv4 sender is only made for an IPv4 destination")
        };
        SockaddrIn::from(SocketAddrV4::new(ip, port))
    }
}

impl Dst for SockaddrIn6 {
    fn new(ip: IpAddr, port: u16) -> Self {
        let IpAddr::V6(ip) = ip else {
            unreachable!("an IPv6 sender is only made for an IPv6 destination")
        };
        SockaddrIn6::from(SocketAddrV6::new(ip, port, 0, 0))
    }
}

fn is_full(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ENOBUFS) | Some(libc::EAGAIN) | Some(libc::ECONNREFUSED)
    )
}

/// Datagrams per `sendmmsg(2)` call.
const BATCH: usize = 32;

/// Sends `payload` to each of `dsts` from `sock` with one `sendmmsg(2)`;
/// returns how many the kernel took (it stops at the first refusal).
fn send_batch<S: Dst>(
    sock: &UdpSocket,
    hdrs: &mut MultiHeaders<S>,
    payload: &[u8],
    dsts: &[S],
) -> std::io::Result<usize> {
    let iov = [IoSlice::new(payload)];
    let slices = vec![iov; dsts.len()];
    let addrs: Vec<Option<S>> = dsts.iter().copied().map(Some).collect();
    let cmsgs: [ControlMessage<'_>; 0] = [];
    let sent = sendmmsg(
        sock.as_raw_fd(),
        hdrs,
        &slices,
        &addrs,
        cmsgs,
        MsgFlags::empty(),
    )
    .map_err(std::io::Error::from)?;
    Ok(sent.count())
}

/// One sender thread: `quota` datagrams or until `deadline`, in batches of
/// [`BATCH`] (a batch never spans two source ports); IPv4 or IPv6 as `--dst`.
fn sender(a: &SendArgs, t: usize, quota: u64, deadline: Instant) -> Result<Sent, GenError> {
    match a.dst {
        IpAddr::V4(_) => sender_of::<SockaddrIn>(a, t, quota, deadline),
        IpAddr::V6(_) => sender_of::<SockaddrIn6>(a, t, quota, deadline),
    }
}

/// [`sender`] with destination addresses of type `S`.
fn sender_of<S: Dst>(
    a: &SendArgs,
    t: usize,
    quota: u64,
    deadline: Instant,
) -> Result<Sent, GenError> {
    let payload = vec![0u8; a.size];
    let mut out = Sent::default();
    let mut hdrs = MultiHeaders::<S>::preallocate(BATCH, None);
    let mut sock: Option<(u16, UdpSocket)> = None;
    let mut dsts: Vec<S> = Vec::with_capacity(BATCH);
    let mut i = 0u64;
    let mut batches = 0u64;
    while i < quota {
        // Check the clock once per 8 batches.
        if batches.is_multiple_of(8) && Instant::now() >= deadline {
            break;
        }
        batches += 1;
        let (sport, _) = if a.fixed {
            (a.sport_base.wrapping_add(t as u16), a.dport_base)
        } else {
            tuple_of(a, t, i)
        };
        dsts.clear();
        while dsts.len() < BATCH && i + (dsts.len() as u64) < quota {
            let k = i + dsts.len() as u64;
            let dport = if a.fixed {
                a.dport_base
            } else {
                let (sp, dp) = tuple_of(a, t, k);
                if sp != sport {
                    break;
                }
                dp
            };
            dsts.push(S::new(a.dst, dport));
        }
        if sock.as_ref().is_none_or(|(p, _)| *p != sport) {
            sock = Some((sport, bind(a.dst, sport)?));
        }
        let (_, s) = sock.as_ref().expect("just bound");
        match send_batch(s, &mut hdrs, &payload, &dsts) {
            Ok(n) => {
                out.sent += n as u64;
                // The kernel stopped at a full queue: the rest is refused.
                out.errors += (dsts.len() - n) as u64;
            }
            Err(e) if is_full(&e) => out.errors += dsts.len() as u64,
            Err(source) => {
                let dport = match a.fixed {
                    true => a.dport_base,
                    false => tuple_of(a, t, i).1,
                };
                let dst = SocketAddr::new(a.dst, dport);
                return Err(GenError::Send { dst, source });
            }
        }
        i += dsts.len() as u64;
    }
    Ok(out)
}

fn send(a: SendArgs) -> Result<(), GenError> {
    if a.threads == 0 || a.dport_span == 0 {
        return Err(GenError::Args(
            "--threads and --dport-span must be > 0".into(),
        ));
    }
    if a.dport_base as u32 + a.dport_span as u32 > 65_536 {
        return Err(GenError::Args(format!(
            "--dport-base {} + --dport-span {} passes port 65535",
            a.dport_base, a.dport_span
        )));
    }
    let per_thread = a.count.div_ceil(a.threads as u64);
    if !a.fixed {
        let last = tuple_of(&a, a.threads - 1, per_thread.saturating_sub(1)).0;
        let need =
            a.sport_base as u64 + a.threads as u64 * per_thread.div_ceil(a.dport_span as u64);
        if need > 65_535 || last < a.sport_base {
            return Err(GenError::Args(format!(
                "{} new flows need source ports up to {need}: lower --sport-base or --count",
                a.count
            )));
        }
    }
    let a = Arc::new(a);
    let start = Arc::new(Barrier::new(a.threads + 1));
    let mut handles = Vec::with_capacity(a.threads);
    for t in 0..a.threads {
        let (a, start) = (Arc::clone(&a), Arc::clone(&start));
        let quota = per_thread.min(a.count.saturating_sub(per_thread * t as u64));
        handles.push(thread::spawn(move || {
            start.wait();
            let deadline = Instant::now() + Duration::from_secs_f64(a.secs);
            sender(&a, t, quota, deadline)
        }));
    }
    start.wait();
    let t0 = Instant::now();
    let mut total = Sent::default();
    let mut first_err = None;
    for h in handles {
        match h.join().expect("sender thread panicked") {
            Ok(s) => {
                total.sent += s.sent;
                total.errors += s.errors;
            }
            Err(e) => first_err = first_err.or(Some(e)),
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    if let Some(e) = first_err {
        return Err(e);
    }
    println!(
        "flowgen: sent {} errors {} secs {secs:.4} pps {:.0}",
        total.sent,
        total.errors,
        total.sent as f64 / secs
    );
    Ok(())
}

/// An interface statistics counter, re-read in place.
struct Counter {
    file: File,
    path: String,
}

impl Counter {
    fn open(iface: &str, name: &str) -> Result<Counter, GenError> {
        let path = format!("/sys/class/net/{iface}/statistics/{name}");
        let file = File::open(&path).map_err(|source| GenError::Counter {
            path: path.clone(),
            source,
        })?;
        Ok(Counter { file, path })
    }

    fn read(&self) -> Result<u64, GenError> {
        let mut b = [0u8; 32];
        let n = self
            .file
            .read_at(&mut b, 0)
            .map_err(|source| GenError::Counter {
                path: self.path.clone(),
                source,
            })?;
        let text = String::from_utf8_lossy(&b[..n]).trim().to_owned();
        text.parse().map_err(|_| GenError::CounterText {
            path: self.path.clone(),
            text,
        })
    }
}

/// The result of watching a counter: what moved and over which window.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Window {
    received: u64,
    secs: f64,
}

/// Folds samples `(t, value)` into the received count and its window (see the
/// module docs): from the last sample before the first increase to the sample of
/// the last increase.
fn window(samples: &[(f64, u64)]) -> Window {
    let Some(&(_, base)) = samples.first() else {
        return Window {
            received: 0,
            secs: 0.0,
        };
    };
    let mut start = None;
    let mut end = None;
    let mut last = base;
    for w in samples.windows(2) {
        let ((t0, v0), (t1, v1)) = (w[0], w[1]);
        if v1 != v0 {
            start.get_or_insert(t0);
            end = Some(t1);
            last = v1;
        }
    }
    match (start, end) {
        (Some(s), Some(e)) => Window {
            received: last - base,
            secs: e - s,
        },
        _ => Window {
            received: 0,
            secs: 0.0,
        },
    }
}

fn count(a: CountArgs) -> Result<(), GenError> {
    let rx = Counter::open(&a.iface, "rx_packets")?;
    let t0 = Instant::now();
    let limit = Duration::from_secs_f64(a.secs);
    let idle = Duration::from_millis(a.idle_ms);
    let interval = Duration::from_micros(a.interval_us.max(50));
    // Only samples around changes are kept: bounded memory however long it runs.
    let mut samples: Vec<(f64, u64)> = vec![(0.0, rx.read()?)];
    println!("flowgen: ready");
    let _ = std::io::stdout().flush();
    let mut last_change: Option<Instant> = None;
    let mut prev = samples[0];
    loop {
        thread::sleep(interval);
        let now = Instant::now();
        let v = rx.read()?;
        let s = (now.duration_since(t0).as_secs_f64(), v);
        if v != prev.1 {
            if samples.last() != Some(&prev) {
                samples.push(prev);
            }
            samples.push(s);
            last_change = Some(now);
        }
        prev = s;
        if now.duration_since(t0) >= limit {
            break;
        }
        if last_change.is_some_and(|t| now.duration_since(t) >= idle) {
            break;
        }
    }
    let w = window(&samples);
    let pps = if w.secs > 0.0 {
        w.received as f64 / w.secs
    } else {
        0.0
    };
    println!(
        "flowgen: received {} window_s {:.4} pps {pps:.0}",
        w.received, w.secs
    );
    Ok(())
}

fn main() {
    let cli = Cli::parse();
    let res = match cli.cmd {
        Cmd::Send(a) => send(a),
        Cmd::Count(a) => count(a),
    };
    if let Err(e) = res {
        let mut msg = e.to_string();
        let mut src = std::error::Error::source(&e);
        while let Some(s) = src {
            msg.push_str(": ");
            msg.push_str(&s.to_string());
            src = s.source();
        }
        eprintln!("flowgen: {msg}");
        std::process::exit(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(threads: usize, span: u16) -> SendArgs {
        SendArgs {
            dst: Ipv4Addr::LOCALHOST.into(),
            threads,
            count: 0,
            secs: 1.0,
            fixed: false,
            dport_base: 1024,
            dport_span: span,
            sport_base: 20_000,
            size: 18,
        }
    }

    #[test]
    fn every_datagram_of_every_thread_has_its_own_tuple() {
        let a = args(3, 100);
        let mut seen = std::collections::HashSet::new();
        for t in 0..3 {
            for i in 0..1000 {
                assert!(seen.insert(tuple_of(&a, t, i)), "t {t} i {i}");
            }
        }
        assert_eq!(seen.len(), 3000);
        // Destination ports stay in the span, source ports only move on wrap.
        assert_eq!(tuple_of(&a, 0, 0), (20_000, 1024));
        assert_eq!(tuple_of(&a, 0, 99), (20_000, 1123));
        assert_eq!(tuple_of(&a, 0, 100), (20_003, 1024));
        assert_eq!(tuple_of(&a, 2, 100), (20_005, 1024));
    }

    #[test]
    fn new_flow_batches_reach_distinct_ports() {
        // Two receivers on loopback: the generator's destination ports cycle.
        let r1 = UdpSocket::bind("127.0.0.1:0").unwrap();
        let p1 = r1.local_addr().unwrap().port();
        let r2 = UdpSocket::bind(("127.0.0.1", p1.wrapping_add(1))).ok();
        let a = SendArgs {
            dport_base: p1,
            dport_span: 2,
            sport_base: 40_000 + (std::process::id() % 5000) as u16 * 4,
            ..args(1, 2)
        };
        // Source ports sport_base + k for k = i / span: three sockets.
        let s = sender(&a, 0, 6, Instant::now() + Duration::from_secs(5)).unwrap();
        assert_eq!(s.sent + s.errors, 6);
        r1.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut buf = [0u8; 64];
        for _ in 0..3 {
            r1.recv_from(&mut buf).unwrap();
        }
        if let Some(r2) = r2 {
            r2.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            for _ in 0..3 {
                r2.recv_from(&mut buf).unwrap();
            }
        }
    }

    #[test]
    fn window_spans_first_to_last_increase() {
        let s = [(0.0, 10), (0.1, 10), (0.2, 60), (0.3, 110), (0.4, 110)];
        let w = window(&s);
        assert_eq!(w.received, 100);
        assert!((w.secs - 0.2).abs() < 1e-9, "{w:?}");
        assert_eq!(window(&[(0.0, 5), (1.0, 5)]).received, 0);
        assert_eq!(window(&[]).received, 0);
    }

    #[test]
    fn sends_over_ipv6_loopback_with_new_tuples() {
        // New-flow mode over IPv6: each datagram from its own 5-tuple.
        let Ok(rx) = UdpSocket::bind("[::1]:0") else {
            eprintln!("SKIP: no IPv6 loopback");
            return;
        };
        let port = rx.local_addr().unwrap().port();
        let a = SendArgs {
            dst: Ipv6Addr::LOCALHOST.into(),
            dport_base: port,
            sport_base: 42_000 + (std::process::id() % 4000) as u16 * 4,
            ..args(1, 1)
        };
        // Span 1: every datagram takes a new source port (a new socket).
        let s = sender(&a, 0, 3, Instant::now() + Duration::from_secs(5)).unwrap();
        assert_eq!(s.sent, 3);
        rx.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut buf = [0u8; 64];
        let mut from = std::collections::BTreeSet::new();
        for _ in 0..3 {
            let (n, src) = rx.recv_from(&mut buf).unwrap();
            assert_eq!(n, 18);
            assert!(src.is_ipv6(), "{src}");
            from.insert(src.port());
        }
        assert_eq!(from.len(), 3, "three source ports: {from:?}");
    }

    #[test]
    fn sends_and_counts_on_loopback() {
        // A real socket receives what the generator sends on loopback.
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = rx.local_addr().unwrap().port();
        let a = SendArgs {
            fixed: true,
            dport_base: port,
            sport_base: 0,
            ..args(1, 1)
        };
        // 40 = a full batch and a partial one.
        let s = sender(&a, 0, 40, Instant::now() + Duration::from_secs(5)).unwrap();
        assert_eq!(s.sent, 40);
        rx.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut buf = [0u8; 64];
        for _ in 0..40 {
            let (n, _) = rx.recv_from(&mut buf).unwrap();
            assert_eq!(n, 18);
        }
    }
}
