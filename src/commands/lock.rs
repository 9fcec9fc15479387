//! `envc lock` (write or check a spec's lock) and `envc fetch` (fill the package store for it).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use envc_plan::lock::{Lock, LockedPackage};
use envc_runtime::Update;

use crate::cli::Backend;
use crate::compile::compile_for;
use crate::error::{CliError, exit};
use crate::lockfile::{check_spec_name, lock_path, plan_for, read};
use crate::progress::Progress;

/// `envc lock SPEC [--update [PKG...]] [--check]`.
pub fn lock(
    store: &Path,
    backend: Option<Backend>,
    spec: &Path,
    update: Option<Vec<String>>,
    check: bool,
    digests: bool,
) -> Result<u8, CliError> {
    check_spec_name(spec)?;
    let compiled = compile_for(spec, store)?;
    let path = lock_path(spec);
    if check {
        let Some(lock) = read(spec)? else {
            return Err(CliError::failed(format!(
                "{} has no lock ({} does not exist); run `envc lock {}`",
                spec.display(),
                path.display(),
                spec.display()
            )));
        };
        return match lock.check(&compiled.plan) {
            Ok(()) => {
                let _ = writeln!(std::io::stderr(), "envc: {} is up to date", path.display());
                Ok(exit::SUCCESS)
            }
            Err(stale) => Err(CliError::failed(format!(
                "the lock {} is stale: {stale}; run `envc lock {}`",
                path.display(),
                spec.display()
            ))),
        };
    }
    let old = match read(spec) {
        Ok(old) => old,
        // A full update does not need the old lock: a broken one is replaced.
        Err(_) if update.as_ref().is_some_and(Vec::is_empty) => None,
        Err(e) => return Err(e),
    };
    let update = match update {
        None => Update::Changed,
        Some(p) if p.is_empty() => Update::All,
        // `NAME:ARCH` names NAME (every architecture of it is resolved again).
        Some(p) => Update::Packages(
            p.into_iter()
                .map(|n| n.split(':').next().unwrap_or_default().to_owned())
                .collect(),
        ),
    };
    if let (Update::Packages(names), Some(old)) = (&update, &old) {
        let known: Vec<&str> = all_packages(old).map(|p| p.name.as_str()).collect();
        if let Some(n) = names.iter().find(|n| !known.contains(&n.as_str())) {
            return Err(CliError::failed(format!(
                "--update {n}: the lock {} has no package `{n}`",
                path.display()
            )));
        }
    }
    let rt = crate::store::open(store, backend)?;
    let mut progress = Progress::new(compiled.plan.layers.len());
    let result = rt.lock(&compiled.plan, old.as_ref(), &update, &mut |e| {
        progress.event(e)
    });
    drop(progress);
    let mut new = result.map_err(|e| CliError::apply(e, &compiled))?;
    if digests {
        let plan = new
            .attach(&compiled.plan)
            .map_err(|e| CliError::failed(format!("the new lock does not match its spec: {e}")))?;
        let mut progress = Progress::new(plan.layers.len());
        let result = rt.layer_digests(&plan, &mut |e| progress.event(e));
        drop(progress);
        new.layers = result.map_err(|e| CliError::apply(e, &compiled))?;
    }
    let text = new.to_toml();
    write_lock(&path, &text)
        .map_err(|e| CliError::failed(format!("cannot write {}: {e}", path.display())))?;
    let mut err = std::io::stderr().lock();
    for line in changes(old.as_ref(), &new) {
        let _ = writeln!(err, "  {line}");
    }
    let n = all_packages(&new).count();
    let _ = writeln!(
        err,
        "envc: wrote {} ({n} packages, {} packages step{})",
        path.display(),
        new.steps.len(),
        if new.steps.len() == 1 { "" } else { "s" }
    );
    Ok(exit::SUCCESS)
}

/// Every package of a lock, the base's first.
fn all_packages(lock: &Lock) -> impl Iterator<Item = &LockedPackage> {
    lock.packages()
}

/// What changed from `old` to `new`, a line per package: added, removed, moved, and a package
/// whose version stayed but whose file (sha256) did not: that is worth a reviewer's eye as much
/// as a new version.
fn changes(old: Option<&Lock>, new: &Lock) -> Vec<String> {
    let index = |l: &Lock| -> BTreeMap<(String, String), (String, String)> {
        all_packages(l)
            .map(|p| {
                (
                    (p.name.clone(), p.arch.clone()),
                    (p.version.clone(), p.sha256.to_hex()),
                )
            })
            .collect()
    };
    let Some(old) = old else {
        return Vec::new();
    };
    let (a, b) = (index(old), index(new));
    let mut out = Vec::new();
    for (k, (v, sha)) in &b {
        match a.get(k) {
            None => out.push(format!("+ {} {v} ({})", k.0, k.1)),
            Some((o, _)) if o != v => out.push(format!("~ {} {o} -> {v} ({})", k.0, k.1)),
            Some((_, osha)) if osha != sha => out.push(format!(
                "! {} {v} ({}): another file for the same version: sha256 {osha} -> {sha}",
                k.0, k.1
            )),
            _ => {}
        }
    }
    for (k, (v, _)) in &a {
        if !b.contains_key(k) {
            out.push(format!("- {} {v} ({})", k.0, k.1));
        }
    }
    out
}

/// `envc fetch SPEC`: every package of the spec's lock in the package store, verified.
pub fn fetch(store: &Path, backend: Option<Backend>, spec: &Path) -> Result<(), CliError> {
    let compiled = compile_for(spec, store)?;
    let plan = plan_for(&compiled, spec, store, true, false)?;
    let rt = crate::store::open(store, backend)?;
    let mut err = std::io::stderr();
    let (fetched, total) = rt
        .fetch_locked(&plan, &mut |line| {
            let _ = writeln!(err, "{line}");
        })
        .map_err(CliError::failed)?;
    let _ = writeln!(
        std::io::stderr(),
        "envc: {total} locked packages in the store ({fetched} fetched now)"
    );
    Ok(())
}

/// Writes the lock by a new file renamed over it: a reader never sees half a lock, and a symlink
/// planted at the temporary's name (the spec's directory may be anybody's checkout) is replaced,
/// never followed.
fn write_lock(path: &Path, text: &str) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension(format!("lock.tmp.{}", std::process::id()));
    match std::fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let mut f = std::fs::File::options()
        .write(true)
        // O_CREAT | O_EXCL: an existing name, a symlink (dangling or not) included, is refused.
        .create_new(true)
        .mode(0o644)
        .open(&tmp)?;
    let written = f.write_all(text.as_bytes()).and_then(|()| f.sync_all());
    drop(f);
    if let Err(e) = written.and_then(|()| std::fs::rename(&tmp, path)) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use envc_plan::lock::{LOCK_VERSION, Sha256, StepLock};

    fn lock(version: &str, fill: u8) -> Lock {
        Lock {
            version: LOCK_VERSION,
            spec_checksum: String::new(),
            source_date_epoch: 1,
            tools: BTreeMap::new(),
            base: None,
            steps: vec![StepLock {
                layer: "l".into(),
                step: 1,
                packages: vec!["hello".into()],
                installs: vec![LockedPackage {
                    name: "hello".into(),
                    version: version.into(),
                    arch: "amd64".into(),
                    sha256: Sha256([fill; 32]),
                    size: 1,
                    path: "p".into(),
                    mirror: "m".into(),
                }],
            }],
            layers: vec![],
        }
    }

    #[test]
    fn another_file_for_the_same_version_is_said() {
        assert!(changes(Some(&lock("1", 1)), &lock("1", 1)).is_empty());
        assert_eq!(
            changes(Some(&lock("1", 1)), &lock("2", 2)),
            ["~ hello 1 -> 2 (amd64)"]
        );
        let c = changes(Some(&lock("1", 1)), &lock("1", 2));
        assert_eq!(c.len(), 1, "{c:?}");
        assert!(
            c[0].starts_with("! hello 1 (amd64): another file")
                && c[0].contains(&"01".repeat(32))
                && c[0].contains(&"02".repeat(32)),
            "{c:?}"
        );
    }
}
