//! The versioned key layout of cluster mode and the records stored there
//! (the table of docs/cluster.md §2).
//!
//! Contract:
//! * Every key is under [`PREFIX`]; the shared model (what daemons read and
//!   watch) under [`MODEL`]; per-host status (`acks/`, `edits/`) and identity
//!   references (`idrefs/`) outside it, so no daemon watches another's acks.
//! * [`Entry::encode`] and [`Entry::decode`] are inverse: `decode(encode(e)) ==
//!   e` for every entry (tested), and `decode` rejects any key or value that is
//!   not exactly what `encode` writes, naming the key ([`CodecError`]).
//! * Key segments that come from users (group names, client tokens) are
//!   percent-escaped (`/`, `%`, `,`, control and non-ASCII bytes), so a group
//!   named `a/b` cannot forge another key's shape.
//! * Values are JSON of serde records; MACs as `aa:bb:cc:dd:ee:ff`, addresses
//!   and CIDRs as text; counters and ids as JSON strings/numbers. Unknown
//!   fields are refused, not ignored: a newer writer needs a new layout version.

use std::net::{Ipv4Addr, SocketAddr};

use filter::Mac;
use filter::model::{Group, Instance, Owner, Rule};
use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::store::{
    AccessKeyRecord, Attachment, ClientTokenRecord, ImageRecord, InstanceRecord, format_mac,
    parse_mac,
};

/// Every sgswitch key starts with this; an incompatible layout is `v2`.
pub const PREFIX: &str = "/sgswitch/v1/";
/// The shared model: read at R, watched from R + 1 by every daemon.
pub const MODEL: &str = "/sgswitch/v1/model/";
/// Layout version written in [`MetaRecord::layout`].
pub const LAYOUT: u32 = 1;
/// Lowest identity given to a group set (below: reserved).
pub const FIRST_IDENTITY: u16 = 256;

/// Why a key or value could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CodecError {
    #[error("etcd key {key:?} is not an sgswitch v1 model key: {reason}")]
    BadKey { key: String, reason: &'static str },
    #[error("etcd value of {key:?} is invalid: {reason}")]
    BadValue { key: String, reason: String },
}

/// The lab-wide settings, written once by the first daemon.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetaRecord {
    pub layout: u32,
    pub subnet: Ipv4Net,
    pub uplink_range: Ipv4Net,
    /// The VXLAN network identifier of the lab (24 bits).
    pub vni: u32,
    /// The instances' IPv6 /64, the same on every host (absent in labs
    /// created before IPv6: then each host keeps its own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet6: Option<ipnet::Ipv6Net>,
}

/// A group as stored at `model/groups/<id>`: rules inline (one key per group,
/// so the rule limit is a property of one value).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupRecord {
    pub owner: Owner,
    pub name: String,
    pub description: String,
    pub rules: Vec<Rule>,
    /// Egress rules; absent in values written before they existed (then the
    /// default "all to 0.0.0.0/0").
    #[serde(default = "filter::model::default_egress")]
    pub egress: Vec<Rule>,
}

impl GroupRecord {
    pub fn from_group(g: &Group) -> GroupRecord {
        GroupRecord {
            owner: g.owner.clone(),
            name: g.name.clone(),
            description: g.description.clone(),
            rules: g.rules.clone(),
            egress: g.egress.clone(),
        }
    }

    pub fn into_group(self, id: String) -> Group {
        Group {
            owner: self.owner,
            name: self.name,
            id,
            description: self.description,
            rules: self.rules,
            egress: self.egress,
        }
    }
}

/// An instance as stored at `model/instances/<id>`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceValue {
    pub owner: Owner,
    /// The host whose daemon launched it and runs it.
    pub host: String,
    #[serde(with = "mac_text")]
    pub mac: Mac,
    pub ip: Ipv4Addr,
    /// Group names of `owner`, sorted.
    pub groups: Vec<String>,
    /// Its group-set identity (the VXLAN-GBP policy id).
    pub identity: u16,
    pub ami: String,
    pub reservation: String,
    pub launch_index: u32,
    /// How it is attached, local to `host`.
    pub attachment: Attachment,
    pub launched_at: i64,
}

impl InstanceValue {
    pub fn from_record(r: &InstanceRecord) -> InstanceValue {
        InstanceValue {
            owner: r.instance.owner.clone(),
            host: r.host.clone(),
            mac: r.instance.mac,
            ip: r.instance.ip,
            groups: r.instance.groups.clone(),
            identity: r.identity,
            ami: r.ami.clone(),
            reservation: r.reservation.clone(),
            launch_index: r.launch_index,
            attachment: r.attachment.clone(),
            launched_at: r.launched_at,
        }
    }

    /// The store record.
    pub fn to_record(&self, id: &str) -> InstanceRecord {
        InstanceRecord {
            instance: Instance {
                id: id.to_owned(),
                owner: self.owner.clone(),
                mac: self.mac,
                ip: self.ip,
                groups: self.groups.clone(),
            },
            ami: self.ami.clone(),
            reservation: self.reservation.clone(),
            launch_index: self.launch_index,
            attachment: self.attachment.clone(),
            launched_at: self.launched_at,
            host: self.host.clone(),
            identity: self.identity,
        }
    }
}

/// A host's registration, on its lease.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostRecord {
    /// Where the other hosts send its VXLAN traffic (`--underlay`, port =
    /// `--vxlan-port`).
    pub underlay: SocketAddr,
    pub started_at: i64,
    /// sgswitch version of the daemon.
    pub version: String,
}

/// A host's acknowledgement: it enforces everything up to `revision`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AckRecord {
    pub revision: i64,
    /// The snapshot generation that enforces it (for diagnostics).
    pub generation: u64,
}

/// One key of the model with its decoded value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Entry {
    Meta(MetaRecord),
    /// `model/counters/<name>`: e.g. `next_group_seq`.
    Counter {
        name: String,
        value: i64,
    },
    Group {
        id: String,
        record: GroupRecord,
    },
    /// `model/names/<owner>/<name>` → group id.
    Name {
        owner: Owner,
        name: String,
        group_id: String,
    },
    Instance {
        id: String,
        value: InstanceValue,
    },
    /// `model/ips/<ip>` → instance id.
    Ip {
        ip: Ipv4Addr,
        instance_id: String,
    },
    /// `model/refs/<group>/inst/<instance>`: the instance is in the group.
    MemberRef {
        group_id: String,
        instance_id: String,
    },
    /// `model/refs/<group>/rule/<by>`: a rule of group `by` names `group`.
    RuleRef {
        group_id: String,
        by_group_id: String,
    },
    /// `model/identities/<n>` → the sorted group ids of the set.
    Identity {
        id: u16,
        group_ids: Vec<String>,
    },
    /// `model/identity-sets/<sg-a,sg-b>` → identity.
    IdentitySet {
        group_ids: Vec<String>,
        id: u16,
    },
    Host {
        name: String,
        record: HostRecord,
    },
    Image(ImageRecord),
    AccessKey(AccessKeyRecord),
    ClientToken(ClientTokenRecord),
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct IdentityValue {
    groups: Vec<String>,
}

impl Entry {
    /// The full etcd key.
    pub fn key(&self) -> String {
        match self {
            Entry::Meta(_) => format!("{MODEL}meta"),
            Entry::Counter { name, .. } => format!("{MODEL}counters/{}", esc(name)),
            Entry::Group { id, .. } => group_key(id),
            Entry::Name { owner, name, .. } => name_key(owner, name),
            Entry::Instance { id, .. } => instance_key(id),
            Entry::Ip { ip, .. } => ip_key(*ip),
            Entry::MemberRef {
                group_id,
                instance_id,
            } => format!("{}inst/{}", refs_prefix(group_id), esc(instance_id)),
            Entry::RuleRef {
                group_id,
                by_group_id,
            } => format!("{}rule/{}", refs_prefix(group_id), esc(by_group_id)),
            Entry::Identity { id, .. } => format!("{MODEL}identities/{id}"),
            Entry::IdentitySet { group_ids, .. } => identity_set_key(group_ids),
            Entry::Host { name, .. } => host_key(name),
            Entry::Image(i) => format!("{MODEL}images/{}", esc(&i.ami)),
            Entry::AccessKey(k) => format!("{MODEL}access-keys/{}", esc(&k.key_id)),
            Entry::ClientToken(t) => {
                format!("{MODEL}client-tokens/{}/{}", esc(&t.owner.0), esc(&t.token))
            }
        }
    }

    /// Key and value bytes as written to etcd.
    pub fn encode(&self) -> (String, Vec<u8>) {
        let value = match self {
            Entry::Meta(m) => to_json(m),
            Entry::Counter { value, .. } => value.to_string().into_bytes(),
            Entry::Group { record, .. } => to_json(record),
            Entry::Name { group_id, .. } => group_id.clone().into_bytes(),
            Entry::Instance { value, .. } => to_json(value),
            Entry::Ip { instance_id, .. } => instance_id.clone().into_bytes(),
            Entry::MemberRef { .. } | Entry::RuleRef { .. } => Vec::new(),
            Entry::Identity { group_ids, .. } => to_json(&IdentityValue {
                groups: group_ids.clone(),
            }),
            Entry::IdentitySet { id, .. } => id.to_string().into_bytes(),
            Entry::Host { record, .. } => to_json(record),
            Entry::Image(i) => to_json(i),
            Entry::AccessKey(k) => to_json(k),
            Entry::ClientToken(t) => to_json(t),
        };
        (self.key(), value)
    }

    /// The entry stored under `key` with `value`.
    pub fn decode(key: &[u8], value: &[u8]) -> Result<Entry, CodecError> {
        let key_text = String::from_utf8_lossy(key).into_owned();
        let bad_key = |reason| CodecError::BadKey {
            key: key_text.clone(),
            reason,
        };
        let bad_value = |reason: String| CodecError::BadValue {
            key: key_text.clone(),
            reason,
        };
        let k = std::str::from_utf8(key).map_err(|_| bad_key("not UTF-8"))?;
        let rest = k
            .strip_prefix(MODEL)
            .ok_or_else(|| bad_key("outside the model prefix"))?;
        let parts: Vec<&str> = rest.split('/').collect();
        let text = || {
            std::str::from_utf8(value)
                .map(str::to_owned)
                .map_err(|_| bad_value("not UTF-8".into()))
        };
        let seg = |s: &str| unesc(s).ok_or_else(|| bad_key("bad escape"));
        let entry = match parts.as_slice() {
            ["meta"] => Entry::Meta(from_json(value).map_err(bad_value)?),
            ["counters", name] => Entry::Counter {
                name: seg(name)?,
                value: text()?
                    .parse()
                    .map_err(|_| bad_value("not an integer".into()))?,
            },
            ["groups", id] => Entry::Group {
                id: seg(id)?,
                record: from_json(value).map_err(bad_value)?,
            },
            ["names", owner, name] => Entry::Name {
                owner: Owner(seg(owner)?),
                name: seg(name)?,
                group_id: text()?,
            },
            ["instances", id] => Entry::Instance {
                id: seg(id)?,
                value: from_json(value).map_err(bad_value)?,
            },
            ["ips", ip] => Entry::Ip {
                ip: ip.parse().map_err(|_| bad_key("bad IPv4 address"))?,
                instance_id: text()?,
            },
            ["refs", group, "inst", inst] => Entry::MemberRef {
                group_id: seg(group)?,
                instance_id: seg(inst)?,
            },
            ["refs", group, "rule", by] => Entry::RuleRef {
                group_id: seg(group)?,
                by_group_id: seg(by)?,
            },
            ["identities", n] => Entry::Identity {
                id: n.parse().map_err(|_| bad_key("bad identity number"))?,
                group_ids: from_json::<IdentityValue>(value).map_err(bad_value)?.groups,
            },
            ["identity-sets", set] => Entry::IdentitySet {
                group_ids: set.split(',').map(seg).collect::<Result<_, _>>()?,
                id: text()?
                    .parse()
                    .map_err(|_| bad_value("not an identity number".into()))?,
            },
            ["hosts", name] => Entry::Host {
                name: seg(name)?,
                record: from_json(value).map_err(bad_value)?,
            },
            ["images", _] => Entry::Image(from_json(value).map_err(bad_value)?),
            ["access-keys", _] => Entry::AccessKey(from_json(value).map_err(bad_value)?),
            ["client-tokens", _, _] => Entry::ClientToken(from_json(value).map_err(bad_value)?),
            _ => return Err(bad_key("unknown kind of key")),
        };
        // The key must be exactly the one the value would be written under
        // (e.g. an image's AMI in the key and in the value agree).
        if entry.key() != k {
            return Err(bad_key("key does not match its value"));
        }
        Ok(entry)
    }
}

/// The counter every edit transaction advances (see `node::edit_guard`).
pub const EDIT_COUNTER: &str = "edits";

pub fn counter_key(name: &str) -> String {
    format!("{MODEL}counters/{}", esc(name))
}

pub fn group_key(id: &str) -> String {
    format!("{MODEL}groups/{}", esc(id))
}

pub fn name_key(owner: &Owner, name: &str) -> String {
    format!("{MODEL}names/{}/{}", esc(&owner.0), esc(name))
}

pub fn instance_key(id: &str) -> String {
    format!("{MODEL}instances/{}", esc(id))
}

pub fn ip_key(ip: Ipv4Addr) -> String {
    format!("{MODEL}ips/{ip}")
}

/// Prefix of every reference to group `group_id`: empty ⇔ not in use.
pub fn refs_prefix(group_id: &str) -> String {
    format!("{MODEL}refs/{}/", esc(group_id))
}

/// `group_ids` sorted and joined: one key per distinct group set.
pub fn identity_set_key(group_ids: &[String]) -> String {
    let mut ids: Vec<String> = group_ids.iter().map(|g| esc(g)).collect();
    ids.sort();
    ids.dedup();
    format!("{MODEL}identity-sets/{}", ids.join(","))
}

pub fn host_key(name: &str) -> String {
    format!("{MODEL}hosts/{}", esc(name))
}

/// Prefix of the live hosts.
pub fn hosts_prefix() -> String {
    format!("{MODEL}hosts/")
}

/// `acks/<host>`: outside the model, read only by `--wait` clients.
pub fn ack_key(host: &str) -> String {
    format!("{PREFIX}acks/{}", esc(host))
}

pub fn acks_prefix() -> String {
    format!("{PREFIX}acks/")
}

/// `edits/<host>`: the sequence number of the host's last edit txn.
pub fn edit_key(host: &str) -> String {
    format!("{PREFIX}edits/{}", esc(host))
}

/// `idrefs/<n>/<instance>`: the instance uses identity `n`.
pub fn idref_key(identity: u16, instance_id: &str) -> String {
    format!("{}{}", idrefs_prefix(identity), esc(instance_id))
}

pub fn idrefs_prefix(identity: u16) -> String {
    format!("{PREFIX}idrefs/{identity}/")
}

fn to_json<T: Serialize>(v: &T) -> Vec<u8> {
    // Records of plain data always serialise.
    serde_json::to_vec(v).unwrap_or_default()
}

fn from_json<T: for<'de> Deserialize<'de>>(v: &[u8]) -> Result<T, String> {
    serde_json::from_slice(v).map_err(|e| e.to_string())
}

/// Percent-escape a key segment: `/`, `%`, `,`, controls, spaces and
/// non-ASCII bytes become `%XX`.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for &b in s.as_bytes() {
        if b.is_ascii_graphic() && !matches!(b, b'/' | b'%' | b',') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Inverse of [`esc`]; `None` for a malformed or non-canonical escape.
pub fn unesc(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            if hex.bytes().any(|c| c.is_ascii_lowercase()) {
                return None;
            }
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    let text = String::from_utf8(out).ok()?;
    (esc(&text) == s).then_some(text)
}

mod mac_text {
    use super::{Mac, format_mac, parse_mac};
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(mac: &Mac, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_mac(mac))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Mac, D::Error> {
        let text = String::deserialize(d)?;
        parse_mac(&text).ok_or_else(|| serde::de::Error::custom(format!("bad MAC {text:?}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use filter::model::{Ports, Proto, Source, instance_mac};
    use std::path::PathBuf;

    fn owner() -> Owner {
        Owner("111122223333".into())
    }

    fn samples() -> Vec<Entry> {
        let rules = vec![
            Rule {
                proto: Proto::Tcp,
                ports: Ports::Range(80, 443),
                source: Source::Cidr("10.1.0.0/16".parse().unwrap()),
            },
            Rule {
                proto: Proto::Icmp,
                ports: Ports::Icmp {
                    ty: Some(8),
                    code: None,
                },
                source: Source::Group {
                    owner: owner(),
                    group: "app/tier, 100%".into(),
                },
            },
            Rule {
                proto: Proto::All,
                ports: Ports::None,
                source: Source::Cidr("0.0.0.0/0".parse().unwrap()),
            },
        ];
        vec![
            Entry::Meta(MetaRecord {
                layout: LAYOUT,
                subnet: "10.0.0.0/24".parse().unwrap(),
                uplink_range: "10.0.0.240/28".parse().unwrap(),
                vni: 4242,
                subnet6: Some("fd00:1:2:3::/64".parse().unwrap()),
            }),
            Entry::Counter {
                name: "next_group_seq".into(),
                value: 17,
            },
            Entry::Group {
                id: "sg-0000000b".into(),
                record: GroupRecord {
                    owner: owner(),
                    name: "web".into(),
                    description: "the \"web\" tier ü".into(),
                    rules,
                    egress: filter::model::default_egress(),
                },
            },
            Entry::Name {
                owner: owner(),
                name: "app/tier, 100%".into(),
                group_id: "sg-0000000c".into(),
            },
            Entry::Instance {
                id: "i-1a2b3c4d".into(),
                value: InstanceValue {
                    owner: owner(),
                    host: "h2".into(),
                    mac: instance_mac("i-1a2b3c4d"),
                    ip: "10.0.0.7".parse().unwrap(),
                    groups: vec!["app/tier, 100%".into(), "web".into()],
                    identity: 300,
                    ami: "ami-00000001".into(),
                    reservation: "r-00000001".into(),
                    launch_index: 2,
                    attachment: Attachment::Netns,
                    launched_at: 1_780_000_000,
                },
            },
            Entry::Ip {
                ip: "10.0.0.7".parse().unwrap(),
                instance_id: "i-1a2b3c4d".into(),
            },
            Entry::MemberRef {
                group_id: "sg-0000000b".into(),
                instance_id: "i-1a2b3c4d".into(),
            },
            Entry::RuleRef {
                group_id: "sg-0000000c".into(),
                by_group_id: "sg-0000000b".into(),
            },
            Entry::Identity {
                id: 300,
                group_ids: vec!["sg-0000000b".into(), "sg-0000000c".into()],
            },
            Entry::IdentitySet {
                group_ids: vec!["sg-0000000b".into(), "sg-0000000c".into()],
                id: 300,
            },
            Entry::Host {
                name: "h2".into(),
                record: HostRecord {
                    underlay: "192.0.2.2:4789".parse().unwrap(),
                    started_at: 1_780_000_001,
                    version: "0.1.0".into(),
                },
            },
            Entry::Image(ImageRecord {
                ami: "ami-0000abcd".into(),
                kernel: PathBuf::from("/srv/vmlinuz"),
                initrd: PathBuf::from("/srv/initrd"),
                disk: None,
                memory_mb: 256,
                append: "console=ttyS0".into(),
                registered_at: 5,
            }),
            Entry::AccessKey(AccessKeyRecord {
                key_id: "AKIAABCDEFGHIJKLMNOP".into(),
                owner: owner(),
                secret: "s".repeat(40),
                created_at: 6,
            }),
            Entry::ClientToken(ClientTokenRecord {
                owner: owner(),
                token: "tok/with/slashes".into(),
                reservation: "r-00000002".into(),
                fingerprint: "f".into(),
                created_at: 7,
                instances: Vec::new(),
            }),
        ]
    }

    #[test]
    fn every_entry_round_trips_through_etcd_bytes() {
        for e in samples() {
            let (k, v) = e.encode();
            assert!(k.starts_with(MODEL), "{k}");
            assert_eq!(Entry::decode(k.as_bytes(), &v), Ok(e.clone()), "{k}");
        }
    }

    #[test]
    fn keys_have_the_documented_shape() {
        let keys: Vec<String> = samples().iter().map(Entry::key).collect();
        let want = [
            "/sgswitch/v1/model/meta",
            "/sgswitch/v1/model/counters/next_group_seq",
            "/sgswitch/v1/model/groups/sg-0000000b",
            "/sgswitch/v1/model/names/111122223333/app%2Ftier%2C%20100%25",
            "/sgswitch/v1/model/instances/i-1a2b3c4d",
            "/sgswitch/v1/model/ips/10.0.0.7",
            "/sgswitch/v1/model/refs/sg-0000000b/inst/i-1a2b3c4d",
            "/sgswitch/v1/model/refs/sg-0000000c/rule/sg-0000000b",
            "/sgswitch/v1/model/identities/300",
            "/sgswitch/v1/model/identity-sets/sg-0000000b,sg-0000000c",
            "/sgswitch/v1/model/hosts/h2",
            "/sgswitch/v1/model/images/ami-0000abcd",
            "/sgswitch/v1/model/access-keys/AKIAABCDEFGHIJKLMNOP",
            "/sgswitch/v1/model/client-tokens/111122223333/tok%2Fwith%2Fslashes",
        ];
        assert_eq!(keys, want);
        // Values people read with etcdctl: MAC as text, counters as numbers.
        let (_, v) = samples()[4].encode();
        assert!(String::from_utf8(v).unwrap().contains("\"mac\":\"02:"));
        assert_eq!(samples()[1].encode().1, b"17");
        assert_eq!(
            refs_prefix("sg-0000000b"),
            "/sgswitch/v1/model/refs/sg-0000000b/"
        );
        assert_eq!(ack_key("h 1"), "/sgswitch/v1/acks/h%201");
        assert!(!ack_key("h1").starts_with(MODEL), "acks are not watched");
        assert_eq!(idref_key(300, "i-1"), "/sgswitch/v1/idrefs/300/i-1");
        assert_eq!(
            identity_set_key(&["sg-2".into(), "sg-1".into(), "sg-2".into()]),
            "/sgswitch/v1/model/identity-sets/sg-1,sg-2"
        );
    }

    #[test]
    fn decode_rejects_foreign_and_forged_keys_naming_them() {
        let cases: [(&str, &[u8], &str); 8] = [
            ("/other/x", b"", "outside the model prefix"),
            ("/sgswitch/v1/model/nope/x", b"", "unknown kind of key"),
            ("/sgswitch/v1/model/ips/10.0.0.300", b"i-1", "bad IPv4 address"),
            ("/sgswitch/v1/model/groups/sg-%2x", b"{}", "bad escape"),
            ("/sgswitch/v1/model/groups/sg-1", b"{}", "missing field"),
            ("/sgswitch/v1/model/counters/c", b"12x", "not an integer"),
            ("/sgswitch/v1/model/identities/70000", b"{\"groups\":[]}", "bad identity number"),
            (
                "/sgswitch/v1/model/images/ami-00000001",
                br#"{"ami":"ami-00000002","kernel":"/k","initrd":"/i","memory_mb":64,"append":"","registered_at":1}"#,
                "key does not match its value",
            ),
        ];
        for (key, value, want) in cases {
            let e = Entry::decode(key.as_bytes(), value)
                .unwrap_err()
                .to_string();
            assert!(e.contains(want) && e.contains(key), "{key}: {e}");
        }
        // Unknown fields are refused (a newer layout must change the prefix).
        let (k, v) = samples()[10].encode();
        let mut j: serde_json::Value = serde_json::from_slice(&v).unwrap();
        j["extra"] = 1.into();
        let e = Entry::decode(k.as_bytes(), &serde_json::to_vec(&j).unwrap()).unwrap_err();
        assert!(e.to_string().contains("unknown field"), "{e}");
    }

    #[test]
    fn escaping_is_canonical_and_reversible() {
        for s in ["plain", "a/b", "100%", "x,y", "sp ace", "ü", "", "%41"] {
            assert_eq!(unesc(&esc(s)).as_deref(), Some(s), "{s}");
            assert!(!esc(s).contains('/') && !esc(s).contains(','), "{s}");
        }
        // Non-canonical spellings of one name are not accepted as keys.
        assert_eq!(unesc("%41"), None, "A need not be escaped");
        assert_eq!(unesc("a%2fb"), None, "lower-case hex");
        assert_eq!(unesc("a%2"), None);
    }

    #[test]
    fn group_and_instance_records_convert_to_and_from_the_model() {
        let Entry::Group { id, record } = samples()[2].clone() else {
            unreachable!()
        };
        let g = record.clone().into_group(id.clone());
        assert_eq!((g.id.as_str(), g.rules.len()), ("sg-0000000b", 3));
        assert_eq!(GroupRecord::from_group(&g), record);
        let Entry::Instance { id, value } = samples()[4].clone() else {
            unreachable!()
        };
        let r = value.to_record(&id);
        assert_eq!(r.instance.mac, instance_mac("i-1a2b3c4d"));
        assert_eq!((r.host.as_str(), r.identity), ("h2", 300));
        assert_eq!(InstanceValue::from_record(&r), value);
    }
}
