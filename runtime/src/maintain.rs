//! Store maintenance: why a layer misses the cache, and garbage collection.
#![forbid(unsafe_code)]

use std::collections::{BTreeMap, BTreeSet};

use envc_plan::{LayerId, Plan};
use serde::Serialize;
use serde_json::Value;

use crate::store::{self, Meta, Store, StoreError};

/// One difference between two keys.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FieldDiff {
    /// The field's path, e.g. `steps[1].command`.
    pub path: String,
    /// The stored layer's value (`null` when absent).
    pub stored: Value,
    /// The plan's value (`null` when absent).
    pub wanted: Value,
}

/// Why one layer of a plan is or is not in the store.
#[derive(Debug, Clone, Serialize)]
pub struct LayerWhy {
    /// The layer's name.
    pub name: String,
    /// Its id.
    pub id: LayerId,
    /// Whether it is stored.
    pub cached: bool,
    /// For a miss whose parent is also a miss: the first missing layer, which is the cause.
    pub because_of: Option<String>,
    /// For a miss: the closest stored layer with the same name.
    pub nearest: Option<Meta>,
    /// For a miss with a nearest layer: the fields that differ.
    pub differs: Vec<FieldDiff>,
}

/// Compares two JSON values, collecting the paths that differ.
pub fn diff(stored: &Value, wanted: &Value, path: &str, out: &mut Vec<FieldDiff>) {
    match (stored, wanted) {
        (Value::Object(a), Value::Object(b)) => {
            let keys: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            for k in keys {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                diff(
                    a.get(k).unwrap_or(&Value::Null),
                    b.get(k).unwrap_or(&Value::Null),
                    &p,
                    out,
                );
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            for i in 0..a.len().max(b.len()) {
                diff(
                    a.get(i).unwrap_or(&Value::Null),
                    b.get(i).unwrap_or(&Value::Null),
                    &format!("{path}[{i}]"),
                    out,
                );
            }
        }
        (a, b) if a == b => {}
        (a, b) => out.push(FieldDiff {
            path: path.to_owned(),
            stored: a.clone(),
            wanted: b.clone(),
        }),
    }
}

/// Explains, for every layer of `plan`, whether it is stored and, if not, what differs from the
/// closest stored layer of the same name.
pub fn why(store: &Store, plan: &Plan) -> Result<Vec<LayerWhy>, StoreError> {
    let metas = store.layers()?;
    let mut out = Vec::new();
    let mut first_miss: Option<String> = None;
    for layer in &plan.layers {
        let cached = store.is_sealed(&layer.id);
        if cached {
            out.push(LayerWhy {
                name: layer.name.clone(),
                id: layer.id,
                cached,
                because_of: None,
                nearest: None,
                differs: vec![],
            });
            continue;
        }
        let wanted = layer.key().to_json();
        let mut best: Option<(usize, &Meta, Vec<FieldDiff>)> = None;
        for m in metas
            .iter()
            .filter(|m| m.name == layer.name || m.parent == layer.parent)
        {
            let mut d = Vec::new();
            diff(&m.key, &wanted, "", &mut d);
            let score = d.len() + usize::from(m.name != layer.name) * 1000;
            let better = match &best {
                None => true,
                Some((s, bm, _)) => score < *s || (score == *s && m.last_used > bm.last_used),
            };
            if better {
                best = Some((score, m, d));
            }
        }
        let because_of = first_miss
            .clone()
            .filter(|_| layer.parent.is_some_and(|p| !store.is_sealed(&p)));
        if first_miss.is_none() {
            first_miss = Some(layer.name.clone());
        }
        let (nearest, differs) = match best {
            Some((_, m, d)) => (Some(m.clone()), d),
            None => (None, vec![]),
        };
        out.push(LayerWhy {
            name: layer.name.clone(),
            id: layer.id,
            cached,
            because_of,
            nearest,
            differs,
        });
    }
    Ok(out)
}

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
}

/// Removes layers no working root needs, per `policy`: never one in use or being built, always
/// children before parents.
pub fn gc(store: &Store, policy: GcPolicy) -> Result<GcReport, StoreError> {
    if !policy.dry_run {
        store.backend().sweep();
        // LVM: old snapshots of working roots whose background removal did not happen.
        if let Some(lvm) = store.backend().lvm() {
            for root in store.roots() {
                if let Some(_lock) = store.try_lock_root(&root.name)?
                    && let Err(e) = lvm.reap(&root.name)
                {
                    // Not fatal: a snapshot still in use is removed by a later gc.
                    eprintln!(
                        "envc: warning: cannot remove old snapshots of working root `{}`: {e}",
                        root.name
                    );
                }
            }
        }
    }
    let metas = store.layers()?;
    let in_use: BTreeSet<LayerId> = store.roots().into_iter().flat_map(|r| r.chain).collect();
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
        if let Some(p) = m.parent.filter(|p| by_id.contains_key(p)) {
            if let Some(c) = children.get_mut(&p) {
                *c -= 1;
            }
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn diff_names_fields() {
        let a = json!({"type": "layer", "parent": "aa", "steps": [{"type": "run", "command": "make"}, {"type": "env", "vars": {"A": "1"}}]});
        let b = json!({"type": "layer", "parent": "aa", "steps": [{"type": "run", "command": "make -j2"}, {"type": "env", "vars": {"A": "1", "B": "2"}}, {"type": "workdir", "path": "/w"}]});
        let mut d = Vec::new();
        diff(&a, &b, "", &mut d);
        let paths: Vec<&str> = d.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(paths, ["steps[0].command", "steps[1].vars.B", "steps[2]"]);
        assert_eq!(d[0].stored, json!("make"));
        assert_eq!(d[0].wanted, json!("make -j2"));
    }
}
