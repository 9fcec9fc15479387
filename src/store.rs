//! Every call the CLI makes into the runtime's store-setup API: opening a store, making an LVM
//! store, recovering records, reading a store's backend setting and pool usage.

use std::path::Path;

use envc_runtime::backend::lvm::{FsKind, LvmInit};
use envc_runtime::backend::{BackendConfig, BackendInit, Capacity};
use envc_runtime::maintain::{self, Recovered};
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
    let store = Store::init(store, &BackendInit::Lvm(init))?;
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
