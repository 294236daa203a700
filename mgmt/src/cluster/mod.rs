//! Cluster mode (issue 14): many hosts, one security-group domain, on etcd.
//!
//! * [`etcd`]: a blocking etcd v3 client over etcd's JSON gateway (HTTP/1.1 on
//!   `std::net`): range, put, delete, txn, compaction, watch, leases, with
//!   several endpoints and a deadline on every call.
//! * [`watch`]: the resumable watch stream of that client.
//! * [`keys`]: the versioned key layout under [`keys::PREFIX`] and the serde
//!   records stored at those keys.
//! * [`mirror`]: a daemon's copy of the model (read at R, then watch batches),
//!   with each key's revisions, as the single-host store's [`crate::store::Loaded`].
//!
//! The design these pieces serve (key layout, one transaction per edit, watch
//! and compaction handling, host leases, acknowledgements, the VXLAN-GBP
//! overlay) is in `docs/cluster.md`.
//!
//! Why the JSON gateway and not gRPC: the `etcd-client` crate generates its
//! gRPC code with `protoc` at build time, and `sgswitch` must build on a fresh
//! machine with only Rust. The gateway is part of every etcd server since 3.3
//! (`/v3/...` paths since 3.4), speaks plain HTTP/1.1 + JSON, and streams watch
//! responses as newline-separated JSON objects in a chunked body, which a small
//! blocking client reads without an async runtime.

pub mod etcd;
mod http;
pub mod keys;
pub mod mirror;
pub mod node;
pub mod watch;
