//! `Datapath::trace` agrees with the datapath: random models (groups with
//! random TCP/UDP/ICMP/all rules from CIDRs and groups, instances in random
//! group sets) and random frame sequences (TCP with assorted flags, UDP, ICMP
//! echo requests and replies, from instances, from the uplink, spoofed, to
//! instances, outside and unknown addresses, plus ARP requests; and the same
//! shapes over IPv6 on the dual-stack segment: TCP, UDP, ICMPv6 echo, neighbor
//! solicitations, rules from IPv6 CIDRs and `icmpv6`) are run both
//! by a worker (frames injected one by one on in-memory ports, where they go
//! or why they are dropped read from the ports and the drop counters) and by
//! one trace of the whole sequence: every frame must end the same way.
//! Also: per-port drop counters by reason (what `sgswitch stats i-...` shows).

#[allow(dead_code, unused_macros)]
mod common;
use common::default_instance;

use std::net::{Ipv4Addr, Ipv6Addr};

use filter::model::{Instance, Limits, Owner, RuleSpec, eui64_address};
use filter::wire::{self, Endpoint, Endpoint6};
use filter::{CtConfig, DropReason, Mac, Model, compile, tcp_flags};
use ipnet::Ipv6Net;
use proptest::prelude::*;
use switch::pipeline::Outcome;
use switch::trace::Ingress;
use switch::{Datapath, MemPeer, PortRole, PortSpec, SwitchConfig, mem_port};

const OWNER: &str = "111122223333";
const GROUPS: [&str; 3] = ["default", "g1", "g2"];
const INSTANCES: u8 = 5;
const OUTSIDE: [Ipv4Addr; 2] = [Ipv4Addr::new(172, 31, 255, 10), Ipv4Addr::new(10, 0, 0, 1)];
const OUTSIDE6: [Ipv6Addr; 2] = [
    Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x10),
    Ipv6Addr::new(0xfd00, 0x5a, 0, 0, 0, 0, 0, 0x99),
];
const PORTS: [u16; 4] = [22, 80, 5432, 40000];

fn prefix6() -> Ipv6Net {
    "fd00:5a::/64".parse().expect("prefix")
}
fn ip6_of(n: u8) -> Ipv6Addr {
    eui64_address(prefix6(), mac_of(n))
}
const UPLINK_MAC: Mac = [0x02, 0xaa, 0, 0, 0, 1];

fn ip_of(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(172, 31, 0, 2 + n)
}
fn mac_of(n: u8) -> Mac {
    [0x02, 0, 0, 0, 0, 2 + n]
}

#[derive(Clone, Debug)]
struct RuleGen {
    group: usize,
    proto: usize,
    port: usize,
    source: usize,
}

fn rule_gen() -> impl Strategy<Value = RuleGen> {
    (0..GROUPS.len(), 0..5usize, 0..PORTS.len(), 0..8usize).prop_map(
        |(group, proto, port, source)| RuleGen {
            group,
            proto,
            port,
            source,
        },
    )
}

/// A frame: from (instance n, or outside k, or the uplink spoofing instance
/// n), to (instance n or outside k), kind.
#[derive(Clone, Debug)]
struct FrameGen {
    from: usize,
    to: usize,
    kind: usize,
    sport: usize,
    dport: usize,
    v6: bool,
}

fn frame_gen() -> impl Strategy<Value = FrameGen> {
    (
        0..9usize,
        0..7usize,
        0..9usize,
        0..PORTS.len(),
        0..PORTS.len(),
        any::<bool>(),
    )
        .prop_map(|(from, to, kind, sport, dport, v6)| FrameGen {
            from,
            to,
            kind,
            sport,
            dport,
            v6,
        })
}

fn endpoint(i: usize) -> (Endpoint, Ingress) {
    let n = INSTANCES as usize;
    if i < n {
        let n = i as u8;
        (
            Endpoint::new(mac_of(n), ip_of(n)),
            Ingress::Instance(ip_of(n)),
        )
    } else if i < n + OUTSIDE.len() {
        (Endpoint::new(UPLINK_MAC, OUTSIDE[i - n]), Ingress::Uplink)
    } else {
        // The uplink claiming an instance's address.
        let n = (i - n - OUTSIDE.len()) as u8;
        (Endpoint::new(UPLINK_MAC, ip_of(n)), Ingress::Uplink)
    }
}

/// [`endpoint`] over IPv6 (the port is still named by its IPv4 address).
fn endpoint6(i: usize) -> (Endpoint6, Ingress) {
    let n = INSTANCES as usize;
    if i < n {
        let n = i as u8;
        (
            Endpoint6::new(mac_of(n), ip6_of(n)),
            Ingress::Instance(ip_of(n)),
        )
    } else if i < n + OUTSIDE6.len() {
        (Endpoint6::new(UPLINK_MAC, OUTSIDE6[i - n]), Ingress::Uplink)
    } else {
        let n = (i - n - OUTSIDE6.len()) as u8;
        (Endpoint6::new(UPLINK_MAC, ip6_of(n)), Ingress::Uplink)
    }
}

fn build6(f: &FrameGen) -> (Ingress, Vec<u8>) {
    let (from, ingress) = endpoint6(f.from);
    let to = if f.to < INSTANCES as usize {
        Endpoint6::new(mac_of(f.to as u8), ip6_of(f.to as u8))
    } else {
        let k = (f.to - INSTANCES as usize) % OUTSIDE6.len();
        Endpoint6::new(switch::arp::GATEWAY_MAC, OUTSIDE6[k])
    };
    let (sp, dp) = (PORTS[f.sport], PORTS[f.dport]);
    let frame = match f.kind {
        0 => wire::tcp6(from, to, sp, dp, tcp_flags::SYN, &[]),
        1 => wire::tcp6(from, to, sp, dp, tcp_flags::SYN | tcp_flags::ACK, &[]),
        2 => wire::tcp6(from, to, sp, dp, tcp_flags::ACK, b"x"),
        3 => wire::tcp6(from, to, sp, dp, tcp_flags::RST, &[]),
        4 => wire::udp6(from, to, sp, dp, b"u"),
        5 => wire::icmp6_echo(from, to, true, sp, 1, b"p"),
        6 => wire::icmp6_echo(from, to, false, sp, 1, b"p"),
        7 => wire::neighbor_solicitation(from, to.ip),
        _ => wire::tcp6(from, to, dp, sp, tcp_flags::SYN, &[]),
    };
    (ingress, frame)
}

fn build(f: &FrameGen) -> (Ingress, Vec<u8>) {
    if f.v6 {
        return build6(f);
    }
    let (from, ingress) = endpoint(f.from);
    let to = if f.to < INSTANCES as usize {
        Endpoint::new(mac_of(f.to as u8), ip_of(f.to as u8))
    } else {
        let k = (f.to - INSTANCES as usize) % OUTSIDE.len();
        Endpoint::new(switch::arp::GATEWAY_MAC, OUTSIDE[k])
    };
    let (sp, dp) = (PORTS[f.sport], PORTS[f.dport]);
    let frame = match f.kind {
        0 => wire::tcp(from, to, sp, dp, tcp_flags::SYN, &[]),
        1 => wire::tcp(from, to, sp, dp, tcp_flags::SYN | tcp_flags::ACK, &[]),
        2 => wire::tcp(from, to, sp, dp, tcp_flags::ACK, b"x"),
        3 => wire::tcp(from, to, sp, dp, tcp_flags::RST, &[]),
        4 => wire::udp(from, to, sp, dp, b"u"),
        5 => wire::icmp_echo(from, to, true, sp, 1, b"p"),
        6 => wire::icmp_echo(from, to, false, sp, 1, b"p"),
        7 => wire::arp_request(from, to.ip),
        _ => wire::tcp(from, to, dp, sp, tcp_flags::SYN, &[]),
    };
    (ingress, frame)
}

struct Lab {
    dp: std::sync::Arc<Datapath>,
    peers: Vec<(String, MemPeer)>,
    uplink: MemPeer,
}

fn lab(rules: &[RuleGen], member: &[usize]) -> Lab {
    let owner = Owner(OWNER.into());
    let mut model = Model::new(Limits {
        rules_per_group: 1000,
    });
    model.ensure_owner(&owner);
    model.set_subnet6(Some(prefix6())).expect("prefix");
    for g in &GROUPS[1..] {
        model.add_group(&owner, g, "test").expect("group");
    }
    for r in rules {
        let proto = ["tcp", "udp", "icmp", "all", "icmpv6"][r.proto];
        let (ports, icmp) = match proto {
            "tcp" | "udp" => (Some(PORTS[r.port].to_string()), None),
            "icmp" => (
                None,
                Some(["8:-1", "0:0", "-1:-1", "3:-1"][r.port].to_string()),
            ),
            "icmpv6" => (
                None,
                Some(["128:-1", "129:0", "-1:-1", "1:-1"][r.port].to_string()),
            ),
            _ => (None, None),
        };
        // IPv4 sources with `icmpv6` and IPv6 ones with `icmp` are refused
        // by the model (and skipped here).
        let (cidrs, groups) = match r.source {
            0 => (vec!["0.0.0.0/0".to_string()], vec![]),
            1 => (vec!["172.31.255.0/24".to_string()], vec![]),
            2 => (vec!["172.31.0.2/31".to_string()], vec![]),
            3 => (vec!["::/0".to_string()], vec![]),
            4 => (vec!["2001:db8::/32".to_string()], vec![]),
            s => (vec![], vec![(GROUPS[s - 5].to_string(), None)]),
        };
        let spec = RuleSpec {
            proto: Some(proto.into()),
            ports,
            icmp,
            cidrs,
            groups,
        };
        let _ = model.authorize(&owner, GROUPS[r.group], &spec);
    }
    let dp = Datapath::new(SwitchConfig {
        workers: 1,
        ct: CtConfig::with_capacity(1024),
        subnet6: Some(prefix6()),
        ..SwitchConfig::default()
    })
    .expect("datapath");
    let mut peers = Vec::new();
    for n in 0..INSTANCES {
        let bits = member[n as usize];
        let mut groups: Vec<String> = (0..GROUPS.len())
            .filter(|g| bits & (1 << g) != 0)
            .map(|g| GROUPS[g].to_string())
            .collect();
        if groups.is_empty() {
            groups.push("default".into());
        }
        let inst = Instance {
            id: format!("i-{:08x}", n),
            owner: owner.clone(),
            mac: mac_of(n),
            ip: ip_of(n),
            groups,
        };
        model.add_instance(inst.clone()).expect("instance");
        let (queues, peer) = mem_port(1);
        dp.add_port(PortSpec {
            name: inst.id.clone(),
            role: PortRole::Instance {
                id: inst.id.clone(),
                mac: inst.mac,
                ip: inst.ip,
            },
            queues,
        })
        .expect("port");
        peers.push((inst.id, peer));
    }
    let (queues, uplink) = mem_port(1);
    dp.add_port(PortSpec {
        name: "uplink".into(),
        role: PortRole::Uplink,
        queues,
    })
    .expect("uplink");
    dp.publish_rules(compile(&model, 1));
    Lab { dp, peers, uplink }
}

/// What the worker did with one frame: the name of the port that got it
/// (forwarded, or answered: the input port), consumed by the switch
/// (neighbor discovery it absorbs), or the drop reason.
#[derive(Debug, PartialEq, Eq)]
enum Fate {
    To(String),
    Consumed,
    Dropped(DropReason),
}

fn run_real(lab: &Lab, w: &mut switch::worker::Worker, ingress: Ingress, frame: &[u8]) -> Fate {
    let before = lab.dp.stats().drops;
    let inp = match ingress {
        Ingress::Uplink => &lab.uplink,
        Ingress::Instance(ip) => {
            let n = (ip.octets()[3] - 2) as usize;
            &lab.peers[n].1
        }
    };
    inp.inject(0, frame, Default::default()).expect("inject");
    while w.poll_once() > 0 {}
    let after = lab.dp.stats().drops;
    if let Some(r) = DropReason::ALL
        .iter()
        .find(|r| after[r.index()] != before[r.index()])
    {
        for (_, p) in &lab.peers {
            p.take();
        }
        lab.uplink.take();
        return Fate::Dropped(*r);
    }
    let mut fate = None;
    for (name, p) in lab
        .peers
        .iter()
        .map(|(n, p)| (n.as_str(), p))
        .chain([("uplink", &lab.uplink)])
    {
        if !p.take().is_empty() {
            fate = Some(Fate::To(name.to_string()));
        }
    }
    fate.unwrap_or(Fate::Consumed)
}

fn traced_fate(t: &switch::trace::Traced, ingress: Ingress) -> Fate {
    match t.outcome {
        Outcome::Forwarded => Fate::To(t.delivered.as_ref().expect("delivered").1.clone()),
        Outcome::Answered => {
            assert!(t.answer.is_some());
            Fate::To(match ingress {
                Ingress::Uplink => "uplink".into(),
                Ingress::Instance(ip) => format!("i-{:08x}", ip.octets()[3] - 2),
            })
        }
        Outcome::Dropped(r) => Fate::Dropped(r),
        Outcome::Consumed => Fate::Consumed,
        o => panic!("unexpected outcome {o:?}"),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn trace_agrees_with_the_datapath(
        rules in prop::collection::vec(rule_gen(), 0..12),
        member in prop::collection::vec(0usize..8, INSTANCES as usize),
        frames in prop::collection::vec(frame_gen(), 1..16),
    ) {
        let lab = lab(&rules, &member);
        let built: Vec<(Ingress, Vec<u8>)> = frames.iter().map(build).collect();
        let traced = lab.dp.trace(&built).expect("trace");
        prop_assert_eq!(traced.generation, 1);
        let mut w = lab.dp.worker(0);
        for ((ingress, frame), t) in built.iter().zip(&traced.frames) {
            let real = run_real(&lab, &mut w, *ingress, frame);
            prop_assert_eq!(&real, &traced_fate(t, *ingress), "{:?}", t);
        }
        // The trace left no trace: live conntrack state is the worker's alone.
    }
}

/// A trace touches no live counter and no live connection state.
#[test]
fn trace_leaves_live_state_alone() {
    let rules = [RuleGen {
        group: 0,
        proto: 0,
        port: 0,
        source: 0,
    }];
    let lab = lab(&rules, &[1, 1, 1, 1, 1]);
    let (ingress, frame) = build(&FrameGen {
        from: 5,
        to: 0,
        kind: 0,
        sport: 3,
        dport: 0,
        v6: false,
    });
    let before = lab.dp.stats();
    let t = lab.dp.trace(&[(ingress, frame)]).expect("trace");
    assert_eq!(t.frames[0].outcome, Outcome::Forwarded);
    assert!(t.frames[0].rules_allow && !t.frames[0].tracked_before && t.frames[0].tracked_after);
    let after = lab.dp.stats();
    assert_eq!(before, after);
    assert_eq!(after.conntrack_entries, 0);
    assert!(lab.peers[0].1.take().is_empty());
}

/// Every port counts its own drops by reason (per worker, summed on read):
/// a spoofed frame from an instance counts `spoofed_ip` on its port, a probe
/// from outside without a rule `no_rule` on the uplink; they add up to the
/// port's `rx_dropped`.
#[test]
fn ports_count_their_drops_by_reason() {
    let lab = lab(&[], &[1, 1, 1, 1, 1]);
    let mut w = lab.dp.worker(0);
    let spoof = wire::tcp(
        Endpoint::new(mac_of(0), Ipv4Addr::new(172, 31, 0, 99)),
        Endpoint::new(mac_of(1), ip_of(1)),
        1,
        2,
        tcp_flags::SYN,
        &[],
    );
    for _ in 0..2 {
        lab.peers[0]
            .1
            .inject(0, &spoof, Default::default())
            .unwrap();
    }
    let probe = wire::tcp(
        Endpoint::new(UPLINK_MAC, OUTSIDE[0]),
        Endpoint::new(mac_of(2), ip_of(2)),
        40000,
        22,
        tcp_flags::SYN,
        &[],
    );
    lab.uplink.inject(0, &probe, Default::default()).unwrap();
    while w.poll_once() > 0 {}
    let st = lab.dp.stats();
    let port = |name: &str| st.ports.iter().find(|p| p.name == name).unwrap().counters;
    let p0 = port("i-00000000");
    assert_eq!(p0.drops[DropReason::SpoofedIp.index()], 2);
    assert_eq!(p0.drops.iter().sum::<u64>(), p0.rx_dropped);
    let up = port("uplink");
    assert_eq!(up.drops[DropReason::NoRule.index()], 1);
    assert_eq!(up.drops.iter().sum::<u64>(), 1);
    let p2 = port("i-00000002");
    assert_eq!(p2.drops.iter().sum::<u64>(), 0);
    // ... and the probe was refused on its way to instance 2.
    assert_eq!(p2.denied[DropReason::NoRule.index()], 1);
    assert_eq!(p2.denied.iter().sum::<u64>(), 1);
    assert_eq!(up.denied.iter().sum::<u64>(), 0);
}

/// IPv6 through the trace: an IPv4-only rule does not open IPv6 (`no_rule`),
/// an IPv6 rule does (the packet's facts in `packet6`, the flow tracked from
/// then on, its reply tracked); a neighbor solicitation for an instance is
/// answered by the switch with that instance's MAC.
#[test]
fn trace_of_ipv6_frames() {
    let v4_only = RuleGen {
        group: 0,
        proto: 0,
        port: 0,
        source: 0,
    };
    let syn = build(&FrameGen {
        from: 5,
        to: 0,
        kind: 0,
        sport: 3,
        dport: 0,
        v6: true,
    });
    let lab4 = lab(std::slice::from_ref(&v4_only), &[1, 1, 1, 1, 1]);
    let t = lab4.dp.trace(std::slice::from_ref(&syn)).expect("trace");
    let f = &t.frames[0];
    assert_eq!(f.outcome, Outcome::Dropped(DropReason::NoRule));
    assert!(!f.rules_allow && f.packet.is_none());
    assert_eq!(
        f.packet6.map(|p| (p.key.src, p.key.dst, p.key.dport)),
        Some((OUTSIDE6[0], ip6_of(0), 22))
    );

    let v6 = RuleGen {
        source: 3,
        ..v4_only
    };
    let lab6 = lab(&[v4_only, v6], &[1, 1, 1, 1, 1]);
    let reply = wire::tcp6(
        Endpoint6::new(mac_of(0), ip6_of(0)),
        Endpoint6::new(switch::arp::GATEWAY_MAC, OUTSIDE6[0]),
        22,
        40000,
        tcp_flags::SYN | tcp_flags::ACK,
        &[],
    );
    let ns = wire::neighbor_solicitation(Endpoint6::new(UPLINK_MAC, OUTSIDE6[1]), ip6_of(2));
    let t = lab6
        .dp
        .trace(&[
            syn,
            (Ingress::Instance(ip_of(0)), reply),
            (Ingress::Uplink, ns),
        ])
        .expect("trace");
    let [open, back, nd] = &t.frames[..] else {
        panic!("three frames")
    };
    assert_eq!(open.outcome, Outcome::Forwarded);
    assert_eq!(open.delivered.as_ref().map(|d| d.2), Some(Some(ip_of(0))));
    assert!(open.rules_allow && !open.tracked_before && open.tracked_after);
    assert_eq!(back.outcome, Outcome::Forwarded);
    assert_eq!(
        back.delivered.as_ref().map(|d| d.1.as_str()),
        Some("uplink")
    );
    assert!(back.tracked_before, "the reply belongs to the tracked flow");
    assert_eq!(nd.outcome, Outcome::Answered);
    let na = nd.answer.as_ref().expect("a neighbor advertisement");
    // ICMPv6 type 136, target link-layer option: instance 2's MAC.
    assert_eq!(na[54], 136);
    assert_eq!(&na[na.len() - 6..], &mac_of(2));
}

/// Cluster mode: a destination on another live host, IPv4 or IPv6, is traced
/// through the same code as in a worker: the ARP request / neighbor
/// solicitation is answered with the remote MAC, the sender's egress rules
/// decide, the flow is tracked for its reply, and the frame goes into the
/// overlay to that host's underlay address with the sender's identity — which
/// the trace reports without sending anything. With the default egress rule
/// revoked, the sender's host refuses it (`no_egress_rule`).
#[test]
fn trace_to_an_instance_of_another_host() {
    use std::net::{SocketAddr, SocketAddrV4, UdpSocket};
    use std::time::Duration;
    use switch::OverlayConfig;
    use switch::vxlan::{DirectoryTable, HostId, InstanceInfo};

    const ID_A: u16 = 0x100;
    const ID_B: u16 = 0x101;
    let owner = Owner(OWNER.into());
    // A (instance 0) here on host 1, B (instance 1) on host 2.
    let (a, b) = (0u8, 1u8);
    let run = |revoke_egress: bool| {
        let mut model = Model::new(Limits::default());
        model.ensure_owner(&owner);
        model.set_subnet6(Some(prefix6())).expect("prefix");
        if revoke_egress {
            let spec = RuleSpec {
                proto: Some("all".into()),
                ports: None,
                icmp: None,
                cidrs: vec!["0.0.0.0/0".into(), "::/0".into()],
                groups: vec![],
            };
            model
                .revoke_dir(&owner, "default", &spec, true)
                .expect("revoke the default egress rule");
        }
        for n in [a, b] {
            model
                .add_instance(default_instance(&owner, n, mac_of(n), ip_of(n)))
                .expect("instance");
        }
        let dp = Datapath::new(SwitchConfig {
            workers: 1,
            ct: CtConfig::with_capacity(1024),
            subnet: "172.31.0.0/16".parse().expect("subnet"),
            subnet6: Some(prefix6()),
            overlay: Some(OverlayConfig::new(
                SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0),
                77,
            )),
            ..SwitchConfig::default()
        })
        .expect("datapath with overlay");
        let h1 = dp.overlay().expect("overlay").local_addr();
        let h2 = UdpSocket::bind((Ipv4Addr::new(127, 0, 0, 2), 0)).expect("bind 127.0.0.2");
        let SocketAddr::V4(h2a) = h2.local_addr().expect("addr") else {
            unreachable!()
        };
        let mut dir = DirectoryTable::new(HostId(1));
        dir.add_host(HostId(1), h1);
        dir.add_host(HostId(2), h2a);
        for (n, host, identity) in [(a, 1, ID_A), (b, 2, ID_B)] {
            let info = InstanceInfo {
                host: HostId(host),
                mac: mac_of(n),
                identity,
            };
            dir.add_instance(ip_of(n), info);
            dir.add_instance6(ip6_of(n), ip_of(n));
        }
        dp.publish_rules(compile(&model, 1));
        dp.publish_directory(std::sync::Arc::new(dir));
        let (queues, _peer) = mem_port(1);
        dp.add_port(PortSpec {
            name: "a".into(),
            role: PortRole::Instance {
                id: format!("i-{a:08x}"),
                mac: mac_of(a),
                ip: ip_of(a),
            },
            queues,
        })
        .expect("port");
        let from = Ingress::Instance(ip_of(a));
        let (ea, eb) = (
            Endpoint::new(mac_of(a), ip_of(a)),
            Endpoint::new(mac_of(b), ip_of(b)),
        );
        let (ea6, eb6) = (
            Endpoint6::new(mac_of(a), ip6_of(a)),
            Endpoint6::new(mac_of(b), ip6_of(b)),
        );
        let t = dp
            .trace(&[
                (from, wire::arp_request(ea, ip_of(b))),
                (from, wire::tcp(ea, eb, 40000, 22, tcp_flags::SYN, &[])),
                (from, wire::neighbor_solicitation(ea6, ip6_of(b))),
                (from, wire::tcp6(ea6, eb6, 40000, 22, tcp_flags::SYN, &[])),
            ])
            .expect("trace");
        // The trace sends nothing to host 2.
        h2.set_read_timeout(Some(Duration::from_millis(100)))
            .expect("timeout");
        let mut buf = [0u8; 2048];
        assert!(h2.recv_from(&mut buf).is_err(), "the trace sent a datagram");
        (t, h2a)
    };

    let (t, h2a) = run(false);
    let [arp, syn, ns, syn6] = &t.frames[..] else {
        panic!("four frames")
    };
    assert_eq!(arp.outcome, Outcome::Answered);
    let ans = arp.answer.as_ref().expect("an ARP reply");
    assert_eq!(&ans[22..28], &mac_of(b), "B's MAC, answered by the switch");
    assert_eq!(ns.outcome, Outcome::Answered);
    let na = ns.answer.as_ref().expect("a neighbor advertisement");
    assert_eq!(&na[na.len() - 6..], &mac_of(b));
    for (f, v6) in [(syn, false), (syn6, true)] {
        assert_eq!(f.outcome, Outcome::Forwarded, "ipv6: {v6}");
        assert!(f.remote, "ipv6: {v6}: B is on another host");
        assert_eq!(f.overlay, Some((h2a, ID_A)), "ipv6: {v6}");
        assert_eq!(f.delivered, None, "ipv6: {v6}: no local port got it");
        assert!(
            !f.tracked_before && f.tracked_after,
            "ipv6: {v6}: tracked for the reply"
        );
        assert_eq!(f.packet.is_none(), v6);
        assert_eq!(f.packet6.is_some(), v6);
    }

    let (t, _) = run(true);
    for (f, v6) in [(&t.frames[1], false), (&t.frames[3], true)] {
        assert_eq!(
            f.outcome,
            Outcome::Dropped(DropReason::NoEgressRule),
            "ipv6: {v6}"
        );
        assert!(f.remote && f.overlay.is_none(), "ipv6: {v6}");
    }
}
