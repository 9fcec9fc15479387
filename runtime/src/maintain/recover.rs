//! `envc store recover`: rebuilds the store's records from what the backend holds (LVM: the
//! volumes' tags). Sealed layers without a record are adopted, records whose volume is gone are
//! forgotten, volumes of interrupted builds are removed, and working roots get their records back.
#![forbid(unsafe_code)]

use std::collections::{BTreeMap, BTreeSet};

use envc_plan::LayerId;
use serde::Serialize;

use crate::backend::{RootAdoption, VolumeRoot};
use crate::store::{self, Meta, RootRecord, Store, StoreError};

/// What recovery found and did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Recovered {
    /// Whether the backend has anything to recover from (`false`: its layers are the store's own
    /// files, and nothing was done).
    pub applicable: bool,
    /// Sealed layers whose record was missing and was rebuilt.
    pub adopted: Vec<LayerId>,
    /// Layers recorded in the store whose volume no longer exists: their records were removed.
    pub forgotten: Vec<LayerId>,
    /// Volumes of interrupted builds that were removed.
    pub removed_builds: usize,
    /// Working roots whose record was rebuilt.
    pub roots: Vec<String>,
}

/// Rebuilds the store's records from the backend's inventory. Layers and roots someone else is
/// using right now (their lock is held) are left alone.
pub fn recover(store: &Store) -> Result<Recovered, StoreError> {
    let backend = store.backend();
    let Some(inv) = backend.inventory()? else {
        return Ok(Recovered::default());
    };
    let mut report = Recovered {
        applicable: true,
        ..Recovered::default()
    };
    let parents: BTreeMap<LayerId, Option<LayerId>> =
        inv.layers.iter().map(|l| (l.id, l.parent)).collect();
    for layer in &inv.layers {
        if !store.is_sealed(&layer.id) {
            backend.adopt_layer(layer)?;
            report.adopted.push(layer.id);
        }
        if store.read_meta(&layer.id)?.is_none() {
            let now = store::now();
            store.write_meta(&Meta {
                id: layer.id,
                parent: layer.parent,
                key: serde_json::Value::Null,
                name: layer.name.clone(),
                env: layer.env.clone(),
                spec: None,
                size: 0,
                created: now,
                last_used: now,
                build_secs: 0.0,
                tree_digest: None,
                origin: None,
            })?;
        }
    }
    // Builds nobody is running any more.
    let mut stale = Vec::new();
    let mut locks = Vec::new();
    for build in &inv.builds {
        if let Some(lock) = store.try_lock_layer(&build.id)? {
            locks.push(lock);
            stale.push(build.clone());
        }
    }
    backend.remove_builds(&stale)?;
    report.removed_builds = stale.len();
    drop(locks);
    let sealed: BTreeSet<LayerId> = parents.keys().copied().collect();
    for id in backend.sealed()? {
        if !sealed.contains(&id)
            && let Some(_lock) = store.try_lock_layer(&id)?
        {
            backend.forget_layer(&id)?;
            let _ = std::fs::remove_file(store.meta_path(&id));
            report.forgotten.push(id);
        }
    }
    // Newest generation first: it is the root the user worked in last.
    let mut roots: Vec<&VolumeRoot> = inv
        .roots
        .iter()
        .filter(|r| store::valid_name(&r.env))
        .collect();
    roots.sort_by_key(|r| std::cmp::Reverse(r.generation));
    for root in roots {
        let _lock = store.lock_root(&root.env)?;
        if backend.adopt_root(root)? != RootAdoption::Adopted {
            continue;
        }
        if store.read_root(&root.env)?.is_none() {
            store.write_root(&RootRecord {
                name: root.env.clone(),
                spec: None,
                chain: chain_of(root.top, &parents),
                created: store::now(),
            })?;
        }
        report.roots.push(root.env.clone());
    }
    Ok(report)
}

/// The chain ending at `top`, base first, following parent links (stopping at a cycle that
/// edited tags could make).
fn chain_of(top: LayerId, parents: &BTreeMap<LayerId, Option<LayerId>>) -> Vec<LayerId> {
    let mut chain = vec![top];
    let mut at = top;
    while let Some(Some(p)) = parents.get(&at) {
        if chain.contains(p) {
            break;
        }
        chain.push(*p);
        at = *p;
    }
    chain.reverse();
    chain
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> LayerId {
        LayerId([n; 32])
    }

    #[test]
    fn chains_follow_parents_and_stop_at_cycles() {
        let parents = BTreeMap::from([(id(1), None), (id(2), Some(id(1))), (id(3), Some(id(2)))]);
        assert_eq!(chain_of(id(3), &parents), vec![id(1), id(2), id(3)]);
        let cycle = BTreeMap::from([(id(1), Some(id(2))), (id(2), Some(id(1)))]);
        assert_eq!(chain_of(id(1), &cycle), vec![id(2), id(1)]);
    }
}
