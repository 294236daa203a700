//! Teardown and honest states of namespace instances with the real daemon
//! (needs root; skips itself otherwise, and fails instead under `CI=true`).
//!
//! * `terminate_all_ends_a_lab_and_what_runs_inside_it`: three namespace
//!   instances, a `sleep` and a busybox `nc -l` listener started inside them
//!   with `ip netns exec`; `terminate-instances --all` removes every namespace
//!   and ends both processes (SIGTERM: the test reaps them and checks the
//!   signal).
//! * `instances_whose_namespace_or_interface_vanished_are_not_running`: one
//!   instance's namespace deleted by hand (`ip netns del`), another's `eth0`
//!   deleted inside its namespace: `describe-instances` shows both `stopped`
//!   with the reason, the untouched one `running`; terminating them works.
//!
//! Lab safety: the uplink lives in a namespace this test creates; instances are
//! namespaces the daemon creates; addresses (10.74.0.0/16) exist only there.
//! Processes are killed by PID and namespaces deleted in Drop guards, also on
//! failure. Waits are bounded (seconds).

mod common;

use std::os::unix::process::ExitStatusExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Lab, instance_lines, netns_exists, not_root, sh};

const SUBNET: &str = "10.74.0.0/16";

/// Processes the test started inside instances: killed by PID on drop.
struct Procs(Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Start `args` inside namespace `ns` (`ip netns exec` execs it: the PID is
/// the program's).
fn spawn_in(ns: &str, args: &[&str]) -> Child {
    Command::new("ip")
        .args(["netns", "exec", ns])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("ip netns exec")
}

/// Wait (bounded) until `child` has exited; its signal, if it was killed.
fn ended_by(child: &mut Child, within: Duration) -> Option<i32> {
    let t0 = Instant::now();
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st.signal();
        }
        assert!(
            t0.elapsed() < within,
            "process {} still runs after {within:?}",
            child.id()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The network namespace inode of process `pid`.
fn netns_of(pid: u32) -> String {
    std::fs::read_link(format!("/proc/{pid}/ns/net"))
        .map(|p| p.display().to_string())
        .unwrap_or_default()
}

/// Launch `n` namespace instances: their ids (also kept for the lab's
/// cleanup) and INSTANCE lines.
fn launch(lab: &mut Lab, n: usize) -> (Vec<String>, Vec<Vec<String>>) {
    let out = lab.cli(&["run-instances", "ami-eca54085", "-n", &n.to_string()]);
    let lines = instance_lines(&out);
    assert_eq!(lines.len(), n, "{out}");
    let ids: Vec<String> = lines.iter().map(|l| l[1].clone()).collect();
    lab.instances.extend(ids.iter().cloned());
    (ids, lines)
}

#[test]
fn terminate_all_ends_a_lab_and_what_runs_inside_it() {
    if not_root() {
        return;
    }
    let mut lab = Lab::new("t", SUBNET);
    lab.start();
    let (ids, _) = launch(&mut lab, 3);
    // A sleep and a listener inside, as a user would start them.
    let mut procs = Procs(vec![
        spawn_in(&ids[0], &["sleep", "300"]),
        spawn_in(&ids[1], &["busybox", "nc", "-l", "-p", "8080"]),
    ]);
    // Wait until both run inside their instance's namespace.
    let t0 = Instant::now();
    let want: Vec<String> = ids[..2]
        .iter()
        .map(|id| {
            let o = sh(&["stat", "-L", "-c", "%i", &format!("/run/netns/{id}")]);
            o.1.trim().to_owned()
        })
        .collect();
    for (c, ino) in procs.0.iter().zip(&want) {
        while !netns_of(c.id()).contains(ino.as_str()) {
            assert!(t0.elapsed() < Duration::from_secs(5), "never entered");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    let out = lab.cli(&["terminate-instances", "--all"]);
    let mut got: Vec<&str> = out.lines().collect();
    got.sort();
    let mut want: Vec<String> = ids
        .iter()
        .map(|id| format!("INSTANCE\t{id}\trunning\tshutting-down"))
        .collect();
    want.sort();
    assert_eq!(got, want, "{out}");
    for id in &ids {
        assert!(!netns_exists(id), "namespace {id} left behind");
    }
    for c in &mut procs.0 {
        let sig = ended_by(c, Duration::from_secs(5));
        assert_eq!(sig, Some(15), "process {} ended by SIGTERM", c.id());
    }
    assert_eq!(lab.cli(&["describe-instances"]), "");
    // Nothing left: --all again is an empty answer, not an error.
    assert_eq!(lab.cli(&["terminate-instances", "--all"]), "");
    // ids and --all together are a usage error.
    let (_, _, code) = lab.cli_raw(&["terminate-instances", "--all", "i-00000000"]);
    assert_eq!(code, 2);
    lab.stop("TERM");
}

#[test]
fn instances_whose_namespace_or_interface_vanished_are_not_running() {
    if not_root() {
        return;
    }
    let mut lab = Lab::new("v", SUBNET);
    lab.start();
    let (ids, lines) = launch(&mut lab, 3);
    let state = |lab: &Lab, id: &str| -> Vec<String> {
        let out = lab.cli(&["describe-instances", id]);
        instance_lines(&out).remove(0)
    };
    for id in &ids {
        assert_eq!(state(&lab, id)[4], "running");
    }

    // A user deletes one namespace by hand...
    let (ok, out) = sh(&["ip", "netns", "del", &ids[0]]);
    assert!(ok, "{out}");
    // ...and another instance's interface.
    let (ok, out) = sh(&["ip", "-n", &ids[1], "link", "del", "eth0"]);
    assert!(ok, "{out}");

    let l = state(&lab, &ids[0]);
    assert_eq!(l[4], "stopped", "{l:?}");
    assert!(
        l[7].contains("network namespace") && l[7].contains("deleted"),
        "{l:?}"
    );
    // The switch notices the vanished TAP when its worker next touches it.
    let t0 = Instant::now();
    let l = loop {
        let l = state(&lab, &ids[1]);
        if l[4] != "running" || t0.elapsed() > Duration::from_secs(10) {
            break l;
        }
        // Traffic to it makes the worker try the port.
        let _ = lab.ping(&ids[2], &lines[1][3]);
    };
    assert_eq!(l[4], "stopped", "{l:?}");
    assert!(l[7].contains("disappeared"), "{l:?}");
    assert_eq!(state(&lab, &ids[2])[4], "running");

    let out = lab.cli(&["terminate-instances", &ids[0], &ids[1]]);
    assert_eq!(
        out,
        format!(
            "INSTANCE\t{}\tstopped\tshutting-down\nINSTANCE\t{}\tstopped\tshutting-down\n",
            ids[0], ids[1]
        )
    );
    assert!(!netns_exists(&ids[1]));
    lab.cli(&["terminate-instances", &ids[2]]);
    lab.stop("TERM");
}
