//! Test utilities: the in-memory data plane [`RecordingDataplane`] (public:
//! the fuzz targets drive a core with it) and helpers shared by the unit tests
//! of this crate: temporary directories and a management core on a temporary
//! store with an in-memory data plane.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

use filter::Snapshot;
use filter::model::{Instance, Owner};

use crate::api::{ApiError, Command, Reply, Request, StatsReport};
use crate::core::{Attachment, Core, CoreConfig, Dataplane, LaunchJob, Liveness, Made};
use crate::qemu::GuestImage;
use crate::store::{InstanceRecord, Store};

/// A directory under the system temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let n = SEQ.fetch_add(1, Ordering::SeqCst);
        let p = std::env::temp_dir().join(format!("sgswitch-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("create temp dir");
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub const OWNER: &str = "111122223333";
pub const OTHER: &str = "444455556666";

pub fn config() -> CoreConfig {
    CoreConfig::new(
        Owner(OWNER.into()),
        "172.31.0.0/16".parse().expect("subnet"),
    )
}

/// A core on a fresh store in `dir` with a recording data plane.
pub fn core_in(dir: &TempDir, cfg: CoreConfig) -> Core {
    core_with(dir, cfg, RecordingDataplane::default())
}

pub fn core_with(dir: &TempDir, cfg: CoreConfig, dp: RecordingDataplane) -> Core {
    let store = Store::open_dir(&dir.0).expect("open store");
    Core::open(store, cfg, Box::new(dp)).expect("open core")
}

/// A request as the default owner.
pub fn req(command: Command) -> Request {
    Request {
        owner: None,
        command,
        wait: false,
    }
}

/// `run-instances` of one namespace instance of ami-1, no groups named.
pub fn run_one() -> Request {
    req(Command::RunInstances {
        ami: "ami-1".into(),
        count: 1,
        groups: vec![],
        min_count: None,
        qemu: Some(false),
        client_token: None,
    })
}

/// A request as `owner`.
pub fn req_as(owner: &str, command: Command) -> Request {
    Request {
        owner: Some(owner.into()),
        command,
        wait: false,
    }
}

/// The error code of a reply, or panic.
pub fn code(r: &Reply) -> &str {
    match r {
        Err(e) => e.code.as_str(),
        Ok(v) => panic!("expected an error, got {v:?}"),
    }
}

/// The smallest file `register-image` takes as a kernel: `HdrS` at 0x202 (not
/// bootable).
pub fn write_fake_kernel(path: &std::path::Path) {
    let mut b = vec![0u8; 0x400];
    b[0x202..0x206].copy_from_slice(b"HdrS");
    std::fs::write(path, b).unwrap();
}

/// The smallest file `register-image` takes as an initrd: a cpio newc magic.
pub fn write_fake_initrd(path: &std::path::Path) {
    std::fs::write(path, b"070701").unwrap();
}

/// What a [`RecordingDataplane`] saw; shared with the test that made it.
#[derive(Debug, Default)]
pub struct Recorded {
    /// Generations of the snapshots published, in order.
    pub published: Vec<u64>,
    /// The snapshots published, in the same order.
    pub snapshots: Vec<Snapshot>,
    /// Instances currently attached.
    pub attached: BTreeSet<String>,
    /// Instance ids whose launch must fail (tests of the rollback).
    pub fail_launch: BTreeSet<String>,
    /// Fail every launch once this many have succeeded.
    pub fail_after: Option<usize>,
    /// Successful launches so far.
    pub launches: usize,
    /// Re-attached instances (restart).
    pub reattached: Vec<String>,
    pub shut_down: bool,
    /// Terminated (or rolled back) instances and how they were attached.
    pub terminated: Vec<(String, Attachment)>,
    /// Panic in `launch` (tests that a bug does not take the daemon down).
    pub panic_on_launch: bool,
    /// (instance id, image) of every QEMU launch.
    pub booted: Vec<(String, GuestImage)>,
    /// What `check` says of an instance (default: running, or
    /// `qemu_liveness` for QEMU guests when set).
    pub liveness: BTreeMap<String, Liveness>,
    pub qemu_liveness: Option<Liveness>,
    /// How often `check` was called.
    pub checks: usize,
    /// What `ports_gone` says (tests of the lost-port log).
    pub ports_gone: u64,
    /// (MAC, address) of every attached instance (for `trace`).
    pub ports: BTreeMap<String, (filter::Mac, std::net::Ipv4Addr)>,
    /// The instances' IPv6 prefix `trace`'s switch uses (set by a test).
    pub subnet6: Option<ipnet::Ipv6Net>,
    /// Launch jobs wait at this gate until it opens (tests of launches in
    /// flight); none: they do not wait.
    pub gate: Option<std::sync::Arc<Gate>>,
    /// Launch jobs waiting at the gate now.
    pub at_gate: usize,
}

/// A gate slow launches wait at ([`Recorded::gate`]); at most
/// [`Gate::LONGEST`], so a test that forgets to open it still ends.
#[derive(Debug, Default)]
pub struct Gate {
    open: std::sync::Mutex<bool>,
    cv: std::sync::Condvar,
}

impl Gate {
    pub const LONGEST: std::time::Duration = std::time::Duration::from_secs(30);

    pub fn open(&self) {
        *self.open.lock().unwrap_or_else(|p| p.into_inner()) = true;
        self.cv.notify_all();
    }

    fn wait(&self) {
        let g = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let _ = self.cv.wait_timeout_while(g, Self::LONGEST, |open| !*open);
    }
}

impl RecordingDataplane {
    /// A data plane whose launches wait at a closed gate (returned) until
    /// the test opens it.
    pub fn gated() -> (RecordingDataplane, std::sync::Arc<Gate>) {
        let dp = RecordingDataplane::default();
        let gate = std::sync::Arc::new(Gate::default());
        dp.with(|r| r.gate = Some(gate.clone()));
        (dp, gate)
    }

    /// Launch jobs waiting at the gate now.
    pub fn at_gate(&self) -> usize {
        self.with(|r| r.at_gate)
    }

    /// Wait (up to 10 s) until `n` launch jobs wait at the gate.
    pub fn wait_at_gate(&self, n: usize) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while self.at_gate() < n {
            assert!(
                std::time::Instant::now() < deadline,
                "{n} launch(es) never reached the gate"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }
}

/// A data plane that only records what it was asked: for tests of the core
/// without root or a switch.
#[derive(Clone, Debug, Default)]
pub struct RecordingDataplane {
    pub state: std::sync::Arc<std::sync::Mutex<Recorded>>,
}

impl RecordingDataplane {
    fn with<T>(&self, f: impl FnOnce(&mut Recorded) -> T) -> T {
        let mut g = self.state.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut g)
    }
}

impl Dataplane for RecordingDataplane {
    fn publish(&mut self, snap: Snapshot, generation: u64) {
        self.with(|r| {
            r.published.push(generation);
            r.snapshots.push(snap);
        });
    }
    fn launch(
        &mut self,
        inst: &Instance,
        _prefix_len: u8,
        how: &Attachment,
        image: Option<&GuestImage>,
    ) -> Result<Attachment, ApiError> {
        if matches!(how, Attachment::Qemu { .. }) != image.is_some() {
            return Err(ApiError::internal(format!(
                "launch of {}: an image for QEMU guests only (test)",
                inst.id
            )));
        }
        let panic = self.with(|r| r.panic_on_launch);
        assert!(!panic, "launch of {} panicked (test)", inst.id);
        self.with(|r| {
            if r.fail_launch.contains(&inst.id) || r.fail_after.is_some_and(|n| r.launches >= n) {
                return Err(ApiError::internal(format!(
                    "launch of {} failed (test)",
                    inst.id
                )));
            }
            r.launches += 1;
            r.attached.insert(inst.id.clone());
            r.ports.insert(inst.id.clone(), (inst.mac, inst.ip));
            if let Some(img) = image {
                r.booted.push((inst.id.clone(), img.clone()));
            }
            Ok(match how {
                // A made-up PID, as a real launch would report.
                Attachment::Qemu { .. } => Attachment::Qemu {
                    pid: 40_000 + r.launches as u32,
                },
                other => other.clone(),
            })
        })
    }
    /// Waits at the gate, if any (the rest happens in `launch`, called by
    /// the default `finish_launch`).
    fn launch_job(
        &mut self,
        _inst: &Instance,
        _prefix_len: u8,
        _how: &Attachment,
        _image: Option<&GuestImage>,
    ) -> LaunchJob {
        let gate = self.with(|r| r.gate.clone());
        let me = self.clone();
        Box::new(move || {
            if let Some(gate) = gate {
                me.with(|r| r.at_gate += 1);
                gate.wait();
                me.with(|r| r.at_gate -= 1);
            }
            Ok(Box::new(()) as Made)
        })
    }
    fn reattach(&mut self, rec: &InstanceRecord, _prefix_len: u8) -> Result<(), ApiError> {
        self.with(|r| {
            r.attached.insert(rec.instance.id.clone());
            r.reattached.push(rec.instance.id.clone());
            r.ports
                .insert(rec.instance.id.clone(), (rec.instance.mac, rec.instance.ip));
        });
        Ok(())
    }
    fn terminate(&mut self, id: &str, how: &Attachment) -> Result<(), ApiError> {
        self.with(|r| {
            r.attached.remove(id);
            r.ports.remove(id);
            r.terminated.push((id.to_owned(), how.clone()));
        });
        Ok(())
    }
    fn stats(&self, _report: &mut StatsReport) {}
    fn ports_gone(&self) -> u64 {
        self.with(|r| r.ports_gone)
    }
    /// A real (thread-less) switch datapath with in-memory ports for every
    /// attached instance and an uplink, the last published snapshot, and
    /// `switch::trace` on it: the same decision code as the daemon's.
    fn trace(
        &self,
        frames: &[(switch::trace::Ingress, Vec<u8>)],
    ) -> Result<switch::trace::TraceRun, ApiError> {
        use switch::{Datapath, PortRole, PortSpec, SwitchConfig, mem_port};
        let dp = Datapath::new(SwitchConfig {
            workers: 1,
            ct: filter::CtConfig::with_capacity(1024),
            subnet6: self.with(|r| r.subnet6),
            ..SwitchConfig::default()
        })
        .map_err(|e| ApiError::internal(e.to_string()))?;
        let (ports, snap) = self.with(|r| (r.ports.clone(), r.snapshots.last().cloned()));
        for (id, (mac, ip)) in ports {
            let (queues, _peer) = mem_port(1);
            dp.add_port(PortSpec {
                name: id.clone(),
                role: PortRole::Instance { id, mac, ip },
                queues,
            })
            .map_err(|e| ApiError::internal(e.to_string()))?;
        }
        let (queues, _peer) = mem_port(1);
        dp.add_port(PortSpec {
            name: "uplink".into(),
            role: PortRole::Uplink,
            queues,
        })
        .map_err(|e| ApiError::internal(e.to_string()))?;
        dp.publish_rules(snap.unwrap_or_default());
        dp.trace(frames)
            .map_err(|e| ApiError::internal(e.to_string()))
    }
    fn shutdown(&mut self) {
        self.with(|r| r.shut_down = true);
    }
    fn check(&mut self, id: &str, how: &Attachment) -> Liveness {
        self.with(|r| {
            r.checks += 1;
            match (r.liveness.get(id), how, &r.qemu_liveness) {
                (Some(l), _, _) => l.clone(),
                (None, Attachment::Qemu { .. }, Some(l)) => l.clone(),
                _ => Liveness::Running,
            }
        })
    }
}
