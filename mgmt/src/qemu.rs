//! QEMU instances (`run-instances --qemu`): a guest booted from the daemon's guest
//! image, its TAP in a network namespace named after the instance, attached to
//! the switch with AF_PACKET.
//!
//! Contract:
//! * [`start`] creates namespace `ID`, a persistent single-queue `vnet_hdr` TAP
//!   [`GUEST_TAP`] inside it (up, no address: it is the guest's wire, not a host
//!   interface), starts `qemu-system-x86_64 -accel tcg` inside the namespace on
//!   that TAP with the instance's MAC (the guest asks the switch's DHCP server for
//!   its address), and opens one AF_PACKET queue per worker on the TAP's kernel
//!   side. The serial console goes to `LOG_DIR/ID.log`. On any failure the QEMU
//!   process is killed and the namespace deleted: nothing is left behind.
//! * The guest is a child of the daemon; [`Guest`] keeps the handle so that it is
//!   reaped. A daemon restart does not stop guests: [`reattach`] opens the
//!   AF_PACKET queues again if the process recorded in the instance's place
//!   (`qemu:PID`) is still that guest (its command line names the instance).
//! * [`stop`] kills the guest (SIGTERM, then SIGKILL after 2 s) and deletes the
//!   namespace.
//! * QEMU itself is started with `ip netns exec` (one process per launch is fine
//!   here: booting a guest takes seconds anyway, and the crate has no `unsafe` for
//!   a `setns` in `pre_exec`), through `posix_spawn` with an empty signal mask and
//!   default dispositions: the daemon blocks SIGINT/SIGTERM in all its threads
//!   (it `sigwait`s for them), and a guest must not inherit that, or it would
//!   ignore `kill`. Its stdio is `/dev/null`; every fd of the daemon is
//!   close-on-exec.

use std::ffi::CString;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::spawn::{PosixSpawnAttr, PosixSpawnFileActions, PosixSpawnFlags, posix_spawnp};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

use filter::Mac;
use switch::netns::{self, NetnsError};
use switch::port::PortQueue;
use switch::tap::{self, TapError, TapOptions};

/// The guest's TAP inside the instance's namespace.
pub const GUEST_TAP: &str = "qtap0";

/// How guests are booted (`sgswitch up --qemu-kernel ... --qemu-initrd ...`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QemuConfig {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    /// Kernel command line.
    pub append: String,
    pub mem_mb: u32,
    /// Where the guests' serial logs go (`ID.log`).
    pub log_dir: PathBuf,
    /// The QEMU binary.
    pub binary: String,
}

/// Errors of the guest lifecycle; each names the instance and the step.
#[derive(Debug, thiserror::Error)]
pub enum QemuError {
    #[error("guest {id}: create namespace")]
    Netns {
        id: String,
        #[source]
        source: NetnsError,
    },
    #[error("guest {id}: create TAP {GUEST_TAP}")]
    Tap {
        id: String,
        #[source]
        source: Box<TapError>,
    },
    #[error("guest {id}: create log directory {path}")]
    LogDir {
        id: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("guest {id}: start {binary}")]
    Spawn {
        id: String,
        binary: String,
        #[source]
        source: nix::Error,
    },
    #[error("guest {id}: {binary} exited at once ({status}); see {log}")]
    Exited {
        id: String,
        binary: String,
        status: String,
        log: PathBuf,
    },
    #[error("guest {id}: attach {GUEST_TAP} with AF_PACKET")]
    Attach {
        id: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("guest {id}: process {pid} is not running this guest any more")]
    Gone { id: String, pid: u32 },
}

/// A running guest started by this daemon (its child: reaped by [`stop`]).
#[derive(Debug)]
pub struct Guest {
    pub pid: u32,
}

impl Guest {
    /// Reap the child if it has exited; returns whether it has.
    fn reap(&self) -> bool {
        !matches!(
            waitpid(Pid::from_raw(self.pid as i32), Some(WaitPidFlag::WNOHANG)),
            Ok(WaitStatus::StillAlive)
        )
    }
}

/// Start `args[0]` (looked up in PATH) with a clean signal state and stdio on
/// `/dev/null`.
fn spawn_clean(args: &[CString]) -> nix::Result<Pid> {
    let mut attr = PosixSpawnAttr::init()?;
    attr.set_sigmask(&SigSet::empty())?;
    let mut defaults = SigSet::empty();
    for sig in [
        Signal::SIGINT,
        Signal::SIGTERM,
        Signal::SIGPIPE,
        Signal::SIGHUP,
    ] {
        defaults.add(sig);
    }
    attr.set_sigdefault(&defaults)?;
    attr.set_flags(
        PosixSpawnFlags::POSIX_SPAWN_SETSIGMASK | PosixSpawnFlags::POSIX_SPAWN_SETSIGDEF,
    )?;
    let mut files = PosixSpawnFileActions::init()?;
    // Opened close-on-exec here; dup2 in the child gives it plain 0, 1, 2.
    let null_in = std::fs::File::open("/dev/null").map_err(|_| nix::Error::ENOENT)?;
    let null_out = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/null")
        .map_err(|_| nix::Error::ENOENT)?;
    files.add_dup2(null_in.as_raw_fd(), 0)?;
    files.add_dup2(null_out.as_raw_fd(), 1)?;
    files.add_dup2(null_out.as_raw_fd(), 2)?;
    let env: Vec<CString> = std::env::vars_os()
        .filter_map(|(k, v)| {
            let mut kv = k.as_bytes().to_vec();
            kv.push(b'=');
            kv.extend_from_slice(v.as_bytes());
            CString::new(kv).ok()
        })
        .collect();
    posix_spawnp(&args[0], &files, &attr, args, &env)
}

/// The serial log of guest `id`.
pub fn log_path(cfg: &QemuConfig, id: &str) -> PathBuf {
    cfg.log_dir.join(format!("{id}.log"))
}

/// Boot guest `id` with `mac`; returns it and one AF_PACKET queue per worker.
pub fn start(
    cfg: &QemuConfig,
    id: &str,
    mac: Mac,
    workers: usize,
) -> Result<(Guest, Vec<Box<dyn PortQueue>>), QemuError> {
    let log = log_path(cfg, id);
    std::fs::create_dir_all(&cfg.log_dir).map_err(|source| QemuError::LogDir {
        id: id.to_owned(),
        path: cfg.log_dir.clone(),
        source,
    })?;
    netns::create(id).map_err(|source| QemuError::Netns {
        id: id.to_owned(),
        source,
    })?;
    match start_in_netns(cfg, id, mac, workers, &log) {
        Ok(v) => Ok(v),
        Err(e) => {
            let _ = netns::delete(id);
            Err(e)
        }
    }
}

fn start_in_netns(
    cfg: &QemuConfig,
    id: &str,
    mac: Mac,
    workers: usize,
    log: &Path,
) -> Result<(Guest, Vec<Box<dyn PortQueue>>), QemuError> {
    // A persistent single-queue TAP for QEMU to open by name; our fd is only
    // needed to make it.
    let opts = TapOptions {
        queues: 1,
        vnet_hdr: true,
        persist: true,
        multi_queue: false,
    };
    let made = netns::in_netns(id, || tap::open_tap_with(GUEST_TAP, opts)).map_err(|source| {
        QemuError::Netns {
            id: id.to_owned(),
            source,
        }
    })?;
    drop(made.map_err(|source| QemuError::Tap {
        id: id.to_owned(),
        source: Box::new(source),
    })?);
    netns::configure_iface(Some(id), GUEST_TAP, None, None, true).map_err(|source| {
        QemuError::Netns {
            id: id.to_owned(),
            source,
        }
    })?;
    let mac_text = crate::store::format_mac(&mac);
    let mem = cfg.mem_mb.to_string();
    let netdev = format!("tap,id=n0,ifname={GUEST_TAP},script=no,downscript=no,vhost=off");
    let device = format!("virtio-net-pci,netdev=n0,mac={mac_text}");
    let serial = format!("file:{}", log.display());
    let mut argv: Vec<Vec<u8>> = [
        "ip",
        "netns",
        "exec",
        id,
        &cfg.binary,
        "-accel",
        "tcg",
        "-m",
        &mem,
    ]
    .iter()
    .map(|a| a.as_bytes().to_vec())
    .collect();
    argv.extend([
        b"-nographic".to_vec(),
        b"-no-reboot".to_vec(),
        b"-kernel".to_vec(),
    ]);
    argv.push(cfg.kernel.as_os_str().as_bytes().to_vec());
    argv.push(b"-initrd".to_vec());
    argv.push(cfg.initrd.as_os_str().as_bytes().to_vec());
    for a in [
        "-append",
        &cfg.append,
        "-netdev",
        &netdev,
        "-device",
        &device,
        "-serial",
        &serial,
    ] {
        argv.push(a.as_bytes().to_vec());
    }
    for a in ["-display", "none", "-monitor", "none", "-name", id] {
        argv.push(a.as_bytes().to_vec());
    }
    let spawn_err = |source| QemuError::Spawn {
        id: id.to_owned(),
        binary: cfg.binary.clone(),
        source,
    };
    let args: Vec<CString> = argv
        .into_iter()
        .map(|a| CString::new(a).map_err(|_| spawn_err(nix::Error::EINVAL)))
        .collect::<Result<_, _>>()?;
    let pid = spawn_clean(&args).map_err(spawn_err)?;
    let guest = Guest {
        pid: pid.as_raw() as u32,
    };
    // A wrong image or option makes QEMU exit at once: catch it here.
    std::thread::sleep(Duration::from_millis(200));
    if let Ok(status) = waitpid(pid, Some(WaitPidFlag::WNOHANG))
        && status != WaitStatus::StillAlive
    {
        return Err(QemuError::Exited {
            id: id.to_owned(),
            binary: cfg.binary.clone(),
            status: format!("{status:?}"),
            log: log.to_path_buf(),
        });
    }
    match open_queues(id, workers) {
        Ok(q) => Ok((guest, q)),
        Err(e) => {
            stop_process(id, guest.pid, Some(&guest));
            Err(e)
        }
    }
}

fn open_queues(id: &str, workers: usize) -> Result<Vec<Box<dyn PortQueue>>, QemuError> {
    let attach = |source: Box<dyn std::error::Error + Send + Sync>| QemuError::Attach {
        id: id.to_owned(),
        source,
    };
    let queues = netns::in_netns(id, || switch::afpacket::open_afpacket(GUEST_TAP, workers))
        .map_err(|e| attach(Box::new(e)))?
        .map_err(|e| attach(Box::new(e)))?;
    Ok(queues
        .into_iter()
        .map(|q| Box::new(q) as Box<dyn PortQueue>)
        .collect())
}

/// Whether process `pid` is guest `id` (its command line names the instance).
pub fn is_guest(pid: u32, id: &str) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| c.split(|&b| b == 0).any(|arg| arg == id.as_bytes()))
        .unwrap_or(false)
}

/// After a daemon restart: attach the still running guest `id` (process `pid`).
pub fn reattach(id: &str, pid: u32, workers: usize) -> Result<Vec<Box<dyn PortQueue>>, QemuError> {
    if !is_guest(pid, id) {
        return Err(QemuError::Gone {
            id: id.to_owned(),
            pid,
        });
    }
    open_queues(id, workers)
}

/// Stop guest `id` (process `pid`; `guest` if this daemon started it) and delete
/// its namespace.
pub fn stop(id: &str, pid: u32, guest: Option<Guest>) -> Result<(), QemuError> {
    stop_process(id, pid, guest.as_ref());
    match netns::delete(id) {
        Ok(()) | Err(NetnsError::NotFound { .. }) => Ok(()),
        Err(source) => Err(QemuError::Netns {
            id: id.to_owned(),
            source,
        }),
    }
}

/// SIGTERM, up to 2 s for QEMU to exit, then SIGKILL; reap our own child.
fn stop_process(id: &str, pid: u32, guest: Option<&Guest>) {
    use nix::sys::signal::kill;
    let target = Pid::from_raw(pid as i32);
    if is_guest(pid, id) {
        let _ = kill(target, Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(2);
        // A zombie has an empty command line, so this ends once QEMU exited.
        while is_guest(pid, id) && Instant::now() < deadline {
            if guest.is_some_and(Guest::reap) {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if is_guest(pid, id) {
            let _ = kill(target, Signal::SIGKILL);
        }
    }
    if let Some(g) = guest {
        let deadline = Instant::now() + Duration::from_secs(2);
        while !g.reap() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
