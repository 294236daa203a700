//! # mgmt — the sgswitch control plane (being written)
