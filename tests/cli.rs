//! The `envc` binary: help, version, exit codes, `check` and `plan`, option values.

use snapbox::cmd::{Command, cargo_bin};

fn envc() -> Command {
    // A store that does not exist: `plan --json` shows no tree digest from the machine's own.
    Command::new(cargo_bin!("envc"))
        .env("NO_COLOR", "1")
        .env("COLUMNS", "100")
        .env("ENVC_STORE", "/nonexistent/envc-cli-test-store")
}

fn scratch(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("envc-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn help_lists_commands_and_exit_codes() {
    let out = envc().arg("--help").assert().success();
    let text = String::from_utf8_lossy(&out.get_output().stdout).into_owned();
    for word in [
        "check",
        "plan",
        "Exit codes: 0 success, 1 operation failed, 2 usage error, 3 invalid spec",
    ] {
        assert!(text.contains(word), "--help lacks {word:?}:\n{text}");
    }
    envc().args(["plan", "--help"]).assert().success();
}

#[test]
fn version() {
    envc()
        .arg("--version")
        .assert()
        .success()
        .stdout_eq(format!("envc {}\n", env!("CARGO_PKG_VERSION")));
}

#[test]
fn usage_errors_exit_2() {
    envc().assert().code(2);
    envc().arg("frobnicate").assert().code(2);
    envc().arg("check").assert().code(2);
    envc()
        .args(["plan", "specs/rust-ci.kdl", "--bogus"])
        .assert()
        .code(2);
}

#[test]
fn check_valid_specs_exits_0() {
    envc().args(["check", "specs/rust-ci.kdl", "specs/team/cpp.kdl"]).assert().success().stdout_eq("specs/rust-ci.kdl: ok (3 layers, rust-ci)\nspecs/team/cpp.kdl: ok (4 layers, team-cpp)\n");
}

#[test]
fn check_invalid_spec_exits_3_with_every_error() {
    let dir = scratch("invalid");
    let spec = dir.join("env.kdl");
    std::fs::write(
        &spec,
        "name \"x\"\nbase \"debain\"\nlayer \"a\" {\n    pakages \"gcc\"\n}\n",
    )
    .unwrap();
    let out = envc().arg("check").arg(&spec).assert().code(3);
    let stderr =
        String::from_utf8_lossy(&out.get_output().stderr).replace(dir.to_str().unwrap(), "[DIR]");
    assert!(stderr.contains("envc::spec::unknown_base"), "{stderr}");
    assert!(stderr.contains("did you mean `debian`?"), "{stderr}");
    assert!(stderr.contains("envc::spec::unknown_node"), "{stderr}");
    assert!(stderr.contains("did you mean `packages`?"), "{stderr}");
    assert!(
        stderr.contains("[DIR]/env.kdl:2:6"),
        "points at the spec line: {stderr}"
    );
    assert!(stderr.contains("is invalid: 2 errors"), "{stderr}");
    // A valid spec checked together with an invalid one still fails the run.
    envc()
        .arg("check")
        .arg("specs/rust-ci.kdl")
        .arg(&spec)
        .assert()
        .code(3);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn missing_spec_exits_3() {
    let out = envc().args(["check", "no/such/spec.kdl"]).assert().code(3);
    let stderr = String::from_utf8_lossy(&out.get_output().stderr).into_owned();
    assert!(stderr.contains("envc::spec::unreadable"), "{stderr}");
    assert!(stderr.contains("no/such/spec.kdl"), "{stderr}");
}

#[test]
fn plan_text_lists_layers_in_order() {
    let out = envc()
        .args(["plan", "specs/rust-ci.kdl"])
        .assert()
        .success();
    let text = String::from_utf8_lossy(&out.get_output().stdout).into_owned();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "rust-ci (3 layers)");
    assert!(lines[1].trim_start().starts_with("base "), "{text}");
    assert!(lines[2].trim_start().starts_with("toolchain "), "{text}");
    assert!(
        lines[2].ends_with("packages build-essential pkg-config"),
        "{text}"
    );
    assert!(lines[3].trim_start().starts_with("user "), "{text}");
}

#[test]
fn plan_json_has_the_documented_shape() {
    let out = envc()
        .args(["plan", "--json", "specs/team/python.kdl"])
        .assert()
        .success();
    let plan: serde_json::Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    assert_eq!(plan["name"], "team-python");
    let layers = plan["layers"].as_array().unwrap();
    let names: Vec<&str> = layers.iter().map(|l| l["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        ["base", "essentials", "builder", "python", "workspace"]
    );
    assert!(layers[0]["parent"].is_null());
    assert_eq!(layers[0]["steps"][0]["type"], "base");
    for (i, layer) in layers.iter().enumerate() {
        let id = layer["id"].as_str().unwrap();
        assert_eq!(id.len(), 64);
        assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
        if i > 0 {
            assert_eq!(layer["parent"], layers[i - 1]["id"]);
        }
        assert!(layer["steps"].as_array().is_some_and(|s| !s.is_empty()));
        // No store: no layer is sealed, so none has a recorded tree digest.
        assert!(layer["tree_digest"].is_null(), "{layer}");
    }
    assert_eq!(layers[3]["steps"][1]["type"], "env");
    assert_eq!(
        layers[3]["steps"][1]["vars"]["PATH"],
        "/home/builder/.local/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    );
    // The JSON is the plan type itself (with each layer's `tree_digest` besides): it
    // deserializes back and its ids verify.
    let typed: envc_plan::Plan = serde_json::from_slice(&out.get_output().stdout).unwrap();
    typed.verify().unwrap();
}

#[test]
fn plan_of_invalid_spec_exits_3() {
    let dir = scratch("plan-invalid");
    let spec = dir.join("env.kdl");
    std::fs::write(&spec, "name \"x\"\n").unwrap();
    let out = envc().args(["plan", "--json"]).arg(&spec).assert().code(3);
    assert!(
        out.get_output().stdout.is_empty(),
        "no partial plan on stdout"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

fn stderr_of(out: &snapbox::cmd::OutputAssert) -> String {
    String::from_utf8_lossy(&out.get_output().stderr).into_owned()
}

/// A bad age or size is a usage error that names the option and the accepted forms, found before
/// the store is touched.
#[test]
fn bad_ages_and_sizes_exit_2() {
    let dir = scratch("bad-values");
    let store = dir.join("store");
    let cases: &[(&[&str], &[&str])] = &[
        (
            &["gc", "--older-than", "5x"],
            &["--older-than", "30d, 12h, 45m, 10s"],
        ),
        (
            &["gc", "--older-than", "1.5h"],
            &["--older-than", "30d, 12h, 45m, 10s"],
        ),
        (
            &["gc", "--keep-bytes", "lots"],
            &["--keep-bytes", "20G, 500M"],
        ),
        (
            &["gc", "--keep-bytes", "99999999999T"],
            &["--keep-bytes", "too large"],
        ),
        (
            &["gc", "--keep-bytes", "99999999999999999999"],
            &["--keep-bytes", "too large"],
        ),
        (
            &["gc", "--older-than", "99999999999999w"],
            &["--older-than", "too large"],
        ),
        (
            &["store", "init", "lvm", "--vg", "vg0", "--size", "5x"],
            &["--size", "20G, 500M"],
        ),
        (
            &["store", "init", "lvm", "--vg", "vg0", "--volume-size", "1P"],
            &["--volume-size", "20G, 500M"],
        ),
        (
            &["store", "init", "lvm", "--vg", "vg0", "--fs", "zfs"],
            &["--fs", "ext4, xfs"],
        ),
    ];
    for (args, words) in cases {
        let out = envc()
            .arg("--store")
            .arg(&store)
            .args(*args)
            .assert()
            .code(2);
        let stderr = stderr_of(&out);
        for word in *words {
            assert!(stderr.contains(word), "{args:?}: no {word:?} in:\n{stderr}");
        }
    }
    assert!(!store.exists(), "a usage error must not create the store");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn bad_backend_exits_2() {
    let dir = scratch("bad-backend");
    let store = dir.join("store");
    let out = envc()
        .env_remove("ENVC_BACKEND")
        .arg("--store")
        .arg(&store)
        .args(["--backend", "zfs", "ls"])
        .assert()
        .code(2);
    let stderr = stderr_of(&out);
    assert!(stderr.contains("--backend"), "{stderr}");
    assert!(stderr.contains("overlay, btrfs, lvm"), "{stderr}");
    envc()
        .env("ENVC_BACKEND", "zfs")
        .arg("--store")
        .arg(&store)
        .arg("ls")
        .assert()
        .code(2);
    assert!(!store.exists(), "a usage error must not create the store");
    std::fs::remove_dir_all(dir).unwrap();
}

/// `overlayfs` is another name of the overlay backend, on the command line and in ENVC_BACKEND.
#[test]
fn backend_overlayfs_is_overlay() {
    let dir = scratch("overlayfs");
    for (i, env) in [None, Some("overlayfs")].into_iter().enumerate() {
        let store = dir.join(format!("store{i}"));
        envc()
            .env_remove("ENVC_BACKEND")
            .arg("--store")
            .arg(&store)
            .args(["store", "init", "overlay"])
            .assert()
            .success();
        // Opening it as `overlayfs` is opening it as overlay (another name would be refused).
        let mut cmd = envc().env_remove("ENVC_BACKEND").arg("--store").arg(&store);
        cmd = match env {
            Some(v) => cmd.env("ENVC_BACKEND", v),
            None => cmd.args(["--backend", "overlayfs"]),
        };
        let out = cmd.args(["ls", "--json"]).assert().success();
        let ls: serde_json::Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
        assert_eq!(ls["backend"], "overlay", "{ls}");
    }
    std::fs::remove_dir_all(dir).unwrap();
}

/// Commands that read or clean a store never make one: a mistyped `--store` is reported.
#[test]
fn read_only_commands_never_create_a_store() {
    let dir = scratch("nostore");
    let store = dir.join("mistyped");
    for args in [
        &["ls"][..],
        &["rm", "x"],
        &["why", "nothing.kdl"],
        &["verify"],
        &["verify", "specs/rust-ci.kdl"],
    ] {
        let out = envc()
            .arg("--store")
            .arg(&store)
            .args(args)
            .assert()
            .code(1);
        let err = String::from_utf8_lossy(&out.get_output().stderr).into_owned();
        assert!(err.contains("no envc store at"), "{args:?}: {err}");
    }
    // A cleanup job on a fresh machine succeeds with nothing to do.
    envc()
        .arg("--store")
        .arg(&store)
        .arg("gc")
        .assert()
        .success();
    // `plan --json` only reads a store, for the layers' tree digests.
    envc()
        .arg("--store")
        .arg(&store)
        .args(["plan", "--json", "specs/rust-ci.kdl"])
        .assert()
        .success();
    assert!(!store.exists(), "no store was made");
    std::fs::remove_dir_all(dir).unwrap();
}

/// A label past column 65,535 of its line made miette 7.6 panic while padding to it ("Formatting
/// argument out of range"): such a report is written without its snippet, still naming
/// `file:line:col` and the help.
#[test]
fn labels_far_along_a_line_are_reported_without_a_panic() {
    let dir = scratch("longline");
    let cases = [
        (
            "spaces.kdl",
            format!(
                "name \"x\"; base \"scratch\"; {}bogus 1\n",
                " ".repeat(70_000)
            ),
            "spaces.kdl:1:70027",
        ),
        (
            "brackets.kdl",
            format!(
                "name \"x\"\nbase \"scratch\"\nlayer \"a\" {{\n  run \"{}\" bogus=1\n}}\n",
                "[".repeat(100_000)
            ),
            "brackets.kdl:4:",
        ),
        (
            "env.kdl",
            format!(
                "name \"x\"\nbase \"scratch\"\nlayer \"a\" {{\n  env {}\n}}\n",
                (0..999_000)
                    .map(|i| format!("A{i}=1"))
                    .collect::<Vec<_>>()
                    .join(" ")
            ),
            "env.kdl:4:",
        ),
        (
            // A long line with the label near its start is drawn as usual.
            "start.kdl",
            format!(
                "name \"x\"; base \"scratch\"\nbogus \"{}\"\n",
                "x".repeat(100_000)
            ),
            "start.kdl:2:1",
        ),
    ];
    for (name, text, at) in cases {
        let spec = dir.join(name);
        std::fs::write(&spec, text).unwrap();
        let out = envc().arg("check").arg(&spec).assert().code(3);
        let stderr = stderr_of(&out);
        assert!(!stderr.contains("panicked"), "{name}: {stderr:.2000}");
        assert!(stderr.contains(at), "{name}: {stderr:.2000}");
        assert!(stderr.contains("help:"), "{name}: {stderr:.2000}");
    }
}

/// A spec named `*.lock` is its own lock: `envc lock` would write the lock over the spec (with
/// `--update` a lock that cannot be read is replaced), and every command would read the spec as
/// a lock. Refused, naming the spec, and the file is left as it was.
#[test]
fn a_spec_named_like_its_lock_is_refused_and_never_overwritten() {
    let dir = scratch("speclock");
    let spec = dir.join("env.lock");
    let text = "name \"x\"\nbase \"scratch\"\nlayer \"a\" {\n    env A=1\n}\n";
    std::fs::write(&spec, text).unwrap();
    for (cmd, opts) in [
        ("lock", &["--update"][..]),
        ("lock", &[]),
        ("plan", &[]),
        ("apply", &[]),
    ] {
        let args = (cmd, opts);
        let out = envc()
            .arg("--store")
            .arg(dir.join("store"))
            .arg(cmd)
            .arg(&spec)
            .args(opts)
            .assert()
            .code(1);
        let err = String::from_utf8_lossy(&out.get_output().stderr).into_owned();
        assert!(err.contains("has the extension .lock"), "{args:?}: {err}");
    }
    assert_eq!(std::fs::read_to_string(&spec).unwrap(), text);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn completions_and_man_pages_are_generated_from_the_command_line() {
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let out = envc().args(["completions", shell]).assert().success();
        let text = String::from_utf8_lossy(&out.get_output().stdout).into_owned();
        assert!(
            text.contains("apply") && text.contains("bind"),
            "{shell}: {text}"
        );
    }
    envc().args(["completions", "tcsh"]).assert().code(2);
    let out = envc().arg("man").assert().success();
    let page = String::from_utf8_lossy(&out.get_output().stdout).into_owned();
    assert!(
        page.contains(".TH envc") && page.contains("apply"),
        "{page}"
    );
    let dir = scratch("man");
    envc()
        .args(["man", "--dir"])
        .arg(dir.join("pages"))
        .assert()
        .success();
    let apply = std::fs::read_to_string(dir.join("pages/envc-apply.1")).unwrap();
    assert!(
        apply.contains(".TH envc-apply") && apply.contains(r"\-\-reset"),
        "{apply}"
    );
    assert!(dir.join("pages/envc.1").exists());
    let _ = std::fs::remove_dir_all(&dir);
}

/// Copies `from` (a directory) into `to`, recursively.
fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            copy_dir(&p, &to.join(e.file_name()));
        } else {
            std::fs::copy(&p, to.join(e.file_name())).unwrap();
        }
    }
}

fn plan_ids(spec: &std::path::Path) -> String {
    let out = envc()
        .arg("plan")
        .arg("--json")
        .arg(spec)
        .assert()
        .success();
    let v: serde_json::Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    v["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["id"].as_str().unwrap().to_owned())
        .collect::<Vec<_>>()
        .join(",")
}

#[test]
fn fmt_keeps_ids_and_comments_and_is_idempotent() {
    let dir = scratch("fmt");
    copy_dir(std::path::Path::new("specs"), &dir.join("specs"));
    let mut specs = Vec::new();
    let mut stack = vec![dir.join("specs")];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "kdl") {
                specs.push(p);
            }
        }
    }
    specs.sort();
    assert!(specs.len() >= 4, "{specs:?}");
    for spec in &specs {
        let before = plan_ids(spec);
        let comments = std::fs::read_to_string(spec)
            .unwrap()
            .lines()
            .filter(|l| l.trim_start().starts_with("//"))
            .map(|l| l.trim().to_owned())
            .collect::<Vec<_>>();
        envc().arg("fmt").arg(spec).assert().success();
        let once = std::fs::read_to_string(spec).unwrap();
        assert_eq!(plan_ids(spec), before, "{}", spec.display());
        for c in comments {
            assert!(once.contains(&c), "{}: lost {c:?}:\n{once}", spec.display());
        }
        envc()
            .arg("fmt")
            .arg("--check")
            .arg(spec)
            .assert()
            .success();
        envc().arg("fmt").arg(spec).assert().success();
        assert_eq!(
            std::fs::read_to_string(spec).unwrap(),
            once,
            "{}",
            spec.display()
        );
    }
    // An unformatted spec: --check lists it and exits 1, changing nothing.
    let ugly = dir.join("ugly.kdl");
    let text = "name \"u\"\nbase \"scratch\"\nlayer \"a\" {\nrun   \"true\" /* keep me */\n}\nlayer \"b\" { run \"x\"; }\n";
    std::fs::write(&ugly, text).unwrap();
    let out = envc().arg("fmt").arg("--check").arg(&ugly).assert().code(1);
    assert!(String::from_utf8_lossy(&out.get_output().stdout).contains("ugly.kdl"));
    assert_eq!(std::fs::read_to_string(&ugly).unwrap(), text);
    let before = plan_ids(&ugly);
    envc().arg("fmt").arg(&ugly).assert().success();
    let after = std::fs::read_to_string(&ugly).unwrap();
    assert!(
        after.contains("keep me") && after.contains("\n    run \"true\""),
        "{after}"
    );
    assert_eq!(plan_ids(&ugly), before);
    // A spec that does not parse: a diagnostic (exit 3), the file untouched.
    let broken = dir.join("broken.kdl");
    std::fs::write(&broken, "name \"b\"\nlayer \"a\" {\n").unwrap();
    envc().arg("fmt").arg(&broken).assert().code(3);
    assert_eq!(
        std::fs::read_to_string(&broken).unwrap(),
        "name \"b\"\nlayer \"a\" {\n"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn key_generate_writes_a_pair_once() {
    use std::os::unix::fs::PermissionsExt;
    let d = scratch("keygen");
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    let out = envc()
        .args(["key", "generate", "team-ci", "--dir"])
        .arg(&d)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let secret = std::fs::read_to_string(d.join("team-ci.key")).unwrap();
    let public = std::fs::read_to_string(d.join("team-ci.pub")).unwrap();
    assert!(
        secret.starts_with("envc-ed25519-secret-v1 team-ci "),
        "{secret}"
    );
    assert!(
        public.starts_with("envc-ed25519-public-v1 team-ci "),
        "{public}"
    );
    let mode = std::fs::metadata(d.join("team-ci.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    assert!(String::from_utf8_lossy(&out.stderr).contains("fingerprint ed25519:"));
    // Never replaced.
    let again = envc()
        .args(["key", "generate", "team-ci", "--dir"])
        .arg(&d)
        .output()
        .unwrap();
    assert_eq!(again.status.code(), Some(1));
    assert_eq!(
        std::fs::read_to_string(d.join("team-ci.key")).unwrap(),
        secret
    );
    // A bad name is a usage error.
    let bad = envc()
        .args(["key", "generate", "../x", "--dir"])
        .arg(&d)
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    // push without a remote or key: usage errors before anything else.
    let spec = d.join("s.kdl");
    std::fs::write(&spec, "name \"s\"\nbase \"scratch\"\n").unwrap();
    let push = envc()
        .arg("push")
        .arg(&spec)
        .env_remove("ENVC_REMOTE")
        .output()
        .unwrap();
    assert_eq!(
        push.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&push.stderr)
    );
    let push = envc()
        .args(["push", spec.to_str().unwrap(), "--remote", "localhost:1/x"])
        .env_remove("ENVC_SIGNING_KEY")
        .output()
        .unwrap();
    assert_eq!(
        push.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&push.stderr)
    );
    let _ = std::fs::remove_dir_all(&d);
}
