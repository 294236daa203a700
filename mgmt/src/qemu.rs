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
//!   address). It does **not** wait for QEMU: it returns as soon as the process
//!   is spawned, and the caller learns later ([`Guest::exit`]) whether it died.
//!   [`open_queues`] opens one AF_PACKET queue per worker on the TAP's kernel
//!   side (the daemon does it on a helper thread: it takes tens of ms).
//!   The daemon reports such a guest `pending` until the switch saw its first
//!   DHCP lease, then `running`.
//! * The instance log `LOG_DIR/ID.log` (made afresh by [`start`]) holds, in
//!   order: the daemon's `sgswitch:` lines (the accelerator chosen and why),
//!   QEMU's stdout and stderr, and the guest's serial console (a `file`
//!   chardev with `append=on`, so nothing truncates what came before). When QEMU
//!   exits, [`exit_reason`] says `BINARY exited with status N: LAST LINES` with
//!   the last lines QEMU (or the guest) wrote there.
//! * The accelerator ([`Accel`], `up --qemu-accel`) is TCG (`-accel tcg`) by
//!   default: it works everywhere. `kvm` is `-accel kvm -cpu host`. `auto`
//!   decides once per daemon with [`probe_kvm`]: `/dev/kvm` must open
//!   read-write **and** a one-sector probe guest run under `-accel kvm -cpu host`
//!   must reach its exit port within [`KVM_PROBE_TIMEOUT`] (a nested or
//!   half-working KVM, such as one that opens but cannot set the host CPU's
//!   MSRs, fails it and gets TCG). The probe is not proof: on the lab machines
//!   (nested KVM) it sometimes passes and a Linux guest then stops at its first
//!   `lock cmpxchg16b` with "KVM internal error ... emulation failure", which
//!   is why `auto` is not the default. The choice and its reason ([`AccelChoice`],
//!   e.g. `accel tcg: KVM probe failed: ...`) go to every guest's log and the
//!   daemon's log. [`start_probe`] runs the probe on a thread of its own when
//!   the daemon starts, so no request waits for it.
//!   The image's disk, if any, is a virtio disk with `snapshot=on`: the guest's
//!   writes go to a temporary overlay, so any number of instances share one image
//!   file and it never changes. On a failure before QEMU runs, the namespace is
//!   deleted: nothing is left behind.
//! * [`check_kernel`] and [`check_initrd`] (used by `register-image`) accept a
//!   Linux bzImage (`HdrS` at offset 0x202) and an initramfs (gzip, zstd, xz,
//!   lz4, bzip2, lzma, lzo or a plain cpio archive) only.
//! * The guest is a child of the daemon; [`Guest`] keeps the handle so that it is
//!   reaped. A daemon restart does not stop guests: [`reattach`] opens the
//!   AF_PACKET queues again if the process recorded in the instance's place
//!   (`qemu:PID`) is still that guest (its command line names the instance).
//! * [`stop`] kills the guest (SIGTERM, then SIGKILL after 2 s), any other
//!   process left in its namespace, and deletes the namespace.
//! * QEMU itself is started with `ip netns exec` (one process per launch is fine
//!   here: booting a guest takes seconds anyway, and the crate has no `unsafe` for
//!   a `setns` in `pre_exec`), through `posix_spawn` with an empty signal mask and
//!   default dispositions: the daemon blocks SIGINT/SIGTERM in all its threads
//!   (it `sigwait`s for them), and a guest must not inherit that, or it would
//!   ignore `kill`. Its stdin is `/dev/null`, its stdout and stderr the instance
//!   log; every other fd of the daemon is close-on-exec.

use std::ffi::CString;
use std::io::{Read, Write};
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
/// exits through its debug port within [`KVM_PROBE_TIMEOUT`]. `Err` says why
/// not (with QEMU's last stderr line when the probe guest failed).
pub fn probe_kvm(binary: &str, dir: &Path) -> Result<(), String> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .map_err(|e| format!("/dev/kvm not usable: {e}"))?;
    std::fs::create_dir_all(dir)
        .map_err(|e| format!("KVM probe: create {}: {e}", dir.display()))?;
    let img = dir.join("kvm-probe.img");
    std::fs::write(&img, probe_sector())
        .map_err(|e| format!("KVM probe: write {}: {e}", img.display()))?;
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
        .stderr(std::process::Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            let _ = std::fs::remove_file(&img);
            return Err(format!("KVM probe: cannot run {binary}: {e}"));
        }
    };
    let deadline = Instant::now() + KVM_PROBE_TIMEOUT;
    let result = loop {
        match child.try_wait() {
            Ok(Some(status)) if status.code() == Some(KVM_PROBE_EXIT) => break Ok(()),
            Ok(Some(status)) => {
                let mut err = String::new();
                if let Some(mut e) = child.stderr.take() {
                    let _ = e.read_to_string(&mut err);
                }
                let last = err.lines().rev().find(|l| !l.trim().is_empty());
                break Err(format!(
                    "KVM probe guest failed: {binary} {}{}",
                    describe_exit(status),
                    last.map(|l| format!(": {}", l.trim())).unwrap_or_default()
                ));
            }
            Ok(None) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            other => {
                let _ = child.kill();
                let _ = child.wait();
                break Err(match other {
                    Err(e) => format!("KVM probe: wait for {binary}: {e}"),
                    _ => format!("KVM probe guest did not finish within {KVM_PROBE_TIMEOUT:?}"),
                });
            }
        }
    };
    let _ = std::fs::remove_file(&img);
    result
}

/// `exited with status N` / `was killed by signal SIGNAME`.
fn describe_exit(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exited with status {c}"),
        (None, Some(sig)) => match Signal::try_from(sig) {
            Ok(s) => format!("was killed by signal {}", s.as_str()),
            Err(_) => format!("was killed by signal {sig}"),
        },
        (None, None) => "ended".to_owned(),
    }
}

/// The accelerator guests run on, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccelChoice {
    pub kvm: bool,
    /// Why, e.g. `/dev/kvm not usable: Permission denied (os error 13)`.
    pub why: String,
}

impl std::fmt::Display for AccelChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = if self.kvm { "kvm" } else { "tcg" };
        write!(f, "accel {name}: {}", self.why)
    }
}

static PROBED: std::sync::OnceLock<AccelChoice> = std::sync::OnceLock::new();

/// The accelerator of guests of `cfg` (`auto`: probed once per process; a
/// caller arriving while [`start_probe`]'s thread probes waits for it).
pub fn accel_choice(cfg: &QemuConfig) -> AccelChoice {
    match cfg.accel {
        Accel::Kvm => AccelChoice {
            kvm: true,
            why: "chosen with --qemu-accel kvm".to_owned(),
        },
        Accel::Tcg => AccelChoice {
            kvm: false,
            why: "chosen with --qemu-accel tcg".to_owned(),
        },
        Accel::Auto => PROBED
            .get_or_init(|| {
                let choice = match probe_kvm(&cfg.binary, &cfg.log_dir) {
                    Ok(()) => AccelChoice {
                        kvm: true,
                        why: "/dev/kvm works (a probe guest ran on it)".to_owned(),
                    },
                    Err(why) => AccelChoice { kvm: false, why },
                };
                tracing::info!(accel = %choice, "QEMU guests will run with {choice}");
                choice
            })
            .clone(),
    }
}

/// Whether guests of `cfg` run on KVM.
pub fn use_kvm(cfg: &QemuConfig) -> bool {
    accel_choice(cfg).kvm
}

/// Decide the accelerator on a thread of its own (`auto` only), so that the
/// first launch does not wait for the probe on the management thread.
pub fn start_probe(cfg: &QemuConfig) {
    if cfg.accel != Accel::Auto || PROBED.get().is_some() {
        return;
    }
    let cfg = cfg.clone();
    let spawned = std::thread::Builder::new()
        .name("sgswitch-kvm-probe".into())
        .spawn(move || {
            accel_choice(&cfg);
        });
    if let Err(e) = spawned {
        tracing::warn!("cannot start the KVM probe thread ({e}); the first launch probes");
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

/// Offset of the Linux x86 boot protocol's `HdrS` signature.
const BZIMAGE_MAGIC_AT: usize = 0x202;

/// Whether `path` is a Linux x86 kernel image (`HdrS` at offset 0x202); `Err`
/// says what is wrong with it.
pub fn check_kernel(path: &Path) -> Result<(), String> {
    let mut head = [0u8; BZIMAGE_MAGIC_AT + 4];
    let n = read_head(path, &mut head)?;
    if n < head.len() || &head[BZIMAGE_MAGIC_AT..] != b"HdrS" {
        return Err(
            "not a Linux kernel image (bzImage): no \"HdrS\" boot header at offset 0x202"
                .to_owned(),
        );
    }
    Ok(())
}

/// Whether `path` starts like an initramfs: a compressed (gzip, zstd, xz, lz4,
/// bzip2, lzma, lzo) or plain cpio archive. `Err` says what is wrong with it.
pub fn check_initrd(path: &Path) -> Result<(), String> {
    const MAGICS: &[&[u8]] = &[
        b"\x1f\x8b",         // gzip
        b"\x28\xb5\x2f\xfd", // zstd
        b"\xfd7zXZ\x00",     // xz
        b"\x02\x21\x4c\x18", // lz4 (legacy, what the kernel builds)
        b"\x04\x22\x4d\x18", // lz4 frame
        b"BZh",              // bzip2
        b"\x5d\x00\x00",     // lzma
        b"\x89LZO",          // lzo
        b"070701",           // cpio newc
        b"070702",           // cpio newc with CRC
        b"070707",           // cpio odc
    ];
    let mut head = [0u8; 6];
    let n = read_head(path, &mut head)?;
    if MAGICS.iter().any(|m| head[..n].starts_with(m)) {
        Ok(())
    } else {
        Err("not an initramfs: neither a cpio archive nor gzip, zstd, xz, lz4, bzip2, lzma or lzo compressed".to_owned())
    }
}

/// Read up to `buf.len()` bytes from the start of `path`.
fn read_head(path: &Path, buf: &mut [u8]) -> Result<usize, String> {
    let mut f = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.to_string()),
        }
    }
    Ok(n)
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
        push_escaped(&mut d, disk.as_os_str().as_bytes());
        d.extend_from_slice(b",if=virtio,snapshot=on");
        push(b"-drive");
        push(&d);
    }
    let mac_text = crate::store::format_mac(&mac);
    let netdev = format!("tap,id=n0,ifname={GUEST_TAP},script=no,downscript=no,vhost=off");
    let device = format!("virtio-net-pci,netdev=n0,mac={mac_text},romfile=");
    for a in ["-netdev", &netdev, "-device", &device] {
        push(a.as_bytes());
    }
    // The serial console appends to the instance log (a plain `-serial file:`
    // would truncate what the daemon and QEMU's stderr wrote before it).
    let mut chardev = b"file,id=serial0,append=on,path=".to_vec();
    push_escaped(&mut chardev, log.as_os_str().as_bytes());
    push(b"-chardev");
    push(&chardev);
    for a in [
        "-serial",
        "chardev:serial0",
        "-display",
        "none",
        "-monitor",
        "none",
        "-name",
        id,
    ] {
        push(a.as_bytes());
    }
    argv
}

/// Append `value` to a QEMU option, doubling its commas (QEMU's escape).
fn push_escaped(out: &mut Vec<u8>, value: &[u8]) {
    for &b in value {
        out.push(b);
        if b == b',' {
            out.push(b',');
        }
    }
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
    #[error("guest {id}: create log {path}")]
    Log {
        id: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
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

/// A guest started by this daemon (its child: reaped by [`Guest::exit`] or
/// [`stop`]).
#[derive(Debug)]
pub struct Guest {
    pub pid: u32,
    /// The QEMU binary (for messages).
    pub binary: String,
    /// The instance log.
    pub log: PathBuf,
    /// The accelerator it runs on, and why.
    pub accel: AccelChoice,
    /// Why it ended, once it has (see [`Guest::exit`]).
    ended: Option<String>,
}

impl Guest {
    /// Reap the child if it has exited; returns whether it has.
    fn reap(&mut self) -> bool {
        self.exit().is_some()
    }

    /// `None` while QEMU runs; once it has exited (reaped here), why:
    /// `BINARY exited with status N: LAST LINES` ([`exit_reason`]).
    pub fn exit(&mut self) -> Option<&str> {
        if self.ended.is_none() {
            let status = match waitpid(Pid::from_raw(self.pid as i32), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) => return None,
                Ok(WaitStatus::Exited(_, code)) => format!("exited with status {code}"),
                Ok(WaitStatus::Signaled(_, sig, _)) => {
                    format!("was killed by signal {}", sig.as_str())
                }
                Ok(_) => return None,
                // ECHILD: reaped already, or not our child any more.
                Err(e) => format!("is gone ({e})"),
            };
            self.ended = Some(exit_reason(&self.binary, &status, &self.log));
        }
        self.ended.as_deref()
    }
}

/// How many lines of the instance log an exit reason quotes.
pub const REASON_LINES: usize = 5;

/// `BINARY STATUS: L1 | L2 ...` with the last [`REASON_LINES`] non-empty lines
/// of `log` that are not the daemon's own (`sgswitch:`), or `(nothing in LOG)`.
pub fn exit_reason(binary: &str, status: &str, log: &Path) -> String {
    let text = std::fs::read(log).unwrap_or_default();
    // The tail is enough (a guest that booted may have logged a lot).
    let tail = &text[text.len().saturating_sub(16 * 1024)..];
    let tail = String::from_utf8_lossy(tail);
    let mut lines: Vec<&str> = tail
        .lines()
        .map(|l| l.trim_matches(|c: char| c.is_whitespace() || c.is_control()))
        .filter(|l| !l.is_empty() && !l.starts_with("sgswitch:"))
        .collect();
    let keep = lines.len().saturating_sub(REASON_LINES);
    lines.drain(..keep);
    if lines.is_empty() {
        format!("{binary} {status} (nothing in {})", log.display())
    } else {
        // One line, no tabs: it is a field of the CLI's INSTANCE line.
        format!("{binary} {status}: {}", lines.join(" | ")).replace('\t', " ")
    }
}

/// Start `args[0]` (looked up in PATH) with a clean signal state, stdin on
/// `/dev/null` and stdout/stderr on `out`.
fn spawn_clean(args: &[CString], out: &std::fs::File) -> nix::Result<Pid> {
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
    files.add_dup2(null_in.as_raw_fd(), 0)?;
    files.add_dup2(out.as_raw_fd(), 1)?;
    files.add_dup2(out.as_raw_fd(), 2)?;
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

/// The instance log of guest `id`.
pub fn log_path(cfg: &QemuConfig, id: &str) -> PathBuf {
    cfg.log_dir.join(format!("{id}.log"))
}

/// Boot guest `id` from `image` with `mac`; returns as soon as QEMU is spawned
/// (it may still fail: [`Guest::exit`]). The switch's side of its TAP is
/// opened with [`open_queues`] (slow: AF_PACKET rings wait for an RCU grace
/// period, tens of milliseconds on a busy host).
pub fn start(cfg: &QemuConfig, image: &GuestImage, id: &str, mac: Mac) -> Result<Guest, QemuError> {
    let log = log_path(cfg, id);
    std::fs::create_dir_all(&cfg.log_dir).map_err(|source| QemuError::LogDir {
        id: id.to_owned(),
        path: cfg.log_dir.clone(),
        source,
    })?;
    let log_err = |source| QemuError::Log {
        id: id.to_owned(),
        path: log.clone(),
        source,
    };
    let mut out = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(&log)
        .map_err(log_err)?;
    let accel = accel_choice(cfg);
    tracing::info!(instance = id, "guest {id}: {accel}");
    writeln!(out, "sgswitch: guest {id}: {accel}").map_err(log_err)?;
    // Appends from here on, like QEMU's serial chardev.
    drop(out);
    let out = std::fs::OpenOptions::new()
        .append(true)
        .open(&log)
        .map_err(log_err)?;
    netns::create(id).map_err(|source| QemuError::Netns {
        id: id.to_owned(),
        source,
    })?;
    match start_in_netns(cfg, image, id, mac, &log, &out, accel) {
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
    log: &Path,
    out: &std::fs::File,
    accel: AccelChoice,
) -> Result<Guest, QemuError> {
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
    argv.extend(qemu_argv(cfg, image, id, mac, log, accel.kvm));
    let spawn_err = |source| QemuError::Spawn {
        id: id.to_owned(),
        binary: cfg.binary.clone(),
        source,
    };
    let args: Vec<CString> = argv
        .into_iter()
        .map(|a| CString::new(a).map_err(|_| spawn_err(nix::Error::EINVAL)))
        .collect::<Result<_, _>>()?;
    let pid = spawn_clean(&args, out).map_err(spawn_err)?;
    let guest = Guest {
        pid: pid.as_raw() as u32,
        binary: cfg.binary.clone(),
        log: log.to_path_buf(),
        accel,
        ended: None,
    };
    // No waiting for QEMU here: whether it comes up is seen later (its first
    // DHCP lease, or its exit through `Guest::exit`).
    Ok(guest)
}

/// One AF_PACKET queue per worker on guest `id`'s TAP (the switch's side).
pub fn open_queues(id: &str, workers: usize) -> Result<Vec<Box<dyn PortQueue>>, QemuError> {
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

/// Stop guest `id` (process `pid`; `guest` if this daemon started it), kill
/// whatever else still runs in its namespace, and delete the namespace.
pub fn stop(id: &str, pid: u32, mut guest: Option<Guest>) -> Result<(), QemuError> {
    stop_process(id, pid, guest.as_mut());
    if let Some(ns) = crate::instances::netns_inode(id) {
        crate::instances::kill_netns_processes(ns, crate::instances::KILL_GRACE);
    }
    match netns::delete(id) {
        Ok(()) | Err(NetnsError::NotFound { .. }) => Ok(()),
        Err(source) => Err(QemuError::Netns {
            id: id.to_owned(),
            source,
        }),
    }
}

/// SIGTERM, up to 2 s for QEMU to exit, then SIGKILL; reap our own child.
fn stop_process(id: &str, pid: u32, mut guest: Option<&mut Guest>) {
    use nix::sys::signal::kill;
    let target = Pid::from_raw(pid as i32);
    if is_guest(pid, id) {
        let _ = kill(target, Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(2);
        // A zombie has an empty command line, so this ends once QEMU exited.
        while is_guest(pid, id) && Instant::now() < deadline {
            if guest.as_deref_mut().is_some_and(Guest::reap) {
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
        assert_eq!(after(&tcg, "-serial"), ["chardev:serial0"]);
        assert_eq!(
            after(&tcg, "-chardev"),
            ["file,id=serial0,append=on,path=/var/lib/sgswitch/qemu/i-0000abcd.log"]
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
        let why = probe_kvm("/nonexistent/qemu", &dir).unwrap_err();
        assert!(
            why.contains("/dev/kvm") || why.contains("/nonexistent/qemu"),
            "{why}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn kernels_and_initrds_are_recognised_by_their_magic() {
        let dir = std::env::temp_dir().join(format!("sgswitch-magic-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = |name: &str, bytes: &[u8]| {
            let p = dir.join(name);
            std::fs::write(&p, bytes).unwrap();
            p
        };
        let mut bz = vec![0u8; 0x300];
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        assert_eq!(check_kernel(&file("bz", &bz)), Ok(()));
        let e = check_kernel(Path::new("/etc/passwd")).unwrap_err();
        assert!(e.contains("not a Linux kernel image (bzImage)"), "{e}");
        // Too short to hold the header.
        assert!(check_kernel(&file("short", b"HdrS")).is_err());
        assert!(check_kernel(&dir.join("missing")).is_err());
        for (name, magic) in [
            ("gz", &b"\x1f\x8b\x08\x00"[..]),
            ("zst", b"\x28\xb5\x2f\xfd\x00"),
            ("xz", b"\xfd7zXZ\x00\x00"),
            ("lz4", b"\x02\x21\x4c\x18"),
            ("cpio", b"070701000000"),
        ] {
            assert_eq!(check_initrd(&file(name, magic)), Ok(()), "{name}");
        }
        let e = check_initrd(Path::new("/etc/passwd")).unwrap_err();
        assert!(e.contains("not an initramfs"), "{e}");
        assert!(check_initrd(&file("empty", b"")).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn exit_reasons_quote_the_last_lines_of_the_log_not_the_daemons_own() {
        let dir = std::env::temp_dir().join(format!("sgswitch-reason-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("i-1.log");
        std::fs::write(
            &log,
            "sgswitch: guest i-1: accel tcg: test\n\nl1\nl2\nl3\nl4\nl5\tx\r\nl6\n\n",
        )
        .unwrap();
        assert_eq!(
            exit_reason("qemu-system-x86_64", "exited with status 1", &log),
            "qemu-system-x86_64 exited with status 1: l2 | l3 | l4 | l5 x | l6"
        );
        std::fs::write(&log, "sgswitch: guest i-1: accel tcg: test\n").unwrap();
        let r = exit_reason("qemu", "was killed by signal SIGKILL", &log);
        assert!(
            r.starts_with("qemu was killed by signal SIGKILL (nothing in "),
            "{r}"
        );
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
