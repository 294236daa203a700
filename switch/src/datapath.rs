//! The switch: shared datapath state ([`Datapath`]), its control operations, and
//! the threads that run it ([`Switch`]).
//!
//! Contract:
//! * Workers read two published values, the rule [`Snapshot`] and the
//!   [`PortTable`], each an `ArcSwap` loaded once per burst: no lock on the fast
//!   path, and the control plane never waits for a worker.
//! * Control operations (`add_port`, `remove_port`, gone-port reaping) serialise
//!   on one mutex that only the control plane and the housekeeper take. Each one
//!   builds a new table, publishes it, and signals every worker's eventfd so that
//!   parked workers resynchronise their epoll sets.
//! * The housekeeper thread sweeps expired connections every [`SWEEP_PERIOD`]
//!   and removes ports whose queues reported them gone (woken at once by the
//!   worker that saw it). Such ports are counted in [`Stats::ports_gone`]; a later `remove_port`
//!   of one succeeds (it is already gone).
//! * A removed port's queues are closed by the housekeeper, never by a worker
//!   ([`Datapath::close_retired`]): closing a TAP queue detaches it in the
//!   kernel under the RTNL lock and waits for an RCU grace period, which
//!   takes milliseconds while namespaces are being made or destroyed. The
//!   control keeps each removed port until the workers have let go of it
//!   (they drop the old port table at their next burst or wake-up), so a
//!   worker's reference is never the last one.
//! * The connection table is backed by 2 MiB huge pages where the kernel allows
//!   it ([`crate::sys::advise_hugepages`], best effort): a first packet's insert
//!   into the cold table then costs one cache miss, not a miss and a page walk.
//! * Workers are pinned to cores with `pin_cores`; each pinning, done or
//!   failed, is logged (`tracing`, info or warn) naming the worker and core.
//! * [`Datapath`] can also be driven without threads — [`Datapath::worker`] gives
//!   a [`Worker`] whose `poll_once`/`process_burst` a test or benchmark calls.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::thread::{JoinHandle, Thread};
use std::time::{Duration, Instant};

use arc_swap::{ArcSwap, Guard};
use crossbeam_utils::CachePadded;
use filter::compile::RuleLayout;
use filter::{Conntrack, Snapshot};

use crate::capture::CaptureSlot;
use crate::config::{PollMode, PortId, PortRole, PortSpec, SwitchConfig, SwitchError};
use crate::counters::{PortStats, RuleHitBlocks, RuleHits, RuleTotals, Stats, WorkerCounters};
use crate::flowlog::{self, Collector, FlowLogConfig, FlowLogger, Recorder};
use crate::overlay::Overlay;
use crate::pipeline::NetParams;
use crate::sys::{self, EventFd};
use crate::table::{Port, PortTable};
use crate::vxlan::{DirectoryTable, HostId};
use crate::worker::Worker;

/// How often the housekeeper sweeps expired connections. A sweep scans the whole
/// preallocated table (64 MiB for 1M flows), so it is rare: expired entries are
/// also reclaimed on sight by the datapath, the sweep only returns their quota
/// and keeps `len()` honest. The timeouts are >= 10 s anyway.
pub const SWEEP_PERIOD: Duration = Duration::from_secs(10);
/// How soon the housekeeper looks again at removed ports a worker still
/// held ([`Datapath::close_retired`]).
const RETIRE_RECHECK: Duration = Duration::from_millis(20);

/// The housekeeper folds a worker's left rule-hit blocks once this many
/// have piled up (a fold reads each block's touched pages and its
/// `mincore` map, one byte per 128 slots).
pub const FOLD_HIT_BLOCKS_AT: usize = 4;
/// A publish folds them itself when a worker has this many (the
/// housekeeper is starved): the bound on left blocks per worker.
pub const MAX_LEFT_HIT_BLOCKS: usize = 16;

/// State of the control plane side (behind the control mutex).
#[derive(Default)]
struct Control {
    ports: BTreeMap<PortId, Arc<Port>>,
    next_id: u32,
    version: u64,
    /// Ports removed because they were gone (so that `remove_port` of one is Ok).
    reaped: HashSet<PortId>,
    ports_gone: u64,
    /// Ports removed from the table whose queues are not closed yet
    /// ([`Datapath::close_retired`]).
    retired: Vec<Arc<Port>>,
}

impl Control {
    /// Takes port `id` out of the table (not yet published) and keeps it
    /// until the housekeeper closes it ([`Datapath::close_retired`]). False
    /// when there is no such port.
    fn retire(&mut self, id: PortId) -> bool {
        match self.ports.remove(&id) {
            Some(port) => {
                self.retired.push(port);
                true
            }
            None => false,
        }
    }
}

/// Everything the workers share. See the module docs.
pub struct Datapath {
    pub(crate) workers: usize,
    pub(crate) poll: PollMode,
    pub(crate) net: NetParams,
    pub(crate) rules: ArcSwap<Snapshot>,
    pub(crate) ports: ArcSwap<PortTable>,
    pub(crate) ct: Conntrack,
    /// Cluster mode: the underlay sockets (`None`: single host).
    pub(crate) overlay: Option<Overlay>,
    /// Cluster mode: hosts and instances of the lab, published like the rules.
    pub(crate) dir: ArcSwap<DirectoryTable>,
    /// Bytes of the connection table on huge pages (0 if the kernel refused).
    ct_huge_bytes: usize,
    pub(crate) wcounters: Box<[CachePadded<WorkerCounters>]>,
    /// Per-rule hits, one block per worker (written by that worker alone;
    /// swapped by it for the one prepared by [`Datapath::publish_rules`] when
    /// the rule-slot layout changes).
    rule_hits: RuleHitBlocks,
    /// Serialises publishers: a prepared hit block and its snapshot are
    /// stored in that order, by one publisher at a time.
    publishing: Mutex<()>,
    /// One eventfd per worker (None if the kernel refused one: that worker then
    /// parks with short timeouts).
    pub(crate) wakers: Vec<Option<EventFd>>,
    pub(crate) stop: AtomicBool,
    start: Instant,
    control: Mutex<Control>,
    housekeeper: OnceLock<Thread>,
    /// `sgswitch capture`: armed flag and session ([`crate::capture`]).
    pub(crate) capture: CaptureSlot,
    /// Flow logs: each worker's recorder (taken by its [`Worker`]) and the
    /// logger's collector (taken by [`Switch::start`]). The mutexes are only
    /// taken when a worker or the logger is built.
    flowlog: Option<FlowLogParts>,
}

struct FlowLogParts {
    cfg: FlowLogConfig,
    recorders: Mutex<Vec<Option<Recorder>>>,
    collector: Mutex<Option<Collector>>,
}

impl Datapath {
    /// A datapath with no ports, the empty rule snapshot and no threads.
    pub fn new(cfg: SwitchConfig) -> Result<Arc<Datapath>, SwitchError> {
        if cfg.workers == 0 {
            return Err(SwitchError::NoWorkers(0));
        }
        if cfg.subnet.prefix_len() > 29 {
            return Err(SwitchError::SubnetTooSmall(cfg.subnet));
        }
        if let Some(p) = cfg.worker_fifo {
            if !(1..=99).contains(&p) {
                return Err(SwitchError::FifoPriority(p));
            }
            if cfg.poll == PollMode::Busy {
                return Err(SwitchError::FifoBusyPoll);
            }
        }
        let overlay = cfg
            .overlay
            .map(|o| Overlay::bind(o, cfg.workers))
            .transpose()?;
        let flowlog = match &cfg.flow_log {
            Some(f) => {
                f.validate().map_err(SwitchError::FlowLogConfig)?;
                let (recs, collector) = flowlog::channels(f, cfg.workers);
                Some(FlowLogParts {
                    cfg: f.clone(),
                    recorders: Mutex::new(recs.into_iter().map(Some).collect()),
                    collector: Mutex::new(Some(collector)),
                })
            }
            None => None,
        };
        let ct = Conntrack::new(cfg.ct);
        let (addr, len) = ct.table_region();
        let ct_huge_bytes = sys::advise_hugepages(addr, len).unwrap_or(0);
        Ok(Arc::new(Datapath {
            workers: cfg.workers,
            poll: cfg.poll,
            net: NetParams::new(cfg.subnet, cfg.dhcp_lease_secs).with_subnet6(cfg.subnet6),
            rules: ArcSwap::from_pointee(Snapshot::empty()),
            ports: ArcSwap::from_pointee(PortTable::default()),
            ct,
            overlay,
            dir: ArcSwap::from_pointee(DirectoryTable::new(HostId(u32::MAX))),
            ct_huge_bytes,
            wcounters: (0..cfg.workers)
                .map(|_| CachePadded::new(WorkerCounters::default()))
                .collect(),
            rule_hits: RuleHitBlocks::new(cfg.workers),
            publishing: Mutex::new(()),
            wakers: (0..cfg.workers).map(|_| EventFd::new().ok()).collect(),
            stop: AtomicBool::new(false),
            start: Instant::now(),
            control: Mutex::new(Control::default()),
            housekeeper: OnceLock::new(),
            capture: CaptureSlot::default(),
            flowlog,
        }))
    }

    /// Worker `w`'s loop state (for running it on the caller's thread). At most
    /// one `Worker` per index may run at a time (it is the single writer of that
    /// index's queues and counters); a [`Switch`] already runs all of them.
    pub fn worker(self: &Arc<Self>, w: usize) -> Worker {
        Worker::new(self.clone(), w.min(self.workers - 1))
    }

    /// Worker `w`'s flow-log recorder, once (`None` without flow logs).
    pub(crate) fn take_recorder(&self, w: usize) -> Option<Recorder> {
        let parts = self.flowlog.as_ref()?;
        let mut r = parts.recorders.lock().unwrap_or_else(|e| e.into_inner());
        r.get_mut(w)?.take()
    }

    /// The flow logger writing with `writer`, once (`None` without flow logs
    /// or when already taken). [`Switch::start`] runs it on its own thread;
    /// tests and benchmarks may drive it directly.
    pub fn take_flow_logger(&self, writer: flowlog::Writer) -> Option<FlowLogger> {
        let parts = self.flowlog.as_ref()?;
        let collector = parts
            .collector
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()?;
        Some(FlowLogger::new(
            &parts.cfg,
            collector,
            writer,
            flowlog::base_unix(self.start.elapsed()),
        ))
    }

    /// The flow-log settings, if flow logs are on.
    pub fn flow_log_config(&self) -> Option<&FlowLogConfig> {
        self.flowlog.as_ref().map(|p| &p.cfg)
    }

    /// When the datapath started (second 0 of [`Datapath::now_secs`]).
    pub(crate) fn started(&self) -> Instant {
        self.start
    }

    /// Bytes of the connection table backed by huge pages (0 when the kernel
    /// refused or the table is smaller than one huge page).
    pub fn conntrack_hugepage_bytes(&self) -> usize {
        self.ct_huge_bytes
    }

    /// Seconds since the datapath started: the coarse clock of conntrack.
    #[inline]
    pub fn now_secs(&self) -> u32 {
        self.start.elapsed().as_secs() as u32
    }

    /// The virtual gateway / DHCP server address.
    pub fn gateway(&self) -> std::net::Ipv4Addr {
        self.net.gateway
    }

    /// Publish a new rule snapshot; workers use it from their next burst.
    ///
    /// When its rule-slot layout is new, each worker's zeroed rule-hit block
    /// for it is left ready first (a spare or a fresh mapping: O(1)), so
    /// that the worker only swaps it in ([`crate::counters`]). The blocks
    /// the workers leave are folded after the swap by the housekeeper (woken
    /// here; it folds once [`FOLD_HIT_BLOCKS_AT`] have piled up), or here
    /// when [`MAX_LEFT_HIT_BLOCKS`] have (a starved housekeeper).
    pub fn publish_rules(&self, snap: Snapshot) {
        let layout = snap.rule_layout().clone();
        {
            let _one = self.publishing.lock().unwrap_or_else(|e| e.into_inner());
            if !RuleLayout::ptr_eq(self.rules.load().rule_layout(), snap.rule_layout()) {
                self.rule_hits.prepare(snap.rule_layout());
            }
            self.rules.store(Arc::new(snap));
        }
        match self.housekeeper.get() {
            Some(t) => {
                // The housekeeper has not kept up (it runs at normal
                // priority): bound the left blocks here, after the swap.
                if self.rule_hits.most_unfolded() >= MAX_LEFT_HIT_BLOCKS {
                    self.rule_hits.tend(&layout, 1);
                }
                t.unpark();
            }
            None => self.rule_hits.tend(&layout, 1),
        }
    }

    /// Fold the rule-hit blocks the workers left (in batches) and keep a
    /// spare per worker (the housekeeper, woken by each publish).
    fn tend_rule_hits(&self) {
        self.rule_hits
            .tend(self.rules.load().rule_layout(), FOLD_HIT_BLOCKS_AT);
    }

    /// Layout changes a worker met without a prepared rule-hit block (it
    /// then allocated one itself): only when a snapshot was superseded
    /// between a worker's load of it and its first burst with it.
    pub fn rule_hit_fallbacks(&self) -> u64 {
        self.rule_hits.fallbacks()
    }

    /// Rule-hit blocks worker `w` left that are not folded yet.
    pub fn rule_hits_unfolded(&self, w: usize) -> usize {
        self.rule_hits.unfolded(w)
    }

    /// Publish a new directory of hosts and instances (cluster mode); workers
    /// use it from their next burst. Harmless without an overlay.
    pub fn publish_directory(&self, dir: Arc<DirectoryTable>) {
        self.dir.store(dir);
    }

    /// The directory currently published.
    pub fn directory(&self) -> Arc<DirectoryTable> {
        self.dir.load_full()
    }

    /// The overlay (cluster mode), if configured.
    pub fn overlay(&self) -> Option<&Overlay> {
        self.overlay.as_ref()
    }

    /// The rule snapshot currently published.
    pub fn rules(&self) -> Arc<Snapshot> {
        self.rules.load_full()
    }

    /// The connection table shared by all workers.
    pub fn conntrack(&self) -> &Conntrack {
        &self.ct
    }

    fn control(&self) -> MutexGuard<'_, Control> {
        // A panic while holding the lock leaves `Control` consistent (every edit
        // is applied by one publish at the end), so poisoning is ignored.
        self.control.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Attach a port. Validates queue count, addresses and the single uplink.
    pub fn add_port(&self, spec: PortSpec) -> Result<PortId, SwitchError> {
        let PortSpec { name, role, queues } = spec;
        if queues.len() != self.workers {
            return Err(SwitchError::QueueCount {
                name,
                got: queues.len(),
                workers: self.workers,
            });
        }
        let mut c = self.control();
        match &role {
            PortRole::Instance { mac, ip, .. } => {
                if mac[0] & 1 == 1 || *mac == [0; 6] {
                    return Err(SwitchError::BadMac { name, mac: *mac });
                }
                if *ip == self.net.gateway
                    || ip.is_unspecified()
                    || ip.is_broadcast()
                    || ip.is_multicast()
                {
                    return Err(SwitchError::ReservedIp { name, ip: *ip });
                }
                if let Some(other) = c.ports.values().find(|p| p.ip() == Some(*ip)) {
                    return Err(SwitchError::DuplicateIp {
                        name,
                        ip: *ip,
                        other: other.name.clone(),
                    });
                }
            }
            PortRole::Uplink => {
                if let Some(other) = c.ports.values().find(|p| p.role == PortRole::Uplink) {
                    return Err(SwitchError::SecondUplink {
                        name,
                        other: other.name.clone(),
                    });
                }
            }
        }
        let id = PortId(c.next_id);
        c.next_id += 1;
        c.ports
            .insert(id, Arc::new(Port::new(id, name, role, queues)));
        self.publish_ports(&mut c);
        Ok(id)
    }

    /// Detach a port. Its queues are dropped once no worker uses them any more.
    pub fn remove_port(&self, id: PortId) -> Result<(), SwitchError> {
        let mut c = self.control();
        if !c.retire(id) {
            return if c.reaped.contains(&id) {
                Ok(())
            } else {
                Err(SwitchError::NoSuchPort(id))
            };
        }
        self.publish_ports(&mut c);
        drop(c);
        self.wake_housekeeper();
        Ok(())
    }

    /// Close the queues of removed ports no worker holds any more (the
    /// housekeeper's job: see the module docs). Returns how many are left
    /// for later because a worker still holds them.
    pub fn close_retired(&self) -> usize {
        let mut c = self.control();
        if c.retired.is_empty() {
            return 0;
        }
        let (free, held): (Vec<_>, Vec<_>) = std::mem::take(&mut c.retired)
            .into_iter()
            .partition(|p| Arc::strong_count(p) == 1);
        let left = held.len();
        c.retired = held;
        drop(c);
        // The last references: the queues close here, outside the lock.
        drop(free);
        left
    }

    /// Remove every port whose tombstone is set. Returns how many.
    pub fn reap_gone(&self) -> usize {
        let mut c = self.control();
        let gone: Vec<PortId> = c
            .ports
            .values()
            .filter(|p| p.is_gone())
            .map(|p| p.id)
            .collect();
        if gone.is_empty() {
            return 0;
        }
        for id in &gone {
            c.retire(*id);
            c.reaped.insert(*id);
        }
        c.ports_gone += gone.len() as u64;
        self.publish_ports(&mut c);
        gone.len()
    }

    fn publish_ports(&self, c: &mut Control) {
        c.version += 1;
        let table = PortTable::build(c.ports.values().cloned().collect(), c.version);
        self.ports.store(Arc::new(table));
        self.wake_workers();
    }

    /// Signal every worker's eventfd (parked workers wake and resync).
    pub(crate) fn wake_workers(&self) {
        for w in self.wakers.iter().flatten() {
            let _ = w.notify();
        }
    }

    pub(crate) fn wake_housekeeper(&self) {
        match self.housekeeper.get() {
            Some(t) => t.unpark(),
            // No housekeeper thread (datapath driven directly): reap and
            // close inline.
            None => {
                self.reap_gone();
                self.close_retired();
            }
        }
    }

    /// One round of housekeeping: remove gone ports, close removed ones no
    /// worker holds, and expire connections (skipped when the table is
    /// empty). Returns how many removed ports a worker still holds.
    pub fn housekeep(&self, sweep: bool) -> usize {
        self.reap_gone();
        let held = self.close_retired();
        self.tend_rule_hits();
        if sweep && !self.ct.is_empty() {
            self.ct.sweep(self.now_secs());
        }
        held
    }

    /// Where port `id` stands: attached (and whether the DHCP server leased its
    /// instance an address), removed because its queues reported it gone, or
    /// unknown (removed by `remove_port`, or never added).
    pub fn port_status(&self, id: PortId) -> PortStatus {
        let c = self.control();
        match c.ports.get(&id) {
            Some(p) if p.is_gone() => PortStatus::Gone,
            Some(p) => PortStatus::Attached {
                leased: p.is_leased(),
            },
            None if c.reaped.contains(&id) => PortStatus::Gone,
            None => PortStatus::Unknown,
        }
    }

    /// Aggregate the counters of all workers and ports.
    /// Ports removed so far because their netdev went away (cheap: one
    /// uncontended lock, no copy of the stats).
    pub fn ports_gone(&self) -> u64 {
        self.control().ports_gone
    }

    /// Worker `w`'s rule-hit block for `snap`'s rule-slot layout: its
    /// current one, or the one prepared for that layout swapped in (O(1), no
    /// allocation; see [`crate::counters`]). Only worker `w` may call this
    /// (it is the block's single writer); called once per burst, after
    /// loading the snapshot.
    #[inline]
    pub(crate) fn rule_hits_for(&self, w: usize, snap: &Snapshot) -> Guard<Arc<RuleHits>> {
        self.rule_hits.for_worker(w, snap.rule_layout())
    }

    /// Per-rule hits summed over workers, indexed by [`filter::compile::RuleSlot`]
    /// of the published snapshot's layout (returned with it): a slot counts
    /// only where a worker's block holds the same rule (serial) as the
    /// snapshot. Off the hot path (allocates, folds left blocks).
    pub fn rule_hits(&self) -> (RuleLayout, Vec<RuleTotals>) {
        let snap = self.rules.load_full();
        let layout = snap.rule_layout().clone();
        let out = self.rule_hits.sum(&layout);
        (layout, out)
    }

    pub fn stats(&self) -> Stats {
        let mut st = Stats::empty();
        for w in self.wcounters.iter() {
            st.add_worker(w);
        }
        let c = self.control();
        st.ports = c
            .ports
            .values()
            .map(|p| PortStats {
                id: p.id,
                name: p.name.clone(),
                ip: p.ip(),
                counters: p.counters.total(),
            })
            .collect();
        st.ports_gone = c.ports_gone;
        drop(c);
        st.conntrack_entries = self.ct.len();
        st
    }
}

/// See [`Datapath::port_status`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PortStatus {
    Attached {
        leased: bool,
    },
    /// Its netdev disappeared (namespace or interface removed).
    Gone,
    Unknown,
}

/// Pin the calling thread (worker `w`) to `core`; says so in the event log
/// either way (a worker left unpinned still runs, only less predictably).
fn pin_worker(w: usize, core: core_affinity::CoreId) -> bool {
    let ok = core_affinity::set_for_current(core);
    if ok {
        tracing::info!(
            worker = w,
            core = core.id,
            "worker {w} pinned to core {}",
            core.id
        );
    } else {
        tracing::warn!(
            worker = w,
            core = core.id,
            "worker {w} could not be pinned to core {} (it runs unpinned)",
            core.id
        );
    }
    ok
}

/// Give the calling thread (worker `w`) its scheduling: `SCHED_FIFO` at
/// `fifo` if set, else (or when that is refused) nice `nice` if not 0. Logs
/// what it got, a refusal as a warning. Returns the policy it got.
fn schedule_worker(w: usize, fifo: Option<i32>, nice: i32) -> Option<i32> {
    if let Some(prio) = fifo {
        match sys::set_thread_fifo(prio) {
            Ok(()) => {
                tracing::info!(worker = w, prio, "worker {w} at SCHED_FIFO {prio}");
                return Some(sys::SCHED_FIFO);
            }
            Err(e) => tracing::warn!(
                worker = w,
                prio,
                "worker {w}: SCHED_FIFO {prio} refused ({e}); it runs normally at nice {nice}"
            ),
        }
    }
    if nice != 0 {
        match sys::set_thread_nice(nice) {
            Ok(()) => tracing::info!(worker = w, nice, "worker {w} at nice {nice}"),
            Err(e) => tracing::warn!(
                worker = w,
                nice,
                "worker {w}: nice {nice} refused ({e}); it runs at the process's"
            ),
        }
    }
    sys::thread_sched().ok().map(|(policy, _)| policy)
}

/// A running switch: the datapath plus its worker and housekeeper threads.
pub struct Switch {
    dp: Arc<Datapath>,
    threads: Vec<JoinHandle<()>>,
    housekeeper: Option<JoinHandle<()>>,
    /// The flow logger and its stop flag (set after the workers are joined).
    flowlog: Option<(JoinHandle<()>, Arc<AtomicBool>)>,
}

impl Switch {
    /// Start the workers (pinned if `cfg.pin_cores`) and the housekeeper.
    pub fn start(cfg: SwitchConfig) -> Result<Switch, SwitchError> {
        let pin = cfg.pin_cores;
        let nice = cfg.worker_nice;
        let fifo = cfg.worker_fifo;
        let dp = Datapath::new(cfg)?;
        let cores = if pin {
            core_affinity::get_core_ids().unwrap_or_default()
        } else {
            Vec::new()
        };
        let mut sw = Switch {
            dp: dp.clone(),
            threads: Vec::new(),
            housekeeper: None,
            flowlog: None,
        };
        if let Some(f) = dp.flow_log_config() {
            let writer = flowlog::Writer::open(f).map_err(|source| SwitchError::FlowLogOpen {
                path: match &f.sink {
                    flowlog::FlowLogSink::File(p) => p.clone(),
                    flowlog::FlowLogSink::Stdout => "-".into(),
                },
                source,
            })?;
            let interval = f.interval_secs;
            if let Some(logger) = dp.take_flow_logger(writer) {
                let stop = Arc::new(AtomicBool::new(false));
                let t = flowlog::spawn(dp.clone(), logger, interval, stop.clone())
                    .map_err(SwitchError::FlowLogSpawn)?;
                sw.flowlog = Some((t, stop));
            }
        }
        let hk = {
            let dp = dp.clone();
            std::thread::Builder::new()
                .name("sgsw-housekeeper".into())
                .spawn(move || {
                    let mut last_sweep = Instant::now();
                    while !dp.stop.load(Ordering::Acquire) {
                        let due = last_sweep.elapsed() >= SWEEP_PERIOD;
                        if due {
                            last_sweep = Instant::now();
                        }
                        let held = dp.housekeep(due);
                        // Woken early by a worker that found a port gone, or
                        // by a removal; back soon while a worker still holds
                        // a removed port.
                        std::thread::park_timeout(if held > 0 {
                            RETIRE_RECHECK
                        } else {
                            SWEEP_PERIOD
                        });
                    }
                })
                .map_err(SwitchError::SpawnHousekeeper)?
        };
        let _ = dp.housekeeper.set(hk.thread().clone());
        sw.housekeeper = Some(hk);
        for w in 0..dp.workers {
            let worker = dp.worker(w);
            let core = (!cores.is_empty()).then(|| cores[w % cores.len()]);
            let mode = dp.poll;
            let t = std::thread::Builder::new()
                .name(format!("sgsw-worker-{w}"))
                .spawn(move || {
                    if let Some(core) = core {
                        pin_worker(w, core);
                    }
                    schedule_worker(w, fifo, nice);
                    worker.run(mode);
                })
                .map_err(|source| SwitchError::Spawn { worker: w, source });
            match t {
                Ok(t) => sw.threads.push(t),
                Err(e) => {
                    sw.stop_and_join();
                    return Err(e);
                }
            }
        }
        Ok(sw)
    }

    /// The shared datapath (counters, conntrack, direct control).
    pub fn datapath(&self) -> &Arc<Datapath> {
        &self.dp
    }

    /// Publish a new rule snapshot (one atomic pointer swap).
    pub fn publish_rules(&self, snap: Snapshot) {
        self.dp.publish_rules(snap);
    }

    /// Publish a new directory of hosts and instances (one atomic pointer swap).
    pub fn publish_directory(&self, dir: Arc<DirectoryTable>) {
        self.dp.publish_directory(dir);
    }

    /// The underlay address the overlay's sockets are bound to (cluster mode).
    pub fn underlay_addr(&self) -> Option<std::net::SocketAddrV4> {
        self.dp.overlay().map(Overlay::local_addr)
    }

    /// Whether TCP super-frames leave whole with UDP-tunnel GSO (cluster mode
    /// with `OverlayConfig::tunnel_gso`, the TAP made and not refused).
    pub fn overlay_tunnel_gso(&self) -> bool {
        self.dp.overlay().is_some_and(Overlay::tunnel_gso)
    }

    pub fn add_port(&self, spec: PortSpec) -> Result<PortId, SwitchError> {
        self.dp.add_port(spec)
    }

    pub fn remove_port(&self, id: PortId) -> Result<(), SwitchError> {
        self.dp.remove_port(id)
    }

    pub fn stats(&self) -> Stats {
        self.dp.stats()
    }

    /// See [`Datapath::port_status`].
    pub fn port_status(&self, id: PortId) -> PortStatus {
        self.dp.port_status(id)
    }

    /// The virtual gateway / DHCP server address.
    pub fn gateway(&self) -> std::net::Ipv4Addr {
        self.dp.gateway()
    }

    /// Stop and join the workers and the housekeeper.
    pub fn shutdown(mut self) {
        self.stop_and_join();
    }

    fn stop_and_join(&mut self) {
        self.dp.stop.store(true, Ordering::Release);
        self.dp.wake_workers();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        if let Some(h) = self.housekeeper.take() {
            h.thread().unpark();
            let _ = h.join();
        }
        // After the workers: they handed their last tables over on exit.
        if let Some((t, stop)) = self.flowlog.take() {
            stop.store(true, Ordering::Release);
            let _ = t.join();
        }
    }
}

impl Drop for Switch {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use super::{pin_worker, schedule_worker};
    use crate::config::{PollMode, SwitchConfig, SwitchError};
    use crate::{Datapath, sys};

    /// A `tracing` writer into a shared buffer.
    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn pinning_is_logged_whether_it_works_or_not() {
        let buf = Buf::default();
        let w = buf.clone();
        let sub = tracing_subscriber::fmt()
            .with_writer(move || w.clone())
            .with_ansi(false)
            .finish();
        // Pin a helper thread, not the test harness's.
        let (good, bad) = std::thread::spawn(move || {
            tracing::subscriber::with_default(sub, || {
                let first = core_affinity::get_core_ids()
                    .and_then(|c| c.first().copied())
                    .map(|c| pin_worker(3, c));
                let bad = pin_worker(4, core_affinity::CoreId { id: 1023 });
                (first, bad)
            })
        })
        .join()
        .unwrap();
        let log = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        assert!(!bad, "core 1023 does not exist here");
        assert!(
            log.contains("WARN") && log.contains("worker 4 could not be pinned to core 1023"),
            "{log}"
        );
        if good == Some(true) {
            assert!(
                log.contains("INFO") && log.contains("worker 3 pinned to core"),
                "{log}"
            );
        }
    }

    #[test]
    fn fifo_workers_refuse_busy_polling_and_bad_priorities() {
        let cfg = |poll, fifo| SwitchConfig {
            workers: 1,
            poll,
            worker_fifo: fifo,
            ct: filter::CtConfig::with_capacity(1 << 10),
            ..SwitchConfig::default()
        };
        let e = Datapath::new(cfg(PollMode::Busy, Some(1)))
            .err()
            .expect("refused");
        assert!(matches!(e, SwitchError::FifoBusyPoll), "{e}");
        let msg = e.to_string();
        assert!(
            msg.contains("--worker-priority fifo") && msg.contains("--poll busy"),
            "{msg}"
        );
        let e = Datapath::new(cfg(PollMode::Adaptive, Some(0)))
            .err()
            .expect("refused");
        assert!(matches!(e, SwitchError::FifoPriority(0)), "{e}");
        assert!(Datapath::new(cfg(PollMode::Adaptive, Some(1))).is_ok());
        assert!(Datapath::new(cfg(PollMode::Busy, None)).is_ok());
    }

    #[test]
    fn a_fifo_worker_runs_at_sched_fifo_or_falls_back_to_its_nice() {
        // Root: the uid field of /proc/self/status is 0.
        let root = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|st| {
                st.lines()
                    .find(|l| l.starts_with("Uid:"))
                    .map(|l| l.split_whitespace().nth(2) == Some("0"))
            })
            .unwrap_or(false);
        let (got, sched, child) = std::thread::spawn(|| {
            let got = schedule_worker(7, Some(1), -5);
            // A process started from the worker runs normally again.
            let child = std::process::Command::new("sh")
                .args(["-c", "cut -d' ' -f19,41 /proc/self/stat"])
                .output()
                .expect("sh");
            (
                got,
                sys::thread_sched().expect("sched"),
                String::from_utf8_lossy(&child.stdout).trim().to_owned(),
            )
        })
        .join()
        .unwrap();
        assert_eq!(got, Some(sched.0));
        if sched.0 == sys::SCHED_FIFO {
            assert_eq!(child, "0 0", "reset on fork");
        } else {
            // Refused: the nice fallback (refused too when not root).
            assert_eq!(sched.0, sys::SCHED_OTHER);
            assert!(!root || sched.1 == -5, "{sched:?}");
        }
        let (got, sched) = std::thread::spawn(|| {
            (
                schedule_worker(8, None, 0),
                sys::thread_sched().expect("sched"),
            )
        })
        .join()
        .unwrap();
        assert_eq!((got, sched.0), (Some(sys::SCHED_OTHER), sys::SCHED_OTHER));
    }
}
