//! The versioned key layout of cluster mode under [`PREFIX`] (see docs/cluster.md).

/// Every sgswitch key starts with this; a new incompatible layout gets `v2`.
pub const PREFIX: &str = "/sgswitch/v1/";
