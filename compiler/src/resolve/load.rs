//! Loading: the spec's `extends` chain, each file read, parsed to a `KdlDocument`, decoded.

use std::fs;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use kdl::KdlDocument;
use miette::{NamedSource, SourceSpan};

use super::RootText;
use crate::ast::SpecFile;
use crate::decode;
use crate::error::{Errors, SpecError, Src};

/// One loaded spec file.
pub(super) struct File {
    pub(super) src: Src,
    /// The directory relative paths in this file are resolved against.
    pub(super) dir: PathBuf,
    pub(super) ast: SpecFile,
}

fn display(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

/// Lexically normalizes a path: drops `.` and folds `dir/..`; a `..` with nothing left to fold
/// stays (so a result starting with `..` leaves its starting directory).
pub(crate) fn normalize_lexically(path: &Path) -> PathBuf {
    let mut parts: Vec<Component<'_>> = Vec::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => match parts.last() {
                Some(Component::Normal(_)) => {
                    parts.pop();
                }
                Some(Component::RootDir | Component::Prefix(_)) => {}
                _ => parts.push(c),
            },
            other => parts.push(other),
        }
    }
    let out: PathBuf = parts.iter().collect();
    if out.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        out
    }
}

/// The most envc reads of a spec and the specs it extends together, in bytes (16 MiB). A spec is text a person writes; this is
/// some thousand times the largest real one, and keeps a file such as `/dev/zero` or a runaway
/// generator from growing memory without bound.
pub const MAX_SPEC_BYTES: u64 = 16 << 20;

/// The most spec files one `extends` chain may have, the compiled spec included.
pub const MAX_EXTENDS: usize = 64;

/// Why a spec file could not be read.
pub(super) enum ReadFailure {
    /// The operating system's error.
    Io(String),
    /// Not a regular file: what it is.
    NotAFile(&'static str),
    /// Larger than what is left of [`MAX_SPEC_BYTES`].
    TooLarge,
    /// Not UTF-8: the bytes, and where the first invalid byte is.
    NotUtf8(Vec<u8>, usize),
}

/// What a file that is not a regular file is, in words.
fn kind_of(ft: fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if ft.is_dir() {
        "a directory"
    } else if ft.is_fifo() {
        "a FIFO (named pipe)"
    } else if ft.is_char_device() {
        "a character device"
    } else if ft.is_block_device() {
        "a block device"
    } else if ft.is_socket() {
        "a socket"
    } else {
        "not a regular file"
    }
}

/// Reads a spec file: only a regular file, only up to `limit` bytes, only UTF-8.
///
/// The path is looked at first (so a device is never opened), then opened without blocking (a
/// FIFO swapped in after the look does not hang the open), and the opened file is looked at again
/// (that answer is the one that counts). At most one byte more than the limit is read.
pub(super) fn read_spec(path: &Path, limit: u64) -> Result<String, ReadFailure> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let io = |e: std::io::Error| ReadFailure::Io(e.to_string());
    let meta = fs::metadata(path).map_err(io)?;
    if !meta.file_type().is_file() {
        return Err(ReadFailure::NotAFile(kind_of(meta.file_type())));
    }
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(io)?;
    let meta = file.metadata().map_err(io)?;
    if !meta.file_type().is_file() {
        return Err(ReadFailure::NotAFile(kind_of(meta.file_type())));
    }
    if meta.len() > limit {
        return Err(ReadFailure::TooLarge);
    }
    // The size may change while reading: trust only what is read, never more than limit + 1.
    let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0) + 1);
    file.take(limit + 1).read_to_end(&mut bytes).map_err(io)?;
    if bytes.len() as u64 > limit {
        return Err(ReadFailure::TooLarge);
    }
    utf8(bytes)
}

fn utf8(bytes: Vec<u8>) -> Result<String, ReadFailure> {
    String::from_utf8(bytes).map_err(|e| {
        let at = e.utf8_error().valid_up_to();
        ReadFailure::NotUtf8(e.into_bytes(), at)
    })
}

/// The stack of the thread `kdl` parses text on that is not shallow: it may recurse up to
/// [`crate::guard::UNCERTAIN_BUDGET`] levels there; this leaves a wide margin over that bound.
/// Only the pages touched are ever mapped.
const KDL_STACK: usize = 256 << 20;

/// Parses with `kdl` on a thread with a large stack.
fn kdl_parse(text: &str) -> Result<KdlDocument, kdl::KdlError> {
    std::thread::scope(|scope| {
        let spawned = std::thread::Builder::new()
            .name("envc-kdl".into())
            .stack_size(KDL_STACK)
            .spawn_scoped(scope, || KdlDocument::parse_v2(text));
        match spawned {
            Ok(handle) => handle
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
            // No thread could be started: parse here.
            Err(_) => KdlDocument::parse_v2(text),
        }
    })
}

fn parse_file(src: &Src, text: &Arc<String>, errors: &mut Errors) -> Option<KdlDocument> {
    let (for_kdl, shallow) = match crate::guard::scan(text) {
        crate::guard::Verdict::Fine { for_kdl, shallow } => (for_kdl, shallow),
        crate::guard::Verdict::TooDeep { offset, comment } => {
            errors.push(SpecError::NestingTooDeep {
                src: src.clone(),
                span: (offset, if comment { 2 } else { 1 }).into(),
                what: if comment {
                    "block comments are"
                } else {
                    "children blocks are"
                },
                limit: crate::guard::MAX_NESTING,
            });
            return None;
        }
        crate::guard::Verdict::SlashdashTooDeep { offset } => {
            errors.push(SpecError::SlashdashTooDeep {
                src: src.clone(),
                span: (offset, 1).into(),
                limit: crate::guard::MAX_SLASHDASH_NESTING,
            });
            return None;
        }
        crate::guard::Verdict::TooManyWords { offset } => {
            errors.push(SpecError::TooManyWords {
                src: src.clone(),
                span: (offset, 1).into(),
                limit: crate::guard::MAX_WORDS,
            });
            return None;
        }
        crate::guard::Verdict::Unreadable { offset, reason } => {
            errors.push(SpecError::UnreadableText {
                src: src.clone(),
                span: (offset, 1).into(),
                reason,
            });
            return None;
        }
    };
    // The fast path handles the common subset exactly; kdl handles the rest and reports errors.
    if let Some(doc) = crate::fastkdl::parse(text) {
        return Some(doc);
    }
    // Shallow text that lexed cleanly is shallow for kdl too: parse it here, on any stack.
    let parsed = if shallow {
        KdlDocument::parse_v2(&for_kdl)
    } else {
        kdl_parse(&for_kdl)
    };
    match parsed {
        Ok(doc) => Some(doc),
        Err(err) => {
            for d in err.diagnostics {
                let start = d.span.offset();
                let spanned = text.get(start..start + d.span.len()).unwrap_or("");
                let word: String = text
                    .get(start..)
                    .unwrap_or("")
                    .chars()
                    .take_while(|c| c.is_ascii_alphabetic())
                    .collect();
                let help = match (spanned, word.as_str()) {
                    (_, w @ ("true" | "false" | "null")) => Some(format!(
                        "KDL v2 writes booleans and null with a `#`: `#{w}`; to mean the text, quote it: \"{w}\""
                    )),
                    _ => d.help,
                };
                errors.push(SpecError::Syntax {
                    src: src.clone(),
                    span: d.span,
                    message: d.message.unwrap_or_else(|| "invalid KDL".into()),
                    label: d.label.unwrap_or_else(|| "here".into()),
                    help,
                });
            }
            None
        }
    }
}

/// Loads the spec and everything it extends, returned base-most first.
pub(super) fn load_chain(root: &Path, root_text: RootText, errors: &mut Errors) -> Vec<File> {
    let mut chain: Vec<File> = Vec::new();
    let mut seen: Vec<PathBuf> = Vec::new();
    let mut next = Some((root.to_owned(), root_text));
    let mut used: u64 = 0;
    while let Some((path, text)) = next.take() {
        if chain.len() >= MAX_EXTENDS
            && let Some(child) = chain.last()
            && let Some(ext) = &child.ast.extends
        {
            errors.push(SpecError::ExtendsTooDeep {
                src: child.src.clone(),
                span: ext.span,
                limit: MAX_EXTENDS,
            });
            break;
        }
        let limit = MAX_SPEC_BYTES - used.min(MAX_SPEC_BYTES);
        let text = match text {
            RootText::Given(bytes) if bytes.len() as u64 > limit => Err(ReadFailure::TooLarge),
            RootText::Given(bytes) => utf8(bytes),
            RootText::Read => read_spec(&path, limit),
        };
        if let Ok(t) = &text {
            used += t.len() as u64;
        }
        let text = match text {
            Ok(t) => Arc::new(t),
            Err(ReadFailure::NotUtf8(bytes, at)) => {
                let byte = bytes.get(at).copied().unwrap_or(0);
                let lossy = String::from_utf8_lossy(&bytes).into_owned();
                // Everything before `at` is valid, so `at` is the same offset in the lossy text,
                // where the invalid byte became U+FFFD.
                let (line, column) = line_col(&lossy, at);
                let src: Src =
                    NamedSource::new(display(&path), Arc::new(lossy)).with_language("kdl");
                errors.push(SpecError::InvalidUtf8 {
                    src,
                    span: (at, char::REPLACEMENT_CHARACTER.len_utf8()).into(),
                    byte,
                    line,
                    column,
                });
                break;
            }
            Err(failure) => {
                let limit = MAX_SPEC_BYTES;
                let child = chain
                    .last()
                    .and_then(|c| Some((c, c.ast.extends.as_ref()?)));
                errors.push(match (child, failure) {
                    (None, ReadFailure::Io(reason)) => SpecError::Unreadable {
                        path: display(&path),
                        reason,
                    },
                    (None, ReadFailure::NotAFile(kind)) => SpecError::NotAFile {
                        path: display(&path),
                        kind,
                    },
                    (None, _) => SpecError::TooLarge {
                        path: display(&path),
                        limit,
                    },
                    (Some((child, ext)), ReadFailure::Io(reason)) => SpecError::ExtendsMissing {
                        src: child.src.clone(),
                        span: ext.span,
                        path: ext.value.clone(),
                        reason,
                    },
                    (Some((child, ext)), ReadFailure::NotAFile(kind)) => {
                        SpecError::ExtendsNotAFile {
                            src: child.src.clone(),
                            span: ext.span,
                            path: ext.value.clone(),
                            kind,
                        }
                    }
                    (Some((child, ext)), _) => SpecError::ExtendsTooLarge {
                        src: child.src.clone(),
                        span: ext.span,
                        path: ext.value.clone(),
                        limit,
                    },
                });
                break;
            }
        };
        let canonical = fs::canonicalize(&path).unwrap_or_else(|_| path.clone());
        if let Some(pos) = seen.iter().position(|p| *p == canonical) {
            let child = chain.last().expect("a cycle needs a child");
            let ext = child
                .ast
                .extends
                .as_ref()
                .expect("a child names its parent");
            let mut names: Vec<String> = chain[pos..]
                .iter()
                .map(|f| f.src.name().to_owned())
                .collect();
            names.push(chain[pos].src.name().to_owned());
            errors.push(SpecError::ExtendsCycle {
                src: child.src.clone(),
                span: ext.span,
                chain: names.join(" -> "),
            });
            break;
        }
        seen.push(canonical);
        let src: Src = NamedSource::new(display(&path), text.clone()).with_language("kdl");
        let ast = match parse_file(&src, &text, errors) {
            Some(doc) => decode::decode(&doc, &src, errors),
            // What a file that does not parse declares is unknown: report nothing missing.
            None => SpecFile {
                wrote_name: true,
                wrote_base: true,
                ..SpecFile::default()
            },
        };
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
            _ => PathBuf::from("."),
        };
        if let Some(ext) = &ast.extends {
            let target = normalize_lexically(&dir.join(&ext.value));
            next = Some((target, RootText::Read));
        }
        chain.push(File { src, dir, ast });
    }
    chain.reverse();
    chain
}

/// `(line, column)`, both from 1, of a byte offset.
pub(crate) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

pub(super) fn at(file: &File, span: SourceSpan) -> String {
    let (line, col) = line_col(file.src.inner(), span.offset());
    format!("{}:{line}:{col}", file.src.name())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lexical_normalization() {
        let n = |p: &str| {
            normalize_lexically(Path::new(p))
                .to_string_lossy()
                .into_owned()
        };
        assert_eq!(n("files/../files/a.txt"), "files/a.txt");
        assert_eq!(n("files/sub/../a.txt"), "files/a.txt");
        assert_eq!(n("../common.kdl"), "../common.kdl");
        assert_eq!(n("sub/../../x"), "../x");
        assert_eq!(n("sub/../../../x"), "../../x");
        assert_eq!(n("./a/./b"), "a/b");
        assert_eq!(n("a/.."), ".");
        assert_eq!(n("/a/../../b"), "/b");
        assert_eq!(n("sub/child/../../common.kdl"), "common.kdl");
    }
}
