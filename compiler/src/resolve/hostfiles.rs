//! Host file digests for a `tar` base or a `copy` source, resolved against the spec's directory.

use std::fs;
use std::path::{Component, Path, PathBuf};

use envc_plan::{Base, CopyKind};

use super::load::{File, normalize_lexically};
use super::lower::Lower;
use crate::ast::Spanned;
use crate::digest;
use crate::error::SpecError;

impl Lower<'_> {
    /// A `tar` base: the tarball, resolved against the spec's directory, and its digest.
    pub(super) fn tar_base(&mut self, f: &File, path: &Spanned<String>) -> Option<Base> {
        let p = Path::new(&path.value);
        let full = if p.is_absolute() {
            p.to_owned()
        } else {
            f.dir.join(p)
        };
        let resolved = fs::canonicalize(&full).and_then(|c| {
            if fs::metadata(&c)?.is_file() {
                Ok(c)
            } else {
                Err(std::io::Error::other("not a regular file"))
            }
        });
        let result = resolved.map_err(|e| e.to_string()).and_then(|c| {
            digest::file(&c, self.cache)
                .map(|d| (c, d))
                .map_err(|e| e.to_string())
        });
        match result {
            Ok((path, digest)) => Some(Base::Tar { path, digest }),
            Err(reason) => {
                self.errors.push(SpecError::BaseFileUnreadable {
                    src: f.src.clone(),
                    span: path.span,
                    path: path.value.clone(),
                    reason,
                });
                None
            }
        }
    }

    pub(super) fn copy_source(
        &mut self,
        f: &File,
        source: &Spanned<String>,
    ) -> Option<(PathBuf, CopyKind, digest::TreeDigest)> {
        let escapes = |this: &mut Self, reason: String| {
            this.errors.push(SpecError::CopySourceEscapes {
                src: f.src.clone(),
                span: source.span,
                path: source.value.clone(),
                reason,
            });
            None
        };
        let rel = Path::new(&source.value);
        if source.value.is_empty() {
            self.invalid(f, source.span, "copy source", "", "empty path", None);
            return None;
        }
        if rel.is_absolute() {
            return escapes(self, "is an absolute path".into());
        }
        if normalize_lexically(rel).components().next() == Some(Component::ParentDir) {
            return escapes(self, "leaves the spec's directory through `..`".into());
        }
        let spec_dir = match fs::canonicalize(&f.dir) {
            Ok(d) => d,
            Err(e) => {
                self.errors.push(SpecError::CopySourceUnreadable {
                    src: f.src.clone(),
                    span: source.span,
                    path: source.value.clone(),
                    reason: format!("cannot resolve the spec's directory: {e}"),
                });
                return None;
            }
        };
        let canonical = match fs::canonicalize(spec_dir.join(rel)) {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.errors.push(SpecError::CopySourceMissing {
                    src: f.src.clone(),
                    span: source.span,
                    path: source.value.clone(),
                    help: format!(
                        "copy sources are relative to the spec's directory, `{}`",
                        f.dir.display()
                    ),
                });
                return None;
            }
            Err(e) => {
                self.errors.push(SpecError::CopySourceUnreadable {
                    src: f.src.clone(),
                    span: source.span,
                    path: source.value.clone(),
                    reason: e.to_string(),
                });
                return None;
            }
        };
        if !canonical.starts_with(&spec_dir) {
            return escapes(
                self,
                format!(
                    "resolves through a symbolic link to `{}`, outside the spec's directory",
                    canonical.display()
                ),
            );
        }
        match digest::resolved_tree(&canonical, self.cache) {
            Ok(tree) => Some((canonical, tree.kind, tree)),
            Err(e) => {
                let reason = match &e {
                    digest::DigestError::Unsupported { path, kind } => {
                        let shown = path.strip_prefix(&spec_dir).unwrap_or(path);
                        format!("`{}` is a {kind}", shown.display())
                    }
                    digest::DigestError::Io { .. } | digest::DigestError::Swapped { .. } => {
                        e.to_string()
                    }
                };
                self.errors.push(SpecError::CopySourceUnreadable {
                    src: f.src.clone(),
                    span: source.span,
                    path: source.value.clone(),
                    reason,
                });
                None
            }
        }
    }
}
