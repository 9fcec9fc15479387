//! What the build transaction runs outside itself: sandboxes (through the helper binary) and host
//! tools (mmdebstrap, tar). One trait, so the transaction can be tested against a recording fake
//! without privileges.
#![forbid(unsafe_code)]

use std::io::{self, Read};
use std::path::{Path, PathBuf};

use crate::sandbox::{self, SandboxError, SandboxOp, Spec, Stdio3};
use crate::tools::{self, Tool, ToolError};

/// Runs sandboxes and host tools for the build transaction.
pub trait Executor: Send + Sync {
    /// The envc binary, re-executed as the sandbox helper (and for background work).
    fn helper(&self) -> &Path;
    /// Runs `spec` with stdin from /dev/null, giving each line of its output to `on_line`;
    /// returns the command's exit status (128 + signal when killed), or the sandbox's own failure.
    fn sandbox(&self, spec: &Spec, on_line: &mut dyn FnMut(&str)) -> Result<i32, SandboxError>;
    /// Runs `spec` on the caller's terminal; returns the command's exit status.
    fn interactive(&self, spec: &Spec) -> Result<i32, SandboxError>;
    /// Runs a host tool, giving each line of its output to `on_line`.
    fn tool(&self, tool: &Tool, on_line: &mut dyn FnMut(&str)) -> Result<(), ToolError>;
    /// Runs a host tool with `input` on its stdin, giving each line of its output to
    /// `on_line`. By default `input` is read to its end and the tool run as [`Executor::tool`].
    fn tool_from(
        &self,
        tool: &Tool,
        input: &mut (dyn Read + Send),
        on_line: &mut dyn FnMut(&str),
    ) -> Result<(), ToolError> {
        let _ = io::copy(input, &mut io::sink());
        self.tool(tool, on_line)
    }
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
}

impl Executor for HelperExecutor {
    fn helper(&self) -> &Path {
        &self.helper
    }

    fn sandbox(&self, spec: &Spec, on_line: &mut dyn FnMut(&str)) -> Result<i32, SandboxError> {
        let (reader, writer) = io::pipe().map_err(|e| {
            SandboxError::io(
                SandboxOp::StartHelper,
                self.helper.display().to_string(),
                &e,
            )
        })?;
        let child = sandbox::spawn(&self.helper, spec, Stdio3::Pipe(writer))?;
        tools::for_each_line(reader, on_line);
        child.wait()
    }

    fn interactive(&self, spec: &Spec) -> Result<i32, SandboxError> {
        sandbox::run_interactive(&self.helper, spec)
    }

    fn tool(&self, tool: &Tool, on_line: &mut dyn FnMut(&str)) -> Result<(), ToolError> {
        tool.stream(on_line)
    }

    fn tool_from(
        &self,
        tool: &Tool,
        input: &mut (dyn Read + Send),
        on_line: &mut dyn FnMut(&str),
    ) -> Result<(), ToolError> {
        tool.stream_from(input, on_line)
    }
}
