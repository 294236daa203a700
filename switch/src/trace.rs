//! Trace: frames of a given shape through the datapath's own decision code,
//! against the live rules, without touching live state (`sgswitch trace`).
//!
//! Contract:
//! * [`Datapath::trace`] loads the published rule snapshot and port table once
//!   and runs every frame through [`pipeline::process`] — the very function the
//!   workers call — in order. No second implementation of any check.
//! * Every live port is mirrored by a scratch port (same id, name, role, `gone`
//!   tombstone and learned uplink MAC) with one in-memory queue: what the
//!   pipeline transmits or answers lands there and is reported; nothing reaches
//!   a real port and no live counter moves.
//! * Connection state lives in a scratch connection table (the live table's
//!   timeouts, revoke mode and quota) that starts empty, so a sequence (the
//!   request a reply answers, then the reply) builds exactly the state the
//!   datapath would build. The live table is not read: a trace tells what frames
//!   of this shape do under the current rules, not which flows are open now.
//! * Cluster mode: the trace runs with the live overlay directory but a dry
//!   overlay (`OverlayEnv::dry`): a frame to an instance of another live host,
//!   IPv4 or IPv6, goes through the same code as in a worker (ARP/neighbor
//!   solicitation answered with the remote MAC, the sender's egress verdict
//!   from `judge_scoped`/`judge_scoped6`), and where a worker would
//!   encapsulate and send it, the trace notes the host's underlay address
//!   and the identity it would carry ([`Traced::overlay`]); nothing is sent.
//!   A destination on another host is flagged by [`Traced::remote`]; its
//!   ingress verdict is its host's.
//! * Both families: an IPv4 frame's facts are in [`Traced::packet`], an IPv6
//!   frame's in [`Traced::packet6`]; the connection-table and rule questions
//!   are asked through the same generic code ([`filter::conntrack::Family`]).
//!   An instance's port is named by its IPv4 address whatever the family of
//!   the frames it sends ([`Ingress::Instance`]).
//! * Control-plane only: allocates (a few KiB of scratch), takes no lock the
//!   workers take.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use filter::conntrack::Family;
use filter::{Conntrack, CtConfig, Packet, Packet6, Parsed, Snapshot, parse_frame};

use crate::config::PortId;
use crate::counters::{RuleHits, WorkerCounters};
use crate::datapath::Datapath;
use crate::mem::{MemPeer, mem_port};
use crate::overlay::OverlayEnv;
use crate::pipeline::{Env, Outcome, Scratch, process};
use crate::port::VnetHdr;
use crate::table::{Kind, Port, PortTable};

/// Where a traced frame enters the switch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ingress {
    /// The port of the instance with this address.
    Instance(Ipv4Addr),
    /// The uplink (the outside world).
    Uplink,
}

/// What happened to one traced frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Traced {
    pub outcome: Outcome,
    /// The port the frame was forwarded to: `(id, name, instance address)`
    /// (`None` address: the uplink).
    pub delivered: Option<(PortId, String, Option<Ipv4Addr>)>,
    /// The frame the switch answered with (ARP or DHCP reply), if any.
    pub answer: Option<Vec<u8>>,
    /// The IPv4 packet as the pipeline parsed it (`None`: not IPv4, or
    /// unparsable).
    pub packet: Option<Packet>,
    /// The IPv6 packet as the pipeline parsed it (`None`: not IPv6, or
    /// unparsable).
    pub packet6: Option<Packet6>,
    /// Whether a live flow of this packet's key was in the (scratch)
    /// connection table before the frame.
    pub tracked_before: bool,
    /// Whether a live flow of this packet's key is there after it.
    pub tracked_after: bool,
    /// Whether the snapshot's rules allow the packet on their own
    /// (`Snapshot::allows`, as conntrack asks them for a new flow).
    pub rules_allow: bool,
    /// Cluster mode: the destination is an instance of another host.
    pub remote: bool,
    /// Cluster mode: the frame was sent into the overlay (the trace sends
    /// nothing): the owning host's underlay address and the VXLAN-GBP policy
    /// id (the sender's identity) it carries.
    pub overlay: Option<(SocketAddrV4, u16)>,
}

/// The result of [`Datapath::trace`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceRun {
    /// Generation of the rule snapshot the frames were judged against.
    pub generation: u64,
    pub frames: Vec<Traced>,
}

/// Why a trace could not run.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TraceError {
    #[error("no port of this switch has address {0}: the instance is not attached here")]
    NoPort(Ipv4Addr),
    #[error("this switch has no uplink: traffic from outside cannot reach it")]
    NoUplink,
}

/// Scratch connection table entries (flows of one trace).
const SCRATCH_FLOWS: usize = 64;

impl Datapath {
    /// Run `frames` (each with where it enters) through the pipeline against
    /// the published rules and ports (see the module docs).
    pub fn trace(&self, frames: &[(Ingress, Vec<u8>)]) -> Result<TraceRun, TraceError> {
        let snap = self.rules.load_full();
        let live = self.ports.load_full();
        let mut peers: BTreeMap<PortId, MemPeer> = BTreeMap::new();
        let ports: Vec<Arc<Port>> = live
            .ports
            .iter()
            .map(|p| {
                let (queues, peer) = mem_port(1);
                peers.insert(p.id, peer);
                let s = Port::new(p.id, p.name.clone(), p.role.clone(), queues);
                s.gone.store(p.is_gone(), Ordering::Relaxed);
                s.learned_mac
                    .store(p.learned_mac.load(Ordering::Relaxed), Ordering::Relaxed);
                Arc::new(s)
            })
            .collect();
        let table = PortTable::build(ports, live.version);
        let live_cfg = self.ct.config();
        let ct = Conntrack::new(CtConfig {
            capacity: SCRATCH_FLOWS,
            capacity6: SCRATCH_FLOWS,
            per_instance_quota: live_cfg.per_instance_quota,
            timeouts: live_cfg.timeouts,
            on_revoke: live_cfg.on_revoke,
        });
        let wc = WorkerCounters::default();
        // Scratch rule counters (following no layout: a trace counts nothing).
        let hits = RuleHits::default();
        let now = self.now_secs();
        let dir = self.dir.load_full();
        let env = Env {
            snap: &snap,
            table: &table,
            ct: &ct,
            net: &self.net,
            now,
            w: 0,
            wc: &wc,
            hits: &hits,
            overlay: self.overlay.as_ref().map(|ov| OverlayEnv {
                ov,
                dir: &dir,
                dry: true,
            }),
            capture: None,
        };
        let mut scratch = Scratch::default();
        let mut out = Vec::with_capacity(frames.len());
        for (ingress, frame) in frames {
            let inp = match ingress {
                Ingress::Instance(ip) => table.by_ip(*ip).ok_or(TraceError::NoPort(*ip))?,
                Ingress::Uplink => table.uplink.as_ref().ok_or(TraceError::NoUplink)?,
            };
            let (packet, packet6) = match parse_frame(frame) {
                Ok(Parsed::Ipv4 { pkt, .. }) => (Some(pkt), None),
                Ok(Parsed::Ipv6 { pkt, .. }) => (None, Some(pkt)),
                _ => (None, None),
            };
            let tracked = |ct: &Conntrack| {
                packet.is_some_and(|p| ct.tracks(&p.key, now))
                    || packet6.is_some_and(|p| ct.tracks(&p.key, now))
            };
            let tracked_before = tracked(&ct);
            let rules_allow = packet.is_some_and(|p| allows(&snap, &p))
                || packet6.is_some_and(|p| allows(&snap, &p));
            let remote = self.overlay.is_some()
                && (packet.is_some_and(|p| {
                    table.by_ip(p.key.dst).is_none() && dir.remote_instance(p.key.dst).is_some()
                }) || packet6.is_some_and(|p| dir.remote_instance6(p.key.dst).is_some()));
            let mut buf = frame.clone();
            scratch.overlay_sent = None;
            let outcome = process(&env, inp, &mut buf, &VnetHdr::default(), &mut scratch);
            let overlay = scratch.overlay_sent.take();
            let tracked_after = tracked(&ct);
            let mut delivered = None;
            let mut answer = None;
            for p in &table.ports {
                let sent = peers[&p.id].take();
                let Some(f) = sent.into_iter().next() else {
                    continue;
                };
                if p.id == inp.id && outcome == Outcome::Answered {
                    answer = Some(f.data);
                } else {
                    let ip = match p.kind {
                        Kind::Instance { ip, .. } => Some(ip),
                        Kind::Uplink => None,
                    };
                    delivered = Some((p.id, p.name.clone(), ip));
                }
            }
            out.push(Traced {
                outcome,
                delivered,
                answer,
                packet,
                packet6,
                tracked_before,
                tracked_after,
                rules_allow,
                remote,
                overlay,
            });
        }
        Ok(TraceRun {
            generation: snap.generation(),
            frames: out,
        })
    }
}

/// Whether the snapshot's rules allow `p` on their own (its admitting rule,
/// as conntrack asks for a new flow), in either family.
fn allows<F: Family>(snap: &Snapshot, p: &Packet<F>) -> bool {
    F::admitting_rule(snap, p).is_some()
}
