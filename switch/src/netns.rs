//! Named network namespaces, made and used the way `ip netns` does, without
//! spawning `ip`.
//!
//! Contract:
//! * A namespace `NAME` is a bind mount of a namespace file onto
//!   `/run/netns/NAME`, so `ip netns exec NAME ...` and `ip netns del NAME` work on
//!   the namespaces made here and vice versa. `/run/netns` is made a shared mount
//!   (like `ip` does) so the mounts propagate into other mount namespaces.
//! * Only helper threads ever change namespace ([`create`] unshares one, [`in_netns`]
//!   setns's one); the calling thread and the rest of the process stay where they
//!   are. Fds opened in the helper (TAP fds, sockets) keep belonging to the
//!   namespace they were opened in after the helper exits.
//! * Interface configuration ([`configure_iface`], [`lo_up`]) uses ioctls on a
//!   socket created inside the target namespace; [`move_to_netns`] is one
//!   rtnetlink `RTM_NEWLINK` request with `IFLA_NET_NS_FD`. No process is spawned
//!   on any of these paths, so making an instance costs a few milliseconds.
//! * Deleting a namespace unmounts and unlinks its file; the kernel destroys it
//!   (and the TAPs in it) once nothing else holds it, asynchronously.
//! * The helper threads can run at a real-time priority ([`set_helper_fifo`]),
//!   so the kernel sends the real-time threads it wakes meanwhile (a switch's
//!   workers and edit path) to another CPU instead of queueing them behind
//!   the helper's long system calls.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

use crate::sys;

/// Where named namespaces are mounted.
pub const NETNS_RUN_DIR: &str = "/run/netns";
/// The namespace file of the calling thread.
const THREAD_NETNS: &str = "/proc/thread-self/ns/net";
/// Mode of the (empty) mount-point file, as `ip netns add` makes it.
const NS_FILE_MODE: u32 = 0o000;
/// Longest namespace name accepted (a file name).
pub const NAME_MAX: usize = 255;

/// Errors of namespace operations.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("invalid network namespace name {name:?}")]
    InvalidName { name: String },
    #[error("network namespace {name:?} already exists")]
    Exists { name: String },
    #[error("network namespace {name:?} does not exist")]
    NotFound { name: String },
    /// A system call on the namespace failed; `op` names it.
    #[error("{op} for network namespace {name:?}")]
    Sys {
        op: &'static str,
        name: String,
        #[source]
        source: io::Error,
    },
    /// An interface operation failed; `op` names it.
    #[error("{op} on interface {ifname:?} in namespace {ns}", ns = ns.as_deref().unwrap_or("(current)"))]
    Iface {
        op: &'static str,
        ns: Option<String>,
        ifname: String,
        #[source]
        source: io::Error,
    },
    #[error("spawn helper thread for network namespace {name:?}")]
    Thread {
        name: String,
        #[source]
        source: io::Error,
    },
}

/// The path of namespace `name`.
pub fn path(name: &str) -> String {
    format!("{NETNS_RUN_DIR}/{name}")
}

fn check_name(name: &str) -> Result<(), NetnsError> {
    let ok = !name.is_empty()
        && name.len() <= NAME_MAX
        && name != "."
        && name != ".."
        && !name.bytes().any(|b| b == b'/' || b == 0);
    if ok {
        Ok(())
    } else {
        Err(NetnsError::InvalidName {
            name: name.to_owned(),
        })
    }
}

/// Whether `/run/netns` has been made a shared mount by this process.
static RUN_DIR_READY: Mutex<bool> = Mutex::new(false);

/// Creates `/run/netns` and makes it a recursively shared mount point, as
/// `ip netns add` does (bind-mounting it onto itself first if it is not a mount
/// point yet).
fn ensure_run_dir() -> Result<(), NetnsError> {
    let mut ready = RUN_DIR_READY.lock().unwrap_or_else(|p| p.into_inner());
    if *ready {
        return Ok(());
    }
    let sys_err = |op, source| NetnsError::Sys {
        op,
        name: NETNS_RUN_DIR.to_owned(),
        source,
    };
    fs::create_dir_all(NETNS_RUN_DIR).map_err(|e| sys_err("mkdir", e))?;
    if let Err(e) = sys::make_rshared(NETNS_RUN_DIR) {
        if e.raw_os_error() != Some(libc::EINVAL) {
            return Err(sys_err("mount --make-rshared", e));
        }
        // Not a mount point yet.
        sys::bind_mount_self_rec(NETNS_RUN_DIR).map_err(|e| sys_err("mount --rbind (self)", e))?;
        sys::make_rshared(NETNS_RUN_DIR).map_err(|e| sys_err("mount --make-rshared", e))?;
    }
    *ready = true;
    Ok(())
}

/// `SCHED_FIFO` priority of the helper threads (0: they run as any thread).
static HELPER_FIFO: AtomicI32 = AtomicI32::new(0);
/// A refusal of [`HELPER_FIFO`] was logged already.
static HELPER_FIFO_WARNED: AtomicBool = AtomicBool::new(false);

/// Runs the helper threads ([`create`], [`in_netns`] and what uses them) at
/// `SCHED_FIFO` priority `prio` from now on (`None`: as any thread, the
/// default).
///
/// Why: their system calls are long kernel sections (`unshare(CLONE_NEWNET)`
/// sets up every network subsystem for the new namespace: 0.7-1.6 ms here),
/// and a kernel without full preemption runs nothing else on that CPU
/// until they end. Linux sends a woken real-time thread to another CPU only
/// when the one it would run on is running a real-time thread of at least
/// its priority; a normal thread there, however long in the kernel, is
/// expected to yield at once, so the woken thread waits for it. A helper at
/// a real-time priority at or above the switch's latency-critical threads
/// (its workers, the edit path) tells the scheduler the truth, and they run
/// on another CPU meanwhile. The helpers do a bounded piece of kernel work
/// each and start no process (`SCHED_RESET_ON_FORK` would make one normal
/// anyway). Refused (no `CAP_SYS_NICE`, no real-time budget): a warning,
/// once, and the helpers run as any thread.
pub fn set_helper_fifo(prio: Option<i32>) {
    HELPER_FIFO.store(prio.unwrap_or(0), Ordering::Relaxed);
}

/// The helper threads' `SCHED_FIFO` priority ([`set_helper_fifo`]).
pub fn helper_fifo() -> Option<i32> {
    Some(HELPER_FIFO.load(Ordering::Relaxed)).filter(|&p| p > 0)
}

/// Runs `f` on a helper thread (so the caller's namespace never changes) and
/// returns its result; a panic in `f` is propagated.
fn on_helper<T: Send>(name: &str, f: impl FnOnce() -> T + Send) -> Result<T, NetnsError> {
    let prio = HELPER_FIFO.load(Ordering::Relaxed);
    std::thread::scope(|s| {
        let h = std::thread::Builder::new()
            .name(format!("netns-{name}"))
            .spawn_scoped(s, move || {
                if prio > 0
                    && let Err(e) = sys::set_thread_fifo(prio)
                    && !HELPER_FIFO_WARNED.swap(true, Ordering::Relaxed)
                {
                    tracing::warn!(
                        "namespace helper threads: SCHED_FIFO {prio} refused ({e}); they run \
                         as any thread"
                    );
                }
                f()
            })
            .map_err(|source| NetnsError::Thread {
                name: name.to_owned(),
                source,
            })?;
        match h.join() {
            Ok(v) => Ok(v),
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

/// Creates network namespace `name` (like `ip netns add NAME`).
pub fn create(name: &str) -> Result<(), NetnsError> {
    check_name(name)?;
    ensure_run_dir()?;
    let p = path(name);
    match OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(NS_FILE_MODE)
        .open(&p)
    {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            return Err(NetnsError::Exists {
                name: name.to_owned(),
            });
        }
        Err(source) => {
            return Err(NetnsError::Sys {
                op: "create mount point",
                name: name.to_owned(),
                source,
            });
        }
    }
    let made = on_helper(name, || -> Result<(), NetnsError> {
        sys::unshare_netns().map_err(|source| NetnsError::Sys {
            op: "unshare(CLONE_NEWNET)",
            name: name.to_owned(),
            source,
        })?;
        sys::bind_mount(THREAD_NETNS, &p).map_err(|source| NetnsError::Sys {
            op: "bind mount",
            name: name.to_owned(),
            source,
        })
    })
    .and_then(|r| r);
    if made.is_err() {
        let _ = fs::remove_file(&p);
    }
    made
}

/// Deletes network namespace `name` (like `ip netns del NAME`).
pub fn delete(name: &str) -> Result<(), NetnsError> {
    check_name(name)?;
    let p = path(name);
    if !exists(name) {
        return Err(NetnsError::NotFound {
            name: name.to_owned(),
        });
    }
    if let Err(e) = sys::umount_detach(&p) {
        // EINVAL: not a mount point (a leftover file); unlink it anyway.
        if e.raw_os_error() != Some(libc::EINVAL) {
            return Err(NetnsError::Sys {
                op: "umount",
                name: name.to_owned(),
                source: e,
            });
        }
    }
    fs::remove_file(&p).map_err(|source| NetnsError::Sys {
        op: "unlink",
        name: name.to_owned(),
        source,
    })
}

/// Whether namespace `name` exists.
pub fn exists(name: &str) -> bool {
    check_name(name).is_ok() && fs::symlink_metadata(path(name)).is_ok()
}

/// Names of all namespaces in `/run/netns`.
pub fn list() -> Result<Vec<String>, NetnsError> {
    let rd = match fs::read_dir(NETNS_RUN_DIR) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(NetnsError::Sys {
                op: "read_dir",
                name: NETNS_RUN_DIR.to_owned(),
                source,
            });
        }
    };
    let mut names: Vec<String> = rd
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    names.sort();
    Ok(names)
}

fn open_ns(name: &str) -> Result<File, NetnsError> {
    check_name(name)?;
    File::open(path(name)).map_err(|e| {
        if e.kind() == io::ErrorKind::NotFound {
            NetnsError::NotFound {
                name: name.to_owned(),
            }
        } else {
            NetnsError::Sys {
                op: "open",
                name: name.to_owned(),
                source: e,
            }
        }
    })
}

/// Runs `f` in network namespace `name`, on a helper thread that `setns(2)`-ed
/// into it, and returns its result. Fds `f` opens stay valid (and stay in that
/// namespace) after it returns.
pub fn in_netns<T: Send>(name: &str, f: impl FnOnce() -> T + Send) -> Result<T, NetnsError> {
    let ns = open_ns(name)?;
    on_helper(name, move || -> Result<T, NetnsError> {
        sys::setns_net(ns.as_fd()).map_err(|source| NetnsError::Sys {
            op: "setns",
            name: name.to_owned(),
            source,
        })?;
        Ok(f())
    })
    .and_then(|r| r)
}

/// Runs `f` in namespace `ns`, or in the current one for `None`.
fn in_ns_or_here<T: Send>(ns: Option<&str>, f: impl FnOnce() -> T + Send) -> Result<T, NetnsError> {
    match ns {
        Some(name) => in_netns(name, f),
        None => Ok(f()),
    }
}

/// Makes the error of operation `op` (a failed system call) on interface
/// `ifname` of `ns`, for [`with_iface`].
type IfaceErr<'a> = dyn Fn(&'static str, io::Error) -> NetnsError + Sync + 'a;

/// Runs `f` in `ns` (the current namespace for `None`) for an operation on
/// interface `ifname`; `f` gets the maker of its errors.
fn with_iface<T: Send>(
    ns: Option<&str>,
    ifname: &str,
    f: impl FnOnce(&IfaceErr<'_>) -> Result<T, NetnsError> + Send,
) -> Result<T, NetnsError> {
    let err = |op, source| NetnsError::Iface {
        op,
        ns: ns.map(str::to_owned),
        ifname: ifname.to_owned(),
        source,
    };
    in_ns_or_here(ns, || f(&err)).and_then(|r| r)
}

/// Configures interface `ifname` in namespace `ns` (current one for `None`): MAC,
/// IPv4 address with prefix length (the kernel adds the subnet route), then up.
pub fn configure_iface(
    ns: Option<&str>,
    ifname: &str,
    mac: Option<[u8; 6]>, // a `filter::Mac`
    addr: Option<(Ipv4Addr, u8)>,
    up: bool,
) -> Result<(), NetnsError> {
    with_iface(ns, ifname, |err| {
        let ctl = sys::IfCtl::new().map_err(|e| err("open control socket", e))?;
        if let Some(mac) = mac {
            ctl.set_mac(ifname, mac).map_err(|e| err("set MAC", e))?;
        }
        if let Some((ip, prefix)) = addr {
            ctl.set_ipv4(ifname, ip, prefix)
                .map_err(|e| err("set IPv4 address", e))?;
        }
        if up {
            ctl.set_up(ifname, true).map_err(|e| err("set up", e))?;
        }
        Ok(())
    })
}

/// Brings the loopback interface of `ns` up.
pub fn lo_up(ns: Option<&str>) -> Result<(), NetnsError> {
    configure_iface(ns, "lo", None, None, true)
}

/// The interface index of `ifname` in `ns` (current one for `None`).
pub fn ifindex(ns: Option<&str>, ifname: &str) -> Result<u32, NetnsError> {
    with_iface(ns, ifname, |err| {
        sys::IfCtl::new()
            .and_then(|c| c.ifindex(ifname))
            .map_err(|e| err("get ifindex", e))
    })
}

// --- rtnetlink encoding (native byte order, as netlink is) ---

/// `struct nlmsghdr` length.
const NLMSG_HDRLEN: usize = 16;
/// `struct ifinfomsg` length.
const IFINFOMSG_LEN: usize = 16;
/// `struct rtattr` header length.
const RTA_HDRLEN: usize = 4;
/// `nlmsg_flags`: a request, and we want an ack.
const NLM_F_REQUEST: u16 = libc::NLM_F_REQUEST as u16;
const NLM_F_ACK: u16 = libc::NLM_F_ACK as u16;
/// `nlmsg_type` of an error/ack answer.
const NLMSG_ERROR: u16 = libc::NLMSG_ERROR as u16;

/// `nlmsg_flags` of a request that makes or replaces what it names.
const NLM_F_CREATE_REPLACE: u16 = (libc::NLM_F_CREATE | libc::NLM_F_REPLACE) as u16;

/// Builds an rtnetlink request of type `ty` (`NLM_F_REQUEST` and `flags`):
/// the family header `header`, then the attributes (each padded to 4
/// bytes).
fn request(seq: u32, ty: u16, flags: u16, header: &[u8], attrs: &[(u16, &[u8])]) -> Vec<u8> {
    let attrs_len: usize = attrs
        .iter()
        .map(|(_, v)| (RTA_HDRLEN + v.len() + 3) & !3)
        .sum();
    let len = NLMSG_HDRLEN + header.len() + attrs_len;
    let mut m = Vec::with_capacity(len);
    // nlmsghdr: len, type, flags, seq, pid
    m.extend_from_slice(&(len as u32).to_ne_bytes());
    m.extend_from_slice(&ty.to_ne_bytes());
    m.extend_from_slice(&(NLM_F_REQUEST | flags).to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes()); // pid: the kernel fills it in
    m.extend_from_slice(header);
    // rtattrs: len (unpadded), type, value, padding
    for (ty, v) in attrs {
        m.extend_from_slice(&((RTA_HDRLEN + v.len()) as u16).to_ne_bytes());
        m.extend_from_slice(&ty.to_ne_bytes());
        m.extend_from_slice(v);
        m.resize((m.len() + 3) & !3, 0);
    }
    debug_assert_eq!(m.len(), len);
    m
}

/// Builds `RTM_NEWLINK` for `ifindex` with the given attributes.
fn newlink(seq: u32, ifindex: u32, attrs: &[(u16, &[u8])]) -> Vec<u8> {
    // ifinfomsg: family, pad, type, index, flags, change
    let mut h = Vec::with_capacity(IFINFOMSG_LEN);
    h.push(libc::AF_UNSPEC as u8);
    h.push(0);
    h.extend_from_slice(&0u16.to_ne_bytes());
    h.extend_from_slice(&(ifindex as i32).to_ne_bytes());
    h.extend_from_slice(&0u32.to_ne_bytes());
    h.extend_from_slice(&0u32.to_ne_bytes());
    request(seq, libc::RTM_NEWLINK, NLM_F_ACK, &h, attrs)
}

/// Builds `RTM_NEWADDR` (make or replace) of IPv6 `addr/prefix` on
/// `ifindex`, without duplicate address detection (`IFA_F_NODAD`).
fn newaddr6_nodad(seq: u32, ifindex: u32, addr: Ipv6Addr, prefix: u8) -> Vec<u8> {
    // ifaddrmsg: family, prefixlen, flags, scope, index
    let mut h = vec![libc::AF_INET6 as u8, prefix, libc::IFA_F_NODAD as u8, 0];
    h.extend_from_slice(&ifindex.to_ne_bytes());
    let a = addr.octets();
    let flags = libc::IFA_F_NODAD.to_ne_bytes();
    request(
        seq,
        libc::RTM_NEWADDR,
        NLM_F_ACK | NLM_F_CREATE_REPLACE,
        &h,
        &[
            (libc::IFA_LOCAL, &a),
            (libc::IFA_ADDRESS, &a),
            (libc::IFA_FLAGS, &flags),
        ],
    )
}

/// Builds `RTM_NEWROUTE` (make or replace) of the IPv6 default route via
/// `gateway` out of `ifindex`, in the main table.
fn default_route6(seq: u32, ifindex: u32, gateway: Ipv6Addr) -> Vec<u8> {
    // rtmsg: family, dst_len, src_len, tos, table, protocol, scope, type, flags
    let mut h = vec![
        libc::AF_INET6 as u8,
        0,
        0,
        0,
        libc::RT_TABLE_MAIN,
        libc::RTPROT_BOOT,
        libc::RT_SCOPE_UNIVERSE,
        libc::RTN_UNICAST,
    ];
    h.extend_from_slice(&0u32.to_ne_bytes());
    let gw = gateway.octets();
    let oif = ifindex.to_ne_bytes();
    request(
        seq,
        libc::RTM_NEWROUTE,
        NLM_F_ACK | NLM_F_CREATE_REPLACE,
        &h,
        &[(libc::RTA_GATEWAY, &gw), (libc::RTA_OIF, &oif)],
    )
}

/// Gives `ifname` in `ns` (the current namespace for `None`) IPv6 address
/// `addr/prefix` without duplicate address detection and the default route
/// via `gateway` on it, replacing what is there: `ip -6 addr replace
/// ADDR/PREFIX dev IF nodad` then `ip -6 route replace default via GW dev
/// IF`, as two rtnetlink requests (no process is started). The interface
/// must be up for the route.
pub fn set_ipv6(
    ns: Option<&str>,
    ifname: &str,
    addr: Ipv6Addr,
    prefix: u8,
    gateway: Ipv6Addr,
) -> Result<(), NetnsError> {
    with_iface(ns, ifname, |err| {
        let idx = sys::IfCtl::new()
            .and_then(|c| c.ifindex(ifname))
            .map_err(|e| err("get ifindex", e))?;
        let nl = sys::NetlinkRoute::new().map_err(|e| err("open rtnetlink socket", e))?;
        call(&nl, 1, &newaddr6_nodad(1, idx, addr, prefix))
            .map_err(|e| err("set IPv6 address (RTM_NEWADDR)", e))?;
        call(&nl, 2, &default_route6(2, idx, gateway))
            .map_err(|e| err("set IPv6 default route (RTM_NEWROUTE)", e))
    })
}

/// `nlmsg_flags` of a dump request.
const NLM_F_DUMP: u16 = libc::NLM_F_DUMP as u16;
/// `nlmsg_type` that ends a dump.
const NLMSG_DONE: u16 = libc::NLMSG_DONE as u16;

/// One rtnetlink dump, in the calling thread's network namespace: request type
/// `get` with the family header `header` (e.g. `RTM_GETROUTE` with an
/// `rtmsg`); returns the payloads (family header and attributes) of the
/// answers of type `want`.
pub fn rtnl_dump(get: u16, want: u16, header: &[u8]) -> io::Result<Vec<Vec<u8>>> {
    let nl = sys::NetlinkRoute::new()?;
    nl.send(&request(1, get, NLM_F_DUMP, header, &[]))?;
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = nl.recv(&mut buf)?;
        let mut msgs = &buf[..n];
        while msgs.len() >= NLMSG_HDRLEN {
            let mlen = u32::from_ne_bytes([msgs[0], msgs[1], msgs[2], msgs[3]]) as usize;
            let mtype = u16::from_ne_bytes([msgs[4], msgs[5]]);
            if mlen < NLMSG_HDRLEN || mlen > msgs.len() {
                return Err(io::Error::other("malformed rtnetlink answer"));
            }
            match mtype {
                NLMSG_DONE => return Ok(out),
                NLMSG_ERROR => {
                    let code = msgs
                        .get(16..20)
                        .map_or(0, |b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
                    if code != 0 {
                        return Err(io::Error::from_raw_os_error(-code));
                    }
                }
                t if t == want => out.push(msgs[NLMSG_HDRLEN..mlen].to_vec()),
                _ => {}
            }
            msgs = &msgs[((mlen + 3) & !3).min(msgs.len())..];
        }
    }
}

/// The `(type, value)` route attributes of a dump payload after its family
/// header of `skip` bytes.
pub fn rtnl_attrs(payload: &[u8], skip: usize) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    let mut rest = payload.get(skip..).unwrap_or_default();
    while rest.len() >= RTA_HDRLEN {
        let len = u16::from_ne_bytes([rest[0], rest[1]]) as usize;
        let typ = u16::from_ne_bytes([rest[2], rest[3]]) & 0x3fff;
        if len < RTA_HDRLEN || len > rest.len() {
            break;
        }
        out.push((typ, &rest[RTA_HDRLEN..len]));
        rest = &rest[((len + 3) & !3).min(rest.len())..];
    }
    out
}

/// Sends request `msg` (sequence number `seq`, an ack asked for) and reads
/// its answer.
fn call(nl: &sys::NetlinkRoute, seq: u32, msg: &[u8]) -> io::Result<()> {
    nl.send(msg)?;
    read_ack(nl, seq)
}

/// Reads the answer to request `seq`: `Ok` for an ack, the kernel's errno else.
fn read_ack(nl: &sys::NetlinkRoute, seq: u32) -> io::Result<()> {
    let mut buf = [0u8; 4096];
    loop {
        let n = nl.recv(&mut buf)?;
        let mut off = 0;
        while off + NLMSG_HDRLEN <= n {
            let h = &buf[off..];
            let len = u32::from_ne_bytes([h[0], h[1], h[2], h[3]]) as usize;
            let ty = u16::from_ne_bytes([h[4], h[5]]);
            let mseq = u32::from_ne_bytes([h[8], h[9], h[10], h[11]]);
            if len < NLMSG_HDRLEN || off + len > n {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("bad netlink message length {len}"),
                ));
            }
            if ty == NLMSG_ERROR && mseq == seq && len >= NLMSG_HDRLEN + 4 {
                let code = i32::from_ne_bytes([h[16], h[17], h[18], h[19]]);
                return if code == 0 {
                    Ok(())
                } else {
                    Err(io::Error::from_raw_os_error(-code))
                };
            }
            off += (len + 3) & !3;
        }
    }
}

/// Moves interface `ifname` from the current namespace into namespace `ns` (like
/// `ip link set IFNAME netns NS`) with one rtnetlink request.
pub fn move_to_netns(ifname: &str, ns: &str) -> Result<(), NetnsError> {
    move_to_netns_as(ifname, ns, None)
}

/// Like [`move_to_netns`], renaming the interface to `new_name` on the way (in
/// the same request, so the name is never taken in the source namespace).
pub fn move_to_netns_as(ifname: &str, ns: &str, new_name: Option<&str>) -> Result<(), NetnsError> {
    let target = open_ns(ns)?;
    // Here, in the caller's namespace (`None`).
    with_iface(None, ifname, |err| {
        let idx = sys::IfCtl::new()
            .and_then(|c| c.ifindex(ifname))
            .map_err(|e| err("get ifindex", e))?;
        let mut name_attr = Vec::new();
        if let Some(n) = new_name {
            sys::check_ifname(n).map_err(|e| err("rename", e))?;
            name_attr.extend_from_slice(n.as_bytes());
            name_attr.push(0);
        }
        let fd = (target.as_raw_fd() as u32).to_ne_bytes();
        let mut attrs: Vec<(u16, &[u8])> = vec![(libc::IFLA_NET_NS_FD, &fd)];
        if new_name.is_some() {
            attrs.push((libc::IFLA_IFNAME, &name_attr));
        }
        let nl = sys::NetlinkRoute::new().map_err(|e| err("open rtnetlink socket", e))?;
        call(&nl, 1, &newlink(1, idx, &attrs))
            .map_err(|e| err("move to namespace (RTM_NEWLINK IFLA_NET_NS_FD)", e))
    })
}

/// A namespace deleted when this guard drops (for tests and short-lived labs).
#[derive(Debug)]
pub struct NetnsGuard {
    name: String,
}

impl NetnsGuard {
    /// Creates namespace `name` and returns its guard.
    pub fn create(name: &str) -> Result<NetnsGuard, NetnsError> {
        create(name)?;
        Ok(NetnsGuard {
            name: name.to_owned(),
        })
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for NetnsGuard {
    fn drop(&mut self) {
        if exists(&self.name) {
            let _ = delete(&self.name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The native-endian `u16` at byte `at` of `m`.
    fn u16_at(m: &[u8], at: usize) -> u16 {
        u16::from_ne_bytes([m[at], m[at + 1]])
    }

    /// The native-endian `u32` at byte `at` of `m`.
    fn u32_at(m: &[u8], at: usize) -> u32 {
        u32::from_ne_bytes([m[at], m[at + 1], m[at + 2], m[at + 3]])
    }

    #[test]
    fn names_are_validated() {
        for bad in ["", ".", "..", "a/b", "a\0b"] {
            assert!(
                matches!(check_name(bad), Err(NetnsError::InvalidName { .. })),
                "{bad:?}"
            );
        }
        assert!(check_name(&"x".repeat(NAME_MAX + 1)).is_err());
        assert!(check_name("i-0123abcd").is_ok());
        assert!(!exists("a/b"));
    }

    #[test]
    fn ipv6_address_and_route_message_layouts() {
        let a: Ipv6Addr = "fd00::1".parse().unwrap();
        let m = newaddr6_nodad(3, 5, a, 64);
        // 16 header + 8 ifaddrmsg + 2 x 20 (address attrs) + 8 (IFA_FLAGS)
        assert_eq!(m.len(), 72);
        assert_eq!(u32_at(&m, 0), 72);
        assert_eq!(u16_at(&m, 4), libc::RTM_NEWADDR);
        assert_eq!(
            u16_at(&m, 6),
            NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE_REPLACE
        );
        assert_eq!(
            &m[16..20],
            &[libc::AF_INET6 as u8, 64, libc::IFA_F_NODAD as u8, 0]
        );
        assert_eq!(u32_at(&m, 20), 5);
        assert_eq!(u16_at(&m, 24), 20);
        assert_eq!(u16_at(&m, 26), libc::IFA_LOCAL);
        assert_eq!(&m[28..44], &a.octets());
        assert_eq!(u16_at(&m, 66), libc::IFA_FLAGS);
        assert_eq!(u32_at(&m, 68), libc::IFA_F_NODAD);
        let gw: Ipv6Addr = "fe80::1".parse().unwrap();
        let r = default_route6(4, 5, gw);
        // 16 header + 12 rtmsg + 20 (gateway) + 8 (oif)
        assert_eq!(r.len(), 56);
        assert_eq!(u16_at(&r, 4), libc::RTM_NEWROUTE);
        // family, dst_len 0 (default), src_len, tos, main table, boot, universe, unicast
        assert_eq!(
            &r[16..24],
            &[
                libc::AF_INET6 as u8,
                0,
                0,
                0,
                libc::RT_TABLE_MAIN,
                libc::RTPROT_BOOT,
                libc::RT_SCOPE_UNIVERSE,
                libc::RTN_UNICAST
            ]
        );
        assert_eq!(u16_at(&r, 30), libc::RTA_GATEWAY);
        assert_eq!(&r[32..48], &gw.octets());
        assert_eq!(u16_at(&r, 50), libc::RTA_OIF);
        assert_eq!(u32_at(&r, 52), 5);
    }

    #[test]
    fn newlink_message_layout() {
        let fd = 9u32.to_ne_bytes();
        let m = newlink(
            7,
            42,
            &[(libc::IFLA_NET_NS_FD, &fd), (libc::IFLA_IFNAME, b"eth0\0")],
        );
        // 16 header + 16 ifinfomsg + 8 (fd attr) + 12 (4+5 padded to 12)
        assert_eq!(m.len(), 52);
        assert_eq!(u32_at(&m, 0), 52);
        assert_eq!(u16_at(&m, 4), libc::RTM_NEWLINK);
        assert_eq!(u16_at(&m, 6), NLM_F_REQUEST | NLM_F_ACK);
        assert_eq!(u32_at(&m, 8), 7);
        assert_eq!((u32_at(&m, 20) as i32), 42);
        assert_eq!(u16_at(&m, 32), 8);
        assert_eq!(u16_at(&m, 34), libc::IFLA_NET_NS_FD);
        assert_eq!(u32_at(&m, 36), 9);
        assert_eq!(u16_at(&m, 40), 9, "rta_len is unpadded");
        assert_eq!(u16_at(&m, 42), libc::IFLA_IFNAME);
        assert_eq!(&m[44..52], b"eth0\0\0\0\0");
    }

    #[test]
    fn missing_namespace_is_not_found() {
        let e = in_netns("sgswitch-no-such-ns-x", || ()).unwrap_err();
        assert!(matches!(e, NetnsError::NotFound { .. }), "{e}");
    }
}
