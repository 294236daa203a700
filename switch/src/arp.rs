//! ARP answering: the switch replies to ARP requests for the addresses it knows
//! (instances and the virtual gateway) itself, so nothing is flooded.
//!
//! Contract: [`write_reply`] builds the 42-byte Ethernet/ARP reply to a request in
//! a caller buffer (no allocation) and returns its length. The policy — whom to
//! answer, what to forward — is in `pipeline`; this module only writes bytes.

use std::net::Ipv4Addr;

use filter::Mac;
use filter::parse::{ARP_REPLY, Arp};

/// The MAC the switch answers with for the virtual gateway / DHCP server address:
/// locally administered (bit 1 of the first byte), unicast, "SGW" in ASCII.
pub const GATEWAY_MAC: Mac = [0x02, 0x53, 0x47, 0x57, 0x00, 0x01];

/// Length of an Ethernet + ARP reply (no padding: TAPs and AF_PACKET don't need it).
pub const REPLY_LEN: usize = 42;

/// Write the reply to `req` saying that `req.tpa` is at `answer_mac`, addressed
/// to the requester's sender addresses. `out` must hold [`REPLY_LEN`] bytes.
pub fn write_reply(out: &mut [u8], req: &Arp, answer_mac: Mac) -> usize {
    let f = &mut out[..REPLY_LEN];
    f[0..6].copy_from_slice(&req.sha);
    f[6..12].copy_from_slice(&answer_mac);
    f[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
    f[14..22].copy_from_slice(&[0, 1, 0x08, 0x00, 6, 4, 0, 0]);
    f[20..22].copy_from_slice(&ARP_REPLY.to_be_bytes());
    f[22..28].copy_from_slice(&answer_mac);
    f[28..32].copy_from_slice(&req.tpa.octets());
    f[32..38].copy_from_slice(&req.sha);
    f[38..42].copy_from_slice(&req.spa.octets());
    REPLY_LEN
}

/// Write an ARP request from `sha`/`spa` for `tpa` (used by tests and tools).
pub fn write_request(out: &mut [u8], sha: Mac, spa: Ipv4Addr, tpa: Ipv4Addr) -> usize {
    let f = &mut out[..REPLY_LEN];
    f[0..6].copy_from_slice(&[0xff; 6]);
    f[6..12].copy_from_slice(&sha);
    f[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
    f[14..22].copy_from_slice(&[0, 1, 0x08, 0x00, 6, 4, 0, 1]);
    f[22..28].copy_from_slice(&sha);
    f[28..32].copy_from_slice(&spa.octets());
    f[32..38].copy_from_slice(&[0; 6]);
    f[38..42].copy_from_slice(&tpa.octets());
    REPLY_LEN
}

#[cfg(test)]
mod tests {
    use super::*;
    use filter::parse::{ARP_REQUEST, Parsed, parse_frame};

    #[test]
    fn reply_parses_back_as_the_answer() {
        let mut buf = [0u8; 64];
        let me = [2, 0, 0, 0, 0, 7];
        let n = write_request(
            &mut buf,
            me,
            Ipv4Addr::new(172, 31, 0, 7),
            Ipv4Addr::new(172, 31, 0, 1),
        );
        let Ok(Parsed::Arp { arp: req, eth }) = parse_frame(&buf[..n]) else {
            panic!("request")
        };
        assert_eq!((req.op, eth.dst), (ARP_REQUEST, [0xff; 6]));
        let mut out = [0u8; 64];
        let n = write_reply(&mut out, &req, GATEWAY_MAC);
        let Ok(Parsed::Arp { eth, arp }) = parse_frame(&out[..n]) else {
            panic!("reply")
        };
        assert_eq!((eth.dst, eth.src), (me, GATEWAY_MAC));
        assert_eq!(arp.op, ARP_REPLY);
        assert_eq!(
            (arp.sha, arp.spa),
            (GATEWAY_MAC, Ipv4Addr::new(172, 31, 0, 1))
        );
        assert_eq!((arp.tha, arp.tpa), (me, Ipv4Addr::new(172, 31, 0, 7)));
    }

    #[test]
    fn gateway_mac_is_locally_administered_unicast() {
        assert_eq!(GATEWAY_MAC[0] & 0b11, 0b10);
    }
}
