//! `--metrics-listen ADDR`: the daemon's statistics as Prometheus text.
//!
//! Contract:
//! * A [`metrics_exporter_prometheus::PrometheusRecorder`] is installed as the
//!   process's global `metrics` recorder (once per process).
//! * An updater thread asks the management thread for [`StatsReport`] once per
//!   [`UPDATE_INTERVAL`] (the same aggregated numbers `sgswitch stats` shows; the
//!   datapath itself never calls `metrics`) and sets gauges and absolute counters.
//! * A tiny HTTP/1.0 responder on a std `TcpListener` serves `render()` for
//!   `GET /metrics` (and `/`), 404 for other paths, 405 for other methods. One
//!   request per connection, head capped at 8 KiB, 2 s I/O timeouts; requests are
//!   served one after another (a scrape is cheap; a stuck client times out).
//!
//! Metric names: `sgswitch_generation`, `sgswitch_groups`, `sgswitch_rules`,
//! `sgswitch_instances`, `sgswitch_edits_total`, `sgswitch_edit_latency_seconds{quantile}`,
//! `sgswitch_publish_latency_seconds{quantile}`,
//! `sgswitch_port_{rx,tx}_{packets,bytes}_total{port}`, `sgswitch_port_drops_total{port}`,
//! `sgswitch_drops_total{reason}`, `sgswitch_conntrack_entries`,
//! `sgswitch_events_total{event}`, `sgswitch_ports_gone_total`.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::Duration;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::api::{Command, Request, Response, StatsReport};
use crate::daemon::MgmtHandle;

/// How often the gauges are refreshed.
pub const UPDATE_INTERVAL: Duration = Duration::from_secs(1);

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// The process's Prometheus handle (installs the recorder on first use). `None`
/// if another recorder was installed first.
pub fn prometheus() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| PrometheusBuilder::new().install_recorder().ok())
        .as_ref()
}

/// Set the metrics from a statistics report.
pub fn record(s: &StatsReport) {
    metrics::gauge!("sgswitch_generation").set(s.generation as f64);
    metrics::gauge!("sgswitch_groups").set(s.groups as f64);
    metrics::gauge!("sgswitch_rules").set(s.rules as f64);
    metrics::gauge!("sgswitch_instances").set(s.instances as f64);
    metrics::counter!("sgswitch_edits_total").absolute(s.edits);
    metrics::gauge!("sgswitch_edit_latency_seconds", "quantile" => "0.5")
        .set(s.edit_latency_p50_us as f64 / 1e6);
    metrics::gauge!("sgswitch_edit_latency_seconds", "quantile" => "0.99")
        .set(s.edit_latency_p99_us as f64 / 1e6);
    metrics::gauge!("sgswitch_publish_latency_seconds", "quantile" => "0.5")
        .set(s.publish_latency_p50_us as f64 / 1e6);
    metrics::gauge!("sgswitch_publish_latency_seconds", "quantile" => "0.99")
        .set(s.publish_latency_p99_us as f64 / 1e6);
    for p in &s.ports {
        let port = p.name.clone();
        metrics::counter!("sgswitch_port_rx_packets_total", "port" => port.clone())
            .absolute(p.rx_packets);
        metrics::counter!("sgswitch_port_rx_bytes_total", "port" => port.clone())
            .absolute(p.rx_bytes);
        metrics::counter!("sgswitch_port_tx_packets_total", "port" => port.clone())
            .absolute(p.tx_packets);
        metrics::counter!("sgswitch_port_tx_bytes_total", "port" => port.clone())
            .absolute(p.tx_bytes);
        metrics::counter!("sgswitch_port_drops_total", "port" => port).absolute(p.drops);
    }
    for (reason, n) in &s.drops {
        metrics::counter!("sgswitch_drops_total", "reason" => reason.clone()).absolute(*n);
    }
    metrics::gauge!("sgswitch_conntrack_entries").set(s.conntrack_entries as f64);
    for (event, n) in &s.events {
        metrics::counter!("sgswitch_events_total", "event" => event.clone()).absolute(*n);
    }
    metrics::counter!("sgswitch_ports_gone_total").absolute(s.ports_gone);
}

/// The running exporter; dropping it stops both threads.
pub struct MetricsServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl MetricsServer {
    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200));
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Bind `addr`, install the recorder, start the updater and the HTTP responder.
pub fn start(addr: SocketAddr, mgmt: MgmtHandle) -> io::Result<MetricsServer> {
    let listener = TcpListener::bind(addr)?;
    let addr = listener.local_addr()?;
    let handle = prometheus()
        .ok_or_else(|| io::Error::other("another metrics recorder is already installed"))?;
    let stop = Arc::new(AtomicBool::new(false));

    let stop_u = stop.clone();
    let updater = std::thread::Builder::new()
        .name("sgswitch-metrics".into())
        .spawn(move || {
            while !stop_u.load(Ordering::SeqCst) {
                if let Ok(Response::Stats { stats }) = mgmt.call(Request {
                    owner: None,
                    command: Command::Stats,
                }) {
                    record(&stats);
                }
                handle.run_upkeep();
                // Sleep in small steps so that shutdown is quick.
                for _ in 0..10 {
                    if stop_u.load(Ordering::SeqCst) {
                        return;
                    }
                    std::thread::sleep(UPDATE_INTERVAL / 10);
                }
            }
        })?;

    let stop_h = stop.clone();
    let http = std::thread::Builder::new()
        .name("sgswitch-metrics-http".into())
        .spawn(move || {
            for conn in listener.incoming() {
                if stop_h.load(Ordering::SeqCst) {
                    return;
                }
                if let Ok(stream) = conn {
                    let _ = serve_http(stream, handle);
                }
            }
        })?;
    Ok(MetricsServer {
        addr,
        stop,
        threads: vec![updater, http],
    })
}

/// Answer one HTTP request.
fn serve_http(mut stream: TcpStream, handle: &PrometheusHandle) -> io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.set_write_timeout(Some(Duration::from_secs(2)))?;
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && !head.windows(2).any(|w| w == b"\n\n") {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
        if head.len() > 8192 {
            return respond(
                &mut stream,
                "431 Request Header Fields Too Large",
                "request head too large\n",
            );
        }
    }
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    if method != "GET" {
        return respond(&mut stream, "405 Method Not Allowed", "only GET\n");
    }
    match path {
        "/metrics" | "/" => respond(&mut stream, "200 OK", &handle.render()),
        _ => respond(&mut stream, "404 Not Found", "try /metrics\n"),
    }
}

fn respond(stream: &mut TcpStream, status: &str, body: &str) -> io::Result<()> {
    let head = format!(
        "HTTP/1.0 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body.as_bytes())?;
    stream.flush()
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::time::{Duration, Instant};

    use super::*;
    use crate::api::Command;
    use crate::daemon::spawn_management;
    use crate::testutil::*;

    fn get(addr: SocketAddr, request: &str) -> String {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(request.as_bytes()).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    }

    #[test]
    fn serves_prometheus_text_of_the_daemon_stats() {
        let dir = TempDir::new("metrics");
        let core = core_in(&dir, config());
        let (handle, mgmt) = spawn_management(core).unwrap();
        handle
            .call(req(Command::AddGroup {
                name: "web".into(),
                description: "w".into(),
            }))
            .unwrap();
        let server = start("127.0.0.1:0".parse().unwrap(), handle.clone()).unwrap();
        let addr = server.local_addr();
        let deadline = Instant::now() + Duration::from_secs(10);
        let body = loop {
            let r = get(addr, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
            if r.contains("sgswitch_groups 2") {
                break r;
            }
            assert!(
                Instant::now() < deadline,
                "metrics never showed the groups: {r}"
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        assert!(body.starts_with("HTTP/1.0 200 OK\r\n"), "{body}");
        assert!(body.contains("sgswitch_edits_total"), "{body}");
        assert!(
            body.contains("sgswitch_edit_latency_seconds{quantile=\"0.99\"}"),
            "{body}"
        );
        assert!(get(addr, "GET /nope HTTP/1.0\r\n\r\n").starts_with("HTTP/1.0 404"));
        assert!(get(addr, "POST /metrics HTTP/1.0\r\n\r\n").starts_with("HTTP/1.0 405"));
        let huge = format!("GET /metrics HTTP/1.0\r\nX: {}\r\n\r\n", "a".repeat(8_900));
        let mut s = TcpStream::connect(addr).unwrap();
        let _ = s.write_all(huge.as_bytes());
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        assert!(out.starts_with("HTTP/1.0 431"), "{out}");
        drop(server);
        handle.stop();
        mgmt.join().unwrap();
    }
}
