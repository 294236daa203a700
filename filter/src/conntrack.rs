//! Connection tracking: the stateful half of the security-group verdict.
//!
//! # Contract
//!
//! [`Conntrack::judge`] decides one packet against the current [`Snapshot`] and the
//! table of tracked flows (EC2-Classic: ingress rules only; egress is always allowed):
//!
//! 1. **Non-first fragment** ([`Frag::Later`]): to an instance it passes iff the
//!    fragment train `(src, dst, proto, ip id)` was let through by its first fragment
//!    and has not expired, else [`DropReason::UnmatchedFragment`]. To a
//!    non-instance (egress) it passes.
//! 2. **ICMP error** ([`IcmpKind::Error`]): passes iff the flow of the embedded
//!    datagram is tracked (either orientation; revalidated like any tracked flow,
//!    timers not refreshed) and the error fits that flow ([`error_fits_flow`]: it
//!    goes to the quoted datagram's sender, and when an instance sends it, that
//!    instance is the datagram's destination — a third party cannot forge errors
//!    about someone else's conversation). Otherwise it passes if it goes to a non-instance, or a
//!    rule explicitly allows that ICMP type from that source (no entry is created);
//!    else [`DropReason::UnrelatedIcmpError`] (or [`DropReason::Revoked`] if the
//!    related flow was just cut by revalidation).
//! 3. **Tracked flow** (either direction) and not expired: in
//!    [`RevokeMode::Revalidate`], when the entry was last checked under another
//!    snapshot generation, its *original* direction is re-checked: if the original
//!    destination is an instance, `snap.allows(original)`; egress flows stay
//!    allowed. If no longer allowed the entry is **kept, marked revoked**, its
//!    expiry set to [`Timeouts::revoked`], and the packet dropped with
//!    [`DropReason::Revoked`]. A live revoked entry drops the packets of its flow in
//!    *both* directions as [`DropReason::Revoked`] (re-arming the revoked timeout
//!    on each, except ICMP errors): the flow is cut, not half-open, so the
//!    instance's own retransmissions cannot re-open it as an instance-initiated
//!    flow (nor as a mid-stream TCP pickup) through which the outside's packets
//!    would pass as replies. Exceptions: (a) a TCP SYN (without ACK) from the
//!    original initiator is judged like a new flow: if the rules allow it now the
//!    entry restarts as a fresh SYN-sent flow (reply flag cleared), else
//!    [`DropReason::Revoked`]; (b) when a later generation allows the original
//!    direction again, revalidation clears the mark and the flow resumes in its old
//!    state. Revoked entries keep counting against the capacity and the quota
//!    until reclaimed like any expired entry. In [`RevokeMode::Keep`] tracked
//!    flows pass until they time out and nothing is ever marked. Then (passing
//!    packets) the TCP state / UDP "seen both ways" flag and the expiry are
//!    updated.
//! 4. **New flow**: to a non-instance → allowed; to an instance →
//!    `snap.allows(pkt)` or [`DropReason::NoRule`]. ICMP replies and "other" ICMP
//!    are judged by rules only and create no entry; everything else (TCP even without
//!    SYN: mid-stream pickup after a restart) creates an entry, charged to the
//!    initiating instance if the source is an instance, else to the destination. If
//!    the table is full ([`DropReason::ConntrackFull`], after trying to reclaim
//!    expired entries in the key's buckets) or the instance's quota is used
//!    ([`DropReason::ConntrackQuota`]) the packet is **dropped**: untracked traffic
//!    is never let through, since its replies could not be recognised.
//! 5. A passing first fragment ([`Frag::First`]) creates or refreshes its fragment
//!    train (charged and limited like a flow).
//!
//! Expiry: an entry refreshed at `t` with timeout `T` is alive while `now < t + T`.
//! An expired entry is treated as absent (and reclaimed on sight or by
//! [`Conntrack::sweep`]). TCP states: SYN seen → `tcp_syn_sent`; reply seen or a
//! non-SYN first packet → `tcp_established`; any FIN → `tcp_fin`; any RST →
//! `tcp_closed`; a new SYN on a closed/finishing entry re-opens it. Windows and
//! sequence numbers are not validated.
//!
//! # Design: one shared lock-free table
//!
//! Both directions of a flow may arrive on different cores (each core owns a set of
//! ports). The alternatives were (a) steering every flow to one owner core, which
//! needs a cross-core hand-off queue for half the packets (an extra cache miss,
//! a queue and a wake-up per hop, and reordering), or (b) one shared table that is
//! lock-free on lookup. We chose (b): a lookup is a few plain loads; a core writes
//! a shared cache line only when a flow is created or deleted, its TCP state
//! changes, its generation is revalidated, or the coarse clock ticks (expiry is
//! stored only when it changes). The bench measures lookup and insert rates.
//!
//! * Fixed capacity, preallocated: `slots = next_pow2(2 × capacity)` slots of 32
//!   bytes (half a cache line): 1M flows take 64 MiB plus 256 KiB of quota
//!   counters. No allocation after [`Conntrack::new`].
//! * Two-choice bucketised hashing: a key has two candidate buckets of [`BUCKET`]
//!   adjacent slots (256 bytes each), both in the same page-aligned 4 KiB page (so
//!   a cold lookup costs one TLB miss, not two); a new entry goes to the less
//!   loaded one, a
//!   lookup scans the first, then the second (at most [`PROBE`] slots; no
//!   tombstones: deleting empties the slot). With two choices, bucket overflow at the
//!   default 50% load is vanishingly rare (balls-into-bins with two choices: the
//!   fullest bucket exceeds the mean by about `ln ln n / ln 2` ≈ 4), unlike a single
//!   bounded linear-probe window, which overflows for some keys of a million.
//! * The bucket addresses of a packet are exposed
//!   ([`Conntrack::bucket_addrs`]) so that the datapath can prefetch them for a
//!   whole burst before judging it, and the slot array's region
//!   ([`Conntrack::table_region`]) so that it can be put on huge pages.
//! * The key is canonicalised (smaller `(ip, port)` endpoint first), so both
//!   directions hit the same slot; a flag remembers which side initiated.
//! * Every slot has a control word `version:16 | flags:16 | generation:32`. A writer
//!   claims an empty slot by CAS (setting BUSY), fills the immutable key, then
//!   publishes with a new version; deletion CASes BUSY on the observed version.
//!   Readers check version before and after reading the key (a seqlock) and never
//!   take a lock; a reader that finds a slot BUSY spins a bounded number of times
//!   (a writer holds BUSY for a few stores), then treats it as not matching.
//!   Mutable state (TCP state, flags, generation) changes by CAS on the control
//!   word, so a change can never land in a slot that was meanwhile reused (the
//!   version differs); the expiry is a separate word whose stale store into a reused
//!   slot would only shift that flow's timer.
//! * Two cores inserting the same new flow at once: after publishing (and a SeqCst
//!   fence), the inserter rescans the key's buckets; of equal keys the one at the
//!   lowest probe position wins and the others are removed by whichever inserter
//!   sees them, so no flow stays duplicated.
//! * The generation is stored modulo 2^32: a flow idle across exactly a multiple of
//!   2^32 snapshot generations would skip one revalidation.
//! * Revalidation writes the generation (and the revoked mark) by CAS; if another
//!   core revalidated the entry first (e.g. under the next snapshot, published
//!   mid-burst) its write stands and this packet keeps the verdict it was judged
//!   with; the next packet re-checks against whatever generation is stored.
//! * Per-instance quotas: a fixed array of [`QUOTA_SLOTS`] `AtomicU32` counters
//!   indexed by a hash of the charged instance's address; instances whose addresses
//!   collide share a quota (harmless for a lab with ≤ thousands of instances).
//!   Entries with no instance at either end are charged to nobody (they still count
//!   against the capacity).
//! * The flow-key hash is seeded per table (from std's `RandomState`) so that an
//!   outsider cannot choose flow keys that overflow one bucket pair.
//!
//! No `Mutex`/`RwLock` anywhere in this module.

use std::hash::BuildHasher;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering, fence};

use crate::compile::Snapshot;
use crate::{DropReason, FlowKey, Frag, IcmpKind, L4, Packet, proto, tcp_flags};

/// Slots per bucket.
pub const BUCKET: usize = 8;
/// Bytes of one bucket (four cache lines).
pub const BUCKET_BYTES: usize = BUCKET * std::mem::size_of::<Slot>();
/// Slots a key may occupy: its two buckets.
pub const PROBE: usize = 2 * BUCKET;
/// Number of per-instance quota counters.
pub const QUOTA_SLOTS: usize = 1 << 16;

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
    /// Maximum number of entries (flows + fragment trains).
    pub capacity: usize,
    /// Maximum entries charged to one instance.
    pub per_instance_quota: u32,
    pub timeouts: Timeouts,
    pub on_revoke: RevokeMode,
}

impl CtConfig {
    /// Defaults for a given capacity: quota `capacity / 16`, at least 1024.
    pub fn with_capacity(capacity: usize) -> CtConfig {
        CtConfig {
            capacity,
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

// Control-word flags (bits 32..48 of `ctl`).
const BUSY: u64 = 1 << 32;
const OCC: u64 = 1 << 33;
const ORIG_A: u64 = 1 << 34;
const SEEN_REPLY: u64 = 1 << 35;
const CHARGED: u64 = 1 << 36;
const TCP_SHIFT: u32 = 37;
const TCP_MASK: u64 = 0b11 << TCP_SHIFT;
/// Revalidation found the flow no longer allowed: its packets are dropped.
const REVOKED: u64 = 1 << 39;
const VERSION_SHIFT: u32 = 48;
const GEN_MASK: u64 = 0xffff_ffff;

const KIND_FLOW: u64 = 0;
const KIND_FRAG: u64 = 1;

/// TCP state of an entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
enum TcpState {
    SynSent = 0,
    Established = 1,
    Fin = 2,
    Closed = 3,
}

impl TcpState {
    fn from_bits(b: u64) -> TcpState {
        match (b & TCP_MASK) >> TCP_SHIFT {
            0 => TcpState::SynSent,
            1 => TcpState::Established,
            2 => TcpState::Fin,
            _ => TcpState::Closed,
        }
    }

    fn bits(self) -> u64 {
        (self as u64) << TCP_SHIFT
    }

    /// State of a new entry created by a packet with these flags.
    fn initial(flags: u8) -> TcpState {
        let start = if flags & tcp_flags::SYN != 0 && flags & tcp_flags::ACK == 0 {
            TcpState::SynSent
        } else {
            TcpState::Established
        };
        start.next(flags, true)
    }

    /// Transition on a packet of the flow.
    fn next(self, flags: u8, from_orig: bool) -> TcpState {
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

#[inline]
fn version(c: u64) -> u64 {
    c >> VERSION_SHIFT
}

/// One table slot: 32 bytes, two per cache line.
#[repr(C, align(32))]
struct Slot {
    /// `version:16 | flags:16 | generation:32`.
    ctl: AtomicU64,
    /// Flow: `ip_a << 32 | ip_b`. Fragment train: `src << 32 | dst`.
    k0: AtomicU64,
    /// Flow: `port_a << 48 | port_b << 32 | proto << 8 | KIND_FLOW`.
    /// Train: `ip id << 48 | proto << 8 | KIND_FRAG`.
    k1: AtomicU64,
    /// Expiry time (`now` units); alive while `now < expires`.
    expires: AtomicU32,
    /// Immutable: `quota slot << 16 | icmp type << 8 | icmp code`.
    aux: AtomicU32,
}

impl Slot {
    fn empty() -> Slot {
        Slot {
            ctl: AtomicU64::new(0),
            k0: AtomicU64::new(0),
            k1: AtomicU64::new(0),
            expires: AtomicU32::new(0),
            aux: AtomicU32::new(0),
        }
    }
}

/// Slots per 4 KiB page.
const PAGE_SLOTS: usize = 4096 / std::mem::size_of::<Slot>();
/// Buckets per 4 KiB page: a key's two buckets are in the same page.
const PAGE_BUCKETS: usize = PAGE_SLOTS / BUCKET;

/// One page-aligned page of slots.
#[repr(C, align(4096))]
struct Page([Slot; PAGE_SLOTS]);

/// The slot array, page-aligned so that a key's two buckets share one page (one
/// TLB entry, one DRAM page).
struct Slots(Box<[Page]>);

impl Slots {
    fn new(n: usize) -> Slots {
        let pages = n.div_ceil(PAGE_SLOTS);
        Slots(
            (0..pages)
                .map(|_| Page(std::array::from_fn(|_| Slot::empty())))
                .collect(),
        )
    }

    #[inline]
    fn len(&self) -> usize {
        self.0.len() * PAGE_SLOTS
    }

    fn iter(&self) -> impl Iterator<Item = &Slot> {
        self.0.iter().flat_map(|p| p.0.iter())
    }
}

impl std::ops::Index<usize> for Slots {
    type Output = Slot;

    #[inline]
    fn index(&self, idx: usize) -> &Slot {
        &self.0[idx / PAGE_SLOTS].0[idx % PAGE_SLOTS]
    }
}

/// A canonical table key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Key {
    k0: u64,
    k1: u64,
}

/// Canonical key of a flow and whether `key.src` is endpoint `a`.
#[inline]
/// Whether an ICMP error `pkt` quoting the datagram `inner` can belong to that
/// datagram's flow: it must go back to the datagram's sender, and an error sent by
/// an instance must come from the datagram's destination (instances cannot route,
/// and the source check guarantees their addresses). Errors from elsewhere (a
/// router on the uplink side) only need the first condition.
pub fn error_fits_flow(snap: &Snapshot, pkt: &Packet, inner: &FlowKey) -> bool {
    inner.src == pkt.key.dst
        && (inner.dst == pkt.key.src || snap.instance_by_ip(pkt.key.src).is_none())
}

fn flow_key(key: &FlowKey) -> (Key, bool) {
    let s = u64::from(u32::from(key.src)) << 16 | u64::from(key.sport);
    let d = u64::from(u32::from(key.dst)) << 16 | u64::from(key.dport);
    let src_is_a = s <= d;
    let (a, b) = if src_is_a { (s, d) } else { (d, s) };
    let k0 = (a >> 16) << 32 | (b >> 16);
    let k1 = (a & 0xffff) << 48 | (b & 0xffff) << 32 | u64::from(key.proto) << 8 | KIND_FLOW;
    (Key { k0, k1 }, src_is_a)
}

#[inline]
fn frag_key(key: &FlowKey, id: u16) -> Key {
    Key {
        k0: u64::from(u32::from(key.src)) << 32 | u64::from(u32::from(key.dst)),
        k1: u64::from(id) << 48 | u64::from(key.proto) << 8 | KIND_FRAG,
    }
}

/// The original-direction flow key of a canonical flow key.
fn original(k: Key, orig_a: bool) -> FlowKey {
    let ip_a = Ipv4Addr::from((k.k0 >> 32) as u32);
    let ip_b = Ipv4Addr::from(k.k0 as u32);
    let port_a = (k.k1 >> 48) as u16;
    let port_b = (k.k1 >> 32) as u16;
    let proto = (k.k1 >> 8) as u8;
    if orig_a {
        FlowKey {
            src: ip_a,
            dst: ip_b,
            proto,
            sport: port_a,
            dport: port_b,
        }
    } else {
        FlowKey {
            src: ip_b,
            dst: ip_a,
            proto,
            sport: port_b,
            dport: port_a,
        }
    }
}

/// Result of looking up a flow for a packet.
enum Track {
    Hit { idx: usize, ctl: u64 },
    Revoked,
    Miss,
}

/// The shared connection table. `Sync`: share `&Conntrack` between worker threads.
pub struct Conntrack {
    cfg: CtConfig,
    slots: Slots,
    mask: usize,
    quota: Box<[AtomicU32]>,
    count: AtomicUsize,
    seed: u64,
}

impl std::fmt::Debug for Conntrack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conntrack")
            .field("cfg", &self.cfg)
            .field("slots", &self.slots.len())
            .field("len", &self.len())
            .finish()
    }
}

impl Conntrack {
    /// A table for `cfg.capacity` entries (preallocated and prefaulted:
    /// `next_pow2(2 × capacity)` slots of 32 bytes).
    pub fn new(cfg: CtConfig) -> Self {
        let n = cfg
            .capacity
            .saturating_mul(2)
            .next_power_of_two()
            .max(PAGE_SLOTS);
        let slots = Slots::new(n);
        // The allocator may hand out lazily mapped zero pages: touch every page now
        // so that the datapath never takes a page fault on a first insert (and the
        // resident size is what `memory_bytes` says from the start).
        for page in slots.0.iter() {
            page.0[0].ctl.store(0, Ordering::Relaxed);
        }
        let quota: Box<[AtomicU32]> = (0..QUOTA_SLOTS).map(|_| AtomicU32::new(0)).collect();
        let seed = std::collections::hash_map::RandomState::new().hash_one(0x5eed_u64) | 1;
        Conntrack {
            cfg,
            slots,
            mask: n - 1,
            quota,
            count: AtomicUsize::new(0),
            seed,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &CtConfig {
        &self.cfg
    }

    /// Number of entries (flows and fragment trains), expired ones included until
    /// they are reclaimed.
    pub fn len(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    /// Whether the table holds no entries.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes held by the table (all preallocated).
    pub fn memory_bytes(&self) -> usize {
        std::mem::size_of::<Self>()
            + self.slots.len() * std::mem::size_of::<Slot>()
            + self.quota.len() * std::mem::size_of::<AtomicU32>()
    }

    /// Address and length in bytes of the slot array (page-aligned, allocated
    /// and prefaulted by [`Conntrack::new`]), for a caller that may advise the
    /// kernel about it: backing it with huge pages removes the TLB miss of a
    /// random lookup (see `switch::sys::advise_hugepages`). Reading these numbers
    /// changes nothing.
    pub fn table_region(&self) -> (usize, usize) {
        (
            self.slots.0.as_ptr() as usize,
            self.slots.len() * std::mem::size_of::<Slot>(),
        )
    }

    /// Remove every expired entry; returns how many were removed. Meant for the
    /// management thread, periodically (entries are also reclaimed on sight).
    pub fn sweep(&self, now: u32) -> usize {
        let mut removed = 0;
        for idx in 0..self.slots.len() {
            let c = self.slots[idx].ctl.load(Ordering::Acquire);
            if c & (OCC | BUSY) == OCC
                && now >= self.slots[idx].expires.load(Ordering::Relaxed)
                && self.remove(idx, c, Some(now))
            {
                removed += 1;
            }
        }
        removed
    }

    /// Decide one packet. See the module docs for the semantics.
    pub fn judge(&self, snap: &Snapshot, pkt: &Packet, now: u32) -> Result<(), DropReason> {
        // Looked up only where needed: tracked flows never ask.
        let dst_is_inst = || snap.instance_by_ip(pkt.key.dst).is_some();
        if let Frag::Later { id } = pkt.frag {
            if !dst_is_inst() {
                return Ok(());
            }
            return match self.find_alive(frag_key(&pkt.key, id), now) {
                Some(_) => Ok(()),
                None => Err(DropReason::UnmatchedFragment),
            };
        }
        if let L4::Icmp {
            kind: IcmpKind::Error { inner },
            ..
        } = pkt.l4
        {
            let unrelated = if error_fits_flow(snap, pkt, &inner) {
                let (k, _) = flow_key(&inner);
                match self.track(snap, k, None, now) {
                    Track::Hit { .. } => None,
                    Track::Revoked => Some(DropReason::Revoked),
                    Track::Miss => Some(DropReason::UnrelatedIcmpError),
                }
            } else {
                Some(DropReason::UnrelatedIcmpError)
            };
            if let Some(reason) = unrelated
                && !snap.allows(pkt)
                && dst_is_inst()
            {
                return Err(reason);
            }
        } else {
            let (k, src_is_a) = flow_key(&pkt.key);
            match self.track(snap, k, Some((pkt, src_is_a)), now) {
                Track::Hit { idx, ctl } => self.refresh(idx, ctl, pkt, src_is_a, now),
                Track::Revoked => return Err(DropReason::Revoked),
                Track::Miss => {
                    // `allows` is false for non-instances: egress is allowed.
                    if !snap.allows(pkt) && dst_is_inst() {
                        return Err(DropReason::NoRule);
                    }
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
                }
            }
        }
        if let Frag::First { id } = pkt.frag {
            self.touch_train(snap, pkt, id, now)?;
        }
        Ok(())
    }

    /// Touch the two buckets `pkt` will look up, without waiting for them: the
    /// loads of several packets overlap, so a burst pays about one memory latency
    /// instead of one per packet. A hint only: no effect on any verdict.
    #[inline]
    pub fn prefetch(&self, pkt: &Packet) {
        let key = match pkt.l4 {
            L4::Icmp {
                kind: IcmpKind::Error { inner },
                ..
            } => inner,
            _ => pkt.key,
        };
        let b = self.buckets(flow_key(&key).0);
        let mut sink = 0u64;
        for base in b {
            // One load per cache line of the bucket (two 32-byte slots a line).
            for j in (0..BUCKET).step_by(2) {
                sink ^= self.slots[base + j].k0.load(Ordering::Relaxed);
            }
        }
        std::hint::black_box(sink);
    }

    /// Addresses of the two buckets (each [`BUCKET_BYTES`] long, cache-line
    /// aligned) that judging `pkt` will look up (for an ICMP error, those of the
    /// flow it is about). For a caller that issues real prefetch instructions
    /// (the switch's staged burst: `switch::sys::prefetch`); this crate has no
    /// `unsafe`, so [`Conntrack::prefetch`] can only touch the lines with loads.
    /// Computing them reads nothing from the table.
    #[inline]
    pub fn bucket_addrs(&self, pkt: &Packet) -> [usize; 2] {
        let key = match pkt.l4 {
            L4::Icmp {
                kind: IcmpKind::Error { inner },
                ..
            } => inner,
            _ => pkt.key,
        };
        let key = match pkt.frag {
            Frag::Later { id } => frag_key(&key, id),
            _ => flow_key(&key).0,
        };
        self.buckets(key)
            .map(|base| &self.slots[base] as *const Slot as usize)
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

    // --- internals ---------------------------------------------------------

    /// First slot of the two candidate buckets of `k`: two different buckets of
    /// the same page (a random access costs one TLB entry and one DRAM page; the
    /// two choices balance load within the page, and pages themselves are loaded
    /// evenly by the hash: a page of 128 slots holds 64 entries on average at 50%
    /// load).
    #[inline]
    fn buckets(&self, k: Key) -> [usize; 2] {
        let h = self.hash(k);
        let nb = (self.mask + 1) / BUCKET;
        let b1 = h & (nb - 1);
        let off = 1 + (h >> 32) % (PAGE_BUCKETS - 1);
        let b2 = (b1 & !(PAGE_BUCKETS - 1)) | ((b1 + off) & (PAGE_BUCKETS - 1));
        [b1 * BUCKET, b2 * BUCKET]
    }

    /// Slot index of probe position `p` (0..PROBE) of a key with buckets `b`.
    #[inline]
    fn slot_at(b: [usize; 2], p: usize) -> usize {
        b[p / BUCKET] + p % BUCKET
    }

    #[inline]
    fn hash(&self, k: Key) -> usize {
        let mut h = (k.k0 ^ self.seed).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        h ^= k.k1.wrapping_add(self.seed.rotate_left(32));
        h = h.wrapping_mul(0xD6E8_FEB8_6659_FD93);
        h ^= h >> 32;
        h = h.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        (h ^ (h >> 29)) as usize
    }

    /// Wait (bounded) for a slot's BUSY to clear; returns its control word.
    #[inline]
    fn settled_ctl(slot: &Slot, spins: u32) -> u64 {
        let mut c = slot.ctl.load(Ordering::Acquire);
        let mut n = 0;
        while c & BUSY != 0 && n < spins {
            std::hint::spin_loop();
            n += 1;
            if n % 256 == 0 {
                std::thread::yield_now();
            }
            c = slot.ctl.load(Ordering::Acquire);
        }
        c
    }

    /// Seqlock read: the slot's published key if it is occupied and stable.
    #[inline]
    fn read_key(slot: &Slot, spins: u32) -> Option<(Key, u64)> {
        let c1 = Self::settled_ctl(slot, spins);
        if c1 & (OCC | BUSY) != OCC {
            return None;
        }
        let k = Key {
            k0: slot.k0.load(Ordering::Relaxed),
            k1: slot.k1.load(Ordering::Relaxed),
        };
        fence(Ordering::Acquire);
        let c2 = slot.ctl.load(Ordering::Relaxed);
        if version(c2) != version(c1) || c2 & (OCC | BUSY) != OCC {
            return None;
        }
        Some((k, c2))
    }

    /// Find `k` in its window: `(slot index, probe position, control word)`.
    #[inline]
    fn find(&self, k: Key) -> Option<(usize, usize, u64)> {
        let b = self.buckets(k);
        for i in 0..PROBE {
            let idx = Self::slot_at(b, i);
            let slot = &self.slots[idx];
            // Cheap pre-check before the seqlock read.
            if slot.k0.load(Ordering::Relaxed) != k.k0 {
                continue;
            }
            if let Some((sk, c)) = Self::read_key(slot, 1024)
                && sk == k
            {
                return Some((idx, i, c));
            }
        }
        None
    }

    /// Find `k` and check that it has not expired (removing it if it has).
    #[inline]
    fn find_alive(&self, k: Key, now: u32) -> Option<(usize, u64)> {
        let (idx, _, c) = self.find(k)?;
        if now >= self.slots[idx].expires.load(Ordering::Relaxed) {
            self.remove(idx, c, Some(now));
            return None;
        }
        Some((idx, c))
    }

    /// Look up a flow and apply revalidation. `own` is the packet and whether its
    /// source is endpoint `a` when the packet belongs to the flow itself (`None`
    /// for an ICMP error about the flow).
    #[inline]
    fn track(&self, snap: &Snapshot, k: Key, own: Option<(&Packet, bool)>, now: u32) -> Track {
        let Some((idx, c)) = self.find_alive(k, now) else {
            return Track::Miss;
        };
        if self.cfg.on_revoke == RevokeMode::Keep {
            return Track::Hit { idx, ctl: c };
        }
        // Fast path: checked under this generation and not revoked.
        if c & (GEN_MASK | REVOKED) == snap.generation() & GEN_MASK {
            return Track::Hit { idx, ctl: c };
        }
        self.revalidate(snap, k, idx, c, own, now)
    }

    /// Revalidation of an entry that is revoked or was last checked under another
    /// generation (see the module docs, rule 3).
    #[cold]
    fn revalidate(
        &self,
        snap: &Snapshot,
        k: Key,
        idx: usize,
        c: u64,
        own: Option<(&Packet, bool)>,
        now: u32,
    ) -> Track {
        let generation = snap.generation() & GEN_MASK;
        let orig_a = c & ORIG_A != 0;
        let orig = original(k, orig_a);
        // Egress flows (original destination not an instance) stay allowed.
        let inbound = snap.instance_by_ip(orig.dst).is_some();
        if c & REVOKED != 0 {
            // A new SYN from the initiator is judged like a new flow: if the rules
            // allow it now, the entry starts afresh.
            if let Some((pkt, src_is_a)) = own
                && let L4::Tcp { flags } = pkt.l4
                && flags & (tcp_flags::SYN | tcp_flags::ACK) == tcp_flags::SYN
                && src_is_a == orig_a
                && (!inbound || snap.allows(pkt))
            {
                let fresh = |c: u64| {
                    (c & !(REVOKED | SEEN_REPLY | TCP_MASK | GEN_MASK))
                        | TcpState::SynSent.bits()
                        | generation
                };
                let ctl = self.update_ctl(idx, c, fresh).unwrap_or(c);
                return Track::Hit { idx, ctl };
            }
            if c & GEN_MASK != generation {
                if !inbound || self.allows_original(snap, idx, orig) {
                    // Re-authorized: the flow resumes in its old state.
                    let revive = |c: u64| (c & !(REVOKED | GEN_MASK)) | generation;
                    let ctl = self.update_ctl(idx, c, revive).unwrap_or(c);
                    return Track::Hit { idx, ctl };
                }
                let _ = self.update_ctl(idx, c, |c| (c & !GEN_MASK) | generation);
            }
            if own.is_some() {
                // Each dropped packet of the flow re-arms the revoked timeout.
                self.rearm(idx, now.saturating_add(self.cfg.timeouts.revoked));
            }
            return Track::Revoked;
        }
        if !inbound || self.allows_original(snap, idx, orig) {
            // Still allowed: remember that this generation was checked.
            let ctl = self
                .update_ctl(idx, c, |c| (c & !GEN_MASK) | generation)
                .unwrap_or(c);
            return Track::Hit { idx, ctl };
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

    /// Does `snap` allow the original direction `orig` of the flow in `idx`?
    fn allows_original(&self, snap: &Snapshot, idx: usize, orig: FlowKey) -> bool {
        let aux = self.slots[idx].aux.load(Ordering::Relaxed);
        let l4 = match orig.proto {
            proto::TCP => L4::Tcp {
                flags: tcp_flags::SYN,
            },
            proto::UDP => L4::Udp,
            proto::ICMP => L4::Icmp {
                ty: (aux >> 8) as u8,
                code: aux as u8,
                kind: IcmpKind::Request,
            },
            _ => L4::Other,
        };
        snap.allows(&Packet {
            key: orig,
            l4,
            frag: Frag::None,
        })
    }

    /// Change the control word of `idx` from `c` to `f(c)` by CAS, retrying while
    /// only other state (TCP state, reply flag) changes concurrently. `None` if the
    /// entry was removed or reused meanwhile, or another thread revalidated it
    /// first (its decision stands; this packet was judged against the entry seen).
    fn update_ctl(&self, idx: usize, mut c: u64, f: impl Fn(u64) -> u64) -> Option<u64> {
        loop {
            let new = f(c);
            match self.slots[idx].ctl.compare_exchange_weak(
                c,
                new,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Some(new),
                Err(cur) => {
                    if version(cur) != version(c)
                        || cur & (OCC | BUSY) != OCC
                        || (cur ^ c) & (REVOKED | GEN_MASK) != 0
                    {
                        return None;
                    }
                    c = cur;
                }
            }
        }
    }

    /// Set the expiry of the entry in `idx` (stored only when it changes).
    #[inline]
    fn rearm(&self, idx: usize, exp: u32) {
        let slot = &self.slots[idx];
        if slot.expires.load(Ordering::Relaxed) != exp {
            slot.expires.store(exp, Ordering::Relaxed);
        }
    }

    /// Timeout of an entry in this state.
    #[inline]
    fn timeout(&self, proto_: u8, c: u64) -> u32 {
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
            proto::ICMP => t.icmp,
            _ => t.other,
        }
    }

    /// Update state and expiry of a tracked flow for a packet of it.
    #[inline]
    fn refresh(&self, idx: usize, mut c: u64, pkt: &Packet, src_is_a: bool, now: u32) {
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
    fn charge_slot(snap: &Snapshot, key: &FlowKey) -> Option<usize> {
        let ip = if snap.instance_by_ip(key.src).is_some() {
            key.src
        } else if snap.instance_by_ip(key.dst).is_some() {
            key.dst
        } else {
            return None;
        };
        let h = u64::from(u32::from(ip)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        Some((h >> 32) as usize & (QUOTA_SLOTS - 1))
    }

    fn insert_flow(
        &self,
        snap: &Snapshot,
        pkt: &Packet,
        k: Key,
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

    fn touch_train(
        &self,
        snap: &Snapshot,
        pkt: &Packet,
        id: u16,
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

    /// Insert a new entry; returns its slot index (or the index of an equal entry
    /// inserted concurrently by another thread).
    #[allow(clippy::too_many_arguments)]
    fn insert(
        &self,
        k: Key,
        flags: u64,
        icmp: u32,
        quota: Option<usize>,
        generation: u64,
        now: u32,
        timeout: u32,
    ) -> Result<usize, DropReason> {
        let b = self.buckets(k);
        // Capacity.
        if self.count.fetch_add(1, Ordering::Relaxed) >= self.cfg.capacity {
            self.count.fetch_sub(1, Ordering::Relaxed);
            self.reclaim_window(b, now);
            if self.count.fetch_add(1, Ordering::Relaxed) >= self.cfg.capacity {
                self.count.fetch_sub(1, Ordering::Relaxed);
                return Err(DropReason::ConntrackFull);
            }
        }
        // Quota.
        if let Some(q) = quota
            && self.quota[q].fetch_add(1, Ordering::Relaxed) >= self.cfg.per_instance_quota
        {
            self.quota[q].fetch_sub(1, Ordering::Relaxed);
            self.count.fetch_sub(1, Ordering::Relaxed);
            return Err(DropReason::ConntrackQuota);
        }
        let aux = (quota.unwrap_or(0) as u32) << 16 | icmp;
        let flags = flags | if quota.is_some() { CHARGED } else { 0 };
        // The less loaded bucket first.
        let load = |base: usize| {
            (0..BUCKET)
                .filter(|j| self.slots[base + j].ctl.load(Ordering::Relaxed) & (OCC | BUSY) != 0)
                .count()
        };
        let order: [usize; PROBE] = if load(b[1]) < load(b[0]) {
            std::array::from_fn(|p| (p + BUCKET) % PROBE)
        } else {
            std::array::from_fn(|p| p)
        };
        for attempt in 0..2 {
            for &i in &order {
                let idx = Self::slot_at(b, i);
                let slot = &self.slots[idx];
                let c = slot.ctl.load(Ordering::Relaxed);
                if c & (OCC | BUSY) != 0 {
                    continue;
                }
                if slot
                    .ctl
                    .compare_exchange(c, c | BUSY, Ordering::Acquire, Ordering::Relaxed)
                    .is_err()
                {
                    continue;
                }
                fence(Ordering::Release);
                slot.k0.store(k.k0, Ordering::Relaxed);
                slot.k1.store(k.k1, Ordering::Relaxed);
                slot.aux.store(aux, Ordering::Relaxed);
                slot.expires
                    .store(now.saturating_add(timeout), Ordering::Relaxed);
                let v = (version(c) + 1) & 0xffff;
                let published = v << VERSION_SHIFT | flags | OCC | (generation & GEN_MASK);
                slot.ctl.store(published, Ordering::Release);
                return Ok(self.dedupe(k, b, i, idx, published));
            }
            if attempt == 0 {
                self.reclaim_window(b, now);
            }
        }
        if let Some(q) = quota {
            self.quota[q].fetch_sub(1, Ordering::Relaxed);
        }
        self.count.fetch_sub(1, Ordering::Relaxed);
        Err(DropReason::ConntrackFull)
    }

    /// After publishing `k` at probe position `mine`, make sure it is the only
    /// entry for `k`: two threads may insert the same new flow at once (in
    /// different slots). Of equal keys the one at the lowest probe position wins;
    /// every inserter removes the losers it sees. The SeqCst fence (paired with the
    /// other inserter's) guarantees that of two concurrent inserters at least the
    /// later one sees the other's published key.
    fn dedupe(&self, k: Key, b: [usize; 2], mine: usize, my_idx: usize, my_ctl: u64) -> usize {
        fence(Ordering::SeqCst);
        for j in 0..PROBE {
            if j == mine {
                continue;
            }
            let idx = Self::slot_at(b, j);
            if let Some((sk, c)) = Self::read_key(&self.slots[idx], u32::MAX)
                && sk == k
            {
                if j < mine {
                    self.remove(my_idx, my_ctl, None);
                    return idx;
                }
                self.remove(idx, c, None);
            }
        }
        my_idx
    }

    /// Remove expired entries in a key's two buckets.
    fn reclaim_window(&self, b: [usize; 2], now: u32) {
        for i in 0..PROBE {
            let idx = Self::slot_at(b, i);
            let c = self.slots[idx].ctl.load(Ordering::Acquire);
            if c & (OCC | BUSY) == OCC && now >= self.slots[idx].expires.load(Ordering::Relaxed) {
                self.remove(idx, c, Some(now));
            }
        }
    }

    /// Remove the entry in `idx` if it is still the one seen with control word `c`
    /// (and, with `expired_at`, still expired at that time). Returns whether it was
    /// removed by this call.
    fn remove(&self, idx: usize, mut c: u64, expired_at: Option<u32>) -> bool {
        let slot = &self.slots[idx];
        loop {
            if c & (OCC | BUSY) != OCC {
                return false;
            }
            match slot
                .ctl
                .compare_exchange_weak(c, c | BUSY, Ordering::Acquire, Ordering::Relaxed)
            {
                Ok(_) => break,
                Err(cur) => {
                    if version(cur) != version(c) {
                        return false;
                    }
                    c = cur;
                }
            }
        }
        fence(Ordering::Release);
        if let Some(now) = expired_at
            && now < slot.expires.load(Ordering::Relaxed)
        {
            // Refreshed meanwhile: put it back unchanged.
            slot.ctl.store(c, Ordering::Release);
            return false;
        }
        if c & CHARGED != 0 {
            let q = (slot.aux.load(Ordering::Relaxed) >> 16) as usize;
            self.quota[q].fetch_sub(1, Ordering::Relaxed);
        }
        self.count.fetch_sub(1, Ordering::Relaxed);
        let v = (version(c) + 1) & 0xffff;
        slot.ctl.store(v << VERSION_SHIFT, Ordering::Release);
        true
    }

    /// Entries charged to the quota slot of `ip` (for tests and stats).
    pub fn charged_to(&self, ip: Ipv4Addr) -> u32 {
        let h = u64::from(u32::from(ip)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        self.quota[(h >> 32) as usize & (QUOTA_SLOTS - 1)].load(Ordering::Relaxed)
    }

    /// Count occupied slots by scanning (for tests: must equal [`Conntrack::len`]
    /// when no thread is writing).
    pub fn count_by_scan(&self) -> usize {
        self.slots
            .iter()
            .filter(|s| s.ctl.load(Ordering::Acquire) & OCC != 0)
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compile::compile;
    use crate::model::{Group, Instance, Model, Owner, Ports, Proto, Rule, Source};
    use std::sync::Arc;

    const A: [u8; 4] = [172, 31, 0, 10];
    const B: [u8; 4] = [172, 31, 0, 11];
    const OUT: [u8; 4] = [203, 0, 113, 7];

    fn owner() -> Owner {
        Owner("111122223333".into())
    }

    /// A in group "a" (no rules), B in group "b" with `b_rules`.
    fn model(b_rules: Vec<Rule>) -> Model {
        let mut m = Model::default();
        for (name, rules) in [("a", vec![]), ("b", b_rules)] {
            m.groups.insert(
                (owner(), name.into()),
                Group {
                    owner: owner(),
                    name: name.into(),
                    id: format!("sg-{name}"),
                    description: String::new(),
                    rules,
                },
            );
        }
        for (id, ip, g, n) in [("i-a", A, "a", 1u8), ("i-b", B, "b", 2)] {
            m.instances.insert(
                id.into(),
                Instance {
                    id: id.into(),
                    owner: owner(),
                    mac: [2, 0, 0, 0, 0, n],
                    ip: ip.into(),
                    groups: vec![g.into()],
                },
            );
        }
        m
    }

    fn cidr_rule(proto: Proto, ports: Ports, cidr: &str) -> Rule {
        Rule {
            proto,
            ports,
            source: Source::Cidr(cidr.parse().unwrap()),
        }
    }

    fn tcp(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16, flags: u8) -> Packet {
        Packet {
            key: FlowKey {
                src: src.into(),
                dst: dst.into(),
                proto: proto::TCP,
                sport,
                dport,
            },
            l4: L4::Tcp { flags },
            frag: Frag::None,
        }
    }

    fn udp(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16) -> Packet {
        Packet {
            key: FlowKey {
                src: src.into(),
                dst: dst.into(),
                proto: proto::UDP,
                sport,
                dport,
            },
            l4: L4::Udp,
            frag: Frag::None,
        }
    }

    fn icmp(src: [u8; 4], dst: [u8; 4], ty: u8, kind: IcmpKind, id: u16) -> Packet {
        Packet {
            key: FlowKey {
                src: src.into(),
                dst: dst.into(),
                proto: proto::ICMP,
                sport: id,
                dport: id,
            },
            l4: L4::Icmp { ty, code: 0, kind },
            frag: Frag::None,
        }
    }

    fn ssh_model() -> Model {
        model(vec![cidr_rule(
            Proto::Tcp,
            Ports::Range(22, 22),
            "203.0.113.0/24",
        )])
    }

    use tcp_flags::{ACK, FIN, PSH, RST, SYN};

    #[test]
    fn ingress_by_rule_and_replies_by_state() {
        let snap = compile(&ssh_model(), 1);
        let ct = Conntrack::new(CtConfig::with_capacity(1024));
        // Not allowed: port 23, and A → B (A is not in 203.0.113.0/24).
        assert_eq!(
            ct.judge(&snap, &tcp(OUT, 5000, B, 23, SYN), 0),
            Err(DropReason::NoRule)
        );
        assert_eq!(
            ct.judge(&snap, &tcp(A, 5000, B, 22, SYN), 0),
            Err(DropReason::NoRule)
        );
        assert_eq!(ct.len(), 0);
        // Allowed SYN creates a flow; the reply to OUT passes (egress anyway) and
        // subsequent packets from OUT pass by state.
        assert_eq!(ct.judge(&snap, &tcp(OUT, 5000, B, 22, SYN), 0), Ok(()));
        assert_eq!(ct.len(), 1);
        assert_eq!(
            ct.judge(&snap, &tcp(B, 22, OUT, 5000, SYN | ACK), 0),
            Ok(())
        );
        assert_eq!(ct.judge(&snap, &tcp(OUT, 5000, B, 22, ACK), 1), Ok(()));
        assert_eq!(ct.len(), 1);
        assert_eq!(ct.charged_to(B.into()), 1);
    }

    #[test]
    fn egress_opens_return_path() {
        let snap = compile(&model(vec![]), 1);
        let ct = Conntrack::new(CtConfig::with_capacity(1024));
        // B has no rules: a fresh packet from A is dropped...
        assert_eq!(
            ct.judge(&snap, &udp(A, 53, B, 4000), 0),
            Err(DropReason::NoRule)
        );
        // ...but a reply to B's own query passes.
        assert_eq!(
            ct.judge(&snap, &udp(B, 4000, A, 53), 0),
            Err(DropReason::NoRule),
            "A has no rules either"
        );
        assert_eq!(ct.judge(&snap, &udp(B, 4000, OUT, 53), 0), Ok(()));
        assert_eq!(ct.judge(&snap, &udp(OUT, 53, B, 4000), 5), Ok(()));
        // Charged to the initiating instance B.
        assert_eq!(ct.charged_to(B.into()), 1);
        // ICMP echo from B out and its reply back.
        assert_eq!(
            ct.judge(&snap, &icmp(B, OUT, 8, IcmpKind::Request, 77), 0),
            Ok(())
        );
        assert_eq!(
            ct.judge(&snap, &icmp(OUT, B, 0, IcmpKind::Reply, 77), 0),
            Ok(())
        );
        assert_eq!(
            ct.judge(&snap, &icmp(OUT, B, 0, IcmpKind::Reply, 78), 0),
            Err(DropReason::NoRule)
        );
        assert_eq!(
            ct.judge(&snap, &icmp(OUT, B, 8, IcmpKind::Request, 78), 0),
            Err(DropReason::NoRule)
        );
    }

    #[test]
    fn udp_timeouts_and_stream() {
        let snap = compile(&model(vec![]), 1);
        let ct = Conntrack::new(CtConfig::with_capacity(1024));
        let out = udp(B, 4000, OUT, 53);
        let back = udp(OUT, 53, B, 4000);
        assert_eq!(ct.judge(&snap, &out, 100), Ok(()));
        // One way only: 30 s.
        assert_eq!(ct.judge(&snap, &back, 129), Ok(()));
        // Now seen both ways: 180 s from the last packet.
        assert_eq!(ct.judge(&snap, &back, 129 + 179), Ok(()));
        assert_eq!(
            ct.judge(&snap, &back, 129 + 179 + 180),
            Err(DropReason::NoRule)
        );
        assert_eq!(ct.len(), 0, "expired entry reclaimed on sight");
        // One-way flow expires after 30 s.
        assert_eq!(ct.judge(&snap, &out, 1000), Ok(()));
        assert_eq!(ct.judge(&snap, &back, 1030), Err(DropReason::NoRule));
    }

    #[test]
    fn tcp_states_choose_timeouts() {
        let snap = compile(&model(vec![]), 1);
        let ct = Conntrack::new(CtConfig::with_capacity(1024));
        let syn = tcp(B, 4000, OUT, 80, SYN);
        let synack = tcp(OUT, 80, B, 4000, SYN | ACK);
        let ack = tcp(OUT, 80, B, 4000, ACK);
        assert_eq!(ct.judge(&snap, &syn, 0), Ok(()));
        // SYN sent: 120 s.
        assert_eq!(ct.judge(&snap, &synack, 119), Ok(()));
        // Established: 5 days.
        assert_eq!(ct.judge(&snap, &ack, 119 + 431_999), Ok(()));
        // FIN: 120 s.
        let t = 119 + 431_999;
        assert_eq!(
            ct.judge(&snap, &tcp(OUT, 80, B, 4000, FIN | ACK), t),
            Ok(())
        );
        assert_eq!(ct.judge(&snap, &ack, t + 119), Ok(()));
        assert_eq!(
            ct.judge(&snap, &ack, t + 119 + 120),
            Err(DropReason::NoRule)
        );
        // RST: 10 s.
        assert_eq!(ct.judge(&snap, &syn, 0), Ok(()));
        assert_eq!(ct.judge(&snap, &tcp(OUT, 80, B, 4000, RST), 1), Ok(()));
        assert_eq!(ct.judge(&snap, &ack, 10), Ok(()));
        assert_eq!(ct.judge(&snap, &ack, 20), Err(DropReason::NoRule));
        // A SYN that is never answered: 120 s.
        assert_eq!(ct.judge(&snap, &syn, 1000), Ok(()));
        assert_eq!(ct.judge(&snap, &syn, 1119), Ok(()));
        assert_eq!(
            ct.judge(&snap, &synack, 1119 + 120),
            Err(DropReason::NoRule)
        );
    }

    #[test]
    fn revalidate_cuts_revoked_flows_keep_does_not() {
        let m1 = ssh_model();
        let m2 = model(vec![cidr_rule(
            Proto::Tcp,
            Ports::Range(80, 80),
            "0.0.0.0/0",
        )]);
        for mode in [RevokeMode::Revalidate, RevokeMode::Keep] {
            let ct = Conntrack::new(CtConfig {
                on_revoke: mode,
                ..CtConfig::with_capacity(1024)
            });
            let s1 = compile(&m1, 1);
            assert_eq!(ct.judge(&s1, &tcp(OUT, 5000, B, 22, SYN), 0), Ok(()));
            // Also an egress flow of B, which no edit can cut.
            assert_eq!(ct.judge(&s1, &tcp(B, 6000, OUT, 443, SYN), 0), Ok(()));
            // An edit that keeps the permission: still passes in both modes.
            let s1b = compile(&m1, 2);
            assert_eq!(ct.judge(&s1b, &tcp(B, 22, OUT, 5000, SYN | ACK), 1), Ok(()));
            // Revoke ssh.
            let s2 = compile(&m2, 3);
            let r = ct.judge(&s2, &tcp(B, 22, OUT, 5000, ACK), 2);
            let egress = ct.judge(&s2, &tcp(OUT, 443, B, 6000, SYN | ACK), 2);
            assert_eq!(egress, Ok(()));
            match mode {
                RevokeMode::Revalidate => {
                    assert_eq!(r, Err(DropReason::Revoked));
                    // The cut flow stays (marked) until the revoked timeout.
                    assert_eq!(ct.len(), 2);
                    assert_eq!(
                        ct.judge(&s2, &tcp(OUT, 5000, B, 22, ACK), 3),
                        Err(DropReason::Revoked)
                    );
                    assert_eq!(
                        ct.judge(&s2, &tcp(OUT, 5000, B, 22, ACK), 3 + 30),
                        Err(DropReason::NoRule)
                    );
                    assert_eq!(ct.len(), 1);
                }
                RevokeMode::Keep => {
                    assert_eq!(r, Ok(()));
                    assert_eq!(ct.judge(&s2, &tcp(OUT, 5000, B, 22, ACK), 3), Ok(()));
                    assert_eq!(ct.len(), 2);
                }
            }
        }
    }

    /// Control word of the entry of `pkt`'s flow, if tracked (test helper).
    fn entry(ct: &Conntrack, pkt: &Packet) -> Option<u64> {
        ct.find(flow_key(&pkt.key).0).map(|(_, _, c)| c)
    }

    /// The bug found by the e2e test: after a revoke cut an inbound TCP flow, the
    /// instance's next packet (egress, always allowed) must not re-open it as an
    /// instance-initiated flow through which the outside's packets pass as replies.
    #[test]
    fn revoked_flow_stays_cut_in_both_directions() {
        let ct = Conntrack::new(CtConfig::with_capacity(1024));
        let s1 = compile(&ssh_model(), 1);
        assert_eq!(ct.judge(&s1, &tcp(OUT, 5000, B, 22, SYN), 0), Ok(()));
        assert_eq!(ct.judge(&s1, &tcp(B, 22, OUT, 5000, SYN | ACK), 0), Ok(()));
        assert_eq!(ct.judge(&s1, &tcp(OUT, 5000, B, 22, ACK), 0), Ok(()));
        // Revoke ssh: generation 2.
        let s2 = compile(&model(vec![]), 2);
        assert_eq!(
            ct.judge(&s2, &tcp(OUT, 5000, B, 22, ACK | PSH), 1),
            Err(DropReason::Revoked)
        );
        // The instance's ACK/retransmit is dropped too, and opens nothing.
        assert_eq!(
            ct.judge(&s2, &tcp(B, 22, OUT, 5000, ACK), 1),
            Err(DropReason::Revoked)
        );
        assert_eq!(ct.len(), 1, "the revoked entry stays, no second entry");
        for t in [2, 10, 25] {
            assert_eq!(
                ct.judge(&s2, &tcp(OUT, 5000, B, 22, ACK | PSH), t),
                Err(DropReason::Revoked),
                "outside at {t}"
            );
            assert_eq!(
                ct.judge(&s2, &tcp(B, 22, OUT, 5000, ACK | PSH), t),
                Err(DropReason::Revoked),
                "instance at {t}"
            );
        }
        // Still cut under a later generation that does not allow it either.
        let s3 = compile(&model(vec![]), 3);
        assert_eq!(
            ct.judge(&s3, &tcp(B, 22, OUT, 5000, ACK), 26),
            Err(DropReason::Revoked)
        );
        // Related ICMP errors are revoked too (and refresh nothing).
        let err = Packet {
            key: FlowKey {
                src: OUT.into(),
                dst: B.into(),
                proto: proto::ICMP,
                sport: 0,
                dport: 0,
            },
            l4: L4::Icmp {
                ty: 3,
                code: 3,
                kind: IcmpKind::Error {
                    inner: tcp(B, 22, OUT, 5000, ACK).key,
                },
            },
            frag: Frag::None,
        };
        assert_eq!(ct.judge(&s3, &err, 27), Err(DropReason::Revoked));
        // Silent for the revoked timeout (30 s after the last dropped packet):
        // reclaimed like any expired entry, quota returned.
        assert_eq!(ct.charged_to(B.into()), 1);
        assert_eq!(ct.sweep(26 + 29), 0);
        assert_eq!(ct.sweep(26 + 30), 1);
        assert_eq!(ct.len(), 0);
        assert_eq!(ct.charged_to(B.into()), 0);
    }

    #[test]
    fn revoked_flow_revives_when_reauthorized() {
        let ct = Conntrack::new(CtConfig::with_capacity(1024));
        let s1 = compile(&ssh_model(), 1);
        assert_eq!(ct.judge(&s1, &tcp(OUT, 5000, B, 22, SYN), 0), Ok(()));
        assert_eq!(ct.judge(&s1, &tcp(B, 22, OUT, 5000, SYN | ACK), 0), Ok(()));
        let s2 = compile(&model(vec![]), 2);
        assert_eq!(
            ct.judge(&s2, &tcp(B, 22, OUT, 5000, ACK), 1),
            Err(DropReason::Revoked)
        );
        // Re-authorize: the first packet under the new generation revives the flow,
        // whichever side sends it, with its TCP state intact (established: 5 days).
        let s3 = compile(&ssh_model(), 3);
        assert_eq!(ct.judge(&s3, &tcp(B, 22, OUT, 5000, ACK), 2), Ok(()));
        assert_eq!(ct.judge(&s3, &tcp(OUT, 5000, B, 22, ACK), 2), Ok(()));
        let c = entry(&ct, &tcp(B, 22, OUT, 5000, ACK)).expect("tracked");
        assert_eq!(c & REVOKED, 0);
        assert_eq!(TcpState::from_bits(c), TcpState::Established);
        assert_eq!(ct.judge(&s3, &tcp(OUT, 5000, B, 22, ACK), 100_000), Ok(()));
        assert_eq!(ct.len(), 1);
        // An edit that re-authorizes something else does not revive it.
        assert_eq!(
            ct.judge(&s2, &tcp(OUT, 5000, B, 22, ACK), 100_001),
            Err(DropReason::Revoked)
        );
        let s4 = compile(
            &model(vec![cidr_rule(
                Proto::Tcp,
                Ports::Range(23, 23),
                "0.0.0.0/0",
            )]),
            4,
        );
        assert_eq!(
            ct.judge(&s4, &tcp(OUT, 5000, B, 22, ACK), 100_002),
            Err(DropReason::Revoked)
        );
    }

    #[test]
    fn syn_from_initiator_reopens_a_revoked_flow_only_if_allowed() {
        let ct = Conntrack::new(CtConfig::with_capacity(1024));
        let s1 = compile(&ssh_model(), 1);
        assert_eq!(ct.judge(&s1, &tcp(OUT, 5000, B, 22, SYN), 0), Ok(()));
        assert_eq!(ct.judge(&s1, &tcp(B, 22, OUT, 5000, SYN | ACK), 0), Ok(()));
        let s2 = compile(&model(vec![]), 2);
        assert_eq!(
            ct.judge(&s2, &tcp(OUT, 5000, B, 22, ACK), 1),
            Err(DropReason::Revoked)
        );
        // Not allowed: a new SYN from the initiator is still revoked, and a SYN
        // from the responder (the instance) is not a new flow of its own.
        assert_eq!(
            ct.judge(&s2, &tcp(OUT, 5000, B, 22, SYN), 2),
            Err(DropReason::Revoked)
        );
        assert_eq!(
            ct.judge(&s2, &tcp(B, 22, OUT, 5000, SYN), 2),
            Err(DropReason::Revoked)
        );
        // Allowed again: the initiator's SYN reopens the entry as a fresh flow
        // (SYN sent, 120 s), not as the old established one.
        let s3 = compile(&ssh_model(), 3);
        assert_eq!(ct.judge(&s3, &tcp(OUT, 5000, B, 22, SYN), 3), Ok(()));
        let c = entry(&ct, &tcp(OUT, 5000, B, 22, SYN)).expect("tracked");
        assert_eq!(c & (REVOKED | SEEN_REPLY), 0);
        assert_eq!(TcpState::from_bits(c), TcpState::SynSent);
        assert_eq!(ct.len(), 1);
        assert_eq!(ct.charged_to(B.into()), 1);
        // Unanswered, it expires after 120 s.
        assert_eq!(ct.sweep(3 + 119), 0);
        assert_eq!(ct.sweep(3 + 120), 1);
        // Keep mode never marks anything.
        let keep = Conntrack::new(CtConfig {
            on_revoke: RevokeMode::Keep,
            ..CtConfig::with_capacity(1024)
        });
        assert_eq!(keep.judge(&s1, &tcp(OUT, 5000, B, 22, SYN), 0), Ok(()));
        assert_eq!(
            keep.judge(&s2, &tcp(B, 22, OUT, 5000, SYN | ACK), 1),
            Ok(())
        );
        assert_eq!(keep.judge(&s2, &tcp(OUT, 5000, B, 22, ACK), 1), Ok(()));
        let c = entry(&keep, &tcp(OUT, 5000, B, 22, ACK)).expect("tracked");
        assert_eq!(c & REVOKED, 0);
    }

    #[test]
    fn icmp_errors_related_or_not() {
        let m = model(vec![cidr_rule(
            Proto::Icmp,
            Ports::Icmp {
                ty: Some(11),
                code: None,
            },
            "0.0.0.0/0",
        )]);
        let snap = compile(&m, 1);
        let ct = Conntrack::new(CtConfig::with_capacity(1024));
        let flow = udp(B, 4000, OUT, 53);
        assert_eq!(ct.judge(&snap, &flow, 0), Ok(()));
        let err = |ty: u8, inner: FlowKey| Packet {
            key: FlowKey {
                src: OUT.into(),
                dst: B.into(),
                proto: proto::ICMP,
                sport: 0,
                dport: 0,
            },
            l4: L4::Icmp {
                ty,
                code: 3,
                kind: IcmpKind::Error { inner },
            },
            frag: Frag::None,
        };
        // Port unreachable about B's flow: related.
        assert_eq!(ct.judge(&snap, &err(3, flow.key), 1), Ok(()));
        // The same error forged by instance A (not the flow's peer): unrelated.
        let forged = Packet {
            key: FlowKey {
                src: A.into(),
                ..err(3, flow.key).key
            },
            ..err(3, flow.key)
        };
        assert_eq!(
            ct.judge(&snap, &forged, 1),
            Err(DropReason::UnrelatedIcmpError)
        );
        // An error quoting the flow backwards (a datagram B never sent): unrelated.
        let backwards = FlowKey {
            src: flow.key.dst,
            dst: flow.key.src,
            sport: flow.key.dport,
            dport: flow.key.sport,
            ..flow.key
        };
        assert_eq!(
            ct.judge(&snap, &err(3, backwards), 1),
            Err(DropReason::UnrelatedIcmpError)
        );
        // About some other flow: unrelated.
        let other = udp(B, 4001, OUT, 53).key;
        assert_eq!(
            ct.judge(&snap, &err(3, other), 1),
            Err(DropReason::UnrelatedIcmpError)
        );
        // Unrelated but type 11 is allowed by rule.
        assert_eq!(ct.judge(&snap, &err(11, other), 1), Ok(()));
        // Errors never create entries.
        assert_eq!(ct.len(), 1);
        // After the flow times out the error is unrelated.
        assert_eq!(
            ct.judge(&snap, &err(3, flow.key), 31),
            Err(DropReason::UnrelatedIcmpError)
        );
    }

    #[test]
    fn fragments_follow_their_first() {
        let m = model(vec![cidr_rule(
            Proto::Udp,
            Ports::Range(9000, 9000),
            "0.0.0.0/0",
        )]);
        let snap = compile(&m, 1);
        let ct = Conntrack::new(CtConfig::with_capacity(1024));
        let later = |id: u16| Packet {
            key: FlowKey {
                src: OUT.into(),
                dst: B.into(),
                proto: proto::UDP,
                sport: 0,
                dport: 0,
            },
            l4: L4::Other,
            frag: Frag::Later { id },
        };
        assert_eq!(
            ct.judge(&snap, &later(5), 0),
            Err(DropReason::UnmatchedFragment)
        );
        let mut first = udp(OUT, 1234, B, 9000);
        first.frag = Frag::First { id: 5 };
        assert_eq!(ct.judge(&snap, &first, 0), Ok(()));
        assert_eq!(ct.len(), 2, "flow + fragment train");
        assert_eq!(ct.judge(&snap, &later(5), 29), Ok(()));
        assert_eq!(
            ct.judge(&snap, &later(6), 1),
            Err(DropReason::UnmatchedFragment)
        );
        assert_eq!(
            ct.judge(&snap, &later(5), 30),
            Err(DropReason::UnmatchedFragment)
        );
        // A denied first fragment opens no train.
        let mut denied = udp(OUT, 1234, B, 9001);
        denied.frag = Frag::First { id: 7 };
        assert_eq!(ct.judge(&snap, &denied, 0), Err(DropReason::NoRule));
        assert_eq!(
            ct.judge(&snap, &later(7), 0),
            Err(DropReason::UnmatchedFragment)
        );
    }

    #[test]
    fn full_table_drops_and_reclaims_expired() {
        let snap = compile(&model(vec![]), 1);
        let cfg = CtConfig {
            capacity: 8,
            per_instance_quota: 100,
            ..CtConfig::with_capacity(8)
        };
        let ct = Conntrack::new(cfg);
        for p in 0..8 {
            assert_eq!(ct.judge(&snap, &udp(B, 1000 + p, OUT, 53), 0), Ok(()));
        }
        assert_eq!(
            ct.judge(&snap, &udp(B, 2000, OUT, 53), 0),
            Err(DropReason::ConntrackFull)
        );
        assert_eq!(ct.len(), 8);
        // Tracked flows still pass.
        assert_eq!(ct.judge(&snap, &udp(OUT, 53, B, 1003), 1), Ok(()));
        // After expiry the sweep frees them.
        assert_eq!(ct.sweep(31), 7);
        assert_eq!(ct.len(), 1);
        assert_eq!(ct.count_by_scan(), 1);
        assert_eq!(ct.judge(&snap, &udp(B, 2000, OUT, 53), 31), Ok(()));
    }

    #[test]
    fn full_table_reclaims_expired_in_window_on_insert() {
        let snap = compile(&model(vec![]), 1);
        let ct = Conntrack::new(CtConfig {
            capacity: 4,
            per_instance_quota: 100,
            ..CtConfig::with_capacity(4)
        });
        // Fill with flows that all expire at 30; the table has one page of 128
        // slots in 16 buckets.
        for p in 0..4 {
            assert_eq!(ct.judge(&snap, &udp(B, 1000 + p, OUT, 53), 0), Ok(()));
        }
        // Later, inserting reclaims expired entries in its buckets.
        let mut ok = 0;
        for p in 0..64 {
            if ct.judge(&snap, &udp(B, 3000 + p, OUT, 53), 100).is_ok() {
                ok += 1;
            }
        }
        assert!(ok >= 1, "no insert reclaimed an expired entry");
        assert!(ct.len() <= 4);
    }

    #[test]
    fn fills_to_capacity_without_bucket_overflow() {
        let snap = compile(&model(vec![]), 1);
        let cap = 1 << 18;
        let ct = Conntrack::new(CtConfig {
            capacity: cap,
            per_instance_quota: cap as u32,
            ..CtConfig::with_capacity(cap)
        });
        for i in 0..cap {
            let p = udp(B, (i & 0xffff) as u16, [10, 0, (i >> 16) as u8, 1], 53);
            assert_eq!(ct.judge(&snap, &p, 0), Ok(()), "flow {i}");
        }
        assert_eq!(ct.len(), cap);
        assert_eq!(
            ct.judge(&snap, &udp(B, 1, [10, 1, 0, 1], 53), 0),
            Err(DropReason::ConntrackFull)
        );
        // All still found.
        for i in (0..cap).step_by(97) {
            let p = udp([10, 0, (i >> 16) as u8, 1], 53, B, (i & 0xffff) as u16);
            assert_eq!(ct.judge(&snap, &p, 1), Ok(()), "reply {i}");
        }
    }

    #[test]
    fn bucket_addrs_cover_the_slot_of_the_entry_both_ways() {
        let snap = compile(&ssh_model(), 1);
        let ct = Conntrack::new(CtConfig::with_capacity(1 << 12));
        let (base, len) = ct.table_region();
        for i in 0..500u16 {
            let p = udp(B, 4000 + i, OUT, 53);
            ct.judge(&snap, &p, 0).expect("egress");
            let (k, _) = flow_key(&p.key);
            let (idx, _, _) = ct.find(k).expect("inserted");
            let at = &ct.slots[idx] as *const Slot as usize;
            let mut reply = p;
            reply.key = p.key.reversed();
            for q in [p, reply] {
                let b = ct.bucket_addrs(&q);
                assert!(
                    b.iter()
                        .all(|a| *a >= base && a + BUCKET_BYTES <= base + len)
                );
                assert!(b.iter().all(|a| a % 64 == 0), "bucket not line-aligned");
                assert!(
                    b.iter().any(|a| (*a..a + BUCKET_BYTES).contains(&at)),
                    "flow {i}: slot {at:#x} outside buckets {b:x?}"
                );
            }
        }
    }

    #[test]
    fn judge_burst_equals_judging_one_by_one() {
        let snap = compile(&ssh_model(), 1);
        let a = Conntrack::new(CtConfig::with_capacity(1024));
        let b = Conntrack::new(CtConfig::with_capacity(1024));
        let pkts: Vec<Packet> = (0..40u16)
            .map(|i| match i % 4 {
                0 => tcp(OUT, 5000 + i, B, 22, SYN),
                1 => tcp(B, 22, OUT, 5000 + i - 1, SYN | ACK),
                2 => tcp(OUT, 5000 + i, B, 23, SYN),
                _ => udp(B, 4000 + i, OUT, 53),
            })
            .collect();
        let mut out = vec![Ok(()); pkts.len()];
        a.judge_burst(&snap, &pkts, 0, &mut out);
        let one: Vec<_> = pkts.iter().map(|p| b.judge(&snap, p, 0)).collect();
        assert_eq!(out, one);
        assert_eq!(a.len(), b.len());
        assert!(out.contains(&Err(DropReason::NoRule)));
    }

    #[test]
    fn per_instance_quota() {
        let snap = compile(&model(vec![]), 1);
        let ct = Conntrack::new(CtConfig {
            capacity: 1024,
            per_instance_quota: 3,
            ..CtConfig::with_capacity(1024)
        });
        for p in 0..3 {
            assert_eq!(ct.judge(&snap, &udp(B, 1000 + p, OUT, 53), 0), Ok(()));
        }
        assert_eq!(
            ct.judge(&snap, &udp(B, 1003, OUT, 53), 0),
            Err(DropReason::ConntrackQuota)
        );
        // Another instance is not affected.
        assert_eq!(ct.judge(&snap, &udp(A, 1003, OUT, 53), 0), Ok(()));
        assert_eq!(ct.charged_to(B.into()), 3);
        assert_eq!(ct.charged_to(A.into()), 1);
        // Expiry returns quota.
        assert_eq!(ct.sweep(30), 4);
        assert_eq!(ct.charged_to(B.into()), 0);
        assert_eq!(ct.judge(&snap, &udp(B, 1003, OUT, 53), 30), Ok(()));
    }

    #[test]
    fn default_config_fits_a_million_flows_in_256_mb() {
        let cfg = CtConfig::default();
        assert_eq!(cfg.capacity, 1 << 20);
        assert_eq!(cfg.per_instance_quota, 65536);
        assert_eq!(cfg.on_revoke, RevokeMode::Revalidate);
        assert_eq!(std::mem::size_of::<Slot>(), 32);
        let ct = Conntrack::new(cfg);
        assert!(ct.memory_bytes() <= 256 << 20, "{}", ct.memory_bytes());
        assert_eq!(ct.memory_bytes() / (1 << 20), 64);
        fn check<T: Send + Sync>() {}
        check::<Conntrack>();
    }

    /// Publish `k` in slot `idx` as an insert would (test helper).
    fn force_publish(ct: &Conntrack, idx: usize, k: Key) -> u64 {
        let slot = &ct.slots[idx];
        slot.k0.store(k.k0, Ordering::Relaxed);
        slot.k1.store(k.k1, Ordering::Relaxed);
        slot.expires.store(100, Ordering::Relaxed);
        let c = (version(slot.ctl.load(Ordering::Relaxed)) + 1) << VERSION_SHIFT | OCC | ORIG_A;
        slot.ctl.store(c, Ordering::Release);
        ct.count.fetch_add(1, Ordering::Relaxed);
        c
    }

    /// Two inserters of the same key in different slots: whichever runs the
    /// dedupe, only the entry at the lower probe position survives.
    #[test]
    fn dedupe_keeps_the_lowest_position_from_either_side() {
        let ct = Conntrack::new(CtConfig::with_capacity(64));
        let (k, _) = flow_key(&udp(B, 1, OUT, 53).key);
        let b = ct.buckets(k);
        let (lo, hi) = (Conntrack::slot_at(b, 3), Conntrack::slot_at(b, 9));
        // The lower one dedupes: it removes the higher one.
        let _ = force_publish(&ct, hi, k);
        let c_lo = force_publish(&ct, lo, k);
        assert_eq!(ct.dedupe(k, b, 3, lo, c_lo), lo);
        assert_eq!(ct.len(), 1);
        assert_eq!(ct.find(k).map(|(idx, _, _)| idx), Some(lo));
        assert_eq!(ct.count_by_scan(), 1);
        // The higher one dedupes: it removes itself.
        let c_hi = force_publish(&ct, hi, k);
        assert_eq!(ct.dedupe(k, b, 9, hi, c_hi), lo);
        assert_eq!(ct.len(), 1);
        assert_eq!(ct.count_by_scan(), 1);
        assert_eq!(ct.find(k).map(|(idx, _, _)| idx), Some(lo));
    }

    /// Several threads insert, look up and delete (by expiry) overlapping flows,
    /// both directions on different threads; afterwards every flow is present
    /// exactly once and the counters agree with a scan.
    #[test]
    fn concurrent_stress_keeps_counts_consistent() {
        let snap = Arc::new(compile(&model(vec![]), 1));
        let ct = Arc::new(Conntrack::new(CtConfig {
            capacity: 1 << 15,
            per_instance_quota: 1 << 15,
            ..CtConfig::with_capacity(1 << 15)
        }));
        const FLOWS: u16 = 4000;
        let barrier = Arc::new(std::sync::Barrier::new(4));
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let (snap, ct, barrier) = (snap.clone(), ct.clone(), barrier.clone());
                std::thread::spawn(move || {
                    for round in 0..24u16 {
                        // Start every round together so that threads race on the
                        // same flows.
                        barrier.wait();
                        // Every round, all flows of the previous one have expired
                        // (UDP 30 s): they are removed on sight and re-created
                        // concurrently.
                        let now = u32::from(round) * 40;
                        for f in 0..FLOWS {
                            // Threads 0/1 send B → OUT, threads 2/3 the replies; every
                            // flow is created by whichever thread gets there first.
                            let p = if t < 2 {
                                udp(B, f, OUT, 53)
                            } else {
                                udp(OUT, 53, B, f)
                            };
                            let r = ct.judge(&snap, &p, now);
                            if t < 2 {
                                assert_eq!(r, Ok(()), "egress always passes");
                            }
                            // Short-lived flows on another range, to churn slots.
                            let churn = udp(A, 10_000 + f, OUT, 1000 + t);
                            assert_eq!(ct.judge(&snap, &churn, now), Ok(()));
                        }
                    }
                })
            })
            .collect();
        for th in threads {
            th.join().unwrap();
        }
        // Each B flow exists exactly once.
        for f in 0..FLOWS {
            let (k, _) = flow_key(&udp(B, f, OUT, 53).key);
            let b = ct.buckets(k);
            let n = (0..PROBE)
                .filter(|&i| {
                    Conntrack::read_key(&ct.slots[Conntrack::slot_at(b, i)], 0)
                        .is_some_and(|(sk, _)| sk == k)
                })
                .count();
            assert_eq!(n, 1, "flow {f}");
        }
        assert_eq!(ct.len(), ct.count_by_scan());
        assert_eq!(
            ct.charged_to(B.into()) as usize + ct.charged_to(A.into()) as usize,
            ct.len()
        );
        // Everything expires.
        ct.sweep(10_000);
        assert_eq!(ct.len(), 0);
        assert_eq!(ct.count_by_scan(), 0);
        assert_eq!(ct.charged_to(B.into()), 0);
        assert_eq!(ct.charged_to(A.into()), 0);
    }
}
