//! Host files of a spec, resolved against its directory: a `tar` base's and a `copy` source's
//! digests, and the build dependencies of a `build-deps` step's source package.

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

    /// A `build-deps` step's file (a `.dsc` or `debian/control`, inside the spec's directory):
    /// the path as written, and the dependency strings apt is to satisfy (the build
    /// dependencies, then the build conflicts as one `Conflicts: ...` string).
    pub(super) fn build_deps(
        &mut self,
        f: &File,
        path: &Spanned<String>,
    ) -> Option<(String, Vec<String>)> {
        let bad = |this: &mut Self, reason: String| {
            this.errors.push(SpecError::BuildDepsUnusable {
                src: f.src.clone(),
                span: path.span,
                path: path.value.clone(),
                reason,
            });
            None
        };
        let rel = Path::new(&path.value);
        if path.value.is_empty() || rel.is_absolute() {
            return bad(
                self,
                "must be a path relative to the spec's directory".into(),
            );
        }
        if normalize_lexically(rel).components().next() == Some(Component::ParentDir) {
            return bad(self, "leaves the spec's directory through `..`".into());
        }
        let unreadable = |e: std::io::Error| format!("cannot be read: {e}");
        let read = (|| -> Result<Vec<u8>, String> {
            let dir = fs::canonicalize(&f.dir).map_err(unreadable)?;
            let c = fs::canonicalize(dir.join(rel)).map_err(unreadable)?;
            if !c.starts_with(&dir) {
                return Err(format!(
                    "resolves to `{}`, outside the spec's directory",
                    c.display()
                ));
            }
            // Opened once, without blocking (a FIFO swapped in would otherwise hang the
            // compiler) and without following a symlink swapped in; checked on the descriptor;
            // read up to one byte past the limit whatever the file does meanwhile.
            use std::io::Read;
            use std::os::unix::fs::OpenOptionsExt;
            let file = fs::File::options()
                .read(true)
                .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW)
                .open(&c)
                .map_err(unreadable)?;
            let m = file.metadata().map_err(unreadable)?;
            if !m.is_file() {
                return Err("is not a regular file".into());
            }
            let mut bytes = Vec::new();
            file.take(MAX_CONTROL_FILE + 1)
                .read_to_end(&mut bytes)
                .map_err(unreadable)?;
            if bytes.len() as u64 > MAX_CONTROL_FILE {
                return Err(format!("is larger than {MAX_CONTROL_FILE} bytes"));
            }
            Ok(bytes)
        })();
        let text = match read {
            Ok(bytes) => match String::from_utf8(bytes) {
                Ok(t) => t,
                Err(_) => return bad(self, "is not UTF-8".into()),
            },
            Err(reason) => return bad(self, reason),
        };
        match build_relations(&text) {
            Ok(r) => Some((path.value.clone(), r)),
            Err(reason) => bad(self, reason),
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

/// The largest `.dsc` or `debian/control` file a `build-deps` step reads.
const MAX_CONTROL_FILE: u64 = 1 << 20;

/// The dependency strings of a source package's first stanza (a `.dsc`, signed or not, or the
/// source stanza of `debian/control`): `Build-Depends`, `-Arch` and `-Indep` joined as one string;
/// then `Build-Conflicts`, `-Arch` and `-Indep`, if any, as one `Conflicts: ...` string. Comment
/// lines (`#`) are skipped; a field's continuation lines are joined.
pub(crate) fn build_relations(text: &str) -> Result<Vec<String>, String> {
    let mut lines = text.lines().peekable();
    // A clearsigned .dsc: the armor header, then headers up to a blank line.
    if lines
        .peek()
        .is_some_and(|l| l.trim_end() == "-----BEGIN PGP SIGNED MESSAGE-----")
    {
        for l in lines.by_ref() {
            if l.trim().is_empty() {
                break;
            }
        }
    }
    let mut fields: Vec<(String, String)> = Vec::new();
    for line in lines {
        if line.starts_with("-----BEGIN PGP SIGNATURE-----") {
            break;
        }
        if line.starts_with('#') {
            continue;
        }
        if line.trim().is_empty() {
            if fields.is_empty() {
                continue;
            }
            break;
        }
        if line.starts_with([' ', '\t']) {
            match fields.last_mut() {
                Some((_, v)) => {
                    v.push(' ');
                    v.push_str(line.trim());
                }
                None => return Err("begins with a continuation line".into()),
            }
            continue;
        }
        let Some((name, value)) = line.split_once(':') else {
            return Err(format!("holds a line that is not a field: `{line}`"));
        };
        fields.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
    }
    let joined = |names: &[&str]| -> Result<String, String> {
        let mut out: Vec<String> = Vec::new();
        for (n, v) in &fields {
            if !names.contains(&n.as_str()) {
                continue;
            }
            for rel in v.split(',') {
                let rel = rel.split_whitespace().collect::<Vec<_>>().join(" ");
                if rel.is_empty() {
                    continue;
                }
                if let Some(c) = rel
                    .chars()
                    .find(|c| !(c.is_ascii_alphanumeric() || " +-.~:_()<>=|[]!".contains(*c)))
                {
                    return Err(format!("field {n} holds `{c}` in `{rel}`"));
                }
                out.push(rel);
            }
        }
        Ok(out.join(", "))
    };
    if !fields.iter().any(|(n, _)| n == "source") {
        return Err("has no Source field: not a .dsc or debian/control".into());
    }
    let depends = joined(&["build-depends", "build-depends-arch", "build-depends-indep"])?;
    let conflicts = joined(&[
        "build-conflicts",
        "build-conflicts-arch",
        "build-conflicts-indep",
    ])?;
    if depends.is_empty() {
        return Err("declares no build dependencies".into());
    }
    let mut out = vec![depends];
    if !conflicts.is_empty() {
        out.push(format!("Conflicts: {conflicts}"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::build_relations;

    #[test]
    fn a_signed_dsc_gives_its_build_dependencies() {
        let dsc = "-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA512\n\nFormat: 3.0 (quilt)\nSource: hello\nBinary: hello\nBuild-Depends: debhelper-compat (= 13),\n libfoo-dev [amd64] <!nocheck>\nBuild-Depends-Indep: texinfo\nBuild-Conflicts: autoconf2.13\nChecksums-Sha256:\n abc 1 hello.tar.gz\n\n-----BEGIN PGP SIGNATURE-----\nxyz\n-----END PGP SIGNATURE-----\n";
        assert_eq!(
            build_relations(dsc).unwrap(),
            [
                "debhelper-compat (= 13), libfoo-dev [amd64] <!nocheck>, texinfo",
                "Conflicts: autoconf2.13"
            ]
        );
    }

    #[test]
    fn a_debian_control_gives_its_source_stanza() {
        let control = "# a comment\nSource: x\nBuild-Depends: a | b, c (>= 1:2.0~rc1)\n\nPackage: x\nDepends: ${misc:Depends}\n";
        assert_eq!(
            build_relations(control).unwrap(),
            ["a | b, c (>= 1:2.0~rc1)"]
        );
    }

    #[test]
    fn what_is_not_a_source_package_is_refused() {
        assert!(build_relations("Package: x\n").is_err());
        assert!(build_relations("Source: x\n").is_err());
        assert!(build_relations("Source: x\nBuild-Depends: a; rm -rf /\n").is_err());
        assert!(build_relations(" cont\nSource: x\n").is_err());
    }
}
