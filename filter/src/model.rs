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
//! * a group is not deleted while an instance is in it or a rule (of any group of
//!   any owner) names it as source; `default` is never deleted;
//! * instance ids, MACs and IPs are unique; instances are only in their owner's
//!   groups, and their membership never changes.

use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::Mac;

/// EC2 error codes (DESIGN §2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Ec2Code {
    RulesPerSecurityGroupLimitExceeded,
    #[serde(rename = "InvalidPermission.Duplicate")]
    InvalidPermissionDuplicate,
    #[serde(rename = "InvalidPermission.NotFound")]
    InvalidPermissionNotFound,
    #[serde(rename = "InvalidGroup.NotFound")]
    InvalidGroupNotFound,
    #[serde(rename = "InvalidGroup.Duplicate")]
    InvalidGroupDuplicate,
    #[serde(rename = "InvalidGroup.InUse")]
    InvalidGroupInUse,
    #[serde(rename = "InvalidGroup.Reserved")]
    InvalidGroupReserved,
    InvalidParameterValue,
    MissingParameter,
    #[serde(rename = "InvalidInstanceID.NotFound")]
    InvalidInstanceIdNotFound,
    #[serde(rename = "InvalidAMIID.NotFound")]
    InvalidAmiIdNotFound,
    InsufficientInstanceCapacity,
    AuthFailure,
    InternalError,
}

impl Ec2Code {
    /// The code as EC2 spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Ec2Code::RulesPerSecurityGroupLimitExceeded => "RulesPerSecurityGroupLimitExceeded",
            Ec2Code::InvalidPermissionDuplicate => "InvalidPermission.Duplicate",
            Ec2Code::InvalidPermissionNotFound => "InvalidPermission.NotFound",
            Ec2Code::InvalidGroupNotFound => "InvalidGroup.NotFound",
            Ec2Code::InvalidGroupDuplicate => "InvalidGroup.Duplicate",
            Ec2Code::InvalidGroupInUse => "InvalidGroup.InUse",
            Ec2Code::InvalidGroupReserved => "InvalidGroup.Reserved",
            Ec2Code::InvalidParameterValue => "InvalidParameterValue",
            Ec2Code::MissingParameter => "MissingParameter",
            Ec2Code::InvalidInstanceIdNotFound => "InvalidInstanceID.NotFound",
            Ec2Code::InvalidAmiIdNotFound => "InvalidAMIID.NotFound",
            Ec2Code::InsufficientInstanceCapacity => "InsufficientInstanceCapacity",
            Ec2Code::AuthFailure => "AuthFailure",
            Ec2Code::InternalError => "InternalError",
        }
    }
}

impl fmt::Display for Ec2Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error of a model operation: an EC2 code and a message naming the bad value.
/// Printed by the CLI as `Code: message`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[error("{code}: {message}")]
pub struct Ec2Error {
    pub code: Ec2Code,
    pub message: String,
}

impl Ec2Error {
    pub fn new(code: Ec2Code, message: impl Into<String>) -> Self {
        Ec2Error { code, message: message.into() }
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
    /// All protocols, all ports (EC2 `-1` / `all`).
    All,
}

/// Port part of a rule. Normalised: `Ports::Range(0, 65535)` for "all ports" of
/// TCP/UDP, `Icmp { ty: None, code: None }` for all ICMP, `None` for `Proto::All`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Ports {
    /// Only with `Proto::All`.
    None,
    /// Inclusive TCP/UDP port range, `lo <= hi`.
    Range(u16, u16),
    /// ICMP type and code; `None` is the `-1` wildcard. `code` is `None` whenever
    /// `ty` is `None`.
    Icmp { ty: Option<u8>, code: Option<u8> },
}

/// Where allowed traffic may come from.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Source {
    /// A normalised CIDR (host bits cleared).
    Cidr(Ipv4Net),
    /// Members of a group, `owner`'s group named `group`: matched on the verified
    /// sender instance, never on an address.
    Group { owner: Owner, group: String },
}

/// One ingress allow rule: one (protocol, ports, source) triple.
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
        Limits { rules_per_group: 100 }
    }
}

/// Options of an authorize/revoke request as the CLI and APIs deliver them, before
/// validation. One spec expands into one rule per source (`-s` CIDRs and `-o/-u`
/// groups); with no source at all it means `0.0.0.0/0`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleSpec {
    /// `-P`: `tcp`, `udp`, `icmp`, `all`, `-1`, or the numbers 6, 17, 1. Default:
    /// `all` when only group sources are given, else `tcp`... see [`RuleSpec::expand`].
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

/// The whole model.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Model {
    pub limits: Limits,
    /// Keyed by (owner, group name).
    pub groups: BTreeMap<(Owner, String), Group>,
    /// Keyed by instance id.
    pub instances: BTreeMap<String, Instance>,
}
