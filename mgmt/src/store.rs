//! The durable state store: groups, rules, instances and counters in SQLite.
//!
//! Contract:
//! * [`Store::commit`] applies a batch of [`Edit`]s in **one** transaction and
//!   returns only after SQLite has committed it and the write-ahead log is
//!   fsynced, so a committed transaction survives `kill -9` and a power cut.
//!   The database runs in WAL mode with `synchronous=NORMAL` (SQLite writes
//!   the transaction to the log and syncs only at checkpoints); the fsync of
//!   the log is the store's own ([`Syncer`]).
//! * Group commit ([`Store::defer_sync`], the daemon): `commit` returns once
//!   the transaction is in the log (it survives `kill -9` already) and the
//!   [`Syncer`] it hands out makes it durable later, on another thread and
//!   without the store: the daemon commits under the core's lock and fsyncs
//!   after releasing it, before it answers, so the next request does not wait
//!   for the disk, and one fsync covers every transaction committed before
//!   it. The daemon answers a client only after both.
//! * A failed `commit` rolls back completely: the database is unchanged.
//! * The schema enforces what it can on its own: group `(owner, name)` unique,
//!   rule `(group, protocol, ports, source)` unique, instance MAC and IP unique,
//!   and foreign keys (`PRAGMA foreign_keys=ON`): a rule's group, a group-source
//!   rule's source group, an instance's groups. Deleting a group that an instance
//!   is in, or that another group's rule names as source, fails in SQLite too (a
//!   second line of defence behind [`filter::Model`]'s validation).
//! * The database file (and its `-wal`/`-shm`) is mode 0600: it holds the
//!   secrets of the EC2 API's access keys (schema v3, with the ClientTokens of
//!   `RunInstances`).
//! * The schema is versioned with `PRAGMA user_version`; [`MIGRATIONS`] are applied
//!   in order, each in its own transaction, when the store is opened. A database
//!   newer than this binary is refused rather than misread.
//! * An instance's [`Attachment`] is stored as data (columns `attach`, `ifname`,
//!   `netns`, `pid`; schema v4); the PLACE text shown to users is computed from
//!   it ([`Attachment::place`]). Opening a v3 store converts its place texts.
//!
//! Foreign keys are `DEFERRABLE INITIALLY DEFERRED`: they are checked when the
//! transaction commits, so the edits of one batch may come in any order (a new
//! group and a rule of another new group naming it).
//!
//! Encoding of a rule's ports (columns `from_port`, `to_port`): TCP/UDP the
//! inclusive range; ICMP the type and code, `-1` for the wildcard; protocol `all`
//! stores `-1, -1`. Rules are loaded in insertion order (`seq`).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use filter::Mac;
use filter::model::{Group, Instance, Owner, Ports, Proto, Rule, Source};
use ipnet::{Ipv4Net, Ipv6Net};
use rusqlite::{Connection, OptionalExtension, Transaction, params};
use serde::{Deserialize, Serialize};

/// Schema migrations; `MIGRATIONS[i]` takes the schema from version `i` to `i + 1`.
pub const MIGRATIONS: &[&str] = &[
    // v1: the initial schema.
    r#"
    CREATE TABLE counters (
        name  TEXT PRIMARY KEY,
        value INTEGER NOT NULL
    ) STRICT;
    CREATE TABLE groups (
        id          TEXT PRIMARY KEY CHECK (id GLOB 'sg-*'),
        owner       TEXT NOT NULL CHECK (length(owner) = 12),
        name        TEXT NOT NULL CHECK (length(name) BETWEEN 1 AND 255),
        description TEXT NOT NULL,
        UNIQUE (owner, name)
    ) STRICT;
    CREATE TABLE rules (
        seq       INTEGER PRIMARY KEY,
        group_id  TEXT NOT NULL REFERENCES groups(id) ON DELETE CASCADE DEFERRABLE INITIALLY DEFERRED,
        proto     TEXT NOT NULL CHECK (proto IN ('tcp', 'udp', 'icmp', 'all')),
        from_port INTEGER NOT NULL CHECK (from_port BETWEEN -1 AND 65535),
        to_port   INTEGER NOT NULL CHECK (to_port BETWEEN -1 AND 65535),
        src_cidr  TEXT,
        src_owner TEXT,
        src_group TEXT,
        CHECK ((src_cidr IS NULL) = (src_group IS NOT NULL)),
        CHECK ((src_owner IS NULL) = (src_group IS NULL)),
        FOREIGN KEY (src_owner, src_group) REFERENCES groups(owner, name) DEFERRABLE INITIALLY DEFERRED
    ) STRICT;
    CREATE UNIQUE INDEX rules_unique ON rules (
        group_id, proto, from_port, to_port,
        coalesce(src_cidr, ''), coalesce(src_owner, ''), coalesce(src_group, '')
    );
    CREATE INDEX rules_by_source ON rules (src_owner, src_group);
    CREATE TABLE instances (
        id           TEXT PRIMARY KEY CHECK (id GLOB 'i-*'),
        owner        TEXT NOT NULL CHECK (length(owner) = 12),
        mac          TEXT NOT NULL UNIQUE,
        ip           TEXT NOT NULL UNIQUE,
        ami          TEXT NOT NULL,
        reservation  TEXT NOT NULL,
        launch_index INTEGER NOT NULL,
        place        TEXT NOT NULL,
        launched_at  INTEGER NOT NULL
    ) STRICT;
    CREATE TABLE instance_groups (
        instance_id TEXT NOT NULL REFERENCES instances(id) ON DELETE CASCADE DEFERRABLE INITIALLY DEFERRED,
        group_id    TEXT NOT NULL REFERENCES groups(id) DEFERRABLE INITIALLY DEFERRED,
        PRIMARY KEY (instance_id, group_id)
    ) STRICT;
    CREATE INDEX instance_groups_by_group ON instance_groups (group_id);
    "#,
    // v2: registered guest images (`register-image`), the AMI → boot files map
    // of `run-instances AMI --qemu`.
    r#"
    CREATE TABLE images (
        ami           TEXT PRIMARY KEY CHECK (ami GLOB 'ami-[0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f]'),
        kernel        TEXT NOT NULL CHECK (kernel GLOB '/*'),
        initrd        TEXT NOT NULL CHECK (initrd GLOB '/*'),
        disk          TEXT CHECK (disk IS NULL OR disk GLOB '/*'),
        memory_mb     INTEGER NOT NULL CHECK (memory_mb BETWEEN 32 AND 65536),
        append        TEXT NOT NULL,
        registered_at INTEGER NOT NULL
    ) STRICT;
    "#,
    // v3: the EC2 Query API: access keys (key id → owner and secret) and the
    // ClientTokens of RunInstances (idempotent launches).
    r#"
    CREATE TABLE access_keys (
        key_id     TEXT PRIMARY KEY CHECK (length(key_id) BETWEEN 16 AND 128),
        owner      TEXT NOT NULL CHECK (length(owner) = 12),
        secret     TEXT NOT NULL CHECK (length(secret) >= 16),
        created_at INTEGER NOT NULL
    ) STRICT;
    CREATE TABLE client_tokens (
        owner       TEXT NOT NULL CHECK (length(owner) = 12),
        token       TEXT NOT NULL CHECK (length(token) BETWEEN 1 AND 64),
        reservation TEXT NOT NULL,
        fingerprint TEXT NOT NULL,
        created_at  INTEGER NOT NULL,
        PRIMARY KEY (owner, token)
    ) STRICT;
    "#,
    // v4: an instance's attachment as columns (`attach`: netns / iface / qemu,
    // with `ifname` and `netns` of an interface, `pid` of a QEMU guest) instead
    // of the PLACE text. Existing rows are converted from their place text:
    // `qemu:PID` (PID a u32) is a QEMU guest, `port:IFNAME[@NETNS]` an
    // interface (split at the first `@`), anything else a namespace instance.
    r#"
    ALTER TABLE instances ADD COLUMN attach TEXT NOT NULL DEFAULT 'netns'
        CHECK (attach IN ('netns', 'iface', 'qemu'));
    ALTER TABLE instances ADD COLUMN ifname TEXT;
    ALTER TABLE instances ADD COLUMN netns TEXT;
    ALTER TABLE instances ADD COLUMN pid INTEGER CHECK (pid IS NULL OR pid BETWEEN 0 AND 4294967295);
    UPDATE instances SET attach = 'qemu', pid = CAST(substr(place, 6) AS INTEGER)
        WHERE place GLOB 'qemu:[0-9]*' AND substr(place, 6) NOT GLOB '*[^0-9]*'
          AND length(ltrim(substr(place, 6), '0')) <= 10
          AND CAST(substr(place, 6) AS INTEGER) <= 4294967295;
    UPDATE instances SET attach = 'iface',
        ifname = CASE WHEN instr(substr(place, 6), '@') > 0
                      THEN substr(place, 6, instr(substr(place, 6), '@') - 1)
                      ELSE substr(place, 6) END,
        netns = CASE WHEN instr(substr(place, 6), '@') > 0
                     THEN substr(place, 6 + instr(substr(place, 6), '@'))
                     ELSE NULL END
        WHERE place GLOB 'port:*';
    ALTER TABLE instances DROP COLUMN place;
    "#,
    // v5: cluster mode (docs/cluster.md): the host that runs an instance
    // (empty on a single host) and its group-set identity (0 = none).
    r#"
    ALTER TABLE instances ADD COLUMN host TEXT NOT NULL DEFAULT '';
    ALTER TABLE instances ADD COLUMN identity INTEGER NOT NULL DEFAULT 0
        CHECK (identity BETWEEN 0 AND 65535);
    CREATE TABLE cluster_hosts (
        name     TEXT PRIMARY KEY,
        underlay TEXT NOT NULL
    ) STRICT;
    "#,
    // v6: the EC2 API's own facts about rules and resources: each rule's
    // `sgr-` id and description (a row per rule, gone with the rule), tags of
    // groups and instances, and the instances a ClientToken launched (JSON,
    // so a repeat answers them after they are gone). Existing rules get ids.
    r#"
    CREATE TABLE rule_meta (
        rule_seq    INTEGER PRIMARY KEY REFERENCES rules(seq) ON DELETE CASCADE DEFERRABLE INITIALLY DEFERRED,
        rule_id     TEXT NOT NULL UNIQUE CHECK (rule_id GLOB 'sgr-*'),
        description TEXT NOT NULL DEFAULT '' CHECK (length(description) <= 255)
    ) STRICT;
    INSERT INTO rule_meta (rule_seq, rule_id)
        SELECT seq, 'sgr-' || substr(lower(hex(randomblob(9))), 1, 17) FROM rules;
    CREATE TABLE tags (
        resource_id TEXT NOT NULL CHECK (resource_id GLOB 'sg-*' OR resource_id GLOB 'i-*'),
        key         TEXT NOT NULL CHECK (length(key) BETWEEN 1 AND 128),
        value       TEXT NOT NULL CHECK (length(value) <= 256),
        PRIMARY KEY (resource_id, key)
    ) STRICT;
    ALTER TABLE client_tokens ADD COLUMN instances TEXT NOT NULL DEFAULT '[]';
    "#,
    // v7: egress rules, in `rules` with `egress = 1` (the source columns are
    // then the destination). Every existing group gets the default egress rule
    // a new group starts with (all protocols to 0.0.0.0/0), so it behaves as
    // before.
    r#"
    ALTER TABLE rules ADD COLUMN egress INTEGER NOT NULL DEFAULT 0 CHECK (egress IN (0, 1));
    DROP INDEX rules_unique;
    CREATE UNIQUE INDEX rules_unique ON rules (
        group_id, egress, proto, from_port, to_port,
        coalesce(src_cidr, ''), coalesce(src_owner, ''), coalesce(src_group, '')
    );
    INSERT INTO rules (group_id, proto, from_port, to_port, src_cidr, egress)
        SELECT id, 'all', -1, -1, '0.0.0.0/0', 1 FROM groups ORDER BY id;
    "#,
    // v8: IPv6. Rules may be `icmpv6` (the CHECK is part of the table, so the
    // table is rebuilt, keeping every row, its `seq` and its `rule_meta`
    // row); `settings` holds single values of the state (the instances'
    // IPv6 prefix, `subnet6`, chosen once and kept).
    r#"
    CREATE TEMP TABLE rule_meta_keep AS SELECT * FROM rule_meta;
    CREATE TABLE rules_v8 (
        seq       INTEGER PRIMARY KEY,
        group_id  TEXT NOT NULL REFERENCES groups(id) ON DELETE CASCADE DEFERRABLE INITIALLY DEFERRED,
        proto     TEXT NOT NULL CHECK (proto IN ('tcp', 'udp', 'icmp', 'icmpv6', 'all')),
        from_port INTEGER NOT NULL CHECK (from_port BETWEEN -1 AND 65535),
        to_port   INTEGER NOT NULL CHECK (to_port BETWEEN -1 AND 65535),
        src_cidr  TEXT,
        src_owner TEXT,
        src_group TEXT,
        egress    INTEGER NOT NULL DEFAULT 0 CHECK (egress IN (0, 1)),
        CHECK ((src_cidr IS NULL) = (src_group IS NOT NULL)),
        CHECK ((src_owner IS NULL) = (src_group IS NULL)),
        FOREIGN KEY (src_owner, src_group) REFERENCES groups(owner, name) DEFERRABLE INITIALLY DEFERRED
    ) STRICT;
    INSERT INTO rules_v8 (seq, group_id, proto, from_port, to_port, src_cidr, src_owner, src_group, egress)
        SELECT seq, group_id, proto, from_port, to_port, src_cidr, src_owner, src_group, egress FROM rules;
    DROP TABLE rules;
    ALTER TABLE rules_v8 RENAME TO rules;
    CREATE UNIQUE INDEX rules_unique ON rules (
        group_id, egress, proto, from_port, to_port,
        coalesce(src_cidr, ''), coalesce(src_owner, ''), coalesce(src_group, '')
    );
    CREATE INDEX rules_by_source ON rules (src_owner, src_group);
    DELETE FROM rule_meta;
    INSERT INTO rule_meta SELECT * FROM temp.rule_meta_keep;
    DROP TABLE temp.rule_meta_keep;
    CREATE TABLE settings (
        key   TEXT PRIMARY KEY CHECK (key IN ('subnet6')),
        value TEXT NOT NULL
    ) STRICT;
    "#,
    // v9: the default egress is "all protocols to 0.0.0.0/0 and ::/0" (two
    // rules). Every group holding the IPv4 default egress rule gets the
    // IPv6 one too (appended after its egress rules), so a group that still
    // allowed all traffic out keeps allowing all of it once instances speak
    // IPv6; a group whose IPv4 default was revoked stays closed.
    r#"
    INSERT INTO rules (group_id, proto, from_port, to_port, src_cidr, egress)
        SELECT r.group_id, 'all', -1, -1, '::/0', 1 FROM rules r
        WHERE r.egress = 1 AND r.proto = 'all' AND r.src_cidr = '0.0.0.0/0'
          AND NOT EXISTS (
            SELECT 1 FROM rules o WHERE o.group_id = r.group_id AND o.egress = 1
              AND o.proto = 'all' AND o.src_cidr = '::/0')
        ORDER BY r.group_id;
    "#,
    // v10: egress rules have `sgr-` ids and descriptions too (their
    // `rule_meta` rows, as ingress rules'): every rule without one, which
    // is every egress rule v7 and v9 added or any later edit stored, gets an
    // id (empty description).
    r#"
    INSERT INTO rule_meta (rule_seq, rule_id)
        SELECT seq, 'sgr-' || substr(lower(hex(randomblob(9))), 1, 17) FROM rules
        WHERE seq NOT IN (SELECT rule_seq FROM rule_meta) ORDER BY seq;
    "#,
];

/// Errors of the store. Each names the operation and the value involved.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create state directory {path}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot open state database {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("state database {path} has schema version {found}, newer than this binary's {known}")]
    TooNew {
        path: PathBuf,
        found: i64,
        known: i64,
    },
    #[error("migrating state database to schema version {version}")]
    Migrate {
        version: usize,
        #[source]
        source: rusqlite::Error,
    },
    #[error("committing {edit}")]
    Commit {
        edit: String,
        #[source]
        source: rusqlite::Error,
    },
    #[error("cannot fsync the state database's log {path}")]
    Sync {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("loading {what} from the state database")]
    Load {
        what: &'static str,
        #[source]
        source: rusqlite::Error,
    },
    #[error("cannot make state database {path} private (mode 0600)")]
    Mode {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("state database holds an invalid {what}: {value:?}")]
    Corrupt { what: &'static str, value: String },
}

/// An instance as the control plane records it: the model's view plus launch facts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceRecord {
    pub instance: Instance,
    /// The image id the user gave (`ami-...`); recorded, not interpreted.
    pub ami: String,
    /// `r-` + 8 hex digits, shared by the instances of one `run-instances`.
    pub reservation: String,
    pub launch_index: u32,
    /// How it is attached (its PLACE is [`Attachment::place`]).
    pub attachment: Attachment,
    /// Seconds since the Unix epoch.
    pub launched_at: i64,
    /// Cluster mode: the host whose daemon runs it (empty on a single host).
    #[serde(default)]
    pub host: String,
    /// Cluster mode: its group-set identity, the VXLAN-GBP policy id it
    /// sends with (0 on a single host).
    #[serde(default)]
    pub identity: u16,
}

/// How an instance is attached to the switch (stored as the `attach`,
/// `ifname`, `netns` and `pid` columns of `instances`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum Attachment {
    /// A namespace instance: namespace `ID` with a TAP `eth0` the daemon owns.
    Netns,
    /// An interface someone else made (a QEMU guest's TAP, one end of a veth),
    /// attached with AF_PACKET, optionally inside namespace `netns`.
    Iface {
        ifname: String,
        netns: Option<String>,
    },
    /// A QEMU guest the daemon boots (`run-instances --qemu`); `pid` is 0 until
    /// it runs.
    Qemu { pid: u32 },
}

impl Attachment {
    /// The PLACE column shown for instance `id`: `netns:ID`, `port:IFNAME`,
    /// `port:IFNAME@NETNS` or `qemu:PID`.
    pub fn place(&self, id: &str) -> String {
        match self {
            Attachment::Netns => format!("netns:{id}"),
            Attachment::Iface {
                ifname,
                netns: None,
            } => format!("port:{ifname}"),
            Attachment::Iface {
                ifname,
                netns: Some(ns),
            } => format!("port:{ifname}@{ns}"),
            Attachment::Qemu { pid } => format!("qemu:{pid}"),
        }
    }

    /// The `(attach, ifname, netns, pid)` columns.
    fn columns(&self) -> (&'static str, Option<&str>, Option<&str>, Option<i64>) {
        match self {
            Attachment::Netns => ("netns", None, None, None),
            Attachment::Iface { ifname, netns } => {
                ("iface", Some(ifname.as_str()), netns.as_deref(), None)
            }
            Attachment::Qemu { pid } => ("qemu", None, None, Some(i64::from(*pid))),
        }
    }

    /// Back from the columns (a row that breaks their rules is corrupt).
    fn from_columns(
        attach: String,
        ifname: Option<String>,
        netns: Option<String>,
        pid: Option<i64>,
    ) -> Result<Attachment, StoreError> {
        let bad = |attach: String| StoreError::Corrupt {
            what: "instance attachment",
            value: attach,
        };
        match (attach.as_str(), ifname, netns, pid) {
            ("netns", None, None, None) => Ok(Attachment::Netns),
            ("iface", Some(ifname), netns, None) => Ok(Attachment::Iface { ifname, netns }),
            ("qemu", None, None, Some(pid)) => match u32::try_from(pid) {
                Ok(pid) => Ok(Attachment::Qemu { pid }),
                Err(_) => Err(bad(format!("qemu pid {pid}"))),
            },
            (_, ifname, netns, pid) => Err(bad(format!(
                "{attach} (ifname {ifname:?}, netns {netns:?}, pid {pid:?})"
            ))),
        }
    }
}

/// A registered guest image (`register-image`): what `run-instances AMI --qemu`
/// boots. Paths are absolute (the CLI resolves them against its own directory).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    /// `ami-` + 8 lowercase hex digits.
    pub ami: String,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    /// A disk image, attached as a virtio disk with `snapshot=on` (the guest's
    /// writes are discarded: many instances can share one image).
    #[serde(default)]
    pub disk: Option<PathBuf>,
    pub memory_mb: u32,
    /// Kernel command line.
    pub append: String,
    /// Seconds since the Unix epoch.
    pub registered_at: i64,
}

/// An access key of the EC2 Query API: the key id clients send, the secret
/// they sign with, and the account it acts as.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessKeyRecord {
    /// `AKIA` + 16 upper-case letters and digits.
    pub key_id: String,
    pub owner: Owner,
    /// 40 characters of `[A-Za-z0-9+/]`.
    pub secret: String,
    /// Seconds since the Unix epoch.
    pub created_at: i64,
}

/// A `ClientToken` of `RunInstances`: the reservation it launched, and a
/// fingerprint of the request's parameters (the same token with other
/// parameters is an error).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientTokenRecord {
    pub owner: Owner,
    pub token: String,
    pub reservation: String,
    pub fingerprint: String,
    /// Seconds since the Unix epoch.
    pub created_at: i64,
    /// The instances the token launched, as they were launched (a repeat
    /// answers them, `terminated` once they are gone).
    #[serde(default)]
    pub instances: Vec<crate::api::InstanceView>,
}

/// One change to the stored state. Applied in batches by [`Store::commit`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Edit {
    /// Insert a group and its rules (the group must not exist).
    PutGroup(Group),
    /// Delete a group (its rules go with it) by id.
    DeleteGroup { id: String },
    /// Append rules to a group.
    AddRules { group_id: String, rules: Vec<Rule> },
    /// Remove rules (each must exist) from a group.
    RemoveRules { group_id: String, rules: Vec<Rule> },
    /// Append egress rules to a group.
    AddEgressRules { group_id: String, rules: Vec<Rule> },
    /// Remove egress rules (each must exist) from a group.
    RemoveEgressRules { group_id: String, rules: Vec<Rule> },
    /// Insert an instance with its group memberships.
    AddInstance(InstanceRecord),
    /// Delete an instance (must exist) by id.
    RemoveInstance { id: String },
    /// Set a named counter.
    SetCounter { name: String, value: i64 },
    /// Register a guest image (its AMI must be new).
    PutImage(ImageRecord),
    /// Deregister a guest image (must exist).
    DeleteImage { ami: String },
    /// Store a new access key (its id must be new).
    PutAccessKey(AccessKeyRecord),
    /// Delete an access key (must exist).
    DeleteAccessKey { key_id: String },
    /// Record a `ClientToken` (new for its owner).
    PutClientToken(ClientTokenRecord),
    /// Cluster mode: the live hosts and their overlay endpoints as last seen
    /// (replaces the previous list; what a restart without etcd sends to).
    SetClusterHosts(Vec<(String, std::net::SocketAddr)>),
    /// Set the id and description of an existing rule.
    PutRuleMeta(RuleMetaRecord),
    /// Set a tag (replacing the key's value).
    PutTag(TagRecord),
    /// Remove a tag (must exist).
    DeleteTag { resource_id: String, key: String },
    /// Remove every tag of a resource (any number).
    DeleteTags { resource_id: String },
}

/// The EC2 API's facts about one rule: its `sgr-` id and its description.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleMetaRecord {
    pub group_id: String,
    /// An egress rule (`rule`'s source is then its destination).
    #[serde(default)]
    pub egress: bool,
    pub rule: Rule,
    /// `sgr-` + 17 hex digits.
    pub rule_id: String,
    pub description: String,
}

/// One tag of a group (`sg-`) or instance (`i-`).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TagRecord {
    pub resource_id: String,
    pub key: String,
    pub value: String,
}

impl Edit {
    fn describe(&self) -> String {
        match self {
            Edit::PutGroup(g) => format!("new group {}/{} ({})", g.owner.0, g.name, g.id),
            Edit::DeleteGroup { id } => format!("deletion of group {id}"),
            Edit::AddRules { group_id, rules } => {
                format!("{} new rule(s) of group {group_id}", rules.len())
            }
            Edit::AddEgressRules { group_id, rules } => {
                format!("{} new egress rule(s) of group {group_id}", rules.len())
            }
            Edit::RemoveEgressRules { group_id, rules } => {
                format!(
                    "removal of {} egress rule(s) of group {group_id}",
                    rules.len()
                )
            }
            Edit::RemoveRules { group_id, rules } => {
                format!("removal of {} rule(s) of group {group_id}", rules.len())
            }
            Edit::AddInstance(r) => format!("new instance {}", r.instance.id),
            Edit::RemoveInstance { id } => format!("removal of instance {id}"),
            Edit::SetCounter { name, value } => format!("counter {name}={value}"),
            Edit::PutImage(i) => format!("new image {}", i.ami),
            Edit::DeleteImage { ami } => format!("deregistration of image {ami}"),
            Edit::PutAccessKey(k) => format!("new access key {} of {}", k.key_id, k.owner.0),
            Edit::DeleteAccessKey { key_id } => format!("deletion of access key {key_id}"),
            Edit::PutClientToken(t) => {
                format!("client token {:?} of {}", t.token, t.owner.0)
            }
            Edit::SetClusterHosts(h) => format!("{} cluster host(s)", h.len()),
            Edit::PutRuleMeta(m) => format!("rule {} of group {}", m.rule_id, m.group_id),
            Edit::PutTag(t) => format!("tag {:?} of {}", t.key, t.resource_id),
            Edit::DeleteTag { resource_id, key } => {
                format!("removal of tag {key:?} of {resource_id}")
            }
            Edit::DeleteTags { resource_id } => format!("removal of the tags of {resource_id}"),
        }
    }
}

/// Everything the store holds, as loaded at start.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Loaded {
    /// Groups with their rules in insertion order, sorted by (owner, name).
    pub groups: Vec<Group>,
    /// Instances sorted by id, each with its group names sorted.
    pub instances: Vec<InstanceRecord>,
    pub counters: BTreeMap<String, i64>,
    /// Registered guest images, sorted by AMI.
    pub images: Vec<ImageRecord>,
    /// Access keys of the EC2 Query API, sorted by key id.
    pub access_keys: Vec<AccessKeyRecord>,
    /// ClientTokens of `RunInstances`, sorted by (owner, token).
    pub client_tokens: Vec<ClientTokenRecord>,
    /// Cluster mode: the hosts last seen live, sorted by name.
    pub cluster_hosts: Vec<(String, std::net::SocketAddr)>,
    /// Rule ids and descriptions, in rule order.
    pub rule_meta: Vec<RuleMetaRecord>,
    /// Tags, sorted by (resource, key).
    pub tags: Vec<TagRecord>,
}

/// The SQLite state store. One connection, used under the core's lock.
pub struct Store {
    conn: Connection,
    path: PathBuf,
    syncer: Syncer,
    /// [`Store::defer_sync`] was called: `commit` leaves the fsync to the
    /// caller.
    deferred: bool,
}

/// Makes the store's committed transactions durable: fsyncs its write-ahead
/// log. Cloneable and usable without the store (see [`Store::defer_sync`]).
#[derive(Clone)]
pub struct Syncer(std::sync::Arc<SyncState>);

struct SyncState {
    /// The database file.
    db: PathBuf,
    /// The write-ahead log, `DB-wal`.
    wal: PathBuf,
    /// Transactions committed so far.
    committed: std::sync::atomic::AtomicU64,
    /// Held across the fsync: a second caller waits and then finds its
    /// transactions synced already.
    synced: std::sync::Mutex<Synced>,
}

/// Transactions known durable, and the file last synced (with its device
/// and inode, to notice a log made afresh).
#[derive(Default)]
struct Synced {
    count: u64,
    file: Option<(std::fs::File, u64, u64)>,
}

impl Syncer {
    fn new(db: &Path) -> Syncer {
        let mut wal = db.as_os_str().to_owned();
        wal.push("-wal");
        Syncer(std::sync::Arc::new(SyncState {
            db: db.to_path_buf(),
            wal: wal.into(),
            committed: Default::default(),
            synced: Default::default(),
        }))
    }

    /// Make every transaction committed before this call durable (one
    /// `fdatasync` of the log; none when they are already).
    pub fn sync(&self) -> Result<(), StoreError> {
        use std::os::unix::fs::MetadataExt;
        use std::sync::atomic::Ordering;
        let target = self.0.committed.load(Ordering::Acquire);
        let mut synced = self.0.synced.lock().unwrap_or_else(|p| p.into_inner());
        if synced.count >= target {
            return Ok(());
        }
        // No log (SQLite removes it when its last connection closes, after
        // a checkpoint into the database): the database file then.
        let path = match std::fs::metadata(&self.0.wal) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => &self.0.db,
            _ => &self.0.wal,
        };
        let err = |source| StoreError::Sync {
            path: path.clone(),
            source,
        };
        let meta = std::fs::metadata(path).map_err(err)?;
        let file = match synced.file.take() {
            Some((f, dev, ino)) if (dev, ino) == (meta.dev(), meta.ino()) => f,
            _ => std::fs::File::open(path).map_err(err)?,
        };
        let meta = file.metadata().map_err(err)?;
        file.sync_data().map_err(err)?;
        *synced = Synced {
            count: target,
            file: Some((file, meta.dev(), meta.ino())),
        };
        Ok(())
    }

    /// Transactions committed and not yet synced.
    pub fn behind(&self) -> u64 {
        let target = self.0.committed.load(std::sync::atomic::Ordering::Acquire);
        let synced = self.0.synced.lock().unwrap_or_else(|p| p.into_inner());
        let synced = synced.count;
        target.saturating_sub(synced)
    }
}

/// File name of the database inside the state directory.
pub const DB_FILE: &str = "sgswitch.db";

impl Store {
    /// Open (creating if needed) `state_dir/sgswitch.db` and migrate it.
    pub fn open_dir(state_dir: &Path) -> Result<Store, StoreError> {
        std::fs::create_dir_all(state_dir).map_err(|source| StoreError::CreateDir {
            path: state_dir.to_path_buf(),
            source,
        })?;
        Store::open(&state_dir.join(DB_FILE))
    }

    /// Open (creating if needed) the database file at `path` and migrate it.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let open_err = |source| StoreError::Open {
            path: path.to_path_buf(),
            source,
        };
        restrict_mode(path).map_err(|source| StoreError::Mode {
            path: path.to_path_buf(),
            source,
        })?;
        let conn = Connection::open(path).map_err(open_err)?;
        // WAL + synchronous=NORMAL: SQLite syncs at checkpoints, and every
        // commit's log is fsynced by the `Syncer`.
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(open_err)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(open_err)?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(open_err)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(open_err)?;
        // Room for every statement a commit uses (`exec`, `insert_rules`, ...).
        conn.set_prepared_statement_cache_capacity(64);
        let mut store = Store {
            conn,
            path: path.to_path_buf(),
            syncer: Syncer::new(path),
            deferred: false,
        };
        store.migrate()?;
        Ok(store)
    }

    /// From now on [`Store::commit`] does not fsync: the caller makes each
    /// commit durable with the returned [`Syncer`] before it tells anyone.
    pub fn defer_sync(&mut self) -> Syncer {
        self.deferred = true;
        self.syncer.clone()
    }

    /// The schema version of the open database.
    pub fn schema_version(&self) -> Result<i64, StoreError> {
        self.conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(|source| StoreError::Load {
                what: "schema version",
                source,
            })
    }

    fn migrate(&mut self) -> Result<(), StoreError> {
        let found = self.schema_version()?;
        let known = MIGRATIONS.len() as i64;
        if found > known {
            return Err(StoreError::TooNew {
                path: self.path.clone(),
                found,
                known,
            });
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
            let version = i + 1;
            let err = |source| StoreError::Migrate { version, source };
            let tx = self.conn.transaction().map_err(err)?;
            tx.execute_batch(sql).map_err(err)?;
            tx.pragma_update(None, "user_version", version as i64)
                .map_err(err)?;
            tx.commit().map_err(err)?;
            self.committed();
        }
        self.syncer.sync()
    }

    /// Count a committed transaction for the [`Syncer`].
    fn committed(&self) {
        let c = &self.syncer.0.committed;
        c.fetch_add(1, std::sync::atomic::Ordering::Release);
    }

    /// Apply `edits` in one transaction; on error nothing is applied.
    pub fn commit(&mut self, edits: &[Edit]) -> Result<(), StoreError> {
        let tx = self
            .conn
            .transaction()
            .map_err(|source| StoreError::Commit {
                edit: "begin".into(),
                source,
            })?;
        for edit in edits {
            apply(&tx, edit).map_err(|source| StoreError::Commit {
                edit: edit.describe(),
                source,
            })?;
        }
        let what = match edits {
            [one] => one.describe(),
            _ => format!("{} edits", edits.len()),
        };
        tx.commit()
            .map_err(|source| StoreError::Commit { edit: what, source })?;
        self.committed_one()
    }

    /// A transaction was committed: count it, and make it durable unless
    /// the caller does ([`Store::defer_sync`]).
    fn committed_one(&self) -> Result<(), StoreError> {
        self.committed();
        if self.deferred {
            return Ok(());
        }
        self.syncer.sync()
    }

    /// Load the whole state.
    pub fn load(&self) -> Result<Loaded, StoreError> {
        let load = |what| move |source| StoreError::Load { what, source };
        let mut groups: Vec<Group> = Vec::new();
        let mut index: BTreeMap<String, usize> = BTreeMap::new();
        {
            let mut st = self
                .conn
                .prepare("SELECT id, owner, name, description FROM groups ORDER BY owner, name")
                .map_err(load("groups"))?;
            let rows = st
                .query_map([], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, String>(3)?,
                    ))
                })
                .map_err(load("groups"))?;
            for row in rows {
                let (id, owner, name, description) = row.map_err(load("groups"))?;
                index.insert(id.clone(), groups.len());
                groups.push(Group {
                    owner: Owner(owner),
                    name,
                    id,
                    description,
                    rules: Vec::new(),
                    egress: Vec::new(),
                });
            }
        }
        {
            let mut st = self
                .conn
                .prepare(
                    "SELECT group_id, proto, from_port, to_port, src_cidr, src_owner, src_group, egress \
                     FROM rules ORDER BY seq",
                )
                .map_err(load("rules"))?;
            let rows = st
                .query_map([], |r| Ok((RuleRow::read(r)?, r.get::<_, i64>(7)?)))
                .map_err(load("rules"))?;
            for row in rows {
                let (row, egress) = row.map_err(load("rules"))?;
                let egress = egress == 1;
                let Some(&gi) = index.get(&row.group_id) else {
                    return Err(StoreError::Corrupt {
                        what: "rule group",
                        value: row.group_id,
                    });
                };
                let rule = row.into_rule()?;
                if egress {
                    groups[gi].egress.push(rule);
                } else {
                    groups[gi].rules.push(rule);
                }
            }
        }
        let mut memberships: BTreeMap<String, Vec<String>> = BTreeMap::new();
        {
            let mut st = self
                .conn
                .prepare(
                    "SELECT ig.instance_id, g.name FROM instance_groups ig \
                     JOIN groups g ON g.id = ig.group_id ORDER BY ig.instance_id, g.name",
                )
                .map_err(load("instance groups"))?;
            let rows = st
                .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
                .map_err(load("instance groups"))?;
            for row in rows {
                let (id, name) = row.map_err(load("instance groups"))?;
                memberships.entry(id).or_default().push(name);
            }
        }
        let mut instances = Vec::new();
        {
            let mut st = self
                .conn
                .prepare(
                    "SELECT id, owner, mac, ip, ami, reservation, launch_index, launched_at, \
                     attach, ifname, netns, pid, host, identity \
                     FROM instances ORDER BY id",
                )
                .map_err(load("instances"))?;
            let rows = st
                .query_map([], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, String>(3)?,
                        r.get::<_, String>(4)?,
                        r.get::<_, String>(5)?,
                        r.get::<_, i64>(6)?,
                        r.get::<_, i64>(7)?,
                        (
                            r.get::<_, String>(8)?,
                            r.get::<_, Option<String>>(9)?,
                            r.get::<_, Option<String>>(10)?,
                            r.get::<_, Option<i64>>(11)?,
                        ),
                        (r.get::<_, String>(12)?, r.get::<_, i64>(13)?),
                    ))
                })
                .map_err(load("instances"))?;
            for row in rows {
                let (id, owner, mac, ip, ami, reservation, launch_index, launched_at, attach, cl) =
                    row.map_err(load("instances"))?;
                let (host, identity) = cl;
                let identity = u16::try_from(identity).map_err(|_| StoreError::Corrupt {
                    what: "instance identity",
                    value: identity.to_string(),
                })?;
                let attachment = Attachment::from_columns(attach.0, attach.1, attach.2, attach.3)?;
                let mac = parse_mac(&mac).ok_or(StoreError::Corrupt {
                    what: "instance MAC",
                    value: mac,
                })?;
                let ip: Ipv4Addr = ip.parse().map_err(|_| StoreError::Corrupt {
                    what: "instance IP",
                    value: ip,
                })?;
                let launch_index =
                    u32::try_from(launch_index).map_err(|_| StoreError::Corrupt {
                        what: "launch index",
                        value: launch_index.to_string(),
                    })?;
                let groups = memberships.remove(&id).unwrap_or_default();
                instances.push(InstanceRecord {
                    instance: Instance {
                        id,
                        owner: Owner(owner),
                        mac,
                        ip,
                        groups,
                    },
                    ami,
                    reservation,
                    launch_index,
                    attachment,
                    launched_at,
                    host,
                    identity,
                });
            }
        }
        let mut counters = BTreeMap::new();
        {
            let mut st = self
                .conn
                .prepare("SELECT name, value FROM counters")
                .map_err(load("counters"))?;
            let rows = st
                .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))
                .map_err(load("counters"))?;
            for row in rows {
                let (k, v) = row.map_err(load("counters"))?;
                counters.insert(k, v);
            }
        }
        let images = self.load_images()?;
        let access_keys = self.load_access_keys()?;
        let client_tokens = self.load_client_tokens()?;
        let cluster_hosts = self.load_cluster_hosts()?;
        let rule_meta = self.load_rule_meta()?;
        let tags = self.load_tags()?;
        Ok(Loaded {
            groups,
            instances,
            counters,
            images,
            access_keys,
            client_tokens,
            cluster_hosts,
            rule_meta,
            tags,
        })
    }

    fn load_rule_meta(&self) -> Result<Vec<RuleMetaRecord>, StoreError> {
        let load = |source| StoreError::Load {
            what: "rule ids",
            source,
        };
        let mut st = self
            .conn
            .prepare(
                "SELECT r.group_id, r.proto, r.from_port, r.to_port, r.src_cidr, r.src_owner, \
                 r.src_group, m.rule_id, m.description, r.egress \
                 FROM rule_meta m JOIN rules r ON r.seq = m.rule_seq ORDER BY r.seq",
            )
            .map_err(load)?;
        let rows = st
            .query_map([], |r| {
                Ok((
                    RuleRow::read(r)?,
                    r.get::<_, String>(7)?,
                    r.get::<_, String>(8)?,
                    r.get::<_, i64>(9)?,
                ))
            })
            .map_err(load)?;
        let mut out = Vec::new();
        for row in rows {
            let (row, rule_id, description, egress) = row.map_err(load)?;
            let group_id = row.group_id.clone();
            out.push(RuleMetaRecord {
                group_id,
                egress: egress == 1,
                rule: row.into_rule()?,
                rule_id,
                description,
            });
        }
        Ok(out)
    }

    /// Every row of `sql` through `row`; errors name `what`.
    fn load_rows<T>(
        &self,
        what: &'static str,
        sql: &str,
        row: impl FnMut(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
    ) -> Result<Vec<T>, StoreError> {
        let load = |source| StoreError::Load { what, source };
        let mut st = self.conn.prepare(sql).map_err(load)?;
        let rows = st.query_map([], row).map_err(load)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(load)
    }

    fn load_tags(&self) -> Result<Vec<TagRecord>, StoreError> {
        self.load_rows(
            "tags",
            "SELECT resource_id, key, value FROM tags ORDER BY resource_id, key",
            |r| {
                Ok(TagRecord {
                    resource_id: r.get(0)?,
                    key: r.get(1)?,
                    value: r.get(2)?,
                })
            },
        )
    }

    fn load_access_keys(&self) -> Result<Vec<AccessKeyRecord>, StoreError> {
        self.load_rows(
            "access keys",
            "SELECT key_id, owner, secret, created_at FROM access_keys ORDER BY key_id",
            |r| {
                Ok(AccessKeyRecord {
                    key_id: r.get(0)?,
                    owner: Owner(r.get(1)?),
                    secret: r.get(2)?,
                    created_at: r.get(3)?,
                })
            },
        )
    }

    fn load_cluster_hosts(&self) -> Result<Vec<(String, std::net::SocketAddr)>, StoreError> {
        let rows = self.load_rows(
            "cluster hosts",
            "SELECT name, underlay FROM cluster_hosts ORDER BY name",
            |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)),
        )?;
        rows.into_iter()
            .map(|(name, addr)| match addr.parse() {
                Ok(a) => Ok((name, a)),
                Err(_) => Err(StoreError::Corrupt {
                    what: "cluster host underlay",
                    value: addr,
                }),
            })
            .collect()
    }

    fn load_client_tokens(&self) -> Result<Vec<ClientTokenRecord>, StoreError> {
        self.load_rows(
            "client tokens",
            "SELECT owner, token, reservation, fingerprint, created_at, instances \
                 FROM client_tokens ORDER BY owner, token",
            |r| {
                Ok(ClientTokenRecord {
                    owner: Owner(r.get(0)?),
                    token: r.get(1)?,
                    reservation: r.get(2)?,
                    fingerprint: r.get(3)?,
                    created_at: r.get(4)?,
                    instances: serde_json::from_str(&r.get::<_, String>(5)?).map_err(|e| {
                        rusqlite::Error::FromSqlConversionFailure(
                            5,
                            rusqlite::types::Type::Text,
                            Box::new(e),
                        )
                    })?,
                })
            },
        )
    }

    fn load_images(&self) -> Result<Vec<ImageRecord>, StoreError> {
        let load = |source| StoreError::Load {
            what: "images",
            source,
        };
        let mut st = self
            .conn
            .prepare(
                "SELECT ami, kernel, initrd, disk, memory_mb, append, registered_at \
                 FROM images ORDER BY ami",
            )
            .map_err(load)?;
        let rows = st
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, Option<String>>(3)?,
                    r.get::<_, i64>(4)?,
                    r.get::<_, String>(5)?,
                    r.get::<_, i64>(6)?,
                ))
            })
            .map_err(load)?;
        let mut images = Vec::new();
        for row in rows {
            let (ami, kernel, initrd, disk, memory_mb, append, registered_at) =
                row.map_err(load)?;
            let memory_mb = u32::try_from(memory_mb).map_err(|_| StoreError::Corrupt {
                what: "image memory size",
                value: memory_mb.to_string(),
            })?;
            images.push(ImageRecord {
                ami,
                kernel: kernel.into(),
                initrd: initrd.into(),
                disk: disk.map(PathBuf::from),
                memory_mb,
                append,
                registered_at,
            });
        }
        Ok(images)
    }

    /// A canonical text dump of every row of every table (sorted), for tests that
    /// check that a failed operation left the store byte-identical.
    pub fn dump(&self) -> Result<String, StoreError> {
        let mut out = String::new();
        for (table, order) in [
            ("counters", "name"),
            ("groups", "id"),
            ("rules", "seq"),
            ("instances", "id"),
            ("instance_groups", "instance_id, group_id"),
            ("images", "ami"),
            ("access_keys", "key_id"),
            ("client_tokens", "owner, token"),
            ("rule_meta", "rule_seq"),
            ("tags", "resource_id, key"),
        ] {
            let what = "dump";
            let mut st = self
                .conn
                .prepare(&format!("SELECT * FROM {table} ORDER BY {order}"))
                .map_err(|source| StoreError::Load { what, source })?;
            let cols = st.column_count();
            let mut rows = st
                .query([])
                .map_err(|source| StoreError::Load { what, source })?;
            while let Some(row) = rows
                .next()
                .map_err(|source| StoreError::Load { what, source })?
            {
                let _ = write!(out, "{table}");
                for c in 0..cols {
                    let v: rusqlite::types::Value = row
                        .get(c)
                        .map_err(|source| StoreError::Load { what, source })?;
                    let _ = write!(out, "|{v:?}");
                }
                out.push('\n');
            }
        }
        Ok(out)
    }

    /// How many instances the state holds.
    pub fn instance_count(&self) -> Result<u64, StoreError> {
        self.conn
            .query_row("SELECT count(*) FROM instances", [], |r| r.get::<_, i64>(0))
            .map(|n| n as u64)
            .map_err(|source| StoreError::Load {
                what: "instance count",
                source,
            })
    }

    /// A single value of the state (`settings` table: `subnet6`), if set.
    pub fn setting(&self, key: &str) -> Result<Option<String>, StoreError> {
        self.conn
            .query_row("SELECT value FROM settings WHERE key = ?1", [key], |r| {
                r.get(0)
            })
            .optional()
            .map_err(|source| StoreError::Load {
                what: "setting",
                source,
            })
    }

    /// Set a single value of the state (replacing the key's value), in its
    /// own transaction.
    pub fn set_setting(&mut self, key: &str, value: &str) -> Result<(), StoreError> {
        self.conn
            .execute(
                "INSERT INTO settings (key, value) VALUES (?1, ?2) \
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                [key, value],
            )
            .map_err(|source| StoreError::Commit {
                edit: format!("set {key} = {value}"),
                source,
            })?;
        self.committed_one()
    }

    /// The database file path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

struct RuleRow {
    group_id: String,
    proto: String,
    from: i64,
    to: i64,
    cidr: Option<String>,
    src_owner: Option<String>,
    src_group: Option<String>,
}

impl RuleRow {
    /// Columns 0..7 of a row: group_id, proto, from_port, to_port, src_cidr,
    /// src_owner, src_group (the order both rule queries select).
    fn read(r: &rusqlite::Row<'_>) -> rusqlite::Result<RuleRow> {
        Ok(RuleRow {
            group_id: r.get(0)?,
            proto: r.get(1)?,
            from: r.get(2)?,
            to: r.get(3)?,
            cidr: r.get(4)?,
            src_owner: r.get(5)?,
            src_group: r.get(6)?,
        })
    }

    fn into_rule(self) -> Result<Rule, StoreError> {
        let corrupt = |what, value: String| StoreError::Corrupt { what, value };
        let proto = match self.proto.as_str() {
            "tcp" => Proto::Tcp,
            "udp" => Proto::Udp,
            "icmp" => Proto::Icmp,
            "icmpv6" => Proto::Icmpv6,
            "all" => Proto::All,
            _ => return Err(corrupt("rule protocol", self.proto)),
        };
        let port = |v: i64| u16::try_from(v).map_err(|_| corrupt("rule port", v.to_string()));
        let icmp = |v: i64| match v {
            -1 => Ok(None),
            0..=255 => Ok(Some(v as u8)),
            _ => Err(corrupt("rule ICMP type/code", v.to_string())),
        };
        let ports = match proto {
            Proto::Tcp | Proto::Udp => Ports::Range(port(self.from)?, port(self.to)?),
            Proto::Icmp | Proto::Icmpv6 => Ports::Icmp {
                ty: icmp(self.from)?,
                code: icmp(self.to)?,
            },
            Proto::All => Ports::None,
        };
        let source = match (self.cidr, self.src_owner, self.src_group) {
            (Some(c), None, None) if c.contains(':') => Source::Cidr6(
                c.parse::<Ipv6Net>()
                    .map_err(|_| corrupt("rule CIDR", c.clone()))?,
            ),
            (Some(c), None, None) => Source::Cidr(
                c.parse::<Ipv4Net>()
                    .map_err(|_| corrupt("rule CIDR", c.clone()))?,
            ),
            (None, Some(owner), Some(group)) => Source::Group {
                owner: Owner(owner),
                group,
            },
            (c, o, g) => return Err(corrupt("rule source", format!("{c:?}/{o:?}/{g:?}"))),
        };
        Ok(Rule {
            proto,
            ports,
            source,
        })
    }
}

/// Column values of a rule: (proto, from, to, cidr, src_owner, src_group).
fn rule_columns(
    rule: &Rule,
) -> (
    &'static str,
    i64,
    i64,
    Option<String>,
    Option<&str>,
    Option<&str>,
) {
    let proto = match rule.proto {
        Proto::Tcp => "tcp",
        Proto::Udp => "udp",
        Proto::Icmp => "icmp",
        Proto::Icmpv6 => "icmpv6",
        Proto::All => "all",
    };
    let opt = |v: Option<u8>| v.map_or(-1, i64::from);
    let (from, to) = match rule.ports {
        Ports::None => (-1, -1),
        Ports::Range(lo, hi) => (i64::from(lo), i64::from(hi)),
        Ports::Icmp { ty, code } => (opt(ty), opt(code)),
    };
    match &rule.source {
        Source::Cidr(net) => (proto, from, to, Some(net.to_string()), None, None),
        Source::Cidr6(net) => (proto, from, to, Some(net.to_string()), None, None),
        Source::Group { owner, group } => (
            proto,
            from,
            to,
            None,
            Some(owner.0.as_str()),
            Some(group.as_str()),
        ),
    }
}

fn insert_rules(
    tx: &Transaction<'_>,
    group_id: &str,
    rules: &[Rule],
    egress: bool,
) -> rusqlite::Result<()> {
    let mut st = tx.prepare_cached(
        "INSERT INTO rules (group_id, proto, from_port, to_port, src_cidr, src_owner, src_group, egress) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?;
    for rule in rules {
        let (proto, from, to, cidr, o, g) = rule_columns(rule);
        st.execute(params![
            group_id,
            proto,
            from,
            to,
            cidr,
            o,
            g,
            i64::from(egress)
        ])?;
    }
    Ok(())
}

fn delete_rules(
    tx: &Transaction<'_>,
    group_id: &str,
    rules: &[Rule],
    egress: bool,
) -> rusqlite::Result<()> {
    let mut st = tx.prepare_cached(
        "DELETE FROM rules WHERE group_id = ?1 AND proto = ?2 AND from_port = ?3 AND to_port = ?4 \
         AND src_cidr IS ?5 AND src_owner IS ?6 AND src_group IS ?7 AND egress = ?8",
    )?;
    for rule in rules {
        let (proto, from, to, cidr, o, g) = rule_columns(rule);
        expect_one(st.execute(params![
            group_id,
            proto,
            from,
            to,
            cidr,
            o,
            g,
            i64::from(egress)
        ])?)?;
    }
    Ok(())
}

/// `tx.execute` with the statement from the connection's cache: each
/// commit re-parsed its statements before (13 % of the management thread's
/// CPU during edits at 100k rules, `perf`).
fn exec<P: rusqlite::Params>(
    tx: &Transaction<'_>,
    sql: &str,
    params: P,
) -> rusqlite::Result<usize> {
    tx.prepare_cached(sql)?.execute(params)
}

fn apply(tx: &Transaction<'_>, edit: &Edit) -> rusqlite::Result<()> {
    match edit {
        Edit::PutGroup(g) => {
            exec(
                tx,
                "INSERT INTO groups (id, owner, name, description) VALUES (?1, ?2, ?3, ?4)",
                params![g.id, g.owner.0, g.name, g.description],
            )?;
            insert_rules(tx, &g.id, &g.rules, false)?;
            insert_rules(tx, &g.id, &g.egress, true)
        }
        Edit::DeleteGroup { id } => expect_one(exec(tx, "DELETE FROM groups WHERE id = ?1", [id])?),
        Edit::AddRules { group_id, rules } => insert_rules(tx, group_id, rules, false),
        Edit::RemoveRules { group_id, rules } => delete_rules(tx, group_id, rules, false),
        Edit::AddEgressRules { group_id, rules } => insert_rules(tx, group_id, rules, true),
        Edit::RemoveEgressRules { group_id, rules } => delete_rules(tx, group_id, rules, true),
        Edit::AddInstance(r) => {
            let i = &r.instance;
            let (attach, ifname, netns, pid) = r.attachment.columns();
            exec(
                tx,
                "INSERT INTO instances (id, owner, mac, ip, ami, reservation, launch_index, launched_at, \
                 attach, ifname, netns, pid, host, identity) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
                params![
                    i.id,
                    i.owner.0,
                    format_mac(&i.mac),
                    i.ip.to_string(),
                    r.ami,
                    r.reservation,
                    r.launch_index,
                    r.launched_at,
                    attach,
                    ifname,
                    netns,
                    pid,
                    r.host,
                    r.identity
                ],
            )?;
            let mut st = tx.prepare_cached(
                "INSERT INTO instance_groups (instance_id, group_id) \
                 VALUES (?1, (SELECT id FROM groups WHERE owner = ?2 AND name = ?3))",
            )?;
            for g in &i.groups {
                st.execute(params![i.id, i.owner.0, g])?;
            }
            Ok(())
        }
        Edit::RemoveInstance { id } => {
            expect_one(exec(tx, "DELETE FROM instances WHERE id = ?1", [id])?)
        }
        Edit::PutImage(i) => {
            let text = |p: &Path| p.to_string_lossy().into_owned();
            exec(
                tx,
                "INSERT INTO images (ami, kernel, initrd, disk, memory_mb, append, registered_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    i.ami,
                    text(&i.kernel),
                    text(&i.initrd),
                    i.disk.as_deref().map(text),
                    i.memory_mb,
                    i.append,
                    i.registered_at
                ],
            )?;
            Ok(())
        }
        Edit::DeleteImage { ami } => {
            expect_one(exec(tx, "DELETE FROM images WHERE ami = ?1", [ami])?)
        }
        Edit::PutAccessKey(k) => {
            exec(
                tx,
                "INSERT INTO access_keys (key_id, owner, secret, created_at) VALUES (?1, ?2, ?3, ?4)",
                params![k.key_id, k.owner.0, k.secret, k.created_at],
            )?;
            Ok(())
        }
        Edit::PutRuleMeta(m) => {
            let (proto, from, to, cidr, o, g) = rule_columns(&m.rule);
            expect_one(exec(
                tx,
                "INSERT OR REPLACE INTO rule_meta (rule_seq, rule_id, description) \
                 SELECT seq, ?8, ?9 FROM rules WHERE group_id = ?1 AND proto = ?2 AND from_port = ?3 \
                 AND to_port = ?4 AND src_cidr IS ?5 AND src_owner IS ?6 AND src_group IS ?7 AND egress = ?10",
                params![
                    m.group_id,
                    proto,
                    from,
                    to,
                    cidr,
                    o,
                    g,
                    m.rule_id,
                    m.description,
                    i64::from(m.egress)
                ],
            )?)
        }
        Edit::PutTag(t) => {
            exec(
                tx,
                "INSERT OR REPLACE INTO tags (resource_id, key, value) VALUES (?1, ?2, ?3)",
                params![t.resource_id, t.key, t.value],
            )?;
            Ok(())
        }
        Edit::DeleteTag { resource_id, key } => expect_one(exec(
            tx,
            "DELETE FROM tags WHERE resource_id = ?1 AND key = ?2",
            params![resource_id, key],
        )?),
        Edit::DeleteTags { resource_id } => {
            exec(tx, "DELETE FROM tags WHERE resource_id = ?1", [resource_id])?;
            Ok(())
        }
        Edit::DeleteAccessKey { key_id } => expect_one(exec(
            tx,
            "DELETE FROM access_keys WHERE key_id = ?1",
            [key_id],
        )?),
        Edit::PutClientToken(t) => {
            exec(
                tx,
                "INSERT INTO client_tokens (owner, token, reservation, fingerprint, created_at, instances) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    t.owner.0,
                    t.token,
                    t.reservation,
                    t.fingerprint,
                    t.created_at,
                    serde_json::to_string(&t.instances).unwrap_or_else(|_| "[]".into())
                ],
            )?;
            Ok(())
        }
        Edit::SetClusterHosts(hosts) => {
            exec(tx, "DELETE FROM cluster_hosts", [])?;
            for (name, addr) in hosts {
                exec(
                    tx,
                    "INSERT INTO cluster_hosts (name, underlay) VALUES (?1, ?2)",
                    params![name, addr.to_string()],
                )?;
            }
            Ok(())
        }
        Edit::SetCounter { name, value } => {
            exec(
                tx,
                "INSERT INTO counters (name, value) VALUES (?1, ?2) \
                 ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                params![name, value],
            )?;
            Ok(())
        }
    }
}

/// Create the database file if needed and make it and its WAL companions mode
/// 0600 (it holds the access keys' secrets). SQLite creates `-wal` and `-shm`
/// with the database file's mode, so they are private from the start too.
fn restrict_mode(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)?;
    let private = std::fs::Permissions::from_mode(0o600);
    std::fs::set_permissions(path, private.clone())?;
    for suffix in ["-wal", "-shm"] {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        match std::fs::set_permissions(PathBuf::from(p), private.clone()) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    Ok(())
}

/// A delete that must hit exactly one row (else the caller's view and the store
/// disagree, and the whole batch is rolled back).
fn expect_one(changed: usize) -> rusqlite::Result<()> {
    if changed == 1 {
        Ok(())
    } else {
        Err(rusqlite::Error::QueryReturnedNoRows)
    }
}

/// `02:00:5e:10:00:01` form.
pub fn format_mac(mac: &Mac) -> String {
    let mut s = String::with_capacity(17);
    for (i, b) in mac.iter().enumerate() {
        if i > 0 {
            s.push(':');
        }
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// Parse the `format_mac` form.
pub fn parse_mac(s: &str) -> Option<Mac> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut mac {
        let p = parts.next()?;
        if p.len() != 2 {
            return None;
        }
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// Read one counter, if set (for tools and tests).
pub fn counter(store: &Store, name: &str) -> Result<Option<i64>, StoreError> {
    store
        .conn
        .query_row("SELECT value FROM counters WHERE name = ?1", [name], |r| {
            r.get(0)
        })
        .optional()
        .map_err(|source| StoreError::Load {
            what: "counter",
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner() -> Owner {
        Owner("111122223333".into())
    }

    fn group(id: &str, name: &str, rules: Vec<Rule>) -> Group {
        Group {
            owner: owner(),
            name: name.into(),
            id: id.into(),
            description: format!("{name} group"),
            egress: filter::model::default_egress(),
            rules,
        }
    }

    fn cidr_rule(proto: Proto, ports: Ports, cidr: &str) -> Rule {
        Rule {
            proto,
            ports,
            source: filter::model::parse_source_cidr(cidr).unwrap(),
        }
    }

    fn group_rule(name: &str) -> Rule {
        Rule {
            proto: Proto::All,
            ports: Ports::None,
            source: Source::Group {
                owner: owner(),
                group: name.into(),
            },
        }
    }

    fn instance(id: &str, ip: [u8; 4], mac_last: u8, groups: &[&str]) -> InstanceRecord {
        InstanceRecord {
            instance: Instance {
                id: id.into(),
                owner: owner(),
                mac: [2, 0, 0, 0, 0, mac_last],
                ip: Ipv4Addr::from(ip),
                groups: groups.iter().map(|s| s.to_string()).collect(),
            },
            ami: "ami-eca54085".into(),
            reservation: "r-0000abcd".into(),
            launch_index: 0,
            attachment: Attachment::Netns,
            launched_at: 1_700_000_000,
            host: String::new(),
            identity: 0,
        }
    }

    struct TempDir(PathBuf);
    impl TempDir {
        fn new(tag: &str) -> TempDir {
            let p =
                std::env::temp_dir().join(format!("sgswitch-store-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&p);
            TempDir(p)
        }
    }
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn writes_survive_reopen_with_rule_order_and_all_kinds_of_ports() {
        let dir = TempDir::new("reopen");
        let rules = vec![
            cidr_rule(Proto::Tcp, Ports::Range(22, 22), "10.0.0.0/8"),
            cidr_rule(
                Proto::Icmp,
                Ports::Icmp {
                    ty: Some(8),
                    code: None,
                },
                "0.0.0.0/0",
            ),
            group_rule("default"),
            cidr_rule(
                Proto::Icmp,
                Ports::Icmp {
                    ty: None,
                    code: None,
                },
                "1.2.3.4/32",
            ),
            cidr_rule(Proto::Udp, Ports::Range(0, 65535), "192.168.0.0/16"),
            cidr_rule(Proto::Tcp, Ports::Range(22, 22), "2001:db8::/32"),
            cidr_rule(
                Proto::Icmpv6,
                Ports::Icmp {
                    ty: Some(128),
                    code: None,
                },
                "::/0",
            ),
            cidr_rule(Proto::All, Ports::None, "fd00::1/128"),
        ];
        {
            let mut s = Store::open_dir(&dir.0).unwrap();
            s.commit(&[Edit::PutGroup(group(
                "sg-00000001",
                "default",
                vec![group_rule("default")],
            ))])
            .unwrap();
            s.commit(&[
                Edit::PutGroup(group("sg-00000002", "web", vec![])),
                Edit::AddRules {
                    group_id: "sg-00000002".into(),
                    rules: rules.clone(),
                },
                Edit::SetCounter {
                    name: "generation".into(),
                    value: 7,
                },
            ])
            .unwrap();
            s.commit(&[Edit::AddInstance(instance(
                "i-0000beef",
                [172, 31, 0, 2],
                1,
                &["default", "web"],
            ))])
            .unwrap();
        }
        let s = Store::open_dir(&dir.0).unwrap();
        assert_eq!(s.schema_version().unwrap(), MIGRATIONS.len() as i64);
        let l = s.load().unwrap();
        assert_eq!(l.groups.len(), 2);
        assert_eq!(l.groups[1].name, "web");
        assert_eq!(
            l.groups[1].rules, rules,
            "rules come back equal and in insertion order"
        );
        assert_eq!(
            l.instances,
            vec![instance(
                "i-0000beef",
                [172, 31, 0, 2],
                1,
                &["default", "web"]
            )]
        );
        assert_eq!(l.counters.get("generation"), Some(&7));
        assert_eq!(counter(&s, "generation").unwrap(), Some(7));
        assert_eq!(counter(&s, "missing").unwrap(), None);
    }

    #[test]
    fn deferred_commits_are_made_durable_by_one_sync_of_the_log() {
        let dir = TempDir::new("defer");
        let mut s = Store::open_dir(&dir.0).unwrap();
        let generation = |value| Edit::SetCounter {
            name: "generation".into(),
            value,
        };
        s.commit(&[generation(1)]).unwrap();
        let syncer = s.defer_sync();
        assert_eq!(syncer.behind(), 0, "commit synced before defer_sync");
        s.commit(&[generation(2)]).unwrap();
        s.commit(&[generation(3)]).unwrap();
        s.set_setting("subnet6", "fd00:1::/64").unwrap();
        assert_eq!(syncer.behind(), 3, "deferred: left to the syncer");
        // A failed commit is not one to sync.
        s.commit(&[Edit::AddRules {
            group_id: "sg-0000dead".into(),
            rules: vec![group_rule("default")],
        }])
        .unwrap_err();
        assert_eq!(syncer.behind(), 3);
        // Written already: another connection (a daemon after kill -9) reads it.
        let other = Store::open_dir(&dir.0).unwrap();
        assert_eq!(counter(&other, "generation").unwrap(), Some(3));
        drop(other);
        // One sync, on another thread and without the store, covers all three.
        let t = syncer.clone();
        std::thread::spawn(move || t.sync())
            .join()
            .unwrap()
            .unwrap();
        assert_eq!(syncer.behind(), 0);
        syncer.sync().unwrap();
        // Where the files are gone, the sync fails and says which file.
        s.commit(&[generation(4)]).unwrap();
        std::fs::remove_file(dir.0.join(DB_FILE)).unwrap();
        std::fs::remove_file(dir.0.join(format!("{DB_FILE}-wal"))).unwrap();
        let err = syncer.sync().unwrap_err();
        assert!(err.to_string().contains(DB_FILE), "{err}");
        assert_eq!(syncer.behind(), 1);
    }

    #[test]
    fn failed_batch_leaves_the_store_byte_identical() {
        let dir = TempDir::new("atomic");
        let mut s = Store::open_dir(&dir.0).unwrap();
        s.commit(&[Edit::PutGroup(group(
            "sg-00000001",
            "default",
            vec![group_rule("default")],
        ))])
        .unwrap();
        let before = s.dump().unwrap();
        // The first edit is fine, the second violates uniqueness: nothing may stay.
        let err = s
            .commit(&[
                Edit::SetCounter {
                    name: "generation".into(),
                    value: 9,
                },
                Edit::PutGroup(group("sg-00000002", "web", vec![])),
                Edit::AddRules {
                    group_id: "sg-00000001".into(),
                    rules: vec![group_rule("default")],
                },
            ])
            .unwrap_err();
        assert!(err.to_string().contains("sg-00000001"), "{err}");
        assert_eq!(s.dump().unwrap(), before);
    }

    #[test]
    fn schema_enforces_uniqueness() {
        let dir = TempDir::new("unique");
        let mut s = Store::open_dir(&dir.0).unwrap();
        s.commit(&[Edit::PutGroup(group(
            "sg-00000001",
            "default",
            vec![group_rule("default")],
        ))])
        .unwrap();
        // Same (owner, name), other id.
        assert!(
            s.commit(&[Edit::PutGroup(group("sg-00000002", "default", vec![]))])
                .is_err()
        );
        // Same rule twice.
        let r = cidr_rule(Proto::Tcp, Ports::Range(80, 80), "0.0.0.0/0");
        assert!(
            s.commit(&[Edit::AddRules {
                group_id: "sg-00000001".into(),
                rules: vec![r.clone(), r.clone()]
            }])
            .is_err()
        );
        // Same ports under another protocol is another rule.
        s.commit(&[Edit::AddRules {
            group_id: "sg-00000001".into(),
            rules: vec![
                r.clone(),
                cidr_rule(Proto::Udp, Ports::Range(80, 80), "0.0.0.0/0"),
            ],
        }])
        .unwrap();
        // Duplicate IP / MAC of instances.
        s.commit(&[Edit::AddInstance(instance(
            "i-00000001",
            [172, 31, 0, 2],
            1,
            &["default"],
        ))])
        .unwrap();
        assert!(
            s.commit(&[Edit::AddInstance(instance(
                "i-00000002",
                [172, 31, 0, 2],
                2,
                &["default"]
            ))])
            .is_err()
        );
        assert!(
            s.commit(&[Edit::AddInstance(instance(
                "i-00000003",
                [172, 31, 0, 3],
                1,
                &["default"]
            ))])
            .is_err()
        );
        // Revoking a rule that is not there fails.
        assert!(
            s.commit(&[Edit::RemoveRules {
                group_id: "sg-00000001".into(),
                rules: vec![cidr_rule(Proto::Tcp, Ports::Range(81, 81), "0.0.0.0/0")],
            }])
            .is_err()
        );
        s.commit(&[Edit::RemoveRules {
            group_id: "sg-00000001".into(),
            rules: vec![r],
        }])
        .unwrap();
        assert_eq!(s.load().unwrap().groups[0].rules.len(), 2);
    }

    #[test]
    fn schema_enforces_foreign_keys() {
        let dir = TempDir::new("fk");
        let mut s = Store::open_dir(&dir.0).unwrap();
        s.commit(&[
            Edit::PutGroup(group("sg-00000001", "default", vec![group_rule("default")])),
            Edit::PutGroup(group("sg-00000002", "web", vec![])),
            Edit::PutGroup(group("sg-00000003", "db", vec![group_rule("web")])),
        ])
        .unwrap();
        // A rule naming a group that does not exist.
        assert!(
            s.commit(&[Edit::AddRules {
                group_id: "sg-00000002".into(),
                rules: vec![group_rule("nosuch")]
            }])
            .is_err()
        );
        // Rules of a group that does not exist.
        assert!(
            s.commit(&[Edit::AddRules {
                group_id: "sg-0000ffff".into(),
                rules: vec![group_rule("web")]
            }])
            .is_err()
        );
        // Deleting a group another group's rule names.
        assert!(
            s.commit(&[Edit::DeleteGroup {
                id: "sg-00000002".into()
            }])
            .is_err()
        );
        // An instance in an unknown group.
        assert!(
            s.commit(&[Edit::AddInstance(instance(
                "i-00000001",
                [172, 31, 0, 2],
                1,
                &["nosuch"]
            ))])
            .is_err()
        );
        // Deleting a group an instance is in.
        s.commit(&[Edit::AddInstance(instance(
            "i-00000001",
            [172, 31, 0, 2],
            1,
            &["db"],
        ))])
        .unwrap();
        assert!(
            s.commit(&[Edit::DeleteGroup {
                id: "sg-00000003".into()
            }])
            .is_err()
        );
        // A group referenced only by its own rules may go; its rules go with it.
        s.commit(&[Edit::PutGroup(group(
            "sg-00000004",
            "self",
            vec![group_rule("self")],
        ))])
        .unwrap();
        s.commit(&[Edit::DeleteGroup {
            id: "sg-00000004".into(),
        }])
        .unwrap();
        // Once the instance is gone, db can go, and then web.
        s.commit(&[Edit::RemoveInstance {
            id: "i-00000001".into(),
        }])
        .unwrap();
        s.commit(&[
            Edit::DeleteGroup {
                id: "sg-00000003".into(),
            },
            Edit::DeleteGroup {
                id: "sg-00000002".into(),
            },
        ])
        .unwrap();
        let l = s.load().unwrap();
        assert_eq!(
            l.groups.iter().map(|g| g.name.as_str()).collect::<Vec<_>>(),
            ["default"]
        );
        assert!(l.instances.is_empty());
        assert!(
            !s.dump().unwrap().contains("instance_groups|"),
            "memberships cascade with the instance"
        );
    }

    #[test]
    fn migrations_run_once_and_newer_schema_is_refused() {
        let dir = TempDir::new("migrate");
        std::fs::create_dir_all(&dir.0).unwrap();
        let path = dir.0.join(DB_FILE);
        {
            let s = Store::open(&path).unwrap();
            assert_eq!(s.schema_version().unwrap(), MIGRATIONS.len() as i64);
        }
        // Reopening does not re-run v1 (it would fail: tables exist).
        Store::open(&path).unwrap();
        {
            let c = Connection::open(&path).unwrap();
            c.pragma_update(None, "user_version", 99).unwrap();
        }
        match Store::open(&path) {
            Err(StoreError::TooNew { found: 99, .. }) => {}
            other => panic!("expected TooNew, got {:?}", other.map(|_| ())),
        }
    }

    fn image(ami: &str) -> ImageRecord {
        ImageRecord {
            ami: ami.into(),
            kernel: "/srv/img/vmlinuz".into(),
            initrd: "/srv/img/initrd.img".into(),
            disk: None,
            memory_mb: 256,
            append: "console=ttyS0 quiet".into(),
            registered_at: 1_700_000_000,
        }
    }

    /// A v3 store (PLACE text) upgrades to attachment columns: each place text
    /// becomes the attachment it named, and the upgraded rows keep their PLACE.
    #[test]
    fn a_v3_store_upgrades_its_place_texts_to_attachments() {
        let dir = TempDir::new("upgrade-v3");
        std::fs::create_dir_all(&dir.0).unwrap();
        let path = dir.0.join(DB_FILE);
        let cases = [
            ("i-0000000a", "netns:i-0000000a", Attachment::Netns),
            (
                "i-0000000b",
                "port:tap0",
                Attachment::Iface {
                    ifname: "tap0".into(),
                    netns: None,
                },
            ),
            (
                "i-0000000c",
                "port:vs0@lab-1",
                Attachment::Iface {
                    ifname: "vs0".into(),
                    netns: Some("lab-1".into()),
                },
            ),
            ("i-0000000d", "qemu:4242", Attachment::Qemu { pid: 4242 }),
            ("i-0000000e", "qemu:0", Attachment::Qemu { pid: 0 }),
            (
                "i-0000000f",
                "qemu:4294967295",
                Attachment::Qemu { pid: u32::MAX },
            ),
            // Not a u32 PID: the old reader took these for namespace instances.
            ("i-00000010", "qemu:4294967296", Attachment::Netns),
            ("i-00000011", "qemu:12x", Attachment::Netns),
            ("i-00000012", "qemu:", Attachment::Netns),
        ];
        {
            let c = Connection::open(&path).unwrap();
            for m in &MIGRATIONS[..3] {
                c.execute_batch(m).unwrap();
            }
            c.pragma_update(None, "user_version", 3).unwrap();
            for (k, (id, place, _)) in cases.iter().enumerate() {
                c.execute(
                    "INSERT INTO instances (id, owner, mac, ip, ami, reservation, launch_index, place, launched_at) \
                     VALUES (?1, ?2, ?3, ?4, 'ami-eca54085', 'r-00000001', ?5, ?6, 7)",
                    params![
                        id,
                        owner().0,
                        format!("02:00:00:00:00:{k:02x}"),
                        format!("10.0.0.{}", 10 + k),
                        k as i64,
                        place
                    ],
                )
                .unwrap();
            }
        }
        let mut s = Store::open(&path).unwrap();
        assert_eq!(s.schema_version().unwrap(), MIGRATIONS.len() as i64);
        let l = s.load().unwrap();
        let got: Vec<(&str, &Attachment)> = l
            .instances
            .iter()
            .map(|r| (r.instance.id.as_str(), &r.attachment))
            .collect();
        let want: Vec<(&str, &Attachment)> = cases.iter().map(|(id, _, a)| (*id, a)).collect();
        assert_eq!(got, want);
        for (r, (_, place, _)) in l.instances.iter().zip(&cases).take(6) {
            assert_eq!(r.attachment.place(&r.instance.id), *place);
        }
        // The upgraded rows are written and read back like new ones.
        let mut moved = l.instances[1].clone();
        s.commit(&[Edit::RemoveInstance {
            id: moved.instance.id.clone(),
        }])
        .unwrap();
        moved.attachment = Attachment::Qemu { pid: 77 };
        s.commit(&[Edit::AddInstance(moved.clone())]).unwrap();
        drop(s);
        let l = Store::open(&path).unwrap().load().unwrap();
        assert_eq!(l.instances[1], moved);
    }

    #[test]
    fn a_v1_store_upgrades_to_v2_keeping_its_rows_and_gains_images() {
        let dir = TempDir::new("upgrade");
        std::fs::create_dir_all(&dir.0).unwrap();
        let path = dir.0.join(DB_FILE);
        {
            // A store as the v1 binary left it, with a group and an instance.
            let c = Connection::open(&path).unwrap();
            c.execute_batch(MIGRATIONS[0]).unwrap();
            c.pragma_update(None, "user_version", 1).unwrap();
            c.execute(
                "INSERT INTO groups (id, owner, name, description) VALUES ('sg-00000001', ?1, 'web', 'Web')",
                [&owner().0],
            )
            .unwrap();
            c.execute(
                "INSERT INTO instances (id, owner, mac, ip, ami, reservation, launch_index, place, launched_at) \
                 VALUES ('i-0000abcd', ?1, '02:00:00:00:00:01', '10.0.0.2', 'ami-eca54085', 'r-00000001', 0, 'qemu:42', 7)",
                [&owner().0],
            )
            .unwrap();
        }
        let mut s = Store::open(&path).unwrap();
        assert_eq!(s.schema_version().unwrap(), MIGRATIONS.len() as i64);
        let l = s.load().unwrap();
        assert_eq!(l.groups.len(), 1);
        assert_eq!(l.instances[0].attachment, Attachment::Qemu { pid: 42 });
        assert!(l.images.is_empty());
        let mut with_disk = image("ami-0000beef");
        with_disk.disk = Some("/srv/img/disk.raw".into());
        s.commit(&[
            Edit::PutImage(image("ami-1234abcd")),
            Edit::PutImage(with_disk.clone()),
        ])
        .unwrap();
        drop(s);
        let s = Store::open(&path).unwrap();
        assert_eq!(
            s.load().unwrap().images,
            vec![with_disk, image("ami-1234abcd")],
            "sorted by AMI, every field kept"
        );
    }

    fn access_key(id: &str, owner: &str) -> AccessKeyRecord {
        AccessKeyRecord {
            key_id: id.into(),
            owner: Owner(owner.into()),
            secret: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".into(),
            created_at: 1_700_000_000,
        }
    }

    /// v8: a v7 store's rules survive the rebuild of their table with their
    /// order, `seq`, `sgr-` ids and descriptions; `icmpv6` is then accepted.
    #[test]
    fn a_v7_store_keeps_its_rules_and_their_ids_and_takes_icmpv6() {
        let dir = TempDir::new("v8");
        std::fs::create_dir_all(&dir.0).unwrap();
        let path = dir.0.join(DB_FILE);
        let before: Vec<(i64, String, String, i64, String)>;
        let q = "SELECT r.seq, r.proto, coalesce(r.src_cidr, r.src_group), r.egress, m.rule_id || m.description \
                 FROM rules r JOIN rule_meta m ON m.rule_seq = r.seq ORDER BY r.seq";
        let rows = |c: &Connection| -> Vec<(i64, String, String, i64, String)> {
            let mut st = c.prepare(q).unwrap();
            st.query_map([], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
        };
        {
            let c = Connection::open(&path).unwrap();
            for m in &MIGRATIONS[..7] {
                c.execute_batch(m).unwrap();
            }
            c.pragma_update(None, "user_version", 7).unwrap();
            c.execute_batch(
                "INSERT INTO groups (id, owner, name, description) VALUES ('sg-00000001', '111122223333', 'web', 'd');
                 INSERT INTO rules (seq, group_id, proto, from_port, to_port, src_cidr) VALUES (5, 'sg-00000001', 'tcp', 22, 22, '10.0.0.0/8');
                 INSERT INTO rules (seq, group_id, proto, from_port, to_port, src_owner, src_group) VALUES (9, 'sg-00000001', 'udp', 53, 53, '111122223333', 'web');
                 INSERT INTO rules (seq, group_id, proto, from_port, to_port, src_cidr, egress) VALUES (12, 'sg-00000001', 'all', -1, -1, '0.0.0.0/0', 1);
                 INSERT INTO rule_meta (rule_seq, rule_id, description) VALUES (5, 'sgr-0123456789abcdef0', 'ssh'), (9, 'sgr-0123456789abcdef1', ''), (12, 'sgr-0123456789abcdef2', 'out');",
            )
            .unwrap();
            before = rows(&c);
            assert_eq!(before.len(), 3);
            assert!(
                c.execute(
                    "INSERT INTO rules (group_id, proto, from_port, to_port, src_cidr) VALUES ('sg-00000001', 'icmpv6', -1, -1, '::/0')",
                    [],
                )
                .is_err()
            );
        }
        let s = Store::open(&path).unwrap();
        assert_eq!(s.schema_version().unwrap(), MIGRATIONS.len() as i64);
        drop(s);
        let c = Connection::open(&path).unwrap();
        // v9 appended the IPv6 default egress rule (v10 gave it an id).
        let after = rows(&c);
        assert_eq!(after[..before.len()], before[..]);
        assert_eq!(after.len(), before.len() + 1);
        c.execute(
            "INSERT INTO rules (group_id, proto, from_port, to_port, src_cidr) VALUES ('sg-00000001', 'icmpv6', 128, -1, '::/0')",
            [],
        )
        .unwrap();
        // Deleting a rule still takes its facts with it.
        c.execute("PRAGMA foreign_keys = ON", []).unwrap();
        c.execute("DELETE FROM rules WHERE seq = 5", []).unwrap();
        let n: i64 = c
            .query_row("SELECT count(*) FROM rule_meta", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 3);
        let fk: i64 = c
            .query_row("SELECT count(*) FROM pragma_foreign_key_check", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(fk, 0);
    }

    /// v9: every group holding the IPv4 default egress rule gets the IPv6
    /// one (`all` to `::/0`) after its egress rules; a group whose IPv4
    /// default was revoked gets nothing; ingress rules are untouched.
    #[test]
    fn a_v8_store_gives_the_ipv6_default_egress_to_groups_with_the_ipv4_one() {
        let dir = TempDir::new("v9");
        std::fs::create_dir_all(&dir.0).unwrap();
        let path = dir.0.join(DB_FILE);
        {
            let c = Connection::open(&path).unwrap();
            for m in &MIGRATIONS[..8] {
                c.execute_batch(m).unwrap();
            }
            c.pragma_update(None, "user_version", 8).unwrap();
            for (id, name) in [
                ("sg-00000001", "default"),
                ("sg-00000002", "web"),
                ("sg-00000003", "closed"),
            ] {
                c.execute(
                    "INSERT INTO groups (id, owner, name, description) VALUES (?1, ?2, ?3, 'd')",
                    params![id, owner().0, name],
                )
                .unwrap();
            }
            c.execute_batch(
                "INSERT INTO rules (group_id, proto, from_port, to_port, src_cidr, egress) VALUES
                    ('sg-00000001', 'all', -1, -1, '0.0.0.0/0', 1),
                    ('sg-00000002', 'all', -1, -1, '0.0.0.0/0', 1),
                    ('sg-00000002', 'tcp', 443, 443, '10.0.0.0/8', 1),
                    ('sg-00000002', 'all', -1, -1, '0.0.0.0/0', 0),
                    ('sg-00000003', 'tcp', 443, 443, '10.0.0.0/8', 1);",
            )
            .unwrap();
        }
        let s = Store::open(&path).unwrap();
        assert_eq!(s.schema_version().unwrap(), MIGRATIONS.len() as i64);
        let l = s.load().unwrap();
        let tls = cidr_rule(Proto::Tcp, Ports::Range(443, 443), "10.0.0.0/8");
        let (v4, v6) = (
            filter::model::default_egress_rule(),
            filter::model::default_egress_rule6(),
        );
        let by_name = |n: &str| l.groups.iter().find(|g| g.name == n).unwrap().clone();
        assert_eq!(by_name("default").egress, filter::model::default_egress());
        assert_eq!(by_name("web").egress, vec![v4.clone(), tls.clone(), v6]);
        assert_eq!(by_name("web").rules, vec![v4], "ingress untouched");
        assert_eq!(by_name("closed").egress, vec![tls], "revoked stays revoked");
        // Re-running the statement adds nothing (the rule is unique anyway).
        let c = Connection::open(&path).unwrap();
        c.execute_batch(MIGRATIONS[8]).unwrap();
        let n: i64 = c
            .query_row(
                "SELECT count(*) FROM rules WHERE src_cidr = '::/0'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(n, 2);
    }

    /// v10: every egress rule (and any rule without one) gets an `sgr-` id;
    /// ids already given stay; an ingress and an egress rule alike are two
    /// rules with their own ids and descriptions.
    #[test]
    fn a_v9_store_gives_egress_rules_ids() {
        let dir = TempDir::new("v10");
        std::fs::create_dir_all(&dir.0).unwrap();
        let path = dir.0.join(DB_FILE);
        {
            let c = Connection::open(&path).unwrap();
            for m in &MIGRATIONS[..9] {
                c.execute_batch(m).unwrap();
            }
            c.pragma_update(None, "user_version", 9).unwrap();
            c.execute_batch(
                "INSERT INTO groups (id, owner, name, description) VALUES ('sg-00000001', '111122223333', 'web', 'd');
                 INSERT INTO rules (seq, group_id, proto, from_port, to_port, src_cidr, egress) VALUES
                    (1, 'sg-00000001', 'all', -1, -1, '0.0.0.0/0', 0),
                    (2, 'sg-00000001', 'all', -1, -1, '0.0.0.0/0', 1),
                    (3, 'sg-00000001', 'all', -1, -1, '::/0', 1);
                 INSERT INTO rule_meta (rule_seq, rule_id, description) VALUES (1, 'sgr-0123456789abcdef0', 'in');",
            )
            .unwrap();
        }
        let mut s = Store::open(&path).unwrap();
        assert_eq!(s.schema_version().unwrap(), MIGRATIONS.len() as i64);
        let l = s.load().unwrap();
        let all4 = filter::model::default_egress_rule();
        let got: Vec<(bool, &Rule, &str, &str)> = l
            .rule_meta
            .iter()
            .map(|m| {
                assert_eq!(m.group_id, "sg-00000001");
                (
                    m.egress,
                    &m.rule,
                    m.rule_id.as_str(),
                    m.description.as_str(),
                )
            })
            .collect();
        assert_eq!(got.len(), 3, "{got:?}");
        assert_eq!(got[0], (false, &all4, "sgr-0123456789abcdef0", "in"));
        assert_eq!((got[1].0, got[1].1, got[1].3), (true, &all4, ""));
        assert_eq!(
            (got[2].0, got[2].1, got[2].3),
            (true, &filter::model::default_egress_rule6(), "")
        );
        for (_, _, id, _) in &got[1..] {
            assert!(id.starts_with("sgr-") && id.len() == 21, "{id}");
        }
        assert_ne!(got[1].2, got[2].2);
        // The egress rule's facts are its own, not the alike ingress rule's.
        let out = RuleMetaRecord {
            description: "out".into(),
            ..l.rule_meta[1].clone()
        };
        s.commit(&[Edit::PutRuleMeta(out.clone())]).unwrap();
        let l2 = s.load().unwrap();
        assert_eq!(l2.rule_meta[0], l.rule_meta[0]);
        assert_eq!(l2.rule_meta[1], out);
        // Re-running the statement adds nothing.
        let c = Connection::open(&path).unwrap();
        c.execute_batch(MIGRATIONS[9]).unwrap();
        let n: i64 = c
            .query_row("SELECT count(*) FROM rule_meta", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 3);
    }

    /// v5: a v4 store's rules get `sgr-` ids (empty descriptions); tags and
    /// rule facts are stored, and a rule's facts go with the rule.
    #[test]
    fn a_v6_store_gives_every_group_the_default_egress_rule() {
        let dir = TempDir::new("v7");
        std::fs::create_dir_all(&dir.0).unwrap();
        let path = dir.0.join(DB_FILE);
        {
            let c = Connection::open(&path).unwrap();
            for m in &MIGRATIONS[..6] {
                c.execute_batch(m).unwrap();
            }
            c.pragma_update(None, "user_version", 6).unwrap();
            for (id, name) in [("sg-00000001", "default"), ("sg-00000002", "web")] {
                c.execute(
                    "INSERT INTO groups (id, owner, name, description) VALUES (?1, ?2, ?3, 'd')",
                    params![id, owner().0, name],
                )
                .unwrap();
            }
            c.execute(
                "INSERT INTO rules (group_id, proto, from_port, to_port, src_cidr) VALUES ('sg-00000002', 'all', -1, -1, '0.0.0.0/0')",
                [],
            )
            .unwrap();
        }
        let mut s = Store::open(&path).unwrap();
        let l = s.load().unwrap();
        assert_eq!(l.groups.len(), 2);
        for g in &l.groups {
            assert_eq!(g.egress, filter::model::default_egress(), "{}", g.name);
        }
        // The ingress rule of the same form stays an ingress rule.
        assert_eq!(
            l.groups[1].rules,
            vec![filter::model::default_egress_rule()]
        );
        assert!(l.groups[0].rules.is_empty());
        // Egress edits are stored apart from ingress ones.
        let web = "sg-00000002".to_string();
        s.commit(&[
            Edit::RemoveEgressRules {
                group_id: web.clone(),
                rules: filter::model::default_egress(),
            },
            Edit::AddEgressRules {
                group_id: web.clone(),
                rules: vec![cidr_rule(Proto::Tcp, Ports::Range(443, 443), "10.0.0.0/8")],
            },
        ])
        .unwrap();
        let l = s.load().unwrap();
        assert_eq!(
            l.groups[1].rules,
            vec![filter::model::default_egress_rule()]
        );
        assert_eq!(
            l.groups[1].egress,
            vec![cidr_rule(Proto::Tcp, Ports::Range(443, 443), "10.0.0.0/8")]
        );
        assert!(
            s.commit(&[Edit::RemoveEgressRules {
                group_id: web,
                rules: filter::model::default_egress(),
            }])
            .is_err(),
            "revoking an absent egress rule fails"
        );
    }

    #[test]
    fn a_v4_store_gains_rule_ids_tags_and_token_instances() {
        let dir = TempDir::new("v5");
        std::fs::create_dir_all(&dir.0).unwrap();
        let path = dir.0.join(DB_FILE);
        {
            let c = Connection::open(&path).unwrap();
            for m in &MIGRATIONS[..4] {
                c.execute_batch(m).unwrap();
            }
            c.pragma_update(None, "user_version", 4).unwrap();
            c.execute(
                "INSERT INTO groups (id, owner, name, description) VALUES ('sg-00000001', ?1, 'web', 'Web')",
                [&owner().0],
            )
            .unwrap();
            c.execute(
                "INSERT INTO rules (group_id, proto, from_port, to_port, src_cidr) VALUES ('sg-00000001', 'tcp', 22, 22, '10.0.0.0/8')",
                [],
            )
            .unwrap();
        }
        let mut s = Store::open(&path).unwrap();
        let l = s.load().unwrap();
        // The ingress rule, and the default egress rules v7 and v9 added.
        assert_eq!(l.rule_meta.len(), 3);
        assert_eq!(
            l.rule_meta.iter().map(|m| m.egress).collect::<Vec<_>>(),
            [false, true, true]
        );
        let m = &l.rule_meta[0];
        assert!(
            m.rule_id.starts_with("sgr-") && m.rule_id.len() == 21,
            "{m:?}"
        );
        assert_eq!(
            (m.group_id.as_str(), m.description.as_str()),
            ("sg-00000001", "")
        );
        assert_eq!(m.rule, l.groups[0].rules[0]);
        let described = RuleMetaRecord {
            description: "ssh".into(),
            ..m.clone()
        };
        s.commit(&[
            Edit::PutRuleMeta(described.clone()),
            Edit::PutTag(TagRecord {
                resource_id: "sg-00000001".into(),
                key: "env".into(),
                value: "prod".into(),
            }),
        ])
        .unwrap();
        let l = s.load().unwrap();
        assert_eq!(l.rule_meta[0], described);
        assert_eq!(l.tags.len(), 1);
        // A tag of no kind sgswitch knows is refused, the batch rolled back.
        assert!(
            s.commit(&[Edit::PutTag(TagRecord {
                resource_id: "vol-1".into(),
                key: "k".into(),
                value: String::new(),
            })])
            .is_err()
        );
        s.commit(&[Edit::RemoveRules {
            group_id: "sg-00000001".into(),
            rules: l.groups[0].rules.clone(),
        }])
        .unwrap();
        assert!(
            s.load().unwrap().rule_meta.iter().all(|m| m.egress),
            "gone with its rule"
        );
    }

    #[test]
    fn a_v2_store_gains_access_keys_and_client_tokens_and_the_file_is_0600() {
        use std::os::unix::fs::PermissionsExt;
        let dir = TempDir::new("v3");
        std::fs::create_dir_all(&dir.0).unwrap();
        let path = dir.0.join(DB_FILE);
        {
            let c = Connection::open(&path).unwrap();
            c.execute_batch(MIGRATIONS[0]).unwrap();
            c.execute_batch(MIGRATIONS[1]).unwrap();
            c.pragma_update(None, "user_version", 2).unwrap();
        }
        // An old store with a world-readable mode is made private on open.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let mut s = Store::open(&path).unwrap();
        assert_eq!(s.schema_version().unwrap(), MIGRATIONS.len() as i64);
        let tok = ClientTokenRecord {
            owner: owner(),
            token: "tok-1".into(),
            reservation: "r-0000abcd".into(),
            fingerprint: "ami-1|1|1|default".into(),
            created_at: 5,
            instances: Vec::new(),
        };
        s.commit(&[
            Edit::PutAccessKey(access_key("AKIAZZZZZZZZZZZZZZZZ", "111122223333")),
            Edit::PutAccessKey(access_key("AKIAAAAAAAAAAAAAAAAA", "444455556666")),
            Edit::PutClientToken(tok.clone()),
        ])
        .unwrap();
        // A duplicate key id or token is refused and the batch rolled back.
        let before = s.dump().unwrap();
        assert!(
            s.commit(&[Edit::PutAccessKey(access_key(
                "AKIAAAAAAAAAAAAAAAAA",
                "111122223333"
            ))])
            .is_err()
        );
        assert!(s.commit(&[Edit::PutClientToken(tok.clone())]).is_err());
        // A key shorter than 16 characters violates the schema.
        assert!(
            s.commit(&[Edit::PutAccessKey(access_key("AKIA", "111122223333"))])
                .is_err()
        );
        assert_eq!(s.dump().unwrap(), before);
        drop(s);
        let s = Store::open(&path).unwrap();
        let l = s.load().unwrap();
        let ids: Vec<&str> = l.access_keys.iter().map(|k| k.key_id.as_str()).collect();
        assert_eq!(ids, ["AKIAAAAAAAAAAAAAAAAA", "AKIAZZZZZZZZZZZZZZZZ"]);
        assert_eq!(l.access_keys[0].owner.0, "444455556666");
        assert_eq!(l.client_tokens, vec![tok]);
        for suffix in ["", "-wal", "-shm"] {
            let mut p = path.as_os_str().to_owned();
            p.push(suffix);
            if let Ok(m) = std::fs::metadata(&p) {
                assert_eq!(m.permissions().mode() & 0o777, 0o600, "{p:?}");
            }
        }
    }

    #[test]
    fn images_are_unique_checked_and_deleted_exactly_once() {
        let dir = TempDir::new("images");
        let mut s = Store::open_dir(&dir.0).unwrap();
        s.commit(&[Edit::PutImage(image("ami-1234abcd"))]).unwrap();
        let before = s.dump().unwrap();
        assert!(before.contains("ami-1234abcd"), "{before}");
        // Duplicate AMI, bad AMI, relative path, absurd memory: refused by SQLite.
        let mut relative = image("ami-0000beef");
        relative.kernel = "vmlinuz".into();
        let mut tiny = image("ami-0000beef");
        tiny.memory_mb = 1;
        for bad in [image("ami-1234abcd"), image("ami-XYZ"), relative, tiny] {
            let ami = bad.ami.clone();
            assert!(s.commit(&[Edit::PutImage(bad)]).is_err(), "{ami}");
            assert_eq!(s.dump().unwrap(), before);
        }
        s.commit(&[Edit::DeleteImage {
            ami: "ami-1234abcd".into(),
        }])
        .unwrap();
        assert!(s.load().unwrap().images.is_empty());
        assert!(
            s.commit(&[Edit::DeleteImage {
                ami: "ami-1234abcd".into()
            }])
            .is_err(),
            "deleting a missing image fails"
        );
    }

    #[test]
    fn store_runs_wal_with_normal_sync_and_foreign_keys() {
        let dir = TempDir::new("pragmas");
        let s = Store::open_dir(&dir.0).unwrap();
        let mode: String = s
            .conn
            .pragma_query_value(None, "journal_mode", |r| r.get(0))
            .unwrap();
        let sync: i64 = s
            .conn
            .pragma_query_value(None, "synchronous", |r| r.get(0))
            .unwrap();
        let fk: i64 = s
            .conn
            .pragma_query_value(None, "foreign_keys", |r| r.get(0))
            .unwrap();
        // synchronous=NORMAL (1): the log's fsync is the `Syncer`'s.
        assert_eq!((mode.as_str(), sync, fk), ("wal", 1, 1));
    }

    #[test]
    fn mac_text_round_trips_and_rejects_junk() {
        let mac = [0x02, 0xab, 0x00, 0x10, 0xff, 0x01];
        assert_eq!(format_mac(&mac), "02:ab:00:10:ff:01");
        assert_eq!(parse_mac("02:ab:00:10:ff:01"), Some(mac));
        for bad in [
            "",
            "02:ab:00:10:ff",
            "02:ab:00:10:ff:01:02",
            "2:ab:00:10:ff:01",
            "zz:ab:00:10:ff:01",
        ] {
            assert_eq!(parse_mac(bad), None, "{bad}");
        }
    }
}
