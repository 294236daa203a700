//! In-memory simulations of the whole datapath (no root): instances and an uplink
//! on in-memory ports, a real group model compiled to a real snapshot, real
//! connection tracking. Most tests drive one worker synchronously
//! (`Worker::poll_once`) so that every frame's fate is deterministic; the last
//! ones run the threaded [`Switch`].
//!
//! Cases: forwarding by rule, ARP answering and forwarding, the DHCP exchange,
//! every source-check drop, unknown destinations, stateful replies, related and
//! unrelated ICMP errors, revoke in both modes, conntrack capacity and quota, TSO
//! super-frames to ports with and without offloads, partial checksums, gone ports.

#[allow(dead_code, unused_macros)]
mod common;
use common::default_instance;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use etherparse::{
    IcmpEchoHeader, Icmpv4Type, NetSlice, PacketBuilder, SlicedPacket, TransportSlice, VlanId,
    icmpv4::DestUnreachableHeader,
};
use filter::model::{Instance, Limits, Owner, RuleSpec};
use filter::{CtConfig, DropReason, Mac, Model, RevokeMode, compile};
use switch::arp::{self, GATEWAY_MAC};
use switch::dhcp::{self, msg};
use switch::port::VnetHdr;
use switch::worker::Worker;
use switch::{
    Datapath, MemFrame, MemOptions, MemPeer, PollMode, PortId, PortRole, PortSpec, PortStatus,
    Switch, SwitchConfig, mem_port_with,
};

const OWNER: &str = "111122223333";
const UPLINK_MAC: Mac = [0x02, 0xaa, 0, 0, 0, 1];
const UPLINK_IP: Ipv4Addr = Ipv4Addr::new(172, 31, 255, 1);
const LEASE: u32 = 7200;

#[derive(Clone)]
struct Node {
    id: PortId,
    peer: MemPeer,
    mac: Mac,
    ip: Ipv4Addr,
}

/// One switch with one synchronously driven worker and a model.
struct Lab {
    dp: Arc<Datapath>,
    w: Worker,
    model: Model,
    generation: u64,
    owner: Owner,
    nodes: BTreeMap<&'static str, Node>,
}

fn mac_of(n: u8) -> Mac {
    [0x02, 0, 0, 0, 0, n]
}

fn ip_of(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(172, 31, 0, n)
}

impl Lab {
    fn new() -> Lab {
        Lab::with_ct(CtConfig::default())
    }

    fn with_ct(ct: CtConfig) -> Lab {
        let cfg = SwitchConfig {
            workers: 1,
            ct,
            dhcp_lease_secs: LEASE,
            ..SwitchConfig::default()
        };
        let dp = Datapath::new(cfg).expect("datapath");
        let w = dp.worker(0);
        Lab {
            dp,
            w,
            model: Model::new(Limits::default()),
            generation: 0,
            owner: Owner(OWNER.into()),
            nodes: BTreeMap::new(),
        }
    }

    fn publish(&mut self) {
        self.generation += 1;
        self.dp.publish_rules(compile(&self.model, self.generation));
    }

    fn group(&mut self, name: &str) {
        self.model
            .add_group(&self.owner, name, "test group")
            .expect("add group");
        self.publish();
    }

    fn spec(proto: &str, ports: Option<&str>, cidr: Option<&str>, group: Option<&str>) -> RuleSpec {
        RuleSpec {
            proto: Some(proto.into()),
            ports: ports.map(Into::into),
            icmp: None,
            cidrs: cidr.into_iter().map(Into::into).collect(),
            groups: group.into_iter().map(|g| (g.to_string(), None)).collect(),
        }
    }

    fn allow(&mut self, group: &str, spec: RuleSpec) {
        self.model
            .authorize(&self.owner, group, &spec)
            .expect("authorize");
        self.publish();
    }

    fn revoke(&mut self, group: &str, spec: RuleSpec) {
        self.model
            .revoke(&self.owner, group, &spec)
            .expect("revoke");
        self.publish();
    }

    fn instance_opts(
        &mut self,
        name: &'static str,
        n: u8,
        groups: &[&str],
        opts: MemOptions,
    ) -> Node {
        let (mac, ip) = (mac_of(n), ip_of(n));
        let mut gs: Vec<String> = groups.iter().map(|g| g.to_string()).collect();
        gs.sort();
        let inst = Instance {
            id: format!("i-{n:08x}"),
            owner: self.owner.clone(),
            mac,
            ip,
            groups: gs,
        };
        self.model.add_instance(inst.clone()).expect("add instance");
        self.publish();
        let (queues, peer) = mem_port_with(1, opts);
        let id = self
            .dp
            .add_port(PortSpec {
                name: name.into(),
                role: PortRole::Instance {
                    id: inst.id,
                    mac,
                    ip,
                },
                queues,
            })
            .expect("add port");
        let node = Node { id, peer, mac, ip };
        self.nodes.insert(name, node.clone());
        node
    }

    fn instance(&mut self, name: &'static str, n: u8, groups: &[&str]) -> Node {
        self.instance_opts(name, n, groups, MemOptions::default())
    }

    fn uplink(&mut self) -> Node {
        let (queues, peer) = mem_port_with(1, MemOptions::default());
        let id = self
            .dp
            .add_port(PortSpec {
                name: "uplink".into(),
                role: PortRole::Uplink,
                queues,
            })
            .expect("uplink");
        let node = Node {
            id,
            peer,
            mac: UPLINK_MAC,
            ip: UPLINK_IP,
        };
        self.nodes.insert("uplink", node.clone());
        node
    }

    /// Inject `frame` at `from` (with a vnet header), run the worker, and return
    /// every frame any port transmitted, with the receiving port's name.
    fn send_vnet(
        &mut self,
        from: &str,
        frame: &[u8],
        vnet: VnetHdr,
    ) -> Vec<(&'static str, MemFrame)> {
        self.nodes[from]
            .peer
            .inject(0, frame, vnet)
            .expect("inject");
        while self.w.poll_once() > 0 {}
        let mut out = Vec::new();
        for (name, n) in &self.nodes {
            for f in n.peer.take() {
                out.push((*name, f));
            }
        }
        out
    }

    fn send(&mut self, from: &str, frame: &[u8]) -> Vec<(&'static str, MemFrame)> {
        self.send_vnet(from, frame, VnetHdr::default())
    }

    fn drops(&self, r: DropReason) -> u64 {
        self.dp.stats().drop_count(r)
    }

    /// The frame must be dropped with `r` (counted once) and reach nobody.
    #[track_caller]
    fn expect_drop(&mut self, from: &str, frame: &[u8], r: DropReason) {
        let before = self.dp.stats();
        let out = self.send(from, frame);
        let after = self.dp.stats();
        let delivered: Vec<_> = out.iter().map(|(n, _)| *n).collect();
        assert!(
            out.is_empty(),
            "expected drop {r:?}, but delivered to {delivered:?}"
        );
        assert_eq!(
            after.drop_count(r),
            before.drop_count(r) + 1,
            "drop counter {r:?}"
        );
        assert_eq!(
            after.total_drops(),
            before.total_drops() + 1,
            "exactly one drop"
        );
    }

    /// The frame must arrive, unchanged but for the destination MAC, at `to` only.
    #[track_caller]
    fn expect_forward(&mut self, from: &str, frame: &[u8], to: &str) -> MemFrame {
        let before = self.dp.stats().total_drops();
        let mut out = self.send(from, frame);
        let after = self.dp.stats();
        assert_eq!(
            after.total_drops(),
            before,
            "unexpected drop: {:?}",
            after.nonzero_drops().collect::<Vec<_>>()
        );
        assert_eq!(
            out.len(),
            1,
            "expected exactly one frame at {to}, got {:?}",
            out.iter().map(|o| o.0).collect::<Vec<_>>()
        );
        let (name, f) = out.pop().expect("one frame");
        assert_eq!(name, to);
        assert_eq!(f.data[6..], frame[6..], "payload changed");
        f
    }
}

// ---------------------------------------------------------------------------
// Frame builders
// ---------------------------------------------------------------------------

fn tcp(src: &Node, dst: &Node, sport: u16, dport: u16, flags: &str, payload: &[u8]) -> Vec<u8> {
    tcp_raw(
        src.mac, dst.mac, src.ip, dst.ip, sport, dport, flags, 1000, payload,
    )
}

#[allow(clippy::too_many_arguments)]
fn tcp_raw(
    smac: Mac,
    dmac: Mac,
    sip: Ipv4Addr,
    dip: Ipv4Addr,
    sport: u16,
    dport: u16,
    flags: &str,
    seq: u32,
    payload: &[u8],
) -> Vec<u8> {
    let mut b = PacketBuilder::ethernet2(smac, dmac)
        .ipv4(sip.octets(), dip.octets(), 64)
        .tcp(sport, dport, seq, 64000);
    for c in flags.chars() {
        b = match c {
            'S' => b.syn(),
            'A' => b.ack(1),
            'F' => b.fin(),
            'R' => b.rst(),
            'P' => b.psh(),
            _ => panic!("flag {c}"),
        };
    }
    let mut v = Vec::new();
    b.write(&mut v, payload).expect("build tcp");
    v
}

fn udp_raw(
    smac: Mac,
    dmac: Mac,
    sip: Ipv4Addr,
    dip: Ipv4Addr,
    sport: u16,
    dport: u16,
    payload: &[u8],
) -> Vec<u8> {
    let mut v = Vec::new();
    PacketBuilder::ethernet2(smac, dmac)
        .ipv4(sip.octets(), dip.octets(), 64)
        .udp(sport, dport)
        .write(&mut v, payload)
        .expect("build udp");
    v
}

fn udp(src: &Node, dst: &Node, sport: u16, dport: u16) -> Vec<u8> {
    udp_raw(src.mac, dst.mac, src.ip, dst.ip, sport, dport, b"datagram")
}

fn ping(src: &Node, dst: &Node, id: u16) -> Vec<u8> {
    let mut v = Vec::new();
    PacketBuilder::ethernet2(src.mac, dst.mac)
        .ipv4(src.ip.octets(), dst.ip.octets(), 64)
        .icmpv4_echo_request(id, 1)
        .write(&mut v, b"ping")
        .expect("build ping");
    v
}

fn pong(src: &Node, dst: &Node, id: u16) -> Vec<u8> {
    let mut v = Vec::new();
    PacketBuilder::ethernet2(src.mac, dst.mac)
        .ipv4(src.ip.octets(), dst.ip.octets(), 64)
        .icmpv4(Icmpv4Type::EchoReply(IcmpEchoHeader { id, seq: 1 }))
        .write(&mut v, b"ping")
        .expect("build pong");
    v
}

/// An ICMP port unreachable from `src` to `dst` quoting `original` (a frame).
fn port_unreachable(src: &Node, dst: &Node, original: &[u8]) -> Vec<u8> {
    let quote = &original[14..14 + 28];
    let mut v = Vec::new();
    PacketBuilder::ethernet2(src.mac, dst.mac)
        .ipv4(src.ip.octets(), dst.ip.octets(), 64)
        .icmpv4(Icmpv4Type::DestinationUnreachable(
            DestUnreachableHeader::Port,
        ))
        .write(&mut v, quote)
        .expect("build icmp error");
    v
}

fn arp_request(sha: Mac, spa: Ipv4Addr, tpa: Ipv4Addr) -> Vec<u8> {
    let mut b = [0u8; 64];
    let n = arp::write_request(&mut b, sha, spa, tpa);
    b[..n].to_vec()
}

fn arp_reply(sha: Mac, spa: Ipv4Addr, tha: Mac, tpa: Ipv4Addr) -> Vec<u8> {
    let mut v = arp_request(sha, spa, tpa);
    v[0..6].copy_from_slice(&tha);
    v[21] = 2;
    v[32..38].copy_from_slice(&tha);
    v
}

fn dhcp_frame(mac: Mac, payload: &[u8]) -> Vec<u8> {
    udp_raw(
        mac,
        [0xff; 6],
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::BROADCAST,
        68,
        67,
        payload,
    )
}

fn parse_arp(f: &[u8]) -> filter::parse::Arp {
    match filter::parse_frame(f) {
        Ok(filter::Parsed::Arp { arp, .. }) => arp,
        other => panic!("not ARP: {other:?}"),
    }
}

fn udp_payload(f: &[u8]) -> Vec<u8> {
    let p = SlicedPacket::from_ethernet(f).expect("parse");
    match p.transport {
        Some(TransportSlice::Udp(u)) => u.payload().to_vec(),
        _ => panic!("not udp"),
    }
}

// ---------------------------------------------------------------------------
// Forwarding and rules
// ---------------------------------------------------------------------------

#[test]
fn forwarding_follows_rules() {
    let mut lab = Lab::new();
    lab.group("web");
    lab.allow(
        "web",
        Lab::spec("tcp", Some("80"), Some("172.31.0.0/24"), None),
    );
    let web = lab.instance("web", 10, &["web"]);
    let cli = lab.instance("cli", 11, &["default"]);
    // Allowed port: delivered, with the destination's MAC.
    let f = lab.expect_forward("cli", &tcp(&cli, &web, 40000, 80, "S", b""), "web");
    assert_eq!(f.data[0..6], web.mac);
    // Port not allowed, and a source outside the CIDR: no rule.
    lab.expect_drop(
        "cli",
        &tcp(&cli, &web, 40001, 81, "S", b""),
        DropReason::NoRule,
    );
    // `default` members talk to each other on anything (the default rule).
    let other = lab.instance("other", 12, &["default"]);
    lab.expect_forward("cli", &udp(&cli, &other, 5000, 5001), "other");
    lab.expect_forward("other", &ping(&other, &cli, 7), "cli");
    // Counted per port.
    let st = lab.dp.stats();
    assert_eq!(st.port("web").expect("web").counters.tx_packets, 1);
    assert_eq!(st.port("cli").expect("cli").counters.rx_packets, 3);
    assert_eq!(st.port("cli").expect("cli").counters.rx_dropped, 1);
}

#[test]
fn group_source_rules_match_verified_members_only() {
    let mut lab = Lab::new();
    lab.group("db");
    lab.group("app");
    lab.allow("db", Lab::spec("tcp", Some("5432"), None, Some("app")));
    let db = lab.instance("db", 20, &["db"]);
    let app = lab.instance("app", 21, &["app"]);
    let up = lab.uplink();
    lab.expect_forward("app", &tcp(&app, &db, 41000, 5432, "S", b""), "db");
    // The uplink claiming the app's address is stopped before any rule.
    let forged = tcp_raw(up.mac, db.mac, app.ip, db.ip, 41001, 5432, "S", 1, b"");
    lab.expect_drop("uplink", &forged, DropReason::UplinkSpoof);
    // The uplink with its own address is no member of `app`.
    lab.expect_drop(
        "uplink",
        &tcp(&up, &db, 41002, 5432, "S", b""),
        DropReason::NoRule,
    );
}

#[test]
fn stateful_replies_pass_and_new_connections_do_not() {
    let mut lab = Lab::new();
    lab.group("server");
    lab.group("client");
    lab.allow(
        "server",
        Lab::spec("tcp", Some("22"), Some("0.0.0.0/0"), None),
    );
    let srv = lab.instance("srv", 30, &["server"]);
    let cli = lab.instance("cli", 31, &["client"]);
    lab.expect_forward("cli", &tcp(&cli, &srv, 50000, 22, "S", b""), "srv");
    // The SYN-ACK and data back to the client pass although `client` has no rule.
    lab.expect_forward("srv", &tcp(&srv, &cli, 22, 50000, "SA", b""), "cli");
    lab.expect_forward("cli", &tcp(&cli, &srv, 50000, 22, "A", b"hello"), "srv");
    lab.expect_forward("srv", &tcp(&srv, &cli, 22, 50000, "PA", b"banner"), "cli");
    // A connection initiated by the server to the client is not a reply.
    lab.expect_drop(
        "srv",
        &tcp(&srv, &cli, 40000, 22, "S", b""),
        DropReason::NoRule,
    );
    // ICMP echo is not allowed by `server` (tcp 22 only) ...
    lab.expect_drop("cli", &ping(&cli, &srv, 9), DropReason::NoRule);
    // ... and a dropped request leaves no state: its "reply" is no reply.
    lab.expect_drop("srv", &pong(&srv, &cli, 9), DropReason::NoRule);
}

#[test]
fn echo_reply_needs_a_request() {
    let mut lab = Lab::new();
    lab.group("a");
    lab.group("b");
    let a = lab.instance("a", 40, &["a"]);
    let b = lab.instance("b", 41, &["b"]);
    lab.allow("b", Lab::spec("icmp", None, None, None));
    lab.expect_drop("b", &pong(&b, &a, 3), DropReason::NoRule);
    lab.expect_forward("a", &ping(&a, &b, 3), "b");
    lab.expect_forward("b", &pong(&b, &a, 3), "a");
}

#[test]
fn icmp_error_related_to_a_flow_passes_unrelated_is_dropped() {
    let mut lab = Lab::new();
    lab.group("a");
    lab.group("b");
    lab.allow("b", Lab::spec("udp", Some("5000"), None, None));
    let a = lab.instance("a", 50, &["a"]);
    let b = lab.instance("b", 51, &["b"]);
    let dgram = udp(&a, &b, 6000, 5000);
    lab.expect_forward("a", &dgram, "b");
    lab.expect_forward("b", &port_unreachable(&b, &a, &dgram), "a");
    let never_sent = udp(&a, &b, 6001, 5000);
    lab.expect_drop(
        "b",
        &port_unreachable(&b, &a, &never_sent),
        DropReason::UnrelatedIcmpError,
    );
}

#[test]
fn revoke_cuts_a_live_flow_in_revalidate_mode() {
    let mut lab = Lab::with_ct(CtConfig {
        on_revoke: RevokeMode::Revalidate,
        ..CtConfig::default()
    });
    lab.group("srv");
    let rule = Lab::spec("tcp", Some("22"), None, None);
    lab.allow("srv", rule.clone());
    let s = lab.instance("s", 60, &["srv"]);
    let c = lab.instance("c", 61, &["default"]);
    lab.expect_forward("c", &tcp(&c, &s, 50000, 22, "S", b""), "s");
    lab.expect_forward("s", &tcp(&s, &c, 22, 50000, "SA", b""), "c");
    lab.revoke("srv", rule);
    lab.expect_drop(
        "c",
        &tcp(&c, &s, 50000, 22, "A", b"more"),
        DropReason::Revoked,
    );
}

#[test]
fn revoke_keeps_a_live_flow_in_keep_mode() {
    let mut lab = Lab::with_ct(CtConfig {
        on_revoke: RevokeMode::Keep,
        ..CtConfig::default()
    });
    lab.group("srv");
    let rule = Lab::spec("tcp", Some("22"), None, None);
    lab.allow("srv", rule.clone());
    let s = lab.instance("s", 60, &["srv"]);
    let c = lab.instance("c", 61, &["default"]);
    lab.expect_forward("c", &tcp(&c, &s, 50000, 22, "S", b""), "s");
    lab.expect_forward("s", &tcp(&s, &c, 22, 50000, "SA", b""), "c");
    lab.revoke("srv", rule);
    lab.expect_forward("c", &tcp(&c, &s, 50000, 22, "A", b"more"), "s");
    lab.expect_forward("s", &tcp(&s, &c, 22, 50000, "A", b"ok"), "c");
    // A new connection is judged by the new rules.
    lab.expect_drop("c", &tcp(&c, &s, 50001, 22, "S", b""), DropReason::NoRule);
}

#[test]
fn conntrack_capacity_and_per_instance_quota() {
    let mut lab = Lab::with_ct(CtConfig {
        capacity: 8,
        per_instance_quota: 3,
        ..CtConfig::default()
    });
    lab.group("open");
    lab.allow("open", Lab::spec("udp", Some("1-65535"), None, None));
    let a = lab.instance("a", 70, &["default"]);
    let b = lab.instance("b", 71, &["open"]);
    let c = lab.instance("c", 72, &["default"]);
    for p in 0..3 {
        lab.expect_forward("a", &udp(&a, &b, 1000 + p, 2000), "b");
    }
    lab.expect_drop("a", &udp(&a, &b, 1003, 2000), DropReason::ConntrackQuota);
    // Another instance still has its own quota.
    for p in 0..3 {
        lab.expect_forward("c", &udp(&c, &b, 1000 + p, 2000), "b");
    }
    // Established flows keep working when the quota is used up.
    lab.expect_forward("a", &udp(&a, &b, 1000, 2000), "b");
    assert!(lab.dp.stats().conntrack_entries >= 6);
}

#[test]
fn conntrack_full_drops_new_flows() {
    let mut lab = Lab::with_ct(CtConfig {
        capacity: 4,
        per_instance_quota: 1000,
        ..CtConfig::default()
    });
    lab.group("open");
    lab.allow("open", Lab::spec("udp", Some("1-65535"), None, None));
    let a = lab.instance("a", 80, &["default"]);
    let b = lab.instance("b", 81, &["open"]);
    let mut sent = 0u16;
    let mut full = false;
    for p in 0..64u16 {
        let before = lab.drops(DropReason::ConntrackFull);
        let out = lab.send("a", &udp(&a, &b, 3000 + p, 4000));
        if lab.drops(DropReason::ConntrackFull) > before {
            assert!(out.is_empty());
            full = true;
            break;
        }
        sent += 1;
    }
    assert!(full, "table never filled");
    assert!(sent >= 4, "only {sent} flows fit a table of 4");
}

// ---------------------------------------------------------------------------
// ARP
// ---------------------------------------------------------------------------

#[test]
fn arp_answered_for_instances_and_gateway() {
    let mut lab = Lab::new();
    let a = lab.instance("a", 2, &["default"]);
    let b = lab.instance("b", 3, &["default"]);
    let up = lab.uplink();
    // Instance asks for another instance.
    let out = lab.send("a", &arp_request(a.mac, a.ip, b.ip));
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].0, "a", "answered back to the asker");
    let r = parse_arp(&out[0].1.data);
    assert_eq!(
        (r.op, r.sha, r.spa, r.tha, r.tpa),
        (2, b.mac, b.ip, a.mac, a.ip)
    );
    // ... and for the gateway.
    let gw = lab.dp.gateway();
    assert_eq!(gw, Ipv4Addr::new(172, 31, 0, 1));
    let out = lab.send("a", &arp_request(a.mac, a.ip, gw));
    let r = parse_arp(&out[0].1.data);
    assert_eq!(
        (out.len(), out[0].0, r.sha, r.spa),
        (1, "a", GATEWAY_MAC, gw)
    );
    // The uplink asks for an instance.
    let out = lab.send("uplink", &arp_request(up.mac, up.ip, b.ip));
    let r = parse_arp(&out[0].1.data);
    assert_eq!(
        (out.len(), out[0].0, r.sha, r.tpa),
        (1, "uplink", b.mac, up.ip)
    );
    assert_eq!(lab.dp.stats().arp_replies, 3);
    // A probe for one's own address and a gratuitous ARP are not answered.
    lab.expect_drop(
        "a",
        &arp_request(a.mac, Ipv4Addr::UNSPECIFIED, a.ip),
        DropReason::Broadcast,
    );
    lab.expect_drop("a", &arp_request(a.mac, a.ip, a.ip), DropReason::Broadcast);
}

#[test]
fn arp_for_other_addresses_goes_to_the_uplink() {
    let mut lab = Lab::new();
    let a = lab.instance("a", 2, &["default"]);
    let up = lab.uplink();
    let req = arp_request(a.mac, a.ip, up.ip);
    let f = lab.expect_forward("a", &req, "uplink");
    assert_eq!(f.data, req);
    // The uplink's reply reaches the instance it is addressed to.
    lab.expect_forward("uplink", &arp_reply(up.mac, up.ip, a.mac, a.ip), "a");
    // A request from the uplink for an unknown address is not flooded.
    lab.expect_drop(
        "uplink",
        &arp_request(up.mac, up.ip, ip_of(99)),
        DropReason::Broadcast,
    );
    // Without an uplink, there is nowhere to send it.
    let mut lab = Lab::new();
    let a = lab.instance("a", 2, &["default"]);
    lab.expect_drop(
        "a",
        &arp_request(a.mac, a.ip, UPLINK_IP),
        DropReason::UnknownDestination,
    );
}

// ---------------------------------------------------------------------------
// DHCP
// ---------------------------------------------------------------------------

#[test]
fn dhcp_discover_offer_request_ack() {
    let mut lab = Lab::new();
    let a = lab.instance("a", 5, &["default"]);
    let gw = lab.dp.gateway();
    let out = lab.send(
        "a",
        &dhcp_frame(
            a.mac,
            &dhcp::client_message(msg::DISCOVER, 0x1234, a.mac, None, None),
        ),
    );
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].0, "a");
    let offer = dhcp::parse_reply(&udp_payload(&out[0].1.data)).expect("offer");
    assert_eq!(offer.msg_type, msg::OFFER);
    assert_eq!(offer.xid, 0x1234);
    assert_eq!(offer.yiaddr, a.ip);
    assert_eq!(offer.mask, Some(Ipv4Addr::new(255, 255, 0, 0)));
    assert_eq!(offer.lease_secs, Some(LEASE));
    assert_eq!(offer.server_id, Some(gw));
    assert_eq!(offer.router, Some(gw));
    // An offer is not a lease: the port's instance is not up yet.
    assert_eq!(
        lab.dp.port_status(a.id),
        PortStatus::Attached { leased: false }
    );
    let req = dhcp::client_message(msg::REQUEST, 0x1235, a.mac, Some(a.ip), Some(gw));
    let out = lab.send("a", &dhcp_frame(a.mac, &req));
    assert_eq!(
        lab.dp.port_status(a.id),
        PortStatus::Attached { leased: true },
        "the ACK marks the port leased"
    );
    let ack = dhcp::parse_reply(&udp_payload(&out[0].1.data)).expect("ack");
    assert_eq!(
        (ack.msg_type, ack.xid, ack.yiaddr, ack.lease_secs),
        (msg::ACK, 0x1235, a.ip, Some(LEASE))
    );
    // Asking for someone else's address is refused.
    let req = dhcp::client_message(msg::REQUEST, 0x1236, a.mac, Some(ip_of(6)), Some(gw));
    let out = lab.send("a", &dhcp_frame(a.mac, &req));
    assert_eq!(
        dhcp::parse_reply(&udp_payload(&out[0].1.data))
            .expect("nak")
            .msg_type,
        msg::NAK
    );
    let st = lab.dp.stats();
    assert_eq!((st.dhcp_replies, st.total_drops()), (3, 0));
}

// ---------------------------------------------------------------------------
// Source check
// ---------------------------------------------------------------------------

#[test]
fn source_check_drops_every_kind_of_spoof() {
    let mut lab = Lab::new();
    let a = lab.instance("a", 2, &["default"]);
    let b = lab.instance("b", 3, &["default"]);
    let up = lab.uplink();
    // Spoofed MAC.
    let f = tcp_raw(mac_of(9), b.mac, a.ip, b.ip, 1, 2, "S", 0, b"");
    lab.expect_drop("a", &f, DropReason::SpoofedMac);
    // Spoofed IP.
    let f = tcp_raw(a.mac, b.mac, ip_of(9), b.ip, 1, 2, "S", 0, b"");
    lab.expect_drop("a", &f, DropReason::SpoofedIp);
    // A non-DHCP packet from 0.0.0.0 is a spoof too.
    let f = udp_raw(a.mac, b.mac, Ipv4Addr::UNSPECIFIED, b.ip, 1, 2, b"x");
    lab.expect_drop("a", &f, DropReason::SpoofedIp);
    // ARP claiming another address, or another MAC inside the ARP.
    lab.expect_drop(
        "a",
        &arp_request(a.mac, b.ip, ip_of(1)),
        DropReason::SpoofedArp,
    );
    let mut f = arp_request(a.mac, a.ip, b.ip);
    f[22..28].copy_from_slice(&mac_of(9));
    lab.expect_drop("a", &f, DropReason::SpoofedArp);
    // The uplink claiming an instance's address, by IP and by ARP, or the gateway's.
    let f = tcp_raw(up.mac, b.mac, a.ip, b.ip, 1, 2, "S", 0, b"");
    lab.expect_drop("uplink", &f, DropReason::UplinkSpoof);
    lab.expect_drop(
        "uplink",
        &arp_request(up.mac, a.ip, b.ip),
        DropReason::UplinkSpoof,
    );
    lab.expect_drop(
        "uplink",
        &arp_request(up.mac, lab.dp.gateway(), b.ip),
        DropReason::UplinkSpoof,
    );
    // A rogue DHCP server on an instance: an OFFER from port 67.
    let offer = udp_raw(
        a.mac,
        [0xff; 6],
        a.ip,
        Ipv4Addr::BROADCAST,
        67,
        68,
        &[2u8; 300],
    );
    lab.expect_drop("a", &offer, DropReason::RogueDhcp);
    // ... or a BOOTREPLY sent to the server port.
    let f = dhcp_frame(a.mac, &{
        let mut m = dhcp::client_message(msg::OFFER, 1, a.mac, None, None);
        m[0] = 2;
        m
    });
    lab.expect_drop("a", &f, DropReason::RogueDhcp);
    // VLAN-tagged from an instance.
    let mut f = Vec::new();
    PacketBuilder::ethernet2(a.mac, b.mac)
        .single_vlan(VlanId::try_new(5).expect("vid"))
        .ipv4(a.ip.octets(), b.ip.octets(), 64)
        .udp(1, 2)
        .write(&mut f, b"tagged")
        .expect("vlan frame");
    lab.expect_drop("a", &f, DropReason::VlanTagged);
    // Nothing else was counted.
    let st = lab.dp.stats();
    assert_eq!(st.total_drops(), 11);
    assert_eq!(st.port("a").expect("a").counters.rx_dropped, 8);
}

// ---------------------------------------------------------------------------
// Destinations
// ---------------------------------------------------------------------------

#[test]
fn unknown_destination_is_dropped_not_flooded() {
    let mut lab = Lab::new();
    let a = lab.instance("a", 2, &["default"]);
    let _b = lab.instance("b", 3, &["default"]);
    let up = lab.uplink();
    // From the uplink to an address no instance has.
    let f = tcp_raw(up.mac, [0xff; 6], up.ip, ip_of(99), 1, 2, "S", 0, b"");
    let f = {
        let mut f = f;
        f[0..6].copy_from_slice(&mac_of(99));
        f
    };
    lab.expect_drop("uplink", &f, DropReason::UnknownDestination);
    // Broadcasts are not flooded either.
    let f = udp_raw(a.mac, [0xff; 6], a.ip, Ipv4Addr::BROADCAST, 1, 2, b"hi");
    lab.expect_drop("a", &f, DropReason::Broadcast);
    let f = udp_raw(
        a.mac,
        [0xff; 6],
        a.ip,
        Ipv4Addr::new(172, 31, 255, 255),
        1,
        2,
        b"hi",
    );
    lab.expect_drop("a", &f, DropReason::Broadcast);
    // Nothing listens on the gateway address.
    let gw = lab.dp.gateway();
    let f = tcp_raw(a.mac, GATEWAY_MAC, a.ip, gw, 1, 22, "S", 0, b"");
    lab.expect_drop("a", &f, DropReason::UnknownDestination);
    // Other addresses from an instance go to the uplink (egress is free).
    let f = tcp_raw(
        a.mac,
        up.mac,
        a.ip,
        Ipv4Addr::new(198, 51, 100, 7),
        1,
        443,
        "S",
        0,
        b"",
    );
    lab.expect_forward("a", &f, "uplink");
    // Without an uplink they are dropped.
    let mut lab = Lab::new();
    let a = lab.instance("a", 2, &["default"]);
    let f = tcp_raw(
        a.mac,
        GATEWAY_MAC,
        a.ip,
        Ipv4Addr::new(198, 51, 100, 7),
        1,
        443,
        "S",
        0,
        b"",
    );
    lab.expect_drop("a", &f, DropReason::UnknownDestination);
}

#[test]
fn uplink_replies_come_back_and_gateway_mac_is_rewritten() {
    let mut lab = Lab::new();
    let a = lab.instance("a", 2, &["default"]);
    let up = lab.uplink();
    // Learn the uplink's MAC from one frame it sends (an ARP request for a).
    lab.send("uplink", &arp_request(up.mac, up.ip, a.ip));
    let ext = Ipv4Addr::new(198, 51, 100, 7);
    let f = tcp_raw(a.mac, GATEWAY_MAC, a.ip, ext, 33000, 443, "S", 5, b"");
    let out = lab.send("a", &f);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].0, "uplink");
    assert_eq!(
        out[0].1.data[0..6],
        up.mac,
        "gateway MAC replaced by the uplink's"
    );
    // The reply from outside is a tracked flow.
    let r = tcp_raw(up.mac, a.mac, ext, a.ip, 443, 33000, "SA", 9, b"");
    lab.expect_forward("uplink", &r, "a");
    // An unsolicited connection from outside is not.
    let r = tcp_raw(up.mac, a.mac, ext, a.ip, 443, 33001, "S", 9, b"");
    lab.expect_drop("uplink", &r, DropReason::NoRule);
}

// ---------------------------------------------------------------------------
// Offloads
// ---------------------------------------------------------------------------

/// A 20 000-byte TCP super-frame from `src` to `dst` with a TSO header.
fn super_frame(src: &Node, dst: &Node) -> (Vec<u8>, Vec<u8>, VnetHdr) {
    let payload: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8).collect();
    let f = tcp_raw(
        src.mac, dst.mac, src.ip, dst.ip, 45000, 80, "PA", 777, &payload,
    );
    let vnet = VnetHdr::tso4(1448);
    (f, payload, vnet)
}

#[test]
fn tso_super_frame_is_segmented_for_a_port_without_offloads() {
    let mut lab = Lab::new();
    lab.group("web");
    lab.allow("web", Lab::spec("tcp", Some("80"), None, None));
    let off = MemOptions {
        offloads: true,
        ..MemOptions::default()
    };
    let src = lab.instance_opts("src", 2, &["default"], off);
    let plain = lab.instance("plain", 3, &["web"]);
    let fast = lab.instance_opts("fast", 4, &["web"], off);

    // To a port without offloads: MSS-sized, valid segments that reassemble.
    let (f, payload, vnet) = super_frame(&src, &plain);
    let out = lab.send_vnet("src", &f, vnet);
    assert_eq!(out.len(), 20_000usize.div_ceil(1448));
    let mut data = Vec::new();
    for (i, (to, seg)) in out.iter().enumerate() {
        assert_eq!(*to, "plain");
        assert!(seg.vnet.is_plain());
        let p = SlicedPacket::from_ethernet(&seg.data).expect("segment parses");
        let Some(NetSlice::Ipv4(ip)) = &p.net else {
            panic!("ipv4")
        };
        let iph = ip.header().to_header();
        assert_eq!(
            iph.header_checksum,
            iph.calc_header_checksum(),
            "ip checksum of segment {i}"
        );
        let Some(TransportSlice::Tcp(t)) = &p.transport else {
            panic!("tcp")
        };
        let want = t
            .to_header()
            .calc_checksum_ipv4(&iph, t.payload())
            .expect("csum");
        assert_eq!(t.checksum(), want, "tcp checksum of segment {i}");
        assert_eq!(t.sequence_number(), 777 + (i * 1448) as u32);
        assert_eq!(t.psh(), i + 1 == out.len());
        assert!(t.payload().len() <= 1448);
        data.extend_from_slice(t.payload());
    }
    assert_eq!(data, payload);
    assert_eq!(lab.dp.stats().tso_segmented, 1);

    // To a port with offloads: one frame, header passed through unchanged.
    let (f, _, vnet) = super_frame(&src, &fast);
    let out = lab.send_vnet("src", &f, vnet);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].0, "fast");
    assert_eq!(out[0].1.vnet, vnet);
    assert_eq!(out[0].1.data, f);
}

#[test]
fn uso_super_frame_is_segmented_for_a_port_without_offloads() {
    let mut lab = Lab::new();
    let off = MemOptions {
        offloads: true,
        ..MemOptions::default()
    };
    let src = lab.instance_opts("src", 2, &["default"], off);
    let dst = lab.instance("dst", 3, &["default"]);
    let payload: Vec<u8> = (0..5000u32).map(|i| (i % 253) as u8).collect();
    let f = udp_raw(src.mac, dst.mac, src.ip, dst.ip, 4433, 4433, &payload);
    let vnet = VnetHdr {
        flags: VnetHdr::F_NEEDS_CSUM,
        gso_type: VnetHdr::GSO_UDP_L4,
        hdr_len: 42,
        gso_size: 1200,
        csum_start: 34,
        csum_offset: 6,
    };
    let out = lab.send_vnet("src", &f, vnet);
    assert_eq!(out.len(), 5);
    let mut data = Vec::new();
    for (to, seg) in &out {
        assert_eq!(*to, "dst");
        let p = SlicedPacket::from_ethernet(&seg.data).expect("datagram parses");
        let Some(NetSlice::Ipv4(ip)) = &p.net else {
            panic!("ipv4")
        };
        let iph = ip.header().to_header();
        let Some(TransportSlice::Udp(u)) = &p.transport else {
            panic!("udp")
        };
        let want = u
            .to_header()
            .calc_checksum_ipv4(&iph, u.payload())
            .expect("csum");
        assert_eq!(u.checksum(), want);
        data.extend_from_slice(u.payload());
    }
    assert_eq!(data, payload);
}

#[test]
fn partial_checksum_is_completed_for_a_port_without_offloads() {
    let mut lab = Lab::new();
    let off = MemOptions {
        offloads: true,
        ..MemOptions::default()
    };
    let src = lab.instance_opts("src", 2, &["default"], off);
    let dst = lab.instance("dst", 3, &["default"]);
    let good = tcp_raw(src.mac, dst.mac, src.ip, dst.ip, 1234, 80, "S", 1, b"abc");
    let mut partial = good.clone();
    // Leave the pseudo-header sum in the field, as a guest with csum offload does.
    let ph = [
        &good[26..34],
        &[0u8, 6],
        &((good.len() - 34) as u16).to_be_bytes()[..],
    ]
    .concat();
    let sum = switch::offload::fold(switch::offload::sum(&ph, 0));
    partial[50..52].copy_from_slice(&sum.to_be_bytes());
    let vnet = VnetHdr {
        flags: VnetHdr::F_NEEDS_CSUM,
        csum_start: 34,
        csum_offset: 16,
        ..VnetHdr::default()
    };
    let out = lab.send_vnet("src", &partial, vnet);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].1.data, good);
    assert!(out[0].1.vnet.is_plain());
    assert_eq!(lab.dp.stats().csum_completed, 1);
}

// ---------------------------------------------------------------------------
// Ports and threads
// ---------------------------------------------------------------------------

#[test]
fn gone_port_is_removed_and_counted() {
    let mut lab = Lab::new();
    let a = lab.instance("a", 2, &["default"]);
    let b = lab.instance("b", 3, &["default"]);
    b.peer.close();
    // Traffic to it is dropped as PortGone, then the port disappears.
    lab.expect_drop("a", &udp(&a, &b, 1, 2), DropReason::PortGone);
    let st = lab.dp.stats();
    assert_eq!(st.ports_gone, 1);
    assert!(st.port("b").is_none());
    assert_eq!(lab.dp.port_status(b.id), PortStatus::Gone);
    assert_eq!(
        lab.dp.port_status(a.id),
        PortStatus::Attached { leased: false }
    );
    assert!(
        lab.dp.remove_port(b.id).is_ok(),
        "removing a reaped port is not an error"
    );
    // The address is now unknown.
    lab.expect_drop("a", &udp(&a, &b, 1, 2), DropReason::UnknownDestination);
    assert!(lab.dp.remove_port(PortId(999)).is_err());
    assert_eq!(lab.dp.port_status(PortId(999)), PortStatus::Unknown);
}

#[test]
fn port_unknown_to_the_snapshot_fails_closed() {
    let mut lab = Lab::new();
    let a = lab.instance("a", 2, &["default"]);
    let up = lab.uplink();
    // A port attached before the snapshot that knows its instance.
    let (queues, peer) = mem_port_with(1, MemOptions::default());
    let (mac, ip) = (mac_of(9), ip_of(9));
    let id = lab
        .dp
        .add_port(PortSpec {
            name: "late".into(),
            role: PortRole::Instance {
                id: "i-00000009".into(),
                mac,
                ip,
            },
            queues,
        })
        .expect("port");
    let late = Node { id, peer, mac, ip };
    lab.nodes.insert("late", late.clone());
    lab.expect_drop(
        "uplink",
        &tcp(&up, &late, 1, 22, "S", b""),
        DropReason::NoRule,
    );
    lab.expect_drop("a", &udp(&a, &late, 1, 2), DropReason::NoRule);
    // Once published (in `default` with a), a's traffic passes, the uplink's not.
    let inst = Instance {
        id: "i-00000009".into(),
        owner: lab.owner.clone(),
        mac,
        ip,
        groups: vec!["default".into()],
    };
    lab.model.add_instance(inst).expect("instance");
    lab.publish();
    lab.expect_forward("a", &udp(&a, &late, 1, 2), "late");
    lab.expect_drop(
        "uplink",
        &tcp(&up, &late, 1, 22, "S", b""),
        DropReason::NoRule,
    );
    // An instance of the snapshot without a port is not sent to the uplink ...
    lab.dp.remove_port(id).expect("remove");
    lab.expect_drop("a", &udp(&a, &late, 1, 3), DropReason::UnknownDestination);
    // ... and the uplink may not use its address to pass as a `default` member.
    let forged = udp_raw(up.mac, a.mac, ip, a.ip, 1, 2, b"member?");
    lab.expect_drop("uplink", &forged, DropReason::UplinkSpoof);
    lab.expect_drop(
        "uplink",
        &arp_request(up.mac, ip, a.ip),
        DropReason::UplinkSpoof,
    );
}

#[test]
fn add_port_validates() {
    let lab = Lab::new();
    let q = || mem_port_with(1, MemOptions::default()).0;
    let inst = |ip: Ipv4Addr, mac: Mac| PortRole::Instance {
        id: "i-x".into(),
        mac,
        ip,
    };
    lab.dp
        .add_port(PortSpec {
            name: "a".into(),
            role: inst(ip_of(2), mac_of(2)),
            queues: q(),
        })
        .expect("first");
    let dup = lab.dp.add_port(PortSpec {
        name: "b".into(),
        role: inst(ip_of(2), mac_of(3)),
        queues: q(),
    });
    assert!(
        matches!(dup, Err(switch::SwitchError::DuplicateIp { .. })),
        "{dup:?}"
    );
    let gw = lab.dp.add_port(PortSpec {
        name: "c".into(),
        role: inst(ip_of(1), mac_of(4)),
        queues: q(),
    });
    assert!(matches!(gw, Err(switch::SwitchError::ReservedIp { .. })));
    let mc = lab.dp.add_port(PortSpec {
        name: "d".into(),
        role: inst(ip_of(5), [1, 0, 0, 0, 0, 1]),
        queues: q(),
    });
    assert!(matches!(mc, Err(switch::SwitchError::BadMac { .. })));
    let two = lab.dp.add_port(PortSpec {
        name: "e".into(),
        role: inst(ip_of(6), mac_of(6)),
        queues: vec![],
    });
    assert!(matches!(
        two,
        Err(switch::SwitchError::QueueCount {
            got: 0,
            workers: 1,
            ..
        })
    ));
    lab.dp
        .add_port(PortSpec {
            name: "u1".into(),
            role: PortRole::Uplink,
            queues: q(),
        })
        .expect("uplink");
    let u2 = lab.dp.add_port(PortSpec {
        name: "u2".into(),
        role: PortRole::Uplink,
        queues: q(),
    });
    assert!(matches!(u2, Err(switch::SwitchError::SecondUplink { .. })));
}

fn wait_for(mut cond: impl FnMut() -> bool, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn threaded_switch_forwards_on_every_worker_and_parks_when_idle() {
    let cfg = SwitchConfig {
        workers: 2,
        poll: PollMode::Adaptive,
        ..SwitchConfig::default()
    };
    let sw = Switch::start(cfg).expect("start");
    let mut model = Model::new(Limits::default());
    let owner = Owner(OWNER.into());
    let mut peers = Vec::new();
    for n in [2u8, 3] {
        let inst = default_instance(&owner, n, mac_of(n), ip_of(n));
        model.add_instance(inst.clone()).expect("instance");
        let (queues, peer) = mem_port_with(2, MemOptions::default());
        sw.add_port(PortSpec {
            name: inst.id.clone(),
            role: PortRole::Instance {
                id: inst.id,
                mac: mac_of(n),
                ip: ip_of(n),
            },
            queues,
        })
        .expect("port");
        peers.push(peer);
    }
    sw.publish_rules(compile(&model, 1));
    let a = Node {
        id: PortId(0),
        peer: peers[0].clone(),
        mac: mac_of(2),
        ip: ip_of(2),
    };
    let b = Node {
        id: PortId(1),
        peer: peers[1].clone(),
        mac: mac_of(3),
        ip: ip_of(3),
    };
    // 100 frames on each worker's queue.
    for i in 0..100u16 {
        a.peer
            .inject(
                usize::from(i % 2),
                &udp(&a, &b, 1000 + i, 53),
                VnetHdr::default(),
            )
            .expect("inject");
    }
    wait_for(|| b.peer.sent().0 == 100, "100 frames at b");
    let frames = b.peer.take();
    assert_eq!(
        frames.iter().filter(|f| f.queue == 0).count(),
        50,
        "worker 0 sends on queue 0"
    );
    assert_eq!(frames.iter().filter(|f| f.queue == 1).count(), 50);
    // Idle: workers park (adaptive).
    wait_for(|| sw.stats().parks > 4, "workers to park");
    // A gone port is removed by the housekeeper.
    b.peer.close();
    wait_for(|| sw.stats().ports_gone == 1, "gone port removed");
    assert_eq!(sw.stats().ports.len(), 1);
    // Still forwarding-capable: a is alive, and shutdown joins cleanly.
    let _ = a;
    sw.shutdown();
}

#[test]
fn busy_mode_switch_forwards_and_shuts_down() {
    let cfg = SwitchConfig {
        workers: 1,
        poll: PollMode::Busy,
        ..SwitchConfig::default()
    };
    let sw = Switch::start(cfg).expect("start");
    let (qa, pa) = mem_port_with(1, MemOptions::default());
    let (qu, pu) = mem_port_with(1, MemOptions::default());
    sw.add_port(PortSpec {
        name: "a".into(),
        role: PortRole::Instance {
            id: "i-a".into(),
            mac: mac_of(2),
            ip: ip_of(2),
        },
        queues: qa,
    })
    .expect("a");
    sw.add_port(PortSpec {
        name: "up".into(),
        role: PortRole::Uplink,
        queues: qu,
    })
    .expect("uplink");
    let a = Node {
        id: PortId(0),
        peer: pa,
        mac: mac_of(2),
        ip: ip_of(2),
    };
    let up = Node {
        id: PortId(1),
        peer: pu,
        mac: UPLINK_MAC,
        ip: UPLINK_IP,
    };
    a.peer.send(&udp(&a, &up, 5, 6)).expect("inject");
    let f = up
        .peer
        .recv_timeout(Duration::from_secs(5))
        .expect("frame at uplink");
    assert_eq!(f.data, udp(&a, &up, 5, 6));
    assert_eq!(sw.stats().parks, 0, "busy mode never parks");
    sw.shutdown();
}

#[test]
fn port_churn_under_traffic_neither_panics_nor_stalls() {
    let cfg = SwitchConfig {
        workers: 2,
        poll: PollMode::Adaptive,
        ..SwitchConfig::default()
    };
    let sw = Switch::start(cfg).expect("start");
    let mut model = Model::new(Limits::default());
    let owner = Owner(OWNER.into());
    for n in 2..=40u8 {
        model
            .add_instance(default_instance(&owner, n, mac_of(n), ip_of(n)))
            .expect("instance");
    }
    sw.publish_rules(compile(&model, 1));
    let add = |n: u8| {
        let (queues, peer) = mem_port_with(2, MemOptions::default());
        let id = sw
            .add_port(PortSpec {
                name: format!("i-{n:08x}"),
                role: PortRole::Instance {
                    id: format!("i-{n:08x}"),
                    mac: mac_of(n),
                    ip: ip_of(n),
                },
                queues,
            })
            .expect("port");
        Node {
            id,
            peer,
            mac: mac_of(n),
            ip: ip_of(n),
        }
    };
    let src = add(2);
    let sink = add(3);
    // Churn ports 4..=40 while the source sends to the sink and to churned ports.
    let mut live: Vec<Node> = Vec::new();
    let mut all_peers: Vec<MemPeer> = vec![sink.peer.clone()];
    let mut sent = 0u64;
    let mut closed = 0u64;
    for round in 0..200u32 {
        let n = 4 + (round % 37) as u8;
        if let Some(pos) = live.iter().position(|x| x.ip == ip_of(n)) {
            let gone = live.swap_remove(pos);
            if round % 3 == 0 {
                // Let the workers find it gone; its address is free once reaped.
                gone.peer.close();
                closed += 1;
                wait_for(|| sw.stats().ports_gone == closed, "closed port reaped");
            } else {
                sw.remove_port(gone.id).expect("remove");
            }
        } else {
            let node = add(n);
            all_peers.push(node.peer.clone());
            live.push(node);
        }
        for q in 0..2 {
            let to_churned = Node {
                id: PortId(0),
                peer: sink.peer.clone(),
                mac: mac_of(n),
                ip: ip_of(n),
            };
            for f in [
                udp(&src, &to_churned, 1000 + round as u16, 7),
                udp(&src, &sink, 2000 + round as u16, 7),
            ] {
                src.peer.inject(q, &f, VnetHdr::default()).expect("inject");
                sent += 1;
            }
        }
    }
    assert!(closed > 0);
    // Every frame is accounted for: delivered to some port or dropped with a count.
    let accounted = || {
        let st = sw.stats();
        let dropped = st.port("i-00000002").map_or(0, |p| p.counters.rx_dropped);
        let delivered: u64 = all_peers.iter().map(|p| p.sent().0).sum();
        (delivered, dropped)
    };
    wait_for(
        || {
            let (d, x) = accounted();
            d + x == sent
        },
        "all frames accounted for",
    );
    assert_eq!(
        sink.peer.sent().0,
        400,
        "every frame to the stable sink arrived"
    );
    let (delivered, dropped) = accounted();
    assert!(delivered > 400, "no frame reached a churned port");
    let st = sw.stats();
    let why: u64 = [DropReason::UnknownDestination, DropReason::PortGone]
        .iter()
        .map(|r| st.drop_count(*r))
        .sum();
    assert_eq!(
        why,
        dropped,
        "drops other than unknown/gone destination: {:?}",
        st.nonzero_drops().collect::<Vec<_>>()
    );
    sw.shutdown();
}

/// Mutated and truncated frames of every kind, from instances and the uplink:
/// the pipeline never panics, and every frame ends in exactly one outcome, each
/// drop counted once under its reason and on its port.
#[test]
fn mutated_frames_never_panic_and_are_all_accounted_for() {
    let mut lab = Lab::new();
    lab.group("web");
    lab.allow("web", Lab::spec("tcp", Some("1-1024"), None, None));
    let a = lab.instance("a", 2, &["default", "web"]);
    let b = lab.instance("b", 3, &["default"]);
    let up = lab.uplink();
    let gw = lab.dp.gateway();
    let templates: Vec<(&str, Vec<u8>)> = vec![
        ("a", tcp(&a, &b, 1000, 80, "S", b"x")),
        ("b", tcp(&b, &a, 1000, 80, "S", b"")),
        ("a", udp(&a, &b, 53, 53)),
        ("a", ping(&a, &b, 1)),
        ("b", port_unreachable(&b, &a, &udp(&a, &b, 9, 9))),
        ("a", arp_request(a.mac, a.ip, b.ip)),
        ("uplink", arp_request(up.mac, up.ip, a.ip)),
        ("uplink", tcp(&up, &a, 5, 22, "S", b"")),
        (
            "a",
            dhcp_frame(
                a.mac,
                &dhcp::client_message(msg::DISCOVER, 1, a.mac, None, None),
            ),
        ),
        (
            "a",
            dhcp_frame(
                a.mac,
                &dhcp::client_message(msg::REQUEST, 2, a.mac, Some(a.ip), Some(gw)),
            ),
        ),
    ];
    let mut rng = 0x1234_5678_9abc_def1u64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let ids: BTreeMap<&str, PortId> = lab.nodes.iter().map(|(k, n)| (*k, n.id)).collect();
    let mut total = switch::worker::BurstResult::default();
    let mut frames = 0usize;
    for _ in 0..20_000 {
        let (from, t) = &templates[(next() % templates.len() as u64) as usize];
        let mut f = t.clone();
        match next() % 4 {
            0 => f.truncate((next() % (f.len() as u64 + 1)) as usize),
            1 => {
                for _ in 0..(1 + next() % 4) {
                    let i = (next() % f.len() as u64) as usize;
                    f[i] ^= 1 << (next() % 8);
                }
            }
            2 => {
                // Mutate a header byte (Ethernet, IP, L4 headers).
                let i = (next() % f.len().min(60) as u64) as usize;
                f[i] = next() as u8;
            }
            _ => f.extend((0..next() % 64).map(|_| next() as u8)),
        }
        let r = lab
            .w
            .process_burst([(ids[from], f.as_slice(), VnetHdr::default())]);
        frames += 1;
        if frames.is_multiple_of(1000) {
            for n in lab.nodes.values() {
                n.peer.take();
            }
        }
        total.forwarded += r.forwarded;
        total.answered += r.answered;
        total.consumed += r.consumed;
        total.dropped += r.dropped;
    }
    assert_eq!(
        total.forwarded + total.answered + total.consumed + total.dropped,
        frames
    );
    let st = lab.dp.stats();
    assert_eq!(
        st.total_drops(),
        total.dropped as u64,
        "every drop counted once"
    );
    let rx: u64 = st.ports.iter().map(|p| p.counters.rx_packets).sum();
    let rx_dropped: u64 = st.ports.iter().map(|p| p.counters.rx_dropped).sum();
    assert_eq!(rx, frames as u64);
    assert_eq!(rx_dropped, total.dropped as u64);
    assert_eq!(st.arp_replies + st.dhcp_replies, total.answered as u64);
    assert_eq!(st.drop_count(DropReason::TxFailed), 0, "rings drained");
    // The mix exercised many reasons, and some frames still got through.
    assert!(
        st.nonzero_drops().count() >= 8,
        "{:?}",
        st.nonzero_drops().collect::<Vec<_>>()
    );
    assert!(total.forwarded > 1000 && total.answered > 100, "{total:?}");
}
