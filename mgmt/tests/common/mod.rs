//! Shared lab harness of the root-only tests: a uplink namespace, the real
//! daemon (`sgswitch up --uplink-netns`), CLI calls, pings, and a Drop guard that
//! removes every namespace, interface, process and file the test made.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

pub const BIN: &str = env!("CARGO_BIN_EXE_sgswitch");

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Skip (print why and return true) when `why` says the test cannot run;
/// under `CI=true` a test that cannot run fails instead.
pub fn cannot_run(why: Option<&str>) -> bool {
    let Some(why) = why else { return false };
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "CI=true: cannot run: {why}"
    );
    eprintln!("skipped: {why}");
    true
}

/// [`cannot_run`] for want of root.
pub fn not_root() -> bool {
    cannot_run((!is_root()).then_some("needs root (network namespaces and TAPs)"))
}

pub fn sh(args: &[&str]) -> (bool, String) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .expect("run command");
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// Everything the test made; removed on drop.
pub struct Lab {
    pub dir: PathBuf,
    pub uplink_ns: String,
    pub uplink: String,
    pub instances: Vec<String>,
    /// Namespaces the test made besides the uplink's.
    pub extra_ns: Vec<String>,
    pub daemon: Option<Child>,
    pub subnet: String,
    /// More `up` arguments.
    pub up_args: Vec<String>,
    /// Processes the daemon started for the test (QEMU guests): killed by PID.
    pub pids: Vec<u32>,
}

impl Lab {
    /// A lab for one test: `tag` (one letter) keeps names unique between the
    /// tests of one process; `subnet` is the instances' subnet.
    pub fn new(tag: &str, subnet: &str) -> Lab {
        let pid = std::process::id();
        let dir = std::env::temp_dir().join(format!("sgswitch-root-{tag}-{pid}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let lab = Lab {
            dir,
            uplink_ns: format!("sgsw-out-{tag}-{pid}"),
            uplink: format!("sgu{tag}{}", pid % 1_000_000),
            subnet: subnet.to_owned(),
            up_args: Vec::new(),
            pids: Vec::new(),
            instances: Vec::new(),
            extra_ns: Vec::new(),
            daemon: None,
        };
        let (ok, out) = sh(&["ip", "netns", "add", &lab.uplink_ns]);
        assert!(ok, "ip netns add: {out}");
        lab
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.join("sgswitch.sock")
    }

    pub fn start(&mut self) {
        let mut child = Command::new(BIN)
            .args(["up", "--state-dir"])
            .arg(self.dir.join("state"))
            .arg("--socket")
            .arg(self.socket())
            .args([
                "--subnet",
                &self.subnet,
                "--uplink",
                &self.uplink,
                "--uplink-netns",
                &self.uplink_ns,
            ])
            .args(["--workers", "2"])
            // Tests run in parallel: never the default EC2 API port.
            .args(["--ec2-listen", "off"])
            .args(&self.up_args)
            .env_remove("SGSWITCH_OWNER")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn sgswitch up");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[daemon] {line}");
                let _ = tx.send(line);
            }
        });
        self.daemon = Some(child);
        loop {
            match rx.recv_timeout(Duration::from_secs(30)) {
                Ok(line) if line.starts_with("sgswitch: ready on") => break,
                Ok(_) => continue,
                Err(e) => panic!("daemon never became ready: {e}"),
            }
        }
    }

    pub fn stop(&mut self, signal: &str) {
        if let Some(mut child) = self.daemon.take() {
            let _ = sh(&["kill", "-s", signal, &child.id().to_string()]);
            for _ in 0..200 {
                if child.try_wait().unwrap().is_some() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
            panic!("daemon did not stop on {signal}");
        }
    }

    /// Run the CLI: (stdout, stderr, exit code).
    pub fn cli_raw(&self, args: &[&str]) -> (String, String, i32) {
        let out = Command::new(BIN)
            .args(args)
            .env("SGSWITCH_SOCKET", self.socket())
            .env_remove("SGSWITCH_OWNER")
            .output()
            .unwrap();
        (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
            out.status.code().unwrap_or(-1),
        )
    }

    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new(BIN)
            .args(args)
            .env("SGSWITCH_SOCKET", self.socket())
            .env_remove("SGSWITCH_OWNER")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "sgswitch {args:?}: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    }

    pub fn ping(&self, from_ns: &str, to: &str) -> bool {
        sh(&[
            "ip", "netns", "exec", from_ns, "busybox", "ping", "-c", "1", "-W", "2", to,
        ])
        .0
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Some(mut child) = self.daemon.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        for pid in &self.pids {
            let _ = sh(&["kill", "-9", &pid.to_string()]);
        }
        for ns in &self.extra_ns {
            let _ = sh(&["ip", "netns", "del", ns]);
        }
        for id in &self.instances {
            let _ = sh(&["ip", "netns", "del", id]);
        }
        let _ = sh(&["ip", "netns", "del", &self.uplink_ns]);
        let _ = sh(&["ip", "link", "del", &self.uplink]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub fn instance_lines(out: &str) -> Vec<Vec<String>> {
    out.lines()
        .filter(|l| l.starts_with("INSTANCE\t"))
        .map(|l| l.split('\t').map(str::to_owned).collect())
        .collect()
}

pub fn netns_exists(name: &str) -> bool {
    Path::new("/run/netns").join(name).exists()
}
