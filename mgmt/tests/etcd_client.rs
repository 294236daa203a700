//! The etcd client of cluster mode against a real etcd (Debian's `etcd-server`)
//! started by each test: listening only on 127.0.0.1 at free ports, data in a
//! temporary directory, killed by PID when the test ends (even on failure).
//!
//! Without the `etcd` binary the tests skip, except under `CI=true` where they
//! fail. The two tests without a server (`unreachable_*`) always run.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use filter::model::Owner;
use mgmt::cluster::etcd::{
    Client, Compare, CompareOp, Config, EtcdError, EventKind, KeyRange, LeaseKeeper, Op,
    OpResponse, Range, Txn,
};
use mgmt::cluster::keys::{self, Entry, GroupRecord, MODEL};
use mgmt::cluster::mirror::{Mirror, Stored};

static SEQ: AtomicUsize = AtomicUsize::new(0);

fn etcd_binary() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join("etcd"))
        .find(|p| p.is_file())
}

/// The etcd binary, or `None` (after saying why) when the test should skip.
fn require_etcd(test: &str) -> Option<PathBuf> {
    match etcd_binary() {
        Some(p) => Some(p),
        None if std::env::var("CI").as_deref() == Ok("true") => {
            panic!(
                "{test}: no `etcd` binary on PATH (install Debian's etcd-server; CI must not skip)"
            )
        }
        None => {
            eprintln!("SKIP {test}: no `etcd` binary on PATH (Debian package etcd-server)");
            None
        }
    }
}

/// A port nobody listens on right now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One etcd member; killed and its directory removed on drop.
struct Member {
    bin: PathBuf,
    name: String,
    dir: PathBuf,
    client_port: u16,
    peer_port: u16,
    initial_cluster: String,
    /// The same for every member of one cluster.
    token: String,
    child: Option<Child>,
}

impl Member {
    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    fn start(&mut self) {
        assert!(self.child.is_none(), "{} already running", self.name);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("etcd.log"))
            .unwrap();
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let child = Command::new(&self.bin)
            .args(["--name", &self.name])
            .arg("--data-dir")
            .arg(self.dir.join("data"))
            .args(["--listen-client-urls", &self.url()])
            .args(["--advertise-client-urls", &self.url()])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &self.initial_cluster])
            .args(["--initial-cluster-state", "new"])
            .args(["--initial-cluster-token", &self.token])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", self.bin.display()));
        self.child = Some(child);
    }

    /// SIGKILL by PID and reap.
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("etcd.log")).unwrap_or_default()
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `n` members forming one cluster, each with its own ports and directory.
struct Cluster {
    members: Vec<Member>,
}

impl Cluster {
    fn start(bin: &Path, test: &str, n: usize) -> Cluster {
        let seq = SEQ.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let mut members = Vec::new();
        for i in 0..n {
            let dir = std::env::temp_dir().join(format!("sgswitch-etcd-{test}-{pid}-{seq}-{i}"));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            members.push(Member {
                bin: bin.to_owned(),
                name: format!("m{i}"),
                dir,
                client_port: free_port(),
                peer_port: free_port(),
                initial_cluster: String::new(),
                token: format!("sgswitch-{test}-{pid}-{seq}"),
                child: None,
            });
        }
        let initial: Vec<String> = members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port))
            .collect();
        for m in &mut members {
            m.initial_cluster = initial.join(",");
            m.start();
        }
        let c = Cluster { members };
        c.wait_ready(&c.client());
        c
    }

    fn urls(&self) -> String {
        self.members
            .iter()
            .map(Member::url)
            .collect::<Vec<_>>()
            .join(",")
    }

    fn client(&self) -> Client {
        Client::new(&self.urls(), cfg()).unwrap()
    }

    /// Until a linearizable read succeeds (a leader exists), 20 s at most.
    fn wait_ready(&self, client: &Client) {
        let t0 = Instant::now();
        loop {
            match client.get("/ready-probe") {
                Ok(_) => return,
                Err(e) if t0.elapsed() < Duration::from_secs(20) => {
                    let _ = e;
                    thread::sleep(Duration::from_millis(100));
                }
                Err(e) => panic!(
                    "etcd not ready after 20 s: {e}\n{}",
                    self.members.iter().map(Member::log).collect::<String>()
                ),
            }
        }
    }
}

fn cfg() -> Config {
    Config {
        connect_timeout: Duration::from_millis(500),
        request_timeout: Duration::from_secs(5),
    }
}

fn s(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn put_range_prefix_and_delete() {
    let Some(bin) = require_etcd("put_range_prefix_and_delete") else {
        return;
    };
    let etcd = Cluster::start(&bin, "kv", 1);
    let c = etcd.client();
    let r1 = c.put("/t/a/1", "one", 0).unwrap();
    let r2 = c.put("/t/a/2", "two", 0).unwrap();
    c.put("/t/b/1", "other", 0).unwrap();
    let r4 = c.put("/t/a/1", "uno", 0).unwrap();
    assert!(r1 < r2 && r2 < r4, "revisions grow: {r1} {r2} {r4}");

    let all = c.range(&Range::prefix("/t/a/")).unwrap();
    assert_eq!(all.revision, r4);
    let got: Vec<(String, String)> = all
        .kvs
        .iter()
        .map(|kv| (s(&kv.key), s(&kv.value)))
        .collect();
    assert_eq!(
        got,
        [
            ("/t/a/1".into(), "uno".into()),
            ("/t/a/2".into(), "two".into())
        ]
    );
    let one = &all.kvs[0];
    assert_eq!(
        (one.create_revision, one.mod_revision, one.version),
        (r1, r4, 2)
    );

    // A read at an older revision sees the older value.
    let old = c.range(&Range::key("/t/a/1").at(r2)).unwrap();
    assert_eq!(s(&old.kvs[0].value), "one");
    // Limit and count.
    let lim = c.range(&Range::prefix("/t/").limit(1)).unwrap();
    assert_eq!((lim.kvs.len(), lim.count, lim.more), (1, 3, true));

    let (rev, deleted) = c.delete(&KeyRange::prefix("/t/a/")).unwrap();
    assert_eq!(deleted, 2);
    assert!(rev > r4);
    assert_eq!(c.get("/t/a/1").unwrap().1, None);
    assert_eq!(s(&c.get("/t/b/1").unwrap().1.unwrap().value), "other");
}

/// Append `item` to the comma list at `key` with one compare-revision txn
/// per attempt; the number of attempts.
fn append(c: &Client, key: &str, item: &str) -> u32 {
    let mut attempts = 0;
    let (_, mut cur) = c.get(key).unwrap();
    loop {
        attempts += 1;
        let (rev, old) = match &cur {
            Some(kv) => (kv.mod_revision, s(&kv.value)),
            None => (0, String::new()),
        };
        let new = if old.is_empty() {
            item.to_owned()
        } else {
            format!("{old},{item}")
        };
        let t = Txn::new()
            .when([Compare::mod_revision(key, CompareOp::Equal, rev)])
            .and_then([Op::put(key, &new)])
            .or_else([Op::Range(Range::key(key))]);
        let r = c.txn(&t).unwrap();
        if r.succeeded {
            return attempts;
        }
        // The failure branch read the current value: retry on it.
        match &r.responses[..] {
            [OpResponse::Range(rr)] => cur = rr.kvs.first().cloned(),
            other => panic!("failure branch answered {other:?}"),
        }
        assert!(attempts < 1000, "no progress appending {item}");
    }
}

#[test]
fn txn_compare_revision_one_writer_wins_the_other_retries() {
    let Some(bin) = require_etcd("txn_compare_revision") else {
        return;
    };
    let etcd = Cluster::start(&bin, "txn", 1);
    let c = etcd.client();
    c.put("/t/list", "base", 0).unwrap();

    // Deterministic interleaving: both read, A commits, B's commit fails.
    let (_, a_view) = c.get("/t/list").unwrap();
    let (_, b_view) = c.get("/t/list").unwrap();
    let rev = a_view.unwrap().mod_revision;
    assert_eq!(rev, b_view.unwrap().mod_revision);
    let edit = |item: &str| {
        Txn::new()
            .when([Compare::mod_revision("/t/list", CompareOp::Equal, rev)])
            .and_then([Op::put("/t/list", format!("base,{item}"))])
            .or_else([Op::Range(Range::key("/t/list"))])
    };
    let a = c.txn(&edit("A")).unwrap();
    let b = c.txn(&edit("B")).unwrap();
    assert!(a.succeeded, "first writer wins");
    assert!(!b.succeeded, "second writer's compare fails");
    assert_eq!(b.revision, a.revision, "a failed txn writes nothing");
    let OpResponse::Range(now) = &b.responses[0] else {
        panic!("{:?}", b.responses)
    };
    assert_eq!(s(&now.kvs[0].value), "base,A");
    // B retries on what it read: both edits land.
    assert_eq!(append(&c, "/t/list", "B"), 1);
    assert_eq!(s(&c.get("/t/list").unwrap().1.unwrap().value), "base,A,B");

    // Create-if-absent: exactly one of two creators succeeds.
    let create = |v: &str| {
        Txn::new()
            .when([Compare::absent("/t/name")])
            .and_then([Op::put("/t/name", v)])
    };
    assert!(c.txn(&create("x")).unwrap().succeeded);
    assert!(!c.txn(&create("y")).unwrap().succeeded);
    assert_eq!(s(&c.get("/t/name").unwrap().1.unwrap().value), "x");

    // A range compare: "no key under the prefix" (InUse checks).
    let del_if_unused = Txn::new()
        .when([Compare::prefix_empty("/t/refs/sg-1/")])
        .and_then([Op::delete("/t/name")]);
    c.put("/t/refs/sg-1/i-1", "", 0).unwrap();
    assert!(
        !c.txn(&del_if_unused).unwrap().succeeded,
        "a reference remains"
    );
    c.put("/t/refs/sg-10", "", 0).unwrap(); // not under "/t/refs/sg-1/"
    c.delete(&KeyRange::key("/t/refs/sg-1/i-1")).unwrap();
    assert!(
        c.txn(&del_if_unused).unwrap().succeeded,
        "no reference left"
    );
    assert_eq!(c.get("/t/name").unwrap().1, None);

    // Two threads appending at once: nothing lost.
    let n = 15;
    let barrier = Arc::new(Barrier::new(2));
    let handles: Vec<_> = ["p", "q"]
        .into_iter()
        .map(|who| {
            let c = c.clone();
            let barrier = barrier.clone();
            thread::spawn(move || {
                barrier.wait();
                (0..n)
                    .map(|i| append(&c, "/t/conc", &format!("{who}{i}")))
                    .sum::<u32>()
            })
        })
        .collect();
    let attempts: u32 = handles.into_iter().map(|h| h.join().unwrap()).sum();
    let value = s(&c.get("/t/conc").unwrap().1.unwrap().value);
    let mut items: Vec<&str> = value.split(',').collect();
    items.sort();
    let mut want: Vec<String> = ["p", "q"]
        .iter()
        .flat_map(|w| (0..n).map(move |i| format!("{w}{i}")))
        .collect();
    want.sort();
    assert_eq!(items, want, "every append landed exactly once");
    eprintln!("concurrent appends: {} items, {attempts} attempts", 2 * n);
}

#[test]
fn watch_from_a_revision_sees_every_change_in_order() {
    let Some(bin) = require_etcd("watch_order") else {
        return;
    };
    let etcd = Cluster::start(&bin, "watch", 1);
    let c = etcd.client();
    c.put("/w/before", "x", 0).unwrap();
    let r = c.put("/other", "ignored", 0).unwrap();
    // Changes after R, some outside the prefix.
    c.put("/w/a", "1", 0).unwrap();
    c.put("/other", "ignored", 0).unwrap();
    c.put("/w/b", "2", 0).unwrap();
    let t = c
        .txn(&Txn::new().and_then([
            Op::put("/w/c", "3"),
            Op::put("/w/a", "4"),
            Op::delete("/w/before"),
        ]))
        .unwrap();
    c.delete(&KeyRange::key("/w/b")).unwrap();

    let mut w = c.watch(KeyRange::prefix("/w/"), r + 1).unwrap();
    let mut seen = Vec::new();
    let mut batches = Vec::new();
    let t0 = Instant::now();
    while seen.len() < 6 && t0.elapsed() < Duration::from_secs(10) {
        if let Some(b) = w.poll(Duration::from_millis(500)).unwrap() {
            assert_eq!(b.revision, b.events.last().unwrap().kv.mod_revision);
            batches.push(
                b.events
                    .iter()
                    .map(|e| e.kv.mod_revision)
                    .collect::<Vec<_>>(),
            );
            for e in b.events {
                seen.push((e.kind, s(&e.kv.key), s(&e.kv.value), e.kv.mod_revision));
            }
        }
    }
    let kinds: Vec<(EventKind, &str, &str)> = seen
        .iter()
        .map(|(k, key, v, _)| (*k, key.as_str(), v.as_str()))
        .collect();
    assert_eq!(
        kinds,
        [
            (EventKind::Put, "/w/a", "1"),
            (EventKind::Put, "/w/b", "2"),
            (EventKind::Put, "/w/c", "3"),
            (EventKind::Put, "/w/a", "4"),
            (EventKind::Delete, "/w/before", ""),
            (EventKind::Delete, "/w/b", ""),
        ]
    );
    let revs: Vec<i64> = seen.iter().map(|e| e.3).collect();
    assert!(
        revs.windows(2).all(|p| p[0] <= p[1]),
        "in revision order: {revs:?}"
    );
    // The txn's three changes share its revision and arrive in one batch.
    assert_eq!(&revs[2..5], &[t.revision; 3]);
    // Batches hold whole revisions: the txn's events never straddle two.
    let holding_txn: Vec<_> = batches.iter().filter(|b| b.contains(&t.revision)).collect();
    assert_eq!(holding_txn.len(), 1, "{batches:?}");
    assert_eq!(w.next_revision(), revs[5] + 1);

    // A change after the watch started arrives too.
    let r = c.put("/w/live", "5", 0).unwrap();
    let e = w.next().unwrap().unwrap();
    assert_eq!((s(&e.kv.key), e.kv.mod_revision), ("/w/live".into(), r));
}

#[test]
fn watch_resumes_after_the_server_restarts() {
    let Some(bin) = require_etcd("watch_resume") else {
        return;
    };
    let mut etcd = Cluster::start(&bin, "resume", 1);
    let c = etcd.client();
    let r0 = c.put("/r/start", "0", 0).unwrap();
    let mut w = c.watch(KeyRange::prefix("/r/"), r0 + 1).unwrap();
    let r1 = c.put("/r/k1", "1", 0).unwrap();
    let b = w.poll(Duration::from_secs(5)).unwrap().expect("k1 event");
    assert_eq!(b.revision, r1);

    etcd.members[0].kill();
    // The watch notices the loss: no batch, and reconnecting fails while down.
    let t0 = Instant::now();
    let mut saw_unreachable = false;
    while !saw_unreachable && t0.elapsed() < Duration::from_secs(10) {
        match w.poll(Duration::from_millis(300)) {
            Ok(None) => {}
            Ok(Some(b)) => panic!("event from a dead server: {b:?}"),
            Err(e) => {
                assert!(e.is_unavailable(), "{e}");
                assert!(e.to_string().contains("unreachable"), "{e}");
                saw_unreachable = true;
            }
        }
    }
    assert!(saw_unreachable, "watch never noticed the server died");
    // Edits fail fast while etcd is down.
    let t0 = Instant::now();
    let err = c.put("/r/down", "x", 0).unwrap_err();
    assert!(
        t0.elapsed() < Duration::from_secs(2),
        "took {:?}",
        t0.elapsed()
    );
    assert!(
        err.to_string()
            .starts_with(&format!("etcd at {} unreachable", etcd.members[0].url())),
        "{err}"
    );

    etcd.members[0].start();
    etcd.wait_ready(&c);
    // Changes made before the watch reconnects must still arrive, once each.
    let r2 = c.put("/r/k2", "2", 0).unwrap();
    let r3 = c.put("/r/k3", "3", 0).unwrap();
    let mut got = Vec::new();
    let t0 = Instant::now();
    while got.len() < 2 && t0.elapsed() < Duration::from_secs(15) {
        match w.poll(Duration::from_millis(500)) {
            Ok(Some(b)) => got.extend(
                b.events
                    .into_iter()
                    .map(|e| (s(&e.kv.key), e.kv.mod_revision)),
            ),
            Ok(None) => {}
            Err(e) => assert!(e.is_unavailable(), "{e}"),
        }
    }
    assert_eq!(got, [("/r/k2".to_owned(), r2), ("/r/k3".to_owned(), r3)]);
    assert_eq!(w.connected_to(), Some(etcd.members[0].url().as_str()));
}

#[test]
fn compaction_past_a_watchers_revision_is_reported() {
    let Some(bin) = require_etcd("watch_compacted") else {
        return;
    };
    let mut etcd = Cluster::start(&bin, "compact", 1);
    let c = etcd.client();
    let r0 = c.put("/c/a", "1", 0).unwrap();
    c.put("/c/a", "2", 0).unwrap();
    let r2 = c.put("/c/a", "3", 0).unwrap();
    c.compact(r2, true).unwrap();

    // A watch from before the compaction.
    let err = c
        .watch(KeyRange::prefix("/c/"), r0)
        .and_then(|mut w| w.poll(Duration::from_secs(5)))
        .unwrap_err();
    match err {
        EtcdError::Compacted {
            requested,
            compact_revision,
        } => {
            assert_eq!((requested, compact_revision), (r0, r2));
        }
        e => panic!("expected Compacted, got {e}"),
    }
    // A read at a compacted revision.
    match c.range(&Range::key("/c/a").at(r0)).unwrap_err() {
        EtcdError::Compacted { requested, .. } => assert_eq!(requested, r0),
        e => panic!("expected Compacted, got {e}"),
    }

    // A paused watcher (disconnected while etcd restarts) whose resume point
    // is compacted meanwhile: told so, and the iterator ends.
    let mut w = c.watch(KeyRange::prefix("/c/"), r2 + 1).unwrap();
    let r3 = c.put("/c/b", "x", 0).unwrap();
    assert_eq!(
        w.poll(Duration::from_secs(5)).unwrap().unwrap().revision,
        r3
    );
    etcd.members[0].kill();
    let _ = w.poll(Duration::from_millis(300));
    etcd.members[0].start();
    etcd.wait_ready(&c);
    c.put("/c/b", "y", 0).unwrap();
    let r5 = c.put("/c/b", "z", 0).unwrap();
    c.compact(r5, true).unwrap();
    let t0 = Instant::now();
    let err = loop {
        match w.poll(Duration::from_millis(500)) {
            Err(e @ EtcdError::Compacted { .. }) => break e,
            Err(e) if e.is_unavailable() => {}
            other => assert!(
                t0.elapsed() < Duration::from_secs(15),
                "no compaction seen: {other:?}"
            ),
        }
        assert!(t0.elapsed() < Duration::from_secs(15), "no compaction seen");
    };
    let EtcdError::Compacted {
        requested,
        compact_revision,
    } = err
    else {
        unreachable!()
    };
    assert_eq!((requested, compact_revision), (r3 + 1, r5));
    assert!(err.to_string().contains("re-read everything"), "{err}");
    assert!(w.next().is_none(), "a compacted watch is over");
}

#[test]
fn lease_expiry_deletes_the_key_and_revoke_deletes_at_once() {
    let Some(bin) = require_etcd("lease") else {
        return;
    };
    let etcd = Cluster::start(&bin, "lease", 1);
    let c = etcd.client();
    let lease = c.lease_grant(2).unwrap();
    assert!(lease.id != 0 && lease.ttl >= 2, "{lease:?}");
    c.put("/l/host", "alive", lease.id).unwrap();
    assert_eq!(c.get("/l/host").unwrap().1.unwrap().lease, lease.id);
    // Kept alive past its TTL, the key stays.
    for _ in 0..4 {
        thread::sleep(Duration::from_millis(700));
        assert!(c.lease_keepalive(lease.id).unwrap() > 0);
    }
    assert!(
        c.get("/l/host").unwrap().1.is_some(),
        "kept-alive key vanished"
    );
    assert!(c.lease_ttl(lease.id).unwrap() > 0);
    // Not kept alive: etcd deletes it.
    let t0 = Instant::now();
    while c.get("/l/host").unwrap().1.is_some() {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "lease never expired"
        );
        thread::sleep(Duration::from_millis(100));
    }
    let waited = t0.elapsed();
    assert!(
        waited >= Duration::from_secs(1),
        "expired too early: {waited:?}"
    );
    assert!(
        matches!(c.lease_keepalive(lease.id), Err(EtcdError::LeaseNotFound { id }) if id == lease.id)
    );
    assert!(matches!(
        c.lease_ttl(lease.id),
        Err(EtcdError::LeaseNotFound { .. })
    ));

    let l2 = c.lease_grant(60).unwrap();
    c.put("/l/other", "x", l2.id).unwrap();
    c.lease_revoke(l2.id).unwrap();
    assert_eq!(c.get("/l/other").unwrap().1, None);
    assert!(matches!(c.lease_revoke(l2.id), Err(EtcdError::LeaseNotFound { id }) if id == l2.id));
}

#[test]
fn unreachable_endpoint_errors_fast() {
    // Nothing listens: connection refused at once.
    let port = free_port();
    let c = Client::new(&format!("http://127.0.0.1:{port}"), cfg()).unwrap();
    let t0 = Instant::now();
    let err = c.put("/k", "v", 0).unwrap_err();
    assert!(
        t0.elapsed() < Duration::from_millis(500),
        "took {:?}",
        t0.elapsed()
    );
    let msg = err.to_string();
    assert!(
        msg.starts_with(&format!("etcd at http://127.0.0.1:{port} unreachable: ")),
        "{msg}"
    );
    assert_eq!(err.code(), "ServiceUnavailable");
    let api: mgmt::api::ApiError = err.into();
    assert_eq!(api.code, "ServiceUnavailable");
    assert!(
        c.watch(KeyRange::prefix("/"), 1)
            .unwrap_err()
            .is_unavailable()
    );
}

#[test]
fn unreachable_silent_endpoint_times_out() {
    // A listener that accepts (kernel backlog) but never answers.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", silent.local_addr().unwrap());
    let c = Client::new(
        &url,
        Config {
            connect_timeout: Duration::from_millis(300),
            request_timeout: Duration::from_millis(300),
        },
    )
    .unwrap();
    let t0 = Instant::now();
    let err = c.range(&Range::key("/k")).unwrap_err();
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_millis(1500),
        "took {took:?}"
    );
    assert!(err.is_unavailable(), "{err}");
    // A write that went out and got no answer: its outcome is unknown.
    let err = c.put("/k", "v", 0).unwrap_err();
    assert!(err.to_string().contains("outcome is unknown"), "{err}");
    drop(silent);
}

#[test]
fn second_endpoint_is_used_when_the_first_is_down() {
    let Some(bin) = require_etcd("second_endpoint") else {
        return;
    };
    let etcd = Cluster::start(&bin, "failover", 1);
    let dead = format!("http://127.0.0.1:{}", free_port());
    let c = Client::new(&format!("{dead},{}", etcd.urls()), cfg()).unwrap();
    let t0 = Instant::now();
    let rev = c.put("/f/k", "v", 0).unwrap();
    assert!(
        t0.elapsed() < Duration::from_millis(500),
        "took {:?}",
        t0.elapsed()
    );
    assert_eq!(c.get("/f/k").unwrap().0, rev);
    let mut w = c.watch(KeyRange::prefix("/f/"), rev).unwrap();
    assert_eq!(w.connected_to(), Some(etcd.urls().as_str()));
    assert_eq!(
        w.poll(Duration::from_secs(5)).unwrap().unwrap().revision,
        rev
    );
}

#[test]
fn three_members_one_killed_nothing_noticed() {
    let Some(bin) = require_etcd("three_members") else {
        return;
    };
    let mut etcd = Cluster::start(&bin, "three", 3);
    // The members agree on a leader; the client talks to a follower first.
    let statuses: Vec<_> = etcd
        .members
        .iter()
        .map(|m| Client::new(&m.url(), cfg()).unwrap().status().unwrap())
        .collect();
    let leader = statuses[0].leader;
    assert!(
        statuses
            .iter()
            .all(|st| st.leader == leader && st.version.starts_with("3.")),
        "{statuses:?}"
    );
    let follower = statuses
        .iter()
        .position(|st| st.member_id != leader)
        .unwrap();
    let mut order = vec![etcd.members[follower].url()];
    let first = order[0].clone();
    order.extend(etcd.members.iter().map(Member::url).filter(|u| *u != first));
    let c = Client::new(&order.join(","), cfg()).unwrap();
    let r0 = c.put("/m/k", "0", 0).unwrap();
    let mut w = c.watch(KeyRange::prefix("/m/"), r0 + 1).unwrap();
    assert_eq!(w.connected_to(), Some(order[0].as_str()));
    // Kill the follower the client and the watch use.
    etcd.members[follower].kill();
    let mut revs = Vec::new();
    for i in 1..=5 {
        let t0 = Instant::now();
        revs.push(c.put("/m/k", i.to_string(), 0).unwrap());
        assert!(
            t0.elapsed() < Duration::from_secs(1),
            "put {i} took {:?}",
            t0.elapsed()
        );
    }
    let mut got = Vec::new();
    let t0 = Instant::now();
    while got.len() < 5 && t0.elapsed() < Duration::from_secs(20) {
        match w.poll(Duration::from_millis(500)) {
            Ok(Some(b)) => got.extend(b.events.iter().map(|e| e.kv.mod_revision)),
            Ok(None) => {}
            Err(e) => assert!(e.is_unavailable(), "{e}"),
        }
    }
    assert_eq!(
        got, revs,
        "the watch moved to a live member and lost nothing"
    );
    assert_ne!(w.connected_to(), Some(order[0].as_str()));
}

#[test]
fn lease_keeper_keeps_the_key_and_revokes_on_drop() {
    let Some(bin) = require_etcd("lease_keeper") else {
        return;
    };
    let etcd = Cluster::start(&bin, "keeper", 1);
    let c = etcd.client();
    let keeper = LeaseKeeper::start(&c, 2).unwrap();
    c.put("/h/host1", "underlay", keeper.id()).unwrap();
    // Three TTLs later the key is still there.
    thread::sleep(Duration::from_secs(6));
    assert!(c.get("/h/host1").unwrap().1.is_some(), "kept lease expired");
    assert!(!keeper.is_lost());
    drop(keeper);
    assert_eq!(c.get("/h/host1").unwrap().1, None, "revoked on drop");
}

#[test]
fn range_all_pages_at_one_revision_and_watch_latency() {
    let Some(bin) = require_etcd("range_all") else {
        return;
    };
    let etcd = Cluster::start(&bin, "pages", 1);
    let c = etcd.client();
    for i in 0..25 {
        c.put(format!("/p/k{i:02}"), i.to_string(), 0).unwrap();
    }
    let r = c.put("/p/k00", "changed", 0).unwrap();
    c.put("/q/outside", "x", 0).unwrap();
    // Pinned to an older revision: the value before the change, 25 keys.
    let old = c.range_all("/p/", r - 1, 10).unwrap();
    assert_eq!((old.revision, old.kvs.len()), (r - 1, 25));
    assert_eq!(s(&old.kvs[0].value), "0");
    let keys: Vec<String> = old.kvs.iter().map(|kv| s(&kv.key)).collect();
    let want: Vec<String> = (0..25).map(|i| format!("/p/k{i:02}")).collect();
    assert_eq!(keys, want, "every key once, in order");
    let now = c.range_all("/p/", 0, 7).unwrap();
    assert_eq!(
        (now.kvs.len(), s(&now.kvs[0].value).as_str()),
        (25, "changed")
    );

    // Put → watch event on loopback (a measurement, printed; not asserted).
    let mut w = c
        .watch(KeyRange::prefix("/lat/"), now.revision + 1)
        .unwrap();
    let mut lat = Vec::new();
    for i in 0..200 {
        let t0 = Instant::now();
        let rev = c.put("/lat/k", i.to_string(), 0).unwrap();
        let put = t0.elapsed();
        let b = w.poll(Duration::from_secs(5)).unwrap().expect("event");
        assert_eq!(b.revision, rev);
        lat.push((put, t0.elapsed()));
    }
    let mut puts: Vec<Duration> = lat.iter().map(|l| l.0).collect();
    let mut seen: Vec<Duration> = lat.iter().map(|l| l.1).collect();
    puts.sort();
    seen.sort();
    eprintln!(
        "etcd put: p50 {:?} p99 {:?}; put -> watch event: p50 {:?} p99 {:?} (200 edits, loopback)",
        puts[100], puts[198], seen[100], seen[198]
    );
}

/// The create-group txn of docs/cluster.md §4.3: name absent, counter at the
/// revision read; puts group, name, counter. `Ok(false)`: lost the race.
fn create_group(c: &Client, m: &Mirror, name: &str) -> bool {
    let owner = Owner("111122223333".into());
    let counter_key = format!("{MODEL}counters/next_group_seq");
    let (seq, counter_rev) = match m.get(&counter_key) {
        Some(Stored {
            entry: Entry::Counter { value, .. },
            mod_revision,
            ..
        }) => (*value, *mod_revision),
        _ => (1, 0),
    };
    let id = format!("sg-{seq:08x}");
    let entries = [
        Entry::Group {
            id: id.clone(),
            record: GroupRecord {
                owner: owner.clone(),
                name: name.into(),
                description: String::new(),
                rules: Vec::new(),
                egress: filter::model::default_egress(),
            },
        },
        Entry::Name {
            owner: owner.clone(),
            name: name.into(),
            group_id: id,
        },
        Entry::Counter {
            name: "next_group_seq".into(),
            value: seq + 1,
        },
    ];
    let txn = Txn::new()
        .when([
            Compare::absent(keys::name_key(&owner, name)),
            Compare::mod_revision(&counter_key, CompareOp::Equal, counter_rev),
        ])
        .and_then(entries.iter().map(|e| {
            let (k, v) = e.encode();
            Op::put(k, v)
        }));
    c.txn(&txn).unwrap().succeeded
}

#[test]
fn mirror_reads_at_r_then_follows_the_watch() {
    let Some(bin) = require_etcd("mirror") else {
        return;
    };
    let etcd = Cluster::start(&bin, "mirror", 1);
    let c = etcd.client();
    // Two daemons' views at the same revision; both try to create "web".
    let read = c.range_all(MODEL, 0, 100).unwrap();
    let mut a = Mirror::from_range(&read).unwrap();
    let b = Mirror::from_range(&read).unwrap();
    let mut w = c.watch(KeyRange::prefix(MODEL), a.revision() + 1).unwrap();
    assert!(create_group(&c, &a, "web"));
    assert!(
        !create_group(&c, &b, "web"),
        "stale view: the txn must fail"
    );
    // A follows its watch and sees its own edit.
    let batch = w.poll(Duration::from_secs(5)).unwrap().unwrap();
    assert_eq!(batch.events.len(), 3, "one txn, one batch");
    a.apply(&batch).unwrap();
    assert!(create_group(&c, &a, "db"), "up to date: succeeds");
    a.apply(&w.poll(Duration::from_secs(5)).unwrap().unwrap())
        .unwrap();
    // The mirror equals a fresh read.
    let fresh = Mirror::from_range(&c.range_all(MODEL, 0, 2).unwrap()).unwrap();
    assert_eq!(a.loaded(), fresh.loaded());
    assert_eq!(a.revision(), fresh.revision());
    let names: Vec<String> = a
        .loaded()
        .groups
        .into_iter()
        .map(|g| g.id + ":" + &g.name)
        .collect();
    assert_eq!(names, ["sg-00000002:db", "sg-00000001:web"]);
    // A foreign key under the model prefix is refused, naming it.
    c.put(format!("{MODEL}bogus/x"), "1", 0).unwrap();
    let e = a
        .apply(&w.poll(Duration::from_secs(5)).unwrap().unwrap())
        .unwrap_err();
    assert!(e.to_string().contains("bogus/x"), "{e}");
}
