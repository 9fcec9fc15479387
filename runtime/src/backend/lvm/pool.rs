//! The thin pool: creating it (and the VG on a loop file) for `envc store init`, and reading its
//! usage from the device-mapper before every volume is created.
#![forbid(unsafe_code)]

use std::fs::File;

use super::super::{BackendError, BackendKind, PoolUsage, io_err};
use super::command::{lvm_cmd, run};
use super::naming::dm_name;
use super::report::{lvs, parse_pool_status, size_of};
use super::{Lvm, LvmConfig, LvmInit};
use crate::tools::Tool;
use crate::warning::Warning;

/// The thin pool envc creates when none is named.
pub const DEFAULT_POOL: &str = "envc";
/// Pool usage (data or metadata, percent) above which envc warns.
pub const WARN_PERCENT: f64 = 75.0;
/// Pool usage (data or metadata, percent) above which envc refuses to create volumes.
pub const REFUSE_PERCENT: f64 = 90.0;

/// The LVM backend cannot use `object` (a VG, or VG/POOL).
pub(super) fn unsupported(object: &str, reason: String) -> BackendError {
    BackendError::Unsupported {
        backend: BackendKind::Lvm,
        path: object.into(),
        reason,
    }
}

/// Creates what `init` names and does not exist (loop file and VG, thin pool); returns the
/// store setting.
pub fn prepare(init: &LvmInit) -> Result<LvmConfig, BackendError> {
    let vg_exists = run(lvm_cmd("vgs")?
        .args(["--noheadings", "-o", "vg_name"])
        .arg(&init.vg))
    .is_ok();
    if !vg_exists {
        let Some(file) = &init.loop_file else {
            return Err(unsupported(
                &init.vg,
                format!(
                    "the volume group does not exist: create it (vgcreate {} DEVICE), or give --loop FILE to make one on a loop file",
                    init.vg
                ),
            ));
        };
        // The pool's size plus room for its metadata and LVM's spare metadata volume.
        let pool = init.size.unwrap_or(20 << 30);
        let len = pool.saturating_add(pool / 25).saturating_add(128 << 20);
        let f = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(file)
            .map_err(io_err("create loop file", file))?;
        if f.metadata()
            .map_err(io_err("inspect loop file", file))?
            .len()
            < len
        {
            f.set_len(len).map_err(io_err("size loop file", file))?;
        }
        drop(f);
        let dev = Tool::new("losetup")?
            .uninterruptible()
            .args(["--find", "--show"])
            .arg(file)
            .output()?;
        let dev = String::from_utf8_lossy(&dev).trim().to_owned();
        run(lvm_cmd("pvcreate")?.arg("-q").arg(&dev))?;
        run(lvm_cmd("vgcreate")?.arg("-q").arg(&init.vg).arg(&dev))?;
    }
    let path = format!("{}/{}", init.vg, init.pool);
    let existing = lvs(
        &init.vg,
        "lv_name,lv_attr,lv_size",
        Some(&format!("lv_name={}", init.pool)),
    )?;
    let pool_size = match existing.first() {
        Some(row) if row.lv_attr.starts_with('t') => size_of(row, &path)?,
        Some(row) => {
            return Err(unsupported(
                &path,
                format!(
                    "it exists and is not a thin pool (attributes {})",
                    row.lv_attr
                ),
            ));
        }
        None => {
            let mut t = lvm_cmd("lvcreate")?.args(["-q", "--type", "thin-pool", "-n", &init.pool]);
            t = match init.size {
                Some(s) => t.arg("-L").arg(format!("{}m", s.div_ceil(1 << 20))),
                None => t.args(["-l", "90%FREE"]),
            };
            run(t.arg(&init.vg))?;
            // A full pool fails writes at once instead of queueing them for a minute.
            run(lvm_cmd("lvchange")?
                .args(["-q", "--errorwhenfull", "y"])
                .arg(&path))?;
            match lvs(&path, "lv_size", None)?.first() {
                Some(row) => size_of(row, &path)?,
                None => {
                    return Err(BackendError::Report {
                        report: "lvs",
                        object: path,
                        reason: "the pool just created is not listed".into(),
                    });
                }
            }
        }
    };
    let volume_size = init.volume_size.unwrap_or(pool_size).max(64 << 20);
    Ok(LvmConfig {
        vg: init.vg.clone(),
        pool: init.pool.clone(),
        fs: init.fs,
        volume_size,
    })
}

impl Lvm {
    /// The pool's usage from the device-mapper (no LVM command); `None` if the pool is not active.
    fn dm_usage(&self) -> Result<Option<PoolUsage>, BackendError> {
        // Every active thin-pool target, one per line: `NAME: 0 LEN thin-pool ...`. The pool is
        // `VG-POOL-tpool` while thin volumes use it, `VG-POOL` alone. (Those are not always in
        // /dev/mapper: without udev, LVM makes nodes only for visible volumes.)
        let out = Tool::new("dmsetup")?
            .args(["status", "--target", "thin-pool"])
            .output()?;
        let text = String::from_utf8_lossy(&out);
        let dm = dm_name(&self.cfg.vg, &self.cfg.pool);
        for name in [format!("{dm}-tpool"), dm] {
            let want = format!("{name}:");
            if let Some(u) = text
                .lines()
                .find_map(|l| l.strip_prefix(want.as_str()).and_then(parse_pool_status))
            {
                return Ok(Some(u));
            }
        }
        Ok(None)
    }

    /// The pool's usage. If the pool is not active (after a reboot without udev, say), it is
    /// activated first: a volume is never created in a pool whose usage is unknown.
    pub fn pool_usage(&self) -> Result<PoolUsage, BackendError> {
        if let Some(u) = self.dm_usage()? {
            return Ok(u);
        }
        let pool = self.target(&self.cfg.pool);
        run(lvm_cmd("lvchange")?.args(["-q", "-a", "y"]).arg(&pool))?;
        self.dm_usage()?.ok_or_else(|| {
            unsupported(
                &pool,
                "its usage cannot be read: no thin-pool target in `dmsetup status`".into(),
            )
        })
    }

    /// Checks the pool before a volume is created for `what`: warns above 75 %, refuses above 90 %.
    pub(super) fn check_pool(&self, what: &str) -> Result<(), BackendError> {
        let u = self.pool_usage()?;
        let pool = self.target(&self.cfg.pool);
        let worst = u.data.max(u.metadata);
        if worst > REFUSE_PERCENT || u.mode != "rw" {
            return Err(BackendError::PoolFull {
                op: what.to_owned(),
                pool,
                data: u.data,
                metadata: u.metadata,
                mode: u.mode,
            });
        }
        if worst > WARN_PERCENT {
            self.warn(Warning::PoolFilling {
                pool,
                data: u.data,
                metadata: u.metadata,
                refuse_at: REFUSE_PERCENT,
            });
        }
        Ok(())
    }
}
