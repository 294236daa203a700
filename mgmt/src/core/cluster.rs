//! The core in cluster mode (docs/cluster.md): etcd is the source of truth,
//! the local model a copy that only the watch changes.
//!
//! Contract:
//! * An edit runs the same validation as on one host, on the local copy of
//!   the lab; its recorded changes become one etcd transaction (the final
//!   value of every group and instance it touched, images, keys, tokens and
//!   counters) guarded by the lab's edit counter ([`node::edit_guard`]): it
//!   commits only if no other edit committed since the revision this host
//!   last applied, so every edit was validated on the newest state and no
//!   invariant (rule limit, unique names and addresses, InUse) can break
//!   between hosts. The local changes are undone right after the
//!   transaction is built; the model changes when the watch delivers the
//!   transaction, exactly as on every other host. The request is answered
//!   once this host applied it (its snapshot is published).
//! * A transaction that loses the compare makes this host catch up to the
//!   winner's revision and run the whole command again on the new state
//!   (where it may now fail with the error one host would give); at most
//!   [`MAX_ROUNDS`] rounds. etcd unreachable: `ServiceUnavailable` at once,
//!   nothing changed anywhere.
//! * Applying the watch ([`Core::poll_cluster`]): each event's keys are
//!   reconciled one by one (instances removed, groups put, instances put,
//!   groups removed, in that order), the model verified, the recorded
//!   changes compiled incrementally and published with the next generation,
//!   then written to the SQLite cache with the revision; the host then
//!   acknowledges the revision. An instance of this host that appears
//!   without being launched here (a restart) is re-attached; one that
//!   disappears is torn down here.
//! * Identities: an instance's group-set identity is the one of an existing
//!   instance with the same owner and groups, else the lowest unused number
//!   from 256 on, chosen in the launching transaction (the edit guard makes
//!   the choice unique).
//! * `--wait`: after a committed edit at revision E, wait until every live
//!   host acknowledged E or later (`acks/`, read by this client only), at
//!   most [`WAIT_LIMIT`]; a host lost meanwhile is not waited for.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use filter::model::{Change, Group};

use super::*;
use crate::api::HostView;
use crate::cluster::etcd::{EtcdError, Op, Range, Txn};
use crate::cluster::keys::{self, AckRecord, Entry, GroupRecord, HostRecord, InstanceValue};
use crate::cluster::mirror::Mirror;
use crate::cluster::node::{self, Event, Node};

/// Rounds of one command against concurrent edits before giving up.
pub const MAX_ROUNDS: usize = 16;
/// Longest wait for this host's own watch to deliver a committed edit.
const CATCH_UP: Duration = Duration::from_secs(5);
/// Longest `--wait`.
pub const WAIT_LIMIT: Duration = Duration::from_secs(10);
/// Counter of the SQLite cache: the etcd revision it holds.
pub const COUNTER_ETCD_REVISION: &str = "etcd_revision";

/// What became of an edit's transaction.
struct TxnOutcome {
    succeeded: bool,
    revision: i64,
}

/// The core's side of cluster mode.
pub struct Link {
    node: Node,
    /// The lab as last applied (None until the first full read).
    mirror: Option<Mirror>,
    /// Instances this host is launching right now (their PUT must not
    /// re-attach them).
    launching: BTreeSet<String>,
    /// Set when the lab refused this daemon (another subnet).
    refused: Option<String>,
    /// The revision of the last edit this host committed (for `--wait`).
    committed: i64,
    /// Set when an edit's transaction lost to a concurrent one.
    conflict: bool,
}

impl Link {
    pub fn new(node: Node) -> Link {
        Link {
            node,
            mirror: None,
            launching: BTreeSet::new(),
            refused: None,
            committed: 0,
            conflict: false,
        }
    }

    fn host(&self) -> &str {
        &self.node.config().host
    }
}

/// Which model keys an event touched.
#[derive(Default)]
struct Touched {
    groups: BTreeSet<String>,
    instances: BTreeSet<String>,
    /// Images, access keys or client tokens.
    others: bool,
    /// Host registrations (the overlay's directory).
    hosts: bool,
}

impl Touched {
    fn key(&mut self, key: &str) {
        let Some(rest) = key.strip_prefix(keys::MODEL) else {
            return;
        };
        let mut parts = rest.splitn(2, '/');
        match (parts.next(), parts.next()) {
            (Some("groups"), Some(id)) => {
                if let Some(id) = keys::unesc(id) {
                    self.groups.insert(id);
                }
            }
            (Some("instances"), Some(id)) => {
                if let Some(id) = keys::unesc(id) {
                    self.instances.insert(id);
                }
            }
            (Some("images" | "access-keys" | "client-tokens"), _) => self.others = true,
            (Some("hosts"), _) => self.hosts = true,
            _ => {}
        }
    }
}

fn unavailable(what: impl std::fmt::Display) -> ApiError {
    ApiError::new(ErrorCode::ServiceUnavailable, what.to_string())
}

impl Core {
    /// Cluster mode: follow the lab through `node`. Waits up to `first` for
    /// the first full read; without one, a core with no cached lab state is
    /// an error (nothing to enforce, nothing to edit), one with a cache goes
    /// on enforcing it and catches up when etcd answers.
    pub fn join_cluster(&mut self, node: Node, first: Duration) -> Result<(), ApiError> {
        let endpoints = node.config().endpoints.clone();
        self.cluster = Some(Link::new(node));
        let deadline = Instant::now() + first;
        while Instant::now() < deadline {
            let Some(link) = &self.cluster else { break };
            if let Some(e) = link.node.event(Duration::from_millis(50)) {
                self.apply_event(e);
            }
            let Some(link) = &self.cluster else { break };
            if let Some(why) = &link.refused {
                return Err(unavailable(format!("etcd at {endpoints}: {why}")));
            }
            if link.mirror.is_some() {
                return Ok(());
            }
        }
        if self.cached_revision() > 0 {
            // Enforce what was last known, cross-host traffic included.
            self.publish_directory();
            tracing::warn!(
                "etcd at {endpoints} does not answer; enforcing the cached state of revision {} \
                 until it does",
                self.cached_revision()
            );
            Ok(())
        } else {
            Err(unavailable(format!(
                "etcd at {endpoints} unreachable (no answer within {} s) and no cached lab state \
                 in the state directory",
                first.as_secs()
            )))
        }
    }

    /// The etcd revision this host has applied and published (0 before
    /// the first read; always 0 on a single host).
    pub fn cluster_revision(&self) -> i64 {
        self.cluster
            .as_ref()
            .and_then(|l| l.mirror.as_ref())
            .map_or(0, Mirror::revision)
    }

    /// The revision of the last edit this host committed (0: none yet).
    pub fn last_commit_revision(&self) -> i64 {
        self.cluster.as_ref().map_or(0, |l| l.committed)
    }

    /// Whether this core is a host of a cluster.
    pub fn is_clustered(&self) -> bool {
        self.cluster.is_some()
    }

    fn cached_revision(&self) -> i64 {
        self.cache_revision
    }

    /// Apply every event the follower has handed over (the management thread
    /// calls this when woken and between requests).
    pub fn poll_cluster(&mut self) {
        loop {
            let Some(link) = &self.cluster else { return };
            let Some(e) = link.node.try_event() else {
                return;
            };
            self.apply_event(e);
        }
    }

    /// The host name of an instance record, if it runs on another host.
    pub(super) fn remote_host<'a>(&self, r: &'a InstanceRecord) -> Option<&'a str> {
        let link = self.cluster.as_ref()?;
        (!r.host.is_empty() && r.host != link.host()).then_some(r.host.as_str())
    }

    /// Whether host `name` is registered (its lease alive).
    pub(super) fn host_live(&self, name: &str) -> bool {
        self.cluster
            .as_ref()
            .and_then(|l| l.mirror.as_ref())
            .is_some_and(|m| m.get(&keys::host_key(name)).is_some())
    }

    /// [`Core::handle`] in cluster mode: rounds against concurrent edits,
    /// then `--wait`.
    pub(super) fn handle_clustered(&mut self, req: Request) -> Reply {
        self.poll_cluster();
        if let Some(why) = self.cluster.as_ref().and_then(|l| l.refused.clone()) {
            return Err(unavailable(why));
        }
        let is_edit = req.command.is_edit();
        for _ in 0..MAX_ROUNDS {
            if let Some(l) = self.cluster.as_mut() {
                l.conflict = false;
                l.committed = 0;
            }
            let reply = self.handle_once(req.clone());
            let Some(link) = &self.cluster else {
                return reply;
            };
            if link.conflict {
                continue;
            }
            if reply.is_ok() && is_edit && req.wait && link.committed > 0 {
                self.wait_for_hosts(link.committed)?;
            }
            return reply;
        }
        Err(unavailable(format!(
            "too much contention: {MAX_ROUNDS} attempts lost to concurrent edits; nothing was changed"
        )))
    }

    /// Commit in cluster mode: one guarded transaction of the final values of
    /// what `changes` touched, plus `extra`; then catch up to it.
    pub(super) fn commit_cluster(
        &mut self,
        changes: Vec<Change>,
        new_records: BTreeMap<String, InstanceRecord>,
        extra: Vec<Edit>,
    ) -> Result<(), ApiError> {
        let built = self.cluster_ops(&changes, &new_records, &extra);
        // The local copy changes only through the watch.
        self.model.undo(changes);
        let ops = built?;
        let Some(link) = self.cluster.as_mut() else {
            return Err(ApiError::internal("not in cluster mode"));
        };
        let Some(mirror) = &link.mirror else {
            return Err(unavailable(format!(
                "not yet synchronised with etcd at {}; nothing was changed",
                link.node.config().endpoints
            )));
        };
        let (guard, bump) = node::edit_guard(mirror);
        // Proof of this very transaction, for an answer that gets lost.
        let proof_key = keys::edit_key(link.host());
        let proof = random_id("edit-");
        let txn = Txn::new().when([guard]).and_then(
            ops.into_iter()
                .chain([bump, Op::put(&proof_key, proof.as_bytes())]),
        );
        for id in new_records.keys() {
            link.launching.insert(id.clone());
        }
        let client = link.node.client().clone();
        let (succeeded, revision) = match client.txn(&txn) {
            Ok(r) => (r.succeeded, r.revision),
            Err(EtcdError::OutcomeUnknown { .. }) => {
                // Did it commit? Our proof is there exactly when it did.
                match client.get(&proof_key) {
                    Ok((_, Some(kv))) if kv.value == proof.as_bytes() => (true, kv.mod_revision),
                    Ok((rev, _)) => (false, rev),
                    Err(e) => {
                        self.forget_launching(&new_records);
                        return Err(unavailable(format!(
                            "{e}; the outcome of the edit is unknown (etcd lost its answer)"
                        )));
                    }
                }
            }
            Err(e) => {
                self.forget_launching(&new_records);
                return Err(unavailable(format!("{e}; nothing was changed")));
            }
        };
        let resp = TxnOutcome {
            succeeded,
            revision,
        };
        self.catch_up(resp.revision);
        self.forget_launching(&new_records);
        let Some(link) = self.cluster.as_mut() else {
            return Err(ApiError::internal("not in cluster mode"));
        };
        if !resp.succeeded {
            link.conflict = true;
            return Err(unavailable("lost to a concurrent edit"));
        }
        link.committed = resp.revision;
        self.edits += 1;
        Ok(())
    }

    fn forget_launching(&mut self, new_records: &BTreeMap<String, InstanceRecord>) {
        if let Some(link) = self.cluster.as_mut() {
            for id in new_records.keys() {
                link.launching.remove(id);
            }
        }
    }

    /// The transaction's operations for `changes` (the model still holds
    /// them), `new_records` and `extra`.
    fn cluster_ops(
        &self,
        changes: &[Change],
        new_records: &BTreeMap<String, InstanceRecord>,
        extra: &[Edit],
    ) -> Result<Vec<Op>, ApiError> {
        let Some(link) = &self.cluster else {
            return Err(ApiError::internal("not in cluster mode"));
        };
        let mut groups = BTreeSet::new();
        let mut instances = BTreeSet::new();
        for c in changes {
            match c {
                Change::GroupAdded { group, .. } => groups.insert(group.id.clone()),
                Change::GroupDeleted(g) => groups.insert(g.id.clone()),
                Change::RulesAdded { group_id, .. } | Change::RulesRemoved { group_id, .. } => {
                    groups.insert(group_id.clone())
                }
                Change::InstanceAdded(i) | Change::InstanceRemoved(i) => {
                    instances.insert(i.id.clone())
                }
            };
        }
        let mut puts = Vec::new();
        let mut inst_ops = Vec::new();
        let mut group_deletes = Vec::new();
        for id in &groups {
            match self.model.group_by_id(id) {
                Some(g) => puts.push(
                    Entry::Group {
                        id: id.clone(),
                        record: GroupRecord::from_group(g),
                    }
                    .encode(),
                ),
                None => group_deletes.push(Op::delete(keys::group_key(id))),
            }
        }
        // Built only when an instance needs one (a launch).
        let mut identities: Option<Identities> = None;
        for id in &instances {
            match self.model.instance(id) {
                Some(inst) => {
                    let rec = new_records.get(id).or_else(|| self.records.get(id));
                    let Some(rec) = rec else {
                        return Err(ApiError::internal(format!("no launch record for {id}")));
                    };
                    let mut rec = InstanceRecord {
                        instance: inst.clone(),
                        ..rec.clone()
                    };
                    if rec.host.is_empty() {
                        rec.host = link.host().to_owned();
                    }
                    if rec.identity == 0 {
                        rec.identity = identities
                            .get_or_insert_with(|| Identities::new(self.records.values()))
                            .assign(&rec)?;
                    }
                    inst_ops.push(Op::put(
                        keys::instance_key(id),
                        Entry::Instance {
                            id: id.clone(),
                            value: InstanceValue::from_record(&rec),
                        }
                        .encode()
                        .1,
                    ));
                }
                None => inst_ops.insert(0, Op::delete(keys::instance_key(id))),
            }
        }
        let mut ops: Vec<Op> = Vec::new();
        // Removed instances first, then groups, then new instances, then
        // removed groups: the order in which a host applies them.
        let (dels, adds): (Vec<Op>, Vec<Op>) = inst_ops
            .into_iter()
            .partition(|o| matches!(o, Op::Delete { .. }));
        ops.extend(dels);
        ops.extend(puts.into_iter().map(|(k, v)| Op::put(k, v)));
        ops.extend(adds);
        ops.extend(group_deletes);
        if !groups.is_empty() {
            let (k, v) = Entry::Counter {
                name: COUNTER_GROUP_SEQ.to_owned(),
                value: self.model.next_group_seq() as i64,
            }
            .encode();
            ops.push(Op::put(k, v));
        }
        for e in extra {
            let entry = match e {
                Edit::PutImage(i) => Entry::Image(i.clone()),
                Edit::PutAccessKey(k) => Entry::AccessKey(k.clone()),
                Edit::PutClientToken(t) => Entry::ClientToken(t.clone()),
                Edit::DeleteImage { ami } => {
                    ops.push(Op::delete(format!(
                        "{}images/{}",
                        keys::MODEL,
                        keys::esc(ami)
                    )));
                    continue;
                }
                other => {
                    return Err(ApiError::new(
                        ErrorCode::InvalidAction,
                        format!(
                            "not served in cluster mode yet (tags, rule ids and rule \
                             descriptions are kept on a single host only): {other:?}"
                        ),
                    ));
                }
            };
            let (k, v) = entry.encode();
            ops.push(Op::put(k, v));
        }
        Ok(ops)
    }

    /// Apply events until this host has applied `revision` (or
    /// [`CATCH_UP`] passed: the edit is committed in etcd and will be
    /// applied when the watch delivers it).
    fn catch_up(&mut self, revision: i64) {
        let deadline = Instant::now() + CATCH_UP;
        loop {
            let Some(link) = &self.cluster else { return };
            if link
                .mirror
                .as_ref()
                .is_some_and(|m| m.revision() >= revision)
            {
                return;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                tracing::warn!(
                    revision,
                    "the watch has not delivered revision {revision} yet"
                );
                return;
            }
            if let Some(e) = link.node.event(left.min(Duration::from_millis(100))) {
                self.apply_event(e);
            }
        }
    }

    fn apply_event(&mut self, e: Event) {
        let Some(link) = self.cluster.as_mut() else {
            return;
        };
        let (touched, revision) = match e {
            Event::Refused(why) => {
                tracing::error!("the lab refuses this daemon: {why}");
                link.refused = Some(why);
                return;
            }
            Event::Full(m) => {
                let mut t = Touched {
                    others: true,
                    hosts: true,
                    ..Touched::default()
                };
                for s in m.entries() {
                    t.key(&s.entry.key());
                }
                t.groups
                    .extend(self.model.groups().values().map(|g| g.id.clone()));
                t.instances.extend(self.records.keys().cloned());
                let r = m.revision();
                link.mirror = Some(m);
                (t, r)
            }
            Event::Batch(b) => {
                let Some(mirror) = link.mirror.as_mut() else {
                    return;
                };
                if b.revision <= mirror.revision() {
                    return;
                }
                match mirror.apply(&b) {
                    Ok(keys) => {
                        let mut t = Touched::default();
                        for k in &keys {
                            t.key(k);
                        }
                        (t, b.revision)
                    }
                    Err(e) => {
                        tracing::error!("etcd watch batch at revision {}: {e}", b.revision);
                        return;
                    }
                }
            }
        };
        self.reconcile(touched, revision);
    }

    /// Make the local copy equal to the mirror for what `t` names; compile,
    /// publish, cache, acknowledge.
    fn reconcile(&mut self, t: Touched, revision: i64) {
        let Some(link) = self.cluster.as_ref() else {
            return;
        };
        let Some(mirror) = link.mirror.as_ref() else {
            return;
        };
        let me = link.host().to_owned();
        let want_group = |id: &str| match mirror.get(&keys::group_key(id)).map(|s| &s.entry) {
            Some(Entry::Group { id, record }) => Some(record.clone().into_group(id.clone())),
            _ => None,
        };
        let want_inst = |id: &str| match mirror.get(&keys::instance_key(id)).map(|s| &s.entry) {
            Some(Entry::Instance { id, value }) => {
                let mut r = value.to_record(id);
                r.instance.groups.sort();
                Some(r)
            }
            _ => None,
        };
        let groups: Vec<(String, Option<Group>)> = t
            .groups
            .iter()
            .map(|id| (id.clone(), want_group(id)))
            .collect();
        let insts: Vec<(String, Option<InstanceRecord>)> = t
            .instances
            .iter()
            .map(|id| (id.clone(), want_inst(id)))
            .collect();
        let seq = match mirror
            .get(&keys::counter_key(COUNTER_GROUP_SEQ))
            .map(|s| &s.entry)
        {
            Some(Entry::Counter { value, .. }) => *value as u64,
            _ => 0,
        };
        let others = t.others.then(|| mirror.loaded());
        let launching = link.launching.clone();
        self.model.take_changes();
        let mut record_edits: Vec<Edit> = Vec::new();
        let mut teardown: Vec<(String, Attachment)> = Vec::new();
        let mut attach: Vec<InstanceRecord> = Vec::new();
        // 1. Instances gone (or changed: removed, then put again).
        for (id, want) in &insts {
            let Some(cur) = self.records.get(id) else {
                continue;
            };
            let same = want.as_ref().is_some_and(|w| w.instance == cur.instance);
            if same {
                continue;
            }
            if let Err(e) = self.model.remove_instance(id) {
                tracing::error!(instance = %id, "cluster apply: {e}");
            }
            let cur = self.records.remove(id);
            if want.is_none()
                && let Some(cur) = cur
                && cur.host == me
            {
                teardown.push((id.clone(), cur.attachment));
            }
        }
        // 2. Groups put.
        for (id, want) in &groups {
            if let Some(g) = want
                && let Err(e) = self.model.put_group_raw(g.clone())
            {
                tracing::error!(group = %id, "cluster apply: {e}");
            }
        }
        // 3. Instances put.
        for (id, want) in &insts {
            let Some(want) = want else { continue };
            match self.records.get(id) {
                Some(cur) if cur.instance == want.instance => {
                    if cur != want {
                        self.records.insert(id.clone(), want.clone());
                    }
                    continue;
                }
                _ => {}
            }
            if let Err(e) = self.model.add_instance(want.instance.clone()) {
                tracing::error!(instance = %id, "cluster apply: {e}");
                continue;
            }
            self.records.insert(id.clone(), want.clone());
            if want.host == me && !launching.contains(id) && !self.states.contains_key(id) {
                attach.push(want.clone());
            }
        }
        // 4. Groups removed.
        for (id, want) in &groups {
            if want.is_none() {
                self.model.remove_group_raw(id);
            }
        }
        self.model.advance_group_seq(seq);
        if let Err(e) = self.model.verify() {
            tracing::error!("cluster apply at revision {revision}: {}", e.message);
        }
        if let Some(l) = others {
            let live: BTreeSet<String> = l.images.iter().map(|i| i.ami.clone()).collect();
            for i in l.images {
                if self.images.get(&i.ami) != Some(&i) {
                    if self.images.contains_key(&i.ami) {
                        record_edits.push(Edit::DeleteImage { ami: i.ami.clone() });
                    }
                    record_edits.push(Edit::PutImage(i.clone()));
                    self.images.insert(i.ami.clone(), i);
                }
            }
            let gone: Vec<String> = self
                .images
                .keys()
                .filter(|a| !live.contains(*a))
                .cloned()
                .collect();
            for ami in gone {
                self.images.remove(&ami);
                record_edits.push(Edit::DeleteImage { ami });
            }
            for k in l.access_keys {
                if !self.ec2.keys.contains_key(&k.key_id) {
                    record_edits.push(Edit::PutAccessKey(k.clone()));
                    self.ec2.keys.insert(k.key_id.clone(), k);
                }
            }
            for tk in l.client_tokens {
                let key = (tk.owner.clone(), tk.token.clone());
                if let std::collections::btree_map::Entry::Vacant(slot) = self.ec2.tokens.entry(key)
                {
                    record_edits.push(Edit::PutClientToken(tk.clone()));
                    slot.insert(tk);
                }
            }
        }
        let changes = self.model.take_changes();
        if !changes.is_empty() {
            self.compiler.apply(&self.model, &changes);
            self.generation += 1;
            self.publish();
        }
        // The overlay's directory changes with instances and hosts only.
        if t.hosts || !t.instances.is_empty() {
            self.publish_directory();
        }
        if t.hosts
            && let Some(hosts) = self.live_hosts()
            && hosts != self.cached_hosts
        {
            record_edits.push(Edit::SetClusterHosts(hosts.clone()));
            self.cached_hosts = hosts;
        }
        // The SQLite cache: exactly what changed, with the revision.
        let mut edits = match store_edits(&changes, &self.records) {
            Ok(e) => e,
            Err(e) => {
                tracing::error!("cluster cache: {}", e.message);
                Vec::new()
            }
        };
        edits.extend(record_edits);
        edits.extend(self.counter_edits(self.generation));
        edits.push(Edit::SetCounter {
            name: COUNTER_ETCD_REVISION.into(),
            value: revision,
        });
        if let Err(e) = self.store.commit(&edits) {
            tracing::error!(
                "cluster cache: {}; rewriting it from the model",
                crate::api::error_chain(&e)
            );
        } else {
            self.cache_revision = revision;
        }
        // Local work the lab asked for.
        for (id, how) in teardown {
            if let Err(e) = self.dp.terminate(&id, &how) {
                tracing::warn!(instance = %id, "terminating instance {id}: {e}");
            }
            self.states.remove(&id);
            tracing::info!(instance = %id, "terminated");
        }
        let prefix = self.cfg.subnet.prefix_len();
        for rec in attach {
            let id = rec.instance.id.clone();
            let state = match self.dp.reattach(&rec, prefix) {
                Ok(()) => self.dp.check(&id, &rec.attachment),
                Err(e) => {
                    tracing::warn!(instance = %id, "cannot attach instance {id}: {e}");
                    Liveness::Stopped(format!("not attached on host {me}: {e}"))
                }
            };
            self.states.insert(id, state);
        }
        if let Some(link) = &self.cluster {
            link.node.ack(revision, self.generation);
        }
    }

    /// Hand the data plane the overlay's view of the lab: live hosts and
    /// every instance with its host and identity.
    fn publish_directory(&mut self) {
        let Some(link) = &self.cluster else { return };
        // Before the first read (etcd down at start): the hosts as cached.
        let hosts = self
            .live_hosts()
            .unwrap_or_else(|| self.cached_hosts.clone());
        let dir = Directory {
            local: link.host().to_owned(),
            hosts,
            instances: self
                .records
                .values()
                .map(|r| DirectoryInstance {
                    ip: r.instance.ip,
                    // The lab's /64 (etcd's meta record) + EUI-64 of the MAC.
                    ip6: self.model.ip6_of(r.instance.mac),
                    mac: r.instance.mac,
                    host: r.host.clone(),
                    identity: r.identity,
                })
                .collect(),
        };
        self.dp.publish_directory(&dir);
    }

    /// The live hosts as the mirror has them (None before the first read).
    fn live_hosts(&self) -> Option<Vec<(String, SocketAddr)>> {
        let mirror = self.cluster.as_ref()?.mirror.as_ref()?;
        Some(
            mirror
                .hosts()
                .into_iter()
                .map(|(n, r)| (n.to_owned(), r.underlay))
                .collect(),
        )
    }

    /// `--wait`: until every live host acknowledged `revision`.
    fn wait_for_hosts(&mut self, revision: i64) -> Result<(), ApiError> {
        let Some(link) = &self.cluster else {
            return Ok(());
        };
        let client = link.node.client().clone();
        let deadline = Instant::now() + WAIT_LIMIT;
        let mut pause = Duration::from_micros(200);
        loop {
            let read = client
                .txn(&Txn::new().and_then([
                    Op::Range(Range::prefix(keys::hosts_prefix())),
                    Op::Range(Range::prefix(keys::acks_prefix())),
                ]))
                .map_err(|e| unavailable(format!("--wait: {e} (the edit itself is committed)")))?;
            let (hosts, acks) = hosts_and_acks(&read);
            let behind: Vec<&String> = hosts
                .keys()
                .filter(|h| acks.get(*h).is_none_or(|a| a.revision < revision))
                .collect();
            if behind.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(unavailable(format!(
                    "--wait: the edit is committed (revision {revision}) but host(s) {} did not \
                     acknowledge it within {} s",
                    behind
                        .iter()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                    WAIT_LIMIT.as_secs()
                )));
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(20));
        }
    }

    /// `hosts`.
    pub(super) fn hosts(&mut self) -> Reply {
        let Some(link) = &self.cluster else {
            return Err(ApiError::new(
                ErrorCode::InvalidParameterValue,
                "this daemon is not in cluster mode (start it with --etcd)",
            ));
        };
        let client = link.node.client().clone();
        let read = client
            .txn(&Txn::new().and_then([
                Op::Range(Range::prefix(keys::hosts_prefix())),
                Op::Range(Range::prefix(keys::acks_prefix())),
            ]))
            .map_err(|e| unavailable(e.to_string()))?;
        let (live, acks) = hosts_and_acks(&read);
        let mut names: BTreeSet<String> = live.keys().cloned().collect();
        let mut count: BTreeMap<&str, u64> = BTreeMap::new();
        for r in self.records.values() {
            if !r.host.is_empty() {
                names.insert(r.host.clone());
                *count.entry(r.host.as_str()).or_default() += 1;
            }
        }
        let hosts = names
            .iter()
            .map(|n| HostView {
                name: n.clone(),
                underlay: live
                    .get(n)
                    .map_or_else(|| "-".to_owned(), |h| h.underlay.to_string()),
                state: if live.contains_key(n) { "live" } else { "lost" }.to_owned(),
                revision: acks.get(n).map_or(0, |a| a.revision),
                instances: count.get(n.as_str()).copied().unwrap_or(0),
            })
            .collect();
        Ok(Response::Hosts { hosts })
    }
}

/// The live hosts and the acks of a two-range read.
fn hosts_and_acks(
    read: &crate::cluster::etcd::TxnResponse,
) -> (BTreeMap<String, HostRecord>, BTreeMap<String, AckRecord>) {
    use crate::cluster::etcd::OpResponse;
    let mut hosts = BTreeMap::new();
    let mut acks = BTreeMap::new();
    for r in &read.responses {
        let OpResponse::Range(rr) = r else { continue };
        for kv in &rr.kvs {
            let key = String::from_utf8_lossy(&kv.key);
            if let Some(name) = key.strip_prefix(keys::hosts_prefix().as_str()) {
                if let Ok(Entry::Host { record, .. }) = Entry::decode(&kv.key, &kv.value)
                    && let Some(n) = keys::unesc(name)
                {
                    hosts.insert(n, record);
                }
            } else if let Some(name) = key.strip_prefix(keys::acks_prefix().as_str())
                && let Ok(a) = serde_json::from_slice::<AckRecord>(&kv.value)
                && let Some(n) = keys::unesc(name)
            {
                acks.insert(n, a);
            }
        }
    }
    (hosts, acks)
}

/// Group-set identities in use, and the next free one.
struct Identities {
    by_set: BTreeMap<(String, Vec<String>), u16>,
    used: BTreeSet<u16>,
}

impl Identities {
    fn new<'a>(records: impl Iterator<Item = &'a InstanceRecord>) -> Identities {
        let mut by_set = BTreeMap::new();
        let mut used = BTreeSet::new();
        for r in records {
            if r.identity != 0 {
                used.insert(r.identity);
                by_set.insert(
                    (r.instance.owner.0.clone(), r.instance.groups.clone()),
                    r.identity,
                );
            }
        }
        Identities { by_set, used }
    }

    fn assign(&mut self, r: &InstanceRecord) -> Result<u16, ApiError> {
        let key = (r.instance.owner.0.clone(), r.instance.groups.clone());
        if let Some(&n) = self.by_set.get(&key) {
            return Ok(n);
        }
        let n = (keys::FIRST_IDENTITY..=u16::MAX)
            .find(|n| !self.used.contains(n))
            .ok_or_else(|| {
                ApiError::new(
                    ErrorCode::InsufficientInstanceCapacity,
                    "every group-set identity (256..65535) is in use",
                )
            })?;
        self.used.insert(n);
        self.by_set.insert(key, n);
        Ok(n)
    }
}

/// The overlay's view of the lab, as the core hands it to the data plane.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Directory {
    /// This host's name.
    pub local: String,
    /// Live hosts (this one included) and their overlay endpoints.
    pub hosts: Vec<(String, SocketAddr)>,
    pub instances: Vec<DirectoryInstance>,
}

/// One instance in a [`Directory`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirectoryInstance {
    pub ip: Ipv4Addr,
    /// Its IPv6 address, when the lab is dual-stack.
    pub ip6: Option<std::net::Ipv6Addr>,
    pub mac: Mac,
    pub host: String,
    pub identity: u16,
}
