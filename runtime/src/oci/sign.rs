//! ed25519 keys and layer signatures (filled in below).
#![forbid(unsafe_code)]
