//! `envc verify`: recomputes the tree digest ([`crate::digest`]) of stored layers and compares
//! each with the one recorded when the layer was sealed, naming every layer whose tree changed
//! since (tampering, disk corruption).
//!
//! Each layer is read through the backend's [`crate::backend::Backend::tree_view`] of its chain,
//! while shared locks on the whole chain keep gc from removing any of it, and the run lock keeps
//! the view (in `tmp/run-PID-*`) from counting as a leftover. A layer that cannot be read is
//! reported as such, and the others are verified all the same.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;

use envc_plan::{Digest, LayerId, Plan};
use serde::Serialize;

use crate::digest;
use crate::store::{Meta, Store, StoreError};
use crate::warning::Warning;

/// What verifying one layer found.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Verdict {
    /// Its tree has the digest recorded when it was sealed.
    Ok {
        /// The digest.
        digest: Digest,
    },
    /// Its tree changed since it was sealed.
    Mismatch {
        /// The digest recorded at seal.
        recorded: Digest,
        /// The digest of the tree now.
        now: Digest,
        /// The first layer below it in its chain whose tree changed too, if one was verified:
        /// a digest covers the full tree, so a change in an ancestor shows in every layer above
        /// it that does not hide the changed file, and may be the only change.
        ancestor: Option<LayerId>,
    },
    /// Its record has no digest (sealed by an older envc, or a record rebuilt without the
    /// build): there is nothing to compare with. Not a failure.
    NoDigest,
    /// It could not be read (or its record, or its chain).
    Error {
        /// Why, naming the operation and the object.
        reason: String,
    },
}

impl Verdict {
    /// Whether this makes `envc verify` fail: a mismatch, or a layer that could not be checked.
    pub fn failed(&self) -> bool {
        matches!(self, Verdict::Mismatch { .. } | Verdict::Error { .. })
    }
}

/// One layer and what verifying it found.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LayerVerdict {
    /// The layer's id.
    pub id: LayerId,
    /// Its name in the spec that built it (`?` without a record).
    pub name: String,
    /// The environment that built it (`?` without a record).
    pub env: String,
    /// What was found.
    #[serde(flatten)]
    pub verdict: Verdict,
}

/// What `envc verify` found.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Verified {
    /// Each layer verified, parents before children.
    pub layers: Vec<LayerVerdict>,
    /// Layers of the spec that are not stored (with a spec only; they are not verified).
    pub not_stored: usize,
    /// Conditions worth telling (a view that could not be removed; a nearly full pool).
    pub warnings: Vec<Warning>,
}

/// A layer to verify: its chain (base first, itself last) or why it has none, and its record.
struct Target {
    id: LayerId,
    name: String,
    env: String,
    chain: Result<Vec<LayerId>, String>,
    recorded: Result<Option<Digest>, String>,
}

/// Verifies the stored layers of `plan`'s chain, or with no plan every sealed layer of the store;
/// `on_layer` sees each verdict as soon as it is known. An error is returned only when the store
/// itself cannot be listed or locked; a layer that cannot be read is a [`Verdict::Error`].
pub fn verify(
    store: &Store,
    plan: Option<&Plan>,
    on_layer: &mut dyn FnMut(&LayerVerdict),
) -> Result<Verified, StoreError> {
    let mut out = Verified::default();
    let targets = match plan {
        Some(plan) => {
            let mut targets = Vec::new();
            for (i, layer) in plan.layers.iter().enumerate() {
                // Something of the wrong type in its place is this layer's error.
                let meta = match store.check_sealed(&layer.id) {
                    Ok(false) => {
                        out.not_stored += 1;
                        continue;
                    }
                    Ok(true) => store.read_meta(&layer.id),
                    Err(e) => Err(e),
                };
                targets.push(Target {
                    id: layer.id,
                    name: layer.name.clone(),
                    env: match &meta {
                        Ok(Some(m)) => m.env.clone(),
                        _ => plan.name.clone(),
                    },
                    chain: Ok(plan.layers[..=i].iter().map(|l| l.id).collect()),
                    recorded: recorded(meta),
                });
            }
            targets
        }
        None => store_targets(store)?,
    };
    // Held until the last view is gone: without it, gc removes a view as a leftover.
    let _run = store.hold_run_lock()?;
    let mut mismatched = std::collections::BTreeSet::new();
    for t in targets {
        let verdict = match (&t.recorded, &t.chain) {
            (Err(reason), _) => Verdict::Error {
                reason: reason.clone(),
            },
            (Ok(None), _) => Verdict::NoDigest,
            (Ok(Some(_)), Err(reason)) => Verdict::Error {
                reason: reason.clone(),
            },
            (Ok(Some(recorded)), Ok(chain)) => match digest_chain(store, chain, &mut out) {
                Ok(now) if now == *recorded => Verdict::Ok { digest: now },
                Ok(now) => {
                    mismatched.insert(t.id);
                    Verdict::Mismatch {
                        recorded: *recorded,
                        now,
                        ancestor: chain
                            .iter()
                            .find(|id| mismatched.contains(*id) && **id != t.id)
                            .copied(),
                    }
                }
                Err(reason) => Verdict::Error { reason },
            },
        };
        out.warnings.extend(store.backend().take_warnings());
        let v = LayerVerdict {
            id: t.id,
            name: t.name,
            env: t.env,
            verdict,
        };
        on_layer(&v);
        out.layers.push(v);
    }
    Ok(out)
}

fn recorded(meta: Result<Option<Meta>, StoreError>) -> Result<Option<Digest>, String> {
    match meta {
        Ok(m) => Ok(m.and_then(|m| m.tree_digest)),
        Err(e) => Err(e.to_string()),
    }
}

/// Every sealed layer of the store with its chain from the records' parent links, parents before
/// children and siblings by name. A record that cannot be read, or a chain that cannot be
/// followed (a parent without a record, links that loop), makes that layer's target an error;
/// the others are verified.
fn store_targets(store: &Store) -> Result<Vec<Target>, StoreError> {
    let ids = store.backend().sealed()?;
    let metas: BTreeMap<LayerId, Result<Option<Meta>, StoreError>> =
        ids.iter().map(|id| (*id, store.read_meta(id))).collect();
    let parent_of = |id: &LayerId| -> Result<Option<LayerId>, String> {
        match metas.get(id) {
            Some(Ok(Some(m))) => Ok(m.parent),
            Some(Ok(None)) => Err(format!(
                "its chain cannot be followed: layer {id} has no record"
            )),
            Some(Err(e)) => Err(format!("its chain cannot be followed: {e}")),
            None => Err(format!(
                "its chain cannot be followed: its ancestor {id} is not stored"
            )),
        }
    };
    let mut targets = Vec::new();
    for id in &ids {
        let meta = &metas[id];
        let mut chain = vec![*id];
        let chain = loop {
            if chain.len() > ids.len() {
                break Err("its chain cannot be followed: the records' parent links loop".into());
            }
            match parent_of(chain.last().expect("a layer")) {
                Ok(Some(p)) => chain.push(p),
                Ok(None) => {
                    chain.reverse();
                    break Ok(chain);
                }
                Err(e) => break Err(e),
            }
        };
        let (name, env) = match meta {
            Ok(Some(m)) => (m.name.clone(), m.env.clone()),
            _ => ("?".to_owned(), "?".to_owned()),
        };
        let recorded = match meta {
            Ok(m) => Ok(m.as_ref().and_then(|m| m.tree_digest)),
            Err(e) => Err(e.to_string()),
        };
        targets.push(Target {
            id: *id,
            name,
            env,
            chain,
            recorded,
        });
    }
    // Depth-first: a layer's sort key is its chain's (name, id) pairs, so a parent (a prefix of
    // its children's) comes first and siblings sort by name. Layers without a chain come last.
    let name_of = |id: &LayerId| match metas.get(id) {
        Some(Ok(Some(m))) => m.name.clone(),
        _ => "?".to_owned(),
    };
    targets.sort_by_cached_key(|t| match &t.chain {
        Ok(chain) => (
            false,
            chain
                .iter()
                .map(|id| (name_of(id), *id))
                .collect::<Vec<_>>(),
        ),
        Err(_) => (true, vec![(t.name.clone(), t.id)]),
    });
    Ok(targets)
}

/// The tree digest of `chain`'s last layer now, read through the backend's view of its full tree
/// under shared locks on the whole chain; or why it could not be computed.
fn digest_chain(store: &Store, chain: &[LayerId], out: &mut Verified) -> Result<Digest, String> {
    // Every lock ends with its layer checked sealed while it is held: gc removes a layer only
    // under its exclusive lock, so a layer seen sealed under a shared lock stays.
    let mut held = Vec::with_capacity(chain.len());
    for id in chain {
        let lock = store.share_layer(id).map_err(|e| e.to_string())?;
        if !store.check_sealed(id).map_err(|e| e.to_string())? {
            return Err(format!(
                "layer {id} of its chain is not stored (removed by a gc meanwhile?)"
            ));
        }
        held.push(lock);
    }
    let view = store
        .backend()
        .tree_view(chain)
        .map_err(|e| format!("cannot show its tree: {e}"))?;
    let digest = digest::tree_digest(&view.mountpoint);
    let dir = view.dir().to_owned();
    if let Err(e) = store.backend().drop_scratch(view) {
        // The digest stands; what is left is removed by the next gc.
        out.warnings.push(Warning::LeftoverKept {
            path: dir,
            reason: e.to_string(),
        });
    }
    drop(held);
    digest.map_err(|e| e.to_string())
}
