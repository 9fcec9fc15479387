//! The library preloaded into the C test program (tests/c/prog.c), native and 32-bit: the kernel
//! sees no sync calls, O_SYNC/O_DSYNC are dropped and nothing else changes, bad descriptors still
//! give EBADF, and `preload()`'s `$LIB` value resolves without ld.so errors.

mod common;

use common::*;
use std::path::{Path, PathBuf};

/// fsync calls per run of `prog sync`.
const N: u64 = 200;

/// The table entry of the native build.
fn native() -> &'static Build {
    &envc_shim::target_arch().native
}

/// Compiles the test program variants for `build`: plain, and with _FORTIFY_SOURCE (whose opens
/// with non-constant flags call __open_2 & co.) plus, on 32-bit, _FILE_OFFSET_BITS=64 (whose
/// opens call open64 & co.).
fn build_progs(scratch: &Path, build: &Build) -> Vec<PathBuf> {
    let (cc, machine) = prog_cc(build);
    let mut variants: Vec<(&str, Vec<&str>)> = vec![
        (
            "plain",
            vec!["-O2", "-U_FORTIFY_SOURCE", "-D_FORTIFY_SOURCE=0"],
        ),
        (
            "fortify",
            vec!["-O2", "-U_FORTIFY_SOURCE", "-D_FORTIFY_SOURCE=2"],
        ),
    ];
    if build.elf_class == 1 {
        variants.push((
            "fortify-lfs",
            vec![
                "-O2",
                "-U_FORTIFY_SOURCE",
                "-D_FORTIFY_SOURCE=2",
                "-D_FILE_OFFSET_BITS=64",
            ],
        ));
    }
    let mut progs = Vec::new();
    for (name, variant) in variants {
        let out = scratch.join(format!("prog-{}-{name}", build.name));
        let flags: Vec<&str> = machine.iter().copied().chain(variant).collect();
        compile_prog(cc, &out, &flags).unwrap_or_else(|e| panic!("{cc} {flags:?} failed:\n{e}"));
        if name.starts_with("fortify") {
            // Make sure the fortified variant really goes through the fortify entry points.
            let bytes = std::fs::read(&out).unwrap();
            for sym in ["__open_2", "__openat_2"] {
                let sym = if name == "fortify-lfs" {
                    sym.replace("_2", "64_2")
                } else {
                    sym.into()
                };
                let needle = format!("{sym}\0");
                assert!(
                    bytes.windows(needle.len()).any(|w| w == needle.as_bytes()),
                    "{} does not import {sym}",
                    out.display()
                );
            }
        }
        progs.push(out);
    }
    progs
}

/// `prog sync`: the kernel sees the sync calls without the library and (almost) none with it.
fn check_sync_suppressed(prog: &Path, preload: &str, scratch: &TempDir) {
    let n = N.to_string();
    let dir = scratch.subdir("sync-without");
    let without = strace_prog(
        prog,
        None,
        &["sync", dir.to_str().unwrap(), &n],
        scratch.path(),
    );
    check_sync_output(&without.output, N, true);
    assert!(
        without.get("fsync") >= N,
        "without the library: {:?}",
        without.calls
    );
    for name in SYNC_SYSCALLS {
        assert!(
            without.get(name) >= 1,
            "without the library, no {name}: {:?}",
            without.calls
        );
    }

    let dir = scratch.subdir("sync-with");
    let with = strace_prog(
        prog,
        Some(preload),
        &["sync", dir.to_str().unwrap(), &n],
        scratch.path(),
    );
    assert_eq!(preload_errors(&with.output.stderr), None);
    check_sync_output(&with.output, N, false);
    assert!(
        with.total() <= 2,
        "with the library the kernel saw {:?}",
        with.calls
    );
    println!(
        "{}: sync calls without the library {:?}, with it {:?}",
        prog.display(),
        without.calls,
        with.calls
    );
}

/// `prog ebadf`: bad and closed descriptors give -1/EBADF, valid ones 0, as without the library.
fn check_ebadf(prog: &Path, preload: &str, scratch: &TempDir) {
    let dir = scratch.subdir("ebadf-with");
    let out = run_ok(prog_command(
        prog,
        Some(preload),
        &["ebadf", dir.to_str().unwrap()],
    ));
    assert_eq!(preload_errors(&out.stderr), None);
    let with = parse_kv(&out.stdout);
    let ebadf = format!("-1/{}", 9); // EBADF
    for key in [
        "fsync_minus1",
        "fsync_12345",
        "fdatasync_minus1",
        "fdatasync_closed",
        "fsync_closed",
        "syncfs_closed",
        "sync_file_range_closed",
    ] {
        assert_eq!(with.get(key), Some(&ebadf), "{key}: {with:?}");
    }
    for key in [
        "fsync_valid",
        "fdatasync_valid",
        "syncfs_valid",
        "sync_file_range_valid",
    ] {
        assert_eq!(
            with.get(key).map(String::as_str),
            Some("0/0"),
            "{key}: {with:?}"
        );
    }
    assert_eq!(
        with.get("errno_kept").map(String::as_str),
        Some("0/4242"),
        "{with:?}"
    );

    let dir = scratch.subdir("ebadf-without");
    let out = run_ok(prog_command(prog, None, &["ebadf", dir.to_str().unwrap()]));
    assert_eq!(
        parse_kv(&out.stdout),
        with,
        "the library must answer as the real calls do"
    );
}

/// `prog open`: with the library every open gives the same result (flags, creation mode, errno)
/// as without it, except that O_SYNC and O_DSYNC are gone.
fn check_open(prog: &Path, preload: &str, scratch: &TempDir) {
    let dir = scratch.subdir("open-without");
    let out = run_ok(prog_command(prog, None, &["open", dir.to_str().unwrap()]));
    let without = parse_kv(&out.stdout);
    let dir = scratch.subdir("open-with");
    let out = run_ok(prog_command(
        prog,
        Some(preload),
        &["open", dir.to_str().unwrap()],
    ));
    assert_eq!(preload_errors(&out.stderr), None);
    let with = parse_kv(&out.stdout);

    assert_eq!(
        without.keys().collect::<Vec<_>>(),
        with.keys().collect::<Vec<_>>()
    );
    for (key, before) in &without {
        let after = &with[key];
        if key.ends_with(".sync") || key.ends_with(".dsync") {
            assert_eq!(after, "0", "{key} with the library (without: {before})");
        } else {
            assert_eq!(after, before, "{key} differs with the library");
        }
    }
    // The program did ask for synchronous writes, and the kernel honoured it without the library.
    for key in [
        "open",
        "open64",
        "openat",
        "openat64",
        "open_var",
        "open64_var",
        "openat_var",
    ] {
        assert_eq!(
            without[&format!("{key}.sync")],
            "1",
            "{key} without the library"
        );
    }
    for key in [
        "open_dsync",
        "openat_cwd",
        "open_var_dsync",
        "openat64_var",
        "creatat_0600",
    ] {
        assert_eq!(
            without[&format!("{key}.dsync")],
            "1",
            "{key} without the library"
        );
        assert_eq!(
            without[&format!("{key}.sync")],
            "0",
            "{key} without the library"
        );
    }
    // Modes reach the kernel (umask 022), errors keep their errno.
    for (key, mode) in [
        ("creat_0640", "640"),
        ("creat64_0604", "604"),
        ("creatat_0600", "600"),
        ("creatat64_0755", "755"),
        ("creat_umask", "644"),
    ] {
        assert_eq!(with[&format!("{key}.mode")], mode, "{key}");
    }
    if let Some(mode) = with.get("tmpfile_0600.mode") {
        assert_eq!(mode, "600", "O_TMPFILE mode");
    }
    assert_eq!(with["enoent"], "errno:2");
    assert_eq!(with["enoent_at"], "errno:2");
    assert_eq!(with["eexist"], "errno:17");
    assert_eq!(with["enotdir"], "errno:20");
    assert_eq!(with["ebadf_at"], "errno:9");
}

/// The library installed with `install()` into a fresh directory, and `preload()`'s value for it.
fn installed(scratch: &TempDir) -> String {
    let dir = scratch.subdir("shim");
    envc_shim::install(&dir).unwrap();
    envc_shim::preload(&dir)
}

fn need_tools(test: &str) -> Option<()> {
    need(have_tool("gcc"), test, "gcc")?;
    need(have_tool("strace"), test, "strace")
}

#[test]
fn sync_calls_are_suppressed_64() {
    let Some(()) = need_tools("sync_calls_are_suppressed_64") else {
        return;
    };
    let scratch = TempDir::new("sync64");
    let preload = installed(&scratch);
    for prog in build_progs(scratch.path(), native()) {
        check_sync_suppressed(&prog, &preload, &scratch);
    }
}

#[test]
fn bad_descriptors_give_ebadf_64() {
    let Some(()) = need(have_tool("gcc"), "bad_descriptors_give_ebadf_64", "gcc") else {
        return;
    };
    let scratch = TempDir::new("ebadf64");
    let preload = installed(&scratch);
    for prog in build_progs(scratch.path(), native()) {
        check_ebadf(&prog, &preload, &scratch);
    }
}

#[test]
fn open_drops_only_sync_flags_64() {
    let Some(()) = need(have_tool("gcc"), "open_drops_only_sync_flags_64", "gcc") else {
        return;
    };
    let scratch = TempDir::new("open64");
    let preload = installed(&scratch);
    for prog in build_progs(scratch.path(), native()) {
        check_open(&prog, &preload, &scratch);
    }
}

/// The library preloaded by its plain path too (not only through `$LIB`).
#[test]
fn direct_path_preload_64() {
    let Some(()) = need_tools("direct_path_preload_64") else {
        return;
    };
    let scratch = TempDir::new("direct64");
    let lib = write_lib(scratch.path(), envc_shim::lib64());
    let prog = build_progs(scratch.path(), native()).remove(0);
    check_sync_suppressed(&prog, lib.to_str().unwrap(), &scratch);
}

/// Which file ld.so loads for `preload`, per its LD_DEBUG=libs trace.
fn loaded_from(prog: &Path, preload: &str) -> Option<String> {
    let mut cmd = prog_command(prog, Some(preload), &["nothing"]);
    cmd.env("LD_DEBUG", "libs");
    let out = cmd.output().unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    text.lines()
        .filter_map(|l| {
            l.split_once("calling init: ")
                .map(|(_, p)| p.trim().to_string())
        })
        .find(|p| p.ends_with(envc_shim::LIB_NAME))
}

/// 64-bit system programs with `LD_PRELOAD=preload(dir)`: no ld.so errors, library loaded.
#[test]
fn preload_value_resolves_for_64_bit_programs() {
    let scratch = TempDir::new("resolve64");
    let preload = installed(&scratch);
    assert!(preload.contains("$LIB"), "{preload}");
    for program in ["/bin/true", "/usr/bin/env"] {
        if !Path::new(program).exists() {
            continue;
        }
        let out = prog_command(Path::new(program), Some(&preload), &[])
            .output()
            .unwrap();
        assert_eq!(preload_errors(&out.stderr), None, "{program}");
        assert!(out.status.success(), "{program}: {out:?}");
    }
    let loaded = loaded_from(Path::new("/bin/true"), &preload)
        .expect("ld.so did not load the library into /bin/true");
    println!("64-bit: LD_PRELOAD={preload} loads {loaded}");
    assert!(
        loaded.starts_with(scratch.path().to_str().unwrap()),
        "{loaded}"
    );
}

/// 32-bit programs (i386 beside x86_64, armhf beside aarch64): built with `gcc -m32` or the
/// cross compiler, preloaded through `$LIB` from `install()`: no ld.so errors, sync calls
/// suppressed, EBADF kept, only the sync flags dropped. A native program with the same
/// LD_PRELOAD value loads its own build without errors.
#[test]
fn thirty_two_bit_programs() {
    let test = "thirty_two_bit_programs";
    let Some(()) = need_tools(test) else { return };
    let Some(()) = need_lib32(test) else {
        return;
    };
    let compat = envc_shim::target_arch()
        .compat
        .as_ref()
        .expect("a 32-bit build has a table entry");
    let scratch = TempDir::new("compat");
    let (cc, flags) = prog_cc(compat);
    let Some(()) = need(
        can_build_and_run(compat, scratch.path()),
        test,
        &format!(
            "`{cc} {}` building and running {} programs ({})",
            flags.join(" "),
            compat.name,
            compat.toolchain_package
        ),
    ) else {
        return;
    };
    let preload = installed(&scratch);
    let progs = build_progs(scratch.path(), compat);
    for prog in &progs {
        let bytes = std::fs::read(prog).unwrap();
        if let Err(what) = compat.check_elf(&bytes) {
            panic!("{} is {what}", prog.display());
        }
        let dir = scratch.subdir("plain-run");
        let out = prog_command(prog, Some(&preload), &["ebadf", dir.to_str().unwrap()])
            .output()
            .unwrap();
        assert_eq!(preload_errors(&out.stderr), None, "{}", prog.display());
        assert!(out.status.success(), "{out:?}");
        check_sync_suppressed(prog, &preload, &scratch);
        check_ebadf(prog, &preload, &scratch);
        check_open(prog, &preload, &scratch);
    }
    let loaded = loaded_from(&progs[0], &preload).expect("ld.so did not load the 32-bit library");
    println!("32-bit: LD_PRELOAD={preload} loads {loaded}");

    let prog64 = build_progs(scratch.path(), native()).remove(0);
    let dir = scratch.subdir("run64");
    let out = run_ok(prog_command(
        &prog64,
        Some(&preload),
        &["ebadf", dir.to_str().unwrap()],
    ));
    assert_eq!(preload_errors(&out.stderr), None);
    check_sync_suppressed(&prog64, &preload, &scratch);
}
