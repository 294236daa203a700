//! Pipeline benchmark: frames per second per core through the whole datapath —
//! parse → source check → destination lookup → conntrack + snapshot verdict →
//! transmit to an in-memory sink port — called directly on bursts of 32 frames on
//! one thread (`Worker::process_burst`), so the number is the per-core cost of the
//! switch logic without any I/O wait.
//!
//! Setup: 1000 instances on 1000 in-memory ports (sink mode: transmitted frames
//! are counted, not kept), 10 groups of 100 instances, every group with R rules
//! (R = 10, 100, 1000): TCP/UDP port ranges from CIDRs, ICMP rules and every tenth
//! rule a group-source rule; plus the rules the traffic needs.
//!
//! Cases:
//! * `established/R`: TCP ACK segments of 4096 tracked flows between random
//!   instance pairs (the conntrack fast path).
//! * `first_packet/R`: UDP datagrams each with a new 5-tuple (classifier + flow
//!   creation). The table is rebuilt, untimed, before it fills.
//! * `first_packet_egress/{default,specific}` (R = 100): `first_packet` with
//!   every group's egress rules as a new group has them (`default`: all to
//!   0.0.0.0/0) and with that rule replaced by R specific egress rules of the
//!   same mix (`specific`: port ranges to CIDRs, ICMP, every tenth a group
//!   destination, plus UDP 53 to every group and TCP 22 to the subnet), so
//!   that a new flow is judged by specific rules on both ends: the sender's
//!   egress, the receiver's ingress. Same run, side by side.
//!   `SGSW_EGRESS_AB=ROUNDS` runs them (and the TCP `first_syn` flows) as an
//!   interleaved A/B of per-burst medians instead ([`egress_ab`]).
//! * `arp_answer`: ARP requests answered by the switch.
//! * `flow_log/{established,first_packet}/{off,on}` (R = 100): the cost of flow
//!   logs (`SwitchConfig::flow_log`) on the two cases above, off and on
//!   side by side. With flow logs on, every frame is recorded (one table entry
//!   for the sender's and the receiver's record); in `first_packet/on` the
//!   worker's table is handed to the logger and flushed (to /dev/null,
//!   untimed) every 768 bursts (24,576 new flows, 3/4 of the table), so the
//!   timed path is the recording of new flows; `first_packet/on_full` never
//!   drains it, so after the first 32,768 frames every new flow takes the
//!   "table full" path (what a flood costs).
//!
//! * `family/{established,first_syn}/{ipv4,ipv6}` (R = 100, dual-stack
//!   model: [`dual_stack`]): tracked TCP ACKs and new TCP flows (first SYNs
//!   to port 22) over IPv4 and over IPv6 side by side in one run; the IPv4
//!   flows are admitted by `tcp 22 from 172.31.0.0/16`, the IPv6 ones by
//!   `tcp 22 from` the instances' /64.
//!
//! Throughput is reported in elements (frames) per second: Mpps per core.
//! `SGSW_FLOWLOG_AB=ROUNDS` runs the flow-log cases as an interleaved A/B of
//! per-burst medians instead ([`flow_log_ab`]; steadier on a shared machine).

use std::hint::black_box;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group};
use etherparse::PacketBuilder;
use filter::model::{Instance, Limits, Owner, RuleSpec, eui64_address};
use filter::{CtConfig, Mac, Model, compile};
use ipnet::Ipv6Net;
use switch::flowlog::{FlowLogger, Writer};
use switch::port::VnetHdr;
use switch::worker::Worker;
use switch::{
    Datapath, FlowLogConfig, FlowLogSink, MemOptions, PortId, PortRole, PortSpec, SwitchConfig,
    mem_port_with,
};

const INSTANCES: usize = 1000;
const GROUPS: usize = 10;
const BURST: usize = 32;
const OWNER: &str = "111122223333";

fn mac(i: usize) -> Mac {
    [0x02, 0, 0, 0, (i >> 8) as u8, i as u8]
}

fn ip(i: usize) -> Ipv4Addr {
    // 172.31.1.0 upwards: clear of the gateway.
    Ipv4Addr::from(u32::from(Ipv4Addr::new(172, 31, 1, 0)) + i as u32)
}

/// The instances' IPv6 /64 in the dual-stack model ([`dual_stack`]).
const PREFIX6: &str = "fd5a:1b2c:3d4e::/64";

fn prefix6() -> Ipv6Net {
    PREFIX6.parse().expect("PREFIX6")
}

/// Instance `i`'s IPv6 address (SLAAC from its MAC, as the model gives it).
fn ip6(i: usize) -> Ipv6Addr {
    eui64_address(prefix6(), mac(i))
}

/// Make `m` dual-stack: instances get addresses in [`PREFIX6`] and every
/// group admits TCP 22 from that prefix (the IPv6 twin of the IPv4 rule
/// `tcp 22 from 172.31.0.0/16`; new groups' default egress already covers
/// `::/0`).
fn dual_stack(m: &mut Model) {
    m.set_subnet6(Some(prefix6())).expect("subnet6");
    let owner = Owner(OWNER.into());
    for g in 0..GROUPS {
        let spec = RuleSpec {
            proto: Some("tcp".into()),
            ports: Some("22".into()),
            cidrs: vec![PREFIX6.into()],
            ..RuleSpec::default()
        };
        m.authorize(&owner, &format!("g{g}"), &spec)
            .expect("IPv6 rule");
    }
}

struct Bench {
    dp: Arc<Datapath>,
    w: Worker,
    ids: Vec<PortId>,
}

/// The model: 1000 instances in 10 groups with `rules` rules each (egress:
/// the default rule of a new group).
fn model(rules: usize) -> Model {
    model_with(rules, false)
}

/// One of the generated rules: TCP/UDP port ranges from (or to) CIDRs, ICMP
/// rules and every tenth a group rule.
fn gen_spec(k: u32) -> RuleSpec {
    if k.is_multiple_of(10) {
        RuleSpec {
            proto: Some("tcp".into()),
            ports: Some(format!("{}", 20000 + k)),
            groups: vec![(format!("g{}", (k as usize / 10) % GROUPS), None)],
            ..RuleSpec::default()
        }
    } else if k.is_multiple_of(7) {
        RuleSpec {
            proto: Some("icmp".into()),
            icmp: Some(format!("{}:-1", k % 40)),
            cidrs: vec![cidr(k)],
            ..RuleSpec::default()
        }
    } else {
        let proto = if k.is_multiple_of(2) { "tcp" } else { "udp" };
        let lo = 1000 + (k * 13) % 30000;
        RuleSpec {
            proto: Some(proto.into()),
            ports: Some(format!("{lo}-{}", lo + k % 50)),
            cidrs: vec![cidr(k)],
            ..RuleSpec::default()
        }
    }
}

/// What the traffic needs, from (ingress) or to (egress) the peers: TCP 22
/// with the subnet, UDP 53 with every group.
fn needed_specs() -> [RuleSpec; 2] {
    [
        RuleSpec {
            proto: Some("tcp".into()),
            ports: Some("22".into()),
            cidrs: vec!["172.31.0.0/16".into()],
            ..RuleSpec::default()
        },
        RuleSpec {
            proto: Some("udp".into()),
            ports: Some("53".into()),
            groups: (0..GROUPS).map(|g| (format!("g{g}"), None)).collect(),
            ..RuleSpec::default()
        },
    ]
}

/// [`model`]; with `specific_egress` every group's default egress rule is
/// replaced by `rules` generated egress rules (another draw of the same mix)
/// and the egress the traffic needs.
fn model_with(rules: usize, specific_egress: bool) -> Model {
    let owner = Owner(OWNER.into());
    let mut m = Model::new(Limits {
        rules_per_group: rules + 32,
    });
    for g in 0..GROUPS {
        m.add_group(&owner, &format!("g{g}"), "bench")
            .expect("group");
    }
    for g in 0..GROUPS {
        let name = format!("g{g}");
        let mut n = 0;
        let mut k = 0u32;
        while n < rules {
            k += 1;
            if m.authorize(&owner, &name, &gen_spec(k)).is_ok() {
                n += 1;
            }
        }
        for s in needed_specs() {
            m.authorize(&owner, &name, &s).expect("needed rule");
        }
        if specific_egress {
            m.revoke_rules_dir(&owner, &name, &filter::model::default_egress(), true)
                .expect("revoke the default egress rule");
            let (mut n, mut k) = (0, 7919u32);
            while n < rules {
                k += 1;
                if m.authorize_dir(&owner, &name, &gen_spec(k), true).is_ok() {
                    n += 1;
                }
            }
            for s in needed_specs() {
                m.authorize_dir(&owner, &name, &s, true)
                    .expect("needed egress rule");
            }
        }
    }
    for i in 0..INSTANCES {
        m.add_instance(Instance {
            id: format!("i-{i:08x}"),
            owner: owner.clone(),
            mac: mac(i),
            ip: ip(i),
            groups: vec![format!("g{}", i % GROUPS)],
        })
        .expect("instance");
    }
    m
}

fn cidr(k: u32) -> String {
    format!("{}.{}.0.0/16", 10 + k % 200, (k / 200) % 256)
}

fn setup(m: &Model) -> Bench {
    setup_with(m, None)
}

fn setup_with(m: &Model, flow_log: Option<FlowLogConfig>) -> Bench {
    let ct = CtConfig {
        capacity: 1 << 21,
        // The IPv6 table as large as the IPv4 one (its default is a quarter):
        // the IPv6 cases must not run it full where IPv4 does not.
        capacity6: 1 << 21,
        per_instance_quota: 1 << 20,
        ..CtConfig::default()
    };
    let dp = Datapath::new(SwitchConfig {
        workers: 1,
        ct,
        flow_log,
        subnet6: m.subnet6(),
        ..SwitchConfig::default()
    })
    .expect("datapath");
    dp.publish_rules(compile(m, 1));
    let ids = (0..INSTANCES)
        .map(|i| {
            let (queues, _peer) = mem_port_with(
                1,
                MemOptions {
                    sink: true,
                    capacity: 1,
                    ..MemOptions::default()
                },
            );
            dp.add_port(PortSpec {
                name: format!("i-{i:08x}"),
                role: PortRole::Instance {
                    id: format!("i-{i:08x}"),
                    mac: mac(i),
                    ip: ip(i),
                },
                queues,
            })
            .expect("port")
        })
        .collect();
    let w = dp.worker(0);
    Bench { dp, w, ids }
}

fn tcp(src: usize, dst: usize, sport: u16, syn: bool) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(mac(src), mac(dst))
        .ipv4(ip(src).octets(), ip(dst).octets(), 64)
        .tcp(sport, 22, 1, 64000);
    let b = if syn { b.syn() } else { b.ack(1) };
    let mut v = Vec::new();
    b.write(&mut v, &[0u8; 6]).expect("tcp");
    v
}

/// [`tcp`] over IPv6 (the TCP source port at bytes 54..56).
fn tcp6(src: usize, dst: usize, sport: u16, syn: bool) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(mac(src), mac(dst))
        .ipv6(ip6(src).octets(), ip6(dst).octets(), 64)
        .tcp(sport, 22, 1, 64000);
    let b = if syn { b.syn() } else { b.ack(1) };
    let mut v = Vec::new();
    b.write(&mut v, &[0u8; 6]).expect("tcp6");
    v
}

fn udp(src: usize, dst: usize, sport: u16) -> Vec<u8> {
    let mut v = Vec::new();
    PacketBuilder::ethernet2(mac(src), mac(dst))
        .ipv4(ip(src).octets(), ip(dst).octets(), 64)
        .udp(sport, 53)
        .write(&mut v, &[0u8; 18])
        .expect("udp");
    v
}

/// A deterministic pseudo-random sequence (xorshift).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 as usize
    }
}

fn established(c: &mut Criterion) {
    let mut g = c.benchmark_group("pipeline/established");
    g.throughput(Throughput::Elements(BURST as u64));
    g.measurement_time(Duration::from_secs(4));
    for rules in [10usize, 100, 1000] {
        let m = model(rules);
        let mut b = setup(&m);
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let flows: Vec<(usize, Vec<u8>)> = (0..4096)
            .map(|k| {
                let (s, d) = (rng.next() % INSTANCES, rng.next() % INSTANCES);
                let sport = 10_000 + k as u16;
                // Open the flow with its SYN.
                let syn = tcp(s, d, sport, true);
                let r =
                    b.w.process_burst([(b.ids[s], syn.as_slice(), VnetHdr::default())]);
                assert_eq!(r.forwarded, 1, "SYN of flow {k} not forwarded");
                (s, tcp(s, d, sport, false))
            })
            .collect();
        let ids = b.ids.clone();
        let bursts: Vec<Vec<(PortId, &[u8], VnetHdr)>> = flows
            .chunks(BURST)
            .map(|ch| {
                ch.iter()
                    .map(|(s, f)| (ids[*s], f.as_slice(), VnetHdr::default()))
                    .collect()
            })
            .collect();
        let mut i = 0;
        g.bench_with_input(BenchmarkId::from_parameter(rules), &rules, |bench, _| {
            bench.iter(|| {
                i = (i + 1) % bursts.len();
                let r = b.w.process_burst(bursts[i].iter().copied());
                debug_assert_eq!(r.forwarded, BURST);
                black_box(r)
            })
        });
        let st = b.dp.stats();
        assert_eq!(
            st.total_drops(),
            0,
            "drops in established bench: {:?}",
            st.nonzero_drops().collect::<Vec<_>>()
        );
    }
    g.finish();
}

fn first_packet(c: &mut Criterion) {
    let mut g = c.benchmark_group("pipeline/first_packet");
    g.throughput(Throughput::Elements(BURST as u64));
    g.measurement_time(Duration::from_secs(4));
    for rules in [10usize, 100, 1000] {
        let m = model(rules);
        let mut b = setup(&m);
        let mut rng = Rng(0x2545_f491_4f6c_dd1d);
        let mut frames: Vec<(usize, Vec<u8>)> = (0..BURST)
            .map(|_| {
                let (s, d) = (rng.next() % INSTANCES, rng.next() % INSTANCES);
                (s, udp(s, d, 1))
            })
            .collect();
        let mut sport: u32 = 0;
        let mut flows = 0usize;
        g.bench_with_input(BenchmarkId::from_parameter(rules), &rules, |bench, _| {
            bench.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    if flows > 1_500_000 {
                        b = setup(&m);
                        flows = 0;
                    }
                    // New 5-tuples: a fresh source port (and source instance).
                    for (s, f) in frames.iter_mut() {
                        sport = sport.wrapping_add(1);
                        if sport.is_multiple_of(60_000) {
                            *s = rng.next() % INSTANCES;
                            let d = rng.next() % INSTANCES;
                            *f = udp(*s, d, 1);
                        }
                        f[34..36].copy_from_slice(&(1024 + (sport % 60_000) as u16).to_be_bytes());
                    }
                    let burst = frames
                        .iter()
                        .map(|(s, f)| (b.ids[*s], f.as_slice(), VnetHdr::default()));
                    let t = Instant::now();
                    let r = b.w.process_burst(burst);
                    total += t.elapsed();
                    flows += BURST;
                    black_box(r);
                }
                total
            })
        });
        let st = b.dp.stats();
        assert_eq!(
            st.total_drops(),
            0,
            "drops in first-packet bench: {:?}",
            st.nonzero_drops().collect::<Vec<_>>()
        );
    }
    g.finish();
}

/// `first_packet` (R = 100) with the default egress rule and with specific
/// egress rules, side by side.
fn first_packet_egress(c: &mut Criterion) {
    let mut g = c.benchmark_group("pipeline/first_packet_egress");
    g.throughput(Throughput::Elements(BURST as u64));
    g.measurement_time(Duration::from_secs(4));
    for (name, specific) in [("default", false), ("specific", true)] {
        let m = model_with(100, specific);
        let mut b = setup(&m);
        let mut rng = Rng(0x2545_f491_4f6c_dd1d);
        let mut frames: Vec<(usize, Vec<u8>)> = (0..BURST)
            .map(|_| {
                let (s, d) = (rng.next() % INSTANCES, rng.next() % INSTANCES);
                (s, udp(s, d, 1))
            })
            .collect();
        let mut sport: u32 = 0;
        let mut flows = 0usize;
        g.bench_function(BenchmarkId::new(name, 100), |bench| {
            bench.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    if flows > 1_500_000 {
                        b = setup(&m);
                        flows = 0;
                    }
                    for (s, f) in frames.iter_mut() {
                        sport = sport.wrapping_add(1);
                        if sport.is_multiple_of(60_000) {
                            *s = rng.next() % INSTANCES;
                            let d = rng.next() % INSTANCES;
                            *f = udp(*s, d, 1);
                        }
                        f[34..36].copy_from_slice(&(1024 + (sport % 60_000) as u16).to_be_bytes());
                    }
                    let burst = frames
                        .iter()
                        .map(|(s, f)| (b.ids[*s], f.as_slice(), VnetHdr::default()));
                    let t = Instant::now();
                    let r = b.w.process_burst(burst);
                    total += t.elapsed();
                    flows += BURST;
                    black_box(r);
                }
                total
            })
        });
        let st = b.dp.stats();
        assert_eq!(
            st.total_drops(),
            0,
            "drops in first_packet_egress/{name}: {:?}",
            st.nonzero_drops().collect::<Vec<_>>()
        );
    }
    g.finish();
}

/// IPv4 and IPv6 side by side on the dual-stack model (R = 100): tracked
/// TCP ACKs of 4096 flows, then new TCP flows (first SYNs to port 22, a
/// fresh source port each; the table is rebuilt, untimed, before it fills).
fn family(c: &mut Criterion) {
    let mut g = c.benchmark_group("pipeline/family");
    g.throughput(Throughput::Elements(BURST as u64));
    g.measurement_time(Duration::from_secs(4));
    let mut m = model(100);
    dual_stack(&mut m);
    type Gen = fn(usize, usize, u16, bool) -> Vec<u8>;
    let fams: [(&str, Gen, usize); 2] = [("ipv4", tcp, 34), ("ipv6", tcp6, 54)];
    for (fam, gen_frame, _) in fams {
        let mut b = setup(&m);
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let flows: Vec<(usize, Vec<u8>)> = (0..4096)
            .map(|k| {
                let (s, d) = (rng.next() % INSTANCES, rng.next() % INSTANCES);
                let sport = 10_000 + k as u16;
                let syn = gen_frame(s, d, sport, true);
                let r =
                    b.w.process_burst([(b.ids[s], syn.as_slice(), VnetHdr::default())]);
                assert_eq!(r.forwarded, 1, "{fam} SYN of flow {k} not forwarded");
                (s, gen_frame(s, d, sport, false))
            })
            .collect();
        let ids = b.ids.clone();
        let bursts: Vec<Vec<(PortId, &[u8], VnetHdr)>> = flows
            .chunks(BURST)
            .map(|ch| {
                ch.iter()
                    .map(|(s, f)| (ids[*s], f.as_slice(), VnetHdr::default()))
                    .collect()
            })
            .collect();
        let mut i = 0;
        g.bench_function(BenchmarkId::new("established", fam), |bench| {
            bench.iter(|| {
                i = (i + 1) % bursts.len();
                black_box(b.w.process_burst(bursts[i].iter().copied()))
            })
        });
        assert_eq!(b.dp.stats().total_drops(), 0, "established/{fam}");
    }
    for (fam, gen_frame, sport_at) in fams {
        let mut b = setup(&m);
        let mut rng = Rng(0x2545_f491_4f6c_dd1d);
        let mut frames: Vec<(usize, Vec<u8>)> = (0..BURST)
            .map(|_| {
                let (s, d) = (rng.next() % INSTANCES, rng.next() % INSTANCES);
                (s, gen_frame(s, d, 1, true))
            })
            .collect();
        let mut sport: u32 = 0;
        let mut flows = 0usize;
        g.bench_function(BenchmarkId::new("first_syn", fam), |bench| {
            bench.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    if flows > 1_500_000 {
                        b = setup(&m);
                        flows = 0;
                    }
                    for (s, f) in frames.iter_mut() {
                        sport = sport.wrapping_add(1);
                        if sport.is_multiple_of(60_000) {
                            *s = rng.next() % INSTANCES;
                            let d = rng.next() % INSTANCES;
                            *f = gen_frame(*s, d, 1, true);
                        }
                        f[sport_at..sport_at + 2]
                            .copy_from_slice(&(1024 + (sport % 60_000) as u16).to_be_bytes());
                    }
                    let burst = frames
                        .iter()
                        .map(|(s, f)| (b.ids[*s], f.as_slice(), VnetHdr::default()));
                    let t = Instant::now();
                    let r = b.w.process_burst(burst);
                    total += t.elapsed();
                    flows += BURST;
                    black_box(r);
                }
                total
            })
        });
        let st = b.dp.stats();
        assert_eq!(
            st.total_drops(),
            0,
            "drops in first_syn/{fam}: {:?}",
            st.nonzero_drops().collect::<Vec<_>>()
        );
    }
    g.finish();
}

fn arp_answer(c: &mut Criterion) {
    let mut g = c.benchmark_group("pipeline/arp_answer");
    g.throughput(Throughput::Elements(BURST as u64));
    g.measurement_time(Duration::from_secs(2));
    let m = model(10);
    let mut b = setup(&m);
    let mut buf = [0u8; 64];
    let frames: Vec<(usize, Vec<u8>)> = (0..BURST)
        .map(|k| {
            let n = switch::arp::write_request(&mut buf, mac(k), ip(k), ip(k + 100));
            (k, buf[..n].to_vec())
        })
        .collect();
    let ids = b.ids.clone();
    g.bench_function("1000_ports", |bench| {
        bench.iter(|| {
            black_box(
                b.w.process_burst(
                    frames
                        .iter()
                        .map(|(s, f)| (ids[*s], f.as_slice(), VnetHdr::default())),
                ),
            )
        })
    });
    g.finish();
}

/// Flow logs to /dev/null (no rotation: not a regular file), 600 s interval
/// (the bench drains by hand).
fn flow_log_config() -> FlowLogConfig {
    FlowLogConfig::new(FlowLogSink::File("/dev/null".into()))
}

/// Hand the worker's table over and write it (untimed part of the bench).
fn drain(b: &mut Bench, logger: &mut FlowLogger) {
    b.w.hand_over_flows();
    let snap = b.dp.rules();
    logger
        .flush(b.dp.now_secs(), &snap, &[])
        .expect("flush flow log");
}

fn flow_log(c: &mut Criterion) {
    let rules = 100;
    let m = model(rules);
    let mut g = c.benchmark_group("pipeline/flow_log");
    g.throughput(Throughput::Elements(BURST as u64));
    // Established flows, off then on.
    for on in [false, true] {
        let mut b = setup_with(&m, on.then(flow_log_config));
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let flows: Vec<(usize, Vec<u8>)> = (0..4096)
            .map(|k| {
                let (s, d) = (rng.next() % INSTANCES, rng.next() % INSTANCES);
                let sport = 10_000 + k as u16;
                let syn = tcp(s, d, sport, true);
                let r =
                    b.w.process_burst([(b.ids[s], syn.as_slice(), VnetHdr::default())]);
                assert_eq!(r.forwarded, 1, "SYN of flow {k} not forwarded");
                (s, tcp(s, d, sport, false))
            })
            .collect();
        let ids = b.ids.clone();
        let bursts: Vec<Vec<(PortId, &[u8], VnetHdr)>> = flows
            .chunks(BURST)
            .map(|ch| {
                ch.iter()
                    .map(|(s, f)| (ids[*s], f.as_slice(), VnetHdr::default()))
                    .collect()
            })
            .collect();
        let mut i = 0;
        let name = if on { "on" } else { "off" };
        g.bench_function(BenchmarkId::new("established", name), |bench| {
            bench.iter(|| {
                i = (i + 1) % bursts.len();
                black_box(b.w.process_burst(bursts[i].iter().copied()))
            })
        });
        assert_eq!(b.dp.stats().total_drops(), 0);
    }
    // New flows: off, on (drained every 768 bursts), on with a full table.
    for (name, cfg, drained) in [
        ("off", None, false),
        ("on", Some(flow_log_config()), true),
        ("on_full", Some(flow_log_config()), false),
    ] {
        let mut b = setup_with(&m, cfg.clone());
        let mut logger =
            b.dp.take_flow_logger(Writer::open(&flow_log_config()).expect("open /dev/null"));
        let mut rng = Rng(0x2545_f491_4f6c_dd1d);
        let mut frames: Vec<(usize, Vec<u8>)> = (0..BURST)
            .map(|_| {
                let (s, d) = (rng.next() % INSTANCES, rng.next() % INSTANCES);
                (s, udp(s, d, 1))
            })
            .collect();
        let mut sport: u32 = 0;
        let mut flows = 0usize;
        let mut bursts = 0usize;
        g.bench_function(BenchmarkId::new("first_packet", name), |bench| {
            bench.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    if flows > 1_500_000 {
                        b = setup_with(&m, cfg.clone());
                        logger = b.dp.take_flow_logger(
                            Writer::open(&flow_log_config()).expect("open /dev/null"),
                        );
                        flows = 0;
                    }
                    if drained
                        && bursts.is_multiple_of(768)
                        && let Some(l) = logger.as_mut()
                    {
                        drain(&mut b, l);
                    }
                    for (s, f) in frames.iter_mut() {
                        sport = sport.wrapping_add(1);
                        if sport.is_multiple_of(60_000) {
                            *s = rng.next() % INSTANCES;
                            let d = rng.next() % INSTANCES;
                            *f = udp(*s, d, 1);
                        }
                        f[34..36].copy_from_slice(&(1024 + (sport % 60_000) as u16).to_be_bytes());
                    }
                    let burst = frames
                        .iter()
                        .map(|(s, f)| (b.ids[*s], f.as_slice(), VnetHdr::default()));
                    let t = Instant::now();
                    let r = b.w.process_burst(burst);
                    total += t.elapsed();
                    flows += BURST;
                    bursts += 1;
                    black_box(r);
                }
                total
            })
        });
        assert_eq!(b.dp.stats().total_drops(), 0);
    }
    g.finish();
}

criterion_group!(
    benches,
    established,
    first_packet,
    first_packet_egress,
    family,
    arp_answer,
    flow_log
);

/// Instruction-count mode for `valgrind --tool=callgrind` (repeatable on a noisy
/// machine, unlike wall time): `SGSW_IR_CASE=established|first_packet|first_syn|arp|
/// established6|first_syn6 SGSW_IR_BURSTS=N [SGSW_IR_RULES=R] [SGSW_IR_FLOWLOG=1]
/// [SGSW_IR_EGRESS=1] [SGSW_IR_DUAL=1]` runs N bursts of 32 frames
/// (`SGSW_IR_EGRESS=1`: with R specific egress rules per group in place of
/// the default one, see [`model_with`]; `SGSW_IR_DUAL=1`: on the dual-stack
/// model, [`dual_stack`], which the IPv6 cases `established6` and
/// `first_syn6`, the IPv6 twins of `established` and `first_syn`, always use) through
/// [`ir_run`] once, prints the on-CPU and wall ns per frame, and exits; under
/// callgrind, divide the `ir_run` inclusive cost by 32 N:
///
/// ```sh
/// SGSW_IR_CASE=first_packet SGSW_IR_BURSTS=200 valgrind --tool=callgrind \
///     --toggle-collect='*ir_run*' target/release/deps/pipeline-HASH
/// ```
fn ir_mode(case: &str, bursts: usize) {
    let rules: usize = std::env::var("SGSW_IR_RULES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let egress = std::env::var("SGSW_IR_EGRESS").is_ok_and(|v| v == "1");
    let mut m = model_with(rules, egress);
    let dual = case.ends_with('6') || std::env::var("SGSW_IR_DUAL").is_ok_and(|v| v == "1");
    if dual {
        dual_stack(&mut m);
    }
    // SGSW_IR_FLOWLOG=1: flow logs on (the table holds 32,768 flows: keep
    // first_packet runs below 1,024 bursts to measure recording, not skipping).
    let flow_log = std::env::var("SGSW_IR_FLOWLOG").is_ok_and(|v| v == "1");
    let mut b = setup_with(&m, flow_log.then(flow_log_config));
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let tcp_of: fn(usize, usize, u16, bool) -> Vec<u8> =
        if case.ends_with('6') { tcp6 } else { tcp };
    let frames: Vec<(usize, Vec<u8>)> = match case {
        "established" | "established6" => (0..4096)
            .map(|k| {
                let (s, d) = (rng.next() % INSTANCES, rng.next() % INSTANCES);
                let sport = 10_000 + k as u16;
                let syn = tcp_of(s, d, sport, true);
                let r =
                    b.w.process_burst([(b.ids[s], syn.as_slice(), VnetHdr::default())]);
                assert_eq!(r.forwarded, 1, "SYN of flow {k} not forwarded");
                (s, tcp_of(s, d, sport, false))
            })
            .collect(),
        "first_packet" => (0..bursts * BURST)
            .map(|k| {
                let (s, d) = (rng.next() % INSTANCES, rng.next() % INSTANCES);
                (s, udp(s, d, 1024 + (k % 60_000) as u16))
            })
            .collect(),
        // New TCP flows to port 22, admitted by one CIDR rule (the only rule
        // covering the port): where `first_packet`'s UDP 53 has ten
        // group-source rules to choose from.
        // `first_syn6`: the same over IPv6, admitted by `tcp 22 from` the
        // instances' /64.
        "first_syn" | "first_syn6" => (0..bursts * BURST)
            .map(|k| {
                let (s, d) = (rng.next() % INSTANCES, rng.next() % INSTANCES);
                (s, tcp_of(s, d, 1024 + (k % 60_000) as u16, true))
            })
            .collect(),
        "arp" => {
            let mut buf = [0u8; 64];
            (0..BURST)
                .map(|k| {
                    let n = switch::arp::write_request(&mut buf, mac(k), ip(k), ip(k + 100));
                    (k, buf[..n].to_vec())
                })
                .collect()
        }
        other => panic!("SGSW_IR_CASE: unknown case {other:?}"),
    };
    let ids = b.ids.clone();
    let all: Vec<(PortId, &[u8], VnetHdr)> = frames
        .iter()
        .map(|(s, f)| (ids[*s], f.as_slice(), VnetHdr::default()))
        .collect();
    let (cpu0, wall) = (cpu_ns(), Instant::now());
    let done = ir_run(&mut b.w, &all, bursts);
    let (cpu, wall) = (cpu_ns().saturating_sub(cpu0), wall.elapsed());
    // On-CPU time of this thread: unlike wall time it does not grow while the
    // thread waits for a core (the lab machine is shared), so before/after
    // comparisons stay meaningful under load.
    println!(
        "{case} rules={rules} flow_log={flow_log} specific_egress={egress} dual_stack={dual}: on-cpu {:.1} ns/frame, wall {:.1} ns/frame",
        cpu as f64 / done.max(1) as f64,
        wall.as_nanos() as f64 / done.max(1) as f64
    );
    let st = b.dp.stats();
    assert_eq!(
        st.total_drops(),
        0,
        "drops in {case}: {:?}",
        st.nonzero_drops().collect::<Vec<_>>()
    );
    println!("{case} rules={rules}: {done} frames through ir_run");
}

/// This thread's on-CPU time in ns (`/proc/thread-self/schedstat`), 0 if unknown.
fn cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// The measured part of [`ir_mode`]: `bursts` bursts of 32, cycling over `all`.
#[inline(never)]
fn ir_run(w: &mut Worker, all: &[(PortId, &[u8], VnetHdr)], bursts: usize) -> usize {
    let chunks: Vec<_> = all.chunks(BURST).collect();
    let mut n = 0;
    for i in 0..bursts {
        let r = w.process_burst(chunks[i % chunks.len()].iter().copied());
        n += r.forwarded + r.answered;
    }
    n
}

/// Flow logs A/B, interleaved (`SGSW_FLOWLOG_AB=ROUNDS`): each round runs
/// `established` (4096 tracked flows, 20,000 bursts) and `first_packet`
/// (24,576 new flows per 768 bursts, the flow-log table drained and flushed to
/// /dev/null untimed in between, 3,072 bursts) with flow logs off, then on;
/// every burst is timed alone and the median ns/frame is printed per run,
/// then the median over the rounds. A median of bursts is robust to the
/// preemptions of a shared machine, which a mean over a run is not.
fn flow_log_ab(rounds: usize) {
    let m = model(100);
    let mut results: Vec<(String, Vec<f64>)> = Vec::new();
    let mut push = |name: String, v: f64| match results.iter_mut().find(|(n, _)| *n == name) {
        Some((_, vs)) => vs.push(v),
        None => results.push((name, vec![v])),
    };
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    for round in 0..rounds {
        for on in [false, true] {
            let tag = if on { "on" } else { "off" };
            // Established flows.
            let mut b = setup_with(&m, on.then(flow_log_config));
            let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
            let flows: Vec<(usize, Vec<u8>)> = (0..4096)
                .map(|k| {
                    let (s, d) = (rng.next() % INSTANCES, rng.next() % INSTANCES);
                    let sport = 10_000 + k as u16;
                    let syn = tcp(s, d, sport, true);
                    b.w.process_burst([(b.ids[s], syn.as_slice(), VnetHdr::default())]);
                    (s, tcp(s, d, sport, false))
                })
                .collect();
            let all: Vec<(PortId, &[u8], VnetHdr)> = flows
                .iter()
                .map(|(s, f)| (b.ids[*s], f.as_slice(), VnetHdr::default()))
                .collect();
            let chunks: Vec<_> = all.chunks(BURST).collect();
            let mut t = Vec::with_capacity(20_000);
            for i in 0..20_000 {
                let s = Instant::now();
                black_box(b.w.process_burst(chunks[i % chunks.len()].iter().copied()));
                t.push(s.elapsed().as_nanos() as f64 / BURST as f64);
            }
            let e = median(t);
            // New flows.
            let mut b = setup_with(&m, on.then(flow_log_config));
            let mut logger =
                b.dp.take_flow_logger(Writer::open(&flow_log_config()).expect("open /dev/null"));
            let mut rng = Rng(0x2545_f491_4f6c_dd1d);
            let frames: Vec<(usize, Vec<u8>)> = (0..3072 * BURST)
                .map(|k| {
                    let (s, d) = (rng.next() % INSTANCES, rng.next() % INSTANCES);
                    (s, udp(s, d, 1024 + (k % 60_000) as u16))
                })
                .collect();
            let all: Vec<(PortId, &[u8], VnetHdr)> = frames
                .iter()
                .map(|(s, f)| (b.ids[*s], f.as_slice(), VnetHdr::default()))
                .collect();
            let mut t = Vec::with_capacity(3072);
            for (i, chunk) in all.chunks(BURST).enumerate() {
                if i > 0
                    && i % 768 == 0
                    && let Some(l) = logger.as_mut()
                {
                    drain(&mut b, l);
                }
                let s = Instant::now();
                black_box(b.w.process_burst(chunk.iter().copied()));
                t.push(s.elapsed().as_nanos() as f64 / BURST as f64);
            }
            let f = median(t);
            println!(
                "round {round} flow_log={tag}: established {e:.1} ns/frame, first_packet {f:.1} ns/frame"
            );
            push(format!("established/{tag}"), e);
            push(format!("first_packet/{tag}"), f);
            assert_eq!(b.dp.stats().total_drops(), 0);
        }
    }
    for (name, v) in results {
        println!(
            "median over {rounds} rounds: {name} {:.1} ns/frame",
            median(v)
        );
    }
}

/// Egress A/B, interleaved (`SGSW_EGRESS_AB=ROUNDS`): each round runs new
/// flows (3,072 bursts of 32, every frame a new flow: UDP 53 between random
/// instances, admitted by group rules, then TCP SYNs to port 22, admitted by a
/// CIDR rule) on the R = 100 model with the default egress rule, then with
/// specific egress rules ([`model_with`]); every burst is timed alone and the
/// median ns/frame is printed per run, then the median over the rounds.
fn egress_ab(rounds: usize) {
    let models = [
        ("default", model_with(100, false)),
        ("specific", model_with(100, true)),
    ];
    let mut results: Vec<(String, Vec<f64>)> = Vec::new();
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    for round in 0..rounds {
        for (tag, m) in &models {
            for case in ["first_packet", "first_syn"] {
                let b = setup(m);
                let mut w = b.w;
                let mut rng = Rng(0x2545_f491_4f6c_dd1d);
                let frames: Vec<(usize, Vec<u8>)> = (0..3072 * BURST)
                    .map(|k| {
                        let (s, d) = (rng.next() % INSTANCES, rng.next() % INSTANCES);
                        let sport = 1024 + (k % 60_000) as u16;
                        let f = if case == "first_syn" {
                            tcp(s, d, sport, true)
                        } else {
                            udp(s, d, sport)
                        };
                        (s, f)
                    })
                    .collect();
                let all: Vec<(PortId, &[u8], VnetHdr)> = frames
                    .iter()
                    .map(|(s, f)| (b.ids[*s], f.as_slice(), VnetHdr::default()))
                    .collect();
                let mut t = Vec::with_capacity(3072);
                for chunk in all.chunks(BURST) {
                    let s = Instant::now();
                    let r = w.process_burst(chunk.iter().copied());
                    t.push(s.elapsed().as_nanos() as f64 / BURST as f64);
                    assert_eq!(r.forwarded, BURST, "{case}/{tag}: every new flow passes");
                }
                let v = median(t);
                println!("round {round} egress={tag}: {case} {v:.1} ns/frame");
                let name = format!("{case}/{tag}");
                match results.iter_mut().find(|(n, _)| *n == name) {
                    Some((_, vs)) => vs.push(v),
                    None => results.push((name, vec![v])),
                }
                assert_eq!(b.dp.stats().total_drops(), 0, "{case}/{tag}");
            }
        }
    }
    for (name, v) in results {
        let ns = median(v);
        println!(
            "median over {rounds} rounds: {name} {ns:.1} ns/frame ({:.2} M new flows/s per core)",
            1000.0 / ns
        );
    }
}

fn main() {
    if let Some(rounds) = std::env::var("SGSW_EGRESS_AB")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        egress_ab(rounds);
        return;
    }
    if let Some(rounds) = std::env::var("SGSW_FLOWLOG_AB")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        flow_log_ab(rounds);
        return;
    }
    if let (Ok(case), Ok(n)) = (
        std::env::var("SGSW_IR_CASE"),
        std::env::var("SGSW_IR_BURSTS"),
    ) {
        ir_mode(&case, n.parse().expect("SGSW_IR_BURSTS: a number"));
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
