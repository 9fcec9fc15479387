//! Layers off the machine: the remote layer cache on an OCI registry, and images exported for
//! other tools.
//!
//! - [`archive`]: one sealed layer as one reproducible tar stream (its difference from its
//!   parent, whiteouts in the OCI forms), and such a stream unpacked into a build, never outside
//!   it.
//! - [`registry`]: the OCI distribution API client (anonymous, basic and bearer-token auth,
//!   timeouts, bounded retries, size limits, digests checked as blobs arrive).
//! - [`sign`]: ed25519 keys and the signature that covers what a pushed layer claims.
#![forbid(unsafe_code)]

pub mod archive;
pub mod sign;
