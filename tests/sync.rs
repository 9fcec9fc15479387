//! Sync suppression in build steps: seccomp covers static programs and leaves open flags alone;
//! `off` lets every call through. (The shim is exercised in a glibc root by tests/debian.rs, and on
//! its own by shim/tests.)

mod common;

use common::{Kind, TestStore, privileged};

fn seccomp_and_off(kind: Kind) {
    let t = TestStore::new(kind, "sync");
    let bin = common::synccheck(&t.specs, true);
    let name = bin.file_name().unwrap().to_str().unwrap().to_owned();
    // A 32-bit static program: its sync calls are compat syscalls, which the filter covers too.
    let bin32 = common::synccheck_with(&t.specs, true, true);
    let name32 = bin32.file_name().unwrap().to_str().unwrap().to_owned();
    let spec = t.spec(
        "env.kdl",
        &format!(
            "name \"sync\"\nbase \"tar\" \"busybox.tar.gz\"\n\
             layer \"tools\" {{\n  copy \"{name}\" \"/usr/bin/synccheck\" mode=\"0755\"\n  copy \"{name32}\" \"/usr/bin/synccheck32\" mode=\"0755\"\n}}\n\
             layer \"checks\" {{\n  run \"synccheck /tmp/a > /seccomp.txt\" sync=\"seccomp\"\n  run \"synccheck32 /tmp/d > /seccomp32.txt; synccheck32 /tmp/e > /dev/null\" sync=\"seccomp\"\n  run \"synccheck32 /tmp/f > /off32.txt\"\n  run \"synccheck /tmp/b > /off.txt\"\n  run \"synccheck /tmp/c > /off-explicit.txt\" sync=\"off\"\n}}\n"
        ),
    );
    let root = t.apply(&spec).root();
    let read = |f: &str| std::fs::read_to_string(root.join(f)).unwrap();
    assert_eq!(
        read("seccomp.txt"),
        "fsync_open=0 fsync_closed=0/0 osync=1\n",
        "seccomp: sync calls return 0, O_SYNC stays"
    );
    assert_eq!(
        read("off.txt"),
        "fsync_open=0 fsync_closed=-1/9 osync=1\n",
        "run steps default to off"
    );
    assert_eq!(read("off-explicit.txt"), read("off.txt"));
    assert_eq!(
        read("seccomp32.txt"),
        "fsync_open=0 fsync_closed=0/0 osync=1\n",
        "32-bit compat syscalls are covered"
    );
    assert_eq!(
        read("off32.txt"),
        "fsync_open=0 fsync_closed=-1/9 osync=1\n"
    );
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
