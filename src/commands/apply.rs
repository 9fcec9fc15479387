//! `envc apply`, `envc run`, `envc shell`: realize a spec's layers, showing progress, then give its
//! working root or run a command in it.

use std::io::Write;
use std::path::Path;

use crate::cli::{Backend, RemoteArgs, RunTarget};
use crate::compile::compile_for;
use crate::error::{CliError, exit};
use crate::lockfile::{plan_and_lock, plan_for};
use crate::progress::Progress;

/// What `envc shell` runs: bash if the root has it, else sh, started as a login shell would be
/// (`/etc/profile`, `~/.profile`) and with a prompt that names the environment
/// (`(envc:NAME) root@host:/dir#`). The startup file is written into the session's own `/tmp`.
fn shell_command(name: &str) -> Vec<String> {
    // Plan names are letters, digits, `.`, `_` and `-` already; anything else is dropped.
    let name: String = name
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || "._-".contains(*c))
        .collect();
    let rc = format!(
        ". /etc/profile 2>/dev/null\n\
         [ -f \"$HOME/.profile\" ] && . \"$HOME/.profile\"\n\
         if [ -n \"$BASH_VERSION\" ]; then PS1='(envc:{name}) \\u@\\h:\\w\\$ '; else PS1='(envc:{name}) # '; fi\n"
    );
    let script = format!(
        "printf '%s' {} > /tmp/.envc-shellrc; \
         if command -v bash >/dev/null; then exec bash --rcfile /tmp/.envc-shellrc -i; \
         else ENV=/tmp/.envc-shellrc exec sh -i; fi",
        sh_quote(&rc)
    );
    vec!["/bin/sh".into(), "-c".into(), script]
}

/// Single-quotes `s` for sh.
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Builds what is missing, then prints the working root's path (a summary goes to stderr).
pub fn apply(
    store: &Path,
    backend: Option<Backend>,
    spec: &Path,
    reset: bool,
    locked: bool,
    push: bool,
    remote: &RemoteArgs,
) -> Result<(), CliError> {
    if push && (remote.remote.as_deref().is_none_or(str::is_empty) || remote.sign_key.is_none()) {
        return Err(usage(
            "--push needs --remote REF and --sign-key FILE (or ENVC_REMOTE and ENVC_SIGNING_KEY)"
                .into(),
        ));
    }
    let compiled = compile_for(spec, store)?;
    let (plan, lock) = plan_and_lock(&compiled, spec, store, locked, true)?;
    let mut rt = crate::store::open(store, backend)?;
    crate::commands::remote::use_remote(&mut rt, remote, true)?;
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
    if push {
        crate::commands::remote::push_plan(&rt, &plan, true)?;
    }
    if crate::report::json() {
        crate::report::emit(
            "done",
            serde_json::json!({
                "built": applied.built,
                "pulled": applied.pulled,
                "cached": applied.cached,
                "root": applied.root.display().to_string(),
                "root_created": applied.fresh_root,
            }),
        );
    } else {
        let _ = writeln!(
            std::io::stderr(),
            "envc: {} built, {}{} cached; root {}",
            applied.built,
            if applied.pulled > 0 {
                format!("{} pulled, ", applied.pulled)
            } else {
                String::new()
            },
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
    // `envc shell`: the shell, with the environment's name in its prompt.
    let argv = if argv.is_empty() {
        shell_command(&plan.name)
    } else {
        argv
    };
    let mut rt = crate::store::open(store, backend)?;
    crate::commands::remote::use_remote(&mut rt, &target.remote, true)?;
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
    run(store, backend, target, Vec::new())
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
            exact: false,
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

#[cfg(test)]
mod tests {
    use super::shell_command;

    #[test]
    fn the_shell_prompt_names_the_environment() {
        let argv = shell_command("rust-ci");
        assert_eq!(argv[..2], ["/bin/sh", "-c"]);
        assert!(
            argv[2].contains("(envc:rust-ci) \\u@\\h:\\w\\$ "),
            "{}",
            argv[2]
        );
        assert!(argv[2].contains("exec bash --rcfile /tmp/.envc-shellrc -i"));
        // Nothing of a name reaches the shell unquoted.
        let argv = shell_command("x';reboot;'");
        assert!(!argv[2].contains("reboot;"), "{}", argv[2]);
    }
}
