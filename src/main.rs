//! The `envc` binary's entry point: the hidden helper modes, then the command line dispatched to
//! its command, whose failure is rendered once.
//!
//! The binary wires the compiler to the runtime; it alone renders diagnostics (`report`) and
//! progress (`progress`). Every runtime call that sets up a store is in `store`.
#![forbid(unsafe_code)]

mod args;
mod cli;
mod commands;
mod compile;
mod error;
mod human;
mod lockfile;
mod progress;
mod report;
mod store;

use std::ffi::OsString;
use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, Color, Command, KeyCommand};
use crate::commands::{
    apply, check, docs, export, fmt, gc, lock, ls, plan, remote, rm, verify, why,
};
use crate::error::{CliError, exit};
use crate::report::Ui;

/// Runs the parsed command: its exit status, or why it failed.
fn dispatch(cli: Cli) -> Result<u8, CliError> {
    let store = cli.store.as_path();
    let backend = cli.backend;
    let done = match cli.command {
        Command::Check { specs, .. } => check::check(&specs),
        Command::Plan { spec, json, locked } => plan::plan(&spec, json, locked, store),
        Command::Apply {
            spec,
            reset,
            locked,
            push,
            remote,
            ..
        } => apply::apply(store, backend, &spec, reset, locked, push, &remote),
        Command::Push {
            spec,
            locked,
            remote: args,
        } => return remote::push(store, backend, &spec, locked, &args),
        Command::Key {
            command: KeyCommand::Generate { name, dir },
        } => remote::key_generate(&name, &dir),
        Command::Lock {
            spec,
            update,
            check,
            digests,
        } => return lock::lock(store, backend, &spec, update, check, digests),
        Command::Fetch { spec } => lock::fetch(store, backend, &spec),
        Command::Run {
            target, command, ..
        } => return apply::run(store, backend, &target, command),
        Command::Shell { target } => return apply::shell(store, backend, &target),
        Command::Fmt { specs, check } => return fmt::fmt(&specs, check),
        Command::Completions { shell } => docs::completions(shell),
        Command::Man { dir } => docs::man(dir.as_deref()),
        Command::Rm { name } => rm::rm(store, backend, &name),
        Command::Why { spec, json } => why::why(store, backend, &spec, json),
        Command::Gc { caches: true, .. } => gc::empty_caches(store, backend),
        Command::Gc {
            older_than,
            keep_bytes,
            dry_run,
            ..
        } => gc::gc(store, backend, older_than, keep_bytes, dry_run),
        Command::Ls { json } => ls::ls(store, backend, json),
        Command::Verify { spec, json } => {
            return verify::verify(store, backend, spec.as_deref(), json);
        }
        Command::Export { spec, to } => export::export(store, backend, &spec, &to),
        Command::Store { command } => commands::store::store(store, &command),
    };
    done.map(|()| exit::SUCCESS)
}

/// The hidden helper modes: envc re-executes itself under these first arguments (a fresh
/// single-threaded process for namespace and mount work, contained host tools, LVM snapshot
/// reaping, background removal of discarded trees).
fn helper(args: &[OsString]) -> Option<ExitCode> {
    use envc_runtime::{maintain, sandbox, tree};
    let (first, rest) = args.get(1).map(|a| (a, &args[2..]))?;
    let (code, fallback) = if first == sandbox::HELPER_ARG {
        (sandbox::helper_main(rest), 125)
    } else if first == sandbox::CONTAIN_ARG {
        (sandbox::contain_main(rest), 125)
    } else if first == maintain::REAP_ARG {
        (maintain::reap_main(rest), 1)
    } else if first == tree::REMOVE_ARG {
        (tree::remove_main(rest), 1)
    } else {
        return None;
    };
    Some(ExitCode::from(u8::try_from(code).unwrap_or(fallback)))
}

fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().collect();
    // Descriptors inherited from whoever started envc (a shell's `7</`, a CI runner's) reach
    // nothing envc executes: not a host tool, not mmdebstrap's maintainer scripts, not a step.
    // Descriptors envc hands to its own helpers are claimed by them before anything is executed.
    let _ = envc_runtime::sys::kernel().close_fds_on_exec(3);
    // Host tools run contained through this binary (in every mode, the background reaper's
    // included), and discarded trees are removed by it.
    if let Ok(exe) = std::env::current_exe() {
        envc_runtime::tools::set_helper(exe);
    }
    if let Some(code) = helper(&args) {
        return code;
    }
    // Before parsing: a bad value of a --json command is a JSON error event too.
    let json_commands = ["check", "apply", "run"];
    report::set_json(
        args.iter().skip(1).any(|a| a == "--json")
            && args
                .iter()
                .skip(1)
                .find(|a| !a.to_string_lossy().starts_with('-'))
                .is_some_and(|c| json_commands.iter().any(|j| c == j)),
    );
    let cli = match Cli::try_parse_from(&args) {
        Ok(cli) => cli,
        // --help and --version.
        Err(e) if !e.use_stderr() => {
            let _ = e.print();
            return ExitCode::from(exit::SUCCESS);
        }
        Err(e) => return fail(&Ui::new(Color::Auto), &CliError::Usage(e)),
    };
    let ui = Ui::new(cli.color);
    report::set_json(matches!(
        cli.command,
        Command::Check { json: true, .. }
            | Command::Apply { json: true, .. }
            | Command::Run { json: true, .. }
    ));
    match dispatch(cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => fail(&ui, &e),
    }
}

/// Renders `e`: the one place a failure reaches the user.
fn fail(ui: &Ui, e: &CliError) -> ExitCode {
    ui.render(e);
    ExitCode::from(e.exit_code())
}
