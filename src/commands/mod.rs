//! The subcommands, one module each; every one returns its failure as a [`crate::error::CliError`].

pub mod apply;
pub mod check;
pub mod docs;
pub mod export;
pub mod fmt;
pub mod gc;
pub mod lock;
pub mod ls;
pub mod plan;
pub mod remote;
pub mod rm;
pub mod store;
pub mod verify;
pub mod why;
