//! libFuzzer entry point of the `ec2` target: see `sgswitch_fuzz::ec2`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sgswitch_fuzz::ec2::run(data));
