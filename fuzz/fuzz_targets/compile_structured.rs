//! Specs built from envc's own nodes (with random arguments, properties and nesting), rendered to
//! KDL text and compiled.
#![no_main]

libfuzzer_sys::fuzz_target!(|spec: envc_fuzz::Spec| {
    envc_fuzz::check(spec.render().into_bytes());
});
