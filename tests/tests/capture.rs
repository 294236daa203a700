//! `sgswitch capture` end to end: a capture at an instance while an allowed
//! TCP connect and a blocked probe happen, stopped by Ctrl-C (SIGINT); the
//! file reads back with `tcpdump -r`, and its packet comments name the drop
//! reason of the blocked probe. Then `-c 3 -w - | tcpdump -r -`: exactly 3
//! frames through a pipe. Needs root (skips without).

use std::fs::File;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use e2e::lab::{Bg, sgswitch_bin};
use e2e::{Lab, LabConfig, OUTSIDE, Reach};

fn start_capture(lab: &Lab, args: &[&str], out: &std::path::Path, err: &std::path::Path) -> Bg {
    let child = Command::new(sgswitch_bin())
        .arg("--socket")
        .arg(&lab.socket)
        .arg("capture")
        .args(args)
        .stdin(Stdio::null())
        .stdout(File::create(out).expect("stdout file"))
        .stderr(File::create(err).expect("stderr file"))
        .spawn()
        .expect("spawn sgswitch capture");
    Bg(child)
}

/// Wait until the daemon logged the start of the `n`th capture.
fn wait_started(lab: &Lab, n: usize) {
    let t0 = Instant::now();
    while lab.log_tail(400).matches("capture at ").count() < 2 * n - 1 {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "the capture did not start:\n{}",
            lab.log_tail(20)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Wait for the child to exit (bounded); its exit status.
fn wait_exit(bg: &mut Bg, within: Duration) -> std::process::ExitStatus {
    let t0 = Instant::now();
    loop {
        if let Some(st) = bg.0.try_wait().expect("wait") {
            return st;
        }
        assert!(
            t0.elapsed() < within,
            "the capture did not end within {within:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn capture_shows_allowed_and_blocked_frames_with_the_drop_reason() {
    let Some(lab) = Lab::start(LabConfig::new("capture")) else {
        return;
    };
    lab.cli_ok(&["add-group", "web", "-d", "capture test"]);
    let cidr = format!("{OUTSIDE}/32");
    lab.cli_ok(&["authorize", "web", "-P", "tcp", "-p", "80", "-s", &cidr]);
    let inst = lab.run_instances(1, &["web"]).remove(0);
    lab.listen(&inst.netns, &[80, 22]);

    // 1. Everything at the instance, stopped by Ctrl-C.
    let file = lab.dir.join("web.pcapng");
    let err = lab.dir.join("capture1.err");
    let mut bg = start_capture(
        &lab,
        &[
            &inst.id,
            "-w",
            file.to_str().expect("path"),
            "--duration",
            "30",
        ],
        &lab.dir.join("capture1.out"),
        &err,
    );
    wait_started(&lab, 1);
    // One capture at a time: a second is refused with a clear error.
    let refused = lab.dir.join("refused.pcapng");
    let second = lab.cli(&["capture", "all", "-w", refused.to_str().expect("path")]);
    assert!(!refused.exists(), "a refused capture makes no file");
    assert_eq!(second.code, Some(1), "{second:?}");
    assert!(
        second.stderr.contains("ServiceUnavailable") && second.stderr.contains("already running"),
        "{}",
        second.stderr
    );
    assert_eq!(lab.connect(&lab.uplink_ns, inst.ip, 80), Reach::Open);
    assert_eq!(lab.connect(&lab.uplink_ns, inst.ip, 22), Reach::Timeout);
    let pid = bg.0.id().to_string();
    let kill = Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .expect("kill");
    assert!(kill.success());
    let st = wait_exit(&mut bg, Duration::from_secs(10));
    let summary = std::fs::read_to_string(&err).unwrap_or_default();
    assert!(st.success(), "capture exited {st:?}: {summary}");
    assert!(summary.contains("stopped by client"), "{summary}");
    assert!(summary.contains("dropped: no_rule"), "{summary}");

    // tcpdump reads the file: the handshake to port 80 and the SYN to 22.
    let td = Command::new("tcpdump")
        .args(["-nn", "-r"])
        .arg(&file)
        .output()
        .expect("tcpdump");
    let text = String::from_utf8_lossy(&td.stdout);
    assert!(
        td.status.success(),
        "tcpdump -r failed: {}",
        String::from_utf8_lossy(&td.stderr)
    );
    let ip = inst.ip.to_string();
    println!("{summary}tcpdump -nn -r:\n{text}");
    assert!(text.contains(&format!("> {ip}.80: Flags [S]")), "{text}");
    assert!(
        text.contains(&format!("{ip}.80 > {OUTSIDE}.")),
        "no SYN-ACK:\n{text}"
    );
    assert!(text.contains(&format!("> {ip}.22: Flags [S]")), "{text}");

    // The packet comments: the SYN to 22 dropped for no_rule, the port 80
    // frames without a comment; directions from the instance's port.
    let read = lab.cli_ok(&["capture", "-r", file.to_str().expect("path")]);
    println!("capture -r:\n{read}");
    let lines: Vec<&str> = read.lines().collect();
    let to22: Vec<&&str> = lines
        .iter()
        .filter(|l| l.contains(&format!("> {ip}:22")))
        .collect();
    assert!(!to22.is_empty(), "{read}");
    for l in &to22 {
        assert!(l.contains(&format!(" {} out ", inst.id)), "{l}");
        assert!(l.ends_with("drop: no_rule"), "{l}");
    }
    assert!(
        lines.iter().any(|l| l.contains(&format!("TCP {ip}:80 >"))
            && l.contains(&format!(" {} in ", inst.id))
            && !l.contains("drop:")),
        "{read}"
    );

    // 2. --drops: only the dropped frames, each with its reason; the allowed
    // connection is not in the file. Ends by its duration.
    let file3 = lab.dir.join("drops.pcapng");
    let err3 = lab.dir.join("capture3.err");
    let mut bg = start_capture(
        &lab,
        &[
            &inst.id,
            "--drops",
            "--duration",
            "3",
            "-w",
            file3.to_str().expect("path"),
        ],
        &lab.dir.join("capture3.out"),
        &err3,
    );
    wait_started(&lab, 2);
    assert_eq!(lab.connect(&lab.uplink_ns, inst.ip, 80), Reach::Open);
    assert_eq!(lab.connect(&lab.uplink_ns, inst.ip, 22), Reach::Timeout);
    let st = wait_exit(&mut bg, Duration::from_secs(10));
    let summary = std::fs::read_to_string(&err3).unwrap_or_default();
    assert!(
        st.success() && summary.contains("stopped by duration"),
        "{summary}"
    );
    let td = Command::new("tcpdump")
        .args(["-nn", "-r"])
        .arg(&file3)
        .output()
        .expect("tcpdump");
    assert!(td.status.success());
    let read = lab.cli_ok(&["capture", "-r", file3.to_str().expect("path")]);
    println!(
        "--drops: {summary}tcpdump:\n{}{}capture -r:\n{read}",
        String::from_utf8_lossy(&td.stderr),
        String::from_utf8_lossy(&td.stdout)
    );
    assert!(read.lines().all(|l| l.contains("  drop: ")), "{read}");
    assert!(!read.contains(":80"), "{read}");
    assert!(
        read.lines()
            .any(|l| l.contains(&format!("> {ip}:22")) && l.ends_with("drop: no_rule")),
        "{read}"
    );

    // 3. Bounds: -c 3 through a pipe into tcpdump gives exactly 3 frames.
    let sh = format!(
        "{} --socket {} capture {} -c 3 -w - | tcpdump -nn -r - 2>/dev/null",
        sgswitch_bin().display(),
        lab.socket.display(),
        inst.id
    );
    let out2 = lab.dir.join("capture2.out");
    let err2 = lab.dir.join("capture2.err");
    let mut bg = Bg(Command::new("sh")
        .args(["-c", &sh])
        .stdin(Stdio::null())
        .stdout(File::create(&out2).expect("file"))
        .stderr(File::create(&err2).expect("file"))
        .spawn()
        .expect("sh"));
    wait_started(&lab, 3);
    for _ in 0..3 {
        assert_eq!(lab.connect(&lab.uplink_ns, inst.ip, 80), Reach::Open);
    }
    let st = wait_exit(&mut bg, Duration::from_secs(10));
    let frames = std::fs::read_to_string(&out2).unwrap_or_default();
    let summary = std::fs::read_to_string(&err2).unwrap_or_default();
    assert!(st.success(), "{summary}");
    assert!(
        summary.contains("captured 3 frames") && summary.contains("stopped by count"),
        "{summary}"
    );
    assert_eq!(frames.lines().count(), 3, "{frames}");
}
