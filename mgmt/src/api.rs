//! The management API: one [`Command`] enum, its [`Response`]s and [`ApiError`],
//! and the wire protocol of the Unix socket.
//!
//! Every front door (the `sgswitch` CLI through the socket, the EC2 Query API
//! of [`crate::ec2`], tests in-process) turns its input into a [`Request`] and
//! gets back `Result<Response, ApiError>` from the management core; nothing else
//! touches the model or the data plane. There is one command per verb: both
//! front doors build the same [`Command`] (groups by [`GroupRef`], name or
//! `sg-` id; rules as [`Permission`]s), and the core resolves group
//! references in one place. The EC2 front door's one internal question (the
//! secret of an access key) is [`Handler::lookup_access_key`], not a command:
//! nothing on the socket can ask it.
//!
//! ## Wire protocol (Unix stream socket, JSON lines)
//!
//! * The client writes one request per line: a JSON object
//!   `{"owner": "111122223333" | null, "command": {"op": "add-group", ...}}`
//!   followed by `\n`. `owner` null means the daemon's default owner.
//! * The daemon answers each request with exactly one line, in order:
//!   `{"ok": RESPONSE}` or `{"error": {"code": "InvalidGroup.NotFound", "message": "..."}}`.
//!   Error codes are [`ErrorCode`]s: EC2's, plus the protocol's own
//!   `MalformedRequest`, `RequestTooLarge`, `ServiceUnavailable` and
//!   `InternalError`.
//! * A connection may carry any number of requests; the client closes it.
//!   A started `capture` is the exception: it takes the connection over
//!   (its own framing, see [`crate::capture`]) and the daemon closes it at
//!   the end.
//! * Hostile input never takes the daemon down: a line that is not UTF-8 or not a
//!   valid request gets a `MalformedRequest` error and the connection stays usable;
//!   a line longer than [`MAX_LINE`] bytes gets `RequestTooLarge` and the
//!   connection is closed (the rest of that line is never buffered); a connection
//!   idle for [`IDLE_TIMEOUT`] is closed; at most [`MAX_CONNECTIONS`] are served at
//!   once (more are answered with an error and closed). Each connection is served
//!   by its own thread, which runs its commands on the core (`daemon::MgmtHandle`).

use std::io::{self, BufRead, BufReader, Write};
use std::net::Ipv4Addr;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use filter::Ec2Error;
pub use filter::ErrorCode;
use filter::model::{Group, Rule, RuleSpec};
use serde::{Deserialize, Serialize};

pub use crate::store::ImageRecord;

/// Longest request line accepted, in bytes (without the newline).
pub const MAX_LINE: usize = 1 << 20;
/// Connections idle this long are closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 64;

/// One request: who asks, and what.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// 12-digit account id; `None` = the daemon's default owner.
    #[serde(default)]
    pub owner: Option<String>,
    pub command: Command,
    /// Cluster mode: answer an edit only once every live host enforces it
    /// (`--wait`). Ignored on a single host, where the answer always comes
    /// after enforcement.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub wait: bool,
}

/// Every management operation: one command per verb, whichever front door
/// builds it (the CLI, the EC2 Query API, tests).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum Command {
    AddGroup {
        name: String,
        #[serde(default)]
        description: String,
    },
    /// Delete a group named by name or `sg-` id.
    DeleteGroup {
        #[serde(alias = "name")]
        group: GroupRef,
    },
    /// The owner's groups named by name or id, in that order, each once (all
    /// of them, sorted by name, when `groups` is empty).
    DescribeGroups {
        #[serde(default, alias = "names")]
        groups: Vec<GroupRef>,
    },
    /// Add the rules of `permissions` to one group: all or nothing.
    Authorize {
        group: GroupRef,
        #[serde(alias = "spec", deserialize_with = "one_or_many")]
        permissions: Vec<Permission>,
        /// Egress rules (the permissions' sources are then destinations);
        /// absent: ingress.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        egress: bool,
    },
    /// Remove the rules of `permissions` from one group: all or nothing.
    Revoke {
        group: GroupRef,
        #[serde(alias = "spec", deserialize_with = "one_or_many")]
        permissions: Vec<Permission>,
        /// Egress rules (the permissions' sources are then destinations);
        /// absent: ingress.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        egress: bool,
    },
    /// Launch `count` instances (at least `min_count`, default `count`; EC2's
    /// MaxCount and MinCount) in groups by name or id (none = `default`).
    /// `qemu`: `true` boots QEMU guests (the AMI's registered image, else the
    /// daemon's default image), `false` makes namespace instances, absent
    /// (EC2's RunInstances) boots QEMU guests for an AMI registered with
    /// `register-image` and namespace instances otherwise. A `client_token`
    /// seen before from the same owner with the same parameters returns that
    /// reservation and launches nothing (`IdempotentParameterMismatch` with
    /// others).
    RunInstances {
        ami: String,
        #[serde(default = "one")]
        count: u32,
        #[serde(default)]
        min_count: Option<u32>,
        #[serde(default)]
        groups: Vec<GroupRef>,
        #[serde(default)]
        qemu: Option<bool>,
        #[serde(default)]
        client_token: Option<String>,
    },
    /// Attach an interface someone else made (a QEMU guest's TAP, a veth end)
    /// as an instance, with AF_PACKET; optionally inside namespace `netns`.
    AttachInstance {
        ifname: String,
        #[serde(default)]
        netns: Option<String>,
        /// Empty = `default`.
        #[serde(default)]
        groups: Vec<GroupRef>,
        /// Default: the lowest free address.
        #[serde(default)]
        ip: Option<Ipv4Addr>,
        /// `aa:bb:cc:dd:ee:ff`, the guest's MAC; default: derived from the id.
        #[serde(default)]
        mac: Option<String>,
    },
    /// All of the owner's instances when `ids` is empty.
    DescribeInstances {
        #[serde(default)]
        ids: Vec<String>,
    },
    /// `ids`, or every instance of the owner with `all` (not both).
    TerminateInstances {
        #[serde(default)]
        ids: Vec<String>,
        #[serde(default)]
        all: bool,
    },
    /// Register a guest image under `ami` (`ami-` + 8 hex digits) for
    /// `run-instances AMI --qemu`. Paths must be absolute (the CLI makes them so).
    RegisterImage {
        ami: String,
        kernel: PathBuf,
        initrd: PathBuf,
        #[serde(default)]
        disk: Option<PathBuf>,
        /// MiB; default [`DEFAULT_IMAGE_MEMORY_MB`].
        #[serde(default)]
        memory_mb: Option<u32>,
        /// Kernel command line; default [`DEFAULT_IMAGE_APPEND`].
        #[serde(default)]
        append: Option<String>,
    },
    /// All registered images when `amis` is empty.
    DescribeImages {
        #[serde(default)]
        amis: Vec<String>,
    },
    DeregisterImage {
        ami: String,
    },
    Stats,
    /// Cluster mode: the lab's hosts.
    Hosts,
    /// Run a frame of the given shape through the switch's own decision code
    /// against the live rules and say what happens to it, step by step
    /// ([`TraceReport`]). `from`/`to` are an instance id of the caller's or
    /// an IPv4 or IPv6 address; `proto` is `tcp`, `udp`, `icmp` or `icmpv6`;
    /// `ipv6` traces IPv6 between two instance ids (the family is otherwise
    /// the addresses', or IPv6 for `icmpv6`); `port` the destination
    /// port (TCP/UDP, the service port of the answered flow with
    /// `reply_of`); `icmp` is `TYPE:CODE` (default `8:0`, echo request).
    /// `established`: the packet belongs to a flow it opened; `reply_of`: it
    /// answers a flow `to` opened to `from`.
    Trace {
        from: String,
        to: String,
        proto: String,
        #[serde(default)]
        port: Option<u16>,
        #[serde(default)]
        icmp: Option<String>,
        #[serde(default)]
        established: bool,
        #[serde(default)]
        reply_of: bool,
        #[serde(default)]
        ipv6: bool,
    },
    /// Make an access key for the EC2 Query API acting as the request's owner.
    CreateAccessKey,
    /// The access keys of the request's owner (never their secrets).
    DescribeAccessKeys,
    /// Delete one of the request's owner's access keys: requests signed with
    /// it fail (`AuthFailure`) from then on.
    DeleteAccessKey {
        key_id: String,
    },
    /// Rules, ingress and egress, with their `sgr-` ids and descriptions:
    /// of `groups` (every group of the owner when empty); only those of
    /// `rule_ids` when given (an unknown one is
    /// `InvalidSecurityGroupRuleId.NotFound`).
    DescribeRules {
        #[serde(default)]
        groups: Vec<GroupRef>,
        #[serde(default)]
        rule_ids: Vec<String>,
    },
    /// Set the descriptions of existing ingress (or `egress`) rules of
    /// `group`: each permission's `description` on each of its rules (a rule
    /// the group does not have is `InvalidPermission.NotFound`). All or
    /// nothing.
    UpdateRuleDescriptions {
        group: GroupRef,
        permissions: Vec<Permission>,
        #[serde(default)]
        egress: bool,
    },
    /// Revoke ingress (or `egress`) rules of `group` by `sgr-` id (an id of
    /// the other direction is not found). All or nothing.
    RevokeRuleIds {
        group: GroupRef,
        rule_ids: Vec<String>,
        #[serde(default)]
        egress: bool,
    },
    /// Replace rules of `group` by id, each keeping its id and direction
    /// (ModifySecurityGroupRules): `(rule id, the new permission)`, one rule
    /// each. All or nothing.
    ModifyRules {
        group: GroupRef,
        rules: Vec<(String, Permission)>,
    },
    /// Tag the owner's groups (`sg-`) and instances (`i-`).
    CreateTags {
        resources: Vec<String>,
        tags: Vec<Tag>,
    },
    /// Remove tags: each key (any value when `value` is `None`, else only
    /// with that value); no tags = every tag of the resources.
    DeleteTags {
        resources: Vec<String>,
        #[serde(default)]
        tags: Vec<TagKey>,
    },
    /// Every tag of the owner's groups and instances.
    DescribeTags,
    /// `command` with `tags` on each group or instance it creates, in the
    /// same transaction (EC2's TagSpecification).
    Tagged {
        command: Box<Command>,
        tags: Vec<Tag>,
    },
    /// Check `command` as the caller would run it, changing nothing (EC2's
    /// `DryRun`): `DryRunOperation` when it would have succeeded,
    /// `UnauthorizedOperation` (naming the error it would have had) when
    /// not. For the group, rule, instance and tag commands.
    DryRun {
        command: Box<Command>,
    },
    /// One instance of the caller's: its state and its port's counters with
    /// drops by reason.
    InstanceStats {
        id: String,
    },
    /// Record frames at `target` (an instance id of the caller's, a port name
    /// as `stats` shows it, or `all`) as a pcapng stream on this connection
    /// ([`crate::capture`]): received from and sent to it, or with `drops`
    /// only the dropped frames received from it, each with its reason. Limits
    /// default to [`crate::capture::DEFAULT_COUNT`] frames,
    /// [`crate::capture::DEFAULT_MAX_BYTES`] bytes of file and
    /// [`crate::capture::DEFAULT_DURATION_SECS`] seconds; `snaplen` bytes kept
    /// of each frame (default 2048). Only on the socket, one at a time.
    Capture {
        target: String,
        #[serde(default)]
        drops: bool,
        #[serde(default)]
        count: Option<u64>,
        #[serde(default)]
        max_bytes: Option<u64>,
        #[serde(default)]
        duration_secs: Option<u64>,
        #[serde(default)]
        snaplen: Option<u32>,
    },
    /// `describe-group --stats`: the owner's groups as
    /// [`Command::DescribeGroups`] names them, each rule with the packets,
    /// bytes and flows it admitted on this host, and each group's "no rule
    /// matched" count.
    DescribeGroupStats {
        #[serde(default, alias = "names")]
        groups: Vec<GroupRef>,
    },
}

/// A security group named by name or by `sg-` id. On the wire a plain string
/// is a name; `{"id": "sg-..."}` an id (`{"name": "..."}` is a name too).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum GroupRef {
    Name(String),
    Id(String),
}

impl GroupRef {
    /// Group `name`.
    pub fn name(name: impl Into<String>) -> GroupRef {
        GroupRef::Name(name.into())
    }
}

impl From<&str> for GroupRef {
    fn from(name: &str) -> GroupRef {
        GroupRef::Name(name.to_owned())
    }
}

impl From<String> for GroupRef {
    fn from(name: String) -> GroupRef {
        GroupRef::Name(name)
    }
}

impl std::fmt::Display for GroupRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GroupRef::Name(n) | GroupRef::Id(n) => f.write_str(n),
        }
    }
}

/// The wire forms of a [`GroupRef`].
#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum GroupRefWire {
    Name(String),
    ByName { name: String },
    ById { id: String },
}

impl Serialize for GroupRef {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            GroupRef::Name(n) => GroupRefWire::Name(n.clone()),
            GroupRef::Id(id) => GroupRefWire::ById { id: id.clone() },
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for GroupRef {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<GroupRef, D::Error> {
        Ok(match GroupRefWire::deserialize(d)? {
            GroupRefWire::Name(name) | GroupRefWire::ByName { name } => GroupRef::Name(name),
            GroupRefWire::ById { id } => GroupRef::Id(id),
        })
    }
}

/// A source group of a [`Permission`]: by name or id, of `owner` (`None`: the
/// caller). On the wire `{"group": ..., "owner": ...}`, or the pair
/// `["NAME", "OWNER"|null]` of earlier clients.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SourceGroup {
    pub group: GroupRef,
    #[serde(default)]
    pub owner: Option<String>,
}

impl<'de> Deserialize<'de> for SourceGroup {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<SourceGroup, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Wire {
            Object {
                group: GroupRef,
                #[serde(default)]
                owner: Option<String>,
            },
            Pair(String, Option<String>),
        }
        Ok(match Wire::deserialize(d)? {
            Wire::Object { group, owner } => SourceGroup { group, owner },
            Wire::Pair(name, owner) => SourceGroup {
                group: GroupRef::Name(name),
                owner,
            },
        })
    }
}

/// One permission (EC2's `IpPermission`, the CLI's `-P/-p/-t/-s/-o/-u`): a
/// protocol and ports, from CIDRs and source groups. Expands into one rule
/// per CIDR and per group ([`RuleSpec::expand`], so the values are checked
/// and reported alike from every front door); no source at all means
/// `0.0.0.0/0`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Permission {
    /// `tcp`, `udp`, `icmp`, `icmpv6`, `-1`/`all` or a protocol number.
    #[serde(default)]
    pub proto: Option<String>,
    /// `N`, `N-M` or `-1` (TCP/UDP).
    #[serde(default)]
    pub ports: Option<String>,
    /// `TYPE:CODE` (ICMP, ICMPv6).
    #[serde(default)]
    pub icmp: Option<String>,
    #[serde(default)]
    pub cidrs: Vec<String>,
    #[serde(default)]
    pub groups: Vec<SourceGroup>,
    /// The description of each of its rules (EC2's `Description` of an IP
    /// range or group pair); none: empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// A tag: key and value.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tag {
    pub key: String,
    #[serde(default)]
    pub value: String,
}

/// A tag to remove: its key, and its value when only that value goes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TagKey {
    pub key: String,
    #[serde(default)]
    pub value: Option<String>,
}

/// A rule as the EC2 API lists it: its id, group and description.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleInfo {
    /// `sgr-` + 17 hex digits.
    pub rule_id: String,
    pub group_id: String,
    pub group_name: String,
    pub owner: String,
    /// An egress rule (`rule`'s source is then its destination).
    #[serde(default)]
    pub egress: bool,
    pub rule: Rule,
    pub description: String,
}

impl Permission {
    /// The model's rule spec of this permission, when every source group is
    /// named by name (`None` when one is named by id: only the core can
    /// resolve that).
    pub fn rule_spec(&self) -> Option<RuleSpec> {
        let groups = self
            .groups
            .iter()
            .map(|g| match &g.group {
                GroupRef::Name(n) => Some((n.clone(), g.owner.clone())),
                GroupRef::Id(_) => None,
            })
            .collect::<Option<Vec<_>>>()?;
        Some(RuleSpec {
            proto: self.proto.clone(),
            ports: self.ports.clone(),
            icmp: self.icmp.clone(),
            cidrs: self.cidrs.clone(),
            groups,
        })
    }
}

/// A rule spec with groups by name (tests, fuzzing, earlier clients).
impl From<RuleSpec> for Permission {
    fn from(s: RuleSpec) -> Permission {
        Permission {
            proto: s.proto,
            ports: s.ports,
            icmp: s.icmp,
            cidrs: s.cidrs,
            groups: s
                .groups
                .into_iter()
                .map(|(name, owner)| SourceGroup {
                    group: GroupRef::Name(name),
                    owner,
                })
                .collect(),
            description: None,
        }
    }
}

/// A list, or (as earlier clients sent `spec`) a single value.
fn one_or_many<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany<T> {
        Many(Vec<T>),
        One(T),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::Many(v) => v,
        OneOrMany::One(t) => vec![t],
    })
}

/// An access key's owner and secret, as the EC2 front door needs them to
/// check a signature ([`Handler::lookup_access_key`]; never on the socket).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeySecret {
    pub owner: String,
    pub secret: String,
}

/// Memory of a registered image's guests when `register-image` names none.
pub const DEFAULT_IMAGE_MEMORY_MB: u32 = 256;
/// Kernel command line of a registered image when `register-image` names none.
pub const DEFAULT_IMAGE_APPEND: &str = "console=ttyS0 quiet panic=-1";

fn one() -> u32 {
    1
}

impl Command {
    /// The command's name as the CLI and the socket protocol spell it
    /// (`add-group`, `authorize`, `run-instances`, ...).
    pub fn verb(&self) -> &'static str {
        match self {
            Command::AddGroup { .. } => "add-group",
            Command::DeleteGroup { .. } => "delete-group",
            Command::DescribeGroups { .. } => "describe-groups",
            Command::Authorize { .. } => "authorize",
            Command::Revoke { .. } => "revoke",
            Command::RunInstances { .. } => "run-instances",
            Command::AttachInstance { .. } => "attach-instance",
            Command::DescribeInstances { .. } => "describe-instances",
            Command::TerminateInstances { .. } => "terminate-instances",
            Command::RegisterImage { .. } => "register-image",
            Command::DescribeImages { .. } => "describe-images",
            Command::DeregisterImage { .. } => "deregister-image",
            Command::Stats => "stats",
            Command::Hosts => "hosts",
            Command::CreateAccessKey => "create-access-key",
            Command::Trace { .. } => "trace",
            Command::DescribeAccessKeys => "describe-access-keys",
            Command::DeleteAccessKey { .. } => "delete-access-key",
            Command::DescribeRules { .. } => "describe-rules",
            Command::UpdateRuleDescriptions { .. } => "update-rule-descriptions",
            Command::RevokeRuleIds { .. } => "revoke-rule-ids",
            Command::ModifyRules { .. } => "modify-rules",
            Command::CreateTags { .. } => "create-tags",
            Command::DeleteTags { .. } => "delete-tags",
            Command::DescribeTags => "describe-tags",
            Command::Tagged { command, .. } => command.verb(),
            Command::DryRun { command } => command.verb(),
            Command::InstanceStats { .. } => "instance-stats",
            Command::Capture { .. } => "capture",
            Command::DescribeGroupStats { .. } => "describe-group-stats",
        }
    }

    /// Whether the command changes state (and so is committed and published).
    pub fn is_edit(&self) -> bool {
        !matches!(
            self,
            Command::DescribeGroups { .. }
                | Command::DescribeInstances { .. }
                | Command::DescribeImages { .. }
                | Command::Stats
                | Command::Hosts
                | Command::DescribeAccessKeys
                | Command::DescribeRules { .. }
                | Command::DescribeTags
                | Command::DryRun { .. }
                | Command::Trace { .. }
                | Command::InstanceStats { .. }
                | Command::Capture { .. }
                | Command::DescribeGroupStats { .. }
        )
    }
}

/// A host of the lab as `hosts` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostView {
    pub name: String,
    /// `ADDR:PORT` of its overlay endpoint (`-` when lost and unknown).
    pub underlay: String,
    /// `live` (registered, lease alive) or `lost` (its lease expired; its
    /// instances are unreachable).
    pub state: String,
    /// The newest model revision it acknowledged enforcing (0: none).
    pub revision: i64,
    pub instances: u64,
}

/// An instance as the API shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceView {
    pub id: String,
    pub ami: String,
    pub ip: Ipv4Addr,
    /// `aa:bb:cc:dd:ee:ff`.
    pub mac: String,
    /// `pending` while being set up (a QEMU guest until its first DHCP lease),
    /// `running`, or `stopped` (its process ended, its namespace or port is
    /// gone: see `reason`).
    pub state: String,
    pub launch_index: u32,
    /// `netns:NAME`, `qemu:PID` or `port:IFNAME`.
    pub place: String,
    /// Why the instance is `pending` or `stopped` (EC2's state reason), e.g.
    /// `qemu-system-x86_64 exited with status 1: LAST LOG LINES`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Its IPv6 address (the switch's /64 + the EUI-64 of its MAC); set by
    /// describe-instances.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6_address: Option<std::net::Ipv6Addr>,
}

/// A reservation: the instances of one `run-instances`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reservation {
    pub id: String,
    pub owner: String,
    pub groups: Vec<String>,
    pub instances: Vec<InstanceView>,
}

/// An instance state transition (terminate).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateChange {
    pub id: String,
    pub previous: String,
    pub current: String,
}

/// Per-port counters.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortStats {
    pub name: String,
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    pub drops: u64,
    /// Frames received on this port and dropped, by reason: (reason, count)
    /// for the reasons that counted any, in counter order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub drop_reasons: Vec<(String, u64)>,
    /// Frames bound for this port that connection tracking and the rules
    /// refused, by reason (e.g. `no_rule`: a probe of a closed port).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub denied: Vec<(String, u64)>,
}

/// What one rule admitted on this host since the daemon started (or since
/// the rule was added): see `docs/observability.md`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleHits {
    /// Packets the rule decided: first packets of new flows, packets judged
    /// by rules without a flow (ICMP replies, unrelated ICMP errors), packets
    /// of tracked flows revalidated after an edit.
    pub packets: u64,
    /// Their bytes (Ethernet frames).
    pub bytes: u64,
    /// Flows whose first packet the rule admitted.
    pub flows: u64,
}

/// One group with its rules' hits (`describe-group --stats`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupStats {
    pub group: Group,
    /// One per rule of `group`, in its order.
    pub hits: Vec<RuleHits>,
    /// Packets to members of the group on this host dropped because no rule
    /// of the destination's groups matched (`no_rule`; a packet to an
    /// instance in several groups counts in each).
    pub no_rule: u64,
}

/// One rule's hits as `/metrics` exports them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleSeries {
    pub owner: String,
    pub group: String,
    /// The rule as a label: `tcp 22 0.0.0.0/0`, `udp 1000-2000 10.0.0.0/8`,
    /// `icmp 8:-1 0.0.0.0/0`, `all 111122223333/default`.
    pub rule: String,
    pub hits: RuleHits,
}

/// One group's "no rule matched" count as `/metrics` exports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupNoRule {
    pub owner: String,
    pub group: String,
    pub packets: u64,
}

/// Daemon statistics: control plane and (when a switch runs) data plane.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatsReport {
    /// Generation of the last published snapshot.
    pub generation: u64,
    pub groups: u64,
    pub rules: u64,
    pub instances: u64,
    /// Committed edits since start.
    pub edits: u64,
    /// Edit received → committed to the store's log, over the last edits
    /// (microseconds). The daemon's fsync of the log follows, outside the
    /// core (group commit), and is not included.
    pub edit_latency_p50_us: u64,
    pub edit_latency_p99_us: u64,
    /// Validated → snapshot published (incremental compile + swap, before the
    /// store commit), microseconds.
    pub publish_latency_p50_us: u64,
    pub publish_latency_p99_us: u64,
    /// Sum (microseconds) and number of all edit latencies since start.
    #[serde(default)]
    pub edit_latency_sum_us: u64,
    #[serde(default)]
    pub edit_latency_count: u64,
    /// Sum (microseconds) and number of all publish latencies since start.
    #[serde(default)]
    pub publish_latency_sum_us: u64,
    #[serde(default)]
    pub publish_latency_count: u64,
    pub ports: Vec<PortStats>,
    /// (reason, count) for every drop reason, in counter order.
    pub drops: Vec<(String, u64)>,
    pub conntrack_entries: u64,
    /// Other data-plane events: (name, count) — ARP and DHCP answers, software
    /// TSO segmentation and checksum completion, parks of adaptive polling.
    #[serde(default)]
    pub events: Vec<(String, u64)>,
    /// Ports removed because their netdev went away.
    pub ports_gone: u64,
    /// Every rule of every owner with its hits on this host.
    #[serde(default)]
    pub rules_hits: Vec<RuleSeries>,
    /// Every group of every owner with its "no rule matched" count.
    #[serde(default)]
    pub groups_no_rule: Vec<GroupNoRule>,
}

/// One step of a trace: what a stage of the datapath did with a frame.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceStep {
    /// `request` (the frame that opened the flow, with `--established` or
    /// `--reply-of`), `source`, `arp`, `destination`, `connection`,
    /// `transmit`.
    pub step: String,
    /// `ok`, `drop`, `answered`, `new`, `tracked`, `skip`.
    pub result: String,
    pub detail: String,
}

/// A rule that admits a traced packet: its group and the rule.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceRule {
    pub group: String,
    pub rule: Rule,
}

/// The answer of `trace` (see [`Command::Trace`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceReport {
    /// Generation of the rule snapshot the frames were judged against.
    pub generation: u64,
    /// `tcp`, `udp`, `icmp` or `icmpv6`.
    pub proto: String,
    /// `ADDR:PORT` (TCP/UDP; `[ADDR]:PORT` for IPv6) or `ADDR` (ICMP) of the
    /// traced packet.
    pub src: String,
    pub dst: String,
    /// TCP flags (`SYN`, `ACK`, `SYN+ACK`) or ICMP `type T code C`.
    pub what: String,
    pub steps: Vec<TraceStep>,
    /// `allowed` (delivered) or `dropped`.
    pub verdict: String,
    /// The drop reason (counter name, e.g. `no_rule`) when dropped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// When the destination's rules admitted the packet: every rule of its
    /// groups that matches it.
    pub rules: Vec<TraceRule>,
    /// An IPv6 packet refused for want of a rule: the rules of the consulted
    /// groups that would admit it but for their IPv4 CIDR (`0.0.0.0/0` does
    /// not open IPv6).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ipv4_only: Vec<TraceRule>,
    /// Owner and groups of the destination instance whose rules were asked
    /// (empty when the destination is no instance of this host).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    pub groups: Vec<String>,
}

/// `stats i-...`: one instance and its switch port's counters.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceStats {
    pub instance: InstanceView,
    /// Its switch port (`None`: no port attached, e.g. stopped).
    pub port: Option<PortStats>,
}

/// A successful answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Response {
    /// add-group.
    GroupAdded {
        name: String,
        description: String,
        id: String,
    },
    /// delete-group.
    GroupDeleted {
        name: String,
    },
    /// describe-group.
    Groups {
        groups: Vec<Group>,
    },
    /// authorize / revoke: the rules added or removed.
    Permissions {
        group: String,
        rules: Vec<Rule>,
        /// The rules are egress rules (each source is the destination);
        /// absent: ingress.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        egress: bool,
    },
    /// run-instances / describe-instances.
    Reservations {
        reservations: Vec<Reservation>,
    },
    /// terminate-instances.
    StateChanges {
        changes: Vec<StateChange>,
    },
    Stats {
        stats: Box<StatsReport>,
    },
    /// hosts (cluster mode).
    Hosts {
        hosts: Vec<HostView>,
    },
    /// stats i-...: one instance's state and port counters.
    InstanceStats {
        stats: Box<InstanceStats>,
    },
    /// describe-group --stats.
    GroupStats {
        groups: Vec<GroupStats>,
    },
    /// trace.
    Trace {
        trace: Box<TraceReport>,
    },
    /// register-image (the new image), describe-images, deregister-image (the
    /// removed image).
    Images {
        images: Vec<ImageRecord>,
    },
    /// create-access-key: shown once, never again.
    AccessKey {
        key_id: String,
        secret: String,
        owner: String,
    },
    /// describe-access-keys (the owner's keys, by id), delete-access-key
    /// (the deleted key): no secrets.
    AccessKeys {
        keys: Vec<AccessKeyInfo>,
    },
    /// describe-rules (and the rules modified by modify-rules).
    Rules {
        rules: Vec<RuleInfo>,
    },
    /// describe-tags.
    Tags {
        tags: Vec<crate::store::TagRecord>,
    },
    /// An edit that answers nothing but success (tags, descriptions).
    Done,
    /// capture: started with these limits; the pcapng stream follows on the
    /// connection ([`crate::capture`]).
    CaptureStarted {
        target: String,
        limits: crate::capture::Limits,
    },
}

/// An access key as listed: its id, owner and creation time, not its secret.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessKeyInfo {
    pub key_id: String,
    pub owner: String,
    /// Seconds since the Unix epoch.
    pub created_at: i64,
}

/// A failed answer: an error code and a message naming the bad value. The
/// state is unchanged after any error.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            message: message.into(),
        }
    }

    /// `InternalError`: the daemon failed; nothing was changed.
    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(ErrorCode::InternalError, message)
    }
}

impl From<Ec2Error> for ApiError {
    fn from(e: Ec2Error) -> ApiError {
        ApiError {
            code: e.code,
            message: e.message,
        }
    }
}

/// The answer to one request.
pub type Reply = Result<Response, ApiError>;

/// The wire form of a [`Reply`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WireReply {
    Ok(Response),
    Error(ApiError),
}

impl From<Reply> for WireReply {
    fn from(r: Reply) -> WireReply {
        match r {
            Ok(v) => WireReply::Ok(v),
            Err(e) => WireReply::Error(e),
        }
    }
}

impl From<WireReply> for Reply {
    fn from(w: WireReply) -> Reply {
        match w {
            WireReply::Ok(v) => Ok(v),
            WireReply::Error(e) => Err(e),
        }
    }
}

/// One line read from a peer.
#[derive(Debug, PartialEq, Eq)]
pub enum Line {
    /// A complete line, without its `\n`.
    Line(Vec<u8>),
    /// The line exceeded the cap; the connection must be closed.
    TooLong,
    /// End of stream (a partial last line without `\n` is discarded).
    Eof,
}

/// Read one `\n`-terminated line of at most `cap` bytes, never buffering more
/// than `cap` bytes of it.
pub fn read_line_capped<R: BufRead>(r: &mut R, cap: usize) -> io::Result<Line> {
    let mut out = Vec::new();
    loop {
        let buf = match r.fill_buf() {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if buf.is_empty() {
            return Ok(Line::Eof);
        }
        match buf.iter().position(|&b| b == b'\n') {
            Some(i) => {
                if out.len() + i > cap {
                    return Ok(Line::TooLong);
                }
                out.extend_from_slice(&buf[..i]);
                r.consume(i + 1);
                return Ok(Line::Line(out));
            }
            None => {
                let n = buf.len();
                if out.len() + n > cap {
                    return Ok(Line::TooLong);
                }
                out.extend_from_slice(buf);
                r.consume(n);
            }
        }
    }
}

/// Decode a request line.
pub fn decode_request(line: &[u8]) -> Result<Request, ApiError> {
    let text = std::str::from_utf8(line).map_err(|e| {
        ApiError::new(
            ErrorCode::MalformedRequest,
            format!(
                "request is not UTF-8 (invalid byte at offset {})",
                e.valid_up_to()
            ),
        )
    })?;
    serde_json::from_str(text)
        .map_err(|e| ApiError::new(ErrorCode::MalformedRequest, format!("invalid request: {e}")))
}

/// Encode a reply as one line (with `\n`).
pub fn encode_reply(reply: Reply) -> Vec<u8> {
    let wire = WireReply::from(reply);
    let mut v = serde_json::to_vec(&wire).unwrap_or_else(|e| {
        // Serialising our own types cannot fail; keep the protocol even if it did.
        format!(
            "{{\"error\":{{\"code\":\"{}\",\"message\":\"cannot encode reply: {e}\"}}}}",
            ErrorCode::InternalError
        )
        .into_bytes()
    });
    v.push(b'\n');
    v
}

/// Something that answers requests (the management core's handle).
pub trait Handler: Send + Sync + 'static {
    fn handle(&self, req: Request) -> Reply;

    /// The owner and secret of an EC2 access key (`AuthFailure` when unknown).
    /// Only the daemon's own EC2 front door asks this; it is no [`Command`], so
    /// nothing on the socket can.
    fn lookup_access_key(&self, key_id: &str) -> Result<KeySecret, ApiError>;

    /// Start the capture of a [`Command::Capture`] request; the connection
    /// then streams it ([`crate::capture::stream`]).
    fn start_capture(&self, _req: Request) -> Result<crate::capture::Started, ApiError> {
        Err(ApiError::new(
            ErrorCode::InvalidAction,
            "capture is not served here (no switch)",
        ))
    }
}

/// A plain function answers requests and knows no access keys.
impl<F: Fn(Request) -> Reply + Send + Sync + 'static> Handler for F {
    fn handle(&self, req: Request) -> Reply {
        self(req)
    }

    fn lookup_access_key(&self, key_id: &str) -> Result<KeySecret, ApiError> {
        Err(unknown_access_key(key_id))
    }
}

/// The `AuthFailure` of an access key nobody knows.
pub fn unknown_access_key(key_id: &str) -> ApiError {
    ApiError::new(
        ErrorCode::AuthFailure,
        format!(
            "AWS was not able to validate the provided access credentials: unknown access key '{}'",
            key_id.escape_default()
        ),
    )
}

/// Serve one connection until EOF, error, idle timeout or an oversized line.
/// A started capture takes the connection over until it ends.
pub fn serve_connection(stream: UnixStream, handler: &dyn Handler) -> io::Result<()> {
    let mut reader = BufReader::with_capacity(64 * 1024, stream);
    loop {
        let line = read_line_capped(&mut reader, MAX_LINE)?;
        let reply = match line {
            Line::Eof => return Ok(()),
            Line::TooLong => {
                let e = ApiError::new(
                    ErrorCode::RequestTooLarge,
                    format!("request line longer than {MAX_LINE} bytes"),
                );
                reader.get_mut().write_all(&encode_reply(Err(e)))?;
                return Ok(());
            }
            Line::Line(l) if l.iter().all(u8::is_ascii_whitespace) => continue,
            Line::Line(l) => match decode_request(&l) {
                Ok(req) if matches!(req.command, Command::Capture { .. }) => {
                    match handler.start_capture(req) {
                        Ok(started) => {
                            let ok = Ok(Response::CaptureStarted {
                                target: started.target.clone(),
                                limits: started.limits,
                            });
                            let mut stream = reader.into_inner();
                            stream.write_all(&encode_reply(ok))?;
                            crate::capture::stream(stream, started)?;
                            return Ok(());
                        }
                        Err(e) => Err(e),
                    }
                }
                Ok(req) => handler.handle(req),
                Err(e) => Err(e),
            },
        };
        let out = reader.get_mut();
        out.write_all(&encode_reply(reply))?;
        out.flush()?;
    }
}

/// Accept connections on `listener` until `stop` is set, each served on its own
/// thread. Returns when stopped (poke the listener with a connection to wake it).
pub fn serve(listener: UnixListener, handler: Arc<dyn Handler>, stop: Arc<AtomicBool>) {
    let active = Arc::new(AtomicUsize::new(0));
    for conn in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let mut stream = match conn {
            Ok(s) => s,
            Err(_) => {
                // EMFILE and friends: do not spin; try again shortly.
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        let slot = Slot::take(&active, MAX_CONNECTIONS);
        if slot.is_none() {
            let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
            let busy = ApiError::new(
                ErrorCode::ServiceUnavailable,
                format!("more than {MAX_CONNECTIONS} connections"),
            );
            let _ = stream.write_all(&encode_reply(Err(busy)));
            continue;
        }
        let _ = stream.set_read_timeout(Some(IDLE_TIMEOUT));
        let _ = stream.set_write_timeout(Some(IDLE_TIMEOUT));
        let handler = handler.clone();
        // The slot is released when the thread ends, however it ends (or when
        // the closure is dropped because the thread could not be spawned).
        let _ = std::thread::Builder::new()
            .name("sgswitch-conn".into())
            .spawn(move || {
                let _slot = slot;
                crate::sched::apply("sgswitch-conn");
                let _ = serve_connection(stream, &*handler);
            });
    }
}

/// One of at most `max` connection slots counted in `active`, released on drop
/// (also when the thread that holds it never started). Both front doors (this
/// socket and the EC2 API's HTTP server) use it.
pub(crate) struct Slot(Arc<AtomicUsize>);

impl Slot {
    pub(crate) fn take(active: &Arc<AtomicUsize>, max: usize) -> Option<Slot> {
        if active.fetch_add(1, Ordering::SeqCst) >= max {
            active.fetch_sub(1, Ordering::SeqCst);
            None
        } else {
            Some(Slot(active.clone()))
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The text of an error and all its causes, `: `-separated: the one way to
/// print an error. Every error type's own message leaves its cause out (the
/// cause is its `source()`), so nothing is printed twice.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// Errors of the client side of the socket.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "cannot connect to the sgswitch daemon at {path}{}",
        connect_hint(source)
    )]
    Connect {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("talking to the sgswitch daemon at {path}")]
    Io {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("the sgswitch daemon at {path} closed the connection without answering")]
    NoAnswer { path: String },
    #[error("the sgswitch daemon at {path} sent an invalid answer")]
    BadAnswer {
        path: String,
        #[source]
        source: serde_json::Error,
    },
}

/// What to tell the user after a failed connect: the socket is root's by
/// default, otherwise the daemon is probably not running.
fn connect_hint(e: &io::Error) -> &'static str {
    if e.kind() == io::ErrorKind::PermissionDenied {
        " (the socket is only for root by default, mode 0600: run as root)"
    } else {
        " (is `sgswitch up` running?)"
    }
}

/// Send one request to the daemon at `socket` and wait for its reply.
pub fn call(socket: &Path, req: &Request) -> Result<Reply, ClientError> {
    let path = socket.display().to_string();
    let io_err = |source| ClientError::Io {
        path: path.clone(),
        source,
    };
    let mut stream = UnixStream::connect(socket).map_err(|source| ClientError::Connect {
        path: path.clone(),
        source,
    })?;
    let mut line = serde_json::to_vec(req).map_err(|e| io_err(io::Error::other(e)))?;
    line.push(b'\n');
    stream.write_all(&line).map_err(io_err)?;
    let mut reader = BufReader::new(stream);
    match read_line_capped(&mut reader, 64 << 20).map_err(io_err)? {
        Line::Line(l) => {
            let wire: WireReply =
                serde_json::from_slice(&l).map_err(|source| ClientError::BadAnswer {
                    path: path.clone(),
                    source,
                })?;
            Ok(wire.into())
        }
        Line::Eof | Line::TooLong => Err(ClientError::NoAnswer { path }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(line: &str) -> Command {
        decode_request(line.as_bytes())
            .unwrap_or_else(|e| panic!("{line}: {e}"))
            .command
    }

    #[test]
    fn one_command_per_verb_on_the_wire_and_earlier_spellings_still_decode() {
        let cmd = Command::Authorize {
            egress: false,
            group: GroupRef::Id("sg-0000abcd".into()),
            permissions: vec![Permission {
                proto: Some("tcp".into()),
                ports: Some("80".into()),
                groups: vec![SourceGroup {
                    group: "app".into(),
                    owner: Some("444455556666".into()),
                }],
                ..Permission::default()
            }],
        };
        let line = serde_json::to_string(&Request {
            owner: None,
            command: cmd.clone(),
            wait: false,
        })
        .unwrap();
        assert!(line.contains(r#""group":{"id":"sg-0000abcd"}"#), "{line}");
        assert!(
            line.contains(r#"{"group":"app","owner":"444455556666"}"#),
            "{line}"
        );
        assert_eq!(decode(&line), cmd);
        let Command::Authorize {
            permissions: cmd_permissions,
            ..
        } = cmd
        else {
            unreachable!()
        };
        // What clients before the one-command API sent.
        assert_eq!(
            decode(
                r#"{"command":{"op":"authorize","group":"web","spec":{"proto":"tcp","ports":"80","icmp":null,"cidrs":[],"groups":[["app","444455556666"]]}}}"#
            ),
            Command::Authorize {
                egress: false,
                group: "web".into(),
                permissions: cmd_permissions,
            }
        );
        assert_eq!(
            decode(r#"{"command":{"op":"delete-group","name":"web"}}"#),
            Command::DeleteGroup {
                group: "web".into()
            }
        );
        assert_eq!(
            decode(r#"{"command":{"op":"describe-groups","names":["web",{"id":"sg-1"}]}}"#),
            Command::DescribeGroups {
                groups: vec!["web".into(), GroupRef::Id("sg-1".into())]
            }
        );
        assert_eq!(
            decode(
                r#"{"command":{"op":"run-instances","ami":"ami-1","count":2,"groups":["web"]}}"#
            ),
            Command::RunInstances {
                ami: "ami-1".into(),
                count: 2,
                min_count: None,
                groups: vec!["web".into()],
                qemu: None,
                client_token: None,
            }
        );
    }

    #[test]
    fn the_twins_and_the_internal_lookup_are_not_commands() {
        for op in [
            "lookup-access-key",
            "delete-group-ref",
            "describe-group-refs",
            "authorize-permissions",
            "revoke-permissions",
            "run-instances-ec2",
        ] {
            let line = format!(r#"{{"command":{{"op":"{op}","key_id":"AKIA0000000000000000"}}}}"#);
            let e = decode_request(line.as_bytes()).unwrap_err();
            assert_eq!(e.code, ErrorCode::MalformedRequest, "{op}");
        }
    }

    #[test]
    fn error_chain_prints_each_cause_once() {
        let e = ClientError::Io {
            path: "/run/s.sock".into(),
            source: io::Error::other("broken pipe"),
        };
        assert_eq!(
            error_chain(&e),
            "talking to the sgswitch daemon at /run/s.sock: broken pipe"
        );
    }
}
