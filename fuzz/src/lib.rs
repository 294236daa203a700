//! # sgswitch-fuzz — the fuzz targets' harnesses
//!
//! cargo-fuzz layout: `fuzz_targets/*.rs` are one-line libFuzzer entry points,
//! each calling one `run` here, so the same checks also run as ordinary tests
//! (`cargo test` in this directory replays the committed seed corpus through
//! them) and from the seed generator.
//!
//! Targets (see each module for what it checks):
//! * [`parse`]: any bytes → `filter::parse_frame`: no panic, facts and offsets
//!   agree with the bytes.
//! * [`pipeline`]: frames from any port through the whole in-memory datapath;
//!   every verdict equals the reference evaluator's, source check and delivery
//!   hold.
//! * [`api`]: any bytes as a socket request line, then structured commands
//!   against the management core: an error changes nothing, successes agree
//!   with `filter::model` and survive a reload of the store.
//! * [`ec2`]: any bytes as HTTP requests to the EC2 Query API: the HTTP
//!   reader, parameter decoder, SigV4 parser/verifier and wildcard matcher
//!   never panic, keep their limits, and nothing unsigned gets through.
//! * [`rules`]: `authorize`/`revoke` argument vectors through the CLI parser,
//!   `RuleSpec::expand`, and the CIDR/port/ICMP parsers: accepted input
//!   round-trips through what describe prints.
//!
//! Structured inputs are decoded with [`input::Reader`], which never fails, so
//! every byte string is a valid input.

pub mod api;
pub mod ec2;
pub mod input;
pub mod parse;
pub mod pipeline;
pub mod rules;
pub mod seeds;
