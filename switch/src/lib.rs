//! # switch — the sgswitch datapath
//!
//! Moves frames between ports (TAP, AF_PACKET, in-memory) on per-core poll loops
//! and judges every one of them with the `filter` engine. All `unsafe` and ioctl
//! code lives in [`sys`].

pub mod port;
pub mod sys;
pub mod offload;
pub mod arp;
pub mod dhcp;
pub mod mem;
pub mod tap;
pub mod netns;
pub mod afpacket;
