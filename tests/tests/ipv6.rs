//! IPv6 end to end (issue 15), one daemon for every check: instances get
//! their IPv6 address (the `--subnet6` /64 + EUI-64 of their MAC, set
//! directly in namespace instances) and describe-instances shows it; the
//! switch answers the real kernel's neighbor solicitations for other
//! instances and for its router address itself (proxy ND), answers router
//! solicitations with router advertisements, and absorbs DAD/MLD without a
//! single `unsupported_ethertype` drop; a guest's forged NA/NS, rogue RA and
//! redirect, and a data frame claiming another instance's IPv6 address are
//! dropped and counted by reason (`sgswitch stats`). nmap -6 between
//! instances and from the uplink side: filtered without an IPv6 rule (an
//! IPv4-only rule does not open IPv6), open where an IPv6 rule allows; whole
//! connections both ways, to the outside too. Two more labs: iperf3 -6
//! between instances with the guests' offloads on and off (data moves, no
//! drop), and ICMPv6 Packet Too Big from the outside: quoting an allowed flow
//! it lowers the instance's path MTU, quoting no flow it is dropped as
//! `unrelated_icmp_error`. Needs root (skips without; fails under `CI=true`).

use std::net::Ipv6Addr;
use std::time::{Duration, Instant};

use e2e::attack::{self, drops};
use e2e::lab::{Bg, nc_listen};
use e2e::{Lab, LabConfig};
use filter::Mac;
use filter::model::{eui64_address, link_local_address};
use ipnet::Ipv6Net;
use switch::arp::GATEWAY_MAC;
use switch::nd::{self, ty};

const PREFIX: &str = "fd00:5e:c6:1::/64";

/// Gives the uplink's namespace (the outside world on the lab's /64) its
/// address there, and returns it.
fn outside6(lab: &Lab) -> Ipv6Addr {
    let outside: Ipv6Addr = "fd00:5e:c6:1::ff:10".parse().unwrap();
    let cidr = format!("{outside}/64");
    let o = lab.exec(
        &lab.uplink_ns,
        "ip",
        &["-6", "addr", "add", &cidr, "dev", &lab.uplink_if, "nodad"],
        Duration::from_secs(5),
    );
    assert!(o.success(), "{o:?}");
    outside
}

/// `nmap -6` from `ns` to `target`: the state of each port of `ports`.
fn nmap6(lab: &Lab, ns: &str, target: Ipv6Addr, ports: &str) -> Vec<(u16, String)> {
    let t = target.to_string();
    let o = lab.exec(
        ns,
        "nmap",
        &[
            "-6",
            "-Pn",
            "-n",
            "-T4",
            "--max-retries",
            "1",
            "--min-rate",
            "1000",
            "-oG",
            "-",
            "-p",
            ports,
            &t,
        ],
        Duration::from_secs(60),
    );
    assert!(o.success(), "nmap -6: {o:?}");
    let line = o
        .stdout
        .lines()
        .find(|l| l.contains("Ports: "))
        .unwrap_or_else(|| panic!("no ports in nmap output:\n{}", o.stdout));
    let ports = &line[line.find("Ports: ").unwrap() + 7..];
    ports
        .split(", ")
        .map(|p| {
            let f: Vec<&str> = p.split('/').collect();
            (f[0].trim().parse().unwrap(), f[1].to_owned())
        })
        .collect()
}

fn events(lab: &Lab) -> std::collections::BTreeMap<String, u64> {
    let s = attack::stats_json(lab);
    s.get("events")
        .and_then(|v| v.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|e| {
                    Some((
                        e.get("name")?.as_str()?.to_owned(),
                        e.get("count")?.as_u64()?,
                    ))
                })
                .collect()
        })
        .unwrap_or_default()
}

fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("timed out after {timeout:?} waiting for {what}");
}

fn icmp(src_mac: Mac, src: Ipv6Addr, dst: Ipv6Addr, msg: &[u8]) -> Vec<u8> {
    let mut b = vec![0u8; 54 + msg.len()];
    let dst_mac = if dst.is_multicast() {
        nd::multicast_mac(dst)
    } else {
        GATEWAY_MAC
    };
    nd::write_icmp6(&mut b, dst_mac, src_mac, src, dst, msg);
    b
}

#[test]
fn ipv6_housekeeping_and_source_checks() {
    let Some(lab) = Lab::start(LabConfig::new("ipv6").arg("--subnet6").arg(PREFIX)) else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "ipv6 cannot run (not root) and CI=true"
        );
        return;
    };
    let prefix: Ipv6Net = PREFIX.parse().unwrap();
    let a = lab.run_instances(1, &["default"]).remove(0);
    let b = lab.run_instances(1, &["default"]).remove(0);
    let (mac_a, mac_b) = (
        attack::mac_of(&lab, &a.netns),
        attack::mac_of(&lab, &b.netns),
    );
    let (a6, b6) = (eui64_address(prefix, mac_a), eui64_address(prefix, mac_b));

    // describe-instances shows each address, and the namespace has it.
    let out = lab.cli_ok(&["describe-instances"]);
    for (i, addr) in [(&a, a6), (&b, b6)] {
        let want = format!("IPV6ADDRESS\t{}\t{addr}", i.id);
        assert!(out.lines().any(|l| l == want), "{want} in:\n{out}");
        let o = lab.exec(
            &i.netns,
            "ip",
            &["-6", "addr", "show", "dev", "eth0"],
            Duration::from_secs(5),
        );
        assert!(o.stdout.contains(&format!("{addr}/64")), "{o:?}");
    }
    let json = lab.cli_ok(&["--json", "describe-instances", &a.id]);
    assert!(
        json.contains(&format!("\"ipv6_address\": \"{a6}\""))
            || json.contains(&format!("\"ipv6_address\":\"{a6}\"")),
        "{json}"
    );

    // The guests' own housekeeping (link-local DAD, MLD reports, router
    // solicitations) is handled: RAs are sent, nothing is dropped as an
    // unknown ethertype.
    wait_until("a router advertisement", Duration::from_secs(15), || {
        events(&lab).get("router_adverts").copied().unwrap_or(0) >= 1
    });
    wait_until("absorbed housekeeping", Duration::from_secs(10), || {
        events(&lab).get("nd_absorbed").copied().unwrap_or(0) >= 1
    });
    assert_eq!(
        drops(&lab).get("unsupported_ethertype"),
        0,
        "housekeeping is not a drop"
    );

    // Neighbor discovery by the real kernel: the switch answers for b and
    // for the router (a's default route is via the router's link-local).
    let d0 = drops(&lab);
    let n0 = events(&lab).get("nd_replies").copied().unwrap_or(0);
    let b6s = b6.to_string();
    let _ = lab.exec(
        &a.netns,
        "busybox",
        &["ping6", "-c", "1", "-W", "1", &b6s],
        Duration::from_secs(5),
    );
    let _ = lab.exec(
        &a.netns,
        "busybox",
        &["ping6", "-c", "1", "-W", "1", "fd00:5e:c6:2::1"],
        Duration::from_secs(5),
    );
    let neigh = lab.exec(
        &a.netns,
        "ip",
        &["-6", "neigh", "show", "dev", "eth0"],
        Duration::from_secs(5),
    );
    let has = |ip: Ipv6Addr, mac: Mac| {
        neigh.stdout.lines().any(|l| {
            l.starts_with(&format!("{ip} ")) && l.contains(&attack::fmt_mac(mac).to_lowercase())
        })
    };
    assert!(has(b6, mac_b), "b resolved to its MAC:\n{}", neigh.stdout);
    assert!(
        has(nd::router_ll(), GATEWAY_MAC),
        "the router resolved to the switch:\n{}",
        neigh.stdout
    );
    assert!(events(&lab).get("nd_replies").copied().unwrap_or(0) >= n0 + 2);
    // No neighbor solicitation was flooded to b (nor counted as a drop).
    let d1 = drops(&lab);
    for r in [
        "spoofed_nd",
        "rogue_router_advert",
        "spoofed_ip",
        "spoofed_mac",
    ] {
        assert_eq!(d1.delta(&d0, r), 0, "{r}");
    }

    // nmap -6 between instances: nothing open without an IPv6 rule (an
    // IPv4-only rule does not count), open where an IPv6 rule allows, and the
    // replies of allowed flows come back (nmap sees SYN-ACKs: `open`).
    let _srv = [nc_listen(&b.netns, 22), nc_listen(&b.netns, 80)];
    lab.cli_ok(&["add-group", "web6", "-d", "IPv6 web"]);
    let c = lab.run_instances(1, &["web6"]).remove(0);
    let c6 = eui64_address(prefix, attack::mac_of(&lab, &c.netns));
    let _srv_c = [nc_listen(&c.netns, 22), nc_listen(&c.netns, 80)];
    std::thread::sleep(Duration::from_millis(300));
    let scan = nmap6(&lab, &a.netns, c6, "22,80");
    assert_eq!(
        scan,
        vec![(22, "filtered".into()), (80, "filtered".into())],
        "no rule: filtered"
    );
    lab.cli_ok(&[
        "authorize",
        "web6",
        "-P",
        "tcp",
        "-p",
        "80",
        "-s",
        "0.0.0.0/0",
    ]);
    let scan = nmap6(&lab, &a.netns, c6, "22,80");
    assert_eq!(
        scan,
        vec![(22, "filtered".into()), (80, "filtered".into())],
        "an IPv4-only rule does not open IPv6"
    );
    lab.cli_ok(&["authorize", "web6", "-P", "tcp", "-p", "80", "-s", "::/0"]);
    let scan = nmap6(&lab, &a.netns, c6, "22,80");
    assert_eq!(
        scan,
        vec![(22, "filtered".into()), (80, "open".into())],
        "the IPv6 rule opens port 80 only"
    );
    // default allows its own members (group rule): b is open from a.
    let scan = nmap6(&lab, &a.netns, b6, "22,80");
    assert_eq!(scan, vec![(22, "open".into()), (80, "open".into())]);
    // A whole connection with data, both ways, over IPv6.
    let echo = lab.exec(
        &a.netns,
        "sh",
        &["-c", &format!("echo hello-v6 | busybox nc -w 2 {c6} 80")],
        Duration::from_secs(10),
    );
    assert_eq!(echo.stdout.trim(), "hello-v6", "{echo:?}");
    let st = lab.cli_ok(&["stats", &c.id]);
    assert!(
        st.lines().any(|l| l.starts_with("DENIED\tno_rule\t")),
        "refused IPv6 counted at c:\n{st}"
    );

    // From the uplink side (the outside world on the /64, as the IPv4
    // outside is on the subnet): nmap -6 sees what the rules allow, and an
    // instance reaches the outside (its neighbor solicitation asked on the
    // uplink, the answer brought back).
    let outside = outside6(&lab);
    let _out_srv = nc_listen(&lab.uplink_ns, 9000);
    std::thread::sleep(Duration::from_millis(300));
    let scan = nmap6(&lab, &lab.uplink_ns, c6, "22,80");
    assert_eq!(
        scan,
        vec![(22, "filtered".into()), (80, "open".into())],
        "from the uplink"
    );
    let echo = lab.exec(
        &a.netns,
        "sh",
        &[
            "-c",
            &format!("echo hello-out | busybox nc -w 2 {outside} 9000"),
        ],
        Duration::from_secs(10),
    );
    assert_eq!(echo.stdout.trim(), "hello-out", "{echo:?}");

    // A hostile guest: forged NA for b's address and for the router, an NS
    // from b's address, DAD for b's address, a rogue RA and a redirect, and
    // an echo request from b's address.
    let ll_a = link_local_address(mac_a);
    let all = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
    let na = |src, t| {
        icmp(
            mac_a,
            src,
            all,
            &nd::nd_message(ty::NA, 0x20, t, Some((2, mac_a))),
        )
    };
    let ns = |src, t| {
        icmp(
            mac_a,
            src,
            nd::solicited_node(t),
            &nd::nd_message(ty::NS, 0, t, None),
        )
    };
    let ra = [ty::RA, 0, 0, 0, 64, 0, 0x07, 0x08, 0, 0, 0, 0, 0, 0, 0, 0];
    let frames_nd = vec![
        na(a6, b6),
        na(ll_a, nd::router_ll()),
        ns(b6, nd::router_ll()),
        ns(Ipv6Addr::UNSPECIFIED, b6),
    ];
    let frames_ra = vec![
        icmp(mac_a, ll_a, all, &ra),
        icmp(mac_a, ll_a, a6, &nd::nd_message(ty::REDIRECT, 0, b6, None)),
    ];
    let echo = [128u8, 0, 0, 0, 0x12, 0x34, 0, 1];
    let frames_ip = vec![icmp(mac_a, b6, a6, &echo)];
    let before = drops(&lab);
    attack::send(&lab, &a.netns, &frames_nd, 3);
    attack::send(&lab, &a.netns, &frames_ra, 3);
    attack::send(&lab, &a.netns, &frames_ip, 3);
    wait_until("the drops counted", Duration::from_secs(5), || {
        let d = drops(&lab);
        d.delta(&before, "spoofed_nd") >= 12
            && d.delta(&before, "rogue_router_advert") >= 6
            && d.delta(&before, "spoofed_ip") >= 3
    });
    // Per instance too: `sgswitch stats ID` names the reasons.
    let st = lab.cli_ok(&["stats", &a.id]);
    for r in ["spoofed_nd", "rogue_router_advert", "spoofed_ip"] {
        assert!(
            st.lines().any(|l| l.starts_with(&format!("DROP\t{r}\t"))),
            "{r} in:\n{st}"
        );
    }
    // b's view of the router and of a is untouched.
    let neigh_b = lab.exec(
        &b.netns,
        "ip",
        &["-6", "neigh", "show", "dev", "eth0"],
        Duration::from_secs(5),
    );
    let mac_a_text = attack::fmt_mac(mac_a).to_lowercase();
    for l in neigh_b.stdout.lines() {
        if l.to_lowercase().contains(&mac_a_text) {
            let ip: Ipv6Addr = l.split_whitespace().next().unwrap().parse().unwrap();
            assert!(
                ip == a6 || ip == ll_a,
                "b maps {ip} to a's MAC after a's forgeries:\n{}",
                neigh_b.stdout
            );
        }
    }
}

/// Skips (`None`) when not root; fails under `CI=true`.
fn lab6(name: &str) -> Option<Lab> {
    let lab = Lab::start(LabConfig::new(name).arg("--subnet6").arg(PREFIX));
    if lab.is_none() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{name} cannot run (not root) and CI=true"
        );
    }
    lab
}

/// Every drop reason that grew since `before`, with how much.
fn grown(lab: &Lab, before: &attack::Drops) -> Vec<(String, u64)> {
    drops(lab)
        .0
        .into_iter()
        .filter_map(|(r, n)| {
            let d = n.saturating_sub(before.0.get(&r).copied().unwrap_or(0));
            (d > 0).then_some((r, d))
        })
        .collect()
}

/// `iperf3 -6 -c target -t 2 -J` from `cli` against a one-shot server in
/// `srv`: the bytes the receiver got.
fn iperf3_v6(lab: &Lab, srv: &str, cli: &str, target: Ipv6Addr) -> u64 {
    let server = std::process::Command::new("ip")
        .args(["netns", "exec", srv, "timeout", "20", "iperf3", "-s", "-1"])
        .args(["-p", "5201"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn iperf3 -s");
    let _server = Bg(server);
    let t = target.to_string();
    let mut last = None;
    for _ in 0..15 {
        std::thread::sleep(Duration::from_millis(200));
        let o = lab.exec(
            cli,
            "iperf3",
            &["-6", "-c", &t, "-p", "5201", "-t", "2", "-J"],
            Duration::from_secs(15),
        );
        if o.success() {
            last = Some(o);
            break;
        }
        last = Some(o);
    }
    let o = last.unwrap();
    assert!(o.success(), "iperf3 -6 client: {o:?}");
    let v: serde_json::Value =
        serde_json::from_str(&o.stdout).unwrap_or_else(|e| panic!("iperf3 JSON: {e}\n{o:?}"));
    v.pointer("/end/sum_received/bytes")
        .and_then(serde_json::Value::as_u64)
        .unwrap_or_else(|| panic!("no received bytes in {}", o.stdout))
}

/// iperf3 over IPv6 between two instances through an IPv6 rule, first with
/// the guests' offloads on (TSO/GSO super-frames and partial checksums reach
/// the switch through the `vnet_hdr` TAP), then with them off (`ethtool -K`
/// in both namespaces): data moves both times and nothing is dropped.
#[test]
fn ipv6_iperf3_with_and_without_offloads() {
    let Some(lab) = lab6("ipv6perf") else { return };
    let prefix: Ipv6Net = PREFIX.parse().unwrap();
    lab.cli_ok(&["add-group", "perf6", "-d", "iperf3 over IPv6"]);
    lab.cli_ok(&[
        "authorize",
        "perf6",
        "-P",
        "tcp",
        "-p",
        "5201",
        "-s",
        "::/0",
    ]);
    let a = lab.run_instances(1, &["default"]).remove(0);
    let b = lab.run_instances(1, &["perf6"]).remove(0);
    let b6 = eui64_address(prefix, attack::mac_of(&lab, &b.netns));
    for offloads in [true, false] {
        if offloads {
            // The guests start with TSO and checksum offload on.
            for ns in [&a.netns, &b.netns] {
                let k = lab.exec(ns, "ethtool", &["-k", "eth0"], Duration::from_secs(5));
                assert!(
                    k.stdout.contains("tcp-segmentation-offload: on")
                        && k.stdout.contains("tx-checksumming: on"),
                    "offloads on in {ns} (scripts/test.sh installs ethtool): {k:?}"
                );
            }
        } else {
            for ns in [&a.netns, &b.netns] {
                let o = lab.exec(
                    ns,
                    "ethtool",
                    &[
                        "-K", "eth0", "tx", "off", "sg", "off", "tso", "off", "gso", "off",
                    ],
                    Duration::from_secs(5),
                );
                assert!(
                    o.success(),
                    "ethtool -K in {ns} (scripts/test.sh installs ethtool): {o:?}"
                );
                let k = lab.exec(ns, "ethtool", &["-k", "eth0"], Duration::from_secs(5));
                assert!(
                    k.stdout.contains("tcp-segmentation-offload: off")
                        && k.stdout.contains("tx-checksumming: off"),
                    "{k:?}"
                );
            }
        }
        let d0 = drops(&lab);
        let e0 = events(&lab);
        let bytes = iperf3_v6(&lab, &b.netns, &a.netns, b6);
        let e1 = events(&lab);
        let ev = |k: &str| e1.get(k).copied().unwrap_or(0) - e0.get(k).copied().unwrap_or(0);
        println!(
            "iperf3 -6 a -> b (guest offloads {}): {:.1} MB in 2 s, tso_segmented +{}, csum_completed +{}",
            if offloads { "on" } else { "off" },
            bytes as f64 / 1e6,
            ev("tso_segmented"),
            ev("csum_completed"),
        );
        assert!(
            bytes > 5_000_000,
            "only {bytes} bytes over IPv6 (offloads {offloads})"
        );
        assert_eq!(
            grown(&lab, &d0),
            vec![],
            "drops during iperf3 -6 (offloads {offloads})"
        );
    }
}

/// The outside host's side of the Packet Too Big check (uplink namespace):
/// receive the instance's datagram on udp/9001, then send two ICMPv6 Packet
/// Too Big (MTU 1280) to the instance from a raw socket: one quoting a flow
/// that does not exist (another port; payload tagged `argv[2]`) and one
/// quoting the received datagram's flow (payload tagged `argv[1]`).
const PTB_SENDER: &str = r#"
import socket, struct, sys
ok, bad = bytes.fromhex(sys.argv[1]), bytes.fromhex(sys.argv[2])
u = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
u.bind(("::", 9001))
u.settimeout(10)
print("ready", flush=True)
data, (src, sport, _, _) = u.recvfrom(2000)
dst = sys.argv[3]
def quoted(sport, dport, payload):
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    ip = struct.pack("!IHBB", 0x60000000, len(udp), 17, 64)
    return ip + socket.inet_pton(socket.AF_INET6, src) + socket.inet_pton(socket.AF_INET6, dst) + udp
r = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
for q in (quoted(sport + 1, 9999, bad), quoted(sport, 9001, ok)):
    r.sendto(struct.pack("!BBHI", 2, 0, 0, 1280) + q, (src, 0))
print("sent", src, sport, flush=True)
"#;

/// The instance's side: a connected UDP socket sends one datagram to the
/// outside host's udp/9001, then waits (at most `argv[2]` s) for its path
/// MTU to drop below 1500 and prints it.
const PTB_VICTIM: &str = r#"
import socket, sys, time
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.connect((sys.argv[1], 9001))
s.send(b"hello-ptb")
end = time.time() + float(sys.argv[2])
mtu = s.getsockopt(socket.IPPROTO_IPV6, 24)  # IPV6_MTU
while mtu >= 1500 and time.time() < end:
    time.sleep(0.05)
    mtu = s.getsockopt(socket.IPPROTO_IPV6, 24)
print(mtu, flush=True)
"#;

/// An ICMPv6 Packet Too Big quoting an allowed flow (instance -> outside,
/// udp) reaches the instance, whose kernel lowers the path MTU to 1280; one
/// quoting a flow that does not exist is dropped as `unrelated_icmp_error`
/// and never seen in the instance's namespace.
#[test]
fn ipv6_packet_too_big_reaches_the_sender_of_an_allowed_flow() {
    use std::io::{BufRead, BufReader};
    let Some(lab) = lab6("ipv6ptb") else { return };
    let a = lab.run_instances(1, &["default"]).remove(0);
    let outside = outside6(&lab);
    let sniff = attack::Sniffer::start(&a.netns, 20);
    let d0 = drops(&lab);

    let (ok, bad) = (
        attack::hex_encode(&attack::marked("ptb-ok")),
        attack::hex_encode(&attack::marked("ptb-bad")),
    );
    let out = outside.to_string();
    let mut sender = Bg(std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &lab.uplink_ns,
            "timeout",
            "20",
            "python3",
            "-c",
        ])
        .args([PTB_SENDER, &ok, &bad, &out])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .expect("spawn python3 PTB sender"));
    let mut lines = BufReader::new(sender.0.stdout.take().unwrap()).lines();
    let ready = lines.next().and_then(Result::ok);
    assert_eq!(ready.as_deref(), Some("ready"), "PTB sender did not start");

    let victim = lab.exec(
        &a.netns,
        "timeout",
        &["20", "python3", "-c", PTB_VICTIM, &out, "8"],
        Duration::from_secs(25),
    );
    let sent = lines.next().and_then(Result::ok).unwrap_or_default();
    assert!(sent.starts_with("sent "), "PTB sender: {sent:?}");
    assert!(victim.success(), "{victim:?}");
    let route = lab.exec(
        &a.netns,
        "ip",
        &["-6", "route", "get", &out],
        Duration::from_secs(5),
    );
    println!(
        "{sent}; instance path MTU {}; {}",
        victim.stdout.trim(),
        route.stdout.trim()
    );
    assert_eq!(
        victim.stdout.trim(),
        "1280",
        "the instance's path MTU to the outside after the PTB ({route:?})"
    );
    assert!(route.stdout.contains("mtu 1280"), "{route:?}");
    assert!(
        sniff.wait_for("ptb-ok", 1, Duration::from_secs(3)),
        "the PTB quoting the allowed flow reached the instance"
    );
    wait_until("the unrelated PTB counted", Duration::from_secs(5), || {
        drops(&lab).delta(&d0, "unrelated_icmp_error") >= 1
    });
    assert_eq!(
        sniff.count("ptb-bad"),
        0,
        "the unrelated PTB reached the instance"
    );
    assert_eq!(
        drops(&lab).delta(&d0, "unrelated_icmp_error"),
        1,
        "only the unrelated PTB is dropped as such"
    );
}
