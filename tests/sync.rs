//! Sync suppression in build steps: seccomp covers static programs and leaves open flags alone;
//! `off` lets every call through. (The shim is exercised in a glibc root by tests/debian.rs, and on
//! its own by shim/tests.)

mod common;

use common::{Kind, TestStore, privileged};

fn seccomp_and_off(kind: Kind) {
    let t = TestStore::new(kind, "sync");
    let bin = common::synccheck(&t.specs, true);
    let name = bin.file_name().unwrap().to_str().unwrap().to_owned();
    let spec = t.spec(
        "env.kdl",
        &format!(
            "name \"sync\"\nbase \"tar\" \"busybox.tar.gz\"\n\
             layer \"tools\" {{ copy \"{name}\" \"/usr/bin/synccheck\" mode=\"0755\" }}\n\
             layer \"checks\" {{\n  run \"synccheck /tmp/a > /seccomp.txt\" sync=\"seccomp\"\n  run \"synccheck /tmp/b > /off.txt\"\n  run \"synccheck /tmp/c > /off-explicit.txt\" sync=\"off\"\n}}\n"
        ),
    );
    let root = t.apply(&spec).root();
    let read = |f: &str| std::fs::read_to_string(root.join(f)).unwrap();
    assert_eq!(read("seccomp.txt"), "fsync_open=0 fsync_closed=0/0 osync=1\n", "seccomp: sync calls return 0, O_SYNC stays");
    assert_eq!(read("off.txt"), "fsync_open=0 fsync_closed=-1/9 osync=1\n", "run steps default to off");
    assert_eq!(read("off-explicit.txt"), read("off.txt"));
}

#[test]
fn seccomp_and_off_overlay() {
    if privileged("seccomp_and_off_overlay") {
        seccomp_and_off(Kind::Overlay);
    }
}

#[test]
fn seccomp_and_off_btrfs() {
    if privileged("seccomp_and_off_btrfs") {
        seccomp_and_off(Kind::Btrfs);
    }
}
