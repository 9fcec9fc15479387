//! `envc why`: for each layer of a plan, whether it is stored and, for a miss, which fields of its
//! key differ from the closest stored layer.
#![forbid(unsafe_code)]

use std::collections::BTreeSet;

use envc_plan::{LayerId, Plan};
use serde::Serialize;
use serde_json::Value;

use crate::store::{Meta, Store, StoreError};

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
