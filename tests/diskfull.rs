//! A full disk: a store on a small loop-mounted ext4 filesystem. Every failure names its layer and
//! its place in the spec, leaves nothing staged, and the store stays usable: a later apply of a
//! smaller spec works.

mod common;

use std::path::Path;
use std::process::Command;

use common::{ENVC, LoopFs, Run, TempDir, busybox_tarball, privileged};

/// A 48 MiB ext4 filesystem without blocks reserved for root (envc runs as root).
fn small_fs(dir: &Path) -> LoopFs {
    let img = dir.join("small.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(48 << 20)
        .unwrap();
    let out = Command::new("mkfs.ext4")
        .args(["-q", "-m", "0"])
        .arg(&img)
        .output()
        .expect("mkfs.ext4 (apt-get install e2fsprogs)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mnt = dir.join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let out = Command::new("mount")
        .args(["-o", "loop"])
        .arg(&img)
        .arg(&mnt)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    LoopFs { mountpoint: mnt }
}

fn envc(store: &Path, args: &[&str]) -> Run {
    Run::from(
        Command::new(ENVC)
            .env("NO_COLOR", "1")
            .env("COLUMNS", "200")
            .env("ENVC_STORE", store)
            .args(["--backend", "overlay"])
            .args(args)
            .output()
            .unwrap(),
    )
}

#[test]
fn a_full_disk_names_the_layer_and_leaves_the_store_usable() {
    if !privileged("a_full_disk_names_the_layer_and_leaves_the_store_usable") {
        return;
    }
    let dir = TempDir::new("diskfull");
    let fs = small_fs(dir.path());
    let store = fs.mountpoint.join("store");
    let specs = dir.path().join("specs");
    std::fs::create_dir_all(&specs).unwrap();
    std::fs::copy(busybox_tarball(), specs.join("busybox.tar.gz")).unwrap();
    let blob: Vec<u8> = (0..60u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(specs.join("blob"), &blob).unwrap();
    let base =
        "name \"f\"\nbase \"tar\" \"busybox.tar.gz\"\nlayer \"small\" { run \"echo hi > /hi\" }\n";
    let cases = [
        // A step that writes too much.
        (
            "run.kdl",
            "layer \"big\" {\n  run \"dd if=/dev/zero of=/big bs=1M count=100\"\n}\n",
            "run.kdl:5:3",
            "big",
        ),
        // A copy larger than the disk.
        (
            "copy.kdl",
            "layer \"copied\" {\n  copy \"blob\" \"/blob\"\n}\n",
            "copy.kdl:5:3",
            "copied",
        ),
        // A step that succeeds on a disk it leaves full: sealing the layer fails.
        (
            "fill.kdl",
            "layer \"fill\" {\n  run \"dd if=/dev/zero of=/fill bs=1M count=100 2>/dev/null; sync; dd if=/dev/zero of=/fill2 bs=4k 2>/dev/null; sync; true\"\n}\n",
            "fill.kdl:5:3",
            "fill",
        ),
    ];
    for (file, layer, at, name) in cases {
        let spec = specs.join(file);
        std::fs::write(&spec, format!("{base}{layer}")).unwrap();
        let r = envc(&store, &["apply", spec.to_str().unwrap()]);
        // The last case leaves the disk full after its step: sealing may still fit in blocks
        // freed meanwhile (earlier failed builds are deleted in the background), then making
        // the working root, or nothing, fails. Whatever fails names what it was doing.
        if file == "fill.kdl" && r.code == 0 {
            continue;
        }
        assert_ne!(r.code, 0, "{file}: {}", r.stderr);
        // Long messages are wrapped (and framed) by the report; the words are what counts.
        let words = r
            .stderr
            .replace('│', " ")
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        let named = (words.contains(&format!("layer `{name}`")) && r.stderr.contains(at))
            || (file == "fill.kdl" && r.stderr.contains("roots/f/"));
        assert!(
            named,
            "{file}: the error names the layer and its place in the spec:\n{}",
            r.stderr
        );
        assert!(
            words.contains("No space left on device"),
            "{file}: the error says why:\n{}",
            r.stderr
        );
        // Nothing is sealed under the failed layer's name, or it has its record.
        let ls = envc(&store, &["ls", "--json"]);
        assert_eq!(ls.code, 0, "{file}: {}", ls.stderr);
        let listed: serde_json::Value = serde_json::from_str(&ls.stdout).unwrap();
        for l in listed["layers"].as_array().unwrap() {
            assert_ne!(l["name"], "?", "{file}: a layer without its record: {l}");
        }
    }
    // The store still works: once space is freed, a smaller spec applies.
    // The root exists only if the last case got as far as making it.
    let rm = envc(&store, &["rm", "f"]);
    assert!(
        rm.code == 0 || rm.stderr.contains("no working root named `f`"),
        "{}",
        rm.stderr
    );
    let gc = envc(&store, &["gc", "--keep-bytes", "0"]);
    assert_eq!(gc.code, 0, "{}", gc.stderr);
    let ok = specs.join("ok.kdl");
    std::fs::write(
        &ok,
        format!("{base}layer \"fine\" {{ run \"echo ok > /ok\" }}\n"),
    )
    .unwrap();
    let r = envc(&store, &["apply", ok.to_str().unwrap()]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    // What failed builds left in staging (a log that could not be moved to a full disk) is
    // gone after the next apply.
    let staging: Vec<_> = std::fs::read_dir(store.join("staging")).unwrap().collect();
    assert!(staging.is_empty(), "nothing stays staged: {staging:?}");
    let root = std::path::PathBuf::from(r.stdout.trim());
    assert_eq!(std::fs::read_to_string(root.join("ok")).unwrap(), "ok\n");
    common::unmount_below(&fs.mountpoint.join("store"));
}
