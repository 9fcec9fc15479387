//! The daily workflow (issue 14): the user's checkout bound into the root, and the options of
//! `envc run` and `envc shell` that are never part of an id.
//!
//! On overlay and btrfs, with the busybox base:
//! - `--bind HOST:DEST` mounts a host directory: the command reads the host's files and what it
//!   writes stays on the host; `:ro` refuses writes; the throwaway root is gone afterwards and the
//!   environment's layers and ids are unchanged;
//! - `--env KEY=VALUE` is over the spec's `env`, `--user NAME` runs as that user of the root,
//!   `--workdir DIR` is the command's directory (made when missing);
//! - a missing host directory, a host file, a relative DEST and a bad `--env` are usage errors
//!   (exit 2) naming the value, and nothing runs.
//!
//! - a `cache PATH` step: what a `run` step writes there is seen by the next build of a step and
//!   by `envc run`, never by a layer (the layer has an empty directory at PATH), and the ids are
//!   those of the spec without the step; `name=` shares a cache between environments; a step of
//!   another user writes there too; `envc gc --caches` empties the caches.
//!
//! The bind and cache tests need root and skip otherwise, unless ENVC_REQUIRE_PRIVILEGED=1; the
//! usage errors need no root.

mod common;

use common::hostile::BASE;
use common::{Kind, TestStore, privileged};

const SPEC: &str = "name \"wf\"\nlayer \"tools\" {\n  env GREETING=\"from-spec\" KEEP=\"spec\"\n  workdir \"/home\"\n}\n";

fn spec(t: &TestStore) -> std::path::PathBuf {
    t.spec("wf.kdl", &format!("{BASE}{SPEC}"))
}

fn bind_and_options(kind: Kind) {
    let t = TestStore::new(kind, "workflow-bind");
    let spec = spec(&t);
    let root = t.apply(&spec).root();
    let plan_before = t.envc(&["plan", "--json", spec.to_str().unwrap()]).stdout;
    let checkout = t.specs.join("checkout");
    std::fs::create_dir_all(checkout.join("src")).unwrap();
    std::fs::write(checkout.join("src/input.txt"), "hello from the host\n").unwrap();
    let bind = format!("{}:/src", checkout.display());
    let s = spec.to_str().unwrap();

    // Read the host's file, write a result next to it, in a directory made for the command.
    let r = t.envc(&[
        "run", "--bind", &bind, "--workdir", "/src/out-dir-inside", "--env", "GREETING=from-cli",
        s, "--", "sh", "-c",
        "pwd; echo \"$GREETING $KEEP\"; cat /src/src/input.txt > /src/copied.txt; id -u > /src/uid.txt",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let mut lines = r.stdout.lines();
    assert_eq!(lines.next(), Some("/src/out-dir-inside"), "{}", r.stdout);
    assert_eq!(lines.next(), Some("from-cli spec"), "{}", r.stdout);
    assert_eq!(
        std::fs::read_to_string(checkout.join("copied.txt")).unwrap(),
        "hello from the host\n"
    );
    assert_eq!(
        std::fs::read_to_string(checkout.join("uid.txt")).unwrap(),
        "0\n"
    );
    // The directory made for --workdir is on the host too (it is inside the bind).
    assert!(checkout.join("out-dir-inside").is_dir());

    // --user runs as the root's user.
    let r = t.envc(&[
        "run",
        "--bind",
        &bind,
        "--user",
        "builder",
        s,
        "--",
        "sh",
        "-c",
        "id -u; id -un",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.stdout, "1000\nbuilder\n");

    // :ro refuses writes; the host file stays.
    let ro = format!("{}:/src:ro", checkout.display());
    let r = t.envc(&[
        "run",
        "--bind",
        &ro,
        s,
        "--",
        "sh",
        "-c",
        "echo x > /src/copied.txt",
    ]);
    assert_ne!(r.code, 0, "a write through a read-only bind succeeded");
    assert_eq!(
        std::fs::read_to_string(checkout.join("copied.txt")).unwrap(),
        "hello from the host\n"
    );

    // Nothing of the run is in the environment: ids unchanged, the working root has no /src.
    let plan_after = t.envc(&["plan", "--json", s]).stdout;
    assert_eq!(plan_before, plan_after);
    assert!(
        !root.join("src").exists(),
        "a bind's mount point was left in the working root"
    );
    assert!(t.stray_mounts().is_empty(), "{:?}", t.stray_mounts());
    let r = t.apply(&spec);
    assert!(r.stderr.contains("0 built"), "{}", r.stderr);
}

/// Usage errors come before anything else (the spec is not even read): no root needed.
#[test]
fn bad_run_options_are_usage_errors() {
    let dir = common::TempDir::new("workflow-usage");
    let spec = dir.path().join("wf.kdl");
    std::fs::write(&spec, format!("{BASE}{SPEC}")).unwrap();
    let s = spec.to_str().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, "x").unwrap();
    let missing = format!("{}:/src", dir.path().join("nope").display());
    let not_dir = format!("{}:/src", file.display());
    let relative = format!("{}:src", dir.path().display());
    for (args, says) in [
        (vec!["--bind", missing.as_str()], "nope"),
        (vec!["--bind", not_dir.as_str()], "is not a directory"),
        (vec!["--bind", relative.as_str()], "not an absolute path"),
        (vec!["--env", "1X=y"], "not a variable name"),
        (vec!["--workdir", "rel"], "not an absolute path"),
    ] {
        let mut a = vec!["run"];
        a.extend(args.iter().copied());
        a.extend([s, "--", "true"]);
        let out = std::process::Command::new(common::ENVC)
            .env("ENVC_STORE", dir.path().join("store"))
            .env("NO_COLOR", "1")
            .args(&a)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
        assert!(
            !dir.path().join("store").exists(),
            "{args:?}: a store was made"
        );
    }
}

fn ids(t: &TestStore, spec: &std::path::Path) -> Vec<String> {
    let out = t.envc(&["plan", "--json", spec.to_str().unwrap()]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    v["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["id"].as_str().unwrap().to_owned())
        .collect()
}

fn caches(kind: Kind) {
    let t = TestStore::new(kind, "workflow-cache");
    let layer = |cache: &str, version: &str| {
        format!(
            "{BASE}name \"wfc\"\nlayer \"build\" {{\n  {cache}\n  run \"ls /cache > /seen-by-{version}; touch /cache/{version}\"\n  run \"touch /cache/by-builder\" user=\"builder\"\n}}\n"
        )
    };
    let with = t.spec("with.kdl", &layer("cache \"/cache\"", "v1"));
    let without = t.spec("without.kdl", &layer("", "v1"));
    assert_eq!(
        ids(&t, &with),
        ids(&t, &without),
        "a cache step changed the ids"
    );
    let root = t.apply(&with).root();
    // The layer has the mount point, empty; the step saw an empty cache.
    assert_eq!(std::fs::read_dir(root.join("cache")).unwrap().count(), 0);
    assert_eq!(
        std::fs::read_to_string(root.join("seen-by-v1")).unwrap(),
        ""
    );
    // Another build of the step sees what the first left.
    let v2 = t.spec("with.kdl", &layer("cache \"/cache\"", "v2"));
    let root = t.apply(&v2).root();
    assert_eq!(
        std::fs::read_to_string(root.join("seen-by-v2")).unwrap(),
        "by-builder\nv1\n"
    );
    let s = v2.to_str().unwrap();
    // envc run sees the cache and keeps what it writes there; the layers do not.
    let r = t.envc(&[
        "run",
        s,
        "--",
        "sh",
        "-c",
        "ls /cache; touch /cache/from-run",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.stdout, "by-builder\nv1\nv2\n");
    let r = t.envc(&["run", s, "--", "ls", "/cache"]);
    assert_eq!(r.stdout, "by-builder\nfrom-run\nv1\nv2\n");
    assert_eq!(r.stderr, "", "a warm envc run printed something of its own");
    assert_eq!(std::fs::read_dir(root.join("cache")).unwrap().count(), 0);
    // A named cache is shared between environments.
    let a = t.spec(
        "a.kdl",
        &format!("{BASE}name \"wfa\"\nlayer \"x\" {{\n  cache \"/c\" name=\"shared\"\n}}\n"),
    );
    let b = t.spec(
        "b.kdl",
        &format!("{BASE}name \"wfb\"\nlayer \"y\" {{\n  cache \"/other\" name=\"shared\"\n}}\n"),
    );
    let r = t.envc(&["run", a.to_str().unwrap(), "--", "touch", "/c/from-a"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let r = t.envc(&["run", b.to_str().unwrap(), "--", "ls", "/other"]);
    assert_eq!(r.stdout, "from-a\n", "{}", r.stderr);
    // gc --caches empties them all; the next run starts empty.
    let r = t.envc(&["gc", "--caches"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("emptied cache n-shared"), "{}", r.stdout);
    let r = t.envc(&["run", s, "--", "ls", "/cache"]);
    assert_eq!(r.stdout, "");
    // A bad name is a spec error at its place.
    let bad = t.spec(
        "bad.kdl",
        &format!("{BASE}name \"wfd\"\nlayer \"x\" {{\n  cache \"/c\" name=\"../up\"\n}}\n"),
    );
    let r = t.envc(&["check", bad.to_str().unwrap()]);
    assert_eq!(r.code, 3, "{}", r.stderr);
    assert!(r.stderr.contains("invalid cache name"), "{}", r.stderr);
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
    a_bound_checkout_and_run_options => bind_and_options,
    a_cache_outlives_builds_and_runs_and_no_layer_holds_it => caches,
}
