//! Content digests of host files and trees, as read by `copy` steps and `tar` bases.
//!
//! A file's digest is the plain blake3 hash of its bytes (so it matches `b3sum`). A tree's digest
//! is blake3 (derive-key mode, versioned context) over a canonical listing of the tree in
//! depth-first order with children sorted by name bytes: for each entry its relative path (raw
//! bytes), its kind, its permission bits and either its content digest or its symlink target.
//! Owners and timestamps are not part of it: envc does not copy them.
//!
//! Walking is sequential (it is metadata only); hashing file contents runs in parallel across files,
//! and big files are memory-mapped and hashed with several threads. The digests enter layer ids,
//! so this encoding is as stable as [`envc_plan::key`]'s: changing it needs a new context string.

mod cache;

use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

use envc_plan::Digest;
use rayon::prelude::*;

pub use cache::Cache;

/// The context string of tree digests.
pub const TREE_CONTEXT: &str = "envc 2026-11-25 tree digest v1";

/// Files at least this big are memory-mapped and hashed on several threads.
const PARALLEL_FILE_MIN: u64 = 1 << 20;

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

/// The digest of a file or directory tree, with what the walk saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TreeDigest {
    /// The digest of the canonical listing.
    pub digest: Digest,
    /// Counts of what was hashed.
    pub stats: TreeStats,
}

/// A failure while reading a tree to hash it.
#[derive(Debug, thiserror::Error)]
pub enum DigestError {
    /// An I/O operation on a path failed.
    #[error("cannot {op} {}: {source}", path.display())]
    Io {
        /// What was being done ("read", "list", "stat").
        op: &'static str,
        /// The path it was done to.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
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
            DigestError::Io { path, .. } | DigestError::Unsupported { path, .. } => path,
        }
    }
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> DigestError + 'a {
    move |source| DigestError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

/// The blake3 digest of a file's bytes. Big files are memory-mapped and hashed on all cores, and
/// remembered in `cache` when one is given.
pub fn file(path: &Path, cache: Option<&Cache>) -> Result<Digest, DigestError> {
    let meta = fs::metadata(path).map_err(io_err("stat", path))?;
    file_with_meta(path, &meta, cache)
}

fn file_with_meta(
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
    let mut hasher = blake3::Hasher::new();
    if len >= PARALLEL_FILE_MIN {
        hasher
            .update_mmap_rayon(path)
            .map_err(io_err("read", path))?;
    } else {
        let bytes = fs::read(path).map_err(io_err("read", path))?;
        hasher.update(&bytes);
    }
    let digest = Digest(*hasher.finalize().as_bytes());
    if let Some((c, e)) = entry {
        c.put(&e, &digest);
    }
    Ok(digest)
}

enum EntryKind {
    File { meta: fs::Metadata },
    Dir,
    Symlink { target: Vec<u8> },
}

struct Entry {
    /// Path relative to the tree's top, empty for the top itself.
    rel: PathBuf,
    kind: EntryKind,
    mode: u32,
}

fn special_kind(ft: &fs::FileType) -> &'static str {
    if ft.is_fifo() {
        "fifo"
    } else if ft.is_socket() {
        "socket"
    } else if ft.is_block_device() {
        "block device"
    } else if ft.is_char_device() {
        "character device"
    } else {
        "special file"
    }
}

/// `top/rel`, or `top` itself for the empty relative path (joining "" would add a trailing `/`).
fn join_rel(top: &Path, rel: &Path) -> PathBuf {
    if rel.as_os_str().is_empty() {
        top.to_owned()
    } else {
        top.join(rel)
    }
}

fn walk(
    top: &Path,
    rel: PathBuf,
    meta: fs::Metadata,
    out: &mut Vec<Entry>,
) -> Result<(), DigestError> {
    let path = join_rel(top, &rel);
    let ft = meta.file_type();
    let mode = meta.permissions().mode() & 0o7777;
    if ft.is_file() {
        out.push(Entry {
            rel,
            kind: EntryKind::File { meta },
            mode,
        });
    } else if ft.is_symlink() {
        let target = fs::read_link(&path).map_err(io_err("read link", &path))?;
        out.push(Entry {
            rel,
            kind: EntryKind::Symlink {
                target: target.as_os_str().as_bytes().to_vec(),
            },
            mode: 0,
        });
    } else if ft.is_dir() {
        let mut children = Vec::new();
        for item in fs::read_dir(&path).map_err(io_err("list", &path))? {
            let item = item.map_err(io_err("list", &path))?;
            children.push(item.file_name());
        }
        children.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        out.push(Entry {
            rel: rel.clone(),
            kind: EntryKind::Dir,
            mode,
        });
        for name in children {
            let child_rel = rel.join(&name);
            let child_path = top.join(&child_rel);
            let child_meta =
                fs::symlink_metadata(&child_path).map_err(io_err("stat", &child_path))?;
            walk(top, child_rel, child_meta, out)?;
        }
    } else {
        return Err(DigestError::Unsupported {
            path,
            kind: special_kind(&ft),
        });
    }
    Ok(())
}

/// The digest of the file or directory at `path`. A symlink at `path` itself is followed (the
/// caller decides whether that is allowed); symlinks inside a directory are recorded, not followed.
/// Big files' digests are remembered in `cache` when one is given.
pub fn tree(path: &Path, cache: Option<&Cache>) -> Result<TreeDigest, DigestError> {
    let meta = fs::metadata(path).map_err(io_err("stat", path))?;
    let mut entries = Vec::new();
    walk(path, PathBuf::new(), meta, &mut entries)?;

    let contents: Vec<Option<Digest>> = entries
        .par_iter()
        .map(|e| match e.kind {
            EntryKind::File { ref meta } => {
                file_with_meta(&join_rel(path, &e.rel), meta, cache).map(Some)
            }
            _ => Ok(None),
        })
        .collect::<Result<_, _>>()?;

    let mut stats = TreeStats::default();
    let mut hasher = blake3::Hasher::new_derive_key(TREE_CONTEXT);
    let put = |h: &mut blake3::Hasher, b: &[u8]| {
        h.update(&(b.len() as u64).to_le_bytes());
        h.update(b);
    };
    hasher.update(&(entries.len() as u64).to_le_bytes());
    for (entry, content) in entries.iter().zip(&contents) {
        put(&mut hasher, entry.rel.as_os_str().as_bytes());
        match (&entry.kind, content) {
            (EntryKind::File { meta }, Some(d)) => {
                stats.files += 1;
                stats.bytes += meta.len();
                hasher.update(b"f");
                hasher.update(&entry.mode.to_le_bytes());
                hasher.update(&d.0);
            }
            (EntryKind::Dir, _) => {
                stats.dirs += 1;
                hasher.update(b"d");
                hasher.update(&entry.mode.to_le_bytes());
            }
            (EntryKind::Symlink { target }, _) => {
                stats.symlinks += 1;
                hasher.update(b"l");
                put(&mut hasher, target);
            }
            (EntryKind::File { .. }, None) => unreachable!("every file entry was hashed"),
        }
    }
    Ok(TreeDigest {
        digest: Digest(*hasher.finalize().as_bytes()),
        stats,
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
