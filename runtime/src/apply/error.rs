//! How an apply fails: every variant names the operation and the object.
#![forbid(unsafe_code)]

use std::io;
use std::path::PathBuf;

use crate::backend::BackendError;
use crate::digest::DigestError;
use crate::sandbox::SandboxError;
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
    /// The sandbox failed outside any step (`run`, `shell`), or its helper did not start.
    #[error("cannot {context}: {source}")]
    Sandbox {
        /// What was being done.
        context: String,
        /// The sandbox's failure.
        #[source]
        source: SandboxError,
    },
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
    /// A finished build's tree could not be digested (the layer is not sealed).
    #[error("cannot compute the tree digest of the finished build: {source}")]
    Digest {
        /// Why.
        #[source]
        source: DigestError,
    },
    /// A layer's build failed outside its steps (staging, its log, sealing, its record).
    #[error("cannot build layer `{layer}`: {source}")]
    Layer {
        /// The layer's index in the plan.
        index: usize,
        /// The layer's name.
        layer: String,
        /// What failed.
        #[source]
        source: Box<ApplyError>,
    },
    /// `envc lock` could not resolve a part of the spec.
    #[error("cannot lock {what}: {reason}")]
    Lock {
        /// The base, or a layer's step.
        what: String,
        /// Why.
        reason: String,
    },
    /// A locked plan's source-date-epoch is later than the clock: files made now would be older
    /// than it, so no time would be clamped and the build would depend on the clock.
    #[error(
        "the lock's source-date-epoch ({sde}) is later than this machine's clock ({now}): a build now could not give its files the lock's time; set the clock right, or write the lock again (`envc lock --update`)"
    )]
    FutureEpoch {
        /// The lock's source-date-epoch.
        sde: u64,
        /// The clock, in seconds since the epoch.
        now: u64,
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

impl ApplyError {
    /// `self`, failing the build of layer `index`, named (a failed step and a failed rollback
    /// already name their layer).
    pub(super) fn in_layer(self, index: usize, layer: &str) -> ApplyError {
        match self {
            e @ (ApplyError::StepFailed { .. }
            | ApplyError::Layer { .. }
            | ApplyError::Rollback { .. }) => e,
            e => ApplyError::Layer {
                index,
                layer: layer.to_owned(),
                source: Box::new(e),
            },
        }
    }
}
