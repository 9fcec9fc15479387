//! The main job: realize a plan. Layers whose id is stored are reused; the others are built in
//! order, each under its own lock, in a staging area that is published only when every step
//! succeeded. Then the environment gets its working root.
#![forbid(unsafe_code)]

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use envc_plan::{Base, Layer, LayerId, Plan, Step, SyncMode};

use crate::aptsrc;
use crate::backend::{Backend, BackendError, Build};
use crate::sandbox::{self, Action, Bind, RootSource, SandboxError, Spec, Stdio3};
use crate::store::{self, Meta, RootRecord, Store, StoreError};
use crate::tools::{self, Tool, ToolError};

/// What the runtime reports while it works; the binary turns these into lines or bars.
#[derive(Debug)]
pub enum Event<'a> {
    /// Leftovers of interrupted builds were removed.
    Cleaned {
        /// How many staging areas.
        count: usize,
    },
    /// A layer is in the store.
    Cached {
        /// Its index in the plan.
        index: usize,
        /// The layer.
        layer: &'a Layer,
    },
    /// Another envc is building this layer; waiting for it.
    Waiting {
        /// Its index in the plan.
        index: usize,
        /// The layer.
        layer: &'a Layer,
    },
    /// A layer build starts.
    Building {
        /// Its index in the plan.
        index: usize,
        /// The layer.
        layer: &'a Layer,
    },
    /// A step starts.
    Step {
        /// The layer's index.
        index: usize,
        /// The step's index in the layer.
        step: usize,
        /// A one-line summary.
        summary: String,
    },
    /// A line of build output.
    Output {
        /// The layer's name.
        layer: &'a str,
        /// The line.
        line: String,
    },
    /// Every layer is stored; what follows is the working root or the command.
    Realized,
    /// A layer was built and sealed.
    Built {
        /// Its index in the plan.
        index: usize,
        /// The layer.
        layer: &'a Layer,
        /// Seconds it took.
        secs: f64,
    },
}

/// A failed apply, naming what failed.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// A step failed: the layer was not sealed.
    #[error("step {} of layer `{layer}` failed: {reason}", step + 1)]
    StepFailed {
        /// The layer's index in the plan.
        index: usize,
        /// The layer's name.
        layer: String,
        /// The step's index in the layer.
        step: usize,
        /// What happened ("exit status 2", ...).
        reason: String,
        /// The command's exit status, when it ran.
        status: Option<i32>,
        /// The last lines of output.
        tail: Vec<String>,
        /// The full log.
        log: PathBuf,
    },
    /// A store operation failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A backend operation failed.
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// Starting or talking to the sandbox failed.
    #[error("cannot {op}: {source}")]
    Io {
        /// What was being done.
        op: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The sandbox failed outside any step (`run`, `shell`), or its helper did not start.
    #[error("cannot {context}: {source}")]
    Sandbox {
        /// What was being done.
        context: String,
        /// The sandbox's failure.
        #[source]
        source: SandboxError,
    },
}

/// A failure to make a base.
#[derive(Debug, thiserror::Error)]
enum BaseError {
    /// An external tool failed.
    #[error(transparent)]
    Tool(#[from] ToolError),
    /// Neither the base nor the host names a Debian mirror.
    #[error(
        "no Debian mirror for suite `{suite}`: the host's apt sources (/etc/apt/sources.list, /etc/apt/sources.list.d) have none; give the base a mirror="
    )]
    NoMirror {
        /// The base's suite.
        suite: String,
    },
    /// A file envc writes for the build could not be written.
    #[error("cannot write {}: {source}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// The outcome of an apply.
#[derive(Debug, Clone)]
pub struct Applied {
    /// The working root.
    pub root: PathBuf,
    /// Layers built.
    pub built: usize,
    /// Layers reused.
    pub cached: usize,
    /// Whether the working root was (re)created.
    pub fresh_root: bool,
}

/// The runtime: a store and the helper binary that runs sandboxes.
pub struct Runtime {
    /// The store.
    pub store: Store,
    /// The envc binary, re-executed as the sandbox helper.
    pub helper: PathBuf,
}

type Sink<'s, 'p> = &'s mut dyn FnMut(Event<'p>);

impl Runtime {
    fn backend(&self) -> &dyn Backend {
        self.store.backend()
    }

    /// Builds every layer of `plan` that is not stored. Returns the layers built and reused, and
    /// shared locks on every layer of the chain: while they are held, `gc` leaves the chain alone.
    pub fn realize<'p>(
        &self,
        plan: &'p Plan,
        sink: Sink<'_, 'p>,
    ) -> Result<(usize, usize, Vec<store::Lock>), ApplyError> {
        let mut held = Vec::with_capacity(plan.layers.len());
        let cleaned = self.store.clean_staging()?;
        if cleaned > 0 {
            sink(Event::Cleaned { count: cleaned });
        }
        let (mut built, mut cached) = (0, 0);
        for (index, layer) in plan.layers.iter().enumerate() {
            if self.store.is_sealed(&layer.id) {
                let shared = self.store.share_layer(&layer.id)?;
                // gc may have removed it between the check and the lock.
                if self.store.is_sealed(&layer.id) {
                    held.push(shared);
                    cached += 1;
                    sink(Event::Cached { index, layer });
                    continue;
                }
                drop(shared);
            }
            let lock = match self.store.try_lock_layer(&layer.id)? {
                Some(l) => l,
                None => {
                    sink(Event::Waiting { index, layer });
                    self.store.lock_layer(&layer.id)?
                }
            };
            if self.store.is_sealed(&layer.id) {
                drop(lock);
                held.push(self.store.share_layer(&layer.id)?);
                cached += 1;
                sink(Event::Cached { index, layer });
                continue;
            }
            self.backend().discard(&layer.id)?;
            sink(Event::Building { index, layer });
            let started = Instant::now();
            self.build(plan, index, sink)?;
            drop(lock);
            held.push(self.store.share_layer(&layer.id)?);
            built += 1;
            sink(Event::Built {
                index,
                layer,
                secs: started.elapsed().as_secs_f64(),
            });
        }
        sink(Event::Realized);
        Ok((built, cached, held))
    }

    /// Realizes `plan` and gives it its working root.
    pub fn apply<'p>(
        &self,
        plan: &'p Plan,
        reset: bool,
        sink: Sink<'_, 'p>,
    ) -> Result<Applied, ApplyError> {
        let (built, cached, _in_use) = self.realize(plan, sink)?;
        let chain: Vec<LayerId> = plan.layers.iter().map(|l| l.id).collect();
        let _lock = self.store.lock_root(&plan.name)?;
        let rec = self.store.read_root(&plan.name);
        let fresh = reset
            || rec.as_ref().is_none_or(|r| r.chain != chain)
            || !self.backend().root_ready(&plan.name)?;
        let root = if fresh {
            let path = self.backend().create_root(&plan.name, &chain)?;
            self.store.write_root(&RootRecord {
                name: plan.name.clone(),
                spec: plan.spec.as_ref().map(|p| p.display().to_string()),
                chain: chain.clone(),
                created: store::now(),
            })?;
            self.touch(&chain);
            path
        } else {
            self.backend().root_path(&plan.name)
        };
        Ok(Applied {
            root,
            built,
            cached,
            fresh_root: fresh,
        })
    }

    /// Marks layers as used now.
    fn touch(&self, chain: &[LayerId]) {
        let now = store::now();
        for id in chain {
            if let Some(mut m) = self.store.read_meta(id) {
                m.last_used = now;
                let _ = self.store.write_meta(&m);
            }
        }
    }

    /// Runs `argv` in a throwaway snapshot of the plan's last layer (or in its working root with
    /// `keep`), with the plan's environment and working directory, on the caller's terminal.
    /// Returns the command's exit status.
    pub fn run<'p>(
        &self,
        plan: &'p Plan,
        argv: Vec<String>,
        keep: bool,
        network: bool,
        sink: Sink<'_, 'p>,
    ) -> Result<i32, ApplyError> {
        let chain: Vec<LayerId> = plan.layers.iter().map(|l| l.id).collect();
        let (vars, workdir) = plan.final_context();
        let action = Action::Exec {
            argv,
            env: vars.into_iter().collect(),
            cwd: workdir.unwrap_or_else(|| "/".into()),
            user: None,
            deny_services: false,
            sync: SyncMode::Off,
        };
        if keep {
            let applied = self.apply(plan, false, sink)?;
            let spec = Spec {
                source: RootSource::Dir,
                mountpoint: applied.root,
                network,
                binds: vec![],
                tmp_files: vec![],
                action,
            };
            return self.interactive(&spec);
        }
        let (_, _, _in_use) = self.realize(plan, sink)?;
        let scratch = self.backend().scratch_root(&chain)?;
        let spec = Spec {
            source: scratch.source.clone(),
            mountpoint: scratch.mountpoint.clone(),
            network,
            binds: vec![],
            tmp_files: vec![],
            action,
        };
        let result = self.interactive(&spec);
        self.backend().drop_scratch(scratch)?;
        result
    }

    fn interactive(&self, spec: &Spec) -> Result<i32, ApplyError> {
        sandbox::run_interactive(&self.helper, spec).map_err(|source| ApplyError::Sandbox {
            context: "run the command".into(),
            source,
        })
    }

    /// Removes a working root.
    pub fn remove_root(&self, name: &str) -> Result<bool, ApplyError> {
        if !store::valid_name(name) {
            return Err(ApplyError::Io {
                op: format!("remove working root `{name}`"),
                source: io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "not an environment name (1 to 64 characters from a-z, A-Z, 0-9, `.`, `_` and `-`, starting with a letter or digit)",
                ),
            });
        }
        let _lock = self.store.lock_root(name)?;
        let existed = self.store.read_root(name).is_some();
        self.backend().drop_root(name)?;
        self.store.remove_root_record(name)?;
        Ok(existed)
    }

    fn build<'p>(
        &self,
        plan: &'p Plan,
        index: usize,
        sink: Sink<'_, 'p>,
    ) -> Result<(), ApplyError> {
        let layer = &plan.layers[index];
        let chain: Vec<LayerId> = plan.layers[..index].iter().map(|l| l.id).collect();
        let started = Instant::now();
        let build = self.backend().begin(
            layer.id,
            &chain,
            crate::backend::Labels {
                layer: &layer.name,
                env: &plan.name,
            },
        )?;
        let log_path = self
            .store
            .path()
            .join("staging")
            .join(format!("{}.log", layer.id));
        let mut log =
            File::create(&log_path).map_err(store::io_err("create build log", &log_path))?;
        let mut result = Ok(());
        for (si, step) in layer.steps.iter().enumerate() {
            sink(Event::Step {
                index,
                step: si,
                summary: step.summary(),
            });
            let _ = writeln!(log, "# step {}: {}", si + 1, step.summary());
            result = self.step(plan, index, si, &build, &mut log, sink);
            if result.is_err() {
                break;
            }
        }
        drop(log);
        let failed_log = self
            .store
            .path()
            .join("logs")
            .join(format!("{}.failed.log", layer.id));
        if let Err(e) = result {
            let _ = fs::rename(&log_path, &failed_log);
            let e = match e {
                ApplyError::StepFailed {
                    index,
                    layer,
                    step,
                    reason,
                    status,
                    tail,
                    ..
                } => ApplyError::StepFailed {
                    index,
                    layer,
                    step,
                    reason,
                    status,
                    tail,
                    log: failed_log,
                },
                other => other,
            };
            if let Err(rollback) = self.backend().discard(&layer.id) {
                return Err(ApplyError::Io {
                    op: format!("roll back the failed build of layer `{}` ({e})", layer.name),
                    source: io::Error::other(rollback.to_string()),
                });
            }
            return Err(e);
        }
        let size = self.backend().seal(build)?;
        let now = store::now();
        self.store.write_meta(&Meta {
            id: layer.id,
            parent: layer.parent,
            key: layer.key().to_json(),
            name: layer.name.clone(),
            env: plan.name.clone(),
            spec: plan.spec.as_ref().map(|p| p.display().to_string()),
            size,
            created: now,
            last_used: now,
            build_secs: started.elapsed().as_secs_f64(),
        })?;
        let final_log = self.store.log_path(&layer.id);
        let _ = fs::rename(&log_path, &final_log);
        let _ = fs::remove_file(&failed_log);
        Ok(())
    }

    fn step<'p>(
        &self,
        plan: &'p Plan,
        index: usize,
        si: usize,
        build: &Build,
        log: &mut File,
        sink: Sink<'_, 'p>,
    ) -> Result<(), ApplyError> {
        let layer = &plan.layers[index];
        let fail =
            |reason: String, status: Option<i32>, tail: Vec<String>| ApplyError::StepFailed {
                index,
                layer: layer.name.clone(),
                step: si,
                reason,
                status,
                tail,
                log: PathBuf::new(),
            };
        let (vars, workdir) = plan.context_at(index, si);
        let env: Vec<(String, String)> = vars.into_iter().collect();
        let cwd = workdir.unwrap_or_else(|| "/".into());
        // Shared caches a step uses stay locked until it ends.
        let mut cache_locks = Vec::new();
        let spec = match &layer.steps[si] {
            Step::Base { base, sync } => {
                let mut tail = Vec::new();
                let mut on_line = |line: &str| {
                    let _ = writeln!(log, "{line}");
                    tools::push_tail(&mut tail, line);
                    sink(Event::Output {
                        layer: &layer.name,
                        line: line.to_owned(),
                    });
                };
                return match self.make_base(plan, base, *sync, &build.mountpoint, &mut on_line) {
                    Ok(()) => Ok(()),
                    Err(e) => {
                        let reason = e.to_string();
                        let tail = match e {
                            BaseError::Tool(ToolError::Failed { tail: t, .. })
                                if tail.is_empty() =>
                            {
                                t
                            }
                            _ => tail,
                        };
                        Err(fail(reason, None, tail))
                    }
                };
            }
            Step::Env { .. } | Step::Workdir { .. } => return Ok(()),
            Step::Run {
                command,
                network,
                user,
                sync,
            } => Spec {
                source: build.source.clone(),
                mountpoint: build.mountpoint.clone(),
                network: *network,
                binds: vec![],
                tmp_files: vec![],
                action: Action::Exec {
                    argv: vec!["/bin/sh".into(), "-c".into(), command.clone()],
                    env,
                    cwd,
                    user: user.clone(),
                    deny_services: false,
                    sync: *sync,
                },
            },
            Step::Copy {
                source,
                dest,
                mode,
                owner,
                ..
            } => Spec {
                source: build.source.clone(),
                mountpoint: build.mountpoint.clone(),
                network: false,
                binds: vec![],
                tmp_files: vec![],
                action: Action::Copy {
                    source: source.clone(),
                    dest: dest.clone(),
                    mode: mode.map(|m| m.0),
                    owner: owner.clone(),
                },
            },
            Step::Packages { packages, sync } => {
                let lists_key = lists_key(plan);
                let debs = self.store.cache_dir("debs")?;
                let lists = self.store.cache_dir(&format!("apt-lists/{lists_key}"))?;
                for d in [debs.join("partial"), lists.join("partial")] {
                    fs::create_dir_all(&d).map_err(store::io_err("create", &d))?;
                }
                cache_locks.push(self.store.lock_cache("debs")?);
                cache_locks.push(self.store.lock_cache(&format!("lists-{lists_key}"))?);
                Spec {
                    source: build.source.clone(),
                    mountpoint: build.mountpoint.clone(),
                    network: true,
                    binds: vec![
                        Bind {
                            host: debs,
                            target: "/var/cache/apt/archives".into(),
                            readonly: false,
                        },
                        Bind {
                            host: lists,
                            target: "/var/lib/apt/lists".into(),
                            readonly: false,
                        },
                    ],
                    tmp_files: vec![],
                    action: Action::Exec {
                        argv: vec!["/bin/sh".into(), "-c".into(), apt_script(packages)],
                        env,
                        cwd: "/".into(),
                        user: None,
                        deny_services: true,
                        sync: *sync,
                    },
                }
            }
        };
        let (result, tail) = self.sandboxed(&spec, &layer.name, log, sink)?;
        drop(cache_locks);
        match result {
            Ok(0) => Ok(()),
            Ok(code) => Err(fail(exit_reason(code), Some(code), tail)),
            Err(e) => {
                // The sandbox's own failure (the command never ran): its report is the reason.
                let _ = writeln!(log, "envc sandbox: {e}");
                Err(fail(e.to_string(), None, tail))
            }
        }
    }

    /// Runs a sandbox, streaming its output to the sink and the log; returns its outcome (the
    /// command's status or the sandbox's failure) and the tail of the output.
    fn sandboxed<'p>(
        &self,
        spec: &Spec,
        layer: &'p str,
        log: &mut File,
        sink: Sink<'_, 'p>,
    ) -> Result<(Result<i32, SandboxError>, Vec<String>), ApplyError> {
        let io_err = |op: &str| {
            let op = op.to_owned();
            move |source| ApplyError::Io { op, source }
        };
        let (reader, writer) = io::pipe().map_err(io_err("create a pipe"))?;
        let child = sandbox::spawn(&self.helper, spec, Stdio3::Pipe(writer)).map_err(|source| {
            ApplyError::Sandbox {
                context: format!("run a step of layer `{layer}`"),
                source,
            }
        })?;
        let mut tail = Vec::new();
        tools::for_each_line(reader, &mut |line| {
            let _ = writeln!(log, "{line}");
            tools::push_tail(&mut tail, line);
            sink(Event::Output {
                layer,
                line: line.to_owned(),
            });
        });
        Ok((child.wait(), tail))
    }

    fn make_base(
        &self,
        plan: &Plan,
        base: &Base,
        sync: SyncMode,
        dir: &Path,
        on_line: &mut dyn FnMut(&str),
    ) -> Result<(), BaseError> {
        match base {
            Base::Scratch => Ok(()),
            Base::Tar { path, .. } => Tool::new("tar")?
                .arg("--extract")
                .arg("--file")
                .arg(path)
                .arg("--directory")
                .arg(dir)
                .args([
                    "--preserve-permissions",
                    "--same-owner",
                    "--numeric-owner",
                    "--xattrs",
                    "--xattrs-include=*",
                ])
                .stream(on_line)
                .map_err(BaseError::from),
            Base::Debian {
                suite,
                variant,
                arch,
                components,
                include,
                mirror,
                exclude_docs,
            } => {
                // The base's mirror, or the host's mirrors for its suite: mmdebstrap writes these into
                // the root, and later `packages` steps use them from there.
                let sources = match mirror {
                    Some(m) => aptsrc::sources_for_mirror(m, suite, components),
                    None => aptsrc::sources_for(&aptsrc::host_entries(), suite, components)
                        .ok_or_else(|| BaseError::NoMirror {
                            suite: suite.clone(),
                        })?,
                };
                let sources_file = self
                    .store
                    .path()
                    .join("tmp")
                    .join(format!("sources-{}.list", layer_short(plan)));
                fs::write(&sources_file, sources).map_err(|source| BaseError::Write {
                    path: sources_file.clone(),
                    source,
                })?;
                let mmdebstrap = tools::find("mmdebstrap")?;
                // With sync suppression, mmdebstrap and everything it starts (dpkg in the new root
                // included) run under the seccomp filter.
                let mut t = match sync {
                    SyncMode::Off => Tool::at(mmdebstrap),
                    _ => Tool::at(self.helper.clone())
                        .arg(sandbox::NOSYNC_ARG)
                        .arg(mmdebstrap),
                };
                t = t
                    .arg(format!("--variant={variant}"))
                    .arg(format!("--architectures={arch}"))
                    .arg(format!("--components={}", components.join(",")))
                    .arg("--mode=root")
                    .arg("--aptopt=Acquire::Retries \"3\"")
                    .arg("--aptopt=Acquire::Languages \"none\"")
                    // The package lists mmdebstrap downloaded go to the shared lists cache (below)
                    // instead of being thrown away, so the next `packages` step only re-checks them.
                    .arg("--skip=cleanup/apt/lists")
                    .arg("--dpkgopt=force-unsafe-io");
                if !include.is_empty() {
                    t = t.arg(format!("--include={}", include.join(",")));
                }
                if *exclude_docs {
                    for opt in EXCLUDE_DOCS {
                        t = t.arg(format!("--dpkgopt={opt}"));
                    }
                }
                let r = t.arg(suite).arg(dir).arg(&sources_file).stream(on_line);
                let _ = fs::remove_file(&sources_file);
                r?;
                self.adopt_apt_lists(plan, dir);
                // Nothing of the host may stay in a layer: mmdebstrap copies its resolver config and
                // hostname in.
                for f in ["etc/resolv.conf", "etc/hostname"] {
                    let p = dir.join(f);
                    if fs::symlink_metadata(&p).is_ok_and(|m| m.is_file()) {
                        let _ = fs::remove_file(&p);
                    }
                }
                Ok(())
            }
        }
    }
}

/// How long package lists count as fresh: a `packages` step within this many minutes of the last
/// refresh (a base build's, or another step's `apt-get update`) skips `apt-get update`.
const LISTS_FRESH_MINUTES: u32 = 10;

/// dpkg options of `exclude-docs`: written by mmdebstrap into the root's dpkg configuration, so
/// they hold for every later `packages` step too. Excluding man-db's `auto-update` flag keeps its
/// trigger from rebuilding the man page index.
const EXCLUDE_DOCS: &[&str] = &[
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/info/*",
    "path-exclude=/usr/share/lintian/*",
    "path-exclude=/var/lib/man-db/auto-update",
];

impl Runtime {
    /// Moves the apt lists a base build downloaded out of the base (lists are not part of any
    /// layer) into the base's shared lists cache, marked fresh for the root's current sources, so
    /// the next `packages` step need not download them again.
    fn adopt_apt_lists(&self, plan: &Plan, dir: &Path) {
        let lists = dir.join("var/lib/apt/lists");
        let key = lists_key(plan);
        let sum = Tool::new("sh").and_then(|t| {
            t.args(["-c", &format!("cd \"$0\" && {SOURCES_SUM}")])
                .arg(dir)
                .output()
        });
        if let (Ok(cache), Ok(sum)) = (self.store.cache_dir(&format!("apt-lists/{key}")), sum)
            && let Ok(_lock) = self.store.lock_cache(&format!("lists-{key}"))
        {
            let mut moved = false;
            for e in fs::read_dir(&lists).into_iter().flatten().flatten() {
                let name = e.file_name();
                if name != "lock" && name != "partial" && e.path().is_file() {
                    moved |= fs::rename(e.path(), cache.join(&name)).is_ok();
                }
            }
            if moved {
                let _ = fs::write(cache.join(".envc-sources"), sum);
            }
        }
        // Whatever could not be moved is removed: the base layer holds no lists either way.
        for e in fs::read_dir(&lists).into_iter().flatten().flatten() {
            if e.path().is_file() && e.file_name() != "lock" {
                let _ = fs::remove_file(e.path());
            }
        }
    }
}

/// The key of a plan's shared apt lists cache: its base.
fn lists_key(plan: &Plan) -> String {
    layer_short(plan)
}

/// The first 16 hex digits of a plan's base layer id.
fn layer_short(plan: &Plan) -> String {
    plan.layers
        .first()
        .map_or_else(|| "none".to_owned(), |l| l.id.short(16))
}

/// Prints a checksum of the apt sources of the root in the current directory. Run in a build step
/// (in `/`) and on the host (in a base being built): the same command gives the same sum.
const SOURCES_SUM: &str = "LC_ALL=C; cat etc/apt/sources.list etc/apt/sources.list.d/*.list etc/apt/sources.list.d/*.sources 2>/dev/null | md5sum";

fn exit_reason(code: i32) -> String {
    match code {
        c if c > 128 => format!("killed by signal {}", c - 128),
        c => format!("exit status {c}"),
    }
}

/// The shell script of a `packages` step. apt uses the root's own sources (for a debian base,
/// those mmdebstrap wrote; plus any a step added). The lists are refreshed unless they were made
/// from the same sources less than LISTS_FRESH_MINUTES ago (by the base build or an earlier step).
fn apt_script(packages: &[String]) -> String {
    let opts = [
        "-o APT::Install-Recommends=false",
        "-o APT::Install-Suggests=false",
        "-o Dpkg::Options::=--force-unsafe-io",
        "-o Dpkg::Options::=--force-confdef",
        "-o Dpkg::Options::=--force-confold",
        "-o Acquire::Retries=3",
        // No build needs translated package descriptions.
        "-o Acquire::Languages=none",
        // apt's binary caches (~80 MB) are rebuilt on demand: keep them out of layers.
        "-o Dir::Cache::pkgcache=",
        "-o Dir::Cache::srcpkgcache=",
    ]
    .join(" ");
    let quoted: Vec<String> = packages.iter().map(|p| format!("'{p}'")).collect();
    format!(
        "set -e\n\
         cd /\n\
         sum=$({SOURCES_SUM})\n\
         marker=/var/lib/apt/lists/.envc-sources\n\
         if [ \"$(cat $marker 2>/dev/null)\" != \"$sum\" ] || [ -z \"$(find $marker -mmin -{LISTS_FRESH_MINUTES} 2>/dev/null)\" ]; then\n\
         \tapt-get {opts} update\n\
         \techo \"$sum\" > $marker\n\
         fi\n\
         apt-get {opts} install -y -- {}\n",
        quoted.join(" ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apt_script_installs_with_the_roots_own_sources() {
        let script = apt_script(&["hello".into(), "gcc=4".into()]);
        assert!(script.contains("install -y -- 'hello' 'gcc=4'"), "{script}");
        assert!(
            !script.contains("SourceList"),
            "the root's own sources are used: {script}"
        );
        assert!(
            script.contains(SOURCES_SUM),
            "lists are reused only for the same sources: {script}"
        );
    }
}
