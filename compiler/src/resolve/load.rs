//! Loading: the spec's `extends` chain, each file read, parsed to a `KdlDocument`, decoded.

use std::fs;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use kdl::KdlDocument;
use miette::{NamedSource, SourceSpan};

use super::RootText;
use crate::ast::SpecFile;
use crate::decode;
use crate::error::{SpecError, Src};

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

fn parse_file(src: &Src, text: &Arc<String>, errors: &mut Vec<SpecError>) -> Option<KdlDocument> {
    // The fast path handles the common subset exactly; kdl handles the rest and reports errors.
    if let Some(doc) = crate::fastkdl::parse(text) {
        return Some(doc);
    }
    match KdlDocument::parse_v2(text) {
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
pub(super) fn load_chain(
    root: &Path,
    root_text: RootText,
    errors: &mut Vec<SpecError>,
) -> Vec<File> {
    let mut chain: Vec<File> = Vec::new();
    let mut seen: Vec<PathBuf> = Vec::new();
    let mut next = Some((root.to_owned(), root_text));
    while let Some((path, text)) = next.take() {
        let text = match text {
            RootText::Given(t) => Ok(t),
            RootText::Read => fs::read_to_string(&path).map_err(|e| e.to_string()),
        };
        let text = match text {
            Ok(t) => Arc::new(t),
            Err(reason) => {
                match chain.last() {
                    None => errors.push(SpecError::Unreadable {
                        path: display(&path),
                        reason,
                    }),
                    Some(child) => {
                        let ext = child
                            .ast
                            .extends
                            .as_ref()
                            .expect("a child names its parent");
                        errors.push(SpecError::ExtendsMissing {
                            src: child.src.clone(),
                            span: ext.span,
                            path: ext.value.clone(),
                            reason,
                        });
                    }
                }
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
