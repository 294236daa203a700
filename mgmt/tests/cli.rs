//! The real `sgswitch` binary without root: `sgswitch up --no-switch` serves the
//! API (groups and rules) and the CLI drives it. Checks the exact output lines,
//! exit codes, multi-call links, `--json`, clean shutdown on SIGTERM, and that
//! every acknowledged edit survives `kill -9`.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_sgswitch");

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("sgswitch-cli-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A daemon process, killed (by PID) when dropped.
struct Daemon {
    child: Child,
    socket: PathBuf,
}

impl Daemon {
    fn start(dir: &Path) -> Daemon {
        Daemon::start_with(dir, &[]).0
    }

    /// Start with extra `up` arguments; also returns the stderr lines before ready.
    fn start_with(dir: &Path, extra: &[&str]) -> (Daemon, Vec<String>) {
        let socket = dir.join("run/sgswitch.sock");
        let mut child = Command::new(BIN)
            .args(["up", "--no-switch", "--ec2-listen", "off"])
            .args(extra)
            .arg("--state-dir")
            .arg(dir.join("state"))
            .arg("--socket")
            .arg(&socket)
            .env_remove("SGSWITCH_OWNER")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn sgswitch up");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let want = format!("sgswitch: ready on {}", socket.display());
        let mut before = Vec::new();
        loop {
            match rx.recv_timeout(Duration::from_secs(20)) {
                Ok(line) if line == want => break,
                Ok(line) => before.push(line),
                Err(e) => {
                    let _ = child.kill();
                    panic!("daemon never became ready: {e}");
                }
            }
        }
        (Daemon { child, socket }, before)
    }

    fn signal(&mut self, sig: &str) {
        let ok = Command::new("kill")
            .args(["-s", sig, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
    }

    fn wait(&mut self) -> std::process::ExitStatus {
        for _ in 0..200 {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("daemon did not exit");
    }

    /// Run the CLI: (stdout, stderr, exit code).
    fn cli(&self, args: &[&str]) -> (String, String, i32) {
        run(Command::new(BIN)
            .args(args)
            .env("SGSWITCH_SOCKET", &self.socket)
            .env_remove("SGSWITCH_OWNER"))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn run(cmd: &mut Command) -> (String, String, i32) {
    let out = cmd.output().expect("run sgswitch");
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        out.status.code().unwrap_or(-1),
    )
}

#[test]
fn cli_output_errors_and_exit_codes() {
    let dir = TempDir::new("out");
    let d = Daemon::start(&dir.0);
    assert_eq!(
        d.cli(&["add-group", "web", "-d", "Web Servers"]),
        ("GROUP\tweb\tWeb Servers\n".into(), "".into(), 0)
    );
    assert_eq!(
        d.cli(&[
            "authorize",
            "web",
            "-P",
            "tcp",
            "-p",
            "80",
            "-s",
            "205.192.8.45/24"
        ]),
        (
            "GROUP\tweb\nPERMISSION\tweb\tALLOWS\ttcp\t80\t80\tFROM\tCIDR\t205.192.8.0/24\n".into(),
            "".into(),
            0
        )
    );
    assert_eq!(
        d.cli(&["authorize", "web", "-P", "icmp", "-t", "8:-1"]).2,
        0
    );
    assert_eq!(
        d.cli(&["add-group", "app", "-d", "Application Servers"]).2,
        0
    );
    assert_eq!(
        d.cli(&["authorize", "app", "-o", "web", "-u", "111122223333"])
            .0,
        "GROUP\tapp\nPERMISSION\tapp\tALLOWS\tall\t\t\tFROM\tUSER\t111122223333\tGRPNAME\tweb\n"
    );
    let (out, err, code) = d.cli(&["describe-group", "web", "app"]);
    assert_eq!((err.as_str(), code), ("", 0));
    assert_eq!(
        out,
        "GROUP\t111122223333\tweb\tWeb Servers\n\
         PERMISSION\tweb\tALLOWS\ttcp\t80\t80\tFROM\tCIDR\t205.192.8.0/24\n\
         PERMISSION\tweb\tALLOWS\ticmp\t8\t-1\tFROM\tCIDR\t0.0.0.0/0\n\
         GROUP\t111122223333\tapp\tApplication Servers\n\
         PERMISSION\tapp\tALLOWS\tall\t\t\tFROM\tUSER\t111122223333\tGRPNAME\tweb\n"
    );
    let before = d.cli(&["describe-group"]).0;
    // API errors: `Code: message` on stderr, exit 1, nothing changed.
    for (args, code) in [
        (
            &["add-group", "web", "-d", "again"][..],
            "InvalidGroup.Duplicate",
        ),
        (&["delete-group", "web"], "InvalidGroup.InUse"),
        (&["delete-group", "default"], "InvalidGroup.Reserved"),
        (
            &["authorize", "nosuch", "-P", "tcp", "-p", "1"],
            "InvalidGroup.NotFound",
        ),
        (
            &[
                "authorize",
                "web",
                "-P",
                "tcp",
                "-p",
                "80",
                "-s",
                "205.192.8.0/24",
            ],
            "InvalidPermission.Duplicate",
        ),
        (
            &["revoke", "web", "-P", "tcp", "-p", "81"],
            "InvalidPermission.NotFound",
        ),
        (
            &["authorize", "web", "-P", "tcp", "-p", "99999"],
            "InvalidParameterValue",
        ),
        (
            &["terminate-instances", "i-00000000"],
            "InvalidInstanceID.NotFound",
        ),
        (
            &["run-instances", "ami-eca54085", "-g", "nosuch"],
            "InvalidGroup.NotFound",
        ),
    ] {
        let (out, err, c) = d.cli(args);
        assert_eq!((out.as_str(), c), ("", 1), "{args:?}: {err}");
        assert!(
            err.starts_with(&format!("{code}: ")) && err.ends_with('\n'),
            "{args:?}: {err}"
        );
        assert_eq!(err.lines().count(), 1, "{err}");
    }
    assert_eq!(
        d.cli(&["describe-group"]).0,
        before,
        "state unchanged by errors"
    );
    // Usage errors exit 2.
    assert_eq!(d.cli(&["authorize"]).2, 2);
    assert_eq!(d.cli(&["authorize", "web", "-p", "22", "-t", "8:0"]).2, 2);
    assert_eq!(d.cli(&["revoke", "web", "-u", "111122223333"]).2, 2);
    assert_eq!(d.cli(&["frobnicate"]).2, 2);
    // --json.
    let (out, _, code) = d.cli(&["--json", "describe-group", "app"]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["version"], 1);
    assert_eq!(v["groups"][0]["name"], "app");
    // Another owner sees only its own default group.
    let (out, _, _) = d.cli(&["--owner", "444455556666", "describe-group"]);
    assert_eq!(
        out,
        "GROUP\t444455556666\tdefault\tdefault group\nPERMISSION\tdefault\tALLOWS\tall\t\t\tFROM\tUSER\t444455556666\tGRPNAME\tdefault\n"
    );
    // Stats.
    let (out, _, code) = d.cli(&["stats"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("MODEL\tgroups\t4\trules\t5\tinstances\t0\n"),
        "{out}"
    );
    // --help has the seed's examples.
    let (out, _, code) = d.cli(&["--help"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("sgswitch authorize default -P tcp -p 22"),
        "{out}"
    );
}

#[test]
fn multi_call_links_work() {
    let dir = TempDir::new("links");
    let d = Daemon::start(&dir.0);
    let bin = dir.0.join("bin");
    let (out, _, code) = run(Command::new(BIN).arg("install-links").arg(&bin));
    assert_eq!(code, 0, "{out}");
    assert_eq!(out.lines().count(), 8);
    let ec2 = |name: &str, args: &[&str]| {
        run(Command::new(bin.join(name))
            .args(args)
            .arg("--socket")
            .arg(&d.socket)
            .env_remove("SGSWITCH_OWNER"))
    };
    assert_eq!(
        ec2("ec2-add-group", &["db", "-d", "Databases"]).0,
        "GROUP\tdb\tDatabases\n"
    );
    assert_eq!(
        ec2(
            "ec2-authorize",
            &["db", "-P", "tcp", "-p", "5432", "-s", "10.0.0.0/8"]
        )
        .0,
        "GROUP\tdb\nPERMISSION\tdb\tALLOWS\ttcp\t5432\t5432\tFROM\tCIDR\t10.0.0.0/8\n"
    );
    assert!(
        ec2("ec2-describe-group", &["db"])
            .0
            .starts_with("GROUP\t111122223333\tdb\tDatabases\n")
    );
    assert_eq!(
        ec2(
            "ec2-revoke",
            &["db", "-P", "tcp", "-p", "5432", "-s", "10.0.0.0/8"]
        )
        .0,
        "GROUP\tdb\nPERMISSION\tdb\tALLOWS\ttcp\t5432\t5432\tFROM\tCIDR\t10.0.0.0/8\n"
    );
    // Egress rules (issue 15): the EC2 API tools' form, `ec2-authorize
    // --egress` / `ec2-revoke --egress`; the reply is in describe-group's
    // egress format.
    assert_eq!(
        ec2(
            "ec2-authorize",
            &[
                "db",
                "--egress",
                "-P",
                "tcp",
                "-p",
                "443",
                "-s",
                "10.0.0.0/8"
            ]
        )
        .0,
        "GROUP\tdb\nPERMISSION\tdb\tALLOWS\ttcp\t443\t443\tTO\tCIDR\t10.0.0.0/8\tegress\n"
    );
    assert_eq!(
        ec2(
            "ec2-revoke",
            &[
                "db",
                "--egress",
                "-P",
                "all",
                "-s",
                "0.0.0.0/0",
                "-s",
                "::/0"
            ]
        )
        .0,
        "GROUP\tdb\n\
         PERMISSION\tdb\tALLOWS\tall\t\t\tTO\tCIDR\t0.0.0.0/0\tegress\n\
         PERMISSION\tdb\tALLOWS\tall\t\t\tTO\tCIDR\t::/0\tegress\n"
    );
    assert_eq!(
        ec2("ec2-describe-group", &["db"]).0,
        "GROUP\t111122223333\tdb\tDatabases\n\
         PERMISSION\tdb\tALLOWS\ttcp\t443\t443\tTO\tCIDR\t10.0.0.0/8\tegress\n"
    );
    let (out, _, code) = ec2(
        "ec2-revoke",
        &[
            "db",
            "--egress",
            "-P",
            "tcp",
            "-p",
            "443",
            "-s",
            "10.0.0.0/8",
            "--json",
        ],
    );
    assert_eq!(code, 0, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        v["group"]["egress_permissions"][0]["source"]["cidr"], "10.0.0.0/8",
        "{v}"
    );
    assert!(v["group"].get("permissions").is_none(), "{v}");
    assert_eq!(
        ec2("ec2-describe-group", &["db"]).0,
        "GROUP\t111122223333\tdb\tDatabases\nEGRESS\tdb\tNONE\n"
    );
    let (help, _, _) = ec2("ec2-authorize", &["--help"]);
    assert!(
        help.contains("Usage: ec2-authorize ") && help.contains("--egress"),
        "{help}"
    );
    assert_eq!(ec2("ec2-delete-group", &["db"]).0, "GROUP\tdb\n");
    assert_eq!(
        ec2("ec2-describe-instances", &[]),
        ("".into(), "".into(), 0)
    );
}

#[test]
fn sigterm_shuts_down_cleanly_and_acknowledged_edits_survive_kill_9() {
    let dir = TempDir::new("crash");
    let mut d = Daemon::start(&dir.0);
    for i in 0..20 {
        let (_, err, code) = d.cli(&[
            "authorize",
            "default",
            "-P",
            "tcp",
            "-p",
            &format!("{}", 1000 + i),
        ]);
        assert_eq!(code, 0, "{err}");
    }
    d.signal("TERM");
    assert!(d.wait().success());
    assert!(!d.socket.exists(), "socket removed on shutdown");
    drop(d);

    let mut d = Daemon::start(&dir.0);
    let out = d.cli(&["describe-group", "default"]).0;
    assert_eq!(out.lines().count(), 1 + 1 + 20, "{out}");
    for i in 20..50 {
        assert_eq!(
            d.cli(&[
                "authorize",
                "default",
                "-P",
                "udp",
                "-p",
                &format!("{}", 2000 + i)
            ])
            .2,
            0
        );
    }
    d.signal("KILL");
    d.wait();
    drop(d);

    // The stale socket file is replaced; everything acknowledged is there.
    let d = Daemon::start(&dir.0);
    let out = d.cli(&["describe-group", "default"]).0;
    assert_eq!(out.lines().count(), 1 + 1 + 50, "{out}");
    for i in 20..50 {
        let want = format!(
            "PERMISSION\tdefault\tALLOWS\tudp\t{0}\t{0}\tFROM\tCIDR\t0.0.0.0/0\n",
            2000 + i
        );
        assert!(out.contains(&want), "missing {want}");
    }
}

#[test]
fn client_without_daemon_fails_with_exit_1() {
    let dir = TempDir::new("nodaemon");
    let (out, err, code) = run(Command::new(BIN)
        .args(["describe-group"])
        .env("SGSWITCH_SOCKET", dir.0.join("none.sock")));
    assert_eq!((out.as_str(), code), ("", 1));
    assert!(err.contains("cannot connect"), "{err}");
}

#[test]
fn a_second_daemon_on_the_same_socket_is_refused() {
    let dir = TempDir::new("second");
    let d = Daemon::start(&dir.0);
    let (_, err, code) = run(Command::new(BIN)
        .args(["up", "--no-switch", "--ec2-listen", "off", "--state-dir"])
        .arg(dir.0.join("state2"))
        .arg("--socket")
        .arg(&d.socket));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("already serving"), "{err}");
    // The first one is unaffected.
    assert_eq!(d.cli(&["describe-group", "default"]).2, 0);
}

#[test]
fn metrics_listen_serves_prometheus_text() {
    use std::io::{Read, Write};
    let dir = TempDir::new("metrics");
    let (d, lines) = Daemon::start_with(&dir.0, &["--metrics-listen", "127.0.0.1:0"]);
    let url = lines
        .iter()
        .find_map(|l| l.strip_prefix("sgswitch: metrics on http://"))
        .unwrap_or_else(|| panic!("no metrics line in {lines:?}"));
    let addr = url.trim_end_matches("/metrics").to_owned();
    assert_eq!(d.cli(&["add-group", "web", "-d", "w"]).2, 0);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let mut s = std::net::TcpStream::connect(&addr).unwrap();
        s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
        let mut body = String::new();
        s.read_to_string(&mut body).unwrap();
        if body.contains("sgswitch_groups 2") {
            assert!(body.contains("sgswitch_edit_latency_seconds"), "{body}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{body}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The JSON of one `--json` command: (document, exit code). Asserts that no
/// Rust enum spelling of the socket protocol leaks into it.
fn json_of(d: &Daemon, args: &[&str]) -> (serde_json::Value, i32) {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let (out, err, code) = d.cli(&all);
    let text = if code == 0 { &out } else { &err };
    for leak in [
        "\"Range\"",
        "\"None\"",
        "\"Cidr\"",
        "\"Icmp\"",
        "\"kind\"",
        "\"Group\"",
    ] {
        assert!(!text.contains(leak), "{args:?} printed {leak}: {text}");
    }
    let v: serde_json::Value =
        serde_json::from_str(text).unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}): {text}"));
    assert_eq!(v["version"], 1, "{args:?}: {v}");
    (v, code)
}

/// `--json` prints the documented, versioned shapes of docs/json.md for every
/// kind of answer (and errors on stderr), never the socket protocol's serde
/// spellings (`"ports": "None"`, `{"Range":[22,22]}`, `{"Cidr": ...}`).
#[test]
fn json_output_uses_the_documented_versioned_shapes() {
    let dir = TempDir::new("json");
    let d = Daemon::start(&dir.0);
    let (v, _) = json_of(&d, &["add-group", "web", "-d", "Web Servers"]);
    assert_eq!(v["group"]["name"], "web");
    assert_eq!(v["group"]["description"], "Web Servers");
    assert!(v["group"]["id"].as_str().unwrap().starts_with("sg-"), "{v}");
    json_of(&d, &["add-group", "app", "-d", "App"]);

    let (v, _) = json_of(&d, &["authorize", "web", "-P", "tcp", "-p", "22"]);
    assert_eq!(
        v,
        serde_json::json!({"version": 1, "group": {"name": "web", "permissions": [
            {"protocol": "tcp", "from_port": 22, "to_port": 22, "source": {"cidr": "0.0.0.0/0"}}
        ]}})
    );
    json_of(
        &d,
        &[
            "authorize",
            "web",
            "-P",
            "icmp",
            "-t",
            "8:-1",
            "-s",
            "10.1.2.3/8",
        ],
    );
    json_of(&d, &["authorize", "web", "-o", "app"]);
    let (v, _) = json_of(&d, &["describe-group", "web"]);
    let g = &v["groups"][0];
    assert_eq!(g["owner"], "111122223333");
    assert_eq!(g["name"], "web");
    assert_eq!(g["description"], "Web Servers");
    assert_eq!(
        g["permissions"],
        serde_json::json!([
            {"protocol": "tcp", "from_port": 22, "to_port": 22, "source": {"cidr": "0.0.0.0/0"}},
            {"protocol": "icmp", "icmp_type": 8, "icmp_code": null, "source": {"cidr": "10.0.0.0/8"}},
            {"protocol": "all", "source": {"group": "app", "owner": "111122223333"}}
        ])
    );
    let (v, _) = json_of(&d, &["revoke", "web", "-P", "tcp", "-p", "22"]);
    assert_eq!(v["group"]["permissions"][0]["from_port"], 22);
    let (v, _) = json_of(&d, &["add-group", "tmp", "-d", ""]);
    assert_eq!(v["group"]["name"], "tmp");
    let (v, _) = json_of(&d, &["delete-group", "tmp"]);
    assert_eq!(
        v,
        serde_json::json!({"version": 1, "group": {"name": "tmp"}})
    );
    let (v, _) = json_of(&d, &["describe-instances"]);
    assert_eq!(v, serde_json::json!({"version": 1, "reservations": []}));
    let (v, _) = json_of(&d, &["describe-images"]);
    assert_eq!(v, serde_json::json!({"version": 1, "images": []}));
    let (v, _) = json_of(&d, &["stats"]);
    let st = &v["stats"];
    assert_eq!(st["groups"], 3, "{v}");
    assert_eq!(st["rules"], 3, "{v}");
    assert!(st["edit_latency_us"]["p99"].is_u64(), "{v}");
    assert!(st["drops"].is_array() && st["events"].is_array(), "{v}");
    let (v, _) = json_of(&d, &["create-access-key"]);
    assert!(
        v["access_key"]["key_id"]
            .as_str()
            .unwrap()
            .starts_with("AKIA")
    );
    assert_eq!(v["access_key"]["owner"], "111122223333");
    // Listed (never the secret) and deleted (issue 16 item 8).
    let key_id = v["access_key"]["key_id"].as_str().unwrap().to_owned();
    let secret = v["access_key"]["secret"].as_str().unwrap().to_owned();
    let (v, code) = json_of(&d, &["describe-access-keys"]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["access_keys"][0]["key_id"], key_id.as_str(), "{v}");
    assert_eq!(v["access_keys"][0]["owner"], "111122223333", "{v}");
    assert!(!v.to_string().contains(&secret), "{v}");
    let (out, err, code) = d.cli(&["describe-access-keys"]);
    assert_eq!(code, 0, "{err}");
    let f: Vec<&str> = out.trim_end().split('\t').collect();
    assert_eq!(f[..3], ["KEY", key_id.as_str(), "111122223333"], "{out}");
    assert!(f[3].ends_with('Z') && f[3].len() == 20, "{out}");
    let (out, err, code) = d.cli(&["--owner", "444455556666", "describe-access-keys"]);
    assert_eq!((out.as_str(), code), ("", 0), "{err}");
    let (_, err, code) = d.cli(&["--owner", "444455556666", "delete-access-key", &key_id]);
    assert_eq!(code, 1);
    assert!(
        err.starts_with("InvalidParameterValue: ") && err.contains(&key_id),
        "{err}"
    );
    let (out, err, code) = d.cli(&["delete-access-key", &key_id]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.starts_with(&format!("KEY\t{key_id}\t111122223333\t")),
        "{out}"
    );
    let (v, _) = json_of(&d, &["describe-access-keys"]);
    assert_eq!(v["access_keys"], serde_json::json!([]), "{v}");
    // Errors: on stderr, exit 1, the same envelope.
    let (v, code) = json_of(&d, &["delete-group", "nosuch"]);
    assert_eq!(code, 1);
    assert_eq!(v["error"]["code"], "InvalidGroup.NotFound");
    assert!(v["error"]["message"].as_str().unwrap().contains("nosuch"));

    // Every payload key is documented.
    let doc =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/json.md"))
            .expect("docs/json.md");
    for key in [
        "groups",
        "group",
        "reservations",
        "instances",
        "images",
        "stats",
        "access_key",
        "access_keys",
        "error",
        "from_port",
        "icmp_type",
        "\"cidr\"",
        "previous_state",
    ] {
        assert!(doc.contains(key), "docs/json.md does not document {key}");
    }
}

/// Every clap command, in the order of a depth-first walk.
fn all_commands(c: &clap::Command) -> Vec<clap::Command> {
    let mut out = vec![c.clone()];
    for sub in c.get_subcommands() {
        out.extend(all_commands(sub));
    }
    out
}

/// Text that looks like a rustdoc link: `` [`x`] `` or `[snake_case]`.
fn rustdoc_link(text: &str) -> Option<&str> {
    if let Some(i) = text.find("[`") {
        return Some(&text[i..]);
    }
    let mut rest = text;
    while let Some(i) = rest.find('[') {
        let tail = &rest[i + 1..];
        let end = tail.find(']').unwrap_or(tail.len());
        let inner = &tail[..end];
        if !inner.is_empty()
            && inner
                .chars()
                .all(|c| c.is_ascii_lowercase() || c == '_' || c == ':')
            && end < tail.len()
        {
            return Some(&rest[i..]);
        }
        rest = tail;
    }
    None
}

/// Every option and argument of every command says what it is; no help text
/// carries code-doc links.
#[test]
fn every_option_has_help_and_no_help_has_rustdoc_links() {
    let root = mgmt::cli::command();
    let mut checked = 0;
    for cmd in all_commands(&root) {
        for text in [cmd.get_about(), cmd.get_long_about()]
            .into_iter()
            .flatten()
        {
            let t = text.to_string();
            assert!(
                rustdoc_link(&t).is_none(),
                "{}: about has a link: {t}",
                cmd.get_name()
            );
        }
        for arg in cmd.get_arguments() {
            let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
            assert!(
                !help.trim().is_empty(),
                "{} {}: no help text",
                cmd.get_name(),
                arg.get_id()
            );
            let long = arg
                .get_long_help()
                .map(|h| h.to_string())
                .unwrap_or_default();
            for t in [&help, &long] {
                assert!(
                    rustdoc_link(t).is_none(),
                    "{} {}: {t}",
                    cmd.get_name(),
                    arg.get_id()
                );
            }
            for v in arg.get_possible_values() {
                let h = v.get_help().map(|h| h.to_string()).unwrap_or_default();
                assert!(rustdoc_link(&h).is_none(), "{}: {h}", arg.get_id());
            }
            checked += 1;
        }
    }
    assert!(checked > 50, "only {checked} arguments walked");
    // The rendered help too (what users see).
    let (out, _, code) = run(Command::new(BIN).args(["up", "--help"]));
    assert_eq!(code, 0);
    assert!(rustdoc_link(&out).is_none(), "{out}");
    assert!(
        out.contains("--poll <POLL>\n          How workers wait for frames"),
        "{out}"
    );
}

/// `up` has no client-only options (`--json`), client commands do; the
/// socket's environment variable set (even empty) never makes `--socket`
/// required; multi-call names show themselves in usage.
#[test]
fn up_help_has_no_client_options_and_usage_names_are_right() {
    let (out, _, code) = run(Command::new(BIN).args(["up", "--help"]));
    assert_eq!(code, 0);
    assert!(!out.contains("--json"), "{out}");
    assert!(
        out.contains("--socket") && out.contains("--state-dir"),
        "{out}"
    );
    let (out, _, _) = run(Command::new(BIN).args(["describe-group", "--help"]));
    assert!(out.contains("--json") && out.contains("--owner"), "{out}");
    // `up --json` is a usage error, not silently ignored.
    let (_, err, code) = run(Command::new(BIN).args(["--json", "up", "--no-switch"]));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--json"), "{err}");

    // SGSWITCH_SOCKET set: usage shows --socket as an option, never required.
    let dir = TempDir::new("usage");
    let (out, _, code) = run(Command::new(BIN)
        .args(["describe-group", "--help"])
        .env("SGSWITCH_SOCKET", dir.0.join("s.sock")));
    assert_eq!(code, 0);
    let usage = out.lines().find(|l| l.starts_with("Usage:")).unwrap();
    assert!(!usage.contains("--socket"), "{usage}");
    // Set but empty: the default socket, not "a value is required".
    let (cli, _) =
        mgmt::cli::parse_with_env(["sgswitch", "describe-group"].map(String::from), |name| {
            (name == "SGSWITCH_SOCKET" || name == "SGSWITCH_OWNER").then(Default::default)
        })
        .unwrap();
    assert_eq!(cli.socket, Path::new(mgmt::cli::DEFAULT_SOCKET));
    assert_eq!(cli.owner, None);
    let (_, err, code) = run(Command::new(BIN)
        .args(["describe-group", "--socket"])
        .arg(dir.0.join("none.sock"))
        .env("SGSWITCH_SOCKET", "")
        .env("SGSWITCH_OWNER", ""));
    assert_eq!(code, 1, "{err}");
    assert!(!err.contains("required"), "{err}");
    // The option after the subcommand and before it, and the environment.
    let (cli, _) = mgmt::cli::parse_with_env(
        [
            "sgswitch",
            "--owner",
            "444455556666",
            "describe-group",
            "--socket",
            "/a",
        ]
        .map(String::from),
        |name| (name == "SGSWITCH_SOCKET").then(|| "/env".into()),
    )
    .unwrap();
    assert_eq!(
        (cli.socket.as_path(), cli.owner.as_deref()),
        (Path::new("/a"), Some("444455556666"))
    );
    let (cli, _) = mgmt::cli::parse_with_env(["sgswitch", "stats"].map(String::from), |name| {
        (name == "SGSWITCH_SOCKET").then(|| "/env".into())
    })
    .unwrap();
    assert_eq!(cli.socket, Path::new("/env"));

    // Multi-call names.
    let bin = dir.0.join("bin");
    run(Command::new(BIN).arg("install-links").arg(&bin));
    for (name, _) in mgmt::cli::MULTI_CALL {
        let (out, _, code) = run(Command::new(bin.join(name)).arg("--help"));
        assert_eq!(code, 0, "{name}");
        assert!(out.contains(&format!("Usage: {name} ")), "{name}: {out}");
        let (_, err, _) = run(Command::new(bin.join(name)).arg("--no-such-option"));
        assert!(err.contains(&format!("Usage: {name} ")), "{name}: {err}");
    }
}

/// Completions for bash, zsh and fish and man pages, generated from the same
/// clap definitions, name the subcommands and their options.
#[test]
fn completions_and_man_pages_are_generated() {
    for shell in ["bash", "zsh", "fish"] {
        let (out, err, code) = run(Command::new(BIN).args(["completions", shell]));
        assert_eq!(code, 0, "{shell}: {err}");
        for word in [
            "authorize",
            "describe-group",
            "run-instances",
            "port-range",
            "completions",
        ] {
            assert!(out.contains(word), "{shell} completions lack {word}");
        }
    }
    let (_, _, code) = run(Command::new(BIN).args(["completions", "tcsh-9"]));
    assert_eq!(code, 2);
    // To stdout without a directory.
    let (out, _, code) = run(Command::new(BIN).arg("man"));
    assert_eq!(code, 0);
    assert!(out.contains(".TH sgswitch"), "{out}");
    assert!(
        out.contains("authorize") && out.contains("run\\-instances"),
        "{out}"
    );
    // One page per command into a directory.
    let dir = TempDir::new("man");
    let (out, err, code) = run(Command::new(BIN).arg("man").arg(dir.0.join("man1")));
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out.lines().count(),
        all_commands(&mgmt::cli::command()).len(),
        "{out}"
    );
    let page = std::fs::read_to_string(dir.0.join("man1/sgswitch-authorize.1")).unwrap();
    assert!(page.contains(".TH sgswitch-authorize"), "{page}");
    assert!(page.contains("port\\-range"), "{page}");
    assert!(dir.0.join("man1/sgswitch.1").is_file());
}
