//! A lab of several sgswitch hosts on one etcd (issue 14's tests).
//!
//! Layout, all inside namespaces the lab creates (nothing in the root
//! namespace):
//! * an underlay namespace `sgc<pid><n>u` with a bridge `br0`; etcd members
//!   run there, on `198.18.0.201`, `.202`, ... (client port 2379, peer 2380);
//! * one namespace per host, `sgc<pid><n>h<i>`, joined to the bridge by a
//!   veth (`ul0`, address `198.18.0.<i>/24`); its daemon runs in it
//!   (`nsenter --net`, so the instance namespaces it names are visible to
//!   the test), with `--etcd`, `--host h<i>`, `--underlay 198.18.0.<i>`, its
//!   own state dir and socket, and its uplink TAP inside the host namespace.
//!
//! Drop kills every process the lab started (by PID), deletes the instance
//! namespaces the daemons made (ids read from their answers), the host and
//! underlay namespaces (the veths and TAPs go with them) and the directory.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::lab::{
    Reach, is_root, line_channel, probe_from, sgswitch_bin, sibling_bin, start_listener,
};
use crate::run::{self, describe, kill_wait};

static SEQ: AtomicUsize = AtomicUsize::new(0);

/// The instances' subnet of every cluster lab.
pub const SUBNET: &str = "10.77.0.0/24";

/// Whether cluster tests can run here; panics under `CI=true` when not.
pub fn can_run(test: &str) -> bool {
    let ci = std::env::var("CI").as_deref() == Ok("true");
    let missing: Vec<&str> = ["etcd", "nsenter", "ip"]
        .into_iter()
        .filter(|b| !on_path(b))
        .collect();
    let why = if !is_root() {
        Some("needs root".to_owned())
    } else if !missing.is_empty() {
        Some(format!("missing {}", missing.join(", ")))
    } else {
        None
    };
    match why {
        None => true,
        Some(w) if ci => panic!("{test}: cannot run under CI: {w}"),
        Some(w) => {
            eprintln!("SKIP {test}: {w}");
            false
        }
    }
}

fn on_path(bin: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path).any(|d| d.join(bin).is_file())
}

/// One etcd member of the lab.
struct Member {
    name: String,
    ip: Ipv4Addr,
    child: Option<Child>,
}

/// One host: its namespace and daemon.
pub struct Host {
    pub name: String,
    pub ns: String,
    pub ip: Ipv4Addr,
    pub socket: PathBuf,
    pub state: PathBuf,
    pub daemon: Option<Child>,
    log: Option<Mutex<Receiver<(Instant, String)>>>,
}

/// The whole lab; see the module docs.
pub struct ClusterLab {
    pub dir: PathBuf,
    pub underlay_ns: String,
    pub hosts: Vec<Host>,
    members: Vec<Member>,
    bin: PathBuf,
    helper: PathBuf,
    /// Extra `up` arguments of every host.
    pub up_args: Vec<String>,
    instances: Mutex<BTreeSet<String>>,
    children: Mutex<Vec<Child>>,
    /// Extra namespaces tests made (probes), deleted at drop.
    pub extra_ns: Mutex<Vec<String>>,
}

fn sh(cmd: &mut Command) -> run::Outcome {
    let o = run::run(cmd, Duration::from_secs(30)).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        o.success(),
        "{} failed: {}{}",
        describe(cmd),
        o.stdout,
        o.stderr
    );
    o
}

fn ip(args: &[&str]) {
    sh(Command::new("ip").args(args));
}

impl ClusterLab {
    /// Namespaces for `hosts` hosts and the underlay, and `members` etcd
    /// members (started); no daemon yet ([`ClusterLab::start_host`]).
    pub fn new(hosts: usize, members: usize) -> ClusterLab {
        let pid = std::process::id();
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let tag = format!("sgc{pid}{n}");
        let dir = std::env::temp_dir().join(format!("sgswitch-cluster-{pid}-{n}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut lab = ClusterLab {
            dir: dir.clone(),
            underlay_ns: format!("{tag}u"),
            hosts: Vec::new(),
            members: Vec::new(),
            bin: sgswitch_bin(),
            helper: sibling_bin("labhelper"),
            up_args: Vec::new(),
            instances: Mutex::new(BTreeSet::new()),
            children: Mutex::new(Vec::new()),
            extra_ns: Mutex::new(Vec::new()),
        };
        let u = lab.underlay_ns.clone();
        ip(&["netns", "add", &u]);
        ip(&["-n", &u, "link", "set", "lo", "up"]);
        // A fixed address: a bridge otherwise takes the lowest of its ports'
        // addresses and changes it when a port joins (a probe namespace
        // plugged in later), which strands every neighbour entry for etcd.
        ip(&[
            "-n",
            &u,
            "link",
            "add",
            "br0",
            "address",
            "02:00:c6:12:00:fe",
            "type",
            "bridge",
        ]);
        ip(&["-n", &u, "link", "set", "br0", "up"]);
        for i in 1..=hosts {
            let ns = format!("{tag}h{i}");
            let ip_addr = Ipv4Addr::new(198, 18, 0, i as u8);
            ip(&["netns", "add", &ns]);
            lab.hosts.push(Host {
                name: format!("h{i}"),
                ns: ns.clone(),
                ip: ip_addr,
                socket: dir.join(format!("h{i}.sock")),
                state: dir.join(format!("h{i}-state")),
                daemon: None,
                log: None,
            });
            ip(&["-n", &ns, "link", "set", "lo", "up"]);
            lab.plug(&ns, "ul0", &format!("uh{i}"), &format!("{ip_addr}/24"));
        }
        for j in 1..=members {
            let ip_addr = Ipv4Addr::new(198, 18, 0, 200 + j as u8);
            ip(&[
                "-n",
                &u,
                "addr",
                "add",
                &format!("{ip_addr}/24"),
                "dev",
                "br0",
            ]);
            lab.members.push(Member {
                name: format!("e{j}"),
                ip: ip_addr,
                child: None,
            });
        }
        for j in 0..members {
            lab.start_member(j);
        }
        lab.wait_etcd();
        lab
    }

    /// A veth from namespace `ns` (`inner`, with `addr`) to the underlay
    /// bridge (`outer`).
    pub fn plug(&self, ns: &str, inner: &str, outer: &str, addr: &str) {
        let u = &self.underlay_ns;
        ip(&[
            "-n", u, "link", "add", outer, "type", "veth", "peer", "name", inner, "netns", ns,
        ]);
        ip(&["-n", u, "link", "set", outer, "master", "br0", "up"]);
        ip(&["-n", ns, "addr", "add", addr, "dev", inner]);
        ip(&["-n", ns, "link", "set", inner, "up"]);
    }

    /// A namespace of the test's own on the underlay (a probe), with `addr`.
    pub fn probe_ns(&self, name: &str, addr: &str) -> String {
        let ns = format!("{}p{name}", self.underlay_ns);
        ip(&["netns", "add", &ns]);
        self.extra_ns
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(ns.clone());
        ip(&["-n", &ns, "link", "set", "lo", "up"]);
        self.plug(&ns, "ul0", &format!("up{name}"), addr);
        ns
    }

    /// The `--etcd` value: every member's client URL.
    pub fn endpoints(&self) -> String {
        self.members
            .iter()
            .map(|m| format!("http://{}:2379", m.ip))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn initial_cluster(&self) -> String {
        self.members
            .iter()
            .map(|m| format!("{}=http://{}:2380", m.name, m.ip))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Start (or restart, on its data) etcd member `j`.
    pub fn start_member(&mut self, j: usize) {
        let cluster = self.initial_cluster();
        let m = &self.members[j];
        let data = self.dir.join(format!("etcd-{}", m.name));
        let log = std::fs::File::create(self.dir.join(format!("etcd-{}.log", m.name))).unwrap();
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.underlay_ns, "etcd"])
            .args(["--name", &m.name])
            .arg("--data-dir")
            .arg(&data)
            .args(["--listen-client-urls", &format!("http://{}:2379", m.ip)])
            .args(["--advertise-client-urls", &format!("http://{}:2379", m.ip)])
            .args(["--listen-peer-urls", &format!("http://{}:2380", m.ip)])
            .args([
                "--initial-advertise-peer-urls",
                &format!("http://{}:2380", m.ip),
            ])
            .args(["--initial-cluster", &cluster])
            .args(["--initial-cluster-state", "new"])
            .args(["--initial-cluster-token", &self.underlay_ns])
            .args(["--max-txn-ops", "1024"])
            .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", describe(&cmd)));
        self.members[j].child = Some(child);
    }

    /// Kill etcd member `j` (SIGKILL).
    pub fn kill_member(&mut self, j: usize) {
        if let Some(mut c) = self.members[j].child.take() {
            kill_wait(&mut c, Duration::ZERO);
        }
    }

    /// Wait until etcd answers a write (at most 30 s).
    pub fn wait_etcd(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let mut cmd = Command::new("ip");
            cmd.args(["netns", "exec", &self.underlay_ns, "etcdctl"])
                .env("ETCDCTL_API", "3")
                .args(["--endpoints", &self.endpoints()])
                .args(["--command-timeout", "2s", "put", "/probe", "1"]);
            if run::run(&mut cmd, Duration::from_secs(5)).is_ok_and(|o| o.success()) {
                return;
            }
            assert!(Instant::now() < deadline, "etcd did not come up");
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// etcdctl (v3) in the underlay namespace; its stdout.
    pub fn etcdctl(&self, args: &[&str]) -> String {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.underlay_ns, "etcdctl"])
            .env("ETCDCTL_API", "3")
            .args(["--endpoints", &self.endpoints()])
            .args(args);
        sh(&mut cmd).stdout
    }

    /// Start host `i`'s daemon (index from 0) and wait until it is ready.
    pub fn start_host(&mut self, i: usize) {
        let h = &self.hosts[i];
        assert!(h.daemon.is_none(), "{} already running", h.name);
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{}", h.ns))
            .arg("--")
            .arg(&self.bin)
            .arg("--socket")
            .arg(&h.socket)
            .arg("up")
            .arg("--state-dir")
            .arg(&h.state)
            .args(["--subnet", SUBNET])
            .args(["--uplink", &format!("sgcu{}", i + 1)])
            .args(["--workers", "1", "--ec2-listen", "off"])
            .args(["--etcd", &self.endpoints()])
            .args(["--host", &h.name])
            .args(["--underlay", &h.ip.to_string()])
            .args(&self.up_args)
            .env_remove("SGSWITCH_OWNER")
            .env_remove("SGSWITCH_ETCD")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", describe(&cmd)));
        let lines = line_channel(child.stderr.take().expect("piped stderr"));
        let name = h.name.clone();
        let deadline = Instant::now() + Duration::from_secs(40);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match lines.recv_timeout(left) {
                Ok((_, l)) => {
                    eprintln!("[{name}] {l}");
                    if l.starts_with("sgswitch: ready on") {
                        break;
                    }
                }
                Err(e) => {
                    kill_wait(&mut child, Duration::ZERO);
                    panic!("{name}: daemon never became ready: {e}");
                }
            }
        }
        // Keep echoing its log.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for (t, l) in lines.iter() {
                eprintln!("[{name}] {l}");
                if tx.send((t, l)).is_err() {
                    return;
                }
            }
        });
        self.hosts[i].log = Some(Mutex::new(rx));
        self.hosts[i].daemon = Some(child);
    }

    /// Stop host `i`'s daemon with `signal` (`KILL`, `TERM`, `STOP`, `CONT`);
    /// waits for it to exit unless STOP/CONT.
    pub fn signal_host(&mut self, i: usize, signal: &str) {
        let h = &mut self.hosts[i];
        let Some(child) = h.daemon.as_mut() else {
            return;
        };
        let pid = child.id().to_string();
        sh(Command::new("kill").args(["-s", signal, &pid]));
        if signal == "STOP" || signal == "CONT" {
            return;
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while child.try_wait().ok().flatten().is_none() {
            assert!(
                Instant::now() < deadline,
                "{} did not exit on {signal}",
                h.name
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        h.daemon = None;
        h.log = None;
    }

    /// Lines the host's daemon logged since the last call.
    pub fn log_lines(&self, i: usize) -> Vec<String> {
        self.hosts[i]
            .log
            .as_ref()
            .map(|rx| {
                rx.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .try_iter()
                    .map(|(_, l)| l)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The CLI against host `i`: (stdout, stderr, success).
    pub fn cli_raw(&self, i: usize, args: &[&str]) -> (String, String, bool) {
        let mut cmd = Command::new(&self.bin);
        cmd.arg("--socket")
            .arg(&self.hosts[i].socket)
            .args(args)
            .env_remove("SGSWITCH_OWNER");
        let o = run::run(&mut cmd, Duration::from_secs(60)).unwrap_or_else(|e| panic!("{e}"));
        for line in o.stdout.lines() {
            let f: Vec<&str> = line.split('\t').collect();
            if f.first() == Some(&"INSTANCE") && f.len() > 1 && f[1].starts_with("i-") {
                self.instances
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(f[1].to_owned());
            }
        }
        let ok = o.success();
        (o.stdout, o.stderr, ok)
    }

    /// The CLI against host `i`; panics on failure; stdout.
    pub fn cli(&self, i: usize, args: &[&str]) -> String {
        let (out, err, ok) = self.cli_raw(i, args);
        assert!(
            ok,
            "sgswitch {} on {}: {err}",
            args.join(" "),
            self.hosts[i].name
        );
        out
    }

    /// Launch one namespace instance on host `i` in `groups`: (id, address).
    pub fn launch(&self, i: usize, groups: &[&str]) -> (String, Ipv4Addr) {
        let mut args = vec!["run-instances", "ami-00000001"];
        for g in groups {
            args.extend(["-g", g]);
        }
        let out = self.cli(i, &args);
        let line = out
            .lines()
            .find(|l| l.starts_with("INSTANCE\t"))
            .unwrap_or_else(|| panic!("no INSTANCE line in {out}"));
        let f: Vec<&str> = line.split('\t').collect();
        (f[1].to_owned(), f[3].parse().expect("instance address"))
    }

    /// TCP echo listeners in namespace `ns` (killed at drop).
    pub fn listen(&self, ns: &str, ports: &[u16]) {
        let child = start_listener(&self.helper, ns, ports, false, 900);
        self.children
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(child);
    }

    /// TCP connects from `ns` to every target at once (each bounded by
    /// `timeout`); results in target order.
    pub fn probe(&self, ns: &str, targets: &[(Ipv4Addr, u16)], timeout: Duration) -> Vec<Reach> {
        probe_from(&self.helper, ns, None, targets, timeout, false)
    }

    /// One TCP connect.
    pub fn connect(&self, ns: &str, ip: Ipv4Addr, port: u16) -> Reach {
        self.probe(ns, &[(ip, port)], Duration::from_millis(1000))
            .remove(0)
    }

    /// Wait until `f` holds (polling every 50 ms, at most `limit`).
    pub fn eventually(&self, limit: Duration, what: &str, mut f: impl FnMut() -> bool) {
        let deadline = Instant::now() + limit;
        while !f() {
            assert!(Instant::now() < deadline, "not within {limit:?}: {what}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for ClusterLab {
    fn drop(&mut self) {
        for c in self
            .children
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter_mut()
        {
            kill_wait(c, Duration::ZERO);
        }
        for h in &mut self.hosts {
            if let Some(mut c) = h.daemon.take() {
                let _ = Command::new("kill")
                    .args(["-s", "CONT", &c.id().to_string()])
                    .status();
                kill_wait(&mut c, Duration::from_secs(5));
            }
        }
        for m in &mut self.members {
            if let Some(mut c) = m.child.take() {
                kill_wait(&mut c, Duration::ZERO);
            }
        }
        let instances = std::mem::take(
            &mut *self
                .instances
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        for id in instances {
            let _ = Command::new("ip").args(["netns", "del", &id]).status();
        }
        let extra =
            std::mem::take(&mut *self.extra_ns.lock().unwrap_or_else(PoisonError::into_inner));
        for ns in extra
            .iter()
            .chain(self.hosts.iter().map(|h| &h.ns))
            .chain(std::iter::once(&self.underlay_ns))
        {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
