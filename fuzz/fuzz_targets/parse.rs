//! libFuzzer entry point of the `parse` target: see `sgswitch_fuzz::parse`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sgswitch_fuzz::parse::run(data));
