//! libFuzzer entry point of the `pipeline` target: see `sgswitch_fuzz::pipeline`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sgswitch_fuzz::pipeline::run(data));
