//! The plan's data types and how each of them contributes to a layer's key.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::digest::Digest;
use crate::env;
use crate::id::LayerId;
use crate::key::{Key, LAYER_ID_CONTEXT};
use crate::lock::{BaseLocked, LockedPackage};

/// The name of the first layer of every plan, the base.
pub const BASE_LAYER_NAME: &str = "base";

/// A compiled environment: the base and the spec's layers, in order, each with its id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// The environment's name (the spec's `name`).
    pub name: String,
    /// The spec this plan was compiled from, as given. Not part of any id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<PathBuf>,
    /// The layers, base first; each layer's parent is the one before it.
    pub layers: Vec<Layer>,
}

/// One layer of a plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layer {
    /// The layer's name in the spec (`base` for the base). Not part of the id.
    pub name: String,
    /// The hash of the layer's key.
    pub id: LayerId,
    /// The previous layer's id; `None` for the base.
    pub parent: Option<LayerId>,
    /// The steps, in order. The base layer has exactly one step, [`Step::Base`].
    pub steps: Vec<Step>,
}

/// Where a root starts from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Base {
    /// A Debian (or derivative) root built by mmdebstrap.
    Debian {
        /// The suite or codename, e.g. `bookworm`.
        suite: String,
        /// The mmdebstrap variant, e.g. `minbase`.
        variant: String,
        /// The dpkg architecture, resolved at compile time.
        arch: String,
        /// Archive components, sorted.
        components: Vec<String>,
        /// Extra packages installed with the base, sorted.
        include: Vec<String>,
        /// The mirror; `None` means the host's apt sources. Not part of the id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mirror: Option<String>,
        /// Leave out man pages, docs (but copyright files) and info pages, here and in every later
        /// `packages` step, and man-db's index updates.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        exclude_docs: bool,
    },
    /// A root filesystem tarball, identified by its content.
    Tar {
        /// The tarball on the host. Not part of the id.
        path: PathBuf,
        /// blake3 of the tarball's bytes.
        digest: Digest,
    },
    /// An image made by another tool: an OCI image layout directory, or a tar of one. It is
    /// identified by what its manifest names (the config's digest and the layers' digests and
    /// media types, in order), never by the bytes of the archive file or its path.
    Oci {
        /// The layout directory or archive on the host. Not part of the id.
        path: PathBuf,
        /// The `org.opencontainers.image.ref.name` that selected the manifest, if the spec gave
        /// one. Not part of the id (the digests are).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        tag: Option<String>,
        /// The image config's digest, `sha256:HEX`.
        config: String,
        /// The layers, applied in this order.
        layers: Vec<OciLayer>,
    },
    /// An empty root.
    Scratch,
}

/// One layer of an OCI base, as its manifest describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OciLayer {
    /// The blob's media type (which compression: tar, tar+gzip, tar+zstd).
    pub media_type: String,
    /// The (compressed) blob's digest, `sha256:HEX`.
    pub digest: String,
    /// The blob's size in bytes. Not part of the id (the digest is).
    pub size: u64,
    /// The digest of the uncompressed tar (the config's `rootfs.diff_ids` entry), if the config
    /// gives one. Not part of the id (the config's digest is).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diff_id: Option<String>,
}

/// How a step's sync calls (fsync, fdatasync, sync, syncfs, msync, sync_file_range) are handled.
/// Not part of any id: it changes how fast a root is made, not what is in it. envc makes every
/// layer durable itself (one syncfs) before sealing it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SyncMode {
    /// Sync calls reach the kernel.
    #[default]
    Off,
    /// A preload library turns them into no-ops (dynamically linked programs only) and strips
    /// O_SYNC/O_DSYNC from opens.
    Shim,
    /// A seccomp filter makes them return 0 for every program, static or not; open flags are left
    /// alone.
    Seccomp,
}

impl SyncMode {
    /// The default for `packages` steps and base builds.
    pub const PACKAGES_DEFAULT: SyncMode = SyncMode::Seccomp;
    /// The default for `run` steps (a test suite may rely on durability).
    pub const RUN_DEFAULT: SyncMode = SyncMode::Off;
}

fn packages_default() -> SyncMode {
    SyncMode::PACKAGES_DEFAULT
}

/// Whether a `copy` source is a file or a directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CopyKind {
    /// A regular file.
    File,
    /// A directory, copied recursively.
    Directory,
}

/// Unix permission bits (at most `0o7777`), shown as 4 octal digits.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Mode(pub u32);

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04o}", self.0)
    }
}

impl fmt::Debug for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Mode({self})")
    }
}

impl Serialize for Mode {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Mode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        match u32::from_str_radix(&s, 8) {
            Ok(m) if m <= 0o7777 => Ok(Mode(m)),
            _ => Err(serde::de::Error::custom(format!(
                "`{s}` is not an octal mode"
            ))),
        }
    }
}

/// One step of a layer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Step {
    /// Create the base root (only in the first layer).
    Base {
        /// What the base is.
        base: Base,
        /// Sync suppression while building it. Not part of the id.
        #[serde(default = "packages_default")]
        sync: SyncMode,
        /// What the lock says of the base (with a lock only).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        locked: Option<BaseLocked>,
    },
    /// Install packages with the distribution's package manager.
    Packages {
        /// `NAME` or `NAME=VERSION`, sorted and without duplicates.
        packages: Vec<String>,
        /// Sync suppression. Not part of the id.
        #[serde(default = "packages_default")]
        sync: SyncMode,
        /// Every package the step installs, as the lock has them (with a lock only).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        locked: Option<Vec<LockedPackage>>,
        /// For a `build-deps` step, the source package's file as the spec names it: `packages`
        /// are then apt dependency strings to satisfy (`apt-get satisfy`), the build
        /// dependencies and (starting with `Conflicts: `) the build conflicts. Not part of the
        /// id; that it is a `build-deps` step is.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        build_deps: Option<String>,
    },
    /// Run a shell command inside the root.
    Run {
        /// The command, given to `/bin/sh -c`.
        command: String,
        /// Whether the step gets the host's network.
        network: bool,
        /// The user to run as; `None` means root.
        #[serde(default)]
        user: Option<String>,
        /// Sync suppression. Not part of the id.
        #[serde(default)]
        sync: SyncMode,
    },
    /// Copy a host file or directory into the root.
    Copy {
        /// The source on the host (absolute). Not part of the id: its content is.
        source: PathBuf,
        /// The absolute destination inside the root.
        dest: String,
        /// File or directory.
        kind: CopyKind,
        /// Permission bits to set on what is copied; `None` keeps the source's.
        #[serde(default)]
        mode: Option<Mode>,
        /// `USER[:GROUP]` to own what is copied; `None` means root.
        #[serde(default)]
        owner: Option<String>,
        /// The digest of the source tree (computed by the compiler from the host files).
        digest: Digest,
    },
    /// Set environment variables for later steps and for users of the root (values expanded).
    Env {
        /// The variables.
        vars: BTreeMap<String, String>,
    },
    /// Set the working directory of later steps and of users of the root.
    Workdir {
        /// An absolute path inside the root.
        path: String,
    },
    /// A persistent cache directory mounted at `path` for the later `run` steps of the
    /// environment and for `envc run`/`shell`. Kept in the store outside every layer. Its path
    /// and name are part of the id; what it holds never is.
    Cache {
        /// An absolute path inside the root.
        path: String,
        /// The cache's name, to share it between environments; `None`: the environment's own.
        #[serde(default)]
        name: Option<String>,
    },
}

/// A cache mounted into a step or a run: where, and the store's directory for it
/// (`cache/user/DIR`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheMount {
    /// The absolute path inside the root.
    pub path: String,
    /// The directory name under the store's `cache/user/`: `n-NAME` for a named cache,
    /// `e-ENV-HASH` for an environment's own (HASH of its path).
    pub dir: String,
}

/// Whether `name` may name a cache: 1 to 64 of `A-Z a-z 0-9 . _ -`, not starting with `.`.
pub fn valid_cache_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

impl Base {
    /// The canonical key of the base.
    pub fn key(&self) -> Key {
        match self {
            Base::Debian {
                suite,
                variant,
                arch,
                components,
                include,
                mirror: _,
                exclude_docs,
            } => {
                let mut fields = vec![
                    ("suite", Key::str(suite)),
                    ("variant", Key::str(variant)),
                    ("arch", Key::str(arch)),
                    ("components", Key::strs(components)),
                    ("include", Key::strs(include)),
                ];
                // Options added after v1 enter the key only when set, so existing ids stay.
                if *exclude_docs {
                    fields.push(("exclude-docs", Key::Bool(true)));
                }
                Key::record("debian", fields)
            }
            Base::Tar { path: _, digest } => {
                Key::record("tar", vec![("content", Key::Digest(digest.0))])
            }
            Base::Oci {
                path: _,
                tag: _,
                config,
                layers,
            } => Key::record(
                "oci",
                vec![
                    ("config", Key::str(config)),
                    (
                        "layers",
                        Key::List(
                            layers
                                .iter()
                                .map(|l| {
                                    Key::record(
                                        "layer",
                                        vec![
                                            ("digest", Key::str(&l.digest)),
                                            ("media-type", Key::str(&l.media_type)),
                                        ],
                                    )
                                })
                                .collect(),
                        ),
                    ),
                ],
            ),
            Base::Scratch => Key::record("scratch", vec![]),
        }
    }
}

impl Step {
    /// The canonical key of the step.
    pub fn key(&self) -> Key {
        match self {
            Step::Base { base, .. } => base.key(),
            Step::Packages {
                packages,
                locked,
                build_deps,
                ..
            } => {
                let mut fields = vec![("packages", Key::strs(packages))];
                if build_deps.is_some() {
                    fields.push(("satisfy", Key::Bool(true)));
                }
                if let Some(locked) = locked {
                    fields.push(("installer", Key::Str(crate::lock::BASE_INSTALLER.into())));
                    fields.push((
                        "locked",
                        Key::List(locked.iter().map(LockedPackage::key).collect()),
                    ));
                }
                Key::record("packages", fields)
            }
            Step::Run {
                command,
                network,
                user,
                ..
            } => Key::record(
                "run",
                vec![
                    ("command", Key::str(command)),
                    ("network", Key::Bool(*network)),
                    ("user", Key::opt_str(user.as_deref())),
                ],
            ),
            Step::Copy {
                source: _,
                dest,
                kind: _,
                mode,
                owner,
                digest,
            } => Key::record(
                "copy",
                vec![
                    ("dest", Key::str(dest)),
                    ("mode", mode.map_or(Key::None, |m| Key::U64(u64::from(m.0)))),
                    ("owner", Key::opt_str(owner.as_deref())),
                    ("content", Key::Digest(digest.0)),
                ],
            ),
            Step::Env { vars } => Key::record(
                "env",
                vec![(
                    "vars",
                    Key::Map(vars.iter().map(|(k, v)| (k.clone(), Key::str(v))).collect()),
                )],
            ),
            Step::Workdir { path } => Key::record("workdir", vec![("path", Key::str(path))]),
            // Where a cache is mounted, and which: a step's tree can depend on that (what it
            // writes under the path is not in the layer). What the cache holds is never hashed.
            Step::Cache { path, name } => Key::record(
                "cache",
                vec![
                    ("path", Key::str(path)),
                    ("name", Key::opt_str(name.as_deref())),
                ],
            ),
        }
    }

    /// A one-line summary for progress output and `envc plan`.
    pub fn summary(&self) -> String {
        match self {
            Step::Base {
                base:
                    Base::Debian {
                        suite,
                        variant,
                        arch,
                        ..
                    },
                locked,
                ..
            } => match locked {
                Some(l) => format!(
                    "debian {suite} {variant} {arch} ({} locked)",
                    l.packages.len()
                ),
                None => format!("debian {suite} {variant} {arch}"),
            },
            Step::Base {
                base: Base::Tar { path, .. },
                ..
            } => format!("tar {}", path.display()),
            Step::Base {
                base: Base::Oci { path, tag, .. },
                ..
            } => match tag {
                Some(t) => format!("oci {} tag {t}", path.display()),
                None => format!("oci {}", path.display()),
            },
            Step::Base {
                base: Base::Scratch,
                ..
            } => "scratch".to_owned(),
            Step::Packages {
                build_deps: Some(from),
                locked,
                ..
            } => match locked {
                Some(l) => format!("build-deps {from} ({} locked)", l.len()),
                None => format!("build-deps {from}"),
            },
            Step::Packages {
                packages,
                locked: Some(l),
                ..
            } => format!("packages {} ({} locked)", packages.join(" "), l.len()),
            Step::Packages { packages, .. } => format!("packages {}", packages.join(" ")),
            Step::Run { command, .. } => format!("run {command}"),
            Step::Copy { source, dest, .. } => format!("copy {} {dest}", source.display()),
            Step::Env { vars } => {
                let parts: Vec<String> = vars.iter().map(|(k, v)| format!("{k}={v}")).collect();
                format!("env {}", parts.join(" "))
            }
            Step::Workdir { path } => format!("workdir {path}"),
            Step::Cache {
                path,
                name: Some(n),
            } => format!("cache {path} (name {n})"),
            Step::Cache { path, name: None } => format!("cache {path}"),
        }
    }
}

impl Layer {
    /// The canonical key: for the base, the base's definition; for any other layer, its parent's id
    /// and its ordered steps. The layer's name is not part of it.
    pub fn key(&self) -> Key {
        Self::key_of(self.parent, &self.steps)
    }

    fn key_of(parent: Option<LayerId>, steps: &[Step]) -> Key {
        match (parent, steps) {
            (None, [Step::Base { base, locked, .. }]) => {
                let mut fields = vec![("base", base.key())];
                if let Some(locked) = locked {
                    fields.push(("lock", locked.key()));
                }
                Key::record("base-layer", fields)
            }
            (parent, steps) => Key::record(
                "layer",
                vec![
                    ("parent", parent.map_or(Key::None, |p| Key::Digest(p.0))),
                    ("steps", Key::List(steps.iter().map(Step::key).collect())),
                ],
            ),
        }
    }

    /// Computes the id of a layer with this parent and these steps.
    pub fn compute_id(parent: Option<LayerId>, steps: &[Step]) -> LayerId {
        if let (None, [Step::Base { .. }]) = (parent, steps) {
            return LayerId(Self::key_of(parent, steps).hash(LAYER_ID_CONTEXT));
        }
        // Exactly the bytes of `key_of(parent, steps).encode()`, written one step's key at a
        // time, so that the key tree of a layer with many steps never exists whole.
        let mut hasher = blake3::Hasher::new_derive_key(LAYER_ID_CONTEXT);
        let mut buf = Vec::with_capacity(256);
        Key::write_record_head("layer", 2, &mut buf);
        Key::write_field_name("parent", &mut buf);
        parent
            .map_or(Key::None, |p| Key::Digest(p.0))
            .encode_into(&mut buf);
        Key::write_field_name("steps", &mut buf);
        Key::write_list_head(steps.len(), &mut buf);
        hasher.update(&buf);
        for step in steps {
            buf.clear();
            step.key().encode_into(&mut buf);
            hasher.update(&buf);
        }
        LayerId(*hasher.finalize().as_bytes())
    }

    /// Whether this layer is the base.
    pub fn is_base(&self) -> bool {
        self.parent.is_none()
    }
}

/// A plan whose stored ids do not match its content.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// The plan has no layers.
    #[error("the plan has no layers")]
    Empty,
    /// A layer's parent is not the previous layer.
    #[error("layer `{layer}` does not have the previous layer as its parent")]
    BrokenChain {
        /// The layer's name.
        layer: String,
    },
    /// A layer's id is not the hash of its key.
    #[error("layer `{layer}` has id {stored} but its content hashes to {computed}")]
    WrongId {
        /// The layer's name.
        layer: String,
        /// The id in the plan.
        stored: LayerId,
        /// The id of its content.
        computed: LayerId,
    },
}

impl Plan {
    /// Builds a plan from a base and named layers, computing every id.
    pub fn new(name: impl Into<String>, base: Base, layers: Vec<(String, Vec<Step>)>) -> Plan {
        Self::with_base_sync(name, base, SyncMode::PACKAGES_DEFAULT, layers)
    }

    /// [`Plan::new`] with the base build's sync suppression.
    pub fn with_base_sync(
        name: impl Into<String>,
        base: Base,
        sync: SyncMode,
        layers: Vec<(String, Vec<Step>)>,
    ) -> Plan {
        let base_steps = vec![Step::Base {
            base,
            sync,
            locked: None,
        }];
        let base_id = Layer::compute_id(None, &base_steps);
        let mut out = vec![Layer {
            name: BASE_LAYER_NAME.to_owned(),
            id: base_id,
            parent: None,
            steps: base_steps,
        }];
        for (name, steps) in layers {
            let parent = out.last().map(|l| l.id);
            let id = Layer::compute_id(parent, &steps);
            out.push(Layer {
                name,
                id,
                parent,
                steps,
            });
        }
        Plan {
            name: name.into(),
            spec: None,
            layers: out,
        }
    }

    /// Checks that the layers form a chain and that every id is the hash of its layer's key.
    pub fn verify(&self) -> Result<(), VerifyError> {
        let mut parent = None;
        if self.layers.is_empty() {
            return Err(VerifyError::Empty);
        }
        for layer in &self.layers {
            if layer.parent != parent {
                return Err(VerifyError::BrokenChain {
                    layer: layer.name.clone(),
                });
            }
            let computed = Layer::compute_id(layer.parent, &layer.steps);
            if computed != layer.id {
                return Err(VerifyError::WrongId {
                    layer: layer.name.clone(),
                    stored: layer.id,
                    computed,
                });
            }
            parent = Some(layer.id);
        }
        Ok(())
    }

    /// The base's definition.
    pub fn base(&self) -> Option<&Base> {
        match self.layers.first()?.steps.first()? {
            Step::Base { base, .. } => Some(base),
            _ => None,
        }
    }

    /// The environment and working directory in effect before step `step` of layer `layer`
    /// (pass `usize::MAX` as `step` for after the whole layer).
    pub fn context_at(
        &self,
        layer: usize,
        step: usize,
    ) -> (BTreeMap<String, String>, Option<String>) {
        let mut vars = env::defaults();
        let mut workdir = None;
        for (li, l) in self.layers.iter().enumerate().take(layer + 1) {
            for (si, s) in l.steps.iter().enumerate() {
                if li == layer && si >= step {
                    break;
                }
                match s {
                    Step::Env { vars: v } => {
                        vars.extend(v.iter().map(|(k, v)| (k.clone(), v.clone())))
                    }
                    Step::Workdir { path } => workdir = Some(path.clone()),
                    _ => {}
                }
            }
        }
        (vars, workdir)
    }

    /// The caches mounted for step `step` of layer `layer` (those declared before it), one per
    /// path (a later declaration of a path wins).
    pub fn caches_at(&self, layer: usize, step: usize) -> Vec<CacheMount> {
        let mut out: BTreeMap<String, String> = BTreeMap::new();
        for (li, l) in self.layers.iter().enumerate().take(layer + 1) {
            for (si, s) in l.steps.iter().enumerate() {
                if li == layer && si >= step {
                    break;
                }
                if let Step::Cache { path, name } = s {
                    let dir = match name {
                        Some(n) => format!("n-{n}"),
                        None => format!(
                            "e-{}-{}",
                            self.name,
                            &blake3::hash(path.as_bytes()).to_hex()[..16]
                        ),
                    };
                    out.insert(path.clone(), dir);
                }
            }
        }
        out.into_iter()
            .map(|(path, dir)| CacheMount { path, dir })
            .collect()
    }

    /// The caches of users of the finished root (`envc run`, `envc shell`).
    pub fn final_caches(&self) -> Vec<CacheMount> {
        self.caches_at(self.layers.len().saturating_sub(1), usize::MAX)
    }

    /// The environment and working directory users of the finished root get.
    pub fn final_context(&self) -> (BTreeMap<String, String>, Option<String>) {
        self.context_at(self.layers.len().saturating_sub(1), usize::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streamed_ids_are_the_hash_of_the_whole_key() {
        let steps = [
            Step::Run {
                command: "true".into(),
                network: true,
                user: Some("builder".into()),
                sync: SyncMode::Off,
            },
            Step::Env {
                vars: [("A".to_owned(), "b".to_owned())].into_iter().collect(),
            },
            Step::Workdir { path: "/w".into() },
        ];
        let base = Layer::compute_id(
            None,
            &[Step::Base {
                base: Base::Scratch,
                sync: SyncMode::Off,
                locked: None,
            }],
        );
        for parent in [None, Some(base)] {
            for n in 0..=steps.len() {
                assert_eq!(
                    Layer::compute_id(parent, &steps[..n]).0,
                    Layer::key_of(parent, &steps[..n]).hash(LAYER_ID_CONTEXT),
                    "parent {parent:?}, {n} steps"
                );
            }
        }
    }

    fn sample() -> Plan {
        Plan::new(
            "t",
            Base::Scratch,
            vec![
                (
                    "a".into(),
                    vec![Step::Run {
                        command: "true".into(),
                        network: false,
                        user: None,
                        sync: SyncMode::Off,
                    }],
                ),
                ("b".into(), vec![Step::Workdir { path: "/w".into() }]),
            ],
        )
    }

    #[test]
    fn chain_and_verify() {
        let plan = sample();
        assert_eq!(plan.layers.len(), 3);
        assert_eq!(plan.layers[1].parent, Some(plan.layers[0].id));
        plan.verify().unwrap();
        let mut bad = plan.clone();
        bad.layers[1].steps = vec![Step::Run {
            command: "false".into(),
            network: false,
            user: None,
            sync: SyncMode::Off,
        }];
        assert!(matches!(bad.verify(), Err(VerifyError::WrongId { .. })));
    }

    #[test]
    fn names_are_not_in_ids() {
        let a = sample();
        let mut b = sample();
        b.layers[1].name = "renamed".into();
        b.verify().unwrap();
        assert_eq!(a.layers[1].id, b.layers[1].id);
    }

    #[test]
    fn build_deps_hash_their_relations_not_their_file_and_a_cache_its_place() {
        let step = |from: Option<&str>| Step::Packages {
            packages: vec!["debhelper-compat (= 13)".into()],
            sync: SyncMode::Seccomp,
            locked: None,
            build_deps: from.map(str::to_owned),
        };
        let id = |steps: &[Step]| Layer::compute_id(Some(LayerId([7; 32])), steps);
        assert_eq!(
            id(&[step(Some("a.dsc"))]),
            id(&[step(Some("b/debian/control"))])
        );
        assert_ne!(id(&[step(Some("a.dsc"))]), id(&[step(None)]));
        let cache = Step::Cache {
            path: "/c".into(),
            name: Some("x".into()),
        };
        // A cache step is part of the id (a spec cannot add one under another's ids).
        assert_ne!(id(&[step(None)]), id(&[cache.clone(), step(None)]));
        // compute_id and the key agree with caches too.
        let steps = [cache, step(None)];
        assert_eq!(
            id(&steps).0,
            Layer::key_of(Some(LayerId([7; 32])), &steps).hash(LAYER_ID_CONTEXT)
        );
    }

    #[test]
    fn sync_mode_is_not_in_ids() {
        let steps = |sync| {
            vec![Step::Packages {
                packages: vec!["hello".into()],
                sync,
                locked: None,
                build_deps: None,
            }]
        };
        let a = Layer::compute_id(None, &steps(SyncMode::Off));
        assert_eq!(a, Layer::compute_id(None, &steps(SyncMode::Seccomp)));
        assert_eq!(a, Layer::compute_id(None, &steps(SyncMode::Shim)));
    }

    #[test]
    fn exclude_docs_is_in_the_id_only_when_set() {
        let base = |exclude_docs| Base::Debian {
            suite: "bookworm".into(),
            variant: "minbase".into(),
            arch: "amd64".into(),
            components: vec!["main".into()],
            include: vec![],
            mirror: None,
            exclude_docs,
        };
        assert_ne!(base(false).key(), base(true).key());
        assert!(
            !serde_json::to_string(&base(false))
                .unwrap()
                .contains("exclude_docs")
        );
    }

    #[test]
    fn json_round_trip() {
        let mut plan = sample();
        plan.layers.push(Layer {
            name: "c".into(),
            id: plan.layers[2].id,
            parent: Some(plan.layers[2].id),
            steps: vec![Step::Copy {
                source: "/x".into(),
                dest: "/y".into(),
                kind: CopyKind::File,
                mode: Some(Mode(0o644)),
                owner: None,
                digest: Digest([1; 32]),
            }],
        });
        let text = serde_json::to_string(&plan).unwrap();
        assert!(text.contains("\"mode\":\"0644\""), "{text}");
        let back: Plan = serde_json::from_str(&text).unwrap();
        assert_eq!(back, plan);
    }

    #[test]
    fn context_tracks_env_and_workdir() {
        let plan = Plan::new(
            "t",
            Base::Scratch,
            vec![(
                "a".into(),
                vec![
                    Step::Env {
                        vars: [("A".to_owned(), "1".to_owned())].into(),
                    },
                    Step::Workdir { path: "/w".into() },
                ],
            )],
        );
        let (vars, wd) = plan.context_at(1, 1);
        assert_eq!(vars.get("A").map(String::as_str), Some("1"));
        assert_eq!(wd, None);
        let (_, wd) = plan.final_context();
        assert_eq!(wd.as_deref(), Some("/w"));
    }
}
