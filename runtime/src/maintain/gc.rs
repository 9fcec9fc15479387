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
        // Whatever their records say: reaping needs only the name.
        for name in root_names(store)? {
            if let Some(_lock) = store.try_lock_root(&name)?
                && let Err(e) = store.backend().reap_root(&name)
            {
                // Not fatal: a snapshot still in use is removed by a later gc.
                warnings.push(Warning::ReapFailed {
                    root: name,
                    reason: e.to_string(),
                });
            }
        }
        warnings.extend(store.backend().take_warnings());
    }
    let metas = store.layers()?;
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
        warnings,
        ..GcReport::default()
    };
    // Which layers the working roots use: read here for the plan, and again under each layer's
    // lock at the moment of removal (a root created meanwhile counts).
    let in_use = match roots_in_use(store)? {
        RootUse::Known(set) => set,
        RootUse::Unknown(w) => {
            report.in_use = metas.len();
            report.warnings.push(w);
            return Ok(report);
        }
    };
    report.in_use = metas.iter().filter(|m| in_use.contains(&m.id)).count();
    let mut known: BTreeSet<LayerId> = by_id.keys().copied().collect();
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
        removed.insert(m.id);
        if !policy.dry_run {
            let _lock = match store.try_lock_layer(&m.id) {
                Ok(Some(lock)) => lock,
                Ok(None) => continue, // being built or used right now: skip it
                // A lock that cannot be taken (a symlink put in its place): this layer stays,
                // the others are still collected.
                Err(e) => {
                    report.warnings.push(Warning::Damaged {
                        path: store.path().join("locks").join(format!("{}.lock", m.id)),
                        message: e.to_string(),
                    });
                    continue;
                }
            };
            // Decided again under the lock: another gc may have removed it, an apply may have
            // given a working root or a child to it since gc started.
            if !store.is_sealed(&m.id) {
                continue;
            }
            match roots_in_use(store)? {
                RootUse::Known(now_used) if now_used.contains(&m.id) => continue,
                RootUse::Known(_) => {}
                RootUse::Unknown(w) => {
                    report.warnings.push(w);
                    break;
                }
            }
            if new_children(store, &mut known, &mut children)?
                && children.get(&m.id).copied().unwrap_or(0) > 0
            {
                continue;
            }
            store.backend().remove(&m.id)?;
            crate::failpoint::hit("gc-removed");
            for p in [store.meta_path(&m.id), store.log_path(&m.id)] {
                let _ = std::fs::remove_file(p);
            }
        }
        crate::failpoint::hit("gc-between");
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

/// Which layers the working roots use.
enum RootUse {
    /// Every root's chain is known.
    Known(BTreeSet<LayerId>),
    /// A root's record cannot be read: any layer may be in use.
    Unknown(Warning),
}

/// Reads which layers the working roots use, now. A root whose record is unreadable, or missing
/// while its directory holds a root and nobody is working on it, makes the answer unknown. A root
/// without a record whose lock is held is being created or removed: its creator holds shared locks
/// on its chain until the record is written, so it needs nothing from here.
fn roots_in_use(store: &Store) -> Result<RootUse, StoreError> {
    let mut used = BTreeSet::new();
    for name in root_names(store)? {
        let name = name.as_str();
        match store.read_root(name) {
            Ok(Some(rec)) => used.extend(rec.chain),
            Ok(None) => {
                if store.try_lock_root(name)?.is_none() {
                    continue;
                }
                let path = store.path().join("roots").join(name);
                let empty = std::fs::read_dir(&path)
                    .map(|mut d| d.next().is_none())
                    .unwrap_or(false);
                if !empty && store.read_root(name)?.is_none() {
                    return Ok(RootUse::Unknown(Warning::RootUnknown {
                        root: name.to_owned(),
                        reason: format!("{} is missing", path.join("root.json").display()),
                    }));
                }
            }
            Err(e) => {
                return Ok(RootUse::Unknown(Warning::RootUnknown {
                    root: name.to_owned(),
                    reason: e.to_string(),
                }));
            }
        }
    }
    Ok(RootUse::Known(used))
}

/// The names of the working roots' directories (names that are not environment names are not
/// envc's).
fn root_names(store: &Store) -> Result<Vec<String>, StoreError> {
    let dir = store.path().join("roots");
    let mut names = Vec::new();
    for entry in std::fs::read_dir(&dir).map_err(store::io_err("list", &dir))? {
        let entry = entry.map_err(store::io_err("list", &dir))?;
        if let Some(name) = entry.file_name().to_str().filter(|n| store::valid_name(n)) {
            names.push(name.to_owned());
        }
    }
    names.sort();
    Ok(names)
}

/// Reads the records of layers sealed since gc started (their ids are not in `known`) and counts
/// them as children of their parents. Returns whether any was found.
fn new_children(
    store: &Store,
    known: &mut BTreeSet<LayerId>,
    children: &mut BTreeMap<LayerId, usize>,
) -> Result<bool, StoreError> {
    let dir = store.path().join("meta");
    let mut found = false;
    for entry in std::fs::read_dir(&dir).map_err(store::io_err("list", &dir))? {
        let entry = entry.map_err(store::io_err("list", &dir))?;
        let Some(id) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.strip_suffix(".json"))
            .and_then(|n| n.parse::<LayerId>().ok())
        else {
            continue;
        };
        if !known.insert(id) {
            continue;
        }
        found = true;
        // An unreadable record stops gc with an error naming it: its parent is unknown.
        if let Some(p) = store.read_meta(&id)?.and_then(|m| m.parent) {
            *children.entry(p).or_default() += 1;
        }
    }
    Ok(found)
}
