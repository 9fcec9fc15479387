//! The LVM thin backend: every layer is a thin snapshot of its parent in one thin pool.
//!
//! - The base is a thin volume with a filesystem (ext4, or xfs mounted `nouuid`).
//! - Building a layer is a writable thin snapshot of its parent (`lvcreate -s -kn`, created
//!   active), mounted at `staging/ID`, tagged with the layer's id, parent, name and environment.
//! - Sealing syncs and trims the filesystem (freed blocks go back to the pool), unmounts it, and
//!   makes the volume read-only while adding the `envc.sealed` tag: one `lvchange`. So a layer
//!   built costs two LVM commands. `layers/ID/` records that the layer is sealed, so a warm apply
//!   runs no LVM command at all; the LV tags are the truth it is rebuilt from (`envc store
//!   recover`).
//! - A working root is a writable snapshot of the last layer, mounted at `roots/NAME/root`
//!   nosuid and nodev.
//!   Resetting it takes one LVM command: a new snapshot under the next generation's name; the old
//!   one is removed in the background, under the root's lock, by the caller of
//!   [`Backend::reap_root`].
//! - Before every volume is created, the pool's data and metadata usage are read from the
//!   device-mapper (`dmsetup status`, not an LVM command): above 75 % envc warns, above 90 % it
//!   refuses, because a full thin pool can corrupt the filesystems in it.
//! - Without a running udev (containers, minimal hosts) every LVM command gets
//!   `activation{udev_sync=0 udev_rules=0}`, else LVM fails with "device not cleared".
#![forbid(unsafe_code)]

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use envc_plan::LayerId;
use nix::mount::MsFlags;
use serde::{Deserialize, Serialize};

use super::{
    Backend, BackendConfig, BackendError, BackendKind, Build, Capacity, HOST_ROOT_FLAGS, Inventory,
    Labels, Layout, RecordHook, RootAdoption, RootMade, Scratch, VolumeBuild, VolumeLayer,
    VolumeRoot, io_err, is_mounted, remove_dir_if_exists, restrict_root_mount, sweep_tmp, sync_dir,
    unmount,
};
use crate::sandbox::RootSource;
use crate::sys;
use crate::warning::Warning;

mod command;
mod inventory;
mod naming;
mod pool;
mod report;
mod roots;
mod volumes;

pub use command::LOG_ENV;
pub use pool::{DEFAULT_POOL, REFUSE_PERCENT, WARN_PERCENT, prepare};
pub use report::parse_pool_status;

use command::{lvm_cmd, run};
use naming::generation_of;

const TAG: &str = "envc";
const SEALED_TAG: &str = "envc.sealed";

/// The filesystem of the volumes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FsKind {
    /// ext4 (the default).
    Ext4,
    /// xfs, mounted `nouuid` (snapshots share the origin's UUID).
    Xfs,
}

impl std::str::FromStr for FsKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "ext4" => Ok(FsKind::Ext4),
            "xfs" => Ok(FsKind::Xfs),
            other => Err(format!("unknown filesystem `{other}` (known: ext4, xfs)")),
        }
    }
}

/// An LVM store's setting (in `store.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LvmConfig {
    /// The volume group.
    pub vg: String,
    /// The thin pool in it.
    pub pool: String,
    /// The filesystem of the base volumes.
    pub fs: FsKind,
    /// The virtual size of a base volume, in bytes (snapshots inherit it).
    pub volume_size: u64,
}

/// What `envc store init lvm` asks for.
#[derive(Debug, Clone)]
pub struct LvmInit {
    /// The volume group (created on the loop file when `loop_file` is given and it is missing).
    pub vg: String,
    /// The thin pool (created when missing).
    pub pool: String,
    /// The pool's size when it is created; default: 90 % of the VG's free space.
    pub size: Option<u64>,
    /// The base volume's virtual size; default: the pool's size.
    pub volume_size: Option<u64>,
    /// The filesystem.
    pub fs: FsKind,
    /// A file to back a new VG with, through a loop device (for trying envc out).
    pub loop_file: Option<PathBuf>,
}

/// The LVM thin backend.
pub struct Lvm {
    layout: Layout,
    cfg: LvmConfig,
    warnings: Mutex<Vec<Warning>>,
}

impl Lvm {
    /// The backend of the store at `root`.
    pub fn new(root: &Path, cfg: LvmConfig) -> Lvm {
        Lvm {
            layout: Layout::new(root),
            cfg,
            warnings: Mutex::new(Vec::new()),
        }
    }

    fn warn(&self, w: Warning) {
        self.warnings
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(w);
    }
}

fn pid_alive(pid: u32) -> bool {
    Path::new("/proc").join(pid.to_string()).exists()
}

impl Backend for Lvm {
    fn kind(&self) -> BackendKind {
        BackendKind::Lvm
    }

    fn layout(&self) -> &Layout {
        &self.layout
    }

    /// `layers/ID` is only a marker: a layer's size is known when it is sealed, not after.
    fn measure(&self, _id: &LayerId) -> Option<u64> {
        None
    }

    fn config(&self) -> BackendConfig {
        BackendConfig::Lvm(self.cfg.clone())
    }

    fn capacity(&self) -> Option<Capacity> {
        let pool = format!("thin pool {}", self.target(&self.cfg.pool));
        Some(match self.pool_usage() {
            Ok(u) => Capacity {
                pool,
                usage: Some(u),
                unknown: None,
            },
            Err(e) => Capacity {
                pool,
                usage: None,
                unknown: Some(e.to_string()),
            },
        })
    }

    fn take_warnings(&self) -> Vec<Warning> {
        std::mem::take(&mut *self.warnings.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn begin(
        &self,
        id: LayerId,
        chain: &[LayerId],
        labels: Labels<'_>,
    ) -> Result<Build, BackendError> {
        let lv = self.layer_lv(&id);
        self.check_pool(&format!(
            "create volume {} for layer `{}`",
            self.target(&lv),
            labels.layer
        ))?;
        // The staging directory comes before the volume: it tells `discard` that one may exist.
        let st = self.layout.staging(&id);
        fs::create_dir_all(&st).map_err(io_err("create", &st))?;
        let mut tags = vec![
            TAG.to_owned(),
            format!("envc.id={id}"),
            format!("envc.name={}", labels.layer),
            format!("envc.env={}", labels.env),
        ];
        let made = match chain.last() {
            None => self.create(&lv, None, &tags).and_then(|()| self.mkfs(&lv)),
            Some(parent) => {
                tags.push(format!("envc.parent={parent}"));
                self.create(&lv, Some(&self.layer_lv(parent)), &tags)
            }
        }
        .and_then(|()| self.mount(&lv, &st, MsFlags::empty()));
        if let Err(e) = made {
            // Nothing half-made stays behind (if this fails too, the next apply retries).
            let _ = self.discard(&id);
            return Err(e);
        }
        Ok(Build {
            id,
            source: RootSource::Dir,
            mountpoint: st,
        })
    }

    fn seal(&self, build: Build, record: RecordHook<'_>) -> Result<u64, BackendError> {
        let st = self.layout.staging(&build.id);
        sync_dir(&st)?;
        let stat = nix::sys::statvfs::statvfs(&st).map_err(|e| BackendError::Io {
            op: "measure",
            path: st.clone(),
            source: e.into(),
        })?;
        let size = (stat.blocks() - stat.blocks_free()) as u64 * stat.fragment_size() as u64;
        // Blocks the build freed go back to the pool (not fatal where discard is unsupported).
        if let Ok(f) = File::open(&st) {
            let _ = sys::kernel().fitrim(std::os::fd::AsFd::as_fd(&f));
        }
        // A plain unmount: if something still uses the filesystem, sealing fails instead of
        // changing the volume under it.
        sys::kernel()
            .umount2(&st, nix::mount::MntFlags::empty())
            .map_err(|source| BackendError::Io {
                op: "unmount",
                path: st.clone(),
                source,
            })?;
        // Order: sync, measure, trim, unmount, record (the caller's meta), then seal the volume
        // (read-only + tag, the truth `store recover` reads) and publish the marker.
        record(size).map_err(|source| BackendError::Record {
            id: build.id,
            source,
        })?;
        let lv = self.layer_lv(&build.id);
        run(lvm_cmd("lvchange")?
            .args(["-q", "-p", "r", "--addtag", SEALED_TAG])
            .arg(self.target(&lv)))?;
        self.write_marker(&build.id, &lv)?;
        remove_dir_if_exists(&st)?;
        Ok(size)
    }

    fn discard(&self, id: &LayerId) -> Result<(), BackendError> {
        let st = self.layout.staging(id);
        if !st.exists() {
            return Ok(());
        }
        unmount(&st)?;
        // A build interrupted after it was sealed keeps its volume.
        if !self.is_sealed(id) {
            self.remove_lvs(&[self.layer_lv(id)])?;
        }
        remove_dir_if_exists(&st)
    }

    fn remove(&self, id: &LayerId) -> Result<(), BackendError> {
        let marker = self.layout.layer(id);
        if !marker.exists() {
            return Ok(());
        }
        // The layer stops being sealed first, by moving its record to where an interrupted build
        // would be: if envc dies before the volume is gone, the next apply's staging clean-up
        // removes it. If LVM fails, the layer is sealed again.
        let doomed = self.layout.staging(id);
        remove_dir_if_exists(&doomed)?;
        fs::rename(&marker, &doomed).map_err(io_err("remove layer", &marker))?;
        if let Err(e) = self.remove_lvs(&[self.layer_lv(id)]) {
            let _ = fs::rename(&doomed, &marker);
            return Err(e);
        }
        remove_dir_if_exists(&doomed)
    }

    fn root_ready(&self, name: &str, _chain: &[LayerId]) -> Result<bool, BackendError> {
        let mnt = self.root_path(name);
        if is_mounted(&mnt) {
            // Mounted by an older envc perhaps, without the flags.
            restrict_root_mount(&mnt)?;
            return Ok(true);
        }
        // After a reboot: the root's volume is still there; activate and mount it again. If that
        // fails, the error stops the apply: the root (and what was changed in it) is never
        // replaced silently.
        let Some(lv) = self.current_root_lv(name) else {
            return Ok(false);
        };
        if !self.dev(&lv).exists() {
            run(lvm_cmd("lvchange")?
                .args(["-q", "-a", "y", "-K"])
                .arg(self.target(&lv)))?;
        }
        fs::create_dir_all(&mnt).map_err(io_err("create", &mnt))?;
        self.mount(&lv, &mnt, HOST_ROOT_FLAGS)?;
        Ok(true)
    }

    fn create_root(&self, name: &str, chain: &[LayerId]) -> Result<RootMade, BackendError> {
        // Before anything changes: a full pool leaves the current root as it is.
        self.check_pool(&format!("create a volume for the working root of `{name}`"))?;
        let dir = self.layout.root_dir(name);
        let mnt = dir.join("root");
        fs::create_dir_all(&mnt).map_err(io_err("create", &mnt))?;
        unmount(&mnt)?;
        let old = self.current_root_lv(name);
        // A volume whose creation was interrupted before it was recorded is doomed as well, and its
        // generation is never reused.
        let pending = self
            .root_volume(name, "lv.next")
            .filter(|p| Some(p) != old.as_ref());
        let doomed: Vec<&str> = old.iter().chain(&pending).map(String::as_str).collect();
        let generation = doomed.iter().map(|l| generation_of(l)).max().unwrap_or(0) + 1;
        // Recorded before anything else, so that a crash never leaks them.
        if !doomed.is_empty() {
            self.doom(name, &doomed)?;
        }
        crate::failpoint::hit("root-dropped");
        let top = chain.last().expect("a root has at least a base");
        let lv = self.root_lv(name, generation);
        let (pending_file, lv_file) = (dir.join("lv.next"), dir.join("lv"));
        fs::write(&pending_file, &lv).map_err(io_err("write", &pending_file))?;
        let tags = [
            TAG.to_owned(),
            "envc.root".to_owned(),
            format!("envc.env={name}"),
            format!("envc.top={top}"),
        ];
        self.create(&lv, Some(&self.layer_lv(top)), &tags)?;
        fs::rename(&pending_file, &lv_file).map_err(io_err("write", &lv_file))?;
        self.mount(&lv, &mnt, HOST_ROOT_FLAGS)?;
        Ok(RootMade {
            path: mnt,
            reap: !doomed.is_empty(),
        })
    }

    fn drop_root(&self, name: &str) -> Result<(), BackendError> {
        let mnt = self.root_path(name);
        unmount(&mnt)?;
        let mut lvs = self.doomed(name);
        lvs.extend(self.current_root_lv(name));
        lvs.extend(self.root_volume(name, "lv.next"));
        self.remove_lvs(&lvs)?;
        for f in ["lv", "doomed", "lv.next"] {
            let _ = fs::remove_file(self.root_file(name, f));
        }
        Ok(())
    }

    fn scratch_root(&self, chain: &[LayerId]) -> Result<Scratch, BackendError> {
        let dir = self.layout.tmp("run");
        fs::create_dir_all(&dir).map_err(io_err("create", &dir))?;
        let lv = self.scratch_lv(&dir);
        let top = chain.last().expect("a root has at least a base");
        let made = self
            .check_pool(&format!(
                "create volume {} for a throwaway root",
                self.target(&lv)
            ))
            .and_then(|()| {
                self.create(
                    &lv,
                    Some(&self.layer_lv(top)),
                    &[TAG.to_owned(), "envc.scratch".to_owned()],
                )
            })
            .and_then(|()| self.mount(&lv, &dir, MsFlags::empty()));
        let scratch = Scratch::new(RootSource::Dir, dir.clone(), dir);
        if let Err(e) = made {
            let _ = self.drop_scratch(scratch);
            return Err(e);
        }
        Ok(scratch)
    }

    fn drop_scratch(&self, scratch: Scratch) -> Result<(), BackendError> {
        unmount(scratch.dir())?;
        self.remove_lvs(&[self.scratch_lv(scratch.dir())])?;
        remove_dir_if_exists(scratch.dir())
    }

    fn sweep(&self) -> usize {
        let mut n = sweep_tmp(self.layout.root());
        // Throwaway roots of runs that were killed.
        let mut dead = Vec::new();
        for e in fs::read_dir(self.layout.root.join("tmp"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(pid) = name
                .strip_prefix("run-")
                .and_then(|r| r.split('-').next())
                .and_then(|p| p.parse::<u32>().ok())
            else {
                continue;
            };
            if !pid_alive(pid) && unmount(&e.path()).is_ok() {
                dead.push(e.path());
            }
        }
        let lvs: Vec<String> = dead.iter().map(|d| self.scratch_lv(d)).collect();
        if self.remove_lvs(&lvs).is_ok() {
            for d in &dead {
                if remove_dir_if_exists(d).is_ok() {
                    n += 1;
                }
            }
        }
        n
    }

    fn reap_root(&self, name: &str) -> Result<usize, BackendError> {
        self.reap(name)
    }

    fn inventory(&self) -> Result<Option<Inventory>, BackendError> {
        self.list().map(Some)
    }

    fn adopt_layer(&self, layer: &VolumeLayer) -> Result<(), BackendError> {
        self.adopt(layer)
    }

    fn forget_layer(&self, id: &LayerId) -> Result<(), BackendError> {
        self.forget(id)
    }

    fn remove_builds(&self, builds: &[VolumeBuild]) -> Result<(), BackendError> {
        self.remove_stale_builds(builds)
    }

    fn adopt_root(&self, root: &VolumeRoot) -> Result<RootAdoption, BackendError> {
        self.adopt_root_volume(root)
    }
}
