//! The envc runtime: realizes a [`envc_plan::Plan`] as cached copy-on-write snapshots.
//!
//! - [`apply`]: the main job: build what is missing, reuse what is stored, give a working root.
//! - [`store`]: the store on disk (records of sealed layers and working roots, locks, caches).
//! - [`backend`]: how layers and roots are made (overlayfs, btrfs, LVM thin), behind one trait
//!   that knows nothing of the store's records.
//! - [`maintain`]: store-level upkeep above any backend: `why`, `gc`, recovery, reaping.
//! - [`sandbox`]: running a step inside a root, in fresh namespaces.
//! - [`tools`]: the one runner of external programs (contained: see [`sandbox`]); [`aptsrc`]: the
//!   host's apt sources.
//! - [`debs`]: the locked `.deb` files: kept by sha256 in the store, downloaded and verified,
//!   laid out as the local repository a locked installation uses.
//! - [`tree`]: the one way a tree of the store is removed (never through a mount or a symlink).
//! - [`digest`]: the tree digest of a layer (recorded at seal, recomputed by `envc verify`).
//! - [`warning`]: conditions reported as data, printed only by the binary.
//!
//! Dependency direction: `apply` -> `maintain` -> `store` -> `backend` -> `sandbox` types,
//! `tools`, `tree`, `digest`, `sys`. Nothing below `store` imports it.
//!
//! `unsafe` lives only in [`sys`]'s real implementation: the crate denies `unsafe_code` (a
//! crate-level `forbid` could not be lifted for that one module), `sys` allows it for that
//! module alone, and every other file forbids it.
#![deny(unsafe_code)]

pub mod apply;
pub mod aptsrc;
pub mod backend;
pub mod debs;
pub mod digest;
pub mod failpoint;
pub mod maintain;
pub mod oci;
pub mod sandbox;
pub mod store;
pub mod sys;
pub mod tools;
pub mod tree;
pub mod warning;

pub use apply::{Applied, ApplyError, Event, Runtime, Update};
pub use backend::BackendKind;
pub use store::Store;
pub use warning::Warning;
