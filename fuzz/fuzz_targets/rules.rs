//! libFuzzer entry point of the `rules` target: see `sgswitch_fuzz::rules`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sgswitch_fuzz::rules::run(data));
