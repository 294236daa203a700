//! Namespace instances and the uplink TAP: making, re-attaching and removing the
//! network plumbing of an instance (DESIGN §5, §7).
//!
//! Contract:
//! * A *namespace instance* `ID` is the network namespace named `ID` (visible to
//!   `ip netns exec ID ...`) holding a persistent, multi-queue, `vnet_hdr` TAP
//!   named `eth0` with the instance's MAC and `IP/PREFIX`, `eth0` and `lo` up.
//!   The TAP is created *inside* the namespace (on a helper thread that
//!   `setns`-ed into it, see [`switch::netns::in_netns`]), so no interface ever
//!   appears in the host's namespace; its fds keep working from the daemon.
//!   [`create_netns_instance`] returns one queue per worker.
//! * Everything is done with syscalls, ioctls and rtnetlink through
//!   [`switch::netns`] and [`switch::tap`]: no process is spawned, so an instance
//!   costs a few milliseconds (the root test below prints ms per instance).
//! * On failure nothing is left behind: a namespace this module created is
//!   deleted again (and the TAP in it goes with it once its fds are closed).
//!   An already existing namespace of the same name is an error and left alone.
//! * Because the TAP is persistent, a restarted daemon gets the same instance's
//!   network back with [`reattach_netns_instance`]; the MAC and address stay on
//!   the device, and programs inside the namespace never notice.
//! * [`kill_netns_processes`] ends what still runs inside an instance's
//!   namespace before it is deleted: the processes whose `/proc/PID/ns/net` is
//!   the namespace's inode ([`netns_inode`], recorded when the instance is made,
//!   so this works even after someone deleted `/run/netns/ID` by hand) get
//!   SIGTERM, then SIGKILL after [`KILL_GRACE`].
//! * [`destroy_netns_instance`] deletes the namespace; the kernel destroys the
//!   namespace, and the TAP in it, once the last fd or process holding it is
//!   gone (the daemon drops the port's queues). Deleting a namespace that is
//!   already gone is not an error, so terminating is idempotent.
//! * The *uplink* is a persistent multi-queue `vnet_hdr` TAP. With a namespace it
//!   is created (or found again after a restart) inside that existing namespace
//!   and set up there, its addresses left to whoever owns the namespace. Without,
//!   it stays in the caller's namespace, up, with `host_addr`.
//! * No `unsafe` here (the crate forbids it): all of it lives in `switch::sys`.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use switch::netns::{self, NetnsError};
use switch::port::PortQueue;
use switch::tap::{self, TapError, TapQueue};

/// The instance-side name of an instance's TAP.
pub const INSTANCE_IFNAME: &str = "eth0";

/// Errors of instance and uplink lifecycle operations; each names the instance
/// (or uplink) and the step that failed.
#[derive(Debug, thiserror::Error)]
pub enum InstanceError {
    #[error("instance {id}: invalid prefix length {prefix} (0-32)")]
    BadPrefix { id: String, prefix: u8 },
    #[error("instance {id}: set its IPv6 address and default route")]
    Ipv6 {
        id: String,
        #[source]
        source: NetnsError,
    },
    #[error("instance {id}: create network namespace {id}")]
    CreateNetns {
        id: String,
        #[source]
        source: NetnsError,
    },
    #[error("instance {id}: enter network namespace {id}")]
    EnterNetns {
        id: String,
        #[source]
        source: NetnsError,
    },
    #[error("instance {id}: network namespace {id} does not exist")]
    NoNetns { id: String },
    #[error("instance {id}: no {INSTANCE_IFNAME} in namespace {id} to re-attach")]
    NoTap {
        id: String,
        #[source]
        source: NetnsError,
    },
    #[error("instance {id}: open TAP {INSTANCE_IFNAME} with {workers} queues")]
    Tap {
        id: String,
        workers: usize,
        #[source]
        source: Box<TapError>,
    },
    #[error("instance {id}: configure {INSTANCE_IFNAME} (MAC {mac}, address {ip}/{prefix})")]
    Configure {
        id: String,
        mac: String,
        ip: Ipv4Addr,
        prefix: u8,
        #[source]
        source: NetnsError,
    },
    #[error("instance {id}: bring up {what} in namespace {id}")]
    Up {
        id: String,
        what: &'static str,
        #[source]
        source: NetnsError,
    },
    #[error("instance {id}: delete network namespace {id}")]
    DeleteNetns {
        id: String,
        #[source]
        source: NetnsError,
    },
    #[error("uplink {name}: namespace {netns} does not exist")]
    UplinkNoNetns { name: String, netns: String },
    #[error("uplink {name} (namespace {ns}): enter namespace", ns = netns.as_deref().unwrap_or("host"))]
    UplinkEnter {
        name: String,
        netns: Option<String>,
        #[source]
        source: NetnsError,
    },
    #[error("uplink {name} (namespace {ns}): open TAP with {workers} queues", ns = netns.as_deref().unwrap_or("host"))]
    UplinkTap {
        name: String,
        netns: Option<String>,
        workers: usize,
        #[source]
        source: Box<TapError>,
    },
    #[error("uplink {name} (namespace {ns}): configure (address {addr})", ns = netns.as_deref().unwrap_or("host"),
        addr = host_addr.map_or("none".to_string(), |a| a.to_string()))]
    UplinkConfigure {
        name: String,
        netns: Option<String>,
        host_addr: Option<Ipv4Net>,
        #[source]
        source: NetnsError,
    },
    #[error("uplink {name} (namespace {ns}): clear persistence", ns = netns.as_deref().unwrap_or("host"))]
    UplinkPersist {
        name: String,
        netns: Option<String>,
        #[source]
        source: Box<TapError>,
    },
}

/// `aa:bb:cc:dd:ee:ff`.
fn mac_text(mac: &filter::Mac) -> String {
    let h: Vec<String> = mac.iter().map(|b| format!("{b:02x}")).collect();
    h.join(":")
}

fn boxed(queues: Vec<TapQueue>) -> Vec<Box<dyn PortQueue>> {
    queues
        .into_iter()
        .map(|q| Box::new(q) as Box<dyn PortQueue>)
        .collect()
}

/// Deletes a namespace this module just created unless disarmed: the "nothing
/// left behind" half of [`create_netns_instance`].
struct NetnsUndo<'a> {
    id: &'a str,
    armed: bool,
}

/// Opens (creating if needed) the persistent multi-queue `vnet_hdr` TAP `eth0` of
/// instance `id`, from a thread that is already inside its namespace.
fn open_eth0(id: &str, workers: usize) -> Result<Vec<TapQueue>, InstanceError> {
    tap::open_tap(INSTANCE_IFNAME, workers, true, true).map_err(|source| InstanceError::Tap {
        id: id.to_owned(),
        workers,
        source: Box::new(source),
    })
}

/// Brings `lo` up in the current thread's namespace (instance `id`'s).
fn lo_up_here(id: &str) -> Result<(), InstanceError> {
    netns::lo_up(None).map_err(|source| InstanceError::Up {
        id: id.to_owned(),
        what: "lo",
        source,
    })
}

impl Drop for NetnsUndo<'_> {
    fn drop(&mut self) {
        if self.armed && netns::exists(self.id) {
            let _ = netns::delete(self.id);
        }
    }
}

/// Makes namespace instance `id`: the namespace, its persistent multi-queue
/// `vnet_hdr` TAP `eth0` with `mac` and `ip/prefix_len`, `eth0` and `lo` up;
/// with `subnet6`, also the IPv6 address SLAAC would give it (the prefix +
/// the EUI-64 of `mac`, `/64`, without DAD) and a default IPv6 route via the
/// switch's link-local router address ([`switch::nd::router_ll`]).
/// Returns one queue per worker. On failure nothing is left behind.
pub fn create_netns_instance(
    id: &str,
    mac: filter::Mac,
    ip: Ipv4Addr,
    prefix_len: u8,
    subnet6: Option<ipnet::Ipv6Net>,
    workers: usize,
) -> Result<Vec<Box<dyn PortQueue>>, InstanceError> {
    if prefix_len > 32 {
        return Err(InstanceError::BadPrefix {
            id: id.to_owned(),
            prefix: prefix_len,
        });
    }
    netns::create(id).map_err(|source| InstanceError::CreateNetns {
        id: id.to_owned(),
        source,
    })?;
    let mut undo = NetnsUndo { id, armed: true };
    let queues = netns::in_netns(id, || -> Result<Vec<TapQueue>, InstanceError> {
        let queues = open_eth0(id, workers)?;
        // `None`: the helper thread's namespace, i.e. the instance's.
        netns::configure_iface(
            None,
            INSTANCE_IFNAME,
            Some(mac),
            Some((ip, prefix_len)),
            true,
        )
        .map_err(|source| InstanceError::Configure {
            id: id.to_owned(),
            mac: mac_text(&mac),
            ip,
            prefix: prefix_len,
            source,
        })?;
        lo_up_here(id)?;
        // The /64's address (no DAD: the switch answers for it alone) and
        // the default route via the switch.
        if let Some(p) = subnet6 {
            let addr = filter::model::eui64_address(p, mac);
            netns::set_ipv6(None, INSTANCE_IFNAME, addr, 64, switch::nd::router_ll()).map_err(
                |source| InstanceError::Ipv6 {
                    id: id.to_owned(),
                    source,
                },
            )?;
        }
        Ok(queues)
    })
    .map_err(|source| InstanceError::EnterNetns {
        id: id.to_owned(),
        source,
    })??;
    undo.armed = false;
    Ok(boxed(queues))
}

/// Re-attaches to the persistent `eth0` of existing namespace instance `id` after
/// a daemon restart: one queue per worker; MAC and address are kept by the
/// device, and `eth0`/`lo` are brought up in case something took them down.
pub fn reattach_netns_instance(
    id: &str,
    workers: usize,
) -> Result<Vec<Box<dyn PortQueue>>, InstanceError> {
    if !netns::exists(id) {
        return Err(InstanceError::NoNetns { id: id.to_owned() });
    }
    let queues = netns::in_netns(id, || -> Result<Vec<TapQueue>, InstanceError> {
        // open_tap would create a fresh, unconfigured eth0: make sure it exists.
        netns::ifindex(None, INSTANCE_IFNAME).map_err(|source| InstanceError::NoTap {
            id: id.to_owned(),
            source,
        })?;
        let queues = open_eth0(id, workers)?;
        netns::configure_iface(None, INSTANCE_IFNAME, None, None, true).map_err(|source| {
            InstanceError::Up {
                id: id.to_owned(),
                what: INSTANCE_IFNAME,
                source,
            }
        })?;
        lo_up_here(id)?;
        Ok(queues)
    })
    .map_err(|source| InstanceError::EnterNetns {
        id: id.to_owned(),
        source,
    })??;
    Ok(boxed(queues))
}

/// Removes namespace instance `id` (and with it its TAP, once the daemon has
/// closed the TAP's fds). A namespace that is already gone is not an error.
pub fn destroy_netns_instance(id: &str) -> Result<(), InstanceError> {
    match netns::delete(id) {
        Ok(()) | Err(NetnsError::NotFound { .. }) => Ok(()),
        Err(source) => Err(InstanceError::DeleteNetns {
            id: id.to_owned(),
            source,
        }),
    }
}

/// Whether the namespace of instance `id` exists.
pub fn netns_exists(id: &str) -> bool {
    netns::exists(id)
}

/// A network namespace's identity: device and inode of its nsfs file (what
/// `/run/netns/NAME` and `/proc/PID/ns/net` both resolve to).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NetnsInode {
    pub dev: u64,
    pub ino: u64,
}

/// The identity of the namespace named `id`, if it exists.
pub fn netns_inode(id: &str) -> Option<NetnsInode> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(netns::path(id)).ok()?;
    Some(NetnsInode {
        dev: m.dev(),
        ino: m.ino(),
    })
}

/// How long processes in a namespace get between SIGTERM and SIGKILL.
pub const KILL_GRACE: std::time::Duration = std::time::Duration::from_millis(1000);

/// The processes (other than this one) whose network namespace is `ns`.
/// Zombies have no namespace any more and are not listed.
pub fn netns_processes(ns: NetnsInode) -> Vec<u32> {
    use std::os::unix::fs::MetadataExt;
    let me = std::process::id();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != me)
        .filter(|pid| {
            std::fs::metadata(format!("/proc/{pid}/ns/net"))
                .is_ok_and(|m| m.dev() == ns.dev && m.ino() == ns.ino)
        })
        .collect()
}

/// Ends every process still running in namespace `ns` (found by comparing
/// `/proc/PID/ns/net` with it, never by name): SIGTERM, up to `grace` for them
/// to exit, then SIGKILL. Returns the PIDs it signalled.
pub fn kill_netns_processes(ns: NetnsInode, grace: std::time::Duration) -> Vec<u32> {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    let pids = netns_processes(ns);
    if pids.is_empty() {
        return pids;
    }
    for &pid in &pids {
        let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
    }
    let deadline = std::time::Instant::now() + grace;
    let mut left = netns_processes(ns);
    while !left.is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
        left = netns_processes(ns);
    }
    for &pid in &left {
        let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
    }
    pids
}

/// Runs `f` in namespace `ns`, or on the calling thread for `None`.
fn in_ns<T: Send>(
    name: &str,
    ns: Option<&str>,
    f: impl FnOnce() -> Result<T, InstanceError> + Send,
) -> Result<T, InstanceError> {
    match ns {
        None => f(),
        Some(n) => netns::in_netns(n, f).map_err(|source| InstanceError::UplinkEnter {
            name: name.to_owned(),
            netns: ns.map(str::to_owned),
            source,
        })?,
    }
}

/// Opens the uplink TAP `name` (persistent, multi-queue, `vnet_hdr`), creating it
/// or re-attaching it after a restart. With `netns` it lives in that existing
/// namespace (created there directly, which is what moving it would achieve,
/// without a detour through the host's namespace) and is set up there, its
/// addresses left alone; without, it stays in the caller's namespace, up, with
/// `host_addr`. On failure a TAP this call created is removed again.
pub fn create_uplink(
    name: &str,
    netns: Option<&str>,
    host_addr: Option<Ipv4Net>,
    workers: usize,
) -> Result<Vec<Box<dyn PortQueue>>, InstanceError> {
    if let Some(ns) = netns
        && !netns::exists(ns)
    {
        return Err(InstanceError::UplinkNoNetns {
            name: name.to_owned(),
            netns: ns.to_owned(),
        });
    }
    let owned_ns = netns.map(str::to_owned);
    let addr = if netns.is_some() { None } else { host_addr };
    let queues = in_ns(name, netns, || -> Result<Vec<TapQueue>, InstanceError> {
        let existed = netns::ifindex(None, name).is_ok();
        let queues = tap::open_tap(name, workers, true, true).map_err(|source| {
            InstanceError::UplinkTap {
                name: name.to_owned(),
                netns: owned_ns.clone(),
                workers,
                source: Box::new(source),
            }
        })?;
        let configured = netns::configure_iface(
            None,
            name,
            None,
            addr.map(|a| (a.addr(), a.prefix_len())),
            true,
        );
        if let Err(source) = configured {
            if !existed {
                // Not persistent any more: the device goes with our fds.
                let _ = queues[0].set_persist(false);
            }
            return Err(InstanceError::UplinkConfigure {
                name: name.to_owned(),
                netns: owned_ns.clone(),
                host_addr: addr,
                source,
            });
        }
        Ok(queues)
    })?;
    Ok(boxed(queues))
}

/// Removes the uplink TAP `name` (in `netns`, or the caller's namespace): clears
/// its persistence so it disappears with its last fd; call it after the switch
/// dropped the uplink's queues. An uplink that does not exist is not an error.
pub fn destroy_uplink(name: &str, netns: Option<&str>) -> Result<(), InstanceError> {
    if let Some(ns) = netns
        && !netns::exists(ns)
    {
        return Ok(());
    }
    let owned_ns = netns.map(str::to_owned);
    in_ns(name, netns, || -> Result<(), InstanceError> {
        if netns::ifindex(None, name).is_err() {
            return Ok(());
        }
        let queues =
            tap::open_tap(name, 1, true, false).map_err(|source| InstanceError::UplinkTap {
                name: name.to_owned(),
                netns: owned_ns.clone(),
                workers: 1,
                source: Box::new(source),
            })?;
        queues[0]
            .set_persist(false)
            .map_err(|source| InstanceError::UplinkPersist {
                name: name.to_owned(),
                netns: owned_ns.clone(),
                source: Box::new(source),
            })
    })
}

/// Root-only tests: real namespaces and TAPs, each uniquely named and removed by
/// a guard even when the test fails. Without root they print `SKIP` and pass.
#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;
    use std::process::Command;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::{Duration, Instant};

    use switch::sys::IfCtl;

    fn root(test: &str) -> bool {
        let r = nix::unistd::geteuid().is_root();
        if !r {
            eprintln!("SKIP {test}: needs root (namespaces, TAPs)");
        }
        r
    }

    static SEQ: AtomicU32 = AtomicU32::new(0);

    /// A unique namespace name, deleted (if it exists) when dropped.
    struct Ns(String);

    impl Ns {
        fn new(kind: &str) -> Ns {
            let n = SEQ.fetch_add(1, Ordering::Relaxed);
            Ns(format!("sgmf-{kind}-{}-{n}", std::process::id()))
        }
    }

    impl Drop for Ns {
        fn drop(&mut self) {
            if netns::exists(&self.0) {
                let _ = netns::delete(&self.0);
            }
        }
    }

    const MAC: filter::Mac = [0x02, 0x5e, 0x00, 0x00, 0x00, 0x01];

    fn mac_of(i: u32) -> filter::Mac {
        let b = i.to_be_bytes();
        [0x02, 0x5e, b[0], b[1], b[2], b[3]]
    }

    /// `ip -4 -o addr show dev IF` inside `ns` (tests may spawn `ip`).
    fn addrs(ns: &str, ifname: &str) -> String {
        let o = Command::new("ip")
            .args(["-n", ns, "-4", "-o", "addr", "show", "dev", ifname])
            .output()
            .expect("run ip");
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// MAC and flags of `ifname` in `ns`.
    fn link(ns: &str, ifname: &str) -> ([u8; 6], i16) {
        netns::in_netns(ns, || {
            let c = IfCtl::new().unwrap();
            (c.mac(ifname).unwrap(), c.flags(ifname).unwrap())
        })
        .unwrap()
    }

    const IFF_UP: i16 = 1;

    /// Makes the kernel inside `ns` send an ARP request for `target` out of its
    /// interface, and waits for it on any of `queues`: proves the queues are the
    /// switch's side of the namespace's `eth0`. Returns the ARP sender (MAC, IP).
    fn arp_from_inside(
        ns: &str,
        target: Ipv4Addr,
        queues: &[Box<dyn PortQueue>],
    ) -> Option<([u8; 6], Ipv4Addr)> {
        netns::in_netns(ns, || {
            let s = UdpSocket::bind("0.0.0.0:0").unwrap();
            let _ = s.send_to(b"sgswitch test", (target, 9));
        })
        .unwrap();
        let mut buf = vec![0u8; 65550];
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            for q in queues {
                while let Some((n, _)) = q.recv(&mut buf).unwrap() {
                    let f = &buf[..n];
                    // Ethernet type ARP, opcode request, target IP as asked.
                    if n >= 42 && f[12..14] == [0x08, 0x06] && f[20..22] == [0, 1] {
                        let tip = Ipv4Addr::new(f[38], f[39], f[40], f[41]);
                        if tip == target {
                            let sha: [u8; 6] = f[22..28].try_into().unwrap();
                            let spa = Ipv4Addr::new(f[28], f[29], f[30], f[31]);
                            return Some((sha, spa));
                        }
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        None
    }

    #[test]
    fn twenty_instances_are_made_fast_configured_and_removed() {
        if !root("twenty_instances") {
            return;
        }
        let names: Vec<Ns> = (0..20).map(|_| Ns::new("i")).collect();
        let t = Instant::now();
        let mut ports = Vec::new();
        for (i, ns) in names.iter().enumerate() {
            let ip = Ipv4Addr::new(172, 31, 0, 10 + i as u8);
            let q = create_netns_instance(&ns.0, mac_of(i as u32), ip, 16, None, 2).unwrap();
            ports.push(q);
        }
        let per = t.elapsed().as_secs_f64() * 1000.0 / 20.0;
        println!("create_netns_instance: {per:.2} ms per instance (20 instances, 2 queues each)");
        assert!(per < 250.0, "{per:.1} ms per instance");
        for (i, ns) in names.iter().enumerate() {
            assert!(netns_exists(&ns.0));
            assert_eq!(ports[i].len(), 2);
            assert!(
                ports[i]
                    .iter()
                    .all(|q| q.offloads() && q.poll_fd().is_some())
            );
            let (mac, flags) = link(&ns.0, INSTANCE_IFNAME);
            assert_eq!(mac, mac_of(i as u32));
            assert_ne!(flags & IFF_UP, 0, "eth0 down in {}", ns.0);
            let (_, lo_flags) = link(&ns.0, "lo");
            assert_ne!(lo_flags & IFF_UP, 0, "lo down in {}", ns.0);
            let a = addrs(&ns.0, INSTANCE_IFNAME);
            assert!(a.contains(&format!("inet 172.31.0.{}/16", 10 + i)), "{a}");
        }
        // Nothing of it in the host's namespace.
        assert!(
            IfCtl::new().unwrap().ifindex(INSTANCE_IFNAME).is_err() || {
                // A host may have a real eth0: then it must not be one of our MACs.
                let m = IfCtl::new().unwrap().mac(INSTANCE_IFNAME).unwrap();
                m[..2] != [0x02, 0x5e]
            }
        );
        let t = Instant::now();
        drop(ports);
        for ns in &names {
            destroy_netns_instance(&ns.0).unwrap();
            assert!(!netns_exists(&ns.0));
        }
        let per = t.elapsed().as_secs_f64() * 1000.0 / 20.0;
        println!("destroy_netns_instance: {per:.2} ms per instance");
        // Idempotent.
        destroy_netns_instance(&names[0].0).unwrap();
    }

    #[test]
    fn queues_carry_the_instances_frames() {
        if !root("queues_carry") {
            return;
        }
        let ns = Ns::new("arp");
        let ip = Ipv4Addr::new(172, 31, 1, 2);
        let q = create_netns_instance(&ns.0, MAC, ip, 16, None, 2).unwrap();
        let got = arp_from_inside(&ns.0, Ipv4Addr::new(172, 31, 1, 3), &q);
        assert_eq!(got, Some((MAC, ip)));
    }

    #[test]
    fn ipv6_address_and_default_route_are_set_directly() {
        if !root("ipv6_direct") {
            return;
        }
        let ns = Ns::new("v6");
        let p: ipnet::Ipv6Net = "fd00:5:6:7::/64".parse().unwrap();
        let _q = create_netns_instance(&ns.0, MAC, Ipv4Addr::new(172, 31, 5, 2), 16, Some(p), 1)
            .unwrap();
        let show = |args: &[&str]| {
            let o = std::process::Command::new("ip")
                .args(["-n", &ns.0])
                .args(args)
                .output()
                .unwrap();
            String::from_utf8_lossy(&o.stdout).into_owned()
        };
        let want = filter::model::eui64_address(p, MAC);
        let addrs = show(&["-6", "addr", "show", "dev", INSTANCE_IFNAME]);
        assert!(addrs.contains(&format!("{want}/64")), "{addrs}");
        let line = addrs
            .lines()
            .find(|l| l.contains(&want.to_string()))
            .unwrap();
        assert!(!line.contains("tentative"), "no DAD wait: {line}");
        assert!(line.contains("nodad"), "{line}");
        let routes = show(&["-6", "route", "show", "default"]);
        assert!(
            routes.contains(&format!("via {}", switch::nd::router_ll())),
            "{routes}"
        );
        // Made again (a replace, as a re-launch would): one address, one
        // default route.
        netns::set_ipv6(
            Some(&ns.0),
            INSTANCE_IFNAME,
            want,
            64,
            switch::nd::router_ll(),
        )
        .unwrap();
        let addrs = show(&["-6", "addr", "show", "dev", INSTANCE_IFNAME]);
        assert_eq!(addrs.matches(&format!("{want}/64")).count(), 1, "{addrs}");
        let routes = show(&["-6", "route", "show", "default"]);
        assert_eq!(routes.lines().count(), 1, "{routes}");
        // A bad interface is an error naming it, in the namespace named.
        let e =
            netns::set_ipv6(Some(&ns.0), "nosuch0", want, 64, switch::nd::router_ll()).unwrap_err();
        assert!(
            e.to_string().contains("nosuch0") && e.to_string().contains(&ns.0),
            "{e}"
        );
    }

    #[test]
    fn reattach_after_the_fds_closed_keeps_mac_and_address() {
        if !root("reattach") {
            return;
        }
        let ns = Ns::new("re");
        let ip = Ipv4Addr::new(172, 31, 2, 2);
        let q = create_netns_instance(&ns.0, MAC, ip, 16, None, 1).unwrap();
        drop(q); // the daemon died: the persistent TAP stays
        let (mac, flags) = link(&ns.0, INSTANCE_IFNAME);
        assert_eq!(mac, MAC);
        assert_ne!(flags & IFF_UP, 0);
        let q = reattach_netns_instance(&ns.0, 2).unwrap();
        assert_eq!(q.len(), 2);
        assert!(addrs(&ns.0, INSTANCE_IFNAME).contains("inet 172.31.2.2/16"));
        let got = arp_from_inside(&ns.0, Ipv4Addr::new(172, 31, 2, 3), &q);
        assert_eq!(got, Some((MAC, ip)));
    }

    #[test]
    fn reattach_needs_the_namespace_and_its_tap() {
        if !root("reattach_needs") {
            return;
        }
        let ns = Ns::new("none");
        let e = reattach_netns_instance(&ns.0, 1).err().unwrap();
        assert!(matches!(e, InstanceError::NoNetns { .. }), "{e}");
        assert!(e.to_string().contains(&ns.0), "{e}");
        netns::create(&ns.0).unwrap();
        let e = reattach_netns_instance(&ns.0, 1).err().unwrap();
        assert!(matches!(e, InstanceError::NoTap { .. }), "{e}");
        // and it did not create a stray eth0
        assert!(netns::ifindex(Some(&ns.0), INSTANCE_IFNAME).is_err());
    }

    #[test]
    fn a_failed_create_leaves_nothing_behind() {
        if !root("failed_create") {
            return;
        }
        let ns = Ns::new("fail");
        // A multicast MAC: the kernel refuses it after the namespace and the TAP
        // were made.
        let bad_mac = [0x01, 0x00, 0x5e, 0x00, 0x00, 0x01];
        let e = create_netns_instance(&ns.0, bad_mac, Ipv4Addr::new(172, 31, 3, 2), 16, None, 2)
            .err()
            .unwrap();
        assert!(matches!(e, InstanceError::Configure { .. }), "{e}");
        assert!(e.to_string().contains("01:00:5e:00:00:01"), "{e}");
        assert!(!netns_exists(&ns.0));
        // Zero queues: fails at the TAP, after the namespace was made.
        let e = create_netns_instance(&ns.0, MAC, Ipv4Addr::new(172, 31, 3, 2), 16, None, 0)
            .err()
            .unwrap();
        assert!(matches!(e, InstanceError::Tap { .. }), "{e}");
        assert!(!netns_exists(&ns.0));
        let e = create_netns_instance(&ns.0, MAC, Ipv4Addr::new(172, 31, 3, 2), 33, None, 1)
            .err()
            .unwrap();
        assert!(
            matches!(e, InstanceError::BadPrefix { prefix: 33, .. }),
            "{e}"
        );
        assert!(!netns_exists(&ns.0));
    }

    #[test]
    fn an_existing_namespace_is_refused_and_left_alone() {
        if !root("existing_ns") {
            return;
        }
        let ns = Ns::new("taken");
        netns::create(&ns.0).unwrap();
        let e = create_netns_instance(&ns.0, MAC, Ipv4Addr::new(172, 31, 4, 2), 16, None, 1)
            .err()
            .unwrap();
        assert!(matches!(e, InstanceError::CreateNetns { .. }), "{e}");
        assert!(netns_exists(&ns.0), "someone else's namespace was deleted");
    }

    #[test]
    fn uplink_in_a_namespace_is_created_reattached_and_destroyed() {
        if !root("uplink_netns") {
            return;
        }
        let ns = Ns::new("up");
        netns::create(&ns.0).unwrap();
        let name = format!("sgmfu{:x}", std::process::id());
        let q = create_uplink(&name, Some(&ns.0), None, 2).unwrap();
        assert_eq!(q.len(), 2);
        let (_, flags) = link(&ns.0, &name);
        assert_ne!(flags & IFF_UP, 0);
        assert!(
            IfCtl::new().unwrap().ifindex(&name).is_err(),
            "uplink in the host namespace"
        );
        assert_eq!(
            addrs(&ns.0, &name),
            "",
            "addresses are the namespace owner's business"
        );
        // Someone puts an address on it; a restarted daemon re-attaches.
        let st = Command::new("ip")
            .args(["-n", &ns.0, "addr", "add", "172.31.255.10/16", "dev", &name])
            .status()
            .unwrap();
        assert!(st.success());
        drop(q);
        let q = create_uplink(&name, Some(&ns.0), None, 2).unwrap();
        assert!(addrs(&ns.0, &name).contains("inet 172.31.255.10/16"));
        let got = arp_from_inside(&ns.0, Ipv4Addr::new(172, 31, 0, 9), &q);
        assert_eq!(got.map(|(_, ip)| ip), Some(Ipv4Addr::new(172, 31, 255, 10)));
        drop(q);
        destroy_uplink(&name, Some(&ns.0)).unwrap();
        assert!(
            netns::ifindex(Some(&ns.0), &name).is_err(),
            "uplink still there"
        );
        destroy_uplink(&name, Some(&ns.0)).unwrap();
        let e = create_uplink(&name, Some("sgmf-no-such-ns"), None, 1)
            .err()
            .unwrap();
        assert!(matches!(e, InstanceError::UplinkNoNetns { .. }), "{e}");
    }

    #[test]
    fn host_uplink_gets_its_address() {
        if !root("host_uplink") {
            return;
        }
        // "The host" here is a throwaway namespace: tests never configure the
        // real host's namespace.
        let ns = Ns::new("host");
        netns::create(&ns.0).unwrap();
        let name = format!("sgmfh{:x}", std::process::id());
        let addr: Ipv4Net = "172.31.255.1/16".parse().unwrap();
        let n2 = name.clone();
        let q = netns::in_netns(&ns.0, move || create_uplink(&n2, None, Some(addr), 1))
            .unwrap()
            .unwrap();
        assert!(addrs(&ns.0, &name).contains("inet 172.31.255.1/16"));
        let (_, flags) = link(&ns.0, &name);
        assert_ne!(flags & IFF_UP, 0);
        drop(q);
        let n2 = name.clone();
        netns::in_netns(&ns.0, move || destroy_uplink(&n2, None))
            .unwrap()
            .unwrap();
        // The TAP goes with its last descriptor; a child another test forks
        // at that moment holds a copy until it execs, so allow a moment.
        let gone = (0..100).any(|_| {
            let gone = netns::ifindex(Some(&ns.0), &name).is_err();
            if !gone {
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            gone
        });
        assert!(gone, "uplink {name} still exists after destroy_uplink");
    }
}
