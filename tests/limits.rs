//! Specs near the kernel's limits on a program's arguments and environment: a build step's
//! sandbox spec larger than one argument (128 KiB) still starts; a single value larger than the
//! kernel passes fails at its step, named.

mod common;

use common::{Kind, TestStore, privileged};

#[test]
fn a_step_whose_sandbox_spec_is_larger_than_one_argument_runs() {
    if !privileged("a_step_whose_sandbox_spec_is_larger_than_one_argument_runs") {
        return;
    }
    let t = TestStore::new(Kind::Overlay, "limits");
    // Three 60 KiB values: each fits in one argument, the step's spec (all three) does not.
    let v = "v".repeat(60 * 1024);
    let spec = t.spec(
        "env.kdl",
        &format!(
            "name \"big\"\nbase \"tar\" \"busybox.tar.gz\"\nlayer \"a\" {{\n  env A=\"{v}\" B=\"{v}\" C=\"{v}\"\n  run \"echo ${{#A}} ${{#B}} ${{#C}} > /lengths\"\n}}\n"
        ),
    );
    let root = t.apply(&spec).root();
    assert_eq!(
        std::fs::read_to_string(root.join("lengths")).unwrap(),
        "61440 61440 61440\n"
    );
    // One value over the kernel's 128 KiB: refused by the compiler, located, and named short in
    // the message (the report still quotes its spec line).
    let too_big = "w".repeat(200 * 1024);
    let spec = t.spec(
        "big.kdl",
        &format!(
            "name \"bigger\"\nbase \"tar\" \"busybox.tar.gz\"\nlayer \"b\" {{\n  env W=\"{too_big}\"\n  run \"true\"\n}}\n"
        ),
    );
    let r = t.envc(&["apply", spec.to_str().unwrap()]);
    assert_eq!(r.code, 3, "{}", &r.stderr[..r.stderr.len().min(2000)]);
    assert!(
        r.stderr.contains("bad_expansion") && r.stderr.contains("(204800 bytes)"),
        "{}",
        &r.stderr[..r.stderr.len().min(2000)]
    );
}
