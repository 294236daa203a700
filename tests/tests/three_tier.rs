//! The seed's "Three Tier Web Service", end to end: groups `web`, `app`, `db`;
//! 7 + 20 + 2 namespace instances (29 namespaces, created through the CLI, timed);
//! `web` takes tcp/80 from anywhere, `app` takes tcp/8080 only from `web`, `db`
//! takes tcp/5432 from `app` and everything from its own members. Checked with
//! real TCP connects over a sample of (source, destination, port) triples, and
//! with nmap from the outside. Every instance listens on every tier's port, so
//! only the rules decide. `sgswitch trace` of every sampled triple must give
//! the verdict the real connect got (and name the rule when it is allowed).
//! Needs root (skips without).

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use e2e::ec2out::{Permission, parse_describe_group, parse_edit_output};
use e2e::{Lab, LabConfig, LabInstance, OUTSIDE, PortState, Reach};

const WEB: u16 = 80;
const APP: u16 = 8080;
const DB: u16 = 5432;
const SSH: u16 = 22;
const PORTS: [u16; 4] = [WEB, APP, DB, SSH];
/// An outside service the instances may connect out to (egress is free).
const OUTSIDE_PORT: u16 = 9000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tier {
    Outside,
    Web,
    App,
    Db,
}

/// The policy under test: may `src` open `port` on an instance of `dst`?
fn allowed(src: Tier, dst: Tier, port: u16) -> bool {
    match dst {
        Tier::Web => port == WEB,
        Tier::App => port == APP && src == Tier::Web,
        Tier::Db => (port == DB && src == Tier::App) || src == Tier::Db,
        Tier::Outside => unreachable!(),
    }
}

#[test]
fn three_tier_web_service() {
    let Some(lab) = Lab::start(LabConfig::new("three-tier")) else {
        return;
    };
    for (g, d) in [
        ("web", "web tier"),
        ("app", "application tier"),
        ("db", "database tier"),
    ] {
        let out = lab.cli_ok(&["add-group", g, "-d", d]);
        assert_eq!(
            out.lines().next(),
            Some(format!("GROUP\t{g}\t{d}").as_str()),
            "{out}"
        );
    }
    let owner = parse_describe_group(&lab.cli_ok(&["describe-group", "web"])).unwrap()[0]
        .0
        .owner
        .clone();

    let out = lab.cli_ok(&[
        "authorize",
        "web",
        "-P",
        "tcp",
        "-p",
        "80",
        "-s",
        "0.0.0.0/0",
    ]);
    assert_eq!(
        parse_edit_output(&out, "web").unwrap(),
        vec![Permission::cidr("web", "tcp", "80", "80", "0.0.0.0/0")]
    );
    let out = lab.cli_ok(&[
        "authorize",
        "app",
        "-P",
        "tcp",
        "-p",
        "8080",
        "-o",
        "web",
        "-u",
        &owner,
    ]);
    assert_eq!(
        parse_edit_output(&out, "app").unwrap(),
        vec![Permission::group(
            "app", "tcp", "8080", "8080", &owner, "web"
        )]
    );
    lab.cli_ok(&[
        "authorize",
        "db",
        "-P",
        "tcp",
        "-p",
        "5432",
        "-o",
        "app",
        "-u",
        &owner,
    ]);
    // 2006 style: a group rule without protocol means all traffic.
    let out = lab.cli_ok(&["authorize", "db", "-o", "db", "-u", &owner]);
    assert_eq!(
        parse_edit_output(&out, "db").unwrap(),
        vec![Permission::group("db", "all", "", "", &owner, "db")]
    );
    let out = lab.cli_ok(&["describe-group", "web", "app", "db"]);
    let groups = parse_describe_group(&out).unwrap();
    let names: Vec<&str> = groups.iter().map(|(g, _)| g.name.as_str()).collect();
    assert_eq!(names, ["web", "app", "db"], "{out}");
    assert_eq!(groups[2].1.len(), 2, "{out}");

    // 29 namespace instances, timed.
    let t = Instant::now();
    let web = lab.run_instances(7, &["web"]);
    let app = lab.run_instances(20, &["app"]);
    let db = lab.run_instances(2, &["db"]);
    let took = t.elapsed();
    let per_ms = took.as_secs_f64() * 1000.0 / 29.0;
    println!("run-instances: 29 instances in {took:?} ({per_ms:.1} ms per instance)");
    assert!(per_ms < 1000.0, "{per_ms:.0} ms per instance");
    let all: Vec<&LabInstance> = web.iter().chain(&app).chain(&db).collect();
    let mut ips: Vec<Ipv4Addr> = all.iter().map(|i| i.ip).collect();
    ips.sort();
    ips.dedup();
    assert_eq!(ips.len(), 29, "instances share addresses");
    assert!(all.iter().all(|i| i.state == "running"));
    let listed = lab.cli_ok(&["describe-instances"]);
    for i in &all {
        assert!(
            listed.contains(&format!("\t{}\t", i.id)),
            "{} not described",
            i.id
        );
    }

    for i in &all {
        lab.listen(&i.netns, &PORTS);
    }
    lab.listen(&lab.uplink_ns, &[OUTSIDE_PORT]);

    // Sampled destinations: three web, three app (first, middle, last), both db.
    let dests: Vec<(Tier, &LabInstance)> = [
        (Tier::Web, &web[0]),
        (Tier::Web, &web[3]),
        (Tier::Web, &web[6]),
    ]
    .into_iter()
    .chain([
        (Tier::App, &app[0]),
        (Tier::App, &app[10]),
        (Tier::App, &app[19]),
    ])
    .chain([(Tier::Db, &db[0]), (Tier::Db, &db[1])])
    .collect();
    // Sources: the outside, and one or two instances of each tier.
    let sources: Vec<(Tier, String, Option<&LabInstance>)> = vec![
        (Tier::Outside, lab.uplink_ns.clone(), None),
        (Tier::Web, web[1].netns.clone(), Some(&web[1])),
        (Tier::App, app[5].netns.clone(), Some(&app[5])),
        (Tier::App, app[19].netns.clone(), Some(&app[19])),
        (Tier::Db, db[0].netns.clone(), Some(&db[0])),
    ];
    let mut checked = 0;
    let mut traced = 0;
    let mut failures = Vec::new();
    for (src, ns, me) in &sources {
        let mut targets = Vec::new();
        let mut expect = Vec::new();
        for (dst, inst) in &dests {
            if me.is_some_and(|m| m.id == inst.id) {
                continue; // to itself: not through the switch
            }
            for &p in &PORTS {
                targets.push((inst.ip, p));
                expect.push(if allowed(*src, *dst, p) {
                    Reach::Open
                } else {
                    Reach::Timeout
                });
            }
        }
        let got = lab.probe(ns, None, &targets, Duration::from_millis(1500));
        for ((t, e), g) in targets.iter().zip(&expect).zip(&got) {
            checked += 1;
            if e != g {
                failures.push(format!(
                    "{src:?} -> {}:{} expected {e:?} got {g:?}",
                    t.0, t.1
                ));
            }
            // What trace says of the same SYN must be what the connect saw.
            let from = me.map_or(OUTSIDE.to_string(), |m| m.id.clone());
            let (to, port) = (t.0.to_string(), t.1.to_string());
            let out = lab.cli_ok(&[
                "trace", "--from", &from, "--to", &to, "-P", "tcp", "-p", &port, "--json",
            ]);
            let doc: serde_json::Value = serde_json::from_str(&out).expect("trace --json");
            let verdict = doc["trace"]["verdict"].as_str().unwrap_or("?");
            let want = if *g == Reach::Open {
                "allowed"
            } else {
                "dropped"
            };
            traced += 1;
            if verdict != want
                || (want == "allowed")
                    == doc["trace"]["rules"]
                        .as_array()
                        .is_none_or(|r| r.is_empty())
                || (want == "dropped" && doc["trace"]["reason"] != "no_rule")
            {
                failures.push(format!(
                    "trace {from} -> {to}:{port} disagrees with the connect ({g:?}): {out}"
                ));
            }
        }
    }
    println!("reachability matrix: {checked} connects checked, {traced} traces agree");
    assert!(
        failures.is_empty(),
        "{} of {checked} wrong:\n{}",
        failures.len(),
        failures.join("\n")
    );

    // Per-instance stats: app[0] was probed on closed ports by the outside,
    // the web server (all but 8080), the app servers and the database: 19
    // refused connects, each at least one SYN denied on the way to it.
    let out = lab.cli_ok(&["stats", &app[0].id]);
    let first = out.lines().next().unwrap_or("");
    assert!(
        first.starts_with(&format!(
            "INSTANCE\t{}\t{}\trunning\t",
            app[0].id, app[0].ip
        )),
        "{out}"
    );
    assert!(
        out.lines()
            .any(|l| l.starts_with(&format!("PORT\t{}\trx_packets\t", app[0].id))),
        "{out}"
    );
    let denied: u64 = out
        .lines()
        .find_map(|l| l.strip_prefix("DENIED\tno_rule\t"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no DENIED no_rule line: {out}"));
    assert!(denied >= 19, "{denied} denied: {out}");
    // The live view: probes of a closed port during a refresh show as
    // denials per second by reason on that instance's line.
    std::thread::scope(|s| {
        let w = s.spawn(|| lab.cli_ok(&["stats", &app[0].id, "--watch", "2", "--count", "1"]));
        std::thread::sleep(Duration::from_millis(300));
        let _ = lab.connect(&lab.uplink_ns, app[0].ip, APP);
        let out = w.join().expect("watch thread");
        assert_eq!(
            out.matches("sgswitch stats --watch: every 2 s").count(),
            1,
            "{out}"
        );
        let line = out
            .lines()
            .find(|l| l.starts_with(&app[0].id))
            .unwrap_or_else(|| panic!("no line for {}: {out}", app[0].id));
        assert!(line.contains("to:no_rule:"), "{out}");
    });
    let out = lab.cli_ok(&["stats", "--watch", "0.2", "--count", "2"]);
    assert_eq!(out.matches("sgswitch stats --watch").count(), 2, "{out}");
    assert_eq!(out.matches("(30 ports)").count(), 2, "{out}");
    assert_eq!(
        out.lines().filter(|l| l.starts_with("i-")).count(),
        2 * 29,
        "{out}"
    );

    // Egress is free and replies come back (stateful): every tier reaches the outside.
    for i in [&web[2], &app[7], &db[1]] {
        assert_eq!(
            lab.connect(&i.netns, OUTSIDE, OUTSIDE_PORT),
            Reach::Open,
            "{} egress",
            i.id
        );
    }

    // What nmap shows from the outside.
    let scan = lab.nmap_outside(web[4].ip, "1-100");
    assert_eq!(scan.listed(PortState::Open), vec![80], "{scan:?}");
    assert_eq!(scan.count(PortState::Filtered), 99, "{scan:?}");
    let scan = lab.nmap_outside(app[3].ip, "8070-8090,22");
    assert_eq!(scan.count(PortState::Filtered), scan.total(), "{scan:?}");
    assert_eq!(scan.total(), 22, "{scan:?}");
    let scan = lab.nmap_outside(db[1].ip, "5420-5440,22");
    assert_eq!(scan.count(PortState::Filtered), scan.total(), "{scan:?}");
    // ... and from a web instance: the app tier's 8080 is open, the rest filtered.
    let scan = lab.nmap(&web[5].netns, None, app[12].ip, "8070-8090");
    assert_eq!(scan.listed(PortState::Open), vec![8080], "{scan:?}");
    assert_eq!(scan.count(PortState::Filtered), 20, "{scan:?}");
}
