//! Warnings: conditions worth telling the user that do not stop the operation. The runtime
//! returns them as data (in events and reports); only the binary prints them.
#![forbid(unsafe_code)]

use std::path::PathBuf;

use serde::Serialize;

/// A condition worth telling the user.
#[derive(Debug, Clone, PartialEq, Serialize, thiserror::Error)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Warning {
    /// A layer the remote cache has was not taken from it: it is built here.
    #[error(
        "layer `{layer}` ({id}) was not taken from the remote cache {remote}: {reason}; it is built here"
    )]
    RemoteLayer {
        /// The layer's name.
        layer: String,
        /// Its id.
        id: String,
        /// The remote cache.
        remote: String,
        /// Why.
        reason: String,
    },
    /// The remote cache cannot be reached: it is not asked again in this run.
    #[error("the remote cache {remote} cannot be used ({reason}): layers are built here")]
    RemoteOff {
        /// The remote cache.
        remote: String,
        /// Why.
        reason: String,
    },
    /// A thin pool is filling up.
    #[error(
        "thin pool {pool} is {data:.1}% full (data) and {metadata:.1}% (metadata); envc refuses to create volumes above {refuse_at:.0}%: run `envc gc`, or grow the pool with lvextend"
    )]
    PoolFilling {
        /// VG/POOL.
        pool: String,
        /// Data usage, percent.
        data: f64,
        /// Metadata usage, percent.
        metadata: f64,
        /// The usage above which envc refuses.
        refuse_at: f64,
    },
    /// A working root's old snapshots could not be removed yet (a later gc retries).
    #[error("cannot remove old snapshots of working root `{root}`: {reason}")]
    ReapFailed {
        /// The environment.
        root: String,
        /// Why.
        reason: String,
    },
    /// A working root's record cannot be read, so gc cannot know which layers it uses, and
    /// removes none.
    #[error(
        "working root `{root}` has no readable record ({reason}): gc removes no layer until it is repaired (`envc rm {root}`, or `envc apply` of its spec)"
    )]
    RootUnknown {
        /// The environment.
        root: String,
        /// What is wrong with its record.
        reason: String,
    },
    /// A reused layer had no record, or an unreadable one: it was rewritten from the spec (the
    /// spec defines the layer; only its times, and for some backends its size, are lost).
    #[error(
        "layer `{layer}` ({id}) had {problem}; {} was rewritten from the spec{}",
        path.display(),
        if *size_known { "" } else { " (its size is unknown)" }
    )]
    RecordRepaired {
        /// The layer's name.
        layer: String,
        /// Its id.
        id: String,
        /// The record's file.
        path: PathBuf,
        /// What was wrong (`no record`, `an unreadable record (...)`).
        problem: String,
        /// Whether the size in the new record was measured.
        size_known: bool,
    },
    /// A record could not be read or written, so it was not updated (a layer's last use).
    #[error("cannot update {}: {reason}", path.display())]
    RecordNotUpdated {
        /// The record's file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// Something of the wrong type is where the store keeps a layer (a symlink, a file); it is
    /// never used and never removed by envc.
    #[error("{message}")]
    Damaged {
        /// Where.
        path: PathBuf,
        /// What is wrong and how to repair it.
        message: String,
    },
    /// A leftover of a process that is gone could not be removed (a later gc retries).
    #[error("cannot remove leftover {}: {reason}", path.display())]
    LeftoverKept {
        /// The leftover.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}
