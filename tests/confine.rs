//! Hostile build steps (issue 11, confinement): what a `run` step, or the command of `envc run`,
//! must not be able to do to the host or the store, and what it must still be able to do.
//!
//! A step runs as root in its own namespaces; the confinement makes that root a weak one. The
//! probe (tests/common/probe.c, a static x86_64 and a static i386 build, copied into the root)
//! and a few busybox commands attack from inside the step, on overlay and btrfs, once as `run`
//! steps (without and with `network=#true`) and once through `envc run` (with the host's network
//! and with `--no-network`). Expected:
//!
//! - Capabilities: bounding = permitted = effective = CHOWN DAC_OVERRIDE FOWNER FSETID KILL
//!   SETGID SETUID SETPCAP NET_BIND_SERVICE NET_RAW SYS_CHROOT AUDIT_WRITE SETFCAP (NET_RAW with
//!   network or without: programs with `cap_net_raw` file capabilities must start); inheritable and ambient empty; NoNewPrivs 0 (a setuid-root program run by
//!   `user="builder"` gets euid 0).
//! - A seccomp filter (`Seccomp: 2`) that fails mount, umount2 (and i386's umount), pivot_root,
//!   setns, unshare and clone with any CLONE_NEW* flag, kexec_load, init_module, finit_module,
//!   delete_module, bpf, perf_event_open, keyctl, add_key, request_key, userfaultfd,
//!   open_by_handle_at, io_uring_setup, fanotify_init, syslog, acct, quotactl, swapon, swapoff,
//!   reboot, settimeofday, clock_settime, adjtimex, clock_adjtime (and i386's 64-bit time
//!   variants), iopl, ioperm, open_tree, move_mount, fsopen, fsconfig, fsmount, fspick and
//!   mount_setattr with EPERM, for the i386 program too (also through `int $0x80`); clone3 with
//!   ENOSYS (libc then falls back to clone). fork, clone, unshare(0), threads, posix_spawn,
//!   mkfifo and ptrace of one's own child still work.
//! - /proc/sys, /proc/sysrq-trigger, /proc/irq, /proc/bus, /proc/fs and /sys refuse writes;
//!   /proc/kcore, /proc/keys, /proc/timer_list, /proc/sched_debug, /proc/latency_stats read as
//!   empty and are not procfs's own files; /proc/acpi, /proc/scsi, /sys/firmware are empty;
//!   `mount -o remount,rw /sys` and `mount -o remount,bind,rw /sys` fail.
//! - No mknod of devices, no `mount -t tmpfs`, no `unshare -U/-n/-m/-p`.
//! - Only descriptors 0, 1 and 2: envc is started with a sealed layer's directory open as
//!   descriptor 7, and the probe tries to create a file through whatever it inherits.
//! - Network steps read the host's resolv.conf but cannot write it (nor set its times); the
//!   host's file keeps its bytes and mtime; a root that had no resolv.conf has none afterwards.
//! - PID 1's command line does not hold the step's command (the sandbox spec is not in argv),
//!   and a `run` step whose command is 1 MiB long succeeds.
//! - Steps without network can ping loopback over an ICMP datagram socket (busybox 1.35's ping
//!   only tries a raw socket, which needs NET_RAW, so the probe does it).
//! - No sealed layer changes (their trees are compared before and after).
//! - The sandbox's cleanup after a network step (the resolv.conf bind) cannot be steered by
//!   symlinks the step planted, nor raced by processes it left behind (a host sysctl stays).
//! - On the host: the store is mode 0700, mounts under `roots/` are nosuid,nodev, and the
//!   setuid-root file a step left (`/suid`, in the working roots and the sealed layers) cannot
//!   be executed by an unprivileged user (uid 65534): EACCES, never euid 0.
//!
//! Each test collects every failure and asserts once at the end, naming the backend and how the
//! step ran. The probe's attempts are harmless when they get through (see probe.c), so the
//! suite can run against an unconfined envc and report everything it let through.
//!
//! The suite itself is `common::hostile::hostile_steps`, which tests/lvm.rs runs in the VM too.
//!
//! Every test needs root and skips otherwise, unless ENVC_REQUIRE_PRIVILEGED=1.

mod common;

use std::path::Path;

use common::hostile::{self, BASE, backend, hostile_steps, tail};
use common::{Kind, TestStore, privileged};

/// A `run` step whose command is 1 MiB of shell: the sandbox does not pass it where the
/// kernel's argument limits apply (128 KiB per argument).
fn a_one_mib_run_step_succeeds(kind: Kind) {
    let t = TestStore::new(kind, "confine-big");
    let b = backend(kind);
    let mut script = String::from("echo start > /big.txt\n");
    let filler = format!(": {}\n", "x".repeat(100));
    while script.len() < 1 << 20 {
        script.push_str(&filler);
    }
    script.push_str("echo end >> /big.txt\n");
    let spec = t.spec(
        "big.kdl",
        &format!(
            "name \"big\"\n{BASE}layer \"big\" {{\n  run {}\n}}\n",
            hostile::kdl_string(&script)
        ),
    );
    let r = t.envc(&["apply", spec.to_str().unwrap()]);
    let got = (r.code == 0)
        .then(|| std::fs::read_to_string(r.root().join("big.txt")).ok())
        .flatten();
    assert!(
        r.code == 0 && got.as_deref() == Some("start\nend\n"),
        "[{b}, run step] a command of {} bytes: exit {}, /big.txt {got:?}; stderr ends with:\n{}",
        script.len(),
        r.code,
        tail(&r.stderr, 2000)
    );
}

/// A network step (here `envc run`, which has the host's network) that turns its `/etc` into a
/// symlink into `/tmp`, moves the directory holding the resolv.conf bind aside, puts a symlink
/// to `/proc/sys` in its place and leaves processes behind that write a host sysctl: the
/// sandbox's cleanup, which runs with every capability, must neither follow the symlink (and
/// detach the read-only `/proc/sys`) nor run while those processes live.
fn the_cleanup_cannot_be_steered(kind: Kind) {
    let t = TestStore::new(kind, "confine-cleanup");
    let knob = Path::new("/proc/sys/vm/overcommit_ratio");
    let before = std::fs::read_to_string(knob).unwrap();
    let attack = before.trim().parse::<u32>().unwrap() + 1;
    let spec = t.spec(
        "steer.kdl",
        &format!(
            "name \"steer\"\n{BASE}layer \"etc\" {{\n  run \"cp -a /etc /etc2 && rm -rf /etc && ln -s /tmp/etcdir /etc\"\n}}\n"
        ),
    );
    t.apply(&spec);
    let script = format!(
        "mv /tmp/etcdir /tmp/etcold && mkdir /tmp/etcdir && ln -s /proc/sys /tmp/etcdir/resolv.conf && \
         for i in 1 2 3; do (while :; do echo {attack} > /proc/sys/vm/overcommit_ratio; done) 2>/dev/null & done; exit 0"
    );
    let mut changed = None;
    for _ in 0..5 {
        let r = t.envc(&["run", spec.to_str().unwrap(), "--", "sh", "-c", &script]);
        let now = std::fs::read_to_string(knob).unwrap();
        if now != before {
            let _ = std::fs::write(knob, &before);
            changed = Some((r.code, now));
            break;
        }
    }
    if let Some((code, now)) = changed {
        panic!(
            "[{}] a step changed the host's vm.overcommit_ratio from {} to {} (envc run exited {code}; restored)",
            backend(kind),
            before.trim(),
            now.trim()
        );
    }
}

macro_rules! on_each_backend {
    ($($name:ident => $body:ident),* $(,)?) => {
        mod overlay {
            $(#[test] fn $name() { if super::privileged(stringify!($name)) { super::$body(super::Kind::Overlay) } })*
        }
        mod btrfs {
            $(#[test] fn $name() { if super::privileged(stringify!($name)) { super::$body(super::Kind::Btrfs) } })*
        }
    };
}

on_each_backend!(
    hostile_steps_are_confined => hostile_steps,
    a_one_mib_run_step_succeeds => a_one_mib_run_step_succeeds,
    the_sandbox_cleanup_cannot_be_steered => the_cleanup_cannot_be_steered,
);
