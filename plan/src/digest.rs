//! Content digests as they appear in a plan: the 32-byte blake3 digest of a host file or tree
//! that a `copy` step or a `tar` base reads, and the canonical encoding that turns a tree's entries
//! into its digest.
//!
//! Reading the host is not done here: the compiler walks a source to put its digest in the plan,
//! and the runtime's copy feeds the entries it copies to the same [`TreeHasher`] to check that it
//! copied what was hashed. Both therefore agree by construction.
//!
//! A file's content digest is the plain blake3 hash of its bytes (so it matches `b3sum`): see
//! [`ContentHasher`]. A tree's digest is blake3 (derive-key mode, [`TREE_CONTEXT`]) over: the
//! number of entries (u64 LE), then every entry in canonical order (depth-first, children sorted by
//! name bytes), each as its relative path (u64 LE length, raw bytes; empty for the top) followed
//! by `f`, the permission bits (u32 LE) and the content digest for a regular file; `d` and the
//! permission bits for a directory; `l` and the target (u64 LE length, raw bytes) for a symbolic
//! link. Owners and timestamps are not part of it: envc does not copy them. This encoding enters
//! layer ids, so it is as stable as [`crate::key`]'s: changing it needs a new context string.

use std::cmp::Ordering;
use std::fmt;

use crate::id::{ID_LEN, hex};

/// A 32-byte content digest.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Digest(pub [u8; ID_LEN]);

impl Digest {
    /// The digest as 64 lowercase hex digits.
    pub fn to_hex(&self) -> String {
        hex(&self.0)
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({})", &self.to_hex()[..16])
    }
}

crate::id::hex_text!(Digest);

/// The context string of tree digests.
pub const TREE_CONTEXT: &str = "envc 2026-11-25 tree digest v1";

/// Hashes a file's content, fed in pieces in order: the plain blake3 hash of the bytes.
#[derive(Debug, Clone, Default)]
pub struct ContentHasher(blake3::Hasher);

impl ContentHasher {
    /// A hasher that has seen no bytes.
    pub fn new() -> ContentHasher {
        ContentHasher(blake3::Hasher::new())
    }

    /// Feeds the next bytes of the content.
    pub fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    /// The digest of all bytes fed.
    pub fn finish(&self) -> Digest {
        Digest(*self.0.finalize().as_bytes())
    }
}

/// One entry of a tree, as its digest records it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum TreeEntry {
    File { mode: u32, content: Digest },
    Dir { mode: u32 },
    Symlink { target: Vec<u8> },
}

/// Builds a tree digest from its entries, given in any order.
///
/// Relative paths are raw bytes with `/` between components and no leading `/`: the empty path
/// is the top itself (a file source is a tree of one entry with the empty path). Permission bits
/// are masked to `0o7777`. [`TreeHasher::finish`] puts the entries in canonical order (the order a
/// depth-first walk with children sorted by name bytes meets them), so a walker may visit them in
/// any order, in parallel or not.
#[derive(Debug, Clone, Default)]
pub struct TreeHasher {
    entries: Vec<(Vec<u8>, TreeEntry)>,
}

impl TreeHasher {
    /// A hasher with no entries.
    pub fn new() -> TreeHasher {
        TreeHasher::default()
    }

    /// Records a regular file with its permission bits and content digest.
    pub fn file(&mut self, rel: &[u8], mode: u32, content: Digest) {
        let mode = mode & 0o7777;
        self.entries
            .push((rel.to_vec(), TreeEntry::File { mode, content }));
    }

    /// Records a directory with its permission bits.
    pub fn dir(&mut self, rel: &[u8], mode: u32) {
        let mode = mode & 0o7777;
        self.entries.push((rel.to_vec(), TreeEntry::Dir { mode }));
    }

    /// Records a symbolic link with its target (never followed).
    pub fn symlink(&mut self, rel: &[u8], target: &[u8]) {
        self.entries.push((
            rel.to_vec(),
            TreeEntry::Symlink {
                target: target.to_vec(),
            },
        ));
    }

    /// Adds the entries of another hasher (a subtree walked on its own), paths unchanged.
    pub fn extend(&mut self, other: TreeHasher) {
        self.entries.extend(other.entries);
    }

    /// How many entries were recorded.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no entry was recorded.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The digest of the tree.
    pub fn finish(mut self) -> Digest {
        self.entries.sort_by(|a, b| canonical_order(&a.0, &b.0));
        let mut h = blake3::Hasher::new_derive_key(TREE_CONTEXT);
        let put = |h: &mut blake3::Hasher, b: &[u8]| {
            h.update(&(b.len() as u64).to_le_bytes());
            h.update(b);
        };
        h.update(&(self.entries.len() as u64).to_le_bytes());
        for (rel, entry) in &self.entries {
            put(&mut h, rel);
            match entry {
                TreeEntry::File { mode, content } => {
                    h.update(b"f");
                    h.update(&mode.to_le_bytes());
                    h.update(&content.0);
                }
                TreeEntry::Dir { mode } => {
                    h.update(b"d");
                    h.update(&mode.to_le_bytes());
                }
                TreeEntry::Symlink { target } => {
                    h.update(b"l");
                    put(&mut h, target);
                }
            }
        }
        Digest(*h.finalize().as_bytes())
    }
}

/// The canonical order of relative paths: component by component, each compared as bytes. This is
/// the order of a depth-first walk with sorted children (`a`, `a/b`, `a.c`), which a plain byte
/// comparison of whole paths is not (`.` sorts before `/`).
fn canonical_order(a: &[u8], b: &[u8]) -> Ordering {
    fn parts(p: &[u8]) -> impl Iterator<Item = &[u8]> {
        p.split(|&c| c == b'/').filter(|s| !s.is_empty())
    }
    parts(a).cmp(parts(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip() {
        let d = Digest([0x5a; ID_LEN]);
        assert_eq!(d.to_hex().parse::<Digest>().unwrap(), d);
        let json = serde_json::to_string(&d).unwrap();
        assert_eq!(json, format!("\"{}\"", "5a".repeat(ID_LEN)));
        assert_eq!(serde_json::from_str::<Digest>(&json).unwrap(), d);
        assert!(serde_json::from_str::<Digest>("\"5a\"").is_err());
    }

    fn content(bytes: &[u8]) -> Digest {
        let mut h = ContentHasher::new();
        for piece in bytes.chunks(2) {
            h.update(piece);
        }
        h.finish()
    }

    /// The entries of the compiler's pinned test tree (`compiler/src/digest`), in walk order.
    fn pinned_entries() -> Vec<(&'static [u8], u8)> {
        vec![
            (b"", 0),
            (b"a", 1),
            (b"a/b", 2),
            (b"a/b/x", 3),
            (b"a/l", 4),
            (b"a.c", 5),
            (b"a.c/y", 6),
            (b"a0", 7),
        ]
    }

    fn feed(h: &mut TreeHasher, rel: &[u8], which: u8) {
        match which {
            0 => h.dir(rel, 0o40755),
            1 => h.dir(rel, 0o750),
            2 => h.dir(rel, 0o700),
            3 => h.file(rel, 0o100644, content(b"one")),
            4 => h.symlink(rel, b"a/b/x"),
            5 => h.dir(rel, 0o2775),
            6 => h.file(rel, 0o4755, content(b"two")),
            _ => h.file(rel, 0o600, content(b"")),
        }
    }

    #[test]
    fn content_digests_are_plain_blake3() {
        assert_eq!(content(b"hello").0, *blake3::hash(b"hello").as_bytes());
    }

    /// The value the compiler's walker computed for this tree before the encoding moved here:
    /// fed in walk order, in reverse, or interleaved, the digest is the same.
    #[test]
    fn tree_digest_is_pinned_and_independent_of_feeding_order() {
        const PINNED: &str = "de77b62fa469d3cd1ab8a163d238d67337f78bcb2556593456e7a7a0e1117c9d";
        let mut forward = TreeHasher::new();
        for (rel, w) in pinned_entries() {
            feed(&mut forward, rel, w);
        }
        assert_eq!(forward.len(), 8);
        assert_eq!(forward.finish().to_hex(), PINNED);
        let mut backward = TreeHasher::new();
        for (rel, w) in pinned_entries().into_iter().rev() {
            feed(&mut backward, rel, w);
        }
        assert_eq!(backward.finish().to_hex(), PINNED);
        // Subtrees hashed apart and merged, as a parallel walker does.
        let (mut top, mut sub) = (TreeHasher::new(), TreeHasher::new());
        for (i, (rel, w)) in pinned_entries().into_iter().enumerate() {
            feed(if i % 2 == 0 { &mut sub } else { &mut top }, rel, w);
        }
        top.extend(sub);
        assert_eq!(top.finish().to_hex(), PINNED);
        // A single file is a tree of one entry with the empty path.
        let mut one = TreeHasher::new();
        one.file(b"", 0o644, content(b"one"));
        assert_eq!(
            one.finish().to_hex(),
            "c6685ccf35d668e695b05d9b0094579dba4fef31a6119ee4e3ae802ea570eeec"
        );
    }

    #[test]
    fn every_field_of_an_entry_counts() {
        let digest = |f: &dyn Fn(&mut TreeHasher)| {
            let mut h = TreeHasher::new();
            h.dir(b"", 0o755);
            f(&mut h);
            h.finish()
        };
        let base = digest(&|h| h.file(b"x", 0o644, content(b"1")));
        for other in [
            digest(&|h| h.file(b"y", 0o644, content(b"1"))),
            digest(&|h| h.file(b"x", 0o600, content(b"1"))),
            digest(&|h| h.file(b"x", 0o644, content(b"2"))),
            digest(&|h| h.symlink(b"x", b"1")),
            digest(&|h| h.dir(b"x", 0o644)),
            digest(&|_| {}),
        ] {
            assert_ne!(other, base);
        }
        assert_ne!(
            digest(&|h| h.symlink(b"x", b"a")),
            digest(&|h| h.symlink(b"x", b"b"))
        );
    }

    #[test]
    fn canonical_order_is_depth_first_with_sorted_names() {
        let mut paths: Vec<&[u8]> = vec![b"a.c", b"a/b", b"", b"a0", b"a", b"a/b/x", b"a/l"];
        paths.sort_by(|a, b| canonical_order(a, b));
        let want: Vec<&[u8]> = vec![b"", b"a", b"a/b", b"a/b/x", b"a/l", b"a.c", b"a0"];
        assert_eq!(paths, want);
    }
}
