//! Volumes: creating, formatting, mounting and removing thin volumes, and the marker that says a
//! layer's volume is sealed.
#![forbid(unsafe_code)]

use std::fs;
use std::path::Path;

use envc_plan::LayerId;

use super::super::{BackendError, io_err};
use super::command::{lvm_cmd, run};
use super::naming::select_names;
use super::{FsKind, Lvm};
use crate::sys;
use crate::tools::Tool;

impl Lvm {
    /// Mounts the volume `lv` at `at` with `flags` (a working root's: [`HOST_ROOT_FLAGS`]; a
    /// build's or a throwaway root's: none, as the sandbox bind-mounts those, flags included).
    ///
    /// [`HOST_ROOT_FLAGS`]: super::super::HOST_ROOT_FLAGS
    pub(super) fn mount(
        &self,
        lv: &str,
        at: &Path,
        flags: nix::mount::MsFlags,
    ) -> Result<(), BackendError> {
        let dev = self.dev(lv);
        let (fstype, data) = match self.cfg.fs {
            FsKind::Ext4 => ("ext4", None),
            FsKind::Xfs => ("xfs", Some("nouuid")),
        };
        sys::kernel()
            .mount(Some(&dev), at, Some(fstype), flags, data)
            .map_err(|source| BackendError::Mount {
                device: dev.clone(),
                target: at.to_owned(),
                fstype,
                source,
            })
    }

    /// Makes the base volume's filesystem.
    pub(super) fn mkfs(&self, lv: &str) -> Result<(), BackendError> {
        let dev = self.dev(lv);
        match self.cfg.fs {
            FsKind::Ext4 => Tool::new("mkfs.ext4")?
                .args(["-q", "-m", "0", "-L", "envc"])
                .arg(&dev)
                .output()?,
            FsKind::Xfs => Tool::new("mkfs.xfs")?
                .args(["-q", "-L", "envc"])
                .arg(&dev)
                .output()?,
        };
        Ok(())
    }

    /// Creates `lv` as a writable snapshot of `origin` (active), or as a new thin volume.
    pub(super) fn create(
        &self,
        lv: &str,
        origin: Option<&str>,
        tags: &[String],
    ) -> Result<(), BackendError> {
        let mut t = lvm_cmd("lvcreate")?.args(["-q", "-n", lv]);
        for tag in tags {
            t = t.arg("--addtag").arg(tag);
        }
        t = match origin {
            Some(o) => t.args(["-s", "-kn"]).arg(self.target(o)),
            None => t
                .arg("-V")
                .arg(format!("{}m", self.cfg.volume_size.div_ceil(1 << 20)))
                .arg("-T")
                .arg(self.target(&self.cfg.pool)),
        };
        run(t)?;
        Ok(())
    }

    pub(super) fn remove_lvs(&self, names: &[String]) -> Result<(), BackendError> {
        if names.is_empty() {
            return Ok(());
        }
        // Selecting by name removes what exists and is not an error for what does not.
        run(lvm_cmd("lvremove")?
            .args(["-q", "-y", "-S"])
            .arg(select_names(names))
            .arg(&self.cfg.vg))?;
        Ok(())
    }

    pub(super) fn write_marker(&self, id: &LayerId, lv: &str) -> Result<(), BackendError> {
        let dir = self.layout.layer(id);
        let tmp = self.layout.tmp("marker");
        fs::create_dir_all(&tmp).map_err(io_err("create", &tmp))?;
        fs::write(tmp.join("lv"), lv).map_err(io_err("write", &tmp))?;
        fs::rename(&tmp, &dir).map_err(io_err("publish layer", &dir))
    }
}
