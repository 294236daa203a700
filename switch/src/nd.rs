//! IPv6 housekeeping on the switch's segment: neighbor discovery (RFC 4861),
//! router advertisements for SLAAC (RFC 4862) and what guests send by default
//! (router solicitations, duplicate address detection, MLD reports).
//!
//! Contract:
//! * [`parse`] reads an untagged Ethernet/IPv6 frame from raw bytes: the fixed
//!   header, a hop-by-hop options header if one follows (MLD reports carry
//!   Router Alert in one), and the ICMPv6 message type after it. It never
//!   panics; a frame too short for what its headers say is
//!   [`DropReason::TruncatedIpv6`], a version other than 6
//!   [`DropReason::MalformedIpv6`].
//! * [`classify`] judges an ICMPv6 housekeeping message ([`is_housekeeping`]:
//!   MLD 130–132 and 143, RS 133, RA 134, NS 135, NA 136, redirect 137) from
//!   an instance whose MAC and addresses are given, and says what the switch
//!   does with it ([`Nd`]). RA guard: an RA or redirect from an instance is
//!   [`DropReason::RogueRouterAdvert`]. An NS or NA whose IPv6 source, target
//!   or link-layer option is not the instance's own (its address in the
//!   switch's /64, its link-local `fe80::` + EUI-64, or `::` for DAD) is
//!   [`DropReason::SpoofedNd`]; an RS or MLD report from another source is
//!   [`DropReason::SpoofedIp`]. What is left is answered (an RS with an RA,
//!   an NS for another address with an NA when the caller knows the target)
//!   or absorbed: DAD probes for one's own address, MLD reports, unsolicited
//!   NAs — never flooded, never counted as drops.
//! * [`write_ra`] and [`write_na`] write the whole reply frame into a caller
//!   buffer (no allocation) and return its length. The switch is the segment's
//!   router: its link-local address is the EUI-64 of [`GATEWAY_MAC`]
//!   ([`router_ll`]); its address in the /64 is `prefix::1` ([`router_addr`]).
//!   RAs advertise the /64 with the on-link and autonomous flags (SLAAC), a
//!   router lifetime of [`ROUTER_LIFETIME`] s, and the router's MAC.

use std::net::Ipv6Addr;

use filter::model::{eui64_address, link_local_address};
use filter::{DropReason, Mac};
use ipnet::Ipv6Net;

use crate::arp::GATEWAY_MAC;
use crate::offload::{fold, sum};

pub const ETHERTYPE_IPV6: u16 = 0x86dd;
/// IPv6 next-header numbers used here.
pub const NH_HOP_BY_HOP: u8 = 0;
pub const NH_ICMPV6: u8 = 58;

/// ICMPv6 message types.
pub mod ty {
    pub const MLD_QUERY: u8 = 130;
    pub const MLD_REPORT: u8 = 131;
    pub const MLD_DONE: u8 = 132;
    pub const RS: u8 = 133;
    pub const RA: u8 = 134;
    pub const NS: u8 = 135;
    pub const NA: u8 = 136;
    pub const REDIRECT: u8 = 137;
    pub const MLD2_REPORT: u8 = 143;
}

/// Router lifetime advertised, seconds.
pub const ROUTER_LIFETIME: u16 = 1800;
/// Valid and preferred lifetimes of the advertised prefix, seconds.
pub const PREFIX_VALID: u32 = 86_400;
pub const PREFIX_PREFERRED: u32 = 14_400;
/// Length of an RA frame written by [`write_ra`]: Ethernet 14 + IPv6 40 +
/// RA 16 + source link-layer option 8 + prefix option 32.
pub const RA_LEN: usize = 14 + 40 + 16 + 8 + 32;
/// Length of an NA frame written by [`write_na`]: Ethernet 14 + IPv6 40 +
/// NA 24 + target link-layer option 8.
pub const NA_LEN: usize = 14 + 40 + 24 + 8;

const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);

/// The switch's link-local router address (EUI-64 of [`GATEWAY_MAC`]).
pub fn router_ll() -> Ipv6Addr {
    link_local_address(GATEWAY_MAC)
}

/// The switch's router address in the /64: `prefix::1`.
pub fn router_addr(prefix: Ipv6Net) -> Ipv6Addr {
    let mut b = prefix.network().octets();
    b[15] = 1;
    Ipv6Addr::from(b)
}

/// The link-local and (with a prefix) global address of an instance's MAC.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Own {
    pub mac: Mac,
    pub ll: Ipv6Addr,
    pub global: Option<Ipv6Addr>,
}

impl Own {
    pub fn of(mac: Mac, prefix: Option<Ipv6Net>) -> Own {
        Own {
            mac,
            ll: link_local_address(mac),
            global: prefix.map(|p| eui64_address(p, mac)),
        }
    }

    #[inline]
    fn is_own(&self, a: Ipv6Addr) -> bool {
        a == self.ll || Some(a) == self.global
    }
}

/// The parts of an IPv6 frame the housekeeping needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct V6<'a> {
    pub eth_src: Mac,
    pub eth_dst: Mac,
    pub src: Ipv6Addr,
    pub dst: Ipv6Addr,
    pub hop_limit: u8,
    /// The upper-layer protocol after an optional hop-by-hop header.
    pub proto: u8,
    /// The upper-layer message (cut to the payload length).
    pub l4: &'a [u8],
}

impl V6<'_> {
    /// The ICMPv6 type, if this is ICMPv6 with at least a type byte.
    #[inline]
    pub fn icmp_type(&self) -> Option<u8> {
        (self.proto == NH_ICMPV6).then(|| self.l4.first().copied())?
    }
}

/// Whether the untagged frame is IPv6 (ethertype 0x86DD).
#[inline]
pub fn is_ipv6(frame: &[u8]) -> bool {
    frame.len() >= 14 && u16::from_be_bytes([frame[12], frame[13]]) == ETHERTYPE_IPV6
}

fn addr(b: &[u8]) -> Ipv6Addr {
    let mut a = [0u8; 16];
    a.copy_from_slice(&b[..16]);
    Ipv6Addr::from(a)
}

fn mac(b: &[u8]) -> Mac {
    let mut m = [0u8; 6];
    m.copy_from_slice(&b[..6]);
    m
}

/// Parse an untagged Ethernet/IPv6 frame (see the module docs).
pub fn parse(frame: &[u8]) -> Result<V6<'_>, DropReason> {
    if !is_ipv6(frame) || frame.len() < 14 + 40 {
        return Err(DropReason::TruncatedIpv6);
    }
    let ip = &frame[14..];
    if ip[0] >> 4 != 6 {
        return Err(DropReason::MalformedIpv6);
    }
    let plen = usize::from(u16::from_be_bytes([ip[4], ip[5]]));
    let payload = ip.get(40..40 + plen).ok_or(DropReason::TruncatedIpv6)?;
    let mut proto = ip[6];
    let mut l4 = payload;
    if proto == NH_HOP_BY_HOP {
        if l4.len() < 8 {
            return Err(DropReason::TruncatedIpv6);
        }
        let len = (usize::from(l4[1]) + 1) * 8;
        proto = l4[0];
        l4 = l4.get(len..).ok_or(DropReason::TruncatedIpv6)?;
    }
    Ok(V6 {
        eth_dst: mac(&frame[0..6]),
        eth_src: mac(&frame[6..12]),
        src: addr(&ip[8..24]),
        dst: addr(&ip[24..40]),
        hop_limit: ip[7],
        proto,
        l4,
    })
}

/// Whether an ICMPv6 type is neighbor discovery or MLD (handled by the
/// switch itself, never forwarded).
#[inline]
pub fn is_housekeeping(t: u8) -> bool {
    matches!(t, ty::MLD_QUERY..=ty::REDIRECT | ty::MLD2_REPORT)
}

/// What the switch does with a housekeeping message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Nd {
    /// Answer with a router advertisement to `mac`/`ip`.
    Advertise { mac: Mac, ip: Ipv6Addr },
    /// A neighbor solicitation for `target` from `mac`/`ip`: answered if the
    /// caller knows the target, absorbed otherwise.
    Solicit {
        mac: Mac,
        ip: Ipv6Addr,
        target: Ipv6Addr,
    },
    /// Consumed without an answer (DAD, MLD, unsolicited NA, RS without a
    /// prefix to advertise).
    Absorb,
}

/// The target of an NS/NA (bytes 8..24 of the message).
fn target(l4: &[u8]) -> Result<Ipv6Addr, DropReason> {
    l4.get(8..24).map(addr).ok_or(DropReason::TruncatedIpv6)
}

/// The link-layer address option of `kind` (1 source, 2 target) in the
/// options of an ND message starting at `from`, if present.
fn ll_option(l4: &[u8], from: usize, kind: u8) -> Result<Option<Mac>, DropReason> {
    let mut opts = l4.get(from..).unwrap_or(&[]);
    let mut found = None;
    // Each option is at least 8 bytes: at most len/8 iterations.
    while !opts.is_empty() {
        if opts.len() < 8 {
            return Err(DropReason::MalformedIpv6);
        }
        let len = usize::from(opts[1]) * 8;
        if len == 0 || len > opts.len() {
            return Err(DropReason::MalformedIpv6);
        }
        if opts[0] == kind && len >= 8 {
            found = Some(mac(&opts[2..8]));
        }
        opts = &opts[len..];
    }
    Ok(found)
}

/// Judge a housekeeping message `v` (its ICMPv6 type is `t`) from an
/// instance (see the module docs).
pub fn classify(v: &V6<'_>, t: u8, own: &Own) -> Result<Nd, DropReason> {
    let unspecified = v.src.is_unspecified();
    match t {
        ty::RA | ty::REDIRECT => Err(DropReason::RogueRouterAdvert),
        ty::RS => {
            if !(unspecified || own.is_own(v.src)) {
                return Err(DropReason::SpoofedIp);
            }
            if ll_option(v.l4, 8, 1)?.is_some_and(|m| m != own.mac) {
                return Err(DropReason::SpoofedNd);
            }
            Ok(Nd::Advertise {
                mac: own.mac,
                ip: if unspecified { ALL_NODES } else { v.src },
            })
        }
        ty::NS => {
            let target = target(v.l4)?;
            if !(unspecified || own.is_own(v.src)) {
                return Err(DropReason::SpoofedNd);
            }
            let sll = ll_option(v.l4, 24, 1)?;
            if unspecified {
                // DAD (RFC 4862 §5.4): only for one's own address, never
                // with a link-layer option.
                if !own.is_own(target) || sll.is_some() {
                    return Err(DropReason::SpoofedNd);
                }
                return Ok(Nd::Absorb);
            }
            if sll.is_some_and(|m| m != own.mac) {
                return Err(DropReason::SpoofedNd);
            }
            if own.is_own(target) {
                return Ok(Nd::Absorb);
            }
            Ok(Nd::Solicit {
                mac: own.mac,
                ip: v.src,
                target,
            })
        }
        ty::NA => {
            let target = target(v.l4)?;
            if !own.is_own(v.src) || !own.is_own(target) {
                return Err(DropReason::SpoofedNd);
            }
            if ll_option(v.l4, 24, 2)?.is_some_and(|m| m != own.mac) {
                return Err(DropReason::SpoofedNd);
            }
            Ok(Nd::Absorb)
        }
        // MLD: from the link-local address, or `::` while DAD runs (RFC 3810
        // §5.2.13); absorbed (the switch forwards no multicast).
        _ => {
            if !(unspecified || own.is_own(v.src)) {
                return Err(DropReason::SpoofedIp);
            }
            Ok(Nd::Absorb)
        }
    }
}

/// The ICMPv6 checksum of `msg` (its checksum field zero) between `src` and `dst`.
pub fn icmp6_checksum(src: Ipv6Addr, dst: Ipv6Addr, msg: &[u8]) -> u16 {
    let mut acc = sum(&src.octets(), 0);
    acc = sum(&dst.octets(), acc);
    acc = sum(&(msg.len() as u32).to_be_bytes(), acc);
    acc = sum(&[0, 0, 0, NH_ICMPV6], acc);
    acc = sum(msg, acc);
    !fold(acc)
}

/// Write Ethernet + IPv6 headers for an ICMPv6 message of `len` bytes.
fn write_headers(
    f: &mut [u8],
    dst_mac: Mac,
    src_mac: Mac,
    src: Ipv6Addr,
    dst: Ipv6Addr,
    len: usize,
) {
    f[0..6].copy_from_slice(&dst_mac);
    f[6..12].copy_from_slice(&src_mac);
    f[12..14].copy_from_slice(&ETHERTYPE_IPV6.to_be_bytes());
    f[14..18].copy_from_slice(&[0x60, 0, 0, 0]);
    f[18..20].copy_from_slice(&(len as u16).to_be_bytes());
    f[20] = NH_ICMPV6;
    f[21] = 255;
    f[22..38].copy_from_slice(&src.octets());
    f[38..54].copy_from_slice(&dst.octets());
}

fn finish_checksum(f: &mut [u8], src: Ipv6Addr, dst: Ipv6Addr) {
    let c = icmp6_checksum(src, dst, &f[54..]);
    f[56..58].copy_from_slice(&c.to_be_bytes());
}

/// Multicast MAC of an IPv6 multicast address (33:33 + its low 32 bits).
pub fn multicast_mac(a: Ipv6Addr) -> Mac {
    let o = a.octets();
    [0x33, 0x33, o[12], o[13], o[14], o[15]]
}

/// Write a router advertisement of `prefix` to `to_mac`/`to_ip` (see the
/// module docs). `out` must hold [`RA_LEN`] bytes.
pub fn write_ra(out: &mut [u8], to_mac: Mac, to_ip: Ipv6Addr, prefix: Ipv6Net) -> usize {
    let f = &mut out[..RA_LEN];
    let src = router_ll();
    let dst_mac = if to_ip.is_multicast() {
        multicast_mac(to_ip)
    } else {
        to_mac
    };
    write_headers(f, dst_mac, GATEWAY_MAC, src, to_ip, RA_LEN - 54);
    let m = &mut f[54..];
    m[0] = ty::RA;
    m[1] = 0;
    m[2..4].copy_from_slice(&[0, 0]);
    m[4] = 64; // current hop limit
    m[5] = 0; // no DHCPv6 (M/O clear): SLAAC only
    m[6..8].copy_from_slice(&ROUTER_LIFETIME.to_be_bytes());
    m[8..16].fill(0); // reachable time, retrans timer: unspecified
    // Source link-layer address.
    m[16] = 1;
    m[17] = 1;
    m[18..24].copy_from_slice(&GATEWAY_MAC);
    // Prefix information: on-link + autonomous.
    let p = &mut m[24..56];
    p[0] = 3;
    p[1] = 4;
    p[2] = prefix.prefix_len();
    p[3] = 0xc0;
    p[4..8].copy_from_slice(&PREFIX_VALID.to_be_bytes());
    p[8..12].copy_from_slice(&PREFIX_PREFERRED.to_be_bytes());
    p[12..16].fill(0);
    p[16..32].copy_from_slice(&prefix.network().octets());
    finish_checksum(f, src, to_ip);
    RA_LEN
}

/// Write the solicited neighbor advertisement saying that `target` is at
/// `answer_mac`, to `to_mac`/`to_ip` (`router`: the R flag). `out` must hold
/// [`NA_LEN`] bytes.
pub fn write_na(
    out: &mut [u8],
    to_mac: Mac,
    to_ip: Ipv6Addr,
    target: Ipv6Addr,
    answer_mac: Mac,
    router: bool,
) -> usize {
    let f = &mut out[..NA_LEN];
    write_headers(f, to_mac, answer_mac, target, to_ip, NA_LEN - 54);
    let m = &mut f[54..];
    m[0] = ty::NA;
    m[1] = 0;
    m[2..4].copy_from_slice(&[0, 0]);
    // R (router), S (solicited), O (override).
    m[4] = if router { 0xe0 } else { 0x60 };
    m[5..8].fill(0);
    m[8..24].copy_from_slice(&target.octets());
    m[24] = 2;
    m[25] = 1;
    m[26..32].copy_from_slice(&answer_mac);
    finish_checksum(f, target, to_ip);
    NA_LEN
}

/// Build an ICMPv6 frame from `src_mac`/`src` to `dst_mac`/`dst` with the
/// message `msg` (its checksum filled in here); for tests and tools.
pub fn write_icmp6(
    out: &mut [u8],
    dst_mac: Mac,
    src_mac: Mac,
    src: Ipv6Addr,
    dst: Ipv6Addr,
    msg: &[u8],
) -> usize {
    let n = 54 + msg.len();
    let f = &mut out[..n];
    write_headers(f, dst_mac, src_mac, src, dst, msg.len());
    f[54..].copy_from_slice(msg);
    f[56..58].fill(0);
    finish_checksum(f, src, dst);
    n
}

/// An NS/NA message body: `t`, flags, `target`, and a link-layer option
/// (`opt_kind` 1 source / 2 target) with `ll` if given; for tests and tools.
pub fn nd_message(t: u8, flags: u8, target: Ipv6Addr, ll: Option<(u8, Mac)>) -> Vec<u8> {
    let mut m = vec![t, 0, 0, 0, flags, 0, 0, 0];
    m.extend_from_slice(&target.octets());
    if let Some((kind, mac)) = ll {
        m.extend_from_slice(&[kind, 1]);
        m.extend_from_slice(&mac);
    }
    m
}

/// The solicited-node multicast address of `a` (ff02::1:ffXX:XXXX).
pub fn solicited_node(a: Ipv6Addr) -> Ipv6Addr {
    let o = a.octets();
    Ipv6Addr::from([
        0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xff, o[13], o[14], o[15],
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    const ME: Mac = [2, 0, 0, 0, 0, 7];
    const OTHER: Mac = [2, 0, 0, 0, 0, 8];

    fn prefix() -> Ipv6Net {
        "fd12:3456:789a::/64".parse().unwrap()
    }

    fn own() -> Own {
        Own::of(ME, Some(prefix()))
    }

    fn frame(src: Ipv6Addr, dst: Ipv6Addr, msg: &[u8]) -> Vec<u8> {
        let mut b = vec![0u8; 54 + msg.len()];
        write_icmp6(&mut b, multicast_mac(dst), ME, src, dst, msg);
        b
    }

    fn judge(src: Ipv6Addr, dst: Ipv6Addr, msg: &[u8]) -> Result<Nd, DropReason> {
        let f = frame(src, dst, msg);
        let v = parse(&f)?;
        classify(&v, v.icmp_type().unwrap(), &own())
    }

    #[test]
    fn router_solicitation_is_answered_with_the_prefix() {
        let o = own();
        let rs = [ty::RS, 0, 0, 0, 0, 0, 0, 0, 1, 1, 2, 0, 0, 0, 0, 7];
        let router_all = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 2);
        assert_eq!(
            judge(o.ll, router_all, &rs),
            Ok(Nd::Advertise { mac: ME, ip: o.ll })
        );
        assert_eq!(
            judge(Ipv6Addr::UNSPECIFIED, router_all, &rs[..8]),
            Ok(Nd::Advertise {
                mac: ME,
                ip: ALL_NODES
            })
        );
        let mut out = [0u8; 256];
        let n = write_ra(&mut out, ME, o.ll, prefix());
        let v = parse(&out[..n]).unwrap();
        assert_eq!((v.eth_dst, v.eth_src), (ME, GATEWAY_MAC));
        assert_eq!((v.src, v.dst, v.hop_limit), (router_ll(), o.ll, 255));
        assert_eq!(v.icmp_type(), Some(ty::RA));
        assert_eq!(icmp6_checksum(v.src, v.dst, v.l4), 0, "checksum verifies");
        assert_eq!(&v.l4[24..28], &[3, 4, 64, 0xc0]);
        assert_eq!(&v.l4[40..56], &prefix().network().octets());
        assert_eq!(u16::from_be_bytes([v.l4[6], v.l4[7]]), ROUTER_LIFETIME);
        // Unsolicited / from `::`: to all nodes.
        let n = write_ra(&mut out, ME, ALL_NODES, prefix());
        assert_eq!(&out[..6], &[0x33, 0x33, 0, 0, 0, 1]);
        assert_eq!(n, RA_LEN);
    }

    #[test]
    fn neighbor_solicitations() {
        let o = own();
        let g = o.global.unwrap();
        let peer = eui64_address(prefix(), OTHER);
        let ns = |t, ll| nd_message(ty::NS, 0, t, ll);
        // For another address, from one's own: a question to answer.
        assert_eq!(
            judge(g, solicited_node(peer), &ns(peer, Some((1, ME)))),
            Ok(Nd::Solicit {
                mac: ME,
                ip: g,
                target: peer
            })
        );
        assert_eq!(
            judge(o.ll, solicited_node(router_ll()), &ns(router_ll(), None)),
            Ok(Nd::Solicit {
                mac: ME,
                ip: o.ll,
                target: router_ll()
            })
        );
        // DAD for one's own address: absorbed; for another's: forged.
        let un = Ipv6Addr::UNSPECIFIED;
        assert_eq!(judge(un, solicited_node(g), &ns(g, None)), Ok(Nd::Absorb));
        assert_eq!(
            judge(un, solicited_node(peer), &ns(peer, None)),
            Err(DropReason::SpoofedNd)
        );
        // Another's source, or another's MAC in the option: forged.
        assert_eq!(
            judge(peer, solicited_node(g), &ns(router_ll(), None)),
            Err(DropReason::SpoofedNd)
        );
        assert_eq!(
            judge(g, solicited_node(peer), &ns(peer, Some((1, OTHER)))),
            Err(DropReason::SpoofedNd)
        );
        // Truncated and bad options.
        assert_eq!(
            judge(g, solicited_node(peer), &ns(peer, None)[..20]),
            Err(DropReason::TruncatedIpv6)
        );
        let mut bad = ns(peer, Some((1, ME)));
        bad[25] = 0;
        assert_eq!(
            judge(g, solicited_node(peer), &bad),
            Err(DropReason::MalformedIpv6)
        );
    }

    #[test]
    fn advertisements_and_router_messages_from_guests() {
        let o = own();
        let g = o.global.unwrap();
        let peer = eui64_address(prefix(), OTHER);
        let na = |t, ll| nd_message(ty::NA, 0x20, t, ll);
        assert_eq!(judge(g, ALL_NODES, &na(g, Some((2, ME)))), Ok(Nd::Absorb));
        assert_eq!(judge(o.ll, ALL_NODES, &na(o.ll, None)), Ok(Nd::Absorb));
        for (src, t, ll) in [
            (g, peer, Some((2, ME))),
            (peer, peer, None),
            (g, router_ll(), None),
            (g, g, Some((2, OTHER))),
            (Ipv6Addr::UNSPECIFIED, g, None),
        ] {
            assert_eq!(
                judge(src, ALL_NODES, &na(t, ll)),
                Err(DropReason::SpoofedNd),
                "{src} {t} {ll:?}"
            );
        }
        let ra = [ty::RA, 0, 0, 0, 64, 0, 7, 8, 0, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(
            judge(o.ll, ALL_NODES, &ra),
            Err(DropReason::RogueRouterAdvert)
        );
        let redirect = nd_message(ty::REDIRECT, 0, peer, None);
        assert_eq!(
            judge(o.ll, g, &redirect),
            Err(DropReason::RogueRouterAdvert)
        );
    }

    #[test]
    fn mld_reports_behind_hop_by_hop_are_absorbed() {
        let o = own();
        let dst = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 0x16);
        let report = [ty::MLD2_REPORT, 0, 0, 0, 0, 0, 0, 0];
        let mut f = frame(o.ll, dst, &report);
        // Insert a hop-by-hop header with Router Alert (8 bytes) before ICMPv6.
        let hbh = [NH_ICMPV6, 0, 5, 2, 0, 0, 1, 0];
        f[20] = NH_HOP_BY_HOP;
        f.splice(54..54, hbh);
        let len = (report.len() + 8) as u16;
        f[18..20].copy_from_slice(&len.to_be_bytes());
        let v = parse(&f).unwrap();
        assert_eq!(v.icmp_type(), Some(ty::MLD2_REPORT));
        assert!(is_housekeeping(ty::MLD2_REPORT));
        assert_eq!(classify(&v, ty::MLD2_REPORT, &own()), Ok(Nd::Absorb));
        let peer = eui64_address(prefix(), OTHER);
        let v2 = V6 { src: peer, ..v };
        assert_eq!(
            classify(&v2, ty::MLD2_REPORT, &own()),
            Err(DropReason::SpoofedIp)
        );
        // A payload length beyond the frame: truncated.
        f[18..20].copy_from_slice(&999u16.to_be_bytes());
        assert_eq!(parse(&f), Err(DropReason::TruncatedIpv6));
    }

    #[test]
    fn neighbor_advertisement_answer() {
        let o = own();
        let g = o.global.unwrap();
        let peer = eui64_address(prefix(), OTHER);
        let mut out = [0u8; 128];
        let n = write_na(&mut out, ME, g, peer, OTHER, false);
        let v = parse(&out[..n]).unwrap();
        assert_eq!((v.eth_dst, v.eth_src, v.src, v.dst), (ME, OTHER, peer, g));
        assert_eq!(icmp6_checksum(v.src, v.dst, v.l4), 0);
        assert_eq!(v.l4[4], 0x60);
        assert_eq!(target(v.l4), Ok(peer));
        assert_eq!(ll_option(v.l4, 24, 2), Ok(Some(OTHER)));
        let n = write_na(&mut out, ME, g, router_ll(), GATEWAY_MAC, true);
        assert_eq!(out[54 + 4], 0xe0);
        assert_eq!(n, NA_LEN);
        assert_eq!(
            router_addr(prefix()),
            "fd12:3456:789a::1".parse::<Ipv6Addr>().unwrap()
        );
    }
}
