//! The daemon's event log (no root: `up --no-switch`): `--log-level` filters
//! (at `warn` no edit line, at `info` one per edit with owner, command, result
//! and generation), every text line carries a timestamp, `--log-format json`
//! writes one JSON object per line, EC2 requests are logged with their
//! request id (authentication failures at warn, with the key they named), and
//! the `sgswitch: ... on` lines scripts read stay exactly as they were.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_sgswitch");

struct Run {
    dir: PathBuf,
    child: Child,
    lines: mpsc::Receiver<String>,
    socket: PathBuf,
}

impl Drop for Run {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn start(tag: &str, extra: &[&str]) -> (Run, Vec<String>, u16) {
    let dir = std::env::temp_dir().join(format!("sgswitch-evlog-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let socket = dir.join("sgswitch.sock");
    let mut child = Command::new(BIN)
        .args(["up", "--no-switch", "--ec2-listen", "127.0.0.1:0"])
        .args(extra)
        .arg("--state-dir")
        .arg(dir.join("state"))
        .arg("--socket")
        .arg(&socket)
        .env_remove("RUST_LOG")
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
    let ready = format!("sgswitch: ready on {}", socket.display());
    let mut before = Vec::new();
    let mut port = 0;
    loop {
        let line = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("daemon never became ready");
        if let Some(a) = line.strip_prefix("sgswitch: ec2 api on http://127.0.0.1:") {
            port = a.parse().expect("ec2 port");
        }
        let done = line == ready;
        before.push(line);
        if done {
            break;
        }
    }
    assert_ne!(port, 0, "no `sgswitch: ec2 api on` line: {before:?}");
    (
        Run {
            dir,
            child,
            lines: rx,
            socket,
        },
        before,
        port,
    )
}

impl Run {
    fn cli(&self, args: &[&str]) -> i32 {
        Command::new(BIN)
            .args(args)
            .env("SGSWITCH_SOCKET", &self.socket)
            .env_remove("SGSWITCH_OWNER")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("run sgswitch")
            .code()
            .unwrap_or(-1)
    }

    /// SIGTERM, wait, and every stderr line after ready.
    fn stop(mut self) -> Vec<String> {
        let ok = Command::new("kill")
            .args(["-s", "TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
        for _ in 0..200 {
            if self.child.try_wait().unwrap().is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let mut out = Vec::new();
        while let Ok(l) = self.lines.recv_timeout(Duration::from_secs(2)) {
            out.push(l);
        }
        out
    }
}

/// An unsigned EC2 request: refused (MissingAuthenticationToken), and a
/// request with an unknown access key (AuthFailure).
fn ec2_unauthenticated(port: u16) {
    for auth in [
        None,
        Some(
            "AWS4-HMAC-SHA256 Credential=AKIANOSUCHKEY0000000/20261206/us-east-1/ec2/aws4_request, SignedHeaders=host;x-amz-date, Signature=0000000000000000000000000000000000000000000000000000000000000000",
        ),
    ] {
        let body = "Action=DescribeSecurityGroups&Version=2016-11-15";
        let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect ec2");
        let mut req = format!(
            "POST / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/x-www-form-urlencoded\r\nX-Amz-Date: 20261206T010203Z\r\nContent-Length: {}\r\nConnection: close\r\n",
            body.len()
        );
        if let Some(a) = auth {
            req.push_str(&format!("Authorization: {a}\r\n"));
        }
        req.push_str("\r\n");
        req.push_str(body);
        s.write_all(req.as_bytes()).unwrap();
        let mut resp = String::new();
        let _ = s.read_to_string(&mut resp);
        assert!(resp.starts_with("HTTP/1.1 4"), "{resp}");
    }
}

/// Edits: one that works, one refused.
fn edits(r: &Run) {
    assert_eq!(r.cli(&["add-group", "web", "-d", "Web"]), 0);
    assert_eq!(r.cli(&["add-group", "web", "-d", "Web"]), 1);
    assert_eq!(r.cli(&["describe-group"]), 0);
}

fn is_timestamped(line: &str) -> bool {
    let b = line.as_bytes();
    b.len() > 20
        && b[..4].iter().all(u8::is_ascii_digit)
        && b[4] == b'-'
        && b[10] == b'T'
        && line[..30.min(line.len())].contains('Z')
}

#[test]
fn info_logs_every_edit_with_a_timestamp() {
    let (r, before, port) = start("info", &["--log-level", "info"]);
    assert!(
        before
            .iter()
            .any(|l| l.starts_with("sgswitch: ec2 api on http://"))
    );
    edits(&r);
    ec2_unauthenticated(port);
    let lines = r.stop();
    let all = lines.join("\n");
    let ok = lines
        .iter()
        .find(|l| l.contains("edit add-group by 111122223333: ok"))
        .unwrap_or_else(|| panic!("no edit line:\n{all}"));
    assert!(is_timestamped(ok), "{ok}");
    assert!(ok.contains("INFO"), "{ok}");
    assert!(ok.contains("generation"), "{ok}");
    assert!(
        all.contains("edit add-group by 111122223333: InvalidGroup.Duplicate"),
        "{all}"
    );
    // Reads are not edits.
    assert!(!all.contains("describe-groups"), "{all}");
    assert!(
        all.contains(
            "ec2 auth failure: DescribeSecurityGroups with key -: MissingAuthenticationToken"
        ),
        "{all}"
    );
    assert!(
        all.contains(
            "ec2 auth failure: DescribeSecurityGroups with key AKIANOSUCHKEY0000000: AuthFailure"
        ),
        "{all}"
    );
    for l in &lines {
        assert!(
            is_timestamped(l) || l.starts_with("sgswitch: "),
            "a log line without timestamp: {l}"
        );
    }
}

#[test]
fn warn_level_drops_the_info_edit_lines() {
    let (r, before, port) = start("warn", &["--log-level", "warn"]);
    assert!(
        before
            .iter()
            .any(|l| l.starts_with("sgswitch: ec2 api on http://"))
    );
    edits(&r);
    ec2_unauthenticated(port);
    let lines = r.stop();
    let all = lines.join("\n");
    assert!(!all.contains("edit add-group"), "{all}");
    assert!(!all.contains("INFO"), "{all}");
    // Auth failures are warnings: still there.
    assert!(all.contains("ec2 auth failure"), "{all}");
}

#[test]
fn json_format_is_one_object_per_line() {
    let (r, _, port) = start("json", &["--log-format", "json"]);
    edits(&r);
    ec2_unauthenticated(port);
    let lines = r.stop();
    let mut edits_seen = 0;
    let mut auth = 0;
    for l in &lines {
        if l.starts_with("sgswitch: ") {
            continue;
        }
        let v: serde_json::Value =
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
        let ts = v["timestamp"].as_str().expect("timestamp");
        assert!(is_timestamped(ts), "{ts}");
        assert!(v["level"].is_string() && v["message"].is_string(), "{l}");
        if v["command"] == "add-group" {
            edits_seen += 1;
            assert_eq!(v["owner"], "111122223333", "{l}");
            assert!(v["generation"].is_u64(), "{l}");
            assert!(
                v["result"] == "ok" || v["result"] == "InvalidGroup.Duplicate",
                "{l}"
            );
        }
        if v["action"] == "DescribeSecurityGroups" {
            auth += 1;
            assert_eq!(v["level"], "WARN", "{l}");
            assert!(
                v["request_id"].as_str().is_some_and(|s| s.len() == 36),
                "{l}"
            );
        }
    }
    assert_eq!(edits_seen, 2, "{lines:?}");
    assert_eq!(auth, 2, "{lines:?}");
}
