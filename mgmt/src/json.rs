//! What `sgswitch --json` prints: plain, versioned shapes documented in
//! `docs/json.md`, made from the API's [`Response`]s and [`ApiError`]s.
//!
//! Contract:
//! * Every document is one JSON object with `"version": VERSION` and one
//!   payload key that depends on the command (`groups`, `group`,
//!   `reservations`, `instances`, `images`, `stats`, `access_key`; `error` on
//!   stderr for a failed command).
//! * Fields are plain values: protocols as `tcp`/`udp`/`icmp`/`all`, ports as
//!   numbers, ICMP wildcards as `null`, sources as `{"cidr": ...}` or
//!   `{"group": ..., "owner": ...}`. No Rust enum spellings.
//! * The shapes change only with a new `VERSION`; fields may be added within a
//!   version. The socket protocol between CLI and daemon ([`crate::api`]) is
//!   separate and may change with the binary.

use filter::model::{Group, Ports, Rule, Source};
use serde::Serialize;

use crate::api::{
    ApiError, ImageRecord, InstanceView, PortStats, Reservation, Response, StateChange,
};

/// Version of the shapes below (the `version` field of every document).
pub const VERSION: u32 = 1;

/// One rule, as `permissions` list it.
#[derive(Debug, Serialize)]
pub struct PermissionJson {
    /// `tcp`, `udp`, `icmp` or `all`.
    pub protocol: &'static str,
    /// TCP/UDP only: the inclusive port range.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from_port: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to_port: Option<u16>,
    /// ICMP only: type and code, `null` = any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub icmp_type: Option<Option<u8>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub icmp_code: Option<Option<u8>>,
    pub source: SourceJson,
    /// `describe-group --stats`: what the rule admitted on this host.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hits: Option<crate::api::RuleHits>,
}

/// Where a rule lets traffic come from.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum SourceJson {
    Cidr { cidr: String },
    Group { group: String, owner: String },
}

impl From<&Rule> for PermissionJson {
    fn from(r: &Rule) -> PermissionJson {
        let (mut from_port, mut to_port, mut icmp_type, mut icmp_code) = (None, None, None, None);
        match r.ports {
            Ports::None => {}
            Ports::Range(lo, hi) => (from_port, to_port) = (Some(lo), Some(hi)),
            Ports::Icmp { ty, code } => (icmp_type, icmp_code) = (Some(ty), Some(code)),
        }
        PermissionJson {
            protocol: r.proto.as_str(),
            from_port,
            to_port,
            icmp_type,
            icmp_code,
            source: match &r.source {
                Source::Cidr(net) => SourceJson::Cidr {
                    cidr: net.to_string(),
                },
                Source::Cidr6(net) => SourceJson::Cidr {
                    cidr: net.to_string(),
                },
                Source::Group { owner, group } => SourceJson::Group {
                    group: group.clone(),
                    owner: owner.0.clone(),
                },
            },
            hits: None,
        }
    }
}

/// A security group with its rules.
#[derive(Debug, Serialize)]
pub struct GroupJson {
    pub owner: String,
    pub name: String,
    pub id: String,
    pub description: String,
    pub permissions: Vec<PermissionJson>,
    /// Egress rules (each `source` is the destination), in order; absent
    /// when they are exactly the default every new group starts with (`all`
    /// to `0.0.0.0/0` and `::/0`, in either order), as in the text form.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub egress_permissions: Option<Vec<PermissionJson>>,
    /// `describe-group --stats`: packets to the group's members on this host
    /// that no rule matched.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub no_rule_packets: Option<u64>,
}

impl From<&Group> for GroupJson {
    fn from(g: &Group) -> GroupJson {
        GroupJson {
            owner: g.owner.0.clone(),
            name: g.name.clone(),
            id: g.id.clone(),
            description: g.description.clone(),
            permissions: g.rules.iter().map(PermissionJson::from).collect(),
            egress_permissions: (!filter::model::is_default_egress(&g.egress))
                .then(|| g.egress.iter().map(PermissionJson::from).collect()),
            no_rule_packets: None,
        }
    }
}

impl From<&crate::api::GroupStats> for GroupJson {
    fn from(s: &crate::api::GroupStats) -> GroupJson {
        let mut g = GroupJson::from(&s.group);
        for (p, h) in g.permissions.iter_mut().zip(&s.hits) {
            p.hits = Some(*h);
        }
        g.no_rule_packets = Some(s.no_rule);
        g
    }
}

/// The group an add/delete/authorize/revoke acted on (only the fields the
/// command knows).
#[derive(Debug, Serialize)]
pub struct GroupRefJson {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// authorize/revoke: the rules added or removed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub permissions: Option<Vec<PermissionJson>>,
    /// authorize/revoke `--egress`: the egress rules added or removed (each
    /// `source` is the destination).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub egress_permissions: Option<Vec<PermissionJson>>,
}

#[derive(Debug, Serialize)]
pub struct InstanceJson {
    pub id: String,
    pub ami: String,
    pub ip: String,
    pub mac: String,
    /// `pending`, `running`, `stopped`, ...
    pub state: String,
    pub launch_index: u32,
    /// `netns:NAME`, `qemu:PID`, `port:IFNAME` or `port:IFNAME@NETNS`.
    pub place: String,
    /// describe-instances: the instance's IPv6 address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ipv6_address: Option<String>,
}

impl From<&InstanceView> for InstanceJson {
    fn from(i: &InstanceView) -> InstanceJson {
        InstanceJson {
            id: i.id.clone(),
            ami: i.ami.clone(),
            ip: i.ip.to_string(),
            mac: i.mac.clone(),
            state: i.state.clone(),
            launch_index: i.launch_index,
            place: i.place.clone(),
            ipv6_address: i.ipv6_address.map(|a| a.to_string()),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct ReservationJson {
    pub id: String,
    pub owner: String,
    pub groups: Vec<String>,
    pub instances: Vec<InstanceJson>,
}

impl From<&Reservation> for ReservationJson {
    fn from(r: &Reservation) -> ReservationJson {
        ReservationJson {
            id: r.id.clone(),
            owner: r.owner.clone(),
            groups: r.groups.clone(),
            instances: r.instances.iter().map(InstanceJson::from).collect(),
        }
    }
}

/// terminate-instances: one state change per instance.
#[derive(Debug, Serialize)]
pub struct StateChangeJson {
    pub id: String,
    pub previous_state: String,
    pub current_state: String,
}

impl From<&StateChange> for StateChangeJson {
    fn from(c: &StateChange) -> StateChangeJson {
        StateChangeJson {
            id: c.id.clone(),
            previous_state: c.previous.clone(),
            current_state: c.current.clone(),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct ImageJson {
    pub ami: String,
    pub kernel: String,
    pub initrd: String,
    /// `null` when none.
    pub disk: Option<String>,
    pub memory_mb: u32,
    pub append: String,
    /// Seconds since the Unix epoch.
    pub registered_at: i64,
}

impl From<&ImageRecord> for ImageJson {
    fn from(i: &ImageRecord) -> ImageJson {
        ImageJson {
            ami: i.ami.clone(),
            kernel: i.kernel.display().to_string(),
            initrd: i.initrd.display().to_string(),
            disk: i.disk.as_ref().map(|d| d.display().to_string()),
            memory_mb: i.memory_mb,
            append: i.append.clone(),
            registered_at: i.registered_at,
        }
    }
}

/// p50 and p99 of a latency, microseconds.
#[derive(Debug, Serialize)]
pub struct Percentiles {
    pub p50: u64,
    pub p99: u64,
}

/// A named counter.
#[derive(Debug, Serialize)]
pub struct CounterJson {
    pub name: String,
    pub count: u64,
}

#[derive(Debug, Serialize)]
pub struct StatsJson {
    pub generation: u64,
    pub groups: u64,
    pub rules: u64,
    pub instances: u64,
    pub edits: u64,
    pub edit_latency_us: Percentiles,
    pub publish_latency_us: Percentiles,
    /// Per-port counters.
    pub ports: Vec<PortJson>,
    /// One per drop reason, in counter order.
    pub drops: Vec<CounterJson>,
    pub conntrack_entries: u64,
    pub events: Vec<CounterJson>,
    pub ports_gone: u64,
}

/// One port's counters: `name`, `rx_packets`, `rx_bytes`, `tx_packets`,
/// `tx_bytes`, `drops`, and (when any) `drop_reasons`.
#[derive(Debug, Serialize)]
pub struct PortJson {
    pub name: String,
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    pub drops: u64,
    /// Frames received on the port and dropped, by reason (only reasons that
    /// counted any).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub drop_reasons: Vec<CounterJson>,
    /// Frames bound for the port refused by the rules or connection
    /// tracking, by reason (only reasons that counted any).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub denied: Vec<CounterJson>,
}

impl From<&PortStats> for PortJson {
    fn from(p: &PortStats) -> PortJson {
        PortJson {
            name: p.name.clone(),
            rx_packets: p.rx_packets,
            rx_bytes: p.rx_bytes,
            tx_packets: p.tx_packets,
            tx_bytes: p.tx_bytes,
            drops: p.drops,
            drop_reasons: counters(&p.drop_reasons),
            denied: counters(&p.denied),
        }
    }
}

/// `stats i-...`: an instance and its port.
#[derive(Debug, Serialize)]
pub struct InstanceStatsJson {
    pub instance: InstanceJson,
    /// `null` when the instance has no port (stopped).
    pub port: Option<PortJson>,
}

#[derive(Debug, Serialize)]
pub struct AccessKeyJson {
    pub key_id: String,
    pub secret: String,
    pub owner: String,
}

/// A listed access key (no secret); `created` in ISO 8601 UTC.
#[derive(Debug, Serialize)]
pub struct AccessKeyInfoJson {
    pub key_id: String,
    pub owner: String,
    pub created: String,
}

#[derive(Debug, Serialize)]
pub struct ErrorJson {
    pub code: String,
    pub message: String,
}

/// The payload of a document: exactly one of these keys.
#[derive(Debug, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Payload {
    Groups(Vec<GroupJson>),
    Group(GroupRefJson),
    Reservations(Vec<ReservationJson>),
    Instances(Vec<StateChangeJson>),
    Images(Vec<ImageJson>),
    Stats(StatsJson),
    AccessKey(AccessKeyJson),
    /// `hosts`: the lab's hosts (cluster mode), as [`crate::api::HostView`].
    Hosts(Vec<crate::api::HostView>),
    AccessKeys(Vec<AccessKeyInfoJson>),
    Rules(Vec<crate::api::RuleInfo>),
    Tags(Vec<crate::store::TagRecord>),
    Done(bool),
    /// `trace`: the steps and verdict of a traced packet.
    Trace(TraceJson),
    /// `stats i-...`.
    InstanceStats(InstanceStatsJson),
    Error(ErrorJson),
}

/// A rule that admits a traced packet.
#[derive(Debug, Serialize)]
pub struct TraceRuleJson {
    pub group: String,
    #[serde(flatten)]
    pub permission: PermissionJson,
}

/// `trace`: see docs/json.md.
#[derive(Debug, Serialize)]
pub struct TraceJson {
    pub generation: u64,
    pub protocol: String,
    pub src: String,
    pub dst: String,
    pub what: String,
    pub steps: Vec<crate::api::TraceStep>,
    /// `allowed` or `dropped`.
    pub verdict: String,
    /// The drop reason's counter name (`null` when allowed).
    pub reason: Option<String>,
    pub rules: Vec<TraceRuleJson>,
    /// IPv6 refused: the rules that would admit it but for their IPv4 CIDR.
    pub ipv4_only: Vec<TraceRuleJson>,
    /// Owner and groups of the destination whose rules were asked.
    pub owner: Option<String>,
    pub groups: Vec<String>,
}

/// One `--json` document.
#[derive(Debug, Serialize)]
pub struct Document {
    pub version: u32,
    #[serde(flatten)]
    pub payload: Payload,
}

fn counters(v: &[(String, u64)]) -> Vec<CounterJson> {
    v.iter()
        .map(|(name, count)| CounterJson {
            name: name.clone(),
            count: *count,
        })
        .collect()
}

/// The document of a successful response.
pub fn response(resp: &Response) -> Document {
    let payload = match resp {
        Response::GroupAdded {
            name,
            description,
            id,
        } => Payload::Group(GroupRefJson {
            name: name.clone(),
            id: Some(id.clone()),
            description: Some(description.clone()),
            permissions: None,
            egress_permissions: None,
        }),
        Response::GroupDeleted { name } => Payload::Group(GroupRefJson {
            name: name.clone(),
            id: None,
            description: None,
            permissions: None,
            egress_permissions: None,
        }),
        Response::Groups { groups } => {
            Payload::Groups(groups.iter().map(GroupJson::from).collect())
        }
        Response::GroupStats { groups } => {
            Payload::Groups(groups.iter().map(GroupJson::from).collect())
        }
        Response::Permissions {
            group,
            rules,
            egress,
        } => {
            let rules = Some(rules.iter().map(PermissionJson::from).collect());
            let (permissions, egress_permissions) = if *egress {
                (None, rules)
            } else {
                (rules, None)
            };
            Payload::Group(GroupRefJson {
                name: group.clone(),
                id: None,
                description: None,
                permissions,
                egress_permissions,
            })
        }
        Response::Reservations { reservations } => {
            Payload::Reservations(reservations.iter().map(ReservationJson::from).collect())
        }
        Response::StateChanges { changes } => {
            Payload::Instances(changes.iter().map(StateChangeJson::from).collect())
        }
        Response::Stats { stats: s } => Payload::Stats(StatsJson {
            generation: s.generation,
            groups: s.groups,
            rules: s.rules,
            instances: s.instances,
            edits: s.edits,
            edit_latency_us: Percentiles {
                p50: s.edit_latency_p50_us,
                p99: s.edit_latency_p99_us,
            },
            publish_latency_us: Percentiles {
                p50: s.publish_latency_p50_us,
                p99: s.publish_latency_p99_us,
            },
            ports: s.ports.iter().map(PortJson::from).collect(),
            drops: counters(&s.drops),
            conntrack_entries: s.conntrack_entries,
            events: counters(&s.events),
            ports_gone: s.ports_gone,
        }),
        Response::Images { images } => {
            Payload::Images(images.iter().map(ImageJson::from).collect())
        }
        Response::Hosts { hosts } => Payload::Hosts(hosts.clone()),
        Response::InstanceStats { stats } => Payload::InstanceStats(InstanceStatsJson {
            instance: InstanceJson::from(&stats.instance),
            port: stats.port.as_ref().map(PortJson::from),
        }),
        Response::Trace { trace: t } => Payload::Trace(TraceJson {
            generation: t.generation,
            protocol: t.proto.clone(),
            src: t.src.clone(),
            dst: t.dst.clone(),
            what: t.what.clone(),
            steps: t.steps.clone(),
            verdict: t.verdict.clone(),
            reason: t.reason.clone(),
            rules: t
                .rules
                .iter()
                .map(|r| TraceRuleJson {
                    group: r.group.clone(),
                    permission: PermissionJson::from(&r.rule),
                })
                .collect(),
            ipv4_only: t
                .ipv4_only
                .iter()
                .map(|r| TraceRuleJson {
                    group: r.group.clone(),
                    permission: PermissionJson::from(&r.rule),
                })
                .collect(),
            owner: t.owner.clone(),
            groups: t.groups.clone(),
        }),
        Response::AccessKey {
            key_id,
            secret,
            owner,
        } => Payload::AccessKey(AccessKeyJson {
            key_id: key_id.clone(),
            secret: secret.clone(),
            owner: owner.clone(),
        }),
        Response::Rules { rules } => Payload::Rules(rules.clone()),
        Response::Tags { tags } => Payload::Tags(tags.clone()),
        Response::Done | Response::CaptureStarted { .. } => Payload::Done(true),
        Response::AccessKeys { keys } => Payload::AccessKeys(
            keys.iter()
                .map(|k| AccessKeyInfoJson {
                    key_id: k.key_id.clone(),
                    owner: k.owner.clone(),
                    created: crate::ec2::sigv4::format_iso8601(k.created_at),
                })
                .collect(),
        ),
    };
    Document {
        version: VERSION,
        payload,
    }
}

/// The document of a failed command.
pub fn error(e: &ApiError) -> Document {
    Document {
        version: VERSION,
        payload: Payload::Error(ErrorJson {
            code: e.code.as_str().to_owned(),
            message: e.message.clone(),
        }),
    }
}

/// Pretty-printed, with a final newline.
pub fn to_text(doc: &Document) -> String {
    let mut s = serde_json::to_string_pretty(doc).unwrap_or_else(|e| {
        // Our own plain structs always serialise; keep the output JSON anyway.
        format!(
            "{{\"version\":{VERSION},\"error\":{{\"code\":\"{}\",\"message\":\"cannot encode output: {e}\"}}}}",
            crate::api::ErrorCode::InternalError
        )
    });
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use filter::model::{Owner, Proto};

    use super::*;

    #[test]
    fn rules_are_plain_values() {
        let rule = |proto, ports, source| Rule {
            proto,
            ports,
            source,
        };
        let g = Group {
            owner: Owner("111122223333".into()),
            name: "web".into(),
            id: "sg-00000001".into(),
            description: "Web Servers".into(),
            egress: filter::model::default_egress(),
            rules: vec![
                rule(
                    Proto::Tcp,
                    Ports::Range(22, 22),
                    Source::Cidr("0.0.0.0/0".parse().unwrap()),
                ),
                rule(
                    Proto::Icmp,
                    Ports::Icmp {
                        ty: Some(8),
                        code: None,
                    },
                    Source::Cidr("10.0.0.0/8".parse().unwrap()),
                ),
                rule(
                    Proto::All,
                    Ports::None,
                    Source::Group {
                        owner: Owner("444455556666".into()),
                        group: "app".into(),
                    },
                ),
                rule(
                    Proto::Icmpv6,
                    Ports::Icmp {
                        ty: Some(128),
                        code: None,
                    },
                    Source::Cidr6("2001:db8::/32".parse().unwrap()),
                ),
            ],
        };
        let v = serde_json::to_value(response(&Response::Groups { groups: vec![g] })).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"version": 1, "groups": [{
                "owner": "111122223333", "name": "web", "id": "sg-00000001",
                "description": "Web Servers",
                "permissions": [
                    {"protocol": "tcp", "from_port": 22, "to_port": 22,
                     "source": {"cidr": "0.0.0.0/0"}},
                    {"protocol": "icmp", "icmp_type": 8, "icmp_code": null,
                     "source": {"cidr": "10.0.0.0/8"}},
                    {"protocol": "all",
                     "source": {"group": "app", "owner": "444455556666"}},
                    {"protocol": "icmpv6", "icmp_type": 128, "icmp_code": null,
                     "source": {"cidr": "2001:db8::/32"}},
                ]
            }]})
        );
    }
}
