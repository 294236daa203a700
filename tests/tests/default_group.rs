//! The seed's "Default Group" walkthrough (seed/ec2-security-groups.txt), end to
//! end: an instance launched with no group joins `default`; a port scan from the
//! outside sees every port filtered; authorizing tcp/22 from one outside address
//! opens exactly that port for exactly that address; another `default` member
//! reaches every port; revoking closes 22 again. Needs root (skips without).

use std::net::Ipv4Addr;
use std::time::Duration;

use e2e::ec2out::{PermSource, Permission, parse_describe_group, parse_edit_output};
use e2e::{Lab, LabConfig, OUTSIDE, OUTSIDE2, PortState, Reach};

/// Ports the instance listens on: 22 and a few others inside the scanned range,
/// plus one outside it.
const LISTEN: [u16; 5] = [22, 25, 80, 99, 8080];

#[test]
fn default_group_walkthrough() {
    let Some(lab) = Lab::start(LabConfig::new("default-group")) else {
        return;
    };

    // 1. ec2-run-instances with no group: the instance is in `default`.
    let a = lab.run_instances(1, &[]).remove(0);
    assert_eq!(a.state, "running");
    assert_eq!(
        a.netns, a.id,
        "a namespace instance lives in a namespace named after it"
    );
    let described = lab.cli_ok(&["describe-instances", &a.id]);
    assert!(
        described
            .lines()
            .any(|l| l.starts_with("RESERVATION\t") && l.ends_with("\tdefault")),
        "{described}"
    );
    lab.listen(&a.netns, &LISTEN);

    // 2. ec2-describe-group default: one rule, all traffic from `default` members.
    let out = lab.cli_ok(&["describe-group", "default"]);
    let groups = parse_describe_group(&out).unwrap();
    assert_eq!(groups.len(), 1, "{out}");
    let (g, perms) = &groups[0];
    assert_eq!(g.name, "default");
    assert_eq!(g.description, "default group");
    assert!(
        g.owner.len() == 12 && g.owner.bytes().all(|b| b.is_ascii_digit()),
        "{out}"
    );
    let owner = g.owner.clone();
    assert_eq!(
        perms,
        &vec![Permission::group(
            "default", "all", "", "", &owner, "default"
        )],
        "{out}"
    );
    let before = out;

    // 3. Albert port-scans his instance: all 100 ports filtered.
    let scan = lab.nmap_outside(a.ip, "1-100");
    assert_eq!(scan.total(), 100, "{scan:?}");
    assert_eq!(scan.count(PortState::Filtered), 100, "{scan:?}");

    // 4. ec2-authorize default -P tcp -p 22 -s OUTSIDE/32.
    let cidr = format!("{OUTSIDE}/32");
    let out = lab.cli_ok(&["authorize", "default", "-P", "tcp", "-p", "22", "-s", &cidr]);
    assert_eq!(
        parse_edit_output(&out, "default").unwrap(),
        vec![Permission::cidr("default", "tcp", "22", "22", &cidr)],
        "{out}"
    );
    let out = lab.cli_ok(&["describe-group", "default"]);
    let perms = &parse_describe_group(&out).unwrap()[0].1;
    assert_eq!(perms.len(), 2, "{out}");
    assert!(
        perms.contains(&Permission::cidr("default", "tcp", "22", "22", &cidr)),
        "{out}"
    );

    // 5. The scan again: 22 open, the 99 others filtered (25, 80 and 99 too,
    //    although something listens there).
    let scan = lab.nmap_outside(a.ip, "1-100");
    assert_eq!(scan.total(), 100, "{scan:?}");
    assert_eq!(scan.state(22), Some(PortState::Open), "{scan:?}");
    assert_eq!(scan.listed(PortState::Open), vec![22], "{scan:?}");
    assert_eq!(scan.count(PortState::Filtered), 99, "{scan:?}");
    assert_eq!(lab.connect(&lab.uplink_ns, a.ip, 22), Reach::Open);
    assert_eq!(lab.connect(&lab.uplink_ns, a.ip, 80), Reach::Timeout);

    // ... but only from Albert's own address: from another outside address 22
    // stays filtered (nmap from that source, and a real connect).
    let scan = lab.nmap(
        &lab.uplink_ns,
        Some((&lab.uplink_if, OUTSIDE2)),
        a.ip,
        "1-100",
    );
    assert_eq!(scan.total(), 100, "{scan:?}");
    assert_eq!(scan.count(PortState::Filtered), 100, "{scan:?}");
    let r = lab.probe(
        &lab.uplink_ns,
        Some(OUTSIDE2),
        &[(a.ip, 22)],
        Duration::from_millis(800),
    );
    assert_eq!(r, vec![Reach::Timeout]);

    // 6. A second `default` instance reaches the first on any port.
    let b = lab.run_instances(1, &["default"]).remove(0);
    assert_ne!(a.ip, b.ip);
    let targets: Vec<(Ipv4Addr, u16)> = LISTEN.iter().map(|&p| (a.ip, p)).collect();
    let r = lab.probe(&b.netns, None, &targets, Duration::from_millis(2000));
    assert!(r.iter().all(|x| *x == Reach::Open), "{targets:?} -> {r:?}");
    // A port without listener answers with a reset: reachable, closed.
    assert_eq!(lab.connect(&b.netns, a.ip, 81), Reach::Refused);
    let scan = lab.nmap(&b.netns, None, a.ip, "1-100");
    assert_eq!(
        scan.listed(PortState::Open),
        vec![22, 25, 80, 99],
        "{scan:?}"
    );
    assert_eq!(scan.count(PortState::Closed), 96, "{scan:?}");
    assert_eq!(scan.count(PortState::Filtered), 0, "{scan:?}");

    // 7. ec2-revoke: 22 is filtered again, the group is as it was.
    let out = lab.cli_ok(&["revoke", "default", "-P", "tcp", "-p", "22", "-s", &cidr]);
    assert_eq!(
        parse_edit_output(&out, "default").unwrap(),
        vec![Permission::cidr("default", "tcp", "22", "22", &cidr)],
        "{out}"
    );
    let scan = lab.nmap_outside(a.ip, "1-100");
    assert_eq!(scan.count(PortState::Filtered), 100, "{scan:?}");
    assert_eq!(lab.cli_ok(&["describe-group", "default"]), before);

    // ICMP rules carry type and code in the port fields: echo requests from
    // Albert's address only.
    assert!(
        !lab.ping(&lab.uplink_ns, OUTSIDE, a.ip),
        "ping passed without a rule"
    );
    let out = lab.cli_ok(&[
        "authorize",
        "default",
        "-P",
        "icmp",
        "-t",
        "8:-1",
        "-s",
        &cidr,
    ]);
    assert_eq!(
        parse_edit_output(&out, "default").unwrap(),
        vec![Permission::cidr("default", "icmp", "8", "-1", &cidr)],
        "{out}"
    );
    assert!(
        lab.ping(&lab.uplink_ns, OUTSIDE, a.ip),
        "ping from {OUTSIDE}"
    );
    assert!(
        !lab.ping(&lab.uplink_ns, OUTSIDE2, a.ip),
        "ping from {OUTSIDE2}"
    );
    // Instances may always send: a ping from the instance out gets its reply.
    assert!(
        lab.ping(&a.netns, a.ip, OUTSIDE2),
        "ping out of the instance"
    );

    // UDP, statefully: a datagram from Albert's address to an authorized port
    // is answered; other ports and other addresses get nothing back (not even
    // the ICMP port unreachable); the instance's own UDP to the outside gets its
    // answer back.
    lab.listen_tcp_udp(&a.netns, &[53]);
    lab.listen_tcp_udp(&lab.uplink_ns, &[5353]);
    let t = Duration::from_millis(800);
    assert_eq!(
        lab.probe_udp(&lab.uplink_ns, None, &[(a.ip, 53), (a.ip, 54)], t),
        [Reach::Timeout, Reach::Timeout]
    );
    lab.cli_ok(&["authorize", "default", "-P", "udp", "-p", "53", "-s", &cidr]);
    assert_eq!(
        lab.probe_udp(&lab.uplink_ns, None, &[(a.ip, 53), (a.ip, 54)], t),
        [Reach::Open, Reach::Timeout]
    );
    assert_eq!(
        lab.probe_udp(&lab.uplink_ns, Some(OUTSIDE2), &[(a.ip, 53)], t),
        [Reach::Timeout]
    );
    assert_eq!(
        lab.probe_udp(&a.netns, None, &[(OUTSIDE, 5353), (OUTSIDE, 5354)], t),
        [Reach::Open, Reach::Refused]
    );

    // A CIDR with host bits set is accepted and printed normalised.
    let out = lab.cli_ok(&[
        "authorize",
        "default",
        "-P",
        "tcp",
        "-p",
        "22",
        "-s",
        "172.31.255.10/24",
    ]);
    let perms = parse_edit_output(&out, "default").unwrap();
    assert_eq!(
        perms[0].source,
        PermSource::Cidr("172.31.255.0/24".into()),
        "{out}"
    );
    let scan = lab.nmap(
        &lab.uplink_ns,
        Some((&lab.uplink_if, OUTSIDE2)),
        a.ip,
        "20-25",
    );
    assert_eq!(scan.state(22), Some(PortState::Open), "{scan:?}");
    assert_eq!(scan.state(25), Some(PortState::Filtered), "{scan:?}");
}
