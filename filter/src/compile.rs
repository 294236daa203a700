//! The compiler: [`Model`] → immutable [`Snapshot`], and the classifier
//! [`Snapshot::allows`].
//!
//! # Contract
//!
//! A [`Snapshot`] is an immutable, `Send + Sync` picture of the model at one
//! `generation`. The control plane makes a new one after every edit — with
//! [`Compiler::apply`], which recompiles only what the edit touched and shares the
//! rest with the previous snapshot — and publishes it with one atomic pointer swap
//! (`arc-swap`); datapath cores load it once per burst.
//! [`Snapshot::allows`] answers "do the ingress rules of the destination instance
//! (`pkt.key.dst`) allow this packet from `pkt.key.src`?" — it knows nothing about
//! connection state (that is [`crate::conntrack`]). It takes no lock and allocates
//! nothing. [`Snapshot::admitting_rule`] answers the same question naming the
//! rule ([`RuleSlot`]: the first matching rule in `describe-group` order);
//! connection tracking uses it wherever it asks the rules, so per-rule counters
//! cost one classification per new flow (module [`attrib`]).
//!
//! Matching semantics (the same as [`crate::reference`], which states them
//! naively):
//! * `Proto::All` rules match every IP protocol (and every port / ICMP type);
//! * `tcp`/`udp` rules match `key.proto` 6/17 with `key.dport` in the range;
//! * `icmp` rules match `key.proto == 1` packets whose [`L4::Icmp`] type/code match,
//!   `None` being a wildcard (errors and other kinds match on their own type/code);
//! * non-first fragments ([`Frag::Later`]) never match a rule (conntrack handles
//!   them by fragment train);
//! * a CIDR source matches `key.src` in the prefix; a group source matches when
//!   `key.src` is the address of an instance that is a member of that group (the
//!   switch has verified instance sources and never lets the uplink claim an
//!   instance address, so address → instance is trustworthy).
//! * IPv6 ([`Snapshot::admitting_rule6`], [`Snapshot::egress_allows6`]): the
//!   same, for the rules that apply to IPv6 ([`Rule::applies_v6`]: IPv6
//!   CIDRs, `icmpv6` matching `key.proto == 58`, `all`/`tcp`/`udp` from a
//!   group, whose members match by their IPv6 address); IPv4 lookups see
//!   only the rules that apply to IPv4, so `0.0.0.0/0` never opens IPv6 and
//!   `::/0` never opens IPv4. Each group's IPv6 rules have their own table
//!   ([`v6`]) in the same slot as its IPv4 one, compiled and shared the same
//!   way.
//!
//! # Structure
//!
//! * **Group tables.** Every security group with at least one rule is compiled
//!   once, on its own, and shared by all its members (and by later snapshots
//!   until its rules change): the
//!   snapshot's size follows the number of rules, not the number of distinct group
//!   sets × their rules. A destination is allowed when *any* of its groups allows
//!   (the union of its groups' rules, as EC2 states it).
//! * **Group lists.** Every instance has the short list of its groups' table
//!   indices (groups without rules are left out; group sets resolving to the same
//!   tables share one list), stored in the address-index entry as an
//!   `(offset, length)` into one flat array.
//! * **Port tables.** A group table has one table per protocol (TCP, UDP, ICMP):
//!   the *elementary intervals* of the 16-bit key space (the port; for ICMP
//!   `type << 8 | code`, so a type-only rule is the range `[t<<8, t<<8|255]`),
//!   sorted, each `(start, source set)` side by side; adjacent intervals with the
//!   same set are coalesced. `Proto::All` rules are folded into all three tables as
//!   the range `0..=65535`, and form the table's `other` set for other IP
//!   protocols. Lookup: one binary search; tables of more than 32 intervals add a
//!   257-entry index on the key's high byte so the search stays within one
//!   256-key block (a cache line or two, whatever the rule count).
//! * **Source sets**, deduplicated within each group table (each table owns its
//!   sets, so it can be shared unchanged; the price, measured with
//!   `cargo bench -p bench --bench filter -- allows`, is a few ns per verdict
//!   against sets shared snapshot-wide): the CIDR sources merged
//!   into disjoint sorted address ranges (binary search), plus a bitset over the
//!   *referenced groups* (groups named as a source by some rule).
//! * **Membership bits.** Every instance carries the bitset of referenced groups it
//!   belongs to, so a group-source match is a bitset AND (one word up to 64
//!   referenced groups). The source's instance is looked up at most once per
//!   packet, whatever the number of destination groups.
//! * **Address index.** Open addressing, power-of-two, ≤ 50% load: IP →
//!   (instance, group list) in one 16-byte entry.
//!
//! The layout is chosen for cache lines: per destination group a verdict touches
//! about five lines (group table, block index, intervals, source set, ranges; two
//! more for group sources), after the address entry and the list; the lookup
//! stops at the first group that allows. Because the tables of all groups
//! together stay small (1.2 MiB for the bench lab of 50 groups × 1000 rules, where
//! merged per-group-set tables took 55 MiB), they stay in cache.
//!
//! Never the cross product of rules: a rule contributes its source to the intervals
//! its port range covers.
//!
//! # Complexity and memory
//!
//! Let `R` be the number of rules of one group, `G` the number of groups of the
//! destination instance, `W` the number of 64-bit words of a group bitset
//! (`ceil(referenced groups / 64)`), `T` the total number of rules in the model
//! and `N` the number of instances.
//!
//! * `allows`: one or two address-index probes (expected O(1)), then for each of
//!   at most `G` groups one binary search over the intervals of one 256-key block
//!   (at most `2R + 1`), one binary search over at most `R` ranges, and at most `W`
//!   word ANDs: `O(G · (log R + W))`, independent of the rule count in practice
//!   (the bench measures 10 → 1000 rules per group with `G` = 5; an instance is
//!   in a handful of groups).
//! * Memory: each port table has at most `2R + 1` intervals (8 bytes each) plus
//!   1 KiB of block index when it has more than 32; each group table is stored
//!   once, so the tables total `O(T)` entries (plus at most `3 KiB` per group of
//!   block index). Source sets are deduplicated; in the worst case (nested port
//!   ranges each with a different source) each interval has its own set of up to
//!   `R` ranges, so a group costs `O(R · (R + W))` words: with the default limit of
//!   100 rules per group, at most about `3 · 201 · 100 · 8` bytes ≈ 480 KB for a
//!   deliberately pathological group; typical rule sets (distinct port ranges,
//!   shared sources) cost `O(R + W)`. Plus `N · (W·8 + ~64)` bytes for instances
//!   and the address index, and 4 bytes per (distinct group list, group). Compile
//!   time is `O(T · (log R + active))` where `active` is the number of rules
//!   covering an interval.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use crate::model::{Change, Model, Owner, Ports, Proto, Rule, Source};
use crate::{DropReason, Frag, L4, Mac, Packet, Packet6, proto};

mod attrib;
mod v6;
use attrib::{RuleIndex, SCAN_MAX, SlotAlloc};
pub use attrib::{RuleLayout, RuleSlot};
use v6::Table6;

/// Index of an instance in a [`Snapshot`] (valid for that snapshot only).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InstIdx(pub u32);

impl InstIdx {
    /// As a slice index.
    #[inline]
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

/// An instance as the datapath sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapInstance {
    pub id: Arc<str>,
    pub owner: Arc<str>,
    pub mac: Mac,
    pub ip: Ipv4Addr,
    /// Its IPv6 address ([`Model::ip6_of`]), if instances are dual-stack.
    pub ip6: Option<Ipv6Addr>,
    /// This instance's group-table list: `lists[list.0..list.0 + list.1]`.
    list: (u32, u32),
    /// Its egress-table list: `elists[elist.0..elist.0 + elist.1]`.
    elist: (u32, u32),
    /// Some group of the instance has an egress rule for all protocols to
    /// `0.0.0.0/0` (every new group's default): IPv4 egress allows
    /// everything without a lookup.
    egress_open: bool,
    /// The same for IPv6 and `::/0` (the default's other half).
    egress_open6: bool,
}

/// One elementary interval: its first key and its source set (start and set side
/// by side, so a lookup touches one array).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
struct Iv {
    start: u16,
    set: u32,
}

/// One protocol's table: intervals sorted by start (the first starts at 0).
/// Tables with more than [`DIRECT_MAX`] intervals also have a 257-entry index
/// over the key's high byte (`top[b]` = number of starts below `b << 8`), so a
/// lookup searches only the intervals starting in one 256-key block: a cache line
/// or two instead of a binary search over the whole table.
#[derive(Clone, Debug, PartialEq, Eq)]
struct PortTable {
    ivs: Arc<[Iv]>,
    top: Arc<[u32]>,
}

/// Tables up to this many intervals are searched directly.
const DIRECT_MAX: usize = 32;

impl PortTable {
    fn new(ivs: Vec<Iv>) -> PortTable {
        let top: Arc<[u32]> = if ivs.len() > DIRECT_MAX {
            (0..=256u32)
                .map(|b| ivs.partition_point(|iv| u32::from(iv.start) < b << 8) as u32)
                .collect()
        } else {
            Arc::new([])
        };
        PortTable {
            ivs: ivs.into(),
            top,
        }
    }

    #[inline(always)]
    fn lookup(&self, key: u16) -> u32 {
        if self.top.is_empty() {
            // ivs[0].start == 0, so the partition point is >= 1.
            let i = self.ivs.partition_point(|iv| iv.start <= key);
            return self.ivs[i - 1].set;
        }
        let b = usize::from(key >> 8);
        let (lo, hi) = (self.top[b] as usize, self.top[b + 1] as usize);
        // The last start <= key: in this block, or else the last start before it
        // (lo >= 1 for b > 0 because ivs[0].start == 0; for b == 0, that interval
        // is in the block and starts <= key).
        let i = lo + self.ivs[lo..hi].partition_point(|iv| iv.start <= key);
        self.ivs[i - 1].set
    }
}

/// Port-table index of TCP in [`GroupTable::ports`].
const TCP_T: usize = 0;
/// Port-table index of UDP.
const UDP_T: usize = 1;
/// Port-table index of ICMP (key `type << 8 | code`).
const ICMP_T: usize = 2;

/// One security group's compiled ingress rules, shared by all its members and
/// by every snapshot until the group's rules change (its arrays are `Arc`s: a
/// copy of the table is a handful of reference counts, and a lookup reads it
/// inline from the snapshot's table array, no extra pointer). Its source sets
/// are its own (set ids index `sets`).
///
/// Layout: the source-set arrays first, then the TCP port table, so a TCP
/// verdict reads one cache line of the table (UDP and ICMP two).
#[derive(Clone, Debug, PartialEq, Eq)]
#[repr(C, align(64))]
struct GroupTable {
    sets: Arc<[SrcSet]>,
    /// Inclusive address ranges `(lo, hi)` of the source sets.
    ranges: Arc<[(u32, u32)]>,
    /// Indexed by [`TCP_T`], [`UDP_T`], [`ICMP_T`].
    ports: [PortTable; 3],
    /// `words` words of referenced-group bits per set that has groups.
    group_bits: Arc<[u64]>,
    words: usize,
    /// Source set for other IP protocols (`Proto::All` rules only).
    other: u32,
    /// Which rule (see [`attrib`]; inline: one dependent load less on a new
    /// flow's path).
    rules: RuleIndex,
}

/// A deduplicated source set of one group table: `ranges[r_off..r_off + r_len]`
/// and, if `g_off` is not `NO_GROUPS`, the table's `words` words of group bits at
/// `group_bits[g_off..]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct SrcSet {
    r_off: u32,
    r_len: u32,
    g_off: u32,
}

const NO_GROUPS: u32 = u32::MAX;
/// Set 0 is the empty set: matches nothing.
const EMPTY_SET: u32 = 0;
const NO_INST: u32 = u32::MAX;
/// The bit of a group that has none (matches nothing).
const NO_BIT: u32 = u32::MAX;
/// The table slot of a group without rules (in [`Compiler`]'s group sets).
const NO_SLOT: u32 = u32::MAX;

/// One address-index entry: address, instance and its group-table list in 16
/// bytes (one cache line answers "which instance, which groups").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C, align(16))]
struct IpSlot {
    ip: u32,
    inst: u32,
    /// `lists[list_off..list_off + list_len]`: the instance's group tables.
    list_off: u32,
    list_len: u32,
}

/// Open-addressing IP → (instance, group-table list) index, ≤ 50% load.
#[derive(Clone, Debug, PartialEq, Eq)]
struct IpIndex {
    slots: Arc<[IpSlot]>,
    mask: usize,
}

impl IpIndex {
    fn build(entries: &[(Ipv4Addr, (u32, u32))]) -> IpIndex {
        let size = (entries.len() * 2).next_power_of_two().max(8);
        let empty = IpSlot {
            ip: 0,
            inst: NO_INST,
            list_off: 0,
            list_len: 0,
        };
        let mut slots = vec![empty; size];
        let mask = size - 1;
        for (i, &(ip, (list_off, list_len))) in entries.iter().enumerate() {
            let ip = u32::from(ip);
            let mut h = Self::hash(ip) & mask;
            while slots[h].inst != NO_INST {
                h = (h + 1) & mask;
            }
            slots[h] = IpSlot {
                ip,
                inst: i as u32,
                list_off,
                list_len,
            };
        }
        IpIndex {
            slots: slots.into(),
            mask,
        }
    }

    #[inline]
    fn hash(ip: u32) -> usize {
        (u64::from(ip).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) as usize
    }

    #[inline(always)]
    fn get(&self, ip: u32) -> Option<&IpSlot> {
        let mut h = Self::hash(ip) & self.mask;
        loop {
            let e = &self.slots[h];
            if e.inst == NO_INST {
                return None;
            }
            if e.ip == ip {
                return Some(e);
            }
            h = (h + 1) & self.mask;
        }
    }
}

/// One IPv6 address-index entry: the address (as two words, high first), the
/// instance, its IPv4 address (the key of its port and quota counter) and its
/// group-table list, in 32 bytes (half a cache line).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C, align(32))]
struct Ip6Slot {
    hi: u64,
    lo: u64,
    inst: u32,
    ip4: u32,
    /// `lists[list_off..list_off + list_len]`: the instance's group tables.
    list_off: u32,
    list_len: u32,
}

/// Open-addressing IPv6 → instance index, ≤ 50% load: [`IpIndex`] for the
/// dual-stack instances' IPv6 addresses (a lookup is a hash and usually one
/// probe, like IPv4's, where a binary search over 1,000 addresses takes ten
/// dependent steps).
#[derive(Clone, Debug, PartialEq, Eq)]
struct IpIndex6 {
    slots: Arc<[Ip6Slot]>,
    mask: usize,
}

impl IpIndex6 {
    /// `entries`: (address, instance, its IPv4 address, its list); the
    /// addresses are distinct.
    fn build(entries: &[(Ipv6Addr, u32, Ipv4Addr, (u32, u32))]) -> IpIndex6 {
        let size = (entries.len() * 2).next_power_of_two().max(8);
        let empty = Ip6Slot {
            hi: 0,
            lo: 0,
            inst: NO_INST,
            ip4: 0,
            list_off: 0,
            list_len: 0,
        };
        let mut slots = vec![empty; size];
        let mask = size - 1;
        for &(ip, inst, ip4, (list_off, list_len)) in entries {
            let (hi, lo) = Self::words(ip);
            let mut h = Self::hash(hi, lo) & mask;
            while slots[h].inst != NO_INST {
                h = (h + 1) & mask;
            }
            slots[h] = Ip6Slot {
                hi,
                lo,
                inst,
                ip4: u32::from(ip4),
                list_off,
                list_len,
            };
        }
        IpIndex6 {
            slots: slots.into(),
            mask,
        }
    }

    #[inline(always)]
    fn words(ip: Ipv6Addr) -> (u64, u64) {
        let v = u128::from(ip);
        ((v >> 64) as u64, v as u64)
    }

    /// Both halves folded (instances share the /64 prefix and differ in the
    /// interface identifier), then IPv4's multiplicative hash.
    #[inline(always)]
    fn hash(hi: u64, lo: u64) -> usize {
        ((hi ^ lo).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) as usize
    }

    #[inline(always)]
    fn get(&self, ip: Ipv6Addr) -> Option<&Ip6Slot> {
        let (hi, lo) = Self::words(ip);
        let mut h = Self::hash(hi, lo) & self.mask;
        loop {
            let e = &self.slots[h];
            if e.inst == NO_INST {
                return None;
            }
            if e.lo == lo && e.hi == hi {
                return Some(e);
            }
            h = (h + 1) & self.mask;
        }
    }
}

/// The compiled, immutable security-group state at one generation.
///
/// Every part is behind an `Arc`: a snapshot made after an edit shares all it
/// did not change with the one before (see [`Compiler`]). The per-packet path
/// reads the same arrays as a plain boxed layout would (an `Arc<[T]>` is one
/// pointer to its elements, like a `Box<[T]>`; group tables sit inline in
/// their array).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    generation: u64,
    instances: Arc<[SnapInstance]>,
    ip_index: IpIndex,
    /// The dual-stack instances by IPv6 address.
    ip6_index: IpIndex6,
    /// Words per instance membership bitset.
    words: usize,
    /// `instances.len() * words` membership bits.
    member_bits: Arc<[u64]>,
    /// Group tables by slot (a slot of a deleted or rule-less group holds the
    /// empty table; no list names it).
    tables: Arc<[GroupTable]>,
    /// Concatenated group-table lists (slots in `tables`), one per distinct
    /// (owner, group set) of the instances.
    lists: Arc<[u32]>,
    /// Distinct tables named by some list.
    policies: usize,
    /// Serial of the rule holding each [`RuleSlot`] (0: free slot).
    rule_layout: RuleLayout,
    /// Egress tables by egress slot: compiled like ingress tables, the
    /// "source" sets holding the rules' destinations.
    etables: Arc<[GroupTable]>,
    /// Concatenated egress-table lists.
    elists: Arc<[u32]>,
    /// IPv6 tables, by the same slots as `tables` ([`v6`]).
    tables6: Arc<[Table6]>,
    /// IPv6 egress tables, by the same slots as `etables`.
    etables6: Arc<[Table6]>,
    /// Every instance's egress is open ([`SnapInstance::egress_open`], the
    /// default): egress allows every packet without looking the source up.
    egress_open_all: bool,
    /// The same for IPv6 ([`SnapInstance::egress_open6`]).
    egress_open6_all: bool,
}

impl Snapshot {
    /// No instances, no rules: every `allows` is false. Generation 0.
    pub fn empty() -> Snapshot {
        compile(&Model::default(), 0)
    }

    /// The generation this snapshot was compiled for.
    #[inline]
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The instance with this private address.
    #[inline]
    pub fn instance_by_ip(&self, ip: Ipv4Addr) -> Option<InstIdx> {
        self.ip_index.get(u32::from(ip)).map(|e| InstIdx(e.inst))
    }

    /// The instance with this IPv6 address.
    #[inline]
    pub fn instance_by_ip6(&self, ip: Ipv6Addr) -> Option<InstIdx> {
        self.ip6_index.get(ip).map(|e| InstIdx(e.inst))
    }

    /// The IPv4 address of the instance with this IPv6 address (what its
    /// port and its quota counter are keyed by): [`Snapshot::instance_by_ip6`]
    /// and [`SnapInstance::ip`] in one lookup.
    #[inline]
    pub fn instance_ip4_by_ip6(&self, ip: Ipv6Addr) -> Option<Ipv4Addr> {
        self.ip6_index.get(ip).map(|e| Ipv4Addr::from(e.ip4))
    }

    /// [`Snapshot::admitting_rule`] for IPv6: the slot of the first rule, in
    /// `describe-group` order, of the destination's (`pkt.key.dst`) groups
    /// that admits `pkt`; `None` when none does, when the destination is not
    /// an instance, and for non-first fragments. Rules admit IPv6 when they
    /// apply to it ([`Rule::applies_v6`]: `0.0.0.0/0` never does); group
    /// sources match the verified source instance by its IPv6 address. Per
    /// destination group one search in its IPv6 table ([`v6`]); no lock, no
    /// allocation.
    #[inline]
    pub fn admitting_rule6(&self, pkt: &Packet6) -> Option<RuleSlot> {
        if let Frag::Later { .. } = pkt.frag {
            return None;
        }
        let dst = self.ip6_index.get(pkt.key.dst)?;
        let off = dst.list_off as usize;
        let list = &self.lists[off..off + dst.list_len as usize];
        let (p, key) = v6::proto_key(pkt);
        let src = pkt.key.src;
        let mut member: Option<&[u64]> = None;
        for &t in list {
            let found = self.tables6[t as usize].first(p, key, u128::from(src), || {
                *member.get_or_insert_with(|| self.member_bits6(src))
            });
            if found.is_some() {
                return found;
            }
        }
        None
    }

    /// [`Snapshot::new_flow_rule`] for IPv6: `Err(NoEgressRule)` when
    /// `egress` is asked and [`Snapshot::egress_allows6`] refuses the packet,
    /// else [`Snapshot::admitting_rule6`]. While every instance's IPv6 egress
    /// is open (the default) the egress check is one flag, inline.
    #[inline(always)]
    pub(crate) fn new_flow_rule6(
        &self,
        pkt: &Packet6,
        egress: bool,
    ) -> Result<Option<RuleSlot>, DropReason> {
        if egress && !self.egress_open6_all && !self.egress_allows6(pkt) {
            return Err(DropReason::NoEgressRule);
        }
        Ok(self.admitting_rule6(pkt))
    }

    /// Does IPv6 ingress allow `pkt`? ([`Snapshot::admitting_rule6`] is
    /// `Some`.)
    #[inline]
    pub fn allows6(&self, pkt: &Packet6) -> bool {
        self.admitting_rule6(pkt).is_some()
    }

    /// [`Snapshot::egress_allows`] for IPv6: true when the source is not an
    /// instance or one of its groups has the default "all to `::/0`" rule
    /// (one flag; while every instance's IPv6 egress is open, the default,
    /// one flag without looking the source up); else when one of its groups' egress rules that apply to
    /// IPv6 matches the protocol, port / ICMPv6 type and the destination (an
    /// IPv6 CIDR, or a group of which the destination is a verified member
    /// instance). False for non-first fragments of a restricted source. No
    /// lock, no allocation.
    #[inline]
    pub fn egress_allows6(&self, pkt: &Packet6) -> bool {
        if self.egress_open6_all {
            return true;
        }
        let Some(src) = self.instance_by_ip6(pkt.key.src) else {
            return true;
        };
        let inst = &self.instances[src.index()];
        if inst.egress_open6 {
            return true;
        }
        if let Frag::Later { .. } = pkt.frag {
            return false;
        }
        let (off, len) = inst.elist;
        let list = &self.elists[off as usize..(off + len) as usize];
        let (p, key) = v6::proto_key(pkt);
        let dst = pkt.key.dst;
        let mut member: Option<&[u64]> = None;
        list.iter().any(|&t| {
            self.etables6[t as usize]
                .first(p, key, u128::from(dst), || {
                    *member.get_or_insert_with(|| self.member_bits6(dst))
                })
                .is_some()
        })
    }

    /// The membership words of the instance with IPv6 address `ip` (empty
    /// if none).
    #[inline]
    fn member_bits6(&self, ip: Ipv6Addr) -> &[u64] {
        let w = self.words;
        self.instance_by_ip6(ip)
            .map_or(&[], |i| &self.member_bits[i.index() * w..][..w])
    }

    /// An instance by index. Panics if `idx` is not from this snapshot.
    #[inline]
    pub fn instance(&self, idx: InstIdx) -> &SnapInstance {
        &self.instances[idx.index()]
    }

    /// All instances, sorted by id.
    pub fn instances(&self) -> &[SnapInstance] {
        &self.instances
    }

    /// Number of compiled group tables in use: one per security group that has
    /// at least one rule and at least one member instance (groups are compiled
    /// once and shared by all their members; there is no per-group-set policy).
    pub fn policy_count(&self) -> usize {
        self.policies
    }

    /// Approximate heap bytes held by this snapshot (shared parts counted in
    /// full).
    pub fn memory_bytes(&self) -> usize {
        let tables: usize = self
            .tables
            .iter()
            .map(|t| {
                std::mem::size_of::<GroupTable>()
                    + t.ports
                        .iter()
                        .map(|p| p.ivs.len() * 8 + p.top.len() * 4)
                        .sum::<usize>()
                    + t.sets.len() * std::mem::size_of::<SrcSet>()
                    + t.ranges.len() * 8
                    + t.group_bits.len() * 8
                    + t.rules.memory_bytes()
            })
            .sum::<usize>()
            + self
                .tables6
                .iter()
                .chain(self.etables6.iter())
                .map(|t| std::mem::size_of::<Table6>() + t.memory_bytes())
                .sum::<usize>();
        let inst: usize = self
            .instances
            .iter()
            .map(|i| std::mem::size_of::<SnapInstance>() + i.id.len() + i.owner.len())
            .sum();
        std::mem::size_of::<Snapshot>()
            + inst
            + self.ip_index.slots.len() * std::mem::size_of::<IpSlot>()
            + self.member_bits.len() * 8
            + self.lists.len() * 4
            + self.rule_layout.len() * 8
            + tables
    }

    /// The rule-slot layout of this snapshot: for each [`RuleSlot`], the
    /// serial of the rule holding it (never reused; 0 for a free slot).
    /// Snapshots whose slots did not change share one layout
    /// ([`RuleLayout::ptr_eq`]); an edit's layout shares the pages it did not
    /// touch with the one before.
    #[inline]
    pub fn rule_layout(&self) -> &RuleLayout {
        &self.rule_layout
    }

    /// [`Snapshot::allows`] naming the rule: the slot of the first rule, in
    /// `describe-group` order (the destination's groups in its order, rules in
    /// their group's order), that admits this packet, or `None` exactly when
    /// `allows` is false. Per group: one interval search, then for the rules
    /// covering that port one AND per membership word of their group sources
    /// and a scan of their address ranges (module [`attrib`]). No lock, no
    /// allocation.
    #[inline]
    pub fn admitting_rule(&self, pkt: &Packet) -> Option<RuleSlot> {
        self.rule_for(pkt, None)
    }

    /// What the rules say about the first packet of a new flow (connection
    /// tracking's miss path): `Err(NoEgressRule)` when `egress` is asked and
    /// the source is an instance whose egress rules refuse the packet
    /// ([`Snapshot::egress_allows`]), else [`Snapshot::admitting_rule`]. While
    /// every instance's egress is open (the default) the egress check is one
    /// flag; else one lookup of the source serves it and the group-source
    /// rules. Not for non-first fragments.
    #[inline]
    pub(crate) fn new_flow_rule(
        &self,
        pkt: &Packet,
        egress: bool,
    ) -> Result<Option<RuleSlot>, DropReason> {
        if !egress || self.egress_open_all {
            return Ok(self.rule_for(pkt, None));
        }
        let src = self.instance_by_ip(pkt.key.src);
        if let Some(i) = src
            && !self.instances[i.index()].egress_open
            && !self.egress_allows(pkt)
        {
            return Err(DropReason::NoEgressRule);
        }
        Ok(self.rule_for(pkt, Some(src)))
    }

    /// [`Snapshot::admitting_rule`] with the source's instance lookup
    /// (`src_inst`) already done, or `None` to do it when a group-source rule
    /// needs it. Inlined into both callers: with the source known
    /// ([`Snapshot::new_flow_rule`]) the lazy lookup is compiled out.
    #[inline(always)]
    fn rule_for(&self, pkt: &Packet, mut src_inst: Option<Option<InstIdx>>) -> Option<RuleSlot> {
        if let Frag::Later { .. } = pkt.frag {
            return None;
        }
        let dst = self.ip_index.get(u32::from(pkt.key.dst))?;
        let off = dst.list_off as usize;
        let list = &self.lists[off..off + dst.list_len as usize];
        let (p, key) = match (pkt.key.proto, pkt.l4) {
            (proto::TCP, _) => (Some(TCP_T), pkt.key.dport),
            (proto::UDP, _) => (Some(UDP_T), pkt.key.dport),
            (proto::ICMP, L4::Icmp { ty, code, .. }) => {
                (Some(ICMP_T), u16::from(ty) << 8 | u16::from(code))
            }
            _ => (None, 0),
        };
        // The source instance's membership words, looked up at most once.
        let mut member: Option<&[u64]> = None;
        // The first group peeled off the loop: when it admits (the common
        // case) nothing is set up for the others.
        let (&first, rest) = list.split_first()?;
        if let found @ Some(_) = self.table_rule(first, p, key, pkt, &mut src_inst, &mut member) {
            return found;
        }
        rest.iter()
            .find_map(|&t| self.table_rule(t, p, key, pkt, &mut src_inst, &mut member))
    }

    /// [`Snapshot::rule_for`] in group table `t`: the first rule of the
    /// candidates at (`p`, `key`) whose source contains `pkt.key.src`.
    #[inline(always)]
    fn table_rule<'s>(
        &'s self,
        t: u32,
        p: Option<usize>,
        key: u16,
        pkt: &Packet,
        src_inst: &mut Option<Option<InstIdx>>,
        member: &mut Option<&'s [u64]>,
    ) -> Option<RuleSlot> {
        let src = pkt.key.src;
        let table = &self.tables[t as usize];
        let l = table.rules.candidates(p, key);
        if l.range_count() > SCAN_MAX && !self.set_matches(table, l.set, src, src_inst) {
            return None;
        }
        let words: &[u64] = if l.has_groups() {
            member.get_or_insert_with(|| {
                let inst = *src_inst.get_or_insert_with(|| self.instance_by_ip(src));
                let w = self.words;
                inst.map_or(&[], |i| &self.member_bits[i.index() * w..][..w])
            })
        } else {
            &[]
        };
        table.rules.first_match(l, u32::from(src), words)
    }

    /// Do the ingress rules of the destination instance (`pkt.key.dst`) allow this
    /// packet from `pkt.key.src`? True when any of the destination's groups
    /// allows it (at most one table lookup per group, stopping at the first that
    /// allows). False if the destination is not an instance, and for non-first
    /// fragments. No lock, no allocation.
    #[inline]
    pub fn allows(&self, pkt: &Packet) -> bool {
        if let Frag::Later { .. } = pkt.frag {
            return false;
        }
        let Some(dst) = self.ip_index.get(u32::from(pkt.key.dst)) else {
            return false;
        };
        let off = dst.list_off as usize;
        let list = &self.lists[off..off + dst.list_len as usize];
        let (p, key) = match (pkt.key.proto, pkt.l4) {
            (proto::TCP, _) => (TCP_T, pkt.key.dport),
            (proto::UDP, _) => (UDP_T, pkt.key.dport),
            (proto::ICMP, L4::Icmp { ty, code, .. }) => {
                (ICMP_T, u16::from(ty) << 8 | u16::from(code))
            }
            _ => {
                let mut src_inst = None;
                return list.iter().any(|&t| {
                    let table = &self.tables[t as usize];
                    self.set_matches(table, table.other, pkt.key.src, &mut src_inst)
                });
            }
        };
        // The source's instance, looked up at most once (only for group sources).
        let mut src_inst = None;
        list.iter().any(|&t| {
            let table = &self.tables[t as usize];
            let set = table.ports[p].lookup(key);
            self.set_matches(table, set, pkt.key.src, &mut src_inst)
        })
    }

    /// Do the egress rules of the source instance (`pkt.key.src`) allow this
    /// packet to `pkt.key.dst`? True when the source is not an instance (egress
    /// rules bind instances only) or one of its groups has the default "all to
    /// 0.0.0.0/0" rule (one flag, no table lookup); else when one of its
    /// groups' egress rules matches the protocol, port / ICMP type and the
    /// destination (a CIDR, or a group of which the destination is a verified
    /// member instance). False for non-first fragments of a restricted source.
    /// No lock, no allocation. Egress rule hits are not counted.
    #[inline]
    pub fn egress_allows(&self, pkt: &Packet) -> bool {
        if self.egress_open_all {
            return true;
        }
        let Some(src) = self.instance_by_ip(pkt.key.src) else {
            return true;
        };
        let inst = &self.instances[src.index()];
        if inst.egress_open {
            return true;
        }
        if let Frag::Later { .. } = pkt.frag {
            return false;
        }
        let off = inst.elist.0 as usize;
        let list = &self.elists[off..off + inst.elist.1 as usize];
        let mut dst_inst = None;
        let (p, key) = match (pkt.key.proto, pkt.l4) {
            (proto::TCP, _) => (TCP_T, pkt.key.dport),
            (proto::UDP, _) => (UDP_T, pkt.key.dport),
            (proto::ICMP, L4::Icmp { ty, code, .. }) => {
                (ICMP_T, u16::from(ty) << 8 | u16::from(code))
            }
            _ => {
                return list.iter().any(|&t| {
                    let table = &self.etables[t as usize];
                    self.set_matches(table, table.other, pkt.key.dst, &mut dst_inst)
                });
            }
        };
        list.iter().any(|&t| {
            let table = &self.etables[t as usize];
            let set = table.ports[p].lookup(key);
            self.set_matches(table, set, pkt.key.dst, &mut dst_inst)
        })
    }

    /// Does source set `set` of `table` contain `src`? `src_inst` caches the
    /// source's instance lookup across calls for one packet (`None`: not looked
    /// up yet).
    #[inline]
    fn set_matches(
        &self,
        table: &GroupTable,
        set: u32,
        src: Ipv4Addr,
        src_inst: &mut Option<Option<InstIdx>>,
    ) -> bool {
        if set == EMPTY_SET {
            return false;
        }
        let s = table.sets[set as usize];
        let src_u = u32::from(src);
        let ranges = &table.ranges[s.r_off as usize..(s.r_off + s.r_len) as usize];
        let i = ranges.partition_point(|&(lo, _)| lo <= src_u);
        if i > 0 && src_u <= ranges[i - 1].1 {
            return true;
        }
        if s.g_off == NO_GROUPS {
            return false;
        }
        let Some(inst) = *src_inst.get_or_insert_with(|| self.instance_by_ip(src)) else {
            return false;
        };
        // A table's bitsets may be shorter than the instances' (bits are
        // numbered snapshot-wide; a table needs only the words up to its own
        // highest bit): `zip` stops at the shorter.
        let g = &table.group_bits[s.g_off as usize..s.g_off as usize + table.words];
        let w = self.words;
        let m = &self.member_bits[inst.index() * w..inst.index() * w + w];
        g.iter().zip(m).any(|(a, b)| a & b != 0)
    }
}

impl Default for Snapshot {
    fn default() -> Self {
        Snapshot::empty()
    }
}

/// One rule's contribution while compiling: a key range and a source.
#[derive(Clone, Copy, Debug)]
struct Entry {
    lo: u16,
    hi: u16,
    src: Src,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Src {
    /// Inclusive address range of a CIDR.
    Range(u32, u32),
    /// Referenced-group bit.
    Group(u32),
}

/// A source set's canonical form: merged address ranges and group bits (empty if
/// no group).
type SetKey = (Vec<(u32, u32)>, Vec<u64>);

/// Builds deduplicated source sets.
struct SetArena {
    words: usize,
    sets: Vec<SrcSet>,
    ranges: Vec<(u32, u32)>,
    group_bits: Vec<u64>,
    dedup: HashMap<SetKey, u32>,
}

impl SetArena {
    fn new(words: usize) -> SetArena {
        SetArena {
            words,
            // Set 0: the empty set.
            sets: vec![SrcSet {
                r_off: 0,
                r_len: 0,
                g_off: NO_GROUPS,
            }],
            ranges: Vec::new(),
            group_bits: Vec::new(),
            dedup: HashMap::new(),
        }
    }

    /// The set id of these sources (any order, duplicates allowed).
    fn intern(&mut self, srcs: &[Src]) -> u32 {
        let mut ranges: Vec<(u32, u32)> = Vec::new();
        let mut bits = vec![0u64; self.words];
        let mut any_group = false;
        for s in srcs {
            match *s {
                Src::Range(lo, hi) => ranges.push((lo, hi)),
                Src::Group(NO_BIT) => {}
                Src::Group(b) => {
                    bits[b as usize / 64] |= 1 << (b % 64);
                    any_group = true;
                }
            }
        }
        ranges.sort_unstable();
        let mut merged: Vec<(u32, u32)> = Vec::with_capacity(ranges.len());
        for (lo, hi) in ranges {
            match merged.last_mut() {
                Some(last) if u64::from(lo) <= u64::from(last.1) + 1 => last.1 = last.1.max(hi),
                _ => merged.push((lo, hi)),
            }
        }
        if merged.is_empty() && !any_group {
            return EMPTY_SET;
        }
        if !any_group {
            bits.clear();
        }
        let key = (merged, bits);
        if let Some(&id) = self.dedup.get(&key) {
            return id;
        }
        let (merged, bits) = &key;
        let r_off = self.ranges.len() as u32;
        for &(lo, hi) in merged {
            self.ranges.push((lo, hi));
        }
        let g_off = if bits.is_empty() {
            NO_GROUPS
        } else {
            let off = self.group_bits.len() as u32;
            self.group_bits.extend_from_slice(bits);
            off
        };
        let id = self.sets.len() as u32;
        self.sets.push(SrcSet {
            r_off,
            r_len: merged.len() as u32,
            g_off,
        });
        self.dedup.insert(key, id);
        id
    }

    /// Elementary-interval table over `0..=65535` for these entries.
    fn table(&mut self, entries: &[Entry]) -> PortTable {
        // Boundary events: at `lo` a source starts, after `hi` it ends.
        let mut events: Vec<(u32, bool, Src)> = Vec::with_capacity(entries.len() * 2);
        for e in entries {
            events.push((u32::from(e.lo), true, e.src));
            if e.hi < u16::MAX {
                events.push((u32::from(e.hi) + 1, false, e.src));
            }
        }
        events.sort_unstable_by_key(|&(pos, start, _)| (pos, start));
        let mut active: BTreeMap<Src, u32> = BTreeMap::new();
        let mut ivs: Vec<Iv> = Vec::new();
        let mut scratch: Vec<Src> = Vec::new();
        let mut i = 0;
        let mut pos = 0u32;
        loop {
            while i < events.len() && events[i].0 == pos {
                let (_, start, src) = events[i];
                if start {
                    *active.entry(src).or_insert(0) += 1;
                } else if let Some(c) = active.get_mut(&src) {
                    *c -= 1;
                    if *c == 0 {
                        active.remove(&src);
                    }
                }
                i += 1;
            }
            scratch.clear();
            scratch.extend(active.keys().copied());
            let set = self.intern(&scratch);
            // Always pushed at pos 0 (ivs is empty), so ivs[0].start == 0.
            if ivs.last().map(|iv| iv.set) != Some(set) {
                ivs.push(Iv {
                    start: pos as u16,
                    set,
                });
            }
            if i >= events.len() {
                break;
            }
            pos = events[i].0;
        }
        PortTable::new(ivs)
    }
}

/// Compile `model` into a snapshot tagged `generation` (from scratch: the same
/// as [`Compiler::new`] then [`Compiler::snapshot`]).
pub fn compile(model: &Model, generation: u64) -> Snapshot {
    Compiler::new(model).snapshot(generation)
}

/// A group key: (owner, group name).
type GroupKey = (Owner, String);

/// The instance-level parts of a snapshot: rebuilt (O(instances)) only when
/// instances come or go, egress rules change, or the set of referenced groups
/// changes; the lists alone when a group gains its first or loses its last
/// rule ([`Compiler::relist`]).
#[derive(Clone, Debug)]
struct Members {
    instances: Arc<[SnapInstance]>,
    ip_index: IpIndex,
    ip6_index: IpIndex6,
    words: usize,
    member_bits: Arc<[u64]>,
    lists: Arc<[u32]>,
    policies: usize,
    elists: Arc<[u32]>,
    /// See [`Snapshot`]'s field.
    egress_open_all: bool,
    /// See [`Snapshot`]'s field.
    egress_open6_all: bool,
}

/// The incremental compiler: the compiled state of a model, updated edit by
/// edit ([`Compiler::apply`]) so that an edit costs what it changes.
///
/// * Every group with at least one rule has a table *slot*; an edit of a
///   group's rules recompiles that group's table alone (`O(R log R)` for its
///   `R` rules) and replaces one table in the slot array (republished as
///   `O(groups)` reference-count copies); all other tables' arrays are shared
///   with the previous snapshot.
/// * Groups named as a source get a bit number for as long as some rule names
///   them (freed numbers are reused, lowest first); every instance carries the
///   bits of its groups. Bits are numbered model-wide, so a table compiled
///   earlier stays valid when other groups become referenced.
/// * The instance-level parts (address index, lists, membership bits) are
///   rebuilt only when instances change, when egress rules change, or when
///   the referenced groups change: `O(instances × groups per instance)`,
///   independent of the number of rules. When a group's table appears or
///   goes (its first rule authorized, its last revoked) only the lists and
///   the address indexes holding them are redone: `O(distinct group sets ×
///   their groups + instances)`, no string hashing per instance.
/// * Rule slots' serials live in copy-on-write pages of 1024
///   ([`RuleLayout`]): publishing a layout after an edit copies the page
///   array and the pages the edit touched, not one serial per slot.
///
/// Invariant: after `new(m)` or `apply(m, changes)` with the changes that
/// turned the previous model into `m`, [`Compiler::snapshot`] allows exactly
/// what `compile(m)` allows (the property test checks it on random edit
/// sequences).
#[derive(Clone, Debug)]
pub struct Compiler {
    /// Referenced group → (bit, number of rules naming it).
    refs: HashMap<GroupKey, (u32, u32)>,
    /// Bits below `next_bit` not in use.
    free_bits: BTreeSet<u32>,
    next_bit: u32,
    /// Group with at least one rule → its slot in `tables`.
    slots: HashMap<GroupKey, u32>,
    free_slots: Vec<u32>,
    tables: Vec<GroupTable>,
    /// The shared empty table of free slots.
    empty: GroupTable,
    members: Members,
    /// `tables` as published (redone lazily after a change).
    published: Published<GroupTable>,
    /// Rule slots ([`attrib`]).
    alloc: SlotAlloc,
    /// Group with rules → its rules and their slots, in the group's order.
    rule_slots: HashMap<GroupKey, Vec<(Rule, RuleSlot)>>,
    /// Group with egress rules other than only the default → its slot in
    /// `etables` (egress rules have no counter slots).
    eslots: HashMap<GroupKey, u32>,
    efree: Vec<u32>,
    etables: Vec<GroupTable>,
    epublished: Option<Arc<[GroupTable]>>,
    /// Groups whose egress rules include the default "all to 0.0.0.0/0".
    open: HashSet<GroupKey>,
    /// Groups whose egress rules include the default "all to ::/0".
    open6: HashSet<GroupKey>,
    /// IPv6 tables by the slots of `tables` / `etables` ([`v6`]), the
    /// shared empty one, and as published.
    tables6: Vec<Table6>,
    etables6: Vec<Table6>,
    empty6: Table6,
    published6: Published<Table6>,
    epublished6: Option<Arc<[Table6]>>,
    /// The distinct (owner, group list) of the instances, in the order of
    /// their first instance, as the table slot of each group (`NO_SLOT`:
    /// none), each instance's index into them, and where each group appears
    /// in them (as of the last [`Compiler::rebuild_members`]): what
    /// [`Compiler::relist`] needs to redo the group-table lists alone,
    /// without looking groups up by name.
    group_sets: Vec<Vec<u32>>,
    inst_group_set: Vec<u32>,
    group_uses: HashMap<GroupKey, Vec<(u32, u32)>>,
}

impl Compiler {
    /// Compile all of `model`.
    pub fn new(model: &Model) -> Compiler {
        let empty = GroupTable::empty();
        let mut c = Compiler {
            refs: HashMap::new(),
            free_bits: BTreeSet::new(),
            next_bit: 0,
            slots: HashMap::new(),
            free_slots: Vec::new(),
            tables: Vec::new(),
            empty,
            members: Members {
                instances: Arc::new([]),
                ip_index: IpIndex::build(&[]),
                ip6_index: IpIndex6::build(&[]),
                words: 1,
                member_bits: Arc::new([]),
                lists: Arc::new([]),
                policies: 0,
                elists: Arc::new([]),
                egress_open_all: true,
                egress_open6_all: true,
            },
            published: Published::default(),
            alloc: SlotAlloc::default(),
            rule_slots: HashMap::new(),
            eslots: HashMap::new(),
            efree: Vec::new(),
            etables: Vec::new(),
            epublished: None,
            open: HashSet::new(),
            open6: HashSet::new(),
            tables6: Vec::new(),
            etables6: Vec::new(),
            empty6: Table6::empty(),
            published6: Published::default(),
            epublished6: None,
            group_sets: Vec::new(),
            inst_group_set: Vec::new(),
            group_uses: HashMap::new(),
        };
        // All bits first, then the tables that use them.
        for g in model.groups().values() {
            for r in g.rules.iter().chain(&g.egress) {
                c.add_ref(r);
            }
        }
        for (key, g) in model.groups() {
            if !g.rules.is_empty() {
                c.set_table(key, &g.rules);
            }
            c.set_egress(key, Some(&g.egress));
        }
        c.rebuild_members(model);
        c
    }

    /// Bring the compiled state up to `model`, which `changes` (newest last)
    /// turned the previous model into. Recompiles only the groups whose rules
    /// changed.
    pub fn apply(&mut self, model: &Model, changes: &[Change]) {
        let mut dirty: BTreeSet<&GroupKey> = BTreeSet::new();
        let mut edirty: BTreeSet<&GroupKey> = BTreeSet::new();
        let mut members = false;
        let mut keys: Vec<GroupKey> = Vec::new();
        for c in changes {
            match c {
                Change::GroupAdded { group, .. } => {
                    for r in group.rules.iter().chain(&group.egress) {
                        members |= self.add_ref(r);
                    }
                    keys.push((group.owner.clone(), group.name.clone()));
                }
                Change::GroupDeleted(group) => {
                    for r in group.rules.iter().chain(&group.egress) {
                        members |= self.drop_ref(r);
                    }
                    keys.push((group.owner.clone(), group.name.clone()));
                }
                Change::RulesAdded {
                    key, rules, egress, ..
                } => {
                    for r in rules {
                        members |= self.add_ref(r);
                    }
                    if *egress {
                        edirty.insert(key);
                    } else {
                        dirty.insert(key);
                    }
                }
                Change::RulesRemoved {
                    key, rules, egress, ..
                } => {
                    for r in rules {
                        members |= self.drop_ref(r);
                    }
                    if *egress {
                        edirty.insert(key);
                    } else {
                        dirty.insert(key);
                    }
                }
                Change::InstanceAdded(_) | Change::InstanceRemoved(_) => members = true,
            }
        }
        dirty.extend(keys.iter());
        edirty.extend(keys.iter());
        for key in edirty {
            let egress = model.groups().get(key).map(|g| g.egress.as_slice());
            members |= self.set_egress(key, egress);
        }
        // A group's table appearing or going (its first rule authorized,
        // its last revoked) changes only the lists of the group sets naming
        // it, not membership.
        let mut relist: Vec<&GroupKey> = Vec::new();
        for key in dirty {
            let changed = match model.groups().get(key) {
                Some(g) if !g.rules.is_empty() => self.set_table(key, &g.rules),
                _ => self.clear_table(key),
            };
            if changed {
                relist.push(key);
            }
        }
        if members {
            self.rebuild_members(model);
        } else if !relist.is_empty() {
            self.relist(&relist);
        }
    }

    /// The current state as a snapshot tagged `generation`: `Arc` clones only
    /// (plus the slot array once per change).
    pub fn snapshot(&mut self, generation: u64) -> Snapshot {
        let tables = self.published.publish(&self.tables);
        let m = &self.members;
        Snapshot {
            generation,
            instances: m.instances.clone(),
            ip_index: m.ip_index.clone(),
            ip6_index: m.ip6_index.clone(),
            words: m.words,
            member_bits: m.member_bits.clone(),
            tables,
            lists: m.lists.clone(),
            policies: m.policies,
            rule_layout: self.alloc.layout(),
            etables: self
                .epublished
                .get_or_insert_with(|| self.etables.iter().cloned().collect())
                .clone(),
            elists: m.elists.clone(),
            tables6: self.published6.publish(&self.tables6),
            etables6: self
                .epublished6
                .get_or_insert_with(|| self.etables6.iter().cloned().collect())
                .clone(),
            egress_open_all: m.egress_open_all,
            egress_open6_all: m.egress_open6_all,
        }
    }

    /// Compile `key`'s egress rules (`None`: the group is gone). Egress
    /// edits rebuild the instance-level parts (true): an instance's egress
    /// list and its "open" flag follow its groups' egress rules.
    fn set_egress(&mut self, key: &GroupKey, egress: Option<&[Rule]>) -> bool {
        let open = egress.is_some_and(|e| e.contains(&crate::model::default_egress_rule()));
        let open6 = egress.is_some_and(|e| e.contains(&crate::model::default_egress_rule6()));
        if open {
            self.open.insert(key.clone());
        } else {
            self.open.remove(key);
        }
        if open6 {
            self.open6.insert(key.clone());
        } else {
            self.open6.remove(key);
        }
        self.epublished = None;
        self.epublished6 = None;
        match egress {
            // A table unless both families are open (then no lookup asks).
            Some(rules) if !(rules.is_empty() || open && open6) => {
                let slots = vec![RuleSlot(u32::MAX); rules.len()];
                let table = compile_group(rules, &slots, &self.refs);
                let table6 = Table6::build(rules, &slots, &self.refs);
                match self.eslots.get(key) {
                    Some(&s) => {
                        self.etables[s as usize] = table;
                        self.etables6[s as usize] = table6;
                    }
                    None => {
                        let s = match self.efree.pop() {
                            Some(s) => {
                                self.etables[s as usize] = table;
                                self.etables6[s as usize] = table6;
                                s
                            }
                            None => {
                                self.etables.push(table);
                                self.etables6.push(table6);
                                self.etables.len() as u32 - 1
                            }
                        };
                        self.eslots.insert(key.clone(), s);
                    }
                }
            }
            _ => {
                if let Some(s) = self.eslots.remove(key) {
                    self.etables[s as usize] = self.empty.clone();
                    self.etables6[s as usize] = self.empty6.clone();
                    self.efree.push(s);
                }
            }
        }
        true
    }

    /// The slot of rule `index` (in the group's rule order) of group `group`
    /// of `owner`, as compiled by the last [`Compiler::new`] or
    /// [`Compiler::apply`].
    pub fn rule_slot(&self, owner: &Owner, group: &str, index: usize) -> Option<RuleSlot> {
        let key = (owner.clone(), group.to_owned());
        self.rule_slots.get(&key)?.get(index).map(|&(_, s)| s)
    }

    /// The serial of the rule now in `slot` (as in the next snapshot's
    /// [`Snapshot::rule_layout`]; 0 for a free slot).
    pub fn rule_serial(&self, slot: RuleSlot) -> u64 {
        self.alloc.serial(slot)
    }

    /// Count a rule naming a group; true if that group just got a bit.
    fn add_ref(&mut self, r: &Rule) -> bool {
        let Source::Group { owner, group } = &r.source else {
            return false;
        };
        let key = (owner.clone(), group.clone());
        if let Some(e) = self.refs.get_mut(&key) {
            e.1 += 1;
            return false;
        }
        let bit = match self.free_bits.pop_first() {
            Some(b) => b,
            None => {
                self.next_bit += 1;
                self.next_bit - 1
            }
        };
        self.refs.insert(key, (bit, 1));
        true
    }

    /// Uncount a rule naming a group; true if that group lost its bit.
    fn drop_ref(&mut self, r: &Rule) -> bool {
        let Source::Group { owner, group } = &r.source else {
            return false;
        };
        let key = (owner.clone(), group.clone());
        let Some(e) = self.refs.get_mut(&key) else {
            return false;
        };
        e.1 -= 1;
        if e.1 > 0 {
            return false;
        }
        let bit = e.0;
        self.refs.remove(&key);
        self.free_bits.insert(bit);
        true
    }

    /// Compile `rules` into `key`'s slot; true if the slot is new.
    fn set_table(&mut self, key: &GroupKey, rules: &[Rule]) -> bool {
        let old = self.rule_slots.remove(key).unwrap_or_default();
        let slotted = self.alloc.reassign(old, rules);
        let slots: Vec<RuleSlot> = slotted.iter().map(|&(_, s)| s).collect();
        self.rule_slots.insert(key.clone(), slotted);
        let table = compile_group(rules, &slots, &self.refs);
        let table6 = Table6::build(rules, &slots, &self.refs);
        if let Some(&s) = self.slots.get(key) {
            self.tables[s as usize] = table;
            self.tables6[s as usize] = table6;
            self.published.changed(s);
            self.published6.changed(s);
            return false;
        }
        let s = match self.free_slots.pop() {
            Some(s) => {
                self.tables[s as usize] = table;
                self.tables6[s as usize] = table6;
                s
            }
            None => {
                self.tables.push(table);
                self.tables6.push(table6);
                self.tables.len() as u32 - 1
            }
        };
        self.published.changed(s);
        self.published6.changed(s);
        self.slots.insert(key.clone(), s);
        true
    }

    /// Free `key`'s slot; true if it had one.
    fn clear_table(&mut self, key: &GroupKey) -> bool {
        if let Some(old) = self.rule_slots.remove(key) {
            self.alloc.release_all(old);
        }
        let Some(s) = self.slots.remove(key) else {
            return false;
        };
        self.tables[s as usize] = self.empty.clone();
        self.tables6[s as usize] = self.empty6.clone();
        self.free_slots.push(s);
        self.published.changed(s);
        self.published6.changed(s);
        true
    }

    fn rebuild_members(&mut self, model: &Model) {
        let words = (self.next_bit as usize).div_ceil(64).max(1);
        let mut instances = Vec::with_capacity(model.instances().len());
        let mut member_bits = vec![0u64; model.instances().len() * words];
        let mut set_ids: HashMap<(&Owner, &[String]), u32> = HashMap::new();
        let mut group_sets: Vec<Vec<u32>> = Vec::new();
        let mut group_uses: HashMap<GroupKey, Vec<(u32, u32)>> = HashMap::new();
        let mut inst_group_set: Vec<u32> = Vec::with_capacity(model.instances().len());
        let mut key = (Owner(String::new()), String::new());
        let mut elists: Vec<u32> = Vec::new();
        let mut elist_ids: HashMap<Vec<u32>, (u32, u32)> = HashMap::new();
        for (n, inst) in model.instances().values().enumerate() {
            let mut egress_open = false;
            let mut egress_open6 = false;
            let mut etabs: Vec<u32> = Vec::new();
            for g in &inst.groups {
                key.1.clone_from(g);
                key.0.clone_from(&inst.owner);
                egress_open |= self.open.contains(&key);
                egress_open6 |= self.open6.contains(&key);
                if let Some(&s) = self.eslots.get(&key) {
                    etabs.push(s);
                }
            }
            let elist = if egress_open && egress_open6 {
                (0, 0)
            } else {
                *elist_ids.entry(etabs).or_insert_with_key(|t| {
                    let off = elists.len() as u32;
                    elists.extend_from_slice(t);
                    (off, t.len() as u32)
                })
            };
            key.0.clone_from(&inst.owner);
            for g in &inst.groups {
                key.1.clone_from(g);
                if let Some(&(b, _)) = self.refs.get(&key) {
                    member_bits[n * words + b as usize / 64] |= 1 << (b % 64);
                }
            }
            let set = *set_ids
                .entry((&inst.owner, inst.groups.as_slice()))
                .or_insert_with(|| {
                    let set = group_sets.len() as u32;
                    let mut slots = Vec::with_capacity(inst.groups.len());
                    for (pos, g) in inst.groups.iter().enumerate() {
                        let k = (inst.owner.clone(), g.clone());
                        slots.push(self.slots.get(&k).copied().unwrap_or(NO_SLOT));
                        group_uses.entry(k).or_default().push((set, pos as u32));
                    }
                    group_sets.push(slots);
                    set
                });
            inst_group_set.push(set);
            instances.push(SnapInstance {
                id: inst.id.as_str().into(),
                owner: inst.owner.0.as_str().into(),
                mac: inst.mac,
                ip: inst.ip,
                ip6: model.ip6_of(inst.mac),
                // Set by `set_lists`.
                list: (0, 0),
                elist,
                egress_open,
                egress_open6,
            });
        }
        let egress_open_all = instances.iter().all(|i| i.egress_open);
        let egress_open6_all = instances.iter().all(|i| i.egress_open6);
        self.group_sets = group_sets;
        self.inst_group_set = inst_group_set;
        self.group_uses = group_uses;
        self.members = Members {
            egress_open_all,
            egress_open6_all,
            instances: Arc::new([]),
            ip_index: IpIndex::build(&[]),
            ip6_index: IpIndex6::build(&[]),
            words,
            member_bits: member_bits.into(),
            lists: Arc::new([]),
            policies: 0,
            elists: elists.into(),
        };
        self.set_lists(instances);
    }

    /// Redo the group-table lists (and the indexes holding them) after the
    /// tables of `changed` appeared or went, membership unchanged: one
    /// lookup per changed group, then `O(group sets × their groups +
    /// instances)` without names; no rule.
    fn relist(&mut self, changed: &[&GroupKey]) {
        let mut any = false;
        for &key in changed {
            let slot = self.slots.get(key).copied().unwrap_or(NO_SLOT);
            for &(set, pos) in self.group_uses.get(key).into_iter().flatten() {
                self.group_sets[set as usize][pos as usize] = slot;
                any = true;
            }
        }
        if !any {
            // No instance is in those groups: no list names them.
            return;
        }
        let instances = self.members.instances.to_vec();
        self.set_lists(instances);
    }

    /// The group-table list of every group set, lists of equal tables
    /// shared, set into `instances` (by [`Compiler::inst_group_set`]), then
    /// the address indexes over them.
    fn set_lists(&mut self, mut instances: Vec<SnapInstance>) {
        let mut lists: Vec<u32> = Vec::new();
        // Group sets that resolve to the same tables share one list.
        let mut list_dedup: HashMap<Vec<u32>, (u32, u32)> = HashMap::new();
        let mut set_lists = Vec::with_capacity(self.group_sets.len());
        for slots in &self.group_sets {
            let off = lists.len();
            for &s in slots {
                if s != NO_SLOT && !lists[off..].contains(&s) {
                    lists.push(s);
                }
            }
            let l = match list_dedup.get(&lists[off..]) {
                Some(&l) => {
                    lists.truncate(off);
                    l
                }
                None => {
                    let l = (off as u32, (lists.len() - off) as u32);
                    list_dedup.insert(lists[off..].to_vec(), l);
                    l
                }
            };
            set_lists.push(l);
        }
        for (inst, &set) in instances.iter_mut().zip(&self.inst_group_set) {
            inst.list = set_lists[set as usize];
        }
        let mut named = vec![false; self.tables.len()];
        let mut policies = 0;
        for &t in &lists {
            if !std::mem::replace(&mut named[t as usize], true) {
                policies += 1;
            }
        }
        let ips: Vec<(Ipv4Addr, (u32, u32))> = instances.iter().map(|i| (i.ip, i.list)).collect();
        let ip6s: Vec<(Ipv6Addr, u32, Ipv4Addr, (u32, u32))> = instances
            .iter()
            .enumerate()
            .filter_map(|(i, inst)| Some((inst.ip6?, i as u32, inst.ip, inst.list)))
            .collect();
        let m = &mut self.members;
        m.instances = instances.into();
        m.ip_index = IpIndex::build(&ips);
        m.ip6_index = IpIndex6::build(&ip6s);
        m.lists = lists.into();
        m.policies = policies;
    }
}

/// A slot array as published in snapshots, redone after a change by
/// writing only the changed slots into the array published the time before
/// last, when no snapshot holds that one any more (the usual case: the
/// data path dropped it at the last swap), else by cloning every slot
/// (`O(slots)` reference counts).
#[derive(Clone, Debug)]
struct Published<T> {
    /// The last published array and whether it is still current.
    live: Option<Arc<[T]>>,
    current: bool,
    /// Slots changed since `live` was published.
    live_stale: Vec<u32>,
    /// The array published before `live`, and the slots changed since.
    spare: Option<Arc<[T]>>,
    spare_stale: Vec<u32>,
}

impl<T> Default for Published<T> {
    fn default() -> Self {
        Published {
            live: None,
            current: false,
            live_stale: Vec::new(),
            spare: None,
            spare_stale: Vec::new(),
        }
    }
}

impl<T: Clone> Published<T> {
    /// Slot `s` of the array changed (or was appended).
    fn changed(&mut self, s: u32) {
        // Past this many changes between publishes, cloning all is as good.
        const STALE_MAX: usize = 4096;
        self.current = false;
        self.live_stale.push(s);
        self.spare_stale.push(s);
        if self.live_stale.len() > STALE_MAX {
            self.live = None;
            self.live_stale.clear();
        }
        if self.spare_stale.len() > STALE_MAX {
            self.spare = None;
            self.spare_stale.clear();
        }
    }

    /// The array as of `now`.
    fn publish(&mut self, now: &[T]) -> Arc<[T]> {
        if self.current
            && let Some(live) = &self.live
        {
            return live.clone();
        }
        let reused = match self.spare.take() {
            Some(mut a) if a.len() == now.len() => match Arc::get_mut(&mut a) {
                Some(slots) => {
                    for &s in &self.spare_stale {
                        slots[s as usize] = now[s as usize].clone();
                    }
                    Some(a)
                }
                None => None,
            },
            _ => None,
        };
        let new = reused.unwrap_or_else(|| now.iter().cloned().collect());
        self.spare = self.live.replace(new.clone());
        self.spare_stale = std::mem::take(&mut self.live_stale);
        self.current = true;
        new
    }
}

impl GroupTable {
    /// Allows nothing.
    fn empty() -> GroupTable {
        compile_group(&[], &[], &HashMap::new())
    }
}

/// One group's table (empty rules: a table that allows nothing). Group sources
/// take their bits from `refs`.
fn compile_group(
    rules: &[Rule],
    slots: &[RuleSlot],
    refs: &HashMap<GroupKey, (u32, u32)>,
) -> GroupTable {
    let mut tcp = Vec::new();
    let mut udp = Vec::new();
    let mut icmp = Vec::new();
    let mut other = Vec::new();
    let mut srcs = Vec::with_capacity(rules.len());
    let mut max_bit = 0u32;
    for r in rules {
        let src = match &r.source {
            Source::Cidr(net) => Src::Range(u32::from(net.network()), u32::from(net.broadcast())),
            // IPv6 rules are in the IPv6 tables ([`v6`]); here they match nothing.
            Source::Cidr6(_) => Src::Group(NO_BIT),
            Source::Group { owner, group } => {
                // Every group named by a rule of the model has a bit (a
                // missing one would match no source).
                let b = refs
                    .get(&(owner.clone(), group.clone()))
                    .map_or(NO_BIT, |e| e.0);
                if b != NO_BIT {
                    max_bit = max_bit.max(b);
                }
                Src::Group(b)
            }
        };
        srcs.push(src);
    }
    let mut arena = SetArena::new(max_bit as usize / 64 + 1);
    // The same entries by rule index, for the rule index.
    let mut by_rule: [Vec<(u16, u16, u32)>; 3] = [Vec::new(), Vec::new(), Vec::new()];
    let mut other_rules = Vec::new();
    for (n, (r, &src)) in rules.iter().zip(&srcs).enumerate() {
        let n = n as u32;
        let all = Entry {
            lo: 0,
            hi: u16::MAX,
            src,
        };
        let mut add = |t: usize, e: Entry| {
            [&mut tcp, &mut udp, &mut icmp][t].push(e);
            by_rule[t].push((e.lo, e.hi, n));
        };
        match (r.proto, r.ports) {
            _ if !r.applies_v4() => {}
            (Proto::All, _) => {
                add(TCP_T, all);
                add(UDP_T, all);
                add(ICMP_T, all);
                other.push(src);
                other_rules.push(n);
            }
            (Proto::Tcp, Ports::Range(lo, hi)) => add(TCP_T, Entry { lo, hi, src }),
            (Proto::Udp, Ports::Range(lo, hi)) => add(UDP_T, Entry { lo, hi, src }),
            (Proto::Icmp, Ports::Icmp { ty, code }) => {
                let (lo, hi) = icmp_range(ty, code);
                add(ICMP_T, Entry { lo, hi, src });
            }
            // A non-normalised port spec means "all ports" of that protocol.
            (Proto::Tcp, _) => add(TCP_T, all),
            (Proto::Udp, _) => add(UDP_T, all),
            (Proto::Icmp, _) => add(ICMP_T, all),
            (Proto::Icmpv6, _) => {}
        }
    }
    let ports = [arena.table(&tcp), arena.table(&udp), arena.table(&icmp)];
    let other = arena.intern(&other);
    let rule_index = RuleIndex::build(by_rule, other_rules, &srcs, slots.to_vec(), |rules| {
        let srcs: Vec<Src> = rules.iter().map(|&i| srcs[i as usize]).collect();
        arena.intern(&srcs)
    });
    GroupTable {
        rules: rule_index,
        ports,
        other,
        words: arena.words,
        sets: arena.sets.into(),
        ranges: arena.ranges.into(),
        group_bits: arena.group_bits.into(),
    }
}

/// The ICMP key range `type << 8 | code` a rule covers.
fn icmp_range(ty: Option<u8>, code: Option<u8>) -> (u16, u16) {
    match (ty, code) {
        (None, _) => (0, u16::MAX),
        (Some(t), None) => (u16::from(t) << 8, u16::from(t) << 8 | 0xff),
        (Some(t), Some(c)) => {
            let k = u16::from(t) << 8 | u16::from(c);
            (k, k)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Instance, Limits};
    use crate::{FlowKey, IcmpKind};
    use ipnet::Ipv4Net;

    fn owner() -> Owner {
        Owner("111122223333".into())
    }

    fn rule(proto: Proto, ports: Ports, cidr: &str) -> Rule {
        Rule {
            proto,
            ports,
            source: Source::Cidr(cidr.parse::<Ipv4Net>().unwrap()),
        }
    }

    fn grule(proto: Proto, ports: Ports, group: &str) -> Rule {
        Rule {
            proto,
            ports,
            source: Source::Group {
                owner: owner(),
                group: group.into(),
            },
        }
    }

    fn model(groups: &[(&str, Vec<Rule>)], insts: &[(&str, [u8; 4], &[&str])]) -> Model {
        let insts = insts.iter().enumerate().map(|(n, (id, ip, gs))| Instance {
            id: id.to_string(),
            owner: owner(),
            mac: [2, 0, 0, 0, 0, n as u8 + 1],
            ip: Ipv4Addr::from(*ip),
            groups: gs.iter().map(|s| s.to_string()).collect(),
        });
        let limits = Limits {
            rules_per_group: 100_000,
        };
        // `default` without rules unless listed: no table of its own.
        let mut groups = groups.to_vec();
        if !groups.iter().any(|(n, _)| *n == "default") {
            groups.insert(0, ("default", vec![]));
        }
        Model::build(limits, &owner(), &groups, insts).expect("valid test model")
    }

    fn tcp(src: [u8; 4], dst: [u8; 4], dport: u16) -> Packet {
        Packet {
            key: FlowKey {
                src: src.into(),
                dst: dst.into(),
                proto: proto::TCP,
                sport: 40000,
                dport,
            },
            l4: L4::Tcp {
                flags: crate::tcp_flags::SYN,
            },
            frag: Frag::None,
        }
    }

    fn icmp(src: [u8; 4], dst: [u8; 4], ty: u8, code: u8) -> Packet {
        Packet {
            key: FlowKey {
                src: src.into(),
                dst: dst.into(),
                proto: proto::ICMP,
                sport: 0,
                dport: 0,
            },
            l4: L4::Icmp {
                ty,
                code,
                kind: IcmpKind::Other,
            },
            frag: Frag::None,
        }
    }

    const A: [u8; 4] = [172, 31, 0, 10];
    const B: [u8; 4] = [172, 31, 0, 11];
    const C: [u8; 4] = [172, 31, 0, 12];
    const OUT: [u8; 4] = [203, 0, 113, 7];

    #[test]
    fn egress_rules_open_by_default_and_match_destinations() {
        let mut m = model(
            &[("web", vec![]), ("db", vec![])],
            &[
                ("i-00000001", [10, 0, 0, 1], &["web"]),
                ("i-00000002", [10, 0, 0, 2], &["db"]),
                ("i-00000003", [10, 0, 0, 3], &["default"]),
            ],
        );
        let web = [10, 0, 0, 1];
        let (db, other) = ([10, 0, 0, 2], [10, 0, 0, 3]);
        let snap = compile(&m, 1);
        // Every group starts with "all to 0.0.0.0/0": the flag, no tables.
        assert!(snap.instances().iter().all(|i| i.egress_open));
        assert!(snap.egress_allows(&tcp(web, [8, 8, 8, 8], 53)));
        let o = owner();
        m.revoke_rules_dir(&o, "web", &crate::model::default_egress(), true)
            .expect("revoke default egress");
        m.authorize_rules_dir(
            &o,
            "web",
            &[grule(Proto::Tcp, Ports::Range(5432, 5432), "db")],
            true,
        )
        .expect("group destination");
        m.authorize_rules_dir(
            &o,
            "web",
            &[rule(Proto::Udp, Ports::Range(53, 53), "9.9.9.0/24")],
            true,
        )
        .expect("cidr destination");
        let snap = compile(&m, 2);
        assert!(snap.egress_allows(&tcp(web, db, 5432)), "member of db");
        assert!(!snap.egress_allows(&tcp(web, other, 5432)), "not a member");
        assert!(!snap.egress_allows(&tcp(web, db, 5433)), "other port");
        assert!(!snap.egress_allows(&tcp(web, [8, 8, 8, 8], 53)));
        let mut dns = tcp(web, [9, 9, 9, 9], 53);
        dns.key.proto = proto::UDP;
        dns.l4 = L4::Udp;
        assert!(snap.egress_allows(&dns));
        // Other sources keep the default; the uplink has no egress rules.
        assert!(snap.egress_allows(&tcp(db, [8, 8, 8, 8], 1)));
        assert!(snap.egress_allows(&tcp([8, 8, 8, 8], web, 1)));
        // Incremental: the same after applying the changes.
        let mut c = Compiler::new(&m);
        m.record_changes();
        m.revoke_rules_dir(
            &o,
            "web",
            &[grule(Proto::Tcp, Ports::Range(5432, 5432), "db")],
            true,
        )
        .expect("revoke");
        let changes = m.take_changes();
        c.apply(&m, &changes);
        let inc = c.snapshot(3);
        assert!(!inc.egress_allows(&tcp(web, db, 5432)));
        assert!(inc.egress_allows(&dns));
        assert_eq!(
            inc.egress_allows(&tcp(web, db, 5432)),
            compile(&m, 3).egress_allows(&tcp(web, db, 5432))
        );
    }

    fn tcp6(src: Ipv6Addr, dst: Ipv6Addr, dport: u16) -> Packet6 {
        Packet6 {
            key: crate::FlowKey6 {
                src,
                dst,
                proto: proto::TCP,
                sport: 40000,
                dport,
            },
            l4: L4::Tcp {
                flags: crate::tcp_flags::SYN,
            },
            frag: Frag::None,
        }
    }

    #[test]
    fn ipv6_rules_admit_ipv6_only_and_name_the_first_rule() {
        let r6 = |proto, ports, cidr: &str| Rule {
            proto,
            ports,
            source: Source::Cidr6(cidr.parse().unwrap()),
        };
        let mut m = model(
            &[
                (
                    "web",
                    vec![
                        rule(Proto::Tcp, Ports::Range(80, 80), "0.0.0.0/0"),
                        r6(Proto::Tcp, Ports::Range(22, 22), "2001:db8::/32"),
                        r6(Proto::Tcp, Ports::Range(20, 30), "2001:db8:1::/48"),
                        r6(
                            Proto::Icmpv6,
                            Ports::Icmp {
                                ty: Some(128),
                                code: None,
                            },
                            "::/0",
                        ),
                        grule(Proto::Tcp, Ports::Range(5432, 5432), "db"),
                    ],
                ),
                ("db", vec![]),
            ],
            &[("i-a", A, &["web"]), ("i-b", B, &["db"])],
        );
        m.set_subnet6(Some("fd00:1::/64".parse().unwrap())).unwrap();
        let mut c = Compiler::new(&m);
        let s = c.snapshot(1);
        let a6 = s.instance(s.instance_by_ip(A.into()).unwrap()).ip6.unwrap();
        let b6 = s.instance(s.instance_by_ip(B.into()).unwrap()).ip6.unwrap();
        let out: Ipv6Addr = "2001:db8:1::9".parse().unwrap();
        let slot = |i| c.rule_slot(&owner(), "web", i);
        // 0.0.0.0/0 does not open IPv6.
        assert_eq!(s.admitting_rule6(&tcp6(out, a6, 80)), None);
        assert!(s.allows(&tcp(OUT, A, 80)));
        // IPv6 rules do not open IPv4; the first matching rule is named.
        assert!(!s.allows(&tcp(OUT, A, 22)));
        assert_eq!(s.admitting_rule6(&tcp6(out, a6, 22)), slot(1));
        assert_eq!(s.admitting_rule6(&tcp6(out, a6, 25)), slot(2));
        assert_eq!(
            s.admitting_rule6(&tcp6("2001:db9::1".parse().unwrap(), a6, 22)),
            None
        );
        let mut ping = tcp6(out, a6, 0);
        ping.key.proto = proto::ICMPV6;
        ping.l4 = L4::Icmp {
            ty: 128,
            code: 0,
            kind: IcmpKind::Request,
        };
        assert_eq!(s.admitting_rule6(&ping), slot(3));
        // An ICMPv4 packet type is not ICMPv6.
        ping.key.proto = proto::ICMP;
        assert_eq!(s.admitting_rule6(&ping), None);
        // Group sources match members by their IPv6 address.
        assert_eq!(s.admitting_rule6(&tcp6(b6, a6, 5432)), slot(4));
        assert_eq!(s.admitting_rule6(&tcp6(a6, a6, 5432)), None);
        // Egress: the default opens both families; without ::/0 IPv6 is closed.
        assert!(s.egress_allows6(&tcp6(a6, out, 1)));
        m.record_changes();
        m.revoke_rules_dir(
            &owner(),
            "web",
            &[crate::model::default_egress_rule6()],
            true,
        )
        .unwrap();
        m.authorize_rules_dir(
            &owner(),
            "web",
            &[grule(Proto::Tcp, Ports::Range(5432, 5432), "db")],
            true,
        )
        .unwrap();
        let changes = m.take_changes();
        c.apply(&m, &changes);
        for s in [c.snapshot(2), compile(&m, 2)] {
            assert!(s.egress_allows(&tcp(A, OUT, 1)), "IPv4 default kept");
            assert!(!s.egress_allows6(&tcp6(a6, out, 1)));
            assert!(s.egress_allows6(&tcp6(a6, b6, 5432)), "member of db");
            assert!(!s.egress_allows6(&tcp6(a6, b6, 5433)));
            assert!(s.egress_allows6(&tcp6(b6, out, 1)), "db keeps its default");
            assert!(s.egress_allows6(&tcp6(out, a6, 1)), "not an instance");
        }
    }

    #[test]
    fn new_flow_rule_is_egress_then_the_admitting_rule() {
        let mut m = model(
            &[
                ("web", vec![]),
                (
                    "db",
                    vec![
                        grule(Proto::Tcp, Ports::Range(5432, 5432), "web"),
                        rule(Proto::Tcp, Ports::Range(5432, 5433), "10.0.0.0/8"),
                    ],
                ),
            ],
            &[
                ("i-00000001", [10, 0, 0, 1], &["web"]),
                ("i-00000002", [10, 0, 0, 2], &["db"]),
                ("i-00000003", [10, 0, 0, 3], &["default"]),
            ],
        );
        let (web, db, other) = ([10, 0, 0, 1], [10, 0, 0, 2], [10, 0, 0, 3]);
        let pkts = [
            tcp(web, db, 5432),
            tcp(web, db, 5433),
            tcp(other, db, 5432),
            tcp(other, db, 5433),
            tcp(web, [8, 8, 8, 8], 443),
            tcp([8, 8, 8, 8], db, 5432),
            tcp(web, other, 22),
        ];
        let check = |snap: &Snapshot| {
            let mut seen = (0, 0);
            for p in &pkts {
                let want = if snap.egress_allows(p) {
                    Ok(snap.admitting_rule(p))
                } else {
                    Err(DropReason::NoEgressRule)
                };
                assert_eq!(snap.new_flow_rule(p, true), want, "{p:?}");
                assert_eq!(snap.new_flow_rule(p, false), Ok(snap.admitting_rule(p)));
                match want {
                    Err(_) => seen.0 += 1,
                    Ok(Some(_)) => seen.1 += 1,
                    Ok(None) => {}
                }
            }
            seen
        };
        let snap = compile(&m, 1);
        assert!(snap.egress_open_all);
        assert!(snap.egress_open6_all);
        assert_eq!(check(&snap), (0, 4));
        // web's egress restricted to db 5432: the flag goes, the rules decide.
        let o = owner();
        m.revoke_rules_dir(&o, "web", &crate::model::default_egress(), true)
            .expect("revoke default egress");
        m.authorize_rules_dir(
            &o,
            "web",
            &[grule(Proto::Tcp, Ports::Range(5432, 5432), "db")],
            true,
        )
        .expect("group destination");
        let snap = compile(&m, 2);
        assert!(!snap.egress_open_all);
        assert!(!snap.egress_open6_all);
        assert_eq!(check(&snap), (3, 3));
    }

    #[test]
    fn empty_snapshot_allows_nothing() {
        let s = Snapshot::empty();
        assert_eq!(s.generation(), 0);
        assert!(s.instances().is_empty());
        assert!(!s.allows(&tcp(OUT, A, 22)));
        assert_eq!(s.instance_by_ip(A.into()), None);
    }

    #[test]
    fn cidr_port_ranges() {
        let m = model(
            &[(
                "web",
                vec![
                    rule(Proto::Tcp, Ports::Range(80, 80), "0.0.0.0/0"),
                    rule(Proto::Tcp, Ports::Range(22, 22), "203.0.113.0/24"),
                    rule(Proto::Tcp, Ports::Range(8000, 8100), "10.0.0.0/8"),
                ],
            )],
            &[("i-a", A, &["web"])],
        );
        let s = compile(&m, 7);
        assert_eq!(s.generation(), 7);
        assert!(s.allows(&tcp(OUT, A, 80)));
        assert!(s.allows(&tcp([1, 2, 3, 4], A, 80)));
        assert!(!s.allows(&tcp(OUT, A, 81)));
        assert!(!s.allows(&tcp(OUT, A, 79)));
        assert!(s.allows(&tcp(OUT, A, 22)));
        assert!(!s.allows(&tcp([203, 0, 114, 1], A, 22)));
        assert!(s.allows(&tcp([10, 9, 9, 9], A, 8000)));
        assert!(s.allows(&tcp([10, 9, 9, 9], A, 8100)));
        assert!(!s.allows(&tcp([10, 9, 9, 9], A, 8101)));
        assert!(!s.allows(&tcp([11, 0, 0, 0], A, 8050)));
        // UDP to port 80 is not TCP.
        let mut u = tcp(OUT, A, 80);
        u.key.proto = proto::UDP;
        u.l4 = L4::Udp;
        assert!(!s.allows(&u));
        // Not an instance.
        assert!(!s.allows(&tcp(OUT, B, 80)));
    }

    #[test]
    fn overlapping_ranges_union_sources() {
        let m = model(
            &[(
                "g",
                vec![
                    rule(Proto::Udp, Ports::Range(1000, 2000), "10.0.0.0/24"),
                    rule(Proto::Udp, Ports::Range(1500, 2500), "10.0.1.0/24"),
                    rule(Proto::Udp, Ports::Range(0, 65535), "10.0.2.5/32"),
                ],
            )],
            &[("i-a", A, &["g"])],
        );
        let s = compile(&m, 1);
        let u = |src: [u8; 4], p: u16| {
            let mut x = tcp(src, A, p);
            x.key.proto = proto::UDP;
            x.l4 = L4::Udp;
            s.allows(&x)
        };
        assert!(u([10, 0, 0, 1], 1000));
        assert!(u([10, 0, 0, 1], 2000));
        assert!(!u([10, 0, 0, 1], 2001));
        assert!(!u([10, 0, 1, 1], 1499));
        assert!(u([10, 0, 1, 1], 1500));
        assert!(u([10, 0, 1, 1], 2500));
        assert!(u([10, 0, 2, 5], 0));
        assert!(u([10, 0, 2, 5], 65535));
        assert!(!u([10, 0, 2, 6], 65535));
    }

    #[test]
    fn group_sources_and_all_protocol() {
        let m = model(
            &[
                ("default", vec![grule(Proto::All, Ports::None, "default")]),
                (
                    "db",
                    vec![grule(Proto::Tcp, Ports::Range(5432, 5432), "app")],
                ),
                ("app", vec![]),
            ],
            &[
                ("i-a", A, &["default"]),
                ("i-b", B, &["app"]),
                ("i-c", C, &["db"]),
            ],
        );
        let s = compile(&m, 1);
        // app member B reaches db member C on 5432 only.
        assert!(s.allows(&tcp(B, C, 5432)));
        assert!(!s.allows(&tcp(B, C, 5433)));
        // A is not in app.
        assert!(!s.allows(&tcp(A, C, 5432)));
        // An outside address is never a group member.
        assert!(!s.allows(&tcp(OUT, C, 5432)));
        // default allows all from default members only: A → A only (A is the only member).
        assert!(s.allows(&tcp(A, A, 1)));
        assert!(s.allows(&icmp(A, A, 8, 0)));
        assert!(!s.allows(&tcp(B, A, 1)));
        // Other protocols through Proto::All.
        let mut gre = tcp(A, A, 0);
        gre.key.proto = 47;
        gre.l4 = L4::Other;
        assert!(s.allows(&gre));
        gre.key.src = B.into();
        assert!(!s.allows(&gre));
    }

    #[test]
    fn icmp_type_code_wildcards() {
        let m = model(
            &[(
                "g",
                vec![
                    rule(
                        Proto::Icmp,
                        Ports::Icmp {
                            ty: Some(8),
                            code: Some(0),
                        },
                        "10.0.0.0/8",
                    ),
                    rule(
                        Proto::Icmp,
                        Ports::Icmp {
                            ty: Some(3),
                            code: None,
                        },
                        "10.0.0.0/8",
                    ),
                    rule(
                        Proto::Icmp,
                        Ports::Icmp {
                            ty: None,
                            code: None,
                        },
                        "192.168.0.0/16",
                    ),
                ],
            )],
            &[("i-a", A, &["g"])],
        );
        let s = compile(&m, 1);
        let t = [10, 1, 1, 1];
        assert!(s.allows(&icmp(t, A, 8, 0)));
        assert!(!s.allows(&icmp(t, A, 8, 1)));
        assert!(s.allows(&icmp(t, A, 3, 0)));
        assert!(s.allows(&icmp(t, A, 3, 255)));
        assert!(!s.allows(&icmp(t, A, 4, 0)));
        assert!(!s.allows(&icmp(t, A, 2, 255)));
        assert!(s.allows(&icmp([192, 168, 3, 3], A, 200, 17)));
        // ICMP rules don't open TCP.
        assert!(!s.allows(&tcp([192, 168, 3, 3], A, 8)));
    }

    #[test]
    fn big_port_tables_use_the_block_index() {
        // 300 single-port rules over the whole port space, each from its own /32.
        let rules: Vec<Rule> = (0..300u32)
            .map(|i| {
                let port = (i * 217 + 5) as u16;
                let src = Ipv4Addr::from(0x0a00_0000 + i);
                rule(Proto::Tcp, Ports::Range(port, port), &format!("{src}/32"))
            })
            .collect();
        let m = model(&[("g", rules)], &[("i-a", A, &["g"])]);
        let s = compile(&m, 1);
        let t = &s.tables[0].ports[TCP_T];
        assert!(!t.top.is_empty());
        for i in 0..300u32 {
            let port = (i * 217 + 5) as u16;
            let src = (0x0a00_0000 + i).to_be_bytes();
            assert!(s.allows(&tcp(src, A, port)), "rule {i}");
            assert!(!s.allows(&tcp(src, A, port.wrapping_add(1))), "rule {i} +1");
            assert!(!s.allows(&tcp(src, A, port.wrapping_sub(1))), "rule {i} -1");
        }
        // Every key agrees with a direct search.
        for key in 0..=u16::MAX {
            let i = t.ivs.partition_point(|iv| iv.start <= key);
            assert_eq!(t.lookup(key), t.ivs[i - 1].set, "key {key}");
        }
    }

    #[test]
    fn later_fragments_never_match() {
        let m = model(
            &[("g", vec![rule(Proto::All, Ports::None, "0.0.0.0/0")])],
            &[("i-a", A, &["g"])],
        );
        let s = compile(&m, 1);
        let mut p = tcp(OUT, A, 80);
        assert!(s.allows(&p));
        p.frag = Frag::First { id: 9 };
        assert!(s.allows(&p));
        p.frag = Frag::Later { id: 9 };
        p.l4 = L4::Other;
        assert!(!s.allows(&p));
    }

    #[test]
    fn admitting_rule_names_the_first_matching_rule_in_describe_order() {
        // g: nested TCP ranges with different sources, a group source, an
        // `all` rule; h (second group of i-b): an overlapping rule.
        let g = vec![
            rule(Proto::Tcp, Ports::Range(20, 30), "10.0.0.0/8"),
            rule(Proto::Tcp, Ports::Range(22, 22), "0.0.0.0/0"),
            grule(Proto::Tcp, Ports::Range(22, 23), "h"),
            rule(Proto::All, Ports::None, "192.168.0.0/16"),
            rule(
                Proto::Icmp,
                Ports::Icmp {
                    ty: Some(8),
                    code: None,
                },
                "0.0.0.0/0",
            ),
        ];
        let h = vec![rule(Proto::Tcp, Ports::Range(22, 22), "0.0.0.0/0")];
        let m = model(
            &[("g", g), ("h", h)],
            &[
                ("i-a", A, &["g"]),
                ("i-b", B, &["h", "g"]),
                ("i-c", C, &["h"]),
            ],
        );
        let c = Compiler::new(&m);
        let mut c2 = c.clone();
        let s = c2.snapshot(1);
        let o = owner();
        let slot = |g: &str, i: usize| c.rule_slot(&o, g, i).unwrap();
        // 10.x to port 22: rules 0 and 1 match; the first (0) counts.
        assert_eq!(
            s.admitting_rule(&tcp([10, 0, 0, 1], A, 22)),
            Some(slot("g", 0))
        );
        // Outside 10/8 to 22: rule 1.
        assert_eq!(
            s.admitting_rule(&tcp([8, 8, 8, 8], A, 22)),
            Some(slot("g", 1))
        );
        // Port 23 from member C of h: only the group rule 2.
        assert_eq!(s.admitting_rule(&tcp(C, A, 23)), Some(slot("g", 2)));
        // Port 23 from outside: nothing.
        assert_eq!(s.admitting_rule(&tcp([8, 8, 8, 8], A, 23)), None);
        // The `all` rule for UDP, ICMP and other protocols from 192.168/16.
        let mut udp = tcp([192, 168, 1, 1], A, 5353);
        udp.key.proto = proto::UDP;
        udp.l4 = L4::Udp;
        assert_eq!(s.admitting_rule(&udp), Some(slot("g", 3)));
        let mut gre = udp;
        gre.key.proto = 47;
        gre.l4 = L4::Other;
        assert_eq!(s.admitting_rule(&gre), Some(slot("g", 3)));
        // ICMP echo from 192.168/16: rules 3 and 4 match; 3 comes first.
        assert_eq!(
            s.admitting_rule(&icmp([192, 168, 1, 1], A, 8, 0)),
            Some(slot("g", 3))
        );
        assert_eq!(
            s.admitting_rule(&icmp([8, 8, 8, 8], A, 8, 0)),
            Some(slot("g", 4))
        );
        // i-b's groups are kept sorted (g, h): g's rule 0 comes first for 22
        // from 10/8, h's rule for 22 from elsewhere... after g's rule 1.
        assert_eq!(
            s.admitting_rule(&tcp([10, 0, 0, 1], B, 22)),
            Some(slot("g", 0))
        );
        assert_eq!(
            s.admitting_rule(&tcp([8, 8, 8, 8], B, 22)),
            Some(slot("g", 1))
        );
        // i-c is in h alone.
        assert_eq!(
            s.admitting_rule(&tcp([8, 8, 8, 8], C, 22)),
            Some(slot("h", 0))
        );
        // The same answer as the first rule `trace` lists.
        for p in [
            tcp([10, 0, 0, 1], B, 22),
            tcp(C, A, 23),
            icmp([192, 168, 1, 1], A, 8, 0),
        ] {
            let first = crate::explain::matching_rules(&m, &p)
                .first()
                .map(|r| c.rule_slot(r.owner, r.group, r.index).unwrap());
            assert_eq!(s.admitting_rule(&p), first);
        }
        // Not an instance, later fragments: no rule.
        assert_eq!(
            s.admitting_rule(&tcp([10, 0, 0, 1], [10, 9, 9, 9], 22)),
            None
        );
        let mut later = tcp([10, 0, 0, 1], A, 22);
        later.frag = Frag::Later { id: 1 };
        assert_eq!(s.admitting_rule(&later), None);
        // Every slot is distinct and live.
        let all: BTreeSet<RuleSlot> = (0..5).map(|i| slot("g", i)).chain([slot("h", 0)]).collect();
        assert_eq!(all.len(), 6);
        assert!(all.iter().all(|s2| s.rule_layout()[s2.index()] != 0));
    }

    #[test]
    fn group_candidates_are_found_by_membership_bits_in_rule_order() {
        // Port 53 is covered by group-source rules in an order unlike the
        // groups' bit order (d before b before a), a group named twice, and
        // address ranges between them: the first matching rule is named
        // whichever way it is found.
        let g = vec![
            grule(Proto::Tcp, Ports::Range(50, 60), "d"),
            rule(Proto::Tcp, Ports::Range(53, 53), "10.0.0.0/8"),
            grule(Proto::Tcp, Ports::Range(53, 53), "b"),
            grule(Proto::Tcp, Ports::Range(53, 53), "d"),
            rule(Proto::Tcp, Ports::Range(53, 53), "172.31.0.0/16"),
            grule(Proto::Tcp, Ports::Range(53, 53), "a"),
        ];
        let ab: [u8; 4] = [172, 31, 0, 13];
        let m = model(
            &[("g", g), ("a", vec![]), ("b", vec![]), ("d", vec![])],
            &[
                ("i-g", A, &["g"]),
                ("i-a", B, &["a"]),
                ("i-d", C, &["d"]),
                ("i-ab", ab, &["a", "b"]),
            ],
        );
        let c = Compiler::new(&m);
        let s = c.clone().snapshot(1);
        let o = owner();
        let slot = |i: usize| c.rule_slot(&o, "g", i);
        // In a and b: b's rule (2) comes before a's (5) and the range (4).
        assert_eq!(s.admitting_rule(&tcp(ab, A, 53)), slot(2));
        // In d: its first rule (0), not the later one (3).
        assert_eq!(s.admitting_rule(&tcp(C, A, 53)), slot(0));
        // In a only: the range rule 4 comes before a's rule 5.
        assert_eq!(s.admitting_rule(&tcp(B, A, 53)), slot(4));
        assert_eq!(s.admitting_rule(&tcp([10, 1, 1, 1], A, 53)), slot(1));
        // Port 55: rule 0 alone.
        assert_eq!(s.admitting_rule(&tcp(C, A, 55)), slot(0));
        assert_eq!(s.admitting_rule(&tcp(ab, A, 55)), None);
        assert!(!s.allows(&tcp(ab, A, 55)));
    }

    #[test]
    fn long_candidate_lists_ask_the_set_then_scan() {
        // Nineteen rules cover port 5000 (more than SCAN_MAX), from different
        // sources: the first whose source matches is named; a source none
        // has gets nothing.
        let mut g: Vec<Rule> = (0..18u16)
            .map(|k| {
                rule(
                    Proto::Tcp,
                    Ports::Range(5000 - k, 5000 + k),
                    &format!("10.{k}.0.0/16"),
                )
            })
            .collect();
        g.push(grule(Proto::Tcp, Ports::Range(4000, 6000), "g"));
        let m = model(&[("g", g)], &[("i-a", A, &["g"]), ("i-b", B, &["g"])]);
        let c = Compiler::new(&m);
        let s = c.clone().snapshot(1);
        let o = owner();
        for k in 0..18u8 {
            let want = c.rule_slot(&o, "g", usize::from(k));
            assert_eq!(s.admitting_rule(&tcp([10, k, 1, 1], A, 5000)), want);
        }
        assert_eq!(s.admitting_rule(&tcp(B, A, 5000)), c.rule_slot(&o, "g", 18));
        assert_eq!(s.admitting_rule(&tcp([10, 99, 1, 1], A, 5000)), None);
        assert!(!s.allows(&tcp([10, 99, 1, 1], A, 5000)));
    }

    #[test]
    fn a_groups_first_and_last_rule_redo_the_lists_not_membership() {
        let o = owner();
        let mut m = model(
            &[
                (
                    "a",
                    vec![rule(Proto::Tcp, Ports::Range(80, 80), "10.0.0.0/8")],
                ),
                ("b", vec![]),
                ("c", vec![]),
            ],
            &[
                ("i-1", [172, 31, 0, 1], &["a", "b"]),
                ("i-2", [172, 31, 0, 2], &["b"]),
                ("i-3", [172, 31, 0, 3], &["a"]),
                ("i-4", [172, 31, 0, 4], &["a", "b"]),
            ],
        );
        let mut c = Compiler::new(&m);
        let r = [rule(Proto::Udp, Ports::Range(53, 53), "10.1.0.0/16")];
        let mut dns = tcp([10, 1, 2, 3], [172, 31, 0, 2], 53);
        dns.key.proto = proto::UDP;
        dns.l4 = L4::Udp;
        // b (with members) and c (none) gain their first rule, then lose it.
        for (step, (group, add)) in [("b", true), ("c", true), ("b", false), ("c", false)]
            .into_iter()
            .enumerate()
        {
            m.record_changes();
            if add {
                m.authorize_rules(&o, group, &r).expect("authorize");
            } else {
                m.revoke_rules(&o, group, &r).expect("revoke");
            }
            let bits = c.members.member_bits.clone();
            let ch = m.take_changes();
            c.apply(&m, &ch);
            let generation = step as u64 + 2;
            let (inc, full) = (c.snapshot(generation), compile(&m, generation));
            assert!(Arc::ptr_eq(&bits, &c.members.member_bits), "step {step}");
            assert_eq!(inc.instances(), full.instances(), "step {step}");
            assert_eq!(inc.lists, full.lists, "step {step}");
            assert_eq!(inc.policy_count(), full.policy_count(), "step {step}");
            assert_eq!(inc.allows(&dns), step < 2, "step {step}");
            assert_eq!(inc.allows(&dns), full.allows(&dns), "step {step}");
        }
    }

    #[test]
    fn rule_slots_survive_edits_and_revoked_slots_get_new_serials() {
        let g = vec![
            rule(Proto::Tcp, Ports::Range(22, 22), "0.0.0.0/0"),
            rule(Proto::Tcp, Ports::Range(80, 80), "0.0.0.0/0"),
        ];
        let h = vec![rule(Proto::Udp, Ports::Range(53, 53), "10.0.0.0/8")];
        let mut m = model(&[("g", g), ("h", h)], &[("i-a", A, &["g", "h"])]);
        m.record_changes();
        let mut c = Compiler::new(&m);
        let o = owner();
        let s1 = c.snapshot(1);
        let ssh = c.rule_slot(&o, "g", 0).unwrap();
        let web = c.rule_slot(&o, "g", 1).unwrap();
        let dns = c.rule_slot(&o, "h", 0).unwrap();
        let serial = |s: &Snapshot, slot: RuleSlot| s.rule_layout()[slot.index()];
        // An authorize on h: g's slots and serials do not move; the same
        // layout is not shared (h got a new slot).
        let more = rule(Proto::Tcp, Ports::Range(443, 443), "0.0.0.0/0");
        m.authorize_rules(&o, "h", std::slice::from_ref(&more))
            .unwrap();
        let ch = m.take_changes();
        c.apply(&m, &ch);
        let s2 = c.snapshot(2);
        assert_eq!(c.rule_slot(&o, "g", 0), Some(ssh));
        assert_eq!(c.rule_slot(&o, "g", 1), Some(web));
        assert_eq!(c.rule_slot(&o, "h", 0), Some(dns));
        let https = c.rule_slot(&o, "h", 1).unwrap();
        for slot in [ssh, web, dns] {
            assert_eq!(serial(&s1, slot), serial(&s2, slot));
        }
        assert!(!RuleLayout::ptr_eq(s1.rule_layout(), s2.rule_layout()));
        // A snapshot without slot changes shares the layout.
        assert!(RuleLayout::ptr_eq(
            s2.rule_layout(),
            c.snapshot(3).rule_layout()
        ));
        // Revoke g's first rule: 80 keeps its slot (its index moved to 0);
        // the freed slot is reused by the next new rule with a new serial.
        let ssh_rule = rule(Proto::Tcp, Ports::Range(22, 22), "0.0.0.0/0");
        m.revoke_rules(&o, "g", std::slice::from_ref(&ssh_rule))
            .unwrap();
        let ch = m.take_changes();
        c.apply(&m, &ch);
        let s4 = c.snapshot(4);
        assert_eq!(c.rule_slot(&o, "g", 0), Some(web));
        assert_eq!(serial(&s4, ssh), 0, "a revoked rule's slot is free");
        assert_eq!(s4.admitting_rule(&tcp([8, 8, 8, 8], A, 80)), Some(web));
        assert_eq!(s4.admitting_rule(&tcp([8, 8, 8, 8], A, 443)), Some(https));
        m.authorize_rules(&o, "g", std::slice::from_ref(&ssh_rule))
            .unwrap();
        let ch = m.take_changes();
        c.apply(&m, &ch);
        let s5 = c.snapshot(5);
        let again = c.rule_slot(&o, "g", 1).unwrap();
        assert_eq!(again, ssh, "lowest free slot reused");
        assert_ne!(serial(&s5, again), serial(&s1, ssh), "but as a new rule");
        assert_eq!(s5.admitting_rule(&tcp([8, 8, 8, 8], A, 22)), Some(again));
    }

    #[test]
    fn group_tables_are_shared_and_sets_deduplicated() {
        let rules = vec![
            rule(Proto::Tcp, Ports::Range(22, 22), "10.0.0.0/8"),
            rule(Proto::Tcp, Ports::Range(80, 80), "10.0.0.0/8"),
            rule(Proto::Udp, Ports::Range(53, 53), "10.0.0.0/8"),
        ];
        let m = model(
            &[("g", rules), ("h", vec![])],
            &[
                ("i-a", A, &["g"]),
                ("i-b", B, &["g"]),
                ("i-c", C, &["g", "h"]),
            ],
        );
        let s = compile(&m, 1);
        // One table for g; h has no rules, so no table and no list entry.
        assert_eq!(s.policy_count(), 1);
        assert_eq!(&*s.lists, &[0]);
        // All three instances share the one table.
        for i in s.instances() {
            assert_eq!(s.lists[i.list.0 as usize..][..i.list.1 as usize], [0]);
        }
        // Empty set + the one "10.0.0.0/8" set.
        assert_eq!(s.tables[0].sets.len(), 2);
        for ip in [A, B, C] {
            assert!(s.allows(&tcp([10, 0, 0, 1], ip, 22)));
            assert!(!s.allows(&tcp([10, 0, 0, 1], ip, 23)));
        }
    }

    #[test]
    fn adjacent_cidrs_merge_and_many_groups_bitset() {
        // 100 referenced groups → 2 words of bits.
        let mut groups: Vec<(String, Vec<Rule>)> = Vec::new();
        for i in 0..100 {
            groups.push((format!("g{i}"), vec![]));
        }
        groups.push((
            "dst".into(),
            vec![
                rule(Proto::Tcp, Ports::Range(1, 1), "10.0.0.0/25"),
                rule(Proto::Tcp, Ports::Range(1, 1), "10.0.0.128/25"),
            ]
            .into_iter()
            .chain((0..100).map(|i| grule(Proto::Tcp, Ports::Range(2, 2), &format!("g{i}"))))
            .collect(),
        ));
        let gref: Vec<(&str, Vec<Rule>)> = groups
            .iter()
            .map(|(n, r)| (n.as_str(), r.clone()))
            .collect();
        let m = model(
            &gref,
            &[
                ("i-a", A, &["dst"]),
                ("i-b", B, &["g99"]),
                ("i-c", C, &["g3"]),
            ],
        );
        let s = compile(&m, 1);
        assert_eq!(s.words, 2);
        assert!(s.allows(&tcp([10, 0, 0, 200], A, 1)));
        assert!(s.allows(&tcp([10, 0, 0, 0], A, 1)));
        assert!(!s.allows(&tcp([10, 0, 1, 0], A, 1)));
        assert!(s.allows(&tcp(B, A, 2)));
        assert!(s.allows(&tcp(C, A, 2)));
        assert!(!s.allows(&tcp(A, A, 2)));
        // The two /25 merged into one range.
        let list = s.instance(s.instance_by_ip(A.into()).unwrap()).list;
        assert_eq!(list.1, 1);
        let table = &s.tables[s.lists[list.0 as usize] as usize];
        let set = table.ports[TCP_T].lookup(1);
        assert_eq!(table.sets[set as usize].r_len, 1);
    }

    #[test]
    fn instance_index_finds_every_instance() {
        let insts: Vec<(String, [u8; 4])> = (0..500u32)
            .map(|i| (format!("i-{i:08x}"), (0xac1f_0000u32 + i * 7).to_be_bytes()))
            .collect();
        let mut m = model(&[("default", vec![])], &[]);
        for (n, (id, ip)) in insts.iter().enumerate() {
            m.add_instance(Instance {
                id: id.clone(),
                owner: owner(),
                mac: [2, 0, 0, 0, (n >> 8) as u8, n as u8],
                ip: Ipv4Addr::from(*ip),
                groups: vec!["default".into()],
            })
            .expect("valid instance");
        }
        let s = compile(&m, 3);
        for (id, ip) in &insts {
            let i = s.instance_by_ip(Ipv4Addr::from(*ip)).expect("present");
            assert_eq!(&*s.instance(i).id, id.as_str());
        }
        assert_eq!(s.instance_by_ip(Ipv4Addr::new(172, 31, 0, 1)), None);
        assert_eq!(s.instances().len(), 500);
    }

    #[test]
    fn dual_stack_instances_are_found_by_their_slaac_address() {
        let mut m = model(&[("default", vec![])], &[]);
        let p: ipnet::Ipv6Net = "fd00:5a::/64".parse().unwrap();
        m.set_subnet6(Some(p)).unwrap();
        for n in 0..50u8 {
            m.add_instance(Instance {
                id: format!("i-{n:08x}"),
                owner: owner(),
                mac: [2, 0, 0, 0, 1, n],
                ip: Ipv4Addr::new(10, 0, 1, n),
                groups: vec!["default".into()],
            })
            .expect("valid instance");
        }
        let s = compile(&m, 1);
        for n in 0..50u8 {
            let ip6 = crate::model::eui64_address(p, [2, 0, 0, 0, 1, n]);
            let i = s.instance_by_ip6(ip6).expect("present");
            assert_eq!(s.instance(i).ip, Ipv4Addr::new(10, 0, 1, n));
            assert_eq!(s.instance(i).ip6, Some(ip6));
            assert_eq!(s.instance_ip4_by_ip6(ip6), Some(Ipv4Addr::new(10, 0, 1, n)));
        }
        let other = crate::model::eui64_address(p, [2, 0, 0, 0, 2, 0]);
        assert_eq!(s.instance_by_ip6(other), None);
        assert_eq!(s.instance_ip4_by_ip6(other), None);
        // The same interface identifier under another prefix is no instance.
        let elsewhere =
            crate::model::eui64_address("fd00:1::/64".parse().expect("prefix"), [2, 0, 0, 0, 1, 7]);
        assert_eq!(s.instance_by_ip6(elsewhere), None);
        assert_eq!(compile(&model(&[], &[]), 1).instance_by_ip6(other), None);
    }

    #[test]
    fn any_group_of_the_destination_allows() {
        let m = model(
            &[
                (
                    "web",
                    vec![rule(Proto::Tcp, Ports::Range(80, 80), "0.0.0.0/0")],
                ),
                (
                    "ssh",
                    vec![rule(Proto::Tcp, Ports::Range(22, 22), "10.0.0.0/8")],
                ),
                ("peers", vec![grule(Proto::All, Ports::None, "peers")]),
                ("none", vec![]),
            ],
            &[
                ("i-a", A, &["none", "peers", "ssh", "web"]),
                ("i-b", B, &["peers"]),
                ("i-c", C, &["web"]),
            ],
        );
        // A state naming a group that does not exist: the model's methods refuse
        // it, a hand-edited state file could hold it.
        let mut v = serde_json::to_value(&m).unwrap();
        v["instances"]["i-c"]["groups"] = serde_json::json!(["ghost", "web"]);
        let m: Model = serde_json::from_value(v).unwrap();
        assert_eq!(m.instance("i-c").unwrap().groups, ["ghost", "web"]);
        let s = compile(&m, 1);
        // web, ssh, peers: three tables; "none" and the unknown "ghost" have none.
        assert_eq!(s.policy_count(), 3);
        let a = s.instance(s.instance_by_ip(A.into()).unwrap());
        assert_eq!(a.list.1, 3);
        // Each group opens its own part; the destination allows the union.
        assert!(s.allows(&tcp(OUT, A, 80)));
        assert!(s.allows(&tcp([10, 1, 2, 3], A, 22)));
        assert!(!s.allows(&tcp(OUT, A, 22)));
        assert!(s.allows(&tcp(B, A, 9999)));
        assert!(s.allows(&icmp(B, A, 8, 0)));
        assert!(!s.allows(&tcp(C, A, 9999)));
        assert!(!s.allows(&icmp(OUT, A, 8, 0)));
        // The union is per destination: B only has peers, C only web.
        assert!(s.allows(&tcp(A, B, 9999)));
        assert!(!s.allows(&tcp(OUT, B, 80)));
        assert!(s.allows(&tcp(OUT, C, 80)));
        assert!(!s.allows(&tcp(A, C, 9999)));
    }

    #[test]
    fn memory_grows_with_rules_not_group_combinations() {
        // 20 groups of 200 rules; instances in every 3-group combination (1140
        // distinct group sets). Merged per-set tables would hold 1140 × 600 rules.
        let groups: Vec<(String, Vec<Rule>)> = (0..20u32)
            .map(|g| {
                let rules = (0..200u32)
                    .map(|j| {
                        let net = Ipv4Addr::from(0x0a00_0000 | (g * 256 + j) << 8);
                        let port = (1000 + j * 7) as u16;
                        rule(
                            Proto::Tcp,
                            Ports::Range(port, port + 2),
                            &format!("{net}/24"),
                        )
                    })
                    .collect();
                (format!("g{g}"), rules)
            })
            .collect();
        let gref: Vec<(&str, Vec<Rule>)> = groups
            .iter()
            .map(|(n, r)| (n.as_str(), r.clone()))
            .collect();
        let mut m = model(&gref, &[]);
        let mut n = 0u32;
        for x in 0..20 {
            for y in x + 1..20 {
                for z in y + 1..20 {
                    let id = format!("i-{n:08x}");
                    let mut gs = vec![format!("g{x}"), format!("g{y}"), format!("g{z}")];
                    gs.sort();
                    m.add_instance(Instance {
                        id,
                        owner: owner(),
                        mac: [2, 0, 0, 0, (n >> 8) as u8, n as u8],
                        ip: Ipv4Addr::from(0xac1f_0100 + n),
                        groups: gs,
                    })
                    .expect("valid instance");
                    n += 1;
                }
            }
        }
        assert_eq!(n, 1140);
        let s = compile(&m, 1);
        assert_eq!(s.policy_count(), 20);
        assert_eq!(s.lists.len(), 1140 * 3);
        // 20 × 200 rules: a few hundred KiB at most, not 1140 merged policies.
        assert!(s.memory_bytes() < 1 << 20, "{}", s.memory_bytes());
        // Spot-check: instance 0 is in g0, g1, g2.
        let dst = [172, 31, 1, 0];
        assert!(s.allows(&tcp([10, 0, 5, 9], dst, 1000 + 5 * 7 + 2)));
        assert!(s.allows(&tcp([10, 1, 1, 9], dst, 1007)));
        assert!(!s.allows(&tcp([10, 0, 5, 9], dst, 1000 + 5 * 7 + 3)));
        // g3's sources don't reach instance 0.
        let g3_src = Ipv4Addr::from(0x0a00_0000u32 | (3 * 256 + 5) << 8).octets();
        assert!(!s.allows(&tcp(g3_src, dst, 1000 + 5 * 7)));
    }

    #[test]
    fn snapshot_is_send_sync() {
        fn check<T: Send + Sync>() {}
        check::<Snapshot>();
    }
}
