//! Building one layer, as a transaction: stage it in the backend, run its steps in the sandbox
//! (each as a sandbox spec), seal and record it, or roll everything back.
#![forbid(unsafe_code)]

use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::time::Instant;

use envc_plan::{Digest, LayerId, Plan, Step};

use super::apt::{apt_script, cache_key};
use super::base::BaseError;
use super::locked::{compare, installed_in, layered_root, plan_mirrors};
use super::normalize::normalize;
use super::{ApplyError, Event, Runtime, Sink};
use crate::backend::{self, Build, Labels};
use crate::digest;
use crate::sandbox::{Action, Bind, Spec};
use crate::store::{self, Meta};
use crate::tools::{self, ToolError};

impl Runtime {
    pub(super) fn build<'p>(
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
            Labels {
                layer: &layer.name,
                env: &plan.name,
            },
        );
        self.forward_warnings(sink);
        let build = build?;
        let log_path = self
            .store
            .path()
            .join("staging")
            .join(format!("{}.log", layer.id));
        // Never through a symlink: the log is the store's own file.
        let mut log = match File::options()
            .write(true)
            .create(true)
            .truncate(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&log_path)
        {
            Ok(f) => f,
            Err(source) => {
                let e = ApplyError::Io {
                    op: "create build log",
                    path: log_path,
                    source,
                };
                return Err(self.roll_back(&layer.name, &layer.id, e));
            }
        };
        let mut result = Ok(());
        for (si, step) in layer.steps.iter().enumerate() {
            sink(Event::Step {
                index,
                step: si,
                summary: step.summary(),
            });
            let _ = writeln!(log, "# step {}: {}", si + 1, step.summary());
            crate::failpoint::hit("step-before");
            result = self.step(plan, index, si, &build, &mut log, sink);
            crate::failpoint::hit("step-after");
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
            return Err(self.roll_back(&layer.name, &layer.id, e));
        }
        // The digest of the layer's full tree, recorded with it (what `envc verify` compares). A
        // tree that cannot be read fails the build.
        let tree_digest = match digest_build(&build) {
            Ok(d) => d,
            Err(e) => return Err(self.roll_back(&layer.name, &layer.id, e)),
        };
        // The record is written (durably) before the layer is published, inside `seal`: a kill
        // leaves at worst a record without a layer, which the next gc or apply removes, never a
        // sealed layer without its record.
        let mut record = |size: u64| {
            let now = store::now();
            let mut meta = meta_of(plan, index, size);
            meta.created = now;
            meta.last_used = now;
            meta.build_secs = started.elapsed().as_secs_f64();
            meta.tree_digest = Some(tree_digest);
            self.store
                .write_meta(&meta)
                .inspect(|()| crate::failpoint::hit("seal-recorded"))
                .map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>)
        };
        crate::failpoint::hit("seal-before");
        let sealed = self.backend().seal(build, &mut record);
        if let Err(e) = sealed {
            // A record written for a layer that was not published goes with the build.
            if !self.store.is_sealed(&layer.id) {
                let _ = fs::remove_file(self.store.meta_path(&layer.id));
            }
            return Err(self.roll_back(&layer.name, &layer.id, e.into()));
        }
        crate::failpoint::hit("seal-published");
        self.forward_warnings(sink);
        let final_log = self.store.log_path(&layer.id);
        let _ = fs::rename(&log_path, &final_log);
        let _ = fs::remove_file(&failed_log);
        Ok(())
    }

    /// Discards a failed build of `id`; reports both errors if that fails too.
    fn roll_back(&self, name: &str, id: &LayerId, error: ApplyError) -> ApplyError {
        match self.backend().discard(id) {
            Ok(()) => error,
            Err(rollback) => ApplyError::Rollback {
                layer: name.to_owned(),
                error: Box::new(error),
                rollback,
            },
        }
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
        let mut env: Vec<(String, String)> = vars.into_iter().collect();
        // A locked plan's steps build for the lock's time (unless the spec sets its own).
        if let Some(sde) = plan.source_date_epoch()
            && !env.iter().any(|(k, _)| k == "SOURCE_DATE_EPOCH")
        {
            env.push(("SOURCE_DATE_EPOCH".into(), sde.to_string()));
        }
        let cwd = workdir.unwrap_or_else(|| "/".into());
        // Shared caches a step uses stay locked until it ends.
        let mut cache_locks = Vec::new();
        let spec = match &layer.steps[si] {
            Step::Base { base, sync, locked } => {
                let mut tail = Vec::new();
                let mut on_line = |line: &str| {
                    let _ = writeln!(log, "{line}");
                    tools::push_tail(&mut tail, line);
                    sink(Event::Output {
                        layer: &layer.name,
                        line: line.to_owned(),
                    });
                };
                return match self.make_base(
                    plan,
                    base,
                    *sync,
                    locked.as_ref(),
                    &build.mountpoint,
                    &mut on_line,
                ) {
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
            Step::Env { .. } | Step::Workdir { .. } | Step::Cache { .. } => return Ok(()),
            Step::Run {
                command,
                network,
                user,
                sync,
            } => Spec {
                source: build.source.clone(),
                mountpoint: build.mountpoint.clone(),
                network: *network,
                binds: self.cache_binds(&plan.caches_at(index, si), &mut cache_locks)?,
                tmp_files: long_command_file(command),
                action: Action::Exec {
                    argv: shell_argv(command),
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
                digest,
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
                    digest: *digest,
                },
            },
            Step::Packages {
                packages,
                sync,
                locked: Some(set),
                build_deps,
            } => {
                // Hermetic: exactly the locked files, installed by dpkg in the step sandbox
                // without network; checked and normalized afterwards.
                let layers = layered_root(&build.source, &build.mountpoint);
                let before = installed_in(&layers);
                let mut tail = Vec::new();
                let mut on_line = |line: &str| {
                    let _ = writeln!(log, "{line}");
                    tools::push_tail(&mut tail, line);
                    sink(Event::Output {
                        layer: &layer.name,
                        line: line.to_owned(),
                    });
                };
                let installed = self.install_locked(
                    &layer.id,
                    &format!("step{si}"),
                    set,
                    &plan_mirrors(plan),
                    None,
                    // A source package's build dependencies are all dependencies: none named.
                    &auto_installed(if build_deps.is_some() { &[] } else { packages }, set),
                    &build.source,
                    &build.mountpoint,
                    env,
                    *sync,
                    &mut on_line,
                );
                if let Err(reason) = installed {
                    return Err(fail(reason, None, tail));
                }
                let after = installed_in(&layers);
                compare("the step", &super::debindex::added(&before, &after), set)
                    .map_err(|reason| fail(reason, None, tail.clone()))?;
                let sde = plan.source_date_epoch().unwrap_or(0);
                return normalize(&layers[0], sde).map_err(|e| fail(e.to_string(), None, vec![]));
            }
            Step::Packages {
                packages,
                sync,
                build_deps,
                ..
            } => {
                let key = cache_key(plan, index, si);
                let debs = self.store.cache_dir(&format!("debs/{key}"))?;
                let lists = self.store.cache_dir(&format!("apt-lists/{key}"))?;
                for d in [debs.join("partial"), lists.join("partial")] {
                    fs::create_dir_all(&d).map_err(|source| ApplyError::Io {
                        op: "create",
                        path: d.clone(),
                        source,
                    })?;
                }
                cache_locks.push(self.store.lock_cache(&format!("debs-{key}"))?);
                cache_locks.push(self.store.lock_cache(&format!("lists-{key}"))?);
                Spec {
                    source: build.source.clone(),
                    mountpoint: build.mountpoint.clone(),
                    network: true,
                    binds: vec![
                        Bind {
                            host: debs,
                            target: "/var/cache/apt/archives".into(),
                            readonly: false,
                            exact: false,
                        },
                        Bind {
                            host: lists,
                            target: "/var/lib/apt/lists".into(),
                            readonly: false,
                            exact: false,
                        },
                    ],
                    tmp_files: vec![],
                    action: Action::Exec {
                        argv: vec![
                            "/bin/sh".into(),
                            "-c".into(),
                            apt_script(packages, build_deps.is_some()),
                        ],
                        env,
                        cwd: "/".into(),
                        user: None,
                        deny_services: true,
                        sync: *sync,
                    },
                }
            }
        };
        let mut tail = Vec::new();
        let result = self.exec.sandbox(&spec, &mut |line| {
            crate::failpoint::hit("step-output");
            let _ = writeln!(log, "{line}");
            tools::push_tail(&mut tail, line);
            sink(Event::Output {
                layer: &layer.name,
                line: line.to_owned(),
            });
        });
        drop(cache_locks);
        match result {
            // In a locked plan every step's new files get the lock's time too: a `run` step is
            // then as deterministic as its command, not as its clock.
            Ok(0) => match plan.source_date_epoch() {
                Some(sde) => {
                    let layers = layered_root(&build.source, &build.mountpoint);
                    normalize(&layers[0], sde).map_err(|e| fail(e.to_string(), None, vec![]))
                }
                None => Ok(()),
            },
            Ok(code) => Err(fail(exit_reason(code), Some(code), tail)),
            Err(e) => {
                // The sandbox's own failure (the command never ran): its report is the reason.
                let _ = writeln!(log, "envc sandbox: {e}");
                Err(fail(e.to_string(), None, tail))
            }
        }
    }
}

/// The tree digest of a finished build, over its full tree ([`backend::build_tree`]).
pub(super) fn digest_build(build: &Build) -> Result<Digest, ApplyError> {
    let tree = backend::build_tree(build)?;
    let digest = digest::tree_digest(&tree.path);
    let closed = tree.close();
    let digest = digest.map_err(|source| ApplyError::Digest { source })?;
    closed?;
    Ok(digest)
}

/// The record of layer `index` of `plan` as its build writes it (times zero: the caller sets them).
pub(super) fn meta_of(plan: &Plan, index: usize, size: u64) -> Meta {
    let layer = &plan.layers[index];
    Meta {
        id: layer.id,
        parent: layer.parent,
        key: layer.key().to_json(),
        name: layer.name.clone(),
        env: plan.name.clone(),
        spec: plan.spec.as_ref().map(|p| p.display().to_string()),
        size,
        created: 0,
        last_used: 0,
        build_secs: 0.0,
        tree_digest: None,
        origin: None,
    }
}

/// How a step ended, from its status. 128 + N is what a shell reports for a command killed by
/// signal N, but a command may also exit with that code itself: both are said.
fn exit_reason(code: i32) -> String {
    match code {
        c @ 129..=192 => format!(
            "exit status {c} (killed by signal {}, or its own exit code)",
            c - 128
        ),
        c => format!("exit status {c}"),
    }
}

/// Commands up to this long are given to `sh -c` as they are; longer ones would pass the kernel's
/// limit for one argument (128 KiB, E2BIG at exec).
const MAX_INLINE_COMMAND: usize = 64 * 1024;

/// Where a longer command is written: the step's own `/tmp` (a fresh tmpfs), then sourced.
const LONG_COMMAND_FILE: &str = ".envc-run";

/// The shell's arguments for a `run` command.
fn shell_argv(command: &str) -> Vec<String> {
    let script = if command.len() > MAX_INLINE_COMMAND {
        format!(". /tmp/{LONG_COMMAND_FILE}")
    } else {
        command.to_owned()
    };
    vec!["/bin/sh".into(), "-c".into(), script]
}

/// The file in `/tmp` that holds a long `run` command, if it is one.
fn long_command_file(command: &str) -> Vec<(String, String)> {
    if command.len() > MAX_INLINE_COMMAND {
        vec![(LONG_COMMAND_FILE.to_owned(), command.to_owned())]
    } else {
        vec![]
    }
}

/// The packages of a locked step's set that apt would mark automatically installed: those the
/// step did not name (`NAME`, `NAME=VERSION`, `NAME/RELEASE`, `NAME:ARCH`), as `NAME:ARCH`.
fn auto_installed(packages: &[String], set: &[envc_plan::lock::LockedPackage]) -> Vec<String> {
    let named: std::collections::BTreeSet<&str> = packages
        .iter()
        .map(|p| {
            let p = p.split(['=', '/']).next().unwrap_or(p);
            p.split(':').next().unwrap_or(p)
        })
        .collect();
    set.iter()
        .filter(|p| !named.contains(p.name.as_str()))
        .map(|p| format!("{}:{}", p.name, p.arch))
        .collect()
}
