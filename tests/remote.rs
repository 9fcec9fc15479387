//! The remote layer cache (issue 13) against a real registry: Debian's `docker-registry` (the
//! reference distribution registry) started on 127.0.0.1 at a free port, stopped by its pid.
//!
//! On overlay and btrfs, with the busybox base and layers that delete files, replace a directory
//! (an opaque directory on overlay), add a setuid file, a symlink, a hard link and a FIFO:
//! - `apply --push` in one store pushes the chain; `envc push` again finds every layer there and
//!   uploads nothing (the registry's tags and digests do not change);
//! - a fresh store of the same backend, and one of the other backend, with the trusted key, pull
//!   every layer: nothing is built, the working root's tree equals the pusher's, and `envc verify`
//!   accepts every layer;
//! - with another trusted key, or none, everything is built here, with a warning naming the layer
//!   and the key;
//! - a corrupted blob in the registry's storage is refused (a warning) and the layer built here,
//!   with the same tree;
//! - a registry that cannot be reached gives one warning and a local build, never a failure.
//!
//! They need root and the registry, and skip otherwise, unless ENVC_REQUIRE_PRIVILEGED=1.

mod common;

use std::path::{Path, PathBuf};

use common::crash::{tree, tree_diff};
use common::registry::TestRegistry;
use common::{Kind, Run, TempDir, TestStore, privileged};

const SPEC: &str = "name \"rc\"\nbase \"tar\" \"busybox.tar.gz\"\n\
layer \"tools\" {\n  run \"rm -f /bin/vi; mkdir -p /opt/t/sub && echo t > /opt/t/f && ln -s f /opt/t/l && ln /opt/t/f /opt/t/h && chmod 4755 /opt/t/f && mkfifo /opt/t/p && echo deep > /opt/t/sub/x && chown 1234:5678 /opt/t/sub/x\"\n}\n\
layer \"more\" {\n  run \"rm -rf /opt/t && mkdir /opt/t && echo again > /opt/t/g && rm -f /bin/ls && chmod 700 /opt\"\n}\n";

/// A key pair made by `envc key generate` in `dir`: (secret, public).
fn keys(t: &TestStore, dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let r = t.envc(&["key", "generate", name, "--dir", dir.to_str().unwrap()]);
    assert_eq!(r.code, 0, "key generate: {}", r.stderr);
    (
        dir.join(format!("{name}.key")),
        dir.join(format!("{name}.pub")),
    )
}

fn remote_apply(t: &TestStore, spec: &Path, args: &[&str]) -> Run {
    let mut c = t.cmd();
    c.arg("apply").arg(spec).args(args);
    let r = Run::from(c.output().unwrap());
    assert_eq!(r.code, 0, "apply {args:?} failed:\n{}", r.stderr);
    r
}

fn pulled(r: &Run) -> Vec<String> {
    r.stderr
        .lines()
        .filter(|l| l.contains("] pulled "))
        .map(|l| l[1..l.find(']').unwrap()].to_owned())
        .collect()
}

fn other(kind: Kind) -> Kind {
    match kind {
        Kind::Overlay => Kind::Btrfs,
        _ => Kind::Overlay,
    }
}

fn remote_cache(kind: Kind) {
    let Some(reg) = TestRegistry::start(None) else {
        return;
    };
    let remote = format!("{}/team/envc-cache", reg.addr);
    let keydir = TempDir::new("remote-keys");
    let a = TestStore::new(kind, "remote-a");
    let (key, public) = keys(&a, keydir.path(), "ci");
    let (_, stranger) = keys(&a, keydir.path(), "stranger");
    let (key, public, stranger) = (
        key.to_str().unwrap(),
        public.to_str().unwrap(),
        stranger.to_str().unwrap(),
    );
    let spec = a.spec("rc.kdl", SPEC);
    let all = ["base", "tools", "more"];

    // Build and push.
    let r = remote_apply(
        &a,
        &spec,
        &["--remote", &remote, "--sign-key", key, "--push"],
    );
    assert_eq!(r.built().len(), 3, "{}", r.stderr);
    assert_eq!(
        r.stderr.matches("envc: pushed layer").count(),
        3,
        "{}",
        r.stderr
    );
    let want = tree(&r.root());
    // Pushing again uploads nothing.
    let mut c = a.cmd();
    c.args([
        "push",
        spec.to_str().unwrap(),
        "--remote",
        &remote,
        "--sign-key",
        key,
    ]);
    let p = Run::from(c.output().unwrap());
    assert_eq!(p.code, 0, "push again: {}", p.stderr);
    assert_eq!(p.stderr.matches(" is in ").count(), 3, "{}", p.stderr);
    assert!(!p.stderr.contains("pushed layer"), "{}", p.stderr);

    // Fresh stores, this backend and the other, pull everything.
    for k in [kind, other(kind)] {
        let b = TestStore::new(k, "remote-b");
        let spec_b = b.spec("rc.kdl", SPEC);
        let r = remote_apply(&b, &spec_b, &["--remote", &remote, "--trusted-key", public]);
        assert!(r.built().is_empty(), "[{k:?}] built: {}", r.stderr);
        assert_eq!(pulled(&r), all, "[{k:?}] {}", r.stderr);
        if let Some(d) = tree_diff(&want, &tree(&r.root())) {
            panic!("[{kind:?} -> {k:?}] the pulled root differs from the pusher's: {d}");
        }
        let v = b.envc(&["verify", spec_b.to_str().unwrap()]);
        assert_eq!(
            v.code, 0,
            "[{k:?}] verify after a pull: {}{}",
            v.stdout, v.stderr
        );
        // A second apply takes everything from the store.
        let again = b.apply(&spec_b);
        assert_eq!(again.cached().len(), 3, "{}", again.stderr);
    }

    // Another trusted key, or none: built here, said.
    let c = TestStore::new(kind, "remote-c");
    let spec_c = c.spec("rc.kdl", SPEC);
    let r = remote_apply(
        &c,
        &spec_c,
        &["--remote", &remote, "--trusted-key", stranger],
    );
    assert_eq!(r.built().len(), 3, "{}", r.stderr);
    assert!(pulled(&r).is_empty(), "{}", r.stderr);
    for name in ["tools", "more"] {
        assert!(
            r.stderr.contains(&format!("layer `{name}`")) && r.stderr.contains("not a trusted key"),
            "no warning naming `{name}` and the key: {}",
            r.stderr
        );
    }
    let d = TestStore::new(kind, "remote-d");
    let spec_d = d.spec("rc.kdl", SPEC);
    let r = remote_apply(&d, &spec_d, &["--remote", &remote]);
    assert_eq!(r.built().len(), 3, "{}", r.stderr);
    assert!(r.stderr.contains("no trusted key"), "{}", r.stderr);

    // A corrupted blob: refused, built here, the same tree.
    let corrupted = reg.corrupt_blobs(1);
    assert!(
        corrupted > 0,
        "no blob to corrupt in the registry's storage"
    );
    let e = TestStore::new(kind, "remote-e");
    let spec_e = e.spec("rc.kdl", SPEC);
    let r = remote_apply(&e, &spec_e, &["--remote", &remote, "--trusted-key", public]);
    assert_eq!(r.built().len(), 3, "{}", r.stderr);
    assert!(
        r.stderr.contains("not taken from the remote cache"),
        "{}",
        r.stderr
    );
    if let Some(d) = tree_diff(&want, &tree(&r.root())) {
        panic!("[{kind:?}] the root built after a refused pull differs: {d}");
    }

    // Nothing listens: one warning, a local build.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let f = TestStore::new(kind, "remote-f");
    let spec_f = f.spec("rc.kdl", SPEC);
    let r = remote_apply(
        &f,
        &spec_f,
        &[
            "--remote",
            &format!("127.0.0.1:{port}/x"),
            "--trusted-key",
            public,
        ],
    );
    assert_eq!(r.built().len(), 3, "{}", r.stderr);
    assert_eq!(
        r.stderr.matches("cannot be used").count(),
        1,
        "want one warning: {}",
        r.stderr
    );
}

#[test]
fn overlay_remote_cache() {
    if privileged("overlay_remote_cache") {
        remote_cache(Kind::Overlay);
    }
}

#[test]
fn btrfs_remote_cache() {
    if privileged("btrfs_remote_cache") {
        remote_cache(Kind::Btrfs);
    }
}
