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
//! - The only libc symbol it imports is `syscall` (`GLIBC_2.2.5` on x86_64, `GLIBC_2.0` on i386),
//!   so it loads into a root with any glibc, old or new: it never calls `dlsym`, whose new symbol
//!   version in glibc 2.34 broke mock's nosync in older roots.
//!
//! Both a 64-bit and a 32-bit build are embedded (the 32-bit one when the build machine's C
//! compiler supports `-m32`). [`install`] lays them out so that [`preload`]'s value, which uses
//! ld.so's `$LIB` token, picks the right one for every process in the root.

#![forbid(unsafe_code)]

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// The library's file name.
pub const LIB_NAME: &str = "libenvc-nosync.so";

static LIB64: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/x86_64/libenvc-nosync.so"));

#[cfg(not(envc_shim_no_lib32))]
static LIB32: Option<&[u8]> = Some(include_bytes!(concat!(
    env!("OUT_DIR"),
    "/i386/libenvc-nosync.so"
)));
#[cfg(envc_shim_no_lib32)]
static LIB32: Option<&[u8]> = None;

/// What ld.so's `$LIB` expands to for 64-bit (x86_64) processes, by distribution family:
/// Debian/Ubuntu multiarch, Fedora/RHEL/SUSE.
const LIB64_DIRS: &[&str] = &["lib/x86_64-linux-gnu", "lib64"];

/// What ld.so's `$LIB` expands to for 32-bit (i386) processes: Debian/Ubuntu multiarch,
/// Fedora/RHEL (`lib`), and Debian/Ubuntu's biarch `libc6-i386` (`lib32`).
const LIB32_DIRS: &[&str] = &["lib/i386-linux-gnu", "lib", "lib32"];

/// The 64-bit build.
pub fn lib64() -> &'static [u8] {
    LIB64
}

/// The 32-bit build, when the build machine could make one.
pub fn lib32() -> Option<&'static [u8]> {
    LIB32
}

/// Writes the builds into `dir` laid out so that `LD_PRELOAD=<dir>/$LIB/libenvc-nosync.so`
/// resolves, for both 64- and 32-bit processes, whatever glibc's `$LIB` expands to on x86:
/// Debian multiarch (lib/x86_64-linux-gnu, lib/i386-linux-gnu), Fedora/RHEL (lib64, lib), and lib32.
/// Idempotent; files mode 0644; creates directories as needed.
///
/// `dir` should be a directory of its own (not a root's `/`, whose `lib64` and `lib` hold the
/// system's libraries).
///
/// A file that already has the right contents is left alone (only its mode is fixed), and a
/// changed one is replaced by renaming a new file over it, never rewritten in place, so processes
/// that have the old library mapped are unaffected. Without a 32-bit build only the 64-bit
/// directories are written.
pub fn install(dir: &Path) -> io::Result<()> {
    for sub in LIB64_DIRS {
        install_file(&dir.join(sub), LIB64)?;
    }
    if let Some(lib) = LIB32 {
        for sub in LIB32_DIRS {
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
