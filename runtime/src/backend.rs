//! How layers and roots are made. One contract, several backends:
//!
//! - **overlay** (default): a layer is a directory holding its diff; building a layer mounts an
//!   overlay of its ancestors with a fresh upper directory (inside the build's own mount
//!   namespace), and sealing renames the upper to `layers/ID`. A working root is an overlay of the
//!   chain mounted at a stable path. Mounts use `fsconfig(lowerdir+)`, so chain depth is not
//!   limited by the one-page mount option string.
//! - **btrfs**: a layer is a read-only subvolume; building snapshots the parent writable, sealing
//!   makes it read-only and renames it into `layers/`. A working root is a writable snapshot.
//!
//! - **lvm**: a layer is a read-only thin snapshot of its parent in an LVM thin pool (see
//!   [`lvm`]).
//!
//! Sealing is atomic in every backend: a staging area is never mistaken for a layer.
#![forbid(unsafe_code)]

use std::fmt;
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use envc_plan::LayerId;
use serde::{Deserialize, Serialize};

use crate::sandbox::RootSource;
use crate::sys;
use crate::tools::{Tool, ToolError};

/// The kinds of backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// overlayfs: works on any Linux filesystem.
    Overlay,
    /// btrfs subvolumes and snapshots.
    Btrfs,
    /// LVM thin snapshots.
    Lvm,
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BackendKind::Overlay => "overlay",
            BackendKind::Btrfs => "btrfs",
            BackendKind::Lvm => "lvm",
        })
    }
}

impl FromStr for BackendKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "overlay" | "overlayfs" => Ok(BackendKind::Overlay),
            "btrfs" => Ok(BackendKind::Btrfs),
            "lvm" => Ok(BackendKind::Lvm),
            other => Err(format!(
                "unknown backend `{other}` (known: overlay, btrfs, lvm)"
            )),
        }
    }
}

/// A failure of a backend operation, naming the operation and the object.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
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
    /// An external tool failed.
    #[error(transparent)]
    Tool(#[from] ToolError),
    /// The backend cannot work here.
    #[error("the {backend} backend cannot use {}: {reason}", path.display())]
    Unsupported {
        /// Which backend.
        backend: BackendKind,
        /// The store.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The thin pool is too full to create another volume safely.
    #[error(
        "cannot {op}: thin pool {pool} is {data:.1}% full (data) and {metadata:.1}% (metadata){}; envc refuses above 90% because a full thin pool can corrupt the filesystems in it. Free space with `envc gc`, or grow the pool: lvextend -L +SIZE {pool} (data), lvextend --poolmetadatasize +SIZE {pool} (metadata)",
        if mode == "rw" { String::new() } else { format!(", in {mode} mode") }
    )]
    PoolFull {
        /// What was to be created.
        op: String,
        /// VG/POOL.
        pool: String,
        /// Data usage, percent.
        data: f64,
        /// Metadata usage, percent.
        metadata: f64,
        /// The pool's mode (`rw` when healthy).
        mode: String,
    },
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> BackendError + 'a {
    move |source| BackendError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

pub mod lvm;

/// What names a layer being built, for backends that label their volumes (LVM tags).
#[derive(Debug, Clone, Copy)]
pub struct Labels<'a> {
    /// The layer's name in the spec.
    pub layer: &'a str,
    /// The environment's name.
    pub env: &'a str,
}

/// A layer being built.
#[derive(Debug)]
pub struct Build {
    /// The layer's id.
    pub id: LayerId,
    /// How the sandbox gets the root.
    pub source: RootSource,
    /// Where the root is or gets mounted. For a base, the directory to create it in.
    pub mountpoint: PathBuf,
}

/// A throwaway root (for `envc run`), removed after use.
#[derive(Debug)]
pub struct Scratch {
    /// How the sandbox gets the root.
    pub source: RootSource,
    /// Where the root is or gets mounted.
    pub mountpoint: PathBuf,
    dir: PathBuf,
}

/// Where a backend keeps things in the store: the same for every backend.
#[derive(Debug, Clone)]
pub struct Layout {
    root: PathBuf,
}

impl Layout {
    /// The layout of the store at `root`.
    pub fn new(root: &Path) -> Layout {
        Layout {
            root: root.to_owned(),
        }
    }

    /// A sealed layer.
    pub fn layer(&self, id: &LayerId) -> PathBuf {
        self.root.join("layers").join(id.to_hex())
    }

    /// A layer being built.
    pub fn staging(&self, id: &LayerId) -> PathBuf {
        self.root.join("staging").join(id.to_hex())
    }

    /// The directory of a working root (its record, and the root itself at `root`).
    pub fn root_dir(&self, name: &str) -> PathBuf {
        self.root.join("roots").join(name)
    }

    /// A fresh, unique path in `tmp/` (not created).
    pub fn tmp(&self, prefix: &str) -> PathBuf {
        self.root.join("tmp").join(unique(prefix))
    }
}

/// The backend contract. Every method names, in its errors, the operation and the object.
pub trait Backend: Send + Sync {
    /// Which backend this is.
    fn kind(&self) -> BackendKind;
    /// Where it keeps things.
    fn layout(&self) -> &Layout;
    /// Whether a layer is sealed.
    fn is_sealed(&self, id: &LayerId) -> bool {
        self.layout().layer(id).is_dir()
    }
    /// The LVM backend, for LVM-only operations (recovery from LV tags, pool usage).
    fn lvm(&self) -> Option<&lvm::Lvm> {
        None
    }
    /// A line about the backend's own state for `envc ls` (LVM: the pool's usage).
    fn status(&self) -> Option<String> {
        None
    }
    /// Removes what interrupted operations left behind (`gc`); returns how many things.
    fn sweep(&self) -> usize {
        sweep_tmp(&self.layout().root)
    }
    /// Every sealed layer.
    fn sealed(&self) -> Result<Vec<LayerId>, BackendError> {
        list_ids(&self.layout().root.join("layers"))
    }
    /// Starts building layer `id` on top of `chain` (its sealed ancestors, base first; empty for a
    /// base). The caller holds the layer's lock and has discarded leftovers.
    fn begin(
        &self,
        id: LayerId,
        chain: &[LayerId],
        labels: Labels<'_>,
    ) -> Result<Build, BackendError>;
    /// Makes a finished build durable and publishes it atomically; returns its size in bytes.
    fn seal(&self, build: Build) -> Result<u64, BackendError>;
    /// Removes whatever a build of `id` left in staging.
    fn discard(&self, id: &LayerId) -> Result<(), BackendError>;
    /// Removes a sealed layer (the caller checks that nothing needs it).
    fn remove(&self, id: &LayerId) -> Result<(), BackendError>;
    /// The stable path of a working root.
    fn root_path(&self, name: &str) -> PathBuf {
        self.layout().root_dir(name).join("root")
    }
    /// Whether the working root exists and is usable (mounted, for overlay). An error means it
    /// exists but cannot be made usable: the caller must not replace it silently.
    fn root_ready(&self, name: &str) -> Result<bool, BackendError>;
    /// (Re)creates the working root as a fresh writable snapshot of `chain`'s last layer.
    fn create_root(&self, name: &str, chain: &[LayerId]) -> Result<PathBuf, BackendError>;
    /// Removes a working root.
    fn drop_root(&self, name: &str) -> Result<(), BackendError>;
    /// A throwaway writable snapshot of `chain`'s last layer.
    fn scratch_root(&self, chain: &[LayerId]) -> Result<Scratch, BackendError>;
    /// Removes a throwaway root.
    fn drop_scratch(&self, scratch: Scratch) -> Result<(), BackendError>;
}

/// The backend a new store at `root` gets by default.
pub fn detect(root: &Path) -> BackendKind {
    match sys::kernel().fs_type(root) {
        Ok(t) if t == sys::BTRFS_MAGIC => BackendKind::Btrfs,
        _ => BackendKind::Overlay,
    }
}

/// Opens the backend of the store at `root` (an LVM store needs its setting).
pub fn new(
    kind: BackendKind,
    root: &Path,
    lvm: Option<&lvm::LvmConfig>,
) -> Result<Box<dyn Backend>, BackendError> {
    match kind {
        BackendKind::Lvm => match lvm {
            Some(cfg) => Ok(Box::new(lvm::Lvm::new(root, cfg.clone()))),
            None => Err(BackendError::Unsupported {
                backend: kind,
                path: root.to_owned(),
                reason: "an LVM store is made with `envc store init lvm --vg VG [--pool POOL]`"
                    .into(),
            }),
        },
        BackendKind::Overlay => Ok(Box::new(Overlay {
            layout: Layout::new(root),
        })),
        BackendKind::Btrfs => {
            if sys::kernel().fs_type(root).ok() != Some(sys::BTRFS_MAGIC) {
                return Err(BackendError::Unsupported {
                    backend: kind,
                    path: root.to_owned(),
                    reason: "the store is not on a btrfs filesystem".into(),
                });
            }
            Ok(Box::new(Btrfs {
                layout: Layout::new(root),
            }))
        }
    }
}

fn list_ids(dir: &Path) -> Result<Vec<LayerId>, BackendError> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).map_err(io_err("list", dir))? {
        let e = e.map_err(io_err("list", dir))?;
        if let Some(id) = e.file_name().to_str().and_then(|n| n.parse().ok()) {
            out.push(id);
        }
    }
    Ok(out)
}

fn remove_dir_if_exists(path: &Path) -> Result<(), BackendError> {
    match fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(BackendError::Io {
            op: "remove",
            path: path.to_owned(),
            source: e,
        }),
    }
}

/// Deletes a tree that nothing refers to any more, without waiting for it.
fn delete_in_background(path: &Path) -> Result<(), BackendError> {
    let rm = crate::tools::find("rm")?;
    match std::process::Command::new(rm)
        .arg("-rf")
        .arg("--one-file-system")
        .arg(path)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
    {
        Ok(_) => Ok(()),
        Err(_) => remove_dir_if_exists(path),
    }
}

/// Removes what interrupted deletions left in `tmp/` (never live throwaway roots).
pub fn sweep_tmp(store: &Path) -> usize {
    let mut n = 0;
    for e in fs::read_dir(store.join("tmp"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with("discard-") || name.starts_with("removed-") {
            if fs::remove_dir_all(e.path()).is_ok() {
                n += 1;
            }
        }
    }
    n
}

/// Bytes used by a tree (allocated blocks; hard links counted once per walk).
pub fn disk_usage(path: &Path) -> u64 {
    fn walk(p: &Path, seen: &mut std::collections::HashSet<(u64, u64)>) -> u64 {
        let Ok(m) = fs::symlink_metadata(p) else {
            return 0;
        };
        if m.nlink() > 1 && !m.is_dir() && !seen.insert((m.dev(), m.ino())) {
            return 0;
        }
        let mut total = m.blocks() * 512;
        if m.is_dir() {
            for e in fs::read_dir(p).into_iter().flatten().flatten() {
                total += walk(&e.path(), seen);
            }
        }
        total
    }
    walk(path, &mut std::collections::HashSet::new())
}

fn sync_dir(path: &Path) -> Result<(), BackendError> {
    let f = fs::File::open(path).map_err(io_err("open", path))?;
    sys::kernel()
        .syncfs(std::os::fd::AsFd::as_fd(&f))
        .map_err(io_err("sync", path))
}

/// A unique name for a throwaway directory.
fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!(
        "{prefix}-{}-{nanos}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Whether `path` is a mount point in this mount namespace.
pub fn is_mounted(path: &Path) -> bool {
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let want = path.to_string_lossy().replace(' ', "\\040");
    info.lines()
        .any(|l| l.split(' ').nth(4) == Some(want.as_str()))
}

fn unmount(path: &Path) -> Result<(), BackendError> {
    while is_mounted(path) {
        sys::kernel()
            .umount2(path, nix::mount::MntFlags::MNT_DETACH)
            .map_err(io_err("unmount", path))?;
    }
    Ok(())
}

// ----------------------------------------------------------------------------------------------

struct Overlay {
    layout: Layout,
}

impl Overlay {
    fn lowers(&self, chain: &[LayerId]) -> Vec<PathBuf> {
        chain.iter().rev().map(|id| self.layout.layer(id)).collect()
    }

    fn mkdirs(dirs: &[&Path]) -> Result<(), BackendError> {
        for d in dirs {
            fs::create_dir_all(d).map_err(io_err("create", d))?;
        }
        Ok(())
    }
}

impl Backend for Overlay {
    fn kind(&self) -> BackendKind {
        BackendKind::Overlay
    }

    fn layout(&self) -> &Layout {
        &self.layout
    }

    fn begin(
        &self,
        id: LayerId,
        chain: &[LayerId],
        _labels: Labels<'_>,
    ) -> Result<Build, BackendError> {
        let st = self.layout.staging(&id);
        let upper = st.join("upper");
        if chain.is_empty() {
            Self::mkdirs(&[&upper])?;
            return Ok(Build {
                id,
                source: RootSource::Dir,
                mountpoint: upper,
            });
        }
        let work = st.join("work");
        let mnt = st.join("mnt");
        Self::mkdirs(&[&upper, &work, &mnt])?;
        Ok(Build {
            id,
            source: RootSource::Overlay {
                lowers: self.lowers(chain),
                upper,
                work,
            },
            mountpoint: mnt,
        })
    }

    fn seal(&self, build: Build) -> Result<u64, BackendError> {
        let st = self.layout.staging(&build.id);
        let upper = st.join("upper");
        sync_dir(&upper)?;
        let size = disk_usage(&upper);
        let dest = self.layout.layer(&build.id);
        fs::rename(&upper, &dest).map_err(io_err("publish layer", &dest))?;
        remove_dir_if_exists(&st)?;
        Ok(size)
    }

    fn discard(&self, id: &LayerId) -> Result<(), BackendError> {
        remove_dir_if_exists(&self.layout.staging(id))
    }

    fn remove(&self, id: &LayerId) -> Result<(), BackendError> {
        // Rename first so that a half-removed layer is never seen as sealed.
        let path = self.layout.layer(id);
        let doomed = self.layout.tmp("removed");
        match fs::rename(&path, &doomed) {
            // The layer is gone from here on. What is left in tmp/ is deleted now if possible,
            // else by the next `gc` (sweep_tmp): an error here must not stop the caller from
            // removing the layer's metadata.
            Ok(()) => {
                let _ = remove_dir_if_exists(&doomed);
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(BackendError::Io {
                op: "remove layer",
                path,
                source: e,
            }),
        }
    }

    fn root_ready(&self, name: &str) -> Result<bool, BackendError> {
        Ok(is_mounted(&self.root_path(name)))
    }

    fn create_root(&self, name: &str, chain: &[LayerId]) -> Result<PathBuf, BackendError> {
        self.drop_root(name)?;
        let dir = self.layout.root_dir(name);
        let (upper, work, mnt) = (dir.join("upper"), dir.join("work"), dir.join("root"));
        Self::mkdirs(&[&upper, &work, &mnt])?;
        sys::kernel()
            .mount_overlay(&self.lowers(chain), &upper, &work, &mnt)
            .map_err(|e| {
                let (op, path) = match &e.stage {
                    sys::OverlayStage::Open => ("open overlay context for", &mnt),
                    sys::OverlayStage::Lower(l) => ("add lower layer", l),
                    sys::OverlayStage::Upper(_) => ("set upper dir", &upper),
                    sys::OverlayStage::Work(_) => ("set work dir", &work),
                    sys::OverlayStage::Create | sys::OverlayStage::Attach => {
                        ("mount working root at", &mnt)
                    }
                };
                io_err(op, path)(e.source)
            })?;
        Ok(mnt)
    }

    fn drop_root(&self, name: &str) -> Result<(), BackendError> {
        let dir = self.layout.root_dir(name);
        let mnt = dir.join("root");
        unmount(&mnt)?;
        // Discarding is one rename whatever the root's size; the old tree is deleted in the
        // background (and by `gc` if that is interrupted).
        for sub in ["upper", "work"] {
            let p = dir.join(sub);
            if p.exists() {
                let doomed = self.layout.tmp("discard");
                fs::rename(&p, &doomed).map_err(io_err("discard", &p))?;
                delete_in_background(&doomed)?;
            }
        }
        Ok(())
    }

    fn scratch_root(&self, chain: &[LayerId]) -> Result<Scratch, BackendError> {
        let dir = self.layout.tmp("run");
        let (upper, work, mnt) = (dir.join("upper"), dir.join("work"), dir.join("mnt"));
        Self::mkdirs(&[&upper, &work, &mnt])?;
        Ok(Scratch {
            source: RootSource::Overlay {
                lowers: self.lowers(chain),
                upper,
                work,
            },
            mountpoint: mnt,
            dir,
        })
    }

    fn drop_scratch(&self, scratch: Scratch) -> Result<(), BackendError> {
        remove_dir_if_exists(&scratch.dir)
    }
}

// ----------------------------------------------------------------------------------------------

struct Btrfs {
    layout: Layout,
}

fn btrfs() -> Result<Tool, BackendError> {
    Ok(Tool::new("btrfs")?)
}

/// Whether `path` is the top of a btrfs subvolume (inode 256).
fn is_subvolume(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok_and(|m| m.is_dir() && m.ino() == 256)
}

impl Btrfs {
    fn delete_subvolume(path: &Path) -> Result<(), BackendError> {
        if is_subvolume(path) {
            btrfs()?.args(["subvolume", "delete"]).arg(path).output()?;
            Ok(())
        } else {
            remove_dir_if_exists(path)
        }
    }

    fn snapshot(src: &Path, dest: &Path, readonly: bool) -> Result<(), BackendError> {
        let mut t = btrfs()?.args(["subvolume", "snapshot"]);
        if readonly {
            t = t.arg("-r");
        }
        t.arg(src).arg(dest).output()?;
        Ok(())
    }
}

impl Backend for Btrfs {
    fn kind(&self) -> BackendKind {
        BackendKind::Btrfs
    }

    fn layout(&self) -> &Layout {
        &self.layout
    }

    fn begin(
        &self,
        id: LayerId,
        chain: &[LayerId],
        _labels: Labels<'_>,
    ) -> Result<Build, BackendError> {
        let st = self.layout.staging(&id);
        match chain.last() {
            None => {
                btrfs()?.args(["subvolume", "create"]).arg(&st).output()?;
            }
            Some(parent) => Self::snapshot(&self.layout.layer(parent), &st, false)?,
        }
        Ok(Build {
            id,
            source: RootSource::Dir,
            mountpoint: st,
        })
    }

    fn seal(&self, build: Build) -> Result<u64, BackendError> {
        let st = self.layout.staging(&build.id);
        sync_dir(&st)?;
        let size = disk_usage(&st);
        // Publishing is the creation of a read-only snapshot: atomic, and a read-only subvolume
        // cannot be renamed into place.
        let dest = self.layout.layer(&build.id);
        Self::snapshot(&st, &dest, true)?;
        Self::delete_subvolume(&st)?;
        Ok(size)
    }

    fn discard(&self, id: &LayerId) -> Result<(), BackendError> {
        Self::delete_subvolume(&self.layout.staging(id))
    }

    fn remove(&self, id: &LayerId) -> Result<(), BackendError> {
        let path = self.layout.layer(id);
        if !path.exists() {
            return Ok(());
        }
        Self::delete_subvolume(&path)
    }

    fn root_ready(&self, name: &str) -> Result<bool, BackendError> {
        Ok(is_subvolume(&self.root_path(name)))
    }

    fn create_root(&self, name: &str, chain: &[LayerId]) -> Result<PathBuf, BackendError> {
        self.drop_root(name)?;
        let dir = self.layout.root_dir(name);
        fs::create_dir_all(&dir).map_err(io_err("create", &dir))?;
        let top = chain.last().expect("a root has at least a base");
        let path = self.root_path(name);
        Self::snapshot(&self.layout.layer(top), &path, false)?;
        Ok(path)
    }

    fn drop_root(&self, name: &str) -> Result<(), BackendError> {
        let path = self.root_path(name);
        if path.exists() {
            let doomed = self.layout.tmp("discard");
            fs::rename(&path, &doomed).map_err(io_err("discard", &path))?;
            Self::delete_subvolume(&doomed)?;
        }
        Ok(())
    }

    fn scratch_root(&self, chain: &[LayerId]) -> Result<Scratch, BackendError> {
        let dir = self.layout.tmp("run");
        let top = chain.last().expect("a root has at least a base");
        Self::snapshot(&self.layout.layer(top), &dir, false)?;
        Ok(Scratch {
            source: RootSource::Dir,
            mountpoint: dir.clone(),
            dir,
        })
    }

    fn drop_scratch(&self, scratch: Scratch) -> Result<(), BackendError> {
        Self::delete_subvolume(&scratch.dir)
    }
}

#[allow(dead_code)]
fn _assert_object_safe(_: &dyn Backend) {}
