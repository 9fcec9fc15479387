//! The `envc` binary: wires the compiler (and later the runtime) to the command line and owns all
//! rendering of diagnostics and progress.
#![forbid(unsafe_code)]

mod cli;
mod ops;

use std::io::{IsTerminal, Write};
use std::path::Path;
use std::process::ExitCode;

use clap::Parser;
use envc_compiler::{Compiled, SpecError};
use miette::{GraphicalReportHandler, GraphicalTheme};

use crate::cli::{Cli, Color, Command};

/// Documented exit codes.
pub(crate) mod exit {
    /// The command did what was asked.
    pub const SUCCESS: u8 = 0;
    /// An operation failed (I/O, build step, store).
    pub const FAILURE: u8 = 1;
    /// The command line was wrong.
    pub const USAGE: u8 = 2;
    /// A spec is invalid.
    pub const INVALID_SPEC: u8 = 3;
}

pub(crate) struct Ui {
    handler: GraphicalReportHandler,
}

impl Ui {
    fn new(color: Color) -> Ui {
        let colored = match color {
            Color::Always => true,
            Color::Never => false,
            Color::Auto => {
                std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none()
            }
        };
        let theme = if colored {
            GraphicalTheme::unicode()
        } else {
            GraphicalTheme::unicode_nocolor()
        };
        let width = std::env::var("COLUMNS")
            .ok()
            .and_then(|c| c.parse().ok())
            .unwrap_or(100);
        Ui {
            handler: GraphicalReportHandler::new_themed(theme)
                .with_width(width)
                .with_links(false)
                .with_word_separator(textwrap::WordSeparator::AsciiSpace),
        }
    }

    pub(crate) fn error(&self, msg: &str) {
        let _ = writeln!(std::io::stderr().lock(), "error: {msg}");
    }

    pub(crate) fn report(&self, diag: &dyn miette::Diagnostic) {
        let mut out = String::new();
        if self.handler.render_report(&mut out, diag).is_err() {
            out = format!("error: {diag}\n");
        }
        let _ = writeln!(std::io::stderr().lock(), "{out}");
    }

    fn spec_errors(&self, spec: &Path, errors: &[SpecError]) {
        for e in errors {
            self.report(e);
        }
        let n = errors.len();
        let _ = writeln!(
            std::io::stderr().lock(),
            "error: {} is invalid: {n} error{}",
            spec.display(),
            if n == 1 { "" } else { "s" }
        );
    }
}

fn compile(ui: &Ui, spec: &Path) -> Result<Compiled, u8> {
    compile_with(ui, spec, &envc_compiler::Options::default())
}

/// Compiles for a runtime command: big host files' digests are remembered in the store's cache,
/// so a warm apply of a spec with a large tarball base does not read the tarball again.
fn compile_for(ui: &Ui, spec: &Path, store: &Path) -> Result<Compiled, u8> {
    compile_with(
        ui,
        spec,
        &envc_compiler::Options {
            digest_cache: Some(store.join("cache").join("digests")),
        },
    )
}

fn compile_with(ui: &Ui, spec: &Path, options: &envc_compiler::Options) -> Result<Compiled, u8> {
    envc_compiler::compile_with(spec, options).map_err(|errors| {
        ui.spec_errors(spec, &errors);
        exit::INVALID_SPEC
    })
}

fn print_plan(compiled: &Compiled, json: bool) -> Result<(), u8> {
    let plan = &compiled.plan;
    let mut out = std::io::stdout().lock();
    let text = if json {
        let mut s = serde_json::to_string_pretty(plan).map_err(|_| exit::FAILURE)?;
        s.push('\n');
        s
    } else {
        let n = plan.layers.len();
        let mut s = format!(
            "{} ({n} layer{})\n",
            plan.name,
            if n == 1 { "" } else { "s" }
        );
        let width = plan.layers.iter().map(|l| l.name.len()).max().unwrap_or(4);
        for layer in &plan.layers {
            for (i, step) in layer.steps.iter().enumerate() {
                if i == 0 {
                    s.push_str(&format!(
                        "  {:width$}  {}  {}\n",
                        layer.name,
                        layer.id.short(16),
                        step.summary()
                    ));
                } else {
                    s.push_str(&format!("  {:width$}  {:16}  {}\n", "", "", step.summary()));
                }
            }
        }
        s
    };
    out.write_all(text.as_bytes()).map_err(|_| exit::FAILURE)
}

/// `envc run` and `envc shell`: the command's exit status, or envc's own on failure.
fn run_in(
    ui: &Ui,
    store: &Path,
    backend: Option<&str>,
    target: &cli::RunTarget,
    argv: Vec<String>,
) -> u8 {
    let result = compile_for(ui, &target.spec, store).and_then(|c| {
        let rt = ops::runtime(ui, store, backend)?;
        ops::run(ui, &rt, &c, argv, target.keep, !target.no_network)
    });
    match result {
        Ok(code) | Err(code) => code,
    }
}

fn run(cli: Cli) -> u8 {
    let ui = Ui::new(cli.color);
    let result = match cli.command {
        Command::Check { specs } => {
            let mut worst = exit::SUCCESS;
            for spec in &specs {
                match compile(&ui, spec) {
                    Ok(c) => {
                        let n = c.plan.layers.len();
                        println!(
                            "{}: ok ({n} layer{}, {})",
                            spec.display(),
                            if n == 1 { "" } else { "s" },
                            c.plan.name
                        );
                    }
                    Err(code) => worst = worst.max(code),
                }
            }
            if worst == exit::SUCCESS {
                Ok(())
            } else {
                Err(worst)
            }
        }
        Command::Plan { spec, json } => compile(&ui, &spec).and_then(|c| print_plan(&c, json)),
        Command::Apply { spec, reset } => compile_for(&ui, &spec, &cli.store).and_then(|c| {
            let rt = ops::runtime(&ui, &cli.store, cli.backend.as_deref())?;
            ops::apply(&ui, &rt, &c, reset)
        }),
        Command::Run { target, command } => {
            return run_in(&ui, &cli.store, cli.backend.as_deref(), &target, command);
        }
        Command::Shell { target } => {
            let shell = "if command -v bash >/dev/null; then exec bash -l; else exec sh -l; fi";
            return run_in(
                &ui,
                &cli.store,
                cli.backend.as_deref(),
                &target,
                vec!["/bin/sh".into(), "-c".into(), shell.into()],
            );
        }
        Command::Rm { name } => ops::runtime(&ui, &cli.store, cli.backend.as_deref())
            .and_then(|rt| ops::rm(&ui, &rt, &name)),
        Command::Why { spec, json } => compile_for(&ui, &spec, &cli.store).and_then(|c| {
            let rt = ops::runtime(&ui, &cli.store, cli.backend.as_deref())?;
            ops::why(&ui, &rt, &c, json)
        }),
        Command::Gc {
            older_than,
            keep_bytes,
            dry_run,
        } => ops::runtime(&ui, &cli.store, cli.backend.as_deref()).and_then(|rt| {
            ops::gc(
                &ui,
                &rt,
                older_than.as_deref(),
                keep_bytes.as_deref(),
                dry_run,
            )
        }),
        Command::Ls { json } => ops::runtime(&ui, &cli.store, cli.backend.as_deref())
            .and_then(|rt| ops::ls(&ui, &rt, json)),
        Command::Store { command } => ops::store(&ui, &cli.store, command),
    };
    match result {
        Ok(()) => exit::SUCCESS,
        Err(code) => code,
    }
}

fn main() -> ExitCode {
    // The sandbox helper: envc re-executes itself to get a fresh single-threaded process for
    // namespace and mount work.
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args
        .get(1)
        .is_some_and(|a| a == envc_runtime::sandbox::HELPER_ARG)
    {
        let code = envc_runtime::sandbox::helper_main(&args[2..]);
        return ExitCode::from(u8::try_from(code).unwrap_or(125));
    }
    if args
        .get(1)
        .is_some_and(|a| a == envc_runtime::sandbox::NOSYNC_ARG)
    {
        let code = envc_runtime::sandbox::nosync_main(&args[2..]);
        return ExitCode::from(u8::try_from(code).unwrap_or(125));
    }
    if args
        .get(1)
        .is_some_and(|a| a == envc_runtime::maintain::REAP_ARG)
    {
        let code = envc_runtime::maintain::reap_main(&args[2..]);
        return ExitCode::from(u8::try_from(code).unwrap_or(1));
    }
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() {
                exit::USAGE
            } else {
                exit::SUCCESS
            });
        }
    };
    ExitCode::from(run(cli))
}
