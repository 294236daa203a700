//! AF_PACKET ports: attach to the kernel side of an interface someone else made
//! (a QEMU guest's TAP that QEMU holds, one end of a veth).
//!
//! Contract:
//! * [`open_afpacket`] opens `queues` sockets bound to the interface (in the
//!   calling thread's network namespace), each with its own mmap'ed `TPACKET_V3`
//!   receive ring; with more than one queue they form a `PACKET_FANOUT` hash group
//!   so every frame reaches exactly one queue, and both directions of a flow the
//!   same one.
//! * Frames the host itself sends on the interface (including the ones we send)
//!   are not received: `PACKET_IGNORE_OUTGOING`, and the ring walk skips
//!   `PACKET_OUTGOING` frames as well.
//! * With `vnet_hdr` (the default), `PACKET_VNET_HDR` is on: received frames come
//!   with the kernel's virtio-net header, so TSO super-frames (a guest's or a
//!   veth's GSO) arrive whole with `gso_type` set and partial checksums arrive as
//!   `NEEDS_CSUM` with `csum_start`/`csum_offset` — the datapath completes them
//!   for destinations without offloads. Sends take the same header, so the queue
//!   [`offloads`](PortQueue::offloads) and the kernel segments if the device must.
//! * Without `vnet_hdr`, a received frame whose `tp_status` says
//!   `TP_STATUS_CSUMNOTREADY` is still reported as `NEEDS_CSUM` (the checksum
//!   position is derived from its IPv4/TCP/UDP headers), but GSO frames cannot be
//!   described: use `vnet_hdr` for devices that do TSO.
//! * `TPACKET_V3` hands a block to user space when it is full or after
//!   `retire_tov_ms`: that timeout is the latency floor at low rates (1 ms here).
//! * A vanished interface shows as `ENXIO`/`ENODEV` on send, and on the socket's
//!   error (checked every [`GONE_CHECK_EVERY`] empty receives): [`PortError::Gone`].

use std::io::{self, IoSlice};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU16, AtomicU32, Ordering};

use crate::port::{PortError, PortQueue, VnetHdr};
use crate::sys;

/// Empty receives between two checks of the socket error (one syscall).
pub const GONE_CHECK_EVERY: u32 = 1024;

/// Offsets into a frame for the no-vnet partial-checksum fallback.
const ETH_HLEN: usize = 14;
const ETHERTYPE_IPV4: u16 = 0x0800;
const TCP_CSUM_OFFSET: u16 = 16;
const UDP_CSUM_OFFSET: u16 = 6;

/// Options of an AF_PACKET port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AfPacketConfig {
    /// `PACKET_VNET_HDR`: GSO and partial checksums described in a [`VnetHdr`].
    pub vnet_hdr: bool,
    /// Receive ring geometry; `block_size` bounds the largest frame.
    pub ring: sys::RingGeometry,
}

impl Default for AfPacketConfig {
    fn default() -> Self {
        AfPacketConfig {
            vnet_hdr: true,
            // 256 KiB blocks hold a 64 KiB super-frame several times over;
            // 16 blocks = 4 MiB per queue.
            ring: sys::RingGeometry {
                block_size: 1 << 18,
                block_nr: 16,
                retire_tov_ms: 1,
            },
        }
    }
}

/// Errors of opening an AF_PACKET port.
#[derive(Debug, thiserror::Error)]
pub enum AfPacketError {
    #[error("open AF_PACKET on {ifname:?}: zero queues requested")]
    NoQueues { ifname: String },
    #[error("look up interface {ifname:?}")]
    NoSuchInterface {
        ifname: String,
        #[source]
        source: io::Error,
    },
    /// A socket setup step failed; `op` names it.
    #[error("{op} on AF_PACKET socket for {ifname:?} queue {queue}")]
    Setup {
        op: &'static str,
        ifname: String,
        queue: usize,
        #[source]
        source: io::Error,
    },
}

/// One queue (socket + ring) of an AF_PACKET port.
pub struct AfPacketQueue {
    // Field order: the ring is unmapped before the socket closes.
    ring: sys::RxRing,
    fd: OwnedFd,
    name: String,
    ifindex: u32,
    vnet_hdr: bool,
    empty_polls: AtomicU32,
}

impl std::fmt::Debug for AfPacketQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AfPacketQueue")
            .field("name", &self.name)
            .field("ifindex", &self.ifindex)
            .field("fd", &self.fd.as_raw_fd())
            .field("vnet_hdr", &self.vnet_hdr)
            .finish()
    }
}

/// Fanout group ids handed out by this process (unique per interface is what
/// matters; the pid in the seed keeps two processes apart most of the time).
static NEXT_FANOUT_ID: AtomicU16 = AtomicU16::new(0);

/// Opens `queues` AF_PACKET queues on `ifname` with the default options.
pub fn open_afpacket(ifname: &str, queues: usize) -> Result<Vec<AfPacketQueue>, AfPacketError> {
    open_afpacket_with(ifname, queues, AfPacketConfig::default())
}

/// Opens `queues` AF_PACKET queues on `ifname` (in the calling thread's
/// namespace) with `cfg`.
pub fn open_afpacket_with(
    ifname: &str,
    queues: usize,
    cfg: AfPacketConfig,
) -> Result<Vec<AfPacketQueue>, AfPacketError> {
    if queues == 0 {
        return Err(AfPacketError::NoQueues {
            ifname: ifname.to_owned(),
        });
    }
    let ifindex = sys::IfCtl::new()
        .and_then(|c| c.ifindex(ifname))
        .map_err(|source| AfPacketError::NoSuchInterface {
            ifname: ifname.to_owned(),
            source,
        })?;
    let fanout_id = if queues > 1 {
        let n = NEXT_FANOUT_ID.fetch_add(1, Ordering::Relaxed);
        Some(
            (std::process::id() as u16)
                .wrapping_mul(251)
                .wrapping_add(n),
        )
    } else {
        None
    };
    (0..queues)
        .map(|queue| open_one(ifname, ifindex, queue, cfg, fanout_id))
        .collect()
}

fn open_one(
    ifname: &str,
    ifindex: u32,
    queue: usize,
    cfg: AfPacketConfig,
    fanout_id: Option<u16>,
) -> Result<AfPacketQueue, AfPacketError> {
    let err = |op, source| AfPacketError::Setup {
        op,
        ifname: ifname.to_owned(),
        queue,
        source,
    };
    let fd = sys::packet_socket().map_err(|e| err("socket(AF_PACKET)", e))?;
    sys::packet_set_version_v3(fd.as_fd()).map_err(|e| err("PACKET_VERSION TPACKET_V3", e))?;
    if cfg.vnet_hdr {
        sys::packet_set_vnet_hdr(fd.as_fd(), true).map_err(|e| err("PACKET_VNET_HDR", e))?;
    }
    let ring = sys::RxRing::new(fd.as_fd(), cfg.ring, cfg.vnet_hdr)
        .map_err(|e| err("PACKET_RX_RING + mmap", e))?;
    sys::packet_set_ignore_outgoing(fd.as_fd()).map_err(|e| err("PACKET_IGNORE_OUTGOING", e))?;
    sys::packet_bind(fd.as_fd(), ifindex).map_err(|e| err("bind", e))?;
    if let Some(id) = fanout_id {
        sys::packet_set_fanout(
            fd.as_fd(),
            id,
            sys::PACKET_FANOUT_HASH | sys::PACKET_FANOUT_FLAG_DEFRAG,
        )
        .map_err(|e| err("PACKET_FANOUT", e))?;
    }
    Ok(AfPacketQueue {
        ring,
        fd,
        name: ifname.to_owned(),
        ifindex,
        vnet_hdr: cfg.vnet_hdr,
        empty_polls: AtomicU32::new(0),
    })
}

/// The checksum position of a partial-checksum IPv4 TCP/UDP frame, derived from
/// its headers (for frames received without a virtio-net header).
fn partial_csum_hdr(frame: &[u8]) -> Option<VnetHdr> {
    if frame.len() < ETH_HLEN + 20 || u16::from_be_bytes([frame[12], frame[13]]) != ETHERTYPE_IPV4 {
        return None;
    }
    let ihl = usize::from(frame[ETH_HLEN] & 0x0f) * 4;
    let csum_offset = match frame[ETH_HLEN + 9] {
        ip_proto::TCP => TCP_CSUM_OFFSET,
        ip_proto::UDP => UDP_CSUM_OFFSET,
        _ => return None,
    };
    let csum_start = u16::try_from(ETH_HLEN + ihl).ok()?;
    if ihl < 20 || usize::from(csum_start + csum_offset) + 2 > frame.len() {
        return None;
    }
    Some(VnetHdr {
        flags: VnetHdr::F_NEEDS_CSUM,
        csum_start,
        csum_offset,
        ..VnetHdr::default()
    })
}

/// IP protocol numbers (the same as `filter::proto`, kept local so this module
/// only depends on the port contract).
mod ip_proto {
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
}

impl AfPacketQueue {
    /// The interface name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The interface index (in the namespace the socket was opened in).
    pub fn ifindex(&self) -> u32 {
        self.ifindex
    }

    fn err(&self, e: io::Error) -> PortError {
        if matches!(e.raw_os_error(), Some(libc::ENXIO) | Some(libc::ENODEV)) {
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

    /// Every [`GONE_CHECK_EVERY`] empty receives: has the interface vanished?
    fn check_gone(&self) -> Result<(), PortError> {
        let n = self.empty_polls.fetch_add(1, Ordering::Relaxed);
        if n % GONE_CHECK_EVERY != GONE_CHECK_EVERY - 1 {
            return Ok(());
        }
        if let Ok(Some(e)) = sys::socket_take_error(self.fd.as_fd()) {
            // ENETDOWN is set both when the device goes down and when it is
            // unregistered: tell them apart by asking for it by index.
            if e.raw_os_error() != Some(libc::ENETDOWN) {
                return Err(PortError::Io {
                    port: self.name.clone(),
                    source: e,
                });
            }
        }
        match sys::ifindex_to_name(self.fd.as_fd(), self.ifindex) {
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENODEV) | Some(libc::ENXIO)) => {
                Err(PortError::Gone {
                    port: self.name.clone(),
                    source: e,
                })
            }
            _ => Ok(()),
        }
    }
}

impl PortQueue for AfPacketQueue {
    fn recv(&self, buf: &mut [u8]) -> Result<Option<(usize, VnetHdr)>, PortError> {
        let Some(f) = self.ring.recv_into(buf) else {
            self.check_gone()?;
            return Ok(None);
        };
        if f.len < f.wire_len {
            return Err(PortError::Io {
                port: self.name.clone(),
                source: io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("frame of {} bytes truncated to {}", f.wire_len, f.len),
                ),
            });
        }
        let vnet = match f.vnet {
            Some(h) => VnetHdr::decode(&h),
            None if f.status & sys::TP_STATUS_CSUMNOTREADY != 0 => {
                partial_csum_hdr(&buf[..f.len]).unwrap_or_default()
            }
            // The kernel verified the checksum: say so, as a virtio header would.
            None if f.status & sys::TP_STATUS_CSUM_VALID != 0 => VnetHdr {
                flags: VnetHdr::F_DATA_VALID,
                ..VnetHdr::default()
            },
            None => VnetHdr::default(),
        };
        Ok(Some((f.len, vnet)))
    }

    fn send(&self, frame: &[u8], vnet: &VnetHdr) -> Result<(), PortError> {
        let res = if self.vnet_hdr {
            let hdr = vnet.encode();
            sys::writev(self.fd.as_fd(), &[IoSlice::new(&hdr), IoSlice::new(frame)])
        } else if vnet.is_plain() {
            sys::write(self.fd.as_fd(), frame)
        } else {
            Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "offload frame sent to an AF_PACKET queue without vnet header",
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

    /// Ethernet + IPv4 (ihl 5) + the first bytes of a TCP or UDP header.
    fn frame(proto: u8) -> Vec<u8> {
        let mut f = vec![0u8; ETH_HLEN + 20 + 20];
        f[12..14].copy_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
        f[ETH_HLEN] = 0x45;
        f[ETH_HLEN + 9] = proto;
        f
    }

    #[test]
    fn partial_checksum_position_from_headers() {
        let h = partial_csum_hdr(&frame(6)).unwrap();
        assert_eq!(
            (h.flags, h.csum_start, h.csum_offset),
            (VnetHdr::F_NEEDS_CSUM, 34, 16)
        );
        let h = partial_csum_hdr(&frame(17)).unwrap();
        assert_eq!((h.csum_start, h.csum_offset), (34, 6));
        assert_eq!(
            partial_csum_hdr(&frame(1)),
            None,
            "ICMP has no offloaded checksum"
        );
        let mut arp = frame(6);
        arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
        assert_eq!(partial_csum_hdr(&arp), None);
        assert_eq!(
            partial_csum_hdr(&frame(6)[..40]),
            None,
            "TCP checksum field beyond the frame"
        );
    }

    #[test]
    fn default_ring_holds_a_64k_frame() {
        let c = AfPacketConfig::default();
        assert!(c.vnet_hdr);
        assert!(c.ring.block_size as usize >= 65536 + 2 * 4096);
    }

    #[test]
    fn zero_queues_and_unknown_interface_are_errors() {
        assert!(matches!(
            open_afpacket("lo", 0),
            Err(AfPacketError::NoQueues { .. })
        ));
        let e = open_afpacket("sgnosuchif0", 1).unwrap_err();
        assert!(matches!(e, AfPacketError::NoSuchInterface { .. }), "{e}");
        assert!(e.to_string().contains("sgnosuchif0"));
    }
}
