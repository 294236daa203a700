//! Crash safety: N acknowledged edits, `kill -9` of the daemon, restart on the
//! same state dir: all N edits are there (`describe-group` byte-identical) and
//! enforced (real connects), and the instances' namespaces still have network
//! (their persistent TAPs re-attached; the programs inside never restarted).
//! Needs root (skips without).

use std::net::Ipv4Addr;
use std::time::Duration;

use e2e::ec2out::parse_describe_group;
use e2e::{Lab, LabConfig, OUTSIDE, Reach};

/// Acknowledged edits before the crash (one CLI call each).
const N: u16 = 20;
const BASE: u16 = 7000;
/// Listened on, never authorized.
const DENIED: u16 = 7999;

fn targets(ip: Ipv4Addr) -> Vec<(Ipv4Addr, u16)> {
    (BASE..BASE + N).chain([DENIED]).map(|p| (ip, p)).collect()
}

fn expected() -> Vec<Reach> {
    (0..N)
        .map(|_| Reach::Open)
        .chain([Reach::Timeout])
        .collect()
}

#[test]
fn acknowledged_edits_survive_kill_9() {
    let Some(lab) = Lab::start(LabConfig::new("crash")) else {
        return;
    };
    lab.cli_ok(&["add-group", "crash", "-d", "survives kill -9"]);
    let a = lab.run_instances(1, &["crash"]).remove(0);
    let b = lab.run_instances(1, &["crash"]).remove(0);
    let ports: Vec<u16> = (BASE..BASE + N).chain([DENIED]).collect();
    lab.listen(&a.netns, &ports);
    lab.listen(&lab.uplink_ns, &[9000]);
    let cidr = format!("{OUTSIDE}/32");
    for i in 0..N {
        let p = (BASE + i).to_string();
        lab.cli_ok(&["authorize", "crash", "-P", "tcp", "-p", &p, "-s", &cidr]);
    }
    let groups = lab.cli_ok(&["describe-group"]);
    let instances = lab.cli_ok(&["describe-instances"]);
    let parsed = parse_describe_group(&groups).unwrap();
    let crash = parsed
        .iter()
        .find(|(g, _)| g.name == "crash")
        .expect("group crash");
    assert_eq!(crash.1.len(), N as usize, "{groups}");
    let r = lab.probe(
        &lab.uplink_ns,
        None,
        &targets(a.ip),
        Duration::from_millis(1000),
    );
    assert_eq!(r, expected(), "before the crash");

    lab.crash_daemon();
    // While the switch is down nothing passes.
    assert_eq!(lab.connect(&lab.uplink_ns, a.ip, BASE), Reach::Timeout);

    lab.start_daemon();
    assert_eq!(
        lab.cli_ok(&["describe-group"]),
        groups,
        "groups after the restart"
    );
    assert_eq!(
        lab.cli_ok(&["describe-instances"]),
        instances,
        "instances after the restart"
    );
    assert!(e2e::lab::netns_present(&a.netns) && e2e::lab::netns_present(&b.netns));

    // Enforced again, through the re-attached TAPs (the listener in `a` is the
    // same process as before the crash).
    let r = lab.probe(
        &lab.uplink_ns,
        None,
        &targets(a.ip),
        Duration::from_millis(1000),
    );
    assert_eq!(r, expected(), "after the restart");
    // Group membership rules, instance to instance: `b` is not in `default`
    // with `a`, so only the CIDR rules (which do not match b's address) apply.
    assert_eq!(lab.connect(&b.netns, a.ip, BASE), Reach::Timeout);
    // Egress from an instance still works.
    assert_eq!(lab.connect(&a.netns, OUTSIDE, 9000), Reach::Open);

    // And the restarted daemon takes new edits.
    let p = DENIED.to_string();
    lab.cli_ok(&["authorize", "crash", "-P", "tcp", "-p", &p, "-s", &cidr]);
    assert_eq!(lab.connect(&lab.uplink_ns, a.ip, DENIED), Reach::Open);
    lab.cli_ok(&["authorize", "crash", "-o", "crash"]);
    assert_eq!(lab.connect(&b.netns, a.ip, BASE), Reach::Open);

    // Terminating removes the namespace.
    let out = lab.terminate(&[&b.id]);
    assert_eq!(
        out.trim_end(),
        format!("INSTANCE\t{}\trunning\tshutting-down", b.id)
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while e2e::lab::netns_present(&b.netns) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        !e2e::lab::netns_present(&b.netns),
        "namespace of a terminated instance left"
    );
}
