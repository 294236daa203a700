//! Datapath counters: local to each worker, aggregated on demand.
//!
//! Contract:
//! * Every counter has exactly one writer, the worker that owns it (per-port
//!   counters are one cache-padded block per worker; per-reason drop counters are
//!   one block per worker). A write is a `Relaxed` load + store — no atomic
//!   read-modify-write, no lock, no shared cache line between workers — so counting
//!   costs a few cycles on the hot path.
//! * Readers ([`crate::Switch::stats`]) sum the blocks with `Relaxed` loads at any
//!   time; a sum can lag a frame or two behind, never tear (64-bit atomics).
//! * No `metrics` calls here: the control plane exports [`Stats`] periodically.
//! * Per-rule hits ([`RuleHits`]): one block per worker, one 32-byte slot per
//!   [`RuleSlot`] of the snapshot (flows, other packets, bytes: a count is
//!   two adds and no branch, see [`RuleCounters`]), written like the
//!   others by its worker alone. A block follows one slot layout (a serial
//!   per slot). When a worker loads a snapshot whose layout its block does
//!   not follow it swaps in the zeroed block the publisher left for that
//!   layout ([`RuleHitBlocks`]: one atomic load, a compare-and-swap and two
//!   pointer stores — no allocation, no copy, O(1) in the model) and links
//!   the block it left to the new one. A block a worker has left is never
//!   written again; off the worker (the housekeeper, in batches; a publish
//!   when the housekeeper has fallen behind; or a reader) such blocks are
//!   folded into the worker's base, counts by rule serial (serials are never
//!   reused, so a revoked rule's counts are never read again and a slot
//!   reused for a new rule starts at zero, as [`RuleHits::follow`] carries
//!   them). Readers sum base and current block of every worker for the
//!   slots whose serial matches the snapshot's
//!   ([`crate::Datapath::rule_hits`]). Slots live in anonymous mappings
//!   ([`ZeroedRun`]): making a block is O(1), the pages of rules never hit
//!   stay untouched, and a folded block's slots are reset (pages given back)
//!   and kept as a spare. Memory per worker: the current block, the
//!   prepared one, up to [`SPARES`] spares, the base and the left blocks not
//!   folded yet (the housekeeper folds them, scanning only the pages the
//!   worker touched (`mincore`), at
//!   [`crate::datapath::FOLD_HIT_BLOCKS_AT`], a publish at
//!   [`crate::datapath::MAX_LEFT_HIT_BLOCKS`]); each resident only in the
//!   pages its worker touched.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use std::sync::{Arc, Mutex};

use arc_swap::{ArcSwap, ArcSwapOption, Guard};
use crossbeam_utils::CachePadded;
use filter::DropReason;
use filter::compile::{RuleLayout, RuleSlot};

use crate::PortId;
use crate::sys::ZeroedRun;
use crate::vxlan::VxlanDrop;

/// Add `n` to a single-writer counter.
#[inline(always)]
pub fn bump(c: &AtomicU64, n: u64) {
    c.store(c.load(Relaxed).wrapping_add(n), Relaxed);
}

/// One worker's counters of one port.
#[derive(Debug, Default)]
pub struct PortCounters {
    pub rx_packets: AtomicU64,
    pub rx_bytes: AtomicU64,
    pub tx_packets: AtomicU64,
    pub tx_bytes: AtomicU64,
    /// Frames received on this port and dropped (any reason).
    pub rx_dropped: AtomicU64,
    /// Frames for this port that could not be sent (`TxFailed`, `PortGone`).
    pub tx_dropped: AtomicU64,
    /// Frames received on this port and dropped, per reason (indexed by
    /// [`DropReason::index`]; they sum to `rx_dropped` less the overlay's
    /// refusals).
    pub drops: [AtomicU64; DropReason::COUNT],
    /// Frames for this port (an instance: addressed to it) that connection
    /// tracking and the rules refused, per reason (counted on the sender's
    /// port too, in `drops`).
    pub denied: [AtomicU64; DropReason::COUNT],
}

/// A port's counters, one padded block per worker.
#[derive(Debug)]
pub struct PortCounterSet {
    per_worker: Box<[CachePadded<PortCounters>]>,
}

impl PortCounterSet {
    pub fn new(workers: usize) -> Self {
        PortCounterSet {
            per_worker: (0..workers)
                .map(|_| CachePadded::new(PortCounters::default()))
                .collect(),
        }
    }

    /// Worker `w`'s block (written only by worker `w`).
    #[inline(always)]
    pub fn worker(&self, w: usize) -> &PortCounters {
        &self.per_worker[w]
    }

    /// Sum over all workers.
    pub fn total(&self) -> PortTotals {
        let mut t = PortTotals::default();
        for c in self.per_worker.iter() {
            t.rx_packets += c.rx_packets.load(Relaxed);
            t.rx_bytes += c.rx_bytes.load(Relaxed);
            t.tx_packets += c.tx_packets.load(Relaxed);
            t.tx_bytes += c.tx_bytes.load(Relaxed);
            t.rx_dropped += c.rx_dropped.load(Relaxed);
            t.tx_dropped += c.tx_dropped.load(Relaxed);
            for (sum, d) in t.drops.iter_mut().zip(c.drops.iter()) {
                *sum += d.load(Relaxed);
            }
            for (sum, d) in t.denied.iter_mut().zip(c.denied.iter()) {
                *sum += d.load(Relaxed);
            }
        }
        t
    }
}

/// Summed counters of one port.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortTotals {
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    pub rx_dropped: u64,
    pub tx_dropped: u64,
    /// Received and dropped, per reason (indexed by [`DropReason::index`]).
    pub drops: [u64; DropReason::COUNT],
    /// Bound for this port and refused by conntrack/rules, per reason.
    pub denied: [u64; DropReason::COUNT],
}

/// One rule's counters in one worker's [`RuleHits`] block. A packet is
/// counted once, in `packets[new_flow]`: `packets[1]` is the flows (a flow's
/// first packet), `packets[0]` the rule's other packets, so a count is two
/// single-writer adds and no branch; readers sum the two for the packets.
#[derive(Debug, Default)]
#[repr(C, align(32))]
pub struct RuleCounters {
    packets: [AtomicU64; 2],
    bytes: AtomicU64,
}

impl RuleCounters {
    fn totals(&self) -> RuleTotals {
        let flows = self.packets[1].load(Relaxed);
        RuleTotals {
            packets: self.packets[0].load(Relaxed) + flows,
            bytes: self.bytes.load(Relaxed),
            flows,
        }
    }
}

/// One worker's per-rule counters for one rule-slot layout (see the module
/// docs).
#[derive(Debug)]
pub struct RuleHits {
    /// The snapshot layout these slots follow (serial per slot, 0 = free).
    layout: RuleLayout,
    /// At least one per slot of `layout` (a spare may be longer).
    slots: ZeroedRun<RuleCounters>,
    /// The block its worker used before this one, until it is folded into
    /// the worker's base (set by the worker before this block becomes
    /// current; then only taken, under the base's lock).
    prev: ArcSwapOption<RuleHits>,
}

impl Default for RuleHits {
    fn default() -> Self {
        RuleHits::with_slots(RuleLayout::default(), ZeroedRun::new(0))
    }
}

impl RuleHits {
    fn with_slots(layout: RuleLayout, slots: ZeroedRun<RuleCounters>) -> RuleHits {
        debug_assert!(slots.len() >= layout.len());
        RuleHits {
            layout,
            slots,
            prev: ArcSwapOption::empty(),
        }
    }

    /// `n` zeroed slots: O(1) (fresh pages, zero-filled when first touched;
    /// [`ZeroedRun::populate`] faults them in ahead).
    fn zeroed_slots(n: usize) -> ZeroedRun<RuleCounters> {
        ZeroedRun::new(n)
    }

    /// A zeroed block for `layout`.
    pub fn zeroed(layout: &RuleLayout) -> RuleHits {
        RuleHits::with_slots(layout.clone(), RuleHits::zeroed_slots(layout.len()))
    }

    /// A block for `layout`, carrying over the counts of `old`'s slots that
    /// hold the same rule (same serial).
    pub fn follow(old: &RuleHits, layout: &RuleLayout) -> RuleHits {
        let slots = RuleHits::zeroed_slots(layout.len());
        for (i, c) in slots.iter().enumerate() {
            if layout[i] != 0
                && old.layout.get(i) == Some(layout[i])
                && let Some(o) = old.slots.get(i)
            {
                // Only counts that are not zero: the pages of rules never
                // hit stay untouched.
                for (n, o) in c.packets.iter().zip(&o.packets) {
                    bump(n, o.load(Relaxed));
                }
                bump(&c.bytes, o.bytes.load(Relaxed));
            }
        }
        RuleHits::with_slots(layout.clone(), slots)
    }

    /// Add this block's counts to `base` (by rule serial), reading only the
    /// pages its worker touched.
    fn fold_into(&self, base: &mut HashMap<u64, RuleTotals>) {
        for r in self.slots.touched() {
            let end = r.end.min(self.layout.len());
            for i in r.start..end {
                let serial = self.layout[i];
                let t = self.slots[i].totals();
                if serial != 0 && t != RuleTotals::default() {
                    let b = base.entry(serial).or_default();
                    b.packets += t.packets;
                    b.bytes += t.bytes;
                    b.flows += t.flows;
                }
            }
        }
    }

    /// The chain of blocks left before this one, oldest first (taken: the
    /// links are cleared).
    fn take_left(&self) -> Vec<Arc<RuleHits>> {
        let mut left = Vec::new();
        let mut next = self.prev.swap(None);
        while let Some(b) = next {
            next = b.prev.swap(None);
            left.push(b);
        }
        left.reverse();
        left
    }

    /// Whether this block follows `layout`.
    #[inline]
    pub fn follows(&self, layout: &RuleLayout) -> bool {
        RuleLayout::ptr_eq(&self.layout, layout)
    }

    /// Count one packet of `bytes` admitted by `slot` (and a flow if
    /// `new_flow`). A slot outside the layout is ignored (a block that does
    /// not follow the snapshot, e.g. `trace`'s scratch one).
    #[inline(always)]
    pub fn count(&self, slot: RuleSlot, bytes: usize, new_flow: bool) {
        if let Some(c) = self.slots.get(slot.index()) {
            bump(&c.packets[usize::from(new_flow)], 1);
            bump(&c.bytes, bytes as u64);
        }
    }

    /// Add this block's counts to `out` (indexed by slot) for the slots whose
    /// serial matches `layout`'s.
    pub fn add_to(&self, layout: &RuleLayout, out: &mut [RuleTotals]) {
        // Only the pages the worker touched (the rest is zero).
        for r in self.slots.touched() {
            let end = r.end.min(out.len());
            for i in r.start..end {
                if layout.get(i) == self.layout.get(i) && layout[i] != 0 {
                    let t = self.slots[i].totals();
                    let o = &mut out[i];
                    o.packets += t.packets;
                    o.bytes += t.bytes;
                    o.flows += t.flows;
                }
            }
        }
    }
}

/// One worker's rule-hit blocks (see the module docs).
#[derive(Debug, Default)]
struct WorkerHits {
    /// The block the worker writes (its single writer).
    current: ArcSwap<RuleHits>,
    /// A zeroed block for the newest published layout, left by the
    /// publisher; the worker takes it when it meets that layout.
    prepared: ArcSwapOption<RuleHits>,
    /// Counts of the blocks the worker has left, by rule serial (serials are
    /// never reused: a revoked rule's entry is never read again, and pruned
    /// once the map outgrows the layout). Only taken off the worker.
    base: Mutex<HashMap<u64, RuleTotals>>,
    /// Layout changes for which no prepared block was there (the worker
    /// allocated one itself). Written by the worker only.
    fallbacks: AtomicU64,
}

/// The per-rule hit blocks of all workers: the worker's O(1) swap on a
/// layout change, the publisher's preparation, the folding of left blocks
/// and the readers' sums (see the module docs).
#[derive(Debug)]
pub struct RuleHitBlocks {
    workers: Box<[CachePadded<WorkerHits>]>,
    /// Zeroed slots, one run per worker, for the next prepared blocks (made
    /// off the publisher's path by [`RuleHitBlocks::tend`]).
    spares: Mutex<Vec<Vec<ZeroedRun<RuleCounters>>>>,
}

/// Spare slot runs kept per worker (recycled from folded blocks).
pub const SPARES: usize = 4;

/// Spare slots beyond the layout's length, so that a layout that grows by a
/// few rules still finds its spare.
fn spare_len(layout_len: usize) -> usize {
    layout_len + layout_len / 16 + 64
}

impl RuleHitBlocks {
    pub fn new(workers: usize) -> RuleHitBlocks {
        RuleHitBlocks {
            workers: (0..workers).map(|_| CachePadded::default()).collect(),
            spares: Mutex::new((0..workers).map(|_| Vec::new()).collect()),
        }
    }

    /// Worker `w`'s block for `layout`: its current one, or (on the first
    /// burst after a layout change) the one prepared for `layout`, swapped
    /// in. Only worker `w` may call this (it is the block's single writer).
    #[inline]
    pub fn for_worker(&self, w: usize, layout: &RuleLayout) -> Guard<Arc<RuleHits>> {
        let cur = self.workers[w].current.load();
        if cur.follows(layout) {
            return cur;
        }
        self.swap_in(w, cur, layout)
    }

    #[cold]
    fn swap_in(
        &self,
        w: usize,
        cur: Guard<Arc<RuleHits>>,
        layout: &RuleLayout,
    ) -> Guard<Arc<RuleHits>> {
        let c = &self.workers[w];
        let ready = c.prepared.load();
        let taken = match &*ready {
            Some(p) if p.follows(layout) => {
                let prev = c.prepared.compare_and_swap(&ready, None);
                // Still the same block: taken (the publisher may have left a
                // newer one meanwhile; that one stays for later).
                match &*prev {
                    Some(q) if Arc::ptr_eq(p, q) => Guard::into_inner(prev),
                    _ => None,
                }
            }
            _ => None,
        };
        drop(ready);
        let next = match taken {
            Some(b) => b,
            None => {
                // The layout was superseded before this worker met it (a
                // publish between its snapshot load and now): at most once
                // per publish.
                bump(&c.fallbacks, 1);
                Arc::new(RuleHits::zeroed(layout))
            }
        };
        // Link the block left behind (moved: no count copied, nothing freed
        // here), then make the new one current.
        next.prev.store(Some(Guard::into_inner(cur)));
        c.current.store(next);
        c.current.load()
    }

    /// The publisher, before it publishes a snapshot with `layout` (a new
    /// one): leave each worker a zeroed block for it, from the spares when
    /// they are long enough (pages already faulted in), else a fresh mapping
    /// — O(1) either way, whatever the model's size. A prepared block the
    /// worker never took is replaced (it was never written) and its slots
    /// kept as the next spare.
    pub fn prepare(&self, layout: &RuleLayout) {
        let mut spares = self.spares.lock().unwrap_or_else(|e| e.into_inner());
        for (c, spare) in self.workers.iter().zip(spares.iter_mut()) {
            let slots = match spare.pop() {
                Some(s) if s.len() >= layout.len() => s,
                _ => RuleHits::zeroed_slots(spare_len(layout.len())),
            };
            let old = c
                .prepared
                .swap(Some(Arc::new(RuleHits::with_slots(layout.clone(), slots))));
            // Never taken: recycle its (untouched) slots as a spare.
            if let Some(RuleHits { slots, .. }) = old.and_then(|o| Arc::try_unwrap(o).ok())
                && spare.len() < SPARES
            {
                spare.push(slots);
            }
        }
    }

    /// Off the workers (housekeeper, publisher): fold the blocks a worker
    /// has left into its base once there are at least `min_left` of them
    /// (folding costs a pass over the model, so the housekeeper does it in
    /// batches), recycle their slots as spares (reset to zero pages: cost in
    /// proportion to the pages the worker touched) and make sure every
    /// worker has a spare long enough for `layout_len` slots.
    pub fn tend(&self, layout: &RuleLayout, min_left: usize) {
        let layout_len = layout.len();
        for (w, c) in self.workers.iter().enumerate() {
            if self.unfolded(w) < min_left.max(1) {
                continue;
            }
            let left = {
                let mut base = c.base.lock().unwrap_or_else(|e| e.into_inner());
                let left = c.current.load().take_left();
                for b in &left {
                    b.fold_into(&mut base);
                }
                if base.len() > 2 * layout_len + 1024 {
                    // Drop the entries of revoked rules.
                    let live: std::collections::HashSet<u64> = layout.iter().collect();
                    base.retain(|serial, _| live.contains(serial));
                }
                left
            };
            for b in left {
                // Unmapped here (not on the worker) unless kept as a spare.
                if let Ok(RuleHits { mut slots, .. }) = Arc::try_unwrap(b)
                    && slots.len() >= layout_len
                {
                    slots.reset();
                    let mut spares = self.spares.lock().unwrap_or_else(|e| e.into_inner());
                    if spares[w].len() < SPARES {
                        spares[w].push(slots);
                    }
                }
            }
        }
        for w in 0..self.workers.len() {
            let short = {
                let mut spares = self.spares.lock().unwrap_or_else(|e| e.into_inner());
                spares[w].retain(|s| s.len() >= layout_len);
                spares[w].is_empty()
            };
            if short {
                let slots = RuleHits::zeroed_slots(spare_len(layout_len));
                self.spares.lock().unwrap_or_else(|e| e.into_inner())[w].push(slots);
            }
        }
    }

    /// The most blocks any worker has left that are not folded yet.
    pub fn most_unfolded(&self) -> usize {
        (0..self.workers.len())
            .map(|w| self.unfolded(w))
            .max()
            .unwrap_or(0)
    }

    /// Per-rule hits summed over workers for `layout` (indexed by slot):
    /// each worker's base and current block, for the slots whose serial
    /// matches. Folds the blocks left meanwhile first. Off the hot path.
    pub fn sum(&self, layout: &RuleLayout) -> Vec<RuleTotals> {
        let mut out = vec![RuleTotals::default(); layout.len()];
        for c in self.workers.iter() {
            let left = {
                let mut base = c.base.lock().unwrap_or_else(|e| e.into_inner());
                let cur = c.current.load_full();
                let left = cur.take_left();
                for b in &left {
                    b.fold_into(&mut base);
                }
                if !base.is_empty() {
                    for (serial, o) in layout.iter().zip(out.iter_mut()) {
                        if let Some(t) = base.get(&serial).filter(|_| serial != 0) {
                            o.packets += t.packets;
                            o.bytes += t.bytes;
                            o.flows += t.flows;
                        }
                    }
                }
                cur.add_to(layout, &mut out);
                left
            };
            drop(left);
        }
        out
    }

    /// Layout changes a worker met with no block prepared for it (it
    /// allocated one itself), over all workers.
    pub fn fallbacks(&self) -> u64 {
        self.workers.iter().map(|c| c.fallbacks.load(Relaxed)).sum()
    }

    /// Blocks worker `w` has left and nobody has folded yet (tests: the
    /// bound on memory).
    pub fn unfolded(&self, w: usize) -> usize {
        let mut n = 0;
        let cur = self.workers[w].current.load_full();
        let mut next = cur.prev.load_full();
        while let Some(b) = next {
            n += 1;
            next = b.prev.load_full();
        }
        n
    }
}

/// One rule's counts summed over workers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RuleTotals {
    /// Packets the rule decided (see [`filter::Pass::Rule`]).
    pub packets: u64,
    /// Their bytes (Ethernet frames, as the port counters count).
    pub bytes: u64,
    /// Flows whose first packet it admitted.
    pub flows: u64,
}

/// Counters of one worker that are not per port.
#[derive(Debug, Default)]
pub struct WorkerCounters {
    pub drops: [AtomicU64; DropReason::COUNT],
    /// ARP requests the switch answered itself.
    pub arp_replies: AtomicU64,
    /// DHCP replies (OFFER/ACK/NAK) sent.
    pub dhcp_replies: AtomicU64,
    /// DHCP messages consumed without an answer (RELEASE, DECLINE, REQUEST
    /// for another server).
    pub dhcp_silent: AtomicU64,
    /// IPv6 neighbor advertisements the switch answered solicitations with.
    pub nd_replies: AtomicU64,
    /// Router advertisements sent (answers to router solicitations).
    pub router_adverts: AtomicU64,
    /// IPv6 housekeeping consumed without an answer (DAD probes, MLD
    /// reports, unsolicited advertisements, solicitations for unknown
    /// addresses).
    pub nd_absorbed: AtomicU64,
    /// TSO super-frames segmented in software.
    pub tso_segmented: AtomicU64,
    /// Partial checksums completed in software.
    pub csum_completed: AtomicU64,
    /// Times the worker parked (adaptive polling).
    pub parks: AtomicU64,
    /// Receive errors other than "gone" (the port stays).
    pub rx_errors: AtomicU64,
    /// Overlay refusals per reason, indexed by [`VxlanDrop::index`].
    pub vxlan_drops: [AtomicU64; VxlanDrop::COUNT],
    /// VXLAN datagrams sent on the underlay (each segment of a UDP GSO batch
    /// counts) and their UDP payload bytes.
    pub underlay_tx_packets: AtomicU64,
    pub underlay_tx_bytes: AtomicU64,
    /// UDP GSO sends (one `sendmsg` carrying several datagrams).
    pub underlay_gso_batches: AtomicU64,
    /// Datagrams read from the underlay socket (before any check) and bytes.
    pub underlay_rx_packets: AtomicU64,
    pub underlay_rx_bytes: AtomicU64,
    /// Super-frames merged from received segments (user-space GRO).
    pub underlay_gro_frames: AtomicU64,
    /// Frames (IPv4 without DF) fragmented to fit the underlay.
    pub underlay_fragmented: AtomicU64,
    /// Super-frames handed to the kernel whole with UDP-tunnel GSO.
    pub underlay_tunnel_tx: AtomicU64,
    /// Super-frames received whole (one read, the kernel's tunnel GSO).
    pub underlay_whole_rx: AtomicU64,
}

impl WorkerCounters {
    #[inline(always)]
    pub fn drop(&self, r: DropReason) {
        bump(&self.drops[r.index()], 1);
    }

    #[inline(always)]
    pub fn vxlan_drop(&self, r: VxlanDrop) {
        bump(&self.vxlan_drops[r.index()], 1);
    }
}

/// The overlay's counters in [`Stats`] (all zero without an overlay).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UnderlayStats {
    pub tx_packets: u64,
    pub tx_bytes: u64,
    pub gso_batches: u64,
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub gro_frames: u64,
    pub fragmented: u64,
    pub tunnel_tx: u64,
    pub whole_rx: u64,
}

/// Per-port view in [`Stats`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortStats {
    pub id: PortId,
    pub name: String,
    /// `None` for the uplink.
    pub ip: Option<Ipv4Addr>,
    pub counters: PortTotals,
}

/// Everything the datapath counts, aggregated over workers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stats {
    /// Live ports, by id.
    pub ports: Vec<PortStats>,
    /// Drops per reason, indexed by [`DropReason::index`].
    pub drops: [u64; DropReason::COUNT],
    pub arp_replies: u64,
    pub dhcp_replies: u64,
    pub dhcp_silent: u64,
    pub nd_replies: u64,
    pub router_adverts: u64,
    pub nd_absorbed: u64,
    pub tso_segmented: u64,
    pub csum_completed: u64,
    pub parks: u64,
    pub rx_errors: u64,
    /// Entries in the connection table.
    pub conntrack_entries: usize,
    /// Ports removed because their queue reported them gone.
    pub ports_gone: u64,
    /// Overlay refusals per reason, indexed by [`VxlanDrop::index`] (names:
    /// [`VxlanDrop::name`]).
    pub vxlan_drops: [u64; VxlanDrop::COUNT],
    /// Underlay datagrams and bytes sent and received.
    pub underlay: UnderlayStats,
}

impl Stats {
    /// Drops counted for `r`.
    pub fn drop_count(&self, r: DropReason) -> u64 {
        self.drops[r.index()]
    }

    /// All drops.
    pub fn total_drops(&self) -> u64 {
        self.drops.iter().sum()
    }

    /// Non-zero drop counters with their reasons, in counter order.
    pub fn nonzero_drops(&self) -> impl Iterator<Item = (DropReason, u64)> + '_ {
        DropReason::ALL
            .iter()
            .map(|r| (*r, self.drops[r.index()]))
            .filter(|(_, n)| *n != 0)
    }

    /// Overlay refusals counted for `r`.
    pub fn vxlan_drop_count(&self, r: VxlanDrop) -> u64 {
        self.vxlan_drops[r.index()]
    }

    /// Non-zero overlay refusal counters with their reasons, in counter order.
    pub fn nonzero_vxlan_drops(&self) -> impl Iterator<Item = (VxlanDrop, u64)> + '_ {
        VxlanDrop::ALL
            .iter()
            .map(|r| (*r, self.vxlan_drops[r.index()]))
            .filter(|(_, n)| *n != 0)
    }

    /// The port named `name`.
    pub fn port(&self, name: &str) -> Option<&PortStats> {
        self.ports.iter().find(|p| p.name == name)
    }

    pub(crate) fn add_worker(&mut self, w: &WorkerCounters) {
        for (d, c) in self.drops.iter_mut().zip(w.drops.iter()) {
            *d += c.load(Relaxed);
        }
        self.arp_replies += w.arp_replies.load(Relaxed);
        self.dhcp_replies += w.dhcp_replies.load(Relaxed);
        self.dhcp_silent += w.dhcp_silent.load(Relaxed);
        self.nd_replies += w.nd_replies.load(Relaxed);
        self.router_adverts += w.router_adverts.load(Relaxed);
        self.nd_absorbed += w.nd_absorbed.load(Relaxed);
        self.tso_segmented += w.tso_segmented.load(Relaxed);
        self.csum_completed += w.csum_completed.load(Relaxed);
        self.parks += w.parks.load(Relaxed);
        self.rx_errors += w.rx_errors.load(Relaxed);
        for (d, c) in self.vxlan_drops.iter_mut().zip(w.vxlan_drops.iter()) {
            *d += c.load(Relaxed);
        }
        let u = &mut self.underlay;
        u.tx_packets += w.underlay_tx_packets.load(Relaxed);
        u.tx_bytes += w.underlay_tx_bytes.load(Relaxed);
        u.gso_batches += w.underlay_gso_batches.load(Relaxed);
        u.rx_packets += w.underlay_rx_packets.load(Relaxed);
        u.rx_bytes += w.underlay_rx_bytes.load(Relaxed);
        u.gro_frames += w.underlay_gro_frames.load(Relaxed);
        u.fragmented += w.underlay_fragmented.load(Relaxed);
        u.tunnel_tx += w.underlay_tunnel_tx.load(Relaxed);
        u.whole_rx += w.underlay_whole_rx.load(Relaxed);
    }

    pub(crate) fn empty() -> Stats {
        Stats {
            ports: Vec::new(),
            drops: [0; DropReason::COUNT],
            arp_replies: 0,
            dhcp_replies: 0,
            dhcp_silent: 0,
            nd_replies: 0,
            router_adverts: 0,
            nd_absorbed: 0,
            tso_segmented: 0,
            csum_completed: 0,
            parks: 0,
            rx_errors: 0,
            conntrack_entries: 0,
            ports_gone: 0,
            vxlan_drops: [0; VxlanDrop::COUNT],
            underlay: UnderlayStats::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_worker_blocks_sum_and_are_padded_apart() {
        let s = PortCounterSet::new(3);
        bump(&s.worker(0).rx_packets, 2);
        bump(&s.worker(2).rx_packets, 5);
        bump(&s.worker(1).tx_bytes, 1500);
        let t = s.total();
        assert_eq!((t.rx_packets, t.tx_bytes, t.rx_dropped), (7, 1500, 0));
        let a = s.worker(0) as *const _ as usize;
        let b = s.worker(1) as *const _ as usize;
        assert!(b - a >= 64, "blocks share a cache line");
    }

    #[test]
    fn rule_hits_follow_layouts_keeping_counts_of_kept_rules() {
        let l1 = RuleLayout::from(vec![1, 2, 3]);
        let h1 = RuleHits::follow(&RuleHits::default(), &l1);
        assert!(h1.follows(&l1));
        h1.count(RuleSlot(0), 60, true);
        h1.count(RuleSlot(1), 100, false);
        h1.count(RuleSlot(2), 40, true);
        h1.count(RuleSlot(9), 40, true);
        // Slot 1's rule revoked and the slot reused (serial 4), slot 3 new.
        let l2 = RuleLayout::from(vec![1, 4, 3, 5]);
        let h2 = RuleHits::follow(&h1, &l2);
        h2.count(RuleSlot(3), 10, true);
        let mut t = vec![RuleTotals::default(); 4];
        h2.add_to(&l2, &mut t);
        let want = |packets, bytes, flows| RuleTotals {
            packets,
            bytes,
            flows,
        };
        assert_eq!(
            t,
            [
                want(1, 60, 1),
                want(0, 0, 0),
                want(1, 40, 1),
                want(1, 10, 1)
            ]
        );
        // A reader on the new layout ignores a block still on the old one
        // where serials differ.
        let mut t = vec![RuleTotals::default(); 4];
        h1.add_to(&l2, &mut t);
        assert_eq!(
            t,
            [want(1, 60, 1), want(0, 0, 0), want(1, 40, 1), want(0, 0, 0)]
        );
        assert_eq!(std::mem::size_of::<RuleCounters>(), 32);
    }

    /// A worker counting while a publisher changes the layout thousands of
    /// times (preparing each block first, folding now and then) and a reader
    /// sums: every count is there exactly once, sums never go back, left
    /// blocks do not pile up.
    #[test]
    fn counts_survive_concurrent_swaps_folds_and_reads() {
        use std::sync::atomic::AtomicBool;
        let blocks = Arc::new(RuleHitBlocks::new(1));
        let first = RuleLayout::from(vec![1, 2]);
        blocks.prepare(&first);
        let published = Arc::new(ArcSwap::from_pointee(first));
        let stop = Arc::new(AtomicBool::new(false));
        let worker = {
            let (blocks, published, stop) = (blocks.clone(), published.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut n = 0u64;
                while !stop.load(Relaxed) {
                    let l = published.load_full();
                    let h = blocks.for_worker(0, &l);
                    // Slot 0 holds the same rule throughout; slot 1 a new
                    // one after every publish.
                    h.count(RuleSlot(0), 10, n.is_multiple_of(4));
                    h.count(RuleSlot(1), 1, false);
                    n += 1;
                }
                n
            })
        };
        let reader = {
            let (blocks, published, stop) = (blocks.clone(), published.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut last = 0;
                while !stop.load(Relaxed) {
                    let l = published.load_full();
                    let t = blocks.sum(&l);
                    assert!(t[0].packets >= last, "{} < {last}", t[0].packets);
                    last = t[0].packets;
                }
            })
        };
        const PUBLISHES: u64 = 3000;
        for k in 0..PUBLISHES {
            let l = RuleLayout::from(vec![1, k + 3]);
            blocks.prepare(&l);
            published.store(Arc::new(l.clone()));
            if k % 3 == 0 {
                blocks.tend(&l, 1 + (k % 2) as usize);
            }
            assert!(blocks.unfolded(0) <= 4, "left blocks pile up");
            if k % 64 == 0 {
                std::thread::yield_now();
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
        stop.store(true, Relaxed);
        let n = worker.join().unwrap();
        reader.join().unwrap();
        let t = blocks.sum(&published.load_full());
        assert_eq!(t[0].packets, n);
        assert_eq!(t[0].bytes, 10 * n);
        assert_eq!(t[0].flows, n.div_ceil(4));
        // At most one per publish (a layout superseded before the worker
        // met it).
        assert!(
            blocks.fallbacks() <= PUBLISHES,
            "{} fallbacks",
            blocks.fallbacks()
        );
    }

    /// A fresh run is all zero and untouched; only written pages are
    /// scanned; a reset gives them back.
    #[test]
    fn zeroed_runs_report_touched_pages_and_reset() {
        let mut run: ZeroedRun<RuleCounters> = ZeroedRun::new(100_000);
        assert!(run.touched().is_empty());
        bump(&run[70_000].bytes, 5);
        let t = run.touched();
        assert_eq!(t.len(), 1, "{t:?}");
        assert!(t[0].contains(&70_000) && t[0].len() <= 4096, "{t:?}");
        run.reset();
        assert!(run.touched().is_empty());
        assert_eq!(run[70_000].bytes.load(Relaxed), 0);
    }

    #[test]
    fn stats_aggregate_worker_drops() {
        let w0 = WorkerCounters::default();
        let w1 = WorkerCounters::default();
        w0.drop(DropReason::NoRule);
        w1.drop(DropReason::NoRule);
        w1.drop(DropReason::SpoofedIp);
        let mut st = Stats::empty();
        st.add_worker(&w0);
        st.add_worker(&w1);
        assert_eq!(st.drop_count(DropReason::NoRule), 2);
        assert_eq!(st.total_drops(), 3);
        assert_eq!(
            st.nonzero_drops().collect::<Vec<_>>(),
            vec![(DropReason::NoRule, 2), (DropReason::SpoofedIp, 1)]
        );
    }
}
