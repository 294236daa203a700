//! Regression tests for what the `pipeline` fuzz target (fuzz/) found in the
//! datapath. Each test replays the smallest input that showed the problem
//! through the public in-memory datapath (no root).

use std::net::Ipv4Addr;
use std::sync::Arc;

use filter::model::{Instance, Limits, Owner, RuleSpec};
use filter::wire::{self, Endpoint, IpOpts};
use filter::{Mac, Model, compile, parse_frame, proto, tcp_flags};
use switch::port::VnetHdr;
use switch::{Datapath, MemOptions, MemPeer, PortId, PortRole, PortSpec, SwitchConfig};

const OWNER: &str = "111122223333";

/// Instances `web` (A, 172.31.0.2) and `app` (B, 172.31.0.3, tcp 8080 from
/// group web), on in-memory ports without offloads.
struct Lab {
    dp: Arc<Datapath>,
    ports: Vec<(PortId, MemPeer, Endpoint)>,
}

fn lab() -> Lab {
    let owner = Owner(OWNER.into());
    let mut m = Model::new(Limits::default());
    m.ensure_owner(&owner);
    for g in ["web", "app"] {
        m.add_group(&owner, g, "fuzz regression").expect("group");
    }
    let spec = RuleSpec {
        proto: Some("tcp".into()),
        ports: Some("8080".into()),
        groups: vec![("web".into(), None)],
        ..RuleSpec::default()
    };
    m.authorize(&owner, "app", &spec).expect("authorize");
    let dp = Datapath::new(SwitchConfig {
        workers: 1,
        ..SwitchConfig::default()
    })
    .expect("datapath");
    let mut ports = Vec::new();
    for (n, g) in [(2u8, "web"), (3, "app")] {
        let mac: Mac = [2, 0, 0, 0, 0, n];
        let ip = Ipv4Addr::new(172, 31, 0, n);
        let id = format!("i-0000000{n}");
        m.add_instance(Instance {
            id: id.clone(),
            owner: owner.clone(),
            mac,
            ip,
            groups: vec![g.into()],
        })
        .expect("instance");
        let (queues, peer) = switch::mem_port_with(1, MemOptions::default());
        let pid = dp
            .add_port(PortSpec {
                name: g.into(),
                role: PortRole::Instance { id, mac, ip },
                queues,
            })
            .expect("port");
        ports.push((pid, peer, Endpoint::new(mac, ip)));
    }
    dp.publish_rules(compile(&m, 1));
    Lab { dp, ports }
}

fn fold(mut s: u64) -> u16 {
    while s >> 16 != 0 {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

/// Found by `pipeline`: a guest's virtio-net header chooses where the switch
/// writes a partial checksum (`csum_start + csum_offset`), and
/// `switch::offload::complete_csum` writes there after the frame was judged.
/// Pointing it at the TCP destination port (offset 2 instead of 16) with a
/// payload chosen so that the "checksum" comes out as 22, instance A (group
/// `web`) gets a SYN to B's port 22 past a rule that only allows 8080 from
/// `web`. Replies can come back too when A uses source port 80 (A's own group
/// allows tcp 80 from anywhere in EC2's walkthrough).
///
/// Fixed in `switch::pipeline` (`check_offload`): `NEEDS_CSUM` is accepted only
/// when `csum_start` is the parsed L4 offset and `csum_offset` the TCP (16) or
/// UDP (6) checksum field of a whole datagram, before the verdict and whether
/// the header is completed here or passed through to a queue with offloads
/// (whose kernel would write it in the same place); anything else is dropped
/// as `bad_offload`.
#[test]
fn partial_checksum_cannot_rewrite_the_judged_port() {
    let lab = lab();
    let (a_id, _, a) = &lab.ports[0];
    let (_, b_peer, b) = &lab.ports[1];
    let want_port: u16 = 22;
    // Find two payload bytes that make the completed "checksum" equal 22.
    let seg = wire::tcp_segment(a.ip, b.ip, 80, 8080, 1, 0, tcp_flags::SYN, &[0, 0]);
    let mut frame = wire::ipv4_frame(*a, *b, proto::TCP, &IpOpts::default(), &seg);
    let at = frame.len() - 2;
    let found = (0..=u16::MAX).find(|w| {
        frame[at..].copy_from_slice(&w.to_be_bytes());
        !fold(switch::offload::sum(&frame[34..], 0)) == want_port
    });
    assert!(found.is_some(), "no payload makes the checksum 22");
    let vnet = VnetHdr {
        flags: VnetHdr::F_NEEDS_CSUM,
        csum_start: 34,
        csum_offset: 2,
        ..VnetHdr::default()
    };
    let mut w = lab.dp.worker(0);
    let r = w.process_burst([(*a_id, &frame[..], vnet)]);
    for f in b_peer.take() {
        let p = parse_frame(&f.data).expect("delivered frame parses");
        let key = p.packet().expect("IPv4").key;
        assert_eq!(
            key.dport, 8080,
            "B received a segment to port {} that no rule allows",
            key.dport
        );
    }
    assert_eq!((r.forwarded, r.dropped), (0, 1), "{r:?}");
    assert_eq!(
        lab.dp.stats().drop_count(filter::DropReason::BadOffload),
        1,
        "counted as bad_offload"
    );
    // The same frame with its checksum field where it belongs is judged by the
    // rules (port 8080 from `web`: allowed) and delivered.
    let vnet = VnetHdr {
        csum_offset: 16,
        ..vnet
    };
    let r = w.process_burst([(*a_id, &frame[..], vnet)]);
    assert_eq!(r.forwarded, 1, "{r:?}");
}

/// The well-formed partial checksum (the TCP checksum field) still passes and
/// is completed: the frame B gets has a valid TCP checksum and port 8080.
#[test]
fn partial_checksum_at_the_tcp_checksum_field_is_completed() {
    let lab = lab();
    let (a_id, _, a) = &lab.ports[0];
    let (_, b_peer, b) = &lab.ports[1];
    let mut frame = wire::tcp(*a, *b, 40000, 8080, tcp_flags::SYN, b"x");
    let want = frame.clone();
    // As a guest sends it: the checksum field holds the pseudo-header sum only.
    let len = (frame.len() - 34) as u64;
    let pseudo = switch::offload::sum(&a.ip.octets(), 0)
        + switch::offload::sum(&b.ip.octets(), 0)
        + u64::from(proto::TCP)
        + len;
    frame[50..52].copy_from_slice(&fold(pseudo).to_be_bytes());
    let vnet = VnetHdr {
        flags: VnetHdr::F_NEEDS_CSUM,
        csum_start: 34,
        csum_offset: 16,
        ..VnetHdr::default()
    };
    let mut w = lab.dp.worker(0);
    let r = w.process_burst([(*a_id, &frame[..], vnet)]);
    assert_eq!(r.forwarded, 1, "{r:?}");
    let got = b_peer.take();
    assert_eq!(got.len(), 1);
    assert_eq!(
        got[0].data[34..],
        want[34..],
        "TCP header and checksum as the builder made them"
    );
}

/// Also found by `pipeline`: a super-frame with `gso_size` 1 was cut into one
/// segment per payload byte (tens of thousands of frames from one). Segmentation
/// must fit the frame: the protocol of the GSO type, `NEEDS_CSUM` at the L4
/// checksum field, a segment size of at least `MIN_GSO_SIZE`.
#[test]
fn segmentation_offload_must_fit_the_frame() {
    let lab = lab();
    let (a_id, _, a) = &lab.ports[0];
    let (_, b_peer, b) = &lab.ports[1];
    let frame = wire::tcp(*a, *b, 40000, 8080, tcp_flags::ACK, &[7u8; 3000]);
    let good = VnetHdr::tso4(1448);
    let bad = [
        VnetHdr {
            gso_size: 1,
            ..good
        },
        VnetHdr {
            gso_type: VnetHdr::GSO_UDP_L4,
            ..good
        },
        VnetHdr { flags: 0, ..good },
        VnetHdr {
            gso_type: VnetHdr::GSO_TCPV6,
            ..good
        },
    ];
    let mut w = lab.dp.worker(0);
    for (i, v) in bad.iter().enumerate() {
        let r = w.process_burst([(*a_id, &frame[..], *v)]);
        assert_eq!((r.forwarded, r.dropped), (0, 1), "case {i} {v:?}: {r:?}");
        assert!(
            b_peer.take().is_empty(),
            "case {i}: something was delivered"
        );
    }
    assert_eq!(
        lab.dp.stats().drop_count(filter::DropReason::BadOffload),
        bad.len() as u64
    );
    // The well-formed super-frame is segmented (B's port takes no offloads).
    let r = w.process_burst([(*a_id, &frame[..], good)]);
    assert_eq!(r.forwarded, 1, "{r:?}");
    assert_eq!(b_peer.take().len(), 3, "3000 bytes in segments of 1448");
}
