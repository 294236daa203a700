//! The loads and what is measured under them, the same for every path.
//!
//! Contract (every load bounded in time and count, every program under a
//! deadline):
//! * [`tcp`]: `iperf3 -c SERVER -t SECS -P STREAMS -J` (with `-6` to an IPv6
//!   server address) from the first client
//!   against a one-shot `iperf3 -s -1` in the server namespace; the receiver's
//!   Gbit/s, the sender's retransmits, and CPU of the forwarder and the machine
//!   over the client's run.
//! * [`udp`]: `flowgen send` from a client (IPv4 or IPv6 as the server's
//!   address; new 5-tuple per datagram, or one
//!   flow per thread with `fixed`), counted by `flowgen count` on the server's
//!   interface (its rx counter): packets received per second ([`rx_rate`]), what was sent, loss, CPU over the send.
//! * [`nmap`]: `nmap -Pn -n -T4 --max-retries 0 --min-rate 1000 -oG - -p1-1000`
//!   from the scanner namespace (DESIGN §7 flags): wall time and port states.
//! * [`ping`]: one ICMP echo client → server, the connectivity check before
//!   any load (it also fills the client's ARP cache).

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::time::{Duration, Instant};

use super::exec::{CpuSample, CpuUse, HarnessError, Proc, Result, in_ns, run_ok};
use super::paths::Endpoints;

/// One iperf3 TCP run.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct TcpRun {
    pub gbps: f64,
    pub retransmits: Option<u64>,
    pub cpu: CpuUse,
}

/// Parses iperf3 `-J` output: receiver bits/s and sender retransmits.
pub fn parse_iperf3_json(text: &str) -> Result<(f64, Option<u64>)> {
    let v: serde_json::Value = serde_json::from_str(text).map_err(|_| HarnessError::Parse {
        what: "iperf3 JSON",
        text: text.chars().take(400).collect(),
    })?;
    if let Some(e) = v.get("error").and_then(|e| e.as_str()) {
        return Err(HarnessError::Setup(format!("iperf3: {e}")));
    }
    let bps = v
        .pointer("/end/sum_received/bits_per_second")
        .and_then(serde_json::Value::as_f64)
        .ok_or_else(|| HarnessError::Parse {
            what: "end.sum_received.bits_per_second",
            text: text.chars().take(400).collect(),
        })?;
    let retr = v
        .pointer("/end/sum_sent/retransmits")
        .and_then(serde_json::Value::as_u64);
    Ok((bps, retr))
}

/// iperf3 TCP with `streams` parallel streams for `secs` seconds.
pub fn tcp(ep: &Endpoints, streams: usize, secs: u64, port: u16) -> Result<TcpRun> {
    let p = port.to_string();
    let mut server = Proc::spawn(&mut in_ns(
        &ep.server_ns,
        "iperf3",
        &["-s", "-1", "--forceflush", "-p", &p],
    ))?;
    server.wait_line("Server listening", Duration::from_secs(10))?;
    let ip = ep.server_ip.to_string();
    let (t, n) = (secs.to_string(), streams.to_string());
    let before = CpuSample::take(ep.forwarder);
    let mut args = vec!["-c", &ip, "-p", &p, "-t", &t, "-P", &n, "-J"];
    if ep.v6() {
        args.push("-6");
    }
    let out = run_ok(
        &mut in_ns(&ep.clients[0], "iperf3", &args),
        Duration::from_secs(secs + 30),
    )?;
    let cpu = CpuSample::take(ep.forwarder).since(&before);
    let (bps, retransmits) = parse_iperf3_json(&out.stdout)?;
    let _ = server.finish(Duration::from_secs(5));
    Ok(TcpRun {
        gbps: bps / 1e9,
        retransmits,
        cpu,
    })
}

/// One flowgen run.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct UdpRun {
    pub sent: u64,
    /// Sends the client's kernel refused (full queue).
    pub refused: u64,
    pub received: u64,
    /// Received per second ([`rx_rate`]).
    pub rx_pps: f64,
    /// Sent per second by the generator.
    pub tx_pps: f64,
    /// Sender threads.
    pub threads: usize,
    pub cpu: CpuUse,
}

impl UdpRun {
    /// Share of sent datagrams not received.
    pub fn loss(&self) -> f64 {
        if self.sent == 0 {
            0.0
        } else {
            1.0 - (self.received.min(self.sent) as f64 / self.sent as f64)
        }
    }
}

/// `word VALUE` from a `flowgen:` line.
fn field(line: &str, word: &str) -> Option<f64> {
    let mut it = line.split_whitespace();
    while let Some(w) = it.next() {
        if w == word {
            return it.next()?.parse().ok();
        }
    }
    None
}

/// Parses `flowgen: sent N errors E secs S pps R`.
pub fn parse_sent(line: &str) -> Result<(u64, u64, f64)> {
    let bad = || HarnessError::Parse {
        what: "flowgen send result",
        text: line.to_owned(),
    };
    Ok((
        field(line, "sent").ok_or_else(bad)? as u64,
        field(line, "errors").ok_or_else(bad)? as u64,
        field(line, "pps").ok_or_else(bad)?,
    ))
}

/// Parses `flowgen: received N window_s W pps R` into (N, W).
pub fn parse_received(line: &str) -> Result<(u64, f64)> {
    let bad = || HarnessError::Parse {
        what: "flowgen count result",
        text: line.to_owned(),
    };
    Ok((
        field(line, "received").ok_or_else(bad)? as u64,
        field(line, "window_s").ok_or_else(bad)?,
    ))
}

/// Received per second, never overstated: over the receiver's window or the
/// sender's run, whichever is longer (a forwarder that passes only a burst of
/// the load has a short receive window).
pub fn rx_rate(received: u64, window_s: f64, sent: u64, tx_pps: f64) -> f64 {
    let send_s = if tx_pps > 0.0 {
        sent as f64 / tx_pps
    } else {
        0.0
    };
    let secs = window_s.max(send_s);
    if secs > 0.0 {
        received as f64 / secs
    } else {
        0.0
    }
}

/// What one flowgen run sends.
#[derive(Clone, Copy, Debug)]
pub struct UdpLoad {
    /// One flow per thread instead of a new 5-tuple per datagram.
    pub fixed: bool,
    pub count: u64,
    pub secs: f64,
    pub threads: usize,
    pub sport_base: u16,
}

/// A flowgen run from `client` to the server of `ep`.
pub fn udp(ep: &Endpoints, client: &str, flowgen: &Path, load: UdpLoad) -> Result<UdpRun> {
    let fg = flowgen.to_string_lossy().into_owned();
    let limit = format!("{}", load.secs + 10.0);
    let mut counter = Proc::spawn(&mut in_ns(
        &ep.server_ns,
        &fg,
        &[
            "count",
            "--iface",
            &ep.server_if,
            "--secs",
            &limit,
            "--idle-ms",
            "300",
        ],
    ))?;
    counter.wait_line("flowgen: ready", Duration::from_secs(10))?;
    let ip = ep.server_ip.to_string();
    let (count, secs, threads, sport) = (
        load.count.to_string(),
        load.secs.to_string(),
        load.threads.to_string(),
        load.sport_base.to_string(),
    );
    let mut args = vec![
        "send",
        "--dst",
        &ip,
        "--count",
        &count,
        "--secs",
        &secs,
        "--threads",
        &threads,
        "--sport-base",
        &sport,
    ];
    if load.fixed {
        args.extend(["--fixed", "--dport-base", "9"]);
    }
    let before = CpuSample::take(ep.forwarder);
    let out = run_ok(
        &mut in_ns(client, &fg, &args),
        Duration::from_secs_f64(load.secs + 30.0),
    )?;
    let cpu = CpuSample::take(ep.forwarder).since(&before);
    let sent_line = out
        .stdout
        .lines()
        .find(|l| l.starts_with("flowgen: sent"))
        .unwrap_or_default();
    let (sent, refused, tx_pps) = parse_sent(sent_line)?;
    let lines = counter.finish(Duration::from_secs_f64(load.secs + 20.0))?;
    let rx_line = lines
        .iter()
        .find(|l| l.starts_with("flowgen: received"))
        .cloned()
        .unwrap_or_default();
    let (received, window_s) = parse_received(&rx_line)?;
    let rx_pps = rx_rate(received, window_s, sent, tx_pps);
    Ok(UdpRun {
        sent,
        refused,
        received,
        rx_pps,
        tx_pps,
        threads: load.threads,
        cpu,
    })
}

/// One nmap scan.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct NmapRun {
    pub secs: f64,
    pub filtered: u32,
    pub total: u32,
}

/// `nmap -p1-1000` of `target` from `scanner`.
pub fn nmap(scanner: &str, target: Ipv4Addr) -> Result<NmapRun> {
    let t = target.to_string();
    let args = [
        "-Pn",
        "-n",
        "-T4",
        "--max-retries",
        "0",
        "--min-rate",
        "1000",
        "-oG",
        "-",
        "-p1-1000",
        &t,
    ];
    let start = Instant::now();
    let out = run_ok(&mut in_ns(scanner, "nmap", &args), Duration::from_secs(120))?;
    let secs = start.elapsed().as_secs_f64();
    let hosts = e2e::nmap::parse_grepable(&out.stdout).map_err(|_| HarnessError::Parse {
        what: "nmap -oG",
        text: out.stdout.clone(),
    })?;
    let scan = hosts.get(&target).ok_or_else(|| HarnessError::Parse {
        what: "nmap host line",
        text: out.stdout.clone(),
    })?;
    Ok(NmapRun {
        secs,
        filtered: scan.count(e2e::PortState::Filtered),
        total: scan.total(),
    })
}

/// One ICMP echo (or ICMPv6 echo) from `client` to the server (2 s deadline).
pub fn ping(client: &str, target: IpAddr) -> Result<()> {
    let t = target.to_string();
    run_ok(
        &mut in_ns(client, "busybox", &["ping", "-c", "1", "-W", "2", &t]),
        Duration::from_secs(10),
    )
    .map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iperf3_json_gives_receiver_rate_and_retransmits() {
        let j = r#"{"start":{},"end":{"sum_sent":{"bits_per_second":9.9e9,"retransmits":3},
                   "sum_received":{"bits_per_second":9.5e9}}}"#;
        assert_eq!(parse_iperf3_json(j).unwrap(), (9.5e9, Some(3)));
        let e = parse_iperf3_json(r#"{"error":"unable to connect to server"}"#).unwrap_err();
        assert!(e.to_string().contains("unable to connect"), "{e}");
        assert!(parse_iperf3_json("not json").is_err());
    }

    #[test]
    fn flowgen_lines_parse() {
        assert_eq!(
            parse_sent("flowgen: sent 60000 errors 12 secs 0.1500 pps 400000").unwrap(),
            (60000, 12, 400000.0)
        );
        assert_eq!(
            parse_received("flowgen: received 59000 window_s 0.1490 pps 395973").unwrap(),
            (59000, 0.149)
        );
        assert!(parse_received("flowgen: ready").is_err());
    }

    #[test]
    fn received_rate_uses_the_longer_of_both_windows() {
        // A burst of 4000 in 0.07 s out of a 2 s send: 2000/s, not 57k/s.
        assert_eq!(rx_rate(4000, 0.07, 67_000, 33_500.0), 2000.0);
        // The receiver trailing the sender: its own window counts.
        assert_eq!(rx_rate(60_000, 0.3, 60_000, 400_000.0), 200_000.0);
        assert_eq!(rx_rate(0, 0.0, 0, 0.0), 0.0);
    }

    #[test]
    fn loss_is_the_unreceived_share() {
        let r = UdpRun {
            sent: 1000,
            received: 750,
            ..UdpRun::default()
        };
        assert!((r.loss() - 0.25).abs() < 1e-12);
        assert_eq!(UdpRun::default().loss(), 0.0);
    }
}
