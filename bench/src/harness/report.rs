//! The results of one harness run and the report written from them:
//! `docs/benchmarks.md` (a table per metric, ratios against the bare wire and
//! the kernel, the machine, the date, the exact command) and
//! `docs/benchmarks.svg` (bar charts of TCP Gbit/s and new flows/s, drawn here).
//!
//! Contract: the report shows what was measured, as measured: medians with
//! min–max over the repetitions, every failed or skipped path with its reason,
//! and each target of DESIGN §6 as met or missed. Nothing is filled in that was
//! not measured in this run ("—").

use std::fmt::Write as _;

use super::edit::EditResult;
use super::load::{NmapRun, TcpRun, UdpRun};
use super::paths::{Family, V6_SUFFIX};

/// How to read the numbers: the method's known limits, stated in the report.
const NOTES: &str = "## Notes on the method\n\n\
* New-flow runs send 60000 flows each (`--flows`): sgswitch charges tracked flows to \
the initiating instance with a quota of 1/16 of the table (65536), so a bigger run \
would measure the quota; each sgswitch run uses a client instance of its own. A run \
is therefore a burst of well under a second to a few seconds.\n\
* Loss on the userspace paths (wire, sgswitch, OVS) is the sending namespace's TAP \
queue overflowing while the forwarder is busy: the generator outruns it. There one \
sender thread runs (it offers more than any of them forwards, and a second one would \
only take the forwarder's core); the kernel paths get one sender per CPU. The kernel \
paths forward in the sender's own context (veth transmit → bridge → nftables in \
softirq), so they slow the sender down instead of losing packets: offered = received.\n\
* The small-UDP runs are one-way: Linux conntrack keeps such a flow `new` (no reply \
is ever seen), so every datagram walks the nftables chain, while sgswitch passes any \
packet of a tracked flow from its table.\n\
* Rule-edit latency is measured from writing the request to the daemon's socket. \
The daemon checks the edit against the model and applies it in place, recompiles \
only the edited group's table (the rest of the snapshot is shared), publishes the \
new snapshot, then makes it durable (SQLite, fsync) and answers: enforcement does \
not wait for the fsync, the acknowledgement does. The `PUBLISH` line is the \
datapath's part (validated → snapshot live).\n\
* CPU: the forwarder's share comes from `/proc/PID/stat` (all its threads), the \
machine's from `/proc/stat`, both over the client's run; the machine figure includes \
the endpoints and anything else running.\n\n";

/// The machine the run was on.
#[derive(Clone, Debug, Default)]
pub struct Machine {
    pub nproc: usize,
    pub cpu_model: String,
    pub kernel: String,
    pub load_start: String,
    pub load_end: String,
}

impl Machine {
    pub fn probe() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split(':').nth(1))
            .map_or_else(|| "unknown".into(), |s| s.trim().to_owned());
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_owned();
        Machine {
            nproc: super::exec::ncpus(),
            cpu_model,
            kernel,
            load_start: loadavg(),
            load_end: String::new(),
        }
    }
}

/// `/proc/loadavg`'s three averages.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Everything measured on one path.
#[derive(Clone, Debug, Default)]
pub struct PathResult {
    pub label: String,
    pub family: Option<Family>,
    pub rules: Option<usize>,
    /// An IPv6 row (its label ends with `-v6`; its IPv4 row is the label
    /// without it).
    pub v6: bool,
    pub tcp1: Vec<TcpRun>,
    pub tcp4: Vec<TcpRun>,
    pub flows: Vec<UdpRun>,
    pub udp: Vec<UdpRun>,
    pub nmap: Option<NmapRun>,
    pub errors: Vec<String>,
}

/// The whole run.
#[derive(Clone, Debug, Default)]
pub struct Report {
    pub date: String,
    /// The command line, as markdown (in backticks).
    pub command: String,
    pub machine: Machine,
    /// Settings line (durations, counts, repetitions).
    pub settings: String,
    pub paths: Vec<PathResult>,
    /// Paths not measured: (label, why).
    pub skipped: Vec<(String, String)>,
    pub edit: Option<EditResult>,
    /// The same edit test on bridge + nftables (10k-rule chain).
    pub edit_nft: Option<EditResult>,
    pub cli_us: Vec<f64>,
    /// The idle sgswitch daemon's CPU (% of one core over a few seconds).
    pub idle_cpu_pct: Option<f64>,
    pub wall_secs: f64,
}

/// Median of `v` (the mean of the middle two for an even count; None when
/// empty).
pub fn median(v: &[f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut s: Vec<f64> = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    Some(if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    })
}

/// The `p`th percentile (nearest rank) of `v`.
pub fn percentile(v: &[f64], p: f64) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut s: Vec<f64> = v.to_vec();
    s.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * s.len() as f64).ceil() as usize;
    Some(s[rank.clamp(1, s.len()) - 1])
}

fn min_max(v: &[f64]) -> Option<(f64, f64)> {
    let lo = v.iter().copied().min_by(f64::total_cmp)?;
    let hi = v.iter().copied().max_by(f64::total_cmp)?;
    Some((lo, hi))
}

/// `median (min–max)` with `prec` decimals, or `—`.
fn spread(v: &[f64], prec: usize) -> String {
    match (median(v), min_max(v)) {
        (Some(m), Some((lo, hi))) if v.len() > 1 => {
            format!("{m:.prec$} ({lo:.prec$}–{hi:.prec$})")
        }
        (Some(m), _) => format!("{m:.prec$}"),
        _ => "—".into(),
    }
}

fn opt(v: Option<f64>, prec: usize) -> String {
    v.map_or_else(|| "—".into(), |x| format!("{x:.prec$}"))
}

fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

fn ratio_s(a: Option<f64>, b: Option<f64>) -> String {
    ratio(a, b).map_or_else(|| "—".into(), |r| format!("{r:.2}×"))
}

impl PathResult {
    pub fn tcp1_gbps(&self) -> Vec<f64> {
        self.tcp1.iter().map(|r| r.gbps).collect()
    }
    pub fn tcp4_gbps(&self) -> Vec<f64> {
        self.tcp4.iter().map(|r| r.gbps).collect()
    }
    pub fn flows_pps(&self) -> Vec<f64> {
        self.flows.iter().map(|r| r.rx_pps).collect()
    }
    pub fn udp_pps(&self) -> Vec<f64> {
        self.udp.iter().map(|r| r.rx_pps).collect()
    }
}

fn cpu_cols(runs: &[TcpRun]) -> (String, String) {
    let p: Vec<f64> = runs.iter().filter_map(|r| r.cpu.proc_pct).collect();
    let m: Vec<f64> = runs.iter().map(|r| r.cpu.machine_pct).collect();
    (
        if p.is_empty() {
            "kernel".into()
        } else {
            spread(&p, 0)
        },
        spread(&m, 0),
    )
}

fn udp_cpu_cols(runs: &[UdpRun]) -> (String, String) {
    let p: Vec<f64> = runs.iter().filter_map(|r| r.cpu.proc_pct).collect();
    let m: Vec<f64> = runs.iter().map(|r| r.cpu.machine_pct).collect();
    (
        if p.is_empty() {
            "kernel".into()
        } else {
            spread(&p, 0)
        },
        spread(&m, 0),
    )
}

/// A chart panel: title, the values of a path, scale, unit.
type Panel = (&'static str, fn(&PathResult) -> Vec<f64>, f64, &'static str);

/// A target line of the headline table.
struct Target {
    what: String,
    measured: String,
    target: &'static str,
    met: Option<bool>,
}

impl Report {
    pub fn path(&self, label: &str) -> Option<&PathResult> {
        self.paths.iter().find(|p| p.label == label)
    }

    fn med(&self, label: &str, f: fn(&PathResult) -> Vec<f64>) -> Option<f64> {
        self.path(label).and_then(|p| median(&f(p)))
    }

    /// The IPv4 row of IPv6 row `p`.
    fn v4_of(&self, p: &PathResult) -> Option<&PathResult> {
        self.path(p.label.strip_suffix(V6_SUFFIX)?)
    }

    /// The label of the baseline `base` (`wire`, `veth`) of `p`'s address
    /// family (`wire-v6` for an IPv6 row).
    fn base_of(p: &PathResult, base: &str) -> String {
        if p.v6 {
            super::paths::label6(base)
        } else {
            base.to_owned()
        }
    }

    fn targets(&self) -> Vec<Target> {
        let mut t = Vec::new();
        let g = PathResult::tcp1_gbps;
        let fl = PathResult::flows_pps;
        let wire_tcp = self.med("wire", g);
        let wire_fl = self.med("wire", fl);
        for n in [10, 100, 1000] {
            let sg = self.med(&format!("sgswitch-{n}"), g);
            if let Some(r) = ratio(sg, wire_tcp) {
                t.push(Target {
                    what: format!("TCP 1 stream, sgswitch {n} rules / bare wire"),
                    measured: format!("{r:.2}× ({} / {} Gbit/s)", opt(sg, 2), opt(wire_tcp, 2)),
                    target: ">= 0.95×",
                    met: Some(r >= 0.95),
                });
            }
        }
        let sg100 = self.med("sgswitch-100", g);
        for (other, target) in [
            ("ovs-tso", "ahead of OVS userspace"),
            ("ovs", "ahead of OVS userspace"),
        ] {
            if let Some(r) = ratio(sg100, self.med(other, g)) {
                t.push(Target {
                    what: format!("TCP 1 stream, sgswitch 100 rules / {other}"),
                    measured: format!("{r:.2}×"),
                    target,
                    met: Some(r > 1.0),
                });
            }
        }
        if let Some(r) = ratio(sg100, self.med("nft-100", g)) {
            t.push(Target {
                what: "TCP 1 stream, sgswitch 100 rules / bridge+nft 100 rules".into(),
                measured: format!("{r:.2}×"),
                target: "stretch: >= 1×",
                met: Some(r >= 1.0),
            });
        }
        let sgf: Vec<(usize, f64)> = [10, 100, 1000]
            .iter()
            .filter_map(|&n| Some((n, self.med(&format!("sgswitch-{n}"), fl)?)))
            .collect();
        for &(n, v) in &sgf {
            if let Some(r) = ratio(Some(v), wire_fl) {
                t.push(Target {
                    what: format!("new flows/s, sgswitch {n} rules / bare wire"),
                    measured: format!(
                        "{r:.2}× ({:.0}k / {:.0}k)",
                        v / 1e3,
                        wire_fl.unwrap_or(0.0) / 1e3
                    ),
                    target: ">= 0.8×",
                    met: Some(r >= 0.8),
                });
            }
        }
        if let (Some(a), Some(b)) = (
            sgf.iter().find(|x| x.0 == 10).map(|x| x.1),
            sgf.iter().find(|x| x.0 == 1000).map(|x| x.1),
        ) {
            let drop = 1.0 - b / a;
            t.push(Target {
                what: "new flows/s, sgswitch 1000 vs 10 rules".into(),
                measured: format!("{:+.0} %", -drop * 100.0),
                target: "flat (< 20 % slower)",
                met: Some(drop < 0.2),
            });
        }
        for (n, want) in [(100, 3.0), (1000, 10.0)] {
            let sg = sgf.iter().find(|x| x.0 == n).map(|x| x.1);
            if let Some(r) = ratio(sg, self.med(&format!("nft-{n}"), fl)) {
                t.push(Target {
                    what: format!("new flows/s, sgswitch / bridge+nft, {n} rules"),
                    measured: format!("{r:.1}×"),
                    target: if n == 100 { ">= 3×" } else { ">= 10×" },
                    met: Some(r >= want),
                });
            }
        }
        // IPv6 beside IPv4 (issue 15): each sgswitch IPv6 row against its
        // IPv4 row of the same run.
        for p in self
            .paths
            .iter()
            .filter(|p| p.v6 && p.family == Some(Family::Sgswitch))
        {
            let Some(v4) = self.v4_of(p) else { continue };
            let n = p.rules.map_or("?".into(), |n| n.to_string());
            for (what, f, prec, unit) in [
                (
                    "TCP 1 stream",
                    PathResult::tcp1_gbps as fn(&PathResult) -> Vec<f64>,
                    2,
                    " Gbit/s",
                ),
                ("new flows/s", PathResult::flows_pps, 0, "/s"),
            ] {
                let (a, b) = (median(&f(p)), median(&f(v4)));
                if let Some(r) = ratio(a, b) {
                    t.push(Target {
                        what: format!("IPv6 / IPv4, {what}, sgswitch {n} rules"),
                        measured: format!("{r:.2}× ({} / {}{unit})", opt(a, prec), opt(b, prec)),
                        target: ">= 0.9×",
                        met: Some(r >= 0.9),
                    });
                }
            }
        }
        if let Some((e, p99)) = self
            .edit
            .as_ref()
            .and_then(|e| Some((e, percentile(&e.enforce_us, 99.0)?)))
        {
            t.push(Target {
                what: format!(
                    "rule edit → enforced, p99 ({} rules)",
                    e.total_rules.map_or("?".into(), |n| n.to_string())
                ),
                measured: format!("{:.0} µs", p99),
                target: "< 1 ms",
                met: Some(p99 < 1000.0 && e.misses == 0),
            });
        }
        if let Some(c) = self.idle_cpu_pct {
            t.push(Target {
                what: "idle sgswitch daemon CPU (instances up, no traffic)".into(),
                measured: format!("{c:.1} % of a core"),
                target: "~0 %",
                met: Some(c < 1.0),
            });
        }
        if let Some(p99) = percentile(&self.cli_us, 99.0) {
            t.push(Target {
                what: "CLI round trip (describe-group), p99".into(),
                measured: format!("{:.1} ms", p99 / 1e3),
                target: "< 10 ms",
                met: Some(p99 < 10_000.0),
            });
        }
        t
    }

    /// The markdown report.
    pub fn markdown(&self, svg_name: Option<&str>) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "# Benchmarks: sgswitch side by side with the kernel and the bare wire\n"
        );
        let _ = writeln!(
            s,
            "Written by `e2ebench` (bench/src/bin/e2ebench.rs) on {}; the run took {:.0} s.\n",
            self.date, self.wall_secs
        );
        let _ = writeln!(s, "Command: {}\n", self.command);
        let m = &self.machine;
        let _ = writeln!(
            s,
            "Machine: {} CPUs ({}), Linux {}; load average {} at the start, {} at the end. \
             A shared 2-vCPU VM: the endpoints (iperf3, flowgen), the forwarder and \
             anything else running share the same two cores, so expect ±20-30 % between runs.\n",
            m.nproc, m.cpu_model, m.kernel, m.load_start, m.load_end
        );
        let _ = writeln!(s, "Settings: {}\n", self.settings);
        if let Some(svg) = svg_name {
            let _ = writeln!(s, "![TCP Gbit/s and new flows/s per path]({svg})\n");
        }

        let targets = self.targets();
        if !targets.is_empty() {
            s.push_str(
                "## Targets (DESIGN §6)\n\n| what | measured | target | |\n|---|---|---|---|\n",
            );
            for t in &targets {
                let verdict = match t.met {
                    Some(true) => "met",
                    Some(false) => "**missed**",
                    None => "",
                };
                let _ = writeln!(
                    s,
                    "| {} | {} | {} | {verdict} |",
                    t.what, t.measured, t.target
                );
            }
            s.push('\n');
        }

        let g = PathResult::tcp1_gbps;
        let wire = self.med("wire", g);
        let veth = self.med("veth", g);
        if self
            .paths
            .iter()
            .any(|p| !p.tcp1.is_empty() || !p.tcp4.is_empty())
        {
            s.push_str(
                "## TCP throughput (iperf3)\n\nGbit/s at the receiver, median (min–max); \
                 CPU over the client's run: the forwarding process in % of one core \
                 (`kernel` where the kernel forwards in softirq), the machine in % of all cores.\n\n\
                 | path | 1 stream | 4 streams | 1 stream / wire | 1 stream / veth | forwarder CPU % | machine CPU % | retransmits (median) |\n\
                 |---|---|---|---|---|---|---|---|\n",
            );
            for p in self
                .paths
                .iter()
                .filter(|p| !p.tcp1.is_empty() || !p.tcp4.is_empty())
            {
                let v = median(&p.tcp1_gbps());
                // An IPv6 row against the IPv6 wire (there is no IPv6 veth row).
                let (wire, veth) = match p.v6 {
                    true => (self.med(&Self::base_of(p, "wire"), g), None),
                    false => (wire, veth),
                };
                let (fc, mc) = cpu_cols(&p.tcp1);
                let retr: Vec<f64> = p
                    .tcp1
                    .iter()
                    .filter_map(|r| r.retransmits.map(|x| x as f64))
                    .collect();
                let _ = writeln!(
                    s,
                    "| {} | {} | {} | {} | {} | {fc} | {mc} | {} |",
                    p.label,
                    spread(&p.tcp1_gbps(), 2),
                    spread(&p.tcp4_gbps(), 2),
                    ratio_s(v, wire),
                    ratio_s(v, veth),
                    opt(median(&retr), 0)
                );
            }
            s.push('\n');
        }

        let fl = PathResult::flows_pps;
        if self.paths.iter().any(|p| !p.flows.is_empty()) {
            s.push_str(
                "## New flows per second (flowgen)\n\n18-byte UDP datagrams, a new 5-tuple each, \
                 from the sender threads shown beside the offered rate; counted by the receiving interface's rx counter, \
                 per second over the longer of the receiver's window and the sender's run. Each run starts from fresh connection state \
                 (new source ports; on sgswitch a new client instance).\n\n\
                 | path | received/s | offered/s (senders) | loss | / wire | / bridge+nft same rules | forwarder CPU % | machine CPU % |\n\
                 |---|---|---|---|---|---|---|---|\n",
            );
            for p in self.paths.iter().filter(|p| !p.flows.is_empty()) {
                let v = median(&p.flows_pps());
                let wire_fl = self.med(&Self::base_of(p, "wire"), fl);
                let tx: Vec<f64> = p.flows.iter().map(|r| r.tx_pps).collect();
                let loss: Vec<f64> = p.flows.iter().map(|r| r.loss() * 100.0).collect();
                let kernel = p
                    .rules
                    .filter(|_| !p.v6)
                    .and_then(|n| self.med(&format!("nft-{n}"), fl));
                let vs_kernel = if matches!(p.family, Some(Family::Nft)) {
                    "—".into()
                } else {
                    ratio_s(v, kernel)
                };
                let (fc, mc) = udp_cpu_cols(&p.flows);
                let _ = writeln!(
                    s,
                    "| {} | {} | {} ({}) | {} % | {} | {vs_kernel} | {fc} | {mc} |",
                    p.label,
                    spread(&p.flows_pps(), 0),
                    spread(&tx, 0),
                    p.flows.first().map_or(0, |r| r.threads),
                    spread(&loss, 1),
                    ratio_s(v, wire_fl),
                );
            }
            s.push('\n');
        }

        let v6_rows: Vec<(&PathResult, Option<&PathResult>)> = self
            .paths
            .iter()
            .filter(|p| p.v6 && (!p.tcp1.is_empty() || !p.flows.is_empty()))
            .map(|p| (p, self.v4_of(p)))
            .collect();
        if !v6_rows.is_empty() {
            s.push_str(
                "## IPv6 beside IPv4

The same path measured over IPv6 in the same setup, right after its \
                 IPv4 row: TCP 1 stream with `iperf3 -6`, new flows/s with flowgen to the server's IPv6 \
                 address (the same load as above). The bare wire's two ends have addresses in a ULA /64 \
                 inside their namespaces; sgswitch's instances their addresses in the lab's `--subnet6`, \
                 the IPv6 server in a group of N IPv6 rules whose last one allows the lab's /64 (the \
                 IPv4 row's server: N IPv4 rules, the last one allowing the clients' /17).\n\n\
                 | path | TCP 1 stream IPv4 | IPv6 | IPv6 / IPv4 | new flows/s IPv4 | IPv6 | IPv6 / IPv4 |\n\
                 |---|---|---|---|---|---|---|\n",
            );
            for (p6, p4) in &v6_rows {
                let col = |p: Option<&PathResult>, f: fn(&PathResult) -> Vec<f64>, prec| {
                    p.map_or_else(|| "—".into(), |p| spread(&f(p), prec))
                };
                let r = |f: fn(&PathResult) -> Vec<f64>| {
                    ratio_s(median(&f(p6)), p4.and_then(|p| median(&f(p))))
                };
                let _ = writeln!(
                    s,
                    "| {} | {} | {} | {} | {} | {} | {} |",
                    p6.label.strip_suffix(V6_SUFFIX).unwrap_or(&p6.label),
                    col(*p4, PathResult::tcp1_gbps, 2),
                    spread(&p6.tcp1_gbps(), 2),
                    r(PathResult::tcp1_gbps),
                    col(*p4, PathResult::flows_pps, 0),
                    spread(&p6.flows_pps(), 0),
                    r(PathResult::flows_pps),
                );
            }
            s.push('\n');
        }

        let up = PathResult::udp_pps;
        let wire_udp = self.med("wire", up);
        if self.paths.iter().any(|p| !p.udp.is_empty()) {
            s.push_str(
                "## Small-UDP packets per second (flowgen, one flow per sender thread)\n\n\
                 | path | received/s | offered/s (senders) | loss | / wire | forwarder CPU % | machine CPU % |\n\
                 |---|---|---|---|---|---|---|\n",
            );
            for p in self.paths.iter().filter(|p| !p.udp.is_empty()) {
                let v = median(&p.udp_pps());
                let tx: Vec<f64> = p.udp.iter().map(|r| r.tx_pps).collect();
                let loss: Vec<f64> = p.udp.iter().map(|r| r.loss() * 100.0).collect();
                let (fc, mc) = udp_cpu_cols(&p.udp);
                let _ = writeln!(
                    s,
                    "| {} | {} | {} ({}) | {} % | {} | {fc} | {mc} |",
                    p.label,
                    spread(&p.udp_pps(), 0),
                    spread(&tx, 0),
                    p.udp.first().map_or(0, |r| r.threads),
                    spread(&loss, 1),
                    ratio_s(v, wire_udp),
                );
            }
            s.push('\n');
        }

        if self.paths.iter().any(|p| p.nmap.is_some()) {
            s.push_str(
                "## nmap -p1-1000\n\n`nmap -Pn -n -T4 --max-retries 0 --min-rate 1000 -oG - -p1-1000` \
                 from an address the path does not allow (on the unfiltered paths the ports answer `closed`).\n\n\
                 | path | seconds | filtered / scanned |\n|---|---|---|\n",
            );
            for p in &self.paths {
                if let Some(n) = &p.nmap {
                    let _ = writeln!(
                        s,
                        "| {} | {:.2} | {} / {} |",
                        p.label, n.secs, n.filtered, n.total
                    );
                }
            }
            s.push('\n');
        }

        let no_edit = EditResult::default();
        if self.edit.is_some() || self.edit_nft.is_some() || !self.cli_us.is_empty() {
            s.push_str("## Rule edits and the CLI\n\n");
            if self.edit.is_some() || self.edit_nft.is_some() {
                let e = self.edit.as_ref().unwrap_or(&no_edit);
                let _ = writeln!(
                    s,
                    "{} authorize/revoke pairs on a group of an instance whose groups hold {} rules \
                     in a model of {} rules; probe: one UDP datagram every ~{:.0} µs from the uplink \
                     namespace ({:.0}/s measured){}. The edit goes straight to the daemon's socket \
                     (one request line, mgmt's own request type); times are from writing it.\n",
                    e.enforce_us.len() + e.misses,
                    e.target_rules.map_or("?".into(), |n| n.to_string()),
                    e.total_rules.map_or("?".into(), |n| n.to_string()),
                    super::edit::PROBE_INTERVAL.as_secs_f64() * 1e6,
                    e.probe_pps,
                    e.load_note
                        .as_ref()
                        .map_or(String::new(), |n| format!("; under load: {n}"))
                );
                let k = self.edit_nft.as_ref();
                if let Some(k) = k {
                    let _ = writeln!(
                        s,
                        "Kernel for comparison: the same probe from the bridge path's scanner \
                         namespace to its server, the rule appended to a forward chain of 10k \
                         rules by an `nft add rule` process and removed by `nft delete rule`{}.\n",
                        k.load_note
                            .as_ref()
                            .map_or(String::new(), |n| format!("; under load: {n}"))
                    );
                }
                s.push_str(
                    "| latency | sgswitch p50 | p99 | max | n | bridge+nft (10k-rule chain) p50 | p99 | n |\n\
                     |---|---|---|---|---|---|---|---|\n",
                );
                let row = |s: &mut String, name: &str, v: &[f64], kv: Option<&Vec<f64>>| {
                    let kv: &[f64] = kv.map_or(&[], |x| x.as_slice());
                    let _ = writeln!(
                        s,
                        "| {name} | {} µs | {} µs | {} µs | {} | {} | {} | {} |",
                        opt(percentile(v, 50.0), 0),
                        opt(percentile(v, 99.0), 0),
                        opt(percentile(v, 100.0), 0),
                        v.len(),
                        percentile(kv, 50.0).map_or("—".into(), |x| format!("{x:.0} µs")),
                        percentile(kv, 99.0).map_or("—".into(), |x| format!("{x:.0} µs")),
                        kv.len()
                    );
                };
                row(
                    &mut s,
                    "edit sent → first probe passes (enforced)",
                    &e.enforce_us,
                    k.map(|k| &k.enforce_us),
                );
                row(
                    &mut s,
                    "edit sent → acknowledged (daemon's reply / `nft` exit)",
                    &e.ack_us,
                    k.map(|k| &k.ack_us),
                );
                row(
                    &mut s,
                    "removal sent → last probe passes",
                    &e.revoke_us,
                    k.map(|k| &k.revoke_us),
                );
                if let Some((a, b)) = e.daemon_commit_us {
                    let _ = writeln!(
                        s,
                        "| daemon's own: edit request → committed (`stats` EDITS) | {a:.0} µs | {b:.0} µs | | | | | |"
                    );
                }
                if let Some((a, b)) = e.daemon_publish_us {
                    let _ = writeln!(
                        s,
                        "| daemon's own: validated → snapshot published (`stats` PUBLISH) | {a:.0} µs | {b:.0} µs | | | | | |"
                    );
                }
                if e.misses > 0 {
                    let _ = writeln!(
                        s,
                        "\n{} authorizations were not seen enforced within 1 s.",
                        e.misses
                    );
                }
                s.push('\n');
            }
            if !self.cli_us.is_empty() {
                let _ = writeln!(
                    s,
                    "CLI round trip (`sgswitch describe-group g10`, a new process each, spawn to exit, {} runs): \
                     p50 {:.2} ms, p99 {:.2} ms.\n",
                    self.cli_us.len(),
                    percentile(&self.cli_us, 50.0).unwrap_or(0.0) / 1e3,
                    percentile(&self.cli_us, 99.0).unwrap_or(0.0) / 1e3
                );
            }
        }

        let errs: Vec<&PathResult> = self.paths.iter().filter(|p| !p.errors.is_empty()).collect();
        if !self.skipped.is_empty() || !errs.is_empty() {
            s.push_str("## Not measured, failures\n\n");
            for (l, why) in &self.skipped {
                let _ = writeln!(s, "* {l}: {}", one_line(why));
            }
            for p in errs {
                for e in &p.errors {
                    let _ = writeln!(s, "* {}: {}", p.label, one_line(e));
                }
            }
            s.push('\n');
        }

        s.push_str(NOTES);
        s.push_str("## The paths\n\n");
        for f in Family::ALL {
            let _ = writeln!(s, "* `{}`: {}", f.name(), f.describe());
        }
        s.push_str(
            "\nEvery path joins a client namespace and a server namespace (MTU 1500); \
             nothing runs in the root namespace. Filtering paths hold N rules whose last \
             one allows the clients' /17; the N-1 before it (TCP/UDP ports and ICMP types \
             from other /24s) never match. Loads are bounded in time and count and run one \
             at a time. IPv6 rows (`-v6`): the bare wire and sgswitch over IPv6 in the same \
             setup (ULA addresses inside the test namespaces only; sgswitch's IPv6 server \
             behind N IPv6 rules, the last one allowing the lab's /64).\n",
        );
        s
    }

    /// The SVG chart: TCP 1-stream Gbit/s and new flows/s per path.
    pub fn svg(&self) -> String {
        let panels: [Panel; 2] = [
            (
                "TCP, 1 stream (Gbit/s, median)",
                PathResult::tcp1_gbps,
                1.0,
                "Gbit/s",
            ),
            (
                "New flows per second (thousands, median)",
                PathResult::flows_pps,
                1e-3,
                "k/s",
            ),
        ];
        let bar_h = 18.0;
        let gap = 6.0;
        let label_w = 150.0;
        let plot_w = 560.0;
        let width = label_w + plot_w + 120.0;
        let mut y = 20.0;
        let mut body = String::new();
        for (title, f, scale, unit) in panels {
            let rows: Vec<(&str, f64, Option<Family>)> = self
                .paths
                .iter()
                .filter_map(|p| Some((p.label.as_str(), median(&f(p))? * scale, p.family)))
                .collect();
            if rows.is_empty() {
                continue;
            }
            let max = rows.iter().map(|r| r.1).fold(0.0f64, f64::max).max(1e-9);
            let _ = writeln!(
                body,
                r#"<text x="10" y="{:.0}" font-size="15" font-weight="bold">{}</text>"#,
                y + 14.0,
                xml(title)
            );
            y += 26.0;
            for (label, v, fam) in rows {
                let w = v / max * plot_w;
                let color = match fam {
                    Some(Family::Sgswitch) => "#d9480f",
                    Some(Family::Wire | Family::WirePlain) => "#495057",
                    Some(Family::Veth) => "#868e96",
                    Some(Family::Nft | Family::NftSet) => "#1c7ed6",
                    Some(Family::Ovs | Family::OvsTso) => "#2f9e44",
                    None => "#adb5bd",
                };
                let _ = writeln!(
                    body,
                    r#"<text x="{:.0}" y="{:.0}" font-size="12" text-anchor="end">{}</text>"#,
                    label_w - 8.0,
                    y + 13.0,
                    xml(label)
                );
                let _ = writeln!(
                    body,
                    r#"<rect x="{label_w:.0}" y="{y:.0}" width="{w:.1}" height="{bar_h:.0}" fill="{color}"/>"#
                );
                let _ = writeln!(
                    body,
                    r#"<text x="{:.1}" y="{:.0}" font-size="12">{} {unit}</text>"#,
                    label_w + w + 6.0,
                    y + 13.0,
                    if v >= 100.0 {
                        format!("{v:.0}")
                    } else {
                        format!("{v:.2}")
                    }
                );
                y += bar_h + gap;
            }
            y += 14.0;
        }
        let _ = writeln!(
            body,
            r##"<text x="10" y="{:.0}" font-size="11" fill="#555">{}</text>"##,
            y + 4.0,
            xml(&format!(
                "e2ebench, {}, {} CPUs, Linux {}",
                self.date, self.machine.nproc, self.machine.kernel
            ))
        );
        y += 14.0;
        format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width:.0}\" height=\"{y:.0}\" \
             font-family=\"sans-serif\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n{body}</svg>\n"
        )
    }
}

fn one_line(s: &str) -> String {
    let t: String = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if t.len() > 400 {
        let cut = (0..=400)
            .rev()
            .find(|&i| t.is_char_boundary(i))
            .unwrap_or(0);
        format!("{}…", &t[..cut])
    } else {
        t
    }
}

fn xml(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::harness::exec::CpuUse;

    fn tcp(g: f64) -> TcpRun {
        TcpRun {
            gbps: g,
            retransmits: Some(0),
            cpu: CpuUse {
                proc_pct: Some(50.0),
                machine_pct: 80.0,
            },
        }
    }

    fn flows(pps: f64) -> UdpRun {
        UdpRun {
            sent: 100,
            received: 90,
            rx_pps: pps,
            tx_pps: pps * 1.1,
            ..UdpRun::default()
        }
    }

    fn sample() -> Report {
        let mk = |label: &str, fam, rules, g: &[f64], f: &[f64]| PathResult {
            label: label.into(),
            family: Some(fam),
            rules,
            tcp1: g.iter().map(|&x| tcp(x)).collect(),
            flows: f.iter().map(|&x| flows(x)).collect(),
            ..PathResult::default()
        };
        Report {
            date: "2026-01-01 00:00 UTC".into(),
            command: "e2ebench --quick".into(),
            paths: vec![
                mk("wire", Family::Wire, None, &[10.0, 12.0, 11.0], &[400e3]),
                mk(
                    "sgswitch-100",
                    Family::Sgswitch,
                    Some(100),
                    &[9.0, 10.0, 11.0],
                    &[300e3],
                ),
                mk("nft-100", Family::Nft, Some(100), &[15.0], &[100e3]),
                PathResult {
                    v6: true,
                    ..mk("wire-v6", Family::Wire, None, &[11.0], &[380e3])
                },
                PathResult {
                    v6: true,
                    ..mk(
                        "sgswitch-100-v6",
                        Family::Sgswitch,
                        Some(100),
                        &[9.5],
                        &[255e3],
                    )
                },
            ],
            cli_us: vec![2000.0, 3000.0, 12_000.0],
            ..Report::default()
        }
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), Some(50.0));
        assert_eq!(percentile(&v, 99.0), Some(99.0));
        assert_eq!(percentile(&v, 100.0), Some(100.0));
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0]), Some(2.5));
        assert_eq!(median(&[]), None);
    }

    #[test]
    fn markdown_has_ratios_and_verdicts() {
        let md = sample().markdown(Some("benchmarks.svg"));
        // 10 / 11 = 0.91 of the wire: missed.
        assert!(
            md.contains("| TCP 1 stream, sgswitch 100 rules / bare wire | 0.91×"),
            "{md}"
        );
        assert!(md.contains("| sgswitch-100 | 10.00 (9.00–11.00) |"), "{md}");
        // New flows 300k / 400k = 0.75: missed; vs nft 3.0×: met.
        assert!(
            md.contains("0.75× (300k / 400k) | >= 0.8× | **missed**"),
            "{md}"
        );
        assert!(
            md.contains("new flows/s, sgswitch / bridge+nft, 100 rules | 3.0× | >= 3× | met"),
            "{md}"
        );
        // CLI p99 of 12 ms misses the 10 ms target.
        assert!(
            md.contains(
                "| CLI round trip (describe-group), p99 | 12.0 ms | < 10 ms | **missed** |"
            ),
            "{md}"
        );
        assert!(md.contains("![TCP Gbit/s and new flows/s per path](benchmarks.svg)"));
        // IPv6 against IPv4 of the same path: 9.5 / 10 = 0.95 met, 255k / 300k
        // = 0.85 missed; the IPv6 row's "/ wire" is against the IPv6 wire.
        assert!(
            md.contains(
                "| IPv6 / IPv4, TCP 1 stream, sgswitch 100 rules | 0.95× (9.50 / 10.00 Gbit/s) | >= 0.9× | met |"
            ),
            "{md}"
        );
        assert!(
            md.contains(
                "| IPv6 / IPv4, new flows/s, sgswitch 100 rules | 0.85× (255000 / 300000/s) | >= 0.9× | **missed** |"
            ),
            "{md}"
        );
        assert!(
            md.contains(
                "| sgswitch-100 | 10.00 (9.00–11.00) | 9.50 | 0.95× | 300000 | 255000 | 0.85× |"
            ),
            "{md}"
        );
        assert!(
            md.contains("| wire | 11.00 (10.00–12.00) | 11.00 | 1.00× |"),
            "{md}"
        );
        assert!(
            md.contains("| sgswitch-100-v6 | 9.50 | — | 0.86× | — |"),
            "{md}"
        );
    }

    #[test]
    fn svg_has_a_bar_per_measured_path() {
        let svg = sample().svg();
        assert!(svg.starts_with("<svg"));
        assert_eq!(svg.matches("<rect x=").count(), 5 + 5, "{svg}");
        assert!(svg.contains(">sgswitch-100</text>"));
    }
}
