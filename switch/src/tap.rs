//! TAP ports: the switch owns the TAP fds, the netdev is the instance's `eth0`.
//!
//! Contract:
//! * [`open_tap`] attaches `queues` fds to TAP `name` in the calling thread's
//!   network namespace, creating the device if needed (wrap it in
//!   `netns::in_netns(ns, ..)` to create or re-attach a TAP inside an instance's
//!   namespace; the fds keep working after the helper thread exits). Every fd is
//!   non-blocking; queue `w` belongs to worker `w`.
//! * The device is always multi-queue (when the kernel offers it), so a TAP made
//!   with one queue can be re-attached with several and vice versa.
//! * With `vnet_hdr`, every frame crosses the fd with a 10-byte virtio-net header
//!   and the TAP is told we accept checksum and TSO/USO offloads, so 64 KiB TCP
//!   super-frames pass unsegmented; [`TapQueue::recv`] splits the header off into
//!   a [`VnetHdr`], [`TapQueue::send`] prefixes it with `writev` (no copy).
//! * A persistent TAP (`persist`) outlives its fds; calling [`open_tap`] again
//!   with the same name re-attaches it. [`TapQueue::set_persist`]`(false)` lets
//!   it disappear with its last fd.
//! * Namespaces: [`open_tap_in_netns`] makes an instance's `eth0`. A *new* TAP is
//!   created in the caller's namespace under a temporary name and moved into the
//!   instance's namespace, renamed, in one rtnetlink request: its fds then belong
//!   to the caller's namespace and do not keep the instance's alive, so deleting
//!   the namespace destroys the TAP (the queues report `Gone`). An *existing*
//!   (persistent) TAP is re-attached from inside the namespace; such fds hold a
//!   reference on that namespace (the kernel's TUN socket does), so it lives until
//!   they close: remove the port before deleting the namespace. The same is true of
//!   [`open_tap_inside_netns`] (= `netns::in_netns(ns, || open_tap(..))`).
//! * Cost: moving a device between namespaces waits for an RCU grace period in
//!   the kernel (`synchronize_net`), ~15-20 ms on the lab machines, and dominates
//!   [`open_tap_in_netns`] for a new TAP; [`open_tap_inside_netns`] takes well under
//!   1 ms. Pick by whether namespace deletion must destroy the TAP on its own.
//! * When the netdev vanishes (its namespace deleted), recv/send fail with
//!   `EBADFD`/`ENODEV`/`ENXIO`, reported as [`PortError::Gone`]. `EIO` is *not*
//!   "gone": the TAP returns it for writes while the interface is down.

use std::ffi::c_short;
use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};

use std::sync::atomic::{AtomicU32, Ordering};

use crate::netns::{self, NetnsError};
use crate::port::{PortError, PortQueue, VnetHdr};
use crate::sys;

/// Offloads we accept from the kernel when the vnet header is on, best first;
/// USO is newer (Linux 6.2), so fall back to checksum + TSO without it.
const OFFLOAD_SETS: [std::ffi::c_uint; 2] = [
    sys::TUN_F_CSUM
        | sys::TUN_F_TSO4
        | sys::TUN_F_TSO6
        | sys::TUN_F_TSO_ECN
        | sys::TUN_F_USO4
        | sys::TUN_F_USO6,
    sys::TUN_F_CSUM | sys::TUN_F_TSO4 | sys::TUN_F_TSO6 | sys::TUN_F_TSO_ECN,
];

/// Errors of opening or configuring a TAP.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    #[error(
        "open TAP {name:?}: {queues} queues (multi-queue {multi_queue}): need 1, or more with multi-queue"
    )]
    QueueCount {
        name: String,
        queues: usize,
        multi_queue: bool,
    },
    #[error("open {path} for TAP {name:?}", path = sys::TUN_PATH.to_string_lossy())]
    OpenTun {
        name: String,
        #[source]
        source: io::Error,
    },
    #[error("TUNGETFEATURES for TAP {name:?}")]
    Features {
        name: String,
        #[source]
        source: io::Error,
    },
    #[error("TAP {name:?}: kernel lacks required TUN features {missing:#x} (has {features:#x})")]
    MissingFeatures {
        name: String,
        missing: c_short,
        features: c_short,
    },
    #[error("TUNSETIFF TAP {name:?} queue {queue} with flags {flags:#x}")]
    SetIff {
        name: String,
        queue: usize,
        flags: c_short,
        #[source]
        source: io::Error,
    },
    #[error("TUNSETVNETHDRSZ {size} on TAP {name:?}")]
    VnetHdrSize {
        name: String,
        size: usize,
        #[source]
        source: io::Error,
    },
    #[error("TUNSETOFFLOAD {flags:#x} on TAP {name:?}")]
    Offload {
        name: String,
        flags: std::ffi::c_uint,
        #[source]
        source: io::Error,
    },
    #[error("TAP {name:?} in network namespace {ns:?}")]
    Netns {
        name: String,
        ns: String,
        #[source]
        source: NetnsError,
    },
    #[error("TUNSETPERSIST {persist} on TAP {name:?}")]
    Persist {
        name: String,
        persist: bool,
        #[source]
        source: io::Error,
    },
}

/// One queue (fd) of a TAP device.
pub struct TapQueue {
    fd: OwnedFd,
    name: String,
    vnet_hdr: bool,
    /// The `TUN_F_*` offloads the device was told we accept (0 without vnet).
    offload_flags: std::ffi::c_uint,
}

impl std::fmt::Debug for TapQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TapQueue")
            .field("name", &self.name)
            .field("fd", &self.fd.as_raw_fd())
            .field("vnet_hdr", &self.vnet_hdr)
            .finish()
    }
}

/// Opens (creating if needed) TAP `name` with `queues` fds in the calling
/// thread's network namespace, multi-queue. See the module docs.
pub fn open_tap(
    name: &str,
    queues: usize,
    vnet_hdr: bool,
    persist: bool,
) -> Result<Vec<TapQueue>, TapError> {
    open_tap_with(
        name,
        TapOptions {
            queues,
            vnet_hdr,
            persist,
            multi_queue: true,
        },
    )
}

/// How to open a TAP with [`open_tap_with`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TapOptions {
    /// Fds to attach (one per worker).
    pub queues: usize,
    /// Frames carry a virtio-net header; offloads are accepted.
    pub vnet_hdr: bool,
    /// The device outlives its fds.
    pub persist: bool,
    /// Create/attach with `IFF_MULTI_QUEUE` (when the kernel has it). The kernel
    /// only lets an fd attach with the flag the device was made with, so a TAP
    /// meant for a single-queue opener (QEMU's `-netdev tap,ifname=..` without
    /// `queues=`) must be made with `false` (and then `queues == 1`).
    pub multi_queue: bool,
}

/// Opens (creating if needed) TAP `name` with `opts` in the calling thread's
/// network namespace.
pub fn open_tap_with(name: &str, opts: TapOptions) -> Result<Vec<TapQueue>, TapError> {
    let TapOptions {
        queues,
        vnet_hdr,
        persist,
        multi_queue,
    } = opts;
    if queues == 0 || (!multi_queue && queues > 1) {
        return Err(TapError::QueueCount {
            name: name.to_owned(),
            queues,
            multi_queue,
        });
    }
    let first = sys::tun_open().map_err(|source| TapError::OpenTun {
        name: name.to_owned(),
        source,
    })?;
    let features = sys::tun_features(first.as_fd()).map_err(|source| TapError::Features {
        name: name.to_owned(),
        source,
    })?;
    let mut required = sys::IFF_TAP | sys::IFF_NO_PI;
    if vnet_hdr {
        required |= sys::IFF_VNET_HDR;
    }
    if queues > 1 {
        required |= sys::IFF_MULTI_QUEUE;
    }
    if features & required != required {
        return Err(TapError::MissingFeatures {
            name: name.to_owned(),
            missing: required & !features,
            features,
        });
    }
    // Multi-queue whenever available (unless asked not to), so re-attaching with
    // another queue count matches the device's flags.
    let mq = if multi_queue {
        features & sys::IFF_MULTI_QUEUE
    } else {
        0
    };
    let flags = required | mq;

    let mut out = Vec::with_capacity(queues);
    let mut offload_flags = 0;
    let mut next = Some(first);
    for queue in 0..queues {
        let fd = match next.take() {
            Some(fd) => fd,
            None => sys::tun_open().map_err(|source| TapError::OpenTun {
                name: name.to_owned(),
                source,
            })?,
        };
        let actual =
            sys::tun_set_iff(fd.as_fd(), name, flags).map_err(|source| TapError::SetIff {
                name: name.to_owned(),
                queue,
                flags,
                source,
            })?;
        if vnet_hdr {
            sys::tun_set_vnet_hdr_sz(fd.as_fd(), VnetHdr::LEN as i32).map_err(|source| {
                TapError::VnetHdrSize {
                    name: actual.clone(),
                    size: VnetHdr::LEN,
                    source,
                }
            })?;
            if queue == 0 {
                offload_flags = set_offloads(&fd, &actual)?;
            }
        } else if queue == 0 {
            // A re-attached persistent TAP may still have offloads from an
            // earlier life with vnet headers: without headers we accept none.
            sys::tun_set_offload(fd.as_fd(), 0).map_err(|source| TapError::Offload {
                name: actual.clone(),
                flags: 0,
                source,
            })?;
        }
        if queue == 0 && persist {
            sys::tun_set_persist(fd.as_fd(), true).map_err(|source| TapError::Persist {
                name: actual.clone(),
                persist,
                source,
            })?;
        }
        out.push(TapQueue {
            fd,
            name: actual,
            vnet_hdr,
            offload_flags,
        });
    }
    Ok(out)
}

/// Temporary names of TAPs on their way into a namespace.
static NEXT_TEMP: AtomicU32 = AtomicU32::new(0);

/// Opens TAP `name` of namespace `ns` (created if missing), with `queues` fds.
/// See the module docs for how new and existing TAPs differ.
pub fn open_tap_in_netns(
    ns: &str,
    name: &str,
    queues: usize,
    vnet_hdr: bool,
    persist: bool,
) -> Result<Vec<TapQueue>, TapError> {
    let ns_err = |source| TapError::Netns {
        name: name.to_owned(),
        ns: ns.to_owned(),
        source,
    };
    if netns::ifindex(Some(ns), name).is_ok() {
        return open_tap_inside_netns(ns, name, queues, vnet_hdr, persist);
    }
    let n = NEXT_TEMP.fetch_add(1, Ordering::Relaxed);
    let mut temp = format!("sgt{:x}x{n:x}", std::process::id());
    temp.truncate(sys::IFNAME_MAX);
    let mut q = open_tap(&temp, queues, vnet_hdr, persist)?;
    if let Err(e) = netns::move_to_netns_as(&temp, ns, Some(name)) {
        // Do not leave the temporary device behind.
        let _ = q[0].set_persist(false);
        return Err(ns_err(e));
    }
    for queue in &mut q {
        queue.name = name.to_owned();
    }
    Ok(q)
}

/// Opens (creating if needed) TAP `name` from inside namespace `ns`: fast (no
/// device move), but the fds hold a reference on `ns`, so deleting the namespace
/// does not destroy the TAP while they are open (see the module docs).
pub fn open_tap_inside_netns(
    ns: &str,
    name: &str,
    queues: usize,
    vnet_hdr: bool,
    persist: bool,
) -> Result<Vec<TapQueue>, TapError> {
    netns::in_netns(ns, || open_tap(name, queues, vnet_hdr, persist)).map_err(|source| {
        TapError::Netns {
            name: name.to_owned(),
            ns: ns.to_owned(),
            source,
        }
    })?
}

/// Tells the TAP which offloads we accept, trying the richest set first.
fn set_offloads(fd: &OwnedFd, name: &str) -> Result<std::ffi::c_uint, TapError> {
    let mut last = None;
    for flags in OFFLOAD_SETS {
        match sys::tun_set_offload(fd.as_fd(), flags) {
            Ok(()) => return Ok(flags),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => last = Some((flags, e)),
            Err(source) => {
                return Err(TapError::Offload {
                    name: name.to_owned(),
                    flags,
                    source,
                });
            }
        }
    }
    let (flags, source) = last.expect("OFFLOAD_SETS is not empty");
    Err(TapError::Offload {
        name: name.to_owned(),
        flags,
        source,
    })
}

/// Errors that mean the netdev behind a TAP fd has vanished.
fn is_gone(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EBADFD) | Some(libc::ENODEV) | Some(libc::ENXIO)
    )
}

impl TapQueue {
    /// The device name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether frames carry a virtio-net header.
    pub fn vnet_hdr(&self) -> bool {
        self.vnet_hdr
    }

    /// The `TUN_F_*` offloads the device was told we accept (0 without vnet).
    pub fn offload_flags(&self) -> std::ffi::c_uint {
        self.offload_flags
    }

    /// Makes the device persistent or not. A non-persistent device disappears
    /// when its last fd closes.
    pub fn set_persist(&self, persist: bool) -> Result<(), TapError> {
        sys::tun_set_persist(self.fd.as_fd(), persist).map_err(|source| TapError::Persist {
            name: self.name.clone(),
            persist,
            source,
        })
    }

    fn err(&self, e: io::Error) -> PortError {
        if is_gone(&e) {
            PortError::Gone {
                port: self.name.clone(),
                source: e,
            }
        } else {
            PortError::Io {
                port: self.name.clone(),
                source: e,
            }
        }
    }
}

impl PortQueue for TapQueue {
    fn recv(&self, buf: &mut [u8]) -> Result<Option<(usize, VnetHdr)>, PortError> {
        let res = if self.vnet_hdr {
            let mut hdr = [0u8; VnetHdr::LEN];
            let r = sys::readv(
                self.fd.as_fd(),
                &mut [IoSliceMut::new(&mut hdr), IoSliceMut::new(buf)],
            );
            r.map(|n| (n.saturating_sub(VnetHdr::LEN), VnetHdr::decode(&hdr)))
        } else {
            sys::read(self.fd.as_fd(), buf).map(|n| (n, VnetHdr::default()))
        };
        match res {
            Ok(r) => Ok(Some(r)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(None),
            Err(e) => Err(self.err(e)),
        }
    }

    fn send(&self, frame: &[u8], vnet: &VnetHdr) -> Result<(), PortError> {
        let res = if self.vnet_hdr {
            let hdr = vnet.encode();
            sys::writev(self.fd.as_fd(), &[IoSlice::new(&hdr), IoSlice::new(frame)])
        } else if vnet.is_plain() {
            sys::write(self.fd.as_fd(), frame)
        } else {
            // A super-frame or partial checksum cannot be expressed without the
            // header: refuse rather than put a broken frame on the wire.
            Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "offload frame sent to a TAP queue without vnet header",
            ))
        };
        res.map(drop).map_err(|e| self.err(e))
    }

    fn offloads(&self) -> bool {
        self.vnet_hdr
    }

    fn poll_fd(&self) -> Option<RawFd> {
        Some(self.fd.as_raw_fd())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gone_errors_are_classified() {
        assert!(is_gone(&io::Error::from_raw_os_error(libc::EBADFD)));
        assert!(is_gone(&io::Error::from_raw_os_error(libc::ENODEV)));
        assert!(is_gone(&io::Error::from_raw_os_error(libc::ENXIO)));
        assert!(!is_gone(&io::Error::from_raw_os_error(libc::EIO)));
        assert!(!is_gone(&io::Error::from_raw_os_error(libc::EAGAIN)));
    }

    #[test]
    fn zero_queues_is_an_error_naming_the_tap() {
        let e = open_tap("sgtest0", 0, false, false).unwrap_err();
        assert!(matches!(e, TapError::QueueCount { queues: 0, .. }));
        let two = TapOptions {
            queues: 2,
            vnet_hdr: false,
            persist: false,
            multi_queue: false,
        };
        let e = open_tap_with("sgtest0", two).unwrap_err();
        assert!(
            matches!(
                e,
                TapError::QueueCount {
                    queues: 2,
                    multi_queue: false,
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("sgtest0"));
    }
}
