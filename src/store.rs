//! Every call the CLI makes into the runtime's store-setup API: opening a store (or reading one
//! without changing it), making an LVM store, recovering records, reading a store's backend
//! setting and pool usage.

use std::path::Path;

use envc_runtime::backend::lvm::{FsKind, LvmInit};
use envc_runtime::backend::{BackendConfig, BackendInit, Capacity};
use envc_runtime::maintain::{self, Recovered};
use envc_runtime::store::StoreError;
use envc_runtime::{BackendKind, Runtime, Store};

use crate::cli::{Backend, Fs, StoreInit};
use crate::error::CliError;

/// Opens the runtime for the store and backend the command line names.
pub fn open(store: &Path, backend: Option<Backend>) -> Result<Runtime, CliError> {
    let store = Store::open(store, backend.map(backend_kind))?;
    let helper = std::env::current_exe().map_err(|e| {
        CliError::failed(format!("cannot find the envc binary to run sandboxes: {e}"))
    })?;
    Ok(Runtime::new(store, helper))
}

/// Opens the store at `store` for a command that only reads or cleans it: it must exist already
/// (a mistyped `--store` is reported, never made into a new store). `None` when there is none.
pub fn open_existing(store: &Path, backend: Option<Backend>) -> Result<Option<Runtime>, CliError> {
    match std::fs::symlink_metadata(store.join("store.json")) {
        Ok(_) => open(store, backend).map(Some),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(CliError::failed(format!(
            "cannot read {}: {e}",
            store.join("store.json").display()
        ))),
    }
}

/// Opens the store at `store` only to read its records, if there is one (`envc plan`): nothing
/// is created or changed.
pub fn open_read_only(store: &Path) -> Result<Option<Store>, StoreError> {
    Store::open_read_only(store)
}

/// The error of a command that needs a store where there is none.
pub fn no_store(store: &Path) -> CliError {
    CliError::failed(format!(
        "no envc store at {} (`envc apply` makes one; check --store and ENVC_STORE)",
        store.display()
    ))
}

fn backend_kind(b: Backend) -> BackendKind {
    match b {
        Backend::Overlay => BackendKind::Overlay,
        Backend::Btrfs => BackendKind::Btrfs,
        Backend::Lvm => BackendKind::Lvm,
    }
}

/// Makes a store at `store` with the backend `init` names (see `envc store init --help`); what
/// recovery found in an existing LVM pool comes back with it.
pub fn init(store: &Path, init: &StoreInit) -> Result<(Store, Recovered), CliError> {
    let lvm_only = [
        ("--vg", init.vg.is_some()),
        ("--size", init.size.is_some()),
        ("--volume-size", init.volume_size.is_some()),
        ("--fs", init.fs != Fs::Ext4),
        ("--loop", init.loop_file.is_some()),
    ];
    let backend = match init.kind {
        Backend::Lvm => {
            let vg = init.vg.clone().unwrap_or_default();
            if vg.trim().is_empty() {
                return Err(CliError::failed("--vg needs a volume group name"));
            }
            BackendInit::Lvm(LvmInit {
                vg,
                pool: init.pool.clone(),
                size: init.size.map(|s| s.0),
                volume_size: init.volume_size.map(|s| s.0),
                fs: match init.fs {
                    Fs::Ext4 => FsKind::Ext4,
                    Fs::Xfs => FsKind::Xfs,
                },
                loop_file: init.loop_file.clone(),
            })
        }
        other => {
            if let Some((flag, _)) = lvm_only.iter().find(|(_, set)| *set) {
                return Err(CliError::failed(format!(
                    "{flag} is a setting of LVM stores, not of {}",
                    backend_kind(other)
                )));
            }
            match other {
                Backend::Btrfs => BackendInit::Btrfs,
                _ => BackendInit::Overlay,
            }
        }
    };
    let store = Store::init(store, &backend)?;
    // A pool that already holds envc's volumes is adopted.
    let recovered = maintain::recover(&store)?;
    Ok((store, recovered))
}

/// What `envc store recover` did.
pub enum Recovery {
    /// The records were rebuilt from the backend.
    Recovered(Recovered),
    /// The store's backend keeps its layers as files: there is nothing to rebuild from.
    NothingToRecover(BackendKind),
}

/// Rebuilds the records of the store at `store` from its backend.
pub fn recover(store: &Path) -> Result<Recovery, CliError> {
    let st = Store::open(store, None)?;
    let r = maintain::recover(&st)?;
    if !r.applicable {
        return Ok(Recovery::NothingToRecover(st.backend().kind()));
    }
    Ok(Recovery::Recovered(r))
}

/// An LVM store's setting.
pub struct LvmSetting {
    /// The volume group.
    pub vg: String,
    /// The thin pool.
    pub pool: String,
    /// The volumes' filesystem: `ext4` or `xfs`.
    pub fs: &'static str,
    /// Each volume's virtual size, in bytes.
    pub volume_size: u64,
}

/// The store's LVM setting; `None` for another backend.
pub fn lvm_setting(store: &Store) -> Option<LvmSetting> {
    let BackendConfig::Lvm(c) = store.backend().config() else {
        return None;
    };
    Some(LvmSetting {
        fs: match c.fs {
            FsKind::Ext4 => "ext4",
            FsKind::Xfs => "xfs",
        },
        vg: c.vg,
        pool: c.pool,
        volume_size: c.volume_size,
    })
}

/// How full the pool under the store is, for backends that draw from one.
pub fn capacity(store: &Store) -> Option<Capacity> {
    store.backend().capacity()
}

/// One line about a backend's pool: `thin pool VG/POOL: data 12.0%, metadata 3.1%`.
pub fn capacity_line(c: &Capacity) -> String {
    match (&c.usage, &c.unknown) {
        (Some(u), _) => format!(
            "{}: data {:.1}%, metadata {:.1}%",
            c.pool, u.data, u.metadata
        ),
        (None, reason) => format!(
            "{}: usage unknown ({})",
            c.pool,
            reason.as_deref().unwrap_or("not reported")
        ),
    }
}
