//! Content digests of host files and trees, as read by `copy` steps and `tar` bases.
//!
//! The encoding is [`envc_plan::digest`]'s ([`TreeHasher`]): this module only reads the host. The
//! runtime's copy feeds the same hasher with what it copies and refuses a source whose digest is
//! not the plan's, so a source changed after compiling is never sealed under the old id.
//!
//! Reading never follows a symlink inside a tree and never opens a FIFO, socket or device as a
//! file: every entry is looked at with `fstatat(AT_SYMLINK_NOFOLLOW)` from its directory's fd, only
//! regular files and directories are opened (`O_NOFOLLOW | O_NONBLOCK`, so a FIFO swapped in
//! meanwhile cannot block), and the opened fd's own `fstat` decides what it is. Directories are
//! walked with `openat` from their parent's fd, so a directory swapped for a symlink cannot
//! redirect the walk. The entries of each directory are hashed in parallel (rayon), and big files
//! on several threads; the fds held open stay bounded by the depth of the walk and the threads.

mod cache;

use std::ffi::{CStr, OsStr};
use std::fs;
use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use envc_plan::digest::{ContentHasher, TreeHasher};
use envc_plan::{CopyKind, Digest};
use rayon::prelude::*;
use rustix::fs::{AtFlags, FileType, Mode, OFlags};

pub use cache::Cache;
pub use envc_plan::digest::TREE_CONTEXT;

/// Files at least this big are hashed on several threads (and their digests cached).
const PARALLEL_FILE_MIN: u64 = 1 << 20;

/// How much of a big file is read at a time to be hashed on several threads.
const PARALLEL_CHUNK: usize = 8 << 20;

/// What a tree walk saw.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TreeStats {
    /// Regular files.
    pub files: u64,
    /// Directories, the top one included.
    pub dirs: u64,
    /// Symbolic links.
    pub symlinks: u64,
    /// Bytes of regular file content.
    pub bytes: u64,
}

impl TreeStats {
    fn add(&mut self, other: TreeStats) {
        self.files += other.files;
        self.dirs += other.dirs;
        self.symlinks += other.symlinks;
        self.bytes += other.bytes;
    }
}

/// The digest of a file or directory tree, with what the walk saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TreeDigest {
    /// The digest of the canonical listing.
    pub digest: Digest,
    /// Whether the top is a file or a directory (as the walk opened it).
    pub kind: CopyKind,
    /// Counts of what was hashed.
    pub stats: TreeStats,
}

/// A failure while reading a tree to hash it.
#[derive(Debug, thiserror::Error)]
pub enum DigestError {
    /// An I/O operation on a path failed.
    #[error("cannot {op} {}: {source}", path.display())]
    Io {
        /// What was being done ("read", "list", "stat", "open").
        op: &'static str,
        /// The path it was done to.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A path that was just resolved reaches a symlink now: it was swapped meanwhile.
    #[error("{} was replaced by a symbolic link (or a directory on its path was) while it was read", path.display())]
    Swapped {
        /// The path.
        path: PathBuf,
    },
    /// The tree holds something that cannot be copied.
    #[error("{} is a {kind}: only regular files, directories and symbolic links can be copied", path.display())]
    Unsupported {
        /// The offending path.
        path: PathBuf,
        /// What it is ("fifo", "socket", ...).
        kind: &'static str,
    },
}

impl DigestError {
    /// The path the error is about.
    pub fn path(&self) -> &Path {
        match self {
            DigestError::Io { path, .. }
            | DigestError::Swapped { path }
            | DigestError::Unsupported { path, .. } => path,
        }
    }
}

fn io_err<'a, E: Into<io::Error>>(
    op: &'static str,
    path: &'a Path,
) -> impl FnOnce(E) -> DigestError + 'a {
    move |source| DigestError::Io {
        op,
        path: path.to_owned(),
        source: source.into(),
    }
}

/// What a file type is called in errors.
fn kind_name(ft: FileType) -> &'static str {
    match ft {
        FileType::Fifo => "fifo",
        FileType::Socket => "socket",
        FileType::BlockDevice => "block device",
        FileType::CharacterDevice => "character device",
        FileType::Symlink => "symbolic link",
        FileType::Directory => "directory",
        FileType::RegularFile => "regular file",
        FileType::Unknown => "special file",
    }
}

/// An entry of a tree, opened (or read, for a symlink).
enum Opened {
    File(fs::File, fs::Metadata),
    Dir(OwnedFd, u32),
    Symlink(Vec<u8>),
}

/// Opens `name` in `dir` (or the path itself when `dir` is `None`; a symlink there is followed)
/// as a regular file or directory, or reads it as a symlink. Nothing else is ever opened.
fn open_entry(
    dir: Option<BorrowedFd<'_>>,
    name: &OsStr,
    path: &Path,
) -> Result<Opened, DigestError> {
    let (at, follow) = match dir {
        Some(fd) => (fd, false),
        None => (rustix::fs::CWD, true),
    };
    let nofollow = if follow {
        AtFlags::empty()
    } else {
        AtFlags::SYMLINK_NOFOLLOW
    };
    let st = rustix::fs::statat(at, name, nofollow).map_err(io_err("stat", path))?;
    let ft = FileType::from_raw_mode(st.st_mode);
    match ft {
        FileType::Symlink => {
            let target =
                rustix::fs::readlinkat(at, name, Vec::new()).map_err(io_err("read link", path))?;
            return Ok(Opened::Symlink(target.into_bytes()));
        }
        FileType::RegularFile | FileType::Directory => {}
        other => {
            return Err(DigestError::Unsupported {
                path: path.to_owned(),
                kind: kind_name(other),
            });
        }
    }
    let mut flags = OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC;
    if !follow {
        flags |= OFlags::NOFOLLOW;
    }
    let fd = rustix::fs::openat(at, name, flags, Mode::empty()).map_err(io_err("open", path))?;
    // What was opened decides, not what the stat before saw: it may have been swapped meanwhile.
    let st = rustix::fs::fstat(&fd).map_err(io_err("stat", path))?;
    let mode = st.st_mode & 0o7777;
    match FileType::from_raw_mode(st.st_mode) {
        FileType::RegularFile => {
            let file = fs::File::from(fd);
            let meta = file.metadata().map_err(io_err("stat", path))?;
            Ok(Opened::File(file, meta))
        }
        FileType::Directory => Ok(Opened::Dir(fd, mode)),
        other => Err(DigestError::Unsupported {
            path: path.to_owned(),
            kind: kind_name(other),
        }),
    }
}

/// The content digest of an opened regular file: big files are read in large pieces and hashed on
/// all cores, and remembered in `cache` when one is given.
fn hash_file(
    mut file: &fs::File,
    path: &Path,
    meta: &fs::Metadata,
    cache: Option<&Cache>,
) -> Result<Digest, DigestError> {
    let len = meta.len();
    let entry = cache
        .filter(|_| len >= PARALLEL_FILE_MIN)
        .and_then(|c| Some((c, c.entry(path, meta)?)));
    if let Some(d) = entry.as_ref().and_then(|(c, e)| c.get(e)) {
        return Ok(d);
    }
    let digest = if len >= PARALLEL_FILE_MIN {
        // Plain blake3 of the bytes, as ContentHasher computes it, on several threads.
        let mut hasher = blake3::Hasher::new();
        let mut buf = vec![0u8; PARALLEL_CHUNK];
        loop {
            let n = read_full(&mut file, &mut buf).map_err(io_err("read", path))?;
            hasher.update_rayon(&buf[..n]);
            if n < buf.len() {
                break;
            }
        }
        Digest(*hasher.finalize().as_bytes())
    } else {
        let mut hasher = ContentHasher::new();
        let mut buf = [0u8; 64 << 10];
        loop {
            let n = match file.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(io_err("read", path)(e)),
            };
            hasher.update(&buf[..n]);
        }
        hasher.finish()
    };
    if let Some((c, e)) = entry {
        c.put(&e, &digest);
    }
    Ok(digest)
}

/// Fills `buf` unless the end of the file comes first; returns how much was read.
fn read_full(file: &mut &fs::File, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// The blake3 digest of a file's bytes (a symlink at `path` is followed; a FIFO, socket or device
/// is refused without being opened as a file). Big files are hashed on all cores, and remembered
/// in `cache` when one is given.
pub fn file(path: &Path, cache: Option<&Cache>) -> Result<Digest, DigestError> {
    match open_entry(None, path.as_os_str(), path)? {
        Opened::File(file, meta) => hash_file(&file, path, &meta, cache),
        Opened::Dir(..) => Err(DigestError::Io {
            op: "read",
            path: path.to_owned(),
            source: io::Error::from(io::ErrorKind::IsADirectory),
        }),
        // Unreachable: the top is followed, so it is never read as a link.
        Opened::Symlink(_) => Err(DigestError::Unsupported {
            path: path.to_owned(),
            kind: "symbolic link",
        }),
    }
}

/// A part of a tree: the entries of one subtree and what they count.
#[derive(Default)]
struct Part {
    hasher: TreeHasher,
    stats: TreeStats,
}

/// `rel/name`, or `name` at the top.
fn child_rel(rel: &[u8], name: &[u8]) -> Vec<u8> {
    if rel.is_empty() {
        return name.to_vec();
    }
    let mut out = Vec::with_capacity(rel.len() + 1 + name.len());
    out.extend_from_slice(rel);
    out.push(b'/');
    out.extend_from_slice(name);
    out
}

/// `top/rel`, or `top` itself for the empty relative path.
fn join_rel(top: &Path, rel: &[u8]) -> PathBuf {
    if rel.is_empty() {
        top.to_owned()
    } else {
        top.join(OsStr::from_bytes(rel))
    }
}

/// Records one opened entry (recursing into a directory) at `rel`.
fn visit(
    top: &Path,
    rel: Vec<u8>,
    opened: Opened,
    cache: Option<&Cache>,
) -> Result<Part, DigestError> {
    let mut part = Part::default();
    match opened {
        Opened::File(file, meta) => {
            let path = join_rel(top, &rel);
            let content = hash_file(&file, &path, &meta, cache)?;
            part.stats.files = 1;
            part.stats.bytes = meta.len();
            part.hasher.file(&rel, meta.permissions().mode(), content);
        }
        Opened::Symlink(target) => {
            part.stats.symlinks = 1;
            part.hasher.symlink(&rel, &target);
        }
        Opened::Dir(fd, mode) => {
            let path = join_rel(top, &rel);
            let names = list(fd.as_fd(), &path)?;
            part.stats.dirs = 1;
            part.hasher.dir(&rel, mode);
            // Every child in parallel; the first error in name order is the one reported.
            let children: Vec<Result<Part, DigestError>> = names
                .par_iter()
                .map(|name| {
                    let crel = child_rel(&rel, name.as_bytes());
                    let cpath = join_rel(top, &crel);
                    let opened = open_entry(Some(fd.as_fd()), name, &cpath)?;
                    visit(top, crel, opened, cache)
                })
                .collect();
            for child in children {
                let child = child?;
                part.stats.add(child.stats);
                part.hasher.extend(child.hasher);
            }
        }
    }
    Ok(part)
}

/// The names in an opened directory, sorted, without `.` and `..`.
fn list(dir: BorrowedFd<'_>, path: &Path) -> Result<Vec<std::ffi::OsString>, DigestError> {
    let mut names = Vec::new();
    for item in rustix::fs::Dir::read_from(dir).map_err(io_err("list", path))? {
        let item = item.map_err(io_err("list", path))?;
        let name: &CStr = item.file_name();
        let bytes = name.to_bytes();
        if bytes != b"." && bytes != b".." {
            names.push(OsStr::from_bytes(bytes).to_owned());
        }
    }
    names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    Ok(names)
}

/// The digest of the file or directory at `path`. A symlink at `path` itself is followed (the
/// caller decides whether that is allowed); symlinks inside a directory are recorded, not followed.
/// Big files' digests are remembered in `cache` when one is given.
pub fn tree(path: &Path, cache: Option<&Cache>) -> Result<TreeDigest, DigestError> {
    let opened = open_entry(None, path.as_os_str(), path)?;
    digest_of(path, opened, cache)
}

/// The digest of the file or directory at `path`, a path just resolved (canonical): a symlink
/// anywhere on it is refused, since one there now was swapped in after resolving. This is what a
/// `copy` source is hashed with, and what the runtime's copy checks it against.
pub fn resolved_tree(path: &Path, cache: Option<&Cache>) -> Result<TreeDigest, DigestError> {
    let swapped = || DigestError::Swapped {
        path: path.to_owned(),
    };
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        // `/` itself: nothing on the way.
        return tree(path, cache);
    };
    let parent = if parent.as_os_str().is_empty() {
        Path::new(".")
    } else {
        parent
    };
    let dir = rustix::fs::openat2(
        rustix::fs::CWD,
        parent,
        OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
        rustix::fs::ResolveFlags::NO_SYMLINKS | rustix::fs::ResolveFlags::NO_MAGICLINKS,
    )
    .map_err(|e| match e {
        rustix::io::Errno::LOOP => swapped(),
        e => io_err("open", parent)(e),
    })?;
    match open_entry(Some(dir.as_fd()), name, path)? {
        Opened::Symlink(_) => Err(swapped()),
        opened => digest_of(path, opened, cache),
    }
}

fn digest_of(
    path: &Path,
    opened: Opened,
    cache: Option<&Cache>,
) -> Result<TreeDigest, DigestError> {
    let kind = match opened {
        Opened::Dir(..) => CopyKind::Directory,
        _ => CopyKind::File,
    };
    let part = visit(path, Vec::new(), opened, cache)?;
    Ok(TreeDigest {
        digest: part.hasher.finish(),
        kind,
        stats: part.stats,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use envc_plan::id::ID_LEN;
    use std::os::unix::fs::symlink;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("envc-digest-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn file_digest_is_plain_blake3() {
        let dir = scratch("plain");
        let f = dir.join("a");
        fs::write(&f, b"hello").unwrap();
        assert_eq!(
            file(&f, None).unwrap().0,
            *blake3::hash(b"hello").as_bytes()
        );
        let t = tree(&f, None).unwrap();
        assert_eq!(
            t.stats,
            TreeStats {
                files: 1,
                dirs: 0,
                symlinks: 0,
                bytes: 5
            }
        );
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn tree_digest_tracks_content_mode_names_and_links() {
        let dir = scratch("tree");
        let t = dir.join("t");
        fs::create_dir_all(t.join("sub")).unwrap();
        fs::write(t.join("sub/x"), b"1").unwrap();
        fs::write(t.join("y"), b"2").unwrap();
        symlink("sub/x", t.join("link")).unwrap();
        let base = tree(&t, None).unwrap();
        assert_eq!(
            base.stats,
            TreeStats {
                files: 2,
                dirs: 2,
                symlinks: 1,
                bytes: 2
            }
        );
        assert_eq!(tree(&t, None).unwrap().digest, base.digest, "deterministic");

        fs::write(t.join("y"), b"3").unwrap();
        let changed = tree(&t, None).unwrap().digest;
        assert_ne!(changed, base.digest, "content");
        fs::write(t.join("y"), b"2").unwrap();
        assert_eq!(tree(&t, None).unwrap().digest, base.digest);

        fs::set_permissions(t.join("y"), fs::Permissions::from_mode(0o600)).unwrap();
        assert_ne!(tree(&t, None).unwrap().digest, base.digest, "mode");
        fs::set_permissions(t.join("y"), fs::Permissions::from_mode(0o644)).unwrap();

        fs::remove_file(t.join("link")).unwrap();
        symlink("y", t.join("link")).unwrap();
        assert_ne!(tree(&t, None).unwrap().digest, base.digest, "link target");
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn cache_remembers_big_files_until_they_change() {
        let dir = scratch("cache");
        let f = dir.join("big");
        let data = vec![7u8; (PARALLEL_FILE_MIN as usize) + 10];
        fs::write(&f, &data).unwrap();
        let cache = Cache::new(dir.join("cache")).with_racy_window(std::time::Duration::ZERO);
        let real = file(&f, None).unwrap();
        // The racy window can only be tested with a file older than it: a fresh file is not cached.
        let strict = Cache::new(dir.join("strict"));
        assert_eq!(file(&f, Some(&strict)).unwrap(), real);
        assert!(
            !dir.join("strict").exists(),
            "a file changed just now is not cached"
        );
        // Cached, then served from the cache: prove it by planting another value in the entry.
        assert_eq!(file(&f, Some(&cache)).unwrap(), real);
        let entry = cache.entry(&f, &fs::metadata(&f).unwrap()).unwrap();
        assert_eq!(fs::read_to_string(&entry).unwrap(), real.to_hex());
        fs::write(&entry, Digest([9; ID_LEN]).to_hex()).unwrap();
        assert_eq!(
            file(&f, Some(&cache)).unwrap(),
            Digest([9; ID_LEN]),
            "served from the cache"
        );
        assert_ne!(
            tree(&f, Some(&cache)).unwrap().digest,
            tree(&f, None).unwrap().digest,
            "trees use the cache too"
        );
        // Any change to the file (same size even) changes the key: the digest is recomputed.
        let mut changed = data.clone();
        changed[0] = 8;
        fs::write(&f, &changed).unwrap();
        let fresh = file(&f, Some(&cache)).unwrap();
        assert_ne!(fresh, Digest([9; ID_LEN]));
        assert_eq!(fresh, file(&f, None).unwrap());
        // Small files are never cached.
        let small = dir.join("small");
        fs::write(&small, b"x").unwrap();
        let before = fs::read_dir(dir.join("cache")).unwrap().count();
        file(&small, Some(&cache)).unwrap();
        assert_eq!(fs::read_dir(dir.join("cache")).unwrap().count(), before);
        fs::remove_dir_all(dir).unwrap();
    }

    /// A tree with every kind of entry, modes set explicitly, and names whose canonical order is
    /// not their byte order as whole paths (`a/b` sorts before `a.c`).
    fn pinned_tree(t: &Path) {
        fs::create_dir_all(t.join("a/b")).unwrap();
        fs::create_dir_all(t.join("a.c")).unwrap();
        fs::write(t.join("a/b/x"), b"one").unwrap();
        fs::write(t.join("a.c/y"), b"two").unwrap();
        fs::write(t.join("a0"), b"").unwrap();
        symlink("a/b/x", t.join("a/l")).unwrap();
        for (p, m) in [
            ("", 0o755),
            ("a", 0o750),
            ("a/b", 0o700),
            ("a.c", 0o2775),
            ("a/b/x", 0o644),
            ("a.c/y", 0o4755),
            ("a0", 0o600),
        ] {
            fs::set_permissions(join_rel(t, p.as_bytes()), fs::Permissions::from_mode(m)).unwrap();
        }
    }

    /// The digests enter layer ids: these values were computed by the walker before the encoding
    /// moved to the plan crate, and must never change without a new context string.
    #[test]
    fn tree_digests_are_pinned() {
        let dir = scratch("pinned");
        let t = dir.join("t");
        pinned_tree(&t);
        let d = tree(&t, None).unwrap();
        assert_eq!(
            d.digest.to_hex(),
            "de77b62fa469d3cd1ab8a163d238d67337f78bcb2556593456e7a7a0e1117c9d"
        );
        assert_eq!(d.kind, CopyKind::Directory);
        assert_eq!(
            d.stats,
            TreeStats {
                files: 3,
                dirs: 4,
                symlinks: 1,
                bytes: 6
            }
        );
        let f = tree(&t.join("a/b/x"), None).unwrap();
        assert_eq!(
            f.digest.to_hex(),
            "c6685ccf35d668e695b05d9b0094579dba4fef31a6119ee4e3ae802ea570eeec"
        );
        assert_eq!(f.kind, CopyKind::File);
        // A symlink at the top is followed; the same tree behind it has the same digest.
        symlink(&t, dir.join("via-link")).unwrap();
        assert_eq!(tree(&dir.join("via-link"), None).unwrap().digest, d.digest);
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_resolved_path_reaching_a_symlink_is_refused() {
        let dir = scratch("resolved");
        let t = dir.join("t");
        pinned_tree(&t);
        let d = tree(&t, None).unwrap().digest;
        assert_eq!(resolved_tree(&t, None).unwrap().digest, d);
        symlink(&t, dir.join("link")).unwrap();
        for p in [dir.join("link"), dir.join("link/a/b/x")] {
            let err = resolved_tree(&p, None).unwrap_err();
            assert!(
                matches!(err, DigestError::Swapped { ref path } if *path == p),
                "{err}"
            );
        }
        fs::remove_dir_all(dir).unwrap();
    }

    /// Big files are hashed in pieces on several threads: the same plain blake3 as small ones.
    #[test]
    fn big_files_hash_like_b3sum() {
        let dir = scratch("big");
        let f = dir.join("big");
        let data: Vec<u8> = (0..PARALLEL_CHUNK * 2 + 12_345)
            .map(|i| (i % 251) as u8)
            .collect();
        fs::write(&f, &data).unwrap();
        assert_eq!(file(&f, None).unwrap().0, *blake3::hash(&data).as_bytes());
        fs::remove_dir_all(dir).unwrap();
    }

    /// Runs `f` on another thread; fails if it takes more than 30 s (a FIFO opened for reading
    /// without O_NONBLOCK would block forever).
    fn promptly<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(f());
        });
        rx.recv_timeout(std::time::Duration::from_secs(30))
            .expect("hashing a FIFO blocked for 30 s")
    }

    #[test]
    fn a_fifo_is_refused_without_blocking() {
        let dir = scratch("fifo");
        let fifo = dir.join("t/pipe");
        fs::create_dir_all(dir.join("t")).unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &fifo,
            FileType::Fifo,
            Mode::from_raw_mode(0o644),
            0,
        )
        .unwrap();
        for path in [fifo.clone(), dir.join("t")] {
            let err = promptly(move || tree(&path, None)).unwrap_err();
            assert!(
                matches!(err, DigestError::Unsupported { kind: "fifo", ref path } if *path == fifo),
                "{err}"
            );
        }
        let f = fifo.clone();
        let err = promptly(move || file(&f, None)).unwrap_err();
        assert!(
            matches!(err, DigestError::Unsupported { kind: "fifo", .. }),
            "{err}"
        );
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn special_files_are_refused() {
        let dir = scratch("special");
        let sock = dir.join("s");
        let _l = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let err = tree(&dir, None).unwrap_err();
        assert!(
            matches!(err, DigestError::Unsupported { kind: "socket", .. }),
            "{err}"
        );
        fs::remove_dir_all(dir).unwrap();
    }
}
