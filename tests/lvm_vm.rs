//! The QEMU harness for LVM tests (tests/vm/run-in-vm.sh): a guest booting Debian's own kernel,
//! which has device-mapper, runs real LVM thin commands. The host's kernel has no device-mapper.

mod common;

use std::process::Command;

#[test]
fn lvm_thin_snapshots_work_in_the_test_vm() {
    if !common::privileged("lvm_thin_snapshots_work_in_the_test_vm") {
        return;
    }
    let root = env!("CARGO_MANIFEST_DIR");
    let out = Command::new(format!("{root}/tests/vm/run-in-vm.sh"))
        .args(["bash", "tests/vm/lvm-smoke.sh"])
        .current_dir(root)
        .output()
        .expect("run tests/vm/run-in-vm.sh");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(
        stdout.contains("origin=one snapshot=two snapshot-of-snapshot=one"),
        "{stdout}"
    );
    assert!(
        stdout.contains("\"lv_tags\":\"envc.id=base\""),
        "LV tags are reported: {stdout}"
    );
}

#[test]
fn the_test_vm_passes_exit_status_and_output() {
    if !common::privileged("the_test_vm_passes_exit_status_and_output") {
        return;
    }
    let root = env!("CARGO_MANIFEST_DIR");
    let out = Command::new(format!("{root}/tests/vm/run-in-vm.sh"))
        .args(["bash", "-c", "uname -r; test -d /lib/modules/$(uname -r)/kernel && echo modules; echo oops >&2; exit 7"])
        .current_dir(root)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(7));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("modules"), "{stdout}");
    assert_ne!(
        stdout.lines().next().unwrap_or(""),
        String::from_utf8_lossy(&Command::new("uname").arg("-r").output().unwrap().stdout).trim(),
        "the guest runs Debian's kernel, not the host's"
    );
    assert_eq!(String::from_utf8_lossy(&out.stderr), "oops\n");
}
