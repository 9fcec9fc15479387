//! `envc plan`: prints the layers a spec compiles to, as a table or as JSON.

use std::io::Write;
use std::path::Path;

use envc_plan::{Digest, Plan};

use crate::compile::compile;
use crate::error::CliError;
use crate::lockfile::plan_for;

/// Prints the plan of `spec` (with its lock, if it has one). As JSON, each layer also has its
/// `tree_digest`: the one recorded for it in the store at `store` if it is sealed there, else
/// `null`.
pub fn plan(spec: &Path, json: bool, locked: bool, store: &Path) -> Result<(), CliError> {
    let compiled = compile(spec)?;
    let plan = plan_for(&compiled, spec, store, locked, true)?;
    let text = if json {
        let mut s = serde_json::to_string_pretty(&with_digests(&plan, store)?)
            .map_err(|e| CliError::failed(format!("cannot encode the plan as JSON: {e}")))?;
        s.push('\n');
        s
    } else {
        table(&plan)
    };
    std::io::stdout()
        .lock()
        .write_all(text.as_bytes())
        .map_err(|e| CliError::failed(format!("cannot write the plan to stdout: {e}")))
}

/// The plan as JSON (the plan type itself, which reads back as one), with a `tree_digest` field
/// added to each layer.
fn with_digests(plan: &Plan, store: &Path) -> Result<serde_json::Value, CliError> {
    let mut value = serde_json::to_value(plan)
        .map_err(|e| CliError::failed(format!("cannot encode the plan as JSON: {e}")))?;
    let layers = value
        .get_mut("layers")
        .and_then(serde_json::Value::as_array_mut);
    for (layer, digest) in layers
        .into_iter()
        .flatten()
        .zip(recorded_digests(plan, store))
    {
        if let Some(layer) = layer.as_object_mut() {
            let digest = digest.map_or(serde_json::Value::Null, |d| d.to_hex().into());
            layer.insert("tree_digest".into(), digest);
        }
    }
    Ok(value)
}

/// For each layer of `plan`: the tree digest its record holds, if it is sealed in the store at
/// `store`. The store is only read, never made; one that cannot be read is a warning, and its
/// layers' digests are then unknown (`None`).
fn recorded_digests(plan: &Plan, store: &Path) -> Vec<Option<Digest>> {
    let unknown = vec![None; plan.layers.len()];
    let st = match crate::store::open_read_only(store) {
        Ok(Some(st)) => st,
        Ok(None) => return unknown,
        Err(e) => {
            crate::report::warn(&format!("the layers' tree digests are not shown: {e}"));
            return unknown;
        }
    };
    let mut out = Vec::with_capacity(plan.layers.len());
    for layer in &plan.layers {
        let digest = st.check_sealed(&layer.id).and_then(|sealed| match sealed {
            true => st.read_meta(&layer.id),
            false => Ok(None),
        });
        out.push(match digest {
            Ok(meta) => meta.and_then(|m| m.tree_digest),
            Err(e) => {
                crate::report::warn(&format!(
                    "the tree digest of layer `{}` is not shown: {e}",
                    layer.name
                ));
                None
            }
        });
    }
    out
}

/// The plan's name and layer count, then one line per step: layer, id, step.
fn table(plan: &Plan) -> String {
    let n = plan.layers.len();
    let mut s = format!(
        "{} ({n} layer{}{})\n",
        plan.name,
        if n == 1 { "" } else { "s" },
        if plan.is_locked() { ", locked" } else { "" }
    );
    let width = plan.layers.iter().map(|l| l.name.len()).max().unwrap_or(4);
    for layer in &plan.layers {
        for (i, step) in layer.steps.iter().enumerate() {
            if i == 0 {
                s.push_str(&format!(
                    "  {:width$}  {}  {}\n",
                    layer.name,
                    layer.id.short(16),
                    step.summary()
                ));
            } else {
                s.push_str(&format!("  {:width$}  {:16}  {}\n", "", "", step.summary()));
            }
        }
    }
    s
}
