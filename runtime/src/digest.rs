//! The tree digest of a layer: one blake3 digest of a root's full tree, recorded when a layer is
//! sealed and recomputed by `envc verify` to find layers whose tree changed since (tampering, disk
//! corruption).
//!
//! **What it covers**, per entry: the path, the type (regular file, directory, symlink, character
//! or block device, FIFO, socket), the permission bits with setuid, setgid and sticky, the owner
//! and group ids, the modification time (seconds and nanoseconds), every extended attribute
//! (names and values: ACLs, file capabilities, SELinux labels, `user.*`) and by type: a regular
//! file's size and the plain blake3 of its content, a symlink's target, a device's major and
//! minor numbers.
//!
//! **What it leaves out**: access and change times (reading a file or snapshotting a tree changes
//! them), inode numbers and link counts (hard links are recorded as the separate paths they are,
//! each with its own content hash; overlayfs breaks links on copy-up, and a digest must not depend
//! on how the backend stores a tree), directory sizes (a property of the filesystem),
//! overlayfs's own `trusted.overlay.*` attributes (whiteout, opaque and origin markers are the
//! backend's bookkeeping, not part of the root it shows), and the modification time of the top
//! directory itself (recorded as 0): on overlayfs the top of every layer above the base is the
//! layer's own directory, whose time is when its build began, so a layer whose steps are
//! deterministic would otherwise never get the same digest twice.
//!
//! **The walk** goes through directory descriptors (`openat` with `O_NOFOLLOW`, `statx` with
//! `AT_SYMLINK_NOFOLLOW`): a symlink is recorded, never followed. It never enters another mount
//! (compared by mount id, `statx` `STATX_MNT_ID`, as [`crate::tree`] does; on kernels before 5.8
//! by device number): a mount point below the top is an error naming it, because a layer's tree
//! holds no mounts, and a digest that silently stopped at one (or walked into it) would not be
//! the layer's. Nested btrfs subvolumes are on the same mount and are walked like directories.
//! File contents are hashed on up to [`std::thread::available_parallelism`] threads while the
//! walk goes on, each file streamed in pieces of [`READ_SIZE`] bytes.
//!
//! **The encoding** (version 1) is blake3 in derive-key mode with [`LAYER_TREE_CONTEXT`] over:
//! the number of entries (u64 LE), then each entry in canonical order (component by component,
//! names compared as bytes: the order a depth-first walk with sorted children meets them, as in
//! [`envc_plan::digest`]): its path relative to the top (u64 LE length, raw bytes; empty for the
//! top itself), a type tag byte (`f`, `d`, `l`, `c`, `b`, `p`, `s`), the permission bits (u32
//! LE, masked to `0o7777`), uid and gid (u32 LE each), mtime seconds (i64 LE) and nanoseconds (u32
//! LE); then by type: a file's size (u64 LE), a symlink's target (u64 LE length, raw bytes), a
//! device's major and minor (u32 LE each); then the number of extended attributes (u64 LE) and
//! each, sorted by name bytes, as name and value (each u64 LE length, raw bytes); then, for a
//! file, the 32-byte blake3 of its content. Every variable-length field is length-prefixed and
//! every optional part follows from the type tag, so two different trees never feed the same
//! bytes. Changing any of this needs a new context string.
#![forbid(unsafe_code)]

use std::cmp::Ordering;
use std::ffi::{CStr, CString, OsStr};
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering as AtomicOrdering};
use std::sync::mpsc::{Receiver, SyncSender};

use envc_plan::Digest;
use envc_plan::digest::ContentHasher;
use rustix::fs::{AtFlags, CWD, Dir, FileType, Mode, OFlags, Statx, StatxFlags};
use rustix::io::Errno;

/// The context string of layer tree digests (format version 1).
pub const LAYER_TREE_CONTEXT: &str = "envc 2026 layer tree digest v1";

/// How many bytes of a file are read (and hashed) at a time.
pub const READ_SIZE: usize = 256 * 1024;

/// The extended attributes that overlayfs keeps for itself: never part of a digest.
const OVERLAY_XATTRS: &[u8] = b"trusted.overlay.";

/// How many directory descriptors one walk keeps open at most (deeper ones are reopened through
/// `..` on the way up, checked by device and inode).
const MAX_OPEN: usize = 64;

/// How many opened files wait for a hashing thread at most.
const QUEUE: usize = 256;

/// How many times an extended attribute list or value that keeps growing is read again.
const MAX_XATTR_RETRIES: usize = 8;

/// A failure to digest a tree, naming the operation and the path.
#[derive(Debug, thiserror::Error)]
pub enum DigestError {
    /// A filesystem operation failed.
    #[error("cannot {op} {} (digesting the tree at {}): {source}", path.display(), tree.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// To what.
        path: PathBuf,
        /// The tree being digested.
        tree: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Something below the top is another mount: a layer's tree holds none.
    #[error("cannot digest the tree at {}: {} is another mount (a layer's tree holds no mounts; unmount it first)", tree.display(), path.display())]
    OtherMount {
        /// The tree.
        tree: PathBuf,
        /// The mount point.
        path: PathBuf,
    },
    /// An entry was replaced, removed or changed type while it was read.
    #[error("cannot digest the tree at {}: {} changed while it was read", tree.display(), path.display())]
    Changed {
        /// The tree.
        tree: PathBuf,
        /// The entry.
        path: PathBuf,
    },
}

/// Extended attributes: (name, value), sorted by name.
pub type Xattrs = Vec<(Vec<u8>, Vec<u8>)>;

/// What an entry is, with what its type adds to the digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// A regular file: its size and the plain blake3 of its content.
    File {
        /// Bytes.
        size: u64,
        /// The blake3 of its content.
        content: Digest,
    },
    /// A directory.
    Dir,
    /// A symbolic link and its target.
    Symlink {
        /// The target, as bytes.
        target: Vec<u8>,
    },
    /// A character device.
    Char {
        /// Major number.
        major: u32,
        /// Minor number.
        minor: u32,
    },
    /// A block device.
    Block {
        /// Major number.
        major: u32,
        /// Minor number.
        minor: u32,
    },
    /// A FIFO.
    Fifo,
    /// A Unix socket.
    Socket,
}

/// One entry of a tree, as its digest records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The path relative to the top, `/` between components; empty for the top.
    pub path: Vec<u8>,
    /// Its type.
    pub kind: Kind,
    /// Permission bits, setuid, setgid and sticky (`0o7777`).
    pub mode: u32,
    /// Owner id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
    /// Modification time: seconds since the epoch, and nanoseconds.
    pub mtime: (i64, u32),
    /// Extended attributes, sorted by name, without overlayfs's own.
    pub xattrs: Xattrs,
}

/// The digest of `entries` (in any order: they are put in canonical order first).
pub fn encode(mut entries: Vec<Entry>) -> Digest {
    entries.sort_by(|a, b| canonical_order(&a.path, &b.path));
    let mut h = blake3::Hasher::new_derive_key(LAYER_TREE_CONTEXT);
    let put = |h: &mut blake3::Hasher, b: &[u8]| {
        h.update(&(b.len() as u64).to_le_bytes());
        h.update(b);
    };
    h.update(&(entries.len() as u64).to_le_bytes());
    for e in &entries {
        put(&mut h, &e.path);
        let tag: &[u8; 1] = match e.kind {
            Kind::File { .. } => b"f",
            Kind::Dir => b"d",
            Kind::Symlink { .. } => b"l",
            Kind::Char { .. } => b"c",
            Kind::Block { .. } => b"b",
            Kind::Fifo => b"p",
            Kind::Socket => b"s",
        };
        h.update(tag);
        h.update(&(e.mode & 0o7777).to_le_bytes());
        h.update(&e.uid.to_le_bytes());
        h.update(&e.gid.to_le_bytes());
        h.update(&e.mtime.0.to_le_bytes());
        h.update(&e.mtime.1.to_le_bytes());
        match &e.kind {
            Kind::File { size, .. } => {
                h.update(&size.to_le_bytes());
            }
            Kind::Symlink { target } => put(&mut h, target),
            Kind::Char { major, minor } | Kind::Block { major, minor } => {
                h.update(&major.to_le_bytes());
                h.update(&minor.to_le_bytes());
            }
            Kind::Dir | Kind::Fifo | Kind::Socket => {}
        }
        h.update(&(e.xattrs.len() as u64).to_le_bytes());
        for (name, value) in &e.xattrs {
            put(&mut h, name);
            put(&mut h, value);
        }
        if let Kind::File { content, .. } = &e.kind {
            h.update(&content.0);
        }
    }
    Digest(*h.finalize().as_bytes())
}

/// The canonical order of relative paths: component by component, each compared as bytes (`a`,
/// `a/b`, `a.c`), the order of a depth-first walk with sorted children.
fn canonical_order(a: &[u8], b: &[u8]) -> Ordering {
    fn parts(p: &[u8]) -> impl Iterator<Item = &[u8]> {
        p.split(|&c| c == b'/').filter(|s| !s.is_empty())
    }
    parts(a).cmp(parts(b))
}

/// The tree digest of the directory `dir` (see the module's documentation for what it covers).
/// `dir` itself is opened without following a symlink there; the components before it are
/// resolved as usual.
pub fn tree_digest(dir: &Path) -> Result<Digest, DigestError> {
    walk_tree(dir).map(encode)
}

/// Every entry of the tree at `dir`, with file contents hashed on several threads.
pub fn walk_tree(dir: &Path) -> Result<Vec<Entry>, DigestError> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let (tx, rx) = std::sync::mpsc::sync_channel::<Job>(QUEUE);
    let rx = Mutex::new(rx);
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|_| s.spawn(|| hash_files(dir, &rx, &stop)))
            .collect();
        let walked = Walk {
            tree: dir,
            jobs: tx,
            stop: &stop,
            files: 0,
        }
        .run();
        if walked.is_err() {
            stop.store(true, AtomicOrdering::Relaxed);
        }
        let mut contents = Vec::new();
        let mut failed = None;
        for w in workers {
            match w.join() {
                Ok(Ok(done)) => contents.extend(done),
                Ok(Err(e)) => {
                    failed.get_or_insert(e);
                }
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        // A hashing thread's error stops the walk early, so it comes first.
        if let Some(e) = failed {
            return Err(e);
        }
        let (mut entries, slots) = walked?;
        for (slot, digest) in contents {
            if let Kind::File { content, .. } = &mut entries[slots[slot]].kind {
                *content = digest;
            }
        }
        Ok(entries)
    })
}

/// A regular file opened by the walk, for a hashing thread.
struct Job {
    /// Which file (the walk's count).
    slot: usize,
    file: File,
    /// Its path on the host, for errors.
    path: PathBuf,
}

/// A hashing thread: hashes the files the walk sends until it is done. After an error (its own or
/// the walk's) it takes the remaining files without reading them, so the walk is never blocked.
fn hash_files(
    tree: &Path,
    jobs: &Mutex<Receiver<Job>>,
    stop: &AtomicBool,
) -> Result<Vec<(usize, Digest)>, DigestError> {
    let mut buf = vec![0u8; READ_SIZE];
    let mut done = Vec::new();
    let mut failed = None;
    loop {
        let job = match jobs.lock() {
            Ok(rx) => rx.recv(),
            // Another hashing thread panicked; its panic is what the caller reports.
            Err(_) => break,
        };
        let Ok(job) = job else { break };
        if stop.load(AtomicOrdering::Relaxed) {
            continue;
        }
        match hash_file(job.file, &mut buf) {
            Ok(d) => done.push((job.slot, d)),
            Err(source) => {
                stop.store(true, AtomicOrdering::Relaxed);
                failed = Some(DigestError::Io {
                    op: "read",
                    path: job.path,
                    tree: tree.to_owned(),
                    source,
                });
            }
        }
    }
    match failed {
        Some(e) => Err(e),
        None => Ok(done),
    }
}

fn hash_file(mut file: File, buf: &mut [u8]) -> io::Result<Digest> {
    let mut h = ContentHasher::new();
    loop {
        match file.read(buf) {
            Ok(0) => return Ok(h.finish()),
            Ok(n) => h.update(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Which mount (or, on kernels before 5.8, which device) an entry is on (also the layer
/// archive's walk, [`crate::oci::archive`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MountKey {
    Mount(u64),
    Device(u32, u32),
}

/// The mount key of a statx result asked with `STATX_MNT_ID`.
pub(crate) fn mount_key(st: &Statx) -> MountKey {
    if st.stx_mask & StatxFlags::MNT_ID.bits() != 0 {
        MountKey::Mount(st.stx_mnt_id)
    } else {
        MountKey::Device(st.stx_dev_major, st.stx_dev_minor)
    }
}

/// What statx is asked for.
const WANT: StatxFlags = StatxFlags::TYPE
    .union(StatxFlags::MODE)
    .union(StatxFlags::UID)
    .union(StatxFlags::GID)
    .union(StatxFlags::MTIME)
    .union(StatxFlags::INO)
    .union(StatxFlags::SIZE)
    .union(StatxFlags::MNT_ID);

fn stat_at(dir: BorrowedFd<'_>, name: &CStr) -> Result<Statx, Errno> {
    rustix::fs::statx(dir, name, AtFlags::SYMLINK_NOFOLLOW, WANT)
}

fn stat_fd(fd: impl AsFd) -> Result<Statx, Errno> {
    rustix::fs::statx(
        fd,
        c"",
        AtFlags::EMPTY_PATH | AtFlags::SYMLINK_NOFOLLOW,
        WANT,
    )
}

/// The identity of an opened directory or file: device and inode.
fn ident(st: &Statx) -> (u32, u32, u64) {
    (st.stx_dev_major, st.stx_dev_minor, st.stx_ino)
}

/// Opens without following a symlink and without updating the access time where that is allowed
/// (`O_NOATIME` needs ownership or CAP_FOWNER: without it, opened the usual way).
fn open_noatime(at: BorrowedFd<'_>, name: &CStr, flags: OFlags) -> Result<OwnedFd, Errno> {
    let flags = flags | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NOCTTY;
    match rustix::fs::openat(at, name, flags | OFlags::NOATIME, Mode::empty()) {
        Err(Errno::PERM) => rustix::fs::openat(at, name, flags, Mode::empty()),
        r => r,
    }
}

fn open_dir(at: BorrowedFd<'_>, name: &CStr) -> Result<OwnedFd, Errno> {
    open_noatime(at, name, OFlags::RDONLY | OFlags::DIRECTORY)
}

/// A directory being walked.
struct Frame {
    /// Its descriptor; `None` while closed to keep within [`MAX_OPEN`].
    fd: Option<OwnedFd>,
    /// Its device and inode, to check it when it is reopened through a child's `..`.
    id: (u32, u32, u64),
    /// Its path relative to the top.
    rel: Vec<u8>,
    /// Its children not walked yet, sorted by name.
    names: std::vec::IntoIter<CString>,
}

struct Walk<'a> {
    tree: &'a Path,
    jobs: SyncSender<Job>,
    stop: &'a AtomicBool,
    /// Regular files sent so far.
    files: usize,
}

impl Walk<'_> {
    /// The host path of `rel` (for errors).
    fn host(&self, rel: &[u8]) -> PathBuf {
        if rel.is_empty() {
            self.tree.to_owned()
        } else {
            self.tree.join(OsStr::from_bytes(rel))
        }
    }

    fn io(&self, op: &'static str, rel: &[u8]) -> impl FnOnce(Errno) -> DigestError + use<> {
        let (path, tree) = (self.host(rel), self.tree.to_owned());
        move |e| DigestError::Io {
            op,
            path,
            tree,
            source: e.into(),
        }
    }

    fn changed(&self, rel: &[u8]) -> DigestError {
        DigestError::Changed {
            tree: self.tree.to_owned(),
            path: self.host(rel),
        }
    }

    /// Walks the tree: every entry (file contents still to come from the hashing threads), and
    /// for each file the walk sent (by its count), its index among the entries.
    fn run(mut self) -> Result<(Vec<Entry>, Vec<usize>), DigestError> {
        let mut entries = Vec::new();
        let mut slots = Vec::new();
        let top = open_dir(CWD.as_fd(), &path_cstr(self.tree)?).map_err(self.io("open", b""))?;
        let st = stat_fd(&top).map_err(self.io("stat", b""))?;
        let top_mount = mount_key(&st);
        let xattrs = read_xattrs(&self, XattrOf::Fd(top.as_fd()), b"")?;
        let mut top_entry = entry(Vec::new(), Kind::Dir, &st, xattrs);
        // Left out (see the module's documentation).
        top_entry.mtime = (0, 0);
        entries.push(top_entry);
        let names = self.names(&top, b"")?;
        let mut stack = vec![Frame {
            fd: Some(top),
            id: ident(&st),
            rel: Vec::new(),
            names,
        }];
        loop {
            if self.stop.load(AtomicOrdering::Relaxed) {
                // A hashing thread failed: its error is the one reported.
                return Ok((entries, slots));
            }
            let Some(frame) = stack.last_mut() else {
                return Ok((entries, slots));
            };
            let Some(name) = frame.names.next() else {
                let done = stack.pop().expect("a frame");
                if let Some(parent) = stack.last_mut()
                    && parent.fd.is_none()
                {
                    let child = done.fd.as_ref().ok_or_else(|| self.changed(&done.rel))?;
                    let fd =
                        open_dir(child.as_fd(), c"..").map_err(self.io("open", &parent.rel))?;
                    let st = stat_fd(&fd).map_err(self.io("stat", &parent.rel))?;
                    if ident(&st) != parent.id {
                        return Err(self.changed(&parent.rel));
                    }
                    parent.fd = Some(fd);
                }
                continue;
            };
            let dfd = frame
                .fd
                .as_ref()
                .ok_or_else(|| self.changed(&frame.rel))?
                .as_fd();
            let mut rel = frame.rel.clone();
            if !rel.is_empty() {
                rel.push(b'/');
            }
            rel.extend_from_slice(name.to_bytes());
            let st = match stat_at(dfd, &name) {
                Ok(st) => st,
                Err(Errno::NOENT) => return Err(self.changed(&rel)),
                Err(e) => return Err(self.io("stat", &rel)(e)),
            };
            if mount_key(&st) != top_mount {
                return Err(DigestError::OtherMount {
                    tree: self.tree.to_owned(),
                    path: self.host(&rel),
                });
            }
            match FileType::from_raw_mode(st.stx_mode.into()) {
                FileType::Directory => {
                    let fd = open_dir(dfd, &name).map_err(self.io("open", &rel))?;
                    let st2 = stat_fd(&fd).map_err(self.io("stat", &rel))?;
                    if ident(&st2) != ident(&st) || mount_key(&st2) != top_mount {
                        return Err(self.changed(&rel));
                    }
                    let xattrs = read_xattrs(&self, XattrOf::Fd(fd.as_fd()), &rel)?;
                    entries.push(entry(rel.clone(), Kind::Dir, &st2, xattrs));
                    let names = self.names(&fd, &rel)?;
                    stack.push(Frame {
                        fd: Some(fd),
                        id: ident(&st2),
                        rel,
                        names,
                    });
                    // Keep at most MAX_OPEN descriptors: close the oldest open one below the top.
                    if stack.len() > MAX_OPEN {
                        let i = stack.len() - MAX_OPEN - 1;
                        stack[i].fd = None;
                    }
                }
                FileType::RegularFile => {
                    // Non-blocking: a FIFO swapped in after the stat is never waited on (and is
                    // caught by the type check).
                    let fd = open_noatime(dfd, &name, OFlags::RDONLY | OFlags::NONBLOCK)
                        .map_err(self.io("open", &rel))?;
                    let st2 = stat_fd(&fd).map_err(self.io("stat", &rel))?;
                    if ident(&st2) != ident(&st)
                        || FileType::from_raw_mode(st2.stx_mode.into()) != FileType::RegularFile
                    {
                        return Err(self.changed(&rel));
                    }
                    let xattrs = read_xattrs(&self, XattrOf::Fd(fd.as_fd()), &rel)?;
                    let kind = Kind::File {
                        size: st2.stx_size,
                        content: Digest([0; 32]),
                    };
                    slots.push(entries.len());
                    entries.push(entry(rel.clone(), kind, &st2, xattrs));
                    let job = Job {
                        slot: self.files,
                        file: File::from(fd),
                        path: self.host(&rel),
                    };
                    self.files += 1;
                    if self.jobs.send(job).is_err() {
                        // Every hashing thread is gone: one of them panicked.
                        return Ok((entries, slots));
                    }
                }
                t => {
                    let kind = match t {
                        FileType::Symlink => Kind::Symlink {
                            target: rustix::fs::readlinkat(dfd, &name, Vec::new())
                                .map_err(self.io("read the link", &rel))?
                                .into_bytes(),
                        },
                        FileType::CharacterDevice => Kind::Char {
                            major: st.stx_rdev_major,
                            minor: st.stx_rdev_minor,
                        },
                        FileType::BlockDevice => Kind::Block {
                            major: st.stx_rdev_major,
                            minor: st.stx_rdev_minor,
                        },
                        FileType::Fifo => Kind::Fifo,
                        FileType::Socket => Kind::Socket,
                        _ => return Err(self.changed(&rel)),
                    };
                    // Never opened (a device, a FIFO): its attributes are read by path, through
                    // the directory's descriptor, without following the last component.
                    let mut proc = format!("/proc/self/fd/{}/", dfd.as_raw_fd()).into_bytes();
                    proc.extend_from_slice(name.to_bytes());
                    let proc = CString::new(proc).map_err(|_| self.changed(&rel))?;
                    let xattrs = read_xattrs(&self, XattrOf::Link(&proc), &rel)?;
                    entries.push(entry(rel, kind, &st, xattrs));
                }
            }
        }
    }

    /// The names in the directory `fd` (at `rel`), sorted as bytes, without `.` and `..`.
    fn names(&self, fd: &OwnedFd, rel: &[u8]) -> Result<std::vec::IntoIter<CString>, DigestError> {
        let mut dir = Dir::read_from(fd).map_err(self.io("read", rel))?;
        let mut names = Vec::new();
        while let Some(e) = dir.read() {
            let e = e.map_err(self.io("read", rel))?;
            let name = e.file_name();
            if name != c"." && name != c".." {
                names.push(name.to_owned());
            }
        }
        names.sort();
        Ok(names.into_iter())
    }
}

fn path_cstr(p: &Path) -> Result<CString, DigestError> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| DigestError::Io {
        op: "open",
        path: p.to_owned(),
        tree: p.to_owned(),
        source: io::Error::new(io::ErrorKind::InvalidInput, "a NUL byte in the path"),
    })
}

fn entry(path: Vec<u8>, kind: Kind, st: &Statx, xattrs: Xattrs) -> Entry {
    Entry {
        path,
        kind,
        mode: u32::from(st.stx_mode) & 0o7777,
        uid: st.stx_uid,
        gid: st.stx_gid,
        mtime: (st.stx_mtime.tv_sec, st.stx_mtime.tv_nsec),
        xattrs,
    }
}

/// Whose extended attributes are read.
#[derive(Clone, Copy)]
enum XattrOf<'a> {
    /// An open file or directory.
    Fd(BorrowedFd<'a>),
    /// A path whose last component is not followed (`/proc/self/fd/DIR/NAME`).
    Link(&'a CStr),
}

/// The extended attributes of an entry, sorted by name, without overlayfs's own. A filesystem
/// without extended attributes has none.
fn read_xattrs(walk: &Walk<'_>, of: XattrOf<'_>, rel: &[u8]) -> Result<Xattrs, DigestError> {
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
        Err(Errno::NOTSUP) => return Ok(Vec::new()),
        Err(e) => return Err(walk.io("list the extended attributes of", rel)(e)),
    };
    let mut out = Vec::new();
    for name in list.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        if name.starts_with(OVERLAY_XATTRS) {
            continue;
        }
        let cname = CString::new(name).map_err(|_| walk.changed(rel))?;
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
        match value {
            Ok(v) => out.push((name.to_vec(), v)),
            // Removed between the list and the read.
            Err(Errno::NODATA) => return Err(walk.changed(rel)),
            Err(e) => return Err(walk.io("read the extended attributes of", rel)(e)),
        }
    }
    out.sort();
    Ok(out)
}

/// Reads an attribute list or value: its size first (`query`), then the bytes (`fill`, into a
/// buffer of that size); again, larger, when it grew in between (`ERANGE`).
pub(crate) fn read_sized(
    query: impl Fn() -> Result<usize, Errno>,
    fill: impl Fn(&mut [u8]) -> Result<usize, Errno>,
) -> Result<Vec<u8>, Errno> {
    for _ in 0..MAX_XATTR_RETRIES {
        let size = query()?;
        if size == 0 {
            return Ok(Vec::new());
        }
        let mut buf = vec![0u8; size];
        match fill(&mut buf) {
            Ok(n) => {
                buf.truncate(n);
                return Ok(buf);
            }
            Err(Errno::RANGE) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(Errno::RANGE)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::{PermissionsExt, symlink};
    use std::sync::atomic::AtomicUsize;

    use rustix::fs::{Timespec, Timestamps};

    /// A fresh directory under the system's temporary directory, removed on drop.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new() -> Scratch {
            static N: AtomicUsize = AtomicUsize::new(0);
            let dir = std::env::temp_dir().join(format!(
                "envc-digest-test-{}-{}",
                std::process::id(),
                N.fetch_add(1, AtomicOrdering::Relaxed)
            ));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).unwrap();
            Scratch(dir)
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    /// Whether this test runs as root; otherwise its privileged part is skipped, with a line on
    /// stderr, unless ENVC_REQUIRE_PRIVILEGED=1 makes that a failure.
    fn root(test: &str) -> bool {
        if nix::unistd::geteuid().is_root() {
            return true;
        }
        if std::env::var("ENVC_REQUIRE_PRIVILEGED").is_ok_and(|v| v == "1") {
            panic!("{test}: needs root, and ENVC_REQUIRE_PRIVILEGED=1");
        }
        let _ = io::Write::write_all(
            &mut io::stderr(),
            format!("SKIP {test} (its privileged part): not running as root\n").as_bytes(),
        );
        false
    }

    const T0: (i64, u32) = (1_700_000_000, 123_456_789);

    fn set_times(path: &Path, atime: Option<(i64, u32)>, mtime: Option<(i64, u32)>) {
        let ts = |t: Option<(i64, u32)>| match t {
            Some((s, n)) => Timespec {
                tv_sec: s,
                tv_nsec: n.into(),
            },
            None => Timespec {
                tv_sec: 0,
                tv_nsec: rustix::fs::UTIME_OMIT,
            },
        };
        rustix::fs::utimensat(
            CWD,
            path,
            &Timestamps {
                last_access: ts(atime),
                last_modification: ts(mtime),
            },
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .unwrap();
    }

    /// Sets every mtime under `top` (itself included) to [`T0`], children before their
    /// directory, so that how the tree was made does not show.
    fn pin_times(top: &Path) {
        fn walk(p: &Path) {
            let m = fs::symlink_metadata(p).unwrap();
            if m.is_dir() {
                for e in fs::read_dir(p).unwrap() {
                    walk(&e.unwrap().path());
                }
            }
            set_times(p, Some((1, 0)), Some(T0));
        }
        walk(top);
    }

    fn chmod(p: &Path, mode: u32) {
        fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
    }

    /// The small tree of these tests, made in `dir` (created), in the given order of its parts.
    fn make(dir: &Path, reverse: bool) {
        fs::create_dir(dir).unwrap();
        let mut parts: Vec<Box<dyn Fn()>> = vec![
            Box::new(|| {
                fs::create_dir_all(dir.join("a/b")).unwrap();
                fs::write(dir.join("a/b/x"), "one").unwrap();
                chmod(&dir.join("a/b/x"), 0o644);
                chmod(&dir.join("a/b"), 0o700);
                chmod(&dir.join("a"), 0o750);
            }),
            Box::new(|| {
                fs::create_dir_all(dir.join("a")).unwrap();
                symlink("b/x", dir.join("a/l")).unwrap();
            }),
            Box::new(|| {
                fs::create_dir(dir.join("a.c")).unwrap();
                fs::write(dir.join("a.c/y"), "two").unwrap();
                chmod(&dir.join("a.c/y"), 0o4755);
                chmod(&dir.join("a.c"), 0o2775);
            }),
            Box::new(|| {
                fs::write(dir.join("a0"), "").unwrap();
                chmod(&dir.join("a0"), 0o600);
            }),
        ];
        if reverse {
            parts.reverse();
        }
        for p in parts {
            p();
        }
        chmod(dir, 0o755);
        // Made in one order, the modes of `a` come out the same.
        chmod(&dir.join("a"), 0o750);
    }

    /// The entries [`make`] makes, for an owner.
    fn expected(uid: u32, gid: u32) -> Vec<Entry> {
        let e = |path: &str, kind: Kind, mode: u32| Entry {
            path: path.as_bytes().to_vec(),
            kind,
            mode,
            uid,
            gid,
            mtime: T0,
            xattrs: Vec::new(),
        };
        let file = |bytes: &[u8]| Kind::File {
            size: bytes.len() as u64,
            content: Digest(*blake3::hash(bytes).as_bytes()),
        };
        let mut top = e("", Kind::Dir, 0o755);
        top.mtime = (0, 0);
        vec![
            top,
            e("a", Kind::Dir, 0o750),
            e("a/b", Kind::Dir, 0o700),
            e("a/b/x", file(b"one"), 0o644),
            e(
                "a/l",
                Kind::Symlink {
                    target: b"b/x".to_vec(),
                },
                0o777,
            ),
            e("a.c", Kind::Dir, 0o2775),
            e("a.c/y", file(b"two"), 0o4755),
            e("a0", file(b""), 0o600),
        ]
    }

    /// The encoding is pinned: a change to it must come with a new context string.
    #[test]
    fn the_encoding_of_a_small_tree_is_pinned() {
        const PINNED: &str = "777f20be7f7878beac4c4fb9d65677192fd37decc8b6f43d71eff2af9b5ff195";
        let mut entries = expected(0, 0);
        entries.push(Entry {
            path: b"dev/null".to_vec(),
            kind: Kind::Char { major: 1, minor: 3 },
            mode: 0o666,
            uid: 0,
            gid: 0,
            mtime: (-1, 999_999_999),
            xattrs: vec![
                (b"security.capability".to_vec(), vec![1, 0, 0, 2]),
                (b"user.x".to_vec(), b"1".to_vec()),
            ],
        });
        entries.push(Entry {
            path: b"dev".to_vec(),
            kind: Kind::Dir,
            mode: 0o755,
            uid: 0,
            gid: 0,
            mtime: T0,
            xattrs: Vec::new(),
        });
        for (path, kind) in [
            ("dev/sda", Kind::Block { major: 8, minor: 0 }),
            ("dev/fifo", Kind::Fifo),
            ("dev/sock", Kind::Socket),
        ] {
            entries.push(Entry {
                path: path.as_bytes().to_vec(),
                kind,
                mode: 0o600,
                uid: 1000,
                gid: 1000,
                mtime: T0,
                xattrs: Vec::new(),
            });
        }
        let forward = encode(entries.clone());
        entries.reverse();
        assert_eq!(encode(entries), forward, "independent of the order given");
        assert_eq!(forward.to_hex(), PINNED);
    }

    /// The bytes fed are those the module's documentation describes, field by field.
    #[test]
    fn the_encoding_is_the_documented_one() {
        let entries = vec![
            Entry {
                path: b"l".to_vec(),
                kind: Kind::Symlink {
                    target: b"t".to_vec(),
                },
                mode: 0o777,
                uid: 1,
                gid: 2,
                mtime: (3, 4),
                xattrs: vec![(b"user.k".to_vec(), b"v".to_vec())],
            },
            Entry {
                path: Vec::new(),
                kind: Kind::Dir,
                mode: 0o40755,
                uid: 0,
                gid: 0,
                mtime: (5, 6),
                xattrs: Vec::new(),
            },
            Entry {
                path: b"f".to_vec(),
                kind: Kind::File {
                    size: 2,
                    content: Digest([7; 32]),
                },
                mode: 0o644,
                uid: 0,
                gid: 0,
                mtime: (8, 9),
                xattrs: Vec::new(),
            },
        ];
        let mut b: Vec<u8> = Vec::new();
        let u64le = |b: &mut Vec<u8>, v: u64| b.extend_from_slice(&v.to_le_bytes());
        let u32le = |b: &mut Vec<u8>, v: u32| b.extend_from_slice(&v.to_le_bytes());
        u64le(&mut b, 3);
        // The top: empty path, `d`, 0o755 (the type bits masked), owner, mtime, no xattrs.
        u64le(&mut b, 0);
        b.push(b'd');
        for v in [0o755, 0, 0] {
            u32le(&mut b, v);
        }
        b.extend_from_slice(&5i64.to_le_bytes());
        u32le(&mut b, 6);
        u64le(&mut b, 0);
        // `f`: size, no xattrs, then the content digest.
        u64le(&mut b, 1);
        b.push(b'f');
        b.push(b'f');
        for v in [0o644, 0, 0] {
            u32le(&mut b, v);
        }
        b.extend_from_slice(&8i64.to_le_bytes());
        u32le(&mut b, 9);
        u64le(&mut b, 2);
        u64le(&mut b, 0);
        b.extend_from_slice(&[7; 32]);
        // `l`: its target, one xattr.
        u64le(&mut b, 1);
        b.push(b'l');
        b.push(b'l');
        for v in [0o777, 1, 2] {
            u32le(&mut b, v);
        }
        b.extend_from_slice(&3i64.to_le_bytes());
        u32le(&mut b, 4);
        u64le(&mut b, 1);
        b.push(b't');
        u64le(&mut b, 1);
        u64le(&mut b, 6);
        b.extend_from_slice(b"user.k");
        u64le(&mut b, 1);
        b.push(b'v');
        let want = blake3::Hasher::new_derive_key(LAYER_TREE_CONTEXT)
            .update(&b)
            .finalize();
        assert_eq!(encode(entries).0, *want.as_bytes());
    }

    #[test]
    fn the_walk_records_every_entry_with_its_attributes() {
        let s = Scratch::new();
        let t = s.0.join("t");
        make(&t, false);
        pin_times(&t);
        let m = fs::metadata(&t).unwrap();
        let (uid, gid) = (
            std::os::unix::fs::MetadataExt::uid(&m),
            std::os::unix::fs::MetadataExt::gid(&m),
        );
        let mut walked = walk_tree(&t).unwrap();
        walked.sort_by(|a, b| canonical_order(&a.path, &b.path));
        assert_eq!(walked, expected(uid, gid));
        assert_eq!(tree_digest(&t).unwrap(), encode(expected(uid, gid)));
    }

    /// Each attribute the digest covers changes it, alone.
    #[test]
    fn every_covered_attribute_changes_the_digest() {
        let s = Scratch::new();
        let digest_of = |name: &str, change: &dyn Fn(&Path)| {
            let t = s.0.join(name);
            make(&t, false);
            change(&t);
            pin_times(&t);
            tree_digest(&t).unwrap()
        };
        let base = digest_of("base", &|_| {});
        assert_eq!(base, digest_of("again", &|_| {}), "the same tree again");
        type Change = Box<dyn Fn(&Path)>;
        let mut changes: Vec<(&str, Change)> = vec![
            (
                "content",
                Box::new(|t| fs::write(t.join("a/b/x"), "onE").unwrap()),
            ),
            ("mode", Box::new(|t| chmod(&t.join("a/b/x"), 0o664))),
            ("setuid", Box::new(|t| chmod(&t.join("a0"), 0o4600))),
            ("sticky", Box::new(|t| chmod(&t.join("a.c"), 0o3775))),
            (
                "symlink-target",
                Box::new(|t| {
                    fs::remove_file(t.join("a/l")).unwrap();
                    symlink("b/y", t.join("a/l")).unwrap();
                }),
            ),
            (
                "rename",
                Box::new(|t| fs::rename(t.join("a0"), t.join("a1")).unwrap()),
            ),
            (
                "empty-dir",
                Box::new(|t| fs::create_dir(t.join("a/e")).unwrap()),
            ),
            (
                "fifo",
                Box::new(|t| {
                    nix::unistd::mkfifo(&t.join("p"), nix::sys::stat::Mode::S_IRWXU).unwrap()
                }),
            ),
        ];
        if root("every_covered_attribute_changes_the_digest") {
            changes.push((
                "owner",
                Box::new(|t| std::os::unix::fs::lchown(t.join("a/b/x"), Some(1000), None).unwrap()),
            ));
            changes.push((
                "group",
                Box::new(|t| std::os::unix::fs::lchown(t.join("a/l"), None, Some(1)).unwrap()),
            ));
            changes.push((
                "device",
                Box::new(|t| {
                    let kind = nix::sys::stat::SFlag::S_IFCHR;
                    let mode = nix::sys::stat::Mode::from_bits_truncate(0o666);
                    nix::sys::stat::mknod(
                        &t.join("null"),
                        kind,
                        mode,
                        nix::sys::stat::makedev(1, 3),
                    )
                    .unwrap();
                }),
            ));
        }
        let mut seen = vec![("base", base)];
        for (name, change) in &changes {
            let d = digest_of(name, change.as_ref());
            for (other, od) in &seen {
                assert_ne!(d, *od, "{name} gives the digest of {other}");
            }
            seen.push((name, d));
        }
        // The modification time, set after the pinning, of a file and of a directory.
        for (i, rel) in ["a/b/x", "a.c"].into_iter().enumerate() {
            let t = s.0.join(format!("mtime{i}"));
            make(&t, false);
            pin_times(&t);
            set_times(&t.join(rel), None, Some((T0.0, T0.1 + 1)));
            assert_ne!(tree_digest(&t).unwrap(), base, "mtime of {rel}");
        }
        // An extended attribute, where the filesystem has them.
        let t = s.0.join("xattr");
        make(&t, false);
        pin_times(&t);
        match rustix::fs::lsetxattr(
            t.join("a/b/x"),
            "user.x",
            b"1",
            rustix::fs::XattrFlags::empty(),
        ) {
            Ok(()) => {
                let one = tree_digest(&t).unwrap();
                assert_ne!(one, base, "user.x");
                rustix::fs::lsetxattr(
                    t.join("a/b/x"),
                    "user.x",
                    b"2",
                    rustix::fs::XattrFlags::empty(),
                )
                .unwrap();
                let two = tree_digest(&t).unwrap();
                assert_ne!(two, one, "the value of user.x");
            }
            Err(Errno::NOTSUP | Errno::PERM) => {
                let _ = io::Write::write_all(
                    &mut io::stderr(),
                    b"SKIP user.x: no user extended attributes in the temporary directory\n",
                );
            }
            Err(e) => panic!("setxattr: {e}"),
        }
    }

    #[test]
    fn access_times_creation_order_and_the_tops_mtime_do_not_count() {
        let s = Scratch::new();
        let (a, b) = (s.0.join("a"), s.0.join("b"));
        make(&a, false);
        make(&b, true);
        pin_times(&a);
        pin_times(&b);
        let da = tree_digest(&a).unwrap();
        assert_eq!(da, tree_digest(&b).unwrap(), "made in another order");
        set_times(&a.join("a/b/x"), Some((42, 0)), None);
        set_times(&a.join("a"), Some((42, 0)), None);
        let _ = fs::read(a.join("a.c/y")).unwrap();
        assert_eq!(tree_digest(&a).unwrap(), da, "access times");
        // Nor does the top's own modification time.
        set_times(&a, None, Some((42, 0)));
        assert_eq!(tree_digest(&a).unwrap(), da, "the top's modification time");
    }

    #[test]
    fn big_files_are_streamed_and_deep_trees_walked() {
        let s = Scratch::new();
        let t = s.0.join("t");
        fs::create_dir(&t).unwrap();
        let big: Vec<u8> = (0..3 * READ_SIZE + 17).map(|i| (i % 251) as u8).collect();
        fs::write(t.join("big"), &big).unwrap();
        // Deeper than the descriptors one walk keeps open, with a file at every level.
        let mut d = t.clone();
        for i in 0..(MAX_OPEN * 2 + 3) {
            d = d.join(format!("d{i}"));
            fs::create_dir(&d).unwrap();
            fs::write(d.join("f"), i.to_string()).unwrap();
        }
        let entries = walk_tree(&t).unwrap();
        assert_eq!(entries.len(), 2 + 2 * (MAX_OPEN * 2 + 3));
        let got = entries.iter().find(|e| e.path == b"big").unwrap();
        assert_eq!(
            got.kind,
            Kind::File {
                size: big.len() as u64,
                content: Digest(*blake3::hash(&big).as_bytes())
            }
        );
        let deepest = entries.iter().max_by_key(|e| e.path.len()).unwrap();
        assert!(matches!(deepest.kind, Kind::File { size: 3, .. }));
        assert_eq!(encode(entries), tree_digest(&t).unwrap());
    }

    #[test]
    fn errors_name_the_path() {
        let s = Scratch::new();
        let e = tree_digest(&s.0.join("missing")).unwrap_err();
        assert!(
            matches!(&e, DigestError::Io { op: "open", path, .. } if path.ends_with("missing")),
            "{e}"
        );
        // The top is never reached through a symlink.
        symlink(&s.0, s.0.join("link")).unwrap();
        let e = tree_digest(&s.0.join("link")).unwrap_err();
        assert!(e.to_string().contains("link"), "{e}");
    }

    /// overlayfs's own attributes are left out; other trusted ones count. A mount below the top
    /// is an error naming it.
    #[test]
    fn overlay_attributes_are_left_out_and_mounts_refused() {
        if !root("overlay_attributes_are_left_out_and_mounts_refused") {
            return;
        }
        let s = Scratch::new();
        let t = s.0.join("t");
        make(&t, false);
        pin_times(&t);
        let base = tree_digest(&t).unwrap();
        let set = |name: &str| {
            rustix::fs::lsetxattr(t.join("a"), name, b"y", rustix::fs::XattrFlags::empty()).unwrap()
        };
        set("trusted.overlay.opaque");
        set("trusted.overlay.origin");
        assert_eq!(tree_digest(&t).unwrap(), base);
        set("trusted.other");
        assert_ne!(tree_digest(&t).unwrap(), base);
        let other = s.0.join("other");
        fs::create_dir(&other).unwrap();
        nix::mount::mount(
            Some(&other),
            &t.join("a/b"),
            None::<&str>,
            nix::mount::MsFlags::MS_BIND,
            None::<&str>,
        )
        .unwrap();
        let e = tree_digest(&t);
        nix::mount::umount2(&t.join("a/b"), nix::mount::MntFlags::MNT_DETACH).unwrap();
        assert!(
            matches!(&e, Err(DigestError::OtherMount { path, .. }) if *path == t.join("a/b")),
            "{e:?}"
        );
    }
}
