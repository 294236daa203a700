//! IPv6 parsing: the fixed header, the extension-header walk, and the
//! TCP/UDP/ICMPv6 facts of [`Parsed::Ipv6`].
//!
//! Contract (beside the [parent module](super)'s, whose conventions for ports,
//! queries, errors and fragments hold here too):
//! * The 40-byte fixed header must be present and its payload length within the
//!   frame, else [`DropReason::TruncatedIpv6`]; bytes after `40 + payload length`
//!   are Ethernet padding. Version must be 6, else [`DropReason::MalformedIpv6`];
//!   so is a packet that would end beyond byte 65,535 of the frame (offsets are
//!   `u16`; no port's MTU comes near, and a jumbogram's payload length of 0
//!   leaves no room for the hop-by-hop header that would announce it).
//! * **Extension headers** are walked to the upper-layer header: hop-by-hop
//!   options (0, only directly after the fixed header), destination options
//!   (60), routing (43; type 0 is refused, RFC 5095), fragment (44, at most one)
//!   and authentication (51, length in 4-byte units). **Bound:** at most
//!   [`IPV6_MAX_EXT_HEADERS`] (8) headers are walked; each step reads one fixed
//!   8-byte array and moves at least 8 bytes on, so a packet costs at most 8
//!   steps whatever it holds (RFC 8200's recommended order has at most six:
//!   hop-by-hop, destination options twice, routing, fragment, AH). A ninth
//!   header, a header cut short by the payload length, a second hop-by-hop or
//!   fragment header, or routing type 0 is [`DropReason::BadIpv6ExtHeader`].
//! * Upper layer: TCP and UDP as for IPv4; ICMPv6 (58) below; anything else (ESP
//!   50 and No Next Header 59 included, whose contents cannot be walked) is
//!   [`L4::Other`] with that protocol number, ports 0, payload at the L4 offset.
//! * **Fragment header**: offset 0 with M set is [`Frag::First`] with the 32-bit
//!   identification; the walk continues, since the first fragment must hold the
//!   whole header chain (RFC 7112) and its complete L4 header (else
//!   [`DropReason::TinyFragment`]). Offset > 0 is [`Frag::Later`]: the walk stops
//!   after the fragment header, the key's protocol is that header's next header
//!   and its ports are 0; a TCP fragment at offset 8 bytes is
//!   [`DropReason::TinyFragment`] as in IPv4. Offset 0 without M (an atomic
//!   fragment, RFC 6946) is [`Frag::None`].
//! * **ICMPv6**: echo request (128) and reply (129) are
//!   [`IcmpKind::Request`]/[`IcmpKind::Reply`] with the identifier in both ports.
//!   The errors destination unreachable (1), packet too big (2), time exceeded
//!   (3) and parameter problem (4) are [`IcmpKind::Error`] keyed by the quoted
//!   packet: its fixed header (version 6), its extension headers (walked with
//!   the same bound) and 8 bytes of TCP/UDP/ICMPv6 must be present, else
//!   [`DropReason::TruncatedL4`] (a bad chain in the quote is
//!   [`DropReason::BadIpv6ExtHeader`]); the quote's payload length is not
//!   checked (routers quote a prefix). A quoted non-first fragment has ports 0.
//!   Every other type (neighbor discovery 133–137, MLD 130–132 and 143, ...) is
//!   [`IcmpKind::Other`] with ports 0.

use std::net::Ipv6Addr;

use super::{Eth, Parsed, be16, field, take, tcp_header, udp_header};
use crate::{DropReason, FlowKey6, Frag, IcmpKind, L4, Packet6, proto};

/// Length of the fixed IPv6 header.
pub const IPV6_HDR_LEN: usize = 40;
/// Most extension headers walked before the upper-layer header (see the module
/// docs).
pub const IPV6_MAX_EXT_HEADERS: usize = 8;
/// Length of an ICMPv6 header (type, code, checksum, 4 bytes of message body).
pub const ICMPV6_HDR_LEN: usize = 8;

/// IPv6 next-header values of the extension headers (and the two upper layers
/// that end a walk without an L4 header).
pub mod next_header {
    pub const HOP_BY_HOP: u8 = 0;
    pub const ROUTING: u8 = 43;
    pub const FRAGMENT: u8 = 44;
    pub const ESP: u8 = 50;
    pub const AH: u8 = 51;
    pub const NO_NEXT_HEADER: u8 = 59;
    pub const DEST_OPTS: u8 = 60;
}

/// ICMPv6 types the parser distinguishes.
pub mod icmpv6 {
    pub const DEST_UNREACHABLE: u8 = 1;
    pub const PACKET_TOO_BIG: u8 = 2;
    pub const TIME_EXCEEDED: u8 = 3;
    pub const PARAMETER_PROBLEM: u8 = 4;
    pub const ECHO_REQUEST: u8 = 128;
    pub const ECHO_REPLY: u8 = 129;
    pub const ROUTER_SOLICIT: u8 = 133;
    pub const ROUTER_ADVERT: u8 = 134;
    pub const NEIGHBOR_SOLICIT: u8 = 135;
    pub const NEIGHBOR_ADVERT: u8 = 136;
    pub const REDIRECT: u8 = 137;
}

/// `Some(true)` for an ICMPv6 echo request, `Some(false)` for an echo reply,
/// `None` otherwise.
#[inline]
pub fn icmp6_query(ty: u8) -> Option<bool> {
    match ty {
        icmpv6::ECHO_REQUEST => Some(true),
        icmpv6::ECHO_REPLY => Some(false),
        _ => None,
    }
}

/// Whether an ICMPv6 type is an error that quotes the packet it is about (1–4).
#[inline]
pub fn icmp6_is_error(ty: u8) -> bool {
    matches!(ty, 1..=4)
}

/// The fixed IPv6 header facts.
struct Fixed {
    payload_len: usize,
    next: u8,
    src: Ipv6Addr,
    dst: Ipv6Addr,
}

fn fixed_header(
    b: &[u8],
    truncated: DropReason,
    malformed: DropReason,
) -> Result<Fixed, DropReason> {
    let h: &[u8; IPV6_HDR_LEN] = take(b).ok_or(truncated)?;
    if h[0] >> 4 != 6 {
        return Err(malformed);
    }
    Ok(Fixed {
        payload_len: usize::from(be16([h[4], h[5]])),
        next: h[6],
        src: Ipv6Addr::from(field::<16>(h, 8)),
        dst: Ipv6Addr::from(field::<16>(h, 24)),
    })
}

/// The end of an extension-header walk.
#[derive(Debug, PartialEq, Eq)]
struct Chain {
    /// The upper-layer protocol; for a non-first fragment, its fragment
    /// header's next header.
    proto: u8,
    /// Bytes of extension headers walked (the L4 header starts there).
    len: usize,
    frag: Frag,
    /// A non-first fragment's offset, in 8-byte units.
    frag_units: u16,
}

/// Whether a next-header value is an extension header the walk steps over.
#[inline]
fn is_ext_header(nh: u8) -> bool {
    use next_header::*;
    matches!(nh, HOP_BY_HOP | ROUTING | FRAGMENT | AH | DEST_OPTS)
}

/// Walk the extension headers at the start of `b` (the bytes after the fixed
/// header, cut to the payload length), starting with next header `first`.
/// A header cut short is `cut`; every other refusal is
/// [`DropReason::BadIpv6ExtHeader`] (see the module docs for the rules and the
/// bound).
fn walk(first: u8, b: &[u8], cut: DropReason) -> Result<Chain, DropReason> {
    use next_header::*;
    let bad = DropReason::BadIpv6ExtHeader;
    let mut next = first;
    let mut off = 0usize;
    let mut frag = Frag::None;
    let mut seen_frag = false;
    let mut walked = 0usize;
    while is_ext_header(next) {
        if walked == IPV6_MAX_EXT_HEADERS {
            return Err(bad);
        }
        walked += 1;
        // Every extension header is at least 8 bytes long.
        let h: &[u8; 8] = take(b.get(off..).unwrap_or(&[])).ok_or(cut)?;
        let len = match next {
            HOP_BY_HOP if walked != 1 => return Err(bad),
            ROUTING if h[2] == 0 => return Err(bad),
            FRAGMENT => {
                if seen_frag {
                    return Err(bad);
                }
                seen_frag = true;
                let fo = be16([h[2], h[3]]);
                let (units, more) = (fo >> 3, fo & 1 != 0);
                let id = u32::from_be_bytes(field::<4>(h, 4));
                match (units, more) {
                    (0, false) => {}
                    (0, true) => frag = Frag::First { id },
                    _ => {
                        return Ok(Chain {
                            proto: h[0],
                            len: off + 8,
                            frag: Frag::Later { id },
                            frag_units: units,
                        });
                    }
                }
                8
            }
            AH => (usize::from(h[1]) + 2) * 4,
            _ => (usize::from(h[1]) + 1) * 8,
        };
        // `off + 8 <= b.len()` holds (the array above was taken there).
        if len > b.len() - off {
            return Err(cut);
        }
        next = h[0];
        off += len;
    }
    Ok(Chain {
        proto: next,
        len: off,
        frag,
        frag_units: 0,
    })
}

/// Parse the IPv6 packet at the start of `b` (frame bytes from `l3` on).
pub(super) fn parse_ipv6(eth: Eth, l3: usize, b: &[u8]) -> Result<Parsed, DropReason> {
    let ip = fixed_header(b, DropReason::TruncatedIpv6, DropReason::MalformedIpv6)?;
    let ip_len = IPV6_HDR_LEN + ip.payload_len;
    // Trailing bytes beyond the payload length are Ethernet padding.
    let b = b.get(..ip_len).ok_or(DropReason::TruncatedIpv6)?;
    // Every offset below is at most `l3 + ip_len`: make sure that fits u16.
    let end = u16::try_from(l3 + ip_len).map_err(|_| DropReason::MalformedIpv6)?;
    let after = b.get(IPV6_HDR_LEN..).unwrap_or(&[]);
    // All within `end`, which fits u16 (checked above).
    let off = |x: usize| u16::try_from(x).unwrap_or(end);
    if !is_ext_header(ip.next) {
        // The common case: the upper-layer header right after the fixed
        // header. The walk would stop at once (no extension header, not a
        // fragment): the same facts without it.
        let mut key = FlowKey6 {
            src: ip.src,
            dst: ip.dst,
            proto: ip.next,
            sport: 0,
            dport: 0,
        };
        let (l4, l4_hdr_len) = parse_l4(ip.next, after, DropReason::TruncatedL4, &mut key)?;
        let l4_offset = l3 + IPV6_HDR_LEN;
        return Ok(Parsed::Ipv6 {
            eth,
            pkt: Packet6 {
                key,
                l4,
                frag: Frag::None,
            },
            l3_offset: off(l3),
            l4_offset: off(l4_offset),
            payload_offset: off(l4_offset + l4_hdr_len),
            ip_len: off(ip_len),
        });
    }
    let chain = walk(ip.next, after, DropReason::BadIpv6ExtHeader)?;
    let mut key = FlowKey6 {
        src: ip.src,
        dst: ip.dst,
        proto: chain.proto,
        sport: 0,
        dport: 0,
    };
    let (l4, l4_hdr_len) = match chain.frag {
        Frag::Later { .. } => {
            if chain.proto == proto::TCP && chain.frag_units == 1 {
                return Err(DropReason::TinyFragment);
            }
            (L4::Other, 0)
        }
        Frag::None | Frag::First { .. } => {
            let short = if chain.frag == Frag::None {
                DropReason::TruncatedL4
            } else {
                DropReason::TinyFragment
            };
            let l4_bytes = after.get(chain.len..).unwrap_or(&[]);
            parse_l4(chain.proto, l4_bytes, short, &mut key)?
        }
    };
    let l4_offset = l3 + IPV6_HDR_LEN + chain.len;
    Ok(Parsed::Ipv6 {
        eth,
        pkt: Packet6 {
            key,
            l4,
            frag: chain.frag,
        },
        l3_offset: off(l3),
        l4_offset: off(l4_offset),
        payload_offset: off(l4_offset + l4_hdr_len),
        ip_len: off(ip_len),
    })
}

/// Parse the upper-layer header at the start of `b` (whole packet or first
/// fragment), filling the ports of `key`: the L4 facts and header length.
/// Inlined into both paths of [`parse_ipv6`] (a call and the copies of its
/// facts cost about as much as the TCP header itself).
#[inline(always)]
fn parse_l4(
    proto_num: u8,
    b: &[u8],
    short: DropReason,
    key: &mut FlowKey6,
) -> Result<(L4<Ipv6Addr>, usize), DropReason> {
    match proto_num {
        proto::TCP => {
            let (flags, doff, sport, dport) = tcp_header(b, short)?;
            key.sport = sport;
            key.dport = dport;
            Ok((L4::Tcp { flags }, doff))
        }
        proto::UDP => {
            let (sport, dport) = udp_header(b, short)?;
            key.sport = sport;
            key.dport = dport;
            Ok((L4::Udp, super::UDP_HDR_LEN))
        }
        proto::ICMPV6 => {
            let c: &[u8; ICMPV6_HDR_LEN] = take(b).ok_or(short)?;
            let (ty, code) = (c[0], c[1]);
            let kind = match icmp6_query(ty) {
                Some(is_request) => {
                    let ident = be16([c[4], c[5]]);
                    key.sport = ident;
                    key.dport = ident;
                    if is_request {
                        IcmpKind::Request
                    } else {
                        IcmpKind::Reply
                    }
                }
                None if icmp6_is_error(ty) => IcmpKind::Error {
                    inner: parse_quote(b.get(ICMPV6_HDR_LEN..).unwrap_or(&[]))?,
                },
                None => IcmpKind::Other,
            };
            Ok((L4::Icmp { ty, code, kind }, ICMPV6_HDR_LEN))
        }
        _ => Ok((L4::Other, 0)),
    }
}

/// The flow key (as it was sent) of the packet quoted by an ICMPv6 error.
fn parse_quote(b: &[u8]) -> Result<FlowKey6, DropReason> {
    let short = DropReason::TruncatedL4;
    let ip = fixed_header(b, short, short)?;
    let after = b.get(IPV6_HDR_LEN..).unwrap_or(&[]);
    let chain = walk(ip.next, after, short)?;
    let mut inner = FlowKey6 {
        src: ip.src,
        dst: ip.dst,
        proto: chain.proto,
        sport: 0,
        dport: 0,
    };
    if let Frag::Later { .. } = chain.frag {
        return Ok(inner);
    }
    let l4 = after.get(chain.len..).unwrap_or(&[]);
    match chain.proto {
        proto::TCP | proto::UDP => {
            let p: &[u8; 8] = take(l4).ok_or(short)?;
            inner.sport = be16([p[0], p[1]]);
            inner.dport = be16([p[2], p[3]]);
        }
        proto::ICMPV6 => {
            let c: &[u8; ICMPV6_HDR_LEN] = take(l4).ok_or(short)?;
            if icmp6_query(c[0]).is_some() {
                let ident = be16([c[4], c[5]]);
                inner.sport = ident;
                inner.dport = ident;
            }
        }
        _ => {}
    }
    Ok(inner)
}

#[cfg(test)]
mod tests;
