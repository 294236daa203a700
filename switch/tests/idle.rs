//! Adaptive polling with fd-backed ports (no root): the workers must park in
//! epoll when idle (~0% CPU) and wake at once when a frame arrives.
//!
//! The ports are Unix datagram socket pairs behind a small `PortQueue`, so epoll
//! sees a real readable fd, like a TAP. This file holds one test so that the
//! process's CPU time is the switch's.

use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use etherparse::PacketBuilder;
use filter::model::{Instance, Limits, Owner};
use filter::{Model, compile};
use switch::port::{PortError, PortQueue, VnetHdr};
use switch::{PollMode, PortRole, PortSpec, Switch, SwitchConfig};

/// One queue: the switch side of a datagram socket pair.
struct SockQueue {
    sock: UnixDatagram,
}

impl PortQueue for SockQueue {
    fn recv(&self, buf: &mut [u8]) -> Result<Option<(usize, VnetHdr)>, PortError> {
        match self.sock.recv(buf) {
            Ok(n) => Ok(Some((n, VnetHdr::default()))),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(None),
            Err(source) => Err(PortError::Io {
                port: "sock".into(),
                source,
            }),
        }
    }
    fn send(&self, frame: &[u8], _vnet: &VnetHdr) -> Result<(), PortError> {
        self.sock
            .send(frame)
            .map(drop)
            .map_err(|source| PortError::Io {
                port: "sock".into(),
                source,
            })
    }
    fn offloads(&self) -> bool {
        false
    }
    fn poll_fd(&self) -> Option<RawFd> {
        Some(self.sock.as_raw_fd())
    }
}

/// `workers` queues for the switch and the peer ends for the test.
fn sock_port(workers: usize) -> (Vec<Box<dyn PortQueue>>, Vec<UnixDatagram>) {
    let mut queues: Vec<Box<dyn PortQueue>> = Vec::new();
    let mut peers = Vec::new();
    for _ in 0..workers {
        let (a, b) = UnixDatagram::pair().expect("socketpair");
        a.set_nonblocking(true).expect("nonblocking");
        b.set_read_timeout(Some(Duration::from_secs(2)))
            .expect("timeout");
        queues.push(Box::new(SockQueue { sock: a }));
        peers.push(b);
    }
    (queues, peers)
}

/// User + system CPU time of this process, in clock ticks.
fn cpu_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
    // Fields after the command name (which may contain spaces) start after ')'.
    let rest = &stat[stat.rfind(')').expect("comm") + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after ')'.
    f[11].parse::<u64>().expect("utime") + f[12].parse::<u64>().expect("stime")
}

#[test]
fn adaptive_workers_park_in_epoll_and_wake_on_frames() {
    let cfg = SwitchConfig {
        workers: 2,
        poll: PollMode::Adaptive,
        ..SwitchConfig::default()
    };
    let sw = Switch::start(cfg).expect("start");
    let owner = Owner("111122223333".into());
    let mut model = Model::new(Limits::default());
    let mut ends = Vec::new();
    for n in [2u8, 3] {
        let (mac, ip) = ([2, 0, 0, 0, 0, n], Ipv4Addr::new(172, 31, 0, n));
        let id = format!("i-{n:08x}");
        model
            .add_instance(Instance {
                id: id.clone(),
                owner: owner.clone(),
                mac,
                ip,
                groups: vec!["default".into()],
            })
            .expect("instance");
        let (queues, peers) = sock_port(2);
        sw.add_port(PortSpec {
            name: id.clone(),
            role: PortRole::Instance { id, mac, ip },
            queues,
        })
        .expect("port");
        ends.push(peers);
    }
    sw.publish_rules(compile(&model, 1));
    let frame = |sport: u16| {
        let mut v = Vec::new();
        PacketBuilder::ethernet2([2, 0, 0, 0, 0, 2], [2, 0, 0, 0, 0, 3])
            .ipv4([172, 31, 0, 2], [172, 31, 0, 3], 64)
            .udp(sport, 9)
            .write(&mut v, b"wake up")
            .expect("frame");
        v
    };
    let mut buf = [0u8; 2048];

    // Let the workers go idle, then send single frames with pauses: each must be
    // delivered promptly although the workers are parked (500 ms park timeout,
    // so only the epoll wake-up explains a fast delivery).
    std::thread::sleep(Duration::from_millis(200));
    for i in 0..10u16 {
        let q = usize::from(i % 2);
        let t = Instant::now();
        ends[0][q].send(&frame(1000 + i)).expect("send");
        let n = ends[1][q].recv(&mut buf).expect("frame delivered");
        let took = t.elapsed();
        assert_eq!(&buf[..n], frame(1000 + i).as_slice());
        assert!(
            took < Duration::from_millis(250),
            "frame {i} took {took:?}: worker did not wake"
        );
        std::thread::sleep(Duration::from_millis(30));
    }
    let parks = sw.stats().parks;
    assert!(parks >= 10, "workers never parked ({parks})");

    // Idle for a second: the workers must not burn CPU.
    std::thread::sleep(Duration::from_millis(100));
    let before = cpu_ticks();
    std::thread::sleep(Duration::from_secs(1));
    let used = cpu_ticks() - before;
    // Clock ticks are 10 ms: a spinning worker would use ~100 per second.
    assert!(used <= 5, "idle switch used {used} ticks of CPU in 1 s");
    sw.shutdown();
}
