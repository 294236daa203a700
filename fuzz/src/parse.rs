//! Target `parse`: any bytes → [`filter::parse_frame`].
//!
//! Contract checked on every input (a violation panics, which libFuzzer reports):
//! * `parse_frame` returns (no panic, no hang) and is deterministic.
//! * An error is one of the parse reasons (`TruncatedEthernet..=TinyFragment`,
//!   `TruncatedIpv6..=BadIpv6ExtHeader`).
//! * An accepted frame's facts are the frame's bytes: MACs, VLAN, EtherType, ARP
//!   fields, IPv4 addresses and protocol, fragment id/flags, TCP/UDP ports and
//!   TCP flags, ICMP type/code and query identifier, read back independently
//!   here at the offsets the parser reported.
//! * Offsets are ordered and within the frame: `l3 ∈ {14, 18}`, `l3 + 20 <= l4
//!   <= payload <= l3 + ip_len <= frame.len()`, `l4 - l3` is the IHL.
//! * IPv6: version 6, `ip_len` is 40 + the payload length, and the extension
//!   headers re-walked here (at most 8, hop-by-hop first only, no routing type
//!   0, one fragment header) end exactly at the reported L4 offset with the
//!   reported protocol and fragment facts; TCP/UDP/ICMPv6 facts (echo
//!   identifier, errors 1–4 with their quoted addresses) are the bytes.
//! * Padding does not matter: the frame cut to `l3 + ip_len` (or the ARP body),
//!   and the frame with junk appended, parse to the same result.

use filter::parse::{ETHERTYPE_ARP, ETHERTYPE_IPV4, ETHERTYPE_IPV6, Parsed};
use filter::{DropReason, Frag, IcmpKind, L4, parse_frame, proto};

fn be16(f: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([f[at], f[at + 1]])
}

/// Run the `parse` target on one input.
pub fn run(frame: &[u8]) {
    let r = parse_frame(frame);
    assert_eq!(r, parse_frame(frame), "parse_frame is deterministic");
    let p = match r {
        Err(e) => {
            assert!(
                e <= DropReason::TinyFragment
                    || (DropReason::TruncatedIpv6..=DropReason::BadIpv6ExtHeader).contains(&e),
                "parse_frame returned a non-parse reason {e:?}"
            );
            return;
        }
        Ok(p) => p,
    };
    let eth = p.eth();
    assert_eq!(eth.dst[..], frame[0..6]);
    assert_eq!(eth.src[..], frame[6..12]);
    let l2 = eth.header_len();
    match eth.vlan {
        Some(vid) => {
            assert_eq!(be16(frame, 12), 0x8100);
            assert_eq!(vid, be16(frame, 14) & 0x0fff);
            assert_eq!(eth.ethertype, be16(frame, 16));
        }
        None => assert_eq!(eth.ethertype, be16(frame, 12)),
    }
    let end = match p {
        Parsed::Arp { arp, .. } => {
            assert_eq!(eth.ethertype, ETHERTYPE_ARP);
            let a = &frame[l2..l2 + 28];
            assert_eq!(arp.op, be16(a, 6));
            assert!(arp.op == 1 || arp.op == 2);
            assert_eq!(arp.sha[..], a[8..14]);
            assert_eq!(arp.spa.octets()[..], a[14..18]);
            assert_eq!(arp.tha[..], a[18..24]);
            assert_eq!(arp.tpa.octets()[..], a[24..28]);
            l2 + 28
        }
        Parsed::Ipv4 {
            pkt,
            l3_offset,
            l4_offset,
            payload_offset,
            ip_len,
            ..
        } => {
            assert_eq!(eth.ethertype, ETHERTYPE_IPV4);
            let (l3, l4, pay, len) = (
                usize::from(l3_offset),
                usize::from(l4_offset),
                usize::from(payload_offset),
                usize::from(ip_len),
            );
            assert_eq!(l3, l2, "IPv4 header right after Ethernet");
            assert!(l3 + 20 <= l4 && l4 <= pay && pay <= l3 + len && l3 + len <= frame.len());
            let ip = &frame[l3..l3 + len];
            assert_eq!(ip[0] >> 4, 4);
            assert_eq!(
                l4 - l3,
                usize::from(ip[0] & 0x0f) * 4,
                "l4 offset is the IHL"
            );
            assert_eq!(len, usize::from(be16(ip, 2)), "ip_len is the total length");
            assert_eq!(pkt.key.src.octets()[..], ip[12..16]);
            assert_eq!(pkt.key.dst.octets()[..], ip[16..20]);
            assert_eq!(pkt.key.proto, ip[9]);
            let fo = be16(ip, 6);
            let (off, mf, id) = (fo & 0x1fff, fo & 0x2000 != 0, u32::from(be16(ip, 4)));
            let want = match (off, mf) {
                (0, false) => Frag::None,
                (0, true) => Frag::First { id },
                _ => Frag::Later { id },
            };
            assert_eq!(pkt.frag, want);
            let l4b = &frame[l4..l3 + len];
            if matches!(pkt.frag, Frag::Later { .. }) {
                assert_eq!(pkt.l4, L4::Other);
                assert_eq!((pkt.key.sport, pkt.key.dport), (0, 0));
                assert_eq!(pay, l4);
                assert!(
                    !(pkt.key.proto == proto::TCP && off == 1),
                    "RFC 1858: a TCP fragment at offset 8 must be dropped"
                );
            } else {
                check_l4(&pkt, l4b, pay - l4);
            }
            l3 + len
        }
        Parsed::Ipv6 {
            pkt,
            l3_offset,
            l4_offset,
            payload_offset,
            ip_len,
            ..
        } => {
            assert_eq!(eth.ethertype, ETHERTYPE_IPV6);
            let (l3, l4, pay, len) = (
                usize::from(l3_offset),
                usize::from(l4_offset),
                usize::from(payload_offset),
                usize::from(ip_len),
            );
            assert_eq!(l3, l2, "IPv6 header right after Ethernet");
            assert!(l3 + 40 <= l4 && l4 <= pay && pay <= l3 + len && l3 + len <= frame.len());
            let ip = &frame[l3..l3 + len];
            assert_eq!(ip[0] >> 4, 6);
            assert_eq!(
                len,
                40 + usize::from(be16(ip, 4)),
                "ip_len is 40 + payload length"
            );
            assert_eq!(pkt.key.src.octets()[..], ip[8..24]);
            assert_eq!(pkt.key.dst.octets()[..], ip[24..40]);
            let (proto_, l4_at, frag) = walk6(ip).expect("accepted chain walks");
            assert_eq!(pkt.key.proto, proto_, "upper-layer protocol");
            assert_eq!(l4 - l3, l4_at, "L4 offset is the end of the chain");
            assert_eq!(pkt.frag, frag);
            let l4b = &frame[l4..l3 + len];
            if matches!(pkt.frag, Frag::Later { .. }) {
                assert_eq!(pkt.l4, L4::Other);
                assert_eq!((pkt.key.sport, pkt.key.dport), (0, 0));
                assert_eq!(pay, l4);
            } else {
                check_l4_6(&pkt, l4b, pay - l4);
            }
            l3 + len
        }
    };
    // Padding and trailing junk are ignored.
    assert_eq!(parse_frame(&frame[..end]), Ok(p), "cut to the packet");
    let mut longer = frame.to_vec();
    longer.extend_from_slice(&[0xa5; 7]);
    assert_eq!(parse_frame(&longer), Ok(p), "junk after the frame");
}

/// The L4 facts of a whole packet or first fragment against its bytes.
fn check_l4(pkt: &filter::Packet, l4b: &[u8], hdr_len: usize) {
    let ports = (pkt.key.sport, pkt.key.dport);
    match pkt.key.proto {
        proto::TCP => {
            let doff = usize::from(l4b[12] >> 4) * 4;
            assert!(doff >= 20 && doff <= l4b.len());
            assert_eq!(hdr_len, doff);
            assert_eq!(ports, (be16(l4b, 0), be16(l4b, 2)));
            assert_eq!(pkt.l4, L4::Tcp { flags: l4b[13] });
        }
        proto::UDP => {
            assert_eq!(hdr_len, 8);
            assert_eq!(ports, (be16(l4b, 0), be16(l4b, 2)));
            assert_eq!(pkt.l4, L4::Udp);
        }
        proto::ICMP => {
            assert_eq!(hdr_len, 8);
            let L4::Icmp { ty, code, kind } = pkt.l4 else {
                panic!("ICMP packet with L4 {:?}", pkt.l4);
            };
            assert_eq!((ty, code), (l4b[0], l4b[1]));
            match kind {
                IcmpKind::Request | IcmpKind::Reply => {
                    let id = be16(l4b, 4);
                    assert_eq!(ports, (id, id), "query id in both ports");
                    let req = matches!(ty, 8 | 13 | 15 | 17);
                    let rep = matches!(ty, 0 | 14 | 16 | 18);
                    assert!(req || rep, "query kind for type {ty}");
                    assert_eq!(kind == IcmpKind::Request, req);
                }
                IcmpKind::Error { inner } => {
                    assert!(
                        matches!(ty, 3 | 4 | 5 | 11 | 12),
                        "error kind for type {ty}"
                    );
                    assert_eq!(ports, (0, 0));
                    let q = &l4b[8..];
                    assert_eq!(q[0] >> 4, 4, "quoted IPv4");
                    let ihl = usize::from(q[0] & 0x0f) * 4;
                    assert!(ihl >= 20 && ihl <= q.len());
                    assert_eq!(inner.src.octets()[..], q[12..16]);
                    assert_eq!(inner.dst.octets()[..], q[16..20]);
                    assert_eq!(inner.proto, q[9]);
                    let later = be16(q, 6) & 0x1fff != 0;
                    if matches!(inner.proto, proto::TCP | proto::UDP) && !later {
                        assert!(q.len() >= ihl + 8, "quote holds 8 L4 bytes");
                        assert_eq!((inner.sport, inner.dport), (be16(q, ihl), be16(q, ihl + 2)));
                    } else if inner.proto == proto::ICMP && !later {
                        assert!(q.len() >= ihl + 8, "quote holds 8 ICMP bytes");
                        let id = be16(q, ihl + 4);
                        let query = matches!(q[ihl], 0 | 8 | 13..=18);
                        let want = if query { (id, id) } else { (0, 0) };
                        assert_eq!((inner.sport, inner.dport), want, "quoted ICMP ports");
                    } else {
                        assert_eq!((inner.sport, inner.dport), (0, 0), "quote without ports");
                    }
                }
                IcmpKind::Other => {
                    assert_eq!(ports, (0, 0));
                    assert!(!matches!(ty, 0 | 3 | 4 | 5 | 8 | 11..=18));
                }
            }
        }
        _ => {
            assert_eq!(hdr_len, 0);
            assert_eq!(ports, (0, 0));
            assert_eq!(pkt.l4, L4::Other);
        }
    }
}

/// Walk an IPv6 packet's extension headers independently of the parser:
/// `(protocol, L4 offset from the IPv6 header, fragment facts)`, or `None`
/// where the parser must refuse the chain.
fn walk6(ip: &[u8]) -> Option<(u8, usize, Frag)> {
    let (mut next, mut at, mut n, mut frag, mut frags) = (ip[6], 40usize, 0, Frag::None, 0);
    while matches!(next, 0 | 43 | 44 | 51 | 60) {
        n += 1;
        if n > 8 || at + 8 > ip.len() || (next == 0 && n != 1) {
            return None;
        }
        let h = &ip[at..at + 8];
        let len = match next {
            43 if h[2] == 0 => return None,
            44 => {
                frags += 1;
                if frags > 1 {
                    return None;
                }
                let fo = be16(h, 2);
                let id = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
                match (fo >> 3, fo & 1) {
                    (0, 0) => {}
                    (0, _) => frag = Frag::First { id },
                    (off, _) => {
                        assert!(!(h[0] == proto::TCP && off == 1), "RFC 1858 in IPv6");
                        return Some((h[0], at + 8, Frag::Later { id }));
                    }
                }
                8
            }
            51 => (usize::from(h[1]) + 2) * 4,
            _ => (usize::from(h[1]) + 1) * 8,
        };
        if at + len > ip.len() {
            return None;
        }
        next = h[0];
        at += len;
    }
    Some((next, at, frag))
}

/// The L4 facts of a whole IPv6 packet or first fragment against its bytes.
fn check_l4_6(pkt: &filter::Packet6, l4b: &[u8], hdr_len: usize) {
    let ports = (pkt.key.sport, pkt.key.dport);
    match pkt.key.proto {
        proto::TCP => {
            let doff = usize::from(l4b[12] >> 4) * 4;
            assert!(doff >= 20 && doff <= l4b.len());
            assert_eq!(hdr_len, doff);
            assert_eq!(ports, (be16(l4b, 0), be16(l4b, 2)));
            assert_eq!(pkt.l4, L4::Tcp { flags: l4b[13] });
        }
        proto::UDP => {
            assert_eq!(hdr_len, 8);
            assert_eq!(ports, (be16(l4b, 0), be16(l4b, 2)));
            assert_eq!(pkt.l4, L4::Udp);
        }
        proto::ICMPV6 => {
            assert_eq!(hdr_len, 8);
            let L4::Icmp { ty, code, kind } = pkt.l4 else {
                panic!("ICMPv6 packet with L4 {:?}", pkt.l4);
            };
            assert_eq!((ty, code), (l4b[0], l4b[1]));
            match kind {
                IcmpKind::Request | IcmpKind::Reply => {
                    let id = be16(l4b, 4);
                    assert_eq!(ports, (id, id), "echo id in both ports");
                    assert_eq!(kind == IcmpKind::Request, ty == 128);
                    assert!(ty == 128 || ty == 129);
                }
                IcmpKind::Error { inner } => {
                    assert!((1..=4).contains(&ty), "error kind for type {ty}");
                    assert_eq!(ports, (0, 0));
                    let q = &l4b[8..];
                    assert_eq!(q[0] >> 4, 6, "quoted IPv6");
                    assert_eq!(inner.src.octets()[..], q[8..24]);
                    assert_eq!(inner.dst.octets()[..], q[24..40]);
                }
                IcmpKind::Other => {
                    assert_eq!(ports, (0, 0));
                    assert!(!matches!(ty, 1..=4 | 128 | 129));
                }
            }
        }
        _ => {
            assert_eq!(hdr_len, 0);
            assert_eq!(ports, (0, 0));
            assert_eq!(pkt.l4, L4::Other);
        }
    }
}
