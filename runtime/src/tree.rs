//! Removing a tree of the store (staging areas, throwaway roots, discarded and removed layers)
//! without ever leaving it: the one way envc deletes a directory tree.
//!
//! - Mounts left under the tree (a build killed while a tool had something mounted there) are
//!   detached first, deepest first (`umount2(MNT_DETACH | UMOUNT_NOFOLLOW)`); one that cannot be
//!   detached stops the removal with an error naming it.
//! - The walk goes through directory descriptors (`openat` with `O_NOFOLLOW | O_DIRECTORY`): a
//!   symlink is unlinked, never followed, and a directory on another mount than the tree's top
//!   (compared by mount id, `statx` `STATX_MNT_ID`) stops the removal with an error naming it,
//!   before anything in it is touched. Bind mounts of the same filesystem are caught too, which a
//!   device-number check (`rm --one-file-system`) would miss.
//! - Nested btrfs subvolumes the store made are on the tree's mount (same mount id, another
//!   `st_dev`): they are emptied and removed like directories (`rmdir` deletes an empty
//!   subvolume). Only on kernels without `STATX_MNT_ID` (before 5.8) the device number is
//!   compared instead, and a nested subvolume then stops the removal (safe, never wrong).
//! - Entries that vanish meanwhile (two `gc`s sweeping at once, a background removal) are fine.
//! - No recursion: the walk keeps its own stack, and at most [`MAX_OPEN`] directory descriptors;
//!   deeper directories are reopened through `..`, checked by device and inode, on the way up.
#![forbid(unsafe_code)]

use std::ffi::{CStr, CString, OsStr, OsString};
use std::fs;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Component, Path, PathBuf};

use nix::mount::MntFlags;
use rustix::fs::{AtFlags, CWD, Dir, FileType, Mode, OFlags, StatxFlags};
use rustix::io::Errno;

use crate::sys::Syscall;

/// The hidden first argument under which envc removes a discarded tree in the background:
/// `envc __envc-remove PATH`.
pub const REMOVE_ARG: &str = "__envc-remove";

/// How many directory descriptors one removal keeps open at most.
pub const MAX_OPEN: usize = 64;

/// How often one removal re-reads a directory that was not empty when it was to be removed (files
/// created while it was walked).
const MAX_REREADS: usize = 16;

/// How many rounds of detaching mounts one removal makes (a mount stacked on another shows up
/// again after the top one is gone).
const MAX_DETACH_ROUNDS: usize = 8;

/// A failure to remove a tree, naming the operation and the object.
#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    /// The path has no last component to remove (`/`, `..`, empty).
    #[error("cannot remove {}: not a path to a tree", path.display())]
    NotATree {
        /// The path.
        path: PathBuf,
    },
    /// The mount table could not be read.
    #[error("cannot read /proc/self/mountinfo to remove {}: {source}", path.display())]
    MountTable {
        /// The tree.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A mount under the tree could not be detached.
    #[error("cannot remove {}: cannot detach the mount at {}: {source}", tree.display(), mount.display())]
    Detach {
        /// The tree.
        tree: PathBuf,
        /// The mount point.
        mount: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A mount under the tree is still there after every round of detaching.
    #[error("cannot remove {}: {} is still mounted after {MAX_DETACH_ROUNDS} rounds of detaching", tree.display(), mount.display())]
    StillMounted {
        /// The tree.
        tree: PathBuf,
        /// The mount point.
        mount: PathBuf,
    },
    /// A directory in the tree is on another mount: the removal stops before entering it.
    #[error("refusing to remove {}: {} is on another mount or filesystem (unmount it first)", tree.display(), path.display())]
    OtherMount {
        /// The tree.
        tree: PathBuf,
        /// The directory.
        path: PathBuf,
    },
    /// A directory was moved while the tree was removed (its `..` is no longer its parent).
    #[error("cannot remove {}: {} was moved out of it during the removal", tree.display(), path.display())]
    Moved {
        /// The tree.
        tree: PathBuf,
        /// The directory.
        path: PathBuf,
    },
    /// A filesystem operation failed.
    #[error("cannot {op} {}: {source}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// To what.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
}

fn io_at(op: &'static str, path: PathBuf) -> impl FnOnce(Errno) -> TreeError {
    move |e| TreeError::Io {
        op,
        path,
        source: e.into(),
    }
}

/// Removes the tree at `path` (a directory, a file or a symlink; nothing if it does not exist):
/// detaches the mounts under it, then removes it without following a symlink or entering another
/// mount. The path's last component is never followed; the ones before it are resolved as usual
/// (the store's own directory may be a symlink).
pub fn remove_tree(sys: &dyn Syscall, path: &Path) -> Result<(), TreeError> {
    let Some((parent, name)) = resolve(path)? else {
        return Ok(());
    };
    detach_mounts(sys, &parent.join(&name))?;
    remove_unmounted(&parent, &name)
}

/// Detaches every mount at or under `path` (see [`detach_mounts`]), resolving the path's parent
/// first as the mount table shows it. For trees removed by other means (`btrfs subvolume
/// delete`).
pub fn detach_leftovers(sys: &dyn Syscall, path: &Path) -> Result<(), TreeError> {
    match resolve(path)? {
        Some((parent, name)) => detach_mounts(sys, &parent.join(name)),
        None => Ok(()),
    }
}

/// The canonical parent of `path` and its last component; `None` if the parent does not exist.
fn resolve(path: &Path) -> Result<Option<(PathBuf, OsString)>, TreeError> {
    let (parent, name) = split(path)?;
    match fs::canonicalize(parent) {
        Ok(p) => Ok(Some((p, name))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(TreeError::Io {
            op: "resolve",
            path: parent.to_owned(),
            source,
        }),
    }
}

/// Detaches every mount at or under `path` (an absolute path without symlinks), deepest first.
pub fn detach_mounts(sys: &dyn Syscall, path: &Path) -> Result<(), TreeError> {
    for _ in 0..MAX_DETACH_ROUNDS {
        let mounts = mounts_under(&read_mountinfo(path)?, path);
        if mounts.is_empty() {
            return Ok(());
        }
        for mount in mounts {
            match sys.umount2(&mount, MntFlags::MNT_DETACH | MntFlags::UMOUNT_NOFOLLOW) {
                Ok(()) => {}
                // Gone already: detached with the mount above it, or by someone else.
                Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOENT)) => {}
                Err(source) => {
                    return Err(TreeError::Detach {
                        tree: path.to_owned(),
                        mount,
                        source,
                    });
                }
            }
        }
    }
    match mounts_under(&read_mountinfo(path)?, path)
        .into_iter()
        .next()
    {
        None => Ok(()),
        Some(mount) => Err(TreeError::StillMounted {
            tree: path.to_owned(),
            mount,
        }),
    }
}

fn read_mountinfo(path: &Path) -> Result<String, TreeError> {
    fs::read_to_string("/proc/self/mountinfo").map_err(|source| TreeError::MountTable {
        path: path.to_owned(),
        source,
    })
}

/// The mount points at or under `path` in a `/proc/self/mountinfo` text, in the order to detach
/// them: deepest first, and of mounts on the same point, the later (upper) one first.
pub fn mounts_under(mountinfo: &str, path: &Path) -> Vec<PathBuf> {
    let mut found: Vec<(usize, usize, PathBuf)> = mountinfo
        .lines()
        .enumerate()
        .filter_map(|(line, l)| {
            let point = PathBuf::from(unescape(l.split(' ').nth(4)?));
            point
                .starts_with(path)
                .then(|| (point.components().count(), line, point))
        })
        .collect();
    found.sort_by_key(|m| std::cmp::Reverse((m.0, m.1)));
    found.into_iter().map(|(_, _, p)| p).collect()
}

/// Undoes mountinfo's octal escapes (`\040` for a space, `\011`, `\012`, `\134`).
fn unescape(field: &str) -> OsString {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let digits = b
            .get(i + 1..i + 4)
            .filter(|d| b[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)));
        if let Some(d) = digits {
            let v = d.iter().fold(0u32, |acc, c| acc * 8 + u32::from(c - b'0'));
            if let Ok(byte) = u8::try_from(v) {
                out.push(byte);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    OsString::from_vec(out)
}

fn split(path: &Path) -> Result<(&Path, OsString), TreeError> {
    let not_a_tree = || TreeError::NotATree {
        path: path.to_owned(),
    };
    match (path.components().next_back(), path.parent()) {
        (Some(Component::Normal(name)), Some(parent)) => {
            let parent = if parent.as_os_str().is_empty() {
                Path::new(".")
            } else {
                parent
            };
            Ok((parent, name.to_owned()))
        }
        _ => Err(not_a_tree()),
    }
}

/// Which mount (or, on old kernels, which device) a file is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MountKey {
    Mount(u64),
    Device(u32, u32),
}

/// A directory's identity: its mount, device and inode.
#[derive(Debug, Clone, Copy)]
struct Ident {
    mount: MountKey,
    dev: (u32, u32),
    ino: u64,
}

fn ident(fd: impl AsFd) -> Result<Ident, Errno> {
    let st = rustix::fs::statx(
        fd,
        c"",
        AtFlags::EMPTY_PATH | AtFlags::SYMLINK_NOFOLLOW,
        StatxFlags::MNT_ID | StatxFlags::INO,
    )?;
    let dev = (st.stx_dev_major, st.stx_dev_minor);
    let mount = if st.stx_mask & StatxFlags::MNT_ID.bits() != 0 {
        MountKey::Mount(st.stx_mnt_id)
    } else {
        MountKey::Device(dev.0, dev.1)
    };
    Ok(Ident {
        mount,
        dev,
        ino: st.stx_ino,
    })
}

fn open_dir(at: impl AsFd, name: impl rustix::path::Arg) -> Result<OwnedFd, Errno> {
    rustix::fs::openat(
        at,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NOCTTY,
        Mode::empty(),
    )
}

/// One directory being emptied.
struct Frame {
    /// Its entries; `None` while its descriptor is closed to keep within [`MAX_OPEN`].
    dir: Option<Dir>,
    id: Ident,
    /// Its name in its parent.
    name: CString,
}

/// Removes `parent/name`, which has no mounts under it.
fn remove_unmounted(parent: &Path, name: &OsStr) -> Result<(), TreeError> {
    let path = parent.join(name);
    let cname =
        CString::new(name.as_bytes()).map_err(|_| TreeError::NotATree { path: path.clone() })?;
    let pfd = match open_dir(CWD, parent) {
        Ok(fd) => fd,
        Err(Errno::NOENT) => return Ok(()),
        Err(e) => return Err(io_at("open", parent.to_owned())(e)),
    };
    let pid = ident(&pfd).map_err(io_at("stat", parent.to_owned()))?;
    // A file or a symlink is unlinked; a directory says EISDIR.
    match rustix::fs::unlinkat(&pfd, &cname, AtFlags::empty()) {
        Ok(()) | Err(Errno::NOENT) => return Ok(()),
        Err(Errno::ISDIR) => {}
        Err(e) => return Err(io_at("remove", path)(e)),
    }
    let fd = match open_dir(&pfd, &cname) {
        Ok(fd) => fd,
        Err(Errno::NOENT) => return Ok(()),
        Err(e) => return Err(io_at("open", path)(e)),
    };
    let id = ident(&fd).map_err(io_at("stat", path.clone()))?;
    if id.mount != pid.mount {
        return Err(TreeError::OtherMount {
            tree: path.clone(),
            path,
        });
    }
    empty_dir(&path, fd, id)?;
    rmdir(&pfd, &cname, &path)
}

fn rmdir(parent: impl AsFd, name: &CStr, path: &Path) -> Result<(), TreeError> {
    match rustix::fs::unlinkat(parent, name, AtFlags::REMOVEDIR) {
        Ok(()) | Err(Errno::NOENT) => Ok(()),
        Err(e) => Err(io_at("remove directory", path.to_owned())(e)),
    }
}

/// Empties the directory `fd` (the top of the tree at `tree`), iteratively.
fn empty_dir(tree: &Path, fd: OwnedFd, top: Ident) -> Result<(), TreeError> {
    let mut stack = vec![Frame {
        dir: Some(Dir::new(fd).map_err(io_at("read", tree.to_owned()))?),
        id: top,
        name: CString::default(),
    }];
    // The path of the directory on top of the stack, for errors.
    let mut cur = tree.to_owned();
    let mut rereads = 0;
    loop {
        let Some(frame) = stack.last_mut() else {
            return Ok(());
        };
        // Only frames below the top lose their descriptor (see below): the top always has one.
        let Some(dir) = frame.dir.as_mut() else {
            return Err(moved(tree, &cur));
        };
        let entry = match dir.read() {
            Some(Ok(e)) => e,
            Some(Err(Errno::NOENT)) | None => {
                // Done with this directory: remove it from its parent (the top is removed by the
                // caller).
                let Some(done) = stack.pop() else {
                    return Ok(());
                };
                let Some(parent) = stack.last_mut() else {
                    return Ok(());
                };
                if parent.dir.is_none() {
                    // Reopened through the child's `..`, which must still be the same directory.
                    let child = done.dir.as_ref().ok_or_else(|| moved(tree, &cur))?;
                    let up = cur.join("..");
                    let child = child.fd().map_err(io_at("read", cur.clone()))?;
                    let fd = open_dir(child, c"..").map_err(io_at("open", up.clone()))?;
                    let id = ident(&fd).map_err(io_at("stat", up))?;
                    if (id.dev, id.ino) != (parent.id.dev, parent.id.ino) {
                        return Err(moved(tree, &cur));
                    }
                    parent.dir = Some(Dir::new(fd).map_err(io_at("read", cur.clone()))?);
                }
                drop(done.dir);
                let pdir = parent.dir.as_mut().ok_or_else(|| moved(tree, &cur))?;
                let pfd = pdir.fd().map_err(io_at("read", cur.clone()))?;
                match rustix::fs::unlinkat(pfd, &done.name, AtFlags::REMOVEDIR) {
                    Ok(()) | Err(Errno::NOENT) => {}
                    // Something was created in it meanwhile: read the parent again, which finds
                    // the directory again.
                    Err(Errno::NOTEMPTY) if rereads < MAX_REREADS => {
                        rereads += 1;
                        pdir.rewind();
                    }
                    Err(e) => return Err(io_at("remove directory", cur)(e)),
                }
                cur.pop();
                continue;
            }
            Some(Err(e)) => return Err(io_at("read", cur)(e)),
        };
        let name = entry.file_name();
        if name == c"." || name == c".." {
            continue;
        }
        let name = name.to_owned();
        let dfd = dir.fd().map_err(io_at("read", cur.clone()))?;
        let child_path = || cur.join(OsStr::from_bytes(name.to_bytes()));
        if !matches!(entry.file_type(), FileType::Directory | FileType::Unknown) {
            match rustix::fs::unlinkat(dfd, &name, AtFlags::empty()) {
                Ok(()) | Err(Errno::NOENT) => continue,
                // The entry was replaced by a directory meanwhile.
                Err(Errno::ISDIR) => {}
                Err(e) => return Err(io_at("remove", child_path())(e)),
            }
        }
        let fd = match open_dir(dfd, &name) {
            Ok(fd) => fd,
            Err(Errno::NOENT) => continue,
            // A symlink (never followed) or another non-directory: unlinked.
            Err(Errno::LOOP | Errno::NOTDIR) => {
                match rustix::fs::unlinkat(dfd, &name, AtFlags::empty()) {
                    Ok(()) | Err(Errno::NOENT) => continue,
                    Err(e) => return Err(io_at("remove", child_path())(e)),
                }
            }
            Err(e) => return Err(io_at("open", child_path())(e)),
        };
        let id = ident(&fd).map_err(io_at("stat", child_path()))?;
        if id.mount != top.mount {
            return Err(TreeError::OtherMount {
                tree: tree.to_owned(),
                path: child_path(),
            });
        }
        cur.push(OsStr::from_bytes(name.to_bytes()));
        stack.push(Frame {
            dir: Some(Dir::new(fd).map_err(io_at("read", cur.clone()))?),
            id,
            name,
        });
        // Keep at most MAX_OPEN descriptors: close the oldest open one below the top.
        if stack.len() > MAX_OPEN {
            let i = stack.len() - MAX_OPEN - 1;
            stack[i].dir = None;
        }
    }
}

fn moved(tree: &Path, cur: &Path) -> TreeError {
    TreeError::Moved {
        tree: tree.to_owned(),
        path: cur.to_owned(),
    }
}

/// Whether `name` is one envc gives trees it deletes in the background (`tmp/discard-*`,
/// `tmp/removed-*`): the only ones `__envc-remove` touches.
pub fn is_doomed(path: &Path) -> bool {
    let in_tmp = path
        .parent()
        .and_then(Path::file_name)
        .is_some_and(|p| p == "tmp");
    let named = path
        .file_name()
        .and_then(OsStr::to_str)
        .is_some_and(|n| n.starts_with("discard-") || n.starts_with("removed-"));
    in_tmp && named
}

/// Entry point of `envc __envc-remove PATH`: removes a discarded tree of a store (`tmp/discard-*`,
/// `tmp/removed-*`) with [`remove_tree`]. Exit status 0 when removed, 1 on failure, 2 on a bad
/// argument (any other path).
pub fn remove_main(args: &[OsString]) -> i32 {
    let [path] = args else { return 2 };
    let path = Path::new(path);
    if !path.is_absolute() || !is_doomed(path) {
        eprintln!(
            "envc remove: {}: not a discarded tree of a store",
            path.display()
        );
        return 2;
    }
    match remove_tree(crate::sys::kernel(), path) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("envc remove: {e}");
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::{Call, RecordingSyscall};
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A fresh directory under the system's temporary directory, removed on drop.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new() -> Scratch {
            static N: AtomicUsize = AtomicUsize::new(0);
            let dir = std::env::temp_dir().join(format!(
                "envc-tree-test-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            fs::create_dir_all(&dir).unwrap();
            Scratch(dir.canonicalize().unwrap())
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    /// A decoy directory with two files, outside the tree.
    fn decoy(at: &Path) -> PathBuf {
        let d = at.join("decoy");
        fs::create_dir_all(d.join("sub")).unwrap();
        fs::write(d.join("keep"), "keep").unwrap();
        fs::write(d.join("sub/keep"), "keep").unwrap();
        d
    }

    fn decoy_intact(d: &Path) -> bool {
        fs::read_to_string(d.join("keep")).is_ok_and(|s| s == "keep")
            && fs::read_to_string(d.join("sub/keep")).is_ok_and(|s| s == "keep")
    }

    #[test]
    fn mounts_under_a_path_are_found_deepest_and_latest_first() {
        let info = "\
22 1 0:21 / /proc rw - proc proc rw
30 22 0:30 / /s/staging/x/upper rw - tmpfs t rw
31 30 0:31 / /s/staging/x/upper/dev/shm rw - tmpfs t rw
32 30 0:32 / /s/staging/x/upper/proc rw - proc proc rw
33 32 0:33 / /s/staging/x/upper/proc rw - proc proc rw
34 1 0:34 / /s/staging/xy rw - tmpfs t rw
35 1 0:35 / /s/staging/x\\040y/a\\134b rw - tmpfs t rw
";
        let got = mounts_under(info, Path::new("/s/staging/x"));
        let want: Vec<PathBuf> = [
            "/s/staging/x/upper/dev/shm",
            "/s/staging/x/upper/proc",
            "/s/staging/x/upper/proc",
            "/s/staging/x/upper",
        ]
        .iter()
        .map(PathBuf::from)
        .collect();
        assert_eq!(
            got, want,
            "a sibling with the same prefix (xy) is not under x"
        );
        assert_eq!(
            mounts_under(info, Path::new("/s/staging/x y")),
            [PathBuf::from("/s/staging/x y/a\\b")],
            "octal escapes are undone"
        );
        assert!(mounts_under(info, Path::new("/nowhere")).is_empty());
        assert_eq!(
            unescape("a\\04"),
            OsString::from("a\\04"),
            "a short escape is kept"
        );
        assert_eq!(
            unescape("\\777"),
            OsString::from("\\777"),
            "out of range is kept"
        );
    }

    #[test]
    fn detaching_goes_through_the_seam_with_nofollow() {
        // A path with no mounts makes no call.
        let fake = RecordingSyscall::default();
        let s = Scratch::new();
        detach_mounts(&fake, &s.0).unwrap();
        assert!(fake.calls().is_empty(), "{:?}", fake.calls());
        // The root is under every path's mounts: detaching `/` would try them all; only check
        // that each call is a lazy, non-following detach.
        let fake = RecordingSyscall::default();
        let _ = detach_mounts(&fake, Path::new("/proc"));
        assert!(
            fake.calls()
                .iter()
                .all(|c| matches!(c, Call::Umount2 { flags, .. }
                if *flags == MntFlags::MNT_DETACH | MntFlags::UMOUNT_NOFOLLOW)),
            "{:?}",
            fake.calls()
        );
    }

    #[test]
    fn a_symlink_to_a_decoy_is_unlinked_never_followed() {
        let s = Scratch::new();
        let d = decoy(&s.0);
        let t = s.0.join("tree");
        fs::create_dir_all(t.join("a/b")).unwrap();
        fs::write(t.join("a/b/f"), "x").unwrap();
        std::os::unix::fs::symlink(&d, t.join("a/link")).unwrap();
        std::os::unix::fs::symlink(d.join("keep"), t.join("a/b/filelink")).unwrap();
        remove_tree(crate::sys::kernel(), &t).unwrap();
        assert!(!t.exists());
        assert!(decoy_intact(&d));
        // The tree itself a symlink: the link goes, its target stays.
        let link = s.0.join("link");
        std::os::unix::fs::symlink(&d, &link).unwrap();
        remove_tree(crate::sys::kernel(), &link).unwrap();
        assert!(fs::symlink_metadata(&link).is_err());
        assert!(decoy_intact(&d));
        // And a missing tree is fine.
        remove_tree(crate::sys::kernel(), &s.0.join("missing")).unwrap();
        remove_tree(crate::sys::kernel(), &s.0.join("missing/deeper")).unwrap();
    }

    /// Whether this test can mount (root); otherwise it is skipped, with a line on stderr, unless
    /// ENVC_REQUIRE_PRIVILEGED=1 makes that a failure.
    fn privileged(test: &str) -> bool {
        if nix::unistd::geteuid().is_root() {
            return true;
        }
        if std::env::var("ENVC_REQUIRE_PRIVILEGED").is_ok_and(|v| v == "1") {
            panic!("{test}: needs root, and ENVC_REQUIRE_PRIVILEGED=1");
        }
        let _ = std::io::Write::write_all(
            &mut std::io::stderr(),
            format!("SKIP {test}: not running as root\n").as_bytes(),
        );
        false
    }

    #[test]
    fn the_walk_stops_at_a_mount_even_one_not_detached() {
        if !privileged("the_walk_stops_at_a_mount_even_one_not_detached") {
            return;
        }
        let s = Scratch::new();
        let d = decoy(&s.0);
        let t = s.0.join("tree");
        let target = t.join("upper/dev/shm");
        fs::create_dir_all(&target).unwrap();
        fs::write(t.join("upper/before"), "x").unwrap();
        nix::mount::mount(
            Some(&d),
            &target,
            None::<&str>,
            nix::mount::MsFlags::MS_BIND,
            None::<&str>,
        )
        .unwrap();
        // The same filesystem (a device-number check would walk in): the mount id stops it.
        let e = remove_unmounted(&s.0, OsStr::new("tree")).unwrap_err();
        let stopped = matches!(&e, TreeError::OtherMount { path, .. } if *path == target);
        let intact = decoy_intact(&d);
        // A bind of the tree's top itself is refused before anything is removed.
        let top = s.0.join("top");
        fs::create_dir_all(&top).unwrap();
        nix::mount::mount(
            Some(&d),
            &top,
            None::<&str>,
            nix::mount::MsFlags::MS_BIND,
            None::<&str>,
        )
        .unwrap();
        let top_err = remove_unmounted(&s.0, OsStr::new("top"));
        let top_intact = decoy_intact(&d);
        // With the detaching, both go, and the decoy stays.
        remove_tree(crate::sys::kernel(), &t).unwrap();
        remove_tree(crate::sys::kernel(), &top).unwrap();
        assert!(stopped, "{e}");
        assert!(intact && top_intact);
        assert!(
            matches!(&top_err, Err(TreeError::OtherMount { path, .. }) if *path == top),
            "{top_err:?}"
        );
        assert!(!t.exists() && !top.exists());
        assert!(decoy_intact(&d));
        assert!(
            mounts_under(&fs::read_to_string("/proc/self/mountinfo").unwrap(), &s.0).is_empty()
        );
    }

    #[test]
    fn a_tree_deeper_than_the_open_descriptors_and_path_max_is_removed() {
        let s = Scratch::new();
        let t = s.0.join("deep");
        fs::create_dir(&t).unwrap();
        // 600 levels: many times MAX_OPEN descriptors, and paths beyond PATH_MAX (4096 bytes).
        let mut fd = open_dir(CWD, t.as_path()).unwrap();
        for i in 0..600 {
            let name = format!("level-{i:04}-of-a-deep-tree");
            rustix::fs::mkdirat(&fd, name.as_str(), Mode::RWXU).unwrap();
            if i % 50 == 0 {
                let f = rustix::fs::openat(
                    &fd,
                    "file",
                    OFlags::CREATE | OFlags::WRONLY | OFlags::CLOEXEC,
                    Mode::RUSR,
                )
                .unwrap();
                drop(f);
            }
            fd = open_dir(&fd, name.as_str()).unwrap();
        }
        drop(fd);
        remove_tree(crate::sys::kernel(), &t).unwrap();
        assert!(!t.exists());
    }

    #[test]
    fn two_removals_of_one_tree_at_once_both_succeed() {
        let s = Scratch::new();
        let t = s.0.join("wide");
        for i in 0..40 {
            let d = t.join(format!("d{i}/e/f"));
            fs::create_dir_all(&d).unwrap();
            for j in 0..25 {
                fs::write(d.join(format!("f{j}")), "x").unwrap();
            }
        }
        std::thread::scope(|sc| {
            let a = sc.spawn(|| remove_tree(crate::sys::kernel(), &t));
            let b = sc.spawn(|| remove_tree(crate::sys::kernel(), &t));
            a.join().unwrap().unwrap();
            b.join().unwrap().unwrap();
        });
        assert!(!t.exists());
    }

    #[test]
    fn paths_without_a_last_component_are_refused() {
        for p in ["/", "..", "", "/tmp/.."] {
            assert!(
                matches!(
                    remove_tree(crate::sys::kernel(), Path::new(p)),
                    Err(TreeError::NotATree { .. })
                ),
                "{p:?}"
            );
        }
    }

    #[test]
    fn background_removal_only_takes_discarded_trees() {
        assert!(is_doomed(Path::new("/s/tmp/discard-1-2-3")));
        assert!(is_doomed(Path::new("/s/tmp/removed-1-2-3")));
        assert!(!is_doomed(Path::new("/s/tmp/run-1-2-3")));
        assert!(!is_doomed(Path::new("/s/layers/discard-1")));
        assert!(!is_doomed(Path::new("/")));
        let s = Scratch::new();
        let d = decoy(&s.0);
        assert_eq!(remove_main(&[d.clone().into_os_string()]), 2);
        assert_eq!(remove_main(&[OsString::from("tmp/discard-x")]), 2);
        assert_eq!(remove_main(&[]), 2);
        assert!(decoy_intact(&d));
        let doomed = s.0.join("tmp/discard-1");
        fs::create_dir_all(doomed.join("a")).unwrap();
        std::os::unix::fs::symlink(&d, doomed.join("a/l")).unwrap();
        assert_eq!(remove_main(&[doomed.clone().into_os_string()]), 0);
        assert!(!doomed.exists());
        assert!(decoy_intact(&d));
    }
}
