//! The lock beside a spec (`env.kdl` -> `env.lock`): reading it, and the plan a command builds
//! with it. A lock that cannot be read is a located error; a stale one is refused, naming the first
//! step that changed; without a lock the plan is unlocked and the command says so.

use std::io::Write;
use std::path::{Path, PathBuf};

use envc_compiler::Compiled;
use envc_plan::lock::{Lock, LockParseError, packages_steps};
use envc_plan::{Base, Plan};
use miette::{NamedSource, SourceSpan};

use crate::error::CliError;

/// The lock file of `spec`: same directory, same stem, extension `.lock`.
pub fn lock_path(spec: &Path) -> PathBuf {
    spec.with_extension("lock")
}

/// A lock file that cannot be read, with the place in it.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
#[error("cannot read the lock {path}: {message}")]
#[diagnostic(help("write it again with `envc lock SPEC` (or restore it from version control)"))]
pub struct LockFileError {
    path: String,
    message: String,
    #[source_code]
    src: NamedSource<String>,
    #[label("here")]
    span: Option<SourceSpan>,
}

/// The lock of `spec`, if it has one, through the parse cache of the store at `store` when there
/// is one: TOML is slow to parse (a lock of a buildd root is ~40 KiB, ~1 ms), so the parsed lock is
/// kept as JSON under `STORE/cache/locks/` by the blake3 of the lock's bytes. The cache is the
/// store's (root's alone); a missing or unreadable entry is parsed again.
pub fn read_cached(spec: &Path, store: &Path) -> Result<Option<Lock>, CliError> {
    check_spec_name(spec)?;
    let path = lock_path(spec);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(_) => return read(spec),
    };
    let cache = store.join("cache");
    let entry = cache
        .join("locks")
        .join(format!("{}.json", blake3::hash(&bytes).to_hex()));
    if let Ok(json) = std::fs::read(&entry)
        && let Ok(lock) = serde_json::from_slice::<Lock>(&json)
    {
        return Ok(Some(lock));
    }
    let lock = read(spec)?;
    // Only into a store that exists (`plan` never makes one); best effort.
    if let Some(lock) = &lock
        && cache.is_dir()
        && let Ok(json) = serde_json::to_vec(lock)
    {
        let dir = cache.join("locks");
        let _ = std::fs::create_dir(&dir);
        let tmp = dir.join(format!(".tmp.{}", std::process::id()));
        let _ = std::fs::remove_file(&tmp);
        let written = std::fs::File::options()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .and_then(|mut f| f.write_all(&json));
        if written
            .and_then(|()| std::fs::rename(&tmp, &entry))
            .is_err()
        {
            let _ = std::fs::remove_file(&tmp);
        }
    }
    Ok(lock)
}

/// Refuses a spec whose lock would be the spec itself (`env.lock`): reading it as a lock fails,
/// and writing its lock would replace the spec.
pub fn check_spec_name(spec: &Path) -> Result<(), CliError> {
    if lock_path(spec) == spec {
        return Err(CliError::failed(format!(
            "the spec {} has the extension .lock, which is its own lock's name: rename it (e.g. to {})",
            spec.display(),
            spec.with_extension("kdl").display()
        )));
    }
    Ok(())
}

/// The lock of `spec`, if it has one.
pub fn read(spec: &Path) -> Result<Option<Lock>, CliError> {
    check_spec_name(spec)?;
    let path = lock_path(spec);
    let text = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(CliError::failed(format!(
                "cannot read the lock {}: {e}",
                path.display()
            )));
        }
    };
    let text = String::from_utf8(text).map_err(|e| {
        CliError::failed(format!(
            "cannot read the lock {}: not UTF-8 text (byte {})",
            path.display(),
            e.utf8_error().valid_up_to()
        ))
    })?;
    Lock::parse(&text)
        .map(Some)
        .map_err(|LockParseError { message, span }| {
            CliError::Diagnostic(Box::new(LockFileError {
                path: path.display().to_string(),
                message,
                span: span.map(|r| {
                    let start = r.start.min(text.len());
                    (start, r.end.min(text.len()).saturating_sub(start)).into()
                }),
                src: NamedSource::new(path.display().to_string(), text),
            }))
        })
}

/// Whether locking means anything for `plan`: a Debian base, or a `packages` step.
pub fn lockable(plan: &Plan) -> bool {
    matches!(plan.base(), Some(Base::Debian { .. })) || !packages_steps(plan).is_empty()
}

/// The plan a command builds: with the spec's lock when it has one (a stale lock is refused),
/// unlocked otherwise (refused with `locked`, said on stderr with `say_unlocked`).
pub fn plan_for(
    compiled: &Compiled,
    spec: &Path,
    store: &Path,
    locked: bool,
    say_unlocked: bool,
) -> Result<Plan, CliError> {
    plan_and_lock(compiled, spec, store, locked, say_unlocked).map(|(plan, _)| plan)
}

/// [`plan_for`], with the lock it read (one read for a command that needs both).
pub fn plan_and_lock(
    compiled: &Compiled,
    spec: &Path,
    store: &Path,
    locked: bool,
    say_unlocked: bool,
) -> Result<(Plan, Option<Lock>), CliError> {
    let plan = &compiled.plan;
    match read_cached(spec, store)? {
        Some(lock) => lock.attach(plan).map(|p| (p, Some(lock))).map_err(|stale| {
            CliError::failed(format!(
                "the lock {} is stale: {stale}; run `envc lock {}` to update it",
                lock_path(spec).display(),
                spec.display()
            ))
        }),
        None if locked => Err(CliError::failed(format!(
            "--locked: {} has no lock ({} does not exist); run `envc lock {}` and check the lock in",
            spec.display(),
            lock_path(spec).display(),
            spec.display()
        ))),
        None => {
            if say_unlocked && lockable(plan) {
                crate::report::notice(&format!(
                    "{} is unlocked (no {}): its packages are whatever the mirror has today; `envc lock` pins them",
                    spec.display(),
                    lock_path(spec).display()
                ));
            }
            Ok((plan.clone(), None))
        }
    }
}
