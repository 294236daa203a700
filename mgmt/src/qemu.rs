//! QEMU instances (`run-instances AMI --qemu`): a guest booted from a
//! [`GuestImage`] (the AMI's registered image, or the daemon's default one), its
//! TAP in a network namespace named after the instance, attached to the switch
//! with AF_PACKET.
//!
//! Contract:
//! * [`start`] creates namespace `ID`, a persistent single-queue `vnet_hdr` TAP
//!   [`GUEST_TAP`] inside it (up, no address: it is the guest's wire, not a host
//!   interface), starts `qemu-system-x86_64` inside the namespace on that TAP
//!   with the instance's MAC (the guest asks the switch's DHCP server for its
//!   address), and opens one AF_PACKET queue per worker on the TAP's kernel
//!   side. The accelerator ([`Accel`], `up --qemu-accel`, default `auto`) is KVM
//!   (`-accel kvm -cpu host`) where KVM works and TCG (`-accel tcg`) otherwise.
//!   `auto` decides once per daemon with [`probe_kvm`]: `/dev/kvm` must open
//!   read-write **and** a one-sector probe guest run under `-accel kvm -cpu host`
//!   must reach its exit port within [`KVM_PROBE_TIMEOUT`] (a nested or
//!   half-working KVM, such as one that opens but cannot set the host CPU's
//!   MSRs, fails it and gets TCG).
//!   The image's disk, if any, is a virtio disk with `snapshot=on`: the guest's
//!   writes go to a temporary overlay, so any number of instances share one image
//!   file and it never changes. The serial console goes to `LOG_DIR/ID.log`. On
//!   any failure the QEMU process is killed and the namespace deleted: nothing is
//!   left behind.
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

/// What a guest boots: a registered image (`register-image`) or the daemon's
/// default one (`up --qemu-kernel ... --qemu-initrd ...`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuestImage {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    /// A disk image (virtio, `snapshot=on`).
    pub disk: Option<PathBuf>,
    /// Kernel command line.
    pub append: String,
    pub mem_mb: u32,
}

impl From<&crate::store::ImageRecord> for GuestImage {
    fn from(r: &crate::store::ImageRecord) -> GuestImage {
        GuestImage {
            kernel: r.kernel.clone(),
            initrd: r.initrd.clone(),
            disk: r.disk.clone(),
            append: r.append.clone(),
            mem_mb: r.memory_mb,
        }
    }
}

/// How the daemon runs guests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QemuConfig {
    /// Where the guests' serial logs go (`ID.log`).
    pub log_dir: PathBuf,
    /// The QEMU binary.
    pub binary: String,
    pub accel: Accel,
}

/// The accelerator of guests (`up --qemu-accel`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Accel {
    /// KVM if a probe guest runs on it, else TCG.
    Auto,
    /// KVM (-accel kvm -cpu host); fails where /dev/kvm does not work.
    Kvm,
    /// TCG, QEMU's emulator (slow, works everywhere).
    Tcg,
}

/// How long the KVM probe guest may take to reach its exit port.
pub const KVM_PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// The exit status of the probe guest: it writes 0x21 to `isa-debug-exit`,
/// which makes QEMU exit with `(0x21 << 1) | 1`.
const KVM_PROBE_EXIT: i32 = 0x43;

/// A boot sector: `mov al, 0x21; out 0xf4, al; cli; hlt; jmp $`.
fn probe_sector() -> [u8; 512] {
    let mut s = [0u8; 512];
    s[..8].copy_from_slice(&[0xB0, 0x21, 0xE6, 0xF4, 0xFA, 0xF4, 0xEB, 0xFE]);
    s[510] = 0x55;
    s[511] = 0xAA;
    s
}

/// Whether KVM works for guests here: `/dev/kvm` opens read-write and a probe
/// guest (one boot sector, written to `dir`) run with `-accel kvm -cpu host`
/// exits through its debug port within [`KVM_PROBE_TIMEOUT`].
pub fn probe_kvm(binary: &str, dir: &Path) -> bool {
    let opens = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    if !opens || std::fs::create_dir_all(dir).is_err() {
        return false;
    }
    let img = dir.join("kvm-probe.img");
    if std::fs::write(&img, probe_sector()).is_err() {
        return false;
    }
    let drive = format!("file={},format=raw,if=ide,snapshot=on", img.display());
    let child = std::process::Command::new(binary)
        .args([
            "-accel", "kvm", "-cpu", "host", "-machine", "pc", "-m", "16",
        ])
        .args(["-nodefaults", "-display", "none", "-monitor", "none"])
        .args(["-serial", "none", "-no-reboot"])
        .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"])
        .args(["-drive", &drive])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn();
    let Ok(mut child) = child else { return false };
    let deadline = Instant::now() + KVM_PROBE_TIMEOUT;
    let works = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status.code() == Some(KVM_PROBE_EXIT),
            Ok(None) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                break false;
            }
        }
    };
    let _ = std::fs::remove_file(&img);
    works
}

/// Whether guests of `cfg` run on KVM (`auto`: probed once per process).
pub fn use_kvm(cfg: &QemuConfig) -> bool {
    static PROBED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    match cfg.accel {
        Accel::Kvm => true,
        Accel::Tcg => false,
        Accel::Auto => *PROBED.get_or_init(|| probe_kvm(&cfg.binary, &cfg.log_dir)),
    }
}

/// The accelerator arguments: `-accel kvm -cpu host` or `-accel tcg`.
pub fn accel_args(kvm: bool) -> &'static [&'static str] {
    if kvm {
        &["-accel", "kvm", "-cpu", "host"]
    } else {
        &["-accel", "tcg"]
    }
}

/// The QEMU command line (after `ip netns exec ID`) of guest `id`.
pub fn qemu_argv(
    cfg: &QemuConfig,
    image: &GuestImage,
    id: &str,
    mac: Mac,
    log: &Path,
    kvm: bool,
) -> Vec<Vec<u8>> {
    let mut argv: Vec<Vec<u8>> = Vec::new();
    let mut push = |a: &[u8]| argv.push(a.to_vec());
    push(cfg.binary.as_bytes());
    for a in accel_args(kvm) {
        push(a.as_bytes());
    }
    let mem = image.mem_mb.to_string();
    for a in [
        "-m",
        &mem,
        "-smp",
        "1",
        "-nographic",
        "-no-reboot",
        "-kernel",
    ] {
        push(a.as_bytes());
    }
    push(image.kernel.as_os_str().as_bytes());
    push(b"-initrd");
    push(image.initrd.as_os_str().as_bytes());
    push(b"-append");
    push(image.append.as_bytes());
    if let Some(disk) = &image.disk {
        // QEMU's option syntax doubles commas inside a value.
        let mut d = b"file=".to_vec();
        for &b in disk.as_os_str().as_bytes() {
            d.push(b);
            if b == b',' {
                d.push(b',');
            }
        }
        d.extend_from_slice(b",if=virtio,snapshot=on");
        push(b"-drive");
        push(&d);
    }
    let mac_text = crate::store::format_mac(&mac);
    let netdev = format!("tap,id=n0,ifname={GUEST_TAP},script=no,downscript=no,vhost=off");
    let device = format!("virtio-net-pci,netdev=n0,mac={mac_text},romfile=");
    let serial = format!("file:{}", log.display());
    for a in [
        "-netdev", &netdev, "-device", &device, "-serial", &serial, "-display", "none", "-monitor",
        "none", "-name", id,
    ] {
        push(a.as_bytes());
    }
    argv
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

/// Boot guest `id` from `image` with `mac`; returns it and one AF_PACKET queue
/// per worker.
pub fn start(
    cfg: &QemuConfig,
    image: &GuestImage,
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
    match start_in_netns(cfg, image, id, mac, workers, &log) {
        Ok(v) => Ok(v),
        Err(e) => {
            let _ = netns::delete(id);
            Err(e)
        }
    }
}

fn start_in_netns(
    cfg: &QemuConfig,
    image: &GuestImage,
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
    let mut argv: Vec<Vec<u8>> = ["ip", "netns", "exec", id]
        .iter()
        .map(|a| a.as_bytes().to_vec())
        .collect();
    argv.extend(qemu_argv(cfg, image, id, mac, log, use_kvm(cfg)));
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

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: &[Vec<u8>]) -> Vec<String> {
        v.iter()
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect()
    }

    fn after<'a>(argv: &'a [String], opt: &str) -> Vec<&'a str> {
        argv.windows(2)
            .filter(|w| w[0] == opt)
            .map(|w| w[1].as_str())
            .collect()
    }

    #[test]
    fn command_line_boots_the_image_on_the_guest_tap_with_the_right_accelerator() {
        let cfg = QemuConfig {
            log_dir: "/var/lib/sgswitch/qemu".into(),
            binary: "qemu-system-x86_64".into(),
            accel: Accel::Auto,
        };
        let mut image = GuestImage {
            kernel: "/img/vmlinuz".into(),
            initrd: "/img/initrd.img".into(),
            disk: None,
            append: "console=ttyS0 quiet".into(),
            mem_mb: 384,
        };
        let mac = [0x02, 0, 0x5e, 0x10, 0, 0x01];
        let log = Path::new("/var/lib/sgswitch/qemu/i-0000abcd.log");
        let tcg = args(&qemu_argv(&cfg, &image, "i-0000abcd", mac, log, false));
        assert_eq!(tcg[0], "qemu-system-x86_64");
        assert_eq!(after(&tcg, "-accel"), ["tcg"]);
        assert_eq!(after(&tcg, "-m"), ["384"]);
        assert_eq!(after(&tcg, "-kernel"), ["/img/vmlinuz"]);
        assert_eq!(after(&tcg, "-initrd"), ["/img/initrd.img"]);
        assert_eq!(after(&tcg, "-append"), ["console=ttyS0 quiet"]);
        assert!(after(&tcg, "-drive").is_empty());
        assert_eq!(
            after(&tcg, "-netdev"),
            ["tap,id=n0,ifname=qtap0,script=no,downscript=no,vhost=off"]
        );
        assert_eq!(
            after(&tcg, "-device"),
            ["virtio-net-pci,netdev=n0,mac=02:00:5e:10:00:01,romfile="]
        );
        assert_eq!(
            after(&tcg, "-serial"),
            ["file:/var/lib/sgswitch/qemu/i-0000abcd.log"]
        );
        assert_eq!(after(&tcg, "-name"), ["i-0000abcd"]);

        image.disk = Some("/img/a,b.raw".into());
        let kvm = args(&qemu_argv(&cfg, &image, "i-0000abcd", mac, log, true));
        assert_eq!(after(&kvm, "-accel"), ["kvm"]);
        assert_eq!(after(&kvm, "-cpu"), ["host"]);
        assert_eq!(
            after(&kvm, "-drive"),
            ["file=/img/a,,b.raw,if=virtio,snapshot=on"]
        );
    }

    #[test]
    fn probe_sector_is_a_bootable_sector_writing_the_exit_port() {
        let s = probe_sector();
        assert_eq!(&s[510..], &[0x55, 0xAA]);
        // out imm8, al to port 0xf4 with al = 0x21 → exit status 0x43.
        assert_eq!(&s[..4], &[0xB0, 0x21, 0xE6, 0xF4]);
        assert_eq!((0x21 << 1) | 1, KVM_PROBE_EXIT);
    }

    #[test]
    fn forced_accelerators_need_no_probe() {
        let cfg = |accel| QemuConfig {
            log_dir: "/nonexistent".into(),
            binary: "/nonexistent/qemu".into(),
            accel,
        };
        assert!(use_kvm(&cfg(Accel::Kvm)));
        assert!(!use_kvm(&cfg(Accel::Tcg)));
        // A QEMU that does not exist cannot show that KVM works.
        let dir = std::env::temp_dir().join(format!("sgswitch-probe-{}", std::process::id()));
        assert!(!probe_kvm("/nonexistent/qemu", &dir));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_registered_image_maps_field_by_field() {
        let rec = crate::store::ImageRecord {
            ami: "ami-5e1f0001".into(),
            kernel: "/k".into(),
            initrd: "/i".into(),
            disk: Some("/d".into()),
            memory_mb: 512,
            append: "console=ttyS0".into(),
            registered_at: 0,
        };
        assert_eq!(
            GuestImage::from(&rec),
            GuestImage {
                kernel: "/k".into(),
                initrd: "/i".into(),
                disk: Some("/d".into()),
                append: "console=ttyS0".into(),
                mem_mb: 512,
            }
        );
    }
}
