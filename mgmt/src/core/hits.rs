//! Per-rule hit counters as the management core shows them
//! (`describe-group --stats`, `/metrics`).
//!
//! The datapath counts per rule slot ([`filter::compile::RuleSlot`], see
//! `switch::counters`); here slots become (owner, group, rule) through the
//! core's [`filter::compile::Compiler`], which made the published snapshot. A
//! slot counts only when the data plane's layout holds the same rule (serial)
//! as the compiler: never a revoked rule's counts on its successor. A group's
//! "no rule matched" count is the `no_rule` refusals counted on the switch
//! ports of its member instances on this host (the same counter `stats
//! i-...` shows as `to: no_rule`): instances' groups never change after launch,
//! so the sum is exactly the packets to the group's members that no rule of
//! their groups admitted. All counts are this host's (cluster mode: ingress is
//! judged on the destination's host, so each rule's hits are where its
//! group's members live).

use std::collections::HashMap;

use filter::model::{Group, Owner, Ports, Rule, Source};

use super::Core;
use crate::api::{
    ApiError, GroupNoRule, GroupStats, PortStats, Reply, Response, RuleHits, RuleSeries,
    StatsReport,
};

/// The rule as a metrics label: `tcp 22 0.0.0.0/0`, `udp 1000-2000 10.0.0.0/8`,
/// `icmp 8:-1 0.0.0.0/0`, `all 111122223333/default`.
pub fn rule_label(r: &Rule) -> String {
    let ports = match r.ports {
        Ports::None => String::new(),
        Ports::Range(lo, hi) if lo == hi => format!(" {lo}"),
        Ports::Range(lo, hi) => format!(" {lo}-{hi}"),
        Ports::Icmp { .. } => format!(" {}", r.ports),
    };
    let source = match &r.source {
        Source::Cidr(net) => net.to_string(),
        Source::Cidr6(net) => net.to_string(),
        Source::Group { owner, group } => format!("{}/{group}", owner.0),
    };
    format!("{}{ports} {source}", r.proto.as_str())
}

/// `no_rule` refusals per instance (port name = instance id).
fn no_rule_by_port(ports: &[PortStats]) -> HashMap<&str, u64> {
    ports
        .iter()
        .map(|p| {
            let n = p
                .denied
                .iter()
                .find(|(r, _)| r == filter::DropReason::NoRule.name())
                .map_or(0, |(_, n)| *n);
            (p.name.as_str(), n)
        })
        .collect()
}

impl Core {
    /// The hits of each rule of `g`, in its order.
    fn hits_of(&self, g: &Group, layout: &[u64], hits: &[RuleHits]) -> Vec<RuleHits> {
        (0..g.rules.len())
            .map(|i| {
                let Some(slot) = self.compiler.rule_slot(&g.owner, &g.name, i) else {
                    return RuleHits::default();
                };
                let serial = self.compiler.rule_serial(slot);
                match (layout.get(slot.index()), hits.get(slot.index())) {
                    (Some(&s), Some(h)) if s == serial && s != 0 => *h,
                    _ => RuleHits::default(),
                }
            })
            .collect()
    }

    /// Packets to each group's members dropped as `no_rule`, by (owner,
    /// group): one pass over the instances.
    fn no_rule_by_group(&self, by_port: &HashMap<&str, u64>) -> HashMap<(&Owner, &str), u64> {
        let mut out: HashMap<(&Owner, &str), u64> = HashMap::new();
        for i in self.model.instances().values() {
            let n = by_port.get(i.id.as_str()).copied().unwrap_or(0);
            if n == 0 {
                continue;
            }
            for g in &i.groups {
                *out.entry((&i.owner, g.as_str())).or_default() += n;
            }
        }
        out
    }

    /// [`crate::api::Command::DescribeGroupStats`].
    pub(super) fn group_stats(&self, owner: &Owner, names: &[String]) -> Reply {
        let groups = self.model.describe_groups(owner, names)?;
        let (layout, hits) = self.dp.rule_hits();
        let mut report = StatsReport::default();
        self.dp.stats(&mut report);
        let by_port = no_rule_by_port(&report.ports);
        let no_rule = self.no_rule_by_group(&by_port);
        let groups = groups
            .into_iter()
            .map(|g| GroupStats {
                hits: self.hits_of(g, &layout, &hits),
                no_rule: no_rule
                    .get(&(&g.owner, g.name.as_str()))
                    .copied()
                    .unwrap_or(0),
                group: g.clone(),
            })
            .collect();
        Ok::<_, ApiError>(Response::GroupStats { groups })
    }

    /// Every rule's and every group's series for `/metrics` (after the
    /// data plane filled `report.ports`).
    pub(super) fn add_rule_series(&self, report: &mut StatsReport) {
        let (layout, hits) = self.dp.rule_hits();
        let by_port = no_rule_by_port(&report.ports);
        let no_rule = self.no_rule_by_group(&by_port);
        for g in self.model.groups().values() {
            for (r, h) in g.rules.iter().zip(self.hits_of(g, &layout, &hits)) {
                report.rules_hits.push(RuleSeries {
                    owner: g.owner.0.clone(),
                    group: g.name.clone(),
                    rule: rule_label(r),
                    hits: h,
                });
            }
            report.groups_no_rule.push(GroupNoRule {
                owner: g.owner.0.clone(),
                group: g.name.clone(),
                packets: no_rule
                    .get(&(&g.owner, g.name.as_str()))
                    .copied()
                    .unwrap_or(0),
            });
        }
    }
}
