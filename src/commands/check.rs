//! `envc check`: validates specs, reporting every error in each.

use std::path::PathBuf;

use crate::compile::compile;
use crate::error::CliError;

/// Prints `SPEC: ok (...)` for each valid spec; fails with the errors of all the invalid ones.
pub fn check(specs: &[PathBuf]) -> Result<(), CliError> {
    let mut invalid = Vec::new();
    for spec in specs {
        match compile(spec) {
            Ok(c) => {
                let n = c.plan.layers.len();
                if crate::report::json() {
                    crate::report::emit(
                        "checked",
                        serde_json::json!({
                            "spec": spec.display().to_string(),
                            "valid": true,
                            "name": c.plan.name,
                            "layers": n,
                        }),
                    );
                    continue;
                }
                println!(
                    "{}: ok ({n} layer{}, {})",
                    spec.display(),
                    if n == 1 { "" } else { "s" },
                    c.plan.name
                );
            }
            Err(e) => invalid.push(e),
        }
    }
    if invalid.is_empty() {
        Ok(())
    } else {
        Err(CliError::InvalidSpec(invalid))
    }
}
