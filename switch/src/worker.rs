//! Worker poll loops: one thread per worker, each reading bursts from its own
//! queue of every port and running the [`crate::pipeline`] on every frame.
//!
//! Contract:
//! * Worker `w` only touches queue `w` of each port, its own buffers ([`BURST`]
//!   receive buffers of [`BUF_LEN`] bytes and a scratch buffer of the same size,
//!   allocated once) and its own counters: nothing mutable is shared between
//!   workers.
//! * Staged bursts (VPP-style): from each port it reads up to [`BURST`] frames
//!   (fewer once [`BURST_BYTES`] were read: two TCP super-frames, so a port
//!   with a bulk backlog holds the others up for ~0.1 ms, not ~1.5 ms),
//!   then prepares them all (parse + prefetch of their connection-table buckets,
//!   [`crate::pipeline::prepare`]), then processes them in order; the memory
//!   latency of a burst's new flows overlaps instead of adding up. A burst of
//!   one frame is processed directly (nothing to overlap). Measured (issue 6):
//!   first packet of a flow -35-40 % CPU per frame in memory; established flows
//!   unchanged within noise although staging costs ~300 instructions per frame.
//! * Per wake-up ([`Worker::poll_once`]) it loads the port table once (arc-swap,
//!   no lock) and reads the coarse clock once, and loads the rule snapshot once
//!   per burst, after reading it (so a frame sent after an edit was published is
//!   judged by that edit's rules or newer). It reads up to [`BURST`] frames from
//!   each port that has frames waiting: with more than
//!   [`SWEEP_MAX_PORTS`] ports, all with fds, the ports come from one
//!   non-blocking `epoll_wait` (level-triggered, so a port with more than a burst
//!   waiting is reported again), saving a failing `read` per idle port; every
//!   [`FULL_SWEEP_EVERY`]th wake-up, and always with fd-less (in-memory) queues,
//!   it reads every port. The epoll set follows the port table's version at
//!   every wake-up.
//! * [`PollMode::Busy`] spins forever. [`PollMode::Adaptive`] spins while there is
//!   work and, when it found nothing, spins on for [`IDLE_SPIN`] only if the
//!   last idle gap (from finding nothing to the next frame) was shorter than
//!   that, i.e. if spinning would have caught the last frame ([`IdleSpin`]);
//!   then it parks in `epoll_wait`
//!   over the poll fds of its queues plus its eventfd (signalled on port-table
//!   changes and shutdown). Where frames come further apart (TSO super-frames
//!   of a TCP stream) the spin would only burn the CPU their senders need (on
//!   2 shared cores: 7-40 % more CPU per GB across hosts, and a failing read
//!   per port per turn), so the worker parks at once. Queues without an fd (in-memory ports) make it park
//!   with a [`SHORT_PARK_MS`] timeout instead of a long one.
//! * A queue that reports `PortError::Gone` sets the port's tombstone; the worker
//!   skips it from then on and wakes the housekeeper, which removes the port.
//! * Capture: per burst, one relaxed load of the capture's armed flag
//!   ([`crate::capture`]); only when armed is the session loaded.
//! * Flow logs: the worker's aggregation table lives in its scratch space; at
//!   every wake-up it checks the interval boundary once
//!   ([`crate::flowlog::Recorder::tick`]) and hands the table over past it; on
//!   exit it hands over what it holds.
//! * Cluster mode: worker `w` also reads underlay socket `w` (in every sweep, and
//!   when epoll reports it; it is in the park set too), up to [`BURST`] reads
//!   or [`BURST_BYTES`],
//!   with the rule snapshot and the directory loaded after the read
//!   (`overlay::receive`).

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::capture;
use crate::config::PollMode;
use crate::counters::bump;
use filter::DropReason;
use filter::parse::Parsed;

use crate::overlay::{self, GSO_BUF_LEN, OverlayEnv};
use crate::pipeline::{
    BUF_LEN, BURST, BURST_BYTES, Env, Outcome, Scratch, prepare, process, process_prepared,
};
use crate::port::{PortError, VnetHdr};
use crate::sys::{self, EPOLLIN, Epoll, EpollEvents};
use crate::table::{Port, PortTable};
use crate::vxlan::DirectoryTable;
use crate::{Datapath, PortId};

/// How long an adaptive worker keeps spinning after its last frame.
pub const IDLE_SPIN: Duration = Duration::from_micros(50);
/// When an adaptive worker spins before parking (see the module docs): only
/// if the last idle gap was shorter than [`IDLE_SPIN`]. Per worker, no lock.
#[derive(Clone, Copy, Debug)]
pub struct IdleSpin {
    /// Since when the polls find nothing (`None`: the last one found work).
    since: Option<Instant>,
    /// The last moment of this idle stretch at which nothing had come yet
    /// (the last empty poll, or the wake-up from a park).
    last_empty: Option<Instant>,
    /// Spin in this idle stretch: the last gap was shorter than [`IDLE_SPIN`].
    spin: bool,
}

impl Default for IdleSpin {
    fn default() -> Self {
        Self::new()
    }
}

impl IdleSpin {
    /// A worker that has not seen a gap yet spins (as after a short one).
    pub fn new() -> IdleSpin {
        IdleSpin {
            since: None,
            last_empty: None,
            spin: true,
        }
    }

    /// A poll at `now` found nothing: whether to spin (poll again) rather
    /// than park.
    pub fn empty(&mut self, now: Instant) -> bool {
        let since = *self.since.get_or_insert(now);
        self.last_empty = Some(now);
        self.spin && now.saturating_duration_since(since) < IDLE_SPIN
    }

    /// The worker woke from a park at `now` (an event or the timeout).
    pub fn woke(&mut self, now: Instant) {
        self.since.get_or_insert(now);
        self.last_empty = Some(now);
    }

    /// A poll found work: the idle gap it ends (at least from the first empty
    /// poll to the last moment nothing had come) decides the next spin.
    pub fn work(&mut self) {
        if let (Some(since), Some(last)) = (self.since.take(), self.last_empty.take()) {
            self.spin = last.saturating_duration_since(since) < IDLE_SPIN;
        }
    }

    /// Whether the next idle stretch starts with a spin.
    pub fn spins(&self) -> bool {
        self.spin
    }
}

/// Park timeout when some queue cannot be polled by fd (in-memory ports).
pub const SHORT_PARK_MS: i32 = 1;
/// Park timeout when every queue has an fd: the eventfd wakes the worker for
/// everything else, this only bounds the staleness of housekeeping.
pub const LONG_PARK_MS: i32 = 500;

/// With at most this many ports a wake-up reads every port (a failing read on
/// an idle port costs no more than the `epoll_wait` that would skip it).
pub const SWEEP_MAX_PORTS: usize = 2;
/// Every this many wake-ups a worker reads every port even if epoll did not
/// report it readable (a safety net: no frame can wait on a missed readiness).
pub const FULL_SWEEP_EVERY: u64 = 64;

/// Epoll token of the worker's eventfd.
const WAKE_TOKEN: u64 = u64::MAX;
/// Epoll token of the worker's underlay socket (cluster mode).
const OVERLAY_TOKEN: u64 = u64::MAX - 1;

/// How the frames of one [`Worker::process_burst`] ended.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BurstResult {
    pub forwarded: usize,
    pub answered: usize,
    pub consumed: usize,
    pub dropped: usize,
}

/// A worker's staged burst: up to [`BURST`] frames read before any is processed.
struct Burst {
    /// One receive buffer of [`BUF_LEN`] bytes per frame (allocated once,
    /// zero-filled lazily by the kernel: only pages a frame used are resident).
    bufs: Box<[Box<[u8]>]>,
    /// Length and virtio-net header of each frame read.
    meta: [(usize, VnetHdr); BURST],
    parsed: [Result<Parsed, DropReason>; BURST],
    /// Sender and GRO segment size of each read of an underlay burst.
    from: [(SocketAddrV4, Option<u16>); BURST],
}

impl Burst {
    fn new() -> Burst {
        Burst {
            bufs: (0..BURST)
                .map(|_| vec![0u8; BUF_LEN].into_boxed_slice())
                .collect(),
            meta: [(0, VnetHdr::default()); BURST],
            parsed: [Err(DropReason::TruncatedEthernet); BURST],
            from: [(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0), None); BURST],
        }
    }

    /// Process the first `n` frames, frame `i` as received from `port(i)`:
    /// prepare all (parse + conntrack prefetch), then process each in order. A
    /// single frame is processed directly (a prefetch would not overlap
    /// anything).
    fn run<'p>(
        &mut self,
        env: &Env<'_>,
        n: usize,
        port: impl Fn(usize) -> &'p Port,
        scratch: &mut Scratch,
    ) -> [Outcome; BURST] {
        let mut out = [Outcome::Consumed; BURST];
        if n == 1 {
            // Nothing to overlap a prefetch with: process at once.
            let (len, vnet) = self.meta[0];
            out[0] = process(env, port(0), &mut self.bufs[0][..len], &vnet, scratch);
            return out;
        }
        let frames = self.bufs.iter_mut().zip(&self.meta).take(n);
        for ((buf, (len, _)), parsed) in frames.zip(self.parsed.iter_mut()) {
            prepare(env, &buf[..*len], parsed);
            match (&scratch.flows, &*parsed) {
                (Some(r), Ok(Parsed::Ipv4 { pkt, .. })) => r.prefetch(&pkt.key),
                (Some(r), Ok(Parsed::Ipv6 { pkt, .. })) => r.prefetch6(&pkt.key),
                _ => {}
            }
        }
        let frames = self.bufs.iter_mut().zip(&self.meta).zip(&self.parsed);
        for (i, (((buf, (len, vnet)), parsed), o)) in frames.zip(out.iter_mut()).take(n).enumerate()
        {
            *o = process_prepared(env, port(i), &mut buf[..*len], parsed, vnet, scratch);
        }
        out
    }
}

/// The overlay view of a burst: the sockets and the directory loaded for it.
#[inline]
fn overlay_env<'a>(dp: &'a Datapath, dir: Option<&'a DirectoryTable>) -> Option<OverlayEnv<'a>> {
    match (&dp.overlay, dir) {
        (Some(ov), Some(dir)) => Some(OverlayEnv {
            ov,
            dir,
            dry: false,
        }),
        _ => None,
    }
}

/// One worker's state. Built by [`Datapath::worker`].
pub struct Worker {
    dp: Arc<Datapath>,
    w: usize,
    /// The staged burst: one receive buffer per frame of a burst.
    burst: Burst,
    scratch: Scratch,
    /// Port-table version the epoll set was last synchronised with.
    synced_version: u64,
    /// fd → port id registered in the epoll set.
    registered: HashMap<RawFd, PortId>,
    fdless_queues: bool,
    epoll: Option<(Epoll, EpollEvents)>,
    /// Wake-ups so far (every [`FULL_SWEEP_EVERY`]th reads every port).
    rounds: u64,
}

impl Worker {
    pub(crate) fn new(dp: Arc<Datapath>, w: usize) -> Worker {
        let epoll = Epoll::new().ok().and_then(|e| {
            let waker = dp.wakers.get(w)?.as_ref()?;
            e.add(waker.as_raw_fd(), EPOLLIN, WAKE_TOKEN).ok()?;
            if let Some(ov) = &dp.overlay {
                e.add(ov.socks[w].as_raw_fd(), EPOLLIN, OVERLAY_TOKEN)
                    .ok()?;
            }
            Some((e, EpollEvents::with_capacity(64)))
        });
        let mut scratch = Scratch {
            flows: dp.take_recorder(w),
            ..Scratch::default()
        };
        if dp.overlay.is_some() {
            scratch.gso = vec![0u8; GSO_BUF_LEN].into_boxed_slice();
        }
        Worker {
            dp,
            w,
            burst: Burst::new(),
            scratch,
            synced_version: u64::MAX,
            registered: HashMap::new(),
            fdless_queues: true,
            epoll,
            rounds: 0,
        }
    }

    /// This worker's index.
    pub fn index(&self) -> usize {
        self.w
    }

    /// One wake-up: read a burst from every port that has frames waiting and
    /// process it. Returns the number of frames read.
    pub fn poll_once(&mut self) -> usize {
        let dp = &*self.dp;
        let snap = dp.rules.load();
        let table = dp.ports.load();
        if table.version != self.synced_version {
            Self::sync_epoll(
                self.w,
                &table,
                &self.epoll,
                &mut self.registered,
                &mut self.fdless_queues,
            );
            self.synced_version = table.version;
        }
        let wc = &dp.wcounters[self.w];
        let now = dp.now_secs();
        if let Some(r) = self.scratch.flows.as_mut() {
            r.tick(now);
        }
        let hits = dp.rule_hits_for(self.w, &snap);
        let env = Env {
            snap: &snap,
            table: &table,
            ct: &dp.ct,
            net: &dp.net,
            now,
            w: self.w,
            wc,
            hits: &hits,
            overlay: None,
            capture: None,
        };
        let mut n = 0;
        self.rounds = self.rounds.wrapping_add(1);
        let sweep = self.fdless_queues
            || table.ports.len() <= SWEEP_MAX_PORTS
            || self.rounds.is_multiple_of(FULL_SWEEP_EVERY);
        match &mut self.epoll {
            Some((epoll, events)) if !sweep => {
                // Only the ports whose fd polls readable: one epoll_wait instead
                // of one failing read per idle port.
                if epoll.wait(events, 0).unwrap_or(0) > 0 {
                    for (token, _) in events.iter() {
                        if token == WAKE_TOKEN {
                            // A port-table change: seen by the version check.
                            if let Some(Some(waker)) = dp.wakers.get(self.w) {
                                let _ = waker.drain();
                            }
                            continue;
                        }
                        if token == OVERLAY_TOKEN {
                            n += Self::poll_underlay(dp, &env, &mut self.burst, &mut self.scratch);
                            continue;
                        }
                        let Some(port) = table.by_id(PortId(token as u32)) else {
                            continue;
                        };
                        n += Self::poll_port(dp, &env, port, &mut self.burst, &mut self.scratch);
                    }
                }
            }
            _ => {
                for port in table.ports.iter() {
                    n += Self::poll_port(dp, &env, port, &mut self.burst, &mut self.scratch);
                }
                n += Self::poll_underlay(dp, &env, &mut self.burst, &mut self.scratch);
            }
        }
        if self.scratch.saw_gone {
            self.scratch.saw_gone = false;
            dp.wake_housekeeper();
        }
        n
    }

    /// Read up to [`BURST`] frames from `port`'s queue of this worker and
    /// process them (staged). Returns the number read.
    fn poll_port(
        dp: &Datapath,
        env: &Env<'_>,
        port: &Port,
        burst: &mut Burst,
        scratch: &mut Scratch,
    ) -> usize {
        if port.is_gone() {
            return 0;
        }
        let q = &port.queues[env.w];
        let (mut got, mut bytes) = (0, 0);
        while got < BURST && bytes < BURST_BYTES {
            match q.recv(&mut burst.bufs[got]) {
                Ok(Some((len, vnet))) => {
                    burst.meta[got] = (len.min(BUF_LEN), vnet);
                    bytes += len;
                    got += 1;
                }
                Ok(None) => break,
                Err(PortError::Gone { .. }) => {
                    port.gone.store(true, Ordering::Relaxed);
                    scratch.saw_gone = true;
                    break;
                }
                Err(PortError::Io { .. }) => {
                    bump(&env.wc.rx_errors, 1);
                    break;
                }
            }
        }
        if got > 0 {
            // The snapshot is loaded after the burst was read, not once per
            // wake-up: a frame sent after an edit was acknowledged (published)
            // is judged by that edit's rules or newer, even when this worker was
            // descheduled between the wake-up and the read.
            let snap = dp.rules.load();
            let hits = dp.rule_hits_for(env.w, &snap);
            let dir = dp.overlay.as_ref().map(|_| dp.dir.load());
            let cap = dp.capture.load();
            let env = Env {
                snap: &snap,
                hits: &hits,
                overlay: overlay_env(dp, dir.as_ref().map(|d| &***d)),
                capture: capture::of(&cap),
                ..*env
            };
            burst.run(&env, got, |_| port, scratch);
        }
        got
    }

    /// Cluster mode: read up to [`BURST`] datagrams from this worker's underlay
    /// socket and process each ([`overlay::receive`]). Returns the number read.
    fn poll_underlay(
        dp: &Datapath,
        env: &Env<'_>,
        burst: &mut Burst,
        scratch: &mut Scratch,
    ) -> usize {
        let Some(ov) = &dp.overlay else {
            return 0;
        };
        let sock = ov.socks[env.w].as_fd();
        let (mut got, mut bytes) = (0, 0);
        while got < BURST && bytes < BURST_BYTES {
            match sys::udp_recvmsg(sock, &mut burst.bufs[got]) {
                Ok((len, from, seg)) => {
                    burst.meta[got].0 = len.min(BUF_LEN);
                    burst.from[got] = (from, seg);
                    bytes += len;
                    got += 1;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(_) => {
                    // ICMP errors reported on the socket and the like.
                    bump(&env.wc.rx_errors, 1);
                    break;
                }
            }
        }
        if got > 0 {
            // Rules and directory as of after the read (see `poll_port`).
            let snap = dp.rules.load();
            let hits = dp.rule_hits_for(env.w, &snap);
            let dir = dp.dir.load();
            let o = OverlayEnv {
                ov,
                dir: &dir,
                dry: false,
            };
            let cap = dp.capture.load();
            let env = Env {
                snap: &snap,
                hits: &hits,
                overlay: Some(o),
                capture: capture::of(&cap),
                ..*env
            };
            let mut n = 0;
            for i in 0..got {
                let len = burst.meta[i].0;
                let (from, seg) = burst.from[i];
                let buf = &mut burst.bufs[i][..len];
                n += overlay::receive(&env, &o, from, buf, seg.map(usize::from), scratch);
            }
            return n;
        }
        got
    }

    /// Process a burst of frames given directly (benchmarks, tests): each frame is
    /// copied into the receive buffer as `recv` would, then processed as if read
    /// from port `from`. The snapshot, table and clock are loaded once. A frame
    /// naming an unknown port counts as dropped (not in the datapath counters).
    pub fn process_burst<'f>(
        &mut self,
        frames: impl IntoIterator<Item = (PortId, &'f [u8], VnetHdr)>,
    ) -> BurstResult {
        let dp = &*self.dp;
        let snap = dp.rules.load();
        let table = dp.ports.load();
        let dir = dp.overlay.as_ref().map(|_| dp.dir.load());
        let wc = &dp.wcounters[self.w];
        let cap = dp.capture.load();
        let now = dp.now_secs();
        if let Some(r) = self.scratch.flows.as_mut() {
            r.tick(now);
        }
        let hits = dp.rule_hits_for(self.w, &snap);
        let env = Env {
            snap: &snap,
            table: &table,
            ct: &dp.ct,
            net: &dp.net,
            now,
            w: self.w,
            wc,
            hits: &hits,
            overlay: overlay_env(dp, dir.as_ref().map(|d| &***d)),
            capture: capture::of(&cap),
        };
        let mut r = BurstResult::default();
        let mut ports: [Option<&Port>; BURST] = [None; BURST];
        let mut frames = frames.into_iter().peekable();
        while frames.peek().is_some() {
            let mut got = 0;
            for (id, frame, vnet) in frames.by_ref() {
                let Some(port) = table.by_id(id) else {
                    r.dropped += 1;
                    continue;
                };
                let len = frame.len().min(BUF_LEN);
                self.burst.bufs[got][..len].copy_from_slice(&frame[..len]);
                self.burst.meta[got] = (len, vnet);
                ports[got] = Some(&**port);
                got += 1;
                if got == BURST {
                    break;
                }
            }
            let outcomes = self.burst.run(
                &env,
                got,
                |i| ports[i].expect("set for every frame"),
                &mut self.scratch,
            );
            for o in &outcomes[..got] {
                match o {
                    Outcome::Forwarded => r.forwarded += 1,
                    Outcome::Answered => r.answered += 1,
                    Outcome::Consumed => r.consumed += 1,
                    Outcome::Dropped(_) | Outcome::VxlanDropped(_) => r.dropped += 1,
                }
            }
        }
        if self.scratch.saw_gone {
            self.scratch.saw_gone = false;
            dp.wake_housekeeper();
        }
        r
    }

    /// The poll loop: runs until the datapath is stopped.
    pub(crate) fn run(mut self, mode: PollMode) {
        let mut idle = IdleSpin::new();
        while !self.dp.stop.load(Ordering::Acquire) {
            if self.poll_once() > 0 {
                idle.work();
                continue;
            }
            match mode {
                PollMode::Busy => std::hint::spin_loop(),
                PollMode::Adaptive => {
                    if idle.empty(Instant::now()) {
                        std::hint::spin_loop();
                        continue;
                    }
                    // After a park (timeout or event) the next empty poll
                    // parks again at once (no new spin): an idle worker with
                    // fd-less queues polls once per park, not for IDLE_SPIN
                    // each time.
                    self.park();
                    idle.woke(Instant::now());
                }
            }
        }
        // What this worker aggregated since the last interval boundary.
        if let Some(r) = self.scratch.flows.as_mut() {
            r.hand_over();
        }
    }

    /// Flow logs: hand this worker's aggregation table to the logger now
    /// (tests and benchmarks that drive a worker directly).
    pub fn hand_over_flows(&mut self) {
        if let Some(r) = self.scratch.flows.as_mut() {
            r.hand_over();
        }
    }

    /// Bring the epoll set of worker `w` in line with port table `table`.
    fn sync_epoll(
        w: usize,
        table: &PortTable,
        epoll: &Option<(Epoll, EpollEvents)>,
        registered: &mut HashMap<RawFd, PortId>,
        fdless_queues: &mut bool,
    ) {
        let Some((epoll, _)) = epoll else {
            return;
        };
        let mut want: HashMap<RawFd, PortId> = HashMap::with_capacity(table.ports.len());
        let mut fdless = false;
        for p in table.ports.iter().filter(|p| !p.is_gone()) {
            match p.queues[w].poll_fd() {
                Some(fd) => {
                    want.insert(fd, p.id);
                }
                None => fdless = true,
            }
        }
        // Drop registrations of ports that left (their fd may already be closed,
        // which removed it from the set: errors are expected and ignored), and
        // re-register fd numbers now used by another port.
        for (fd, id) in registered.iter() {
            if want.get(fd) != Some(id) {
                let _ = epoll.del(*fd);
            }
        }
        for (fd, id) in &want {
            if registered.get(fd) != Some(id) {
                let _ = epoll.add(*fd, EPOLLIN, u64::from(id.0));
            }
        }
        *registered = want;
        *fdless_queues = fdless;
    }

    /// Wait for work (adaptive mode).
    /// Returns whether an fd became ready (rather than the timeout expiring).
    fn park(&mut self) -> bool {
        let table = self.dp.ports.load_full();
        if table.version != self.synced_version {
            Self::sync_epoll(
                self.w,
                &table,
                &self.epoll,
                &mut self.registered,
                &mut self.fdless_queues,
            );
            self.synced_version = table.version;
        }
        bump(&self.dp.wcounters[self.w].parks, 1);
        let timeout = if self.fdless_queues {
            SHORT_PARK_MS
        } else {
            LONG_PARK_MS
        };
        match &mut self.epoll {
            Some((epoll, events)) => {
                let ready = epoll.wait(events, timeout).unwrap_or(0) > 0;
                let woken = ready && events.iter().any(|(t, _)| t == WAKE_TOKEN);
                if let (true, Some(Some(waker))) = (woken, self.dp.wakers.get(self.w)) {
                    let _ = waker.drain();
                }
                ready
            }
            None => {
                std::thread::sleep(Duration::from_millis(SHORT_PARK_MS as u64));
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;
    use std::os::unix::net::UnixDatagram;

    use filter::compile::Compiler;
    use filter::model::{Instance, Limits, Model, Owner, RuleSpec};
    use filter::{Mac, compile};

    use crate::RuleTotals;

    use super::*;
    use crate::port::PortQueue;
    use crate::{MemOptions, MemPeer, PortRole, PortSpec, SwitchConfig, mem_port_with};

    const OWNER: &str = "111122223333";

    #[test]
    fn idle_spin_only_after_a_gap_a_spin_would_have_caught() {
        let t0 = Instant::now();
        let at = |us: u64| t0 + Duration::from_micros(us);
        let mut s = IdleSpin::new();
        assert!(s.spins(), "a new worker spins");
        // Nothing for 60 us: spins until IDLE_SPIN, then parks; woken at 300 us.
        assert!(s.empty(at(0)));
        assert!(s.empty(at(30)));
        assert!(!s.empty(at(60)), "spun IDLE_SPIN: park");
        s.woke(at(300));
        s.work();
        assert!(!s.spins(), "a 300 us gap: the spin would have missed it");
        // Parks at once now; woken 10 us later: the next stretch spins again.
        assert!(!s.empty(at(400)), "no spin after a long gap");
        s.woke(at(410));
        s.work();
        assert!(s.spins(), "a 10 us gap: a spin would have caught it");
        // A frame 20 us into the spin keeps spinning on.
        assert!(s.empty(at(500)));
        assert!(s.empty(at(520)));
        s.work();
        assert!(s.spins());
        // Work without an empty poll in between changes nothing.
        s.work();
        assert!(s.spins());
    }

    /// A port queue on one end of a datagram socket pair: it has an fd that
    /// polls readable like a TAP's (so the worker takes the epoll path), and
    /// needs no root. The test holds the other end.
    struct SockQueue(UnixDatagram);

    impl PortQueue for SockQueue {
        fn recv(&self, buf: &mut [u8]) -> Result<Option<(usize, VnetHdr)>, PortError> {
            match self.0.recv(buf) {
                Ok(n) => Ok(Some((n, VnetHdr::default()))),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(None),
                Err(source) => Err(PortError::Io {
                    port: "sock".into(),
                    source,
                }),
            }
        }

        fn send(&self, frame: &[u8], _vnet: &VnetHdr) -> Result<(), PortError> {
            self.0
                .send(frame)
                .map(drop)
                .map_err(|source| PortError::Io {
                    port: "sock".into(),
                    source,
                })
        }

        fn offloads(&self) -> bool {
            false
        }

        fn poll_fd(&self) -> Option<RawFd> {
            Some(self.0.as_raw_fd())
        }
    }

    /// A [`SockQueue`] that says, when dropped (closed), on which thread.
    struct Closing(SockQueue, std::sync::mpsc::Sender<Option<String>>);

    impl PortQueue for Closing {
        fn recv(&self, buf: &mut [u8]) -> Result<Option<(usize, VnetHdr)>, PortError> {
            self.0.recv(buf)
        }

        fn send(&self, frame: &[u8], vnet: &VnetHdr) -> Result<(), PortError> {
            self.0.send(frame, vnet)
        }

        fn offloads(&self) -> bool {
            false
        }

        fn poll_fd(&self) -> Option<RawFd> {
            self.0.poll_fd()
        }
    }

    impl Drop for Closing {
        fn drop(&mut self) {
            let _ = self
                .1
                .send(std::thread::current().name().map(str::to_owned));
        }
    }

    /// Closing a TAP queue can wait milliseconds in the kernel (RTNL, an RCU
    /// grace period), so a removed port's queues are closed by the
    /// housekeeper, never by a worker (nor by the control plane's caller),
    /// whether or not a worker was using the port when it was removed.
    #[test]
    fn a_removed_ports_queues_are_closed_by_the_housekeeper() {
        let sw = crate::Switch::start(SwitchConfig {
            workers: 1,
            ct: filter::CtConfig::with_capacity(1 << 12),
            ..SwitchConfig::default()
        })
        .expect("switch");
        sw.publish_rules(compile(&model(2), 1));
        let (peer_ours, peer_theirs) = UnixDatagram::pair().expect("socketpair");
        peer_theirs.set_nonblocking(true).expect("nonblocking");
        sw.add_port(PortSpec {
            name: "peer".into(),
            role: role(11),
            queues: vec![Box::new(SockQueue(peer_theirs))],
        })
        .expect("peer");
        let (tx, rx) = std::sync::mpsc::channel();
        for round in 0..20u16 {
            let (ours, theirs) = UnixDatagram::pair().expect("socketpair");
            theirs.set_nonblocking(true).expect("nonblocking");
            let id = sw
                .add_port(PortSpec {
                    name: format!("closing{round}"),
                    role: role(10),
                    queues: vec![Box::new(Closing(SockQueue(theirs), tx.clone()))],
                })
                .expect("port");
            // Busy or parked: every other round the worker has just
            // forwarded a frame from the port when it is removed.
            if round % 2 == 0 {
                ours.send(&udp(10, 11, 4000 + round)).expect("send");
                let mut buf = [0u8; 2048];
                peer_ours
                    .set_read_timeout(Some(Duration::from_secs(5)))
                    .expect("timeout");
                peer_ours.recv(&mut buf).expect("forwarded");
            }
            sw.remove_port(id).expect("remove");
            let closed_on = rx
                .recv_timeout(Duration::from_secs(5))
                .expect("closed within 5 s");
            assert_eq!(
                closed_on.as_deref(),
                Some("sgsw-housekeeper"),
                "round {round}"
            );
        }
        sw.shutdown();
    }

    fn mac(n: u8) -> Mac {
        [0x02, 0, 0, 0, 0, n]
    }

    fn ip(n: u8) -> Ipv4Addr {
        Ipv4Addr::new(172, 31, 0, n)
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
                id: format!("i-{k:08x}"),
                owner: owner.clone(),
                mac: mac(k),
                ip: ip(k),
                groups: vec!["g".into()],
            })
            .expect("instance");
        }
        m
    }

    fn udp(src: u8, dst: u8, sport: u16) -> Vec<u8> {
        let mut v = Vec::new();
        etherparse::PacketBuilder::ethernet2(mac(src), mac(dst))
            .ipv4(ip(src).octets(), ip(dst).octets(), 64)
            .udp(sport, 53)
            .write(&mut v, &[7u8; 18])
            .expect("udp");
        v
    }

    fn role(k: u8) -> PortRole {
        PortRole::Instance {
            id: format!("i-{k:08x}"),
            mac: mac(k),
            ip: ip(k),
        }
    }

    fn datapath(n: u8) -> Arc<Datapath> {
        let dp = Datapath::new(SwitchConfig {
            workers: 1,
            ct: filter::CtConfig::with_capacity(1 << 12),
            ..SwitchConfig::default()
        })
        .expect("datapath");
        dp.publish_rules(compile(&model(n), 1));
        dp
    }

    /// Adds instance `k` on a socket-pair port; returns its id and our end.
    fn sock_port(dp: &Datapath, k: u8) -> (PortId, UnixDatagram) {
        let (ours, theirs) = UnixDatagram::pair().expect("socketpair");
        theirs.set_nonblocking(true).expect("nonblocking");
        ours.set_nonblocking(true).expect("nonblocking");
        let id = dp
            .add_port(PortSpec {
                name: format!("sock{k}"),
                role: role(k),
                queues: vec![Box::new(SockQueue(theirs))],
            })
            .expect("port");
        (id, ours)
    }

    fn received(sock: &UnixDatagram) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut buf = [0u8; 2048];
        while let Ok(n) = sock.recv(&mut buf) {
            out.push(buf[..n].to_vec());
        }
        out
    }

    #[test]
    fn epoll_readiness_finds_ready_ports_and_follows_table_changes() {
        let dp = datapath(8);
        let mut ends: Vec<(PortId, UnixDatagram)> = (10..15).map(|k| sock_port(&dp, k)).collect();
        let mut w = dp.worker(0);
        assert_eq!(w.poll_once(), 0, "nothing sent yet");
        // Five fd-backed ports: the worker reads the ones epoll reports.
        assert!(!w.fdless_queues);
        assert_eq!(w.registered.len(), 5);
        let frame = udp(13, 11, 4000);
        ends[3].1.send(&frame).expect("send");
        // Not a full-sweep round: the frame is found through epoll alone.
        assert!(!(w.rounds + 1).is_multiple_of(FULL_SWEEP_EVERY));
        assert_eq!(w.poll_once(), 1);
        let got = received(&ends[1].1);
        assert_eq!(got.len(), 1, "forwarded to instance 11");
        assert_eq!(got[0][12..], frame[12..], "only the MACs may be rewritten");
        // A port added later is registered at the next wake-up and read at once.
        let (id15, s15) = sock_port(&dp, 15);
        ends.push((id15, s15));
        for sport in [5000, 5001, 5002] {
            ends[5].1.send(&udp(15, 10, sport)).expect("send");
        }
        assert_eq!(w.poll_once(), 3);
        assert_eq!(w.registered.len(), 6);
        let got = received(&ends[0].1);
        let sports: Vec<u16> = got
            .iter()
            .map(|f| u16::from_be_bytes([f[34], f[35]]))
            .collect();
        assert_eq!(sports, [5000, 5001, 5002], "in order");
        // A removed port leaves the epoll set.
        dp.remove_port(ends[2].0).expect("remove");
        w.poll_once();
        assert_eq!(w.registered.len(), 5);
        assert!(!w.registered.values().any(|id| *id == ends[2].0));
        let st = dp.stats();
        assert_eq!(
            st.total_drops(),
            0,
            "{:?}",
            st.nonzero_drops().collect::<Vec<_>>()
        );
    }

    fn mem_instance(dp: &Datapath, k: u8) -> (PortId, MemPeer) {
        let (queues, peer) = mem_port_with(1, MemOptions::default());
        let id = dp
            .add_port(PortSpec {
                name: format!("mem{k}"),
                role: role(k),
                queues,
            })
            .expect("port");
        (id, peer)
    }

    /// A port with a backlog of 64 KiB super-frames gives up its turn after
    /// BURST_BYTES (two of them), so a small frame waiting on another port
    /// is read in the same wake-up; small frames still come BURST at a time.
    #[test]
    fn a_burst_ends_at_burst_bytes_so_other_ports_wait_one_short_turn() {
        let dp = datapath(3);
        let (_, bulk) = mem_instance(&dp, 10);
        let (_, small) = mem_instance(&dp, 11);
        let mut w = dp.worker(0);
        let mut big = udp(10, 12, 7000);
        big.resize(64 << 10, 0);
        for _ in 0..8 {
            bulk.inject(0, &big, VnetHdr::default()).expect("inject");
        }
        for sport in 0..40u16 {
            small
                .inject(0, &udp(11, 12, 8000 + sport), VnetHdr::default())
                .expect("inject");
        }
        let per_big = BURST_BYTES.div_ceil(big.len());
        assert_eq!(per_big, 2);
        assert_eq!(
            w.poll_once(),
            per_big + BURST,
            "two super-frames, a full small burst"
        );
        assert_eq!(
            bulk.pending_rx(),
            8 - per_big,
            "the rest waits for the next turn"
        );
        assert_eq!(small.pending_rx(), 40 - BURST);
        assert_eq!(w.poll_once(), per_big + (40 - BURST));
        assert_eq!(bulk.pending_rx(), 8 - 2 * per_big);
        assert_eq!(small.pending_rx(), 0);
    }

    #[test]
    fn rule_hits_count_rule_decisions_per_worker_and_survive_other_edits() {
        let dp = datapath(3);
        let (_, a) = mem_instance(&dp, 10);
        let (_, b) = mem_instance(&dp, 11);
        let mut w = dp.worker(0);
        let frame = udp(10, 11, 1000);
        let len = frame.len() as u64;
        // 5 new flows, then 3 more packets of the first: 5 packets and flows
        // on the rule, the rest by state; a probe of another port: no rule.
        for sport in 0..5u16 {
            a.inject(0, &udp(10, 11, 1000 + sport), VnetHdr::default())
                .expect("inject");
        }
        for _ in 0..3 {
            a.inject(0, &frame, VnetHdr::default()).expect("inject");
        }
        let mut probe = udp(10, 11, 999);
        probe[37] = 54; // destination port 54
        a.inject(0, &probe, VnetHdr::default()).expect("inject");
        w.poll_once();
        assert_eq!(b.take().len(), 8);
        let m = model(3);
        let c = Compiler::new(&m);
        let slot = c
            .rule_slot(&Owner(OWNER.into()), "g", 0)
            .expect("slot")
            .index();
        let (layout, hits) = dp.rule_hits();
        let slots = layout.len();
        let want = RuleTotals {
            packets: 5,
            bytes: 5 * len,
            flows: 5,
        };
        assert_eq!(hits[slot], want);
        // A rule added in another group (new layout): the counts stay.
        let mut m2 = m.clone();
        m2.record_changes();
        let owner = Owner(OWNER.into());
        m2.add_group(&owner, "h", "other").expect("group");
        let spec = RuleSpec {
            proto: Some("tcp".into()),
            ports: Some("22".into()),
            cidrs: vec!["0.0.0.0/0".into()],
            ..RuleSpec::default()
        };
        m2.authorize(&owner, "h", &spec).expect("rule");
        let mut c2 = c.clone();
        let ch = m2.take_changes();
        c2.apply(&m2, &ch);
        dp.publish_rules(c2.snapshot(2));
        w.poll_once();
        let (layout, hits) = dp.rule_hits();
        assert_eq!(layout.len(), slots + 1);
        assert_eq!(hits[slot], want);
        // Revoked: its counts go with it.
        let mut m3 = m2.clone();
        m3.record_changes();
        m3.revoke(
            &owner,
            "g",
            &RuleSpec {
                proto: Some("udp".into()),
                ports: Some("53".into()),
                cidrs: vec!["172.31.0.0/16".into()],
                ..RuleSpec::default()
            },
        )
        .expect("revoke");
        let ch = m3.take_changes();
        c2.apply(&m3, &ch);
        dp.publish_rules(c2.snapshot(3));
        w.poll_once();
        let (_, hits) = dp.rule_hits();
        assert_eq!(hits[slot], RuleTotals::default());
    }

    /// Authorize (`add`) or revoke TCP port `port` in group `h`, apply it
    /// to `c` incrementally: a new rule-slot layout.
    fn edit_h(m: &mut Model, c: &mut Compiler, port: u16, add: bool) {
        let owner = Owner(OWNER.into());
        m.record_changes();
        if m.group(&owner, "h").is_err() {
            m.add_group(&owner, "h", "other").expect("group");
        }
        let spec = RuleSpec {
            proto: Some("tcp".into()),
            ports: Some(port.to_string()),
            cidrs: vec!["0.0.0.0/0".into()],
            ..RuleSpec::default()
        };
        if add {
            m.authorize(&owner, "h", &spec).expect("authorize");
        } else {
            m.revoke(&owner, "h", &spec).expect("revoke");
        }
        let ch = m.take_changes();
        c.apply(m, &ch);
    }

    /// Two in-memory instances (10 → 11) of `model(3)`, worker 0, the
    /// compiler, the slot of group g's first rule and a probe's length.
    struct HitsLab {
        dp: Arc<Datapath>,
        a: MemPeer,
        b: MemPeer,
        w: Worker,
        m: Model,
        c: Compiler,
        rule: filter::compile::RuleSlot,
        len: u64,
    }

    fn hits_lab() -> HitsLab {
        let dp = datapath(3);
        let (_, a) = mem_instance(&dp, 10);
        let (_, b) = mem_instance(&dp, 11);
        let w = dp.worker(0);
        let m = model(3);
        let c = Compiler::new(&m);
        let rule = c.rule_slot(&Owner(OWNER.into()), "g", 0).expect("slot");
        let len = udp(10, 11, 0).len() as u64;
        HitsLab {
            dp,
            a,
            b,
            w,
            m,
            c,
            rule,
            len,
        }
    }

    #[test]
    fn rule_hit_blocks_are_prepared_off_the_worker_and_counts_survive_quick_publishes() {
        let mut lab = hits_lab();
        let slot = lab.rule.index();
        let (mut sent, mut sport, mut version) = (0u64, 2000u16, 2u64);
        for i in 0..60u16 {
            // Every publish a new layout: a rule added in another group, the
            // one before it revoked.
            edit_h(&mut lab.m, &mut lab.c, 1000 + i / 2, i % 2 == 0);
            let snap = lab.c.snapshot(version);
            version += 1;
            lab.dp.publish_rules(snap);
            if i % 3 == 2 {
                // Two publishes with no burst between them.
                continue;
            }
            for _ in 0..u64::from(i % 3 + 1) {
                lab.a
                    .inject(0, &udp(10, 11, sport), VnetHdr::default())
                    .expect("inject");
                sport += 1;
                sent += 1;
            }
            lab.w.poll_once();
            assert_eq!(lab.b.take().len() as u64, u64::from(i % 3 + 1));
            assert!(lab.dp.rule_hits_unfolded(0) <= 2, "left blocks are folded");
            if i % 4 == 0 {
                let (_, hits) = lab.dp.rule_hits();
                assert_eq!(hits[slot].flows, sent, "after publish {i}");
            }
        }
        let (layout, hits) = lab.dp.rule_hits();
        assert_eq!(
            hits[slot],
            RuleTotals {
                packets: sent,
                bytes: sent * lab.len,
                flows: sent
            }
        );
        let others: u64 = hits.iter().map(|h| h.packets).sum::<u64>() - sent;
        assert_eq!(others, 0, "nothing counted twice or elsewhere");
        assert!(layout.len() > slot);
        assert_eq!(
            lab.dp.rule_hit_fallbacks(),
            0,
            "no block built on the worker"
        );
    }

    #[test]
    fn a_superseded_layout_falls_back_once_and_loses_no_count() {
        let mut lab = hits_lab();
        for sport in 0..2 {
            lab.a
                .inject(0, &udp(10, 11, 3000 + sport), VnetHdr::default())
                .expect("inject");
        }
        lab.w.poll_once();
        edit_h(&mut lab.m, &mut lab.c, 22, true);
        let stale = lab.c.snapshot(2);
        lab.dp.publish_rules(lab.c.snapshot(2));
        edit_h(&mut lab.m, &mut lab.c, 23, true);
        lab.dp.publish_rules(lab.c.snapshot(3));
        // A worker that loaded snapshot 2 before 3 replaced its block.
        lab.dp.rule_hits_for(0, &stale).count(lab.rule, 100, true);
        assert_eq!(lab.dp.rule_hit_fallbacks(), 1);
        for sport in 0..3 {
            lab.a
                .inject(0, &udp(10, 11, 3100 + sport), VnetHdr::default())
                .expect("inject");
        }
        lab.w.poll_once();
        assert_eq!(lab.b.take().len(), 5);
        assert_eq!(
            lab.dp.rule_hit_fallbacks(),
            1,
            "snapshot 3's block was ready"
        );
        let (_, hits) = lab.dp.rule_hits();
        assert_eq!(
            hits[lab.rule.index()],
            RuleTotals {
                packets: 6,
                bytes: 5 * lab.len + 100,
                flows: 6
            }
        );
    }

    #[test]
    fn staged_bursts_keep_order_and_count_every_frame() {
        let dp = datapath(3);
        let (_, a) = mem_instance(&dp, 10);
        let (b_id, b) = mem_instance(&dp, 11);
        let mut w = dp.worker(0);
        for sport in 0..40u16 {
            a.inject(0, &udp(10, 11, 1000 + sport), VnetHdr::default())
                .expect("inject");
        }
        // One burst per port per wake-up.
        assert_eq!(w.poll_once(), BURST);
        assert_eq!(w.poll_once(), 40 - BURST);
        assert_eq!(w.poll_once(), 0);
        let sports: Vec<u16> = b
            .take()
            .iter()
            .map(|f| u16::from_be_bytes([f.data[34], f.data[35]]))
            .collect();
        assert_eq!(sports, (1000..1040).collect::<Vec<_>>());

        // process_burst: more than a burst, mixed sources, an unknown port and
        // a spoofed frame.
        let frames: Vec<(PortId, Vec<u8>)> = (0..70u16)
            .map(|i| match i {
                5 => (PortId(9999), udp(10, 11, 1)),
                40 => (b_id, udp(12, 10, 2)),
                _ => (b_id, udp(11, 10, 3000 + i)),
            })
            .collect();
        let r = w.process_burst(
            frames
                .iter()
                .map(|(id, f)| (*id, f.as_slice(), VnetHdr::default())),
        );
        assert_eq!(
            r,
            BurstResult {
                forwarded: 68,
                answered: 0,
                consumed: 0,
                dropped: 2
            }
        );
        assert_eq!(a.take().len(), 68);
        assert_eq!(dp.stats().drop_count(DropReason::SpoofedMac), 1);
    }
}
