use super::family::*;
use super::policy::*;
use super::table::*;
use crate::compile::compile;
use crate::model::{Instance, Limits, Model, Owner, Ports, Proto, Rule, Source};
use crate::{DropReason, FlowKey, Frag, IcmpKind, L4, Packet, proto, tcp_flags};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::sync::atomic::Ordering;

const A: [u8; 4] = [172, 31, 0, 10];
const B: [u8; 4] = [172, 31, 0, 11];
const OUT: [u8; 4] = [203, 0, 113, 7];

fn owner() -> Owner {
    Owner("111122223333".into())
}

/// A in group "a" (no rules), B in group "b" with `b_rules`.
fn model(b_rules: Vec<Rule>) -> Model {
    let insts = [("i-a", A, "a", 1u8), ("i-b", B, "b", 2)].map(|(id, ip, g, n)| Instance {
        id: id.into(),
        owner: owner(),
        mac: [2, 0, 0, 0, 0, n],
        ip: ip.into(),
        groups: vec![g.into()],
    });
    Model::build(
        Limits::default(),
        &owner(),
        &[("a", vec![]), ("b", b_rules)],
        insts,
    )
    .expect("valid test model")
}

fn cidr_rule(proto: Proto, ports: Ports, cidr: &str) -> Rule {
    Rule {
        proto,
        ports,
        source: Source::Cidr(cidr.parse().unwrap()),
    }
}

fn tcp(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16, flags: u8) -> Packet {
    Packet {
        key: FlowKey {
            src: src.into(),
            dst: dst.into(),
            proto: proto::TCP,
            sport,
            dport,
        },
        l4: L4::Tcp { flags },
        frag: Frag::None,
    }
}

fn udp(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16) -> Packet {
    Packet {
        key: FlowKey {
            src: src.into(),
            dst: dst.into(),
            proto: proto::UDP,
            sport,
            dport,
        },
        l4: L4::Udp,
        frag: Frag::None,
    }
}

fn icmp(src: [u8; 4], dst: [u8; 4], ty: u8, kind: IcmpKind, id: u16) -> Packet {
    Packet {
        key: FlowKey {
            src: src.into(),
            dst: dst.into(),
            proto: proto::ICMP,
            sport: id,
            dport: id,
        },
        l4: L4::Icmp { ty, code: 0, kind },
        frag: Frag::None,
    }
}

fn ssh_model() -> Model {
    model(vec![cidr_rule(
        Proto::Tcp,
        Ports::Range(22, 22),
        "203.0.113.0/24",
    )])
}

use tcp_flags::{ACK, FIN, PSH, RST, SYN};

#[test]
fn ingress_by_rule_and_replies_by_state() {
    let snap = compile(&ssh_model(), 1);
    let ct = Conntrack::new(CtConfig::with_capacity(1024));
    // Not allowed: port 23, and A → B (A is not in 203.0.113.0/24).
    assert_eq!(
        ct.judge(&snap, &tcp(OUT, 5000, B, 23, SYN), 0),
        Err(DropReason::NoRule)
    );
    assert_eq!(
        ct.judge(&snap, &tcp(A, 5000, B, 22, SYN), 0),
        Err(DropReason::NoRule)
    );
    assert_eq!(ct.len(), 0);
    // Allowed SYN creates a flow; the reply to OUT passes (egress anyway) and
    // subsequent packets from OUT pass by state.
    assert_eq!(ct.judge(&snap, &tcp(OUT, 5000, B, 22, SYN), 0), Ok(()));
    assert_eq!(ct.len(), 1);
    assert_eq!(
        ct.judge(&snap, &tcp(B, 22, OUT, 5000, SYN | ACK), 0),
        Ok(())
    );
    assert_eq!(ct.judge(&snap, &tcp(OUT, 5000, B, 22, ACK), 1), Ok(()));
    assert_eq!(ct.len(), 1);
    assert_eq!(ct.charged_to(B.into()), 1);
}

#[test]
fn egress_opens_return_path() {
    let snap = compile(&model(vec![]), 1);
    let ct = Conntrack::new(CtConfig::with_capacity(1024));
    // B has no rules: a fresh packet from A is dropped...
    assert_eq!(
        ct.judge(&snap, &udp(A, 53, B, 4000), 0),
        Err(DropReason::NoRule)
    );
    // ...but a reply to B's own query passes.
    assert_eq!(
        ct.judge(&snap, &udp(B, 4000, A, 53), 0),
        Err(DropReason::NoRule),
        "A has no rules either"
    );
    assert_eq!(ct.judge(&snap, &udp(B, 4000, OUT, 53), 0), Ok(()));
    assert_eq!(ct.judge(&snap, &udp(OUT, 53, B, 4000), 5), Ok(()));
    // Charged to the initiating instance B.
    assert_eq!(ct.charged_to(B.into()), 1);
    // ICMP echo from B out and its reply back.
    assert_eq!(
        ct.judge(&snap, &icmp(B, OUT, 8, IcmpKind::Request, 77), 0),
        Ok(())
    );
    assert_eq!(
        ct.judge(&snap, &icmp(OUT, B, 0, IcmpKind::Reply, 77), 0),
        Ok(())
    );
    assert_eq!(
        ct.judge(&snap, &icmp(OUT, B, 0, IcmpKind::Reply, 78), 0),
        Err(DropReason::NoRule)
    );
    assert_eq!(
        ct.judge(&snap, &icmp(OUT, B, 8, IcmpKind::Request, 78), 0),
        Err(DropReason::NoRule)
    );
}

#[test]
fn udp_timeouts_and_stream() {
    let snap = compile(&model(vec![]), 1);
    let ct = Conntrack::new(CtConfig::with_capacity(1024));
    let out = udp(B, 4000, OUT, 53);
    let back = udp(OUT, 53, B, 4000);
    assert_eq!(ct.judge(&snap, &out, 100), Ok(()));
    // One way only: 30 s.
    assert_eq!(ct.judge(&snap, &back, 129), Ok(()));
    // Now seen both ways: 180 s from the last packet.
    assert_eq!(ct.judge(&snap, &back, 129 + 179), Ok(()));
    assert_eq!(
        ct.judge(&snap, &back, 129 + 179 + 180),
        Err(DropReason::NoRule)
    );
    assert_eq!(ct.len(), 0, "expired entry reclaimed on sight");
    // One-way flow expires after 30 s.
    assert_eq!(ct.judge(&snap, &out, 1000), Ok(()));
    assert_eq!(ct.judge(&snap, &back, 1030), Err(DropReason::NoRule));
}

#[test]
fn tcp_states_choose_timeouts() {
    let snap = compile(&model(vec![]), 1);
    let ct = Conntrack::new(CtConfig::with_capacity(1024));
    let syn = tcp(B, 4000, OUT, 80, SYN);
    let synack = tcp(OUT, 80, B, 4000, SYN | ACK);
    let ack = tcp(OUT, 80, B, 4000, ACK);
    assert_eq!(ct.judge(&snap, &syn, 0), Ok(()));
    // SYN sent: 120 s.
    assert_eq!(ct.judge(&snap, &synack, 119), Ok(()));
    // Established: 5 days.
    assert_eq!(ct.judge(&snap, &ack, 119 + 431_999), Ok(()));
    // FIN: 120 s.
    let t = 119 + 431_999;
    assert_eq!(
        ct.judge(&snap, &tcp(OUT, 80, B, 4000, FIN | ACK), t),
        Ok(())
    );
    assert_eq!(ct.judge(&snap, &ack, t + 119), Ok(()));
    assert_eq!(
        ct.judge(&snap, &ack, t + 119 + 120),
        Err(DropReason::NoRule)
    );
    // RST: 10 s.
    assert_eq!(ct.judge(&snap, &syn, 0), Ok(()));
    assert_eq!(ct.judge(&snap, &tcp(OUT, 80, B, 4000, RST), 1), Ok(()));
    assert_eq!(ct.judge(&snap, &ack, 10), Ok(()));
    assert_eq!(ct.judge(&snap, &ack, 20), Err(DropReason::NoRule));
    // A SYN that is never answered: 120 s.
    assert_eq!(ct.judge(&snap, &syn, 1000), Ok(()));
    assert_eq!(ct.judge(&snap, &syn, 1119), Ok(()));
    assert_eq!(
        ct.judge(&snap, &synack, 1119 + 120),
        Err(DropReason::NoRule)
    );
}

#[test]
fn revalidate_cuts_revoked_flows_keep_does_not() {
    let m1 = ssh_model();
    let m2 = model(vec![cidr_rule(
        Proto::Tcp,
        Ports::Range(80, 80),
        "0.0.0.0/0",
    )]);
    for mode in [RevokeMode::Revalidate, RevokeMode::Keep] {
        let ct = Conntrack::new(CtConfig {
            on_revoke: mode,
            ..CtConfig::with_capacity(1024)
        });
        let s1 = compile(&m1, 1);
        assert_eq!(ct.judge(&s1, &tcp(OUT, 5000, B, 22, SYN), 0), Ok(()));
        // Also an egress flow of B, which no edit can cut.
        assert_eq!(ct.judge(&s1, &tcp(B, 6000, OUT, 443, SYN), 0), Ok(()));
        // An edit that keeps the permission: still passes in both modes.
        let s1b = compile(&m1, 2);
        assert_eq!(ct.judge(&s1b, &tcp(B, 22, OUT, 5000, SYN | ACK), 1), Ok(()));
        // Revoke ssh.
        let s2 = compile(&m2, 3);
        let r = ct.judge(&s2, &tcp(B, 22, OUT, 5000, ACK), 2);
        let egress = ct.judge(&s2, &tcp(OUT, 443, B, 6000, SYN | ACK), 2);
        assert_eq!(egress, Ok(()));
        match mode {
            RevokeMode::Revalidate => {
                assert_eq!(r, Err(DropReason::Revoked));
                // The cut flow stays (marked) until the revoked timeout.
                assert_eq!(ct.len(), 2);
                assert_eq!(
                    ct.judge(&s2, &tcp(OUT, 5000, B, 22, ACK), 3),
                    Err(DropReason::Revoked)
                );
                assert_eq!(
                    ct.judge(&s2, &tcp(OUT, 5000, B, 22, ACK), 3 + 30),
                    Err(DropReason::NoRule)
                );
                assert_eq!(ct.len(), 1);
            }
            RevokeMode::Keep => {
                assert_eq!(r, Ok(()));
                assert_eq!(ct.judge(&s2, &tcp(OUT, 5000, B, 22, ACK), 3), Ok(()));
                assert_eq!(ct.len(), 2);
            }
        }
    }
}

/// Control word of the entry of `pkt`'s flow, if tracked (test helper).
fn entry(ct: &Conntrack, pkt: &Packet) -> Option<u64> {
    ct.v4.find(flow_key(&pkt.key).0).map(|(_, _, c)| c)
}

/// The bug found by the e2e test: after a revoke cut an inbound TCP flow, the
/// instance's next packet (egress, always allowed) must not re-open it as an
/// instance-initiated flow through which the outside's packets pass as replies.
#[test]
fn revoked_flow_stays_cut_in_both_directions() {
    let ct = Conntrack::new(CtConfig::with_capacity(1024));
    let s1 = compile(&ssh_model(), 1);
    assert_eq!(ct.judge(&s1, &tcp(OUT, 5000, B, 22, SYN), 0), Ok(()));
    assert_eq!(ct.judge(&s1, &tcp(B, 22, OUT, 5000, SYN | ACK), 0), Ok(()));
    assert_eq!(ct.judge(&s1, &tcp(OUT, 5000, B, 22, ACK), 0), Ok(()));
    // Revoke ssh: generation 2.
    let s2 = compile(&model(vec![]), 2);
    assert_eq!(
        ct.judge(&s2, &tcp(OUT, 5000, B, 22, ACK | PSH), 1),
        Err(DropReason::Revoked)
    );
    // The instance's ACK/retransmit is dropped too, and opens nothing.
    assert_eq!(
        ct.judge(&s2, &tcp(B, 22, OUT, 5000, ACK), 1),
        Err(DropReason::Revoked)
    );
    assert_eq!(ct.len(), 1, "the revoked entry stays, no second entry");
    for t in [2, 10, 25] {
        assert_eq!(
            ct.judge(&s2, &tcp(OUT, 5000, B, 22, ACK | PSH), t),
            Err(DropReason::Revoked),
            "outside at {t}"
        );
        assert_eq!(
            ct.judge(&s2, &tcp(B, 22, OUT, 5000, ACK | PSH), t),
            Err(DropReason::Revoked),
            "instance at {t}"
        );
    }
    // Still cut under a later generation that does not allow it either.
    let s3 = compile(&model(vec![]), 3);
    assert_eq!(
        ct.judge(&s3, &tcp(B, 22, OUT, 5000, ACK), 26),
        Err(DropReason::Revoked)
    );
    // Related ICMP errors are revoked too (and refresh nothing).
    let err = Packet {
        key: FlowKey {
            src: OUT.into(),
            dst: B.into(),
            proto: proto::ICMP,
            sport: 0,
            dport: 0,
        },
        l4: L4::Icmp {
            ty: 3,
            code: 3,
            kind: IcmpKind::Error {
                inner: tcp(B, 22, OUT, 5000, ACK).key,
            },
        },
        frag: Frag::None,
    };
    assert_eq!(ct.judge(&s3, &err, 27), Err(DropReason::Revoked));
    // Silent for the revoked timeout (30 s after the last dropped packet):
    // reclaimed like any expired entry, quota returned.
    assert_eq!(ct.charged_to(B.into()), 1);
    assert_eq!(ct.sweep(26 + 29), 0);
    assert_eq!(ct.sweep(26 + 30), 1);
    assert_eq!(ct.len(), 0);
    assert_eq!(ct.charged_to(B.into()), 0);
}

#[test]
fn revoked_flow_revives_when_reauthorized() {
    let ct = Conntrack::new(CtConfig::with_capacity(1024));
    let s1 = compile(&ssh_model(), 1);
    assert_eq!(ct.judge(&s1, &tcp(OUT, 5000, B, 22, SYN), 0), Ok(()));
    assert_eq!(ct.judge(&s1, &tcp(B, 22, OUT, 5000, SYN | ACK), 0), Ok(()));
    let s2 = compile(&model(vec![]), 2);
    assert_eq!(
        ct.judge(&s2, &tcp(B, 22, OUT, 5000, ACK), 1),
        Err(DropReason::Revoked)
    );
    // Re-authorize: the first packet under the new generation revives the flow,
    // whichever side sends it, with its TCP state intact (established: 5 days).
    let s3 = compile(&ssh_model(), 3);
    assert_eq!(ct.judge(&s3, &tcp(B, 22, OUT, 5000, ACK), 2), Ok(()));
    assert_eq!(ct.judge(&s3, &tcp(OUT, 5000, B, 22, ACK), 2), Ok(()));
    let c = entry(&ct, &tcp(B, 22, OUT, 5000, ACK)).expect("tracked");
    assert_eq!(c & REVOKED, 0);
    assert_eq!(TcpState::from_bits(c), TcpState::Established);
    assert_eq!(ct.judge(&s3, &tcp(OUT, 5000, B, 22, ACK), 100_000), Ok(()));
    assert_eq!(ct.len(), 1);
    // An edit that re-authorizes something else does not revive it.
    assert_eq!(
        ct.judge(&s2, &tcp(OUT, 5000, B, 22, ACK), 100_001),
        Err(DropReason::Revoked)
    );
    let s4 = compile(
        &model(vec![cidr_rule(
            Proto::Tcp,
            Ports::Range(23, 23),
            "0.0.0.0/0",
        )]),
        4,
    );
    assert_eq!(
        ct.judge(&s4, &tcp(OUT, 5000, B, 22, ACK), 100_002),
        Err(DropReason::Revoked)
    );
}

#[test]
fn syn_from_initiator_reopens_a_revoked_flow_only_if_allowed() {
    let ct = Conntrack::new(CtConfig::with_capacity(1024));
    let s1 = compile(&ssh_model(), 1);
    assert_eq!(ct.judge(&s1, &tcp(OUT, 5000, B, 22, SYN), 0), Ok(()));
    assert_eq!(ct.judge(&s1, &tcp(B, 22, OUT, 5000, SYN | ACK), 0), Ok(()));
    let s2 = compile(&model(vec![]), 2);
    assert_eq!(
        ct.judge(&s2, &tcp(OUT, 5000, B, 22, ACK), 1),
        Err(DropReason::Revoked)
    );
    // Not allowed: a new SYN from the initiator is still revoked, and a SYN
    // from the responder (the instance) is not a new flow of its own.
    assert_eq!(
        ct.judge(&s2, &tcp(OUT, 5000, B, 22, SYN), 2),
        Err(DropReason::Revoked)
    );
    assert_eq!(
        ct.judge(&s2, &tcp(B, 22, OUT, 5000, SYN), 2),
        Err(DropReason::Revoked)
    );
    // Allowed again: the initiator's SYN reopens the entry as a fresh flow
    // (SYN sent, 120 s), not as the old established one.
    let s3 = compile(&ssh_model(), 3);
    assert_eq!(ct.judge(&s3, &tcp(OUT, 5000, B, 22, SYN), 3), Ok(()));
    let c = entry(&ct, &tcp(OUT, 5000, B, 22, SYN)).expect("tracked");
    assert_eq!(c & (REVOKED | SEEN_REPLY), 0);
    assert_eq!(TcpState::from_bits(c), TcpState::SynSent);
    assert_eq!(ct.len(), 1);
    assert_eq!(ct.charged_to(B.into()), 1);
    // Unanswered, it expires after 120 s.
    assert_eq!(ct.sweep(3 + 119), 0);
    assert_eq!(ct.sweep(3 + 120), 1);
    // Keep mode never marks anything.
    let keep = Conntrack::new(CtConfig {
        on_revoke: RevokeMode::Keep,
        ..CtConfig::with_capacity(1024)
    });
    assert_eq!(keep.judge(&s1, &tcp(OUT, 5000, B, 22, SYN), 0), Ok(()));
    assert_eq!(
        keep.judge(&s2, &tcp(B, 22, OUT, 5000, SYN | ACK), 1),
        Ok(())
    );
    assert_eq!(keep.judge(&s2, &tcp(OUT, 5000, B, 22, ACK), 1), Ok(()));
    let c = entry(&keep, &tcp(OUT, 5000, B, 22, ACK)).expect("tracked");
    assert_eq!(c & REVOKED, 0);
}

#[test]
fn icmp_errors_related_or_not() {
    let m = model(vec![cidr_rule(
        Proto::Icmp,
        Ports::Icmp {
            ty: Some(11),
            code: None,
        },
        "0.0.0.0/0",
    )]);
    let snap = compile(&m, 1);
    let ct = Conntrack::new(CtConfig::with_capacity(1024));
    let flow = udp(B, 4000, OUT, 53);
    assert_eq!(ct.judge(&snap, &flow, 0), Ok(()));
    let err = |ty: u8, inner: FlowKey| Packet {
        key: FlowKey {
            src: OUT.into(),
            dst: B.into(),
            proto: proto::ICMP,
            sport: 0,
            dport: 0,
        },
        l4: L4::Icmp {
            ty,
            code: 3,
            kind: IcmpKind::Error { inner },
        },
        frag: Frag::None,
    };
    // Port unreachable about B's flow: related.
    assert_eq!(ct.judge(&snap, &err(3, flow.key), 1), Ok(()));
    // The same error forged by instance A (not the flow's peer): unrelated.
    let forged = Packet {
        key: FlowKey {
            src: A.into(),
            ..err(3, flow.key).key
        },
        ..err(3, flow.key)
    };
    assert_eq!(
        ct.judge(&snap, &forged, 1),
        Err(DropReason::UnrelatedIcmpError)
    );
    // An error quoting the flow backwards (a datagram B never sent): unrelated.
    let backwards = FlowKey {
        src: flow.key.dst,
        dst: flow.key.src,
        sport: flow.key.dport,
        dport: flow.key.sport,
        ..flow.key
    };
    assert_eq!(
        ct.judge(&snap, &err(3, backwards), 1),
        Err(DropReason::UnrelatedIcmpError)
    );
    // About some other flow: unrelated.
    let other = udp(B, 4001, OUT, 53).key;
    assert_eq!(
        ct.judge(&snap, &err(3, other), 1),
        Err(DropReason::UnrelatedIcmpError)
    );
    // Unrelated but type 11 is allowed by rule.
    assert_eq!(ct.judge(&snap, &err(11, other), 1), Ok(()));
    // Errors never create entries.
    assert_eq!(ct.len(), 1);
    // After the flow times out the error is unrelated.
    assert_eq!(
        ct.judge(&snap, &err(3, flow.key), 31),
        Err(DropReason::UnrelatedIcmpError)
    );
}

#[test]
fn fragments_follow_their_first() {
    let m = model(vec![cidr_rule(
        Proto::Udp,
        Ports::Range(9000, 9000),
        "0.0.0.0/0",
    )]);
    let snap = compile(&m, 1);
    let ct = Conntrack::new(CtConfig::with_capacity(1024));
    let later = |id: u16| Packet {
        key: FlowKey {
            src: OUT.into(),
            dst: B.into(),
            proto: proto::UDP,
            sport: 0,
            dport: 0,
        },
        l4: L4::Other,
        frag: Frag::Later { id: id.into() },
    };
    assert_eq!(
        ct.judge(&snap, &later(5), 0),
        Err(DropReason::UnmatchedFragment)
    );
    let mut first = udp(OUT, 1234, B, 9000);
    first.frag = Frag::First { id: 5 };
    assert_eq!(ct.judge(&snap, &first, 0), Ok(()));
    assert_eq!(ct.len(), 2, "flow + fragment train");
    assert_eq!(ct.judge(&snap, &later(5), 29), Ok(()));
    assert_eq!(
        ct.judge(&snap, &later(6), 1),
        Err(DropReason::UnmatchedFragment)
    );
    assert_eq!(
        ct.judge(&snap, &later(5), 30),
        Err(DropReason::UnmatchedFragment)
    );
    // A denied first fragment opens no train.
    let mut denied = udp(OUT, 1234, B, 9001);
    denied.frag = Frag::First { id: 7 };
    assert_eq!(ct.judge(&snap, &denied, 0), Err(DropReason::NoRule));
    assert_eq!(
        ct.judge(&snap, &later(7), 0),
        Err(DropReason::UnmatchedFragment)
    );
}

#[test]
fn full_table_drops_and_reclaims_expired() {
    let snap = compile(&model(vec![]), 1);
    let cfg = CtConfig {
        capacity: 8,
        per_instance_quota: 100,
        ..CtConfig::with_capacity(8)
    };
    let ct = Conntrack::new(cfg);
    for p in 0..8 {
        assert_eq!(ct.judge(&snap, &udp(B, 1000 + p, OUT, 53), 0), Ok(()));
    }
    assert_eq!(
        ct.judge(&snap, &udp(B, 2000, OUT, 53), 0),
        Err(DropReason::ConntrackFull)
    );
    assert_eq!(ct.len(), 8);
    // Tracked flows still pass.
    assert_eq!(ct.judge(&snap, &udp(OUT, 53, B, 1003), 1), Ok(()));
    // After expiry the sweep frees them.
    assert_eq!(ct.sweep(31), 7);
    assert_eq!(ct.len(), 1);
    assert_eq!(ct.count_by_scan(), 1);
    assert_eq!(ct.judge(&snap, &udp(B, 2000, OUT, 53), 31), Ok(()));
}

#[test]
fn full_table_reclaims_expired_in_window_on_insert() {
    let snap = compile(&model(vec![]), 1);
    let ct = Conntrack::new(CtConfig {
        capacity: 4,
        per_instance_quota: 100,
        ..CtConfig::with_capacity(4)
    });
    // Fill with flows that all expire at 30; the table has one page of 128
    // slots in 16 buckets.
    for p in 0..4 {
        assert_eq!(ct.judge(&snap, &udp(B, 1000 + p, OUT, 53), 0), Ok(()));
    }
    // Later, inserting reclaims expired entries in its buckets.
    let mut ok = 0;
    for p in 0..64 {
        if ct.judge(&snap, &udp(B, 3000 + p, OUT, 53), 100).is_ok() {
            ok += 1;
        }
    }
    assert!(ok >= 1, "no insert reclaimed an expired entry");
    assert!(ct.len() <= 4);
}

#[test]
fn fills_to_capacity_without_bucket_overflow() {
    let snap = compile(&model(vec![]), 1);
    let cap = 1 << 18;
    let ct = Conntrack::new(CtConfig {
        capacity: cap,
        per_instance_quota: cap as u32,
        ..CtConfig::with_capacity(cap)
    });
    for i in 0..cap {
        let p = udp(B, (i & 0xffff) as u16, [10, 0, (i >> 16) as u8, 1], 53);
        assert_eq!(ct.judge(&snap, &p, 0), Ok(()), "flow {i}");
    }
    assert_eq!(ct.len(), cap);
    assert_eq!(
        ct.judge(&snap, &udp(B, 1, [10, 1, 0, 1], 53), 0),
        Err(DropReason::ConntrackFull)
    );
    // All still found.
    for i in (0..cap).step_by(97) {
        let p = udp([10, 0, (i >> 16) as u8, 1], 53, B, (i & 0xffff) as u16);
        assert_eq!(ct.judge(&snap, &p, 1), Ok(()), "reply {i}");
    }
}

#[test]
fn bucket_addrs_cover_the_slot_of_the_entry_both_ways() {
    let snap = compile(&ssh_model(), 1);
    let ct = Conntrack::new(CtConfig::with_capacity(1 << 12));
    let (base, len) = ct.table_region();
    for i in 0..500u16 {
        let p = udp(B, 4000 + i, OUT, 53);
        ct.judge(&snap, &p, 0).expect("egress");
        let (k, _) = flow_key(&p.key);
        let (idx, _, _) = ct.v4.find(k).expect("inserted");
        let at = &ct.v4.slots[idx] as *const Slot<Ipv4Addr> as usize;
        let mut reply = p;
        reply.key = p.key.reversed();
        for q in [p, reply] {
            let b = ct.bucket_addrs(&q);
            assert!(
                b.iter()
                    .all(|a| *a >= base && a + BUCKET_BYTES <= base + len)
            );
            assert!(b.iter().all(|a| a % 64 == 0), "bucket not line-aligned");
            assert!(
                b.iter().any(|a| (*a..a + BUCKET_BYTES).contains(&at)),
                "flow {i}: slot {at:#x} outside buckets {b:x?}"
            );
        }
    }
}

#[test]
fn judge_burst_equals_judging_one_by_one() {
    let snap = compile(&ssh_model(), 1);
    let a = Conntrack::new(CtConfig::with_capacity(1024));
    let b = Conntrack::new(CtConfig::with_capacity(1024));
    let pkts: Vec<Packet> = (0..40u16)
        .map(|i| match i % 4 {
            0 => tcp(OUT, 5000 + i, B, 22, SYN),
            1 => tcp(B, 22, OUT, 5000 + i - 1, SYN | ACK),
            2 => tcp(OUT, 5000 + i, B, 23, SYN),
            _ => udp(B, 4000 + i, OUT, 53),
        })
        .collect();
    let mut out = vec![Ok(()); pkts.len()];
    a.judge_burst(&snap, &pkts, 0, &mut out);
    let one: Vec<_> = pkts.iter().map(|p| b.judge(&snap, p, 0)).collect();
    assert_eq!(out, one);
    assert_eq!(a.len(), b.len());
    assert!(out.contains(&Err(DropReason::NoRule)));
}

#[test]
fn per_instance_quota() {
    let snap = compile(&model(vec![]), 1);
    let ct = Conntrack::new(CtConfig {
        capacity: 1024,
        per_instance_quota: 3,
        ..CtConfig::with_capacity(1024)
    });
    for p in 0..3 {
        assert_eq!(ct.judge(&snap, &udp(B, 1000 + p, OUT, 53), 0), Ok(()));
    }
    assert_eq!(
        ct.judge(&snap, &udp(B, 1003, OUT, 53), 0),
        Err(DropReason::ConntrackQuota)
    );
    // Another instance is not affected.
    assert_eq!(ct.judge(&snap, &udp(A, 1003, OUT, 53), 0), Ok(()));
    assert_eq!(ct.charged_to(B.into()), 3);
    assert_eq!(ct.charged_to(A.into()), 1);
    // Expiry returns quota.
    assert_eq!(ct.sweep(30), 4);
    assert_eq!(ct.charged_to(B.into()), 0);
    assert_eq!(ct.judge(&snap, &udp(B, 1003, OUT, 53), 30), Ok(()));
}

#[test]
fn default_config_fits_a_million_flows_in_256_mb() {
    let cfg = CtConfig::default();
    assert_eq!(cfg.capacity, 1 << 20);
    assert_eq!(cfg.per_instance_quota, 65536);
    assert_eq!(cfg.on_revoke, RevokeMode::Revalidate);
    assert_eq!(std::mem::size_of::<Slot<Ipv4Addr>>(), 32);
    assert_eq!(std::mem::size_of::<Slot<Ipv6Addr>>(), 64);
    assert_eq!(std::mem::size_of::<<Ipv4Addr as Family>::Page>(), 4096);
    assert_eq!(std::mem::size_of::<<Ipv6Addr as Family>::Page>(), 4096);
    let ct = Conntrack::new(cfg);
    assert!(ct.memory_bytes() <= 256 << 20, "{}", ct.memory_bytes());
    // 64 MiB of IPv4 slots, 32 MiB of IPv6 slots (a quarter of the flows).
    assert_eq!(cfg.capacity6, 1 << 18);
    assert_eq!(ct.memory_bytes() / (1 << 20), 64 + 32);
    fn check<T: Send + Sync>() {}
    check::<Conntrack>();
}

/// Publish `k` in slot `idx` as an insert would (test helper).
fn force_publish(ct: &Conntrack, idx: usize, k: Key) -> u64 {
    let slot = &ct.v4.slots[idx];
    <Ipv4Addr as Family>::store(&slot.k, k);
    slot.expires.store(100, Ordering::Relaxed);
    let c = (version(slot.ctl.load(Ordering::Relaxed)) + 1) << VERSION_SHIFT | OCC | ORIG_A;
    slot.ctl.store(c, Ordering::Release);
    ct.v4.count.fetch_add(1, Ordering::Relaxed);
    c
}

/// Two inserters of the same key in different slots: whichever runs the
/// dedupe, only the entry at the lower probe position survives.
#[test]
fn dedupe_keeps_the_lowest_position_from_either_side() {
    let ct = Conntrack::new(CtConfig::with_capacity(64));
    let (k, _) = flow_key(&udp(B, 1, OUT, 53).key);
    let b = ct.v4.buckets(k);
    let (lo, hi) = (
        Table::<Ipv4Addr>::slot_at(b, 3),
        Table::<Ipv4Addr>::slot_at(b, 9),
    );
    // The lower one dedupes: it removes the higher one.
    let _ = force_publish(&ct, hi, k);
    let c_lo = force_publish(&ct, lo, k);
    assert_eq!(ct.v4.dedupe(k, b, 3, lo, c_lo), lo);
    assert_eq!(ct.len(), 1);
    assert_eq!(ct.v4.find(k).map(|(idx, _, _)| idx), Some(lo));
    assert_eq!(ct.count_by_scan(), 1);
    // The higher one dedupes: it removes itself.
    let c_hi = force_publish(&ct, hi, k);
    assert_eq!(ct.v4.dedupe(k, b, 9, hi, c_hi), lo);
    assert_eq!(ct.len(), 1);
    assert_eq!(ct.count_by_scan(), 1);
    assert_eq!(ct.v4.find(k).map(|(idx, _, _)| idx), Some(lo));
}

/// Several threads insert, look up and delete (by expiry) overlapping flows,
/// both directions on different threads; afterwards every flow is present
/// exactly once and the counters agree with a scan.
#[test]
fn concurrent_stress_keeps_counts_consistent() {
    let snap = Arc::new(compile(&model(vec![]), 1));
    let ct = Arc::new(Conntrack::new(CtConfig {
        capacity: 1 << 15,
        per_instance_quota: 1 << 15,
        ..CtConfig::with_capacity(1 << 15)
    }));
    const FLOWS: u16 = 4000;
    let barrier = Arc::new(std::sync::Barrier::new(4));
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let (snap, ct, barrier) = (snap.clone(), ct.clone(), barrier.clone());
            std::thread::spawn(move || {
                for round in 0..24u16 {
                    // Start every round together so that threads race on the
                    // same flows.
                    barrier.wait();
                    // Every round, all flows of the previous one have expired
                    // (UDP 30 s): they are removed on sight and re-created
                    // concurrently.
                    let now = u32::from(round) * 40;
                    for f in 0..FLOWS {
                        // Threads 0/1 send B → OUT, threads 2/3 the replies; every
                        // flow is created by whichever thread gets there first.
                        let p = if t < 2 {
                            udp(B, f, OUT, 53)
                        } else {
                            udp(OUT, 53, B, f)
                        };
                        let r = ct.judge(&snap, &p, now);
                        if t < 2 {
                            assert_eq!(r, Ok(()), "egress always passes");
                        }
                        // Short-lived flows on another range, to churn slots.
                        let churn = udp(A, 10_000 + f, OUT, 1000 + t);
                        assert_eq!(ct.judge(&snap, &churn, now), Ok(()));
                    }
                }
            })
        })
        .collect();
    for th in threads {
        th.join().unwrap();
    }
    // Each B flow exists exactly once.
    for f in 0..FLOWS {
        let (k, _) = flow_key(&udp(B, f, OUT, 53).key);
        let b = ct.v4.buckets(k);
        let n = (0..PROBE)
            .filter(|&i| {
                Table::<Ipv4Addr>::read_key(&ct.v4.slots[Table::<Ipv4Addr>::slot_at(b, i)], 0)
                    .is_some_and(|(sk, _)| sk == k)
            })
            .count();
        assert_eq!(n, 1, "flow {f}");
    }
    assert_eq!(ct.len(), ct.count_by_scan());
    assert_eq!(
        ct.charged_to(B.into()) as usize + ct.charged_to(A.into()) as usize,
        ct.len()
    );
    // Everything expires.
    ct.sweep(10_000);
    assert_eq!(ct.len(), 0);
    assert_eq!(ct.count_by_scan(), 0);
    assert_eq!(ct.charged_to(B.into()), 0);
    assert_eq!(ct.charged_to(A.into()), 0);
}

/// Cluster mode: B lives on another host. A's host judges A → B like egress
/// (B's host enforces B's ingress), tracks it so B's reply passes, and never
/// cuts it on revalidation; B's own host still enforces B's rules on A → B.
#[test]
fn remote_destination_is_judged_at_its_own_host() {
    let snap = compile(&model(vec![]), 1);
    let b_remote = |ip: std::net::Ipv4Addr| ip == std::net::Ipv4Addr::from(B);
    let here = Conntrack::new(CtConfig::with_capacity(1024));
    // No rule of B allows A, yet A's host lets it out and tracks it.
    assert_eq!(
        here.judge_scoped(&snap, &tcp(A, 5000, B, 22, SYN), 0, b_remote),
        Ok(())
    );
    assert_eq!(here.len(), 1);
    assert_eq!(here.charged_to(A.into()), 1);
    // B's reply (arriving over the overlay) passes by state; an unrelated
    // packet from B to A does not (A's own ingress rules: none).
    assert_eq!(
        here.judge_scoped(&snap, &tcp(B, 22, A, 5000, SYN | ACK), 0, b_remote),
        Ok(())
    );
    assert_eq!(
        here.judge_scoped(&snap, &tcp(B, 23, A, 6000, SYN), 0, b_remote),
        Err(DropReason::NoRule)
    );
    // A new generation does not cut the flow here: its original destination is remote.
    let snap2 = compile(&model(vec![]), 2);
    assert_eq!(
        here.judge_scoped(&snap2, &tcp(A, 5000, B, 22, ACK), 1, b_remote),
        Ok(())
    );
    // On B's host (nothing remote there that matters), the same SYN meets B's rules.
    let there = Conntrack::new(CtConfig::with_capacity(1024));
    let a_remote = |ip: std::net::Ipv4Addr| ip == std::net::Ipv4Addr::from(A);
    assert_eq!(
        there.judge_scoped(&snap, &tcp(A, 5000, B, 22, SYN), 0, a_remote),
        Err(DropReason::NoRule)
    );
    // Non-first fragments to a remote instance pass like egress.
    let mut frag = udp(A, 1, B, 2);
    frag.frag = Frag::Later { id: 9 };
    frag.l4 = L4::Other;
    assert_eq!(here.judge_scoped(&snap, &frag, 2, b_remote), Ok(()));
    assert_eq!(
        there.judge(&snap, &frag, 2),
        Err(DropReason::UnmatchedFragment)
    );
}

/// `judge_rule` names the rule for the packets a rule decides (a new flow's
/// first packet, with `new_flow`; ICMP replies judged by rules alone; the
/// first packet after an edit, revalidated) and none for tracked packets or
/// egress.
#[test]
fn judge_rule_names_the_deciding_rule() {
    use crate::compile::Compiler;
    let rules = vec![
        cidr_rule(Proto::Tcp, Ports::Range(22, 22), "0.0.0.0/0"),
        cidr_rule(
            Proto::Icmp,
            Ports::Icmp {
                ty: None,
                code: None,
            },
            "0.0.0.0/0",
        ),
    ];
    let mut m = model(rules.clone());
    m.record_changes();
    let mut c = Compiler::new(&m);
    let snap = c.snapshot(1);
    let ssh = c.rule_slot(&owner(), "b", 0).unwrap();
    let icmp_all = c.rule_slot(&owner(), "b", 1).unwrap();
    let ct = Conntrack::new(CtConfig::with_capacity(1024));
    let judge = |s: &crate::Snapshot, p: &Packet| ct.judge_rule(s, p, 0, |_| false);
    let syn = tcp(OUT, 5000, B, 22, SYN);
    assert_eq!(
        judge(&snap, &syn),
        Ok(Pass::Rule {
            slot: ssh,
            new_flow: true
        })
    );
    // The reply and the rest of the flow: by state.
    assert_eq!(
        judge(&snap, &tcp(B, 22, OUT, 5000, SYN | ACK)),
        Ok(Pass::State)
    );
    assert_eq!(judge(&snap, &tcp(OUT, 5000, B, 22, ACK)), Ok(Pass::State));
    // Egress from B: no rule.
    assert_eq!(judge(&snap, &udp(B, 4000, OUT, 53)), Ok(Pass::State));
    // An echo reply to B (no flow: B never asked): judged by the ICMP rule,
    // no flow created.
    let reply = icmp(OUT, B, 0, IcmpKind::Reply, 9);
    assert_eq!(
        judge(&snap, &reply),
        Ok(Pass::Rule {
            slot: icmp_all,
            new_flow: false
        })
    );
    // Nothing matched.
    assert_eq!(
        judge(&snap, &tcp(OUT, 5001, B, 23, SYN)),
        Err(DropReason::NoRule)
    );
    // An unrelated edit: the flow's next packet is revalidated, counted on
    // the rule (not as a new flow); the one after by state again.
    m.authorize_rules(
        &owner(),
        "a",
        &[cidr_rule(Proto::Udp, Ports::Range(53, 53), "0.0.0.0/0")],
    )
    .unwrap();
    let ch = m.take_changes();
    c.apply(&m, &ch);
    let snap2 = c.snapshot(2);
    assert_eq!(c.rule_slot(&owner(), "b", 0), Some(ssh));
    let ack = tcp(OUT, 5000, B, 22, ACK);
    assert_eq!(
        judge(&snap2, &ack),
        Ok(Pass::Rule {
            slot: ssh,
            new_flow: false
        })
    );
    assert_eq!(judge(&snap2, &ack), Ok(Pass::State));
}
