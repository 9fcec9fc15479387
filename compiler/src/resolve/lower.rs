//! Lowering: the loaded chain becomes a [`Plan`], with a side table from its steps to their spans.

use std::collections::{BTreeMap, HashMap};

use envc_plan::{Base, CopyKind, MAX_LAYERS, Mode, Name, Plan, Step, SyncMode, env};
use miette::SourceSpan;

use super::load::{File, at};
use super::values::{ARCHES, DEFAULT_VARIANT, VARIANTS, check_package, host_arch};
use crate::Location;
use crate::ast::{BaseDecl, BaseKind, StepDecl, StepKind};
use crate::digest;
use crate::error::{Errors, SpecError};
use crate::suggest;

/// A plan before its ids are computed.
pub(super) struct Lowered {
    name: String,
    base: Base,
    base_sync: SyncMode,
    layers: Vec<(String, Vec<Step>)>,
}

impl Lowered {
    pub(super) fn into_plan(self) -> Plan {
        Plan::with_base_sync(self.name, self.base, self.base_sync, self.layers)
    }
}

pub(super) struct Lower<'a> {
    pub(super) files: &'a [File],
    pub(super) errors: &'a mut Errors,
    /// Where big files' digests are remembered, if anywhere.
    pub(super) cache: Option<&'a digest::Cache>,
    /// The bytes of the environment in effect (see [`env::MAX_ENV_BYTES`]).
    pub(super) env_bytes: usize,
    /// The bytes of every value expanded so far (see [`env::MAX_EXPANDED_BYTES`]); past the
    /// limit, or past [`env::MAX_ENV_BYTES`], `usize::MAX` (reported once; nothing more is
    /// expanded).
    pub(super) expanded: usize,
}

impl Lower<'_> {
    /// The plan's parts (its ids are computed later, once the syntax trees are freed) and where
    /// each step was written.
    pub(super) fn lower(&mut self) -> Option<(Lowered, Vec<Vec<Location>>)> {
        let files = self.files;
        let top = files.last().expect("chain is not empty");

        let name = match &top.ast.name {
            Some(n) if Name::is_valid(&n.value) => Some(n.value.clone()),
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
        self.env_bytes = vars.iter().map(|(k, v)| env::entry_bytes(k, v)).sum();
        // The base is layer 1.
        let total = 1 + files.iter().map(|f| f.ast.layers.len()).sum::<usize>();
        let mut position = 1;
        for (fi, f) in files.iter().enumerate() {
            for layer in &f.ast.layers {
                position += 1;
                if position == MAX_LAYERS + 1 {
                    self.errors.push(SpecError::ChainTooDeep {
                        src: f.src.clone(),
                        span: layer.span,
                        layers: total,
                        position,
                        limit: MAX_LAYERS,
                        help: format!(
                            "a root stacks every layer of its environment, and overlayfs stacks at most {MAX_LAYERS} (the base included); merge layers (a layer may hold many steps) to have at most {} after the base",
                            MAX_LAYERS - 1
                        ),
                    });
                }
                let lname = &layer.name;
                if lname.value == envc_plan::BASE_LAYER_NAME {
                    self.errors.push(SpecError::ReservedLayerName {
                        src: f.src.clone(),
                        span: lname.span,
                    });
                } else if !Name::is_valid(&lname.value) {
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
                        help: if self.errors.is_full() {
                            // Only counted: skip finding the first one's line in its file.
                            String::new()
                        } else if same {
                            "layer names are unique within an environment; rename one of them".into()
                        } else {
                            format!("the first is at {}, in a spec this one extends; layer names are unique within an environment", at(&files[ffi], fspan))
                        },
                    });
                } else {
                    seen.insert(&lname.value, (fi, lname.span));
                }
                let mut steps = Vec::with_capacity(layer.steps.len());
                let mut locs = Vec::with_capacity(layer.steps.len());
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
            Lowered {
                name,
                base,
                base_sync,
                layers,
            },
            all_locations,
        ))
    }

    fn base(&mut self, f: &File, decl: &BaseDecl) -> Option<Base> {
        match &decl.kind {
            BaseKind::Scratch => Some(Base::Scratch),
            BaseKind::Tar { path } => self.tar_base(f, path),
            BaseKind::Oci { path, tag } => self.oci_base(f, path, tag.as_ref()),
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
                (ok && !packages.is_empty()).then_some(Step::Packages {
                    packages,
                    sync,
                    locked: None,
                    build_deps: None,
                })
            }
            StepKind::BuildDeps(path) => {
                let (shown, relations) = self.build_deps(f, path)?;
                let sync =
                    self.sync_mode(f, decl.sync.as_ref(), SyncMode::PACKAGES_DEFAULT, ALL)?;
                Some(Step::Packages {
                    packages: relations,
                    sync,
                    locked: None,
                    build_deps: Some(shown),
                })
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
                let owner = owner.as_ref().map(|o| self.user(f, o, "owner", true));
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
                let mut out: BTreeMap<String, String> = BTreeMap::new();
                let mut ok = true;
                let mut total = self.env_bytes;
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
                    // `NAME=value` and a NUL must fit in one argument string.
                    let limit = env::MAX_ENTRY_BYTES.saturating_sub(key.value.len() + 2);
                    match self.expand(f, value, vars, limit) {
                        Some(v) => {
                            let old = out
                                .get(&key.value)
                                .or_else(|| vars.get(&key.value))
                                .map_or(0, |old| env::entry_bytes(&key.value, old));
                            let grown = total - old + env::entry_bytes(&key.value, &v);
                            if grown > env::MAX_ENV_BYTES {
                                ok = false;
                                let start = key.span.offset();
                                let end = value.span.offset() + value.span.len();
                                self.errors.push(SpecError::EnvTooLarge {
                                    src: f.src.clone(),
                                    span: (start, end.saturating_sub(start)).into(),
                                    name: key.value.clone(),
                                    total: grown,
                                    limit: env::MAX_ENV_BYTES,
                                });
                                // Later values would name variables never set: expand no more.
                                self.expanded = usize::MAX;
                                continue;
                            }
                            total = grown;
                            out.insert(key.value.clone(), v);
                        }
                        None => ok = false,
                    }
                }
                self.env_bytes = total;
                vars.extend(out.iter().map(|(k, v)| (k.clone(), v.clone())));
                (ok && !out.is_empty()).then_some(Step::Env { vars: out })
            }
            StepKind::Workdir(path) => Some(Step::Workdir {
                path: self.path_in_root(f, path, "the working directory", vars)?,
            }),
            StepKind::Cache {
                path: written,
                name,
            } => {
                let path = self.path_in_root(f, written, "the cache's directory", vars);
                // Not over what the sandbox mounts or writes itself (its /proc, /sys, /dev and
                // /tmp, the resolver file and policy-rc.d a step gets), nor the whole root.
                if let Some(p) = &path {
                    let under = |d: &str| p == d || p.starts_with(&format!("{d}/"));
                    let above = |f: &str| f.starts_with(&format!("{}/", p.trim_end_matches('/')));
                    if p == "/"
                        || ["/proc", "/sys", "/dev", "/tmp"].iter().any(|d| under(d))
                        || ["/etc/resolv.conf", "/usr/sbin/policy-rc.d"]
                            .iter()
                            .any(|f| above(f))
                    {
                        self.invalid(
                            f,
                            written.span,
                            "cache directory",
                            p,
                            "is the root, a system mount (/proc, /sys, /dev, /tmp), or holds a file envc puts into every step (/etc, /usr, /usr/sbin)",
                            Some("cache a tool's own directory, such as /root/.cache/ccache".into()),
                        );
                        return None;
                    }
                }
                let name = match name {
                    Some(n) if !envc_plan::valid_cache_name(&n.value) => {
                        self.errors.push(SpecError::InvalidCacheName {
                            src: f.src.clone(),
                            span: n.span,
                            name: n.value.clone(),
                        });
                        return None;
                    }
                    Some(n) => Some(n.value.clone()),
                    None => None,
                };
                Some(Step::Cache { path: path?, name })
            }
        }
    }
}
