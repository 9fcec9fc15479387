//! Copy steps copy exactly the bytes their layer id was computed from: a source changed after the
//! spec was compiled (while an earlier layer builds) is refused, its layer rolled back, and the
//! store never holds a layer under an id that names other bytes. Run for real on overlayfs and
//! btrfs with a busybox base (as root; skipped with a reason otherwise).

mod common;

use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::symlink;
use std::path::Path;
use std::process::Stdio;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{Kind, Run, TestStore, privileged};

const BASE: &str = "base \"tar\" \"busybox.tar.gz\"\n";

/// How long an apply may take before the test calls it hung.
const HANG: Duration = Duration::from_secs(60);

/// A spec whose layer `slow` builds for 3 s before layer `files` copies `source` to `/dest`.
fn spec(t: &TestStore, source: &str) -> std::path::PathBuf {
    t.spec(
        "env.kdl",
        &format!(
            "name \"c\"\n{BASE}layer \"slow\" {{ run \"sleep 3\" }}\nlayer \"files\" {{\n  copy \"{source}\" \"/dest\"\n}}\n"
        ),
    )
}

/// The id `envc plan` gives the layer named `name`.
fn layer_id(t: &TestStore, spec: &Path, name: &str) -> String {
    let r = t.envc(&["plan", "--json", spec.to_str().unwrap()]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let plan: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    let layer = plan["layers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["name"] == name)
        .unwrap_or_else(|| panic!("no layer {name} in {}", r.stdout));
    layer["id"].as_str().unwrap().to_owned()
}

/// Runs `envc apply` (compiling the spec as it is now) and calls `swap` as soon as layer `slow`
/// starts building, that is after compiling and before the copy. Fails the test if the apply
/// takes longer than [`HANG`].
fn apply_swapping(t: &TestStore, spec: &Path, swap: impl FnOnce()) -> Run {
    let mut child = t
        .cmd()
        .arg("apply")
        .arg(spec)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let started = Instant::now();
    let mut lines = Vec::new();
    let mut swap = Some(swap);
    loop {
        let left = HANG.saturating_sub(started.elapsed());
        match rx.recv_timeout(left) {
            Ok(line) => {
                if line.starts_with("[slow] building")
                    && let Some(swap) = swap.take()
                {
                    swap();
                }
                lines.push(line);
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("apply hung for {} s:\n{}", HANG.as_secs(), lines.join("\n"));
            }
        }
    }
    assert!(
        swap.is_none(),
        "layer slow never built:\n{}",
        lines.join("\n")
    );
    let mut out = String::new();
    stdout.read_to_string(&mut out).unwrap();
    let status = child.wait().unwrap();
    Run {
        code: status.code().unwrap_or(-1),
        stdout: out,
        stderr: lines.join("\n"),
    }
}

/// The apply failed because the copy source changed, and nothing of layer `files` stayed: no
/// layer record with its id, no directory of that name anywhere in the store, no staging.
fn assert_refused_and_rolled_back(t: &TestStore, r: &Run, id: &str, detail: &str) {
    assert_ne!(r.code, 0, "the apply must fail:\n{}", r.stderr);
    for want in [
        "verify copy source",
        "changed since the spec was compiled",
        "run the apply again",
        detail,
    ] {
        assert!(
            r.stderr.contains(want),
            "{want:?} missing from:\n{}",
            r.stderr
        );
    }
    let ls: serde_json::Value = serde_json::from_str(&t.envc(&["ls", "--json"]).stdout).unwrap();
    let ids: Vec<&str> = ls["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["id"].as_str().unwrap())
        .collect();
    assert!(!ids.contains(&id), "layer {id} was recorded: {ids:?}");
    assert_eq!(ids.len(), 2, "base and slow are kept: {ids:?}");
    let named = entries_named(&t.store, id);
    assert!(named.is_empty(), "layer {id} left in the store: {named:?}");
    assert_eq!(
        std::fs::read_dir(t.store.join("staging"))
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| !e.file_name().to_string_lossy().ends_with(".log"))
            .count(),
        0,
        "staging is empty after the rollback"
    );
}

/// Paths below `dir` (symlinks not followed) whose name is exactly `name`.
fn entries_named(dir: &Path, name: &str) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in rd.flatten() {
        let p = e.path();
        if e.file_name() == name {
            out.push(p.clone());
        }
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            out.extend(entries_named(&p, name));
        }
    }
    out
}

/// Whether any regular file below `dir` (symlinks not followed) holds exactly `content`.
fn holds(dir: &Path, content: &[u8]) -> bool {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return false;
    };
    rd.flatten().any(|e| match e.file_type() {
        Ok(t) if t.is_dir() => holds(&e.path(), content),
        Ok(t) if t.is_file() => std::fs::read(e.path()).is_ok_and(|c| c == content),
        _ => false,
    })
}

/// (a) The file's content changes after compiling: refused, rolled back; an apply that compiles
/// the new content builds it under a new id, and an unchanged apply reuses it.
fn changed_content(kind: Kind) {
    let t = TestStore::new(kind, "copy-changed");
    std::fs::create_dir_all(t.specs.join("files")).unwrap();
    let payload = t.specs.join("files/payload");
    std::fs::write(&payload, "legitimate\n").unwrap();
    let spec = spec(&t, "files/payload");
    let id = layer_id(&t, &spec, "files");
    let r = apply_swapping(&t, &spec, || {
        std::fs::write(&payload, "poisoned\n").unwrap();
    });
    assert_refused_and_rolled_back(&t, &r, &id, "the plan has");
    let again = t.apply(&spec);
    assert_eq!(again.built(), ["files"], "{}", again.stderr);
    assert_eq!(
        std::fs::read_to_string(again.root().join("dest")).unwrap(),
        "poisoned\n"
    );
    let new_id = layer_id(&t, &spec, "files");
    assert_ne!(new_id, id);
    let cached = t.apply(&spec);
    assert!(cached.built().is_empty(), "{}", cached.stderr);
}

/// (b) The file is replaced by a symlink to a host file outside the spec's directory.
fn swapped_for_a_symlink(kind: Kind) {
    let t = TestStore::new(kind, "copy-symlink");
    let outside = common::TempDir::new("copy-outside");
    let secret = outside.path().join("secret");
    std::fs::write(&secret, "host secret\n").unwrap();
    std::fs::create_dir_all(t.specs.join("files")).unwrap();
    let payload = t.specs.join("files/payload");
    std::fs::write(&payload, "legitimate\n").unwrap();
    let spec = spec(&t, "files/payload");
    let id = layer_id(&t, &spec, "files");
    let r = apply_swapping(&t, &spec, || {
        std::fs::remove_file(&payload).unwrap();
        symlink(&secret, &payload).unwrap();
    });
    assert_refused_and_rolled_back(&t, &r, &id, "is now a symbolic link");
    assert!(
        !holds(&t.store, b"host secret\n"),
        "the outside file was copied into the store"
    );
}

/// (c) A FIFO is swapped in: refused at once, never opened for a blocking read.
fn swapped_for_a_fifo(kind: Kind) {
    let t = TestStore::new(kind, "copy-fifo");
    std::fs::create_dir_all(t.specs.join("files")).unwrap();
    let payload = t.specs.join("files/payload");
    std::fs::write(&payload, "legitimate\n").unwrap();
    let spec = spec(&t, "files/payload");
    let id = layer_id(&t, &spec, "files");
    let r = apply_swapping(&t, &spec, || {
        std::fs::remove_file(&payload).unwrap();
        let status = std::process::Command::new("mkfifo")
            .arg(&payload)
            .status()
            .unwrap();
        assert!(status.success());
    });
    assert_refused_and_rolled_back(&t, &r, &id, "is now a fifo");
}

/// (d) A directory source whose subdirectory is swapped for a symlink to a host directory.
fn subdirectory_swapped_for_a_symlink(kind: Kind) {
    let t = TestStore::new(kind, "copy-subdir");
    let outside = common::TempDir::new("copy-outside-dir");
    std::fs::write(outside.path().join("secret"), "host secret\n").unwrap();
    let sub = t.specs.join("tree/sub");
    std::fs::create_dir_all(&sub).unwrap();
    std::fs::write(sub.join("a.txt"), "a\n").unwrap();
    let spec = spec(&t, "tree");
    let id = layer_id(&t, &spec, "files");
    let r = apply_swapping(&t, &spec, || {
        std::fs::remove_dir_all(&sub).unwrap();
        symlink(outside.path(), &sub).unwrap();
    });
    assert_refused_and_rolled_back(&t, &r, &id, "the plan has");
    assert!(
        !holds(&t.store, b"host secret\n"),
        "the walk followed the symlink"
    );
}

macro_rules! on_every_backend {
    ($($name:ident),* $(,)?) => {
        mod overlay {
            $(#[test] fn $name() { if super::privileged(stringify!($name)) { super::$name(super::Kind::Overlay) } })*
        }
        mod btrfs {
            $(#[test] fn $name() { if super::privileged(stringify!($name)) { super::$name(super::Kind::Btrfs) } })*
        }
    };
}

on_every_backend!(
    changed_content,
    swapped_for_a_symlink,
    swapped_for_a_fifo,
    subdirectory_swapped_for_a_symlink,
);

/// (f) `check` on a spec whose copy source is a FIFO: a diagnostic, at once (no privileges needed).
#[test]
fn check_reports_a_fifo_source_promptly() {
    let dir = common::TempDir::new("copy-check-fifo");
    let fifo = dir.path().join("pipe");
    let status = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(status.success());
    // `check` hashes the base tarball too: any bytes do.
    std::fs::write(dir.path().join("busybox.tar.gz"), "not read as a tarball").unwrap();
    let spec = dir.path().join("env.kdl");
    std::fs::write(
        &spec,
        format!("name \"c\"\n{BASE}layer \"files\" {{\n  copy \"pipe\" \"/dest\"\n}}\n"),
    )
    .unwrap();
    let mut child = std::process::Command::new(common::ENVC)
        .env("NO_COLOR", "1")
        .env("COLUMNS", "200")
        .arg("check")
        .arg(&spec)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("envc check blocked on a FIFO copy source for 30 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let r = Run::from(child.wait_with_output().unwrap());
    assert_eq!(r.code, 3, "an invalid spec: {}", r.stderr);
    assert!(
        r.stderr.contains("envc::spec::copy_source_unreadable"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("`pipe` is a fifo"), "{}", r.stderr);
    assert!(
        r.stderr.contains("env.kdl:4:8"),
        "points at the step: {}",
        r.stderr
    );
}

/// A base tarball is unpacked from the bytes envc reads and hashes: when they are not what the
/// layer id was computed from (here: the compiler's digest cache says otherwise, as it would
/// for a tarball rewritten in place within a timestamp tick), the base is refused and nothing is
/// sealed.
#[test]
fn a_base_tarball_that_is_not_what_was_compiled_is_refused() {
    if !privileged("a_base_tarball_that_is_not_what_was_compiled_is_refused") {
        return;
    }
    let t = TestStore::new(Kind::Overlay, "tarbase");
    // Uncompressed, so it is big enough (1 MiB) for the digest cache.
    let tarball = t.specs.join("base.tar");
    let gz = std::fs::read(t.specs.join("busybox.tar.gz")).unwrap();
    let mut raw = Vec::new();
    gunzip(&gz, &mut raw);
    assert!(raw.len() >= 1 << 20, "{}", raw.len());
    std::fs::write(&tarball, &raw).unwrap();
    // Older than the cache's racy window, so its digest is remembered.
    std::thread::sleep(Duration::from_millis(2500));
    let spec = t.spec("env.kdl", "name \"tb\"\nbase \"tar\" \"base.tar\"\n");
    t.apply(&spec);
    assert_eq!(t.envc(&["rm", "tb"]).code, 0);
    assert_eq!(t.envc(&["gc", "--keep-bytes", "0"]).code, 0);
    let cache = t.store.join("cache/digests");
    let entries: Vec<_> = std::fs::read_dir(&cache).unwrap().flatten().collect();
    assert!(!entries.is_empty(), "the tarball's digest was cached");
    for e in &entries {
        std::fs::write(e.path(), "11".repeat(32)).unwrap();
    }
    let r = t.envc(&["apply", spec.to_str().unwrap()]);
    assert_ne!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stderr.contains("changed since the spec was compiled") && r.stderr.contains("base.tar"),
        "{}",
        r.stderr
    );
    let ls: serde_json::Value = serde_json::from_str(&t.envc(&["ls", "--json"]).stdout).unwrap();
    assert!(
        ls["layers"].as_array().unwrap().is_empty(),
        "nothing sealed: {ls}"
    );
    // With the cache gone, the tarball is hashed again and the base builds.
    std::fs::remove_dir_all(&cache).unwrap();
    t.apply(&spec);
}

/// Decompresses `gz` with the host's gzip.
fn gunzip(gz: &[u8], out: &mut Vec<u8>) {
    let mut child = std::process::Command::new("gzip")
        .arg("-dc")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let input = gz.to_vec();
    let writer = std::thread::spawn(move || std::io::Write::write_all(&mut stdin, &input));
    child.stdout.take().unwrap().read_to_end(out).unwrap();
    writer.join().unwrap().unwrap();
    assert!(child.wait().unwrap().success());
}
