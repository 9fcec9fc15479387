//! The on-disk cache of big host files' digests, keyed by what `stat` says about the file.

use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use envc_plan::Digest;

/// A cache of big files' digests, so that an unchanged tarball or copied file is not read again
/// on every compile (git's index does the same). An entry is keyed by the file's path, device,
/// inode, size, mtime and ctime (nanoseconds): any write to the file changes its ctime, and so the
/// key. A file changed within the racy window (default 2 s) is neither looked up nor cached, since
/// it may still be being written within one timestamp tick. Cache failures only cost a re-hash.
#[derive(Debug, Clone)]
pub struct Cache {
    dir: PathBuf,
    racy: std::time::Duration,
}

impl Cache {
    /// A cache in `dir` (created when first written).
    pub fn new(dir: impl Into<PathBuf>) -> Cache {
        Cache {
            dir: dir.into(),
            racy: std::time::Duration::from_secs(2),
        }
    }

    /// The same cache with another racy window.
    pub fn with_racy_window(mut self, racy: std::time::Duration) -> Cache {
        self.racy = racy;
        self
    }

    pub(super) fn entry(&self, path: &Path, meta: &fs::Metadata) -> Option<PathBuf> {
        use std::os::unix::fs::MetadataExt;
        let changed = std::time::UNIX_EPOCH
            + std::time::Duration::new(meta.mtime().max(meta.ctime()).max(0) as u64, 0);
        if std::time::SystemTime::now()
            .duration_since(changed)
            .unwrap_or_default()
            <= self.racy
        {
            return None;
        }
        let mut h = blake3::Hasher::new_derive_key("envc 2026-11-25 digest cache v1");
        let canonical = fs::canonicalize(path).unwrap_or_else(|_| path.to_owned());
        h.update(&(canonical.as_os_str().len() as u64).to_le_bytes());
        h.update(canonical.as_os_str().as_bytes());
        for v in [meta.dev(), meta.ino(), meta.size()] {
            h.update(&v.to_le_bytes());
        }
        for v in [
            meta.mtime(),
            meta.mtime_nsec(),
            meta.ctime(),
            meta.ctime_nsec(),
        ] {
            h.update(&v.to_le_bytes());
        }
        Some(self.dir.join(h.finalize().to_hex().as_str()))
    }

    pub(super) fn get(&self, entry: &Path) -> Option<Digest> {
        let text = fs::read_to_string(entry).ok()?;
        text.trim().parse().ok()
    }

    pub(super) fn put(&self, entry: &Path, digest: &Digest) {
        let tmp = entry.with_extension(format!("tmp{}", std::process::id()));
        let _ = fs::create_dir_all(&self.dir)
            .and_then(|()| fs::write(&tmp, digest.to_hex()))
            .and_then(|()| fs::rename(&tmp, entry));
        let _ = fs::remove_file(&tmp);
    }
}
