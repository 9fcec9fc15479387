//! The btrfs backend: a layer is a read-only subvolume. Building snapshots the parent writable;
//! sealing publishes a read-only snapshot of it under `layers/`. A working root is a writable
//! snapshot.
#![forbid(unsafe_code)]

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use envc_plan::LayerId;

use super::{
    Backend, BackendConfig, BackendError, BackendKind, Build, Labels, Layout, RecordHook, RootMade,
    Scratch, disk_usage, io_err, remove_dir_if_exists, sync_dir,
};
use crate::sandbox::RootSource;
use crate::sys;
use crate::tools::Tool;

/// Fails unless the store at `root` is on btrfs.
pub(super) fn check(root: &Path) -> Result<(), BackendError> {
    if sys::kernel().fs_type(root).ok() != Some(sys::BTRFS_MAGIC) {
        return Err(BackendError::Unsupported {
            backend: BackendKind::Btrfs,
            path: root.to_owned(),
            reason: "the store is not on a btrfs filesystem".into(),
        });
    }
    Ok(())
}

pub(super) struct Btrfs {
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
    pub(super) fn new(root: &Path) -> Btrfs {
        Btrfs {
            layout: Layout::new(root),
        }
    }

    fn delete_subvolume(path: &Path) -> Result<(), BackendError> {
        if is_subvolume(path) {
            // `btrfs subvolume delete` does not enter mounts; what a killed build left mounted
            // inside is detached first all the same.
            crate::tree::detach_leftovers(sys::kernel(), path)?;
            match btrfs()?.args(["subvolume", "delete"]).arg(path).output() {
                Ok(_) => Ok(()),
                // Garbage in tmp/ may be removed by a concurrent gc's sweep at the same time:
                // gone is what was wanted.
                Err(_)
                    if fs::symlink_metadata(path)
                        .is_err_and(|e| e.kind() == std::io::ErrorKind::NotFound) =>
                {
                    Ok(())
                }
                Err(e) => Err(e.into()),
            }
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

    fn config(&self) -> BackendConfig {
        BackendConfig::Btrfs
    }

    fn layout(&self) -> &Layout {
        &self.layout
    }

    /// A layer is a subvolume at `layers/ID` (never a symlink, never a plain directory).
    fn is_sealed(&self, id: &LayerId) -> bool {
        is_subvolume(&self.layout.layer(id))
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

    fn seal(&self, build: Build, record: RecordHook<'_>) -> Result<u64, BackendError> {
        // Order: sync, measure, record (the caller's meta), publish by the read-only snapshot.
        let st = self.layout.staging(&build.id);
        sync_dir(&st)?;
        let size = disk_usage(&st);
        record(size).map_err(|source| BackendError::Record {
            id: build.id,
            source,
        })?;
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

    fn root_ready(&self, name: &str, _chain: &[LayerId]) -> Result<bool, BackendError> {
        Ok(is_subvolume(&self.root_path(name)))
    }

    fn create_root(&self, name: &str, chain: &[LayerId]) -> Result<RootMade, BackendError> {
        self.drop_root(name)?;
        crate::failpoint::hit("root-dropped");
        let dir = self.layout.root_dir(name);
        fs::create_dir_all(&dir).map_err(io_err("create", &dir))?;
        let top = chain.last().expect("a root has at least a base");
        let path = self.root_path(name);
        Self::snapshot(&self.layout.layer(top), &path, false)?;
        Ok(RootMade { path, reap: false })
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
        Ok(Scratch::new(RootSource::Dir, dir.clone(), dir))
    }

    fn drop_scratch(&self, scratch: Scratch) -> Result<(), BackendError> {
        Self::delete_subvolume(scratch.dir())
    }
}
