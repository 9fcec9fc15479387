//! `envc verify`: recomputes the tree digests of stored layers and names each layer whose tree no
//! longer matches its record.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use envc_plan::LayerId;

use envc_runtime::maintain::{LayerVerdict, Verdict, Verified};

use crate::cli::Backend;
use crate::compile::compile_for;
use crate::error::{CliError, exit};
use crate::lockfile::plan_for;

/// Verifies the stored layers of `spec` (or every sealed layer of the store): one line per layer
/// as it is verified, or JSON at the end. Exit status 1 if any layer's tree changed or could not
/// be read; a layer whose record has no digest is reported but does not fail.
pub fn verify(
    store: &Path,
    backend: Option<Backend>,
    spec: Option<&Path>,
    json: bool,
) -> Result<u8, CliError> {
    let rt = crate::store::open_existing(store, backend)?
        .ok_or_else(|| crate::store::no_store(store))?;
    let compiled = spec.map(|s| compile_for(s, store)).transpose()?;
    // The layers the spec builds: with its lock, when it has one.
    let locked = match (&compiled, spec) {
        (Some(c), Some(s)) => Some(plan_for(c, s, store, false, false)?),
        _ => None,
    };
    let plan = locked.as_ref();
    let mut names = std::collections::BTreeMap::new();
    let verified = envc_runtime::maintain::verify(&rt.store, plan, &mut |v| {
        names.insert(v.id, v.name.clone());
        if !json {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{}", line(v, &names));
            let _ = out.flush();
        }
    })?;
    for w in &verified.warnings {
        crate::report::warn(w);
    }
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&verified).unwrap_or_default()
        );
    }
    let _ = writeln!(std::io::stderr(), "envc: {}", summary(&verified));
    Ok(if verified.layers.iter().any(|l| l.verdict.failed()) {
        exit::FAILURE
    } else {
        exit::SUCCESS
    })
}

/// One layer: `NAME ID  STATUS` (`names`: of the layers verified so far, by id).
fn line(v: &LayerVerdict, names: &BTreeMap<LayerId, String>) -> String {
    let status = match &v.verdict {
        Verdict::Ok { .. } => "ok".to_owned(),
        Verdict::Mismatch {
            recorded,
            now,
            ancestor,
        } => {
            let mut s = format!("MISMATCH recorded {recorded} now {now}");
            if let Some(a) = ancestor {
                let name = names.get(a).map_or("?", String::as_str);
                s.push_str(&format!(
                    " (the tree of layer {name} {} below it changed too)",
                    a.short(12)
                ));
            }
            s
        }
        Verdict::NoDigest => "no digest recorded (sealed by an older envc)".to_owned(),
        Verdict::Error { reason } => format!("ERROR {reason}"),
    };
    format!("{} {}  {status}", v.name, v.id.short(12))
}

/// `3 layers verified: 2 ok, 1 mismatched, ...` (the counts that are not zero).
fn summary(v: &Verified) -> String {
    let count = |f: fn(&Verdict) -> bool| v.layers.iter().filter(|l| f(&l.verdict)).count();
    let parts: Vec<String> = [
        (count(|v| matches!(v, Verdict::Ok { .. })), "ok"),
        (
            count(|v| matches!(v, Verdict::Mismatch { .. })),
            "mismatched",
        ),
        (
            count(|v| matches!(v, Verdict::NoDigest)),
            "without a digest",
        ),
        (count(|v| matches!(v, Verdict::Error { .. })), "unreadable"),
    ]
    .into_iter()
    .filter(|(n, _)| *n > 0)
    .map(|(n, what)| format!("{n} {what}"))
    .collect();
    let n = v.layers.len();
    let mut s = format!(
        "{n} layer{} verified{}{}",
        if n == 1 { "" } else { "s" },
        if parts.is_empty() { "" } else { ": " },
        parts.join(", ")
    );
    if v.not_stored > 0 {
        s.push_str(&format!(
            "; {} layer{} of the spec not stored",
            v.not_stored,
            if v.not_stored == 1 { "" } else { "s" }
        ));
    }
    s
}
