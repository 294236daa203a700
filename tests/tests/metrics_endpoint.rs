//! The metrics endpoint of a real daemon (`up --metrics-listen 127.0.0.1:0`):
//! only `/metrics` serves (404 on `/`, 405 for POST), a client that sends half
//! a request and stalls does not block a second client, the port series of a
//! terminated instance disappear, and the text passes `promtool check metrics`
//! (Debian package `prometheus`, installed by scripts/test.sh) when promtool is
//! there. Per-rule hit counters: after a known nmap scan (one probe per port)
//! and a known number of TCP connects, `describe-group --stats` and the
//! endpoint show exactly the flows the rule admitted and the probes no rule
//! matched. Needs root (skips without).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use e2e::lab::Reach;
use e2e::nmap::PortState;
use e2e::{Lab, LabConfig};

fn get(addr: SocketAddr, request: &str) -> String {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

fn metrics_addr(lab: &Lab) -> SocketAddr {
    let log = std::fs::read_to_string(lab.dir.join("daemon.log")).unwrap();
    log.lines()
        .filter_map(|l| l.strip_prefix("sgswitch: metrics on http://"))
        .filter_map(|a| a.trim().trim_end_matches("/metrics").parse().ok())
        .next_back()
        .unwrap_or_else(|| panic!("no metrics line in the daemon log:\n{log}"))
}

fn scrape_until(addr: SocketAddr, what: &str, ok: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let r = get(addr, "GET /metrics HTTP/1.0\r\n\r\n");
        if r.starts_with("HTTP/1.0 200") && ok(&r) {
            return r.split_once("\r\n\r\n").unwrap().1.to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "metrics never showed {what}:\n{r}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `promtool check metrics` on `text`, if promtool is installed; `None` if not.
fn promtool(text: &str) -> Option<(bool, String)> {
    let mut child = match Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(_) => return None,
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let msg = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Some((out.status.success(), msg))
}

#[test]
fn metrics_endpoint_serves_only_metrics_resists_slow_clients_and_forgets_terminated_ports() {
    let Some(lab) = Lab::start(
        LabConfig::new("metrics")
            .arg("--metrics-listen")
            .arg("127.0.0.1:0"),
    ) else {
        return;
    };
    let addr = metrics_addr(&lab);
    let a = lab.run_instances(1, &[]).remove(0);
    let b = lab.run_instances(1, &[]).remove(0);
    let text = scrape_until(addr, "both instances' ports", |r| {
        r.contains(&format!("port=\"{}\"", a.id)) && r.contains(&format!("port=\"{}\"", b.id))
    });
    for family in [
        "sgswitch_groups",
        "sgswitch_edits_total",
        "sgswitch_port_rx_packets_total",
    ] {
        assert!(text.contains(&format!("# HELP {family} ")), "{text}");
        assert!(text.contains(&format!("# TYPE {family} ")), "{text}");
    }
    assert!(
        text.contains("# TYPE sgswitch_edit_latency_seconds summary\n"),
        "{text}"
    );
    // The summary's count and sum are real: the two launches were edits.
    let value = |name: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in:\n{text}"))
    };
    assert!(
        value("sgswitch_edit_latency_seconds_count") >= 2.0,
        "{text}"
    );
    assert!(value("sgswitch_edit_latency_seconds_sum") > 0.0, "{text}");
    match promtool(&text) {
        Some((ok, msg)) => assert!(ok, "promtool check metrics failed:\n{msg}\n{text}"),
        None if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("promtool missing (Debian package prometheus, see scripts/test.sh)")
        }
        None => eprintln!("promtool not installed: text format checked by the unit tests only"),
    }

    assert!(get(addr, "GET / HTTP/1.0\r\n\r\n").starts_with("HTTP/1.0 404"));
    assert!(get(addr, "POST /metrics HTTP/1.0\r\n\r\n").starts_with("HTTP/1.0 405"));

    // Half a request, then silence: a second client is served at once, and the
    // stalled one is cut within the request deadline (2 s), not held.
    let mut stalled = TcpStream::connect(addr).unwrap();
    stalled.write_all(b"GET /metrics HT").unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let r = get(addr, "GET /metrics HTTP/1.0\r\n\r\n");
    assert!(r.starts_with("HTTP/1.0 200"), "{r}");
    // Served while the stalled client still holds its connection: it did not
    // wait for a slot to free.
    assert!(
        still_open(&stalled),
        "the stalled client was cut before the second one was served"
    );
    // And the stalled one is cut (EOF), not held open for as long as it likes.
    stalled
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut sink = Vec::new();
    let cut = stalled.read_to_end(&mut sink);
    assert!(
        cut.is_ok(),
        "a stalled client was still held after 10 s: {cut:?}"
    );

    // Per-rule hits. Group `hits` admits TCP 22 from anywhere; its member c
    // listens on 22. From b: a SYN scan of 20-29 (`--max-retries 0`: one
    // probe per port), then 5 TCP connects to 22. The rule decided the first
    // packet of each of the 6 flows (the rest passes as tracked flows); no
    // rule matched the 9 other probes.
    lab.cli_ok(&["add-group", "hits", "-d", "rule hits"]);
    lab.cli_ok(&[
        "authorize",
        "hits",
        "-P",
        "tcp",
        "-p",
        "22",
        "-s",
        "0.0.0.0/0",
    ]);
    let c = lab.run_instances(1, &["hits"]).remove(0);
    lab.listen(&c.netns, &[22]);
    let scan = lab.nmap(&b.netns, None, c.ip, "20-29");
    assert_eq!(scan.state(22), Some(PortState::Open), "{scan:?}");
    assert_eq!(scan.count(PortState::Filtered), 9, "{scan:?}");
    for _ in 0..5 {
        assert_eq!(lab.connect(&b.netns, c.ip, 22), Reach::Open);
    }
    let out = lab.cli_ok(&["describe-group", "--stats", "hits"]);
    let lines: Vec<Vec<&str>> = out.lines().map(|l| l.split('\t').collect()).collect();
    let owner = lines[0][1].to_owned();
    assert_eq!(lines[0][..3], ["GROUP", owner.as_str(), "hits"], "{out}");
    let rule = &lines[1];
    assert_eq!(
        rule[..9],
        [
            "PERMISSION",
            "hits",
            "ALLOWS",
            "tcp",
            "22",
            "22",
            "FROM",
            "CIDR",
            "0.0.0.0/0"
        ],
        "{out}"
    );
    let field = |l: &[&str], name: &str| -> u64 {
        let i = l
            .iter()
            .position(|f| *f == name)
            .unwrap_or_else(|| panic!("{name}: {out}"));
        l[i + 1].parse().unwrap()
    };
    assert_eq!(field(rule, "FLOWS"), 6, "{out}");
    assert_eq!(field(rule, "PACKETS"), 6, "{out}");
    // Six SYNs of at least 54 bytes (Ethernet + IPv4 + TCP headers).
    let bytes = field(rule, "BYTES");
    assert!((6 * 54..=6 * 100).contains(&bytes), "{out}");
    assert_eq!(lines[2][..2], ["NORULE", "hits"], "{out}");
    assert_eq!(field(&lines[2], "PACKETS"), 9, "{out}");
    // The same numbers on the endpoint.
    let series = |family: &str, v: u64| {
        format!("{family}{{owner=\"{owner}\",group=\"hits\",rule=\"tcp 22 0.0.0.0/0\"}} {v}\n")
    };
    let want = [
        series("sgswitch_rule_flows_total", 6),
        series("sgswitch_rule_packets_total", 6),
        series("sgswitch_rule_bytes_total", bytes),
        format!("sgswitch_group_no_rule_total{{owner=\"{owner}\",group=\"hits\"}} 9\n"),
    ];
    let text = scrape_until(addr, "the rule's hits", |r| {
        want.iter().all(|w| r.contains(w.as_str()))
    });
    if let Some((ok, msg)) = promtool(&text) {
        assert!(ok, "promtool check metrics failed:\n{msg}\n{text}");
    }

    lab.terminate(&[&b.id]);
    let text = scrape_until(addr, "the terminated instance's series gone", |r| {
        !r.contains(&b.id)
    });
    assert!(text.contains(&format!("port=\"{}\"", a.id)), "{text}");
}

/// Whether the server still holds `s` open (nothing to read yet, no EOF).
fn still_open(s: &TcpStream) -> bool {
    s.set_nonblocking(true).unwrap();
    let mut b = [0u8; 1];
    let open = matches!(s.peek(&mut b), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock);
    s.set_nonblocking(false).unwrap();
    open
}
