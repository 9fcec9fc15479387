//! Containment and safe removal (issue 12): host tools run in mount and PID namespaces that die
//! with envc, and removing a store tree never follows a bind mount or a symlink left in it.
//!
//! Every test needs root (mounts, namespaces) and skips otherwise, unless
//! ENVC_REQUIRE_PRIVILEGED=1.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{ENVC, Kind, TempDir, TestStore, privileged};
use envc_runtime::sandbox::{EXPOSED_ROOT, TOOL_CAPABILITIES};
use envc_runtime::tools::{Tool, ToolError};
use nix::mount::{MsFlags, mount};

/// A directory with files that must survive everything: the stand-in for the host's /dev/shm.
fn decoy(dir: &Path) -> PathBuf {
    let d = dir.join("decoy");
    std::fs::create_dir_all(d.join("sub")).unwrap();
    std::fs::write(d.join("keep"), "keep").unwrap();
    std::fs::write(d.join("sub/keep"), "keep").unwrap();
    d
}

fn assert_decoy_intact(d: &Path) {
    for f in ["keep", "sub/keep"] {
        assert_eq!(
            std::fs::read_to_string(d.join(f)).ok().as_deref(),
            Some("keep"),
            "decoy file {} was touched",
            d.join(f).display()
        );
    }
}

fn bind(source: &Path, target: &Path) {
    std::fs::create_dir_all(target).unwrap();
    mount(
        Some(source),
        target,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .unwrap_or_else(|e| panic!("bind {} on {}: {e}", source.display(), target.display()));
}

/// Mount points at or below `dir` in this process's (the host's) mount table.
fn mounts_below(dir: &Path) -> Vec<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| Path::new(m).starts_with(dir))
        .map(str::to_owned)
        .collect()
}

/// Whether process `pid` has ended (gone, or a zombie nobody reaped yet).
fn dead(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X'])),
    }
}

/// Every process descended from `pid`, by walking /proc.
fn descendants(pid: u32) -> Vec<u32> {
    let mut parent_of = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(p) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
            continue;
        };
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok());
        if let Some(ppid) = ppid {
            parent_of.push((p, ppid));
        }
    }
    let mut out = vec![pid];
    let mut i = 0;
    while i < out.len() {
        let cur = out[i];
        out.extend(
            parent_of
                .iter()
                .filter(|(_, pp)| *pp == cur)
                .map(|(p, _)| *p),
        );
        i += 1;
    }
    out.remove(0);
    out
}

/// Processes whose command line mentions `text` (as part of one argument).
fn processes_mentioning(text: &str) -> Vec<(u32, String)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(p) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(format!("/proc/{p}/cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(text) && !dead(p) {
            out.push((p, cmdline));
        }
    }
    out
}

fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_contained_tool_fails_under_its_own_name() {
    if !privileged("a_contained_tool_fails_under_its_own_name") {
        return;
    }
    let sh = Tool::at("/bin/sh".into()).via(Path::new(ENVC));
    let out = sh
        .arg("-c")
        .arg("echo out; echo oops >&2; exit 3")
        .output()
        .unwrap_err();
    match &out {
        ToolError::Failed {
            program,
            status,
            tail,
            ..
        } => {
            assert_eq!(program, Path::new("/bin/sh"));
            assert_eq!(status.code(), Some(3));
            assert_eq!(tail, &["oops"]);
        }
        other => panic!("{other:?}"),
    }
    assert!(out.to_string().starts_with("/bin/sh -c echo out"), "{out}");
    // Killed by a signal: 128 + N, as for sandboxed steps.
    let e = Tool::at("/bin/sh".into())
        .via(Path::new(ENVC))
        .args(["-c", "kill -9 $$"])
        .output()
        .unwrap_err();
    assert!(
        matches!(&e, ToolError::Failed { status, .. } if status.code() == Some(137)),
        "{e:?}"
    );
    // A program that cannot be executed: the containment's report names it.
    let e = Tool::at("/nonexistent/tool".into())
        .via(Path::new(ENVC))
        .output()
        .unwrap_err();
    let text = e.to_string();
    assert!(
        matches!(&e, ToolError::Contain { program, .. } if program == Path::new("/nonexistent/tool")),
        "{e:?}"
    );
    assert!(
        text.contains("execute /nonexistent/tool") && text.contains("No such file"),
        "{text}"
    );
    // Input, output and the environment pass through.
    let out = Tool::at("/bin/sh".into())
        .via(Path::new(ENVC))
        .env("GREETING", "hello")
        .args(["-c", "read x; echo \"$GREETING $x\""])
        .output_with_input(b"world\n")
        .unwrap();
    assert_eq!(out, b"hello world\n");
}

#[test]
fn a_contained_tool_mounts_privately_and_takes_its_children_along() {
    if !privileged("a_contained_tool_mounts_privately_and_takes_its_children_along") {
        return;
    }
    let dir = TempDir::new("contain-private");
    let target = dir.path().join("mnt");
    std::fs::create_dir_all(&target).unwrap();
    let pidfile = dir.path().join("child.pid");
    // The tool mounts a tmpfs, leaves a child running and ends.
    let script = format!(
        "mount -t tmpfs envc-test {mnt} && grep -q ' {mnt} ' /proc/self/mountinfo && echo mounted; \
         (read pid rest < /proc/self/stat; echo $pid > {pidfile}; exec sleep 1000) & \
         while [ ! -s {pidfile} ]; do sleep 0.01; done; echo started",
        mnt = target.display(),
        pidfile = pidfile.display(),
    );
    let mut lines = Vec::new();
    let mut seen_on_host = Vec::new();
    Tool::at("/bin/sh".into())
        .via(Path::new(ENVC))
        .args(["-c", &script])
        .stream(&mut |l| {
            // While the tool runs, its mount is not in the host's table.
            seen_on_host.extend(mounts_below(dir.path()));
            lines.push(l.to_owned());
        })
        .unwrap();
    assert_eq!(lines, ["mounted", "started"]);
    assert!(seen_on_host.is_empty(), "{seen_on_host:?}");
    assert!(mounts_below(dir.path()).is_empty());
    // The child it left was killed with the namespace when the tool ended.
    let pid: u32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    wait_until(
        "the tool's leftover child dies",
        Duration::from_secs(1),
        || dead(pid),
    );
}

/// Set to a directory, [`stand_in_envc`] acts as an envc process running a contained tool that
/// mounts something and sleeps: the process `killing_envc_kills_its_contained_tool` kills.
const STAND_IN: &str = "ENVC_TEST_CONTAIN_STAND_IN";

#[test]
#[ignore = "the process killing_envc_kills_its_contained_tool starts and kills"]
fn stand_in_envc() {
    let Some(dir) = std::env::var_os(STAND_IN).map(PathBuf::from) else {
        return;
    };
    let mnt = dir.join("mnt");
    let script = format!(
        "mount -t tmpfs envc-test {mnt} || exit 1; read pid rest < /proc/self/stat; \
         echo $pid > {dir}/tool.tmp && mv {dir}/tool.tmp {dir}/tool.pid; exec sleep 1000",
        mnt = mnt.display(),
        dir = dir.display()
    );
    let r = Tool::at("/bin/sh".into())
        .via(Path::new(ENVC))
        .args(["-c", &script])
        .stream(&mut |l| println!("{l}"));
    println!("stand-in: the tool ended: {r:?}");
}

#[test]
fn killing_envc_kills_its_contained_tool() {
    if !privileged("killing_envc_kills_its_contained_tool") {
        return;
    }
    let dir = TempDir::new("contain-kill");
    std::fs::create_dir_all(dir.path().join("mnt")).unwrap();
    let mut stand_in = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "stand_in_envc",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(STAND_IN, dir.path())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let pid = stand_in.id();
    let pidfile = dir.path().join("tool.pid");
    wait_until("the contained tool starts", Duration::from_secs(20), || {
        pidfile.exists()
    });
    let tool: u32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let tree = descendants(pid);
    // The containing envc, its init and the tool itself.
    assert!(tree.len() >= 3 && tree.contains(&tool), "{tree:?}");
    assert!(
        mounts_below(dir.path()).is_empty(),
        "the tool's mount is visible on the host"
    );
    // SIGKILL to the envc process alone, not its group.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    stand_in.wait().unwrap();
    wait_until(
        "every process envc started is gone",
        Duration::from_secs(1),
        || tree.iter().all(|p| dead(*p)),
    );
    assert!(mounts_below(dir.path()).is_empty());
}

/// A layer id nobody builds: staging leftovers under it are the next apply's to clean.
const STALE: &str = "5a1e5a1e5a1e5a1e5a1e5a1e5a1e5a1e5a1e5a1e5a1e5a1e5a1e5a1e5a1e5a1e";

fn leftover_binds_are_detached_never_followed(kind: Kind) {
    let t = TestStore::new(kind, "leftover-binds");
    let spec = t.spec(
        "env.kdl",
        &format!(
            "name \"lb\"\n{}layer \"one\" {{\n  run \"echo one > /one\"\n}}\n",
            "base \"tar\" \"busybox.tar.gz\"\n"
        ),
    );
    t.apply(&spec);
    let outside = TempDir::new("leftover-decoy");
    let d = decoy(outside.path());
    // A staging area a killed base build left: a bind of the decoy where mmdebstrap binds the
    // host's /dev/shm, a symlink to it, and a nested bind on top.
    let staging = t.store.join("staging").join(STALE);
    if kind == Kind::Btrfs {
        let out = Command::new("btrfs")
            .args(["subvolume", "create"])
            .arg(&staging)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
    }
    let upper = staging.join("upper");
    bind(&d, &upper.join("dev/shm"));
    bind(&d, &upper.join("dev/shm/sub"));
    std::os::unix::fs::symlink(&d, upper.join("link")).unwrap();
    // Discarded trees waiting for gc, with the decoy bound inside.
    let discard = t.store.join("tmp/discard-1-2-3");
    let removed = t.store.join("tmp/removed-1-2-3");
    bind(&d, &discard.join("x"));
    bind(&d, &removed.join("y/z"));
    assert_eq!(t.stray_mounts().len(), 4, "{:?}", t.stray_mounts());
    // On btrfs, a discarded root whose deletion was interrupted is a subvolume, and a build may
    // have made subvolumes inside it: other devices, the same mount, removed all the same.
    let subvolume = t.store.join("tmp/discard-4-5-6");
    if kind == Kind::Btrfs {
        for sv in [subvolume.clone(), subvolume.join("nested")] {
            let out = Command::new("btrfs")
                .args(["subvolume", "create"])
                .arg(&sv)
                .output()
                .unwrap();
            assert!(out.status.success(), "{out:?}");
            std::fs::create_dir_all(sv.join("dir")).unwrap();
            std::fs::write(sv.join("dir/file"), "x").unwrap();
        }
        use std::os::unix::fs::MetadataExt;
        let dev = |p: &Path| std::fs::metadata(p).unwrap().dev();
        assert_ne!(dev(&subvolume), dev(&subvolume.join("nested")));
    }

    // The next apply cleans staging; gc sweeps tmp/.
    let r = t.apply(&spec);
    assert!(
        r.stderr.contains("removed 1 interrupted build"),
        "{}",
        r.stderr
    );
    assert!(!staging.exists());
    assert_decoy_intact(&d);
    let r = t.envc(&["gc", "--older-than", "1000d"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(!discard.exists() && !removed.exists() && !subvolume.exists());
    assert_decoy_intact(&d);
    assert!(t.stray_mounts().is_empty(), "{:?}", t.stray_mounts());
}

#[test]
fn leftover_binds_are_detached_never_followed_overlay() {
    if privileged("leftover_binds_are_detached_never_followed_overlay") {
        leftover_binds_are_detached_never_followed(Kind::Overlay);
    }
}

#[test]
fn leftover_binds_are_detached_never_followed_btrfs() {
    if privileged("leftover_binds_are_detached_never_followed_btrfs") {
        leftover_binds_are_detached_never_followed(Kind::Btrfs);
    }
}

#[test]
fn a_reset_removes_the_old_root_in_the_background_without_following_binds() {
    if !privileged("a_reset_removes_the_old_root_in_the_background_without_following_binds") {
        return;
    }
    let t = TestStore::new(Kind::Overlay, "reset-binds");
    let spec = t.spec(
        "env.kdl",
        "name \"rb\"\nbase \"tar\" \"busybox.tar.gz\"\nlayer \"one\" {\n  run \"echo one > /one\"\n}\n",
    );
    let root = t.apply(&spec).root();
    assert_eq!(std::fs::read_to_string(root.join("one")).unwrap(), "one\n");
    let outside = TempDir::new("reset-decoy");
    let d = decoy(outside.path());
    // Something mounted into the root's upper directory and a symlink there, both discarded by
    // the reset.
    let upper = t.store.join("roots/rb/upper");
    bind(&d, &upper.join("srv/shm"));
    std::os::unix::fs::symlink(&d, upper.join("srv/link")).unwrap();
    let r = t.envc(&["apply", "--reset", spec.to_str().unwrap()]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let tmp = t.store.join("tmp");
    wait_until(
        "the discarded upper directory is removed",
        Duration::from_secs(10),
        || {
            std::fs::read_dir(&tmp)
                .unwrap()
                .flatten()
                .all(|e| !e.file_name().to_string_lossy().starts_with("discard-"))
        },
    );
    assert_decoy_intact(&d);
    assert!(t.stray_mounts().is_empty(), "{:?}", t.stray_mounts());
    assert_eq!(std::fs::read_to_string(root.join("one")).unwrap(), "one\n");
}

#[test]
fn a_tar_base_is_unpacked_contained() {
    if !privileged("a_tar_base_is_unpacked_contained") {
        return;
    }
    let t = TestStore::new(Kind::Overlay, "contained-tar");
    let spec = t.spec(
        "env.kdl",
        "name \"ct\"\nbase \"tar\" \"busybox.tar.gz\"\nlayer \"one\" {\n  run \"echo one > /one\"\n}\n",
    );
    let r = t.apply(&spec);
    assert_eq!(r.built(), ["base", "one"], "{}", r.stderr);
    let root = r.root();
    assert!(root.join("bin/busybox").is_file());
    assert_eq!(
        std::fs::read_to_string(root.join("etc/passwd"))
            .unwrap()
            .lines()
            .count(),
        2
    );
    assert!(t.stray_mounts().is_empty(), "{:?}", t.stray_mounts());
    // The apply left no process behind (tar, its containment).
    let store = t.store.to_str().unwrap();
    assert!(
        processes_mentioning(store).is_empty(),
        "{:?}",
        processes_mentioning(store)
    );
}

#[test]
fn sync_suppression_composes_with_containment() {
    if !privileged("sync_suppression_composes_with_containment") {
        return;
    }
    let seccomp = |nosync: bool| {
        let out = Tool::at("/bin/sh".into())
            .via(Path::new(ENVC))
            .nosync(nosync)
            .args(["-c", "grep '^Seccomp:' /proc/self/status"])
            .output()
            .unwrap();
        String::from_utf8(out).unwrap()
    };
    // 2: a filter is installed (inherited by everything the tool starts, `grep` here).
    assert_eq!(seccomp(true).split_whitespace().nth(1), Some("2"));
    assert_eq!(seccomp(false).split_whitespace().nth(1), Some("0"));
}

/// The capability sets of a contained process, as `/proc/self/status` shows them: (name, mask).
fn capability_sets(status: &str) -> Vec<(String, u64)> {
    status
        .lines()
        .filter_map(|l| {
            let (name, hex) = l.strip_prefix("Cap")?.split_once(':')?;
            Some((name.to_owned(), u64::from_str_radix(hex.trim(), 16).ok()?))
        })
        .collect()
}

#[test]
fn a_contained_tool_keeps_only_the_capabilities_of_tools() {
    if !privileged("a_contained_tool_keeps_only_the_capabilities_of_tools") {
        return;
    }
    let dir = TempDir::new("contain-caps");
    // `cat` is a program the tool executes: what it has, everything the tool starts has.
    let out = Tool::at("/bin/sh".into())
        .via(Path::new(ENVC))
        .args(["-c", "cat /proc/self/status"])
        .output()
        .unwrap();
    let sets = capability_sets(&String::from_utf8(out).unwrap());
    let want = TOOL_CAPABILITIES;
    assert_eq!(
        sets,
        [
            ("Inh".to_owned(), 0),
            ("Prm".to_owned(), want),
            ("Eff".to_owned(), want),
            ("Bnd".to_owned(), want),
            ("Amb".to_owned(), 0),
        ],
        "expected {want:016x}"
    );
    // Mounting works (SYS_ADMIN is kept), and its mount stays in the tool's namespace.
    let mnt = dir.path().join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let out = Tool::at("/bin/sh".into())
        .via(Path::new(ENVC))
        .args([
            "-c",
            "mount -t tmpfs envc-test \"$1\" && echo mounted",
            "sh",
        ])
        .arg(&mnt)
        .output()
        .unwrap();
    let text = String::from_utf8(out).unwrap();
    assert!(text.ends_with("mounted\n"), "{text}");
    assert!(mounts_below(dir.path()).is_empty());
}

#[test]
fn a_tool_reaches_the_directory_it_works_on_through_a_tmp_of_its_own() {
    if !privileged("a_tool_reaches_the_directory_it_works_on_through_a_tmp_of_its_own") {
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    let dir = TempDir::new("contain-root");
    // As in the store: a directory only root may enter, holding the one the tool works on.
    let private = dir.path().join("private");
    let target = private.join("target");
    std::fs::create_dir_all(&target).unwrap();
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::write(target.join("hello"), "hello\n").unwrap();
    let nobody = |path: &Path| {
        Command::new("/bin/cat")
            .arg(path)
            .uid(65534)
            .gid(65534)
            .output()
            .unwrap()
    };
    assert!(!nobody(&target.join("hello")).status.success());
    let marker = format!("envc-test-private-tmp-{}", std::process::id());
    let script = format!(
        "echo \"$1\"; cat \"$1/hello\"; setpriv --reuid=65534 --regid=65534 --clear-groups cat \"$1/hello\"; \
         echo written > \"$1/written\"; touch /tmp/{marker}"
    );
    let out = Tool::at("/bin/sh".into())
        .via(Path::new(ENVC))
        .args(["-c", &script, "sh"])
        .root_arg(&target)
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8(out).unwrap(),
        format!("{EXPOSED_ROOT}\nhello\nhello\n"),
        "the tool, and a user it switches to, reach the directory"
    );
    assert_eq!(
        std::fs::read_to_string(target.join("written")).unwrap(),
        "written\n"
    );
    assert!(
        !Path::new("/tmp").join(&marker).exists(),
        "the tool's /tmp is its own"
    );
    assert!(mounts_below(dir.path()).is_empty());
    // Run directly (no containment), the tool gets the directory itself.
    let out = Tool::at("/bin/sh".into())
        .args(["-c", "echo \"$1\"", "sh"])
        .root_arg(&target)
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8(out).unwrap().trim_end(),
        target.to_str().unwrap()
    );
}

#[test]
fn a_tar_bases_device_node_is_unpacked_and_opens_nothing() {
    if !privileged("a_tar_bases_device_node_is_unpacked_and_opens_nothing") {
        return;
    }
    let t = TestStore::new(Kind::Overlay, "contained-tar-dev");
    let tree = t.specs.join("tree");
    std::fs::create_dir_all(tree.join("dev")).unwrap();
    let sh = |script: &str| {
        let out = Command::new("/bin/sh")
            .args(["-c", script, "sh"])
            .arg(&tree)
            .arg(&t.specs)
            .output()
            .unwrap();
        assert!(out.status.success(), "{script}: {out:?}");
    };
    // A character node (the host's /dev/zero) outside /dev, where the step's own /dev does not
    // cover it.
    sh(
        "tar -xzf \"$2/busybox.tar.gz\" -C \"$1\" && mknod \"$1/zero\" c 1 5 && tar -czf \"$2/dev.tar.gz\" -C \"$1\" .",
    );
    let spec = t.spec(
        "env.kdl",
        "name \"dev\"\nbase \"tar\" \"dev.tar.gz\"\nlayer \"try\" {\n  run \"head -c 1 /zero > /got 2>/err; echo $? > /rc\"\n}\n",
    );
    let r = t.apply(&spec);
    let root = r.root();
    let st = std::fs::symlink_metadata(root.join("zero")).unwrap();
    assert!(
        std::os::unix::fs::FileTypeExt::is_char_device(&st.file_type()),
        "the node is unpacked as it is"
    );
    assert_ne!(
        std::fs::read_to_string(root.join("rc")).unwrap().trim(),
        "0"
    );
    assert!(
        std::fs::read_to_string(root.join("err"))
            .unwrap()
            .contains("Permission denied"),
        "the step's root is nodev"
    );
    assert_eq!(std::fs::read(root.join("got")).unwrap(), b"");
}
