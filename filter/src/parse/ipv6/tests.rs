//! Unit tests of the IPv6 parser: one per case of the module contract, the
//! hostile ones included, then robustness and a cross-check against etherparse.

use super::next_header::*;
use super::*;
use crate::parse::{ETHERTYPE_IPV6, ETHERTYPE_VLAN, parse_frame};
use crate::{Mac, tcp_flags};

const MAC_A: Mac = [0x02, 0x00, 0xac, 0x1f, 0x00, 0x02];
const MAC_B: Mac = [0x02, 0x00, 0xac, 0x1f, 0x00, 0x03];
const A: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2);
const B: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 3);
const R: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);

/// An IPv6 packet (no Ethernet): `exts` are `(type, bytes)` whose byte 0 (next
/// header) is filled in here, then the upper layer `upper` with bytes `l4`.
fn pkt6(src: Ipv6Addr, dst: Ipv6Addr, exts: &[(u8, Vec<u8>)], upper: u8, l4: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    for (i, (_, e)) in exts.iter().enumerate() {
        let mut e = e.clone();
        e[0] = exts.get(i + 1).map_or(upper, |n| n.0);
        body.extend_from_slice(&e);
    }
    body.extend_from_slice(l4);
    let first = exts.first().map_or(upper, |e| e.0);
    let mut p = vec![0x60, 0, 0, 0];
    p.extend_from_slice(&u16::try_from(body.len()).expect("small").to_be_bytes());
    p.extend_from_slice(&[first, 64]);
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    p.extend_from_slice(&body);
    p
}

/// An untagged Ethernet frame A → B around an IPv6 packet.
fn frame(p: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&MAC_B);
    f.extend_from_slice(&MAC_A);
    f.extend_from_slice(&ETHERTYPE_IPV6.to_be_bytes());
    f.extend_from_slice(p);
    f
}

/// Options header (hop-by-hop or destination options) of `n8` × 8 bytes.
fn opts(n8: usize) -> Vec<u8> {
    let mut e = vec![0u8; n8 * 8];
    e[1] = u8::try_from(n8 - 1).expect("small");
    // PadN over the rest: type 1, length 4 (6 bytes after the 2-byte header).
    e[2] = 1;
    e[3] = u8::try_from(n8 * 8 - 4).expect("small");
    e
}

/// Routing header of type `ty`, 8 bytes, segments left 0.
fn routing(ty: u8) -> Vec<u8> {
    vec![0, 0, ty, 0, 0, 0, 0, 0]
}

/// Fragment header: offset in 8-byte units, M flag, identification.
fn frag(units: u16, more: bool, id: u32) -> Vec<u8> {
    let fo = units << 3 | u16::from(more);
    let mut e = vec![0, 0];
    e.extend_from_slice(&fo.to_be_bytes());
    e.extend_from_slice(&id.to_be_bytes());
    e
}

/// Authentication header of 24 bytes (payload length field 4).
fn ah() -> Vec<u8> {
    let mut e = vec![0u8; 24];
    e[1] = 4;
    e
}

fn tcp(sport: u16, dport: u16, flags: u8, doff_words: u8) -> Vec<u8> {
    let mut t = vec![0u8; usize::from(doff_words) * 4];
    t[0..2].copy_from_slice(&sport.to_be_bytes());
    t[2..4].copy_from_slice(&dport.to_be_bytes());
    t[12] = doff_words << 4;
    t[13] = flags;
    t
}

fn udp(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut u = Vec::new();
    u.extend_from_slice(&sport.to_be_bytes());
    u.extend_from_slice(&dport.to_be_bytes());
    u.extend_from_slice(
        &u16::try_from(8 + payload.len())
            .expect("small")
            .to_be_bytes(),
    );
    u.extend_from_slice(&[0, 0]);
    u.extend_from_slice(payload);
    u
}

/// ICMPv6 message: type, code, 4 bytes of body header, then `rest`.
fn icmp6(ty: u8, code: u8, hdr: [u8; 4], rest: &[u8]) -> Vec<u8> {
    let mut c = vec![ty, code, 0, 0];
    c.extend_from_slice(&hdr);
    c.extend_from_slice(rest);
    c
}

fn echo(ty: u8, ident: u16) -> Vec<u8> {
    let id = ident.to_be_bytes();
    icmp6(ty, 0, [id[0], id[1], 0, 1], b"ping")
}

type Fields = (Eth, Packet6, u16, u16, u16, u16);

fn ipv6(f: &[u8]) -> Fields {
    match parse_frame(f) {
        Ok(Parsed::Ipv6 {
            eth,
            pkt,
            l3_offset,
            l4_offset,
            payload_offset,
            ip_len,
        }) => (eth, pkt, l3_offset, l4_offset, payload_offset, ip_len),
        other => panic!("expected IPv6, got {other:?}"),
    }
}

fn key(src: Ipv6Addr, dst: Ipv6Addr, proto: u8, sport: u16, dport: u16) -> FlowKey6 {
    FlowKey6 {
        src,
        dst,
        proto,
        sport,
        dport,
    }
}

fn tcp_syn() -> Vec<u8> {
    frame(&pkt6(
        A,
        B,
        &[],
        proto::TCP,
        &tcp(40000, 22, tcp_flags::SYN, 10),
    ))
}

// ---- accepted packets ----

#[test]
fn tcp_syn_with_options() {
    let f = tcp_syn();
    let p = parse_frame(&f).expect("parses");
    assert_eq!(p.packet(), None, "packet() is IPv4 only");
    assert_eq!(p.arp(), None);
    assert!(p.packet6().is_some());
    let (eth, pkt, l3, l4, pay, len) = ipv6(&f);
    assert_eq!(
        eth,
        Eth {
            dst: MAC_B,
            src: MAC_A,
            vlan: None,
            ethertype: ETHERTYPE_IPV6
        }
    );
    assert_eq!(pkt.key, key(A, B, proto::TCP, 40000, 22));
    assert_eq!(
        pkt.l4,
        L4::Tcp {
            flags: tcp_flags::SYN
        }
    );
    assert_eq!(pkt.frag, Frag::None);
    assert_eq!((l3, l4, pay, len), (14, 54, 94, 80));
}

#[test]
fn udp_with_padding_and_vlan() {
    let p = pkt6(A, R, &[], proto::UDP, &udp(53000, 53, b"dns"));
    let mut f = frame(&p);
    let base = ipv6(&f);
    assert_eq!(base.1.key, key(A, R, proto::UDP, 53000, 53));
    assert_eq!(base.1.l4, L4::Udp);
    assert_eq!((base.3, base.4, base.5), (54, 62, 51));
    assert_eq!(&f[62..65], b"dns");
    f.extend_from_slice(&[0xee; 30]);
    assert_eq!(ipv6(&f), base, "bytes after the payload length are padding");
    // The same behind an 802.1Q tag: offsets move by 4.
    let mut t = f[..12].to_vec();
    t.extend_from_slice(&ETHERTYPE_VLAN.to_be_bytes());
    t.extend_from_slice(&7u16.to_be_bytes());
    t.extend_from_slice(&f[12..]);
    let (eth, pkt, l3, l4, pay, len) = ipv6(&t);
    assert_eq!((eth.vlan, eth.ethertype), (Some(7), ETHERTYPE_IPV6));
    assert_eq!(pkt, base.1);
    assert_eq!((l3, l4, pay, len), (18, 58, 66, 51));
}

#[test]
fn extension_headers_are_walked_to_the_l4_header() {
    let exts = [
        (HOP_BY_HOP, opts(1)),
        (DEST_OPTS, opts(2)),
        (ROUTING, routing(4)),
        (AH, ah()),
        (DEST_OPTS, opts(1)),
    ];
    let f = frame(&pkt6(A, B, &exts, proto::UDP, &udp(1, 2, b"x")));
    let (_, pkt, l3, l4, pay, _) = ipv6(&f);
    assert_eq!(pkt.key, key(A, B, proto::UDP, 1, 2));
    let ext_len = 8 + 16 + 8 + 24 + 8;
    assert_eq!((l3, l4, pay), (14, 54 + ext_len, 62 + ext_len));
    // Routing types other than 0 (2: mobile IPv6, 3: RPL, 4: segment routing).
    for ty in [1, 2, 3, 4, 253] {
        let f = frame(&pkt6(
            A,
            B,
            &[(ROUTING, routing(ty))],
            proto::UDP,
            &udp(1, 2, b""),
        ));
        assert!(parse_frame(&f).is_ok(), "routing type {ty}");
    }
}

#[test]
fn walk_is_bounded_to_eight_headers() {
    let chain = |n: usize| -> Vec<u8> {
        let exts: Vec<(u8, Vec<u8>)> = (0..n).map(|_| (DEST_OPTS, opts(1))).collect();
        frame(&pkt6(A, B, &exts, proto::UDP, &udp(1, 2, b"")))
    };
    let (_, pkt, _, l4, ..) = ipv6(&chain(IPV6_MAX_EXT_HEADERS));
    assert_eq!(pkt.key.dport, 2);
    assert_eq!(usize::from(l4), 54 + 8 * IPV6_MAX_EXT_HEADERS);
    assert_eq!(
        parse_frame(&chain(IPV6_MAX_EXT_HEADERS + 1)),
        Err(DropReason::BadIpv6ExtHeader),
        "a ninth header"
    );
    // Hundreds of tiny headers in a jumbo-sized frame: still refused after 8.
    assert_eq!(parse_frame(&chain(700)), Err(DropReason::BadIpv6ExtHeader));
}

#[test]
fn bad_extension_headers() {
    type Chain = Vec<(u8, Vec<u8>)>;
    let cases: Vec<(&str, Chain)> = vec![
        (
            "hop-by-hop not first",
            vec![(DEST_OPTS, opts(1)), (HOP_BY_HOP, opts(1))],
        ),
        ("routing type 0", vec![(ROUTING, routing(0))]),
        (
            "two fragment headers",
            vec![(FRAGMENT, frag(0, true, 1)), (FRAGMENT, frag(0, true, 1))],
        ),
    ];
    for (what, exts) in cases {
        let f = frame(&pkt6(A, B, &exts, proto::UDP, &udp(1, 2, b"payload!")));
        assert_eq!(parse_frame(&f), Err(DropReason::BadIpv6ExtHeader), "{what}");
    }
    // A header announcing more bytes than the payload holds.
    let mut big = opts(1);
    big[1] = 200;
    let f = frame(&pkt6(
        A,
        B,
        &[(DEST_OPTS, big)],
        proto::UDP,
        &udp(1, 2, b""),
    ));
    assert_eq!(
        parse_frame(&f),
        Err(DropReason::BadIpv6ExtHeader),
        "over-long"
    );
    // An AH announcing more than the payload.
    let mut a = ah();
    a[1] = 255;
    let f = frame(&pkt6(A, B, &[(AH, a)], proto::UDP, &udp(1, 2, b"")));
    assert_eq!(
        parse_frame(&f),
        Err(DropReason::BadIpv6ExtHeader),
        "over-long AH"
    );
    // The chain cut short: an extension header announced, fewer than 8 bytes left.
    for n in 0..8 {
        let f = frame(&pkt6(A, B, &[], HOP_BY_HOP, &[0u8; 8][..n]));
        assert_eq!(
            parse_frame(&f),
            Err(DropReason::BadIpv6ExtHeader),
            "{n} bytes of hop-by-hop"
        );
    }
}

#[test]
fn unwalkable_upper_layers_are_other() {
    for upper in [ESP, NO_NEXT_HEADER, 47, 253] {
        let f = frame(&pkt6(A, B, &[(DEST_OPTS, opts(1))], upper, b"opaque bytes"));
        let (_, pkt, _, l4, pay, len) = ipv6(&f);
        assert_eq!(pkt.key, key(A, B, upper, 0, 0), "proto {upper}");
        assert_eq!(pkt.l4, L4::Other);
        assert_eq!((l4, pay, len), (62, 62, 40 + 8 + 12));
    }
}

// ---- fragments ----

#[test]
fn first_fragment_is_judged_by_its_l4_header() {
    let f = frame(&pkt6(
        A,
        B,
        &[(FRAGMENT, frag(0, true, 0xdead_beef))],
        proto::UDP,
        &udp(7000, 8000, b"0123456789abcdef"),
    ));
    let (_, pkt, _, l4, pay, _) = ipv6(&f);
    assert_eq!(pkt.key, key(A, B, proto::UDP, 7000, 8000));
    assert_eq!(pkt.l4, L4::Udp);
    assert_eq!(pkt.frag, Frag::First { id: 0xdead_beef });
    assert_eq!((l4, pay), (62, 70));
    // Headers after the fragment header belong to the first fragment's chain.
    let f = frame(&pkt6(
        A,
        B,
        &[(FRAGMENT, frag(0, true, 9)), (DEST_OPTS, opts(1))],
        proto::TCP,
        &tcp(1000, 22, tcp_flags::SYN, 5),
    ));
    let (_, pkt, _, l4, ..) = ipv6(&f);
    assert_eq!(
        (pkt.key.proto, pkt.key.dport, pkt.frag),
        (proto::TCP, 22, Frag::First { id: 9 })
    );
    assert_eq!(l4, 70);
}

#[test]
fn later_fragment_has_no_ports() {
    let f = frame(&pkt6(
        A,
        B,
        &[
            (DEST_OPTS, opts(1)),
            (FRAGMENT, frag(3, false, 0x0102_0304)),
        ],
        proto::UDP,
        b"FRAGMENT",
    ));
    let (_, pkt, _, l4, pay, len) = ipv6(&f);
    assert_eq!(pkt.key, key(A, B, proto::UDP, 0, 0));
    assert_eq!(pkt.l4, L4::Other);
    assert_eq!(pkt.frag, Frag::Later { id: 0x0102_0304 });
    assert_eq!((l4, pay, len), (70, 70, 64));
    // The walk stops at a later fragment's header: what follows is data, even
    // when it looks like a (bad) header.
    let f = frame(&pkt6(
        A,
        B,
        &[(FRAGMENT, frag(5, true, 1))],
        ROUTING,
        &[0u8; 3],
    ));
    assert_eq!(ipv6(&f).1.frag, Frag::Later { id: 1 });
    assert_eq!(ipv6(&f).1.key.proto, ROUTING);
}

#[test]
fn atomic_fragment_is_not_fragmented() {
    let f = frame(&pkt6(
        A,
        B,
        &[(FRAGMENT, frag(0, false, 77))],
        proto::TCP,
        &tcp(1000, 443, tcp_flags::SYN, 5),
    ));
    let (_, pkt, ..) = ipv6(&f);
    assert_eq!(pkt.frag, Frag::None);
    assert_eq!(pkt.key, key(A, B, proto::TCP, 1000, 443));
}

#[test]
fn tiny_fragments() {
    // A first fragment cutting the TCP header (8 of 20 bytes, or its options).
    for (l4, what) in [
        (tcp(1, 22, tcp_flags::SYN, 5)[..8].to_vec(), "8 bytes"),
        (tcp(1, 22, tcp_flags::SYN, 10)[..24].to_vec(), "options cut"),
        (udp(1, 2, b"")[..4].to_vec(), "4 bytes of UDP"),
    ] {
        let p = if what.contains("UDP") {
            proto::UDP
        } else {
            proto::TCP
        };
        let f = frame(&pkt6(A, B, &[(FRAGMENT, frag(0, true, 1))], p, &l4));
        assert_eq!(parse_frame(&f), Err(DropReason::TinyFragment), "{what}");
        // The same shortage unfragmented is a truncated L4 header.
        let f = frame(&pkt6(A, B, &[], p, &l4));
        assert_eq!(parse_frame(&f), Err(DropReason::TruncatedL4), "{what}");
    }
    // A TCP fragment at offset 8 bytes could overwrite the flags (RFC 1858).
    let f = frame(&pkt6(
        A,
        B,
        &[(FRAGMENT, frag(1, true, 1))],
        proto::TCP,
        b"flags!!!",
    ));
    assert_eq!(parse_frame(&f), Err(DropReason::TinyFragment));
    let f = frame(&pkt6(
        A,
        B,
        &[(FRAGMENT, frag(1, true, 1))],
        proto::UDP,
        b"harmless",
    ));
    assert!(parse_frame(&f).is_ok(), "UDP offset 8");
    let f = frame(&pkt6(
        A,
        B,
        &[(FRAGMENT, frag(2, true, 1))],
        proto::TCP,
        b"16",
    ));
    assert!(parse_frame(&f).is_ok(), "TCP offset 16");
}

// ---- ICMPv6 ----

#[test]
fn echo_uses_identifier_and_reply_is_reverse() {
    let req = ipv6(&frame(&pkt6(A, B, &[], proto::ICMPV6, &echo(128, 0x1234)))).1;
    assert_eq!(req.key, key(A, B, proto::ICMPV6, 0x1234, 0x1234));
    assert_eq!(
        req.l4,
        L4::Icmp {
            ty: 128,
            code: 0,
            kind: IcmpKind::Request
        }
    );
    let rep = ipv6(&frame(&pkt6(B, A, &[], proto::ICMPV6, &echo(129, 0x1234)))).1;
    assert_eq!(rep.key, req.key.reversed());
    assert_eq!(
        rep.l4,
        L4::Icmp {
            ty: 129,
            code: 0,
            kind: IcmpKind::Reply
        }
    );
}

#[test]
fn errors_quote_the_original_packet() {
    let sent_udp = pkt6(A, R, &[], proto::UDP, &udp(53000, 9999, b"hello"));
    let sent_tcp = pkt6(
        A,
        R,
        &[(HOP_BY_HOP, opts(1)), (DEST_OPTS, opts(2))],
        proto::TCP,
        &tcp(40000, 443, tcp_flags::ACK, 5),
    );
    let sent_echo = pkt6(A, R, &[], proto::ICMPV6, &echo(128, 77));
    let sent_first = pkt6(
        A,
        R,
        &[(FRAGMENT, frag(0, true, 5))],
        proto::UDP,
        &udp(5, 6, b"x"),
    );
    let sent_later = pkt6(A, R, &[(FRAGMENT, frag(9, false, 5))], proto::UDP, b"rest");
    let cases = [
        (&sent_udp, key(A, R, proto::UDP, 53000, 9999)),
        (&sent_tcp, key(A, R, proto::TCP, 40000, 443)),
        (&sent_echo, key(A, R, proto::ICMPV6, 77, 77)),
        (&sent_first, key(A, R, proto::UDP, 5, 6)),
        (&sent_later, key(A, R, proto::UDP, 0, 0)),
    ];
    for ty in 1..=4u8 {
        for (sent, inner) in &cases {
            // Packet Too Big carries the MTU in its header.
            let hdr = if ty == 2 { [0, 0, 5, 0] } else { [0; 4] };
            let f = frame(&pkt6(R, A, &[], proto::ICMPV6, &icmp6(ty, 0, hdr, sent)));
            let (_, pkt, _, l4, pay, _) = ipv6(&f);
            assert_eq!(
                pkt.key,
                key(R, A, proto::ICMPV6, 0, 0),
                "errors carry no ports"
            );
            assert_eq!(
                pkt.l4,
                L4::Icmp {
                    ty,
                    code: 0,
                    kind: IcmpKind::Error { inner: *inner }
                },
                "type {ty}"
            );
            assert_eq!((l4, pay), (54, 62));
        }
    }
    // Routers quote a prefix: the quote's payload length may exceed what follows.
    let mut prefix = sent_udp[..48].to_vec();
    prefix[4..6].copy_from_slice(&1200u16.to_be_bytes());
    let f = frame(&pkt6(
        R,
        A,
        &[],
        proto::ICMPV6,
        &icmp6(2, 0, [0; 4], &prefix),
    ));
    assert!(parse_frame(&f).is_ok());
}

#[test]
fn errors_that_cannot_be_related_are_dropped() {
    let sent = pkt6(A, R, &[(DEST_OPTS, opts(1))], proto::TCP, &tcp(1, 2, 0, 5));
    // Quotes cut in the fixed header, in the extension header, in the 8 L4 bytes.
    for n in [0, 39, 40, 47, 48, 55] {
        let f = frame(&pkt6(
            R,
            A,
            &[],
            proto::ICMPV6,
            &icmp6(1, 4, [0; 4], &sent[..n]),
        ));
        assert_eq!(
            parse_frame(&f),
            Err(DropReason::TruncatedL4),
            "quote of {n} bytes"
        );
    }
    let f = frame(&pkt6(
        R,
        A,
        &[],
        proto::ICMPV6,
        &icmp6(1, 4, [0; 4], &sent[..56]),
    ));
    assert!(
        parse_frame(&f).is_ok(),
        "header, options and 8 bytes suffice"
    );
    // A quote that is not IPv6.
    let mut v4 = sent.clone();
    v4[0] = 0x45;
    let f = frame(&pkt6(R, A, &[], proto::ICMPV6, &icmp6(3, 0, [0; 4], &v4)));
    assert_eq!(
        parse_frame(&f),
        Err(DropReason::TruncatedL4),
        "quote version"
    );
    // A quote whose chain is refused.
    let bad = pkt6(A, R, &[(ROUTING, routing(0))], proto::UDP, &udp(1, 2, b""));
    let f = frame(&pkt6(R, A, &[], proto::ICMPV6, &icmp6(4, 0, [0; 4], &bad)));
    assert_eq!(parse_frame(&f), Err(DropReason::BadIpv6ExtHeader));
    // An ICMPv6 header cut short.
    let f = frame(&pkt6(R, A, &[], proto::ICMPV6, &[128, 0, 0, 0, 0, 1, 0]));
    assert_eq!(parse_frame(&f), Err(DropReason::TruncatedL4));
}

#[test]
fn other_icmpv6_types_are_other() {
    // ND (RS, RA, NS, NA, redirect), MLD (query, v1 report/done, v2 report),
    // and unassigned/private types.
    for ty in [
        133, 134, 135, 136, 137, 130, 131, 132, 143, 0, 5, 100, 127, 200, 255,
    ] {
        let f = frame(&pkt6(
            A,
            B,
            &[],
            proto::ICMPV6,
            &icmp6(ty, 0, [0; 4], &[0; 16]),
        ));
        let (_, pkt, ..) = ipv6(&f);
        assert_eq!(pkt.key, key(A, B, proto::ICMPV6, 0, 0), "type {ty}");
        assert_eq!(
            pkt.l4,
            L4::Icmp {
                ty,
                code: 0,
                kind: IcmpKind::Other
            }
        );
    }
    // MLD reports come with a hop-by-hop router alert: still walked.
    let f = frame(&pkt6(
        A,
        B,
        &[(HOP_BY_HOP, opts(1))],
        proto::ICMPV6,
        &icmp6(143, 0, [0; 4], &[]),
    ));
    assert_eq!(ipv6(&f).1.key.proto, proto::ICMPV6);
}

// ---- header refusals ----

#[test]
fn truncated_and_malformed_ipv6() {
    let f = tcp_syn();
    for n in 14..14 + 40 {
        assert_eq!(
            parse_frame(&f[..n]),
            Err(DropReason::TruncatedIpv6),
            "fixed header cut at {n}"
        );
    }
    assert_eq!(
        parse_frame(&f[..f.len() - 1]),
        Err(DropReason::TruncatedIpv6),
        "payload length beyond the frame"
    );
    for v in [0x40, 0x00, 0x70, 0xf0] {
        let mut g = f.clone();
        g[14] = v;
        assert_eq!(
            parse_frame(&g),
            Err(DropReason::MalformedIpv6),
            "version byte {v:#x}"
        );
    }
    // A packet ending beyond byte 65,535 of the frame.
    let mut big = pkt6(A, B, &[], 253, &[]);
    big[4..6].copy_from_slice(&65_535u16.to_be_bytes());
    big.resize(40 + 65_535, 0);
    assert_eq!(parse_frame(&frame(&big)), Err(DropReason::MalformedIpv6));
    big[4..6].copy_from_slice(&(65_535u16 - 40 - 14).to_be_bytes());
    big.truncate(65_535 - 14);
    assert!(parse_frame(&frame(&big)).is_ok(), "ends at byte 65,535");
}

// ---- robustness ----

fn valid_frames() -> Vec<Vec<u8>> {
    let sent = pkt6(A, R, &[(DEST_OPTS, opts(1))], proto::UDP, &udp(1, 2, b"q"));
    vec![
        tcp_syn(),
        frame(&pkt6(A, R, &[], proto::UDP, &udp(53000, 53, b"dns query"))),
        frame(&pkt6(A, B, &[], proto::ICMPV6, &echo(128, 1))),
        frame(&pkt6(
            R,
            A,
            &[],
            proto::ICMPV6,
            &icmp6(2, 0, [0, 0, 5, 0], &sent),
        )),
        frame(&pkt6(
            A,
            B,
            &[(HOP_BY_HOP, opts(1)), (ROUTING, routing(4)), (AH, ah())],
            proto::TCP,
            &tcp(1, 2, tcp_flags::ACK, 6),
        )),
        frame(&pkt6(
            A,
            B,
            &[(FRAGMENT, frag(0, true, 3))],
            proto::UDP,
            &udp(3, 4, b"frag"),
        )),
        frame(&pkt6(
            A,
            B,
            &[(FRAGMENT, frag(3, false, 3))],
            proto::UDP,
            b"later",
        )),
        frame(&pkt6(
            A,
            B,
            &[],
            proto::ICMPV6,
            &icmp6(135, 0, [0; 4], &B.octets()),
        )),
    ]
}

#[test]
fn every_truncation_of_a_valid_frame_is_handled() {
    for f in valid_frames() {
        let full = parse_frame(&f).expect("valid frame parses");
        for n in 0..f.len() {
            let r = parse_frame(&f[..n]);
            assert!(
                r.is_err(),
                "cut at {n} of {} must not parse: {r:?}",
                f.len()
            );
        }
        // Shortening the payload length instead (the frame keeps its bytes as
        // padding) is refused too, never misread.
        for cut in 1..f.len() - 54 {
            let mut g = f.clone();
            let plen = u16::try_from(f.len() - 54 - cut).expect("small");
            g[18..20].copy_from_slice(&plen.to_be_bytes());
            let r = parse_frame(&g);
            assert!(r.is_err() || r != Ok(full), "payload cut by {cut}");
            if let Ok(Parsed::Ipv6 { ip_len, .. }) = r {
                assert_eq!(usize::from(ip_len), 40 + usize::from(plen));
            }
        }
    }
}

/// xorshift64*: a tiny deterministic generator.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[test]
fn random_mutations_never_panic_and_offsets_hold() {
    let mut rng = Rng(0x6666_cafe_f00d_beef);
    let frames = valid_frames();
    let mut ok = 0usize;
    let mut buf = Vec::new();
    for i in 0..200_000 {
        buf.clear();
        buf.extend_from_slice(&frames[rng.below(frames.len())]);
        if i % 4 == 0 {
            // Noise after a valid IPv6 fixed header: random next headers.
            let n = rng.below(120);
            buf.truncate(54);
            buf.extend((0..n).map(|_| rng.next() as u8));
            buf[20] = [0u8, 43, 44, 51, 60, 58, 6, 17][rng.below(8)];
            let plen = u16::try_from(n).expect("small");
            buf[18..20].copy_from_slice(&plen.to_be_bytes());
        } else {
            for _ in 0..=rng.below(4) {
                let at = 14 + rng.below(buf.len() - 14);
                buf[at] = rng.next() as u8;
            }
            let cut = rng.below(buf.len() + 1);
            buf.truncate(cut);
        }
        if let Ok(Parsed::Ipv6 {
            l3_offset,
            l4_offset,
            payload_offset,
            ip_len,
            ..
        }) = parse_frame(&buf)
        {
            ok += 1;
            assert!(l3_offset <= l4_offset && l4_offset <= payload_offset);
            assert!(usize::from(payload_offset) <= usize::from(l3_offset) + usize::from(ip_len));
            assert!(usize::from(l3_offset) + usize::from(ip_len) <= buf.len());
        }
    }
    assert!(ok > 10_000, "mutations should often still parse, got {ok}");
}

// ---- cross-check against an independent encoder ----

mod against_etherparse {
    use super::*;
    use etherparse::PacketBuilder;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1000))]
        #[test]
        fn parse_agrees_with_etherparse_builder(
            src in any::<[u8; 16]>(), dst in any::<[u8; 16]>(),
            sport in any::<u16>(), dport in any::<u16>(),
            which in 0u8..4, flags in 0u8..0x20, ident in any::<u16>(),
            payload in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let ip = PacketBuilder::ethernet2(MAC_A, MAC_B).ipv6(src, dst, 64);
            let mut f = Vec::new();
            let (p, ports, l4) = match which {
                0 => {
                    let mut b = ip.tcp(sport, dport, 1, 1000);
                    if flags & tcp_flags::FIN != 0 { b = b.fin(); }
                    if flags & tcp_flags::SYN != 0 { b = b.syn(); }
                    if flags & tcp_flags::RST != 0 { b = b.rst(); }
                    if flags & tcp_flags::PSH != 0 { b = b.psh(); }
                    if flags & tcp_flags::ACK != 0 { b = b.ack(1); }
                    b.write(&mut f, &payload).expect("write");
                    (proto::TCP, (sport, dport), L4::Tcp { flags })
                }
                1 => {
                    ip.udp(sport, dport).write(&mut f, &payload).expect("write");
                    (proto::UDP, (sport, dport), L4::Udp)
                }
                2 => {
                    ip.icmpv6_echo_request(ident, 1).write(&mut f, &payload).expect("write");
                    (proto::ICMPV6, (ident, ident), L4::Icmp { ty: 128, code: 0, kind: IcmpKind::Request })
                }
                _ => {
                    ip.icmpv6_echo_reply(ident, 1).write(&mut f, &payload).expect("write");
                    (proto::ICMPV6, (ident, ident), L4::Icmp { ty: 129, code: 0, kind: IcmpKind::Reply })
                }
            };
            let (_, pkt, l3, _, _, len) = ipv6(&f);
            prop_assert_eq!(pkt.key, key(src.into(), dst.into(), p, ports.0, ports.1));
            prop_assert_eq!(pkt.l4, l4);
            prop_assert_eq!(pkt.frag, Frag::None);
            prop_assert_eq!((l3, usize::from(len)), (14, f.len() - 14));
        }
    }
}
