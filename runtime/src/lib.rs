//! The envc runtime: realizes a [`envc_plan::Plan`] as cached copy-on-write snapshots.
//!
//! - [`store`]: the store on disk (sealed layers by id, metadata, locks, working roots).
//! - [`backend`]: how layers and roots are made: overlayfs (default) and btrfs, behind one trait.
//! - [`sandbox`]: running a step inside a root, in fresh namespaces.
//! - [`apply`]: the main job: build what is missing, reuse what is stored, give a working root.
//!
//! `unsafe` lives only in [`sys`]'s real implementation: the crate denies `unsafe_code` (a
//! crate-level `forbid` could not be lifted for that one module), `sys` allows it for that
//! module alone, and every other file forbids it.
#![deny(unsafe_code)]

pub mod apply;
pub mod aptsrc;
pub mod backend;
pub mod sandbox;
pub mod store;
pub mod sys;
pub mod tools;

pub use apply::{Applied, ApplyError, Event, Runtime};
pub use backend::BackendKind;
pub use store::Store;
pub mod maintain;
