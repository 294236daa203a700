//! Restart under load (issue 7 part 5): `kill -9` of the daemon while a TCP
//! stream and UDP packets flow and a client keeps editing; then a restart on the
//! same state dir.
//!
//! * Every acknowledged edit is present afterwards; an unacknowledged one (the
//!   edit in flight at the kill, or one the dying process still accepted) may be
//!   present or absent, but never half-applied (each edit adds or removes a
//!   *pair* of rules in one transaction).
//! * Traffic resumes: the UDP packets (a new 5-tuple each, allowed by a fixed
//!   rule) are judged by the oracle of `e2e::load` with the outage as the only
//!   unknown — every packet sent after the restarted daemon said ready arrives
//!   (the switch runs two workers, so a packet lost just before the kill has no
//!   bound on when it was judged and is not held against it); the TCP stream
//!   that was running before the kill
//!   carries on (mid-stream pickup); new connections work; the edited rules are
//!   enforced (a probe gets a RST from the instance where a rule is present, no
//!   answer where it was revoked).
//!
//! The test prints how long each kind of traffic stopped. Needs root (skips
//! without).

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use e2e::ec2out::parse_describe_group;
use e2e::load::{
    ApiConn, EditWindow, Order, SendPlan, Timeline, UdpReceiver, UdpSender, judge, mono_ns,
    pin_neighbour, port_spec,
};
use e2e::{Lab, LabConfig, OUTSIDE, OUTSIDE2, PermSource, Reach};
use serde_json::json;

const TCP_PORT: u16 = 7000;
const UDP_PORT: u16 = 7001;
/// Edit `i` authorizes tcp `EDIT_BASE + i` (or revokes an earlier one).
const EDIT_BASE: u16 = 10000;
const MAX_EDITS: u16 = 3000;
const UDP_RATE: u64 = 500;
/// The old TCP stream must carry on this soon after the restarted daemon is
/// ready (TCP retransmits with exponential backoff: after an outage of about a
/// second the next retransmission may come ~1.5 s after ready).
const RESUME_WITHIN: Duration = Duration::from_secs(6);

/// One edit the client sent.
#[derive(Clone, Debug)]
struct Edit {
    port: u16,
    authorize: bool,
    /// Answered `ok` (acknowledged) — else it was in flight when the daemon died.
    acked: bool,
    /// Why an unacknowledged edit failed, and when (ns).
    failure: Option<(String, u64)>,
}

/// Run edits until `stop`: authorize a new port (both outside /32s in one edit);
/// every third edit revokes the previous edit's port if that one was
/// acknowledged. A failed call marks the edit in flight (unacknowledged) and the
/// client reconnects until the daemon is back.
fn editor(socket: std::path::PathBuf, stop: Arc<AtomicBool>) -> (Vec<Edit>, Vec<u64>) {
    let cidrs = vec![format!("{OUTSIDE}/32"), format!("{OUTSIDE2}/32")];
    let mut log: Vec<Edit> = Vec::new();
    let mut acks = Vec::new();
    let mut conn: Option<ApiConn> = None;
    let mut i = 0u16;
    while !stop.load(Ordering::Relaxed) && i < MAX_EDITS {
        let Some(c) = conn.as_mut() else {
            conn = ApiConn::connect(&socket).ok();
            if conn.is_none() {
                thread::sleep(Duration::from_millis(10));
            }
            continue;
        };
        let revoke = i % 3 == 2 && log.last().is_some_and(|e| e.acked && e.authorize);
        let (port, op) = if revoke {
            (log.last().map_or(0, |e| e.port), "revoke")
        } else {
            (EDIT_BASE + i, "authorize")
        };
        let cmd = json!({"op": op, "group": "svc", "spec": port_spec("tcp", port, &cidrs)});
        let edit = match c.call(None, cmd) {
            Ok(t) => {
                if let Err((code, m)) = &t.answer {
                    panic!("edit {i} ({op} tcp {port}): {code}: {m}");
                }
                acks.push(t.acked_ns);
                Edit {
                    port,
                    authorize: !revoke,
                    acked: true,
                    failure: None,
                }
            }
            Err(e) => {
                conn = None;
                Edit {
                    port,
                    authorize: !revoke,
                    acked: false,
                    failure: Some((e.to_string(), mono_ns())),
                }
            }
        };
        log.push(edit);
        i += 1;
    }
    (log, acks)
}

#[test]
fn acknowledged_edits_survive_kill_9_under_load_and_traffic_resumes() {
    // Each edit adds two rules to one group: lift the 100-rule default.
    let cfg = LabConfig::new("restart-load")
        .arg("--rules-per-group")
        .arg("10000");
    let Some(lab) = Lab::start(cfg) else {
        return;
    };
    let wall = Instant::now();
    let me = vec![format!("{OUTSIDE}/32")];
    let mut api = ApiConn::connect(&lab.socket).unwrap_or_else(|e| panic!("{e}"));
    api.ok(
        None,
        json!({"op": "add-group", "name": "svc", "description": "restart under load"}),
    );
    for (proto, port) in [("tcp", TCP_PORT), ("udp", UDP_PORT)] {
        api.ok(
            None,
            json!({"op": "authorize", "group": "svc", "spec": port_spec(proto, port, &me)}),
        );
    }
    let d = lab.run_instances(1, &["svc"]).remove(0);
    let shown = api.ok(None, json!({"op": "describe-instances", "ids": [d.id]}));
    let mac = shown["reservations"][0]["instances"][0]["mac"]
        .as_str()
        .unwrap_or_else(|| panic!("no mac in {shown}"))
        .to_string();
    drop(api);
    pin_neighbour(&lab.uplink_ns, &lab.uplink_if, d.ip, &mac);
    lab.listen(&d.netns, &[TCP_PORT]);
    let receiver = UdpReceiver::start(&d.netns, &[UDP_PORT], 60);
    let sender = UdpSender::start(&SendPlan {
        ns: lab.uplink_ns.clone(),
        from: OUTSIDE,
        dst: d.ip,
        ports: vec![UDP_PORT],
        rate: UDP_RATE,
        count: UDP_RATE * 10,
        secs: 12,
        sport_base: 2000,
        id: 1,
    });
    let stream = lab.stream(&lab.uplink_ns, d.ip, TCP_PORT, 15);

    let stop = Arc::new(AtomicBool::new(false));
    let edits = {
        let (socket, stop) = (lab.socket.clone(), Arc::clone(&stop));
        thread::spawn(move || editor(socket, stop))
    };
    thread::sleep(Duration::from_millis(1500));
    assert!(stream.oks().len() >= 50, "the stream does not flow");

    // The crash: the outage is [kill sent, restarted daemon ready].
    let crash_ns = mono_ns();
    let crash_at = Instant::now();
    lab.crash_daemon();
    let reaped_ns = mono_ns();
    thread::sleep(Duration::from_millis(300));
    let restart_ns = mono_ns();
    lab.start_daemon();
    let ready_ns = mono_ns();
    let ready_at = Instant::now();
    // Edits and traffic go on for 2 s after ready, longer (up to RESUME_WITHIN)
    // while the TCP stream waits for its retransmission timer.
    while ready_at.elapsed() < Duration::from_secs(2)
        || (stream.oks_after(crash_at) == 0 && ready_at.elapsed() < RESUME_WITHIN)
    {
        thread::sleep(Duration::from_millis(50));
    }
    stop.store(true, Ordering::Relaxed);
    let (log, acks) = edits.join().expect("editor thread");
    let (sent, failed) = sender.finish(Duration::from_secs(20));
    thread::sleep(Duration::from_millis(300));
    let (received, bad) = receiver.finish();

    // --- Every acknowledged edit is there, the one in flight all or nothing.
    let in_flight: Vec<&Edit> = log.iter().filter(|e| !e.acked).collect();
    // Unacknowledged: the edit in flight at the kill, and any sent to the dying
    // process (its socket accepts until the kernel has torn it down). All fail
    // inside the outage.
    assert!(
        in_flight.len() <= 5,
        "{} edits failed: {in_flight:?}",
        in_flight.len()
    );
    for e in &in_flight {
        let at = e.failure.as_ref().map_or(0, |f| f.1);
        assert!(
            (crash_ns..=ready_ns).contains(&at),
            "an edit failed outside the outage [{crash_ns}, {ready_ns}]: {e:?}"
        );
    }
    let acked_before = acks.iter().filter(|&&t| t < crash_ns).count();
    let acked_after = acks.iter().filter(|&&t| t > ready_ns).count();
    assert!(
        acked_before >= 20,
        "only {acked_before} edits before the kill"
    );
    assert!(
        acked_after >= 20,
        "only {acked_after} edits after the restart"
    );
    let mut expect: BTreeSet<u16> = [TCP_PORT].into_iter().collect();
    for e in log.iter().filter(|e| e.acked) {
        if e.authorize {
            expect.insert(e.port);
        } else {
            expect.remove(&e.port);
        }
    }
    let out = lab.cli_ok(&["describe-group", "svc"]);
    let groups = parse_describe_group(&out).unwrap_or_else(|e| panic!("{e}"));
    let mut by_port: BTreeMap<(String, u16), BTreeSet<String>> = BTreeMap::new();
    for p in &groups[0].1 {
        let PermSource::Cidr(c) = &p.source else {
            panic!("unexpected group source in {out}");
        };
        let port: u16 = p.ports.0.parse().unwrap_or_else(|_| panic!("{out}"));
        assert_eq!(p.ports.0, p.ports.1, "{out}");
        by_port
            .entry((p.proto.clone(), port))
            .or_default()
            .insert(c.clone());
    }
    let pair: BTreeSet<String> = [format!("{OUTSIDE}/32"), format!("{OUTSIDE2}/32")].into();
    let single: BTreeSet<String> = [format!("{OUTSIDE}/32")].into();
    assert_eq!(
        by_port.remove(&("udp".into(), UDP_PORT)),
        Some(single.clone())
    );
    assert_eq!(by_port.get(&("tcp".into(), TCP_PORT)), Some(&single));
    let mut present: BTreeSet<u16> = BTreeSet::new();
    for ((proto, port), cidrs) in &by_port {
        assert_eq!(proto, "tcp", "{out}");
        if *port != TCP_PORT {
            assert_eq!(cidrs, &pair, "tcp {port} half-applied:\n{out}");
        }
        present.insert(*port);
    }
    // Each unacknowledged edit may or may not have been applied (as a whole).
    let diff: BTreeSet<u16> = present.symmetric_difference(&expect).copied().collect();
    let allowed_diff: BTreeSet<u16> = in_flight.iter().map(|e| e.port).collect();
    let applied = in_flight
        .iter()
        .filter(|e| present.contains(&e.port) == e.authorize)
        .count();
    assert!(
        diff.is_subset(&allowed_diff),
        "rules differ from the acknowledged edits on ports {diff:?} (in flight: {in_flight:?})\n{out}"
    );

    // --- UDP: exact oracle, the outage the only unknown window.
    let udp_rule = Timeline::new(
        true,
        vec![
            EditWindow {
                allow: false,
                sent_ns: crash_ns,
                acked_ns: reaped_ns,
            },
            EditWindow {
                allow: true,
                sent_ns: restart_ns,
                acked_ns: ready_ns,
            },
        ],
    );
    let j = judge(&sent, &received, Order::Unordered, |_, _| &udp_rule);
    assert!(
        j.clean(),
        "UDP around the restart: {} lost although sent outside the outage (first {:?}), {} unexpected",
        j.dropped_allowed.len(),
        j.dropped_allowed.first(),
        j.unexpected.len()
    );
    assert_eq!(bad, 0);
    let after_ready = sent.iter().filter(|s| s.sent_ns > ready_ns).count();
    assert!(
        after_ready >= 200,
        "only {after_ready} UDP packets sent after ready"
    );
    // How long UDP stopped: the longest silence between two arrivals.
    let mut arrivals: Vec<u64> = received.iter().map(|r| r.recv_ns).collect();
    arrivals.sort_unstable();
    let udp_gap = arrivals.windows(2).map(|w| w[1] - w[0]).max().unwrap_or(0);
    let first_after = received
        .iter()
        .filter(|r| r.sent_ns > crash_ns)
        .map(|r| r.recv_ns)
        .min()
        .unwrap_or_else(|| panic!("no UDP packet arrived after the restart"));
    assert!(
        first_after < ready_ns + 1_000_000_000,
        "UDP resumed only {} ms after ready",
        (first_after - ready_ns) / 1_000_000
    );

    // --- TCP: the old stream carries on, new connections work, rules enforced.
    let resumed = stream
        .oks()
        .into_iter()
        .filter(|&t| t > crash_at)
        .min()
        .unwrap_or_else(|| panic!("the TCP stream never resumed after the restart"));
    let stopped_tcp = stream
        .oks()
        .into_iter()
        .filter(|&t| t <= crash_at)
        .max()
        .map_or(Duration::ZERO, |last| resumed - last);
    assert!(
        resumed < ready_at + RESUME_WITHIN,
        "the TCP stream resumed {:?} after ready",
        resumed - ready_at
    );
    assert_eq!(lab.connect(&lab.uplink_ns, d.ip, TCP_PORT), Reach::Open);
    let mut targets: Vec<(Ipv4Addr, u16)> = Vec::new();
    let mut want = Vec::new();
    for p in present.iter().filter(|&&p| p != TCP_PORT).rev().take(40) {
        targets.push((d.ip, *p));
        want.push(Reach::Refused);
    }
    let revoked: Vec<u16> = log
        .iter()
        .filter(|e| e.acked && !e.authorize && !present.contains(&e.port))
        .map(|e| e.port)
        .collect();
    for p in revoked.iter().rev().take(20) {
        targets.push((d.ip, *p));
        want.push(Reach::Timeout);
    }
    let got = lab.probe(&lab.uplink_ns, None, &targets, Duration::from_millis(1000));
    assert_eq!(got, want, "reachability of the edited ports {targets:?}");

    println!(
        "restart-under-load: {} edits ({acked_before} acknowledged before the kill, {acked_after} after the restart, {} unacknowledged: {:?}); \
         {applied} of them applied; daemon down {:.0} ms (kill to ready; {:.0} ms from start to ready); UDP stopped {:.0} ms (longest silence between arrivals), {} of {} packets arrived ({failed} send failures), \
         {} lost in the outage; TCP stream gap {:.0} ms, resumed {:.0} ms after ready; test wall time {:.1} s",
        log.len(),
        in_flight.len(),
        in_flight.iter().map(|e| e.port).collect::<Vec<_>>(),
        (ready_ns - crash_ns) as f64 / 1e6,
        (ready_ns - restart_ns) as f64 / 1e6,
        udp_gap as f64 / 1e6,
        j.received,
        j.sent,
        j.sent - j.received,
        stopped_tcp.as_secs_f64() * 1000.0,
        resumed.saturating_duration_since(ready_at).as_secs_f64() * 1000.0,
        wall.elapsed().as_secs_f64()
    );
}
