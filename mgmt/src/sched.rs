//! Scheduling of the edit path (issue 13): the threads a rule edit runs on
//! in the daemon — the API (or EC2 API) connection's thread, which reads the
//! request and applies and publishes it (`daemon::MgmtHandle::call`), and
//! the management thread, which does a launch's second step and the ticks —
//! run ahead of ordinary threads, so an edit is not left waiting behind busy
//! ones (the forwarding worker, the guests, the endpoints' own load, builds)
//! when it wakes them.
//!
//! `sgswitch up --edit-priority`:
//! * `fifo` (default): `SCHED_FIFO` at priority [`FIFO_PRIORITY`] (the lowest
//!   real-time one), or one above it beside `fifo` workers
//!   ([`edit_fifo_priority`]): such a thread runs as soon as it wakes. Both threads
//!   block between requests and do bounded work per request (a request line
//!   is capped, an edit costs what it changes), and the kernel's real-time
//!   budget (`sched_rt_runtime_us`, 95 % by default) bounds them anyway.
//!   Processes started from them (QEMU, helpers) are reset to normal
//!   scheduling (`SCHED_RESET_ON_FORK`).
//! * `nice`: normal scheduling at nice [`NICE`] (when `SCHED_FIFO` is
//!   refused, e.g. without `CAP_SYS_NICE` or with no real-time budget in the
//!   daemon's cgroup, `fifo` falls back to this, with a warning).
//! * `normal`: as any thread (the behaviour before).
//!
//! Each kind of refusal is logged once as a warning; the thread then runs on
//! as it was.
//!
//! `sgswitch up --worker-priority` ([`WorkerPriority`]) does the same for
//! the forwarding workers (`switch::SwitchConfig::worker_fifo`): `fifo` runs
//! them at `SCHED_FIFO` [`FIFO_PRIORITY`], so a frame does not wait for its
//! worker's turn behind normal threads. The edit path then runs one above
//! them: at equal priority a woken connection thread queued behind a busy
//! worker until it blocked (0.1-0.5 ms, seen in `perf sched` traces), while
//! one above it runs at the worker's next return from a system call. The
//! edit path's own slow part, the store commit after the publish, steps
//! down to the workers' priority ([`ordinary`]), so it never keeps a worker
//! off its core while the new rules' first frames wait (measured:
//! docs/benchmarks.md, "The enforced tail, seventh pass"; the fourth pass
//! had tried one above with the commit at normal priority, and launches'
//! commits then slowed the edits). Workers block in `epoll_wait` between
//! bursts (adaptive polling; `--poll busy` with `fifo` is refused: a
//! spinning real-time thread would starve its core).
//!
//! Launches: making an instance's namespace and its TAP runs on helper
//! threads (`switch::netns`) whose system calls hold a CPU in the kernel for
//! up to ~1.6 ms (`unshare(CLONE_NEWNET)`), and on a kernel without full
//! preemption a real-time thread woken on that CPU waits for all of it:
//! the scheduler moves it elsewhere only when the CPU runs a real-time
//! thread of at least its priority. With a `fifo` edit path and `fifo`
//! workers those helpers therefore run at `SCHED_FIFO`
//! [`LAUNCH_FIFO_PRIORITY`], the edit path's priority and one above the
//! workers, which are then woken on another CPU ([`launch_priority`]; measured: docs/benchmarks.md, "The enforced
//! tail, sixth pass"). Beside normal workers they stay normal: there a
//! real-time helper would preempt the worker instead. The launcher threads
//! themselves, and what they start (QEMU), stay normal.
//!
//! Workers at normal priority (`--worker-priority normal`, the default) are
//! preempted by a real-time edit path wherever they meet it; after the
//! publish the committing thread therefore writes to the store as an
//! ordinary thread ([`ordinary`]), and a request that arrives meanwhile makes
//! it real-time again at once ([`hurry`]). Measured: docs/benchmarks.md,
//! "The enforced tail, fourth pass".

use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU8, Ordering};

/// Real-time priority of the edit path under `fifo`, and of `fifo` workers
/// (1: the lowest).
pub const FIFO_PRIORITY: i32 = 1;
/// Real-time priority of a launch's namespace work beside a `fifo` edit
/// path and `fifo` workers (the edit path's then, one above the workers;
/// see [`launch_priority`]).
pub const LAUNCH_FIFO_PRIORITY: i32 = FIFO_PRIORITY + 1;
/// Nice value of the edit path under `nice` (and `fifo`'s fallback).
pub const NICE: i32 = -10;

/// How the edit path's threads are scheduled (`up --edit-priority`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum EditPriority {
    /// `SCHED_FIFO`, lowest real-time priority (falls back to `nice`).
    #[default]
    Fifo,
    /// Normal scheduling at nice -10.
    Nice,
    /// Normal scheduling at the process's nice value.
    Normal,
}

/// The workers run at `SCHED_FIFO` (`--worker-priority fifo`): the edit path
/// runs one above them ([`edit_fifo_priority`]) and [`ordinary`] steps down
/// to their priority.
static WORKERS_FIFO: AtomicBool = AtomicBool::new(false);

/// Tells [`ordinary`] how the workers are scheduled (the daemon, at start).
pub fn choose_workers(p: WorkerPriority) {
    WORKERS_FIFO.store(p == WorkerPriority::Fifo, Ordering::Relaxed);
    set_launch_priority();
}

/// The real-time priority of a launch's namespace work
/// ([`switch::netns::set_helper_fifo`]): [`LAUNCH_FIFO_PRIORITY`] when the
/// edit path and the workers are both `fifo`, so the scheduler wakes them
/// on another CPU; none otherwise, since a real-time helper would then
/// preempt the normal workers instead (measured: docs/benchmarks.md, "The
/// enforced tail, sixth pass").
pub fn launch_priority(edit: EditPriority, workers: WorkerPriority) -> Option<i32> {
    (edit == EditPriority::Fifo && workers == WorkerPriority::Fifo).then_some(LAUNCH_FIFO_PRIORITY)
}

/// The edit path's real-time priority under `fifo`: one above `fifo`
/// workers ([`FIFO_PRIORITY`] + 1), else [`FIFO_PRIORITY`]. Read when a
/// thread starts ([`apply`]), after the daemon's [`choose_workers`].
pub fn edit_fifo_priority() -> i32 {
    if WORKERS_FIFO.load(Ordering::Relaxed) {
        FIFO_PRIORITY + 1
    } else {
        FIFO_PRIORITY
    }
}

/// Applies [`launch_priority`] of the current choices.
fn set_launch_priority() {
    let workers = if WORKERS_FIFO.load(Ordering::Relaxed) {
        WorkerPriority::Fifo
    } else {
        WorkerPriority::Normal
    };
    switch::netns::set_helper_fifo(launch_priority(chosen(), workers));
}

/// The daemon's choice; threads read it when they start ([`apply`]).
static CHOSEN: AtomicU8 = AtomicU8::new(EditPriority::Normal as u8);
/// A refusal of `SCHED_FIFO`, of the nice value, was logged already.
static WARNED_FIFO: AtomicBool = AtomicBool::new(false);
static WARNED: AtomicBool = AtomicBool::new(false);

/// Sets the priority [`apply`] gives the edit path's threads from now on
/// (the daemon, at start; outside a daemon it stays `normal`), and the
/// priority of launches' namespace work that goes with it
/// ([`launch_priority`]).
pub fn choose(p: EditPriority) {
    CHOSEN.store(p as u8, Ordering::Relaxed);
    set_launch_priority();
}

/// The current choice.
pub fn chosen() -> EditPriority {
    match CHOSEN.load(Ordering::Relaxed) {
        x if x == EditPriority::Fifo as u8 => EditPriority::Fifo,
        x if x == EditPriority::Nice as u8 => EditPriority::Nice,
        _ => EditPriority::Normal,
    }
}

/// Gives the calling thread (`what`, for the log) the chosen priority.
/// Returns what it got.
pub fn apply(what: &str) -> EditPriority {
    let want = chosen();
    let warn = |flag: &AtomicBool, msg: String| {
        if !flag.swap(true, Ordering::Relaxed) {
            tracing::warn!(thread = what, "edit priority: {msg}");
        }
    };
    if want == EditPriority::Fifo {
        match switch::sys::set_thread_fifo(edit_fifo_priority()) {
            Ok(()) => return EditPriority::Fifo,
            Err(e) => warn(
                &WARNED_FIFO,
                format!("SCHED_FIFO refused ({e}); trying nice {NICE}"),
            ),
        }
    }
    if want != EditPriority::Normal {
        match switch::sys::set_thread_nice(NICE) {
            Ok(()) => return EditPriority::Nice,
            Err(e) => warn(
                &WARNED,
                format!("nice {NICE} refused ({e}); edits may wait behind busy threads"),
            ),
        }
    }
    EditPriority::Normal
}

/// While alive, the calling thread, if at `SCHED_FIFO`, steps down to the
/// workers' level after yielding its core once: an ordinary thread
/// (`SCHED_OTHER` at nice [`NICE`]) beside normal workers, `SCHED_FIFO`
/// [`FIFO_PRIORITY`] beside `fifo` ones; dropped, it is put back. The
/// committing thread holds one across the store commit: the edit is
/// already published (enforced) by then, and the commit's own CPU work
/// (SQLite, ~0.3-0.5 ms per edit) would otherwise keep a worker it
/// preempted off its core, which delays the very first datagrams the new
/// rule admits (measured: docs/benchmarks.md, "The enforced tail, fourth
/// pass" and "seventh pass"). Costs two `sched_setscheduler` calls and a
/// `sched_yield` per commit, none when the thread is not real-time.
///
/// A request that arrives meanwhile must not wait for a commit slowed down
/// by normal threads (with launches in flight the management thread commits
/// their steps between edits): the connection thread, before it waits for
/// the core's lock, calls [`hurry`], which puts the committing thread back
/// at `SCHED_FIFO` at once.
pub struct Ordinary {
    was_fifo: bool,
}

/// The thread inside an [`Ordinary`] section (0: none).
static ORDINARY_TID: AtomicI32 = AtomicI32::new(0);

/// See [`Ordinary`].
pub fn ordinary() -> Ordinary {
    let fifo = matches!(switch::sys::thread_sched(), Ok((p, _)) if p == switch::sys::SCHED_FIFO);
    let was_fifo = fifo
        && if WORKERS_FIFO.load(Ordering::Relaxed) {
            switch::sys::set_thread_fifo(FIFO_PRIORITY).is_ok()
        } else {
            switch::sys::set_thread_nice(NICE).is_ok()
        };
    if was_fifo {
        ORDINARY_TID.store(switch::sys::gettid(), Ordering::SeqCst);
        // Still current on the core it took from a worker: give it back now
        // rather than at the end of a time slice.
        std::thread::yield_now();
    }
    Ordinary { was_fifo }
}

/// A request is about to wait for the core: if the thread that holds it is
/// committing as an ordinary thread ([`Ordinary`]), back to `SCHED_FIFO` with it, so the
/// request does not wait behind normal threads. One atomic load otherwise.
pub fn hurry() {
    let tid = ORDINARY_TID.load(Ordering::SeqCst);
    if tid != 0 {
        // Refused or gone: the commit just runs on as it was.
        let _ = switch::sys::set_thread_fifo_of(tid, edit_fifo_priority());
    }
}

impl Drop for Ordinary {
    fn drop(&mut self) {
        if self.was_fifo {
            ORDINARY_TID.store(0, Ordering::SeqCst);
        }
        if self.was_fifo && switch::sys::set_thread_fifo(edit_fifo_priority()).is_err() {
            tracing::warn!(
                "edit priority: SCHED_FIFO refused after a commit; the edit path runs as an ordinary thread"
            );
        }
    }
}

/// How the forwarding workers are scheduled (`up --worker-priority`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum WorkerPriority {
    /// Normal scheduling at `--worker-nice`.
    #[default]
    Normal,
    /// `SCHED_FIFO` 1, one below the edit path (falls back to
    /// normal scheduling at `--worker-nice`, with a warning, when refused).
    /// Only with `--poll adaptive`: the workers block in `epoll_wait`
    /// between bursts.
    Fifo,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each choice gives a new thread what it names (as root; a refused
    /// `fifo` must fall back to `nice`, never error out), and processes it
    /// starts run normally again. One test: the choice is process-wide.
    #[test]
    fn apply_gives_the_thread_the_chosen_priority() {
        let run = |p: EditPriority| {
            choose(p);
            std::thread::spawn(|| {
                let got = apply("test");
                let sched = switch::sys::thread_sched().unwrap();
                // A child started from this thread: nice 0, SCHED_OTHER.
                let child = std::process::Command::new("sh")
                    .args(["-c", "cut -d' ' -f19,41 /proc/self/stat"])
                    .output()
                    .unwrap();
                (
                    got,
                    sched,
                    String::from_utf8_lossy(&child.stdout).trim().to_owned(),
                )
            })
            .join()
            .unwrap()
        };
        let root = nix::unistd::geteuid().is_root();
        let (got, (policy, _), _) = run(EditPriority::Normal);
        assert_eq!(got, EditPriority::Normal);
        assert_eq!(policy, switch::sys::SCHED_OTHER);
        let (got, (policy, nice), child) = run(EditPriority::Nice);
        if root {
            assert_eq!(got, EditPriority::Nice);
            assert_eq!((policy, nice), (switch::sys::SCHED_OTHER, NICE));
            assert_eq!(child, "0 0", "the child's nice and policy are reset");
        } else {
            assert!(matches!(got, EditPriority::Nice | EditPriority::Normal));
        }
        let (got, (policy, nice), child) = run(EditPriority::Fifo);
        match got {
            EditPriority::Fifo => {
                assert_eq!(policy, switch::sys::SCHED_FIFO);
                assert_eq!(child, "0 0", "the child runs SCHED_OTHER at nice 0");
            }
            EditPriority::Nice => assert_eq!((policy, nice), (switch::sys::SCHED_OTHER, NICE)),
            EditPriority::Normal => assert!(!root, "root gets fifo or nice"),
        }
        choose(EditPriority::Normal);
    }

    /// A launch's namespace work runs real-time (one above the workers) only when the
    /// edit path and the workers are both real-time.
    #[test]
    fn launches_are_real_time_only_beside_real_time_workers() {
        use EditPriority as E;
        use WorkerPriority as W;
        assert_eq!(
            launch_priority(E::Fifo, W::Fifo),
            Some(LAUNCH_FIFO_PRIORITY)
        );
        assert_eq!(LAUNCH_FIFO_PRIORITY, FIFO_PRIORITY + 1);
        for (e, w) in [
            (E::Fifo, W::Normal),
            (E::Nice, W::Fifo),
            (E::Normal, W::Fifo),
            (E::Nice, W::Normal),
            (E::Normal, W::Normal),
        ] {
            assert_eq!(launch_priority(e, w), None, "{e:?} {w:?}");
        }
    }

    /// The calling thread's real-time priority (0 when not real-time):
    /// field 40 of /proc/thread-self/stat.
    fn rt_priority() -> i32 {
        let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
        let after_comm = &stat[stat.rfind(')').unwrap() + 2..];
        after_comm.split(' ').nth(37).unwrap().parse().unwrap()
    }

    /// Across a commit ([`ordinary`]) the real-time edit path is an ordinary
    /// thread at nice -10, then real-time again, or at once when a request
    /// comes ([`hurry`]); a thread that is not real-time is left alone.
    /// Beside real-time workers the edit path is one above them and the
    /// commit runs at their priority.
    #[test]
    fn the_edit_path_steps_aside_for_the_commit() {
        std::thread::spawn(|| {
            let before = switch::sys::thread_sched().unwrap();
            let g = ordinary();
            assert_eq!(switch::sys::thread_sched().unwrap(), before);
            drop(g);
            assert_eq!(switch::sys::thread_sched().unwrap(), before);
            if let Err(e) = switch::sys::set_thread_fifo(FIFO_PRIORITY) {
                let root = nix::unistd::geteuid().is_root();
                assert!(
                    !(root && std::env::var_os("CI").is_some_and(|v| v == "true")),
                    "SCHED_FIFO refused to root under CI: {e}"
                );
                eprintln!("skipped the real-time part: SCHED_FIFO refused ({e})");
                return;
            }
            assert_eq!(rt_priority(), FIFO_PRIORITY);
            let g = ordinary();
            assert_eq!(
                switch::sys::thread_sched().unwrap(),
                (switch::sys::SCHED_OTHER, NICE)
            );
            assert_eq!(rt_priority(), 0);
            // A request handed over meanwhile: real-time again at once, from
            // another thread.
            std::thread::spawn(hurry).join().unwrap();
            assert_eq!(
                switch::sys::thread_sched().unwrap().0,
                switch::sys::SCHED_FIFO
            );
            assert_eq!(rt_priority(), FIFO_PRIORITY);
            drop(g);
            // Outside a section, hurry changes nothing.
            switch::sys::set_thread_nice(NICE).unwrap();
            std::thread::spawn(hurry).join().unwrap();
            assert_eq!(
                switch::sys::thread_sched().unwrap().0,
                switch::sys::SCHED_OTHER
            );
            switch::sys::set_thread_fifo(FIFO_PRIORITY).unwrap();
            // Real-time workers: the edit path runs one above them, and the
            // commit steps down to their priority (still real-time), back up
            // after it or at once when a request comes.
            choose_workers(WorkerPriority::Fifo);
            assert_eq!(edit_fifo_priority(), FIFO_PRIORITY + 1);
            switch::sys::set_thread_fifo(edit_fifo_priority()).unwrap();
            let g = ordinary();
            assert_eq!(
                switch::sys::thread_sched().unwrap().0,
                switch::sys::SCHED_FIFO
            );
            assert_eq!(rt_priority(), FIFO_PRIORITY);
            std::thread::spawn(hurry).join().unwrap();
            assert_eq!(rt_priority(), FIFO_PRIORITY + 1);
            drop(g);
            assert_eq!(rt_priority(), FIFO_PRIORITY + 1);
            let g = ordinary();
            assert_eq!(rt_priority(), FIFO_PRIORITY);
            drop(g);
            assert_eq!(rt_priority(), FIFO_PRIORITY + 1);
            choose_workers(WorkerPriority::Normal);
            assert_eq!(edit_fifo_priority(), FIFO_PRIORITY);
            switch::sys::set_thread_fifo(FIFO_PRIORITY).unwrap();
            assert_eq!(
                switch::sys::thread_sched().unwrap().0,
                switch::sys::SCHED_FIFO
            );
            assert_eq!(rt_priority(), FIFO_PRIORITY);
        })
        .join()
        .unwrap();
    }
}
