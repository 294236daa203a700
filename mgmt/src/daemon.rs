//! `sgswitch up`: the daemon. Starts the data plane, loads the state, serves the
//! API socket, and shuts down cleanly on SIGINT/SIGTERM.
//!
//! Threads and ownership:
//! * The **management thread** owns the [`Core`] (model, store, data plane). It
//!   takes [`Msg`]s from one channel and answers each before taking the next, so
//!   edits are applied one at a time, in arrival order.
//! * The **accept thread** runs [`api::serve`]; each connection gets its own
//!   thread that decodes requests and hands them to the management thread through
//!   a [`MgmtHandle`], waiting for the answer. A slow or hostile client only ever
//!   blocks its own thread.
//! * The optional **metrics thread** ([`crate::metrics`]) asks the management
//!   thread for statistics once a second.
//! * The main thread blocks SIGINT/SIGTERM before any thread is spawned (so every
//!   thread inherits the mask) and waits for them with `sigwait`.
//!
//! Readiness: once the socket is bound and the accept thread runs, the daemon
//! prints `sgswitch: ready on SOCKET` to stderr. Before that, the EC2 Query API
//! listener ([`crate::ec2`], `--ec2-listen`, default `127.0.0.1:8773`, `off`
//! disables) prints `sgswitch: ec2 api on http://ADDR` with the bound address
//! (port 0 picks a free one); a bind failure stops the start with an error
//! naming the address.
//!
//! Shutdown: stop accepting, remove the socket, stop the management thread, shut
//! the switch down (workers joined). The uplink TAP, the namespaces of running
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

use crate::api::{self, ApiError, Handler, Reply, Request, StatsReport};
use crate::cli::{Cli, DEFAULT_OWNER, UpArgs};
use crate::core::{Attachment, Core, CoreConfig, CoreError, Dataplane, default_uplink_range};
use crate::store::{InstanceRecord, Store, StoreError};

/// Errors of starting or running the daemon.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("invalid --owner: {0}")]
    Owner(#[source] filter::Ec2Error),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Core(#[from] CoreError),
    #[error("create socket directory {path}: {source}")]
    SocketDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("another daemon is already serving {0}")]
    SocketBusy(PathBuf),
    #[error("bind API socket {path}: {source}")]
    Bind {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("start {what}: {source}")]
    Spawn {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("block signals: {0}")]
    Signals(#[source] nix::Error),
    #[error("start data plane: {0}")]
    Dataplane(String),
    #[error("cannot serve the EC2 API (--ec2-listen): {0}")]
    Ec2(#[source] crate::ec2::Ec2Error),
    #[error("metrics on {addr}: {source}")]
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
    /// Stop and hand the core back.
    Stop,
}

/// A cloneable handle to the management thread; implements [`Handler`].
#[derive(Clone)]
pub struct MgmtHandle {
    tx: mpsc::Sender<Msg>,
}

impl MgmtHandle {
    /// Send `req` and wait for its answer.
    pub fn call(&self, req: Request) -> Reply {
        let (rtx, rrx) = mpsc::sync_channel(1);
        let gone = || ApiError::new("ServiceUnavailable", "the daemon is shutting down");
        self.tx.send(Msg::Request(req, rtx)).map_err(|_| gone())?;
        rrx.recv().map_err(|_| gone())?
    }

    /// Ask the management thread to stop (it returns the core from its join handle).
    pub fn stop(&self) {
        let _ = self.tx.send(Msg::Stop);
    }
}

impl Handler for MgmtHandle {
    fn handle(&self, req: Request) -> Reply {
        self.call(req)
    }
}

/// Start the management thread around `core`.
pub fn spawn_management(mut core: Core) -> Result<(MgmtHandle, JoinHandle<Core>), DaemonError> {
    let (tx, rx) = mpsc::channel::<Msg>();
    let join = std::thread::Builder::new()
        .name("sgswitch-mgmt".into())
        .spawn(move || {
            while let Ok(msg) = rx.recv() {
                match msg {
                    Msg::Request(req, reply) => {
                        // A bug in one command must not take the daemon down:
                        // answer InternalError and go on (the core undoes what the
                        // command staged and did not commit at its next request).
                        let answer =
                            std::panic::catch_unwind(AssertUnwindSafe(|| core.handle(req)))
                                .unwrap_or_else(|_| {
                                    Err(ApiError::internal(
                                        "the command failed unexpectedly; nothing was changed",
                                    ))
                                });
                        let _ = reply.send(answer);
                    }
                    Msg::Stop => break,
                }
            }
            core
        })
        .map_err(|source| DaemonError::Spawn {
            what: "management thread",
            source,
        })?;
    Ok((MgmtHandle { tx }, join))
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
        Err(ApiError::ec2(
            filter::Ec2Code::InsufficientInstanceCapacity,
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

/// The text of an error and all its causes, `: `-separated.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
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
    Ok(cfg)
}

/// Run the daemon until SIGINT/SIGTERM.
pub fn run(cli: &Cli, args: &UpArgs) -> Result<(), DaemonError> {
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGINT);
    signals.add(Signal::SIGTERM);
    signals.thread_block().map_err(DaemonError::Signals)?;

    let cfg = core_config(cli, args)?;
    // Bind first: a second daemon on the same socket must fail before it touches
    // the uplink or the instances' TAPs of the running one.
    let socket = bind_socket(&cli.socket)?;
    let ec2_listener = match args.ec2_listen {
        crate::cli::Ec2Listen::On(addr) => Some(crate::ec2::bind(addr).map_err(DaemonError::Ec2)?),
        crate::cli::Ec2Listen::Off => None,
    };
    let store = Store::open_dir(&args.state_dir)?;
    let dp: Box<dyn Dataplane> = if args.no_switch {
        Box::new(NoSwitch)
    } else {
        crate::dataplane::start(args, &cfg).map_err(|e| DaemonError::Dataplane(error_chain(&e)))?
    };
    let core = Core::open(store, cfg, dp)?;
    let (handle, mgmt) = spawn_management(core)?;
    let server = Server::start(socket, Arc::new(handle.clone()))?;
    let ec2 = match ec2_listener {
        Some(l) => Some(
            crate::ec2::Ec2Server::serve(l, Arc::new(handle.clone())).map_err(DaemonError::Ec2)?,
        ),
        None => None,
    };
    if let Some(e) = &ec2 {
        eprintln!("sgswitch: ec2 api on http://{}", e.local_addr());
    }
    let metrics = match args.metrics_listen {
        Some(addr) => Some(
            crate::metrics::start(addr, handle.clone())
                .map_err(|source| DaemonError::Metrics { addr, source })?,
        ),
        None => None,
    };
    if let Some(m) = &metrics {
        eprintln!("sgswitch: metrics on http://{}/metrics", m.local_addr());
    }
    eprintln!("sgswitch: ready on {}", server.path().display());

    let sig = signals.wait().map_err(DaemonError::Signals)?;
    eprintln!("sgswitch: {sig:?}: shutting down");
    drop(metrics);
    drop(ec2);
    server.stop();
    handle.stop();
    match mgmt.join() {
        Ok(core) => {
            let mut dp = core.into_dataplane();
            dp.shutdown();
        }
        Err(_) => eprintln!("sgswitch: the management thread panicked"),
    }
    eprintln!("sgswitch: stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader, Write};
    use std::os::unix::net::UnixStream;
    use std::time::Duration;

    use super::*;
    use crate::api::{Command, MAX_CONNECTIONS, MAX_LINE, Response, WireReply};
    use crate::testutil::*;

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
            match api::call(&self.sock, &req(Command::DescribeGroups { names: vec![] })).unwrap() {
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

    fn error_code(w: WireReply) -> String {
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
        assert_eq!(error_code(read_reply(&mut r)), api::MALFORMED_REQUEST);
        // Invalid UTF-8.
        s.write_all(b"\xff\xfe\x00{\"owner\"\n").unwrap();
        assert_eq!(error_code(read_reply(&mut r)), api::MALFORMED_REQUEST);
        // Valid JSON of the wrong shape, unknown op, wrong types.
        s.write_all(b"{\"command\":{\"op\":\"format-disk\"}}\n[1,2,3]\n{\"command\":{\"op\":\"delete-group\",\"name\":7}}\n")
            .unwrap();
        for _ in 0..3 {
            assert_eq!(error_code(read_reply(&mut r)), api::MALFORMED_REQUEST);
        }
        // Deeply nested JSON (stack exhaustion attempt).
        let deep = format!("{}{}\n", "[".repeat(100_000), "]".repeat(100_000));
        s.write_all(deep.as_bytes()).unwrap();
        assert_eq!(error_code(read_reply(&mut r)), api::MALFORMED_REQUEST);
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
        assert_eq!(error_code(read_reply(&mut r)), api::REQUEST_TOO_LARGE);
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
        assert_eq!(error_code(refused), api::BUSY);
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
        let dp = crate::core::RecordingDataplane::default();
        let core = core_with(&dir, config(), dp.clone());
        let before = core.dump();
        let (handle, join) = spawn_management(core).unwrap();
        dp.state.lock().unwrap().panic_on_launch = true;
        let r = handle.call(req(Command::RunInstances {
            ami: "ami-1".into(),
            count: 1,
            groups: vec![],
            qemu: false,
        }));
        assert_eq!(r.unwrap_err().code, api::INTERNAL_ERROR);
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
                                group: group.clone(),
                                spec,
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
