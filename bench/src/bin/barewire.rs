//! `barewire`: the bare wire between two TAPs, the physical limit of any userspace
//! TAP design on this machine and the number the end-to-end benchmark measures
//! the switch's overhead against.
//!
//! ```text
//! barewire --ns-a NSA --ns-b NSB [--ifname eth0] [--no-vnet] [--max-secs 3600]
//! ```
//!
//! Contract:
//! * Makes TAP `IFNAME` inside each of the two existing namespaces (created in
//!   our namespace and moved there, so deleting a namespace destroys its TAP and
//!   ends the wire) with one queue each, `vnet_hdr` on and checksum/TSO/USO
//!   offloads negotiated ([`switch::tap`]), unless `--no-vnet`. Addresses and
//!   link state inside the namespaces are the caller's business.
//! * One thread, one epoll: every frame read from one TAP is written to the other
//!   verbatim, with its virtio-net header (a TSO super-frame stays one frame, a
//!   partial checksum stays partial). No parsing, no switching, no filtering.
//!   Each readable TAP is drained up to [`BURST`] frames before the next wait.
//! * Prints `barewire: ready A=<name> B=<name> vnet=<bool>` on stdout once both
//!   TAPs are open, and `barewire: a->b N b->a N errors N` when it stops: on
//!   SIGINT/SIGTERM, after `--max-secs`, or when a TAP is gone.
//! * Not a benchmark by itself: `e2ebench` runs it as one of the paths.

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use nix::sys::signal::{SigSet, Signal};
use switch::port::{PortError, PortQueue};
use switch::sys::{EPOLLIN, Epoll, EpollEvents};
use switch::tap::{self, TapQueue};

/// Frames read from one TAP before looking at the other again.
const BURST: usize = 64;
/// Largest frame we read: a 64 KiB super-frame plus its Ethernet header.
const BUF_LEN: usize = 65_550;

#[derive(Parser, Debug)]
#[command(about = "Forward frames verbatim between two TAPs (the bare-wire baseline)")]
struct Args {
    /// Namespace of the first TAP.
    #[arg(long)]
    ns_a: String,
    /// Namespace of the second TAP.
    #[arg(long)]
    ns_b: String,
    /// Name of the TAP inside each namespace.
    #[arg(long, default_value = "eth0")]
    ifname: String,
    /// Without virtio-net headers and offloads (one MTU frame per syscall).
    #[arg(long)]
    no_vnet: bool,
    /// Stop after this many seconds whatever happens.
    #[arg(long, default_value_t = 3600)]
    max_secs: u64,
}

/// Errors that end the wire.
#[derive(Debug, thiserror::Error)]
enum WireError {
    #[error("open TAP {ifname:?} in namespace {ns:?}")]
    Tap {
        ifname: String,
        ns: String,
        #[source]
        source: Box<tap::TapError>,
    },
    #[error("epoll {op}")]
    Epoll {
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("block signals")]
    Signals(#[source] nix::Error),
    #[error(transparent)]
    Port(#[from] PortError),
}

/// Frames moved and failed sends.
#[derive(Debug, Default)]
struct Counts {
    a_to_b: u64,
    b_to_a: u64,
    errors: u64,
}

fn open_one(ns: &str, ifname: &str, vnet: bool) -> Result<TapQueue, WireError> {
    let mut q =
        tap::open_tap_in_netns(ns, ifname, 1, vnet, false).map_err(|source| WireError::Tap {
            ifname: ifname.to_owned(),
            ns: ns.to_owned(),
            source: Box::new(source),
        })?;
    Ok(q.remove(0))
}

/// Moves up to [`BURST`] frames from `from` to `to`. `Err` only when a TAP is
/// gone; other send failures are counted.
fn pump(
    from: &TapQueue,
    to: &TapQueue,
    buf: &mut [u8],
    moved: &mut u64,
    errors: &mut u64,
) -> Result<usize, PortError> {
    let mut n = 0;
    while n < BURST {
        let Some((len, vnet)) = from.recv(buf)? else {
            break;
        };
        match to.send(&buf[..len], &vnet) {
            Ok(()) => *moved += 1,
            Err(e @ PortError::Gone { .. }) => return Err(e),
            Err(PortError::Io { .. }) => *errors += 1,
        }
        n += 1;
    }
    Ok(n)
}

fn run(args: &Args, stop: &AtomicBool) -> Result<Counts, WireError> {
    let vnet = !args.no_vnet;
    let a = open_one(&args.ns_a, &args.ifname, vnet)?;
    let b = open_one(&args.ns_b, &args.ifname, vnet)?;
    let ep = Epoll::new().map_err(|source| WireError::Epoll {
        op: "create",
        source,
    })?;
    for (token, q) in [(0u64, &a), (1u64, &b)] {
        let fd = q.poll_fd().expect("a TAP queue has an fd");
        ep.add(fd, EPOLLIN, token)
            .map_err(|source| WireError::Epoll { op: "add", source })?;
    }
    println!(
        "barewire: ready A={}@{} B={}@{} vnet={vnet}",
        a.name(),
        args.ns_a,
        b.name(),
        args.ns_b
    );
    let _ = std::io::stdout().flush();
    let deadline = Instant::now() + Duration::from_secs(args.max_secs);
    let mut buf = vec![0u8; BUF_LEN];
    let mut events = EpollEvents::with_capacity(2);
    let mut c = Counts::default();
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        ep.wait(&mut events, 100)
            .map_err(|source| WireError::Epoll { op: "wait", source })?;
        // Level-triggered: drain a burst from each ready side, then wait again
        // (a side with more than a burst stays readable).
        for (token, _) in events.iter() {
            if token == 0 {
                pump(&a, &b, &mut buf, &mut c.a_to_b, &mut c.errors)?;
            } else {
                pump(&b, &a, &mut buf, &mut c.b_to_a, &mut c.errors)?;
            }
        }
    }
    Ok(c)
}

fn main() {
    let args = Args::parse();
    // Signals are taken by a waiting thread, so the loop stops cleanly.
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGINT);
    signals.add(Signal::SIGTERM);
    if let Err(e) = signals.thread_block().map_err(WireError::Signals) {
        eprintln!("barewire: {e}");
        std::process::exit(1);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    std::thread::spawn(move || {
        if signals.wait().is_ok() {
            flag.store(true, Ordering::Relaxed);
        }
    });
    match run(&args, &stop) {
        Ok(c) => println!(
            "barewire: a->b {} b->a {} errors {}",
            c.a_to_b, c.b_to_a, c.errors
        ),
        Err(WireError::Port(PortError::Gone { port, .. })) => {
            println!("barewire: TAP {port} is gone, stopping");
        }
        Err(e) => {
            let mut msg = e.to_string();
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                msg.push_str(": ");
                msg.push_str(&s.to_string());
                src = s.source();
            }
            eprintln!("barewire: {msg}");
            std::process::exit(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use switch::netns::{self, NetnsGuard};

    /// Root only (skips otherwise): two namespaces joined by the wire answer
    /// pings both ways, and the wire counts the frames it moved.
    #[test]
    fn two_namespaces_talk_through_the_wire() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("SKIP two_namespaces_talk_through_the_wire: not root");
            return;
        }
        let pid = std::process::id();
        let a = NetnsGuard::create(&format!("bwt{pid}a")).unwrap();
        let b = NetnsGuard::create(&format!("bwt{pid}b")).unwrap();
        // No IPv6 housekeeping (DAD, MLD, RS) from the side that comes up
        // first: the wire would write it to the other side's TAP while that is
        // still down (EIO, counted as an error). Only the pings cross.
        for ns in [a.name(), b.name()] {
            let st = std::process::Command::new("ip")
                .args(["netns", "exec", ns, "sysctl", "-qw"])
                .args([
                    "net.ipv6.conf.all.disable_ipv6=1",
                    "net.ipv6.conf.default.disable_ipv6=1",
                ])
                .status()
                .expect("run sysctl");
            assert!(st.success(), "disable IPv6 in {ns}");
        }
        let args = Args {
            ns_a: a.name().to_owned(),
            ns_b: b.name().to_owned(),
            ifname: "eth0".into(),
            no_vnet: false,
            max_secs: 60,
        };
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let wire = std::thread::spawn(move || run(&args, &flag));
        let deadline = Instant::now() + Duration::from_secs(10);
        for (ns, last) in [(a.name(), 1u8), (b.name(), 2)] {
            while netns::ifindex(Some(ns), "eth0").is_err() {
                assert!(Instant::now() < deadline, "TAP never appeared in {ns}");
                std::thread::sleep(Duration::from_millis(10));
            }
            let ip = std::net::Ipv4Addr::new(10, 204, 0, last);
            netns::configure_iface(Some(ns), "eth0", None, Some((ip, 24)), true).unwrap();
        }
        let ping = std::process::Command::new("ip")
            .args([
                "netns",
                "exec",
                a.name(),
                "busybox",
                "ping",
                "-c",
                "3",
                "-W",
                "2",
            ])
            .arg("10.204.0.2")
            .output()
            .expect("run busybox ping");
        stop.store(true, Ordering::Relaxed);
        let counts = wire.join().unwrap().unwrap();
        assert!(
            ping.status.success(),
            "ping through the wire failed: {}",
            String::from_utf8_lossy(&ping.stdout)
        );
        // ARP request + 3 echo requests one way, ARP reply + 3 replies back.
        assert!(counts.a_to_b >= 4, "{counts:?}");
        assert!(counts.b_to_a >= 4, "{counts:?}");
        assert_eq!(counts.errors, 0, "{counts:?}");
    }
}
