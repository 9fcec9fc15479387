//! Compiles the spec a command names: its plan, or every error in it as an [`InvalidSpec`].

use std::path::Path;

use envc_compiler::{Compiled, Options};

use crate::error::InvalidSpec;

/// Compiles `spec` on its own (`check`, `plan`).
pub fn compile(spec: &Path) -> Result<Compiled, InvalidSpec> {
    compile_with(spec, &Options::default())
}

/// Compiles for a runtime command: big host files' digests are remembered in the store's cache,
/// so a warm apply of a spec with a large tarball base does not read the tarball again.
pub fn compile_for(spec: &Path, store: &Path) -> Result<Compiled, InvalidSpec> {
    compile_with(
        spec,
        &Options {
            digest_cache: Some(store.join("cache").join("digests")),
        },
    )
}

fn compile_with(spec: &Path, options: &Options) -> Result<Compiled, InvalidSpec> {
    envc_compiler::compile_with(spec, options).map_err(|errors| InvalidSpec {
        spec: spec.to_owned(),
        errors,
    })
}
