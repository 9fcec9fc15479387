//! The command line: clap derive types only.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

/// envc compiles a declarative build-environment spec (KDL) into a chain of content-addressed
/// layers and realizes them as cached copy-on-write snapshots.
#[derive(Debug, Parser)]
#[command(name = "envc", version, propagate_version = true, max_term_width = 100)]
#[command(after_help = "Exit codes: 0 success, 1 operation failed, 2 usage error, 3 invalid spec.")]
pub struct Cli {
    /// When to use colour in diagnostics.
    #[arg(long, global = true, value_enum, default_value_t = Color::Auto)]
    pub color: Color,

    #[command(subcommand)]
    pub command: Command,
}

/// Colour choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Color {
    /// Colour when stderr is a terminal and NO_COLOR is not set.
    Auto,
    /// Always colour.
    Always,
    /// Never colour.
    Never,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Validate specs: report every error in each, exit 0 when all are valid.
    Check {
        /// Spec files to check.
        #[arg(required = true, value_name = "SPEC")]
        specs: Vec<PathBuf>,
    },
    /// Show the layers a spec compiles to, in order, with their ids and steps.
    Plan {
        /// The spec file.
        #[arg(value_name = "SPEC")]
        spec: PathBuf,
        /// Print the plan as JSON.
        #[arg(long)]
        json: bool,
    },
}
