//! Spanned syntax trees -> plan: follows `extends`, checks what values mean, reads every host file
//! the environment depends on, and lowers to [`envc_plan::Plan`] with a side table of spans.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use envc_plan::{Base, CopyKind, Mode, Plan, Step, SyncMode, env};
use kdl::KdlDocument;
use miette::{NamedSource, SourceSpan};

use crate::ast::{BaseDecl, BaseKind, Spanned, SpecFile, StepDecl, StepKind};
use crate::decode;
use crate::digest;
use crate::error::{SpecError, Src};
use crate::suggest;
use crate::{Compiled, Location};

/// mmdebstrap's variants.
pub const VARIANTS: &[&str] = &[
    "extract",
    "custom",
    "essential",
    "apt",
    "required",
    "minbase",
    "buildd",
    "important",
    "debootstrap",
    "standard",
];
/// The variant used when a debian base names none.
pub const DEFAULT_VARIANT: &str = "minbase";
/// Debian architectures envc accepts.
pub const ARCHES: &[&str] = &[
    "amd64", "arm64", "armel", "armhf", "i386", "loong64", "mips64el", "ppc64el", "riscv64",
    "s390x",
];

/// Values of `sync=`.
pub const SYNC_MODES: &[&str] = &["off", "shim", "seccomp"];

/// The dpkg architecture of the machine envc runs on.
pub fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "i386",
        "arm" => "armhf",
        "powerpc64" => "ppc64el",
        "loongarch64" => "loong64",
        "mips64" => "mips64el",
        other => other,
    }
}

/// One loaded spec file.
struct File {
    src: Src,
    /// The directory relative paths in this file are resolved against.
    dir: PathBuf,
    ast: SpecFile,
}

/// Where the root spec's text comes from.
pub(crate) enum RootText {
    Read,
    Given(String),
}

pub(crate) fn compile(
    path: &Path,
    root_text: RootText,
    options: &crate::Options,
) -> Result<Compiled, Vec<SpecError>> {
    let mut errors = Vec::new();
    let chain = load_chain(path, root_text, &mut errors);
    if chain.is_empty() {
        return Err(errors);
    }
    let cache = options.digest_cache.as_ref().map(digest::Cache::new);
    let mut cx = Lower {
        files: &chain,
        errors: &mut errors,
        cache: cache.as_ref(),
    };
    let lowered = cx.lower();
    sort_errors(&chain, &mut errors);
    match lowered {
        Some((plan, locations)) if errors.is_empty() => {
            let mut plan = plan;
            plan.spec = Some(path.to_owned());
            Ok(Compiled {
                plan,
                sources: chain.into_iter().map(|f| f.src).collect(),
                locations,
            })
        }
        _ => Err(errors),
    }
}

/// Orders errors as a reader meets them: by file (the compiled spec first, then what it extends),
/// then by position. The sort is stable, so errors at one position keep their stage order.
fn sort_errors(chain: &[File], errors: &mut [SpecError]) {
    use miette::Diagnostic;
    let key = |e: &SpecError| -> (usize, usize) {
        let Some(span) = e.labels().and_then(|mut l| l.next()).map(|l| *l.inner()) else {
            return (0, 0);
        };
        let name = e
            .source_code()
            .and_then(|s| s.read_span(&span, 0, 0).ok())
            .and_then(|c| c.name().map(str::to_owned));
        let rank = name
            .and_then(|n| chain.iter().rev().position(|f| f.src.name() == n))
            .unwrap_or(usize::MAX);
        (rank, span.offset())
    };
    errors.sort_by_cached_key(key);
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
fn load_chain(root: &Path, root_text: RootText, errors: &mut Vec<SpecError>) -> Vec<File> {
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

fn at(file: &File, span: SourceSpan) -> String {
    let (line, col) = line_col(file.src.inner(), span.offset());
    format!("{}:{line}:{col}", file.src.name())
}

/// Whether `s` is a short identifier: 1-64 of `[A-Za-z0-9._-]`, starting alphanumeric.
pub fn is_identifier(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// Checks a package argument (`NAME`, `NAME:ARCH`, `NAME=VERSION`); returns the name part.
fn check_package(pkg: &str) -> Result<&str, String> {
    let (name, version) = match pkg.split_once('=') {
        Some((n, v)) => (n, Some(v)),
        None => (pkg, None),
    };
    let (bare, arch) = match name.split_once(':') {
        Some((n, a)) => (n, Some(a)),
        None => (name, None),
    };
    if bare.len() < 2
        || !bare.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        || !bare
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '+' | '-' | '.'))
    {
        return Err("not a Debian package name".into());
    }
    if let Some(a) = arch
        && (a.is_empty()
            || !a
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'))
    {
        return Err("not an architecture qualifier".into());
    }
    if let Some(v) = version
        && (v.is_empty()
            || !v.starts_with(|c: char| c.is_ascii_digit())
            || !v
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '+' | '~' | ':' | '-')))
    {
        return Err("not a Debian version".into());
    }
    Ok(name)
}

/// Checks a user or group (a name or a number).
fn is_user_part(s: &str) -> bool {
    if !s.is_empty() && s.chars().all(|c| c.is_ascii_digit()) {
        return s.parse::<u32>().is_ok();
    }
    let body = s.strip_suffix('$').unwrap_or(s);
    (1..=32).contains(&body.len())
        && body.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && body
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

/// Normalizes an absolute path inside the root (drops `.` and repeated `/`); refuses `..`.
fn normalize_in_root(path: &str) -> Result<String, &'static str> {
    if path.contains('\0') {
        return Err("contains a NUL byte");
    }
    let mut parts = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => return Err("`..` is not allowed in paths inside the root"),
            p => parts.push(p),
        }
    }
    Ok(format!("/{}", parts.join("/")))
}

struct Lower<'a> {
    files: &'a [File],
    errors: &'a mut Vec<SpecError>,
    /// Where big files' digests are remembered, if anywhere.
    cache: Option<&'a digest::Cache>,
}

impl Lower<'_> {
    fn lower(&mut self) -> Option<(Plan, Vec<Vec<Location>>)> {
        let files = self.files;
        let top = files.last().expect("chain is not empty");

        let name = match &top.ast.name {
            Some(n) if is_identifier(&n.value) => Some(n.value.clone()),
            Some(n) => {
                self.errors.push(SpecError::InvalidName {
                    src: top.src.clone(),
                    span: n.span,
                    what: "environment name",
                    value: n.value.clone(),
                });
                None
            }
            None => {
                if !top.ast.wrote_name {
                    self.errors.push(SpecError::MissingName {
                        src: top.src.clone(),
                        span: (0, 0).into(),
                    });
                }
                None
            }
        };

        // Exactly one base along the chain, in the base-most spec.
        let mut base: Option<(usize, &BaseDecl)> = None;
        for (i, f) in files.iter().enumerate() {
            let Some(decl) = &f.ast.base else { continue };
            match base {
                None => base = Some((i, decl)),
                Some((fi, first)) => self.errors.push(SpecError::MultipleBases {
                    src: f.src.clone(),
                    span: decl.span,
                    first: None,
                    help: format!(
                        "a spec this one extends already has a base, at {}; remove one of them",
                        at(&files[fi], first.span)
                    ),
                }),
            }
        }
        let base_lowered = match base {
            Some((fi, decl)) => {
                let sync = self.sync_mode(
                    &files[fi],
                    decl.sync.as_ref(),
                    SyncMode::PACKAGES_DEFAULT,
                    &[SyncMode::Off, SyncMode::Seccomp],
                );
                self.base(&files[fi], decl).zip(sync).map(|(b, s)| {
                    (
                        (b, s),
                        Location {
                            file: fi,
                            span: decl.span,
                        },
                    )
                })
            }
            None => {
                let f = &files[0];
                // A base-most file that still extends something means the chain was cut short by
                // an error already reported.
                if !files.iter().any(|f| f.ast.wrote_base) && f.ast.extends.is_none() {
                    self.errors.push(SpecError::MissingBase {
                        src: f.src.clone(),
                        span: (0, 0).into(),
                    });
                }
                None
            }
        };

        let mut layers = Vec::new();
        let mut locations = Vec::new();
        let mut seen: HashMap<&str, (usize, SourceSpan)> = HashMap::new();
        let mut vars = env::defaults();
        for (fi, f) in files.iter().enumerate() {
            for layer in &f.ast.layers {
                let lname = &layer.name;
                if lname.value == envc_plan::BASE_LAYER_NAME {
                    self.errors.push(SpecError::ReservedLayerName {
                        src: f.src.clone(),
                        span: lname.span,
                    });
                } else if !is_identifier(&lname.value) {
                    self.errors.push(SpecError::InvalidName {
                        src: f.src.clone(),
                        span: lname.span,
                        what: "layer name",
                        value: lname.value.clone(),
                    });
                } else if let Some(&(ffi, fspan)) = seen.get(lname.value.as_str()) {
                    let same = ffi == fi;
                    self.errors.push(SpecError::DuplicateLayer {
                        src: f.src.clone(),
                        span: lname.span,
                        first: same.then_some(fspan),
                        name: lname.value.clone(),
                        help: if same {
                            "layer names are unique within an environment; rename one of them".into()
                        } else {
                            format!("the first is at {}, in a spec this one extends; layer names are unique within an environment", at(&files[ffi], fspan))
                        },
                    });
                } else {
                    seen.insert(&lname.value, (fi, lname.span));
                }
                let mut steps = Vec::new();
                let mut locs = Vec::new();
                for step in &layer.steps {
                    if let Some(s) = self.step(f, step, &mut vars) {
                        steps.push(s);
                        locs.push(Location {
                            file: fi,
                            span: step.span,
                        });
                    }
                }
                layers.push((lname.value.clone(), steps));
                locations.push(locs);
            }
        }

        let ((base, base_sync), base_loc) = base_lowered?;
        let name = name?;
        let mut all_locations = vec![vec![base_loc]];
        all_locations.extend(locations);
        Some((
            Plan::with_base_sync(name, base, base_sync, layers),
            all_locations,
        ))
    }

    fn invalid(
        &mut self,
        f: &File,
        span: SourceSpan,
        what: &str,
        value: &str,
        reason: &str,
        help: Option<String>,
    ) {
        self.errors.push(SpecError::InvalidValue {
            src: f.src.clone(),
            span,
            what: what.to_owned(),
            value: value.to_owned(),
            reason: reason.to_owned(),
            help,
        });
    }

    /// Splits a list property ("main contrib" or "a,b") into sorted unique items.
    fn list(
        &mut self,
        f: &File,
        prop: &Spanned<String>,
        what: &str,
        check: impl Fn(&str) -> Result<(), String>,
    ) -> Option<Vec<String>> {
        let mut items: Vec<String> = prop
            .value
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        if items.is_empty() {
            self.invalid(
                f,
                prop.span,
                what,
                &prop.value,
                "empty list",
                Some("separate items with spaces or commas".into()),
            );
            return None;
        }
        let mut ok = true;
        for item in &items {
            if let Err(reason) = check(item) {
                self.invalid(f, prop.span, what, item, &reason, None);
                ok = false;
            }
        }
        items.sort();
        items.dedup();
        ok.then_some(items)
    }

    fn base(&mut self, f: &File, decl: &BaseDecl) -> Option<Base> {
        match &decl.kind {
            BaseKind::Scratch => Some(Base::Scratch),
            BaseKind::Tar { path } => {
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
            BaseKind::Debian {
                suite,
                variant,
                arch,
                components,
                include,
                mirror,
                exclude_docs,
            } => {
                let mut ok = true;
                let suite_ok = !suite.value.is_empty()
                    && suite
                        .value
                        .starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
                    && suite.value.chars().all(|c| {
                        c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-')
                    });
                if !suite_ok {
                    self.invalid(
                        f,
                        suite.span,
                        "suite",
                        &suite.value,
                        "not a Debian suite or codename",
                        Some("e.g. suite=\"bookworm\" or suite=\"stable\"".into()),
                    );
                    ok = false;
                }
                let variant = match variant {
                    None => DEFAULT_VARIANT.to_owned(),
                    Some(v) if VARIANTS.contains(&v.value.as_str()) => v.value.clone(),
                    Some(v) => {
                        let help = suggest::help(&v.value, VARIANTS, "variants");
                        self.invalid(
                            f,
                            v.span,
                            "variant",
                            &v.value,
                            "not an mmdebstrap variant",
                            Some(help),
                        );
                        ok = false;
                        String::new()
                    }
                };
                let arch = match arch {
                    None => host_arch().to_owned(),
                    Some(a) if ARCHES.contains(&a.value.as_str()) => a.value.clone(),
                    Some(a) => {
                        let help = suggest::help(&a.value, ARCHES, "architectures");
                        self.invalid(
                            f,
                            a.span,
                            "architecture",
                            &a.value,
                            "not a Debian architecture",
                            Some(help),
                        );
                        ok = false;
                        String::new()
                    }
                };
                let components = match components {
                    None => vec!["main".to_owned()],
                    Some(c) => self
                        .list(f, c, "component", |s| {
                            if s.chars().all(|c| {
                                c.is_ascii_lowercase()
                                    || c.is_ascii_digit()
                                    || matches!(c, '-' | '/')
                            }) {
                                Ok(())
                            } else {
                                Err("not an archive component".into())
                            }
                        })
                        .unwrap_or_else(|| {
                            ok = false;
                            Vec::new()
                        }),
                };
                let include = match include {
                    None => Vec::new(),
                    Some(i) => self
                        .list(f, i, "package", |s| check_package(s).map(|_| ()))
                        .unwrap_or_else(|| {
                            ok = false;
                            Vec::new()
                        }),
                };
                let mirror = match mirror {
                    None => None,
                    Some(m) if m.value.contains("://") || m.value.starts_with("file:") => {
                        Some(m.value.clone())
                    }
                    Some(m) => {
                        self.invalid(f, m.span, "mirror", &m.value, "not a URL", Some("e.g. mirror=\"http://mirror.example/debian\"; leave it out to use the host's apt sources".into()));
                        ok = false;
                        None
                    }
                };
                ok.then(|| Base::Debian {
                    suite: suite.value.clone(),
                    variant,
                    arch,
                    components,
                    include,
                    mirror,
                    exclude_docs: *exclude_docs,
                })
            }
        }
    }

    /// Expands `$VAR` in a value against the environment so far, reporting what cannot be expanded.
    fn expand(
        &mut self,
        f: &File,
        value: &Spanned<String>,
        vars: &BTreeMap<String, String>,
    ) -> Option<String> {
        match env::expand(&value.value, vars) {
            Ok(v) => Some(v),
            Err(e) => {
                let help = match &e {
                    env::ExpandError::Undefined { name } => {
                        let known: Vec<&str> = vars.keys().map(String::as_str).collect();
                        match suggest::closest(name, &known) {
                            Some(c) if c != name => {
                                format!("did you mean `${c}`? Variables come from envc's defaults and earlier `env` steps; write `$$` for a literal `$`")
                            }
                            _ => "variables come from envc's defaults (PATH, HOME, LANG, DEBIAN_FRONTEND) and earlier `env` steps; write `$$` for a literal `$`".into(),
                        }
                    }
                    _ => "write `$NAME` or `${NAME}`; write `$$` for a literal `$`".into(),
                };
                self.errors.push(SpecError::BadExpansion {
                    src: f.src.clone(),
                    span: value.span,
                    value: value.value.clone(),
                    reason: e.to_string(),
                    help,
                });
                None
            }
        }
    }

    fn path_in_root(
        &mut self,
        f: &File,
        p: &Spanned<String>,
        what: &str,
        vars: &BTreeMap<String, String>,
    ) -> Option<String> {
        let expanded = self.expand(f, p, vars)?;
        let p = &Spanned::new(expanded, p.span);
        if !p.value.starts_with('/') {
            self.errors.push(SpecError::RelativeDestination {
                src: f.src.clone(),
                span: p.span,
                path: p.value.clone(),
                help: match normalize_in_root(&format!("/{}", p.value)) {
                    Ok(abs) if !p.value.starts_with("..") => {
                        format!(
                            "{what} is a path inside the root and must start with `/`, e.g. `{abs}`"
                        )
                    }
                    _ => format!("{what} is a path inside the root and must start with `/`"),
                },
            });
            return None;
        }
        match normalize_in_root(&p.value) {
            Ok(n) => Some(n),
            Err(reason) => {
                self.errors.push(SpecError::InvalidPath {
                    src: f.src.clone(),
                    span: p.span,
                    path: p.value.clone(),
                    reason: reason.into(),
                    help: Some("write the path without `..`".into()),
                });
                None
            }
        }
    }

    fn user(
        &mut self,
        f: &File,
        u: &Spanned<String>,
        what: &'static str,
        allow_group: bool,
    ) -> Option<String> {
        let ok = match u.value.split_once(':') {
            Some((user, group)) => allow_group && is_user_part(user) && is_user_part(group),
            None => is_user_part(&u.value),
        };
        if ok {
            return Some(u.value.clone());
        }
        let help = if allow_group {
            "write `USER` or `USER:GROUP`, each a name (e.g. `builder`) or a number (e.g. `1000`)"
        } else {
            "write a user name (e.g. `builder`) or a number (e.g. `1000`)"
        };
        self.errors.push(SpecError::InvalidUser {
            src: f.src.clone(),
            span: u.span,
            what,
            value: u.value.clone(),
            help: help.into(),
        });
        None
    }

    /// Resolves `sync="..."` (or the default), refusing modes that `allowed` does not list.
    fn sync_mode(
        &mut self,
        f: &File,
        sync: Option<&Spanned<String>>,
        default: SyncMode,
        allowed: &[SyncMode],
    ) -> Option<SyncMode> {
        let Some(s) = sync else { return Some(default) };
        let mode = match s.value.as_str() {
            "off" => SyncMode::Off,
            "shim" => SyncMode::Shim,
            "seccomp" => SyncMode::Seccomp,
            other => {
                let help = suggest::help(other, SYNC_MODES, "modes");
                self.invalid(f, s.span, "sync mode", other, "not a sync mode", Some(help));
                return None;
            }
        };
        if !allowed.contains(&mode) {
            self.invalid(
                f,
                s.span,
                "sync mode",
                &s.value,
                "not available here",
                Some("a base is built by mmdebstrap on the host, where envc suppresses sync calls with seccomp: use sync=\"seccomp\" or sync=\"off\"".into()),
            );
            return None;
        }
        Some(mode)
    }

    fn step(
        &mut self,
        f: &File,
        decl: &StepDecl,
        vars: &mut BTreeMap<String, String>,
    ) -> Option<Step> {
        const ALL: &[SyncMode] = &[SyncMode::Off, SyncMode::Shim, SyncMode::Seccomp];
        match &decl.kind {
            StepKind::Packages(names) => {
                let mut seen: HashMap<&str, SourceSpan> = HashMap::new();
                let mut ok = true;
                for n in names {
                    match check_package(&n.value) {
                        Err(reason) => {
                            ok = false;
                            self.errors.push(SpecError::InvalidPackage {
                                src: f.src.clone(),
                                span: n.span,
                                package: n.value.clone(),
                                reason,
                            });
                        }
                        Ok(name) => {
                            if let Some(first) = seen.get(name) {
                                ok = false;
                                self.errors.push(SpecError::DuplicatePackage {
                                    src: f.src.clone(),
                                    span: n.span,
                                    first: *first,
                                    package: name.to_owned(),
                                });
                            } else {
                                seen.insert(name, n.span);
                            }
                        }
                    }
                }
                let mut packages: Vec<String> = names.iter().map(|n| n.value.clone()).collect();
                packages.sort();
                let sync =
                    self.sync_mode(f, decl.sync.as_ref(), SyncMode::PACKAGES_DEFAULT, ALL)?;
                (ok && !packages.is_empty()).then_some(Step::Packages { packages, sync })
            }
            StepKind::Run {
                command,
                network,
                user,
            } => {
                if command.value.trim().is_empty() {
                    self.invalid(
                        f,
                        command.span,
                        "command",
                        &command.value,
                        "empty command",
                        Some("give the shell command to run, e.g. run \"make install\"".into()),
                    );
                    return None;
                }
                let sync = self.sync_mode(f, decl.sync.as_ref(), SyncMode::RUN_DEFAULT, ALL);
                let user = match user {
                    Some(u) => Some(self.user(f, u, "user", false)?),
                    None => None,
                };
                Some(Step::Run {
                    command: command.value.clone(),
                    network: *network,
                    user,
                    sync: sync?,
                })
            }
            StepKind::Copy {
                source,
                dest,
                mode,
                owner,
            } => {
                let resolved = self.copy_source(f, source);
                let mut dest_path = self.path_in_root(f, dest, "the destination", vars);
                let owner = match owner {
                    Some(o) => Some(self.user(f, o, "owner", true)),
                    None => None,
                };
                let (path, kind, tree) = resolved?;
                if kind == CopyKind::File
                    && dest_path.is_some()
                    && dest.value.ends_with('/')
                    && let (Some(d), Some(name)) = (&mut dest_path, path.file_name())
                {
                    let sep = if d.ends_with('/') { "" } else { "/" };
                    *d = format!("{d}{sep}{}", name.to_string_lossy());
                }
                let owner = match owner {
                    Some(None) => return None,
                    Some(Some(o)) => Some(o),
                    None => None,
                };
                Some(Step::Copy {
                    source: path,
                    dest: dest_path?,
                    kind,
                    mode: mode.as_ref().map(|m| Mode(m.value)),
                    owner,
                    digest: tree.digest,
                })
            }
            StepKind::Env(pairs) => {
                let mut out = BTreeMap::new();
                let mut ok = true;
                for (key, value) in pairs {
                    if !env::is_valid_name(&key.value) {
                        ok = false;
                        self.errors.push(SpecError::InvalidEnvName {
                            src: f.src.clone(),
                            span: key.span,
                            name: key.value.clone(),
                        });
                        continue;
                    }
                    match self.expand(f, value, vars) {
                        Some(v) => {
                            out.insert(key.value.clone(), v);
                        }
                        None => ok = false,
                    }
                }
                vars.extend(out.iter().map(|(k, v)| (k.clone(), v.clone())));
                (ok && !out.is_empty()).then_some(Step::Env { vars: out })
            }
            StepKind::Workdir(path) => Some(Step::Workdir {
                path: self.path_in_root(f, path, "the working directory", vars)?,
            }),
        }
    }

    fn copy_source(
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
        let kind = match fs::metadata(&canonical) {
            Ok(m) if m.is_dir() => CopyKind::Directory,
            Ok(_) => CopyKind::File,
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
        match digest::tree(&canonical, self.cache) {
            Ok(tree) => Some((canonical, kind, tree)),
            Err(e) => {
                let reason = match &e {
                    digest::DigestError::Unsupported { path, kind } => {
                        let shown = path.strip_prefix(&spec_dir).unwrap_or(path);
                        format!("`{}` is a {kind}", shown.display())
                    }
                    digest::DigestError::Io { .. } => e.to_string(),
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

    #[test]
    fn packages() {
        assert_eq!(check_package("hello"), Ok("hello"));
        assert_eq!(check_package("hello=2.10-3"), Ok("hello"));
        assert_eq!(check_package("libc6:i386"), Ok("libc6:i386"));
        assert_eq!(check_package("g++"), Ok("g++"));
        assert!(check_package("Hello").is_err());
        assert!(check_package("a").is_err());
        assert!(check_package("hello=").is_err());
        assert!(check_package("hello=abc").is_err());
        assert!(check_package("hello:").is_err());
    }
}
