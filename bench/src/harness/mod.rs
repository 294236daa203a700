//! The end-to-end benchmark harness behind `e2ebench` (DESIGN §6, issue 6):
//! every path between two namespaces measured under the same loads in one run,
//! and the report written from the results.
//!
//! * [`api`]: the management-socket client (mgmt's own request types).
//! * [`exec`]: processes under deadlines, namespace guards, Ctrl-C, CPU samples.
//! * [`paths`]: the paths (sgswitch, bare wire, veth, bridge + nftables, Open
//!   vSwitch userspace), each set up in namespaces and torn down by its guard.
//! * [`rules`]: the same N-rule policy as sgswitch commands, nftables and
//!   OpenFlow.
//! * [`load`]: iperf3 TCP, flowgen new flows and small-UDP, nmap, ping.
//! * [`edit`]: rule-edit latency under load, CLI round trip.
//! * [`report`]: results, `docs/benchmarks.md` and the SVG chart.
//!
//! Lab safety: namespaces only (never the root namespace), every load bounded
//! in time and count, every process killed by PID on teardown.

pub mod api;
pub mod edit;
pub mod exec;
pub mod load;
pub mod paths;
pub mod report;
pub mod rules;
