//! Filter-engine micro-benchmarks (criterion; elements = packets, so criterion
//! prints packets/s).
//!
//! Cases:
//! * `parse/tcp_syn` — `parse_frame` on an Ethernet/IPv4/TCP SYN built with
//!   etherparse.
//! * `allows/{10,100,1000}` — `Snapshot::allows` alone (first-packet rule
//!   evaluation), lab of 1k instances × 5 groups (of 50), N rules per group of
//!   which N-2 never match (a quarter group-source), the allowing rules last;
//!   half the traffic is allowed by a CIDR rule, half by a group-source rule.
//! * `first_packet/{10,100,1000}` — `Conntrack::judge` on new flows: rule
//!   evaluation plus the conntrack insert into a default-sized table (1M flows,
//!   64 MiB, prefaulted; never full): cache-cold by nature. Timed in on-CPU
//!   time of the thread (robust to a loaded machine), as are the three below.
//! * `first_packet_burst32/{10,100,1000}` — the same through
//!   `Conntrack::judge_burst` (bursts of 32: bucket prefetch first).
//! * `first_packet_huge/..`, `first_packet_burst32_huge/..` — the same two with
//!   the table on 2 MiB pages, as the switch backs it
//!   (`switch::sys::advise_hugepages`): no page walk per cold access.
//! * `established/{10,100,1000}` — `Conntrack::judge` on packets of 4k tracked
//!   flows, both directions (table and snapshot hot in cache: the compute cost).
//! * `established_64k/{10,100,1000}` — the same with 64k tracked flows (the
//!   table no longer fits in L2: adds the memory latency of a random lookup).
//! * `compile/{10k,100k}` — `compile()` of 100 / 1000 groups × 100 rules,
//!   1k instances in 5 groups each.
//! * `conntrack_1m/insert`, `conntrack_1m/lookup` — raw table with 1M flows
//!   (default config: capacity 1M): insert 1M distinct flows; judge random
//!   packets of 1M tracked flows (cache-cold); `conntrack_1m/lookup_burst32` the
//!   same in bursts of 32 through `judge_burst`. Prints `memory_bytes`.
//! * `conntrack_1m/shared_2threads` — two threads judging the two directions of
//!   the same 1M flows concurrently on the shared table (the alternative, steering
//!   flows to one core, would add a cross-core hand-off per packet); packets/s in
//!   total.
//!
//! Afterwards a summary prints ns/packet for the headline cases next to the
//! targets (established ≥ 25 Mpps, first packet ≥ 5 Mpps, < 20% slower from 10 to
//! 1000 rules per group, 1M flows ≤ 256 MB).

use std::hint::black_box;
use std::time::{Duration, Instant};

use bench::{LabSpec, established_packets, first_packets, lab_model, udp_flow};
use criterion::{BenchmarkId, Criterion, Throughput};
use filter::compile::{Snapshot, compile};
use filter::conntrack::{Conntrack, CtConfig};
use filter::{Packet, parse_frame};

const RULE_COUNTS: [usize; 3] = [10, 100, 1000];
const BURST: usize = 32;
const HOT_FLOWS: usize = 1 << 12;
const WARM_FLOWS: usize = 1 << 16;
const MILLION: usize = 1 << 20;

fn syn_frame() -> Vec<u8> {
    let builder = etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
        .ipv4([198, 51, 100, 7], [172, 31, 1, 1], 64)
        .tcp(40000, 80, 1, 64240)
        .syn();
    let mut frame = Vec::with_capacity(builder.size(0));
    builder.write(&mut frame, &[]).expect("build frame");
    frame
}

fn lab(rules: usize) -> (filter::Model, Snapshot) {
    let model = lab_model(&LabSpec::classifier(rules));
    let snap = compile(&model, 1);
    (model, snap)
}

/// Judge fresh first packets: `iters` new flows into default-sized tables (1M
/// flows, 64 MiB: the switch's default), one by one or in bursts of [`BURST`]
/// with [`Conntrack::judge_burst`]; with `huge`, the table is backed by 2 MiB
/// pages as the switch does (`switch::sys::advise_hugepages`). On-CPU time
/// ([`CpuClock`]).
fn time_first_packets(
    snap: &Snapshot,
    pkts: &[Packet],
    iters: u64,
    burst: bool,
    huge: bool,
) -> Duration {
    let mut total = Duration::ZERO;
    let mut left = iters as usize;
    let mut out = [Ok(()); BURST];
    while left > 0 {
        let n = left.min(pkts.len());
        let ct = new_table(huge);
        let start = CpuClock::now();
        if burst {
            for chunk in pkts[..n].chunks(BURST) {
                ct.judge_burst(snap, chunk, 0, &mut out);
                black_box(&out);
            }
        } else {
            for p in &pkts[..n] {
                let _ = black_box(ct.judge(snap, black_box(p), 0));
            }
        }
        total += start.elapsed();
        left -= n;
    }
    total
}

/// This thread's on-CPU time (`/proc/thread-self/schedstat`; wall time where the
/// kernel does not report it). First-packet runs are timed with it: unlike wall
/// time it does not grow while the thread waits for a core, so the cases stay
/// comparable on a shared, loaded machine.
struct CpuClock(Option<u64>, Instant);

impl CpuClock {
    fn cpu_ns() -> Option<u64> {
        std::fs::read_to_string("/proc/thread-self/schedstat")
            .ok()?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    }

    fn now() -> CpuClock {
        CpuClock(Self::cpu_ns(), Instant::now())
    }

    fn elapsed(&self) -> Duration {
        match (self.0, Self::cpu_ns()) {
            (Some(a), Some(b)) => Duration::from_nanos(b.saturating_sub(a)),
            _ => self.1.elapsed(),
        }
    }
}

/// A default-sized table (1M flows), on huge pages if `huge` (panics if the
/// kernel refuses them: the comparison would be meaningless).
fn new_table(huge: bool) -> Conntrack {
    let ct = Conntrack::new(CtConfig::default());
    if huge {
        let (addr, len) = ct.table_region();
        let advised = switch::sys::advise_hugepages(addr, len).expect("huge pages");
        assert!(
            advised >= len / 2,
            "only {advised} of {len} bytes on huge pages"
        );
    }
    ct
}

fn bench_parse(c: &mut Criterion) {
    let frame = syn_frame();
    assert!(parse_frame(&frame).expect("parses").packet().is_some());
    let mut g = c.benchmark_group("parse");
    g.throughput(Throughput::Elements(1));
    g.bench_function("tcp_syn", |b| {
        b.iter(|| black_box(parse_frame(black_box(&frame))))
    });
    g.finish();
}

fn bench_classify(c: &mut Criterion) {
    let labs: Vec<(usize, filter::Model, Snapshot)> = RULE_COUNTS
        .iter()
        .map(|&r| {
            let (m, s) = lab(r);
            (r, m, s)
        })
        .collect();

    let mut g = c.benchmark_group("allows");
    g.throughput(Throughput::Elements(1));
    for (r, model, snap) in &labs {
        let pkts = first_packets(model, 4096, 1);
        assert!(pkts.iter().all(|p| snap.allows(p)));
        let mut i = 0;
        g.bench_with_input(BenchmarkId::from_parameter(r), snap, |b, snap| {
            b.iter(|| {
                i = (i + 1) & 4095;
                black_box(snap.allows(black_box(&pkts[i])))
            })
        });
    }
    g.finish();

    for (group, burst, huge) in [
        ("first_packet", false, false),
        ("first_packet_burst32", true, false),
        ("first_packet_huge", false, true),
        ("first_packet_burst32_huge", true, true),
    ] {
        let mut g = c.benchmark_group(group);
        g.throughput(Throughput::Elements(1));
        for (r, model, snap) in &labs {
            let pkts = first_packets(model, 1 << 18, 2);
            g.bench_with_input(BenchmarkId::from_parameter(r), snap, |b, snap| {
                b.iter_custom(|iters| time_first_packets(snap, &pkts, iters, burst, huge))
            });
        }
        g.finish();
    }

    for (group, flows) in [("established", HOT_FLOWS), ("established_64k", WARM_FLOWS)] {
        let mut g = c.benchmark_group(group);
        g.throughput(Throughput::Elements(1));
        for (r, model, snap) in &labs {
            let (ct, pkts) = established_setup(model, snap, flows);
            let mask = pkts.len() - 1;
            let mut i = 0;
            g.bench_with_input(BenchmarkId::from_parameter(r), snap, |b, snap| {
                b.iter(|| {
                    i = (i + 1) & mask;
                    black_box(ct.judge(snap, black_box(&pkts[i]), 1))
                })
            });
        }
        g.finish();
    }
}

/// A table holding `flows` allowed flows of the lab, and their packets both ways.
fn established_setup(
    model: &filter::Model,
    snap: &Snapshot,
    flows: usize,
) -> (Conntrack, Vec<Packet>) {
    let first = first_packets(model, flows, 3);
    let ct = Conntrack::new(CtConfig::with_capacity(flows * 2));
    for p in &first {
        ct.judge(snap, p, 0).expect("allowed first packet");
    }
    (ct, established_packets(&first))
}

fn bench_compile(c: &mut Criterion) {
    let mut g = c.benchmark_group("compile");
    g.sample_size(10);
    for (name, groups) in [("10k", 100), ("100k", 1000)] {
        let spec = LabSpec {
            instances: 1000,
            groups,
            groups_per_instance: 5,
            rules_per_group: 100,
        };
        let model = lab_model(&spec);
        assert_eq!(spec.total_rules(), groups * 100);
        g.bench_function(name, |b| b.iter(|| black_box(compile(&model, 2))));
    }
    g.finish();
}

fn bench_conntrack(c: &mut Criterion) {
    let (model, snap) = lab(10);
    drop(model);
    let flows: Vec<Packet> = (0..MILLION).map(udp_flow).collect();
    let mut g = c.benchmark_group("conntrack_1m");
    g.throughput(Throughput::Elements(1));
    g.sample_size(10);
    g.bench_function("insert", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            let mut left = iters as usize;
            while left > 0 {
                let n = left.min(MILLION);
                let ct = Conntrack::new(CtConfig::default());
                let start = Instant::now();
                for p in &flows[..n] {
                    let _ = black_box(ct.judge(&snap, p, 0));
                }
                total += start.elapsed();
                left -= n;
            }
            total
        })
    });

    let ct = Conntrack::new(CtConfig::default());
    for p in &flows {
        ct.judge(&snap, p, 0).expect("insert");
    }
    assert_eq!(ct.len(), MILLION);
    println!(
        "conntrack_1m: {} flows, memory_bytes = {} ({:.1} MiB)",
        ct.len(),
        ct.memory_bytes(),
        mib(ct.memory_bytes())
    );
    // Random order: reply direction of random flows.
    let mut rng = bench::Rng::new(9);
    let order: Vec<Packet> = (0..MILLION)
        .map(|_| {
            let mut p = flows[rng.below(MILLION)];
            p.key = p.key.reversed();
            p
        })
        .collect();
    let mut i = 0;
    g.bench_function("lookup", |b| {
        b.iter(|| {
            i = (i + 1) & (MILLION - 1);
            black_box(ct.judge(&snap, black_box(&order[i]), 1))
        })
    });
    g.bench_function("lookup_burst32", |b| {
        let mut out = [Ok(()); BURST];
        b.iter_custom(|iters| {
            let start = Instant::now();
            let mut k = 0usize;
            for _ in 0..iters.div_ceil(BURST as u64) {
                let at = k & (MILLION - 1);
                ct.judge_burst(&snap, &order[at..at + BURST], 1, &mut out);
                black_box(&out);
                k += BURST;
            }
            start.elapsed()
        })
    });
    g.bench_function("shared_2threads", |b| {
        b.iter_custom(|iters| {
            let n = iters as usize;
            let start = Instant::now();
            std::thread::scope(|s| {
                for t in 0..2 {
                    let (ct, snap, flows, order) = (&ct, &snap, &flows, &order);
                    s.spawn(move || {
                        for k in 0..n.div_ceil(2) {
                            let idx = k & (MILLION - 1);
                            let p = if t == 0 { &flows[idx] } else { &order[idx] };
                            let _ = black_box(ct.judge(snap, p, 2));
                        }
                    });
                }
            });
            start.elapsed()
        })
    });
    g.finish();
}

fn mib(b: usize) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

/// Mean ns per call of `f` over about `budget`.
fn ns_per(budget: Duration, mut f: impl FnMut(usize)) -> f64 {
    let start = Instant::now();
    let mut n = 0usize;
    while start.elapsed() < budget {
        for _ in 0..4096 {
            f(n);
            n += 1;
        }
    }
    start.elapsed().as_nanos() as f64 / n as f64
}

/// The short summary: ns/packet and Mpps for the headline cases vs the targets.
fn summary() {
    let budget = Duration::from_millis(500);
    let mut est = Vec::new();
    let mut est64 = Vec::new();
    let mut first = Vec::new();
    let mut first_b = Vec::new();
    let mut first_h = Vec::new();
    let mut first_bh = Vec::new();
    for r in RULE_COUNTS {
        let (model, snap) = lab(r);
        println!(
            "summary: lab with {r} rules/group: {} policies, snapshot {:.1} MiB",
            snap.policy_count(),
            mib(snap.memory_bytes())
        );
        for (flows, out) in [(HOT_FLOWS, &mut est), (WARM_FLOWS, &mut est64)] {
            let (ct, pkts) = established_setup(&model, &snap, flows);
            let mask = pkts.len() - 1;
            out.push(ns_per(budget, |i| {
                let _ = black_box(ct.judge(&snap, &pkts[i & mask], 1));
            }));
        }
        let fresh = first_packets(&model, 1 << 18, 5);
        let iters = 1u64 << 18;
        for (out, burst, huge) in [
            (&mut first, false, false),
            (&mut first_b, true, false),
            (&mut first_h, false, true),
            (&mut first_bh, true, true),
        ] {
            let t = time_first_packets(&snap, &fresh, iters, burst, huge);
            out.push(t.as_nanos() as f64 / iters as f64);
        }
    }
    let line = |name: &str, v: &[f64], target_mpps: f64| {
        let parts: Vec<String> = RULE_COUNTS
            .iter()
            .zip(v)
            .map(|(r, ns)| format!("{r} rules/group {ns:.1} ns ({:.1} Mpps)", 1000.0 / ns))
            .collect();
        let slowdown = (v[2] / v[0] - 1.0) * 100.0;
        println!(
            "summary: {name}: {} | 10→1000 rules {slowdown:+.0}% (target < +20%) | target >= {target_mpps} Mpps",
            parts.join(", ")
        );
    };
    line("established (4k flows)", &est, 25.0);
    line("established (64k flows)", &est64, 25.0);
    line("first packet", &first, 5.0);
    line("first packet, bursts of 32", &first_b, 5.0);
    line("first packet, huge pages", &first_h, 5.0);
    line("first packet, bursts of 32, huge pages", &first_bh, 5.0);
    let ct = Conntrack::new(CtConfig::default());
    println!(
        "summary: conntrack capacity {} flows: {:.1} MiB (target <= 256 MiB)",
        ct.config().capacity,
        mib(ct.memory_bytes())
    );
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    bench_parse(&mut c);
    bench_classify(&mut c);
    bench_compile(&mut c);
    bench_conntrack(&mut c);
    c.final_summary();
    summary();
}
