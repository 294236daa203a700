//! Worker poll loops: one thread per worker, each reading bursts from its own
//! queue of every port and running the [`crate::pipeline`] on every frame.
//!
//! Contract:
//! * Worker `w` only touches queue `w` of each port, its own buffers (a receive
//!   buffer of [`BUF_LEN`] bytes and a scratch buffer of the same size, allocated
//!   once) and its own counters: nothing mutable is shared between workers.
//! * Per wake-up ([`Worker::poll_once`]) it loads the rule snapshot and the port
//!   table once (arc-swap, no lock) and reads the coarse clock once, then reads up
//!   to [`BURST`] frames from each port.
//! * [`PollMode::Busy`] spins forever. [`PollMode::Adaptive`] spins while there is
//!   work and for [`IDLE_SPIN`] after the last frame, then parks in `epoll_wait`
//!   over the poll fds of its queues plus its eventfd (signalled on port-table
//!   changes and shutdown). Queues without an fd (in-memory ports) make it park
//!   with a [`SHORT_PARK_MS`] timeout instead of a long one.
//! * A queue that reports `PortError::Gone` sets the port's tombstone; the worker
//!   skips it from then on and wakes the housekeeper, which removes the port.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::config::PollMode;
use crate::counters::bump;
use crate::pipeline::{BUF_LEN, BURST, Env, Outcome, Scratch, process};
use crate::port::{PortError, VnetHdr};
use crate::sys::{EPOLLIN, Epoll, EpollEvents};
use crate::{Datapath, PortId};

/// How long an adaptive worker keeps spinning after its last frame.
pub const IDLE_SPIN: Duration = Duration::from_micros(50);
/// Park timeout when some queue cannot be polled by fd (in-memory ports).
pub const SHORT_PARK_MS: i32 = 1;
/// Park timeout when every queue has an fd: the eventfd wakes the worker for
/// everything else, this only bounds the staleness of housekeeping.
pub const LONG_PARK_MS: i32 = 500;

/// Epoll token of the worker's eventfd.
const WAKE_TOKEN: u64 = u64::MAX;

/// How the frames of one [`Worker::process_burst`] ended.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BurstResult {
    pub forwarded: usize,
    pub answered: usize,
    pub consumed: usize,
    pub dropped: usize,
}

/// One worker's state. Built by [`Datapath::worker`].
pub struct Worker {
    dp: Arc<Datapath>,
    w: usize,
    rx: Box<[u8]>,
    scratch: Scratch,
    /// Port-table version the epoll set was last synchronised with.
    synced_version: u64,
    /// fd → port id registered in the epoll set.
    registered: HashMap<RawFd, PortId>,
    fdless_queues: bool,
    epoll: Option<(Epoll, EpollEvents)>,
}

impl Worker {
    pub(crate) fn new(dp: Arc<Datapath>, w: usize) -> Worker {
        let epoll = Epoll::new().ok().and_then(|e| {
            let waker = dp.wakers.get(w)?.as_ref()?;
            e.add(waker.as_raw_fd(), EPOLLIN, WAKE_TOKEN).ok()?;
            Some((e, EpollEvents::with_capacity(64)))
        });
        Worker {
            dp,
            w,
            rx: vec![0u8; BUF_LEN].into_boxed_slice(),
            scratch: Scratch::default(),
            synced_version: u64::MAX,
            registered: HashMap::new(),
            fdless_queues: true,
            epoll,
        }
    }

    /// This worker's index.
    pub fn index(&self) -> usize {
        self.w
    }

    /// One wake-up: read a burst from every port and process it. Returns the
    /// number of frames read.
    pub fn poll_once(&mut self) -> usize {
        let dp = &*self.dp;
        let snap = dp.rules.load();
        let table = dp.ports.load();
        let wc = &dp.wcounters[self.w];
        let env = Env {
            snap: &snap,
            table: &table,
            ct: &dp.ct,
            net: &dp.net,
            now: dp.now_secs(),
            w: self.w,
            wc,
        };
        let mut n = 0;
        for port in table.ports.iter() {
            if port.is_gone() {
                continue;
            }
            let q = &port.queues[self.w];
            for _ in 0..BURST {
                match q.recv(&mut self.rx) {
                    Ok(Some((len, vnet))) => {
                        let len = len.min(self.rx.len());
                        process(&env, port, &mut self.rx[..len], &vnet, &mut self.scratch);
                        n += 1;
                    }
                    Ok(None) => break,
                    Err(PortError::Gone { .. }) => {
                        port.gone.store(true, Ordering::Relaxed);
                        self.scratch.saw_gone = true;
                        break;
                    }
                    Err(PortError::Io { .. }) => {
                        bump(&wc.rx_errors, 1);
                        break;
                    }
                }
            }
        }
        if self.scratch.saw_gone {
            self.scratch.saw_gone = false;
            dp.wake_housekeeper();
        }
        n
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
        let wc = &dp.wcounters[self.w];
        let env = Env {
            snap: &snap,
            table: &table,
            ct: &dp.ct,
            net: &dp.net,
            now: dp.now_secs(),
            w: self.w,
            wc,
        };
        let mut r = BurstResult::default();
        for (id, frame, vnet) in frames {
            let Some(port) = table.by_id(id) else {
                r.dropped += 1;
                continue;
            };
            let len = frame.len().min(self.rx.len());
            self.rx[..len].copy_from_slice(&frame[..len]);
            match process(&env, port, &mut self.rx[..len], &vnet, &mut self.scratch) {
                Outcome::Forwarded => r.forwarded += 1,
                Outcome::Answered => r.answered += 1,
                Outcome::Consumed => r.consumed += 1,
                Outcome::Dropped(_) => r.dropped += 1,
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
        let mut idle_since: Option<Instant> = None;
        while !self.dp.stop.load(Ordering::Acquire) {
            if self.poll_once() > 0 {
                idle_since = None;
                continue;
            }
            match mode {
                PollMode::Busy => std::hint::spin_loop(),
                PollMode::Adaptive => {
                    let since = *idle_since.get_or_insert_with(Instant::now);
                    if since.elapsed() < IDLE_SPIN {
                        std::hint::spin_loop();
                        continue;
                    }
                    // After a timeout with no event, the next empty poll parks
                    // again at once (no new spin): an idle worker with fd-less
                    // queues polls once per park, not for IDLE_SPIN each time.
                    if self.park() {
                        idle_since = None;
                    }
                }
            }
        }
    }

    /// Bring the epoll set in line with the current port table.
    fn sync_epoll(&mut self) {
        let version = self.dp.ports.load().version;
        if version == self.synced_version {
            return;
        }
        let Some((epoll, _)) = &self.epoll else {
            return;
        };
        let table = self.dp.ports.load_full();
        let mut want: HashMap<RawFd, PortId> = HashMap::with_capacity(table.ports.len());
        let mut fdless = false;
        for p in table.ports.iter().filter(|p| !p.is_gone()) {
            match p.queues[self.w].poll_fd() {
                Some(fd) => {
                    want.insert(fd, p.id);
                }
                None => fdless = true,
            }
        }
        // Drop registrations of ports that left (their fd may already be closed,
        // which removed it from the set: errors are expected and ignored), and
        // re-register fd numbers now used by another port.
        for (fd, id) in &self.registered {
            if want.get(fd) != Some(id) {
                let _ = epoll.del(*fd);
            }
        }
        for (fd, id) in &want {
            if self.registered.get(fd) != Some(id) {
                let _ = epoll.add(*fd, EPOLLIN, u64::from(id.0));
            }
        }
        self.registered = want;
        self.fdless_queues = fdless;
        self.synced_version = version;
    }

    /// Wait for work (adaptive mode).
    /// Returns whether an fd became ready (rather than the timeout expiring).
    fn park(&mut self) -> bool {
        self.sync_epoll();
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
