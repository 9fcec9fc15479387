//! The overlayfs backend: a layer is a directory holding its diff. Building a layer mounts an
//! overlay of its ancestors with a fresh upper directory (inside the build's own mount namespace);
//! sealing renames the upper to `layers/ID`. A working root is an overlay of the chain mounted at a
//! stable path, nosuid and nodev. Mounts use `fsconfig(lowerdir+)`, so chain depth is not limited
//! by the one-page mount option string.
#![forbid(unsafe_code)]

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use envc_plan::LayerId;

use super::{
    Backend, BackendConfig, BackendError, BackendKind, Build, Labels, Layout, RecordHook, RootMade,
    Scratch, delete_in_background, disk_usage, io_err, is_mounted, remove_dir_if_exists,
    restrict_root_mount, sync_dir, unmount,
};
use crate::sandbox::RootSource;
use crate::sys;

pub(super) struct Overlay {
    layout: Layout,
}

impl Overlay {
    pub(super) fn new(root: &Path) -> Overlay {
        Overlay {
            layout: Layout::new(root),
        }
    }

    fn lowers(&self, chain: &[LayerId]) -> Vec<PathBuf> {
        chain.iter().rev().map(|id| self.layout.layer(id)).collect()
    }

    /// Mounts the working root `name` over `chain`, with its upper directory as it is (created
    /// if missing), nosuid and nodev ([`super::HOST_ROOT_FLAGS`]). Returns the mount point.
    fn mount_root(&self, name: &str, chain: &[LayerId]) -> Result<PathBuf, BackendError> {
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
        restrict_root_mount(&mnt)?;
        Ok(mnt)
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

    fn config(&self) -> BackendConfig {
        BackendConfig::Overlay
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

    fn seal(&self, build: Build, record: RecordHook<'_>) -> Result<u64, BackendError> {
        // Order: sync the upper, measure, record (the caller's meta), publish by one rename.
        let st = self.layout.staging(&build.id);
        let upper = st.join("upper");
        sync_dir(&upper)?;
        let size = disk_usage(&upper);
        record(size).map_err(|source| BackendError::Record {
            id: build.id,
            source,
        })?;
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

    fn root_ready(&self, name: &str, chain: &[LayerId]) -> Result<bool, BackendError> {
        let dir = self.layout.root_dir(name);
        if is_mounted(&dir.join("root")) {
            // Mounted by an older envc perhaps, without the flags.
            restrict_root_mount(&dir.join("root"))?;
            return Ok(true);
        }
        // Not mounted (after a reboot): the root's changes are still in its upper directory;
        // mount it again over the same chain. If that fails, the error stops the apply: the root
        // is never replaced silently.
        if !dir.join("upper").is_dir() {
            return Ok(false);
        }
        self.mount_root(name, chain)?;
        Ok(true)
    }

    fn create_root(&self, name: &str, chain: &[LayerId]) -> Result<RootMade, BackendError> {
        self.drop_root(name)?;
        crate::failpoint::hit("root-dropped");
        let mnt = self.mount_root(name, chain)?;
        Ok(RootMade {
            path: mnt,
            reap: false,
        })
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
        Ok(Scratch::new(
            RootSource::Overlay {
                lowers: self.lowers(chain),
                upper,
                work,
            },
            mnt,
            dir,
        ))
    }

    fn drop_scratch(&self, scratch: Scratch) -> Result<(), BackendError> {
        remove_dir_if_exists(scratch.dir())
    }

    /// A base's directory is its whole tree (read where it is; the view's own directory stays
    /// empty); a longer chain is mounted read-only, its layers alone, at `tmp/run-*/mnt`: a
    /// throwaway root's fresh upper directory would lend the root directory its own owner, mode
    /// and times.
    fn tree_view(&self, chain: &[LayerId]) -> Result<Scratch, BackendError> {
        let dir = self.layout.tmp("run");
        let lowers = self.lowers(chain);
        if let [base] = lowers.as_slice() {
            Self::mkdirs(&[&dir])?;
            return Ok(Scratch::new(RootSource::Dir, base.clone(), dir));
        }
        let mnt = dir.join("mnt");
        Self::mkdirs(&[&mnt])?;
        let view = Scratch::new(RootSource::Dir, mnt.clone(), dir);
        if let Err(e) = super::mount_readonly(&lowers, &mnt) {
            let _ = self.drop_scratch(view);
            return Err(e);
        }
        Ok(view)
    }
}
