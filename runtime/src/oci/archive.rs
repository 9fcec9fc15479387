//! One sealed layer as one reproducible tar stream, and such a stream unpacked into a build.
//!
//! **The archive** is the layer's difference from its parent, in the OCI layer form:
//! - entries in canonical order: depth first, a directory before what is in it, names compared
//!   as bytes; in each directory, after the directory's own entry, its opaque marker
//!   (`.wh..wh..opq`: everything below from lower layers is gone), then its whiteouts (`.wh.NAME`:
//!   NAME is gone), then its children;
//! - the top directory first, as `./` (its mode, owners and attributes; its time is never part of
//!   a tree digest, and is written as 0);
//! - every entry's type (file, directory, symlink, hard link, character or block device, FIFO),
//!   permission bits with setuid, setgid and sticky, numeric owners (no user or group names), and
//!   modification time to the nanosecond (PAX `mtime`);
//! - every extended attribute but overlayfs's own (`trusted.overlay.*`) as PAX
//!   `SCHILY.xattr.NAME` records; paths and link targets longer than the ustar fields as PAX
//!   `path` and `linkpath`; owners above the ustar range as PAX `uid` and `gid`;
//! - regular files that are hard links of one another (the same inode) once, at their first path;
//!   the later paths as hard-link entries to it;
//! - nothing that depends on the host or the time of packing: a fixed header form (ustar with PAX
//!   extended headers named `././@PaxHeader`, mode 0644, owner 0, time 0), no user or group names,
//!   no atime/ctime, PAX records in a fixed order (`path`, `linkpath`, `mtime`, `size`, `uid`,
//!   `gid`, then the attributes sorted by name), whiteouts and opaque markers as empty regular
//!   files owned by root with mode 0 and time 0. Packing a tree twice gives the same bytes.
//! - sockets are left out (tar has no form for them): where one hides an entry of the parent (or,
//!   in an overlay upper directory, of a lower layer) the archive has a whiteout instead.
//!
//! **The sources.** An overlay layer is its own difference (its upper directory): a whiteout
//! (character device 0:0) becomes `.wh.NAME`, a directory marked opaque (`trusted.overlay.opaque`
//! = `y`) gets `.wh..wh..opq`; an entry overlayfs marks as a redirect, a metadata-only copy or an
//! extended-attribute whiteout cannot be archived (its data or meaning is in a lower layer). A
//! btrfs or LVM layer is a full snapshot of its parent with the layer's changes: its archive is
//! the difference of the two trees. A snapshot shares inode numbers and change times with its
//! parent for what it did not change, so an entry is in the archive when its path is new, or its
//! type, mode, owners, modification time, size, attributes, link target or device number differ,
//! or, for a regular file, its inode number or change time; a path of the parent that is gone is
//! a whiteout, and so is one whose type changed between directory and not (then followed by the
//! new entry). A directory whose own metadata did not change is archived when something below it
//! is (every archived entry's ancestors are in the archive, as in an overlay upper directory),
//! and skipped with everything below it otherwise, without reading file contents. Whatever this
//! misses (a change time forged by no process we know of) is caught by the tree digest a pull
//! checks: the archive is never trusted for the tree. Attributes that an unpack refuses are
//! refused when packing, so every archive packed here unpacks.
//!
//! **Unpacking treats the stream as hostile.** Every path is relative, without `..`, and reached
//! through real directories only: each component is opened from the top's descriptor with
//! `openat2` (`RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV`),
//! so a symlink on the way is refused, never followed, and no other mount (a bind mount of the
//! same filesystem included) is entered. Nothing is ever created, changed or linked outside the
//! target. A hard link must name a regular file this archive made (or, in a full tree, one
//! reached the same way); `trusted.*` attributes (which would steer overlayfs) and attribute
//! namespaces other than `user.`, `security.capability`, `security.selinux` and POSIX ACLs are
//! refused, as are a character device 0:0 as an entry, a path given twice, more entries or bytes
//! than the limits, metadata records over 64 KiB, data after the end, and a stream cut anywhere.
//! The top directory takes the archive's owners, mode and attributes but keeps its times; in a
//! full tree, a directory the archive does not give keeps its times too, however its listing
//! changed.
#![forbid(unsafe_code)]

use std::collections::{HashMap, HashSet};
use std::ffi::{CStr, CString, OsStr};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::fcntl::{AtFlags, OFlag, OpenHow, ResolveFlag, openat2};
use nix::sys::stat::{FchmodatFlags, Mode, SFlag, UtimensatFlags};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid};
use rustix::fs::{AtFlags as RAtFlags, Dir, FileType, Mode as RMode, OFlags, Statx, StatxFlags};
use rustix::io::Errno;
use sha2::{Digest as _, Sha256};

use crate::digest::{MountKey, mount_key, read_sized};

/// The opaque marker's name.
pub const OPAQUE: &str = ".wh..wh..opq";
/// The prefix of a whiteout's name.
pub const WHITEOUT: &str = ".wh.";
/// The most a PAX record set, a GNU long name or a path may hold.
const META_MAX: u64 = 64 * 1024;
/// overlayfs's own attributes: never archived.
const OVERLAY_XATTRS: &str = "trusted.overlay.";
const BLOCK: usize = 512;
/// How many bytes of a file are read (and written) at a time.
const COPY_SIZE: usize = 256 * 1024;

/// A failure to pack or unpack, naming the operation and the entry.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// A file operation on the tree failed.
    #[error("cannot {op} {}: {source}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// The path (inside the tree for unpacking: `/REL`).
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// The stream holds something that is not unpacked.
    #[error("archive entry {entry}: {reason}")]
    Refused {
        /// The entry's path as the archive gives it (lossy), or where in the stream.
        entry: String,
        /// What is wrong.
        reason: String,
    },
    /// The tree holds something that cannot be archived.
    #[error("cannot archive {}: {reason}", path.display())]
    Unarchivable {
        /// The path.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

fn io_at<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> ArchiveError + 'a {
    move |source| ArchiveError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

fn refused(entry: &str, reason: impl Into<String>) -> ArchiveError {
    ArchiveError::Refused {
        entry: entry.to_owned(),
        reason: reason.into(),
    }
}

/// What to archive.
#[derive(Debug, Clone, Copy)]
pub enum Source<'a> {
    /// An overlayfs upper directory (a sealed overlay layer: `store/layers/ID`). It *is* the
    /// layer's difference: overlay whiteouts (character device 0:0) become `.wh.NAME` entries, a
    /// directory with `trusted.overlay.opaque` = `y` gets a `.wh..wh..opq` entry, and every
    /// `trusted.overlay.*` attribute is left out.
    Upper(&'a Path),
    /// A full tree (a btrfs subvolume, a mounted LVM snapshot) and its parent's full tree (`None`
    /// for a base layer: then everything is archived). The archive is the difference.
    Diff {
        /// The parent layer's tree.
        parent: Option<&'a Path>,
        /// The layer's tree.
        tree: &'a Path,
    },
}

/// What [`pack`] wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packed {
    /// Entries (whiteouts and markers included).
    pub entries: u64,
    /// Bytes of the uncompressed tar stream.
    pub bytes: u64,
    /// The sha256 of the tar stream.
    pub sha256: [u8; 32],
}

/// Where to unpack.
#[derive(Debug, Clone, Copy)]
pub enum Target<'a> {
    /// An empty overlayfs upper directory of a build: `.wh.NAME` becomes a character device 0:0,
    /// `.wh..wh..opq` sets `trusted.overlay.opaque` = `y` on its directory.
    Upper(&'a Path),
    /// A writable full tree (a btrfs snapshot of the parent, a mounted LVM snapshot): `.wh.NAME`
    /// removes NAME (recursively, never leaving the tree), `.wh..wh..opq` removes everything in
    /// the directory that this archive did not itself create, an entry replaces whatever is at
    /// its path (a directory over a directory keeps the contents and takes the new metadata,
    /// attributes included).
    Tree(&'a Path),
}

/// How much an unpack takes.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Entries.
    pub max_entries: u64,
    /// File contents in total.
    pub max_bytes: u64,
    /// One extended attribute's value.
    pub max_xattr_value: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_entries: 10_000_000,
            max_bytes: 256 << 30,
            max_xattr_value: 64 * 1024,
        }
    }
}

/// What [`unpack`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unpacked {
    /// Entries.
    pub entries: u64,
    /// Bytes of file contents.
    pub bytes: u64,
}

// ---------------------------------------------------------------------------------------------
// Packing.

/// What an entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    File,
    Dir,
    Symlink,
    Char,
    Block,
    Fifo,
    Socket,
}

impl Kind {
    fn of(mode: u16) -> Option<Kind> {
        Some(match FileType::from_raw_mode(mode.into()) {
            FileType::RegularFile => Kind::File,
            FileType::Directory => Kind::Dir,
            FileType::Symlink => Kind::Symlink,
            FileType::CharacterDevice => Kind::Char,
            FileType::BlockDevice => Kind::Block,
            FileType::Fifo => Kind::Fifo,
            FileType::Socket => Kind::Socket,
            FileType::Unknown => return None,
        })
    }
}

/// What statx is asked for.
const WANT: StatxFlags = StatxFlags::BASIC_STATS.union(StatxFlags::MNT_ID);

/// Extended attributes: (name, value), sorted by name.
type Xattrs = Vec<(Vec<u8>, Vec<u8>)>;

/// What is known of one entry of a tree.
#[derive(Debug, Clone)]
struct Meta {
    kind: Kind,
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: (i64, u32),
    ctime: (i64, u32),
    /// A regular file's size (0 for the others).
    size: u64,
    /// A device's major and minor numbers ((0, 0) for the others).
    rdev: (u32, u32),
    /// Device and inode: which file it is.
    id: (u32, u32, u64),
    nlink: u32,
    mount: MountKey,
    /// A symlink's target.
    link: Option<Vec<u8>>,
    /// Extended attributes but overlayfs's own.
    xattrs: Xattrs,
    /// overlayfs's own attributes (`trusted.overlay.*`).
    overlay: Xattrs,
}

impl Meta {
    fn new(st: &Statx, host: &Path) -> Result<Meta, ArchiveError> {
        let kind = Kind::of(st.stx_mode).ok_or_else(|| ArchiveError::Unarchivable {
            path: host.to_owned(),
            reason: format!("an unknown file type (mode {:o})", st.stx_mode),
        })?;
        Ok(Meta {
            kind,
            mode: u32::from(st.stx_mode) & 0o7777,
            uid: st.stx_uid,
            gid: st.stx_gid,
            mtime: (st.stx_mtime.tv_sec, st.stx_mtime.tv_nsec),
            ctime: (st.stx_ctime.tv_sec, st.stx_ctime.tv_nsec),
            size: if kind == Kind::File { st.stx_size } else { 0 },
            rdev: if matches!(kind, Kind::Char | Kind::Block) {
                (st.stx_rdev_major, st.stx_rdev_minor)
            } else {
                (0, 0)
            },
            id: (st.stx_dev_major, st.stx_dev_minor, st.stx_ino),
            nlink: st.stx_nlink,
            mount: mount_key(st),
            link: None,
            xattrs: Vec::new(),
            overlay: Vec::new(),
        })
    }

    /// The metadata of a whiteout or opaque marker: an empty file owned by root, mode 0, time 0.
    fn marker() -> Meta {
        Meta {
            kind: Kind::File,
            mode: 0,
            uid: 0,
            gid: 0,
            mtime: (0, 0),
            ctime: (0, 0),
            size: 0,
            rdev: (0, 0),
            id: (0, 0, 0),
            nlink: 1,
            mount: MountKey::Mount(0),
            link: None,
            xattrs: Vec::new(),
            overlay: Vec::new(),
        }
    }

    /// Whether `self` (in the layer's tree) is what `old` (in the parent's) was: type, mode,
    /// owners, modification time, size, attributes, link target and device number, and for a
    /// regular file its inode number and change time (a snapshot shares both with its parent
    /// for what it did not change; a write that kept the size and reset the time still moved the
    /// change time).
    fn same_as(&self, old: &Meta) -> bool {
        self.kind == old.kind
            && self.mode == old.mode
            && self.uid == old.uid
            && self.gid == old.gid
            && self.mtime == old.mtime
            && self.size == old.size
            && self.rdev == old.rdev
            && self.link == old.link
            && self.xattrs == old.xattrs
            && (self.kind != Kind::File || (self.id.2 == old.id.2 && self.ctime == old.ctime))
    }

    fn is_whiteout(&self) -> bool {
        self.kind == Kind::Char && self.rdev == (0, 0)
    }

    fn overlay_attr(&self, name: &[u8]) -> Option<&[u8]> {
        self.overlay
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_slice())
    }
}

fn host(top: &Path, rel: &[u8]) -> PathBuf {
    if rel.is_empty() {
        top.to_owned()
    } else {
        top.join(OsStr::from_bytes(rel))
    }
}

fn changed(path: PathBuf) -> ArchiveError {
    ArchiveError::Unarchivable {
        path,
        reason: "it changed while it was read".into(),
    }
}

fn errno_host(op: &'static str, path: PathBuf) -> impl FnOnce(Errno) -> ArchiveError {
    move |e| ArchiveError::Io {
        op,
        path,
        source: e.into(),
    }
}

fn statx_fd(fd: BorrowedFd<'_>) -> Result<Statx, Errno> {
    rustix::fs::statx(
        fd,
        c"",
        RAtFlags::EMPTY_PATH | RAtFlags::SYMLINK_NOFOLLOW,
        WANT,
    )
}

/// Opens without following a symlink, and without touching the access time where allowed.
fn open_at(dir: BorrowedFd<'_>, name: &CStr, flags: OFlags) -> Result<OwnedFd, Errno> {
    let flags = flags | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NOCTTY;
    match rustix::fs::openat(dir, name, flags | OFlags::NOATIME, RMode::empty()) {
        Err(Errno::PERM) => rustix::fs::openat(dir, name, flags, RMode::empty()),
        r => r,
    }
}

/// Whose extended attributes are read.
#[derive(Clone, Copy)]
enum XattrOf<'a> {
    /// An open directory.
    Fd(BorrowedFd<'a>),
    /// A path whose last component is not followed (`/proc/self/fd/DIR/NAME`).
    Link(&'a CStr),
}

/// The extended attributes of an entry: the others and overlayfs's own, each sorted by name. A
/// filesystem without extended attributes has none.
fn read_xattrs(of: XattrOf<'_>, path: &Path) -> Result<(Xattrs, Xattrs), ArchiveError> {
    let list = match of {
        XattrOf::Fd(fd) => read_sized(
            || rustix::fs::flistxattr_query(fd),
            |buf| rustix::fs::flistxattr(fd, buf),
        ),
        XattrOf::Link(p) => read_sized(
            || rustix::fs::llistxattr_query(p),
            |buf| rustix::fs::llistxattr(p, buf),
        ),
    };
    let list = match list {
        Ok(l) => l,
        Err(Errno::NOTSUP) => return Ok((Vec::new(), Vec::new())),
        Err(e) => return Err(errno_host("list the attributes of", path.to_owned())(e)),
    };
    let (mut mine, mut overlay) = (Vec::new(), Vec::new());
    for name in list.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let cname = CString::new(name).map_err(|_| changed(path.to_owned()))?;
        let value = match of {
            XattrOf::Fd(fd) => read_sized(
                || rustix::fs::fgetxattr_query(fd, &cname),
                |buf| rustix::fs::fgetxattr(fd, &cname, buf),
            ),
            XattrOf::Link(p) => read_sized(
                || rustix::fs::lgetxattr_query(p, &cname),
                |buf| rustix::fs::lgetxattr(p, &cname, buf),
            ),
        };
        let value = match value {
            Ok(v) => v,
            Err(Errno::NODATA) => return Err(changed(path.to_owned())),
            Err(e) => return Err(errno_host("read an attribute of", path.to_owned())(e)),
        };
        if name.starts_with(OVERLAY_XATTRS.as_bytes()) {
            overlay.push((name.to_vec(), value));
        } else {
            mine.push((name.to_vec(), value));
        }
    }
    mine.sort();
    overlay.sort();
    Ok((mine, overlay))
}

fn join(rel: &[u8], name: &[u8]) -> Vec<u8> {
    if rel.is_empty() {
        name.to_vec()
    } else {
        let mut v = rel.to_vec();
        v.push(b'/');
        v.extend_from_slice(name);
        v
    }
}

/// One tree being walked (the layer's, or its parent's).
#[derive(Clone, Copy)]
struct Side<'a> {
    /// Its top on the host (for errors).
    top: &'a Path,
    /// The mount its top is on: the walk never leaves it.
    mount: MountKey,
}

impl Side<'_> {
    /// The entries of the directory `fd` (at `rel`), sorted by name bytes.
    fn list(&self, fd: &OwnedFd, rel: &[u8]) -> Result<Vec<(CString, Meta)>, ArchiveError> {
        let here = host(self.top, rel);
        let mut dir = Dir::read_from(fd).map_err(errno_host("list", here.clone()))?;
        let mut names = Vec::new();
        while let Some(e) = dir.read() {
            let e = e.map_err(errno_host("list", here.clone()))?;
            let name = e.file_name();
            if name != c"." && name != c".." {
                names.push(name.to_owned());
            }
        }
        names.sort();
        let mut out = Vec::with_capacity(names.len());
        for name in names {
            let path = host(self.top, &join(rel, name.to_bytes()));
            let st = match rustix::fs::statx(fd, &name, RAtFlags::SYMLINK_NOFOLLOW, WANT) {
                Ok(st) => st,
                Err(Errno::NOENT) => return Err(changed(path)),
                Err(e) => return Err(errno_host("inspect", path)(e)),
            };
            let mut m = Meta::new(&st, &path)?;
            if m.mount != self.mount {
                return Err(ArchiveError::Unarchivable {
                    path,
                    reason: "another mount is there (a layer's tree holds none)".into(),
                });
            }
            if m.kind == Kind::Symlink {
                m.link = Some(
                    rustix::fs::readlinkat(fd, &name, Vec::new())
                        .map_err(errno_host("read the link", path.clone()))?
                        .into_bytes(),
                );
            }
            // The name is one component of a directory opened without symlinks: the path cannot
            // leave it, and l*xattr does not follow its last component.
            let mut proc = format!("/proc/self/fd/{}/", fd.as_raw_fd()).into_bytes();
            proc.extend_from_slice(name.to_bytes());
            let proc = CString::new(proc).map_err(|_| changed(path.clone()))?;
            (m.xattrs, m.overlay) = read_xattrs(XattrOf::Link(&proc), &path)?;
            out.push((name, m));
        }
        Ok(out)
    }

    /// Opens the directory `name` of `dir`, checking it is the one listed.
    fn open_dir(
        &self,
        dir: &OwnedFd,
        name: &CStr,
        rel: &[u8],
        m: &Meta,
    ) -> Result<OwnedFd, ArchiveError> {
        let path = host(self.top, rel);
        let fd = open_at(dir.as_fd(), name, OFlags::RDONLY | OFlags::DIRECTORY)
            .map_err(errno_host("open", path.clone()))?;
        let st = statx_fd(fd.as_fd()).map_err(errno_host("inspect", path.clone()))?;
        if (st.stx_dev_major, st.stx_dev_minor, st.stx_ino) != m.id || mount_key(&st) != self.mount
        {
            return Err(changed(path));
        }
        Ok(fd)
    }

    /// Opens the top directory.
    fn open_top(top: &Path) -> Result<(OwnedFd, Meta, MountKey), ArchiveError> {
        let fd = rustix::fs::open(
            top,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            RMode::empty(),
        )
        .map_err(errno_host("open", top.to_owned()))?;
        let st = statx_fd(fd.as_fd()).map_err(errno_host("inspect", top.to_owned()))?;
        let mut m = Meta::new(&st, top)?;
        (m.xattrs, m.overlay) = read_xattrs(XattrOf::Fd(fd.as_fd()), top)?;
        let mount = m.mount;
        Ok((fd, m, mount))
    }
}

/// The walk that writes the archive.
struct Packer<'a, 'w> {
    w: TarWriter<'w>,
    upper: bool,
    tree: Side<'a>,
    parent: Option<Side<'a>>,
    /// Regular files with more than one link already written: their first path.
    links: HashMap<(u32, u32, u64), Vec<u8>>,
    /// Directories of the tree whose own entries wait for something below them to be archived
    /// (in the difference of two trees, an unchanged directory is archived only then).
    pending: Vec<(Vec<u8>, Meta)>,
}

impl Packer<'_, '_> {
    /// Writes the directories that wait, outermost first.
    fn flush(&mut self) -> Result<(), ArchiveError> {
        for (rel, m) in std::mem::take(&mut self.pending) {
            self.dir_header(&rel, &m)?;
        }
        Ok(())
    }

    fn dir_header(&mut self, rel: &[u8], m: &Meta) -> Result<(), ArchiveError> {
        self.check(rel, m)?;
        self.w
            .header(&entry_name(rel, true), b'5', m, 0, None, rel.is_empty())
    }

    /// What may not be archived: a name that would read as a whiteout, attributes an unpack
    /// refuses, overlayfs redirects and metadata-only copies (the data is in a lower layer).
    fn check(&self, rel: &[u8], m: &Meta) -> Result<(), ArchiveError> {
        let path = || host(self.tree.top, rel);
        let name = rel.rsplit(|b| *b == b'/').next().unwrap_or(rel);
        if name.starts_with(WHITEOUT.as_bytes()) {
            return Err(ArchiveError::Unarchivable {
                path: path(),
                reason: format!("a name starting with {WHITEOUT} is a whiteout in an OCI layer"),
            });
        }
        if let Some((k, _)) = m.xattrs.iter().find(|(k, _)| !xattr_allowed(k)) {
            return Err(ArchiveError::Unarchivable {
                path: path(),
                reason: format!(
                    "the extended attribute {} is never unpacked (only user.*, \
                     security.capability, security.selinux and POSIX ACLs are)",
                    k.escape_ascii()
                ),
            });
        }
        if self.upper {
            for bad in [
                &b"trusted.overlay.redirect"[..],
                b"trusted.overlay.metacopy",
                b"trusted.overlay.whiteout",
            ] {
                if m.overlay_attr(bad).is_some() {
                    return Err(ArchiveError::Unarchivable {
                        path: path(),
                        reason: format!("overlayfs marks it with {}", bad.escape_ascii()),
                    });
                }
            }
        }
        Ok(())
    }

    /// Archives the directory `new` (at `rel`, with `meta`) and what is below it: all of it
    /// for an overlay upper directory, else what differs from `old` (the parent tree's directory
    /// at the same path, if there is one). `changed`: the directory's own entry is archived
    /// whatever is below it.
    fn dir(
        &mut self,
        new: &OwnedFd,
        old: Option<&OwnedFd>,
        rel: &[u8],
        meta: Meta,
        changed: bool,
    ) -> Result<(), ArchiveError> {
        let mut children = self.tree.list(new, rel)?;
        let mut whiteouts: Vec<Vec<u8>> = Vec::new();
        let mut olds: HashMap<Vec<u8>, Meta> = HashMap::new();
        let opaque = self.upper && meta.overlay_attr(b"trusted.overlay.opaque") == Some(&b"y"[..]);
        if self.upper {
            // A whiteout is overlayfs's device 0:0; a socket (tar has no form for it) hides
            // what is below it like one.
            children.retain(|(name, m)| {
                let gone = m.is_whiteout() || m.kind == Kind::Socket;
                if gone {
                    whiteouts.push(name.to_bytes().to_vec());
                }
                !gone
            });
        } else {
            // Sockets are left out; one that replaced an entry of the parent is a whiteout.
            children.retain(|(_, m)| m.kind != Kind::Socket);
            if let (Some(old), Some(side)) = (old, self.parent) {
                for (name, om) in side.list(old, rel)? {
                    if om.kind == Kind::Socket {
                        continue;
                    }
                    match children.binary_search_by(|(n, _)| n.as_c_str().cmp(&name)) {
                        Err(_) => whiteouts.push(name.to_bytes().to_vec()),
                        Ok(i) => {
                            // A directory replaced by something else, or the other way round:
                            // the old one is gone, and the new entry is archived after it.
                            if (om.kind == Kind::Dir) != (children[i].1.kind == Kind::Dir) {
                                whiteouts.push(name.to_bytes().to_vec());
                            } else {
                                olds.insert(name.to_bytes().to_vec(), om);
                            }
                        }
                    }
                }
            }
        }
        let at = self.pending.len();
        if changed || opaque || !whiteouts.is_empty() {
            self.flush()?;
            self.dir_header(rel, &meta)?;
            if opaque {
                self.w.marker(&join(rel, OPAQUE.as_bytes()))?;
            }
            for name in &whiteouts {
                let mut n = WHITEOUT.as_bytes().to_vec();
                n.extend_from_slice(name);
                self.w.marker(&join(rel, &n))?;
            }
        } else {
            self.pending.push((rel.to_vec(), meta));
        }
        for (name, m) in children {
            let crel = join(rel, name.to_bytes());
            let old_m = olds.remove(name.to_bytes());
            let same = !self.upper && old_m.as_ref().is_some_and(|o| m.same_as(o));
            if m.kind == Kind::Dir {
                let fd = self.tree.open_dir(new, &name, &crel, &m)?;
                let old_fd = match (old, self.parent, &old_m) {
                    (Some(old), Some(side), Some(om)) if om.kind == Kind::Dir => {
                        Some(side.open_dir(old, &name, &crel, om)?)
                    }
                    _ => None,
                };
                self.dir(&fd, old_fd.as_ref(), &crel, m, !same)?;
            } else if !same {
                self.flush()?;
                self.leaf(new, &name, &crel, &m)?;
            }
        }
        // Still waiting: nothing below it was archived, and it did not change itself.
        self.pending.truncate(at);
        Ok(())
    }

    /// Archives an entry that is not a directory (`name` in `dir`, at `rel`).
    fn leaf(
        &mut self,
        dir: &OwnedFd,
        name: &CStr,
        rel: &[u8],
        m: &Meta,
    ) -> Result<(), ArchiveError> {
        self.check(rel, m)?;
        let entry = entry_name(rel, false);
        match m.kind {
            Kind::File => {
                if m.nlink > 1 {
                    if let Some(first) = self.links.get(&m.id) {
                        let first = first.clone();
                        return self.w.header(&entry, b'1', m, 0, Some(first), false);
                    }
                    self.links.insert(m.id, entry.clone());
                }
                let path = host(self.tree.top, rel);
                // Non-blocking: a FIFO swapped in after the listing is never waited on (and is
                // caught by the identity check).
                let fd = open_at(dir.as_fd(), name, OFlags::RDONLY | OFlags::NONBLOCK)
                    .map_err(errno_host("open", path.clone()))?;
                let st = statx_fd(fd.as_fd()).map_err(errno_host("inspect", path.clone()))?;
                if (st.stx_dev_major, st.stx_dev_minor, st.stx_ino) != m.id
                    || Kind::of(st.stx_mode) != Some(Kind::File)
                {
                    return Err(changed(path));
                }
                self.w.header(&entry, b'0', m, m.size, None, false)?;
                let mut f = File::from(fd);
                let mut buf = vec![
                    0u8;
                    COPY_SIZE.min(
                        usize::try_from(m.size)
                            .unwrap_or(usize::MAX)
                            .saturating_add(1)
                    )
                ];
                let mut copied = 0u64;
                let short = loop {
                    let want = (m.size - copied).min(buf.len() as u64) as usize;
                    if want == 0 {
                        break false;
                    }
                    let n = match f.read(&mut buf[..want]) {
                        Ok(0) => break true,
                        Ok(n) => n,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) => return Err(io_at("read", &path)(e)),
                    };
                    self.w.put(&buf[..n])?;
                    copied += n as u64;
                };
                let more = f.read(&mut buf[..1]).map_err(io_at("read", &path))?;
                if short || more != 0 {
                    return Err(ArchiveError::Unarchivable {
                        path,
                        reason: "it changed size while it was read".into(),
                    });
                }
                self.w.pad()
            }
            Kind::Symlink => self.w.header(&entry, b'2', m, 0, m.link.clone(), false),
            Kind::Char => self.w.header(&entry, b'3', m, 0, None, false),
            Kind::Block => self.w.header(&entry, b'4', m, 0, None, false),
            Kind::Fifo => self.w.header(&entry, b'6', m, 0, None, false),
            Kind::Dir | Kind::Socket => Ok(()),
        }
    }
}

/// Writes the archive of `source` to `out` (see the module's documentation for its form).
///
/// The walk goes through directory descriptors (`openat` with `O_NOFOLLOW | O_DIRECTORY`, `statx`
/// with `AT_SYMLINK_NOFOLLOW`): a symlink is archived, never followed. It never enters another
/// mount (compared by mount id, on kernels before 5.8 by device): a mount below the top is an
/// error naming it. Nested btrfs subvolumes are on the same mount and walked like directories.
/// A file that changes size while it is read, or an entry replaced while the walk looks at it, is
/// an error, never a short or long entry.
///
/// Sockets are left out (tar has no form for them); a socket where the parent had an entry, or in
/// an overlay upper directory, is archived as a whiteout (the path holds nothing archivable).
pub fn pack(source: Source<'_>, out: &mut dyn Write) -> Result<Packed, ArchiveError> {
    let (top, parent, upper) = match source {
        Source::Upper(t) => (t, None, true),
        Source::Diff { parent, tree } => (tree, parent, false),
    };
    let (fd, meta, mount) = Side::open_top(top)?;
    let old = parent.map(Side::open_top).transpose()?;
    let mut p = Packer {
        w: TarWriter::new(out),
        upper,
        tree: Side { top, mount },
        parent: parent
            .zip(old.as_ref())
            .map(|(top, (_, _, mount))| Side { top, mount: *mount }),
        links: HashMap::new(),
        pending: Vec::new(),
    };
    p.dir(&fd, old.as_ref().map(|(fd, _, _)| fd), b"", meta, true)?;
    p.w.finish()
}

fn entry_name(rel: &[u8], dir: bool) -> Vec<u8> {
    if rel.is_empty() {
        return b"./".to_vec();
    }
    let mut n = rel.to_vec();
    if dir {
        n.push(b'/');
    }
    n
}

/// Writes tar blocks, hashing and counting them.
struct TarWriter<'w> {
    out: &'w mut dyn Write,
    hash: Sha256,
    bytes: u64,
    entries: u64,
}

impl TarWriter<'_> {
    fn new(out: &mut dyn Write) -> TarWriter<'_> {
        TarWriter {
            out,
            hash: Sha256::new(),
            bytes: 0,
            entries: 0,
        }
    }

    fn put(&mut self, b: &[u8]) -> Result<(), ArchiveError> {
        self.out
            .write_all(b)
            .map_err(io_at("write the archive", Path::new("-")))?;
        self.hash.update(b);
        self.bytes += b.len() as u64;
        Ok(())
    }

    fn pad(&mut self) -> Result<(), ArchiveError> {
        let rem = (self.bytes % BLOCK as u64) as usize;
        if rem != 0 {
            self.put(&[0u8; BLOCK][..BLOCK - rem])?;
        }
        Ok(())
    }

    /// An empty regular file entry (a whiteout or the opaque marker), owned by root, mode 0,
    /// time 0.
    fn marker(&mut self, name: &[u8]) -> Result<(), ArchiveError> {
        self.header(name, b'0', &Meta::marker(), 0, None, false)
    }

    fn header(
        &mut self,
        name: &[u8],
        kind: u8,
        m: &Meta,
        size: u64,
        link: Option<Vec<u8>>,
        top: bool,
    ) -> Result<(), ArchiveError> {
        let mut pax: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        if name.len() > 100 {
            pax.push((b"path".to_vec(), name.to_vec()));
        }
        if let Some(l) = &link
            && l.len() > 100
        {
            pax.push((b"linkpath".to_vec(), l.clone()));
        }
        let mtime = if top { (0, 0) } else { m.mtime };
        if mtime.1 != 0 || mtime.0 < 0 || mtime.0 > 0o77777777777 {
            pax.push((b"mtime".to_vec(), format_time(mtime).into_bytes()));
        }
        // Sizes from 8 GiB on: PAX (the ustar field then holds the GNU base-256 form).
        if size > 0o77777777777 {
            pax.push((b"size".to_vec(), size.to_string().into_bytes()));
        }
        const MAX_ID: u32 = 0o7777777;
        if m.uid > MAX_ID {
            pax.push((b"uid".to_vec(), m.uid.to_string().into_bytes()));
        }
        if m.gid > MAX_ID {
            pax.push((b"gid".to_vec(), m.gid.to_string().into_bytes()));
        }
        for (k, v) in &m.xattrs {
            let mut key = b"SCHILY.xattr.".to_vec();
            key.extend_from_slice(k);
            pax.push((key, v.clone()));
        }
        if !pax.is_empty() {
            let mut data = Vec::new();
            for (k, v) in &pax {
                data.extend_from_slice(&pax_record(k, v));
            }
            let mut h = tar::Header::new_ustar();
            set_name(&mut h, b"././@PaxHeader");
            h.set_mode(0o644);
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(0);
            h.set_size(data.len() as u64);
            h.set_entry_type(tar::EntryType::XHeader);
            h.set_cksum();
            self.put(h.as_bytes())?;
            self.put(&data)?;
            self.pad()?;
        }
        let mut h = tar::Header::new_ustar();
        set_name(&mut h, &name[..name.len().min(100)]);
        h.set_mode(m.mode);
        h.set_uid(u64::from(m.uid.min(MAX_ID)));
        h.set_gid(u64::from(m.gid.min(MAX_ID)));
        h.set_mtime(u64::try_from(mtime.0).unwrap_or(0).min(0o77777777777));
        h.set_size(size);
        h.set_entry_type(tar::EntryType::new(kind));
        if let Some(l) = &link {
            h.as_old_mut().linkname[..l.len().min(100)].copy_from_slice(&l[..l.len().min(100)]);
        }
        if kind == b'3' || kind == b'4' {
            let (major, minor) = m.rdev;
            h.set_device_major(major)
                .and_then(|()| h.set_device_minor(minor))
                .map_err(|e| ArchiveError::Unarchivable {
                    path: PathBuf::from(OsStr::from_bytes(name)),
                    reason: format!("device {major}:{minor}: {e}"),
                })?;
        }
        h.set_cksum();
        self.put(h.as_bytes())?;
        self.entries += 1;
        Ok(())
    }

    fn finish(mut self) -> Result<Packed, ArchiveError> {
        self.put(&[0u8; 2 * BLOCK])?;
        self.out
            .flush()
            .map_err(io_at("write the archive", Path::new("-")))?;
        Ok(Packed {
            entries: self.entries,
            bytes: self.bytes,
            sha256: self.hash.finalize().into(),
        })
    }
}

fn set_name(h: &mut tar::Header, name: &[u8]) {
    let old = h.as_old_mut();
    old.name = [0; 100];
    old.name[..name.len()].copy_from_slice(name);
}

/// One PAX record: `LEN key=value\n`, LEN counting itself.
fn pax_record(key: &[u8], value: &[u8]) -> Vec<u8> {
    let body = key.len() + value.len() + 3; // ' ', '=', '\n'
    let mut len = body + 1;
    while len != body + len.to_string().len() {
        len = body + len.to_string().len();
    }
    let mut r = format!("{len} ").into_bytes();
    r.extend_from_slice(key);
    r.push(b'=');
    r.extend_from_slice(value);
    r.push(b'\n');
    r
}

/// A time as a PAX decimal: seconds, and nine digits of fraction when there is one.
fn format_time((secs, nsec): (i64, u32)) -> String {
    if nsec == 0 {
        return secs.to_string();
    }
    if secs >= 0 {
        format!("{secs}.{nsec:09}")
    } else {
        // secs + nsec/1e9 is negative: -(|secs| - 1) - (1e9 - nsec)/1e9.
        format!("-{}.{:09}", -(secs + 1), 1_000_000_000 - nsec)
    }
}

fn parse_time(s: &[u8]) -> Option<(i64, u32)> {
    let s = std::str::from_utf8(s).ok()?;
    let (neg, s) = match s.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, s),
    };
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    if int.is_empty() || !int.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let int: i64 = int.parse().ok()?;
    let mut digits: String = frac.chars().take(9).collect();
    while digits.len() < 9 {
        digits.push('0');
    }
    let nsec: u32 = digits.parse().ok()?;
    Some(if !neg {
        (int, nsec)
    } else if nsec == 0 {
        (int.checked_neg()?, 0)
    } else {
        (int.checked_neg()?.checked_sub(1)?, 1_000_000_000 - nsec)
    })
}

// ---------------------------------------------------------------------------------------------
// Unpacking.

/// A reader that remembers how much it gave and its last block.
struct Watched<'r> {
    inner: &'r mut dyn Read,
    pos: u64,
    tail: Vec<u8>,
}

impl Read for Watched<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.pos += n as u64;
        self.tail.extend_from_slice(&buf[..n]);
        if self.tail.len() > BLOCK {
            let cut = self.tail.len() - BLOCK;
            self.tail.drain(..cut);
        }
        Ok(n)
    }
}

/// The path of an entry inside the top (`/` between components, as bytes): `None` for the top
/// itself (`.` or `./`).
fn entry_path(raw: &[u8]) -> Result<Option<Vec<u8>>, String> {
    if raw.is_empty() {
        return Err("an empty path".into());
    }
    if raw.contains(&0) {
        return Err("a NUL byte in the path".into());
    }
    if raw.starts_with(b"/") {
        return Err("an absolute path".into());
    }
    if raw.len() > 4096 {
        return Err("a path longer than 4096 bytes".into());
    }
    let mut parts: Vec<&[u8]> = Vec::new();
    for part in raw.split(|b| *b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => return Err("a path with `..`".into()),
            p if p.len() > 255 => return Err("a name longer than 255 bytes".into()),
            p => parts.push(p),
        }
    }
    if parts[..parts.len().saturating_sub(1)]
        .iter()
        .any(|p| p.starts_with(WHITEOUT.as_bytes()))
    {
        return Err(format!("a directory named {WHITEOUT}... on the way"));
    }
    Ok((!parts.is_empty()).then(|| parts.join(&b'/')))
}

/// A path inside the top, shown as `/REL`.
fn shown_rel(rel: &[u8]) -> PathBuf {
    let mut p = b"/".to_vec();
    p.extend_from_slice(rel);
    PathBuf::from(OsStr::from_bytes(&p))
}

fn errno_at(op: &'static str, rel: &[u8]) -> impl FnOnce(nix::errno::Errno) -> ArchiveError {
    let path = shown_rel(rel);
    move |e| ArchiveError::Io {
        op,
        path,
        source: io::Error::from(e),
    }
}

fn rerrno_at(op: &'static str, rel: &[u8]) -> impl FnOnce(Errno) -> ArchiveError {
    let path = shown_rel(rel);
    move |e| ArchiveError::Io {
        op,
        path,
        source: e.into(),
    }
}

/// `DIR` and `NAME` of `DIR/NAME` (`DIR` empty at the top).
fn split_rel(rel: &[u8]) -> (&[u8], &[u8]) {
    match rel.iter().rposition(|b| *b == b'/') {
        Some(i) => (&rel[..i], &rel[i + 1..]),
        None => (&b""[..], rel),
    }
}

/// Access and modification times of a directory, to restore.
type Times = (TimeSpec, TimeSpec);

/// The unpacking state.
struct Unpacker {
    top: OwnedFd,
    upper: bool,
    /// The last parent directory opened, by path.
    cached: Option<(Vec<u8>, OwnedFd)>,
    /// Every path an entry of this archive made.
    seen: HashSet<Vec<u8>>,
    /// Regular files this archive made (what a hard link may name).
    files: HashSet<Vec<u8>>,
    /// Directories of the archive and their modification times, set at the end.
    dirs: HashMap<Vec<u8>, (i64, u32)>,
    /// Directories not in the archive (and the top) whose listing changed: their times before.
    touched: HashMap<Vec<u8>, Times>,
    /// The entry being unpacked, as the archive gives it (for errors).
    current: String,
}

fn stat_kind(st: &nix::sys::stat::FileStat) -> SFlag {
    SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT
}

/// Opens directory `name` of `dir`: never through a symlink, never onto another mount.
fn open_beneath(dir: &OwnedFd, name: &[u8]) -> nix::Result<OwnedFd> {
    let how = OpenHow::new()
        .flags(OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC)
        .resolve(
            ResolveFlag::RESOLVE_BENEATH
                | ResolveFlag::RESOLVE_NO_SYMLINKS
                | ResolveFlag::RESOLVE_NO_MAGICLINKS
                | ResolveFlag::RESOLVE_NO_XDEV,
        );
    openat2(dir, OsStr::from_bytes(name), how)
}

impl Unpacker {
    /// Opens directory `rel` (empty: the top) through real directories of the top's mount only,
    /// component by component; makes missing ones (root-owned, 0755) when `make`.
    fn open_dir(&mut self, rel: &[u8], make: bool) -> Result<OwnedFd, ArchiveError> {
        let mut fd = nix::unistd::dup(self.top.as_fd()).map_err(errno_at("open", b""))?;
        let mut so_far: Vec<u8> = Vec::new();
        for part in rel.split(|b| *b == b'/').filter(|p| !p.is_empty()) {
            let parent_rel = so_far.clone();
            so_far = join(&so_far, part);
            let next = match open_beneath(&fd, part) {
                Err(nix::errno::Errno::ENOENT) if make => {
                    self.touch(&parent_rel, &fd);
                    nix::sys::stat::mkdirat(
                        &fd,
                        OsStr::from_bytes(part),
                        Mode::from_bits_truncate(0o755),
                    )
                    .map_err(errno_at("make", &so_far))?;
                    open_beneath(&fd, part).map_err(errno_at("open", &so_far))?
                }
                Err(nix::errno::Errno::ELOOP | nix::errno::Errno::ENOTDIR) => {
                    return Err(refused(
                        &self.current,
                        format!(
                            "{} is not a directory (a symlink is never followed)",
                            shown_rel(&so_far).display()
                        ),
                    ));
                }
                Err(nix::errno::Errno::EXDEV) => {
                    return Err(refused(
                        &self.current,
                        format!("{} is another mount", shown_rel(&so_far).display()),
                    ));
                }
                Err(e) => return Err(errno_at("open", &so_far)(e)),
                Ok(f) => f,
            };
            fd = next;
        }
        Ok(fd)
    }

    /// The parent directory of `rel` (made if missing).
    fn parent(&mut self, rel: &[u8]) -> Result<OwnedFd, ArchiveError> {
        let (dir, _) = split_rel(rel);
        if let Some((d, fd)) = &self.cached
            && d == dir
        {
            return nix::unistd::dup(fd.as_fd()).map_err(errno_at("open", dir));
        }
        let fd = self.open_dir(dir, true)?;
        let keep = nix::unistd::dup(fd.as_fd()).map_err(errno_at("open", dir))?;
        self.cached = Some((dir.to_owned(), keep));
        Ok(fd)
    }

    /// Remembers the times of directory `dir` before its listing changes, unless the archive
    /// sets them.
    fn touch(&mut self, dir: &[u8], fd: &OwnedFd) {
        if self.touched.contains_key(dir) || self.dirs.contains_key(dir) {
            return;
        }
        if let Ok(st) = nix::sys::stat::fstat(fd) {
            let t = (
                TimeSpec::new(st.st_atime, st.st_atime_nsec),
                TimeSpec::new(st.st_mtime, st.st_mtime_nsec),
            );
            self.touched.insert(dir.to_owned(), t);
        }
    }

    /// Removes whatever is at `name` in `dir` (recursively for a directory, never leaving the
    /// top's mount). Forgets the cached parent directory (it may be what went).
    fn remove(&mut self, dir: &OwnedFd, name: &[u8], rel: &[u8]) -> Result<(), ArchiveError> {
        self.cached = None;
        remove_at(dir, name, rel)
    }

    /// Removes everything in directory `fd` (at `rel`) that this archive did not make.
    fn empty_but_ours(&mut self, fd: &OwnedFd, rel: &[u8]) -> Result<(), ArchiveError> {
        self.cached = None;
        for name in list_dir(fd, rel)? {
            let child = join(rel, &name);
            if !self.seen.contains(&child) {
                remove_at(fd, &name, &child)?;
            }
        }
        Ok(())
    }
}

/// The names in directory `fd` (at `rel`), without `.` and `..`.
fn list_dir(fd: &OwnedFd, rel: &[u8]) -> Result<Vec<Vec<u8>>, ArchiveError> {
    let mut list = Dir::read_from(fd).map_err(rerrno_at("list", rel))?;
    let mut names = Vec::new();
    while let Some(e) = list.read() {
        let e = e.map_err(rerrno_at("list", rel))?;
        let name = e.file_name();
        if name != c"." && name != c".." {
            names.push(name.to_bytes().to_vec());
        }
    }
    Ok(names)
}

/// Removes whatever is at `name` in `dir` (at `rel`): a directory with everything in it, never
/// following a symlink nor entering another mount.
fn remove_at(dir: &OwnedFd, name: &[u8], rel: &[u8]) -> Result<(), ArchiveError> {
    let cname = OsStr::from_bytes(name);
    match nix::sys::stat::fstatat(dir, cname, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Err(nix::errno::Errno::ENOENT) => Ok(()),
        Err(e) => Err(errno_at("inspect", rel)(e)),
        Ok(st) if stat_kind(&st) == SFlag::S_IFDIR => {
            let sub = match open_beneath(dir, name) {
                Ok(fd) => fd,
                Err(nix::errno::Errno::EXDEV) => {
                    return Err(refused_rel(rel, "another mount is there"));
                }
                Err(e) => return Err(errno_at("open", rel)(e)),
            };
            for child in list_dir(&sub, rel)? {
                remove_at(&sub, &child, &join(rel, &child))?;
            }
            nix::unistd::unlinkat(dir, cname, nix::unistd::UnlinkatFlags::RemoveDir)
                .map_err(errno_at("remove", rel))
        }
        Ok(_) => nix::unistd::unlinkat(dir, cname, nix::unistd::UnlinkatFlags::NoRemoveDir)
            .map_err(errno_at("remove", rel)),
    }
}

fn refused_rel(rel: &[u8], reason: impl Into<String>) -> ArchiveError {
    refused(&String::from_utf8_lossy(rel), reason)
}

/// Whether an extended attribute may be set from an archive (and so is archived).
fn xattr_allowed(name: &[u8]) -> bool {
    name.starts_with(b"user.")
        || matches!(
            name,
            b"security.capability"
                | b"security.selinux"
                | b"system.posix_acl_access"
                | b"system.posix_acl_default"
        )
}

/// One entry's metadata as the archive gives it.
struct Fields {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: (i64, u32),
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

fn ts((s, n): (i64, u32)) -> TimeSpec {
    TimeSpec::new(s, i64::from(n))
}

/// Unpacks the archive `input` into `target`, treating it as hostile (see the module's
/// documentation). On an error, what was unpacked so far stays: the caller discards the target.
pub fn unpack(
    target: Target<'_>,
    input: &mut dyn Read,
    limits: &Limits,
) -> Result<Unpacked, ArchiveError> {
    let (top_path, upper) = match target {
        Target::Upper(p) => (p, true),
        Target::Tree(p) => (p, false),
    };
    let top: OwnedFd = File::options()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
        .open(top_path)
        .map_err(io_at("open", top_path))?
        .into();
    let mut u = Unpacker {
        top,
        upper,
        cached: None,
        seen: HashSet::new(),
        files: HashSet::new(),
        dirs: HashMap::new(),
        touched: HashMap::new(),
        current: String::new(),
    };
    // The top keeps its times (an archive carries none for it).
    let top = nix::unistd::dup(u.top.as_fd()).map_err(|e| io_at("open", top_path)(e.into()))?;
    u.touch(b"", &top);
    let mut watched = Watched {
        inner: input,
        pos: 0,
        tail: Vec::new(),
    };
    let mut done = Unpacked {
        entries: 0,
        bytes: 0,
    };
    {
        let mut archive = tar::Archive::new(&mut watched);
        let entries = archive
            .entries()
            .map_err(|e| refused("-", format!("not a tar stream: {e}")))?
            .raw(true);
        let mut long_name: Option<Vec<u8>> = None;
        let mut long_link: Option<Vec<u8>> = None;
        let mut pax: Option<Vec<u8>> = None;
        for entry in entries {
            let mut entry =
                entry.map_err(|e| refused("-", format!("cannot read the stream: {e}")))?;
            let kind = entry.header().entry_type();
            let slot = if kind.is_gnu_longname() {
                Some(&mut long_name)
            } else if kind.is_gnu_longlink() {
                Some(&mut long_link)
            } else if kind.is_pax_local_extensions() {
                Some(&mut pax)
            } else if kind.is_pax_global_extensions() {
                return Err(refused("-", "a global PAX header"));
            } else {
                None
            };
            if let Some(slot) = slot {
                let size = entry.size();
                if size > META_MAX || slot.is_some() {
                    return Err(refused(
                        "-",
                        format!("a {kind:?} record of {size} bytes (after another, or too big)"),
                    ));
                }
                let mut v = Vec::new();
                entry
                    .read_to_end(&mut v)
                    .map_err(|e| refused("-", format!("cannot read the stream: {e}")))?;
                if v.len() as u64 != size {
                    return Err(refused("-", "the stream ends inside a metadata record"));
                }
                *slot = Some(v);
                continue;
            }
            done.entries += 1;
            if done.entries > limits.max_entries {
                return Err(refused(
                    "-",
                    format!("more than {} entries", limits.max_entries),
                ));
            }
            let pax = pax.take();
            let records: Vec<(Vec<u8>, Vec<u8>)> = match &pax {
                Some(p) => tar::PaxExtensions::new(p)
                    .map(|r| r.map(|e| (e.key_bytes().to_vec(), e.value_bytes().to_vec())))
                    .collect::<Result<_, _>>()
                    .map_err(|e| refused("-", format!("a malformed PAX record: {e}")))?,
                None => Vec::new(),
            };
            let pax_value = |key: &[u8]| {
                records
                    .iter()
                    .rev()
                    .find(|(k, _)| k == key)
                    .map(|(_, v)| v.clone())
            };
            let strip = |mut v: Vec<u8>| {
                while v.last() == Some(&0) {
                    v.pop();
                }
                v
            };
            let h = entry.header().clone();
            let raw = pax_value(b"path")
                .or_else(|| long_name.take().map(strip))
                .unwrap_or_else(|| h.path_bytes().into_owned());
            long_name = None;
            let link = pax_value(b"linkpath")
                .or_else(|| long_link.take().map(strip))
                .or_else(|| h.link_name_bytes().map(std::borrow::Cow::into_owned));
            long_link = None;
            let shown = String::from_utf8_lossy(&raw).into_owned();
            let rel = entry_path(&raw).map_err(|r| refused(&shown, r))?;
            let number = |key: &[u8], header: io::Result<u64>| -> Result<u64, ArchiveError> {
                match pax_value(key) {
                    Some(v) => std::str::from_utf8(&v)
                        .ok()
                        .and_then(|v| v.parse::<u64>().ok())
                        .ok_or_else(|| {
                            refused(
                                &shown,
                                format!("a PAX {} that is not a number", key.escape_ascii()),
                            )
                        }),
                    None => header.map_err(|e| refused(&shown, e.to_string())),
                }
            };
            if number(b"size", Ok(entry.size()))? != entry.size() {
                return Err(refused(&shown, "a PAX size other than the header's"));
            }
            let id = |v: u64| u32::try_from(v).map_err(|_| refused(&shown, format!("owner {v}")));
            let mtime = match pax_value(b"mtime") {
                Some(v) => {
                    parse_time(&v).ok_or_else(|| refused(&shown, "a malformed PAX mtime"))?
                }
                None => (
                    i64::try_from(h.mtime().map_err(|e| refused(&shown, e.to_string()))?)
                        .unwrap_or(i64::MAX),
                    0,
                ),
            };
            let mut xattrs: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
            for (k, v) in &records {
                let Some(name) = k.strip_prefix(b"SCHILY.xattr.") else {
                    continue;
                };
                if !xattr_allowed(name) {
                    return Err(refused(
                        &shown,
                        format!(
                            "the extended attribute {} is never unpacked",
                            name.escape_ascii()
                        ),
                    ));
                }
                if v.len() > limits.max_xattr_value {
                    return Err(refused(
                        &shown,
                        "an extended attribute value over the limit",
                    ));
                }
                // A later record of the same name wins (as for every PAX key).
                xattrs.retain(|(n, _)| n != name);
                xattrs.push((name.to_vec(), v.clone()));
            }
            let fields = Fields {
                mode: h.mode().map_err(|e| refused(&shown, e.to_string()))? & 0o7777,
                uid: id(number(b"uid", h.uid())?)?,
                gid: id(number(b"gid", h.gid())?)?,
                mtime,
                xattrs,
            };
            let size = entry.size();
            if kind.is_file() {
                done.bytes = done.bytes.saturating_add(size);
                if done.bytes > limits.max_bytes {
                    return Err(refused(
                        &shown,
                        format!("more than {} bytes of files", limits.max_bytes),
                    ));
                }
            }
            let e = Entry {
                shown: &shown,
                kind,
                header: &h,
                link,
                fields,
                size,
            };
            u.entry(rel, e, &mut entry)?;
        }
        if long_name.is_some() || long_link.is_some() || pax.is_some() {
            return Err(refused("-", "a metadata record without an entry after it"));
        }
    }
    // The stream must have ended with the end-of-archive blocks, and hold nothing after them.
    let ended = watched.pos >= BLOCK as u64
        && watched.pos.is_multiple_of(BLOCK as u64)
        && watched.tail.len() == BLOCK
        && watched.tail.iter().all(|b| *b == 0);
    if !ended {
        return Err(refused(
            "-",
            "the stream ends without the end-of-archive blocks (cut short?)",
        ));
    }
    let mut rest = Vec::new();
    (&mut watched)
        .take(1 << 20)
        .read_to_end(&mut rest)
        .map_err(|e| refused("-", format!("cannot read the stream: {e}")))?;
    if rest.len() < BLOCK || rest.iter().any(|b| *b != 0) {
        return Err(refused(
            "-",
            "the end of the archive is cut short, or followed by data",
        ));
    }
    u.finish()?;
    Ok(done)
}

/// One entry of the stream, as read.
struct Entry<'a> {
    /// Its path as the archive gives it (lossy), for errors.
    shown: &'a str,
    kind: tar::EntryType,
    header: &'a tar::Header,
    link: Option<Vec<u8>>,
    fields: Fields,
    /// The size of its data.
    size: u64,
}

impl Unpacker {
    fn entry(
        &mut self,
        rel: Option<Vec<u8>>,
        e: Entry<'_>,
        data: &mut dyn Read,
    ) -> Result<(), ArchiveError> {
        let Entry {
            shown,
            kind,
            header: h,
            link,
            fields: f,
            size,
        } = e;
        shown.clone_into(&mut self.current);
        let Some(rel) = rel else {
            // The top: its owners, mode and attributes (its time is never archived).
            if kind != tar::EntryType::Directory {
                return Err(refused(
                    shown,
                    "the top of the tree as something else than a directory",
                ));
            }
            if !self.seen.insert(Vec::new()) {
                return Err(refused(shown, "the top given twice"));
            }
            let top = nix::unistd::dup(self.top.as_fd()).map_err(errno_at("open", b""))?;
            return set_fd(&top, &f, b"", true);
        };
        let (dir, name) = split_rel(&rel);
        let (dir, name) = (dir.to_vec(), name.to_vec());
        if name == OPAQUE.as_bytes() {
            let fd = self.open_dir(&dir, true)?;
            if self.upper {
                rustix::fs::fsetxattr(
                    &fd,
                    "trusted.overlay.opaque",
                    b"y",
                    rustix::fs::XattrFlags::empty(),
                )
                .map_err(rerrno_at("mark opaque", &dir))?;
            } else {
                self.touch(&dir, &fd);
                self.empty_but_ours(&fd, &dir)?;
            }
            return Ok(());
        }
        if let Some(gone) = name.strip_prefix(WHITEOUT.as_bytes()) {
            if gone.is_empty() || gone == b"." || gone == b".." {
                return Err(refused(shown, "a whiteout without a name"));
            }
            let target = join(&dir, gone);
            if self.seen.contains(&target) {
                return Err(refused(shown, "a whiteout of an entry of the same archive"));
            }
            if self.upper {
                let pfd = self.parent(&target)?;
                nix::sys::stat::mknodat(
                    &pfd,
                    OsStr::from_bytes(gone),
                    SFlag::S_IFCHR,
                    Mode::empty(),
                    0,
                )
                .map_err(errno_at("make the whiteout", &target))?;
            } else {
                // Nothing to remove where the directory is not there.
                let pfd = match self.open_dir(&dir, false) {
                    Ok(fd) => fd,
                    Err(ArchiveError::Io { source, .. })
                        if source.kind() == io::ErrorKind::NotFound =>
                    {
                        return Ok(());
                    }
                    Err(e) => return Err(e),
                };
                if nix::sys::stat::fstatat(
                    &pfd,
                    OsStr::from_bytes(gone),
                    AtFlags::AT_SYMLINK_NOFOLLOW,
                )
                .is_ok()
                {
                    self.touch(&dir, &pfd);
                    self.remove(&pfd, gone, &target)?;
                }
            }
            return Ok(());
        }
        if !self.seen.insert(rel.clone()) {
            return Err(refused(shown, "the same path twice"));
        }
        let pfd = self.parent(&rel)?;
        let cname = OsStr::from_bytes(&name);
        let existing = match nix::sys::stat::fstatat(&pfd, cname, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) => Some(st),
            Err(nix::errno::Errno::ENOENT) => None,
            Err(e) => return Err(errno_at("inspect", &rel)(e)),
        };
        let is_dir = kind == tar::EntryType::Directory;
        let keep_dir = is_dir
            && existing
                .as_ref()
                .is_some_and(|st| stat_kind(st) == SFlag::S_IFDIR);
        if !keep_dir {
            self.touch(&dir, &pfd);
            if existing.is_some() {
                self.remove(&pfd, &name, &rel)?;
            }
        }
        let fail = |op: &'static str| errno_at(op, &rel);
        match kind {
            tar::EntryType::Directory => {
                if !keep_dir {
                    nix::sys::stat::mkdirat(&pfd, cname, Mode::from_bits_truncate(0o700))
                        .map_err(fail("make"))?;
                }
                let fd = match open_beneath(&pfd, &name) {
                    Ok(fd) => fd,
                    Err(nix::errno::Errno::EXDEV) => {
                        return Err(refused(shown, "another mount is there"));
                    }
                    Err(e) => return Err(fail("open")(e)),
                };
                set_fd(&fd, &f, &rel, keep_dir)?;
                self.touched.remove(&rel);
                self.dirs.insert(rel.clone(), f.mtime);
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let fd = nix::fcntl::openat(
                    &pfd,
                    cname,
                    OFlag::O_CREAT
                        | OFlag::O_EXCL
                        | OFlag::O_WRONLY
                        | OFlag::O_NOFOLLOW
                        | OFlag::O_CLOEXEC,
                    Mode::from_bits_truncate(0o600),
                )
                .map_err(fail("create"))?;
                let mut file = File::from(fd);
                let n = io::copy(data, &mut file).map_err(|e| ArchiveError::Io {
                    op: "write",
                    path: shown_rel(&rel),
                    source: e,
                })?;
                if n != size {
                    return Err(refused(shown, "the stream ends inside the file"));
                }
                set_fd(&OwnedFd::from(file), &f, &rel, false)?;
                self.files.insert(rel.clone());
            }
            tar::EntryType::Symlink => {
                let target = link.ok_or_else(|| refused(shown, "a symlink without a target"))?;
                if target.is_empty() || target.contains(&0) || target.len() > 4096 {
                    return Err(refused(
                        shown,
                        "a symlink target that is empty, too long or holds NUL",
                    ));
                }
                nix::unistd::symlinkat(OsStr::from_bytes(&target), &pfd, cname)
                    .map_err(fail("make"))?;
                set_at(&pfd, &name, &f, &rel, true)?;
            }
            tar::EntryType::Link => {
                let target = link.ok_or_else(|| refused(shown, "a hard link without a target"))?;
                let target = entry_path(&target)
                    .map_err(|r| refused(shown, format!("a hard link to {r}")))?
                    .ok_or_else(|| refused(shown, "a hard link to the top"))?;
                let missing = || {
                    refused(
                        shown,
                        format!(
                            "a hard link to {}, which is not there",
                            shown_rel(&target).display()
                        ),
                    )
                };
                let (tdir, tname) = split_rel(&target);
                let tfd = self.open_dir(tdir, false).map_err(|_| missing())?;
                let st = nix::sys::stat::fstatat(
                    &tfd,
                    OsStr::from_bytes(tname),
                    AtFlags::AT_SYMLINK_NOFOLLOW,
                )
                .map_err(|_| missing())?;
                let ours = self.files.contains(&target);
                if stat_kind(&st) != SFlag::S_IFREG
                    || (self.upper && !ours)
                    || (!ours && self.seen.contains(&target))
                {
                    return Err(refused(
                        shown,
                        format!(
                            "a hard link to {}, which is not a regular file of this archive",
                            shown_rel(&target).display()
                        ),
                    ));
                }
                nix::unistd::linkat(
                    &tfd,
                    OsStr::from_bytes(tname),
                    &pfd,
                    cname,
                    AtFlags::empty(),
                )
                .map_err(fail("link"))?;
                self.files.insert(rel.clone());
            }
            tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
                let (sflag, dev) = match kind {
                    tar::EntryType::Fifo => (SFlag::S_IFIFO, 0),
                    _ => {
                        let number = |n: io::Result<Option<u32>>| {
                            n.map(Option::unwrap_or_default)
                                .map_err(|e| refused(shown, format!("a device number: {e}")))
                        };
                        let major = number(h.device_major())?;
                        let minor = number(h.device_minor())?;
                        if kind == tar::EntryType::Char && major == 0 && minor == 0 {
                            return Err(refused(
                                shown,
                                "character device 0:0 (an overlay whiteout)",
                            ));
                        }
                        let flag = if kind == tar::EntryType::Char {
                            SFlag::S_IFCHR
                        } else {
                            SFlag::S_IFBLK
                        };
                        (flag, libc::makedev(major, minor))
                    }
                };
                nix::sys::stat::mknodat(&pfd, cname, sflag, Mode::from_bits_truncate(0o600), dev)
                    .map_err(fail("make"))?;
                set_at(&pfd, &name, &f, &rel, false)?;
            }
            other => {
                return Err(refused(
                    shown,
                    format!("a {other:?} entry, which is never unpacked"),
                ));
            }
        }
        Ok(())
    }

    /// Sets the times of the archive's directories and restores those of the others whose
    /// listing changed, deepest first.
    fn finish(mut self) -> Result<(), ArchiveError> {
        let mut all: Vec<(Vec<u8>, Times)> = self
            .dirs
            .drain()
            .map(|(d, t)| (d, (ts(t), ts(t))))
            .chain(self.touched.drain())
            .collect();
        let depth = |d: &[u8]| {
            if d.is_empty() {
                0
            } else {
                1 + d.iter().filter(|b| **b == b'/').count()
            }
        };
        all.sort_by(|a, b| depth(&b.0).cmp(&depth(&a.0)).then_with(|| a.0.cmp(&b.0)));
        for (dir, (atime, mtime)) in all {
            let fd = self.open_dir(&dir, false)?;
            nix::sys::stat::futimens(&fd, &atime, &mtime)
                .map_err(errno_at("set the time of", &dir))?;
        }
        Ok(())
    }
}

/// Owner, mode, attributes and time of an open file or directory; `replace`: attributes it has
/// that the archive does not give are removed (a directory kept under a new entry), but for
/// overlayfs's own.
fn set_fd(fd: &OwnedFd, f: &Fields, rel: &[u8], replace: bool) -> Result<(), ArchiveError> {
    nix::unistd::fchown(fd, Some(Uid::from_raw(f.uid)), Some(Gid::from_raw(f.gid)))
        .map_err(errno_at("chown", rel))?;
    nix::sys::stat::fchmod(fd, Mode::from_bits_truncate(f.mode)).map_err(errno_at("chmod", rel))?;
    if replace {
        let list = match read_sized(
            || rustix::fs::flistxattr_query(fd),
            |buf| rustix::fs::flistxattr(fd, buf),
        ) {
            Ok(l) => l,
            Err(Errno::NOTSUP) => Vec::new(),
            Err(e) => return Err(rerrno_at("list the attributes of", rel)(e)),
        };
        for name in list.split(|b| *b == 0).filter(|n| !n.is_empty()) {
            if name.starts_with(OVERLAY_XATTRS.as_bytes())
                || f.xattrs.iter().any(|(k, _)| k == name)
            {
                continue;
            }
            match rustix::fs::fremovexattr(fd, OsStr::from_bytes(name)) {
                Ok(()) | Err(Errno::NODATA) => {}
                Err(e) => return Err(rerrno_at("remove an attribute of", rel)(e)),
            }
        }
    }
    for (k, v) in &f.xattrs {
        rustix::fs::fsetxattr(fd, OsStr::from_bytes(k), v, rustix::fs::XattrFlags::empty())
            .map_err(rerrno_at("set an attribute of", rel))?;
    }
    if rel.is_empty() {
        return Ok(());
    }
    nix::sys::stat::futimens(fd, &ts(f.mtime), &ts(f.mtime))
        .map_err(errno_at("set the time of", rel))
}

/// Owner, mode (not for a symlink), attributes and time of `name` in `dir`, never following it.
fn set_at(
    dir: &OwnedFd,
    name: &[u8],
    f: &Fields,
    rel: &[u8],
    symlink: bool,
) -> Result<(), ArchiveError> {
    let cname = OsStr::from_bytes(name);
    nix::unistd::fchownat(
        dir,
        cname,
        Some(Uid::from_raw(f.uid)),
        Some(Gid::from_raw(f.gid)),
        AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .map_err(errno_at("chown", rel))?;
    if !symlink {
        // A device node or a FIFO this unpack just made in a directory reached without
        // symlinks: the name is not a symlink (and chmod never opens it).
        nix::sys::stat::fchmodat(
            dir,
            cname,
            Mode::from_bits_truncate(f.mode),
            FchmodatFlags::FollowSymlink,
        )
        .map_err(errno_at("chmod", rel))?;
    }
    // The name is one component of a directory reached without symlinks, so this path cannot
    // leave it; l*xattr does not follow the last component.
    let mut path = format!("/proc/self/fd/{}/", dir.as_raw_fd()).into_bytes();
    path.extend_from_slice(name);
    let path = PathBuf::from(OsStr::from_bytes(&path));
    for (k, v) in &f.xattrs {
        rustix::fs::lsetxattr(
            &path,
            OsStr::from_bytes(k),
            v,
            rustix::fs::XattrFlags::empty(),
        )
        .map_err(rerrno_at("set an attribute of", rel))?;
    }
    nix::sys::stat::utimensat(
        dir,
        cname,
        &ts(f.mtime),
        &ts(f.mtime),
        UtimensatFlags::NoFollowSymlink,
    )
    .map_err(errno_at("set the time of", rel))
}

#[cfg(test)]
mod tests;
