//! `envc apply`, `envc run`, `envc shell`: realize a spec's layers, showing progress, then give its
//! working root or run a command in it.

use std::io::Write;
use std::path::Path;

use crate::cli::{Backend, RunTarget};
use crate::compile::compile_for;
use crate::error::{CliError, exit};
use crate::lockfile::{plan_and_lock, plan_for};
use crate::progress::Progress;

/// What `envc shell` runs: the user's login shell if the root has bash, else sh.
const SHELL: &str = "if command -v bash >/dev/null; then exec bash -l; else exec sh -l; fi";

/// Builds what is missing, then prints the working root's path (a summary goes to stderr).
pub fn apply(
    store: &Path,
    backend: Option<Backend>,
    spec: &Path,
    reset: bool,
    locked: bool,
) -> Result<(), CliError> {
    let compiled = compile_for(spec, store)?;
    let (plan, lock) = plan_and_lock(&compiled, spec, store, locked, true)?;
    let rt = crate::store::open(store, backend)?;
    let mut progress = Progress::new(plan.layers.len());
    let result = rt.apply(&plan, reset, &mut |e| progress.event(e));
    drop(progress);
    let applied = result.map_err(|e| CliError::apply(e, &compiled))?;
    // Layers the lock recorded a tree digest for: another tree under the same id is said.
    if let Some(lock) = &lock {
        for (name, recorded, now) in rt.digest_mismatches(&plan, &lock.layers) {
            crate::report::warn(&format!(
                "layer `{name}` has tree digest {now} in this store, but the lock recorded {recorded}: its build is not reproducible, or the stored layer changed (`envc verify` tells which)"
            ));
        }
    }
    if crate::report::json() {
        crate::report::emit(
            "done",
            serde_json::json!({
                "built": applied.built,
                "cached": applied.cached,
                "root": applied.root.display().to_string(),
                "root_created": applied.fresh_root,
            }),
        );
    } else {
        let _ = writeln!(
            std::io::stderr(),
            "envc: {} built, {} cached; root {}",
            applied.built,
            applied.cached,
            if applied.fresh_root {
                "created"
            } else {
                "kept"
            }
        );
    }
    println!("{}", applied.root.display());
    Ok(())
}

/// `envc run`: the command's exit status once it has started.
pub fn run(
    store: &Path,
    backend: Option<Backend>,
    target: &RunTarget,
    argv: Vec<String>,
) -> Result<u8, CliError> {
    let opts = run_options(target)?;
    let compiled = compile_for(&target.spec, store)?;
    let plan = plan_for(&compiled, &target.spec, store, target.locked, false)?;
    let rt = crate::store::open(store, backend)?;
    let mut progress = Progress::for_run(plan.layers.len());
    // The progress bar must be gone before the command takes the terminal.
    let result = rt.run(&plan, argv, &opts, &mut |e| progress.event(e));
    drop(progress);
    let code = result.map_err(|e| CliError::apply(e, &compiled))?;
    if crate::report::json() {
        crate::report::emit("exit", serde_json::json!({ "status": code }));
    }
    Ok(u8::try_from(code).unwrap_or(exit::FAILURE))
}

/// `envc shell`: an interactive shell's exit status.
pub fn shell(store: &Path, backend: Option<Backend>, target: &RunTarget) -> Result<u8, CliError> {
    run(
        store,
        backend,
        target,
        vec!["/bin/sh".into(), "-c".into(), SHELL.into()],
    )
}

/// What `--keep`, `--no-network`, `--bind`, `--env`, `--user` and `--workdir` ask for. A bind's
/// host directory must exist and be a directory; it is taken as an absolute, canonical path.
fn run_options(target: &RunTarget) -> Result<envc_runtime::apply::RunOptions, CliError> {
    let mut binds = Vec::new();
    for b in &target.binds {
        let host = std::fs::canonicalize(&b.host).map_err(|e| {
            usage(format!(
                "--bind {}:{}: the host directory {}: {e}",
                b.host.display(),
                b.dest,
                b.host.display()
            ))
        })?;
        if !host.is_dir() {
            return Err(usage(format!(
                "--bind {}:{}: {} is not a directory",
                b.host.display(),
                b.dest,
                host.display()
            )));
        }
        binds.push(envc_runtime::sandbox::Bind {
            host,
            target: b.dest.clone(),
            readonly: b.readonly,
        });
    }
    Ok(envc_runtime::apply::RunOptions {
        keep: target.keep,
        network: !target.no_network,
        binds,
        env: target
            .env
            .iter()
            .map(|e| (e.0.clone(), e.1.clone()))
            .collect(),
        user: target.user.clone(),
        workdir: target.workdir.as_ref().map(|w| w.0.clone()),
    })
}

/// A command-line value that is well-formed but wrong on this machine.
fn usage(message: String) -> CliError {
    CliError::Usage(clap::Error::raw(
        clap::error::ErrorKind::InvalidValue,
        format!("{message}\n"),
    ))
}
