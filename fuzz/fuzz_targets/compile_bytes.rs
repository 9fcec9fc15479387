//! Raw bytes as a spec file, through the path `envc check` and `envc plan` take.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    envc_fuzz::check(data.to_vec());
});
