//! Flow logs in the AWS VPC Flow Logs default format (version 2):
//!
//! ```text
//! version account-id interface-id srcaddr dstaddr srcport dstport protocol packets bytes start end action log-status
//! 2 111122223333 eni-0a1b2c3d 172.31.0.10 172.31.0.11 40312 22 6 10 1234 1733461200 1733461203 ACCEPT OK
//! ```
//!
//! Contract:
//! * What is logged: the security-group verdict of every IPv4 and IPv6 packet
//!   that reached it (IPv6 addresses in `srcaddr`/`dstaddr` as AWS writes
//!   them, ICMPv6 as protocol 58; neighbor discovery and MLD, which the switch
//!   answers or absorbs itself, are not flows), as one record per flow (5-tuple, one direction) per interface
//!   per aggregation interval, with the packets, the bytes (IPv4 total lengths;
//!   a TSO super-frame counts as the segments it stands for) and the first and
//!   last second a packet was seen. Like AWS, a packet is recorded on each
//!   instance interface it crosses: leaving instance A on A's interface, arriving
//!   at instance B on B's (the uplink has no interface: traffic to and from it is
//!   logged on the instance side). The sender's record says `REJECT` when its
//!   egress rules refused the packet (`NoEgressRule`: then there is no
//!   receiver's record, the packet never got there) or the connection table
//!   refused the flow (`ConntrackFull`/`ConntrackQuota`), else `ACCEPT`; the
//!   receiver's record carries the verdict (`REJECT` for `NoRule`, `Revoked`, unrelated ICMP errors, orphan
//!   fragments and the table limits). Frames dropped before the verdict
//!   (spoofing, broadcast, malformed, unknown destination) are not flow-logged:
//!   they are in the drop counters and `capture --drops`. ICMP and other
//!   protocols are logged with ports 0, as AWS does.
//! * Identities: `account-id` is the instance's owner, `interface-id` is
//!   `eni-` followed by the hex digits of the instance id (`i-0a1b2c3d` →
//!   `eni-0a1b2c3d`): stable for the instance's life and reversible.
//! * `log-status`: `OK` for flow records; `NODATA` once per interval for every
//!   attached instance with no record in it; `SKIPDATA` for an interface some of
//!   whose flows were not recorded in the interval (fields 4-11 and 13 are `-`,
//!   as in AWS), because a worker's table was full or because of the REJECT
//!   bound below.
//! * Hot path ([`Recorder::record`], [`Recorder::record6`]): each worker owns
//!   two preallocated sets of open-addressing tables ([`Tables`]: one
//!   [`FlowTable`] per family) of `flows_per_worker` flows each (by default
//!   32,768 flows in 65,536 slots of 32 bytes, 2 MiB, for IPv4 and of 64 bytes,
//!   4 MiB, for IPv6: two 128-bit addresses do not fit an IPv4 slot, and
//!   widening those would double IPv4's memory and cache lines). The table
//!   code is written once, generic over [`LogFamily`]. An IPv6 entry also
//!   holds the IPv4 addresses of the instances it was sent by and to: an
//!   interface is named by its instance's IPv4 address in both families
//!   ([`FlowRecord::iface`]), so the bounds, `NODATA` and `SKIPDATA` are per
//!   interface whatever the family. One
//!   entry per 5-tuple stands for both records a packet makes (the sender's
//!   and the receiver's interface are its source and destination addresses),
//!   so a packet costs one hash and a short probe in the worker's own table,
//!   whose first slot the staged burst prefetched ([`Recorder::prefetch`],
//!   [`Recorder::prefetch6`]).
//!   No lock, no allocation, no shared atomic, no syscall. Packets of one
//!   entry saturate at 2^32 - 1 per interval. At the first wake-up after an
//!   interval boundary ([`Recorder::tick`]) the worker swaps its table for the
//!   spare one the logger returned and hands the full one over through a
//!   bounded channel (`try_send`: lock-free, no allocation, once per interval).
//!   If the logger has not returned the spare yet, the worker keeps filling the
//!   same table (records keep their own first/last times).
//! * Bounds: a worker records at most `flows_per_worker` flows per interval and
//!   at most `reject_limit` REJECT flows per interface per interval; the logger
//!   writes at most `reject_limit` REJECT records per interface per interval
//!   (merged over the workers). Everything beyond is counted and reported as a
//!   `SKIPDATA` record of the interface, so a flood of rejected packets with
//!   random ports costs at most `reject_limit` + 1 lines per interface per
//!   interval (sent by an instance, it also leaves ACCEPT records on the
//!   sender's interface, bounded by the workers' tables). The file sink
//!   rotates at `max_bytes` (`FILE` → `FILE.1` → … `FILE.keep`, the oldest
//!   deleted): the log never takes more than `(keep + 1) × max_bytes` of disk
//!   (a path that is not a regular file, such as a FIFO or `/dev/null`, is
//!   written to without rotation). Every file starts with the header line of
//!   field names, as the files AWS delivers to S3 do.
//! * Times: `start`/`end` are unix seconds of the first and last packet of the
//!   flow in the interval (the datapath's coarse one-second clock).
//! * The logger thread ([`spawn`]) flushes at every interval boundary plus a
//!   grace period (a parked worker wakes at least every
//!   [`crate::worker::LONG_PARK_MS`]); a table handed over late is written with
//!   the next flush. At shutdown the workers hand over what they hold and the
//!   logger writes it.

use std::fmt::Debug;
use std::hash::Hash;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};

use filter::{DropReason, FlowKey, IpAddress, proto};

/// The header line: the field names of the default format.
pub const HEADER: &str = "version account-id interface-id srcaddr dstaddr srcport dstport protocol packets bytes start end action log-status";

/// Shortest aggregation interval accepted (AWS offers 60 and 600 s; shorter
/// ones are for labs and tests).
pub const MIN_INTERVAL_SECS: u32 = 1;
/// Longest aggregation interval accepted.
pub const MAX_INTERVAL_SECS: u32 = 3600;
/// Interfaces a worker tracks per interval (for the REJECT bound and skip
/// counts); skips of further interfaces are reported without an interface.
const IFACES_PER_WORKER: usize = 1024;

/// Where records go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FlowLogSink {
    /// Standard output (no rotation).
    Stdout,
    /// A file, appended to, rotated at `max_bytes`.
    File(PathBuf),
}

/// Flow-log settings (`sgswitch up --flow-log ...`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlowLogConfig {
    pub sink: FlowLogSink,
    /// Aggregation interval, seconds ([`MIN_INTERVAL_SECS`]..=[`MAX_INTERVAL_SECS`]).
    pub interval_secs: u32,
    /// Rotate the file before it would grow beyond this many bytes.
    pub max_bytes: u64,
    /// Rotated files kept (`FILE.1` .. `FILE.keep`); 0 = truncate in place.
    pub keep: u32,
    /// REJECT records per interface per interval; further rejected flows are
    /// counted into the interface's `SKIPDATA` record.
    pub reject_limit: u32,
    /// Flows one worker aggregates per interval (each of its two tables).
    pub flows_per_worker: usize,
}

impl FlowLogConfig {
    /// Defaults: 600 s (the AWS default), 64 MiB files, 4 rotated files kept,
    /// 1,000 REJECT records per interface per interval, 32,768 flows per worker.
    pub fn new(sink: FlowLogSink) -> FlowLogConfig {
        FlowLogConfig {
            sink,
            interval_secs: 600,
            max_bytes: 64 << 20,
            keep: 4,
            reject_limit: 1000,
            flows_per_worker: 1 << 15,
        }
    }

    /// Check the values; the error names the bad one.
    pub fn validate(&self) -> Result<(), String> {
        if !(MIN_INTERVAL_SECS..=MAX_INTERVAL_SECS).contains(&self.interval_secs) {
            return Err(format!(
                "interval {} s is outside {MIN_INTERVAL_SECS}..={MAX_INTERVAL_SECS}",
                self.interval_secs
            ));
        }
        if self.max_bytes < 4096 {
            return Err(format!(
                "max bytes {} is below the minimum of 4096",
                self.max_bytes
            ));
        }
        if self.flows_per_worker == 0 || self.flows_per_worker > 1 << 24 {
            return Err(format!(
                "flows per worker {} is outside 1..={}",
                self.flows_per_worker,
                1 << 24
            ));
        }
        Ok(())
    }
}

/// The verdict a record carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum FlowAction {
    Accept = 0,
    Reject = 1,
}

impl FlowAction {
    pub fn as_str(self) -> &'static str {
        match self {
            FlowAction::Accept => "ACCEPT",
            FlowAction::Reject => "REJECT",
        }
    }
}

/// Whether a drop reason is a security-group / connection-table verdict (a
/// `REJECT` record) rather than a drop before the verdict (not logged).
#[inline]
pub fn is_verdict(r: DropReason) -> bool {
    matches!(
        r,
        DropReason::NoRule
            | DropReason::NoEgressRule
            | DropReason::Revoked
            | DropReason::UnrelatedIcmpError
            | DropReason::UnmatchedFragment
            | DropReason::ConntrackFull
            | DropReason::ConntrackQuota
    )
}

/// Which records one packet makes, and their actions: on the sender's
/// interface (the source address is a local instance's: egress), on the
/// receiver's (the destination is: ingress), or both. One table entry per
/// packet stands for both records (the logger writes them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct On(u8);

impl On {
    const SRC: u8 = 1;
    const DST: u8 = 2;
    const SRC_REJECT: u8 = 4;
    const DST_REJECT: u8 = 8;

    /// The records of a packet with `verdict`, sent by a local instance
    /// (`src`) and/or to one (`dst`). The sender's record says REJECT when
    /// its own egress rules refused the packet (which then never reached the
    /// receiver: no record there, as in AWS) or the connection table's limits
    /// stopped it; otherwise the receiver's carries the verdict.
    #[inline]
    pub fn new(src: bool, dst: bool, verdict: Result<(), DropReason>) -> On {
        let (src_reject, dst_reject, dst) = match verdict {
            Ok(()) => (false, false, dst),
            Err(DropReason::ConntrackFull | DropReason::ConntrackQuota) => (true, true, dst),
            Err(DropReason::NoEgressRule) => (true, false, false),
            Err(_) => (false, true, dst),
        };
        let bit = |set: bool, b: u8| if set { b } else { 0 };
        On(bit(src, Self::SRC)
            | bit(dst, Self::DST)
            | bit(src && src_reject, Self::SRC_REJECT)
            | bit(dst && dst_reject, Self::DST_REJECT))
    }

    /// No record at all (neither side is a local instance).
    #[inline]
    pub fn is_none(self) -> bool {
        self.0 & (Self::SRC | Self::DST) == 0
    }

    fn rejects(self) -> bool {
        self.0 & (Self::SRC_REJECT | Self::DST_REJECT) != 0
    }

    /// The records: (on the source's interface?, action).
    fn records(self) -> impl Iterator<Item = (bool, FlowAction)> {
        let act = |r: bool| {
            if r {
                FlowAction::Reject
            } else {
                FlowAction::Accept
            }
        };
        let src = (self.0 & Self::SRC != 0).then(|| (true, act(self.0 & Self::SRC_REJECT != 0)));
        let dst = (self.0 & Self::DST != 0).then(|| (false, act(self.0 & Self::DST_REJECT != 0)));
        src.into_iter().chain(dst)
    }
}

/// Packets and bytes on the wire of an IPv4 frame: `ip_bytes` from the IPv4
/// header on, `hdr` bytes of IPv4 + L4 headers, and the sender's GSO segment
/// size (0 = not a super-frame).
#[inline]
pub fn wire_size(ip_bytes: usize, hdr: usize, gso_size: u16) -> (u32, u64) {
    let payload = ip_bytes.saturating_sub(hdr);
    if gso_size == 0 || payload <= usize::from(gso_size) {
        return (1, ip_bytes as u64);
    }
    let segs = payload.div_ceil(usize::from(gso_size));
    (segs as u32, (segs * hdr + payload) as u64)
}

/// An address family flow logs aggregate: how its addresses sit in a table
/// key ([`Ipv4Addr`]: 32 bits, its interfaces are its addresses; [`Ipv6Addr`]:
/// 128 bits and the two interfaces' IPv4 addresses beside them).
pub trait LogFamily: IpAddress {
    /// An address as stored.
    type Bits: Copy + Default + Eq + Ord + Hash + Debug;
    /// The interfaces stored beside the addresses (none for IPv4, whose
    /// source-checked addresses are its instances').
    type Ifaces: Copy + Default + Eq + Ord + Hash + Debug;
    fn bits(self) -> Self::Bits;
    fn from_bits(b: Self::Bits) -> Self;
    /// The two addresses folded into 64 bits (hashed further by [`Key::hash`]).
    fn pair(src: Self::Bits, dst: Self::Bits) -> u64;
    /// The interfaces of a packet sent from `src_if` to `dst_if` (the
    /// instances' IPv4 addresses; anything where that side is no instance).
    fn ifaces(src_if: Ipv4Addr, dst_if: Ipv4Addr) -> Self::Ifaces;
    /// The IPv4 address naming the interface of one side of an entry.
    fn iface(src: Self::Bits, dst: Self::Bits, ifaces: Self::Ifaces, src_side: bool) -> u32;
}

impl LogFamily for Ipv4Addr {
    type Bits = u32;
    type Ifaces = ();
    #[inline(always)]
    fn bits(self) -> u32 {
        u32::from(self)
    }
    #[inline(always)]
    fn from_bits(b: u32) -> Ipv4Addr {
        Ipv4Addr::from(b)
    }
    #[inline(always)]
    fn pair(src: u32, dst: u32) -> u64 {
        u64::from(src) << 32 | u64::from(dst)
    }
    #[inline(always)]
    fn ifaces(_: Ipv4Addr, _: Ipv4Addr) {}
    #[inline(always)]
    fn iface(src: u32, dst: u32, _: (), src_side: bool) -> u32 {
        if src_side { src } else { dst }
    }
}

impl LogFamily for Ipv6Addr {
    type Bits = u128;
    type Ifaces = [u32; 2];
    #[inline(always)]
    fn bits(self) -> u128 {
        u128::from(self)
    }
    #[inline(always)]
    fn from_bits(b: u128) -> Ipv6Addr {
        Ipv6Addr::from(b)
    }
    #[inline(always)]
    fn pair(src: u128, dst: u128) -> u64 {
        let fold = |a: u128| (a >> 64) as u64 ^ a as u64;
        fold(src).rotate_left(32) ^ fold(dst)
    }
    #[inline(always)]
    fn ifaces(src_if: Ipv4Addr, dst_if: Ipv4Addr) -> [u32; 2] {
        [u32::from(src_if), u32::from(dst_if)]
    }
    #[inline(always)]
    fn iface(_: u128, _: u128, ifaces: [u32; 2], src_side: bool) -> u32 {
        ifaces[usize::from(!src_side)]
    }
}

/// Aggregation key: 5-tuple, the interfaces where the family needs them,
/// and the records it makes ([`On`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(C)]
struct Key<B, I> {
    src: B,
    dst: B,
    ifaces: I,
    sport: u16,
    dport: u16,
    proto: u8,
    on: u8,
}

impl<B: Copy, I: Copy> Key<B, I> {
    /// The key of a packet's flow: ICMP and other protocols without ports.
    #[inline]
    fn of<A: LogFamily<Bits = B, Ifaces = I>>(key: &FlowKey<A>, ifaces: I, on: u8) -> Self {
        let ports = matches!(key.proto, proto::TCP | proto::UDP);
        Key {
            src: key.src.bits(),
            dst: key.dst.bits(),
            ifaces,
            sport: if ports { key.sport } else { 0 },
            dport: if ports { key.dport } else { 0 },
            proto: key.proto,
            on,
        }
    }

    /// Hash of the 5-tuple (not of `on`: a flow's entries stay neighbours),
    /// murmur3's 64-bit finaliser over the packed fields. The table is the
    /// worker's own: a crafted collision only lengthens probes in one interval.
    #[inline]
    fn hash<A: LogFamily<Bits = B, Ifaces = I>>(&self) -> usize {
        let a = A::pair(self.src, self.dst);
        let b = u64::from(self.sport) << 24 | u64::from(self.dport) << 8 | u64::from(self.proto);
        let mut h = a ^ b.rotate_left(29);
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        h ^= h >> 33;
        h as usize
    }
}

/// One flow: 32 bytes for IPv4 (two per cache line), 64 for IPv6.
#[derive(Clone, Copy, Debug, Default)]
#[repr(C, align(32))]
struct Slot<B, I> {
    key: Key<B, I>,
    /// 0 = empty slot (every entry has at least one packet); saturates.
    packets: u32,
    /// Seconds of the first and last packet after the table's `base`
    /// (saturating at 18 h: a table is handed over every interval).
    first: u16,
    last: u16,
    bytes: u64,
}

const _: () = assert!(std::mem::size_of::<Slot<u32, ()>>() == 32);
const _: () = assert!(std::mem::size_of::<Slot<u128, [u32; 2]>>() == 64);

#[derive(Clone, Copy, Debug, Default)]
struct IfaceSlot {
    /// 0 = empty slot (0.0.0.0 is never an instance's address).
    ip: u32,
    rejects: u32,
    skipped: u64,
    first: u32,
    last: u32,
}

/// One worker's aggregation table of one family for one interval: fixed
/// capacity, allocated once, cleared by the logger (in time proportional to
/// what was used).
pub struct FlowTable<A: LogFamily = Ipv4Addr> {
    slots: Box<[Slot<A::Bits, A::Ifaces>]>,
    /// Indices of the used slots, in insertion order (capacity `max_flows`).
    used: Vec<u32>,
    max_flows: usize,
    /// Datapath second the slots' times count from (the first record's).
    base: u32,
    ifaces: Box<[IfaceSlot]>,
    ifaces_used: Vec<u32>,
    reject_limit: u32,
    /// Packets skipped when the interface table was full too.
    unattributed: u64,
}

/// One record of a [`FlowTable`] (or merged over workers): a flow on one
/// interface, named by its instance's IPv4 address in both families.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowRecord<A = Ipv4Addr> {
    pub iface: Ipv4Addr,
    pub key: FlowKey<A>,
    pub action: FlowAction,
    pub packets: u64,
    pub bytes: u64,
    /// Datapath seconds of the first and last packet.
    pub first: u32,
    pub last: u32,
}

impl FlowTable {
    /// Add `packets`/`bytes` of IPv4 flow `key`, making the records `on`
    /// says, at datapath second `now` (its interfaces are its addresses).
    #[inline]
    pub fn record(&mut self, key: &FlowKey, on: On, packets: u32, bytes: u64, now: u32) {
        self.record_at(key, (), on, packets, bytes, now);
    }
}

impl FlowTable<Ipv6Addr> {
    /// Add `packets`/`bytes` of IPv6 flow `key` sent from the interface of
    /// the instance with IPv4 address `src_if` to that of `dst_if` (either
    /// is ignored where `on` makes no record on that side).
    #[inline]
    pub fn record6(
        &mut self,
        key: &FlowKey<Ipv6Addr>,
        (src_if, dst_if): (Ipv4Addr, Ipv4Addr),
        on: On,
        packets: u32,
        bytes: u64,
        now: u32,
    ) {
        let ifaces = Ipv6Addr::ifaces(src_if, dst_if);
        self.record_at(key, ifaces, on, packets, bytes, now);
    }
}

impl<A: LogFamily> FlowTable<A> {
    /// A table of `max_flows` flows (slots: the next power of two of 4/3 of
    /// that, so probes stay short) and `reject_limit` rejected flows per
    /// interface.
    pub fn new(max_flows: usize, reject_limit: u32) -> FlowTable<A> {
        let slots = (max_flows + max_flows / 3 + 1).next_power_of_two();
        FlowTable {
            slots: vec![Slot::default(); slots].into_boxed_slice(),
            used: Vec::with_capacity(max_flows),
            max_flows,
            base: 0,
            ifaces: vec![IfaceSlot::default(); IFACES_PER_WORKER].into_boxed_slice(),
            ifaces_used: Vec::with_capacity(IFACES_PER_WORKER * 3 / 4),
            reject_limit,
            unattributed: 0,
        }
    }

    /// Nothing recorded or skipped.
    pub fn is_empty(&self) -> bool {
        self.used.is_empty() && self.ifaces_used.is_empty() && self.unattributed == 0
    }

    /// Add `packets`/`bytes` of flow `key` (interfaces `ifaces`), making the
    /// records `on` says, at datapath second `now`.
    #[inline]
    fn record_at(
        &mut self,
        key: &FlowKey<A>,
        ifaces: A::Ifaces,
        on: On,
        packets: u32,
        bytes: u64,
        now: u32,
    ) {
        let k = Key::of(key, ifaces, on.0);
        if self.used.is_empty() {
            self.base = now;
        }
        let t = now.saturating_sub(self.base).min(u32::from(u16::MAX)) as u16;
        let mask = self.slots.len() - 1;
        let mut i = k.hash::<A>() & mask;
        loop {
            let s = &mut self.slots[i];
            if s.packets == 0 {
                break;
            }
            if s.key == k {
                s.packets = s.packets.saturating_add(packets);
                s.bytes += bytes;
                s.last = t;
                return;
            }
            i = (i + 1) & mask;
        }
        // A new flow. A rejected one counts against the receiver's bound (the
        // sender's when the receiver is not ours).
        let charged = A::iface(k.src, k.dst, k.ifaces, on.0 & On::DST == 0);
        if self.used.len() >= self.max_flows || (on.rejects() && !self.admit_reject(charged)) {
            self.skip(&k, on, packets, now);
            return;
        }
        self.slots[i] = Slot {
            key: k,
            packets: packets.max(1),
            first: t,
            last: t,
            bytes,
        };
        self.used.push(i as u32);
    }

    /// Address of the slot where flow `key`'s probe starts (for a prefetch).
    #[inline]
    fn slot_addr(&self, key: &FlowKey<A>) -> usize {
        let i = Key::of(key, A::Ifaces::default(), 0).hash::<A>() & (self.slots.len() - 1);
        self.slots.as_ptr() as usize + i * std::mem::size_of::<Slot<A::Bits, A::Ifaces>>()
    }

    /// The interface's slot, inserted if new; `None` if the interface table
    /// is full.
    #[inline]
    fn iface(&mut self, ip: u32) -> Option<&mut IfaceSlot> {
        let mask = self.ifaces.len() - 1;
        let mut i = (u64::from(ip).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40) as usize & mask;
        loop {
            let s = self.ifaces[i];
            if s.ip == ip {
                return Some(&mut self.ifaces[i]);
            }
            if s.ip == 0 {
                if self.ifaces_used.len() >= self.ifaces_used.capacity() {
                    return None;
                }
                self.ifaces_used.push(i as u32);
                self.ifaces[i].ip = ip;
                return Some(&mut self.ifaces[i]);
            }
            i = (i + 1) & mask;
        }
    }

    #[inline]
    fn admit_reject(&mut self, ip: u32) -> bool {
        let limit = self.reject_limit;
        match self.iface(ip) {
            Some(s) if s.rejects < limit => {
                s.rejects += 1;
                true
            }
            _ => false,
        }
    }

    /// Count a packet not recorded on each interface it would have had a
    /// record on.
    #[cold]
    fn skip(&mut self, k: &Key<A::Bits, A::Ifaces>, on: On, packets: u32, now: u32) {
        for (src_side, _) in on.records() {
            let ip = A::iface(k.src, k.dst, k.ifaces, src_side);
            match self.iface(ip) {
                Some(s) => {
                    if s.skipped == 0 {
                        s.first = now;
                    }
                    s.skipped += u64::from(packets);
                    s.last = now;
                }
                None => self.unattributed += u64::from(packets),
            }
        }
    }

    /// The records, in insertion order (an entry with both sides gives the
    /// sender's record, then the receiver's).
    pub fn flows(&self) -> impl Iterator<Item = FlowRecord<A>> + '_ {
        self.used.iter().flat_map(move |&i| {
            let s = self.slots[i as usize];
            let key = FlowKey {
                src: A::from_bits(s.key.src),
                dst: A::from_bits(s.key.dst),
                proto: s.key.proto,
                sport: s.key.sport,
                dport: s.key.dport,
            };
            let base = self.base;
            On(s.key.on)
                .records()
                .map(move |(src_side, action)| FlowRecord {
                    iface: Ipv4Addr::from(A::iface(s.key.src, s.key.dst, s.key.ifaces, src_side)),
                    key,
                    action,
                    packets: u64::from(s.packets),
                    bytes: s.bytes,
                    first: base + u32::from(s.first),
                    last: base + u32::from(s.last),
                })
        })
    }

    /// Packets skipped per interface: (interface, packets, first, last).
    pub fn skipped(&self) -> impl Iterator<Item = (Ipv4Addr, u64, u32, u32)> + '_ {
        self.ifaces_used
            .iter()
            .map(|&i| self.ifaces[i as usize])
            .filter(|s| s.skipped > 0)
            .map(|s| (Ipv4Addr::from(s.ip), s.skipped, s.first, s.last))
    }

    /// Packets skipped that no interface could be charged with.
    pub fn unattributed(&self) -> u64 {
        self.unattributed
    }

    /// Forget everything (cost: the slots used).
    pub fn clear(&mut self) {
        for &i in &self.used {
            self.slots[i as usize] = Slot::default();
        }
        self.used.clear();
        for &i in &self.ifaces_used {
            self.ifaces[i as usize] = IfaceSlot::default();
        }
        self.ifaces_used.clear();
        self.unattributed = 0;
    }
}

/// One interval of a worker: a table per family, handed over together.
pub struct Tables {
    pub v4: FlowTable<Ipv4Addr>,
    pub v6: FlowTable<Ipv6Addr>,
}

impl Tables {
    /// Tables of `max_flows` flows each (see [`FlowTable::new`]).
    pub fn new(max_flows: usize, reject_limit: u32) -> Tables {
        Tables {
            v4: FlowTable::new(max_flows, reject_limit),
            v6: FlowTable::new(max_flows, reject_limit),
        }
    }

    /// Nothing recorded or skipped in either family.
    pub fn is_empty(&self) -> bool {
        self.v4.is_empty() && self.v6.is_empty()
    }

    /// Forget everything.
    pub fn clear(&mut self) {
        self.v4.clear();
        self.v6.clear();
    }
}

/// A worker's side: the tables it fills, the spare ones, and the channels to
/// the logger. Owned by the worker (in its [`crate::pipeline::Scratch`]).
pub struct Recorder {
    w: usize,
    active: Box<Tables>,
    spare: Option<Box<Tables>>,
    back: Receiver<Box<Tables>>,
    to_logger: SyncSender<(usize, Box<Tables>)>,
    interval: u32,
    /// Datapath second at which the current interval ends.
    deadline: u32,
}

impl Recorder {
    /// Record one IPv4 packet (see [`FlowTable::record`]).
    #[inline]
    pub fn record(&mut self, key: &FlowKey, on: On, packets: u32, bytes: u64, now: u32) {
        self.active.v4.record(key, on, packets, bytes, now);
    }

    /// Record one IPv6 packet (see [`FlowTable::record6`]).
    #[inline]
    pub fn record6(
        &mut self,
        key: &FlowKey<Ipv6Addr>,
        ifaces: (Ipv4Addr, Ipv4Addr),
        on: On,
        packets: u32,
        bytes: u64,
        now: u32,
    ) {
        self.active.v6.record6(key, ifaces, on, packets, bytes, now);
    }

    /// Prefetch the slot IPv4 flow `key` will be recorded in (the staged
    /// burst's prepare step: the cache misses of a burst's new flows overlap).
    #[inline]
    pub fn prefetch(&self, key: &FlowKey) {
        crate::sys::prefetch(
            self.active.v4.slot_addr(key),
            std::mem::size_of::<Slot<u32, ()>>(),
        );
    }

    /// [`Recorder::prefetch`] of IPv6 flow `key`: its 64-byte slot (which
    /// may straddle two cache lines: slots are 32-byte aligned).
    #[inline]
    pub fn prefetch6(&self, key: &FlowKey<Ipv6Addr>) {
        let addr = self.active.v6.slot_addr(key);
        let skew = addr & (crate::sys::CACHE_LINE - 1);
        crate::sys::prefetch(
            addr - skew,
            skew + std::mem::size_of::<
                Slot<<Ipv6Addr as LogFamily>::Bits, <Ipv6Addr as LogFamily>::Ifaces>,
            >(),
        );
    }

    /// Once per wake-up: at the first call after an interval boundary, hand the
    /// table over (if it holds anything) and continue with the spare.
    #[inline]
    pub fn tick(&mut self, now: u32) {
        if now < self.deadline {
            return;
        }
        self.deadline = (now / self.interval + 1) * self.interval;
        if !self.active.is_empty() {
            self.hand_over();
        }
    }

    /// Hand the table over now (the interval boundary, or shutdown). Without a
    /// spare back from the logger the worker keeps filling the same table.
    #[cold]
    pub fn hand_over(&mut self) {
        let Some(spare) = self.spare.take().or_else(|| self.back.try_recv().ok()) else {
            return;
        };
        let full = std::mem::replace(&mut self.active, spare);
        match self.to_logger.try_send((self.w, full)) {
            Ok(()) => {}
            // Cannot happen while the logger runs (the channel holds every
            // table there is); after it stopped, the records are dropped.
            Err(TrySendError::Full((_, mut t)) | TrySendError::Disconnected((_, mut t))) => {
                t.clear();
                self.spare = Some(t);
            }
        }
    }
}

/// The logger's side of the channels (see [`channels`]).
pub struct Collector {
    from_workers: Receiver<(usize, Box<Tables>)>,
    back: Vec<SyncSender<Box<Tables>>>,
}

impl Collector {
    /// Every table handed over so far.
    fn drain(&self) -> Vec<(usize, Box<Tables>)> {
        self.from_workers.try_iter().collect()
    }

    /// Give an emptied table back to its worker.
    fn give_back(&self, w: usize, mut t: Box<Tables>) {
        t.clear();
        if let Some(tx) = self.back.get(w) {
            let _ = tx.try_send(t);
        }
    }
}

/// The recorders of `workers` workers (two tables each) and the collector
/// their tables are handed to.
pub fn channels(cfg: &FlowLogConfig, workers: usize) -> (Vec<Recorder>, Collector) {
    let (to_logger, from_workers) = sync_channel(2 * workers);
    let mut recs = Vec::with_capacity(workers);
    let mut back = Vec::with_capacity(workers);
    for w in 0..workers {
        let (tx, rx) = sync_channel(2);
        let table = || Box::new(Tables::new(cfg.flows_per_worker, cfg.reject_limit));
        recs.push(Recorder {
            w,
            active: table(),
            spare: Some(table()),
            back: rx,
            to_logger: to_logger.clone(),
            interval: cfg.interval_secs,
            deadline: cfg.interval_secs,
        });
        back.push(tx);
    }
    (recs, Collector { from_workers, back })
}

mod logger;

pub use logger::{FLUSH_GRACE, FlowLogger, FlushSummary, Writer, base_unix, eni_id, spawn};

#[cfg(test)]
mod tests;
