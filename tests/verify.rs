//! Tree digests and `envc verify`, for real on overlayfs and on btrfs (a loop-file filesystem the
//! test makes): every sealed layer records its digest (`ls --json`, `plan --json`), `verify`
//! passes on an untouched store and names exactly the layers a change behind envc's back reaches,
//! and deterministic layers get the same digests in two stores.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use common::{Kind, Run, TestStore, privileged};

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
    layers_record_their_digest_and_verify_names_each_changed_one,
    deterministic_layers_get_the_same_digest_in_two_stores,
);

fn json(r: &Run) -> serde_json::Value {
    serde_json::from_str(&r.stdout).unwrap_or_else(|e| panic!("{e}:\n{}\n{}", r.stdout, r.stderr))
}

/// The ids of a spec's layers, in order.
fn ids(t: &TestStore, spec: &Path) -> Vec<String> {
    let plan = json(&t.envc(&["plan", "--json", spec.to_str().unwrap()]));
    plan["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["id"].as_str().unwrap().to_owned())
        .collect()
}

/// Each layer's recorded tree digest, by id, from `ls --json` (every layer has one).
fn recorded(t: &TestStore) -> BTreeMap<String, String> {
    let ls = json(&t.envc(&["ls", "--json"]));
    ls["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            let d = l["tree_digest"].as_str().unwrap_or_else(|| panic!("{l}"));
            assert!(d.len() == 64 && d.bytes().all(|b| b.is_ascii_hexdigit()));
            (l["id"].as_str().unwrap().to_owned(), d.to_owned())
        })
        .collect()
}

/// `envc verify ARGS`: its exit status, and each line as (layer name, status), checking that
/// each line names the layer's id.
fn verify(
    t: &TestStore,
    args: &[&str],
    ids: &BTreeMap<&str, &str>,
) -> (i32, Vec<(String, String)>) {
    let mut all = vec!["verify"];
    all.extend_from_slice(args);
    let r = t.envc(&all);
    let lines = r
        .stdout
        .lines()
        .map(|l| {
            let mut parts = l.splitn(3, ' ');
            let (name, id, rest) = (
                parts.next().unwrap(),
                parts.next().unwrap(),
                parts.next().unwrap().trim_start(),
            );
            assert!(ids[name].starts_with(id), "{l}");
            (name.to_owned(), rest.to_owned())
        })
        .collect();
    (r.code, lines)
}

/// The word that starts each status (`ok`, `MISMATCH`, `no`, `ERROR`).
fn words(lines: &[(String, String)]) -> Vec<(&str, &str)> {
    lines
        .iter()
        .map(|(n, s)| (n.as_str(), s.split(' ').next().unwrap()))
        .collect()
}

/// Runs `change` on a sealed layer's directory behind envc's back (a btrfs layer is a read-only
/// subvolume: made writable for it, then read-only again).
fn behind_envcs_back(kind: Kind, layer: &Path, change: impl FnOnce(&Path)) {
    let ro = |v: &str| {
        let out = Command::new("btrfs")
            .args(["property", "set", "-ts"])
            .arg(layer)
            .args(["ro", v])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
    };
    if kind == Kind::Btrfs {
        ro("false");
    }
    change(layer);
    if kind == Kind::Btrfs {
        ro("true");
    }
}

/// Rewrites a file in place with other bytes of the same length, keeping its modification time:
/// only its content hash can tell.
fn rewrite_keeping_time(path: &Path, bytes: &[u8]) {
    let m = std::fs::metadata(path).unwrap();
    assert_eq!(m.len(), bytes.len() as u64);
    std::fs::write(path, bytes).unwrap();
    let f = std::fs::File::options().write(true).open(path).unwrap();
    f.set_modified(m.modified().unwrap()).unwrap();
}

fn chmod(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn layers_record_their_digest_and_verify_names_each_changed_one(kind: Kind) {
    let t = TestStore::new(kind, "verify");
    let spec = t.spec(
        "env.kdl",
        &format!(
            "name \"ver\"\n{BASE}layer \"a\" {{ run \"echo a > /a\" }}\nlayer \"b\" {{ run \"echo b > /b\" }}\n"
        ),
    );
    t.apply(&spec);
    let order = ids(&t, &spec);
    let by_name: BTreeMap<&str, &str> = ["base", "a", "b"]
        .into_iter()
        .zip(order.iter().map(String::as_str))
        .collect();
    let layer = |name: &str| t.store.join("layers").join(by_name[name]);
    let spec_arg = spec.to_str().unwrap();

    // Every layer has its digest, in `ls --json` and in `plan --json`.
    let digests = recorded(&t);
    assert_eq!(digests.len(), 3, "{digests:?}");
    let plan = json(&t.envc(&["plan", "--json", spec_arg]));
    for l in plan["layers"].as_array().unwrap() {
        assert_eq!(
            l["tree_digest"].as_str(),
            Some(digests[l["id"].as_str().unwrap()].as_str()),
            "{l}"
        );
    }

    // An untouched store verifies, as a whole and through the spec, in text and JSON.
    let all_ok = vec![("base", "ok"), ("a", "ok"), ("b", "ok")];
    let (code, lines) = verify(&t, &[], &by_name);
    assert_eq!((code, words(&lines)), (0, all_ok.clone()), "{lines:?}");
    let (code, lines) = verify(&t, &[spec_arg], &by_name);
    assert_eq!((code, words(&lines)), (0, all_ok.clone()), "{lines:?}");
    let v = json(&t.envc(&["verify", "--json"]));
    for l in v["layers"].as_array().unwrap() {
        assert_eq!(l["status"], "ok", "{l}");
        assert_eq!(
            l["digest"].as_str(),
            Some(digests[l["id"].as_str().unwrap()].as_str())
        );
    }

    // The top layer's file rewritten with the same size and time: that layer alone, with both
    // digests on its line.
    behind_envcs_back(kind, &layer("b"), |d| {
        rewrite_keeping_time(&d.join("b"), b"B\n")
    });
    let (code, lines) = verify(&t, &[], &by_name);
    assert_eq!(
        (code, words(&lines)),
        (1, vec![("base", "ok"), ("a", "ok"), ("b", "MISMATCH")]),
        "{lines:?}"
    );
    assert!(
        lines[2]
            .1
            .contains(&format!("recorded {}", digests[by_name["b"]])),
        "{lines:?}"
    );
    let v = json(&t.envc(&["verify", "--json"]));
    let b = &v["layers"][2];
    assert_eq!(
        (b["status"].as_str(), b["ancestor"].as_str()),
        (Some("mismatch"), None),
        "{b}"
    );
    // Put back (the same bytes and time): verified again.
    behind_envcs_back(kind, &layer("b"), |d| {
        rewrite_keeping_time(&d.join("b"), b"b\n")
    });
    let (code, lines) = verify(&t, &[], &by_name);
    assert_eq!((code, words(&lines)), (0, all_ok.clone()), "{lines:?}");

    // A mode changed in the middle layer. On overlay the layer above it reads the file from it
    // (it does not hide it) and names it as the first changed layer below; on btrfs every layer
    // is a whole copy, and only the one changed differs. The base is intact.
    behind_envcs_back(kind, &layer("a"), |d| chmod(&d.join("a"), 0o600));
    let (code, lines) = verify(&t, &[], &by_name);
    let above = if kind == Kind::Overlay {
        "MISMATCH"
    } else {
        "ok"
    };
    assert_eq!(
        (code, words(&lines)),
        (1, vec![("base", "ok"), ("a", "MISMATCH"), ("b", above)]),
        "{lines:?}"
    );
    if kind == Kind::Overlay {
        let below = format!("layer a {}", &by_name["a"][..12]);
        assert!(lines[2].1.contains(&below), "{lines:?}");
    }
    behind_envcs_back(kind, &layer("a"), |d| chmod(&d.join("a"), 0o644));

    // A record without a digest (as an older envc wrote it) is reported and does not fail.
    let meta = t.store.join("meta").join(format!("{}.json", by_name["a"]));
    let text = std::fs::read_to_string(&meta).unwrap();
    let mut m: serde_json::Value = serde_json::from_str(&text).unwrap();
    m.as_object_mut().unwrap().remove("tree_digest");
    std::fs::write(&meta, serde_json::to_string(&m).unwrap()).unwrap();
    let (code, lines) = verify(&t, &[], &by_name);
    assert_eq!(
        (code, words(&lines)),
        (0, vec![("base", "ok"), ("a", "no"), ("b", "ok")]),
        "{lines:?}"
    );
    assert_eq!(lines[1].1, "no digest recorded (sealed by an older envc)");

    // An unreadable record: an error naming it, and the other layers are verified all the same.
    std::fs::write(&meta, "not json").unwrap();
    let (code, lines) = verify(&t, &[spec_arg], &by_name);
    assert_eq!(
        (code, words(&lines)),
        (1, vec![("base", "ok"), ("a", "ERROR"), ("b", "ok")]),
        "{lines:?}"
    );
    assert!(lines[1].1.contains(meta.to_str().unwrap()), "{lines:?}");
    std::fs::write(&meta, &text).unwrap();

    // Layers of a spec that are not stored are counted, not verified.
    let more = t.spec(
        "more.kdl",
        &format!(
            "name \"ver\"\n{BASE}layer \"a\" {{ run \"echo a > /a\" }}\nlayer \"c\" {{ run \"echo c > /c\" }}\n"
        ),
    );
    let r = t.envc(&["verify", more.to_str().unwrap()]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.stdout.lines().count(), 2, "{}", r.stdout);
    assert!(
        r.stderr.contains("1 layer of the spec not stored"),
        "{}",
        r.stderr
    );

    // Verifying left no mount and no throwaway tree behind.
    assert!(t.stray_mounts().is_empty(), "{:?}", t.stray_mounts());
    let tmp: Vec<_> = std::fs::read_dir(t.store.join("tmp")).unwrap().collect();
    assert!(tmp.is_empty(), "{tmp:?}");
}

fn deterministic_layers_get_the_same_digest_in_two_stores(kind: Kind) {
    // The base is unpacked from the same tarball, and an `env` step changes no file.
    let text = format!("name \"det\"\n{BASE}layer \"e\" {{ env A=\"1\" }}\n");
    let digests: Vec<BTreeMap<String, String>> = ["det1", "det2"]
        .into_iter()
        .map(|name| {
            let t = TestStore::new(kind, name);
            let spec = t.spec("env.kdl", &text);
            t.apply(&spec);
            assert_eq!(t.envc(&["verify"]).code, 0);
            recorded(&t)
        })
        .collect();
    assert_eq!(digests[0].len(), 2, "{digests:?}");
    assert_eq!(digests[0], digests[1]);
}
