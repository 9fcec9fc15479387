//! Every call the CLI makes into the runtime's store-setup API: opening a store, making an LVM
//! store, recovering records, reading an LVM store's setting.

use std::path::Path;

use envc_runtime::backend::lvm::{self, FsKind, LvmInit, PoolUsage, Recovered};
use envc_runtime::{BackendKind, Runtime, Store};

use crate::cli::{Backend, Fs, StoreInit};
use crate::error::CliError;

/// Opens the runtime for the store and backend the command line names.
pub fn open(store: &Path, backend: Option<Backend>) -> Result<Runtime, CliError> {
    let store = Store::open(store, backend.map(backend_kind))?;
    let helper = std::env::current_exe().map_err(|e| {
        CliError::failed(format!("cannot find the envc binary to run sandboxes: {e}"))
    })?;
    Ok(Runtime { store, helper })
}

fn backend_kind(b: Backend) -> BackendKind {
    match b {
        Backend::Overlay => BackendKind::Overlay,
        Backend::Btrfs => BackendKind::Btrfs,
        Backend::Lvm => BackendKind::Lvm,
    }
}

/// Makes an LVM store at `store` (see `envc store init --help`); what recovery found in an
/// existing pool comes back with it.
pub fn init_lvm(store: &Path, init: &StoreInit) -> Result<(Store, Recovered), CliError> {
    let init = LvmInit {
        vg: init.vg.clone(),
        pool: init.pool.clone(),
        size: init.size.map(|s| s.0),
        volume_size: init.volume_size.map(|s| s.0),
        fs: match init.fs {
            Fs::Ext4 => FsKind::Ext4,
            Fs::Xfs => FsKind::Xfs,
        },
        loop_file: init.loop_file.clone(),
    };
    Ok(Store::init_lvm(store, &init)?)
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
    if st.backend().lvm().is_none() {
        return Ok(Recovery::NothingToRecover(st.backend().kind()));
    }
    Ok(Recovery::Recovered(lvm::recover(&st)?))
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
    let c = store.backend().lvm()?.config();
    Some(LvmSetting {
        vg: c.vg.clone(),
        pool: c.pool.clone(),
        fs: match c.fs {
            FsKind::Ext4 => "ext4",
            FsKind::Xfs => "xfs",
        },
        volume_size: c.volume_size,
    })
}

/// How full an LVM store's thin pool is; `None` for another backend or when LVM cannot tell.
pub fn pool_usage(store: &Store) -> Option<PoolUsage> {
    store.backend().lvm()?.pool_usage().ok()
}
