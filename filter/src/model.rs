//! The security-group model and its validation: owners, groups, rules, instances.
//!
//! This is the one implementation of DESIGN §2's rules that the CLI, the socket
//! API, the EC2 Query API and the store all call. Every mutating method validates
//! everything first and then applies the whole edit, so an `Err` always leaves the
//! model unchanged. Errors carry the EC2 error code and name the offending value.
//!
//! Invariants kept by the methods:
//! * every owner that has ever been seen has a `default` group whose initial rule is
//!   "all traffic from members of `default` of the same owner";
//! * a group has at most `Limits::rules_per_group` rules, no two equal;
//! * rules are kept normalised (CIDR host bits cleared, `-1` port = all ports) so
//!   equality is semantic equality;
//! * a group is not deleted while an instance is in it or a rule of any *other*
//!   group (of any owner) names it as source — its own self-referencing rules go
//!   with it; `default` is never deleted; so group sources never dangle;
//! * instance ids, MACs and IPs are unique; instances are only in their owner's
//!   groups, and their membership never changes.
//!
//! Choices where DESIGN §2 and the 2006 tools are silent:
//! * **Protocol default** of [`RuleSpec::expand`]: `-P` wins; otherwise `-p` means
//!   `tcp` and `-t` means `icmp`; with neither the rule is `all` (the 2006 group
//!   grant, and "everything from this CIDR"). `-p` with `icmp`/`all`, `-t` with
//!   anything but `icmp`, and `-p` together with `-t` are `InvalidParameterValue`.
//!   `tcp`/`udp` without `-p` are `InvalidParameterValue`, as in EC2 ("must
//!   specify both from and to ports with TCP/UDP"; `-p -1` is all ports);
//!   `icmp` without `-t` means all types.
//! * `-t -1:CODE` is normalised to `-1:-1` (type `-1` means every type, so a code
//!   is meaningless); `-p -1` is normalised to `0-65535`.
//! * The same rule twice in one authorize **or revoke** request is
//!   `InvalidPermission.Duplicate`.
//! * Every owner implicitly has a `default` group: [`Model::ensure_owner`] creates
//!   it, [`Model::add_group`] and [`Model::add_instance`] call it after validating,
//!   and a rule naming `-o default -u OTHER` creates OTHER's `default` if OTHER has
//!   never been seen (EC2 accounts always have one). Other methods do not create
//!   anything: the control plane calls `ensure_owner(caller)` once per request.
//! * Group ids (`sg-` + 8 hex) come from [`Model::next_group_seq`] through a
//!   bijective 32-bit mixer: deterministic, unique for 2^32 groups, random-looking;
//!   an id already taken is skipped, and [`Model::insert_group_raw`] advances the
//!   sequence past every reloaded id (the mixer is inverted), so a store need not
//!   persist the counter.
//! * Group-source rules may carry a protocol and ports (later EC2) or none (the
//!   2006 all-protocol grant): both are accepted.
//! * [`Model::verify`] re-checks every invariant for state assembled from outside
//!   (a reload, a deserialized model).
//! * Instance ids, MACs and IPs must be unique; a clash is
//!   `InvalidParameterValue` naming the value (EC2 has no closer code).
//! * Serialization: `groups` is written as a list of [`Group`]s (JSON maps need
//!   string keys); the key is rebuilt from each group's owner and name.
//!
//! Rooms: rule text (parsing, normal form, printing) is in `spec`, ids and MACs
//! in `ids` (both re-exported here); this file keeps the types and the
//! model's invariants. Nothing here does I/O.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use ipnet::{Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};

use crate::Mac;

mod ids;
mod spec;

pub use ids::{
    group_id_seq, instance_mac, is_id, new_group_id, new_instance_id, new_reservation_id,
};
pub use spec::{parse_cidr, parse_icmp_type_code, parse_port_range, parse_source_cidr};

use crate::error::ErrorCode;

/// An error of a model operation: an EC2 code and a message naming the bad value.
/// Printed by the CLI as `Code: message`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[error("{code}: {message}")]
pub struct Ec2Error {
    pub code: ErrorCode,
    pub message: String,
}

impl Ec2Error {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Ec2Error {
            code,
            message: message.into(),
        }
    }
}

/// Account id: exactly 12 ASCII digits (validated by [`Owner::parse`]).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Owner(pub String);

/// Protocol of a rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tcp,
    Udp,
    Icmp,
    /// All protocols, all ports (EC2 `-1` / `all`), both address families.
    All,
    /// ICMPv6 (IP protocol 58), with a type:code like `icmp`; IPv6 only.
    Icmpv6,
}

/// Port part of a rule. Normalised: `Ports::Range(0, 65535)` for "all ports" of
/// TCP/UDP, `Icmp { ty: None, code: None }` for all ICMP, `None` for `Proto::All`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Ports {
    /// Only with `Proto::All`.
    None,
    /// Inclusive TCP/UDP port range, `lo <= hi`.
    Range(u16, u16),
    /// ICMP (or ICMPv6) type and code; `None` is the `-1` wildcard. `code` is
    /// `None` whenever `ty` is `None`.
    Icmp { ty: Option<u8>, code: Option<u8> },
}

/// Where allowed traffic may come from.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Source {
    /// A normalised IPv4 CIDR (host bits cleared): the rule applies to IPv4
    /// packets only (`0.0.0.0/0` does not open IPv6, as in AWS).
    Cidr(Ipv4Net),
    /// A normalised IPv6 CIDR (host bits cleared): the rule applies to IPv6
    /// packets only.
    Cidr6(Ipv6Net),
    /// Members of a group, `owner`'s group named `group`: matched on the verified
    /// sender instance, never on an address.
    Group { owner: Owner, group: String },
}

/// One allow rule: one (protocol, ports, source) triple.
///
/// Address families: a rule with a CIDR applies to that CIDR's family only;
/// `icmp` is IPv4 and `icmpv6` IPv6 (and each refuses a CIDR of the other
/// family); `all`, `tcp` and `udp` with a group source apply to both families
/// (a group source matches its verified member instances by either address).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Rule {
    pub proto: Proto,
    pub ports: Ports,
    pub source: Source,
}

/// A security group.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Group {
    pub owner: Owner,
    pub name: String,
    /// `sg-` + 8 hex digits, stable for the group's life.
    pub id: String,
    pub description: String,
    /// In insertion order, no duplicates.
    pub rules: Vec<Rule>,
    /// Egress rules (VPC form): the rule's `source` is the *destination* (a
    /// CIDR or a group whose verified member instances are matched). In
    /// insertion order, no duplicates; a new group starts with
    /// [`default_egress`]. Absent in state written before egress rules
    /// existed: then it is the default, so nothing changes for such groups.
    #[serde(default = "default_egress")]
    pub egress: Vec<Rule>,
}

/// The IPv4 half of the egress every new group starts with: all protocols to
/// `0.0.0.0/0`.
pub fn default_egress_rule() -> Rule {
    Rule {
        proto: Proto::All,
        ports: Ports::None,
        source: Source::Cidr(Ipv4Net::default()),
    }
}

/// The IPv6 half of the default egress: all protocols to `::/0`.
pub fn default_egress_rule6() -> Rule {
    Rule {
        proto: Proto::All,
        ports: Ports::None,
        source: Source::Cidr6(Ipv6Net::default()),
    }
}

/// Are these egress rules exactly the default a new group starts with (both
/// halves, in either order)? `describe-group` leaves such egress unprinted.
pub fn is_default_egress(rules: &[Rule]) -> bool {
    rules.len() == 2
        && rules.contains(&default_egress_rule())
        && rules.contains(&default_egress_rule6())
}

/// A new group's egress rules ("all protocols to `0.0.0.0/0` and `::/0`"):
/// two rules, [`default_egress_rule`] then [`default_egress_rule6`], so each
/// family's half can be revoked on its own (as in AWS, where they are two
/// permissions).
pub fn default_egress() -> Vec<Rule> {
    vec![default_egress_rule(), default_egress_rule6()]
}

impl Group {
    /// The ingress (`egress == false`) or egress rules.
    pub fn rules_of(&self, egress: bool) -> &Vec<Rule> {
        if egress { &self.egress } else { &self.rules }
    }

    fn rules_of_mut(&mut self, egress: bool) -> &mut Vec<Rule> {
        if egress {
            &mut self.egress
        } else {
            &mut self.rules
        }
    }
}

/// `rule` as printed in messages: `tcp 22-22 from 10.0.0.0/8` for ingress,
/// `tcp 22-22 to 10.0.0.0/8` for egress.
pub fn rule_text(rule: &Rule, egress: bool) -> String {
    let s = rule.to_string();
    if egress {
        s.replacen(" from ", " to ", 1)
    } else {
        s
    }
}

/// The address SLAAC forms from a /64 `prefix` and a MAC: the prefix, then
/// the modified EUI-64 interface id (RFC 4291 appendix A: `ff:fe` inserted in
/// the middle of the MAC, the universal/local bit flipped).
pub fn eui64_address(prefix: Ipv6Net, mac: Mac) -> Ipv6Addr {
    let mut b = prefix.network().octets();
    b[8] = mac[0] ^ 0x02;
    b[9] = mac[1];
    b[10] = mac[2];
    b[11] = 0xff;
    b[12] = 0xfe;
    b[13] = mac[3];
    b[14] = mac[4];
    b[15] = mac[5];
    Ipv6Addr::from(b)
}

/// The link-local address (`fe80::/64` + EUI-64) of a MAC: what a guest uses
/// as the source of its neighbor discovery.
pub fn link_local_address(mac: Mac) -> Ipv6Addr {
    eui64_address(
        Ipv6Net::new(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0), 64).expect("a /64 is valid"),
        mac,
    )
}

/// An instance as the model knows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instance {
    /// `i-` + 8 hex digits.
    pub id: String,
    pub owner: Owner,
    pub mac: Mac,
    pub ip: Ipv4Addr,
    /// Group names of `owner`, at least one, no duplicates, sorted.
    pub groups: Vec<String>,
}

/// Configurable limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// DESIGN §2: 100 by default.
    pub rules_per_group: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            rules_per_group: 100,
        }
    }
}

/// Options of an authorize/revoke request as the CLI and APIs deliver them, before
/// validation. One spec expands into one rule per source (`-s` CIDRs and `-o/-u`
/// groups); with no source at all it means `0.0.0.0/0` (`::/0` for `icmpv6`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleSpec {
    /// `-P`: `tcp`, `udp`, `icmp`, `all`, `-1`, or the numbers 6, 17, 1 (any
    /// case). Default: `tcp` with `-p`, `icmp` with `-t`, else `all` (see
    /// [`RuleSpec::expand`]).
    pub proto: Option<String>,
    /// `-p`: `N`, `N-M`, or `-1`.
    pub ports: Option<String>,
    /// `-t`: `TYPE:CODE`, each a number or `-1`.
    pub icmp: Option<String>,
    /// `-s`: CIDRs (host bits allowed, normalised).
    pub cidrs: Vec<String>,
    /// `-o GROUP -u OWNER` pairs; owner `None` means the caller.
    pub groups: Vec<(String, Option<String>)>,
}

/// One applied change of the model, as recorded by [`Model::record_changes`]:
/// enough to write it to a store, to recompile only what it touches
/// ([`crate::compile::Compiler::apply`]) and to undo it ([`Model::undo`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// A group was created (as it was then); `prev_seq` is the group id
    /// sequence before its id was taken.
    GroupAdded { group: Group, prev_seq: u64 },
    /// A group was deleted (with the rules it had).
    GroupDeleted(Group),
    /// `rules` were appended to the group `key` (id `group_id`): to its
    /// egress rules if `egress`, else to its ingress rules.
    RulesAdded {
        key: (Owner, String),
        group_id: String,
        rules: Vec<Rule>,
        egress: bool,
    },
    /// `rules` were removed from the group `key`, whose rules were `before`.
    RulesRemoved {
        key: (Owner, String),
        group_id: String,
        rules: Vec<Rule>,
        before: Vec<Rule>,
        egress: bool,
    },
    /// An instance was added (as stored).
    InstanceAdded(Instance),
    /// An instance was removed.
    InstanceRemoved(Instance),
}

/// The whole model.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Model {
    limits: Limits,
    /// Keyed by (owner, group name).
    #[serde(with = "groups_as_list")]
    groups: BTreeMap<(Owner, String), Group>,
    /// Keyed by instance id.
    instances: BTreeMap<String, Instance>,
    /// Sequence number of the next group id (see [`Model::add_group`]).
    #[serde(default)]
    next_group_seq: u64,
    /// The instances' IPv6 prefix, a /64: an instance's IPv6 address is this
    /// prefix with the modified EUI-64 interface id of its MAC
    /// ([`eui64_address`]), the address SLAAC gives a guest. `None`:
    /// instances are IPv4-only.
    #[serde(default)]
    subnet6: Option<Ipv6Net>,
    /// The changes applied since recording began ([`Model::record_changes`]);
    /// `None`: not recording (the default: no cost for models nobody commits).
    #[serde(skip)]
    journal: Option<Vec<Change>>,
}

/// Equality of the state; the change journal is not part of it.
impl PartialEq for Model {
    fn eq(&self, other: &Model) -> bool {
        self.limits == other.limits
            && self.groups == other.groups
            && self.instances == other.instances
            && self.next_group_seq == other.next_group_seq
            && self.subnet6 == other.subnet6
    }
}

impl Eq for Model {}

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

fn invalid(message: impl Into<String>) -> Ec2Error {
    Ec2Error::new(ErrorCode::InvalidParameterValue, message)
}

fn group_not_found(owner: &Owner, name: &str) -> Ec2Error {
    Ec2Error::new(
        ErrorCode::InvalidGroupNotFound,
        format!("the security group '{name}' of owner {owner} does not exist"),
    )
}

// ---------------------------------------------------------------------------
// Owner, names, ids
// ---------------------------------------------------------------------------

impl Owner {
    /// Parse an account id: exactly 12 ASCII digits.
    pub fn parse(s: &str) -> Result<Owner, Ec2Error> {
        if s.len() == 12 && s.bytes().all(|b| b.is_ascii_digit()) {
            Ok(Owner(s.to_owned()))
        } else {
            Err(invalid(format!(
                "invalid owner id '{s}': expected 12 digits"
            )))
        }
    }

    /// The id as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Check an `Owner` built directly (the field is public).
    fn validate(&self) -> Result<(), Ec2Error> {
        Owner::parse(&self.0).map(|_| ())
    }
}

impl fmt::Display for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for Owner {
    type Err = Ec2Error;
    fn from_str(s: &str) -> Result<Owner, Ec2Error> {
        Owner::parse(s)
    }
}

/// The name of the group every owner has.
pub const DEFAULT_GROUP: &str = "default";
/// Description of the `default` group.
pub const DEFAULT_GROUP_DESCRIPTION: &str = "default group";
/// Longest group name or description.
pub const MAX_NAME_LEN: usize = 255;

fn printable(s: &str) -> bool {
    s.bytes().all(|b| (0x20..=0x7e).contains(&b))
}

/// A group name: 1-255 printable ASCII characters (0x20..=0x7e).
pub fn validate_group_name(name: &str) -> Result<(), Ec2Error> {
    if name.is_empty() || name.len() > MAX_NAME_LEN || !printable(name) {
        return Err(invalid(format!(
            "invalid group name '{}': expected 1-255 printable ASCII characters",
            name.escape_default()
        )));
    }
    Ok(())
}

/// A group description: 0-255 printable ASCII characters.
pub fn validate_description(description: &str) -> Result<(), Ec2Error> {
    if description.len() > MAX_NAME_LEN || !printable(description) {
        return Err(invalid(format!(
            "invalid group description '{}': expected at most 255 printable ASCII characters",
            description.escape_default()
        )));
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// The model
// ---------------------------------------------------------------------------

impl Model {
    /// An empty model.
    pub fn new(limits: Limits) -> Model {
        Model {
            limits,
            ..Model::default()
        }
    }

    /// The limits the model enforces.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The instances' IPv6 /64 prefix, if instances are dual-stack.
    pub fn subnet6(&self) -> Option<Ipv6Net> {
        self.subnet6
    }

    /// Set the instances' IPv6 prefix. Refused unless it is a /64 with its
    /// host bits clear (SLAAC needs a /64).
    pub fn set_subnet6(&mut self, prefix: Option<Ipv6Net>) -> Result<(), Ec2Error> {
        if let Some(p) = prefix
            && (p.prefix_len() != 64 || p.trunc() != p)
        {
            return Err(invalid(format!(
                "the IPv6 subnet '{p}' is not a /64 prefix (host bits clear)"
            )));
        }
        self.subnet6 = prefix;
        Ok(())
    }

    /// The IPv6 address of an instance with this MAC, if instances are
    /// dual-stack ([`Model::subnet6`]).
    pub fn ip6_of(&self, mac: Mac) -> Option<Ipv6Addr> {
        self.subnet6.map(|p| eui64_address(p, mac))
    }

    /// Every group, keyed by (owner, group name).
    pub fn groups(&self) -> &BTreeMap<(Owner, String), Group> {
        &self.groups
    }

    /// Every instance, keyed by instance id.
    pub fn instances(&self) -> &BTreeMap<String, Instance> {
        &self.instances
    }

    /// Sequence number of the next group id (see [`Model::add_group`]).
    pub fn next_group_seq(&self) -> u64 {
        self.next_group_seq
    }

    /// A model of `owner`'s `groups` (name and exact rules; `default` may be
    /// listed to replace its usual rule, else it has that rule) and `instances`,
    /// built through the validating methods (for tests, benchmarks and fixtures):
    /// the first invalid group, rule or instance is the error. Group ids are
    /// handed out in list order.
    pub fn build(
        limits: Limits,
        owner: &Owner,
        groups: &[(&str, Vec<Rule>)],
        instances: impl IntoIterator<Item = Instance>,
    ) -> Result<Model, Ec2Error> {
        owner.validate()?;
        let mut m = Model::new(limits);
        m.ensure_owner(owner);
        for (name, _) in groups {
            if *name != DEFAULT_GROUP {
                m.add_group(owner, name, "")?;
            }
        }
        for (name, rules) in groups {
            if *name == DEFAULT_GROUP {
                let usual = m.group(owner, name)?.rules.clone();
                m.revoke_rules(owner, name, &usual)?;
            }
            m.authorize_rules(owner, name, rules)?;
        }
        for inst in instances {
            m.add_instance(inst)?;
        }
        Ok(m)
    }

    /// Move the group id sequence on to at least `seq` (a reload continues the
    /// stored counter: ids of deleted groups are never handed out again). Never
    /// moves it back; not recorded.
    pub fn advance_group_seq(&mut self, seq: u64) {
        self.next_group_seq = self.next_group_seq.max(seq);
    }

    /// Start recording every applied change (idempotent). The control plane
    /// takes them after each request ([`Model::take_changes`]) to store,
    /// compile and, on failure, undo exactly that edit.
    pub fn record_changes(&mut self) {
        self.journal.get_or_insert_with(Vec::new);
    }

    /// The changes recorded since the last call (empty when not recording).
    pub fn take_changes(&mut self) -> Vec<Change> {
        self.journal
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    }

    fn log(&mut self, c: impl FnOnce() -> Change) {
        if let Some(j) = &mut self.journal {
            j.push(c());
        }
    }

    /// Undo `changes` (as returned by [`Model::take_changes`], newest last):
    /// the model is as it was before them. Not recorded.
    pub fn undo(&mut self, changes: Vec<Change>) {
        for c in changes.into_iter().rev() {
            match c {
                Change::GroupAdded { group, prev_seq } => {
                    self.groups.remove(&(group.owner, group.name));
                    self.next_group_seq = prev_seq;
                }
                Change::GroupDeleted(g) => {
                    self.groups.insert((g.owner.clone(), g.name.clone()), g);
                }
                Change::RulesAdded {
                    key, rules, egress, ..
                } => {
                    if let Some(g) = self.groups.get_mut(&key) {
                        let list = g.rules_of_mut(egress);
                        let n = list.len().saturating_sub(rules.len());
                        list.truncate(n);
                    }
                }
                Change::RulesRemoved {
                    key,
                    before,
                    egress,
                    ..
                } => {
                    if let Some(g) = self.groups.get_mut(&key) {
                        *g.rules_of_mut(egress) = before;
                    }
                }
                Change::InstanceAdded(i) => {
                    self.instances.remove(&i.id);
                }
                Change::InstanceRemoved(i) => {
                    self.instances.insert(i.id.clone(), i);
                }
            }
        }
    }

    /// Create `owner`'s `default` group (one rule: all traffic from members of
    /// `default` of the same owner) if it does not exist. Idempotent; the caller
    /// passes a validated owner.
    pub fn ensure_owner(&mut self, owner: &Owner) {
        let key = (owner.clone(), DEFAULT_GROUP.to_owned());
        if self.groups.contains_key(&key) {
            return;
        }
        let prev_seq = self.next_group_seq;
        let id = self.take_group_id();
        let rule = Rule {
            proto: Proto::All,
            ports: Ports::None,
            source: Source::Group {
                owner: owner.clone(),
                group: DEFAULT_GROUP.to_owned(),
            },
        };
        let group = Group {
            owner: owner.clone(),
            name: DEFAULT_GROUP.to_owned(),
            id,
            description: DEFAULT_GROUP_DESCRIPTION.to_owned(),
            rules: vec![rule],
            egress: default_egress(),
        };
        self.log(|| Change::GroupAdded {
            group: group.clone(),
            prev_seq,
        });
        self.groups.insert(key, group);
    }

    /// The next unused group id; advances [`Model::next_group_seq`].
    fn take_group_id(&mut self) -> String {
        let taken: BTreeSet<&str> = self.groups.values().map(|g| g.id.as_str()).collect();
        loop {
            let id = new_group_id(self.next_group_seq);
            self.next_group_seq = self.next_group_seq.wrapping_add(1);
            if !taken.contains(id.as_str()) {
                return id;
            }
        }
    }

    /// Whether the group exists, counting an owner's not yet created `default`
    /// (which [`Model::ensure_owner`] makes on first use).
    fn group_exists_or_implicit(&self, owner: &Owner, name: &str) -> bool {
        name == DEFAULT_GROUP || self.groups.contains_key(&(owner.clone(), name.to_owned()))
    }

    /// Create a group with no ingress rules and the default egress rule.
    pub fn add_group(
        &mut self,
        owner: &Owner,
        name: &str,
        description: &str,
    ) -> Result<Group, Ec2Error> {
        owner.validate()?;
        validate_group_name(name)?;
        validate_description(description)?;
        if self.group_exists_or_implicit(owner, name) {
            return Err(Ec2Error::new(
                ErrorCode::InvalidGroupDuplicate,
                format!("the security group '{name}' already exists for owner {owner}"),
            ));
        }
        self.ensure_owner(owner);
        let prev_seq = self.next_group_seq;
        let group = Group {
            owner: owner.clone(),
            name: name.to_owned(),
            id: self.take_group_id(),
            description: description.to_owned(),
            rules: Vec::new(),
            egress: default_egress(),
        };
        self.log(|| Change::GroupAdded {
            group: group.clone(),
            prev_seq,
        });
        self.groups
            .insert((owner.clone(), name.to_owned()), group.clone());
        Ok(group)
    }

    /// Delete a group that no instance uses and no other group's rule names.
    pub fn delete_group(&mut self, owner: &Owner, name: &str) -> Result<Group, Ec2Error> {
        if name == DEFAULT_GROUP {
            return Err(Ec2Error::new(
                ErrorCode::InvalidGroupReserved,
                format!("the security group '{name}' is reserved and cannot be deleted"),
            ));
        }
        let key = (owner.clone(), name.to_owned());
        if !self.groups.contains_key(&key) {
            return Err(group_not_found(owner, name));
        }
        if let Some(inst) = self
            .instances
            .values()
            .find(|i| &i.owner == owner && i.groups.iter().any(|g| g == name))
        {
            return Err(Ec2Error::new(
                ErrorCode::InvalidGroupInUse,
                format!(
                    "the security group '{name}' is in use by instance {}",
                    inst.id
                ),
            ));
        }
        for (k, g) in &self.groups {
            if *k == key {
                continue; // a group's references to itself go away with it
            }
            if g.rules.iter().chain(&g.egress).any(|r| matches!(&r.source, Source::Group { owner: o, group } if o == owner && group == name)) {
                return Err(Ec2Error::new(
                    ErrorCode::InvalidGroupInUse,
                    format!(
                        "the security group '{name}' is referenced by a rule of group '{}' of owner {}",
                        g.name, g.owner
                    ),
                ));
            }
        }
        let g = self.groups.remove(&key).expect("checked above");
        self.log(|| Change::GroupDeleted(g.clone()));
        Ok(g)
    }

    /// One of `owner`'s groups.
    pub fn group(&self, owner: &Owner, name: &str) -> Result<&Group, Ec2Error> {
        self.groups
            .get(&(owner.clone(), name.to_owned()))
            .ok_or_else(|| group_not_found(owner, name))
    }

    /// A group by its `sg-` id (any owner).
    pub fn group_by_id(&self, id: &str) -> Option<&Group> {
        self.groups.values().find(|g| g.id == id)
    }

    /// All groups of `owner`, sorted by name.
    pub fn groups_of<'a>(&'a self, owner: &Owner) -> impl Iterator<Item = &'a Group> + use<'a> {
        let owner = owner.clone();
        self.groups.values().filter(move |g| g.owner == owner)
    }

    /// `owner`'s groups named in `names` (in that order, each once), or all of them
    /// sorted by name when `names` is empty. An unknown name is
    /// `InvalidGroup.NotFound`.
    pub fn describe_groups(
        &self,
        owner: &Owner,
        names: &[String],
    ) -> Result<Vec<&Group>, Ec2Error> {
        if names.is_empty() {
            return Ok(self.groups_of(owner).collect());
        }
        let mut out: Vec<&Group> = Vec::with_capacity(names.len());
        for n in names {
            let g = self.group(owner, n)?;
            if !out.iter().any(|o| o.name == g.name) {
                out.push(g);
            }
        }
        Ok(out)
    }

    /// Expand `spec` and add its rules to `owner`'s `group`. Returns the rules added.
    pub fn authorize(
        &mut self,
        owner: &Owner,
        group: &str,
        spec: &RuleSpec,
    ) -> Result<Vec<Rule>, Ec2Error> {
        self.authorize_dir(owner, group, spec, false)
    }

    /// Expand `spec` and remove its rules from `owner`'s `group`. Returns the rules
    /// removed.
    pub fn revoke(
        &mut self,
        owner: &Owner,
        group: &str,
        spec: &RuleSpec,
    ) -> Result<Vec<Rule>, Ec2Error> {
        self.revoke_dir(owner, group, spec, false)
    }

    /// [`Model::authorize`] of ingress (`egress == false`) or egress rules.
    pub fn authorize_dir(
        &mut self,
        owner: &Owner,
        group: &str,
        spec: &RuleSpec,
        egress: bool,
    ) -> Result<Vec<Rule>, Ec2Error> {
        let rules = spec.expand(owner)?;
        self.authorize_rules_dir(owner, group, &rules, egress)?;
        Ok(rules)
    }

    /// [`Model::revoke`] of ingress (`egress == false`) or egress rules.
    pub fn revoke_dir(
        &mut self,
        owner: &Owner,
        group: &str,
        spec: &RuleSpec,
        egress: bool,
    ) -> Result<Vec<Rule>, Ec2Error> {
        let rules = spec.expand(owner)?;
        self.revoke_rules_dir(owner, group, &rules, egress)?;
        Ok(rules)
    }

    /// Normalise `rules` and reject the same rule twice in one request.
    fn normalize_request(rules: &[Rule], group: &str) -> Result<Vec<Rule>, Ec2Error> {
        let mut out: Vec<Rule> = Vec::with_capacity(rules.len());
        for r in rules {
            let n = r.normalized()?;
            if out.contains(&n) {
                return Err(Ec2Error::new(
                    ErrorCode::InvalidPermissionDuplicate,
                    format!("the permission '{n}' is given twice for group '{group}'"),
                ));
            }
            out.push(n);
        }
        Ok(out)
    }

    /// Add already expanded ingress rules (normalised here) to `owner`'s
    /// `group`: all or nothing.
    pub fn authorize_rules(
        &mut self,
        owner: &Owner,
        group: &str,
        rules: &[Rule],
    ) -> Result<(), Ec2Error> {
        self.authorize_rules_dir(owner, group, rules, false)
    }

    /// [`Model::authorize_rules`] to the ingress or (`egress`) egress rules;
    /// the limit counts each direction separately.
    pub fn authorize_rules_dir(
        &mut self,
        owner: &Owner,
        group: &str,
        rules: &[Rule],
        egress: bool,
    ) -> Result<(), Ec2Error> {
        let rules = Self::normalize_request(rules, group)?;
        let g = self.group(owner, group)?;
        let dir = if egress { "egress " } else { "" };
        for r in &rules {
            if g.rules_of(egress).contains(r) {
                return Err(Ec2Error::new(
                    ErrorCode::InvalidPermissionDuplicate,
                    format!(
                        "the {dir}permission '{}' already exists in group '{group}'",
                        rule_text(r, egress)
                    ),
                ));
            }
            if let Source::Group {
                owner: o,
                group: sg,
            } = &r.source
                && !self.group_exists_or_implicit(o, sg)
            {
                return Err(group_not_found(o, sg));
            }
        }
        let total = g.rules_of(egress).len() + rules.len();
        if total > self.limits.rules_per_group {
            return Err(Ec2Error::new(
                ErrorCode::RulesPerSecurityGroupLimitExceeded,
                format!(
                    "group '{group}' would have {total} {dir}rules; the limit is {} per group",
                    self.limits.rules_per_group
                ),
            ));
        }
        // Apply: create implicit `default` groups named as sources, then append.
        for r in &rules {
            if let Source::Group {
                owner: o,
                group: sg,
            } = &r.source
                && sg == DEFAULT_GROUP
            {
                self.ensure_owner(o);
            }
        }
        let g = self
            .groups
            .get_mut(&(owner.clone(), group.to_owned()))
            .expect("checked above");
        let group_id = g.id.clone();
        g.rules_of_mut(egress).extend_from_slice(&rules);
        self.log(|| Change::RulesAdded {
            key: (owner.clone(), group.to_owned()),
            group_id,
            rules,
            egress,
        });
        Ok(())
    }

    /// Remove ingress rules (normalised here) from `owner`'s `group`; each must
    /// be present exactly: all or nothing.
    pub fn revoke_rules(
        &mut self,
        owner: &Owner,
        group: &str,
        rules: &[Rule],
    ) -> Result<(), Ec2Error> {
        self.revoke_rules_dir(owner, group, rules, false)
    }

    /// [`Model::revoke_rules`] from the ingress or (`egress`) egress rules.
    pub fn revoke_rules_dir(
        &mut self,
        owner: &Owner,
        group: &str,
        rules: &[Rule],
        egress: bool,
    ) -> Result<(), Ec2Error> {
        let rules = Self::normalize_request(rules, group)?;
        let g = self.group(owner, group)?;
        if let Some(r) = rules.iter().find(|r| !g.rules_of(egress).contains(r)) {
            let dir = if egress { "egress " } else { "" };
            return Err(Ec2Error::new(
                ErrorCode::InvalidPermissionNotFound,
                format!(
                    "the {dir}permission '{}' does not exist in group '{group}'",
                    rule_text(r, egress)
                ),
            ));
        }
        let g = self
            .groups
            .get_mut(&(owner.clone(), group.to_owned()))
            .expect("checked above");
        let before = self.journal.is_some().then(|| g.rules_of(egress).clone());
        let group_id = g.id.clone();
        g.rules_of_mut(egress).retain(|r| !rules.contains(r));
        if let Some(before) = before {
            self.log(|| Change::RulesRemoved {
                key: (owner.clone(), group.to_owned()),
                group_id,
                rules,
                before,
                egress,
            });
        }
        Ok(())
    }

    /// Launch (or reload) an instance. Empty `groups` means `["default"]`; groups
    /// are sorted and deduplicated and must all be the owner's own. Id, MAC and IP
    /// must be unused.
    pub fn add_instance(&mut self, mut inst: Instance) -> Result<(), Ec2Error> {
        inst.owner.validate()?;
        if inst.id.is_empty()
            || inst.id.len() > MAX_NAME_LEN
            || !printable(&inst.id)
            || inst.id.contains(' ')
        {
            return Err(invalid(format!(
                "invalid instance id '{}'",
                inst.id.escape_default()
            )));
        }
        if inst.groups.is_empty() {
            inst.groups.push(DEFAULT_GROUP.to_owned());
        }
        inst.groups.sort();
        inst.groups.dedup();
        for g in &inst.groups {
            if !self.group_exists_or_implicit(&inst.owner, g) {
                return Err(group_not_found(&inst.owner, g));
            }
        }
        if self.instances.contains_key(&inst.id) {
            return Err(invalid(format!(
                "instance id '{}' is already in use",
                inst.id
            )));
        }
        if inst.mac[0] & 1 == 1 || inst.mac == [0; 6] {
            return Err(invalid(format!(
                "invalid instance MAC '{}': not a unicast address",
                fmt_mac(&inst.mac)
            )));
        }
        for other in self.instances.values() {
            if other.ip == inst.ip {
                return Err(invalid(format!(
                    "address '{}' is already used by instance {}",
                    inst.ip, other.id
                )));
            }
            if other.mac == inst.mac {
                return Err(invalid(format!(
                    "MAC address '{}' is already used by instance {}",
                    fmt_mac(&inst.mac),
                    other.id
                )));
            }
        }
        self.ensure_owner(&inst.owner);
        self.log(|| Change::InstanceAdded(inst.clone()));
        self.instances.insert(inst.id.clone(), inst);
        Ok(())
    }

    /// Remove an instance.
    pub fn remove_instance(&mut self, id: &str) -> Result<Instance, Ec2Error> {
        let inst = self.instances.remove(id).ok_or_else(|| {
            Ec2Error::new(
                ErrorCode::InvalidInstanceIdNotFound,
                format!("the instance ID '{id}' does not exist"),
            )
        })?;
        self.log(|| Change::InstanceRemoved(inst.clone()));
        Ok(inst)
    }

    /// The instances that are members of `owner`'s group `group`, by id (the
    /// sources a group rule `-o group -u owner` matches).
    pub fn members<'a>(
        &'a self,
        owner: &Owner,
        group: &str,
    ) -> impl Iterator<Item = &'a Instance> + use<'a> {
        let (owner, group) = (owner.clone(), group.to_owned());
        self.instances
            .values()
            .filter(move |i| i.owner == owner && i.groups.contains(&group))
    }

    /// An instance by id.
    pub fn instance(&self, id: &str) -> Option<&Instance> {
        self.instances.get(id)
    }

    /// The instances of `owner`, by id.
    pub fn instances_of<'a>(
        &'a self,
        owner: &Owner,
    ) -> impl Iterator<Item = &'a Instance> + use<'a> {
        let owner = owner.clone();
        self.instances.values().filter(move |i| i.owner == owner)
    }

    /// The lowest address of `subnet` that is not its network or broadcast
    /// address, not its first host (kept for a gateway), not in `reserved` and not
    /// used by an instance. `None` when the subnet is full.
    pub fn free_ip(&self, subnet: Ipv4Net, reserved: Ipv4Net) -> Option<Ipv4Addr> {
        let used: BTreeSet<u32> = self.instances.values().map(|i| u32::from(i.ip)).collect();
        let net = u32::from(subnet.network());
        let bcast = u32::from(subnet.broadcast());
        let first = net.checked_add(2)?;
        let last = bcast.checked_sub(1)?;
        (first..=last)
            .map(Ipv4Addr::from)
            .find(|a| !reserved.contains(a) && !used.contains(&u32::from(*a)))
    }

    /// Check every invariant of the module docs over the whole model: keys match
    /// groups, ids unique and well-formed, rules normalised, unique and within the
    /// limit, group sources existing, every owner with a `default` group,
    /// instances in existing groups of their owner with unique ids, IPs and MACs.
    /// The methods keep these; this is for state assembled from outside (a reload
    /// through [`Model::insert_group_raw`], a deserialized model). The first
    /// violation is an `InternalError` naming it.
    pub fn verify(&self) -> Result<(), Ec2Error> {
        let broken = |what: String| Err(Ec2Error::new(ErrorCode::InternalError, what));
        let mut ids = BTreeSet::new();
        for ((owner, name), g) in &self.groups {
            if (&g.owner, &g.name) != (owner, name) {
                return broken(format!(
                    "group '{}' of owner {} is stored under '{name}' of {owner}",
                    g.name, g.owner
                ));
            }
            if !is_id("sg-", &g.id) || !ids.insert(g.id.as_str()) {
                return broken(format!(
                    "group '{name}' of owner {owner} has a bad or repeated id '{}'",
                    g.id
                ));
            }
            for list in [&g.rules, &g.egress] {
                if list.len() > self.limits.rules_per_group {
                    return broken(format!(
                        "group '{name}' of owner {owner} has {} rules in one direction",
                        list.len()
                    ));
                }
                for (i, r) in list.iter().enumerate() {
                    if r.normalized().as_ref() != Ok(r) || list[..i].contains(r) {
                        return broken(format!(
                            "group '{name}' of owner {owner} has a bad or repeated rule '{r}'"
                        ));
                    }
                    if let Source::Group { owner: o, group } = &r.source
                        && !self.groups.contains_key(&(o.clone(), group.clone()))
                    {
                        return broken(format!(
                            "rule '{r}' of group '{name}' names a missing group"
                        ));
                    }
                }
            }
            if !self
                .groups
                .contains_key(&(owner.clone(), DEFAULT_GROUP.to_owned()))
            {
                return broken(format!("owner {owner} has no '{DEFAULT_GROUP}' group"));
            }
        }
        let (mut ips, mut macs) = (BTreeSet::new(), BTreeSet::new());
        for (id, inst) in &self.instances {
            if *id != inst.id || !ips.insert(inst.ip) || !macs.insert(inst.mac) {
                return broken(format!(
                    "instance '{id}' has a mismatched id or a repeated address"
                ));
            }
            if inst.groups.is_empty() || !inst.groups.windows(2).all(|w| w[0] < w[1]) {
                return broken(format!(
                    "instance '{id}' has an empty or unsorted group list"
                ));
            }
            if let Some(g) = inst.groups.iter().find(|g| {
                !self
                    .groups
                    .contains_key(&(inst.owner.clone(), (*g).clone()))
            }) {
                return broken(format!("instance '{id}' is in missing group '{g}'"));
            }
        }
        Ok(())
    }

    /// Insert a group as stored (reload): its id, rules and description are kept.
    /// Checks names, id format and uniqueness and rule form, not references (the
    /// store loads groups in any order).
    pub fn insert_group_raw(&mut self, g: Group) -> Result<(), Ec2Error> {
        g.owner.validate()?;
        validate_group_name(&g.name)?;
        validate_description(&g.description)?;
        if !is_id("sg-", &g.id) {
            return Err(invalid(format!(
                "invalid group id '{}': expected sg- and 8 hex digits",
                g.id
            )));
        }
        let key = (g.owner.clone(), g.name.clone());
        if self.groups.contains_key(&key) {
            return Err(Ec2Error::new(
                ErrorCode::InvalidGroupDuplicate,
                format!(
                    "the security group '{}' already exists for owner {}",
                    g.name, g.owner
                ),
            ));
        }
        if let Some(other) = self.group_by_id(&g.id) {
            return Err(invalid(format!(
                "group id '{}' is already used by group '{}'",
                g.id, other.name
            )));
        }
        let rules = Self::normalize_request(&g.rules, &g.name)?;
        self.check_stored_rule_count(&g.name, rules.len())?;
        let egress = Self::normalize_request(&g.egress, &g.name)?;
        self.check_stored_rule_count(&g.name, egress.len())?;
        // Continue the id sequence after the reloaded group, so that ids of groups
        // created since the last restart are not handed out again.
        if let Some(seq) = group_id_seq(&g.id) {
            self.next_group_seq = self.next_group_seq.max(seq + 1);
        }
        self.groups.insert(key, Group { rules, egress, ..g });
        Ok(())
    }

    /// Make the group with `g.id` exactly `g` (cluster mode: a state read from
    /// etcd, validated by the host that wrote it): inserted if new, else its
    /// rules become `g.rules` (the ones gone removed, then the new ones
    /// appended, so a sequence of authorizes and revokes gives the same order
    /// on every host). Recorded like the edit methods' changes. Checks the
    /// form of `g` as [`Model::insert_group_raw`] does, not its references:
    /// the caller verifies the whole model after a batch. Whether anything
    /// changed.
    pub fn put_group_raw(&mut self, g: Group) -> Result<bool, Ec2Error> {
        let key = (g.owner.clone(), g.name.clone());
        let Some(old) = self.groups.get(&key) else {
            let prev_seq = self.next_group_seq;
            self.insert_group_raw(g)?;
            let group = self.groups[&key].clone();
            self.log(|| Change::GroupAdded { group, prev_seq });
            return Ok(true);
        };
        if old.id != g.id {
            return Err(invalid(format!(
                "group '{}' of owner {} has id {}, not {}",
                g.name, g.owner, old.id, g.id
            )));
        }
        let new_ingress = Self::normalize_request(&g.rules, &g.name)?;
        self.check_stored_rule_count(&g.name, new_ingress.len())?;
        let new_egress = Self::normalize_request(&g.egress, &g.name)?;
        self.check_stored_rule_count(&g.name, new_egress.len())?;
        let a = self.put_rules_raw(&key, new_ingress, false);
        let b = self.put_rules_raw(&key, new_egress, true);
        Ok(a || b)
    }

    /// One direction of [`Model::put_group_raw`] (the group exists).
    fn put_rules_raw(&mut self, key: &(Owner, String), new_rules: Vec<Rule>, egress: bool) -> bool {
        let old = &self.groups[key];
        if *old.rules_of(egress) == new_rules {
            return false;
        }
        let group_id = old.id.clone();
        let before = old.rules_of(egress).clone();
        let removed: Vec<Rule> = before
            .iter()
            .filter(|r| !new_rules.contains(r))
            .cloned()
            .collect();
        let mut rules = before.clone();
        if !removed.is_empty() {
            rules.retain(|r| !removed.contains(r));
            let (k, id) = (key.clone(), group_id.clone());
            self.log(|| Change::RulesRemoved {
                key: k,
                group_id: id,
                rules: removed,
                before,
                egress,
            });
        }
        let added: Vec<Rule> = new_rules
            .iter()
            .filter(|r| !rules.contains(r))
            .cloned()
            .collect();
        rules.extend(added.iter().cloned());
        if !added.is_empty() {
            let k = key.clone();
            self.log(|| Change::RulesAdded {
                key: k,
                group_id,
                rules: added,
                egress,
            });
        }
        if let Some(g) = self.groups.get_mut(key) {
            *g.rules_of_mut(egress) = rules;
        }
        true
    }

    /// A stored group (reload, cluster apply) of `n` rules within the limit.
    fn check_stored_rule_count(&self, group: &str, n: usize) -> Result<(), Ec2Error> {
        if n > self.limits.rules_per_group {
            return Err(Ec2Error::new(
                ErrorCode::RulesPerSecurityGroupLimitExceeded,
                format!(
                    "group '{group}' has {n} rules; the limit is {} per group",
                    self.limits.rules_per_group
                ),
            ));
        }
        Ok(())
    }

    /// Remove the group with id `id` whatever refers to it (cluster mode; see
    /// [`Model::put_group_raw`]). Recorded; `None` if there is no such group.
    pub fn remove_group_raw(&mut self, id: &str) -> Option<Group> {
        let key = self
            .groups
            .iter()
            .find(|(_, g)| g.id == id)
            .map(|(k, _)| k.clone())?;
        let g = self.groups.remove(&key)?;
        self.log(|| Change::GroupDeleted(g.clone()));
        Some(g)
    }
}

fn fmt_mac(m: &Mac) -> String {
    format!(
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        m[0], m[1], m[2], m[3], m[4], m[5]
    )
}

/// Serde for `Model::groups`: a list of groups (JSON map keys must be strings).
mod groups_as_list {
    use super::*;
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(
        m: &BTreeMap<(Owner, String), Group>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.collect_seq(m.values())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<BTreeMap<(Owner, String), Group>, D::Error> {
        let list = Vec::<Group>::deserialize(d)?;
        Ok(list
            .into_iter()
            .map(|g| ((g.owner.clone(), g.name.clone()), g))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_ipv6_addresses_are_slaac_eui64() {
        let mac = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
        let p: Ipv6Net = "fd00:5a:1::/64".parse().unwrap();
        assert_eq!(
            eui64_address(p, mac),
            "fd00:5a:1:0:5054:ff:fe12:3456".parse::<Ipv6Addr>().unwrap()
        );
        assert_eq!(
            link_local_address(mac),
            "fe80::5054:ff:fe12:3456".parse::<Ipv6Addr>().unwrap()
        );
        let mut m = Model::default();
        assert_eq!(m.ip6_of(mac), None);
        for bad in ["fd00::/48", "fd00::1/64"] {
            let e = m.set_subnet6(Some(bad.parse().unwrap())).unwrap_err();
            assert!(e.message.contains(bad), "{e:?}");
            assert_eq!(m.subnet6(), None);
        }
        m.set_subnet6(Some(p)).unwrap();
        assert_eq!(m.ip6_of(mac), Some(eui64_address(p, mac)));
    }

    fn alice() -> Owner {
        Owner::parse("111122223333").expect("valid owner")
    }
    fn bob() -> Owner {
        Owner::parse("444455556666").expect("valid owner")
    }

    fn model() -> Model {
        let mut m = Model::new(Limits::default());
        m.ensure_owner(&alice());
        m.ensure_owner(&bob());
        m
    }

    fn cidr(s: &str) -> Source {
        Source::Cidr(s.parse().expect("cidr"))
    }

    fn tcp(lo: u16, hi: u16, src: &str) -> Rule {
        Rule {
            proto: Proto::Tcp,
            ports: Ports::Range(lo, hi),
            source: cidr(src),
        }
    }

    fn spec_tcp(ports: &str, cidrs: &[&str]) -> RuleSpec {
        RuleSpec {
            proto: Some("tcp".into()),
            ports: Some(ports.into()),
            cidrs: cidrs.iter().map(|s| s.to_string()).collect(),
            ..RuleSpec::default()
        }
    }

    fn instance(id: &str, ip: [u8; 4], groups: &[&str]) -> Instance {
        Instance {
            id: id.into(),
            owner: alice(),
            mac: instance_mac(id),
            ip: Ipv4Addr::from(ip),
            groups: groups.iter().map(|s| s.to_string()).collect(),
        }
    }

    /// Run a failing edit and check: the code, that the message names `value`, and
    /// that the model is exactly as before.
    #[track_caller]
    fn fails<T: fmt::Debug>(
        m: &mut Model,
        code: ErrorCode,
        value: &str,
        edit: impl FnOnce(&mut Model) -> Result<T, Ec2Error>,
    ) {
        let before = m.clone();
        let err = edit(m).expect_err("edit must fail");
        assert_eq!(err.code, code, "{err}");
        assert!(
            err.message.contains(value),
            "message {:?} must name {value:?}",
            err.message
        );
        assert_eq!(*m, before, "a failed edit must leave the model unchanged");
        assert_eq!(
            err.to_string(),
            format!("{}: {}", code.as_str(), err.message)
        );
    }

    // ---- owners, ids, names ----

    #[test]
    fn owner_ids_are_12_digits() {
        assert_eq!(alice().to_string(), "111122223333");
        assert_eq!(
            "598916040194".parse::<Owner>().map(|o| o.0),
            Ok("598916040194".to_string())
        );
        for bad in [
            "",
            "12345678901",
            "1234567890123",
            "12345678901a",
            " 11112222333",
            "１11122223333",
        ] {
            let e = Owner::parse(bad).expect_err(bad);
            assert_eq!(e.code, ErrorCode::InvalidParameterValue);
            assert!(e.message.contains(&format!("'{bad}'")), "{e}");
        }
    }

    #[test]
    fn ids_are_prefixed_hex_unique_and_deterministic() {
        let mut seen = BTreeSet::new();
        for seq in 0..50_000u64 {
            let id = new_group_id(seq);
            assert!(is_id("sg-", &id), "{id}");
            assert!(seen.insert(id), "duplicate id at {seq}");
        }
        assert_eq!(new_group_id(7), new_group_id(7));
        assert!(is_id("i-", &new_instance_id(3)));
        assert!(is_id("r-", &new_reservation_id(3)));
        assert_ne!(new_instance_id(1)[2..], new_reservation_id(1)[2..]);
        assert_ne!(new_instance_id(1), new_instance_id(2));
        for seq in [0, 1, 99, 123_456, u64::from(u32::MAX)] {
            assert_eq!(group_id_seq(&new_group_id(seq)), Some(seq), "mixer inverts");
        }
        assert_eq!(group_id_seq("sg-nothex!"), None);
        assert!(!is_id("sg-", "sg-1234567"));
        assert!(!is_id("sg-", "sg-1234567G"));
        assert!(!is_id("sg-", "sg-ABCDEF12"));
    }

    #[test]
    fn instance_macs_are_local_unicast_and_stable() {
        assert_eq!(
            instance_mac("i-0123abcd"),
            [0x02, 0x00, 0x01, 0x23, 0xab, 0xcd]
        );
        assert_eq!(
            instance_mac("i-ffffffff"),
            [0x02, 0x00, 0xff, 0xff, 0xff, 0xff]
        );
        let odd = instance_mac("eth-guest-7");
        assert_eq!(odd, instance_mac("eth-guest-7"));
        assert_ne!(odd, instance_mac("eth-guest-8"));
        for id in ["i-0123abcd", "eth-guest-7", "", "i-"] {
            let m = instance_mac(id);
            assert_eq!(m[0], 0x02, "{id}: locally administered, unicast");
        }
        let macs: BTreeSet<Mac> = (0..10_000)
            .map(|s| instance_mac(&new_instance_id(s)))
            .collect();
        assert_eq!(macs.len(), 10_000);
    }

    #[test]
    fn name_and_description_rules() {
        assert!(validate_group_name("a").is_ok());
        assert!(validate_group_name(&"x".repeat(255)).is_ok());
        assert!(validate_group_name("web tier ~!").is_ok());
        for bad in [
            String::new(),
            "x".repeat(256),
            "tab\there".into(),
            "caf\u{e9}".into(),
            "del\x7f".into(),
        ] {
            let e = validate_group_name(&bad).expect_err("bad name");
            assert_eq!(e.code, ErrorCode::InvalidParameterValue);
            assert!(e.message.contains(&bad.escape_default().to_string()), "{e}");
        }
        assert!(validate_description("").is_ok());
        assert!(validate_description(&"d".repeat(255)).is_ok());
        assert!(validate_description(&"d".repeat(256)).is_err());
        assert!(validate_description("new\nline").is_err());
    }

    // ---- groups ----

    #[test]
    fn default_group_is_created_once_with_its_self_rule() {
        let mut m = Model::new(Limits::default());
        m.ensure_owner(&alice());
        let g = m
            .group(&alice(), "default")
            .expect("default exists")
            .clone();
        assert_eq!(g.description, "default group");
        assert!(is_id("sg-", &g.id));
        assert_eq!(
            g.rules,
            vec![Rule {
                proto: Proto::All,
                ports: Ports::None,
                source: Source::Group {
                    owner: alice(),
                    group: "default".into()
                }
            }]
        );
        let snapshot = m.clone();
        m.ensure_owner(&alice());
        assert_eq!(m, snapshot, "ensure_owner is idempotent");
    }

    #[test]
    fn add_group_gives_distinct_ids_and_is_per_owner() {
        let mut m = model();
        let web = m.add_group(&alice(), "web", "Web servers").expect("add");
        assert_eq!(
            (web.name.as_str(), web.description.as_str()),
            ("web", "Web servers")
        );
        assert!(web.rules.is_empty());
        let bweb = m
            .add_group(&bob(), "web", "")
            .expect("same name, other owner");
        assert_ne!(web.id, bweb.id);
        assert_eq!(m.group_by_id(&web.id).map(|g| &g.owner), Some(&alice()));
        assert_eq!(m.group_by_id(&bweb.id).map(|g| &g.owner), Some(&bob()));
        assert_eq!(m.group_by_id("sg-00000000"), None);
        // A new owner gets its default group on first add.
        let carol = Owner::parse("777788889999").expect("owner");
        m.add_group(&carol, "db", "d").expect("add");
        assert!(m.group(&carol, "default").is_ok());
    }

    #[test]
    fn err_group_duplicate() {
        let mut m = model();
        m.add_group(&alice(), "web", "w").expect("add");
        fails(&mut m, ErrorCode::InvalidGroupDuplicate, "'web'", |m| {
            m.add_group(&alice(), "web", "again")
        });
        fails(&mut m, ErrorCode::InvalidGroupDuplicate, "'default'", |m| {
            m.add_group(&alice(), "default", "x")
        });
        // Even for an owner never seen: every owner has a default group.
        let carol = Owner::parse("777788889999").expect("owner");
        fails(&mut m, ErrorCode::InvalidGroupDuplicate, "'default'", |m| {
            m.add_group(&carol, "default", "x")
        });
    }

    #[test]
    fn err_invalid_parameter_on_group_fields() {
        let mut m = model();
        fails(&mut m, ErrorCode::InvalidParameterValue, "''", |m| {
            m.add_group(&alice(), "", "d")
        });
        let long = "n".repeat(256);
        fails(&mut m, ErrorCode::InvalidParameterValue, &long, |m| {
            m.add_group(&alice(), &long, "d")
        });
        fails(
            &mut m,
            ErrorCode::InvalidParameterValue,
            "bad\\u{1b}",
            |m| m.add_group(&alice(), "bad\x1b", "d"),
        );
        let desc = "d".repeat(256);
        fails(&mut m, ErrorCode::InvalidParameterValue, &desc, |m| {
            m.add_group(&alice(), "ok", &desc)
        });
        let bad_owner = Owner("12".into());
        fails(&mut m, ErrorCode::InvalidParameterValue, "'12'", |m| {
            m.add_group(&bad_owner, "ok", "d")
        });
    }

    #[test]
    fn err_group_not_found() {
        let mut m = model();
        m.add_group(&bob(), "bobs", "b").expect("add");
        fails(&mut m, ErrorCode::InvalidGroupNotFound, "'nope'", |m| {
            m.delete_group(&alice(), "nope")
        });
        fails(&mut m, ErrorCode::InvalidGroupNotFound, "'nope'", |m| {
            m.authorize(&alice(), "nope", &spec_tcp("22", &[]))
        });
        fails(&mut m, ErrorCode::InvalidGroupNotFound, "'nope'", |m| {
            m.revoke(&alice(), "nope", &spec_tcp("22", &[]))
        });
        // Another owner's group is not the caller's to edit or describe.
        fails(&mut m, ErrorCode::InvalidGroupNotFound, "'bobs'", |m| {
            m.authorize(&alice(), "bobs", &spec_tcp("22", &[]))
        });
        assert_eq!(
            m.describe_groups(&alice(), &["bobs".into()])
                .map_err(|e| e.code),
            Err(ErrorCode::InvalidGroupNotFound)
        );
        assert_eq!(
            m.group(&alice(), "bobs").map_err(|e| e.code),
            Err(ErrorCode::InvalidGroupNotFound)
        );
        // A group source that does not exist.
        let spec = RuleSpec {
            groups: vec![("ghost".into(), None)],
            ..RuleSpec::default()
        };
        fails(&mut m, ErrorCode::InvalidGroupNotFound, "'ghost'", |m| {
            m.authorize(&alice(), "default", &spec)
        });
        let spec = RuleSpec {
            groups: vec![("web".into(), Some(bob().0))],
            ..RuleSpec::default()
        };
        fails(&mut m, ErrorCode::InvalidGroupNotFound, "'web'", |m| {
            m.authorize(&alice(), "default", &spec)
        });
        // Launching into another owner's or an unknown group.
        fails(&mut m, ErrorCode::InvalidGroupNotFound, "'bobs'", |m| {
            m.add_instance(instance("i-00000001", [10, 0, 0, 2], &["bobs"]))
        });
        fails(&mut m, ErrorCode::InvalidGroupNotFound, "'nope'", |m| {
            m.add_instance(instance("i-00000001", [10, 0, 0, 2], &["default", "nope"]))
        });
    }

    #[test]
    fn err_group_reserved() {
        let mut m = model();
        fails(&mut m, ErrorCode::InvalidGroupReserved, "'default'", |m| {
            m.delete_group(&alice(), "default")
        });
    }

    #[test]
    fn err_group_in_use_by_instance() {
        let mut m = model();
        m.add_group(&alice(), "web", "w").expect("add");
        m.add_instance(instance("i-0000abcd", [172, 31, 0, 2], &["web"]))
            .expect("launch");
        fails(&mut m, ErrorCode::InvalidGroupInUse, "i-0000abcd", |m| {
            m.delete_group(&alice(), "web")
        });
        m.remove_instance("i-0000abcd").expect("terminate");
        assert_eq!(
            m.delete_group(&alice(), "web").map(|g| g.name),
            Ok("web".to_string())
        );
        assert!(m.group(&alice(), "web").is_err());
    }

    #[test]
    fn err_group_in_use_by_rule_but_self_reference_is_fine() {
        let mut m = model();
        m.add_group(&alice(), "db", "d").expect("add");
        m.add_group(&alice(), "web", "w").expect("add");
        // db allows web; web allows itself.
        let from_web = RuleSpec {
            groups: vec![("web".into(), None)],
            ..RuleSpec::default()
        };
        m.authorize(&alice(), "db", &from_web).expect("db from web");
        m.authorize(&alice(), "web", &from_web)
            .expect("web from web");
        fails(&mut m, ErrorCode::InvalidGroupInUse, "'db'", |m| {
            m.delete_group(&alice(), "web")
        });
        // Referenced from another owner's group.
        m.add_group(&alice(), "shared", "s").expect("add");
        let from_shared = RuleSpec {
            groups: vec![("shared".into(), Some(alice().0))],
            ..RuleSpec::default()
        };
        m.authorize(&bob(), "default", &from_shared)
            .expect("bob trusts alice/shared");
        fails(&mut m, ErrorCode::InvalidGroupInUse, "'shared'", |m| {
            m.delete_group(&alice(), "shared")
        });
        // Once db stops naming web, web (only self-referenced) may go.
        m.revoke(&alice(), "db", &from_web).expect("revoke");
        m.delete_group(&alice(), "web")
            .expect("only self references left");
    }

    #[test]
    fn describe_groups_lists_own_groups() {
        let mut m = model();
        m.add_group(&alice(), "web", "w").expect("add");
        m.add_group(&alice(), "app", "a").expect("add");
        m.add_group(&bob(), "bobs", "b").expect("add");
        let names = |v: Vec<&Group>| v.iter().map(|g| g.name.clone()).collect::<Vec<_>>();
        assert_eq!(
            names(m.describe_groups(&alice(), &[]).expect("all")),
            ["app", "default", "web"]
        );
        let asked = ["web".to_string(), "default".to_string(), "web".to_string()];
        assert_eq!(
            names(m.describe_groups(&alice(), &asked).expect("some")),
            ["web", "default"]
        );
        let e = m
            .describe_groups(&alice(), &["web".into(), "zzz".into()])
            .expect_err("unknown");
        assert_eq!(e.code, ErrorCode::InvalidGroupNotFound);
        assert!(e.message.contains("'zzz'"));
    }

    // ---- rule specs ----

    #[test]
    fn expand_protocol_defaults_and_spellings() {
        let me = alice();
        let proto = |s: RuleSpec| s.expand(&me).expect("valid")[0].proto;
        assert_eq!(proto(RuleSpec::default()), Proto::All);
        assert_eq!(
            proto(RuleSpec {
                ports: Some("22".into()),
                ..RuleSpec::default()
            }),
            Proto::Tcp
        );
        assert_eq!(
            proto(RuleSpec {
                icmp: Some("8:0".into()),
                ..RuleSpec::default()
            }),
            Proto::Icmp
        );
        assert_eq!(
            proto(RuleSpec {
                cidrs: vec!["10.0.0.0/8".into()],
                ..RuleSpec::default()
            }),
            Proto::All
        );
        assert_eq!(
            proto(RuleSpec {
                groups: vec![("default".into(), None)],
                ..RuleSpec::default()
            }),
            Proto::All
        );
        for (s, p) in [
            ("tcp", Proto::Tcp),
            ("TCP", Proto::Tcp),
            ("6", Proto::Tcp),
            ("udp", Proto::Udp),
            ("17", Proto::Udp),
            ("Icmp", Proto::Icmp),
            ("1", Proto::Icmp),
            ("all", Proto::All),
            ("-1", Proto::All),
        ] {
            // TCP/UDP need ports.
            let ports = matches!(p, Proto::Tcp | Proto::Udp).then(|| "-1".to_owned());
            assert_eq!(
                proto(RuleSpec {
                    proto: Some(s.into()),
                    ports,
                    ..RuleSpec::default()
                }),
                p,
                "{s}"
            );
        }
    }

    #[test]
    fn expand_ports_and_icmp() {
        let me = alice();
        let ports = |s: RuleSpec| s.expand(&me).expect("valid")[0].ports;
        let p = |proto: &str, ports: Option<&str>, icmp: Option<&str>| RuleSpec {
            proto: Some(proto.into()),
            ports: ports.map(Into::into),
            icmp: icmp.map(Into::into),
            ..RuleSpec::default()
        };
        assert_eq!(ports(p("tcp", Some("22"), None)), Ports::Range(22, 22));
        assert_eq!(
            ports(p("udp", Some("1000-2000"), None)),
            Ports::Range(1000, 2000)
        );
        assert_eq!(
            ports(p("tcp", Some("0-65535"), None)),
            Ports::Range(0, 65535)
        );
        assert_eq!(ports(p("tcp", Some("-1"), None)), Ports::Range(0, 65535));
        // TCP/UDP without ports is refused (AWS: "Must specify both from and to
        // ports with TCP/UDP"), naming the protocol; the model is untouched.
        for proto in ["tcp", "udp", "6", "17"] {
            let e = p(proto, None, None).expand(&me).expect_err(proto);
            assert_eq!(e.code, ErrorCode::InvalidParameterValue, "{proto}");
            assert!(
                e.message.contains("must specify both from and to ports"),
                "{e}"
            );
            let named = if proto == "6" || proto == "tcp" {
                "tcp"
            } else {
                "udp"
            };
            assert!(e.message.contains(&format!("protocol {named}")), "{e}");
        }
        let mut m = Model::new(Limits::default());
        m.add_group(&me, "web", "w").expect("new");
        let before = m.clone();
        assert!(m.authorize(&me, "web", &p("tcp", None, None)).is_err());
        assert_eq!(m, before);
        assert_eq!(
            ports(p("icmp", None, Some("8:0"))),
            Ports::Icmp {
                ty: Some(8),
                code: Some(0)
            }
        );
        assert_eq!(
            ports(p("icmp", None, Some("3:-1"))),
            Ports::Icmp {
                ty: Some(3),
                code: None
            }
        );
        assert_eq!(
            ports(p("icmp", None, Some("-1:-1"))),
            Ports::Icmp {
                ty: None,
                code: None
            }
        );
        assert_eq!(
            ports(p("icmp", None, Some("-1:4"))),
            Ports::Icmp {
                ty: None,
                code: None
            }
        );
        assert_eq!(
            ports(p("icmp", None, None)),
            Ports::Icmp {
                ty: None,
                code: None
            }
        );
        assert_eq!(ports(p("all", None, None)), Ports::None);
    }

    #[test]
    fn err_invalid_parameter_in_rule_specs() {
        let mut m = model();
        let p = |proto: Option<&str>, ports: Option<&str>, icmp: Option<&str>| RuleSpec {
            proto: proto.map(Into::into),
            ports: ports.map(Into::into),
            icmp: icmp.map(Into::into),
            ..RuleSpec::default()
        };
        let cases: Vec<(RuleSpec, &str)> = vec![
            (p(Some("sctp"), None, None), "'sctp'"),
            (p(Some("tcp"), Some("65536"), None), "'65536'"),
            (p(Some("tcp"), Some("100-10"), None), "'100-10'"),
            (p(Some("tcp"), Some("-2"), None), "'-2'"),
            (p(Some("tcp"), Some("ssh"), None), "'ssh'"),
            (p(Some("tcp"), Some("1-"), None), "'1-'"),
            (p(Some("tcp"), Some(""), None), "''"),
            (p(Some("icmp"), Some("22"), None), "'22'"),
            (p(Some("all"), Some("22"), None), "'22'"),
            (p(Some("tcp"), None, Some("8:0")), "'8:0'"),
            (p(Some("all"), None, Some("8:0")), "'8:0'"),
            (p(Some("icmp"), None, Some("256:0")), "'256:0'"),
            (p(Some("icmp"), None, Some("8")), "'8'"),
            (p(Some("icmp"), None, Some("8:x")), "'8:x'"),
            (p(None, Some("22"), Some("8:0")), "'22'"),
        ];
        for (spec, value) in cases {
            fails(&mut m, ErrorCode::InvalidParameterValue, value, |m| {
                m.authorize(&alice(), "default", &spec)
            });
        }
        for bad in [
            "10.0.0.0/33",
            "10.0.0",
            "256.1.1.1",
            "10.0.0.0/",
            "host",
            "010.0.0.1",
            ":::1/128",
            "::1/129",
            "2001:db8::/64/1",
        ] {
            let spec = RuleSpec {
                cidrs: vec![bad.into()],
                ..RuleSpec::default()
            };
            fails(
                &mut m,
                ErrorCode::InvalidParameterValue,
                &format!("'{bad}'"),
                |m| m.authorize(&alice(), "default", &spec),
            );
        }
        let spec = RuleSpec {
            groups: vec![("default".into(), Some("12345".into()))],
            ..RuleSpec::default()
        };
        fails(&mut m, ErrorCode::InvalidParameterValue, "'12345'", |m| {
            m.authorize(&alice(), "default", &spec)
        });
        let spec = RuleSpec {
            groups: vec![(String::new(), None)],
            ..RuleSpec::default()
        };
        fails(&mut m, ErrorCode::InvalidParameterValue, "''", |m| {
            m.authorize(&alice(), "default", &spec)
        });
    }

    #[test]
    fn expand_sources_normalises_cidrs_and_defaults_owner() {
        let spec = RuleSpec {
            proto: Some("tcp".into()),
            ports: Some("80".into()),
            cidrs: vec!["205.192.8.45/24".into(), "10.1.2.3".into()],
            groups: vec![("web".into(), None), ("default".into(), Some(bob().0))],
            ..RuleSpec::default()
        };
        let rules = spec.expand(&alice()).expect("valid");
        let sources: Vec<Source> = rules.iter().map(|r| r.source.clone()).collect();
        assert_eq!(
            sources,
            vec![
                cidr("205.192.8.0/24"),
                cidr("10.1.2.3/32"),
                Source::Group {
                    owner: alice(),
                    group: "web".into()
                },
                Source::Group {
                    owner: bob(),
                    group: "default".into()
                },
            ]
        );
        assert!(
            rules
                .iter()
                .all(|r| r.proto == Proto::Tcp && r.ports == Ports::Range(80, 80))
        );
        assert_eq!(rules[0].to_string(), "tcp 80-80 from 205.192.8.0/24");
        assert_eq!(
            rules[3].to_string(),
            "tcp 80-80 from group 444455556666/default"
        );
        let none = RuleSpec::default().expand(&alice()).expect("valid");
        assert_eq!(
            none,
            vec![Rule {
                proto: Proto::All,
                ports: Ports::None,
                source: cidr("0.0.0.0/0")
            }]
        );
        assert_eq!(none[0].to_string(), "all from 0.0.0.0/0");
    }

    #[test]
    fn ipv6_rule_forms_parse_print_and_refuse_mixed_families() {
        let me = alice();
        let spec =
            |proto: Option<&str>, ports: Option<&str>, icmp: Option<&str>, cidrs: &[&str]| {
                RuleSpec {
                    proto: proto.map(Into::into),
                    ports: ports.map(Into::into),
                    icmp: icmp.map(Into::into),
                    cidrs: cidrs.iter().map(|s| s.to_string()).collect(),
                    groups: vec![],
                }
            };
        let r = spec(
            Some("tcp"),
            Some("22"),
            None,
            &["2001:db8::1/32", "::/0", "2001:db8::7"],
        )
        .expand(&me)
        .expect("IPv6 CIDRs");
        let texts: Vec<String> = r
            .iter()
            .map(|r| r.normalized().expect("ok").to_string())
            .collect();
        assert_eq!(
            texts,
            [
                "tcp 22-22 from 2001:db8::/32",
                "tcp 22-22 from ::/0",
                "tcp 22-22 from 2001:db8::7/128"
            ]
        );
        assert!(r.iter().all(|r| !r.applies_v4() && r.applies_v6()));
        let r = spec(Some("icmpv6"), None, Some("128:-1"), &["::/0"])
            .expand(&me)
            .expect("icmpv6");
        assert_eq!(r[0].proto, Proto::Icmpv6);
        assert_eq!(r[0].to_string(), "icmpv6 128:-1 from ::/0");
        assert_eq!(Proto::parse("58"), Ok(Proto::Icmpv6));
        assert_eq!(Proto::Icmpv6.number(), Some(crate::proto::ICMPV6));
        // icmpv6 alone is from anywhere in IPv6; all alone stays IPv4 (as AWS).
        let r = spec(Some("icmpv6"), None, None, &[])
            .expand(&me)
            .expect("icmpv6");
        assert_eq!(r[0].to_string(), "icmpv6 -1:-1 from ::/0");
        let r = spec(None, None, None, &[]).expand(&me).expect("all");
        assert!(
            r[0].applies_v4() && !r[0].applies_v6(),
            "0.0.0.0/0 does not open IPv6"
        );
        // Group sources apply to both families, except the ICMP protocols.
        let g = RuleSpec {
            groups: vec![("default".into(), None)],
            ..RuleSpec::default()
        }
        .expand(&me)
        .expect("group");
        assert!(g[0].applies_v4() && g[0].applies_v6());

        let mut m = model();
        fails(
            &mut m,
            ErrorCode::InvalidParameterValue,
            "'2001:db8::/32'",
            |m| {
                m.authorize(
                    &alice(),
                    "default",
                    &spec(Some("icmp"), None, Some("8:0"), &["2001:db8::/32"]),
                )
            },
        );
        fails(
            &mut m,
            ErrorCode::InvalidParameterValue,
            "'10.0.0.0/8'",
            |m| {
                m.authorize(
                    &alice(),
                    "default",
                    &spec(Some("icmpv6"), None, Some("128:0"), &["10.0.0.0/8"]),
                )
            },
        );
        fails(
            &mut m,
            ErrorCode::InvalidParameterValue,
            "'2001:db8::/129'",
            |m| {
                m.authorize(
                    &alice(),
                    "default",
                    &spec(Some("tcp"), Some("22"), None, &["2001:db8::/129"]),
                )
            },
        );
        fails(
            &mut m,
            ErrorCode::InvalidParameterValue,
            "'fe80::zz'",
            |m| {
                m.authorize(
                    &alice(),
                    "default",
                    &spec(Some("tcp"), Some("22"), None, &["fe80::zz"]),
                )
            },
        );
        fails(&mut m, ErrorCode::InvalidParameterValue, "'22'", |m| {
            m.authorize(
                &alice(),
                "default",
                &spec(Some("icmpv6"), Some("22"), None, &["::/0"]),
            )
        });
        // An IPv6 rule and its IPv4 twin are different rules; the same twice is a duplicate.
        m.authorize(
            &alice(),
            "default",
            &spec(Some("tcp"), Some("22"), None, &["::/0", "0.0.0.0/0"]),
        )
        .expect("both families");
        fails(
            &mut m,
            ErrorCode::InvalidPermissionDuplicate,
            "tcp 22-22 from ::/0",
            |m| {
                m.authorize(
                    &alice(),
                    "default",
                    &spec(Some("tcp"), Some("22"), None, &["::/0"]),
                )
            },
        );
        m.revoke(
            &alice(),
            "default",
            &spec(Some("tcp"), Some("22"), None, &["::/0"]),
        )
        .expect("revoke the IPv6 one");
        m.verify().expect("consistent");
    }

    // ---- authorize / revoke ----

    #[test]
    fn authorize_then_revoke() {
        let mut m = model();
        let added = m
            .authorize(&alice(), "default", &spec_tcp("22", &["205.192.8.45/24"]))
            .expect("authorize");
        assert_eq!(added, vec![tcp(22, 22, "205.192.8.0/24")]);
        assert_eq!(m.group(&alice(), "default").expect("g").rules.len(), 2);
        // Revoke with another spelling of the same CIDR.
        let removed = m
            .revoke(&alice(), "default", &spec_tcp("22-22", &["205.192.8.1/24"]))
            .expect("revoke");
        assert_eq!(removed, added);
        assert_eq!(m.group(&alice(), "default").expect("g").rules.len(), 1);
        // Rules keep insertion order.
        m.authorize_rules(
            &alice(),
            "default",
            &[tcp(80, 80, "0.0.0.0/0"), tcp(443, 443, "0.0.0.0/0")],
        )
        .expect("add");
        let rules = &m.group(&alice(), "default").expect("g").rules;
        assert_eq!(
            rules[1..],
            [tcp(80, 80, "0.0.0.0/0"), tcp(443, 443, "0.0.0.0/0")]
        );
    }

    #[test]
    fn authorize_naming_another_owners_default_creates_it() {
        let mut m = Model::new(Limits::default());
        m.ensure_owner(&alice());
        let spec = RuleSpec {
            groups: vec![("default".into(), Some(bob().0))],
            ..RuleSpec::default()
        };
        m.authorize(&alice(), "default", &spec)
            .expect("bob's default always exists");
        assert!(m.group(&bob(), "default").is_ok());
    }

    #[test]
    fn authorize_rules_normalises_rules_from_apis() {
        let mut m = model();
        let raw = Rule {
            proto: Proto::Tcp,
            ports: Ports::Range(22, 22),
            source: cidr("10.9.8.7/8"),
        };
        m.authorize_rules(&alice(), "default", &[raw])
            .expect("authorize");
        assert!(
            m.group(&alice(), "default")
                .expect("g")
                .rules
                .contains(&tcp(22, 22, "10.0.0.0/8"))
        );
        let bad = Rule {
            proto: Proto::Tcp,
            ports: Ports::None,
            source: cidr("10.0.0.0/8"),
        };
        fails(&mut m, ErrorCode::InvalidParameterValue, "tcp", |m| {
            m.authorize_rules(&alice(), "default", &[bad])
        });
        let bad = Rule {
            proto: Proto::Udp,
            ports: Ports::Range(9, 3),
            source: cidr("10.0.0.0/8"),
        };
        fails(&mut m, ErrorCode::InvalidParameterValue, "9-3", |m| {
            m.authorize_rules(&alice(), "default", &[bad])
        });
        let bad = Rule {
            proto: Proto::All,
            ports: Ports::Icmp {
                ty: None,
                code: None,
            },
            source: cidr("10.0.0.0/8"),
        };
        fails(&mut m, ErrorCode::InvalidParameterValue, "-1:-1", |m| {
            m.authorize_rules(&alice(), "default", &[bad])
        });
    }

    #[test]
    fn err_permission_duplicate() {
        let mut m = model();
        m.authorize(&alice(), "default", &spec_tcp("22", &["10.0.0.0/8"]))
            .expect("first");
        fails(
            &mut m,
            ErrorCode::InvalidPermissionDuplicate,
            "tcp 22-22 from 10.0.0.0/8",
            |m| {
                m.authorize(
                    &alice(),
                    "default",
                    &spec_tcp("22", &["192.168.0.0/16", "10.1.1.1/8"]),
                )
            },
        );
        // The same rule twice in one request, after normalisation.
        fails(
            &mut m,
            ErrorCode::InvalidPermissionDuplicate,
            "tcp 80-80 from 172.16.0.0/12",
            |m| {
                m.authorize(
                    &alice(),
                    "default",
                    &spec_tcp("80", &["172.16.0.1/12", "172.16.0.0/12"]),
                )
            },
        );
        fails(
            &mut m,
            ErrorCode::InvalidPermissionDuplicate,
            "tcp 22-22 from 10.0.0.0/8",
            |m| {
                m.revoke(
                    &alice(),
                    "default",
                    &spec_tcp("22", &["10.0.0.0/8", "10.0.0.0/8"]),
                )
            },
        );
        // The default group's own rule.
        let spec = RuleSpec {
            groups: vec![("default".into(), None)],
            ..RuleSpec::default()
        };
        fails(
            &mut m,
            ErrorCode::InvalidPermissionDuplicate,
            "all from group 111122223333/default",
            |m| m.authorize(&alice(), "default", &spec),
        );
    }

    #[test]
    fn err_permission_not_found() {
        let mut m = model();
        m.authorize(&alice(), "default", &spec_tcp("22", &["10.0.0.0/8"]))
            .expect("first");
        // One present, one absent: nothing is removed.
        fails(
            &mut m,
            ErrorCode::InvalidPermissionNotFound,
            "tcp 22-22 from 11.0.0.0/8",
            |m| {
                m.revoke(
                    &alice(),
                    "default",
                    &spec_tcp("22", &["10.0.0.0/8", "11.0.0.0/8"]),
                )
            },
        );
        // Same source, other ports: not the same rule.
        fails(
            &mut m,
            ErrorCode::InvalidPermissionNotFound,
            "tcp 22-23 from 10.0.0.0/8",
            |m| m.revoke(&alice(), "default", &spec_tcp("22-23", &["10.0.0.0/8"])),
        );
    }

    #[test]
    fn egress_rules_start_open_count_separately_and_undo() {
        let mut m = Model::new(Limits { rules_per_group: 3 });
        m.ensure_owner(&alice());
        m.add_group(&alice(), "web", "w").expect("add");
        for g in ["default", "web"] {
            assert_eq!(
                m.group(&alice(), g).expect("g").egress,
                vec![default_egress_rule(), default_egress_rule6()],
                "a new group ({g}) starts with all to 0.0.0.0/0 and ::/0"
            );
        }
        // Three ingress rules (the limit) leave egress room: counted apart.
        m.authorize(
            &alice(),
            "web",
            &spec_tcp("22", &["10.0.0.1", "10.0.0.2", "10.0.0.3"]),
        )
        .expect("ingress up to the limit");
        m.record_changes();
        let added = m
            .authorize_dir(&alice(), "web", &spec_tcp("443", &["10.9.0.0/16"]), true)
            .expect("egress within its own limit");
        let g = m.group(&alice(), "web").expect("g");
        assert_eq!(g.rules.len(), 3);
        assert_eq!(
            g.egress,
            vec![
                default_egress_rule(),
                default_egress_rule6(),
                added[0].clone()
            ]
        );
        fails(
            &mut m,
            ErrorCode::RulesPerSecurityGroupLimitExceeded,
            "egress rules",
            |m| m.authorize_dir(&alice(), "web", &spec_tcp("80", &["10.0.0.1"]), true),
        );
        fails(
            &mut m,
            ErrorCode::InvalidPermissionDuplicate,
            "tcp 443-443 to 10.9.0.0/16",
            |m| m.authorize_dir(&alice(), "web", &spec_tcp("443", &["10.9.0.0/16"]), true),
        );
        // An ingress rule of the same form is not an egress rule.
        fails(
            &mut m,
            ErrorCode::InvalidPermissionNotFound,
            "tcp 22-22 to 10.0.0.1/32",
            |m| m.revoke_dir(&alice(), "web", &spec_tcp("22", &["10.0.0.1"]), true),
        );
        m.revoke_dir(&alice(), "web", &RuleSpec::default(), true)
            .expect("revoke the IPv4 default egress rule");
        assert_eq!(
            m.group(&alice(), "web").expect("g").egress,
            vec![default_egress_rule6(), added[0].clone()],
            "the ::/0 half stays"
        );
        let all6 = RuleSpec {
            cidrs: vec!["::/0".into()],
            ..RuleSpec::default()
        };
        m.revoke_dir(&alice(), "web", &all6, true)
            .expect("revoke the IPv6 default egress rule");
        assert_eq!(m.group(&alice(), "web").expect("g").egress, added);
        assert_eq!(m.group(&alice(), "web").expect("g").rules.len(), 3);
        // A group named by an egress rule cannot be deleted.
        m.authorize_dir(
            &alice(),
            "default",
            &RuleSpec {
                groups: vec![("web".into(), None)],
                ..RuleSpec::default()
            },
            true,
        )
        .expect("group destination");
        fails(&mut m, ErrorCode::InvalidGroupInUse, "'default'", |m| {
            m.delete_group(&alice(), "web")
        });
        m.verify().expect("consistent");
        let changes = m.take_changes();
        assert!(
            changes.iter().all(|c| matches!(
                c,
                Change::RulesAdded { egress: true, .. } | Change::RulesRemoved { egress: true, .. }
            )),
            "{changes:?}"
        );
        m.undo(changes);
        let g = m.group(&alice(), "web").expect("g");
        assert_eq!(g.egress, default_egress());
        assert_eq!(g.rules.len(), 3);
        assert_eq!(
            m.group(&alice(), "default").expect("g").egress,
            default_egress()
        );
    }

    #[test]
    fn a_group_serialized_without_egress_gets_the_default() {
        let m = model();
        let mut v = serde_json::to_value(m.group(&alice(), "default").expect("g")).expect("json");
        v.as_object_mut().expect("object").remove("egress");
        let g: Group = serde_json::from_value(v).expect("old form");
        assert_eq!(g.egress, default_egress());
    }

    #[test]
    fn err_rules_per_group_limit() {
        let mut m = Model::new(Limits { rules_per_group: 3 });
        m.ensure_owner(&alice());
        // default has 1 rule; 2 more reach the limit exactly.
        m.authorize(
            &alice(),
            "default",
            &spec_tcp("22", &["10.0.0.1", "10.0.0.2"]),
        )
        .expect("up to the limit");
        fails(
            &mut m,
            ErrorCode::RulesPerSecurityGroupLimitExceeded,
            "'default'",
            |m| m.authorize(&alice(), "default", &spec_tcp("22", &["10.0.0.3"])),
        );
        m.add_group(&alice(), "web", "w").expect("add");
        let e = m.authorize(
            &alice(),
            "web",
            &spec_tcp("1", &["1.1.1.1", "2.2.2.2", "3.3.3.3", "4.4.4.4"]),
        );
        let e = e.expect_err("4 > 3");
        assert_eq!(e.code, ErrorCode::RulesPerSecurityGroupLimitExceeded);
        assert!(
            e.message.contains("4 rules") && e.message.contains("limit is 3"),
            "{e}"
        );
        assert!(m.group(&alice(), "web").expect("g").rules.is_empty());
    }

    // ---- instances ----

    #[test]
    fn instances_default_group_sorted_membership_and_removal() {
        let mut m = model();
        m.add_group(&alice(), "web", "w").expect("add");
        m.add_instance(instance("i-00000001", [172, 31, 0, 2], &[]))
            .expect("launch");
        m.add_instance(instance(
            "i-00000002",
            [172, 31, 0, 3],
            &["web", "default", "web"],
        ))
        .expect("launch");
        assert_eq!(
            m.instance("i-00000001").map(|i| i.groups.clone()),
            Some(vec!["default".to_string()])
        );
        assert_eq!(
            m.instance("i-00000002").map(|i| i.groups.clone()),
            Some(vec!["default".into(), "web".into()])
        );
        assert_eq!(m.instances_of(&alice()).count(), 2);
        assert_eq!(m.instances_of(&bob()).count(), 0);
        let ids = |it: Box<dyn Iterator<Item = &Instance> + '_>| {
            it.map(|i| i.id.clone()).collect::<Vec<_>>()
        };
        assert_eq!(
            ids(Box::new(m.members(&alice(), "default"))),
            ["i-00000001", "i-00000002"]
        );
        assert_eq!(ids(Box::new(m.members(&alice(), "web"))), ["i-00000002"]);
        assert!(ids(Box::new(m.members(&bob(), "default"))).is_empty());
        let gone = m.remove_instance("i-00000001").expect("terminate");
        assert_eq!(gone.ip, Ipv4Addr::new(172, 31, 0, 2));
        assert_eq!(m.instances_of(&alice()).count(), 1);
    }

    #[test]
    fn err_instance_clashes_are_invalid_parameter() {
        let mut m = model();
        m.add_instance(instance("i-00000001", [172, 31, 0, 2], &[]))
            .expect("launch");
        fails(
            &mut m,
            ErrorCode::InvalidParameterValue,
            "'i-00000001'",
            |m| m.add_instance(instance("i-00000001", [172, 31, 0, 9], &[])),
        );
        fails(
            &mut m,
            ErrorCode::InvalidParameterValue,
            "'172.31.0.2'",
            |m| m.add_instance(instance("i-00000002", [172, 31, 0, 2], &[])),
        );
        let mut same_mac = instance("i-00000003", [172, 31, 0, 4], &[]);
        same_mac.mac = instance_mac("i-00000001");
        fails(
            &mut m,
            ErrorCode::InvalidParameterValue,
            "'02:00:00:00:00:01'",
            |m| m.add_instance(same_mac),
        );
        let mut multicast = instance("i-00000004", [172, 31, 0, 5], &[]);
        multicast.mac = [0x01, 0, 0x5e, 0, 0, 1];
        fails(
            &mut m,
            ErrorCode::InvalidParameterValue,
            "'01:00:5e:00:00:01'",
            |m| m.add_instance(multicast),
        );
        let mut bad_owner = instance("i-00000005", [172, 31, 0, 6], &[]);
        bad_owner.owner = Owner("x".into());
        fails(&mut m, ErrorCode::InvalidParameterValue, "'x'", |m| {
            m.add_instance(bad_owner)
        });
        fails(&mut m, ErrorCode::InvalidParameterValue, "''", |m| {
            m.add_instance(instance("", [172, 31, 0, 7], &[]))
        });
    }

    #[test]
    fn err_instance_not_found() {
        let mut m = model();
        fails(
            &mut m,
            ErrorCode::InvalidInstanceIdNotFound,
            "'i-deadbeef'",
            |m| m.remove_instance("i-deadbeef"),
        );
    }

    #[test]
    fn free_ip_skips_network_gateway_reserved_used_and_broadcast() {
        let mut m = model();
        let subnet: Ipv4Net = "172.31.0.0/16".parse().expect("net");
        let uplink: Ipv4Net = "172.31.255.0/24".parse().expect("net");
        assert_eq!(
            m.free_ip(subnet, uplink),
            Some(Ipv4Addr::new(172, 31, 0, 2))
        );
        m.add_instance(instance("i-00000001", [172, 31, 0, 2], &[]))
            .expect("launch");
        m.add_instance(instance("i-00000002", [172, 31, 0, 4], &[]))
            .expect("launch");
        assert_eq!(
            m.free_ip(subnet, uplink),
            Some(Ipv4Addr::new(172, 31, 0, 3)),
            "lowest gap"
        );
        // A /29: hosts .1-.6; .1 gateway; .2 and .4 used; .5-.6 reserved.
        let small: Ipv4Net = "172.31.0.0/29".parse().expect("net");
        let res: Ipv4Net = "172.31.0.4/30".parse().expect("net");
        assert_eq!(m.free_ip(small, res), Some(Ipv4Addr::new(172, 31, 0, 3)));
        m.add_instance(instance("i-00000003", [172, 31, 0, 3], &[]))
            .expect("launch");
        assert_eq!(m.free_ip(small, res), None, "full");
        let none: Ipv4Net = "10.0.0.0/32".parse().expect("net");
        assert_eq!(m.free_ip("10.0.0.0/31".parse().expect("net"), none), None);
        assert_eq!(m.free_ip(none, none), None);
        assert_eq!(
            m.free_ip("10.0.0.0/30".parse().expect("net"), none),
            Some(Ipv4Addr::new(10, 0, 0, 2))
        );
    }

    // ---- reload and serialization ----

    #[test]
    fn insert_group_raw_reloads_and_new_ids_avoid_reloaded_ones() {
        let mut a = model();
        a.add_group(&alice(), "web", "w").expect("add");
        a.authorize(&alice(), "web", &spec_tcp("80", &["0.0.0.0/0"]))
            .expect("auth");
        // Reload into a fresh model that lost its sequence counter.
        let mut b = Model::new(Limits::default());
        for g in a.groups.values() {
            b.insert_group_raw(g.clone()).expect("reload");
        }
        assert_eq!(b.groups, a.groups);
        let fresh = b.add_group(&alice(), "app", "a").expect("add");
        assert!(
            b.groups.values().filter(|g| g.id == fresh.id).count() == 1,
            "id {} must be unique",
            fresh.id
        );
        assert_eq!(
            b.next_group_seq,
            a.next_group_seq + 1,
            "sequence continues after the reloaded ids"
        );
        let web = a.group(&alice(), "web").expect("g").clone();
        fails(&mut b, ErrorCode::InvalidGroupDuplicate, "'web'", |m| {
            m.insert_group_raw(web.clone())
        });
        let clash = Group {
            name: "other".into(),
            ..web.clone()
        };
        fails(
            &mut b,
            ErrorCode::InvalidParameterValue,
            &format!("'{}'", web.id),
            |m| m.insert_group_raw(clash),
        );
        let bad_id = Group {
            name: "other".into(),
            id: "sg-XYZ".into(),
            ..web
        };
        fails(&mut b, ErrorCode::InvalidParameterValue, "'sg-XYZ'", |m| {
            m.insert_group_raw(bad_id)
        });
    }

    #[test]
    fn verify_finds_state_the_methods_would_refuse() {
        let mut m = model();
        m.add_group(&alice(), "web", "w").expect("add");
        let from_web = RuleSpec {
            groups: vec![("web".into(), None)],
            ..RuleSpec::default()
        };
        m.authorize(&alice(), "default", &from_web).expect("auth");
        m.add_instance(instance("i-00000001", [172, 31, 0, 2], &["web"]))
            .expect("launch");
        assert_eq!(m.verify(), Ok(()));

        let mut dangling = m.clone();
        dangling.groups.remove(&(alice(), "web".to_string()));
        let e = dangling
            .verify()
            .expect_err("dangling source and membership");
        assert_eq!(e.code, ErrorCode::InternalError);
        assert!(e.message.contains("111122223333/web"), "{e}");

        let mut dup = m.clone();
        let g = dup
            .groups
            .get_mut(&(alice(), "web".to_string()))
            .expect("web");
        g.rules = vec![tcp(1, 1, "10.0.0.0/8"), tcp(1, 1, "10.0.0.0/8")];
        assert!(
            dup.verify()
                .expect_err("duplicate rule")
                .message
                .contains("tcp 1-1 from 10.0.0.0/8")
        );

        let mut unnormal = m.clone();
        let g = unnormal
            .groups
            .get_mut(&(alice(), "web".to_string()))
            .expect("web");
        g.rules = vec![Rule {
            proto: Proto::Tcp,
            ports: Ports::Range(1, 1),
            source: cidr("10.1.0.0/8"),
        }];
        assert!(unnormal.verify().is_err(), "host bits set");

        let mut same_ip = m.clone();
        let mut second = instance("i-00000002", [172, 31, 0, 2], &["web"]);
        second.mac = instance_mac("i-00000002");
        same_ip.instances.insert(second.id.clone(), second);
        assert!(
            same_ip
                .verify()
                .expect_err("same IP")
                .message
                .contains("i-00000002")
        );
    }

    #[test]
    fn model_round_trips_through_json() {
        let mut m = model();
        m.add_group(&alice(), "web", "Web \"tier\"").expect("add");
        m.authorize(&alice(), "web", &spec_tcp("80", &["0.0.0.0/0"]))
            .expect("auth");
        let icmp = RuleSpec {
            proto: Some("icmp".into()),
            icmp: Some("8:-1".into()),
            ..RuleSpec::default()
        };
        m.authorize(&alice(), "web", &icmp).expect("auth");
        m.add_instance(instance("i-00000001", [172, 31, 0, 2], &["web"]))
            .expect("launch");
        let json = serde_json::to_string(&m).expect("serialize");
        let back: Model = serde_json::from_str(&json).expect("deserialize");
        assert_eq!(back, m);
    }

    // ---- randomized: failed edits change nothing, invariants always hold ----

    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
            &xs[(self.next() % xs.len() as u64) as usize]
        }
    }

    fn check_invariants(m: &Model) {
        assert_eq!(m.verify(), Ok(()));
        let mut ids = BTreeSet::new();
        for ((owner, name), g) in &m.groups {
            assert_eq!((&g.owner, &g.name), (owner, name));
            assert!(ids.insert(g.id.clone()), "group ids unique");
            assert!(g.rules.len() <= m.limits.rules_per_group);
            for (i, r) in g.rules.iter().enumerate() {
                assert!(!g.rules[..i].contains(r), "no duplicate rules");
                assert_eq!(r.normalized().as_ref(), Ok(r), "rules are normalised");
                if let Source::Group { owner, group } = &r.source {
                    assert!(
                        m.groups.contains_key(&(owner.clone(), group.clone())),
                        "no dangling source {r}"
                    );
                }
            }
        }
        let owners: BTreeSet<&Owner> = m.groups.keys().map(|(o, _)| o).collect();
        for o in owners {
            assert!(m.group(o, DEFAULT_GROUP).is_ok(), "every owner has default");
        }
        let (mut ips, mut macs) = (BTreeSet::new(), BTreeSet::new());
        for i in m.instances.values() {
            assert!(ips.insert(i.ip) && macs.insert(i.mac));
            assert!(!i.groups.is_empty() && i.groups.windows(2).all(|w| w[0] < w[1]));
            for g in &i.groups {
                assert!(m.group(&i.owner, g).is_ok(), "instance group exists");
            }
        }
    }

    #[test]
    fn random_edit_sequences_keep_invariants_and_fail_atomically() {
        let mut rng = Rng(0x0dd_ba11_5eed);
        let owners = [alice(), bob()];
        let names = ["default", "web", "app", "db", "x y"];
        let cidrs = [
            "10.0.0.0/8",
            "10.1.2.3/8",
            "0.0.0.0/0",
            "192.168.1.7",
            "bad/99",
        ];
        let ports = ["22", "80-90", "-1", "70000"];
        let mut m = Model::new(Limits { rules_per_group: 6 });
        let (mut oks, mut errs) = (0, 0);
        for step in 0..20_000u32 {
            let owner = rng.pick(&owners).clone();
            m.ensure_owner(&owner);
            let before = m.clone();
            let name = *rng.pick(&names);
            let mut spec = RuleSpec::default();
            match rng.next() % 3 {
                0 => spec.cidrs.push(rng.pick(&cidrs).to_string()),
                1 => spec.groups.push((
                    rng.pick(&names).to_string(),
                    Some(rng.pick(&owners).0.clone()),
                )),
                _ => {}
            }
            if rng.next().is_multiple_of(2) {
                spec.proto = Some(rng.pick(&["tcp", "udp", "all"]).to_string());
                if spec.proto.as_deref() != Some("all") {
                    spec.ports = Some(rng.pick(&ports).to_string());
                }
            }
            let ip = [172, 31, 0, (rng.next() % 8) as u8 + 2];
            let id = format!("i-{:08x}", rng.next() % 8);
            let result = match rng.next() % 6 {
                0 => m.add_group(&owner, name, "d").map(|_| ()),
                1 => m.delete_group(&owner, name).map(|_| ()),
                2 => m.authorize(&owner, name, &spec).map(|_| ()),
                3 => m.revoke(&owner, name, &spec).map(|_| ()),
                4 => m.add_instance(Instance {
                    id: id.clone(),
                    owner: owner.clone(),
                    mac: instance_mac(&id),
                    ip: ip.into(),
                    groups: vec![name.into()],
                }),
                _ => m.remove_instance(&id).map(|_| ()),
            };
            match result {
                Ok(()) => oks += 1,
                Err(e) => {
                    errs += 1;
                    assert_eq!(m, before, "step {step}: failed edit {e} changed the model");
                }
            }
            check_invariants(&m);
        }
        assert!(
            oks > 2_000 && errs > 2_000,
            "both paths exercised: {oks} ok, {errs} errors"
        );
    }
}
