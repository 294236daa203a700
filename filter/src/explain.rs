//! Which rules admit a packet: the slow path behind `sgswitch trace`.
//!
//! The verdict itself always comes from the datapath's own code
//! ([`crate::compile::Snapshot::allows`] through [`crate::Conntrack::judge`]);
//! this module only *names* the rules of the destination's groups that match a
//! packet, by scanning the [`Model`] with [`crate::reference::rule_matches`].
//! Contract: for every model and packet, `compile(model).allows(pkt)` is true
//! exactly when [`matching_rules`] is not empty (property test
//! `matching_rules_agree_with_allows` in `filter/tests/prop.rs`). Allocates; never
//! on the datapath.

use crate::model::{Model, Owner, Rule};
use crate::reference::{Family, instance_at, rule_matches};
use crate::{Frag, Packet};

/// A rule of one of the destination's groups that matches a packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleMatch<'m> {
    pub owner: &'m Owner,
    /// The group's name.
    pub group: &'m str,
    /// Position of the rule in the group's rule list.
    pub index: usize,
    pub rule: &'m Rule,
}

/// The groups whose rules decide packets to `pkt.key.dst` (its owner and group
/// names, in the instance's order), or `None` when no instance has that address.
pub fn consulted_groups<'m, A: Family>(
    model: &'m Model,
    pkt: &Packet<A>,
) -> Option<(&'m Owner, &'m [String])> {
    let dst = instance_at(model, pkt.key.dst)?;
    Some((&dst.owner, &dst.groups))
}

/// Every rule of the destination instance's groups that matches `pkt`, group by
/// group in the instance's order, rules in their group's order. Empty when the
/// destination is no instance, for non-first fragments (which no rule matches),
/// and whenever the snapshot would not allow the packet.
pub fn matching_rules<'m, A: Family>(model: &'m Model, pkt: &Packet<A>) -> Vec<RuleMatch<'m>> {
    let mut out = Vec::new();
    if matches!(pkt.frag, Frag::Later { .. }) {
        return out;
    }
    let Some((owner, groups)) = consulted_groups(model, pkt) else {
        return out;
    };
    for name in groups {
        let Some(g) = model.groups().get(&(owner.clone(), name.clone())) else {
            continue;
        };
        for (index, rule) in g.rules.iter().enumerate() {
            if rule_matches(model, rule, pkt) {
                out.push(RuleMatch {
                    owner: &g.owner,
                    group: &g.name,
                    index,
                    rule,
                });
            }
        }
    }
    out
}
