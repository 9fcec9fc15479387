//! Compiles `src/nosync.c` into `$OUT_DIR/x86_64/libenvc-nosync.so` and, when the C compiler can
//! target i386 (`-m32`, i.e. gcc-multilib is installed), `$OUT_DIR/i386/libenvc-nosync.so`.
//! Without a 32-bit build it warns and sets `cfg(envc_shim_no_lib32)`.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

const SOURCE: &str = "src/nosync.c";
const LIB_NAME: &str = "libenvc-nosync.so";

/// Flags for both builds. No stack protector and no fortification: either would make the library
/// import `__stack_chk_fail` or `__*_chk` symbols with recent symbol versions, and the library
/// must load into roots with any glibc since 2.3. `--hash-style=both` keeps the SysV hash table
/// that very old dynamic loaders need; `-z now` binds `syscall` at load time; `-s` drops the
/// static symbol table (which would name the build path) so the output is reproducible.
const CFLAGS: &[&str] = &[
    "-std=gnu99",
    "-O2",
    "-fPIC",
    "-shared",
    "-fvisibility=hidden",
    "-fno-stack-protector",
    "-fno-stack-clash-protection",
    "-U_FORTIFY_SOURCE",
    "-D_FORTIFY_SOURCE=0",
    "-fno-builtin",
    "-Wall",
    "-Wextra",
    "-Werror",
    "-s",
    "-Wl,-soname,libenvc-nosync.so",
    "-Wl,--hash-style=both",
    "-Wl,-z,now",
    "-Wl,-z,relro",
    "-Wl,-z,noexecstack",
    "-Wl,-z,defs",
    "-Wl,--as-needed",
    "-Wl,--build-id=sha1",
];

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-changed={SOURCE}");
    println!("cargo::rerun-if-env-changed=ENVC_SHIM_CC");
    println!("cargo::rustc-check-cfg=cfg(envc_shim_no_lib32)");

    let arch = env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    let os = env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    if arch != "x86_64" || os != "linux" {
        panic!(
            "envc-shim builds an LD_PRELOAD library for x86_64 Linux only (target: {arch}-{os})"
        );
    }

    let out = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR is set by cargo"));
    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let source = manifest.join(SOURCE);
    let cc = compiler();

    let lib64 = out.join("x86_64").join(LIB_NAME);
    if let Err(err) = compile(&cc, "-m64", &source, &lib64) {
        panic!("envc-shim: cannot build the 64-bit {LIB_NAME} with `{cc}`:\n{err}");
    }

    let lib32 = out.join("i386").join(LIB_NAME);
    if let Err(err) = compile(&cc, "-m32", &source, &lib32) {
        let _ = std::fs::remove_file(&lib32);
        let first = err
            .lines()
            .find(|l| l.contains("error") || l.contains("cannot find"))
            .or_else(|| err.lines().find(|l| !l.trim().is_empty()))
            .unwrap_or("")
            .trim();
        println!(
            "cargo::warning=envc-shim: `{cc} -m32` cannot build the 32-bit {LIB_NAME} \
             (install gcc-multilib); 32-bit programs in build roots will not be covered \
             and ld.so will report that the library cannot be preloaded into them: {first}"
        );
        println!("cargo::rustc-cfg=envc_shim_no_lib32");
        // Build again once the 32-bit toolchain appears: gcc-multilib adds a `32` directory
        // next to libgcc.
        if let Some(dir) = libgcc_dir(&cc) {
            println!("cargo::rerun-if-changed={}", dir.display());
        }
    }
}

/// The C compiler: `$ENVC_SHIM_CC`, else `gcc`, else `cc`, from PATH.
fn compiler() -> String {
    if let Some(cc) = env::var("ENVC_SHIM_CC").ok().filter(|s| !s.is_empty()) {
        return cc;
    }
    for cc in ["gcc", "cc"] {
        if Command::new(cc)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
        {
            return cc.to_string();
        }
    }
    panic!("envc-shim: no C compiler found (tried gcc and cc on PATH); install gcc");
}

/// Compiles `source` into the shared library `output`; on failure, the compiler's output.
fn compile(cc: &str, machine: &str, source: &Path, output: &Path) -> Result<(), String> {
    std::fs::create_dir_all(output.parent().unwrap()).map_err(|e| e.to_string())?;
    let result = Command::new(cc)
        .arg(machine)
        .args(CFLAGS)
        .arg("-o")
        .arg(output)
        .arg(source)
        // Locale-independent messages, and no environment-provided flags sneaking in.
        .env("LC_ALL", "C")
        .env_remove("CFLAGS")
        .env_remove("LDFLAGS")
        .env_remove("CPATH")
        .env_remove("LIBRARY_PATH")
        .output()
        .map_err(|e| format!("cannot run {cc}: {e}"))?;
    if result.status.success() && output.is_file() {
        Ok(())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&result.stdout),
            String::from_utf8_lossy(&result.stderr)
        ))
    }
}

/// The directory of the compiler's (64-bit) libgcc, e.g. /usr/lib/gcc/x86_64-linux-gnu/12.
fn libgcc_dir(cc: &str) -> Option<PathBuf> {
    let out = Command::new(cc)
        .arg("-print-libgcc-file-name")
        .output()
        .ok()?;
    let path = PathBuf::from(String::from_utf8(out.stdout).ok()?.trim());
    let dir = path.parent()?.to_path_buf();
    dir.is_dir().then_some(dir)
}
