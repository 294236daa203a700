//! The real daemon with the real switch (needs root; skips itself otherwise):
//! `sgswitch up --uplink-netns NS`, namespace instances launched, reachable
//! according to their groups, kept across a daemon restart, removed on
//! terminate.
//!
//! Lab safety: the uplink lives in a namespace this test creates; instances are
//! namespaces the daemon creates; all addresses (10.77.0.0/16) exist only inside
//! those namespaces. Everything is removed by name/PID in Drop guards, even when
//! the test fails. Pings are single packets with a 1-2 s timeout.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_sgswitch");
const SUBNET: &str = "10.77.0.0/16";
const OUTSIDE_ADDR: &str = "10.77.255.10";

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

fn sh(args: &[&str]) -> (bool, String) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .expect("run command");
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// Everything the test made; removed on drop.
struct Lab {
    dir: PathBuf,
    uplink_ns: String,
    uplink: String,
    instances: Vec<String>,
    daemon: Option<Child>,
}

impl Lab {
    fn new() -> Lab {
        let pid = std::process::id();
        let dir = std::env::temp_dir().join(format!("sgswitch-root-{pid}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let lab = Lab {
            dir,
            uplink_ns: format!("sgsw-out-{pid}"),
            uplink: format!("sgu{}", pid % 1_000_000),
            instances: Vec::new(),
            daemon: None,
        };
        let (ok, out) = sh(&["ip", "netns", "add", &lab.uplink_ns]);
        assert!(ok, "ip netns add: {out}");
        lab
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("sgswitch.sock")
    }

    fn start(&mut self) {
        let mut child = Command::new(BIN)
            .args(["up", "--state-dir"])
            .arg(self.dir.join("state"))
            .arg("--socket")
            .arg(self.socket())
            .args([
                "--subnet",
                SUBNET,
                "--uplink",
                &self.uplink,
                "--uplink-netns",
                &self.uplink_ns,
            ])
            .args(["--workers", "2"])
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

    fn stop(&mut self, signal: &str) {
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

    fn cli(&self, args: &[&str]) -> String {
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

    fn ping(&self, from_ns: &str, to: &str) -> bool {
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
        for id in &self.instances {
            let _ = sh(&["ip", "netns", "del", id]);
        }
        let _ = sh(&["ip", "netns", "del", &self.uplink_ns]);
        let _ = sh(&["ip", "link", "del", &self.uplink]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn instance_lines(out: &str) -> Vec<Vec<String>> {
    out.lines()
        .filter(|l| l.starts_with("INSTANCE\t"))
        .map(|l| l.split('\t').map(str::to_owned).collect())
        .collect()
}

fn netns_exists(name: &str) -> bool {
    Path::new("/run/netns").join(name).exists()
}

#[test]
fn daemon_with_switch_launches_enforces_restarts_and_terminates() {
    if !is_root() {
        eprintln!("skipped: needs root (network namespaces and TAPs)");
        return;
    }
    let mut lab = Lab::new();
    lab.start();

    let out = lab.cli(&["run-instances", "ami-eca54085", "-n", "2"]);
    let lines = instance_lines(&out);
    assert_eq!(lines.len(), 2, "{out}");
    for l in &lines {
        lab.instances.push(l[1].clone());
    }
    assert!(out.starts_with("RESERVATION\tr-"), "{out}");
    let (a, b) = (lines[0][1].clone(), lines[1][1].clone());
    let (ip_a, ip_b) = (lines[0][3].clone(), lines[1][3].clone());
    assert_eq!((ip_a.as_str(), ip_b.as_str()), ("10.77.0.2", "10.77.0.3"));
    for l in &lines {
        assert_eq!(l[4], "running");
        assert_eq!(l[6], format!("netns:{}", l[1]));
        assert!(netns_exists(&l[1]));
        let (ok, addr) = sh(&[
            "ip", "netns", "exec", &l[1], "ip", "-o", "-4", "addr", "show", "dev", "eth0",
        ]);
        assert!(ok && addr.contains(&format!("{}/16", l[3])), "{addr}");
    }

    // Same group (default): members reach each other.
    assert!(lab.ping(&a, &ip_b), "default members must reach each other");
    // From outside: filtered until authorized.
    let (ok, out) = sh(&[
        "ip",
        "netns",
        "exec",
        &lab.uplink_ns,
        "ip",
        "addr",
        "add",
        &format!("{OUTSIDE_ADDR}/16"),
        "dev",
        &lab.uplink,
    ]);
    assert!(ok, "{out}");
    assert!(
        !lab.ping(&lab.uplink_ns, &ip_a),
        "outside must be filtered by default"
    );
    lab.cli(&[
        "authorize",
        "default",
        "-P",
        "icmp",
        "-t",
        "-1:-1",
        "-s",
        &format!("{OUTSIDE_ADDR}/32"),
    ]);
    assert!(
        lab.ping(&lab.uplink_ns, &ip_a),
        "authorized ICMP from outside"
    );

    let stats = lab.cli(&["stats"]);
    assert!(stats.contains(&format!("PORT\t{a}\t")), "{stats}");

    // Restart: instances keep their namespaces, come back running and reachable.
    lab.stop("TERM");
    assert!(
        netns_exists(&a) && netns_exists(&b),
        "namespaces kept across a restart"
    );
    lab.start();
    let out = lab.cli(&["describe-instances"]);
    let lines = instance_lines(&out);
    assert_eq!(lines.len(), 2, "{out}");
    assert!(lines.iter().all(|l| l[4] == "running"), "{out}");
    // The uplink was recreated; give it its outside address again.
    let _ = sh(&[
        "ip",
        "netns",
        "exec",
        &lab.uplink_ns,
        "ip",
        "addr",
        "add",
        &format!("{OUTSIDE_ADDR}/16"),
        "dev",
        &lab.uplink,
    ]);
    assert!(
        lab.ping(&lab.uplink_ns, &ip_b),
        "rules and ports back after restart"
    );
    assert!(lab.ping(&b, &ip_a));

    // A crash (kill -9) loses nothing: the persistent uplink and instance TAPs are
    // found again, the acknowledged rule is enforced.
    lab.cli(&[
        "authorize",
        "default",
        "-P",
        "tcp",
        "-p",
        "22",
        "-s",
        "10.77.255.11/32",
    ]);
    lab.stop("KILL");
    lab.start();
    let groups = lab.cli(&["describe-group", "default"]);
    assert!(
        groups.contains("PERMISSION\tdefault\tALLOWS\ttcp\t22\t22\tFROM\tCIDR\t10.77.255.11/32\n"),
        "{groups}"
    );
    let _ = sh(&[
        "ip",
        "netns",
        "exec",
        &lab.uplink_ns,
        "ip",
        "addr",
        "add",
        &format!("{OUTSIDE_ADDR}/16"),
        "dev",
        &lab.uplink,
    ]);
    assert!(
        lab.ping(&lab.uplink_ns, &ip_a),
        "enforced after kill -9 and restart"
    );
    assert!(lab.ping(&a, &ip_b));

    // Terminate removes the namespaces.
    let out = lab.cli(&["terminate-instances", &a, &b]);
    assert_eq!(
        out,
        format!("INSTANCE\t{a}\trunning\tshutting-down\nINSTANCE\t{b}\trunning\tshutting-down\n")
    );
    assert!(!netns_exists(&a) && !netns_exists(&b));
    assert_eq!(lab.cli(&["describe-instances"]), "");
    lab.stop("TERM");
}
