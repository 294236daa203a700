//! README.md runs as written: every shell block marked `<!-- readme-test: run -->`
//! is run command by command, and what each command prints must be what the
//! README shows after it (see `e2e::transcript` for the marks, the learned ids
//! and the wildcards). `README_BLESS=1` rewrites the output of each command
//! that differs with this run's (ids the README already had are kept) instead
//! of failing: after a change to what sgswitch prints, bless, then read the diff.
//!
//! Where it runs (strict lab safety): the README speaks of "the host", where a
//! plain `sgswitch up` puts its uplink, its socket (`/run/sgswitch`) and state
//! (`/var/lib/sgswitch`). The test makes a network namespace `readme-host-PID`
//! and runs one `bash` in it (`ip netns exec`, which also gives it a mount
//! namespace of its own); that shell mounts tmpfs over `/run` and `/var/lib`,
//! so the README's default paths, `ip netns add` and the daemon's instance
//! namespaces are private to the test (nothing appears in the real `/run/netns`,
//! the root namespace gets no address or route). Every command of the README is
//! run by that shell, in order; background commands (`... &`) write to a log of
//! their own and their PIDs are kept. At the end, also when the test fails: the
//! daemon gets SIGTERM (then SIGKILL) by PID, the other background commands
//! SIGKILL by PID, every namespace in the private `/run/netns` is deleted, the
//! shell exits (or, if it does not within 15 s, its process group, which it
//! leads, is killed by the shell's PID), then `readme-host-PID` is deleted.
//!
//! Needs root, nmap, busybox and iproute2 (skips without, fails under CI=true).

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use e2e::lab::{is_root, sgswitch_bin};
use e2e::transcript::{self, Ids, Mode, Step};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// Deadline of one README command.
const STEP_TIMEOUT: Duration = Duration::from_secs(90);
/// How long a background command may take to print its lines.
const BACKGROUND_TIMEOUT: Duration = Duration::from_secs(30);
const END: &str = "@@README-END ";
const BG: &str = "@@README-BG ";

fn skip(why: &str) -> bool {
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("readme test cannot run under CI: {why}");
    }
    eprintln!("SKIP readme_runs_as_written: {why}");
    true
}

fn have(prog: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {prog}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// One shell in the test's "host" namespace, and everything to clean up.
struct Session {
    netns: String,
    dir: PathBuf,
    shell: Option<Child>,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    /// Background commands: (pid, is the daemon, log file).
    background: Vec<(u32, bool, PathBuf)>,
}

impl Session {
    fn start() -> Session {
        let pid = std::process::id();
        let netns = format!("readme-host-{pid}");
        let dir = std::env::temp_dir().join(format!("sgswitch-readme-{pid}"));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("work")).unwrap();
        let ok = Command::new("ip")
            .args(["netns", "add", &netns])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "ip netns add {netns} failed");
        let bin_dir = sgswitch_bin().parent().unwrap().to_path_buf();
        let path = format!(
            "{}:{}",
            bin_dir.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        // Its own process group, so a forced cleanup reaches a command still
        // running in it (killpg by the shell's PID).
        let spawned = Command::new("ip")
            .args(["netns", "exec", &netns, "bash", "--noprofile", "--norc"])
            .process_group(0)
            .env_clear()
            .env("PATH", path)
            .env("HOME", dir.join("work"))
            .env("LC_ALL", "C")
            .env("TERM", "dumb")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn();
        let mut shell = match spawned {
            Ok(c) => c,
            Err(e) => {
                let _ = Command::new("ip").args(["netns", "del", &netns]).status();
                panic!("cannot start the session shell: {e}");
            }
        };
        let stdout = shell.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let stdin = shell.stdin.take();
        let mut s = Session {
            netns,
            dir,
            shell: Some(shell),
            stdin,
            lines: rx,
            background: Vec::new(),
        };
        let work = s.dir.join("work");
        let setup = format!(
            "exec 2>&1\n\
             mount --make-rprivate / && mount -t tmpfs readme-run /run && \
             mkdir -p /run/netns /run/sgswitch && mount -t tmpfs readme-varlib /var/lib && \
             mkdir -p /var/lib/sgswitch && ip link set lo up && cd {} && echo setup-ok",
            work.display()
        );
        let (out, _) = s.run(&setup, Duration::from_secs(20));
        assert_eq!(out, ["setup-ok"], "setting up the session failed");
        s
    }

    fn send(&mut self, text: &str) {
        let stdin = self.stdin.as_mut().expect("session closed");
        stdin
            .write_all(text.as_bytes())
            .and_then(|()| stdin.flush())
            .expect("write to the session shell");
    }

    /// Run `script` in the shell (stdin from /dev/null); its output lines and
    /// exit code. Panics on timeout (cleanup runs in Drop).
    fn run(&mut self, script: &str, timeout: Duration) -> (Vec<String>, i32) {
        self.send(&format!("{{ {script}\n}} </dev/null\necho \"{END}$?\"\n"));
        let deadline = Instant::now() + timeout;
        let mut out = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => match line.find(END) {
                    Some(at) => {
                        if at > 0 {
                            out.push(line[..at].to_owned());
                        }
                        let code = line[at + END.len()..].trim().parse().unwrap_or(-1);
                        return (out, code);
                    }
                    None => out.push(line),
                },
                Err(RecvTimeoutError::Timeout) => {
                    panic!("still running after {timeout:?}: {script}\nprinted so far:\n{out:#?}")
                }
                Err(RecvTimeoutError::Disconnected) => {
                    panic!("the session shell ended during: {script}\nprinted:\n{out:#?}")
                }
            }
        }
    }

    /// Start `cmd` (ending in `&`) in the background, its output in a log; the log path.
    fn spawn(&mut self, cmd: &str) -> PathBuf {
        let n = self.background.len();
        let log = self.dir.join(format!("background-{n}.log"));
        let cmd = cmd.trim_end().trim_end_matches('&');
        let (out, _) = self.run(
            &format!(
                "{cmd} </dev/null >{} 2>&1 &\necho \"{BG}$!\"",
                log.display()
            ),
            Duration::from_secs(10),
        );
        let pid: u32 = out
            .iter()
            .find_map(|l| l.strip_prefix(BG))
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| panic!("no PID for background command {cmd}: {out:?}"));
        let daemon = cmd.trim_start().starts_with("sgswitch up");
        self.background.push((pid, daemon, log.clone()));
        log
    }
}

fn alive(pid: u32) -> bool {
    kill(Pid::from_raw(pid as i32), None).is_ok()
}

impl Drop for Session {
    fn drop(&mut self) {
        let daemons: Vec<String> = self
            .background
            .iter()
            .filter(|b| b.1)
            .map(|b| b.0.to_string())
            .collect();
        let others: Vec<String> = self
            .background
            .iter()
            .filter(|b| !b.1)
            .map(|b| b.0.to_string())
            .collect();
        // Inside the session: stop the daemon, kill the listeners, delete the
        // namespaces (only those of the private /run/netns), leave.
        if self.stdin.is_some() {
            let script = format!(
                "\nkill -TERM {d} 2>/dev/null; for _ in $(seq 50); do kill -0 {d} 2>/dev/null || break; sleep 0.1; done; \
                 kill -KILL {d} {o} 2>/dev/null; sleep 0.2; \
                 for n in $(ls /run/netns); do ip netns del \"$n\"; done; exit 0\n",
                d = if daemons.is_empty() {
                    "0".to_owned()
                } else {
                    daemons.join(" ")
                },
                o = others.join(" ")
            );
            if let Some(stdin) = self.stdin.as_mut() {
                let _ = stdin.write_all(script.as_bytes());
                let _ = stdin.flush();
            }
            self.stdin = None;
        }
        if let Some(mut shell) = self.shell.take() {
            let deadline = Instant::now() + Duration::from_secs(15);
            while Instant::now() < deadline && matches!(shell.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(50));
            }
            if matches!(shell.try_wait(), Ok(None)) {
                let _ = kill(Pid::from_raw(-(shell.id() as i32)), Signal::SIGKILL);
                let _ = shell.kill();
            }
            let _ = shell.wait();
        }
        // Whatever is left of ours (the shell was killed before it could).
        for (pid, _, _) in &self.background {
            if alive(*pid) {
                let _ = kill(Pid::from_raw(*pid as i32), Signal::SIGKILL);
            }
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.netns])
            .status();
        if std::env::var_os("SGSWITCH_E2E_KEEP").is_none() {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

fn read_lines(p: &Path) -> Vec<String> {
    fs::read_to_string(p)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn readme_runs_as_written() {
    if !is_root() {
        skip("not root (the walkthrough makes namespaces and TAPs)");
        return;
    }
    for tool in ["nmap", "busybox", "ip", "bash", "mount"] {
        if !have(tool) && skip(&format!("{tool} not installed")) {
            return;
        }
    }
    let readme_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md");
    let text = fs::read_to_string(&readme_path).unwrap();
    let blocks = transcript::parse(&text).unwrap_or_else(|e| panic!("README.md: {e}"));
    let steps: Vec<&Step> = blocks
        .iter()
        .filter(|b| b.mode == Mode::Run)
        .flat_map(|b| &b.steps)
        .collect();
    // What the run blocks must cover (so a block cannot quietly lose its mark).
    let all: String = steps.iter().map(|s| s.command() + "\n").collect();
    for needed in [
        "sgswitch up --uplink-netns",
        "ip -n out addr add",
        "sgswitch run-instances",
        "nmap ",
        " -S 172.31.255.11",
        "busybox nc -ll",
        "sgswitch describe-group web app db",
        "echo open || echo blocked",
        "sgswitch delete-group web",
        "-p 70000",
    ] {
        assert!(
            all.contains(needed),
            "no run block of README.md has `{needed}`"
        );
    }

    let bless = std::env::var_os("README_BLESS").is_some();
    let mut session = Session::start();
    let mut ids = Ids::default();
    let mut failures = Vec::new();
    // Output start line → (output end line, the run's lines) (bless).
    let mut rewrites: BTreeMap<usize, (usize, Vec<String>)> = BTreeMap::new();
    for step in &steps {
        let cmd = ids.apply(&step.command());
        let actual = if step.background() {
            let log = session.spawn(&cmd);
            if step.expected.iter().all(|l| l.trim().is_empty()) {
                // A listener: give it a moment to bind, as a reader would.
                std::thread::sleep(Duration::from_millis(500));
                Vec::new()
            } else {
                let deadline = Instant::now() + BACKGROUND_TIMEOUT;
                loop {
                    let got = read_lines(&log);
                    if transcript::contains_in_order(&step.expected, &got, &ids)
                        || Instant::now() > deadline
                        || (bless && got.len() >= step.expected.len())
                    {
                        break got;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        } else {
            session.run(&cmd, STEP_TIMEOUT).0
        };
        let ok = if step.background() {
            transcript::contains_in_order(&step.expected, &actual, &ids)
        } else {
            transcript::matches(&step.expected, &actual, &mut ids)
        };
        if bless && !ok {
            // The run's output, with the README's ids where they stand for the
            // run's (the commands keep theirs).
            let new: Vec<String> = transcript::bless(&step.expected, &actual)
                .iter()
                .map(|l| ids.unapply(l))
                .collect();
            rewrites.insert(step.out_start, (step.out_end, new));
        } else if !ok {
            failures.push(transcript::report("README.md", step, &cmd, &actual, &ids));
        }
    }
    drop(session);
    if bless {
        let lines: Vec<&str> = text.lines().collect();
        let mut out: Vec<String> = Vec::new();
        let mut skip_until = 0;
        for (i, line) in lines.iter().enumerate() {
            // A rewrite replaces lines start..end (none when the README showed
            // no output) with the run's.
            if let Some((end, new)) = rewrites.get(&i) {
                out.extend(new.iter().cloned());
                skip_until = *end;
            }
            if i >= skip_until {
                out.push((*line).to_owned());
            }
        }
        let mut new_text = out.join("\n");
        new_text.push('\n');
        if new_text != text {
            fs::write(&readme_path, new_text).unwrap();
            eprintln!("README_BLESS: rewrote {}", readme_path.display());
        }
        return;
    }
    assert!(
        failures.is_empty(),
        "{} README command(s) printed something else than README.md shows \
         (README_BLESS=1 cargo test -p e2e --test readme rewrites the outputs; then read the diff):\n\n{}",
        failures.len(),
        failures.join("\n")
    );
}
