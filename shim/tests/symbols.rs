//! The builds' dynamic symbol tables (`objdump -T`, `objdump -p`): they need nothing from glibc
//! newer than the architecture's `max_glibc` (GLIBC_2.3 on x86), bind `syscall` to glibc's oldest
//! version there (GLIBC_2.2.5 on x86_64, GLIBC_2.17 on aarch64), and import only `syscall` (and
//! `__errno_location`) besides the weak symbols the toolchain's start files reference; they export
//! exactly the wrapped calls.

mod common;

use common::*;
use envc_shim::arch::parse_glibc_version;
use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

/// Undefined symbols a build may have.
const ALLOWED_IMPORTS: &[&str] = &[
    "syscall",
    "__errno_location",
    // Weak references from crtbeginS.o and friends.
    "__cxa_finalize",
    "_ITM_registerTMCloneTable",
    "_ITM_deregisterTMCloneTable",
    "__gmon_start__",
    "_Jv_RegisterClasses",
];

/// What the library must define.
const EXPORTS: &[&str] = &[
    "fsync",
    "fdatasync",
    "syncfs",
    "sync_file_range",
    "sync",
    "msync",
    "open",
    "open64",
    "openat",
    "openat64",
    "__open_2",
    "__open64_2",
    "__openat_2",
    "__openat64_2",
];

fn version(v: &str) -> (u32, u32, u32) {
    parse_glibc_version(v).unwrap_or_else(|| panic!("bad glibc version {v}"))
}

/// Every `GLIBC_x.y[.z]` in `text`.
fn glibc_versions(text: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("GLIBC_") {
        let tail = &rest[i + "GLIBC_".len()..];
        let end = tail
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(tail.len());
        let v = tail[..end].trim_end_matches('.');
        if !v.is_empty() && v.starts_with(|c: char| c.is_ascii_digit()) {
            found.insert(v.to_string());
        }
        rest = tail;
    }
    found
}

fn objdump(args: &[&str], file: &Path) -> String {
    let out = Command::new("objdump")
        .args(args)
        .arg(file)
        .env("LC_ALL", "C")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "objdump {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn check_build(build: &Build, bytes: &[u8]) {
    let name = build.name;
    if let Err(what) = build.check_elf(bytes) {
        panic!("{name}: the build is {what}");
    }
    assert_eq!(
        u16::from_le_bytes([bytes[16], bytes[17]]),
        3,
        "{name}: not ET_DYN"
    );

    let scratch = TempDir::new(name);
    let file = write_lib(scratch.path(), bytes);
    let dynsyms = objdump(&["-T"], &file);
    let private = objdump(&["-p"], &file);
    println!("{name}: objdump -T\n{dynsyms}");

    let versions = glibc_versions(&dynsyms)
        .union(&glibc_versions(&private))
        .cloned()
        .collect::<BTreeSet<_>>();
    println!("{name}: GLIBC versions needed: {versions:?}");
    assert!(
        !dynsyms.contains("GLIBC_PRIVATE"),
        "{name} needs GLIBC_PRIVATE:\n{dynsyms}"
    );
    assert!(
        !versions.is_empty(),
        "{name}: no versioned glibc symbol at all?\n{dynsyms}"
    );
    for v in &versions {
        assert!(
            version(v) <= version(build.max_glibc),
            "{name} needs GLIBC_{v}:\n{dynsyms}"
        );
    }
    // `syscall` with glibc's oldest version on this architecture, as objdump shows it:
    // "... *UND* ... (GLIBC_2.2.5) syscall" (or without the parentheses).
    let syscall = dynsyms
        .lines()
        .find(|l| l.contains("*UND*") && l.split_whitespace().last() == Some("syscall"))
        .unwrap_or_else(|| panic!("{name} does not import syscall:\n{dynsyms}"));
    let want = format!("GLIBC_{}", build.syscall_version);
    assert!(
        syscall
            .split_whitespace()
            .any(|f| f.trim_matches(|c| c == '(' || c == ')') == want),
        "{name}: syscall is not bound to {want}: {syscall}"
    );

    let mut imports = BTreeSet::new();
    let mut exports = BTreeSet::new();
    for line in dynsyms.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() < 4 || !fields[0].chars().all(|c| c.is_ascii_hexdigit()) {
            continue;
        }
        let symbol = fields.last().unwrap().to_string();
        if line.contains("*UND*") {
            imports.insert(symbol);
        } else if line.contains(".text") {
            exports.insert(symbol);
        }
    }
    for symbol in &imports {
        assert!(
            ALLOWED_IMPORTS.contains(&symbol.as_str()),
            "{name} imports {symbol}, which is not allowed:\n{dynsyms}"
        );
    }
    assert!(imports.contains("syscall"), "{name}: {imports:?}");
    let want: BTreeSet<String> = EXPORTS.iter().map(|s| s.to_string()).collect();
    assert_eq!(exports, want, "{name}: exported functions");

    let needed: Vec<&str> = private
        .lines()
        .filter_map(|l| l.trim().strip_prefix("NEEDED"))
        .map(str::trim)
        .collect();
    assert_eq!(needed, ["libc.so.6"], "{name}: DT_NEEDED");
    assert!(
        private.contains("SONAME") && private.contains(envc_shim::LIB_NAME),
        "{name}: SONAME"
    );
    // Both hash tables, so that old and new dynamic loaders alike can look symbols up.
    let headers = objdump(&["-h"], &file);
    assert!(
        headers.contains(" .hash "),
        "{name}: no .hash (DT_HASH) section"
    );
    assert!(
        headers.contains(" .gnu.hash "),
        "{name}: no .gnu.hash section"
    );
}

#[test]
fn lib64_needs_only_old_glibc_symbols() {
    let Some(()) = need(
        have_tool("objdump"),
        "lib64_needs_only_old_glibc_symbols",
        "objdump (binutils)",
    ) else {
        return;
    };
    check_build(&envc_shim::target_arch().native, envc_shim::lib64());
}

#[test]
fn lib32_needs_only_old_glibc_symbols() {
    let test = "lib32_needs_only_old_glibc_symbols";
    let Some(()) = need(have_tool("objdump"), test, "objdump (binutils)") else {
        return;
    };
    let Some(()) = need_lib32(test) else {
        return;
    };
    let compat = envc_shim::target_arch().compat.as_ref().unwrap();
    check_build(compat, envc_shim::lib32().unwrap());
}

#[test]
fn version_parsing() {
    assert_eq!(
        glibc_versions("(GLIBC_2.2.5) syscall\n GLIBC_2.0 x GLIBC_PRIVATE y GLIBC_2.34"),
        ["2.0", "2.2.5", "2.34"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    );
    assert!(version("2.2.5") <= version("2.3"));
    assert!(version("2.3") <= version("2.3"));
    assert!(version("2.3.4") > version("2.3"));
    assert!(version("2.34") > version("2.3"));
    assert!(version("2.17") > version("2.4"));
    assert_eq!(parse_glibc_version("2.x"), None);
    assert_eq!(parse_glibc_version(""), None);
    assert_eq!(parse_glibc_version("2.1.2.3"), None);
    // Every table entry's versions parse, and syscall's is within what a build may need.
    for arch in envc_shim::arch::ARCHES {
        for build in std::iter::once(&arch.native).chain(&arch.compat) {
            assert!(
                version(build.syscall_version) <= version(build.max_glibc),
                "{}",
                build.name
            );
        }
    }
}
