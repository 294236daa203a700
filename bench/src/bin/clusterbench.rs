//! Cluster-mode benchmarks of the management side (issue 14), one clock:
//!
//! * **edit → enforced on every host**: one etcd member on loopback, N hosts
//!   in this process — one editor (a full management core) and N - 1
//!   watcher-only agents (the same core with a data plane that only notes
//!   when a snapshot is published: the management side without a datapath,
//!   each on its own SQLite cache). Each edit (an authorize or revoke,
//!   alternating) is timed from the request to the moment the last host
//!   published the snapshot that contains it; edits are made one at a time.
//! * **a new host joining** a lab of `--join-rules` rules and
//!   `--join-instances` instances: from starting its link to etcd to its
//!   first published snapshot of the whole lab.
//!
//! The agents' SQLite caches live under `/dev/shm` when it exists: a hundred
//! hosts' fsyncs on one disk would measure the disk, not the protocol.
//!
//! `clusterbench [--hosts 2,10,100] [--edits 200] [--join-rules 10000]
//!  [--join-instances 1000] [--report FILE]`

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use filter::Snapshot;
use filter::model::{Instance, Owner};
use mgmt::api::{ApiError, Command as Cmd, GroupRef, Permission, Request, StatsReport};
use mgmt::cluster::node::{Node, NodeConfig};
use mgmt::core::{Attachment, Core, CoreConfig, Dataplane};
use mgmt::qemu::GuestImage;
use mgmt::store::{InstanceRecord, Store};

const OWNER: &str = "111122223333";

/// Notes the moment of the last publish; nothing else.
#[derive(Clone, Default)]
struct Watcher {
    last: Arc<Mutex<Option<Instant>>>,
}

impl Dataplane for Watcher {
    fn publish(&mut self, _snap: Snapshot, _generation: u64) {
        if let Ok(mut l) = self.last.lock() {
            *l = Some(Instant::now());
        }
    }
    fn launch(
        &mut self,
        _inst: &Instance,
        _prefix_len: u8,
        how: &Attachment,
        _image: Option<&GuestImage>,
    ) -> Result<Attachment, ApiError> {
        Ok(how.clone())
    }
    fn reattach(&mut self, _rec: &InstanceRecord, _prefix_len: u8) -> Result<(), ApiError> {
        Ok(())
    }
    fn terminate(&mut self, _id: &str, _how: &Attachment) -> Result<(), ApiError> {
        Ok(())
    }
    fn stats(&self, _report: &mut StatsReport) {}
}

struct Etcd {
    child: Child,
    dir: PathBuf,
    url: String,
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn start_etcd(base: &Path) -> Etcd {
    let (c, p) = (free_port(), free_port());
    let dir = base.join(format!("etcd-{c}"));
    let url = format!("http://127.0.0.1:{c}");
    let child = Command::new("etcd")
        .arg("--data-dir")
        .arg(&dir)
        .args([
            "--listen-client-urls",
            &url,
            "--advertise-client-urls",
            &url,
        ])
        .args(["--listen-peer-urls", &format!("http://127.0.0.1:{p}")])
        .args([
            "--max-txn-ops",
            "1024",
            "--quota-backend-bytes",
            "4294967296",
        ])
        .args(["--max-request-bytes", "10485760"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start etcd (Debian package etcd-server)");
    let etcd = Etcd { child, dir, url };
    let client = mgmt::cluster::etcd::Client::new(&etcd.url, Default::default()).expect("client");
    let deadline = Instant::now() + Duration::from_secs(20);
    while client.put("/probe", "1", 0).is_err() {
        assert!(Instant::now() < deadline, "etcd did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    etcd
}

fn config(host: &str) -> CoreConfig {
    let mut c = CoreConfig::new(Owner(OWNER.into()), "10.0.0.0/16".parse().expect("subnet"));
    c.cluster_host = Some(host.to_owned());
    c.max_launch = 256;
    c
}

fn node_config(url: &str, host: &str, i: usize) -> NodeConfig {
    let c = config(host);
    NodeConfig {
        endpoints: url.to_owned(),
        host: host.to_owned(),
        underlay: std::net::SocketAddr::from(([192, 0, 2, (i % 250) as u8 + 1], 4789)),
        subnet: c.subnet,
        uplink_range: c.uplink_range,
        subnet6: c.subnet6,
        vni: 1,
    }
}

/// A host of the benchmark: its core on a thread, applying the watch.
struct Agent {
    /// (revision, moment its snapshot was published), in order.
    applied: Arc<Mutex<Vec<(i64, Instant)>>>,
    revision: Arc<AtomicI64>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Agent {
    fn start(base: &Path, url: &str, host: &str, i: usize) -> (Agent, Duration) {
        let dir = base.join(host);
        std::fs::create_dir_all(&dir).expect("agent dir");
        let watcher = Watcher::default();
        let last = watcher.last.clone();
        let store = Store::open_dir(&dir).expect("store");
        let mut core = Core::open(store, config(host), Box::new(watcher)).expect("core");
        let (wtx, wrx) = mpsc::channel::<()>();
        let t0 = Instant::now();
        let node = Node::start(
            node_config(url, host, i),
            Arc::new(move || {
                let _ = wtx.send(());
            }),
        )
        .expect("node");
        core.join_cluster(node, Duration::from_secs(60))
            .expect("join the lab");
        let joined = t0.elapsed();
        let applied = Arc::new(Mutex::new(Vec::new()));
        let revision = Arc::new(AtomicI64::new(core.cluster_revision()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (applied, revision, stop) = (applied.clone(), revision.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let _ = wrx.recv_timeout(Duration::from_millis(50));
                    core.poll_cluster();
                    let r = core.cluster_revision();
                    if r > revision.load(Ordering::Relaxed) {
                        let at = last
                            .lock()
                            .ok()
                            .and_then(|l| *l)
                            .unwrap_or_else(Instant::now);
                        if let Ok(mut a) = applied.lock() {
                            a.push((r, at));
                        }
                        revision.store(r, Ordering::Relaxed);
                    }
                }
            })
        };
        (
            Agent {
                applied,
                revision,
                stop,
                thread: Some(thread),
            },
            joined,
        )
    }

    /// When this host published revision `rev` or a later one.
    fn enforced_at(&self, rev: i64) -> Option<Instant> {
        self.applied
            .lock()
            .ok()?
            .iter()
            .find(|(r, _)| *r >= rev)
            .map(|(_, t)| *t)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn req(command: Cmd) -> Request {
    Request {
        owner: None,
        command,
        wait: false,
    }
}

fn perm(port: u16) -> Permission {
    Permission {
        proto: Some("tcp".into()),
        ports: Some(port.to_string()),
        icmp: None,
        cidrs: vec!["10.9.0.0/16".into()],
        groups: Vec::new(),
        description: None,
    }
}

fn pct(v: &mut [f64], p: usize) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[(v.len() - 1) * p / 100]
}

/// Edit → enforced on every one of `hosts` hosts: (p50, p99, max) in ms of
/// the last host, and p50 of a single host.
fn edits(base: &Path, hosts: usize, n: usize) -> (f64, f64, f64, f64) {
    let etcd = start_etcd(base);
    let mut editor = {
        let dir = base.join(format!("editor-{hosts}"));
        std::fs::create_dir_all(&dir).expect("dir");
        let store = Store::open_dir(&dir).expect("store");
        let mut core = Core::open(store, config("h0"), Box::new(Watcher::default())).expect("core");
        let node = Node::start(node_config(&etcd.url, "h0", 0), Arc::new(|| {})).expect("node");
        core.join_cluster(node, Duration::from_secs(30))
            .expect("join");
        core
    };
    let agents: Vec<Agent> = (1..hosts)
        .map(|i| Agent::start(base, &etcd.url, &format!("h{i}-{hosts}"), i).0)
        .collect();
    editor
        .handle(req(Cmd::AddGroup {
            name: "bench".into(),
            description: "edit latency".into(),
        }))
        .expect("add-group");
    let (mut last, mut one) = (Vec::new(), Vec::new());
    for k in 0..n {
        let permissions = vec![perm(1000 + (k / 2) as u16)];
        let group = GroupRef::Name("bench".into());
        let command = if k % 2 == 0 {
            Cmd::Authorize {
                group,
                permissions,
                egress: false,
            }
        } else {
            Cmd::Revoke {
                group,
                permissions,
                egress: false,
            }
        };
        editor.poll_cluster();
        let t0 = Instant::now();
        editor.handle(req(command)).expect("edit");
        let rev = editor.last_commit_revision();
        let deadline = Instant::now() + Duration::from_secs(10);
        while agents
            .iter()
            .any(|a| a.revision.load(Ordering::Relaxed) < rev)
        {
            assert!(
                Instant::now() < deadline,
                "hosts did not apply revision {rev}"
            );
            std::thread::sleep(Duration::from_micros(200));
        }
        let times: Vec<f64> = agents
            .iter()
            .filter_map(|a| a.enforced_at(rev))
            .map(|t| t.saturating_duration_since(t0).as_secs_f64() * 1000.0)
            .collect();
        let worst = times.iter().copied().fold(0.0, f64::max);
        last.push(worst);
        one.extend(times);
    }
    drop(agents);
    drop(editor);
    drop(etcd);
    let max = last.iter().copied().fold(0.0, f64::max);
    (
        pct(&mut last, 50),
        pct(&mut last, 99),
        max,
        pct(&mut one, 50),
    )
}

/// A new host joining a lab of `rules` rules and `instances` instances:
/// seconds to its first published snapshot of the whole lab.
fn join(base: &Path, rules: usize, instances: usize) -> f64 {
    let etcd = start_etcd(base);
    let dir = base.join("join-editor");
    std::fs::create_dir_all(&dir).expect("dir");
    let store = Store::open_dir(&dir).expect("store");
    let mut core = Core::open(store, config("j0"), Box::new(Watcher::default())).expect("core");
    let node = Node::start(node_config(&etcd.url, "j0", 0), Arc::new(|| {})).expect("node");
    core.join_cluster(node, Duration::from_secs(30))
        .expect("join");
    let groups = rules.div_ceil(100);
    for g in 0..groups {
        let name = format!("g{g}");
        core.handle(req(Cmd::AddGroup {
            name: name.clone(),
            description: "lab".into(),
        }))
        .expect("add-group");
        let permissions: Vec<Permission> = (0..100.min(rules - g * 100))
            .map(|k| perm(1000 + k as u16))
            .collect();
        core.handle(req(Cmd::Authorize {
            egress: false,
            group: GroupRef::Name(name),
            permissions,
        }))
        .expect("authorize");
    }
    let mut left = instances;
    let mut g = 0;
    while left > 0 {
        let n = left.min(12) as u32;
        core.handle(req(Cmd::RunInstances {
            ami: "ami-00000001".into(),
            count: n,
            min_count: None,
            groups: vec![GroupRef::Name(format!("g{}", g % groups))],
            qemu: Some(false),
            client_token: None,
        }))
        .expect("run-instances");
        left -= n as usize;
        g += 1;
    }
    let (_agent, joined) = Agent::start(base, &etcd.url, "newcomer", 7);
    joined.as_secs_f64()
}

fn main() {
    let mut hosts = vec![2usize, 10, 100];
    let mut n = 200usize;
    let mut join_rules = 10_000usize;
    let mut join_instances = 1_000usize;
    let mut report: Option<PathBuf> = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().unwrap_or_else(|| panic!("{a} needs a value"));
        match a.as_str() {
            "--hosts" => {
                hosts = val()
                    .split(',')
                    .map(|s| s.parse().expect("--hosts N,N,..."))
                    .collect()
            }
            "--edits" => n = val().parse().expect("--edits N"),
            "--join-rules" => join_rules = val().parse().expect("--join-rules N"),
            "--join-instances" => join_instances = val().parse().expect("--join-instances N"),
            "--report" => report = Some(PathBuf::from(val())),
            other => panic!("unknown option {other}"),
        }
    }
    let shm = Path::new("/dev/shm");
    let base = if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    }
    .join(format!("sgswitch-clusterbench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    std::fs::create_dir_all(&base).expect("base dir");
    let mut rows = Vec::new();
    for &h in &hosts {
        let (p50, p99, max, one) = edits(&base, h, n);
        println!(
            "hosts {h:>4}: edit -> enforced on every host p50 {p50:.2} ms, p99 {p99:.2} ms, max {max:.2} ms (one host p50 {one:.2} ms), {n} edits"
        );
        rows.push(format!(
            "| {h} | {n} | {p50:.2} | {p99:.2} | {max:.2} | {one:.2} |"
        ));
    }
    let joined = join(&base, join_rules, join_instances);
    println!(
        "a new host joining a lab of {join_rules} rules and {join_instances} instances enforces it after {joined:.2} s"
    );
    let _ = std::fs::remove_dir_all(&base);
    if let Some(path) = report {
        let text = format!(
            "# Cluster benchmarks\n\n\
             Produced by `scripts/bench.sh cluster` (`target/release/clusterbench`), \
             on this machine (2 cores, shared). One etcd 3.4 member on loopback; one \
             editor host and N - 1 watcher-only hosts (the management core without a \
             datapath, each with its own SQLite cache under /dev/shm), all in one \
             process, one clock. An edit is timed from the request to the moment the \
             last host published the snapshot containing it; edits one at a time, \
             authorize and revoke alternating.\n\n\
             | hosts | edits | every host p50 ms | every host p99 ms | max ms | one host p50 ms |\n\
             |---:|---:|---:|---:|---:|---:|\n{}\n\n\
             A new host joining a lab of {join_rules} rules and {join_instances} \
             instances enforces the whole lab {joined:.2} s after it starts its link \
             to etcd (full read at one revision, model build, compile, publish, \
             SQLite cache written).\n",
            rows.join("\n")
        );
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        println!("report written to {}", path.display());
    }
}
