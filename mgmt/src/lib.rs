//! # mgmt — the sgswitch control plane
//!
//! * [`store`]: the durable SQLite state (one transaction per edit).
//! * [`api`]: the one [`api::Command`] enum, its responses and errors, and the
//!   JSON-lines wire protocol of the Unix socket.
//! * [`core`]: the management core that owns the model, applies commands, writes
//!   the store and publishes snapshots to a dataplane.
//! * [`daemon`]: `sgswitch up`: management thread, socket server, signals.
//! * [`ec2`]: the EC2 Query API (`--ec2-listen`): HTTP, SigV4 per-owner access
//!   keys, EC2 actions turned into [`api::Command`]s for the same core.
//! * [`dataplane`]: the real data plane behind the core: the switch, its uplink
//!   and namespace instances.
//! * [`cli`]: the `sgswitch` command line and its EC2-tool output format.
//! * [`json`]: the documented, versioned shapes of `--json` output.
//! * [`metrics`]: Prometheus text of the switch statistics.
//! * [`pcapng`]: the capture file format of `sgswitch capture` (writer, reader).
//! * [`capture`]: `sgswitch capture`'s stream: daemon side and client side.
//! * [`instances`]: namespace instances and the uplink TAP.
//! * [`qemu`]: QEMU guest instances (`run-instances --qemu`).
//! * [`sched`]: scheduling priority of the edit path's threads.
//! * [`hostnet`]: rtnetlink reads of a namespace's links, addresses and routes
//!   (the daemon's start checks).

#![forbid(unsafe_code)]

pub mod api;
pub mod capture;
pub mod cli;
pub mod cluster;
pub mod core;
pub mod daemon;
pub mod dataplane;
pub mod ec2;
pub mod hostnet;
pub mod instances;
pub mod ipv6;
pub mod json;
pub mod logfmt;
pub mod metrics;
pub mod pcapng;
pub mod qemu;
pub mod sched;
pub mod store;
pub mod testutil;
