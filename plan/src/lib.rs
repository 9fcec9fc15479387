//! The plan: what `envc` builds, as plain data, and the stable hashing that names every layer.
//!
//! This crate is shared by the compiler (which produces plans from specs) and the runtime (which
//! realizes them). It has no dependency on the spec language or its diagnostics, and it reads
//! nothing from the host (the compiler computes host files' digests), so the privileged code's
//! dependency tree stays small.
//!
//! A [`Plan`] is a chain of [`Layer`]s: the base first, then the spec's layers in order. Each
//! layer's [`LayerId`] is a blake3 hash (with a versioned context string) of the canonical encoding
//! of its [`key`](Layer::key): its parent's id and its ordered steps, with every host file a `copy`
//! reads folded in by content. Names, spans, paths on the host and mirrors never enter a key.
#![forbid(unsafe_code)]

pub mod digest;
pub mod env;
pub mod id;
pub mod key;
pub mod lock;
mod model;
pub mod name;

pub use digest::Digest;
pub use id::{IdParseError, LayerId};
pub use key::Key;
pub use model::{
    BASE_LAYER_NAME, Base, CacheMount, CopyKind, Layer, Mode, OciLayer, Plan, Step, SyncMode,
    valid_cache_name,
};
pub use name::{Name, NameError};

/// The most layers one environment may have, its base included: a working root stacks all of them
/// (overlayfs mounts at most 500 lower layers, `FILESYSTEM_MAX_STACK_DEPTH`'s cousin
/// `OVL_MAX_STACK`), and building layer N stacks the N-1 below it. The compiler refuses longer
/// chains at `check` time; a backend may use this to refuse a plan it was handed directly.
pub const MAX_LAYERS: usize = 500;
