//! `envc gc`: removes layers no working root needs, least recently used first, children before
//! parents, never one in use or being built.
#![forbid(unsafe_code)]

use std::collections::{BTreeMap, BTreeSet};

use envc_plan::LayerId;
use serde::Serialize;

use crate::store::{self, Meta, Store, StoreError};
use crate::warning::Warning;

/// What `gc` may remove.
#[derive(Debug, Clone, Copy, Default)]
pub struct GcPolicy {
    /// Remove unused layers not used for this many seconds.
    pub older_than: Option<u64>,
    /// Then remove least recently used unused layers until the store's layers take at most this.
    pub keep_bytes: Option<u64>,
    /// Only report what would be removed.
    pub dry_run: bool,
}

/// What `gc` did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct GcReport {
    /// Layers removed (or that would be, in a dry run), in removal order.
    pub removed: Vec<Meta>,
    /// Bytes freed.
    pub freed: u64,
    /// Layers kept because a working root uses them.
    pub in_use: usize,
    /// What did not stop gc but is worth telling.
    pub warnings: Vec<Warning>,
}

/// Removes layers no working root needs, per `policy`: never one in use or being built, always
/// children before parents.
pub fn gc(store: &Store, policy: GcPolicy) -> Result<GcReport, StoreError> {
    let mut warnings = Vec::new();
    if !policy.dry_run {
        store.backend().sweep();
        // Records of unpublished layers, record temporaries and throwaway roots of processes
        // that are gone; entries of the wrong type in layers/ are reported.
        warnings.extend(super::gc_leftovers(store)?);
        // Old snapshots of working roots whose background removal did not happen.
        for root in store.roots()? {
            if let Some(_lock) = store.try_lock_root(&root.name)?
                && let Err(e) = store.backend().reap_root(&root.name)
            {
                // Not fatal: a snapshot still in use is removed by a later gc.
                warnings.push(Warning::ReapFailed {
                    root: root.name.clone(),
                    reason: e.to_string(),
                });
            }
        }
        warnings.extend(store.backend().take_warnings());
    }
    let metas = store.layers()?;
    let in_use: BTreeSet<LayerId> = store.roots()?.into_iter().flat_map(|r| r.chain).collect();
    let now = store::now();
    let mut children: BTreeMap<LayerId, usize> = BTreeMap::new();
    for m in &metas {
        if let Some(p) = m.parent {
            *children.entry(p).or_default() += 1;
        }
    }
    let by_id: BTreeMap<LayerId, &Meta> = metas.iter().map(|m| (m.id, m)).collect();
    let mut total: u64 = metas.iter().map(|m| m.size).sum();
    let mut report = GcReport {
        in_use: metas.iter().filter(|m| in_use.contains(&m.id)).count(),
        warnings,
        ..GcReport::default()
    };
    let mut removed: BTreeSet<LayerId> = BTreeSet::new();
    // Candidates, least recently used first.
    let mut candidates: Vec<&Meta> = metas.iter().filter(|m| !in_use.contains(&m.id)).collect();
    candidates.sort_by_key(|m| (m.last_used, m.created));
    let old_enough = |m: &Meta| {
        policy
            .older_than
            .is_some_and(|age| now.saturating_sub(m.last_used) >= age)
    };
    loop {
        let over_budget = policy.keep_bytes.is_some_and(|k| total > k);
        // The least recently used removable leaf that the policy wants gone.
        let pick = candidates.iter().position(|m| {
            !removed.contains(&m.id)
                && children.get(&m.id).copied().unwrap_or(0) == 0
                && (old_enough(m) || over_budget)
        });
        let Some(i) = pick else { break };
        let m = candidates[i];
        if !policy.dry_run {
            let Some(_lock) = store.try_lock_layer(&m.id)? else {
                removed.insert(m.id); // being built or used right now: skip it
                continue;
            };
            store.backend().remove(&m.id)?;
            for p in [store.meta_path(&m.id), store.log_path(&m.id)] {
                let _ = std::fs::remove_file(p);
            }
        }
        removed.insert(m.id);
        total = total.saturating_sub(m.size);
        report.freed += m.size;
        report.removed.push(m.clone());
        if let Some(p) = m.parent.filter(|p| by_id.contains_key(p))
            && let Some(c) = children.get_mut(&p)
        {
            *c -= 1;
        }
    }
    Ok(report)
}
