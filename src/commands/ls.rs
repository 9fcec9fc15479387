//! `envc ls`: the store as a tree of layers with sizes, last use, the roots that use them.

use std::collections::BTreeMap;
use std::path::Path;

use envc_plan::LayerId;
use envc_runtime::Runtime;
use envc_runtime::backend::Capacity;
use envc_runtime::store::{Meta, RootRecord};

use crate::cli::Backend;
use crate::error::CliError;
use crate::human;

/// Prints the store's layers as a tree, or everything about the store as JSON.
pub fn ls(store: &Path, backend: Option<Backend>, json: bool) -> Result<(), CliError> {
    let rt = crate::store::open_existing(store, backend)?
        .ok_or_else(|| crate::store::no_store(store))?;
    let layers = rt.store.layers()?;
    // Entries of the wrong type in layers/ (a symlink, a file) are never layers: named, not
    // listed.
    for e in rt.store.damaged_layers()? {
        crate::report::warn(&e);
    }
    let roots = rt.store.roots()?;
    let capacity = crate::store::capacity(&rt.store);
    if json {
        print_json(&rt, &layers, &roots, capacity.as_ref());
    } else {
        print!("{}", tree(&rt, &layers, &roots, capacity.as_ref()));
    }
    Ok(())
}

fn print_json(rt: &Runtime, layers: &[Meta], roots: &[RootRecord], capacity: Option<&Capacity>) {
    let value = serde_json::json!({
        // Lossy: a store path that is not UTF-8 must not stop the listing.
        "store": rt.store.path().to_string_lossy(),
        "backend": rt.store.backend().kind().to_string(),
        "lvm": crate::store::lvm_setting(&rt.store).map(|l| {
            let usage = capacity.and_then(|c| c.usage.as_ref());
            serde_json::json!({
                "vg": l.vg,
                "pool": l.pool,
                "fs": l.fs,
                "volume_size": l.volume_size,
                "data_percent": usage.map(|u| u.data),
                "metadata_percent": usage.map(|u| u.metadata),
            })
        }),
        "layers": layers,
        "roots": roots,
    });
    println!(
        "{}",
        serde_json::to_string_pretty(&value).unwrap_or_default()
    );
}

/// A header line (store, backend, count, total size, backend status), then the layers: children
/// under their parent, siblings by name.
fn tree(
    rt: &Runtime,
    layers: &[Meta],
    roots: &[RootRecord],
    capacity: Option<&Capacity>,
) -> String {
    let by_id: BTreeMap<_, &Meta> = layers.iter().map(|m| (m.id, m)).collect();
    let mut children: Children = BTreeMap::new();
    for m in layers {
        let parent = m.parent.filter(|p| by_id.contains_key(p));
        children.entry(parent).or_default().push(m);
    }
    for v in children.values_mut() {
        v.sort_by(|a, b| a.name.cmp(&b.name).then(a.id.cmp(&b.id)));
    }
    let mut out = String::new();
    out.push_str(&format!(
        "{} ({} backend, {} layers, {})\n",
        rt.store.path().display(),
        rt.store.backend().kind(),
        layers.len(),
        human::size(layers.iter().map(|m| m.size).sum())
    ));
    if let Some(c) = capacity {
        out.push_str(&crate::store::capacity_line(c));
        out.push('\n');
    }
    walk(&mut out, &children, roots, None, "");
    out
}

type Children<'a> = BTreeMap<Option<LayerId>, Vec<&'a Meta>>;

fn walk(
    out: &mut String,
    children: &Children<'_>,
    roots: &[RootRecord],
    parent: Option<LayerId>,
    prefix: &str,
) {
    let Some(list) = children.get(&parent) else {
        return;
    };
    for (i, m) in list.iter().enumerate() {
        let last = i + 1 == list.len();
        let users: Vec<&str> = roots
            .iter()
            .filter(|r| r.chain.last() == Some(&m.id))
            .map(|r| r.name.as_str())
            .collect();
        let users = if users.is_empty() {
            String::new()
        } else {
            format!("  <- root {}", users.join(", "))
        };
        out.push_str(&format!(
            "{prefix}{} {} {}  {}  used {}{users}\n",
            if last { "└─" } else { "├─" },
            m.name,
            m.id.short(12),
            human::size(m.size),
            human::ago(m.last_used)
        ));
        let next = format!("{prefix}{}", if last { "   " } else { "│  " });
        walk(out, children, roots, Some(m.id), &next);
    }
}
