//! Flow logs end to end (`sgswitch up --flow-log FILE --flow-log-interval 1`):
//! an accepted TCP connection and a rejected probe from the outside give
//! records that parse as AWS VPC Flow Logs version 2 and match the traffic, an
//! idle interval gives NODATA, the same over IPv6 (an accepted TCP connection
//! from the outside's address on the instances' /64, a rejected probe and a
//! rejected ICMPv6 echo: IPv6 addresses in srcaddr/dstaddr, protocol 58, on
//! the instance's interface), and a flood of rejected SYNs with a new source
//! port each (hping3, counted, between the lab's namespaces only) stays within
//! the REJECT bound and is reported as SKIPDATA. Needs root (skips without).

use std::net::{IpAddr, Ipv6Addr};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use e2e::ec2out::parse_describe_group;
use e2e::{Lab, LabConfig, OUTSIDE, Reach};

/// REJECT records per interface per interval (`--flow-log-reject-limit`).
const REJECT_LIMIT: usize = 20;
/// Rotation size (`--flow-log-max-bytes`).
const MAX_BYTES: u64 = 256 * 1024;
/// SYNs of the flood, each from a new source port.
const FLOOD: usize = 1000;
/// The instances' IPv6 /64 (`--subnet6`) and the outside's address on it.
const PREFIX6: &str = "fd00:5e:f1:1::/64";
const OUTSIDE6: &str = "fd00:5e:f1:1::ff:10";

/// A process started in a namespace, killed by PID when dropped.
struct Bg(Child);

impl Drop for Bg {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One line of the log, checked field by field against the version 2 format.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Rec {
    account: String,
    eni: String,
    src: Option<IpAddr>,
    dst: Option<IpAddr>,
    sport: Option<u16>,
    dport: Option<u16>,
    proto: Option<u8>,
    packets: Option<u64>,
    bytes: Option<u64>,
    start: u64,
    end: u64,
    action: String,
    status: String,
}

/// `-` or a value of type T.
fn opt<T: std::str::FromStr>(s: &str, line: &str) -> Option<T> {
    if s == "-" {
        return None;
    }
    Some(
        s.parse()
            .unwrap_or_else(|_| panic!("field {s:?} does not parse in {line:?}")),
    )
}

fn parse(line: &str) -> Rec {
    let f: Vec<&str> = line.split(' ').collect();
    assert_eq!(f.len(), 14, "14 fields: {line:?}");
    assert_eq!(f[0], "2", "version 2: {line:?}");
    let r = Rec {
        account: f[1].to_owned(),
        eni: f[2].to_owned(),
        src: opt(f[3], line),
        dst: opt(f[4], line),
        sport: opt(f[5], line),
        dport: opt(f[6], line),
        proto: opt(f[7], line),
        packets: opt(f[8], line),
        bytes: opt(f[9], line),
        start: f[10].parse().expect("start is unix seconds"),
        end: f[11].parse().expect("end is unix seconds"),
        action: f[12].to_owned(),
        status: f[13].to_owned(),
    };
    assert!(r.start <= r.end, "{line:?}");
    assert!(
        r.account.len() == 12 && r.account.bytes().all(|b| b.is_ascii_digit()),
        "{line:?}"
    );
    assert!(
        r.eni
            .strip_prefix("eni-")
            .is_some_and(|h| !h.is_empty() && h.bytes().all(|b| b.is_ascii_hexdigit())),
        "{line:?}"
    );
    match r.status.as_str() {
        "OK" => {
            assert!(r.action == "ACCEPT" || r.action == "REJECT", "{line:?}");
            assert!(
                r.src.is_some()
                    && r.dst.is_some()
                    && r.sport.is_some()
                    && r.dport.is_some()
                    && r.proto.is_some()
                    && r.packets.is_some_and(|p| p > 0)
                    && r.bytes.is_some_and(|b| b >= 20 * r.packets.unwrap_or(0)),
                "{line:?}"
            );
        }
        "NODATA" | "SKIPDATA" => assert!(
            r.action == "-" && r.src.is_none() && r.packets.is_none(),
            "{line:?}"
        ),
        other => panic!("log-status {other:?} in {line:?}"),
    }
    r
}

/// Every record of the log (the header line first).
fn read_log(path: &Path) -> Vec<Rec> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut lines = text.lines();
    if let Some(h) = lines.next() {
        assert_eq!(
            h,
            "version account-id interface-id srcaddr dstaddr srcport dstport protocol packets bytes start end action log-status"
        );
    }
    lines.map(parse).collect()
}

/// Read the log until `done` holds (or panic after `secs`).
fn wait_log(path: &Path, secs: u64, what: &str, done: impl Fn(&[Rec]) -> bool) -> Vec<Rec> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let recs = read_log(path);
        if done(&recs) {
            return recs;
        }
        assert!(
            Instant::now() < deadline,
            "no {what} after {secs} s: {recs:#?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[test]
fn flow_logs_record_accepts_rejects_and_bound_a_flood() {
    let path = std::env::temp_dir().join(format!("sgswitch-flowlog-{}.log", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let limit = REJECT_LIMIT.to_string();
    let max = MAX_BYTES.to_string();
    let cfg = LabConfig::new("flowlog")
        .arg("--flow-log")
        .arg(&path.display().to_string())
        .arg("--flow-log-interval")
        .arg("1")
        .arg("--flow-log-reject-limit")
        .arg(&limit)
        .arg("--flow-log-max-bytes")
        .arg(&max)
        .arg("--subnet6")
        .arg(PREFIX6);
    let Some(lab) = Lab::start(cfg) else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "flow_logs cannot run (not root) and CI=true"
        );
        return;
    };
    let t0 = unix_now();
    let a = lab.run_instances(1, &[]).remove(0);
    let eni = format!("eni-{}", a.id.trim_start_matches("i-"));
    let out = lab.cli_ok(&["describe-group", "default"]);
    let owner = parse_describe_group(&out).expect("describe-group")[0]
        .0
        .owner
        .clone();
    lab.listen(&a.netns, &[22]);
    let cidr = format!("{OUTSIDE}/32");
    lab.cli_ok(&["authorize", "default", "-P", "tcp", "-p", "22", "-s", &cidr]);

    // An idle interval: the instance's interface gets NODATA.
    wait_log(&path, 10, "NODATA", |r| {
        r.iter().any(|x| x.eni == eni && x.status == "NODATA")
    });

    // Accepted: a TCP connection to 22 that writes 16 bytes and reads them
    // back. Rejected: a connect to 80 (nothing allows it).
    assert_eq!(lab.connect(&lab.uplink_ns, a.ip, 22), Reach::Open);
    assert_eq!(lab.connect(&lab.uplink_ns, a.ip, 80), Reach::Timeout);
    let recs = wait_log(&path, 10, "records of both connections", |r| {
        r.iter().any(|x| x.dport == Some(80)) && r.iter().any(|x| x.sport == Some(22))
    });
    let t1 = unix_now();
    let ok = |x: &&Rec| x.status == "OK";
    let inbound: Vec<&Rec> = recs
        .iter()
        .filter(ok)
        .filter(|x| x.dst == Some(IpAddr::V4(a.ip)) && x.dport == Some(22))
        .collect();
    assert_eq!(inbound.len(), 1, "{recs:#?}");
    let i = inbound[0];
    let sport = i.sport.expect("ports");
    assert_eq!(
        (
            i.account.as_str(),
            i.eni.as_str(),
            i.src,
            i.proto,
            i.action.as_str()
        ),
        (
            owner.as_str(),
            eni.as_str(),
            Some(IpAddr::V4(OUTSIDE)),
            Some(6),
            "ACCEPT"
        ),
        "{i:?}"
    );
    // SYN, the ACK, 16 bytes of data, ACKs and the FIN: at least 3 packets of
    // 40-100 bytes each, plus the 16 bytes.
    let (p, b) = (i.packets.unwrap_or(0), i.bytes.unwrap_or(0));
    assert!((3..=12).contains(&p), "{i:?}");
    assert!(b >= 40 * p + 16 && b <= 100 * p + 16, "{i:?}");
    assert!(
        i.start >= t0 - 1 && i.end <= t1 + 1,
        "{i:?} not in {t0}..{t1}"
    );
    // The reply direction, on the same interface: SYN-ACK, the echo, ...
    let reply: Vec<&Rec> = recs
        .iter()
        .filter(ok)
        .filter(|x| {
            x.src == Some(IpAddr::V4(a.ip)) && x.sport == Some(22) && x.dport == Some(sport)
        })
        .collect();
    assert_eq!(reply.len(), 1, "{recs:#?}");
    let r = reply[0];
    assert_eq!(
        (r.eni.as_str(), r.dst, r.proto, r.action.as_str()),
        (eni.as_str(), Some(IpAddr::V4(OUTSIDE)), Some(6), "ACCEPT"),
        "{r:?}"
    );
    let (p, b) = (r.packets.unwrap_or(0), r.bytes.unwrap_or(0));
    assert!(p >= 2 && b >= 40 * p + 16, "{r:?}");
    // The rejected connect: its SYN (and retransmissions), REJECT, and no
    // reply direction at all.
    let rejected: Vec<&Rec> = recs
        .iter()
        .filter(ok)
        .filter(|x| x.dport == Some(80) || x.sport == Some(80))
        .collect();
    assert!(!rejected.is_empty(), "{recs:#?}");
    for x in &rejected {
        assert_eq!(
            (x.eni.as_str(), x.src, x.dst, x.proto, x.action.as_str()),
            (
                eni.as_str(),
                Some(IpAddr::V4(OUTSIDE)),
                Some(IpAddr::V4(a.ip)),
                Some(6),
                "REJECT"
            ),
            "{x:?}"
        );
        assert!(x.packets.is_some_and(|p| p <= 3), "{x:?}");
        // A SYN: 40 bytes of headers plus options.
        assert!(
            x.bytes.is_some_and(|b| b >= 40 * x.packets.unwrap_or(1)),
            "{x:?}"
        );
    }

    // IPv6: the outside on the /64 connects to an echo server on port 7 (an
    // IPv6 rule allows it), probes port 8080 and pings (no rule: REJECT).
    let desc = lab.cli_ok(&["describe-instances", &a.id]);
    let a6: Ipv6Addr = desc
        .lines()
        .find_map(|l| l.strip_prefix(&format!("IPV6ADDRESS\t{}\t", a.id)))
        .unwrap_or_else(|| panic!("no IPv6 address in\n{desc}"))
        .parse()
        .expect("an IPv6 address");
    let out6: Ipv6Addr = OUTSIDE6.parse().expect("outside address");
    let o = lab.exec(
        &lab.uplink_ns,
        "ip",
        &[
            "-6",
            "addr",
            "add",
            &format!("{out6}/64"),
            "dev",
            &lab.uplink_if,
            "nodad",
        ],
        Duration::from_secs(5),
    );
    assert!(o.success(), "{o:?}");
    let _echo = Bg(Command::new("ip")
        .args([
            "netns", "exec", &a.netns, "busybox", "nc", "-ll", "-p", "7", "-e", "/bin/cat",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn busybox nc"));
    let cidr6 = format!("{out6}/128");
    lab.cli_ok(&["authorize", "default", "-P", "tcp", "-p", "7", "-s", &cidr6]);
    std::thread::sleep(Duration::from_millis(300));
    let nc6 = |port: u16, wait: &str| {
        lab.exec(
            &lab.uplink_ns,
            "sh",
            &[
                "-c",
                &format!("echo hello-flow-v6 | busybox nc -w {wait} {a6} {port}"),
            ],
            Duration::from_secs(10),
        )
    };
    let echo = nc6(7, "2");
    assert_eq!(echo.stdout.trim(), "hello-flow-v6", "{echo:?}");
    let probe = nc6(8080, "1");
    assert!(!probe.stdout.contains("hello"), "{probe:?}");
    let ping = lab.exec(
        &lab.uplink_ns,
        "busybox",
        &["ping6", "-c", "1", "-W", "1", &a6.to_string()],
        Duration::from_secs(5),
    );
    assert!(!ping.success(), "no rule allows ICMPv6 echo: {ping:?}");
    let (a6, out6) = (Some(IpAddr::V6(a6)), Some(IpAddr::V6(out6)));
    let recs = wait_log(&path, 10, "records of the IPv6 traffic", |r| {
        r.iter().any(|x| x.src == a6 && x.sport == Some(7))
            && r.iter().any(|x| x.dst == a6 && x.dport == Some(8080))
            && r.iter().any(|x| x.dst == a6 && x.proto == Some(58))
    });
    let v6 = |f: &dyn Fn(&Rec) -> bool| -> Vec<Rec> {
        recs.iter()
            .filter(|x| x.status == "OK" && f(x))
            .cloned()
            .collect()
    };
    let inbound = v6(&|x| x.dst == a6 && x.dport == Some(7));
    assert_eq!(inbound.len(), 1, "{recs:#?}");
    let i = &inbound[0];
    assert_eq!(
        (i.eni.as_str(), i.src, i.proto, i.action.as_str()),
        (eni.as_str(), out6, Some(6), "ACCEPT"),
        "{i:?}"
    );
    // SYN, ACK, 15 bytes of data, ACKs, FIN: at least 3 packets of 60-120
    // bytes (a 40-byte IPv6 header each).
    let (p, b) = (i.packets.unwrap_or(0), i.bytes.unwrap_or(0));
    assert!(
        (3..=12).contains(&p) && b >= 60 * p + 15 && b <= 120 * p + 15,
        "{i:?}"
    );
    let sport6 = i.sport;
    let reply = v6(&|x| x.src == a6 && x.sport == Some(7) && x.dport == sport6);
    assert_eq!(reply.len(), 1, "{recs:#?}");
    assert_eq!(
        (
            reply[0].eni.as_str(),
            reply[0].dst,
            reply[0].action.as_str()
        ),
        (eni.as_str(), out6, "ACCEPT")
    );
    let refused = v6(&|x| x.dport == Some(8080) || x.sport == Some(8080));
    assert!(!refused.is_empty(), "{recs:#?}");
    for x in &refused {
        assert_eq!(
            (x.eni.as_str(), x.src, x.dst, x.proto, x.action.as_str()),
            (eni.as_str(), out6, a6, Some(6), "REJECT"),
            "{x:?}"
        );
        assert!(
            x.bytes.is_some_and(|b| b >= 60 * x.packets.unwrap_or(1)),
            "{x:?}"
        );
    }
    let pings = v6(&|x| x.proto == Some(58));
    assert_eq!(pings.len(), 1, "the echo request only, no reply: {recs:#?}");
    assert_eq!(
        (
            pings[0].eni.as_str(),
            pings[0].src,
            pings[0].dst,
            pings[0].sport,
            pings[0].dport,
            pings[0].action.as_str()
        ),
        (eni.as_str(), out6, a6, Some(0), Some(0), "REJECT"),
        "{:?}",
        pings[0]
    );
    assert!(
        !recs
            .iter()
            .any(|x| x.proto == Some(58) && x.action == "ACCEPT"),
        "neighbor discovery is not logged: {recs:#?}"
    );

    // A flood: FLOOD SYNs to a closed port, each from the next source port,
    // in about half a second.
    let before = recs.len();
    let target = a.ip.to_string();
    let count = FLOOD.to_string();
    let o = lab.exec(
        &lab.uplink_ns,
        "hping3",
        &["-q", "-S", "-p", "81", "-c", &count, "-i", "u500", &target],
        Duration::from_secs(30),
    );
    assert!(
        o.stderr.contains("HPING") || o.stdout.contains("HPING"),
        "hping3 did not run: {o:?}"
    );
    // Wait for the flood's SKIPDATA and two more flushes after it.
    let recs = wait_log(&path, 15, "SKIPDATA of the flood", |r| {
        r[before..]
            .iter()
            .any(|x| x.eni == eni && x.status == "SKIPDATA")
    });
    std::thread::sleep(Duration::from_millis(2500));
    let recs_after = read_log(&path);
    assert!(recs_after.len() >= recs.len());
    let flood: Vec<&Rec> = recs_after[before..]
        .iter()
        .filter(|x| x.dport == Some(81))
        .collect();
    // The flood spans at most two 1-s intervals, and a worker's table handed
    // over late is written with the next flush: three flushes at most, each
    // with at most REJECT_LIMIT REJECT records for the interface.
    assert!(
        !flood.is_empty() && flood.len() <= 3 * REJECT_LIMIT,
        "{} flood records (bound {}): {flood:#?}",
        flood.len(),
        3 * REJECT_LIMIT
    );
    assert!(flood.iter().all(|x| x.action == "REJECT" && x.eni == eni));
    let recorded: u64 = flood.iter().map(|x| x.packets.unwrap_or(0)).sum();
    assert!(
        recorded < FLOOD as u64,
        "not every flood packet can have a record ({recorded})"
    );
    let len = std::fs::metadata(&path).expect("log").len();
    assert!(len <= MAX_BYTES, "{len} bytes");
    // For the README (shown with --nocapture).
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    eprintln!("{}", text.lines().take(40).collect::<Vec<_>>().join("\n"));
    drop(lab);
    let _ = std::fs::remove_file(&path);
}
