//! QEMU guests behind the switch (needs root, `qemu-system-x86_64`, `curl`,
//! `nmap` and the guest image of `scripts/build-guest-image.sh`; skips itself,
//! saying why, otherwise).
//!
//! * `registered_image_guest_is_filtered_by_its_group_from_outside`:
//!   `register-image`, then `run-instances AMI --qemu -g web` (the daemon boots
//!   the guest, PLACE `qemu:PID`). The guest gets its instance address by DHCP
//!   from the switch (`GUEST-READY IP` in `STATE_DIR/qemu/ID.log`); nmap from the
//!   uplink namespace shows 80 open (web allows it from 0.0.0.0/0) and 22
//!   filtered; `authorize web -P tcp -p 22 -s OUTSIDE/32` opens 22, `revoke`
//!   filters it again; the guest's 10 MiB `big.bin` arrives intact (MD5 equal to
//!   the guest's `GUEST-BIG` line: checksum/TSO offloads work end to end). The
//!   guest survives a daemon restart; `terminate-instances` stops it and removes
//!   its namespace.
//! * `attached_guest_and_namespace_instance_follow_group_rules_both_ways`: the
//!   test starts QEMU itself on a TAP in a namespace it made, with the serial
//!   console on a pipe it drives, and `attach-instance`s it in group `gweb`; a
//!   namespace instance runs in group `nsg`. `gweb` allows tcp 80 from `nsg`,
//!   `nsg` allows nothing: the instance reaches the guest's HTTP server (and
//!   downloads a file intact), the outside does not, the guest cannot reach the
//!   instance's port 7000 until `authorize nsg -P tcp -p 7000 -o gweb`, and then
//!   gets the answer (stateful: `gweb` has no rule for the reply), and not after
//!   the revoke; likewise its ping (ICMP echo) of the instance. Driving the
//!   guest: commands typed on its console end in `echo SGRCn-$?`.
//!
//! Lab safety: all addresses (10.76.0.0/16, 10.75.0.0/16) live only in the
//! test's namespaces; QEMU is killed by PID and every namespace deleted in Drop
//! guards, also on failure. Waits are bounded (boot 120 s, each probe seconds).

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Lab, cannot_run, instance_lines, is_root, sh};

const BOOT_LIMIT: Duration = Duration::from_secs(120);

/// Why the test cannot run here, if it cannot.
fn missing_prerequisite() -> Option<&'static str> {
    if !is_root() {
        return Some("needs root");
    }
    if !sh(&[
        "sh",
        "-c",
        "command -v qemu-system-x86_64 && command -v curl && command -v nmap",
    ])
    .0
    {
        return Some("qemu-system-x86_64, curl or nmap not installed");
    }
    if guest_image().is_none() {
        return Some("no guest image (run scripts/build-guest-image.sh)");
    }
    None
}

fn guest_image() -> Option<(PathBuf, PathBuf)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../guest/build");
    let (k, i) = (dir.join("vmlinuz"), dir.join("initrd.img"));
    (k.exists() && i.exists()).then_some((k, i))
}

/// `curl` inside namespace `ns`: (success, body or error).
fn curl_in(ns: &str, url: &str, out: Option<&Path>, secs: u32) -> (bool, String) {
    let secs = secs.to_string();
    let mut args = vec!["ip", "netns", "exec", ns, "curl", "-s", "-m", &secs];
    let out_s;
    if let Some(p) = out {
        out_s = p.display().to_string();
        args.extend(["-o", &out_s]);
    }
    args.push(url);
    sh(&args)
}

/// Poll `f` every 20 ms until it returns `Some` or `limit` passes.
fn wait_for<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let t0 = Instant::now();
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if t0.elapsed() >= limit {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Wait for a line starting with `prefix` in the text `read` returns.
fn wait_line(read: impl Fn() -> String, prefix: &str, t0: Instant, limit: Duration) -> String {
    loop {
        let text = read();
        // The firmware may leave escape sequences before the guest's first line.
        if let Some(line) = text
            .lines()
            .find_map(|l| l.find(prefix).map(|at| l[at..].trim_end().to_owned()))
        {
            return line;
        }
        assert!(t0.elapsed() < limit, "no {prefix} in {limit:?}:\n{text}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn pid_alive(pid: &str) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

/// nmap's state of tcp 22 and 80 on `ip`, scanned from namespace `ns`.
fn nmap_22_80(ns: &str, ip: &str) -> (String, String) {
    let (ok, out) = sh(&[
        "ip",
        "netns",
        "exec",
        ns,
        "nmap",
        "-Pn",
        "-n",
        "-T4",
        "--max-retries",
        "0",
        "--min-rate",
        "1000",
        "-p",
        "22,80",
        "-oG",
        "-",
        ip,
    ]);
    assert!(ok, "nmap: {out}");
    let state = |port: &str| {
        out.split_once("Ports: ")
            .and_then(|(_, ports)| {
                ports
                    .split(", ")
                    .find(|p| p.starts_with(&format!("{port}/")))
                    .and_then(|p| p.split('/').nth(1))
            })
            .unwrap_or("missing")
            .to_owned()
    };
    (state("22"), state("80"))
}

/// Scan until nmap shows `want` (a single probe per port may be lost to a slow
/// TCG guest: at most 3 scans).
fn expect_nmap(ns: &str, ip: &str, want: (&str, &str)) {
    let mut got = (String::new(), String::new());
    for _ in 0..3 {
        got = nmap_22_80(ns, ip);
        if (got.0.as_str(), got.1.as_str()) == want {
            return;
        }
    }
    panic!("nmap of {ip}: 22 {} and 80 {}, want {want:?}", got.0, got.1);
}

/// MD5 of a file, hex.
fn md5_of(path: &Path) -> String {
    let (ok, out) = sh(&["md5sum", &path.display().to_string()]);
    assert!(ok, "{out}");
    out.split_whitespace().next().unwrap_or("").to_owned()
}

/// Download `big.bin` from `ip` inside `ns` and check it against the guest's
/// `GUEST-BIG SIZE MD5` line; returns (bytes, seconds).
fn fetch_big(ns: &str, ip: &str, big_line: &str, file: &Path) -> (u64, f64) {
    let mut f = big_line.split_whitespace().skip(1);
    let (size, md5) = (f.next().expect("size"), f.next().expect("md5"));
    let t = Instant::now();
    let (ok, out) = curl_in(ns, &format!("http://{ip}/big.bin"), Some(file), 60);
    let secs = t.elapsed().as_secs_f64();
    assert!(ok, "GET big.bin: {out}");
    let bytes = std::fs::metadata(file).unwrap().len();
    assert_eq!(bytes.to_string(), size, "big.bin size");
    assert_eq!(md5_of(file), md5, "big.bin payload corrupted on the way");
    (bytes, secs)
}

#[test]
fn registered_image_guest_is_filtered_by_its_group_from_outside() {
    if cannot_run(missing_prerequisite()) {
        return;
    }
    let (kernel, initrd) = guest_image().unwrap();
    const OUTSIDE: &str = "10.75.255.10";
    const AMI: &str = "ami-5e1f0001";
    let mut lab = Lab::new("r", "10.75.0.0/16");
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
    let (k, i) = (kernel.display().to_string(), initrd.display().to_string());
    let out = lab.cli(&["register-image", AMI, "--kernel", &k, "--initrd", &i]);
    let (k, i) = (
        std::fs::canonicalize(&kernel).unwrap(),
        std::fs::canonicalize(&initrd).unwrap(),
    );
    let line = out.trim_end();
    let f: Vec<&str> = line.split('\t').collect();
    assert_eq!(f[..2], ["IMAGE", AMI], "{out}");
    assert_eq!(std::fs::canonicalize(f[2]).unwrap(), k);
    assert_eq!(std::fs::canonicalize(f[3]).unwrap(), i);
    assert_eq!(f[4..], ["256", "", "console=ttyS0 quiet panic=-1"]);
    assert_eq!(lab.cli(&["describe-images"]), out);
    // This daemon has no default image: an unregistered AMI is not found.
    let (_, err, code) = lab.cli_raw(&["run-instances", "ami-0000dead", "--qemu"]);
    assert_eq!(code, 1);
    assert!(
        err.starts_with("InvalidAMIID.NotFound: ") && err.contains("ami-0000dead"),
        "{err}"
    );
    let (_, err, code) = lab.cli_raw(&[
        "register-image",
        AMI,
        "--kernel",
        &k.display().to_string(),
        "--initrd",
        &i.display().to_string(),
    ]);
    assert_eq!(code, 1);
    assert!(err.starts_with("InvalidAMIID.Duplicate: "), "{err}");

    lab.cli(&["add-group", "web", "-d", "Web Servers"]);
    lab.cli(&[
        "authorize",
        "web",
        "-P",
        "tcp",
        "-p",
        "80",
        "-s",
        "0.0.0.0/0",
    ]);
    let t0 = Instant::now();
    let out = lab.cli(&["run-instances", AMI, "--qemu", "-g", "web"]);
    let inst = instance_lines(&out);
    assert_eq!(inst.len(), 1, "{out}");
    // Its namespace is named after it: the Lab removes it even if the test fails.
    lab.instances.push(inst[0][1].clone());
    let (id, ip, place) = (inst[0][1].clone(), inst[0][3].clone(), inst[0][6].clone());
    assert_eq!(inst[0][2], AMI);
    let pid = place
        .strip_prefix("qemu:")
        .unwrap_or_else(|| panic!("PLACE {place}"))
        .to_owned();
    lab.pids.push(pid.parse().expect("PID"));
    assert!(pid_alive(&pid), "guest process {pid} running");
    // QEMU starts as `ip netns exec NS qemu-system-x86_64 ...`: while `ip` execs
    // QEMU the command line reads empty for a moment, so wait for QEMU's.
    let cmdline = wait_for(Duration::from_secs(10), || {
        let c = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let c = String::from_utf8_lossy(&c).replace('\0', " ");
        c.starts_with("qemu-system-x86_64 ").then_some(c)
    })
    .unwrap_or_else(|| panic!("guest {pid} never showed QEMU's command line"));
    assert!(
        cmdline.contains(&format!("-kernel {}", k.display()))
            || cmdline.contains(&format!("-kernel {}", kernel.display())),
        "boots the registered kernel: {cmdline}"
    );
    // The daemon's default accelerator is TCG.
    let accel = mgmt::qemu::accel_args(false).join(" ");
    assert!(cmdline.contains(&accel), "{accel} in {cmdline}");
    let log = lab.dir.join("state").join("qemu").join(format!("{id}.log"));
    let read_log = || std::fs::read_to_string(&log).unwrap_or_default();
    let ready = wait_line(read_log, "GUEST-READY", t0, BOOT_LIMIT);
    let boot = t0.elapsed();
    assert_eq!(
        ready,
        format!("GUEST-READY {ip}"),
        "the switch's DHCP gave the guest its instance address"
    );
    println!("run-instances --qemu: guest ready in {boot:.1?}");

    let ns = lab.uplink_ns.clone();
    expect_nmap(&ns, &ip, ("filtered", "open"));
    let ssh_from_outside = format!("{OUTSIDE}/32");
    let rule22 = ["web", "-P", "tcp", "-p", "22", "-s", &ssh_from_outside];
    lab.cli(&[&["authorize"][..], &rule22].concat());
    expect_nmap(&ns, &ip, ("open", "open"));
    lab.cli(&[&["revoke"][..], &rule22].concat());
    expect_nmap(&ns, &ip, ("filtered", "open"));

    let big = wait_line(read_log, "GUEST-BIG", t0, BOOT_LIMIT);
    let (bytes, secs) = fetch_big(&ns, &ip, &big, &lab.dir.join("big.bin"));
    println!(
        "outside <- guest: {bytes} bytes in {secs:.3} s ({:.1} MB/s)",
        bytes as f64 / secs / 1e6
    );

    // IPv6: the guest takes by SLAAC (from the switch's router advertisement)
    // the address describe-instances shows, and serves HTTP over IPv6 with the
    // payload intact once an IPv6 rule allows it (0.0.0.0/0 does not).
    let g6 = wait_line(read_log, "GUEST-IPV6", t0, BOOT_LIMIT);
    let out = lab.cli(&["describe-instances", &id]);
    let shown = out
        .lines()
        .find_map(|l| l.strip_prefix(&format!("IPV6ADDRESS\t{id}\t")))
        .unwrap_or_else(|| panic!("no IPV6ADDRESS line:\n{out}"))
        .to_owned();
    assert_eq!(
        g6,
        format!("GUEST-IPV6 {shown}"),
        "SLAAC gave the shown address"
    );
    let a: std::net::Ipv6Addr = shown.parse().unwrap();
    let mut o = a.octets();
    o[8..].copy_from_slice(&[0, 0, 0, 0, 0, 0xff, 0, 0x10]);
    let outside6 = std::net::Ipv6Addr::from(o);
    let cidr6 = format!("{outside6}/64");
    let (ok, out) = sh(&[
        "ip",
        "-n",
        &ns,
        "-6",
        "addr",
        "add",
        &cidr6,
        "dev",
        &lab.uplink,
        "nodad",
    ]);
    assert!(ok, "{out}");
    let url6 = format!("[{shown}]");
    assert!(
        !curl_in(&ns, &format!("http://{url6}/"), None, 2).0,
        "no IPv6 rule: filtered"
    );
    lab.cli(&["authorize", "web", "-P", "tcp", "-p", "80", "-s", "::/0"]);
    let (bytes6, secs6) = fetch_big(&ns, &url6, &big, &lab.dir.join("big6.bin"));
    println!(
        "outside <- guest over IPv6: {bytes6} bytes in {secs6:.3} s ({:.1} MB/s)",
        bytes6 as f64 / secs6 / 1e6
    );

    // The daemon restarts; the guest keeps running and is attached again.
    lab.stop("TERM");
    assert!(pid_alive(&pid), "guest survives a daemon restart");
    lab.start();
    let out = lab.cli(&["describe-instances"]);
    assert!(
        out.contains(&format!(
            "INSTANCE\t{id}\t{AMI}\t{ip}\trunning\t0\tqemu:{pid}\n"
        )),
        "{out}"
    );
    let (ok, page) = curl_in(&ns, &format!("http://{ip}/"), None, 5);
    assert!(
        ok && page.starts_with("sgswitch guest"),
        "after restart: {page}"
    );
    let out = lab.cli(&["deregister-image", AMI]);
    assert!(out.starts_with(&format!("IMAGE\t{AMI}\t")), "{out}");
    assert_eq!(lab.cli(&["describe-images"]), "");
    assert!(pid_alive(&pid), "deregistering leaves running guests alone");

    // Terminate stops the guest and removes its namespace.
    let out = lab.cli(&["terminate-instances", &id]);
    assert_eq!(out, format!("INSTANCE\t{id}\trunning\tshutting-down\n"));
    assert!(!pid_alive(&pid), "guest process stopped");
    assert!(!common::netns_exists(&id));
    lab.stop("TERM");
}

/// A QEMU the test started, its serial console on pipes: what the guest printed
/// so far, and a way to type commands. Killed by PID on drop.
struct Console {
    child: Child,
    stdin: ChildStdin,
    out: Arc<Mutex<String>>,
    seq: u32,
}

impl Console {
    fn start(cmd: &mut Command) -> Console {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start qemu");
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let out = Arc::new(Mutex::new(String::new()));
        let sink = out.clone();
        std::thread::spawn(move || {
            let mut r = BufReader::new(stdout);
            let mut buf = Vec::new();
            while r.read_until(b'\n', &mut buf).is_ok_and(|n| n > 0) {
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf).replace('\r', ""));
                buf.clear();
            }
        });
        Console {
            child,
            stdin,
            out,
            seq: 0,
        }
    }

    fn text(&self) -> String {
        self.out.lock().unwrap().clone()
    }

    /// Run `cmd` in the guest's shell; returns (exit status, console output
    /// since it was typed), or panics after `limit`.
    fn run(&mut self, cmd: &str, limit: Duration) -> (i32, String) {
        self.seq += 1;
        let mark = format!("SGRC{}-", self.seq);
        let from = self.text().len();
        // The typed line echoes `SGRCn-$?`; only the output has digits after it.
        writeln!(self.stdin, "{cmd}; echo {mark}$?").unwrap();
        self.stdin.flush().unwrap();
        let t0 = Instant::now();
        loop {
            let text = self.text()[from..].to_owned();
            if let Some(rc) = text.lines().find_map(|l| {
                let at = l.find(&mark)?;
                l[at + mark.len()..].trim().parse::<i32>().ok()
            }) {
                return (rc, text);
            }
            assert!(
                t0.elapsed() < limit,
                "guest: `{cmd}` did not finish:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Console {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A process inside a namespace (a server of the test), killed by PID on drop.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn attached_guest_and_namespace_instance_follow_group_rules_both_ways() {
    if cannot_run(missing_prerequisite()) {
        return;
    }
    let (kernel, initrd) = guest_image().unwrap();
    const OUTSIDE: &str = "10.76.255.10";
    const GUEST_MAC: &str = "52:54:00:76:00:01";
    let mut lab = Lab::new("q", "10.76.0.0/16");
    lab.start();
    let ns_q = format!("sgsw-q-{}", std::process::id());
    let (ok, out) = sh(&["ip", "netns", "add", &ns_q]);
    assert!(ok, "{out}");
    lab.extra_ns.push(ns_q.clone());
    for cmd in [
        // A single-queue vnet_hdr TAP, as QEMU's -netdev tap wants it.
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
            &format!("{OUTSIDE}/16"),
            "dev",
            &lab.uplink,
        ],
    ] {
        let (ok, out) = sh(cmd);
        assert!(ok, "{cmd:?}: {out}");
    }
    lab.cli(&["add-group", "gweb", "-d", "guest web servers"]);
    lab.cli(&["add-group", "nsg", "-d", "namespace clients"]);
    lab.cli(&["authorize", "gweb", "-P", "tcp", "-p", "80", "-o", "nsg"]);

    let out = lab.cli(&[
        "attach-instance",
        "tq0",
        "--netns",
        &ns_q,
        "--mac",
        GUEST_MAC,
        "-g",
        "gweb",
    ]);
    let inst = instance_lines(&out);
    assert_eq!(inst.len(), 1, "{out}");
    let (gid, gip) = (inst[0][1].clone(), inst[0][3].clone());
    assert_eq!(inst[0][6], format!("port:tq0@{ns_q}"));
    let out = lab.cli(&["run-instances", "ami-eca54085", "-g", "nsg"]);
    let inst = instance_lines(&out);
    assert_eq!(inst.len(), 1, "{out}");
    lab.instances.push(inst[0][1].clone());
    let (nid, nip) = (inst[0][1].clone(), inst[0][3].clone());
    assert_eq!(inst[0][6], format!("netns:{nid}"));

    // A server on the namespace instance: busybox httpd on 7000.
    let www = lab.dir.join("www7000");
    std::fs::create_dir_all(&www).unwrap();
    std::fs::write(www.join("index.html"), "pong7000\n").unwrap();
    let _httpd = Server(
        Command::new("ip")
            .args([
                "netns", "exec", &nid, "busybox", "httpd", "-f", "-p", "7000", "-h",
            ])
            .arg(&www)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start httpd"),
    );

    let t0 = Instant::now();
    let mut guest = Console::start(
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &ns_q,
                "qemu-system-x86_64",
                "-accel",
                "tcg",
            ])
            .args(["-m", "256", "-smp", "1", "-nodefaults", "-no-reboot"])
            .arg("-kernel")
            .arg(&kernel)
            .arg("-initrd")
            .arg(&initrd)
            .args(["-append", "console=ttyS0 quiet panic=-1 sg.bigmb=4"])
            .args([
                "-netdev",
                "tap,id=n0,ifname=tq0,script=no,downscript=no,vhost=off",
                "-device",
                &format!("virtio-net-pci,netdev=n0,mac={GUEST_MAC},romfile="),
            ])
            .args(["-display", "none", "-monitor", "none", "-serial", "stdio"]),
    );
    let ready = wait_line(|| guest.text(), "GUEST-READY", t0, BOOT_LIMIT);
    println!("attached guest ready in {:.1?}", t0.elapsed());
    assert_eq!(ready, format!("GUEST-READY {gip}"), "DHCP from the switch");
    let big = wait_line(|| guest.text(), "GUEST-BIG", t0, BOOT_LIMIT);

    // Namespace instance (nsg) → guest (gweb) tcp 80: allowed by group.
    let url = format!("http://{gip}/");
    let (ok, page) = curl_in(&nid, &url, None, 5);
    assert!(
        ok && page.starts_with("sgswitch guest"),
        "ns → guest:80: {page}"
    );
    let (bytes, secs) = fetch_big(&nid, &gip, &big, &lab.dir.join("big.bin"));
    println!(
        "instance <- guest: {bytes} bytes in {secs:.3} s ({:.1} MB/s)",
        bytes as f64 / secs / 1e6
    );
    // The outside is in no group that gweb allows.
    assert!(
        !curl_in(&lab.uplink_ns, &url, None, 2).0,
        "outside → guest:80 must be filtered"
    );

    // Guest → namespace instance tcp 7000: nsg allows nobody. (busybox nc: the
    // static busybox's wget crashes.) Exit status 1: no connection.
    let get7000 = format!("printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {nip} 7000");
    let (rc, text) = guest.run(&get7000, Duration::from_secs(20));
    assert_eq!(rc, 1, "guest → ns:7000 must be filtered:\n{text}");
    assert!(!text.contains("refused"), "dropped, not refused:\n{text}");
    assert!(!text.lines().any(|l| l == "pong7000"), "{text}");
    // ICMP too: nsg allows none.
    let ping = format!("ping -c 1 -W 2 {nip}");
    let (rc, text) = guest.run(&ping, Duration::from_secs(20));
    assert_ne!(rc, 0, "guest → ns ping must be filtered:\n{text}");
    // Allowed from gweb: the guest connects and gets the answer, although gweb
    // has no rule for it (the reply belongs to the guest's connection).
    lab.cli(&["authorize", "nsg", "-P", "tcp", "-p", "7000", "-o", "gweb"]);
    let (rc, text) = guest.run(&get7000, Duration::from_secs(20));
    assert_eq!(rc, 0, "guest → ns:7000 after authorize:\n{text}");
    assert!(text.lines().any(|l| l == "pong7000"), "{text}");
    lab.cli(&["authorize", "nsg", "-P", "icmp", "-t", "8:-1", "-o", "gweb"]);
    let (rc, text) = guest.run(&ping, Duration::from_secs(20));
    assert_eq!(rc, 0, "guest → ns ping after authorize:\n{text}");
    lab.cli(&["revoke", "nsg", "-P", "tcp", "-p", "7000", "-o", "gweb"]);
    let (rc, text) = guest.run(&get7000, Duration::from_secs(20));
    assert_eq!(
        rc, 1,
        "guest → ns:7000 filtered again after revoke:\n{text}"
    );
    assert!(!text.lines().any(|l| l == "pong7000"), "{text}");

    // Terminate detaches the guest (its TAP and QEMU are the test's: untouched).
    lab.cli(&["terminate-instances", &gid]);
    assert!(
        !curl_in(&nid, &url, None, 2).0,
        "a detached guest is unreachable"
    );
    assert!(
        guest.child.try_wait().unwrap().is_none(),
        "someone else's QEMU keeps running"
    );
    lab.cli(&["terminate-instances", &nid]);
    assert_eq!(lab.cli(&["describe-instances"]), "");
    lab.stop("TERM");
}

/// `describe-instances ID`'s INSTANCE line, split.
fn instance_state(lab: &Lab, id: &str) -> Vec<String> {
    let out = lab.cli(&["describe-instances", id]);
    instance_lines(&out)
        .into_iter()
        .next()
        .unwrap_or_else(|| panic!("no {id} in {out}"))
}

/// Poll `describe-instances ID` until its state is not `from` (bounded).
fn wait_state_change(lab: &Lab, id: &str, from: &str, limit: Duration) -> Vec<String> {
    let t0 = Instant::now();
    loop {
        let l = instance_state(lab, id);
        if l[4] != from {
            return l;
        }
        assert!(
            t0.elapsed() < limit,
            "{id} still {from} after {limit:?}: {l:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `register-image` checks what it is given, and a QEMU that exits at start
/// leaves the instance `stopped` with QEMU's own words as the reason (also in
/// the instance log), not a Rust debug dump.
#[test]
fn a_qemu_failing_at_start_says_why_and_bad_images_are_refused() {
    let why = if !is_root() {
        Some("needs root")
    } else if !sh(&["sh", "-c", "command -v qemu-system-x86_64"]).0 {
        Some("qemu-system-x86_64 not installed")
    } else {
        None
    };
    if cannot_run(why) {
        return;
    }
    let mut lab = Lab::new("f", "10.73.0.0/16");
    lab.start();
    // A file with the bzImage signature whose boot protocol (1.0) is too old
    // to load an initrd: QEMU refuses it at start, on stderr.
    let kernel = lab.dir.join("old-bzImage");
    let mut k = vec![0u8; 8192];
    k[0x1f1] = 4;
    k[0x202..0x206].copy_from_slice(b"HdrS");
    k[0x206..0x208].copy_from_slice(&0x0100u16.to_le_bytes());
    std::fs::write(&kernel, k).unwrap();
    let initrd = lab.dir.join("initrd.cpio");
    std::fs::write(&initrd, b"070701").unwrap();
    let (k, i) = (kernel.display().to_string(), initrd.display().to_string());

    for (kk, ii, what) in [
        ("/etc/passwd", i.as_str(), "kernel"),
        (k.as_str(), "/etc/passwd", "initrd"),
    ] {
        let (_, err, code) = lab.cli_raw(&[
            "register-image",
            "ami-5e1f00bd",
            "--kernel",
            kk,
            "--initrd",
            ii,
        ]);
        assert_eq!(code, 1, "{err}");
        assert!(
            err.starts_with("InvalidParameterValue: ")
                && err.contains(&format!("invalid {what} '/etc/passwd'")),
            "{err}"
        );
    }
    assert_eq!(lab.cli(&["describe-images"]), "", "nothing registered");

    lab.cli(&[
        "register-image",
        "ami-5e1f00bd",
        "--kernel",
        &k,
        "--initrd",
        &i,
    ]);
    let out = lab.cli(&["run-instances", "ami-5e1f00bd", "--qemu"]);
    let inst = instance_lines(&out);
    let id = inst[0][1].clone();
    lab.instances.push(id.clone());
    if let Some(pid) = inst[0][6].strip_prefix("qemu:") {
        lab.pids.push(pid.parse().unwrap());
    }
    assert!(
        ["pending", "stopped"].contains(&inst[0][4].as_str()),
        "{out}"
    );
    let l = wait_state_change(&lab, &id, "pending", Duration::from_secs(20));
    assert_eq!(l[4], "stopped", "{l:?}");
    let reason = &l[7];
    assert!(
        reason.starts_with("qemu-system-x86_64 exited with status 1: ")
            && reason.contains("linux kernel too old to load a ram disk"),
        "{reason}"
    );
    assert!(
        !reason.contains("Exited(") && !reason.contains("Pid("),
        "{reason}"
    );
    let log = lab.dir.join("state").join("qemu").join(format!("{id}.log"));
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.starts_with(&format!("sgswitch: guest {id}: accel ")),
        "the accelerator and why: {text}"
    );
    assert!(
        text.contains("linux kernel too old to load a ram disk"),
        "QEMU's stderr in the log: {text}"
    );
    let out = lab.cli(&["terminate-instances", &id]);
    assert_eq!(out, format!("INSTANCE\t{id}\tstopped\tshutting-down\n"));
    assert!(!common::netns_exists(&id));
    lab.stop("TERM");
}

/// Guests are `pending` until the switch saw their first DHCP lease, then
/// `running`; launching them does not hold rule edits back (an `authorize`
/// issued right after is answered while they are all still pending); and
/// `terminate-instances --all` ends guests, namespace instances and what runs
/// inside them.
#[test]
fn guests_are_pending_until_their_lease_edits_do_not_wait_and_terminate_all_ends_the_lab() {
    if cannot_run(missing_prerequisite()) {
        return;
    }
    let (kernel, initrd) = guest_image().unwrap();
    const AMI: &str = "ami-5e1f00aa";
    let mut lab = Lab::new("p", "10.72.0.0/16");
    lab.start();
    let (k, i) = (kernel.display().to_string(), initrd.display().to_string());
    lab.cli(&["register-image", AMI, "--kernel", &k, "--initrd", &i]);
    lab.cli(&["add-group", "web", "-d", "web"]);

    let t0 = Instant::now();
    let out = lab.cli(&["run-instances", AMI, "--qemu", "-n", "3", "-g", "web"]);
    let launch = t0.elapsed();
    let guests = instance_lines(&out);
    assert_eq!(guests.len(), 3, "{out}");
    for g in &guests {
        lab.instances.push(g[1].clone());
        lab.pids
            .push(g[6].strip_prefix("qemu:").unwrap().parse().unwrap());
        assert_eq!(g[4], "pending", "just launched: {g:?}");
    }
    // A rule edit while they boot is answered at once...
    let t1 = Instant::now();
    lab.cli(&[
        "authorize",
        "web",
        "-P",
        "tcp",
        "-p",
        "80",
        "-s",
        "0.0.0.0/0",
    ]);
    let edit = t1.elapsed();
    // ...before any of them is up.
    for g in &guests {
        let l = instance_state(&lab, &g[1]);
        assert_eq!(l[4], "pending", "{l:?}");
        // Being attached to the switch, or waiting for the guest's DHCP.
        assert!(l[7].starts_with("booting on accel "), "{l:?}");
    }
    println!("run-instances --qemu -n 3: {launch:.1?}; authorize right after: {edit:.1?}");

    for g in &guests {
        let l = wait_state_change(&lab, &g[1], "pending", BOOT_LIMIT);
        assert_eq!(l[4], "running", "{l:?}");
        assert_eq!(l.len(), 7, "no reason once running: {l:?}");
        let log = lab
            .dir
            .join("state")
            .join("qemu")
            .join(format!("{}.log", g[1]));
        let read_log = || std::fs::read_to_string(&log).unwrap_or_default();
        let ready = wait_line(read_log, "GUEST-READY", t0, BOOT_LIMIT);
        assert_eq!(ready, format!("GUEST-READY {}", g[3]));
    }
    println!("3 guests running {:.1?} after launch", t0.elapsed());

    // Two namespace instances with a process inside one of them.
    let out = lab.cli(&["run-instances", "ami-eca54085", "-n", "2"]);
    let ns: Vec<String> = instance_lines(&out).iter().map(|l| l[1].clone()).collect();
    lab.instances.extend(ns.iter().cloned());
    let mut sleeper = Server(
        Command::new("ip")
            .args(["netns", "exec", &ns[0], "sleep", "300"])
            .stdin(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let out = lab.cli(&["terminate-instances", "--all"]);
    assert_eq!(out.lines().count(), 5, "{out}");
    assert!(
        out.lines().all(|l| l.ends_with("\trunning\tshutting-down")),
        "{out}"
    );
    for g in &guests {
        let pid = g[6].strip_prefix("qemu:").unwrap();
        assert!(!pid_alive(pid), "guest {pid} stopped");
    }
    for id in guests.iter().map(|g| &g[1]).chain(&ns) {
        assert!(!common::netns_exists(id), "{id} left behind");
    }
    let t = Instant::now();
    let status = loop {
        if let Some(st) = sleeper.0.try_wait().unwrap() {
            break st;
        }
        assert!(t.elapsed() < Duration::from_secs(5), "sleep survived");
        std::thread::sleep(Duration::from_millis(20));
    };
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(15), "{status:?}");
    assert_eq!(lab.cli(&["describe-instances"]), "");
    lab.stop("TERM");
}
