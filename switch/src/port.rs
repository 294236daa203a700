//! Ports: the one small trait every kind of port implements.
//!
//! A *port* is one attachment point of the switch (an instance's TAP, a QEMU
//! guest's TAP seen through AF_PACKET, the uplink, an in-memory pipe in tests).
//! A port has one [`PortQueue`] per worker: worker `w` only ever reads and writes
//! queue `w` of every port, so the fast path needs no lock (TAP multi-queue gives
//! each worker its own fd; AF_PACKET and in-memory ports do the same with one
//! socket/ring per worker).
//!
//! Frames cross the trait with an optional [`VnetHdr`] (the virtio-net header of
//! `IFF_VNET_HDR` TAPs): `gso_type != NONE` means a TSO super-frame (up to 64 KiB),
//! `flags & NEEDS_CSUM` means a partial checksum the receiver must complete.

use std::io;
use std::os::fd::RawFd;

/// The virtio-net header (`struct virtio_net_hdr`, 10 bytes, host byte order as
/// the TAP uses it on little-endian hosts with `TUNSETVNETLE` unset... see sys).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VnetHdr {
    pub flags: u8,
    pub gso_type: u8,
    pub hdr_len: u16,
    pub gso_size: u16,
    pub csum_start: u16,
    pub csum_offset: u16,
}

impl VnetHdr {
    pub const LEN: usize = 10;
    pub const F_NEEDS_CSUM: u8 = 1;
    pub const F_DATA_VALID: u8 = 2;
    pub const GSO_NONE: u8 = 0;
    pub const GSO_TCPV4: u8 = 1;
    pub const GSO_UDP: u8 = 3;
    pub const GSO_TCPV6: u8 = 4;
    pub const GSO_UDP_L4: u8 = 5;
    pub const GSO_ECN: u8 = 0x80;

    /// The header of an untagged IPv4 TCP super-frame with 20-byte IP and TCP
    /// headers (no options), cut at `mss`, its TCP checksum partial: what a
    /// virtio-net guest or a kernel TAP hands over with TSO.
    pub fn tso4(mss: u16) -> VnetHdr {
        VnetHdr {
            flags: VnetHdr::F_NEEDS_CSUM,
            gso_type: VnetHdr::GSO_TCPV4,
            hdr_len: 54,
            gso_size: mss,
            csum_start: 34,
            csum_offset: 16,
        }
    }

    /// Decode from the first 10 bytes (little-endian fields).
    pub fn decode(b: &[u8; Self::LEN]) -> VnetHdr {
        VnetHdr {
            flags: b[0],
            gso_type: b[1],
            hdr_len: u16::from_le_bytes([b[2], b[3]]),
            gso_size: u16::from_le_bytes([b[4], b[5]]),
            csum_start: u16::from_le_bytes([b[6], b[7]]),
            csum_offset: u16::from_le_bytes([b[8], b[9]]),
        }
    }

    /// Encode into 10 bytes (little-endian fields).
    pub fn encode(&self) -> [u8; Self::LEN] {
        let mut b = [0u8; Self::LEN];
        b[0] = self.flags;
        b[1] = self.gso_type;
        b[2..4].copy_from_slice(&self.hdr_len.to_le_bytes());
        b[4..6].copy_from_slice(&self.gso_size.to_le_bytes());
        b[6..8].copy_from_slice(&self.csum_start.to_le_bytes());
        b[8..10].copy_from_slice(&self.csum_offset.to_le_bytes());
        b
    }

    /// A plain frame: no offload work pending.
    pub fn is_plain(&self) -> bool {
        self.gso_type == Self::GSO_NONE && self.flags & Self::F_NEEDS_CSUM == 0
    }
}

/// Errors of a port queue.
#[derive(Debug, thiserror::Error)]
pub enum PortError {
    /// The netdev behind the port has disappeared (namespace deleted, interface
    /// removed: `EBADFD`, `ENODEV`, `ENXIO`). The port must be removed.
    #[error("port {port} is gone: {source}")]
    Gone {
        port: String,
        #[source]
        source: io::Error,
    },
    /// Any other I/O error (the frame is dropped, the port stays).
    #[error("i/o on port {port}: {source}")]
    Io {
        port: String,
        #[source]
        source: io::Error,
    },
}

/// One worker's queue of one port. Implementations must be cheap to call per frame
/// (no allocation, no lock) and non-blocking.
pub trait PortQueue: Send + Sync {
    /// Read one frame into `buf` (which is at least 65550 bytes). Returns
    /// `Ok(None)` when nothing is waiting, else the frame length and its virtio
    /// header (`VnetHdr::default()` for ports without one).
    fn recv(&self, buf: &mut [u8]) -> Result<Option<(usize, VnetHdr)>, PortError>;

    /// Send one frame. `vnet` describes pending offload work; callers only pass a
    /// non-plain header to queues whose [`PortQueue::offloads`] say they take it.
    fn send(&self, frame: &[u8], vnet: &VnetHdr) -> Result<(), PortError>;

    /// Whether this queue takes TSO super-frames and partial checksums on send.
    fn offloads(&self) -> bool;

    /// An fd that polls readable when `recv` may return a frame (for epoll), if any.
    fn poll_fd(&self) -> Option<RawFd>;
}
