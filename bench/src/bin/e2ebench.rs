//! `e2ebench`: the end-to-end benchmark — sgswitch side by side with the bare
//! wire, a veth pair, the Linux bridge + nftables and Open vSwitch userspace,
//! under the same loads, in one run (root; see `scripts/bench.sh`).
//!
//! ```text
//! e2ebench [--only sgswitch,wire,...|v6|v4] [--metrics tcp,tcp4,flows,udp,nmap,edit,cli]
//!          [--quick] [--reps 3] [--tcp-secs 5] [--udp-secs 3] [--flows 60000]
//!          [--rules 10,100,1000] [--rules6 100] [--report docs/benchmarks.md] ...
//! ```
//!
//! IPv6 rows (issue 15): the bare wire and sgswitch (`--rules6` IPv6 rules)
//! are measured over IPv6 too, in the same setup and run as their IPv4 rows
//! (`wire-v6`, `sgswitch-100-v6`: TCP 1 stream with `iperf3 -6` and new
//! flows/s with flowgen to the IPv6 address); the report puts each beside its
//! IPv4 row. `--only v6` runs only the IPv6 rows, `--only v4` only the IPv4
//! ones; `--only wire-v6` / `sgswitch-v6` / `sgswitch-100-v6` pick one.
//!
//! Contract: one path family at a time is set up, measured and torn down (see
//! [`bench::harness`]); progress goes to stderr; the markdown report goes to
//! `--report` (with the SVG chart beside it, same name `.svg`) or, without it,
//! to stdout. A path that cannot be set up is reported with its reason and the
//! run goes on. Ctrl-C stops between steps and tears everything down.
//! `barewire` and `flowgen` are taken from the directory of this executable.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use bench::harness::edit;
use bench::harness::exec::{CpuSample, HarnessError, Interrupt, Result, have};
use bench::harness::load::{self, UdpLoad};
use bench::harness::paths::{
    BridgePath, Endpoints, Family, OvsPath, SgOptions, SgPath, V6_SUFFIX, VethPath, WirePath,
    panic_text,
};
use bench::harness::report::{Machine, PathResult, Report, loadavg, median};
use clap::Parser;
use mgmt::api::error_chain;

#[derive(Parser, Debug, Clone)]
#[command(about = "End-to-end benchmark: sgswitch vs bare wire, veth, bridge+nftables, OVS")]
struct Opts {
    /// Paths to run: families (veth, wire, wire-plain, sgswitch, nft, nftset,
    /// ovs, ovs-tso) or labels (sgswitch-100, nft-1000, nft-edit: the kernel's
    /// edit test alone); `v6` / `v4`: only the IPv6 / IPv4 rows; a family or
    /// label with `-v6` (wire-v6, sgswitch-v6, sgswitch-100-v6): its IPv6 row
    /// alone. Default: all.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Metrics: tcp (1 stream), tcp4, flows, udp, nmap, edit, cli. Default: all.
    #[arg(long, value_delimiter = ',')]
    metrics: Vec<String>,
    /// One repetition, shorter runs, fewer edits.
    #[arg(long)]
    quick: bool,
    /// Repetitions of each TCP / flows / UDP run (median reported).
    #[arg(long)]
    reps: Option<usize>,
    /// Seconds per iperf3 TCP run.
    #[arg(long)]
    tcp_secs: Option<u64>,
    /// Seconds per small-UDP run.
    #[arg(long)]
    udp_secs: Option<f64>,
    /// New flows per flows run (sgswitch charges them to one client instance,
    /// whose conntrack quota is 65536).
    #[arg(long, default_value_t = 60_000)]
    flows: u64,
    /// Sender threads of flowgen. Default: one where a forwarding process
    /// needs the other core (wire, sgswitch, OVS: more senders only take its
    /// CPU), one per CPU on the kernel paths (they forward in the sender's
    /// context).
    #[arg(long)]
    threads: Option<usize>,
    /// Rules per group / chain.
    #[arg(long, value_delimiter = ',', default_values_t = vec![10, 100, 1000])]
    rules: Vec<usize>,
    /// IPv6 rules per group of sgswitch's IPv6 rows (each beside the IPv4
    /// row of the same count, when measured).
    #[arg(long, value_delimiter = ',', default_values_t = vec![100])]
    rules6: Vec<usize>,
    /// Rule counts of the nft-set variant.
    #[arg(long, value_delimiter = ',', default_values_t = vec![1000])]
    nftset_rules: Vec<usize>,
    /// Rule edits (authorize + revoke pairs = edits / 2).
    #[arg(long)]
    edits: Option<usize>,
    /// The sgswitch edit test alone at these model sizes (rules in the
    /// padding groups, e.g. 1000,10000,100000): one lab per size, under the
    /// same TCP load, no throughput runs; prints one `EDIT-LATENCY` line per
    /// size. Needs `--only sgswitch --metrics edit`.
    #[arg(long, value_delimiter = ',')]
    edit_rules: Vec<usize>,
    /// With --edit-rules: namespace instances are launched and terminated,
    /// one at a time, back to back, while the edits are probed (edits while
    /// guests are being launched, issue 13).
    #[arg(long)]
    edit_launches: bool,
    /// With --edit-launches: at most this many launches per second, evenly
    /// spaced (default: back to back, so a daemon that launches faster gets
    /// a heavier launch load; a fixed rate compares daemons under the same).
    #[arg(long, requires = "edit_launches", value_parser = clap::value_parser!(u32).range(1..=1000))]
    edit_launch_rate: Option<u32>,
    /// CLI round trips.
    #[arg(long)]
    cli_runs: Option<usize>,
    /// sgswitch `--workers`.
    #[arg(long, default_value_t = 1)]
    sg_workers: usize,
    /// More `sgswitch up` arguments (repeat; e.g. --sg-arg=--poll --sg-arg=busy).
    #[arg(long, allow_hyphen_values = true)]
    sg_arg: Vec<String>,
    /// Write the markdown report here (and FILE.svg's chart beside it).
    #[arg(long)]
    report: Option<PathBuf>,
    /// The command that ran this one, for the report (scripts/bench.sh sets it).
    #[arg(long, hide = true)]
    invoked_as: Option<String>,
}

/// Rules in the chain of the kernel's edit test (as many as sgswitch's).
const NFT_EDIT_RULES: usize = 10_000;

/// Resolved settings.
#[derive(Clone, Debug)]
struct Plan {
    reps: usize,
    tcp_secs: u64,
    udp_secs: f64,
    edits: usize,
    cli_runs: usize,
}

impl Opts {
    fn plan(&self) -> Plan {
        Plan {
            reps: self.reps.unwrap_or(if self.quick { 1 } else { 3 }).max(1),
            tcp_secs: self.tcp_secs.unwrap_or(if self.quick { 3 } else { 5 }),
            udp_secs: self.udp_secs.unwrap_or(if self.quick { 2.0 } else { 3.0 }),
            edits: self.edits.unwrap_or(if self.quick { 60 } else { 200 }),
            cli_runs: self.cli_runs.unwrap_or(if self.quick { 30 } else { 100 }),
        }
    }

    fn metric(&self, m: &str) -> bool {
        self.metrics.is_empty() || self.metrics.iter().any(|x| x == m)
    }

    /// `--only`'s address-family words (`v4`, `v6`) and the rest.
    fn only_split(&self) -> (Vec<&str>, Vec<&str>) {
        self.only
            .iter()
            .map(String::as_str)
            .partition(|o| *o == "v4" || *o == "v6")
    }

    /// Whether family `f` is set up (it has a selected row).
    fn family(&self, f: Family) -> bool {
        if self.only.is_empty() {
            return true;
        }
        let (dirs, names) = self.only_split();
        if !dirs.is_empty() && !dirs.contains(&"v4") && !f.has_v6() {
            return false;
        }
        names.is_empty()
            || names.iter().any(|o| {
                let (o, v6) = match o.strip_suffix(V6_SUFFIX) {
                    Some(b) => (b, true),
                    None => (*o, false),
                };
                (!v6 || f.has_v6())
                    && (o == f.name()
                        || o.strip_prefix(f.name())
                            .and_then(|r| r.strip_prefix('-'))
                            .is_some_and(|r| r == "edit" || r.parse::<usize>().is_ok()))
            })
    }

    /// Whether the IPv4 row (or with `v6` the IPv6 row) of the path labelled
    /// `label` (its IPv4 label: `wire`, `sgswitch-100`) of family `f` runs.
    fn row(&self, f: Family, label: &str, v6: bool) -> bool {
        if v6 && (!f.has_v6() || !(self.metric("tcp") || self.metric("flows"))) {
            return false;
        }
        if self.only.is_empty() {
            return true;
        }
        let (dirs, names) = self.only_split();
        if !dirs.is_empty() && !dirs.contains(&if v6 { "v6" } else { "v4" }) {
            return false;
        }
        names.is_empty()
            || names.iter().any(|o| match o.strip_suffix(V6_SUFFIX) {
                Some(b) => v6 && (b == f.name() || b == label),
                None => *o == f.name() || *o == label,
            })
    }

    fn label(&self, f: Family, label: &str) -> bool {
        self.row(f, label, false)
    }
}

/// Run state shared by all measurements.
struct Run {
    opts: Opts,
    plan: Plan,
    flowgen: PathBuf,
    started: Instant,
    /// Next free flowgen source port (no two runs share a 5-tuple).
    next_sport: u32,
}

impl Run {
    fn progress(&self, msg: &str) {
        eprintln!("[{:7.1}s] {msg}", self.started.elapsed().as_secs_f64());
    }

    fn sports(&mut self, n: u32) -> u16 {
        if self.next_sport + n > 65_000 {
            self.next_sport = 20_000;
        }
        let p = self.next_sport;
        self.next_sport += n;
        p as u16
    }

    /// Every metric on one path.
    fn measure(&mut self, ep: &Endpoints) -> PathResult {
        let mut r = PathResult {
            label: ep.label.clone(),
            family: Some(ep.family),
            rules: ep.rules,
            v6: ep.v6(),
            ..PathResult::default()
        };
        if let Err(e) = self.measure_into(ep, &mut r) {
            self.progress(&format!("{}: FAILED: {e}", ep.label));
            r.errors.push(error_chain(&e));
        }
        r
    }

    /// flowgen's sender threads on `ep` (see `--threads`).
    fn threads(&self, ep: &Endpoints) -> usize {
        self.opts.threads.unwrap_or(if ep.forwarder.is_some() {
            1
        } else {
            bench::harness::exec::ncpus().max(1)
        })
    }

    fn measure_into(&mut self, ep: &Endpoints, r: &mut PathResult) -> Result<()> {
        let label = ep.label.clone();
        let threads = self.threads(ep);
        load::ping(&ep.clients[0], ep.server_ip)
            .map_err(|e| HarnessError::Setup(format!("no connectivity client -> server: {e}")))?;
        let (reps, secs) = (self.plan.reps, self.plan.tcp_secs);
        // IPv6 rows: TCP 1 stream and new flows only (the IPv6/IPv4 ratios).
        let v6 = ep.v6();
        for (metric, streams) in [("tcp", 1usize), ("tcp4", 4)] {
            if !self.opts.metric(metric) || (v6 && streams > 1) {
                continue;
            }
            for i in 0..reps {
                Interrupt::check()?;
                let t = load::tcp(ep, streams, secs, 5201)?;
                self.progress(&format!(
                    "{label}: TCP {streams} stream(s) run {}/{reps}: {:.2} Gbit/s, forwarder CPU {}, machine {:.0} %",
                    i + 1,
                    t.gbps,
                    t.cpu.proc_pct.map_or("kernel".into(), |p| format!("{p:.0} %")),
                    t.cpu.machine_pct
                ));
                if streams == 1 {
                    r.tcp1.push(t);
                } else {
                    r.tcp4.push(t);
                }
            }
        }
        if self.opts.metric("flows") {
            let per_thread = self.opts.flows.div_ceil(threads as u64);
            for i in 0..reps {
                Interrupt::check()?;
                // A fresh client per run where the path has several (sgswitch:
                // conntrack quota and state are per client instance).
                let client = if ep.clients.len() > 1 {
                    ep.clients[1 + i % (ep.clients.len() - 1)].clone()
                } else {
                    ep.clients[0].clone()
                };
                load::ping(&client, ep.server_ip)?;
                let ports = threads as u32 * per_thread.div_ceil(60_000) as u32;
                let l = UdpLoad {
                    fixed: false,
                    count: self.opts.flows,
                    secs: 10.0,
                    threads,
                    sport_base: self.sports(ports),
                };
                let u = load::udp(ep, &client, &self.flowgen, l)?;
                self.progress(&format!(
                    "{label}: new flows run {}/{reps}: {:.0}/s received ({} of {} sent at {:.0}/s, loss {:.1} %)",
                    i + 1,
                    u.rx_pps,
                    u.received,
                    u.sent,
                    u.tx_pps,
                    u.loss() * 100.0
                ));
                r.flows.push(u);
            }
        }
        if self.opts.metric("udp") && !v6 {
            for i in 0..reps {
                Interrupt::check()?;
                let l = UdpLoad {
                    fixed: true,
                    count: 50_000_000,
                    secs: self.plan.udp_secs,
                    threads,
                    sport_base: self.sports(threads as u32),
                };
                let u = load::udp(ep, &ep.clients[0], &self.flowgen, l)?;
                self.progress(&format!(
                    "{label}: small UDP run {}/{reps}: {:.0}/s received ({:.0}/s offered, loss {:.1} %)",
                    i + 1,
                    u.rx_pps,
                    u.tx_pps,
                    u.loss() * 100.0
                ));
                r.udp.push(u);
            }
        }
        if let (true, Some(scanner), IpAddr::V4(target)) =
            (self.opts.metric("nmap"), &ep.scanner, ep.server_ip)
        {
            Interrupt::check()?;
            let n = load::nmap(scanner, target)?;
            self.progress(&format!(
                "{label}: nmap -p1-1000: {:.2} s, {} of {} filtered",
                n.secs, n.filtered, n.total
            ));
            r.nmap = Some(n);
        }
        Ok(())
    }
}

/// Runs `f`, turning an error or a panic into `Err(text)`.
fn guarded<T>(f: impl FnOnce() -> Result<T>) -> std::result::Result<T, String> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(error_chain(&e)),
        Err(p) => Err(format!("panic: {}", panic_text(&p))),
    }
}

/// The command for the report (markdown): this program's arguments (without
/// `--invoked-as`), after the script that ran it if any.
fn command_line(invoked_as: Option<&str>) -> String {
    let mut args = Vec::new();
    let mut it = std::env::args();
    while let Some(a) = it.next() {
        if a == "--invoked-as" {
            it.next();
        } else if !a.starts_with("--invoked-as=") {
            args.push(a);
        }
    }
    match invoked_as {
        Some(cmd) => format!("`{}` (runs `{}`)", cmd.trim(), args.join(" ")),
        None => format!("`{}`", args.join(" ")),
    }
}

fn utc_now() -> String {
    Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

fn sibling(name: &str) -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .unwrap_or_default()
        .join(name)
}

/// `--edit-rules`: the sgswitch edit test alone, one lab per model size, under
/// an iperf3 TCP stream to the first `rules` server (as in the full run).
/// Prints an `EDIT-LATENCY` line per size; the last size's result goes into the
/// report.
fn edit_sweep(run: &mut Run, rules: &[usize], report: &mut Report) {
    let opts = run.opts.clone();
    let plan = run.plan.clone();
    for &total in &opts.edit_rules {
        if Interrupt::raised() {
            break;
        }
        let so = SgOptions {
            rules: rules.to_vec(),
            flow_runs: 1,
            workers: opts.sg_workers,
            extra: opts.sg_arg.clone(),
            edit_setup: true,
            pad_rules: total,
            rules6: Vec::new(),
        };
        let t = Instant::now();
        let sg = match guarded(|| SgPath::setup(&so)) {
            Ok(sg) => sg,
            Err(e) => {
                report
                    .skipped
                    .push((format!("sgswitch edit test, {total} rules"), e));
                continue;
            }
        };
        run.progress(&format!(
            "sgswitch lab ready in {:.1} s ({} rules in the model)",
            t.elapsed().as_secs_f64(),
            sg.total_rules().map_or("?".into(), |n| n.to_string())
        ));
        let load_ep = rules.first().and_then(|&n| sg.endpoints(n));
        match guarded(|| {
            edit::edit_latency(
                &sg,
                plan.edits / 2,
                load_ep.as_ref(),
                opts.edit_launches.then_some(match opts.edit_launch_rate {
                    Some(n) => edit::LaunchPace::PerSecond(n),
                    None => edit::LaunchPace::BackToBack,
                }),
            )
        }) {
            Ok(e) => {
                let pct = |v: &[f64], p: f64| {
                    bench::harness::report::percentile(v, p).unwrap_or(f64::NAN)
                };
                let pair = |x: Option<(f64, f64)>| {
                    x.map_or("? ?".into(), |(a, b)| format!("{a:.0} {b:.0}"))
                };
                println!(
                    "EDIT-LATENCY rules={} edits={} misses={} enforce_us_p50_p99 {:.0} {:.0} \
                     ack_us_p50_p99 {:.0} {:.0} revoke_us_p50_p99 {:.0} {:.0} \
                     enforce_rx_us_p50_p99 {:.0} {:.0} enforce_sent_us_p50_p99 {:.0} {:.0} \
                     probe_gap_us_p50_p99_max {:.0} {:.0} {:.0} transit_us_p50_p99 {:.0} {:.0} launches {} launch_us_p50_p99 {:.0} {:.0} \
                     daemon_publish_us_p50_p99 {} daemon_commit_us_p50_p99 {} load {}",
                    e.total_rules.map_or("?".into(), |n| n.to_string()),
                    e.enforce_us.len() + e.misses,
                    e.misses,
                    pct(&e.enforce_us, 50.0),
                    pct(&e.enforce_us, 99.0),
                    pct(&e.ack_us, 50.0),
                    pct(&e.ack_us, 99.0),
                    pct(&e.revoke_us, 50.0),
                    pct(&e.revoke_us, 99.0),
                    pct(&e.enforce_rx_us, 50.0),
                    pct(&e.enforce_rx_us, 99.0),
                    pct(&e.enforce_sent_us, 50.0),
                    pct(&e.enforce_sent_us, 99.0),
                    pct(&e.probe_gap_us, 50.0),
                    pct(&e.probe_gap_us, 99.0),
                    pct(&e.probe_gap_us, 100.0),
                    pct(&e.transit_us, 50.0),
                    pct(&e.transit_us, 99.0),
                    e.launch_us.len(),
                    pct(&e.launch_us, 50.0),
                    pct(&e.launch_us, 99.0),
                    pair(e.daemon_publish_us),
                    pair(e.daemon_commit_us),
                    e.load_note.as_deref().unwrap_or("none"),
                );
                report.edit = Some(e);
            }
            Err(e) => report
                .skipped
                .push((format!("sgswitch edit test, {total} rules"), e)),
        }
    }
}

fn main() {
    let opts = Opts::parse();
    if let Err(e) = Interrupt::install() {
        eprintln!("e2ebench: {e}");
        std::process::exit(1);
    }
    if !e2e::is_root() {
        eprintln!("e2ebench: must run as root (namespaces, TAPs, nftables)");
        std::process::exit(2);
    }
    let missing: Vec<&str> = ["iperf3", "nmap", "busybox", "nft", "ip", "sysctl"]
        .into_iter()
        .filter(|t| !have(t))
        .collect();
    if !missing.is_empty() {
        eprintln!("e2ebench: missing tools {missing:?} (scripts/bench.sh installs them)");
        std::process::exit(2);
    }
    let flowgen = sibling("flowgen");
    let barewire = sibling("barewire");
    for b in [&flowgen, &barewire, &sibling("labhelper")] {
        if !b.exists() {
            eprintln!(
                "e2ebench: {} not built (cargo build --release -p bench --bins -p e2e --bin labhelper -p mgmt --bin sgswitch)",
                b.display()
            );
            std::process::exit(2);
        }
    }
    let plan = opts.plan();
    let scratch = std::env::temp_dir().join(format!("sgbench-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&scratch);
    let mut report = Report {
        date: utc_now(),
        command: command_line(opts.invoked_as.as_deref()),
        machine: Machine::probe(),
        settings: format!(
            "{} repetition(s); iperf3 TCP {} s per run; {} new flows per run from {} sender thread(s); \
             small UDP {} s per run; {} rule edits; {} CLI runs; IPv6 rows (TCP 1 stream, new flows): \
             bare wire and sgswitch with {} IPv6 rules; sgswitch --workers {} {}",
            plan.reps,
            plan.tcp_secs,
            opts.flows,
            opts.threads.map_or_else(
                || "1 (forwarder paths) or one per CPU (kernel paths)".to_owned(),
                |t| t.to_string()
            ),
            plan.udp_secs,
            plan.edits,
            plan.cli_runs,
            opts.rules6
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("/"),
            opts.sg_workers,
            opts.sg_arg.join(" ")
        ),
        ..Report::default()
    };
    let mut run = Run {
        opts: opts.clone(),
        plan: plan.clone(),
        flowgen,
        started: Instant::now(),
        next_sport: 20_000,
    };
    run.progress(&format!(
        "e2ebench: {} ({}); load {}",
        report.settings, report.machine.cpu_model, report.machine.load_start
    ));

    for fam in Family::ALL {
        if Interrupt::raised() {
            break;
        }
        if !opts.family(fam) {
            continue;
        }
        run.progress(&format!("== {}: {}", fam.name(), fam.describe()));
        match fam {
            Family::Veth => match guarded(VethPath::setup) {
                Ok(p) => {
                    let r = run.measure(&p.endpoints());
                    report.paths.push(r);
                }
                Err(e) => report.skipped.push((fam.name().into(), e)),
            },
            Family::Wire | Family::WirePlain => {
                match guarded(|| WirePath::setup(&barewire, fam == Family::Wire)) {
                    Ok(p) => {
                        if opts.row(fam, fam.name(), false) {
                            let r = run.measure(&p.endpoints());
                            report.paths.push(r);
                        }
                        // The IPv6 row over the same wire, right after.
                        if let Some(ep) = p.endpoints6().filter(|_| opts.row(fam, fam.name(), true))
                            && !Interrupt::raised()
                        {
                            let r = run.measure(&ep);
                            report.paths.push(r);
                        }
                    }
                    Err(e) => report.skipped.push((fam.name().into(), e)),
                }
            }
            Family::Sgswitch => {
                let rules: Vec<usize> = opts
                    .rules
                    .iter()
                    .copied()
                    .filter(|n| opts.label(fam, &format!("sgswitch-{n}")))
                    .collect();
                if !opts.edit_rules.is_empty() {
                    edit_sweep(&mut run, &rules, &mut report);
                    continue;
                }
                let rules6: Vec<usize> = opts
                    .rules6
                    .iter()
                    .copied()
                    .filter(|n| opts.row(fam, &format!("sgswitch-{n}"), true))
                    .collect();
                // The edit and CLI tests run beside the IPv4 rows.
                let want_edit = !rules.is_empty() && (opts.metric("edit") || opts.metric("cli"));
                let so = SgOptions {
                    rules: rules.clone(),
                    flow_runs: plan.reps,
                    workers: opts.sg_workers,
                    extra: opts.sg_arg.clone(),
                    edit_setup: want_edit && opts.metric("edit"),
                    pad_rules: 0,
                    rules6: rules6.clone(),
                };
                let t = Instant::now();
                match guarded(|| SgPath::setup(&so)) {
                    Ok(sg) => {
                        run.progress(&format!(
                            "sgswitch lab ready in {:.1} s ({} rules in the model)",
                            t.elapsed().as_secs_f64(),
                            sg.total_rules().map_or("?".into(), |n| n.to_string())
                        ));
                        if let Some(pid) = sg.lab.daemon_pid() {
                            let a = CpuSample::take(Some(pid));
                            let _ = Interrupt::sleep(Duration::from_secs(3));
                            let c = CpuSample::take(Some(pid)).since(&a).proc_pct;
                            run.progress(&format!(
                                "sgswitch idle: daemon CPU {} % of a core",
                                c.map_or("?".into(), |c| format!("{c:.1}"))
                            ));
                            report.idle_cpu_pct = c;
                        }
                        for &n in &rules {
                            if Interrupt::raised() {
                                break;
                            }
                            if let Some(ep) = sg.endpoints(n) {
                                let r = run.measure(&ep);
                                report.paths.push(r);
                            }
                            // The IPv6 row of the same rule count, right after.
                            if let Some(ep) = sg.endpoints6(n).filter(|_| !Interrupt::raised()) {
                                let r = run.measure(&ep);
                                report.paths.push(r);
                            }
                        }
                        for &n in rules6.iter().filter(|n| !rules.contains(n)) {
                            if let Some(ep) = sg.endpoints6(n).filter(|_| !Interrupt::raised()) {
                                let r = run.measure(&ep);
                                report.paths.push(r);
                            }
                        }
                        let load_ep = rules
                            .iter()
                            .find(|&&n| n == 100)
                            .or(rules.first())
                            .and_then(|&n| sg.endpoints(n));
                        if want_edit && opts.metric("edit") && !Interrupt::raised() {
                            run.progress(&format!(
                                "sgswitch: rule edit latency, {} edits under load",
                                plan.edits
                            ));
                            match guarded(|| {
                                edit::edit_latency(&sg, plan.edits / 2, load_ep.as_ref(), None)
                            }) {
                                Ok(e) => {
                                    run.progress(&format!(
                                        "sgswitch: edit → enforced p50 {:.0} µs p99 {:.0} µs ({} misses); ack p50 {:.0} µs",
                                        median(&e.enforce_us).unwrap_or(f64::NAN),
                                        bench::harness::report::percentile(&e.enforce_us, 99.0).unwrap_or(f64::NAN),
                                        e.misses,
                                        median(&e.ack_us).unwrap_or(f64::NAN)
                                    ));
                                    report.edit = Some(e);
                                }
                                Err(e) => report.skipped.push(("sgswitch rule edits".into(), e)),
                            }
                        }
                        if want_edit && opts.metric("cli") && !Interrupt::raised() {
                            let g = format!("g{}", rules.first().copied().unwrap_or(10));
                            match guarded(|| edit::cli_rtt(&sg, &g, plan.cli_runs)) {
                                Ok(v) => {
                                    run.progress(&format!(
                                        "sgswitch: CLI round trip p50 {:.2} ms",
                                        median(&v).unwrap_or(0.0) / 1e3
                                    ));
                                    report.cli_us = v;
                                }
                                Err(e) => report.skipped.push(("sgswitch CLI".into(), e)),
                            }
                        }
                    }
                    Err(e) => report.skipped.push((fam.name().into(), e)),
                }
            }
            Family::Nft | Family::NftSet => {
                let set = fam == Family::NftSet;
                let counts = if set { &opts.nftset_rules } else { &opts.rules };
                for &n in counts {
                    if Interrupt::raised() {
                        break;
                    }
                    let label = format!("{}-{n}", fam.name());
                    if !opts.label(fam, &label) {
                        continue;
                    }
                    match guarded(|| BridgePath::setup(n, set, &scratch)) {
                        Ok(p) => {
                            let r = run.measure(&p.endpoints());
                            report.paths.push(r);
                        }
                        Err(e) => report.skipped.push((label, e)),
                    }
                }
                if !set
                    && opts.metric("edit")
                    && opts.label(fam, "nft-edit")
                    && !Interrupt::raised()
                {
                    run.progress(&format!(
                        "nft: rule edit latency on a 10k-rule chain, {} edits under load",
                        plan.edits
                    ));
                    let res = guarded(|| {
                        let b = BridgePath::setup(NFT_EDIT_RULES, false, &scratch)?;
                        let ep = b.endpoints();
                        let IpAddr::V4(dst) = ep.server_ip else {
                            return Err(HarnessError::Setup(
                                "the kernel's edit test probes an IPv4 server".into(),
                            ));
                        };
                        let probe = edit::Probe {
                            rx_ns: ep.server_ns.clone(),
                            tx_ns: ep.scanner.clone().unwrap_or_default(),
                            src: bench::harness::paths::BRIDGE_SCANNER,
                            dst,
                        };
                        let mut ed = edit::NftEditor::new(b.bridge_ns(), probe.src);
                        let mut r = edit::probe_edits(&probe, plan.edits / 2, Some(&ep), &mut ed)?;
                        r.total_rules = Some(NFT_EDIT_RULES);
                        Ok(r)
                    });
                    match res {
                        Ok(e) => {
                            run.progress(&format!(
                                "nft: edit → enforced p50 {:.0} µs p99 {:.0} µs ({} misses)",
                                median(&e.enforce_us).unwrap_or(f64::NAN),
                                bench::harness::report::percentile(&e.enforce_us, 99.0)
                                    .unwrap_or(f64::NAN),
                                e.misses
                            ));
                            report.edit_nft = Some(e);
                        }
                        Err(e) => report.skipped.push(("nft rule edits".into(), e)),
                    }
                }
            }
            Family::Ovs | Family::OvsTso => {
                if !have("ovs-vswitchd") || !have("ovsdb-server") {
                    report.skipped.push((
                        fam.name().into(),
                        "Open vSwitch is not installed (Debian openvswitch-switch; scripts/bench.sh installs it)".into(),
                    ));
                    continue;
                }
                match guarded(|| OvsPath::setup(fam == Family::OvsTso, &scratch)) {
                    Ok(p) => {
                        let r = run.measure(&p.endpoints());
                        if !r.errors.is_empty() {
                            eprintln!("ovs-vswitchd log tail:\n{}", p.log_tail(20));
                        }
                        report.paths.push(r);
                    }
                    Err(e) => report.skipped.push((fam.name().into(), e)),
                }
            }
        }
    }
    report.machine.load_end = loadavg();
    report.wall_secs = run.started.elapsed().as_secs_f64();
    if Interrupt::raised() {
        report.skipped.push((
            "(run)".into(),
            "interrupted by a signal: partial results".into(),
        ));
    }
    let _ = std::fs::remove_dir_all(&scratch);
    match &opts.report {
        Some(md_path) => {
            let svg_path = md_path.with_extension("svg");
            let svg_name = svg_path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned());
            let md = report.markdown(svg_name.as_deref());
            let write = |p: &Path, text: &str| {
                if let Err(e) = std::fs::write(p, text) {
                    eprintln!("e2ebench: write {}: {e}", p.display());
                    std::process::exit(1);
                }
            };
            write(md_path, &md);
            write(&svg_path, &report.svg());
            println!("{md}");
            run.progress(&format!(
                "report written to {} and {}",
                md_path.display(),
                svg_path.display()
            ));
        }
        None => println!("{}", report.markdown(None)),
    }
    if Interrupt::raised() {
        std::process::exit(130);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(args: &[&str]) -> Opts {
        Opts::parse_from(std::iter::once("e2ebench").chain(args.iter().copied()))
    }

    /// What each `--only` form sets up and measures: (family set up, IPv4
    /// row, IPv6 row) of the bare wire, sgswitch 100 and veth.
    fn picks(args: &[&str]) -> [(bool, bool, bool); 3] {
        let o = opts(args);
        let pick = |f: Family, l: &str| (o.family(f), o.row(f, l, false), o.row(f, l, true));
        [
            pick(Family::Wire, "wire"),
            pick(Family::Sgswitch, "sgswitch-100"),
            pick(Family::Veth, "veth"),
        ]
    }

    #[test]
    fn only_selects_ipv4_and_ipv6_rows() {
        let all = (true, true, true);
        let v4 = (true, true, false);
        let v6 = (true, false, true);
        let none = (false, false, false);
        // Every path has its IPv6 row beside its IPv4 one (veth has none).
        assert_eq!(picks(&[]), [all, all, v4]);
        assert_eq!(picks(&["--only", "wire,sgswitch-100"]), [all, all, none]);
        // Only the IPv6 rows: no family without one is set up.
        assert_eq!(picks(&["--only", "v6"]), [v6, v6, (false, false, false)]);
        assert_eq!(picks(&["--only", "v4"]), [v4, v4, v4]);
        assert_eq!(
            picks(&["--only", "wire-v6"]),
            [v6, (false, false, false), none]
        );
        assert_eq!(picks(&["--only", "sgswitch-100-v6"]), [none, v6, none]);
        assert_eq!(picks(&["--only", "sgswitch-v6,veth"]), [none, v6, v4]);
        assert_eq!(picks(&["--only", "sgswitch,v6"]), [none, v6, none]);
        // IPv6 rows measure TCP 1 stream and new flows only.
        assert_eq!(picks(&["--metrics", "udp,tcp4"]), [v4, v4, v4]);
        assert_eq!(picks(&["--metrics", "flows"]), [all, all, v4]);
    }
}
