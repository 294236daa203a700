use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use filter::model::{Instance, Limits, Model, Owner, RuleSpec};
use filter::{DropReason, FlowKey, Mac, Snapshot, compile, proto};

use super::*;
use crate::port::VnetHdr;
use crate::{PortRole, PortSpec, SwitchConfig, mem_port};

const OWNER: &str = "111122223333";

fn ip(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(172, 31, 0, n)
}

fn mac(n: u8) -> Mac {
    [0x02, 0, 0, 0, 0, n]
}

fn inst(k: u8) -> String {
    format!("i-{k:08x}")
}

/// Instances 10..10+n in group `g`, which allows UDP 53 from the subnet.
fn model(n: u8) -> Model {
    let owner = Owner(OWNER.into());
    let mut m = Model::new(Limits::default());
    m.add_group(&owner, "g", "test").expect("group");
    let spec = RuleSpec {
        proto: Some("udp".into()),
        ports: Some("53".into()),
        cidrs: vec!["172.31.0.0/16".into()],
        ..RuleSpec::default()
    };
    m.authorize(&owner, "g", &spec).expect("rule");
    for k in 10..10 + n {
        m.add_instance(Instance {
            id: inst(k),
            owner: owner.clone(),
            mac: mac(k),
            ip: ip(k),
            groups: vec!["g".into()],
        })
        .expect("instance");
    }
    m
}

fn snap() -> Snapshot {
    compile(&model(4), 1)
}

fn key(src: u8, dst: u8, sport: u16, dport: u16) -> FlowKey {
    FlowKey {
        src: ip(src),
        dst: ip(dst),
        proto: proto::UDP,
        sport,
        dport,
    }
}

/// A fresh path under the temp dir (removed first, with its rotations).
fn temp_path(name: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("sgsw-flowlog-{}-{name}", std::process::id()));
    for i in 0..10 {
        let mut s = p.as_os_str().to_owned();
        if i > 0 {
            s.push(format!(".{i}"));
        }
        let _ = std::fs::remove_file(PathBuf::from(s));
    }
    p
}

fn cfg(path: &Path) -> FlowLogConfig {
    FlowLogConfig {
        interval_secs: 1,
        ..FlowLogConfig::new(FlowLogSink::File(path.to_path_buf()))
    }
}

/// The data lines of a flow-log file (header dropped), split in fields.
fn records(path: &Path) -> Vec<Vec<String>> {
    let text = std::fs::read_to_string(path).expect("read flow log");
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some(HEADER), "first line is the header");
    lines
        .map(|l| l.split(' ').map(str::to_owned).collect())
        .collect()
}

/// A logger over IPv4 `tables` handed over by hand (worker 0), base unix
/// time 1000.
fn logger(c: &FlowLogConfig, tables: Vec<FlowTable>) -> FlowLogger {
    let both = tables
        .into_iter()
        .map(|v4| Tables {
            v4,
            v6: FlowTable::new(4, 4),
        })
        .collect();
    logger_of(c, both)
}

/// A logger over the tables of both families `tables`, handed over by hand.
fn logger_of(c: &FlowLogConfig, tables: Vec<Tables>) -> FlowLogger {
    let (recs, collector) = channels(c, 1);
    let mut rec = recs.into_iter().next().expect("one recorder");
    for t in tables {
        rec.active = Box::new(t);
        rec.spare = Some(Box::new(Tables::new(4, 4)));
        rec.hand_over();
    }
    // Keep the sender alive for the drain: the collector owns a clone.
    drop(rec);
    FlowLogger::new(c, collector, Writer::open(c).expect("open"), 1000)
}

#[test]
fn records_aggregate_per_flow_interface_and_action() {
    let mut t = FlowTable::new(64, 8);
    let k = key(10, 11, 4000, 53);
    let both = On::new(true, true, Ok(()));
    t.record(&k, both, 1, 100, 5);
    t.record(&k, both, 1, 60, 7);
    // Refused by the receiver's rules: the sender's record still says ACCEPT.
    t.record(&k, On::new(true, true, Err(DropReason::NoRule)), 1, 100, 6);
    t.record(
        &key(10, 11, 4001, 53),
        On::new(true, false, Ok(())),
        3,
        300,
        6,
    );
    let flows: Vec<FlowRecord> = t.flows().collect();
    let rec = |iface, action, packets, bytes, first, last| FlowRecord {
        iface,
        key: k,
        action,
        packets,
        bytes,
        first,
        last,
    };
    use FlowAction::{Accept, Reject};
    assert_eq!(
        flows[..4],
        [
            rec(ip(10), Accept, 2, 160, 5, 7),
            rec(ip(11), Accept, 2, 160, 5, 7),
            rec(ip(10), Accept, 1, 100, 6, 6),
            rec(ip(11), Reject, 1, 100, 6, 6),
        ]
    );
    assert_eq!(flows.len(), 5);
    assert_eq!((flows[4].iface, flows[4].packets), (ip(10), 3));
    assert!(t.skipped().next().is_none());
    // The table is full only when the connection table refused: both REJECT.
    let on = On::new(true, true, Err(DropReason::ConntrackQuota));
    let acts: Vec<_> = on.records().collect();
    assert_eq!(acts, [(true, Reject), (false, Reject)]);
    assert!(On::new(false, false, Ok(())).is_none());
    // Refused by the sender's egress rules: REJECT on the sender's interface
    // only (the packet never reached the receiver).
    let on = On::new(true, true, Err(DropReason::NoEgressRule));
    assert_eq!(on.records().collect::<Vec<_>>(), [(true, Reject)]);
    assert!(On::new(false, true, Err(DropReason::NoEgressRule)).is_none());
    t.clear();
    assert!(t.is_empty());
    assert_eq!(t.flows().count(), 0);
    // ICMP is logged without ports (the key's identifier is dropped).
    let icmp = FlowKey {
        proto: proto::ICMP,
        ..key(10, 11, 77, 77)
    };
    t.record(&icmp, On::new(true, false, Ok(())), 1, 84, 1);
    let f = t.flows().next().expect("icmp flow");
    assert_eq!((f.key.sport, f.key.dport), (0, 0));
}

#[test]
fn record_lines_are_vpc_flow_logs_v2() {
    let path = temp_path("format");
    let c = cfg(&path);
    let mut t = FlowTable::new(64, 8);
    t.record(
        &key(10, 11, 4000, 53),
        On::new(true, false, Ok(())),
        2,
        120,
        3,
    );
    let no = On::new(false, true, Err(DropReason::NoRule));
    t.record(&key(10, 11, 4000, 54), no, 1, 60, 4);
    let mut l = logger(&c, vec![t]);
    let s = l
        .flush(5, &snap(), &[ip(10), ip(11), ip(12)])
        .expect("flush");
    assert_eq!(
        s,
        FlushSummary {
            ok: 2,
            nodata: 1,
            skipdata: 0,
            skipped_packets: 0
        }
    );
    let text = std::fs::read_to_string(&path).expect("read");
    assert_eq!(
        text,
        format!(
            "{HEADER}\n\
             2 111122223333 eni-0000000a 172.31.0.10 172.31.0.11 4000 53 17 2 120 1003 1003 ACCEPT OK\n\
             2 111122223333 eni-0000000b 172.31.0.10 172.31.0.11 4000 54 17 1 60 1004 1004 REJECT OK\n\
             2 111122223333 eni-0000000c - - - - - - - 1000 1005 - NODATA\n"
        )
    );
    for r in records(&path) {
        assert_eq!(r.len(), 14, "{r:?}");
    }
    let _ = std::fs::remove_file(&path);
}

fn ip6(n: u8) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 0x5a, 0, 0, 0, 0, 0, u16::from(n))
}

fn key6(src: Ipv6Addr, dst: Ipv6Addr, proto: u8, sport: u16, dport: u16) -> FlowKey<Ipv6Addr> {
    FlowKey {
        src,
        dst,
        proto,
        sport,
        dport,
    }
}

/// IPv6 entries: one per flow, records on the interfaces of the instances
/// given (named by their IPv4 addresses), ICMPv6 without ports.
#[test]
fn ipv6_records_aggregate_and_name_their_interfaces() {
    let mut t: FlowTable<Ipv6Addr> = FlowTable::new(64, 8);
    let k = key6(ip6(10), ip6(11), proto::TCP, 40000, 22);
    let both = On::new(true, true, Ok(()));
    t.record6(&k, (ip(10), ip(11)), both, 1, 80, 5);
    t.record6(&k, (ip(10), ip(11)), both, 1, 72, 6);
    let ping = key6(ip6(99), ip6(11), proto::ICMPV6, 7, 7);
    let no = On::new(false, true, Err(DropReason::NoRule));
    t.record6(&ping, (Ipv4Addr::UNSPECIFIED, ip(11)), no, 1, 104, 6);
    let flows: Vec<FlowRecord<Ipv6Addr>> = t.flows().collect();
    assert_eq!(flows.len(), 3, "{flows:?}");
    assert_eq!(
        (flows[0].iface, flows[0].key, flows[0].action),
        (ip(10), k, FlowAction::Accept)
    );
    assert_eq!(
        (flows[1].iface, flows[1].action),
        (ip(11), FlowAction::Accept)
    );
    assert_eq!(
        (
            flows[0].packets,
            flows[0].bytes,
            flows[0].first,
            flows[0].last
        ),
        (2, 152, 5, 6)
    );
    assert_eq!(flows[2].iface, ip(11));
    assert_eq!(flows[2].action, FlowAction::Reject);
    assert_eq!(
        (flows[2].key.sport, flows[2].key.dport),
        (0, 0),
        "ICMPv6: no ports"
    );
}

/// IPv6 lines next to IPv4 ones: addresses as AWS writes them, protocol 58
/// for ICMPv6, one REJECT bound per interface over both families, and an
/// interface with only IPv6 traffic has no NODATA record.
#[test]
fn ipv6_lines_share_the_interface_and_its_bounds() {
    let path = temp_path("ipv6");
    let c = FlowLogConfig {
        reject_limit: 3,
        ..cfg(&path)
    };
    let mut t = Tables::new(64, c.reject_limit);
    let no = On::new(false, true, Err(DropReason::NoRule));
    for p in 0..2u16 {
        t.v4.record(&key(10, 11, 7000 + p, 9), no, 1, 60, 2);
        let k6 = key6(ip6(10), ip6(11), proto::UDP, 7000 + p, 9);
        t.v6.record6(&k6, (ip(10), ip(11)), no, 1, 80, 2);
    }
    let ping = key6(ip6(12), ip6(10), proto::ICMPV6, 7, 7);
    t.v6.record6(
        &ping,
        (ip(12), ip(10)),
        On::new(true, true, Ok(())),
        3,
        312,
        3,
    );
    let mut l = logger_of(&c, vec![t]);
    let s = l
        .flush(5, &snap(), &[ip(10), ip(11), ip(12), ip(13)])
        .expect("flush");
    assert_eq!(
        s.ok,
        3 + 2,
        "3 of 4 REJECTs on eni-b, the ping on both sides"
    );
    assert_eq!((s.skipdata, s.skipped_packets, s.nodata), (1, 1, 1));
    let text = std::fs::read_to_string(&path).expect("read");
    assert!(
        text.contains(
            "2 111122223333 eni-0000000c fd00:5a::c fd00:5a::a 0 0 58 3 312 1003 1003 ACCEPT OK\n"
        ),
        "{text}"
    );
    assert!(
        text.contains(
            "2 111122223333 eni-0000000a fd00:5a::c fd00:5a::a 0 0 58 3 312 1003 1003 ACCEPT OK\n"
        ),
        "{text}"
    );
    assert!(
        text.contains("2 111122223333 eni-0000000b - - - - - - - 1002 1002 - SKIPDATA\n"),
        "{text}"
    );
    assert!(
        text.contains("eni-0000000d - - - - - - - 1000 1005 - NODATA\n"),
        "{text}"
    );
    let recs = records(&path);
    assert_eq!(recs.iter().filter(|r| r[12] == "REJECT").count(), 3);
    assert!(recs.iter().all(|r| r.len() == 14));
    let _ = std::fs::remove_file(&path);
}

#[test]
fn reject_flood_is_bounded_and_reported_as_skipdata() {
    let path = temp_path("flood");
    let c = FlowLogConfig {
        reject_limit: 10,
        ..cfg(&path)
    };
    // Two workers' tables, each with 30 rejected flows to instance 11 (the
    // worker bound keeps 10 each) and one accepted flow.
    let mut tables = Vec::new();
    for w in 0..2u16 {
        let mut t = FlowTable::new(1024, c.reject_limit);
        let no = On::new(false, true, Err(DropReason::NoRule));
        for p in 0..30u16 {
            t.record(&key(10, 11, 10_000 + w * 100 + p, 9), no, 1, 60, 2);
        }
        let ok = On::new(false, true, Ok(()));
        t.record(&key(10, 11, 5000 + w, 53), ok, 1, 60, 2);
        assert_eq!(t.flows().count(), 11);
        assert_eq!(t.skipped().collect::<Vec<_>>(), [(ip(11), 20, 2, 2)]);
        tables.push(t);
    }
    let mut l = logger(&c, tables);
    let s = l.flush(3, &snap(), &[ip(11)]).expect("flush");
    // The logger's bound: 10 REJECT records in all, the other 50 packets folded
    // into one SKIPDATA record.
    assert_eq!(s.ok, 12);
    assert_eq!(s.skipdata, 1);
    assert_eq!(s.skipped_packets, 50);
    assert_eq!(s.nodata, 0);
    let recs = records(&path);
    assert_eq!(recs.iter().filter(|r| r[12] == "REJECT").count(), 10);
    assert_eq!(recs.iter().filter(|r| r[12] == "ACCEPT").count(), 2);
    let skip: Vec<_> = recs.iter().filter(|r| r[13] == "SKIPDATA").collect();
    assert_eq!(
        skip[0].join(" "),
        "2 111122223333 eni-0000000b - - - - - - - 1002 1002 - SKIPDATA"
    );
    let _ = std::fs::remove_file(&path);
}

#[test]
fn a_full_table_skips_new_flows_and_keeps_counting_old_ones() {
    let mut t = FlowTable::new(4, 100);
    for p in 0..6u16 {
        t.record(&key(10, 11, p, 53), On::new(true, false, Ok(())), 1, 60, 1);
    }
    // Known flows still count; new ones are skipped.
    t.record(&key(10, 11, 0, 53), On::new(true, false, Ok(())), 1, 60, 2);
    assert_eq!(t.flows().count(), 4);
    assert_eq!(t.flows().next().map(|f| f.packets), Some(2));
    assert_eq!(t.skipped().collect::<Vec<_>>(), [(ip(10), 2, 1, 1)]);
}

#[test]
fn rotation_keeps_the_log_within_its_bound() {
    let path = temp_path("rotate");
    let c = FlowLogConfig {
        max_bytes: 4096,
        keep: 2,
        ..cfg(&path)
    };
    let mut w = Writer::open(&c).expect("open");
    let line =
        "2 111122223333 eni-0000000a 172.31.0.10 172.31.0.11 4000 53 17 2 120 1003 1003 ACCEPT OK";
    for _ in 0..400 {
        w.line(line).expect("line");
    }
    w.flush().expect("flush");
    let numbered = |i: u32| PathBuf::from(format!("{}.{i}", path.display()));
    for p in [path.clone(), numbered(1), numbered(2)] {
        let len = std::fs::metadata(&p).expect("exists").len();
        assert!(len <= c.max_bytes, "{} has {len} bytes", p.display());
        let text = std::fs::read_to_string(&p).expect("read");
        assert!(
            text.starts_with(HEADER),
            "every file starts with the header"
        );
    }
    assert!(!numbered(3).exists(), "only `keep` rotated files");
    // Reopening appends (no second header).
    drop(w);
    let before = std::fs::metadata(&path).expect("exists").len();
    let mut w = Writer::open(&c).expect("reopen");
    w.line(line).expect("line");
    w.flush().expect("flush");
    let after = std::fs::read_to_string(&path).expect("read");
    assert_eq!(after.len() as u64, before + line.len() as u64 + 1);
    for p in [path.clone(), numbered(1), numbered(2)] {
        let _ = std::fs::remove_file(p);
    }
}

#[test]
fn recorder_hands_over_at_the_boundary_and_reuses_the_returned_table() {
    let path = temp_path("handover");
    let c = FlowLogConfig {
        interval_secs: 10,
        ..cfg(&path)
    };
    let (recs, collector) = channels(&c, 1);
    let mut rec = recs.into_iter().next().expect("recorder");
    let mut l = FlowLogger::new(&c, collector, Writer::open(&c).expect("open"), 0);
    let out = On::new(true, false, Ok(()));
    rec.record(&key(10, 11, 1, 53), out, 1, 60, 3);
    rec.tick(9);
    assert!(!rec.active.is_empty(), "before the boundary: kept");
    rec.tick(10);
    assert!(rec.active.is_empty(), "handed over at the boundary");
    // The spare is in use now: without the logger returning one, the worker
    // keeps its table across the next boundary.
    rec.record(&key(10, 11, 2, 53), out, 1, 60, 12);
    rec.tick(20);
    assert!(!rec.active.is_empty(), "no spare: kept");
    let s = l.flush(20, &snap(), &[]).expect("flush");
    assert_eq!(s.ok, 1);
    rec.tick(30);
    assert!(rec.active.is_empty(), "the returned table was reused");
    let s = l.flush(30, &snap(), &[]).expect("flush");
    assert_eq!(s.ok, 1);
    let recs = records(&path);
    assert_eq!(recs.len(), 2);
    assert_eq!((recs[0][5].as_str(), recs[0][10].as_str()), ("1", "3"));
    assert_eq!((recs[1][5].as_str(), recs[1][10].as_str()), ("2", "12"));
    let _ = std::fs::remove_file(&path);
}

#[test]
fn super_frames_count_their_segments() {
    assert_eq!(wire_size(60, 28, 0), (1, 60));
    // 40 bytes of IPv4+TCP headers, 3000 bytes of payload in 1448-byte segments.
    assert_eq!(wire_size(3040, 40, 1448), (3, 3 * 40 + 3000));
    assert_eq!(wire_size(1000, 40, 1448), (1, 1000));
}

#[test]
fn bad_settings_are_named() {
    let c = FlowLogConfig::new(FlowLogSink::Stdout);
    assert_eq!(c.interval_secs, 600);
    assert!(c.validate().is_ok());
    let e = FlowLogConfig {
        interval_secs: 0,
        ..c.clone()
    }
    .validate()
    .expect_err("0 s");
    assert!(e.contains("interval 0 s"), "{e}");
    let e = FlowLogConfig { max_bytes: 10, ..c }
        .validate()
        .expect_err("10 bytes");
    assert!(e.contains("max bytes 10"), "{e}");
}

/// A one-worker datapath logging flows to `c` (dual-stack with `subnet6`).
fn datapath(c: &FlowLogConfig, subnet6: Option<ipnet::Ipv6Net>) -> std::sync::Arc<crate::Datapath> {
    crate::Datapath::new(SwitchConfig {
        workers: 1,
        ct: filter::CtConfig::with_capacity(1 << 12),
        flow_log: Some(c.clone()),
        subnet6,
        ..SwitchConfig::default()
    })
    .expect("datapath")
}

/// In-memory ports for instances `ks` and an uplink: (instance ports, uplink).
fn add_ports(dp: &crate::Datapath, ks: std::ops::Range<u8>) -> (Vec<crate::PortId>, crate::PortId) {
    let ids = ks
        .map(|k| {
            let (queues, _peer) = mem_port(1);
            dp.add_port(PortSpec {
                name: inst(k),
                role: PortRole::Instance {
                    id: inst(k),
                    mac: mac(k),
                    ip: ip(k),
                },
                queues,
            })
            .expect("port")
        })
        .collect();
    let (queues, _up) = mem_port(1);
    let up = dp
        .add_port(PortSpec {
            name: "uplink".into(),
            role: PortRole::Uplink,
            queues,
        })
        .expect("uplink");
    (ids, up)
}

/// Worker 0 processes `frames` as one burst; the flows are handed over and
/// flushed (instances 10..13 attached) to `c`'s file `path`, whose records are
/// returned as "interface src dst sport dport proto packets bytes action
/// status". Also checks that the flow logger can be taken only once.
fn burst_and_flush(
    dp: &std::sync::Arc<crate::Datapath>,
    c: &FlowLogConfig,
    path: &Path,
    frames: &[(crate::PortId, &[u8])],
) -> (crate::worker::BurstResult, FlushSummary, Vec<String>) {
    let mut w = dp.worker(0);
    let r = w.process_burst(frames.iter().map(|(id, f)| (*id, *f, VnetHdr::default())));
    w.hand_over_flows();
    let mut l = dp
        .take_flow_logger(Writer::open(c).expect("open"))
        .expect("flow logs on");
    assert!(
        dp.take_flow_logger(Writer::open(c).expect("open"))
            .is_none()
    );
    let s = l
        .flush(dp.now_secs(), &dp.rules(), &[ip(10), ip(11), ip(12)])
        .expect("flush");
    let short = records(path)
        .iter()
        .map(|r| {
            [
                &r[2], &r[3], &r[4], &r[5], &r[6], &r[7], &r[8], &r[9], &r[12], &r[13],
            ]
            .map(|s| s.as_str())
            .join(" ")
        })
        .collect();
    (r, s, short)
}

/// The datapath end to end on in-memory ports: an accepted and a rejected UDP
/// flow between two instances, and one from the uplink, give the records AWS
/// would write on each interface.
#[test]
fn the_datapath_logs_verdicts_on_each_instance_interface() {
    let path = temp_path("datapath");
    let c = cfg(&path);
    let dp = datapath(&c, None);
    dp.publish_rules(compile(&model(3), 1));
    let (ids, up) = add_ports(&dp, 10..12u8);
    let udp = |src: Ipv4Addr, dst: Ipv4Addr, smac: Mac, dport: u16| {
        let mut v = Vec::new();
        etherparse::PacketBuilder::ethernet2(smac, mac(11))
            .ipv4(src.octets(), dst.octets(), 64)
            .udp(4000, dport)
            .write(&mut v, &[7u8; 32])
            .expect("udp");
        v
    };
    let ok = udp(ip(10), ip(11), mac(10), 53);
    let no = udp(ip(10), ip(11), mac(10), 54);
    let outside = udp(
        Ipv4Addr::new(172, 31, 255, 7),
        ip(11),
        [0x02, 9, 9, 9, 9, 9],
        99,
    );
    let frames = [
        (ids[0], &ok[..]),
        (ids[0], &ok[..]),
        (ids[0], &no[..]),
        (up, &outside[..]),
    ];
    let (r, s, short) = burst_and_flush(&dp, &c, &path, &frames);
    assert_eq!((r.forwarded, r.dropped), (2, 2));
    assert_eq!((s.ok, s.nodata, s.skipdata), (5, 1, 0));
    // 60 bytes = 20 IPv4 + 8 UDP + 32 payload.
    assert_eq!(
        short,
        [
            "eni-0000000a 172.31.0.10 172.31.0.11 4000 53 17 2 120 ACCEPT OK",
            "eni-0000000a 172.31.0.10 172.31.0.11 4000 54 17 1 60 ACCEPT OK",
            "eni-0000000b 172.31.0.10 172.31.0.11 4000 53 17 2 120 ACCEPT OK",
            "eni-0000000b 172.31.0.10 172.31.0.11 4000 54 17 1 60 REJECT OK",
            "eni-0000000b 172.31.255.7 172.31.0.11 4000 99 17 1 60 REJECT OK",
            "eni-0000000c - - - - - - - - NODATA",
        ]
    );
    let _ = std::fs::remove_file(&path);
}

#[test]
fn a_log_that_cannot_be_opened_stops_the_start_and_names_the_path() {
    let path = PathBuf::from("/nonexistent-sgswitch-dir/flow.log");
    let e = crate::Switch::start(SwitchConfig {
        flow_log: Some(cfg(&path)),
        ..SwitchConfig::default()
    })
    .err()
    .expect("no such directory");
    assert!(
        e.to_string().contains("/nonexistent-sgswitch-dir/flow.log"),
        "{e}"
    );
    let e = crate::Switch::start(SwitchConfig {
        flow_log: Some(FlowLogConfig {
            interval_secs: 7200,
            ..cfg(&path)
        }),
        ..SwitchConfig::default()
    })
    .err()
    .expect("interval too long");
    assert!(e.to_string().contains("interval 7200 s"), "{e}");
}

/// IPv6 through the datapath on in-memory ports: an accepted and a rejected
/// UDP flow between two instances, a probe from the uplink, and a datagram
/// its sender's egress rules refuse give the records AWS would write (IPv6
/// addresses, 40-byte header counted) on the interfaces of the instances
/// (the egress refusal on the sender's only); neighbor discovery leaves no
/// record.
#[test]
fn the_datapath_logs_ipv6_verdicts() {
    use filter::model::eui64_address;
    use filter::wire::{self, Endpoint6};
    let path = temp_path("datapath6");
    let c = cfg(&path);
    let prefix: ipnet::Ipv6Net = "fd00:5a::/64".parse().expect("prefix");
    let dp = datapath(&c, Some(prefix));
    let owner = Owner(OWNER.into());
    let mut m = model(2);
    m.set_subnet6(Some(prefix)).expect("subnet6");
    let spec = RuleSpec {
        proto: Some("udp".into()),
        ports: Some("53".into()),
        cidrs: vec!["fd00:5a::/64".into()],
        ..RuleSpec::default()
    };
    m.authorize(&owner, "g", &spec).expect("rule");
    // Instance 12 in a group without IPv6 egress.
    m.add_group(&owner, "h", "no IPv6 out").expect("group");
    let all6 = RuleSpec {
        proto: Some("all".into()),
        cidrs: vec!["::/0".into()],
        ..RuleSpec::default()
    };
    m.revoke_dir(&owner, "h", &all6, true)
        .expect("revoke egress");
    m.add_instance(Instance {
        id: inst(12),
        owner: owner.clone(),
        mac: mac(12),
        ip: ip(12),
        groups: vec!["h".into()],
    })
    .expect("instance");
    dp.publish_rules(compile(&m, 1));
    let (ids, up) = add_ports(&dp, 10..13u8);
    let e = |k: u8| Endpoint6::new(mac(k), eui64_address(prefix, mac(k)));
    let outside = Endpoint6::new([0x02, 9, 9, 9, 9, 9], "2001:db8::7".parse().expect("addr"));
    let ok = wire::udp6(e(10), e(11), 4000, 53, &[7u8; 32]);
    let no = wire::udp6(e(10), e(11), 4000, 54, &[7u8; 32]);
    let probe = wire::udp6(outside, e(11), 4000, 99, &[7u8; 32]);
    let ns = wire::neighbor_solicitation(e(10), e(11).ip);
    let out = wire::udp6(e(12), e(11), 4000, 53, &[7u8; 32]);
    let frames = [
        (ids[0], &ns[..]),
        (ids[0], &ok[..]),
        (ids[0], &ok[..]),
        (ids[0], &no[..]),
        (up, &probe[..]),
        (ids[2], &out[..]),
    ];
    let (r, s, short) = burst_and_flush(&dp, &c, &path, &frames);
    assert_eq!((r.forwarded, r.dropped), (2, 3));
    assert_eq!((s.ok, s.nodata, s.skipdata), (6, 0, 0));
    let (a, b, c) = (e(10).ip, e(11).ip, e(12).ip);
    // 80 bytes = 40 IPv6 + 8 UDP + 32 payload.
    assert_eq!(
        short,
        [
            format!("eni-0000000a {a} {b} 4000 53 17 2 160 ACCEPT OK"),
            format!("eni-0000000a {a} {b} 4000 54 17 1 80 ACCEPT OK"),
            format!("eni-0000000b 2001:db8::7 {b} 4000 99 17 1 80 REJECT OK"),
            format!("eni-0000000b {a} {b} 4000 53 17 2 160 ACCEPT OK"),
            format!("eni-0000000b {a} {b} 4000 54 17 1 80 REJECT OK"),
            format!("eni-0000000c {c} {b} 4000 53 17 1 80 REJECT OK"),
        ]
    );
    let _ = std::fs::remove_file(&path);
}
