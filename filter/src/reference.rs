//! The reference evaluator: security-group semantics written straight from the rule
//! text, slow and obviously right.
//!
//! It states the same semantics as [`crate::compile`](mod@crate::compile) +
//! [`crate::conntrack`] (see their module docs, including the revoked mark of
//! revalidation) without any cleverness: rules are scanned linearly in the
//! [`Model`], group membership is looked up by scanning instances, flows live in a
//! plain `HashMap` keyed by their original direction. It has no capacity or quota
//! limits. The property tests (`filter/tests/prop.rs`) check that the compiled
//! snapshot and the lock-free table agree with it on random models, edits and
//! packet sequences. Never used on the datapath.
//!
//! The rule functions ([`rule_matches`], [`allows`], [`egress_allows`]) take
//! packets of either address family ([`Family`]): a rule applies to a family
//! when its CIDR is of that family (a group source matches member instances
//! by their address of the packet's family: the IPv4 address, or the IPv6
//! address [`Model::ip6_of`] gives them), `icmp` to IPv4 and `icmpv6` to IPv6
//! only, `all`/`tcp`/`udp` to both. So `0.0.0.0/0` never admits IPv6.
//!
//! The stateful [`Reference`] judges both families too ([`Reference::judge`],
//! [`Reference::judge6`]) with the same statement, generic over [`Family`]:
//! each family has its own flows and fragment trains (IPv6 trains are keyed
//! without the protocol), ICMPv6 echo is the query and its errors (packet too
//! big among them) are related to tracked flows like ICMP's.

use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr};

use crate::conntrack::{RevokeMode, Timeouts};
use crate::model::{Instance, Model, Ports, Proto, Rule, Source};
use crate::{
    DropReason, FlowKey, FlowKey6, Frag, IcmpKind, IpAddress, L4, Packet, Packet6, proto, tcp_flags,
};

/// An address family as the rules see it: [`Ipv4Addr`] or [`Ipv6Addr`].
pub trait Family: IpAddress {
    /// The family's ICMP protocol number (1 or 58).
    const ICMP: u8;
    /// The rule protocol that matches it (`icmp` or `icmpv6`).
    const ICMP_RULE: Proto;
    /// Is `a` in `source` when that is a CIDR of this family? (False for a
    /// CIDR of the other family and for a group.)
    fn in_cidr(source: &Source, a: Self) -> bool;
    /// `inst`'s address in this family, if it has one.
    fn of(model: &Model, inst: &Instance) -> Option<Self>;
    /// Whether a fragment train is keyed by the protocol too: `(src, dst,
    /// proto, id)` for IPv4, `(src, dst, id)` for IPv6 (see [`Frag`]).
    const TRAIN_BY_PROTO: bool;
}

impl Family for Ipv4Addr {
    const ICMP: u8 = proto::ICMP;
    const ICMP_RULE: Proto = Proto::Icmp;
    const TRAIN_BY_PROTO: bool = true;
    fn in_cidr(source: &Source, a: Ipv4Addr) -> bool {
        matches!(source, Source::Cidr(net) if net.contains(&a))
    }
    fn of(_: &Model, inst: &Instance) -> Option<Ipv4Addr> {
        Some(inst.ip)
    }
}

impl Family for Ipv6Addr {
    const ICMP: u8 = proto::ICMPV6;
    const ICMP_RULE: Proto = Proto::Icmpv6;
    const TRAIN_BY_PROTO: bool = false;
    fn in_cidr(source: &Source, a: Ipv6Addr) -> bool {
        matches!(source, Source::Cidr6(net) if net.contains(&a))
    }
    fn of(model: &Model, inst: &Instance) -> Option<Ipv6Addr> {
        model.ip6_of(inst.mac)
    }
}

/// The instance whose address (of `A`'s family) is `a`.
pub fn instance_at<A: Family>(model: &Model, a: A) -> Option<&Instance> {
    model
        .instances()
        .values()
        .find(|i| A::of(model, i) == Some(a))
}

/// Does `rule` (of a group of the destination) allow `pkt`?
pub fn rule_matches<A: Family>(model: &Model, rule: &Rule, pkt: &Packet<A>) -> bool {
    let icmp_ok = |p: Proto| p == A::ICMP_RULE && pkt.key.proto == A::ICMP;
    let proto_ok = match (rule.proto, rule.ports) {
        (Proto::All, _) => true,
        (Proto::Tcp, Ports::Range(lo, hi)) => {
            pkt.key.proto == proto::TCP && lo <= pkt.key.dport && pkt.key.dport <= hi
        }
        (Proto::Udp, Ports::Range(lo, hi)) => {
            pkt.key.proto == proto::UDP && lo <= pkt.key.dport && pkt.key.dport <= hi
        }
        (p @ (Proto::Icmp | Proto::Icmpv6), Ports::Icmp { ty, code }) => match pkt.l4 {
            L4::Icmp { ty: t, code: c, .. } if icmp_ok(p) => {
                ty.is_none_or(|x| x == t) && code.is_none_or(|x| x == c)
            }
            _ => false,
        },
        (Proto::Tcp, _) => pkt.key.proto == proto::TCP,
        (Proto::Udp, _) => pkt.key.proto == proto::UDP,
        (p @ (Proto::Icmp | Proto::Icmpv6), _) => icmp_ok(p) && matches!(pkt.l4, L4::Icmp { .. }),
    };
    if !proto_ok {
        return false;
    }
    match &rule.source {
        Source::Group { owner, group } => model.instances().values().any(|i| {
            A::of(model, i) == Some(pkt.key.src)
                && &i.owner == owner
                && i.groups.iter().any(|g| g == group)
        }),
        cidr => A::in_cidr(cidr, pkt.key.src),
    }
}

/// Do the ingress rules of the destination instance allow `pkt`? (The reference
/// statement of [`crate::compile::Snapshot::allows`] and, for IPv6, of
/// [`crate::compile::Snapshot::admitting_rule6`] being `Some`.)
pub fn allows<A: Family>(model: &Model, pkt: &Packet<A>) -> bool {
    if matches!(pkt.frag, Frag::Later { .. }) {
        return false;
    }
    let Some(dst) = instance_at(model, pkt.key.dst) else {
        return false;
    };
    dst.groups.iter().any(|name| {
        model
            .groups()
            .get(&(dst.owner.clone(), name.clone()))
            .is_some_and(|g| g.rules.iter().any(|r| rule_matches(model, r, pkt)))
    })
}

/// Do the egress rules of the source instance allow `pkt`? True when the
/// source is not an instance. An egress rule matches as an ingress rule would
/// with its "source" (the destination CIDR or group) tested against
/// `pkt.key.dst`. (The reference statement of
/// [`crate::compile::Snapshot::egress_allows`] for whole packets and first
/// fragments, and of [`crate::compile::Snapshot::egress_allows6`].)
pub fn egress_allows<A: Family>(model: &Model, pkt: &Packet<A>) -> bool {
    let Some(src) = instance_at(model, pkt.key.src) else {
        return true;
    };
    let swapped = Packet {
        key: FlowKey {
            src: pkt.key.dst,
            ..pkt.key
        },
        ..*pkt
    };
    src.groups.iter().any(|name| {
        model
            .groups()
            .get(&(src.owner.clone(), name.clone()))
            .is_some_and(|g| g.egress.iter().any(|r| rule_matches(model, r, &swapped)))
    })
}

fn is_instance<A: Family>(model: &Model, ip: A) -> bool {
    instance_at(model, ip).is_some()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tcp {
    SynSent,
    Established,
    Fin,
    Closed,
}

#[derive(Clone, Debug)]
struct Flow<A> {
    tcp: Tcp,
    seen_reply: bool,
    /// Alive while `now < expires`.
    expires: u32,
    generation: u64,
    /// L4 of the packet that opened the flow (for revalidation).
    l4: L4<A>,
    /// Cut by revalidation: both directions are dropped until it expires, is
    /// re-authorized, or the initiator's new SYN is allowed.
    revoked: bool,
}

/// The flows and fragment trains of one address family (the families share
/// nothing: an IPv6 packet never matches an IPv4 flow).
#[derive(Clone, Debug)]
struct State<A> {
    /// Keyed by the flow's original direction.
    flows: HashMap<FlowKey<A>, Flow<A>>,
    /// `(src, dst, proto, id)` → expiry; the protocol is 0 for IPv6, whose
    /// trains are `(src, dst, id)` (see [`Frag`]).
    trains: HashMap<(A, A, u8, u32), u32>,
}

impl<A> State<A> {
    fn new() -> State<A> {
        State {
            flows: HashMap::new(),
            trains: HashMap::new(),
        }
    }
}

/// A naive stateful evaluator with the conntrack judge's shape, for both
/// address families ([`Reference::judge`], [`Reference::judge6`]: the same
/// rules, each family with its own flows and trains).
#[derive(Clone, Debug)]
pub struct Reference {
    pub timeouts: Timeouts,
    pub mode: RevokeMode,
    v4: State<Ipv4Addr>,
    v6: State<Ipv6Addr>,
}

impl Reference {
    pub fn new(timeouts: Timeouts, mode: RevokeMode) -> Reference {
        Reference {
            timeouts,
            mode,
            v4: State::new(),
            v6: State::new(),
        }
    }

    /// Number of live-or-unreclaimed flows of both families (no trains).
    pub fn flows(&self) -> usize {
        self.v4.flows.len() + self.v6.flows.len()
    }

    /// Number of live-or-unreclaimed IPv6 flows (no trains).
    pub fn flows6(&self) -> usize {
        self.v6.flows.len()
    }

    /// The original direction of `key`'s flow if it is tracked, alive at `now`
    /// and revoked (for tests of the generators).
    pub fn revoked_flow(&self, key: FlowKey, now: u32) -> Option<FlowKey> {
        self.v4.revoked_flow(key, now)
    }

    /// [`Reference::revoked_flow`] for IPv6.
    pub fn revoked_flow6(&self, key: FlowKey6, now: u32) -> Option<FlowKey6> {
        self.v6.revoked_flow(key, now)
    }

    /// Judge an IPv4 packet against `model` (at `generation`) at time `now`.
    pub fn judge(
        &mut self,
        model: &Model,
        generation: u64,
        pkt: &Packet,
        now: u32,
    ) -> Result<(), DropReason> {
        let (t, mode) = (self.timeouts, self.mode);
        self.v4.judge(&t, mode, model, generation, pkt, now)
    }

    /// Judge an IPv6 packet: as [`Reference::judge`], with the IPv6
    /// addresses of instances, IPv6 rules and ICMPv6 (echo request/reply the
    /// queries; unreachable, packet too big, time exceeded and parameter
    /// problem the errors, as [`crate::parse`] classifies them).
    pub fn judge6(
        &mut self,
        model: &Model,
        generation: u64,
        pkt: &Packet6,
        now: u32,
    ) -> Result<(), DropReason> {
        let (t, mode) = (self.timeouts, self.mode);
        self.v6.judge(&t, mode, model, generation, pkt, now)
    }
}

fn timeout<A: Family>(t: &Timeouts, proto_: u8, f: &Flow<A>) -> u32 {
    match proto_ {
        proto::TCP => match f.tcp {
            Tcp::SynSent => t.tcp_syn_sent,
            Tcp::Established => t.tcp_established,
            Tcp::Fin => t.tcp_fin,
            Tcp::Closed => t.tcp_closed,
        },
        proto::UDP => {
            if f.seen_reply {
                t.udp_stream
            } else {
                t.udp
            }
        }
        p if p == A::ICMP => t.icmp,
        _ => t.other,
    }
}

impl<A: Family> State<A> {
    /// The original key of the live flow `key` belongs to, in either orientation.
    /// Expired flows are forgotten.
    fn live_flow(&mut self, key: FlowKey<A>, now: u32) -> Option<FlowKey<A>> {
        for k in [key, key.reversed()] {
            if let Some(f) = self.flows.get(&k) {
                if now < f.expires {
                    return Some(k);
                }
                self.flows.remove(&k);
            }
        }
        None
    }

    fn revoked_flow(&self, key: FlowKey<A>, now: u32) -> Option<FlowKey<A>> {
        [key, key.reversed()].into_iter().find(|k| {
            self.flows
                .get(k)
                .is_some_and(|f| f.revoked && now < f.expires)
        })
    }

    /// Look up and revalidate. `own` is the packet when it belongs to the flow
    /// (not an ICMP error about it). `Ok(Some(orig))` tracked, `Ok(None)`
    /// untracked, `Err(())` revoked (the flow stays, marked, until it expires).
    #[allow(clippy::too_many_arguments)]
    fn tracked(
        &mut self,
        timeouts: &Timeouts,
        mode: RevokeMode,
        model: &Model,
        generation: u64,
        key: FlowKey<A>,
        own: Option<&Packet<A>>,
        now: u32,
    ) -> Result<Option<FlowKey<A>>, ()> {
        let Some(orig) = self.live_flow(key, now) else {
            return Ok(None);
        };
        if mode == RevokeMode::Keep {
            return Ok(Some(orig));
        }
        let revoked_timeout = timeouts.revoked;
        let f = self.flows.get_mut(&orig).expect("live");
        // The original direction, as it was first allowed.
        let opkt = Packet {
            key: orig,
            l4: f.l4,
            frag: Frag::None,
        };
        let inbound = is_instance(model, orig.dst);
        if f.revoked {
            if let Some(p) = own
                && p.key == orig
                && matches!(p.l4, L4::Tcp { flags }
                    if flags & (tcp_flags::SYN | tcp_flags::ACK) == tcp_flags::SYN)
                && (!inbound || allows(model, p))
                && egress_allows(model, p)
            {
                // The initiator's new SYN, allowed now: a fresh flow.
                f.revoked = false;
                f.tcp = Tcp::SynSent;
                f.seen_reply = false;
                f.generation = generation;
                return Ok(Some(orig));
            }
            if f.generation != generation {
                f.generation = generation;
                if (!inbound || allows(model, &opkt)) && egress_allows(model, &opkt) {
                    f.revoked = false;
                    return Ok(Some(orig));
                }
            }
            if own.is_some() {
                f.expires = now.saturating_add(revoked_timeout);
            }
            return Err(());
        }
        if f.generation != generation {
            f.generation = generation;
            if (inbound && !allows(model, &opkt)) || !egress_allows(model, &opkt) {
                f.revoked = true;
                f.expires = now.saturating_add(revoked_timeout);
                return Err(());
            }
        }
        Ok(Some(orig))
    }

    /// The fragment train of `pkt` with identification `id`.
    fn train(pkt: &Packet<A>, id: u32) -> (A, A, u8, u32) {
        let p = if A::TRAIN_BY_PROTO { pkt.key.proto } else { 0 };
        (pkt.key.src, pkt.key.dst, p, id)
    }

    /// Judge a packet against `model` (at `generation`) at time `now`.
    fn judge(
        &mut self,
        timeouts: &Timeouts,
        mode: RevokeMode,
        model: &Model,
        generation: u64,
        pkt: &Packet<A>,
        now: u32,
    ) -> Result<(), DropReason> {
        let dst_is_inst = is_instance(model, pkt.key.dst);
        if let Frag::Later { id } = pkt.frag {
            if !dst_is_inst {
                return Ok(());
            }
            return match self.trains.get(&Self::train(pkt, id)) {
                Some(&exp) if now < exp => Ok(()),
                _ => Err(DropReason::UnmatchedFragment),
            };
        }
        if let L4::Icmp {
            kind: IcmpKind::Error { inner },
            ..
        } = pkt.l4
        {
            // The error must go back to the quoted datagram's sender, and an
            // instance may only send errors about datagrams addressed to it.
            let fits = inner.src == pkt.key.dst
                && (inner.dst == pkt.key.src || !is_instance(model, pkt.key.src));
            let tracked = if fits {
                self.tracked(timeouts, mode, model, generation, inner, None, now)
            } else {
                Ok(None)
            };
            match tracked {
                Ok(Some(_)) => {}
                r => {
                    if dst_is_inst && !allows(model, pkt) {
                        return Err(if r.is_err() {
                            DropReason::Revoked
                        } else {
                            DropReason::UnrelatedIcmpError
                        });
                    }
                }
            }
        } else {
            match self.tracked(timeouts, mode, model, generation, pkt.key, Some(pkt), now) {
                Err(()) => return Err(DropReason::Revoked),
                Ok(Some(orig)) => {
                    let from_orig = orig == pkt.key;
                    let mut f = self.flows[&orig].clone();
                    if !from_orig {
                        f.seen_reply = true;
                    }
                    if let L4::Tcp { flags } = pkt.l4 {
                        f.tcp = tcp_next(f.tcp, flags, from_orig);
                    }
                    f.expires = now.saturating_add(timeout(timeouts, pkt.key.proto, &f));
                    self.flows.insert(orig, f);
                }
                Ok(None) => {
                    if !egress_allows(model, pkt) {
                        return Err(DropReason::NoEgressRule);
                    }
                    if dst_is_inst && !allows(model, pkt) {
                        return Err(DropReason::NoRule);
                    }
                    let creates = !matches!(
                        pkt.l4,
                        L4::Icmp {
                            kind: IcmpKind::Reply | IcmpKind::Other,
                            ..
                        }
                    );
                    if creates {
                        let tcp = match pkt.l4 {
                            L4::Tcp { flags } => {
                                let start =
                                    if flags & tcp_flags::SYN != 0 && flags & tcp_flags::ACK == 0 {
                                        Tcp::SynSent
                                    } else {
                                        Tcp::Established
                                    };
                                tcp_next(start, flags, true)
                            }
                            _ => Tcp::Established,
                        };
                        let mut f = Flow {
                            tcp,
                            seen_reply: false,
                            expires: 0,
                            generation,
                            l4: pkt.l4,
                            revoked: false,
                        };
                        f.expires = now.saturating_add(timeout(timeouts, pkt.key.proto, &f));
                        self.flows.insert(pkt.key, f);
                    }
                }
            }
        }
        if let Frag::First { id } = pkt.frag {
            self.trains
                .insert(Self::train(pkt, id), now.saturating_add(timeouts.frag));
        }
        Ok(())
    }
}

/// TCP transitions, as in the conntrack module docs.
fn tcp_next(s: Tcp, flags: u8, from_orig: bool) -> Tcp {
    let syn_only = flags & tcp_flags::SYN != 0 && flags & tcp_flags::ACK == 0;
    if flags & tcp_flags::RST != 0 {
        Tcp::Closed
    } else if flags & tcp_flags::FIN != 0 {
        Tcp::Fin
    } else if syn_only && from_orig && (s == Tcp::Fin || s == Tcp::Closed) {
        Tcp::SynSent
    } else if s == Tcp::SynSent && !from_orig {
        Tcp::Established
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Instance, Limits, Owner};

    fn owner() -> Owner {
        Owner("111122223333".into())
    }

    fn model() -> Model {
        let rules = vec![
            Rule {
                proto: Proto::Tcp,
                ports: Ports::Range(22, 22),
                source: Source::Cidr("10.0.0.0/8".parse().unwrap()),
            },
            Rule {
                proto: Proto::All,
                ports: Ports::None,
                source: Source::Group {
                    owner: owner(),
                    group: "web".into(),
                },
            },
        ];
        let insts = [
            ("i-d", [172, 31, 0, 1], "db", 1u8),
            ("i-w", [172, 31, 0, 2], "web", 2),
        ]
        .map(|(id, ip, g, n)| Instance {
            id: id.into(),
            owner: owner(),
            mac: [2, 0, 0, 0, 0, n],
            ip: ip.into(),
            groups: vec![g.into()],
        });
        Model::build(
            Limits::default(),
            &owner(),
            &[("db", rules), ("web", vec![])],
            insts,
        )
        .expect("valid test model")
    }

    fn pkt(src: [u8; 4], dst: [u8; 4], proto_: u8, dport: u16) -> Packet {
        Packet {
            key: FlowKey {
                src: src.into(),
                dst: dst.into(),
                proto: proto_,
                sport: 999,
                dport,
            },
            l4: match proto_ {
                proto::TCP => L4::Tcp {
                    flags: tcp_flags::SYN,
                },
                proto::UDP => L4::Udp,
                _ => L4::Other,
            },
            frag: Frag::None,
        }
    }

    #[test]
    fn reference_rules() {
        let m = model();
        let db = [172, 31, 0, 1];
        let web = [172, 31, 0, 2];
        assert!(allows(&m, &pkt([10, 1, 2, 3], db, proto::TCP, 22)));
        assert!(!allows(&m, &pkt([10, 1, 2, 3], db, proto::TCP, 23)));
        assert!(allows(&m, &pkt(web, db, 47, 0)));
        assert!(!allows(&m, &pkt(db, web, proto::TCP, 22)));
        assert!(!allows(&m, &pkt([11, 0, 0, 1], db, proto::UDP, 22)));
    }

    #[test]
    fn reference_state_and_revalidation() {
        let mut m = model();
        let db = [172, 31, 0, 1];
        let out = [10, 9, 9, 9];
        let mut r = Reference::new(Timeouts::default(), RevokeMode::Revalidate);
        assert_eq!(r.judge(&m, 1, &pkt(out, db, proto::TCP, 22), 0), Ok(()));
        let mut reply = pkt(db, out, proto::TCP, 999);
        reply.key.sport = 22;
        reply.l4 = L4::Tcp {
            flags: tcp_flags::SYN | tcp_flags::ACK,
        };
        assert_eq!(r.judge(&m, 1, &reply, 0), Ok(()));
        // Revoke the ssh rule.
        let ssh = m.group(&owner(), "db").unwrap().rules[0].clone();
        m.revoke_rules(&owner(), "db", &[ssh]).unwrap();
        assert_eq!(r.judge(&m, 2, &reply, 1), Err(DropReason::Revoked));
        // Cut in both directions; kept (marked) for the revoked timeout.
        let mut ack = pkt(out, db, proto::TCP, 22);
        ack.l4 = L4::Tcp {
            flags: tcp_flags::ACK,
        };
        assert_eq!(r.judge(&m, 2, &ack, 2), Err(DropReason::Revoked));
        assert_eq!(r.judge(&m, 2, &reply, 31), Err(DropReason::Revoked));
        assert_eq!(r.flows(), 1);
        assert!(r.revoked_flow(reply.key, 31).is_some());
        // 30 s of silence: gone, and the outside's packets are unmatched.
        assert_eq!(r.judge(&m, 2, &ack, 61), Err(DropReason::NoRule));
        assert_eq!(r.flows(), 0);
    }

    /// IPv6: a flow's reply passes by state, a Packet Too Big about it passes
    /// although no rule admits ICMPv6, a later fragment joins its train
    /// whatever protocol it names, and the families share no flows.
    #[test]
    fn reference_judges_ipv6() {
        let mut m = model();
        m.set_subnet6(Some("fd00:5::/64".parse().unwrap())).unwrap();
        m.authorize_rules(
            &owner(),
            "db",
            &[Rule {
                proto: Proto::Udp,
                ports: Ports::Range(53, 53),
                source: Source::Cidr6("2001:db8::/32".parse().unwrap()),
            }],
        )
        .unwrap();
        let db = m.ip6_of([2, 0, 0, 0, 0, 1]).unwrap();
        let out: Ipv6Addr = "2001:db8::7".parse().unwrap();
        let mut r = Reference::new(Timeouts::default(), RevokeMode::Revalidate);
        let q = Packet6 {
            key: FlowKey6 {
                src: out,
                dst: db,
                proto: proto::UDP,
                sport: 999,
                dport: 53,
            },
            l4: L4::Udp,
            frag: Frag::First { id: 7 },
        };
        assert_eq!(r.judge6(&m, 1, &q, 0), Ok(()));
        assert_eq!(r.flows6(), 1);
        let later = Packet6 {
            key: FlowKey6 {
                proto: 44,
                sport: 0,
                dport: 0,
                ..q.key
            },
            l4: L4::Other,
            frag: Frag::Later { id: 7 },
        };
        assert_eq!(r.judge6(&m, 1, &later, 1), Ok(()));
        let other_train = Packet6 {
            frag: Frag::Later { id: 8 },
            ..later
        };
        assert_eq!(
            r.judge6(&m, 1, &other_train, 1),
            Err(DropReason::UnmatchedFragment)
        );
        let reply = Packet6 {
            key: q.key.reversed(),
            l4: L4::Udp,
            frag: Frag::None,
        };
        assert_eq!(r.judge6(&m, 1, &reply, 1), Ok(()));
        let ptb = |inner: FlowKey6| Packet6 {
            key: FlowKey6 {
                src: out,
                dst: db,
                proto: proto::ICMPV6,
                sport: 0,
                dport: 0,
            },
            l4: L4::Icmp {
                ty: 2,
                code: 0,
                kind: IcmpKind::Error { inner },
            },
            frag: Frag::None,
        };
        assert_eq!(r.judge6(&m, 1, &ptb(reply.key), 2), Ok(()));
        let unrelated = FlowKey6 {
            dport: 54,
            ..reply.key
        };
        assert_eq!(
            r.judge6(&m, 1, &ptb(unrelated), 2),
            Err(DropReason::UnrelatedIcmpError)
        );
        // The IPv4 table knows nothing of it.
        assert_eq!(r.flows(), 1);
        assert_eq!(
            r.judge(
                &m,
                1,
                &pkt([10, 9, 9, 9], [172, 31, 0, 1], proto::UDP, 53),
                2
            ),
            Err(DropReason::NoRule)
        );
    }
}
