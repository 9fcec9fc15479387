//! What the build transaction runs outside itself: sandboxes (through the helper binary) and host
//! tools (mmdebstrap, tar). One trait, so the transaction can be tested against a recording fake
//! without privileges.

use std::io;
use std::path::{Path, PathBuf};

use crate::sandbox::{self, Spec, Stdio3};
use crate::tools::{self, Tool, ToolError};

/// A failure to start or wait for a sandbox.
#[derive(Debug, thiserror::Error)]
#[error("cannot {op} {}: {source}", helper.display())]
pub struct ExecError {
    /// What was being done.
    pub op: &'static str,
    /// The helper binary.
    pub helper: PathBuf,
    /// Why.
    #[source]
    pub source: io::Error,
}

/// Runs sandboxes and host tools for the build transaction.
pub trait Executor: Send + Sync {
    /// The envc binary, re-executed as the sandbox helper (and for background work).
    fn helper(&self) -> &Path;
    /// Runs `spec` with stdin from /dev/null, giving each line of its output to `on_line`;
    /// returns the command's exit status (128 + signal when killed).
    fn sandbox(&self, spec: &Spec, on_line: &mut dyn FnMut(&str)) -> Result<i32, ExecError>;
    /// Runs `spec` on the caller's terminal; returns the command's exit status.
    fn interactive(&self, spec: &Spec) -> Result<i32, ExecError>;
    /// Runs a host tool, giving each line of its output to `on_line`.
    fn tool(&self, tool: &Tool, on_line: &mut dyn FnMut(&str)) -> Result<(), ToolError>;
}

/// The real executor: the envc binary as sandbox helper.
#[derive(Debug, Clone)]
pub struct HelperExecutor {
    helper: PathBuf,
}

impl HelperExecutor {
    /// Sandboxes run through `helper` (the envc binary).
    pub fn new(helper: PathBuf) -> HelperExecutor {
        HelperExecutor { helper }
    }

    fn err(&self, op: &'static str) -> impl FnOnce(io::Error) -> ExecError + '_ {
        move |source| ExecError {
            op,
            helper: self.helper.clone(),
            source,
        }
    }
}

/// An exit status as a number: the code, or 128 + the signal that ended the process.
pub(crate) fn status_code(status: std::process::ExitStatus) -> i32 {
    status.code().unwrap_or_else(|| {
        128 + std::os::unix::process::ExitStatusExt::signal(&status).unwrap_or(0)
    })
}

impl Executor for HelperExecutor {
    fn helper(&self) -> &Path {
        &self.helper
    }

    fn sandbox(&self, spec: &Spec, on_line: &mut dyn FnMut(&str)) -> Result<i32, ExecError> {
        let (reader, writer) = io::pipe().map_err(self.err("create a pipe for"))?;
        let mut child = sandbox::spawn(&self.helper, spec, Stdio3::Pipe(writer))
            .map_err(self.err("start the sandbox helper"))?;
        tools::for_each_line(reader, on_line);
        let status = child
            .wait()
            .map_err(self.err("wait for the sandbox helper"))?;
        Ok(status_code(status))
    }

    fn interactive(&self, spec: &Spec) -> Result<i32, ExecError> {
        let status = sandbox::run_interactive(&self.helper, spec)
            .map_err(self.err("start the sandbox helper"))?;
        Ok(status_code(status))
    }

    fn tool(&self, tool: &Tool, on_line: &mut dyn FnMut(&str)) -> Result<(), ToolError> {
        tool.stream(on_line)
    }
}
