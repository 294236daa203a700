//! (being written) connection tracking.
pub struct Conntrack;
pub struct CtConfig;
pub enum RevokeMode { Revalidate, Keep }
pub struct Timeouts;
