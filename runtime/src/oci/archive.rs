//! LOCAL STUB (not committed): the API of wt-archive's archive module, for compiling export.
#![forbid(unsafe_code)]
use std::io::{Read, Write};
use std::path::Path;

pub enum Source<'a> {
    Upper(&'a Path),
    Diff {
        parent: Option<&'a Path>,
        tree: &'a Path,
    },
}
pub struct Packed {
    pub entries: u64,
    pub bytes: u64,
    pub sha256: [u8; 32],
}
#[derive(Debug, thiserror::Error)]
#[error("archive stub")]
pub struct ArchiveError;
pub fn pack(_source: Source<'_>, _out: &mut dyn Write) -> Result<Packed, ArchiveError> {
    Err(ArchiveError)
}
pub enum Target<'a> {
    Upper(&'a Path),
    Tree(&'a Path),
}
#[derive(Default)]
pub struct Limits {
    pub max_entries: u64,
    pub max_bytes: u64,
    pub max_xattr_value: usize,
}
pub struct Unpacked;
pub fn unpack(_t: Target<'_>, _i: &mut dyn Read, _l: &Limits) -> Result<Unpacked, ArchiveError> {
    Err(ArchiveError)
}
