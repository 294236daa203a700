//! VXLAN with the Group Based Policy extension (the overlay of DESIGN §9).
//!
//! Wire format (draft-smith-vxlan-group-policy, the 8-byte VXLAN header of
//! RFC 7348 with the G bit and a 16-bit Group Policy ID in the first word):
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |G|R|R|R|I|R|R|R|R|D|R|R|A|R|R|R|        Group Policy ID        |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |          VXLAN Network Identifier (VNI)       |   Reserved    |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! ```
//!
//! sgswitch carries the sender's group-set identity in the Group Policy ID (as
//! Cilium does). This module is pure and allocation-free (the datapath hot-path
//! rule): [`encap`]/[`encap_in_place`] write outer Ethernet/IPv4/UDP/VXLAN-GBP
//! into a caller's buffer, [`decap`] validates a received underlay frame (or
//! [`decap_udp_payload`] a datagram read from a UDP socket) and returns borrowed
//! slices, [`check_sender`] applies the receive-side trust rules against a
//! [`Directory`] of live hosts and instances. Every refusal is a [`VxlanDrop`]
//! with a stable counter name.
//!
//! The drop reasons are a local enum rather than new variants of
//! `filter::DropReason` (which belongs to the single-host pipeline): the
//! datapath counts them in their own per-worker array
//! ([`crate::Stats::vxlan_drops`]), under these names. The datapath side (the
//! underlay socket, ARP for remote instances, send and receive) is
//! [`crate::overlay`].

use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV4};

use crate::nd;
use crate::offload::checksum;
use crate::table::AddrHasher;

/// Keyed by IPv4 address as `u32`, hashed like the forwarding table.
type AddrMap<V> = HashMap<u32, V, BuildHasherDefault<AddrHasher>>;
/// Keyed by IPv6 address as `u128`.
type Addr6Map<V> = HashMap<u128, V, BuildHasherDefault<AddrHasher>>;

/// The IANA VXLAN port (RFC 7348), the default of `--vxlan-port`.
pub const VXLAN_PORT: u16 = 4789;
/// Length of the VXLAN(-GBP) header.
pub const VXLAN_HDR_LEN: usize = 8;
const ETH_LEN: usize = 14;
const IPV4_LEN: usize = 20;
const UDP_LEN: usize = 8;
/// Outer headers added by [`encap`]: Ethernet 14 + IPv4 20 + UDP 8 + VXLAN 8.
/// An inner MTU of 1450 fits a 1500-byte underlay.
pub const OVERHEAD: usize = ETH_LEN + IPV4_LEN + UDP_LEN + VXLAN_HDR_LEN;
/// Smallest inner frame carried: one Ethernet header.
pub const MIN_INNER: usize = ETH_LEN;
/// Largest inner frame: the outer IPv4 total length is 16 bits.
pub const MAX_INNER: usize = u16::MAX as usize - IPV4_LEN - UDP_LEN - VXLAN_HDR_LEN;
/// Largest VNI (24 bits).
pub const MAX_VNI: u32 = 0x00ff_ffff;

/// First flags byte: G (a Group Policy ID is carried).
pub const FLAG_G: u8 = 0x80;
/// First flags byte: I (the VNI is valid), mandatory in RFC 7348.
pub const FLAG_I: u8 = 0x08;
/// Second flags byte: D (don't learn the inner source).
pub const FLAG_D: u8 = 0x40;
/// Second flags byte: A (policy already applied).
pub const FLAG_A: u8 = 0x08;

const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_IPV6: u16 = nd::ETHERTYPE_IPV6;
const IPV6_LEN: usize = 40;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
/// Source ports are drawn from the dynamic range, as RFC 7348 §5 recommends.
const SRC_PORT_BASE: u16 = 49152;

/// Why an overlay frame was refused. One counter per variant once the datapath
/// carries the overlay; [`VxlanDrop::name`] is the counter name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum VxlanDrop {
    // --- decap: the outer headers ---
    /// Cut short or inconsistent at any layer: Ethernet, IPv4 (version, header
    /// length, total length), UDP length, or an inner frame shorter than an
    /// Ethernet header.
    Malformed,
    /// The outer IPv4 header checksum does not verify.
    BadIpChecksum,
    /// The outer UDP checksum is present (non-zero) and does not verify.
    BadUdpChecksum,
    /// The outer packet is not IPv4/UDP (other ethertype, VLAN tag, protocol).
    NotUdp,
    /// The outer IPv4 packet is a fragment (VTEPs never fragment, RFC 7348 §4.3).
    Fragment,
    /// The outer UDP destination port is not the overlay's.
    WrongPort,
    /// The outer destination address is not this host's underlay address.
    NotForUs,
    // --- decap: the VXLAN header ---
    /// I bit clear, or a reserved bit or the reserved byte set.
    BadFlags,
    /// G bit clear: no Group Policy ID, so no identity to enforce.
    NoPolicy,
    /// VNI other than the lab's.
    BadVni,
    // --- receive-side trust ---
    /// The outer source is not a live host's underlay address.
    UnknownHost,
    /// The inner frame is neither untagged IPv4 nor untagged IPv6 (ARP is
    /// answered locally, never carried; VLAN tags and other ethertypes).
    InnerNotIpv4,
    /// An inner IPv6 frame that is the segment's own housekeeping: neighbor
    /// discovery, router solicitations/advertisements, redirects, MLD, or a
    /// link-local or unspecified address (each host's switch answers these
    /// for its instances; they never cross hosts).
    InnerHousekeeping,
    /// The inner source IPv4 (or IPv6) address is no known instance.
    UnknownInstance,
    /// The inner source is an instance of another host than the sender.
    ForeignInstance,
    /// The inner source MAC is not that instance's.
    SpoofedMac,
    /// The Group Policy ID is not that instance's group-set identity.
    WrongIdentity,
    // --- the datapath around it ---
    /// A verified inner frame whose destination is not an instance attached to
    /// this host (broadcast is never carried).
    NotLocal,
    /// Send side: the local sender has no identity in the published directory
    /// (its instance is not there yet), so there is nothing to put in the
    /// Group Policy ID.
    NoIdentity,
    /// Send side: a frame larger than the inner MTU the underlay allows that
    /// can be neither cut (TCP) nor fragmented (IPv4 with DF, or with options;
    /// IPv6, which routers never fragment); the sender gets ICMP
    /// "fragmentation needed" or ICMPv6 "packet too big" (the outer packet is
    /// never fragmented).
    TooBig,
    /// Send side: the underlay socket refused the datagram.
    TxFailed,
}

impl VxlanDrop {
    /// Every reason, in counter order.
    pub const ALL: [VxlanDrop; 21] = [
        VxlanDrop::Malformed,
        VxlanDrop::BadIpChecksum,
        VxlanDrop::BadUdpChecksum,
        VxlanDrop::NotUdp,
        VxlanDrop::Fragment,
        VxlanDrop::WrongPort,
        VxlanDrop::NotForUs,
        VxlanDrop::BadFlags,
        VxlanDrop::NoPolicy,
        VxlanDrop::BadVni,
        VxlanDrop::UnknownHost,
        VxlanDrop::InnerNotIpv4,
        VxlanDrop::InnerHousekeeping,
        VxlanDrop::UnknownInstance,
        VxlanDrop::ForeignInstance,
        VxlanDrop::SpoofedMac,
        VxlanDrop::WrongIdentity,
        VxlanDrop::NotLocal,
        VxlanDrop::NoIdentity,
        VxlanDrop::TooBig,
        VxlanDrop::TxFailed,
    ];
    pub const COUNT: usize = Self::ALL.len();

    /// Counter index.
    #[inline]
    pub fn index(self) -> usize {
        self as usize
    }

    /// A stable snake_case name for counters and logs.
    pub fn name(self) -> &'static str {
        match self {
            VxlanDrop::Malformed => "vxlan_malformed",
            VxlanDrop::BadIpChecksum => "vxlan_bad_ip_checksum",
            VxlanDrop::BadUdpChecksum => "vxlan_bad_udp_checksum",
            VxlanDrop::NotUdp => "vxlan_not_udp",
            VxlanDrop::Fragment => "vxlan_fragment",
            VxlanDrop::WrongPort => "vxlan_wrong_port",
            VxlanDrop::NotForUs => "vxlan_not_for_us",
            VxlanDrop::BadFlags => "vxlan_bad_flags",
            VxlanDrop::NoPolicy => "vxlan_no_policy",
            VxlanDrop::BadVni => "vxlan_bad_vni",
            VxlanDrop::UnknownHost => "vxlan_unknown_host",
            VxlanDrop::InnerNotIpv4 => "vxlan_inner_not_ipv4",
            VxlanDrop::InnerHousekeeping => "vxlan_inner_housekeeping",
            VxlanDrop::UnknownInstance => "vxlan_unknown_instance",
            VxlanDrop::ForeignInstance => "vxlan_foreign_instance",
            VxlanDrop::SpoofedMac => "vxlan_spoofed_mac",
            VxlanDrop::WrongIdentity => "vxlan_wrong_identity",
            VxlanDrop::NotLocal => "vxlan_not_local",
            VxlanDrop::NoIdentity => "vxlan_no_identity",
            VxlanDrop::TooBig => "vxlan_too_big",
            VxlanDrop::TxFailed => "vxlan_tx_failed",
        }
    }
}

impl std::fmt::Display for VxlanDrop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A caller error on the sending side (never a property of received traffic).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EncapError {
    #[error("VNI {0} does not fit in 24 bits (max {MAX_VNI})")]
    VniOutOfRange(u32),
    #[error("inner frame of {0} bytes is shorter than an Ethernet header ({MIN_INNER})")]
    InnerTooShort(usize),
    #[error("inner frame of {0} bytes exceeds the IPv4 limit ({MAX_INNER})")]
    InnerTooLong(usize),
    #[error("output buffer of {have} bytes cannot hold the {need}-byte encapsulated frame")]
    BufferTooSmall { need: usize, have: usize },
}

/// The VXLAN-GBP header fields.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct GbpHeader {
    /// 24-bit VXLAN Network Identifier.
    pub vni: u32,
    /// Group Policy ID: the sender's group-set identity.
    pub policy_id: u16,
    /// D bit: the receiver must not learn the inner source.
    pub dont_learn: bool,
    /// A bit: policy was already applied on the way.
    pub policy_applied: bool,
}

impl GbpHeader {
    /// Serializes into 8 bytes (G and I always set, reserved bits zero).
    pub fn write(&self, out: &mut [u8; VXLAN_HDR_LEN]) -> Result<(), EncapError> {
        if self.vni > MAX_VNI {
            return Err(EncapError::VniOutOfRange(self.vni));
        }
        let mut f1 = 0u8;
        if self.dont_learn {
            f1 |= FLAG_D;
        }
        if self.policy_applied {
            f1 |= FLAG_A;
        }
        let p = self.policy_id.to_be_bytes();
        let v = self.vni.to_be_bytes();
        *out = [FLAG_G | FLAG_I, f1, p[0], p[1], v[1], v[2], v[3], 0];
        Ok(())
    }

    /// Parses and validates 8 bytes: I set, G set, no reserved bit or byte set.
    /// The VNI is not compared here (see [`decap_udp_payload`]).
    pub fn parse(b: &[u8]) -> Result<GbpHeader, VxlanDrop> {
        let b: &[u8; VXLAN_HDR_LEN] = b
            .get(..VXLAN_HDR_LEN)
            .and_then(|s| s.try_into().ok())
            .ok_or(VxlanDrop::Malformed)?;
        // Strict like the kernel: unknown flags mean an extension we don't speak.
        if b[0] & FLAG_I == 0
            || b[0] & !(FLAG_G | FLAG_I) != 0
            || b[1] & !(FLAG_D | FLAG_A) != 0
            || b[7] != 0
        {
            return Err(VxlanDrop::BadFlags);
        }
        if b[0] & FLAG_G == 0 {
            return Err(VxlanDrop::NoPolicy);
        }
        Ok(GbpHeader {
            vni: u32::from_be_bytes([0, b[4], b[5], b[6]]),
            policy_id: u16::from_be_bytes([b[2], b[3]]),
            dont_learn: b[1] & FLAG_D != 0,
            policy_applied: b[1] & FLAG_A != 0,
        })
    }
}

/// The outer (underlay) addressing of an encapsulated frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Underlay {
    pub src_mac: [u8; 6],
    /// The next hop's MAC (the peer host, or the underlay gateway).
    pub dst_mac: [u8; 6],
    /// This host's `--underlay` address.
    pub src_ip: Ipv4Addr,
    /// The owning host's underlay address.
    pub dst_ip: Ipv4Addr,
    /// UDP destination port (`--vxlan-port`, default [`VXLAN_PORT`]).
    pub dst_port: u16,
    pub ttl: u8,
}

/// A UDP source port in 49152..=65535 from a hash of the inner flow (RFC 7348
/// §5: entropy for ECMP/RSS on the underlay, stable per flow so a flow is never
/// reordered across paths). IPv4 TCP/UDP: addresses, protocol and ports (ports
/// left out for fragments); other IPv4: addresses and protocol; IPv6: addresses,
/// next header and, for TCP/UDP right after the fixed header, ports; anything
/// else: the MACs and ethertype.
pub fn flow_src_port(inner: &[u8]) -> u16 {
    let mut h: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut mix = |x: u64| {
        h = (h ^ x).wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
    };
    let ethertype = inner.get(12..14).map(|b| u16::from_be_bytes([b[0], b[1]]));
    match (ethertype, inner.get(ETH_LEN..ETH_LEN + IPV4_LEN)) {
        (Some(ETHERTYPE_IPV4), Some(ip)) => {
            let proto = ip[9];
            mix(u64::from(u32::from_be_bytes([
                ip[12], ip[13], ip[14], ip[15],
            ])));
            mix(u64::from(u32::from_be_bytes([
                ip[16], ip[17], ip[18], ip[19],
            ])));
            mix(u64::from(proto));
            let ihl = usize::from(ip[0] & 0x0f) * 4;
            let frag = u16::from_be_bytes([ip[6], ip[7]]) & 0x3fff != 0;
            if (proto == IPPROTO_TCP || proto == IPPROTO_UDP)
                && !frag
                && let Some(p) = inner.get(ETH_LEN + ihl..ETH_LEN + ihl + 4)
            {
                mix(u64::from(u32::from_be_bytes([p[0], p[1], p[2], p[3]])));
            }
        }
        (Some(ETHERTYPE_IPV6), _) if let Some(ip) = inner.get(ETH_LEN..ETH_LEN + IPV6_LEN) => {
            for w in ip[8..40].chunks(8) {
                let mut b = [0u8; 8];
                b.copy_from_slice(w);
                mix(u64::from_be_bytes(b));
            }
            let next = ip[6];
            mix(u64::from(next));
            let l4 = ETH_LEN + IPV6_LEN;
            if (next == IPPROTO_TCP || next == IPPROTO_UDP)
                && let Some(p) = inner.get(l4..l4 + 4)
            {
                mix(u64::from(u32::from_be_bytes([p[0], p[1], p[2], p[3]])));
            }
        }
        _ => {
            for chunk in inner.get(..14).unwrap_or(inner).chunks(8) {
                let mut w = [0u8; 8];
                w[..chunk.len()].copy_from_slice(chunk);
                mix(u64::from_le_bytes(w));
            }
        }
    }
    SRC_PORT_BASE | (h >> 48) as u16
}

/// Encapsulates `inner` into `out` (outer Ethernet/IPv4/UDP/VXLAN-GBP followed by
/// a copy of `inner`); returns the frame's length, `inner.len() + OVERHEAD`.
/// The outer IPv4 header has DF set (VTEPs don't fragment), id 0 and a valid
/// checksum; the UDP checksum is zero as RFC 7348 §5 allows for IPv4.
pub fn encap(
    under: &Underlay,
    hdr: &GbpHeader,
    inner: &[u8],
    out: &mut [u8],
) -> Result<usize, EncapError> {
    let need = inner.len() + OVERHEAD;
    check_inner_len(inner.len())?;
    if out.len() < need {
        return Err(EncapError::BufferTooSmall {
            need,
            have: out.len(),
        });
    }
    out[OVERHEAD..need].copy_from_slice(inner);
    encap_in_place(under, hdr, out, inner.len())
}

/// Like [`encap`], for an inner frame already placed at `buf[OVERHEAD..OVERHEAD
/// + inner_len]` (receive into headroom, then write the headers: no copy).
pub fn encap_in_place(
    under: &Underlay,
    hdr: &GbpHeader,
    buf: &mut [u8],
    inner_len: usize,
) -> Result<usize, EncapError> {
    check_inner_len(inner_len)?;
    let need = inner_len + OVERHEAD;
    if buf.len() < need {
        return Err(EncapError::BufferTooSmall {
            need,
            have: buf.len(),
        });
    }
    let mut vx = [0u8; VXLAN_HDR_LEN];
    hdr.write(&mut vx)?;
    let src_port = flow_src_port(&buf[OVERHEAD..need]);

    let (eth, rest) = buf.split_at_mut(ETH_LEN);
    eth[0..6].copy_from_slice(&under.dst_mac);
    eth[6..12].copy_from_slice(&under.src_mac);
    eth[12..14].copy_from_slice(&ETHERTYPE_IPV4.to_be_bytes());

    let total = (IPV4_LEN + UDP_LEN + VXLAN_HDR_LEN + inner_len) as u16;
    let ip = &mut rest[..IPV4_LEN];
    ip[0] = 0x45;
    ip[1] = 0;
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip[4..6].copy_from_slice(&[0, 0]);
    ip[6..8].copy_from_slice(&0x4000u16.to_be_bytes()); // DF
    ip[8] = under.ttl;
    ip[9] = IPPROTO_UDP;
    ip[10..12].copy_from_slice(&[0, 0]);
    ip[12..16].copy_from_slice(&under.src_ip.octets());
    ip[16..20].copy_from_slice(&under.dst_ip.octets());
    let c = checksum(ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());

    let udp = &mut rest[IPV4_LEN..IPV4_LEN + UDP_LEN + VXLAN_HDR_LEN];
    udp[0..2].copy_from_slice(&src_port.to_be_bytes());
    udp[2..4].copy_from_slice(&under.dst_port.to_be_bytes());
    udp[4..6].copy_from_slice(&(total - IPV4_LEN as u16).to_be_bytes());
    udp[6..8].copy_from_slice(&[0, 0]);
    udp[8..16].copy_from_slice(&vx);
    Ok(need)
}

fn check_inner_len(len: usize) -> Result<(), EncapError> {
    if len < MIN_INNER {
        Err(EncapError::InnerTooShort(len))
    } else if len > MAX_INNER {
        Err(EncapError::InnerTooLong(len))
    } else {
        Ok(())
    }
}

/// What the receiver expects of overlay traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DecapConfig {
    /// The lab's VNI.
    pub vni: u32,
    /// UDP port (`--vxlan-port`).
    pub port: u16,
    /// This host's underlay address; `None` accepts any destination (a socket
    /// bound to the address already filtered).
    pub local: Option<Ipv4Addr>,
}

/// A validated overlay frame, borrowing the received buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decapped<'a> {
    /// The sending host's underlay address (to be checked by [`check_sender`]).
    pub outer_src: Ipv4Addr,
    pub outer_dst: Ipv4Addr,
    pub src_port: u16,
    pub header: GbpHeader,
    /// The inner Ethernet frame (at least [`MIN_INNER`] bytes).
    pub inner: &'a [u8],
}

/// Validates a whole underlay frame (Ethernet/IPv4/UDP/VXLAN-GBP): lengths at
/// every layer, the IPv4 header checksum, the UDP checksum if present, no
/// fragment, the port, the destination, the flags and the VNI. Never panics.
pub fn decap<'a>(frame: &'a [u8], cfg: &DecapConfig) -> Result<Decapped<'a>, VxlanDrop> {
    let eth = frame.get(..ETH_LEN).ok_or(VxlanDrop::Malformed)?;
    if u16::from_be_bytes([eth[12], eth[13]]) != ETHERTYPE_IPV4 {
        return Err(VxlanDrop::NotUdp);
    }
    let pkt = &frame[ETH_LEN..];
    let ip = pkt.get(..IPV4_LEN).ok_or(VxlanDrop::Malformed)?;
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    if ip[0] >> 4 != 4 || ihl < IPV4_LEN || total < ihl || total > pkt.len() {
        return Err(VxlanDrop::Malformed);
    }
    // Ethernet padding past the IPv4 total length is allowed and ignored.
    let pkt = &pkt[..total];
    if checksum(&pkt[..ihl]) != 0 {
        return Err(VxlanDrop::BadIpChecksum);
    }
    if u16::from_be_bytes([ip[6], ip[7]]) & 0x3fff != 0 {
        return Err(VxlanDrop::Fragment);
    }
    if ip[9] != IPPROTO_UDP {
        return Err(VxlanDrop::NotUdp);
    }
    let src = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
    let dst = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
    let seg = &pkt[ihl..];
    let udp = seg.get(..UDP_LEN).ok_or(VxlanDrop::Malformed)?;
    let ulen = usize::from(u16::from_be_bytes([udp[4], udp[5]]));
    if ulen != seg.len() {
        return Err(VxlanDrop::Malformed);
    }
    let ucsum = u16::from_be_bytes([udp[6], udp[7]]);
    if ucsum != 0 && udp_checksum(src, dst, seg) != 0 {
        return Err(VxlanDrop::BadUdpChecksum);
    }
    if u16::from_be_bytes([udp[2], udp[3]]) != cfg.port {
        return Err(VxlanDrop::WrongPort);
    }
    if cfg.local.is_some_and(|l| l != dst) {
        return Err(VxlanDrop::NotForUs);
    }
    let (header, inner) = decap_udp_payload(&seg[UDP_LEN..], cfg.vni)?;
    Ok(Decapped {
        outer_src: src,
        outer_dst: dst,
        src_port: u16::from_be_bytes([udp[0], udp[1]]),
        header,
        inner,
    })
}

/// Validates a VXLAN-GBP UDP payload (as read from a UDP socket): the header's
/// flags, the VNI, and an inner frame of at least an Ethernet header.
pub fn decap_udp_payload(payload: &[u8], vni: u32) -> Result<(GbpHeader, &[u8]), VxlanDrop> {
    let header = GbpHeader::parse(payload)?;
    if header.vni != vni {
        return Err(VxlanDrop::BadVni);
    }
    let inner = &payload[VXLAN_HDR_LEN..];
    if inner.len() < MIN_INNER {
        return Err(VxlanDrop::Malformed);
    }
    Ok((header, inner))
}

/// Sum of the UDP segment with its pseudo-header; 0 when the checksum verifies.
fn udp_checksum(src: Ipv4Addr, dst: Ipv4Addr, seg: &[u8]) -> u16 {
    let mut acc: u64 = 0;
    for w in [src.octets(), dst.octets()] {
        acc += u64::from(u16::from_be_bytes([w[0], w[1]]))
            + u64::from(u16::from_be_bytes([w[2], w[3]]));
    }
    acc += u64::from(IPPROTO_UDP) + seg.len() as u64;
    !crate::offload::fold(crate::offload::sum(seg, acc))
}

/// A host of the cluster (its index in the host table).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HostId(pub u32);

/// What the receiver knows of an instance on any host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InstanceInfo {
    pub host: HostId,
    pub mac: [u8; 6],
    /// Its group-set identity (the Group Policy ID it must send with).
    pub identity: u16,
}

/// The receive side's view of the cluster: which underlay addresses are live
/// hosts, and which instance owns an IPv4 or IPv6 address (addresses are unique
/// in a lab).
pub trait Directory {
    fn live_host(&self, underlay: Ipv4Addr) -> Option<HostId>;
    fn instance(&self, ip: Ipv4Addr) -> Option<InstanceInfo>;
    /// The instance owning IPv6 address `ip`, with its IPv4 address (its key).
    /// None by default: a directory without IPv6 accepts no IPv6 sender.
    fn instance6(&self, ip: Ipv6Addr) -> Option<(Ipv4Addr, InstanceInfo)> {
        let _ = ip;
        None
    }
}

/// A frame that passed [`check_sender`]: who sent it, with which verified identity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verified {
    pub host: HostId,
    /// The sending instance's IPv4 address (its key in the directory; for an
    /// IPv6 frame, the instance that owns the inner IPv6 source).
    pub src_ip: Ipv4Addr,
    /// The verified identity, for group-source rules (CIDR rules use `src_ip`).
    pub identity: u16,
}

/// The receive-side trust rule (issue 14): accept only if the outer source is a
/// live host's underlay address and the inner source MAC/IP is an instance of
/// that host whose identity is the Group Policy ID. The inner frame is untagged
/// IPv4 or IPv6; IPv6 housekeeping (neighbor discovery, router messages, MLD,
/// link-local or unspecified addresses) never crosses hosts
/// (`vxlan_inner_housekeeping`). Pure; no allocation.
pub fn check_sender<D: Directory + ?Sized>(
    dir: &D,
    d: &Decapped<'_>,
) -> Result<Verified, VxlanDrop> {
    let host = dir.live_host(d.outer_src).ok_or(VxlanDrop::UnknownHost)?;
    let inner = d.inner;
    let eth = inner.get(..ETH_LEN).ok_or(VxlanDrop::Malformed)?;
    let ethertype = u16::from_be_bytes([eth[12], eth[13]]);
    let (src_ip, inst) = match ethertype {
        ETHERTYPE_IPV4 => {
            let ip = inner
                .get(ETH_LEN..ETH_LEN + IPV4_LEN)
                .ok_or(VxlanDrop::Malformed)?;
            if ip[0] >> 4 != 4 {
                return Err(VxlanDrop::Malformed);
            }
            let src_ip = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
            (
                src_ip,
                dir.instance(src_ip).ok_or(VxlanDrop::UnknownInstance)?,
            )
        }
        ETHERTYPE_IPV6 => {
            let v = nd::parse(inner).map_err(|_| VxlanDrop::Malformed)?;
            if is_housekeeping6(&v) {
                return Err(VxlanDrop::InnerHousekeeping);
            }
            dir.instance6(v.src).ok_or(VxlanDrop::UnknownInstance)?
        }
        // Tagged frames included: instances are untagged.
        _ => return Err(VxlanDrop::InnerNotIpv4),
    };
    if inst.host != host {
        return Err(VxlanDrop::ForeignInstance);
    }
    if eth[6..12] != inst.mac {
        return Err(VxlanDrop::SpoofedMac);
    }
    if inst.identity != d.header.policy_id {
        return Err(VxlanDrop::WrongIdentity);
    }
    Ok(Verified {
        host,
        src_ip,
        identity: inst.identity,
    })
}

/// Whether an inner IPv6 frame is housekeeping of the segment (see
/// [`check_sender`]): an ICMPv6 type the switch handles itself
/// ([`nd::is_housekeeping`]) or a link-local, unspecified or loopback source
/// or link-local destination.
#[inline]
pub fn is_housekeeping6(v: &nd::V6<'_>) -> bool {
    v.icmp_type().is_some_and(nd::is_housekeeping)
        || v.src.is_unicast_link_local()
        || v.src.is_unspecified()
        || v.src.is_loopback()
        || v.dst.is_unicast_link_local()
}

/// A plain [`Directory`] in hash maps keyed by address (built by the control
/// plane, published by pointer swap like the rule snapshot with
/// [`crate::Switch::publish_directory`]; lookups don't allocate). Keys are lab
/// data, not packet data, so the cheap hash is safe.
///
/// It holds every live host (this one included) with its underlay address and
/// port, and every instance of the lab (this host's too: their identities are
/// what they send with). A *remote* instance is one whose `host` is not
/// [`DirectoryTable::local`]. This host's own underlay address is never a
/// trusted sender ([`Directory::live_host`] skips it).
#[derive(Clone, Debug)]
pub struct DirectoryTable {
    local: HostId,
    /// Underlay IPv4 address → host (the receive check: the outer source).
    hosts: AddrMap<HostId>,
    /// Host → underlay address and port (the send destination).
    addrs: AddrMap<SocketAddrV4>,
    instances: AddrMap<InstanceInfo>,
    /// IPv6 address → the instance's IPv4 address (the key of `instances`).
    instances6: Addr6Map<u32>,
}

impl DirectoryTable {
    /// An empty directory of host `local` (this host).
    pub fn new(local: HostId) -> DirectoryTable {
        DirectoryTable {
            local,
            hosts: AddrMap::default(),
            addrs: AddrMap::default(),
            instances: AddrMap::default(),
            instances6: Addr6Map::default(),
        }
    }

    /// This host.
    pub fn local(&self) -> HostId {
        self.local
    }

    /// Marks `underlay` (address and UDP port) as the address of live host
    /// `id`. A host has one address: adding it again moves it.
    pub fn add_host(&mut self, id: HostId, underlay: SocketAddrV4) {
        if let Some(old) = self.addrs.insert(id.0, underlay) {
            self.hosts.remove(&u32::from(*old.ip()));
        }
        self.hosts.insert(u32::from(*underlay.ip()), id);
    }

    /// Forgets a host whose lease expired (by its underlay address): its
    /// frames are refused and its instances become unreachable.
    pub fn remove_host(&mut self, underlay: Ipv4Addr) {
        if let Some(id) = self.hosts.remove(&u32::from(underlay)) {
            self.addrs.remove(&id.0);
        }
    }

    /// Adds (or replaces) the instance owning `ip`.
    pub fn add_instance(&mut self, ip: Ipv4Addr, info: InstanceInfo) {
        self.instances.insert(u32::from(ip), info);
    }

    /// Records `ip6` as the IPv6 address of the instance owning `ip` (added
    /// with [`DirectoryTable::add_instance`]): dual-stack instances are found
    /// by either address. Replaces what `ip6` pointed to before.
    pub fn add_instance6(&mut self, ip6: Ipv6Addr, ip: Ipv4Addr) {
        self.instances6.insert(u128::from(ip6), u32::from(ip));
    }

    /// Forgets the instance owning `ip` (and its IPv6 address).
    pub fn remove_instance(&mut self, ip: Ipv4Addr) {
        self.instances.remove(&u32::from(ip));
        let key = u32::from(ip);
        self.instances6.retain(|_, v| *v != key);
    }

    /// The instance owning IPv6 address `ip6`: its IPv4 address and record.
    #[inline]
    pub fn instance_of6(&self, ip6: Ipv6Addr) -> Option<(Ipv4Addr, InstanceInfo)> {
        let ip = *self.instances6.get(&u128::from(ip6))?;
        Some((Ipv4Addr::from(ip), *self.instances.get(&ip)?))
    }

    /// [`DirectoryTable::is_remote`] by IPv6 address.
    #[inline]
    pub fn is_remote6(&self, ip6: Ipv6Addr) -> bool {
        self.instance_of6(ip6)
            .is_some_and(|(_, i)| i.host != self.local)
    }

    /// [`DirectoryTable::remote_instance`] by IPv6 address.
    #[inline]
    pub fn remote_instance6(&self, ip6: Ipv6Addr) -> Option<(InstanceInfo, SocketAddrV4)> {
        let (_, info) = self.instance_of6(ip6)?;
        if info.host == self.local {
            return None;
        }
        Some((info, self.host_addr(info.host)?))
    }

    /// The underlay address (and port) of live host `id`.
    #[inline]
    pub fn host_addr(&self, id: HostId) -> Option<SocketAddrV4> {
        self.addrs.get(&id.0).copied()
    }

    /// Whether `ip` is an instance of another host (live or not): ingress
    /// rules for it are enforced there, not here.
    #[inline]
    pub fn is_remote(&self, ip: Ipv4Addr) -> bool {
        self.instances
            .get(&u32::from(ip))
            .is_some_and(|i| i.host != self.local)
    }

    /// An instance of another, live host: its record and where to send its frames.
    #[inline]
    pub fn remote_instance(&self, ip: Ipv4Addr) -> Option<(InstanceInfo, SocketAddrV4)> {
        let info = self.instances.get(&u32::from(ip))?;
        if info.host == self.local {
            return None;
        }
        Some((*info, self.host_addr(info.host)?))
    }

    /// The identity a local instance sends with (`None` if `ip` is not an
    /// instance of this host).
    #[inline]
    pub fn local_identity(&self, ip: Ipv4Addr) -> Option<u16> {
        self.instances
            .get(&u32::from(ip))
            .filter(|i| i.host == self.local)
            .map(|i| i.identity)
    }

    /// Number of live hosts and of instances.
    pub fn len(&self) -> (usize, usize) {
        (self.addrs.len(), self.instances.len())
    }
}

impl Directory for DirectoryTable {
    fn live_host(&self, underlay: Ipv4Addr) -> Option<HostId> {
        self.hosts
            .get(&u32::from(underlay))
            .copied()
            .filter(|h| *h != self.local)
    }

    fn instance(&self, ip: Ipv4Addr) -> Option<InstanceInfo> {
        self.instances.get(&u32::from(ip)).copied()
    }

    fn instance6(&self, ip: Ipv6Addr) -> Option<(Ipv4Addr, InstanceInfo)> {
        self.instance_of6(ip)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const H1: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
    const H2: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
    const H3: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 3);
    const MAC_A: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0a];
    const MAC_B: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0b];
    const IP_A: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 10);
    const IP_B: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 11);

    fn under() -> Underlay {
        Underlay {
            src_mac: [0x02, 0xaa, 0, 0, 0, 1],
            dst_mac: [0x02, 0xaa, 0, 0, 0, 2],
            src_ip: H1,
            dst_ip: H2,
            dst_port: VXLAN_PORT,
            ttl: 64,
        }
    }

    fn cfg() -> DecapConfig {
        DecapConfig {
            vni: 42,
            port: VXLAN_PORT,
            local: Some(H2),
        }
    }

    fn hdr(policy_id: u16) -> GbpHeader {
        GbpHeader {
            vni: 42,
            policy_id,
            ..GbpHeader::default()
        }
    }

    /// An inner Ethernet/IPv4/UDP frame from `mac`/`ip` to IP_B.
    fn inner(mac: [u8; 6], ip: Ipv4Addr, sport: u16) -> Vec<u8> {
        let mut f = Vec::new();
        etherparse::PacketBuilder::ethernet2(mac, MAC_B)
            .ipv4(ip.octets(), IP_B.octets(), 64)
            .udp(sport, 5555)
            .write(&mut f, b"hello overlay")
            .unwrap();
        f
    }

    fn encap_vec(u: &Underlay, h: &GbpHeader, inner: &[u8]) -> Vec<u8> {
        let mut out = vec![0u8; inner.len() + OVERHEAD];
        let n = encap(u, h, inner, &mut out).unwrap();
        assert_eq!(n, out.len());
        out
    }

    fn ip_csum_fix(f: &mut [u8]) {
        f[24] = 0;
        f[25] = 0;
        let c = checksum(&f[14..34]);
        f[24..26].copy_from_slice(&c.to_be_bytes());
    }

    #[test]
    fn header_layout_matches_the_draft() {
        let mut b = [0u8; 8];
        GbpHeader {
            vni: 0x00ab_cdef,
            policy_id: 0x1234,
            dont_learn: true,
            policy_applied: true,
        }
        .write(&mut b)
        .unwrap();
        assert_eq!(b, [0x88, 0x48, 0x12, 0x34, 0xab, 0xcd, 0xef, 0x00]);
        let h = GbpHeader::parse(&b).unwrap();
        assert_eq!(h.vni, 0x00ab_cdef);
        assert_eq!(h.policy_id, 0x1234);
        assert!(h.dont_learn && h.policy_applied);
        assert_eq!(
            GbpHeader {
                vni: MAX_VNI + 1,
                ..GbpHeader::default()
            }
            .write(&mut b),
            Err(EncapError::VniOutOfRange(MAX_VNI + 1))
        );
    }

    #[test]
    fn round_trip_and_outer_headers_are_valid() {
        let i = inner(MAC_A, IP_A, 40000);
        let f = encap_vec(&under(), &hdr(0x1234), &i);
        // etherparse agrees on the outer headers.
        let p = etherparse::SlicedPacket::from_ethernet(&f).unwrap();
        let Some(etherparse::NetSlice::Ipv4(ip)) = p.net else {
            panic!("outer not IPv4")
        };
        assert_eq!(ip.header().source_addr(), H1);
        assert_eq!(ip.header().destination_addr(), H2);
        assert!(ip.header().dont_fragment());
        assert_eq!(checksum(&f[14..34]), 0);
        let Some(etherparse::TransportSlice::Udp(u)) = p.transport else {
            panic!("outer not UDP")
        };
        assert_eq!(u.destination_port(), 4789);
        assert!(u.source_port() >= 49152);
        assert_eq!(usize::from(u.length()), 8 + 8 + i.len());
        let d = decap(&f, &cfg()).unwrap();
        assert_eq!(d.header, hdr(0x1234));
        assert_eq!(d.outer_src, H1);
        assert_eq!(d.outer_dst, H2);
        assert_eq!(d.inner, &i[..]);
        // Ethernet padding after the IPv4 packet is ignored.
        let mut padded = f.clone();
        padded.extend_from_slice(&[0; 6]);
        assert_eq!(decap(&padded, &cfg()).unwrap().inner, &i[..]);
    }

    #[test]
    fn in_place_equals_copying_encap() {
        let i = inner(MAC_A, IP_A, 40000);
        let copied = encap_vec(&under(), &hdr(7), &i);
        let mut buf = vec![0xffu8; OVERHEAD + i.len() + 10];
        buf[OVERHEAD..OVERHEAD + i.len()].copy_from_slice(&i);
        let n = encap_in_place(&under(), &hdr(7), &mut buf, i.len()).unwrap();
        assert_eq!(&buf[..n], &copied[..]);
    }

    #[test]
    fn encap_rejects_bad_arguments() {
        let mut out = [0u8; 100];
        assert_eq!(
            encap(&under(), &hdr(1), &[0; 13], &mut out),
            Err(EncapError::InnerTooShort(13))
        );
        assert_eq!(
            encap(&under(), &hdr(1), &[0; 51], &mut out),
            Err(EncapError::BufferTooSmall {
                need: 101,
                have: 100
            })
        );
        let big = vec![0u8; MAX_INNER + 1];
        let mut out = vec![0u8; big.len() + OVERHEAD];
        assert_eq!(
            encap(&under(), &hdr(1), &big, &mut out),
            Err(EncapError::InnerTooLong(MAX_INNER + 1))
        );
        let max = vec![0u8; MAX_INNER];
        assert_eq!(
            encap(&under(), &hdr(1), &max, &mut out),
            Ok(MAX_INNER + OVERHEAD)
        );
        assert_eq!(decap(&out, &cfg()).unwrap().inner.len(), MAX_INNER);
        let msg = EncapError::BufferTooSmall {
            need: 101,
            have: 100,
        }
        .to_string();
        assert!(msg.contains("101") && msg.contains("100"), "{msg}");
    }

    #[test]
    fn source_port_follows_the_flow() {
        let a = flow_src_port(&inner(MAC_A, IP_A, 40000));
        assert_eq!(a, flow_src_port(&inner(MAC_A, IP_A, 40000)));
        let ports: std::collections::HashSet<u16> = (0..64)
            .map(|p| flow_src_port(&inner(MAC_A, IP_A, 40000 + p)))
            .collect();
        assert!(
            ports.len() > 56,
            "poor entropy: {} distinct of 64",
            ports.len()
        );
        assert!(ports.iter().all(|&p| p >= 49152));
        // Non-IPv4 frames hash their MACs.
        let arp = [MAC_B, MAC_A].concat();
        let mut f = arp.clone();
        f.extend_from_slice(&[0x08, 0x06]);
        assert!(flow_src_port(&f) >= 49152);
    }

    /// Every malformed case, each with its own reason.
    #[test]
    fn malformed_frames_are_dropped_by_reason() {
        let i = inner(MAC_A, IP_A, 40000);
        let good = encap_vec(&under(), &hdr(0x1234), &i);
        let bad = |edit: &dyn Fn(&mut Vec<u8>)| {
            let mut f = good.clone();
            edit(&mut f);
            decap(&f, &cfg()).unwrap_err()
        };
        use VxlanDrop::*;
        // Truncations at every layer.
        for n in [0, 13, 14, 33, 34, 41, 42, 49, 50, 63] {
            assert_eq!(decap(&good[..n], &cfg()), Err(Malformed), "cut at {n}");
        }
        assert_eq!(bad(&|f| f[12] = 0x86), NotUdp); // ethertype
        assert_eq!(bad(&|f| f[12..14].copy_from_slice(&[0x81, 0])), NotUdp); // VLAN
        assert_eq!(
            bad(&|f| {
                f[14] = 0x65;
                ip_csum_fix(f)
            }),
            Malformed
        ); // IPv6 version
        assert_eq!(
            bad(&|f| {
                f[14] = 0x44;
                ip_csum_fix(f)
            }),
            Malformed
        ); // IHL 16
        assert_eq!(
            bad(&|f| {
                let t = u16::from_be_bytes([f[16], f[17]]) + 1;
                f[16..18].copy_from_slice(&t.to_be_bytes());
                ip_csum_fix(f)
            }),
            Malformed
        ); // total length beyond the frame
        assert_eq!(
            bad(&|f| {
                f[16..18].copy_from_slice(&19u16.to_be_bytes());
                ip_csum_fix(f)
            }),
            Malformed
        ); // total length below the header
        assert_eq!(bad(&|f| f[22] ^= 1), BadIpChecksum); // TTL changed
        assert_eq!(
            bad(&|f| {
                f[20] = 0x20; // MF
                ip_csum_fix(f)
            }),
            Fragment
        );
        assert_eq!(
            bad(&|f| {
                f[21] = 0x01; // offset 8
                ip_csum_fix(f)
            }),
            Fragment
        );
        assert_eq!(
            bad(&|f| {
                f[23] = 6;
                ip_csum_fix(f)
            }),
            NotUdp
        );
        assert_eq!(bad(&|f| f[38] ^= 0xff), Malformed); // UDP length
        assert_eq!(bad(&|f| f[40] = 0x12), BadUdpChecksum); // non-zero, wrong
        assert_eq!(
            bad(&|f| f[36..38].copy_from_slice(&4790u16.to_be_bytes())),
            WrongPort
        );
        assert_eq!(
            bad(&|f| {
                f[30..34].copy_from_slice(&H3.octets());
                ip_csum_fix(f)
            }),
            NotForUs
        );
        assert_eq!(bad(&|f| f[42] = FLAG_G), BadFlags); // I clear
        assert_eq!(bad(&|f| f[42] |= 0x01), BadFlags); // reserved bit
        assert_eq!(bad(&|f| f[43] |= 0x80), BadFlags); // reserved bit, byte 2
        assert_eq!(bad(&|f| f[49] = 1), BadFlags); // reserved byte
        assert_eq!(bad(&|f| f[42] = FLAG_I), NoPolicy); // plain VXLAN
        assert_eq!(bad(&|f| f[48] ^= 1), BadVni);
        // An encapsulated frame whose inner part is shorter than Ethernet.
        let mut short = good[..OVERHEAD + 13].to_vec();
        let ulen = (8 + 8 + 13) as u16;
        short[38..40].copy_from_slice(&ulen.to_be_bytes());
        short[16..18].copy_from_slice(&(ulen + 20).to_be_bytes());
        ip_csum_fix(&mut short);
        assert_eq!(decap(&short, &cfg()), Err(Malformed));
        // Names are distinct and prefixed.
        let names: std::collections::HashSet<_> = VxlanDrop::ALL.iter().map(|r| r.name()).collect();
        assert_eq!(names.len(), VxlanDrop::COUNT);
        assert!(
            VxlanDrop::ALL
                .iter()
                .enumerate()
                .all(|(i, r)| r.index() == i)
        );
        assert!(names.iter().all(|n| n.starts_with("vxlan_")));
    }

    #[test]
    fn a_valid_udp_checksum_is_accepted() {
        let i = inner(MAC_A, IP_A, 40000);
        let mut f = encap_vec(&under(), &hdr(9), &i);
        let c = udp_checksum(H1, H2, &f[34..]);
        let c = if c == 0 { 0xffff } else { c };
        f[40..42].copy_from_slice(&c.to_be_bytes());
        assert_eq!(udp_checksum(H1, H2, &f[34..]), 0);
        assert_eq!(decap(&f, &cfg()).unwrap().header.policy_id, 9);
        let any = DecapConfig {
            local: None,
            ..cfg()
        };
        assert!(decap(&f, &any).is_ok());
    }

    /// h1 (198.18.0.1) owns A with identity 0x1234; h2 (198.18.0.2) owns B
    /// with identity 0x99; 198.18.0.3 is no live host.
    fn directory() -> DirectoryTable {
        let mut t = DirectoryTable::new(HostId(2));
        t.add_host(HostId(1), SocketAddrV4::new(H1, VXLAN_PORT));
        t.add_host(HostId(2), SocketAddrV4::new(H2, VXLAN_PORT));
        t.add_instance(
            IP_A,
            InstanceInfo {
                host: HostId(1),
                mac: MAC_A,
                identity: 0x1234,
            },
        );
        t.add_instance(
            IP_B,
            InstanceInfo {
                host: HostId(2),
                mac: MAC_B,
                identity: 0x99,
            },
        );
        t
    }

    fn check(
        src_host: Ipv4Addr,
        mac: [u8; 6],
        ip: Ipv4Addr,
        policy: u16,
    ) -> Result<Verified, VxlanDrop> {
        let i = inner(mac, ip, 40000);
        let u = Underlay {
            src_ip: src_host,
            ..under()
        };
        let f = encap_vec(&u, &hdr(policy), &i);
        let d = decap(&f, &cfg()).unwrap();
        check_sender(&directory(), &d)
    }

    #[test]
    fn receive_side_accepts_a_host_s_own_instance() {
        assert_eq!(
            check(H1, MAC_A, IP_A, 0x1234),
            Ok(Verified {
                host: HostId(1),
                src_ip: IP_A,
                identity: 0x1234
            })
        );
    }

    #[test]
    fn receive_side_rejects_forgeries() {
        use VxlanDrop::*;
        // Wrong identity: A's frame claiming B's group set.
        assert_eq!(check(H1, MAC_A, IP_A, 0x99), Err(WrongIdentity));
        assert_eq!(check(H1, MAC_A, IP_A, 0), Err(WrongIdentity));
        // From an address that is no live host, even with everything else right.
        assert_eq!(check(H3, MAC_A, IP_A, 0x1234), Err(UnknownHost));
        // h1 claiming h2's instance B (with B's MAC and identity).
        assert_eq!(check(H1, MAC_B, IP_B, 0x99), Err(ForeignInstance));
        // A's address with another MAC.
        assert_eq!(check(H1, MAC_B, IP_A, 0x1234), Err(SpoofedMac));
        // An address nobody owns.
        assert_eq!(
            check(H1, MAC_A, Ipv4Addr::new(10, 0, 0, 99), 0x1234),
            Err(UnknownInstance)
        );
        // A host whose lease expired is no longer trusted.
        let mut t = directory();
        t.remove_host(H1);
        let f = encap_vec(&under(), &hdr(0x1234), &inner(MAC_A, IP_A, 1));
        assert_eq!(
            check_sender(&t, &decap(&f, &cfg()).unwrap()),
            Err(UnknownHost)
        );
        // ARP, VLAN-tagged and truncated inner frames.
        let mut arp = inner(MAC_A, IP_A, 1);
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        let f = encap_vec(&under(), &hdr(0x1234), &arp);
        assert_eq!(
            check_sender(&directory(), &decap(&f, &cfg()).unwrap()),
            Err(InnerNotIpv4)
        );
        let mut tagged = inner(MAC_A, IP_A, 1);
        tagged[12..14].copy_from_slice(&[0x81, 0x00]);
        let f = encap_vec(&under(), &hdr(0x1234), &tagged);
        assert_eq!(
            check_sender(&directory(), &decap(&f, &cfg()).unwrap()),
            Err(InnerNotIpv4)
        );
        let cut = &inner(MAC_A, IP_A, 1)[..20];
        let f = encap_vec(&under(), &hdr(0x1234), cut);
        assert_eq!(
            check_sender(&directory(), &decap(&f, &cfg()).unwrap()),
            Err(Malformed)
        );
    }

    #[test]
    fn directory_tells_local_from_remote() {
        let mut t = directory();
        // This host (2) is never a trusted sender, even with its own address.
        assert_eq!(t.live_host(H2), None);
        assert_eq!(t.live_host(H1), Some(HostId(1)));
        assert_eq!(t.local(), HostId(2));
        // A is on host 1: remote, reachable at h1's address; B is ours.
        let h1 = SocketAddrV4::new(H1, VXLAN_PORT);
        assert_eq!(
            t.remote_instance(IP_A).map(|(i, a)| (i.mac, a)),
            Some((MAC_A, h1))
        );
        assert!(t.is_remote(IP_A) && !t.is_remote(IP_B));
        assert_eq!(t.remote_instance(IP_B), None);
        assert_eq!(t.local_identity(IP_B), Some(0x99));
        assert_eq!(t.local_identity(IP_A), None, "not ours to send with");
        // A host moving to another address: the old one is no longer trusted.
        let moved = SocketAddrV4::new(H3, 4790);
        t.add_host(HostId(1), moved);
        assert_eq!(t.live_host(H1), None);
        assert_eq!(t.live_host(H3), Some(HostId(1)));
        assert_eq!(t.remote_instance(IP_A).map(|(_, a)| a), Some(moved));
        // Its lease expires: its instances are still remote, but unreachable.
        t.remove_host(H3);
        assert_eq!(t.remote_instance(IP_A), None);
        assert!(t.is_remote(IP_A));
        assert_eq!(t.len(), (1, 2));
        t.remove_instance(IP_A);
        assert!(!t.is_remote(IP_A));
    }

    fn arb_header() -> impl Strategy<Value = GbpHeader> {
        (0..=MAX_VNI, any::<u16>(), any::<bool>(), any::<bool>()).prop_map(
            |(vni, policy_id, dont_learn, policy_applied)| GbpHeader {
                vni,
                policy_id,
                dont_learn,
                policy_applied,
            },
        )
    }

    proptest! {
        #[test]
        fn decap_inverts_encap(
            h in arb_header(),
            src in any::<[u8; 4]>(),
            dst in any::<[u8; 4]>(),
            macs in any::<([u8; 6], [u8; 6])>(),
            port in any::<u16>(),
            ttl in any::<u8>(),
            inner in proptest::collection::vec(any::<u8>(), MIN_INNER..2000),
        ) {
            let u = Underlay {
                src_mac: macs.0,
                dst_mac: macs.1,
                src_ip: src.into(),
                dst_ip: dst.into(),
                dst_port: port,
                ttl,
            };
            let mut out = vec![0u8; inner.len() + OVERHEAD];
            let n = encap(&u, &h, &inner, &mut out).unwrap();
            let c = DecapConfig { vni: h.vni, port, local: Some(dst.into()) };
            let d = decap(&out[..n], &c).unwrap();
            prop_assert_eq!(d.header, h);
            prop_assert_eq!(d.outer_src, Ipv4Addr::from(src));
            prop_assert_eq!(d.inner, &inner[..]);
            prop_assert_eq!(d.src_port, flow_src_port(&inner));
        }

        #[test]
        fn decap_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decap(&bytes, &cfg());
            let _ = decap_udp_payload(&bytes, 42);
            if let Ok(d) = decap(&bytes, &DecapConfig { vni: 42, port: VXLAN_PORT, local: None }) {
                let _ = check_sender(&directory(), &d);
            }
        }

        /// Random bytes behind valid outer headers reach the VXLAN and trust checks.
        #[test]
        fn mutated_frames_never_panic(
            flip in proptest::collection::vec((0usize..120, any::<u8>()), 1..6),
            cut in 0usize..130,
        ) {
            let mut f = encap_vec(&under(), &hdr(0x1234), &inner(MAC_A, IP_A, 40000));
            for (i, b) in flip {
                if i < f.len() { f[i] ^= b; }
            }
            f.truncate(cut.max(1));
            if let Ok(d) = decap(&f, &cfg()) {
                let _ = check_sender(&directory(), &d);
            }
        }
    }

    const IP6_A: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0xff, 0xfe00, 0x0a);
    const IP6_B: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0xff, 0xfe00, 0x0b);

    /// An inner Ethernet/IPv6/UDP frame from `mac`/`ip` to IP6_B.
    fn inner6(mac: [u8; 6], ip: Ipv6Addr, sport: u16) -> Vec<u8> {
        let mut f = Vec::new();
        etherparse::PacketBuilder::ethernet2(mac, MAC_B)
            .ipv6(ip.octets(), IP6_B.octets(), 64)
            .udp(sport, 5555)
            .write(&mut f, b"hello overlay")
            .unwrap();
        f
    }

    fn directory6() -> DirectoryTable {
        let mut t = directory();
        t.add_instance6(IP6_A, IP_A);
        t.add_instance6(IP6_B, IP_B);
        t
    }

    fn check6(dir: &DirectoryTable, inner: &[u8], policy: u16) -> Result<Verified, VxlanDrop> {
        let f = encap_vec(&under(), &hdr(policy), inner);
        check_sender(dir, &decap(&f, &cfg()).unwrap())
    }

    #[test]
    fn receive_side_checks_inner_ipv6_like_ipv4() {
        use VxlanDrop::*;
        let d = directory6();
        // A (h1's) by its IPv6 address, verified as A.
        assert_eq!(
            check6(&d, &inner6(MAC_A, IP6_A, 1), 0x1234),
            Ok(Verified {
                host: HostId(1),
                src_ip: IP_A,
                identity: 0x1234
            })
        );
        assert_eq!(
            check6(&d, &inner6(MAC_A, IP6_A, 1), 0x99),
            Err(WrongIdentity)
        );
        assert_eq!(
            check6(&d, &inner6(MAC_B, IP6_B, 1), 0x99),
            Err(ForeignInstance)
        );
        assert_eq!(
            check6(&d, &inner6(MAC_B, IP6_A, 1), 0x1234),
            Err(SpoofedMac)
        );
        let nobody = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0x99);
        assert_eq!(
            check6(&d, &inner6(MAC_A, nobody, 1), 0x1234),
            Err(UnknownInstance)
        );
        // A directory without IPv6 addresses knows no IPv6 sender.
        assert_eq!(
            check6(&directory(), &inner6(MAC_A, IP6_A, 1), 0x1234),
            Err(UnknownInstance)
        );
        // Housekeeping: link-local source, and neighbor discovery from the
        // instance's own address.
        let ll = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0xff, 0xfe00, 0x0a);
        assert_eq!(
            check6(&d, &inner6(MAC_A, ll, 1), 0x1234),
            Err(InnerHousekeeping)
        );
        let mut ns = vec![0u8; 54 + 24];
        let msg = crate::nd::nd_message(crate::nd::ty::NS, 0, IP6_B, None);
        crate::nd::write_icmp6(&mut ns, MAC_B, MAC_A, IP6_A, IP6_B, &msg);
        assert_eq!(check6(&d, &ns, 0x1234), Err(InnerHousekeeping));
        // Truncated IPv6.
        assert_eq!(
            check6(&d, &inner6(MAC_A, IP6_A, 1)[..40], 0x1234),
            Err(Malformed)
        );
        // Forgetting A forgets its IPv6 address too.
        let mut d = d;
        d.remove_instance(IP_A);
        assert_eq!(d.instance_of6(IP6_A), None);
        assert_eq!(
            check6(&d, &inner6(MAC_A, IP6_A, 1), 0x1234),
            Err(UnknownInstance)
        );
    }

    #[test]
    fn directory_finds_instances_by_ipv6() {
        let mut t = directory6();
        let h1 = SocketAddrV4::new(H1, VXLAN_PORT);
        // Local is host 2: A (host 1) is remote, B is ours.
        assert_eq!(
            t.remote_instance6(IP6_A).map(|(i, a)| (i.mac, a)),
            Some((MAC_A, h1))
        );
        assert!(t.is_remote6(IP6_A) && !t.is_remote6(IP6_B));
        assert_eq!(t.remote_instance6(IP6_B), None);
        assert_eq!(t.instance_of6(IP6_B).map(|(ip, _)| ip), Some(IP_B));
        // Host 1's lease expires: A stays remote, but is unreachable.
        t.remove_host(H1);
        assert_eq!(t.remote_instance6(IP6_A), None);
        assert!(t.is_remote6(IP6_A));
    }

    #[test]
    fn source_port_follows_ipv6_flows() {
        let a = flow_src_port(&inner6(MAC_A, IP6_A, 40000));
        assert_eq!(a, flow_src_port(&inner6(MAC_A, IP6_A, 40000)));
        let ports: std::collections::HashSet<u16> = (0..64)
            .map(|p| flow_src_port(&inner6(MAC_A, IP6_A, 40000 + p)))
            .collect();
        assert!(ports.len() > 56, "poor entropy: {} of 64", ports.len());
    }
}
