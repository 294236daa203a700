//! Which rule admitted a packet: rule slots and the per-group rule index behind
//! [`super::Snapshot::admitting_rule`].
//!
//! # Contract
//!
//! * Every rule of every group with rules has a [`RuleSlot`], assigned by the
//!   [`super::Compiler`] per (group, rule) and kept for as long as that rule
//!   stays in that group: editing a group keeps the slots of its untouched
//!   rules, editing another group touches none of them. A revoked rule's slot is
//!   freed and may be reused (lowest first) by a later rule; each assignment has
//!   a fresh *serial* (never reused), published in the snapshot's slot layout
//!   ([`super::Snapshot::rule_layout`]) so counters kept per slot can tell a
//!   reused slot from the rule that held it before (and start it at zero).
//! * Attribution: among the rules of the destination's groups that match a
//!   packet, the *first* in the order `describe-group` prints them — groups in
//!   the instance's order, rules in their group's order — is the admitting rule.
//!   That is the first entry of [`crate::explain::matching_rules`] (property test
//!   `admitting_rule_is_the_first_matching_rule` in `filter/tests/prop.rs`).
//! * Structure: a group table keeps, beside the source-set intervals that
//!   [`super::Snapshot::allows`] searches (unchanged: the verdict alone costs
//!   what it cost), a second interval table per protocol whose intervals carry
//!   the *candidate list*: the indices (ascending) of the rules whose port range
//!   covers that interval (lists deduplicated), with the id of the source set
//!   that is their union (the same set `allows` finds there). `admitting_rule`
//!   searches this table alone: a list of at most [`SCAN_MAX`] candidates is
//!   scanned directly (the first whose source contains the packet's source;
//!   none: no rule of this group matches), a longer one first asks its set (so
//!   a packet no rule admits costs what it costs in `allows`), then scans (at
//!   most the group's rule count, 100 by default, for nested ranges). A
//!   candidate's source is a precomputed check: an address range, or a word
//!   index and mask into the source instance's membership bits. Only the first
//!   packet of a flow (and packets judged by rules without a flow) pays it;
//!   tracked packets never ask.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use super::{Iv, NO_BIT, PortTable, Src};
use crate::model::Rule;

/// Candidate lists up to this long are scanned without asking their source
/// set first (measured with the pipeline bench's ten group-source rules on
/// one port: scanning them costs about what the set check costs, so asking
/// the set first only adds to the admitted packets' cost).
pub(super) const SCAN_MAX: usize = 16;

/// One rule's source as a precomputed check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Check {
    /// Inclusive address range.
    Range(u32, u32),
    /// Member of the referenced group whose bit is `mask` in word `word`.
    Group { word: u32, mask: u64 },
    /// Matches nothing (a group source without a bit).
    Never,
}

impl From<Src> for Check {
    fn from(s: Src) -> Check {
        match s {
            Src::Range(lo, hi) => Check::Range(lo, hi),
            Src::Group(NO_BIT) => Check::Never,
            Src::Group(b) => Check::Group {
                word: b / 64,
                mask: 1 << (b % 64),
            },
        }
    }
}

/// A rule's counter slot: stable for as long as the rule stays in its group
/// (see the module docs). Index into [`super::Snapshot::rule_layout`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RuleSlot(pub u32);

impl RuleSlot {
    /// As a slice index.
    #[inline]
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

/// The rule side of one group table: candidate lists per port interval, the
/// rules' sources and slots.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct RuleIndex {
    /// Indexed like [`super::GroupTable::ports`]; an interval's `set` field is a
    /// candidate-list id here.
    pub(super) ports: [PortTable; 3],
    /// Candidate list of other IP protocols (`Proto::All` rules).
    pub(super) other: u32,
    /// Candidate lists: `(offset, length)` into `cands`, and the source set
    /// (of the group table) that is the union of their sources.
    pub(super) lists: Arc<[(u32, u32, u32)]>,
    /// The candidates, in rule order: each rule's source check and slot side
    /// by side (one load per candidate).
    pub(super) cands: Arc<[(Check, RuleSlot)]>,
}

impl RuleIndex {
    /// Build from per-protocol `(lo, hi, rule index)` entries; `set_of` gives
    /// the source-set id of a list of rules (the union of their sources).
    pub(super) fn build(
        entries: [Vec<(u16, u16, u32)>; 3],
        other: Vec<u32>,
        srcs: &[Src],
        slots: Vec<RuleSlot>,
        mut set_of: impl FnMut(&[u32]) -> u32,
    ) -> RuleIndex {
        let mut a = CandArena::default();
        // List 0: no candidate.
        a.intern(&[]);
        let [t, u, i] = entries;
        let ports = [a.table(&t), a.table(&u), a.table(&i)];
        let other = a.intern(&other);
        let lists = a
            .lists
            .iter()
            .map(|&(off, len)| {
                (
                    off,
                    len,
                    set_of(&a.cands[off as usize..(off + len) as usize]),
                )
            })
            .collect();
        let cands = a
            .cands
            .iter()
            .map(|&i| (Check::from(srcs[i as usize]), slots[i as usize]))
            .collect();
        RuleIndex {
            ports,
            other,
            lists,
            cands,
        }
    }

    /// The candidate rules (indices, ascending) of protocol table `p` at `key`,
    /// or of other protocols when `p` is `None`, and their union's source set.
    #[inline]
    pub(super) fn candidates(&self, p: Option<usize>, key: u16) -> (&[(Check, RuleSlot)], u32) {
        let l = match p {
            Some(p) => self.ports[p].lookup(key),
            None => self.other,
        };
        let (off, len, set) = self.lists[l as usize];
        (&self.cands[off as usize..(off + len) as usize], set)
    }

    pub(super) fn memory_bytes(&self) -> usize {
        self.ports
            .iter()
            .map(|p| p.ivs.len() * 8 + p.top.len() * 4)
            .sum::<usize>()
            + self.lists.len() * 12
            + self.cands.len() * std::mem::size_of::<(Check, RuleSlot)>()
    }
}

#[derive(Default)]
struct CandArena {
    lists: Vec<(u32, u32)>,
    cands: Vec<u32>,
    dedup: HashMap<Vec<u32>, u32>,
}

impl CandArena {
    fn intern(&mut self, rules: &[u32]) -> u32 {
        if let Some(&id) = self.dedup.get(rules) {
            return id;
        }
        let id = self.lists.len() as u32;
        self.lists
            .push((self.cands.len() as u32, rules.len() as u32));
        self.cands.extend_from_slice(rules);
        self.dedup.insert(rules.to_vec(), id);
        id
    }

    /// Elementary intervals over `0..=65535`, each with the list of the rules
    /// covering it (ascending), adjacent equal lists coalesced.
    fn table(&mut self, entries: &[(u16, u16, u32)]) -> PortTable {
        let mut events: Vec<(u32, bool, u32)> = Vec::with_capacity(entries.len() * 2);
        for &(lo, hi, r) in entries {
            events.push((u32::from(lo), true, r));
            if hi < u16::MAX {
                events.push((u32::from(hi) + 1, false, r));
            }
        }
        events.sort_unstable_by_key(|&(pos, start, _)| (pos, start));
        let mut active: BTreeSet<u32> = BTreeSet::new();
        let mut scratch: Vec<u32> = Vec::new();
        let mut ivs: Vec<Iv> = Vec::new();
        let mut i = 0;
        let mut pos = 0u32;
        loop {
            while i < events.len() && events[i].0 == pos {
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

/// The compiler's slot allocator: (group, rule) → slot, with serials.
#[derive(Clone, Debug, Default)]
pub(super) struct SlotAlloc {
    /// Serial of each slot's current rule; 0 = free.
    serials: Vec<u64>,
    free: BTreeSet<u32>,
    next_serial: u64,
    /// `serials` as published (rebuilt lazily after a change).
    published: Option<Arc<[u64]>>,
}

impl SlotAlloc {
    fn alloc(&mut self) -> RuleSlot {
        self.next_serial += 1;
        self.published = None;
        match self.free.pop_first() {
            Some(s) => {
                self.serials[s as usize] = self.next_serial;
                RuleSlot(s)
            }
            None => {
                self.serials.push(self.next_serial);
                RuleSlot(self.serials.len() as u32 - 1)
            }
        }
    }

    fn release(&mut self, s: RuleSlot) {
        self.serials[s.index()] = 0;
        self.free.insert(s.0);
        self.published = None;
    }

    /// Slots for `rules` (a group's new rule list), reusing those of `old` (the
    /// group's previous `(rule, slot)` list) for rules still present and
    /// releasing the rest.
    pub(super) fn reassign(
        &mut self,
        old: Vec<(Rule, RuleSlot)>,
        rules: &[Rule],
    ) -> Vec<(Rule, RuleSlot)> {
        let mut by_rule: HashMap<Rule, Vec<RuleSlot>> = HashMap::with_capacity(old.len());
        for (r, s) in old {
            by_rule.entry(r).or_default().push(s);
        }
        let out: Vec<(Rule, RuleSlot)> = rules
            .iter()
            .map(|r| {
                let kept = by_rule.get_mut(r).and_then(|v| v.pop());
                (r.clone(), kept.unwrap_or_else(|| self.alloc()))
            })
            .collect();
        for s in by_rule.into_values().flatten() {
            self.release(s);
        }
        out
    }

    /// Release every slot of a group's list.
    pub(super) fn release_all(&mut self, old: Vec<(Rule, RuleSlot)>) {
        for (_, s) in old {
            self.release(s);
        }
    }

    /// The serial of the rule in `s` (0: free or unknown slot).
    pub(super) fn serial(&self, s: RuleSlot) -> u64 {
        self.serials.get(s.index()).copied().unwrap_or(0)
    }

    /// The published layout: serial per slot (0 = free).
    pub(super) fn layout(&mut self) -> Arc<[u64]> {
        self.published
            .get_or_insert_with(|| self.serials.as_slice().into())
            .clone()
    }
}
