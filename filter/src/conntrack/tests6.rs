//! IPv6 connection tracking, mirroring the IPv4 tests in `tests.rs`.
//!
//! Until IPv6 rules are compiled, `Snapshot::admitting_rule6` admits nothing
//! and `egress_allows6` lets only non-instances send, so tracked flows are
//! made where no rule is asked: under a snapshot in which the instances are
//! IPv4-only (their IPv6 addresses are then plain outside addresses), or
//! towards an instance of another host (cluster scoping). The later snapshot,
//! in which the instances are dual-stack, then shows what tracking does for
//! an instance: replies and related ICMPv6 errors pass, anything else is
//! judged by the (empty) IPv6 rules.

use std::net::{Ipv4Addr, Ipv6Addr};

use super::family::Family;
use super::policy::*;
use super::table::*;
use crate::compile::{Snapshot, compile};
use crate::model::{Instance, Limits, Model, Owner, Ports, Proto, Rule, Source};
use crate::{DropReason, FlowKey6, Frag, IcmpKind, L4, Packet, Packet6, proto, tcp_flags};

const SYN: u8 = tcp_flags::SYN;
const ACK: u8 = tcp_flags::ACK;
const MAC_A: [u8; 6] = [2, 0, 0, 0, 0, 1];
const MAC_B: [u8; 6] = [2, 0, 0, 0, 0, 2];
const A4: [u8; 4] = [172, 31, 0, 10];
const B4: [u8; 4] = [172, 31, 0, 11];
/// An address on the uplink side, and a router there.
const OUT: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 7);
const ROUTER: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);

fn owner() -> Owner {
    Owner("111122223333".into())
}

/// A (group "a") and B (group "b"), no ingress rules; dual-stack in the
/// instance prefix `fd00:5a:1::/64` when `dual`. `b_egress`: keep group b's
/// default egress rules.
fn model(dual: bool, b_egress: bool) -> Model {
    model_with(dual, b_egress, vec![])
}

/// [`model`] with ingress rules `b_rules` in group b.
fn model_with(dual: bool, b_egress: bool, b_rules: Vec<Rule>) -> Model {
    let insts =
        [("i-a", A4, MAC_A, "a"), ("i-b", B4, MAC_B, "b")].map(|(id, ip, mac, g)| Instance {
            id: id.into(),
            owner: owner(),
            mac,
            ip: ip.into(),
            groups: vec![g.into()],
        });
    let mut m = Model::build(
        Limits::default(),
        &owner(),
        &[("a", vec![]), ("b", b_rules)],
        insts,
    )
    .expect("valid test model");
    if !b_egress {
        let e = m.group(&owner(), "b").expect("group b").egress.clone();
        m.revoke_rules_dir(&owner(), "b", &e, true)
            .expect("revoke egress");
    }
    if dual {
        m.set_subnet6(Some("fd00:5a:1::/64".parse().expect("prefix")))
            .expect("a /64");
    }
    m
}

/// The IPv6 addresses A and B get when dual-stack.
fn a6() -> Ipv6Addr {
    model(true, true).ip6_of(MAC_A).expect("dual-stack")
}
fn b6() -> Ipv6Addr {
    model(true, true).ip6_of(MAC_B).expect("dual-stack")
}

/// Snapshot 1: IPv4-only instances; snapshot 2: the same, dual-stack.
fn snaps(b_egress: bool) -> (Snapshot, Snapshot) {
    (
        compile(&model(false, b_egress), 1),
        compile(&model(true, b_egress), 2),
    )
}

fn key(src: Ipv6Addr, sport: u16, dst: Ipv6Addr, dport: u16, p: u8) -> FlowKey6 {
    FlowKey6 {
        src,
        dst,
        proto: p,
        sport,
        dport,
    }
}

fn tcp(src: Ipv6Addr, sport: u16, dst: Ipv6Addr, dport: u16, flags: u8) -> Packet6 {
    Packet6 {
        key: key(src, sport, dst, dport, proto::TCP),
        l4: L4::Tcp { flags },
        frag: Frag::None,
    }
}

fn udp(src: Ipv6Addr, sport: u16, dst: Ipv6Addr, dport: u16) -> Packet6 {
    Packet6 {
        key: key(src, sport, dst, dport, proto::UDP),
        l4: L4::Udp,
        frag: Frag::None,
    }
}

fn icmp6(src: Ipv6Addr, dst: Ipv6Addr, ty: u8, kind: IcmpKind<Ipv6Addr>, id: u16) -> Packet6 {
    Packet6 {
        key: key(src, id, dst, id, proto::ICMPV6),
        l4: L4::Icmp { ty, code: 0, kind },
        frag: Frag::None,
    }
}

/// A Packet Too Big from `src` to `dst` about the packet `inner`.
fn ptb(src: Ipv6Addr, dst: Ipv6Addr, inner: FlowKey6) -> Packet6 {
    Packet6 {
        key: key(src, 0, dst, 0, proto::ICMPV6),
        l4: L4::Icmp {
            ty: 2,
            code: 0,
            kind: IcmpKind::Error { inner },
        },
        frag: Frag::None,
    }
}

fn ct(mode: RevokeMode) -> Conntrack {
    Conntrack::new(CtConfig {
        on_revoke: mode,
        ..CtConfig::with_capacity(1 << 12)
    })
}

#[test]
fn unsolicited_inbound_to_an_instance_is_denied() {
    let (_, s2) = snaps(true);
    let ct = ct(RevokeMode::Revalidate);
    let b = b6();
    assert_eq!(
        ct.judge6(&s2, &tcp(OUT, 40000, b, 22, SYN), 0),
        Err(DropReason::NoRule)
    );
    assert_eq!(
        ct.judge6(&s2, &tcp(OUT, 40000, b, 22, ACK), 0),
        Err(DropReason::NoRule),
        "no mid-stream pickup without a rule"
    );
    assert_eq!(
        ct.judge6(&s2, &udp(OUT, 53, b, 5353), 0),
        Err(DropReason::NoRule)
    );
    assert_eq!(
        ct.judge6(&s2, &icmp6(OUT, b, 128, IcmpKind::Request, 7), 0),
        Err(DropReason::NoRule)
    );
    assert_eq!(
        ct.judge6(&s2, &icmp6(OUT, b, 129, IcmpKind::Reply, 7), 0),
        Err(DropReason::NoRule),
        "an echo reply without its request"
    );
    // Neighbor discovery is judged by rules only, like other ICMP.
    assert_eq!(
        ct.judge6(&s2, &icmp6(OUT, b, 135, IcmpKind::Other, 0), 0),
        Err(DropReason::NoRule)
    );
    // From one instance to another: the same (no IPv6 ingress rule of b).
    let r = ct.judge6(&s2, &tcp(a6(), 40000, b, 22, SYN), 0);
    assert!(
        matches!(r, Err(DropReason::NoEgressRule | DropReason::NoRule)),
        "{r:?}"
    );
    assert_eq!(ct.len(), 0, "nothing denied is tracked");
}

#[test]
fn unrelated_errors_and_fragments_to_an_instance_are_dropped() {
    let (_, s2) = snaps(true);
    let ct = ct(RevokeMode::Revalidate);
    let b = b6();
    let sent = key(b, 5000, OUT, 443, proto::TCP);
    assert_eq!(
        ct.judge6(&s2, &ptb(ROUTER, b, sent), 0),
        Err(DropReason::UnrelatedIcmpError)
    );
    let mut later = udp(OUT, 0, b, 0);
    later.l4 = L4::Other;
    later.frag = Frag::Later { id: 0xdead_beef };
    assert_eq!(
        ct.judge6(&s2, &later, 0),
        Err(DropReason::UnmatchedFragment)
    );
    // Towards the uplink, only egress judges: errors and fragments pass.
    let out_sent = key(OUT, 1, ROUTER, 2, proto::UDP);
    assert_eq!(ct.judge6(&s2, &ptb(b, OUT, out_sent), 0), Ok(()));
    later.key.dst = ROUTER;
    assert_eq!(ct.judge6(&s2, &later, 0), Ok(()));
}

/// B's connection to the uplink, opened while B was IPv4-only, then tracked
/// for B once B is dual-stack (RevokeMode::Keep: the edit does not cut it).
#[test]
fn replies_and_packet_too_big_of_a_tracked_flow_reach_the_instance() {
    let (s1, s2) = snaps(true);
    let ct = ct(RevokeMode::Keep);
    let b = b6();
    let syn = tcp(b, 5000, OUT, 443, SYN);
    assert_eq!(ct.judge6(&s1, &syn, 0), Ok(()));
    assert_eq!((ct.len(), ct.len6()), (1, 1));
    assert!(ct.tracks(&syn.key, 1));
    assert!(ct.tracks(&syn.key.reversed(), 1), "either orientation");
    // The reply reaches B, with no IPv6 ingress rule.
    assert_eq!(
        ct.judge6(&s2, &tcp(OUT, 443, b, 5000, SYN | ACK), 1),
        Ok(())
    );
    assert_eq!(ct.judge6(&s2, &tcp(b, 5000, OUT, 443, ACK), 1), Ok(()));
    // Packet Too Big from a router on the path, about B's segment: passes.
    let big = key(b, 5000, OUT, 443, proto::TCP);
    assert_eq!(ct.judge6(&s2, &ptb(ROUTER, b, big), 2), Ok(()));
    // ... but not about another connection, nor sent to someone else, nor
    // forged by another instance (A is not the segment's destination).
    let other = key(b, 5001, OUT, 443, proto::TCP);
    assert_eq!(
        ct.judge6(&s2, &ptb(ROUTER, b, other), 2),
        Err(DropReason::UnrelatedIcmpError)
    );
    assert_eq!(
        ct.judge6(&s2, &ptb(a6(), b, big), 2),
        Err(DropReason::UnrelatedIcmpError)
    );
    // The same port pair from another outside address is a new flow: denied.
    assert_eq!(
        ct.judge6(&s2, &tcp(ROUTER, 443, b, 5000, ACK), 2),
        Err(DropReason::NoRule)
    );
    // IPv4 knows nothing of it.
    let v4 = Packet {
        key: crate::FlowKey {
            src: Ipv4Addr::new(203, 0, 113, 7),
            dst: B4.into(),
            proto: proto::TCP,
            sport: 443,
            dport: 5000,
        },
        l4: L4::Tcp { flags: ACK },
        frag: Frag::None,
    };
    assert_eq!(ct.judge(&s2, &v4, 2), Err(DropReason::NoRule));
    // Closing: FIN then RST; after the closed timeout the reply path is gone.
    assert_eq!(
        ct.judge6(&s2, &tcp(b, 5000, OUT, 443, tcp_flags::RST), 3),
        Ok(())
    );
    let t = Timeouts::default().tcp_closed;
    assert_eq!(
        ct.judge6(&s2, &tcp(OUT, 443, b, 5000, ACK), 3 + t),
        Err(DropReason::NoRule)
    );
}

#[test]
fn echo_replies_use_the_icmp_timeout_and_identifier() {
    let (s1, s2) = snaps(true);
    let ct = Conntrack::new(CtConfig {
        on_revoke: RevokeMode::Keep,
        timeouts: Timeouts {
            icmp: 5,
            other: 100,
            ..Timeouts::default()
        },
        ..CtConfig::with_capacity(1 << 12)
    });
    let b = b6();
    for id in [1, 2] {
        let req = icmp6(b, OUT, 128, IcmpKind::Request, id);
        assert_eq!(ct.judge6(&s1, &req, 0), Ok(()));
    }
    let reply = |id| icmp6(OUT, b, 129, IcmpKind::Reply, id);
    assert_eq!(
        ct.judge6(&s2, &reply(1), 4),
        Ok(()),
        "within the ICMP timeout"
    );
    assert_eq!(
        ct.judge6(&s2, &reply(3), 4),
        Err(DropReason::NoRule),
        "another identifier"
    );
    // ICMPv6 entries time out as ICMP (5 s), not as "other" protocols (100 s).
    assert_eq!(ct.judge6(&s2, &reply(2), 6), Err(DropReason::NoRule));
    // Destination unreachable about the echo (keyed by its identifier).
    let req = icmp6(b, OUT, 128, IcmpKind::Request, 9);
    assert_eq!(ct.judge6(&s1, &req, 10), Ok(()));
    let unreach = Packet6 {
        key: key(ROUTER, 0, b, 0, proto::ICMPV6),
        l4: L4::Icmp {
            ty: 1,
            code: 3,
            kind: IcmpKind::Error { inner: req.key },
        },
        frag: Frag::None,
    };
    assert_eq!(ct.judge6(&s2, &unreach, 11), Ok(()));
}

/// Revalidation (the default): under the new generation the flow's original
/// direction is asked again; B's group has lost its egress rules, so B's
/// connection is cut both ways and stays cut.
#[test]
fn revalidation_cuts_a_flow_whose_egress_is_gone() {
    let (s1, s2) = snaps(false);
    let ct = ct(RevokeMode::Revalidate);
    let b = b6();
    assert_eq!(ct.judge6(&s1, &udp(b, 5000, OUT, 53), 0), Ok(()));
    assert_eq!(
        ct.judge6(&s2, &udp(OUT, 53, b, 5000), 1),
        Err(DropReason::Revoked)
    );
    assert_eq!(
        ct.judge6(&s2, &udp(b, 5000, OUT, 53), 1),
        Err(DropReason::Revoked),
        "B's own packets cannot re-open it"
    );
    // A Packet Too Big about a cut flow is dropped as revoked, too.
    let sent = key(b, 5000, OUT, 53, proto::UDP);
    assert_eq!(
        ct.judge6(&s2, &ptb(ROUTER, b, sent), 1),
        Err(DropReason::Revoked)
    );
    // Kept mode lets the same flow live on.
    let keep = ct_keep_with(&s1, b);
    assert_eq!(keep.judge6(&s2, &udp(OUT, 53, b, 5000), 1), Ok(()));
}

fn ct_keep_with(s1: &Snapshot, b: Ipv6Addr) -> Conntrack {
    let ct = ct(RevokeMode::Keep);
    assert_eq!(ct.judge6(s1, &udp(b, 5000, OUT, 53), 0), Ok(()));
    ct
}

#[test]
fn later_fragments_follow_their_train() {
    let (s1, s2) = snaps(true);
    let ct = ct(RevokeMode::Keep);
    let b = b6();
    // A first fragment from the uplink to B's address, let through while that
    // address was no instance's: its train (src, dst, id) is remembered.
    let mut first = udp(OUT, 4000, b, 4001);
    first.frag = Frag::First { id: 0x0102_0304 };
    assert_eq!(ct.judge6(&s1, &first, 0), Ok(()));
    assert_eq!(ct.len6(), 2, "the flow and its train");
    let later = |src: Ipv6Addr, id: u32, p: u8| Packet6 {
        key: key(src, 0, b, 0, p),
        l4: L4::Other,
        frag: Frag::Later { id },
    };
    assert_eq!(
        ct.judge6(&s2, &later(OUT, 0x0102_0304, proto::UDP), 1),
        Ok(())
    );
    // The fragment header names the first header of the fragmentable part,
    // which may be a destination-options header: trains ignore the protocol.
    assert_eq!(ct.judge6(&s2, &later(OUT, 0x0102_0304, 60), 1), Ok(()));
    for (src, id) in [(OUT, 0x0102_0305), (ROUTER, 0x0102_0304), (OUT, 0x0304)] {
        assert_eq!(
            ct.judge6(&s2, &later(src, id, proto::UDP), 1),
            Err(DropReason::UnmatchedFragment),
            "{src} id {id:#x}"
        );
    }
    let frag_t = Timeouts::default().frag;
    assert_eq!(
        ct.judge6(&s2, &later(OUT, 0x0102_0304, proto::UDP), frag_t),
        Err(DropReason::UnmatchedFragment),
        "the train expires"
    );
}

/// Cluster mode: B lives on another host. This host lets uplink traffic to B
/// into the overlay and tracks it (B's host enforces B's rules); B's own host
/// does not.
#[test]
fn remote_destination_is_judged_by_its_host() {
    let (_, s2) = snaps(true);
    let b = b6();
    let here = ct(RevokeMode::Revalidate);
    let remote = |a: Ipv6Addr| a == b;
    let syn = tcp(OUT, 40000, b, 22, SYN);
    assert_eq!(here.judge_scoped6(&s2, &syn, 0, remote), Ok(()));
    assert!(here.tracks(&syn.key, 0));
    // A later generation does not cut it here: the rules are B's host's.
    let s3 = compile(&model(true, true), 3);
    assert_eq!(
        here.judge_scoped6(&s3, &tcp(b, 22, OUT, 40000, SYN | ACK), 1, remote),
        Ok(())
    );
    assert_eq!(
        here.judge_rule6(&s3, &tcp(OUT, 40000, b, 22, ACK), 1, remote),
        Ok(Pass::State)
    );
    let home = ct(RevokeMode::Revalidate);
    assert_eq!(home.judge6(&s2, &syn, 0), Err(DropReason::NoRule));
}

#[test]
fn table_full_and_quotas_count_ipv6_entries() {
    let (_, s2) = snaps(true);
    let b = b6();
    // The IPv6 table has its own capacity.
    let ct = Conntrack::new(CtConfig {
        capacity6: 100,
        ..CtConfig::with_capacity(1 << 12)
    });
    for i in 0..100u16 {
        assert_eq!(ct.judge6(&s2, &udp(OUT, i, ROUTER, 53), 0), Ok(()), "{i}");
    }
    assert_eq!(
        ct.judge6(&s2, &udp(OUT, 100, ROUTER, 53), 0),
        Err(DropReason::ConntrackFull)
    );
    assert_eq!(ct.len6(), 100);
    // Expired entries are reclaimed to make room.
    let udp_t = Timeouts::default().udp;
    assert_eq!(ct.sweep(udp_t), 100);
    assert_eq!(ct.judge6(&s2, &udp(OUT, 100, ROUTER, 53), udp_t), Ok(()));
    // IPv4 is not affected by a full IPv6 table.
    let v4 = Packet {
        key: crate::FlowKey {
            src: Ipv4Addr::new(203, 0, 113, 7),
            dst: Ipv4Addr::new(198, 51, 100, 1),
            proto: proto::UDP,
            sport: 1,
            dport: 53,
        },
        l4: L4::Udp,
        frag: Frag::None,
    };
    assert_eq!(ct.judge(&s2, &v4, 0), Ok(()));
    assert_eq!(ct.len(), ct.count_by_scan());

    // One quota per instance, both families together: flows into B (on
    // another host, so this host tracks them without asking rules) are
    // charged to B whether IPv4 or IPv6.
    let ct = Conntrack::new(CtConfig {
        per_instance_quota: 5,
        ..CtConfig::with_capacity(1 << 12)
    });
    let remote6 = |a: Ipv6Addr| a == b;
    let remote4 = |a: Ipv4Addr| a == Ipv4Addr::from(B4);
    for i in 0..3u16 {
        assert_eq!(
            ct.judge_scoped6(&s2, &udp(OUT, i, b, 53), 0, remote6),
            Ok(())
        );
    }
    let mut v4b = v4;
    v4b.key.dst = B4.into();
    for i in 0..2u16 {
        v4b.key.sport = i;
        assert_eq!(ct.judge_scoped(&s2, &v4b, 0, remote4), Ok(()));
    }
    assert_eq!(ct.charged_to(B4.into()), 5);
    assert_eq!(
        ct.judge_scoped6(&s2, &udp(OUT, 9, b, 53), 0, remote6),
        Err(DropReason::ConntrackQuota)
    );
    v4b.key.sport = 9;
    assert_eq!(
        ct.judge_scoped(&s2, &v4b, 0, remote4),
        Err(DropReason::ConntrackQuota)
    );
    assert_eq!(ct.charged_to(A4.into()), 0);
    // Everything expires and is uncharged.
    assert_eq!(ct.sweep(10_000), 5);
    assert_eq!((ct.len(), ct.charged_to(B4.into())), (0, 0));
}

#[test]
fn flow_keys_are_canonical_and_round_trip() {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for _ in 0..10_000 {
        let ip = |hi: u64, lo: u64| Ipv6Addr::from(u128::from(hi) << 64 | u128::from(lo));
        let k = key(
            ip(next(), next()),
            next() as u16,
            // Sometimes the same address both ways: ports decide.
            if next() % 8 == 0 {
                OUT
            } else {
                ip(next(), next())
            },
            next() as u16,
            next() as u8,
        );
        let (fk, src_is_a) = <Ipv6Addr as Family>::flow_key(&k);
        let (rk, r_src_is_a) = <Ipv6Addr as Family>::flow_key(&k.reversed());
        if k.src != k.dst || k.sport != k.dport {
            assert_eq!(fk, rk, "both directions share one entry");
            assert_ne!(src_is_a, r_src_is_a);
        }
        assert_eq!(<Ipv6Addr as Family>::original(fk, src_is_a), k);
        assert_ne!(fk, <Ipv6Addr as Family>::frag_key(&k, 7));
    }
}

#[test]
fn bucket_addrs_lie_in_the_ipv6_table() {
    let (_, s2) = snaps(true);
    let ct = ct(RevokeMode::Revalidate);
    let (base, len) = ct.table_region6();
    assert_eq!(base % 4096, 0);
    for i in 0..300u16 {
        let p = udp(OUT, i, ROUTER, 53);
        ct.judge6(&s2, &p, 0).expect("tracked");
        ct.prefetch(&p);
        for a in ct.bucket_addrs(&p) {
            assert!(a >= base && a + BUCKET_BYTES6 <= base + len);
            assert_eq!(a % 64, 0);
        }
    }
    let (base4, len4) = ct.table_region();
    assert!(base4 + len4 <= base || base + len <= base4, "two tables");
}

// ---- allowed inbound (IPv6 rules) ----

/// tcp 22 from the documentation prefix, ICMPv6 echo requests from anywhere.
fn ssh6_rules() -> Vec<Rule> {
    vec![
        Rule {
            proto: Proto::Tcp,
            ports: Ports::Range(22, 22),
            source: Source::Cidr6("2001:db8::/32".parse().expect("cidr")),
        },
        Rule {
            proto: Proto::Icmpv6,
            ports: Ports::Icmp {
                ty: Some(128),
                code: None,
            },
            source: Source::Cidr6("::/0".parse().expect("cidr")),
        },
    ]
}

/// An address outside the rules' prefix.
const FAR: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb9, 0, 0, 0, 0, 0, 7);

#[test]
fn allowed_inbound_flow_passes_both_ways_by_state() {
    let snap = compile(&model_with(true, true, ssh6_rules()), 1);
    let ct = ct(RevokeMode::Revalidate);
    let b = b6();
    let syn = tcp(OUT, 40000, b, 22, SYN);
    assert!(matches!(
        ct.judge_rule6(&snap, &syn, 0, |_| false),
        Ok(Pass::Rule { new_flow: true, .. })
    ));
    assert_eq!(ct.charged_to(B4.into()), 1, "charged to B's one quota");
    assert_eq!(
        ct.judge_rule6(&snap, &tcp(b, 22, OUT, 40000, SYN | ACK), 0, |_| false),
        Ok(Pass::State)
    );
    assert_eq!(
        ct.judge_rule6(&snap, &tcp(OUT, 40000, b, 22, ACK), 1, |_| false),
        Ok(Pass::State)
    );
    // Outside the prefix, another port, or only an IPv4 rule: no.
    assert_eq!(
        ct.judge6(&snap, &tcp(FAR, 40000, b, 22, SYN), 0),
        Err(DropReason::NoRule)
    );
    assert_eq!(
        ct.judge6(&snap, &tcp(OUT, 40000, b, 23, SYN), 0),
        Err(DropReason::NoRule)
    );
    let v4_only = vec![Rule {
        proto: Proto::Tcp,
        ports: Ports::Range(22, 22),
        source: Source::Cidr("0.0.0.0/0".parse().expect("cidr")),
    }];
    let snap4 = compile(&model_with(true, true, v4_only), 1);
    assert_eq!(
        Conntrack::new(CtConfig::with_capacity(1024)).judge6(&snap4, &syn, 0),
        Err(DropReason::NoRule),
        "0.0.0.0/0 does not open IPv6"
    );
    // Echo: the request by rule, the reply by state; not the reverse.
    let req = icmp6(FAR, b, 128, IcmpKind::Request, 3);
    assert_eq!(ct.judge6(&snap, &req, 0), Ok(()));
    assert_eq!(
        ct.judge6(&snap, &icmp6(b, FAR, 129, IcmpKind::Reply, 3), 0),
        Ok(())
    );
    // Packet Too Big from a router about B's replies reaches B; about a
    // connection B does not have, it does not.
    let reply = key(b, 22, OUT, 40000, proto::TCP);
    assert_eq!(ct.judge6(&snap, &ptb(ROUTER, b, reply), 1), Ok(()));
    let other = key(b, 22, OUT, 40001, proto::TCP);
    assert_eq!(
        ct.judge6(&snap, &ptb(ROUTER, b, other), 1),
        Err(DropReason::UnrelatedIcmpError)
    );
}

#[test]
fn revoking_the_ipv6_rule_cuts_or_keeps_the_flow() {
    let s1 = compile(&model_with(true, true, ssh6_rules()), 1);
    let s2 = compile(&model(true, true), 2);
    let b = b6();
    for (mode, want) in [
        (RevokeMode::Revalidate, Err(DropReason::Revoked)),
        (RevokeMode::Keep, Ok(())),
    ] {
        let ct = ct(mode);
        assert_eq!(ct.judge6(&s1, &tcp(OUT, 40000, b, 22, SYN), 0), Ok(()));
        assert_eq!(
            ct.judge6(&s2, &tcp(b, 22, OUT, 40000, SYN | ACK), 1),
            want,
            "{mode:?}"
        );
        assert_eq!(ct.judge6(&s2, &tcp(OUT, 40000, b, 22, ACK), 1), want);
    }
    // Revalidate: the rule back, the flow resumes.
    let ct = ct(RevokeMode::Revalidate);
    assert_eq!(ct.judge6(&s1, &tcp(OUT, 40000, b, 22, SYN), 0), Ok(()));
    assert_eq!(
        ct.judge6(&s2, &tcp(OUT, 40000, b, 22, ACK), 1),
        Err(DropReason::Revoked)
    );
    let s3 = compile(&model_with(true, true, ssh6_rules()), 3);
    assert_eq!(ct.judge6(&s3, &tcp(OUT, 40000, b, 22, ACK), 2), Ok(()));
}

#[test]
fn egress_rules_judge_new_ipv6_flows_not_replies() {
    // B's group has no egress rules: B cannot open connections, but the
    // allowed inbound ones work both ways.
    let snap = compile(&model_with(true, false, ssh6_rules()), 1);
    let ct = ct(RevokeMode::Revalidate);
    let b = b6();
    assert_eq!(
        ct.judge6(&snap, &tcp(b, 5000, OUT, 443, SYN), 0),
        Err(DropReason::NoEgressRule)
    );
    assert_eq!(ct.judge6(&snap, &tcp(OUT, 40000, b, 22, SYN), 0), Ok(()));
    assert_eq!(
        ct.judge6(&snap, &tcp(b, 22, OUT, 40000, SYN | ACK), 0),
        Ok(())
    );
    // With the default egress (::/0), B's own connection opens and its reply
    // comes back without an ingress rule.
    let open = compile(&model_with(true, true, ssh6_rules()), 2);
    assert_eq!(ct.judge6(&open, &tcp(b, 5000, OUT, 443, SYN), 1), Ok(()));
    assert_eq!(
        ct.judge6(&open, &tcp(OUT, 443, b, 5000, SYN | ACK), 1),
        Ok(())
    );
}

#[test]
fn first_fragment_is_judged_and_the_train_follows() {
    let snap = compile(&model_with(true, true, ssh6_rules()), 1);
    let ct = ct(RevokeMode::Revalidate);
    let b = b6();
    let later = |id: u32| Packet6 {
        key: key(OUT, 0, b, 0, proto::TCP),
        l4: L4::Other,
        frag: Frag::Later { id },
    };
    let mut first = tcp(OUT, 40000, b, 22, SYN);
    first.frag = Frag::First { id: 77 };
    assert_eq!(ct.judge6(&snap, &first, 0), Ok(()));
    assert_eq!(ct.judge6(&snap, &later(77), 0), Ok(()));
    assert_eq!(
        ct.judge6(&snap, &later(78), 0),
        Err(DropReason::UnmatchedFragment)
    );
    // A first fragment no rule admits opens no train.
    let mut denied = tcp(OUT, 40001, b, 23, SYN);
    denied.frag = Frag::First { id: 79 };
    assert_eq!(ct.judge6(&snap, &denied, 0), Err(DropReason::NoRule));
    assert_eq!(
        ct.judge6(&snap, &later(79), 0),
        Err(DropReason::UnmatchedFragment)
    );
}

#[test]
fn per_instance_quota_counts_inbound_ipv6_flows() {
    let snap = compile(&model_with(true, true, ssh6_rules()), 1);
    let ct = Conntrack::new(CtConfig {
        per_instance_quota: 2,
        ..CtConfig::with_capacity(1 << 12)
    });
    let b = b6();
    for sport in [1, 2] {
        assert_eq!(ct.judge6(&snap, &tcp(OUT, sport, b, 22, SYN), 0), Ok(()));
    }
    assert_eq!(
        ct.judge6(&snap, &tcp(OUT, 3, b, 22, SYN), 0),
        Err(DropReason::ConntrackQuota)
    );
    assert_eq!(ct.charged_to(B4.into()), 2);
}
