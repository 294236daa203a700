//! Root tests of the port layer against the real kernel: TAPs created inside
//! network namespaces, a naive test bridge between two ports, persistence and
//! re-attach, vanished netdevs, and AF_PACKET on veths.
//!
//! Lab rules: every host is a namespace this test creates (`sgc<pid><tag>`);
//! traffic only flows between them; the root namespace gets no interface, address
//! or route (veths are made inside a "switch" namespace, and the AF_PACKET
//! sockets are opened there via `in_netns`). Loads are bounded in bytes and time.
//! Namespaces are deleted by `NetnsGuard`s, bridge threads stopped by their own
//! guard, even when an assertion fails. Without root the tests print why and pass.

#[macro_use]
mod common;
use common::{is_root, pat, ping, run_in};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use switch::afpacket::{AfPacketQueue, open_afpacket};
use switch::netns::{self, NetnsGuard};
use switch::port::{PortError, PortQueue, VnetHdr};
use switch::tap::{TapQueue, open_tap, open_tap_in_netns};

/// A namespace name unique to this test process.
fn ns_name(tag: &str) -> String {
    format!("sgc{}{}", std::process::id(), tag)
}

fn ns(tag: &str) -> NetnsGuard {
    let name = ns_name(tag);
    let g = NetnsGuard::create(&name).unwrap_or_else(|e| panic!("create namespace {name}: {e}"));
    netns::lo_up(Some(&name)).unwrap();
    g
}

const IP_A: Ipv4Addr = Ipv4Addr::new(10, 250, 0, 1);
const IP_B: Ipv4Addr = Ipv4Addr::new(10, 250, 0, 2);
const MAC_A: [u8; 6] = [0x02, 0x5c, 0, 0, 0, 0x01];
const MAC_B: [u8; 6] = [0x02, 0x5c, 0, 0, 0, 0x02];
const PREFIX: u8 = 24;

/// Creates TAP `eth0` inside `ns` and gives it MAC/address, up.
fn tap_instance(
    ns: &str,
    mac: [u8; 6],
    ip: Ipv4Addr,
    queues: usize,
    vnet: bool,
    persist: bool,
) -> Vec<TapQueue> {
    let q = open_tap_in_netns(ns, "eth0", queues, vnet, persist).unwrap();
    assert!(q.iter().all(|q| q.name() == "eth0"));
    netns::configure_iface(Some(ns), "eth0", Some(mac), Some((ip, PREFIX)), true).unwrap();
    q
}

#[derive(Debug, Default)]
struct BridgeStats {
    frames: u64,
    gso_frames: u64,
    csum_partial_frames: u64,
    max_len: usize,
    errors: u64,
}

/// A naive two-port test bridge on its own thread: everything read on one side
/// (any of its queues) is written to queue 0 of the other side.
struct Bridge {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<BridgeStats>>,
}

impl Bridge {
    fn start(a: Vec<Box<dyn PortQueue>>, b: Vec<Box<dyn PortQueue>>) -> Bridge {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let handle = thread::spawn(move || {
            let mut st = BridgeStats::default();
            let mut buf = vec![0u8; 65550];
            while !s.load(Ordering::Relaxed) {
                let mut moved = false;
                for (src, dst) in [(&a, &b[0]), (&b, &a[0])] {
                    for q in src.iter() {
                        for _ in 0..64 {
                            match q.recv(&mut buf) {
                                Ok(Some((n, h))) => {
                                    moved = true;
                                    st.frames += 1;
                                    st.max_len = st.max_len.max(n);
                                    if h.gso_type != VnetHdr::GSO_NONE {
                                        st.gso_frames += 1;
                                    }
                                    if h.flags & VnetHdr::F_NEEDS_CSUM != 0 {
                                        st.csum_partial_frames += 1;
                                    }
                                    if dst.send(&buf[..n], &h).is_err() {
                                        st.errors += 1;
                                    }
                                }
                                Ok(None) => break,
                                Err(_) => {
                                    st.errors += 1;
                                    break;
                                }
                            }
                        }
                    }
                }
                if !moved {
                    thread::sleep(Duration::from_micros(20));
                }
            }
            st
        });
        Bridge {
            stop,
            handle: Some(handle),
        }
    }

    fn finish(mut self) -> BridgeStats {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.take().unwrap().join().expect("bridge thread")
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

fn boxed<Q: PortQueue + 'static>(qs: Vec<Q>) -> Vec<Box<dyn PortQueue>> {
    qs.into_iter()
        .map(|q| Box::new(q) as Box<dyn PortQueue>)
        .collect()
}

/// Sends `bytes` of the pattern over TCP from namespace `cli` to `srv_ip:port`
/// in namespace `srv` and checks every byte on arrival. Returns Gbit/s.
fn tcp_transfer(srv: &str, cli: &str, srv_ip: Ipv4Addr, port: u16, bytes: u64) -> f64 {
    let listener = netns::in_netns(srv, || TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)))
        .unwrap()
        .unwrap();
    listener.set_nonblocking(true).unwrap();
    let receiver = thread::spawn(move || -> Result<u64, String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut s = loop {
            match listener.accept() {
                Ok((s, _)) => break s,
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < deadline =>
                {
                    thread::sleep(Duration::from_millis(5))
                }
                Err(e) => return Err(format!("accept: {e}")),
            }
        };
        s.set_nonblocking(false).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut buf = vec![0u8; 1 << 16];
        let mut got = 0u64;
        loop {
            let n = s
                .read(&mut buf)
                .map_err(|e| format!("read after {got} bytes: {e}"))?;
            if n == 0 {
                return Ok(got);
            }
            for (k, &b) in buf[..n].iter().enumerate() {
                let i = got + k as u64;
                if b != pat(i) {
                    return Err(format!("byte {i} is {b:#x}, expected {:#x}", pat(i)));
                }
            }
            got += n as u64;
        }
    });
    let addr = SocketAddr::from((srv_ip, port));
    let mut s = netns::in_netns(cli, || {
        TcpStream::connect_timeout(&addr, Duration::from_secs(5))
    })
    .unwrap()
    .unwrap();
    s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
    let start = Instant::now();
    let mut chunk = vec![0u8; 1 << 16];
    let mut sent = 0u64;
    while sent < bytes {
        let n = chunk.len().min((bytes - sent) as usize);
        for (k, b) in chunk[..n].iter_mut().enumerate() {
            *b = pat(sent + k as u64);
        }
        s.write_all(&chunk[..n])
            .unwrap_or_else(|e| panic!("write after {sent} bytes: {e}"));
        sent += n as u64;
    }
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let got = receiver.join().unwrap();
    let secs = start.elapsed().as_secs_f64();
    assert_eq!(
        got,
        Ok(bytes),
        "TCP transfer must arrive intact and complete"
    );
    bytes as f64 * 8.0 / secs / 1e9
}

#[test]
fn tap_bridge_carries_ping_between_namespaces() {
    require_root!();
    let (a, b) = (ns("pa"), ns("pb"));
    let qa = tap_instance(a.name(), MAC_A, IP_A, 1, false, false);
    let qb = tap_instance(b.name(), MAC_B, IP_B, 1, false, false);
    assert!(!qa[0].offloads() && !qb[0].offloads());
    // Nothing connects the two TAPs yet.
    assert!(
        !ping(a.name(), IP_B, 1),
        "ping must fail without the bridge"
    );
    let bridge = Bridge::start(boxed(qa), boxed(qb));
    assert!(ping(a.name(), IP_B, 3), "ping through the bridge");
    let st = bridge.finish();
    assert!(
        st.frames >= 8,
        "ARP + 3 echo requests and replies crossed: {st:?}"
    );
    assert_eq!(st.gso_frames, 0, "no vnet header, no GSO: {st:?}");
    assert_eq!(st.errors, 0, "{st:?}");
}

#[test]
fn tap_vnet_offloads_carry_tcp_super_frames_intact() {
    require_root!();
    let (a, b) = (ns("va"), ns("vb"));
    let qa = tap_instance(a.name(), MAC_A, IP_A, 1, true, false);
    let qb = tap_instance(b.name(), MAC_B, IP_B, 1, true, false);
    assert!(qa[0].offloads() && qa[0].vnet_hdr());
    assert!(
        qa[0].offload_flags() & switch::sys::TUN_F_TSO4 != 0,
        "TSO4 accepted"
    );
    let bridge = Bridge::start(boxed(qa), boxed(qb));
    let gbps = tcp_transfer(b.name(), a.name(), IP_B, 5201, 64 << 20);
    let st = bridge.finish();
    println!("TAP<->TAP naive bridge with vnet_hdr offloads: {gbps:.2} Gbit/s ({st:?})");
    assert!(
        st.gso_frames > 0,
        "TSO super-frames must cross unsegmented: {st:?}"
    );
    assert!(st.max_len > 1514, "frames larger than the MTU: {st:?}");
    assert!(
        st.csum_partial_frames > 0,
        "partial checksums pass through: {st:?}"
    );
    assert_eq!(st.errors, 0, "{st:?}");
}

/// Polls `q` until recv and send both report `Gone` (or 5 s pass).
fn wait_gone(q: &dyn PortQueue) -> (bool, bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut buf = vec![0u8; 65550];
    let frame = [0xffu8; 60];
    let (mut rx_gone, mut tx_gone) = (false, false);
    while Instant::now() < deadline && !(rx_gone && tx_gone) {
        if matches!(q.recv(&mut buf), Err(PortError::Gone { .. })) {
            rx_gone = true;
        }
        if matches!(
            q.send(&frame, &VnetHdr::default()),
            Err(PortError::Gone { .. })
        ) {
            tx_gone = true;
        }
        thread::sleep(Duration::from_millis(1));
    }
    (rx_gone, tx_gone)
}

/// With a helper priority set, what `in_netns` runs is real-time at that
/// priority, and normal again once unset; the calling thread is left as it
/// was.
#[test]
fn helper_threads_run_at_the_chosen_real_time_priority() {
    require_root!();
    let g = ns("fifo");
    // Policy and real-time priority (field 40 of /proc/thread-self/stat).
    let sched = || {
        let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
        let rt: i32 = stat[stat.rfind(')').unwrap() + 2..]
            .split(' ')
            .nth(37)
            .unwrap()
            .parse()
            .unwrap();
        (switch::sys::thread_sched().unwrap().0, rt)
    };
    let helper = || netns::in_netns(g.name(), sched).unwrap();
    let caller = sched();
    assert_eq!(helper(), (switch::sys::SCHED_OTHER, 0));
    netns::set_helper_fifo(Some(2));
    let got = helper();
    netns::set_helper_fifo(None);
    assert_eq!(got, (switch::sys::SCHED_FIFO, 2));
    assert_eq!(netns::helper_fifo(), None);
    assert_eq!(helper(), (switch::sys::SCHED_OTHER, 0));
    assert_eq!(sched(), caller);
}

#[test]
fn deleting_the_namespace_makes_the_tap_gone() {
    require_root!();
    for vnet in [false, true] {
        let a = ns(if vnet { "gv" } else { "gp" });
        let q = tap_instance(a.name(), MAC_A, IP_A, 2, vnet, false);
        let mut buf = vec![0u8; 65550];
        // Alive: reads may find IPv6/ARP noise or nothing, but never "gone".
        assert!(!matches!(q[0].recv(&mut buf), Err(PortError::Gone { .. })));
        q[0].send(&[0xffu8; 60], &VnetHdr::default())
            .expect("send while alive");
        drop(a);
        for (i, queue) in q.iter().enumerate() {
            let (rx, tx) = wait_gone(queue);
            assert!(
                rx && tx,
                "vnet={vnet} queue {i}: recv gone {rx}, send gone {tx}"
            );
        }
    }
}

#[test]
fn writing_to_a_down_tap_is_an_io_error_not_gone() {
    require_root!();
    let a = ns("dn");
    // Created and moved in, but never brought up.
    let q = open_tap_in_netns(a.name(), "eth0", 1, false, false).unwrap();
    match q[0].send(&[0xffu8; 60], &VnetHdr::default()) {
        Err(PortError::Io { source, .. }) => assert_eq!(source.raw_os_error(), Some(libc::EIO)),
        other => panic!("expected EIO as PortError::Io, got {other:?}"),
    }
    netns::configure_iface(Some(a.name()), "eth0", None, None, true).unwrap();
    q[0].send(&[0xffu8; 60], &VnetHdr::default())
        .expect("send once up");
}

#[test]
fn persistent_tap_survives_its_fds_and_reattaches() {
    require_root!();
    let (a, b) = (ns("ra"), ns("rb"));
    let qa = tap_instance(a.name(), MAC_A, IP_A, 1, true, true);
    let qb = tap_instance(b.name(), MAC_B, IP_B, 1, true, false);
    let qb: Vec<Box<dyn PortQueue>> = boxed(qb);
    let qb = Arc::new(qb);

    /// Lends the shared B side to a bridge.
    struct Shared(Arc<Vec<Box<dyn PortQueue>>>);
    impl PortQueue for Shared {
        fn recv(&self, buf: &mut [u8]) -> Result<Option<(usize, VnetHdr)>, PortError> {
            self.0[0].recv(buf)
        }
        fn send(&self, frame: &[u8], vnet: &VnetHdr) -> Result<(), PortError> {
            self.0[0].send(frame, vnet)
        }
        fn offloads(&self) -> bool {
            self.0[0].offloads()
        }
        fn poll_fd(&self) -> Option<std::os::fd::RawFd> {
            self.0[0].poll_fd()
        }
    }

    let bridge = Bridge::start(boxed(qa), vec![Box::new(Shared(qb.clone()))]);
    assert!(ping(a.name(), IP_B, 1), "ping before detaching");
    drop(bridge); // closes A's only fd

    // The device and its configuration are still there.
    let idx = netns::ifindex(Some(a.name()), "eth0").expect("persistent TAP outlives its fds");
    assert!(!ping(a.name(), IP_B, 1), "nothing reads the TAP now");

    // Re-attach by name inside the namespace, now with two queues.
    let qa = open_tap_in_netns(a.name(), "eth0", 2, true, true).unwrap();
    assert_eq!(qa.len(), 2);
    assert_eq!(
        netns::ifindex(Some(a.name()), "eth0").unwrap(),
        idx,
        "same device, not a new one"
    );
    let bridge = Bridge::start(boxed(qa), vec![Box::new(Shared(qb.clone()))]);
    assert!(
        ping(a.name(), IP_B, 3),
        "traffic flows again after re-attach"
    );
    let st = bridge.finish();
    assert!(st.frames >= 6, "{st:?}");

    // Clearing persistence lets the device go with its last fd.
    let qa = open_tap_in_netns(a.name(), "eth0", 1, true, false).unwrap();
    qa[0].set_persist(false).unwrap();
    drop(qa);
    assert!(
        netns::ifindex(Some(a.name()), "eth0").is_err(),
        "non-persistent TAP vanished with its fd"
    );
}

/// Makes a veth pair inside namespace `sw`: `sw_end` stays there, the peer is
/// moved (with `move_to_netns`, one rtnetlink request) into `host` as `eth0` and
/// configured.
fn veth_into(sw: &str, sw_end: &str, host: &str, mac: [u8; 6], ip: Ipv4Addr) {
    let peer = format!("{sw_end}p");
    let out = run_in(
        sw,
        &[
            "ip", "link", "add", sw_end, "type", "veth", "peer", "name", &peer,
        ],
    );
    assert!(out.status.success(), "ip link add veth");
    netns::in_netns(sw, || netns::move_to_netns(&peer, host))
        .unwrap()
        .unwrap();
    let out = run_in(host, &["ip", "link", "set", &peer, "name", "eth0"]);
    assert!(out.status.success());
    netns::configure_iface(Some(host), "eth0", Some(mac), Some((ip, PREFIX)), true).unwrap();
    netns::configure_iface(Some(sw), sw_end, None, None, true).unwrap();
}

/// Builds an Ethernet/IPv4/UDP broadcast frame (UDP checksum 0 = none).
fn udp_broadcast_frame(
    src_mac: [u8; 6],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    port: u16,
    payload: &[u8],
) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&[0xff; 6]);
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    let total = (20 + 8 + payload.len()) as u16;
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip[8] = 64;
    ip[9] = 17;
    ip[12..16].copy_from_slice(&src.octets());
    ip[16..20].copy_from_slice(&dst.octets());
    let mut sum: u32 = ip
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    ip[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&port.to_be_bytes());
    f.extend_from_slice(&port.to_be_bytes());
    f.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(payload);
    f
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn afpacket_sees_namespace_frames_but_not_its_own() {
    require_root!();
    let (sw, a) = (ns("as"), ns("aa"));
    veth_into(sw.name(), "vA", a.name(), MAC_A, IP_A);
    for vnet in [true, false] {
        let cfg = switch::afpacket::AfPacketConfig {
            vnet_hdr: vnet,
            ..Default::default()
        };
        let q: Vec<AfPacketQueue> = netns::in_netns(sw.name(), || {
            switch::afpacket::open_afpacket_with("vA", 1, cfg)
        })
        .unwrap()
        .unwrap();
        let q = &q[0];
        assert_eq!(q.offloads(), vnet);
        let bcast = Ipv4Addr::new(10, 250, 0, 255);
        let port = 40000 + u16::from(vnet);
        let sock = netns::in_netns(a.name(), || UdpSocket::bind((Ipv4Addr::UNSPECIFIED, port)))
            .unwrap()
            .unwrap();
        sock.set_broadcast(true).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();

        // Our own frame goes out on vA and reaches the namespace's socket...
        let ours = udp_broadcast_frame(
            [0x02, 0x5c, 0, 0, 0, 0xee],
            Ipv4Addr::new(10, 250, 0, 9),
            bcast,
            port,
            b"from-switch",
        );
        q.send(&ours, &VnetHdr::default()).expect("AF_PACKET send");
        let mut got = [0u8; 64];
        let (n, from) = sock
            .recv_from(&mut got)
            .expect("namespace receives the frame we sent");
        assert_eq!(&got[..n], b"from-switch");
        assert_eq!(
            from.ip(),
            std::net::IpAddr::V4(Ipv4Addr::new(10, 250, 0, 9))
        );

        // ...while the namespace's own datagrams show up on our ring.
        for _ in 0..5 {
            sock.send_to(b"from-ns", (bcast, port)).unwrap();
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut buf = vec![0u8; 65550];
        let (mut theirs, mut own) = (0, 0);
        while Instant::now() < deadline && theirs < 5 {
            match q.recv(&mut buf).expect("recv") {
                Some((n, _)) => {
                    let f = &buf[..n];
                    if contains(f, b"from-ns") {
                        assert_eq!(&f[6..12], &MAC_A, "sent by the namespace's eth0");
                        theirs += 1;
                    }
                    if contains(f, b"from-switch") {
                        own += 1;
                    }
                }
                None => thread::sleep(Duration::from_millis(1)),
            }
        }
        assert_eq!(
            theirs, 5,
            "vnet={vnet}: all five datagrams of the namespace seen"
        );
        assert_eq!(
            own, 0,
            "vnet={vnet}: our own outgoing frame is not received back"
        );
    }
}

#[test]
fn afpacket_vnet_bridge_carries_tcp_with_gso_and_fanout() {
    require_root!();
    let (sw, a, b) = (ns("ts"), ns("ta"), ns("tb"));
    veth_into(sw.name(), "vA", a.name(), MAC_A, IP_A);
    veth_into(sw.name(), "vB", b.name(), MAC_B, IP_B);
    // Two queues per side: a PACKET_FANOUT group each.
    let qa = netns::in_netns(sw.name(), || open_afpacket("vA", 2))
        .unwrap()
        .unwrap();
    let qb = netns::in_netns(sw.name(), || open_afpacket("vB", 2))
        .unwrap()
        .unwrap();
    let bridge = Bridge::start(boxed(qa), boxed(qb));
    assert!(ping(a.name(), IP_B, 2), "ping across the AF_PACKET bridge");
    let gbps = tcp_transfer(b.name(), a.name(), IP_B, 5202, 64 << 20);
    let st = bridge.finish();
    println!("veth<->AF_PACKET(TPACKET_V3, vnet_hdr) naive bridge: {gbps:.2} Gbit/s ({st:?})");
    assert!(
        st.gso_frames > 0,
        "veth GSO super-frames described by the vnet header: {st:?}"
    );
    assert!(st.max_len > 1514, "{st:?}");
    assert!(
        st.csum_partial_frames > 0,
        "partial checksums reported as NEEDS_CSUM: {st:?}"
    );
}

#[test]
fn afpacket_port_is_gone_when_its_veth_vanishes() {
    require_root!();
    let (sw, a) = (ns("ds"), ns("da"));
    veth_into(sw.name(), "vA", a.name(), MAC_A, IP_A);
    let q = netns::in_netns(sw.name(), || open_afpacket("vA", 1))
        .unwrap()
        .unwrap();
    q[0].send(&[0xffu8; 60], &VnetHdr::default())
        .expect("send while alive");
    drop(a); // deleting the peer's namespace destroys the veth pair
    let (rx, tx) = wait_gone(&q[0]);
    assert!(rx && tx, "recv gone {rx}, send gone {tx}");
}

/// Makes `n` instances (namespace + 2-queue vnet TAP `eth0` + MAC/IP/up + lo)
/// and returns ms per instance to create and to delete.
fn make_instances(n: usize, tag: &str, inside: bool) -> (f64, f64) {
    let start = Instant::now();
    let mut guards = Vec::with_capacity(n);
    let mut queues = Vec::with_capacity(n);
    for i in 0..n {
        let g = NetnsGuard::create(&ns_name(&format!("{tag}{i}"))).unwrap();
        let ip = Ipv4Addr::new(10, 251, (i / 250) as u8, (i % 250 + 2) as u8);
        let mac = [0x02, 0x5c, 0, 0, (i >> 8) as u8, i as u8];
        let q = if inside {
            switch::tap::open_tap_inside_netns(g.name(), "eth0", 2, true, false).unwrap()
        } else {
            open_tap_in_netns(g.name(), "eth0", 2, true, false).unwrap()
        };
        netns::configure_iface(Some(g.name()), "eth0", Some(mac), Some((ip, PREFIX)), true)
            .unwrap();
        netns::lo_up(Some(g.name())).unwrap();
        queues.push(q);
        guards.push(g);
    }
    let per = start.elapsed().as_secs_f64() * 1000.0 / n as f64;
    // The last one really is configured.
    let out = run_in(guards[n - 1].name(), &["ip", "-br", "addr", "show", "eth0"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("10.251.0.{}/24", n + 1)));
    let t = Instant::now();
    drop(queues);
    drop(guards);
    let del = t.elapsed().as_secs_f64() * 1000.0 / n as f64;
    for i in 0..n {
        assert!(!netns::exists(&ns_name(&format!("{tag}{i}"))));
    }
    (per, del)
}

#[test]
fn fifty_namespace_instances_timed() {
    require_root!();
    const N: usize = 50;
    let (moved, moved_del) = make_instances(N, "m", false);
    let (inside, inside_del) = make_instances(N, "i", true);
    println!(
        "{N} namespace instances (netns + 2-queue vnet TAP + MAC/IP/up + lo), ms each: \
         TAP created and moved in {moved:.2} (delete {moved_del:.2}); \
         TAP created inside {inside:.2} (delete {inside_del:.2})"
    );
}

/// Waits up to 2 s for `fd` to poll readable through `sys::Epoll`.
fn epoll_readable(fd: std::os::fd::RawFd) -> bool {
    use switch::sys::{EPOLLIN, Epoll, EpollEvents};
    let ep = Epoll::new().unwrap();
    ep.add(fd, EPOLLIN, 7).unwrap();
    let mut evs = EpollEvents::with_capacity(4);
    ep.wait(&mut evs, 2000).unwrap() == 1 && evs.iter().any(|(t, e)| t == 7 && e & EPOLLIN != 0)
}

#[test]
fn poll_fds_wake_epoll_when_a_frame_arrives() {
    require_root!();
    let (sw, a, b) = (ns("es"), ns("ea"), ns("eb"));
    veth_into(sw.name(), "vA", a.name(), MAC_A, IP_A);
    let pq = netns::in_netns(sw.name(), || open_afpacket("vA", 1))
        .unwrap()
        .unwrap();
    let tq = tap_instance(b.name(), MAC_B, IP_B, 1, true, false);
    let mut buf = vec![0u8; 65550];
    // Drain whatever the interfaces said when they came up.
    thread::sleep(Duration::from_millis(50));
    while let Ok(Some(_)) = pq[0].recv(&mut buf) {}
    while let Ok(Some(_)) = tq[0].recv(&mut buf) {}

    let bcast = Ipv4Addr::new(10, 250, 0, 255);
    for (ns, q) in [
        (a.name(), &pq[0] as &dyn PortQueue),
        (b.name(), &tq[0] as &dyn PortQueue),
    ] {
        let s = netns::in_netns(ns, || UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)))
            .unwrap()
            .unwrap();
        s.set_broadcast(true).unwrap();
        s.send_to(b"wake-up", (bcast, 9)).unwrap();
        assert!(
            epoll_readable(q.poll_fd().expect("has a poll fd")),
            "{ns}: poll fd became readable"
        );
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut seen = false;
        while !seen && Instant::now() < deadline {
            match q.recv(&mut buf).unwrap() {
                Some((n, _)) => seen = contains(&buf[..n], b"wake-up"),
                None => thread::sleep(Duration::from_millis(1)),
            }
        }
        assert!(seen, "{ns}: the frame that woke epoll is received");
    }
}

#[test]
fn single_queue_tap_for_qemu_style_openers() {
    use switch::tap::{TapOptions, open_tap_with};
    require_root!();
    let a = ns("sq");
    let single = TapOptions {
        queues: 1,
        vnet_hdr: true,
        persist: true,
        multi_queue: false,
    };
    // Made single-queue and persistent, then closed: the way a TAP is prepared
    // for QEMU's `-netdev tap,ifname=..`, which attaches without IFF_MULTI_QUEUE.
    let q = netns::in_netns(a.name(), || open_tap_with("tapq0", single))
        .unwrap()
        .unwrap();
    drop(q);
    let again = netns::in_netns(a.name(), || open_tap_with("tapq0", single)).unwrap();
    let q = again.expect("a single-queue opener re-attaches");
    // The kernel refuses a multi-queue attach to a single-queue device.
    let mq = netns::in_netns(a.name(), || open_tap("tapq0", 1, true, true)).unwrap();
    assert!(
        matches!(&mq, Err(switch::tap::TapError::SetIff { source, .. }) if source.raw_os_error() == Some(libc::EINVAL)),
        "{mq:?}"
    );
    q[0].set_persist(false).unwrap();
}
