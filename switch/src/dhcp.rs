//! DHCP answering: the switch is the DHCP server of its segment and hands every
//! instance the address it was assigned at launch (like EC2's DHCP), so QEMU
//! guests boot with plain DHCP clients.
//!
//! Contract:
//! * [`parse_request`] reads a client message (BOOTREQUEST, `op == 1`) from a UDP
//!   payload: the BOOTP fixed part, the magic cookie and the options it needs
//!   (53 message type, 50 requested address, 54 server id). Anything malformed is
//!   a [`DhcpError`]; nothing panics.
//! * [`decide`] maps a request to the answer for an instance (RFC 2131 §4.3):
//!   DISCOVER → OFFER; REQUEST for the instance's address (option 50 or `ciaddr`) →
//!   ACK, for another address → NAK, aimed at another server → no answer; INFORM →
//!   ACK without lease; DECLINE/RELEASE → no answer.
//! * [`write_reply`] writes the whole Ethernet/IPv4/UDP/BOOTP reply into a caller
//!   buffer (no allocation): yiaddr = the instance's address, options subnet mask,
//!   router and server id = the gateway address, lease time and T1/T2, broadcast
//!   address. Addressing per RFC 2131 §4.1: NAK and broadcast-flag requests go to
//!   255.255.255.255 / ff:ff:ff:ff:ff:ff, a renewing client (`ciaddr` set) gets a
//!   unicast to `ciaddr`, otherwise unicast to `yiaddr` at `chaddr`.

use std::net::Ipv4Addr;

use filter::Mac;

use crate::offload::{checksum, fold, sum};

pub const SERVER_PORT: u16 = 67;
pub const CLIENT_PORT: u16 = 68;

/// DHCP message types (option 53).
pub mod msg {
    pub const DISCOVER: u8 = 1;
    pub const OFFER: u8 = 2;
    pub const REQUEST: u8 = 3;
    pub const DECLINE: u8 = 4;
    pub const ACK: u8 = 5;
    pub const NAK: u8 = 6;
    pub const RELEASE: u8 = 7;
    pub const INFORM: u8 = 8;
}

const BOOTP_FIXED: usize = 236;
const MAGIC: [u8; 4] = [99, 130, 83, 99];
/// Minimum BOOTP message length some clients insist on (RFC 1542 §2.1).
const BOOTP_MIN: usize = 300;
/// Bytes of Ethernet + IPv4 + UDP headers in front of the BOOTP message.
const HDRS: usize = 14 + 20 + 8;
/// The largest reply [`write_reply`] writes.
pub const MAX_REPLY_LEN: usize = HDRS + BOOTP_MIN + 64;

/// Why a DHCP message could not be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DhcpError {
    #[error("BOOTP message of {0} bytes is shorter than the 240-byte fixed part")]
    Truncated(usize),
    #[error("BOOTP op {0} is not a BOOTREQUEST")]
    NotRequest(u8),
    #[error("not a DHCP message (magic cookie missing)")]
    NoMagic,
    #[error("DHCP option {0} runs past the end of the message")]
    BadOption(u8),
    #[error("DHCP message without a message type")]
    NoMessageType,
}

/// The parts of a client message the server needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DhcpRequest {
    pub msg_type: u8,
    pub xid: u32,
    pub flags: u16,
    pub ciaddr: Ipv4Addr,
    pub giaddr: Ipv4Addr,
    pub chaddr: Mac,
    pub requested: Option<Ipv4Addr>,
    pub server_id: Option<Ipv4Addr>,
}

impl DhcpRequest {
    /// The client asked for a broadcast reply.
    pub fn broadcast_flag(&self) -> bool {
        self.flags & 0x8000 != 0
    }
}

/// What the server hands out to one instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lease {
    pub ip: Ipv4Addr,
    pub prefix_len: u8,
    /// Gateway = DHCP server identifier = router option.
    pub gateway: Ipv4Addr,
    pub server_mac: Mac,
    pub lease_secs: u32,
}

impl Lease {
    pub fn mask(&self) -> Ipv4Addr {
        let bits = if self.prefix_len == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(self.prefix_len.min(32)))
        };
        Ipv4Addr::from(bits)
    }

    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.ip) | !u32::from(self.mask()))
    }
}

fn ip4(b: &[u8]) -> Ipv4Addr {
    Ipv4Addr::new(b[0], b[1], b[2], b[3])
}

/// Read the BOOTP op of a UDP payload (1 request, 2 reply), if present.
pub fn bootp_op(payload: &[u8]) -> Option<u8> {
    payload.first().copied()
}

/// Parse a client message (see the module docs).
pub fn parse_request(p: &[u8]) -> Result<DhcpRequest, DhcpError> {
    if p.len() < BOOTP_FIXED + 4 {
        return Err(DhcpError::Truncated(p.len()));
    }
    if p[0] != 1 {
        return Err(DhcpError::NotRequest(p[0]));
    }
    if p[BOOTP_FIXED..BOOTP_FIXED + 4] != MAGIC {
        return Err(DhcpError::NoMagic);
    }
    let mut r = DhcpRequest {
        msg_type: 0,
        xid: u32::from_be_bytes([p[4], p[5], p[6], p[7]]),
        flags: u16::from_be_bytes([p[10], p[11]]),
        ciaddr: ip4(&p[12..16]),
        giaddr: ip4(&p[24..28]),
        chaddr: [p[28], p[29], p[30], p[31], p[32], p[33]],
        requested: None,
        server_id: None,
    };
    let mut i = BOOTP_FIXED + 4;
    while i < p.len() {
        let code = p[i];
        match code {
            0 => {
                i += 1;
                continue;
            }
            255 => break,
            _ => {}
        }
        let len = usize::from(*p.get(i + 1).ok_or(DhcpError::BadOption(code))?);
        let v = p
            .get(i + 2..i + 2 + len)
            .ok_or(DhcpError::BadOption(code))?;
        match (code, len) {
            (53, 1) => r.msg_type = v[0],
            (50, 4) => r.requested = Some(ip4(v)),
            (54, 4) => r.server_id = Some(ip4(v)),
            (53 | 50 | 54, _) => return Err(DhcpError::BadOption(code)),
            _ => {}
        }
        i += 2 + len;
    }
    if r.msg_type == 0 {
        return Err(DhcpError::NoMessageType);
    }
    Ok(r)
}

/// The reply message type for `req` from the instance owning `lease`, or `None`
/// when the server stays silent (see the module docs).
pub fn decide(req: &DhcpRequest, lease: &Lease) -> Option<u8> {
    match req.msg_type {
        msg::DISCOVER => Some(msg::OFFER),
        msg::REQUEST => {
            if req.server_id.is_some_and(|s| s != lease.gateway) {
                return None;
            }
            let asked = req
                .requested
                .or((!req.ciaddr.is_unspecified()).then_some(req.ciaddr));
            match asked {
                Some(a) if a == lease.ip => Some(msg::ACK),
                _ => Some(msg::NAK),
            }
        }
        msg::INFORM => Some(msg::ACK),
        _ => None,
    }
}

/// Write the reply of type `ty` to `req` into `out` (at least [`MAX_REPLY_LEN`]
/// bytes) and return the frame length.
pub fn write_reply(out: &mut [u8], req: &DhcpRequest, ty: u8, lease: &Lease) -> usize {
    let inform = req.msg_type == msg::INFORM;
    let nak = ty == msg::NAK;
    let yiaddr = if nak || inform {
        Ipv4Addr::UNSPECIFIED
    } else {
        lease.ip
    };
    let (dst_ip, dst_mac) = if nak || req.broadcast_flag() {
        (Ipv4Addr::BROADCAST, [0xff; 6])
    } else if !req.ciaddr.is_unspecified() {
        (req.ciaddr, req.chaddr)
    } else {
        (yiaddr, req.chaddr)
    };

    // BOOTP message.
    let b = &mut out[HDRS..HDRS + BOOTP_MIN + 64];
    b.fill(0);
    b[0] = 2; // BOOTREPLY
    b[1] = 1; // Ethernet
    b[2] = 6;
    b[4..8].copy_from_slice(&req.xid.to_be_bytes());
    b[10..12].copy_from_slice(&req.flags.to_be_bytes());
    if inform {
        b[12..16].copy_from_slice(&req.ciaddr.octets());
    }
    b[16..20].copy_from_slice(&yiaddr.octets());
    b[24..28].copy_from_slice(&req.giaddr.octets());
    b[28..34].copy_from_slice(&req.chaddr);
    b[BOOTP_FIXED..BOOTP_FIXED + 4].copy_from_slice(&MAGIC);
    let mut i = BOOTP_FIXED + 4;
    let mut opt = |code: u8, val: &[u8]| {
        b[i] = code;
        b[i + 1] = val.len() as u8;
        b[i + 2..i + 2 + val.len()].copy_from_slice(val);
        i += 2 + val.len();
    };
    opt(53, &[ty]);
    opt(54, &lease.gateway.octets());
    if !nak {
        if !inform {
            opt(51, &lease.lease_secs.to_be_bytes());
            opt(58, &(lease.lease_secs / 2).to_be_bytes());
            opt(
                59,
                &((lease.lease_secs as u64 * 7 / 8) as u32).to_be_bytes(),
            );
        }
        opt(1, &lease.mask().octets());
        opt(3, &lease.gateway.octets());
        opt(28, &lease.broadcast().octets());
    }
    b[i] = 255;
    let bootp_len = (i + 1).max(BOOTP_MIN);

    // UDP + IPv4 + Ethernet.
    let udp_len = 8 + bootp_len;
    let ip_len = 20 + udp_len;
    let f = &mut out[..HDRS];
    f[0..6].copy_from_slice(&dst_mac);
    f[6..12].copy_from_slice(&lease.server_mac);
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let ip = &mut f[14..34];
    ip.copy_from_slice(&[
        0x45, 0, 0, 0, 0, 0, 0, 0, 64, 17, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ]);
    ip[2..4].copy_from_slice(&(ip_len as u16).to_be_bytes());
    ip[12..16].copy_from_slice(&lease.gateway.octets());
    ip[16..20].copy_from_slice(&dst_ip.octets());
    let c = checksum(ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let udp = &mut f[34..42];
    udp[0..2].copy_from_slice(&SERVER_PORT.to_be_bytes());
    udp[2..4].copy_from_slice(&CLIENT_PORT.to_be_bytes());
    udp[4..6].copy_from_slice(&(udp_len as u16).to_be_bytes());
    udp[6..8].copy_from_slice(&[0, 0]);
    let mut acc = sum(&lease.gateway.octets(), 0);
    acc = sum(&dst_ip.octets(), acc);
    acc += u64::from(filter::proto::UDP) + udp_len as u64;
    let frame_len = HDRS + bootp_len;
    acc = sum(&out[34..frame_len], acc);
    let mut c = !fold(acc);
    if c == 0 {
        c = 0xffff;
    }
    out[40..42].copy_from_slice(&c.to_be_bytes());
    frame_len
}

/// Build a client message (tests and tools): `msg_type` from `chaddr` with
/// optional requested address / server id. Returns the UDP payload.
pub fn client_message(
    msg_type: u8,
    xid: u32,
    chaddr: Mac,
    requested: Option<Ipv4Addr>,
    server_id: Option<Ipv4Addr>,
) -> Vec<u8> {
    let mut p = vec![0u8; BOOTP_FIXED];
    p[0] = 1;
    p[1] = 1;
    p[2] = 6;
    p[4..8].copy_from_slice(&xid.to_be_bytes());
    p[28..34].copy_from_slice(&chaddr);
    p.extend_from_slice(&MAGIC);
    p.extend_from_slice(&[53, 1, msg_type]);
    if let Some(a) = requested {
        p.extend_from_slice(&[50, 4]);
        p.extend_from_slice(&a.octets());
    }
    if let Some(s) = server_id {
        p.extend_from_slice(&[54, 4]);
        p.extend_from_slice(&s.octets());
    }
    p.push(255);
    p.resize(BOOTP_MIN, 0);
    p
}

/// A read-back of a server reply's fields (tests and tools).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DhcpReply {
    pub msg_type: u8,
    pub xid: u32,
    pub yiaddr: Ipv4Addr,
    pub chaddr: Mac,
    pub server_id: Option<Ipv4Addr>,
    pub mask: Option<Ipv4Addr>,
    pub router: Option<Ipv4Addr>,
    pub lease_secs: Option<u32>,
}

/// Parse a server reply's UDP payload (tests and tools).
pub fn parse_reply(p: &[u8]) -> Result<DhcpReply, DhcpError> {
    if p.len() < BOOTP_FIXED + 4 {
        return Err(DhcpError::Truncated(p.len()));
    }
    if p[BOOTP_FIXED..BOOTP_FIXED + 4] != MAGIC {
        return Err(DhcpError::NoMagic);
    }
    let mut r = DhcpReply {
        msg_type: 0,
        xid: u32::from_be_bytes([p[4], p[5], p[6], p[7]]),
        yiaddr: ip4(&p[16..20]),
        chaddr: [p[28], p[29], p[30], p[31], p[32], p[33]],
        server_id: None,
        mask: None,
        router: None,
        lease_secs: None,
    };
    let mut i = BOOTP_FIXED + 4;
    while i < p.len() && p[i] != 255 {
        if p[i] == 0 {
            i += 1;
            continue;
        }
        let code = p[i];
        let len = usize::from(*p.get(i + 1).ok_or(DhcpError::BadOption(code))?);
        let v = p
            .get(i + 2..i + 2 + len)
            .ok_or(DhcpError::BadOption(code))?;
        match (code, len) {
            (53, 1) => r.msg_type = v[0],
            (54, 4) => r.server_id = Some(ip4(v)),
            (1, 4) => r.mask = Some(ip4(v)),
            (3, 4) => r.router = Some(ip4(v)),
            (51, 4) => r.lease_secs = Some(u32::from_be_bytes([v[0], v[1], v[2], v[3]])),
            _ => {}
        }
        i += 2 + len;
    }
    if r.msg_type == 0 {
        return Err(DhcpError::NoMessageType);
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::{NetSlice, SlicedPacket, TransportSlice};

    const MAC: Mac = [2, 0, 0, 0, 0, 9];

    fn lease() -> Lease {
        Lease {
            ip: Ipv4Addr::new(172, 31, 0, 9),
            prefix_len: 16,
            gateway: Ipv4Addr::new(172, 31, 0, 1),
            server_mac: crate::arp::GATEWAY_MAC,
            lease_secs: 3600,
        }
    }

    #[test]
    fn parse_and_decide() {
        let l = lease();
        let d = parse_request(&client_message(msg::DISCOVER, 7, MAC, None, None)).unwrap();
        assert_eq!((d.msg_type, d.xid, d.chaddr), (msg::DISCOVER, 7, MAC));
        assert_eq!(decide(&d, &l), Some(msg::OFFER));
        let r = parse_request(&client_message(
            msg::REQUEST,
            8,
            MAC,
            Some(l.ip),
            Some(l.gateway),
        ))
        .unwrap();
        assert_eq!(decide(&r, &l), Some(msg::ACK));
        let wrong = parse_request(&client_message(
            msg::REQUEST,
            8,
            MAC,
            Some(Ipv4Addr::new(172, 31, 0, 99)),
            None,
        ));
        assert_eq!(decide(&wrong.unwrap(), &l), Some(msg::NAK));
        let other = client_message(
            msg::REQUEST,
            8,
            MAC,
            Some(l.ip),
            Some(Ipv4Addr::new(10, 0, 0, 1)),
        );
        assert_eq!(decide(&parse_request(&other).unwrap(), &l), None);
        let rel = parse_request(&client_message(msg::RELEASE, 8, MAC, None, None)).unwrap();
        assert_eq!(decide(&rel, &l), None);
    }

    #[test]
    fn parse_rejects_malformed() {
        assert_eq!(parse_request(&[1; 100]), Err(DhcpError::Truncated(100)));
        let mut m = client_message(msg::DISCOVER, 1, MAC, None, None);
        m[0] = 2;
        assert_eq!(parse_request(&m), Err(DhcpError::NotRequest(2)));
        m[0] = 1;
        m[236] = 0;
        assert_eq!(parse_request(&m), Err(DhcpError::NoMagic));
        let mut m = client_message(msg::DISCOVER, 1, MAC, None, None);
        m.truncate(241);
        m[240] = 53;
        assert_eq!(parse_request(&m), Err(DhcpError::BadOption(53)));
        let mut m = client_message(msg::DISCOVER, 1, MAC, None, None);
        m[242] = 0; // message type option value 0 = none
        assert_eq!(parse_request(&m), Err(DhcpError::NoMessageType));
    }

    #[test]
    fn offer_is_a_valid_unicast_frame_with_all_options() {
        let l = lease();
        let d = parse_request(&client_message(msg::DISCOVER, 0xabcd, MAC, None, None)).unwrap();
        let mut out = [0u8; MAX_REPLY_LEN];
        let n = write_reply(&mut out, &d, msg::OFFER, &l);
        let p = SlicedPacket::from_ethernet(&out[..n]).unwrap();
        let Some(etherparse::LinkSlice::Ethernet2(eth)) = p.link else {
            panic!("eth")
        };
        assert_eq!((eth.destination(), eth.source()), (MAC, l.server_mac));
        let Some(NetSlice::Ipv4(ip)) = p.net else {
            panic!("ipv4")
        };
        assert_eq!(ip.header().source_addr(), l.gateway);
        assert_eq!(ip.header().destination_addr(), l.ip);
        assert_eq!(checksum(&out[14..34]), 0);
        let Some(TransportSlice::Udp(u)) = p.transport else {
            panic!("udp")
        };
        assert_eq!((u.source_port(), u.destination_port()), (67, 68));
        let want = u
            .to_header()
            .calc_checksum_ipv4(&ip.header().to_header(), u.payload())
            .unwrap();
        assert_eq!(u.checksum(), want);
        let r = parse_reply(u.payload()).unwrap();
        assert_eq!(
            r,
            DhcpReply {
                msg_type: msg::OFFER,
                xid: 0xabcd,
                yiaddr: l.ip,
                chaddr: MAC,
                server_id: Some(l.gateway),
                mask: Some(Ipv4Addr::new(255, 255, 0, 0)),
                router: Some(l.gateway),
                lease_secs: Some(3600),
            }
        );
    }

    #[test]
    fn nak_and_broadcast_flag_go_to_broadcast() {
        let l = lease();
        let mut m = client_message(msg::DISCOVER, 1, MAC, None, None);
        m[10] = 0x80;
        let d = parse_request(&m).unwrap();
        let mut out = [0u8; MAX_REPLY_LEN];
        let n = write_reply(&mut out, &d, msg::OFFER, &l);
        assert_eq!(&out[0..6], &[0xff; 6]);
        assert_eq!(&out[30..34], &[255; 4]);
        let r = parse_reply(&out[42..n]).unwrap();
        assert_eq!(r.yiaddr, l.ip);
        let n = write_reply(&mut out, &d, msg::NAK, &l);
        let r = parse_reply(&out[42..n]).unwrap();
        assert_eq!(
            (r.msg_type, r.yiaddr, r.lease_secs),
            (msg::NAK, Ipv4Addr::UNSPECIFIED, None)
        );
    }

    #[test]
    fn mask_and_broadcast() {
        let mut l = lease();
        assert_eq!(l.broadcast(), Ipv4Addr::new(172, 31, 255, 255));
        l.prefix_len = 24;
        assert_eq!(l.mask(), Ipv4Addr::new(255, 255, 255, 0));
        l.prefix_len = 0;
        assert_eq!(l.mask(), Ipv4Addr::UNSPECIFIED);
    }
}
