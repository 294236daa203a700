//! A daemon's link to etcd in cluster mode: the threads that follow the
//! model, keep this host registered and acknowledge what it enforces.
//!
//! Contract:
//! * [`Node::start`] connects nothing itself: the *follower* thread reads the
//!   whole model at one revision R ([`Event::Full`]), then watches it from
//!   R + 1 and hands every batch on in order ([`Event::Batch`]). A watch that
//!   breaks reconnects by itself from the next revision it needs (the etcd
//!   client's [`crate::cluster::watch`]); a compacted one, or etcd unreachable
//!   at the start, makes the thread read everything again (every 0.5 s while
//!   etcd does not answer). After each event it calls the `wake` callback so
//!   the management thread takes it ([`Node::try_event`], [`Node::event`]).
//! * The *registration* thread grants a lease ([`LEASE_TTL`] s, kept alive at
//!   a third of it), puts `model/hosts/NAME` on it only if that key is absent
//!   (a second live daemon with the same `--host` waits until the first is
//!   gone: after a `kill -9` that is the old lease's TTL), and registers
//!   again when the lease is lost (etcd away longer than the TTL).
//! * The *ack* thread puts `acks/NAME` (on the lease) with the newest revision
//!   this host enforces ([`Node::ack`]); acks are coalesced (the newest wins)
//!   and nobody but a client waiting with `--wait` reads them (docs/cluster.md
//!   §5.2).
//! * `model/meta` is created by the first daemon of a lab (create-if-absent);
//!   a daemon whose `--subnet`, uplink range or `--subnet6` differs from the
//!   lab's gets
//!   [`Event::Refused`] and the daemon stops.
//! * Dropping the node stops the threads and revokes the lease (a clean
//!   shutdown removes the host at once; a crash lets it expire).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ipnet::Ipv4Net;

use super::etcd::{self, Client, Compare, CompareOp, EtcdError, KeyRange, LeaseKeeper, Op, Txn};
use super::keys::{self, AckRecord, Entry, HostRecord, MetaRecord};
use super::mirror::Mirror;
use crate::cluster::etcd::WatchBatch;

/// The lab's VXLAN network identifier (one overlay per lab).
pub const VNI: u32 = 1;

/// Seconds a host's registration outlives its daemon.
pub const LEASE_TTL: i64 = 10;
/// Keys per page of a full read.
const PAGE: i64 = 500;
/// Pause between attempts while etcd does not answer.
const RETRY: Duration = Duration::from_millis(500);

/// What this daemon is in the lab.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// `--etcd`, comma-separated URLs.
    pub endpoints: String,
    /// `--host`.
    pub host: String,
    /// `--underlay` with `--vxlan-port`: where the other hosts send.
    pub underlay: SocketAddr,
    pub subnet: Ipv4Net,
    pub uplink_range: Ipv4Net,
    /// The instances' IPv6 prefix: written into a new lab's meta, and must
    /// equal the lab's.
    pub subnet6: Option<ipnet::Ipv6Net>,
    /// The VXLAN network identifier written into a new lab's meta.
    pub vni: u32,
}

/// What the follower hands to the management thread.
#[derive(Debug)]
pub enum Event {
    /// The whole model at one revision (start, or after a compaction).
    Full(Mirror),
    /// The next changes, in revision order, after the last event.
    Batch(WatchBatch),
    /// The lab does not accept this daemon (its subnet differs); why.
    Refused(String),
}

/// The running link; see the module docs.
pub struct Node {
    cfg: NodeConfig,
    client: Client,
    rx: Receiver<Event>,
    stop: Arc<AtomicBool>,
    /// The current registration lease (0 while not registered).
    lease: Arc<AtomicI64>,
    ack: Arc<(Mutex<Option<AckRecord>>, Condvar)>,
    threads: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("host", &self.cfg.host)
            .field("lease", &self.lease.load(Ordering::Relaxed))
            .finish()
    }
}

impl Node {
    /// Start the follower, registration and ack threads; `wake` is called
    /// (from the follower) after each [`Event`].
    pub fn start(cfg: NodeConfig, wake: Arc<dyn Fn() + Send + Sync>) -> Result<Node, EtcdError> {
        let client = Client::new(&cfg.endpoints, etcd::Config::default())?;
        let (tx, rx) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let lease = Arc::new(AtomicI64::new(0));
        let ack = Arc::new((Mutex::new(None), Condvar::new()));
        let spawn = |name: &str, f: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new()
                .name(name.into())
                .spawn(f)
                .map_err(|e| EtcdError::Unreachable {
                    url: cfg.endpoints.clone(),
                    detail: format!("cannot start the {name} thread: {e}"),
                })
        };
        let mut threads = Vec::new();
        {
            let (client, cfg, stop) = (client.clone(), cfg.clone(), stop.clone());
            threads.push(spawn(
                "etcd-follow",
                Box::new(move || follow(&client, &cfg, &stop, &tx, &*wake)),
            )?);
        }
        {
            let (client, cfg, stop, lease) =
                (client.clone(), cfg.clone(), stop.clone(), lease.clone());
            threads.push(spawn(
                "etcd-register",
                Box::new(move || register(&client, &cfg, &stop, &lease)),
            )?);
        }
        {
            let (client, cfg, stop, lease, ack) = (
                client.clone(),
                cfg.clone(),
                stop.clone(),
                lease.clone(),
                ack.clone(),
            );
            threads.push(spawn(
                "etcd-ack",
                Box::new(move || acknowledge(&client, &cfg.host, &stop, &lease, &ack)),
            )?);
        }
        Ok(Node {
            cfg,
            client,
            rx,
            stop,
            lease,
            ack,
            threads,
        })
    }

    pub fn config(&self) -> &NodeConfig {
        &self.cfg
    }

    /// The etcd client (edits' transactions run on the management thread).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Whether this host's registration is in place.
    pub fn registered(&self) -> bool {
        self.lease.load(Ordering::Relaxed) != 0
    }

    /// The next event if one is waiting.
    pub fn try_event(&self) -> Option<Event> {
        self.rx.try_recv().ok()
    }

    /// The next event, waiting at most `timeout`.
    pub fn event(&self, timeout: Duration) -> Option<Event> {
        self.rx.recv_timeout(timeout).ok()
    }

    /// This host enforces everything up to `revision` (with snapshot
    /// `generation`): acknowledge it (asynchronously, the newest wins).
    pub fn ack(&self, revision: i64, generation: u64) {
        let (lock, cv) = &*self.ack;
        if let Ok(mut slot) = lock.lock() {
            if slot.is_none_or(|a| a.revision < revision) {
                *slot = Some(AckRecord {
                    revision,
                    generation,
                });
            }
            cv.notify_one();
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.ack.1.notify_all();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Sleep `d` in small steps; false once `stop` is set.
fn pause(stop: &AtomicBool, d: Duration) -> bool {
    let until = Instant::now() + d;
    while Instant::now() < until {
        if stop.load(Ordering::Relaxed) {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    !stop.load(Ordering::Relaxed)
}

/// The lab's IPv6 prefix, if etcd answers within a few seconds and the lab
/// has one (read once at the daemon's start, before the data plane exists;
/// `None` otherwise: the daemon then uses the prefix kept in its state, and
/// the meta check refuses it later if the lab's differs).
pub fn lab_subnet6(endpoints: &str) -> Option<ipnet::Ipv6Net> {
    let cfg = etcd::Config {
        connect_timeout: Duration::from_millis(1000),
        request_timeout: Duration::from_secs(2),
    };
    let client = Client::new(endpoints, cfg).ok()?;
    let (key, _) = Entry::Meta(MetaRecord {
        layout: keys::LAYOUT,
        subnet: Ipv4Net::default(),
        uplink_range: Ipv4Net::default(),
        vni: 0,
        subnet6: None,
    })
    .encode();
    let (_, kv) = client.get(&key).ok()?;
    let kv = kv?;
    match Entry::decode(&kv.key, &kv.value) {
        Ok(Entry::Meta(m)) => m.subnet6,
        _ => None,
    }
}

/// The lab's meta: created if absent; `Err(why)` if this daemon does not fit.
fn check_meta(client: &Client, cfg: &NodeConfig) -> Result<Result<(), String>, EtcdError> {
    let mine = MetaRecord {
        layout: keys::LAYOUT,
        subnet: cfg.subnet,
        uplink_range: cfg.uplink_range,
        vni: cfg.vni,
        subnet6: cfg.subnet6,
    };
    let (key, value) = Entry::Meta(mine.clone()).encode();
    client.txn(
        &Txn::new()
            .when([Compare::absent(&key)])
            .and_then([Op::put(&key, &value)]),
    )?;
    let (_, kv) = client.get(&key)?;
    let Some(kv) = kv else {
        return Ok(Err(format!("{key} vanished after it was written")));
    };
    match Entry::decode(&kv.key, &kv.value) {
        Ok(Entry::Meta(m))
            if m.subnet == mine.subnet
                && m.uplink_range == mine.uplink_range
                && (m.subnet6.is_none() || m.subnet6 == mine.subnet6) =>
        {
            Ok(Ok(()))
        }
        Ok(Entry::Meta(m)) if m.subnet == mine.subnet && m.uplink_range == mine.uplink_range => {
            Ok(Err(format!(
                "the lab in etcd uses the IPv6 prefix --subnet6 {}; this daemon has {}",
                m.subnet6.map_or("none".into(), |p| p.to_string()),
                mine.subnet6.map_or("none".into(), |p| p.to_string())
            )))
        }
        Ok(Entry::Meta(m)) => Ok(Err(format!(
            "the lab in etcd uses --subnet {} with uplink range {}; this daemon has --subnet {} \
             and uplink range {}",
            m.subnet, m.uplink_range, mine.subnet, mine.uplink_range
        ))),
        Ok(_) | Err(_) => Ok(Err(format!(
            "{key} holds {:?}, not a layout this daemon understands (layout {})",
            String::from_utf8_lossy(&kv.value),
            keys::LAYOUT
        ))),
    }
}

/// The follower thread: full read, then the watch; again after a compaction.
fn follow(
    client: &Client,
    cfg: &NodeConfig,
    stop: &AtomicBool,
    tx: &Sender<Event>,
    wake: &(dyn Fn() + Send + Sync),
) {
    let send = |e: Event| {
        let ok = tx.send(e).is_ok();
        wake();
        ok
    };
    let mut meta_ok = false;
    // Say it once when etcd goes away, not every retry.
    let failing = std::cell::Cell::new(false);
    let trouble = |what: String| {
        if failing.replace(true) {
            tracing::debug!("{what}");
        } else {
            tracing::warn!("{what}");
        }
    };
    while !stop.load(Ordering::Relaxed) {
        if !meta_ok {
            match check_meta(client, cfg) {
                Ok(Ok(())) => meta_ok = true,
                Ok(Err(why)) => {
                    send(Event::Refused(why));
                    return;
                }
                Err(e) => {
                    trouble(format!("etcd: {e}; retrying every {RETRY:?}"));
                    if !pause(stop, RETRY) {
                        return;
                    }
                    continue;
                }
            }
        }
        let read = match client.range_all(keys::MODEL, 0, PAGE) {
            Ok(r) => r,
            Err(e) => {
                trouble(format!(
                    "etcd: full read of {}: {e}; retrying every {RETRY:?}",
                    keys::MODEL
                ));
                if !pause(stop, RETRY) {
                    return;
                }
                continue;
            }
        };
        let mirror = match Mirror::from_range(&read) {
            Ok(m) => m,
            Err(e) => {
                tracing::error!(
                    "etcd: the model at revision {} does not decode: {e}",
                    read.revision
                );
                if !pause(stop, RETRY * 4) {
                    return;
                }
                continue;
            }
        };
        let from = mirror.revision() + 1;
        tracing::info!(
            revision = mirror.revision(),
            "read the lab's model from etcd"
        );
        failing.set(false);
        if !send(Event::Full(mirror)) {
            return;
        }
        let mut watch = match client.watch(KeyRange::prefix(keys::MODEL), from) {
            Ok(w) => w,
            Err(e) => {
                trouble(format!(
                    "etcd: watch from revision {from}: {e}; reading everything again"
                ));
                if !pause(stop, RETRY) {
                    return;
                }
                continue;
            }
        };
        loop {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            match watch.poll(Duration::from_millis(200)) {
                Ok(Some(batch)) => {
                    if !send(Event::Batch(batch)) {
                        return;
                    }
                }
                Ok(None) => {}
                Err(e) => {
                    trouble(format!("etcd watch: {e}; reading everything again"));
                    break;
                }
            }
        }
    }
}

/// The registration thread.
fn register(client: &Client, cfg: &NodeConfig, stop: &AtomicBool, lease: &AtomicI64) {
    let key = keys::host_key(&cfg.host);
    let mut waiting_logged = false;
    while !stop.load(Ordering::Relaxed) {
        let keeper = match LeaseKeeper::start(client, LEASE_TTL) {
            Ok(k) => k,
            Err(e) => {
                tracing::debug!("etcd: lease for host {}: {e}", cfg.host);
                if !pause(stop, RETRY) {
                    return;
                }
                continue;
            }
        };
        let record = HostRecord {
            underlay: cfg.underlay,
            started_at: now_secs(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
        };
        let (_, value) = Entry::Host {
            name: cfg.host.clone(),
            record,
        }
        .encode();
        let put = client.txn(
            &Txn::new()
                .when([Compare::absent(&key)])
                .and_then([Op::put_with_lease(&key, &value, keeper.id())]),
        );
        match put {
            Ok(r) if r.succeeded => {
                tracing::info!(host = %cfg.host, lease = keeper.id(), "registered in the lab");
                waiting_logged = false;
                lease.store(keeper.id(), Ordering::Relaxed);
                while !stop.load(Ordering::Relaxed) && !keeper.is_lost() {
                    std::thread::sleep(Duration::from_millis(50));
                }
                lease.store(0, Ordering::Relaxed);
                if keeper.is_lost() {
                    tracing::warn!(host = %cfg.host, "lease lost (etcd away too long); registering again");
                }
                // Dropping the keeper revokes the lease on a clean stop.
            }
            Ok(_) => {
                if !waiting_logged {
                    tracing::warn!(
                        host = %cfg.host,
                        "host name {} is registered by another live daemon (or by this one before a \
                         crash, until its lease expires); waiting",
                        cfg.host
                    );
                    waiting_logged = true;
                }
                drop(keeper);
                if !pause(stop, Duration::from_secs(1)) {
                    return;
                }
            }
            Err(e) => {
                tracing::debug!("etcd: register host {}: {e}", cfg.host);
                drop(keeper);
                if !pause(stop, RETRY) {
                    return;
                }
            }
        }
    }
}

/// The ack thread: put the newest acknowledgement, one at a time.
fn acknowledge(
    client: &Client,
    host: &str,
    stop: &AtomicBool,
    lease: &AtomicI64,
    ack: &(Mutex<Option<AckRecord>>, Condvar),
) {
    let key = keys::ack_key(host);
    let mut sent: Option<AckRecord> = None;
    let (lock, cv) = ack;
    while !stop.load(Ordering::Relaxed) {
        let want = {
            let Ok(slot) = lock.lock() else { return };
            let Ok((slot, _)) = cv.wait_timeout(slot, Duration::from_millis(200)) else {
                return;
            };
            *slot
        };
        let id = lease.load(Ordering::Relaxed);
        let Some(want) = want else { continue };
        if id == 0 || sent == Some(want) {
            continue;
        }
        let value = serde_json::to_vec(&want).unwrap_or_default();
        match client.put(&key, &value, id) {
            Ok(_) => sent = Some(want),
            Err(e) => tracing::debug!("etcd: ack revision {}: {e}", want.revision),
        }
    }
}

/// Compare for "this edit was decided on the newest model": the lab's edit
/// counter is still at the revision the deciding host last applied (every
/// edit transaction also puts it, so any edit in between fails the compare).
pub fn edit_guard(mirror: &Mirror) -> (Compare, Op) {
    let key = keys::counter_key(keys::EDIT_COUNTER);
    let (rev, n) = match mirror.get(&key) {
        Some(s) => (
            s.mod_revision,
            match s.entry {
                Entry::Counter { value, .. } => value,
                _ => 0,
            },
        ),
        None => (0, 0),
    };
    let (_, value) = Entry::Counter {
        name: keys::EDIT_COUNTER.to_owned(),
        value: n + 1,
    }
    .encode();
    (
        Compare::mod_revision(&key, CompareOp::Equal, rev),
        Op::put(&key, value),
    )
}
