//! # switch — the sgswitch datapath
//!
//! Moves frames between ports (TAP, AF_PACKET, in-memory) on per-core poll loops
//! and judges every one of them with the `filter` engine. All `unsafe` and ioctl
//! code lives in [`sys`].
//!
//! Architecture (DESIGN §3-4):
//! * [`Switch::start`] spawns `workers` poll threads ([`worker`]) and a
//!   housekeeper. Every port has one queue per worker; worker `w` reads queue `w`
//!   of every port and transmits on queue `w` of the destination, so no queue is
//!   shared and the fast path takes no lock.
//! * The control plane publishes rule snapshots ([`Switch::publish_rules`]) and
//!   port tables (`add_port`/`remove_port`) with one atomic pointer swap each
//!   (`arc-swap`); workers load both once per burst of up to 32 frames per port.
//! * Per frame, [`pipeline::process`]: parse → source check → ARP/DHCP answered by
//!   the switch ([`arp`], [`dhcp`]) → destination by IPv4 address → shared
//!   lock-free connection tracking + snapshot verdict → transmit, completing TSO
//!   and checksum offloads in software for queues that cannot take them
//!   ([`offload`]), or drop counted by [`filter::DropReason`].
//! * Counters ([`counters`]) are per worker and cache-padded, aggregated by
//!   [`Switch::stats`].
//! * [`capture`]: `sgswitch capture`'s per-worker record rings, armed by one
//!   flag read once per burst.
//! * [`mem`] ports let tests and benchmarks run the datapath without root.
//! * Cluster mode ([`SwitchConfig::overlay`]): instances of other hosts are
//!   reached through VXLAN-GBP on per-worker UDP sockets ([`overlay`], wire
//!   format and trust checks in [`vxlan`]), their addresses and identities from a
//!   [`vxlan::DirectoryTable`] published like the rules
//!   ([`Switch::publish_directory`]).
//! * Flow logs ([`SwitchConfig::flow_log`], [`flowlog`]): per-worker
//!   aggregation tables handed to a logger thread once per interval, written in
//!   the AWS VPC Flow Logs version 2 format.

pub mod afpacket;
pub mod arp;
pub mod capture;
pub mod config;
pub mod counters;
pub mod datapath;
pub mod dhcp;
pub mod flowlog;
pub mod mem;
pub mod nd;
pub mod netns;
pub mod offload;
pub mod overlay;
pub mod pipeline;
pub mod port;
pub mod sys;
pub mod table;
pub mod tap;
pub mod trace;
pub mod tunnel;
pub mod vxlan;
pub mod worker;

pub use config::{OverlayConfig, PollMode, PortId, PortRole, PortSpec, SwitchConfig, SwitchError};
pub use counters::{PortStats, PortTotals, RuleTotals, Stats, UnderlayStats};
pub use datapath::{Datapath, PortStatus, Switch};
pub use flowlog::{FlowLogConfig, FlowLogSink};
pub use mem::{MemFrame, MemOptions, MemPeer, mem_port, mem_port_with};
