//! Flow policy: what state a packet creates or matches. TCP/UDP/ICMP timeouts,
//! ICMP errors related to tracked flows, revalidation against snapshot
//! generations and the revoke modes; the semantics are the contract in the
//! [module docs](super). The storage is [`super::table`].

use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::atomic::Ordering;

use super::family::Family;
use super::table::*;
use crate::compile::{RuleSlot, Snapshot};
use crate::{DropReason, FlowKey, Frag, IcmpKind, L4, Packet, Packet6, proto, tcp_flags};

/// Idle timeouts in seconds (AWS defaults where AWS documents one).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// TCP after a SYN until the other side answers. Default 120 (Linux `syn_sent`).
    pub tcp_syn_sent: u32,
    /// TCP once both sides spoke (or picked up mid-stream). Default 432000 (AWS, 5 days).
    pub tcp_established: u32,
    /// TCP after a FIN from either side. Default 120 (Linux `fin_wait`/`time_wait`).
    pub tcp_fin: u32,
    /// TCP after a RST. Default 10 (Linux `close`).
    pub tcp_closed: u32,
    /// UDP seen one way only. Default 30 (AWS).
    pub udp: u32,
    /// UDP seen both ways. Default 180 (AWS "UDP stream").
    pub udp_stream: u32,
    /// ICMP queries. Default 30.
    pub icmp: u32,
    /// Other IP protocols, tracked by address pair. Default 600 (Linux generic).
    pub other: u32,
    /// Fragment trains. Default 30 (Linux `ipfrag_time`).
    pub frag: u32,
    /// A flow cut by revalidation ([`RevokeMode::Revalidate`]), counted from its
    /// last (dropped) packet. While it lasts, both directions of the flow are
    /// dropped as [`DropReason::Revoked`], so that neither side's retransmissions
    /// re-open it (as an instance-initiated flow or a mid-stream pickup). Default
    /// 30: the flow stays cut while either side keeps sending with gaps under
    /// 30 s (Linux TCP retransmission backoff: roughly its first 50 s). After a
    /// longer silence the entry is reclaimed; a packet from the instance then opens
    /// a new instance-initiated flow, as any egress packet does.
    pub revoked: u32,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            tcp_syn_sent: 120,
            tcp_established: 432_000,
            tcp_fin: 120,
            tcp_closed: 10,
            udp: 30,
            udp_stream: 180,
            icmp: 30,
            other: 600,
            frag: 30,
            revoked: 30,
        }
    }
}

/// What happens to tracked flows when an edit removes their permission.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RevokeMode {
    /// Re-check a flow's original direction against the new snapshot on its next
    /// packet, cutting it if no longer allowed (default; like OpenStack's OVS
    /// firewall).
    Revalidate,
    /// Tracked flows pass until they time out (modern AWS behaviour).
    Keep,
}

/// Connection tracking configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CtConfig {
    /// Maximum number of IPv4 entries (flows + fragment trains).
    pub capacity: usize,
    /// Maximum number of IPv6 entries (their own table, whose slots are twice
    /// the size of IPv4's: see `conntrack::family`). Default a quarter of
    /// `capacity`, at least 1024: the IPv6 table then takes half the IPv4
    /// table's memory.
    pub capacity6: usize,
    /// Maximum entries charged to one instance.
    pub per_instance_quota: u32,
    pub timeouts: Timeouts,
    pub on_revoke: RevokeMode,
}

impl CtConfig {
    /// Defaults for a given capacity: quota `capacity / 16`, at least 1024;
    /// IPv6 capacity `capacity / 4`, at least 1024.
    pub fn with_capacity(capacity: usize) -> CtConfig {
        CtConfig {
            capacity,
            capacity6: (capacity / 4).max(1024),
            per_instance_quota: (capacity / 16).max(1024).min(u32::MAX as usize) as u32,
            timeouts: Timeouts::default(),
            on_revoke: RevokeMode::Revalidate,
        }
    }
}

impl Default for CtConfig {
    fn default() -> Self {
        CtConfig::with_capacity(1 << 20)
    }
}

/// TCP state of an entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(super) enum TcpState {
    SynSent = 0,
    Established = 1,
    Fin = 2,
    Closed = 3,
}

impl TcpState {
    pub(super) fn from_bits(b: u64) -> TcpState {
        match (b & TCP_MASK) >> TCP_SHIFT {
            0 => TcpState::SynSent,
            1 => TcpState::Established,
            2 => TcpState::Fin,
            _ => TcpState::Closed,
        }
    }

    pub(super) fn bits(self) -> u64 {
        (self as u64) << TCP_SHIFT
    }

    /// State of a new entry created by a packet with these flags.
    #[inline]
    pub(super) fn initial(flags: u8) -> TcpState {
        let start = if flags & tcp_flags::SYN != 0 && flags & tcp_flags::ACK == 0 {
            TcpState::SynSent
        } else {
            TcpState::Established
        };
        start.next(flags, true)
    }

    /// Transition on a packet of the flow.
    #[inline]
    pub(super) fn next(self, flags: u8, from_orig: bool) -> TcpState {
        if flags & tcp_flags::RST != 0 {
            TcpState::Closed
        } else if flags & tcp_flags::FIN != 0 {
            TcpState::Fin
        } else if flags & tcp_flags::SYN != 0
            && flags & tcp_flags::ACK == 0
            && from_orig
            && matches!(self, TcpState::Fin | TcpState::Closed)
        {
            TcpState::SynSent
        } else if self == TcpState::SynSent && !from_orig {
            TcpState::Established
        } else {
            self
        }
    }
}

/// The [`Pass`] of a tracked packet: by the rule that revalidated it, if any.
#[inline]
fn revalidated(by: Option<(RuleSlot, bool)>) -> Pass {
    match by {
        Some((slot, new_flow)) => Pass::Rule { slot, new_flow },
        None => Pass::State,
    }
}

#[inline]
/// Whether an ICMP error `pkt` quoting the datagram `inner` can belong to that
/// datagram's flow: it must go back to the datagram's sender, and an error sent by
/// an instance must come from the datagram's destination (instances cannot route,
/// and the source check guarantees their addresses). Errors from elsewhere (a
/// router on the uplink side) only need the first condition.
pub fn error_fits_flow<F: Family>(snap: &Snapshot, pkt: &Packet<F>, inner: &FlowKey<F>) -> bool {
    inner.src == pkt.key.dst
        && (inner.dst == pkt.key.src || F::instance(snap, pkt.key.src).is_none())
}

/// How a packet that passes was let through ([`Conntrack::judge_rule`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pass {
    /// No rule decided it: a packet of a tracked flow checked under this
    /// generation, egress, a later fragment of an admitted train, an ICMP
    /// error of a tracked flow, or (cluster mode) a packet whose destination's
    /// host enforces the rules.
    State,
    /// A rule of the destination's groups decided it (the first that matches,
    /// [`Snapshot::admitting_rule`]): a new flow's first packet, a packet judged
    /// by rules alone (ICMP replies, unrelated ICMP errors), or a tracked
    /// packet revalidated against a new generation. `new_flow`: the packet
    /// opened a connection-table entry (or restarted a revoked one), so the
    /// flow is counted on this rule.
    Rule { slot: RuleSlot, new_flow: bool },
}

/// Result of looking up a flow for a packet.
pub(super) enum Track {
    /// `by`: the rule that revalidated it (`fresh`: a revoked flow restarted
    /// by a new SYN), when revalidation asked the rules.
    Hit {
        idx: usize,
        ctl: u64,
        by: Option<(RuleSlot, bool)>,
    },
    Revoked,
    Miss,
}

impl Conntrack {
    /// Decide one IPv4 packet. See the module docs for the semantics
    /// ([`Conntrack::judge6`] for IPv6).
    #[inline]
    pub fn judge(&self, snap: &Snapshot, pkt: &Packet, now: u32) -> Result<(), DropReason> {
        self.judge_scoped(snap, pkt, now, |_| false)
    }

    /// [`Conntrack::judge`] on one host of a cluster (the overlay, docs/cluster.md
    /// §6.4): `remote(ip)` says whether instance `ip` of the snapshot lives on
    /// another host. Ingress rules are enforced where the destination lives, so a
    /// packet to a remote instance is judged like egress (allowed, tracked for
    /// its reply), and a flow whose original destination is remote is never cut
    /// by revalidation here (its host cuts it). With `|_| false` this is `judge`.
    #[inline]
    pub fn judge_scoped(
        &self,
        snap: &Snapshot,
        pkt: &Packet,
        now: u32,
        remote: impl Fn(Ipv4Addr) -> bool + Copy,
    ) -> Result<(), DropReason> {
        self.judge_counted(snap, pkt, now, remote, |_, _| {})
    }

    /// [`Conntrack::judge_scoped`] saying how a passing packet passed: by
    /// connection state or by which rule ([`Pass`]), for per-rule counters. One
    /// classification per new flow: the rule comes from the same lookup that
    /// decides ([`Snapshot::admitting_rule`] in place of `allows`).
    #[inline]
    pub fn judge_rule(
        &self,
        snap: &Snapshot,
        pkt: &Packet,
        now: u32,
        remote: impl Fn(Ipv4Addr) -> bool + Copy,
    ) -> Result<Pass, DropReason> {
        self.v4.judge_rule(snap, pkt, now, remote)
    }

    /// [`Conntrack::judge_rule`] handing a [`Pass::Rule`] to `on_rule` (called
    /// at most once, only for a packet that passes) instead of returning it:
    /// per-rule counters update where the rule is known, with no
    /// [`Pass`] to build and take apart on a new flow's path.
    #[inline]
    pub fn judge_counted(
        &self,
        snap: &Snapshot,
        pkt: &Packet,
        now: u32,
        remote: impl Fn(Ipv4Addr) -> bool + Copy,
        on_rule: impl FnMut(RuleSlot, bool),
    ) -> Result<(), DropReason> {
        self.v4.judge_counted(snap, pkt, now, remote, on_rule)
    }

    /// [`Conntrack::judge`] of an IPv6 packet.
    #[inline]
    pub fn judge6(&self, snap: &Snapshot, pkt: &Packet6, now: u32) -> Result<(), DropReason> {
        self.judge_rule6(snap, pkt, now, |_| false).map(|_| ())
    }

    /// [`Conntrack::judge_scoped`] of an IPv6 packet.
    #[inline]
    pub fn judge_scoped6(
        &self,
        snap: &Snapshot,
        pkt: &Packet6,
        now: u32,
        remote: impl Fn(Ipv6Addr) -> bool + Copy,
    ) -> Result<(), DropReason> {
        self.v6.judge_counted(snap, pkt, now, remote, |_, _| {})
    }

    /// The IPv6 entry point: [`Conntrack::judge_rule`] of an IPv6 packet, with
    /// the same semantics (the module docs), in the IPv6 table, against
    /// [`Snapshot::instance_by_ip6`], [`Snapshot::admitting_rule6`] and
    /// [`Snapshot::egress_allows6`]. `remote(ip)` says whether the instance
    /// with IPv6 address `ip` lives on another host. Both families share the
    /// per-instance quotas.
    #[inline]
    pub fn judge_rule6(
        &self,
        snap: &Snapshot,
        pkt: &Packet6,
        now: u32,
        remote: impl Fn(Ipv6Addr) -> bool + Copy,
    ) -> Result<Pass, DropReason> {
        self.v6.judge_rule(snap, pkt, now, remote)
    }

    /// [`Conntrack::judge_rule`] or [`Conntrack::judge_rule6`] by the family
    /// of the packet (`F` is [`Ipv4Addr`] or [`Ipv6Addr`]), for code that is
    /// itself generic over [`Family`].
    #[inline]
    pub fn judge_rule_in<F: Family>(
        &self,
        snap: &Snapshot,
        pkt: &Packet<F>,
        now: u32,
        remote: impl Fn(F) -> bool + Copy,
    ) -> Result<Pass, DropReason> {
        F::table(self).judge_rule(snap, pkt, now, remote)
    }

    /// [`Conntrack::judge_counted`] for either family (`F` is [`Ipv4Addr`] or
    /// [`Ipv6Addr`]): the datapath's entry point, counting a deciding rule
    /// through `on_rule`.
    #[inline]
    pub fn judge_counted_in<F: Family>(
        &self,
        snap: &Snapshot,
        pkt: &Packet<F>,
        now: u32,
        remote: impl Fn(F) -> bool + Copy,
        on_rule: impl FnMut(RuleSlot, bool),
    ) -> Result<(), DropReason> {
        F::table(self).judge_counted(snap, pkt, now, remote, on_rule)
    }

    /// Judge a burst: prefetch every packet's buckets, then [`Conntrack::judge`]
    /// each in order. `out[i]` is the verdict of `pkts[i]`; panics if `out` is
    /// shorter than `pkts`.
    pub fn judge_burst(
        &self,
        snap: &Snapshot,
        pkts: &[Packet],
        now: u32,
        out: &mut [Result<(), DropReason>],
    ) {
        for p in pkts {
            self.prefetch(p);
        }
        for (p, o) in pkts.iter().zip(&mut out[..pkts.len()]) {
            *o = self.judge(snap, p, now);
        }
    }
}

impl<F: Family> Table<F> {
    /// See [`Conntrack::judge_rule`].
    #[inline]
    pub(super) fn judge_rule(
        &self,
        snap: &Snapshot,
        pkt: &Packet<F>,
        now: u32,
        remote: impl Fn(F) -> bool + Copy,
    ) -> Result<Pass, DropReason> {
        let mut pass = Pass::State;
        self.judge_counted(snap, pkt, now, remote, |slot, new_flow| {
            pass = Pass::Rule { slot, new_flow }
        })?;
        Ok(pass)
    }

    /// See [`Conntrack::judge_counted`].
    #[inline]
    pub(super) fn judge_counted(
        &self,
        snap: &Snapshot,
        pkt: &Packet<F>,
        now: u32,
        remote: impl Fn(F) -> bool + Copy,
        mut on_rule: impl FnMut(RuleSlot, bool),
    ) -> Result<(), DropReason> {
        // Looked up only where needed: tracked flows never ask.
        let dst_is_inst = || F::instance(snap, pkt.key.dst).is_some() && !remote(pkt.key.dst);
        if let Frag::Later { id } = pkt.frag {
            if !dst_is_inst() {
                return Ok(());
            }
            return match self.find_alive(frag_key(&pkt.key, id), now) {
                Some(_) => Ok(()),
                None => Err(DropReason::UnmatchedFragment),
            };
        }
        let mut pass = Pass::State;
        if let L4::Icmp {
            kind: IcmpKind::Error { inner },
            ..
        } = pkt.l4
        {
            let unrelated = if error_fits_flow(snap, pkt, &inner) {
                let (k, _) = flow_key(&inner);
                match self.track(snap, k, None, now, remote) {
                    Track::Hit { by, .. } => {
                        pass = revalidated(by);
                        None
                    }
                    Track::Revoked => Some(DropReason::Revoked),
                    Track::Miss => Some(DropReason::UnrelatedIcmpError),
                }
            } else {
                Some(DropReason::UnrelatedIcmpError)
            };
            if let Some(reason) = unrelated {
                pass = match F::admitting_rule(snap, pkt) {
                    Some(slot) if !remote(pkt.key.dst) => Pass::Rule {
                        slot,
                        new_flow: false,
                    },
                    None if dst_is_inst() => return Err(reason),
                    _ => Pass::State,
                };
            }
        } else {
            let (k, src_is_a) = flow_key(&pkt.key);
            match self.track(snap, k, Some((pkt, src_is_a)), now, remote) {
                Track::Hit { idx, ctl, by } => {
                    self.refresh(idx, ctl, pkt, src_is_a, now);
                    pass = revalidated(by);
                }
                Track::Revoked => return Err(DropReason::Revoked),
                Track::Miss => {
                    // A new flow leaves a local instance only if its egress
                    // rules allow it (a remote source's host judged that);
                    // then the ingress rule (one source lookup for both). No
                    // ingress rule admits packets to non-instances: only
                    // egress judges them. A remote instance's rules are its
                    // host's.
                    let slot = match F::new_flow_rule(snap, pkt, !remote(pkt.key.src))? {
                        Some(slot) if !remote(pkt.key.dst) => Some(slot),
                        None if dst_is_inst() => return Err(DropReason::NoRule),
                        _ => None,
                    };
                    let creates = !matches!(
                        pkt.l4,
                        L4::Icmp {
                            kind: IcmpKind::Reply | IcmpKind::Other,
                            ..
                        }
                    );
                    if creates {
                        self.insert_flow(snap, pkt, k, src_is_a, now)?;
                    }
                    if let Frag::First { id } = pkt.frag {
                        self.touch_train(snap, pkt, id, now)?;
                    }
                    // Counted from here (not merged with the other arms'
                    // `pass`): a new flow's rule goes to the counters
                    // without a round trip through a shared variable.
                    if let Some(slot) = slot {
                        on_rule(slot, creates);
                    }
                    return Ok(());
                }
            }
        }
        if let Frag::First { id } = pkt.frag {
            self.touch_train(snap, pkt, id, now)?;
        }
        if let Pass::Rule { slot, new_flow } = pass {
            on_rule(slot, new_flow);
        }
        Ok(())
    }
    /// Look up a flow and apply revalidation. `own` is the packet and whether its
    /// source is endpoint `a` when the packet belongs to the flow itself (`None`
    /// for an ICMP error about the flow).
    #[inline]
    pub(super) fn track(
        &self,
        snap: &Snapshot,
        k: F::Key,
        own: Option<(&Packet<F>, bool)>,
        now: u32,
        remote: impl Fn(F) -> bool,
    ) -> Track {
        let Some((idx, c)) = self.find_alive(k, now) else {
            return Track::Miss;
        };
        if self.cfg.on_revoke == RevokeMode::Keep {
            return Track::Hit {
                idx,
                ctl: c,
                by: None,
            };
        }
        // Fast path: checked under this generation and not revoked.
        if c & (GEN_MASK | REVOKED) == snap.generation() & GEN_MASK {
            return Track::Hit {
                idx,
                ctl: c,
                by: None,
            };
        }
        self.revalidate(snap, k, idx, c, own, now, &remote)
    }

    /// Revalidation of an entry that is revoked or was last checked under another
    /// generation (see the module docs, rule 3).
    #[cold]
    #[allow(clippy::too_many_arguments)]
    pub(super) fn revalidate(
        &self,
        snap: &Snapshot,
        k: F::Key,
        idx: usize,
        c: u64,
        own: Option<(&Packet<F>, bool)>,
        now: u32,
        remote: &dyn Fn(F) -> bool,
    ) -> Track {
        let generation = snap.generation() & GEN_MASK;
        let orig_a = c & ORIG_A != 0;
        let orig = original(k, orig_a);
        // Egress flows (original destination not an instance, or an instance
        // of another host, which enforces its own ingress) stay allowed.
        let inbound = F::instance(snap, orig.dst).is_some() && !remote(orig.dst);
        if c & REVOKED != 0 {
            // A new SYN from the initiator is judged like a new flow: if the rules
            // allow it now, the entry starts afresh.
            if let Some((pkt, src_is_a)) = own
                && let L4::Tcp { flags } = pkt.l4
                && flags & (tcp_flags::SYN | tcp_flags::ACK) == tcp_flags::SYN
                && src_is_a == orig_a
                && (remote(pkt.key.src) || F::egress_allows(snap, pkt))
                && let Some(by) = if inbound {
                    F::admitting_rule(snap, pkt).map(|s| Some((s, true)))
                } else {
                    Some(None)
                }
            {
                let fresh = |c: u64| {
                    (c & !(REVOKED | SEEN_REPLY | TCP_MASK | GEN_MASK))
                        | TcpState::SynSent.bits()
                        | generation
                };
                let ctl = self.update_ctl(idx, c, fresh).unwrap_or(c);
                return Track::Hit { idx, ctl, by };
            }
            if c & GEN_MASK != generation {
                let by = if !self.egress_original(snap, idx, orig, remote) {
                    None
                } else if inbound {
                    self.admitting_original(snap, idx, orig).map(Some)
                } else {
                    Some(None)
                };
                if let Some(by) = by {
                    // Re-authorized: the flow resumes in its old state.
                    let revive = |c: u64| (c & !(REVOKED | GEN_MASK)) | generation;
                    let ctl = self.update_ctl(idx, c, revive).unwrap_or(c);
                    let by = by.map(|s| (s, false));
                    return Track::Hit { idx, ctl, by };
                }
                let _ = self.update_ctl(idx, c, |c| (c & !GEN_MASK) | generation);
            }
            if own.is_some() {
                // Each dropped packet of the flow re-arms the revoked timeout.
                self.rearm(idx, now.saturating_add(self.cfg.timeouts.revoked));
            }
            return Track::Revoked;
        }
        let by = if !self.egress_original(snap, idx, orig, remote) {
            None
        } else if inbound {
            self.admitting_original(snap, idx, orig).map(Some)
        } else {
            Some(None)
        };
        if let Some(by) = by {
            // Still allowed: remember that this generation was checked.
            let ctl = self
                .update_ctl(idx, c, |c| (c & !GEN_MASK) | generation)
                .unwrap_or(c);
            let by = by.map(|s| (s, false));
            return Track::Hit { idx, ctl, by };
        }
        // Cut: keep the entry, marked, so that neither side re-opens the flow.
        if self
            .update_ctl(idx, c, |c| (c & !GEN_MASK) | generation | REVOKED)
            .is_some()
        {
            self.rearm(idx, now.saturating_add(self.cfg.timeouts.revoked));
        }
        Track::Revoked
    }

    /// Whether the egress rules of `snap` (of the original source, when it
    /// is a local instance) allow the original direction `orig` of the flow in
    /// `idx`.
    pub(super) fn egress_original(
        &self,
        snap: &Snapshot,
        idx: usize,
        orig: FlowKey<F>,
        remote: &dyn Fn(F) -> bool,
    ) -> bool {
        remote(orig.src) || F::egress_allows(snap, &self.original_packet(idx, orig))
    }

    /// The rule of `snap` that admits the original direction `orig` of the
    /// flow in `idx`, if any.
    pub(super) fn admitting_original(
        &self,
        snap: &Snapshot,
        idx: usize,
        orig: FlowKey<F>,
    ) -> Option<RuleSlot> {
        F::admitting_rule(snap, &self.original_packet(idx, orig))
    }

    /// The first packet of the flow in `idx` as rules judge it.
    fn original_packet(&self, idx: usize, orig: FlowKey<F>) -> Packet<F> {
        let aux = self.slots[idx].aux.load(Ordering::Relaxed);
        let l4 = match orig.proto {
            proto::TCP => L4::Tcp {
                flags: tcp_flags::SYN,
            },
            proto::UDP => L4::Udp,
            p if p == F::ICMP => L4::Icmp {
                ty: (aux >> 8) as u8,
                code: aux as u8,
                kind: IcmpKind::Request,
            },
            _ => L4::Other,
        };
        Packet {
            key: orig,
            l4,
            frag: Frag::None,
        }
    }
    /// Timeout of an entry in this state.
    #[inline]
    pub(super) fn timeout(&self, proto_: u8, c: u64) -> u32 {
        let t = &self.cfg.timeouts;
        match proto_ {
            proto::TCP => match TcpState::from_bits(c) {
                TcpState::SynSent => t.tcp_syn_sent,
                TcpState::Established => t.tcp_established,
                TcpState::Fin => t.tcp_fin,
                TcpState::Closed => t.tcp_closed,
            },
            proto::UDP if c & SEEN_REPLY != 0 => t.udp_stream,
            proto::UDP => t.udp,
            p if p == F::ICMP => t.icmp,
            _ => t.other,
        }
    }

    /// Update state and expiry of a tracked flow for a packet of it.
    #[inline]
    pub(super) fn refresh(
        &self,
        idx: usize,
        mut c: u64,
        pkt: &Packet<F>,
        src_is_a: bool,
        now: u32,
    ) {
        let slot = &self.slots[idx];
        let from_orig = src_is_a == (c & ORIG_A != 0);
        loop {
            let mut new = c;
            if !from_orig {
                new |= SEEN_REPLY;
            }
            if let L4::Tcp { flags } = pkt.l4 {
                let st = TcpState::from_bits(c).next(flags, from_orig);
                new = (new & !TCP_MASK) | st.bits();
            }
            if new == c {
                break;
            }
            match slot
                .ctl
                .compare_exchange_weak(c, new, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => {
                    c = new;
                    break;
                }
                Err(cur) => {
                    if version(cur) != version(c) || cur & (OCC | BUSY) != OCC {
                        return;
                    }
                    c = cur;
                }
            }
        }
        let exp = now.saturating_add(self.timeout(pkt.key.proto, c));
        if slot.expires.load(Ordering::Relaxed) != exp {
            slot.expires.store(exp, Ordering::Relaxed);
        }
    }

    /// The quota slot of the instance a new entry is charged to, if any.
    /// An instance's entries of both families share its counter (IPv6 ones
    /// are charged to the counter of the instance's IPv4 address).
    pub(super) fn charge_slot(snap: &Snapshot, key: &FlowKey<F>) -> Option<usize> {
        let ip = F::quota_ip(snap, key.src).or_else(|| F::quota_ip(snap, key.dst))?;
        Some(quota_slot(ip))
    }

    pub(super) fn insert_flow(
        &self,
        snap: &Snapshot,
        pkt: &Packet<F>,
        k: F::Key,
        src_is_a: bool,
        now: u32,
    ) -> Result<(), DropReason> {
        let mut flags = if src_is_a { ORIG_A } else { 0 };
        let mut icmp = 0u32;
        match pkt.l4 {
            L4::Tcp { flags: f } => flags |= TcpState::initial(f).bits(),
            L4::Icmp { ty, code, .. } => icmp = u32::from(ty) << 8 | u32::from(code),
            _ => {}
        }
        let timeout = self.timeout(pkt.key.proto, flags);
        let q = Self::charge_slot(snap, &pkt.key);
        self.insert(k, flags, icmp, q, snap.generation(), now, timeout)
            .map(|_| ())
    }

    pub(super) fn touch_train(
        &self,
        snap: &Snapshot,
        pkt: &Packet<F>,
        id: u32,
        now: u32,
    ) -> Result<(), DropReason> {
        let k = frag_key(&pkt.key, id);
        let exp = now.saturating_add(self.cfg.timeouts.frag);
        if let Some((idx, _)) = self.find_alive(k, now) {
            self.slots[idx].expires.store(exp, Ordering::Relaxed);
            return Ok(());
        }
        let q = Self::charge_slot(snap, &pkt.key);
        self.insert(k, 0, 0, q, snap.generation(), now, self.cfg.timeouts.frag)
            .map(|_| ())
    }
}
