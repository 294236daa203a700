//! The switch's configuration and the public types of its control interface
//! (ports, roles, ids, errors).
//!
//! Contract: these are plain values the control plane builds and hands to
//! [`crate::Switch`]; validation happens in `Switch::start` / `Switch::add_port`,
//! which name the bad value in their [`SwitchError`].

use std::net::{Ipv4Addr, SocketAddrV4};

use filter::Mac;
use ipnet::Ipv4Net;

use crate::flowlog::FlowLogConfig;
use crate::port::PortQueue;

/// How a worker waits for work.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum PollMode {
    /// Spin forever (DPDK-style): lowest latency, one core per worker at 100%.
    Busy,
    /// Spin while there is work and for a short while after (only when the
    /// last idle gap was that short: `worker::IdleSpin`), then park until a
    /// queue polls readable (or a timeout): an idle switch uses ~0% CPU.
    #[default]
    Adaptive,
}

/// Configuration of a [`crate::Switch`].
#[derive(Clone, Debug)]
pub struct SwitchConfig {
    /// Worker (poll) threads; every port has exactly this many queues.
    pub workers: usize,
    pub poll: PollMode,
    /// Pin worker `w` to core `w % cores` with `core_affinity`.
    pub pin_cores: bool,
    /// Nice value of the worker threads (0: as any thread; lower runs
    /// sooner). On cores shared with busy processes a frame otherwise waits
    /// for its worker's next turn (milliseconds when the cores are
    /// oversubscribed). Refused (no `CAP_SYS_NICE`): a warning, the worker
    /// runs at the process's nice value.
    pub worker_nice: i32,
    /// Run the worker threads at `SCHED_FIFO` with this real-time priority
    /// (1..=99; `SCHED_RESET_ON_FORK`), ahead of every normally scheduled
    /// thread, so a frame does not wait for its worker's turn. `None` (the
    /// default): normal scheduling at `worker_nice`. Refused (no
    /// `CAP_SYS_NICE`, no real-time budget): a warning, and the worker runs
    /// at `worker_nice`. Only with [`PollMode::Adaptive`], whose workers
    /// block in `epoll_wait` between bursts: a spinning real-time thread
    /// would take its core from everything else
    /// ([`SwitchError::FifoBusyPoll`]).
    pub worker_fifo: Option<i32>,
    /// Connection tracking: capacity, quotas, timeouts, revoke mode.
    pub ct: filter::CtConfig,
    /// The instances' subnet. Its first host is the virtual gateway / DHCP server.
    pub subnet: Ipv4Net,
    /// The instances' IPv6 /64, advertised to guests for SLAAC
    /// ([`crate::nd`]); `None`: no router advertisements.
    pub subnet6: Option<ipnet::Ipv6Net>,
    /// Lease time handed out by the DHCP server.
    pub dhcp_lease_secs: u32,
    /// Cluster mode: carry frames to instances of other hosts in VXLAN-GBP
    /// ([`crate::overlay`]). `None` (the default) is the single-host switch,
    /// with no underlay socket and no per-frame cost.
    pub overlay: Option<OverlayConfig>,
    /// Flow logs in the AWS VPC Flow Logs format ([`crate::flowlog`]). `None`
    /// (the default): no recording, no per-frame cost beyond one branch.
    pub flow_log: Option<FlowLogConfig>,
}

/// The underlay side of cluster mode (docs/cluster.md §6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OverlayConfig {
    /// Local address and UDP port to bind (`--underlay`, port `--vxlan-port`,
    /// default [`crate::vxlan::VXLAN_PORT`]), in the network namespace of the
    /// thread that starts the switch. Other hosts send here.
    pub underlay: SocketAddrV4,
    /// The lab's VNI (24 bits).
    pub vni: u32,
    /// MTU of the underlay path (IPv4 packet size). Inner frames carry at most
    /// `underlay_mtu - 50` bytes of IPv4; TCP beyond that is cut to fit.
    pub underlay_mtu: u32,
    /// Hand TCP super-frames to the kernel whole, encapsulated, with UDP-tunnel
    /// GSO through a TAP in this namespace (`switch::tunnel`, Linux 6.16 and
    /// later): nothing is cut in user space. Off by default: it routes frames
    /// through the host's forwarding path (one interface gets `forwarding=1`),
    /// which a host firewall's FORWARD policy may drop. If the TAP cannot be
    /// made, or the kernel refuses the header, super-frames are cut as without.
    pub tunnel_gso: bool,
}

impl OverlayConfig {
    /// `underlay` and `vni` with a 1500-byte underlay MTU.
    pub fn new(underlay: SocketAddrV4, vni: u32) -> OverlayConfig {
        OverlayConfig {
            underlay,
            vni,
            underlay_mtu: 1500,
            tunnel_gso: false,
        }
    }
}

impl Default for SwitchConfig {
    fn default() -> Self {
        SwitchConfig {
            workers: 1,
            poll: PollMode::Adaptive,
            pin_cores: false,
            worker_nice: 0,
            worker_fifo: None,
            ct: filter::CtConfig::default(),
            subnet: Ipv4Net::new(Ipv4Addr::new(172, 31, 0, 0), 16).unwrap_or_default(),
            subnet6: None,
            dhcp_lease_secs: 3600,
            overlay: None,
            flow_log: None,
        }
    }
}

impl SwitchConfig {
    /// The virtual gateway / DHCP server address: the subnet's first host.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.subnet.network()).wrapping_add(1))
    }
}

/// What is attached behind a port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PortRole {
    /// An instance: its frames must carry `mac` and `ip` (source check), and
    /// frames for `ip` are delivered here.
    Instance { id: String, mac: Mac, ip: Ipv4Addr },
    /// The outside world: never a group member, may not claim instance addresses;
    /// receives what is not for an instance. At most one per switch.
    Uplink,
}

/// A port to attach.
pub struct PortSpec {
    /// For stats: the interface name or the instance id.
    pub name: String,
    pub role: PortRole,
    /// Exactly `workers` queues; queue `w` is used only by worker `w`.
    pub queues: Vec<Box<dyn PortQueue>>,
}

/// A port's handle, unique for the switch's life (never reused).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortId(pub u32);

impl std::fmt::Display for PortId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "port#{}", self.0)
    }
}

/// Errors of the switch's control operations.
#[derive(Debug, thiserror::Error)]
pub enum SwitchError {
    #[error("start switch: workers must be at least 1, got {0}")]
    NoWorkers(usize),
    #[error("start switch: subnet {0} has no room for a gateway and instances")]
    SubnetTooSmall(Ipv4Net),
    #[error(
        "start switch: workers at SCHED_FIFO (--worker-priority fifo) cannot busy-poll \
         (--poll busy): a spinning real-time worker would starve its core; use --poll adaptive"
    )]
    FifoBusyPoll,
    #[error("start switch: worker SCHED_FIFO priority must be 1..=99, got {0}")]
    FifoPriority(i32),
    #[error("spawn worker {worker}")]
    Spawn {
        worker: usize,
        #[source]
        source: std::io::Error,
    },
    #[error("spawn the housekeeper thread")]
    SpawnHousekeeper(#[source] std::io::Error),
    #[error("add port {name}: {got} queues given, the switch has {workers} workers")]
    QueueCount {
        name: String,
        got: usize,
        workers: usize,
    },
    #[error("add port {name}: address {ip} is already used by port {other}")]
    DuplicateIp {
        name: String,
        ip: Ipv4Addr,
        other: String,
    },
    #[error("add port {name}: address {ip} is the gateway's or not a host address")]
    ReservedIp { name: String, ip: Ipv4Addr },
    #[error("add port {name}: MAC {mac:02x?} is not a unicast address")]
    BadMac { name: String, mac: Mac },
    #[error("add port {name}: the switch already has an uplink ({other})")]
    SecondUplink { name: String, other: String },
    #[error("remove port {0}: no such port")]
    NoSuchPort(PortId),
    #[error("overlay: bind the underlay UDP socket to {addr}")]
    OverlayBind {
        addr: SocketAddrV4,
        #[source]
        source: std::io::Error,
    },
    #[error("overlay: VNI {0} does not fit in 24 bits")]
    OverlayVni(u32),
    #[error("flow log: {0}")]
    FlowLogConfig(String),
    #[error("flow log: open {}", path.display())]
    FlowLogOpen {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("flow log: spawn the logger thread")]
    FlowLogSpawn(#[source] std::io::Error),
    #[error("overlay: underlay MTU {0} leaves no room for an inner frame (minimum 576)")]
    OverlayMtu(u32),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_gateway_is_first_host() {
        let c = SwitchConfig::default();
        assert_eq!(c.gateway(), Ipv4Addr::new(172, 31, 0, 1));
        assert_eq!(c.poll, PollMode::Adaptive);
        let c = SwitchConfig {
            subnet: "10.9.8.0/24".parse().unwrap(),
            ..c
        };
        assert_eq!(c.gateway(), Ipv4Addr::new(10, 9, 8, 1));
    }
}
