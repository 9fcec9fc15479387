//! How an apply fails: every variant names the operation and the object.

use std::io;
use std::path::PathBuf;

use super::executor::ExecError;
use crate::backend::BackendError;
use crate::store::StoreError;

/// A failed apply, naming what failed.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// A step failed: the layer was not sealed.
    #[error("step {} of layer `{layer}` failed: {reason}", step + 1)]
    StepFailed {
        /// The layer's index in the plan.
        index: usize,
        /// The layer's name.
        layer: String,
        /// The step's index in the layer.
        step: usize,
        /// What happened ("exit status 2", ...).
        reason: String,
        /// The command's exit status, when it ran.
        status: Option<i32>,
        /// The last lines of output.
        tail: Vec<String>,
        /// The full log.
        log: PathBuf,
    },
    /// A store operation failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A backend operation failed.
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// Starting or talking to the sandbox failed.
    #[error(transparent)]
    Exec(#[from] ExecError),
    /// A file of the build (its log) could not be written.
    #[error("cannot {op} {}: {source}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// To what.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A build failed and so did its rollback: both are reported.
    #[error("{error}; rolling the build of layer `{layer}` back failed too: {rollback}")]
    Rollback {
        /// The layer.
        layer: String,
        /// What failed the build.
        error: Box<ApplyError>,
        /// What failed the rollback.
        rollback: BackendError,
    },
}
