//! The published port table: an immutable map of attached ports that workers
//! load once per burst (arc-swap) and the control plane replaces on every change.
//!
//! Contract:
//! * A [`PortTable`] never changes after it is built; adding or removing a port
//!   builds a new one. Workers hold an `Arc` to it for at most one burst, so a
//!   removed port's queues are dropped (fds closed) once the last burst using it
//!   ends.
//! * Lookups on the hot path are an address → port hash lookup with a
//!   multiplicative hash of the `u32` (no SipHash), and a direct uplink field.
//! * A [`Port`] carries its own counters and a `gone` tombstone: the first worker
//!   that sees `PortError::Gone` sets it, from then on every worker skips the port
//!   and drops frames for it (`PortGone`), and the housekeeper removes it from the
//!   table off the hot path.
//! * A [`Port`] also carries a `leased` flag: set (once, by whichever worker sent
//!   it) when the switch's DHCP server acknowledged a lease on the port. The
//!   control plane reads it ([`crate::Datapath::port_status`]) to tell a booted
//!   guest from one still starting; the worker only loads it (no store, so no
//!   cache-line ping-pong) after the first ACK.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use filter::Mac;

use crate::config::{PortId, PortRole};
use crate::counters::PortCounterSet;
use crate::port::PortQueue;

/// A hasher for address keys (`u32` IPv4, `u128` IPv6): one multiply
/// (Fibonacci hashing). The keys are lab data (the control plane's
/// addresses), not packet data, so a cheap hash is safe.
#[derive(Default, Clone, Copy)]
pub struct AddrHasher(u64);

impl Hasher for AddrHasher {
    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(*b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    #[inline]
    fn write_u32(&mut self, n: u32) {
        self.0 = (u64::from(n) ^ self.0).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
    #[inline]
    fn write_u128(&mut self, n: u128) {
        let x = (n as u64) ^ ((n >> 64) as u64).rotate_left(29);
        self.0 = (x ^ self.0).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        self.0 ^= self.0 >> 29;
    }
}

type U32Map<V> = HashMap<u32, V, BuildHasherDefault<AddrHasher>>;

/// The role of a port as the datapath uses it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Instance { mac: Mac, ip: Ipv4Addr },
    Uplink,
}

/// One attached port.
pub struct Port {
    pub id: PortId,
    pub name: String,
    pub role: PortRole,
    pub kind: Kind,
    /// Queue `w` belongs to worker `w`.
    pub queues: Vec<Box<dyn PortQueue>>,
    pub counters: PortCounterSet,
    /// Tombstone: set once a queue reported the port gone.
    pub gone: AtomicBool,
    /// For the uplink: the last source MAC seen from it (0 = none yet), used to
    /// address frames that instances sent to the gateway's MAC.
    pub learned_mac: AtomicU64,
    /// Set once the switch's DHCP server sent a DHCPACK on this port (the
    /// instance behind it configured its address: it is up).
    pub leased: AtomicBool,
}

impl Port {
    pub fn new(id: PortId, name: String, role: PortRole, queues: Vec<Box<dyn PortQueue>>) -> Port {
        let kind = match &role {
            PortRole::Instance { mac, ip, .. } => Kind::Instance { mac: *mac, ip: *ip },
            PortRole::Uplink => Kind::Uplink,
        };
        let workers = queues.len();
        Port {
            id,
            name,
            role,
            kind,
            queues,
            counters: PortCounterSet::new(workers),
            gone: AtomicBool::new(false),
            learned_mac: AtomicU64::new(0),
            leased: AtomicBool::new(false),
        }
    }

    /// Record that a DHCPACK went out on this port (a load, and a store only
    /// the first time).
    #[inline]
    pub fn mark_leased(&self) {
        if !self.leased.load(Ordering::Relaxed) {
            self.leased.store(true, Ordering::Relaxed);
        }
    }

    /// Whether a DHCPACK went out on this port.
    #[inline]
    pub fn is_leased(&self) -> bool {
        self.leased.load(Ordering::Relaxed)
    }

    #[inline]
    pub fn is_gone(&self) -> bool {
        self.gone.load(Ordering::Relaxed)
    }

    /// The instance address, if this is an instance port.
    pub fn ip(&self) -> Option<Ipv4Addr> {
        match self.kind {
            Kind::Instance { ip, .. } => Some(ip),
            Kind::Uplink => None,
        }
    }
}

/// Encode a MAC for [`Port::learned_mac`] (bit 48 marks "known").
#[inline]
pub fn mac_to_u64(m: Mac) -> u64 {
    1 << 48
        | u64::from(m[0]) << 40
        | u64::from(m[1]) << 32
        | u64::from(u32::from_be_bytes([m[2], m[3], m[4], m[5]]))
}

/// Decode [`Port::learned_mac`].
#[inline]
pub fn u64_to_mac(v: u64) -> Option<Mac> {
    if v >> 48 == 0 {
        return None;
    }
    let b = v.to_be_bytes();
    Some([b[2], b[3], b[4], b[5], b[6], b[7]])
}

/// An immutable snapshot of the attached ports.
#[derive(Default)]
pub struct PortTable {
    /// All ports, in id order (the order workers poll them).
    pub ports: Vec<Arc<Port>>,
    by_ip: U32Map<Arc<Port>>,
    by_id: U32Map<Arc<Port>>,
    pub uplink: Option<Arc<Port>>,
    /// Bumped by the control plane on every change (workers resync epoll on it).
    pub version: u64,
}

impl PortTable {
    /// Build from a list of ports (ids unique, at most one uplink, instance
    /// addresses unique — the control plane checks these first).
    pub fn build(mut ports: Vec<Arc<Port>>, version: u64) -> PortTable {
        ports.sort_by_key(|p| p.id);
        let mut t = PortTable {
            version,
            ..PortTable::default()
        };
        for p in &ports {
            match p.kind {
                Kind::Instance { ip, .. } => {
                    t.by_ip.insert(u32::from(ip), p.clone());
                }
                Kind::Uplink => t.uplink = Some(p.clone()),
            }
            t.by_id.insert(p.id.0, p.clone());
        }
        t.ports = ports;
        t
    }

    /// The instance port owning `ip`.
    #[inline]
    pub fn by_ip(&self, ip: Ipv4Addr) -> Option<&Arc<Port>> {
        self.by_ip.get(&u32::from(ip))
    }

    #[inline]
    pub fn by_id(&self, id: PortId) -> Option<&Arc<Port>> {
        self.by_id.get(&id.0)
    }

    pub fn len(&self) -> usize {
        self.ports.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ports.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn port(id: u32, role: PortRole) -> Arc<Port> {
        let (qs, _peer) = crate::mem::mem_port(1);
        Arc::new(Port::new(PortId(id), format!("p{id}"), role, qs))
    }

    #[test]
    fn lookups_by_ip_id_and_uplink() {
        let a = port(
            2,
            PortRole::Instance {
                id: "i-a".into(),
                mac: [2, 0, 0, 0, 0, 2],
                ip: Ipv4Addr::new(10, 0, 0, 2),
            },
        );
        let u = port(1, PortRole::Uplink);
        let t = PortTable::build(vec![a.clone(), u.clone()], 7);
        assert_eq!(t.version, 7);
        assert_eq!(t.len(), 2);
        assert_eq!(t.ports[0].id, PortId(1), "sorted by id");
        assert_eq!(
            t.by_ip(Ipv4Addr::new(10, 0, 0, 2)).map(|p| p.id),
            Some(PortId(2))
        );
        assert!(t.by_ip(Ipv4Addr::new(10, 0, 0, 3)).is_none());
        assert_eq!(t.by_id(PortId(1)).map(|p| p.name.as_str()), Some("p1"));
        assert_eq!(t.uplink.as_ref().map(|p| p.id), Some(PortId(1)));
    }

    #[test]
    fn learned_mac_round_trip() {
        assert_eq!(u64_to_mac(0), None);
        let m = [0xfe, 1, 2, 3, 4, 0xff];
        assert_eq!(u64_to_mac(mac_to_u64(m)), Some(m));
        assert_eq!(u64_to_mac(mac_to_u64([0; 6])), Some([0; 6]));
    }
}
