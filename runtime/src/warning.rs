//! Warnings: conditions worth telling the user that do not stop the operation. The runtime
//! returns them as data (in events and reports); only the binary prints them.
#![forbid(unsafe_code)]

use serde::Serialize;

/// A condition worth telling the user.
#[derive(Debug, Clone, PartialEq, Serialize, thiserror::Error)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Warning {
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
}
