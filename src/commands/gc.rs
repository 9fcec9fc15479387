//! `envc gc`: removes unused layers by age or by total size, then reports what went.

use std::io::Write;
use std::path::Path;

use envc_runtime::maintain::{GcPolicy, GcReport};

use crate::args::{Age, Size};
use crate::cli::Backend;
use crate::error::CliError;
use crate::human;

/// The age `gc` uses when given neither `--older-than` nor `--keep-bytes`.
const DEFAULT_AGE: Age = Age(7 * 86400);

/// Removes (or with `dry_run` lists) what the policy allows; one line per layer on stdout, a
/// summary on stderr.
pub fn gc(
    store: &Path,
    backend: Option<Backend>,
    older_than: Option<Age>,
    keep_bytes: Option<Size>,
    dry_run: bool,
) -> Result<(), CliError> {
    let Some(rt) = crate::store::open_existing(store, backend)? else {
        // Nothing to remove; a cleanup job on a fresh machine succeeds.
        let _ = writeln!(
            std::io::stderr(),
            "envc: no store at {}: nothing to remove",
            store.display()
        );
        return Ok(());
    };
    let older_than = match (older_than, keep_bytes) {
        (None, None) => Some(DEFAULT_AGE),
        (age, _) => age,
    };
    let policy = GcPolicy {
        older_than: older_than.map(|a| a.0),
        keep_bytes: keep_bytes.map(|s| s.0),
        dry_run,
    };
    let report = envc_runtime::maintain::gc(&rt.store, policy)?;
    print_report(&report, dry_run);
    Ok(())
}

/// `envc gc --caches`: empties the caches of `cache` steps that nothing uses now; one line per
/// cache on stdout, a summary on stderr.
pub fn empty_caches(store: &Path, backend: Option<Backend>) -> Result<(), CliError> {
    let Some(rt) = crate::store::open_existing(store, backend)? else {
        let _ = writeln!(
            std::io::stderr(),
            "envc: no store at {}: no caches",
            store.display()
        );
        return Ok(());
    };
    let (removed, busy) = rt.store.empty_user_caches()?;
    for name in &removed {
        println!("emptied cache {name}");
    }
    for name in &busy {
        println!("kept cache {name} (in use)");
    }
    let _ = writeln!(
        std::io::stderr(),
        "envc: {} cache{} emptied, {} in use",
        removed.len(),
        if removed.len() == 1 { "" } else { "s" },
        busy.len()
    );
    Ok(())
}

fn print_report(report: &GcReport, dry_run: bool) {
    for w in &report.warnings {
        crate::report::warn(w);
    }
    let verb = if dry_run { "would remove" } else { "removed" };
    for m in &report.removed {
        println!(
            "{verb} {} {} ({}, {})",
            m.name,
            m.id.short(12),
            human::size(m.size),
            m.env
        );
    }
    let _ = writeln!(
        std::io::stderr(),
        "envc: {verb} {} layer{}, {} freed; {} in use by working roots",
        report.removed.len(),
        if report.removed.len() == 1 { "" } else { "s" },
        human::size(report.freed),
        report.in_use
    );
}
