//! Specs built from envc's own nodes (with random arguments, properties and nesting), rendered to
//! KDL text and compiled.
//!
//! With `ENVC_FUZZ_DUMP=DIR`, every rendered spec is also written to DIR (named by its hash), to
//! turn a crash artifact or a corpus into text specs: `ENVC_FUZZ_DUMP=regressions cargo +nightly
//! fuzz run compile_structured artifacts/compile_structured/crash-...`.
#![no_main]

libfuzzer_sys::fuzz_target!(|spec: envc_fuzz::Spec| {
    let text = spec.render();
    if let Some(dir) = std::env::var_os("ENVC_FUZZ_DUMP") {
        let name = format!("structured-{}", fnv1a(text.as_bytes()));
        let _ = std::fs::write(std::path::Path::new(&dir).join(name), &text);
    }
    envc_fuzz::check(text.into_bytes());
});

/// FNV-1a, enough to name dumped files.
fn fnv1a(bytes: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}
