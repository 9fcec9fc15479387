//! Compiles `src/nosync.c` into `$OUT_DIR/native/libenvc-nosync.so` for the target architecture
//! and, where the architecture has a 32-bit companion and a compiler for it is installed,
//! `$OUT_DIR/compat/libenvc-nosync.so`. Without the companion build it warns and sets
//! `cfg(envc_shim_no_lib32)`.
//!
//! What differs between architectures (flags, cross compilers, ELF machine, ...) is not written
//! here but in the table of `src/arch.rs`, which this script includes.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

#[allow(dead_code)]
#[path = "src/arch.rs"]
mod arch;

use arch::Build;

const SOURCE: &str = "src/nosync.c";
const LIB_NAME: &str = "libenvc-nosync.so";

/// Flags for both builds. No stack protector and no fortification: either would make the library
/// import `__stack_chk_fail` or `__*_chk` symbols with recent symbol versions, and the library
/// must load into roots with any glibc (on x86 any since 2.3: `max_glibc` in src/arch.rs). `--hash-style=both` keeps the SysV hash table
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
    println!("cargo::rerun-if-changed=src/arch.rs");
    println!("cargo::rerun-if-changed={SOURCE}");
    println!("cargo::rerun-if-env-changed=ENVC_SHIM_CC");
    println!("cargo::rustc-check-cfg=cfg(envc_shim_no_lib32)");

    let target_arch = env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    let os = env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let arch = match arch::find(&target_arch) {
        Some(a) if os == "linux" => a,
        _ => {
            let known: Vec<&str> = arch::ARCHES.iter().map(|a| a.rust).collect();
            panic!(
                "envc-shim builds an LD_PRELOAD library for Linux on {} only (target: \
                 {target_arch}-{os}); another architecture needs an entry in shim/src/arch.rs",
                known.join(", ")
            );
        }
    };

    let out = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR is set by cargo"));
    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let source = manifest.join(SOURCE);
    let target = env::var("TARGET").expect("TARGET is set by cargo");
    let cross = env::var("HOST").is_ok_and(|host| host != target);
    let cc = compiler(&target, cross, &arch.native);

    let native = out.join("native").join(LIB_NAME);
    if let Err(err) = compile(&cc, arch.native.cflags, &source, &native, &arch.native) {
        panic!(
            "envc-shim: cannot build the {} {LIB_NAME} with `{cc}`:\n{err}\n\
             (ENVC_SHIM_CC or CC_{} choose the C compiler; a cross compiler for this target is \
             `{}`, from {})",
            arch.native.name,
            target.replace('-', "_"),
            arch.native.cross_cc,
            arch.native.toolchain_package,
        );
    }

    let compat_out = out.join("compat").join(LIB_NAME);
    let _ = std::fs::remove_file(&compat_out);
    let Some(compat) = &arch.compat else {
        println!("cargo::rustc-cfg=envc_shim_no_lib32");
        return;
    };
    // The target's compiler with the companion's flags (gcc -m32 with gcc-multilib), else the
    // companion's cross compiler.
    let mut tried = Vec::new();
    let mut first_error = String::new();
    let mut candidates: Vec<(String, &[&str])> = Vec::new();
    if compat.target_cc {
        candidates.push((cc.clone(), compat.cflags));
    }
    if runs(compat.cross_cc) {
        candidates.push((compat.cross_cc.to_string(), &[]));
    }
    for (cc, flags) in &candidates {
        let shown: String = flags.iter().map(|f| format!(" {f}")).collect();
        tried.push(format!("`{cc}{shown}`"));
        match compile(cc, flags, &source, &compat_out, compat) {
            Ok(()) => return,
            Err(err) => {
                let _ = std::fs::remove_file(&compat_out);
                if first_error.is_empty() {
                    first_error = first_line(&err).to_string();
                }
            }
        }
    }
    let tried = if tried.is_empty() {
        format!("`{}` is not on PATH", compat.cross_cc)
    } else {
        format!("tried {}", tried.join(", "))
    };
    println!(
        "cargo::warning=envc-shim: cannot build the 32-bit ({}) {LIB_NAME} ({tried}; install \
         {}); 32-bit programs in build roots will not be covered and ld.so will report that the \
         library cannot be preloaded into them{}",
        compat.name,
        compat.toolchain_package,
        if first_error.is_empty() {
            String::new()
        } else {
            format!(": {first_error}")
        },
    );
    println!("cargo::rustc-cfg=envc_shim_no_lib32");
    // Build again once the 32-bit toolchain appears: gcc-multilib adds a `32` directory next to
    // libgcc.
    if compat.target_cc
        && let Some(dir) = libgcc_dir(&cc)
    {
        println!("cargo::rerun-if-changed={}", dir.display());
    }
}

/// The most telling line of a compiler's output.
fn first_line(err: &str) -> &str {
    err.lines()
        .find(|l| l.contains("error") || l.contains("cannot find"))
        .or_else(|| err.lines().find(|l| !l.trim().is_empty()))
        .unwrap_or("")
        .trim()
}

/// Whether `program --version` runs.
fn runs(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// The target's C compiler: `$ENVC_SHIM_CC`, else `$CC_<target>` (the cc crate's convention, e.g.
/// `CC_aarch64_unknown_linux_gnu`), else, when cross-compiling, the table's cross compiler for
/// the target, else `gcc`, else `cc`, from PATH.
fn compiler(target: &str, cross: bool, native: &Build) -> String {
    let per_target = [
        format!("CC_{target}"),
        format!("CC_{}", target.replace('-', "_")),
    ];
    for var in &per_target {
        println!("cargo::rerun-if-env-changed={var}");
    }
    let explicit = std::iter::once("ENVC_SHIM_CC".to_string()).chain(per_target);
    for var in explicit {
        if let Some(cc) = env::var(&var).ok().filter(|s| !s.is_empty()) {
            return cc;
        }
    }
    if cross {
        if runs(native.cross_cc) {
            return native.cross_cc.to_string();
        }
        panic!(
            "envc-shim: no C compiler for {target}: `{}` is not on PATH (install {}), and neither \
             ENVC_SHIM_CC nor CC_{} is set",
            native.cross_cc,
            native.toolchain_package,
            target.replace('-', "_")
        );
    }
    for cc in ["gcc", "cc"] {
        if runs(cc) {
            return cc.to_string();
        }
    }
    panic!("envc-shim: no C compiler found (tried gcc and cc on PATH); install gcc");
}

/// Compiles `source` with `cc` and `flags` into the shared library `output` and checks that it is
/// an ELF file for `build`'s machine; on failure, the compiler's output or what the file is.
fn compile(
    cc: &str,
    flags: &[&str],
    source: &Path,
    output: &Path,
    build: &Build,
) -> Result<(), String> {
    std::fs::create_dir_all(output.parent().unwrap()).map_err(|e| e.to_string())?;
    let result = Command::new(cc)
        .args(flags)
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
    if !(result.status.success() && output.is_file()) {
        return Err(format!(
            "{}{}",
            String::from_utf8_lossy(&result.stdout),
            String::from_utf8_lossy(&result.stderr)
        ));
    }
    // A compiler for another machine (the host's gcc when cross-compiling) succeeds too.
    let bytes =
        std::fs::read(output).map_err(|e| format!("cannot read {}: {e}", output.display()))?;
    build
        .check_elf(&bytes)
        .map_err(|what| format!("error: `{cc}` made {what}"))
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
