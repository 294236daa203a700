//! `labhelper`: the small network tool the end-to-end tests run inside namespaces
//! (`ip netns exec NS labhelper ...`).
//!
//! Modes (every one bounded in time, so a forgotten process cannot linger):
//!
//! * `listen [--udp] [--max-secs S] PORT...` — TCP echo servers on `0.0.0.0:PORT`
//!   (with `--udp` UDP echo on the same ports too); prints `listening` once every
//!   port is bound, then echoes until killed or `S` seconds (default 600) pass.
//! * `probe [--udp] [--from IP] [--timeout-ms N] IP:PORT...` — connects to every target
//!   concurrently and prints one line per target, in argument order:
//!   `IP:PORT STATE` with `STATE` one of `open` (connected and a probe line came
//!   back: the path works both ways), `noecho` (connected, nothing came back),
//!   `refused`, `timeout`, `unreachable`, `error:ERRNO`. With `--udp` one datagram
//!   per target on a connected UDP socket: `open` (echoed), `refused` (ICMP port
//!   unreachable), `timeout`.
//! * `stream [--from IP] [--interval-ms N] [--secs S] IP:PORT` — one TCP
//!   connection; writes a 16-byte record every `N` ms (default 20) and prints
//!   `ok SEQ` for every record echoed back, `connected` first, `end` after `S`
//!   seconds (default 10). The test reads the lines as they come to see when
//!   a flow is cut.
//!
//! Exit status: 0 on success, 2 on a usage error, 1 when `stream` cannot connect.

use std::io::{self, BufRead, Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, OwnedFd};
use std::process::ExitCode;
use std::thread;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::socket::{
    AddressFamily, SockFlag, SockType, SockaddrIn, bind, connect, setsockopt, socket, sockopt,
};
use nix::sys::time::{TimeVal, TimeValLike};

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
        "listen" => listen(&opts),
        "probe" => probe(&opts),
        "stream" => stream(&opts),
        other => usage(&format!("unknown mode {other:?}")),
    }
}

fn usage(why: &str) -> ExitCode {
    eprintln!("labhelper: {why}");
    eprintln!(
        "usage: labhelper listen [--udp] [--max-secs S] PORT... | probe [--udp] [--from IP] [--timeout-ms N] IP:PORT... | stream [--from IP] [--interval-ms N] [--secs S] IP:PORT"
    );
    ExitCode::from(2)
}

/// Options shared by the modes; positional arguments stay in `args`.
struct Opts {
    from: Option<Ipv4Addr>,
    timeout_ms: u64,
    interval_ms: u64,
    secs: u64,
    max_secs: u64,
    udp: bool,
    args: Vec<String>,
}

impl Opts {
    fn parse(raw: &[String]) -> Result<Opts, String> {
        let mut o = Opts {
            from: None,
            timeout_ms: 1000,
            interval_ms: 20,
            secs: 10,
            max_secs: 600,
            udp: false,
            args: Vec::new(),
        };
        let mut it = raw.iter();
        while let Some(a) = it.next() {
            let mut value = |name: &str| {
                it.next()
                    .cloned()
                    .ok_or_else(|| format!("{name} needs a value"))
            };
            let num = |name: &str, v: String| {
                v.parse::<u64>()
                    .map_err(|_| format!("{name}: not a number: {v:?}"))
            };
            match a.as_str() {
                "--from" => {
                    let v = value("--from")?;
                    o.from = Some(
                        v.parse()
                            .map_err(|_| format!("--from: bad address {v:?}"))?,
                    );
                }
                "--timeout-ms" => o.timeout_ms = num(a, value(a)?)?,
                "--interval-ms" => o.interval_ms = num(a, value(a)?)?.max(1),
                "--secs" => o.secs = num(a, value(a)?)?,
                "--max-secs" => o.max_secs = num(a, value(a)?)?,
                "--udp" => o.udp = true,
                _ => o.args.push(a.clone()),
            }
        }
        Ok(o)
    }
}

fn listen(o: &Opts) -> ExitCode {
    if o.args.is_empty() {
        return usage("listen needs at least one port");
    }
    let mut listeners = Vec::new();
    for p in &o.args {
        let Ok(port) = p.parse::<u16>() else {
            return usage(&format!("bad port {p:?}"));
        };
        match TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)) {
            Ok(l) => listeners.push(l),
            Err(e) => {
                eprintln!("labhelper: bind port {port}: {e}");
                return ExitCode::from(1);
            }
        }
    }
    let mut udp = Vec::new();
    if o.udp {
        for l in &listeners {
            let port = l.local_addr().map_or(0, |a| a.port());
            match UdpSocket::bind((Ipv4Addr::UNSPECIFIED, port)) {
                Ok(u) => udp.push(u),
                Err(e) => {
                    eprintln!("labhelper: bind udp port {port}: {e}");
                    return ExitCode::from(1);
                }
            }
        }
    }
    for l in listeners {
        thread::spawn(move || {
            for conn in l.incoming().flatten() {
                thread::spawn(move || echo(conn));
            }
        });
    }
    for u in udp {
        thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while let Ok((n, from)) = u.recv_from(&mut buf) {
                let _ = u.send_to(&buf[..n], from);
            }
        });
    }
    println!("listening");
    let _ = io::stdout().flush();
    thread::sleep(Duration::from_secs(o.max_secs));
    ExitCode::SUCCESS
}

/// Echo a connection back to its sender until it closes.
fn echo(conn: TcpStream) {
    let Ok(mut write_half) = conn.try_clone() else {
        return;
    };
    let mut read_half = conn;
    let _ = io::copy(&mut read_half, &mut write_half);
}

fn parse_target(s: &str) -> Result<SocketAddrV4, String> {
    s.parse()
        .map_err(|_| format!("bad target {s:?} (want IP:PORT)"))
}

/// A blocking TCP connect from an optional source address, bounded by `timeout`
/// (Linux bounds a blocking connect by `SO_SNDTIMEO`; it then fails `EINPROGRESS`).
fn connect_from(
    from: Option<Ipv4Addr>,
    to: SocketAddrV4,
    timeout: Duration,
) -> Result<TcpStream, Errno> {
    let fd: OwnedFd = socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    if let Some(src) = from {
        bind(fd.as_raw_fd(), &SockaddrIn::from(SocketAddrV4::new(src, 0)))?;
    }
    let ms = i64::try_from(timeout.as_millis())
        .unwrap_or(i64::MAX)
        .max(1);
    setsockopt(&fd, sockopt::SendTimeout, &TimeVal::milliseconds(ms))?;
    connect(fd.as_raw_fd(), &SockaddrIn::from(to))?;
    Ok(TcpStream::from(fd))
}

fn probe_one(from: Option<Ipv4Addr>, to: SocketAddrV4, timeout: Duration) -> String {
    let started = Instant::now();
    let mut s = match connect_from(from, to, timeout) {
        Ok(s) => s,
        Err(Errno::ECONNREFUSED) => return "refused".into(),
        Err(Errno::EINPROGRESS | Errno::EAGAIN | Errno::ETIMEDOUT) => return "timeout".into(),
        Err(Errno::EHOSTUNREACH | Errno::ENETUNREACH) => return "unreachable".into(),
        Err(e) => return format!("error:{e}"),
    };
    let left = timeout
        .saturating_sub(started.elapsed())
        .max(Duration::from_millis(200));
    let _ = s.set_read_timeout(Some(left));
    let _ = s.set_write_timeout(Some(left));
    let line = b"labhelper probe\n";
    let mut back = [0u8; 16];
    if s.write_all(line).is_ok() && s.read_exact(&mut back).is_ok() && &back == line {
        "open".into()
    } else {
        "noecho".into()
    }
}

/// One UDP round trip on a connected socket: `open` (echoed), `refused` (ICMP
/// port unreachable came back), `timeout`.
fn probe_udp_one(from: Option<Ipv4Addr>, to: SocketAddrV4, timeout: Duration) -> String {
    let src = SocketAddrV4::new(from.unwrap_or(Ipv4Addr::UNSPECIFIED), 0);
    let sock = match UdpSocket::bind(src) {
        Ok(s) => s,
        Err(e) => return format!("error:{}", e.raw_os_error().unwrap_or(0)),
    };
    if let Err(e) = sock.connect(to) {
        return format!("error:{}", e.raw_os_error().unwrap_or(0));
    }
    let _ = sock.set_read_timeout(Some(timeout));
    let line = b"labhelper probe\n";
    if sock.send(line).is_err() {
        return "unreachable".into();
    }
    let mut back = [0u8; 64];
    match sock.recv(&mut back) {
        Ok(n) if &back[..n] == line => "open".into(),
        Ok(_) => "noecho".into(),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => "refused".into(),
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) =>
        {
            "timeout".into()
        }
        Err(e) => format!("error:{}", e.raw_os_error().unwrap_or(0)),
    }
}

fn probe(o: &Opts) -> ExitCode {
    let mut targets = Vec::new();
    for a in &o.args {
        match parse_target(a) {
            Ok(t) => targets.push(t),
            Err(e) => return usage(&e),
        }
    }
    let timeout = Duration::from_millis(o.timeout_ms);
    // At most 64 connects in flight: enough to keep a 29-instance matrix fast
    // without flooding the switch's connection table.
    for chunk in targets.chunks(64) {
        let handles: Vec<_> = chunk
            .iter()
            .map(|&t| {
                let from = o.from;
                let udp = o.udp;
                thread::spawn(move || {
                    if udp {
                        probe_udp_one(from, t, timeout)
                    } else {
                        probe_one(from, t, timeout)
                    }
                })
            })
            .collect();
        for (t, h) in chunk.iter().zip(handles) {
            let state = h.join().unwrap_or_else(|_| "error:panic".into());
            println!("{t} {state}");
        }
    }
    ExitCode::SUCCESS
}

fn stream(o: &Opts) -> ExitCode {
    let [target] = o.args.as_slice() else {
        return usage("stream needs exactly one IP:PORT");
    };
    let to = match parse_target(target) {
        Ok(t) => t,
        Err(e) => return usage(&e),
    };
    let conn = match connect_from(o.from, to, Duration::from_secs(3)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("labhelper: stream connect {to}: {e}");
            return ExitCode::from(1);
        }
    };
    println!("connected");
    let _ = io::stdout().flush();
    let Ok(mut writer) = conn.try_clone() else {
        return ExitCode::from(1);
    };
    let end = Instant::now() + Duration::from_secs(o.secs);
    let interval = Duration::from_millis(o.interval_ms);
    thread::spawn(move || {
        let mut seq: u64 = 0;
        while Instant::now() < end {
            let rec = format!("{seq:015}\n");
            if writer.write_all(rec.as_bytes()).is_err() {
                return;
            }
            seq += 1;
            thread::sleep(interval);
        }
    });
    thread::spawn(move || {
        let mut reader = io::BufReader::new(conn);
        let mut line = String::new();
        loop {
            line.clear();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {
                    let mut out = io::stdout().lock();
                    let _ = writeln!(out, "ok {}", line.trim_end());
                    let _ = out.flush();
                }
            }
        }
    });
    thread::sleep(end.saturating_duration_since(Instant::now()));
    let mut out = io::stdout().lock();
    let _ = writeln!(out, "end");
    let _ = out.flush();
    ExitCode::SUCCESS
}
