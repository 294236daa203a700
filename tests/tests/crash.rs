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

/// Issue 13: `kill -9` while launches are in flight (run-instances back to
/// back on one connection, authorizes on another). After the restart every
/// acknowledged edit and every acknowledged instance is there, and
/// describe-instances lists no instance that was not acknowledged or that
/// runs nowhere. An unacknowledged launch is lost; its namespace, if its
/// launcher made one before the kill, is left behind (the daemon keeps no
/// record of launches in flight) and removed here.
#[test]
fn kill_9_with_launches_in_flight_loses_nothing_acknowledged() {
    let Some(lab) = Lab::start(LabConfig::new("crash-fly")) else {
        return;
    };
    lab.cli_ok(&["add-group", "fly", "-d", "launches in flight"]);
    let cidr = format!("{OUTSIDE}/32");
    let (launched, authorized) = std::thread::scope(|s| {
        let launcher = s.spawn(|| {
            let mut acked = Vec::new();
            // Until the daemon dies (bounded: 200 launches).
            for _ in 0..200 {
                let o = lab.cli(&["run-instances", e2e::lab::AMI, "-n", "3", "-g", "fly"]);
                if !o.success() {
                    break;
                }
                acked.extend(lab.record_instances(&o.stdout));
            }
            acked
        });
        let mut authorized = Vec::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(3);
        let mut p = BASE;
        // At most 90: a group holds 100 rules.
        while std::time::Instant::now() < deadline && p < BASE + 90 {
            let port = p.to_string();
            let o = lab.cli(&["authorize", "fly", "-P", "tcp", "-p", &port, "-s", &cidr]);
            assert!(o.success(), "authorize during launches: {}", o.stderr);
            authorized.push(p);
            p += 1;
            std::thread::sleep(Duration::from_millis(20));
        }
        lab.crash_daemon();
        (launcher.join().unwrap(), authorized)
    });
    assert!(
        !launched.is_empty(),
        "no launch was acknowledged before the kill"
    );
    assert!(
        authorized.len() > 5,
        "edits were held behind the launches: {authorized:?}"
    );
    // Instances the daemon began to make (its launcher logs each first).
    let log = std::fs::read_to_string(lab.dir.join("daemon.log")).unwrap_or_default();
    let made: Vec<String> = log
        .lines()
        .filter(|l| l.contains("making instance"))
        .filter_map(|l| {
            let at = l.find("i-")?;
            let id = l.get(at..at + 10)?;
            id[2..]
                .bytes()
                .all(|b| b.is_ascii_hexdigit())
                .then(|| id.to_owned())
        })
        .collect();

    lab.start_daemon();
    let now = e2e::lab::parse_instances(&lab.cli_ok(&["describe-instances"]));
    // Instances begun but not in describe-instances: made by the launch in
    // flight at the kill. Left behind: the lab removes them with the others
    // (registered before any assertion, so a failure cleans up too).
    let orphans: Vec<&String> = made
        .iter()
        .filter(|id| !now.iter().any(|i| &i.id == *id))
        .collect();
    for id in &orphans {
        lab.record_instances(&format!(
            "INSTANCE\t{id}\t-\t0.0.0.0\tpending\t0\tnetns:{id}"
        ));
    }
    let groups = parse_describe_group(&lab.cli_ok(&["describe-group"])).unwrap();
    let fly = groups
        .iter()
        .find(|(g, _)| g.name == "fly")
        .expect("group fly");
    assert_eq!(
        fly.1.len(),
        authorized.len(),
        "every acknowledged authorize is there"
    );
    for a in &launched {
        let i = now.iter().find(|i| i.id == a.id);
        assert!(i.is_some(), "acknowledged instance {} lost", a.id);
    }
    for i in &now {
        assert_eq!(i.state, "running", "instance {} after the restart", i.id);
        assert!(
            e2e::lab::netns_present(&i.netns),
            "{} has no namespace",
            i.id
        );
    }
    // At most one launch (3 instances) was in flight and unacknowledged.
    assert!(orphans.len() <= 3, "more than one launch lost: {orphans:?}");
    eprintln!(
        "{} instances and {} authorizes acknowledged; {} instance(s) begun by the \
         launch in flight at the kill (lost; namespace removed by the lab)",
        launched.len(),
        authorized.len(),
        orphans.len()
    );
}
