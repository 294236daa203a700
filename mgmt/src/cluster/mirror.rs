//! A daemon's copy of the etcd model: every decoded [`Entry`] under
//! [`keys::MODEL`] with the revisions etcd gave it, at one store revision.
//!
//! Contract:
//! * Built from one consistent read ([`Mirror::from_range`], the answer of
//!   `Client::range_all(MODEL, ...)`), then moved forward batch by batch
//!   ([`Mirror::apply`], the batches of a watch from `revision + 1`).
//! * All or nothing: a batch whose keys or values do not decode, or that is
//!   not newer than the mirror, changes nothing and is an error naming the
//!   key; the daemon then re-reads everything rather than enforce a guess.
//! * Each entry keeps its `create_revision` and `mod_revision`: an edit's
//!   transaction compares exactly those (docs/cluster.md §4).
//! * [`Mirror::loaded`] gives the records in the shape the single-host store
//!   loads ([`Loaded`]), so the core builds its model the same way from both.

use std::collections::BTreeMap;

use filter::model::Owner;

use super::etcd::{EventKind, RangeResponse, WatchBatch};
use super::keys::{self, CodecError, Entry, HostRecord, InstanceValue};
use crate::store::Loaded;

/// One key as the mirror holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stored {
    pub entry: Entry,
    pub create_revision: i64,
    pub mod_revision: i64,
}

/// Errors of the mirror.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MirrorError {
    #[error(transparent)]
    Codec(#[from] CodecError),
    #[error("watch batch at revision {batch} is not newer than the mirror's revision {mirror}")]
    OutOfOrder { batch: i64, mirror: i64 },
}

/// The model as read from etcd, at [`Mirror::revision`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Mirror {
    revision: i64,
    entries: BTreeMap<String, Stored>,
}

impl Mirror {
    /// The mirror of one consistent read of the model prefix.
    pub fn from_range(read: &RangeResponse) -> Result<Mirror, MirrorError> {
        let mut entries = BTreeMap::new();
        for kv in &read.kvs {
            let entry = Entry::decode(&kv.key, &kv.value)?;
            entries.insert(
                entry.key(),
                Stored {
                    entry,
                    create_revision: kv.create_revision,
                    mod_revision: kv.mod_revision,
                },
            );
        }
        Ok(Mirror {
            revision: read.revision,
            entries,
        })
    }

    /// Every change up to this revision is in the mirror.
    pub fn revision(&self) -> i64 {
        self.revision
    }

    /// Apply one watch batch; the keys it changed, in order.
    pub fn apply(&mut self, batch: &WatchBatch) -> Result<Vec<String>, MirrorError> {
        if batch.revision <= self.revision {
            return Err(MirrorError::OutOfOrder {
                batch: batch.revision,
                mirror: self.revision,
            });
        }
        // Decode everything first: a bad event leaves the mirror untouched.
        let mut changes = Vec::with_capacity(batch.events.len());
        for e in &batch.events {
            let key = String::from_utf8_lossy(&e.kv.key).into_owned();
            match e.kind {
                EventKind::Put => {
                    let entry = Entry::decode(&e.kv.key, &e.kv.value)?;
                    changes.push((
                        key,
                        Some(Stored {
                            entry,
                            create_revision: e.kv.create_revision,
                            mod_revision: e.kv.mod_revision,
                        }),
                    ));
                }
                EventKind::Delete => {
                    if !key.starts_with(keys::MODEL) {
                        return Err(CodecError::BadKey {
                            key,
                            reason: "outside the model prefix",
                        }
                        .into());
                    }
                    changes.push((key, None));
                }
            }
        }
        let mut changed = Vec::with_capacity(changes.len());
        for (key, stored) in changes {
            match stored {
                Some(s) => self.entries.insert(key.clone(), s),
                None => self.entries.remove(&key),
            };
            changed.push(key);
        }
        self.revision = batch.revision;
        Ok(changed)
    }

    /// The entry at `key`, with its revisions.
    pub fn get(&self, key: &str) -> Option<&Stored> {
        self.entries.get(key)
    }

    /// Every entry, by key.
    pub fn entries(&self) -> impl Iterator<Item = &Stored> {
        self.entries.values()
    }

    /// The live hosts, by name.
    pub fn hosts(&self) -> Vec<(&str, &HostRecord)> {
        self.entries
            .values()
            .filter_map(|s| match &s.entry {
                Entry::Host { name, record } => Some((name.as_str(), record)),
                _ => None,
            })
            .collect()
    }

    /// Every instance with its cluster facts (host, identity).
    pub fn instances(&self) -> Vec<(&str, &InstanceValue)> {
        self.entries
            .values()
            .filter_map(|s| match &s.entry {
                Entry::Instance { id, value } => Some((id.as_str(), value)),
                _ => None,
            })
            .collect()
    }

    /// The records in the single-host store's shape and order.
    pub fn loaded(&self) -> Loaded {
        let mut l = Loaded::default();
        for s in self.entries.values() {
            match &s.entry {
                Entry::Group { id, record } => l.groups.push(record.clone().into_group(id.clone())),
                Entry::Instance { id, value } => {
                    let mut r = value.to_record(id);
                    r.instance.groups.sort();
                    l.instances.push(r);
                }
                Entry::Counter { name, value } => {
                    l.counters.insert(name.clone(), *value);
                }
                Entry::Image(i) => l.images.push(i.clone()),
                Entry::AccessKey(k) => l.access_keys.push(k.clone()),
                Entry::ClientToken(t) => l.client_tokens.push(t.clone()),
                _ => {}
            }
        }
        l.groups
            .sort_by(|a, b| (&a.owner, &a.name).cmp(&(&b.owner, &b.name)));
        l.instances
            .sort_by(|a, b| a.instance.id.cmp(&b.instance.id));
        l.images.sort_by(|a, b| a.ami.cmp(&b.ami));
        l.access_keys.sort_by(|a, b| a.key_id.cmp(&b.key_id));
        l.client_tokens
            .sort_by(|a, b| (&a.owner, &a.token).cmp(&(&b.owner, &b.token)));
        l
    }

    /// The group id of `owner`'s group `name`, from the unique-name index.
    pub fn group_id(&self, owner: &Owner, name: &str) -> Option<&str> {
        match &self.entries.get(&keys::name_key(owner, name))?.entry {
            Entry::Name { group_id, .. } => Some(group_id),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::etcd::{Event, KeyValue};
    use crate::cluster::keys::GroupRecord;

    fn owner() -> Owner {
        Owner("111122223333".into())
    }

    fn group(id: &str, name: &str) -> Entry {
        Entry::Group {
            id: id.into(),
            record: GroupRecord {
                owner: owner(),
                name: name.into(),
                description: String::new(),
                rules: Vec::new(),
                egress: filter::model::default_egress(),
            },
        }
    }

    fn kv(e: &Entry, create: i64, modr: i64) -> KeyValue {
        let (k, v) = e.encode();
        KeyValue {
            key: k.into_bytes(),
            value: v,
            create_revision: create,
            mod_revision: modr,
            version: 1,
            lease: 0,
        }
    }

    fn read() -> RangeResponse {
        let name = Entry::Name {
            owner: owner(),
            name: "web".into(),
            group_id: "sg-00000002".into(),
        };
        RangeResponse {
            revision: 10,
            kvs: vec![
                kv(&group("sg-00000002", "web"), 3, 3),
                kv(&group("sg-00000001", "db"), 2, 9),
                kv(&name, 3, 3),
                kv(
                    &Entry::Counter {
                        name: "next_group_seq".into(),
                        value: 3,
                    },
                    2,
                    3,
                ),
            ],
            count: 4,
            more: false,
        }
    }

    #[test]
    fn a_read_becomes_loaded_state_with_revisions() {
        let m = Mirror::from_range(&read()).unwrap();
        assert_eq!(m.revision(), 10);
        let l = m.loaded();
        let names: Vec<&str> = l.groups.iter().map(|g| g.name.as_str()).collect();
        assert_eq!(names, ["db", "web"], "sorted by (owner, name)");
        assert_eq!(l.counters.get("next_group_seq"), Some(&3));
        let db = m.get(&keys::group_key("sg-00000001")).unwrap();
        assert_eq!((db.create_revision, db.mod_revision), (2, 9));
        assert_eq!(m.group_id(&owner(), "web"), Some("sg-00000002"));
    }

    #[test]
    fn batches_apply_in_order_all_or_nothing() {
        let mut m = Mirror::from_range(&read()).unwrap();
        let put = |e: &Entry, rev| Event {
            kind: EventKind::Put,
            kv: kv(e, rev, rev),
        };
        let del = |key: String, rev| Event {
            kind: EventKind::Delete,
            kv: KeyValue {
                key: key.into_bytes(),
                mod_revision: rev,
                ..KeyValue::default()
            },
        };
        let b = WatchBatch {
            revision: 11,
            events: vec![
                put(&group("sg-00000003", "app"), 11),
                del(keys::group_key("sg-00000001"), 11),
            ],
        };
        let changed = m.apply(&b).unwrap();
        assert_eq!(changed.len(), 2);
        assert_eq!(m.revision(), 11);
        let names: Vec<String> = m.loaded().groups.into_iter().map(|g| g.name).collect();
        assert_eq!(names, ["app", "web"]);

        // Replayed or older: refused.
        assert_eq!(
            m.apply(&b).unwrap_err(),
            MirrorError::OutOfOrder {
                batch: 11,
                mirror: 11
            }
        );
        // One bad event: nothing of the batch is applied.
        let before = m.clone();
        let bad = WatchBatch {
            revision: 12,
            events: vec![
                put(&group("sg-00000004", "cache"), 12),
                Event {
                    kind: EventKind::Put,
                    kv: KeyValue {
                        key: b"/sgswitch/v1/model/groups/sg-00000005".to_vec(),
                        value: b"not json".to_vec(),
                        ..KeyValue::default()
                    },
                },
            ],
        };
        let e = m.apply(&bad).unwrap_err().to_string();
        assert!(e.contains("/sgswitch/v1/model/groups/sg-00000005"), "{e}");
        assert_eq!(m, before);
    }
}
