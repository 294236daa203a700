//! Shared helpers of the sgswitch benchmarks.
