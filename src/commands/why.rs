//! `envc why`: for each layer of a spec, stored or not; for a miss, what differs from the nearest
//! stored layer.

use std::path::Path;

use envc_runtime::maintain::LayerWhy;

use crate::cli::Backend;
use crate::compile::compile_for;
use crate::error::CliError;
use crate::human;
use crate::lockfile::plan_for;

/// Prints why each layer of `spec` is cached or missing, as text or JSON.
pub fn why(
    store: &Path,
    backend: Option<Backend>,
    spec: &Path,
    json: bool,
) -> Result<(), CliError> {
    let rt = crate::store::open_existing(store, backend)?
        .ok_or_else(|| crate::store::no_store(store))?;
    let compiled = compile_for(spec, store)?;
    let plan = plan_for(&compiled, spec, store, false, false)?;
    let layers = envc_runtime::maintain::why(&rt.store, &plan)?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&layers).unwrap_or_default()
        );
    } else {
        print!("{}", text(&layers));
    }
    Ok(())
}

fn text(layers: &[LayerWhy]) -> String {
    let width = layers.iter().map(|l| l.name.len()).max().unwrap_or(4);
    let mut out = String::new();
    for l in layers {
        let state = if l.cached { "cached" } else { "missing" };
        out.push_str(&format!("{:width$}  {}  {state}\n", l.name, l.id.short(12)));
        if l.cached {
            continue;
        }
        let pad = " ".repeat(width + 2);
        match (&l.nearest, &l.because_of) {
            (_, Some(cause)) if l.differs.iter().all(|d| d.path == "parent") => {
                out.push_str(&format!(
                    "{pad}because its parent changed: the first missing layer is `{cause}`\n"
                ));
                continue;
            }
            (None, _) => {
                out.push_str(&format!(
                    "{pad}no stored layer named `{}` to compare with\n",
                    l.name
                ));
                continue;
            }
            (Some(m), _) => {
                out.push_str(&format!(
                    "{pad}nearest stored: {} {} (built by {}, used {})\n",
                    m.name,
                    m.id.short(12),
                    m.env,
                    human::ago(m.last_used)
                ));
            }
        }
        for d in &l.differs {
            out.push_str(&format!(
                "{pad}  {}: {} -> {}\n",
                d.path, d.stored, d.wanted
            ));
        }
    }
    out
}
