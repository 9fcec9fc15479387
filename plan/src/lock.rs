//! Locks: the exact packages a spec installs, as `envc lock` resolved them, and how a lock enters
//! layer ids.
//!
//! A lock lives beside its spec (`env.kdl` -> `env.lock`), as TOML written by [`Lock::to_toml`]
//! in a fixed order, one package per line, so that a change to it reads as a diff. It holds:
//!
//! - the inputs it was resolved for: the base's definition and the requested packages of every
//!   `packages` step, in order (with what `extends` brings in), summed in `spec-checksum`. A
//!   comment, a `run` step or a layer's name is not an input: changing it leaves the lock fresh;
//! - `source-date-epoch`, chosen when the lock was first written and kept by updates;
//! - for a Debian base, every package of the base; for each `packages` step, every package it
//!   installs, dependencies included; each as name, version, architecture, sha256, size, its path
//!   in the archive and the archive it came from;
//! - the versions of the tools that shaped the result (mmdebstrap, apt).
//!
//! [`Lock::attach`] turns a compiled plan into a locked one: the base step carries the
//! source-date-epoch and the base's packages, each `packages` step its locked set, and every id is
//! computed again. Name, version, architecture and sha256 enter the ids; size, path and archive do
//! not (the sha256 already names the file's bytes). A lock update therefore changes the ids of
//! exactly the layers whose set changed, and their descendants.

use std::fmt::{self, Write as _};

use serde::{Deserialize, Serialize};

use crate::id::{ID_LEN, hex};
use crate::key::Key;
use crate::model::{Base, Layer, Plan, Step};

/// The lock format this envc writes and reads.
pub const LOCK_VERSION: u32 = 1;

/// The context string of a lock's `spec-checksum`.
const INPUTS_CONTEXT: &str = "envc 2026-11-28 lock inputs v1";

/// The sha256 of a `.deb` file.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Sha256(pub [u8; ID_LEN]);

impl Sha256 {
    /// The digest as 64 lowercase hex digits.
    pub fn to_hex(&self) -> String {
        hex(&self.0)
    }
}

impl fmt::Display for Sha256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Sha256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sha256({})", &self.to_hex()[..16])
    }
}

crate::id::hex_text!(Sha256);

/// One locked package: exactly one `.deb` file.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockedPackage {
    /// The package name (without an architecture qualifier).
    pub name: String,
    /// The exact version, epoch included.
    pub version: String,
    /// The dpkg architecture of the file (`all` for architecture-independent packages).
    pub arch: String,
    /// The sha256 of the `.deb` file.
    pub sha256: Sha256,
    /// The file's size in bytes.
    pub size: u64,
    /// Its path in the archive (the index's `Filename`), e.g. `pool/main/h/hello/hello_2.10-3_amd64.deb`.
    pub path: String,
    /// The archive it was resolved from (the URI the path is relative to).
    pub mirror: String,
}

impl LockedPackage {
    /// What of the package enters ids.
    pub fn key(&self) -> Key {
        Key::record(
            "deb",
            vec![
                ("name", Key::str(&self.name)),
                ("version", Key::str(&self.version)),
                ("arch", Key::str(&self.arch)),
                ("sha256", Key::Digest(self.sha256.0)),
            ],
        )
    }

    /// `name version arch`, as people read it.
    pub fn label(&self) -> String {
        format!("{} {} ({})", self.name, self.version, self.arch)
    }

    /// `name:arch=version`, as apt takes it.
    pub fn apt_spec(&self) -> String {
        format!("{}:{}={}", self.name, self.arch, self.version)
    }

    /// The first of name, version and architecture that is not in Debian's syntax: the field,
    /// its value, and what is wrong. Names: `a-z 0-9 + - .`, at least 2, starting with a letter
    /// or digit; versions: `A-Z a-z 0-9 . + ~ : -`, starting with a letter or digit;
    /// architectures: `a-z 0-9 -`, starting with a letter or digit.
    pub fn syntax_error(&self) -> Option<(&'static str, &str, &'static str)> {
        let starts = |s: &str| s.starts_with(|c: char| c.is_ascii_alphanumeric());
        let name_ok = self.name.len() >= 2
            && starts(&self.name)
            && self
                .name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+-.".contains(&b));
        if !name_ok {
            return Some(("name", &self.name, "is not a Debian package name"));
        }
        let version_ok = starts(&self.version)
            && self
                .version
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b".+~:-".contains(&b));
        if !version_ok {
            return Some(("version", &self.version, "is not a Debian version"));
        }
        let arch_ok = starts(&self.arch)
            && self
                .arch
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !arch_ok {
            return Some(("arch", &self.arch, "is not a Debian architecture"));
        }
        None
    }
}

/// The installer of locked bases and `packages` steps, part of their ids: a new one that builds
/// other trees from the same lock gets a new name.
pub const BASE_INSTALLER: &str = "envc-dpkg-2";

/// What a lock gives a plan's base step: the source-date-epoch of every locked build, and for a
/// Debian base its packages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BaseLocked {
    /// The timestamp every locked build uses (`SOURCE_DATE_EPOCH`), and to which it clamps mtimes.
    pub source_date_epoch: u64,
    /// The base's packages (empty for a tar or scratch base).
    pub packages: Vec<LockedPackage>,
}

impl BaseLocked {
    pub(crate) fn key(&self) -> Key {
        Key::record(
            "lock",
            vec![
                // How the set is installed shapes the tree: envc's own installer since it
                // replaced mmdebstrap for locked bases.
                ("installer", Key::Str(BASE_INSTALLER.into())),
                ("source-date-epoch", Key::U64(self.source_date_epoch)),
                (
                    "packages",
                    Key::List(self.packages.iter().map(LockedPackage::key).collect()),
                ),
            ],
        )
    }
}

/// The lock's record of the base.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct BaseLock {
    /// The suite.
    pub suite: String,
    /// The architecture.
    pub arch: String,
    /// The mmdebstrap variant.
    pub variant: String,
    /// The components.
    pub components: Vec<String>,
    /// The extra packages the spec asked for.
    #[serde(default)]
    pub include: Vec<String>,
    /// The hash of the base's definition (everything of it that enters its id).
    pub checksum: String,
    /// Every package of the base.
    pub packages: Vec<LockedPackage>,
}

/// The lock's record of one `packages` step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct StepLock {
    /// The layer the step was in (informative: moving a step to another layer keeps the lock).
    pub layer: String,
    /// The step's position in that layer, from 1 (informative).
    pub step: usize,
    /// The packages the step asks for, as in the spec.
    pub packages: Vec<String>,
    /// Every package it installs, dependencies included.
    pub installs: Vec<LockedPackage>,
}

/// A lock file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Lock {
    /// The format version ([`LOCK_VERSION`]).
    pub version: u32,
    /// The hash of the spec's package-affecting parts ([`inputs_checksum`]).
    pub spec_checksum: String,
    /// The timestamp of every locked build.
    pub source_date_epoch: u64,
    /// The versions of the tools that shaped the result.
    #[serde(default)]
    pub tools: std::collections::BTreeMap<String, String>,
    /// The base, for a Debian base.
    #[serde(default)]
    pub base: Option<BaseLock>,
    /// The `packages` steps, in order.
    #[serde(default, rename = "step")]
    pub steps: Vec<StepLock>,
    /// The tree digests of layers built from this lock (`envc lock --digests`): an apply that
    /// builds one of these layers and gets another tree reports it. Not an input of anything.
    #[serde(default, rename = "layer")]
    pub layers: Vec<LayerDigest>,
}

/// The tree digest a layer built from the lock had.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct LayerDigest {
    /// The layer's name (informative).
    pub name: String,
    /// The layer's id.
    pub id: crate::LayerId,
    /// The digest of its full tree.
    pub tree_digest: crate::Digest,
}

/// A lock file that cannot be read: the message and, when known, the byte range it is about.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct LockParseError {
    /// What is wrong.
    pub message: String,
    /// Where, as a byte range of the file.
    pub span: Option<std::ops::Range<usize>>,
}

/// What no longer matches between a lock and its spec: the first difference, in spec order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Stale {
    /// The lock is of another format version.
    #[error("the lock has format version {found}, this envc reads version {LOCK_VERSION}")]
    Version {
        /// The version in the file.
        found: u32,
    },
    /// The base changed (suite, variant, architecture, components, included packages, ...).
    #[error("the base changed: the lock is for {locked}, the spec has {now}")]
    Base {
        /// The locked base, in short.
        locked: String,
        /// The spec's base, in short.
        now: String,
    },
    /// A `packages` step asks for other packages than the lock's step at its position.
    #[error(
        "layer `{layer}` step {step} (packages {now}) no longer matches the lock, which has packages {locked} there"
    )]
    Step {
        /// The layer.
        layer: String,
        /// Its step, from 1.
        step: usize,
        /// What the spec asks for.
        now: String,
        /// What the lock has.
        locked: String,
    },
    /// The spec has a `packages` step the lock does not.
    #[error("layer `{layer}` step {step} (packages {now}) is not in the lock")]
    NewStep {
        /// The layer.
        layer: String,
        /// Its step, from 1.
        step: usize,
        /// What the step asks for.
        now: String,
    },
    /// The lock has a step the spec no longer has.
    #[error(
        "the lock has a packages step (layer `{layer}` step {step}: packages {locked}) that the spec no longer has"
    )]
    GoneStep {
        /// The layer the lock names.
        layer: String,
        /// Its step.
        step: usize,
        /// What it asked for.
        locked: String,
    },
    /// Every step matches but the recorded checksum does not (the lock was edited by hand).
    #[error("the lock's spec-checksum {locked} is not the spec's ({now}); the lock was edited")]
    Checksum {
        /// The lock's.
        locked: String,
        /// The spec's.
        now: String,
    },
}

/// Where a spec's `packages` step is: layer index, step index, and the step's packages.
pub struct PackagesStep<'p> {
    /// The layer's index in the plan.
    pub layer: usize,
    /// The step's index in the layer.
    pub step: usize,
    /// The layer's name.
    pub layer_name: &'p str,
    /// The packages it asks for.
    pub packages: &'p [String],
    /// A `build-deps` step: `packages` are dependency strings to satisfy.
    pub satisfy: bool,
}

/// The `packages` steps of a plan, in order.
pub fn packages_steps(plan: &Plan) -> Vec<PackagesStep<'_>> {
    let mut out = Vec::new();
    for (li, layer) in plan.layers.iter().enumerate() {
        for (si, step) in layer.steps.iter().enumerate() {
            if let Step::Packages {
                packages,
                build_deps,
                ..
            } = step
            {
                out.push(PackagesStep {
                    layer: li,
                    step: si,
                    layer_name: &layer.name,
                    packages,
                    satisfy: build_deps.is_some(),
                });
            }
        }
    }
    out
}

/// The hash of the base's definition, as the lock records it.
pub fn base_checksum(base: &Base) -> String {
    format!("blake3:{}", hex(&base.key().hash(INPUTS_CONTEXT)))
}

/// The hash of a plan's package-affecting parts: the base's definition and the packages of every
/// `packages` step, in order.
pub fn inputs_checksum(plan: &Plan) -> String {
    let base = plan.base().map_or(Key::None, Base::key);
    // A `build-deps` step's strings are marked (only then: the checksums of locks without one
    // stay as they were), so that turning a `packages` step into a `build-deps` step of the same
    // strings makes the lock stale.
    let steps = packages_steps(plan)
        .iter()
        .map(|s| {
            if s.satisfy {
                Key::record("satisfy", vec![("packages", Key::strs(s.packages))])
            } else {
                Key::strs(s.packages)
            }
        })
        .collect();
    let key = Key::record(
        "lock-inputs",
        vec![("base", base), ("packages", Key::List(steps))],
    );
    format!("blake3:{}", hex(&key.hash(INPUTS_CONTEXT)))
}

fn base_summary(base: &Base) -> String {
    match base {
        Base::Debian {
            suite,
            variant,
            arch,
            components,
            include,
            ..
        } => {
            let mut s = format!("debian {suite} {variant} {arch} [{}]", components.join(" "));
            if !include.is_empty() {
                let _ = write!(s, " with {}", include.join(" "));
            }
            s
        }
        Base::Tar { path, .. } => format!("tar {}", path.display()),
        Base::Oci { path, .. } => format!("oci {}", path.display()),
        Base::Scratch => "scratch".into(),
    }
}

fn base_lock_summary(b: &BaseLock) -> String {
    let mut s = format!(
        "debian {} {} {} [{}]",
        b.suite,
        b.variant,
        b.arch,
        b.components.join(" ")
    );
    if !b.include.is_empty() {
        let _ = write!(s, " with {}", b.include.join(" "));
    }
    s
}

fn words(p: &[String]) -> String {
    p.join(" ")
}

impl Lock {
    /// Reads a lock file's text.
    pub fn parse(text: &str) -> Result<Lock, LockParseError> {
        let lock: Lock = toml::from_str(text).map_err(|e| LockParseError {
            message: e.message().to_owned(),
            span: e.span(),
        })?;
        if lock.version != LOCK_VERSION {
            return Err(LockParseError {
                message: Stale::Version {
                    found: lock.version,
                }
                .to_string(),
                span: None,
            });
        }
        // Names, versions and architectures become file names (apt's `NAME_VERSION_ARCH.deb`) and
        // apt arguments: only Debian's syntax, never a `/`, a leading `-` or a control character.
        for p in lock.packages() {
            if let Some((field, value, why)) = p.syntax_error() {
                let quoted = format!("{field} = {}", quote(value));
                return Err(LockParseError {
                    message: format!("package {field} `{value}` {why}"),
                    span: text.find(&quoted).map(|i| i..i + quoted.len()),
                });
            }
        }
        // One package (name and architecture) once per set: dpkg installs one version of it, and
        // a repeat would change the set's ids without changing what is installed.
        let sets = lock
            .base
            .iter()
            .map(|b| b.packages.as_slice())
            .chain(lock.steps.iter().map(|s| s.installs.as_slice()));
        for set in sets {
            let mut seen = std::collections::BTreeSet::new();
            for p in set {
                if !seen.insert((p.name.as_str(), p.arch.as_str())) {
                    let quoted = format!("name = {}", quote(&p.name));
                    return Err(LockParseError {
                        message: format!(
                            "package {} ({}) is listed twice in one set: the lock was edited",
                            p.name, p.arch
                        ),
                        span: text.rfind(&quoted).map(|i| i..i + quoted.len()),
                    });
                }
            }
        }
        // A Debian base installs packages: a `[base]` without any would build the base from the
        // mirror as it is today under a locked id.
        if lock.base.as_ref().is_some_and(|b| b.packages.is_empty()) {
            return Err(LockParseError {
                message: "its [base] has no packages (a Debian base has dozens): the lock was edited or cut short".into(),
                span: text.find("\n[base]\n").map(|i| i + 1..i + 7),
            });
        }
        Ok(lock)
    }

    /// Every package of the lock, the base's first.
    pub fn packages(&self) -> impl Iterator<Item = &LockedPackage> {
        self.base
            .iter()
            .flat_map(|b| b.packages.iter())
            .chain(self.steps.iter().flat_map(|s| s.installs.iter()))
    }

    /// The first way in which this lock does not match `plan`, if any.
    pub fn check(&self, plan: &Plan) -> Result<(), Stale> {
        if self.version != LOCK_VERSION {
            return Err(Stale::Version {
                found: self.version,
            });
        }
        let base = plan.base();
        let base_matches = match (base, &self.base) {
            (Some(b @ Base::Debian { .. }), Some(l)) => base_checksum(b) == l.checksum,
            (Some(Base::Debian { .. }), None) | (_, Some(_)) => false,
            (_, None) => true,
        };
        if !base_matches {
            return Err(Stale::Base {
                locked: self
                    .base
                    .as_ref()
                    .map_or_else(|| "a base other than debian".into(), base_lock_summary),
                now: base.map_or_else(|| "no base".into(), base_summary),
            });
        }
        let steps = packages_steps(plan);
        for (i, s) in steps.iter().enumerate() {
            match self.steps.get(i) {
                Some(l) if l.packages.as_slice() == s.packages => {}
                Some(l) => {
                    return Err(Stale::Step {
                        layer: s.layer_name.to_owned(),
                        step: s.step + 1,
                        now: words(s.packages),
                        locked: words(&l.packages),
                    });
                }
                None => {
                    return Err(Stale::NewStep {
                        layer: s.layer_name.to_owned(),
                        step: s.step + 1,
                        now: words(s.packages),
                    });
                }
            }
        }
        if let Some(l) = self.steps.get(steps.len()) {
            return Err(Stale::GoneStep {
                layer: l.layer.clone(),
                step: l.step,
                locked: words(&l.packages),
            });
        }
        let now = inputs_checksum(plan);
        if now != self.spec_checksum {
            return Err(Stale::Checksum {
                locked: self.spec_checksum.clone(),
                now,
            });
        }
        Ok(())
    }

    /// `plan` with this lock in it: the base step carries the source-date-epoch and the base's
    /// packages, every `packages` step its locked set, and every id is computed again. Fails when
    /// the lock does not match the plan.
    pub fn attach(&self, plan: &Plan) -> Result<Plan, Stale> {
        self.check(plan)?;
        let mut out = plan.clone();
        let mut next = 0;
        for layer in &mut out.layers {
            for step in &mut layer.steps {
                match step {
                    Step::Base { locked, .. } => {
                        *locked = Some(BaseLocked {
                            source_date_epoch: self.source_date_epoch,
                            packages: self
                                .base
                                .as_ref()
                                .map(|b| b.packages.clone())
                                .unwrap_or_default(),
                        });
                    }
                    Step::Packages { locked, .. } => {
                        *locked = Some(self.steps[next].installs.clone());
                        next += 1;
                    }
                    _ => {}
                }
            }
        }
        out.recompute_ids();
        Ok(out)
    }

    /// The lock as TOML, in a fixed order: one package per line, sorted by name and architecture.
    pub fn to_toml(&self) -> String {
        let mut s = String::new();
        s.push_str(
            "# envc lock: the exact packages of the spec beside it. Written by `envc lock`;\n",
        );
        s.push_str("# review its changes like code, and check it in.\n");
        let _ = writeln!(s, "version = {}", self.version);
        let _ = writeln!(s, "spec-checksum = {}", quote(&self.spec_checksum));
        let _ = writeln!(s, "source-date-epoch = {}", self.source_date_epoch);
        if !self.tools.is_empty() {
            s.push_str("\n[tools]\n");
            for (k, v) in &self.tools {
                let _ = writeln!(s, "{} = {}", bare_or_quoted(k), quote(v));
            }
        }
        if let Some(b) = &self.base {
            s.push_str("\n[base]\n");
            let _ = writeln!(s, "suite = {}", quote(&b.suite));
            let _ = writeln!(s, "arch = {}", quote(&b.arch));
            let _ = writeln!(s, "variant = {}", quote(&b.variant));
            let _ = writeln!(s, "components = {}", list(&b.components));
            let _ = writeln!(s, "include = {}", list(&b.include));
            let _ = writeln!(s, "checksum = {}", quote(&b.checksum));
            packages(&mut s, "packages", &b.packages);
        }
        for st in &self.steps {
            s.push_str("\n[[step]]\n");
            let _ = writeln!(s, "layer = {}", quote(&st.layer));
            let _ = writeln!(s, "step = {}", st.step);
            let _ = writeln!(s, "packages = {}", list(&st.packages));
            packages(&mut s, "installs", &st.installs);
        }
        for l in &self.layers {
            s.push_str("\n[[layer]]\n");
            let _ = writeln!(s, "name = {}", quote(&l.name));
            let _ = writeln!(s, "id = {}", quote(&l.id.to_hex()));
            let _ = writeln!(s, "tree-digest = {}", quote(&l.tree_digest.to_hex()));
        }
        s
    }
}

/// Sorts a locked set the way locks and ids have it: by name, then architecture, then version.
pub fn sort_packages(p: &mut [LockedPackage]) {
    p.sort_by(|a, b| {
        (&a.name, &a.arch, &a.version, a.sha256).cmp(&(&b.name, &b.arch, &b.version, b.sha256))
    });
}

fn packages(s: &mut String, field: &str, p: &[LockedPackage]) {
    if p.is_empty() {
        let _ = writeln!(s, "{field} = []");
        return;
    }
    let _ = writeln!(s, "{field} = [");
    for p in p {
        let _ = writeln!(
            s,
            "  {{ name = {}, version = {}, arch = {}, size = {}, sha256 = {}, path = {}, mirror = {} }},",
            quote(&p.name),
            quote(&p.version),
            quote(&p.arch),
            p.size,
            quote(&p.sha256.to_hex()),
            quote(&p.path),
            quote(&p.mirror),
        );
    }
    s.push_str("]\n");
}

fn list(items: &[String]) -> String {
    let q: Vec<String> = items.iter().map(|i| quote(i)).collect();
    format!("[{}]", q.join(", "))
}

fn bare_or_quoted(k: &str) -> String {
    if !k.is_empty()
        && k.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        k.to_owned()
    } else {
        quote(k)
    }
}

/// A TOML basic string.
fn quote(v: &str) -> String {
    let mut s = String::with_capacity(v.len() + 2);
    s.push('"');
    for c in v.chars() {
        match c {
            '"' => s.push_str("\\\""),
            '\\' => s.push_str("\\\\"),
            '\n' => s.push_str("\\n"),
            '\t' => s.push_str("\\t"),
            '\r' => s.push_str("\\r"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                let _ = write!(s, "\\u{:04x}", c as u32);
            }
            c => s.push(c),
        }
    }
    s.push('"');
    s
}

impl Plan {
    /// Computes every layer's parent and id again from its steps (after a lock was attached).
    pub fn recompute_ids(&mut self) {
        let mut parent = None;
        for layer in &mut self.layers {
            layer.parent = parent;
            layer.id = Layer::compute_id(parent, &layer.steps);
            parent = Some(layer.id);
        }
    }

    /// The source-date-epoch of a locked plan; `None` for an unlocked one.
    pub fn source_date_epoch(&self) -> Option<u64> {
        match self.layers.first()?.steps.first()? {
            Step::Base {
                locked: Some(l), ..
            } => Some(l.source_date_epoch),
            _ => None,
        }
    }

    /// Whether a lock is attached.
    pub fn is_locked(&self) -> bool {
        self.source_date_epoch().is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::SyncMode;

    fn pkg(name: &str, version: &str, fill: u8) -> LockedPackage {
        LockedPackage {
            name: name.into(),
            version: version.into(),
            arch: "amd64".into(),
            sha256: Sha256([fill; 32]),
            size: 100,
            path: format!("pool/main/{name}_{version}_amd64.deb"),
            mirror: "http://mirror.invalid/debian".into(),
        }
    }

    fn debian() -> Base {
        Base::Debian {
            suite: "bookworm".into(),
            variant: "minbase".into(),
            arch: "amd64".into(),
            components: vec!["main".into()],
            include: vec![],
            mirror: None,
            exclude_docs: false,
        }
    }

    fn run(cmd: &str) -> Step {
        Step::Run {
            command: cmd.into(),
            network: false,
            user: None,
            sync: SyncMode::Off,
        }
    }

    fn packages(p: &[&str]) -> Step {
        Step::Packages {
            packages: p.iter().map(|s| s.to_string()).collect(),
            sync: SyncMode::Seccomp,
            locked: None,
            build_deps: None,
        }
    }

    fn plan(run_cmd: &str, a: &[&str], b: &[&str]) -> Plan {
        Plan::new(
            "t",
            debian(),
            vec![
                ("tools".into(), vec![run(run_cmd), packages(a)]),
                ("more".into(), vec![packages(b)]),
            ],
        )
    }

    fn lock_for(plan: &Plan) -> Lock {
        let base = plan.base().unwrap();
        Lock {
            version: LOCK_VERSION,
            spec_checksum: inputs_checksum(plan),
            source_date_epoch: 1_700_000_000,
            tools: [("apt".to_owned(), "2.6.1".to_owned())].into(),
            base: Some(BaseLock {
                suite: "bookworm".into(),
                arch: "amd64".into(),
                variant: "minbase".into(),
                components: vec!["main".into()],
                include: vec![],
                checksum: base_checksum(base),
                packages: vec![pkg("dpkg", "1.21", 1), pkg("libc6", "2.36", 2)],
            }),
            steps: packages_steps(plan)
                .iter()
                .enumerate()
                .map(|(i, s)| StepLock {
                    layer: s.layer_name.to_owned(),
                    step: s.step + 1,
                    packages: s.packages.to_vec(),
                    installs: vec![pkg(&format!("p{i}"), "1", 10 + i as u8)],
                })
                .collect(),
            layers: vec![],
        }
    }

    #[test]
    fn a_packages_step_turned_build_deps_makes_the_lock_stale() {
        let p = plan("true", &["a"], &["b"]);
        let mut q = p.clone();
        if let Some(Step::Packages { build_deps, .. }) = q.layers[1].steps.get_mut(1) {
            *build_deps = Some("debian/control".into());
        } else {
            panic!("the plan's second step is not a packages step");
        }
        assert_ne!(inputs_checksum(&p), inputs_checksum(&q));
        assert!(lock_for(&p).check(&q).is_err());
    }

    #[test]
    fn a_package_listed_twice_in_a_set_is_refused() {
        let lock = lock_for(&plan("true", &["a"], &["b"]));
        let text = lock.to_toml();
        let line = text
            .lines()
            .find(|l| l.contains("name = ") && l.contains("sha256"))
            .expect("a package line")
            .to_owned();
        let doubled = text.replacen(&line, &format!("{line}\n{line}"), 1);
        let e = Lock::parse(&doubled).unwrap_err();
        assert!(e.message.contains("listed twice"), "{}", e.message);
        assert!(e.span.is_some());
        assert!(Lock::parse(&text).is_ok());
    }

    #[test]
    fn the_toml_round_trips_and_is_stable() {
        let p = plan("true", &["hello"], &["make"]);
        let mut lock = lock_for(&p);
        lock.base.as_mut().unwrap().packages[0].version = "1:2.0~rc".into();
        lock.base.as_mut().unwrap().packages[0].mirror = "file:/srv/\"x\\\n".into();
        lock.layers.push(LayerDigest {
            name: "tools".into(),
            id: p.layers[1].id,
            tree_digest: crate::Digest([7; 32]),
        });
        assert_eq!(lock.check(&p), Ok(()), "digests are not inputs");
        let text = lock.to_toml();
        let back = Lock::parse(&text).unwrap();
        assert_eq!(back, lock);
        assert_eq!(back.to_toml(), text);
        assert!(
            text.contains("\n[[step]]\nlayer = \"tools\"\nstep = 2\n"),
            "{text}"
        );
    }

    #[test]
    fn a_truncated_or_unknown_lock_is_an_error_with_a_place() {
        let p = plan("true", &["hello"], &["make"]);
        let text = lock_for(&p).to_toml();
        let cut = &text[..text.len() - 40];
        let e = Lock::parse(cut).unwrap_err();
        assert!(e.span.is_some(), "{e:?}");
        let e = Lock::parse(&text.replace("version = 1", "version = 9")).unwrap_err();
        assert!(e.message.contains("format version 9"), "{e:?}");
        let bad = text.replace("size = 100", "size = -1");
        assert!(Lock::parse(&bad).is_err());
        let bad = text.replacen("sha256 = \"0101", "sha256 = \"zz01", 1);
        assert!(Lock::parse(&bad).is_err());
        assert!(Lock::parse(&text.replace("[tools]", "[tools]\n[extra]")).is_err());
        // Names, versions and architectures that would leave the repository as file names, or
        // be taken for options.
        for (field, bad) in [
            ("name", "../../../../var/tmp/x"),
            ("name", "-oAPT::x"),
            ("version", "1/../../x"),
            ("version", "1\n2"),
            ("arch", "amd64/x"),
            ("arch", "../x"),
        ] {
            let mut hostile = lock_for(&p);
            let q = &mut hostile.steps[0].installs[0];
            match field {
                "name" => q.name = bad.into(),
                "version" => q.version = bad.into(),
                _ => q.arch = bad.into(),
            }
            let text = hostile.to_toml();
            let e = Lock::parse(&text).unwrap_err();
            assert!(
                e.message.starts_with(&format!("package {field} `")),
                "{e:?}"
            );
            let span = e.span.clone().expect("a place");
            assert!(text[span].starts_with(&format!("{field} = ")), "{e:?}");
        }
        // Real ones pass: epochs, tildes, plus signs, foreign architectures.
        let mut fine = lock_for(&p);
        fine.steps[0].installs[0].version = "1:2.36-9+deb12u4~bpo1".into();
        fine.steps[0].installs[0].name = "libstdc++6".into();
        fine.steps[0].installs[0].arch = "i386".into();
        Lock::parse(&fine.to_toml()).unwrap();
        // A [base] without packages would build an unlocked base under a locked id.
        let mut empty = lock_for(&p);
        empty.base.as_mut().unwrap().packages.clear();
        let e = Lock::parse(&empty.to_toml()).unwrap_err();
        assert!(e.message.contains("[base] has no packages"), "{e:?}");
        assert!(e.span.is_some(), "{e:?}");
    }

    #[test]
    fn a_run_step_change_keeps_the_lock_fresh_a_package_change_does_not() {
        let p = plan("true", &["hello"], &["make"]);
        let lock = lock_for(&p);
        assert_eq!(lock.check(&p), Ok(()));
        assert_eq!(lock.check(&plan("false", &["hello"], &["make"])), Ok(()));
        let e = lock
            .check(&plan("true", &["hello"], &["make", "gcc"]))
            .unwrap_err();
        assert!(
            matches!(&e, Stale::Step { layer, step: 1, .. } if layer == "more"),
            "{e}"
        );
        let mut other = p.clone();
        if let Step::Base {
            base: Base::Debian { suite, .. },
            ..
        } = &mut other.layers[0].steps[0]
        {
            *suite = "trixie".into();
        }
        assert!(matches!(lock.check(&other), Err(Stale::Base { .. })));
        let mut fewer = p.clone();
        fewer.layers.pop();
        assert!(matches!(lock.check(&fewer), Err(Stale::GoneStep { .. })));
        let mut edited = lock.clone();
        edited.spec_checksum = "blake3:00".into();
        assert!(matches!(edited.check(&p), Err(Stale::Checksum { .. })));
    }

    #[test]
    fn a_lock_update_changes_exactly_the_ids_of_the_changed_set_and_its_descendants() {
        let p = plan("true", &["hello"], &["make"]);
        let lock = lock_for(&p);
        let a = lock.attach(&p).unwrap();
        a.verify().unwrap();
        assert!(a.is_locked() && !p.is_locked());
        for (x, y) in a.layers.iter().zip(&p.layers) {
            assert_ne!(x.id, y.id, "a lock changes every id of a debian plan");
        }
        let mut updated = lock.clone();
        updated.steps[1].installs[0].version = "2".into();
        let b = updated.attach(&p).unwrap();
        assert_eq!(a.layers[0].id, b.layers[0].id);
        assert_eq!(a.layers[1].id, b.layers[1].id);
        assert_ne!(a.layers[2].id, b.layers[2].id);
        // Size, path and archive are not in ids: the sha256 names the bytes.
        let mut moved = lock.clone();
        moved.steps[0].installs[0].mirror = "file:/elsewhere".into();
        moved.steps[0].installs[0].path = "pool/x.deb".into();
        let ids = |p: &Plan| p.layers.iter().map(|l| l.id).collect::<Vec<_>>();
        assert_eq!(ids(&moved.attach(&p).unwrap()), ids(&a));
        let mut sde = lock.clone();
        sde.source_date_epoch += 1;
        assert_ne!(sde.attach(&p).unwrap().layers[0].id, a.layers[0].id);
    }
}
