//! # filter — the sgswitch security-group engine
//!
//! Pure library: no I/O, no `unsafe`, no locks and no allocation on the per-packet
//! path. It is the one implementation of EC2 security-group semantics that the
//! datapath (`switch`), the control plane (`mgmt`) and the tests all use.
//!
//! Pipeline contract, per frame (the `switch` crate drives it):
//!
//! 1. [`parse::parse_frame`] turns untrusted bytes into a [`parse::Parsed`] view
//!    and a small `Copy` [`Packet`] (flow key + L4 facts), or a [`DropReason`].
//! 2. The switch verifies the sender (source check) — so the source address of a
//!    [`FlowKey`] coming from an instance port is that instance's own address.
//! 3. [`conntrack::Conntrack::judge`] decides, against the current immutable
//!    [`compile::Snapshot`]: a tracked flow (or an ICMP error related to one) passes,
//!    otherwise the destination's compiled ingress rules are asked, and an allowed
//!    first packet creates a flow.
//!
//! The model ([`model::Model`]) holds owners, groups, rules and instances and
//! validates every edit with EC2's error codes ([`model::Ec2Error`]). The compiler
//! ([`compile::compile`]) turns a model into a [`compile::Snapshot`]; the reference
//! evaluator ([`mod@reference`]) is the slow, obviously right statement of the same
//! semantics that the property tests compare against.

#![forbid(unsafe_code)]

pub mod compile;
pub mod conntrack;
pub mod error;
pub mod explain;
pub mod model;
pub mod parse;
pub mod reference;
pub mod wire;

use std::fmt::{Debug, Display};
use std::hash::Hash;
use std::net::{Ipv4Addr, Ipv6Addr};

pub use compile::{Snapshot, compile};
pub use conntrack::{Conntrack, CtConfig, Pass, RevokeMode, Timeouts};
pub use error::ErrorCode;
pub use model::{Ec2Error, Model};
pub use parse::{Parsed, parse_frame};

/// An Ethernet MAC address.
pub type Mac = [u8; 6];

/// IP protocol numbers used throughout.
pub mod proto {
    pub const ICMP: u8 = 1;
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
    pub const ICMPV6: u8 = 58;
}

/// An IP address family's address type: [`Ipv4Addr`] or [`Ipv6Addr`]. The
/// packet facts ([`FlowKey`], [`L4`], [`Packet`]) are generic over it and
/// default to IPv4, so IPv4 code names them without a parameter and IPv6 code
/// writes `Packet<Ipv6Addr>` ([`Packet6`]).
pub trait IpAddress: Copy + Eq + Ord + Hash + Debug + Display + Send + Sync + 'static {}
impl IpAddress for Ipv4Addr {}
impl IpAddress for Ipv6Addr {}

/// The 5-tuple of an IP packet, as the classifier and connection tracking see it.
///
/// * TCP/UDP: `sport`/`dport` are the ports.
/// * ICMP queries (echo, timestamp, info, address mask, requests and replies):
///   `sport == dport == identifier`, so that a reply's key is the exact reverse of
///   its request's key.
/// * Other ICMP messages and other IP protocols: both ports are 0 (tracked by
///   address pair and protocol).
/// * Non-first IP fragments: both ports are 0 and [`Packet::frag`] says so.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowKey<A = Ipv4Addr> {
    pub src: A,
    pub dst: A,
    pub proto: u8,
    pub sport: u16,
    pub dport: u16,
}

impl<A: Copy> FlowKey<A> {
    /// The key of the opposite direction.
    #[inline]
    pub fn reversed(&self) -> FlowKey<A> {
        FlowKey {
            src: self.dst,
            dst: self.src,
            proto: self.proto,
            sport: self.dport,
            dport: self.sport,
        }
    }
}

/// Fragmentation facts of an IP packet (IPv4 flags/offset, or an IPv6
/// fragment header).
///
/// Decision (documented in `conntrack`): a first fragment (offset 0, more
/// fragments follow) is judged like a whole packet by its L4 header, which must
/// be complete in that fragment; when it passes, the fragment train is remembered
/// for a short time: `(src, dst, proto, id)` for IPv4, `(src, dst, id)` for IPv6
/// (whose 32-bit id is unique per address pair, and whose fragment header names
/// the first header of the fragmentable part, not necessarily the L4 protocol).
/// A non-first fragment carries no ports, so it passes only if its train was
/// let through; otherwise it is dropped with [`DropReason::UnmatchedFragment`].
/// An IPv6 atomic fragment (fragment header with offset 0 and no more
/// fragments, RFC 6946) is [`Frag::None`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Frag {
    /// Not fragmented.
    None,
    /// Offset 0, more fragments follow; `id` is the IPv4 identification (16
    /// bits) or the IPv6 fragment header's identification (32 bits).
    First { id: u32 },
    /// Offset > 0.
    Later { id: u32 },
}

/// What an ICMP message is, as far as filtering cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IcmpKind<A = Ipv4Addr> {
    /// A query (echo, timestamp, ...) request: may open a flow.
    Request,
    /// A query reply: passes only as the reply of a tracked request (or by rule).
    Reply,
    /// An error (unreachable, time exceeded, parameter problem, source quench,
    /// redirect); `inner` is the flow key of the embedded original datagram as it
    /// was sent (so its `src` is normally this error's `dst`).
    Error { inner: FlowKey<A> },
    /// Anything else (router advertisement, ...): judged by rules only.
    Other,
}

/// The L4 facts of a packet that filtering needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum L4<A = Ipv4Addr> {
    Tcp {
        flags: u8,
    },
    Udp,
    Icmp {
        ty: u8,
        code: u8,
        kind: IcmpKind<A>,
    },
    /// Other IP protocol, or a non-first fragment of any protocol.
    Other,
}

/// TCP flag bits as in the header.
pub mod tcp_flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;
}

/// A parsed IP packet reduced to what the classifier and conntrack need. `Copy`,
/// 32 bytes-ish; built by [`parse::parse_frame`] or directly by tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Packet<A = Ipv4Addr> {
    pub key: FlowKey<A>,
    pub l4: L4<A>,
    pub frag: Frag,
}

/// An IPv6 flow key.
pub type FlowKey6 = FlowKey<Ipv6Addr>;
/// An IPv6 packet's facts.
pub type Packet6 = Packet<Ipv6Addr>;

/// Why a frame was dropped. One counter per variant in the datapath.
///
/// Parse reasons come from [`parse`], policy reasons from [`conntrack`], the rest
/// from the switch (they live here so that there is one list and one counter array).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum DropReason {
    // --- parse ---
    /// Shorter than an Ethernet header.
    TruncatedEthernet,
    /// 802.1Q tag announced but not present in full.
    TruncatedVlan,
    /// Not IPv4, IPv6 or ARP (the switch also counts here the IPv6 frames it
    /// does not handle yet).
    UnsupportedEthertype,
    /// ARP shorter than 28 bytes after the Ethernet header.
    TruncatedArp,
    /// ARP that is not Ethernet/IPv4 (htype 1, ptype 0x0800, hlen 6, plen 4) or has
    /// an opcode other than request/reply.
    MalformedArp,
    /// Shorter than the IPv4 header it announces, or total length beyond the frame.
    TruncatedIpv4,
    /// IP version not 4, header length < 20, total length < header length.
    MalformedIpv4,
    /// A TCP/UDP/ICMP/ICMPv6 header cut short (in a whole packet or a first
    /// fragment), or an ICMP error whose quote cannot be related to a flow.
    TruncatedL4,
    /// A first fragment too small to hold its L4 header, or a TCP fragment at
    /// offset 8 bytes (RFC 1858 overlap attack).
    TinyFragment,
    // --- policy (conntrack + snapshot) ---
    /// No rule of the destination's groups allows it and no tracked flow matches.
    NoRule,
    /// Belonged to a tracked flow whose permission was revoked (revalidate mode).
    Revoked,
    /// An ICMP error that does not refer to a tracked flow.
    UnrelatedIcmpError,
    /// A non-first fragment whose first fragment was not let through.
    UnmatchedFragment,
    /// The connection table is full.
    ConntrackFull,
    /// The instance that would own the new flow has used its quota of flows.
    ConntrackQuota,
    // --- switch ---
    /// Source MAC is not the sending instance's.
    SpoofedMac,
    /// Source IPv4 is not the sending instance's.
    SpoofedIp,
    /// ARP sender MAC/IP is not the sending instance's.
    SpoofedArp,
    /// A frame from the uplink claims an instance's address.
    UplinkSpoof,
    /// A DHCP server message (or other BOOTP reply) sent by an instance.
    RogueDhcp,
    /// An 802.1Q-tagged frame from an instance port (instances are untagged).
    VlanTagged,
    /// No instance (or uplink route) for the destination; never flooded.
    UnknownDestination,
    /// Broadcast/multicast that the switch does not answer itself.
    Broadcast,
    /// The destination port's queue is full or its write failed.
    TxFailed,
    /// The destination port has gone (namespace deleted, interface removed).
    PortGone,
    /// The sender's virtio-net header asks for offload work that does not fit
    /// the frame the verdict was given for (a partial checksum anywhere but the
    /// TCP/UDP checksum field, segmentation of another protocol, a tiny segment
    /// size): completing it would rewrite judged header bytes.
    BadOffload,
    /// A new flow from an instance that no egress rule of its groups allows
    /// (and no tracked flow matches). Added after the list above.
    NoEgressRule,
    // --- IPv6 (added later, appended to keep counter order) ---
    /// Shorter than the 40-byte IPv6 header, or a payload length beyond the frame.
    TruncatedIpv6,
    /// IP version not 6 in an IPv6 ethertype frame, or an IPv6 packet longer
    /// than 65,535 bytes in all (payload length above 65,495).
    MalformedIpv6,
    /// An IPv6 extension-header chain that is cut short, longer than the walk
    /// bound, or holds a header the switch refuses (routing type 0, ...).
    BadIpv6ExtHeader,
    /// A router advertisement or redirect sent by an instance (RA guard: only
    /// the switch advertises).
    RogueRouterAdvert,
    /// A neighbor solicitation/advertisement from an instance whose source or
    /// target address is not the instance's own (or its link-local).
    SpoofedNd,
}

impl DropReason {
    /// Every reason, in counter order.
    pub const ALL: [DropReason; 32] = [
        DropReason::TruncatedEthernet,
        DropReason::TruncatedVlan,
        DropReason::UnsupportedEthertype,
        DropReason::TruncatedArp,
        DropReason::MalformedArp,
        DropReason::TruncatedIpv4,
        DropReason::MalformedIpv4,
        DropReason::TruncatedL4,
        DropReason::TinyFragment,
        DropReason::NoRule,
        DropReason::Revoked,
        DropReason::UnrelatedIcmpError,
        DropReason::UnmatchedFragment,
        DropReason::ConntrackFull,
        DropReason::ConntrackQuota,
        DropReason::SpoofedMac,
        DropReason::SpoofedIp,
        DropReason::SpoofedArp,
        DropReason::UplinkSpoof,
        DropReason::RogueDhcp,
        DropReason::VlanTagged,
        DropReason::UnknownDestination,
        DropReason::Broadcast,
        DropReason::TxFailed,
        DropReason::PortGone,
        DropReason::BadOffload,
        DropReason::NoEgressRule,
        DropReason::TruncatedIpv6,
        DropReason::MalformedIpv6,
        DropReason::BadIpv6ExtHeader,
        DropReason::RogueRouterAdvert,
        DropReason::SpoofedNd,
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
            DropReason::TruncatedEthernet => "truncated_ethernet",
            DropReason::TruncatedVlan => "truncated_vlan",
            DropReason::UnsupportedEthertype => "unsupported_ethertype",
            DropReason::TruncatedArp => "truncated_arp",
            DropReason::MalformedArp => "malformed_arp",
            DropReason::TruncatedIpv4 => "truncated_ipv4",
            DropReason::MalformedIpv4 => "malformed_ipv4",
            DropReason::TruncatedL4 => "truncated_l4",
            DropReason::TinyFragment => "tiny_fragment",
            DropReason::NoRule => "no_rule",
            DropReason::Revoked => "revoked",
            DropReason::UnrelatedIcmpError => "unrelated_icmp_error",
            DropReason::UnmatchedFragment => "unmatched_fragment",
            DropReason::ConntrackFull => "conntrack_full",
            DropReason::ConntrackQuota => "conntrack_quota",
            DropReason::SpoofedMac => "spoofed_mac",
            DropReason::SpoofedIp => "spoofed_ip",
            DropReason::SpoofedArp => "spoofed_arp",
            DropReason::UplinkSpoof => "uplink_spoof",
            DropReason::RogueDhcp => "rogue_dhcp",
            DropReason::VlanTagged => "vlan_tagged",
            DropReason::UnknownDestination => "unknown_destination",
            DropReason::Broadcast => "broadcast",
            DropReason::TxFailed => "tx_failed",
            DropReason::PortGone => "port_gone",
            DropReason::BadOffload => "bad_offload",
            DropReason::NoEgressRule => "no_egress_rule",
            DropReason::TruncatedIpv6 => "truncated_ipv6",
            DropReason::MalformedIpv6 => "malformed_ipv6",
            DropReason::BadIpv6ExtHeader => "bad_ipv6_ext_header",
            DropReason::RogueRouterAdvert => "rogue_router_advert",
            DropReason::SpoofedNd => "spoofed_nd",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drop_reason_indices_are_dense_and_names_unique() {
        for (i, r) in DropReason::ALL.iter().enumerate() {
            assert_eq!(r.index(), i);
        }
        let mut names: Vec<_> = DropReason::ALL.iter().map(|r| r.name()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), DropReason::COUNT);
    }
}
