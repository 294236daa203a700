//! The address families connection tracking knows, as one trait: how a
//! family's flow keys fit a table slot, and which snapshot queries judge its
//! packets. The tracking code ([`super::policy`], [`super::table`]) is written
//! once, generic over [`Family`], and monomorphised per family, so IPv4 runs
//! exactly the code it ran before IPv6 existed.
//!
//! Each family has its own table ([`Conntrack`] holds both): an IPv6 key (two
//! 128-bit addresses) does not fit the 16 key bytes of an IPv4 slot, and
//! widening every slot would double IPv4's memory and cache lines. IPv4 slots
//! stay 32 bytes (`k = [ip_a << 32 | ip_b, ports/proto/kind]`); IPv6 slots are 64
//! (`k = [ports/proto/kind, a_hi, a_lo, b_hi, b_lo]`, the most distinctive word
//! first because lookups pre-check word 0 before the seqlock read).

use std::fmt::Debug;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicU64, Ordering};

use super::Conntrack;
use super::table::{KIND_FLOW, KIND_FRAG, Slot, Table};
use crate::compile::{InstIdx, RuleSlot, Snapshot};
use crate::{DropReason, FlowKey, IpAddress, Packet, proto};

mod sealed {
    pub trait Sealed {}
    impl Sealed for std::net::Ipv4Addr {}
    impl Sealed for std::net::Ipv6Addr {}
}

/// An address family whose packets [`Conntrack`] tracks: [`Ipv4Addr`] or
/// [`Ipv6Addr`] (sealed). The methods are the tracking code's per-family
/// parts; callers only name the trait in bounds (`judge_rule::<F>` infers it
/// from the packet).
pub trait Family: IpAddress + sealed::Sealed {
    /// A canonical table key.
    #[doc(hidden)]
    type Key: Copy + Eq + Debug + Send + Sync;
    /// The key's storage in a slot.
    #[doc(hidden)]
    type Atoms: Send + Sync;
    /// A 4 KiB-aligned page of [`Family::PAGE_SLOTS`] slots.
    #[doc(hidden)]
    type Page: Send + Sync;
    /// Slots per 4 KiB page.
    #[doc(hidden)]
    const PAGE_SLOTS: usize;
    /// The family's ICMP protocol number.
    const ICMP: u8;

    #[doc(hidden)]
    fn new_page() -> Self::Page;
    #[doc(hidden)]
    fn page_slots(p: &Self::Page) -> &[Slot<Self>];
    /// Slot `idx % PAGE_SLOTS` of a page (an array index: no bounds check).
    #[doc(hidden)]
    fn slot_in(p: &Self::Page, idx: usize) -> &Slot<Self>;
    #[doc(hidden)]
    fn empty_atoms() -> Self::Atoms;
    #[doc(hidden)]
    fn load(a: &Self::Atoms) -> Self::Key;
    #[doc(hidden)]
    fn store(a: &Self::Atoms, k: Self::Key);
    /// Word 0 of a stored key (relaxed), for the cheap pre-check.
    #[doc(hidden)]
    fn first_word(a: &Self::Atoms) -> u64;
    #[doc(hidden)]
    fn key_word0(k: &Self::Key) -> u64;
    #[doc(hidden)]
    fn key_hash(k: &Self::Key, seed: u64) -> usize;
    /// Canonical key of a flow and whether `key.src` is endpoint `a`.
    #[doc(hidden)]
    fn flow_key(key: &FlowKey<Self>) -> (Self::Key, bool);
    /// Key of a fragment train.
    #[doc(hidden)]
    fn frag_key(key: &FlowKey<Self>, id: u32) -> Self::Key;
    /// The original-direction flow key of a canonical flow key.
    #[doc(hidden)]
    fn original(k: Self::Key, orig_a: bool) -> FlowKey<Self>;
    /// This family's table of `ct`.
    #[doc(hidden)]
    fn table(ct: &Conntrack) -> &Table<Self>;
    /// The local instance with this address (`Snapshot::instance_by_ip`/`_ip6`).
    #[doc(hidden)]
    fn instance(snap: &Snapshot, ip: Self) -> Option<InstIdx>;
    /// `Snapshot::admitting_rule`/`admitting_rule6`.
    #[doc(hidden)]
    fn admitting_rule(snap: &Snapshot, pkt: &Packet<Self>) -> Option<RuleSlot>;
    /// `Snapshot::egress_allows`/`egress_allows6`.
    #[doc(hidden)]
    fn egress_allows(snap: &Snapshot, pkt: &Packet<Self>) -> bool;
    /// A new flow's egress check (when `egress`: the source is local) then
    /// its admitting rule (`Snapshot::new_flow_rule` for IPv4).
    #[doc(hidden)]
    fn new_flow_rule(
        snap: &Snapshot,
        pkt: &Packet<Self>,
        egress: bool,
    ) -> Result<Option<RuleSlot>, DropReason>;
    /// The IPv4 address whose quota counter an entry charged to the instance
    /// at `ip` uses: one counter per instance whatever the family.
    #[doc(hidden)]
    fn quota_ip(snap: &Snapshot, ip: Self) -> Option<Ipv4Addr>;
}

/// A 4 KiB-aligned page of slots (the `Family::Page` of each family).
#[doc(hidden)]
#[repr(C, align(4096))]
pub struct Aligned<T>(pub(super) T);

/// IPv4 table key: `k0 = ip_a << 32 | ip_b`, `k1 = port_a << 48 | port_b << 32 |
/// proto << 8 | KIND_FLOW` (a train: `k0 = src << 32 | dst`, `k1 = id << 48 |
/// proto << 8 | KIND_FRAG`).
#[doc(hidden)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Key {
    pub(super) k0: u64,
    pub(super) k1: u64,
}

/// IPv6 table key: `[ports/proto/kind, a_hi, a_lo, b_hi, b_lo]` with word 0 as
/// in IPv4's `k1` (a train: `[id << 32 | KIND_FRAG, src_hi, src_lo, dst_hi,
/// dst_lo]`, no protocol: see [`crate::Frag`]).
#[doc(hidden)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Key6(pub(super) [u64; 5]);

const PAGE4: usize = 4096 / 32;
const PAGE6: usize = 4096 / 64;

impl Family for Ipv4Addr {
    type Key = Key;
    type Atoms = [AtomicU64; 2];
    type Page = Aligned<[Slot<Ipv4Addr>; PAGE4]>;
    const PAGE_SLOTS: usize = PAGE4;
    const ICMP: u8 = proto::ICMP;

    fn new_page() -> Self::Page {
        Aligned(std::array::from_fn(|_| Slot::empty()))
    }
    #[inline(always)]
    fn page_slots(p: &Self::Page) -> &[Slot<Self>] {
        &p.0
    }
    #[inline(always)]
    fn slot_in(p: &Self::Page, idx: usize) -> &Slot<Self> {
        &p.0[idx % PAGE4]
    }
    fn empty_atoms() -> Self::Atoms {
        [AtomicU64::new(0), AtomicU64::new(0)]
    }
    #[inline(always)]
    fn load(a: &Self::Atoms) -> Key {
        Key {
            k0: a[0].load(Ordering::Relaxed),
            k1: a[1].load(Ordering::Relaxed),
        }
    }
    #[inline(always)]
    fn store(a: &Self::Atoms, k: Key) {
        a[0].store(k.k0, Ordering::Relaxed);
        a[1].store(k.k1, Ordering::Relaxed);
    }
    #[inline(always)]
    fn first_word(a: &Self::Atoms) -> u64 {
        a[0].load(Ordering::Relaxed)
    }
    #[inline(always)]
    fn key_word0(k: &Key) -> u64 {
        k.k0
    }
    #[inline(always)]
    fn key_hash(k: &Key, seed: u64) -> usize {
        mix(k.k0, k.k1, seed)
    }
    #[inline(always)]
    fn flow_key(key: &FlowKey) -> (Key, bool) {
        let s = u64::from(u32::from(key.src)) << 16 | u64::from(key.sport);
        let d = u64::from(u32::from(key.dst)) << 16 | u64::from(key.dport);
        let src_is_a = s <= d;
        let (a, b) = if src_is_a { (s, d) } else { (d, s) };
        let k0 = (a >> 16) << 32 | (b >> 16);
        let k1 = (a & 0xffff) << 48 | (b & 0xffff) << 32 | u64::from(key.proto) << 8 | KIND_FLOW;
        (Key { k0, k1 }, src_is_a)
    }
    #[inline(always)]
    fn frag_key(key: &FlowKey, id: u32) -> Key {
        Key {
            k0: u64::from(u32::from(key.src)) << 32 | u64::from(u32::from(key.dst)),
            k1: u64::from(id) << 48 | u64::from(key.proto) << 8 | KIND_FRAG,
        }
    }
    fn original(k: Key, orig_a: bool) -> FlowKey {
        let ip_a = Ipv4Addr::from((k.k0 >> 32) as u32);
        let ip_b = Ipv4Addr::from(k.k0 as u32);
        orient(ip_a, ip_b, k.k1, orig_a)
    }
    #[inline(always)]
    fn table(ct: &Conntrack) -> &Table<Self> {
        &ct.v4
    }
    #[inline(always)]
    fn instance(snap: &Snapshot, ip: Self) -> Option<InstIdx> {
        snap.instance_by_ip(ip)
    }
    #[inline(always)]
    fn admitting_rule(snap: &Snapshot, pkt: &Packet) -> Option<RuleSlot> {
        snap.admitting_rule(pkt)
    }
    #[inline(always)]
    fn egress_allows(snap: &Snapshot, pkt: &Packet) -> bool {
        snap.egress_allows(pkt)
    }
    #[inline(always)]
    fn new_flow_rule(
        snap: &Snapshot,
        pkt: &Packet,
        egress: bool,
    ) -> Result<Option<RuleSlot>, DropReason> {
        snap.new_flow_rule(pkt, egress)
    }
    #[inline(always)]
    fn quota_ip(snap: &Snapshot, ip: Self) -> Option<Ipv4Addr> {
        snap.instance_by_ip(ip).map(|_| ip)
    }
}

impl Family for Ipv6Addr {
    type Key = Key6;
    type Atoms = [AtomicU64; 5];
    type Page = Aligned<[Slot<Ipv6Addr>; PAGE6]>;
    const PAGE_SLOTS: usize = PAGE6;
    const ICMP: u8 = proto::ICMPV6;

    fn new_page() -> Self::Page {
        Aligned(std::array::from_fn(|_| Slot::empty()))
    }
    #[inline(always)]
    fn page_slots(p: &Self::Page) -> &[Slot<Self>] {
        &p.0
    }
    #[inline(always)]
    fn slot_in(p: &Self::Page, idx: usize) -> &Slot<Self> {
        &p.0[idx % PAGE6]
    }
    fn empty_atoms() -> Self::Atoms {
        std::array::from_fn(|_| AtomicU64::new(0))
    }
    #[inline(always)]
    fn load(a: &Self::Atoms) -> Key6 {
        Key6(std::array::from_fn(|i| a[i].load(Ordering::Relaxed)))
    }
    #[inline(always)]
    fn store(a: &Self::Atoms, k: Key6) {
        for (a, w) in a.iter().zip(k.0) {
            a.store(w, Ordering::Relaxed);
        }
    }
    #[inline(always)]
    fn first_word(a: &Self::Atoms) -> u64 {
        a[0].load(Ordering::Relaxed)
    }
    #[inline(always)]
    fn key_word0(k: &Key6) -> u64 {
        k.0[0]
    }
    #[inline(always)]
    fn key_hash(k: &Key6, seed: u64) -> usize {
        // Each endpoint's address words through one seeded folded multiply
        // (both operands masked by the seed, so no chosen word zeroes a
        // product and colliding keys cannot be chosen without the seed; the
        // endpoints with different masks, so swapping them changes the
        // hash), then the IPv4 finaliser with the ports word. Two
        // independent multiplies where a chain over the four words took four
        // dependent steps.
        let s2 = seed ^ 0xA076_1D64_78BD_642F;
        let s3 = seed.rotate_left(32) ^ 0xE703_7ED1_A0B4_28DB;
        let a = fold_mul(k.0[1] ^ seed, k.0[2] ^ s2);
        let b = fold_mul(k.0[3] ^ s3, k.0[4] ^ s2.rotate_left(32));
        mix(a ^ b.rotate_left(32), k.0[0], seed)
    }
    #[inline(always)]
    fn flow_key(key: &FlowKey<Ipv6Addr>) -> (Key6, bool) {
        let s = (u128::from(key.src), key.sport);
        let d = (u128::from(key.dst), key.dport);
        let src_is_a = s <= d;
        let (a, b) = if src_is_a { (s, d) } else { (d, s) };
        let w0 =
            u64::from(a.1) << 48 | u64::from(b.1) << 32 | u64::from(key.proto) << 8 | KIND_FLOW;
        let k = Key6([
            w0,
            (a.0 >> 64) as u64,
            a.0 as u64,
            (b.0 >> 64) as u64,
            b.0 as u64,
        ]);
        (k, src_is_a)
    }
    #[inline(always)]
    fn frag_key(key: &FlowKey<Ipv6Addr>, id: u32) -> Key6 {
        let (s, d) = (u128::from(key.src), u128::from(key.dst));
        Key6([
            u64::from(id) << 32 | KIND_FRAG,
            (s >> 64) as u64,
            s as u64,
            (d >> 64) as u64,
            d as u64,
        ])
    }
    fn original(k: Key6, orig_a: bool) -> FlowKey<Ipv6Addr> {
        let w = &k.0;
        let ip_a = Ipv6Addr::from(u128::from(w[1]) << 64 | u128::from(w[2]));
        let ip_b = Ipv6Addr::from(u128::from(w[3]) << 64 | u128::from(w[4]));
        orient(ip_a, ip_b, w[0], orig_a)
    }
    #[inline(always)]
    fn table(ct: &Conntrack) -> &Table<Self> {
        &ct.v6
    }
    #[inline(always)]
    fn instance(snap: &Snapshot, ip: Self) -> Option<InstIdx> {
        snap.instance_by_ip6(ip)
    }
    #[inline(always)]
    fn admitting_rule(snap: &Snapshot, pkt: &Packet<Ipv6Addr>) -> Option<RuleSlot> {
        snap.admitting_rule6(pkt)
    }
    #[inline(always)]
    fn egress_allows(snap: &Snapshot, pkt: &Packet<Ipv6Addr>) -> bool {
        snap.egress_allows6(pkt)
    }
    #[inline(always)]
    fn new_flow_rule(
        snap: &Snapshot,
        pkt: &Packet<Ipv6Addr>,
        egress: bool,
    ) -> Result<Option<RuleSlot>, DropReason> {
        snap.new_flow_rule6(pkt, egress)
    }
    #[inline(always)]
    fn quota_ip(snap: &Snapshot, ip: Self) -> Option<Ipv4Addr> {
        snap.instance_ip4_by_ip6(ip)
    }
}

/// The 128-bit product of `x` and `y`, its halves folded by xor.
#[inline(always)]
fn fold_mul(x: u64, y: u64) -> u64 {
    let p = u128::from(x) * u128::from(y);
    (p as u64) ^ ((p >> 64) as u64)
}

/// The seeded hash of two key words (IPv4's two, or IPv6's five folded).
#[inline(always)]
fn mix(k0: u64, k1: u64, seed: u64) -> usize {
    let mut h = (k0 ^ seed).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    h ^= k1.wrapping_add(seed.rotate_left(32));
    h = h.wrapping_mul(0xD6E8_FEB8_6659_FD93);
    h ^= h >> 32;
    h = h.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (h ^ (h >> 29)) as usize
}

/// The flow key from endpoint `a` to `b` (or back) given the ports/proto word.
fn orient<A: Copy>(ip_a: A, ip_b: A, ports: u64, orig_a: bool) -> FlowKey<A> {
    let port_a = (ports >> 48) as u16;
    let port_b = (ports >> 32) as u16;
    let proto = (ports >> 8) as u8;
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
