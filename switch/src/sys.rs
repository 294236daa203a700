//! All `unsafe`, ioctl and raw syscall code of sgswitch, behind small safe wrappers.
//!
//! Contract:
//! * every fd the kernel returns becomes an [`OwnedFd`] at once, so nothing leaks
//!   and nothing is closed twice;
//! * every `unsafe` block carries a `// SAFETY:` comment saying why it is sound;
//! * wrappers return `io::Result` with the raw OS error; the callers (`tap`,
//!   `afpacket`, `netns`, the poll loops) wrap it in their own error enums that
//!   name the operation and the bad value;
//! * no magic numbers: every request code and flag has a named constant (most come
//!   from the `libc` crate, the rest are defined here with their kernel header);
//! * interface ioctls and netlink sockets act on the network namespace of the
//!   thread that *created the socket*, so code that must act inside another
//!   namespace creates them inside `netns::in_netns`.
//!
//! Groups: TUN/TAP ([`tun_open`] and friends), plain fd I/O ([`read`], [`readv`],
//! [`write`], [`writev`]), [`Epoll`] and [`EventFd`] for parking workers, [`IfCtl`]
//! (interface ioctls on an `AF_INET` datagram socket, built with [`IfReq`]),
//! namespaces and mounts ([`unshare_netns`], [`setns_net`], [`bind_mount`], ...),
//! [`NetlinkRoute`] (raw rtnetlink socket), and `AF_PACKET` sockets with a
//! `TPACKET_V3` receive ring ([`packet_socket`], [`RxRing`]), the overlay's UDP
//! sockets ([`udp_socket_reuseport`], [`udp_sendmsg`] with `UDP_SEGMENT`,
//! [`udp_recvmsg`] with `UDP_GRO`), and memory hints ([`advise_hugepages`],
//! [`prefetch`]).

#![allow(unsafe_code)]

use std::ffi::{CStr, CString, c_int, c_short, c_uint, c_ulong, c_void};
use std::io::{self, IoSlice, IoSliceMut};
use std::mem;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::ptr;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering, fence};

// ---------------------------------------------------------------------------
// helpers
// ---------------------------------------------------------------------------

/// Turns a `-1`-on-error return value into an `io::Result`.
fn cvt(ret: c_int) -> io::Result<c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn cvt_size(ret: isize) -> io::Result<usize> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret as usize)
    }
}

/// Takes ownership of an fd just returned by a syscall (or reports its error).
fn owned_fd(ret: c_int) -> io::Result<OwnedFd> {
    let fd = cvt(ret)?;
    // SAFETY: `fd` was just returned by a successful syscall that creates a new
    // descriptor; nothing else owns it, so `OwnedFd` becomes its only owner.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn invalid_input(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

fn cstring(s: &str) -> io::Result<CString> {
    CString::new(s).map_err(|_| invalid_input(format!("string {s:?} contains a NUL byte")))
}

/// `setsockopt` with a plain value.
fn setsockopt<T: Copy>(fd: BorrowedFd<'_>, level: c_int, name: c_int, value: &T) -> io::Result<()> {
    // SAFETY: `value` points to a live `T` of exactly `size_of::<T>()` bytes for the
    // duration of the call; the kernel only reads it.
    let ret = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (value as *const T).cast::<c_void>(),
            mem::size_of::<T>() as libc::socklen_t,
        )
    };
    cvt(ret).map(drop)
}

/// `getsockopt` of an `int` option.
fn getsockopt_int(fd: BorrowedFd<'_>, level: c_int, name: c_int) -> io::Result<c_int> {
    let mut value: c_int = 0;
    let mut len = mem::size_of::<c_int>() as libc::socklen_t;
    // SAFETY: `value` and `len` are live locals; the kernel writes at most `len`
    // bytes into `value` and updates `len`.
    let ret = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&mut value as *mut c_int).cast::<c_void>(),
            &mut len,
        )
    };
    cvt(ret)?;
    Ok(value)
}

// ---------------------------------------------------------------------------
// plain fd I/O
// ---------------------------------------------------------------------------

/// `read(2)`.
pub fn read(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is a live, writable slice of `buf.len()` bytes.
    cvt_size(unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast::<c_void>(), buf.len()) })
}

/// `write(2)`.
pub fn write(fd: BorrowedFd<'_>, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: `buf` is a live slice of `buf.len()` bytes; the kernel only reads it.
    cvt_size(unsafe { libc::write(fd.as_raw_fd(), buf.as_ptr().cast::<c_void>(), buf.len()) })
}

/// `readv(2)`: scatter one read over `bufs`.
pub fn readv(fd: BorrowedFd<'_>, bufs: &mut [IoSliceMut<'_>]) -> io::Result<usize> {
    let cnt = c_int::try_from(bufs.len())
        .map_err(|_| invalid_input(format!("readv of {} buffers", bufs.len())))?;
    // SAFETY: `IoSliceMut` is guaranteed ABI-compatible with `struct iovec` on
    // Unix; every slice is live and writable for the duration of the call.
    cvt_size(unsafe { libc::readv(fd.as_raw_fd(), bufs.as_mut_ptr().cast::<libc::iovec>(), cnt) })
}

/// `writev(2)`: gather one write from `bufs` (no copy).
pub fn writev(fd: BorrowedFd<'_>, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
    let cnt = c_int::try_from(bufs.len())
        .map_err(|_| invalid_input(format!("writev of {} buffers", bufs.len())))?;
    // SAFETY: `IoSlice` is guaranteed ABI-compatible with `struct iovec` on Unix;
    // every slice is live for the duration of the call and only read.
    cvt_size(unsafe { libc::writev(fd.as_raw_fd(), bufs.as_ptr().cast::<libc::iovec>(), cnt) })
}

// ---------------------------------------------------------------------------
// ifreq builder and interface ioctls
// ---------------------------------------------------------------------------

/// Longest interface name (without the NUL) the kernel accepts.
pub const IFNAME_MAX: usize = libc::IFNAMSIZ - 1;

/// Checks an interface name the way the kernel's `dev_valid_name` does.
pub fn check_ifname(name: &str) -> io::Result<()> {
    let ok = !name.is_empty()
        && name.len() <= IFNAME_MAX
        && name != "."
        && name != ".."
        && !name
            .bytes()
            .any(|b| b == b'/' || b == b':' || b == 0 || b.is_ascii_whitespace());
    if ok {
        Ok(())
    } else {
        Err(invalid_input(format!("invalid interface name {name:?}")))
    }
}

/// A `struct ifreq` built for one interface name; the `with_*` methods fill the
/// request's union member.
pub struct IfReq {
    raw: libc::ifreq,
}

impl IfReq {
    /// An ifreq naming `name` (validated), everything else zero.
    pub fn new(name: &str) -> io::Result<IfReq> {
        check_ifname(name)?;
        // SAFETY: `ifreq` is a plain C struct/union of integers and arrays, for
        // which the all-zero bit pattern is valid.
        let mut raw: libc::ifreq = unsafe { mem::zeroed() };
        for (dst, src) in raw.ifr_name.iter_mut().zip(name.bytes()) {
            *dst = src as libc::c_char;
        }
        Ok(IfReq { raw })
    }

    /// Sets `ifr_flags`.
    pub fn with_flags(mut self, flags: c_short) -> IfReq {
        self.raw.ifr_ifru.ifru_flags = flags;
        self
    }

    /// Sets `ifr_mtu`.
    pub fn with_mtu(mut self, mtu: c_int) -> IfReq {
        self.raw.ifr_ifru.ifru_mtu = mtu;
        self
    }

    /// Sets `ifr_hwaddr` to an Ethernet MAC.
    pub fn with_hwaddr(mut self, mac: [u8; 6]) -> IfReq {
        // SAFETY: an all-zero `sockaddr` is valid.
        let mut sa: libc::sockaddr = unsafe { mem::zeroed() };
        sa.sa_family = libc::ARPHRD_ETHER;
        for (dst, src) in sa.sa_data.iter_mut().zip(mac) {
            *dst = src as libc::c_char;
        }
        self.raw.ifr_ifru.ifru_hwaddr = sa;
        self
    }

    /// Sets `ifr_addr` (also used for the netmask and broadcast requests) to an
    /// IPv4 `sockaddr_in`.
    pub fn with_ipv4(mut self, addr: Ipv4Addr) -> IfReq {
        // SAFETY: an all-zero `sockaddr_in` is valid.
        let mut sin: libc::sockaddr_in = unsafe { mem::zeroed() };
        sin.sin_family = libc::AF_INET as libc::sa_family_t;
        sin.sin_addr.s_addr = u32::from_ne_bytes(addr.octets());
        // SAFETY: `sockaddr_in` and `sockaddr` have the same size (16 bytes) and
        // the kernel reads `ifr_addr` as a `sockaddr_in` when the family is AF_INET.
        self.raw.ifr_ifru.ifru_addr =
            unsafe { mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) };
        self
    }

    /// Sets `ifr_newname` (for `SIOCSIFNAME`).
    pub fn with_newname(mut self, name: &str) -> io::Result<IfReq> {
        check_ifname(name)?;
        let mut buf = [0 as libc::c_char; libc::IFNAMSIZ];
        for (dst, src) in buf.iter_mut().zip(name.bytes()) {
            *dst = src as libc::c_char;
        }
        self.raw.ifr_ifru.ifru_newname = buf;
        Ok(self)
    }

    /// The interface name as the kernel left it (e.g. after `TUNSETIFF` with a
    /// `%d` pattern).
    pub fn name(&self) -> String {
        let bytes: Vec<u8> = self
            .raw
            .ifr_name
            .iter()
            .take_while(|&&c| c != 0)
            .map(|&c| c as u8)
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// `ifr_flags` as the kernel returned them.
    pub fn flags(&self) -> c_short {
        // SAFETY: every member of the union is plain integers; reading the
        // `c_short` member of any bit pattern is valid.
        unsafe { self.raw.ifr_ifru.ifru_flags }
    }

    /// `ifr_ifindex` as the kernel returned it.
    pub fn ifindex(&self) -> c_int {
        // SAFETY: as for `flags`: any bit pattern is a valid `c_int`.
        unsafe { self.raw.ifr_ifru.ifru_ifindex }
    }

    /// `ifr_hwaddr` as the kernel returned it.
    pub fn hwaddr(&self) -> [u8; 6] {
        // SAFETY: as for `flags`: `sockaddr` is plain integers.
        let sa = unsafe { self.raw.ifr_ifru.ifru_hwaddr };
        let mut mac = [0u8; 6];
        for (dst, src) in mac.iter_mut().zip(sa.sa_data) {
            *dst = src as u8;
        }
        mac
    }
}

/// `ioctl(fd, req, &mut ifreq)`.
fn ioctl_ifreq(fd: BorrowedFd<'_>, req: c_ulong, ifr: &mut IfReq) -> io::Result<()> {
    // SAFETY: `ifr.raw` is a live, writable `struct ifreq`, which is the argument
    // type of every request this helper is used with (SIOC*IF*, TUNSETIFF).
    let ret = unsafe {
        libc::ioctl(
            fd.as_raw_fd(),
            req as libc::Ioctl,
            &mut ifr.raw as *mut libc::ifreq,
        )
    };
    cvt(ret).map(drop)
}

/// Interface ioctls (`SIOC[GS]IF*`) through an `AF_INET` datagram socket. They act
/// on the network namespace the `IfCtl` was created in.
pub struct IfCtl {
    sock: OwnedFd,
}

impl IfCtl {
    /// A control socket in the calling thread's network namespace.
    pub fn new() -> io::Result<IfCtl> {
        // SAFETY: plain socket(2) call; the result is checked and owned at once.
        let sock = owned_fd(unsafe {
            libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0)
        })?;
        Ok(IfCtl { sock })
    }

    fn ioctl(&self, req: c_ulong, ifr: &mut IfReq) -> io::Result<()> {
        ioctl_ifreq(self.sock.as_fd(), req, ifr)
    }

    /// The interface index of `name` (`SIOCGIFINDEX`).
    pub fn ifindex(&self, name: &str) -> io::Result<u32> {
        let mut ifr = IfReq::new(name)?;
        self.ioctl(libc::SIOCGIFINDEX, &mut ifr)?;
        Ok(ifr.ifindex() as u32)
    }

    /// The interface flags of `name` (`SIOCGIFFLAGS`).
    pub fn flags(&self, name: &str) -> io::Result<c_short> {
        let mut ifr = IfReq::new(name)?;
        self.ioctl(libc::SIOCGIFFLAGS, &mut ifr)?;
        Ok(ifr.flags())
    }

    /// Sets or clears `IFF_UP` (read-modify-write of the flags).
    pub fn set_up(&self, name: &str, up: bool) -> io::Result<()> {
        let flags = self.flags(name)?;
        let want = if up { flags | IFF_UP } else { flags & !IFF_UP };
        if want == flags {
            return Ok(());
        }
        let mut ifr = IfReq::new(name)?.with_flags(want);
        self.ioctl(libc::SIOCSIFFLAGS, &mut ifr)
    }

    /// Sets the Ethernet address (`SIOCSIFHWADDR`).
    pub fn set_mac(&self, name: &str, mac: [u8; 6]) -> io::Result<()> {
        let mut ifr = IfReq::new(name)?.with_hwaddr(mac);
        self.ioctl(libc::SIOCSIFHWADDR, &mut ifr)
    }

    /// The Ethernet address (`SIOCGIFHWADDR`).
    pub fn mac(&self, name: &str) -> io::Result<[u8; 6]> {
        let mut ifr = IfReq::new(name)?;
        self.ioctl(libc::SIOCGIFHWADDR, &mut ifr)?;
        Ok(ifr.hwaddr())
    }

    /// Sets the MTU (`SIOCSIFMTU`).
    pub fn set_mtu(&self, name: &str, mtu: u32) -> io::Result<()> {
        let mtu =
            c_int::try_from(mtu).map_err(|_| invalid_input(format!("MTU {mtu} out of range")))?;
        let mut ifr = IfReq::new(name)?.with_mtu(mtu);
        self.ioctl(libc::SIOCSIFMTU, &mut ifr)
    }

    /// Sets the primary IPv4 address, its netmask and broadcast address
    /// (`SIOCSIFADDR`, `SIOCSIFNETMASK`, `SIOCSIFBRDADDR`); the kernel adds the
    /// prefix route.
    pub fn set_ipv4(&self, name: &str, addr: Ipv4Addr, prefix: u8) -> io::Result<()> {
        if prefix > 32 {
            return Err(invalid_input(format!("IPv4 prefix length {prefix} > 32")));
        }
        let mask = if prefix == 0 {
            0
        } else {
            u32::MAX << (32 - prefix)
        };
        let bcast = Ipv4Addr::from(u32::from(addr) | !mask);
        let mut ifr = IfReq::new(name)?.with_ipv4(addr);
        self.ioctl(libc::SIOCSIFADDR, &mut ifr)?;
        let mut ifr = IfReq::new(name)?.with_ipv4(Ipv4Addr::from(mask));
        self.ioctl(libc::SIOCSIFNETMASK, &mut ifr)?;
        let mut ifr = IfReq::new(name)?.with_ipv4(bcast);
        self.ioctl(libc::SIOCSIFBRDADDR, &mut ifr)
    }

    /// Renames a (down) interface (`SIOCSIFNAME`).
    pub fn rename(&self, name: &str, new_name: &str) -> io::Result<()> {
        let mut ifr = IfReq::new(name)?.with_newname(new_name)?;
        self.ioctl(libc::SIOCSIFNAME, &mut ifr)
    }
}

/// The name of interface `ifindex` (`SIOCGIFNAME`), asked through any socket
/// `sock`: the answer is about `sock`'s network namespace.
pub fn ifindex_to_name(sock: BorrowedFd<'_>, ifindex: u32) -> io::Result<String> {
    // SAFETY: an all-zero `ifreq` is valid (see `IfReq::new`).
    let mut raw: libc::ifreq = unsafe { mem::zeroed() };
    raw.ifr_ifru.ifru_ifindex = ifindex as c_int;
    let mut ifr = IfReq { raw };
    ioctl_ifreq(sock, libc::SIOCGIFNAME, &mut ifr)?;
    Ok(ifr.name())
}

/// `IFF_UP` as the `c_short` that `ifr_flags` holds.
pub const IFF_UP: c_short = libc::IFF_UP as c_short;

// ---------------------------------------------------------------------------
// TUN/TAP
// ---------------------------------------------------------------------------

/// The TUN/TAP clone device.
pub const TUN_PATH: &CStr = c"/dev/net/tun";

/// `TUNSETIFF` flags (`ifr_flags` is a `short`).
pub const IFF_TAP: c_short = libc::IFF_TAP as c_short;
pub const IFF_NO_PI: c_short = libc::IFF_NO_PI as c_short;
pub const IFF_MULTI_QUEUE: c_short = libc::IFF_MULTI_QUEUE as c_short;
pub const IFF_VNET_HDR: c_short = libc::IFF_VNET_HDR as c_short;

/// `TUNSETOFFLOAD` flags: what the reader of the TAP accepts from the kernel.
pub const TUN_F_CSUM: c_uint = libc::TUN_F_CSUM;
pub const TUN_F_TSO4: c_uint = libc::TUN_F_TSO4;
pub const TUN_F_TSO6: c_uint = libc::TUN_F_TSO6;
pub const TUN_F_TSO_ECN: c_uint = libc::TUN_F_TSO_ECN;
pub const TUN_F_USO4: c_uint = libc::TUN_F_USO4;
pub const TUN_F_USO6: c_uint = libc::TUN_F_USO6;

/// Opens `/dev/net/tun` non-blocking and close-on-exec (not yet attached).
pub fn tun_open() -> io::Result<OwnedFd> {
    // SAFETY: `TUN_PATH` is a NUL-terminated C string; the result is owned at once.
    owned_fd(unsafe {
        libc::open(
            TUN_PATH.as_ptr(),
            libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC,
        )
    })
}

/// `TUNGETFEATURES`: the `IFF_*` flags this kernel's TUN driver supports.
pub fn tun_features(fd: BorrowedFd<'_>) -> io::Result<c_short> {
    let mut features: c_uint = 0;
    // SAFETY: TUNGETFEATURES writes one `unsigned int` to the pointer, which
    // points to a live local.
    cvt(unsafe {
        libc::ioctl(
            fd.as_raw_fd(),
            libc::TUNGETFEATURES,
            &mut features as *mut c_uint,
        )
    })?;
    // The feature word holds IFF_* bits, which all fit in the short of ifr_flags.
    Ok(features as c_short)
}

/// `TUNSETIFF`: attaches the fd to TAP `name` (creating it if needed) with
/// `flags`. Returns the device name the kernel used.
pub fn tun_set_iff(fd: BorrowedFd<'_>, name: &str, flags: c_short) -> io::Result<String> {
    let mut ifr = IfReq::new(name)?.with_flags(flags);
    ioctl_ifreq(fd, libc::TUNSETIFF as c_ulong, &mut ifr)?;
    Ok(ifr.name())
}

/// `TUNSETVNETHDRSZ`: the size of the virtio-net header prefixed to each frame.
pub fn tun_set_vnet_hdr_sz(fd: BorrowedFd<'_>, size: c_int) -> io::Result<()> {
    // SAFETY: TUNSETVNETHDRSZ reads one `int` through the pointer, which points to
    // a live local.
    cvt(unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETVNETHDRSZ, &size as *const c_int) })
        .map(drop)
}

/// `TUNSETVNETLE`: the virtio-net header fields are little-endian (as virtio
/// 1.0 and the UDP-tunnel GSO header require) whatever the host's byte order.
pub fn tun_set_vnet_le(fd: BorrowedFd<'_>, le: bool) -> io::Result<()> {
    let v = c_int::from(le);
    // SAFETY: TUNSETVNETLE reads one `int` through the pointer, which points to
    // a live local.
    cvt(unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETVNETLE, &v as *const c_int) }).map(drop)
}

/// `TUNSETOFFLOAD`: which offloads (`TUN_F_*`) the reader accepts.
pub fn tun_set_offload(fd: BorrowedFd<'_>, flags: c_uint) -> io::Result<()> {
    // SAFETY: TUNSETOFFLOAD takes its argument by value (an unsigned long), no
    // pointer is dereferenced.
    cvt(unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETOFFLOAD, flags as c_ulong) }).map(drop)
}

/// `TUNSETPERSIST`: whether the device outlives its last fd.
pub fn tun_set_persist(fd: BorrowedFd<'_>, persist: bool) -> io::Result<()> {
    // SAFETY: TUNSETPERSIST takes its argument by value, no pointer involved.
    cvt(unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETPERSIST, c_ulong::from(persist)) })
        .map(drop)
}

// ---------------------------------------------------------------------------
// epoll and eventfd
// ---------------------------------------------------------------------------

/// Readable.
pub const EPOLLIN: u32 = libc::EPOLLIN as u32;
/// Writable.
pub const EPOLLOUT: u32 = libc::EPOLLOUT as u32;
/// Error condition (always reported).
pub const EPOLLERR: u32 = libc::EPOLLERR as u32;
/// Hang-up (always reported).
pub const EPOLLHUP: u32 = libc::EPOLLHUP as u32;
/// Edge-triggered.
pub const EPOLLET: u32 = libc::EPOLLET as u32;

/// An epoll instance.
pub struct Epoll {
    fd: OwnedFd,
}

/// A reusable buffer of epoll results (allocated once, reused for every wait).
pub struct EpollEvents {
    buf: Vec<libc::epoll_event>,
    len: usize,
}

impl EpollEvents {
    /// Room for `cap` (at least 1) events per wait.
    pub fn with_capacity(cap: usize) -> EpollEvents {
        EpollEvents {
            buf: vec![libc::epoll_event { events: 0, u64: 0 }; cap.max(1)],
            len: 0,
        }
    }

    /// `(token, events)` of the last wait.
    pub fn iter(&self) -> impl Iterator<Item = (u64, u32)> + '_ {
        self.buf[..self.len].iter().map(|e| {
            // Copy out of the (packed on x86-64) struct before use.
            let (token, events) = (e.u64, e.events);
            (token, events)
        })
    }

    /// Number of events of the last wait.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the last wait returned no event.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Epoll {
    /// A new close-on-exec epoll instance.
    pub fn new() -> io::Result<Epoll> {
        // SAFETY: plain epoll_create1(2); the result is owned at once.
        let fd = owned_fd(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) })?;
        Ok(Epoll { fd })
    }

    fn ctl(&self, op: c_int, fd: RawFd, events: u32, token: u64) -> io::Result<()> {
        let mut ev = libc::epoll_event { events, u64: token };
        // SAFETY: `ev` is a live local `epoll_event`; the kernel copies it.
        cvt(unsafe { libc::epoll_ctl(self.fd.as_raw_fd(), op, fd, &mut ev) }).map(drop)
    }

    /// Watches `fd` for `events`, reporting `token`.
    pub fn add(&self, fd: RawFd, events: u32, token: u64) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_ADD, fd, events, token)
    }

    /// Changes what is watched on `fd`.
    pub fn modify(&self, fd: RawFd, events: u32, token: u64) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_MOD, fd, events, token)
    }

    /// Stops watching `fd`.
    pub fn del(&self, fd: RawFd) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_DEL, fd, 0, 0)
    }

    /// Waits up to `timeout_ms` (-1: forever) and fills `out`. `EINTR` counts as
    /// a wait that returned nothing.
    pub fn wait(&self, out: &mut EpollEvents, timeout_ms: i32) -> io::Result<usize> {
        let max = c_int::try_from(out.buf.len()).unwrap_or(c_int::MAX);
        // SAFETY: `out.buf` holds `max` writable `epoll_event`s.
        let ret =
            unsafe { libc::epoll_wait(self.fd.as_raw_fd(), out.buf.as_mut_ptr(), max, timeout_ms) };
        match cvt(ret) {
            Ok(n) => out.len = n as usize,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => out.len = 0,
            Err(e) => {
                out.len = 0;
                return Err(e);
            }
        }
        Ok(out.len)
    }
}

impl AsRawFd for Epoll {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// A non-blocking eventfd, used to wake a parked worker.
pub struct EventFd {
    fd: OwnedFd,
}

impl EventFd {
    /// A new non-blocking, close-on-exec eventfd with counter 0.
    pub fn new() -> io::Result<EventFd> {
        // SAFETY: plain eventfd(2); the result is owned at once.
        let fd = owned_fd(unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) })?;
        Ok(EventFd { fd })
    }

    /// Adds 1 to the counter (makes the fd readable). A saturated counter
    /// (`EAGAIN`) is already readable, so that is success too.
    pub fn notify(&self) -> io::Result<()> {
        match write(self.fd.as_fd(), &1u64.to_ne_bytes()) {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Reads and resets the counter; 0 when it was already 0.
    pub fn drain(&self) -> io::Result<u64> {
        let mut b = [0u8; 8];
        match read(self.fd.as_fd(), &mut b) {
            Ok(_) => Ok(u64::from_ne_bytes(b)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(0),
            Err(e) => Err(e),
        }
    }
}

impl AsRawFd for EventFd {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

// ---------------------------------------------------------------------------
// namespaces and mounts
// ---------------------------------------------------------------------------

/// `unshare(CLONE_NEWNET)`: moves the calling *thread* into a new, empty network
/// namespace.
pub fn unshare_netns() -> io::Result<()> {
    // SAFETY: unshare(2) takes only flags; with CLONE_NEWNET it changes the calling
    // thread's network namespace and nothing in this process's memory.
    cvt(unsafe { libc::unshare(libc::CLONE_NEWNET) }).map(drop)
}

/// `setns(fd, CLONE_NEWNET)`: moves the calling *thread* into the network
/// namespace `fd` refers to.
pub fn setns_net(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: setns(2) on a borrowed, open fd; it changes only the calling thread's
    // network namespace.
    cvt(unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) }).map(drop)
}

fn mount(src: &CStr, dst: &CStr, fstype: &CStr, flags: c_ulong) -> io::Result<()> {
    // SAFETY: all strings are NUL-terminated and live for the call; no data
    // argument is passed.
    cvt(unsafe {
        libc::mount(
            src.as_ptr(),
            dst.as_ptr(),
            fstype.as_ptr(),
            flags,
            ptr::null(),
        )
    })
    .map(drop)
}

/// `mount --bind src dst`.
pub fn bind_mount(src: &str, dst: &str) -> io::Result<()> {
    mount(&cstring(src)?, &cstring(dst)?, c"none", libc::MS_BIND)
}

/// `mount --rbind path path` (makes a directory a mount point of its own).
pub fn bind_mount_self_rec(path: &str) -> io::Result<()> {
    let p = cstring(path)?;
    mount(&p, &p, c"none", libc::MS_BIND | libc::MS_REC)
}

/// `mount --make-rshared path`.
pub fn make_rshared(path: &str) -> io::Result<()> {
    mount(
        c"",
        &cstring(path)?,
        c"none",
        libc::MS_SHARED | libc::MS_REC,
    )
}

/// `umount2(path, MNT_DETACH)`.
pub fn umount_detach(path: &str) -> io::Result<()> {
    let p = cstring(path)?;
    // SAFETY: `p` is a NUL-terminated string live for the call.
    cvt(unsafe { libc::umount2(p.as_ptr(), libc::MNT_DETACH) }).map(drop)
}

// ---------------------------------------------------------------------------
// rtnetlink
// ---------------------------------------------------------------------------

/// A raw `NETLINK_ROUTE` socket in the calling thread's network namespace.
/// Message encoding is the caller's business (see `netns`).
pub struct NetlinkRoute {
    fd: OwnedFd,
}

impl NetlinkRoute {
    /// Opens and binds (kernel-assigned port id) a route netlink socket.
    pub fn new() -> io::Result<NetlinkRoute> {
        // SAFETY: plain socket(2); the result is owned at once.
        let fd = owned_fd(unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        })?;
        // SAFETY: an all-zero `sockaddr_nl` is valid (pid 0: kernel assigns).
        let mut sa: libc::sockaddr_nl = unsafe { mem::zeroed() };
        sa.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        // SAFETY: `sa` is a live `sockaddr_nl` and the length passed is its size.
        let ret = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&sa as *const libc::sockaddr_nl).cast::<libc::sockaddr>(),
                mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        cvt(ret)?;
        Ok(NetlinkRoute { fd })
    }

    /// Sends one complete message (or batch) to the kernel.
    pub fn send(&self, msg: &[u8]) -> io::Result<()> {
        // SAFETY: an all-zero `sockaddr_nl` (pid 0) addresses the kernel.
        let mut sa: libc::sockaddr_nl = unsafe { mem::zeroed() };
        sa.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        // SAFETY: `msg` and `sa` are live for the call; the kernel only reads them.
        let ret = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                msg.as_ptr().cast::<c_void>(),
                msg.len(),
                0,
                (&sa as *const libc::sockaddr_nl).cast::<libc::sockaddr>(),
                mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        let n = cvt_size(ret)?;
        if n != msg.len() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                format!("netlink sent {n} of {} bytes", msg.len()),
            ));
        }
        Ok(())
    }

    /// Receives one datagram (blocking).
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        read(self.fd.as_fd(), buf)
    }
}

// ---------------------------------------------------------------------------
// AF_PACKET
// ---------------------------------------------------------------------------

/// `ETH_P_ALL` in network byte order, as `socket(2)` and `sockaddr_ll` want it.
pub const ETH_P_ALL_BE: u16 = (libc::ETH_P_ALL as u16).to_be();
/// `sll_pkttype` of frames this host sent (seen on the RX ring unless ignored).
pub const PACKET_OUTGOING: u8 = libc::PACKET_OUTGOING;
/// `PACKET_FANOUT` mode: by flow hash.
pub const PACKET_FANOUT_HASH: c_uint = libc::PACKET_FANOUT_HASH;
/// `PACKET_FANOUT` flag: defragment before hashing.
pub const PACKET_FANOUT_FLAG_DEFRAG: c_uint = libc::PACKET_FANOUT_FLAG_DEFRAG;
/// `tp_status` bit: the frame's checksum is partial (checksum offload).
pub const TP_STATUS_CSUMNOTREADY: u32 = libc::TP_STATUS_CSUMNOTREADY;
/// `tp_status` bit: the frame's checksum was verified.
pub const TP_STATUS_CSUM_VALID: u32 = libc::TP_STATUS_CSUM_VALID;
/// `block_status`: owned by the kernel / handed to user space.
const TP_STATUS_KERNEL: u32 = libc::TP_STATUS_KERNEL;
const TP_STATUS_USER: u32 = libc::TP_STATUS_USER;
/// Size of the virtio-net header AF_PACKET prefixes with `PACKET_VNET_HDR`.
pub const PACKET_VNET_HDR_LEN: usize = 10;

/// A raw `AF_PACKET` socket (non-blocking, close-on-exec) that receives nothing
/// until [`packet_bind`] (protocol 0 at creation).
pub fn packet_socket() -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the result is owned at once.
    owned_fd(unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    })
}

/// Selects `TPACKET_V3` ring frames.
pub fn packet_set_version_v3(fd: BorrowedFd<'_>) -> io::Result<()> {
    let v = libc::tpacket_versions::TPACKET_V3 as c_int;
    setsockopt(fd, libc::SOL_PACKET, libc::PACKET_VERSION, &v)
}

/// `PACKET_VNET_HDR`: prefix received frames (in the ring: just before the MAC
/// header) and expect sent frames with a virtio-net header. Must precede the ring.
pub fn packet_set_vnet_hdr(fd: BorrowedFd<'_>, on: bool) -> io::Result<()> {
    setsockopt(
        fd,
        libc::SOL_PACKET,
        libc::PACKET_VNET_HDR,
        &c_int::from(on),
    )
}

/// `PACKET_IGNORE_OUTGOING`: do not loop this host's own transmissions back.
pub fn packet_set_ignore_outgoing(fd: BorrowedFd<'_>) -> io::Result<()> {
    setsockopt(
        fd,
        libc::SOL_PACKET,
        libc::PACKET_IGNORE_OUTGOING,
        &1 as &c_int,
    )
}

/// `PACKET_FANOUT`: joins fanout group `id` with `mode | flags`.
pub fn packet_set_fanout(fd: BorrowedFd<'_>, id: u16, mode_flags: c_uint) -> io::Result<()> {
    let arg = c_int::from(id) | ((mode_flags as c_int) << 16);
    setsockopt(fd, libc::SOL_PACKET, libc::PACKET_FANOUT, &arg)
}

/// Binds the socket to `ifindex`, all protocols.
pub fn packet_bind(fd: BorrowedFd<'_>, ifindex: u32) -> io::Result<()> {
    // SAFETY: an all-zero `sockaddr_ll` is valid.
    let mut sll: libc::sockaddr_ll = unsafe { mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = ETH_P_ALL_BE;
    sll.sll_ifindex = ifindex as c_int;
    // SAFETY: `sll` is a live `sockaddr_ll` and the length passed is its size.
    let ret = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&sll as *const libc::sockaddr_ll).cast::<libc::sockaddr>(),
            mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    cvt(ret).map(drop)
}

/// Reads and clears the socket's pending error (`SO_ERROR`); `None` if none.
pub fn socket_take_error(fd: BorrowedFd<'_>) -> io::Result<Option<io::Error>> {
    let e = getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_ERROR)?;
    Ok(if e == 0 {
        None
    } else {
        Some(io::Error::from_raw_os_error(e))
    })
}

/// Geometry of a `TPACKET_V3` receive ring.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingGeometry {
    /// Bytes per block (a multiple of the page size); bounds the largest frame.
    pub block_size: u32,
    /// Number of blocks.
    pub block_nr: u32,
    /// Milliseconds after which the kernel hands over a partly filled block.
    pub retire_tov_ms: u32,
}

/// Nominal frame size given to the kernel (V3 packs frames of any size into a
/// block; this only has to be a valid `TPACKET_ALIGNMENT` multiple).
const RING_FRAME_SIZE: u32 = 2048;
/// Offset of `sll_pkttype` within the `sockaddr_ll` that follows each frame header.
const SLL_PKTTYPE_OFFSET: usize = mem::offset_of!(libc::sockaddr_ll, sll_pkttype);
/// Offset of the `sockaddr_ll` after a `tpacket3_hdr` (TPACKET_ALIGN of its size).
const TP3_SLL_OFFSET: usize = (mem::size_of::<libc::tpacket3_hdr>() + libc::TPACKET_ALIGNMENT - 1)
    & !(libc::TPACKET_ALIGNMENT - 1);

/// One frame copied out of the ring.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingFrame {
    /// Bytes copied into the caller's buffer.
    pub len: usize,
    /// The frame's length on the wire (`> len` when truncated).
    pub wire_len: usize,
    /// `tp_status` of the frame (`TP_STATUS_CSUMNOTREADY`, ...).
    pub status: u32,
    /// The virtio-net header in front of the frame, when `PACKET_VNET_HDR` is on.
    pub vnet: Option<[u8; PACKET_VNET_HDR_LEN]>,
}

/// An mmap'ed `TPACKET_V3` receive ring of one `AF_PACKET` socket.
///
/// The walk state lives in atomics and a `busy` flag makes a concurrent second
/// caller return "nothing" instead of walking the same block: one worker owns a
/// ring in practice, and this keeps `&self` access sound without a lock.
pub struct RxRing {
    base: *mut u8,
    map_len: usize,
    geo: RingGeometry,
    vnet: bool,
    busy: AtomicBool,
    /// Current block index.
    block: AtomicU32,
    /// Packets of the current block already consumed.
    pkt_idx: AtomicU32,
    /// Offset in the current block of the next packet to consume.
    pkt_off: AtomicU32,
}

// SAFETY: the mapping is process memory shared only with the kernel; all walk state
// is in atomics and the `busy` flag admits one walker at a time, so the ring can be
// moved to and used from any thread.
unsafe impl Send for RxRing {}
// SAFETY: see `Send`; `&self` methods serialise through `busy`.
unsafe impl Sync for RxRing {}

impl RxRing {
    /// Sets up `PACKET_RX_RING` on `fd` (after the version and vnet options,
    /// before bind) and maps it.
    pub fn new(fd: BorrowedFd<'_>, geo: RingGeometry, vnet: bool) -> io::Result<RxRing> {
        if geo.block_size == 0
            || !geo.block_size.is_multiple_of(RING_FRAME_SIZE)
            || geo.block_nr == 0
        {
            return Err(invalid_input(format!(
                "bad TPACKET_V3 ring geometry {geo:?}"
            )));
        }
        let req = libc::tpacket_req3 {
            tp_block_size: geo.block_size,
            tp_block_nr: geo.block_nr,
            tp_frame_size: RING_FRAME_SIZE,
            tp_frame_nr: geo.block_size / RING_FRAME_SIZE * geo.block_nr,
            tp_retire_blk_tov: geo.retire_tov_ms,
            tp_sizeof_priv: 0,
            tp_feature_req_word: 0,
        };
        setsockopt(fd, libc::SOL_PACKET, libc::PACKET_RX_RING, &req)?;
        let map_len = geo.block_size as usize * geo.block_nr as usize;
        // SAFETY: mapping the ring the kernel just allocated for this socket, with
        // the exact length it expects; the result is checked before use.
        let base = unsafe {
            libc::mmap(
                ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                // The ring's pages are kernel memory (never swapped): no
                // MAP_LOCKED; MAP_POPULATE maps them all now, not on first touch.
                libc::MAP_SHARED | libc::MAP_POPULATE,
                fd.as_raw_fd(),
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(RxRing {
            base: base.cast::<u8>(),
            map_len,
            geo,
            vnet,
            busy: AtomicBool::new(false),
            block: AtomicU32::new(0),
            pkt_idx: AtomicU32::new(0),
            pkt_off: AtomicU32::new(0),
        })
    }

    /// Pointer to the descriptor of block `i`.
    fn block_ptr(&self, i: u32) -> *mut libc::tpacket_block_desc {
        // SAFETY: `i < block_nr`, so the offset stays inside the mapping.
        unsafe { self.base.add(i as usize * self.geo.block_size as usize) }
            .cast::<libc::tpacket_block_desc>()
    }

    /// Reads `block_status` with acquire ordering (the kernel writes the block,
    /// then the status).
    fn block_status(&self, b: *mut libc::tpacket_block_desc) -> u32 {
        // SAFETY: `b` points to a block descriptor inside the live mapping; the
        // kernel updates it concurrently, hence the volatile read.
        let s = unsafe { ptr::read_volatile(ptr::addr_of!((*b).hdr.bh1.block_status)) };
        fence(Ordering::Acquire);
        s
    }

    /// Hands block `b` back to the kernel.
    fn release(&self, b: *mut libc::tpacket_block_desc) {
        fence(Ordering::Release);
        // SAFETY: as in `block_status`; user space owns the block until this write.
        unsafe {
            ptr::write_volatile(
                ptr::addr_of_mut!((*b).hdr.bh1.block_status),
                TP_STATUS_KERNEL,
            )
        };
    }

    /// Copies the next frame that is not `PACKET_OUTGOING` into `buf` (truncating
    /// to `buf.len()`). `None` when the ring holds nothing ready (or another
    /// thread is walking it).
    pub fn recv_into(&self, buf: &mut [u8]) -> Option<RingFrame> {
        if self.busy.swap(true, Ordering::Acquire) {
            return None;
        }
        let r = self.walk(buf);
        self.busy.store(false, Ordering::Release);
        r
    }

    fn walk(&self, buf: &mut [u8]) -> Option<RingFrame> {
        loop {
            let bi = self.block.load(Ordering::Relaxed);
            let b = self.block_ptr(bi);
            if self.block_status(b) & TP_STATUS_USER == 0 {
                return None;
            }
            // SAFETY: the block is ours (TP_STATUS_USER, acquire above); its header
            // fields are plain integers inside the mapping.
            let (num_pkts, first) = unsafe {
                (
                    ptr::read_volatile(ptr::addr_of!((*b).hdr.bh1.num_pkts)),
                    ptr::read_volatile(ptr::addr_of!((*b).hdr.bh1.offset_to_first_pkt)),
                )
            };
            let idx = self.pkt_idx.load(Ordering::Relaxed);
            if idx >= num_pkts {
                self.release(b);
                self.block
                    .store((bi + 1) % self.geo.block_nr, Ordering::Relaxed);
                self.pkt_idx.store(0, Ordering::Relaxed);
                self.pkt_off.store(0, Ordering::Relaxed);
                continue;
            }
            let off = if idx == 0 {
                first
            } else {
                self.pkt_off.load(Ordering::Relaxed)
            };
            let bs = self.geo.block_size as usize;
            if off as usize + TP3_SLL_OFFSET + mem::size_of::<libc::sockaddr_ll>() > bs {
                // A corrupt offset: give the block back rather than read outside it.
                self.pkt_idx.store(num_pkts, Ordering::Relaxed);
                continue;
            }
            // SAFETY: `off` was checked to leave room for the frame header and its
            // sockaddr_ll inside this block, which user space owns.
            let h = unsafe {
                b.cast::<u8>()
                    .add(off as usize)
                    .cast::<libc::tpacket3_hdr>()
            };
            // SAFETY: `h` points to a frame header inside the owned block.
            let (next, snaplen, wire_len, status, mac) = unsafe {
                (
                    ptr::read_unaligned(ptr::addr_of!((*h).tp_next_offset)),
                    ptr::read_unaligned(ptr::addr_of!((*h).tp_snaplen)),
                    ptr::read_unaligned(ptr::addr_of!((*h).tp_len)),
                    ptr::read_unaligned(ptr::addr_of!((*h).tp_status)),
                    ptr::read_unaligned(ptr::addr_of!((*h).tp_mac)),
                )
            };
            // SAFETY: the sockaddr_ll lies within the block (checked above).
            let pkttype = unsafe { *h.cast::<u8>().add(TP3_SLL_OFFSET + SLL_PKTTYPE_OFFSET) };
            let idx = idx + 1;
            self.pkt_idx.store(idx, Ordering::Relaxed);
            self.pkt_off
                .store(off.wrapping_add(next), Ordering::Relaxed);
            let frame_start = off as usize + mac as usize;
            let in_block = frame_start + snaplen as usize <= bs
                && (!self.vnet || mac as usize >= PACKET_VNET_HDR_LEN + TP3_SLL_OFFSET);
            let result = if pkttype == PACKET_OUTGOING || !in_block {
                None
            } else {
                let len = (snaplen as usize).min(buf.len());
                // SAFETY: `frame_start + snaplen <= block_size` was checked, `buf`
                // has room for `len <= snaplen` bytes, and the ring and `buf` do
                // not overlap.
                unsafe {
                    ptr::copy_nonoverlapping(b.cast::<u8>().add(frame_start), buf.as_mut_ptr(), len)
                };
                let vnet = if self.vnet {
                    let mut v = [0u8; PACKET_VNET_HDR_LEN];
                    // SAFETY: with PACKET_VNET_HDR the kernel places the header
                    // right before the MAC header; `mac >= 10 + header` was checked.
                    unsafe {
                        ptr::copy_nonoverlapping(
                            b.cast::<u8>().add(frame_start - PACKET_VNET_HDR_LEN),
                            v.as_mut_ptr(),
                            PACKET_VNET_HDR_LEN,
                        )
                    };
                    Some(v)
                } else {
                    None
                };
                Some(RingFrame {
                    len,
                    wire_len: wire_len as usize,
                    status,
                    vnet,
                })
            };
            if idx >= num_pkts {
                // Everything in the block has been copied out: return it at once.
                self.release(b);
                self.block
                    .store((bi + 1) % self.geo.block_nr, Ordering::Relaxed);
                self.pkt_idx.store(0, Ordering::Relaxed);
                self.pkt_off.store(0, Ordering::Relaxed);
            }
            if result.is_some() {
                return result;
            }
        }
    }
}

impl Drop for RxRing {
    fn drop(&mut self) {
        // SAFETY: `base`/`map_len` are exactly the mapping made in `new`, and no
        // reference into it outlives `self`.
        unsafe { libc::munmap(self.base.cast::<c_void>(), self.map_len) };
    }
}

// ---------------------------------------------------------------------------
// memory advice
// ---------------------------------------------------------------------------

/// Size of an x86-64 transparent huge page.
pub const HUGE_PAGE: usize = 2 << 20;

/// Backs the 2 MiB-aligned interior of `[addr, addr + len)` with transparent huge
/// pages now: `madvise(MADV_HUGEPAGE)` (later faults and khugepaged use huge
/// pages), then `madvise(MADV_COLLAPSE)` (Linux 6.1+: collapse the resident 4 KiB
/// pages in place, contents preserved). Meant for big tables hit at random (the
/// connection table): a random access then needs one TLB entry per 2 MiB instead
/// of per 4 KiB, so a cold lookup costs one cache miss instead of a miss plus a
/// page walk. Returns the bytes advised (0 when the range holds no aligned huge
/// page). An error (THP disabled, kernel too old, no free huge page) leaves the
/// memory as it was, on 4 KiB pages: callers treat it as a missed optimisation.
pub fn advise_hugepages(addr: usize, len: usize) -> io::Result<usize> {
    let start = addr.next_multiple_of(HUGE_PAGE);
    let end = addr.saturating_add(len) / HUGE_PAGE * HUGE_PAGE;
    if end <= start {
        return Ok(0);
    }
    for advice in [libc::MADV_HUGEPAGE, libc::MADV_COLLAPSE] {
        // SAFETY: these two advices only change how the kernel backs the range
        // (page size), never its contents or validity, so no Rust reference into
        // it is affected; a range that is not mapped makes madvise fail with
        // ENOMEM, which is reported.
        cvt(unsafe { libc::madvise(ptr::without_provenance_mut(start), end - start, advice) })?;
    }
    Ok(end - start)
}

/// Cache-line size assumed by [`prefetch`].
pub const CACHE_LINE: usize = 64;

/// Asks the CPU to start loading the cache lines of `[addr, addr + len)` into all
/// cache levels without waiting for them (`prefetcht0`): the staged burst issues
/// these for every frame's connection-table buckets first, so the misses of a
/// burst overlap instead of stalling one after the other. A hint only: any
/// address is fine (a prefetch never faults), nothing is read or written.
#[inline(always)]
pub fn prefetch(addr: usize, len: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        let mut a = addr;
        while a < addr.saturating_add(len) {
            // SAFETY: `prefetcht0` (SSE, part of the x86-64 baseline) is a hint:
            // it never faults, whatever the address, and has no architectural
            // effect; the pointer is never dereferenced.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(ptr::without_provenance::<i8>(a)) };
            a += CACHE_LINE;
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (addr, len);
}

/// [`prefetch`] of the `LINES` cache lines from `addr` on, with the count
/// known at compile time: one `prefetcht0` per line and no loop (an IPv6
/// connection-table bucket is eight lines).
#[inline(always)]
pub fn prefetch_lines<const LINES: usize>(addr: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        for i in 0..LINES {
            let a = addr.wrapping_add(i * CACHE_LINE);
            // SAFETY: as in `prefetch`: a hint that never faults, whatever
            // the address, with no architectural effect; the pointer is
            // never dereferenced.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(ptr::without_provenance::<i8>(a)) };
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = addr;
}

/// The calling thread's kernel thread id.
pub fn gettid() -> i32 {
    // SAFETY: gettid(2) has no arguments and cannot fail.
    unsafe { libc::gettid() }
}

// ---------------------------------------------------------------------------
// Scheduling of latency-critical threads
// ---------------------------------------------------------------------------

/// `SCHED_OTHER`, the normal policy (as [`thread_sched`] reports it).
pub const SCHED_OTHER: c_int = libc::SCHED_OTHER;
/// `SCHED_FIFO` (as [`thread_sched`] reports it).
pub const SCHED_FIFO: c_int = libc::SCHED_FIFO;

/// Puts the calling thread in `SCHED_FIFO` at `prio` (1..=99), with
/// `SCHED_RESET_ON_FORK` so processes it starts (QEMU, helpers) run as normal
/// threads again. `EPERM` without `CAP_SYS_NICE` (or an RT budget of 0 in
/// the thread's cgroup).
pub fn set_thread_fifo(prio: c_int) -> io::Result<()> {
    let param = libc::sched_param {
        sched_priority: prio,
    };
    // SAFETY: sched_setscheduler(2) on pid 0 (the calling thread) only reads
    // `param`, which lives for the whole call.
    cvt(unsafe {
        libc::sched_setscheduler(0, libc::SCHED_FIFO | libc::SCHED_RESET_ON_FORK, &param)
    })
    .map(drop)
}

/// Puts thread `tid` of this process in `SCHED_FIFO` at `prio` (with
/// `SCHED_RESET_ON_FORK`), as [`set_thread_fifo`] does for the caller.
/// `ESRCH` when the thread is gone.
pub fn set_thread_fifo_of(tid: i32, prio: c_int) -> io::Result<()> {
    let param = libc::sched_param {
        sched_priority: prio,
    };
    // SAFETY: sched_setscheduler(2) on a thread id only reads `param`, which
    // lives for the whole call; a wrong id is an error, not UB.
    cvt(unsafe {
        libc::sched_setscheduler(tid, libc::SCHED_FIFO | libc::SCHED_RESET_ON_FORK, &param)
    })
    .map(drop)
}

/// Gives the calling thread nice value `nice` (-20..=19, lower runs sooner),
/// after marking it `SCHED_RESET_ON_FORK` so its children start at nice 0.
pub fn set_thread_nice(nice: c_int) -> io::Result<()> {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: sched_setscheduler(2) on pid 0 (the calling thread) only reads
    // `param`, which lives for the whole call.
    cvt(unsafe {
        libc::sched_setscheduler(0, libc::SCHED_OTHER | libc::SCHED_RESET_ON_FORK, &param)
    })?;
    // SAFETY: setpriority(2) with PRIO_PROCESS and a thread id acts on that
    // one thread on Linux; plain integer arguments.
    cvt(unsafe { libc::setpriority(libc::PRIO_PROCESS, gettid() as libc::id_t, nice) }).map(drop)
}

/// The calling thread's scheduling policy (`libc::SCHED_*`, without the
/// reset-on-fork flag) and nice value.
pub fn thread_sched() -> io::Result<(c_int, c_int)> {
    // SAFETY: sched_getscheduler(2) on pid 0 (the calling thread); no pointers.
    let policy = cvt(unsafe { libc::sched_getscheduler(0) })?;
    // getpriority(2) returns the nice value, which may be -1: clear errno
    // first and check it after.
    // SAFETY: __errno_location returns the calling thread's errno slot;
    // getpriority(2) takes plain integers.
    let nice = unsafe {
        *libc::__errno_location() = 0;
        libc::getpriority(libc::PRIO_PROCESS, gettid() as libc::id_t)
    };
    let err = io::Error::last_os_error();
    if nice == -1 && err.raw_os_error().unwrap_or(0) != 0 {
        return Err(err);
    }
    Ok((policy & !libc::SCHED_RESET_ON_FORK, nice))
}

// ---------------------------------------------------------------------------
// UDP sockets of the overlay
// ---------------------------------------------------------------------------

/// `UDP_SEGMENT` (`<linux/udp.h>`, Linux 4.18): UDP GSO, as a socket option or
/// a per-`sendmsg` control message carrying the segment size (`u16`).
pub const UDP_SEGMENT: c_int = 103;

fn sockaddr_in(addr: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: addr.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*addr.ip()).to_be(),
        },
        sin_zero: [0; 8],
    }
}

/// A non-blocking, close-on-exec UDP socket bound to `addr` in the calling
/// thread's network namespace, with `SO_REUSEPORT` (every worker binds its own
/// socket to the same address; the kernel spreads datagrams over them by a hash
/// of the 4-tuple, so one flow stays on one worker), `IP_MTU_DISCOVER` =
/// `IP_PMTUDISC_DO` (DF on every datagram, never fragmented: RFC 7348 §4.3), and
/// send/receive buffers of `buf_bytes` (forced past the sysctl limits when the
/// process may, else as large as they allow).
pub fn udp_socket_reuseport(addr: SocketAddrV4, buf_bytes: c_int) -> io::Result<UdpSocket> {
    // SAFETY: plain socket(2); the result is owned at once.
    let fd = owned_fd(unsafe {
        libc::socket(
            libc::AF_INET,
            libc::SOCK_DGRAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    })?;
    setsockopt(
        fd.as_fd(),
        libc::SOL_SOCKET,
        libc::SO_REUSEPORT,
        &1 as &c_int,
    )?;
    setsockopt(
        fd.as_fd(),
        libc::IPPROTO_IP,
        libc::IP_MTU_DISCOVER,
        &libc::IP_PMTUDISC_DO,
    )?;
    // Past `net.core.{r,w}mem_max` with CAP_NET_ADMIN (the daemon has it: a
    // 64 KiB GSO batch per skb fills a default 208 KiB buffer in three).
    for (force, plain) in [
        (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF),
        (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF),
    ] {
        if setsockopt(fd.as_fd(), libc::SOL_SOCKET, force, &buf_bytes).is_err() {
            let _ = setsockopt(fd.as_fd(), libc::SOL_SOCKET, plain, &buf_bytes);
        }
    }
    let sin = sockaddr_in(addr);
    // SAFETY: `sin` is a live `sockaddr_in` and the length passed is its size.
    let ret = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&sin as *const libc::sockaddr_in).cast::<libc::sockaddr>(),
            mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    cvt(ret)?;
    Ok(UdpSocket::from(fd))
}

/// `UDP_GRO` (`<linux/udp.h>`, Linux 5.0): the socket accepts coalesced
/// datagrams; `recvmsg` says the segment size in a control message.
pub const UDP_GRO: c_int = 104;

/// Turns on `UDP_GRO` for `sock` (see [`udp_recvmsg`]).
pub fn udp_set_gro(sock: BorrowedFd<'_>) -> io::Result<()> {
    setsockopt(sock, libc::SOL_UDP, UDP_GRO, &1 as &c_int)
}

/// `recvmsg(2)` of one (possibly GRO-coalesced) UDP read into `buf`: its length,
/// the sender, and with `UDP_GRO` on, the size of the datagrams it holds (all
/// but the last have that size) when the kernel coalesced several.
pub fn udp_recvmsg(
    fd: BorrowedFd<'_>,
    buf: &mut [u8],
) -> io::Result<(usize, SocketAddrV4, Option<u16>)> {
    // SAFETY: an all-zero `sockaddr_in` is valid.
    let mut sin: libc::sockaddr_in = unsafe { mem::zeroed() };
    let mut cbuf = [0u64; 8];
    let mut iov = [IoSliceMut::new(buf)];
    // SAFETY: an all-zero `msghdr` is valid (null pointers, zero lengths).
    let mut msg: libc::msghdr = unsafe { mem::zeroed() };
    msg.msg_name = (&mut sin as *mut libc::sockaddr_in).cast::<c_void>();
    msg.msg_namelen = mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // `IoSliceMut` is ABI-compatible with `struct iovec`.
    msg.msg_iov = iov.as_mut_ptr().cast::<libc::iovec>();
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr().cast::<c_void>();
    msg.msg_controllen = mem::size_of_val(&cbuf);
    // SAFETY: `msg` points to live locals (`sin`, `cbuf`, `iov` over `buf`) that
    // outlive the call; the kernel writes at most their stated lengths.
    let n = cvt_size(unsafe { libc::recvmsg(fd.as_raw_fd(), &mut msg, 0) })?;
    let from = SocketAddrV4::new(
        Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)),
        u16::from_be(sin.sin_port),
    );
    let mut gro = None;
    // SAFETY: the kernel filled `msg_control` (within `cbuf`) and set
    // `msg_controllen`; CMSG_FIRSTHDR/CMSG_NXTHDR stay within it and return null
    // at its end; a UDP_GRO message carries one int, read unaligned.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_UDP && (*c).cmsg_type == UDP_GRO {
                let size = ptr::read_unaligned(libc::CMSG_DATA(c).cast::<c_int>());
                gro = u16::try_from(size).ok().filter(|&s| s > 0);
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    Ok((n, from, gro))
}

/// `sendmsg(2)` of one UDP datagram to `to`, gathered from `bufs` (no copy).
/// With `gso = Some(n)` it carries a `UDP_SEGMENT` control message: the kernel
/// cuts the payload into datagrams of `n` bytes each (the last may be shorter),
/// all with the same headers, in one system call.
pub fn udp_sendmsg(
    fd: BorrowedFd<'_>,
    to: SocketAddrV4,
    bufs: &[IoSlice<'_>],
    gso: Option<u16>,
) -> io::Result<usize> {
    let mut sin = sockaddr_in(to);
    // Room for one cmsghdr with a u16, 8-byte aligned (CMSG_SPACE(2) = 24).
    let mut cbuf = [0u64; 4];
    // SAFETY: an all-zero `msghdr` is valid (null pointers, zero lengths).
    let mut msg: libc::msghdr = unsafe { mem::zeroed() };
    msg.msg_name = (&mut sin as *mut libc::sockaddr_in).cast::<c_void>();
    msg.msg_namelen = mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // `IoSlice` is ABI-compatible with `struct iovec`; the kernel only reads them.
    msg.msg_iov = bufs.as_ptr() as *mut libc::iovec;
    msg.msg_iovlen = bufs.len();
    if let Some(size) = gso {
        // SAFETY: CMSG_SPACE is a pure computation.
        let space = unsafe { libc::CMSG_SPACE(mem::size_of::<u16>() as u32) } as usize;
        debug_assert!(space <= mem::size_of_val(&cbuf));
        msg.msg_control = cbuf.as_mut_ptr().cast::<c_void>();
        msg.msg_controllen = space;
        // SAFETY: `msg.msg_control` points to `cbuf`, zeroed, 8-byte aligned and
        // at least `space` bytes long, so CMSG_FIRSTHDR returns a valid pointer
        // into it, and CMSG_DATA of that header has room for the u16 (CMSG_LEN(2)
        // <= space); the writes stay inside `cbuf`.
        unsafe {
            let c = libc::CMSG_FIRSTHDR(&msg);
            (*c).cmsg_level = libc::SOL_UDP;
            (*c).cmsg_type = UDP_SEGMENT;
            (*c).cmsg_len = libc::CMSG_LEN(mem::size_of::<u16>() as u32) as usize;
            ptr::write_unaligned(libc::CMSG_DATA(c).cast::<u16>(), size);
        }
    }
    // SAFETY: `msg` points to live locals (`sin`, `cbuf`) and to `bufs`, all of
    // which outlive the call; the kernel only reads them.
    cvt_size(unsafe { libc::sendmsg(fd.as_raw_fd(), &msg, 0) })
}

/// Types whose all-zero bytes are a valid value (and their default), so a
/// [`ZeroedRun`] of them can be made from fresh anonymous memory.
///
/// # Safety
/// An implementor must be valid, with no drop glue to run, when every one
/// of its bytes is zero.
pub unsafe trait Zeroable {}

// SAFETY: `RuleCounters` is three `AtomicU64`s and padding (`repr(C)`): all
// zero is `RuleCounters::default()`, and it has no `Drop`.
unsafe impl Zeroable for crate::counters::RuleCounters {}

/// A run of `len` zeroed `T`s in fresh private anonymous memory (`mmap`):
/// made in O(1) whatever its length (the kernel zero-fills each page when it
/// is first touched), unmapped when dropped. The per-rule hit blocks use it so that a block for a
/// 100k-rule layout costs no 3 MB `memset` where it is made.
pub struct ZeroedRun<T: Zeroable> {
    ptr: ptr::NonNull<T>,
    len: usize,
    /// Bytes mapped (0: nothing mapped, `len` or `T` is zero-sized).
    map_len: usize,
}

// SAFETY: a `ZeroedRun` owns its `T`s like a `Box<[T]>` does.
unsafe impl<T: Zeroable + Send> Send for ZeroedRun<T> {}
// SAFETY: shared access only hands out `&[T]`, as a `Box<[T]>` does.
unsafe impl<T: Zeroable + Sync> Sync for ZeroedRun<T> {}

impl<T: Zeroable> ZeroedRun<T> {
    /// `len` zeroed `T`s (aborts like a failed allocation when the kernel
    /// has no memory for the mapping).
    pub fn new(len: usize) -> ZeroedRun<T> {
        let map_len = len.saturating_mul(mem::size_of::<T>());
        if map_len == 0 {
            return ZeroedRun {
                ptr: ptr::NonNull::dangling(),
                len,
                map_len: 0,
            };
        }
        // SAFETY: a fresh private anonymous mapping, no fd; the result is
        // checked before use. Page alignment satisfies any `T`'s alignment.
        let base = unsafe {
            libc::mmap(
                ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        match ptr::NonNull::new(base.cast::<T>()) {
            Some(ptr) if base != libc::MAP_FAILED => ZeroedRun { ptr, len, map_len },
            _ => std::alloc::handle_alloc_error(
                std::alloc::Layout::array::<T>(len).unwrap_or(std::alloc::Layout::new::<T>()),
            ),
        }
    }
}

impl<T: Zeroable> ZeroedRun<T> {
    /// Back to all zero: the pages are given back (`MADV_DONTNEED`) and
    /// zero-filled again when next touched. Costs in proportion to the pages
    /// that were touched.
    pub fn reset(&mut self) {
        if self.map_len == 0 {
            return;
        }
        // SAFETY: madvise(2) on exactly our mapping, which is private and
        // anonymous: its contents read as zero afterwards, a valid `T`
        // ([`Zeroable`]); `&mut self` means no reference into it is live.
        unsafe {
            libc::madvise(
                self.ptr.as_ptr().cast::<c_void>(),
                self.map_len,
                libc::MADV_DONTNEED,
            );
        }
    }
}

impl<T: Zeroable> ZeroedRun<T> {
    /// Index ranges of the `T`s on pages touched (read or written) since the
    /// run was made or reset, from `mincore(2)`; every other `T` is zero.
    /// Lets a scan skip the untouched pages (and not fault them in). The
    /// whole run when the kernel does not say.
    pub fn touched(&self) -> Vec<std::ops::Range<usize>> {
        let size = mem::size_of::<T>();
        if self.map_len == 0 || size == 0 {
            return Vec::new();
        }
        // SAFETY: sysconf(3) with a constant name.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
        let mut vec = vec![0u8; self.map_len.div_ceil(page)];
        // SAFETY: mincore(2) on exactly our (page-aligned) mapping; `vec` has
        // one byte per page of it.
        let rc = unsafe {
            libc::mincore(
                self.ptr.as_ptr().cast::<c_void>(),
                self.map_len,
                vec.as_mut_ptr(),
            )
        };
        if rc != 0 {
            return std::iter::once(0..self.len).collect();
        }
        let mut out: Vec<std::ops::Range<usize>> = Vec::new();
        for (p, v) in vec.iter().enumerate() {
            if v & 1 == 0 {
                continue;
            }
            let start = (p * page / size).min(self.len);
            let end = ((p + 1) * page).div_ceil(size).min(self.len);
            match out.last_mut() {
                Some(r) if r.end >= start => r.end = r.end.max(end),
                _ => out.push(start..end),
            }
        }
        out
    }
}

impl<T: Zeroable> std::ops::Deref for ZeroedRun<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        // SAFETY: `ptr` points to `len` `T`s of our mapping (or is dangling
        // with nothing mapped when they take no bytes), all valid since all
        // zero is a valid `T` ([`Zeroable`]) and only written through `&T`.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl<T: Zeroable> Drop for ZeroedRun<T> {
    fn drop(&mut self) {
        if self.map_len != 0 {
            // SAFETY: unmapping exactly the mapping made in `new`, once; no
            // reference into it outlives `self`.
            unsafe {
                libc::munmap(self.ptr.as_ptr().cast::<c_void>(), self.map_len);
            }
        }
    }
}

impl<T: Zeroable> std::fmt::Debug for ZeroedRun<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ZeroedRun({} x {} B)", self.len, mem::size_of::<T>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ifreq_rejects_bad_names() {
        assert!(IfReq::new("").is_err());
        assert!(
            IfReq::new("0123456789abcdef").is_err(),
            "16 bytes is one too many"
        );
        assert!(IfReq::new("a/b").is_err());
        assert!(IfReq::new("a b").is_err());
        assert!(IfReq::new("..").is_err());
        assert_eq!(
            IfReq::new("0123456789abcde").unwrap().name(),
            "0123456789abcde"
        );
    }

    #[test]
    fn ifreq_builder_fills_the_union() {
        let r = IfReq::new("eth0").unwrap().with_flags(IFF_TAP | IFF_NO_PI);
        assert_eq!(r.flags(), IFF_TAP | IFF_NO_PI);
        let r = IfReq::new("eth0")
            .unwrap()
            .with_hwaddr([2, 0, 0, 0xab, 0xcd, 0xef]);
        assert_eq!(r.hwaddr(), [2, 0, 0, 0xab, 0xcd, 0xef]);
        let r = IfReq::new("eth0")
            .unwrap()
            .with_ipv4(Ipv4Addr::new(172, 31, 0, 9));
        // sockaddr_in: family (2 bytes), port (2 bytes), address (4 bytes).
        // SAFETY: reading back the sockaddr we just wrote.
        let sa = unsafe { r.raw.ifr_ifru.ifru_addr };
        assert_eq!(sa.sa_family, libc::AF_INET as libc::sa_family_t);
        let addr: Vec<u8> = sa.sa_data[2..6].iter().map(|&c| c as u8).collect();
        assert_eq!(addr, [172, 31, 0, 9]);
    }

    #[test]
    fn eventfd_notify_then_drain() {
        let e = EventFd::new().unwrap();
        assert_eq!(e.drain().unwrap(), 0);
        e.notify().unwrap();
        e.notify().unwrap();
        assert_eq!(e.drain().unwrap(), 2);
        assert_eq!(e.drain().unwrap(), 0);
    }

    #[test]
    fn epoll_reports_eventfd_with_token() {
        let ep = Epoll::new().unwrap();
        let e = EventFd::new().unwrap();
        ep.add(e.as_raw_fd(), EPOLLIN, 42).unwrap();
        let mut evs = EpollEvents::with_capacity(4);
        assert_eq!(ep.wait(&mut evs, 0).unwrap(), 0);
        e.notify().unwrap();
        assert_eq!(ep.wait(&mut evs, 1000).unwrap(), 1);
        let (tok, ev) = evs.iter().next().unwrap();
        assert_eq!(tok, 42);
        assert!(ev & EPOLLIN != 0);
        ep.del(e.as_raw_fd()).unwrap();
        assert_eq!(ep.wait(&mut evs, 0).unwrap(), 0);
    }

    #[test]
    fn readv_writev_over_a_pipe() {
        let mut fds = [0 as c_int; 2];
        // SAFETY: `fds` has room for the two fds pipe2 writes; both are owned at once.
        cvt(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }).unwrap();
        // SAFETY: fresh fds from pipe2, owned by nobody else.
        let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        let n = writev(w.as_fd(), &[IoSlice::new(b"head"), IoSlice::new(b"-body")]).unwrap();
        assert_eq!(n, 9);
        let (mut a, mut b) = ([0u8; 4], [0u8; 16]);
        let n = readv(
            r.as_fd(),
            &mut [IoSliceMut::new(&mut a), IoSliceMut::new(&mut b)],
        )
        .unwrap();
        assert_eq!(n, 9);
        assert_eq!(&a, b"head");
        assert_eq!(&b[..5], b"-body");
    }

    #[test]
    fn tp3_layout_constants() {
        assert_eq!(TP3_SLL_OFFSET, 48);
        assert_eq!(SLL_PKTTYPE_OFFSET, 10);
        assert_eq!(ETH_P_ALL_BE.to_ne_bytes(), [0x00, 0x03]);
    }

    #[test]
    fn huge_page_advice_covers_the_aligned_interior_and_keeps_contents() {
        let len = 9 * HUGE_PAGE;
        let mut v: Vec<u64> = (0..(len / 8) as u64).map(|i| i * 7 + 1).collect();
        let addr = v.as_ptr() as usize;
        match advise_hugepages(addr, len) {
            Ok(n) => {
                // The whole 2 MiB pages inside the buffer: at least 8 of them.
                assert!(n >= 8 * HUGE_PAGE && n <= len, "advised {n} of {len}");
                assert_eq!(n % HUGE_PAGE, 0);
            }
            // THP disabled or no free huge page here: the memory stays as it was.
            Err(e) => eprintln!("no huge pages on this machine: {e}"),
        }
        assert!(v.iter().enumerate().all(|(i, x)| *x == i as u64 * 7 + 1));
        v[12345] = 0;
        assert_eq!(v[12345], 0);
        // Ranges too small for one aligned huge page are left alone.
        assert_eq!(advise_hugepages(addr, 4096).expect("empty range"), 0);
        // A prefetch is a hint, whatever the address.
        prefetch(addr, 4 * CACHE_LINE);
        prefetch(0, CACHE_LINE);
    }
}
