//! The per-frame pipeline: parse → source check → ARP/DHCP → destination →
//! connection state + rules → transmit, or drop with a named reason.
//!
//! Contract:
//! * Staged bursts: a worker first [`prepare`]s every frame of a burst (parse +
//!   prefetch of the connection-table buckets), then runs [`process_prepared`] on
//!   each in order; [`process`] does both for one frame.
//! * [`process`] handles one frame that worker `env.w` read from `inp`. It takes no
//!   lock, allocates nothing and makes no syscall besides the destination queue's
//!   `send`; the rule snapshot, the port table and the clock come in [`Env`],
//!   loaded once per burst by the caller.
//! * Every frame ends in exactly one [`Outcome`], and every drop is counted once,
//!   by its [`DropReason`], in the worker's counters and the receiving port's
//!   `rx_dropped`.
//! * Semantics (DESIGN §3):
//!   - 802.1Q-tagged frames are dropped (`VlanTagged`): the segment is untagged.
//!   - Source check on instance ports: Ethernet source = the instance's MAC
//!     (`SpoofedMac`); ARP sender = its MAC and IP, or 0.0.0.0 for an RFC 5227
//!     probe (`SpoofedArp`); IPv4 source = its IP (`SpoofedIp`), except a DHCP
//!     client message from 0.0.0.0. Frames from the uplink may not claim an
//!     instance's address (attached, or known to the snapshot) or the gateway's
//!     (`UplinkSpoof`).
//!   - ARP requests for an instance address or the gateway are answered by the
//!     switch to whoever asks (gratuitous ARP and probes for one's own address are
//!     not answered: `Broadcast`). Other requests from instances go to the uplink;
//!     from the uplink they are dropped (`Broadcast`). ARP replies go to the port
//!     owning the target address (the uplink for non-instance targets from
//!     instances).
//!   - DHCP: UDP to port 67 from an instance is answered by [`crate::dhcp`] with
//!     the instance's own lease; a message the server cannot read counts as
//!     `Broadcast` (not answered). DHCP server messages (UDP from port 67 or to
//!     port 68, or a BOOTREPLY) from an instance are `RogueDhcp`.
//!   - IPv4 destination: broadcast/multicast → `Broadcast`; an instance's address
//!     → that port; anything else from an instance → the uplink; else (or no
//!     uplink, or the gateway address, where nothing listens, or an instance of
//!     the snapshot that has no port) → `UnknownDestination`. Never flooded.
//!   - Fail closed: an instance port whose address the published snapshot does
//!     not know yet (port added before its snapshot) receives no IPv4 (`NoRule`).
//!   - Then `Conntrack::judge` against the snapshot; a TSO super-frame is judged
//!     once by its headers.
//!   - IPv6 (untagged; `decide6`): neighbor discovery, router solicitations and
//!     MLD are the switch's business ([`crate::nd`]: answered or absorbed,
//!     forged ones dropped as `spoofed_nd`/`rogue_router_advert`). Data: the
//!     source must be the instance's address in the /64 (`spoofed_ip`; its
//!     link-local is for neighbor discovery only); multicast → `Broadcast`;
//!     an instance's address (found through the snapshot's IPv6 index) → its
//!     port; the router's addresses, link-local or unspecified destinations →
//!     `UnknownDestination`; anything else from an instance → the uplink (the
//!     uplink's MAC when sent to the router's). From the uplink: sources of
//!     the switch's side are `UplinkSpoof`, only instance destinations.
//!     Judged by `Conntrack::judge_rule6` with the same counters as IPv4 and
//!     flow-logged like it (in cluster mode too: [`crate::overlay`]).
//!   - Cluster mode (`env.overlay`, [`crate::overlay`]): an IPv4 or IPv6
//!     destination that is no attached port but an instance of another live
//!     host in the directory is judged with `Conntrack::judge_scoped`/
//!     `judge_scoped6` (no ingress rules here: its host enforces them; the flow
//!     is tracked for the reply) and sent into the overlay with the sender's
//!     identity (`vxlan_no_identity` if it has none); ARP requests and
//!     neighbor solicitations from instances for such addresses are answered
//!     with the remote instance's MAC. A frame too big for the overlay that
//!     may not be cut gets ICMP "fragmentation needed" (IPv4 with DF) or
//!     ICMPv6 "packet too big" (IPv6) back. Overlay refusals are
//!     `Outcome::VxlanDropped`. A trace's overlay is dry
//!     (`OverlayEnv::dry`): the same judgement, then the host and identity
//!     are noted in [`Scratch::overlay_sent`] instead of a send.
//!   - Capture ([`crate::capture`]): with `env.capture` set, frames of the
//!     captured port(s) are recorded as received (with the drop reason when
//!     dropped) and as sent, and frames addressed to the one captured port
//!     that were dropped on the way as sent with their reason; without it the
//!     pipeline does nothing more.
//!   - Flow logs (when the worker has a [`Recorder`]): after the decision,
//!     an IPv4 or IPv6 packet forwarded, sent into the overlay or refused by
//!     the rules/connection table is recorded once, for the sender's and/or
//!     the receiver's instance interface ([`crate::flowlog`]; not neighbor
//!     discovery).
//!   - Transmit: the destination MAC is set to the destination instance's MAC (we
//!     forward by IP); frames to the gateway MAC bound for the uplink get the MAC
//!     last seen from the uplink. Offload work is passed through to queues with
//!     offloads, completed/segmented in software for others ([`crate::offload`]).

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV4};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use filter::conntrack::{BUCKET_BYTES, BUCKET_BYTES6, Family};
use filter::model::{eui64_address, link_local_address};
use filter::parse::{ARP_REPLY, ARP_REQUEST, Arp, Eth, Parsed};
use filter::{Conntrack, DropReason, Frag, L4, Mac, Packet, Snapshot, parse_frame, proto};
use ipnet::{Ipv4Net, Ipv6Net};

use crate::arp::{self, GATEWAY_MAC};
use crate::capture::{Direction, Record, Session, Verdict};
use crate::counters::{PortCounters, RuleHits, WorkerCounters, bump};
use crate::dhcp::{self, DhcpRequest, Lease};
use crate::flowlog::{self, Recorder};
use crate::nd::{self, Nd};
use crate::offload::{complete_csum, segment};
use crate::overlay::{self, OverlayEnv};
use crate::port::{PortError, VnetHdr};
use crate::sys;
use crate::table::{Kind, Port, PortTable, mac_to_u64, u64_to_mac};
use crate::vxlan::VxlanDrop;

/// Frames read from one port per wake-up.
pub const BURST: usize = 32;
/// Bytes read from one port per wake-up: a burst ends at [`BURST`] frames or
/// once this many bytes were read, whichever comes first. Small frames never
/// reach it (32 full-size 1,514-byte frames are 48 KiB); TCP super-frames
/// (up to 64 KiB each, each costing the receiver's whole TCP path when it is
/// written to a TAP) do after two, so the worker turns to its other ports
/// after ~0.1 ms, not after the ~1.5 ms 32 of them take: a lone datagram on
/// another port no longer waits behind a bulk stream's backlog (measured:
/// docs/benchmarks.md, "The enforced tail, fourth pass").
pub const BURST_BYTES: usize = 128 << 10;
/// Size of a worker's receive and scratch buffers: a 64 KiB IPv4 super-frame
/// plus a tagged Ethernet header, with room to spare.
pub const BUF_LEN: usize = 65_536 + 64;

/// Network parameters of the segment, fixed for the switch's life.
#[derive(Clone, Copy, Debug)]
pub struct NetParams {
    pub subnet: Ipv4Net,
    pub gateway: Ipv4Addr,
    pub lease_secs: u32,
    /// The instances' IPv6 /64 (router advertisements, source checks).
    pub subnet6: Option<Ipv6Net>,
}

impl NetParams {
    pub fn new(subnet: Ipv4Net, lease_secs: u32) -> NetParams {
        let gateway = Ipv4Addr::from(u32::from(subnet.network()).wrapping_add(1));
        NetParams {
            subnet,
            gateway,
            lease_secs,
            subnet6: None,
        }
    }

    /// These parameters with the instances' IPv6 prefix.
    pub fn with_subnet6(self, subnet6: Option<Ipv6Net>) -> NetParams {
        NetParams { subnet6, ..self }
    }

    #[inline]
    pub(crate) fn is_broadcast(&self, ip: Ipv4Addr) -> bool {
        ip.is_broadcast()
            || ip.is_multicast()
            || (ip == self.subnet.broadcast() && self.subnet.prefix_len() < 31)
    }
}

/// What one burst of one worker works with: loaded once per burst.
pub struct Env<'a> {
    pub snap: &'a Snapshot,
    pub table: &'a PortTable,
    pub ct: &'a Conntrack,
    pub net: &'a NetParams,
    pub now: u32,
    pub w: usize,
    pub wc: &'a WorkerCounters,
    /// The worker's per-rule counters, following `snap`'s rule-slot layout.
    pub hits: &'a RuleHits,
    /// Cluster mode: the underlay sockets and the directory of this burst.
    pub overlay: Option<OverlayEnv<'a>>,
    /// The capture session when `sgswitch capture` runs ([`crate::capture`]).
    pub capture: Option<&'a Session>,
}

/// A worker's scratch space: replies and software segments are built here.
pub struct Scratch {
    pub out: Box<[u8]>,
    /// Set when a port was found gone during the burst (the worker then wakes
    /// the housekeeper to remove it).
    pub saw_gone: bool,
    /// Cluster mode: where segments of a super-frame are batched for one UDP
    /// GSO send (empty without an overlay).
    pub gso: Box<[u8]>,
    /// Capture: set while a received frame's record waits for its verdict;
    /// the record of a frame sent meanwhile waits in `cap_tx` so that it
    /// follows the received one.
    pub cap_hold: bool,
    pub cap_tx: Option<Record>,
    /// Flow logs: this worker's aggregation table ([`crate::flowlog`]).
    pub flows: Option<Recorder>,
    /// Trace (a dry [`OverlayEnv`]): the underlay address and the identity
    /// of the last frame that would have gone into the overlay.
    pub overlay_sent: Option<(SocketAddrV4, u16)>,
}

impl Default for Scratch {
    fn default() -> Self {
        Scratch {
            out: vec![0u8; BUF_LEN].into_boxed_slice(),
            saw_gone: false,
            gso: Box::default(),
            cap_hold: false,
            cap_tx: None,
            flows: None,
            overlay_sent: None,
        }
    }
}

/// How a frame ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Sent to another port (possibly as several software segments).
    Forwarded,
    /// Answered by the switch itself (ARP or DHCP reply sent back).
    Answered,
    /// Consumed without an answer (DHCP RELEASE and the like).
    Consumed,
    Dropped(DropReason),
    /// Refused by the overlay (send or receive side), counted by its reason.
    VxlanDropped(VxlanDrop),
}

/// What to do with a frame once it has been judged.
enum Action<'t> {
    Forward {
        to: &'t Arc<Port>,
        dst_mac: Option<Mac>,
    },
    ArpReply {
        req: Arp,
        mac: Mac,
    },
    DhcpReply {
        req: DhcpRequest,
        ty: u8,
        lease: Lease,
    },
    Consume,
    /// IPv6 housekeeping answered by the switch ([`crate::nd`]).
    NdReply(NdReply),
    /// IPv6 housekeeping consumed without an answer.
    NdAbsorb,
    /// To an instance of another host: encapsulate with the sender's identity
    /// and send to that host's underlay address.
    Overlay {
        to: SocketAddrV4,
        dst_mac: Mac,
        identity: u16,
    },
    /// Refused for an overlay reason.
    VxlanDrop(VxlanDrop),
}

/// An IPv6 housekeeping answer to write.
#[derive(Clone, Copy, Debug)]
enum NdReply {
    Ra {
        mac: Mac,
        ip: Ipv6Addr,
        prefix: Ipv6Net,
    },
    Na {
        to_mac: Mac,
        to_ip: Ipv6Addr,
        target: Ipv6Addr,
        mac: Mac,
        router: bool,
    },
}

/// Handle one frame (see the module docs). `frame` is the worker's receive buffer
/// cut to the frame; it may be modified in place (MAC rewrite, checksum).
pub fn process(
    env: &Env<'_>,
    inp: &Port,
    frame: &mut [u8],
    vnet: &VnetHdr,
    scratch: &mut Scratch,
) -> Outcome {
    let parsed = parse_frame(frame);
    process_prepared(env, inp, frame, &parsed, vnet, scratch)
}

/// Stage one of a staged burst: parse `frame` into `out` and prefetch the
/// connection-table buckets its verdict will look up, without waiting for
/// them. A worker prepares every frame of a burst before processing the first
/// (with [`process_prepared`]), so the cache misses of a burst's new flows
/// overlap instead of costing one memory latency each. No side effect besides
/// the prefetch hint. (The parse is written in place: a returned `Parsed` was
/// copied field by field on its way out.)
#[inline]
pub fn prepare(env: &Env<'_>, frame: &[u8], out: &mut Result<Parsed, DropReason>) {
    *out = parse_frame(frame);
    match &*out {
        Ok(Parsed::Ipv4 { pkt, .. }) => {
            for addr in env.ct.bucket_addrs(pkt) {
                sys::prefetch(addr, BUCKET_BYTES);
            }
        }
        Ok(Parsed::Ipv6 { pkt, .. }) => {
            for addr in env.ct.bucket_addrs(pkt) {
                sys::prefetch_lines::<{ BUCKET_BYTES6 / sys::CACHE_LINE }>(addr);
            }
        }
        Ok(Parsed::Arp { .. }) | Err(_) => {}
    }
}

/// [`process`] of a frame already parsed by [`prepare`] (`parsed` must be what
/// `parse_frame(frame)` returns for these bytes). Always inlined into the
/// worker's burst loop: untagged IPv4 is judged there without a call
/// (`judge`); the other families and rare outcomes are calls.
#[inline(always)]
pub fn process_prepared(
    env: &Env<'_>,
    inp: &Port,
    frame: &mut [u8],
    parsed: &Result<Parsed, DropReason>,
    vnet: &VnetHdr,
    scratch: &mut Scratch,
) -> Outcome {
    match env.capture {
        None => judge(env, inp, frame, parsed, vnet, scratch),
        Some(cap) => judge_captured(cap, env, inp, frame, parsed, vnet, scratch),
    }
}

/// [`process_prepared`] while a capture runs: the received frame is copied
/// before it is judged (the switch may rewrite it), its record finished with
/// the verdict, then the records of what it caused follow.
#[inline(never)]
fn judge_captured(
    cap: &Session,
    env: &Env<'_>,
    inp: &Port,
    frame: &mut [u8],
    parsed: &Result<Parsed, DropReason>,
    vnet: &VnetHdr,
    scratch: &mut Scratch,
) -> Outcome {
    let wanted = cap.wants(inp.id);
    let dst = match &parsed {
        Ok(Parsed::Ipv4 { pkt, .. }) => Some(pkt.key.dst),
        _ => None,
    };
    let rx = if wanted && !cap.drops_only() {
        cap.take(env.w, inp.id, Direction::In, frame)
    } else {
        None
    };
    scratch.cap_hold = true;
    let o = judge(env, inp, frame, parsed, vnet, scratch);
    scratch.cap_hold = false;
    let why = match o {
        Outcome::Dropped(r) => Some(Verdict::Drop(r)),
        Outcome::VxlanDropped(v) => Some(Verdict::Vxlan(v)),
        _ => None,
    };
    match (rx, why) {
        (Some(mut r), why) => {
            r.dropped = why;
            cap.push(r);
        }
        (None, Some(why)) if wanted && cap.drops_only() => {
            if let Some(mut r) = cap.take(env.w, inp.id, Direction::In, frame) {
                r.dropped = Some(why);
                cap.push(r);
            }
        }
        // Dropped on its way to the one captured port: recorded there as
        // "to it", with the reason it did not arrive.
        (None, Some(why)) if !wanted => {
            if let Some(p) = cap.spec().port
                && let Some(to) = dst.and_then(|d| env.table.by_ip(d))
                && to.id == p
                && let Some(mut r) = cap.take(env.w, p, Direction::Out, frame)
            {
                r.dropped = Some(why);
                cap.push(r);
            }
        }
        _ => {}
    }
    if let Some(t) = scratch.cap_tx.take() {
        cap.push(t);
    }
    o
}

/// Record `frame` as sent to `port` if the capture wants it (after it was
/// handed to the port's queue).
#[cold]
fn capture_sent(cap: &Session, w: usize, port: &Port, frame: &[u8], scratch: &mut Scratch) {
    if cap.drops_only() || !cap.wants(port.id) {
        return;
    }
    if let Some(r) = cap.take(w, port.id, Direction::Out, frame) {
        if scratch.cap_hold && scratch.cap_tx.is_none() {
            scratch.cap_tx = Some(r);
        } else {
            cap.push(r);
        }
    }
}

/// Judge and act on one frame (no capture running). Untagged IPv4 is decided
/// inline ([`decide4`]) and a forward is carried out inline; everything else
/// (IPv6, ARP, parse refusals, tagged frames) is decided by the call
/// [`decide_other`], and every other action is carried out by the call [`act`].
#[inline(always)]
fn judge(
    env: &Env<'_>,
    inp: &Port,
    frame: &mut [u8],
    parsed: &Result<Parsed, DropReason>,
    vnet: &VnetHdr,
    scratch: &mut Scratch,
) -> Outcome {
    let pc = inp.counters.worker(env.w);
    bump(&pc.rx_packets, 1);
    bump(&pc.rx_bytes, frame.len() as u64);
    let decided = match parsed {
        Ok(
            p @ Parsed::Ipv4 {
                eth,
                pkt,
                l3_offset,
                payload_offset,
                ip_len,
                ..
            },
        ) => check_offload(p, vnet).and_then(|()| {
            decide4(
                env,
                inp,
                frame,
                eth,
                pkt,
                *l3_offset,
                *payload_offset,
                *ip_len,
            )
        }),
        _ => decide_other(env, inp, frame, parsed, vnet),
    };
    if let Some(rec) = scratch.flows.as_mut()
        && let Ok(p) = parsed
    {
        log_flow(env, rec, inp, p, frame.len(), vnet, &decided);
    }
    let result = match decided {
        Ok(Action::Forward { to, dst_mac }) => {
            if let Some(m) = dst_mac {
                frame[0..6].copy_from_slice(&m);
            }
            transmit(env, to, frame, vnet, scratch).map(|()| Outcome::Forwarded)
        }
        Ok(a) => return act(env, inp, pc, frame, vnet, a, scratch),
        Err(r) => Err(r),
    };
    match result {
        Ok(o) => o,
        Err(r) => dropped(env, pc, r),
    }
}

/// Count a drop of a frame received on the port of `pc`.
#[inline]
fn dropped(env: &Env<'_>, pc: &PortCounters, r: DropReason) -> Outcome {
    env.wc.drop(r);
    bump(&pc.rx_dropped, 1);
    bump(&pc.drops[r.index()], 1);
    Outcome::Dropped(r)
}

/// The decision for what [`judge`] does not decide inline: untagged IPv6
/// (housekeeping and data, [`decide6`]), ARP, tagged frames and parse
/// refusals.
#[inline(never)]
fn decide_other<'t>(
    env: &Env<'t>,
    inp: &Port,
    frame: &[u8],
    parsed: &Result<Parsed, DropReason>,
    vnet: &VnetHdr,
) -> Result<Action<'t>, DropReason> {
    match parsed {
        // Untagged IPv6: housekeeping from the raw bytes ([`crate::nd`]),
        // data by its parsed facts.
        p @ (Ok(Parsed::Ipv6 { .. }) | Err(_)) if nd::is_ipv6(frame) => {
            decide6(env, inp, frame, p, vnet)
        }
        Ok(p) => {
            check_offload(p, vnet)?;
            decide(env, inp, frame, p)
        }
        Err(r) => Err(*r),
    }
}

/// Carry out an action other than a forward (see [`judge`]).
#[inline(never)]
fn act(
    env: &Env<'_>,
    inp: &Port,
    pc: &PortCounters,
    frame: &mut [u8],
    vnet: &VnetHdr,
    action: Action<'_>,
    scratch: &mut Scratch,
) -> Outcome {
    let result = match action {
        Action::Forward { to, dst_mac } => {
            if let Some(m) = dst_mac {
                frame[0..6].copy_from_slice(&m);
            }
            transmit(env, to, frame, vnet, scratch).map(|()| Outcome::Forwarded)
        }
        Action::ArpReply { req, mac } => {
            let n = arp::write_reply(&mut scratch.out, &req, mac);
            let r = reply(env, inp, n, scratch);
            if r.is_ok() {
                bump(&env.wc.arp_replies, 1);
            }
            r
        }
        Action::DhcpReply { req, ty, lease } => {
            let n = dhcp::write_reply(&mut scratch.out, &req, ty, &lease);
            let r = reply(env, inp, n, scratch);
            if r.is_ok() {
                bump(&env.wc.dhcp_replies, 1);
                if ty == dhcp::msg::ACK {
                    inp.mark_leased();
                }
            }
            r
        }
        Action::Consume => {
            bump(&env.wc.dhcp_silent, 1);
            Ok(Outcome::Consumed)
        }
        Action::NdReply(a) => {
            let (n, counter) = match a {
                NdReply::Ra { mac, ip, prefix } => (
                    nd::write_ra(&mut scratch.out, mac, ip, prefix),
                    &env.wc.router_adverts,
                ),
                NdReply::Na {
                    to_mac,
                    to_ip,
                    target,
                    mac,
                    router,
                } => (
                    nd::write_na(&mut scratch.out, to_mac, to_ip, target, mac, router),
                    &env.wc.nd_replies,
                ),
            };
            let r = reply(env, inp, n, scratch);
            if r.is_ok() {
                bump(counter, 1);
            }
            r
        }
        Action::NdAbsorb => {
            bump(&env.wc.nd_absorbed, 1);
            Ok(Outcome::Consumed)
        }
        Action::Overlay {
            to,
            dst_mac,
            identity,
        } => {
            frame[0..6].copy_from_slice(&dst_mac);
            let sent = match &env.overlay {
                Some(o) if o.dry => {
                    scratch.overlay_sent = Some((to, identity));
                    Ok(())
                }
                Some(o) => overlay::send(env, o, frame, vnet, to, identity, scratch),
                None => Err(VxlanDrop::TxFailed),
            };
            match sent {
                Ok(()) => Ok(Outcome::Forwarded),
                Err(v) => {
                    if v == VxlanDrop::TooBig
                        && let Some(o) = &env.overlay
                        && let Some(n) = too_big_answer(env, o, frame, &mut scratch.out)
                    {
                        // Path MTU discovery: the sender learns the inner MTU.
                        let _ = reply(env, inp, n, scratch);
                    }
                    return vxlan_dropped(env, pc, v);
                }
            }
        }
        Action::VxlanDrop(v) => return vxlan_dropped(env, pc, v),
    };
    match result {
        Ok(o) => o,
        Err(r) => dropped(env, pc, r),
    }
}

/// The packets and bytes a frame counts for in a flow-log record, as the
/// wire carries it: a plain packet its IP length (Ethernet padding excluded),
/// a super-frame everything after the Ethernet header, in the segments it
/// would be cut into.
fn logged_size(
    frame_len: usize,
    vnet: &VnetHdr,
    l3_offset: u16,
    payload_offset: u16,
    ip_len: u16,
) -> (u32, u64) {
    let (ip_bytes, gso) = if vnet.gso_type == VnetHdr::GSO_NONE {
        (usize::from(ip_len), 0)
    } else {
        (
            frame_len.saturating_sub(usize::from(l3_offset)),
            vnet.gso_size,
        )
    };
    let hdr = usize::from(payload_offset.saturating_sub(l3_offset));
    flowlog::wire_size(ip_bytes, hdr, gso)
}

/// Flow logs: record an IPv4 packet's verdict on the instance interfaces it
/// crosses (the sender's, the receiver's), see [`crate::flowlog`]. Frames that
/// did not reach the verdict are not recorded.
#[inline]
fn log_flow(
    env: &Env<'_>,
    rec: &mut Recorder,
    inp: &Port,
    parsed: &Parsed,
    frame_len: usize,
    vnet: &VnetHdr,
    decided: &Result<Action<'_>, DropReason>,
) {
    let (pkt, l3_offset, payload_offset, ip_len) = match parsed {
        Parsed::Ipv4 {
            pkt,
            l3_offset,
            payload_offset,
            ip_len,
            ..
        } => (pkt, l3_offset, payload_offset, ip_len),
        Parsed::Ipv6 { .. } => return log_flow6(env, rec, inp, parsed, frame_len, vnet, decided),
        Parsed::Arp { .. } => return,
    };
    let (to, verdict) = match decided {
        Ok(Action::Forward { to, .. }) => (Some(&***to), Ok(())),
        Ok(Action::Overlay { .. }) => (None, Ok(())),
        Err(r) if flowlog::is_verdict(*r) => (env.table.by_ip(pkt.key.dst).map(|p| &**p), Err(*r)),
        _ => return,
    };
    let (packets, bytes) = logged_size(frame_len, vnet, *l3_offset, *payload_offset, *ip_len);
    let on = flowlog::On::new(
        matches!(inp.kind, Kind::Instance { .. }),
        matches!(to.map(|p| p.kind), Some(Kind::Instance { .. })),
        verdict,
    );
    if !on.is_none() {
        rec.record(&pkt.key, on, packets, bytes, env.now);
    }
}

/// The answer to a frame too big for the overlay that may not be cut or
/// fragmented: ICMP "fragmentation needed" from the gateway (IPv4 with DF) or
/// ICMPv6 "packet too big" from the router's address (IPv6), with the inner
/// MTU. Its length in `out`, or `None` when none is due.
#[cold]
fn too_big_answer(
    env: &Env<'_>,
    o: &OverlayEnv<'_>,
    frame: &[u8],
    out: &mut [u8],
) -> Option<usize> {
    let mtu = o.ov.inner_ip_mtu();
    if nd::is_ipv6(frame) {
        let from = env.net.subnet6.map_or_else(nd::router_ll, nd::router_addr);
        overlay::write_packet_too_big(out, frame, from, u32::from(mtu))
    } else {
        overlay::write_frag_needed(out, frame, env.net.gateway, mtu)
    }
}

/// [`log_flow`] of an IPv6 packet: the same records, the interfaces named
/// by their instances' IPv4 addresses. Neighbor discovery and MLD are the
/// switch's own business, not flows.
#[inline(never)]
fn log_flow6(
    env: &Env<'_>,
    rec: &mut Recorder,
    inp: &Port,
    parsed: &Parsed,
    frame_len: usize,
    vnet: &VnetHdr,
    decided: &Result<Action<'_>, DropReason>,
) {
    let Parsed::Ipv6 {
        pkt,
        l3_offset,
        payload_offset,
        ip_len,
        ..
    } = parsed
    else {
        return;
    };
    if let L4::Icmp { ty, .. } = pkt.l4
        && nd::is_housekeeping(ty)
    {
        return;
    }
    let (to, verdict) = match decided {
        Ok(Action::Forward { to, .. }) => (Some(&***to), Ok(())),
        Ok(Action::Overlay { .. }) => (None, Ok(())),
        Err(r) if flowlog::is_verdict(*r) => (port_of6(env, pkt.key.dst).map(|p| &**p), Err(*r)),
        _ => return,
    };
    let (packets, bytes) = logged_size(frame_len, vnet, *l3_offset, *payload_offset, *ip_len);
    let iface = |p: Option<&Port>| match p.map(|p| p.kind) {
        Some(Kind::Instance { ip, .. }) => Some(ip),
        _ => None,
    };
    let (src_if, dst_if) = (iface(Some(inp)), iface(to));
    let on = flowlog::On::new(src_if.is_some(), dst_if.is_some(), verdict);
    if !on.is_none() {
        let none = Ipv4Addr::UNSPECIFIED;
        let ifaces = (src_if.unwrap_or(none), dst_if.unwrap_or(none));
        rec.record6(&pkt.key, ifaces, on, packets, bytes, env.now);
    }
}

#[cold]
fn vxlan_dropped(env: &Env<'_>, pc: &PortCounters, v: VxlanDrop) -> Outcome {
    env.wc.vxlan_drop(v);
    bump(&pc.rx_dropped, 1);
    Outcome::VxlanDropped(v)
}

/// Smallest segment size accepted for segmentation offload (Linux's
/// `TCP_MIN_SND_MSS`): one super-frame cannot fan out into tens of thousands of
/// one-byte segments.
pub const MIN_GSO_SIZE: u16 = 48;

/// The offload work a sender's virtio-net header asks for must describe the very
/// frame the verdict is given for, because it is carried out after the verdict
/// (by [`complete_csum`]/[`segment`] here, or by the receiving kernel when the
/// header is passed through): a partial checksum only at the L4 checksum field of
/// a whole TCP or UDP datagram (`csum_start` = its L4 header, `csum_offset` 16 or
/// 6), segmentation only of such a datagram of the matching protocol, with
/// `NEEDS_CSUM` and a segment size of at least [`MIN_GSO_SIZE`]. Anything else is
/// [`DropReason::BadOffload`]: a checksum "completed" elsewhere could rewrite the
/// judged destination port.
#[inline]
fn check_offload(parsed: &Parsed, vnet: &VnetHdr) -> Result<(), DropReason> {
    if vnet.is_plain() {
        return Ok(());
    }
    let bad = Err(DropReason::BadOffload);
    // (not a fragment, TCP, UDP, L4 offset, the TSO type of the family)
    let (whole, tcp, udp, l4_offset, tso) = match parsed {
        Parsed::Ipv4 { pkt, l4_offset, .. } => (
            pkt.frag == Frag::None,
            matches!(pkt.l4, L4::Tcp { .. }),
            matches!(pkt.l4, L4::Udp),
            l4_offset,
            VnetHdr::GSO_TCPV4,
        ),
        Parsed::Ipv6 { pkt, l4_offset, .. } => (
            pkt.frag == Frag::None,
            matches!(pkt.l4, L4::Tcp { .. }),
            matches!(pkt.l4, L4::Udp),
            l4_offset,
            VnetHdr::GSO_TCPV6,
        ),
        Parsed::Arp { .. } => return bad,
    };
    if !whole {
        return bad;
    }
    let gso = vnet.gso_type & !VnetHdr::GSO_ECN;
    let (csum_field, gso_fits) = if tcp {
        (16, gso == tso)
    } else if udp {
        // UFO (`GSO_UDP`) is IPv4 only.
        (
            6,
            gso == VnetHdr::GSO_UDP_L4 || (gso == VnetHdr::GSO_UDP && tso == VnetHdr::GSO_TCPV4),
        )
    } else {
        return bad;
    };
    let needs_csum = vnet.flags & VnetHdr::F_NEEDS_CSUM != 0;
    if needs_csum && (vnet.csum_start != *l4_offset || vnet.csum_offset != csum_field) {
        return bad;
    }
    if gso != VnetHdr::GSO_NONE && (!gso_fits || !needs_csum || vnet.gso_size < MIN_GSO_SIZE) {
        return bad;
    }
    Ok(())
}

/// Send the first `n` bytes of the scratch buffer back out of `inp`.
fn reply(
    env: &Env<'_>,
    inp: &Port,
    n: usize,
    scratch: &mut Scratch,
) -> Result<Outcome, DropReason> {
    let q = &inp.queues[env.w];
    let pc = inp.counters.worker(env.w);
    match q.send(&scratch.out[..n], &VnetHdr::default()) {
        Ok(()) => {
            bump(&pc.tx_packets, 1);
            bump(&pc.tx_bytes, n as u64);
            if let Some(cap) = env.capture {
                let out = std::mem::take(&mut scratch.out);
                capture_sent(cap, env.w, inp, &out[..n], scratch);
                scratch.out = out;
            }
            Ok(Outcome::Answered)
        }
        Err(e) => {
            bump(&pc.tx_dropped, 1);
            Err(port_error(inp, e, scratch))
        }
    }
}

fn port_error(port: &Port, e: PortError, scratch: &mut Scratch) -> DropReason {
    match e {
        PortError::Gone { .. } => {
            port.gone.store(true, Ordering::Relaxed);
            scratch.saw_gone = true;
            DropReason::PortGone
        }
        PortError::Io { .. } => DropReason::TxFailed,
    }
}

/// Send a forwarded frame to `dst`, completing offload work `dst` cannot take.
pub(crate) fn transmit(
    env: &Env<'_>,
    dst: &Port,
    frame: &mut [u8],
    vnet: &VnetHdr,
    scratch: &mut Scratch,
) -> Result<(), DropReason> {
    let dc = dst.counters.worker(env.w);
    let r = transmit_inner(env, dst, frame, vnet, scratch);
    match (r, env.capture) {
        (Err(_), _) => bump(&dc.tx_dropped, 1),
        (Ok(()), Some(cap)) => capture_sent(cap, env.w, dst, frame, scratch),
        (Ok(()), None) => {}
    }
    r
}

fn transmit_inner(
    env: &Env<'_>,
    dst: &Port,
    frame: &mut [u8],
    vnet: &VnetHdr,
    scratch: &mut Scratch,
) -> Result<(), DropReason> {
    if dst.is_gone() {
        return Err(DropReason::PortGone);
    }
    let q = &dst.queues[env.w];
    let dc = dst.counters.worker(env.w);
    if vnet.is_plain() || q.offloads() {
        return match q.send(frame, vnet) {
            Ok(()) => {
                bump(&dc.tx_packets, 1);
                bump(&dc.tx_bytes, frame.len() as u64);
                Ok(())
            }
            Err(e) => Err(port_error(dst, e, scratch)),
        };
    }
    if vnet.gso_type != VnetHdr::GSO_NONE {
        let plain = VnetHdr::default();
        let Scratch { out, .. } = scratch;
        let r = segment(frame, vnet, out, |seg| {
            q.send(seg, &plain)?;
            bump(&dc.tx_packets, 1);
            bump(&dc.tx_bytes, seg.len() as u64);
            Ok::<(), PortError>(())
        });
        return match r {
            Ok(Ok(_)) => {
                bump(&env.wc.tso_segmented, 1);
                Ok(())
            }
            Ok(Err(e)) => Err(port_error(dst, e, scratch)),
            Err(_) => Err(DropReason::TxFailed),
        };
    }
    complete_csum(frame, vnet).map_err(|_| DropReason::TxFailed)?;
    bump(&env.wc.csum_completed, 1);
    match q.send(frame, &VnetHdr::default()) {
        Ok(()) => {
            bump(&dc.tx_packets, 1);
            bump(&dc.tx_bytes, frame.len() as u64);
            Ok(())
        }
        Err(e) => Err(port_error(dst, e, scratch)),
    }
}

/// Check and judge a parsed frame that is not untagged IPv6; say what to do
/// with it.
fn decide<'t>(
    env: &Env<'t>,
    inp: &Port,
    frame: &[u8],
    parsed: &Parsed,
) -> Result<Action<'t>, DropReason> {
    match parsed {
        Parsed::Ipv4 {
            eth,
            pkt,
            l3_offset,
            payload_offset,
            ip_len,
            ..
        } => decide4(
            env,
            inp,
            frame,
            eth,
            pkt,
            *l3_offset,
            *payload_offset,
            *ip_len,
        ),
        Parsed::Arp { eth, arp } => {
            check_eth(inp, eth)?;
            match inp.kind {
                Kind::Instance { mac, ip } => {
                    if arp.sha != mac
                        || (arp.spa != ip && !(arp.spa.is_unspecified() && arp.op == ARP_REQUEST))
                    {
                        return Err(DropReason::SpoofedArp);
                    }
                    arp_action(env, inp, arp)
                }
                Kind::Uplink => {
                    if claims_instance(env, arp.spa) {
                        return Err(DropReason::UplinkSpoof);
                    }
                    arp_action(env, inp, arp)
                }
            }
        }
        // Untagged IPv6 is judged by `decide6`; tagged frames are dropped by
        // the check.
        Parsed::Ipv6 { eth, .. } => {
            check_eth(inp, eth)?;
            Err(DropReason::UnsupportedEthertype)
        }
    }
}

/// The Ethernet checks of every frame [`decide`]s: no 802.1Q tag, an instance
/// sends from its own MAC; the uplink's MAC is learnt.
#[inline(always)]
fn check_eth(inp: &Port, eth: &Eth) -> Result<(), DropReason> {
    if eth.vlan.is_some() {
        return Err(DropReason::VlanTagged);
    }
    match inp.kind {
        Kind::Instance { mac, .. } => {
            if eth.src != mac {
                return Err(DropReason::SpoofedMac);
            }
        }
        Kind::Uplink => learn(inp, eth),
    }
    Ok(())
}

/// An instance's frame to no instance goes out the uplink (none:
/// `UnknownDestination`), to the MAC the uplink's router was learned at when
/// it was sent to the gateway's MAC.
#[inline(always)]
fn to_uplink<'t>(env: &Env<'t>, eth: &Eth) -> Result<(&'t Arc<Port>, Option<Mac>), DropReason> {
    let up = env
        .table
        .uplink
        .as_ref()
        .ok_or(DropReason::UnknownDestination)?;
    let m = if eth.dst == GATEWAY_MAC {
        u64_to_mac(up.learned_mac.load(Ordering::Relaxed))
    } else {
        None
    };
    Ok((up, m))
}

/// [`decide`] for an IPv4 packet (the facts of its `Parsed::Ipv4`): always
/// inlined, it is the burst loop's hot path.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn decide4<'t>(
    env: &Env<'t>,
    inp: &Port,
    frame: &[u8],
    eth: &Eth,
    pkt: &Packet,
    l3_offset: u16,
    payload_offset: u16,
    ip_len: u16,
) -> Result<Action<'t>, DropReason> {
    check_eth(inp, eth)?;
    match inp.kind {
        Kind::Instance { mac, ip } => {
            // Non-first fragments carry `L4::Other`, so this is a whole datagram or a first fragment.
            let udp = pkt.key.proto == proto::UDP && matches!(pkt.l4, L4::Udp);
            let dhcp_client = udp && pkt.key.dport == dhcp::SERVER_PORT;
            if pkt.key.src != ip && !(dhcp_client && pkt.key.src.is_unspecified()) {
                return Err(DropReason::SpoofedIp);
            }
            if udp && (pkt.key.sport == dhcp::SERVER_PORT || pkt.key.dport == dhcp::CLIENT_PORT) {
                return Err(DropReason::RogueDhcp);
            }
            if dhcp_client {
                let end = usize::from(l3_offset) + usize::from(ip_len);
                let payload = frame.get(usize::from(payload_offset)..end).unwrap_or(&[]);
                return dhcp_action(env, mac, ip, payload);
            }
            let dst = pkt.key.dst;
            if env.net.is_broadcast(dst) || eth.is_multicast_dst() {
                return Err(DropReason::Broadcast);
            }
            let (to, dst_mac) = match env.table.by_ip(dst) {
                Some(p) => (known_instance(env, p, dst)?, instance_mac(p)),
                None if dst == env.net.gateway => {
                    return Err(DropReason::UnknownDestination);
                }
                // An instance of another host: no ingress rules here
                // (its host enforces them), the flow is tracked for
                // the reply, the frame goes into the overlay.
                None if let Some(o) = &env.overlay
                    && let Some((info, to)) = o.dir.remote_instance(dst) =>
                {
                    return overlay_action(env, o, pkt, ip, info.mac, to);
                }
                // An instance of the snapshot without a port (nor a
                // live host) is not reachable.
                None if env.snap.instance_by_ip(dst).is_some() => {
                    return Err(DropReason::UnknownDestination);
                }
                None => to_uplink(env, eth)?,
            };
            judge_for(env, to, pkt, frame.len(), |_| false)?;
            Ok(Action::Forward { to, dst_mac })
        }
        Kind::Uplink => {
            let src = pkt.key.src;
            if claims_instance(env, src) {
                return Err(DropReason::UplinkSpoof);
            }
            let dst = pkt.key.dst;
            if env.net.is_broadcast(dst) || eth.is_multicast_dst() {
                return Err(DropReason::Broadcast);
            }
            let to = env.table.by_ip(dst).ok_or(DropReason::UnknownDestination)?;
            let to = known_instance(env, to, dst)?;
            judge_for(env, to, pkt, frame.len(), |_| false)?;
            Ok(Action::Forward {
                to,
                dst_mac: instance_mac(to),
            })
        }
    }
}

/// An IPv4 packet from instance `ip` to an instance of another host (cluster
/// mode): judged as egress and tracked for the reply, then sent into the
/// overlay with the sender's identity.
#[inline(never)]
fn overlay_action<'t>(
    env: &Env<'t>,
    o: &OverlayEnv<'t>,
    pkt: &Packet,
    ip: Ipv4Addr,
    dst_mac: Mac,
    to: SocketAddrV4,
) -> Result<Action<'t>, DropReason> {
    let Some(identity) = o.dir.local_identity(ip) else {
        return Ok(Action::VxlanDrop(VxlanDrop::NoIdentity));
    };
    let dir = o.dir;
    env.ct
        .judge_scoped(env.snap, pkt, env.now, |a| dir.is_remote(a))?;
    Ok(Action::Overlay {
        to,
        dst_mac,
        identity,
    })
}

/// Judge an untagged IPv6 frame (see the module docs): housekeeping (neighbor
/// discovery, router solicitations, MLD) from its raw bytes ([`crate::nd`]),
/// data by the parser's facts (`parsed`, whose refusal is the drop reason):
/// source check, destination, [`judge_for`].
///
/// A frame the parser accepted whose upper layer is not ICMPv6 (TCP, UDP,
/// ...) is no housekeeping, and its Ethernet and IP header facts are the
/// parser's: [`data6`] judges it without reading it a second time with
/// [`nd::parse`]. (When the parser accepts a frame, `nd::parse` accepts it
/// too, with the same addresses, and its protocol after an optional
/// hop-by-hop header is ICMPv6 only if the parser's, after every extension
/// header, is.) Everything else goes through [`nd6`].
#[inline]
fn decide6<'t>(
    env: &Env<'t>,
    inp: &Port,
    frame: &[u8],
    parsed: &Result<Parsed, DropReason>,
    vnet: &VnetHdr,
) -> Result<Action<'t>, DropReason> {
    match parsed {
        Ok(p @ Parsed::Ipv6 { pkt, .. }) if pkt.key.proto != proto::ICMPV6 => {
            data6(env, inp, frame, p, vnet)
        }
        _ => nd6(env, inp, frame, parsed, vnet),
    }
}

/// [`decide6`] of a data packet (`parsed`, an IPv6 packet that is no
/// housekeeping): source check, destination, [`judge_for`].
#[inline(always)]
fn data6<'t>(
    env: &Env<'t>,
    inp: &Port,
    frame: &[u8],
    parsed: &Parsed,
    vnet: &VnetHdr,
) -> Result<Action<'t>, DropReason> {
    let Parsed::Ipv6 { eth, pkt, .. } = parsed else {
        return Err(DropReason::UnsupportedEthertype);
    };
    let (src, dst) = (pkt.key.src, pkt.key.dst);
    match inp.kind {
        Kind::Instance { mac, .. } => {
            if eth.src != mac {
                return Err(DropReason::SpoofedMac);
            }
            check_offload(parsed, vnet)?;
            // The source must be the instance's address in the /64; its
            // link-local address ([`nd::Own`]'s `ll`) is refused as data
            // with nothing to deliver to, and checked first (the two are one
            // address only with the prefix fe80::/64). The link-local address
            // is computed only on a refusal.
            let global = env.net.subnet6.map(|p| eui64_address(p, mac));
            if Some(src) != global {
                return Err(if src == link_local_address(mac) {
                    DropReason::UnknownDestination
                } else {
                    DropReason::SpoofedIp
                });
            }
            if (u128::from(src) >> 64) as u64 == 0xfe80_0000_0000_0000 {
                // `src` is the global address and the link-local one.
                return Err(DropReason::UnknownDestination);
            }
            if dst.is_multicast() || eth.is_multicast_dst() {
                return Err(DropReason::Broadcast);
            }
            let (to, dst_mac) = match port_of6(env, dst) {
                Some(p) => (p, instance_mac(p)),
                // An instance of another host: as for IPv4 (see `decide`),
                // judged here as egress and tracked, into the overlay with
                // the sender's identity.
                None if let Some(o) = &env.overlay
                    && let Some((info, to)) = o.dir.remote_instance6(dst) =>
                {
                    let Kind::Instance { ip, .. } = inp.kind else {
                        return Err(DropReason::UnknownDestination);
                    };
                    let Some(identity) = o.dir.local_identity(ip) else {
                        return Ok(Action::VxlanDrop(VxlanDrop::NoIdentity));
                    };
                    let dir = o.dir;
                    env.ct
                        .judge_scoped6(env.snap, pkt, env.now, |a| dir.is_remote6(a))?;
                    return Ok(Action::Overlay {
                        to,
                        dst_mac: info.mac,
                        identity,
                    });
                }
                None if env.snap.instance_by_ip6(dst).is_some()
                    || is_router6(env, dst)
                    || dst.is_unicast_link_local()
                    || dst.is_loopback()
                    || dst.is_unspecified() =>
                {
                    return Err(DropReason::UnknownDestination);
                }
                None => to_uplink(env, eth)?,
            };
            judge_for(env, to, pkt, frame.len(), |_| false)?;
            Ok(Action::Forward { to, dst_mac })
        }
        Kind::Uplink => {
            learn(inp, eth);
            if claims_instance6(env, src) {
                return Err(DropReason::UplinkSpoof);
            }
            check_offload(parsed, vnet)?;
            if dst.is_multicast() || eth.is_multicast_dst() {
                return Err(DropReason::Broadcast);
            }
            let to = port_of6(env, dst).ok_or(DropReason::UnknownDestination)?;
            judge_for(env, to, pkt, frame.len(), |_| false)?;
            Ok(Action::Forward {
                to,
                dst_mac: instance_mac(to),
            })
        }
    }
}

/// [`decide6`] of everything but non-ICMPv6 data: the frame read by
/// [`nd::parse`]; housekeeping answered or absorbed, data (ICMPv6 that is no
/// housekeeping) to [`data6`] after the checks that come first, and a
/// frame the parser refused dropped for its reason.
#[inline(never)]
fn nd6<'t>(
    env: &Env<'t>,
    inp: &Port,
    frame: &[u8],
    parsed: &Result<Parsed, DropReason>,
    vnet: &VnetHdr,
) -> Result<Action<'t>, DropReason> {
    let v = match nd::parse(frame) {
        Ok(v) => v,
        // The parser's reason when it has one (e.g. a bad extension header).
        Err(r) => return Err(parsed.err().unwrap_or(r)),
    };
    let housekeeping = v.icmp_type().filter(|t| nd::is_housekeeping(*t));
    if housekeeping.is_some() && !vnet.is_plain() {
        return Err(DropReason::BadOffload);
    }
    match inp.kind {
        Kind::Instance { mac, .. } => {
            if v.eth_src != mac {
                return Err(DropReason::SpoofedMac);
            }
            if let Some(t) = housekeeping {
                let own = nd::Own::of(mac, env.net.subnet6);
                return nd_action(env, inp, nd::classify(&v, t, &own)?);
            }
        }
        Kind::Uplink => {
            if v.eth_src[0] & 1 == 0 {
                let m = mac_to_u64(v.eth_src);
                if inp.learned_mac.load(Ordering::Relaxed) != m {
                    inp.learned_mac.store(m, Ordering::Relaxed);
                }
            }
            if claims_instance6(env, v.src) {
                return Err(DropReason::UplinkSpoof);
            }
            match housekeeping {
                // Questions about the switch's side are answered as ARP
                // requests are; everything else of the outside's
                // housekeeping (its RS, RA, DAD, MLD) is absorbed.
                Some(nd::ty::NS) if !v.src.is_unspecified() => {
                    let target =
                        v.l4.get(8..24)
                            .map(|b| {
                                let mut a = [0u8; 16];
                                a.copy_from_slice(b);
                                Ipv6Addr::from(a)
                            })
                            .ok_or(DropReason::TruncatedIpv6)?;
                    return nd_action(
                        env,
                        inp,
                        Nd::Solicit {
                            mac: v.eth_src,
                            ip: v.src,
                            target,
                        },
                    );
                }
                // The outside's answer to an instance's solicitation (its
                // target is no address of the switch's side: checked like
                // its source): to the instance it is addressed to.
                Some(nd::ty::NA) => {
                    let target =
                        v.l4.get(8..24)
                            .map(|b| {
                                let mut a = [0u8; 16];
                                a.copy_from_slice(b);
                                Ipv6Addr::from(a)
                            })
                            .ok_or(DropReason::TruncatedIpv6)?;
                    if claims_instance6(env, target) {
                        return Err(DropReason::UplinkSpoof);
                    }
                    return match port_of6(env, v.dst) {
                        Some(to) => Ok(Action::Forward {
                            to,
                            dst_mac: instance_mac(to),
                        }),
                        None => Ok(Action::NdAbsorb),
                    };
                }
                Some(_) => return Ok(Action::NdAbsorb),
                None => {}
            }
        }
    }
    // A data packet: the parser's facts (its refusal is the drop reason);
    // `data6` repeats the checks above (with the same addresses: the
    // parser's), which it passes.
    match parsed {
        Ok(p @ Parsed::Ipv6 { .. }) => data6(env, inp, frame, p, vnet),
        Ok(_) => Err(DropReason::UnsupportedEthertype),
        Err(r) => Err(*r),
    }
}

/// What to do with an IPv6 housekeeping message [`nd::classify`] let through.
fn nd_action<'t>(env: &Env<'t>, inp: &Port, nd: Nd) -> Result<Action<'t>, DropReason> {
    match nd {
        Nd::Absorb => Ok(Action::NdAbsorb),
        Nd::Advertise { mac, ip } => match env.net.subnet6 {
            Some(prefix) if matches!(inp.kind, Kind::Instance { .. }) => {
                Ok(Action::NdReply(NdReply::Ra { mac, ip, prefix }))
            }
            _ => Ok(Action::NdAbsorb),
        },
        Nd::Solicit { mac, ip, target } => {
            let na = |answer: Mac, router: bool| {
                Ok(Action::NdReply(NdReply::Na {
                    to_mac: mac,
                    to_ip: ip,
                    target,
                    mac: answer,
                    router,
                }))
            };
            let router = target == nd::router_ll()
                || env
                    .net
                    .subnet6
                    .is_some_and(|p| target == nd::router_addr(p));
            if router && matches!(inp.kind, Kind::Instance { .. }) {
                return na(GATEWAY_MAC, true);
            }
            let Some(ip4) = env.snap.instance_ip4_by_ip6(target) else {
                // From an instance, for an address of the outside world in
                // the /64 (not an instance's, not link-local): asked on the
                // uplink, as ARP requests are; its answer comes back below.
                let outside = !target.is_unicast_link_local()
                    && env.net.subnet6.is_some_and(|p| p.contains(&target));
                return match (&inp.kind, &env.table.uplink) {
                    (Kind::Instance { .. }, Some(up)) if outside => Ok(Action::Forward {
                        to: up,
                        dst_mac: None,
                    }),
                    _ => Ok(Action::NdAbsorb),
                };
            };
            match env.table.by_ip(ip4) {
                Some(p) if p.id != inp.id => match p.kind {
                    Kind::Instance { mac: m, .. } => na(m, false),
                    Kind::Uplink => Ok(Action::NdAbsorb),
                },
                // An instance of another live host: answered here with its
                // MAC (as ARP is), so no solicitation crosses hosts.
                None if matches!(inp.kind, Kind::Instance { .. })
                    && let Some(o) = &env.overlay
                    && let Some((info, _)) = o.dir.remote_instance6(target) =>
                {
                    na(info.mac, false)
                }
                _ => Ok(Action::NdAbsorb),
            }
        }
    }
}

/// The attached port of the instance with IPv6 address `ip` (found through
/// the snapshot, so a port the snapshot does not know gets nothing).
#[inline]
pub(crate) fn port_of6<'t>(env: &Env<'t>, ip: Ipv6Addr) -> Option<&'t Arc<Port>> {
    let p = env.table.by_ip(env.snap.instance_ip4_by_ip6(ip)?)?;
    matches!(p.kind, Kind::Instance { .. }).then_some(p)
}

/// The switch's router addresses (link-local, and `prefix::1`).
#[inline]
fn is_router6(env: &Env<'_>, ip: Ipv6Addr) -> bool {
    ip == nd::router_ll() || env.net.subnet6.is_some_and(|p| ip == nd::router_addr(p))
}

/// Whether an IPv6 source the uplink uses belongs to the switch's side: the
/// router's addresses or an instance's.
#[inline]
fn claims_instance6(env: &Env<'_>, ip: Ipv6Addr) -> bool {
    ip == nd::router_ll()
        || env.net.subnet6.is_some_and(|p| ip == nd::router_addr(p))
        || env.snap.instance_by_ip6(ip).is_some()
}

/// Whether an address the uplink uses as its own belongs to the switch's side:
/// the gateway, an attached instance, or an instance of the snapshot (which group
/// rules would treat as a verified member even before its port is attached).
#[inline]
fn claims_instance(env: &Env<'_>, ip: Ipv4Addr) -> bool {
    ip == env.net.gateway || env.table.by_ip(ip).is_some() || env.snap.instance_by_ip(ip).is_some()
}

/// Fail closed while the port table and the snapshot disagree: an instance port
/// whose address the published snapshot does not know as an instance (port added
/// before its snapshot) gets nothing, since conntrack would otherwise judge the
/// packet as egress to the outside world.
#[inline]
pub(crate) fn known_instance<'t>(
    env: &Env<'t>,
    p: &'t Arc<Port>,
    dst: Ipv4Addr,
) -> Result<&'t Arc<Port>, DropReason> {
    if env.snap.instance_by_ip(dst).is_none() {
        return Err(DropReason::NoRule);
    }
    Ok(p)
}

#[inline]
fn instance_mac(p: &Port) -> Option<Mac> {
    match p.kind {
        Kind::Instance { mac, .. } => Some(mac),
        Kind::Uplink => None,
    }
}

/// Remember the uplink's MAC (only written when it changes).
#[inline]
fn learn(inp: &Port, eth: &Eth) {
    if eth.src[0] & 1 == 0 {
        let m = mac_to_u64(eth.src);
        if inp.learned_mac.load(Ordering::Relaxed) != m {
            inp.learned_mac.store(m, Ordering::Relaxed);
        }
    }
}

fn arp_action<'t>(env: &Env<'t>, inp: &Port, arp: &Arp) -> Result<Action<'t>, DropReason> {
    if arp.tpa == arp.spa {
        // Gratuitous ARP / announcement: nobody to answer, nothing to forward.
        return Err(DropReason::Broadcast);
    }
    let from_instance = matches!(inp.kind, Kind::Instance { .. });
    match arp.op {
        ARP_REQUEST => {
            if arp.tpa == env.net.gateway {
                return Ok(Action::ArpReply {
                    req: *arp,
                    mac: GATEWAY_MAC,
                });
            }
            match env.table.by_ip(arp.tpa) {
                // A probe for one's own address must stay unanswered (RFC 5227).
                Some(p) if p.id == inp.id => Err(DropReason::Broadcast),
                Some(p) => match p.kind {
                    Kind::Instance { mac, .. } => Ok(Action::ArpReply { req: *arp, mac }),
                    Kind::Uplink => Err(DropReason::UnknownDestination),
                },
                // An instance of another live host: answered here, so no
                // broadcast crosses hosts.
                None if from_instance
                    && let Some(o) = &env.overlay
                    && let Some((info, _)) = o.dir.remote_instance(arp.tpa) =>
                {
                    Ok(Action::ArpReply {
                        req: *arp,
                        mac: info.mac,
                    })
                }
                None if from_instance => {
                    let up = env
                        .table
                        .uplink
                        .as_ref()
                        .ok_or(DropReason::UnknownDestination)?;
                    Ok(Action::Forward {
                        to: up,
                        dst_mac: None,
                    })
                }
                None => Err(DropReason::Broadcast),
            }
        }
        ARP_REPLY => match env.table.by_ip(arp.tpa) {
            Some(p) if p.id != inp.id => Ok(Action::Forward {
                to: p,
                dst_mac: instance_mac(p),
            }),
            Some(_) => Err(DropReason::UnknownDestination),
            None if from_instance => {
                let up = env
                    .table
                    .uplink
                    .as_ref()
                    .ok_or(DropReason::UnknownDestination)?;
                Ok(Action::Forward {
                    to: up,
                    dst_mac: None,
                })
            }
            None => Err(DropReason::UnknownDestination),
        },
        _ => Err(DropReason::MalformedArp),
    }
}

#[inline(never)]
fn dhcp_action<'t>(
    env: &Env<'t>,
    mac: Mac,
    ip: Ipv4Addr,
    payload: &[u8],
) -> Result<Action<'t>, DropReason> {
    if dhcp::bootp_op(payload) == Some(2) {
        return Err(DropReason::RogueDhcp);
    }
    let req = dhcp::parse_request(payload).map_err(|_| DropReason::Broadcast)?;
    let lease = Lease {
        ip,
        prefix_len: env.net.subnet.prefix_len(),
        gateway: env.net.gateway,
        server_mac: GATEWAY_MAC,
        lease_secs: env.net.lease_secs,
    };
    // The reply goes to the port's verified MAC whatever chaddr says.
    let req = DhcpRequest { chaddr: mac, ..req };
    match dhcp::decide(&req, &lease) {
        Some(ty) => Ok(Action::DhcpReply { req, ty, lease }),
        None => Ok(Action::Consume),
    }
}

/// [`Conntrack::judge_scoped`] for a frame of `bytes` bound for port `to`: a
/// packet a rule decided is counted on that rule (`env.hits`); a refusal is
/// counted, by reason, on `to`'s `denied` counters (worker `env.w`'s block:
/// single writer, like its tx counters), so an instance's view shows what was
/// refused on the way to it (and `no_rule` there, summed over a group's
/// members, is the group's "no rule matched" count).
#[inline]
pub(crate) fn judge_for<F: Family>(
    env: &Env<'_>,
    to: &Port,
    pkt: &filter::Packet<F>,
    bytes: usize,
    remote: impl Fn(F) -> bool + Copy,
) -> Result<(), DropReason> {
    let counted = env
        .ct
        .judge_counted_in(env.snap, pkt, env.now, remote, |slot, new_flow| {
            env.hits.count(slot, bytes, new_flow)
        });
    if let Err(reason) = counted {
        bump(&to.counters.worker(env.w).denied[reason.index()], 1);
    }
    counted
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broadcast_addresses() {
        let n = NetParams::new("172.31.0.0/16".parse().unwrap(), 60);
        assert_eq!(n.gateway, Ipv4Addr::new(172, 31, 0, 1));
        assert!(n.is_broadcast(Ipv4Addr::BROADCAST));
        assert!(n.is_broadcast(Ipv4Addr::new(172, 31, 255, 255)));
        assert!(n.is_broadcast(Ipv4Addr::new(224, 0, 0, 251)));
        assert!(!n.is_broadcast(Ipv4Addr::new(172, 31, 255, 254)));
    }
}
