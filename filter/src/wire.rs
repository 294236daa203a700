//! Frame builders for tests and benchmarks: Ethernet, 802.1Q, ARP, IPv4 (options,
//! fragments), TCP, UDP and ICMP frames as `Vec<u8>`, with valid checksums; and
//! their IPv6 counterparts (TCP, UDP, ICMPv6 echo and errors, neighbor
//! solicitations: the `*6` builders, with [`Endpoint6`]).
//!
//! Contract: every builder returns bytes that a real Linux stack accepts (IPv4
//! header checksum and TCP/UDP/ICMP checksums are filled in) and that
//! [`crate::parse::parse_frame`] parses back to the facts given. Frames are not
//! padded to the 60-byte Ethernet minimum unless [`pad_to_min`] is called (TAPs
//! and AF_PACKET do not need it; padding is what a wire adds).
//!
//! This module allocates and is meant for tests, benchmarks and tools that inject
//! traffic, never for the datapath. Checksums here are deliberately private: the
//! datapath's checksum code lives in the `switch` crate.

use std::net::{Ipv4Addr, Ipv6Addr};

use crate::Mac;
use crate::parse::{
    ARP_REPLY, ARP_REQUEST, ETHERTYPE_ARP, ETHERTYPE_IPV4, ETHERTYPE_IPV6, ETHERTYPE_VLAN,
};
use crate::proto;

/// The broadcast MAC.
pub const BROADCAST: Mac = [0xff; 6];

/// One end of a frame: a MAC and an IPv4 address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Endpoint {
    pub mac: Mac,
    pub ip: Ipv4Addr,
}

impl Endpoint {
    pub const fn new(mac: Mac, ip: Ipv4Addr) -> Endpoint {
        Endpoint { mac, ip }
    }
}

/// IPv4 header knobs. `Default` is a plain unfragmented packet, TTL 64, DF set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IpOpts {
    pub ttl: u8,
    pub tos: u8,
    pub id: u16,
    pub dont_fragment: bool,
    pub more_fragments: bool,
    /// Fragment offset in 8-byte units.
    pub frag_offset: u16,
    /// Raw option bytes; padded with zeros (end of options) to a multiple of 4.
    pub options: Vec<u8>,
}

impl Default for IpOpts {
    fn default() -> Self {
        IpOpts {
            ttl: 64,
            tos: 0,
            id: 0x1c46,
            dont_fragment: true,
            more_fragments: false,
            frag_offset: 0,
            options: Vec::new(),
        }
    }
}

/// Internet checksum (RFC 1071) over the concatenation of `parts`.
fn checksum(parts: &[&[u8]]) -> u16 {
    let mut sum: u32 = 0;
    let mut odd: Option<u8> = None;
    for part in parts {
        for &b in *part {
            match odd.take() {
                Some(hi) => sum += u32::from(u16::from_be_bytes([hi, b])),
                None => odd = Some(b),
            }
        }
    }
    if let Some(hi) = odd {
        sum += u32::from(u16::from_be_bytes([hi, 0]));
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The TCP/UDP pseudo-header.
fn pseudo_header(src: Ipv4Addr, dst: Ipv4Addr, proto_num: u8, len: usize) -> [u8; 12] {
    let mut p = [0u8; 12];
    p[0..4].copy_from_slice(&src.octets());
    p[4..8].copy_from_slice(&dst.octets());
    p[9] = proto_num;
    p[10..12].copy_from_slice(&u16::try_from(len).unwrap_or(u16::MAX).to_be_bytes());
    p
}

/// An Ethernet II frame (no padding).
pub fn ethernet(dst: Mac, src: Mac, ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(14 + payload.len());
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// `frame` with an 802.1Q tag (priority 0, the given 12-bit VID) inserted.
pub fn vlan_tag(frame: &[u8], vid: u16) -> Vec<u8> {
    let mut f = Vec::with_capacity(frame.len() + 4);
    f.extend_from_slice(&frame[..12.min(frame.len())]);
    f.extend_from_slice(&ETHERTYPE_VLAN.to_be_bytes());
    f.extend_from_slice(&(vid & 0x0fff).to_be_bytes());
    f.extend_from_slice(frame.get(12..).unwrap_or(&[]));
    f
}

/// `frame` padded with zeros to the 60-byte Ethernet minimum (without FCS).
pub fn pad_to_min(mut frame: Vec<u8>) -> Vec<u8> {
    if frame.len() < 60 {
        frame.resize(60, 0);
    }
    frame
}

/// An Ethernet/IPv4 ARP frame.
pub fn arp(op: u16, eth_dst: Mac, sha: Mac, spa: Ipv4Addr, tha: Mac, tpa: Ipv4Addr) -> Vec<u8> {
    let mut a = Vec::with_capacity(28);
    a.extend_from_slice(&1u16.to_be_bytes());
    a.extend_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
    a.extend_from_slice(&[6, 4]);
    a.extend_from_slice(&op.to_be_bytes());
    a.extend_from_slice(&sha);
    a.extend_from_slice(&spa.octets());
    a.extend_from_slice(&tha);
    a.extend_from_slice(&tpa.octets());
    ethernet(eth_dst, sha, ETHERTYPE_ARP, &a)
}

/// Broadcast "who has `tpa`? tell `from`".
pub fn arp_request(from: Endpoint, tpa: Ipv4Addr) -> Vec<u8> {
    arp(ARP_REQUEST, BROADCAST, from.mac, from.ip, [0; 6], tpa)
}

/// Unicast "`from.ip` is at `from.mac`" to `to`.
pub fn arp_reply(from: Endpoint, to: Endpoint) -> Vec<u8> {
    arp(ARP_REPLY, to.mac, from.mac, from.ip, to.mac, to.ip)
}

/// An IPv4 packet (header with checksum, then `l4` verbatim).
pub fn ipv4_packet(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    proto_num: u8,
    opts: &IpOpts,
    l4: &[u8],
) -> Vec<u8> {
    let mut options = opts.options.clone();
    while !options.len().is_multiple_of(4) {
        options.push(0);
    }
    let ihl = 20 + options.len();
    let total = u16::try_from(ihl + l4.len()).unwrap_or(u16::MAX);
    let mut flags_off = opts.frag_offset & 0x1fff;
    if opts.dont_fragment {
        flags_off |= 0x4000;
    }
    if opts.more_fragments {
        flags_off |= 0x2000;
    }
    let mut h = Vec::with_capacity(ihl + l4.len());
    h.push(0x40 | u8::try_from(ihl / 4).unwrap_or(15));
    h.push(opts.tos);
    h.extend_from_slice(&total.to_be_bytes());
    h.extend_from_slice(&opts.id.to_be_bytes());
    h.extend_from_slice(&flags_off.to_be_bytes());
    h.push(opts.ttl);
    h.push(proto_num);
    h.extend_from_slice(&[0, 0]);
    h.extend_from_slice(&src.octets());
    h.extend_from_slice(&dst.octets());
    h.extend_from_slice(&options);
    let c = checksum(&[&h]);
    h[10..12].copy_from_slice(&c.to_be_bytes());
    h.extend_from_slice(l4);
    h
}

/// A TCP segment (20-byte header, no options) with its checksum.
#[allow(clippy::too_many_arguments)]
pub fn tcp_segment(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    sport: u16,
    dport: u16,
    seq: u32,
    ack: u32,
    flags: u8,
    payload: &[u8],
) -> Vec<u8> {
    let mut t = tcp_bytes(sport, dport, seq, ack, flags, payload);
    let c = checksum(&[&pseudo_header(src, dst, proto::TCP, t.len()), &t]);
    t[16..18].copy_from_slice(&c.to_be_bytes());
    t
}

/// The TCP header and payload of [`tcp_segment`], checksum field zero.
fn tcp_bytes(sport: u16, dport: u16, seq: u32, ack: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut t = Vec::with_capacity(20 + payload.len());
    t.extend_from_slice(&sport.to_be_bytes());
    t.extend_from_slice(&dport.to_be_bytes());
    t.extend_from_slice(&seq.to_be_bytes());
    t.extend_from_slice(&ack.to_be_bytes());
    t.push(5 << 4);
    t.push(flags);
    t.extend_from_slice(&64240u16.to_be_bytes());
    t.extend_from_slice(&[0, 0, 0, 0]); // checksum, urgent pointer
    t.extend_from_slice(payload);
    t
}

/// A UDP datagram with its checksum.
pub fn udp_datagram(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    sport: u16,
    dport: u16,
    payload: &[u8],
) -> Vec<u8> {
    let len = 8 + payload.len();
    udp_bytes(
        sport,
        dport,
        payload,
        &pseudo_header(src, dst, proto::UDP, len),
    )
}

/// A UDP header and `payload`, its checksum over `pseudo` (the pseudo-header
/// of its family) and the datagram.
fn udp_bytes(sport: u16, dport: u16, payload: &[u8], pseudo: &[u8]) -> Vec<u8> {
    let len = 8 + payload.len();
    let mut u = Vec::with_capacity(len);
    u.extend_from_slice(&sport.to_be_bytes());
    u.extend_from_slice(&dport.to_be_bytes());
    u.extend_from_slice(&u16::try_from(len).unwrap_or(u16::MAX).to_be_bytes());
    u.extend_from_slice(&[0, 0]);
    u.extend_from_slice(payload);
    let c = match checksum(&[pseudo, &u]) {
        0 => 0xffff, // 0 means "no checksum" in UDP
        c => c,
    };
    u[6..8].copy_from_slice(&c.to_be_bytes());
    u
}

/// An ICMP message: type, code, the 4 "rest of header" bytes, then `data`.
pub fn icmp_message(ty: u8, code: u8, rest: [u8; 4], data: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(8 + data.len());
    m.extend_from_slice(&[ty, code, 0, 0]);
    m.extend_from_slice(&rest);
    m.extend_from_slice(data);
    let c = checksum(&[&m]);
    m[2..4].copy_from_slice(&c.to_be_bytes());
    m
}

/// An Ethernet frame carrying an IPv4 packet from `from` to `to`.
pub fn ipv4_frame(
    from: Endpoint,
    to: Endpoint,
    proto_num: u8,
    opts: &IpOpts,
    l4: &[u8],
) -> Vec<u8> {
    ethernet(
        to.mac,
        from.mac,
        ETHERTYPE_IPV4,
        &ipv4_packet(from.ip, to.ip, proto_num, opts, l4),
    )
}

/// A TCP frame (sequence number 1, ack 0 unless `flags` has ACK, then 1).
pub fn tcp(
    from: Endpoint,
    to: Endpoint,
    sport: u16,
    dport: u16,
    flags: u8,
    payload: &[u8],
) -> Vec<u8> {
    let ack = if flags & crate::tcp_flags::ACK != 0 {
        1
    } else {
        0
    };
    let seg = tcp_segment(from.ip, to.ip, sport, dport, 1, ack, flags, payload);
    ipv4_frame(from, to, proto::TCP, &IpOpts::default(), &seg)
}

/// A UDP frame (DF clear, as most UDP senders do).
pub fn udp(from: Endpoint, to: Endpoint, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let dgram = udp_datagram(from.ip, to.ip, sport, dport, payload);
    ipv4_frame(
        from,
        to,
        proto::UDP,
        &IpOpts {
            dont_fragment: false,
            ..IpOpts::default()
        },
        &dgram,
    )
}

/// An ICMP echo request (`request`) or reply with identifier `id` and sequence `seq`.
pub fn icmp_echo(
    from: Endpoint,
    to: Endpoint,
    request: bool,
    id: u16,
    seq: u16,
    data: &[u8],
) -> Vec<u8> {
    let [a, b] = id.to_be_bytes();
    let [c, d] = seq.to_be_bytes();
    let msg = icmp_message(if request { 8 } else { 0 }, 0, [a, b, c, d], data);
    ipv4_frame(from, to, proto::ICMP, &IpOpts::default(), &msg)
}

/// An ICMP error (`ty` 3, 4, 5, 11 or 12) from `from` to `to` quoting the IPv4
/// packet of `original_frame` (an untagged Ethernet frame as built here): its
/// header and up to 8 bytes of what follows, as routers do (RFC 792).
pub fn icmp_error(
    from: Endpoint,
    to: Endpoint,
    ty: u8,
    code: u8,
    original_frame: &[u8],
) -> Vec<u8> {
    let ip = original_frame.get(14..).unwrap_or(&[]);
    let ihl = ip.first().map_or(20, |b| usize::from(b & 0x0f) * 4);
    let quote = &ip[..(ihl + 8).min(ip.len())];
    let msg = icmp_message(ty, code, [0; 4], quote);
    ipv4_frame(
        from,
        to,
        proto::ICMP,
        &IpOpts {
            dont_fragment: false,
            ..IpOpts::default()
        },
        &msg,
    )
}

/// Split the IPv4 packet of an untagged frame into fragments carrying at most
/// `max_data` bytes of L4 data each (rounded down to a multiple of 8, at least
/// 8). Every fragment has the original header (options copied into each, a
/// simplification), the original id and correct offsets/MF flags.
pub fn fragment(frame: &[u8], max_data: usize) -> Vec<Vec<u8>> {
    let (eth, ip) = frame.split_at(14.min(frame.len()));
    let ihl = ip
        .first()
        .map_or(20, |b| usize::from(b & 0x0f) * 4)
        .min(ip.len());
    let (hdr, data) = ip.split_at(ihl);
    let step = (max_data / 8).max(1) * 8;
    let base_off = hdr
        .get(6..8)
        .map_or(0, |b| u16::from_be_bytes([b[0], b[1]]) & 0x1fff);
    let mut out = Vec::new();
    let mut at = 0;
    loop {
        let end = (at + step).min(data.len());
        let more = end < data.len();
        let mut h = hdr.to_vec();
        let total = u16::try_from(ihl + end - at).unwrap_or(u16::MAX);
        h[2..4].copy_from_slice(&total.to_be_bytes());
        let off = base_off + u16::try_from(at / 8).unwrap_or(0);
        let flags = if more { 0x2000 } else { 0 };
        h[6..8].copy_from_slice(&(off | flags).to_be_bytes());
        h[10..12].copy_from_slice(&[0, 0]);
        let c = checksum(&[&h]);
        h[10..12].copy_from_slice(&c.to_be_bytes());
        let mut f = eth.to_vec();
        f.extend_from_slice(&h);
        f.extend_from_slice(&data[at..end]);
        out.push(f);
        if !more {
            return out;
        }
        at = end;
    }
}

/// One end of an IPv6 frame: a MAC and an IPv6 address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Endpoint6 {
    pub mac: Mac,
    pub ip: Ipv6Addr,
}

impl Endpoint6 {
    pub const fn new(mac: Mac, ip: Ipv6Addr) -> Endpoint6 {
        Endpoint6 { mac, ip }
    }
}

/// The IPv6 upper-layer pseudo-header (RFC 8200 §8.1).
fn pseudo_header6(src: Ipv6Addr, dst: Ipv6Addr, next: u8, len: usize) -> [u8; 40] {
    let mut p = [0u8; 40];
    p[0..16].copy_from_slice(&src.octets());
    p[16..32].copy_from_slice(&dst.octets());
    p[32..36].copy_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes());
    p[39] = next;
    p
}

/// An IPv6 packet: the fixed header (hop limit 64, or 255 for neighbor
/// discovery), then `payload` verbatim (`next` names its first header).
pub fn ipv6_packet(
    src: Ipv6Addr,
    dst: Ipv6Addr,
    next: u8,
    hop_limit: u8,
    payload: &[u8],
) -> Vec<u8> {
    let mut h = Vec::with_capacity(40 + payload.len());
    h.extend_from_slice(&[0x60, 0, 0, 0]);
    h.extend_from_slice(
        &u16::try_from(payload.len())
            .unwrap_or(u16::MAX)
            .to_be_bytes(),
    );
    h.push(next);
    h.push(hop_limit);
    h.extend_from_slice(&src.octets());
    h.extend_from_slice(&dst.octets());
    h.extend_from_slice(payload);
    h
}

/// An Ethernet frame carrying an IPv6 packet from `from` to `to` (hop limit 64).
pub fn ipv6_frame(from: Endpoint6, to: Endpoint6, next: u8, payload: &[u8]) -> Vec<u8> {
    ethernet(
        to.mac,
        from.mac,
        ETHERTYPE_IPV6,
        &ipv6_packet(from.ip, to.ip, next, 64, payload),
    )
}

/// A TCP segment over IPv6 with its checksum.
#[allow(clippy::too_many_arguments)]
pub fn tcp_segment6(
    src: Ipv6Addr,
    dst: Ipv6Addr,
    sport: u16,
    dport: u16,
    seq: u32,
    ack: u32,
    flags: u8,
    payload: &[u8],
) -> Vec<u8> {
    let mut t = tcp_bytes(sport, dport, seq, ack, flags, payload);
    let c = checksum(&[&pseudo_header6(src, dst, proto::TCP, t.len()), &t]);
    t[16..18].copy_from_slice(&c.to_be_bytes());
    t
}

/// A UDP datagram over IPv6 with its checksum (mandatory in IPv6).
pub fn udp_datagram6(
    src: Ipv6Addr,
    dst: Ipv6Addr,
    sport: u16,
    dport: u16,
    payload: &[u8],
) -> Vec<u8> {
    let len = 8 + payload.len();
    udp_bytes(
        sport,
        dport,
        payload,
        &pseudo_header6(src, dst, proto::UDP, len),
    )
}

/// An ICMPv6 message from `src` to `dst`: type, code, the 4 bytes of message
/// body, then `data`, with its checksum (which covers the pseudo-header).
pub fn icmp6_message(
    src: Ipv6Addr,
    dst: Ipv6Addr,
    ty: u8,
    code: u8,
    rest: [u8; 4],
    data: &[u8],
) -> Vec<u8> {
    let mut m = Vec::with_capacity(8 + data.len());
    m.extend_from_slice(&[ty, code, 0, 0]);
    m.extend_from_slice(&rest);
    m.extend_from_slice(data);
    let c = checksum(&[&pseudo_header6(src, dst, proto::ICMPV6, m.len()), &m]);
    m[2..4].copy_from_slice(&c.to_be_bytes());
    m
}

/// A TCP frame over IPv6 (sequence number 1, ack 0 unless `flags` has ACK, then 1).
pub fn tcp6(
    from: Endpoint6,
    to: Endpoint6,
    sport: u16,
    dport: u16,
    flags: u8,
    payload: &[u8],
) -> Vec<u8> {
    let ack = u32::from(flags & crate::tcp_flags::ACK != 0);
    let seg = tcp_segment6(from.ip, to.ip, sport, dport, 1, ack, flags, payload);
    ipv6_frame(from, to, proto::TCP, &seg)
}

/// A UDP frame over IPv6.
pub fn udp6(from: Endpoint6, to: Endpoint6, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let dgram = udp_datagram6(from.ip, to.ip, sport, dport, payload);
    ipv6_frame(from, to, proto::UDP, &dgram)
}

/// An ICMPv6 message frame (`rest`: the 4 bytes after the checksum).
pub fn icmp6(
    from: Endpoint6,
    to: Endpoint6,
    ty: u8,
    code: u8,
    rest: [u8; 4],
    data: &[u8],
) -> Vec<u8> {
    let msg = icmp6_message(from.ip, to.ip, ty, code, rest, data);
    ipv6_frame(from, to, proto::ICMPV6, &msg)
}

/// An ICMPv6 echo request (`request`: type 128) or reply (129).
pub fn icmp6_echo(
    from: Endpoint6,
    to: Endpoint6,
    request: bool,
    id: u16,
    seq: u16,
    data: &[u8],
) -> Vec<u8> {
    let [a, b] = id.to_be_bytes();
    let [c, d] = seq.to_be_bytes();
    icmp6(
        from,
        to,
        if request { 128 } else { 129 },
        0,
        [a, b, c, d],
        data,
    )
}

/// An ICMPv6 error (`ty` 1-4) from `from` to `to` quoting the IPv6 packet of
/// `original_frame` (an untagged Ethernet frame as built here) as far as the
/// minimum MTU allows (RFC 4443 §2.4: the error fits 1280 bytes). For Packet
/// Too Big (2) the body is the MTU (1280).
pub fn icmp6_error(
    from: Endpoint6,
    to: Endpoint6,
    ty: u8,
    code: u8,
    original_frame: &[u8],
) -> Vec<u8> {
    let ip = original_frame.get(14..).unwrap_or(&[]);
    let quote = &ip[..ip.len().min(1280 - 40 - 8)];
    let rest = if ty == 2 {
        1280u32.to_be_bytes()
    } else {
        [0; 4]
    };
    icmp6(from, to, ty, code, rest, quote)
}

/// The solicited-node multicast address of `a` (`ff02::1:ffXX:XXXX`).
pub fn solicited_node(a: Ipv6Addr) -> Ipv6Addr {
    let o = a.octets();
    Ipv6Addr::new(
        0xff02,
        0,
        0,
        0,
        0,
        1,
        0xff00 | u16::from(o[13]),
        u16::from_be_bytes([o[14], o[15]]),
    )
}

/// The Ethernet multicast MAC of an IPv6 multicast address (`33:33` + its
/// low 32 bits).
pub fn multicast_mac(a: Ipv6Addr) -> Mac {
    let o = a.octets();
    [0x33, 0x33, o[12], o[13], o[14], o[15]]
}

/// A neighbor solicitation (RFC 4861 §4.3) from `from` for `target`, to the
/// target's solicited-node multicast address, with the source link-layer
/// address option; hop limit 255.
pub fn neighbor_solicitation(from: Endpoint6, target: Ipv6Addr) -> Vec<u8> {
    let dst = solicited_node(target);
    let mut body = target.octets().to_vec();
    body.extend_from_slice(&[1, 1]);
    body.extend_from_slice(&from.mac);
    let msg = icmp6_message(from.ip, dst, 135, 0, [0; 4], &body);
    ethernet(
        multicast_mac(dst),
        from.mac,
        ETHERTYPE_IPV6,
        &ipv6_packet(from.ip, dst, proto::ICMPV6, 255, &msg),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::{Parsed, parse_frame};
    use crate::{FlowKey, Frag, IcmpKind, L4, tcp_flags};

    const A: Endpoint = Endpoint::new([2, 0, 0, 0, 0, 0xa], Ipv4Addr::new(172, 31, 0, 10));
    const B: Endpoint = Endpoint::new([2, 0, 0, 0, 0, 0xb], Ipv4Addr::new(172, 31, 0, 11));

    /// A checksummed region sums to 0xffff (so its checksum over itself is 0).
    fn sums_ok(parts: &[&[u8]]) -> bool {
        checksum(parts) == 0
    }

    fn ip_checks(frame: &[u8]) {
        let ip = &frame[14..];
        let ihl = usize::from(ip[0] & 0x0f) * 4;
        assert!(sums_ok(&[&ip[..ihl]]), "IPv4 header checksum");
        let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
        assert_eq!(total, ip.len(), "total length");
        let l4 = &ip[ihl..];
        let (src, dst) = (
            Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]),
            Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]),
        );
        match ip[9] {
            proto::TCP | proto::UDP => assert!(
                sums_ok(&[&pseudo_header(src, dst, ip[9], l4.len()), l4]),
                "L4 checksum"
            ),
            proto::ICMP => assert!(sums_ok(&[l4]), "ICMP checksum"),
            _ => {}
        }
    }

    fn pkt(frame: &[u8]) -> crate::Packet {
        *parse_frame(frame).expect("parses").packet().expect("ipv4")
    }

    #[test]
    fn checksum_matches_rfc1071_example() {
        // RFC 1071 section 3 example bytes: sum 0xddf2, checksum 0x220d.
        assert_eq!(
            checksum(&[&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]]),
            0x220d
        );
        // Odd split across parts gives the same result.
        assert_eq!(
            checksum(&[&[0x00, 0x01, 0xf2], &[0x03, 0xf4, 0xf5, 0xf6, 0xf7]]),
            0x220d
        );
    }

    #[test]
    fn tcp_udp_icmp_frames_are_valid_and_parse_back() {
        let syn = tcp(A, B, 40000, 22, tcp_flags::SYN, b"");
        ip_checks(&syn);
        let p = pkt(&syn);
        assert_eq!(
            p.key,
            FlowKey {
                src: A.ip,
                dst: B.ip,
                proto: proto::TCP,
                sport: 40000,
                dport: 22
            }
        );
        assert_eq!(
            p.l4,
            L4::Tcp {
                flags: tcp_flags::SYN
            }
        );

        let u = udp(A, B, 5353, 53, b"query");
        ip_checks(&u);
        assert_eq!(
            pkt(&u).key,
            FlowKey {
                src: A.ip,
                dst: B.ip,
                proto: proto::UDP,
                sport: 5353,
                dport: 53
            }
        );

        let echo = icmp_echo(A, B, true, 77, 1, b"ping");
        ip_checks(&echo);
        assert_eq!(
            pkt(&echo).l4,
            L4::Icmp {
                ty: 8,
                code: 0,
                kind: IcmpKind::Request
            }
        );
        assert_eq!(pkt(&echo).key.sport, 77);

        let err = icmp_error(B, A, 3, 3, &u);
        ip_checks(&err);
        let inner = pkt(&u).key;
        assert_eq!(
            pkt(&err).l4,
            L4::Icmp {
                ty: 3,
                code: 3,
                kind: IcmpKind::Error { inner }
            }
        );
    }

    const A6: Endpoint6 = Endpoint6::new(
        [2, 0, 0, 0, 0, 0xa],
        Ipv6Addr::new(0xfd00, 0x5a, 0, 0, 0, 0, 0, 0xa),
    );
    const B6: Endpoint6 = Endpoint6::new(
        [2, 0, 0, 0, 0, 0xb],
        Ipv6Addr::new(0xfd00, 0x5a, 0, 0, 0, 0, 0, 0xb),
    );

    /// The IPv6 frame's L4 checksum verifies over its pseudo-header.
    fn l4_checks6(frame: &[u8]) {
        let ip = &frame[14..];
        let plen = usize::from(u16::from_be_bytes([ip[4], ip[5]]));
        assert_eq!(plen + 40, ip.len(), "payload length");
        let src = Ipv6Addr::from(<[u8; 16]>::try_from(&ip[8..24]).unwrap());
        let dst = Ipv6Addr::from(<[u8; 16]>::try_from(&ip[24..40]).unwrap());
        let l4 = &ip[40..];
        assert!(sums_ok(&[&pseudo_header6(src, dst, ip[6], l4.len()), l4]));
    }

    #[test]
    fn ipv6_frames_are_valid_and_parse_back() {
        use etherparse::{NetSlice, SlicedPacket, TransportSlice};
        let syn = tcp6(A6, B6, 40000, 22, tcp_flags::SYN, b"");
        l4_checks6(&syn);
        let p = *parse_frame(&syn).expect("parses").packet6().expect("ipv6");
        assert_eq!(
            p.key,
            FlowKey {
                src: A6.ip,
                dst: B6.ip,
                proto: proto::TCP,
                sport: 40000,
                dport: 22
            }
        );
        let s = SlicedPacket::from_ethernet(&syn).expect("etherparse parses");
        let (Some(NetSlice::Ipv6(ip)), Some(TransportSlice::Tcp(t))) = (s.net, s.transport) else {
            panic!("ipv6 tcp")
        };
        assert_eq!(
            t.calc_checksum_ipv6(ip.header().source(), ip.header().destination())
                .ok(),
            Some(t.checksum())
        );
        let u = udp6(A6, B6, 5353, 53, b"q");
        l4_checks6(&u);
        let pu = *parse_frame(&u).expect("parses").packet6().expect("ipv6");
        assert_eq!(
            (pu.key.proto, pu.key.sport, pu.key.dport),
            (proto::UDP, 5353, 53)
        );
        let echo = icmp6_echo(A6, B6, true, 77, 1, b"ping");
        l4_checks6(&echo);
        let pe = *parse_frame(&echo).expect("parses").packet6().expect("ipv6");
        assert_eq!(
            pe.l4,
            L4::Icmp {
                ty: 128,
                code: 0,
                kind: IcmpKind::Request
            }
        );
        let err = icmp6_error(B6, A6, 1, 4, &u);
        l4_checks6(&err);
        let pr = *parse_frame(&err).expect("parses").packet6().expect("ipv6");
        assert_eq!(
            pr.l4,
            L4::Icmp {
                ty: 1,
                code: 4,
                kind: IcmpKind::Error { inner: pu.key }
            }
        );
        let ns = neighbor_solicitation(A6, B6.ip);
        l4_checks6(&ns);
        assert_eq!(&ns[0..6], &[0x33, 0x33, 0xff, 0, 0, 0xb]);
        assert_eq!(ns[14 + 7], 255, "hop limit");
        let pn = *parse_frame(&ns).expect("parses").packet6().expect("ipv6");
        assert_eq!(pn.key.dst, "ff02::1:ff00:b".parse::<Ipv6Addr>().unwrap());
    }

    #[test]
    fn arp_frames_parse_back() {
        let req = arp_request(A, B.ip);
        let Ok(Parsed::Arp { eth, arp }) = parse_frame(&req) else {
            panic!("ARP")
        };
        assert_eq!((eth.dst, eth.src), (BROADCAST, A.mac));
        assert_eq!(
            (arp.op, arp.sha, arp.spa, arp.tpa),
            (ARP_REQUEST, A.mac, A.ip, B.ip)
        );
        let rep = arp_reply(B, A);
        let Ok(Parsed::Arp { eth, arp }) = parse_frame(&rep) else {
            panic!("ARP")
        };
        assert_eq!(eth.dst, A.mac);
        assert_eq!(
            (arp.op, arp.sha, arp.spa, arp.tha, arp.tpa),
            (ARP_REPLY, B.mac, B.ip, A.mac, A.ip)
        );
        assert_eq!(pad_to_min(req.clone()).len(), 60);
        assert_eq!(parse_frame(&pad_to_min(req.clone())), parse_frame(&req));
    }

    #[test]
    fn vlan_and_options() {
        let f = vlan_tag(&udp(A, B, 1, 2, b"x"), 100);
        let p = parse_frame(&f).expect("parses");
        assert_eq!(p.eth().vlan, Some(100));
        assert_eq!(p.packet().map(|p| p.key.dport), Some(2));
        let opts = IpOpts {
            options: vec![0x94, 0x04, 0, 0, 1],
            ..IpOpts::default()
        };
        let dg = udp_datagram(A.ip, B.ip, 9, 10, b"opt");
        let f = ipv4_frame(A, B, proto::UDP, &opts, &dg);
        ip_checks(&f);
        assert_eq!(f[14], 0x47, "IHL 7: 5 option bytes padded to 8");
        assert_eq!(pkt(&f).key.sport, 9);
    }

    #[test]
    fn fragments_reassemble_and_parse_as_first_and_later() {
        let payload: Vec<u8> = (0..100u8).collect();
        let whole = udp(A, B, 7000, 8000, &payload);
        let frags = fragment(&whole, 50);
        assert_eq!(frags.len(), 3, "108 L4 bytes in 48-byte pieces");
        let mut data = Vec::new();
        for (i, f) in frags.iter().enumerate() {
            ip_checks_header_only(f);
            let p = pkt(f);
            assert_eq!(p.key.src, A.ip);
            if i == 0 {
                assert_eq!(p.frag, Frag::First { id: 0x1c46 });
                assert_eq!((p.key.sport, p.key.dport), (7000, 8000));
            } else {
                assert_eq!(p.frag, Frag::Later { id: 0x1c46 });
                assert_eq!(p.l4, L4::Other);
            }
            let off = usize::from(u16::from_be_bytes([f[20], f[21]]) & 0x1fff) * 8;
            assert_eq!(off, data.len(), "offsets are contiguous");
            data.extend_from_slice(&f[34..]);
        }
        assert_eq!(data, whole[34..], "fragments hold the datagram exactly");
    }

    fn ip_checks_header_only(frame: &[u8]) {
        let ip = &frame[14..];
        let ihl = usize::from(ip[0] & 0x0f) * 4;
        assert!(sums_ok(&[&ip[..ihl]]), "IPv4 header checksum");
        assert_eq!(usize::from(u16::from_be_bytes([ip[2], ip[3]])), ip.len());
    }

    #[test]
    fn builders_agree_with_etherparse() {
        use etherparse::{NetSlice, SlicedPacket, TransportSlice};
        let f = tcp(A, B, 1234, 80, tcp_flags::SYN | tcp_flags::ACK, b"hello");
        let s = SlicedPacket::from_ethernet(&f).expect("etherparse parses");
        let Some(NetSlice::Ipv4(ip)) = s.net else {
            panic!("ipv4")
        };
        assert_eq!(ip.header().source_addr(), A.ip);
        assert_eq!(ip.header().destination_addr(), B.ip);
        let Some(TransportSlice::Tcp(t)) = s.transport else {
            panic!("tcp")
        };
        assert_eq!(
            (t.source_port(), t.destination_port(), t.syn(), t.ack()),
            (1234, 80, true, true)
        );
        assert_eq!(t.payload(), b"hello");
        assert_eq!(
            t.calc_checksum_ipv4(ip.header().source(), ip.header().destination())
                .ok(),
            Some(t.checksum())
        );
    }

    mod roundtrip {
        use super::*;
        use crate::DropReason;
        use proptest::prelude::*;

        /// What to build: the inner datagram and how to wrap it.
        #[derive(Clone, Debug)]
        enum L4Kind {
            Tcp(u8),
            Udp,
            Echo { request: bool, id: u16 },
            Other(u8),
        }

        fn l4_kind() -> impl Strategy<Value = L4Kind> {
            prop_oneof![
                any::<u8>().prop_map(L4Kind::Tcp),
                Just(L4Kind::Udp),
                (any::<bool>(), any::<u16>())
                    .prop_map(|(request, id)| L4Kind::Echo { request, id }),
                any::<u8>()
                    .prop_filter("not tcp/udp/icmp", |p| ![
                        proto::TCP,
                        proto::UDP,
                        proto::ICMP
                    ]
                    .contains(p))
                    .prop_map(L4Kind::Other),
            ]
        }

        fn endpoint() -> impl Strategy<Value = Endpoint> {
            (any::<[u8; 6]>(), any::<[u8; 4]>()).prop_map(|(m, ip)| Endpoint::new(m, ip.into()))
        }

        /// Build `kind` from `a` to `b` with IP options, returning the frame and the
        /// key/L4 facts the parser must report.
        fn build(
            kind: &L4Kind,
            a: Endpoint,
            b: Endpoint,
            ports: (u16, u16),
            opts: &IpOpts,
            data: &[u8],
        ) -> (Vec<u8>, FlowKey, L4) {
            let (proto_num, l4, key_ports, facts) = match *kind {
                L4Kind::Tcp(flags) => (
                    proto::TCP,
                    tcp_segment(a.ip, b.ip, ports.0, ports.1, 7, 9, flags, data),
                    ports,
                    L4::Tcp { flags },
                ),
                L4Kind::Udp => (
                    proto::UDP,
                    udp_datagram(a.ip, b.ip, ports.0, ports.1, data),
                    ports,
                    L4::Udp,
                ),
                L4Kind::Echo { request, id } => {
                    let [x, y] = id.to_be_bytes();
                    let ty = if request { 8 } else { 0 };
                    let kind = if request {
                        IcmpKind::Request
                    } else {
                        IcmpKind::Reply
                    };
                    (
                        proto::ICMP,
                        icmp_message(ty, 0, [x, y, 0, 1], data),
                        (id, id),
                        L4::Icmp { ty, code: 0, kind },
                    )
                }
                L4Kind::Other(p) => (p, data.to_vec(), (0, 0), L4::Other),
            };
            let frame = ipv4_frame(a, b, proto_num, opts, &l4);
            let key = FlowKey {
                src: a.ip,
                dst: b.ip,
                proto: proto_num,
                sport: key_ports.0,
                dport: key_ports.1,
            };
            (frame, key, facts)
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(1500))]

            /// Whole packets, ICMP errors quoting them, VLAN tags, IP options and
            /// fragmentation: the parser reports what the builder was told.
            #[test]
            fn built_frames_parse_to_their_facts(
                a in endpoint(), b in endpoint(), router in endpoint(),
                kind in l4_kind(), ports in any::<(u16, u16)>(),
                opt_words in 0usize..=10, data in proptest::collection::vec(any::<u8>(), 0..200),
                vlan in proptest::option::of(0u16..4096),
                wrap in 0u8..3, err_ty in prop::sample::select(vec![3u8, 4, 5, 11, 12]),
                frag_at in 8usize..64,
            ) {
                let opts = IpOpts { options: vec![1; opt_words * 4], ..IpOpts::default() };
                let (frame, key, l4) = build(&kind, a, b, ports, &opts, &data);
                let tag = |f: Vec<u8>| match vlan { Some(v) => vlan_tag(&f, v), None => f };
                match wrap {
                    0 => {
                        let p = parse_frame(&tag(frame.clone())).expect("whole packet parses");
                        prop_assert_eq!(p.eth().vlan, vlan);
                        let pk = p.packet().copied().expect("ipv4");
                        prop_assert_eq!((pk.key, pk.l4, pk.frag), (key, l4, Frag::None));
                    }
                    1 => {
                        // A router's error about the datagram, sent back to `a`.
                        let err = icmp_error(router, a, err_ty, 1, &frame);
                        ip_checks(&err);
                        let pk = *parse_frame(&tag(err)).expect("error parses").packet().expect("ipv4");
                        prop_assert_eq!(pk.key, FlowKey { src: router.ip, dst: a.ip, proto: proto::ICMP, sport: 0, dport: 0 });
                        prop_assert_eq!(pk.l4, L4::Icmp { ty: err_ty, code: 1, kind: IcmpKind::Error { inner: key } });
                    }
                    _ => {
                        let frags = fragment(&frame, frag_at);
                        let l4_len = frame.len() - 14 - 20 - opts.options.len();
                        let header_fits = match kind {
                            L4Kind::Tcp(_) => frag_at / 8 * 8 >= 20,
                            L4Kind::Udp | L4Kind::Echo { .. } => true,
                            L4Kind::Other(_) => true,
                        };
                        for (i, f) in frags.iter().enumerate() {
                            let r = parse_frame(&tag(f.clone()));
                            let last = i + 1 == frags.len();
                            if i == 0 {
                                if !header_fits && !last {
                                    prop_assert_eq!(r, Err(DropReason::TinyFragment));
                                    continue;
                                }
                                let pk = *r.expect("first fragment").packet().expect("ipv4");
                                prop_assert_eq!(pk.key, key);
                                let want = if last { Frag::None } else { Frag::First { id: u32::from(opts.id) } };
                                prop_assert_eq!(pk.frag, want);
                            } else if kind_is_tcp(&kind) && i == 1 && frag_at / 8 == 1 {
                                prop_assert_eq!(r, Err(DropReason::TinyFragment), "RFC 1858");
                            } else {
                                let pk = *r.expect("later fragment").packet().expect("ipv4");
                                prop_assert_eq!(pk.frag, Frag::Later { id: u32::from(opts.id) });
                                prop_assert_eq!((pk.key.sport, pk.key.dport, pk.l4), (0, 0, L4::Other));
                            }
                        }
                        prop_assert_eq!(frags.len(), l4_len.div_ceil(frag_at / 8 * 8).max(1));
                    }
                }
            }
        }

        fn kind_is_tcp(k: &L4Kind) -> bool {
            matches!(k, L4Kind::Tcp(_))
        }
    }
}
