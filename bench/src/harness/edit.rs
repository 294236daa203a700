//! Rule-edit latency under load and the CLI round trip, on the sgswitch path,
//! and the same edit test on the kernel's bridge + nftables for comparison.
//!
//! Contract:
//! * The edit target is an instance in padding groups of up to
//!   [`paths::PAD_RULES`] rules ([`paths::PAD_GROUPS`] of them, 10k rules, by
//!   default; `e2ebench --edit-rules N,...` sets the total) plus
//!   [`paths::EDIT_GROUP`] (the exact model total is reported from `stats`).
//! * A probe sender in the uplink namespace (the outside address
//!   [`e2e::OUTSIDE`], 16 source ports in turn) sends a UDP datagram to the
//!   target's port [`PROBE_PORT`] every ~[`PROBE_INTERVAL`]; a socket in the
//!   target's namespace records when each arrives. Both sockets live in this
//!   process, so send, edit and arrival times come from one clock.
//! * One *pair* of edits: `authorize EDIT_GROUP -P udp -p PROBE_PORT -s
//!   OUTSIDE/32` written straight to the daemon's socket (one request line of
//!   mgmt's own `Request` type, encoded ahead, on one connection kept open —
//!   [`super::api`]) at t0; enforce latency = first arrival after t0 − t0
//!   (its resolution is the probe interval); ack latency = the reply line − t0.
//!   Then `revoke` of the same rule at t2: revoke latency = last arrival after
//!   t2 − t2 (0 when none came), once the probe has been silent for
//!   [`QUIET`]. An authorize with no arrival within 1 s is counted as a miss.
//! * Under load: an `iperf3` TCP stream (bounded, killed when the edits are
//!   done) runs client → server through the same switch meanwhile.
//! * The kernel's version ([`NftEditor`], via [`probe_edits`]): the same probe
//!   from the bridge path's scanner namespace to its server, the rule appended to
//!   a forward chain of 10k rules with `nft add rule` and removed with `nft
//!   delete rule ... handle H` (a process each: its start is part of the time,
//!   as a CLI's is; the handle is looked up between, untimed).
//! * The daemon's own view comes from `stats` (`EDITS` commit latency and
//!   `PUBLISH` snapshot latency, p50/p99 in µs).
//! * CLI round trip: `sgswitch describe-group g10` as a new process, timed from
//!   spawn to exit, `runs` times.

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

use filter::model::RuleSpec;
use mgmt::api::{Command as ApiCommand, GroupRef};

use super::api::{Api, request_line};
use super::exec::{HarnessError, Interrupt, Proc, Result, in_ns};
use super::paths::{self, Endpoints, SgPath};

/// The probe's destination port.
pub const PROBE_PORT: u16 = 9999;
/// Time between probe datagrams (the enforce latency's resolution).
pub const PROBE_INTERVAL: Duration = Duration::from_micros(100);
/// Silence that ends a revoke measurement.
pub const QUIET: Duration = Duration::from_millis(20);

/// Results of the edit test.
#[derive(Clone, Debug, Default)]
pub struct EditResult {
    /// authorize sent → first probe seen (µs): the receiving thread's clock
    /// after `recvmsg` returned.
    pub enforce_us: Vec<f64>,
    /// authorize sent → the same datagram's kernel receive time stamp
    /// (`SO_TIMESTAMPNS` in the target's namespace, µs): without the receiving
    /// thread's own wake-up.
    pub enforce_rx_us: Vec<f64>,
    /// authorize sent → the first passing datagram was sent (µs; may be < 0
    /// when it was sent before the edit and queued).
    pub enforce_sent_us: Vec<f64>,
    /// Every received probe datagram's transit: sent → kernel receive time
    /// stamp in the target's namespace (µs): the datapath's own delay under
    /// the load, part of every enforce time.
    pub transit_us: Vec<f64>,
    /// Gap before the first passing datagram: its send time − the previous
    /// datagram's (µs): how late the probe itself was.
    pub probe_gap_us: Vec<f64>,
    /// authorize sent → daemon's reply (µs).
    pub ack_us: Vec<f64>,
    /// revoke sent → last probe seen (µs).
    pub revoke_us: Vec<f64>,
    pub misses: usize,
    /// Probe datagrams actually sent per second.
    pub probe_pps: f64,
    pub total_rules: Option<usize>,
    /// Rules of the edit target's groups (padding + the edit group).
    pub target_rules: Option<usize>,
    /// The daemon's `EDITS`/`PUBLISH` lines (p50, p99 in µs).
    pub daemon_commit_us: Option<(f64, f64)>,
    pub daemon_publish_us: Option<(f64, f64)>,
    /// Launch times of the instances launched meanwhile (`--edit-launches`;
    /// request → reply, µs), empty without.
    pub launch_us: Vec<f64>,
    /// The background load's Gbit/s (None without load).
    pub load_note: Option<String>,
}

/// The request line of `op` (`authorize`/`revoke`) for the probe's rule,
/// encoded once, ahead of the timed call.
pub fn edit_request(op: EditOp, group: &str, from: Ipv4Addr, port: u16) -> String {
    let spec = RuleSpec {
        proto: Some("udp".into()),
        ports: Some(port.to_string()),
        cidrs: vec![format!("{from}/32")],
        ..RuleSpec::default()
    };
    let group = GroupRef::Name(group.to_owned());
    let permissions = vec![spec.into()];
    request_line(match op {
        EditOp::Authorize => ApiCommand::Authorize {
            group,
            permissions,
            egress: false,
        },
        EditOp::Revoke => ApiCommand::Revoke {
            group,
            permissions,
            egress: false,
        },
    })
}

/// Which edit [`edit_request`] makes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EditOp {
    Authorize,
    Revoke,
}

/// Opens a UDP socket in namespace `ns` bound to `addr`.
fn socket_in(ns: &str, addr: SocketAddrV4) -> Result<UdpSocket> {
    switch::netns::in_netns(ns, || UdpSocket::bind(addr))
        .map_err(|source| HarnessError::Netns {
            name: ns.to_owned(),
            source,
        })?
        .map_err(|source| HarnessError::Io {
            what: format!("bind UDP {addr} in {ns}"),
            source,
        })
}

/// One probe datagram received: its sequence number, when the receiving
/// thread had it, and the kernel's receive time stamp of it (on the
/// monotonic clock; the thread's time when the kernel gave none).
#[derive(Clone, Copy, Debug)]
struct Arrival {
    seq: u64,
    user: Instant,
    kernel: Instant,
}

/// With `E2EBENCH_PROBE_FIFO=1`, the calling probe thread runs `SCHED_FIFO`
/// (priority 2), so the probe's own sending and receiving do not wait behind
/// the load (diagnosis: what the switch adds, apart from the harness's threads).
fn probe_priority() {
    if std::env::var_os("E2EBENCH_PROBE_FIFO").is_some_and(|v| v == "1")
        && let Err(e) = switch::sys::set_thread_fifo(2)
    {
        eprintln!("  probe thread: SCHED_FIFO refused: {e}");
    }
}

/// With `E2EBENCH_PROBE_FIFO=1`, the thread that writes the edits runs at
/// `SCHED_FIFO` 2 as well while it measures, and at its old nice value after
/// (dropped): t0 is taken just before the request is written, and a normal
/// thread can lose its core between the two (seen: 1.9 ms under the load).
struct EditorPriority(Option<i32>);

impl EditorPriority {
    fn take() -> EditorPriority {
        if std::env::var_os("E2EBENCH_PROBE_FIFO").is_none_or(|v| v != "1") {
            return EditorPriority(None);
        }
        let was = switch::sys::thread_sched().ok();
        match switch::sys::set_thread_fifo(2) {
            Ok(()) => EditorPriority(was.map(|(_, nice)| nice)),
            Err(e) => {
                eprintln!("  edit thread: SCHED_FIFO refused: {e}");
                EditorPriority(None)
            }
        }
    }
}

impl Drop for EditorPriority {
    fn drop(&mut self) {
        if let Some(nice) = self.0 {
            let _ = switch::sys::set_thread_nice(nice);
        }
    }
}

/// Send-time ring of the probe (entries; 6.5 s at the probe's rate).
const SENT_RING: usize = 1 << 16;

/// Asks for kernel receive time stamps (`SO_TIMESTAMPNS`) on `sock`.
fn rx_sock_timestamps(sock: &UdpSocket) -> Result<()> {
    nix::sys::socket::setsockopt(sock, nix::sys::socket::sockopt::ReceiveTimestampns, &true)
        .map_err(|e| HarnessError::Io {
            what: "SO_TIMESTAMPNS on the probe socket".into(),
            source: e.into(),
        })
}

/// Receives one probe datagram (None on timeout or a short one).
fn recv_arrival(sock: &UdpSocket, buf: &mut [u8; 64]) -> Option<Arrival> {
    use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
    use std::os::fd::AsRawFd;
    let mut cmsg = nix::cmsg_space!(nix::sys::time::TimeSpec);
    let mut iov = [std::io::IoSliceMut::new(buf)];
    let (len, stamp) = {
        let msg = recvmsg::<()>(
            sock.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::empty(),
        )
        .ok()?;
        let stamp = msg.cmsgs().ok()?.find_map(|c| match c {
            ControlMessageOwned::ScmTimestampns(ts) => Some(ts),
            _ => None,
        });
        (msg.bytes, stamp)
    };
    let user = Instant::now();
    let wall = std::time::SystemTime::now();
    let seq = u64::from_be_bytes(buf.get(..8.min(len))?.try_into().ok()?);
    // The stamp is on the realtime clock: its age now, taken off `user`.
    let kernel = stamp
        .and_then(|ts| {
            let at = std::time::UNIX_EPOCH + Duration::new(ts.tv_sec() as u64, ts.tv_nsec() as u32);
            wall.duration_since(at).ok()
        })
        .and_then(|age| user.checked_sub(age))
        .unwrap_or(user);
    Some(Arrival { seq, user, kernel })
}

/// Arrivals not yet taken, dropped.
fn drain(rx: &Receiver<Arrival>) {
    while rx.try_recv().is_ok() {}
}

/// How the edit test adds and removes the rule that lets the probe through.
pub trait Editor {
    /// Adds the rule; returns once the control plane acknowledged it.
    fn allow(&mut self) -> Result<()>;
    /// Removes it again.
    fn deny(&mut self) -> Result<()>;
    /// Untimed work after the enforce measurement (e.g. learning the rule's
    /// handle for the removal).
    fn settle(&mut self) -> Result<()> {
        Ok(())
    }
}

/// sgswitch: `authorize`/`revoke` of `-P udp -p PROBE_PORT -s SRC/32` on
/// [`paths::EDIT_GROUP`], one request line each (mgmt's own `Request`,
/// encoded ahead) on one socket connection.
struct SgEditor {
    api: Api,
    auth: String,
    revoke: String,
}

impl Editor for SgEditor {
    fn allow(&mut self) -> Result<()> {
        self.api.call(&self.auth).map(drop)
    }
    fn deny(&mut self) -> Result<()> {
        self.api.call(&self.revoke).map(drop)
    }
}

/// The kernel: `nft add rule inet sgbench fwdchain ip saddr SRC udp dport
/// PROBE_PORT accept` (appended to the chain) and `nft delete rule ... handle
/// H`, each one `nft` process in the bridge's namespace.
pub struct NftEditor {
    pub ns: String,
    pub src: Ipv4Addr,
    handle: Option<u64>,
}

impl NftEditor {
    pub fn new(ns: &str, src: Ipv4Addr) -> NftEditor {
        NftEditor {
            ns: ns.to_owned(),
            src,
            handle: None,
        }
    }
}

/// The handle `nft --echo --handle add rule ...` printed (`... # handle N`).
pub fn parse_nft_handle(out: &str) -> Option<u64> {
    out.lines()
        .find_map(|l| l.rsplit_once("# handle ")?.1.trim().parse().ok())
}

impl Editor for NftEditor {
    fn allow(&mut self) -> Result<()> {
        let src = self.src.to_string();
        let port = PROBE_PORT.to_string();
        // Plain `add`: with `--echo` nft reads the whole ruleset first (~10x
        // slower on a 10k-rule chain); the handle is looked up untimed.
        super::exec::run_ok(
            &mut in_ns(
                &self.ns,
                "nft",
                &[
                    "add", "rule", "inet", "sgbench", "fwdchain", "ip", "saddr", &src, "udp",
                    "dport", &port, "accept",
                ],
            ),
            Duration::from_secs(30),
        )
        .map(drop)
    }

    fn settle(&mut self) -> Result<()> {
        let out = super::exec::run_ok(
            &mut in_ns(
                &self.ns,
                "nft",
                &["-a", "list", "chain", "inet", "sgbench", "fwdchain"],
            ),
            Duration::from_secs(30),
        )?;
        let want = format!("ip saddr {} udp dport {PROBE_PORT} accept", self.src);
        let line = out
            .stdout
            .lines()
            .find(|l| l.contains(&want))
            .unwrap_or_default();
        self.handle = Some(parse_nft_handle(line).ok_or_else(|| HarnessError::Parse {
            what: "nft rule handle",
            text: line.to_owned(),
        })?);
        Ok(())
    }

    fn deny(&mut self) -> Result<()> {
        let h = self
            .handle
            .take()
            .ok_or_else(|| HarnessError::Setup("nft: no rule to delete".into()))?
            .to_string();
        super::exec::run_ok(
            &mut in_ns(
                &self.ns,
                "nft",
                &[
                    "delete", "rule", "inet", "sgbench", "fwdchain", "handle", &h,
                ],
            ),
            Duration::from_secs(30),
        )
        .map(drop)
    }
}

/// Where the probe runs: a receiving socket in `rx_ns` on [`PROBE_PORT`], 16
/// sending sockets in `tx_ns` bound to `src`, sending to `dst`.
#[derive(Clone, Debug)]
pub struct Probe {
    pub rx_ns: String,
    pub tx_ns: String,
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
}

/// The sgswitch rule-edit test; `pairs` authorize+revoke pairs. `load` runs an
/// iperf3 stream through the switch meanwhile; `launches` launches and
/// terminates instances meanwhile ([`Launcher`]).
pub fn edit_latency(
    sg: &SgPath,
    pairs: usize,
    load: Option<&Endpoints>,
    launches: Option<LaunchPace>,
) -> Result<EditResult> {
    let target = sg
        .edit_target
        .as_ref()
        .ok_or_else(|| HarnessError::Setup("the lab has no edit target".into()))?;
    let probe = Probe {
        rx_ns: target.netns.clone(),
        tx_ns: sg.lab.uplink_ns.clone(),
        src: e2e::OUTSIDE,
        dst: target.ip,
    };
    let mut ed = SgEditor {
        api: Api::connect(&sg.lab.socket)?,
        auth: edit_request(
            EditOp::Authorize,
            paths::EDIT_GROUP,
            e2e::OUTSIDE,
            PROBE_PORT,
        ),
        revoke: edit_request(EditOp::Revoke, paths::EDIT_GROUP, e2e::OUTSIDE, PROBE_PORT),
    };
    let launcher = if let Some(pace) = launches {
        Some(Launcher::start(&sg.lab.socket, pace)?)
    } else {
        None
    };
    let probed = probe_edits(&probe, pairs, load, &mut ed);
    let launched = launcher.map(Launcher::finish).transpose();
    let mut res = probed?;
    if let Some(took) = launched? {
        res.launch_us = took;
    }
    res.total_rules = sg.total_rules();
    res.target_rules = Some(sg.pad_rules + 1);
    let stats = sg.lab.cli(&["stats"]).stdout;
    res.daemon_commit_us = stats_p50_p99(&stats, "EDITS");
    res.daemon_publish_us = stats_p50_p99(&stats, "PUBLISH");
    Ok(res)
}

/// The edit test on any path: see the module docs.
pub fn probe_edits(
    probe: &Probe,
    pairs: usize,
    load: Option<&Endpoints>,
    editor: &mut dyn Editor,
) -> Result<EditResult> {
    let mut res = EditResult::default();
    let rx_sock = socket_in(
        &probe.rx_ns,
        SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, PROBE_PORT),
    )?;
    rx_sock
        .set_read_timeout(Some(Duration::from_millis(20)))
        .map_err(|source| HarnessError::Io {
            what: "probe receive timeout".into(),
            source,
        })?;
    let mut tx_socks = Vec::new();
    for _ in 0..16 {
        tx_socks.push(socket_in(&probe.tx_ns, SocketAddrV4::new(probe.src, 0))?);
    }
    rx_sock_timestamps(&rx_sock)?;
    let stop = Arc::new(AtomicBool::new(false));
    let (arr_tx, arrivals) = mpsc::channel::<Arrival>();
    let rstop = Arc::clone(&stop);
    let spawn_err = |source| HarnessError::Io {
        what: "probe thread".into(),
        source,
    };
    let receiver = thread::Builder::new()
        .name("probe-rx".into())
        .spawn(move || {
            probe_priority();
            let mut buf = [0u8; 64];
            while !rstop.load(Ordering::Relaxed) {
                if let Some(a) = recv_arrival(&rx_sock, &mut buf)
                    && arr_tx.send(a).is_err()
                {
                    return;
                }
            }
        })
        .map_err(spawn_err)?;
    let sstop = Arc::clone(&stop);
    let dst = SocketAddrV4::new(probe.dst, PROBE_PORT);
    // Send times by sequence number (the datagram's payload), a ring of
    // SENT_RING entries: nanoseconds since `base` + 1 (0: not sent).
    let base = Instant::now();
    let sent_at: Arc<Vec<AtomicU64>> =
        Arc::new((0..SENT_RING).map(|_| AtomicU64::new(0)).collect());
    // E2EBENCH_PROBE_SENDERS=N (diagnosis): N senders, each pinned to a
    // core of its own and sending every N x PROBE_INTERVAL, in turn, so the
    // probe goes on when one core is held (by a non-preemptible kernel
    // section, say) and the datagrams still leave ~PROBE_INTERVAL apart.
    let senders: usize = std::env::var("E2EBENCH_PROBE_SENDERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| (1..=8).contains(&n))
        .unwrap_or(1);
    let cores = core_affinity::get_core_ids().unwrap_or_default();
    let next_seq = Arc::new(AtomicU64::new(0));
    let tx_socks = Arc::new(tx_socks);
    let mut sender_threads = Vec::new();
    for k in 0..senders {
        let (ring, sstop) = (Arc::clone(&sent_at), Arc::clone(&sstop));
        let (next_seq, tx_socks) = (Arc::clone(&next_seq), Arc::clone(&tx_socks));
        let pin = (senders > 1).then(|| cores.get(k % cores.len().max(1)).copied());
        let every = PROBE_INTERVAL * senders as u32;
        let t = thread::Builder::new()
            .name("probe-tx".into())
            .spawn(move || -> Duration {
                if let Some(Some(core)) = pin {
                    core_affinity::set_for_current(core);
                }
                probe_priority();
                let t0 = Instant::now();
                thread::sleep(PROBE_INTERVAL * k as u32);
                // Bounded: at most 10 minutes whatever happens.
                while !sstop.load(Ordering::Relaxed) && t0.elapsed() < Duration::from_secs(600) {
                    let n = next_seq.fetch_add(1, Ordering::Relaxed);
                    let s = &tx_socks[(n % tx_socks.len() as u64) as usize];
                    ring[(n % SENT_RING as u64) as usize]
                        .store(base.elapsed().as_nanos() as u64 + 1, Ordering::Relaxed);
                    let _ = s.send_to(&n.to_be_bytes(), dst);
                    thread::sleep(every);
                }
                t0.elapsed()
            })
            .map_err(spawn_err)?;
        sender_threads.push(t);
    }
    let sent = |seq: u64| -> Option<Instant> {
        let ns = sent_at[(seq % SENT_RING as u64) as usize].load(Ordering::Relaxed);
        (ns > 0).then(|| base + Duration::from_nanos(ns - 1))
    };
    let mut background = None;
    if let Some(ep) = load {
        let secs = (pairs as u64 / 4 + 20).min(300).to_string();
        let mut srv = Proc::spawn(&mut in_ns(
            &ep.server_ns,
            "iperf3",
            &["-s", "-1", "--forceflush", "-p", "5211"],
        ))?;
        srv.wait_line("Server listening", Duration::from_secs(10))?;
        let ip = ep.server_ip.to_string();
        let cli = Proc::spawn(&mut in_ns(
            &ep.clients[0],
            "iperf3",
            &["-c", &ip, "-p", "5211", "-t", &secs],
        ))?;
        thread::sleep(Duration::from_millis(500));
        background = Some((srv, cli));
        res.load_note = Some(format!(
            "iperf3 TCP {} -> {} meanwhile",
            ep.clients[0], ep.label
        ));
    }
    // E2EBENCH_EDIT_DUMP=FILE: every edit's times and every probe arrival,
    // in µs since the probe started (diagnosis).
    let dump_path = std::env::var_os("E2EBENCH_EDIT_DUMP");
    let mut dump: Option<Vec<String>> = dump_path.as_ref().map(|_| Vec::new());
    if let Some(d) = dump.as_mut() {
        // Where `base` is on CLOCK_MONOTONIC (to line the dump up with
        // `perf record -k CLOCK_MONOTONIC`).
        let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC);
        let since = base.elapsed();
        if let Ok(now) = now {
            let ns = now.tv_sec() as i128 * 1_000_000_000 + now.tv_nsec() as i128;
            d.push(format!(
                "base_monotonic_ns {}",
                ns - since.as_nanos() as i128
            ));
        }
    }
    let run = (|| -> Result<()> {
        let _fifo = EditorPriority::take();
        // Warm up ARP and the connection, then start from a removed rule.
        editor.allow()?;
        thread::sleep(Duration::from_millis(50));
        editor.settle()?;
        editor.deny()?;
        for i in 0..pairs {
            Interrupt::check()?;
            // Quiet first: nothing allowed is in flight.
            let quiet_end = Instant::now() + Duration::from_secs(2);
            loop {
                match arrivals.recv_timeout(QUIET) {
                    Err(RecvTimeoutError::Timeout) => break,
                    Err(RecvTimeoutError::Disconnected) => {
                        return Err(HarnessError::Setup("probe receiver stopped".into()));
                    }
                    Ok(_) if Instant::now() > quiet_end => {
                        return Err(HarnessError::Setup(
                            "probes still arrive 2 s after a revoke".into(),
                        ));
                    }
                    Ok(_) => {}
                }
            }
            drain(&arrivals);
            let t0 = Instant::now();
            let rel = |t: Instant| signed_micros(t, base);
            editor.allow()?;
            let t_ack = Instant::now();
            res.ack_us.push(micros(t_ack - t0));
            if let Some(d) = dump.as_mut() {
                d.push(format!("edit {i} t0 {:.0} ack {:.0}", rel(t0), rel(t_ack)));
            }
            let deadline = t0 + Duration::from_secs(1);
            let first = loop {
                let left = deadline.saturating_duration_since(Instant::now());
                match arrivals.recv_timeout(left) {
                    Ok(a) if a.user >= t0 => break Some(a),
                    Ok(_) => {}
                    Err(_) => break None,
                }
            };
            match first {
                Some(a) => {
                    if let Some(s) = sent(a.seq) {
                        res.transit_us.push(signed_micros(a.kernel, s));
                        if let Some(d) = dump.as_mut() {
                            d.push(format!(
                                "first {} sent {:.0} kernel {:.0} user {:.0}",
                                a.seq,
                                rel(s),
                                rel(a.kernel),
                                rel(a.user)
                            ));
                        }
                    }
                    res.enforce_us.push(micros(a.user - t0));
                    res.enforce_rx_us.push(signed_micros(a.kernel, t0));
                    if let Some(s) = sent(a.seq) {
                        res.enforce_sent_us.push(signed_micros(s, t0));
                        if let Some(p) = a.seq.checked_sub(1).and_then(sent) {
                            res.probe_gap_us.push(signed_micros(s, p));
                        }
                    }
                }
                None => res.misses += 1,
            }
            editor.settle()?;
            thread::sleep(Duration::from_millis(2));
            let t2 = Instant::now();
            editor.deny()?;
            let mut last = None;
            if let Some(d) = dump.as_mut() {
                d.push(format!("revoke {i} t2 {:.0}", rel(t2)));
            }
            while let Ok(a) = arrivals.recv_timeout(QUIET) {
                if let Some(s) = sent(a.seq) {
                    res.transit_us.push(signed_micros(a.kernel, s));
                    if let Some(d) = dump.as_mut() {
                        d.push(format!(
                            "arr {} sent {:.0} kernel {:.0} user {:.0}",
                            a.seq,
                            rel(s),
                            rel(a.kernel),
                            rel(a.user)
                        ));
                    }
                }
                if a.user >= t2 {
                    last = Some(a.user);
                }
            }
            res.revoke_us.push(last.map_or(0.0, |t| micros(t - t2)));
            if (i + 1) % 25 == 0 {
                eprintln!("  edit pairs {}/{pairs}", i + 1);
            }
        }
        Ok(())
    })();
    if let (Some(p), Some(d)) = (dump_path, dump) {
        let _ = std::fs::write(p, d.join("\n") + "\n");
    }
    stop.store(true, Ordering::Relaxed);
    let took = sender_threads
        .into_iter()
        .map(|t| t.join().unwrap_or(Duration::from_secs(1)))
        .max()
        .unwrap_or(Duration::from_secs(1));
    let sent = next_seq.load(Ordering::Relaxed);
    res.probe_pps = sent as f64 / took.as_secs_f64().max(1e-3);
    let _ = receiver.join();
    drop(background);
    run?;
    Ok(res)
}

/// How often a [`Launcher`] launches.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum LaunchPace {
    /// The next launch as soon as the last instance is terminated.
    BackToBack,
    /// At most this many launches per second, evenly spaced (a launch that
    /// takes longer delays the next).
    PerSecond(u32),
}

/// Background instance launches during the edit test (`e2ebench
/// --edit-launches`): on its own connection, one namespace instance at a
/// time is launched (`run-instances AMI --no-qemu -g default`) and
/// terminated again, back to back or at a [`LaunchPace`]
/// (`--edit-launch-rate`), until stopped (at most [`LAUNCH_MAX`] launches or
/// 10 minutes). Each launch's time (request → reply) is kept. A faster
/// daemon launches more often back to back, which is a heavier load; a
/// fixed pace compares daemons under the same one.
pub struct Launcher {
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<Result<Vec<f64>>>>,
}

/// Most launches one [`Launcher`] makes.
pub const LAUNCH_MAX: usize = 5000;

impl Launcher {
    pub fn start(socket: &std::path::Path, pace: LaunchPace) -> Result<Launcher> {
        let mut api = Api::connect(socket)?;
        let stop = Arc::new(AtomicBool::new(false));
        let lstop = Arc::clone(&stop);
        let run = request_line(ApiCommand::RunInstances {
            ami: e2e::lab::AMI.to_owned(),
            count: 1,
            min_count: None,
            groups: Vec::new(),
            qemu: Some(false),
            client_token: None,
        });
        let thread = thread::Builder::new()
            .name("launcher".into())
            .spawn(move || -> Result<Vec<f64>> {
                let started = Instant::now();
                let mut took = Vec::new();
                while !lstop.load(Ordering::Relaxed)
                    && took.len() < LAUNCH_MAX
                    && started.elapsed() < Duration::from_secs(600)
                {
                    if let LaunchPace::PerSecond(n) = pace {
                        let due = started + Duration::from_secs(took.len() as u64) / n.max(1);
                        if let Some(wait) = due.checked_duration_since(Instant::now()) {
                            thread::sleep(wait);
                        }
                    }
                    let t = Instant::now();
                    let resp = api.call(&run)?;
                    took.push(micros(t.elapsed()));
                    let ids: Vec<String> = match resp {
                        mgmt::api::Response::Reservations { reservations } => reservations
                            .into_iter()
                            .flat_map(|r| r.instances)
                            .map(|i| i.id)
                            .collect(),
                        other => {
                            return Err(HarnessError::Setup(format!(
                                "run-instances answered {other:?}"
                            )));
                        }
                    };
                    api.command(ApiCommand::TerminateInstances { ids, all: false })?;
                }
                Ok(took)
            })
            .map_err(|source| HarnessError::Io {
                what: "launcher thread".into(),
                source,
            })?;
        Ok(Launcher {
            stop,
            thread: Some(thread),
        })
    }

    /// Stops and returns the launch times (µs).
    pub fn finish(mut self) -> Result<Vec<f64>> {
        self.stop.store(true, Ordering::Relaxed);
        match self.thread.take().map(thread::JoinHandle::join) {
            Some(Ok(r)) => r,
            Some(Err(_)) => Err(HarnessError::Setup("the launcher panicked".into())),
            None => Ok(Vec::new()),
        }
    }
}

impl Drop for Launcher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// `a − b` in µs, negative when `a` is earlier.
fn signed_micros(a: Instant, b: Instant) -> f64 {
    if a >= b {
        micros(a - b)
    } else {
        -micros(b - a)
    }
}

/// `(p50, p99)` of a `stats` line `NAME ... p50_us X p99_us Y`.
pub fn stats_p50_p99(stats: &str, name: &str) -> Option<(f64, f64)> {
    let line = stats.lines().find(|l| l.split('\t').next() == Some(name))?;
    let f: Vec<&str> = line.split('\t').collect();
    let at = |k: &str| -> Option<f64> {
        let i = f.iter().position(|x| *x == k)?;
        f.get(i + 1)?.parse().ok()
    };
    Some((at("p50_us")?, at("p99_us")?))
}

/// CLI round trips: `sgswitch --socket S describe-group GROUP`, `runs` times
/// (µs each, spawn to exit).
pub fn cli_rtt(sg: &SgPath, group: &str, runs: usize) -> Result<Vec<f64>> {
    let bin = e2e::lab::sgswitch_bin();
    let mut out = Vec::with_capacity(runs);
    for _ in 0..runs {
        Interrupt::check()?;
        let t = Instant::now();
        let st = Command::new(&bin)
            .arg("--socket")
            .arg(&sg.lab.socket)
            .args(["describe-group", group])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map_err(|source| HarnessError::Spawn {
                cmd: bin.display().to_string(),
                source,
            })?;
        let us = micros(t.elapsed());
        if !st.success() {
            return Err(HarnessError::Setup(format!(
                "sgswitch describe-group {group} failed: {st}"
            )));
        }
        out.push(us);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edit_request_is_the_daemon_wire_format() {
        let r = edit_request(
            EditOp::Authorize,
            "gedit",
            Ipv4Addr::new(172, 31, 255, 10),
            9999,
        );
        // The daemon's own decoder reads it back as the intended command.
        let req = mgmt::api::decode_request(r.trim_end().as_bytes()).unwrap();
        let ApiCommand::Authorize {
            group, permissions, ..
        } = req.command
        else {
            panic!("not an authorize: {r}")
        };
        assert_eq!(group, GroupRef::Name("gedit".into()));
        assert_eq!(permissions.len(), 1);
        assert_eq!(permissions[0].proto.as_deref(), Some("udp"));
        assert_eq!(permissions[0].ports.as_deref(), Some("9999"));
        assert_eq!(permissions[0].cidrs, ["172.31.255.10/32"]);
        assert_eq!(req.owner, None);
    }

    #[test]
    fn nft_echo_handle_parses() {
        let out = "add rule inet sgbench fwdchain ip saddr 10.200.200.10 udp dport 9999 accept # handle 1234\n";
        assert_eq!(parse_nft_handle(out), Some(1234));
        assert_eq!(parse_nft_handle("nothing"), None);
    }

    #[test]
    fn stats_percentiles_parse() {
        let s =
            "GENERATION\t7\nEDITS\t12\tp50_us\t41\tp99_us\t88\nPUBLISH\tp50_us\t30\tp99_us\t70\n";
        assert_eq!(stats_p50_p99(s, "EDITS"), Some((41.0, 88.0)));
        assert_eq!(stats_p50_p99(s, "PUBLISH"), Some((30.0, 70.0)));
        assert_eq!(stats_p50_p99(s, "NOPE"), None);
    }
}
