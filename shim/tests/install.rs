//! `install()` lays the builds out for every `$LIB` expansion of the target architecture (and of
//! its 32-bit companion), idempotently, and `preload()` names them through the literal `$LIB`
//! token.

mod common;

use common::*;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use envc_shim::{LIB_NAME, install, lib32, lib64, preload, target_arch};

/// Where native processes look (on x86_64: Debian multiarch, Fedora/RHEL).
fn dirs64() -> &'static [&'static str] {
    target_arch().native.lib_dirs
}

/// Where 32-bit processes look (on x86_64: Debian multiarch, Fedora/RHEL, Debian/Ubuntu biarch).
fn dirs32() -> &'static [&'static str] {
    target_arch().compat.as_ref().map_or(&[], |c| c.lib_dirs)
}

fn expected() -> Vec<(&'static str, &'static [u8])> {
    let mut files: Vec<(&str, &[u8])> = dirs64().iter().map(|d| (*d, lib64())).collect();
    if let Some(lib) = lib32() {
        files.extend(dirs32().iter().map(|d| (*d, lib)));
    }
    files
}

fn check_layout(dir: &Path) {
    for (sub, bytes) in expected() {
        let file = dir.join(sub).join(LIB_NAME);
        let meta = fs::metadata(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        assert!(meta.is_file(), "{}", file.display());
        assert_eq!(
            meta.permissions().mode() & 0o7777,
            0o644,
            "{}",
            file.display()
        );
        assert!(
            fs::read(&file).unwrap() == bytes,
            "{}: wrong contents",
            file.display()
        );
    }
    if lib32().is_none() {
        for sub in dirs32() {
            assert!(
                !dir.join(sub).join(LIB_NAME).exists(),
                "no 32-bit build, yet {sub} has one"
            );
        }
    }
    // No temporary files left behind.
    for (sub, _) in expected() {
        for entry in fs::read_dir(dir.join(sub)).unwrap() {
            let entry = entry.unwrap();
            if entry.file_type().unwrap().is_file() {
                assert_eq!(
                    entry.file_name().to_str(),
                    Some(LIB_NAME),
                    "stray file in {sub}"
                );
            }
        }
    }
}

#[test]
fn builds_are_elf_of_the_right_class() {
    let arch = target_arch();
    assert_eq!(arch.rust, std::env::consts::ARCH);
    arch.native.check_elf(lib64()).unwrap();
    assert_eq!(lib64()[4], 2, "the native build is ELFCLASS64");
    if let Some(lib) = lib32() {
        let compat = arch
            .compat
            .as_ref()
            .expect("a 32-bit build has a table entry");
        compat.check_elf(lib).unwrap();
        assert_eq!(lib[4], 1, "the 32-bit build is ELFCLASS32");
    } else {
        let _ = need(
            false,
            "builds_are_elf_of_the_right_class (32-bit part)",
            "the 32-bit build",
        );
    }
}

#[test]
fn install_creates_the_layout() {
    let scratch = TempDir::new("install");
    let dir = scratch.path().join("a/new/dir");
    install(&dir).unwrap();
    check_layout(&dir);
}

#[test]
fn install_is_idempotent_and_repairs() {
    let scratch = TempDir::new("idempotent");
    let dir = scratch.path();
    install(dir).unwrap();
    let first = dir.join(dirs64()[0]).join(LIB_NAME);
    let ino = fs::metadata(&first).unwrap().ino();

    // Again: nothing to do, the same files stay (a mapped library is never rewritten).
    install(dir).unwrap();
    check_layout(dir);
    assert_eq!(
        fs::metadata(&first).unwrap().ino(),
        ino,
        "an up-to-date file was replaced"
    );

    // A wrong mode is fixed in place; changed contents are replaced by a new file, leaving the old
    // one intact for processes that have it open or mapped.
    fs::set_permissions(&first, fs::Permissions::from_mode(0o600)).unwrap();
    let second = dir.join(dirs64()[1]).join(LIB_NAME);
    fs::write(&second, b"not a library").unwrap();
    let old = fs::File::open(&second).unwrap();
    install(dir).unwrap();
    check_layout(dir);
    assert_eq!(fs::metadata(&first).unwrap().ino(), ino);
    assert_ne!(
        fs::metadata(&second).unwrap().ino(),
        old.metadata().unwrap().ino(),
        "rewritten in place"
    );
    assert_eq!(std::io::read_to_string(old).unwrap(), "not a library");

    // A missing file is recreated.
    for (sub, _) in expected() {
        fs::remove_file(dir.join(sub).join(LIB_NAME)).unwrap();
        install(dir).unwrap();
        check_layout(dir);
    }
}

#[test]
fn install_reports_errors() {
    let scratch = TempDir::new("errors");
    let blocker = scratch.path().join("file");
    fs::write(&blocker, b"").unwrap();
    let err = install(&blocker).unwrap_err();
    assert!(err.to_string().contains(blocker.to_str().unwrap()), "{err}");
}

#[test]
fn preload_names_the_library_through_lib() {
    let value = preload(Path::new("/var/lib/envc/shim"));
    assert_eq!(value, "/var/lib/envc/shim/$LIB/libenvc-nosync.so");
    assert!(value.contains("$LIB"));
    assert_eq!(preload(Path::new("/x/")), "/x/$LIB/libenvc-nosync.so");
    assert_eq!(LIB_NAME, "libenvc-nosync.so");

    // Every `$LIB` expansion install() covers names an installed file.
    let scratch = TempDir::new("preload");
    install(scratch.path()).unwrap();
    let value = preload(scratch.path());
    for (sub, _) in expected() {
        let path = value.replace("$LIB", sub);
        assert!(Path::new(&path).is_file(), "{path}");
    }
}
