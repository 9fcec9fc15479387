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
//! - A working root is a writable snapshot of the last layer, mounted at `roots/NAME/root`.
//!   Resetting it takes one LVM command: a new snapshot under the next generation's name; the old
//!   one is removed in the background, under the root's lock.
//! - Before every volume is created, the pool's data and metadata usage are read from the
//!   device-mapper (`dmsetup status`, not an LVM command): above 75 % envc warns, above 90 % it
//!   refuses, because a full thin pool can corrupt the filesystems in it.
//! - Without a running udev (containers, minimal hosts) every LVM command gets
//!   `activation{udev_sync=0 udev_rules=0}`, else LVM fails with "device not cleared".
#![forbid(unsafe_code)]

use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

use envc_plan::LayerId;
use serde::{Deserialize, Serialize};

use super::{
    Backend, BackendError, BackendKind, Build, Labels, Layout, Scratch, io_err, is_mounted,
    remove_dir_if_exists, sync_dir, unmount,
};
use crate::sandbox::RootSource;
use crate::store::{self, Meta, RootRecord, Store, StoreError};
use crate::sys;
use crate::tools::{Tool, ToolError};

/// The thin pool envc creates when none is named.
pub const DEFAULT_POOL: &str = "envc";
/// Pool usage (data or metadata, percent) above which envc warns.
pub const WARN_PERCENT: f64 = 75.0;
/// Pool usage (data or metadata, percent) above which envc refuses to create volumes.
pub const REFUSE_PERCENT: f64 = 90.0;
/// The hidden first argument under which envc removes a root's old snapshots in the background.
pub const REAP_ARG: &str = "__envc-lvm-reap";
/// Set to a file path, every LVM command envc runs is appended to it (for tests and benchmarks).
pub const LOG_ENV: &str = "ENVC_LVM_LOG";

const NO_UDEV: &str = "activation{udev_sync=0 udev_rules=0}";
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

/// A thin pool's usage, from the device-mapper.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolUsage {
    /// Data space used, percent.
    pub data: f64,
    /// Metadata space used, percent.
    pub metadata: f64,
    /// `rw`, or the mode a full or failed pool fell into (`out_of_data_space`, `ro`, `Fail`).
    pub mode: String,
}

/// The LVM thin backend.
pub struct Lvm {
    layout: Layout,
    cfg: LvmConfig,
}

/// Whether udev is running (as libudev decides it): then LVM waits for it to make device nodes.
fn udev_running() -> bool {
    Path::new("/run/udev/control").exists()
}

/// An LVM command (`lvm SUB ...`), told not to wait for udev when there is none.
fn lvm_cmd(sub: &str) -> Result<Tool, ToolError> {
    let mut t = Tool::new("lvm")?
        .arg(sub)
        .env("LVM_SUPPRESS_FD_WARNINGS", "1");
    if !udev_running() {
        t = t.arg("--config").arg(NO_UDEV);
    }
    Ok(t)
}

/// Runs an LVM command, recording it in `$ENVC_LVM_LOG` when set.
fn run(t: Tool) -> Result<Vec<u8>, BackendError> {
    if let Some(log) = std::env::var_os(LOG_ENV) {
        if let Ok(mut f) = File::options().create(true).append(true).open(log) {
            let _ = writeln!(f, "{t:?}");
        }
    }
    Ok(t.output()?)
}

/// The device-mapper name of VG/LV (hyphens doubled).
fn dm_name(vg: &str, lv: &str) -> String {
    format!("{}-{}", vg.replace('-', "--"), lv.replace('-', "--"))
}

/// An `-S` selection of LVs by name.
fn select_names(names: &[String]) -> String {
    names
        .iter()
        .map(|n| format!("lv_name={n}"))
        .collect::<Vec<_>>()
        .join(" || ")
}

/// Parses `dmsetup status` of a thin-pool target:
/// `0 LEN thin-pool TRANSACTION USED_META/TOTAL_META USED_DATA/TOTAL_DATA HELD MODE ...`.
pub fn parse_pool_status(text: &str) -> Option<PoolUsage> {
    let f: Vec<&str> = text.split_whitespace().collect();
    let i = f.iter().position(|w| *w == "thin-pool")?;
    if matches!(f.get(i + 1), Some(&"Fail") | Some(&"Error")) {
        return Some(PoolUsage {
            data: 100.0,
            metadata: 100.0,
            mode: "Fail".into(),
        });
    }
    let ratio = |s: &str| -> Option<f64> {
        let (a, b) = s.split_once('/')?;
        let (a, b): (f64, f64) = (a.parse().ok()?, b.parse().ok()?);
        Some(if b > 0.0 { a * 100.0 / b } else { 0.0 })
    };
    Some(PoolUsage {
        metadata: ratio(f.get(i + 2)?)?,
        data: ratio(f.get(i + 3)?)?,
        mode: f.get(i + 5).map_or("rw", |m| m).to_owned(),
    })
}

/// One row of an `lvs --reportformat json` report.
#[derive(Debug, Clone, Default, Deserialize)]
struct LvRow {
    #[serde(default)]
    lv_name: String,
    #[serde(default)]
    lv_tags: String,
    #[serde(default)]
    lv_attr: String,
    #[serde(default)]
    lv_size: String,
}

impl LvRow {
    fn tags(&self) -> impl Iterator<Item = &str> {
        self.lv_tags.split(',').filter(|t| !t.is_empty())
    }
    fn tag(&self, key: &str) -> Option<&str> {
        self.tags()
            .find_map(|t| t.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
    }
    fn has(&self, tag: &str) -> bool {
        self.tags().any(|t| t == tag)
    }
}

/// Runs `lvs` with `fields` on `target` (a VG, or VG/LV) and returns the rows.
fn lvs(target: &str, fields: &str, select: Option<&str>) -> Result<Vec<LvRow>, BackendError> {
    let mut t = lvm_cmd("lvs")?.args([
        "--reportformat",
        "json",
        "--units",
        "b",
        "--nosuffix",
        "-o",
        fields,
    ]);
    if let Some(s) = select {
        t = t.arg("-S").arg(s);
    }
    let out = run(t.arg(target))?;
    #[derive(Deserialize)]
    struct Report {
        report: Vec<Section>,
    }
    #[derive(Deserialize)]
    struct Section {
        #[serde(default)]
        lv: Vec<LvRow>,
    }
    let r: Report = serde_json::from_slice(&out).map_err(|e| BackendError::Io {
        op: "read the lvs report of",
        path: PathBuf::from(target),
        source: io::Error::other(e),
    })?;
    Ok(r.report.into_iter().flat_map(|s| s.lv).collect())
}

/// The LVM backend cannot use `object` (a VG, or VG/POOL).
fn unsupported(object: &str, reason: String) -> BackendError {
    BackendError::Unsupported {
        backend: BackendKind::Lvm,
        path: PathBuf::from(object),
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
        Some(row) if row.lv_attr.starts_with('t') => row.lv_size.parse::<u64>().unwrap_or(0),
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
            lvs(&path, "lv_size", None)?
                .first()
                .and_then(|r| r.lv_size.parse().ok())
                .unwrap_or(0)
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
    /// The backend of the store at `root`.
    pub fn new(root: &Path, cfg: LvmConfig) -> Lvm {
        Lvm {
            layout: Layout::new(root),
            cfg,
        }
    }

    /// The store setting.
    pub fn config(&self) -> &LvmConfig {
        &self.cfg
    }

    fn target(&self, lv: &str) -> String {
        format!("{}/{}", self.cfg.vg, lv)
    }

    fn dev(&self, lv: &str) -> PathBuf {
        Path::new("/dev/mapper").join(dm_name(&self.cfg.vg, lv))
    }

    /// A sealed layer's (or layer build's) volume: the pool's name and 20 hex digits of the id.
    pub fn layer_lv(&self, id: &LayerId) -> String {
        format!("{}-{}", self.cfg.pool, id.short(20))
    }

    /// A working root's volume, generation `gen`. Environment names are at most 64 characters;
    /// long ones are shortened with a hash (`+` cannot occur in an environment name).
    fn root_lv(&self, name: &str, generation: u64) -> String {
        // `_` becomes `+` (which no environment name has): LVM reserves names containing `_tmeta`,
        // `_rimage` and the like.
        let name_enc = name.replace('_', "+");
        let short = if name.len() <= 24 {
            name_enc
        } else {
            let head: String = name_enc.chars().take(16).collect();
            format!("{head}+{:08x}", fnv(name) as u32)
        };
        format!("{}-r.{short}.{generation}", self.cfg.pool)
    }

    fn scratch_lv(&self, dir: &Path) -> String {
        let n = dir
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
        format!("{}-s.{}", self.cfg.pool, n.trim_start_matches("run-"))
    }

    fn remove_lvs(&self, names: &[String]) -> Result<(), BackendError> {
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
    fn check_pool(&self, what: &str) -> Result<(), BackendError> {
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
            eprintln!(
                "envc: warning: thin pool {pool} is {:.1}% full (data) and {:.1}% (metadata); envc refuses to create volumes above {REFUSE_PERCENT:.0}%: run `envc gc`, or grow the pool with lvextend",
                u.data, u.metadata
            );
        }
        Ok(())
    }

    fn mount(&self, lv: &str, at: &Path) -> Result<(), BackendError> {
        let dev = self.dev(lv);
        let (fstype, data) = match self.cfg.fs {
            FsKind::Ext4 => ("ext4", None),
            FsKind::Xfs => ("xfs", Some("nouuid")),
        };
        sys::kernel()
            .mount(
                Some(&dev),
                at,
                Some(fstype),
                nix::mount::MsFlags::empty(),
                data,
            )
            .map_err(|e| BackendError::Io {
                op: "mount volume",
                path: dev.clone(),
                source: io::Error::other(format!("at {}: {e}", at.display())),
            })
    }

    /// Makes the base volume's filesystem.
    fn mkfs(&self, lv: &str) -> Result<(), BackendError> {
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
    fn create(&self, lv: &str, origin: Option<&str>, tags: &[String]) -> Result<(), BackendError> {
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

    /// A working root's files: `lv` (its current volume), `lv.next` (a volume being created),
    /// `doomed` (old volumes to remove).
    fn root_file(&self, name: &str, file: &str) -> PathBuf {
        self.layout.root_dir(name).join(file)
    }

    /// The volume named in a root's `lv` or `lv.next`.
    fn root_volume(&self, name: &str, file: &str) -> Option<String> {
        fs::read_to_string(self.root_file(name, file))
            .ok()
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
    }

    fn current_root_lv(&self, name: &str) -> Option<String> {
        self.root_volume(name, "lv")
    }

    fn doomed(&self, name: &str) -> Vec<String> {
        fs::read_to_string(self.root_file(name, "doomed"))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .filter(|l| !l.is_empty())
            .collect()
    }

    /// Records volumes of a root for removal (by the reaper, `rm` or `gc`).
    fn doom(&self, name: &str, lvs: &[&str]) -> Result<(), BackendError> {
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
    pub fn reap(&self, name: &str) -> Result<usize, BackendError> {
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

    /// Starts `envc __envc-lvm-reap STORE NAME` in the background.
    fn spawn_reaper(&self, name: &str) {
        let Ok(exe) = std::env::current_exe() else {
            return;
        };
        let store = self.layout.root.clone();
        let _ = std::process::Command::new(exe)
            .arg(REAP_ARG)
            .arg(store)
            .arg(name)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .process_group(0)
            .spawn();
    }

    fn write_marker(&self, id: &LayerId, lv: &str) -> Result<(), BackendError> {
        let dir = self.layout.layer(id);
        let tmp = self.layout.tmp("marker");
        fs::create_dir_all(&tmp).map_err(io_err("create", &tmp))?;
        fs::write(tmp.join("lv"), lv).map_err(io_err("write", &tmp))?;
        fs::rename(&tmp, &dir).map_err(io_err("publish layer", &dir))
    }
}

/// The generation of a working root's volume (`POOL-r.ENV.N`); 0 if it has none.
fn generation_of(lv: &str) -> u64 {
    lv.rsplit('.')
        .next()
        .and_then(|g| g.parse().ok())
        .unwrap_or(0)
}

/// FNV-1a, for short stable names.
fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
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

    fn lvm(&self) -> Option<&Lvm> {
        Some(self)
    }

    fn status(&self) -> Option<String> {
        let pool = self.target(&self.cfg.pool);
        Some(match self.pool_usage() {
            Ok(u) => format!(
                "thin pool {pool}: data {:.1}%, metadata {:.1}%",
                u.data, u.metadata
            ),
            Err(e) => format!("thin pool {pool}: usage unknown ({e})"),
        })
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
        .and_then(|()| self.mount(&lv, &st));
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

    fn seal(&self, build: Build) -> Result<u64, BackendError> {
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

    fn root_ready(&self, name: &str) -> Result<bool, BackendError> {
        let mnt = self.root_path(name);
        if is_mounted(&mnt) {
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
        self.mount(&lv, &mnt)?;
        Ok(true)
    }

    fn create_root(&self, name: &str, chain: &[LayerId]) -> Result<PathBuf, BackendError> {
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
        self.mount(&lv, &mnt)?;
        if !doomed.is_empty() {
            self.spawn_reaper(name);
        }
        Ok(mnt)
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
            .and_then(|()| self.mount(&lv, &dir));
        let scratch = Scratch {
            source: RootSource::Dir,
            mountpoint: dir.clone(),
            dir,
        };
        if let Err(e) = made {
            let _ = self.drop_scratch(scratch);
            return Err(e);
        }
        Ok(scratch)
    }

    fn drop_scratch(&self, scratch: Scratch) -> Result<(), BackendError> {
        unmount(&scratch.dir)?;
        self.remove_lvs(&[self.scratch_lv(&scratch.dir)])?;
        remove_dir_if_exists(&scratch.dir)
    }

    fn sweep(&self) -> usize {
        let mut n = super::sweep_tmp(&self.layout.root);
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
}

/// What `envc store recover` found and did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Recovered {
    /// Sealed layers whose record was missing and was rebuilt from LV tags.
    pub adopted: Vec<LayerId>,
    /// Layers recorded in the store whose volume no longer exists: their records were removed.
    pub forgotten: Vec<LayerId>,
    /// Volumes of interrupted builds that were removed.
    pub removed_builds: usize,
    /// Working roots whose record was rebuilt.
    pub roots: Vec<String>,
}

/// Rebuilds the store's records from LVM itself: every sealed layer volume (tags `envc.id`,
/// `envc.parent`, `envc.name`, `envc.env`, `envc.sealed`) gets its record; records without a
/// volume are dropped; volumes of interrupted builds are removed; working roots get their
/// records back. One `lvs`, plus one `lvremove` if there are builds to remove.
pub fn recover(store: &Store) -> Result<Recovered, StoreError> {
    let backend = store
        .backend()
        .lvm()
        .ok_or_else(|| StoreError::Incompatible {
            path: store.path().to_owned(),
            reason: "is not an LVM store".into(),
        })?;
    let cfg = backend.config();
    let rows = lvs(
        &cfg.vg,
        "lv_name,lv_tags,lv_attr",
        Some(&format!("pool_lv={}", cfg.pool)),
    )?;
    let mut report = Recovered::default();
    let mut parents = std::collections::BTreeMap::new();
    let mut sealed_ids = std::collections::BTreeSet::new();
    let mut stale = Vec::new();
    for row in rows.iter().filter(|r| r.has(TAG)) {
        let Some(id) = row.tag("envc.id").and_then(|i| i.parse::<LayerId>().ok()) else {
            continue;
        };
        let parent = row
            .tag("envc.parent")
            .and_then(|p| p.parse::<LayerId>().ok());
        parents.insert(id, parent);
        if !row.has(SEALED_TAG) {
            // A build nobody is running any more.
            if let Some(_lock) = store.try_lock_layer(&id)? {
                let st = backend.layout.staging(&id);
                unmount(&st)?;
                remove_dir_if_exists(&st)?;
                stale.push(row.lv_name.clone());
            }
            continue;
        }
        sealed_ids.insert(id);
        if !store.is_sealed(&id) {
            backend.write_marker(&id, &row.lv_name)?;
            report.adopted.push(id);
        }
        if store.read_meta(&id).is_none() {
            let now = store::now();
            store.write_meta(&Meta {
                id,
                parent,
                key: serde_json::Value::Null,
                name: row.tag("envc.name").unwrap_or("?").to_owned(),
                env: row.tag("envc.env").unwrap_or("?").to_owned(),
                spec: None,
                size: 0,
                created: now,
                last_used: now,
                build_secs: 0.0,
            })?;
        }
    }
    report.removed_builds = stale.len();
    backend.remove_lvs(&stale)?;
    for id in backend.sealed()? {
        if !sealed_ids.contains(&id) {
            if let Some(_lock) = store.try_lock_layer(&id)? {
                remove_dir_if_exists(&backend.layout.layer(&id))?;
                let _ = fs::remove_file(store.meta_path(&id));
                report.forgotten.push(id);
            }
        }
    }
    // Newest generation first: it is the root the user worked in last.
    let mut root_rows: Vec<&LvRow> = rows
        .iter()
        .filter(|r| r.has("envc.root") && r.tag("envc.env").is_some_and(store::valid_name))
        .collect();
    root_rows.sort_by_key(|r| std::cmp::Reverse(generation_of(&r.lv_name)));
    for row in root_rows {
        let (Some(name), Some(top)) = (
            row.tag("envc.env"),
            row.tag("envc.top").and_then(|t| t.parse::<LayerId>().ok()),
        ) else {
            continue;
        };
        let _lock = store.lock_root(name)?;
        match backend.current_root_lv(name) {
            Some(current) if current == row.lv_name => {}
            Some(_) => {
                // An older generation: removed by the next reap.
                backend.doom(name, &[&row.lv_name])?;
            }
            None => {
                let mut chain = vec![top];
                while let Some(Some(p)) = parents.get(chain.last().expect("non-empty")) {
                    if chain.contains(p) || chain.len() > parents.len() {
                        break; // tags edited into a cycle
                    }
                    chain.push(*p);
                }
                chain.reverse();
                let lv_file = backend.root_file(name, "lv");
                let dir = backend.layout.root_dir(name);
                fs::create_dir_all(&dir).map_err(store::io_err("create", &dir))?;
                fs::write(&lv_file, &row.lv_name).map_err(store::io_err("write", &lv_file))?;
                if store.read_root(name).is_none() {
                    store.write_root(&RootRecord {
                        name: name.to_owned(),
                        spec: None,
                        chain,
                        created: store::now(),
                    })?;
                }
                report.roots.push(name.to_owned());
            }
        }
    }
    Ok(report)
}

/// `envc __envc-lvm-reap STORE NAME`: removes a working root's old snapshots once nobody holds
/// the root's lock.
pub fn reap_main(args: &[std::ffi::OsString]) -> i32 {
    let [store, name] = args else { return 2 };
    let Ok(store) = Store::open(Path::new(store), None) else {
        return 1;
    };
    let name = name.to_string_lossy();
    if !store::valid_name(&name) {
        return 2;
    }
    let Ok(_lock) = store.lock_root(&name) else {
        return 1;
    };
    match store.backend().lvm().map(|b| b.reap(&name)) {
        Some(Ok(_)) => 0,
        _ => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_status_is_parsed() {
        let u = parse_pool_status("0 524288 thin-pool 1 114/1024 265/4096 - rw discard_passdown error_if_no_space - 256\n").unwrap();
        assert!(
            (u.metadata - 11.13).abs() < 0.01 && (u.data - 6.47).abs() < 0.01,
            "{u:?}"
        );
        assert_eq!(u.mode, "rw");
        let full = parse_pool_status(
            "0 524288 thin-pool 7 200/1024 4096/4096 - out_of_data_space discard_passdown",
        )
        .unwrap();
        assert_eq!(
            (full.data, full.mode.as_str()),
            (100.0, "out_of_data_space")
        );
        assert_eq!(
            parse_pool_status("0 524288 thin-pool Fail").unwrap().mode,
            "Fail"
        );
        assert_eq!(parse_pool_status("0 1048576 thin 33920 1048575"), None);
    }

    #[test]
    fn names_are_short_and_distinct() {
        let l = Lvm::new(
            Path::new("/s"),
            LvmConfig {
                vg: "vg".into(),
                pool: "envc".into(),
                fs: FsKind::Ext4,
                volume_size: 1 << 30,
            },
        );
        assert_eq!(dm_name("my-vg", "envc-r.a.1"), "my--vg-envc--r.a.1");
        assert_eq!(l.root_lv("rust-ci", 3), "envc-r.rust-ci.3");
        // LVM reserves names containing `_tmeta`, `_rimage`, ...: `_` is written `+`.
        assert_eq!(l.root_lv("ci_tmeta", 1), "envc-r.ci+tmeta.1");
        assert!(
            !l.root_lv(&format!("{}_rimage", "x".repeat(30)), 1)
                .contains('_')
        );
        let long = "a".repeat(64);
        let other = format!("{}b", "a".repeat(63));
        assert_ne!(l.root_lv(&long, 1), l.root_lv(&other, 1));
        assert!(l.root_lv(&long, 1).len() < 48);
        assert_eq!(
            l.scratch_lv(Path::new("/s/tmp/run-12-34-0")),
            "envc-s.12-34-0"
        );
        assert_eq!(
            select_names(&["a".into(), "b".into()]),
            "lv_name=a || lv_name=b"
        );
    }
}
