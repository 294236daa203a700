//! IPv6 group tables: what [`super::Snapshot::admitting_rule6`] and
//! [`super::Snapshot::egress_allows6`] search.
//!
//! # Contract
//!
//! * A [`Table6`] holds the IPv6 side of one group's rules (those with
//!   [`Rule::applies_v6`]: IPv6 CIDRs, `icmpv6`, and `all`/`tcp`/`udp` from a
//!   group), compiled beside its IPv4 [`super::GroupTable`] into the same
//!   slot (ingress) or egress slot, and shared by snapshots until the group's
//!   rules change, as the IPv4 tables are. IPv4 tables and lookups are
//!   untouched by it.
//! * [`Table6::first`] answers "which rule of this group, first in the
//!   group's order, admits this packet" (its [`RuleSlot`]; egress tables
//!   carry no slots and are asked only whether one matches).
//!
//! # Structure (the IPv4 interval idea, with 128-bit addresses)
//!
//! * Per protocol (TCP, UDP, ICMPv6 with key `type << 8 | code`) the
//!   elementary intervals of the 16-bit key space ([`PortTable`], with its
//!   block index over big tables), each naming a deduplicated *candidate
//!   list*: the rules covering that interval. `all` rules are in all three
//!   and form the list of other protocols.
//! * A list's IPv6 CIDR candidates are merged into *elementary address
//!   intervals*: sorted `u128` starts (the first 0), each labelled with the
//!   first rule (position in the list and slot) whose CIDR covers it, so one
//!   binary search gives the first matching CIDR rule.
//! * A list's group-source candidates: one entry per referenced group (its
//!   first rule), in rule order; the source instance's membership bits (the
//!   same bits as IPv4, looked up once per packet) are tested only for the
//!   entries before the first CIDR match.
//!
//! Cost of a lookup: one interval search (one 256-key block), one binary
//! search over at most `2R + 1` address intervals, and at most one bit test
//! per distinct group named by the covering rules (not per rule):
//! `O(log R + groups named)` per destination group, whatever the rule
//! count. Memory: per list at most `2k + 1` address intervals for its `k`
//! CIDR candidates (`O(R²)` per group only for pathological nested rule
//! sets, as for IPv4).

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use super::{GroupKey, ICMP_T, Iv, NO_BIT, PortTable, TCP_T, UDP_T, icmp_range};
use crate::model::{Ports, Proto, Rule, Source};
use crate::{L4, Packet6, proto};

use super::attrib::RuleSlot;

/// Position of "no candidate".
const NONE: u32 = u32::MAX;

/// One rule's IPv6 source: an inclusive address range or a group bit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Src6 {
    Range(u128, u128),
    Group(u32),
}

/// One candidate list: its address intervals `addrs[a_off..][..a_len]` and
/// group candidates `groups[g_off..][..g_len]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct List6 {
    a_off: u32,
    a_len: u32,
    g_off: u32,
    g_len: u32,
}

/// An elementary address interval from `start` to the next one's start: the
/// first CIDR candidate covering it (`pos == NONE`: none).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct AddrIv {
    start: u128,
    pos: u32,
    slot: RuleSlot,
}

/// A group-source candidate: the group's bit and its first rule in the list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct GroupCand {
    bit: u32,
    pos: u32,
    slot: RuleSlot,
}

/// The IPv6 side of one group's rules (see the module docs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Table6 {
    /// Indexed by [`TCP_T`], [`UDP_T`], [`ICMP_T`] (ICMPv6); an interval's
    /// `set` is a list id.
    ports: [PortTable; 3],
    /// List of other IP protocols (`all` rules).
    other: u32,
    lists: Arc<[List6]>,
    addrs: Arc<[AddrIv]>,
    groups: Arc<[GroupCand]>,
}

/// The port table and key of an IPv6 packet (`None`: another protocol).
#[inline]
pub(super) fn proto_key(pkt: &Packet6) -> (Option<usize>, u16) {
    match (pkt.key.proto, pkt.l4) {
        (proto::TCP, _) => (Some(TCP_T), pkt.key.dport),
        (proto::UDP, _) => (Some(UDP_T), pkt.key.dport),
        (proto::ICMPV6, L4::Icmp { ty, code, .. }) => {
            (Some(ICMP_T), u16::from(ty) << 8 | u16::from(code))
        }
        _ => (None, 0),
    }
}

impl Table6 {
    /// Compile the IPv6 side of `rules` (slots by rule index; group sources
    /// take their bits from `refs`). Rules that do not apply to IPv6 are
    /// left out (their slots are never named).
    pub(super) fn build(
        rules: &[Rule],
        slots: &[RuleSlot],
        refs: &HashMap<GroupKey, (u32, u32)>,
    ) -> Table6 {
        let mut srcs = Vec::with_capacity(rules.len());
        let mut entries: [Vec<(u16, u16, u32)>; 3] = [Vec::new(), Vec::new(), Vec::new()];
        let mut other = Vec::new();
        for (n, r) in rules.iter().enumerate() {
            let n = n as u32;
            let src = match &r.source {
                Source::Cidr6(net) => {
                    Src6::Range(u128::from(net.network()), u128::from(net.broadcast()))
                }
                Source::Group { owner, group } => Src6::Group(
                    refs.get(&(owner.clone(), group.clone()))
                        .map_or(NO_BIT, |e| e.0),
                ),
                Source::Cidr(_) => Src6::Group(NO_BIT),
            };
            srcs.push(src);
            if !r.applies_v6() {
                continue;
            }
            let all = (0, u16::MAX, n);
            match (r.proto, r.ports) {
                (Proto::All, _) => {
                    for t in &mut entries {
                        t.push(all);
                    }
                    other.push(n);
                }
                (Proto::Tcp, Ports::Range(lo, hi)) => entries[TCP_T].push((lo, hi, n)),
                (Proto::Udp, Ports::Range(lo, hi)) => entries[UDP_T].push((lo, hi, n)),
                (Proto::Icmpv6, Ports::Icmp { ty, code }) => {
                    let (lo, hi) = icmp_range(ty, code);
                    entries[ICMP_T].push((lo, hi, n));
                }
                (Proto::Tcp, _) => entries[TCP_T].push(all),
                (Proto::Udp, _) => entries[UDP_T].push(all),
                (Proto::Icmpv6, _) => entries[ICMP_T].push(all),
                (Proto::Icmp, _) => {}
            }
        }
        let mut b = Builder {
            srcs: &srcs,
            slots,
            dedup: HashMap::new(),
            lists: Vec::new(),
            addrs: Vec::new(),
            groups: Vec::new(),
        };
        // List 0: no candidate.
        b.intern(&[]);
        let [t, u, i] = entries;
        let ports = [b.table(&t), b.table(&u), b.table(&i)];
        let other = b.intern(&other);
        Table6 {
            ports,
            other,
            lists: b.lists.into(),
            addrs: b.addrs.into(),
            groups: b.groups.into(),
        }
    }

    /// Allows nothing.
    pub(super) fn empty() -> Table6 {
        Table6::build(&[], &[], &HashMap::new())
    }

    /// The first rule (in the group's order) admitting a packet of table `p`
    /// (`None`: another protocol) with key `key` from `src`; `member` gives
    /// the source instance's membership words (asked only when a group
    /// candidate could come first; empty for a non-instance).
    #[inline]
    pub(super) fn first<'a>(
        &self,
        p: Option<usize>,
        key: u16,
        src: u128,
        mut member: impl FnMut() -> &'a [u64],
    ) -> Option<RuleSlot> {
        let id = match p {
            Some(p) => self.ports[p].lookup(key),
            None => self.other,
        };
        let l = self.lists[id as usize];
        let mut best = (NONE, RuleSlot(0));
        if l.a_len > 0 {
            let ivs = &self.addrs[l.a_off as usize..(l.a_off + l.a_len) as usize];
            // ivs[0].start == 0, so the partition point is >= 1.
            let iv = ivs[ivs.partition_point(|iv| iv.start <= src) - 1];
            best = (iv.pos, iv.slot);
        }
        for g in &self.groups[l.g_off as usize..(l.g_off + l.g_len) as usize] {
            if g.pos >= best.0 {
                break;
            }
            let m = member();
            if m.get(g.bit as usize / 64)
                .is_some_and(|w| w & (1 << (g.bit % 64)) != 0)
            {
                best = (g.pos, g.slot);
                break;
            }
        }
        (best.0 != NONE).then_some(best.1)
    }

    pub(super) fn memory_bytes(&self) -> usize {
        self.ports
            .iter()
            .map(|p| p.ivs.len() * 8 + p.top.len() * 4)
            .sum::<usize>()
            + self.lists.len() * std::mem::size_of::<List6>()
            + self.addrs.len() * std::mem::size_of::<AddrIv>()
            + self.groups.len() * std::mem::size_of::<GroupCand>()
    }
}

struct Builder<'a> {
    srcs: &'a [Src6],
    slots: &'a [RuleSlot],
    dedup: HashMap<Vec<u32>, u32>,
    lists: Vec<List6>,
    addrs: Vec<AddrIv>,
    groups: Vec<GroupCand>,
}

impl Builder<'_> {
    /// The list id of these rules (ascending rule indices).
    fn intern(&mut self, rules: &[u32]) -> u32 {
        if let Some(&id) = self.dedup.get(rules) {
            return id;
        }
        let a_off = self.addrs.len() as u32;
        let g_off = self.groups.len() as u32;
        // Address intervals: boundary events, the first (lowest position)
        // covering candidate labels each interval.
        let mut events: Vec<(u128, bool, u32)> = Vec::new();
        let mut seen_bits = BTreeSet::new();
        for (pos, &r) in rules.iter().enumerate() {
            match self.srcs[r as usize] {
                Src6::Range(lo, hi) => {
                    events.push((lo, true, pos as u32));
                    if hi < u128::MAX {
                        events.push((hi + 1, false, pos as u32));
                    }
                }
                Src6::Group(NO_BIT) => {}
                Src6::Group(bit) => {
                    if seen_bits.insert(bit) {
                        self.groups.push(GroupCand {
                            bit,
                            pos: pos as u32,
                            slot: self.slot(r),
                        });
                    }
                }
            }
        }
        if !events.is_empty() {
            events.sort_unstable_by_key(|&(at, start, _)| (at, start));
            let mut active: BTreeSet<u32> = BTreeSet::new();
            let mut i = 0;
            let mut at = 0u128;
            loop {
                while i < events.len() && events[i].0 == at {
                    let (_, start, pos) = events[i];
                    if start {
                        active.insert(pos);
                    } else {
                        active.remove(&pos);
                    }
                    i += 1;
                }
                let (pos, slot) = match active.first() {
                    Some(&p) => (p, self.slot(rules[p as usize])),
                    None => (NONE, RuleSlot(0)),
                };
                if self.addrs.len() as u32 == a_off
                    || self.addrs.last().map(|iv| iv.pos) != Some(pos)
                {
                    self.addrs.push(AddrIv {
                        start: at,
                        pos,
                        slot,
                    });
                }
                if i >= events.len() {
                    break;
                }
                at = events[i].0;
            }
        }
        let id = self.lists.len() as u32;
        self.lists.push(List6 {
            a_off,
            a_len: self.addrs.len() as u32 - a_off,
            g_off,
            g_len: self.groups.len() as u32 - g_off,
        });
        self.dedup.insert(rules.to_vec(), id);
        id
    }

    fn slot(&self, rule: u32) -> RuleSlot {
        self.slots
            .get(rule as usize)
            .copied()
            .unwrap_or(RuleSlot(u32::MAX))
    }

    /// Elementary intervals over `0..=65535` of these `(lo, hi, rule)`
    /// entries, each naming the list of the rules covering it.
    fn table(&mut self, entries: &[(u16, u16, u32)]) -> PortTable {
        let mut events: Vec<(u32, bool, u32)> = Vec::with_capacity(entries.len() * 2);
        for &(lo, hi, r) in entries {
            events.push((u32::from(lo), true, r));
            if hi < u16::MAX {
                events.push((u32::from(hi) + 1, false, r));
            }
        }
        events.sort_unstable_by_key(|&(at, start, _)| (at, start));
        let mut active: BTreeSet<u32> = BTreeSet::new();
        let mut scratch: Vec<u32> = Vec::new();
        let mut ivs: Vec<Iv> = Vec::new();
        let mut i = 0;
        let mut at = 0u32;
        loop {
            while i < events.len() && events[i].0 == at {
                let (_, start, r) = events[i];
                if start {
                    active.insert(r);
                } else {
                    active.remove(&r);
                }
                i += 1;
            }
            scratch.clear();
            scratch.extend(active.iter().copied());
            let set = self.intern(&scratch);
            if ivs.last().map(|iv| iv.set) != Some(set) {
                ivs.push(Iv {
                    start: at as u16,
                    set,
                });
            }
            if i >= events.len() {
                break;
            }
            at = events[i].0;
        }
        PortTable::new(ivs)
    }
}
