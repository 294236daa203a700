//! libFuzzer entry point of the `api` target: see `sgswitch_fuzz::api`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sgswitch_fuzz::api::run(data));
