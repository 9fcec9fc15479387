//! Host-side work on a root being built, with every path resolved inside that root: its symlinks
//! never lead to the host's files.
#![forbid(unsafe_code)]

use std::ffi::OsStr;
use std::fs;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{Mode, SFlag, fstatat};

pub(super) use crate::sandbox::open_in_root;

/// Opens a directory (a root, a cache) to resolve paths from.
pub(super) fn open_dir(dir: &Path) -> Option<OwnedFd> {
    nix::fcntl::open(
        dir,
        OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .ok()
}

/// The names in the directory open at `dir` (listed through its descriptor, never a path).
pub(super) fn entries(dir: &OwnedFd) -> Vec<Vec<u8>> {
    fs::read_dir(format!("/proc/self/fd/{}", dir.as_raw_fd()))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().as_bytes().to_vec())
        .collect()
}

/// Whether `name` in `dir` is a regular file (not following a symlink).
pub(super) fn is_file_at(dir: &OwnedFd, name: &OsStr) -> bool {
    fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW)
        .is_ok_and(|st| SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFREG)
}

/// Writes a new file at `rel` inside the root open at `root` (its directory must exist), never
/// through a symlink; whatever was there is replaced.
pub(super) fn write_new(root: &OwnedFd, rel: &str, content: &[u8]) -> Result<(), String> {
    let (dir, name) = rel.rsplit_once('/').unwrap_or(("", rel));
    let fail = |e: &dyn std::fmt::Display| format!("cannot write /{rel}: {e}");
    let dir =
        open_in_root(root, dir, OFlag::O_DIRECTORY | OFlag::O_RDONLY).map_err(|e| fail(&e))?;
    match nix::unistd::unlinkat(&dir, name, nix::unistd::UnlinkatFlags::NoRemoveDir) {
        Ok(()) | Err(nix::errno::Errno::ENOENT) => {}
        Err(e) => return Err(fail(&e)),
    }
    let fd = nix::fcntl::openat(
        &dir,
        name,
        OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_WRONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(0o644),
    )
    .map_err(|e| fail(&e))?;
    std::io::Write::write_all(&mut fs::File::from(fd), content).map_err(|e| fail(&e))
}
