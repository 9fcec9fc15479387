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
//! - nothing that depends on the host or the time of packing. Packing a tree twice gives the same
//!   bytes. Sockets are left out (tar has no form for them).
//!
//! **The sources.** An overlay layer is its own difference (its upper directory): a whiteout
//! (character device 0:0) becomes `.wh.NAME`, a directory marked opaque gets `.wh..wh..opq`. A
//! btrfs or LVM layer is a full snapshot of its parent with the layer's changes: its archive is
//! the difference of the two trees. A snapshot shares inode numbers and change times with its
//! parent for what it did not change, so an entry is in the archive when its path is new, or its
//! type, mode, owners, times, size, attributes, link target, device number, inode number or change
//! time differ; everything under a directory that changed nothing is skipped without reading
//! file contents. Whatever this misses (a change time forged by no process we know of) is caught
//! by the tree digest a pull checks: the archive is never trusted for the tree.
//!
//! **Unpacking treats the stream as hostile.** Every path is relative, without `..`, and reached
//! through real directories only (each component opened with `O_NOFOLLOW` from the top's
//! descriptor, on the top's filesystem): nothing is ever created, changed or linked outside the
//! target. A hard link must name a regular file this archive made (or, in a full tree, one reached
//! the same way); `trusted.*` attributes (which would steer overlayfs) and attribute namespaces
//! other than `user.`, `security.capability`, `security.selinux` and POSIX ACLs are refused, as are
//! a character device 0:0 as an entry, a path given twice, more entries or bytes than the limits,
//! metadata records over 64 KiB, data after the end, and a stream cut anywhere.
#![forbid(unsafe_code)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{FchmodatFlags, Mode, SFlag, UtimensatFlags};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid};
use sha2::{Digest as _, Sha256};

/// The opaque marker's name.
pub const OPAQUE: &str = ".wh..wh..opq";
/// The prefix of a whiteout's name.
pub const WHITEOUT: &str = ".wh.";
/// The most a PAX record set, a GNU long name or a path may hold.
const META_MAX: u64 = 64 * 1024;
/// overlayfs's own attributes: never archived.
const OVERLAY_XATTRS: &str = "trusted.overlay.";
const BLOCK: usize = 512;

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

fn errno_at<'a>(
    op: &'static str,
    rel: &'a str,
) -> impl FnOnce(nix::errno::Errno) -> ArchiveError + 'a {
    move |e| ArchiveError::Io {
        op,
        path: PathBuf::from(format!("/{rel}")),
        source: io::Error::from(e),
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
    /// An overlayfs upper directory (a sealed overlay layer): it is the layer's difference.
    Upper(&'a Path),
    /// A full tree and its parent's full tree (`None` for a base: everything is archived).
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
    /// An empty overlayfs upper directory: whiteouts and opaque markers in overlayfs's form.
    Upper(&'a Path),
    /// A writable full tree (a snapshot of the parent): whiteouts remove.
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

/// What is known of one entry of a tree.
#[derive(Debug, Clone)]
struct Meta {
    kind: Kind,
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: (i64, u32),
    ctime: (i64, u32),
    size: u64,
    rdev: u64,
    ino: u64,
    dev: u64,
    nlink: u64,
    link: Option<OsString>,
    xattrs: Vec<(OsString, Vec<u8>)>,
}

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

impl Meta {
    fn read(path: &Path) -> Result<Meta, ArchiveError> {
        let m = fs::symlink_metadata(path).map_err(io_at("inspect", path))?;
        let ft = m.file_type();
        let kind = if ft.is_file() {
            Kind::File
        } else if ft.is_dir() {
            Kind::Dir
        } else if ft.is_symlink() {
            Kind::Symlink
        } else if ft.is_char_device() {
            Kind::Char
        } else if ft.is_block_device() {
            Kind::Block
        } else if ft.is_fifo() {
            Kind::Fifo
        } else {
            Kind::Socket
        };
        let link = if kind == Kind::Symlink {
            Some(
                fs::read_link(path)
                    .map_err(io_at("read the link", path))?
                    .into_os_string(),
            )
        } else {
            None
        };
        Ok(Meta {
            kind,
            mode: m.mode() & 0o7777,
            uid: m.uid(),
            gid: m.gid(),
            mtime: (m.mtime(), m.mtime_nsec() as u32),
            ctime: (m.ctime(), m.ctime_nsec() as u32),
            size: if kind == Kind::File { m.len() } else { 0 },
            rdev: m.rdev(),
            ino: m.ino(),
            dev: m.dev(),
            nlink: m.nlink(),
            link,
            xattrs: read_xattrs(path)?,
        })
    }

    /// Whether `self` (in the layer) is what `old` (in the parent) was.
    fn same_as(&self, old: &Meta) -> bool {
        self.kind == old.kind
            && self.mode == old.mode
            && self.uid == old.uid
            && self.gid == old.gid
            && self.mtime == old.mtime
            && self.ctime == old.ctime
            && self.ino == old.ino
            && self.size == old.size
            && self.rdev == old.rdev
            && self.link == old.link
            && self.xattrs == old.xattrs
    }

    fn is_whiteout(&self) -> bool {
        self.kind == Kind::Char && self.rdev == 0
    }
}

/// A path's extended attributes but overlayfs's own, sorted by name.
fn read_xattrs(path: &Path) -> Result<Vec<(OsString, Vec<u8>)>, ArchiveError> {
    let mut out = Vec::new();
    for name in xattr_names(path, false)? {
        if name.as_bytes().starts_with(OVERLAY_XATTRS.as_bytes()) {
            continue;
        }
        if let Some(v) = xattr_value(path, &name)? {
            out.push((name, v));
        }
    }
    out.sort();
    Ok(out)
}

/// The names of a path's extended attributes (with overlayfs's when `all`).
fn xattr_names(path: &Path, _all: bool) -> Result<Vec<OsString>, ArchiveError> {
    for _ in 0..8 {
        let n = match rustix::fs::llistxattr_query(path) {
            Ok(n) => n,
            Err(rustix::io::Errno::NOTSUP) => return Ok(Vec::new()),
            Err(e) => return Err(io_at("list the attributes of", path)(e.into())),
        };
        if n == 0 {
            return Ok(Vec::new());
        }
        let mut buf = vec![0u8; n];
        match rustix::fs::llistxattr(path, &mut buf[..]) {
            Ok(len) => {
                buf.truncate(len);
                return Ok(buf
                    .split(|b| *b == 0)
                    .filter(|n| !n.is_empty())
                    .map(|n| OsString::from_vec(n.to_vec()))
                    .collect());
            }
            Err(rustix::io::Errno::RANGE) => continue,
            Err(e) => return Err(io_at("list the attributes of", path)(e.into())),
        }
    }
    Err(io_at("list the attributes of", path)(io::Error::other(
        "the list keeps changing",
    )))
}

fn xattr_value(path: &Path, name: &OsStr) -> Result<Option<Vec<u8>>, ArchiveError> {
    for _ in 0..8 {
        let n = match rustix::fs::lgetxattr_query(path, name) {
            Ok(n) => n,
            Err(rustix::io::Errno::NODATA) => return Ok(None),
            Err(e) => return Err(io_at("read an attribute of", path)(e.into())),
        };
        let mut buf = vec![0u8; n];
        match rustix::fs::lgetxattr(path, name, &mut buf[..]) {
            Ok(len) => {
                buf.truncate(len);
                return Ok(Some(buf));
            }
            Err(rustix::io::Errno::RANGE) => continue,
            Err(rustix::io::Errno::NODATA) => return Ok(None),
            Err(e) => return Err(io_at("read an attribute of", path)(e.into())),
        }
    }
    Err(io_at("read an attribute of", path)(io::Error::other(
        "the value keeps changing",
    )))
}

/// One thing the archive says, in order.
#[derive(Debug)]
enum Item {
    /// An entry: its path relative to the top (empty for the top) and where it is on the host.
    Entry(Vec<u8>, PathBuf, Meta),
    /// `.wh..wh..opq` in the directory with this path.
    Opaque(Vec<u8>),
    /// `.wh.NAME` for this path.
    Whiteout(Vec<u8>),
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

/// The names in a directory, sorted as bytes.
fn names(dir: &Path) -> Result<Vec<OsString>, ArchiveError> {
    let mut v: Vec<OsString> = fs::read_dir(dir)
        .map_err(io_at("list", dir))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()
        .map_err(io_at("list", dir))?;
    v.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    Ok(v)
}

fn check_name(path: &Path, name: &OsStr) -> Result<(), ArchiveError> {
    if name.as_bytes().starts_with(WHITEOUT.as_bytes()) {
        return Err(ArchiveError::Unarchivable {
            path: path.join(name),
            reason: format!("a name starting with {WHITEOUT} is a whiteout in an OCI layer"),
        });
    }
    Ok(())
}

/// The items of an overlay upper directory's subtree below `dir` (not `dir` itself).
fn upper_items(
    top_dev: u64,
    dir: &Path,
    rel: &[u8],
    meta: &Meta,
    out: &mut Vec<Item>,
) -> Result<(), ArchiveError> {
    for bad in ["trusted.overlay.redirect", "trusted.overlay.metacopy"] {
        if xattr_value(dir, OsStr::new(bad))?.is_some() {
            return Err(ArchiveError::Unarchivable {
                path: dir.to_owned(),
                reason: format!("overlayfs marks it with {bad}"),
            });
        }
    }
    if xattr_value(dir, OsStr::new("trusted.overlay.opaque"))?.as_deref() == Some(b"y") {
        out.push(Item::Opaque(rel.to_vec()));
    }
    let _ = meta;
    let mut children = Vec::new();
    for name in names(dir)? {
        let p = dir.join(&name);
        let m = Meta::read(&p)?;
        let crel = join(rel, name.as_bytes());
        if m.is_whiteout() {
            out.push(Item::Whiteout(crel));
            continue;
        }
        check_name(dir, &name)?;
        if m.dev != top_dev {
            return Err(ArchiveError::Unarchivable {
                path: p,
                reason: "another filesystem is mounted there".into(),
            });
        }
        children.push((crel, p, m));
    }
    for (crel, p, m) in children {
        let is_dir = m.kind == Kind::Dir;
        out.push(Item::Entry(crel.clone(), p.clone(), m.clone()));
        if is_dir {
            upper_items(top_dev, &p, &crel, &m, out)?;
        }
    }
    Ok(())
}

/// The items of the difference below `dir` (a directory of the tree; `old` the parent's
/// directory at the same path, if it is one). Returns whether anything was added.
fn diff_items(
    top_dev: u64,
    dir: &Path,
    old: Option<&Path>,
    rel: &[u8],
    out: &mut Vec<Item>,
) -> Result<bool, ArchiveError> {
    let start = out.len();
    let new_names = names(dir)?;
    if let Some(old) = old {
        let have: HashSet<&[u8]> = new_names.iter().map(|n| n.as_bytes()).collect();
        for name in names(old)? {
            if !have.contains(name.as_bytes()) {
                out.push(Item::Whiteout(join(rel, name.as_bytes())));
            }
        }
    }
    for name in new_names {
        check_name(dir, &name)?;
        let p = dir.join(&name);
        let m = Meta::read(&p)?;
        if m.dev != top_dev {
            return Err(ArchiveError::Unarchivable {
                path: p,
                reason: "another filesystem (or subvolume) is there".into(),
            });
        }
        if m.kind == Kind::Socket {
            continue;
        }
        let crel = join(rel, name.as_bytes());
        let old_path = old.map(|o| o.join(&name));
        let old_meta = match &old_path {
            Some(op) => match fs::symlink_metadata(op) {
                Ok(_) => Some(Meta::read(op)?),
                Err(e) if e.kind() == io::ErrorKind::NotFound => None,
                Err(e) => return Err(io_at("inspect", op)(e)),
            },
            None => None,
        };
        let same = old_meta.as_ref().is_some_and(|o| m.same_as(o));
        if m.kind == Kind::Dir {
            let old_dir = old_meta
                .as_ref()
                .filter(|o| o.kind == Kind::Dir)
                .and(old_path.as_deref());
            let at = out.len();
            out.push(Item::Entry(crel.clone(), p.clone(), m));
            let below = diff_items(top_dev, &p, old_dir, &crel, out)?;
            if same && !below {
                out.truncate(at);
            }
        } else if !same {
            out.push(Item::Entry(crel, p, m));
        }
    }
    Ok(out.len() > start)
}

/// Writes the archive of `source` to `out`.
pub fn pack(source: Source<'_>, out: &mut dyn Write) -> Result<Packed, ArchiveError> {
    let top = match source {
        Source::Upper(t) | Source::Diff { tree: t, .. } => t,
    };
    let top_meta = Meta::read(top)?;
    if top_meta.kind != Kind::Dir {
        return Err(ArchiveError::Unarchivable {
            path: top.to_owned(),
            reason: "not a directory".into(),
        });
    }
    let mut items = vec![Item::Entry(Vec::new(), top.to_owned(), top_meta.clone())];
    match source {
        Source::Upper(_) => upper_items(top_meta.dev, top, b"", &top_meta, &mut items)?,
        Source::Diff { parent, tree } => {
            diff_items(top_meta.dev, tree, parent, b"", &mut items)?;
        }
    }
    // Whiteouts and the opaque marker of a directory come right after its entry: move each run
    // of them before the directory's children (they were pushed in walk order).
    let items = order(items);
    let mut w = TarWriter::new(out);
    let mut links: HashMap<(u64, u64), Vec<u8>> = HashMap::new();
    for item in &items {
        match item {
            Item::Entry(rel, path, m) => {
                let name = entry_name(rel, m.kind == Kind::Dir);
                if m.kind == Kind::File && m.nlink > 1 {
                    if let Some(first) = links.get(&(m.dev, m.ino)) {
                        w.header(&name, b'1', m, 0, Some(first.clone()), false)?;
                        continue;
                    }
                    links.insert((m.dev, m.ino), name.clone());
                }
                match m.kind {
                    Kind::File => {
                        w.header(&name, b'0', m, m.size, None, false)?;
                        let f = File::options()
                            .read(true)
                            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
                            .open(path)
                            .map_err(io_at("open", path))?;
                        let copied = io::copy(&mut (&f).take(m.size), &mut w)
                            .map_err(io_at("read", path))?;
                        let grew = (&f).read(&mut [0u8; 1]).map_err(io_at("read", path))?;
                        if copied != m.size || grew != 0 {
                            return Err(ArchiveError::Unarchivable {
                                path: path.clone(),
                                reason: "it changed size while it was read".into(),
                            });
                        }
                        w.pad()?;
                    }
                    Kind::Dir => w.header(&name, b'5', m, 0, None, rel.is_empty())?,
                    Kind::Symlink => w.header(
                        &name,
                        b'2',
                        m,
                        0,
                        m.link.as_ref().map(|l| l.as_bytes().to_vec()),
                        false,
                    )?,
                    Kind::Char => w.header(&name, b'3', m, 0, None, false)?,
                    Kind::Block => w.header(&name, b'4', m, 0, None, false)?,
                    Kind::Fifo => w.header(&name, b'6', m, 0, None, false)?,
                    Kind::Socket => {}
                }
            }
            Item::Opaque(dir) => w.marker(&join(dir, OPAQUE.as_bytes()))?,
            Item::Whiteout(rel) => {
                let (dir, name) = match rel.iter().rposition(|b| *b == b'/') {
                    Some(i) => (&rel[..i], &rel[i + 1..]),
                    None => (&b""[..], &rel[..]),
                };
                let mut n = WHITEOUT.as_bytes().to_vec();
                n.extend_from_slice(name);
                w.marker(&join(dir, &n))?;
            }
        }
    }
    w.finish()
}

/// Items in canonical order: in each directory, after its entry, the opaque marker, then the
/// whiteouts, then the children with what is below them.
fn order(items: Vec<Item>) -> Vec<Item> {
    // Group by the directory each item is in (markers and whiteouts) or is (entries).
    let mut markers: BTreeMap<Vec<u8>, Vec<Item>> = BTreeMap::new();
    let mut rest = Vec::with_capacity(items.len());
    for item in items {
        match &item {
            Item::Opaque(dir) => markers.entry(dir.clone()).or_default().insert(0, item),
            Item::Whiteout(rel) => {
                let dir = rel
                    .iter()
                    .rposition(|b| *b == b'/')
                    .map_or(Vec::new(), |i| rel[..i].to_vec());
                markers.entry(dir).or_default().push(item);
            }
            Item::Entry(..) => rest.push(item),
        }
    }
    for v in markers.values_mut() {
        v.sort_by(|a, b| match (a, b) {
            (Item::Opaque(_), _) => std::cmp::Ordering::Less,
            (_, Item::Opaque(_)) => std::cmp::Ordering::Greater,
            (Item::Whiteout(x), Item::Whiteout(y)) => x.cmp(y),
            _ => std::cmp::Ordering::Equal,
        });
    }
    let mut out = Vec::with_capacity(rest.len());
    for item in rest {
        let dir = match &item {
            Item::Entry(rel, _, m) if m.kind == Kind::Dir => Some(rel.clone()),
            _ => None,
        };
        out.push(item);
        if let Some(d) = dir
            && let Some(ms) = markers.remove(&d)
        {
            out.extend(ms);
        }
    }
    // Markers of directories that are not entries cannot happen: a directory with a whiteout
    // is always archived (its listing changed). Any left are dropped only if empty.
    debug_assert!(markers.is_empty());
    for (_, ms) in markers {
        out.extend(ms);
    }
    out
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
        let m = Meta {
            kind: Kind::File,
            mode: 0,
            uid: 0,
            gid: 0,
            mtime: (0, 0),
            ctime: (0, 0),
            size: 0,
            rdev: 0,
            ino: 0,
            dev: 0,
            nlink: 1,
            link: None,
            xattrs: Vec::new(),
        };
        self.header(name, b'0', &m, 0, None, false)
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
        const MAX_ID: u32 = 0o7777777;
        if m.uid > MAX_ID {
            pax.push((b"uid".to_vec(), m.uid.to_string().into_bytes()));
        }
        if m.gid > MAX_ID {
            pax.push((b"gid".to_vec(), m.gid.to_string().into_bytes()));
        }
        for (k, v) in &m.xattrs {
            let mut key = b"SCHILY.xattr.".to_vec();
            key.extend_from_slice(k.as_bytes());
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
            let (major, minor) = (libc::major(m.rdev), libc::minor(m.rdev));
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

impl Write for TarWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.out.write_all(buf)?;
        self.hash.update(buf);
        self.bytes += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
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

/// The parts of a path inside the top: `None` for the top itself.
fn entry_path(raw: &[u8]) -> Result<Option<String>, String> {
    if raw.contains(&0) {
        return Err("a NUL byte in the path".into());
    }
    if raw.starts_with(b"/") {
        return Err("an absolute path".into());
    }
    if raw.len() > 4096 {
        return Err("a path longer than 4096 bytes".into());
    }
    let text = std::str::from_utf8(raw)
        .map(str::to_owned)
        .unwrap_or_else(|_| String::from_utf8_lossy(raw).into_owned());
    if std::str::from_utf8(raw).is_err() {
        return Err(format!("a path that is not UTF-8: {text}"));
    }
    let mut parts = Vec::new();
    for part in text.split('/') {
        match part {
            "" | "." => {}
            ".." => return Err("a path with `..`".into()),
            p if p.len() > 255 => return Err("a name longer than 255 bytes".into()),
            p => parts.push(p),
        }
    }
    Ok((!parts.is_empty()).then(|| parts.join("/")))
}

/// The unpacking state.
struct Unpacker {
    top: OwnedFd,
    top_dev: u64,
    upper: bool,
    /// The last parent directory opened, by path.
    cached: Option<(String, OwnedFd)>,
    /// Every path an entry of this archive made.
    seen: HashSet<String>,
    /// Regular files this archive made (what a hard link may name).
    files: HashSet<String>,
    /// Directories of the archive and their times, set at the end.
    dirs: Vec<(String, (i64, u32))>,
    /// The same directories, to look up.
    dir_set: HashSet<String>,
    /// Directories not in the archive whose listing changed: their times before, restored.
    touched: HashMap<String, Option<(i64, u32)>>,
}

fn stat_kind(st: &nix::sys::stat::FileStat) -> SFlag {
    SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT
}

impl Unpacker {
    /// Opens directory `rel` (empty: the top) through real directories only, making missing
    /// ones (root-owned, 0755) when `make`.
    fn open_dir(&self, rel: &str, make: bool) -> Result<OwnedFd, ArchiveError> {
        let mut fd = nix::unistd::dup(self.top.as_fd()).map_err(errno_at("open", ""))?;
        let mut so_far = String::new();
        for part in rel.split('/').filter(|p| !p.is_empty()) {
            if !so_far.is_empty() {
                so_far.push('/');
            }
            so_far.push_str(part);
            let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
            let next = match nix::fcntl::openat(&fd, part, flags, Mode::empty()) {
                Err(nix::errno::Errno::ENOENT) if make => {
                    nix::sys::stat::mkdirat(&fd, part, Mode::from_bits_truncate(0o755))
                        .map_err(errno_at("make", &so_far))?;
                    nix::fcntl::openat(&fd, part, flags, Mode::empty())
                        .map_err(errno_at("open", &so_far))?
                }
                Err(nix::errno::Errno::ELOOP | nix::errno::Errno::ENOTDIR) => {
                    return Err(refused(
                        rel,
                        format!("/{so_far} is not a directory (a symlink is never followed)"),
                    ));
                }
                Err(e) => return Err(errno_at("open", &so_far)(e)),
                Ok(f) => f,
            };
            let st = nix::sys::stat::fstat(&next).map_err(errno_at("inspect", &so_far))?;
            if st.st_dev != self.top_dev {
                return Err(refused(rel, format!("/{so_far} is on another filesystem")));
            }
            fd = next;
        }
        Ok(fd)
    }

    /// The parent directory of `rel` and its last name.
    fn parent<'a>(&mut self, rel: &'a str) -> Result<(OwnedFd, &'a str), ArchiveError> {
        let (dir, name) = rel.rsplit_once('/').unwrap_or(("", rel));
        if let Some((d, fd)) = &self.cached
            && d == dir
        {
            let fd = nix::unistd::dup(fd.as_fd()).map_err(errno_at("open", dir))?;
            return Ok((fd, name));
        }
        let fd = self.open_dir(dir, true)?;
        let keep = nix::unistd::dup(fd.as_fd()).map_err(errno_at("open", dir))?;
        self.cached = Some((dir.to_owned(), keep));
        Ok((fd, name))
    }

    /// Remembers the times of directory `dir` (relative) before its listing changes, unless
    /// the archive sets them.
    fn touch(&mut self, dir: &str, fd: &OwnedFd) {
        if self.touched.contains_key(dir) || self.dir_set.contains(dir) {
            return;
        }
        let t = nix::sys::stat::fstat(fd)
            .ok()
            .map(|st| (st.st_mtime, st.st_mtime_nsec as u32));
        self.touched.insert(dir.to_owned(), t);
    }

    /// Removes whatever is at `name` in `dir` (recursively for a directory).
    fn remove(&self, dir: &OwnedFd, name: &str, rel: &str) -> Result<bool, ArchiveError> {
        match nix::sys::stat::fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Err(nix::errno::Errno::ENOENT) => Ok(false),
            Err(e) => Err(errno_at("inspect", rel)(e)),
            Ok(st) if stat_kind(&st) == SFlag::S_IFDIR => {
                if st.st_dev != self.top_dev {
                    return Err(refused(rel, "another filesystem is mounted there"));
                }
                let sub = nix::fcntl::openat(
                    dir,
                    name,
                    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                    Mode::empty(),
                )
                .map_err(errno_at("open", rel))?;
                self.empty(&sub, rel)?;
                nix::unistd::unlinkat(dir, name, nix::unistd::UnlinkatFlags::RemoveDir)
                    .map_err(errno_at("remove", rel))?;
                Ok(true)
            }
            Ok(_) => {
                nix::unistd::unlinkat(dir, name, nix::unistd::UnlinkatFlags::NoRemoveDir)
                    .map_err(errno_at("remove", rel))?;
                Ok(true)
            }
        }
    }

    /// Removes everything in directory `fd` (at `rel`), keeping the names in `keep`.
    fn empty_but(
        &self,
        fd: &OwnedFd,
        rel: &str,
        keep: &dyn Fn(&str) -> bool,
    ) -> Result<(), ArchiveError> {
        // Through /proc/self/fd: the listing of the directory this descriptor is, never a path.
        let listing = PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()));
        for name in names(&listing)? {
            let Some(n) = name.to_str() else {
                let child = format!("{rel}/{}", name.to_string_lossy());
                let bytes = name.as_bytes().to_vec();
                let cname = std::ffi::CString::new(bytes).map_err(|_| refused(&child, "NUL"))?;
                remove_raw(fd, &cname, &child, self)?;
                continue;
            };
            let child = if rel.is_empty() {
                n.to_owned()
            } else {
                format!("{rel}/{n}")
            };
            if keep(&child) {
                continue;
            }
            self.remove(fd, n, &child)?;
        }
        Ok(())
    }

    fn empty(&self, fd: &OwnedFd, rel: &str) -> Result<(), ArchiveError> {
        self.empty_but(fd, rel, &|_| false)
    }
}

/// Removes a name that is not UTF-8 (only in a full tree being emptied).
fn remove_raw(
    dir: &OwnedFd,
    name: &std::ffi::CStr,
    rel: &str,
    u: &Unpacker,
) -> Result<(), ArchiveError> {
    let st = nix::sys::stat::fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW)
        .map_err(errno_at("inspect", rel))?;
    if stat_kind(&st) == SFlag::S_IFDIR {
        let sub = nix::fcntl::openat(
            dir,
            name,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(errno_at("open", rel))?;
        u.empty(&sub, rel)?;
        nix::unistd::unlinkat(dir, name, nix::unistd::UnlinkatFlags::RemoveDir)
            .map_err(errno_at("remove", rel))
    } else {
        nix::unistd::unlinkat(dir, name, nix::unistd::UnlinkatFlags::NoRemoveDir)
            .map_err(errno_at("remove", rel))
    }
}

/// Whether an extended attribute may be set from an archive.
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

/// Unpacks the archive `input` into `target`.
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
    let top_dev = nix::sys::stat::fstat(&top)
        .map_err(|e| io_at("inspect", top_path)(e.into()))?
        .st_dev;
    let mut u = Unpacker {
        top,
        top_dev,
        upper,
        cached: None,
        seen: HashSet::new(),
        files: HashSet::new(),
        dirs: Vec::new(),
        dir_set: HashSet::new(),
        touched: HashMap::new(),
    };
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
        let (mut long_name, mut long_link, mut pax): (
            Option<Vec<u8>>,
            Option<Vec<u8>>,
            Option<Vec<u8>>,
        ) = (None, None, None);
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
            let mut xattrs = Vec::new();
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
            u.entry(rel, &shown, kind, &h, link, fields, &mut entry)?;
        }
    }
    // The stream must have ended with the end-of-archive blocks, and hold nothing after them.
    let ended = watched.pos >= BLOCK as u64
        && watched.pos % BLOCK as u64 == 0
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

impl Unpacker {
    #[allow(clippy::too_many_arguments)]
    fn entry(
        &mut self,
        rel: Option<String>,
        shown: &str,
        kind: tar::EntryType,
        h: &tar::Header,
        link: Option<Vec<u8>>,
        f: Fields,
        data: &mut dyn Read,
    ) -> Result<(), ArchiveError> {
        let Some(rel) = rel else {
            // The top.
            if kind != tar::EntryType::Directory {
                return Err(refused(
                    shown,
                    "the top of the tree as something else than a directory",
                ));
            }
            if !self.seen.insert(String::new()) {
                return Err(refused(shown, "the top given twice"));
            }
            let top = nix::unistd::dup(self.top.as_fd()).map_err(errno_at("open", ""))?;
            set_fd(&top, &f, "")?;
            self.dirs.push((String::new(), f.mtime));
            self.dir_set.insert(String::new());
            return Ok(());
        };
        let (dir, name) = rel.rsplit_once('/').unwrap_or(("", rel.as_str()));
        let (dir, name) = (dir.to_owned(), name.to_owned());
        if name == OPAQUE {
            let fd = self.open_dir(&dir, true)?;
            if self.upper {
                rustix::fs::fsetxattr(
                    &fd,
                    "trusted.overlay.opaque",
                    b"y",
                    rustix::fs::XattrFlags::empty(),
                )
                .map_err(|e| {
                    errno_at("mark opaque", &dir)(nix::errno::Errno::from_raw(e.raw_os_error()))
                })?;
            } else {
                self.touch(&dir, &fd);
                let seen = &self.seen;
                self.empty_but(&fd, &dir, &|p: &str| seen.contains(p))?;
            }
            return Ok(());
        }
        if let Some(gone) = name.strip_prefix(WHITEOUT) {
            if gone.is_empty() || gone == "." || gone == ".." {
                return Err(refused(shown, "a whiteout without a name"));
            }
            let target = if dir.is_empty() {
                gone.to_owned()
            } else {
                format!("{dir}/{gone}")
            };
            if self.seen.contains(&target) {
                return Err(refused(shown, "a whiteout of an entry of the same archive"));
            }
            if self.upper {
                let (pfd, _) = self.parent(&target)?;
                nix::sys::stat::mknodat(&pfd, gone, SFlag::S_IFCHR, Mode::empty(), 0)
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
                self.touch(&dir, &pfd);
                self.remove(&pfd, gone, &target)?;
            }
            return Ok(());
        }
        if !self.seen.insert(rel.clone()) {
            return Err(refused(shown, "the same path twice"));
        }
        let (pfd, _) = self.parent(&rel)?;
        let existing =
            match nix::sys::stat::fstatat(&pfd, name.as_str(), AtFlags::AT_SYMLINK_NOFOLLOW) {
                Ok(st) => Some(st),
                Err(nix::errno::Errno::ENOENT) => None,
                Err(e) => return Err(errno_at("inspect", &rel)(e)),
            };
        let is_dir = kind == tar::EntryType::Directory;
        let keep_dir = is_dir
            && existing
                .as_ref()
                .is_some_and(|st| stat_kind(st) == SFlag::S_IFDIR);
        if existing.is_some() && !keep_dir {
            self.touch(&dir, &pfd);
            self.remove(&pfd, &name, &rel)?;
        } else if existing.is_none() {
            self.touch(&dir, &pfd);
        }
        let name = name.as_str();
        let fail = |op: &'static str| errno_at(op, &rel);
        match kind {
            tar::EntryType::Directory => {
                if !keep_dir {
                    nix::sys::stat::mkdirat(&pfd, name, Mode::from_bits_truncate(0o700))
                        .map_err(fail("make"))?;
                }
                let fd = nix::fcntl::openat(
                    &pfd,
                    name,
                    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                    Mode::empty(),
                )
                .map_err(fail("open"))?;
                set_fd(&fd, &f, &rel)?;
                self.touched.remove(&rel);
                self.dirs.push((rel.clone(), f.mtime));
                self.dir_set.insert(rel.clone());
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let fd = nix::fcntl::openat(
                    &pfd,
                    name,
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
                    path: PathBuf::from(format!("/{rel}")),
                    source: e,
                })?;
                if n != h.size().unwrap_or(0) {
                    return Err(refused(shown, "the stream ends inside the file"));
                }
                set_fd(&OwnedFd::from(file), &f, &rel)?;
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
                nix::unistd::symlinkat(OsStr::from_bytes(&target), &pfd, name)
                    .map_err(fail("make"))?;
                set_at(&pfd, name, &f, &rel, true)?;
            }
            tar::EntryType::Link => {
                let target = link.ok_or_else(|| refused(shown, "a hard link without a target"))?;
                let target = entry_path(&target)
                    .map_err(|r| refused(shown, format!("a hard link to {r}")))?
                    .ok_or_else(|| refused(shown, "a hard link to the top"))?;
                let (tpath, tname) = target.rsplit_once('/').unwrap_or(("", target.as_str()));
                let tdir = self.open_dir(tpath, false).map_err(|_| {
                    refused(
                        shown,
                        format!("a hard link to /{target}, which is not there"),
                    )
                })?;
                let st = nix::sys::stat::fstatat(&tdir, tname, AtFlags::AT_SYMLINK_NOFOLLOW)
                    .map_err(|_| {
                        refused(
                            shown,
                            format!("a hard link to /{target}, which is not there"),
                        )
                    })?;
                let ours = self.files.contains(&target);
                if stat_kind(&st) != SFlag::S_IFREG
                    || (self.upper && !ours)
                    || (!ours && self.seen.contains(&target))
                {
                    return Err(refused(
                        shown,
                        format!(
                            "a hard link to /{target}, which is not a regular file of this archive"
                        ),
                    ));
                }
                nix::unistd::linkat(&tdir, tname, &pfd, name, AtFlags::empty())
                    .map_err(fail("link"))?;
                self.files.insert(rel.clone());
            }
            tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
                let (sflag, dev) = match kind {
                    tar::EntryType::Fifo => (SFlag::S_IFIFO, 0),
                    _ => {
                        let major = h.device_major().ok().flatten().unwrap_or(0);
                        let minor = h.device_minor().ok().flatten().unwrap_or(0);
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
                nix::sys::stat::mknodat(&pfd, name, sflag, Mode::from_bits_truncate(0o600), dev)
                    .map_err(fail("make"))?;
                set_at(&pfd, name, &f, &rel, false)?;
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

    fn finish(self) -> Result<(), ArchiveError> {
        let restore: Vec<(String, (i64, u32))> = self
            .touched
            .iter()
            .filter_map(|(d, t)| t.map(|t| (d.clone(), t)))
            .chain(self.dirs.iter().cloned())
            .collect();
        for (dir, t) in restore {
            let fd = self.open_dir(&dir, false)?;
            nix::sys::stat::futimens(&fd, &ts(t), &ts(t))
                .map_err(errno_at("set the time of", &dir))?;
        }
        Ok(())
    }
}

/// Owner, mode, attributes and time of an open file or directory.
fn set_fd(fd: &OwnedFd, f: &Fields, rel: &str) -> Result<(), ArchiveError> {
    nix::unistd::fchown(fd, Some(Uid::from_raw(f.uid)), Some(Gid::from_raw(f.gid)))
        .map_err(errno_at("chown", rel))?;
    nix::sys::stat::fchmod(fd, Mode::from_bits_truncate(f.mode)).map_err(errno_at("chmod", rel))?;
    for (k, v) in &f.xattrs {
        rustix::fs::fsetxattr(fd, OsStr::from_bytes(k), v, rustix::fs::XattrFlags::empty())
            .map_err(|e| {
                errno_at("set an attribute of", rel)(nix::errno::Errno::from_raw(e.raw_os_error()))
            })?;
    }
    nix::sys::stat::futimens(fd, &ts(f.mtime), &ts(f.mtime))
        .map_err(errno_at("set the time of", rel))
}

/// Owner, mode (not for a symlink), attributes and time of `name` in `dir`, never following it.
fn set_at(
    dir: &OwnedFd,
    name: &str,
    f: &Fields,
    rel: &str,
    symlink: bool,
) -> Result<(), ArchiveError> {
    nix::unistd::fchownat(
        dir,
        name,
        Some(Uid::from_raw(f.uid)),
        Some(Gid::from_raw(f.gid)),
        AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .map_err(errno_at("chown", rel))?;
    if !symlink {
        // A device node or a FIFO just made by this unpack: the name is not a symlink.
        nix::sys::stat::fchmodat(
            dir,
            name,
            Mode::from_bits_truncate(f.mode),
            FchmodatFlags::FollowSymlink,
        )
        .map_err(errno_at("chmod", rel))?;
    }
    // The name is one component of a directory reached without symlinks, so this path cannot
    // leave it; l*xattr does not follow the last component.
    let path = PathBuf::from(format!("/proc/self/fd/{}/{name}", dir.as_raw_fd()));
    for (k, v) in &f.xattrs {
        rustix::fs::lsetxattr(
            &path,
            OsStr::from_bytes(k),
            v,
            rustix::fs::XattrFlags::empty(),
        )
        .map_err(|e| {
            errno_at("set an attribute of", rel)(nix::errno::Errno::from_raw(e.raw_os_error()))
        })?;
    }
    nix::sys::stat::utimensat(
        dir,
        name,
        &ts(f.mtime),
        &ts(f.mtime),
        UtimensatFlags::NoFollowSymlink,
    )
    .map_err(errno_at("set the time of", rel))
}

#[cfg(test)]
mod tests;
