//! The envc runtime: realizes a [`envc_plan::Plan`] as cached copy-on-write snapshots.
//!
//! - [`store`]: the store on disk (sealed layers by id, metadata, locks, working roots).
//! - [`backend`]: how layers and roots are made: overlayfs (default) and btrfs, behind one trait.
//! - [`sandbox`]: running a step inside a root, in fresh namespaces.
//! - [`apply`]: the main job: build what is missing, reuse what is stored, give a working root.
//!
//! `unsafe` lives only in [`sys`].
#![deny(unsafe_code)]

pub mod apply;
pub mod aptsrc;
pub mod backend;
pub mod maintain;
pub mod sandbox;
pub mod store;
#[allow(unsafe_code)]
pub mod sys;
pub mod tools;
pub mod warning;

pub use apply::{Applied, ApplyError, Event, Runtime};
pub use backend::BackendKind;
pub use store::Store;
pub use warning::Warning;
