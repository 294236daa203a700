//! Offload completion: checksums and software TCP segmentation (TSO) for frames
//! that carry pending virtio-net offload work ([`VnetHdr`]) on their way to a
//! queue that cannot take it.
//!
//! Contract:
//! * Between two queues that both have offloads the datapath passes the frame and
//!   its header through unchanged; this module is only used towards a queue whose
//!   [`crate::port::PortQueue::offloads`] is false.
//! * [`complete_csum`] finishes a `NEEDS_CSUM` frame in place, exactly as the
//!   virtio spec says: the 16-bit field at `csum_start + csum_offset` already holds
//!   the pseudo-header sum, the ones' complement sum from `csum_start` to the end
//!   of the frame is folded into it.
//! * [`segment_tcpv4`] cuts a `GSO_TCPV4` super-frame into frames of at most
//!   `gso_size` payload bytes, each with its own IPv4 total length, id (the super-
//!   frame's id + segment index, as Linux does), IPv4 header checksum, TCP sequence
//!   number, flags (CWR only on the first, FIN/PSH only on the last) and a full TCP
//!   checksum. Headers are taken from the frame (IPv4 IHL, TCP data offset), never
//!   from the untrusted `hdr_len`. Each segment is built in the caller's buffer and
//!   handed to a callback: no allocation.
//! * [`segment_udp4`] does the same for `GSO_UDP_L4` (USO) super-frames: one UDP
//!   datagram per `gso_size` bytes of payload, each with its own UDP length and
//!   checksum and IPv4 length, id and checksum.
//! * IPv6: [`segment_tcpv6`] (`GSO_TCPV6`, TSO6) and [`segment_udp6`]
//!   (`GSO_UDP_L4` over IPv6) cut the same way; each segment gets its own IPv6
//!   payload length (IPv6 has no header checksum and no id) and an L4 checksum
//!   over the IPv6 pseudo-header (RFC 8200 §8.1: addresses, 32-bit upper-layer
//!   length, next header; a UDP checksum of 0 is sent as `0xffff`, since 0 means
//!   "none", which IPv6 forbids). The TCP or UDP header must follow the fixed
//!   IPv6 header directly: a super-frame with extension headers is refused
//!   (Linux does not build one for plain TCP/UDP sockets). [`complete_csum`] is
//!   family-blind: the sender's partial sum already covers the pseudo-header.
//!   [`segment`] dispatches on the type (and, for `GSO_UDP_L4`, on the frame's
//!   IP version).
//! * Every malformed input is an [`OffloadError`], never a panic.

use crate::port::VnetHdr;

/// Why pending offload work could not be completed. Tiny and `Copy`: it is
/// reported on the hot path (counted as [`filter::DropReason::TxFailed`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OffloadError {
    /// `csum_start + csum_offset + 2` lies beyond the frame.
    #[error("checksum offsets {start}+{offset} beyond frame of {len} bytes")]
    CsumOutOfRange { start: u16, offset: u16, len: usize },
    /// The frame is not Ethernet/IPv4/TCP with complete headers.
    #[error("GSO frame is not a well-formed untagged or tagged IPv4/TCP frame")]
    NotTcpV4,
    /// The frame is not Ethernet/IPv4/UDP with complete headers.
    #[error("GSO frame is not a well-formed untagged or tagged IPv4/UDP frame")]
    NotUdpV4,
    /// The frame is not Ethernet/IPv6/TCP (TCP right after the fixed header)
    /// with complete headers.
    #[error("GSO frame is not a well-formed untagged or tagged IPv6/TCP frame")]
    NotTcpV6,
    /// The frame is not Ethernet/IPv6/UDP (UDP right after the fixed header)
    /// with complete headers.
    #[error("GSO frame is not a well-formed untagged or tagged IPv6/UDP frame")]
    NotUdpV6,
    /// `gso_size` is 0.
    #[error("GSO frame with gso_size 0")]
    ZeroMss,
    /// A GSO type this module does not segment (UFO).
    #[error("GSO type {0:#x} is not supported for software segmentation")]
    UnsupportedGso(u8),
    /// The output buffer cannot hold one segment.
    #[error("segment of {need} bytes does not fit the {have}-byte buffer")]
    BufferTooSmall { need: usize, have: usize },
}

/// Ones' complement sum of `data` (as big-endian 16-bit words, odd byte padded)
/// added to `initial`, not folded.
#[inline]
pub fn sum(data: &[u8], initial: u64) -> u64 {
    let mut acc = initial;
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        acc += u64::from(u32::from_be_bytes([c[0], c[1], c[2], c[3]]));
    }
    let rest = chunks.remainder();
    let mut i = 0;
    while i + 1 < rest.len() {
        acc += u64::from(u16::from_be_bytes([rest[i], rest[i + 1]]));
        i += 2;
    }
    if i < rest.len() {
        acc += u64::from(rest[i]) << 8;
    }
    acc
}

/// Fold a 64-bit accumulator into a 16-bit ones' complement sum (not inverted).
#[inline]
pub fn fold(mut acc: u64) -> u16 {
    while acc >> 16 != 0 {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// The Internet checksum (RFC 1071) of `data`: the inverted folded sum.
#[inline]
pub fn checksum(data: &[u8]) -> u16 {
    !fold(sum(data, 0))
}

/// Complete a `NEEDS_CSUM` partial checksum in place (see the module docs).
pub fn complete_csum(frame: &mut [u8], vnet: &VnetHdr) -> Result<(), OffloadError> {
    let start = usize::from(vnet.csum_start);
    let field = start + usize::from(vnet.csum_offset);
    if field + 2 > frame.len() || start > frame.len() {
        return Err(OffloadError::CsumOutOfRange {
            start: vnet.csum_start,
            offset: vnet.csum_offset,
            len: frame.len(),
        });
    }
    // The field holds the pseudo-header sum; it is part of the summed range.
    let c = !fold(sum(&frame[start..], 0));
    frame[field..field + 2].copy_from_slice(&c.to_be_bytes());
    Ok(())
}

/// Header layout of a TCP/IPv4 or TCP/IPv6 frame, found by reading the frame
/// itself.
#[derive(Clone, Copy, Debug)]
struct TcpLayout {
    l3: usize,
    l4: usize,
    payload: usize,
    /// End of the IP packet (`l3` + IPv4 total length or 40 + IPv6 payload
    /// length, or the frame end when that length is 0 or too large, as some
    /// stacks send for super-frames).
    end: usize,
    /// An IPv6 frame.
    v6: bool,
}

/// Offset of the IPv6 header of an untagged or tagged IPv6 frame whose fixed
/// header is complete, with version 6 and next header `next`.
fn ipv6_l3(frame: &[u8], next: u8) -> Option<usize> {
    let ethertype = u16::from_be_bytes([*frame.get(12)?, *frame.get(13)?]);
    let l3 = match ethertype {
        0x86dd => 14,
        0x8100 if frame.get(16..18) == Some(&[0x86, 0xdd]) => 18,
        _ => return None,
    };
    let ip = frame.get(l3..l3 + 40)?;
    (ip[0] >> 4 == 6 && ip[6] == next).then_some(l3)
}

/// End of the IPv6 packet at `l3` whose headers take `hdrs` bytes after the
/// fixed header: by its payload length, or the frame end when the payload
/// length is too small for the headers or beyond the frame (see
/// [`TcpLayout::end`]).
fn ipv6_end(frame: &[u8], l3: usize, hdrs: usize) -> usize {
    let plen = usize::from(u16::from_be_bytes([frame[l3 + 4], frame[l3 + 5]]));
    if plen >= hdrs && l3 + 40 + plen <= frame.len() {
        l3 + 40 + plen
    } else {
        frame.len()
    }
}

fn tcpv6_layout(frame: &[u8]) -> Result<TcpLayout, OffloadError> {
    let bad = OffloadError::NotTcpV6;
    let l3 = ipv6_l3(frame, filter::proto::TCP).ok_or(bad)?;
    let l4 = l3 + 40;
    let doff = usize::from(*frame.get(l4 + 12).ok_or(bad)? >> 4) * 4;
    if doff < 20 {
        return Err(bad);
    }
    let payload = l4 + doff;
    if payload > frame.len() {
        return Err(bad);
    }
    Ok(TcpLayout {
        l3,
        l4,
        payload,
        end: ipv6_end(frame, l3, doff),
        v6: true,
    })
}

fn tcpv4_layout(frame: &[u8]) -> Result<TcpLayout, OffloadError> {
    let bad = OffloadError::NotTcpV4;
    let ethertype = u16::from_be_bytes([*frame.get(12).ok_or(bad)?, *frame.get(13).ok_or(bad)?]);
    let l3 = match ethertype {
        0x0800 => 14,
        0x8100 if frame.get(16..18) == Some(&[0x08, 0x00]) => 18,
        _ => return Err(bad),
    };
    let ip = frame.get(l3..l3 + 20).ok_or(bad)?;
    if ip[0] >> 4 != 4 || ip[9] != filter::proto::TCP {
        return Err(bad);
    }
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    if ihl < 20 {
        return Err(bad);
    }
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    let l4 = l3 + ihl;
    let doff = usize::from(*frame.get(l4 + 12).ok_or(bad)? >> 4) * 4;
    if doff < 20 {
        return Err(bad);
    }
    let payload = l4 + doff;
    if payload > frame.len() {
        return Err(bad);
    }
    let end = if total >= ihl + doff && l3 + total <= frame.len() {
        l3 + total
    } else {
        frame.len()
    };
    Ok(TcpLayout {
        l3,
        l4,
        payload,
        end,
        v6: false,
    })
}

/// Sum of the TCP/IPv4 pseudo header for a TCP segment of `tcp_len` bytes.
#[inline]
fn pseudo_sum(ip: &[u8], tcp_len: usize) -> u64 {
    let mut acc = sum(&ip[12..20], 0);
    acc += u64::from(filter::proto::TCP);
    acc += tcp_len as u64;
    acc
}

/// Sum of the IPv6 pseudo-header (RFC 8200 §8.1) of the IPv6 header `ip` for
/// an upper-layer packet of protocol `next` and `len` bytes.
#[inline]
fn pseudo_sum6(ip: &[u8], next: u8, len: usize) -> u64 {
    sum(&ip[8..40], u64::from(next) + len as u64)
}

/// Segment a `GSO_TCPV4` super-frame (see the module docs). `out` is a scratch
/// buffer at least one segment long; `emit` is called once per segment with the
/// finished frame and stops the segmentation when it returns an error.
pub fn segment_tcpv4<E>(
    frame: &[u8],
    vnet: &VnetHdr,
    out: &mut [u8],
    emit: impl FnMut(&[u8]) -> Result<(), E>,
) -> Result<Result<usize, E>, OffloadError> {
    let gso = vnet.gso_type & !VnetHdr::GSO_ECN;
    if gso != VnetHdr::GSO_TCPV4 {
        return Err(OffloadError::UnsupportedGso(vnet.gso_type));
    }
    if vnet.gso_size == 0 {
        return Err(OffloadError::ZeroMss);
    }
    segment_tcp(frame, tcpv4_layout(frame)?, vnet, out, emit)
}

/// Segment a `GSO_TCPV6` (TSO6) super-frame (see the module docs): as
/// [`segment_tcpv4`], with each segment's IPv6 payload length and a TCP
/// checksum over the IPv6 pseudo-header.
pub fn segment_tcpv6<E>(
    frame: &[u8],
    vnet: &VnetHdr,
    out: &mut [u8],
    emit: impl FnMut(&[u8]) -> Result<(), E>,
) -> Result<Result<usize, E>, OffloadError> {
    let gso = vnet.gso_type & !VnetHdr::GSO_ECN;
    if gso != VnetHdr::GSO_TCPV6 {
        return Err(OffloadError::UnsupportedGso(vnet.gso_type));
    }
    if vnet.gso_size == 0 {
        return Err(OffloadError::ZeroMss);
    }
    segment_tcp(frame, tcpv6_layout(frame)?, vnet, out, emit)
}

/// TCP segmentation of either family, once the layout is known.
#[inline]
fn segment_tcp<E>(
    frame: &[u8],
    lay: TcpLayout,
    vnet: &VnetHdr,
    out: &mut [u8],
    mut emit: impl FnMut(&[u8]) -> Result<(), E>,
) -> Result<Result<usize, E>, OffloadError> {
    let mss = usize::from(vnet.gso_size);
    let hdr_len = lay.payload;
    let payload = &frame[lay.payload..lay.end];
    if payload.is_empty() {
        // Nothing to cut: one frame, with its checksums completed.
        let need = lay.end;
        if out.len() < need {
            return Err(OffloadError::BufferTooSmall {
                need,
                have: out.len(),
            });
        }
        out[..need].copy_from_slice(&frame[..need]);
        finish_segment(&mut out[..need], &lay, None);
        return Ok(emit(&out[..need]).map(|()| 1));
    }
    let need = hdr_len + mss.min(payload.len());
    if out.len() < need {
        return Err(OffloadError::BufferTooSmall {
            need,
            have: out.len(),
        });
    }
    out[..hdr_len].copy_from_slice(&frame[..hdr_len]);
    let ip = &frame[lay.l3..lay.l3 + 20];
    // IPv4's id (IPv6 has none: unused).
    let base_id = u16::from_be_bytes([ip[4], ip[5]]);
    let tcp = &frame[lay.l4..lay.l4 + 20];
    let base_seq = u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]);
    let flags = tcp[13];
    const FIN: u8 = filter::tcp_flags::FIN;
    const PSH: u8 = filter::tcp_flags::PSH;
    const CWR: u8 = 0x80;

    let n = payload.len().div_ceil(mss);
    for (i, chunk) in payload.chunks(mss).enumerate() {
        let len = hdr_len + chunk.len();
        out[hdr_len..len].copy_from_slice(chunk);
        let seg = &mut out[..len];
        if lay.v6 {
            // IPv6: payload length.
            let plen = (len - lay.l3 - 40) as u16;
            seg[lay.l3 + 4..lay.l3 + 6].copy_from_slice(&plen.to_be_bytes());
        } else {
            // IPv4: id, total length.
            let id = base_id.wrapping_add(i as u16);
            seg[lay.l3 + 4..lay.l3 + 6].copy_from_slice(&id.to_be_bytes());
            let total = (len - lay.l3) as u16;
            seg[lay.l3 + 2..lay.l3 + 4].copy_from_slice(&total.to_be_bytes());
        }
        // TCP: sequence number and flags.
        let seq = base_seq.wrapping_add((i * mss) as u32);
        seg[lay.l4 + 4..lay.l4 + 8].copy_from_slice(&seq.to_be_bytes());
        let mut f = flags;
        if i != 0 {
            f &= !CWR;
        }
        if i + 1 != n {
            f &= !(FIN | PSH);
        }
        seg[lay.l4 + 13] = f;
        finish_segment(seg, &lay, Some(len));
        if let Err(e) = emit(seg) {
            return Ok(Err(e));
        }
    }
    Ok(Ok(n))
}

/// Segment a super-frame of a supported GSO type: `GSO_TCPV4` with
/// [`segment_tcpv4`], `GSO_TCPV6` with [`segment_tcpv6`], `GSO_UDP_L4` (USO)
/// with [`segment_udp4`] or, for an IPv6 frame, [`segment_udp6`]. The ECN bit
/// is ignored (the CWR handling of TCP covers it).
pub fn segment<E>(
    frame: &[u8],
    vnet: &VnetHdr,
    out: &mut [u8],
    emit: impl FnMut(&[u8]) -> Result<(), E>,
) -> Result<Result<usize, E>, OffloadError> {
    match vnet.gso_type & !VnetHdr::GSO_ECN {
        VnetHdr::GSO_TCPV4 => segment_tcpv4(frame, vnet, out, emit),
        VnetHdr::GSO_TCPV6 => segment_tcpv6(frame, vnet, out, emit),
        VnetHdr::GSO_UDP_L4 if is_ipv6(frame) => segment_udp6(frame, vnet, out, emit),
        VnetHdr::GSO_UDP_L4 => segment_udp4(frame, vnet, out, emit),
        _ => Err(OffloadError::UnsupportedGso(vnet.gso_type)),
    }
}

/// Segment a `GSO_UDP_L4` (UDP segmentation offload) super-frame: the UDP payload
/// is cut into datagrams of `gso_size` bytes (the last may be shorter), each with
/// the UDP header copied, its own UDP length and full checksum, and an IPv4 header
/// with its own total length, id (+ index) and checksum.
pub fn segment_udp4<E>(
    frame: &[u8],
    vnet: &VnetHdr,
    out: &mut [u8],
    mut emit: impl FnMut(&[u8]) -> Result<(), E>,
) -> Result<Result<usize, E>, OffloadError> {
    if vnet.gso_type & !VnetHdr::GSO_ECN != VnetHdr::GSO_UDP_L4 {
        return Err(OffloadError::UnsupportedGso(vnet.gso_type));
    }
    let seg_size = usize::from(vnet.gso_size);
    if seg_size == 0 {
        return Err(OffloadError::ZeroMss);
    }
    let bad = OffloadError::NotUdpV4;
    let ethertype = u16::from_be_bytes([*frame.get(12).ok_or(bad)?, *frame.get(13).ok_or(bad)?]);
    let l3 = match ethertype {
        0x0800 => 14,
        0x8100 if frame.get(16..18) == Some(&[0x08, 0x00]) => 18,
        _ => return Err(bad),
    };
    let ip = frame.get(l3..l3 + 20).ok_or(bad)?;
    if ip[0] >> 4 != 4 || ip[9] != filter::proto::UDP {
        return Err(bad);
    }
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    if ihl < 20 {
        return Err(bad);
    }
    let l4 = l3 + ihl;
    let hdr_len = l4 + 8;
    if hdr_len > frame.len() {
        return Err(bad);
    }
    let end = if total >= ihl + 8 && l3 + total <= frame.len() {
        l3 + total
    } else {
        frame.len()
    };
    let payload = &frame[hdr_len..end];
    let need = hdr_len + seg_size.min(payload.len());
    if out.len() < need {
        return Err(OffloadError::BufferTooSmall {
            need,
            have: out.len(),
        });
    }
    out[..hdr_len].copy_from_slice(&frame[..hdr_len]);
    let base_id = u16::from_be_bytes([ip[4], ip[5]]);
    let mut n = 0;
    // An empty payload still makes one (empty) datagram.
    let chunks = payload
        .chunks(seg_size)
        .chain(payload.is_empty().then_some(&payload[..0]));
    for (i, chunk) in chunks.enumerate() {
        let len = hdr_len + chunk.len();
        out[hdr_len..len].copy_from_slice(chunk);
        let seg = &mut out[..len];
        let id = base_id.wrapping_add(i as u16);
        seg[l3 + 4..l3 + 6].copy_from_slice(&id.to_be_bytes());
        seg[l3 + 2..l3 + 4].copy_from_slice(&((len - l3) as u16).to_be_bytes());
        seg[l3 + 10..l3 + 12].copy_from_slice(&[0, 0]);
        let ipc = checksum(&seg[l3..l4]);
        seg[l3 + 10..l3 + 12].copy_from_slice(&ipc.to_be_bytes());
        let udp_len = len - l4;
        seg[l4 + 4..l4 + 6].copy_from_slice(&(udp_len as u16).to_be_bytes());
        seg[l4 + 6..l4 + 8].copy_from_slice(&[0, 0]);
        let mut acc = sum(&seg[l3 + 12..l3 + 20], 0);
        acc += u64::from(filter::proto::UDP) + udp_len as u64;
        let mut c = !fold(sum(&seg[l4..len], acc));
        if c == 0 {
            c = 0xffff;
        }
        seg[l4 + 6..l4 + 8].copy_from_slice(&c.to_be_bytes());
        n += 1;
        if let Err(e) = emit(seg) {
            return Ok(Err(e));
        }
    }
    Ok(Ok(n))
}

/// Whether `frame` is IPv6 (untagged or behind one 802.1Q tag).
fn is_ipv6(frame: &[u8]) -> bool {
    frame.get(12..14) == Some(&[0x86, 0xdd])
        || (frame.get(12..14) == Some(&[0x81, 0x00]) && frame.get(16..18) == Some(&[0x86, 0xdd]))
}

/// Segment a `GSO_UDP_L4` (USO) super-frame over IPv6: as [`segment_udp4`],
/// each datagram with its own UDP length, IPv6 payload length and UDP
/// checksum over the IPv6 pseudo-header (never 0).
pub fn segment_udp6<E>(
    frame: &[u8],
    vnet: &VnetHdr,
    out: &mut [u8],
    mut emit: impl FnMut(&[u8]) -> Result<(), E>,
) -> Result<Result<usize, E>, OffloadError> {
    if vnet.gso_type & !VnetHdr::GSO_ECN != VnetHdr::GSO_UDP_L4 {
        return Err(OffloadError::UnsupportedGso(vnet.gso_type));
    }
    let seg_size = usize::from(vnet.gso_size);
    if seg_size == 0 {
        return Err(OffloadError::ZeroMss);
    }
    let bad = OffloadError::NotUdpV6;
    let l3 = ipv6_l3(frame, filter::proto::UDP).ok_or(bad)?;
    let l4 = l3 + 40;
    let hdr_len = l4 + 8;
    if hdr_len > frame.len() {
        return Err(bad);
    }
    let end = ipv6_end(frame, l3, 8);
    let payload = &frame[hdr_len..end];
    let need = hdr_len + seg_size.min(payload.len());
    if out.len() < need {
        return Err(OffloadError::BufferTooSmall {
            need,
            have: out.len(),
        });
    }
    out[..hdr_len].copy_from_slice(&frame[..hdr_len]);
    let mut n = 0;
    // An empty payload still makes one (empty) datagram.
    let chunks = payload
        .chunks(seg_size)
        .chain(payload.is_empty().then_some(&payload[..0]));
    for chunk in chunks {
        let len = hdr_len + chunk.len();
        out[hdr_len..len].copy_from_slice(chunk);
        let seg = &mut out[..len];
        let udp_len = len - l4;
        seg[l3 + 4..l3 + 6].copy_from_slice(&(udp_len as u16).to_be_bytes());
        seg[l4 + 4..l4 + 6].copy_from_slice(&(udp_len as u16).to_be_bytes());
        seg[l4 + 6..l4 + 8].copy_from_slice(&[0, 0]);
        let acc = pseudo_sum6(&seg[l3..l4], filter::proto::UDP, udp_len);
        let mut c = !fold(sum(&seg[l4..len], acc));
        if c == 0 {
            c = 0xffff;
        }
        seg[l4 + 6..l4 + 8].copy_from_slice(&c.to_be_bytes());
        n += 1;
        if let Err(e) = emit(seg) {
            return Ok(Err(e));
        }
    }
    Ok(Ok(n))
}

/// Recompute the IPv4 header checksum (IPv6 has none) and the full TCP
/// checksum of one segment whose packet ends at `end` (default: the layout's
/// end).
fn finish_segment(seg: &mut [u8], lay: &TcpLayout, end: Option<usize>) {
    let end = end.unwrap_or(lay.end);
    seg[lay.l4 + 16..lay.l4 + 18].copy_from_slice(&[0, 0]);
    let acc = if lay.v6 {
        pseudo_sum6(&seg[lay.l3..lay.l3 + 40], filter::proto::TCP, end - lay.l4)
    } else {
        let ihl = lay.l4 - lay.l3;
        seg[lay.l3 + 10..lay.l3 + 12].copy_from_slice(&[0, 0]);
        let ipc = checksum(&seg[lay.l3..lay.l3 + ihl]);
        seg[lay.l3 + 10..lay.l3 + 12].copy_from_slice(&ipc.to_be_bytes());
        pseudo_sum(&seg[lay.l3..lay.l3 + 20], end - lay.l4)
    };
    let c = !fold(sum(&seg[lay.l4..end], acc));
    seg[lay.l4 + 16..lay.l4 + 18].copy_from_slice(&c.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::{PacketBuilder, SlicedPacket, TransportSlice};

    const SRC: [u8; 4] = [172, 31, 0, 10];
    const DST: [u8; 4] = [172, 31, 0, 11];

    fn tcp_frame(payload: &[u8], seq: u32, fin: bool) -> Vec<u8> {
        let mut b = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
            .ipv4(SRC, DST, 64)
            .tcp(40000, 80, seq, 65000)
            .ack(7)
            .psh();
        if fin {
            b = b.fin();
        }
        let mut v = Vec::new();
        b.write(&mut v, payload).unwrap();
        // Set an IP id to check the increments.
        v[18..20].copy_from_slice(&0x1234u16.to_be_bytes());
        let c = {
            v[24..26].copy_from_slice(&[0, 0]);
            checksum(&v[14..34])
        };
        v[24..26].copy_from_slice(&c.to_be_bytes());
        v
    }

    /// Verify IPv4 and TCP checksums of a frame independently of this module's
    /// helpers' use in segmentation (sum over the whole header must fold to 0).
    fn checksums_ok(f: &[u8]) -> bool {
        let ihl = usize::from(f[14] & 0xf) * 4;
        let total = usize::from(u16::from_be_bytes([f[16], f[17]]));
        let ip_ok = checksum(&f[14..14 + ihl]) == 0;
        let l4 = 14 + ihl;
        let mut pseudo = Vec::new();
        pseudo.extend_from_slice(&f[26..34]);
        pseudo.extend_from_slice(&[0, 6]);
        pseudo.extend_from_slice(&((total - ihl) as u16).to_be_bytes());
        pseudo.extend_from_slice(&f[l4..14 + total]);
        ip_ok && checksum(&pseudo) == 0
    }

    #[test]
    fn checksum_matches_rfc1071_example() {
        // RFC 1071 §3 example: 00 01 f2 03 f4 f5 f6 f7 sums to ddf2.
        let d = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(fold(sum(&d, 0)), 0xddf2);
        assert_eq!(checksum(&d), !0xddf2);
        // Odd length pads with a zero byte.
        assert_eq!(fold(sum(&[0xab], 0)), 0xab00);
    }

    #[test]
    fn complete_csum_produces_valid_tcp_checksum() {
        let mut f = tcp_frame(b"hello, partial checksum!", 1000, false);
        assert!(checksums_ok(&f));
        let good = f.clone();
        // Replace the TCP checksum by the pseudo-header sum, as a sender with
        // checksum offload leaves it.
        let l4 = 34;
        let tcp_len = f.len() - l4;
        // Linux leaves the folded, non-inverted pseudo-header sum in the field.
        let pseudo = fold(sum(
            &[
                &f[26..34],
                &[0u8, 6][..],
                &(tcp_len as u16).to_be_bytes()[..],
            ]
            .concat(),
            0,
        ));
        f[l4 + 16..l4 + 18].copy_from_slice(&pseudo.to_be_bytes());
        assert_ne!(f, good);
        let v = VnetHdr {
            flags: VnetHdr::F_NEEDS_CSUM,
            csum_start: 34,
            csum_offset: 16,
            ..Default::default()
        };
        complete_csum(&mut f, &v).unwrap();
        assert_eq!(f, good);
    }

    #[test]
    fn complete_csum_rejects_offsets_beyond_frame() {
        let mut f = vec![0u8; 40];
        let v = VnetHdr {
            flags: VnetHdr::F_NEEDS_CSUM,
            csum_start: 34,
            csum_offset: 6,
            ..Default::default()
        };
        assert!(matches!(
            complete_csum(&mut f, &v),
            Err(OffloadError::CsumOutOfRange { .. })
        ));
    }

    fn segment_all(frame: &[u8], mss: u16) -> Vec<Vec<u8>> {
        let v = VnetHdr {
            gso_type: VnetHdr::GSO_TCPV4,
            gso_size: mss,
            hdr_len: 54,
            ..Default::default()
        };
        let mut out = vec![0u8; 65550];
        let mut segs = Vec::new();
        let n = segment_tcpv4(frame, &v, &mut out, |s| {
            segs.push(s.to_vec());
            Ok::<(), ()>(())
        })
        .unwrap()
        .unwrap();
        assert_eq!(n, segs.len());
        segs
    }

    #[test]
    fn segmentation_reassembles_to_the_original_payload() {
        let payload: Vec<u8> = (0..10_000u32).map(|i| (i * 7 + i / 13) as u8).collect();
        let seq = 0xffff_f000; // wraps during the train
        let frame = tcp_frame(&payload, seq, true);
        let segs = segment_all(&frame, 1448);
        assert_eq!(segs.len(), 10_000usize.div_ceil(1448));
        let mut re = Vec::new();
        for (i, s) in segs.iter().enumerate() {
            assert!(checksums_ok(s), "segment {i} checksum");
            let p = SlicedPacket::from_ethernet(s).unwrap();
            let Some(etherparse::NetSlice::Ipv4(ip)) = p.net else {
                panic!("not ipv4")
            };
            assert_eq!(
                ip.header().identification(),
                0x1234u16.wrapping_add(i as u16)
            );
            assert_eq!(usize::from(ip.header().total_len()), s.len() - 14);
            let Some(TransportSlice::Tcp(t)) = p.transport else {
                panic!("not tcp")
            };
            assert_eq!(t.sequence_number(), seq.wrapping_add((i * 1448) as u32));
            assert_eq!(t.acknowledgment_number(), 7);
            let last = i + 1 == segs.len();
            assert_eq!(t.fin(), last);
            assert_eq!(t.psh(), last);
            assert!(t.ack());
            if !last {
                assert_eq!(t.payload().len(), 1448);
            }
            re.extend_from_slice(t.payload());
        }
        assert_eq!(re, payload);
    }

    #[test]
    fn segmentation_of_exact_multiple_and_single_segment() {
        let payload = vec![0x5a; 3000];
        let frame = tcp_frame(&payload, 1, false);
        let segs = segment_all(&frame, 1000);
        assert_eq!(segs.len(), 3);
        assert!(segs.iter().all(|s| s.len() == 54 + 1000 && checksums_ok(s)));
        let segs = segment_all(&frame, 5000);
        assert_eq!(segs.len(), 1);
        assert_eq!(segs[0].len(), frame.len());
        assert!(checksums_ok(&segs[0]));
    }

    #[test]
    fn segmentation_rejects_bad_input() {
        let mut out = vec![0u8; 2000];
        let ok = |_: &[u8]| Ok::<(), ()>(());
        let frame = tcp_frame(&[1; 100], 0, false);
        let v = VnetHdr {
            gso_type: VnetHdr::GSO_TCPV4,
            gso_size: 0,
            ..Default::default()
        };
        assert_eq!(
            segment_tcpv4(&frame, &v, &mut out, ok).unwrap_err(),
            OffloadError::ZeroMss
        );
        let v = VnetHdr {
            gso_type: VnetHdr::GSO_TCPV6,
            gso_size: 10,
            ..Default::default()
        };
        assert_eq!(
            segment_tcpv4(&frame, &v, &mut out, ok).unwrap_err(),
            OffloadError::UnsupportedGso(4)
        );
        let v = VnetHdr {
            gso_type: VnetHdr::GSO_TCPV4,
            gso_size: 10,
            ..Default::default()
        };
        assert_eq!(
            segment_tcpv4(&frame[..40], &v, &mut out, ok).unwrap_err(),
            OffloadError::NotTcpV4
        );
        let mut udp = Vec::new();
        PacketBuilder::ethernet2([2; 6], [4; 6])
            .ipv4(SRC, DST, 9)
            .udp(1, 2)
            .write(&mut udp, &[0; 50])
            .unwrap();
        assert_eq!(
            segment_tcpv4(&udp, &v, &mut out, ok).unwrap_err(),
            OffloadError::NotTcpV4
        );
        let mut tiny = vec![0u8; 30];
        assert_eq!(
            segment_tcpv4(&frame, &VnetHdr { gso_size: 100, ..v }, &mut tiny, ok).unwrap_err(),
            OffloadError::BufferTooSmall {
                need: 154,
                have: 30
            }
        );
    }

    #[test]
    fn uso_segments_are_valid_datagrams_that_reassemble() {
        let payload: Vec<u8> = (0..4000u32).map(|i| (i * 31) as u8).collect();
        let mut f = Vec::new();
        PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
            .ipv4(SRC, DST, 64)
            .udp(5000, 6000)
            .write(&mut f, &payload)
            .unwrap();
        let v = VnetHdr {
            gso_type: VnetHdr::GSO_UDP_L4,
            gso_size: 1400,
            ..Default::default()
        };
        let mut out = vec![0u8; 2000];
        let mut segs: Vec<Vec<u8>> = Vec::new();
        let n = segment(&f, &v, &mut out, |s| {
            segs.push(s.to_vec());
            Ok::<(), ()>(())
        })
        .unwrap()
        .unwrap();
        assert_eq!((n, segs.len()), (3, 3));
        let mut re = Vec::new();
        for s in &segs {
            let p = SlicedPacket::from_ethernet(s).unwrap();
            let Some(etherparse::NetSlice::Ipv4(ip)) = &p.net else {
                panic!("ipv4")
            };
            let iph = ip.header().to_header();
            assert_eq!(iph.header_checksum, iph.calc_header_checksum());
            assert_eq!(usize::from(iph.total_len), s.len() - 14);
            let Some(TransportSlice::Udp(u)) = &p.transport else {
                panic!("udp")
            };
            assert_eq!((u.source_port(), u.destination_port()), (5000, 6000));
            assert_eq!(usize::from(u.length()), s.len() - 34);
            let want = u.to_header().calc_checksum_ipv4(&iph, u.payload()).unwrap();
            assert_eq!(u.checksum(), want);
            re.extend_from_slice(u.payload());
        }
        assert_eq!(re, payload);
        assert_eq!(segs[2].len(), 42 + 4000 - 2800);
        // TCP frames are refused as USO, and unknown types by the dispatcher.
        let tcp = tcp_frame(&[1; 10], 0, false);
        assert_eq!(
            segment(&tcp, &v, &mut out, |_| Ok::<(), ()>(())).unwrap_err(),
            OffloadError::NotUdpV4
        );
        let ufo = VnetHdr {
            gso_type: VnetHdr::GSO_UDP,
            gso_size: 100,
            ..Default::default()
        };
        assert_eq!(
            segment(&f, &ufo, &mut out, |_| Ok::<(), ()>(())).unwrap_err(),
            OffloadError::UnsupportedGso(VnetHdr::GSO_UDP)
        );
    }

    #[test]
    fn emit_error_stops_segmentation() {
        let frame = tcp_frame(&[9; 5000], 0, false);
        let v = VnetHdr {
            gso_type: VnetHdr::GSO_TCPV4,
            gso_size: 1000,
            ..Default::default()
        };
        let mut out = vec![0u8; 2000];
        let mut calls = 0;
        let r = segment_tcpv4(&frame, &v, &mut out, |_| {
            calls += 1;
            if calls == 2 { Err("full") } else { Ok(()) }
        });
        assert_eq!(r, Ok(Err("full")));
        assert_eq!(calls, 2);
    }

    // ---- IPv6 ----

    const SRC6: [u8; 16] = [0xfd, 0, 0, 0x5a, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
    const DST6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7];

    fn tcp6_frame(payload: &[u8], seq: u32, fin: bool) -> Vec<u8> {
        let mut b = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
            .ipv6(SRC6, DST6, 64)
            .tcp(40000, 80, seq, 65000)
            .ack(7)
            .psh();
        if fin {
            b = b.fin();
        }
        let mut v = Vec::new();
        b.write(&mut v, payload).unwrap();
        v
    }

    /// Verify an untagged IPv6 TCP/UDP frame: payload length matches the frame
    /// and the L4 checksum sums to 0 with an independently built pseudo-header.
    fn checksums6_ok(f: &[u8]) -> bool {
        let plen = usize::from(u16::from_be_bytes([f[18], f[19]]));
        let mut pseudo = Vec::new();
        pseudo.extend_from_slice(&f[22..54]);
        pseudo.extend_from_slice(&u32::try_from(plen).unwrap().to_be_bytes());
        pseudo.extend_from_slice(&[0, 0, 0, f[20]]);
        pseudo.extend_from_slice(&f[54..]);
        plen == f.len() - 54 && checksum(&pseudo) == 0
    }

    fn tso6(mss: u16) -> VnetHdr {
        VnetHdr {
            gso_type: VnetHdr::GSO_TCPV6,
            gso_size: mss,
            hdr_len: 74,
            ..Default::default()
        }
    }

    fn segment6_all(frame: &[u8], v: &VnetHdr) -> Vec<Vec<u8>> {
        let mut out = vec![0u8; 65550];
        let mut segs = Vec::new();
        let n = segment(frame, v, &mut out, |s| {
            segs.push(s.to_vec());
            Ok::<(), ()>(())
        })
        .unwrap()
        .unwrap();
        assert_eq!(n, segs.len());
        segs
    }

    #[test]
    fn tso6_segments_reassemble_to_the_original_payload() {
        let payload: Vec<u8> = (0..10_000u32).map(|i| (i * 7 + i / 13) as u8).collect();
        let seq = 0xffff_f000;
        let frame = tcp6_frame(&payload, seq, true);
        assert!(checksums6_ok(&frame));
        let segs = segment6_all(&frame, &tso6(1428));
        assert_eq!(segs.len(), 10_000usize.div_ceil(1428));
        let mut re = Vec::new();
        for (i, s) in segs.iter().enumerate() {
            assert!(checksums6_ok(s), "segment {i} checksum and payload length");
            let p = SlicedPacket::from_ethernet(s).unwrap();
            let Some(etherparse::NetSlice::Ipv6(ip)) = p.net else {
                panic!("not ipv6")
            };
            assert_eq!(usize::from(ip.header().payload_length()), s.len() - 54);
            assert_eq!(ip.header().source(), SRC6);
            let Some(TransportSlice::Tcp(t)) = p.transport else {
                panic!("not tcp")
            };
            assert_eq!(t.sequence_number(), seq.wrapping_add((i * 1428) as u32));
            assert_eq!(t.acknowledgment_number(), 7);
            let last = i + 1 == segs.len();
            assert_eq!((t.fin(), t.psh()), (last, last));
            if !last {
                assert_eq!(t.payload().len(), 1428);
            }
            re.extend_from_slice(t.payload());
        }
        assert_eq!(re, payload);
        // The dedicated entry point cuts the same.
        let mut out = vec![0u8; 2000];
        let mut again = Vec::new();
        segment_tcpv6(&frame, &tso6(1428), &mut out, |s| {
            again.push(s.to_vec());
            Ok::<(), ()>(())
        })
        .unwrap()
        .unwrap();
        assert_eq!(again, segs);
    }

    #[test]
    fn tso6_exact_multiple_single_segment_and_vlan() {
        let frame = tcp6_frame(&[0x5a; 3000], 1, false);
        let segs = segment6_all(&frame, &tso6(1000));
        assert_eq!(segs.len(), 3);
        assert!(
            segs.iter()
                .all(|s| s.len() == 74 + 1000 && checksums6_ok(s))
        );
        let one = segment6_all(&frame, &tso6(5000));
        assert_eq!(one, vec![frame.clone()], "one segment: the frame itself");
        // A payload length of 0 (some stacks leave it so in super-frames): the
        // frame end counts, and each segment gets its real length.
        let mut zero = frame.clone();
        zero[18..20].copy_from_slice(&[0, 0]);
        assert_eq!(segment6_all(&zero, &tso6(1000)), segs);
        // Behind an 802.1Q tag: the IPv6 header moves by 4 bytes.
        let mut tagged = frame[..12].to_vec();
        tagged.extend_from_slice(&[0x81, 0x00, 0x00, 0x05]);
        tagged.extend_from_slice(&frame[12..]);
        let tsegs = segment6_all(&tagged, &tso6(1000));
        assert_eq!(tsegs.len(), 3);
        for (t, u) in tsegs.iter().zip(&segs) {
            assert_eq!(&t[18..], &u[14..], "same packet behind the tag");
        }
    }

    #[test]
    fn tso6_rejects_bad_input() {
        let mut out = vec![0u8; 2000];
        let ok = |_: &[u8]| Ok::<(), ()>(());
        let frame = tcp6_frame(&[1; 100], 0, false);
        assert_eq!(
            segment_tcpv6(&frame, &tso6(0), &mut out, ok).unwrap_err(),
            OffloadError::ZeroMss
        );
        let v4 = VnetHdr {
            gso_type: VnetHdr::GSO_TCPV4,
            ..tso6(10)
        };
        assert_eq!(
            segment_tcpv6(&frame, &v4, &mut out, ok).unwrap_err(),
            OffloadError::UnsupportedGso(VnetHdr::GSO_TCPV4)
        );
        assert_eq!(
            segment(&frame, &v4, &mut out, ok).unwrap_err(),
            OffloadError::NotTcpV4,
            "an IPv6 frame announced as TCPv4"
        );
        let v = tso6(10);
        assert_eq!(
            segment(&tcp_frame(&[1; 100], 0, false), &v, &mut out, ok).unwrap_err(),
            OffloadError::NotTcpV6,
            "an IPv4 frame announced as TCPv6"
        );
        for n in [13, 40, 54, 60, 73] {
            assert_eq!(
                segment_tcpv6(&frame[..n], &v, &mut out, ok).unwrap_err(),
                OffloadError::NotTcpV6,
                "cut at {n}"
            );
        }
        // An extension header before TCP is not segmented.
        let mut ext = frame[..54].to_vec();
        ext[20] = 60; // destination options
        ext[18..20].copy_from_slice(&(8 + (frame.len() - 54) as u16).to_be_bytes());
        ext.extend_from_slice(&[6, 0, 1, 4, 0, 0, 0, 0]);
        ext.extend_from_slice(&frame[54..]);
        assert_eq!(
            segment_tcpv6(&ext, &v, &mut out, ok).unwrap_err(),
            OffloadError::NotTcpV6
        );
        // Version not 6.
        let mut bad = frame.clone();
        bad[14] = 0x40;
        assert_eq!(
            segment_tcpv6(&bad, &v, &mut out, ok).unwrap_err(),
            OffloadError::NotTcpV6
        );
        let mut tiny = vec![0u8; 30];
        assert_eq!(
            segment_tcpv6(&frame, &tso6(50), &mut tiny, ok).unwrap_err(),
            OffloadError::BufferTooSmall {
                need: 74 + 50,
                have: 30
            }
        );
    }

    #[test]
    fn uso6_segments_are_valid_datagrams_that_reassemble() {
        let payload: Vec<u8> = (0..4000u32).map(|i| (i * 31) as u8).collect();
        let mut f = Vec::new();
        PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
            .ipv6(SRC6, DST6, 64)
            .udp(5000, 6000)
            .write(&mut f, &payload)
            .unwrap();
        assert!(checksums6_ok(&f));
        let v = VnetHdr {
            gso_type: VnetHdr::GSO_UDP_L4,
            gso_size: 1400,
            ..Default::default()
        };
        let segs = segment6_all(&f, &v);
        assert_eq!(segs.len(), 3);
        let mut re = Vec::new();
        for s in &segs {
            assert!(checksums6_ok(s));
            let p = SlicedPacket::from_ethernet(s).unwrap();
            let Some(TransportSlice::Udp(u)) = p.transport else {
                panic!("not udp")
            };
            assert_eq!(usize::from(u.length()), s.len() - 54);
            assert_ne!(u.checksum(), 0, "IPv6 UDP always has a checksum");
            assert_eq!((u.source_port(), u.destination_port()), (5000, 6000));
            re.extend_from_slice(u.payload());
        }
        assert_eq!(re, payload);
        // An IPv6 frame of another protocol is refused.
        let tcp = tcp6_frame(&[0; 10], 0, false);
        let mut out = vec![0u8; 2000];
        assert_eq!(
            segment_udp6(&tcp, &v, &mut out, |_| Ok::<(), ()>(())).unwrap_err(),
            OffloadError::NotUdpV6
        );
    }

    #[test]
    fn complete_csum_over_ipv6_pseudo_header() {
        for frame in [
            tcp6_frame(b"hello, partial checksum over IPv6!", 1000, false),
            {
                let mut f = Vec::new();
                PacketBuilder::ethernet2([2; 6], [4; 6])
                    .ipv6(SRC6, DST6, 64)
                    .udp(1, 2)
                    .write(&mut f, b"odd length payload")
                    .unwrap();
                f
            },
        ] {
            let good = frame.clone();
            let tcp = frame[20] == filter::proto::TCP;
            let csum_offset = if tcp { 16 } else { 6 };
            let mut f = frame;
            // The sender leaves the pseudo-header sum in the field.
            let len = f.len() - 54;
            let partial = fold(pseudo_sum6(&f[14..54], f[20], len));
            f[54 + csum_offset..56 + csum_offset].copy_from_slice(&partial.to_be_bytes());
            let v = VnetHdr {
                flags: VnetHdr::F_NEEDS_CSUM,
                csum_start: 54,
                csum_offset: csum_offset as u16,
                ..Default::default()
            };
            complete_csum(&mut f, &v).unwrap();
            assert_eq!(f, good);
            assert!(checksums6_ok(&f));
        }
    }
}
