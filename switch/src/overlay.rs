//! The overlay in the datapath: frames between instances on different hosts,
//! carried in VXLAN-GBP over UDP (docs/cluster.md §6, docs/overlay.md).
//!
//! Contract:
//! * [`Overlay::bind`] (at `Switch::start`, when `SwitchConfig::overlay` is set)
//!   binds one UDP socket per worker to the underlay address, in the calling
//!   thread's network namespace, all with `SO_REUSEPORT`: worker `w` reads and
//!   sends only on socket `w` (no shared socket, no lock), and the kernel spreads
//!   arriving datagrams over the sockets by a hash of their 4-tuple (our senders
//!   send from these sockets, port `--vxlan-port`, so everything from one peer
//!   host is read by one worker here and is never reordered).
//! * The [`DirectoryTable`] (live hosts, every instance of the lab with its host,
//!   MAC and identity) is published by pointer swap
//!   ([`crate::Datapath::publish_directory`]) and loaded once per burst with the
//!   rule snapshot: no lock, no allocation per frame.
//! * Send (`send`): the pipeline has already source-checked the frame, found
//!   that its destination is an instance of another live host, and recorded the
//!   flow in this host's conntrack without the destination's ingress rules
//!   (`Conntrack::judge_scoped`: the destination's host enforces them). Here
//!   the frame gets a VXLAN-GBP header (G|I, D, policy id = the sender's
//!   identity, the lab's VNI) and goes to the owning host's underlay address.
//!   Partial checksums are completed; a TSO super-frame, or a plain TCP frame
//!   larger than the inner MTU, is cut into segments that fit (`offload::segment`
//!   with the inner MSS) and the segments leave in one `sendmsg` with
//!   `UDP_SEGMENT` (UDP GSO: all datagrams but the last of a batch have the same
//!   size), falling back to one `sendmsg` per segment if the kernel refuses.
//!   Other IPv4 that does not fit is fragmented (RFC 791) if DF is clear; with
//!   DF it is dropped (`vxlan_too_big`) and the pipeline answers ICMP
//!   "fragmentation needed" with the inner MTU from the gateway
//!   ([`write_frag_needed`]), so the sender's path MTU discovery works. IPv6
//!   (TSO6 and TCP/IPv6 cut the same way) is never fragmented: what does not
//!   fit is `vxlan_too_big`, answered with ICMPv6 "packet too big" from the
//!   router's address ([`write_packet_too_big`]). The outer packet (always
//!   IPv4) has DF set and is never fragmented.
//! * Receive GRO: see `receive` and `Gro` (docs/overlay.md).
//! * Receive (`receive`): a datagram read from the socket is decapsulated
//!   (`decap_udp_payload`: flags, VNI) and its sender verified (`check_sender`
//!   with the datagram's source address: a live host other than this one, whose
//!   instance the inner source MAC/IP/identity is, for an inner IPv4 or IPv6
//!   frame; IPv6 housekeeping never crosses hosts: `vxlan_inner_housekeeping`);
//!   each refusal counts under its `VxlanDrop` name. The inner frame then goes
//!   through the single-host rules as a frame from that verified remote
//!   instance: its destination must be an instance attached here
//!   (`vxlan_not_local`; broadcast and multicast are never carried),
//!   then conntrack (a reply to a flow our instance opened passes) or the
//!   destination's ingress rules (group-source rules match the remote member by
//!   its address, which the verification tied to its identity), then the port.
//! * User-space GRO merges consecutive TCP segments of one flow, IPv4 or IPv6,
//!   for a port that takes offloads (`Gro`).
//! * Flow logs (IPv4 and IPv6 alike): a cross-host flow is logged on each
//!   instance's own host — the sender's egress record where it enters the
//!   overlay (the pipeline), the receiver's ACCEPT/REJECT record here, after
//!   the ingress verdict. Frames refused before it (`VxlanDrop`) are not
//!   flow-logged.
//! * Counters: per worker (`WorkerCounters::vxlan_drops`, `underlay_*`), summed in
//!   [`crate::Stats`].

use std::io::IoSlice;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::AsFd;
use std::sync::Arc;

use filter::parse::Parsed;
use filter::{DropReason, L4, parse_frame};

use crate::config::{OverlayConfig, SwitchError};
use crate::counters::bump;
use crate::flowlog::{self, Recorder};
use crate::nd;
use crate::offload::{self, complete_csum, segment};
use crate::pipeline::{Env, Scratch, judge_for, known_instance, port_of6, transmit};
use crate::port::VnetHdr;
use crate::sys;
use crate::table::{Kind, Port};
use crate::tunnel::{TunnelTx, whole_tcp, whole_vnet};
use crate::vxlan::{self, Decapped, DirectoryTable, GbpHeader, MAX_VNI, VXLAN_HDR_LEN, VxlanDrop};

/// IPv4 + UDP + VXLAN in front of the inner frame, counted in the underlay MTU.
const OUTER_IP_UDP_VXLAN: usize = 20 + 8 + VXLAN_HDR_LEN;
/// Socket buffers asked for (the kernel caps them at `net.core.*mem_max`).
const SOCK_BUF_BYTES: i32 = 4 << 20;
/// Largest UDP GSO batch: the kernel's `UDP_MAX_SEGMENTS` (64 on older kernels).
const GSO_MAX_SEGMENTS: usize = 64;
/// Largest UDP payload of one GSO batch (the UDP length field is 16 bits).
const GSO_MAX_BYTES: usize = 65_000;
/// Size of a worker's UDP GSO batch buffer.
pub const GSO_BUF_LEN: usize = 65_536;

/// The underlay side of the switch: its sockets and what they carry.
pub struct Overlay {
    pub(crate) cfg: OverlayConfig,
    /// One socket per worker, all bound to `cfg.underlay` with `SO_REUSEPORT`.
    pub(crate) socks: Box<[UdpSocket]>,
    /// Whether the sockets take coalesced datagrams (`UDP_GRO`).
    pub(crate) gro: bool,
    /// Largest inner Ethernet frame carried: the underlay MTU minus outer IPv4,
    /// UDP and VXLAN (1464 for 1500: 1450 bytes of inner IPv4).
    pub(crate) max_inner: usize,
    /// Super-frames sent whole with UDP-tunnel GSO (`cfg.tunnel_gso`, when the
    /// TAP could be made): see [`crate::tunnel`].
    pub(crate) tunnel: Option<TunnelTx>,
}

impl Overlay {
    /// Validates `cfg` and binds one socket per worker (see the module docs).
    pub fn bind(cfg: OverlayConfig, workers: usize) -> Result<Overlay, SwitchError> {
        if cfg.vni > MAX_VNI {
            return Err(SwitchError::OverlayVni(cfg.vni));
        }
        if cfg.underlay_mtu < 576 || cfg.underlay_mtu > 65_535 {
            return Err(SwitchError::OverlayMtu(cfg.underlay_mtu));
        }
        let bind = |addr: SocketAddrV4| {
            sys::udp_socket_reuseport(addr, SOCK_BUF_BYTES)
                .map_err(|source| SwitchError::OverlayBind { addr, source })
        };
        // Port 0 (tests): the kernel picks one for the first socket, the
        // others join it there.
        let first = bind(cfg.underlay)?;
        let addr = match first.local_addr() {
            Ok(std::net::SocketAddr::V4(a)) => a,
            _ => cfg.underlay,
        };
        let mut socks = vec![first];
        for _ in 1..workers {
            socks.push(bind(addr)?);
        }
        // Best effort: without UDP GRO every datagram is one read.
        let gro = socks.iter().all(|s| sys::udp_set_gro(s.as_fd()).is_ok());
        let socks = socks.into_boxed_slice();
        let tunnel = if cfg.tunnel_gso {
            match TunnelTx::open(workers) {
                Ok(t) => {
                    tracing::info!(
                        tap = t.name(),
                        "overlay: super-frames sent whole (UDP-tunnel GSO)"
                    );
                    Some(t)
                }
                Err(e) => {
                    tracing::warn!(error = %e, "overlay: no UDP-tunnel GSO TAP, super-frames are cut in user space");
                    None
                }
            }
        } else {
            None
        };
        Ok(Overlay {
            cfg,
            socks,
            gro,
            max_inner: cfg.underlay_mtu as usize - OUTER_IP_UDP_VXLAN,
            tunnel,
        })
    }

    /// The address the sockets are bound to (with the port the kernel chose if
    /// the configured one was 0).
    pub fn local_addr(&self) -> SocketAddrV4 {
        match self.socks.first().and_then(|s| s.local_addr().ok()) {
            Some(std::net::SocketAddr::V4(a)) => a,
            _ => self.cfg.underlay,
        }
    }

    /// The largest inner IPv4 packet carried (underlay MTU - 50).
    pub fn inner_ip_mtu(&self) -> u16 {
        (self.max_inner - 14) as u16
    }

    /// Whether the kernel coalesces arriving datagrams for us (`UDP_GRO`).
    pub fn gro(&self) -> bool {
        self.gro
    }

    /// Whether TCP super-frames leave whole (UDP-tunnel GSO TAP open and not
    /// refused by the kernel).
    pub fn tunnel_gso(&self) -> bool {
        self.tunnel.as_ref().is_some_and(TunnelTx::usable)
    }

    /// The configuration the overlay was started with.
    pub fn config(&self) -> &OverlayConfig {
        &self.cfg
    }
}

/// What one burst sees of the overlay: the sockets and the directory loaded for
/// this burst.
#[derive(Clone, Copy)]
pub struct OverlayEnv<'a> {
    pub ov: &'a Overlay,
    pub dir: &'a DirectoryTable,
    /// Trace ([`crate::trace`]): a frame bound for another host is judged
    /// as for real, then noted in [`Scratch::overlay_sent`] instead of being
    /// encapsulated and sent.
    pub dry: bool,
}

/// Encapsulate and send a frame of a local instance to `to` (see the module
/// docs). `frame` is source-checked, its destination MAC already rewritten.
pub(crate) fn send(
    env: &Env<'_>,
    o: &OverlayEnv<'_>,
    frame: &mut [u8],
    vnet: &VnetHdr,
    to: SocketAddrV4,
    identity: u16,
    scratch: &mut Scratch,
) -> Result<(), VxlanDrop> {
    let mut hdr = [0u8; VXLAN_HDR_LEN];
    GbpHeader {
        vni: o.ov.cfg.vni,
        policy_id: identity,
        dont_learn: true,
        policy_applied: false,
    }
    .write(&mut hdr)
    .map_err(|_| VxlanDrop::TxFailed)?;
    let sock = &o.ov.socks[env.w];
    let max = o.ov.max_inner;
    let gso = vnet.gso_type & !VnetHdr::GSO_ECN;
    if gso == VnetHdr::GSO_NONE && frame.len() <= max {
        if vnet.flags & VnetHdr::F_NEEDS_CSUM != 0 {
            complete_csum(frame, vnet).map_err(|_| VxlanDrop::TxFailed)?;
            bump(&env.wc.csum_completed, 1);
        }
        return send_one(env, sock, to, &hdr, frame);
    }
    // A TCP super-frame: whole, the kernel segments it (UDP-tunnel GSO).
    if gso == VnetHdr::GSO_TCPV4
        && let Some(t) = o.ov.tunnel.as_ref().filter(|t| t.usable())
        && send_whole(env, o, t, to, &hdr, frame, vnet, max)
    {
        return Ok(());
    }
    // A super-frame, or a frame too big for the underlay: cut TCP (and USO)
    // into segments that fit; other IPv4 without DF is fragmented, as a router
    // would; with DF it is refused (and the pipeline tells the sender).
    let Some(cut) = segment_hdr(frame, vnet, max) else {
        if gso == VnetHdr::GSO_NONE && frame.get(12..14) == Some(&[0x08, 0x00]) {
            if vnet.flags & VnetHdr::F_NEEDS_CSUM != 0 {
                complete_csum(frame, vnet).map_err(|_| VxlanDrop::TxFailed)?;
                bump(&env.wc.csum_completed, 1);
            }
            return fragment(env, sock, to, &hdr, frame, max, scratch);
        }
        return Err(VxlanDrop::TooBig);
    };
    let Scratch {
        out, gso: batch, ..
    } = scratch;
    let mut b = Batch::new(batch);
    if cut.gso_type == VnetHdr::GSO_TCPV4
        && let Some(n) = cut_tcp(
            env,
            sock,
            to,
            &hdr,
            frame,
            usize::from(cut.gso_size),
            &mut b,
        )?
    {
        b.flush(env, sock, to)?;
        bump(&env.wc.tso_segmented, 1);
        debug_assert!(n > 0);
        return Ok(());
    }
    let r = segment(frame, &cut, out, |seg| b.push(env, sock, to, &hdr, seg));
    match r {
        Ok(Ok(_)) => {
            b.flush(env, sock, to)?;
            bump(&env.wc.tso_segmented, 1);
            Ok(())
        }
        Ok(Err(e)) => Err(e),
        Err(_) => Err(VxlanDrop::TooBig),
    }
}

/// TCP segmentation straight into the UDP GSO batch: each segment of at most
/// `mss` payload bytes is written once, behind its VXLAN header, with its own
/// IPv4 total length, id (+ index), checksum, TCP sequence number, flags (CWR
/// on the first only, FIN/PSH on the last only) and full TCP checksum: what
/// `offload::segment_tcpv4` does, without building each segment elsewhere
/// first. Headers come from the frame (the pipeline parsed it: untagged IPv4,
/// TCP). `None` (nothing sent) for what it does not handle: no payload, no
/// batch buffer, inconsistent lengths; the caller then uses `offload::segment`.
fn cut_tcp(
    env: &Env<'_>,
    sock: &UdpSocket,
    to: SocketAddrV4,
    hdr: &[u8; VXLAN_HDR_LEN],
    frame: &[u8],
    mss: usize,
    b: &mut Batch<'_>,
) -> Result<Option<usize>, VxlanDrop> {
    use filter::tcp_flags::{FIN, PSH};
    const CWR: u8 = 0x80;
    let ihl = usize::from(frame[14] & 0x0f) * 4;
    let l4 = 14 + ihl;
    let Some(&doff) = frame.get(l4 + 12) else {
        return Ok(None);
    };
    let hdr_len = l4 + usize::from(doff >> 4) * 4;
    let total = usize::from(u16::from_be_bytes([frame[16], frame[17]]));
    // Some stacks leave the total length of a super-frame 0: the frame's end.
    let end = if total >= hdr_len - 14 && 14 + total <= frame.len() {
        14 + total
    } else {
        frame.len()
    };
    if mss == 0 || hdr_len >= end || b.buf.len() < VXLAN_HDR_LEN + hdr_len + mss {
        return Ok(None);
    }
    let payload = &frame[hdr_len..end];
    let base_id = u16::from_be_bytes([frame[18], frame[19]]);
    let base_seq = u32::from_be_bytes([frame[l4 + 4], frame[l4 + 5], frame[l4 + 6], frame[l4 + 7]]);
    let flags = frame[l4 + 13];
    let pseudo_addrs = offload::sum(&frame[26..34], u64::from(filter::proto::TCP));
    let n = payload.len().div_ceil(mss);
    for (i, chunk) in payload.chunks(mss).enumerate() {
        let size = VXLAN_HDR_LEN + hdr_len + chunk.len();
        let Some(slot) = b.reserve(env, sock, to, size)? else {
            return Err(VxlanDrop::TxFailed);
        };
        slot[..VXLAN_HDR_LEN].copy_from_slice(hdr);
        let seg = &mut slot[VXLAN_HDR_LEN..];
        seg[..hdr_len].copy_from_slice(&frame[..hdr_len]);
        seg[hdr_len..].copy_from_slice(chunk);
        let len = seg.len();
        seg[16..18].copy_from_slice(&((len - 14) as u16).to_be_bytes());
        seg[18..20].copy_from_slice(&base_id.wrapping_add(i as u16).to_be_bytes());
        seg[24..26].copy_from_slice(&[0, 0]);
        let c = offload::checksum(&seg[14..l4]);
        seg[24..26].copy_from_slice(&c.to_be_bytes());
        let seq = base_seq.wrapping_add((i * mss) as u32);
        seg[l4 + 4..l4 + 8].copy_from_slice(&seq.to_be_bytes());
        let mut f = flags;
        if i != 0 {
            f &= !CWR;
        }
        if i + 1 != n {
            f &= !(FIN | PSH);
        }
        seg[l4 + 13] = f;
        seg[l4 + 16..l4 + 18].copy_from_slice(&[0, 0]);
        let c = !offload::fold(offload::sum(&seg[l4..], pseudo_addrs + (len - l4) as u64));
        seg[l4 + 16..l4 + 18].copy_from_slice(&c.to_be_bytes());
        b.commit(env, sock, to, size)?;
    }
    Ok(Some(n))
}

/// IPv4 fragmentation (RFC 791) of a plain frame without DF into frames of at
/// most `max` bytes, sent like segments (one UDP GSO batch). A frame with DF,
/// with IPv4 options, or inconsistent lengths is `vxlan_too_big`.
fn fragment(
    env: &Env<'_>,
    sock: &UdpSocket,
    to: SocketAddrV4,
    hdr: &[u8; VXLAN_HDR_LEN],
    frame: &[u8],
    max: usize,
    scratch: &mut Scratch,
) -> Result<(), VxlanDrop> {
    let too_big = VxlanDrop::TooBig;
    let ip = frame.get(14..34).ok_or(too_big)?;
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    let frag = u16::from_be_bytes([ip[6], ip[7]]);
    if ip[0] != 0x45 || frag & 0x4000 != 0 || total < 20 || 14 + total > frame.len() {
        return Err(too_big);
    }
    let (base_mf, base_off) = (frag & 0x2000 != 0, usize::from(frag & 0x1fff) * 8);
    let payload = &frame[34..14 + total];
    let per = (max - 34) / 8 * 8;
    let Scratch {
        out, gso: batch, ..
    } = scratch;
    let mut b = Batch::new(batch);
    let n = payload.len().div_ceil(per);
    for (i, chunk) in payload.chunks(per).enumerate() {
        let len = 34 + chunk.len();
        let f = out.get_mut(..len).ok_or(too_big)?;
        f[..34].copy_from_slice(&frame[..34]);
        f[34..].copy_from_slice(chunk);
        let off = (base_off + i * per) / 8;
        let mf = i + 1 < n || base_mf;
        let field = (off as u16 & 0x1fff) | if mf { 0x2000 } else { 0 };
        f[16..18].copy_from_slice(&((len - 14) as u16).to_be_bytes());
        f[20..22].copy_from_slice(&field.to_be_bytes());
        f[24..26].copy_from_slice(&[0, 0]);
        let c = offload::checksum(&f[14..34]);
        f[24..26].copy_from_slice(&c.to_be_bytes());
        b.push(env, sock, to, hdr, f)?;
    }
    b.flush(env, sock, to)?;
    bump(&env.wc.underlay_fragmented, 1);
    Ok(())
}

/// The virtio-net header that cuts `frame` into segments of at most `max`
/// bytes: TCP (a TSO super-frame, or a plain frame too big) by the MSS that
/// fits, USO by its own segment size if that fits. `None`: cannot be cut.
fn segment_hdr(frame: &[u8], vnet: &VnetHdr, max: usize) -> Option<VnetHdr> {
    let gso = vnet.gso_type & !VnetHdr::GSO_ECN;
    // Untagged IPv4 or IPv6 (the pipeline dropped tagged frames); for IPv6
    // the TCP or UDP header right after the fixed header (as
    // `offload::segment` requires; Linux builds no other super-frame).
    let (l4, proto, tso) = match frame.get(12..14)? {
        [0x08, 0x00] => {
            let ihl = usize::from(frame.get(14)? & 0x0f) * 4;
            (14 + ihl, *frame.get(23)?, VnetHdr::GSO_TCPV4)
        }
        [0x86, 0xdd] => (14 + 40, *frame.get(20)?, VnetHdr::GSO_TCPV6),
        _ => return None,
    };
    match (proto, gso) {
        (filter::proto::TCP, g) if g == VnetHdr::GSO_NONE || g == tso => {
            let hdr_len = l4 + usize::from(frame.get(l4 + 12)? >> 4) * 4;
            let fit = max.checked_sub(hdr_len).filter(|&f| f > 0)?;
            let mss = if gso == VnetHdr::GSO_NONE {
                fit
            } else {
                fit.min(usize::from(vnet.gso_size))
            };
            Some(VnetHdr {
                flags: VnetHdr::F_NEEDS_CSUM,
                gso_type: tso,
                gso_size: u16::try_from(mss).ok()?,
                ..*vnet
            })
        }
        (filter::proto::UDP, VnetHdr::GSO_UDP_L4) if l4 + 8 + usize::from(vnet.gso_size) <= max => {
            Some(*vnet)
        }
        _ => None,
    }
}

/// For a frame that does not fit the underlay and may not be fragmented (IPv4
/// with DF): writes into `out` the ICMP "fragmentation needed" (type 3 code 4,
/// RFC 1191) that the gateway `gw` sends back to the sender, with the next-hop
/// MTU `mtu` and the original IPv4 header plus 8 bytes. Returns its length, or
/// `None` when no such answer is due (no DF, not IPv4, an ICMP error itself).
pub fn write_frag_needed(out: &mut [u8], frame: &[u8], gw: Ipv4Addr, mtu: u16) -> Option<usize> {
    if frame.get(12..14)? != [0x08, 0x00] {
        return None;
    }
    let ip = frame.get(14..34)?;
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let df = ip[6] & 0x40 != 0;
    let is_icmp_error =
        ip[9] == filter::proto::ICMP && matches!(frame.get(14 + ihl), Some(3 | 4 | 5 | 11 | 12));
    if ip[0] >> 4 != 4 || ihl < 20 || !df || is_icmp_error {
        return None;
    }
    let quoted = frame.get(14..14 + ihl + 8)?;
    let len = 14 + 20 + 8 + quoted.len();
    let f = out.get_mut(..len)?;
    f[0..6].copy_from_slice(&frame[6..12]);
    f[6..12].copy_from_slice(&crate::arp::GATEWAY_MAC);
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    let total = (len - 14) as u16;
    let h = &mut f[14..34];
    h[0] = 0x45;
    h[1] = 0xc0; // internetwork control, as routers send ICMP errors
    h[2..4].copy_from_slice(&total.to_be_bytes());
    h[4..8].copy_from_slice(&[0, 0, 0, 0]);
    h[8] = 64;
    h[9] = filter::proto::ICMP;
    h[10..12].copy_from_slice(&[0, 0]);
    h[12..16].copy_from_slice(&gw.octets());
    h[16..20].copy_from_slice(&ip[12..16]);
    let c = offload::checksum(h);
    h[10..12].copy_from_slice(&c.to_be_bytes());
    let icmp = &mut f[34..];
    icmp[0] = 3;
    icmp[1] = 4;
    icmp[2..6].copy_from_slice(&[0, 0, 0, 0]);
    icmp[6..8].copy_from_slice(&mtu.to_be_bytes());
    icmp[8..].copy_from_slice(quoted);
    let c = offload::checksum(icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    Some(len)
}

/// The minimum IPv6 MTU (RFC 8200 §5): an ICMPv6 error never exceeds it.
const IPV6_MIN_MTU: usize = 1280;

/// For an IPv6 frame that does not fit the underlay (IPv6 routers never
/// fragment): writes into `out` the ICMPv6 "packet too big" (type 2 code 0,
/// RFC 4443 §3.2) that the router address `from` sends back to the sender, with
/// the MTU `mtu` and as much of the packet as fits in the minimum IPv6 MTU.
/// Returns its length, or `None` when no such answer is due (not IPv6, an
/// ICMPv6 error itself, a source that cannot be answered).
pub fn write_packet_too_big(
    out: &mut [u8],
    frame: &[u8],
    from: std::net::Ipv6Addr,
    mtu: u32,
) -> Option<usize> {
    let v = nd::parse(frame).ok()?;
    let is_icmp_error = v.icmp_type().is_some_and(|t| t < 128);
    if is_icmp_error
        || v.src.is_unspecified()
        || v.src.is_multicast()
        || v.src.is_loopback()
        || v.eth_src[0] & 1 == 1
    {
        return None;
    }
    // The packet as it came (IPv6 header on), cut to fit 1280 bytes.
    // (`nd::parse` checked that the payload length lies within the frame.)
    let end = 14 + 40 + usize::from(u16::from_be_bytes([frame[18], frame[19]]));
    let quoted = &frame[14..end.min(14 + IPV6_MIN_MTU - 40 - 8)];
    let plen = 8 + quoted.len();
    let len = 14 + 40 + plen;
    let f = out.get_mut(..len)?;
    f[0..6].copy_from_slice(&frame[6..12]);
    f[6..12].copy_from_slice(&crate::arp::GATEWAY_MAC);
    f[12..14].copy_from_slice(&[0x86, 0xdd]);
    let h = &mut f[14..54];
    h[0..4].copy_from_slice(&[0x60, 0, 0, 0]);
    h[4..6].copy_from_slice(&(plen as u16).to_be_bytes());
    h[6] = nd::NH_ICMPV6;
    h[7] = 64;
    h[8..24].copy_from_slice(&from.octets());
    h[24..40].copy_from_slice(&v.src.octets());
    let pseudo = offload::sum(&f[22..54], u64::from(nd::NH_ICMPV6) + plen as u64);
    let icmp = &mut f[54..];
    icmp[0] = 2;
    icmp[1] = 0;
    icmp[2..4].copy_from_slice(&[0, 0]);
    icmp[4..8].copy_from_slice(&mtu.to_be_bytes());
    icmp[8..].copy_from_slice(quoted);
    let c = !offload::fold(offload::sum(icmp, pseudo));
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    Some(len)
}

/// A TCP super-frame (checksum partial) sent whole through the tunnel TAP
/// with the MSS that fits the underlay; false (nothing sent) when it does not
/// qualify (not untagged IPv4 TCP with consistent lengths, checksum not
/// partial at the TCP header, too long for one outer IPv4 packet) or the
/// kernel refused it: the caller cuts it instead.
#[allow(clippy::too_many_arguments)]
fn send_whole(
    env: &Env<'_>,
    o: &OverlayEnv<'_>,
    t: &TunnelTx,
    to: SocketAddrV4,
    hdr: &[u8; VXLAN_HDR_LEN],
    frame: &[u8],
    vnet: &VnetHdr,
    max: usize,
) -> bool {
    let Some(inner) = whole_tcp(frame, vnet, max) else {
        return false;
    };
    let from = o.ov.local_addr();
    match t.send(env.w, from, to, hdr, frame, inner) {
        Ok(_) => {
            let payload = frame.len() - inner.hdr_len;
            let segs = payload.div_ceil(usize::from(inner.mss));
            bump(&env.wc.underlay_tunnel_tx, 1);
            bump(&env.wc.underlay_tx_packets, segs as u64);
            bump(
                &env.wc.underlay_tx_bytes,
                (segs * (VXLAN_HDR_LEN + inner.hdr_len) + payload) as u64,
            );
            true
        }
        Err(_) => false,
    }
}

/// One `sendmsg`: VXLAN header + frame, gathered.
fn send_one(
    env: &Env<'_>,
    sock: &UdpSocket,
    to: SocketAddrV4,
    hdr: &[u8; VXLAN_HDR_LEN],
    frame: &[u8],
) -> Result<(), VxlanDrop> {
    let iov = [IoSlice::new(hdr), IoSlice::new(frame)];
    match sys::udp_sendmsg(sock.as_fd(), to, &iov, None) {
        Ok(n) => {
            bump(&env.wc.underlay_tx_packets, 1);
            bump(&env.wc.underlay_tx_bytes, n as u64);
            Ok(())
        }
        Err(_) => Err(VxlanDrop::TxFailed),
    }
}

/// Segments of one super-frame collected as VXLAN datagrams back to back, sent
/// with UDP GSO: every datagram of a batch but the last has size `seg`.
struct Batch<'b> {
    buf: &'b mut [u8],
    len: usize,
    /// Size of the batch's datagrams (the first one's).
    seg: usize,
    n: usize,
}

impl<'b> Batch<'b> {
    /// An empty batch in `buf`.
    fn new(buf: &'b mut [u8]) -> Batch<'b> {
        Batch {
            buf,
            len: 0,
            seg: 0,
            n: 0,
        }
    }

    fn push(
        &mut self,
        env: &Env<'_>,
        sock: &UdpSocket,
        to: SocketAddrV4,
        hdr: &[u8; VXLAN_HDR_LEN],
        seg: &[u8],
    ) -> Result<(), VxlanDrop> {
        let size = VXLAN_HDR_LEN + seg.len();
        match self.reserve(env, sock, to, size)? {
            Some(slot) => {
                slot[..VXLAN_HDR_LEN].copy_from_slice(hdr);
                slot[VXLAN_HDR_LEN..].copy_from_slice(seg);
                self.commit(env, sock, to, size)
            }
            // No batch buffer (or a segment larger than it): one at a time.
            None => send_one(env, sock, to, hdr, seg),
        }
    }

    /// Room for the next datagram of `size` bytes at the end of the batch
    /// (flushing first what it cannot join), to be filled and then
    /// [`Batch::commit`]ted; `None` if the buffer cannot hold it at all.
    fn reserve(
        &mut self,
        env: &Env<'_>,
        sock: &UdpSocket,
        to: SocketAddrV4,
        size: usize,
    ) -> Result<Option<&mut [u8]>, VxlanDrop> {
        if self.buf.len() < size {
            return Ok(None);
        }
        if self.n > 0
            && (size > self.seg
                || self.len + size > GSO_MAX_BYTES.min(self.buf.len())
                || self.n == GSO_MAX_SEGMENTS)
        {
            self.flush(env, sock, to)?;
        }
        Ok(Some(&mut self.buf[self.len..self.len + size]))
    }

    /// Adds the datagram written into the slot [`Batch::reserve`] gave.
    fn commit(
        &mut self,
        env: &Env<'_>,
        sock: &UdpSocket,
        to: SocketAddrV4,
        size: usize,
    ) -> Result<(), VxlanDrop> {
        if self.n == 0 {
            self.seg = size;
        }
        self.len += size;
        self.n += 1;
        if size < self.seg {
            // A shorter datagram can only end a batch.
            self.flush(env, sock, to)?;
        }
        Ok(())
    }

    fn flush(
        &mut self,
        env: &Env<'_>,
        sock: &UdpSocket,
        to: SocketAddrV4,
    ) -> Result<(), VxlanDrop> {
        if self.n == 0 {
            return Ok(());
        }
        let data = &self.buf[..self.len];
        let gso = (self.n > 1).then_some(self.seg as u16);
        let r = sys::udp_sendmsg(sock.as_fd(), to, &[IoSlice::new(data)], gso);
        let (n, len) = (self.n, self.len);
        self.n = 0;
        self.len = 0;
        match r {
            Ok(_) => {
                bump(&env.wc.underlay_tx_packets, n as u64);
                bump(&env.wc.underlay_tx_bytes, len as u64);
                if gso.is_some() {
                    bump(&env.wc.underlay_gso_batches, 1);
                }
                Ok(())
            }
            // The kernel refused UDP GSO (no checksum offload on the route,
            // old kernel): the datagrams one by one.
            Err(_) if gso.is_some() => {
                for d in data.chunks(self.seg) {
                    match sys::udp_sendmsg(sock.as_fd(), to, &[IoSlice::new(d)], None) {
                        Ok(m) => {
                            bump(&env.wc.underlay_tx_packets, 1);
                            bump(&env.wc.underlay_tx_bytes, m as u64);
                        }
                        Err(_) => return Err(VxlanDrop::TxFailed),
                    }
                }
                Ok(())
            }
            Err(_) => Err(VxlanDrop::TxFailed),
        }
    }
}

/// Handle one read of the underlay socket of worker `env.w`, sent from `from`
/// (see the module docs): `buf` holds one datagram, or with UDP GRO several of
/// `seg` bytes each (the last may be shorter). Each datagram is checked and
/// judged on its own; consecutive TCP segments of one flow for a port that takes
/// offloads are then merged back into one super-frame ([`Gro`]). Returns the
/// number of datagrams.
pub(crate) fn receive(
    env: &Env<'_>,
    o: &OverlayEnv<'_>,
    from: SocketAddrV4,
    buf: &mut [u8],
    seg: Option<usize>,
    scratch: &mut Scratch,
) -> usize {
    let mut gro_buf = std::mem::take(&mut scratch.gso);
    let mut gro = Gro::new(&mut gro_buf);
    // A super-frame a peer sent whole (UDP-tunnel GSO, `crate::tunnel`) that
    // crossed the underlay unsegmented (veth, same machine): one datagram
    // larger than the underlay MTU lets through, without a GRO size (the
    // kernel only reports one for UDP GSO).
    let whole = seg.is_none() && buf.len() > VXLAN_HDR_LEN + o.ov.max_inner;
    let step = seg.unwrap_or(buf.len()).max(1);
    let mut count = 0;
    for d in buf.chunks_mut(step) {
        count += 1;
        bump(&env.wc.underlay_rx_packets, 1);
        bump(&env.wc.underlay_rx_bytes, d.len() as u64);
        let r = check_inner(env, o, from, d, &mut scratch.flows).and_then(|port| {
            let frame = &mut d[VXLAN_HDR_LEN..];
            if whole {
                gro.flush(env, scratch)?;
                let vnet = whole_vnet(frame, o.ov.max_inner).unwrap_or_default();
                if vnet.gso_type != VnetHdr::GSO_NONE {
                    bump(&env.wc.underlay_whole_rx, 1);
                }
                transmit(env, port, frame, &vnet, scratch).map_err(Refused::from)
            } else if port.queues[env.w].offloads()
                && let Some(t) = TcpSeg::of(frame)
            {
                gro.push(env, port, frame, t, scratch)
            } else {
                gro.flush(env, scratch)?;
                transmit(env, port, frame, &VnetHdr::default(), scratch).map_err(Refused::from)
            }
        });
        if let Err(e) = r {
            refused(env, e);
        }
    }
    if let Err(e) = gro.flush(env, scratch) {
        refused(env, e);
    }
    scratch.gso = gro_buf;
    count
}

fn refused(env: &Env<'_>, e: Refused) {
    match e {
        Refused::Vxlan(v) => env.wc.vxlan_drop(v),
        Refused::Filter(r) => env.wc.drop(r),
    }
}

/// Why a received datagram went no further.
enum Refused {
    Vxlan(VxlanDrop),
    Filter(DropReason),
}

impl From<VxlanDrop> for Refused {
    fn from(v: VxlanDrop) -> Refused {
        Refused::Vxlan(v)
    }
}

impl From<DropReason> for Refused {
    fn from(r: DropReason) -> Refused {
        Refused::Filter(r)
    }
}

/// Every check of one datagram: decap, sender, local destination, conntrack or
/// the destination's rules. On success the inner frame (at `VXLAN_HDR_LEN`) has
/// the destination's MAC and may be delivered to the returned port.
fn check_inner<'t>(
    env: &Env<'t>,
    o: &OverlayEnv<'_>,
    from: SocketAddrV4,
    buf: &mut [u8],
    flows: &mut Option<Recorder>,
) -> Result<&'t Arc<Port>, Refused> {
    let (header, inner) = vxlan::decap_udp_payload(buf, o.ov.cfg.vni)?;
    let d = Decapped {
        outer_src: *from.ip(),
        outer_dst: *o.ov.cfg.underlay.ip(),
        src_port: from.port(),
        header,
        inner,
    };
    vxlan::check_sender(o.dir, &d)?;
    let frame = &mut buf[VXLAN_HDR_LEN..];
    let dir = o.dir;
    let (port, mac) = match parse_frame(frame)? {
        Parsed::Ipv4 {
            pkt, eth, ip_len, ..
        } => {
            let dst = pkt.key.dst;
            if env.net.is_broadcast(dst) || eth.is_multicast_dst() {
                return Err(VxlanDrop::NotLocal.into());
            }
            let port = env.table.by_ip(dst).ok_or(VxlanDrop::NotLocal)?;
            let Kind::Instance { mac, .. } = port.kind else {
                return Err(VxlanDrop::NotLocal.into());
            };
            if dir.is_remote(dst) {
                // The directory says another host owns it (a stale port here): not ours.
                return Err(VxlanDrop::NotLocal.into());
            }
            let port = known_instance(env, port, dst)?;
            let verdict = judge_for(env, port, &pkt, frame.len(), |ip| dir.is_remote(ip));
            if let Some(rec) = flows {
                // The receiver's record (the sender's host logged the egress one).
                let on = flowlog::On::new(false, true, verdict);
                rec.record(&pkt.key, on, 1, u64::from(ip_len), env.now);
            }
            verdict?;
            (port, mac)
        }
        Parsed::Ipv6 {
            pkt, eth, ip_len, ..
        } => {
            // check_sender refused housekeeping it could see; an ICMPv6
            // type behind other extension headers is caught here.
            if let L4::Icmp { ty, .. } = pkt.l4
                && nd::is_housekeeping(ty)
            {
                return Err(VxlanDrop::InnerHousekeeping.into());
            }
            let dst = pkt.key.dst;
            if dst.is_multicast() || eth.is_multicast_dst() || dir.is_remote6(dst) {
                return Err(VxlanDrop::NotLocal.into());
            }
            // Found through the snapshot: a port it does not know gets nothing.
            let port = port_of6(env, dst).ok_or(VxlanDrop::NotLocal)?;
            let Kind::Instance { mac, ip: if_ip, .. } = port.kind else {
                return Err(VxlanDrop::NotLocal.into());
            };
            let verdict = judge_for(env, port, &pkt, frame.len(), |ip| dir.is_remote6(ip));
            if let Some(rec) = flows {
                // The receiver's record, on the interface of the instance
                // (named by its IPv4 address, as on one host).
                let on = flowlog::On::new(false, true, verdict);
                let ifaces = (Ipv4Addr::UNSPECIFIED, if_ip);
                rec.record6(&pkt.key, ifaces, on, 1, u64::from(ip_len), env.now);
            }
            verdict?;
            (port, mac)
        }
        // check_sender admits untagged IPv4 and IPv6 only.
        Parsed::Arp { .. } => return Err(VxlanDrop::InnerNotIpv4.into()),
    };
    frame[0..6].copy_from_slice(&mac);
    Ok(port)
}

/// A TCP segment that may be merged: untagged IPv4 (not a fragment) or IPv6
/// (TCP right after the fixed header), no padding, ACK set, no SYN/RST/URG,
/// some payload, and a TCP checksum that verifies (a merged super-frame gets a
/// partial checksum the receiver completes, so a bad one must not be
/// laundered).
#[derive(Clone, Copy, Debug)]
struct TcpSeg {
    /// IPv6 (else IPv4).
    v6: bool,
    l4: usize,
    hdr_len: usize,
    seq: u32,
    flags: u8,
    payload: usize,
}

impl TcpSeg {
    fn of(f: &[u8]) -> Option<TcpSeg> {
        use filter::tcp_flags::{ACK, RST, SYN};
        const URG: u8 = 0x20;
        let (v6, l4, addrs) = match f.get(12..14)? {
            [0x08, 0x00] => {
                let ip = f.get(14..34)?;
                let ihl = usize::from(ip[0] & 0x0f) * 4;
                let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
                if ip[0] >> 4 != 4
                    || ihl < 20
                    || ip[9] != filter::proto::TCP
                    || u16::from_be_bytes([ip[6], ip[7]]) & 0x3fff != 0
                    || 14 + total != f.len()
                {
                    return None;
                }
                (false, 14 + ihl, 26..34)
            }
            [0x86, 0xdd] => {
                let ip = f.get(14..54)?;
                let plen = usize::from(u16::from_be_bytes([ip[4], ip[5]]));
                if ip[0] >> 4 != 6 || ip[6] != filter::proto::TCP || 54 + plen != f.len() {
                    return None;
                }
                (true, 54, 22..54)
            }
            _ => return None,
        };
        let t = f.get(l4..l4 + 20)?;
        let hdr_len = l4 + usize::from(t[12] >> 4) * 4;
        let flags = t[13];
        if hdr_len < l4 + 20
            || hdr_len >= f.len()
            || flags & ACK == 0
            || flags & (SYN | RST | URG) != 0
        {
            return None;
        }
        let pseudo = offload::sum(
            &f[addrs],
            u64::from(filter::proto::TCP) + (f.len() - l4) as u64,
        );
        if offload::fold(offload::sum(&f[l4..], pseudo)) != 0xffff {
            return None;
        }
        Some(TcpSeg {
            v6,
            l4,
            hdr_len,
            seq: u32::from_be_bytes([t[4], t[5], t[6], t[7]]),
            flags,
            payload: f.len() - hdr_len,
        })
    }
}

/// Whether two segments' headers are the same but for what segmentation
/// changes: IPv4 total length, id and checksum (IPv6 payload length), TCP
/// sequence number, flags and checksum.
fn same_headers(a: &[u8], b: &[u8], v6: bool, l4: usize, hdr_len: usize) -> bool {
    let (a, b) = (&a[..hdr_len], &b[..hdr_len]);
    let ip = if v6 {
        a[..18] == b[..18] && a[20..l4 + 4] == b[20..l4 + 4]
    } else {
        a[..16] == b[..16] && a[20..24] == b[20..24] && a[26..l4 + 4] == b[26..l4 + 4]
    };
    ip && a[l4 + 8..l4 + 13] == b[l4 + 8..l4 + 13]
        && a[l4 + 14..l4 + 16] == b[l4 + 14..l4 + 16]
        && a[l4 + 18..] == b[l4 + 18..]
}

/// Receive-side GRO in user space: consecutive segments of one TCP flow for one
/// port (that takes offloads) become one super-frame with a GSO virtio-net
/// header, written to the TAP once: the instance's kernel then takes one large
/// segment (and acknowledges it once) instead of tens of small ones.
struct Gro<'b, 't> {
    buf: &'b mut [u8],
    len: usize,
    port: Option<&'t Arc<Port>>,
    first: Option<TcpSeg>,
    /// Flags of the last segment merged (PSH/FIN go to the super-frame).
    last_flags: u8,
    next_seq: u32,
    segs: usize,
    /// The last segment was short or had PSH/FIN: nothing may follow.
    closed: bool,
}

impl<'b, 't> Gro<'b, 't> {
    fn new(buf: &'b mut [u8]) -> Self {
        Gro {
            buf,
            len: 0,
            port: None,
            first: None,
            last_flags: 0,
            next_seq: 0,
            segs: 0,
            closed: false,
        }
    }

    fn push(
        &mut self,
        env: &Env<'t>,
        port: &'t Arc<Port>,
        frame: &mut [u8],
        t: TcpSeg,
        scratch: &mut Scratch,
    ) -> Result<(), Refused> {
        use filter::tcp_flags::{FIN, PSH};
        let fits = |g: &Self| {
            g.len + t.payload <= g.buf.len() && g.len + t.payload - 14 <= usize::from(u16::MAX)
        };
        let joins = match (self.first, self.port) {
            (Some(f), Some(p)) => {
                Arc::ptr_eq(p, port)
                    && !self.closed
                    && t.v6 == f.v6
                    && t.l4 == f.l4
                    && t.hdr_len == f.hdr_len
                    && t.seq == self.next_seq
                    && t.payload <= f.payload
                    && fits(self)
                    && same_headers(&self.buf[..f.hdr_len], frame, f.v6, f.l4, f.hdr_len)
            }
            _ => false,
        };
        if joins {
            let f = self.first.unwrap_or(t);
            self.buf[self.len..self.len + t.payload].copy_from_slice(&frame[t.hdr_len..]);
            self.len += t.payload;
            self.closed = t.payload < f.payload || t.flags & (PSH | FIN) != 0;
        } else {
            self.flush(env, scratch)?;
            if frame.len() > self.buf.len() {
                // No room to hold it (no buffer): as it came.
                return transmit(env, port, frame, &VnetHdr::default(), scratch)
                    .map_err(Refused::from);
            }
            self.buf[..frame.len()].copy_from_slice(frame);
            self.len = frame.len();
            self.port = Some(port);
            self.first = Some(t);
            self.closed = t.flags & (PSH | FIN) != 0;
        }
        self.segs += 1;
        self.last_flags = t.flags;
        self.next_seq = t.seq.wrapping_add(t.payload as u32);
        Ok(())
    }

    /// Deliver what is held: one segment as it came, several as a super-frame.
    fn flush(&mut self, env: &Env<'t>, scratch: &mut Scratch) -> Result<(), Refused> {
        use filter::tcp_flags::{FIN, PSH};
        let (Some(port), Some(f)) = (self.port.take(), self.first.take()) else {
            return Ok(());
        };
        let segs = std::mem::take(&mut self.segs);
        let len = std::mem::take(&mut self.len);
        let frame = &mut self.buf[..len];
        if segs == 1 {
            return transmit(env, port, frame, &VnetHdr::default(), scratch).map_err(Refused::from);
        }
        let l4 = f.l4;
        let (addrs, gso_type) = if f.v6 {
            frame[18..20].copy_from_slice(&((len - 54) as u16).to_be_bytes());
            (22..54, VnetHdr::GSO_TCPV6)
        } else {
            frame[16..18].copy_from_slice(&((len - 14) as u16).to_be_bytes());
            frame[24..26].copy_from_slice(&[0, 0]);
            let c = offload::checksum(&frame[14..l4]);
            frame[24..26].copy_from_slice(&c.to_be_bytes());
            (26..34, VnetHdr::GSO_TCPV4)
        };
        frame[l4 + 13] = f.flags | (self.last_flags & (PSH | FIN));
        // The partial checksum: the pseudo-header sum, completed by the receiver.
        let pseudo = offload::sum(
            &frame[addrs],
            u64::from(filter::proto::TCP) + (len - l4) as u64,
        );
        frame[l4 + 16..l4 + 18].copy_from_slice(&offload::fold(pseudo).to_be_bytes());
        let vnet = VnetHdr {
            flags: VnetHdr::F_NEEDS_CSUM,
            gso_type,
            hdr_len: f.hdr_len as u16,
            gso_size: f.payload as u16,
            csum_start: l4 as u16,
            csum_offset: 16,
        };
        bump(&env.wc.underlay_gro_frames, 1);
        transmit(env, port, frame, &vnet, scratch).map_err(Refused::from)
    }
}

#[cfg(test)]
mod tests {
    //! The overlay datapath without root: host 1 is a real [`Datapath`] whose
    //! underlay socket is bound to 127.0.0.1, host 2 is a plain UDP socket of
    //! the test on 127.0.0.2 that reads what host 1 sends and forges what host
    //! 2 would send. Instances are in-memory ports.

    use std::net::{Ipv4Addr, SocketAddr};
    use std::sync::Arc;
    use std::time::Duration;

    use filter::model::{Instance, Limits, Model, Owner, Ports, Proto, Rule, Source};
    use filter::parse::ARP_REPLY;
    use filter::{Mac, compile};

    use super::*;
    use crate::arp;
    use crate::vxlan::{HostId, InstanceInfo};
    use crate::{
        Datapath, MemFrame, MemOptions, MemPeer, PortRole, PortSpec, SwitchConfig, mem_port_with,
    };

    const VNI: u32 = 77;
    const OWNER: &str = "111122223333";
    const H1: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 1);
    const H2: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
    const H3: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 3);
    /// A on host 1 (group a), B and C on host 2 (group b).
    const A: (Ipv4Addr, Mac, u16) = (Ipv4Addr::new(10, 8, 0, 10), [2, 0, 0, 0, 0, 0xa], 0x100);
    const B: (Ipv4Addr, Mac, u16) = (Ipv4Addr::new(10, 8, 0, 11), [2, 0, 0, 0, 0, 0xb], 0x101);
    const C: (Ipv4Addr, Mac, u16) = (Ipv4Addr::new(10, 8, 0, 12), [2, 0, 0, 0, 0, 0xc], 0x101);

    /// The lab's IPv6 /64 (dual-stack labs only).
    fn prefix6() -> ipnet::Ipv6Net {
        "fd00:8::/64".parse().unwrap()
    }

    /// An instance's IPv6 address in the dual-stack lab.
    fn v6(i: (Ipv4Addr, Mac, u16)) -> std::net::Ipv6Addr {
        filter::model::eui64_address(prefix6(), i.1)
    }

    /// Group a allows TCP 22 from members of b; b allows nothing; `dual`: dual-stack (the /64 [`prefix6`]), and a also
    /// allows TCP 8080 from the IPv6 CIDR fd00:8::/64 and TCP 9090 from the
    /// IPv4 CIDR 0.0.0.0/0 (which does not open IPv6).
    fn snapshot_with(dual: bool) -> filter::Snapshot {
        let owner = Owner(OWNER.into());
        let from_b = Rule {
            proto: Proto::Tcp,
            ports: Ports::Range(22, 22),
            source: Source::Group {
                owner: owner.clone(),
                group: "b".into(),
            },
        };
        let mut a_rules = vec![from_b];
        if dual {
            a_rules.push(Rule {
                proto: Proto::Tcp,
                ports: Ports::Range(8080, 8080),
                source: Source::Cidr6(prefix6()),
            });
            a_rules.push(Rule {
                proto: Proto::Tcp,
                ports: Ports::Range(9090, 9090),
                source: Source::Cidr(Default::default()),
            });
        }
        let insts =
            [("i-a", A, "a"), ("i-b", B, "b"), ("i-c", C, "b")].map(|(id, i, g)| Instance {
                id: id.into(),
                owner: owner.clone(),
                mac: i.1,
                ip: i.0,
                groups: vec![g.into()],
            });
        let mut m = Model::build(
            Limits::default(),
            &owner,
            &[("a", a_rules), ("b", vec![])],
            insts,
        )
        .expect("model");
        if dual {
            m.set_subnet6(Some(prefix6())).expect("a /64");
        }
        compile(&m, 1)
    }

    fn directory(h1: SocketAddrV4, h2: SocketAddrV4, with_a: bool) -> DirectoryTable {
        let mut d = DirectoryTable::new(HostId(1));
        d.add_host(HostId(1), h1);
        d.add_host(HostId(2), h2);
        let info = |host, i: (Ipv4Addr, Mac, u16)| InstanceInfo {
            host: HostId(host),
            mac: i.1,
            identity: i.2,
        };
        if with_a {
            d.add_instance(A.0, info(1, A));
            d.add_instance6(v6(A), A.0);
        }
        d.add_instance(B.0, info(2, B));
        d.add_instance(C.0, info(2, C));
        d.add_instance6(v6(B), B.0);
        d.add_instance6(v6(C), C.0);
        d
    }

    struct Lab {
        dp: Arc<Datapath>,
        a: MemPeer,
        h2: UdpSocket,
        h1: SocketAddrV4,
    }

    fn lab() -> Lab {
        lab_with(false)
    }

    fn lab_with(offloads: bool) -> Lab {
        lab_full(offloads, None)
    }

    fn lab_full(offloads: bool, flow_log: Option<crate::FlowLogConfig>) -> Lab {
        lab_opts(offloads, flow_log, false)
    }

    /// A dual-stack lab ([`snapshot_with`]).
    fn lab6(offloads: bool) -> Lab {
        lab_opts(offloads, None, true)
    }

    fn lab_opts(offloads: bool, flow_log: Option<crate::FlowLogConfig>, dual: bool) -> Lab {
        let dp = Datapath::new(SwitchConfig {
            workers: 1,
            ct: filter::CtConfig::with_capacity(1 << 12),
            subnet: "10.8.0.0/16".parse().unwrap(),
            subnet6: dual.then(prefix6),
            overlay: Some(OverlayConfig::new(SocketAddrV4::new(H1, 0), VNI)),
            flow_log,
            ..SwitchConfig::default()
        })
        .expect("datapath with overlay");
        let h1 = dp.overlay().unwrap().local_addr();
        let h2 = UdpSocket::bind((H2, 0)).expect("bind 127.0.0.2");
        h2.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let SocketAddr::V4(h2a) = h2.local_addr().unwrap() else {
            unreachable!()
        };
        dp.publish_rules(snapshot_with(dual));
        dp.publish_directory(Arc::new(directory(h1, h2a, true)));
        let (queues, a) = mem_port_with(
            1,
            MemOptions {
                offloads,
                ..MemOptions::default()
            },
        );
        dp.add_port(PortSpec {
            name: "a".into(),
            role: PortRole::Instance {
                id: "i-a".into(),
                mac: A.1,
                ip: A.0,
            },
            queues,
        })
        .expect("port");
        Lab { dp, a, h2, h1 }
    }

    /// An instance of the lab: (address, MAC, identity), as [`A`], [`B`], [`C`].
    type Inst = (Ipv4Addr, Mac, u16);

    /// [`tcp`] or [`tcp6`]: a TCP frame (src, dst, sport, dport, syn, payload).
    type TcpFrame = fn(Inst, Inst, u16, u16, bool, &[u8]) -> Vec<u8>;

    /// A TCP frame between two instances over IPv4 ([`tcp_ip`]).
    fn tcp(src: Inst, dst: Inst, sport: u16, dport: u16, syn: bool, payload: &[u8]) -> Vec<u8> {
        tcp_ip(false, src, dst, sport, dport, syn, payload)
    }

    /// A TCP frame between two instances, over IPv6 (their addresses in the
    /// dual-stack lab) when `ipv6`: a SYN, or an ACK with `payload`.
    fn tcp_ip(
        ipv6: bool,
        src: Inst,
        dst: Inst,
        sport: u16,
        dport: u16,
        syn: bool,
        payload: &[u8],
    ) -> Vec<u8> {
        let mut f = Vec::new();
        let e = etherparse::PacketBuilder::ethernet2(src.1, dst.1);
        let ip = if ipv6 {
            e.ipv6(v6(src).octets(), v6(dst).octets(), 64)
        } else {
            e.ipv4(src.0.octets(), dst.0.octets(), 64)
        };
        let b = ip.tcp(sport, dport, 1000, 64000);
        let b = if syn { b.syn() } else { b.ack(1) };
        b.write(&mut f, payload).unwrap();
        f
    }

    fn vxlan_payload(policy_id: u16, vni: u32, inner: &[u8]) -> Vec<u8> {
        let mut h = [0u8; VXLAN_HDR_LEN];
        GbpHeader {
            vni,
            policy_id,
            ..GbpHeader::default()
        }
        .write(&mut h)
        .unwrap();
        [&h[..], inner].concat()
    }

    /// Everything host 2 received, decapsulated: (policy id, inner frame).
    fn h2_received(s: &UdpSocket) -> Vec<(u16, Vec<u8>)> {
        let mut out = Vec::new();
        let mut buf = vec![0u8; 70_000];
        s.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        while let Ok((n, _)) = s.recv_from(&mut buf) {
            let (h, inner) = vxlan::decap_udp_payload(&buf[..n], VNI).expect("our own datagram");
            assert!(
                n <= 1500 - 28,
                "datagram of {n} bytes exceeds the underlay MTU"
            );
            out.push((h.policy_id, inner.to_vec()));
        }
        out
    }

    /// Runs host 1's worker until the datagrams sent to it are processed.
    fn settle(dp: &Arc<Datapath>) {
        let mut w = dp.worker(0);
        for _ in 0..20 {
            w.poll_once();
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn arp_for_a_remote_instance_is_answered_locally() {
        let l = lab();
        let mut req = [0u8; 64];
        let n = arp::write_request(&mut req, A.1, A.0, B.0);
        l.a.inject(0, &req[..n], VnetHdr::default()).unwrap();
        settle(&l.dp);
        let got = l.a.take();
        assert_eq!(got.len(), 1, "one ARP reply");
        let Ok(Parsed::Arp { arp, .. }) = parse_frame(&got[0].data) else {
            panic!("not ARP")
        };
        assert_eq!((arp.op, arp.sha, arp.spa), (ARP_REPLY, B.1, B.0));
        assert!(h2_received(&l.h2).is_empty(), "no broadcast crosses hosts");
    }

    /// B's reply made by `frame` (ACK, TCP 80 → 40000) comes from host 2;
    /// checks that A gets it as sent (by state: no rule of a allows it).
    fn reply_from_b_passes(l: &Lab, frame: TcpFrame) {
        let reply = frame(B, A, 80, 40000, false, b"reply");
        l.h2.send_to(&vxlan_payload(B.2, VNI, &reply), l.h1)
            .unwrap();
        settle(&l.dp);
        let got = l.a.take();
        assert_eq!(
            got.len(),
            1,
            "{:?}",
            l.dp.stats().nonzero_drops().collect::<Vec<_>>()
        );
        assert_eq!(&got[0].data[12..], &reply[12..]);
    }

    #[test]
    fn tcp_out_and_back_is_stateful_and_rules_apply_at_the_destination() {
        let l = lab();
        // A → B:80. No rule of B allows it: host 1 does not care (host 2 enforces).
        l.a.inject(0, &tcp(A, B, 40000, 80, true, b""), VnetHdr::default())
            .unwrap();
        settle(&l.dp);
        let got = h2_received(&l.h2);
        assert_eq!(got.len(), 1);
        let (policy, inner) = &got[0];
        assert_eq!(*policy, A.2, "the sender's identity");
        assert_eq!(&inner[0..6], &B.1, "to B's MAC");
        assert_eq!(&inner[6..12], &A.1);
        // B's reply (SYN-ACK) from host 2 passes by state, though no rule of a
        // allows TCP 80 → 40000 from b.
        reply_from_b_passes(&l, tcp);
        // A new flow from C to A: port 23 is refused by A's rules, port 22 is
        // allowed by the group rule (C is a verified member of b).
        let c23 = tcp(C, A, 5000, 23, true, b"");
        let c22 = tcp(C, A, 5001, 22, true, b"");
        l.h2.send_to(&vxlan_payload(C.2, VNI, &c23), l.h1).unwrap();
        l.h2.send_to(&vxlan_payload(C.2, VNI, &c22), l.h1).unwrap();
        settle(&l.dp);
        let got = l.a.take();
        assert_eq!(got.len(), 1);
        assert_eq!(&got[0].data[12..], &c22[12..]);
        let st = l.dp.stats();
        assert_eq!(st.drop_count(DropReason::NoRule), 1);
        assert_eq!(st.underlay.tx_packets, 1);
        assert_eq!(st.underlay.rx_packets, 3);
        assert_eq!(st.nonzero_vxlan_drops().count(), 0);
    }

    /// Cluster mode flow logs: host 1 logs its own instance's interface only,
    /// the egress record where a flow enters the overlay and the ingress
    /// verdict of what arrives from it.
    #[test]
    fn flow_logs_record_cross_host_flows_on_the_instances_host() {
        let (_, got) = cross_host_flow_log(false, &[(5000, 23), (5001, 22)]);
        assert_eq!(
            got,
            [
                "111122223333 eni-a 10.8.0.10 10.8.0.11 40000 80 6 1 40 ACCEPT OK",
                "111122223333 eni-a 10.8.0.12 10.8.0.10 5000 23 6 1 40 REJECT OK",
                "111122223333 eni-a 10.8.0.12 10.8.0.10 5001 22 6 1 40 ACCEPT OK",
            ]
        );
    }

    /// Runs a flow-logging lab (dual-stack and IPv6 frames when `dual`): A
    /// opens TCP to B:80 and C (from host 2) opens TCP to A from each
    /// `(source port, port)` of `from_c`; returns the lab and host 1's flow
    /// log lines without their timestamps (fields 10 and 11).
    fn cross_host_flow_log(dual: bool, from_c: &[(u16, u16)]) -> (Lab, Vec<String>) {
        let frame: TcpFrame = if dual { tcp6 } else { tcp };
        let path = std::env::temp_dir().join(format!(
            "sgsw-overlay-flowlog{}-{}",
            if dual { "6" } else { "" },
            std::process::id()
        ));
        let _ = std::fs::remove_file(&path);
        let cfg = crate::FlowLogConfig {
            interval_secs: 60,
            ..crate::FlowLogConfig::new(crate::FlowLogSink::File(path.clone()))
        };
        let l = lab_opts(false, Some(cfg.clone()), dual);
        let mut w = l.dp.worker(0);
        l.a.inject(0, &frame(A, B, 40000, 80, true, b""), VnetHdr::default())
            .unwrap();
        for &(from, port) in from_c {
            let f = frame(C, A, from, port, true, b"");
            l.h2.send_to(&vxlan_payload(C.2, VNI, &f), l.h1).unwrap();
        }
        for _ in 0..20 {
            w.poll_once();
            std::thread::sleep(Duration::from_millis(5));
        }
        w.hand_over_flows();
        let writer = crate::flowlog::Writer::open(&cfg).expect("open");
        let mut logger = l.dp.take_flow_logger(writer).expect("flow logs on");
        logger
            .flush(l.dp.now_secs(), &l.dp.rules(), &[A.0])
            .expect("flush");
        let text = std::fs::read_to_string(&path).expect("read");
        let _ = std::fs::remove_file(&path);
        let got = text
            .lines()
            .skip(1)
            .map(|l| {
                let f: Vec<&str> = l.split(' ').collect();
                [&f[1..10], &f[12..]].concat().join(" ")
            })
            .collect();
        drop(w);
        (l, got)
    }

    #[test]
    fn forged_datagrams_are_dropped_by_name() {
        let l = lab();
        let h3 = UdpSocket::bind((H3, 0)).expect("bind 127.0.0.3");
        let to_a = |src| tcp(src, A, 5001, 22, true, b"forged");
        let sends: [(&UdpSocket, Vec<u8>, VxlanDrop); 6] = [
            // B sending with A's identity (another group set).
            (
                &l.h2,
                vxlan_payload(A.2, VNI, &to_a(B)),
                VxlanDrop::WrongIdentity,
            ),
            (
                &h3,
                vxlan_payload(B.2, VNI, &to_a(B)),
                VxlanDrop::UnknownHost,
            ),
            // Host 2 claiming host 1's instance A (to itself: still refused).
            (
                &l.h2,
                vxlan_payload(A.2, VNI, &to_a(A)),
                VxlanDrop::ForeignInstance,
            ),
            (
                &l.h2,
                vxlan_payload(B.2, VNI + 1, &to_a(B)),
                VxlanDrop::BadVni,
            ),
            (
                &l.h2,
                vxlan_payload(B.2, VNI, &to_a((B.0, C.1, B.2))),
                VxlanDrop::SpoofedMac,
            ),
            // Verified, but for an address that is not an instance here.
            (
                &l.h2,
                vxlan_payload(B.2, VNI, &tcp(B, C, 1, 22, true, b"")),
                VxlanDrop::NotLocal,
            ),
        ];
        for (s, d, _) in &sends {
            s.send_to(d, l.h1).unwrap();
        }
        // Host 1's own address is no trusted sender either.
        let me = UdpSocket::bind((H1, 0)).unwrap();
        me.send_to(&vxlan_payload(B.2, VNI, &to_a(B)), l.h1)
            .unwrap();
        settle(&l.dp);
        assert!(l.a.take().is_empty(), "a forged frame was delivered");
        let st = l.dp.stats();
        for (_, _, why) in &sends {
            let extra = u64::from(*why == VxlanDrop::UnknownHost);
            assert_eq!(st.vxlan_drop_count(*why), 1 + extra, "{why}");
        }
        assert_eq!(st.total_drops(), 0);
    }

    /// A sends 6,000 bytes to B:80 as a plain frame made by `frame` from
    /// port 40000 and as a TSO super-frame `tso` from port 40001 (TCPv6 when
    /// `tso` says so). Checks that host 2 got both flows' bytes whole, from
    /// A's identity, in inner frames of at most 1464 bytes of that IP version
    /// with full, valid TCP checksums (and, IPv6, the right payload length);
    /// returns the plain frame and what host 2 got.
    fn big_tcp_a_to_b(l: &Lab, frame: TcpFrame, tso: VnetHdr) -> (Vec<u8>, Vec<(u16, Vec<u8>)>) {
        let v6 = tso.gso_type == VnetHdr::GSO_TCPV6;
        let payload: Vec<u8> = (0..6000u32).map(|i| (i * 7 % 251) as u8).collect();
        let big = frame(A, B, 40000, 80, false, &payload);
        l.a.inject(0, &big, VnetHdr::default()).unwrap();
        l.a.inject(0, &frame(A, B, 40001, 80, false, &payload), tso)
            .unwrap();
        settle(&l.dp);
        let got = h2_received(&l.h2);
        let mut per_flow = [Vec::new(), Vec::new()];
        for (policy, inner) in &got {
            assert_eq!(*policy, A.2);
            assert!(inner.len() <= 1464, "inner frame of {}", inner.len());
            let p = etherparse::SlicedPacket::from_ethernet(inner).unwrap();
            let Some(etherparse::TransportSlice::Tcp(t)) = p.transport else {
                panic!("not TCP")
            };
            let want = match (v6, &p.net) {
                (false, Some(etherparse::NetSlice::Ipv4(ip))) => t
                    .to_header()
                    .calc_checksum_ipv4(&ip.header().to_header(), t.payload())
                    .unwrap(),
                (true, Some(etherparse::NetSlice::Ipv6(ip))) => {
                    assert_eq!(usize::from(ip.header().payload_length()), inner.len() - 54);
                    t.to_header()
                        .calc_checksum_ipv6(&ip.header().to_header(), t.payload())
                        .unwrap()
                }
                _ => panic!("not IPv{}", if v6 { 6 } else { 4 }),
            };
            assert_eq!(t.checksum(), want, "full, valid TCP checksum");
            per_flow[usize::from(t.source_port() - 40000)].extend_from_slice(t.payload());
        }
        assert_eq!(per_flow[0], payload);
        assert_eq!(per_flow[1], payload);
        (big, got)
    }

    #[test]
    fn big_tcp_is_cut_to_the_inner_mtu_and_unknown_senders_are_refused() {
        let l = lab();
        // A plain 6054-byte frame (the instance's MTU is larger than the path's)
        // and the same as a TSO super-frame with MSS 1448 (inner MTU 1450
        // allows 1410).
        let tso = VnetHdr::tso4(1448);
        let (big, got) = big_tcp_a_to_b(&l, tcp, tso);
        // Byte for byte what offload::segment makes of the frame with that MSS.
        let fit = VnetHdr {
            flags: VnetHdr::F_NEEDS_CSUM,
            gso_type: VnetHdr::GSO_TCPV4,
            hdr_len: 54,
            gso_size: 1410,
            csum_start: 34,
            csum_offset: 16,
        };
        let mut out = vec![0u8; 2048];
        let mut want = Vec::new();
        segment(&big, &fit, &mut out, |s| {
            want.push(s.to_vec());
            Ok::<(), ()>(())
        })
        .unwrap()
        .unwrap();
        let flow0: Vec<&Vec<u8>> = got
            .iter()
            .map(|(_, f)| f)
            .filter(|f| f[34..36] == 40000u16.to_be_bytes())
            .collect();
        assert_eq!(flow0.len(), want.len());
        for (g, w) in flow0.iter().zip(&want) {
            assert!(*g == w, "segment differs from offload::segment's");
        }
        assert_eq!(got.len(), 10, "5 segments of at most 1410 bytes each");
        let st = l.dp.stats();
        assert_eq!(st.underlay.tx_packets, 10);
        assert_eq!(st.tso_segmented, 2);
        assert_eq!(st.underlay.gso_batches, 2, "one UDP GSO send per frame");
        // Without A in the directory, A has no identity to send with.
        l.dp.publish_directory(Arc::new(directory(l.h1, l.h1, false)));
        l.a.inject(0, &tcp(A, B, 40002, 80, true, b""), VnetHdr::default())
            .unwrap();
        settle(&l.dp);
        // A big UDP datagram cannot be cut.
        l.dp.publish_directory(Arc::new({
            let SocketAddr::V4(h2) = l.h2.local_addr().unwrap() else {
                unreachable!()
            };
            directory(l.h1, h2, true)
        }));
        settle(&l.dp);
        let mut udp = Vec::new();
        etherparse::PacketBuilder::ethernet2(A.1, B.1)
            .ipv4(A.0.octets(), B.0.octets(), 64)
            .udp(1, 2)
            .write(&mut udp, &[0u8; 1500])
            .unwrap();
        l.a.inject(0, &udp, VnetHdr::default()).unwrap();
        settle(&l.dp);
        let st = l.dp.stats();
        assert_eq!(st.vxlan_drop_count(VxlanDrop::NoIdentity), 1);
        assert_eq!(st.vxlan_drop_count(VxlanDrop::TooBig), 1);
        assert!(h2_received(&l.h2).is_empty());
        // With DF set, A hears why: ICMP "fragmentation needed", next-hop MTU
        // 1450, from the gateway, quoting its datagram.
        assert_eq!(udp[20] & 0x40, 0x40, "etherparse sets DF");
        let got = l.a.take();
        assert_eq!(got.len(), 1, "one ICMP error back to A");
        let icmp = &got[0].data;
        let p = etherparse::SlicedPacket::from_ethernet(icmp).expect("ICMP error parses");
        let Some(etherparse::NetSlice::Ipv4(ip)) = &p.net else {
            panic!("not IPv4")
        };
        assert_eq!(ip.header().source_addr(), l.dp.gateway());
        assert_eq!(ip.header().destination_addr(), A.0);
        assert_eq!(&icmp[0..6], &A.1);
        assert_eq!((icmp[34], icmp[35]), (3, 4));
        assert_eq!(u16::from_be_bytes([icmp[40], icmp[41]]), 1450);
        assert_eq!(&icmp[42..], &udp[14..14 + 28]);
        assert_eq!(offload::checksum(&icmp[34..]), 0);
        // Without DF it is fragmented, as a router would: 1508 bytes of IPv4
        // payload in fragments of 1424 + 84, the second at offset 1424.
        let mut no_df = udp.clone();
        no_df[20] &= !0x40;
        no_df[24..26].copy_from_slice(&[0, 0]);
        let c = offload::checksum(&no_df[14..34]);
        no_df[24..26].copy_from_slice(&c.to_be_bytes());
        l.a.inject(0, &no_df, VnetHdr::default()).unwrap();
        settle(&l.dp);
        assert!(l.a.take().is_empty(), "no ICMP error without DF");
        let frags = h2_received(&l.h2);
        assert_eq!(frags.len(), 2);
        let mut joined = Vec::new();
        for (i, (policy, f)) in frags.iter().enumerate() {
            assert_eq!(*policy, A.2);
            assert_eq!(offload::checksum(&f[14..34]), 0, "IPv4 header checksum");
            let field = u16::from_be_bytes([f[20], f[21]]);
            let want = if i == 0 { 0x2000 } else { 1424 / 8 };
            assert_eq!(field, want, "MF and offset of fragment {i}");
            assert_eq!(
                usize::from(u16::from_be_bytes([f[16], f[17]])),
                f.len() - 14
            );
            joined.extend_from_slice(&f[34..]);
        }
        assert_eq!(joined, no_df[34..]);
        let st = l.dp.stats();
        assert_eq!(st.vxlan_drop_count(VxlanDrop::TooBig), 1);
        assert_eq!(st.underlay.fragmented, 1);
    }

    /// A TCP segment B → A:22 (allowed: a takes TCP 22 from group b).
    fn seg_b_to_a(seq: u32, payload: &[u8], psh: bool) -> Vec<u8> {
        let mut f = Vec::new();
        let b = etherparse::PacketBuilder::ethernet2(B.1, A.1)
            .ipv4(B.0.octets(), A.0.octets(), 64)
            .tcp(6000, 22, seq, 64000)
            .ack(1);
        let b = if psh { b.psh() } else { b };
        b.write(&mut f, payload).unwrap();
        f
    }

    /// Host 2 sends `datagrams` as one UDP GSO batch (the kernel delivers them
    /// to host 1's GRO socket as one read).
    fn send_batch(l: &Lab, datagrams: &[Vec<u8>]) {
        let size = datagrams[0].len() as u16;
        let all = datagrams.concat();
        sys::udp_sendmsg(l.h2.as_fd(), l.h1, &[IoSlice::new(&all)], Some(size)).unwrap();
    }

    /// Sends 3,500 bytes from B to A (an offloading port) as four segments
    /// made by `seg(seq, payload, psh)`, in one UDP GSO batch; checks that A
    /// got them as one super-frame carrying the bytes in order, and returns
    /// the segments sent, that super-frame, and the segments it cuts back into.
    fn merge_four_segments(
        l: &Lab,
        seg: impl Fn(u32, &[u8], bool) -> Vec<u8>,
    ) -> (Vec<Vec<u8>>, MemFrame, Vec<Vec<u8>>) {
        let data: Vec<u8> = (0..3500u32).map(|i| (i % 253) as u8).collect();
        let segs: Vec<Vec<u8>> = data
            .chunks(1000)
            .enumerate()
            .map(|(i, c)| seg(1000 + 1000 * i as u32, c, i == 3))
            .collect();
        let dgrams: Vec<Vec<u8>> = segs.iter().map(|f| vxlan_payload(B.2, VNI, f)).collect();
        send_batch(l, &dgrams);
        settle(&l.dp);
        let mut got = l.a.take();
        assert_eq!(got.len(), 1, "one super-frame");
        let sf = got.remove(0);
        assert_eq!(&sf.data[usize::from(sf.vnet.hdr_len)..], &data[..]);
        let mut out = vec![0u8; 4096];
        let mut back = Vec::new();
        segment(&sf.data, &sf.vnet, &mut out, |s| {
            back.push(s.to_vec());
            Ok::<(), ()>(())
        })
        .unwrap()
        .unwrap();
        (segs, sf, back)
    }

    #[test]
    fn segments_of_a_flow_are_merged_for_an_offloading_port() {
        let l = lab_with(true);
        assert!(l.dp.overlay().unwrap().gro(), "UDP_GRO on the socket");
        let (segs, sf, back) = merge_four_segments(&l, seg_b_to_a);
        assert_eq!(sf.vnet.gso_type, VnetHdr::GSO_TCPV4);
        assert_eq!((sf.vnet.gso_size, sf.vnet.hdr_len), (1000, 54));
        assert_eq!(sf.vnet.flags, VnetHdr::F_NEEDS_CSUM);
        assert_eq!(back.len(), 4);
        for (b, s) in back.iter().zip(&segs) {
            // All the same but the IPv4 id (and so the IPv4 checksum).
            assert_eq!(b.len(), s.len());
            assert!(b[..18] == s[..18] && b[20..24] == s[20..24] && b[26..] == s[26..]);
        }
        let st = l.dp.stats();
        assert_eq!((st.underlay.rx_packets, st.underlay.gro_frames), (4, 1));
        // A corrupt checksum in the middle is never merged (nor repaired).
        let mut bad = seg_b_to_a(4500, &[1; 1000], false);
        bad[60] ^= 0xff;
        let batch = [
            vxlan_payload(B.2, VNI, &seg_b_to_a(3500, &[2; 1000], false)),
            vxlan_payload(B.2, VNI, &bad),
            vxlan_payload(B.2, VNI, &seg_b_to_a(5500, &[3; 1000], false)),
        ];
        send_batch(&l, &batch);
        settle(&l.dp);
        let got = l.a.take();
        assert_eq!(got.len(), 3);
        assert!(got.iter().all(|f| f.vnet.is_plain()));
        assert_eq!(got[1].data[60], bad[60]);
        assert_eq!(l.dp.stats().underlay.gro_frames, 1);
    }

    #[test]
    fn a_lost_host_is_neither_reached_nor_trusted() {
        let l = lab();
        let SocketAddr::V4(h2) = l.h2.local_addr().unwrap() else {
            unreachable!()
        };
        let mut d = directory(l.h1, h2, true);
        d.remove_host(H2);
        l.dp.publish_directory(Arc::new(d));
        // ARP for B is not answered (no uplink: nowhere to forward it), A's
        // frames to B go nowhere.
        let mut req = [0u8; 64];
        let n = arp::write_request(&mut req, A.1, A.0, B.0);
        l.a.inject(0, &req[..n], VnetHdr::default()).unwrap();
        l.a.inject(0, &tcp(A, B, 40000, 80, true, b""), VnetHdr::default())
            .unwrap();
        // B's host, no longer live, is not believed.
        l.h2.send_to(
            &vxlan_payload(B.2, VNI, &tcp(B, A, 5000, 22, true, b"")),
            l.h1,
        )
        .unwrap();
        settle(&l.dp);
        assert!(l.a.take().is_empty());
        assert!(h2_received(&l.h2).is_empty());
        let st = l.dp.stats();
        assert_eq!(st.drop_count(DropReason::UnknownDestination), 2);
        assert_eq!(st.vxlan_drop_count(VxlanDrop::UnknownHost), 1);
        assert_eq!(st.arp_replies, 0);
    }

    // ---- IPv6 between hosts ----

    /// A TCP/IPv6 frame between two instances of the dual-stack lab.
    fn tcp6(src: Inst, dst: Inst, sport: u16, dport: u16, syn: bool, payload: &[u8]) -> Vec<u8> {
        tcp_ip(true, src, dst, sport, dport, syn, payload)
    }

    /// An ICMPv6 frame from `mac`/`src` to `dst` with message `msg`.
    fn icmp6(mac: Mac, src: Ipv6Addr, dst: Ipv6Addr, dst_mac: Mac, msg: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; 54 + msg.len()];
        nd::write_icmp6(&mut f, dst_mac, mac, src, dst, msg);
        f
    }

    use std::net::Ipv6Addr;

    #[test]
    fn ipv6_tcp_out_and_back_is_stateful_and_rules_apply_at_the_destination() {
        let l = lab6(false);
        // A → B:80 over IPv6: no rule of B allows it, host 2 enforces that.
        let syn = tcp6(A, B, 40000, 80, true, b"");
        l.a.inject(0, &syn, VnetHdr::default()).unwrap();
        settle(&l.dp);
        let got = h2_received(&l.h2);
        assert_eq!(
            got.len(),
            1,
            "{:?} {:?}",
            l.dp.stats().nonzero_drops().collect::<Vec<_>>(),
            l.dp.stats().nonzero_vxlan_drops().collect::<Vec<_>>()
        );
        let (policy, inner) = &got[0];
        assert_eq!(*policy, A.2, "the sender's identity");
        assert_eq!(&inner[0..6], &B.1, "to B's MAC");
        assert_eq!(&inner[6..], &syn[6..], "the IPv6 frame as sent");
        // B's SYN-ACK from host 2 passes by state (no rule of a allows it).
        reply_from_b_passes(&l, tcp6);
        // New flows from C to A, judged by A's rules here: 23 has no rule, 22
        // is allowed by the group rule (C is a verified member of b), 8080 by
        // the IPv6 CIDR rule (the inner address), 9090 only by an IPv4 CIDR
        // (0.0.0.0/0 does not open IPv6).
        for (i, port) in [23u16, 22, 8080, 9090].into_iter().enumerate() {
            let f = tcp6(C, A, 5000 + i as u16, port, true, b"");
            l.h2.send_to(&vxlan_payload(C.2, VNI, &f), l.h1).unwrap();
        }
        settle(&l.dp);
        let mut ports: Vec<u16> =
            l.a.take()
                .iter()
                .map(|f| u16::from_be_bytes([f.data[56], f.data[57]]))
                .collect();
        ports.sort_unstable();
        assert_eq!(ports, [22, 8080]);
        // A's reply to C's allowed connection goes back into the overlay.
        l.a.inject(0, &tcp6(A, C, 8080, 5002, false, b"ok"), VnetHdr::default())
            .unwrap();
        settle(&l.dp);
        let back = h2_received(&l.h2);
        assert_eq!(back.len(), 1);
        assert_eq!((back[0].0, &back[0].1[0..6]), (A.2, &C.1[..]));
        let st = l.dp.stats();
        assert_eq!(st.drop_count(DropReason::NoRule), 2, "23 and 9090");
        assert_eq!(st.nonzero_vxlan_drops().count(), 0);
        assert_eq!(st.underlay.tx_packets, 2);
    }

    /// Cluster mode flow logs for IPv6, as for IPv4
    /// (`flow_logs_record_cross_host_flows_on_the_instances_host`): host 1
    /// logs its own instance's interface only, the egress record where a flow
    /// enters the overlay and the ingress verdict (ACCEPT or REJECT) of what
    /// arrives from it, with IPv6 addresses.
    #[test]
    fn flow_logs_record_cross_host_ipv6_flows_on_the_instances_host() {
        let (l, got) = cross_host_flow_log(true, &[(5000, 23), (5001, 22), (5002, 9090)]);
        assert_eq!(
            l.dp.stats().underlay.tx_packets,
            1,
            "A's SYN went into the overlay"
        );
        let (a, b, c) = (v6(A), v6(B), v6(C));
        assert_eq!(
            got,
            [
                format!("111122223333 eni-a {a} {b} 40000 80 6 1 60 ACCEPT OK"),
                format!("111122223333 eni-a {c} {a} 5000 23 6 1 60 REJECT OK"),
                format!("111122223333 eni-a {c} {a} 5001 22 6 1 60 ACCEPT OK"),
                format!("111122223333 eni-a {c} {a} 5002 9090 6 1 60 REJECT OK"),
            ]
        );
    }

    #[test]
    fn forged_ipv6_inner_frames_are_dropped_by_name() {
        let l = lab6(false);
        let h3 = UdpSocket::bind((H3, 0)).expect("bind 127.0.0.3");
        let to_a = |src| tcp6(src, A, 5001, 22, true, b"forged");
        let ll = filter::model::link_local_address;
        // B's IPv6 address from C's MAC.
        let mut b_as_c = to_a(B);
        b_as_c[6..12].copy_from_slice(&C.1);
        // An address of the /64 that no instance has.
        let nobody = (B.0, [2, 0, 0, 0, 0, 0x77], B.2);
        let ns = nd::nd_message(nd::ty::NS, 0, v6(A), Some((1, B.1)));
        let sn = nd::solicited_node(v6(A));
        let na = nd::nd_message(nd::ty::NA, 0x60, v6(B), Some((2, B.1)));
        let ra = [
            nd::ty::RA,
            0,
            0,
            0,
            64,
            0,
            0x07,
            0x08,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
        ];
        let all = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
        let echo = [128u8, 0, 0, 0, 0, 1, 0, 1];
        let mut multicast = Vec::new();
        etherparse::PacketBuilder::ethernet2(B.1, nd::multicast_mac(all))
            .ipv6(v6(B).octets(), all.octets(), 64)
            .udp(1, 2)
            .write(&mut multicast, b"to all")
            .unwrap();
        use VxlanDrop::*;
        let sends: Vec<(&UdpSocket, Vec<u8>, VxlanDrop)> = vec![
            // B sending with A's identity.
            (&l.h2, vxlan_payload(A.2, VNI, &to_a(B)), WrongIdentity),
            (&h3, vxlan_payload(B.2, VNI, &to_a(B)), UnknownHost),
            // Host 2 claiming host 1's instance A by its IPv6 address.
            (&l.h2, vxlan_payload(A.2, VNI, &to_a(A)), ForeignInstance),
            (&l.h2, vxlan_payload(B.2, VNI, &b_as_c), SpoofedMac),
            (
                &l.h2,
                vxlan_payload(B.2, VNI, &to_a(nobody)),
                UnknownInstance,
            ),
            // Housekeeping never crosses hosts: solicitations, advertisements
            // (from the global address too), router advertisements, and
            // link-local data.
            (
                &l.h2,
                vxlan_payload(
                    B.2,
                    VNI,
                    &icmp6(B.1, ll(B.1), sn, nd::multicast_mac(sn), &ns),
                ),
                InnerHousekeeping,
            ),
            (
                &l.h2,
                vxlan_payload(B.2, VNI, &icmp6(B.1, v6(B), v6(A), A.1, &na)),
                InnerHousekeeping,
            ),
            (
                &l.h2,
                vxlan_payload(
                    B.2,
                    VNI,
                    &icmp6(B.1, ll(B.1), all, nd::multicast_mac(all), &ra),
                ),
                InnerHousekeeping,
            ),
            (
                &l.h2,
                vxlan_payload(B.2, VNI, &icmp6(B.1, ll(B.1), ll(A.1), A.1, &echo)),
                InnerHousekeeping,
            ),
            // Verified, but multicast, or for an instance that is not here.
            (&l.h2, vxlan_payload(B.2, VNI, &multicast), NotLocal),
            (
                &l.h2,
                vxlan_payload(B.2, VNI, &tcp6(B, C, 1, 22, true, b"")),
                NotLocal,
            ),
        ];
        for (s, d, _) in &sends {
            s.send_to(d, l.h1).unwrap();
        }
        settle(&l.dp);
        assert!(l.a.take().is_empty(), "a forged frame was delivered");
        let st = l.dp.stats();
        for (_, _, why) in &sends {
            let want = sends.iter().filter(|(_, _, w)| w == why).count() as u64;
            assert_eq!(st.vxlan_drop_count(*why), want, "{why}");
        }
        assert_eq!(st.total_drops(), 0);
        // The genuine frame is delivered (the checks refuse only forgeries).
        l.h2.send_to(&vxlan_payload(B.2, VNI, &to_a(B)), l.h1)
            .unwrap();
        settle(&l.dp);
        assert_eq!(l.a.take().len(), 1);
    }

    #[test]
    fn nd_for_a_remote_instance_is_answered_locally() {
        let l = lab6(false);
        let sn = nd::solicited_node(v6(B));
        let msg = nd::nd_message(nd::ty::NS, 0, v6(B), Some((1, A.1)));
        let ns = icmp6(A.1, v6(A), sn, nd::multicast_mac(sn), &msg);
        l.a.inject(0, &ns, VnetHdr::default()).unwrap();
        settle(&l.dp);
        let got = l.a.take();
        assert_eq!(got.len(), 1, "one neighbor advertisement");
        let v = nd::parse(&got[0].data).unwrap();
        assert_eq!(v.icmp_type(), Some(nd::ty::NA));
        assert_eq!((v.src, v.dst, v.eth_dst), (v6(B), v6(A), A.1));
        assert_eq!(&v.l4[8..24], &v6(B).octets(), "target");
        assert_eq!(&v.l4[26..32], &B.1, "B's MAC as target link-layer address");
        assert_eq!(nd::icmp6_checksum(v.src, v.dst, v.l4), 0);
        assert!(
            h2_received(&l.h2).is_empty(),
            "no solicitation crosses hosts"
        );
        let st = l.dp.stats();
        assert_eq!((st.nd_replies, st.total_drops()), (1, 0));
        // Once B's host is lost, nobody answers for B.
        let SocketAddr::V4(h2) = l.h2.local_addr().unwrap() else {
            unreachable!()
        };
        let mut d = directory(l.h1, h2, true);
        d.remove_host(H2);
        l.dp.publish_directory(Arc::new(d));
        l.a.inject(0, &ns, VnetHdr::default()).unwrap();
        settle(&l.dp);
        assert!(l.a.take().is_empty());
        assert_eq!(l.dp.stats().nd_replies, 1);
    }

    #[test]
    fn too_big_ipv6_gets_packet_too_big_and_tcp6_is_cut_to_the_inner_mtu() {
        let l = lab6(false);
        // A 1500-byte UDP datagram over IPv6: neither cut nor fragmented.
        let mut udp = Vec::new();
        etherparse::PacketBuilder::ethernet2(A.1, B.1)
            .ipv6(v6(A).octets(), v6(B).octets(), 64)
            .udp(1, 2)
            .write(&mut udp, &[7u8; 1500])
            .unwrap();
        l.a.inject(0, &udp, VnetHdr::default()).unwrap();
        settle(&l.dp);
        assert!(h2_received(&l.h2).is_empty());
        assert_eq!(l.dp.stats().vxlan_drop_count(VxlanDrop::TooBig), 1);
        // A hears why: ICMPv6 packet too big, MTU 1450, from the router's
        // address, quoting as much of its packet as fits in 1280 bytes.
        let got = l.a.take();
        assert_eq!(got.len(), 1, "one ICMPv6 error back to A");
        let ptb = &got[0].data;
        assert_eq!(ptb.len(), 14 + 1280);
        let v = nd::parse(ptb).expect("IPv6");
        assert_eq!((v.eth_dst, v.eth_src), (A.1, crate::arp::GATEWAY_MAC));
        assert_eq!((v.src, v.dst), (nd::router_addr(prefix6()), v6(A)));
        assert_eq!((v.icmp_type(), v.l4[1]), (Some(2), 0));
        assert_eq!(
            u32::from_be_bytes([v.l4[4], v.l4[5], v.l4[6], v.l4[7]]),
            1450
        );
        assert_eq!(&v.l4[8..], &udp[14..14 + 1232]);
        assert_eq!(nd::icmp6_checksum(v.src, v.dst, v.l4), 0);
        let p = etherparse::SlicedPacket::from_ethernet(ptb).expect("parses");
        let Some(etherparse::TransportSlice::Icmpv6(icmp)) = p.transport else {
            panic!("not ICMPv6")
        };
        assert_eq!(
            icmp.icmp_type(),
            etherparse::Icmpv6Type::PacketTooBig { mtu: 1450 }
        );
        // TCP over IPv6 is cut instead: a plain 6074-byte frame and a TSO6
        // super-frame (MSS 1440; the path allows 1390).
        let tso = VnetHdr {
            flags: VnetHdr::F_NEEDS_CSUM,
            gso_type: VnetHdr::GSO_TCPV6,
            hdr_len: 74,
            gso_size: 1440,
            csum_start: 54,
            csum_offset: 16,
        };
        let (_, got) = big_tcp_a_to_b(&l, tcp6, tso);
        assert_eq!(got.len(), 10, "5 segments of at most 1390 bytes each");
        let st = l.dp.stats();
        assert_eq!(st.tso_segmented, 2);
        assert_eq!(st.vxlan_drop_count(VxlanDrop::TooBig), 1);
        assert!(l.a.take().is_empty(), "no error for what was cut");
    }

    /// A TCP/IPv6 segment B → A:22 (allowed: a takes TCP 22 from group b).
    fn seg6_b_to_a(seq: u32, payload: &[u8], psh: bool) -> Vec<u8> {
        let mut f = Vec::new();
        let b = etherparse::PacketBuilder::ethernet2(B.1, A.1)
            .ipv6(v6(B).octets(), v6(A).octets(), 64)
            .tcp(6000, 22, seq, 64000)
            .ack(1);
        let b = if psh { b.psh() } else { b };
        b.write(&mut f, payload).unwrap();
        f
    }

    #[test]
    fn ipv6_segments_of_a_flow_are_merged_for_an_offloading_port() {
        let l = lab6(true);
        let (segs, sf, back) = merge_four_segments(&l, seg6_b_to_a);
        assert_eq!(sf.vnet.gso_type, VnetHdr::GSO_TCPV6);
        assert_eq!((sf.vnet.gso_size, sf.vnet.hdr_len), (1000, 74));
        assert_eq!((sf.vnet.csum_start, sf.vnet.csum_offset), (54, 16));
        assert_eq!(back, segs);
        let st = l.dp.stats();
        assert_eq!((st.underlay.rx_packets, st.underlay.gro_frames), (4, 1));
        assert_eq!(st.total_drops(), 0);
    }
}
