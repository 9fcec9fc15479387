//! The sandbox's kernel calls, recorded by [`RecordingSyscall`] on a root the test makes: no
//! privileges needed.
#![forbid(unsafe_code)]

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use nix::mount::{MntFlags, MsFlags};
use nix::sys::stat::{Mode, SFlag, makedev};

use super::helper::prepare;
use super::protocol::{Action, Bind, RootSource, SandboxError, SandboxOp, Spec};
use crate::sys::{Call, RecordingSyscall};

/// A directory under the system's temporary directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "envc-sandbox-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir_all(dir.join("root")).unwrap();
        TempDir(dir.canonicalize().unwrap())
    }

    /// The step's root.
    fn root(&self) -> PathBuf {
        self.0.join("root")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn spec(source: RootSource, root: &Path, network: bool) -> Spec {
    Spec {
        source,
        mountpoint: root.to_owned(),
        network,
        binds: vec![
            Bind {
                host: "/host/debs".into(),
                target: "/var/cache/apt/archives".into(),
                readonly: false,
                exact: false,
            },
            Bind {
                host: "/host/ro".into(),
                target: "/srv/ro".into(),
                readonly: true,
                exact: false,
            },
        ],
        tmp_files: vec![("script".into(), "echo hi\n".into())],
        action: Action::Exec {
            argv: vec!["/bin/sh".into(), "/tmp/script".into()],
            env: vec![],
            cwd: "/".into(),
            user: None,
            deny_services: false,
            sync: envc_plan::SyncMode::Off,
        },
    }
}

fn overlay() -> RootSource {
    RootSource::Overlay {
        lowers: vec!["/store/l2".into(), "/store/l1".into()],
        upper: "/store/upper".into(),
        work: "/store/work".into(),
    }
}

/// The calls, with every target named through `/proc/self/fd` replaced by `@/PATH`, the path
/// inside `root` it named; fails if such a target named anything outside the root, or if any
/// other target is a host path under the root (a path joined from strings).
fn normalized(fake: &RecordingSyscall, root: &Path) -> Vec<Call> {
    let inside = |at: &Path| -> String {
        let rel = at
            .strip_prefix(root)
            .unwrap_or_else(|_| panic!("{} is outside the root {}", at.display(), root.display()));
        format!("@/{}", rel.display())
    };
    let under_root = |t: &str| t != root.to_str().unwrap() && Path::new(t).starts_with(root);
    fake.records()
        .into_iter()
        .map(|r| {
            let fix = |t: String| -> String {
                if t.starts_with("/proc/self/fd/") {
                    inside(r.target_at.as_deref().expect("fd target was not resolved"))
                } else {
                    assert!(!under_root(&t), "{t} is a host path joined from strings");
                    t
                }
            };
            match r.call.clone() {
                Call::Mount {
                    source,
                    target,
                    fstype,
                    flags,
                    data,
                } => Call::Mount {
                    source,
                    target: fix(target),
                    fstype,
                    flags,
                    data,
                },
                Call::Umount2 { target, flags } => Call::Umount2 {
                    target: fix(target),
                    flags,
                },
                Call::Chdir { path } => Call::Chdir { path: fix(path) },
                Call::Mknodat {
                    dir,
                    name,
                    kind,
                    perm,
                    dev,
                } => Call::Mknodat {
                    dir: inside(&dir).into(),
                    name,
                    kind,
                    perm,
                    dev,
                },
                Call::Symlinkat { target, dir, name } => Call::Symlinkat {
                    target,
                    dir: inside(&dir).into(),
                    name,
                },
                other => other,
            }
        })
        .collect()
}

fn mount(
    source: Option<&str>,
    target: &str,
    fstype: Option<&str>,
    flags: MsFlags,
    data: Option<&str>,
) -> Call {
    Call::Mount {
        source: source.map(str::to_owned),
        target: target.to_owned(),
        fstype: fstype.map(str::to_owned),
        flags,
        data: data.map(str::to_owned),
    }
}

/// Everything after the root mount (and loopback), for a spec made by [`spec`].
fn system_and_pivot(mp: &str) -> Vec<Call> {
    let nodev = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    let bind = MsFlags::MS_BIND | MsFlags::MS_REC;
    let mut calls = vec![
        mount(Some("proc"), "@/proc", Some("proc"), nodev, None),
        mount(
            Some("sysfs"),
            "@/sys",
            Some("sysfs"),
            nodev | MsFlags::MS_RDONLY,
            None,
        ),
        mount(
            Some("tmpfs"),
            "@/tmp",
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some("mode=1777"),
        ),
        mount(
            Some("tmpfs"),
            "@/dev",
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
            Some("mode=0755"),
        ),
    ];
    for (name, major, minor) in [
        ("null", 1, 3),
        ("zero", 1, 5),
        ("full", 1, 7),
        ("random", 1, 8),
        ("urandom", 1, 9),
        ("tty", 5, 0),
    ] {
        calls.push(Call::Mknodat {
            dir: "@/dev".into(),
            name: name.into(),
            kind: SFlag::S_IFCHR,
            perm: Mode::from_bits_truncate(0o666),
            dev: makedev(major, minor),
        });
    }
    for (name, target) in [
        ("ptmx", "pts/ptmx"),
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        calls.push(Call::Symlinkat {
            target: target.into(),
            dir: "@/dev".into(),
            name: name.into(),
        });
    }
    calls.extend([
        mount(
            Some("devpts"),
            "@/dev/pts",
            Some("devpts"),
            MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
            Some("newinstance,ptmxmode=0666,mode=0620"),
        ),
        mount(
            Some("tmpfs"),
            "@/dev/shm",
            Some("tmpfs"),
            nodev,
            Some("mode=1777"),
        ),
        mount(
            Some("/host/debs"),
            "@/var/cache/apt/archives",
            None,
            bind,
            None,
        ),
        mount(Some("/host/ro"), "@/srv/ro", None, bind, None),
        mount(
            None,
            "@/srv/ro",
            None,
            bind | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
            None,
        ),
        Call::Sethostname {
            name: "envc".into(),
        },
        Call::Chdir { path: mp.into() },
        Call::PivotRoot {
            new_root: ".".into(),
            put_old: ".".into(),
        },
        Call::Umount2 {
            target: ".".into(),
            flags: MntFlags::MNT_DETACH,
        },
        Call::Chdir { path: "/".into() },
    ]);
    calls
}

fn private() -> Call {
    mount(None, "/", None, MsFlags::MS_REC | MsFlags::MS_PRIVATE, None)
}

#[test]
fn an_overlay_root_gets_the_whole_mount_sequence_through_in_root_paths() {
    let t = TempDir::new();
    let root = t.root();
    let mp = root.to_str().unwrap();
    let fake = RecordingSyscall::new();
    prepare(&fake, &spec(overlay(), &root, false)).unwrap();
    let mut want = vec![
        private(),
        Call::MountOverlay {
            lowers: vec!["/store/l2".into(), "/store/l1".into()],
            upper: "/store/upper".into(),
            work: "/store/work".into(),
            target: mp.into(),
        },
        mount(
            None,
            mp,
            None,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_NODEV,
            None,
        ),
        Call::LoopbackUp,
    ];
    want.extend(system_and_pivot(mp));
    assert_eq!(normalized(&fake, &root), want);
    // The step's files went into the root's /tmp (here a plain directory: nothing was mounted).
    assert_eq!(
        fs::read_to_string(root.join("tmp/script")).unwrap(),
        "echo hi\n"
    );
}

#[test]
fn a_dir_root_is_bind_mounted_onto_itself() {
    let t = TempDir::new();
    let root = t.root();
    let mp = root.to_str().unwrap();
    let fake = RecordingSyscall::new();
    prepare(&fake, &spec(RootSource::Dir, &root, false)).unwrap();
    let mut want = vec![
        private(),
        mount(Some(mp), mp, None, MsFlags::MS_BIND | MsFlags::MS_REC, None),
        mount(
            None,
            mp,
            None,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_NODEV,
            None,
        ),
        Call::LoopbackUp,
    ];
    want.extend(system_and_pivot(mp));
    assert_eq!(normalized(&fake, &root), want);
}

#[test]
fn with_network_a_read_only_copy_of_resolv_conf_is_bound_and_loopback_left_alone() {
    if !Path::new("/etc/resolv.conf").exists() {
        eprintln!("skipped: this host has no /etc/resolv.conf");
        return;
    }
    let t = TempDir::new();
    let root = t.root();
    let fake = RecordingSyscall::new();
    prepare(&fake, &spec(RootSource::Dir, &root, true)).unwrap();
    let calls = normalized(&fake, &root);
    assert!(!calls.contains(&Call::LoopbackUp));
    let at = calls
        .iter()
        .position(|c| {
            matches!(c, Call::Mount { target, flags, .. }
                if target == "@/etc/resolv.conf" && *flags == MsFlags::MS_BIND)
        })
        .expect("resolv.conf bind");
    // The source is the step's own copy (named by a descriptor), never the host's file.
    let Call::Mount { source, .. } = &calls[at] else {
        unreachable!()
    };
    let source = source.as_deref().unwrap();
    assert!(source.starts_with("/proc/self/fd/"), "{source}");
    assert_eq!(
        calls[at + 1],
        mount(
            None,
            "@/etc/resolv.conf",
            None,
            MsFlags::MS_BIND
                | MsFlags::MS_REMOUNT
                | MsFlags::MS_RDONLY
                | MsFlags::MS_NOSUID
                | MsFlags::MS_NODEV,
            None
        ),
        "made read-only"
    );
    // The copy's name is gone once it is mounted.
    assert!(!root.join("dev/.envc-resolv.conf").exists());
    let hostname = Call::Sethostname {
        name: "envc".into(),
    };
    assert_eq!(calls[at + 2], hostname, "bound before the pivot");
}

#[test]
fn a_symlink_in_the_root_cannot_steer_a_mount_to_the_host() {
    let t = TempDir::new();
    let root = t.root();
    // The root's /proc points at an absolute path, and its /sys climbs out: both stay inside.
    std::os::unix::fs::symlink("/escaped-proc", root.join("proc")).unwrap();
    std::os::unix::fs::symlink("../../../../escaped-sys", root.join("sys")).unwrap();
    let fake = RecordingSyscall::new();
    prepare(&fake, &spec(RootSource::Dir, &root, false)).unwrap();
    let calls = normalized(&fake, &root);
    let nodev = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    assert!(calls.contains(&mount(
        Some("proc"),
        "@/escaped-proc",
        Some("proc"),
        nodev,
        None
    )));
    assert!(calls.contains(&mount(
        Some("sysfs"),
        "@/escaped-sys",
        Some("sysfs"),
        nodev | MsFlags::MS_RDONLY,
        None
    )));
    assert!(!Path::new("/escaped-proc").exists());
}

#[test]
fn a_failed_mount_is_a_typed_error_naming_its_target_and_stops_the_sequence() {
    let t = TempDir::new();
    let root = t.root();
    let fake = RecordingSyscall::failing(
        |c| matches!(c, Call::Mount { fstype: Some(f), .. } if f == "sysfs"),
        libc::EPERM,
    );
    let e = prepare(&fake, &spec(overlay(), &root, false)).unwrap_err();
    assert_eq!(
        e,
        SandboxError {
            op: SandboxOp::Mount {
                fstype: "sysfs".into()
            },
            object: "/sys".into(),
            errno: Some(libc::EPERM),
            detail: std::io::Error::from_raw_os_error(libc::EPERM).to_string(),
        }
    );
    assert!(e.to_string().starts_with("mount sysfs on /sys: "), "{e}");
    let calls = fake.calls();
    assert!(
        matches!(calls.last(), Some(Call::Mount { fstype: Some(f), .. }) if f == "sysfs"),
        "nothing after the failed mount: {calls:?}"
    );
}

#[test]
fn a_failed_read_only_remount_names_the_bind() {
    let t = TempDir::new();
    let root = t.root();
    let fake = RecordingSyscall::failing(
        |c| matches!(c, Call::Mount { flags, .. } if flags.contains(MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY)),
        libc::EACCES,
    );
    let e = prepare(&fake, &spec(RootSource::Dir, &root, false)).unwrap_err();
    assert_eq!(e.op, SandboxOp::RemountReadOnly);
    assert_eq!(e.object, "/srv/ro");
    assert_eq!(e.errno, Some(libc::EACCES));
}

#[test]
fn a_failed_overlay_names_the_mountpoint_and_the_stage() {
    let t = TempDir::new();
    let root = t.root();
    let fake = RecordingSyscall::failing(|c| matches!(c, Call::MountOverlay { .. }), libc::EINVAL);
    let e = prepare(&fake, &spec(overlay(), &root, false)).unwrap_err();
    assert_eq!(e.op, SandboxOp::MountOverlay);
    assert_eq!(e.object, root.display().to_string());
    assert_eq!(e.errno, Some(libc::EINVAL));
    assert!(e.detail.contains("(3 layers)"), "{e}");
    assert_eq!(fake.calls().len(), 2, "nothing after the failed overlay");
}

#[test]
fn a_step_that_denies_services_gets_a_policy_rc_d() {
    let t = TempDir::new();
    let root = t.root();
    fs::create_dir_all(root.join("usr/sbin")).unwrap();
    let mut s = spec(RootSource::Dir, &root, false);
    if let Action::Exec { deny_services, .. } = &mut s.action {
        *deny_services = true;
    }
    let prepared = prepare(&RecordingSyscall::new(), &s).unwrap();
    assert_eq!(prepared.cleanups.len(), 1);
    let script = fs::read_to_string(root.join("usr/sbin/policy-rc.d")).unwrap();
    assert!(script.ends_with("exit 101\n"), "{script}");
}

#[test]
fn the_error_crosses_as_json() {
    let e = SandboxError::new(SandboxOp::FindUser, "bob", "no such user");
    let json = serde_json::to_string(&e).unwrap();
    assert_eq!(
        json,
        r#"{"op":"find_user","object":"bob","errno":null,"detail":"no such user"}"#
    );
    assert_eq!(serde_json::from_str::<SandboxError>(&json).unwrap(), e);
    let mount = SandboxError::new(
        SandboxOp::Mount {
            fstype: "proc".into(),
        },
        "/proc",
        "x",
    );
    let back: SandboxError = serde_json::from_str(&serde_json::to_string(&mount).unwrap()).unwrap();
    assert_eq!(back, mount);
}
