//! The daemon's start (issue 12, items 1-4), with the real daemon and switch
//! (needs root; skips itself otherwise, fails under `CI=true`):
//! * the socket appears only once the daemon is ready, and systemd's
//!   `NOTIFY_SOCKET` gets `READY=1` / `STOPPING=1`;
//! * one daemon per state dir, and an uplink another daemon holds is refused
//!   (a stale uplink of a killed daemon is re-attached);
//! * a `--subnet` overlapping a route of the daemon's namespace is refused;
//! * a start that fails (not root, busy metrics or EC2 port) says why and leaves
//!   nothing behind.
//!
//! Lab safety: uplinks live in namespaces these tests create; the conflicting
//! route of the overlap test is on a veth inside a namespace the test creates,
//! and the daemon of that test runs inside it (`ip netns exec`). Nothing is added
//! to the root namespace. Every daemon is killed by PID in a guard.

mod common;

use std::io::Read;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{BIN, Lab, instance_lines, not_root, sh};

/// A daemon process, killed by PID when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Proc {
    /// SIGTERM and wait (at most 10 s).
    fn term(&mut self) {
        let _ = sh(&["kill", "-TERM", &self.0.id().to_string()]);
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(10) {
            if self.0.try_wait().unwrap().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("daemon did not stop on SIGTERM");
    }
}

/// `sgswitch up` with the lab's uplink namespace and `state`/`socket` under the
/// lab's directory; `uplink` is the uplink's name; no EC2 API.
fn up(lab: &Lab, state: &str, socket: &str, uplink: &str) -> Command {
    up_ec2(lab, state, socket, uplink, "off")
}

/// [`up`] with `--ec2-listen ec2`.
fn up_ec2(lab: &Lab, state: &str, socket: &str, uplink: &str, ec2: &str) -> Command {
    let mut c = Command::new(BIN);
    c.args(["up", "--state-dir"])
        .arg(lab.dir.join(state))
        .arg("--socket")
        .arg(lab.dir.join(socket))
        .args(["--subnet", &lab.subnet, "--uplink", uplink])
        .args(["--uplink-netns", &lab.uplink_ns, "--ec2-listen", ec2])
        .env_remove("SGSWITCH_OWNER")
        .env_remove("NOTIFY_SOCKET")
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    c
}

/// Run `cmd` to its end (it must fail within 30 s): (exit code, stderr).
fn run_failing(cmd: &mut Command) -> (i32, String) {
    let mut child = Proc(cmd.stderr(Stdio::piped()).spawn().expect("spawn sgswitch"));
    let t0 = Instant::now();
    loop {
        if let Some(st) = child.0.try_wait().unwrap() {
            let mut err = String::new();
            child
                .0
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            return (st.code().unwrap_or(-1), err);
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "sgswitch up should have failed"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn uplink_exists(ns: &str, name: &str) -> bool {
    switch::netns::ifindex(Some(ns), name).is_ok()
}

fn cli_ok(socket: &Path, args: &[&str]) -> String {
    let out = Command::new(BIN)
        .args(args)
        .env("SGSWITCH_SOCKET", socket)
        .env_remove("SGSWITCH_OWNER")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "sgswitch {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn the_socket_appears_only_when_the_daemon_is_ready() {
    if not_root() {
        return;
    }
    let lab = Lab::new("r", "10.81.0.0/16");
    let socket = lab.dir.join("r.sock");
    for i in 0..10 {
        // A fresh uplink each time: a kept one would already exist.
        let uplink = format!("{}x{i}", lab.uplink);
        let mut d = Proc(
            up(&lab, "state", "r.sock", &uplink)
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        let t0 = Instant::now();
        while !socket.exists() {
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "start {i}: no socket"
            );
            assert!(d.0.try_wait().unwrap().is_none(), "start {i}: daemon died");
            std::thread::sleep(Duration::from_micros(100));
        }
        // The moment the socket is there, the uplink must be too.
        assert!(
            uplink_exists(&lab.uplink_ns, &uplink),
            "start {i}: the socket appeared before uplink {uplink} existed"
        );
        cli_ok(&socket, &["describe-group", "default"]);
        d.term();
        assert!(!socket.exists(), "start {i}: socket left after stop");
    }
}

#[test]
fn notify_socket_gets_ready_and_stopping() {
    if not_root() {
        return;
    }
    use std::os::linux::net::SocketAddrExt;
    let lab = Lab::new("n", "10.82.0.0/16");
    let socket = lab.dir.join("n.sock");
    let path = lab.dir.join("notify");
    let by_path = UnixDatagram::bind(&path).unwrap();
    let abstract_name = format!("sgsw-notify-{}", std::process::id());
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(&abstract_name).unwrap();
    let by_name = UnixDatagram::bind_addr(&addr).unwrap();
    for (target, rx) in [
        (path.display().to_string(), &by_path),
        (format!("@{abstract_name}"), &by_name),
    ] {
        rx.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut d = Proc(
            up(&lab, "state", "n.sock", &lab.uplink)
                .env("NOTIFY_SOCKET", &target)
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        let mut buf = [0u8; 256];
        let n = rx.recv(&mut buf).expect("no READY=1 on NOTIFY_SOCKET");
        assert_eq!(&buf[..n], b"READY=1", "{target}");
        // Ready means ready: the socket is there and answers.
        cli_ok(&socket, &["describe-group", "default"]);
        let _ = sh(&["kill", "-TERM", &d.0.id().to_string()]);
        let n = rx.recv(&mut buf).expect("no STOPPING=1 on NOTIFY_SOCKET");
        assert_eq!(&buf[..n], b"STOPPING=1", "{target}");
        d.term();
    }
}

#[test]
fn a_second_daemon_on_the_same_state_dir_is_refused() {
    if not_root() {
        return;
    }
    let mut lab = Lab::new("s", "10.83.0.0/16");
    lab.start();
    let pid = lab.daemon.as_ref().unwrap().id();
    let other_uplink = format!("{}b", lab.uplink);
    let (code, err) = run_failing(&mut up(&lab, "state", "second.sock", &other_uplink));
    assert_eq!(code, 1, "{err}");
    let want = format!(
        "state dir {} in use by PID {pid}",
        lab.dir.join("state").display()
    );
    assert!(err.contains(&want), "want {want:?} in: {err}");
    assert!(!lab.dir.join("second.sock").exists());
    assert!(!uplink_exists(&lab.uplink_ns, &other_uplink));
    // The first one still works: it launches an instance.
    let out = lab.cli(&["run-instances", "ami-eca54085"]);
    let lines = instance_lines(&out);
    assert_eq!(lines.len(), 1, "{out}");
    lab.instances.push(lines[0][1].clone());
    assert_eq!(lines[0][4], "running", "{out}");
}

#[test]
fn an_uplink_held_by_another_daemon_is_refused_a_stale_one_is_reattached() {
    if not_root() {
        return;
    }
    let mut lab = Lab::new("u", "10.84.0.0/16");
    lab.start();
    let (code, err) = run_failing(&mut up(&lab, "state2", "other.sock", &lab.uplink));
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!("uplink {}", lab.uplink)) && err.contains("--uplink"),
        "{err}"
    );
    assert!(err.contains("in use"), "{err}");
    assert!(!lab.dir.join("state2").exists(), "state2 left behind");
    lab.cli(&["describe-group", "default"]);
    // A daemon killed outright leaves its persistent uplink: the next start
    // re-attaches it (no carrier: nobody holds it).
    lab.stop("KILL");
    assert!(uplink_exists(&lab.uplink_ns, &lab.uplink));
    lab.start();
    lab.cli(&["describe-group", "default"]);
}

#[test]
fn a_subnet_overlapping_a_route_is_refused() {
    if not_root() {
        return;
    }
    let mut lab = Lab::new("o", "10.85.0.0/16");
    // The daemon runs inside this namespace, whose veth has a route to 10.85/16.
    let ns = format!("sgsw-host-o-{}", std::process::id());
    let (ok, out) = sh(&["ip", "netns", "add", &ns]);
    assert!(ok, "{out}");
    lab.extra_ns.push(ns.clone());
    for cmd in [
        "link add v0 type veth peer name v1",
        "link set v0 up",
        "link set v1 up",
        "route add 10.85.0.0/16 dev v0",
    ] {
        let mut args = vec!["ip", "-n", &ns];
        args.extend(cmd.split(' '));
        let (ok, out) = sh(&args);
        assert!(ok, "{cmd}: {out}");
    }
    let daemon = |subnet: &str| {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &ns, BIN, "up", "--state-dir"])
            .arg(lab.dir.join("state"))
            .arg("--socket")
            .arg(lab.dir.join("o.sock"))
            .args(["--subnet", subnet, "--uplink", &lab.uplink])
            .args(["--ec2-listen", "off"])
            .env_remove("SGSWITCH_OWNER")
            .env_remove("NOTIFY_SOCKET")
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        c
    };
    let (code, err) = run_failing(&mut daemon("10.85.0.0/16"));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("route 10.85.0.0/16 dev v0"), "{err}");
    assert!(err.contains("--subnet"), "{err}");
    assert!(
        !uplink_exists(&ns, &lab.uplink),
        "uplink made before the check"
    );
    assert!(!lab.dir.join("state").exists(), "state dir made");
    // A range inside the route is refused too, naming --uplink-range.
    let (code, err) =
        run_failing(daemon("10.86.0.0/16").args(["--uplink-range", "10.85.255.0/24"]));
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("--uplink-range 10.85.255.0/24") && err.contains("dev v0"),
        "{err}"
    );
    // A free subnet starts, and restarts: its own uplink's address and route
    // (10.86.255.1/16 on the uplink) are not a conflict.
    for _ in 0..2 {
        let mut d = Proc(
            daemon("10.86.0.0/16")
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        let t0 = Instant::now();
        while !lab.dir.join("o.sock").exists() {
            assert!(
                d.0.try_wait().unwrap().is_none(),
                "daemon refused a free subnet"
            );
            assert!(t0.elapsed() < Duration::from_secs(30), "never ready");
            std::thread::sleep(Duration::from_millis(20));
        }
        d.term();
    }
    let (_, addrs) = sh(&[
        "ip",
        "-n",
        &ns,
        "-4",
        "-o",
        "addr",
        "show",
        "dev",
        &lab.uplink,
    ]);
    assert!(addrs.contains("10.86.255.1/16"), "{addrs}");
}

#[test]
fn not_root_is_refused_and_creates_nothing() {
    if not_root() {
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let lab = Lab::new("p", "10.87.0.0/16");
    let dir = lab.dir.join("open");
    std::fs::create_dir(&dir).unwrap();
    // World-writable, so nothing but the daemon's own check stops it.
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let (code, err) = run_failing(
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", BIN])
            .args(["up", "--state-dir"])
            .arg(dir.join("state"))
            .arg("--socket")
            .arg(dir.join("run/sgswitch.sock"))
            .args(["--uplink", &lab.uplink, "--ec2-listen", "off"])
            .env_remove("NOTIFY_SOCKET")
            .stdin(Stdio::null())
            .stdout(Stdio::null()),
    );
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("needs root") && err.contains("CAP_NET_ADMIN"),
        "{err}"
    );
    let left: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
    assert!(left.is_empty(), "a refused start made {left:?}");
}

#[test]
fn a_busy_port_names_the_option_and_leaves_nothing() {
    if not_root() {
        return;
    }
    let lab = Lab::new("m", "10.88.0.0/16");
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().to_string();
    for option in ["--metrics-listen", "--ec2-listen"] {
        let mut cmd = if option == "--ec2-listen" {
            up_ec2(&lab, "state", "m.sock", &lab.uplink, &port)
        } else {
            let mut c = up(&lab, "state", "m.sock", &lab.uplink);
            c.args([option, &port]);
            c
        };
        let (code, err) = run_failing(&mut cmd);
        assert_eq!(code, 1, "{err}");
        assert!(
            err.contains(option) && err.contains(&port),
            "{option}: {err}"
        );
        assert!(err.contains("in use"), "{option}: {err}");
        assert!(
            !uplink_exists(&lab.uplink_ns, &lab.uplink),
            "{option}: uplink TAP left behind"
        );
        let left: Vec<_> = std::fs::read_dir(&lab.dir).unwrap().collect();
        assert!(left.is_empty(), "{option}: left {left:?}");
    }
}
