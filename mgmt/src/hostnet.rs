//! What the daemon's start checks about a network namespace, read with one
//! rtnetlink dump each (no `ip` process): its links (name, up, carrier), IPv4
//! addresses and IPv4 routes.
//!
//! Contract:
//! * [`links`], [`addrs`], [`routes`] describe the namespace of the calling
//!   thread (a netlink socket belongs to the namespace it was opened in; run them
//!   inside [`switch::netns::in_netns`] for another one).
//! * [`overlaps`] lists the addresses and routes of the calling thread's namespace
//!   that overlap a range, as `ip` would print them (`route 172.31.0.0/16 dev
//!   eth0`, `address 172.31.4.5/20 on eth0`). Default routes (`/0`), the local
//!   table (the host's own addresses are listed as addresses instead) and
//!   everything on the interface named in `skip_dev` (the daemon's own uplink,
//!   which carries the uplink address after a restart) are left out.
//! * A TAP has carrier exactly while some process holds a queue of it
//!   ([`Link::carrier`]): a persistent TAP left by a killed daemon has none, so it
//!   can be re-attached; one with carrier is somebody else's.

use std::io;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use switch::netns::{rtnl_attrs as attrs, rtnl_dump as dump};

const RTM_NEWLINK: u16 = 16;
const RTM_GETLINK: u16 = 18;
const RTM_NEWADDR: u16 = 20;
const RTM_GETADDR: u16 = 22;
const RTM_NEWROUTE: u16 = 24;
const RTM_GETROUTE: u16 = 26;
const AF_INET: u8 = 2;
const IFLA_IFNAME: u16 = 3;
const IFLA_CARRIER: u16 = 33;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;
const RTA_TABLE: u16 = 15;
const RT_TABLE_MAIN: u32 = 254;
const RT_TABLE_LOCAL: u32 = 255;
const IFF_UP: u32 = 1;

/// A network interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub up: bool,
    /// `IFLA_CARRIER` (None if the kernel did not say).
    pub carrier: Option<bool>,
}

/// An IPv4 address with its prefix length, on interface `ifname`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Addr {
    pub ifname: String,
    pub net: Ipv4Net,
}

/// An IPv4 route.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    pub dst: Ipv4Net,
    pub dev: Option<String>,
    pub via: Option<Ipv4Addr>,
    pub table: u32,
}

impl std::fmt::Display for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.dst)?;
        if let Some(v) = self.via {
            write!(f, " via {v}")?;
        }
        if let Some(d) = &self.dev {
            write!(f, " dev {d}")?;
        }
        if self.table != RT_TABLE_MAIN {
            write!(f, " table {}", self.table)?;
        }
        Ok(())
    }
}

fn ipv4(b: &[u8]) -> Option<Ipv4Addr> {
    <[u8; 4]>::try_from(b).ok().map(Ipv4Addr::from)
}

fn u32_of(b: &[u8]) -> Option<u32> {
    <[u8; 4]>::try_from(b).ok().map(u32::from_ne_bytes)
}

/// The interfaces of the calling thread's namespace.
pub fn links() -> io::Result<Vec<Link>> {
    let msgs = dump(RTM_GETLINK, RTM_NEWLINK, &[0u8; 16])?;
    Ok(msgs
        .iter()
        .filter(|m| m.len() >= 16)
        .map(|m| {
            let index = u32::from_ne_bytes(m[4..8].try_into().unwrap_or_default());
            let flags = u32::from_ne_bytes(m[8..12].try_into().unwrap_or_default());
            let mut link = Link {
                index,
                name: String::new(),
                up: flags & IFF_UP != 0,
                carrier: None,
            };
            for (t, v) in attrs(m, 16) {
                match t {
                    IFLA_IFNAME => {
                        link.name = String::from_utf8_lossy(v).trim_end_matches('\0').to_owned()
                    }
                    IFLA_CARRIER => link.carrier = v.first().map(|&c| c != 0),
                    _ => {}
                }
            }
            link
        })
        .collect())
}

fn name_of(links: &[Link], index: u32) -> String {
    links
        .iter()
        .find(|l| l.index == index)
        .map_or_else(|| format!("if{index}"), |l| l.name.clone())
}

/// The IPv4 addresses of the calling thread's namespace.
pub fn addrs() -> io::Result<Vec<Addr>> {
    let links = links()?;
    let msgs = dump(RTM_GETADDR, RTM_NEWADDR, &[AF_INET, 0, 0, 0, 0, 0, 0, 0])?;
    Ok(msgs
        .iter()
        .filter(|m| m.len() >= 8 && m[0] == AF_INET)
        .filter_map(|m| {
            let prefix = m[1];
            let index = u32::from_ne_bytes(m[4..8].try_into().unwrap_or_default());
            let (mut local, mut address) = (None, None);
            for (t, v) in attrs(m, 8) {
                match t {
                    IFA_LOCAL => local = ipv4(v),
                    IFA_ADDRESS => address = ipv4(v),
                    _ => {}
                }
            }
            let ip = local.or(address)?;
            Some(Addr {
                ifname: name_of(&links, index),
                net: Ipv4Net::new(ip, prefix).ok()?,
            })
        })
        .collect())
}

/// The IPv4 routes of the calling thread's namespace, all tables.
pub fn routes() -> io::Result<Vec<Route>> {
    let links = links()?;
    let msgs = dump(
        RTM_GETROUTE,
        RTM_NEWROUTE,
        &[AF_INET, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
    )?;
    Ok(msgs
        .iter()
        .filter(|m| m.len() >= 12 && m[0] == AF_INET)
        .filter_map(|m| {
            let dst_len = m[1];
            let mut table = u32::from(m[4]);
            let (mut dst, mut dev, mut via) = (Ipv4Addr::UNSPECIFIED, None, None);
            for (t, v) in attrs(m, 12) {
                match t {
                    RTA_DST => dst = ipv4(v)?,
                    RTA_OIF => dev = u32_of(v).map(|i| name_of(&links, i)),
                    RTA_GATEWAY => via = ipv4(v),
                    RTA_TABLE => table = u32_of(v).unwrap_or(table),
                    _ => {}
                }
            }
            Some(Route {
                dst: Ipv4Net::new(dst, dst_len).ok()?,
                dev,
                via,
                table,
            })
        })
        .collect())
}

/// Whether two networks share an address.
pub fn nets_overlap(a: Ipv4Net, b: Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// The addresses and routes of the calling thread's namespace that overlap
/// `range`, described as `ip` prints them; see the module doc for what is left
/// out.
pub fn overlaps(range: Ipv4Net, skip_dev: Option<&str>) -> io::Result<Vec<String>> {
    let mine = |dev: Option<&str>| skip_dev.is_some() && dev == skip_dev;
    let mut found = Vec::new();
    for r in routes()? {
        if r.table == RT_TABLE_LOCAL || r.dst.prefix_len() == 0 || mine(r.dev.as_deref()) {
            continue;
        }
        if nets_overlap(r.dst, range) {
            found.push(format!("route {r}"));
        }
    }
    for a in addrs()? {
        if !mine(Some(&a.ifname)) && range.contains(&a.net.addr()) {
            found.push(format!("address {} on {}", a.net, a.ifname));
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_loopback_and_its_routes() {
        let links = links().unwrap();
        assert!(links.iter().any(|l| l.name == "lo"), "{links:?}");
        // lo's 127.0.0.1/8 is an address of every namespace that has lo up; the
        // test namespace may have it down, so only check the shapes parse.
        let addrs = addrs().unwrap();
        for a in &addrs {
            assert!(!a.ifname.is_empty());
        }
        let routes = routes().unwrap();
        for r in &routes {
            assert!(r.dst.prefix_len() <= 32);
        }
        let lo = overlaps("127.0.0.0/8".parse().unwrap(), None).unwrap();
        if addrs.iter().any(|a| a.ifname == "lo") {
            assert!(lo.iter().any(|s| s.contains("127.0.0.1/8 on lo")), "{lo:?}");
        }
        // Nothing of lo is reported when lo is skipped.
        assert!(
            overlaps("127.0.0.0/8".parse().unwrap(), Some("lo"))
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn overlap_is_symmetric_containment() {
        let n = |s: &str| s.parse::<Ipv4Net>().unwrap();
        assert!(nets_overlap(n("172.31.0.0/16"), n("172.31.4.0/24")));
        assert!(nets_overlap(n("172.31.4.0/24"), n("172.31.0.0/16")));
        assert!(nets_overlap(n("172.16.0.0/12"), n("172.31.0.0/16")));
        assert!(!nets_overlap(n("172.31.0.0/16"), n("172.30.0.0/16")));
    }
}
