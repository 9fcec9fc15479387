//! The CLI's error: what went wrong, as data, with the exit code it means.
//!
//! Commands return [`CliError`]; `main` renders it once ([`crate::report::Ui::render`]) and exits
//! with [`CliError::exit_code`].

use std::path::PathBuf;

use envc_compiler::{Compiled, SpecError, Src};
use envc_runtime::ApplyError;
use envc_runtime::backend::BackendError;
use envc_runtime::store::StoreError;
use miette::SourceSpan;

/// Documented exit codes (README, "Exit codes").
pub mod exit {
    /// The command did what was asked.
    pub const SUCCESS: u8 = 0;
    /// An operation failed (I/O, build step, store).
    pub const FAILURE: u8 = 1;
    /// The command line was wrong.
    pub const USAGE: u8 = 2;
    /// A spec is invalid.
    pub const INVALID_SPEC: u8 = 3;
}

/// Why a command failed.
#[derive(Debug)]
pub enum CliError {
    /// The command line was wrong.
    Usage(clap::Error),
    /// Specs could not be read or have errors: every error of each, in the order checked.
    InvalidSpec(Vec<InvalidSpec>),
    /// An operation failed: the store, a backend, the sandbox, I/O.
    Failed(Box<dyn std::error::Error + Send + Sync>),
    /// A build step failed; the report points at the step in its spec.
    StepFailed(Box<StepFailure>),
    /// An input file other than a spec (a lock) is invalid; the report points into it.
    Diagnostic(Box<dyn miette::Diagnostic + Send + Sync>),
}

/// One spec and all its errors.
#[derive(Debug)]
pub struct InvalidSpec {
    /// The spec named on the command line.
    pub spec: PathBuf,
    /// What is wrong with it (or with a spec it extends).
    pub errors: Vec<SpecError>,
}

/// A failed build step and where the spec wrote it.
#[derive(Debug)]
pub struct StepFailure {
    /// The layer's name.
    pub layer: String,
    /// The step's index in the layer.
    pub step: usize,
    /// What happened ("exit status 2", ...).
    pub reason: String,
    /// The last lines of its output.
    pub tail: Vec<String>,
    /// The full log.
    pub log: PathBuf,
    /// The spec file that holds the step.
    pub src: Src,
    /// The step in it.
    pub span: SourceSpan,
}

impl CliError {
    /// The process's exit status for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Usage(_) => exit::USAGE,
            CliError::InvalidSpec(_) | CliError::Diagnostic(_) => exit::INVALID_SPEC,
            CliError::Failed(_) | CliError::StepFailed(_) => exit::FAILURE,
        }
    }

    /// An operation failed for a reason only the CLI sees.
    pub fn failed(message: impl Into<String>) -> CliError {
        CliError::Failed(message.into().into())
    }

    /// An apply (or run) of `compiled` failed: a failed step keeps its place in the spec.
    pub fn apply(error: ApplyError, compiled: &Compiled) -> CliError {
        // A layer that failed outside its steps (a full disk while sealing): where it starts.
        if let ApplyError::Layer { index, .. } = &error
            && let Some(at) = compiled.step_position(*index, 0)
        {
            return CliError::failed(format!("{error} (its first step is at {at})"));
        }
        let at = match &error {
            ApplyError::StepFailed { index, step, .. } => compiled
                .step_location(*index, *step)
                .map(|(src, span)| (src.clone(), span)),
            _ => None,
        };
        match (error, at) {
            (
                ApplyError::StepFailed {
                    layer,
                    step,
                    reason,
                    tail,
                    log,
                    ..
                },
                Some((src, span)),
            ) => CliError::StepFailed(Box::new(StepFailure {
                layer,
                step,
                reason,
                tail,
                log,
                src,
                span,
            })),
            (error, _) => error.into(),
        }
    }
}

impl From<InvalidSpec> for CliError {
    fn from(e: InvalidSpec) -> CliError {
        CliError::InvalidSpec(vec![e])
    }
}

impl From<ApplyError> for CliError {
    fn from(e: ApplyError) -> CliError {
        CliError::Failed(Box::new(e))
    }
}

impl From<StoreError> for CliError {
    fn from(e: StoreError) -> CliError {
        CliError::Failed(Box::new(e))
    }
}

impl From<BackendError> for CliError {
    fn from(e: BackendError) -> CliError {
        CliError::Failed(Box::new(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes() {
        let usage = clap::Error::raw(clap::error::ErrorKind::InvalidValue, "bad");
        assert_eq!(CliError::Usage(usage).exit_code(), exit::USAGE);
        assert_eq!(
            CliError::InvalidSpec(vec![]).exit_code(),
            exit::INVALID_SPEC
        );
        assert_eq!(CliError::failed("no").exit_code(), exit::FAILURE);
        let store = StoreError::Incompatible {
            path: "/s".into(),
            reason: "is odd".into(),
        };
        let e = CliError::from(store);
        assert_eq!(e.exit_code(), exit::FAILURE);
        assert!(matches!(&e, CliError::Failed(f) if f.to_string() == "store /s is odd"));
    }
}
