//! Property tests: the compiled [`Snapshot`] and the lock-free [`Conntrack`] agree
//! with the naive [`filter::reference`] evaluator.
//!
//! Random models (two owners, `default` plus three groups each, CIDR and
//! group-source rules of every protocol, instances in random group sets) are driven
//! through random operation sequences: packets (TCP with assorted flags, UDP,
//! ICMP requests/replies/errors related to earlier packets or not, other
//! protocols, first and later fragments, from instances and outside addresses;
//! replays of earlier packets as replies, retransmissions or same-port TCP
//! reconnects), edits (authorize, revoke, re-authorize a revoked rule, launch,
//! terminate) each followed by a recompile with a new generation, and clock jumps
//! across every timeout. After every packet the
//! verdicts of both implementations, and of `Snapshot::allows` vs the reference
//! rule scan, must be equal — in both [`RevokeMode`]s. Capacity limits are out of
//! scope here (big table); they have unit tests in `conntrack`.
//!
//! 10,000 cases in total: 4,000 per revoke mode and 2,000 stateless ones. Plus
//! 1,000 cases of random edit sequences (groups created and deleted too) where a
//! snapshot kept up to date by [`Compiler::apply`] must allow exactly what one
//! compiled from scratch allows, and a check that `Model::undo` restores the
//! model.
//!
//! IPv6: models are dual-stack (`set_subnet6`: every instance has its SLAAC
//! address) and their rules include IPv6 CIDRs (inside and outside the
//! instances' /64, down to a single instance) and `icmpv6` rules; every
//! packet of the generator is also judged as its IPv6 twin ([`to6`]: the same
//! instances by their IPv6 address, outside addresses mapped to IPv6 ones,
//! ICMP kinds to their ICMPv6 types), where the snapshot's
//! `admitting_rule6`/`egress_allows6` must equal the reference's IPv6
//! decisions and name the first matching rule — from scratch and kept up to
//! date by `Compiler::apply`.
//!
//! Stateful IPv6: each packet of the conntrack-vs-reference runs is sent as
//! IPv4, as its IPv6 twin, or both (`PacketOp::fam`), so IPv6 flows, replies,
//! ICMPv6 echo and errors (ICMP 3/1 becomes Packet Too Big), fragments and
//! revalidation go through `Conntrack::judge6`, which must agree with
//! `Reference::judge6` (and share nothing with the IPv4 flows) in both
//! revoke modes; `ipv6_stateful_generators_cover_every_verdict` checks that
//! the twins reach every verdict and every stateful reason to pass.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};

use filter::compile::{Compiler, compile};
use filter::conntrack::{Conntrack, CtConfig, RevokeMode, Timeouts};
use filter::model::{Instance, Limits, Model, Owner, Ports, Proto, Rule, Source};
use filter::reference::{self, Reference};
use filter::{FlowKey, FlowKey6, Frag, IcmpKind, L4, Packet, Packet6, proto, tcp_flags};
use proptest::prelude::*;

const OWNERS: [&str; 2] = ["111111111111", "222222222222"];
const GROUPS: [&str; 4] = ["default", "g1", "g2", "g3"];
const CIDRS: [&str; 7] = [
    "0.0.0.0/0",
    "172.31.0.0/29",
    "172.31.0.4/30",
    "172.31.0.2/32",
    "10.0.0.0/8",
    "10.1.0.0/16",
    "192.0.2.0/24",
];
/// The instances' IPv6 /64.
const SUBNET6: &str = "fd00:5::/64";
/// IPv6 rule CIDRs: everything, the instances' /64, the instances numbered
/// below 16 (their SLAAC addresses end in `ff:fe00:n01`, see
/// [`World::launch`]), instance 3 alone, outside prefixes and one host.
const CIDRS6: [&str; 7] = [
    "::/0",
    "fd00:5::/64",
    "fd00:5::ff:fe00:0/116",
    "fd00:5::ff:fe00:300/120",
    "2001:db8::/32",
    "2001:db8:1::/48",
    "2001:db8::1/128",
];
/// Instance addresses come from the first 8; the rest are "outside".
const ADDRS: [[u8; 4]; 11] = [
    [172, 31, 0, 1],
    [172, 31, 0, 2],
    [172, 31, 0, 3],
    [172, 31, 0, 4],
    [172, 31, 0, 5],
    [172, 31, 0, 6],
    [172, 31, 0, 7],
    [172, 31, 0, 8],
    [10, 0, 0, 1],
    [10, 1, 2, 3],
    [192, 0, 2, 9],
];
const PORTS: [u16; 7] = [20, 21, 22, 23, 25, 1000, 1001];
const TCP_FLAGS: [u8; 6] = [
    tcp_flags::SYN,
    tcp_flags::SYN | tcp_flags::ACK,
    tcp_flags::ACK,
    tcp_flags::ACK | tcp_flags::PSH,
    tcp_flags::FIN | tcp_flags::ACK,
    tcp_flags::RST,
];
const TIME_STEPS: [u32; 9] = [0, 0, 1, 5, 29, 31, 119, 181, 432_001];

fn owner(i: usize) -> Owner {
    Owner(OWNERS[i % OWNERS.len()].to_owned())
}

#[derive(Clone, Debug)]
enum RuleGen {
    Tcp(u16, u16),
    Udp(u16, u16),
    Icmp(Option<u8>, Option<u8>),
    Icmpv6(Option<u8>, Option<u8>),
    All,
}

fn rule_gen() -> impl Strategy<Value = RuleGen> {
    let port = prop::sample::select(&PORTS[..]);
    let icmp_ty = prop::option::of(prop::sample::select(&[0u8, 3, 8, 11][..]));
    let icmp_code = prop::option::of(0u8..2);
    prop_oneof![
        (port.clone(), 0u16..4).prop_map(|(p, w)| RuleGen::Tcp(p, p.saturating_add(w))),
        (port, 0u16..4).prop_map(|(p, w)| RuleGen::Udp(p, p.saturating_add(w))),
        (icmp_ty, icmp_code.clone())
            .prop_map(|(t, c)| RuleGen::Icmp(t, if t.is_some() { c } else { None })),
        (
            prop::option::of(prop::sample::select(&[1u8, 3, 128, 129, 135][..])),
            icmp_code
        )
            .prop_map(|(t, c)| RuleGen::Icmpv6(t, if t.is_some() { c } else { None })),
        Just(RuleGen::All),
    ]
}

#[derive(Clone, Debug)]
enum SrcGen {
    Cidr(usize),
    Cidr6(usize),
    Group(usize, usize),
}

fn src_gen() -> impl Strategy<Value = SrcGen> {
    prop_oneof![
        3 => (0..CIDRS.len()).prop_map(SrcGen::Cidr),
        2 => (0..CIDRS6.len()).prop_map(SrcGen::Cidr6),
        2 => (0..OWNERS.len(), 0..GROUPS.len()).prop_map(|(o, g)| SrcGen::Group(o, g)),
    ]
}

fn make_rule(r: &RuleGen, s: &SrcGen) -> Rule {
    let (proto, ports) = match *r {
        RuleGen::Tcp(lo, hi) => (Proto::Tcp, Ports::Range(lo, hi)),
        RuleGen::Udp(lo, hi) => (Proto::Udp, Ports::Range(lo, hi)),
        RuleGen::Icmp(ty, code) => (Proto::Icmp, Ports::Icmp { ty, code }),
        RuleGen::Icmpv6(ty, code) => (Proto::Icmpv6, Ports::Icmp { ty, code }),
        RuleGen::All => (Proto::All, Ports::None),
    };
    let source = match *s {
        SrcGen::Cidr(i) => Source::Cidr(CIDRS[i].parse().unwrap()),
        SrcGen::Cidr6(i) => Source::Cidr6(CIDRS6[i].parse().unwrap()),
        SrcGen::Group(o, g) => Source::Group {
            owner: owner(o),
            group: GROUPS[g].to_owned(),
        },
    };
    Rule {
        proto,
        ports,
        source,
    }
}

#[derive(Clone, Debug)]
enum PktGen {
    Tcp {
        flags: u8,
    },
    Udp,
    IcmpRequest {
        ty: u8,
    },
    IcmpReply {
        ty: u8,
    },
    /// An error about an earlier packet (`hist` index, maybe reversed) or a made-up
    /// flow.
    IcmpError {
        ty: u8,
        code: u8,
        hist: Option<(usize, bool)>,
    },
    IcmpOther,
    Other,
}

/// How an earlier packet is replayed.
#[derive(Clone, Copy, Debug)]
enum Replay {
    /// Reversed: a reply.
    Reply,
    /// As it was: a retransmission by the same side.
    Retransmit,
    /// As it was, but a TCP packet becomes a bare SYN: the same side connects
    /// again on the same ports.
    Reconnect,
    /// A non-first fragment of the same packet: of its train if it was a
    /// first fragment, else of a train of the same addresses and protocol
    /// (id `frag_id`) that may not exist.
    NextFragment,
}

#[derive(Clone, Debug)]
struct PacketOp {
    src: usize,
    dst: usize,
    sport: usize,
    dport: usize,
    kind: PktGen,
    /// 0: whole; 1: first fragment; 2: later fragment.
    frag: u8,
    frag_id: u16,
    /// Replay an earlier packet instead of the fields above, as a [`Replay`].
    reply_to: Option<(usize, Replay)>,
    /// Which family the stateful tests send it in: 0 IPv4, 1 its IPv6 twin
    /// ([`to6`]), 2 both.
    fam: u8,
}

fn packet_op() -> impl Strategy<Value = PacketOp> {
    let kind = prop_oneof![
        4 => prop::sample::select(&TCP_FLAGS[..]).prop_map(|flags| PktGen::Tcp { flags }),
        3 => Just(PktGen::Udp),
        1 => prop::sample::select(&[8u8, 13][..]).prop_map(|ty| PktGen::IcmpRequest { ty }),
        1 => prop::sample::select(&[0u8, 14][..]).prop_map(|ty| PktGen::IcmpReply { ty }),
        2 => (prop::sample::select(&[3u8, 11][..]), 0u8..2, prop::option::of((0usize..64, any::<bool>())))
            .prop_map(|(ty, code, hist)| PktGen::IcmpError { ty, code, hist }),
        1 => Just(PktGen::IcmpOther),
        1 => Just(PktGen::Other),
    ];
    (
        0..ADDRS.len(),
        0..ADDRS.len(),
        0..PORTS.len(),
        0..PORTS.len(),
        kind,
        prop_oneof![8 => Just(0u8), 1 => Just(1u8), 1 => Just(2u8)],
        0u16..3,
        prop::option::weighted(
            0.45,
            (
                0usize..64,
                prop_oneof![
                    6 => Just(Replay::Reply),
                    2 => Just(Replay::Retransmit),
                    2 => Just(Replay::Reconnect),
                    1 => Just(Replay::NextFragment),
                ],
            ),
        ),
        prop_oneof![2 => Just(0u8), 2 => Just(1u8), 1 => Just(2u8)],
    )
        .prop_map(
            |(src, dst, sport, dport, kind, frag, frag_id, reply_to, fam)| PacketOp {
                src,
                dst,
                sport,
                dport,
                kind,
                frag,
                frag_id,
                reply_to,
                fam,
            },
        )
}

#[derive(Clone, Debug)]
enum Op {
    Packet(PacketOp),
    /// `egress`: an egress rule (`src` is then the destination).
    Authorize {
        owner: usize,
        group: usize,
        rule: RuleGen,
        src: SrcGen,
        egress: bool,
    },
    /// Revoke the n-th rule (mod count) of a group (of its egress rules if
    /// `egress`: the default "all to 0.0.0.0/0" among them).
    Revoke {
        owner: usize,
        group: usize,
        nth: usize,
        egress: bool,
    },
    Launch {
        owner: usize,
        addr: usize,
        groups: Vec<usize>,
    },
    /// Re-authorize the n-th (mod count) rule revoked so far.
    Reauthorize {
        nth: usize,
    },
    /// Terminate the n-th instance (mod count).
    Terminate {
        nth: usize,
    },
    Tick(u32),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        12 => packet_op().prop_map(Op::Packet),
        2 => (0..OWNERS.len(), 0..GROUPS.len(), rule_gen(), src_gen(), prop::bool::weighted(0.25))
            .prop_map(|(owner, group, rule, src, egress)| Op::Authorize { owner, group, rule, src, egress }),
        2 => (0..OWNERS.len(), 0..GROUPS.len(), 0usize..16, prop::bool::weighted(0.25))
            .prop_map(|(owner, group, nth, egress)| Op::Revoke { owner, group, nth, egress }),
        2 => (0usize..4).prop_map(|nth| Op::Reauthorize { nth }),
        1 => (0..OWNERS.len(), 0usize..8, prop::collection::vec(0..GROUPS.len(), 0..3))
            .prop_map(|(owner, addr, groups)| Op::Launch { owner, addr, groups }),
        1 => (0usize..8).prop_map(|nth| Op::Terminate { nth }),
        3 => prop::sample::select(&TIME_STEPS[..]).prop_map(Op::Tick),
    ]
}

#[derive(Clone, Debug)]
struct Setup {
    rules: Vec<(usize, usize, RuleGen, SrcGen)>,
    instances: Vec<(usize, usize, Vec<usize>)>,
    /// Groups whose default egress rule is revoked, then egress rules added.
    closed: Vec<(usize, usize)>,
    egress: Vec<(usize, usize, RuleGen, SrcGen)>,
}

fn setup() -> impl Strategy<Value = Setup> {
    (
        prop::collection::vec(
            (0..OWNERS.len(), 0..GROUPS.len(), rule_gen(), src_gen()),
            0..14,
        ),
        prop::collection::vec(
            (
                0..OWNERS.len(),
                0usize..8,
                prop::collection::vec(0..GROUPS.len(), 0..3),
            ),
            1..7,
        ),
        prop::collection::vec((0..OWNERS.len(), 0..GROUPS.len()), 0..4),
        prop::collection::vec(
            (0..OWNERS.len(), 0..GROUPS.len(), rule_gen(), src_gen()),
            0..8,
        ),
    )
        .prop_map(|(rules, instances, closed, egress)| Setup {
            rules,
            instances,
            closed,
            egress,
        })
}

struct World {
    model: Model,
    next_id: u32,
    /// Rules revoked so far, most recent first: `(owner, group, rule, egress)`.
    revoked: Vec<(usize, usize, Rule, bool)>,
}

impl World {
    fn new(s: &Setup) -> World {
        let mut model = Model::new(Limits {
            rules_per_group: 1000,
        });
        model
            .set_subnet6(Some(SUBNET6.parse().unwrap()))
            .expect("a /64");
        for o in 0..OWNERS.len() {
            let ow = owner(o);
            model.ensure_owner(&ow);
            for g in &GROUPS[1..] {
                model.add_group(&ow, g, "test group").expect("fresh group");
            }
        }
        let mut w = World {
            model,
            next_id: 1,
            revoked: Vec::new(),
        };
        for (o, g, r, src) in &s.rules {
            w.authorize(*o, *g, r, src);
        }
        for (o, g) in &s.closed {
            // Twice the same group: not found, unchanged.
            let _ = w.model.revoke_rules_dir(
                &owner(*o),
                GROUPS[*g],
                &filter::model::default_egress(),
                true,
            );
        }
        for (o, g, r, src) in &s.egress {
            w.authorize_dir(*o, *g, r, src, true);
        }
        for (o, a, gs) in &s.instances {
            w.launch(*o, *a, gs);
        }
        w
    }

    /// Apply an edit op; returns whether it was an edit.
    fn apply(&mut self, op: &Op) -> bool {
        match op {
            Op::Authorize {
                owner: o,
                group,
                rule,
                src,
                egress,
            } => self.authorize_dir(*o, *group, rule, src, *egress),
            Op::Revoke {
                owner: o,
                group,
                nth,
                egress,
            } => {
                let ow = owner(*o);
                let rules = self
                    .model
                    .group(&ow, GROUPS[*group])
                    .map(|g| g.rules_of(*egress).clone())
                    .unwrap_or_default();
                if !rules.is_empty() {
                    let r = rules[nth % rules.len()].clone();
                    self.model
                        .revoke_rules_dir(&ow, GROUPS[*group], std::slice::from_ref(&r), *egress)
                        .expect("present rule");
                    self.revoked.insert(0, (*o, *group, r, *egress));
                }
            }
            Op::Launch {
                owner: o,
                addr,
                groups,
            } => self.launch(*o, *addr, groups),
            Op::Reauthorize { nth } => {
                if !self.revoked.is_empty() {
                    let (o, g, r, egress) = self.revoked[nth % self.revoked.len()].clone();
                    // Already re-added → duplicate error, unchanged.
                    let _ = self
                        .model
                        .authorize_rules_dir(&owner(o), GROUPS[g], &[r], egress);
                }
            }
            Op::Terminate { nth } => {
                let ids: Vec<String> = self.model.instances().keys().cloned().collect();
                if !ids.is_empty() {
                    self.model
                        .remove_instance(&ids[nth % ids.len()])
                        .expect("present instance");
                }
            }
            Op::Packet(_) | Op::Tick(_) => return false,
        }
        true
    }

    fn authorize(&mut self, o: usize, g: usize, r: &RuleGen, s: &SrcGen) {
        self.authorize_dir(o, g, r, s, false);
    }

    fn authorize_dir(&mut self, o: usize, g: usize, r: &RuleGen, s: &SrcGen, egress: bool) {
        // Errors (duplicates) leave the model unchanged: fine.
        let _ = self
            .model
            .authorize_rules_dir(&owner(o), GROUPS[g], &[make_rule(r, s)], egress);
    }

    fn launch(&mut self, o: usize, addr: usize, groups: &[usize]) {
        let id = format!("i-{:08x}", self.next_id);
        let n = self.next_id;
        self.next_id += 1;
        let inst = Instance {
            id,
            owner: owner(o),
            mac: [2, 0, (n >> 16) as u8, (n >> 8) as u8, n as u8, 1],
            ip: Ipv4Addr::from(ADDRS[addr]),
            groups: groups.iter().map(|&g| GROUPS[g].to_owned()).collect(),
        };
        // Address in use → error, unchanged.
        let _ = self.model.add_instance(inst);
    }
}

fn build_packet(p: &PacketOp, hist: &[Packet]) -> Packet {
    if let Some((i, replay)) = p.reply_to
        && !hist.is_empty()
    {
        let orig = hist[i % hist.len()];
        match replay {
            Replay::Reply => {}
            Replay::Retransmit => return orig,
            Replay::Reconnect => {
                let mut again = orig;
                if let L4::Tcp { .. } = again.l4 {
                    again.l4 = L4::Tcp {
                        flags: tcp_flags::SYN,
                    };
                }
                return again;
            }
            Replay::NextFragment => {
                let id = match orig.frag {
                    Frag::First { id } => id,
                    _ => u32::from(p.frag_id),
                };
                return Packet {
                    key: FlowKey {
                        sport: 0,
                        dport: 0,
                        ..orig.key
                    },
                    l4: L4::Other,
                    frag: Frag::Later { id },
                };
            }
        }
        let l4 = match orig.l4 {
            L4::Tcp { flags } => L4::Tcp {
                flags: if flags == tcp_flags::SYN {
                    tcp_flags::SYN | tcp_flags::ACK
                } else {
                    tcp_flags::ACK
                },
            },
            L4::Icmp {
                kind: IcmpKind::Request,
                ty,
                ..
            } => L4::Icmp {
                ty: if ty == 8 { 0 } else { ty + 1 },
                code: 0,
                kind: IcmpKind::Reply,
            },
            other => other,
        };
        let frag = match orig.frag {
            Frag::Later { .. } => Frag::None,
            f => f,
        };
        let l4 = if matches!(orig.frag, Frag::Later { .. }) && orig.key.proto == proto::UDP {
            L4::Udp
        } else {
            l4
        };
        return Packet {
            key: orig.key.reversed(),
            l4,
            frag,
        };
    }
    let src = Ipv4Addr::from(ADDRS[p.src]);
    let dst = Ipv4Addr::from(ADDRS[p.dst]);
    let (sport, dport) = (PORTS[p.sport], PORTS[p.dport]);
    let frag = match p.frag {
        1 => Frag::First {
            id: u32::from(p.frag_id),
        },
        2 => Frag::Later {
            id: u32::from(p.frag_id),
        },
        _ => Frag::None,
    };
    let (proto_, sport, dport, l4) = match p.kind {
        PktGen::Tcp { flags } => (proto::TCP, sport, dport, L4::Tcp { flags }),
        PktGen::Udp => (proto::UDP, sport, dport, L4::Udp),
        PktGen::IcmpRequest { ty } => (
            proto::ICMP,
            sport,
            sport,
            L4::Icmp {
                ty,
                code: 0,
                kind: IcmpKind::Request,
            },
        ),
        PktGen::IcmpReply { ty } => (
            proto::ICMP,
            sport,
            sport,
            L4::Icmp {
                ty,
                code: 0,
                kind: IcmpKind::Reply,
            },
        ),
        PktGen::IcmpError { ty, code, hist: h } => {
            let inner = match h {
                Some((i, rev)) if !hist.is_empty() => {
                    let k = hist[i % hist.len()].key;
                    if rev { k.reversed() } else { k }
                }
                _ => FlowKey {
                    src: dst,
                    dst: src,
                    proto: proto::UDP,
                    sport: dport,
                    dport: sport,
                },
            };
            (
                proto::ICMP,
                0,
                0,
                L4::Icmp {
                    ty,
                    code,
                    kind: IcmpKind::Error { inner },
                },
            )
        }
        PktGen::IcmpOther => (
            proto::ICMP,
            0,
            0,
            L4::Icmp {
                ty: 9,
                code: 0,
                kind: IcmpKind::Other,
            },
        ),
        PktGen::Other => (47, 0, 0, L4::Other),
    };
    if let Frag::Later { .. } = frag {
        // A non-first fragment carries no ports and no L4 facts.
        return Packet {
            key: FlowKey {
                src,
                dst,
                proto: proto_,
                sport: 0,
                dport: 0,
            },
            l4: L4::Other,
            frag,
        };
    }
    Packet {
        key: FlowKey {
            src,
            dst,
            proto: proto_,
            sport,
            dport,
        },
        l4,
        frag,
    }
}

/// The IPv6 address standing for `a`: an instance's SLAAC address, or for
/// other addresses one in the instances' /64 (from 172.31.0.x) or outside it.
fn addr6(m: &Model, a: Ipv4Addr) -> Ipv6Addr {
    if let Some(i) = m.instances().values().find(|i| i.ip == a) {
        return m.ip6_of(i.mac).expect("dual-stack");
    }
    let [b0, b1, b2, b3] = a.octets();
    match (b0, b1) {
        (172, 31) => Ipv6Addr::new(0xfd00, 5, 0, 0, 1, 0, u16::from(b2), u16::from(b3)),
        (10, 0) => "2001:db8::1".parse().unwrap(),
        (10, _) => Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, u16::from(b2), u16::from(b3)),
        _ => Ipv6Addr::new(0x2001, 0xdb9, 0, 0, 0, 0, u16::from(b2), u16::from(b3)),
    }
}

fn key6(m: &Model, k: FlowKey) -> FlowKey6 {
    FlowKey6 {
        src: addr6(m, k.src),
        dst: addr6(m, k.dst),
        proto: if k.proto == proto::ICMP {
            proto::ICMPV6
        } else {
            k.proto
        },
        sport: k.sport,
        dport: k.dport,
    }
}

/// The IPv6 twin of an IPv4 packet: addresses by [`addr6`], ICMP types to
/// ICMPv6 ones (echo 8/0 → 128/129, unreachable 3 → 1 but "fragmentation
/// needed" 3/1 → packet too big 2/0, time exceeded 11 → 3, timestamp 13/14 →
/// 130/131, other 9 → 135).
fn to6(m: &Model, p: &Packet) -> Packet6 {
    let l4 = match p.l4 {
        L4::Tcp { flags } => L4::Tcp { flags },
        L4::Udp => L4::Udp,
        L4::Other => L4::Other,
        L4::Icmp { ty, code, kind } => {
            let (ty, code) = match (ty, code) {
                (8, c) => (128, c),
                (0, c) => (129, c),
                (3, 1) => (2, 0),
                (3, c) => (1, c),
                (11, c) => (3, c),
                (13, c) => (130, c),
                (14, c) => (131, c),
                (_, c) => (135, c),
            };
            let kind = match kind {
                IcmpKind::Request => IcmpKind::Request,
                IcmpKind::Reply => IcmpKind::Reply,
                IcmpKind::Other => IcmpKind::Other,
                IcmpKind::Error { inner } => IcmpKind::Error {
                    inner: key6(m, inner),
                },
            };
            L4::Icmp { ty, code, kind }
        }
    };
    Packet6 {
        key: key6(m, p.key),
        l4,
        frag: p.frag,
    }
}

/// The IPv6 decisions of `snap` against the reference for `pkt`'s twin: the
/// admitting rule is the first matching one (its slot from `c`, the compiler
/// of `snap`; without it only whether one admits), and egress agrees (except
/// for later fragments, which egress judges by train).
fn check6(
    m: &Model,
    snap: &filter::compile::Snapshot,
    c: Option<&Compiler>,
    pkt: &Packet,
    what: &str,
) -> Result<(), TestCaseError> {
    let p6 = to6(m, pkt);
    let matching = filter::explain::matching_rules(m, &p6);
    prop_assert_eq!(
        !matching.is_empty(),
        reference::allows(m, &p6),
        "{}: explain vs reference {:?}",
        what,
        p6
    );
    let got = snap.admitting_rule6(&p6);
    match c {
        Some(c) => {
            let first = matching.first().map(|r| {
                c.rule_slot(r.owner, r.group, r.index)
                    .expect("a slot per rule")
            });
            prop_assert_eq!(got, first, "{}: admitting_rule6 {:?}", what, p6);
        }
        None => prop_assert_eq!(
            got.is_some(),
            !matching.is_empty(),
            "{}: admitting_rule6 {:?}",
            what,
            p6
        ),
    }
    if !matches!(p6.frag, Frag::Later { .. }) {
        prop_assert_eq!(
            snap.egress_allows6(&p6),
            reference::egress_allows(m, &p6),
            "{}: egress_allows6 {:?}",
            what,
            p6
        );
    }
    Ok(())
}

/// The IPv6 twin of `pkt` ([`to6`] under `m`): `Conntrack::judge6` and
/// `Reference::judge6` give the same verdict, and the snapshot's IPv6 rule
/// decisions agree with the reference's.
#[allow(clippy::too_many_arguments)]
fn judge6_agrees(
    ct: &Conntrack,
    snap: &filter::compile::Snapshot,
    reference: &mut Reference,
    m: &Model,
    generation: u64,
    pkt: &Packet,
    now: u32,
    step: usize,
) -> Result<Result<(), filter::DropReason>, TestCaseError> {
    check6(m, snap, None, pkt, "stateful")?;
    let p6 = to6(m, pkt);
    let got = ct.judge6(snap, &p6, now);
    let want = reference.judge6(m, generation, &p6, now);
    prop_assert_eq!(
        got,
        want,
        "judge6 differs at step {} (t={}) for {:?}",
        step,
        now,
        p6
    );
    Ok(want)
}

fn run(mode: RevokeMode, s: &Setup, ops: &[Op]) -> Result<(), TestCaseError> {
    let mut w = World::new(s);
    let mut generation = 1u64;
    let mut snap = compile(&w.model, generation);
    let timeouts = Timeouts::default();
    let ct = Conntrack::new(CtConfig {
        capacity: 4096,
        capacity6: 4096,
        per_instance_quota: 4096,
        timeouts,
        on_revoke: mode,
    });
    let mut reference = Reference::new(timeouts, mode);
    let mut now = 1000u32;
    let mut hist: Vec<Packet> = Vec::new();
    for (step, op) in ops.iter().enumerate() {
        let mut edited = false;
        match op {
            Op::Packet(p) if p.fam == 1 => {
                // The IPv6 twin only (the IPv4 packet stays in the history
                // for replies and errors, whose twins then belong to it).
                let pkt = build_packet(p, &hist);
                let _verdict = judge6_agrees(
                    &ct,
                    &snap,
                    &mut reference,
                    &w.model,
                    generation,
                    &pkt,
                    now,
                    step,
                )?;
                if !matches!(pkt.frag, Frag::Later { .. }) {
                    hist.push(pkt);
                }
            }
            Op::Packet(p) => {
                let pkt = build_packet(p, &hist);
                prop_assert_eq!(
                    snap.allows(&pkt),
                    reference::allows(&w.model, &pkt),
                    "allows differs at step {} for {:?}",
                    step,
                    pkt
                );
                if !matches!(pkt.frag, Frag::Later { .. }) {
                    prop_assert_eq!(
                        snap.egress_allows(&pkt),
                        reference::egress_allows(&w.model, &pkt),
                        "egress_allows differs at step {} for {:?}",
                        step,
                        pkt
                    );
                }
                let got = ct.judge(&snap, &pkt, now);
                let want = reference.judge(&w.model, generation, &pkt, now);
                prop_assert_eq!(
                    got,
                    want,
                    "judge differs at step {} (t={}) for {:?}",
                    step,
                    now,
                    pkt
                );
                if p.fam == 2 {
                    let _verdict = judge6_agrees(
                        &ct,
                        &snap,
                        &mut reference,
                        &w.model,
                        generation,
                        &pkt,
                        now,
                        step,
                    )?;
                }
                if !matches!(pkt.frag, Frag::Later { .. }) {
                    hist.push(pkt);
                }
            }
            Op::Tick(dt) => now = now.saturating_add(*dt),
            edit => edited = w.apply(edit),
        }
        if edited {
            generation += 1;
            snap = compile(&w.model, generation);
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4_000, ..ProptestConfig::default() })]

    #[test]
    fn conntrack_agrees_with_reference_revalidate(s in setup(), ops in prop::collection::vec(op(), 1..60)) {
        run(RevokeMode::Revalidate, &s, &ops)?;
    }

    #[test]
    fn conntrack_agrees_with_reference_keep(s in setup(), ops in prop::collection::vec(op(), 1..60)) {
        run(RevokeMode::Keep, &s, &ops)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2_000, ..ProptestConfig::default() })]

    /// Stateless: bigger rule sets, every packet kind, `allows` only.
    #[test]
    fn snapshot_allows_agrees_with_rule_scan(
        s in setup(),
        more in prop::collection::vec((0..OWNERS.len(), 0..GROUPS.len(), rule_gen(), src_gen()), 0..60),
        pkts in prop::collection::vec(packet_op(), 1..40),
    ) {
        let mut w = World::new(&s);
        for (o, g, r, src) in &more {
            w.authorize(*o, *g, r, src);
        }
        let snap = compile(&w.model, 9);
        let mut hist = Vec::new();
        for p in &pkts {
            let pkt = build_packet(p, &hist);
            prop_assert_eq!(snap.allows(&pkt), reference::allows(&w.model, &pkt), "{:?}", pkt);
            hist.push(pkt);
        }
    }

    /// Stateless IPv6: the IPv6 twins of random packets against models with
    /// IPv4 and IPv6 rules and group sources: `admitting_rule6` names the
    /// first matching rule exactly when the reference allows, and
    /// `egress_allows6` agrees with the reference.
    #[test]
    fn snapshot6_agrees_with_reference(
        s in setup(),
        more in prop::collection::vec((0..OWNERS.len(), 0..GROUPS.len(), rule_gen(), src_gen()), 0..60),
        more_egress in prop::collection::vec((0..OWNERS.len(), 0..GROUPS.len(), rule_gen(), src_gen()), 0..20),
        pkts in prop::collection::vec(packet_op(), 1..40),
    ) {
        let mut w = World::new(&s);
        for (o, g, r, src) in &more {
            w.authorize(*o, *g, r, src);
        }
        for (o, g, r, src) in &more_egress {
            w.authorize_dir(*o, *g, r, src, true);
        }
        let mut compiler = Compiler::new(&w.model);
        let snap = compiler.snapshot(9);
        let mut hist = Vec::new();
        for p in &pkts {
            let pkt = build_packet(p, &hist);
            check6(&w.model, &snap, Some(&compiler), &pkt, "full")?;
            hist.push(pkt);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1_000, ..ProptestConfig::default() })]

    /// `sgswitch trace` names the rules that admit a packet with
    /// [`filter::explain::matching_rules`]: on random models and packets of
    /// every kind, the snapshot allows exactly when that list is not empty,
    /// and every rule listed belongs to a group of the destination.
    #[test]
    fn matching_rules_agree_with_allows(
        s in setup(),
        more in prop::collection::vec((0..OWNERS.len(), 0..GROUPS.len(), rule_gen(), src_gen()), 0..40),
        pkts in prop::collection::vec(packet_op(), 1..40),
    ) {
        let mut w = World::new(&s);
        for (o, g, r, src) in &more {
            w.authorize(*o, *g, r, src);
        }
        let snap = compile(&w.model, 3);
        let mut hist = Vec::new();
        for p in &pkts {
            let pkt = build_packet(p, &hist);
            let rules = filter::explain::matching_rules(&w.model, &pkt);
            prop_assert_eq!(snap.allows(&pkt), !rules.is_empty(), "{:?} {:?}", pkt, rules);
            if let Some((owner, groups)) = filter::explain::consulted_groups(&w.model, &pkt) {
                for m in &rules {
                    prop_assert!(m.owner == owner && groups.iter().any(|g| g == m.group));
                    let g = &w.model.groups()[&(owner.clone(), m.group.to_owned())];
                    prop_assert_eq!(&g.rules[m.index], m.rule);
                }
            }
            hist.push(pkt);
        }
    }

    /// Per-rule hit counters count a packet on [`Snapshot::admitting_rule`]:
    /// on random models and packets it names a rule exactly when the snapshot
    /// allows, and that rule is the first of
    /// [`filter::explain::matching_rules`] (what `sgswitch trace` lists), so
    /// trace and counters agree on which rule.
    #[test]
    fn admitting_rule_is_the_first_matching_rule(
        s in setup(),
        more in prop::collection::vec((0..OWNERS.len(), 0..GROUPS.len(), rule_gen(), src_gen()), 0..40),
        pkts in prop::collection::vec(packet_op(), 1..40),
    ) {
        let mut w = World::new(&s);
        for (o, g, r, src) in &more {
            w.authorize(*o, *g, r, src);
        }
        let mut compiler = Compiler::new(&w.model);
        let snap = compiler.snapshot(3);
        let mut hist = Vec::new();
        for p in &pkts {
            let pkt = build_packet(p, &hist);
            let first = filter::explain::matching_rules(&w.model, &pkt)
                .first()
                .map(|m| compiler.rule_slot(m.owner, m.group, m.index).expect("a slot per rule"));
            prop_assert_eq!(snap.admitting_rule(&pkt), first, "{:?}", pkt);
            prop_assert_eq!(snap.allows(&pkt), first.is_some());
            hist.push(pkt);
        }
    }
}

/// Every rule of `m` with its slot in `c`: (owner, group, rule) → (slot,
/// serial); checks that no two rules share a slot.
fn slots_of(
    m: &Model,
    c: &Compiler,
    layout: &filter::compile::RuleLayout,
) -> BTreeMap<(String, String, filter::model::Rule), (u32, u64)> {
    let mut out = BTreeMap::new();
    let mut seen = std::collections::BTreeSet::new();
    for g in m.groups().values() {
        for (i, r) in g.rules.iter().enumerate() {
            let s = c.rule_slot(&g.owner, &g.name, i).expect("a slot per rule");
            assert!(seen.insert(s), "slot {s:?} given twice");
            let serial = layout[s.index()];
            assert_ne!(serial, 0, "slot of a live rule marked free");
            out.insert(
                (g.owner.0.clone(), g.name.clone(), r.clone()),
                (s.0, serial),
            );
        }
    }
    out
}

/// An edit of the incremental-compile test: the edits of [`op`] plus group
/// creation and deletion (which may be refused: in use, duplicate).
#[derive(Clone, Debug)]
enum EditOp {
    Op(Op),
    AddGroup { owner: usize, group: usize },
    DeleteGroup { owner: usize, group: usize },
}

/// Apply one random edit (refused ones change nothing).
fn apply_edit(w: &mut World, e: &EditOp) {
    match e {
        EditOp::Op(op) => {
            w.apply(op);
        }
        EditOp::AddGroup { owner: o, group } => {
            let _ = w.model.add_group(&owner(*o), MORE_GROUPS[*group], "more");
        }
        EditOp::DeleteGroup { owner: o, group } => {
            let _ = w.model.delete_group(&owner(*o), MORE_GROUPS[*group]);
        }
    }
}

/// Groups that may be created and deleted (`g4` does not exist at first).
const MORE_GROUPS: [&str; 4] = ["g1", "g2", "g3", "g4"];

fn edit_op() -> impl Strategy<Value = EditOp> {
    prop_oneof![
        6 => op().prop_filter("an edit", |o| !matches!(o, Op::Packet(_) | Op::Tick(_))).prop_map(EditOp::Op),
        1 => (0..OWNERS.len(), 0..MORE_GROUPS.len()).prop_map(|(owner, group)| EditOp::AddGroup { owner, group }),
        1 => (0..OWNERS.len(), 0..MORE_GROUPS.len()).prop_map(|(owner, group)| EditOp::DeleteGroup { owner, group }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1_000, ..ProptestConfig::default() })]

    /// An incrementally maintained snapshot ([`Compiler::apply`] with the
    /// model's recorded changes, one edit at a time, sometimes several edits
    /// per apply) allows exactly what a snapshot compiled from scratch allows,
    /// and what the reference rule scan allows, after every step of random edit
    /// sequences (rules, instances, groups created and deleted, refused edits).
    #[test]
    fn incremental_snapshot_agrees_with_full_compile(
        s in setup(),
        edits in prop::collection::vec((edit_op(), any::<bool>()), 1..40),
        pkts in prop::collection::vec(packet_op(), 1..30),
    ) {
        let mut w = World::new(&s);
        w.model.record_changes();
        let mut compiler = Compiler::new(&w.model);
        let mut prev_model = w.model.clone();
        let mut generation = 1;
        for (step, (e, batch)) in edits.iter().enumerate() {
            apply_edit(&mut w, e);
            // `batch`: let the next edit's changes join this one's.
            if *batch && step + 1 < edits.len() {
                continue;
            }
            let layout = compiler.snapshot(0).rule_layout().clone();
            let before = slots_of(&prev_model, &compiler, &layout);
            let changes = w.model.take_changes();
            compiler.apply(&w.model, &changes);
            generation += 1;
            let inc = compiler.snapshot(generation);
            let full = compile(&w.model, generation);
            // Rule slots are stable: a rule that stayed in its group keeps its
            // slot and serial, whatever else changed.
            let after = slots_of(&w.model, &compiler, inc.rule_layout());
            for (k, v) in &after {
                if let Some(old) = before.get(k) {
                    prop_assert_eq!(old, v, "slot of {:?} moved at step {}", k, step);
                }
            }
            prev_model = w.model.clone();
            prop_assert_eq!(inc.instances(), full.instances());
            prop_assert_eq!(inc.policy_count(), full.policy_count());
            let mut hist = Vec::new();
            for p in &pkts {
                let pkt = build_packet(p, &hist);
                let want = reference::allows(&w.model, &pkt);
                prop_assert_eq!(full.allows(&pkt), want, "full, step {}: {:?}", step, pkt);
                prop_assert_eq!(inc.allows(&pkt), want, "incremental, step {}: {:?}", step, pkt);
                if !matches!(pkt.frag, Frag::Later { .. }) {
                    let want = reference::egress_allows(&w.model, &pkt);
                    prop_assert_eq!(full.egress_allows(&pkt), want, "full egress, step {}: {:?}", step, pkt);
                    prop_assert_eq!(inc.egress_allows(&pkt), want, "incremental egress, step {}: {:?}", step, pkt);
                }
                let first = filter::explain::matching_rules(&w.model, &pkt)
                    .first()
                    .map(|m| compiler.rule_slot(m.owner, m.group, m.index).expect("a slot per rule"));
                prop_assert_eq!(inc.admitting_rule(&pkt), first, "incremental, step {}: {:?}", step, pkt);
                check6(&w.model, &inc, Some(&compiler), &pkt, "incremental")?;
                check6(&w.model, &full, None, &pkt, "full")?;
                hist.push(pkt);
            }
        }
    }
}

/// Make `follower` equal to `leader` the way a cluster host applies what it
/// reads from etcd: instances gone or changed removed, groups put, instances
/// added, groups gone removed (`put_group_raw`/`remove_group_raw`).
fn reconcile(follower: &mut Model, leader: &Model) {
    let ids = |m: &Model| -> std::collections::BTreeMap<String, filter::model::Group> {
        m.groups()
            .values()
            .map(|g| (g.id.clone(), g.clone()))
            .collect()
    };
    let (want, have) = (ids(leader), ids(follower));
    let gone: Vec<String> = follower
        .instances()
        .values()
        .filter(|i| leader.instance(&i.id) != Some(*i))
        .map(|i| i.id.clone())
        .collect();
    for id in gone {
        follower.remove_instance(&id).unwrap();
    }
    for g in want.values() {
        follower.put_group_raw(g.clone()).unwrap();
    }
    for i in leader.instances().values() {
        if follower.instance(&i.id).is_none() {
            follower.add_instance(i.clone()).unwrap();
        }
    }
    for id in have.keys().filter(|id| !want.contains_key(*id)) {
        follower.remove_group_raw(id).unwrap();
    }
    follower.advance_group_seq(leader.next_group_seq());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    /// Cluster mode: a host that follows another's states through the raw
    /// methods ends with the same model (rules in the same order), passes
    /// `verify`, and its incrementally compiled snapshot allows exactly what
    /// the leader's full compile allows, after every step.
    #[test]
    fn a_follower_reconciled_by_raw_puts_agrees(
        s in setup(),
        edits in prop::collection::vec(edit_op(), 1..30),
        pkts in prop::collection::vec(packet_op(), 1..20),
    ) {
        let mut w = World::new(&s);
        let mut follower = w.model.clone();
        follower.record_changes();
        let mut compiler = Compiler::new(&follower);
        for (step, e) in edits.iter().enumerate() {
            apply_edit(&mut w, e);
            reconcile(&mut follower, &w.model);
            prop_assert_eq!(follower.groups(), w.model.groups(), "step {}", step);
            prop_assert_eq!(follower.instances(), w.model.instances(), "step {}", step);
            prop_assert!(follower.verify().is_ok());
            let changes = follower.take_changes();
            compiler.apply(&follower, &changes);
            let inc = compiler.snapshot(step as u64 + 2);
            let full = compile(&w.model, step as u64 + 2);
            let mut hist = Vec::new();
            for p in &pkts {
                let pkt = build_packet(p, &hist);
                prop_assert_eq!(inc.allows(&pkt), full.allows(&pkt), "step {}: {:?}", step, pkt);
                hist.push(pkt);
            }
        }
    }
}

/// Undoing recorded changes (what the control plane does when an edit fails
/// after it was applied: a store error, a failed launch) restores the model
/// exactly, over random edit sequences (fixed seed).
#[test]
fn undo_restores_the_model() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    for _ in 0..300 {
        let s = setup().new_tree(&mut runner).unwrap().current();
        let edits = prop::collection::vec(edit_op(), 1..20)
            .new_tree(&mut runner)
            .unwrap()
            .current();
        let mut w = World::new(&s);
        w.model.record_changes();
        let before = w.model.clone();
        for e in &edits {
            apply_edit(&mut w, e);
        }
        let changes = w.model.take_changes();
        w.model.undo(changes);
        assert_eq!(w.model, before, "{edits:?}");
        assert_eq!(
            serde_json::to_string(&w.model).unwrap(),
            serde_json::to_string(&before).unwrap()
        );
    }
}

/// The generators do reach the interesting verdicts (otherwise agreement would be
/// vacuous): run a fixed sample and count each outcome, and each case of a packet
/// meeting a revoked (cut) flow: from the responder (the instance's retransmits),
/// from the initiator, revival by re-authorization, re-open by a new SYN.
#[test]
fn generators_cover_every_verdict() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    use std::collections::HashMap;

    let mut runner = TestRunner::deterministic();
    let mut seen: HashMap<Result<(), filter::DropReason>, usize> = HashMap::new();
    // Packets of flows that were revoked (live, marked) before they were judged.
    let mut cases: HashMap<&str, usize> = HashMap::new();
    for _ in 0..4000 {
        let s = setup().new_tree(&mut runner).unwrap().current();
        let ops = prop::collection::vec(op(), 40..60)
            .new_tree(&mut runner)
            .unwrap()
            .current();
        let mut w = World::new(&s);
        let mut generation = 1;
        let mut snap = compile(&w.model, generation);
        let mut r = Reference::new(Timeouts::default(), RevokeMode::Revalidate);
        let mut hist = Vec::new();
        let mut now = 0u32;
        for op in &ops {
            match op {
                Op::Packet(p) => {
                    let pkt = build_packet(p, &hist);
                    let revoked = match (pkt.l4, pkt.frag) {
                        (
                            L4::Icmp {
                                kind: IcmpKind::Error { .. },
                                ..
                            },
                            _,
                        )
                        | (_, Frag::Later { .. }) => None,
                        _ => r.revoked_flow(pkt.key, now),
                    };
                    let verdict = r.judge(&w.model, generation, &pkt, now);
                    if let Some(orig) = revoked {
                        let syn = matches!(pkt.l4, L4::Tcp { flags } if flags == tcp_flags::SYN);
                        let case = match (pkt.key == orig, verdict) {
                            (false, Err(filter::DropReason::Revoked)) => "responder cut",
                            (false, Ok(())) => "revived by responder",
                            (true, Ok(())) if syn => "reopened by SYN",
                            (true, Ok(())) => "revived by initiator",
                            (true, Err(_)) => "initiator cut",
                            (false, Err(_)) => "other",
                        };
                        *cases.entry(case).or_default() += 1;
                        if pkt.key != orig
                            && w.model.instances().values().any(|i| i.ip == pkt.key.src)
                        {
                            *cases.entry("from an instance address").or_default() += 1;
                        }
                    }
                    *seen.entry(verdict).or_default() += 1;
                    let _ = snap.allows(&pkt);
                    hist.push(pkt);
                }
                Op::Tick(dt) => now += dt,
                edit => {
                    if w.apply(edit) {
                        generation += 1;
                        snap = compile(&w.model, generation);
                    }
                }
            }
        }
    }
    use filter::DropReason::*;
    for v in [
        Ok(()),
        Err(NoRule),
        Err(NoEgressRule),
        Err(Revoked),
        Err(UnrelatedIcmpError),
        Err(UnmatchedFragment),
    ] {
        assert!(
            seen.get(&v).copied().unwrap_or(0) > 0,
            "never saw {v:?}: {seen:?}"
        );
    }
    // The cases of the revalidate fix: the responder's packets after a revoke
    // (the instance's retransmits that used to re-open the flow), revival by
    // re-authorization, and the initiator's SYN re-opening it.
    eprintln!("revoked-flow cases: {cases:?}");
    for c in [
        "responder cut",
        "from an instance address",
        "initiator cut",
        "revived by responder",
        "revived by initiator",
        "reopened by SYN",
    ] {
        assert!(
            cases.get(c).copied().unwrap_or(0) > 0,
            "never saw {c}: {cases:?}"
        );
    }
}

/// The IPv6 checks are not vacuous: over a fixed sample the IPv6 twins are
/// admitted by IPv6 CIDR rules, by group rules and by `icmpv6` rules, refused
/// by ingress, and both allowed and refused by egress rules.
#[test]
fn ipv6_generators_reach_every_decision() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    use std::collections::HashMap;

    let mut runner = TestRunner::deterministic();
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for _ in 0..500 {
        let s = setup().new_tree(&mut runner).unwrap().current();
        let pkts = prop::collection::vec(packet_op(), 20..40)
            .new_tree(&mut runner)
            .unwrap()
            .current();
        let w = World::new(&s);
        let snap = compile(&w.model, 1);
        let mut hist = Vec::new();
        for p in &pkts {
            let pkt = build_packet(p, &hist);
            let p6 = to6(&w.model, &pkt);
            let to_inst = snap.instance_by_ip6(p6.key.dst).is_some();
            let from_inst = snap.instance_by_ip6(p6.key.src).is_some();
            match filter::explain::matching_rules(&w.model, &p6).first() {
                Some(m) => {
                    let what = match (&m.rule.source, m.rule.proto) {
                        (_, Proto::Icmpv6) => "admitted by icmpv6",
                        (Source::Cidr6(_), _) => "admitted by an IPv6 CIDR",
                        (Source::Group { .. }, _) => "admitted by a group",
                        _ => "admitted by an IPv4 rule (wrong)",
                    };
                    *seen.entry(what).or_default() += 1;
                }
                None if to_inst => *seen.entry("refused").or_default() += 1,
                None => {}
            }
            if from_inst && !matches!(p6.frag, Frag::Later { .. }) {
                let e = if snap.egress_allows6(&p6) {
                    "egress allowed"
                } else {
                    "egress refused"
                };
                *seen.entry(e).or_default() += 1;
            }
            hist.push(pkt);
        }
    }
    eprintln!("IPv6 decisions: {seen:?}");
    assert_eq!(seen.get("admitted by an IPv4 rule (wrong)"), None);
    for c in [
        "admitted by icmpv6",
        "admitted by an IPv6 CIDR",
        "admitted by a group",
        "refused",
        "egress allowed",
        "egress refused",
    ] {
        assert!(seen.get(c).copied().unwrap_or(0) > 0, "never {c}: {seen:?}");
    }
}

/// The stateful IPv6 comparison is not vacuous: over a fixed sample of
/// random operation sequences, the IPv6 twins of every packet (judged by
/// `Conntrack::judge6`, which must agree with `Reference::judge6`) reach
/// every verdict, and pass for each stateful reason: replies no rule admits,
/// related ICMPv6 errors (packet too big among them) no rule admits, later
/// fragments of admitted trains; between dual-stack instances and to and
/// from outside addresses.
#[test]
fn ipv6_stateful_generators_cover_every_verdict() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    use std::collections::HashMap;

    let mut runner = TestRunner::deterministic();
    let mut seen: HashMap<Result<(), filter::DropReason>, usize> = HashMap::new();
    let mut cases: HashMap<&str, usize> = HashMap::new();
    for mode in [RevokeMode::Revalidate, RevokeMode::Keep] {
        for _ in 0..1500 {
            let s = setup().new_tree(&mut runner).unwrap().current();
            let ops = prop::collection::vec(op(), 40..60)
                .new_tree(&mut runner)
                .unwrap()
                .current();
            let mut w = World::new(&s);
            let mut generation = 1;
            let mut snap = compile(&w.model, generation);
            let ct = Conntrack::new(CtConfig {
                capacity: 4096,
                capacity6: 4096,
                per_instance_quota: 4096,
                timeouts: Timeouts::default(),
                on_revoke: mode,
            });
            let mut r = Reference::new(Timeouts::default(), mode);
            let mut hist = Vec::new();
            let mut now = 0u32;
            for (step, op) in ops.iter().enumerate() {
                match op {
                    Op::Packet(p) => {
                        let pkt = build_packet(p, &hist);
                        let p6 = to6(&w.model, &pkt);
                        let to_inst = reference::instance_at(&w.model, p6.key.dst).is_some();
                        let from_inst = reference::instance_at(&w.model, p6.key.src).is_some();
                        let by_rule = reference::allows(&w.model, &p6);
                        let verdict = judge6_agrees(
                            &ct, &snap, &mut r, &w.model, generation, &pkt, now, step,
                        )
                        .unwrap();
                        *seen.entry(verdict).or_default() += 1;
                        if verdict.is_ok() {
                            let case = match (p6.l4, p6.frag) {
                                (_, Frag::Later { .. }) if to_inst => "later fragment admitted",
                                (
                                    L4::Icmp {
                                        ty: 2,
                                        kind: IcmpKind::Error { .. },
                                        ..
                                    },
                                    _,
                                ) if to_inst && !by_rule => "related packet too big",
                                (
                                    L4::Icmp {
                                        kind: IcmpKind::Error { .. },
                                        ..
                                    },
                                    _,
                                ) if to_inst && !by_rule => "related error",
                                _ if to_inst && !by_rule => "tracked, no rule admits",
                                _ => "",
                            };
                            *cases.entry(case).or_default() += 1;
                            let between = match (from_inst, to_inst) {
                                (true, true) => "instance to instance",
                                (true, false) => "instance to outside",
                                (false, true) => "outside to instance",
                                (false, false) => "outside to outside",
                            };
                            *cases.entry(between).or_default() += 1;
                        }
                        if !matches!(pkt.frag, Frag::Later { .. }) {
                            hist.push(pkt);
                        }
                    }
                    Op::Tick(dt) => now += dt,
                    edit => {
                        if w.apply(edit) {
                            generation += 1;
                            snap = compile(&w.model, generation);
                        }
                    }
                }
            }
        }
    }
    eprintln!("IPv6 verdicts: {seen:?}\nIPv6 passes: {cases:?}");
    use filter::DropReason::*;
    for v in [
        Ok(()),
        Err(NoRule),
        Err(NoEgressRule),
        Err(Revoked),
        Err(UnrelatedIcmpError),
        Err(UnmatchedFragment),
    ] {
        assert!(
            seen.get(&v).copied().unwrap_or(0) > 0,
            "never saw {v:?}: {seen:?}"
        );
    }
    for c in [
        "later fragment admitted",
        "related packet too big",
        "related error",
        "tracked, no rule admits",
        "instance to instance",
        "instance to outside",
        "outside to instance",
    ] {
        assert!(
            cases.get(c).copied().unwrap_or(0) > 0,
            "never saw {c}: {cases:?}"
        );
    }
}
