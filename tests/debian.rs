//! A real Debian root: mmdebstrap builds bookworm minbase from the host's apt sources, a
//! `packages` step installs `hello` into it, and `envc run` runs it.

mod common;

use common::{Kind, TestStore, privileged};

#[test]
fn debian_minbase_with_hello() {
    if !privileged("debian_minbase_with_hello") {
        return;
    }
    assert!(std::path::Path::new("/usr/bin/mmdebstrap").exists(), "mmdebstrap is missing (apt-get install mmdebstrap)");
    let t = TestStore::new(Kind::Overlay, "debian");
    let spec = t.spec(
        "env.kdl",
        "name \"deb-hello\"\nbase \"debian\" suite=\"bookworm\" variant=\"minbase\"\nlayer \"hello\" {\n    packages \"hello\"\n}\nlayer \"check\" {\n    run \"hello > /greeting && dpkg -s hello | grep -q 'Status: install ok installed'\"\n}\n",
    );
    let r = t.apply(&spec);
    assert_eq!(r.built(), ["base", "hello", "check"], "{}", r.stderr);
    let root = r.root();
    assert_eq!(std::fs::read_to_string(root.join("greeting")).unwrap(), "Hello, world!\n");
    // Nothing of the host stays in a layer.
    for leaked in ["etc/resolv.conf", "etc/hostname", "usr/sbin/policy-rc.d", "var/cache/apt/pkgcache.bin"] {
        assert!(!root.join(leaked).exists(), "{leaked} must not be in the root");
    }
    // The .deb went to the shared cache, not into the layer.
    let debs: Vec<_> = std::fs::read_dir(t.store.join("cache/debs")).unwrap().filter_map(Result::ok).map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    assert!(debs.iter().any(|d| d.starts_with("hello_")), "{debs:?}");
    let run = t.envc(&["run", spec.to_str().unwrap(), "--", "hello", "--greeting=from envc"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.stdout, "from envc\n");
    // Warm: nothing rebuilt.
    let again = t.apply(&spec);
    assert!(again.built().is_empty(), "{}", again.stderr);
}
