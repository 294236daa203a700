//! Helpers shared by the root tests of the switch crate (namespaces, TAPs).

use std::net::Ipv4Addr;
use std::process::{Command, Output};

/// Whether the tests run as root (they need CAP_NET_ADMIN for namespaces/TAPs).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false)
}

/// Returns from the test (it passes, saying why) when not root; fails under `CI=true`.
macro_rules! require_root {
    () => {
        if !is_root() {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "CI=true but not root: this test needs CAP_NET_ADMIN for namespaces and TAPs"
            );
            eprintln!("skipped: needs root (CAP_NET_ADMIN) to create namespaces and TAPs");
            return;
        }
    };
}

/// Runs a command inside namespace `ns`, bounded by `timeout 30`.
pub fn run_in(ns: &str, args: &[&str]) -> Output {
    let out = Command::new("timeout")
        .args(["30", "ip", "netns", "exec", ns])
        .args(args)
        .output()
        .expect("spawn timeout/ip");
    eprintln!(
        "[{ns}] {}: {}\n{}{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Pings `ip` from namespace `ns`; busybox-static is one of the lab's tools
/// (iputils ping may be missing) and `-w` bounds the run even when nothing answers.
pub fn ping(ns: &str, ip: Ipv4Addr, count: u32) -> bool {
    let deadline = (count + 2).to_string();
    let args = [
        "busybox",
        "ping",
        "-c",
        &count.to_string(),
        "-W",
        "1",
        "-w",
        &deadline,
        "-i",
        "0.2",
        &ip.to_string(),
    ];
    run_in(ns, &args).status.success()
}

/// A byte pattern without short periods, so lost, duplicated or reordered
/// segments show as a mismatch.
pub fn pat(i: u64) -> u8 {
    ((i ^ (i >> 11) ^ (i >> 19)).wrapping_mul(31) >> 3) as u8
}

/// Instance `n` (id `i-{n:08x}`) of `owner` in group `default`, with the
/// test's own `mac` and `ip` for it.
#[allow(dead_code)] // used by trace.rs and sim.rs, not by every root test
pub fn default_instance(
    owner: &filter::model::Owner,
    n: u8,
    mac: filter::Mac,
    ip: Ipv4Addr,
) -> filter::model::Instance {
    filter::model::Instance {
        id: format!("i-{n:08x}"),
        owner: owner.clone(),
        mac,
        ip,
        groups: vec!["default".into()],
    }
}
