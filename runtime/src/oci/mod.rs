//! Layers off the machine: the remote layer cache on an OCI registry, and images exported for
//! other tools.
//!
//! - [`archive`]: one sealed layer as one reproducible tar stream (its difference from its
//!   parent, whiteouts in the OCI forms), and such a stream unpacked into a build, never outside
//!   it.
//! - [`registry`]: the OCI distribution API client (anonymous, basic and bearer-token auth,
//!   timeouts, bounded retries, size limits, digests checked as blobs arrive).
//! - [`export`]: a plan's stored layers as an OCI image layout (a directory or one tar), or its
//!   flattened root as one tar, for other tools (`envc export`).
//! - [`image`]: an `oci` base's layers unpacked, in order, into the base's directory.
//! - [`sign`]: ed25519 keys and the signature that covers what a pushed layer claims.
//! - [`remote`]: the remote layer cache: layers pushed as signed artifacts, pulled and checked.
#![forbid(unsafe_code)]

pub mod archive;
pub mod export;
pub mod image;
pub mod registry;
pub mod remote;
pub mod sign;
