//! Working roots' volumes: one generation per reset, recorded in the root's directory (`lv`, the
//! current volume; `lv.next`, one being created; `doomed`, old ones to remove), and the reaping of
//! old generations.
#![forbid(unsafe_code)]

use std::fs::{self, File};
use std::io::Write;
use std::path::PathBuf;

use super::super::{BackendError, io_err};
use super::Lvm;

impl Lvm {
    /// A working root's files: `lv` (its current volume), `lv.next` (a volume being created),
    /// `doomed` (old volumes to remove).
    pub(super) fn root_file(&self, name: &str, file: &str) -> PathBuf {
        self.layout.root_dir(name).join(file)
    }

    /// The volume named in a root's `lv` or `lv.next`.
    pub(super) fn root_volume(&self, name: &str, file: &str) -> Option<String> {
        fs::read_to_string(self.root_file(name, file))
            .ok()
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
    }

    pub(super) fn current_root_lv(&self, name: &str) -> Option<String> {
        self.root_volume(name, "lv")
    }

    pub(super) fn doomed(&self, name: &str) -> Vec<String> {
        fs::read_to_string(self.root_file(name, "doomed"))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .filter(|l| !l.is_empty())
            .collect()
    }

    /// Records volumes of a root for removal (by the reaper, `rm` or `gc`).
    pub(super) fn doom(&self, name: &str, lvs: &[&str]) -> Result<(), BackendError> {
        let path = self.root_file(name, "doomed");
        let mut f = File::options()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io_err("write", &path))?;
        for lv in lvs {
            writeln!(f, "{lv}").map_err(io_err("write", &path))?;
        }
        Ok(())
    }

    /// Removes a root's old snapshots (not the current one). The caller holds the root's lock.
    pub(super) fn reap(&self, name: &str) -> Result<usize, BackendError> {
        let current = self.current_root_lv(name);
        let doomed: Vec<String> = self
            .doomed(name)
            .into_iter()
            .filter(|d| Some(d) != current.as_ref())
            .collect();
        self.remove_lvs(&doomed)?;
        let _ = fs::remove_file(self.root_file(name, "doomed"));
        Ok(doomed.len())
    }
}
