//! The lock-free table: slots and their seqlock versioning, two-choice buckets,
//! insert / lookup / removal, sweeping, and the per-instance quota counters. What a
//! packet creates or matches is decided in [`super::policy`]; the design is
//! described in the [module docs](super).

use std::hash::BuildHasher;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering, fence};

use super::family::Family;
use super::policy::CtConfig;
use crate::{DropReason, FlowKey, Frag, IcmpKind, L4, Packet};

/// Slots per bucket.
pub const BUCKET: usize = 8;
/// Bytes of one bucket of the IPv4 table (four cache lines).
pub const BUCKET_BYTES: usize = BUCKET * std::mem::size_of::<Slot<Ipv4Addr>>();
/// Bytes of one bucket of the IPv6 table (eight cache lines).
pub const BUCKET_BYTES6: usize = BUCKET * std::mem::size_of::<Slot<Ipv6Addr>>();
/// Slots a key may occupy: its two buckets.
pub const PROBE: usize = 2 * BUCKET;
/// Number of per-instance quota counters.
pub const QUOTA_SLOTS: usize = 1 << 16;

// Control-word flags (bits 32..48 of `ctl`).
pub(super) const BUSY: u64 = 1 << 32;
pub(super) const OCC: u64 = 1 << 33;
pub(super) const ORIG_A: u64 = 1 << 34;
pub(super) const SEEN_REPLY: u64 = 1 << 35;
pub(super) const CHARGED: u64 = 1 << 36;
pub(super) const TCP_SHIFT: u32 = 37;
pub(super) const TCP_MASK: u64 = 0b11 << TCP_SHIFT;
/// Revalidation found the flow no longer allowed: its packets are dropped.
pub(super) const REVOKED: u64 = 1 << 39;
pub(super) const VERSION_SHIFT: u32 = 48;
pub(super) const GEN_MASK: u64 = 0xffff_ffff;

pub(super) const KIND_FLOW: u64 = 0;
pub(super) const KIND_FRAG: u64 = 1;

#[inline]
pub(super) fn version(c: u64) -> u64 {
    c >> VERSION_SHIFT
}

/// One table slot: 32 bytes (IPv4, two per cache line) or 64 (IPv6, one).
#[doc(hidden)]
#[repr(C, align(32))]
pub struct Slot<F: Family> {
    /// `version:16 | flags:16 | generation:32`.
    pub(super) ctl: AtomicU64,
    /// The key words ([`super::family`]): IPv4 flow `[ip_a << 32 | ip_b,
    /// port_a << 48 | port_b << 32 | proto << 8 | KIND_FLOW]`, train `[src << 32
    /// | dst, ip id << 48 | proto << 8 | KIND_FRAG]`.
    pub(super) k: F::Atoms,
    /// Expiry time (`now` units); alive while `now < expires`.
    pub(super) expires: AtomicU32,
    /// Immutable: `quota slot << 16 | icmp type << 8 | icmp code`.
    pub(super) aux: AtomicU32,
}

impl<F: Family> Slot<F> {
    pub(super) fn empty() -> Slot<F> {
        Slot {
            ctl: AtomicU64::new(0),
            k: F::empty_atoms(),
            expires: AtomicU32::new(0),
            aux: AtomicU32::new(0),
        }
    }
}

/// The slot array, page-aligned so that a key's two buckets share one page (one
/// TLB entry, one DRAM page).
pub(super) struct Slots<F: Family>(Box<[F::Page]>);

impl<F: Family> Slots<F> {
    pub(super) fn new(n: usize) -> Slots<F> {
        let pages = n.div_ceil(F::PAGE_SLOTS);
        Slots((0..pages).map(|_| F::new_page()).collect())
    }

    #[inline]
    pub(super) fn len(&self) -> usize {
        self.0.len() * F::PAGE_SLOTS
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = &Slot<F>> {
        self.0.iter().flat_map(|p| F::page_slots(p).iter())
    }
}

impl<F: Family> std::ops::Index<usize> for Slots<F> {
    type Output = Slot<F>;

    #[inline]
    fn index(&self, idx: usize) -> &Slot<F> {
        F::slot_in(&self.0[idx / F::PAGE_SLOTS], idx)
    }
}

/// Canonical key of a flow and whether `key.src` is endpoint `a`.
#[inline(always)]
pub(super) fn flow_key<F: Family>(key: &FlowKey<F>) -> (F::Key, bool) {
    F::flow_key(key)
}

/// Key of a fragment train.
#[inline(always)]
pub(super) fn frag_key<F: Family>(key: &FlowKey<F>, id: u32) -> F::Key {
    F::frag_key(key, id)
}

/// The original-direction flow key of a canonical flow key.
pub(super) fn original<F: Family>(k: F::Key, orig_a: bool) -> FlowKey<F> {
    F::original(k, orig_a)
}

/// One family's table (see the [module docs](super)); [`Conntrack`] holds one
/// per family, sharing the per-instance quota counters.
#[doc(hidden)]
pub struct Table<F: Family> {
    /// The configuration, with `capacity` this table's own.
    pub(super) cfg: CtConfig,
    pub(super) slots: Slots<F>,
    pub(super) mask: usize,
    pub(super) quota: Arc<[AtomicU32]>,
    pub(super) count: AtomicUsize,
    pub(super) seed: u64,
}

impl<F: Family> Table<F> {
    /// A table for `cfg.capacity` entries (preallocated and prefaulted:
    /// `next_pow2(2 × capacity)` slots), charging `quota`.
    fn new(cfg: CtConfig, quota: Arc<[AtomicU32]>) -> Self {
        let n = cfg
            .capacity
            .saturating_mul(2)
            .next_power_of_two()
            .max(F::PAGE_SLOTS);
        let slots = Slots::<F>::new(n);
        // The allocator may hand out lazily mapped zero pages: touch every page now
        // so that the datapath never takes a page fault on a first insert (and the
        // resident size is what `memory_bytes` says from the start).
        for page in slots.0.iter() {
            F::page_slots(page)[0].ctl.store(0, Ordering::Relaxed);
        }
        let seed = std::collections::hash_map::RandomState::new().hash_one(0x5eed_u64) | 1;
        Table {
            cfg,
            slots,
            mask: n - 1,
            quota,
            count: AtomicUsize::new(0),
            seed,
        }
    }

    /// Number of entries, expired ones included until they are reclaimed.
    pub(super) fn len(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    /// Bytes of the slot array.
    fn slot_bytes(&self) -> usize {
        self.slots.len() * std::mem::size_of::<Slot<F>>()
    }

    /// Address and length of the slot array.
    fn region(&self) -> (usize, usize) {
        (self.slots.0.as_ptr() as usize, self.slot_bytes())
    }

    /// See [`Conntrack::sweep`].
    fn sweep(&self, now: u32) -> usize {
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

    /// See [`Conntrack::prefetch`].
    #[inline]
    fn prefetch(&self, pkt: &Packet<F>) {
        let key = match pkt.l4 {
            L4::Icmp {
                kind: IcmpKind::Error { inner },
                ..
            } => inner,
            _ => pkt.key,
        };
        let b = self.buckets(flow_key(&key).0);
        let mut sink = 0u64;
        // One load per cache line of the bucket.
        let step = (64 / std::mem::size_of::<Slot<F>>()).max(1);
        for base in b {
            for j in (0..BUCKET).step_by(step) {
                sink ^= F::first_word(&self.slots[base + j].k);
            }
        }
        std::hint::black_box(sink);
    }

    /// See [`Conntrack::bucket_addrs`].
    #[inline]
    fn bucket_addrs(&self, pkt: &Packet<F>) -> [usize; 2] {
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
            .map(|base| &self.slots[base] as *const Slot<F> as usize)
    }

    // --- internals ---------------------------------------------------------

    /// First slot of the two candidate buckets of `k`: two different buckets of
    /// the same page (a random access costs one TLB entry and one DRAM page; the
    /// two choices balance load within the page, and pages themselves are loaded
    /// evenly by the hash: a page of 128 slots holds 64 entries on average at 50%
    /// load).
    #[inline]
    pub(super) fn buckets(&self, k: F::Key) -> [usize; 2] {
        let page_buckets = F::PAGE_SLOTS / BUCKET;
        let h = self.hash(k);
        let nb = (self.mask + 1) / BUCKET;
        let b1 = h & (nb - 1);
        let off = 1 + (h >> 32) % (page_buckets - 1);
        let b2 = (b1 & !(page_buckets - 1)) | ((b1 + off) & (page_buckets - 1));
        [b1 * BUCKET, b2 * BUCKET]
    }

    /// Slot index of probe position `p` (0..PROBE) of a key with buckets `b`.
    #[inline]
    pub(super) fn slot_at(b: [usize; 2], p: usize) -> usize {
        b[p / BUCKET] + p % BUCKET
    }

    #[inline]
    pub(super) fn hash(&self, k: F::Key) -> usize {
        F::key_hash(&k, self.seed)
    }

    /// Wait (bounded) for a slot's BUSY to clear; returns its control word.
    #[inline]
    pub(super) fn settled_ctl(slot: &Slot<F>, spins: u32) -> u64 {
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
    pub(super) fn read_key(slot: &Slot<F>, spins: u32) -> Option<(F::Key, u64)> {
        let c1 = Self::settled_ctl(slot, spins);
        if c1 & (OCC | BUSY) != OCC {
            return None;
        }
        let k = F::load(&slot.k);
        fence(Ordering::Acquire);
        let c2 = slot.ctl.load(Ordering::Relaxed);
        if version(c2) != version(c1) || c2 & (OCC | BUSY) != OCC {
            return None;
        }
        Some((k, c2))
    }

    /// Find `k` in its window: `(slot index, probe position, control word)`.
    #[inline]
    pub(super) fn find(&self, k: F::Key) -> Option<(usize, usize, u64)> {
        let b = self.buckets(k);
        let w0 = F::key_word0(&k);
        for i in 0..PROBE {
            let idx = Self::slot_at(b, i);
            let slot = &self.slots[idx];
            // Cheap pre-check before the seqlock read.
            if F::first_word(&slot.k) != w0 {
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

    /// Whether a live (not expired) flow entry exists for `key`, in either
    /// orientation. Read-only (an expired entry is left for the sweep); not
    /// for the datapath: `sgswitch trace` uses it to say whether a frame met
    /// a tracked flow.
    fn tracks(&self, key: &FlowKey<F>, now: u32) -> bool {
        let (k, _) = flow_key(key);
        self.find(k)
            .is_some_and(|(idx, _, _)| now < self.slots[idx].expires.load(Ordering::Relaxed))
    }

    /// Find `k` and check that it has not expired (removing it if it has).
    #[inline]
    pub(super) fn find_alive(&self, k: F::Key, now: u32) -> Option<(usize, u64)> {
        let (idx, _, c) = self.find(k)?;
        if now >= self.slots[idx].expires.load(Ordering::Relaxed) {
            self.remove(idx, c, Some(now));
            return None;
        }
        Some((idx, c))
    }

    /// Change the control word of `idx` from `c` to `f(c)` by CAS, retrying while
    /// only other state (TCP state, reply flag) changes concurrently. `None` if the
    /// entry was removed or reused meanwhile, or another thread revalidated it
    /// first (its decision stands; this packet was judged against the entry seen).
    pub(super) fn update_ctl(&self, idx: usize, mut c: u64, f: impl Fn(u64) -> u64) -> Option<u64> {
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
    pub(super) fn rearm(&self, idx: usize, exp: u32) {
        let slot = &self.slots[idx];
        if slot.expires.load(Ordering::Relaxed) != exp {
            slot.expires.store(exp, Ordering::Relaxed);
        }
    }

    /// Insert a new entry; returns its slot index (or the index of an equal entry
    /// inserted concurrently by another thread).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn insert(
        &self,
        k: F::Key,
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
        // Probe positions in order, or the second bucket first: position
        // `p ^ BUCKET` (PROBE is two buckets), computed rather than built as
        // an array (cheaper, and the same code for both families).
        const _: () = assert!(PROBE == 2 * BUCKET && BUCKET.is_power_of_two());
        let flip = if load(b[1]) < load(b[0]) { BUCKET } else { 0 };
        for attempt in 0..2 {
            for i in (0..PROBE).map(|p| p ^ flip) {
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
                F::store(&slot.k, k);
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
    pub(super) fn dedupe(
        &self,
        k: F::Key,
        b: [usize; 2],
        mine: usize,
        my_idx: usize,
        my_ctl: u64,
    ) -> usize {
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
    pub(super) fn reclaim_window(&self, b: [usize; 2], now: u32) {
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
    pub(super) fn remove(&self, idx: usize, mut c: u64, expired_at: Option<u32>) -> bool {
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

    /// Occupied slots, by scanning.
    fn count_by_scan(&self) -> usize {
        self.slots
            .iter()
            .filter(|s| s.ctl.load(Ordering::Acquire) & OCC != 0)
            .count()
    }
}

/// The quota counter of the instance with IPv4 address `ip` (an instance's
/// IPv6 entries are charged to the counter of its IPv4 address).
#[inline]
pub(super) fn quota_slot(ip: Ipv4Addr) -> usize {
    let h = u64::from(u32::from(ip)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (h >> 32) as usize & (QUOTA_SLOTS - 1)
}

/// The shared connection table: one lock-free [`Table`] per address family
/// (see [`super::family`]) and the per-instance quota counters they share (an
/// instance's quota counts its flows of both families). `Sync`: share
/// `&Conntrack` between worker threads.
pub struct Conntrack {
    pub(super) v4: Table<Ipv4Addr>,
    pub(super) v6: Table<Ipv6Addr>,
}

impl std::fmt::Debug for Conntrack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conntrack")
            .field("cfg", &self.v4.cfg)
            .field("slots", &self.v4.slots.len())
            .field("slots6", &self.v6.slots.len())
            .field("len", &self.len())
            .finish()
    }
}

impl Conntrack {
    /// Tables for `cfg.capacity` IPv4 and `cfg.capacity6` IPv6 entries
    /// (preallocated and prefaulted: `next_pow2(2 × capacity)` slots of 32
    /// bytes, and `next_pow2(2 × capacity6)` of 64).
    pub fn new(cfg: CtConfig) -> Self {
        let quota: Arc<[AtomicU32]> = (0..QUOTA_SLOTS).map(|_| AtomicU32::new(0)).collect();
        let cfg6 = CtConfig {
            capacity: cfg.capacity6,
            ..cfg
        };
        Conntrack {
            v4: Table::new(cfg, quota.clone()),
            v6: Table::new(cfg6, quota),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &CtConfig {
        &self.v4.cfg
    }

    /// Number of entries (flows and fragment trains of both families), expired
    /// ones included until they are reclaimed.
    pub fn len(&self) -> usize {
        self.v4.len() + self.v6.len()
    }

    /// Number of IPv6 entries (included in [`Conntrack::len`]).
    pub fn len6(&self) -> usize {
        self.v6.len()
    }

    /// Whether the table holds no entries.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes held by the tables (all preallocated).
    pub fn memory_bytes(&self) -> usize {
        std::mem::size_of::<Self>()
            + self.v4.slot_bytes()
            + self.v6.slot_bytes()
            + self.v4.quota.len() * std::mem::size_of::<AtomicU32>()
    }

    /// Address and length in bytes of the IPv4 slot array (page-aligned,
    /// allocated and prefaulted by [`Conntrack::new`]), for a caller that may
    /// advise the kernel about it: backing it with huge pages removes the TLB
    /// miss of a random lookup (see `switch::sys::advise_hugepages`). Reading
    /// these numbers changes nothing. [`Conntrack::table_region6`] is the IPv6
    /// one.
    pub fn table_region(&self) -> (usize, usize) {
        self.v4.region()
    }

    /// [`Conntrack::table_region`] of the IPv6 table.
    pub fn table_region6(&self) -> (usize, usize) {
        self.v6.region()
    }

    /// Remove every expired entry (both families); returns how many were
    /// removed. Meant for the management thread, periodically (entries are also
    /// reclaimed on sight).
    pub fn sweep(&self, now: u32) -> usize {
        self.v4.sweep(now) + self.v6.sweep(now)
    }

    /// Touch the two buckets `pkt` will look up, without waiting for them: the
    /// loads of several packets overlap, so a burst pays about one memory latency
    /// instead of one per packet. A hint only: no effect on any verdict.
    #[inline]
    pub fn prefetch<F: Family>(&self, pkt: &Packet<F>) {
        F::table(self).prefetch(pkt)
    }

    /// Addresses of the two buckets (each [`BUCKET_BYTES`] long for IPv4,
    /// [`BUCKET_BYTES6`] for IPv6, cache-line aligned) that judging `pkt` will
    /// look up (for an ICMP error, those of the flow it is about). For a caller
    /// that issues real prefetch instructions (the switch's staged burst:
    /// `switch::sys::prefetch`); this crate has no `unsafe`, so
    /// [`Conntrack::prefetch`] can only touch the lines with loads. Computing
    /// them reads nothing from the table.
    #[inline]
    pub fn bucket_addrs<F: Family>(&self, pkt: &Packet<F>) -> [usize; 2] {
        F::table(self).bucket_addrs(pkt)
    }

    /// Whether a live (not expired) flow entry exists for `key`, in either
    /// orientation. Read-only (an expired entry is left for the sweep); not
    /// for the datapath: `sgswitch trace` uses it to say whether a frame met
    /// a tracked flow.
    pub fn tracks<F: Family>(&self, key: &FlowKey<F>, now: u32) -> bool {
        F::table(self).tracks(key, now)
    }

    /// Entries charged to the quota slot of the instance with IPv4 address
    /// `ip`, IPv6 entries included (for tests and stats).
    pub fn charged_to(&self, ip: Ipv4Addr) -> u32 {
        self.v4.quota[quota_slot(ip)].load(Ordering::Relaxed)
    }

    /// Count occupied slots by scanning (for tests: must equal [`Conntrack::len`]
    /// when no thread is writing).
    pub fn count_by_scan(&self) -> usize {
        self.v4.count_by_scan() + self.v6.count_by_scan()
    }
}
