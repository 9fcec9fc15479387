//! The backend contract: the same tests, run for real (as root, no mocks) against every backend
//! (tests/runtime.rs: overlayfs and btrfs; tests/lvm.rs: LVM thin, inside the test VM). A busybox
//! root tarball gives fast tests of every step kind.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{self, Kind, Run, TestStore};

pub const BASE: &str = "base \"tar\" \"busybox.tar.gz\"\n";

pub fn every_step_kind_builds_and_caches(kind: Kind) {
    let t = TestStore::new(kind, "steps");
    std::fs::create_dir_all(t.specs.join("files/tree/sub")).unwrap();
    std::fs::write(t.specs.join("files/greeting"), "hello from the host\n").unwrap();
    std::fs::write(t.specs.join("files/tree/sub/a.txt"), "a\n").unwrap();
    std::os::unix::fs::symlink("sub/a.txt", t.specs.join("files/tree/link")).unwrap();
    let spec = t.spec(
        "env.kdl",
        &format!(
            "name \"steps\"\n{BASE}\
             layer \"one\" {{\n  run \"echo one > /one.txt\"\n  copy \"files/greeting\" \"/etc/greeting\" mode=\"0600\" owner=\"builder\"\n  copy \"files/tree\" \"/opt/tree\"\n}}\n\
             layer \"two\" {{\n  env GREETING=\"hi\" PATH=\"/opt/bin:$PATH\"\n  workdir \"/work\"\n  run \"echo $GREETING $PATH > out.txt; pwd >> out.txt\"\n  run \"id -u > /home/builder/uid\" user=\"builder\"\n}}\n"
        ),
    );
    let first = t.apply(&spec);
    assert_eq!(first.built(), ["base", "one", "two"], "{}", first.stderr);
    let root = first.root();
    assert_eq!(
        std::fs::read_to_string(root.join("one.txt")).unwrap(),
        "one\n"
    );
    let greeting = root.join("etc/greeting");
    assert_eq!(
        std::fs::read_to_string(&greeting).unwrap(),
        "hello from the host\n"
    );
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let m = std::fs::metadata(&greeting).unwrap();
    assert_eq!(
        (m.permissions().mode() & 0o7777, m.uid(), m.gid()),
        (0o600, 1000, 1000)
    );
    assert_eq!(
        std::fs::read_to_string(root.join("opt/tree/sub/a.txt")).unwrap(),
        "a\n"
    );
    assert_eq!(
        std::fs::read_link(root.join("opt/tree/link"))
            .unwrap()
            .to_str(),
        Some("sub/a.txt")
    );
    assert_eq!(
        std::fs::read_to_string(root.join("work/out.txt")).unwrap(),
        "hi /opt/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n/work\n"
    );
    assert_eq!(
        std::fs::read_to_string(root.join("home/builder/uid")).unwrap(),
        "1000\n"
    );

    // An unchanged spec builds nothing and keeps the root.
    let second = t.apply(&spec);
    assert!(second.built().is_empty(), "{}", second.stderr);
    assert_eq!(second.cached(), ["base", "one", "two"]);
    assert_eq!(second.root(), root);
    assert!(
        t.stray_mounts().is_empty(),
        "stray mounts: {:?}",
        t.stray_mounts()
    );
}

pub fn a_change_rebuilds_its_layer_and_later_ones_only(kind: Kind) {
    let t = TestStore::new(kind, "change");
    let text = format!(
        "name \"c\"\n{BASE}layer \"a\" {{ run \"echo a > /a\" }}\nlayer \"b\" {{ run \"echo b > /b\" }}\nlayer \"c\" {{ run \"echo c > /c\" }}\n"
    );
    let spec = t.spec("env.kdl", &text);
    t.apply(&spec);
    t.spec("env.kdl", &text.replace("echo b > /b", "echo B > /b"));
    let r = t.apply(&spec);
    assert_eq!(r.cached(), ["base", "a"]);
    assert_eq!(r.built(), ["b", "c"]);
    assert_eq!(std::fs::read_to_string(r.root().join("b")).unwrap(), "B\n");
    // Going back hits the cache again: the old layers are still stored.
    t.spec("env.kdl", &text);
    let r = t.apply(&spec);
    assert!(r.built().is_empty(), "{}", r.stderr);
    assert_eq!(std::fs::read_to_string(r.root().join("b")).unwrap(), "b\n");
}

pub fn shared_prefixes_are_built_once(kind: Kind) {
    let t = TestStore::new(kind, "prefix");
    t.spec(
        "common.kdl",
        &format!("name \"common\"\n{BASE}layer \"shared\" {{ run \"echo shared > /shared\" }}\n"),
    );
    let a = t.spec(
        "a.kdl",
        "name \"a\"\nextends \"common.kdl\"\nlayer \"only-a\" { run \"echo a > /a\" }\n",
    );
    let b = t.spec(
        "b.kdl",
        "name \"b\"\nextends \"common.kdl\"\nlayer \"only-b\" { run \"echo b > /b\" }\n",
    );
    assert_eq!(t.apply(&a).built(), ["base", "shared", "only-a"]);
    let rb = t.apply(&b);
    assert_eq!(rb.cached(), ["base", "shared"]);
    assert_eq!(rb.built(), ["only-b"]);
    assert!(
        rb.root().join("shared").exists()
            && rb.root().join("b").exists()
            && !rb.root().join("a").exists()
    );
    let ls = t.envc(&["ls", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&ls.stdout).unwrap();
    assert_eq!(
        v["layers"].as_array().unwrap().len(),
        4,
        "base, shared, only-a, only-b: {}",
        ls.stdout
    );
    assert_eq!(v["roots"].as_array().unwrap().len(), 2);
    let tree = t.envc(&["ls"]).stdout;
    assert!(
        tree.contains("├─ only-a") || tree.contains("└─ only-a"),
        "{tree}"
    );
}

pub fn reset_discards_changes(kind: Kind) {
    let t = TestStore::new(kind, "reset");
    let spec = t.spec(
        "env.kdl",
        &format!("name \"r\"\n{BASE}layer \"a\" {{ run \"echo a > /a\" }}\n"),
    );
    let root = t.apply(&spec).root();
    std::fs::write(root.join("dirt"), "x").unwrap();
    std::fs::remove_file(root.join("a")).unwrap();
    let again = t.apply(&spec);
    assert!(
        again.root().join("dirt").exists(),
        "a plain apply keeps the working root's changes"
    );
    let r = run_ok(t.cmd().args(["apply", "--reset"]).arg(&spec));
    assert_eq!(r.root(), root);
    assert!(!root.join("dirt").exists());
    assert_eq!(std::fs::read_to_string(root.join("a")).unwrap(), "a\n");
    assert!(r.built().is_empty());
}

pub fn run_uses_a_throwaway_snapshot_and_passes_the_exit_status(kind: Kind) {
    let t = TestStore::new(kind, "run");
    let spec = t.spec("env.kdl", &format!("name \"run\"\n{BASE}layer \"a\" {{\n  env X=\"42\"\n  workdir \"/w\"\n  run \"true\"\n}}\n"));
    let r = t.envc(&[
        "run",
        spec.to_str().unwrap(),
        "--",
        "sh",
        "-c",
        "echo $X $(pwd); touch /scratch; exit 7",
    ]);
    assert_eq!(r.code, 7, "{}", r.stderr);
    assert_eq!(r.stdout, "42 /w\n");
    let root = t.apply(&spec).root();
    assert!(
        !root.join("scratch").exists(),
        "a throwaway run leaves the working root alone"
    );
    let r = t.envc(&[
        "run",
        "--keep",
        spec.to_str().unwrap(),
        "--",
        "touch",
        "/kept",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        root.join("kept").exists(),
        "--keep runs in the working root"
    );
    let r = t.envc(&["run", spec.to_str().unwrap(), "--", "no-such-command"]);
    assert_ne!(r.code, 0);
    assert!(t.stray_mounts().is_empty(), "{:?}", t.stray_mounts());
    assert_eq!(
        std::fs::read_dir(t.store.join("tmp")).unwrap().count(),
        0,
        "throwaway roots are removed"
    );
}

pub fn a_failing_step_points_at_its_line_and_seals_nothing(kind: Kind) {
    let t = TestStore::new(kind, "fail");
    let text = format!(
        "name \"f\"\n{BASE}layer \"ok\" {{ run \"true\" }}\nlayer \"bad\" {{\n    run \"echo before\"\n    run \"echo oops >&2; exit 3\"\n}}\n"
    );
    let spec = t.spec("env.kdl", &text);
    let r = t.envc(&["apply", spec.to_str().unwrap()]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("envc::apply::step_failed"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains("step 2 failed: exit status 3"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains("env.kdl:6:5"),
        "points at the step's line: {}",
        r.stderr
    );
    assert!(
        r.stderr.contains("oops"),
        "shows the output's tail: {}",
        r.stderr
    );
    let ls: serde_json::Value = serde_json::from_str(&t.envc(&["ls", "--json"]).stdout).unwrap();
    let names: Vec<&str> = ls["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["name"].as_str().unwrap())
        .collect();
    assert!(
        !names.contains(&"bad"),
        "a failed layer is not sealed: {names:?}"
    );
    assert_eq!(
        std::fs::read_dir(t.store.join("staging")).unwrap().count(),
        0,
        "nothing left in staging"
    );
    t.spec("env.kdl", &text.replace("exit 3", "exit 0"));
    let r = t.apply(&spec);
    assert_eq!(r.built(), ["bad"]);
}

pub fn copy_never_writes_through_a_symlink_to_the_host(kind: Kind) {
    let t = TestStore::new(kind, "escape");
    let host_dir = common::TempDir::new("escape-target");
    std::fs::create_dir_all(t.specs.join("files")).unwrap();
    std::fs::write(t.specs.join("files/payload"), "payload\n").unwrap();
    let target = host_dir.path().to_str().unwrap();
    let spec = t.spec(
        "env.kdl",
        &format!("name \"e\"\n{BASE}layer \"trap\" {{\n  run \"ln -s {target} /evil && ln -s {target}/file /evil-file\"\n  copy \"files/payload\" \"/evil/file\"\n  copy \"files/payload\" \"/evil-file\"\n}}\n"),
    );
    let r = t.apply(&spec);
    assert!(
        !host_dir.path().join("file").exists(),
        "copy escaped to the host"
    );
    let root = r.root();
    assert_eq!(
        std::fs::read_to_string(root.join(target.trim_start_matches('/')).join("file")).unwrap(),
        "payload\n"
    );
    assert!(
        std::fs::symlink_metadata(root.join("evil-file"))
            .unwrap()
            .is_file(),
        "a symlink at the destination is replaced, not followed"
    );
}

pub fn concurrent_applies_build_each_layer_once(kind: Kind) {
    let t = TestStore::new(kind, "concurrent");
    let spec = t.spec("env.kdl", &format!("name \"cc\"\n{BASE}layer \"slow\" {{ run \"sleep 1; echo slow > /slow\" }}\nlayer \"next\" {{ run \"echo next > /next\" }}\n"));
    let spawn = || {
        t.cmd()
            .arg("apply")
            .arg(&spec)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn(), spawn());
    let (a, b) = (
        common::Run::from(a.wait_with_output().unwrap()),
        common::Run::from(b.wait_with_output().unwrap()),
    );
    assert_eq!((a.code, b.code), (0, 0), "{}\n{}", a.stderr, b.stderr);
    let mut built: Vec<String> = a.built().into_iter().chain(b.built()).collect();
    built.sort();
    assert_eq!(
        built,
        ["base", "next", "slow"],
        "each layer built exactly once:\n{}\n{}",
        a.stderr,
        b.stderr
    );
    assert_eq!(a.root(), b.root());
    assert!(a.root().join("next").exists());
}

pub fn kill_9_mid_step_then_apply_succeeds(kind: Kind) {
    let t = TestStore::new(kind, "kill");
    // The script names this test's backend: the check for survivors below must not see the
    // same test of another backend running at the same time.
    let tag = format!("{kind:?}").to_lowercase();
    let spec = t.spec("env.kdl", &format!("name \"k\"\n{BASE}layer \"slow\" {{ run \"echo start; sleep 3; echo done {tag} > /done\" }}\n"));
    let mut child = t
        .cmd()
        .arg("apply")
        .arg(&spec)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the step is running (its staging area exists and it printed), then kill -9.
    let started = Instant::now();
    let mut stderr = child.stderr.take().unwrap();
    let mut seen = String::new();
    let mut buf = [0u8; 4096];
    use std::io::Read;
    while !seen.contains("[slow] start") {
        let n = stderr.read(&mut buf).unwrap();
        assert!(n > 0, "apply ended early: {seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
        assert!(started.elapsed() < Duration::from_secs(60), "{seen}");
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    child.wait().unwrap();
    drop(stderr);
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        std::fs::read_dir(t.store.join("staging")).unwrap().count() > 0,
        "the killed build left its staging area"
    );
    let r = t.apply(&spec);
    assert!(
        r.stderr.contains("removed 1 interrupted build"),
        "{}",
        r.stderr
    );
    assert_eq!(r.built(), ["slow"]);
    assert_eq!(
        std::fs::read_to_string(r.root().join("done")).unwrap(),
        format!("done {tag}\n")
    );
    assert!(t.stray_mounts().is_empty(), "{:?}", t.stray_mounts());
    // No process of the killed build is left running.
    let ps = Command::new("ps").args(["-eo", "args"]).output().unwrap();
    assert!(
        !String::from_utf8_lossy(&ps.stdout)
            .lines()
            .any(|l| l.contains(&format!("sleep 3; echo done {tag}"))),
        "orphaned step processes survived"
    );
}

pub fn rm_drops_the_working_root(kind: Kind) {
    let t = TestStore::new(kind, "rm");
    let spec = t.spec(
        "env.kdl",
        &format!("name \"gone\"\n{BASE}layer \"a\" {{ run \"true\" }}\n"),
    );
    let root = t.apply(&spec).root();
    assert!(root.join("bin/busybox").exists());
    let r = t.envc(&["rm", "gone"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(!root.join("bin/busybox").exists());
    assert_eq!(t.envc(&["rm", "gone"]).code, 1, "removing twice fails");
    for bad in ["..", "", "a/b", "a b"] {
        assert_eq!(t.envc(&["rm", bad]).code, 1, "rm {bad:?} is refused");
    }
    assert!(
        t.store.join("store.json").exists(),
        "the store is untouched"
    );
    assert!(t.stray_mounts().is_empty());
}

pub fn why_explains_misses_field_by_field(kind: Kind) {
    let t = TestStore::new(kind, "why");
    let text = format!(
        "name \"w\"\n{BASE}layer \"a\" {{\n  env GREETING=\"hi\"\n  run \"true\"\n}}\nlayer \"b\" {{ run \"true\" }}\n"
    );
    let spec = t.spec("env.kdl", &text);
    t.apply(&spec);
    let r = t.envc(&["why", spec.to_str().unwrap()]);
    assert_eq!(r.stdout.matches("cached").count(), 3, "{}", r.stdout);
    t.spec(
        "env.kdl",
        &text.replace("GREETING=\"hi\"", "GREETING=\"hello\""),
    );
    let r = t.envc(&["why", spec.to_str().unwrap()]);
    assert!(
        r.stdout
            .contains("steps[0].vars.GREETING: \"hi\" -> \"hello\""),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains("the first missing layer is `a`"),
        "{}",
        r.stdout
    );
    let json: serde_json::Value =
        serde_json::from_str(&t.envc(&["why", "--json", spec.to_str().unwrap()]).stdout).unwrap();
    assert_eq!(json[1]["cached"], false);
    assert_eq!(json[1]["differs"][0]["path"], "steps[0].vars.GREETING");
}

pub fn gc_removes_unused_layers_children_first_and_never_one_in_use(kind: Kind) {
    let t = TestStore::new(kind, "gc");
    let text = format!(
        "name \"g\"\n{BASE}layer \"a\" {{ run \"echo a > /a\" }}\nlayer \"b\" {{ run \"echo b > /b\" }}\n"
    );
    let spec = t.spec("env.kdl", &text);
    t.apply(&spec);
    // A changed first layer: the old a and b are no longer used by the root.
    t.spec("env.kdl", &text.replace("echo a > /a", "echo A > /a"));
    let root = t.apply(&spec).root();
    let count = || {
        serde_json::from_str::<serde_json::Value>(&t.envc(&["ls", "--json"]).stdout).unwrap()["layers"].as_array().unwrap().len()
    };
    assert_eq!(count(), 5);
    let dry = t.envc(&["gc", "--older-than", "0", "--dry-run"]);
    assert_eq!(dry.stdout.lines().count(), 2, "{}", dry.stdout);
    assert_eq!(count(), 5, "a dry run removes nothing");
    let recent = t.envc(&["gc"]);
    assert!(
        recent.stdout.is_empty(),
        "the default keeps layers used in the last 7 days: {}",
        recent.stdout
    );
    let r = t.envc(&["gc", "--older-than", "0"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{}", r.stdout);
    assert!(
        lines[0].starts_with("removed b ") && lines[1].starts_with("removed a "),
        "children before parents: {}",
        r.stdout
    );
    assert_eq!(count(), 3);
    assert_eq!(
        std::fs::read_to_string(root.join("a")).unwrap(),
        "A\n",
        "the root in use still works"
    );
    let none = t.envc(&["gc", "--keep-bytes", "0"]);
    assert!(
        none.stdout.is_empty(),
        "layers in use are never removed: {}",
        none.stdout
    );
    // Once the root is gone, everything can go.
    assert_eq!(t.envc(&["rm", "g"]).code, 0);
    let all = t.envc(&["gc", "--keep-bytes", "0"]);
    assert_eq!(all.stdout.lines().count(), 3, "{}", all.stdout);
    assert!(
        all.stdout
            .lines()
            .last()
            .unwrap()
            .starts_with("removed base "),
        "{}",
        all.stdout
    );
    assert_eq!(count(), 0);
    // And a new apply rebuilds from nothing.
    assert_eq!(t.apply(&spec).built(), ["base", "a", "b"]);
}

pub fn a_deep_chain_applies(kind: Kind) {
    let t = TestStore::new(kind, "deep");
    let mut text = format!("name \"deep\"\n{BASE}");
    // Under emulation (the LVM tests run in a TCG guest) every LVM command takes about a second.
    let depth = if kind == Kind::Lvm { 30 } else { 200 };
    for i in 0..depth {
        text.push_str(&format!("layer \"l{i}\" {{ run \"echo {i} > /f{i}\" }}\n"));
    }
    let spec = t.spec("env.kdl", &text);
    let r = t.apply(&spec);
    assert_eq!(r.built().len(), depth + 1);
    let root = r.root();
    for i in [0, 1, depth / 2, depth - 2, depth - 1] {
        assert_eq!(
            std::fs::read_to_string(root.join(format!("f{i}"))).unwrap(),
            format!("{i}\n")
        );
    }
    let run = t.envc(&[
        "run",
        spec.to_str().unwrap(),
        "--",
        "sh",
        "-c",
        &format!("cat /f0 /f{}", depth - 1),
    ]);
    assert_eq!(
        (run.code, run.stdout),
        (0, format!("0\n{}\n", depth - 1)),
        "{}",
        run.stderr
    );
    assert!(t.apply(&spec).built().is_empty());
}

pub fn shell_reads_commands_from_stdin(kind: Kind) {
    let t = TestStore::new(kind, "shell");
    let spec = t.spec(
        "env.kdl",
        &format!("name \"sh\"\n{BASE}layer \"a\" {{\n  env WHO=\"envc\"\n  run \"true\"\n}}\n"),
    );
    let mut child = t
        .cmd()
        .arg("shell")
        .arg(&spec)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"echo hello $WHO; exit 4\n")
        .unwrap();
    let r = Run::from(child.wait_with_output().unwrap());
    assert_eq!(r.code, 4, "{}", r.stderr);
    assert!(r.stdout.contains("hello envc"), "{}", r.stdout);
}

pub fn gc_leaves_layers_in_use_by_a_running_command_alone(kind: Kind) {
    let t = TestStore::new(kind, "gc-busy");
    let spec = t.spec(
        "env.kdl",
        &format!("name \"busy\"\n{BASE}layer \"a\" {{ run \"echo a > /a\" }}\n"),
    );
    t.apply(&spec);
    assert_eq!(t.envc(&["rm", "busy"]).code, 0);
    // No working root uses the layers now, but a running command does.
    let child = t
        .cmd()
        .args([
            "run",
            spec.to_str().unwrap(),
            "--",
            "sh",
            "-c",
            "sleep 2; cat /a",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(800));
    let gc = t.envc(&["gc", "--keep-bytes", "0"]);
    assert!(
        gc.stdout.is_empty(),
        "gc removed layers in use: {}",
        gc.stdout
    );
    let run = Run::from(child.wait_with_output().unwrap());
    assert_eq!(
        (run.code, run.stdout.as_str()),
        (0, "a\n"),
        "{}",
        run.stderr
    );
    let gc = t.envc(&["gc", "--keep-bytes", "0"]);
    assert_eq!(
        gc.stdout.lines().count(),
        2,
        "once the command ended, the layers can go: {}",
        gc.stdout
    );
}

pub fn an_unmounted_root_is_mounted_again_with_its_changes(kind: Kind) {
    let t = TestStore::new(kind, "remount");
    let spec = t.spec(
        "env.kdl",
        &format!("name \"m\"\n{BASE}layer \"a\" {{ run \"echo a > /a\" }}\n"),
    );
    let root = t.apply(&spec).root();
    std::fs::write(root.join("dirt"), "x").unwrap();
    // What a reboot does to the store's mounts.
    crate::common::unmount_below(&t.store.join("roots"));
    let again = t.apply(&spec);
    assert_eq!(again.root(), root);
    assert!(
        again.stderr.contains("root kept"),
        "an unchanged apply keeps the root: {}",
        again.stderr
    );
    assert_eq!(
        std::fs::read_to_string(root.join("dirt")).unwrap(),
        "x",
        "the root's changes survive"
    );
    assert_eq!(std::fs::read_to_string(root.join("a")).unwrap(), "a\n");
}

pub fn gc_removes_nothing_while_a_root_record_is_unreadable(kind: Kind) {
    let t = TestStore::new(kind, "gcrec");
    let text = format!("name \"g\"\n{BASE}layer \"a\" {{ run \"echo a > /a\" }}\n");
    let spec = t.spec("env.kdl", &text);
    t.apply(&spec);
    // Another root whose layers gc could remove, but for the unreadable record.
    let other = t.spec(
        "other.kdl",
        &text.replace("\"g\"", "\"h\"").replace("echo a", "echo b"),
    );
    let other_root = t.apply(&other).root();
    assert_eq!(t.envc(&["rm", "h"]).code, 0);
    let record = t.store.join("roots/g/root.json");
    for (what, damage) in [("garbage", Some("{not json")), ("missing", None)] {
        match damage {
            Some(text) => std::fs::write(&record, text).unwrap(),
            None => std::fs::remove_file(&record).unwrap(),
        }
        let r = t.envc(&["gc", "--keep-bytes", "0"]);
        assert_eq!(r.code, 0, "{what}: {}", r.stderr);
        assert!(
            r.stdout.is_empty(),
            "{what} record: gc removed {}",
            r.stdout
        );
        assert!(
            r.stderr.contains("working root `g`") && r.stderr.contains("root.json"),
            "{what} record: the warning names the root and its record: {}",
            r.stderr
        );
    }
    assert!(!other_root.join("b").exists());
    // Repaired by removing the root: then everything can go.
    assert_eq!(t.envc(&["rm", "g"]).code, 0);
    let all = t.envc(&["gc", "--keep-bytes", "0"]);
    assert_eq!(
        all.stdout.lines().count(),
        3,
        "{}{}",
        all.stdout,
        all.stderr
    );
}

/// Setuid-root programs that a step leaves in a root work inside envc's sandbox, for a user of
/// the root, and grant nothing to an unprivileged host user: the store is root's alone, and a
/// working root mounted on the host (overlay, LVM) is mounted nosuid,nodev.
pub fn setuid_programs_work_inside_and_not_from_the_host(kind: Kind) {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    let t = TestStore::new(kind, "setuid");
    common::euid_probe(&t.specs);
    let text = format!(
        "name \"s\"\n{BASE}layer \"suid\" {{\n  copy \"euid\" \"/usr/local/bin/euid\" mode=\"4755\"\n  \
         run \"cp /bin/busybox /bin/suidbox && chmod 4755 /bin/suidbox\"\n  \
         run #\"e=$(/usr/local/bin/euid); echo \"euid $e\"; test \"$e\" = 0\"# user=\"builder\"\n}}\n"
    );
    // The last step checks that setuid works in a build step run by a user of the root.
    let spec = t.spec("env.kdl", &text);
    let root = t.apply(&spec).root();
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode(&t.store), 0o700);
    let mut programs = vec![root.join("usr/local/bin/euid"), root.join("bin/suidbox")];
    // Sealed layers are files on the host too, but on LVM (volumes not mounted once sealed).
    if kind != Kind::Lvm {
        let layer = std::fs::read_dir(t.store.join("layers"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|l| l.join("usr/local/bin/euid").exists())
            .expect("the layer holding the programs");
        programs.extend([layer.join("usr/local/bin/euid"), layer.join("bin/suidbox")]);
    }
    let as_nobody = |p: &std::path::Path| {
        Command::new(p)
            .arg0("busybox")
            .arg("id")
            .uid(65534)
            .gid(65534)
            .output()
    };
    for p in &programs {
        assert_eq!(mode(p), 0o4755, "{}", p.display());
        match as_nobody(p) {
            Err(e) => assert_eq!(
                e.kind(),
                std::io::ErrorKind::PermissionDenied,
                "{}: {e}",
                p.display()
            ),
            Ok(o) => panic!(
                "an unprivileged user ran {}: {}",
                p.display(),
                String::from_utf8_lossy(&o.stdout)
            ),
        }
    }
    // A working root mounted on the host is mounted nosuid,nodev: with the store opened up (by
    // hand), the program runs, but not as root. A btrfs root is a subvolume, no mount of its
    // own: there the store's mode alone keeps users out.
    if kind != Kind::Btrfs {
        let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let want = root.to_str().unwrap();
        let options = info
            .lines()
            .map(|l| l.split(' ').collect::<Vec<_>>())
            .find(|f| f.get(4) == Some(&want))
            .map(|f| f[5].to_owned())
            .expect("the working root is a mount");
        let options: Vec<&str> = options.split(',').collect();
        assert!(
            options.contains(&"nosuid") && options.contains(&"nodev"),
            "{options:?}"
        );
        for d in [t.store.clone(), t.store.join("roots")] {
            std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let o = as_nobody(&root.join("usr/local/bin/euid")).unwrap();
        assert_eq!(String::from_utf8_lossy(&o.stdout), "65534\n");
        // The next command that opens the store closes it again.
        run_ok(t.cmd().arg("ls"));
        assert_eq!(mode(&t.store), 0o700);
        assert_eq!(mode(&t.store.join("roots")), 0o700);
    }
    // Inside the sandbox, a user of the root gets euid 0 from the setuid program: in a throwaway
    // snapshot and in the working root.
    for keep in [false, true] {
        let mut cmd = t.cmd();
        cmd.arg("run");
        if keep {
            cmd.arg("--keep");
        }
        cmd.arg(&spec)
            .args(["--", "su", "builder", "-c", "/usr/local/bin/euid"]);
        let r = run_ok(&mut cmd);
        assert_eq!(r.stdout, "0\n", "keep: {keep}: {}", r.stderr);
    }
    assert!(t.stray_mounts().is_empty(), "{:?}", t.stray_mounts());
    assert_eq!(
        std::fs::read_dir(t.store.join("tmp")).unwrap().count(),
        0,
        "the view of the working root is gone"
    );
    // The view a killed `run --keep` leaves is removed by the next apply like a throwaway root,
    // and the root behind it keeps its files (a btrfs root, no mount, needs no view).
    if kind == Kind::Btrfs {
        return;
    }
    let mut child = t
        .cmd()
        .args(["run", "--keep"])
        .arg(&spec)
        .args(["--", "sleep", "60"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while t.stray_mounts().is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no view mounted"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    child.wait().unwrap();
    assert_eq!(t.stray_mounts().len(), 1, "the killed run's view is left");
    t.apply(&spec);
    assert!(t.stray_mounts().is_empty(), "{:?}", t.stray_mounts());
    assert_eq!(std::fs::read_dir(t.store.join("tmp")).unwrap().count(), 0);
    assert_eq!(mode(&root.join("usr/local/bin/euid")), 0o4755);
}

fn run_ok(cmd: &mut Command) -> Run {
    let r = Run::from(cmd.output().unwrap());
    assert_eq!(r.code, 0, "{}", r.stderr);
    r
}

/// A contract test and its name.
pub type Named = (&'static str, fn(Kind));

/// Every contract test, by name.
pub const ALL: &[Named] = &[
    (
        "every_step_kind_builds_and_caches",
        every_step_kind_builds_and_caches,
    ),
    (
        "a_change_rebuilds_its_layer_and_later_ones_only",
        a_change_rebuilds_its_layer_and_later_ones_only,
    ),
    (
        "shared_prefixes_are_built_once",
        shared_prefixes_are_built_once,
    ),
    ("reset_discards_changes", reset_discards_changes),
    (
        "run_uses_a_throwaway_snapshot_and_passes_the_exit_status",
        run_uses_a_throwaway_snapshot_and_passes_the_exit_status,
    ),
    (
        "a_failing_step_points_at_its_line_and_seals_nothing",
        a_failing_step_points_at_its_line_and_seals_nothing,
    ),
    (
        "copy_never_writes_through_a_symlink_to_the_host",
        copy_never_writes_through_a_symlink_to_the_host,
    ),
    (
        "concurrent_applies_build_each_layer_once",
        concurrent_applies_build_each_layer_once,
    ),
    (
        "kill_9_mid_step_then_apply_succeeds",
        kill_9_mid_step_then_apply_succeeds,
    ),
    ("rm_drops_the_working_root", rm_drops_the_working_root),
    (
        "why_explains_misses_field_by_field",
        why_explains_misses_field_by_field,
    ),
    (
        "gc_removes_unused_layers_children_first_and_never_one_in_use",
        gc_removes_unused_layers_children_first_and_never_one_in_use,
    ),
    ("a_deep_chain_applies", a_deep_chain_applies),
    (
        "shell_reads_commands_from_stdin",
        shell_reads_commands_from_stdin,
    ),
    (
        "an_unmounted_root_is_mounted_again_with_its_changes",
        an_unmounted_root_is_mounted_again_with_its_changes,
    ),
    (
        "gc_removes_nothing_while_a_root_record_is_unreadable",
        gc_removes_nothing_while_a_root_record_is_unreadable,
    ),
    (
        "gc_leaves_layers_in_use_by_a_running_command_alone",
        gc_leaves_layers_in_use_by_a_running_command_alone,
    ),
    (
        "setuid_programs_work_inside_and_not_from_the_host",
        setuid_programs_work_inside_and_not_from_the_host,
    ),
];
