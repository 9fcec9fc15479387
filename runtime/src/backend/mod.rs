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
//!
//! A backend knows its snapshots and nothing of the store's records (layer metadata, working-root
//! records, locks): it takes plain data in and gives plain data out. What the CLI needs of any
//! backend (its configuration, pool usage, the inventory recovery rebuilds records from) is part
//! of this contract as data, so no caller ever asks which backend it has.
#![forbid(unsafe_code)]

use std::fmt;
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use envc_plan::LayerId;
use nix::mount::MsFlags;
use serde::{Deserialize, Serialize};

use crate::sandbox::RootSource;
use crate::sys;
use crate::tools::ToolError;
use crate::tree::{self, TreeError};
use crate::warning::Warning;

mod btrfs;
pub mod lvm;
mod overlay;

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
    /// A tree could not be removed (a mount under it that cannot be detached, another mount
    /// inside it, an I/O error).
    #[error(transparent)]
    Remove(#[from] TreeError),
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
    /// Mounting a filesystem failed.
    #[error("cannot mount {fstype} {} at {}: {source}", device.display(), target.display())]
    Mount {
        /// The device or source.
        device: PathBuf,
        /// The mount point.
        target: PathBuf,
        /// The filesystem type.
        fstype: &'static str,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The caller's record of a layer could not be written before the layer was published (the
    /// layer stays unpublished).
    #[error("cannot record layer {id} before publishing it: {source}")]
    Record {
        /// The layer.
        id: LayerId,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A tool's report could not be read.
    #[error("cannot read the {report} report of {object}: {reason}")]
    Report {
        /// Which report (`lvs`, `dmsetup status`).
        report: &'static str,
        /// Of what (a VG, VG/LV).
        object: String,
        /// What was wrong with it.
        reason: String,
    },
}

pub(crate) fn io_err<'a>(
    op: &'static str,
    path: &'a Path,
) -> impl FnOnce(io::Error) -> BackendError + 'a {
    move |source| BackendError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

/// A store's backend and its setting, as `store.json` records it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum BackendConfig {
    /// overlayfs.
    Overlay,
    /// btrfs.
    Btrfs,
    /// LVM thin snapshots in one thin pool.
    Lvm(lvm::LvmConfig),
}

impl BackendConfig {
    /// Which backend.
    pub fn kind(&self) -> BackendKind {
        match self {
            BackendConfig::Overlay => BackendKind::Overlay,
            BackendConfig::Btrfs => BackendKind::Btrfs,
            BackendConfig::Lvm(_) => BackendKind::Lvm,
        }
    }
}

/// What making a store asks of its backend (`envc store init`, or the first use of a store).
#[derive(Debug, Clone)]
pub enum BackendInit {
    /// overlayfs: nothing to prepare.
    Overlay,
    /// btrfs: the store must be on btrfs.
    Btrfs,
    /// LVM: the thin pool (and the VG on a loop file) to use or create.
    Lvm(lvm::LvmInit),
}

/// How full the storage under a store is, where the backend draws from a shared pool (LVM).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Capacity {
    /// What is measured (`thin pool VG/POOL`).
    pub pool: String,
    /// Its usage, when it could be read.
    pub usage: Option<PoolUsage>,
    /// Why the usage could not be read.
    pub unknown: Option<String>,
}

/// A pool's usage.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PoolUsage {
    /// Data space used, percent.
    pub data: f64,
    /// Metadata space used, percent.
    pub metadata: f64,
    /// `rw`, or the mode a full or failed pool fell into (`out_of_data_space`, `ro`, `Fail`).
    pub mode: String,
}

/// What a backend whose layers live outside the store directory (LVM volumes and their tags)
/// holds: the truth the store's records are rebuilt from.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Inventory {
    /// Sealed layers.
    pub layers: Vec<VolumeLayer>,
    /// Layers whose build never finished, by volume.
    pub builds: Vec<VolumeBuild>,
    /// Working roots' volumes, every generation.
    pub roots: Vec<VolumeRoot>,
}

/// A sealed layer found in the backend.
#[derive(Debug, Clone, PartialEq)]
pub struct VolumeLayer {
    /// The layer's id.
    pub id: LayerId,
    /// Its parent.
    pub parent: Option<LayerId>,
    /// The layer's name in the spec that built it.
    pub name: String,
    /// The environment that built it.
    pub env: String,
    /// The backend's name for it (the LV).
    pub volume: String,
}

/// An unfinished build found in the backend.
#[derive(Debug, Clone, PartialEq)]
pub struct VolumeBuild {
    /// The layer's id.
    pub id: LayerId,
    /// The backend's name for it.
    pub volume: String,
}

/// A working root's volume found in the backend.
#[derive(Debug, Clone, PartialEq)]
pub struct VolumeRoot {
    /// The environment's name.
    pub env: String,
    /// The layer it is a snapshot of.
    pub top: LayerId,
    /// Its generation (a reset makes the next one).
    pub generation: u64,
    /// The backend's name for it.
    pub volume: String,
}

/// What adopting a working root's volume did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RootAdoption {
    /// The volume is now the root's current one.
    Adopted,
    /// It already was.
    Current,
    /// The root has a newer volume: this one is doomed (removed by the next reap).
    Doomed,
}

/// What names a layer being built, for backends that label their volumes (LVM tags).
#[derive(Debug, Clone, Copy)]
pub struct Labels<'a> {
    /// The layer's name in the spec.
    pub layer: &'a str,
    /// The environment's name.
    pub env: &'a str,
}

/// What the caller of [`Backend::seal`] does between measuring a finished build (the size it is
/// given) and publishing it: writing the layer's record, so a published layer always has one.
pub type RecordHook<'a> =
    &'a mut dyn FnMut(u64) -> Result<(), Box<dyn std::error::Error + Send + Sync>>;

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

impl Scratch {
    /// A throwaway root at `mountpoint`, whose files live in `dir` (removed with it).
    pub(crate) fn new(source: RootSource, mountpoint: PathBuf, dir: PathBuf) -> Scratch {
        Scratch {
            source,
            mountpoint,
            dir,
        }
    }

    /// The directory holding the throwaway root's files.
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }
}

/// A finished build's full tree as a directory on the host, for reading it before it is sealed
/// (its tree digest): see [`build_tree`].
#[derive(Debug)]
pub struct BuildTree {
    /// The tree's top.
    pub path: PathBuf,
    /// Whether it was mounted for this (and is unmounted by [`BuildTree::close`]).
    mounted: bool,
}

impl BuildTree {
    /// Unmounts what [`build_tree`] mounted.
    pub fn close(self) -> Result<(), BackendError> {
        if self.mounted {
            unmount(&self.path)?;
        }
        Ok(())
    }
}

/// Shows a finished build's full tree as a directory on the host: a build whose root is a
/// directory (a base, a btrfs subvolume, a mounted LV) is its own; an overlay build's is mounted
/// at its mountpoint, read-only, as its upper directory over its lower layers with no upper
/// directory of its own, exactly as [`Backend::tree_view`] shows the sealed layer later. A kill
/// while it is mounted leaves the mount in the staging area, whose removal detaches it.
pub fn build_tree(build: &Build) -> Result<BuildTree, BackendError> {
    match &build.source {
        RootSource::Dir => Ok(BuildTree {
            path: build.mountpoint.clone(),
            mounted: false,
        }),
        RootSource::Overlay { lowers, upper, .. } => {
            let layers: Vec<PathBuf> = std::iter::once(upper.clone())
                .chain(lowers.iter().cloned())
                .collect();
            mount_readonly(&layers, &build.mountpoint)?;
            Ok(BuildTree {
                path: build.mountpoint.clone(),
                mounted: true,
            })
        }
    }
}

/// Mounts a read-only overlay of `layers` (topmost first, at least two) at `target`.
fn mount_readonly(layers: &[PathBuf], target: &Path) -> Result<(), BackendError> {
    sys::kernel()
        .mount_overlay_readonly(layers, target)
        .map_err(|e| match e.stage {
            sys::OverlayStage::Lower(l) => BackendError::Io {
                op: "add overlay lower layer",
                path: l,
                source: e.source,
            },
            _ => BackendError::Mount {
                device: layers.first().cloned().unwrap_or_default(),
                target: target.to_owned(),
                fstype: "overlay (read-only)",
                source: e.source,
            },
        })
}

/// A working root just made.
#[derive(Debug, Clone, PartialEq)]
pub struct RootMade {
    /// Its stable path.
    pub path: PathBuf,
    /// Older snapshots of it wait for [`Backend::reap_root`], which the caller runs in the
    /// background under the root's lock.
    pub reap: bool,
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

    /// The store's directory.
    pub fn root(&self) -> &Path {
        &self.root
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
    /// Its setting, as `store.json` records it.
    fn config(&self) -> BackendConfig;
    /// Where it keeps things.
    fn layout(&self) -> &Layout;
    /// Whether a layer is sealed: `layers/ID` is a directory, never through a symlink.
    fn is_sealed(&self, id: &LayerId) -> bool {
        fs::symlink_metadata(self.layout().layer(id)).is_ok_and(|m| m.is_dir())
    }
    /// Bytes a sealed layer takes, as [`Backend::seal`] measures them, if the backend can tell
    /// after sealing (used when a layer's record is rebuilt).
    fn measure(&self, id: &LayerId) -> Option<u64> {
        Some(disk_usage(&self.layout().layer(id)))
    }
    /// How full the pool under the store is, for backends that draw from one (`envc ls`).
    fn capacity(&self) -> Option<Capacity> {
        None
    }
    /// Warnings gathered since the last call (a nearly full pool, ...), for the caller to report.
    fn take_warnings(&self) -> Vec<Warning> {
        Vec::new()
    }
    /// Removes what interrupted operations left behind (`gc`); returns how many things.
    fn sweep(&self) -> usize {
        sweep_tmp(self.layout().root())
    }
    /// Every sealed layer (what [`Backend::is_sealed`] accepts: a symlink or a file in
    /// `layers/` is not one).
    fn sealed(&self) -> Result<Vec<LayerId>, BackendError> {
        let mut ids = list_ids(&self.layout().root().join("layers"))?;
        ids.retain(|id| self.is_sealed(id));
        Ok(ids)
    }
    /// Starts building layer `id` on top of `chain` (its sealed ancestors, base first; empty for a
    /// base). The caller holds the layer's lock and has discarded leftovers.
    fn begin(
        &self,
        id: LayerId,
        chain: &[LayerId],
        labels: Labels<'_>,
    ) -> Result<Build, BackendError>;
    /// Makes a finished build durable, measures it, calls `record` with its size, and only if
    /// that succeeds publishes it atomically; returns its size in bytes. So a kill leaves at worst
    /// a record without a layer (harmless, removed by the next gc), never a layer without one.
    fn seal(&self, build: Build, record: RecordHook<'_>) -> Result<u64, BackendError>;
    /// Removes whatever a build of `id` left in staging.
    fn discard(&self, id: &LayerId) -> Result<(), BackendError>;
    /// Removes a sealed layer (the caller checks that nothing needs it).
    fn remove(&self, id: &LayerId) -> Result<(), BackendError>;
    /// The stable path of a working root.
    fn root_path(&self, name: &str) -> PathBuf {
        self.layout().root_dir(name).join("root")
    }
    /// Whether the working root of `chain` exists and is usable. A root that is still in the store
    /// but not mounted (after a reboot) is mounted again, with its changes. An error means it
    /// exists but cannot be made usable: the caller must not replace it silently.
    fn root_ready(&self, name: &str, chain: &[LayerId]) -> Result<bool, BackendError>;
    /// (Re)creates the working root as a fresh writable snapshot of `chain`'s last layer.
    fn create_root(&self, name: &str, chain: &[LayerId]) -> Result<RootMade, BackendError>;
    /// Removes a working root.
    fn drop_root(&self, name: &str) -> Result<(), BackendError>;
    /// Removes a working root's older snapshots, if the backend keeps any after a reset; returns
    /// how many. The caller holds the root's lock.
    fn reap_root(&self, _name: &str) -> Result<usize, BackendError> {
        Ok(0)
    }
    /// A throwaway writable snapshot of `chain`'s last layer.
    fn scratch_root(&self, chain: &[LayerId]) -> Result<Scratch, BackendError>;
    /// Removes a throwaway root.
    fn drop_scratch(&self, scratch: Scratch) -> Result<(), BackendError>;
    /// The full tree of `chain`'s last layer as a directory on the host (the view's
    /// `mountpoint`; its `source` is [`RootSource::Dir`]), for reading it (`envc verify`
    /// recomputes its tree digest there); removed with [`Backend::drop_scratch`]. By default a
    /// throwaway root, which is such a directory on a backend that snapshots whole trees; a
    /// backend whose throwaway root is not one overrides this. The caller holds shared locks on
    /// the chain and its run lock (the view lives in `tmp/run-PID-*`).
    fn tree_view(&self, chain: &[LayerId]) -> Result<Scratch, BackendError> {
        self.scratch_root(chain)
    }

    /// What the backend holds outside the store directory, for recovery; `None` for backends
    /// whose layers are the store's own files (nothing to recover from).
    fn inventory(&self) -> Result<Option<Inventory>, BackendError> {
        Ok(None)
    }
    /// Recovery: makes a sealed layer found in the inventory count as sealed in the store.
    fn adopt_layer(&self, layer: &VolumeLayer) -> Result<(), BackendError> {
        Err(self.no_inventory(&layer.volume))
    }
    /// Recovery: forgets a sealed layer whose volume is gone (the caller holds its lock).
    fn forget_layer(&self, id: &LayerId) -> Result<(), BackendError> {
        Err(self.no_inventory(&id.to_hex()))
    }
    /// Recovery: removes the volumes of builds nobody runs (the caller holds their locks).
    fn remove_builds(&self, builds: &[VolumeBuild]) -> Result<(), BackendError> {
        match builds.first() {
            Some(b) => Err(self.no_inventory(&b.volume)),
            None => Ok(()),
        }
    }
    /// Recovery: adopts a working root's volume (the caller holds the root's lock).
    fn adopt_root(&self, root: &VolumeRoot) -> Result<RootAdoption, BackendError> {
        Err(self.no_inventory(&root.volume))
    }
    /// The error of a recovery operation on a backend without an inventory.
    #[doc(hidden)]
    fn no_inventory(&self, object: &str) -> BackendError {
        BackendError::Unsupported {
            backend: self.kind(),
            path: PathBuf::from(object),
            reason: "this backend keeps its layers as files in the store: nothing to recover"
                .into(),
        }
    }
}

/// The backend a new store at `root` gets by default.
pub fn detect(root: &Path) -> BackendKind {
    match sys::kernel().fs_type(root) {
        Ok(t) if t == sys::BTRFS_MAGIC => BackendKind::Btrfs,
        _ => BackendKind::Overlay,
    }
}

/// Prepares what a new store at `root` needs of its backend (LVM: the thin pool) and returns the
/// setting to record.
pub fn prepare(root: &Path, init: &BackendInit) -> Result<BackendConfig, BackendError> {
    match init {
        BackendInit::Overlay => Ok(BackendConfig::Overlay),
        BackendInit::Btrfs => {
            btrfs::check(root)?;
            Ok(BackendConfig::Btrfs)
        }
        BackendInit::Lvm(init) => Ok(BackendConfig::Lvm(lvm::prepare(init)?)),
    }
}

/// Opens the backend of the store at `root`.
pub fn open(root: &Path, config: &BackendConfig) -> Result<Box<dyn Backend>, BackendError> {
    Ok(match config {
        BackendConfig::Overlay => Box::new(overlay::Overlay::new(root)),
        BackendConfig::Btrfs => {
            btrfs::check(root)?;
            Box::new(btrfs::Btrfs::new(root))
        }
        BackendConfig::Lvm(cfg) => Box::new(lvm::Lvm::new(root, cfg.clone())),
    })
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

/// Removes a tree of the store, if it exists, with [`tree::remove_tree`]: mounts left under it are
/// detached first, and the removal never follows a symlink or enters another mount.
fn remove_dir_if_exists(path: &Path) -> Result<(), BackendError> {
    Ok(tree::remove_tree(sys::kernel(), path)?)
}

/// Deletes a tree that nothing refers to any more (`tmp/discard-*`), without waiting for it: a
/// detached `envc __envc-remove PATH` (the same [`tree::remove_tree`]), in its own process group
/// so a Ctrl-C of envc does not stop it. Without the envc binary, or if it cannot be started,
/// the tree is removed here and now. What an interrupted removal leaves is swept by `gc`.
fn delete_in_background(path: &Path) -> Result<(), BackendError> {
    use std::os::unix::process::CommandExt;
    let Some(envc) = crate::tools::helper() else {
        return remove_dir_if_exists(path);
    };
    match std::process::Command::new(envc)
        .arg(tree::REMOVE_ARG)
        .arg(path)
        .env_clear()
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .process_group(0)
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
        if tree::is_doomed(&e.path()) && remove_dir_if_exists(&e.path()).is_ok() {
            n += 1;
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

/// The flags of a working root's mount on the host (overlay, LVM): a setuid-root program or a
/// device node that a step left in the root grants nothing to whoever reaches it there. Inside the
/// sandbox a root is mounted afresh, or seen through [`root_view`], without them.
pub(crate) const HOST_ROOT_FLAGS: MsFlags = MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV);

/// Sets [`HOST_ROOT_FLAGS`] on the mount at `path`, as a working root just mounted or mounted by an
/// older envc.
pub(crate) fn restrict_root_mount(path: &Path) -> Result<(), BackendError> {
    sys::kernel()
        .mount(
            None,
            path,
            None,
            MsFlags::MS_REMOUNT | MsFlags::MS_BIND | HOST_ROOT_FLAGS,
            None,
        )
        .map_err(io_err("mount nosuid,nodev", path))
}

/// The working root at `root` as a command in the sandbox gets it (`envc run --keep`, `envc
/// shell --keep`): the sandbox bind-mounts a root that is a directory, and a bind keeps the flags
/// of its source, so a root mounted on the host with [`HOST_ROOT_FLAGS`] is first bound without
/// them at a throwaway `tmp/run-PID-*` (so setuid programs work inside). `None` for a root that is
/// no mount of its own (btrfs): the sandbox takes it as it is. The caller holds its run lock while
/// the view exists (a leftover of a killed run is then removed like a throwaway root) and drops it
/// with [`drop_root_view`].
pub fn root_view(layout: &Layout, root: &Path) -> Result<Option<Scratch>, BackendError> {
    if !is_mounted(root) {
        return Ok(None);
    }
    let dir = layout.tmp("run");
    fs::create_dir(&dir).map_err(io_err("create", &dir))?;
    let k = sys::kernel();
    let bound = k
        .mount(
            Some(root),
            &dir,
            None,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None,
        )
        .and_then(|()| {
            k.mount(
                None,
                &dir,
                None,
                MsFlags::MS_REMOUNT | MsFlags::MS_BIND,
                None,
            )
        })
        .map_err(|source| BackendError::Mount {
            device: root.to_owned(),
            target: dir.clone(),
            fstype: "bind",
            source,
        });
    let view = Scratch::new(RootSource::Dir, dir.clone(), dir);
    match bound {
        Ok(()) => Ok(Some(view)),
        Err(e) => {
            let _ = drop_root_view(view);
            Err(e)
        }
    }
}

/// Removes a view made by [`root_view`]: the bind is detached, the root behind it is left alone.
pub fn drop_root_view(view: Scratch) -> Result<(), BackendError> {
    remove_dir_if_exists(view.dir())
}

fn unmount(path: &Path) -> Result<(), BackendError> {
    while is_mounted(path) {
        sys::kernel()
            .umount2(path, nix::mount::MntFlags::MNT_DETACH)
            .map_err(io_err("unmount", path))?;
    }
    Ok(())
}
