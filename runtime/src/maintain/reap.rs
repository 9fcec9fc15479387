//! The background reaper: after a reset, a backend that keeps a root's old snapshot (LVM) has it
//! removed by a detached `envc __envc-reap STORE NAME`, which waits for the root's lock so it
//! never touches a root in use.
#![forbid(unsafe_code)]

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::Path;

use crate::store::{self, Store};

/// The hidden first argument under which envc removes a root's old snapshots in the background.
pub const REAP_ARG: &str = "__envc-reap";

/// Starts `helper __envc-reap STORE NAME` detached, in its own process group (so a Ctrl-C of the
/// apply does not stop it). Failing to start it is harmless: `gc` reaps what is left.
pub fn spawn_reaper(helper: &Path, store: &Path, name: &str) {
    let _ = std::process::Command::new(helper)
        .arg(REAP_ARG)
        .arg(store)
        .arg(name)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .process_group(0)
        .spawn();
}

/// Entry point of `envc __envc-reap STORE NAME`: removes a working root's old snapshots once
/// nobody holds the root's lock. Exit status 0 when done, 1 on failure, 2 on bad arguments.
pub fn reap_main(args: &[OsString]) -> i32 {
    let [store, name] = args else { return 2 };
    let Some(name) = name.to_str().filter(|n| store::valid_name(n)) else {
        return 2;
    };
    let Ok(store) = Store::open(Path::new(store), None) else {
        return 1;
    };
    let Ok(_lock) = store.lock_root(name) else {
        return 1;
    };
    match store.backend().reap_root(name) {
        Ok(_) => 0,
        Err(_) => 1,
    }
}
