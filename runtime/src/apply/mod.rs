//! The main job: realize a plan. Layers whose id is stored are reused; the others are built in
//! order, each under its own lock, in a staging area that is published only when every step
//! succeeded. Then the environment gets its working root, or a command runs in a throwaway one.
//!
//! - [`layer`](self): building one layer as a transaction (stage, steps, seal, rollback);
//! - `base`: making a base (mmdebstrap, tar);
//! - `apt`: the `packages` step's script and the shared package-lists cache;
//! - [`executor`]: what runs sandboxes and host tools, behind a trait with a fake for tests.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::time::Instant;

use envc_plan::{LayerId, Plan, SyncMode};

use crate::backend::{self, Backend};
use crate::maintain;
use crate::sandbox::{Action, RootSource, Spec};
use crate::store::{self, RootRecord, Store, StoreError};
use crate::warning::Warning;

/// How many times a layer is looked for, built or taken, when a concurrent gc keeps removing it.
const MAX_ATTEMPTS: u32 = 5;

mod apt;
mod base;
mod debindex;
mod error;
mod event;
pub mod executor;
mod inroot;
mod install;
mod layer;
mod locked;
mod normalize;
mod pull;
mod resolve;
#[cfg(test)]
mod tests;

pub use error::ApplyError;
pub use event::Event;
pub use executor::{Executor, HelperExecutor};
pub use pull::PushOutcome;
pub use resolve::{AnySink, Update};

/// The outcome of an apply.
#[derive(Debug, Clone)]
pub struct Applied {
    /// The working root.
    pub root: PathBuf,
    /// Layers built.
    pub built: usize,
    /// Layers pulled from the remote cache.
    pub pulled: usize,
    /// Layers reused.
    pub cached: usize,
    /// Whether the working root was (re)created.
    pub fresh_root: bool,
}

/// What [`Runtime::realize`] did, and the shared locks that keep the chain from gc.
pub struct Realized {
    /// Layers built.
    pub built: usize,
    /// Layers pulled from the remote cache.
    pub pulled: usize,
    /// Layers reused.
    pub cached: usize,
    /// Shared locks on every layer of the chain.
    pub held: Vec<store::Lock>,
}

/// The runtime: a store, and what runs sandboxes and tools for it.
pub struct Runtime {
    /// The store.
    pub store: Store,
    exec: Box<dyn Executor>,
    /// The remote layer cache, if one is used: missing layers are pulled from it before they
    /// are built.
    remote: Option<crate::oci::remote::Remote>,
}

type Sink<'s, 'p> = &'s mut dyn FnMut(Event<'p>);

/// How `envc run` and `envc shell` run their command; none of it is part of any id.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// In the working root (kept), not a throwaway snapshot.
    pub keep: bool,
    /// The host's network (else only loopback).
    pub network: bool,
    /// Host directories mounted into the root (each host path absolute and existing).
    pub binds: Vec<crate::sandbox::Bind>,
    /// Variables over the plan's environment.
    pub env: Vec<(String, String)>,
    /// A user of the root; `None` is root.
    pub user: Option<String>,
    /// The working directory, over the plan's.
    pub workdir: Option<String>,
}

impl Runtime {
    /// The runtime of `store`, running sandboxes through `helper` (the envc binary).
    pub fn new(store: Store, helper: PathBuf) -> Runtime {
        Runtime::with_executor(store, Box::new(HelperExecutor::new(helper)))
    }

    /// The runtime of `store` with an executor of the caller's (tests).
    pub fn with_executor(store: Store, exec: Box<dyn Executor>) -> Runtime {
        Runtime {
            store,
            exec,
            remote: None,
        }
    }

    /// Uses a remote layer cache: a layer that is not stored is pulled from it (when it has the
    /// layer, signed by a trusted key) before it is built.
    pub fn set_remote(&mut self, remote: crate::oci::remote::Remote) {
        self.remote = Some(remote);
    }

    /// The remote layer cache in use.
    pub fn remote(&self) -> Option<&crate::oci::remote::Remote> {
        self.remote.as_ref()
    }

    /// The envc binary that runs sandboxes.
    pub fn helper(&self) -> &Path {
        self.exec.helper()
    }

    fn backend(&self) -> &dyn Backend {
        self.store.backend()
    }

    /// Reports the backend's warnings as events.
    fn forward_warnings<'p>(&self, sink: Sink<'_, 'p>) {
        for w in self.backend().take_warnings() {
            sink(Event::Warning(w));
        }
    }

    /// Builds (or pulls from the remote cache) every layer of `plan` that is not stored. Returns
    /// what it did, and shared locks on every layer of the chain: while they are held, `gc`
    /// leaves the chain alone.
    pub fn realize<'p>(&self, plan: &'p Plan, sink: Sink<'_, 'p>) -> Result<Realized, ApplyError> {
        if let Some(sde) = plan.source_date_epoch() {
            let now = store::now();
            if sde > now {
                return Err(ApplyError::FutureEpoch { sde, now });
            }
        }
        let mut held = Vec::with_capacity(plan.layers.len());
        let cleaned = self.store.clean_staging()?;
        if cleaned > 0 {
            sink(Event::Cleaned { count: cleaned });
        }
        for w in maintain::clean_leftovers(&self.store).warnings {
            sink(Event::Warning(w));
        }
        let (mut built, mut pulled, mut cached) = (0, 0, 0);
        for (index, layer) in plan.layers.iter().enumerate() {
            // Every way to a shared lock ends with the layer checked sealed while the lock is
            // held: gc removes a layer only under its exclusive lock, so a layer seen sealed
            // under a shared lock stays. A layer gc took between a look and a lock is built
            // again; a store whose gc keeps winning that race is an error, not a loop.
            let mut attempts = 0;
            loop {
                attempts += 1;
                if attempts > MAX_ATTEMPTS {
                    return Err(ApplyError::Store(StoreError::Vanished {
                        path: self.store.path().join("layers").join(layer.id.to_string()),
                        attempts: MAX_ATTEMPTS,
                    }));
                }
                // A symlink or a file at layers/ID is an error naming it, never used.
                if self.store.check_sealed(&layer.id)? {
                    let shared = self.store.share_layer(&layer.id)?;
                    if self.store.check_sealed(&layer.id)? {
                        held.push(shared);
                        crate::failpoint::hit("layer-held");
                        self.ensure_record(plan, index, sink);
                        cached += 1;
                        sink(Event::Cached { index, layer });
                        break;
                    }
                    continue;
                }
                let lock = match self.store.try_lock_layer(&layer.id)? {
                    Some(l) => l,
                    None => {
                        sink(Event::Waiting { index, layer });
                        self.store.lock_layer(&layer.id)?
                    }
                };
                if self.store.check_sealed(&layer.id)? {
                    // Sealed by the one we waited for: taken as cached, above.
                    continue;
                }
                self.backend().discard(&layer.id)?;
                let started = Instant::now();
                if let Some(bytes) = self.pull(plan, index, sink) {
                    pulled += 1;
                    sink(Event::Pulled {
                        index,
                        layer,
                        bytes,
                        secs: started.elapsed().as_secs_f64(),
                    });
                } else {
                    sink(Event::Building { index, layer });
                    self.build(plan, index, sink)
                        .map_err(|e| e.in_layer(index, &layer.name))?;
                    built += 1;
                    sink(Event::Built {
                        index,
                        layer,
                        secs: started.elapsed().as_secs_f64(),
                    });
                }
                // Kept locked from the seal on: the exclusive lock becomes a shared one in place.
                let shared = lock.downgrade()?;
                // The kernel may let a waiting exclusive lock in between the two (flock(2)); a
                // gc that took it and removed the layer meanwhile makes us build it again.
                if self.store.check_sealed(&layer.id)? {
                    held.push(shared);
                    crate::failpoint::hit("layer-held");
                    break;
                }
            }
        }
        sink(Event::Realized);
        Ok(Realized {
            built,
            pulled,
            cached,
            held,
        })
    }

    /// Realizes `plan` and gives it its working root.
    pub fn apply<'p>(
        &self,
        plan: &'p Plan,
        reset: bool,
        sink: Sink<'_, 'p>,
    ) -> Result<Applied, ApplyError> {
        let Realized {
            built,
            pulled,
            cached,
            held: _in_use,
        } = self.realize(plan, sink)?;
        let chain: Vec<LayerId> = plan.layers.iter().map(|l| l.id).collect();
        let lock = self.store.lock_root(&plan.name)?;
        let rec = self.store.read_root(&plan.name)?;
        // A layer of the root's own chain had to be built: the root stands on layers that were
        // gone, and is made again.
        let fresh = reset
            || built + pulled > 0
            || rec.as_ref().is_none_or(|r| r.chain != chain)
            || !self.backend().root_ready(&plan.name, &chain)?;
        let root = if fresh {
            crate::failpoint::hit("root-before");
            // The record first: from here on the chain counts as in use for gc, whatever
            // happens to this process while the root is made.
            self.store.write_root(&RootRecord {
                name: plan.name.clone(),
                spec: plan.spec.as_ref().map(|p| p.display().to_string()),
                chain: chain.clone(),
                created: store::now(),
            })?;
            crate::failpoint::hit("root-recorded");
            let made = self.backend().create_root(&plan.name, &chain);
            self.forward_warnings(sink);
            let made = made?;
            crate::failpoint::hit("root-made");
            self.touch(&chain, sink);
            if made.reap {
                // Waits for the root's lock, so it starts its work once this apply is done.
                maintain::spawn_reaper(self.helper(), self.store.path(), &plan.name);
            }
            made.path
        } else {
            self.backend().root_path(&plan.name)
        };
        drop(lock);
        Ok(Applied {
            root,
            built,
            pulled,
            cached,
            fresh_root: fresh,
        })
    }

    /// Marks layers as used now. A record that cannot be read or written is a warning naming
    /// it (a layer's last use only guides gc, so the apply goes on).
    fn touch<'p>(&self, chain: &[LayerId], sink: Sink<'_, 'p>) {
        let now = store::now();
        let mut metas = Vec::with_capacity(chain.len());
        for id in chain {
            match self.store.read_meta(id) {
                Ok(Some(mut m)) => {
                    m.last_used = now;
                    metas.push(m);
                }
                // Only a layer gc removed since realize (it then has no record to update).
                Ok(None) => {}
                Err(e) => sink(Event::Warning(Warning::RecordNotUpdated {
                    path: self.store.meta_path(id),
                    reason: e.to_string(),
                })),
            }
        }
        if metas.is_empty() {
            return;
        }
        // One fsync of meta/ for the whole chain.
        let failed: Vec<(PathBuf, StoreError)> = match self.store.write_metas(&metas) {
            Ok(results) => metas
                .iter()
                .zip(results)
                .filter_map(|(m, r)| Some((self.store.meta_path(&m.id), r.err()?)))
                .collect(),
            Err(e) => vec![(self.store.path().join("meta"), e)],
        };
        for (path, e) in failed {
            sink(Event::Warning(Warning::RecordNotUpdated {
                path,
                reason: e.to_string(),
            }));
        }
    }

    /// Makes sure a reused layer has its record: one that is missing (a kill between sealing
    /// and recording, by an older envc) or unreadable is rewritten from the plan, which defines
    /// the layer, with a warning. The caller holds a shared lock on the layer.
    fn ensure_record<'p>(&self, plan: &'p Plan, index: usize, sink: Sink<'_, 'p>) {
        let layer = &plan.layers[index];
        let problem = match self.store.read_meta(&layer.id) {
            Ok(Some(_)) => return,
            Ok(None) => "no record".to_owned(),
            Err(e) => format!("an unreadable record ({e})"),
        };
        let size = self.backend().measure(&layer.id);
        let now = store::now();
        let mut meta = layer::meta_of(plan, index, size.unwrap_or(0));
        meta.created = now;
        meta.last_used = now;
        let path = self.store.meta_path(&layer.id);
        sink(Event::Warning(match self.store.write_meta(&meta) {
            Ok(()) => Warning::RecordRepaired {
                layer: layer.name.clone(),
                id: layer.id.to_hex(),
                path,
                problem,
                size_known: size.is_some(),
            },
            Err(e) => Warning::RecordNotUpdated {
                path,
                reason: e.to_string(),
            },
        }));
    }

    /// Runs `argv` in a throwaway snapshot of the plan's last layer (or in its working root with
    /// `keep`), with the plan's environment and working directory and what `opts` adds, on the
    /// caller's terminal. Returns the command's exit status.
    pub fn run<'p>(
        &self,
        plan: &'p Plan,
        argv: Vec<String>,
        opts: &RunOptions,
        sink: Sink<'_, 'p>,
    ) -> Result<i32, ApplyError> {
        let chain: Vec<LayerId> = plan.layers.iter().map(|l| l.id).collect();
        let (mut vars, workdir) = plan.final_context();
        vars.extend(opts.env.iter().cloned());
        let action = Action::Exec {
            argv,
            env: vars.into_iter().collect(),
            cwd: opts
                .workdir
                .clone()
                .or(workdir)
                .unwrap_or_else(|| "/".into()),
            user: opts.user.clone(),
            deny_services: false,
            sync: SyncMode::Off,
        };
        let (keep, network) = (opts.keep, opts.network);
        // The environment's caches, then the caller's binds (mounted later: on top).
        let mut cache_locks = Vec::new();
        let mut binds = self.cache_binds(&plan.final_caches(), &mut cache_locks)?;
        binds.extend(opts.binds.iter().cloned());
        if keep {
            let applied = self.apply(plan, false, sink)?;
            // Held while the view exists: without it, gc removes the view as a leftover.
            let _run = self.store.hold_run_lock()?;
            let view = backend::root_view(self.backend().layout(), &applied.root)?;
            let spec = Spec {
                source: RootSource::Dir,
                mountpoint: view.as_ref().map_or(applied.root, |v| v.mountpoint.clone()),
                network,
                binds,
                tmp_files: vec![],
                action,
            };
            let result = self.interactive(&spec);
            if let Some(view) = view {
                backend::drop_root_view(view)?;
            }
            return result;
        }
        let _in_use = self.realize(plan, sink)?.held;
        // Held until the throwaway root is gone: without it, gc removes the root as a leftover.
        let _run = self.store.hold_run_lock()?;
        let scratch = self.backend().scratch_root(&chain);
        self.forward_warnings(sink);
        let scratch = scratch?;
        let spec = Spec {
            source: scratch.source.clone(),
            mountpoint: scratch.mountpoint.clone(),
            network,
            binds,
            tmp_files: vec![],
            action,
        };
        let result = self.interactive(&spec);
        self.backend().drop_scratch(scratch)?;
        result
    }

    /// The binds of `caches` (each cache's store directory at its path), with their shared locks
    /// added to `locks`.
    pub(crate) fn cache_binds(
        &self,
        caches: &[envc_plan::CacheMount],
        locks: &mut Vec<store::Lock>,
    ) -> Result<Vec<crate::sandbox::Bind>, ApplyError> {
        let mut binds = Vec::with_capacity(caches.len());
        // The operator's scope (`ENVC_CACHE_SCOPE`): builds of untrusted changes (pull requests)
        // get caches of their own, never those of the trusted builds.
        let scope = std::env::var("ENVC_CACHE_SCOPE").unwrap_or_default();
        if !scope.is_empty() && !envc_plan::valid_cache_name(&scope) {
            return Err(ApplyError::Io {
                op: "use the cache scope",
                path: std::path::PathBuf::from(scope),
                source: std::io::Error::other(
                    "ENVC_CACHE_SCOPE must be 1 to 64 of A-Z a-z 0-9 . _ -, not starting with `.`",
                ),
            });
        }
        for c in caches {
            let dir = if scope.is_empty() {
                c.dir.clone()
            } else {
                format!("s-{scope}-{}", c.dir)
            };
            let (host, lock) = self.store.user_cache(&dir)?;
            locks.push(lock);
            binds.push(crate::sandbox::Bind {
                host,
                target: c.path.clone(),
                readonly: false,
                exact: true,
            });
        }
        Ok(binds)
    }

    fn interactive(&self, spec: &Spec) -> Result<i32, ApplyError> {
        self.exec
            .interactive(spec)
            .map_err(|source| ApplyError::Sandbox {
                context: "run the command".into(),
                source,
            })
    }

    /// Removes a working root.
    pub fn remove_root(&self, name: &str) -> Result<bool, ApplyError> {
        if !store::valid_name(name) {
            return Err(StoreError::InvalidName {
                name: name.to_owned(),
            }
            .into());
        }
        let _lock = self.store.lock_root(name)?;
        // A root with an unreadable or missing record is still removed.
        let existed = !matches!(self.store.read_root(name), Ok(None))
            || self.backend().layout().root_dir(name).exists();
        self.backend().drop_root(name)?;
        self.store.remove_root_record(name)?;
        Ok(existed)
    }
}
