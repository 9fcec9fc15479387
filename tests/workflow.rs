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
//!   by `envc run`, never by a layer (the layer has an empty directory at PATH); the step is in
//!   the ids, what the cache holds is not; `name=` shares a cache between environments, another
//!   `ENVC_CACHE_SCOPE` sees none of it; a step of another user writes there too; `envc gc
//!   --caches` empties the caches; the root, system mounts and /etc, /usr are refused.
//!
//! - `build-deps` of Debian's `hello` source package (its `.dsc`, downloaded from the host's
//!   mirror by `envc run` itself), then `dpkg-buildpackage` through `envc run --bind` without
//!   network: the `.deb` lands in the host directory, every layer still verifies, and the working
//!   root holds no build tree; then the same spec locked and built from its lock in another store.
//!
//! - `--json`: every line envc writes to stderr is one JSON object of schema version 1; a failing
//!   step's `error` event has the step's file, line and column; `check --json` reports each spec.
//!
//! The bind and cache tests need root and skip otherwise, unless ENVC_REQUIRE_PRIVILEGED=1; the
//! usage errors need no root.

mod common;

use common::hostile::BASE;
use common::{Kind, Run, TestStore, privileged};

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

fn caches(kind: Kind) {
    let t = TestStore::new(kind, "workflow-cache");
    let layer = |cache: &str, version: &str| {
        format!(
            "{BASE}name \"wfc\"\nlayer \"build\" {{\n  {cache}\n  run \"ls /cache > /seen-by-{version}; touch /cache/{version}\"\n  run \"touch /cache/by-builder\" user=\"builder\"\n}}\n"
        )
    };
    let with = t.spec("with.kdl", &layer("cache \"/cache\"", "v1"));
    let without = t.spec("without.kdl", &layer("", "v1"));
    // Where a cache is mounted is part of the ids (a spec cannot add one under another's ids);
    // what it holds is not (below: builds after it filled up build nothing).
    let (iw, io) = (t.plan_ids(&with), t.plan_ids(&without));
    assert_eq!(iw[0], io[0]);
    assert_ne!(iw[1], io[1], "a cache step left the ids unchanged");
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
    let r = t.apply(&v2);
    assert!(
        r.stderr.contains("0 built"),
        "a filled cache changed an id: {}",
        r.stderr
    );
    // Another scope (ENVC_CACHE_SCOPE, for untrusted builds) sees none of it.
    let r = Run::from(
        t.cmd()
            .env("ENVC_CACHE_SCOPE", "pr-7")
            .args(["run", s, "--", "ls", "/cache"])
            .output()
            .unwrap(),
    );
    assert_eq!((r.code, r.stdout.as_str()), (0, ""), "{}", r.stderr);
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
    // Nor there through a symlink a step planted: the mount would land on the step's /tmp.
    let planted = t.spec(
        "planted.kdl",
        &format!(
            "{BASE}name \"wfp\"\nlayer \"link\" {{\n  run \"ln -s /tmp /x\"\n}}\nlayer \"use\" {{\n  cache \"/x\"\n  run \"touch /x/written\"\n}}\n"
        ),
    );
    let r = t.envc(&["apply", planted.to_str().unwrap()]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("/x (reached without a symbolic link)"),
        "{}",
        r.stderr
    );
    // Not over the root, a system mount or what envc writes into a step.
    for path in ["/", "/tmp/x", "/proc", "/etc", "/usr", "/dev/shm"] {
        let bad = t.spec(
            "bad.kdl",
            &format!("{BASE}name \"wfd\"\nlayer \"x\" {{\n  cache \"{path}\"\n}}\n"),
        );
        let r = t.envc(&["check", bad.to_str().unwrap()]);
        assert_eq!(r.code, 3, "{path}: {}", r.stderr);
    }
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
    json_events_describe_a_build_and_a_run => json_events,
    a_bound_checkout_and_run_options => bind_and_options,
    a_cache_outlives_builds_and_runs_and_no_layer_holds_it => caches,
}

/// Builds Debian's hello from its source package, as sbuild would.
#[test]
fn a_source_package_is_built_from_its_build_deps() {
    if !privileged("a_source_package_is_built_from_its_build_deps") {
        return;
    }
    let t = TestStore::new(Kind::Overlay, "workflow-build-deps");
    let src = t.specs.join("src");
    std::fs::create_dir_all(&src).unwrap();
    let base = "base \"debian\" suite=\"bookworm\" variant=\"minbase\"\n";
    let fetch = t.spec("fetch.kdl", &format!("name \"fetch-src\"\n{base}"));
    let bind = format!("{}:/src", src.display());
    // The source package, from the mirror the root's apt uses (and checked by it).
    let r = t.envc(&[
        "run",
        "--bind",
        &bind,
        "--workdir",
        "/src",
        fetch.to_str().unwrap(),
        "--",
        "sh",
        "-c",
        "sed -n 's/^deb /deb-src /p' /etc/apt/sources.list > /etc/apt/sources.list.d/src.list \
         && apt-get -qq update && apt-get -qq source --download-only hello",
    ]);
    assert_eq!(
        r.code, 0,
        "downloading hello's source failed:\n{}",
        r.stderr
    );
    let dsc = std::fs::read_dir(&src)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n.starts_with("hello_") && n.ends_with(".dsc"))
        .expect("hello's .dsc");
    let spec = t.spec(
        "hello.kdl",
        &format!(
            "name \"hello-build\"\n{base}layer \"deps\" {{\n    packages \"build-essential\"\n    build-deps \"src/{dsc}\"\n}}\n"
        ),
    );
    let plan = t.envc(&["plan", spec.to_str().unwrap()]);
    assert!(
        plan.stdout.contains(&format!("build-deps src/{dsc}")),
        "{}",
        plan.stdout
    );
    let root = t.apply(&spec).root();
    assert!(
        root.join("usr/bin/dh").exists(),
        "debhelper is not installed"
    );
    let s = spec.to_str().unwrap();
    let r = t.envc(&[
        "run",
        "--no-network",
        "--bind",
        &bind,
        "--workdir",
        "/src",
        s,
        "--",
        "sh",
        "-c",
        &format!("dpkg-source -x {dsc} build && cd build && dpkg-buildpackage -b -us -uc"),
    ]);
    assert_eq!(
        r.code,
        0,
        "dpkg-buildpackage failed:\n{}",
        common::hostile::tail(&r.stderr, 3000)
    );
    let debs: Vec<String> = std::fs::read_dir(&src)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("hello_") && n.ends_with(".deb"))
        .collect();
    assert_eq!(debs.len(), 1, "{debs:?}");
    assert!(!root.join("src").exists() && !root.join("build").exists());
    let v = t.envc(&["verify", s]);
    assert_eq!(v.code, 0, "{}", v.stderr);
    // Locked: the resolved build dependencies pinned, installed from the lock in another store.
    let r = t.envc(&["lock", s]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let lock = std::fs::read_to_string(spec.with_extension("lock")).unwrap();
    assert!(lock.contains("name = \"debhelper\""), "{lock}");
    let other = TestStore::new(Kind::Overlay, "workflow-build-deps-locked");
    let spec2 = other.spec("hello.kdl", &std::fs::read_to_string(&spec).unwrap());
    std::fs::create_dir_all(other.specs.join("src")).unwrap();
    std::fs::copy(src.join(&dsc), other.specs.join("src").join(&dsc)).unwrap();
    std::fs::copy(spec.with_extension("lock"), spec2.with_extension("lock")).unwrap();
    let r = other.envc(&["apply", "--locked", spec2.to_str().unwrap()]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.root().join("usr/bin/dh").exists());
}

/// Every stderr line of `r`, parsed as a JSON event (each must be one).
fn events(stderr: &str) -> Vec<serde_json::Value> {
    stderr
        .lines()
        .map(|l| {
            let v: serde_json::Value =
                serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON event ({e}): {l}"));
            assert_eq!(v["v"], 1, "{l}");
            assert!(v["event"].is_string(), "{l}");
            v
        })
        .collect()
}

fn of<'a>(evs: &'a [serde_json::Value], kind: &str) -> Vec<&'a serde_json::Value> {
    evs.iter().filter(|e| e["event"] == kind).collect()
}

#[test]
fn check_json_reports_each_spec_and_each_error_with_its_place() {
    let dir = common::TempDir::new("workflow-json-check");
    let good = dir.path().join("good.kdl");
    std::fs::write(
        &good,
        "name \"g\"\nbase \"scratch\"\nlayer \"a\" {\n    run \"true\"\n}\n",
    )
    .unwrap();
    let bad = dir.path().join("bad.kdl");
    std::fs::write(
        &bad,
        "name \"b\"\nbase \"scratch\"\nlayer \"a\" {\n    frobnicate \"x\"\n}\n",
    )
    .unwrap();
    let out = std::process::Command::new(common::ENVC)
        .args(["check", "--json"])
        .arg(&good)
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert!(
        out.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let evs = events(&String::from_utf8_lossy(&out.stderr));
    let checked = of(&evs, "checked");
    assert_eq!(checked.len(), 2, "{evs:?}");
    assert_eq!(checked[0]["valid"], true);
    assert_eq!(checked[0]["layers"], 2);
    assert_eq!(checked[1]["valid"], false);
    let errors = of(&evs, "error");
    assert_eq!(errors.len(), 1, "{evs:?}");
    assert_eq!(errors[0]["code"], "envc::spec::unknown_node");
    assert_eq!(errors[0]["kind"], "invalid-spec");
    assert_eq!(errors[0]["line"], 4);
    assert_eq!(errors[0]["column"], 5);
    assert!(
        errors[0]["file"].as_str().unwrap().ends_with("bad.kdl"),
        "{:?}",
        errors[0]
    );
}

fn json_events(kind: Kind) {
    let t = TestStore::new(kind, "workflow-json");
    let spec = t.spec(
        "j.kdl",
        &format!("{BASE}name \"j\"\nlayer \"ok\" {{\n    run \"echo hello\"\n}}\nlayer \"fails\" {{\n    env A=\"1\"\n    run \"echo about to fail; exit 7\"\n}}\n"),
    );
    let s = spec.to_str().unwrap();
    let r = t.envc(&["apply", "--json", s]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    let evs = events(&r.stderr);
    let started: Vec<&str> = of(&evs, "layer-started")
        .iter()
        .map(|e| e["layer"].as_str().unwrap())
        .collect();
    assert_eq!(started, ["base", "ok", "fails"]);
    let built = of(&evs, "layer-built");
    assert_eq!(built.len(), 2);
    assert!(built[0]["secs"].is_number() && built[0]["id"].as_str().unwrap().len() == 64);
    assert!(
        of(&evs, "output")
            .iter()
            .any(|e| e["layer"] == "ok" && e["line"] == "hello")
    );
    let err = of(&evs, "error");
    assert_eq!(err.len(), 1, "{evs:?}");
    let e = err[0];
    assert_eq!(e["kind"], "step-failed");
    assert_eq!(e["code"], "envc::apply::step_failed");
    assert_eq!(e["layer"], "fails");
    assert_eq!(e["step"], 2);
    assert_eq!(e["line"], 8, "{e}");
    assert_eq!(e["column"], 5, "{e}");
    assert!(e["file"].as_str().unwrap().ends_with("j.kdl"));
    assert!(
        e["tail"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l == "about to fail")
    );
    // A run: the layers (cached) and the command's status; the command's own output on stdout.
    let ok = t.spec(
        "k.kdl",
        &format!("{BASE}name \"k\"\nlayer \"ok\" {{\n    run \"echo hello\"\n}}\n"),
    );
    let r = t.envc(&["apply", "--json", ok.to_str().unwrap()]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let done = events(&r.stderr)
        .into_iter()
        .find(|e| e["event"] == "done")
        .unwrap();
    assert_eq!(done["cached"], 2);
    assert_eq!(done["built"], 0);
    let r = t.envc(&[
        "run",
        "--json",
        ok.to_str().unwrap(),
        "--",
        "sh",
        "-c",
        "echo out; exit 3",
    ]);
    assert_eq!(r.code, 3);
    assert_eq!(r.stdout, "out\n");
    let evs = events(&r.stderr);
    assert_eq!(of(&evs, "layer-cached").len(), 2);
    assert_eq!(of(&evs, "exit")[0]["status"], 3);
}
