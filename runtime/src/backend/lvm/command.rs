//! Running LVM commands: one runner that skips udev where none runs and logs every command to
//! `$ENVC_LVM_LOG` when it is set.
#![forbid(unsafe_code)]

use std::fs::File;
use std::io::Write;
use std::path::Path;

use super::super::BackendError;
use crate::tools::{Tool, ToolError};

/// Set to a file path, every LVM command envc runs is appended to it (for tests and benchmarks).
pub const LOG_ENV: &str = "ENVC_LVM_LOG";

const NO_UDEV: &str = "activation{udev_sync=0 udev_rules=0}";

/// Whether udev is running (as libudev decides it): then LVM waits for it to make device nodes.
fn udev_running() -> bool {
    Path::new("/run/udev/control").exists()
}

/// An LVM command (`lvm SUB ...`), told not to wait for udev when there is none.
pub(super) fn lvm_cmd(sub: &str) -> Result<Tool, ToolError> {
    let mut t = Tool::new("lvm")?
        .uninterruptible()
        .arg(sub)
        .env("LVM_SUPPRESS_FD_WARNINGS", "1");
    if !udev_running() {
        t = t.arg("--config").arg(NO_UDEV);
    }
    Ok(t)
}

/// Runs an LVM command, recording it in `$ENVC_LVM_LOG` when set.
pub(super) fn run(t: Tool) -> Result<Vec<u8>, BackendError> {
    if let Some(log) = std::env::var_os(LOG_ENV)
        && let Ok(mut f) = File::options().create(true).append(true).open(log)
    {
        let _ = writeln!(f, "{t:?}");
    }
    Ok(t.output()?)
}
