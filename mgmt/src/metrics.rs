//! `--metrics-listen ADDR`: the daemon's statistics as Prometheus text
//! (exposition format 0.0.4).
//!
//! Contract:
//! * An updater thread asks the management core for a [`StatsReport`] once per
//!   [`UPDATE_INTERVAL`] through the [`Handler`] it is given (the same aggregated
//!   numbers `sgswitch stats` shows; the datapath itself never calls into this
//!   module) and keeps the latest one. Every scrape renders that report, so the
//!   series of a port that is gone (a terminated instance) disappear with the
//!   next update.
//! * Every family has `# HELP` and `# TYPE` lines; edit and publish latencies are
//!   summaries (`{quantile="0.5"}`, `{quantile="0.99"}` over the last
//!   [`crate::core::LATENCY_WINDOW`] edits, `_sum` and `_count` since start).
//! * A small HTTP/1.0 responder on a std `TcpListener`: `GET /metrics` only (404
//!   for other paths, 405 for other methods), one request per connection, head
//!   capped at 8 KiB. Each connection is served on its own thread, at most
//!   [`MAX_CONNECTIONS`] at once (more get `503` at once), and each has
//!   [`REQUEST_DEADLINE`] in all to send its request and as much again to read
//!   the answer: a slow or stalled client holds one thread for at most that long
//!   and never delays another client.
//!
//! Metric names: `sgswitch_generation`, `sgswitch_groups`, `sgswitch_rules`,
//! `sgswitch_instances`, `sgswitch_edits_total`, `sgswitch_edit_latency_seconds`
//! (summary), `sgswitch_publish_latency_seconds` (summary),
//! `sgswitch_port_{rx,tx}_{packets,bytes}_total{port}`, `sgswitch_port_drops_total{port}`,
//! `sgswitch_drops_total{reason}`, `sgswitch_conntrack_entries`,
//! `sgswitch_events_total{event}`, `sgswitch_ports_gone_total`,
//! `sgswitch_rule_{packets,bytes,flows}_total{owner,group,rule}` (what each
//! rule admitted on this host; `rule` as `tcp 22 0.0.0.0/0`) and
//! `sgswitch_group_no_rule_total{owner,group}` (packets to the group's members
//! that no rule matched).

use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::api::{Command, Handler, Request, Response, Slot, StatsReport};

/// How often the statistics are refreshed.
pub const UPDATE_INTERVAL: Duration = Duration::from_secs(1);
/// Time a client has to send its whole request (and, separately, to read the answer).
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(2);
/// Connections served at once; more are answered `503` and closed.
pub const MAX_CONNECTIONS: usize = 32;
/// Longest request head accepted.
const MAX_HEAD: usize = 8192;

/// The Prometheus text of a statistics report.
pub fn render(s: &StatsReport) -> String {
    let mut out = String::with_capacity(4096 + s.ports.len() * 600);
    let o = &mut out;
    gauge(
        o,
        "sgswitch_generation",
        "Generation of the last published rule snapshot.",
        s.generation,
    );
    gauge(o, "sgswitch_groups", "Security groups.", s.groups);
    gauge(
        o,
        "sgswitch_rules",
        "Permissions in all security groups.",
        s.rules,
    );
    gauge(o, "sgswitch_instances", "Instances.", s.instances);
    head(
        o,
        "sgswitch_edits_total",
        "counter",
        "Committed edits since start.",
    );
    sample(o, "sgswitch_edits_total", &[], s.edits as f64);
    summary(
        o,
        "sgswitch_edit_latency_seconds",
        "Edit received to snapshot published.",
        &[(0.5, s.edit_latency_p50_us), (0.99, s.edit_latency_p99_us)],
        s.edit_latency_sum_us,
        s.edit_latency_count,
    );
    summary(
        o,
        "sgswitch_publish_latency_seconds",
        "Store committed to snapshot published (compile and swap).",
        &[
            (0.5, s.publish_latency_p50_us),
            (0.99, s.publish_latency_p99_us),
        ],
        s.publish_latency_sum_us,
        s.publish_latency_count,
    );
    type PortField = fn(&crate::api::PortStats) -> u64;
    let port_families: [(&str, &str, PortField); 5] = [
        (
            "sgswitch_port_rx_packets_total",
            "Frames received from the port.",
            |p| p.rx_packets,
        ),
        (
            "sgswitch_port_rx_bytes_total",
            "Bytes received from the port.",
            |p| p.rx_bytes,
        ),
        (
            "sgswitch_port_tx_packets_total",
            "Frames sent to the port.",
            |p| p.tx_packets,
        ),
        (
            "sgswitch_port_tx_bytes_total",
            "Bytes sent to the port.",
            |p| p.tx_bytes,
        ),
        (
            "sgswitch_port_drops_total",
            "Frames dropped at the port (receive and transmit).",
            |p| p.drops,
        ),
    ];
    for (name, help, field) in port_families {
        head(o, name, "counter", help);
        for p in &s.ports {
            sample(o, name, &[("port", &p.name)], field(p) as f64);
        }
    }
    head(
        o,
        "sgswitch_port_dropped_by_reason_total",
        "counter",
        "Frames received from the port and dropped, by reason (reasons that counted any).",
    );
    for p in &s.ports {
        for (reason, n) in &p.drop_reasons {
            sample(
                o,
                "sgswitch_port_dropped_by_reason_total",
                &[("port", &p.name), ("reason", reason)],
                *n as f64,
            );
        }
    }
    head(
        o,
        "sgswitch_port_denied_total",
        "counter",
        "Frames bound for the port refused by the rules or connection tracking, by reason.",
    );
    for p in &s.ports {
        for (reason, n) in &p.denied {
            sample(
                o,
                "sgswitch_port_denied_total",
                &[("port", &p.name), ("reason", reason)],
                *n as f64,
            );
        }
    }
    head(
        o,
        "sgswitch_drops_total",
        "counter",
        "Frames dropped, by reason.",
    );
    for (reason, n) in &s.drops {
        sample(o, "sgswitch_drops_total", &[("reason", reason)], *n as f64);
    }
    gauge(
        o,
        "sgswitch_conntrack_entries",
        "Tracked connections.",
        s.conntrack_entries,
    );
    head(
        o,
        "sgswitch_events_total",
        "counter",
        "Other data-plane events (ARP and DHCP answers, segmentation, checksums, parks; underlay datagrams and bytes in cluster mode).",
    );
    for (event, n) in &s.events {
        sample(o, "sgswitch_events_total", &[("event", event)], *n as f64);
    }
    head(
        o,
        "sgswitch_ports_gone_total",
        "counter",
        "Ports removed because their network device went away.",
    );
    sample(o, "sgswitch_ports_gone_total", &[], s.ports_gone as f64);
    type HitField = fn(&crate::api::RuleHits) -> u64;
    let rule_families: [(&str, &str, HitField); 3] = [
        (
            "sgswitch_rule_packets_total",
            "Packets a rule admitted (first packets of flows, packets judged by rules alone, revalidated packets).",
            |h| h.packets,
        ),
        (
            "sgswitch_rule_bytes_total",
            "Bytes of the packets a rule admitted.",
            |h| h.bytes,
        ),
        (
            "sgswitch_rule_flows_total",
            "Flows whose first packet a rule admitted.",
            |h| h.flows,
        ),
    ];
    for (name, help, field) in rule_families {
        head(o, name, "counter", help);
        for r in &s.rules_hits {
            let labels = [
                ("owner", r.owner.as_str()),
                ("group", r.group.as_str()),
                ("rule", r.rule.as_str()),
            ];
            sample(o, name, &labels, field(&r.hits) as f64);
        }
    }
    head(
        o,
        "sgswitch_group_no_rule_total",
        "counter",
        "Packets to the group's members that no rule of their groups matched (dropped as no_rule).",
    );
    for g in &s.groups_no_rule {
        let labels = [("owner", g.owner.as_str()), ("group", g.group.as_str())];
        sample(o, "sgswitch_group_no_rule_total", &labels, g.packets as f64);
    }
    out
}

fn head(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn gauge(out: &mut String, name: &str, help: &str, v: u64) {
    head(out, name, "gauge", help);
    sample(out, name, &[], v as f64);
}

fn summary(
    out: &mut String,
    name: &str,
    help: &str,
    quantiles: &[(f64, u64)],
    sum_us: u64,
    count: u64,
) {
    head(out, name, "summary", help);
    for (q, us) in quantiles {
        let q = q.to_string();
        sample(out, name, &[("quantile", &q)], *us as f64 / 1e6);
    }
    sample(out, &format!("{name}_sum"), &[], sum_us as f64 / 1e6);
    sample(out, &format!("{name}_count"), &[], count as f64);
}

fn sample(out: &mut String, name: &str, labels: &[(&str, &str)], v: f64) {
    out.push_str(name);
    if !labels.is_empty() {
        out.push('{');
        for (i, (k, val)) in labels.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(k);
            out.push_str("=\"");
            for c in val.chars() {
                match c {
                    '\\' => out.push_str("\\\\"),
                    '"' => out.push_str("\\\""),
                    '\n' => out.push_str("\\n"),
                    c => out.push(c),
                }
            }
            out.push('"');
        }
        out.push('}');
    }
    let _ = writeln!(out, " {v}");
}

/// The running exporter; dropping it stops the updater and the listener (a
/// connection being served finishes within its deadline on its own).
pub struct MetricsServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl MetricsServer {
    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200));
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Bind `addr`, start the updater (asking `mgmt` for [`Command::Stats`]) and the
/// HTTP responder.
pub fn start(addr: SocketAddr, mgmt: Arc<dyn Handler>) -> io::Result<MetricsServer> {
    start_with(addr, mgmt, REQUEST_DEADLINE)
}

/// [`start`] with `request_deadline` in place of [`REQUEST_DEADLINE`] (tests
/// that must hold connections open longer than a loaded machine needs).
fn start_with(
    addr: SocketAddr,
    mgmt: Arc<dyn Handler>,
    request_deadline: Duration,
) -> io::Result<MetricsServer> {
    let listener = TcpListener::bind(addr)?;
    let addr = listener.local_addr()?;
    let stop = Arc::new(AtomicBool::new(false));
    let latest: Arc<Mutex<Option<StatsReport>>> = Arc::default();

    let (stop_u, latest_u) = (stop.clone(), latest.clone());
    let updater = std::thread::Builder::new()
        .name("sgswitch-metrics".into())
        .spawn(move || {
            while !stop_u.load(Ordering::SeqCst) {
                let fresh = match mgmt.handle(Request {
                    owner: None,
                    command: Command::Stats,
                    wait: false,
                }) {
                    Ok(Response::Stats { stats }) => Some(*stats),
                    _ => None,
                };
                *latest_u.lock().unwrap_or_else(|e| e.into_inner()) = fresh;
                // Sleep in small steps so that shutdown is quick.
                for _ in 0..10 {
                    if stop_u.load(Ordering::SeqCst) {
                        return;
                    }
                    std::thread::sleep(UPDATE_INTERVAL / 10);
                }
            }
        })?;

    let stop_h = stop.clone();
    let active = Arc::new(AtomicUsize::new(0));
    let http = std::thread::Builder::new()
        .name("sgswitch-metrics-http".into())
        .spawn(move || {
            for conn in listener.incoming() {
                if stop_h.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(mut stream) = conn else { continue };
                let Some(slot) = Slot::take(&active, MAX_CONNECTIONS) else {
                    let _ = respond(
                        &mut stream,
                        "503 Service Unavailable",
                        "too many connections\n",
                        Instant::now() + Duration::from_millis(100),
                    );
                    finish(&mut stream, Duration::from_millis(50));
                    continue;
                };
                let latest = latest.clone();
                // A client's failure (stall, reset) only ends its own connection;
                // if no thread can be made the connection is closed at once.
                let _ = std::thread::Builder::new()
                    .name("sgswitch-metrics-conn".into())
                    .spawn(move || {
                        let _slot = slot;
                        let mut stream = stream;
                        if serve_http(&mut stream, &latest, request_deadline).is_ok() {
                            finish(&mut stream, Duration::from_millis(200));
                        }
                    });
            }
        })?;
    Ok(MetricsServer {
        addr,
        stop,
        threads: vec![updater, http],
    })
}

/// Answer one HTTP request: the head must arrive within `request_deadline`
/// ([`REQUEST_DEADLINE`]; in all, not per read), the answer is written
/// within as much again.
fn serve_http(
    stream: &mut TcpStream,
    latest: &Mutex<Option<StatsReport>>,
    request_deadline: Duration,
) -> io::Result<()> {
    let deadline = Instant::now() + request_deadline;
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && !head.windows(2).any(|w| w == b"\n\n") {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "request not complete within the deadline",
            ));
        }
        stream.set_read_timeout(Some(left))?;
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
        if head.len() > MAX_HEAD {
            return respond(
                stream,
                "431 Request Header Fields Too Large",
                "request head too large\n",
                Instant::now() + request_deadline,
            );
        }
    }
    let deadline = Instant::now() + request_deadline;
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    if method != "GET" {
        return respond(stream, "405 Method Not Allowed", "only GET\n", deadline);
    }
    if path != "/metrics" {
        return respond(stream, "404 Not Found", "try /metrics\n", deadline);
    }
    let body = latest
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .as_ref()
        .map(render);
    match body {
        Some(body) => respond(stream, "200 OK", &body, deadline),
        None => respond(
            stream,
            "503 Service Unavailable",
            "no statistics yet\n",
            deadline,
        ),
    }
}

/// Close after an answer without a reset: end our side, then read (and drop)
/// what the client still sends (the rest of a request we did not read) for at
/// most `linger`.
fn finish(stream: &mut TcpStream, linger: Duration) {
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let deadline = Instant::now() + linger;
    let mut buf = [0u8; 4096];
    for _ in 0..16 {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            return;
        }
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

/// Write the answer in pieces, each bounded by what is left of `deadline`.
fn respond(stream: &mut TcpStream, status: &str, body: &str, deadline: Instant) -> io::Result<()> {
    let mut msg = format!(
        "HTTP/1.0 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    msg.extend_from_slice(body.as_bytes());
    for chunk in msg.chunks(16 * 1024) {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "answer not read within the deadline",
            ));
        }
        stream.set_write_timeout(Some(left))?;
        stream.write_all(chunk)?;
    }
    stream.flush()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::time::{Duration, Instant};

    use super::*;
    use crate::api::{ApiError, PortStats, Reply};

    /// A strict parser of the text format 0.0.4: every sample belongs to a family
    /// announced by `# HELP` and `# TYPE` before it, names and labels are well
    /// formed, values are numbers, no series twice; a summary has quantiles
    /// (0 ≤ q ≤ 1), `_sum` and `_count`. Returns family → (type, samples).
    /// Family name → (type, samples as (series, value)).
    type Families = BTreeMap<String, (String, Vec<(String, f64)>)>;

    pub(crate) fn parse_strict(text: &str) -> Result<Families, String> {
        let mut fams = Families::new();
        let mut helped = std::collections::BTreeSet::new();
        let mut seen = std::collections::BTreeSet::new();
        let valid_name = |n: &str| {
            !n.is_empty()
                && n.chars().enumerate().all(|(i, c)| {
                    c.is_ascii_alphabetic() || c == '_' || c == ':' || (i > 0 && c.is_ascii_digit())
                })
        };
        if !text.ends_with('\n') {
            return Err("text does not end with a newline".into());
        }
        for (no, line) in text.lines().enumerate() {
            let err = |m: &str| format!("line {}: {m}: {line:?}", no + 1);
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, help) = rest
                    .split_once(' ')
                    .ok_or_else(|| err("HELP without text"))?;
                if !valid_name(name) || help.is_empty() || !helped.insert(name.to_owned()) {
                    return Err(err("bad or repeated HELP"));
                }
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest
                    .split_once(' ')
                    .ok_or_else(|| err("TYPE without type"))?;
                if !helped.contains(name) {
                    return Err(err("TYPE before HELP"));
                }
                if !["counter", "gauge", "summary", "histogram", "untyped"].contains(&kind) {
                    return Err(err("unknown type"));
                }
                if fams
                    .insert(name.to_owned(), (kind.to_owned(), Vec::new()))
                    .is_some()
                {
                    return Err(err("TYPE repeated"));
                }
            } else if line.starts_with('#') || line.is_empty() {
                return Err(err("unexpected comment or empty line"));
            } else {
                let (series, value) = line.rsplit_once(' ').ok_or_else(|| err("no value"))?;
                let value: f64 = value.parse().map_err(|_| err("value not a number"))?;
                let (name, labels) = match series.split_once('{') {
                    Some((n, l)) => (
                        n,
                        l.strip_suffix('}')
                            .ok_or_else(|| err("labels not closed"))?,
                    ),
                    None => (series, ""),
                };
                if !valid_name(name) {
                    return Err(err("bad metric name"));
                }
                // Labels: name="value" separated by commas, value escapes \\ \" \n.
                let mut rest = labels;
                while !rest.is_empty() {
                    let (k, v) = rest.split_once("=\"").ok_or_else(|| err("bad label"))?;
                    if !valid_name(k) {
                        return Err(err("bad label name"));
                    }
                    let mut chars = v.char_indices();
                    let mut end = None;
                    while let Some((i, c)) = chars.next() {
                        match c {
                            '\\' => match chars.next() {
                                Some((_, '\\' | '"' | 'n')) => {}
                                _ => return Err(err("bad escape")),
                            },
                            '"' => {
                                end = Some(i);
                                break;
                            }
                            _ => {}
                        }
                    }
                    let end = end.ok_or_else(|| err("label value not closed"))?;
                    rest = &v[end + 1..];
                    if let Some(r) = rest.strip_prefix(',') {
                        rest = r;
                    } else if !rest.is_empty() {
                        return Err(err("junk after label"));
                    }
                }
                let family = fams
                    .iter_mut()
                    .filter(|(f, (kind, _))| {
                        name == f.as_str()
                            || (kind == "summary"
                                && (name == format!("{f}_sum") || name == format!("{f}_count")))
                    })
                    .map(|(_, v)| v)
                    .next()
                    .ok_or_else(|| err("sample without HELP and TYPE"))?;
                if !seen.insert(series.to_owned()) {
                    return Err(err("series repeated"));
                }
                family.1.push((series.to_owned(), value));
            }
        }
        for (name, (kind, samples)) in &fams {
            if kind != "summary" {
                continue;
            }
            let has = |s: &str| samples.iter().any(|(n, _)| n == s);
            if !has(&format!("{name}_sum")) || !has(&format!("{name}_count")) {
                return Err(format!("summary {name} without _sum and _count"));
            }
            let quantiles: Vec<f64> = samples
                .iter()
                .filter_map(|(n, _)| {
                    n.strip_prefix(&format!("{name}{{quantile=\""))?
                        .strip_suffix("\"}")?
                        .parse()
                        .ok()
                })
                .collect();
            if quantiles.is_empty() || quantiles.iter().any(|q| !(0.0..=1.0).contains(q)) {
                return Err(format!("summary {name} without valid quantiles"));
            }
        }
        Ok(fams)
    }

    fn report(ports: &[&str]) -> StatsReport {
        StatsReport {
            generation: 7,
            groups: 2,
            rules: 3,
            instances: ports.len() as u64,
            edits: 5,
            edit_latency_p50_us: 150,
            edit_latency_p99_us: 900,
            edit_latency_sum_us: 2_000,
            edit_latency_count: 5,
            publish_latency_p50_us: 100,
            publish_latency_p99_us: 400,
            publish_latency_sum_us: 1_000,
            publish_latency_count: 5,
            ports: ports
                .iter()
                .map(|p| PortStats {
                    name: (*p).to_owned(),
                    rx_packets: 1,
                    rx_bytes: 60,
                    tx_packets: 2,
                    tx_bytes: 120,
                    drops: 0,
                    drop_reasons: vec![("spoofed_ip".into(), 2)],
                    denied: vec![("no_rule".into(), 3)],
                })
                .collect(),
            drops: vec![("no_rule".into(), 4), ("spoof".into(), 0)],
            conntrack_entries: 9,
            events: vec![("arp_replies".into(), 3)],
            ports_gone: 1,
            rules_hits: vec![crate::api::RuleSeries {
                owner: "111122223333".into(),
                group: "web".into(),
                rule: "tcp 22 0.0.0.0/0".into(),
                hits: crate::api::RuleHits {
                    packets: 12,
                    bytes: 888,
                    flows: 11,
                },
            }],
            groups_no_rule: vec![crate::api::GroupNoRule {
                owner: "111122223333".into(),
                group: "web".into(),
                packets: 3,
            }],
        }
    }

    #[test]
    fn every_family_has_help_and_type_and_latencies_are_summaries() {
        let text = render(&report(&["i-0123abcd", "weird\"po\\rt\n"]));
        let fams = parse_strict(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        let (kind, samples) = &fams["sgswitch_edit_latency_seconds"];
        assert_eq!(kind, "summary");
        let got: Vec<(&str, f64)> = samples.iter().map(|(n, v)| (n.as_str(), *v)).collect();
        assert_eq!(
            got,
            [
                ("sgswitch_edit_latency_seconds{quantile=\"0.5\"}", 0.00015),
                ("sgswitch_edit_latency_seconds{quantile=\"0.99\"}", 0.0009),
                ("sgswitch_edit_latency_seconds_sum", 0.002),
                ("sgswitch_edit_latency_seconds_count", 5.0),
            ]
        );
        assert_eq!(fams["sgswitch_publish_latency_seconds"].0, "summary");
        assert_eq!(fams["sgswitch_edits_total"].0, "counter");
        assert_eq!(fams["sgswitch_groups"].0, "gauge");
        assert!(text.contains("sgswitch_port_rx_packets_total{port=\"i-0123abcd\"} 1\n"));
        for (family, v) in [("packets", 12), ("bytes", 888), ("flows", 11)] {
            let want = format!(
                "sgswitch_rule_{family}_total{{owner=\"111122223333\",group=\"web\",rule=\"tcp 22 0.0.0.0/0\"}} {v}\n"
            );
            assert!(text.contains(&want), "{want}\n{text}");
        }
        assert!(
            text.contains("sgswitch_group_no_rule_total{owner=\"111122223333\",group=\"web\"} 3\n")
        );
        assert!(text.contains(
            "sgswitch_port_dropped_by_reason_total{port=\"i-0123abcd\",reason=\"spoofed_ip\"} 2\n"
        ));
        assert!(
            text.contains("sgswitch_port_denied_total{port=\"i-0123abcd\",reason=\"no_rule\"} 3\n")
        );
        assert!(text.contains("{port=\"weird\\\"po\\\\rt\\n\"}"), "{text}");
        assert!(text.contains("sgswitch_drops_total{reason=\"no_rule\"} 4\n"));
        // The parser itself rejects what it must.
        for bad in [
            "sgswitch_x 1\n",
            "# TYPE a gauge\na 1\n",
            "# HELP a h\n# TYPE a gauge\na{b=\"c} 1\n",
            "# HELP a h\n# TYPE a summary\na{quantile=\"0.5\"} 1\n",
            "# HELP a h\n# TYPE a gauge\na 1\na 2\n",
            "# HELP a h\n# TYPE a gauge\na one\n",
        ] {
            assert!(parse_strict(bad).is_err(), "accepted {bad:?}");
        }
    }

    #[test]
    fn series_of_removed_ports_are_not_rendered() {
        let before = render(&report(&["i-0000000a", "i-0000000b"]));
        let after = render(&report(&["i-0000000a"]));
        assert!(before.contains("port=\"i-0000000b\""));
        assert!(after.contains("port=\"i-0000000a\""));
        assert!(!after.contains("i-0000000b"), "{after}");
    }

    fn get(addr: SocketAddr, request: &str) -> String {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(request.as_bytes()).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    }

    /// A stats source whose port list the test changes.
    fn source(ports: Arc<Mutex<Vec<&'static str>>>) -> Arc<dyn Handler> {
        Arc::new(move |req: Request| -> Reply {
            match req.command {
                Command::Stats => Ok(Response::Stats {
                    stats: Box::new(report(&ports.lock().unwrap())),
                }),
                _ => Err(ApiError::internal("not a stats request")),
            }
        })
    }

    fn wait_for(addr: SocketAddr, what: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let r = get(addr, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
            if what(&r) {
                return r;
            }
            assert!(Instant::now() < deadline, "metrics never matched: {r}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    #[test]
    fn serves_only_metrics_concurrently_and_forgets_removed_ports() {
        let ports = Arc::new(Mutex::new(vec!["i-0000000a", "i-0000000b"]));
        let server = start("127.0.0.1:0".parse().unwrap(), source(ports.clone())).unwrap();
        let addr = server.local_addr();
        let body = wait_for(addr, |r| r.contains("port=\"i-0000000b\""));
        assert!(body.starts_with("HTTP/1.0 200 OK\r\n"), "{body}");
        let text = body.split_once("\r\n\r\n").unwrap().1;
        parse_strict(text).unwrap_or_else(|e| panic!("{e}\n{text}"));

        assert!(get(addr, "GET / HTTP/1.0\r\n\r\n").starts_with("HTTP/1.0 404"));
        assert!(get(addr, "GET /nope HTTP/1.0\r\n\r\n").starts_with("HTTP/1.0 404"));
        assert!(get(addr, "POST /metrics HTTP/1.0\r\n\r\n").starts_with("HTTP/1.0 405"));
        let huge = format!("GET /metrics HTTP/1.0\r\nX: {}\r\n\r\n", "a".repeat(8_900));
        let mut s = TcpStream::connect(addr).unwrap();
        let _ = s.write_all(huge.as_bytes());
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        assert!(out.starts_with("HTTP/1.0 431"), "{out}");

        // Clients that send half a request and stall do not delay another one.
        let mut stalled = Vec::new();
        for _ in 0..4 {
            let mut s = TcpStream::connect(addr).unwrap();
            s.write_all(b"GET /metr").unwrap();
            stalled.push(s);
        }
        std::thread::sleep(Duration::from_millis(100));
        let r = get(addr, "GET /metrics HTTP/1.0\r\n\r\n");
        assert!(r.starts_with("HTTP/1.0 200"), "{r}");
        // Served while the stalled ones still hold their connections.
        assert!(
            stalled.iter().all(still_open),
            "a stalled client was cut first"
        );
        // And each stalled one is cut at the deadline (EOF), not held open.
        let mut s = stalled.pop().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut sink = Vec::new();
        let cut = s.read_to_end(&mut sink);
        assert!(cut.is_ok(), "still held after 10 s: {cut:?}");

        ports.lock().unwrap().retain(|p| *p != "i-0000000b");
        let body = wait_for(addr, |r| !r.contains("i-0000000b"));
        assert!(body.contains("port=\"i-0000000a\""), "{body}");
        drop(server);
    }

    /// Whether the server still holds `s` open (nothing to read yet, no EOF).
    fn still_open(s: &TcpStream) -> bool {
        s.set_nonblocking(true).unwrap();
        let mut b = [0u8; 1];
        let open = matches!(s.peek(&mut b), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock);
        s.set_nonblocking(false).unwrap();
        open
    }

    #[test]
    fn connections_beyond_the_cap_are_refused_at_once_and_slots_come_back() {
        let ports = Arc::new(Mutex::new(vec!["i-0000000a"]));
        // Stalled clients are held for 60 s here, not REQUEST_DEADLINE (2 s):
        // on a loaded machine accepting all of them can take longer than
        // that, and the first would be cut before the cap is reached. (The
        // cut at the deadline has its own test above.)
        let server = start_with(
            "127.0.0.1:0".parse().unwrap(),
            source(ports),
            Duration::from_secs(60),
        )
        .unwrap();
        let addr = server.local_addr();
        wait_for(addr, |r| r.starts_with("HTTP/1.0 200"));
        let stalled: Vec<TcpStream> = (0..MAX_CONNECTIONS)
            .map(|_| {
                let mut s = TcpStream::connect(addr).unwrap();
                s.write_all(b"GET /").unwrap();
                s
            })
            .collect();
        // The cap is reached once the server holds them all: a further client
        // is refused while they are still held (it does not queue for a slot).
        // (Polled for up to 30 s: on a loaded machine the server may take a
        // while to accept all of them.)
        let mut r = String::new();
        let until = Instant::now() + Duration::from_secs(30);
        while Instant::now() < until {
            r = get(addr, "GET /metrics HTTP/1.0\r\n\r\n");
            if r.starts_with("HTTP/1.0 503") {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(r.starts_with("HTTP/1.0 503"), "{r}");
        assert!(
            stalled.iter().filter(|s| still_open(s)).count() > 0,
            "refused only after the stalled clients were cut"
        );
        // The stalled clients go away: their slots come back, and all is
        // served again.
        drop(stalled);
        let body = wait_for(addr, |r| r.starts_with("HTTP/1.0 200"));
        assert!(body.contains("sgswitch_groups"), "{body}");
        drop(server);
    }
}
