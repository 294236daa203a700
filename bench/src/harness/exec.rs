//! Processes, deadlines, namespaces and CPU accounting for the end-to-end harness.
//!
//! Contract:
//! * Every program runs under a deadline ([`run_ok`] / [`Proc::finish`]); a
//!   background program is a [`Proc`], killed by its PID (SIGTERM, then SIGKILL
//!   after a short grace) when dropped, also on panic.
//! * Namespaces the harness makes are [`Ns`] guards: deleted on drop (which
//!   destroys the veths/TAPs inside them). Nothing is configured in the root
//!   namespace; programs reach a namespace with `ip netns exec`.
//! * [`Interrupt`]: SIGINT/SIGTERM are blocked in every thread and taken by one
//!   waiting thread, which sets a flag the harness checks between steps, so a
//!   Ctrl-C unwinds through the guards instead of killing the process mid-setup.
//!   (Children inherit the blocked mask; they are stopped by the harness.)
//! * CPU: [`CpuSample`] reads `/proc/PID/stat` (user+system ticks of the whole
//!   process) and `/proc/stat`; [`CpuSample::since`] turns two samples into the
//!   process's share of one core and the machine's busy share of all cores.

use std::io::{BufRead, BufReader, Read};
use std::net::Ipv4Addr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use e2e::run::{Outcome, describe, kill_wait};
use nix::sys::signal::{SigSet, Signal};

/// Errors of the harness (setup, programs, parsing).
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    #[error("start {cmd}")]
    Spawn {
        cmd: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{cmd} failed ({code:?}): {stderr}{stdout}")]
    Failed {
        cmd: String,
        code: Option<i32>,
        stdout: String,
        stderr: String,
    },
    #[error("{cmd}: still running after {after:?} (killed)")]
    Timeout { cmd: String, after: Duration },
    #[error("{cmd}: no line starting with {want:?} within {after:?} (stderr: {stderr})")]
    NoLine {
        cmd: String,
        want: String,
        after: Duration,
        stderr: String,
    },
    #[error("cannot parse {what} from {text:?}")]
    Parse { what: &'static str, text: String },
    #[error("namespace {name}")]
    Netns {
        name: String,
        #[source]
        source: switch::netns::NetnsError,
    },
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Setup(String),
    #[error("interrupted (SIGINT/SIGTERM)")]
    Interrupted,
}

pub type Result<T> = std::result::Result<T, HarnessError>;

/// The flag set by SIGINT/SIGTERM (see the module docs).
pub struct Interrupt;

static STOP: AtomicBool = AtomicBool::new(false);

impl Interrupt {
    /// Blocks SIGINT/SIGTERM in this thread (call first in `main`, before any
    /// thread starts, so all inherit it) and starts the waiting thread.
    pub fn install() -> Result<()> {
        let mut set = SigSet::empty();
        set.add(Signal::SIGINT);
        set.add(Signal::SIGTERM);
        set.thread_block().map_err(|e| HarnessError::Io {
            what: "block SIGINT/SIGTERM".into(),
            source: e.into(),
        })?;
        thread::spawn(move || {
            while set.wait().is_ok() {
                if STOP.swap(true, Ordering::SeqCst) {
                    eprintln!("e2ebench: second signal, still cleaning up");
                } else {
                    eprintln!("e2ebench: interrupted, tearing down");
                }
            }
        });
        Ok(())
    }

    /// `Err(Interrupted)` once a signal came.
    pub fn check() -> Result<()> {
        if STOP.load(Ordering::SeqCst) {
            Err(HarnessError::Interrupted)
        } else {
            Ok(())
        }
    }

    /// Whether a signal came.
    pub fn raised() -> bool {
        STOP.load(Ordering::SeqCst)
    }

    /// Sleeps `d`, waking early (with `Err`) on a signal.
    pub fn sleep(d: Duration) -> Result<()> {
        let end = Instant::now() + d;
        while Instant::now() < end {
            Interrupt::check()?;
            thread::sleep((end - Instant::now()).min(Duration::from_millis(50)));
        }
        Interrupt::check()
    }
}

/// Runs `cmd` to completion within `timeout`; it must exit 0.
pub fn run_ok(cmd: &mut Command, timeout: Duration) -> Result<Outcome> {
    let name = describe(cmd);
    let o = e2e::run::run(cmd, timeout).map_err(|e| match e {
        e2e::run::RunError::Spawn { source, .. } => HarnessError::Spawn {
            cmd: name.clone(),
            source,
        },
        e2e::run::RunError::Timeout { after, .. } => HarnessError::Timeout {
            cmd: name.clone(),
            after,
        },
    })?;
    if o.success() {
        Ok(o)
    } else {
        Err(HarnessError::Failed {
            cmd: name,
            code: o.code,
            stdout: o.stdout,
            stderr: o.stderr,
        })
    }
}

/// `ip ARGS...` (20 s deadline), must succeed.
pub fn ip(args: &[&str]) -> Result<()> {
    run_ok(Command::new("ip").args(args), Duration::from_secs(20)).map(drop)
}

/// `ip netns exec NS PROG ARGS...` as a [`Command`].
pub fn in_ns(ns: &str, prog: &str, args: &[&str]) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns, prog]).args(args);
    c
}

/// A namespace deleted on drop.
#[derive(Debug)]
pub struct Ns {
    guard: switch::netns::NetnsGuard,
}

static NS_SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

impl Ns {
    /// A new namespace `sgb<pid>-<n>-<tag>` with `lo` up.
    pub fn new(tag: &str) -> Result<Ns> {
        let n = NS_SEQ.fetch_add(1, Ordering::Relaxed);
        let name = format!("sgb{}-{n}-{tag}", std::process::id());
        let guard =
            switch::netns::NetnsGuard::create(&name).map_err(|source| HarnessError::Netns {
                name: name.clone(),
                source,
            })?;
        switch::netns::lo_up(Some(&name)).map_err(|source| HarnessError::Netns {
            name: name.clone(),
            source,
        })?;
        Ok(Ns { guard })
    }

    pub fn name(&self) -> &str {
        self.guard.name()
    }

    /// `ip -n NS ARGS...`.
    pub fn ip(&self, args: &[&str]) -> Result<()> {
        let mut all = vec!["-n", self.name()];
        all.extend_from_slice(args);
        ip(&all)
    }

    /// Puts `addr/prefix` on `ifname` and brings it up.
    pub fn addr_up(&self, ifname: &str, addr: Ipv4Addr, prefix: u8) -> Result<()> {
        self.ip(&["addr", "add", &format!("{addr}/{prefix}"), "dev", ifname])?;
        self.ip(&["link", "set", ifname, "up"])
    }

    /// Add IPv6 address `addr`/64 to `ifname` without duplicate address
    /// detection (usable at once).
    pub fn addr6(&self, ifname: &str, addr: std::net::Ipv6Addr) -> Result<()> {
        self.ip(&[
            "-6",
            "addr",
            "add",
            &format!("{addr}/64"),
            "dev",
            ifname,
            "nodad",
        ])
    }
}

/// A background program, killed by PID when dropped. Its stdout lines arrive on
/// a channel; its stderr is kept (the last 64 KiB) for error messages.
pub struct Proc {
    child: Child,
    cmd: String,
    lines: Receiver<String>,
    stderr: Arc<Mutex<String>>,
    /// SIGTERM grace before SIGKILL at drop.
    grace: Duration,
}

impl Proc {
    /// Starts `cmd` (stdin closed, stdout/stderr piped).
    pub fn spawn(cmd: &mut Command) -> Result<Proc> {
        let name = describe(cmd);
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| HarnessError::Spawn {
                cmd: name.clone(),
                source,
            })?;
        let (tx, rx) = mpsc::channel();
        let out = child.stdout.take().expect("piped stdout");
        thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let sink = Arc::clone(&stderr);
        let mut err = child.stderr.take().expect("piped stderr");
        thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = err.read(&mut buf) {
                if n == 0 {
                    return;
                }
                let mut s = sink.lock().unwrap_or_else(PoisonError::into_inner);
                s.push_str(&String::from_utf8_lossy(&buf[..n]));
                if s.len() > 65_536 {
                    let cut = s.len() - 65_536;
                    let cut = (cut..s.len()).find(|&i| s.is_char_boundary(i)).unwrap_or(0);
                    s.drain(..cut);
                }
            }
        });
        Ok(Proc {
            child,
            cmd: name,
            lines: rx,
            stderr,
            grace: Duration::from_millis(500),
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What it printed on stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Waits for a stdout line starting with `prefix` (earlier lines are
    /// skipped) and returns it.
    pub fn wait_line(&mut self, prefix: &str, timeout: Duration) -> Result<String> {
        let end = Instant::now() + timeout;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self
                .lines
                .recv_timeout(left.min(Duration::from_millis(100)))
            {
                Ok(l) if l.starts_with(prefix) => return Ok(l),
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) if Instant::now() < end => {
                    Interrupt::check()?;
                    if let Ok(Some(st)) = self.child.try_wait() {
                        // Exited: drain what is left, then give up.
                        while let Ok(l) = self.lines.recv_timeout(Duration::from_millis(200)) {
                            if l.starts_with(prefix) {
                                return Ok(l);
                            }
                        }
                        return Err(HarnessError::Failed {
                            cmd: self.cmd.clone(),
                            code: st.code(),
                            stdout: String::new(),
                            stderr: self.stderr(),
                        });
                    }
                }
                Err(_) => {
                    return Err(HarnessError::NoLine {
                        cmd: self.cmd.clone(),
                        want: prefix.to_owned(),
                        after: timeout,
                        stderr: self.stderr(),
                    });
                }
            }
        }
    }

    /// Waits up to `timeout` for it to exit (killing it after), then returns
    /// every stdout line not yet taken.
    pub fn finish(mut self, timeout: Duration) -> Result<Vec<String>> {
        let end = Instant::now() + timeout;
        let status = loop {
            match self.child.try_wait() {
                Ok(Some(st)) => break Some(st),
                Ok(None) if Instant::now() >= end => break None,
                Ok(None) => thread::sleep(Duration::from_millis(5)),
                Err(_) => break None,
            }
        };
        let Some(status) = status else {
            kill_wait(&mut self.child, Duration::ZERO);
            return Err(HarnessError::Timeout {
                cmd: self.cmd.clone(),
                after: timeout,
            });
        };
        let mut out = Vec::new();
        while let Ok(l) = self.lines.recv_timeout(Duration::from_millis(200)) {
            out.push(l);
        }
        if !status.success() {
            return Err(HarnessError::Failed {
                cmd: self.cmd.clone(),
                code: status.code(),
                stdout: out.join("\n"),
                stderr: self.stderr(),
            });
        }
        Ok(out)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        kill_wait(&mut self.child, self.grace);
    }
}

/// Clock ticks per second of `/proc` CPU times.
fn clk_tck() -> f64 {
    static TCK: OnceLock<f64> = OnceLock::new();
    *TCK.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// Number of CPUs online.
pub fn ncpus() -> usize {
    thread::available_parallelism().map_or(1, usize::from)
}

/// CPU counters at one instant.
#[derive(Clone, Copy, Debug)]
pub struct CpuSample {
    at: Instant,
    /// user + system ticks of the process (all its threads), if it was given.
    proc_ticks: Option<u64>,
    busy: u64,
    total: u64,
}

/// CPU use between two samples.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct CpuUse {
    /// The process's CPU time as % of one core.
    pub proc_pct: Option<f64>,
    /// The machine's busy time as % of all cores.
    pub machine_pct: f64,
}

/// user+system ticks from a `/proc/PID/stat` line.
pub fn parse_proc_stat(text: &str) -> Option<u64> {
    // The command name may hold spaces and parens: fields start after the last ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is field 3 (state); utime is field 14, stime 15.
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// (busy, total) jiffies from the `cpu ` line of `/proc/stat`.
pub fn parse_machine_stat(text: &str) -> Option<(u64, u64)> {
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest counted in user).
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    Some((total - idle, total))
}

impl CpuSample {
    pub fn take(pid: Option<u32>) -> CpuSample {
        let proc_ticks = pid.and_then(|p| {
            std::fs::read_to_string(format!("/proc/{p}/stat"))
                .ok()
                .and_then(|t| parse_proc_stat(&t))
        });
        let (busy, total) = std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|t| parse_machine_stat(&t))
            .unwrap_or((0, 0));
        CpuSample {
            at: Instant::now(),
            proc_ticks,
            busy,
            total,
        }
    }

    /// CPU use from `earlier` to `self`.
    pub fn since(&self, earlier: &CpuSample) -> CpuUse {
        let secs = self.at.duration_since(earlier.at).as_secs_f64().max(1e-6);
        let proc_pct = match (self.proc_ticks, earlier.proc_ticks) {
            (Some(a), Some(b)) => Some(a.saturating_sub(b) as f64 / clk_tck() / secs * 100.0),
            _ => None,
        };
        let dt = self.total.saturating_sub(earlier.total);
        let machine_pct = if dt == 0 {
            0.0
        } else {
            self.busy.saturating_sub(earlier.busy) as f64 / dt as f64 * 100.0
        };
        CpuUse {
            proc_pct,
            machine_pct,
        }
    }
}

/// Whether program `name` is on the PATH.
pub fn have(name: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(name).is_file()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_stat_fields_after_the_command_name() {
        let line = "1234 (my (odd) prog) S 1 1234 1234 0 -1 4194560 100 0 0 0 \
                    250 40 0 0 20 0 3 0 555 1000 10";
        assert_eq!(parse_proc_stat(line), Some(290));
        assert_eq!(parse_proc_stat("garbage"), None);
    }

    #[test]
    fn machine_stat_busy_excludes_idle_and_iowait() {
        let text = "cpu  100 5 50 800 20 3 2 0 0 0\ncpu0 1 2 3 4 5 6 7 8\n";
        assert_eq!(parse_machine_stat(text), Some((160, 980)));
    }

    #[test]
    fn cpu_of_this_process_is_measured() {
        // This thread's own CPU time in ns (first field of its schedstat).
        let thread_ns = || -> u64 {
            let s = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap();
            s.split_whitespace().next().unwrap().parse().unwrap()
        };
        let a = CpuSample::take(Some(std::process::id()));
        let t = Instant::now();
        let ns0 = thread_ns();
        // Spin for 300 ms of CPU, not of wall time: on a loaded machine the
        // thread may get a small share of the wall clock (capped at 20 s).
        let mut x = 0u64;
        while thread_ns() - ns0 < 300_000_000 && t.elapsed() < Duration::from_secs(20) {
            for _ in 0..10_000 {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
            }
        }
        std::hint::black_box(x);
        let spun = (thread_ns() - ns0) as f64 / 1e6;
        let wall = t.elapsed().as_secs_f64() * 1e3;
        let u = CpuSample::take(Some(std::process::id())).since(&a);
        let p = u.proc_pct.expect("own stat readable");
        // The process used at least what this thread did (ticks of 10 ms:
        // allow a third less), and no more than the machine's cores.
        let mine = spun / wall * 100.0;
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        assert!(
            p > mine * 0.66 && p < 100.0 * cores + 25.0,
            "{u:?}: this thread {spun:.0} ms CPU in {wall:.0} ms"
        );
        assert!(u.machine_pct > 0.0, "{u:?}");
    }

    #[test]
    fn a_background_program_is_read_and_reaped() {
        let mut p =
            Proc::spawn(Command::new("sh").args(["-c", "echo a; echo ready 7; echo b"])).unwrap();
        assert_eq!(
            p.wait_line("ready", Duration::from_secs(5)).unwrap(),
            "ready 7"
        );
        let rest = p.finish(Duration::from_secs(5)).unwrap();
        assert_eq!(rest, vec!["b".to_string()]);
        let e = Proc::spawn(Command::new("sh").args(["-c", "exit 3"]))
            .unwrap()
            .finish(Duration::from_secs(5))
            .unwrap_err();
        assert!(
            matches!(e, HarnessError::Failed { code: Some(3), .. }),
            "{e}"
        );
    }
}
