//! `envc export` (images for other tools), on overlay and btrfs, with the busybox base and layers
//! that add files, delete a base file and a directory (whiteouts), and replace a directory (an
//! opaque directory on overlay):
//!
//! - before `envc apply`, and for a spec with a layer not stored, export fails (exit 1) telling
//!   to run `envc apply` first, and writes nothing;
//! - `--oci DIR` twice gives the same `index.json` and the same blobs; `skopeo inspect` reads the
//!   layout and lists one layer per envc layer; `umoci unpack` gives a rootfs equal to the
//!   working root; `skopeo copy` to a docker archive succeeds; a non-empty DIR is refused;
//! - `--oci-archive FILE` twice gives the same bytes, which skopeo reads as an `oci-archive:` and
//!   as a `docker-archive:` (docker's `manifest.json`, what `docker load` reads);
//! - `--tar FILE`, extracted by GNU tar with numeric owners, equals the working root (but the top
//!   directory's times);
//! - `base "oci"` of the exported layout, and of the archive, applies to a root equal to the
//!   working root; the base's id is stable and the same for both (the image's digests name it);
//!   an unknown `tag=` is a spec error; a layer blob changed after the compile fails the build.
//!
//! - an image umoci made (a whiteout, a new directory) as `base "oci"`: its root is the rootfs
//!   umoci unpacks, and a command runs in it.
//!
//! Privileged (stores, mounts): skipped without root unless ENVC_REQUIRE_PRIVILEGED=1.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use common::crash::{tree, tree_diff};
use common::hostile::BASE;
use common::{Kind, TestStore, privileged};

const SPEC: &str = r#"name "exp"
layer "add" {
  run "mkdir -p /opt/app/sub /opt/gone /opt/todir && echo hi > /opt/app/a.txt && echo b > /opt/app/sub/b && ln -s a.txt /opt/app/link && chmod 0750 /opt/app/sub && echo bye > /opt/gone/f && echo t > /opt/todir/t && chown 1000:1000 /opt/app/a.txt && echo x > /opt/tofile"
  env GREETING="hello" PATH="/opt/app:$PATH"
}
layer "change" {
  run "rm /etc/group && rm -r /opt/gone && rm -r /opt/app/sub && mkdir /opt/app/sub && echo c > /opt/app/sub/c && echo more >> /opt/app/a.txt && rm -r /opt/todir && echo now-a-file > /opt/todir && rm /opt/tofile && mkdir /opt/tofile"
  workdir "/opt/app"
}
"#;

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The file names under `dir/blobs/sha256`.
fn blob_names(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir.join("blobs/sha256"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect()
}

fn exports(kind: Kind) {
    let t = TestStore::new(kind, "export");
    let spec = t.spec("exp.kdl", &format!("{BASE}{SPEC}"));
    let s = spec.to_str().unwrap();
    let out = t.specs.join("out");
    std::fs::create_dir_all(&out).unwrap();
    let oci = |name: &str| out.join(name);

    // Nothing built yet: no store at all.
    let d1 = oci("d1");
    let r = t.envc(&["export", s, "--oci", d1.to_str().unwrap()]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("envc apply"), "{}", r.stderr);
    assert!(!d1.exists());

    let root = t.apply(&spec).root();
    let want = tree(&root);

    // A spec with one more layer: that layer is not stored.
    let more = t.spec(
        "more.kdl",
        &format!("{BASE}{SPEC}layer \"more\" {{\n  run \"echo more > /more\"\n}}\n"),
    );
    let r = t.envc(&[
        "export",
        more.to_str().unwrap(),
        "--oci",
        d1.to_str().unwrap(),
    ]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("`more`") && r.stderr.contains("envc apply"),
        "{}",
        r.stderr
    );
    assert!(!d1.exists());

    // Two exports of the same chain are the same image.
    let d2 = oci("d2");
    let started = std::time::Instant::now();
    let r1 = t.envc(&["export", s, "--oci", d1.to_str().unwrap()]);
    assert_eq!(r1.code, 0, "{}", r1.stderr);
    eprintln!("export --oci took {:?}", started.elapsed());
    // An existing empty directory is fine.
    std::fs::create_dir(&d2).unwrap();
    let r2 = t.envc(&["export", s, "--oci", d2.to_str().unwrap()]);
    assert_eq!(r2.code, 0, "{}", r2.stderr);
    assert_eq!(r1.stdout, r2.stdout);
    assert!(r1.stdout.trim().starts_with("sha256:"), "{}", r1.stdout);
    assert_eq!(
        std::fs::read(d1.join("index.json")).unwrap(),
        std::fs::read(d2.join("index.json")).unwrap()
    );
    assert_eq!(blob_names(&d1), blob_names(&d2));
    // 3 layers, a config, a manifest; nothing temporary left beside the layout.
    assert_eq!(blob_names(&d1).len(), 5, "{:?}", blob_names(&d1));
    let left: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.contains(".tmp-"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    // A directory that holds something is refused.
    let r = t.envc(&["export", s, "--oci", d1.to_str().unwrap()]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("not an empty directory"), "{}", r.stderr);

    // skopeo reads the layout: one layer per envc layer, the environment and working directory.
    let inspect =
        run(Command::new("skopeo").args(["inspect", &format!("oci:{}:exp", d1.display())]));
    let v: serde_json::Value = serde_json::from_str(&inspect).unwrap();
    assert_eq!(v["Layers"].as_array().unwrap().len(), 3, "{inspect}");
    let config = run(Command::new("skopeo").args([
        "inspect",
        "--config",
        &format!("oci:{}:exp", d1.display()),
    ]));
    let c: serde_json::Value = serde_json::from_str(&config).unwrap();
    assert_eq!(c["config"]["WorkingDir"], "/opt/app", "{config}");
    let env: Vec<&str> = c["config"]["Env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap())
        .collect();
    assert!(env.contains(&"GREETING=hello"), "{env:?}");
    assert!(
        env.iter().any(|e| e.starts_with("PATH=/opt/app:")),
        "{env:?}"
    );

    // umoci applies the layers, whiteouts and all: the working root's tree.
    let bundle = out.join("bundle");
    run(Command::new("umoci")
        .args(["unpack", "--image"])
        .arg(format!("{}:exp", d1.display()))
        .arg(&bundle));
    if let Some(d) = tree_diff(&want, &tree(&bundle.join("rootfs"))) {
        panic!("umoci's rootfs is not the working root: {d}");
    }

    // skopeo turns it into a docker archive.
    run(Command::new("skopeo").args([
        "--insecure-policy",
        "copy",
        &format!("oci:{}:exp", d1.display()),
        &format!(
            "docker-archive:{}:exp:latest",
            out.join("docker.tar").display()
        ),
    ]));

    // The archive form is reproducible too, and skopeo reads it.
    let (a1, a2) = (oci("a1.tar"), oci("a2.tar"));
    for a in [&a1, &a2] {
        let r = t.envc(&["export", s, "--oci-archive", a.to_str().unwrap()]);
        assert_eq!(r.code, 0, "{}", r.stderr);
        assert_eq!(r.stdout, r1.stdout, "the same manifest");
    }
    assert!(std::fs::read(&a1).unwrap() == std::fs::read(&a2).unwrap());
    run(Command::new("skopeo").args(["inspect", &format!("oci-archive:{}:exp", a1.display())]));
    // It is also a `docker save` archive (manifest.json): what docker load reads, as skopeo's
    // docker-archive reader takes it (no docker daemon here).
    let inspect =
        run(Command::new("skopeo").args(["inspect", &format!("docker-archive:{}", a1.display())]));
    let v: serde_json::Value = serde_json::from_str(&inspect).unwrap();
    assert_eq!(v["Layers"].as_array().unwrap().len(), 3, "{inspect}");

    // The flattened root, as GNU tar extracts it.
    let flat = oci("root.tar");
    let r = t.envc(&["export", s, "--tar", flat.to_str().unwrap()]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let x = out.join("x");
    std::fs::create_dir(&x).unwrap();
    run(Command::new("tar")
        .args(["-x", "--numeric-owner", "-f"])
        .arg(&flat)
        .arg("-C")
        .arg(&x));
    if let Some(d) = tree_diff(&want, &tree(&x)) {
        panic!("the root tar is not the working root: {d}");
    }

    // The layout, and the archive, as the base of another spec: its root is the working root.
    // The base is named by the image's digests: stable, and the same for both forms.
    let mut ids = Vec::new();
    for (name, image) in [("fromdir", "out/d1"), ("fromtar", "out/a1.tar")] {
        let spec = t.spec(
            &format!("{name}.kdl"),
            &format!("name \"{name}\"\nbase \"oci\" \"{image}\" tag=\"exp\"\n"),
        );
        let first = t.plan_ids(&spec);
        assert_eq!(first, t.plan_ids(&spec), "{name}: the id is stable");
        ids.push(first);
        let started = std::time::Instant::now();
        let applied = t.apply(&spec);
        eprintln!("apply of base \"oci\" {image} took {:?}", started.elapsed());
        assert_eq!(applied.built(), ["base"], "{}", applied.stderr);
        if let Some(d) = tree_diff(&want, &tree(&applied.root())) {
            panic!("the root of base \"oci\" {image} is not the exported root: {d}");
        }
        // Gone again, so the next form is built (from its own bytes), not found stored.
        assert_eq!(t.envc(&["rm", name]).code, 0);
        let r = t.envc(&["gc", "--older-than", "0"]);
        assert_eq!(r.code, 0, "{}", r.stderr);
    }
    assert_eq!(ids[0], ids[1]);
    // A layer blob changed after the compile (same size, another byte): the build refuses it.
    let d3 = out.join("d3");
    run(Command::new("cp").arg("-a").arg(&d1).arg(&d3));
    let docker: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d3.join("manifest.json")).unwrap()).unwrap();
    let blob = d3.join(docker[0]["Layers"][0].as_str().unwrap());
    let mut bytes = std::fs::read(&blob).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&blob, bytes).unwrap();
    let spec = t.spec(
        "tampered.kdl",
        "name \"tampered\"\nbase \"oci\" \"out/d3\"\n",
    );
    let r = t.envc(&["apply", spec.to_str().unwrap()]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    // As one line: the report wraps its message.
    let flat = r
        .stderr
        .replace('│', " ")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    assert!(
        flat.contains("changed since the spec was compiled"),
        "{}",
        r.stderr
    );
    // An unknown tag is a spec error (exit 3) at the base.
    let bad = t.spec(
        "badtag.kdl",
        "name \"bad\"\nbase \"oci\" \"out/d1\" tag=\"nope\"\n",
    );
    let r = t.envc(&["check", bad.to_str().unwrap()]);
    assert_eq!(r.code, 3, "{}", r.stderr);
    assert!(
        r.stderr.contains("no manifest is tagged `nope`"),
        "{}",
        r.stderr
    );
}

/// An image umoci made (a layer that adds files, then one that deletes a file and adds a
/// directory) as a base: its root is the rootfs umoci itself unpacks from it.
fn umoci_base(kind: Kind) {
    let t = TestStore::new(kind, "export-umoci");
    let dir = &t.specs;
    let umoci = |args: &[&str]| run(Command::new("umoci").current_dir(dir).args(args));
    umoci(&["init", "--layout", "img"]);
    umoci(&["new", "--image", "img:t"]);
    umoci(&["unpack", "--image", "img:t", "b"]);
    let rootfs = dir.join("b/rootfs");
    std::fs::create_dir_all(rootfs.join("etc")).unwrap();
    std::fs::create_dir_all(rootfs.join("bin")).unwrap();
    std::fs::write(rootfs.join("etc/hello"), "hello\n").unwrap();
    std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).unwrap();
    std::os::unix::fs::symlink("busybox", rootfs.join("bin/sh")).unwrap();
    umoci(&["repack", "--image", "img:t", "b"]);
    std::fs::remove_dir_all(dir.join("b")).unwrap();
    umoci(&["unpack", "--image", "img:t", "b"]);
    std::fs::remove_file(rootfs.join("etc/hello")).unwrap();
    std::fs::create_dir(rootfs.join("etc/new")).unwrap();
    std::fs::write(rootfs.join("etc/new/x"), "x\n").unwrap();
    umoci(&["repack", "--image", "img:t", "b"]);
    std::fs::remove_dir_all(dir.join("b")).unwrap();
    umoci(&["unpack", "--image", "img:t", "want"]);

    let spec = t.spec("u.kdl", "name \"fromumoci\"\nbase \"oci\" \"img\"\n");
    let root = t.apply(&spec).root();
    let got = tree(&root);
    assert!(!got.contains_key(Path::new("etc/hello")), "{got:?}");
    if let Some(d) = tree_diff(&tree(&dir.join("want/rootfs")), &got) {
        panic!("the root of umoci's image is not its rootfs: {d}");
    }
    // A step runs in it.
    let r = t.envc(&[
        "run",
        spec.to_str().unwrap(),
        "--",
        "/bin/sh",
        "-c",
        "echo ok",
    ]);
    assert_eq!((r.code, r.stdout.as_str()), (0, "ok\n"), "{}", r.stderr);
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

on_each_backend! {
    an_environment_exports_as_an_oci_layout_an_archive_and_a_root_tar => exports,
    an_image_umoci_made_is_a_base => umoci_base,
}
