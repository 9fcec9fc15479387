//! A real Debian root: mmdebstrap builds bookworm minbase from the host's apt sources, a
//! `packages` step installs `hello` into it, and `envc run` runs it.

mod common;

use common::{Kind, TestStore, privileged};

#[test]
fn debian_minbase_with_hello() {
    if !privileged("debian_minbase_with_hello") {
        return;
    }
    assert!(
        std::path::Path::new("/usr/bin/mmdebstrap").exists(),
        "mmdebstrap is missing (apt-get install mmdebstrap)"
    );
    let t = TestStore::new(Kind::Overlay, "debian");
    // Built on this (bookworm) host, so the root's glibc is the same.
    common::synccheck(&t.specs, false);
    std::fs::copy(
        concat!(env!("CARGO_MANIFEST_DIR"), "/tests/common/localrepo.sh"),
        t.specs.join("localrepo.sh"),
    )
    .unwrap();
    // The base is built with sync suppressed (the default: seccomp around mmdebstrap) and without
    // docs; `packages` defaults to seccomp; the shim is tried on a dynamically linked program.
    let spec = t.spec(
        "env.kdl",
        "name \"deb-hello\"\nbase \"debian\" suite=\"bookworm\" variant=\"minbase\" exclude-docs=#true\n\
         layer \"hello\" {\n    packages \"hello\"\n}\n\
         layer \"own-repo\" {\n    copy \"localrepo.sh\" \"/usr/local/sbin/localrepo\" mode=\"0755\"\n    run \"localrepo\"\n    packages \"envc-local-test\"\n}\n\
         layer \"check\" {\n    run \"hello > /greeting && dpkg -s hello | grep -q 'Status: install ok installed'\"\n    copy \"synccheck\" \"/usr/local/bin/synccheck\" mode=\"0755\"\n    run \"synccheck /tmp/x > /shim.txt; env > /shim-env.txt\" sync=\"shim\"\n}\n",
    );
    let r = t.apply(&spec);
    assert_eq!(
        r.built(),
        ["base", "hello", "own-repo", "check"],
        "{}",
        r.stderr
    );
    // A repository the spec added is used by the next `packages` step, even right after the base
    // build's lists were reused: apt works with the root's own sources.
    assert_eq!(
        std::fs::read_to_string(r.root().join("usr/share/envc/local-test")).unwrap(),
        "installed-from-a-local-repository\n"
    );
    let root = r.root();
    assert_eq!(
        std::fs::read_to_string(root.join("greeting")).unwrap(),
        "Hello, world!\n"
    );
    // The shim: EBADF kept for a closed descriptor, O_SYNC stripped; it was preloaded from the
    // step's own /tmp, which is not part of the layer.
    assert_eq!(
        std::fs::read_to_string(root.join("shim.txt")).unwrap(),
        "fsync_open=0 fsync_closed=-1/9 osync=0\n"
    );
    assert!(
        std::fs::read_to_string(root.join("shim-env.txt"))
            .unwrap()
            .contains("LD_PRELOAD=/tmp/.envc-nosync/$LIB/libenvc-nosync.so")
    );
    assert!(!root.join("tmp/.envc-nosync").exists());
    // exclude-docs: no man or info pages, but copyright files stay.
    assert!(
        !root.join("usr/share/man/man1/hello.1.gz").exists(),
        "man pages are excluded"
    );
    assert!(
        !root.join("usr/share/info/hello.info.gz").exists(),
        "info pages are excluded"
    );
    assert!(
        root.join("usr/share/doc/hello/copyright").exists(),
        "copyright files stay"
    );
    // Nothing of the host stays in a layer.
    for leaked in [
        "etc/resolv.conf",
        "etc/hostname",
        "usr/sbin/policy-rc.d",
        "var/cache/apt/pkgcache.bin",
    ] {
        assert!(
            !root.join(leaked).exists(),
            "{leaked} must not be in the root"
        );
    }
    // The .deb went to the shared cache (one per tree a `packages` step starts from), not into
    // the layer.
    let debs: Vec<_> = std::fs::read_dir(t.store.join("cache/debs"))
        .unwrap()
        .filter_map(Result::ok)
        .flat_map(|key| {
            std::fs::read_dir(key.path())
                .unwrap()
                .filter_map(Result::ok)
        })
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(debs.iter().any(|d| d.starts_with("hello_")), "{debs:?}");
    let run = t.envc(&[
        "run",
        spec.to_str().unwrap(),
        "--",
        "hello",
        "--greeting=from envc",
    ]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.stdout, "from envc\n");
    // Warm: nothing rebuilt.
    let again = t.apply(&spec);
    assert!(again.built().is_empty(), "{}", again.stderr);
}
