//! `envc rm`: drops an environment's working root.

use std::path::Path;

use crate::cli::Backend;
use crate::error::CliError;

/// Removes the working root `name`; it is an error if there is none.
pub fn rm(store: &Path, backend: Option<Backend>, name: &str) -> Result<(), CliError> {
    let rt = crate::store::open_existing(store, backend)?
        .ok_or_else(|| crate::store::no_store(store))?;
    if rt.remove_root(name)? {
        Ok(())
    } else {
        Err(CliError::failed(format!(
            "no working root named `{name}` in {}",
            rt.store.path().display()
        )))
    }
}
