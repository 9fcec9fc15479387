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

/// How many directory descriptors [`clamp`] keeps open at most; deeper ones are reopened
/// through `..` of a child when the walk comes back to them.
const MAX_OPEN: usize = 64;

/// A directory [`clamp`] is walking.
struct Frame {
    /// Its descriptor; `None` while closed to keep within [`MAX_OPEN`].
    fd: Option<OwnedFd>,
    /// Its device and inode, checked when it is reopened through a child's `..`.
    id: (u64, u64),
    /// Its path in the root, as bytes (for errors).
    rel: Vec<u8>,
    /// Its entries not walked yet.
    names: std::vec::IntoIter<Vec<u8>>,
}

/// The path of `name` in the directory at `rel`, as bytes.
fn child_path(rel: &[u8], name: &[u8]) -> Vec<u8> {
    let mut child = rel.to_vec();
    if !child.is_empty() {
        child.push(b'/');
    }
    child.extend_from_slice(name);
    child
}

fn shown(rel: &[u8]) -> PathBuf {
    PathBuf::from(OsStr::from_bytes(rel))
}

/// Sets every mtime (and atime) after `sde` to `sde`, the root's own included. The walk goes
/// from directory descriptor to directory descriptor (`openat` of one name with `O_NOFOLLOW`,
/// never a path): names are bytes (valid UTF-8 or not), a tree of any depth is walked with at
/// most [`MAX_OPEN`] descriptors, and nothing on another filesystem is touched.
fn clamp(root: &OwnedFd, sde: u64) -> Result<(), NormalizeError> {
    let sde_i = i64::try_from(sde).unwrap_or(i64::MAX);
    let later = |st: &nix::sys::stat::FileStat| {
        st.st_mtime > sde_i || (st.st_mtime == sde_i && st.st_mtime_nsec > 0)
    };
    let when = TimeSpec::new(sde_i, 0);
    let dir_flags = OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let top = open_in_root(root, ".", OFlag::O_DIRECTORY | OFlag::O_RDONLY)
        .map_err(|e| err("open", Path::new("/"), e))?;
    let st = fstat(&top).map_err(|e| err("stat", Path::new("/"), e))?;
    let dev = st.st_dev;
    let names = entries(&top).into_iter();
    let mut stack = vec![Frame {
        fd: Some(top),
        id: (st.st_dev, st.st_ino),
        rel: Vec::new(),
        names,
    }];
    let changed = |rel: &[u8]| err("walk", &shown(rel), nix::Error::ESTALE);
    while let Some(frame) = stack.last_mut() {
        let Some(name) = frame.names.next() else {
            // Every entry done: the directory's own time, then back to its parent.
            let done = stack.pop().expect("a frame");
            let fd = done.fd.ok_or_else(|| changed(&done.rel))?;
            let st = fstat(&fd).map_err(|e| err("stat", &shown(&done.rel), e))?;
            if later(&st) {
                nix::sys::stat::futimens(&fd, &when, &when)
                    .map_err(|e| err("set the time of", &shown(&done.rel), e))?;
            }
            if let Some(parent) = stack.last_mut()
                && parent.fd.is_none()
            {
                let up = nix::fcntl::openat(&fd, "..", dir_flags, nix::sys::stat::Mode::empty())
                    .map_err(|e| err("open", &shown(&parent.rel), e))?;
                let st = fstat(&up).map_err(|e| err("stat", &shown(&parent.rel), e))?;
                if (st.st_dev, st.st_ino) != parent.id {
                    return Err(changed(&parent.rel));
                }
                parent.fd = Some(up);
            }
            continue;
        };
        let dir = frame.fd.as_ref().ok_or_else(|| changed(&frame.rel))?;
        let n = OsStr::from_bytes(&name);
        let rel = child_path(&frame.rel, &name);
        let st = match fstatat(dir, n, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(nix::Error::ENOENT) => continue,
            Err(e) => return Err(err("stat", &shown(&rel), e)),
        };
        if st.st_dev != dev {
            continue;
        }
        if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR {
            // Its own time is set once its entries are done.
            let fd = nix::fcntl::openat(dir, n, dir_flags, nix::sys::stat::Mode::empty())
                .map_err(|e| err("open", &shown(&rel), e))?;
            let st2 = fstat(&fd).map_err(|e| err("stat", &shown(&rel), e))?;
            if (st2.st_dev, st2.st_ino) != (st.st_dev, st.st_ino) {
                return Err(changed(&rel));
            }
            let names = entries(&fd).into_iter();
            stack.push(Frame {
                fd: Some(fd),
                id: (st.st_dev, st.st_ino),
                rel,
                names,
            });
            if stack.len() > MAX_OPEN {
                let i = stack.len() - MAX_OPEN - 1;
                stack[i].fd = None;
            }
        } else if later(&st) {
            utimensat(dir, n, &when, &when, UtimensatFlags::NoFollowSymlink)
                .map_err(|e| err("set the time of", &shown(&rel), e))?;
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

    /// Names that are not UTF-8 (one beside its lossy twin, U+FFFD) and a tree deeper than
    /// PATH_MAX allows as one path are clamped like the rest.
    #[test]
    fn names_that_are_not_utf8_and_deep_trees_are_clamped() {
        use std::os::unix::ffi::OsStrExt;
        // A directory of its own: `tempfile_dir` is shared with the test beside this one.
        let d = std::env::temp_dir().join(format!("envc-normalize-deep-{}", std::process::id()));
        let _ = std::process::Command::new("rm").arg("-rf").arg(&d).status();
        std::fs::create_dir_all(&d).unwrap();
        let bad = d.join(OsStr::from_bytes(b"\xff"));
        let twin = d.join("\u{fffd}");
        std::fs::create_dir_all(&bad).unwrap();
        std::fs::create_dir_all(&twin).unwrap();
        std::fs::write(bad.join("inner"), "x").unwrap();
        std::fs::write(twin.join("other"), "x").unwrap();
        // 3000 levels of `d`: 6000 bytes of path, more than PATH_MAX. Made through a
        // descriptor chain (relative to the current directory of a child process).
        let made = std::process::Command::new("perl")
            .arg("-e")
            .arg("chdir $ARGV[0] or die; for (1..3000) { mkdir 'd' or die; chdir 'd' or die } open F, '>deep' or die")
            .arg(&d)
            .status()
            .unwrap();
        assert!(made.success());
        normalize(&d, 5000).unwrap();
        assert_eq!(mtime(&bad.join("inner")), 5000);
        assert_eq!(mtime(&twin.join("other")), 5000);
        assert_eq!(mtime(&bad), 5000);
        let mut deep = std::fs::File::open(&d).unwrap();
        // Walk down by descriptors to check the bottom.
        for _ in 0..3000 {
            deep = nix::fcntl::openat(
                &deep,
                "d",
                OFlag::O_DIRECTORY | OFlag::O_RDONLY,
                nix::sys::stat::Mode::empty(),
            )
            .map(std::fs::File::from)
            .unwrap();
        }
        let st = fstatat(&deep, "deep", AtFlags::AT_SYMLINK_NOFOLLOW).unwrap();
        assert_eq!(st.st_mtime, 5000);
        let _ = std::process::Command::new("rm").arg("-rf").arg(&d).status();
    }

    /// A fresh directory under the target dir (removed at the start of the next run).
    fn tempfile_dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!("envc-normalize-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}
