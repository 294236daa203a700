//! `sgswitch up`: the daemon. Starts the data plane, loads the state, serves the
//! API socket, and shuts down cleanly on SIGINT/SIGTERM.
//!
//! Threads and ownership:
//! * The [`Core`] (model, store, data plane) sits behind one lock, shared by
//!   the **management thread** and the threads that take requests: a request
//!   runs on the thread that read it ([`MgmtHandle::call`], under the lock),
//!   so an edit is applied one at a time, in the order the lock is taken,
//!   without waiting for another thread to wake up and take it. The
//!   management thread takes [`Msg`]s from one channel (a launch's second
//!   step, ticks, cluster news, requests that came before the core existed)
//!   and applies each under the same lock.
//! * Group commit: the core commits to the store under the lock, but the fsync
//!   that makes the commit durable ([`crate::store::Syncer`]) runs after the
//!   lock is released, before the answer is sent; the next request (another
//!   client's edit, a launch's step) does not wait for the disk, and one fsync
//!   covers every commit made before it. A failed fsync turns the answer into
//!   InternalError (the edit is not acknowledged).
//! * Slow lifecycle work never holds the core: `run-instances`, `attach-instance` and
//!   `terminate-instances` run in two steps ([`Core::begin`], [`Core::finish`]).
//!   Step 1 (on the request's thread) validates exactly as one step would, and
//!   for a launch reserves the instances' ids, addresses, MACs and interfaces
//!   (taken back out of the model: no other commit carries a half-launch) or
//!   for a termination detaches the ports and commits; the slow part
//!   (namespaces, TAPs, `ip` processes, AF_PACKET queues, QEMU; or destroying
//!   them) goes as a job to the **launcher threads** (at most [`LAUNCHERS`],
//!   started on demand, through [`Msg::Waiting`]); the request's thread waits
//!   for the answer without holding the core.
//!   When the job is done its launcher sends [`Msg::Done`]; step 2 on the
//!   management thread stages the instances again (a group deleted meanwhile
//!   fails the launch with the missing-group error), commits, and only then
//!   answers the waiting client; any failure undoes what the job made. A
//!   termination is committed in step 1 (the instances are gone from the
//!   model at once) and answered `shutting-down` once the destroy ran. A
//!   ClientToken repeated while its launch is in flight is answered with that
//!   reservation, its instances `pending`. `Msg::Stop` with jobs in flight
//!   refuses new requests and finishes those jobs (commit or undo) before the
//!   thread ends. In cluster mode both steps run in one turn (a commit lost to
//!   a concurrent edit is retried whole).
//! * The **accept thread** runs [`api::serve`]; each connection gets its own
//!   thread that decodes requests and runs them through a [`MgmtHandle`]. A
//!   slow or hostile client only ever blocks its own thread (it holds the
//!   core's lock only while its request runs, never while it reads or writes).
//! * A `capture` connection's thread streams the capture itself
//!   ([`crate::capture`]): the management thread only starts it (resolves the
//!   target, arms the switch) and goes on answering other requests.
//! * The optional **metrics thread** ([`crate::metrics`]) asks the management
//!   thread for statistics once a second.
//! * The main thread blocks SIGINT/SIGTERM before any thread is spawned (so every
//!   thread inherits the mask) and waits for them with `sigwait`.
//!
//! Start, in this order, so that a start that fails leaves nothing behind and
//! one that succeeds is fully up when anyone can see it:
//! 1. Checks that make nothing: the capabilities (`CAP_NET_ADMIN` and
//!    `CAP_SYS_ADMIN`, i.e. root, unless `--no-switch`), that `--subnet` and
//!    `--uplink-range` overlap no address or route of the daemon's network
//!    namespace when the uplink lives there ([`crate::hostnet`]; routes and
//!    addresses on the daemon's own uplink are its own), and that no live daemon
//!    answers on `--socket`.
//! 2. The state directory lock ([`StateLock`]: `STATE_DIR/sgswitch.lock`, flock,
//!    holding the PID): a second daemon on the same state is refused with "state
//!    dir DIR in use by PID N".
//! 3. The listeners: EC2 API (`--ec2-listen`), metrics (`--metrics-listen`) and
//!    the API socket, bound under a temporary name in the socket's directory.
//!    A busy address fails the start with an error naming the option.
//! 4. The data plane ([`crate::dataplane::start`]: switch and uplink; an uplink
//!    another process holds is refused naming `--uplink`), the store, the core
//!    (instances re-attached), the management thread.
//! 5. Ready: the socket is `rename`d to `--socket` (so the path appears only
//!    now, atomically), the lines `sgswitch: ec2 api on http://ADDR`,
//!    `sgswitch: metrics on http://ADDR/metrics` and `sgswitch: ready on SOCKET`
//!    are printed to stderr, and `READY=1` is sent to `$NOTIFY_SOCKET` if set
//!    (systemd `Type=notify`; `@name` is an abstract address).
//!
//! If any step fails, everything made by the earlier ones is undone as the
//! guards drop: the temporary socket, the listeners, an uplink TAP this start
//! created (an existing one, kept from a previous run, stays), the lock file,
//! and the state directory if this start created it.
//!
//! Events (start, stop, edits, instances launched, terminated, re-attached or
//! lost, EC2 requests) are logged with `tracing` to stderr (`--log-level`, or
//! `RUST_LOG`; `--log-format text|json`, see [`crate::logfmt`]).
//!
//! Shutdown: `STOPPING=1` to `$NOTIFY_SOCKET`, stop accepting, remove the
//! socket, stop the management thread, shut the switch down (workers joined),
//! release the lock. The uplink TAP, the namespaces of running
//! instances and QEMU guests are **kept** (the TAPs are persistent), so a restart
//! re-attaches them and neither the instances nor the outside notice.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;

use filter::Snapshot;
use filter::model::{Instance, Limits, Owner};
use nix::sys::signal::{SigSet, Signal};

use crate::api::{self, ApiError, ErrorCode, Handler, KeySecret, Reply, Request, StatsReport};
use crate::cli::{Cli, DEFAULT_OWNER, UpArgs};
use crate::cluster::node::{Node, NodeConfig};
use crate::core::{
    Attachment, Core, CoreConfig, CoreError, Dataplane, Job, JobDone, Step, default_uplink_range,
};
use crate::store::{InstanceRecord, Store, StoreError, Syncer};

/// Errors of starting or running the daemon.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("invalid --owner")]
    Owner(#[source] filter::Ec2Error),
    #[error("{0}")]
    Subnet6(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Core(#[from] CoreError),
    #[error("create socket directory {path}")]
    SocketDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("another daemon is already serving {0} (--socket)")]
    SocketBusy(PathBuf),
    #[error("needs root (missing {0}): it creates TAP devices and network namespaces")]
    NotRoot(String),
    #[error("read the capabilities of this process")]
    Caps(#[source] std::io::Error),
    #[error(
        "--{option} {range} overlaps {what} in the daemon's network namespace: \
         choose a free range with --{option}{hint}"
    )]
    Overlap {
        option: &'static str,
        range: ipnet::Ipv4Net,
        what: String,
        hint: &'static str,
    },
    #[error("read the addresses and routes of the daemon's network namespace")]
    HostNet(#[source] std::io::Error),
    #[error("state dir {dir} (--state-dir)")]
    StateDir {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "state dir {dir} in use by PID {pid} (another sgswitch up); stop it or choose another --state-dir"
    )]
    StateBusy { dir: PathBuf, pid: String },
    #[error("publish API socket {path}")]
    Publish {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("bind API socket {path}")]
    Bind {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("start {what}")]
    Spawn {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("block signals")]
    Signals(#[source] nix::Error),
    #[error(
        "--worker-priority fifo cannot be combined with --poll busy: a spinning real-time \
         worker would starve its core (use --poll adaptive, or --worker-priority normal)"
    )]
    WorkerFifoBusyPoll,
    #[error("start data plane: {0}")]
    Dataplane(String),
    #[error("cluster mode: {0}")]
    Cluster(String),
    #[error("--ec2-listen")]
    Ec2(#[source] crate::ec2::Ec2StartError),
    #[error("--metrics-listen {addr}")]
    Metrics {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// A message to the management thread.
pub enum Msg {
    /// Answer a request on the given channel.
    Request(Request, mpsc::SyncSender<Reply>),
    /// Look up an access key for the EC2 front door (no [`api::Command`]:
    /// the socket cannot ask it).
    LookupAccessKey(String, mpsc::SyncSender<Result<KeySecret, ApiError>>),
    /// Start a capture (its connection streams it).
    StartCapture(
        Request,
        mpsc::SyncSender<Result<crate::capture::Started, ApiError>>,
    ),
    /// A request that [`MgmtHandle::call`] began on its own thread has a
    /// slow part: run `job` on a launcher and answer on the channel when it
    /// is done ([`Msg::Done`]).
    Waiting(u64, Job, mpsc::SyncSender<Reply>),
    /// Cluster mode: the etcd follower has news for the core.
    Wake,
    /// A launcher thread finished the slow part of request `ticket`
    /// ([`Step::Slow`]): the management thread finishes it and answers.
    /// Internal (no [`api::Command`]).
    Done(u64, JobDone),
    /// Stop and hand the core back.
    Stop,
}

/// A cloneable handle to the management thread; implements [`Handler`].
#[derive(Clone)]
pub struct MgmtHandle {
    tx: mpsc::Sender<Msg>,
    shared: Arc<std::sync::Mutex<Shared>>,
}

/// The core, shared by the management thread and the threads that call
/// [`MgmtHandle::call`]: a request runs on its caller's thread (the API
/// connection's), under the lock, so an edit is not handed to another
/// thread that must wake first. `None` until [`spawn_management_on`] puts
/// the core in, and again once the management thread stopped.
#[derive(Default)]
struct Shared {
    core: Option<Core>,
    /// Makes the core's commits durable, outside the lock (group commit,
    /// [`crate::store::Store::defer_sync`]); with the core.
    syncer: Option<Syncer>,
    /// [`Msg::Stop`] arrived: requests are refused.
    stopping: bool,
}

/// [`Syncer::sync`]; a failure is logged (and returned, explained).
fn sync_logged(syncer: &Syncer) -> Result<(), String> {
    syncer.sync().map_err(|e| {
        let why = crate::api::error_chain(&e);
        tracing::error!("{why}");
        why
    })
}

/// `answer`, once what was committed before it is durable: the fsync runs
/// after the core's lock is released, so the next request does not wait
/// for the disk (and one fsync serves every commit made meanwhile). A
/// failed fsync turns a success into InternalError: it must not be
/// acknowledged.
fn durable(syncer: Option<&Syncer>, answer: Reply) -> Reply {
    let Some(Err(why)) = syncer.map(sync_logged) else {
        return answer;
    };
    match answer {
        Ok(_) => Err(ApiError::internal(format!(
            "the change was made but may not survive a power cut: {why}"
        ))),
        err => err,
    }
}

/// Lock `shared`; a panic while it was held left the core as consistent as
/// a caught one (every command runs under `catch_unwind`), so poison is
/// ignored.
fn lock(shared: &std::sync::Mutex<Shared>) -> std::sync::MutexGuard<'_, Shared> {
    shared.lock().unwrap_or_else(|p| p.into_inner())
}

/// Begin `req` on `core`: a panic is an InternalError, and nothing is
/// changed (the core undoes what the command staged and did not commit at
/// its next request).
fn begin(core: &mut Core, req: Request) -> Step {
    std::panic::catch_unwind(AssertUnwindSafe(|| core.begin(req)))
        .unwrap_or_else(|_| Step::Done(Err(panicked())))
}

impl MgmtHandle {
    /// Hand `msg` (which carries `rtx`'s sender) to the management thread
    /// and wait for its answer on `rrx`; a commit in progress there is
    /// hurried back to real time ([`crate::sched::hurry`]).
    fn ask<T>(&self, msg: Msg, rrx: mpsc::Receiver<Result<T, ApiError>>) -> Result<T, ApiError> {
        self.tx.send(msg).map_err(|_| gone())?;
        crate::sched::hurry();
        rrx.recv().map_err(|_| gone())?
    }

    /// Answer `req`. It runs here, on the caller's thread, with the core
    /// locked (a commit in progress elsewhere is hurried back to real time
    /// first); its slow part, if any, runs on a launcher and this waits for
    /// it. Before the core exists the request waits in the management
    /// thread's channel.
    pub fn call(&self, req: Request) -> Reply {
        crate::sched::hurry();
        let mut shared = lock(&self.shared);
        if shared.stopping {
            return Err(gone());
        }
        let Some(core) = shared.core.as_mut() else {
            drop(shared);
            let (rtx, rrx) = mpsc::sync_channel(1);
            return self.ask(Msg::Request(req, rtx), rrx);
        };
        match begin(core, req) {
            Step::Done(answer) => {
                let syncer = shared.syncer.clone();
                drop(shared);
                let answer = durable(syncer.as_ref(), answer);
                log_failure(&answer);
                answer
            }
            Step::Slow { ticket, job } => {
                // Sent under the lock: the management thread sees it before
                // anything else that could finish this ticket.
                let (rtx, rrx) = mpsc::sync_channel(1);
                let sent = self.tx.send(Msg::Waiting(ticket, job, rtx));
                drop(shared);
                sent.map_err(|_| gone())?;
                rrx.recv().map_err(|_| gone())?
            }
        }
    }

    /// [`Handler::lookup_access_key`] on the management thread.
    pub fn lookup_access_key(&self, key_id: &str) -> Result<KeySecret, ApiError> {
        let (rtx, rrx) = mpsc::sync_channel(1);
        self.ask(Msg::LookupAccessKey(key_id.to_owned(), rtx), rrx)
    }

    /// [`Handler::start_capture`] on the management thread.
    pub fn start_capture(&self, req: Request) -> Result<crate::capture::Started, ApiError> {
        let (rtx, rrx) = mpsc::sync_channel(1);
        self.ask(Msg::StartCapture(req, rtx), rrx)
    }

    /// Wake the management thread for cluster news.
    pub fn wake(&self) {
        let _ = self.tx.send(Msg::Wake);
    }

    /// Ask the management thread to stop (it returns the core from its join
    /// handle); requests from now on are refused.
    pub fn stop(&self) {
        lock(&self.shared).stopping = true;
        let _ = self.tx.send(Msg::Stop);
    }
}

/// The answer when the management thread is gone.
fn gone() -> ApiError {
    ApiError::new(ErrorCode::ServiceUnavailable, "the daemon is shutting down")
}

impl Handler for MgmtHandle {
    fn handle(&self, req: Request) -> Reply {
        self.call(req)
    }

    fn lookup_access_key(&self, key_id: &str) -> Result<KeySecret, ApiError> {
        MgmtHandle::lookup_access_key(self, key_id)
    }

    fn start_capture(&self, req: Request) -> Result<crate::capture::Started, ApiError> {
        MgmtHandle::start_capture(self, req)
    }
}

/// How long `up --etcd` waits for the lab's model before it starts on its
/// cache (or fails without one).
pub const JOIN_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// How long the management thread waits for a request before it ticks the
/// core ([`Core::tick`]).
pub const TICK: std::time::Duration = std::time::Duration::from_millis(250);

/// Launcher threads at most: slow jobs beyond this many wait in line.
pub const LAUNCHERS: usize = 2;

/// The launcher threads: run the slow part of requests ([`Step::Slow`]) off
/// the management thread and hand each result back as [`Msg::Done`]. At
/// most [`LAUNCHERS`] threads, started when work arrives and ending when
/// there is none (so they hold no sender of the management channel while
/// idle).
struct Launcher {
    queue: Arc<std::sync::Mutex<LaunchQueue>>,
    back: mpsc::Sender<Msg>,
}

#[derive(Default)]
struct LaunchQueue {
    jobs: std::collections::VecDeque<(u64, Job)>,
    threads: usize,
}

impl Launcher {
    /// Run `job` of request `ticket` on a launcher thread. If no thread can be
    /// started and none runs, it runs here.
    fn run(&self, ticket: u64, job: Job) {
        let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        q.jobs.push_back((ticket, job));
        if q.threads >= LAUNCHERS {
            return;
        }
        let (queue, back) = (self.queue.clone(), self.back.clone());
        let spawned = std::thread::Builder::new()
            .name("sgswitch-launch".into())
            .spawn(move || {
                // No edit priority here: started from the management thread,
                // it runs as an ordinary thread (`SCHED_RESET_ON_FORK`, see
                // `crate::sched`), behind the edit path.
                loop {
                    let next = {
                        let mut q = queue.lock().unwrap_or_else(|p| p.into_inner());
                        let next = q.jobs.pop_front();
                        if next.is_none() {
                            q.threads -= 1;
                        }
                        next
                    };
                    let Some((ticket, job)) = next else { break };
                    let _ = back.send(Msg::Done(ticket, run_job(job)));
                }
            });
        match spawned {
            Ok(_) => q.threads += 1,
            Err(e) if q.threads == 0 => {
                tracing::warn!("cannot start a launcher thread ({e}): launching inline");
                let jobs: Vec<(u64, Job)> = q.jobs.drain(..).collect();
                drop(q);
                for (ticket, job) in jobs {
                    let _ = self.back.send(Msg::Done(ticket, run_job(job)));
                }
            }
            Err(e) => tracing::warn!("cannot start another launcher thread: {e}"),
        }
    }
}

/// Run `job`; a panic is its result (the core then answers InternalError).
fn run_job(job: Job) -> JobDone {
    std::panic::catch_unwind(AssertUnwindSafe(job)).unwrap_or_else(|_| {
        tracing::error!("a launch or termination job panicked");
        Box::new(())
    })
}

/// Start the management thread around `core`.
pub fn spawn_management(core: Core) -> Result<(MgmtHandle, JoinHandle<Core>), DaemonError> {
    let (handle, rx) = management_channel();
    Ok((handle.clone(), spawn_management_on(core, &handle, rx)?))
}

/// A handle and the receiving end of its channel: requests sent before
/// [`spawn_management_on`] runs wait in the channel (the listeners start before
/// the core exists).
pub fn management_channel() -> (MgmtHandle, mpsc::Receiver<Msg>) {
    let (tx, rx) = mpsc::channel::<Msg>();
    let shared = Arc::default();
    (MgmtHandle { tx, shared }, rx)
}

/// Start the management thread around `core`, answering the messages of `rx`
/// (`handle` is its channel's: launcher threads answer through it).
pub fn spawn_management_on(
    mut core: Core,
    handle: &MgmtHandle,
    rx: mpsc::Receiver<Msg>,
) -> Result<JoinHandle<Core>, DaemonError> {
    let launcher = Launcher {
        queue: Arc::default(),
        back: handle.tx.clone(),
    };
    let shared = handle.shared.clone();
    let syncer = core.defer_sync();
    let join = std::thread::Builder::new()
        .name("sgswitch-mgmt".into())
        .spawn(move || {
            crate::sched::apply("sgswitch-mgmt");
            {
                let mut g = lock(&shared);
                g.core = Some(core);
                g.syncer = Some(syncer.clone());
            }
            let mut last_tick = std::time::Instant::now();
            // Requests whose slow part runs on a launcher: who waits for the
            // answer.
            let mut waiting: std::collections::BTreeMap<u64, mpsc::SyncSender<Reply>> =
                std::collections::BTreeMap::new();
            let mut stopping = false;
            loop {
                if stopping && waiting.is_empty() {
                    break;
                }
                // Every TICK, between requests: move QEMU guests on (pending →
                // running, or stopped when QEMU died).
                if last_tick.elapsed() >= TICK {
                    let mut guard = lock(&shared);
                    let core = guard.core.as_mut().expect("the core is in");
                    let _ = std::panic::catch_unwind(AssertUnwindSafe(|| {
                        core.poll_cluster();
                        core.tick()
                    }));
                    drop(guard);
                    // Nobody waits for these commits; still durable at once.
                    let _ = sync_logged(&syncer);
                    last_tick = std::time::Instant::now();
                }
                let msg = match rx.recv_timeout(TICK) {
                    Ok(msg) => msg,
                    Err(mpsc::RecvTimeoutError::Timeout) => continue,
                    Err(mpsc::RecvTimeoutError::Disconnected) => break,
                };
                let mut guard = lock(&shared);
                let core = guard.core.as_mut().expect("the core is in");
                // Answered once the lock is released and the commit durable.
                let mut answered: Option<(mpsc::SyncSender<Reply>, Reply)> = None;
                match msg {
                    // Stopping: only the launches in flight are finished.
                    Msg::Request(_, reply) if stopping => {
                        let _ = reply.send(Err(gone()));
                    }
                    // Sent before the core was in (see `MgmtHandle::call`).
                    // A bug in one command must not take the daemon down:
                    // `begin` answers InternalError and the loop goes on.
                    Msg::Request(req, reply) => match begin(core, req) {
                        Step::Done(answer) => answered = Some((reply, answer)),
                        // The slow part (namespaces, TAPs, guests) runs on a
                        // launcher; the answer waits for it, the loop does not.
                        Step::Slow { ticket, job } => {
                            waiting.insert(ticket, reply);
                            launcher.run(ticket, job);
                        }
                    },
                    Msg::Waiting(ticket, job, reply) => {
                        waiting.insert(ticket, reply);
                        launcher.run(ticket, job);
                    }
                    Msg::Done(ticket, done) => {
                        let answer = std::panic::catch_unwind(AssertUnwindSafe(|| {
                            core.finish(ticket, done)
                        }))
                        .unwrap_or_else(|_| Err(panicked()));
                        answered = waiting.remove(&ticket).map(|reply| (reply, answer));
                    }
                    Msg::LookupAccessKey(key_id, reply) => {
                        let _ = reply.send(core.lookup_access_key(&key_id));
                    }
                    Msg::StartCapture(req, reply) => {
                        let started =
                            std::panic::catch_unwind(AssertUnwindSafe(|| core.start_capture(req)))
                                .unwrap_or_else(|_| {
                                    Err(ApiError::internal("starting the capture failed"))
                                });
                        let _ = reply.send(started);
                    }
                    Msg::Wake => {
                        let _ = std::panic::catch_unwind(AssertUnwindSafe(|| core.poll_cluster()));
                    }
                    // Launches in flight are finished first (committed or
                    // undone: nothing half-made is left, nothing answered lost).
                    Msg::Stop => stopping = true,
                }
                drop(guard);
                match answered {
                    Some((reply, a)) => answer_with(&reply, durable(Some(&syncer), a)),
                    None => {
                        let _ = sync_logged(&syncer);
                    }
                }
            }
            lock(&shared).core.take().expect("the core is in")
        })
        .map_err(|source| DaemonError::Spawn {
            what: "management thread",
            source,
        })?;
    Ok(join)
}

/// The answer to a command that panicked.
fn panicked() -> ApiError {
    tracing::error!("a command panicked; nothing was changed");
    ApiError::internal("the command failed unexpectedly; nothing was changed")
}

/// Send `answer` to `reply` ([`log_failure`] first).
fn answer_with(reply: &mpsc::SyncSender<Reply>, answer: Reply) {
    log_failure(&answer);
    let _ = reply.send(answer);
}

/// A failure of the daemon's own is worth a line in the log (refused input
/// is the client's business).
fn log_failure(answer: &Reply) {
    if let Err(e) = answer
        && e.code == ErrorCode::InternalError
    {
        tracing::warn!("command failed: {}", e.message);
    }
}

/// A bound API socket that removes its file when dropped.
pub struct SocketFile {
    pub path: PathBuf,
    pub listener: Option<UnixListener>,
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Refuse `path` if a live daemon answers on it.
pub fn check_socket_free(path: &Path) -> Result<(), DaemonError> {
    if std::fs::symlink_metadata(path).is_ok() && UnixStream::connect(path).is_ok() {
        return Err(DaemonError::SocketBusy(path.to_path_buf()));
    }
    Ok(())
}

/// The temporary name the daemon binds its socket under until it is ready: in
/// the same directory (so `rename` is atomic), short enough for `sun_path`.
pub fn staging_path(path: &Path) -> PathBuf {
    let pid = std::process::id();
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
    let long = path.with_file_name(format!(".{}.{pid}.tmp", name.unwrap_or_default()));
    if long.as_os_str().len() < 100 {
        long
    } else {
        path.with_file_name(format!(".sgsw{pid}"))
    }
}

/// Bind the API socket for `path` under its [`staging_path`] (mode 0600),
/// creating the directory (0755); [`Server::publish`] moves it into place.
/// A live daemon on `path` is an error.
pub fn bind_socket_staged(path: &Path) -> Result<SocketFile, DaemonError> {
    check_socket_free(path)?;
    let staged = staging_path(path);
    let _ = std::fs::remove_file(&staged);
    bind_socket(&staged)
}

/// Bind the API socket at `path` (mode 0600), creating its directory (0755).
/// A stale socket file (nobody listening) is replaced; a live one is an error.
pub fn bind_socket(path: &Path) -> Result<SocketFile, DaemonError> {
    if let Some(dir) = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty() && !d.exists())
    {
        std::fs::create_dir_all(dir).map_err(|source| DaemonError::SocketDir {
            path: dir.to_path_buf(),
            source,
        })?;
        let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755));
    }
    if std::fs::symlink_metadata(path).is_ok() {
        if UnixStream::connect(path).is_ok() {
            return Err(DaemonError::SocketBusy(path.to_path_buf()));
        }
        let _ = std::fs::remove_file(path);
    }
    let bind_err = |source| DaemonError::Bind {
        path: path.to_path_buf(),
        source,
    };
    let listener = UnixListener::bind(path).map_err(bind_err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(bind_err)?;
    Ok(SocketFile {
        path: path.to_path_buf(),
        listener: Some(listener),
    })
}

/// A running API server: the socket, its accept thread, and the stop flag.
pub struct Server {
    socket: SocketFile,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
}

impl Server {
    /// Serve `socket` with `handler` on an accept thread.
    pub fn start(mut socket: SocketFile, handler: Arc<dyn Handler>) -> Result<Server, DaemonError> {
        let stop = Arc::new(AtomicBool::new(false));
        let listener = socket.listener.take().ok_or(DaemonError::Bind {
            path: socket.path.clone(),
            source: std::io::Error::other("listener already taken"),
        })?;
        let stop2 = stop.clone();
        let accept = std::thread::Builder::new()
            .name("sgswitch-accept".into())
            .spawn(move || api::serve(listener, handler, stop2))
            .map_err(|source| DaemonError::Spawn {
                what: "accept thread",
                source,
            })?;
        Ok(Server {
            socket,
            stop,
            accept: Some(accept),
        })
    }

    pub fn path(&self) -> &Path {
        &self.socket.path
    }

    /// Move the socket file to `to` (atomically replacing a stale one): from
    /// now on clients find the daemon there.
    pub fn publish(&mut self, to: &Path) -> Result<(), DaemonError> {
        std::fs::rename(&self.socket.path, to).map_err(|source| DaemonError::Publish {
            path: to.to_path_buf(),
            source,
        })?;
        self.socket.path = to.to_path_buf();
        Ok(())
    }

    /// Stop accepting (connections already open finish their current request).
    pub fn stop(mut self) {
        self.stop_inner();
    }

    fn stop_inner(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop.
        let _ = UnixStream::connect(&self.socket.path);
        if let Some(j) = self.accept.take() {
            let _ = j.join();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop_inner();
    }
}

/// A data plane for `--no-switch`: rules are compiled and dropped; instances
/// cannot be launched.
#[derive(Debug, Default)]
pub struct NoSwitch;

impl Dataplane for NoSwitch {
    fn publish(&mut self, _snap: Snapshot, _generation: u64) {}
    fn launch(
        &mut self,
        inst: &Instance,
        _prefix_len: u8,
        _how: &Attachment,
        _image: Option<&crate::qemu::GuestImage>,
    ) -> Result<Attachment, ApiError> {
        Err(ApiError::new(
            filter::ErrorCode::InsufficientInstanceCapacity,
            format!(
                "cannot launch {}: this daemon runs without a switch (--no-switch)",
                inst.id
            ),
        ))
    }
    fn reattach(&mut self, rec: &InstanceRecord, _prefix_len: u8) -> Result<(), ApiError> {
        Err(ApiError::internal(format!(
            "cannot re-attach {}: no switch (--no-switch)",
            rec.instance.id
        )))
    }
    fn terminate(&mut self, _id: &str, _how: &Attachment) -> Result<(), ApiError> {
        Ok(())
    }
    fn stats(&self, _report: &mut StatsReport) {}
}

/// The core's settings from the command line.
pub fn core_config(cli: &Cli, args: &UpArgs) -> Result<CoreConfig, DaemonError> {
    let owner =
        Owner::parse(cli.owner.as_deref().unwrap_or(DEFAULT_OWNER)).map_err(DaemonError::Owner)?;
    let mut cfg = CoreConfig::new(owner, args.subnet.trunc());
    cfg.uplink_range = args
        .uplink_range
        .map_or_else(|| default_uplink_range(cfg.subnet), |r| r.trunc());
    cfg.limits = Limits {
        rules_per_group: args.rules_per_group,
    };
    cfg.default_image = crate::dataplane::default_image(args);
    if args.worker_priority == crate::sched::WorkerPriority::Fifo
        && args.poll == crate::cli::PollArg::Busy
    {
        return Err(DaemonError::WorkerFifoBusyPoll);
    }
    if args.etcd.is_some() {
        cfg.cluster_host = Some(host_name(args)?);
    }
    Ok(cfg)
}

/// `--host`, else the hostname; 1 to 63 of `[A-Za-z0-9._-]`.
pub fn host_name(args: &UpArgs) -> Result<String, DaemonError> {
    let name = match &args.host {
        Some(h) => h.clone(),
        None => std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|s| s.trim().to_owned())
            .unwrap_or_default(),
    };
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok {
        Ok(name)
    } else {
        Err(DaemonError::Cluster(format!(
            "invalid --host '{}': 1 to 63 letters, digits, '.', '_' or '-'",
            name.escape_default()
        )))
    }
}

/// The cluster link's settings from `up`'s options.
pub fn node_config(args: &UpArgs, cfg: &CoreConfig) -> Result<Option<NodeConfig>, DaemonError> {
    let Some(endpoints) = &args.etcd else {
        return Ok(None);
    };
    let Some(underlay) = args.underlay else {
        return Err(DaemonError::Cluster(
            "--etcd needs --underlay ADDR: this host's address on the network between the hosts"
                .into(),
        ));
    };
    Ok(Some(NodeConfig {
        endpoints: endpoints.clone(),
        host: host_name(args)?,
        underlay: std::net::SocketAddr::from((underlay, args.vxlan_port)),
        subnet: cfg.subnet,
        uplink_range: cfg.uplink_range,
        subnet6: cfg.subnet6,
        vni: crate::cluster::node::VNI,
    }))
}

/// `CAP_NET_ADMIN` and `CAP_SYS_ADMIN`, the bits of `CapEff` the data plane
/// needs (TAPs and interfaces; namespaces and their mounts).
const NEEDED_CAPS: [(u32, &str); 2] = [(12, "CAP_NET_ADMIN"), (21, "CAP_SYS_ADMIN")];

/// The names of the [`NEEDED_CAPS`] this process lacks (from `CapEff` in
/// `/proc/self/status`).
pub fn missing_caps() -> Result<Vec<&'static str>, DaemonError> {
    let status = std::fs::read_to_string("/proc/self/status").map_err(DaemonError::Caps)?;
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .ok_or_else(|| {
            DaemonError::Caps(std::io::Error::other("no CapEff in /proc/self/status"))
        })?;
    Ok(NEEDED_CAPS
        .iter()
        .filter(|(bit, _)| eff & (1 << bit) == 0)
        .map(|&(_, name)| name)
        .collect())
}

/// Refuse `--subnet` or `--uplink-range` if they overlap an address or route of
/// the daemon's network namespace (those on the interface `own_uplink` are the
/// daemon's own, from a previous run).
pub fn check_ranges(cfg: &CoreConfig, own_uplink: Option<&str>) -> Result<(), DaemonError> {
    let checks = [
        ("subnet", cfg.subnet, " (and --uplink-range)"),
        ("uplink-range", cfg.uplink_range, ""),
    ];
    for (option, range, hint) in checks {
        let found = crate::hostnet::overlaps(range, own_uplink).map_err(DaemonError::HostNet)?;
        if let Some(what) = found.into_iter().next() {
            return Err(DaemonError::Overlap {
                option,
                range,
                what,
                hint,
            });
        }
    }
    Ok(())
}

/// The lock on a state directory: `STATE_DIR/sgswitch.lock`, flock-ed and
/// holding the PID. Dropping it removes the lock file (and, for a start that
/// failed before [`StateLock::keep`], the state directory if the start made it).
pub struct StateLock {
    dir: PathBuf,
    file: Option<nix::fcntl::Flock<std::fs::File>>,
    created_dir: bool,
    started: bool,
}

/// The lock file's name in the state directory.
pub const LOCK_FILE: &str = "sgswitch.lock";

impl StateLock {
    /// Lock `dir` (creating it, 0700, if missing); refuse if another process
    /// holds it, naming its PID.
    pub fn acquire(dir: &Path) -> Result<StateLock, DaemonError> {
        use nix::fcntl::{Flock, FlockArg};
        use std::io::{Read, Write};
        use std::os::unix::fs::MetadataExt;
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};

        let io_err = |source| DaemonError::StateDir {
            dir: dir.to_path_buf(),
            source,
        };
        let created_dir = !dir.exists();
        if created_dir {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(io_err)?;
        }
        let mut lock = StateLock {
            dir: dir.to_path_buf(),
            file: None,
            created_dir,
            started: false,
        };
        let path = dir.join(LOCK_FILE);
        // Retry when the file was replaced between open and flock (its holder
        // removed it on exit and another start made a new one).
        for _ in 0..10 {
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .open(&path)
                .map_err(io_err)?;
            let locked = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(l) => l,
                Err((mut file, nix::errno::Errno::EWOULDBLOCK)) => {
                    let mut pid = String::new();
                    let _ = file.read_to_string(&mut pid);
                    let pid = pid.trim();
                    return Err(DaemonError::StateBusy {
                        dir: dir.to_path_buf(),
                        pid: if pid.is_empty() {
                            "?".into()
                        } else {
                            pid.into()
                        },
                    });
                }
                Err((_, e)) => return Err(io_err(e.into())),
            };
            let same = match (locked.metadata(), std::fs::metadata(&path)) {
                (Ok(a), Ok(b)) => a.ino() == b.ino() && a.dev() == b.dev(),
                _ => false,
            };
            if !same {
                continue;
            }
            locked.set_len(0).map_err(io_err)?;
            writeln!(&*locked, "{}", std::process::id()).map_err(io_err)?;
            lock.file = Some(locked);
            return Ok(lock);
        }
        Err(io_err(std::io::Error::other(
            "the lock file keeps being replaced",
        )))
    }

    /// The start went through: on drop, only the lock file is removed.
    pub fn keep(&mut self) {
        self.started = true;
    }
}

impl Drop for StateLock {
    fn drop(&mut self) {
        if self.file.is_none() {
            return;
        }
        if self.created_dir && !self.started {
            // Made by this failed start, under its lock: nothing in it is anyone
            // else's.
            let _ = std::fs::remove_dir_all(&self.dir);
        } else {
            // Removed while still locked, so a start waiting on it retries.
            let _ = std::fs::remove_file(self.dir.join(LOCK_FILE));
        }
        self.file = None;
    }
}

/// Send `msg` to systemd's `$NOTIFY_SOCKET` (a path, or `@name` for an abstract
/// address); nothing without it. Failures are logged, never fatal.
pub fn sd_notify(msg: &str) {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr, UnixDatagram};

    let Some(target) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let sent = UnixDatagram::unbound().and_then(|sock| {
        let bytes = target.as_encoded_bytes();
        match bytes.strip_prefix(b"@") {
            Some(name) => sock.send_to_addr(msg.as_bytes(), &SocketAddr::from_abstract_name(name)?),
            None => sock.send_to(msg.as_bytes(), &target),
        }
    });
    if let Err(e) = sent {
        tracing::warn!("notify {}: {msg}: {e}", target.to_string_lossy());
    }
}

/// Run the daemon until SIGINT/SIGTERM.
pub fn run(cli: &Cli, args: &UpArgs) -> Result<(), DaemonError> {
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGINT);
    signals.add(Signal::SIGTERM);
    signals.thread_block().map_err(DaemonError::Signals)?;

    // 1. Checks that make nothing.
    let cfg = core_config(cli, args)?;
    crate::sched::choose(args.edit_priority);
    crate::sched::choose_workers(args.worker_priority);
    if !args.no_switch {
        let missing = missing_caps()?;
        if !missing.is_empty() {
            return Err(DaemonError::NotRoot(missing.join(", ")));
        }
        if args.uplink_netns.is_none() {
            check_ranges(&cfg, Some(&args.uplink))?;
        }
    }
    check_socket_free(&cli.socket)?;

    // 2. The state lock (a second daemon on the same state stops here).
    let mut lock = StateLock::acquire(&args.state_dir)?;

    // 3. The listeners, before anything is made that would need undoing.
    let (handle, mgmt_rx) = management_channel();
    let ec2_listener = match args.ec2_listen {
        crate::cli::Ec2Listen::On(addr) => Some(crate::ec2::bind(addr).map_err(DaemonError::Ec2)?),
        crate::cli::Ec2Listen::Off => None,
    };
    let metrics = match args.metrics_listen {
        Some(addr) => Some(
            crate::metrics::start(addr, Arc::new(handle.clone()))
                .map_err(|source| DaemonError::Metrics { addr, source })?,
        ),
        None => None,
    };
    // Dropped before `metrics` on a failed start: its updater may be waiting
    // for an answer through this channel.
    let mgmt_rx = mgmt_rx;
    let mut server = Server::start(bind_socket_staged(&cli.socket)?, Arc::new(handle.clone()))?;

    // 4. Store (and the IPv6 prefix it keeps), data plane, core, management
    // thread.
    let mut store = Store::open_dir(&args.state_dir)?;
    let mut cfg = cfg;
    let lab6 = match &args.etcd {
        Some(endpoints) => crate::cluster::node::lab_subnet6(endpoints),
        None => None,
    };
    cfg.subnet6 = Some(
        crate::ipv6::resolve(&mut store, args.subnet6, lab6)
            .map_err(|e| DaemonError::Subnet6(e.to_string()))?,
    );
    let (dp, mut uplink_undo) = if args.no_switch {
        (Box::new(NoSwitch) as Box<dyn Dataplane>, None)
    } else {
        let (dp, undo) = crate::dataplane::start(args, &cfg)
            .map_err(|e| DaemonError::Dataplane(crate::api::error_chain(&e)))?;
        (dp, Some(undo))
    };
    let node_cfg = node_config(args, &cfg)?;
    let mut core = Core::open(store, cfg, dp)?;
    if let Some(ncfg) = node_cfg {
        let wake = handle.clone();
        let node = Node::start(ncfg, Arc::new(move || wake.wake()))
            .map_err(|e| DaemonError::Cluster(e.to_string()));
        let joined = node.and_then(|n| {
            core.join_cluster(n, JOIN_WAIT)
                .map_err(|e| DaemonError::Cluster(e.message))
        });
        if let Err(e) = joined {
            core.into_dataplane().shutdown();
            return Err(e);
        }
    }
    let mgmt = spawn_management_on(core, &handle, mgmt_rx)?;
    let started = (|| -> Result<_, DaemonError> {
        let ec2 = match ec2_listener {
            Some(l) => Some(
                crate::ec2::Ec2Server::serve(l, Arc::new(handle.clone()))
                    .map_err(DaemonError::Ec2)?,
            ),
            None => None,
        };
        // 5. Ready.
        server.publish(&cli.socket)?;
        Ok(ec2)
    })();
    let ec2 = match started {
        Ok(ec2) => ec2,
        Err(e) => {
            stop_core(&handle, mgmt);
            return Err(e);
        }
    };
    if let Some(u) = uplink_undo.as_mut() {
        u.disarm();
    }
    lock.keep();
    if let Some(e) = &ec2 {
        eprintln!("sgswitch: ec2 api on http://{}", e.local_addr());
    }
    if let Some(m) = &metrics {
        eprintln!("sgswitch: metrics on http://{}/metrics", m.local_addr());
    }
    eprintln!("sgswitch: ready on {}", server.path().display());
    tracing::info!(
        pid = std::process::id(),
        state_dir = %args.state_dir.display(),
        subnet = %args.subnet,
        "daemon started"
    );
    sd_notify("READY=1");

    let sig = signals.wait().map_err(DaemonError::Signals)?;
    tracing::info!("{sig:?}: shutting down");
    sd_notify("STOPPING=1");
    drop(metrics);
    drop(ec2);
    server.stop();
    stop_core(&handle, mgmt);
    tracing::info!("stopped");
    drop(lock);
    Ok(())
}

/// Stop the management thread and shut the data plane down.
fn stop_core(handle: &MgmtHandle, mgmt: JoinHandle<Core>) {
    handle.stop();
    match mgmt.join() {
        Ok(core) => {
            let mut dp = core.into_dataplane();
            dp.shutdown();
        }
        Err(_) => tracing::error!("the management thread panicked"),
    }
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader, Write};
    use std::os::unix::net::UnixStream;
    use std::time::Duration;

    use super::*;
    use crate::api::{Command, MAX_CONNECTIONS, MAX_LINE, Response, WireReply};
    use crate::testutil::*;

    /// `--worker-priority fifo` with `--poll busy` is refused before
    /// anything is made, naming both options; with adaptive polling it is
    /// taken, and the switch gets the priority.
    #[test]
    fn fifo_workers_are_refused_with_busy_polling() {
        let up = |extra: &[&str]| {
            let mut argv = vec!["sgswitch", "up"];
            argv.extend_from_slice(extra);
            let (cli, _) = crate::cli::parse(argv.iter().map(|a| a.to_string())).expect("parse");
            let crate::cli::Cmd::Up(args) = &cli.cmd else {
                panic!("not up")
            };
            (core_config(&cli, args).err(), args.clone())
        };
        let (e, _) = up(&["--worker-priority", "fifo", "--poll", "busy"]);
        let msg = e.expect("refused").to_string();
        assert!(
            msg.contains("--worker-priority fifo") && msg.contains("--poll busy"),
            "{msg}"
        );
        let (e, a) = up(&["--worker-priority", "fifo"]);
        assert!(e.is_none(), "{e:?}");
        assert_eq!(a.worker_priority, crate::sched::WorkerPriority::Fifo);
        let (e, a) = up(&["--poll", "busy"]);
        assert!(e.is_none(), "{e:?}");
        assert_eq!(a.worker_priority, crate::sched::WorkerPriority::Normal);
        assert!(
            crate::cli::parse(["sgswitch", "up", "--worker-priority", "rr"].map(String::from))
                .is_err()
        );
    }

    /// A management thread and socket server around a recording core.
    struct Fixture {
        _dir: TempDir,
        sock: PathBuf,
        server: Option<Server>,
        handle: MgmtHandle,
        mgmt: Option<JoinHandle<Core>>,
    }

    impl Fixture {
        fn new(tag: &str) -> Fixture {
            let dir = TempDir::new(tag);
            let core = core_in(&dir, config());
            let sock = dir.0.join("run").join("api.sock");
            let socket = bind_socket(&sock).unwrap();
            let (handle, mgmt) = spawn_management(core).unwrap();
            let server = Server::start(socket, Arc::new(handle.clone())).unwrap();
            Fixture {
                _dir: dir,
                sock,
                server: Some(server),
                handle,
                mgmt: Some(mgmt),
            }
        }

        fn groups(&self) -> usize {
            match api::call(&self.sock, &req(Command::DescribeGroups { groups: vec![] })).unwrap() {
                Ok(Response::Groups { groups }) => groups.len(),
                other => panic!("daemon not answering: {other:?}"),
            }
        }

        fn connect(&self) -> (UnixStream, BufReader<UnixStream>) {
            let s = UnixStream::connect(&self.sock).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let r = BufReader::new(s.try_clone().unwrap());
            (s, r)
        }
    }

    impl Drop for Fixture {
        fn drop(&mut self) {
            if let Some(s) = self.server.take() {
                s.stop();
            }
            self.handle.stop();
            if let Some(m) = self.mgmt.take() {
                let _ = m.join();
            }
        }
    }

    fn read_reply(r: &mut BufReader<UnixStream>) -> WireReply {
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("bad reply line {line:?}: {e}"))
    }

    fn error_code(w: WireReply) -> api::ErrorCode {
        match w {
            WireReply::Error(e) => e.code,
            WireReply::Ok(v) => panic!("expected an error, got {v:?}"),
        }
    }

    #[test]
    fn socket_round_trip_and_mode_0600() {
        use std::os::unix::fs::PermissionsExt;
        let f = Fixture::new("sock-rt");
        let mode = std::fs::metadata(&f.sock).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let r = api::call(
            &f.sock,
            &req(Command::AddGroup {
                name: "web".into(),
                description: "w".into(),
            }),
        )
        .unwrap();
        assert!(matches!(r, Ok(Response::GroupAdded { .. })), "{r:?}");
        let r = api::call(
            &f.sock,
            &req(Command::AddGroup {
                name: "web".into(),
                description: "w".into(),
            }),
        )
        .unwrap();
        assert_eq!(r.unwrap_err().code, "InvalidGroup.Duplicate");
        assert_eq!(f.groups(), 2);
        // Several requests on one connection, answered in order.
        let (mut s, mut r) = f.connect();
        for name in ["a", "b"] {
            let line = serde_json::to_string(&req(Command::AddGroup {
                name: name.into(),
                description: "".into(),
            }))
            .unwrap();
            writeln!(s, "{line}").unwrap();
        }
        for name in ["a", "b"] {
            match read_reply(&mut r) {
                WireReply::Ok(Response::GroupAdded { name: n, .. }) => assert_eq!(n, name),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(f.groups(), 4);
    }

    #[test]
    fn a_second_daemon_on_a_live_socket_is_refused_and_a_stale_one_replaced() {
        let f = Fixture::new("sock-busy");
        assert!(matches!(
            bind_socket(&f.sock),
            Err(DaemonError::SocketBusy(_))
        ));
        let stale = f._dir.0.join("stale.sock");
        drop(UnixListener::bind(&stale).unwrap());
        assert!(stale.exists());
        let s = bind_socket(&stale).unwrap();
        drop(s);
        assert!(!stale.exists(), "socket file removed on drop");
    }

    #[test]
    fn hostile_input_gets_errors_and_the_daemon_keeps_answering() {
        let f = Fixture::new("sock-hostile");
        let before = f.groups();
        let (mut s, mut r) = f.connect();
        // Garbage, then a valid request on the same connection.
        s.write_all(b"hello there\n").unwrap();
        assert_eq!(
            error_code(read_reply(&mut r)),
            api::ErrorCode::MalformedRequest
        );
        // Invalid UTF-8.
        s.write_all(b"\xff\xfe\x00{\"owner\"\n").unwrap();
        assert_eq!(
            error_code(read_reply(&mut r)),
            api::ErrorCode::MalformedRequest
        );
        // Valid JSON of the wrong shape, unknown op, wrong types.
        s.write_all(b"{\"command\":{\"op\":\"format-disk\"}}\n[1,2,3]\n{\"command\":{\"op\":\"delete-group\",\"name\":7}}\n")
            .unwrap();
        for _ in 0..3 {
            assert_eq!(
                error_code(read_reply(&mut r)),
                api::ErrorCode::MalformedRequest
            );
        }
        // Deeply nested JSON (stack exhaustion attempt).
        let deep = format!("{}{}\n", "[".repeat(100_000), "]".repeat(100_000));
        s.write_all(deep.as_bytes()).unwrap();
        assert_eq!(
            error_code(read_reply(&mut r)),
            api::ErrorCode::MalformedRequest
        );
        // Still a working connection.
        let line = serde_json::to_string(&req(Command::Stats)).unwrap();
        writeln!(s, "{line}").unwrap();
        assert!(matches!(
            read_reply(&mut r),
            WireReply::Ok(Response::Stats { .. })
        ));
        drop((s, r));

        // A line longer than the cap: an error, then the connection is closed.
        let (s, mut r) = f.connect();
        let mut w = s.try_clone().unwrap();
        let writer = std::thread::spawn(move || {
            let chunk = vec![b'x'; 64 * 1024];
            let mut sent = 0;
            while sent <= MAX_LINE + 1024 {
                if w.write_all(&chunk).is_err() {
                    break;
                }
                sent += chunk.len();
            }
        });
        assert_eq!(
            error_code(read_reply(&mut r)),
            api::ErrorCode::RequestTooLarge
        );
        let mut rest = String::new();
        assert_eq!(
            r.read_line(&mut rest).unwrap_or(0),
            0,
            "closed after an oversized line"
        );
        writer.join().unwrap();

        // Half a request, then close.
        let (mut s, _r) = f.connect();
        s.write_all(br#"{"owner":null,"command":{"op":"add-gr"#)
            .unwrap();
        drop(s);

        // Connect and close without a byte.
        drop(UnixStream::connect(&f.sock).unwrap());

        assert_eq!(f.groups(), before, "nothing changed");
    }

    #[test]
    fn connections_beyond_the_limit_are_refused_then_served_again() {
        let f = Fixture::new("sock-limit");
        let held: Vec<_> = (0..MAX_CONNECTIONS).map(|_| f.connect()).collect();
        // Each held connection is being served: prove it with a request.
        let (mut s0, mut r0) = f.connect();
        let refused = read_reply(&mut r0);
        assert_eq!(error_code(refused), api::ErrorCode::ServiceUnavailable);
        let _ = s0.write_all(b"\n");
        drop(held);
        // The served threads notice EOF and free their slots.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let (mut s, mut r) = f.connect();
            let line = serde_json::to_string(&req(Command::Stats)).unwrap();
            let _ = writeln!(s, "{line}");
            let mut reply = String::new();
            let _ = r.read_line(&mut reply);
            if reply.contains("\"ok\"") {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "slots never freed: {reply}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    #[test]
    fn a_panicking_command_is_answered_and_the_daemon_goes_on() {
        let dir = TempDir::new("mgmt-panic");
        let dp = crate::testutil::RecordingDataplane::default();
        let core = core_with(&dir, config(), dp.clone());
        let before = core.dump();
        let (handle, join) = spawn_management(core).unwrap();
        dp.state.lock().unwrap().panic_on_launch = true;
        let r = handle.call(run_one());
        assert_eq!(r.unwrap_err().code, api::ErrorCode::InternalError);
        assert!(handle.call(req(Command::Stats)).is_ok(), "still answering");
        handle.stop();
        let core = join.join().unwrap();
        assert_eq!(core.dump(), before, "nothing changed");
    }

    #[test]
    fn concurrent_clients_edits_are_all_applied_once() {
        let f = Fixture::new("sock-concurrent");
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let sock = f.sock.clone();
                std::thread::spawn(move || {
                    let group = format!("g{t}");
                    let add = Command::AddGroup {
                        name: group.clone(),
                        description: String::new(),
                    };
                    assert!(api::call(&sock, &req(add)).unwrap().is_ok());
                    for p in 0..25 {
                        let spec = filter::model::RuleSpec {
                            proto: Some("tcp".into()),
                            ports: Some(format!("{}", 1000 + p)),
                            ..Default::default()
                        };
                        let r = api::call(
                            &sock,
                            &req(Command::Authorize {
                                egress: false,
                                group: group.as_str().into(),
                                permissions: vec![spec.into()],
                            }),
                        );
                        assert!(r.unwrap().is_ok());
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let Ok(Response::Stats { stats }) = api::call(&f.sock, &req(Command::Stats)).unwrap()
        else {
            panic!()
        };
        assert_eq!(stats.groups, 9);
        assert_eq!(stats.rules, 1 + 8 * 25);
        assert_eq!(
            stats.edits,
            1 + 8 * 26,
            "the default group at open plus every command"
        );
        assert_eq!(stats.generation, stats.edits, "one generation per edit");
    }

    /// Issue 13: a launch in flight (its data plane waits at a gate) does not
    /// hold other requests: an authorize sent meanwhile is answered and
    /// published first; the launch is answered once it is made.
    #[test]
    fn an_edit_is_answered_while_a_launch_is_in_flight() {
        let dir = TempDir::new("mgmt-inflight");
        let (dp, gate) = crate::testutil::RecordingDataplane::gated();
        let core = core_with(&dir, config(), dp.clone());
        let (handle, join) = spawn_management(core).unwrap();
        let (ltx, lrx) = mpsc::channel();
        let h = handle.clone();
        let launch = std::thread::spawn(move || ltx.send(h.call(run_one())).unwrap());
        dp.wait_at_gate(1);
        let published = dp.state.lock().unwrap().published.len();
        let (etx, erx) = mpsc::channel();
        let h = handle.clone();
        std::thread::spawn(move || {
            let _ = etx.send(h.call(req(Command::Authorize {
                egress: false,
                group: "default".into(),
                permissions: vec![
                    filter::model::RuleSpec {
                        proto: Some("tcp".into()),
                        ports: Some("22".into()),
                        cidrs: vec!["10.0.0.0/8".into()],
                        ..Default::default()
                    }
                    .into(),
                ],
            })));
        });
        let answer = erx
            .recv_timeout(Duration::from_secs(5))
            .expect("the authorize waits for the launch");
        assert!(answer.is_ok(), "{answer:?}");
        assert_eq!(dp.state.lock().unwrap().published.len(), published + 1);
        assert!(lrx.try_recv().is_err(), "the launch is not answered yet");
        assert_eq!(dp.at_gate(), 1);
        gate.open();
        let r = lrx.recv_timeout(Duration::from_secs(10)).unwrap();
        let Ok(Response::Reservations { reservations }) = r else {
            panic!("{r:?}")
        };
        assert_eq!(reservations[0].instances.len(), 1);
        launch.join().unwrap();
        handle.stop();
        let core = join.join().unwrap();
        assert_eq!(core.model().instances().len(), 1);
    }

    /// Stop with a launch in flight: the management thread waits for it and
    /// commits it (answered, not lost), refusing new requests meanwhile.
    #[test]
    fn stop_finishes_the_launches_in_flight() {
        let dir = TempDir::new("mgmt-stop-inflight");
        let (dp, gate) = crate::testutil::RecordingDataplane::gated();
        let core = core_with(&dir, config(), dp.clone());
        let (handle, join) = spawn_management(core).unwrap();
        let h = handle.clone();
        let launch = std::thread::spawn(move || h.call(run_one()));
        dp.wait_at_gate(1);
        handle.stop();
        let r = handle.call(req(Command::Stats));
        assert_eq!(r.unwrap_err().code, "ServiceUnavailable");
        gate.open();
        let core = join.join().unwrap();
        let r = launch.join().unwrap();
        assert!(r.is_ok(), "{r:?}");
        assert_eq!(core.model().instances().len(), 1);
        assert_eq!(core.in_flight(), 0);
        drop(core);
        let core = core_in(&dir, config());
        assert_eq!(core.model().instances().len(), 1, "committed");
    }

    /// Group commit: an edit is answered only once its commit is fsynced,
    /// which runs after the core's lock is released; where the fsync fails
    /// the edit is not acknowledged.
    #[test]
    fn an_edit_is_answered_only_once_durable() {
        let dir = TempDir::new("mgmt-durable");
        let core = core_in(&dir, config());
        let (handle, join) = spawn_management(core).unwrap();
        let add = |name: &str| {
            handle.call(req(Command::AddGroup {
                name: name.into(),
                description: "d".into(),
            }))
        };
        assert!(add("web").is_ok());
        let syncer = lock(&handle.shared).syncer.clone().expect("syncer");
        assert_eq!(syncer.behind(), 0, "synced before the answer");
        // The files vanish (the disk fails): the commit itself still works
        // on SQLite's open descriptors, the fsync cannot.
        let db = dir.0.join(crate::store::DB_FILE);
        std::fs::remove_file(&db).unwrap();
        std::fs::remove_file(db.with_extension("db-wal")).unwrap();
        let err = add("db").unwrap_err();
        assert_eq!(err.code, ErrorCode::InternalError);
        assert!(err.message.contains("power cut"), "{}", err.message);
        assert!(err.message.contains("sgswitch.db"), "{}", err.message);
        handle.stop();
        drop(join.join().unwrap());
    }

    #[test]
    fn management_thread_returns_the_core_on_stop() {
        let dir = TempDir::new("mgmt-stop");
        let core = core_in(&dir, config());
        let (handle, join) = spawn_management(core).unwrap();
        assert!(handle.call(req(Command::Stats)).is_ok());
        handle.stop();
        let core = join.join().unwrap();
        assert!(core.generation() >= 1);
        let r = handle.call(req(Command::Stats));
        assert_eq!(r.unwrap_err().code, "ServiceUnavailable");
    }
}
