//! The store on disk.
//!
//! ```text
//! STORE/store.json          format version and the backend's setting
//! STORE/layers/ID           sealed layers (overlay: the layer's diff; btrfs: a read-only subvolume)
//! STORE/meta/ID.json        what built a layer, its key, size, times
//! STORE/logs/ID.log         the build log of a sealed layer (ID.failed.log for a failed build)
//! STORE/staging/ID          layers being built; never mistaken for sealed ones
//! STORE/locks/ID.lock       one lock per layer id, outside the directories it guards
//! STORE/locks/run-PID.lock  held by `envc run` while its throwaway roots tmp/run-PID-* exist
//! STORE/roots/NAME/         working roots: root.json and the root itself at NAME/root
//! STORE/cache/              host-side caches shared by builds (.deb files, apt lists)
//! STORE/tmp/                throwaway roots of `envc run`
//! ```
//!
//! Records are written durably and read, like lock files, never through a symlink
//! (`store/record.rs`). A layer's record is written before the layer is published (see
//! [`crate::backend::Backend::seal`]), so a sealed layer always has one; `layers/ID` counts as
//! sealed only when it is a real directory the backend recognises ([`Store::check_sealed`]).
//!
//! The store and each of the directories above are root's alone (mode 0700, [`STORE_MODE`]),
//! and are set so again whenever a store is opened: what steps leave in roots and layers
//! (setuid-root programs, any file) is out of every other host user's reach.
#![forbid(unsafe_code)]

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use envc_plan::{Digest, LayerId};
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use crate::backend::{self, Backend, BackendConfig, BackendInit, BackendKind};

pub(crate) mod record;

/// The store's default location.
pub const DEFAULT_STORE: &str = "/var/lib/envc";
/// The on-disk format version. Version 1 named the backend as a string, with an `lvm` field for
/// LVM's setting; version 2 records the backend's tagged setting. Both are read; a store is
/// rewritten in version 2 only when it is initialised.
pub const FORMAT_VERSION: u32 = 2;

/// A failure of a store operation, naming the operation and the object.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A filesystem operation failed.
    #[error("cannot {op} {}: {source}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// To what.
        path: PathBuf,
        /// Why it failed.
        #[source]
        source: io::Error,
    },
    /// The store was made with another backend or format.
    #[error("store {} {reason}", path.display())]
    Incompatible {
        /// The store.
        path: PathBuf,
        /// What does not match.
        reason: String,
    },
    /// A record could not be read.
    #[error("corrupt record {}: {reason}", path.display())]
    Corrupt {
        /// The record's file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A record could not be encoded.
    #[error("cannot encode record {}: {reason}", path.display())]
    Encode {
        /// The record's file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// Something of the wrong type is where the store keeps a layer, a record or a lock (a
    /// symlink to somewhere else, a file where a directory should be, a FIFO).
    #[error("{} is {found}, not {expected}: {repair}", path.display())]
    WrongType {
        /// Where.
        path: PathBuf,
        /// What is there (`a symbolic link`).
        found: &'static str,
        /// What should be there.
        expected: &'static str,
        /// How to repair it.
        repair: String,
    },
    /// A name given on the command line is not an environment name.
    #[error(
        "`{name}` is not an environment name (1 to 64 characters from a-z, A-Z, 0-9, `.`, `_` and `-`, starting with a letter or digit)"
    )]
    InvalidName {
        /// The name.
        name: String,
    },
    /// A layer was removed by a concurrent `gc` each time it was about to be used.
    #[error(
        "layer {} was removed by a concurrent gc {attempts} times while it was being taken into use; run again once that gc is done",
        path.display()
    )]
    Vanished {
        /// The layer.
        path: PathBuf,
        /// How many times it was looked for.
        attempts: u32,
    },
    /// A backend operation failed.
    #[error(transparent)]
    Backend(#[from] backend::BackendError),
}

pub(crate) fn io_err<'a>(
    op: &'static str,
    path: &'a Path,
) -> impl FnOnce(io::Error) -> StoreError + 'a {
    move |source| StoreError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

/// `store.json`.
#[derive(Debug, Clone, Serialize)]
struct StoreConfig {
    version: u32,
    backend: BackendConfig,
}

/// `store.json` as version 1 wrote it: the backend's name, and LVM's setting beside it.
#[derive(Deserialize)]
struct StoreConfigV1 {
    backend: BackendKind,
    #[serde(default)]
    lvm: Option<backend::lvm::LvmConfig>,
}

/// Reads `store.json` of any version this envc knows: the version first, then the shape that
/// version wrote, so a bad field is reported as itself.
fn parse_config(bytes: &[u8]) -> Result<BackendConfig, String> {
    #[derive(Deserialize)]
    struct Version {
        version: u32,
    }
    #[derive(Deserialize)]
    struct V2 {
        backend: BackendConfig,
    }
    let bad = |e: serde_json::Error| format!("has an unreadable store.json: {e}");
    match serde_json::from_slice::<Version>(bytes)
        .map_err(bad)?
        .version
    {
        2 => Ok(serde_json::from_slice::<V2>(bytes).map_err(bad)?.backend),
        1 => {
            let v1: StoreConfigV1 = serde_json::from_slice(bytes).map_err(bad)?;
            match (v1.backend, v1.lvm) {
                (BackendKind::Overlay, _) => Ok(BackendConfig::Overlay),
                (BackendKind::Btrfs, _) => Ok(BackendConfig::Btrfs),
                (BackendKind::Lvm, Some(cfg)) => Ok(BackendConfig::Lvm(cfg)),
                (BackendKind::Lvm, None) => Err("names the lvm backend without its setting".into()),
            }
        }
        v => Err(format!(
            "has format version {v}, this envc reads 1 and {FORMAT_VERSION}"
        )),
    }
}

/// What the store records about a sealed layer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Meta {
    /// The layer's id.
    pub id: LayerId,
    /// Its parent's id.
    pub parent: Option<LayerId>,
    /// The canonical key, as JSON (what `envc why` compares).
    pub key: serde_json::Value,
    /// The layer's name in the spec that built it.
    pub name: String,
    /// The environment that built it.
    pub env: String,
    /// The spec that built it, as given.
    pub spec: Option<String>,
    /// Bytes the layer adds (overlay: its diff; btrfs: the whole subvolume).
    pub size: u64,
    /// Unix seconds when it was sealed.
    pub created: u64,
    /// Unix seconds when an apply last used it.
    pub last_used: u64,
    /// Seconds its build took.
    pub build_secs: f64,
    /// The digest of the layer's full tree when it was sealed ([`crate::digest`]), which `envc
    /// verify` recomputes. `None` in records of an older envc, and in records rebuilt without the
    /// build (a record repaired from the spec, LVM recovery).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tree_digest: Option<Digest>,
    /// Where the layer came from when it was not built here: the remote cache and the key that
    /// signed it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
}

/// A working root's record.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RootRecord {
    /// The environment's name.
    pub name: String,
    /// The spec it was applied from.
    pub spec: Option<String>,
    /// The layer chain it is a snapshot of, base first.
    pub chain: Vec<LayerId>,
    /// Unix seconds when it was (re)created.
    pub created: u64,
}

/// Whether `name` is a valid environment name (the spec's rule, [`envc_plan::Name`]). Names from
/// the command line are checked before they become paths under `roots/`.
pub fn valid_name(name: &str) -> bool {
    envc_plan::Name::is_valid(name)
}

/// Unix seconds now.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// An open store.
pub struct Store {
    root: PathBuf,
    backend: Box<dyn Backend>,
}

/// A held lock; released when dropped.
pub struct Lock {
    flock: Flock<File>,
    path: PathBuf,
}

impl Lock {
    /// Turns a held exclusive lock into a shared one on the same open file, so the object is
    /// never unlocked in between by this process (flock(2) may still let a waiting exclusive
    /// lock in during the change: re-check what the lock protects afterwards).
    pub fn downgrade(self) -> Result<Lock, StoreError> {
        match self.flock.relock(FlockArg::LockShared) {
            Ok(()) => Ok(self),
            Err(e) => Err(StoreError::Io {
                op: "downgrade the lock",
                path: self.path,
                source: e.into(),
            }),
        }
    }
}

impl Store {
    /// Opens (creating if needed) the store at `root`. `choice` picks the backend of a new store;
    /// without it, a store on btrfs uses btrfs and any other uses overlay. An LVM store is made
    /// with [`Store::init`].
    pub fn open(root: &Path, choice: Option<BackendKind>) -> Result<Store, StoreError> {
        let root = Self::make_dirs(root)?;
        let config = match Self::read_config(&root)? {
            Some(config) => {
                if let Some(c) = choice
                    && c != config.kind()
                {
                    return Err(StoreError::Incompatible {
                        path: root,
                        reason: format!(
                            "uses the {} backend, not {}; use another --store for {}",
                            config.kind(),
                            c,
                            c
                        ),
                    });
                }
                config
            }
            None => {
                let init = match choice.unwrap_or_else(|| backend::detect(&root)) {
                    BackendKind::Overlay => BackendInit::Overlay,
                    BackendKind::Btrfs => BackendInit::Btrfs,
                    BackendKind::Lvm => {
                        return Err(StoreError::Incompatible {
                            path: root,
                            reason: "is not initialised: an LVM store is made with `envc store init lvm --vg VG [--pool POOL]`".into(),
                        });
                    }
                };
                let config = backend::prepare(&root, &init)?;
                Self::write_config(&root, &config)?;
                config
            }
        };
        let backend = backend::open(&root, &config)?;
        Ok(Store { root, backend })
    }

    /// Makes a store at `root` with the backend `init` asks for (for LVM, creating the thin pool,
    /// and the VG on a loop file, as asked). A store already made with the same setting is opened
    /// as it is; one made with another is refused.
    pub fn init(root: &Path, init: &BackendInit) -> Result<Store, StoreError> {
        let root = Self::make_dirs(root)?;
        match Self::read_config(&root)? {
            Some(old) => {
                let same = match (&old, init) {
                    (BackendConfig::Lvm(o), BackendInit::Lvm(i)) => {
                        o.vg == i.vg && o.pool == i.pool
                    }
                    (BackendConfig::Overlay, BackendInit::Overlay)
                    | (BackendConfig::Btrfs, BackendInit::Btrfs) => true,
                    _ => false,
                };
                if !same {
                    return Err(StoreError::Incompatible {
                        path: root.clone(),
                        reason: format!(
                            "is already initialised with another setting (see {})",
                            root.join("store.json").display()
                        ),
                    });
                }
                // Recorded again in the current format.
                Self::write_config(&root, &old)?;
            }
            None => {
                let config = backend::prepare(&root, init)?;
                Self::write_config(&root, &config)?;
            }
        }
        Self::open(&root, None)
    }

    /// Opens the store at `root` only to read its records (`envc plan`): `None` if there is no
    /// store there. Nothing is created or changed: no directory is made, no mode set, no backend
    /// prepared.
    pub fn open_read_only(root: &Path) -> Result<Option<Store>, StoreError> {
        let root = match fs::canonicalize(root) {
            Ok(r) => r,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err("resolve store", root)(e)),
        };
        let Some(config) = Self::read_config(&root)? else {
            return Ok(None);
        };
        let backend = backend::open(&root, &config)?;
        Ok(Some(Store { root, backend }))
    }

    /// A store with a backend of the caller's (tests).
    #[cfg(test)]
    pub(crate) fn with_backend(
        root: &Path,
        backend: Box<dyn Backend>,
    ) -> Result<Store, StoreError> {
        let root = Self::make_dirs(root)?;
        Ok(Store { root, backend })
    }

    /// Makes the store's directories (or checks those that exist), each of them root's alone
    /// ([`STORE_MODE`]).
    fn make_dirs(root: &Path) -> Result<PathBuf, StoreError> {
        if let Some(parent) = root.parent().filter(|p| !p.as_os_str().is_empty()) {
            fs::create_dir_all(parent).map_err(io_err("create store", root))?;
        }
        make_private_dir(root, "create store")?;
        let root = fs::canonicalize(root).map_err(io_err("resolve store", root))?;
        let m = fs::metadata(&root).map_err(io_err("inspect", &root))?;
        restrict(&root, &m)?;
        for d in [
            "layers", "meta", "logs", "staging", "locks", "roots", "cache", "tmp",
        ] {
            let p = root.join(d);
            make_private_dir(&p, "create")?;
            // Whatever was there already is accepted above, a link to a directory too: the
            // store's own directories must be its own.
            let m = fs::symlink_metadata(&p).map_err(io_err("inspect", &p))?;
            if !m.is_dir() {
                return Err(record::wrong_type(
                    &p,
                    "a directory",
                    format!(
                        "envc never follows a link in its store; remove it (`rm {}`) and run envc again",
                        p.display()
                    ),
                ));
            }
            restrict(&p, &m)?;
        }
        Ok(root)
    }

    fn read_config(root: &Path) -> Result<Option<BackendConfig>, StoreError> {
        let path = root.join("store.json");
        let Some(bytes) = record::read(&path)? else {
            return Ok(None);
        };
        parse_config(&bytes)
            .map(Some)
            .map_err(|reason| StoreError::Incompatible {
                path: root.to_owned(),
                reason,
            })
    }

    fn write_config(root: &Path, config: &BackendConfig) -> Result<(), StoreError> {
        write_json(
            &root.join("store.json"),
            &StoreConfig {
                version: FORMAT_VERSION,
                backend: config.clone(),
            },
        )
    }

    /// The store's directory.
    pub fn path(&self) -> &Path {
        &self.root
    }

    /// The backend.
    pub fn backend(&self) -> &dyn Backend {
        self.backend.as_ref()
    }

    fn lock_file(&self, name: &str, arg: FlockArg) -> Result<Option<Lock>, StoreError> {
        let path = self.root.join("locks").join(name);
        let file = record::open_lock(&path)?;
        match Flock::lock(file, arg) {
            Ok(flock) => Ok(Some(Lock { flock, path })),
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => Ok(None),
            Err((_, e)) => Err(StoreError::Io {
                op: "lock",
                path,
                source: e.into(),
            }),
        }
    }

    /// Locks a layer id, waiting for other holders.
    pub fn lock_layer(&self, id: &LayerId) -> Result<Lock, StoreError> {
        Ok(self
            .lock_file(&format!("{id}.lock"), FlockArg::LockExclusive)?
            .expect("blocking lock"))
    }

    /// Takes a shared lock on a layer id: the layer is in use (as a parent or a root's lower
    /// layer) and must not be removed, while others may use it too.
    pub fn share_layer(&self, id: &LayerId) -> Result<Lock, StoreError> {
        Ok(self
            .lock_file(&format!("{id}.lock"), FlockArg::LockShared)?
            .expect("blocking lock"))
    }

    /// Locks a layer id if nobody holds it.
    pub fn try_lock_layer(&self, id: &LayerId) -> Result<Option<Lock>, StoreError> {
        self.lock_file(&format!("{id}.lock"), FlockArg::LockExclusiveNonblock)
    }

    /// Locks a working root by name, waiting for other holders.
    pub fn lock_root(&self, name: &str) -> Result<Lock, StoreError> {
        Ok(self
            .lock_file(&format!("root-{name}.lock"), FlockArg::LockExclusive)?
            .expect("blocking lock"))
    }

    /// Locks a working root by name if nobody holds it.
    pub fn try_lock_root(&self, name: &str) -> Result<Option<Lock>, StoreError> {
        self.lock_file(
            &format!("root-{name}.lock"),
            FlockArg::LockExclusiveNonblock,
        )
    }

    /// Locks a shared cache by name, waiting for other holders.
    pub fn lock_cache(&self, name: &str) -> Result<Lock, StoreError> {
        Ok(self
            .lock_file(&format!("cache-{name}.lock"), FlockArg::LockExclusive)?
            .expect("blocking lock"))
    }

    /// Holds this process's run lock (`locks/run-PID.lock`, shared: processes of the same pid
    /// in other pid namespaces may hold it too) for as long as the lock lives: while it is held,
    /// the throwaway roots in `tmp/run-PID-*` are in use, and once it is free (the process
    /// ended, however) they are leftovers that `gc` and the next apply remove. The file
    /// may be removed by whoever cleaned up after a dead process of the same pid, so the lock is
    /// taken again until the file locked is the one at the path.
    pub fn hold_run_lock(&self) -> Result<Lock, StoreError> {
        let path = self.run_lock_path(std::process::id());
        loop {
            let lock = self
                .lock_file(
                    path.file_name()
                        .and_then(|n| n.to_str())
                        .unwrap_or_default(),
                    FlockArg::LockShared,
                )?
                .ok_or_else(|| io_err("lock", &path)(io::ErrorKind::WouldBlock.into()))?;
            let held = lock.flock.metadata().map_err(io_err("inspect", &path))?;
            match fs::symlink_metadata(&path) {
                Ok(m) if m.ino() == held.ino() && m.dev() == held.dev() => return Ok(lock),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err("inspect", &path)(e)),
            }
        }
    }

    /// The run lock of process `pid`.
    pub(crate) fn run_lock_path(&self, pid: u32) -> PathBuf {
        self.root.join("locks").join(format!("run-{pid}.lock"))
    }

    /// Takes the run lock of process `pid` if nobody holds it: then no live process of that pid
    /// uses a throwaway root.
    pub(crate) fn try_lock_run(&self, pid: u32) -> Result<Option<Lock>, StoreError> {
        self.lock_file(&format!("run-{pid}.lock"), FlockArg::LockExclusiveNonblock)
    }

    /// Whether a layer is sealed: `layers/ID` is a real directory (never a symlink) that the
    /// backend recognises as a layer. Anything else there is an error naming the path and how to
    /// repair it; a caller must not use it.
    pub fn check_sealed(&self, id: &LayerId) -> Result<bool, StoreError> {
        let path = self.backend.layout().layer(id);
        let mut looks = 0;
        let m = loop {
            let m = match fs::symlink_metadata(&path) {
                Ok(m) => m,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
                Err(e) => return Err(io_err("inspect", &path)(e)),
            };
            if m.is_dir() {
                crate::failpoint::hit("layer-looked");
                if self.backend.is_sealed(id) {
                    return Ok(true);
                }
            }
            // A gc may have removed the layer (and an apply built it again) between the two
            // looks: what is there now is looked at again, and only an entry that stayed the
            // same is reported as damaged.
            looks += 1;
            let same = fs::symlink_metadata(&path)
                .is_ok_and(|now| now.ino() == m.ino() && now.dev() == m.dev());
            if same || looks == 3 {
                break m;
            }
        };
        let expected = "a directory holding a sealed layer";
        let repair = if m.file_type().is_symlink() {
            format!(
                "envc never uses a layer through a link; remove the link (`rm {}`, its target is left alone) and apply again: the layer is rebuilt",
                path.display()
            )
        } else if m.is_dir() {
            format!(
                "the {} backend does not recognise it as a layer; remove it and apply again: the layer is rebuilt",
                self.backend.kind()
            )
        } else {
            format!(
                "remove it (`rm {}`) and apply again: the layer is rebuilt",
                path.display()
            )
        };
        Err(StoreError::WrongType {
            path,
            found: if m.is_dir() {
                "a directory that is not a layer"
            } else {
                record::type_name(&m)
            },
            expected,
            repair,
        })
    }

    /// Whether a layer is sealed (a wrong type in its place counts as not sealed; see
    /// [`Store::check_sealed`] for the error).
    pub fn is_sealed(&self, id: &LayerId) -> bool {
        matches!(self.check_sealed(id), Ok(true))
    }

    /// The entries under `layers/` that are not layers (a symlink, a file, an unrecognised
    /// directory), as the errors [`Store::check_sealed`] gives: `ls` and `gc` report them and
    /// leave them alone.
    pub fn damaged_layers(&self) -> Result<Vec<StoreError>, StoreError> {
        let mut out = Vec::new();
        for (_, name) in record::entries(&self.root.join("layers"))? {
            if let Ok(id) = name.parse::<LayerId>()
                && let Err(e) = self.check_sealed(&id)
            {
                out.push(e);
            }
        }
        Ok(out)
    }

    /// The metadata path of a layer.
    pub fn meta_path(&self, id: &LayerId) -> PathBuf {
        self.root.join("meta").join(format!("{id}.json"))
    }

    /// The log path of a layer.
    pub fn log_path(&self, id: &LayerId) -> PathBuf {
        self.root.join("logs").join(format!("{id}.log"))
    }

    /// A shared cache directory (created).
    pub fn cache_dir(&self, name: &str) -> Result<PathBuf, StoreError> {
        // Cache directories are bind-mounted into builds: never through a symlink to elsewhere.
        let mut p = self.root.join("cache");
        for part in std::iter::once("").chain(name.split('/')) {
            if !part.is_empty() {
                p.push(part);
            }
            // Made here, or by another apply at the same time: either way it must be a directory.
            match fs::create_dir(&p) {
                Ok(()) => continue,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(io_err("create", &p)(e)),
            }
            let m = fs::symlink_metadata(&p).map_err(io_err("inspect", &p))?;
            if !m.is_dir() {
                return Err(StoreError::WrongType {
                    path: p,
                    found: record::type_name(&m),
                    expected: "a directory",
                    repair: "remove it; envc makes the cache again".into(),
                });
            }
        }
        Ok(p)
    }

    /// The directory of the cache `dir` of `cache` steps (`cache/user/DIR`, made mode 1777 when
    /// new: steps of any user of the root make their own entries in it), with a shared lock held
    /// while it is mounted: any number of builds and runs use a cache at once, and
    /// [`Store::empty_user_caches`] leaves a cache in use alone.
    pub fn user_cache(&self, dir: &str) -> Result<(PathBuf, Lock), StoreError> {
        let lock = self
            .lock_file(&format!("cache-user-{dir}.lock"), FlockArg::LockShared)?
            .expect("blocking lock");
        let path = self.cache_dir(&format!("user/{dir}"))?;
        let m = fs::symlink_metadata(&path).map_err(io_err("inspect", &path))?;
        if m.permissions().mode() & 0o7777 != 0o1777 {
            fs::set_permissions(&path, fs::Permissions::from_mode(0o1777))
                .map_err(io_err("chmod", &path))?;
        }
        Ok((path, lock))
    }

    /// Empties every cache of `cache` steps that no build or run uses now (each is removed; the
    /// next use makes it again). Returns the names removed and those in use.
    pub fn empty_user_caches(&self) -> Result<(Vec<String>, Vec<String>), StoreError> {
        let dir = self.root.join("cache").join("user");
        let mut names: Vec<String> = match fs::read_dir(&dir) {
            Ok(rd) => rd
                .flatten()
                .filter_map(|e| e.file_name().into_string().ok())
                .collect(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((vec![], vec![])),
            Err(e) => return Err(io_err("list", &dir)(e)),
        };
        names.sort();
        let (mut removed, mut busy) = (Vec::new(), Vec::new());
        for name in names {
            let Some(_lock) = self.lock_file(
                &format!("cache-user-{name}.lock"),
                FlockArg::LockExclusiveNonblock,
            )?
            else {
                busy.push(name);
                continue;
            };
            let path = dir.join(&name);
            crate::tree::remove_tree(crate::sys::kernel(), &path).map_err(|e| StoreError::Io {
                op: "remove",
                path: path.clone(),
                source: io::Error::other(e.to_string()),
            })?;
            removed.push(name);
        }
        Ok((removed, busy))
    }

    /// Reads a layer's metadata: `None` if it has none, an error naming the file if it cannot be
    /// read.
    pub fn read_meta(&self, id: &LayerId) -> Result<Option<Meta>, StoreError> {
        let path = self.meta_path(id);
        let meta: Option<Meta> = read_record(&path)?;
        if let Some(m) = &meta {
            let bad = if m.id != *id {
                Some(format!(
                    "it records layer {}, not the layer of its name",
                    m.id
                ))
            } else if m.parent == Some(*id) {
                Some("it names its own layer as its parent".to_owned())
            } else {
                None
            };
            if let Some(why) = bad {
                return Err(StoreError::Corrupt {
                    reason: format!(
                        "{why}; remove it (`rm {}`): the next apply that uses layer {id} rewrites it",
                        path.display()
                    ),
                    path,
                });
            }
        }
        Ok(meta)
    }

    /// Writes a layer's metadata atomically.
    pub fn write_meta(&self, meta: &Meta) -> Result<(), StoreError> {
        write_json(&self.meta_path(&meta.id), meta)
    }

    /// Writes several layers' metadata, each atomically and durably, with one fsync of `meta/`
    /// for all; returns each one's result (an error of `meta/` itself fails them all).
    pub fn write_metas(&self, metas: &[Meta]) -> Result<Vec<Result<(), StoreError>>, StoreError> {
        let names: Vec<String> = metas.iter().map(|m| format!("{}.json", m.id)).collect();
        let encoded: Vec<Result<Vec<u8>, StoreError>> = metas
            .iter()
            .map(|m| {
                serde_json::to_vec_pretty(m).map_err(|e| StoreError::Encode {
                    path: self.meta_path(&m.id),
                    reason: e.to_string(),
                })
            })
            .collect();
        let ok: Vec<(&str, &[u8])> = names
            .iter()
            .zip(&encoded)
            .filter_map(|(n, e)| Some((n.as_str(), e.as_deref().ok()?)))
            .collect();
        let mut written = record::write_in(&self.root.join("meta"), &ok)?.into_iter();
        Ok(encoded
            .into_iter()
            .map(|e| match e {
                Ok(_) => written.next().unwrap_or(Ok(())),
                Err(e) => Err(e),
            })
            .collect())
    }

    /// Every sealed layer with its metadata (a layer without metadata gets a stub; unreadable
    /// metadata is an error naming its file).
    pub fn layers(&self) -> Result<Vec<Meta>, StoreError> {
        let mut out = Vec::new();
        for id in self.backend.sealed()? {
            out.push(self.read_meta(&id)?.unwrap_or(Meta {
                id,
                parent: None,
                key: serde_json::Value::Null,
                name: "?".into(),
                env: "?".into(),
                spec: None,
                size: 0,
                created: 0,
                last_used: 0,
                build_secs: 0.0,
                tree_digest: None,
                origin: None,
            }));
        }
        self.check_parents(&out)?;
        Ok(out)
    }

    /// Fails, naming a record, if parent links among `metas` loop (edited records): whatever
    /// walks parents (ls, gc, why) then never loops.
    fn check_parents(&self, metas: &[Meta]) -> Result<(), StoreError> {
        let parent: std::collections::BTreeMap<LayerId, Option<LayerId>> =
            metas.iter().map(|m| (m.id, m.parent)).collect();
        let mut acyclic = std::collections::BTreeSet::new();
        for m in metas {
            let mut path = std::collections::BTreeSet::new();
            let mut at = Some(m.id);
            while let Some(id) = at {
                if acyclic.contains(&id) {
                    break;
                }
                if !path.insert(id) {
                    let file = self.meta_path(&id);
                    return Err(StoreError::Corrupt {
                        reason: format!(
                            "its parent links loop back to layer {id}; remove it (`rm {}`): the next apply that uses the layer rewrites it",
                            file.display()
                        ),
                        path: file,
                    });
                }
                at = parent.get(&id).copied().flatten();
            }
            acyclic.extend(path);
        }
        Ok(())
    }

    /// The record of a working root: `None` if it has none, an error naming the file if it
    /// cannot be read.
    pub fn read_root(&self, name: &str) -> Result<Option<RootRecord>, StoreError> {
        read_record(&self.backend.layout().root_dir(name).join("root.json"))
    }

    /// Writes the record of a working root.
    pub fn write_root(&self, rec: &RootRecord) -> Result<(), StoreError> {
        let dir = self.backend.layout().root_dir(&rec.name);
        fs::create_dir_all(&dir).map_err(io_err("create", &dir))?;
        write_json(&dir.join("root.json"), rec)
    }

    /// Removes the record of a working root (and its directory).
    pub fn remove_root_record(&self, name: &str) -> Result<(), StoreError> {
        // It holds the root's mount point: removed without crossing a mount left there.
        let dir = self.backend.layout().root_dir(name);
        crate::tree::remove_tree(crate::sys::kernel(), &dir)
            .map_err(|e| StoreError::Backend(backend::BackendError::Remove(e)))
    }

    /// Every working root. A directory under `roots/` without a record (a root being removed) is
    /// skipped; an unreadable record is an error naming its file.
    pub fn roots(&self) -> Result<Vec<RootRecord>, StoreError> {
        let dir = self.root.join("roots");
        let mut out = Vec::new();
        for entry in fs::read_dir(&dir).map_err(io_err("list", &dir))? {
            let entry = entry.map_err(io_err("list", &dir))?;
            let name = entry.file_name();
            let Some(name) = name.to_str().filter(|n| valid_name(n)) else {
                continue;
            };
            if let Some(rec) = self.read_root(name)? {
                out.push(rec);
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Removes what interrupted builds left behind: staging areas (and their logs) of layers that
    /// nobody is building. Returns how many builds were cleaned up.
    pub fn clean_staging(&self) -> Result<usize, StoreError> {
        let dir = self.root.join("staging");
        let mut ids = std::collections::BTreeSet::new();
        for entry in fs::read_dir(&dir).map_err(io_err("list", &dir))? {
            let entry = entry.map_err(io_err("list", &dir))?;
            let name = entry.file_name();
            if let Some(id) = name
                .to_str()
                .and_then(|n| n.split('.').next())
                .and_then(|n| n.parse::<LayerId>().ok())
            {
                ids.insert(id);
            }
        }
        let mut cleaned = 0;
        for id in ids {
            if let Some(_lock) = self.try_lock_layer(&id)? {
                self.backend.discard(&id)?;
                let log = dir.join(format!("{id}.log"));
                match fs::remove_file(&log) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => {
                        return Err(StoreError::Io {
                            op: "remove",
                            path: log,
                            source: e,
                        });
                    }
                }
                cleaned += 1;
            }
        }
        Ok(cleaned)
    }
}

/// The mode of the store's directory and of its own directories: an unprivileged host user
/// cannot reach a root or a layer, where a step may have left a setuid-root program or a device
/// node.
pub const STORE_MODE: u32 = 0o700;

/// Makes the directory `path` with [`STORE_MODE`]; one that exists is left to [`restrict`].
fn make_private_dir(path: &Path, op: &'static str) -> Result<(), StoreError> {
    use std::os::unix::fs::DirBuilderExt;
    match fs::DirBuilder::new().mode(STORE_MODE).create(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(io_err(op, path)(e)),
    }
}

/// Sets the directory `path` (its metadata `m`, never that of a symlink) to [`STORE_MODE`] if
/// others may enter or read it: a store made by an older envc, or opened up by hand, is closed
/// again by the next command that opens it.
fn restrict(path: &Path, m: &fs::Metadata) -> Result<(), StoreError> {
    use std::os::unix::fs::PermissionsExt;
    if m.is_dir() && m.mode() & 0o7777 != STORE_MODE {
        fs::set_permissions(path, fs::Permissions::from_mode(STORE_MODE))
            .map_err(io_err("restrict the permissions of", path))?;
    }
    Ok(())
}

/// Reads a JSON record: `None` if the file does not exist.
fn read_record<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Option<T>, StoreError> {
    let Some(bytes) = record::read(path)? else {
        return Ok(None);
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| StoreError::Corrupt {
            path: path.to_owned(),
            reason: e.to_string(),
        })
}

/// Writes JSON to `path` atomically and durably ([`record::write`]: temporary file, fsync,
/// rename, fsync of the directory).
pub(crate) fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), StoreError> {
    let bytes = serde_json::to_vec_pretty(value).map_err(|e| StoreError::Encode {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    record::write(path, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(p: &Path) -> u32 {
        fs::symlink_metadata(p).unwrap().mode() & 0o7777
    }

    /// The store and each of its own directories, as `make_dirs` lists them.
    fn store_dirs(store: &Path) -> Vec<PathBuf> {
        let mut dirs = vec![store.to_owned()];
        for d in [
            "layers", "meta", "logs", "staging", "locks", "roots", "cache", "tmp",
        ] {
            dirs.push(store.join(d));
        }
        dirs
    }

    #[test]
    fn the_store_is_roots_alone_when_made_and_when_opened_up_before() {
        let dir = std::env::temp_dir().join(format!("envc-store-mode-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        // A new store, with parents made on the way.
        let fresh = dir.join("parent/fresh");
        let s = Store::open(&fresh, Some(BackendKind::Overlay)).unwrap();
        for d in store_dirs(s.path()) {
            assert_eq!(mode(&d), STORE_MODE, "{}", d.display());
        }
        // A store made world-readable (by an older envc, or by hand) is closed on open, and so
        // is each of its directories.
        let old = dir.join("old");
        drop(Store::open(&old, Some(BackendKind::Overlay)).unwrap());
        for d in store_dirs(&old) {
            fs::set_permissions(&d, fs::Permissions::from_mode(0o755)).unwrap();
        }
        fs::set_permissions(&old, fs::Permissions::from_mode(0o4777)).unwrap();
        let s = Store::open(&old, None).unwrap();
        for d in store_dirs(s.path()) {
            assert_eq!(mode(&d), STORE_MODE, "{}", d.display());
        }
        // The store's own path may be a link; the directory it leads to is closed.
        let link = dir.join("link");
        std::os::unix::fs::symlink(&old, &link).unwrap();
        fs::set_permissions(&old, fs::Permissions::from_mode(0o755)).unwrap();
        drop(Store::open(&link, None).unwrap());
        assert_eq!(mode(&old), STORE_MODE);
        let _ = fs::remove_dir_all(&dir);
    }

    /// Records of an older envc (no tree digest) still load; a digest is written only when there
    /// is one.
    #[test]
    fn records_without_a_tree_digest_load_and_none_is_not_written() {
        let old = r#"{"id":"0101010101010101010101010101010101010101010101010101010101010101",
            "parent":null,"key":null,"name":"base","env":"e","spec":null,"size":1,
            "created":2,"last_used":3,"build_secs":0.5}"#;
        let mut m: Meta = serde_json::from_str(old).unwrap();
        assert_eq!(m.tree_digest, None);
        assert!(!serde_json::to_string(&m).unwrap().contains("tree_digest"));
        m.tree_digest = Some(Digest([0xab; 32]));
        let text = serde_json::to_string(&m).unwrap();
        assert!(
            text.contains(&format!("\"tree_digest\":\"{}\"", "ab".repeat(32))),
            "{text}"
        );
        assert_eq!(serde_json::from_str::<Meta>(&text).unwrap(), m);
    }

    #[test]
    fn store_json_of_either_version_is_read_and_bad_fields_are_named() {
        assert_eq!(
            parse_config(br#"{"version":1,"backend":"btrfs"}"#),
            Ok(BackendConfig::Btrfs)
        );
        assert_eq!(
            parse_config(br#"{"version":2,"backend":{"kind":"overlay"}}"#),
            Ok(BackendConfig::Overlay)
        );
        let e = parse_config(br#"{"version":2,"backend":{"kind":"zfs"}}"#).unwrap_err();
        assert!(e.contains("zfs"), "{e}");
        let e = parse_config(br#"{"version":3,"backend":{"kind":"overlay"}}"#).unwrap_err();
        assert!(e.contains("version 3"), "{e}");
        assert!(parse_config(br#"{"version":1,"backend":"lvm"}"#).is_err());
    }
}
