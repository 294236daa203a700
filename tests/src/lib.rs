//! # e2e — the end-to-end test lab of sgswitch
//!
//! The tests in `tests/tests/*.rs` run the real `sgswitch` binary with its uplink
//! in a namespace of their own, launch namespace instances through the CLI and
//! check what the outside and other instances can reach with real TCP connects
//! and nmap scans. They need root (namespaces, TAPs); without it every test
//! prints `SKIP` and passes.
//!
//! * [`lab`]: [`Lab`], one daemon + uplink namespace + instances, cleaned up on
//!   drop even when the test panics.
//! * [`ec2out`]: parsing `describe-group`/`authorize` output lines.
//! * [`nmap`]: the parser of nmap's grepable output.
//! * [`run`]: running programs with a deadline.
//! * [`transcript`]: the README's marked shell blocks and how their output is
//!   compared (`tests/tests/readme.rs` runs them).
//! * `src/bin/labhelper.rs`: TCP echo listener, connect prober and stream tool the
//!   lab runs inside namespaces.
//!
//! Lab-safety rules kept here: every address lives in a namespace the test made;
//! nothing is configured in the root namespace; traffic goes only between the
//! lab's namespaces; every program runs under a deadline; processes are killed by
//! PID.

pub mod attack;
pub mod cluster;
pub mod ec2out;
pub mod lab;
pub mod load;
pub mod nmap;
pub mod run;
pub mod transcript;

pub use ec2out::{GroupLine, PermSource, Permission};
pub use lab::{
    AMI, Lab, LabConfig, LabInstance, OUTSIDE, OUTSIDE2, Reach, SUBNET, Stream, is_root,
};
pub use nmap::{PortState, Scan};
