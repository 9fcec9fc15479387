//! What a locked build does to a root after its base build and after each `packages` step, so that
//! the same lock gives the same bytes on any machine, any day: the files Debian's tools leave with
//! the time, host or run in them are removed or emptied, and every mtime later than the lock's
//! `source-date-epoch` is set to it. Every path is resolved inside the root; symlinks are never
//! followed; nothing on another filesystem (a mount below the root) is touched.
#![forbid(unsafe_code)]

use std::ffi::OsStr;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{SFlag, UtimensatFlags, fstat, fstatat, utimensat};
use nix::sys::time::TimeSpec;
use nix::unistd::UnlinkatFlags;

use super::inroot::{entries, open_dir, open_in_root};

/// Files removed from a locked root: logs (with times and the build's own output), caches that
/// record when they were made, and the `-old` backups dpkg and debconf write at each run.
pub const REMOVED: &[&str] = &[
    "var/log/dpkg.log",
    "var/log/alternatives.log",
    "var/log/bootstrap.log",
    "var/log/apt/history.log",
    "var/log/apt/term.log",
    "var/log/apt/eipp.log.xz",
    "var/cache/ldconfig/aux-cache",
    "var/lib/dpkg/status-old",
    "var/lib/dpkg/diversions-old",
    "var/lib/dpkg/statoverride-old",
    "var/cache/debconf/config.dat-old",
    "var/cache/debconf/templates.dat-old",
    "var/cache/debconf/passwords.dat-old",
    "var/lib/dbus/machine-id",
];

/// Files emptied (kept, as systemd expects `/etc/machine-id` to exist when it is there).
pub const EMPTIED: &[&str] = &["etc/machine-id"];

/// A failure to normalize a root: the operation and the path in the root.
#[derive(Debug, thiserror::Error)]
#[error("cannot {op} {} in the root being built: {source}", path.display())]
pub struct NormalizeError {
    op: &'static str,
    path: PathBuf,
    #[source]
    source: nix::Error,
}

fn err(op: &'static str, path: &Path, source: nix::Error) -> NormalizeError {
    NormalizeError {
        op,
        path: path.to_owned(),
        source,
    }
}

/// Normalizes the root at `dir` for `source_date_epoch`.
pub fn normalize(dir: &Path, source_date_epoch: u64) -> Result<(), NormalizeError> {
    let root = open_dir(dir).ok_or_else(|| err("open", Path::new("/"), nix::Error::ENOENT))?;
    for rel in REMOVED {
        remove_file(&root, rel)?;
    }
    for rel in EMPTIED {
        empty_file(&root, rel)?;
    }
    clamp(&root, source_date_epoch)
}

/// Splits `rel` into its directory (opened in the root) and its last name.
fn parent_of<'a>(
    root: &OwnedFd,
    rel: &'a str,
) -> Result<Option<(OwnedFd, &'a str)>, NormalizeError> {
    let (dir, name) = rel.rsplit_once('/').unwrap_or(("", rel));
    match open_in_root(root, dir, OFlag::O_DIRECTORY | OFlag::O_RDONLY) {
        Ok(fd) => Ok(Some((fd, name))),
        Err(nix::Error::ENOENT | nix::Error::ENOTDIR) => Ok(None),
        Err(e) => Err(err("open", Path::new(dir), e)),
    }
}

/// Removes a regular file or symlink (never a directory).
fn remove_file(root: &OwnedFd, rel: &str) -> Result<(), NormalizeError> {
    let Some((dir, name)) = parent_of(root, rel)? else {
        return Ok(());
    };
    match fstatat(&dir, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT != SFlag::S_IFDIR => {
            match nix::unistd::unlinkat(&dir, name, UnlinkatFlags::NoRemoveDir) {
                Ok(()) | Err(nix::Error::ENOENT) => Ok(()),
                Err(e) => Err(err("remove", Path::new(rel), e)),
            }
        }
        _ => Ok(()),
    }
}

/// Truncates a regular file to nothing (a symlink or anything else is left alone).
fn empty_file(root: &OwnedFd, rel: &str) -> Result<(), NormalizeError> {
    let Some((dir, name)) = parent_of(root, rel)? else {
        return Ok(());
    };
    match nix::fcntl::openat(
        &dir,
        name,
        OFlag::O_WRONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    ) {
        Ok(fd) => {
            let st = fstat(&fd).map_err(|e| err("stat", Path::new(rel), e))?;
            if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFREG {
                nix::unistd::ftruncate(&fd, 0).map_err(|e| err("empty", Path::new(rel), e))?;
            }
            Ok(())
        }
        Err(nix::Error::ENOENT | nix::Error::ELOOP | nix::Error::ENXIO) => Ok(()),
        Err(e) => Err(err("open", Path::new(rel), e)),
    }
}

/// Sets every mtime (and atime) after `sde` to `sde`, the root's own included, walking the tree
/// by relative paths from the root without recursion.
fn clamp(root: &OwnedFd, sde: u64) -> Result<(), NormalizeError> {
    let sde_i = i64::try_from(sde).unwrap_or(i64::MAX);
    let st = fstat(root).map_err(|e| err("stat", Path::new("/"), e))?;
    let dev = st.st_dev;
    let later = |st: &nix::sys::stat::FileStat| {
        st.st_mtime > sde_i || (st.st_mtime == sde_i && st.st_mtime_nsec > 0)
    };
    let when = TimeSpec::new(sde_i, 0);
    let mut stack: Vec<Vec<u8>> = vec![Vec::new()];
    while let Some(rel) = stack.pop() {
        let shown = PathBuf::from(OsStr::from_bytes(&rel));
        let relstr = String::from_utf8_lossy(&rel);
        let dir = match open_in_root(
            root,
            &relstr,
            OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_NOFOLLOW,
        ) {
            Ok(d) => d,
            // Not valid UTF-8: reached by its bytes below instead.
            Err(e) => return Err(err("open", &shown, e)),
        };
        for name in entries(&dir) {
            let n = OsStr::from_bytes(&name);
            let st = match fstatat(&dir, n, AtFlags::AT_SYMLINK_NOFOLLOW) {
                Ok(st) => st,
                Err(nix::Error::ENOENT) => continue,
                Err(e) => return Err(err("stat", &shown.join(n), e)),
            };
            let is_dir = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR;
            if is_dir && st.st_dev == dev {
                let mut child = rel.clone();
                if !child.is_empty() {
                    child.push(b'/');
                }
                child.extend_from_slice(&name);
                stack.push(child);
            } else if st.st_dev != dev {
                continue;
            }
            if later(&st) {
                utimensat(&dir, n, &when, &when, UtimensatFlags::NoFollowSymlink)
                    .map_err(|e| err("set the time of", &shown.join(n), e))?;
            }
        }
        let st = fstat(&dir).map_err(|e| err("stat", &shown, e))?;
        if later(&st) {
            nix::sys::stat::futimens(&dir, &when, &when)
                .map_err(|e| err("set the time of", &shown, e))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn mtime(p: &Path) -> i64 {
        use std::os::unix::fs::MetadataExt;
        std::fs::symlink_metadata(p).unwrap().mtime()
    }

    #[test]
    fn logs_go_machine_id_is_emptied_and_later_mtimes_are_clamped() {
        let t = tempfile_dir();
        let d = t.as_path();
        for rel in ["var/log/apt", "etc", "usr/bin", "var/lib/dpkg"] {
            std::fs::create_dir_all(d.join(rel)).unwrap();
        }
        std::fs::write(d.join("var/log/dpkg.log"), "x").unwrap();
        std::fs::write(d.join("var/log/apt/term.log"), "x").unwrap();
        std::fs::write(d.join("var/lib/dpkg/status-old"), "x").unwrap();
        std::fs::write(d.join("etc/machine-id"), "abc\n").unwrap();
        std::fs::write(d.join("usr/bin/new"), "x").unwrap();
        std::fs::write(d.join("usr/bin/old"), "x").unwrap();
        let old = std::process::Command::new("touch")
            .args(["-h", "-d", "@1000"])
            .arg(d.join("usr/bin/old"))
            .status()
            .unwrap();
        assert!(old.success());
        // A symlink pointing out of the root is clamped itself, never followed.
        let outside = d.with_extension("outside");
        std::fs::write(&outside, "host").unwrap();
        symlink(&outside, d.join("etc/link")).unwrap();
        let host_before = mtime(&outside);
        normalize(d, 5000).unwrap();
        assert!(!d.join("var/log/dpkg.log").exists());
        assert!(!d.join("var/log/apt/term.log").exists());
        assert!(!d.join("var/lib/dpkg/status-old").exists());
        assert_eq!(std::fs::read(d.join("etc/machine-id")).unwrap(), b"");
        assert_eq!(mtime(&d.join("usr/bin/new")), 5000);
        assert_eq!(mtime(&d.join("usr/bin/old")), 1000);
        assert_eq!(mtime(&d.join("usr/bin")), 5000);
        assert_eq!(mtime(d), 5000);
        assert_eq!(mtime(&d.join("etc/link")), 5000);
        assert_eq!(mtime(&outside), host_before);
        let _ = std::fs::remove_file(&outside);
    }

    /// A fresh directory under the target dir (removed at the start of the next run).
    fn tempfile_dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!("envc-normalize-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}
