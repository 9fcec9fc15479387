//! Store maintenance, above any one backend: why a layer misses the cache, garbage collection,
//! recovery of the store's records from the backend, removal of leftovers of dead processes, the
//! background reaping of old root snapshots, and the verification of stored layers' trees.
#![forbid(unsafe_code)]

mod gc;
mod leftovers;
mod reap;
mod recover;
mod verify;
mod why;

pub use gc::{GcPolicy, GcReport, gc};
pub use leftovers::{LOCKED_TMP_PREFIX, Leftovers, clean_leftovers, gc_leftovers};
pub use reap::{REAP_ARG, reap_main, spawn_reaper};
pub use recover::{Recovered, recover};
pub use verify::{LayerVerdict, Verdict, Verified, verify};
pub use why::{FieldDiff, LayerWhy, diff, why};
