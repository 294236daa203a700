//! A QEMU guest behind the switch (needs root, `qemu-system-x86_64` and the guest
//! image of `scripts/build-guest-image.sh`; skips itself, saying why, otherwise).
//!
//! The guest's TAP is made inside a namespace this test creates; QEMU (TCG) holds
//! it, and `sgswitch attach-instance TAP --netns NS --mac MAC` attaches its kernel
//! side with AF_PACKET. The guest gets its address from the switch's DHCP server
//! (it prints `GUEST-READY <ip>`), its HTTP server is filtered from outside until
//! `authorize`, then serves its page and a 10 MiB random file whose MD5 must
//! match what the guest computed (TSO/checksum offloads end to end).
//!
//! `run-instances --qemu` is checked the same way, with the daemon booting the
//! guest itself (PLACE `qemu:PID`), across a daemon restart.
//!
//! Lab safety: all addresses (10.76.0.0/16, 10.75.0.0/16) live only in the test's namespaces;
//! QEMU is killed by PID and every namespace deleted in Drop guards. Waits are
//! bounded (boot 120 s, each HTTP request a few seconds).

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Lab, instance_lines, is_root, sh};

const SUBNET: &str = "10.76.0.0/16";
const OUTSIDE_ADDR: &str = "10.76.255.10";
const GUEST_MAC: &str = "52:54:00:76:00:01";

/// The QEMU process, killed by PID on drop.
struct Qemu(Child);

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn guest_image() -> Option<(PathBuf, PathBuf)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../guest/build");
    let (k, i) = (dir.join("vmlinuz"), dir.join("initrd.img"));
    (k.exists() && i.exists()).then_some((k, i))
}

fn curl(lab: &Lab, url: &str, out: Option<&std::path::Path>, secs: u32) -> (bool, String) {
    let mut args = vec!["ip", "netns", "exec", &lab.uplink_ns, "curl", "-s", "-m"];
    let secs = secs.to_string();
    args.push(&secs);
    let out_s;
    if let Some(p) = out {
        out_s = p.display().to_string();
        args.extend(["-o", &out_s]);
    }
    args.push(url);
    sh(&args)
}

#[test]
fn qemu_guest_attached_gets_dhcp_and_is_filtered_by_groups() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    if !sh(&[
        "sh",
        "-c",
        "command -v qemu-system-x86_64 && command -v curl",
    ])
    .0
    {
        eprintln!("skipped: qemu-system-x86_64 or curl not installed");
        return;
    }
    let Some((kernel, initrd)) = guest_image() else {
        eprintln!("skipped: no guest image (run scripts/build-guest-image.sh)");
        return;
    };
    let mut lab = Lab::new("q", SUBNET);
    lab.start();
    let pid = std::process::id();
    let ns_q = format!("sgsw-q-{pid}");
    let (ok, out) = sh(&["ip", "netns", "add", &ns_q]);
    assert!(ok, "{out}");
    lab.extra_ns.push(ns_q.clone());
    for cmd in [
        &[
            "ip", "netns", "exec", &ns_q, "ip", "tuntap", "add", "dev", "tq0", "mode", "tap",
            "vnet_hdr",
        ][..],
        &["ip", "-n", &ns_q, "link", "set", "tq0", "up"],
        &["ip", "-n", &lab.uplink_ns, "link", "set", "lo", "up"],
        &[
            "ip",
            "-n",
            &lab.uplink_ns,
            "addr",
            "add",
            &format!("{OUTSIDE_ADDR}/16"),
            "dev",
            &lab.uplink,
        ],
    ] {
        let (ok, out) = sh(cmd);
        assert!(ok, "{cmd:?}: {out}");
    }
    lab.cli(&["add-group", "web", "-d", "Web Servers"]);
    let out = lab.cli(&[
        "attach-instance",
        "tq0",
        "--netns",
        &ns_q,
        "--mac",
        GUEST_MAC,
        "-g",
        "web",
    ]);
    let inst = instance_lines(&out);
    assert_eq!(inst.len(), 1, "{out}");
    let (id, ip) = (inst[0][1].clone(), inst[0][3].clone());
    assert_eq!(inst[0][6], format!("port:tq0@{ns_q}"));

    let log = lab.dir.join("guest.log");
    let t0 = Instant::now();
    let qemu = Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns_q,
            "qemu-system-x86_64",
            "-accel",
            "tcg",
            "-m",
            "256",
            "-nographic",
        ])
        .args(["-no-reboot", "-kernel"])
        .arg(&kernel)
        .arg("-initrd")
        .arg(&initrd)
        .args(["-append", "console=ttyS0 quiet panic=-1"])
        .args([
            "-netdev",
            "tap,id=n0,ifname=tq0,script=no,downscript=no,vhost=off",
        ])
        .args([
            "-device",
            &format!("virtio-net-pci,netdev=n0,mac={GUEST_MAC}"),
        ])
        .arg("-serial")
        .arg(format!("file:{}", log.display()))
        .args(["-display", "none", "-monitor", "none"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start qemu");
    let _qemu = Qemu(qemu);
    let ready = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if let Some(line) = text.lines().find(|l| l.starts_with("GUEST-READY")) {
            break line.to_owned();
        }
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "guest not ready in 120 s:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(250));
    };
    println!("guest booted in {:?}: {ready}", t0.elapsed());
    assert_eq!(
        ready,
        format!("GUEST-READY {ip}"),
        "the switch's DHCP gave the guest its instance address"
    );
    let stats = lab.cli(&["stats"]);
    let dhcp = stats
        .lines()
        .find(|l| l.starts_with("EVENT\tdhcp_replies\t"))
        .unwrap_or("");
    assert!(
        dhcp.split('\t').nth(2).is_some_and(|n| n != "0"),
        "DHCP answered by the switch: {stats}"
    );

    let url = format!("http://{ip}/");
    assert!(
        !curl(&lab, &url, None, 2).0,
        "HTTP must be filtered before authorize"
    );
    lab.cli(&[
        "authorize",
        "web",
        "-P",
        "tcp",
        "-p",
        "80",
        "-s",
        &format!("{OUTSIDE_ADDR}/32"),
    ]);
    let (ok, page) = curl(&lab, &url, None, 5);
    assert!(ok && page.starts_with("sgswitch guest"), "{page}");

    // The big file: wait for the guest to announce it, then compare MD5s.
    let big = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if let Some(line) = text.lines().find(|l| l.starts_with("GUEST-BIG")) {
            break line.to_owned();
        }
        assert!(
            t0.elapsed() < Duration::from_secs(180),
            "no GUEST-BIG line:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(250));
    };
    let want_md5 = big
        .split_whitespace()
        .nth(2)
        .expect("GUEST-BIG SIZE MD5")
        .to_owned();
    let file = lab.dir.join("big.bin");
    let t = Instant::now();
    let (ok, out) = curl(&lab, &format!("http://{ip}/big.bin"), Some(&file), 60);
    assert!(ok, "{out}");
    let took = t.elapsed();
    let (_, md5) = sh(&["md5sum", &file.display().to_string()]);
    assert_eq!(
        md5.split_whitespace().next(),
        Some(want_md5.as_str()),
        "payload corrupted"
    );
    let bytes = std::fs::metadata(&file).unwrap().len();
    println!(
        "guest → outside: {bytes} bytes in {took:?} ({:.0} Mbit/s)",
        bytes as f64 * 8.0 / took.as_secs_f64() / 1e6
    );

    // Revoke: filtered again. Terminate: detached.
    lab.cli(&[
        "revoke",
        "web",
        "-P",
        "tcp",
        "-p",
        "80",
        "-s",
        &format!("{OUTSIDE_ADDR}/32"),
    ]);
    assert!(
        !curl(&lab, &url, None, 2).0,
        "HTTP filtered again after revoke"
    );
    lab.cli(&["terminate-instances", &id]);
    assert_eq!(lab.cli(&["describe-instances"]), "");
    lab.stop("TERM");
}

/// Wait for `prefix` in the guest's serial log.
fn wait_log(log: &std::path::Path, prefix: &str, t0: Instant, limit: Duration) -> String {
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(line) = text.lines().find(|l| l.starts_with(prefix)) {
            return line.to_owned();
        }
        assert!(
            t0.elapsed() < limit,
            "no {prefix} in {}:\n{text}",
            log.display()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn pid_alive(pid: &str) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

#[test]
fn run_instances_qemu_boots_guests_that_survive_a_daemon_restart() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    if !sh(&[
        "sh",
        "-c",
        "command -v qemu-system-x86_64 && command -v curl",
    ])
    .0
    {
        eprintln!("skipped: qemu-system-x86_64 or curl not installed");
        return;
    }
    let Some((kernel, initrd)) = guest_image() else {
        eprintln!("skipped: no guest image (run scripts/build-guest-image.sh)");
        return;
    };
    const OUTSIDE: &str = "10.75.255.10";
    let mut lab = Lab::new("r", "10.75.0.0/16");
    lab.up_args = vec![
        "--qemu-kernel".into(),
        kernel.display().to_string(),
        "--qemu-initrd".into(),
        initrd.display().to_string(),
    ];
    lab.start();
    for cmd in [
        &["ip", "-n", &lab.uplink_ns, "link", "set", "lo", "up"][..],
        &[
            "ip",
            "-n",
            &lab.uplink_ns,
            "addr",
            "add",
            &format!("{OUTSIDE}/16"),
            "dev",
            &lab.uplink,
        ],
    ] {
        let (ok, out) = sh(cmd);
        assert!(ok, "{cmd:?}: {out}");
    }
    lab.cli(&["add-group", "web", "-d", "Web Servers"]);
    let t0 = Instant::now();
    let out = lab.cli(&["run-instances", "ami-eca54085", "--qemu", "-g", "web"]);
    let inst = instance_lines(&out);
    assert_eq!(inst.len(), 1, "{out}");
    // Its namespace is named after it: the Lab removes it even if the test fails.
    lab.instances.push(inst[0][1].clone());
    let (id, ip, place) = (inst[0][1].clone(), inst[0][3].clone(), inst[0][6].clone());
    let pid = place
        .strip_prefix("qemu:")
        .unwrap_or_else(|| panic!("PLACE {place}"))
        .to_owned();
    lab.pids.push(pid.parse().expect("PID"));
    assert!(pid_alive(&pid), "guest process {pid} running");
    let log = lab.dir.join("state").join("qemu").join(format!("{id}.log"));
    let ready = wait_log(&log, "GUEST-READY", t0, Duration::from_secs(120));
    println!("--qemu guest booted in {:?}: {ready}", t0.elapsed());
    assert_eq!(ready, format!("GUEST-READY {ip}"));

    let url = format!("http://{ip}/");
    assert!(!curl(&lab, &url, None, 2).0, "filtered before authorize");
    lab.cli(&[
        "authorize",
        "web",
        "-P",
        "tcp",
        "-p",
        "80",
        "-s",
        &format!("{OUTSIDE}/32"),
    ]);
    let (ok, page) = curl(&lab, &url, None, 5);
    assert!(ok && page.starts_with("sgswitch guest"), "{page}");

    // The daemon restarts; the guest keeps running and is attached again.
    lab.stop("TERM");
    assert!(pid_alive(&pid), "guest survives a daemon restart");
    lab.start();
    let out = lab.cli(&["describe-instances"]);
    assert!(
        out.contains(&format!(
            "INSTANCE\t{id}\tami-eca54085\t{ip}\trunning\t0\tqemu:{pid}\n"
        )),
        "{out}"
    );
    let _ = sh(&[
        "ip",
        "-n",
        &lab.uplink_ns,
        "addr",
        "add",
        &format!("{OUTSIDE}/16"),
        "dev",
        &lab.uplink,
    ]);
    let (ok, page) = curl(&lab, &url, None, 5);
    assert!(
        ok && page.starts_with("sgswitch guest"),
        "after restart: {page}"
    );

    // Terminate stops the guest and removes its namespace.
    let out = lab.cli(&["terminate-instances", &id]);
    assert_eq!(out, format!("INSTANCE\t{id}\trunning\tshutting-down\n"));
    assert!(!pid_alive(&pid), "guest process stopped");
    assert!(!common::netns_exists(&id));
    lab.stop("TERM");
}
