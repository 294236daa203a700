//! The cold side of flow logs: the logger thread that merges the workers'
//! tables and writes the records ([`FlowLogger`], [`spawn`]), and the sink
//! with its rotation ([`Writer`]). See the contract in [`super`].

use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use filter::{FlowKey, Snapshot};

use super::{Collector, FlowAction, FlowLogConfig, FlowLogSink, FlowTable, HEADER, LogFamily};
use crate::Datapath;
use crate::table::Kind;

/// Where the lines go: stdout or a rotated file.
pub struct Writer {
    sink: FlowLogSink,
    max_bytes: u64,
    keep: u32,
    out: BufWriter<Box<dyn Write + Send>>,
    /// Bytes in the current file.
    written: u64,
    /// Rotation applies (a regular file; never a device or a FIFO).
    rotates: bool,
}

impl Writer {
    /// Open the sink (a file is appended to; a new or empty one gets the
    /// header line).
    pub fn open(cfg: &FlowLogConfig) -> io::Result<Writer> {
        let (out, written, rotates): (Box<dyn Write + Send>, u64, bool) = match &cfg.sink {
            FlowLogSink::Stdout => (Box::new(io::stdout()), 0, false),
            FlowLogSink::File(p) => {
                let f = OpenOptions::new().create(true).append(true).open(p)?;
                let meta = f.metadata()?;
                (Box::new(f), meta.len(), meta.is_file())
            }
        };
        let mut w = Writer {
            sink: cfg.sink.clone(),
            max_bytes: cfg.max_bytes,
            keep: cfg.keep,
            out: BufWriter::new(out),
            written,
            rotates,
        };
        if w.written == 0 {
            w.header()?;
            w.out.flush()?;
        }
        Ok(w)
    }

    fn header(&mut self) -> io::Result<()> {
        writeln!(self.out, "{HEADER}")?;
        self.written += HEADER.len() as u64 + 1;
        Ok(())
    }

    /// Write one line (without its newline), rotating first if it would not fit.
    pub fn line(&mut self, line: &str) -> io::Result<()> {
        let n = line.len() as u64 + 1;
        if let FlowLogSink::File(p) = &self.sink
            && self.rotates
            && self.written + n > self.max_bytes
            && self.written > HEADER.len() as u64 + 1
        {
            let p = p.clone();
            self.rotate(&p)?;
        }
        writeln!(self.out, "{line}")?;
        self.written += n;
        Ok(())
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    fn rotate(&mut self, path: &Path) -> io::Result<()> {
        self.out.flush()?;
        let numbered = |i: u32| {
            let mut s = path.as_os_str().to_owned();
            s.push(format!(".{i}"));
            PathBuf::from(s)
        };
        if self.keep > 0 {
            // A file someone removed in between is not an error: the chain
            // just has a gap.
            let shift = |from: PathBuf, to: PathBuf| match std::fs::rename(from, to) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            };
            for i in (1..self.keep).rev() {
                shift(numbered(i), numbered(i + 1))?;
            }
            shift(path.to_path_buf(), numbered(1))?;
        }
        let f = File::create(path)?;
        self.out = BufWriter::new(Box::new(f));
        self.written = 0;
        self.header()
    }
}

/// What one flush wrote.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlushSummary {
    pub ok: usize,
    pub nodata: usize,
    pub skipdata: usize,
    /// Packets not recorded (reported in the SKIPDATA records).
    pub skipped_packets: u64,
}

/// The logger: merges the workers' tables and writes records.
pub struct FlowLogger {
    collector: Collector,
    writer: Writer,
    reject_limit: u32,
    /// Unix second of datapath second 0.
    base_unix: u64,
    /// Owner and instance id by address, kept for instances that left.
    names: HashMap<u32, (std::sync::Arc<str>, std::sync::Arc<str>)>,
    /// Datapath second the current NODATA window started.
    window_start: u32,
}

#[derive(Clone, Copy, Default)]
struct Agg {
    packets: u64,
    bytes: u64,
    first: u32,
    last: u32,
}

impl Agg {
    fn add(&mut self, packets: u64, bytes: u64, first: u32, last: u32) {
        if self.packets == 0 || first < self.first {
            self.first = first;
        }
        self.last = self.last.max(last);
        self.packets += packets;
        self.bytes += bytes;
    }
}

impl FlowLogger {
    /// A logger writing with `writer`; `base_unix` is the unix second of
    /// datapath second 0.
    pub fn new(cfg: &FlowLogConfig, collector: Collector, writer: Writer, base_unix: u64) -> Self {
        FlowLogger {
            collector,
            writer,
            reject_limit: cfg.reject_limit,
            base_unix,
            names: HashMap::new(),
            window_start: 0,
        }
    }

    fn ident(&mut self, snap: &Snapshot, ip: Ipv4Addr) -> (String, String) {
        let k = u32::from(ip);
        if let Some(i) = snap.instance_by_ip(ip) {
            let inst = snap.instance(i);
            let known = self.names.get(&k);
            if known.is_none_or(|(o, id)| *o != inst.owner || *id != inst.id) {
                self.names.insert(k, (inst.owner.clone(), inst.id.clone()));
            }
        }
        match self.names.get(&k) {
            Some((owner, id)) => (owner.to_string(), eni_id(id)),
            None => ("-".into(), "-".into()),
        }
    }

    /// Write the records of every table handed over so far, then a `NODATA`
    /// record for each instance of `attached` without one; `now` (datapath
    /// seconds) ends the NODATA window.
    pub fn flush(
        &mut self,
        now: u32,
        snap: &Snapshot,
        attached: &[Ipv4Addr],
    ) -> io::Result<FlushSummary> {
        let tables = self.collector.drain();
        // Both families' records, merged per interface (the instance's IPv4
        // address) and flow.
        let mut flows: HashMap<(Ipv4Addr, FlowKey<IpAddr>, FlowAction), Agg> = HashMap::new();
        let mut skipped: HashMap<Ipv4Addr, Agg> = HashMap::new();
        let mut unattributed = 0u64;
        for (_, t) in &tables {
            merge(&t.v4, &mut flows);
            merge(&t.v6, &mut flows);
            for (ip, n, first, last) in t.v4.skipped().chain(t.v6.skipped()) {
                skipped.entry(ip).or_default().add(n, 0, first, last);
            }
            unattributed += t.v4.unattributed() + t.v6.unattributed();
        }
        for (w, t) in tables {
            self.collector.give_back(w, t);
        }
        let mut sorted: Vec<_> = flows.into_iter().collect();
        sorted.sort_by_key(|((iface, key, action), a)| (*iface, a.first, *key, *action));
        let mut sum = FlushSummary::default();
        let mut rejects: HashMap<Ipv4Addr, u32> = HashMap::new();
        let mut lines = Vec::with_capacity(sorted.len());
        let mut seen: HashSet<Ipv4Addr> = HashSet::new();
        for ((iface, key, action), a) in sorted {
            if action == FlowAction::Reject {
                let n = rejects.entry(iface).or_default();
                if *n >= self.reject_limit {
                    skipped
                        .entry(iface)
                        .or_default()
                        .add(a.packets, 0, a.first, a.last);
                    continue;
                }
                *n += 1;
            }
            seen.insert(iface);
            let (account, eni) = self.ident(snap, iface);
            lines.push(format!(
                "2 {account} {eni} {} {} {} {} {} {} {} {} {} {} OK",
                key.src,
                key.dst,
                key.sport,
                key.dport,
                key.proto,
                a.packets,
                a.bytes,
                self.unix(a.first),
                self.unix(a.last),
                action.as_str()
            ));
            sum.ok += 1;
        }
        let mut skipped: Vec<_> = skipped.into_iter().collect();
        skipped.sort_by_key(|(ip, _)| *ip);
        for (iface, a) in &skipped {
            seen.insert(*iface);
            let (account, eni) = self.ident(snap, *iface);
            lines.push(skip_line(
                &account,
                &eni,
                self.unix(a.first),
                self.unix(a.last),
            ));
            sum.skipdata += 1;
            sum.skipped_packets += a.packets;
        }
        if unattributed > 0 {
            lines.push(skip_line(
                "-",
                "-",
                self.unix(self.window_start),
                self.unix(now),
            ));
            sum.skipdata += 1;
            sum.skipped_packets += unattributed;
        }
        for ip in attached {
            if seen.contains(ip) {
                continue;
            }
            let (account, eni) = self.ident(snap, *ip);
            lines.push(format!(
                "2 {account} {eni} - - - - - - - {} {} - NODATA",
                self.unix(self.window_start),
                self.unix(now)
            ));
            sum.nodata += 1;
        }
        self.window_start = now;
        for l in &lines {
            self.writer.line(l)?;
        }
        self.writer.flush()?;
        Ok(sum)
    }

    fn unix(&self, t: u32) -> u64 {
        self.base_unix + u64::from(t)
    }
}

/// Add a table's records to `flows`, keyed by interface, flow (addresses of
/// either family) and action.
fn merge<A: LogFamily + Into<IpAddr>>(
    t: &FlowTable<A>,
    flows: &mut HashMap<(Ipv4Addr, FlowKey<IpAddr>, FlowAction), Agg>,
) {
    for f in t.flows() {
        let key = FlowKey {
            src: f.key.src.into(),
            dst: f.key.dst.into(),
            proto: f.key.proto,
            sport: f.key.sport,
            dport: f.key.dport,
        };
        flows
            .entry((f.iface, key, f.action))
            .or_default()
            .add(f.packets, f.bytes, f.first, f.last);
    }
}

fn skip_line(account: &str, eni: &str, start: u64, end: u64) -> String {
    format!("2 {account} {eni} - - - - - - - {start} {end} - SKIPDATA")
}

/// The interface id of an instance: `eni-` and the instance id's digits.
pub fn eni_id(instance: &str) -> String {
    format!("eni-{}", instance.strip_prefix("i-").unwrap_or(instance))
}

/// Unix second of datapath second 0, for a datapath that started `elapsed` ago.
pub fn base_unix(elapsed: Duration) -> u64 {
    SystemTime::now()
        .checked_sub(elapsed)
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs())
}

/// Extra time after an interval boundary before the logger flushes: every
/// worker, even a parked one, has woken and handed its table over by then.
pub const FLUSH_GRACE: Duration = Duration::from_millis(crate::worker::LONG_PARK_MS as u64 + 150);

/// Run `logger` on its own thread for `dp` until `stop` is set (after the
/// workers handed over their last tables), then flush once more.
pub fn spawn(
    dp: Arc<Datapath>,
    mut logger: FlowLogger,
    interval_secs: u32,
    stop: Arc<AtomicBool>,
) -> io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("sgsw-flowlog".into())
        .spawn(move || {
            let flush = |logger: &mut FlowLogger, now: u32| {
                let snap = dp.rules();
                let attached: Vec<Ipv4Addr> = dp
                    .ports
                    .load()
                    .ports
                    .iter()
                    .filter_map(|p| match p.kind {
                        Kind::Instance { ip, .. } if !p.is_gone() => Some(ip),
                        _ => None,
                    })
                    .collect();
                match logger.flush(now, &snap, &attached) {
                    Ok(s) if s.skipped_packets > 0 => tracing::warn!(
                        records = s.ok,
                        skipdata = s.skipdata,
                        skipped_packets = s.skipped_packets,
                        "flow log: packets not recorded (bounds reached)"
                    ),
                    Ok(_) => {}
                    Err(e) => tracing::error!(error = %e, "flow log: write failed"),
                }
            };
            loop {
                let now = dp.now_secs();
                let next = (now / interval_secs + 1) * interval_secs;
                let due = dp.started() + Duration::from_secs(u64::from(next)) + FLUSH_GRACE;
                while Instant::now() < due && !stop.load(Ordering::Acquire) {
                    std::thread::sleep(
                        due.saturating_duration_since(Instant::now())
                            .min(Duration::from_millis(50)),
                    );
                }
                if stop.load(Ordering::Acquire) {
                    flush(&mut logger, dp.now_secs());
                    return;
                }
                flush(&mut logger, next);
            }
        })
}
