//! Locked environments: `envc lock` against a repository that moves (served over HTTP on
//! 127.0.0.1 by the test) and against the real Debian mirror; stale, broken and tampered locks;
//! bit-identical roots from one lock in two stores.
//!
//! The privileged tests build real Debian bases (mmdebstrap, the host's apt sources).

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::aptrepo::AptRepo;
use common::{ENVC, Kind, Run, TempDir, TestStore, privileged};

fn lock_of(spec: &Path) -> PathBuf {
    spec.with_extension("lock")
}

/// The `[base]` table of a lock's text.
fn base_block(lock: &str) -> String {
    let start = lock.find("\n[base]\n").expect("a [base] table");
    let end = lock[start..]
        .find("\n[[step]]")
        .map_or(lock.len(), |e| start + e);
    lock[start..end].to_owned()
}

fn envc_in(t: &TestStore, args: &[&str]) -> Run {
    t.envc(args)
}

#[test]
fn a_moving_repository_is_pinned_by_the_lock_until_it_is_updated() {
    if !privileged("a_moving_repository_is_pinned_by_the_lock_until_it_is_updated") {
        return;
    }
    let mut repo = AptRepo::new("moving");
    let v1 = repo.add("envc-demo", "1.0", &[]);
    let server = repo.serve();
    let a = TestStore::new(Kind::Overlay, "lock-a");
    let text = format!(
        "name \"moving\"\nbase \"debian\" suite=\"bookworm\" variant=\"minbase\"\n\
         layer \"repo\" {{\n    run \"echo 'deb [trusted=yes] {} ./' > /etc/apt/sources.list.d/test.list\"\n}}\n\
         layer \"app\" {{\n    packages \"envc-demo\"\n}}\n",
        server.url()
    );
    let spec = a.spec("env.kdl", &text);
    let s = spec.to_str().unwrap();

    // Without a lock: said, and --locked refuses.
    let r = envc_in(&a, &["plan", s]);
    assert!(r.stderr.contains("is unlocked"), "{}", r.stderr);
    let r = envc_in(&a, &["apply", "--locked", s]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("has no lock") && r.stderr.contains("envc lock"),
        "{}",
        r.stderr
    );
    let unlocked = a.plan_ids(&spec);

    // Lock at version 1.
    let r = envc_in(&a, &["lock", s]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let lock1 = std::fs::read_to_string(lock_of(&spec)).unwrap();
    assert!(
        lock1.contains(&format!("sha256 = \"{}\"", v1.sha256)),
        "{lock1}"
    );
    assert!(
        lock1.contains("name = \"envc-demo\", version = \"1.0\", arch = \"all\""),
        "{lock1}"
    );
    assert!(!lock1.contains("MD5"), "{lock1}");
    assert!(
        lock1.contains("name = \"libc6\""),
        "the base's set: {lock1}"
    );
    assert_eq!(envc_in(&a, &["lock", "--check", s]).code, 0);
    let locked1 = a.plan_ids(&spec);
    assert_eq!(locked1.len(), 3);
    for (l, u) in locked1.iter().zip(&unlocked) {
        assert_ne!(l, u, "a lock changes the ids");
    }
    // A file of the package store that is not what its name says (disk damage, a hand edit):
    // replaced, and said where the build is watched, not only in its log.
    let planted = a.store.join("debs/sha256").join(&v1.sha256);
    std::fs::write(&planted, b"not the package").unwrap();
    let r = a.apply(&spec);
    assert!(
        r.stderr.contains("was replaced in the package store"),
        "{}",
        r.stderr
    );
    assert_eq!(
        std::fs::read_to_string(r.root().join("usr/share/envc-test/envc-demo")).unwrap(),
        "envc-demo 1.0\n"
    );
    // `verify SPEC` and `why SPEC` see the layers the lock builds, not the unlocked ones.
    let r = envc_in(&a, &["verify", s]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stderr.contains("3 layers verified: 3 ok") && !r.stderr.contains("not stored"),
        "{}",
        r.stderr
    );
    let r = envc_in(&a, &["why", s]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        !r.stdout.contains("missing") && r.stdout.contains(&locked1[2][..12]),
        "{}",
        r.stdout
    );
    // Locking again changes nothing: the same file, byte for byte.
    assert_eq!(envc_in(&a, &["lock", s]).code, 0);
    assert_eq!(std::fs::read_to_string(lock_of(&spec)).unwrap(), lock1);

    // A second store fetches everything the lock names ahead of time.
    let b = TestStore::new(Kind::Overlay, "lock-b");
    let r = envc_in(&b, &["fetch", s]);
    assert_eq!(r.code, 0, "{}", r.stderr);

    // The repository moves: version 2 (with a new dependency) replaces 1.
    repo.add("envc-demo-dep", "1.0", &[]);
    repo.add("envc-demo", "2.0", &["envc-demo-dep"]);
    repo.remove("envc-demo", "1.0");
    let before = server.requests().len();

    // The filled store still installs version 1, without asking the repository for anything.
    let r = b.apply(&spec);
    assert_eq!(
        std::fs::read_to_string(r.root().join("usr/share/envc-test/envc-demo")).unwrap(),
        "envc-demo 1.0\n"
    );
    assert!(!r.root().join("usr/share/envc-test/envc-demo-dep").exists());
    assert_eq!(server.requests().len(), before, "{:?}", server.requests());

    // An empty store: a clear error naming the package, its version, its sha256 and where it
    // looked; never another version.
    let c = TestStore::new(Kind::Overlay, "lock-c");
    let r = c.cmd().arg("apply").arg(&spec).output().unwrap();
    let r = Run::from(r);
    assert_eq!(r.code, 1, "{}", r.stderr);
    for needle in ["envc-demo", "1.0", &v1.sha256, &server.url(), "404"] {
        assert!(r.stderr.contains(needle), "{needle}: {}", r.stderr);
    }
    assert!(!r.stderr.contains("Setting up envc-demo"), "{}", r.stderr);

    // --update envc-demo moves it (and brings the new dependency); only the app layer changes.
    let r = envc_in(&a, &["lock", "--update", "envc-demo", "--", s]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stderr.contains("envc-demo 1.0 -> 2.0"), "{}", r.stderr);
    assert!(r.stderr.contains("+ envc-demo-dep 1.0"), "{}", r.stderr);
    let lock2 = std::fs::read_to_string(lock_of(&spec)).unwrap();
    assert_eq!(
        base_block(&lock1),
        base_block(&lock2),
        "the base stays pinned"
    );
    assert!(lock2.contains("name = \"envc-demo-dep\""), "{lock2}");
    let locked2 = a.plan_ids(&spec);
    assert_eq!(locked2[..2], locked1[..2]);
    assert_ne!(locked2[2], locked1[2]);
    let r = a.apply(&spec);
    assert_eq!(r.built(), ["app"], "{}", r.stderr);
    assert_eq!(
        std::fs::read_to_string(r.root().join("usr/share/envc-test/envc-demo")).unwrap(),
        "envc-demo 2.0\n"
    );
    assert!(r.root().join("usr/share/envc-test/envc-demo-dep").exists());

    // A lock whose sha256 for envc-demo is wrong: refused when fetched, before anything is
    // installed.
    let tampered = a.spec("tampered.kdl", &text);
    let v2 = repo.deb("envc-demo", "2.0").unwrap();
    let wrong = "ab".repeat(32);
    std::fs::write(lock_of(&tampered), lock2.replace(&v2.sha256, &wrong)).unwrap();
    let r = envc_in(&a, &["apply", tampered.to_str().unwrap()]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains(&wrong), "{}", r.stderr);
    assert!(
        r.stderr.contains("sha256") || r.stderr.contains("SHA256"),
        "{}",
        r.stderr
    );
    assert!(!r.stderr.contains("Setting up envc-demo"), "{}", r.stderr);

    // Stale locks: a package added, the base's suite changed.
    let added = a.spec(
        "added.kdl",
        &text.replace("\"envc-demo\"", "\"envc-demo\" \"envc-demo-dep\""),
    );
    std::fs::write(lock_of(&added), &lock2).unwrap();
    let r = envc_in(&a, &["lock", "--check", added.to_str().unwrap()]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("layer `app` step 1"), "{}", r.stderr);
    let r = envc_in(&a, &["apply", added.to_str().unwrap()]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("is stale")
            && r.stderr.contains("layer `app` step 1")
            && r.stderr.contains("envc lock"),
        "{}",
        r.stderr
    );
    let suite = a.spec("suite.kdl", &text.replace("bookworm", "trixie"));
    std::fs::write(lock_of(&suite), &lock2).unwrap();
    let r = envc_in(&a, &["lock", "--check", suite.to_str().unwrap()]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("the base changed"), "{}", r.stderr);
    // A run step's change leaves the lock fresh.
    let run = a.spec(
        "run.kdl",
        &text.replace("layer \"app\" {", "layer \"app\" {\n    run \"true\""),
    );
    std::fs::write(lock_of(&run), &lock2).unwrap();
    assert_eq!(
        envc_in(&a, &["lock", "--check", run.to_str().unwrap()]).code,
        0
    );
    drop(server);
}

#[test]
fn a_spec_that_extends_another_is_stale_when_the_other_changes() {
    // Checking needs no store, network or privilege: the lock is written by hand from what
    // `envc lock --check` reports and a first lock would hold.
    let dir = TempDir::new("lock-extends");
    let parent = dir.path().join("common.kdl");
    let child = dir.path().join("child.kdl");
    let write_parent = |pkgs: &str| {
        std::fs::write(
            &parent,
            format!(
                "name \"common\"\nbase \"scratch\"\nlayer \"tools\" {{\n    packages {pkgs}\n}}\n"
            ),
        )
        .unwrap();
    };
    write_parent("\"make\"");
    std::fs::write(
        &child,
        "name \"child\"\nextends \"common.kdl\"\nlayer \"more\" {\n    packages \"hello\"\n}\n",
    )
    .unwrap();
    let envc = |args: &[&str]| {
        Run::from(
            Command::new(ENVC)
                .env("NO_COLOR", "1")
                .env("ENVC_STORE", dir.path().join("store"))
                .args(args)
                .output()
                .unwrap(),
        )
    };
    let c = child.to_str().unwrap();
    // No lock: --check fails and says so; --locked too.
    let r = envc(&["lock", "--check", c]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("has no lock"), "{}", r.stderr);
    let r = envc(&["plan", "--locked", c]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    // A lock with a checksum from another spec: named as edited.
    let lock = "version = 1\nspec-checksum = \"blake3:00\"\nsource-date-epoch = 1700000000\n\n\
                [[step]]\nlayer = \"tools\"\nstep = 1\npackages = [\"make\"]\ninstalls = []\n\n\
                [[step]]\nlayer = \"more\"\nstep = 1\npackages = [\"hello\"]\ninstalls = []\n";
    std::fs::write(lock_of(&child), lock).unwrap();
    let r = envc(&["lock", "--check", c]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("spec-checksum"), "{}", r.stderr);
    // The extended spec changes: the first step that changed is named, in the extended spec's
    // layer.
    write_parent("\"make\" \"gcc\"");
    let r = envc(&["lock", "--check", c]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("layer `tools` step 1") && r.stderr.contains("gcc make"),
        "{}",
        r.stderr
    );
    let r = envc(&["plan", c]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("is stale"), "{}", r.stderr);
    // A truncated lock: an error pointing into the file, exit 3.
    std::fs::write(lock_of(&child), &lock[..lock.len() - 30]).unwrap();
    let r = envc(&["plan", c]);
    assert_eq!(r.code, 3, "{}", r.stderr);
    assert!(
        r.stderr.contains("child.lock") && r.stderr.contains("cannot read the lock"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains("child.lock:14:"),
        "a place in the lock: {}",
        r.stderr
    );
    // A lock of another format version.
    std::fs::write(lock_of(&child), lock.replace("version = 1", "version = 7")).unwrap();
    let r = envc(&["plan", c]);
    assert_eq!(r.code, 3, "{}", r.stderr);
    assert!(r.stderr.contains("format version 7"), "{}", r.stderr);
}

/// Every entry of a tree: type and mode, owner, size, mtime, content (or link target).
fn tree(root: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            let what = if m.file_type().is_symlink() {
                format!("-> {}", std::fs::read_link(&p).unwrap().display())
            } else if m.is_file() {
                let bytes = std::fs::read(&p).unwrap();
                format!("{:x}", md5_like(&bytes))
            } else {
                String::new()
            };
            if m.is_dir() {
                stack.push(p.clone());
            }
            out.insert(
                p.strip_prefix(root).unwrap().to_owned(),
                format!(
                    "{:o} {}:{} {} {}.{} {what}",
                    m.mode(),
                    m.uid(),
                    m.gid(),
                    if m.is_dir() { 0 } else { m.size() },
                    m.mtime(),
                    m.mtime_nsec()
                ),
            );
        }
    }
    out
}

/// A content fingerprint (FNV-1a, 128 bits from two lanes): enough to tell files apart here.
fn md5_like(bytes: &[u8]) -> u128 {
    let (mut a, mut b) = (0xcbf29ce484222325u64, 0x84222325cbf29ce4u64);
    for &x in bytes {
        a = (a ^ u64::from(x)).wrapping_mul(0x100000001b3);
        b = (b ^ u64::from(x).rotate_left(3)).wrapping_mul(0x100000001b3);
    }
    (u128::from(a) << 64) | u128::from(b)
}

#[test]
fn one_lock_of_the_real_mirror_gives_bit_identical_roots_in_two_stores() {
    if !privileged("one_lock_of_the_real_mirror_gives_bit_identical_roots_in_two_stores") {
        return;
    }
    let x = TestStore::new(Kind::Overlay, "lock-x");
    let spec = x.spec(
        "hello.kdl",
        &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/specs/hello.kdl")).unwrap(),
    );
    let s = spec.to_str().unwrap();
    // With the tree digest of every layer built from the lock recorded in it.
    let r = x.envc(&["lock", "--digests", s]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let lock = std::fs::read_to_string(lock_of(&spec)).unwrap();
    assert!(lock.contains("name = \"hello\""), "{lock}");
    assert_eq!(lock.matches("\n[[layer]]\n").count(), 3, "{lock}");
    assert!(lock.contains("mmdebstrap = "), "{lock}");
    let rx = x.apply(&spec);
    // The second store: another working directory, time zone and host name, a second later.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    // On the other backend: a layer is a diff on overlay, a whole snapshot on btrfs.
    let y = TestStore::new(Kind::Btrfs, "lock-y");
    let out = Command::new("unshare")
        .args([
            "--uts",
            "sh",
            "-c",
            "hostname envc-other-host && exec \"$0\" \"$@\"",
            ENVC,
        ])
        .args(["--backend", "btrfs", "apply"])
        .arg(&spec)
        .env("NO_COLOR", "1")
        .env("ENVC_STORE", &y.store)
        .env("TZ", "Asia/Tokyo")
        .current_dir(&y.specs)
        .output()
        .unwrap();
    let ry = Run::from(out);
    assert_eq!(ry.code, 0, "{}", ry.stderr);
    assert_eq!(ry.built(), ["base", "hello", "check"], "{}", ry.stderr);
    assert!(!ry.stderr.contains("not reproducible"), "{}", ry.stderr);
    // Every layer: the same tree, entry by entry.
    let (tx, ty) = (tree(&rx.root()), tree(&ry.root()));
    let differ: Vec<_> = tx
        .iter()
        .filter(|(k, v)| ty.get(*k) != Some(*v))
        .map(|(k, v)| format!("{}: {v} / {:?}", k.display(), ty.get(k)))
        .chain(
            ty.keys()
                .filter(|k| !tx.contains_key(*k))
                .map(|k| format!("{} only in the second", k.display())),
        )
        .collect();
    assert!(
        differ.is_empty(),
        "{} entries differ:\n{}",
        differ.len(),
        differ.join("\n")
    );
    assert!(tx.len() > 5000, "{}", tx.len());
    // And the same tree digest recorded for every layer, by id.
    let digests = |t: &TestStore| -> BTreeMap<String, String> {
        let r = t.envc(&["ls", "--json"]);
        let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
        v["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| {
                (
                    l["id"].as_str().unwrap().to_owned(),
                    l["tree_digest"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    };
    let (dx, dy) = (digests(&x), digests(&y));
    assert_eq!(dx.len(), 3, "{dx:?}");
    assert_eq!(dx, dy);
    // A locked build killed while envc's installer works (decompressing, dpkg): the next gc
    // removes its directories, and nothing stays mounted.
    let z = TestStore::new(Kind::Overlay, "lock-z");
    let mut child = z
        .cmd()
        .arg("apply")
        .arg(&spec)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let tmp = z.store.join("tmp");
    let started = std::time::Instant::now();
    let locked_dirs = || -> Vec<String> {
        std::fs::read_dir(&tmp)
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.starts_with("lock-"))
                    .collect()
            })
            .unwrap_or_default()
    };
    while locked_dirs().is_empty() && started.elapsed().as_secs() < 120 {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(!locked_dirs().is_empty(), "no lock-* directory appeared");
    std::thread::sleep(std::time::Duration::from_millis(1500));
    child.kill().unwrap();
    child.wait().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    let r = z.envc(&["gc"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(locked_dirs(), Vec::<String>::new(), "{}", r.stderr);
    assert_eq!(z.stray_mounts(), Vec::<String>::new());
    // A lock that recorded another tree for a layer: the apply says so.
    let last = lock.rfind("tree-digest = \"").unwrap() + "tree-digest = \"".len();
    let mut other = lock.clone();
    other.replace_range(last..last + 64, &"0".repeat(64));
    std::fs::write(lock_of(&spec), other).unwrap();
    let r = y.apply(&spec);
    assert!(
        r.stderr.contains("layer `check` has tree digest") && r.stderr.contains("not reproducible"),
        "{}",
        r.stderr
    );
    // Nothing of the build's time or host: logs gone, machine-id empty or absent.
    let root = rx.root();
    for gone in [
        "var/log/dpkg.log",
        "var/log/apt/history.log",
        "var/cache/ldconfig/aux-cache",
    ] {
        assert!(!root.join(gone).exists(), "{gone}");
    }
}
