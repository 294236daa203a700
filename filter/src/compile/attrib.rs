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
//!   the *candidate list*: the rules whose port range covers that interval
//!   (lists deduplicated), split by source kind, with the id of the source set
//!   that is their union (the same set `allows` finds there).
//!   `admitting_rule` searches this table alone. Group-source candidates are
//!   not scanned: per membership word the list keeps the bits of the groups
//!   its rules name and, per bit, the first rule (position in the list) naming
//!   that group, so the first matching group rule is the least position over
//!   the bits of `member[word] & bits` (one AND per word; one trailing-zero
//!   count and one load per group the source is in; bits of one entry lie at
//!   most 16 apart). Address-range candidates are scanned
//!   in rule order up to that position (a list with more than [`SCAN_MAX`] of
//!   them first asks its set, so a packet no rule admits costs what it costs
//!   in `allows`). Only the first packet of a flow (and packets judged by
//!   rules without a flow) pays it; tracked packets never ask.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use super::{Iv, NO_BIT, PortTable, Src};
use crate::model::Rule;

/// Candidate lists with more address-range candidates than this ask their
/// source set first (so a packet no rule admits costs what it costs in
/// `allows`), then scan the ranges; shorter ones are scanned directly.
/// Group-source candidates are never scanned (see [`GroupWord`]).
pub(super) const SCAN_MAX: usize = 16;

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

/// One candidate list, split by source kind: address-range candidates
/// (`ranges[r_off..][..r_len]`, in rule order) and group-source candidates
/// (`gwords[g_off..][..g_len]`, by membership word), and the source set (of
/// the group table) that is the union of all their sources.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct CandList {
    r_off: u32,
    r_len: u32,
    g_off: u32,
    g_len: u32,
    pub(super) set: u32,
}

impl CandList {
    /// Address-range candidates in the list.
    #[inline]
    pub(super) fn range_count(&self) -> usize {
        self.r_len as usize
    }

    /// Whether the list has group-source candidates (then [`RuleIndex::first_match`]
    /// needs the source instance's membership words).
    #[inline]
    pub(super) fn has_groups(&self) -> bool {
        self.g_len != 0
    }
}

/// An address-range candidate: inclusive range, position in its list (rule
/// order) and slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct RangeCand {
    lo: u32,
    hi: u32,
    pos: u32,
    slot: RuleSlot,
}

/// Group-source candidates of a list in one membership word: `bits` are
/// referenced groups' bits in word `word` (at most [`SPAN`] apart; a list has
/// more entries for the same word if its groups' bits spread wider); for each
/// bit `b`, `gfirst[off + b]` is the first candidate (position in the list and
/// slot) whose source is that group. A source instance's first matching group
/// candidate is then found from `member[word] & bits` (one AND, and per bit
/// that matches one load) instead of a scan.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct GroupWord {
    bits: u64,
    word: u32,
    /// `gfirst[off + b]` (wrapping) is bit `b`'s first candidate.
    off: u32,
}

/// Bits of one [`GroupWord`] at most this far apart: its `gfirst` entries are
/// dense (one per bit from its lowest), so a matching bit's entry is one
/// trailing-zero count away, and a list costs at most 16 entries per group.
const SPAN: u32 = 16;

/// The rule side of one group table: candidate lists per port interval, the
/// rules' sources and slots.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct RuleIndex {
    /// Indexed like [`super::GroupTable::ports`]; an interval's `set` field is a
    /// candidate-list id here.
    pub(super) ports: [PortTable; 3],
    /// Candidate list of other IP protocols (`Proto::All` rules).
    pub(super) other: u32,
    lists: Arc<[CandList]>,
    ranges: Arc<[RangeCand]>,
    gwords: Arc<[GroupWord]>,
    /// `(position in list, slot)` per (list, group word, set bit).
    gfirst: Arc<[(u32, RuleSlot)]>,
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
        let mut lists = Vec::with_capacity(a.lists.len());
        let mut ranges = Vec::new();
        let mut gwords = Vec::new();
        let mut gfirst = Vec::new();
        for &(off, len) in &a.lists {
            let rules = &a.cands[off as usize..(off + len) as usize];
            let r_off = ranges.len() as u32;
            let g_off = gwords.len() as u32;
            // word → (bits, first (position, slot) per bit)
            let mut words: BTreeMap<u32, BTreeMap<u32, (u32, RuleSlot)>> = BTreeMap::new();
            for (pos, &r) in rules.iter().enumerate() {
                let (pos, slot) = (pos as u32, slots[r as usize]);
                match srcs[r as usize] {
                    Src::Range(lo, hi) => ranges.push(RangeCand { lo, hi, pos, slot }),
                    // A group without a bit matches nothing.
                    Src::Group(NO_BIT) => {}
                    Src::Group(b) => {
                        let w = words.entry(b / 64).or_default();
                        w.entry(b % 64).or_insert((pos, slot));
                    }
                }
            }
            for (word, first) in words {
                // Chunks of at most SPAN bits, each with a dense run of
                // `gfirst` entries from its lowest bit (bits no rule names
                // hold a never-chosen filler).
                let mut it = first.into_iter().peekable();
                while let Some(&(lo, _)) = it.peek() {
                    let mut bits = 0u64;
                    let base = gfirst.len() as u32;
                    while let Some(&(b, c)) = it.peek() {
                        if b >= lo + SPAN {
                            break;
                        }
                        bits |= 1 << b;
                        gfirst.resize(base as usize + (b - lo) as usize, (u32::MAX, RuleSlot(0)));
                        gfirst.push(c);
                        it.next();
                    }
                    gwords.push(GroupWord {
                        bits,
                        word,
                        off: base.wrapping_sub(lo),
                    });
                }
            }
            lists.push(CandList {
                r_off,
                r_len: ranges.len() as u32 - r_off,
                g_off,
                g_len: gwords.len() as u32 - g_off,
                set: set_of(rules),
            });
        }
        RuleIndex {
            ports,
            other,
            lists: lists.into(),
            ranges: ranges.into(),
            gwords: gwords.into(),
            gfirst: gfirst.into(),
        }
    }

    /// The candidate list of protocol table `p` at `key`, or of other
    /// protocols when `p` is `None`.
    #[inline(always)]
    pub(super) fn candidates(&self, p: Option<usize>, key: u16) -> CandList {
        let l = match p {
            Some(p) => self.ports[p].lookup(key),
            None => self.other,
        };
        self.lists[l as usize]
    }

    /// The first candidate of `l`, in rule order, whose source contains
    /// `src`: the first matching group candidate from the source instance's
    /// membership words (`member`, needed only if `l` [has group
    /// candidates](CandList::has_groups); words past its end are zero), then
    /// the range candidates before it in order.
    #[inline(always)]
    pub(super) fn first_match(&self, l: CandList, src: u32, member: &[u64]) -> Option<RuleSlot> {
        let mut best = (u32::MAX, RuleSlot(0));
        for g in &self.gwords[l.g_off as usize..(l.g_off + l.g_len) as usize] {
            let mut x = member.get(g.word as usize).map_or(0, |m| m & g.bits);
            while x != 0 {
                let c = self.gfirst[g.off.wrapping_add(x.trailing_zeros()) as usize];
                if c.0 < best.0 {
                    best = c;
                }
                x &= x - 1;
            }
        }
        for r in &self.ranges[l.r_off as usize..(l.r_off + l.r_len) as usize] {
            if r.pos > best.0 {
                break;
            }
            if r.lo <= src && src <= r.hi {
                return Some(r.slot);
            }
        }
        (best.0 != u32::MAX).then_some(best.1)
    }

    pub(super) fn memory_bytes(&self) -> usize {
        self.ports
            .iter()
            .map(|p| p.ivs.len() * 8 + p.top.len() * 4)
            .sum::<usize>()
            + self.lists.len() * std::mem::size_of::<CandList>()
            + self.ranges.len() * std::mem::size_of::<RangeCand>()
            + self.gwords.len() * std::mem::size_of::<GroupWord>()
            + self.gfirst.len() * 8
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

/// Slots per page of a [`RuleLayout`] (8 KiB of serials).
const LAYOUT_PAGE: usize = 1024;

/// A snapshot's rule-slot layout: for each [`RuleSlot`], the serial of the
/// rule holding it (never reused; 0 for a free slot). Stored as shared
/// fixed-size pages, so that publishing the layout after an edit copies the
/// page array (one pointer per 1024 slots) and the pages the edit touched,
/// not every slot. Cheap to clone (one reference count). Snapshots whose
/// slots did not change share one layout ([`RuleLayout::ptr_eq`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleLayout {
    pages: Arc<[Arc<[u64; LAYOUT_PAGE]>]>,
    len: usize,
}

impl Default for RuleLayout {
    fn default() -> Self {
        RuleLayout {
            pages: Arc::new([]),
            len: 0,
        }
    }
}

impl RuleLayout {
    /// Number of slots.
    #[inline]
    pub fn len(&self) -> usize {
        self.len
    }

    /// No slots.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The serial of slot `i` (0: free), `None` past the end.
    #[inline]
    pub fn get(&self, i: usize) -> Option<u64> {
        (i < self.len).then(|| self.pages[i / LAYOUT_PAGE][i % LAYOUT_PAGE])
    }

    /// The serials of all slots, in slot order.
    pub fn iter(&self) -> impl Iterator<Item = u64> + '_ {
        self.pages
            .iter()
            .flat_map(|p| p.iter().copied())
            .take(self.len)
    }

    /// The serials as one vector.
    pub fn to_vec(&self) -> Vec<u64> {
        self.iter().collect()
    }

    /// Whether `a` and `b` are the same published layout (not merely equal):
    /// the identity counters follow.
    #[inline]
    pub fn ptr_eq(a: &RuleLayout, b: &RuleLayout) -> bool {
        Arc::ptr_eq(&a.pages, &b.pages) && a.len == b.len
    }
}

impl From<Vec<u64>> for RuleLayout {
    /// A layout of these serials (slot order).
    fn from(serials: Vec<u64>) -> RuleLayout {
        let len = serials.len();
        let pages = serials
            .chunks(LAYOUT_PAGE)
            .map(|c| {
                let mut p = [0; LAYOUT_PAGE];
                p[..c.len()].copy_from_slice(c);
                Arc::new(p)
            })
            .collect();
        RuleLayout { pages, len }
    }
}

impl std::ops::Index<usize> for RuleLayout {
    type Output = u64;

    /// The serial of slot `i`. Panics past the end.
    #[inline]
    fn index(&self, i: usize) -> &u64 {
        assert!(
            i < self.len,
            "rule slot {i} outside a layout of {}",
            self.len
        );
        &self.pages[i / LAYOUT_PAGE][i % LAYOUT_PAGE]
    }
}

/// The compiler's slot allocator: (group, rule) → slot, with serials.
#[derive(Clone, Debug, Default)]
pub(super) struct SlotAlloc {
    /// Serial of each slot's current rule (0 = free), in pages shared with
    /// the published layouts (copied on write).
    pages: Vec<Arc<[u64; LAYOUT_PAGE]>>,
    /// Slots in use or free (below `len`).
    len: usize,
    free: BTreeSet<u32>,
    next_serial: u64,
    /// The pages as published (rebuilt lazily after a change: the page
    /// array only).
    published: Option<RuleLayout>,
}

impl SlotAlloc {
    fn set(&mut self, s: usize, serial: u64) {
        Arc::make_mut(&mut self.pages[s / LAYOUT_PAGE])[s % LAYOUT_PAGE] = serial;
        self.published = None;
    }

    fn alloc(&mut self) -> RuleSlot {
        self.next_serial += 1;
        let s = match self.free.pop_first() {
            Some(s) => s as usize,
            None => {
                if self.len.is_multiple_of(LAYOUT_PAGE) {
                    self.pages.push(Arc::new([0; LAYOUT_PAGE]));
                }
                self.len += 1;
                self.len - 1
            }
        };
        self.set(s, self.next_serial);
        RuleSlot(s as u32)
    }

    fn release(&mut self, s: RuleSlot) {
        self.set(s.index(), 0);
        self.free.insert(s.0);
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
        let i = s.index();
        if i < self.len {
            self.pages[i / LAYOUT_PAGE][i % LAYOUT_PAGE]
        } else {
            0
        }
    }

    /// The published layout: serial per slot (0 = free). After a change,
    /// a new page array sharing every page.
    pub(super) fn layout(&mut self) -> RuleLayout {
        self.published
            .get_or_insert_with(|| RuleLayout {
                pages: self.pages.iter().cloned().collect(),
                len: self.len,
            })
            .clone()
    }
}
