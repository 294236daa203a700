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
//! * `arp_answer`: ARP requests answered by the switch.
//!
//! Throughput is reported in elements (frames) per second: Mpps per core.

use std::hint::black_box;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group};
use etherparse::PacketBuilder;
use filter::model::{Instance, Limits, Owner, RuleSpec};
use filter::{CtConfig, Mac, Model, compile};
use switch::port::VnetHdr;
use switch::worker::Worker;
use switch::{Datapath, MemOptions, PortId, PortRole, PortSpec, SwitchConfig, mem_port_with};

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

struct Bench {
    dp: Arc<Datapath>,
    w: Worker,
    ids: Vec<PortId>,
}

/// The model: 1000 instances in 10 groups with `rules` rules each.
fn model(rules: usize) -> Model {
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
            let spec = if k.is_multiple_of(10) {
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
            };
            if m.authorize(&owner, &name, &spec).is_ok() {
                n += 1;
            }
        }
        // What the traffic needs: TCP 22 from the subnet, UDP 53 from every group.
        let need = [
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
        ];
        for s in need {
            m.authorize(&owner, &name, &s).expect("needed rule");
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
    let ct = CtConfig {
        capacity: 1 << 21,
        per_instance_quota: 1 << 20,
        ..CtConfig::default()
    };
    let dp = Datapath::new(SwitchConfig {
        workers: 1,
        ct,
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

criterion_group!(benches, established, first_packet, arp_answer);

/// Instruction-count mode for `valgrind --tool=callgrind` (repeatable on a noisy
/// machine, unlike wall time): `SGSW_IR_CASE=established|first_packet|first_syn|arp
/// SGSW_IR_BURSTS=N [SGSW_IR_RULES=R]` runs N bursts of 32 frames through
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
    let m = model(rules);
    let mut b = setup(&m);
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let frames: Vec<(usize, Vec<u8>)> = match case {
        "established" => (0..4096)
            .map(|k| {
                let (s, d) = (rng.next() % INSTANCES, rng.next() % INSTANCES);
                let sport = 10_000 + k as u16;
                let syn = tcp(s, d, sport, true);
                let r =
                    b.w.process_burst([(b.ids[s], syn.as_slice(), VnetHdr::default())]);
                assert_eq!(r.forwarded, 1, "SYN of flow {k} not forwarded");
                (s, tcp(s, d, sport, false))
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
        "first_syn" => (0..bursts * BURST)
            .map(|k| {
                let (s, d) = (rng.next() % INSTANCES, rng.next() % INSTANCES);
                (s, tcp(s, d, 1024 + (k % 60_000) as u16, true))
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
        "{case} rules={rules}: on-cpu {:.1} ns/frame, wall {:.1} ns/frame",
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

fn main() {
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
