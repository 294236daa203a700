//! The test lab: one running `sgswitch` daemon, its uplink namespace standing in
//! for the outside world, and the instances it launched.
//!
//! [`Lab::start`] creates a uniquely named uplink namespace (`sgt-<pid>-<n>-up`),
//! starts the real binary as
//! `sgswitch up --state-dir DIR/state --socket DIR/sock --uplink sgu<pid>x<n>
//! --uplink-netns NS --subnet 172.31.0.0/16 --workers 2 --ec2-listen off
//! [extra...]` (subnet, workers and extra arguments set by [`LabConfig`];
//! [`LabConfig::ec2`] serves the EC2 Query API on `127.0.0.1:0` instead, the
//! bound address parsed from the daemon's `sgswitch: ec2 api on http://ADDR`
//! line: [`Lab::ec2_endpoint`]), waits for
//! `sgswitch: ready on` on its stderr and the socket, and gives the uplink TAP the
//! outside addresses [`OUTSIDE`] (primary) and [`OUTSIDE2`] inside the uplink
//! namespace. Nothing is ever configured in the root namespace.
//!
//! Names are unique per process and lab, so tests run in parallel safely.
//!
//! Cleanup ([`Drop`], also when the test panics): helper processes are killed by
//! PID; the daemon gets `SIGTERM` then `SIGKILL`; every instance namespace the lab
//! has seen (from `run-instances` / `describe-instances` output, `PLACE
//! netns:NAME`) is deleted, then the uplink namespace (which takes the uplink TAP
//! with it) and an uplink TAP left in the root namespace if the daemon never moved
//! it; the temp dir is removed (kept when `SGSWITCH_E2E_KEEP` is set; more `up`
//! arguments can be given in `SGSWITCH_E2E_UP_ARGS` for debugging). On panic
//! the tail of the daemon's log is printed.
//!
//! Binaries: `sgswitch` is `SGSWITCH_BIN` if set, else it is built (a no-op when
//! fresh) with the `cargo` that builds this crate into the test's own target dir
//! and profile (`target/<profile>/sgswitch`, the test executable being
//! `target/<profile>/deps/NAME-HASH`); `cargo test` does not hold the target lock
//! while tests run, so the nested build cannot deadlock. `labhelper` (this crate's
//! helper binary, see `src/bin/labhelper.rs`) sits next to it, built by cargo
//! before any integration test of this crate.

use std::collections::BTreeSet;
use std::fs;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use crate::nmap::{self, Scan};
use crate::run::{self, Outcome, describe, kill_wait};

/// The lab's subnet (`--subnet`).
pub const SUBNET: &str = "172.31.0.0/16";
/// The outside world's primary address, on the uplink TAP in the uplink namespace.
pub const OUTSIDE: Ipv4Addr = Ipv4Addr::new(172, 31, 255, 10);
/// A second outside address on the same TAP ("from another outside address").
pub const OUTSIDE2: Ipv4Addr = Ipv4Addr::new(172, 31, 255, 11);
/// The AMI the tests launch (the seed's).
pub const AMI: &str = "ami-eca54085";

/// Whether we may create namespaces and TAPs.
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// More `sgswitch up` arguments from `SGSWITCH_E2E_UP_ARGS` (whitespace
/// separated): a debugging aid, e.g. `--poll busy`.
fn env_up_args() -> Vec<String> {
    std::env::var("SGSWITCH_E2E_UP_ARGS")
        .map(|v| v.split_whitespace().map(str::to_owned).collect())
        .unwrap_or_default()
}

/// Whether network namespace `name` exists (`/run/netns/NAME`).
pub fn netns_present(name: &str) -> bool {
    Path::new("/run/netns").join(name).exists()
}

/// Options of one lab.
#[derive(Clone, Debug)]
pub struct LabConfig {
    /// Short test name, used in the temp dir name and messages.
    pub name: String,
    pub workers: usize,
    /// `--subnet` ([`SUBNET`] unless a test needs a tiny one).
    pub subnet: String,
    /// More `sgswitch up` arguments (e.g. `--conntrack-on-revoke keep`).
    pub extra_args: Vec<String>,
    /// Serve the EC2 Query API on a free loopback port ([`LabConfig::ec2`]);
    /// off by default (`--ec2-listen off`), so parallel labs never race for
    /// the default port 8773.
    pub ec2: bool,
}

impl LabConfig {
    pub fn new(name: &str) -> LabConfig {
        LabConfig {
            name: name.to_string(),
            workers: 2,
            subnet: SUBNET.to_string(),
            extra_args: Vec::new(),
            ec2: false,
        }
    }

    /// Serve the EC2 Query API on `127.0.0.1:0`; [`Lab::ec2_endpoint`] is the
    /// address the daemon printed.
    pub fn ec2(mut self) -> LabConfig {
        self.ec2 = true;
        self
    }

    pub fn subnet(mut self, cidr: &str) -> LabConfig {
        self.subnet = cidr.to_string();
        self
    }

    pub fn arg(mut self, a: &str) -> LabConfig {
        self.extra_args.push(a.to_string());
        self
    }
}

/// One launched instance, from a `run-instances` `INSTANCE` line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LabInstance {
    pub id: String,
    pub ip: Ipv4Addr,
    pub state: String,
    /// The namespace the instance lives in (`PLACE` = `netns:NAME`).
    pub netns: String,
}

/// Result of one TCP connect ([`Lab::probe`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reach {
    /// Connected and the echo came back.
    Open,
    /// Connected but nothing came back.
    NoEcho,
    Refused,
    Timeout,
    Unreachable,
    Other(String),
}

impl Reach {
    pub(crate) fn parse(s: &str) -> Reach {
        match s {
            "open" => Reach::Open,
            "noecho" => Reach::NoEcho,
            "refused" => Reach::Refused,
            "timeout" => Reach::Timeout,
            "unreachable" => Reach::Unreachable,
            other => Reach::Other(other.to_string()),
        }
    }
}

/// A running `labhelper stream`: echoed records arrive as `ok SEQ` lines, each
/// stamped with the moment the test saw it.
pub struct Stream {
    child: Child,
    lines: Arc<Mutex<Vec<(Instant, String)>>>,
}

impl Stream {
    /// Instants at which echoed records arrived.
    pub fn oks(&self) -> Vec<Instant> {
        let lines = self.lines.lock().unwrap_or_else(PoisonError::into_inner);
        lines
            .iter()
            .filter(|(_, l)| l.starts_with("ok "))
            .map(|(t, _)| *t)
            .collect()
    }

    /// Echoed records that arrived after `t`.
    pub fn oks_after(&self, t: Instant) -> usize {
        self.oks().into_iter().filter(|&x| x > t).count()
    }

    /// When the last echoed record arrived.
    pub fn last_ok(&self) -> Option<Instant> {
        self.oks().into_iter().max()
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        kill_wait(&mut self.child, Duration::ZERO);
    }
}

static LAB_SEQ: AtomicU32 = AtomicU32::new(0);

/// A running daemon and everything it and the test made. See the module docs.
pub struct Lab {
    pub cfg: LabConfig,
    pub dir: PathBuf,
    pub socket: PathBuf,
    pub state_dir: PathBuf,
    pub uplink_ns: String,
    pub uplink_if: String,
    bin: PathBuf,
    helper: PathBuf,
    daemon: Mutex<Option<Child>>,
    /// Instance namespaces seen, deleted at drop.
    netns: Mutex<BTreeSet<String>>,
    /// Helper processes (listeners), killed at drop.
    children: Mutex<Vec<Child>>,
    /// The EC2 API's address of the running daemon (with [`LabConfig::ec2`]).
    ec2_addr: Mutex<Option<std::net::SocketAddr>>,
}

/// How long the daemon may take to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Deadline of one CLI command.
const CLI_TIMEOUT: Duration = Duration::from_secs(30);

impl Lab {
    /// Start a lab; `None` (after printing why) when not root, so the calling
    /// test passes as skipped. Panics on any failure, after cleaning up.
    pub fn start(cfg: LabConfig) -> Option<Lab> {
        if !is_root() {
            eprintln!(
                "SKIP {}: not root (the end-to-end tests create namespaces and TAPs)",
                cfg.name
            );
            return None;
        }
        let pid = std::process::id();
        let n = LAB_SEQ.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("sgswitch-e2e-{}-{pid}-{n}", cfg.name));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        let lab = Lab {
            socket: dir.join("sock"),
            state_dir: dir.join("state"),
            uplink_ns: format!("sgt-{pid}-{n}-up"),
            // "sgu" + at most 7 hex digits (pid <= 2^22) + "x" + counter: <= 15.
            uplink_if: format!("sgu{pid:x}x{n}"),
            bin: sgswitch_bin(),
            helper: sibling_bin("labhelper"),
            dir,
            cfg,
            daemon: Mutex::new(None),
            netns: Mutex::new(BTreeSet::new()),
            children: Mutex::new(Vec::new()),
            ec2_addr: Mutex::new(None),
        };
        assert!(lab.uplink_if.len() <= 15, "{}", lab.uplink_if);
        lab.must(Command::new("ip").args(["netns", "add", &lab.uplink_ns]));
        lab.must(Command::new("ip").args(["-n", &lab.uplink_ns, "link", "set", "lo", "up"]));
        lab.start_daemon();
        Some(lab)
    }

    /// Start (or restart, on the same state dir) the daemon and wait until it
    /// serves; then make sure the outside addresses are on the uplink.
    pub fn start_daemon(&self) {
        let mut slot = self.daemon.lock().unwrap_or_else(PoisonError::into_inner);
        assert!(slot.is_none(), "daemon already running");
        let log_path = self.dir.join("daemon.log");
        let log_start = fs::metadata(&log_path).map_or(0, |m| m.len());
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .unwrap_or_else(|e| panic!("open {}: {e}", log_path.display()));
        let log2 = log.try_clone().expect("dup log fd");
        let workers = self.cfg.workers.to_string();
        let ec2_listen = if self.cfg.ec2 { "127.0.0.1:0" } else { "off" };
        let mut cmd = Command::new(&self.bin);
        cmd.arg("up")
            .arg("--state-dir")
            .arg(&self.state_dir)
            .arg("--socket")
            .arg(&self.socket)
            .args(["--uplink", &self.uplink_if])
            .args(["--uplink-netns", &self.uplink_ns])
            .args(["--subnet", &self.cfg.subnet])
            .args(["--workers", &workers])
            .args(["--ec2-listen", ec2_listen])
            .args(&self.cfg.extra_args)
            .args(env_up_args())
            .env_remove("SGSWITCH_SOCKET")
            .env_remove("SGSWITCH_OWNER")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2);
        let started = Instant::now();
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", describe(&cmd)));
        // Stored at once, so `Drop` kills it whatever happens next.
        *slot = Some(child);
        drop(slot);
        loop {
            let exited = {
                let mut slot = self.daemon.lock().unwrap_or_else(PoisonError::into_inner);
                match slot.as_mut().map(Child::try_wait) {
                    Some(Ok(Some(st))) => {
                        slot.take();
                        Some(st)
                    }
                    _ => None,
                }
            };
            if let Some(st) = exited {
                panic!(
                    "daemon exited before ready ({st}): {}\n{}",
                    describe(&cmd),
                    self.log_tail(80)
                );
            }
            let text = fs::read(&log_path).unwrap_or_default();
            let new =
                String::from_utf8_lossy(&text[(log_start as usize).min(text.len())..]).into_owned();
            if new.contains("sgswitch: ready on") && self.socket.exists() {
                let addr = new
                    .lines()
                    .rev()
                    .filter_map(|l| l.strip_prefix("sgswitch: ec2 api on http://"))
                    .find_map(|a| a.trim().parse().ok());
                assert!(
                    addr.is_some() || !self.cfg.ec2,
                    "daemon printed no EC2 API address:\n{}",
                    self.log_tail(40)
                );
                *self.ec2_addr.lock().unwrap_or_else(PoisonError::into_inner) = addr;
                break;
            }
            assert!(
                started.elapsed() < READY_TIMEOUT,
                "daemon not ready after {READY_TIMEOUT:?}: {}\n{}",
                describe(&cmd),
                self.log_tail(80)
            );
            thread::sleep(Duration::from_millis(20));
        }
        self.ensure_outside_addrs();
    }

    /// Put [`OUTSIDE`] and [`OUTSIDE2`] on the uplink TAP unless already there
    /// (a re-attached persistent uplink keeps them across a restart).
    fn ensure_outside_addrs(&self) {
        if env_up_args().iter().any(|a| a == "--no-switch") {
            return; // management-only daemon (debugging): no uplink to address
        }
        let shown = self.must(Command::new("ip").args([
            "-n",
            &self.uplink_ns,
            "-4",
            "addr",
            "show",
            "dev",
            &self.uplink_if,
        ]));
        for a in [OUTSIDE, OUTSIDE2] {
            if !shown.stdout.contains(&format!("inet {a}/16")) {
                let cidr = format!("{a}/16");
                self.must(Command::new("ip").args([
                    "-n",
                    &self.uplink_ns,
                    "addr",
                    "add",
                    &cidr,
                    "dev",
                    &self.uplink_if,
                ]));
            }
        }
        self.must(Command::new("ip").args([
            "-n",
            &self.uplink_ns,
            "link",
            "set",
            &self.uplink_if,
            "up",
        ]));
    }

    /// `http://127.0.0.1:PORT` of the running daemon's EC2 API (the lab must
    /// have been started with [`LabConfig::ec2`]).
    pub fn ec2_endpoint(&self) -> String {
        let addr = self
            .ec2_addr
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .expect("the lab serves no EC2 API: start it with LabConfig::ec2()");
        format!("http://{addr}")
    }

    /// The daemon's PID, if it runs.
    pub fn daemon_pid(&self) -> Option<u32> {
        self.daemon
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map(Child::id)
    }

    /// `SIGKILL` the daemon (a crash) and reap it.
    pub fn crash_daemon(&self) {
        let mut slot = self.daemon.lock().unwrap_or_else(PoisonError::into_inner);
        let mut child = slot.take().expect("daemon not running");
        kill_wait(&mut child, Duration::ZERO);
    }

    /// Stop the daemon gracefully (`SIGTERM`, then `SIGKILL` after 5 s).
    pub fn stop_daemon(&self) {
        if let Some(mut child) = self
            .daemon
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            kill_wait(&mut child, Duration::from_secs(5));
        }
    }

    /// Whether the daemon process is still alive.
    pub fn daemon_alive(&self) -> bool {
        let mut slot = self.daemon.lock().unwrap_or_else(PoisonError::into_inner);
        match slot.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Run `sgswitch --socket SOCK ARGS...`.
    pub fn cli(&self, args: &[&str]) -> Outcome {
        let mut cmd = Command::new(&self.bin);
        cmd.arg("--socket")
            .arg(&self.socket)
            .args(args)
            .env_remove("SGSWITCH_SOCKET")
            .env_remove("SGSWITCH_OWNER");
        run::run(&mut cmd, CLI_TIMEOUT).unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`Lab::cli`] that must succeed; returns stdout.
    pub fn cli_ok(&self, args: &[&str]) -> String {
        let o = self.cli(args);
        assert!(
            o.success(),
            "sgswitch {} failed ({:?}):\nstdout: {}\nstderr: {}",
            args.join(" "),
            o.code,
            o.stdout,
            o.stderr
        );
        o.stdout
    }

    /// `run-instances AMI -n N -g G...`; records the instances' namespaces.
    pub fn run_instances(&self, n: usize, groups: &[&str]) -> Vec<LabInstance> {
        let count = n.to_string();
        let mut args = vec!["run-instances", AMI, "-n", &count];
        for g in groups {
            args.extend(["-g", g]);
        }
        let out = self.cli_ok(&args);
        let got = self.record_instances(&out);
        assert_eq!(got.len(), n, "run-instances printed:\n{out}");
        let lines: Vec<&str> = out.lines().collect();
        let res: Vec<&str> = lines[0].split('\t').collect();
        assert_eq!(res[0], "RESERVATION", "{out}");
        assert!(res[1].starts_with("r-"), "{out}");
        got
    }

    /// Parse `INSTANCE` lines and remember their namespaces for cleanup.
    pub fn record_instances(&self, out: &str) -> Vec<LabInstance> {
        let got = parse_instances(out);
        let mut ns = self.netns.lock().unwrap_or_else(PoisonError::into_inner);
        for i in &got {
            ns.insert(i.netns.clone());
        }
        got
    }

    /// `terminate-instances ID...`; returns stdout.
    pub fn terminate(&self, ids: &[&str]) -> String {
        let mut args = vec!["terminate-instances"];
        args.extend_from_slice(ids);
        self.cli_ok(&args)
    }

    /// Run `ip netns exec NS PROG ARGS...` with a deadline.
    pub fn exec(&self, ns: &str, prog: &str, args: &[&str], timeout: Duration) -> Outcome {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns, prog]).args(args);
        run::run(&mut cmd, timeout).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Start TCP echo listeners on `ports` inside `ns` (killed at drop).
    pub fn listen(&self, ns: &str, ports: &[u16]) {
        self.spawn_listener(ns, ports, false);
    }

    /// Start TCP and UDP echo listeners on `ports` inside `ns` (killed at drop).
    pub fn listen_tcp_udp(&self, ns: &str, ports: &[u16]) {
        self.spawn_listener(ns, ports, true);
    }

    fn spawn_listener(&self, ns: &str, ports: &[u16], udp: bool) {
        let child = start_listener(&self.helper, ns, ports, udp, 600);
        self.children
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(child);
    }

    /// TCP-connect from `ns` (optionally from source address `from`) to every
    /// target at once, each bounded by `timeout`; results in target order.
    pub fn probe(
        &self,
        ns: &str,
        from: Option<Ipv4Addr>,
        targets: &[(Ipv4Addr, u16)],
        timeout: Duration,
    ) -> Vec<Reach> {
        self.probe_with(ns, from, targets, timeout, false)
    }

    /// Like [`Lab::probe`] with one UDP datagram per target: `Open` when the echo
    /// came back, `Refused` on ICMP port unreachable, else `Timeout`.
    pub fn probe_udp(
        &self,
        ns: &str,
        from: Option<Ipv4Addr>,
        targets: &[(Ipv4Addr, u16)],
        timeout: Duration,
    ) -> Vec<Reach> {
        self.probe_with(ns, from, targets, timeout, true)
    }

    fn probe_with(
        &self,
        ns: &str,
        from: Option<Ipv4Addr>,
        targets: &[(Ipv4Addr, u16)],
        timeout: Duration,
        udp: bool,
    ) -> Vec<Reach> {
        probe_from(&self.helper, ns, from, targets, timeout, udp)
    }

    /// One TCP connect from `ns`.
    pub fn connect(&self, ns: &str, ip: Ipv4Addr, port: u16) -> Reach {
        self.probe(ns, None, &[(ip, port)], Duration::from_millis(1000))
            .remove(0)
    }

    /// One ICMP echo from `ns` with source address `from` (`busybox ping`); whether
    /// the reply came back within a second.
    pub fn ping(&self, ns: &str, from: Ipv4Addr, target: Ipv4Addr) -> bool {
        let (src, dst) = (from.to_string(), target.to_string());
        let args = ["ping", "-c", "1", "-W", "1", "-I", &src, &dst];
        self.exec(ns, "busybox", &args, Duration::from_secs(10))
            .success()
    }

    /// Start a `labhelper stream` from `ns` to `ip:port` for `secs` seconds; returns
    /// once connected.
    pub fn stream(&self, ns: &str, ip: Ipv4Addr, port: u16, secs: u64) -> Stream {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns])
            .arg(&self.helper)
            .args(["stream", "--interval-ms", "10", "--secs", &secs.to_string()])
            .arg(format!("{ip}:{port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", describe(&cmd)));
        let rx = line_channel(child.stdout.take().expect("piped stdout"));
        let first = rx.recv_timeout(Duration::from_secs(5));
        if !matches!(&first, Ok((_, l)) if l == "connected") {
            kill_wait(&mut child, Duration::ZERO);
            panic!("{} did not connect: {first:?}", describe(&cmd));
        }
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&lines);
        thread::spawn(move || {
            for item in rx {
                sink.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(item);
            }
        });
        Stream { child, lines }
    }

    /// `nmap -Pn -n -T4 --max-retries 0 --min-rate 1000 -oG - -p PORTS TARGET`
    /// from `ns`; with `spoof = Some((iface, src))` also `-e iface -S src`.
    pub fn nmap(
        &self,
        ns: &str,
        spoof: Option<(&str, Ipv4Addr)>,
        target: Ipv4Addr,
        ports: &str,
    ) -> Scan {
        nmap_in(ns, spoof, target, ports)
    }

    /// nmap from the uplink namespace with the primary outside address.
    pub fn nmap_outside(&self, target: Ipv4Addr, ports: &str) -> Scan {
        self.nmap(&self.uplink_ns, None, target, ports)
    }

    /// The last `n` lines of the daemon's log.
    pub fn log_tail(&self, n: usize) -> String {
        let text = fs::read_to_string(self.dir.join("daemon.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    fn must(&self, cmd: &mut Command) -> Outcome {
        let o = run::run(cmd, Duration::from_secs(20)).unwrap_or_else(|e| panic!("{e}"));
        assert!(o.success(), "{} failed: {}", describe(cmd), o.stderr);
        o
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for mut c in self
            .children
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .drain(..)
        {
            kill_wait(&mut c, Duration::ZERO);
        }
        // Learn every instance the daemon still knows, so none is left behind.
        if self.daemon_alive() {
            let mut cmd = Command::new(&self.bin);
            cmd.arg("--socket")
                .arg(&self.socket)
                .arg("describe-instances");
            if let Ok(o) = run::run(&mut cmd, Duration::from_secs(5)) {
                self.record_instances(&o.stdout);
            }
        }
        self.stop_daemon();
        let panicking = thread::panicking();
        if panicking {
            eprintln!(
                "---- sgswitch log ({}) ----\n{}\n----",
                self.cfg.name,
                self.log_tail(60)
            );
        }
        let mut names: Vec<String> = self
            .netns
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .cloned()
            .collect();
        names.push(self.uplink_ns.clone());
        for ns in names {
            if netns_present(&ns) {
                let _ = run::run(
                    Command::new("ip").args(["netns", "del", &ns]),
                    Duration::from_secs(10),
                );
            }
        }
        if Path::new("/sys/class/net").join(&self.uplink_if).exists() {
            let _ = run::run(
                Command::new("ip").args(["link", "del", &self.uplink_if]),
                Duration::from_secs(10),
            );
        }
        if std::env::var_os("SGSWITCH_E2E_KEEP").is_none() {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// Parse `INSTANCE\tID\tAMI\tIP\tSTATE\tIDX\tPLACE` lines (other lines ignored).
pub fn parse_instances(out: &str) -> Vec<LabInstance> {
    out.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            if f.first() != Some(&"INSTANCE") || f.len() < 7 {
                return None;
            }
            Some(LabInstance {
                id: f[1].to_string(),
                ip: f[3].parse().ok()?,
                state: f[4].to_string(),
                netns: f[6].strip_prefix("netns:")?.to_string(),
            })
        })
        .collect()
}

/// Lines of a child's stdout, each stamped when read, on a channel.
/// nmap (SYN scan, grepable output) from namespace `ns` at `target`'s
/// `ports`, optionally from interface and source address `spoof`.
pub fn nmap_in(ns: &str, spoof: Option<(&str, Ipv4Addr)>, target: Ipv4Addr, ports: &str) -> Scan {
    let mut args: Vec<String> = [
        "-Pn",
        "-n",
        "-T4",
        "--max-retries",
        "0",
        "--min-rate",
        "1000",
        "-oG",
        "-",
        "-p",
        ports,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if let Some((iface, src)) = spoof {
        args.extend(["-e".into(), iface.to_string(), "-S".into(), src.to_string()]);
    }
    args.push(target.to_string());
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns, "nmap"]).args(&argv);
    let o = run::run(&mut cmd, Duration::from_secs(60)).unwrap_or_else(|e| panic!("{e}"));
    assert!(o.success(), "nmap {}: {o:?}", args.join(" "));
    let mut hosts = nmap::parse_grepable(&o.stdout).unwrap_or_else(|e| panic!("{e}"));
    hosts
        .remove(&target)
        .unwrap_or_else(|| panic!("nmap printed no ports for {target}:\n{}", o.stdout))
}

/// Start `labhelper listen` (TCP, and UDP with `udp`, echo) on `ports` inside
/// `ns` for at most `max_secs`; returns once it listens.
pub fn start_listener(helper: &Path, ns: &str, ports: &[u16], udp: bool, max_secs: u64) -> Child {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns])
        .arg(helper)
        .args(["listen", "--max-secs", &max_secs.to_string()])
        .args(udp.then_some("--udp"))
        .args(ports.iter().map(u16::to_string))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("start {}: {e}", describe(&cmd)));
    let lines = line_channel(child.stdout.take().expect("piped stdout"));
    let first = lines.recv_timeout(Duration::from_secs(10));
    let ok = matches!(&first, Ok((_, l)) if l == "listening");
    if !ok {
        kill_wait(&mut child, Duration::ZERO);
        panic!("{} did not start listening: {first:?}", describe(&cmd));
    }
    child
}

/// `labhelper probe` from `ns` (optionally from source address `from`): a TCP
/// connect (or with `udp` one echoed datagram) to every target at once, each
/// bounded by `timeout`; results in target order.
pub fn probe_from(
    helper: &Path,
    ns: &str,
    from: Option<Ipv4Addr>,
    targets: &[(Ipv4Addr, u16)],
    timeout: Duration,
    udp: bool,
) -> Vec<Reach> {
    if targets.is_empty() {
        return Vec::new();
    }
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns])
        .arg(helper)
        .arg("probe")
        .args(udp.then_some("--udp"));
    if let Some(f) = from {
        cmd.args(["--from", &f.to_string()]);
    }
    cmd.args(["--timeout-ms", &timeout.as_millis().to_string()]);
    cmd.args(targets.iter().map(|(ip, p)| format!("{ip}:{p}")));
    let batches = targets.len().div_ceil(64) as u32;
    let o = run::run(&mut cmd, timeout * batches + Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(o.success(), "{}: {o:?}", describe(&cmd));
    let res: Vec<Reach> = o
        .stdout
        .lines()
        .map(|l| Reach::parse(l.rsplit(' ').next().unwrap_or_default()))
        .collect();
    assert_eq!(res.len(), targets.len(), "probe printed: {}", o.stdout);
    res
}

pub(crate) fn line_channel<R: std::io::Read + Send + 'static>(
    pipe: R,
) -> Receiver<(Instant, String)> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(pipe).lines() {
            let Ok(line) = line else { return };
            if tx.send((Instant::now(), line)).is_err() {
                return;
            }
        }
    });
    rx
}

/// `target/<profile>/` of the running test executable (`.../deps/NAME-HASH`).
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let deps = exe.parent().expect("exe dir");
    if deps.file_name().is_some_and(|n| n == "deps") {
        deps.parent().expect("profile dir").to_path_buf()
    } else {
        deps.to_path_buf()
    }
}

/// A binary of this crate (`labhelper`, `attacker`, `loadgen`: built by cargo
/// before any integration test of this crate) in the test's profile dir;
/// panics if it is not there.
pub fn sibling_bin(name: &str) -> PathBuf {
    let bin = profile_dir().join(name);
    assert!(bin.exists(), "{name} not built at {}", bin.display());
    bin
}

/// The `sgswitch` binary: `SGSWITCH_BIN`, or built fresh (see module docs).
pub fn sgswitch_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(p) = std::env::var_os("SGSWITCH_BIN") {
            return PathBuf::from(p);
        }
        let profile = profile_dir();
        let target = profile.parent().expect("target dir");
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("workspace dir");
        let mut cmd = Command::new(env!("CARGO"));
        cmd.current_dir(workspace)
            .args([
                "build",
                "-q",
                "-p",
                "mgmt",
                "--bin",
                "sgswitch",
                "--target-dir",
            ])
            .arg(target);
        match profile.file_name().and_then(|n| n.to_str()) {
            Some("debug") | None => {}
            Some("release") => {
                cmd.arg("--release");
            }
            Some(other) => {
                cmd.args(["--profile", other]);
            }
        }
        let o = run::run(&mut cmd, Duration::from_secs(900)).unwrap_or_else(|e| panic!("{e}"));
        assert!(o.success(), "{} failed:\n{}", describe(&cmd), o.stderr);
        let bin = profile.join("sgswitch");
        assert!(
            bin.exists(),
            "{} did not produce {}",
            describe(&cmd),
            bin.display()
        );
        bin
    })
    .clone()
}

/// A process started for a test (a server or client in a namespace), killed
/// by PID and reaped when dropped, so a failing test leaves nothing behind.
pub struct Bg(pub Child);

impl Drop for Bg {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `busybox nc -ll -p PORT -e /bin/cat` in `ns`: an echo server on `::`
/// (both families).
pub fn nc_listen(ns: &str, port: u16) -> Bg {
    let child = Command::new("ip")
        .args(["netns", "exec", ns, "busybox", "nc", "-ll", "-p"])
        .arg(port.to_string())
        .args(["-e", "/bin/cat"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn busybox nc");
    Bg(child)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_run_instances_output() {
        let out = "RESERVATION\tr-1a2b3c4d\t598916040194\tweb,app\n\
                   INSTANCE\ti-0badcafe\tami-eca54085\t172.31.0.5\trunning\t0\tnetns:i-0badcafe\n\
                   INSTANCE\ti-0badcaff\tami-eca54085\t172.31.0.6\trunning\t1\tnetns:i-0badcaff\n";
        let got = parse_instances(out);
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].id, "i-0badcafe");
        assert_eq!(got[0].ip, Ipv4Addr::new(172, 31, 0, 5));
        assert_eq!(got[0].state, "running");
        assert_eq!(got[1].netns, "i-0badcaff");
    }

    #[test]
    fn instances_not_in_a_namespace_are_not_recorded() {
        let out = "INSTANCE\ti-00000001\tami-x\t172.31.0.7\trunning\t0\tqemu:1234\n";
        assert!(parse_instances(out).is_empty());
    }

    #[test]
    fn reach_states_parse() {
        assert_eq!(Reach::parse("open"), Reach::Open);
        assert_eq!(Reach::parse("timeout"), Reach::Timeout);
        assert_eq!(
            Reach::parse("error:EPERM"),
            Reach::Other("error:EPERM".into())
        );
    }
}
