//! A missing layer taken from the remote cache instead of being built: offered (its manifest,
//! config and signature checked), unpacked into the layer's staging build, its tree digest
//! checked, then sealed with its record like a built layer. Anything short of that discards the
//! staging build, says why in a warning, and leaves the layer to be built here: a remote cache
//! never fails an apply.
#![forbid(unsafe_code)]

use std::fs;

use envc_plan::{LayerId, Plan};

use super::layer::{digest_build, meta_of};
use super::{Event, Runtime, Sink};
use crate::backend::Labels;
use crate::oci::archive::Target;
use crate::oci::remote::{Offer, Remote};
use crate::sandbox::RootSource;
use crate::store;
use crate::warning::Warning;

impl Runtime {
    /// Pulls layer `index` of `plan` into the store (the caller holds the layer's exclusive lock,
    /// and its parent is sealed and held). Returns the compressed bytes downloaded, or `None` when
    /// the layer is to be built here: no remote cache, no trusted key, not in the cache, or
    /// refused (a warning says why).
    pub(super) fn pull<'p>(&self, plan: &'p Plan, index: usize, sink: Sink<'_, 'p>) -> Option<u64> {
        let remote = self.remote.as_ref()?;
        if !remote.can_pull() || remote.off().is_some() {
            return None;
        }
        let layer = &plan.layers[index];
        let failed = |sink: Sink<'_, 'p>, reason: String, unreachable: bool| {
            if unreachable {
                remote.turn_off(reason.clone());
                sink(Event::Warning(Warning::RemoteOff {
                    remote: remote.name(),
                    reason,
                }));
            } else {
                sink(Event::Warning(Warning::RemoteLayer {
                    layer: layer.name.clone(),
                    id: layer.id.to_hex(),
                    remote: remote.name(),
                    reason,
                }));
            }
        };
        let offer = match remote.offer(&layer.id, layer.parent.as_ref()) {
            Ok(Some(o)) => o,
            Ok(None) => return None,
            Err(e) => {
                failed(sink, e.to_string(), e.is_unreachable());
                return None;
            }
        };
        match self.pull_offer(plan, index, remote, &offer) {
            Ok(bytes) => Some(bytes),
            Err((reason, unreachable)) => {
                if let Err(e) = self.backend().discard(&layer.id) {
                    // The build that follows discards it again, and fails naming it if it must.
                    failed(
                        sink,
                        format!("{reason}; then discarding it: {e}"),
                        unreachable,
                    );
                } else {
                    failed(sink, reason, unreachable);
                }
                None
            }
        }
    }

    /// Unpacks, checks and seals an offered layer; the error says why (and whether the
    /// registry was unreachable).
    fn pull_offer(
        &self,
        plan: &Plan,
        index: usize,
        remote: &Remote,
        offer: &Offer,
    ) -> Result<u64, (String, bool)> {
        let layer = &plan.layers[index];
        let plain = |e: &dyn std::fmt::Display| (e.to_string(), false);
        let chain: Vec<LayerId> = plan.layers[..index].iter().map(|l| l.id).collect();
        let started = std::time::Instant::now();
        let build = self
            .backend()
            .begin(
                layer.id,
                &chain,
                Labels {
                    layer: &layer.name,
                    env: &plan.name,
                },
            )
            .map_err(|e| plain(&e))?;
        let target = match &build.source {
            RootSource::Overlay { upper, .. } => Target::Upper(upper),
            RootSource::Dir => Target::Tree(&build.mountpoint),
        };
        let bytes = remote
            .unpack(offer, target)
            .map_err(|e| (e.to_string(), e.is_unreachable()))?;
        let tree = digest_build(&build).map_err(|e| plain(&e))?;
        if tree != offer.tree {
            return Err((
                format!(
                    "its unpacked tree has digest {tree}, but {} signed {}",
                    offer.signer, offer.tree
                ),
                false,
            ));
        }
        let origin = format!("{} (signed by {})", remote.name(), offer.signer);
        let mut record = |size: u64| {
            let now = store::now();
            let mut meta = meta_of(plan, index, size);
            meta.created = now;
            meta.last_used = now;
            meta.build_secs = started.elapsed().as_secs_f64();
            meta.tree_digest = Some(tree);
            meta.origin = Some(origin.clone());
            self.store
                .write_meta(&meta)
                .map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>)
        };
        if let Err(e) = self.backend().seal(build, &mut record) {
            if !self.store.is_sealed(&layer.id) {
                let _ = fs::remove_file(self.store.meta_path(&layer.id));
            }
            return Err(plain(&e));
        }
        Ok(bytes)
    }
}

/// What pushing one layer of a chain did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PushOutcome {
    /// Uploaded: the compressed blob's size.
    Uploaded(u64),
    /// The registry has it already, signed by the same key.
    Present,
    /// The layer is not in this store (apply first).
    NotStored,
    /// It could not be pushed.
    Failed(String),
}

impl Runtime {
    /// Pushes every stored layer of `plan` to the remote cache that it does not have yet, base
    /// first, each while it is held (gc leaves it alone); `report` hears of each layer. Stops at
    /// the first layer whose push failed because the registry could not be reached. Returns how
    /// many layers failed.
    pub fn push(
        &self,
        plan: &Plan,
        report: &mut dyn FnMut(usize, &envc_plan::Layer, &PushOutcome),
    ) -> Result<usize, super::ApplyError> {
        let Some(remote) = self.remote.as_ref() else {
            return Ok(0);
        };
        let mut failures = 0;
        let mut held = Vec::new();
        for (index, layer) in plan.layers.iter().enumerate() {
            let chain: Vec<LayerId> = plan.layers[..=index].iter().map(|l| l.id).collect();
            let outcome = if !self.store.check_sealed(&layer.id)? {
                PushOutcome::NotStored
            } else {
                let lock = self.store.share_layer(&layer.id)?;
                if !self.store.check_sealed(&layer.id)? {
                    PushOutcome::NotStored
                } else {
                    held.push(lock);
                    match self.tree_digest_of(&chain) {
                        Err(reason) => PushOutcome::Failed(reason),
                        Ok((tree, recorded)) => {
                            match remote.push(&self.store, &chain, tree, &mut || {
                                self.unchanged(&chain, tree, recorded)
                            }) {
                                Ok(crate::oci::remote::Pushed::Present) => PushOutcome::Present,
                                Ok(crate::oci::remote::Pushed::Uploaded(n)) => {
                                    PushOutcome::Uploaded(n)
                                }
                                Err(e) if e.is_unreachable() => {
                                    failures += 1;
                                    report(index, layer, &PushOutcome::Failed(e.to_string()));
                                    return Ok(failures);
                                }
                                Err(e) => PushOutcome::Failed(e.to_string()),
                            }
                        }
                    }
                }
            };
            if matches!(outcome, PushOutcome::Failed(_)) {
                failures += 1;
            }
            report(index, layer, &outcome);
        }
        Ok(failures)
    }

    /// The recorded tree digest of the last layer of `chain` (sealed and held), or, for a layer
    /// recorded without one, its tree digest computed now; and whether it was recorded.
    fn tree_digest_of(&self, chain: &[LayerId]) -> Result<(envc_plan::Digest, bool), String> {
        let id = chain.last().expect("a chain has a layer");
        if let Ok(Some(meta)) = self.store.read_meta(id)
            && let Some(d) = meta.tree_digest
        {
            return Ok((d, true));
        }
        self.tree_digest_now(chain).map(|d| (d, false))
    }

    /// Before a layer is uploaded: its stored tree must still be the one recorded when it was
    /// sealed, or the push would sign a claim the tree does not keep (pullers would refuse it,
    /// and the cache would hold a useless entry under the id).
    fn unchanged(
        &self,
        chain: &[LayerId],
        recorded: envc_plan::Digest,
        was_recorded: bool,
    ) -> Result<(), String> {
        if !was_recorded {
            return Ok(());
        }
        let now = self.tree_digest_now(chain)?;
        if now == recorded {
            Ok(())
        } else {
            Err(format!(
                "its stored tree changed since it was sealed (digest {now}, recorded {recorded}): it is not pushed; `envc verify` tells more"
            ))
        }
    }

    /// The tree digest of the last layer of `chain` (sealed and held), computed now.
    fn tree_digest_now(&self, chain: &[LayerId]) -> Result<envc_plan::Digest, String> {
        let _run = self.store.hold_run_lock().map_err(|e| e.to_string())?;
        let view = self
            .backend()
            .tree_view(chain)
            .map_err(|e| format!("cannot show its tree: {e}"))?;
        let digest = crate::digest::tree_digest(&view.mountpoint);
        let _ = self.backend().drop_scratch(view);
        digest.map_err(|e| e.to_string())
    }
}
