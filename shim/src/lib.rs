//! `libenvc-nosync.so`, an `LD_PRELOAD` library that makes the sync family of calls no-ops while
//! packages are installed into a build root, like libeatmydata or mock's nosync.
//!
//! What it does (see `src/nosync.c`):
//!
//! - `fsync`, `fdatasync`, `syncfs` and `sync_file_range` return 0 without reaching the kernel's
//!   sync path, but still fail with `EBADF` for a descriptor that is not open; `sync` does nothing
//!   and `msync` returns 0.
//! - `open`, `open64`, `openat`, `openat64` and their `_FORTIFY_SOURCE` entry points (`__open_2`,
//!   ...) drop `O_SYNC` and `O_DSYNC` and open with the `openat` system call.
//! - The only libc symbol it imports is `syscall`, with glibc's oldest symbol version on each
//!   architecture (`GLIBC_2.2.5` on x86_64, `GLIBC_2.0` on i386, `GLIBC_2.17` on aarch64,
//!   `GLIBC_2.4` on armhf), so it loads into a root with any glibc, old or new: it never calls
//!   `dlsym`, whose new symbol version in glibc 2.34 broke mock's nosync in older roots.
//!
//! Two builds are embedded: one for the target architecture's own processes, and, where the
//! architecture has a 32-bit companion (i386 beside x86_64, armhf beside aarch64) and a compiler
//! for it was installed when envc-shim was built, one for 32-bit processes. [`install`] lays them
//! out so that [`preload`]'s value, which uses ld.so's `$LIB` token, picks the right one for every
//! process in the root. What differs between architectures is in one table, [`arch`].

#![forbid(unsafe_code)]

pub mod arch;

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// The library's file name.
pub const LIB_NAME: &str = "libenvc-nosync.so";

static LIB64: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/native/libenvc-nosync.so"));

#[cfg(not(envc_shim_no_lib32))]
static LIB32: Option<&[u8]> = Some(include_bytes!(concat!(
    env!("OUT_DIR"),
    "/compat/libenvc-nosync.so"
)));
#[cfg(envc_shim_no_lib32)]
static LIB32: Option<&[u8]> = None;

/// The table entry of the architecture this crate was built for.
pub fn target_arch() -> &'static arch::Arch {
    arch::find(std::env::consts::ARCH).expect("build.rs refuses architectures arch.rs lacks")
}

/// The build for the target architecture's own (64-bit) processes.
pub fn lib64() -> &'static [u8] {
    LIB64
}

/// The build for 32-bit processes ([`arch::Arch::compat`]), when the build machine could make one.
pub fn lib32() -> Option<&'static [u8]> {
    LIB32
}

/// Writes the builds into `dir` laid out so that `LD_PRELOAD=<dir>/$LIB/libenvc-nosync.so`
/// resolves, for native and 32-bit processes alike, whatever glibc's `$LIB` expands to: every
/// directory of [`arch::Build::lib_dirs`] (on x86_64: lib/x86_64-linux-gnu and lib64, then
/// lib/i386-linux-gnu, lib and lib32). Idempotent; files mode 0644; creates directories as needed.
///
/// `dir` should be a directory of its own (not a root's `/`, whose `lib64` and `lib` hold the
/// system's libraries).
///
/// A file that already has the right contents is left alone (only its mode is fixed), and a
/// changed one is replaced by renaming a new file over it, never rewritten in place, so processes
/// that have the old library mapped are unaffected. Without a 32-bit build only the native
/// directories are written.
pub fn install(dir: &Path) -> io::Result<()> {
    let arch = target_arch();
    for sub in arch.native.lib_dirs {
        install_file(&dir.join(sub), LIB64)?;
    }
    if let (Some(lib), Some(compat)) = (LIB32, &arch.compat) {
        for sub in compat.lib_dirs {
            install_file(&dir.join(sub), lib)?;
        }
    }
    Ok(())
}

/// The LD_PRELOAD value for a library installed with `install(dir)`, e.g. "/dir/$LIB/libenvc-nosync.so".
///
/// `$LIB` is literal: ld.so expands it per process. `dir` should be absolute and must not contain
/// spaces or colons, which separate LD_PRELOAD entries.
pub fn preload(dir: &Path) -> String {
    let dir = dir.to_string_lossy();
    let dir = dir.trim_end_matches('/');
    format!("{dir}/$LIB/{LIB_NAME}")
}

const MODE: u32 = 0o644;

fn install_file(dir: &Path, contents: &[u8]) -> io::Result<()> {
    let target = dir.join(LIB_NAME);
    if let Ok(existing) = fs::read(&target)
        && existing == contents
    {
        if fs::metadata(&target)?.permissions().mode() & 0o7777 != MODE {
            fs::set_permissions(&target, fs::Permissions::from_mode(MODE))?;
        }
        return Ok(());
    }
    fs::create_dir_all(dir).map_err(|e| with_path(e, dir))?;
    let tmp = temp_name(dir);
    let written = (|| {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(MODE)
            .open(&tmp)?;
        file.write_all(contents)?;
        // The umask may have cleared bits of the creation mode.
        file.set_permissions(fs::Permissions::from_mode(MODE))?;
        drop(file);
        fs::rename(&tmp, &target)
    })();
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written.map_err(|e| with_path(e, &target))
}

/// A name in `dir` no other concurrent `install` (thread or process) uses.
fn temp_name(dir: &Path) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    dir.join(format!(".{LIB_NAME}.{}.{n}.tmp", std::process::id()))
}

fn with_path(err: io::Error, path: &Path) -> io::Error {
    io::Error::new(err.kind(), format!("{}: {err}", path.display()))
}
