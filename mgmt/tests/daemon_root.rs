//! The real daemon with the real switch (needs root; skips itself otherwise):
//! `sgswitch up --uplink-netns NS`, namespace instances launched, reachable
//! according to their groups, kept across a daemon restart, removed on
//! terminate.
//!
//! Lab safety: the uplink lives in a namespace this test creates; instances are
//! namespaces the daemon creates; all addresses (10.77.0.0/16) exist only inside
//! those namespaces. Everything is removed by name/PID in Drop guards, even when
//! the test fails. Pings are single packets with a 1-2 s timeout.

mod common;

use common::{Lab, instance_lines, netns_exists, not_root, sh};

const SUBNET: &str = "10.77.0.0/16";
const OUTSIDE_ADDR: &str = "10.77.255.10";

#[test]
fn daemon_with_switch_launches_enforces_restarts_and_terminates() {
    if not_root() {
        return;
    }
    let mut lab = Lab::new("a", SUBNET);
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
    let arp = stats
        .lines()
        .find(|l| l.starts_with("EVENT\tarp_replies\t"))
        .unwrap_or("");
    assert!(
        arp.split('\t').nth(2).is_some_and(|n| n != "0"),
        "the switch answered ARP: {stats}"
    );

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

    // attach-instance: a veth pair stands in for a QEMU guest's TAP. The switch
    // side (vs0) lives in namespace S, the "guest" side (vg0) in namespace G with
    // the MAC and address we attach it with.
    let pid = std::process::id();
    let (ns_s, ns_g) = (format!("sgsw-s-{pid}"), format!("sgsw-g-{pid}"));
    for ns in [&ns_s, &ns_g] {
        let (ok, out) = sh(&["ip", "netns", "add", ns]);
        assert!(ok, "{out}");
        lab.extra_ns.push(ns.clone());
    }
    for cmd in [
        &[
            "ip", "-n", &ns_s, "link", "add", "vs0", "type", "veth", "peer", "name", "vg0",
            "netns", &ns_g,
        ][..],
        &["ip", "-n", &ns_s, "link", "set", "vs0", "up"],
        &[
            "ip",
            "-n",
            &ns_g,
            "link",
            "set",
            "vg0",
            "address",
            "02:77:00:00:00:50",
        ],
        &[
            "ip",
            "-n",
            &ns_g,
            "addr",
            "add",
            "10.77.0.50/16",
            "dev",
            "vg0",
        ],
        &["ip", "-n", &ns_g, "link", "set", "vg0", "up"],
    ] {
        let (ok, out) = sh(cmd);
        assert!(ok, "{cmd:?}: {out}");
    }
    let out = lab.cli(&[
        "attach-instance",
        "vs0",
        "--netns",
        &ns_s,
        "--ip",
        "10.77.0.50",
        "--mac",
        "02:77:00:00:00:50",
    ]);
    let attached = instance_lines(&out);
    assert_eq!(attached.len(), 1, "{out}");
    assert_eq!(attached[0][6], format!("port:vs0@{ns_s}"));
    let g_id = attached[0][1].clone();
    let (_, err, code) = lab.cli_raw(&["attach-instance", "nosuch0", "--netns", &ns_s]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.starts_with("InvalidParameterValue: interface 'nosuch0' does not exist"),
        "{err}"
    );
    assert!(
        lab.ping(&ns_g, &ip_a),
        "attached guest in default reaches a namespace instance"
    );
    assert!(lab.ping(&b, "10.77.0.50"), "and is reached by one");

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
    assert!(
        lab.ping(&ns_g, &ip_b),
        "attached interface re-attached after kill -9"
    );

    // Terminating an attached instance detaches it; the interface stays.
    lab.cli(&["terminate-instances", &g_id]);
    assert!(!lab.ping(&ns_g, &ip_a), "detached: no longer switched");
    assert!(
        sh(&["ip", "-n", &ns_s, "link", "show", "vs0"]).0,
        "someone else's interface is kept"
    );

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
