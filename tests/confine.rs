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
//!   SETGID SETUID SETPCAP NET_BIND_SERVICE SYS_CHROOT AUDIT_WRITE SETFCAP, plus NET_RAW with
//!   network only; inheritable and ambient empty; NoNewPrivs 0 (a setuid-root program run by
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
//! - On the host: the store is mode 0700, mounts under `roots/` are nosuid,nodev, and the
//!   setuid-root file a step left (`/suid`, in the working roots and the sealed layers) cannot
//!   be executed by an unprivileged user (uid 65534): EACCES, never euid 0.
//!
//! Each test collects every failure and asserts once at the end, naming the backend and how the
//! step ran. The probe's attempts are harmless when they get through (see probe.c), so the
//! suite can run against an unconfined envc and report everything it let through.
//!
//! Every test needs root and skips otherwise, unless ENVC_REQUIRE_PRIVILEGED=1.

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use common::crash::Tree;
use common::hostile::{self, Fails, HOST_RESOLV, HostFile};
use common::{Kind, Run, TestStore, privileged};

const BASE: &str = "base \"tar\" \"busybox.tar.gz\"\n";

/// The setuid-root file a step leaves in the root.
const SUID: &str = "suid";

fn backend(kind: Kind) -> &'static str {
    match kind {
        Kind::Overlay => "overlay",
        Kind::Btrfs => "btrfs",
        Kind::Lvm => "lvm",
    }
}

/// The layers of a spec in order: (name, id), from `envc plan --json`.
fn plan(t: &TestStore, spec: &Path) -> Vec<(String, String)> {
    let r = t.envc(&["plan", "--json", spec.to_str().unwrap()]);
    assert_eq!(r.code, 0, "plan: {}", r.stderr);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    v["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["name"].as_str().unwrap().to_owned(),
                l["id"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// The last `n` bytes of `s` (at a character boundary).
fn tail(s: &str, n: usize) -> &str {
    let mut start = s.len().saturating_sub(n);
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

/// The tools every hostile step uses: the probes, and a setuid-root copy of the probe that a
/// `run` step leaves at `/suid`.
fn tools_layer() -> String {
    format!(
        "layer \"tools\" {{\n{}  run \"cp {} /{SUID} && chmod 4755 /{SUID}\"\n}}\n",
        hostile::probe_copy_steps(),
        hostile::PROBE
    )
}

/// Where a hostile command runs: the store, and what must not change.
struct Scene<'a> {
    t: &'a TestStore,
    /// Opened as descriptor 7 of envc: a sealed layer's directory.
    fd7: PathBuf,
    /// The trees of the sealed layers, as they were before the command.
    sealed: BTreeMap<String, Tree>,
    fails: Fails,
}

impl Scene<'_> {
    /// Runs `cmd` (envc) with descriptor 7 open, under [`HOST_RESOLV`] (the other backend's
    /// test must not see this one's changes): the host's resolv.conf must not change, nor any
    /// sealed layer.
    fn run(&mut self, cmd: &std::process::Command, place: &str) -> Run {
        let lock = HOST_RESOLV.lock().unwrap_or_else(|e| e.into_inner());
        let resolv = HostFile::read(Path::new("/etc/resolv.conf"));
        let r = Run::from(hostile::with_fd7(cmd, &self.fd7).output().unwrap());
        if let Some(c) = resolv.changed() {
            self.fails.push(place, format!("the host's {c}"));
        }
        drop(lock);
        // Compared with the trees before this command; the next one is compared with now.
        let now = hostile::layer_trees(&self.t.store);
        for c in hostile::layers_changed(&self.sealed, &now) {
            self.fails.push(place, c);
        }
        for (id, tree) in self.sealed.iter_mut() {
            if let Some(t) = now.get(id) {
                *tree = t.clone();
            }
        }
        r
    }
}

/// Every check against one backend: the hostile `run` steps, the hostile `envc run` commands,
/// the sealed layers and the host side.
fn hostile_steps(kind: Kind) {
    let t = TestStore::new(kind, "confine");
    let b = backend(kind);
    hostile::probes(&t.specs);
    let host_resolv = std::fs::read("/etc/resolv.conf").ok();

    // The tools, built by an ordinary apply; their layers are sealed before any attack.
    let pre = t.spec("pre.kdl", &format!("name \"pre\"\n{BASE}{}", tools_layer()));
    t.apply(&pre);
    let sealed = hostile::layer_trees(&t.store);
    assert_eq!(sealed.len(), 2, "{:?}", sealed.keys());
    let mut scene = Scene {
        t: &t,
        fd7: t.store.join("layers").join(&plan(&t, &pre)[0].1),
        sealed,
        fails: Fails::default(),
    };

    // The attacks as `run` steps, their results written into the root; and a setuid-root
    // program run by `builder`, which must get euid 0.
    let marker = hostile::marker();
    let step = |network: bool, out: &str| {
        hostile::kdl_string(&hostile::script(network, &marker, Some(out)))
    };
    let spec = t.spec(
        "hostile.kdl",
        &format!(
            "name \"hostile\"\n{BASE}{}layer \"hostile\" {{\n  run {}\n  run {} network=#true\n  run \"/{SUID} euid > /home/builder/suid.out 2>&1; true\" user=\"builder\"\n}}\n",
            tools_layer(),
            step(false, "/hostile-nonet.out"),
            step(true, "/hostile-net.out"),
        ),
    );
    let mut apply = t.cmd();
    apply.arg("apply").arg(&spec);
    let r = scene.run(&apply, "run steps");
    let fails = &mut scene.fails;
    if r.code != 0 {
        fails.push(
            "run steps",
            format!("the apply failed ({}): {}", r.code, tail(&r.stderr, 3000)),
        );
    } else {
        let root = r.root();
        for (network, file, place) in [
            (false, "hostile-nonet.out", "run step"),
            (true, "hostile-net.out", "run step, network=#true"),
        ] {
            let out = std::fs::read_to_string(root.join(file)).unwrap_or_default();
            for f in hostile::judge(&out, network, host_resolv.as_deref()) {
                fails.push(place, f);
            }
        }
        let euid = std::fs::read_to_string(root.join("home/builder/suid.out")).unwrap_or_default();
        if euid.trim() != "euid 0" {
            fails.push(
                "run step, user=builder",
                format!(
                    "a setuid-root program said {:?}, want \"euid 0\" (setuid programs must \
                     work: NoNewPrivs 0, no nosuid inside the step)",
                    euid.trim()
                ),
            );
        }
        // The root had no resolv.conf: neither the sealed layer of the network step nor the
        // working root keeps one.
        let id = &plan(&t, &spec)[2].1;
        for dir in [t.store.join("layers").join(id), root.clone()] {
            let p = dir.join("etc/resolv.conf");
            if std::fs::symlink_metadata(&p).is_ok() {
                fails.push(
                    "run step, network=#true",
                    format!("{} exists after the step; the root had none", p.display()),
                );
            }
        }
    }

    // The same attacks through `envc run`, with the host's network (the default) and without.
    for network in [true, false] {
        let place = if network {
            "envc run"
        } else {
            "envc run --no-network"
        };
        let mut cmd = t.cmd();
        cmd.arg("run");
        if !network {
            cmd.arg("--no-network");
        }
        cmd.arg(&pre)
            .args(["--", "sh", "-c", &hostile::script(network, &marker, None)]);
        let r = scene.run(&cmd, place);
        let fails = &mut scene.fails;
        if r.code != 0 {
            fails.push(
                place,
                format!("exited with {}: {}", r.code, tail(&r.stderr, 2000)),
            );
        }
        for f in hostile::judge(&r.stdout, network, host_resolv.as_deref()) {
            fails.push(place, f);
        }
    }

    // The host side.
    let fails = &mut scene.fails;
    let mode = std::fs::metadata(&t.store).unwrap().permissions().mode() & 0o7777;
    if mode != 0o700 {
        fails.push(
            "host",
            format!(
                "the store {} has mode {mode:04o}, want 0700",
                t.store.display()
            ),
        );
    }
    let mounts = hostile::mounts_below(&t.store.join("roots"));
    if kind == Kind::Overlay {
        for name in ["pre", "hostile"] {
            let root = t.store.join("roots").join(name).join("root");
            if !mounts.iter().any(|(m, _)| Path::new(m) == root) {
                fails.push("host", format!("{} is not mounted", root.display()));
            }
        }
    }
    for (m, options) in &mounts {
        let opts: Vec<&str> = options.split(',').collect();
        let missing: Vec<&str> = ["nosuid", "nodev"]
            .into_iter()
            .filter(|o| !opts.contains(o))
            .collect();
        if !missing.is_empty() {
            fails.push(
                "host",
                format!(
                    "the working root {m} is mounted without {} ({options})",
                    missing.join(", ")
                ),
            );
        }
    }
    let suid: Vec<PathBuf> = hostile::setuid_files(&t.store, SUID);
    if !suid.iter().any(|p| p.starts_with(t.store.join("layers"))) {
        fails.push(
            "host",
            format!(
                "no setuid-root /{SUID} in any sealed layer (found {suid:?}): the test's own \
                 setup failed"
            ),
        );
    }
    for p in &suid {
        if let Err(e) = hostile::exec_as_nobody(p) {
            fails.push("host", format!("{}: {e}", p.display()));
        }
    }
    scene.fails.assert_none(b);
}

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
);
