//! `envc lock`: resolving every package a spec installs, in throwaway roots, never from the
//! host's own apt state.
//!
//! - A Debian base is resolved by mmdebstrap in a throwaway directory of the store: its installed
//!   set (dpkg's status) with each package's `Filename`, `Size` and `SHA256` from the indexes apt
//!   downloaded (verified by apt against the archive's signed `Release`). The `.deb` files it
//!   downloaded go to the package store, so the locked build need not download them again.
//! - A `packages` step is resolved in a throwaway snapshot of the tree it starts from: its parent
//!   layer as locked so far (built for real, hermetically, and kept: `apply` finds it) and the
//!   steps before it in its layer. There, `apt-get --print-uris install` says which files apt
//!   would download; each is looked up in the indexes for its name, version, architecture and
//!   sha256.
//! - Packages not being updated stay pinned (apt preferences at priority 1001): `--update PKG`
//!   moves only PKG (and what its new version needs). A pinned version the mirror no longer has
//!   is an error naming it, never a silent move to another version.
#![forbid(unsafe_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::fs;

use envc_plan::lock::{
    BaseLock, BaseLocked, LOCK_VERSION, LayerDigest, Lock, LockedPackage, StepLock, base_checksum,
    inputs_checksum, packages_steps, sort_packages,
};
use envc_plan::{Base, Layer, LayerId, Plan, Step, SyncMode};
use nix::fcntl::OFlag;

use super::apt::{apt_opts, cache_key};
use super::base::{base_sources, source_uris};
use super::debindex::{ListsIndex, debs_in, installed, locked, mirror_of_list, print_uris};
use super::inroot::{open_dir, open_in_root};
use super::locked::TmpDir;
use super::{ApplyError, Event, Runtime};
use crate::debs::DebStore;
use crate::sandbox::{Action, Bind, Spec};
use crate::store;
use crate::tools::Tool;

/// What `envc lock` re-resolves of an existing lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Update {
    /// Only what the spec changed (and what depends on it); the rest stays as locked.
    Changed,
    /// Everything, from the mirror as it is now.
    All,
    /// These packages (by name), wherever they are; everything else stays pinned.
    Packages(Vec<String>),
}

/// A sink for events of any lifetime (resolution realizes plans of its own).
pub type AnySink<'s> = &'s mut dyn for<'a> FnMut(Event<'a>);

fn lock_err(what: impl Into<String>, reason: impl Into<String>) -> ApplyError {
    ApplyError::Lock {
        what: what.into(),
        reason: reason.into(),
    }
}

/// `plan` with the lock known so far: the base's packages and the first `steps.len()` packages
/// steps' sets.
fn partial_plan(plan: &Plan, sde: u64, base: &[LockedPackage], steps: &[StepLock]) -> Plan {
    let mut p = plan.clone();
    let mut k = 0;
    for layer in &mut p.layers {
        for step in &mut layer.steps {
            match step {
                Step::Base { locked, .. } => {
                    *locked = Some(BaseLocked {
                        source_date_epoch: sde,
                        packages: base.to_vec(),
                    });
                }
                Step::Packages { locked, .. } => {
                    *locked = steps.get(k).map(|s| s.installs.clone());
                    k += 1;
                }
                _ => {}
            }
        }
    }
    p.recompute_ids();
    p
}

/// The version of a host tool, from the first line of `TOOL --version`.
fn tool_version(name: &str) -> Option<String> {
    let out = Tool::new(name).ok()?.arg("--version").output().ok()?;
    let text = String::from_utf8_lossy(&out);
    let first = text.lines().next()?.trim();
    // `mmdebstrap 1.3.5`, `apt 2.6.1 (amd64)`.
    first.split_whitespace().nth(1).map(str::to_owned)
}

/// apt preferences that keep each package at its version when apt needs it.
/// Only names and versions made of Debian's characters (a lock is a file anybody may edit): others
/// are left out, and their packages then resolve unpinned.
fn pins_text(pins: &[LockedPackage]) -> String {
    let debian = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"+-.~:".contains(&b))
    };
    let mut s = String::new();
    let mut seen = BTreeSet::new();
    for p in pins {
        if debian(&p.name) && debian(&p.version) && seen.insert((&p.name, &p.version)) {
            let _ = write!(
                s,
                "Package: {}\nPin: version {}\nPin-Priority: 1001\n\n",
                p.name, p.version
            );
        }
    }
    s
}

/// The name part of `NAME`, `NAME=VERSION`, `NAME:ARCH`, `NAME/SUITE`.
fn name_of(spec: &str) -> &str {
    spec.split(['=', ':', '/']).next().unwrap_or(spec)
}

impl Runtime {
    /// Resolves every package `plan` (unlocked) installs into a lock, keeping what `old` has
    /// where `update` allows.
    pub fn lock(
        &self,
        plan: &Plan,
        old: Option<&Lock>,
        update: &Update,
        sink: AnySink<'_>,
    ) -> Result<Lock, ApplyError> {
        let sde = old.map_or_else(store::now, |l| l.source_date_epoch);
        let all = *update == Update::All;
        let names: BTreeSet<&str> = match update {
            Update::Packages(p) => p.iter().map(String::as_str).collect(),
            _ => BTreeSet::new(),
        };
        let touched = |set: &[LockedPackage]| set.iter().any(|p| names.contains(p.name.as_str()));
        let mut tools = BTreeMap::new();
        for t in ["mmdebstrap", "apt"] {
            let probe = if t == "apt" { "apt-get" } else { t };
            if let Some(v) = tool_version(probe) {
                tools.insert(t.to_owned(), v);
            }
        }
        let mut changed;
        let mut base_lock = None;
        let mut base_pkgs = Vec::new();
        match plan.base() {
            Some(
                b @ Base::Debian {
                    suite,
                    variant,
                    arch,
                    components,
                    include,
                    ..
                },
            ) => {
                let checksum = base_checksum(b);
                let old_b = old
                    .and_then(|l| l.base.as_ref())
                    .filter(|ob| ob.checksum == checksum);
                let pkgs = match old_b.filter(|ob| !all && !touched(&ob.packages)) {
                    Some(ob) => ob.packages.clone(),
                    None => self.resolve_base(b, old_b.map(|ob| &ob.packages[..]), &names, sink)?,
                };
                changed = old_b.is_none_or(|ob| ob.packages != pkgs);
                base_lock = Some(BaseLock {
                    suite: suite.clone(),
                    arch: arch.clone(),
                    variant: variant.clone(),
                    components: components.clone(),
                    include: include.clone(),
                    checksum,
                    packages: pkgs.clone(),
                });
                base_pkgs = pkgs;
            }
            _ => changed = old.is_some_and(|l| l.base.is_some()),
        }
        let mut steps: Vec<StepLock> = Vec::new();
        for (k, s) in packages_steps(plan).iter().enumerate() {
            let old_k = old
                .and_then(|l| l.steps.get(k))
                .filter(|o| o.packages.as_slice() == s.packages);
            let asked = s.packages.iter().any(|p| names.contains(name_of(p)));
            let installs = match old_k {
                Some(o) if !changed && !all && !asked && !touched(&o.installs) => {
                    o.installs.clone()
                }
                _ => {
                    let pins: Vec<LockedPackage> = if all {
                        Vec::new()
                    } else {
                        old_k
                            .map(|o| {
                                o.installs
                                    .iter()
                                    .filter(|p| !names.contains(p.name.as_str()))
                                    .cloned()
                                    .collect()
                            })
                            .unwrap_or_default()
                    };
                    let partial = partial_plan(plan, sde, &base_pkgs, &steps);
                    self.resolve_step(&partial, s.layer, s.step, &pins, sink)?
                }
            };
            if old_k.is_none_or(|o| o.installs != installs) {
                changed = true;
            }
            steps.push(StepLock {
                layer: s.layer_name.to_owned(),
                step: s.step + 1,
                packages: s.packages.to_vec(),
                installs,
            });
        }
        let mut lock = Lock {
            version: LOCK_VERSION,
            spec_checksum: inputs_checksum(plan),
            source_date_epoch: sde,
            tools,
            base: base_lock,
            steps,
            layers: Vec::new(),
        };
        // Recorded digests stay for the layers whose ids the new lock keeps.
        if let (Some(old), Ok(locked)) = (old, lock.attach(plan)) {
            let ids: BTreeSet<LayerId> = locked.layers.iter().map(|l| l.id).collect();
            lock.layers = old
                .layers
                .iter()
                .filter(|l| ids.contains(&l.id))
                .cloned()
                .collect();
        }
        Ok(lock)
    }

    /// The tree digests of every layer of `plan` (a locked plan), building what is not stored:
    /// what `envc lock --digests` records.
    pub fn layer_digests(
        &self,
        plan: &Plan,
        sink: AnySink<'_>,
    ) -> Result<Vec<LayerDigest>, ApplyError> {
        let _held = self.realize(plan, &mut |e| sink(e))?.held;
        let mut out = Vec::new();
        for l in &plan.layers {
            if let Some(d) = self.store.read_meta(&l.id)?.and_then(|m| m.tree_digest) {
                out.push(LayerDigest {
                    name: l.name.clone(),
                    id: l.id,
                    tree_digest: d,
                });
            }
        }
        Ok(out)
    }

    /// The layers of `plan` whose stored tree digest is not the one `recorded` (a lock's) has
    /// for the same id: (name, recorded, stored). A layer id names one tree; a mismatch means its
    /// build is not reproducible, or the stored layer changed (`envc verify`).
    pub fn digest_mismatches(
        &self,
        plan: &Plan,
        recorded: &[LayerDigest],
    ) -> Vec<(String, envc_plan::Digest, envc_plan::Digest)> {
        let mut out = Vec::new();
        for r in recorded {
            if let Some(l) = plan.layers.iter().find(|l| l.id == r.id)
                && let Ok(Some(m)) = self.store.read_meta(&l.id)
                && let Some(d) = m.tree_digest
                && d != r.tree_digest
            {
                out.push((l.name.clone(), r.tree_digest, d));
            }
        }
        out
    }

    /// The packages of a Debian base, by a real mmdebstrap build in a throwaway directory.
    /// `pins` (the old lock's base) keep their versions except for the packages in `names`.
    fn resolve_base(
        &self,
        base: &Base,
        pins: Option<&[LockedPackage]>,
        names: &BTreeSet<&str>,
        sink: AnySink<'_>,
    ) -> Result<Vec<LockedPackage>, ApplyError> {
        let what = "the base";
        let sources = base_sources(base).map_err(|e| lock_err(what, e.to_string()))?;
        let uris = source_uris(&sources);
        let dir = TmpDir::new(&self.store, "base").map_err(|e| lock_err(what, e))?;
        let mut m = self
            .mmdebstrap(base, SyncMode::Seccomp, &sources, &dir.0, true)
            .map_err(|e| lock_err(what, e.to_string()))?;
        // Packages not being updated keep their versions (when the mirror still has them).
        let pinned: Vec<LockedPackage> = pins
            .unwrap_or_default()
            .iter()
            .filter(|p| !names.contains(p.name.as_str()))
            .cloned()
            .collect();
        if !pinned.is_empty() {
            // apt preferences in the new root while mmdebstrap installs, gone afterwards. The
            // text goes through the hook's own argument (`$2`... is not given to hooks, so it is
            // quoted into the command): only names and versions of Debian's character set.
            let text = pins_text(&pinned);
            m.tool = std::mem::replace(&mut m.tool, Tool::at(Default::default()))
                .arg(format!(
                    "--setup-hook=mkdir -p \"$1/etc/apt/preferences.d\" && printf %s '{text}' > \"$1/etc/apt/preferences.d/envc-lock-pins\""
                ))
                .arg("--customize-hook=rm -f \"$1/etc/apt/preferences.d/envc-lock-pins\"");
        }
        sink(Event::Output {
            layer: "base",
            line: format!("envc: resolving the base ({} sources)", uris.len()),
        });
        let r = self.exec.tool(&m.tool, &mut |line| {
            sink(Event::Output {
                layer: "base",
                line: line.to_owned(),
            })
        });
        drop(m);
        r.map_err(|e| lock_err(what, e.to_string()))?;
        let root =
            open_dir(&dir.0).ok_or_else(|| lock_err(what, "cannot open the throwaway base"))?;
        let lists = open_in_root(
            &root,
            "var/lib/apt/lists",
            OFlag::O_DIRECTORY | OFlag::O_RDONLY,
        )
        .map_err(|e| lock_err(what, format!("cannot open its package lists: {e}")))?;
        let idx = ListsIndex::read(&lists);
        let mut out = Vec::new();
        for (name, arch, version) in installed(&root) {
            let e = idx.get(&name, &arch, &version).ok_or_else(|| {
                lock_err(
                    what,
                    format!(
                        "it has {name} {version} ({arch}) installed, but no package index of its sources lists that version with a SHA256"
                    ),
                )
            })?;
            let mirror = mirror_of_list(&e.list, &uris)
                .or(uris.first())
                .cloned()
                .unwrap_or_default();
            out.push(locked(e, mirror));
        }
        sort_packages(&mut out);
        check_pins(what, &out, &pinned)?;
        // The files apt downloaded for the build, if they are the locked ones, save a download.
        if let Ok(debs) = DebStore::open(&self.store)
            && let Ok(archives) = open_in_root(
                &root,
                "var/cache/apt/archives",
                OFlag::O_DIRECTORY | OFlag::O_RDONLY,
            )
        {
            let by_file: BTreeMap<String, &LockedPackage> = out
                .iter()
                .map(|p| (p.path.rsplit('/').next().unwrap_or("").to_owned(), p))
                .collect();
            for name in debs_in(&archives) {
                let decoded = name.replace("%3a", ":");
                let p = by_file
                    .get(&name)
                    .or_else(|| by_file.get(&decoded))
                    .copied()
                    .or_else(|| {
                        out.iter().find(|p| {
                            format!(
                                "{}_{}_{}.deb",
                                p.name,
                                p.version.replace(':', "%3a"),
                                p.arch
                            ) == name
                        })
                    });
                if let Some(p) = p
                    && debs
                        .import(p, &dir.0.join("var/cache/apt/archives").join(&name))
                        .is_ok()
                {
                    // Recorded now, so that a build from the lock need not read it (best
                    // effort: a build reads what is missing).
                    let _ = debs.control(p);
                }
            }
        }
        Ok(out)
    }

    /// The packages the `packages` step `si` of layer `li` installs, resolved in a throwaway
    /// snapshot of the tree it starts from (built as locked so far).
    fn resolve_step(
        &self,
        partial: &Plan,
        li: usize,
        si: usize,
        pins: &[LockedPackage],
        sink: AnySink<'_>,
    ) -> Result<Vec<LockedPackage>, ApplyError> {
        let layer = &partial.layers[li];
        let what = format!("layer `{}` step {}", layer.name, si + 1);
        let Step::Packages {
            packages,
            build_deps,
            ..
        } = &layer.steps[si]
        else {
            return Err(lock_err(what, "not a packages step"));
        };
        // The tree the step starts from: the layers before it, and the steps before it in its
        // own layer (a layer of its own id, as any other).
        let mut prefix = Plan {
            name: partial.name.clone(),
            spec: partial.spec.clone(),
            layers: partial.layers[..li].to_vec(),
        };
        if si > 0 {
            let steps = layer.steps[..si].to_vec();
            let parent = prefix.layers.last().map(|l| l.id);
            prefix.layers.push(Layer {
                name: layer.name.clone(),
                id: Layer::compute_id(parent, &steps),
                parent,
                steps,
            });
        }
        let _held = self.realize(&prefix, &mut |e| sink(e))?.held;
        let chain: Vec<LayerId> = prefix.layers.iter().map(|l| l.id).collect();
        let (vars, _) = partial.context_at(li, si);
        let key = cache_key(partial, li, si);
        let lists = self.store.cache_dir(&format!("apt-lists/{key}"))?;
        let partial_dir = lists.join("partial");
        fs::create_dir_all(&partial_dir).map_err(|source| ApplyError::Io {
            op: "create",
            path: partial_dir,
            source,
        })?;
        let _cache = self.store.lock_cache(&format!("lists-{key}"))?;
        let _run = self.store.hold_run_lock()?;
        let scratch = self.backend().scratch_root(&chain)?;
        let spec = Spec {
            source: scratch.source.clone(),
            mountpoint: scratch.mountpoint.clone(),
            network: true,
            binds: vec![Bind {
                host: lists.clone(),
                target: "/var/lib/apt/lists".into(),
                readonly: false,
                exact: false,
            }],
            tmp_files: vec![("envc-pins".into(), pins_text(pins))],
            action: Action::Exec {
                argv: vec![
                    "/bin/sh".into(),
                    "-c".into(),
                    resolve_script(packages, build_deps.is_some()),
                ],
                env: vars.into_iter().collect(),
                cwd: "/".into(),
                user: None,
                deny_services: true,
                sync: SyncMode::Off,
            },
        };
        let mut lines = Vec::new();
        let name = layer.name.clone();
        let result = self.exec.sandbox(&spec, &mut |line| {
            lines.push(line.to_owned());
            sink(Event::Output {
                layer: &name,
                line: line.to_owned(),
            });
        });
        self.backend().drop_scratch(scratch)?;
        let tail = || {
            let n = lines.len().saturating_sub(10);
            lines[n..].join("\n")
        };
        match result {
            Ok(0) => {}
            Ok(code) => {
                return Err(lock_err(
                    what,
                    format!(
                        "apt could not resolve the packages (exit status {code}):\n{}",
                        tail()
                    ),
                ));
            }
            Err(e) => return Err(lock_err(what, e.to_string())),
        }
        let lists_fd =
            open_dir(&lists).ok_or_else(|| lock_err(&what, "cannot open its package lists"))?;
        let idx = ListsIndex::read(&lists_fd);
        let mut out = Vec::new();
        for url in print_uris(&lines) {
            let (e, root) = idx.by_url(&url).ok_or_else(|| {
                lock_err(
                    &what,
                    format!(
                        "apt would download {url}, but no package index lists it with a SHA256"
                    ),
                )
            })?;
            out.push(locked(e, root));
        }
        sort_packages(&mut out);
        check_pins(&what, &out, pins)?;
        Ok(out)
    }
}

/// A pinned package that resolved to another version: the mirror no longer has the pinned one.
fn check_pins(what: &str, got: &[LockedPackage], pins: &[LockedPackage]) -> Result<(), ApplyError> {
    for p in got {
        let pinned: Vec<&LockedPackage> = pins
            .iter()
            .filter(|q| q.name == p.name && q.arch == p.arch)
            .collect();
        if !pinned.is_empty() && !pinned.iter().any(|q| q.version == p.version) {
            return Err(lock_err(
                what,
                format!(
                    "{} is locked at {}, but the mirror now gives {}: the locked version is gone; run `envc lock --update {}` to move it",
                    p.name, pinned[0].version, p.version, p.name
                ),
            ));
        }
    }
    Ok(())
}

/// The script that resolves a `packages` step: fresh lists from the root's sources, then the
/// files apt would download (into an empty archives directory, so every file it needs is named).
fn resolve_script(packages: &[String], satisfy: bool) -> String {
    let opts = apt_opts();
    let verb = if satisfy { "satisfy" } else { "install" };
    let quoted: Vec<String> = packages
        .iter()
        .map(|p| format!("'{}'", p.replace('\'', r"'\''")))
        .collect();
    // A lock records what a step adds, never what it removes: build conflicts that would remove
    // a package cannot be locked (the locked build would keep it).
    let removals = if satisfy {
        format!(
            "if apt-get {opts} -s satisfy -y -- {} | grep '^Remv '; then\n\
             \techo 'envc: satisfying these build dependencies removes the packages above (Build-Conflicts), which a lock cannot record: remove them from the environment first' >&2\n\
             \texit 1\n\
             fi\n",
            quoted.join(" ")
        )
    } else {
        String::new()
    };
    format!(
        "set -e\n\
         mkdir -p /tmp/envc-archives/partial\n\
         apt-get {opts} -qq update\n\
         {removals}\
         apt-get {opts} -o Dir::Cache::Archives=/tmp/envc-archives/ -o Dir::Etc::Preferences=/tmp/envc-pins --print-uris -qq {verb} -y -- {}\n",
        quoted.join(" ")
    )
}
