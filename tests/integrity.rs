//! Store integrity, for real on overlayfs and on btrfs (a loop-file filesystem the test makes):
//! records are written durably, a sealed layer is never left without its record, leftovers of
//! dead processes are removed (those of live ones are not), and nothing in the store is followed
//! through a symlink or used when it has the wrong type.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Kind, Run, TempDir, TestStore, privileged};

/// A busybox base (the tarball every TestStore's spec directory holds).
const BASE: &str = "base \"tar\" \"busybox.tar.gz\"\n";

macro_rules! both {
    ($($name:ident),* $(,)?) => {
        mod overlay {
            $(#[test] fn $name() { if super::privileged(stringify!($name)) { super::$name(super::Kind::Overlay) } })*
        }
        mod btrfs {
            $(#[test] fn $name() { if super::privileged(stringify!($name)) { super::$name(super::Kind::Btrfs) } })*
        }
    };
}

both!(
    records_are_fsynced_renamed_and_their_directory_fsynced,
    a_kill_at_any_record_write_or_publish_leaves_no_layer_without_its_record,
    a_layer_sealed_without_its_record_is_repaired_by_the_next_apply,
    leftovers_of_dead_processes_go_and_those_of_live_ones_stay,
    a_layer_replaced_by_a_symlink_is_refused_and_its_target_untouched,
    a_layer_replaced_by_a_file_is_named_with_its_repair,
    a_lock_file_symlink_is_refused_and_its_target_not_created,
    a_record_naming_another_layer_is_corrupt_until_an_apply_rewrites_it,
);

/// A store with a three-layer spec applied; returns the spec and the ids of base, a, b.
fn applied(kind: Kind, name: &str) -> (TestStore, PathBuf, Vec<String>) {
    let t = TestStore::new(kind, name);
    let spec = t.spec(
        "env.kdl",
        &format!(
            "name \"integ\"\n{BASE}layer \"a\" {{ run \"echo a > /a\" }}\nlayer \"b\" {{ run \"echo b > /b\" }}\n"
        ),
    );
    t.apply(&spec);
    let ids = t.plan_ids(&spec);
    (t, spec, ids)
}

/// Removes a sealed layer behind envc's back (a read-only subvolume on btrfs).
fn delete_layer(kind: Kind, path: &Path) {
    if kind == Kind::Btrfs {
        let out = Command::new("btrfs")
            .args(["subvolume", "delete"])
            .arg(path)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
    } else {
        std::fs::remove_dir_all(path).unwrap();
    }
}

/// A pid no process has: that of a child that has exited.
fn dead_pid() -> u32 {
    let mut child = Command::new("true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    assert!(!Path::new("/proc").join(pid.to_string()).exists());
    pid
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn records_are_fsynced_renamed_and_their_directory_fsynced(kind: Kind) {
    let t = TestStore::new(kind, "durable");
    let spec = t.spec(
        "env.kdl",
        &format!("name \"dur\"\n{BASE}layer \"a\" {{ run \"echo a > /a\" }}\n"),
    );
    let trace = t.specs.join("strace.out");
    let out = Command::new("strace")
        .args([
            "-f",
            "-y",
            "-qq",
            "-e",
            "trace=fsync,rename,renameat,renameat2",
            "-o",
        ])
        .arg(&trace)
        .arg(common::ENVC)
        .args(t.cmd().get_args())
        .arg("apply")
        .arg(&spec)
        .envs(t.cmd().get_envs().filter_map(|(k, v)| Some((k, v?))))
        .stdin(Stdio::null())
        .output()
        .expect("strace (apt-get install strace)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<String> = std::fs::read_to_string(&trace)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    // `renameat(3</store/meta>, "ID.json.tmp.PID.N", 3</store/meta>, "ID.json") = 0`
    let mut records = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        if !l.contains("rename") || !l.contains(".json.tmp.") {
            continue;
        }
        let quoted: Vec<&str> = l.split('"').skip(1).step_by(2).collect();
        let dir = l
            .split_once('<')
            .and_then(|(_, r)| r.split_once('>'))
            .map(|(d, _)| d.to_owned())
            .unwrap();
        let (tmp, name) = (quoted[0], quoted[1]);
        assert!(l.trim_end().ends_with("= 0"), "{l}");
        let synced_file = lines[..i]
            .iter()
            .any(|p| p.contains("fsync(") && p.contains(&format!("{dir}/{tmp}>")));
        let synced_dir = lines[i + 1..]
            .iter()
            .any(|p| p.contains("fsync(") && p.contains(&format!("<{dir}>")));
        assert!(
            synced_file,
            "{name}: not fsynced before its rename:\n{}",
            lines.join("\n")
        );
        assert!(
            synced_dir,
            "{name}: its directory not fsynced after the rename"
        );
        records.push(name.to_owned());
    }
    for want in ["store.json", "root.json"] {
        assert!(
            records.iter().any(|r| r == want),
            "{want} not written durably: {records:?}"
        );
    }
    let metas: std::collections::BTreeSet<&String> =
        records.iter().filter(|r| r.len() == 64 + 5).collect();
    assert_eq!(metas.len(), 2, "both layers' records: {records:?}");
    // No temporary is left anywhere.
    for dir in [
        t.store.clone(),
        t.store.join("meta"),
        t.store.join("roots/dur"),
    ] {
        assert!(
            names(&dir).iter().all(|n| !n.contains(".tmp.")),
            "{}: {:?}",
            dir.display(),
            names(&dir)
        );
    }
}

fn a_layer_sealed_without_its_record_is_repaired_by_the_next_apply(kind: Kind) {
    let (t, spec, ids) = applied(kind, "repair");
    let meta = t.store.join("meta").join(format!("{}.json", ids[1]));
    // What a kill between sealing and recording left, with an older envc.
    std::fs::remove_file(&meta).unwrap();
    let ls = t.envc(&["ls"]);
    assert!(ls.stdout.contains("? "), "shown as unknown: {}", ls.stdout);
    let r = t.apply(&spec);
    assert_eq!(r.cached(), ["base", "a", "b"], "{}", r.stderr);
    assert!(
        r.stderr.contains("warning: layer `a`")
            && r.stderr.contains("no record")
            && r.stderr.contains(meta.to_str().unwrap()),
        "{}",
        r.stderr
    );
    let ls = t.envc(&["ls"]);
    assert_eq!(ls.code, 0, "{}", ls.stderr);
    assert!(!ls.stdout.contains("? "), "{}", ls.stdout);
    assert!(
        ls.stdout.contains(&format!(" a {}", &ids[1][..12])),
        "{}",
        ls.stdout
    );
    let v: serde_json::Value = serde_json::from_str(&t.envc(&["ls", "--json"]).stdout).unwrap();
    let a = v["layers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["id"] == ids[1].as_str())
        .unwrap();
    assert_eq!(
        (a["name"].as_str(), a["env"].as_str()),
        (Some("a"), Some("integ"))
    );
    assert_eq!(a["parent"].as_str(), Some(ids[0].as_str()));
    assert!(a["size"].as_u64().unwrap() > 0, "measured: {a}");
    assert!(a["key"].is_object(), "{a}");
    // Repaired once: the next apply says nothing.
    let r = t.apply(&spec);
    assert!(!r.stderr.contains("warning"), "{}", r.stderr);
}

fn leftovers_of_dead_processes_go_and_those_of_live_ones_stay(kind: Kind) {
    let (t, spec, ids) = applied(kind, "leftovers");
    let dead = dead_pid();
    // What killed processes leave: a record of a layer never published, record temporaries, a
    // throwaway root of `envc run`.
    let orphan_id = "ab".repeat(32);
    let make = || {
        let meta = t.store.join("meta");
        std::fs::copy(
            meta.join(format!("{}.json", ids[2])),
            meta.join(format!("{orphan_id}.json")),
        )
        .unwrap();
        let tmps = [
            meta.join(format!("{}.json.tmp.{dead}.0", ids[1])),
            meta.join(format!("{}.tmp.{dead}", ids[0])),
            t.store.join(format!("store.json.tmp.{dead}.1")),
            t.store.join(format!("roots/integ/root.json.tmp.{dead}.2")),
        ];
        for p in &tmps {
            std::fs::write(p, "half").unwrap();
        }
        let run = t.store.join(format!("tmp/run-{dead}-123-0"));
        if kind == Kind::Btrfs {
            let out = Command::new("btrfs")
                .args(["subvolume", "create"])
                .arg(&run)
                .output()
                .unwrap();
            assert!(out.status.success(), "{out:?}");
        } else {
            std::fs::create_dir_all(run.join("upper/etc")).unwrap();
        }
        std::fs::write(run.join("left"), "x").unwrap();
        (meta.join(format!("{orphan_id}.json")), tmps, run)
    };
    let gone = |orphan: &Path, tmps: &[PathBuf], run: &Path| {
        assert!(!orphan.exists(), "orphan record kept");
        for p in tmps {
            assert!(!p.exists(), "{} kept", p.display());
        }
        assert!(!run.exists(), "dead run kept");
        assert!(!t.store.join(format!("locks/run-{dead}.lock")).exists());
    };
    // The next apply removes them.
    let (orphan, tmps, run) = make();
    let r = t.apply(&spec);
    assert!(!r.stderr.contains("warning"), "{}", r.stderr);
    gone(&orphan, &tmps, &run);

    // So does gc, while a live run's throwaway root and its layers stay.
    let (orphan, tmps, run) = make();
    let child = t
        .cmd()
        .args([
            "run",
            spec.to_str().unwrap(),
            "--",
            "sh",
            "-c",
            "sleep 3; cat /b",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let live_prefix = format!("run-{}-", child.id());
    let started = Instant::now();
    while !names(&t.store.join("tmp"))
        .iter()
        .any(|n| n.starts_with(&live_prefix))
    {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the run never started"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let gc = t.envc(&["gc"]);
    assert_eq!(gc.code, 0, "{}", gc.stderr);
    assert!(
        gc.stdout.is_empty(),
        "no layer is old enough: {}",
        gc.stdout
    );
    assert!(!gc.stderr.contains("warning"), "{}", gc.stderr);
    gone(&orphan, &tmps, &run);
    assert!(
        names(&t.store.join("tmp"))
            .iter()
            .any(|n| n.starts_with(&live_prefix)),
        "the live run's root was removed"
    );
    let r = Run::from(child.wait_with_output().unwrap());
    assert_eq!((r.code, r.stdout.as_str()), (0, "b\n"), "{}", r.stderr);
    assert!(
        names(&t.store.join("tmp"))
            .iter()
            .all(|n| !n.starts_with("run-")),
        "{:?}",
        names(&t.store.join("tmp"))
    );
    // Sealed layers keep their records.
    for id in &ids {
        assert!(t.store.join("meta").join(format!("{id}.json")).is_file());
    }
}

fn a_layer_replaced_by_a_symlink_is_refused_and_its_target_untouched(kind: Kind) {
    let (t, spec, ids) = applied(kind, "symlayer");
    let decoy_dir = TempDir::new("decoy");
    let decoy = decoy_dir.path().join("precious");
    std::fs::write(&decoy, "host data\n").unwrap();
    let layer = t.store.join("layers").join(&ids[1]);
    delete_layer(kind, &layer);
    std::os::unix::fs::symlink(decoy_dir.path(), &layer).unwrap();
    let r = t.envc(&["apply", spec.to_str().unwrap()]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains(layer.to_str().unwrap())
            && r.stderr.contains("a symbolic link")
            && r.stderr.contains(&format!("rm {}", layer.display())),
        "{}",
        r.stderr
    );
    // ls and gc name it and leave it alone.
    let ls = t.envc(&["ls"]);
    assert_eq!(ls.code, 0, "{}", ls.stderr);
    assert!(ls.stderr.contains(layer.to_str().unwrap()), "{}", ls.stderr);
    assert_eq!(t.envc(&["rm", "integ"]).code, 0);
    let gc = t.envc(&["gc", "--keep-bytes", "0"]);
    assert_eq!(gc.code, 0, "{}", gc.stderr);
    assert!(gc.stderr.contains(layer.to_str().unwrap()), "{}", gc.stderr);
    assert!(
        std::fs::symlink_metadata(&layer)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert_eq!(std::fs::read_to_string(&decoy).unwrap(), "host data\n");
    assert_eq!(names(decoy_dir.path()), ["precious"]);
    // The repair the error names works.
    std::fs::remove_file(&layer).unwrap();
    let r = t.apply(&spec);
    assert!(r.built().contains(&"a".to_owned()), "{}", r.stderr);
    assert_eq!(std::fs::read_to_string(r.root().join("a")).unwrap(), "a\n");
    assert_eq!(names(decoy_dir.path()), ["precious"]);
}

fn a_layer_replaced_by_a_file_is_named_with_its_repair(kind: Kind) {
    let (t, spec, ids) = applied(kind, "filelayer");
    let layer = t.store.join("layers").join(&ids[2]);
    delete_layer(kind, &layer);
    std::fs::write(&layer, "not a layer").unwrap();
    let r = t.envc(&["apply", spec.to_str().unwrap()]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains(layer.to_str().unwrap())
            && r.stderr.contains("a regular file")
            && r.stderr.contains("the layer is rebuilt"),
        "{}",
        r.stderr
    );
    assert_eq!(std::fs::read_to_string(&layer).unwrap(), "not a layer");
    std::fs::remove_file(&layer).unwrap();
    let r = t.apply(&spec);
    assert_eq!(r.built(), ["b"], "{}", r.stderr);
}

fn a_lock_file_symlink_is_refused_and_its_target_not_created(kind: Kind) {
    let (t, spec, ids) = applied(kind, "symlock");
    let outside = TempDir::new("outside");
    let target = outside.path().join("created-by-envc");
    let lock = t.store.join("locks").join(format!("{}.lock", ids[0]));
    std::fs::remove_file(&lock).unwrap();
    std::os::unix::fs::symlink(&target, &lock).unwrap();
    let r = t.envc(&["apply", spec.to_str().unwrap()]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains(lock.to_str().unwrap()) && r.stderr.contains("a symbolic link"),
        "{}",
        r.stderr
    );
    assert!(!target.exists(), "envc created the link's target");
    // gc collects the other layers and names the lock it cannot take.
    assert_eq!(t.envc(&["rm", "integ"]).code, 0);
    let gc = t.envc(&["gc", "--keep-bytes", "0"]);
    assert_eq!(gc.code, 0, "{}", gc.stderr);
    assert_eq!(gc.stdout.lines().count(), 2, "{}", gc.stdout);
    assert!(gc.stderr.contains(lock.to_str().unwrap()), "{}", gc.stderr);
    assert!(!target.exists(), "envc created the link's target");
    std::fs::remove_file(&lock).unwrap();
    let r = t.apply(&spec);
    assert_eq!(r.cached(), ["base"], "{}", r.stderr);
    assert!(std::fs::symlink_metadata(&lock).unwrap().is_file());
}

fn a_record_naming_another_layer_is_corrupt_until_an_apply_rewrites_it(kind: Kind) {
    let (t, spec, ids) = applied(kind, "mismatch");
    let meta = |i: usize| t.store.join("meta").join(format!("{}.json", ids[i]));
    std::fs::copy(meta(2), meta(1)).unwrap();
    let ls = t.envc(&["ls"]);
    assert_eq!(ls.code, 1, "{}", ls.stdout);
    assert!(
        ls.stderr.contains(meta(1).to_str().unwrap()) && ls.stderr.contains("records layer"),
        "{}",
        ls.stderr
    );
    let r = t.apply(&spec);
    assert!(r.stderr.contains("an unreadable record"), "{}", r.stderr);
    let ls = t.envc(&["ls"]);
    assert_eq!(ls.code, 0, "{}", ls.stderr);
    assert!(
        ls.stdout.contains(&format!(" a {}", &ids[1][..12])),
        "{}",
        ls.stdout
    );
}

/// Every sealed layer has a readable record naming it.
fn assert_every_layer_recorded(t: &TestStore, context: &str) {
    for id in names(&t.store.join("layers")) {
        let meta = t.store.join("meta").join(format!("{id}.json"));
        let text = std::fs::read_to_string(&meta)
            .unwrap_or_else(|e| panic!("{context}: layer {id} without its record: {e}"));
        let v: serde_json::Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{context}: record of {id} unreadable: {e}"));
        assert_eq!(v["id"].as_str(), Some(id.as_str()), "{context}");
    }
}

fn a_kill_at_any_record_write_or_publish_leaves_no_layer_without_its_record(kind: Kind) {
    // envc itself (not its children) is killed with SIGKILL at its Nth rename (overlay: the
    // publishing of a layer, or of its log) or its Nth renameat (a record: store.json, a
    // layer's record before the layer is published, root.json, a layer's last use).
    let mut kills = 0;
    for (call, n) in (1..=4)
        .map(|n| ("rename", n))
        .chain((1..=6).map(|n| ("renameat", n)))
    {
        let context = format!("killed at {call} #{n}");
        let t = TestStore::new(kind, "killrec");
        let spec = t.spec(
            "env.kdl",
            &format!("name \"k\"\n{BASE}layer \"a\" {{ run \"echo a > /a\" }}\n"),
        );
        let out = Command::new("strace")
            .args(["-qq", "-o", "/dev/null", "-e"])
            .arg(format!("trace={call}"))
            .arg("-e")
            .arg(format!("inject={call}:signal=KILL:when={n}"))
            .arg(common::ENVC)
            .args(t.cmd().get_args())
            .arg("apply")
            .arg(&spec)
            .envs(t.cmd().get_envs().filter_map(|(k, v)| Some((k, v?))))
            .stdin(Stdio::null())
            .output()
            .expect("strace (apt-get install strace)");
        if out.status.success() {
            continue; // fewer such calls than n on this backend
        }
        kills += 1;
        assert_every_layer_recorded(&t, &context);
        let r = t.apply(&spec);
        assert_eq!(
            std::fs::read_to_string(r.root().join("a")).unwrap(),
            "a\n",
            "{context}"
        );
        assert_every_layer_recorded(&t, &context);
        let ls = t.envc(&["ls"]);
        assert!(
            ls.code == 0 && !ls.stdout.contains("? "),
            "{context}: {}",
            ls.stdout
        );
        assert_eq!(t.envc(&["gc"]).code, 0, "{context}");
        let mut layers = names(&t.store.join("layers"));
        layers.iter_mut().for_each(|l| l.push_str(".json"));
        let mut metas = names(&t.store.join("meta"));
        metas.retain(|m| !m.ends_with(".log"));
        assert_eq!(
            metas, layers,
            "{context}: a record without a layer or a temporary"
        );
        for dir in [t.store.clone(), t.store.join("roots/k")] {
            assert!(
                names(&dir).iter().all(|n| !n.contains(".tmp.")),
                "{context}: {:?}",
                names(&dir)
            );
        }
    }
    assert!(kills >= 6, "only {kills} kill points were reached");
}
