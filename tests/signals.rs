//! Build steps and `envc run` start with the signal state programs expect: SIGPIPE at its default
//! action (envc itself, a Rust program, ignores it) and nothing blocked. With SIGPIPE ignored,
//! `yes | head` makes `yes` spin on EPIPE forever and the apply never ends.

mod common;

use common::{Kind, TestStore, privileged};

#[test]
fn steps_and_run_start_with_default_signals() {
    if !privileged("steps_and_run_start_with_default_signals") {
        return;
    }
    let t = TestStore::new(Kind::Overlay, "signals");
    let spec = t.spec(
        "env.kdl",
        "name \"sig\"\nbase \"tar\" \"busybox.tar.gz\"\nlayer \"a\" {\n  run \"grep -E '^Sig(Ign|Blk)' /proc/self/status > /status\"\n  run \"timeout 20 sh -c 'yes | head -c 10 > /yes'\"\n}\n",
    );
    let root = t.apply(&spec).root();
    let status = std::fs::read_to_string(root.join("status")).unwrap();
    for line in status.lines() {
        let mask = u64::from_str_radix(line.split_whitespace().nth(1).unwrap(), 16).unwrap();
        assert_eq!(
            mask & (1 << 12),
            0,
            "SIGPIPE ignored or blocked in a step: {line}"
        );
        if line.starts_with("SigBlk") {
            assert_eq!(mask, 0, "{line}");
        }
    }
    assert_eq!(std::fs::read(root.join("yes")).unwrap(), b"y\ny\ny\ny\ny\n");
    let r = t.envc(&[
        "run",
        spec.to_str().unwrap(),
        "--",
        "sh",
        "-c",
        "yes | head -c 4; grep ^SigIgn /proc/self/status",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let ign = r.stdout.lines().find(|l| l.starts_with("SigIgn")).unwrap();
    let mask = u64::from_str_radix(ign.split_whitespace().nth(1).unwrap(), 16).unwrap();
    assert_eq!(mask & (1 << 12), 0, "SIGPIPE ignored in envc run: {ign}");
}
