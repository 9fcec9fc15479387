//! `envc plan`: prints the layers a spec compiles to, as a table or as JSON.

use std::io::Write;
use std::path::Path;

use envc_plan::Plan;

use crate::compile::compile;
use crate::error::CliError;
use crate::lockfile::plan_for;

/// Prints the plan of `spec`.
pub fn plan(spec: &Path, json: bool, locked: bool) -> Result<(), CliError> {
    let compiled = compile(spec)?;
    let plan = plan_for(&compiled, spec, locked, true)?;
    let text = if json {
        let mut s = serde_json::to_string_pretty(&plan)
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

/// The plan's name and layer count, then one line per step: layer, id, step.
fn table(plan: &Plan) -> String {
    let n = plan.layers.len();
    let mut s = format!(
        "{} ({n} layer{})\n",
        plan.name,
        if n == 1 { "" } else { "s" }
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
