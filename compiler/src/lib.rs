//! The envc compiler: KDL spec text -> spanned syntax tree -> checked, hashed layer plan.
//!
//! Stages: `kdl` parses; [`decode`] turns the document into a spanned [`ast`] and checks the shape
//! of every node; [`resolve`] follows `extends`, checks what values mean, reads every host file the
//! environment depends on and lowers to an [`envc_plan::Plan`]. Every stage collects all errors it
//! finds; [`compile`] returns them together, each a [`SpecError`] with a stable code and a span.
//! Spans never reach the plan: [`Compiled`] keeps a side table from plan steps to spec locations,
//! for errors that happen later (a failing build step points back at its line).
#![forbid(unsafe_code)]

pub mod ast;
pub mod decode;
pub mod digest;
mod error;
mod fastkdl;
mod guard;
pub mod resolve;
mod suggest;

use std::path::Path;

pub use envc_plan as plan;
pub use error::{Errors, SpecError, Src};
pub use guard::{MAX_NESTING, MAX_WORDS};
use miette::SourceSpan;
pub use resolve::{MAX_ERRORS, MAX_EXTENDS, MAX_SPEC_BYTES, host_arch};

/// Where a plan step was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    /// Index into [`Compiled::sources`].
    pub file: usize,
    /// The span of the step's node.
    pub span: SourceSpan,
}

/// A compiled spec: the plan and where each of its steps came from.
#[derive(Debug)]
pub struct Compiled {
    /// The plan.
    pub plan: envc_plan::Plan,
    /// Every spec file read, the base-most first and the compiled spec last.
    pub sources: Vec<Src>,
    /// For each layer of the plan, for each of its steps, where it was written.
    pub locations: Vec<Vec<Location>>,
}

impl Compiled {
    /// The source and span of step `step` of layer `layer`.
    pub fn step_location(&self, layer: usize, step: usize) -> Option<(&Src, SourceSpan)> {
        let loc = self.locations.get(layer)?.get(step)?;
        Some((self.sources.get(loc.file)?, loc.span))
    }

    /// `file:line:col` of step `step` of layer `layer`.
    pub fn step_position(&self, layer: usize, step: usize) -> Option<String> {
        let (src, span) = self.step_location(layer, step)?;
        let (line, col) = resolve::line_col(src.inner(), span.offset());
        Some(format!("{}:{line}:{col}", src.name()))
    }
}

/// How to compile.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// A directory where the digests of big host files (tarballs, big copied files) are remembered
    /// by path, inode, size and timestamps, so an unchanged file is not read again. `None`: every
    /// file is hashed on every compile.
    pub digest_cache: Option<std::path::PathBuf>,
}

/// Compiles the spec at `path` (and every spec it extends). Relative paths in a spec are resolved
/// against that spec's directory.
pub fn compile(path: &Path) -> Result<Compiled, Vec<SpecError>> {
    compile_with(path, &Options::default())
}

/// [`compile`] with options.
pub fn compile_with(path: &Path, options: &Options) -> Result<Compiled, Vec<SpecError>> {
    resolve::compile(path, resolve::RootText::Read, options)
}

/// Compiles spec text as if it were the file at `path` (which need not exist; specs it extends and
/// files it copies are read relative to `path`'s directory).
pub fn compile_source(path: &Path, text: impl Into<String>) -> Result<Compiled, Vec<SpecError>> {
    compile_bytes(path, text.into().into_bytes())
}

/// Compiles the bytes of a spec as if they were the contents of the file at `path`: exactly what
/// [`compile`] does after reading the file (the size limit, the UTF-8 check, parsing, and reading
/// what the spec extends and copies relative to `path`'s directory). The fuzzers' entry point.
pub fn compile_bytes(path: &Path, bytes: Vec<u8>) -> Result<Compiled, Vec<SpecError>> {
    resolve::compile(path, resolve::RootText::Given(bytes), &Options::default())
}

/// The fast KDL parser, exposed for its differential tests only.
#[doc(hidden)]
pub fn __fastkdl_parse(text: &str) -> Option<kdl::KdlDocument> {
    fastkdl::parse(text)
}
