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
//! - a registry that cannot be reached, or that accepts connections and never answers, gives one
//!   warning and a local build, never a failure;
//! - a stored layer changed after it was sealed is not pushed (`envc push` exits 1 naming it);
//! - artifacts signed by the trusted key but hostile (paths with `..`, absolute paths, a write
//!   through a symlink, a hard link out, a decompression bomb past the signed size, a wrong media
//!   type, another tree than the signed digest): each refused with a warning giving the reason,
//!   the layer built here with the same tree, nothing written outside the store.
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
    // push pulls nothing: no word about trusted keys.
    assert!(!p.stderr.contains("trusted key"), "{}", p.stderr);

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

    // A registry that accepts connections and never answers: cut by the timeout, one warning.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap();
    let held = std::thread::spawn(move || {
        let mut conns = Vec::new();
        silent.set_nonblocking(true).unwrap();
        let until = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while std::time::Instant::now() < until {
            match silent.accept() {
                Ok((c, _)) => conns.push(c),
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(20)),
            }
            if conns.len() > 20 {
                break;
            }
        }
    });
    let g = TestStore::new(kind, "remote-g");
    let spec_g = g.spec("rc.kdl", SPEC);
    let started = std::time::Instant::now();
    let mut c = g.cmd();
    c.arg("apply")
        .arg(&spec_g)
        .args(["--remote", &format!("{addr}/x"), "--trusted-key", public])
        .env("ENVC_REMOTE_TIMEOUT", "1");
    let r = Run::from(c.output().unwrap());
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.built().len(), 3, "{}", r.stderr);
    assert_eq!(
        r.stderr.matches("cannot be used").count(),
        1,
        "{}",
        r.stderr
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(40),
        "a silent registry held the apply for {:?}",
        started.elapsed()
    );
    drop(held);

    // A stored layer changed behind envc's back (overlay: its directory is writable) is not
    // pushed: the push would sign a tree digest the tree does not keep.
    if kind == Kind::Overlay {
        let tools = a.plan_ids(&spec)[1].clone();
        let f = a.store.join("layers").join(&tools).join("opt/t/sub/x");
        std::fs::write(&f, "tampered\n").unwrap();
        let mut c = a.cmd();
        c.args([
            "push",
            spec.to_str().unwrap(),
            "--remote",
            &format!("{}/team/other", reg.addr),
            "--sign-key",
            key,
        ]);
        let p = Run::from(c.output().unwrap());
        assert_eq!(p.code, 1, "a tampered layer was pushed: {}", p.stderr);
        assert!(
            p.stderr.contains("layer `tools`") && p.stderr.contains("changed since it was sealed"),
            "{}",
            p.stderr
        );
    }
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

/// A raw tar header block, whatever the tar crate would refuse to write.
fn raw_header(name: &[u8], kind: u8, size: u64, link: &[u8]) -> Vec<u8> {
    let mut h = tar::Header::new_ustar();
    h.as_old_mut().name[..name.len()].copy_from_slice(name);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_size(size);
    h.set_entry_type(tar::EntryType::new(kind));
    h.as_old_mut().linkname[..link.len()].copy_from_slice(link);
    h.set_cksum();
    h.as_bytes().to_vec()
}

fn raw_file(name: &[u8], data: &[u8]) -> Vec<u8> {
    let mut v = raw_header(name, b'0', data.len() as u64, b"");
    v.extend_from_slice(data);
    v.resize(v.len().div_ceil(512) * 512, 0);
    v
}

fn sha256(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    let h = sha2::Sha256::digest(bytes);
    format!(
        "sha256:{}",
        h.iter().map(|b| format!("{b:02x}")).collect::<String>()
    )
}

/// Pushes an artifact for layer `id` (a base) made of `tar`, signed with `key`: the config
/// claims `diff_size` (the real size when `None`) and the manifest names `blob_type`.
fn push_crafted(
    addr: &str,
    repo: &str,
    id: &str,
    key: &Path,
    tar: &[u8],
    diff_size: Option<u64>,
    blob_type: &str,
) {
    use envc_runtime::oci::registry::{Options, Registry};
    use envc_runtime::oci::remote::{self, Descriptor, LayerConfig, LayerManifest};
    use envc_runtime::oci::sign::{SecretKey, SignatureRecord};
    let blob = zstd::encode_all(tar, 3).unwrap();
    let reg = Registry::new(
        &format!("{addr}/{repo}").parse().unwrap(),
        Options::default(),
    )
    .unwrap();
    let mut config = LayerConfig {
        format: remote::CONFIG_FORMAT,
        layer: id.to_owned(),
        parent: None,
        tree: "ab".repeat(32),
        diff: sha256(tar),
        diff_size: diff_size.unwrap_or(tar.len() as u64),
        blob: sha256(&blob),
        signature: SignatureRecord {
            key: String::new(),
            name: String::new(),
            signature: String::new(),
        },
    };
    config.signature = SecretKey::read(key).unwrap().sign(&config.claim());
    let config_bytes = serde_json::to_vec(&config).unwrap();
    for bytes in [&blob, &config_bytes] {
        let b = bytes.clone();
        reg.push_blob(&sha256(bytes), bytes.len() as u64, &mut || {
            Ok(Box::new(std::io::Cursor::new(b.clone())) as Box<dyn std::io::Read + Send>)
        })
        .unwrap();
    }
    let manifest = LayerManifest {
        schema_version: 2,
        media_type: remote::MANIFEST_TYPE.into(),
        artifact_type: Some(remote::ARTIFACT_TYPE.into()),
        config: Descriptor {
            media_type: remote::CONFIG_TYPE.into(),
            digest: sha256(&config_bytes),
            size: config_bytes.len() as u64,
        },
        layers: vec![Descriptor {
            media_type: blob_type.into(),
            digest: sha256(&blob),
            size: blob.len() as u64,
        }],
    };
    reg.push_manifest(
        &format!("envc-{id}"),
        remote::MANIFEST_TYPE,
        &serde_json::to_vec(&manifest).unwrap(),
    )
    .unwrap();
}

type Case<'a> = (&'a str, Vec<u8>, Option<u64>, &'a str, &'a str);

/// Artifacts signed by the trusted key (an insider, a stolen key) but hostile: each is refused
/// with a warning naming the layer, the layer is built here with the same tree, and nothing is
/// written outside the store.
fn hostile_artifacts(kind: Kind) {
    let Some(reg) = TestRegistry::start(None) else {
        return;
    };
    let keydir = TempDir::new("remote-hostile-keys");
    let t = TestStore::new(kind, "remote-hostile-ref");
    let (key, public) = keys(&t, keydir.path(), "insider");
    let spec = t.spec("rc.kdl", SPEC);
    let want = tree(&t.apply(&spec).root());
    let base = t.plan_ids(&spec)[0].clone();
    let canary_dir = keydir.path().join("outside");
    std::fs::create_dir(&canary_dir).unwrap();
    let out = canary_dir.join("written");
    let out_b = out.to_str().unwrap().as_bytes();
    let top = raw_header(b"./", b'5', 0, b"");
    let end = [0u8; 1024];
    // Name, archive, the size the config claims, the blob's media type, the reason refused.
    let cases: Vec<Case> = vec![
        (
            "dotdot",
            [
                top.clone(),
                raw_file(b"../../../../../../../../../../tmp/envc-escape", b"x"),
                end.to_vec(),
            ]
            .concat(),
            None,
            envc_runtime::oci::remote::BLOB_TYPE,
            "a path with `..`",
        ),
        (
            "absolute",
            [top.clone(), raw_file(out_b, b"x"), end.to_vec()].concat(),
            None,
            envc_runtime::oci::remote::BLOB_TYPE,
            "an absolute path",
        ),
        (
            "through a symlink",
            [
                top.clone(),
                raw_header(b"up", b'2', 0, canary_dir.to_str().unwrap().as_bytes()),
                raw_file(b"up/written", b"x"),
                end.to_vec(),
            ]
            .concat(),
            None,
            envc_runtime::oci::remote::BLOB_TYPE,
            "a symlink is never followed",
        ),
        (
            "hard link out",
            [
                top.clone(),
                raw_header(b"h", b'1', 0, b"../../../../../../../../etc/passwd"),
                end.to_vec(),
            ]
            .concat(),
            None,
            envc_runtime::oci::remote::BLOB_TYPE,
            "a hard link to",
        ),
        (
            "bomb",
            [
                top.clone(),
                raw_file(b"big", &vec![0u8; 1 << 20]),
                end.to_vec(),
            ]
            .concat(),
            Some(4096),
            envc_runtime::oci::remote::BLOB_TYPE,
            "more than 4096 bytes",
        ),
        (
            "wrong media type",
            [top.clone(), raw_file(b"f", b"x"), end.to_vec()].concat(),
            None,
            "application/vnd.oci.image.layer.v1.tar+gzip",
            "blob media type",
        ),
        (
            "another tree",
            [top.clone(), raw_file(b"f", b"not the base"), end.to_vec()].concat(),
            None,
            envc_runtime::oci::remote::BLOB_TYPE,
            "its unpacked tree has digest",
        ),
    ];
    for (i, (name, tar, diff_size, blob_type, reason)) in cases.into_iter().enumerate() {
        let repo = format!("hostile/case{i}");
        push_crafted(&reg.addr, &repo, &base, &key, &tar, diff_size, blob_type);
        let s = TestStore::new(kind, "remote-hostile");
        let sp = s.spec("rc.kdl", SPEC);
        let r = remote_apply(
            &s,
            &sp,
            &[
                "--remote",
                &format!("{}/{repo}", reg.addr),
                "--trusted-key",
                public.to_str().unwrap(),
            ],
        );
        let why = r
            .stderr
            .lines()
            .find(|l| l.contains("not taken"))
            .unwrap_or("");
        assert!(
            why.contains(reason),
            "[{kind:?}] {name}: want {reason:?} in: {why}"
        );
        assert_eq!(r.built().len(), 3, "[{kind:?}] {name}: {}", r.stderr);
        assert!(
            r.stderr.contains("layer `base`")
                && r.stderr.contains("not taken from the remote cache"),
            "[{kind:?}] {name}: no warning: {}",
            r.stderr
        );
        if let Some(d) = tree_diff(&want, &tree(&r.root())) {
            panic!("[{kind:?}] {name}: the root differs: {d}");
        }
        assert!(!out.exists(), "[{kind:?}] {name}: wrote outside the store");
        assert!(
            !Path::new("/tmp/envc-escape").exists(),
            "[{kind:?}] {name}: wrote /tmp/envc-escape"
        );
        assert!(
            s.stray_mounts().is_empty(),
            "[{kind:?}] {name}: {:?}",
            s.stray_mounts()
        );
    }
}

#[test]
fn overlay_hostile_artifacts() {
    if privileged("overlay_hostile_artifacts") {
        hostile_artifacts(Kind::Overlay);
    }
}

#[test]
fn btrfs_hostile_artifacts() {
    if privileged("btrfs_hostile_artifacts") {
        hostile_artifacts(Kind::Btrfs);
    }
}
