//! `envc export`: a built environment as an OCI image layout, an OCI archive, or a root tar.

use std::io::Write;
use std::path::Path;

use envc_runtime::oci::export::{self, ExportError, Output};

use crate::cli::{Backend, ExportTo};
use crate::compile::compile_for;
use crate::error::CliError;
use crate::lockfile::plan_for;

/// Exports the stored layers of `spec` (with its lock, when it has one) where `to` says. Prints
/// the manifest's digest (the root tar's sha256 for `--tar`) on stdout, a summary on stderr.
pub fn export(
    store: &Path,
    backend: Option<Backend>,
    spec: &Path,
    to: &ExportTo,
) -> Result<(), CliError> {
    let (output, what) = match (&to.oci, &to.oci_archive, &to.tar) {
        (Some(d), _, _) => (Output::Layout(d), "OCI image layout"),
        (_, Some(f), _) => (Output::LayoutArchive(f), "OCI archive"),
        (_, _, Some(f)) => (Output::RootTar(f), "root tar"),
        _ => unreachable!("clap requires one of --oci, --oci-archive, --tar"),
    };
    let target = match output {
        Output::Layout(p) | Output::LayoutArchive(p) | Output::RootTar(p) => p,
    };
    let compiled = compile_for(spec, store)?;
    let plan = plan_for(&compiled, spec, store, false, false)?;
    let not_built = |why: String| {
        CliError::failed(format!(
            "{why}: run `envc apply {}` first (export builds nothing)",
            spec.display()
        ))
    };
    let Some(rt) = crate::store::open_existing(store, backend)? else {
        return Err(not_built(format!(
            "`{}` is not built: no envc store at {}",
            plan.name,
            store.display()
        )));
    };
    let exported = match export::export(&rt.store, &plan, output) {
        Ok(e) => e,
        Err(ExportError::NotStored { layer, id, .. }) => {
            return Err(not_built(format!(
                "`{}` is not built: its layer `{layer}` ({}) is not stored",
                plan.name,
                id.short(12)
            )));
        }
        Err(e) => return Err(CliError::Failed(Box::new(e))),
    };
    for w in &exported.warnings {
        crate::report::warn(w);
    }
    if let Some(l) = &exported.layout {
        println!("{}", l.manifest.digest);
    }
    if let Some((sha, _)) = &exported.root_tar {
        println!("sha256:{}", export::layout::hex(sha));
    }
    let _ = writeln!(
        std::io::stderr(),
        "envc: {} layer{} of `{}` exported as {what} to {}",
        plan.layers.len(),
        if plan.layers.len() == 1 { "" } else { "s" },
        plan.name,
        target.display()
    );
    Ok(())
}
