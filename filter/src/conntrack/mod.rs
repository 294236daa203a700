//! Connection tracking: the stateful half of the security-group verdict.
//!
//! # Contract
//!
//! [`Conntrack::judge`] decides one packet against the current [`Snapshot`] and the
//! table of tracked flows (VPC form: egress rules of the sending instance,
//! then ingress rules of the receiving one, stateful both ways):
//!
//! 0. **Egress.** A packet that would open a new flow (no tracked flow, rule 4)
//!    from a local instance passes only if
//!    [`Snapshot::egress_allows`](crate::compile::Snapshot::egress_allows)
//!    (one of its groups' egress rules matches destination, protocol and port;
//!    a flag answers for groups with the default "all to 0.0.0.0/0"), else
//!    [`DropReason::NoEgressRule`]; then ingress is judged as below (packets to
//!    non-instances, the uplink, by egress alone). Replies of tracked flows need
//!    no egress rule. Revalidation (rule 3) re-checks the original direction's
//!    egress too, and a revoked flow's new SYN must pass egress again. Egress
//!    rule hits are not counted per rule.
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
//!    `snap.allows(pkt)` or [`DropReason::NoRule`] (asked as
//!    [`Snapshot::admitting_rule`]: [`Conntrack::judge_rule`] returns the rule
//!    that decided, [`Pass::Rule`], for per-rule counters; so do rules 2 and 3
//!    when they ask the rules). ICMP replies and "other" ICMP
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
//! **IPv6** ([`Conntrack::judge6`], [`Conntrack::judge_rule6`] on a
//! [`crate::Packet6`]; [`Conntrack::judge_rule_in`] for code generic over
//! [`Family`]): the same rules
//! 0–5, with the snapshot's IPv6 queries ([`Snapshot::instance_by_ip6`],
//! [`Snapshot::admitting_rule6`], [`Snapshot::egress_allows6`]) and ICMPv6 in
//! place of ICMP: echo request/reply are the queries, destination unreachable,
//! packet too big, time exceeded and parameter problem the errors related to a
//! tracked flow (so a Packet Too Big about an allowed flow reaches its sender;
//! neighbor discovery and MLD are "other" ICMPv6, judged by rules only). A
//! fragment train is keyed by `(src, dst, id)` without the protocol (see
//! [`Frag`]). IPv6 entries live in their own table (64-byte slots, capacity
//! [`CtConfig::capacity6`], see `family.rs`) and are charged to the same
//! per-instance quota counter as the instance's IPv4 entries.
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
//!   counters; the IPv6 table has `next_pow2(2 × capacity6)` slots of 64 bytes
//!   (by default a quarter of the flows: 32 MiB). No allocation after
//!   [`Conntrack::new`].
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

// Targets of the intra-doc links above.
#[cfg(doc)]
use crate::compile::Snapshot;
#[cfg(doc)]
use crate::{DropReason, Frag, IcmpKind};

mod family;
mod policy;
mod table;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests6;

pub use family::Family;
pub use policy::{CtConfig, Pass, RevokeMode, Timeouts, error_fits_flow};
pub use table::{BUCKET, BUCKET_BYTES, BUCKET_BYTES6, Conntrack, PROBE, QUOTA_SLOTS};
