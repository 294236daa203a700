//! Zero-copy frame parsing: untrusted bytes → [`Parsed`] (Ethernet + ARP, IPv4 or
//! IPv6 facts) or a [`DropReason`].
//!
//! Contract:
//! * [`parse_frame`] never panics, never allocates and reads each header once. Every
//!   header is taken as a fixed-size array (`&[u8; N]`) after one length check, so
//!   the field reads that follow are statically in bounds.
//! * Ethernet II with at most one 802.1Q tag (`0x8100`); the tag's VID is reported
//!   in [`Eth::vlan`] and [`Eth::ethertype`] is the inner type. Anything that is not
//!   ARP, IPv4 or IPv6 after that (QinQ, a second tag, ...) is
//!   [`DropReason::UnsupportedEthertype`].
//! * IPv6 (EtherType `0x86DD`) is parsed by [`mod@ipv6`] into [`Parsed::Ipv6`]
//!   with the same conventions (ports, ICMPv6 queries and errors, fragments);
//!   its contract (extension-header walk and its bound) is in that module.
//! * ARP must be Ethernet/IPv4 (htype 1, ptype 0x0800, hlen 6, plen 4) with opcode
//!   request (1) or reply (2), else [`DropReason::MalformedArp`].
//! * IPv4: version 4, IHL ≥ 5 (options are skipped), total length ≥ IHL and within
//!   the frame. Bytes after the total length (Ethernet padding of short frames) are
//!   ignored: every offset and L4 length is computed within the total length.
//! * Fragments follow the [`Frag`] contract: a non-first fragment has ports 0 and
//!   [`L4::Other`]; a first fragment must hold its complete L4 header (TCP: the
//!   whole data-offset header, UDP 8, ICMP 8) or it is
//!   [`DropReason::TinyFragment`], and a TCP fragment at offset 8 bytes is
//!   [`DropReason::TinyFragment`] (RFC 1858 overlapping-header attack). The same
//!   shortage in an unfragmented packet is [`DropReason::TruncatedL4`].
//! * TCP: a data offset below 5 words cannot be a TCP header; there is no
//!   separate "malformed L4" reason, so it counts as [`DropReason::TruncatedL4`]
//!   (the header announces fewer bytes than a TCP header has).
//! * ICMP: queries (echo 8/0, timestamp 13/14, information 15/16, address mask
//!   17/18) carry the identifier in both ports ([`FlowKey`] convention) and are
//!   [`IcmpKind::Request`]/[`IcmpKind::Reply`]. Errors (3, 4, 5, 11, 12) are
//!   [`IcmpKind::Error`] with the embedded original datagram's key: its IPv4 header
//!   (with options) and first 8 bytes of L4 must be present (TCP/UDP/ICMP; other
//!   protocols need only the IP header), else [`DropReason::TruncatedL4`] — an
//!   error that cannot be related to a flow must not reach the rules. The embedded
//!   header is only a quote: its total length is not checked against what follows
//!   (routers quote a prefix), but version and IHL are. An embedded non-first
//!   fragment has ports 0. Other ICMP types are [`IcmpKind::Other`].
//! * Other IP protocols: ports 0, [`L4::Other`], payload at the L4 offset.
//!
//! Offsets in [`Parsed::Ipv4`] are from the start of the frame (so they include
//! the VLAN tag when present) and fit `u16` because the IPv4 total length does.

pub mod ipv6;

use std::net::Ipv4Addr;

pub use ipv6::{IPV6_HDR_LEN, IPV6_MAX_EXT_HEADERS};

use crate::{DropReason, FlowKey, Frag, IcmpKind, L4, Mac, Packet, Packet6, proto};

/// EtherType of IPv4.
pub const ETHERTYPE_IPV4: u16 = 0x0800;
/// EtherType of ARP.
pub const ETHERTYPE_ARP: u16 = 0x0806;
/// EtherType of IPv6.
pub const ETHERTYPE_IPV6: u16 = 0x86dd;
/// EtherType (TPID) of an 802.1Q tag.
pub const ETHERTYPE_VLAN: u16 = 0x8100;

/// ARP opcode of a request.
pub const ARP_REQUEST: u16 = 1;
/// ARP opcode of a reply.
pub const ARP_REPLY: u16 = 2;

/// Length of an untagged Ethernet header.
pub const ETH_HDR_LEN: usize = 14;
/// Length of an 802.1Q tag.
pub const VLAN_TAG_LEN: usize = 4;
/// Length of an Ethernet/IPv4 ARP packet.
pub const ARP_LEN: usize = 28;
/// Length of an IPv4 header without options.
pub const IPV4_MIN_HDR_LEN: usize = 20;
/// Length of a TCP header without options.
pub const TCP_MIN_HDR_LEN: usize = 20;
/// Length of a UDP header.
pub const UDP_HDR_LEN: usize = 8;
/// Length of an ICMP header (type, code, checksum, 4 bytes rest-of-header).
pub const ICMP_HDR_LEN: usize = 8;

/// IPv4 "more fragments" flag in the flags/offset field.
const IPV4_MF: u16 = 0x2000;
/// IPv4 fragment offset mask (in 8-byte units).
const IPV4_OFFSET_MASK: u16 = 0x1fff;

/// The Ethernet header of a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Eth {
    pub dst: Mac,
    pub src: Mac,
    /// VLAN id (12 bits) of an 802.1Q tag, if the frame carried one.
    pub vlan: Option<u16>,
    /// The EtherType after the optional tag.
    pub ethertype: u16,
}

impl Eth {
    /// Length of this Ethernet header in the frame (14, or 18 with a tag).
    #[inline]
    pub fn header_len(&self) -> usize {
        if self.vlan.is_some() {
            ETH_HDR_LEN + VLAN_TAG_LEN
        } else {
            ETH_HDR_LEN
        }
    }

    /// Destination is broadcast or multicast (group bit set).
    #[inline]
    pub fn is_multicast_dst(&self) -> bool {
        self.dst[0] & 1 == 1
    }

    /// Destination is `ff:ff:ff:ff:ff:ff`.
    #[inline]
    pub fn is_broadcast_dst(&self) -> bool {
        self.dst == [0xff; 6]
    }
}

/// An Ethernet/IPv4 ARP packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Arp {
    /// [`ARP_REQUEST`] or [`ARP_REPLY`].
    pub op: u16,
    /// Sender hardware address.
    pub sha: Mac,
    /// Sender protocol address.
    pub spa: Ipv4Addr,
    /// Target hardware address.
    pub tha: Mac,
    /// Target protocol address.
    pub tpa: Ipv4Addr,
}

/// A parsed frame. `Copy` and small: it holds facts and offsets, not the bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Parsed {
    Arp {
        eth: Eth,
        arp: Arp,
    },
    Ipv4 {
        eth: Eth,
        pkt: Packet,
        /// Offset of the IPv4 header in the frame.
        l3_offset: u16,
        /// Offset of the L4 header (IPv4 header + options skipped).
        l4_offset: u16,
        /// Offset of the L4 payload (after the TCP/UDP/ICMP header; equal to
        /// `l4_offset` for other protocols and non-first fragments).
        payload_offset: u16,
        /// The IPv4 total length: the packet ends at `l3_offset + ip_len`;
        /// frame bytes after that are Ethernet padding.
        ip_len: u16,
    },
    /// An IPv6 packet (see [`mod@ipv6`]).
    Ipv6 {
        eth: Eth,
        pkt: Packet6,
        /// Offset of the IPv6 header in the frame.
        l3_offset: u16,
        /// Offset of the upper-layer header: after the fixed header and every
        /// extension header walked (for a non-first fragment: after its fragment
        /// header).
        l4_offset: u16,
        /// Offset of the L4 payload (after the TCP/UDP/ICMPv6 header; equal to
        /// `l4_offset` for other protocols and non-first fragments).
        payload_offset: u16,
        /// 40 + the payload length: the packet ends at `l3_offset + ip_len`;
        /// frame bytes after that are Ethernet padding.
        ip_len: u16,
    },
}

impl Parsed {
    /// The Ethernet header.
    #[inline]
    pub fn eth(&self) -> &Eth {
        match self {
            Parsed::Arp { eth, .. } | Parsed::Ipv4 { eth, .. } | Parsed::Ipv6 { eth, .. } => eth,
        }
    }

    /// The IPv4 packet facts, if this is IPv4 (`None` for IPv6: see
    /// [`Parsed::packet6`]).
    #[inline]
    pub fn packet(&self) -> Option<&Packet> {
        match self {
            Parsed::Ipv4 { pkt, .. } => Some(pkt),
            Parsed::Arp { .. } | Parsed::Ipv6 { .. } => None,
        }
    }

    /// The IPv6 packet facts, if this is IPv6.
    #[inline]
    pub fn packet6(&self) -> Option<&Packet6> {
        match self {
            Parsed::Ipv6 { pkt, .. } => Some(pkt),
            Parsed::Arp { .. } | Parsed::Ipv4 { .. } => None,
        }
    }

    /// The ARP packet, if this is ARP.
    #[inline]
    pub fn arp(&self) -> Option<&Arp> {
        match self {
            Parsed::Arp { arp, .. } => Some(arp),
            Parsed::Ipv4 { .. } | Parsed::Ipv6 { .. } => None,
        }
    }
}

/// The first `N` bytes of `b` as an array, if there are that many.
#[inline(always)]
fn take<const N: usize>(b: &[u8]) -> Option<&[u8; N]> {
    b.first_chunk::<N>()
}

/// `N` bytes of a header at a constant offset. Called on fixed-size header arrays
/// with constant offsets, so the range check folds away; out of range (a bug)
/// yields zeros rather than a panic.
#[inline(always)]
fn field<const N: usize>(h: &[u8], at: usize) -> [u8; N] {
    h.get(at..)
        .and_then(|t| t.first_chunk::<N>())
        .copied()
        .unwrap_or([0; N])
}

#[inline(always)]
fn be16(b: [u8; 2]) -> u16 {
    u16::from_be_bytes(b)
}

/// Parse one Ethernet frame. See the module docs for the exact rules.
pub fn parse_frame(frame: &[u8]) -> Result<Parsed, DropReason> {
    let h: &[u8; ETH_HDR_LEN] = take(frame).ok_or(DropReason::TruncatedEthernet)?;
    let dst: Mac = field(h, 0);
    let src: Mac = field(h, 6);
    let mut ethertype = be16([h[12], h[13]]);
    let mut vlan = None;
    let mut l3 = ETH_HDR_LEN;
    if ethertype == ETHERTYPE_VLAN {
        let t: &[u8; ETH_HDR_LEN + VLAN_TAG_LEN] = take(frame).ok_or(DropReason::TruncatedVlan)?;
        vlan = Some(be16([t[14], t[15]]) & 0x0fff);
        ethertype = be16([t[16], t[17]]);
        l3 += VLAN_TAG_LEN;
    }
    let eth = Eth {
        dst,
        src,
        vlan,
        ethertype,
    };
    // `l3 <= frame.len()` holds: both header arrays above were taken from `frame`.
    let rest = frame.get(l3..).unwrap_or(&[]);
    match ethertype {
        ETHERTYPE_ARP => Ok(Parsed::Arp {
            eth,
            arp: parse_arp(rest)?,
        }),
        ETHERTYPE_IPV4 => parse_ipv4(eth, l3, rest),
        ETHERTYPE_IPV6 => ipv6::parse_ipv6(eth, l3, rest),
        _ => Err(DropReason::UnsupportedEthertype),
    }
}

fn parse_arp(b: &[u8]) -> Result<Arp, DropReason> {
    let a: &[u8; ARP_LEN] = take(b).ok_or(DropReason::TruncatedArp)?;
    let htype = be16([a[0], a[1]]);
    let ptype = be16([a[2], a[3]]);
    let (hlen, plen) = (a[4], a[5]);
    let op = be16([a[6], a[7]]);
    if htype != 1 || ptype != ETHERTYPE_IPV4 || hlen != 6 || plen != 4 {
        return Err(DropReason::MalformedArp);
    }
    if op != ARP_REQUEST && op != ARP_REPLY {
        return Err(DropReason::MalformedArp);
    }
    Ok(Arp {
        op,
        sha: field(a, 8),
        spa: Ipv4Addr::from(field::<4>(a, 14)),
        tha: field(a, 18),
        tpa: Ipv4Addr::from(field::<4>(a, 24)),
    })
}

/// The fixed IPv4 header facts shared by the outer packet and ICMP quotes.
struct Ip4 {
    ihl: usize,
    total_len: usize,
    proto: u8,
    id: u16,
    /// Fragment offset in 8-byte units.
    frag_off: u16,
    more_frags: bool,
    src: Ipv4Addr,
    dst: Ipv4Addr,
}

/// Read the fixed IPv4 header and check version and IHL against `b`.
/// `truncated` is the reason to report when `b` is shorter than the header.
fn ip4_header(b: &[u8], truncated: DropReason, malformed: DropReason) -> Result<Ip4, DropReason> {
    let h: &[u8; IPV4_MIN_HDR_LEN] = take(b).ok_or(truncated)?;
    if h[0] >> 4 != 4 {
        return Err(malformed);
    }
    let ihl = usize::from(h[0] & 0x0f) * 4;
    if ihl < IPV4_MIN_HDR_LEN {
        return Err(malformed);
    }
    if ihl > b.len() {
        return Err(truncated);
    }
    let fo = be16([h[6], h[7]]);
    Ok(Ip4 {
        ihl,
        total_len: usize::from(be16([h[2], h[3]])),
        proto: h[9],
        id: be16([h[4], h[5]]),
        frag_off: fo & IPV4_OFFSET_MASK,
        more_frags: fo & IPV4_MF != 0,
        src: Ipv4Addr::from(field::<4>(h, 12)),
        dst: Ipv4Addr::from(field::<4>(h, 16)),
    })
}

fn parse_ipv4(eth: Eth, l3: usize, b: &[u8]) -> Result<Parsed, DropReason> {
    let ip = ip4_header(b, DropReason::TruncatedIpv4, DropReason::MalformedIpv4)?;
    if ip.total_len < ip.ihl {
        return Err(DropReason::MalformedIpv4);
    }
    // Trailing bytes beyond the total length are Ethernet padding: cut them off.
    let b = b.get(..ip.total_len).ok_or(DropReason::TruncatedIpv4)?;
    let l4_bytes = b.get(ip.ihl..).unwrap_or(&[]);

    let frag = match (ip.frag_off, ip.more_frags) {
        (0, false) => Frag::None,
        (0, true) => Frag::First {
            id: u32::from(ip.id),
        },
        _ => Frag::Later {
            id: u32::from(ip.id),
        },
    };
    let mut key = FlowKey {
        src: ip.src,
        dst: ip.dst,
        proto: ip.proto,
        sport: 0,
        dport: 0,
    };
    let l4_offset = l3 + ip.ihl;

    let (l4, l4_hdr_len) = match frag {
        Frag::Later { .. } => {
            if ip.proto == proto::TCP && ip.frag_off == 1 {
                return Err(DropReason::TinyFragment);
            }
            (L4::Other, 0)
        }
        Frag::None | Frag::First { .. } => {
            let short = if frag == Frag::None {
                DropReason::TruncatedL4
            } else {
                DropReason::TinyFragment
            };
            parse_l4(ip.proto, l4_bytes, short, &mut key)?
        }
    };

    // Offsets are at most 18 (Ethernet + tag) + 60 (IHL) + 60 (TCP data offset),
    // and the total length came from a u16: the conversions cannot truncate.
    let off = |x: usize| u16::try_from(x).unwrap_or(u16::MAX);
    Ok(Parsed::Ipv4 {
        eth,
        pkt: Packet { key, l4, frag },
        l3_offset: off(l3),
        l4_offset: off(l4_offset),
        payload_offset: off(l4_offset + l4_hdr_len),
        ip_len: off(ip.total_len),
    })
}

/// Parse the L4 header at the start of `b` (whole packet or first fragment),
/// filling the ports of `key`. Returns the L4 facts and the L4 header length.
fn parse_l4(
    proto_num: u8,
    b: &[u8],
    short: DropReason,
    key: &mut FlowKey,
) -> Result<(L4, usize), DropReason> {
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
            Ok((L4::Udp, UDP_HDR_LEN))
        }
        proto::ICMP => {
            let c: &[u8; ICMP_HDR_LEN] = take(b).ok_or(short)?;
            let (ty, code) = (c[0], c[1]);
            let kind = match icmp_query(ty) {
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
                None if icmp_is_error(ty) => {
                    let quote = b.get(ICMP_HDR_LEN..).unwrap_or(&[]);
                    IcmpKind::Error {
                        inner: parse_quote(quote)?,
                    }
                }
                None => IcmpKind::Other,
            };
            Ok((L4::Icmp { ty, code, kind }, ICMP_HDR_LEN))
        }
        _ => Ok((L4::Other, 0)),
    }
}

/// The TCP header at the start of `b`: `(flags, header length, sport, dport)`.
/// `short` when `b` cannot hold it; a data offset below 5 words is
/// [`DropReason::TruncatedL4`] (see the module docs). Shared by both families.
#[inline(always)]
fn tcp_header(b: &[u8], short: DropReason) -> Result<(u8, usize, u16, u16), DropReason> {
    let t: &[u8; TCP_MIN_HDR_LEN] = take(b).ok_or(short)?;
    let doff = usize::from(t[12] >> 4) * 4;
    if doff < TCP_MIN_HDR_LEN {
        return Err(DropReason::TruncatedL4);
    }
    if doff > b.len() {
        return Err(short);
    }
    Ok((t[13], doff, be16([t[0], t[1]]), be16([t[2], t[3]])))
}

/// The UDP header at the start of `b`: `(sport, dport)`, or `short`.
#[inline(always)]
fn udp_header(b: &[u8], short: DropReason) -> Result<(u16, u16), DropReason> {
    let u: &[u8; UDP_HDR_LEN] = take(b).ok_or(short)?;
    Ok((be16([u[0], u[1]]), be16([u[2], u[3]])))
}

/// `Some(true)` for an ICMP query request type, `Some(false)` for a query reply,
/// `None` otherwise.
#[inline]
pub fn icmp_query(ty: u8) -> Option<bool> {
    match ty {
        8 | 13 | 15 | 17 => Some(true),
        0 | 14 | 16 | 18 => Some(false),
        _ => None,
    }
}

/// Whether an ICMP type is an error message that quotes the datagram it is about:
/// destination unreachable (3), source quench (4), redirect (5), time exceeded
/// (11), parameter problem (12).
#[inline]
pub fn icmp_is_error(ty: u8) -> bool {
    matches!(ty, 3 | 4 | 5 | 11 | 12)
}

/// Parse the original datagram quoted by an ICMP error into its flow key (as it
/// was sent). Every shortage or inconsistency is [`DropReason::TruncatedL4`].
fn parse_quote(b: &[u8]) -> Result<FlowKey, DropReason> {
    let bad = DropReason::TruncatedL4;
    let ip = ip4_header(b, bad, bad)?;
    let mut inner = FlowKey {
        src: ip.src,
        dst: ip.dst,
        proto: ip.proto,
        sport: 0,
        dport: 0,
    };
    if ip.frag_off != 0 {
        // A quoted non-first fragment: its bytes after the IP header are not an L4
        // header, so it is keyed like one (ports 0).
        return Ok(inner);
    }
    let l4 = b.get(ip.ihl..).unwrap_or(&[]);
    match ip.proto {
        proto::TCP | proto::UDP => {
            let p: &[u8; 8] = take(l4).ok_or(bad)?;
            inner.sport = be16([p[0], p[1]]);
            inner.dport = be16([p[2], p[3]]);
        }
        proto::ICMP => {
            let c: &[u8; ICMP_HDR_LEN] = take(l4).ok_or(bad)?;
            if icmp_query(c[0]).is_some() {
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
mod tests {
    use super::*;
    use crate::tcp_flags;

    // Real frames (checksums valid), written out as hex. Addresses: instance A is
    // 172.31.0.2 / 02:00:ac:1f:00:02, instance B is 172.31.0.3 / 02:00:ac:1f:00:03.

    /// ARP who-has 172.31.0.3 tell 172.31.0.2, padded to 60 bytes.
    const ARP_WHO_HAS: &str = concat!(
        "ffffffffffff0200ac1f0002080600010800060400010200ac1f0002ac1f0002",
        "000000000000ac1f0003000000000000000000000000000000000000",
    );
    /// TCP SYN 172.31.0.2:40000 → 172.31.0.3:22 with MSS/SACK/TS/WS options (doff 10).
    const TCP_SYN: &str = concat!(
        "0200ac1f00030200ac1f000208004500003c1c4640004006c632ac1f0002ac1f",
        "00039c4000165eed000100000000a002faf017450000020405b40402080a0001",
        "e2400000000001030307",
    );
    /// DNS query for example.com A, 172.31.0.2:53000 → 8.8.8.8:53.
    const UDP_DNS: &str = concat!(
        "0200ac1f00030200ac1f00020800450000391c4600004011a23dac1f00020808",
        "0808cf0800350025f8f9abcd01000001000000000000076578616d706c650363",
        "6f6d0000010001",
    );
    /// ICMP echo request id 0x1234 seq 1, 172.31.0.2 → 172.31.0.3, padded.
    const ICMP_ECHO: &str = concat!(
        "0200ac1f00030200ac1f000208004500002c1c4640004001c647ac1f0002ac1f",
        "0003080003d21234000173677377697463682d70696e672d30310000",
    );
    /// ICMP port unreachable 172.31.0.3 → 172.31.0.2 quoting the UDP datagram
    /// 172.31.0.2:53000 → 172.31.0.3:9999 "hello".
    const ICMP_PORT_UNREACH: &str = concat!(
        "0200ac1f00020200ac1f000308004500003d1c46000040010637ac1f0003ac1f",
        "00020303555f00000000450000210101000040112188ac1f0002ac1f0003cf08",
        "270f000d6da668656c6c6f",
    );
    /// 802.1Q (PCP 1, VID 100) UDP 172.31.0.2:5000 → 172.31.0.3:6000, padded.
    const VLAN_UDP: &str = concat!(
        "0200ac1f00030200ac1f0002810020640800450000201c46000040110644ac1f",
        "0002ac1f000313881770000ca4bf766c616e00000000000000000000",
    );
    /// First fragment (MF, offset 0, id 0x4242) of UDP 7000 → 8000, 24 L4 bytes.
    const FRAG_FIRST: &str = concat!(
        "0200ac1f00030200ac1f000208004500002c424220004011c03bac1f0002ac1f",
        "00031b581f4000201a68303132333435363738396162636465660000",
    );
    /// Last fragment (offset 3 units = 24 bytes, id 0x4242) of the same datagram.
    const FRAG_LATER: &str = concat!(
        "0200ac1f00030200ac1f000208004500001c424200034011e048ac1f0002ac1f",
        "0003465241474d454e54000000000000000000000000000000000000",
    );
    /// IPv4 with a Router Alert option (IHL 6), UDP 1234 → 5678 "opt", padded.
    const IPV4_OPTIONS: &str = concat!(
        "0200ac1f00030200ac1f00020800460000231c4600004011713cac1f0002ac1f",
        "00039404000004d2162e000ba9236f70740000000000000000000000",
    );

    const ALL_FRAMES: [&str; 9] = [
        ARP_WHO_HAS,
        TCP_SYN,
        UDP_DNS,
        ICMP_ECHO,
        ICMP_PORT_UNREACH,
        VLAN_UDP,
        FRAG_FIRST,
        FRAG_LATER,
        IPV4_OPTIONS,
    ];

    const MAC_A: Mac = [0x02, 0x00, 0xac, 0x1f, 0x00, 0x02];
    const MAC_B: Mac = [0x02, 0x00, 0xac, 0x1f, 0x00, 0x03];
    const IP_A: Ipv4Addr = Ipv4Addr::new(172, 31, 0, 2);
    const IP_B: Ipv4Addr = Ipv4Addr::new(172, 31, 0, 3);

    fn hex(s: &str) -> Vec<u8> {
        assert_eq!(s.len() % 2, 0, "odd hex length");
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex digit"))
            .collect()
    }

    fn ipv4(s: &str) -> (Eth, Packet, u16, u16, u16, u16) {
        match parse_frame(&hex(s)) {
            Ok(Parsed::Ipv4 {
                eth,
                pkt,
                l3_offset,
                l4_offset,
                payload_offset,
                ip_len,
            }) => (eth, pkt, l3_offset, l4_offset, payload_offset, ip_len),
            other => panic!("expected IPv4, got {other:?}"),
        }
    }

    fn key(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, sport: u16, dport: u16) -> FlowKey {
        FlowKey {
            src,
            dst,
            proto,
            sport,
            dport,
        }
    }

    #[test]
    fn arp_request() {
        let p = parse_frame(&hex(ARP_WHO_HAS)).expect("ARP parses");
        let eth = Eth {
            dst: [0xff; 6],
            src: MAC_A,
            vlan: None,
            ethertype: ETHERTYPE_ARP,
        };
        let arp = Arp {
            op: ARP_REQUEST,
            sha: MAC_A,
            spa: IP_A,
            tha: [0; 6],
            tpa: IP_B,
        };
        assert_eq!(p, Parsed::Arp { eth, arp });
        assert!(p.eth().is_broadcast_dst() && p.eth().is_multicast_dst());
        assert_eq!(p.arp(), Some(&arp));
        assert_eq!(p.packet(), None);
    }

    #[test]
    fn tcp_syn_with_options() {
        let (eth, pkt, l3, l4, pay, len) = ipv4(TCP_SYN);
        assert_eq!(
            eth,
            Eth {
                dst: MAC_B,
                src: MAC_A,
                vlan: None,
                ethertype: ETHERTYPE_IPV4
            }
        );
        assert_eq!(pkt.key, key(IP_A, IP_B, proto::TCP, 40000, 22));
        assert_eq!(
            pkt.l4,
            L4::Tcp {
                flags: tcp_flags::SYN
            }
        );
        assert_eq!(pkt.frag, Frag::None, "DF alone is not fragmentation");
        assert_eq!(
            (l3, l4, pay, len),
            (14, 34, 74, 60),
            "40-byte TCP header skipped"
        );
    }

    #[test]
    fn udp_dns_query() {
        let frame = hex(UDP_DNS);
        let (_, pkt, l3, l4, pay, len) = ipv4(UDP_DNS);
        assert_eq!(
            pkt.key,
            key(IP_A, Ipv4Addr::new(8, 8, 8, 8), proto::UDP, 53000, 53)
        );
        assert_eq!(pkt.l4, L4::Udp);
        assert_eq!((l3, l4, pay, len), (14, 34, 42, 57));
        // The payload is the DNS message: transaction id 0xabcd.
        assert_eq!(
            &frame[usize::from(pay)..usize::from(pay) + 2],
            &[0xab, 0xcd]
        );
        assert_eq!(usize::from(l3 + len), frame.len());
    }

    #[test]
    fn icmp_echo_request_uses_identifier_as_ports() {
        let (_, pkt, _, l4, pay, len) = ipv4(ICMP_ECHO);
        assert_eq!(pkt.key, key(IP_A, IP_B, proto::ICMP, 0x1234, 0x1234));
        assert_eq!(
            pkt.l4,
            L4::Icmp {
                ty: 8,
                code: 0,
                kind: IcmpKind::Request
            }
        );
        assert_eq!((l4, pay, len), (34, 42, 44));
    }

    #[test]
    fn icmp_echo_reply_key_is_reverse_of_request() {
        let mut f = hex(ICMP_ECHO);
        // Swap addresses and make it an echo reply (type 0).
        let (s, d) = (f[26..30].to_vec(), f[30..34].to_vec());
        f[26..30].copy_from_slice(&d);
        f[30..34].copy_from_slice(&s);
        f[34] = 0;
        let req = ipv4(ICMP_ECHO).1;
        let rep = parse_frame(&f)
            .expect("reply parses")
            .packet()
            .copied()
            .expect("ipv4");
        assert_eq!(
            rep.l4,
            L4::Icmp {
                ty: 0,
                code: 0,
                kind: IcmpKind::Reply
            }
        );
        assert_eq!(rep.key, req.key.reversed());
    }

    #[test]
    fn icmp_port_unreachable_quotes_udp_flow() {
        let (eth, pkt, ..) = ipv4(ICMP_PORT_UNREACH);
        assert_eq!((eth.src, eth.dst), (MAC_B, MAC_A));
        assert_eq!(
            pkt.key,
            key(IP_B, IP_A, proto::ICMP, 0, 0),
            "errors carry no ports"
        );
        let inner = key(IP_A, IP_B, proto::UDP, 53000, 9999);
        assert_eq!(
            pkt.l4,
            L4::Icmp {
                ty: 3,
                code: 3,
                kind: IcmpKind::Error { inner }
            }
        );
    }

    #[test]
    fn icmp_error_quoting_an_echo_uses_identifier() {
        // Time exceeded (11/0) from a router 10.0.0.1 quoting our echo request.
        let echo = hex(ICMP_ECHO);
        let quote = &echo[14..14 + 28];
        let mut f = hex(ICMP_PORT_UNREACH);
        f.truncate(14 + 20 + 8);
        f.extend_from_slice(quote);
        let total = u16::try_from(f.len() - 14).expect("small");
        f[16..18].copy_from_slice(&total.to_be_bytes());
        f[26..30].copy_from_slice(&[10, 0, 0, 1]);
        f[34] = 11;
        f[35] = 0;
        let pkt = *parse_frame(&f).expect("parses").packet().expect("ipv4");
        let inner = key(IP_A, IP_B, proto::ICMP, 0x1234, 0x1234);
        assert_eq!(
            pkt.l4,
            L4::Icmp {
                ty: 11,
                code: 0,
                kind: IcmpKind::Error { inner }
            }
        );
    }

    #[test]
    fn icmp_other_types_are_other() {
        let mut f = hex(ICMP_ECHO);
        f[34] = 9; // router advertisement
        let pkt = *parse_frame(&f).expect("parses").packet().expect("ipv4");
        assert_eq!(pkt.key.sport, 0);
        assert_eq!(pkt.key.dport, 0);
        assert_eq!(
            pkt.l4,
            L4::Icmp {
                ty: 9,
                code: 0,
                kind: IcmpKind::Other
            }
        );
    }

    #[test]
    fn icmp_query_types() {
        for (ty, req) in [
            (8, true),
            (0, false),
            (13, true),
            (14, false),
            (15, true),
            (16, false),
            (17, true),
            (18, false),
        ] {
            let mut f = hex(ICMP_ECHO);
            f[34] = ty;
            let pkt = *parse_frame(&f).expect("parses").packet().expect("ipv4");
            let kind = if req {
                IcmpKind::Request
            } else {
                IcmpKind::Reply
            };
            assert_eq!(pkt.l4, L4::Icmp { ty, code: 0, kind }, "type {ty}");
            assert_eq!(
                (pkt.key.sport, pkt.key.dport),
                (0x1234, 0x1234),
                "type {ty}"
            );
        }
        for ty in [3, 4, 5, 11, 12] {
            assert!(icmp_is_error(ty));
            assert_eq!(icmp_query(ty), None);
        }
    }

    #[test]
    fn vlan_tagged_udp() {
        let (eth, pkt, l3, l4, pay, len) = ipv4(VLAN_UDP);
        assert_eq!(
            eth,
            Eth {
                dst: MAC_B,
                src: MAC_A,
                vlan: Some(100),
                ethertype: ETHERTYPE_IPV4
            }
        );
        assert_eq!(eth.header_len(), 18);
        assert_eq!(pkt.key, key(IP_A, IP_B, proto::UDP, 5000, 6000));
        assert_eq!((l3, l4, pay, len), (18, 38, 46, 32));
    }

    #[test]
    fn first_fragment_is_judged_by_its_l4_header() {
        let (_, pkt, ..) = ipv4(FRAG_FIRST);
        assert_eq!(pkt.key, key(IP_A, IP_B, proto::UDP, 7000, 8000));
        assert_eq!(pkt.l4, L4::Udp);
        assert_eq!(pkt.frag, Frag::First { id: 0x4242 });
    }

    #[test]
    fn later_fragment_has_no_ports() {
        let (_, pkt, _, l4, pay, len) = ipv4(FRAG_LATER);
        assert_eq!(pkt.key, key(IP_A, IP_B, proto::UDP, 0, 0));
        assert_eq!(pkt.l4, L4::Other);
        assert_eq!(pkt.frag, Frag::Later { id: 0x4242 });
        assert_eq!(
            (l4, pay, len),
            (34, 34, 28),
            "no L4 header in a later fragment"
        );
    }

    #[test]
    fn ipv4_options_are_skipped() {
        let frame = hex(IPV4_OPTIONS);
        let (_, pkt, l3, l4, pay, len) = ipv4(IPV4_OPTIONS);
        assert_eq!(pkt.key, key(IP_A, IP_B, proto::UDP, 1234, 5678));
        assert_eq!((l3, l4, pay, len), (14, 38, 46, 35));
        assert_eq!(&frame[usize::from(pay)..usize::from(l3 + len)], b"opt");
    }

    #[test]
    fn other_ip_protocol_has_no_ports() {
        let mut f = hex(UDP_DNS);
        f[23] = 47; // GRE
        let (_, pkt, _, l4, pay, _) = match parse_frame(&f) {
            Ok(Parsed::Ipv4 {
                eth,
                pkt,
                l3_offset,
                l4_offset,
                payload_offset,
                ip_len,
            }) => (eth, pkt, l3_offset, l4_offset, payload_offset, ip_len),
            other => panic!("{other:?}"),
        };
        assert_eq!(pkt.key, key(IP_A, Ipv4Addr::new(8, 8, 8, 8), 47, 0, 0));
        assert_eq!(pkt.l4, L4::Other);
        assert_eq!(l4, pay);
    }

    #[test]
    fn padding_beyond_total_length_is_ignored() {
        // ICMP_ECHO carries 2 bytes of padding; add 100 more of garbage.
        let mut f = hex(ICMP_ECHO);
        let base = parse_frame(&f).expect("parses");
        f.extend_from_slice(&[0xee; 100]);
        assert_eq!(parse_frame(&f), Ok(base));
    }

    // ---- one test per parse DropReason ----

    #[test]
    fn drop_truncated_ethernet() {
        assert_eq!(parse_frame(&[]), Err(DropReason::TruncatedEthernet));
        assert_eq!(
            parse_frame(&hex(TCP_SYN)[..13]),
            Err(DropReason::TruncatedEthernet)
        );
    }

    #[test]
    fn drop_truncated_vlan() {
        for n in 14..18 {
            assert_eq!(
                parse_frame(&hex(VLAN_UDP)[..n]),
                Err(DropReason::TruncatedVlan),
                "len {n}"
            );
        }
    }

    #[test]
    fn drop_unsupported_ethertype() {
        let mut f = hex(TCP_SYN);
        f[12..14].copy_from_slice(&0x88ccu16.to_be_bytes()); // LLDP
        assert_eq!(parse_frame(&f), Err(DropReason::UnsupportedEthertype));
        // QinQ: a second 802.1Q tag is not supported either.
        let mut f = hex(VLAN_UDP);
        f[16..18].copy_from_slice(&ETHERTYPE_VLAN.to_be_bytes());
        assert_eq!(parse_frame(&f), Err(DropReason::UnsupportedEthertype));
    }

    #[test]
    fn drop_truncated_arp() {
        assert_eq!(
            parse_frame(&hex(ARP_WHO_HAS)[..14 + 27]),
            Err(DropReason::TruncatedArp)
        );
        assert!(
            parse_frame(&hex(ARP_WHO_HAS)[..14 + 28]).is_ok(),
            "28 bytes are enough"
        );
    }

    #[test]
    fn drop_malformed_arp() {
        // (byte offset in the frame, bad value)
        for (at, v) in [(15, 6), (16, 0x86), (18, 8), (19, 16), (21, 3), (21, 0)] {
            let mut f = hex(ARP_WHO_HAS);
            f[at] = v;
            assert_eq!(
                parse_frame(&f),
                Err(DropReason::MalformedArp),
                "byte {at} = {v}"
            );
        }
        let mut reply = hex(ARP_WHO_HAS);
        reply[21] = 2;
        assert_eq!(
            parse_frame(&reply).expect("reply").arp().map(|a| a.op),
            Some(ARP_REPLY)
        );
    }

    #[test]
    fn drop_truncated_ipv4() {
        let f = hex(TCP_SYN);
        assert_eq!(
            parse_frame(&f[..14 + 19]),
            Err(DropReason::TruncatedIpv4),
            "short fixed header"
        );
        // Total length 60 but only 59 bytes present.
        assert_eq!(
            parse_frame(&f[..f.len() - 1]),
            Err(DropReason::TruncatedIpv4),
            "total length beyond frame"
        );
        // IHL 15 (60 bytes) in a 40-byte frame body.
        let mut g = hex(ICMP_ECHO);
        g[14] = 0x4f;
        assert_eq!(
            parse_frame(&g[..14 + 40]),
            Err(DropReason::TruncatedIpv4),
            "IHL beyond frame"
        );
    }

    #[test]
    fn drop_malformed_ipv4() {
        let mut f = hex(TCP_SYN);
        f[14] = 0x65; // version 6
        assert_eq!(parse_frame(&f), Err(DropReason::MalformedIpv4), "version");
        let mut f = hex(TCP_SYN);
        f[14] = 0x44; // IHL 4
        assert_eq!(parse_frame(&f), Err(DropReason::MalformedIpv4), "IHL");
        let mut f = hex(TCP_SYN);
        f[16..18].copy_from_slice(&19u16.to_be_bytes());
        assert_eq!(
            parse_frame(&f),
            Err(DropReason::MalformedIpv4),
            "total length < IHL"
        );
    }

    /// Set the IPv4 total length of an untagged frame and cut the frame to it.
    fn set_total_len(f: &mut Vec<u8>, len: usize) {
        f.truncate(14 + len);
        f[16..18].copy_from_slice(&u16::try_from(len).expect("small").to_be_bytes());
    }

    #[test]
    fn drop_truncated_l4() {
        // UDP with 7 bytes of header.
        let mut f = hex(UDP_DNS);
        set_total_len(&mut f, 20 + 7);
        assert_eq!(parse_frame(&f), Err(DropReason::TruncatedL4), "UDP");
        // TCP whose options (data offset 10 = 40 bytes) are cut.
        let mut f = hex(TCP_SYN);
        set_total_len(&mut f, 20 + 39);
        assert_eq!(parse_frame(&f), Err(DropReason::TruncatedL4), "TCP options");
        // TCP with data offset 4 (< 20 bytes).
        let mut f = hex(TCP_SYN);
        f[46] = 0x40;
        assert_eq!(
            parse_frame(&f),
            Err(DropReason::TruncatedL4),
            "TCP data offset"
        );
        // ICMP with 7 bytes.
        let mut f = hex(ICMP_ECHO);
        set_total_len(&mut f, 20 + 7);
        assert_eq!(parse_frame(&f), Err(DropReason::TruncatedL4), "ICMP");
        // ICMP error whose quote lacks the 8 L4 bytes (or the IP header).
        for quoted in [0, 19, 20 + 7] {
            let mut f = hex(ICMP_PORT_UNREACH);
            set_total_len(&mut f, 20 + 8 + quoted);
            assert_eq!(
                parse_frame(&f),
                Err(DropReason::TruncatedL4),
                "quote of {quoted} bytes"
            );
        }
        let mut f = hex(ICMP_PORT_UNREACH);
        set_total_len(&mut f, 20 + 8 + 28);
        assert!(
            parse_frame(&f).is_ok(),
            "IP header + 8 bytes is a complete quote"
        );
        // A quote that is not IPv4.
        let mut f = hex(ICMP_PORT_UNREACH);
        f[42] = 0x60;
        assert_eq!(
            parse_frame(&f),
            Err(DropReason::TruncatedL4),
            "quote version"
        );
    }

    #[test]
    fn drop_tiny_fragment() {
        // First fragment (MF) of a TCP segment holding only 8 bytes of its header.
        let mut f = hex(TCP_SYN);
        set_total_len(&mut f, 20 + 8);
        f[20] = 0x20; // MF, offset 0
        assert_eq!(
            parse_frame(&f),
            Err(DropReason::TinyFragment),
            "short first TCP fragment"
        );
        // First fragment cutting the TCP options.
        let mut f = hex(TCP_SYN);
        set_total_len(&mut f, 20 + 24);
        f[20] = 0x20;
        assert_eq!(
            parse_frame(&f),
            Err(DropReason::TinyFragment),
            "first fragment without all options"
        );
        // First UDP fragment with 4 bytes.
        let mut f = hex(FRAG_FIRST);
        set_total_len(&mut f, 20 + 4);
        assert_eq!(
            parse_frame(&f),
            Err(DropReason::TinyFragment),
            "short first UDP fragment"
        );
        // A TCP fragment at offset 1 (8 bytes) could overwrite the flags: RFC 1858.
        let mut f = hex(TCP_SYN);
        f[20..22].copy_from_slice(&1u16.to_be_bytes());
        assert_eq!(
            parse_frame(&f),
            Err(DropReason::TinyFragment),
            "TCP offset 8"
        );
        // Offset 1 is fine for UDP (no flags to overwrite), offset 2 fine for TCP.
        let mut f = hex(FRAG_LATER);
        f[20..22].copy_from_slice(&1u16.to_be_bytes());
        assert!(parse_frame(&f).is_ok(), "UDP offset 8");
        let mut f = hex(TCP_SYN);
        f[20..22].copy_from_slice(&2u16.to_be_bytes());
        assert_eq!(
            parse_frame(&f)
                .expect("TCP offset 16")
                .packet()
                .map(|p| p.frag),
            Some(Frag::Later { id: 0x1c46 })
        );
    }

    // ---- robustness ----

    /// xorshift64*: a tiny deterministic generator, enough to shake the parser.
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
    fn every_truncation_of_a_valid_frame_is_handled() {
        for s in ALL_FRAMES {
            let f = hex(s);
            let full = parse_frame(&f).expect("valid frame parses");
            // The frame is complete once the IPv4 packet (or the ARP body) is.
            let needed = match full {
                Parsed::Ipv4 {
                    l3_offset, ip_len, ..
                }
                | Parsed::Ipv6 {
                    l3_offset, ip_len, ..
                } => usize::from(l3_offset) + usize::from(ip_len),
                Parsed::Arp { eth, .. } => eth.header_len() + ARP_LEN,
            };
            for n in 0..f.len() {
                let r = parse_frame(&f[..n]);
                if n >= needed {
                    assert_eq!(r, Ok(full), "cut at {n} only removes padding");
                } else {
                    assert!(r.is_err(), "cut at {n} of {needed} must not parse: {r:?}");
                }
            }
        }
    }

    #[test]
    fn random_bytes_and_mutations_never_panic() {
        let mut rng = Rng(0x5eed_cafe_f00d_beef);
        let frames: Vec<Vec<u8>> = ALL_FRAMES.iter().map(|s| hex(s)).collect();
        let mut buf = Vec::with_capacity(256);
        let mut ok = 0usize;
        for i in 0..300_000 {
            buf.clear();
            if i % 3 == 0 {
                // Pure noise, biased towards IPv4/ARP ethertypes to get past L2.
                let n = rng.below(128);
                buf.extend((0..n).map(|_| rng.next() as u8));
                if n >= 14 && rng.below(2) == 0 {
                    let et = [ETHERTYPE_IPV4, ETHERTYPE_ARP, ETHERTYPE_VLAN][rng.below(3)];
                    buf[12..14].copy_from_slice(&et.to_be_bytes());
                }
            } else {
                // A real frame with a few bytes flipped and a random cut.
                buf.extend_from_slice(&frames[rng.below(frames.len())]);
                for _ in 0..=rng.below(4) {
                    let at = rng.below(buf.len());
                    buf[at] = rng.next() as u8;
                }
                let cut = rng.below(buf.len() + 1);
                buf.truncate(cut);
            }
            if let Ok(p) = parse_frame(&buf) {
                ok += 1;
                if let Parsed::Ipv4 {
                    l3_offset,
                    l4_offset,
                    payload_offset,
                    ip_len,
                    ..
                } = p
                {
                    assert!(l3_offset <= l4_offset && l4_offset <= payload_offset);
                    assert!(
                        usize::from(payload_offset) <= usize::from(l3_offset) + usize::from(ip_len)
                    );
                    assert!(
                        usize::from(l3_offset) + usize::from(ip_len) <= buf.len(),
                        "packet within frame"
                    );
                }
            }
        }
        assert!(ok > 10_000, "mutations should often still parse, got {ok}");
    }

    // ---- cross-check against an independent encoder ----

    mod against_etherparse {
        use super::*;
        use etherparse::{PacketBuilder, VlanId};
        use proptest::prelude::*;

        #[derive(Clone, Debug)]
        enum Kind {
            Tcp { flags: u8 },
            Udp,
            Echo { id: u16, seq: u16 },
            Raw { ty: u8, code: u8, rest: [u8; 4] },
        }

        fn kind() -> impl Strategy<Value = Kind> {
            prop_oneof![
                (0u8..0x20).prop_map(|flags| Kind::Tcp { flags }),
                Just(Kind::Udp),
                (any::<u16>(), any::<u16>()).prop_map(|(id, seq)| Kind::Echo { id, seq }),
                // Non-error ICMP types only: errors need a real quote (tested above).
                (
                    any::<u8>().prop_filter("not an error", |t| !icmp_is_error(*t)),
                    any::<u8>(),
                    any::<[u8; 4]>()
                )
                    .prop_map(|(ty, code, rest)| Kind::Raw { ty, code, rest }),
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2000))]
            #[test]
            fn parse_agrees_with_etherparse_builder(
                src_mac in any::<[u8; 6]>(), dst_mac in any::<[u8; 6]>(),
                src in any::<[u8; 4]>(), dst in any::<[u8; 4]>(),
                sport in any::<u16>(), dport in any::<u16>(),
                vlan in proptest::option::of(0u16..4096),
                kind in kind(),
                payload in proptest::collection::vec(any::<u8>(), 0..64),
                pad in 0usize..20,
            ) {
                let eth = PacketBuilder::ethernet2(src_mac, dst_mac);
                let ip = match vlan {
                    Some(v) => eth.single_vlan(VlanId::try_new(v).expect("12 bits")).ipv4(src, dst, 64),
                    None => eth.ipv4(src, dst, 64),
                };
                let mut frame = Vec::new();
                let (want_proto, want_ports, want_l4) = match kind {
                    Kind::Tcp { flags } => {
                        let mut b = ip.tcp(sport, dport, 1, 1000);
                        if flags & tcp_flags::FIN != 0 { b = b.fin(); }
                        if flags & tcp_flags::SYN != 0 { b = b.syn(); }
                        if flags & tcp_flags::RST != 0 { b = b.rst(); }
                        if flags & tcp_flags::PSH != 0 { b = b.psh(); }
                        if flags & tcp_flags::ACK != 0 { b = b.ack(1); }
                        b.write(&mut frame, &payload).expect("write");
                        (proto::TCP, (sport, dport), L4::Tcp { flags })
                    }
                    Kind::Udp => {
                        ip.udp(sport, dport).write(&mut frame, &payload).expect("write");
                        (proto::UDP, (sport, dport), L4::Udp)
                    }
                    Kind::Echo { id, seq } => {
                        ip.icmpv4_echo_request(id, seq).write(&mut frame, &payload).expect("write");
                        (proto::ICMP, (id, id), L4::Icmp { ty: 8, code: 0, kind: IcmpKind::Request })
                    }
                    Kind::Raw { ty, code, rest } => {
                        ip.icmpv4_raw(ty, code, rest).write(&mut frame, &payload).expect("write");
                        let (ports, kind) = match icmp_query(ty) {
                            Some(req) => {
                                let id = u16::from_be_bytes([rest[0], rest[1]]);
                                ((id, id), if req { IcmpKind::Request } else { IcmpKind::Reply })
                            }
                            None => ((0, 0), IcmpKind::Other),
                        };
                        (proto::ICMP, ports, L4::Icmp { ty, code, kind })
                    }
                };
                let ip_len = frame.len() - if vlan.is_some() { 18 } else { 14 };
                frame.extend(std::iter::repeat_n(0u8, pad));
                let parsed = parse_frame(&frame);
                let Ok(Parsed::Ipv4 { eth, pkt, l3_offset, ip_len: got_len, .. }) = parsed else {
                    panic!("expected IPv4, got {parsed:?}");
                };
                prop_assert_eq!(eth, Eth { dst: dst_mac, src: src_mac, vlan, ethertype: ETHERTYPE_IPV4 });
                let want = FlowKey {
                    src: src.into(), dst: dst.into(), proto: want_proto, sport: want_ports.0, dport: want_ports.1,
                };
                prop_assert_eq!(pkt.key, want);
                prop_assert_eq!(pkt.l4, want_l4);
                prop_assert_eq!(pkt.frag, Frag::None);
                prop_assert_eq!(usize::from(got_len), ip_len);
                prop_assert_eq!(usize::from(l3_offset), if vlan.is_some() { 18 } else { 14 });
            }
        }
    }
}
