//! Whole TSO super-frames to other hosts: UDP-tunnel GSO through a TAP in the
//! host's namespace (Linux 6.16 and later, "GSO over UDP tunnel" in TUN/TAP).
//!
//! Contract:
//! * [`TunnelTx::open`] (at `Switch::start`, when `OverlayConfig::tunnel_gso` is
//!   set) makes a TAP `sgt<pid>-<n>` in the calling thread's network namespace
//!   (the host's), multi-queue with one queue per worker, with a 24-byte
//!   virtio-net header (`struct virtio_net_hdr_v1_hash_tunnel`: the size that
//!   tells the kernel we may send `VIRTIO_NET_HDR_GSO_UDP_TUNNEL_*`). On that
//!   interface only it sets `forwarding=1` (the frames we write are routed out
//!   of the underlay interface like any forwarded packet), `accept_local=1`
//!   (their source is this host's own underlay address) and `rp_filter=0`, and
//!   turns IPv6 off; it refuses (the caller keeps the socket path) when the
//!   namespace has strict reverse-path filtering for all interfaces
//!   (`net.ipv4.conf.all.rp_filter=1`), which would drop them.
//! * [`TunnelTx::send`] (worker `w` writes only to queue `w`: no lock) writes
//!   one TCP super-frame encapsulated whole — outer Ethernet (to the TAP's own
//!   MAC, so the kernel takes it as addressed to this host), IPv4 (DF, id 0),
//!   UDP (checksum zero, RFC 7348), VXLAN-GBP — behind a virtio-net header of
//!   type `GSO_UDP_TUNNEL_IPV4 | GSO_TCPV4` with the inner MSS and the inner
//!   TCP checksum left partial. One `writev`, no copy in user space: the kernel
//!   routes the packet to the peer's underlay address and segments it (outer
//!   headers replicated per segment) only where a device cannot carry it
//!   whole; over veth it crosses whole, as the kernel's own vxlan device does.
//! * The UDP source port is the underlay sockets' port, as on the socket path,
//!   so a flow's datagrams keep one 4-tuple whichever path they take (the
//!   receiver's `SO_REUSEPORT` hash keeps them on one worker, in order).
//! * `EINVAL` from the kernel (a kernel without tunnel GSO, or a header it
//!   does not accept) marks the TAP refused: [`TunnelTx::usable`] is false from
//!   then on and the caller cuts super-frames in user space as before (for
//!   that frame too). Other write errors fall back for that frame only.
//! * Closing the fds (dropping the `TunnelTx`) removes the TAP.

use std::io::{self, IoSlice};
use std::net::SocketAddrV4;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use crate::offload;
use crate::port::VnetHdr;
use crate::sys;
use crate::vxlan::{self, OVERHEAD, VXLAN_HDR_LEN};

/// `sizeof(struct virtio_net_hdr_v1_hash_tunnel)`: the 12-byte v1 header, the
/// 8-byte hash report, the 4-byte tunnel offsets (`TUN_VNET_TNL_SIZE`).
pub const TNL_VNET_HDR_LEN: usize = 24;
/// `VIRTIO_NET_HDR_F_NEEDS_CSUM`.
const F_NEEDS_CSUM: u8 = 1;
/// `VIRTIO_NET_HDR_GSO_TCPV4`.
const GSO_TCPV4: u8 = 1;
/// `VIRTIO_NET_HDR_GSO_UDP_TUNNEL_IPV4`: UDP over an IPv4 tunnel around the
/// inner GSO type.
pub const GSO_UDP_TUNNEL_IPV4: u8 = 0x20;
/// `VIRTIO_NET_HDR_GSO_ECN`.
const GSO_ECN: u8 = 0x80;
/// Offset of `outer_th_offset` in the header (after the hash report).
const TNL_OFFSETS_AT: usize = 20;
/// Source MAC of the frames we write (locally administered; only the TAP sees it).
const SRC_MAC: [u8; 6] = [0x02, 0x73, 0x67, 0x74, 0x6e, 0x6c];

/// Makes the TAP names of one process unique.
static NEXT: AtomicU32 = AtomicU32::new(0);

/// The UDP-tunnel GSO transmit path of one switch (see the module docs).
pub struct TunnelTx {
    name: String,
    queues: Box<[OwnedFd]>,
    mac: [u8; 6],
    refused: AtomicBool,
}

impl std::fmt::Debug for TunnelTx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TunnelTx")
            .field("name", &self.name)
            .field("queues", &self.queues.len())
            .field("refused", &self.refused.load(Ordering::Relaxed))
            .finish()
    }
}

/// Where a super-frame's headers are, for [`TunnelTx::send`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InnerTcp {
    /// Offset of the inner TCP header in the inner frame (14 + IPv4 header).
    pub l4: usize,
    /// Inner Ethernet + IPv4 + TCP header bytes.
    pub hdr_len: usize,
    /// Payload bytes per segment.
    pub mss: u16,
    /// The super-frame carries ECN (`GSO_ECN`: CWR on the first segment only).
    pub ecn: bool,
}

fn ctx(what: String) -> impl FnOnce(io::Error) -> io::Error {
    move |e| io::Error::new(e.kind(), format!("{what}: {e}"))
}

/// Writes `value` to `/proc/sys/net/<path>` of the calling thread's network
/// namespace.
fn sysctl(path: &str, value: &str) -> io::Result<()> {
    let full = format!("/proc/sys/net/{path}");
    std::fs::write(&full, value).map_err(ctx(format!("write {value} to {full}")))
}

impl TunnelTx {
    /// Makes the TAP and configures its interface (see the module docs).
    pub fn open(workers: usize) -> io::Result<TunnelTx> {
        let rp_all = std::fs::read_to_string("/proc/sys/net/ipv4/conf/all/rp_filter")
            .map_err(ctx("read net.ipv4.conf.all.rp_filter".into()))?;
        if rp_all.trim() == "1" {
            return Err(io::Error::other(
                "net.ipv4.conf.all.rp_filter=1 (strict) would drop frames written with \
                 this host's own source address",
            ));
        }
        let name = format!(
            "sgt{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let mut flags = sys::IFF_TAP | sys::IFF_NO_PI | sys::IFF_VNET_HDR;
        let mut queues = Vec::with_capacity(workers.max(1));
        for q in 0..workers.max(1) {
            let fd = sys::tun_open().map_err(ctx("open /dev/net/tun".into()))?;
            if q == 0 {
                let features =
                    sys::tun_features(fd.as_fd()).map_err(ctx("TUNGETFEATURES".into()))?;
                flags |= features & sys::IFF_MULTI_QUEUE;
                if workers > 1 && flags & sys::IFF_MULTI_QUEUE == 0 {
                    return Err(io::Error::other("TUN driver without IFF_MULTI_QUEUE"));
                }
            }
            sys::tun_set_iff(fd.as_fd(), &name, flags)
                .map_err(ctx(format!("TUNSETIFF {name} queue {q}")))?;
            sys::tun_set_vnet_hdr_sz(fd.as_fd(), TNL_VNET_HDR_LEN as i32)
                .map_err(ctx(format!("TUNSETVNETHDRSZ {TNL_VNET_HDR_LEN} on {name}")))?;
            sys::tun_set_vnet_le(fd.as_fd(), true)
                .map_err(ctx(format!("TUNSETVNETLE on {name}")))?;
            queues.push(fd);
        }
        // IPv6 off first (no link-local address, no solicitations queued on a
        // TAP nobody reads); best effort: IPv6 may be disabled altogether.
        let _ = sysctl(&format!("ipv6/conf/{name}/disable_ipv6"), "1");
        sysctl(&format!("ipv4/conf/{name}/forwarding"), "1")?;
        sysctl(&format!("ipv4/conf/{name}/accept_local"), "1")?;
        sysctl(&format!("ipv4/conf/{name}/rp_filter"), "0")?;
        let ifc = sys::IfCtl::new().map_err(ctx("ioctl socket".into()))?;
        // Frames up to 64 KiB come in; best effort (input does not check it).
        let _ = ifc.set_mtu(&name, 65_535);
        let mac = ifc.mac(&name).map_err(ctx(format!("MAC of {name}")))?;
        ifc.set_up(&name, true)
            .map_err(ctx(format!("set {name} up")))?;
        Ok(TunnelTx {
            name,
            queues: queues.into_boxed_slice(),
            mac,
            refused: AtomicBool::new(false),
        })
    }

    /// The TAP's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// False once the kernel refused a tunnel GSO frame.
    #[inline]
    pub fn usable(&self) -> bool {
        !self.refused.load(Ordering::Relaxed)
    }

    /// Sends `frame` (an inner TCP super-frame, checksum partial) from `src`
    /// to `dst` with VXLAN header `vx`, on queue `w`. Returns the bytes
    /// written. See the module docs for the errors.
    pub fn send(
        &self,
        w: usize,
        src: SocketAddrV4,
        dst: SocketAddrV4,
        vx: &[u8; VXLAN_HDR_LEN],
        frame: &[u8],
        t: InnerTcp,
    ) -> io::Result<usize> {
        let mut h = [0u8; TNL_VNET_HDR_LEN + OVERHEAD];
        write_headers(&mut h, self.mac, src, dst, vx, frame.len(), t)?;
        let q = self
            .queues
            .get(w)
            .ok_or_else(|| io::Error::other(format!("no tunnel queue for worker {w}")))?;
        match sys::writev(q.as_fd(), &[IoSlice::new(&h), IoSlice::new(frame)]) {
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                self.refused.store(true, Ordering::Relaxed);
                Err(e)
            }
            r => r,
        }
    }
}

/// Writes into `h` the virtio-net tunnel header and the 50 bytes of outer
/// Ethernet, IPv4, UDP and VXLAN for an inner frame of `inner_len` bytes.
/// Errors: an inner frame the outer IPv4 length cannot hold, or offsets that
/// do not fit the header's 16-bit fields.
pub fn write_headers(
    h: &mut [u8; TNL_VNET_HDR_LEN + OVERHEAD],
    tap_mac: [u8; 6],
    src: SocketAddrV4,
    dst: SocketAddrV4,
    vx: &[u8; VXLAN_HDR_LEN],
    inner_len: usize,
    t: InnerTcp,
) -> io::Result<()> {
    let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidInput, what.to_owned());
    let udp_len = 8 + VXLAN_HDR_LEN + inner_len;
    let total = u16::try_from(20 + udp_len).map_err(|_| bad("inner frame too long"))?;
    if t.l4 < 34 || t.hdr_len < t.l4 + 20 || t.hdr_len >= inner_len || t.mss == 0 {
        return Err(bad("inner TCP headers"));
    }
    // virtio_net_hdr_v1, little-endian.
    h[0] = F_NEEDS_CSUM;
    h[1] = GSO_UDP_TUNNEL_IPV4 | GSO_TCPV4 | if t.ecn { GSO_ECN } else { 0 };
    let le = |h: &mut [u8], at: usize, v: usize| {
        h[at..at + 2].copy_from_slice(&(v as u16).to_le_bytes());
    };
    le(h, 2, OVERHEAD + t.hdr_len); // hdr_len
    le(h, 4, usize::from(t.mss)); // gso_size
    le(h, 6, OVERHEAD + t.l4); // csum_start: the inner TCP header
    le(h, 8, 16); // csum_offset: the TCP checksum
    // num_buffers (10..12), hash_value, hash_report, padding (12..20): zero.
    le(h, TNL_OFFSETS_AT, 14 + 20); // outer_th_offset: the outer UDP header
    le(h, TNL_OFFSETS_AT + 2, OVERHEAD + 14); // inner_nh_offset: the inner IPv4 header
    let o = &mut h[TNL_VNET_HDR_LEN..];
    o[0..6].copy_from_slice(&tap_mac);
    o[6..12].copy_from_slice(&SRC_MAC);
    o[12..14].copy_from_slice(&[0x08, 0x00]);
    let ip = &mut o[14..34];
    ip[0] = 0x45;
    ip[1] = 0;
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip[4..6].copy_from_slice(&[0, 0]);
    ip[6..8].copy_from_slice(&0x4000u16.to_be_bytes()); // DF
    // One more than the socket path's 64: forwarding out of the TAP takes one.
    ip[8] = 65;
    ip[9] = 17;
    ip[10..12].copy_from_slice(&[0, 0]);
    ip[12..16].copy_from_slice(&src.ip().octets());
    ip[16..20].copy_from_slice(&dst.ip().octets());
    let c = offload::checksum(ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let udp = &mut o[34..42];
    udp[0..2].copy_from_slice(&src.port().to_be_bytes());
    udp[2..4].copy_from_slice(&dst.port().to_be_bytes());
    udp[4..6].copy_from_slice(&(udp_len as u16).to_be_bytes());
    udp[6..8].copy_from_slice(&[0, 0]);
    o[42..50].copy_from_slice(vx);
    Ok(())
}

/// The inner headers of a TCP super-frame that can go whole (see
/// `overlay::send_whole`), with the MSS: the sender's, or less to fit `max`
/// (the largest inner frame the underlay carries). `None` also for a
/// super-frame that fits the underlay as it is (a small MSS): it would arrive
/// as a plain datagram whose inner checksum is still partial, and the
/// receiver (`whole_vnet`) only recognises datagrams larger than `max` as
/// whole; it is cut instead.
pub fn whole_tcp(frame: &[u8], vnet: &VnetHdr, max: usize) -> Option<InnerTcp> {
    if frame.get(12..14)? != [0x08, 0x00] || frame.len() > vxlan::MAX_INNER || frame.len() <= max {
        return None;
    }
    let ip = frame.get(14..34)?;
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let l4 = 14 + ihl;
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    if ip[0] >> 4 != 4 || ihl < 20 || ip[9] != filter::proto::TCP || 14 + total != frame.len() {
        return None;
    }
    let hdr_len = l4 + usize::from(frame.get(l4 + 12)? >> 4) * 4;
    if vnet.flags & VnetHdr::F_NEEDS_CSUM == 0
        || usize::from(vnet.csum_start) != l4
        || vnet.csum_offset != 16
        || hdr_len < l4 + 20
        || hdr_len >= frame.len()
    {
        return None;
    }
    let mss = usize::from(vnet.gso_size).min(max.checked_sub(hdr_len)?);
    Some(InnerTcp {
        l4,
        hdr_len,
        mss: u16::try_from(mss).ok().filter(|&m| m > 0)?,
        ecn: vnet.gso_type & VnetHdr::GSO_ECN != 0,
    })
}

/// The virtio-net header for an inner TCP super-frame received whole (a frame
/// larger than `max`, the largest inner frame the underlay carries): its TCP
/// checksum is still partial (no kernel segmented it on the way), so it goes
/// on as `GSO_TCPV4` with `NEEDS_CSUM` and the MSS a sender over this underlay
/// uses (a port without offloads gets it cut, checksums completed, by
/// `pipeline::transmit`). `None` for anything else (delivered as it came).
pub fn whole_vnet(frame: &[u8], max: usize) -> Option<VnetHdr> {
    let ip = frame.get(14..34)?;
    let l4 = 14 + usize::from(ip[0] & 0x0f) * 4;
    if ip[9] != filter::proto::TCP || u16::from_be_bytes([ip[6], ip[7]]) & 0x3fff != 0 {
        return None;
    }
    let hdr_len = l4 + usize::from(frame.get(l4 + 12)? >> 4) * 4;
    if hdr_len < l4 + 20 || hdr_len >= frame.len() {
        return None;
    }
    let mss = max.checked_sub(hdr_len).filter(|&m| m > 0)?;
    Some(VnetHdr {
        flags: VnetHdr::F_NEEDS_CSUM,
        gso_type: VnetHdr::GSO_TCPV4,
        hdr_len: hdr_len as u16,
        gso_size: u16::try_from(mss).ok()?,
        csum_start: l4 as u16,
        csum_offset: 16,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    #[test]
    fn header_describes_the_tunnel_for_the_kernel() {
        let mut h = [0u8; TNL_VNET_HDR_LEN + OVERHEAD];
        let src = SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 1), 4789);
        let dst = SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 2), 4789);
        let vx = [0x88, 0x40, 0x12, 0x34, 0, 0, 42, 0];
        let t = InnerTcp {
            l4: 34,
            hdr_len: 66,
            mss: 1398,
            ecn: false,
        };
        let mac = [2, 0, 0, 0, 0, 9];
        write_headers(&mut h, mac, src, dst, &vx, 60_066, t).unwrap();
        let u16le = |at: usize| u16::from_le_bytes([h[at], h[at + 1]]);
        assert_eq!(h[0], F_NEEDS_CSUM);
        assert_eq!(h[1], 0x21, "GSO_UDP_TUNNEL_IPV4 | GSO_TCPV4");
        assert_eq!(u16le(2), 50 + 66, "hdr_len through the inner TCP header");
        assert_eq!(u16le(4), 1398, "gso_size = inner MSS");
        assert_eq!(u16le(6), 50 + 34, "csum_start = inner TCP header");
        assert_eq!(u16le(8), 16);
        assert_eq!(u16le(20), 34, "outer_th_offset = outer UDP header");
        assert_eq!(u16le(22), 64, "inner_nh_offset = inner IPv4 header");
        let o = &h[TNL_VNET_HDR_LEN..];
        assert_eq!(&o[0..6], &mac, "addressed to the TAP itself");
        let ip = &o[14..34];
        assert_eq!(u16::from_be_bytes([ip[2], ip[3]]), 20 + 8 + 8 + 60_066);
        assert_eq!(ip[6] & 0x40, 0x40, "DF");
        assert_eq!(ip[9], 17);
        assert_eq!(offload::checksum(ip), 0, "valid outer IPv4 checksum");
        assert_eq!(&ip[12..16], &[198, 18, 0, 1]);
        assert_eq!(&ip[16..20], &[198, 18, 0, 2]);
        let udp = &o[34..42];
        assert_eq!(u16::from_be_bytes([udp[0], udp[1]]), 4789);
        assert_eq!(u16::from_be_bytes([udp[2], udp[3]]), 4789);
        assert_eq!(u16::from_be_bytes([udp[4], udp[5]]), 8 + 8 + 60_066);
        assert_eq!(&udp[6..8], &[0, 0], "no outer UDP checksum");
        assert_eq!(&o[42..50], &vx);
        let ecn = InnerTcp { ecn: true, ..t };
        write_headers(&mut h, mac, src, dst, &vx, 60_066, ecn).unwrap();
        assert_eq!(h[1], 0xa1);
    }

    /// An untagged IPv4/TCP frame with `payload` bytes, TCP header without options.
    fn tcp_frame(payload: usize) -> Vec<u8> {
        let mut f = vec![0u8; 54 + payload];
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        f[14] = 0x45;
        f[16..18].copy_from_slice(&((40 + payload) as u16).to_be_bytes());
        f[22] = 64;
        f[23] = 6;
        f[26..30].copy_from_slice(&[172, 31, 0, 11]);
        f[30..34].copy_from_slice(&[172, 31, 0, 12]);
        f[46] = 5 << 4;
        f[47] = 0x10; // ACK
        f
    }

    #[test]
    fn which_super_frames_go_whole() {
        let f = tcp_frame(60_000);
        // The sender's MSS, or less to fit the underlay (1464-byte inner frames).
        let t = whole_tcp(&f, &VnetHdr::tso4(1448), 1464).expect("a TSO frame goes whole");
        assert_eq!((t.l4, t.hdr_len, t.mss, t.ecn), (34, 54, 1410, false));
        let t = whole_tcp(&f, &VnetHdr::tso4(1000), 1464).unwrap();
        assert_eq!(t.mss, 1000);
        let ecn = VnetHdr {
            gso_type: VnetHdr::GSO_TCPV4 | VnetHdr::GSO_ECN,
            ..VnetHdr::tso4(1448)
        };
        assert!(whole_tcp(&f, &ecn, 1464).unwrap().ecn);
        // Not whole: checksum not partial at the TCP header, UDP, a length
        // that disagrees with the frame, too long for one outer IPv4 packet.
        let complete = VnetHdr {
            flags: 0,
            ..VnetHdr::tso4(1448)
        };
        assert_eq!(whole_tcp(&f, &complete, 1464), None);
        let elsewhere = VnetHdr {
            csum_start: 20,
            ..VnetHdr::tso4(1448)
        };
        assert_eq!(whole_tcp(&f, &elsewhere, 1464), None);
        let mut udp = f.clone();
        udp[23] = 17;
        assert_eq!(whole_tcp(&udp, &VnetHdr::tso4(1448), 1464), None);
        let mut short = f.clone();
        short[16..18].copy_from_slice(&1000u16.to_be_bytes());
        assert_eq!(whole_tcp(&short, &VnetHdr::tso4(1448), 1464), None);
        let long = tcp_frame(vxlan::MAX_INNER - 53);
        assert_eq!(whole_tcp(&long, &VnetHdr::tso4(1448), 1464), None);
        let fits = tcp_frame(vxlan::MAX_INNER - 54);
        assert!(whole_tcp(&fits, &VnetHdr::tso4(1448), 1464).is_some());
        // Two 500-byte segments fit the underlay as one datagram: a receiver
        // could not tell it from a plain frame (checksum still partial), so it
        // is cut, not sent whole.
        let small = tcp_frame(1000);
        assert_eq!(whole_tcp(&small, &VnetHdr::tso4(500), 1464), None);
        assert!(whole_tcp(&tcp_frame(1464 - 54 + 1), &VnetHdr::tso4(500), 1464).is_some());
    }

    #[test]
    fn a_super_frame_received_whole_goes_on_as_one_gso_frame() {
        let f = tcp_frame(60_000);
        let v = whole_vnet(&f, 1464).expect("TCP");
        assert_eq!(v.flags, VnetHdr::F_NEEDS_CSUM, "checksum left partial");
        assert_eq!(v.gso_type, VnetHdr::GSO_TCPV4);
        assert_eq!((v.hdr_len, v.gso_size), (54, 1410));
        assert_eq!((v.csum_start, v.csum_offset), (34, 16));
        let mut udp = f.clone();
        udp[23] = 17;
        assert_eq!(whole_vnet(&udp, 1464), None, "not TCP: as it came");
        let mut frag = f.clone();
        frag[20] = 0x20; // MF
        assert_eq!(whole_vnet(&frag, 1464), None, "a fragment: as it came");
    }

    #[test]
    fn header_refuses_what_it_cannot_describe() {
        let mut h = [0u8; TNL_VNET_HDR_LEN + OVERHEAD];
        let a = SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 1), 4789);
        let vx = [0u8; 8];
        let t = InnerTcp {
            l4: 34,
            hdr_len: 54,
            mss: 1398,
            ecn: false,
        };
        // Outer IPv4 total length past 65 535.
        assert!(write_headers(&mut h, [0; 6], a, a, &vx, 65_500, t).is_err());
        assert!(write_headers(&mut h, [0; 6], a, a, &vx, 65_499, t).is_ok());
        assert!(
            write_headers(&mut h, [0; 6], a, a, &vx, 54, t).is_err(),
            "no payload"
        );
        let zero = InnerTcp { mss: 0, ..t };
        assert!(write_headers(&mut h, [0; 6], a, a, &vx, 9000, zero).is_err());
    }
}
