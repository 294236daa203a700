//! IPv6 housekeeping through the whole datapath on in-memory ports (no root):
//! router solicitations answered with the switch's prefix, neighbor
//! solicitations answered for instances and the router (never flooded), DAD
//! and MLD absorbed without counting drops, and the IPv6 source checks
//! (forged NS/NA, rogue RA/redirect, another instance's address).

use std::net::Ipv6Addr;
use std::sync::Arc;

use filter::model::{Instance, Limits, Owner, RuleSpec, eui64_address};
use filter::{DropReason, Mac, Model, compile};
use ipnet::Ipv6Net;
use switch::arp::GATEWAY_MAC;
use switch::nd::{self, ty};
use switch::port::VnetHdr;
use switch::worker::Worker;
use switch::{
    Datapath, MemFrame, MemOptions, MemPeer, PortRole, PortSpec, SwitchConfig, mem_port_with,
};

const PREFIX: &str = "fd5a:1b2c:3d4e::/64";

struct Lab {
    dp: Arc<Datapath>,
    w: Worker,
    peers: Vec<(&'static str, MemPeer)>,
    model: Model,
    owner: Owner,
    generation: u64,
}

fn mac_of(n: u8) -> Mac {
    [0x02, 0, 0, 0, 0, n]
}

fn prefix() -> Ipv6Net {
    PREFIX.parse().unwrap()
}

fn g(n: u8) -> Ipv6Addr {
    eui64_address(prefix(), mac_of(n))
}

fn ll(n: u8) -> Ipv6Addr {
    filter::model::link_local_address(mac_of(n))
}

impl Lab {
    /// Instances a (2) and b (3) in `default`, and an uplink.
    fn new() -> Lab {
        let dp = Datapath::new(SwitchConfig {
            workers: 1,
            subnet6: Some(prefix()),
            ..SwitchConfig::default()
        })
        .expect("datapath");
        let w = dp.worker(0);
        let owner = Owner("111122223333".into());
        let mut model = Model::new(Limits::default());
        model.set_subnet6(Some(prefix())).unwrap();
        model.add_group(&owner, "web", "d").unwrap();
        let mut peers = Vec::new();
        let mut roles = Vec::new();
        for (name, n) in [("a", 2u8), ("b", 3)] {
            let ip = std::net::Ipv4Addr::new(172, 31, 0, n);
            let id = format!("i-{n:08x}");
            model
                .add_instance(Instance {
                    id: id.clone(),
                    owner: owner.clone(),
                    mac: mac_of(n),
                    ip,
                    groups: vec!["web".into()],
                })
                .unwrap();
            roles.push((
                name,
                PortRole::Instance {
                    id,
                    mac: mac_of(n),
                    ip,
                },
            ));
        }
        roles.push(("uplink", PortRole::Uplink));
        dp.publish_rules(compile(&model, 1));
        for (name, role) in roles {
            let (queues, peer) = mem_port_with(1, MemOptions::default());
            dp.add_port(PortSpec {
                name: name.into(),
                role,
                queues,
            })
            .expect("port");
            peers.push((name, peer));
        }
        Lab {
            dp,
            w,
            peers,
            model,
            owner,
            generation: 1,
        }
    }

    /// Authorize `proto`/`ports` from `cidr` into group `web` and publish.
    fn allow(&mut self, proto: &str, ports: &str, cidr: &str) {
        let spec = RuleSpec {
            proto: Some(proto.into()),
            ports: Some(ports.into()),
            icmp: None,
            cidrs: vec![cidr.into()],
            groups: vec![],
        };
        self.model
            .authorize(&self.owner, "web", &spec)
            .expect("authorize");
        self.generation += 1;
        self.dp.publish_rules(compile(&self.model, self.generation));
    }

    fn send(&mut self, from: &str, frame: &[u8]) -> Vec<(&'static str, MemFrame)> {
        let p = &self.peers.iter().find(|p| p.0 == from).unwrap().1;
        p.inject(0, frame, VnetHdr::default()).expect("inject");
        while self.w.poll_once() > 0 {}
        let mut out = Vec::new();
        for (name, p) in &self.peers {
            for f in p.take() {
                out.push((*name, f));
            }
        }
        out
    }

    #[track_caller]
    fn expect_drop(&mut self, from: &str, frame: &[u8], r: DropReason) {
        let before = self.dp.stats();
        let out = self.send(from, frame);
        let after = self.dp.stats();
        assert!(out.is_empty(), "expected drop {r:?}, got {}", out.len());
        assert_eq!(after.drop_count(r), before.drop_count(r) + 1, "{r:?}");
        assert_eq!(after.total_drops(), before.total_drops() + 1);
    }

    /// Consumed without an answer and without a drop.
    #[track_caller]
    fn expect_absorbed(&mut self, from: &str, frame: &[u8]) {
        let before = self.dp.stats();
        let out = self.send(from, frame);
        let after = self.dp.stats();
        assert!(out.is_empty(), "nothing sent, got {}", out.len());
        assert_eq!(after.total_drops(), before.total_drops(), "no drop");
        assert_eq!(after.nd_absorbed, before.nd_absorbed + 1);
    }
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

fn ns(n: u8, src: Ipv6Addr, target: Ipv6Addr, opt: bool) -> Vec<u8> {
    let ll = opt.then_some((1, mac_of(n)));
    icmp(
        mac_of(n),
        src,
        nd::solicited_node(target),
        &nd::nd_message(ty::NS, 0, target, ll),
    )
}

#[test]
fn router_solicitation_gets_an_advertisement_of_the_prefix() {
    let mut lab = Lab::new();
    let rs = [ty::RS, 0, 0, 0, 0, 0, 0, 0];
    let all_routers = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 2);
    let out = lab.send("a", &icmp(mac_of(2), ll(2), all_routers, &rs));
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].0, "a", "answered back, not flooded");
    let v = nd::parse(&out[0].1.data).unwrap();
    assert_eq!((v.eth_dst, v.eth_src), (mac_of(2), GATEWAY_MAC));
    assert_eq!((v.src, v.dst, v.hop_limit), (nd::router_ll(), ll(2), 255));
    assert_eq!(v.icmp_type(), Some(ty::RA));
    assert_eq!(nd::icmp6_checksum(v.src, v.dst, v.l4), 0);
    assert_eq!(&v.l4[40..56], &prefix().network().octets());
    // From `::` (before the link-local is ready): to all nodes.
    let out = lab.send(
        "a",
        &icmp(mac_of(2), Ipv6Addr::UNSPECIFIED, all_routers, &rs),
    );
    assert_eq!(&out[0].1.data[..6], &[0x33, 0x33, 0, 0, 0, 1]);
    let st = lab.dp.stats();
    assert_eq!((st.router_adverts, st.total_drops()), (2, 0));
}

#[test]
fn neighbor_solicitations_are_answered_by_the_switch() {
    let mut lab = Lab::new();
    // For another instance's address: answered with its MAC.
    let out = lab.send("a", &ns(2, g(2), g(3), true));
    assert_eq!(out.len(), 1, "one answer, nothing flooded");
    let (to, f) = &out[0];
    let v = nd::parse(&f.data).unwrap();
    assert_eq!(*to, "a");
    assert_eq!((v.icmp_type(), v.src, v.dst), (Some(ty::NA), g(3), g(2)));
    assert_eq!(&v.l4[26..32], &mac_of(3), "target link-layer address");
    assert_eq!(nd::icmp6_checksum(v.src, v.dst, v.l4), 0);
    // For the router (link-local and prefix::1): the gateway MAC, R flag.
    for target in [nd::router_ll(), nd::router_addr(prefix())] {
        let out = lab.send("a", &ns(2, ll(2), target, true));
        let v = nd::parse(&out[0].1.data).unwrap();
        assert_eq!(&v.l4[26..32], &GATEWAY_MAC);
        assert_eq!(v.l4[4] & 0x80, 0x80, "router flag");
    }
    // The uplink asks for an instance: answered to the uplink.
    let up_mac = [2, 0xaa, 0, 0, 0, 1];
    let up_ip: Ipv6Addr = "fd5a:1b2c:3d4e::ff".parse().unwrap();
    let q = icmp(
        up_mac,
        up_ip,
        nd::solicited_node(g(3)),
        &nd::nd_message(ty::NS, 0, g(3), Some((1, up_mac))),
    );
    let out = lab.send("uplink", &q);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].0, "uplink");
    // For a link-local address nobody has: absorbed, not flooded.
    lab.expect_absorbed("a", &ns(2, g(2), ll(99), true));
    let st = lab.dp.stats();
    assert_eq!((st.nd_replies, st.total_drops()), (4, 0));
    // For an address of the /64 no instance has (the outside world's):
    // asked on the uplink (as ARP is), and its answer comes back to a.
    let outside: Ipv6Addr = "fd5a:1b2c:3d4e::ff:10".parse().unwrap();
    let q = ns(2, g(2), outside, true);
    let out = lab.send("a", &q);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].0, "uplink");
    assert_eq!(out[0].1.data, q);
    let na = icmp(
        up_mac,
        outside,
        g(2),
        &nd::nd_message(ty::NA, 0x60, outside, Some((2, up_mac))),
    );
    let out = lab.send("uplink", &na);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].0, "a");
    assert_eq!(&out[0].1.data[0..6], &mac_of(2));
    // An NA from the uplink claiming an instance's address: refused.
    let forged = icmp(
        up_mac,
        up_ip,
        g(2),
        &nd::nd_message(ty::NA, 0x60, g(3), Some((2, up_mac))),
    );
    let out = lab.send("uplink", &forged);
    assert!(out.is_empty());
    assert_eq!(lab.dp.stats().drop_count(DropReason::UplinkSpoof), 1);
}

#[test]
fn dad_and_mld_are_absorbed_not_dropped() {
    let mut lab = Lab::new();
    lab.expect_absorbed("a", &ns(2, Ipv6Addr::UNSPECIFIED, g(2), false));
    lab.expect_absorbed("a", &ns(2, Ipv6Addr::UNSPECIFIED, ll(2), false));
    let mld = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 0x16);
    lab.expect_absorbed(
        "a",
        &icmp(
            mac_of(2),
            ll(2),
            mld,
            &[ty::MLD2_REPORT, 0, 0, 0, 0, 0, 0, 0],
        ),
    );
    // An unsolicited NA for one's own address.
    lab.expect_absorbed(
        "a",
        &icmp(
            mac_of(2),
            g(2),
            Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1),
            &nd::nd_message(ty::NA, 0x20, g(2), Some((2, mac_of(2)))),
        ),
    );
    assert_eq!(
        lab.dp.stats().drop_count(DropReason::UnsupportedEthertype),
        0
    );
}

#[test]
fn forged_neighbor_discovery_and_rogue_routers_are_dropped() {
    let mut lab = Lab::new();
    let all = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
    // NA claiming b's address, from a.
    lab.expect_drop(
        "a",
        &icmp(
            mac_of(2),
            g(2),
            all,
            &nd::nd_message(ty::NA, 0x20, g(3), Some((2, mac_of(2)))),
        ),
        DropReason::SpoofedNd,
    );
    // NA for the router's address (poisoning the default route).
    lab.expect_drop(
        "a",
        &icmp(
            mac_of(2),
            ll(2),
            all,
            &nd::nd_message(ty::NA, 0xa0, nd::router_ll(), Some((2, mac_of(2)))),
        ),
        DropReason::SpoofedNd,
    );
    // NS from b's address, and DAD for b's address.
    lab.expect_drop(
        "a",
        &ns(2, g(3), nd::router_ll(), false),
        DropReason::SpoofedNd,
    );
    lab.expect_drop(
        "a",
        &ns(2, Ipv6Addr::UNSPECIFIED, g(3), false),
        DropReason::SpoofedNd,
    );
    // Router advertisement and redirect from a guest: RA guard.
    let ra = [ty::RA, 0, 0, 0, 64, 0, 0x07, 0x08, 0, 0, 0, 0, 0, 0, 0, 0];
    lab.expect_drop(
        "a",
        &icmp(mac_of(2), ll(2), all, &ra),
        DropReason::RogueRouterAdvert,
    );
    lab.expect_drop(
        "a",
        &icmp(
            mac_of(2),
            ll(2),
            g(3),
            &nd::nd_message(ty::REDIRECT, 0, g(3), None),
        ),
        DropReason::RogueRouterAdvert,
    );
    // Data from b's address (an echo request) and from a foreign MAC.
    let echo = [128u8, 0, 0, 0, 0, 1, 0, 1];
    lab.expect_drop(
        "a",
        &icmp(mac_of(2), g(3), g(2), &echo),
        DropReason::SpoofedIp,
    );
    lab.expect_drop(
        "a",
        &icmp(mac_of(9), g(2), g(3), &echo),
        DropReason::SpoofedMac,
    );
    // The uplink may not speak for an instance.
    lab.expect_drop(
        "uplink",
        &icmp([2, 0xaa, 0, 0, 0, 1], g(2), g(3), &echo),
        DropReason::UplinkSpoof,
    );
}

fn tcp6(from: u8, to: Ipv6Addr, src: Ipv6Addr, sport: u16, dport: u16, syn: bool) -> Vec<u8> {
    let b = etherparse::PacketBuilder::ethernet2(mac_of(from), GATEWAY_MAC)
        .ipv6(src.octets(), to.octets(), 64)
        .tcp(sport, dport, 1000, 64240);
    let b = if syn { b.syn() } else { b.ack(1) };
    let mut out = Vec::new();
    b.write(&mut out, b"").unwrap();
    out
}

#[test]
fn ipv6_data_is_judged_by_ipv6_rules_and_tracked() {
    let mut lab = Lab::new();
    // No rule: refused at b.
    let syn = tcp6(2, g(3), g(2), 40000, 80, true);
    lab.expect_drop("a", &syn, DropReason::NoRule);
    // An IPv4-only rule does not open IPv6.
    lab.allow("tcp", "80", "0.0.0.0/0");
    lab.expect_drop("a", &syn, DropReason::NoRule);
    // An IPv6 rule does: the SYN reaches b (its MAC written), and b's reply
    // comes back without a rule for it.
    lab.allow("tcp", "80", "::/0");
    let out = lab.send("a", &syn);
    assert_eq!(out.len(), 1, "forwarded once");
    assert_eq!(out[0].0, "b");
    assert_eq!(&out[0].1.data[0..6], &mac_of(3));
    assert_eq!(out[0].1.data[6..], syn[6..]);
    let reply = tcp6(3, g(2), g(3), 80, 40000, false);
    let out = lab.send("b", &reply);
    assert_eq!((out.len(), out[0].0), (1, "a"), "stateful reply");
    // Another port: still refused.
    lab.expect_drop(
        "a",
        &tcp6(2, g(3), g(2), 40001, 81, true),
        DropReason::NoRule,
    );
    // To the outside: through the uplink (default egress allows ::/0).
    let outside: Ipv6Addr = "fd99::1".parse().unwrap();
    let out = lab.send("a", &tcp6(2, outside, g(2), 40002, 443, true));
    assert_eq!((out.len(), out[0].0), (1, "uplink"));
    // From the uplink to b's port 80: allowed by ::/0.
    let up_mac = [2, 0xaa, 0, 0, 0, 1];
    let mut f = tcp6(9, g(3), outside, 50000, 80, true);
    f[6..12].copy_from_slice(&up_mac);
    let out = lab.send("uplink", &f);
    assert_eq!((out.len(), out[0].0), (1, "b"));
    // To the router's address or a link-local one: nowhere.
    lab.expect_drop(
        "a",
        &tcp6(2, nd::router_addr(prefix()), g(2), 40003, 80, true),
        DropReason::UnknownDestination,
    );
    assert_eq!(
        lab.dp.stats().drop_count(DropReason::UnsupportedEthertype),
        0
    );
}
