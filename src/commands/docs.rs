//! `envc completions SHELL` and `envc man`: generated from the clap definitions, so they never
//! drift from the command line.

use std::io::Write;
use std::path::Path;

use clap::CommandFactory;

use crate::cli::Cli;
use crate::error::CliError;

/// Writes the completion script for `shell` to stdout.
pub fn completions(shell: clap_complete::Shell) -> Result<(), CliError> {
    let mut cmd = Cli::command();
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut cmd, "envc", &mut out);
    std::io::stdout()
        .write_all(&out)
        .map_err(|e| CliError::failed(format!("cannot write the completion script: {e}")))
}

/// Writes envc's man page to stdout, or with `dir` the page of envc and of each command into
/// `dir` (made when missing).
pub fn man(dir: Option<&Path>) -> Result<(), CliError> {
    let cmd = Cli::command();
    let Some(dir) = dir else {
        let mut out = Vec::new();
        render(&cmd, &mut out)?;
        return std::io::stdout()
            .write_all(&out)
            .map_err(|e| CliError::failed(format!("cannot write the man page: {e}")));
    };
    std::fs::create_dir_all(dir)
        .map_err(|e| CliError::failed(format!("cannot create {}: {e}", dir.display())))?;
    let mut pages = vec![("envc".to_owned(), cmd.clone())];
    for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
        let name = format!("envc-{}", sub.get_name());
        // clap names are `&'static str` without its `string` feature; a dozen short names, once,
        // in a process that then exits.
        let leaked: &'static str = Box::leak(name.clone().into_boxed_str());
        pages.push((name, sub.clone().name(leaked)));
    }
    for (name, page) in pages {
        let mut out = Vec::new();
        render(&page, &mut out)?;
        let path = dir.join(format!("{name}.1"));
        std::fs::write(&path, out)
            .map_err(|e| CliError::failed(format!("cannot write {}: {e}", path.display())))?;
        println!("{}", path.display());
    }
    Ok(())
}

fn render(cmd: &clap::Command, out: &mut Vec<u8>) -> Result<(), CliError> {
    clap_mangen::Man::new(cmd.clone())
        .render(out)
        .map_err(|e| CliError::failed(format!("cannot render the man page: {e}")))
}
