//! The `.deb` store: the files a lock names, kept by content, verified whenever they are used,
//! and the local repository an installation takes them from.
//!
//! ```text
//! STORE/debs/sha256/HEX           a locked .deb file, named by its sha256
//! STORE/debs/sha256/HEX.control   its control fields (`dpkg-deb --field`) and their sha256, once verified
//! STORE/debs/sha256/HEX.tmp.PID.N a download or import in progress (locked while it is written)
//! ```
//!
//! [`DebStore::ensure`] gives the path of a locked package's file whose size and sha256 it has
//! just checked. A file the store has is hashed again before it is used; one that is not the
//! locked file (truncated, changed, a symlink) is removed and fetched again, and the result says
//! so ([`Ensured::replaced`]). A missing file is downloaded from each candidate URL in turn:
//! `{mirror}/{path}` for every mirror the caller gives, then `{mirror}/{path}` for the mirror the
//! lock names, without repeats. The first URL that gives exactly the locked size and sha256 wins;
//! the bytes are hashed as they stream into a temporary file in the store, which is fsynced and
//! renamed into place only then. A file whose hash is wrong is never kept, and nothing ever falls
//! back to another version: when no URL gives the file, [`FetchError`] names the package, its
//! version, architecture and sha256, the store path, and every URL tried with what went wrong.
//! With `offline`, nothing is downloaded.
//!
//! Downloads (`fetch.rs`) speak `http:`, `https:` (rustls with the system's root certificates)
//! and `file:` (a regular file, never through a symlink at its name). They give up on a server
//! silent for [`FetchOptions::stall_timeout`], try a URL at most [`FetchOptions::tries`] times
//! for transient failures (connection errors, timeouts, 5xx), never again for a 404 or a wrong
//! file, and read at most one byte more than the locked size. [`DebStore::ensure_all`] runs
//! [`FetchOptions::parallel`] of them at once.
//!
//! [`DebStore::make_repo`] (`repo.rs`) lays out a flat repository of exactly the locked files,
//! usable as `deb [trusted=yes] file:DIR ./` (or `copy:DIR` for mmdebstrap, whose apt runs
//! outside the root it makes): each file hard-linked from the store (copied across filesystems)
//! under the name apt gives its downloads, `NAME_VERSION_ARCH.deb` with `:` as `%3a`; a
//! `Packages` index of their control fields with `Filename`, `Size` and `SHA256`, sorted so that
//! the same set always gives the same bytes; and a `Release` file listing the index, which spares
//! apt its search for compressed indexes and a warning. The repository's files are the store's
//! (hard links): whoever mounts it into a root mounts it read-only.
#![forbid(unsafe_code)]

mod error;
mod fetch;
mod repo;
#[cfg(test)]
mod tests;
mod verify;

use std::fs::{self, File};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;

use envc_plan::lock::{LockedPackage, Sha256};
use rustix::fs::{AtFlags, FlockOperation, Mode, OFlags};

pub use error::{Attempt, Failure, FetchError, PackageRef, RepoError};
pub use fetch::FetchOptions;
pub use repo::deb_file_name;

use crate::store::{STORE_MODE, Store, StoreError, record};
use fetch::{FetchFail, Fetcher};
use verify::{Check, CopyError};

/// The `.deb` store of a store: `STORE/debs/sha256/`.
pub struct DebStore {
    dir: PathBuf,
    fetcher: Fetcher,
}

/// A locked package's file, checked by the call that gave it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ensured {
    /// The file in the store.
    pub path: PathBuf,
    /// The URL it was downloaded from by this call, or `None` if the store had it.
    pub fetched_from: Option<String>,
    /// What was wrong with a file the store had in its place, which was removed (worth a
    /// warning: the store's disk, or someone, changed a file).
    pub replaced: Option<String>,
}

/// One package of [`DebStore::ensure_all`] done, as it happens.
#[derive(Debug)]
pub struct Progress<'a> {
    /// How many packages are done, this one included.
    pub done: usize,
    /// How many there are.
    pub total: usize,
    /// The package.
    pub package: &'a LockedPackage,
    /// Its file, or why there is none.
    pub result: Result<&'a Ensured, &'a FetchError>,
}

impl DebStore {
    /// The `.deb` store of `store`, with default download options, created if needed (its
    /// directories root's alone, like the rest of the store). Temporaries left by processes
    /// that are gone are removed.
    pub fn open(store: &Store) -> Result<DebStore, StoreError> {
        DebStore::open_with(store, FetchOptions::default())
    }

    /// [`DebStore::open`] with download options of the caller's.
    pub fn open_with(store: &Store, opts: FetchOptions) -> Result<DebStore, StoreError> {
        let debs = store.path().join("debs");
        let dir = debs.join("sha256");
        private_dir(&debs)?;
        private_dir(&dir)?;
        let store = DebStore {
            dir,
            fetcher: Fetcher::new(opts),
        };
        store.clean_leftovers()?;
        Ok(store)
    }

    /// The directory of the files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where the file with this sha256 is kept.
    pub fn path_of(&self, sha256: &Sha256) -> PathBuf {
        self.dir.join(sha256.to_hex())
    }

    /// The path of `p`'s file after checking that it is exactly the locked file: the stored one
    /// if it is (hashed again now), else one downloaded now from the first of the candidate URLs
    /// (`{m}/{p.path}` for each `m` of `mirrors`, then for `p.mirror`) that gives it. A stored
    /// file that is not the locked one is removed first. `offline`: never download.
    pub fn ensure(
        &self,
        p: &LockedPackage,
        mirrors: &[String],
        offline: bool,
    ) -> Result<Ensured, FetchError> {
        let path = self.path_of(&p.sha256);
        let store_err = |source| FetchError::Store {
            package: PackageRef::of(p),
            source,
        };
        let replaced = match self.check_stored(p).map_err(store_err)? {
            Check::Good => {
                return Ok(Ensured {
                    path,
                    fetched_from: None,
                    replaced: None,
                });
            }
            Check::Absent => None,
            Check::Wrong(reason) => {
                self.remove_stored(&path).map_err(store_err)?;
                Some(reason)
            }
            Check::LockSize(actual) => {
                return Err(FetchError::LockSize {
                    package: PackageRef::of(p),
                    path,
                    actual,
                });
            }
        };
        if offline {
            return Err(FetchError::Offline {
                package: PackageRef::of(p),
                path,
                replaced,
            });
        }
        if let Some(reason) = fetch::bad_path(&p.path) {
            return Err(FetchError::BadPath {
                package: PackageRef::of(p),
                path: p.path.clone(),
                reason,
            });
        }
        let mut tmp = self.temporary(&p.sha256).map_err(store_err)?;
        let mut attempts = Vec::new();
        for url in fetch::candidates(p, mirrors) {
            match self.fetcher.fetch(&url, p, &mut tmp.file) {
                Ok(()) => {
                    tmp.publish().map_err(store_err)?;
                    return Ok(Ensured {
                        path,
                        fetched_from: Some(url),
                        replaced,
                    });
                }
                Err(FetchFail::Remote(a)) => attempts.push(a),
                Err(FetchFail::Local(e)) => {
                    return Err(store_err(StoreError::Io {
                        op: "write",
                        path: tmp.path.clone(),
                        source: e,
                    }));
                }
            }
        }
        Err(FetchError::Unavailable {
            package: PackageRef::of(p),
            path,
            replaced,
            attempts,
        })
    }

    /// [`DebStore::ensure`] for every package, [`FetchOptions::parallel`] at a time; `on_progress`
    /// hears of each package as it is done (in this thread). The files come in the order of
    /// `pkgs`. Every package is tried even after one failed; the error names each failure.
    pub fn ensure_all(
        &self,
        pkgs: &[LockedPackage],
        mirrors: &[String],
        offline: bool,
        on_progress: &mut dyn FnMut(Progress<'_>),
    ) -> Result<Vec<Ensured>, FetchError> {
        // A file listed twice is fetched once.
        let mut unique: Vec<usize> = Vec::new();
        let mut first_of: Vec<usize> = Vec::with_capacity(pkgs.len());
        for (i, p) in pkgs.iter().enumerate() {
            match unique.iter().position(|&u| pkgs[u].sha256 == p.sha256) {
                Some(k) => first_of.push(k),
                None => {
                    first_of.push(unique.len());
                    unique.push(i);
                }
            }
        }
        let total = unique.len();
        let mut results: Vec<Option<Result<Ensured, FetchError>>> =
            (0..total).map(|_| None).collect();
        let next = AtomicUsize::new(0);
        let workers = self.fetcher.options().parallel.clamp(1, total.max(1));
        std::thread::scope(|s| {
            let (tx, rx) = mpsc::channel::<(usize, Result<Ensured, FetchError>)>();
            for _ in 0..workers {
                let tx = tx.clone();
                let (next, unique) = (&next, &unique);
                s.spawn(move || {
                    loop {
                        let k = next.fetch_add(1, Ordering::Relaxed);
                        let Some(&i) = unique.get(k) else { break };
                        if tx
                            .send((k, self.ensure(&pkgs[i], mirrors, offline)))
                            .is_err()
                        {
                            break;
                        }
                    }
                });
            }
            drop(tx);
            for (done, (k, result)) in rx.into_iter().enumerate() {
                on_progress(Progress {
                    done: done + 1,
                    total,
                    package: &pkgs[unique[k]],
                    result: result.as_ref(),
                });
                results[k] = Some(result);
            }
        });
        let mut files = Vec::with_capacity(total);
        let mut errors = Vec::new();
        for r in results {
            match r {
                Some(Ok(e)) => files.push(Some(e)),
                Some(Err(e)) => {
                    errors.push(e);
                    files.push(None);
                }
                // A worker that panicked: the panic went up through the scope already.
                None => files.push(None),
            }
        }
        match errors.len() {
            0 => {}
            1 => return Err(errors.remove(0)),
            _ => return Err(FetchError::Several { total, errors }),
        }
        Ok(first_of
            .into_iter()
            .map(|k| files[k].clone().expect("every package has its file"))
            .collect())
    }

    /// Adds `file` (a `.deb` downloaded elsewhere, e.g. by apt in a throwaway root) as `p`'s file
    /// if it is exactly the locked file: `Ok(false)` if it is not (or is missing, or is not a
    /// regular file). The bytes are copied (never linked: the file's owner could change it
    /// later) and hashed on the way.
    pub fn import(&self, p: &LockedPackage, file: &Path) -> Result<bool, StoreError> {
        let io_err = |op, source| StoreError::Io {
            op,
            path: file.to_owned(),
            source,
        };
        let (mut src, meta) = match verify::open_regular(file).map_err(|e| io_err("open", e))? {
            verify::Opened::File(f, m) => (f, m),
            _ => return Ok(false),
        };
        if meta.len() != p.size {
            return Ok(false);
        }
        let mut tmp = self.temporary(&p.sha256)?;
        let read_err = |e: io::Error| {
            CopyError::Source(Failure::Read {
                reason: e.to_string(),
            })
        };
        match verify::copy_verified(&mut src, Some(&mut tmp.file), p, &read_err) {
            Ok(()) => {
                tmp.publish()?;
                Ok(true)
            }
            Err(CopyError::Source(Failure::Read { reason })) => {
                Err(io_err("read", io::Error::other(reason)))
            }
            Err(CopyError::Source(_)) => Ok(false),
            Err(CopyError::Local(e)) => Err(StoreError::Io {
                op: "write",
                path: tmp.path.clone(),
                source: e,
            }),
        }
    }

    /// Checks the stored file of `p`.
    fn check_stored(&self, p: &LockedPackage) -> Result<Check, StoreError> {
        let path = self.path_of(&p.sha256);
        verify::check_file(&path, p).map_err(|source| StoreError::Io {
            op: "verify",
            path,
            source,
        })
    }

    /// Removes a stored file that is not what its name says, and its cached control fields.
    fn remove_stored(&self, path: &Path) -> Result<(), StoreError> {
        match fs::symlink_metadata(path) {
            Ok(m) if m.is_dir() => {
                return Err(record::wrong_type(
                    path,
                    "a regular file",
                    format!(
                        "envc keeps only files there; remove it (`rm -r {}`) and run envc again",
                        path.display()
                    ),
                ));
            }
            _ => {}
        }
        record::remove_file(path)?;
        record::remove_file(&control_path(path))?;
        Ok(())
    }

    /// A new temporary for the file with this sha256, in the store's directory, locked.
    fn temporary(&self, sha256: &Sha256) -> Result<Temporary, StoreError> {
        static N: AtomicU64 = AtomicU64::new(0);
        let name = format!(
            "{}.tmp.{}.{}",
            sha256.to_hex(),
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let path = self.dir.join(&name);
        let dir = rustix::fs::open(
            &self.dir,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| StoreError::Io {
            op: "open",
            path: self.dir.clone(),
            source: e.into(),
        })?;
        let fd = rustix::fs::openat(
            &dir,
            name.as_str(),
            OFlags::RDWR | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o644),
        )
        .map_err(|e| StoreError::Io {
            op: "create",
            path: path.clone(),
            source: e.into(),
        })?;
        // Readable by all whatever the umask (inside the store's 0700 directories): a
        // repository made of hard links to it is read by apt as `_apt`.
        let chmod = rustix::fs::fchmod(&fd, Mode::from_raw_mode(0o644));
        let file = File::from(fd);
        let tmp = Temporary {
            dir,
            name,
            path,
            target: sha256.to_hex(),
            file,
            published: false,
        };
        chmod.map_err(|e| StoreError::Io {
            op: "set the mode of",
            path: tmp.path.clone(),
            source: e.into(),
        })?;
        rustix::fs::flock(&tmp.file, FlockOperation::LockExclusive).map_err(|e| {
            StoreError::Io {
                op: "lock",
                path: tmp.path.clone(),
                source: e.into(),
            }
        })?;
        Ok(tmp)
    }

    /// Removes temporaries whose writer is gone.
    fn clean_leftovers(&self) -> Result<(), StoreError> {
        for (path, name) in record::entries(&self.dir)? {
            if let Some(pid) = record::tmp_pid(&name)
                && record::is_leftover_tmp(&path, pid)?
            {
                record::remove_file(&path)?;
            }
        }
        Ok(())
    }
}

/// The cached control fields of the stored file at `path`.
fn control_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_owned();
    name.push(".control");
    path.with_file_name(name)
}

/// A file being written into the store: removed unless published.
struct Temporary {
    dir: OwnedFd,
    name: String,
    path: PathBuf,
    target: String,
    file: File,
    published: bool,
}

impl Temporary {
    /// Makes the file durable and renames it to its sha256, then makes the rename durable.
    fn publish(mut self) -> Result<(), StoreError> {
        let io_err = |op, path: &Path| {
            let path = path.to_owned();
            move |source| StoreError::Io { op, path, source }
        };
        self.file.sync_all().map_err(io_err("sync", &self.path))?;
        let target = self.path.with_file_name(&self.target);
        rustix::fs::renameat(
            &self.dir,
            self.name.as_str(),
            &self.dir,
            self.target.as_str(),
        )
        .map_err(|e| io_err("publish", &target)(e.into()))?;
        self.published = true;
        rustix::fs::fsync(self.dir.as_fd()).map_err(|e| io_err("sync", &target)(e.into()))?;
        Ok(())
    }
}

impl Drop for Temporary {
    fn drop(&mut self) {
        if !self.published {
            let _ = rustix::fs::unlinkat(&self.dir, self.name.as_str(), AtFlags::empty());
        }
    }
}

/// Makes `path` a directory of the store's mode, or checks that it is one (never a symlink).
fn private_dir(path: &Path) -> Result<(), StoreError> {
    match fs::DirBuilder::new().mode(STORE_MODE).create(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(source) => {
            return Err(StoreError::Io {
                op: "create",
                path: path.to_owned(),
                source,
            });
        }
    }
    let m = fs::symlink_metadata(path).map_err(|source| StoreError::Io {
        op: "inspect",
        path: path.to_owned(),
        source,
    })?;
    if !m.is_dir() {
        return Err(record::wrong_type(
            path,
            "a directory",
            format!(
                "envc never follows a link in its store; remove it (`rm {}`) and run envc again",
                path.display()
            ),
        ));
    }
    if m.mode() & 0o7777 != STORE_MODE {
        fs::set_permissions(path, fs::Permissions::from_mode(STORE_MODE)).map_err(|source| {
            StoreError::Io {
                op: "restrict the permissions of",
                path: path.to_owned(),
                source,
            }
        })?;
    }
    Ok(())
}
