//! Leftovers of processes that are gone: records of layers that were never published (a kill
//! between writing a layer's record and publishing the layer), temporaries of record writes, and
//! throwaway roots of `envc run`. `gc` and every apply remove them; what a live process uses is
//! never touched, and that is decided by locks, not by pids alone:
//!
//! - a record without a layer is removed under the layer's lock (a build holds it from before it
//!   writes the record until it has published the layer);
//! - a record temporary is locked by its writer while it exists ([`record::is_leftover_tmp`]);
//! - `envc run` holds `locks/run-PID.lock` while its `tmp/run-PID-*` exist
//!   ([`Store::hold_run_lock`]);
//! - a download into the package store (`debs/sha256/HEX.tmp.PID.N`) is locked by its writer.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use envc_plan::LayerId;
use serde::Serialize;

use crate::backend::Scratch;
use crate::sandbox::RootSource;
use crate::store::{Store, StoreError, record};
use crate::warning::Warning;

/// What [`clean_leftovers`] removed.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Leftovers {
    /// Records of layers that are not sealed.
    pub records: usize,
    /// Temporaries of record writes.
    pub temporaries: usize,
    /// Throwaway roots of runs.
    pub runs: usize,
    /// What could not be removed (left for a later gc).
    pub warnings: Vec<Warning>,
}

impl Leftovers {
    fn keep(&mut self, path: &Path, e: impl ToString) {
        self.warnings.push(Warning::LeftoverKept {
            path: path.to_owned(),
            reason: e.to_string(),
        });
    }
}

/// Removes the leftovers of processes that are gone. Never fails: what cannot be removed is a
/// warning, and a later run retries.
pub fn clean_leftovers(store: &Store) -> Leftovers {
    let mut out = Leftovers::default();
    orphan_records(store, &mut out);
    let mut dirs = vec![store.path().to_owned(), store.path().join("meta")];
    match record::entries(&store.path().join("roots")) {
        Ok(roots) => dirs.extend(
            roots
                .into_iter()
                .filter(|(p, _)| std::fs::symlink_metadata(p).is_ok_and(|m| m.is_dir()))
                .map(|(p, _)| p),
        ),
        Err(e) => out.keep(&store.path().join("roots"), e),
    }
    for dir in dirs {
        temporaries(&dir, &mut out);
    }
    runs(store, &mut out);
    out
}

/// What `gc` reports beyond removing layers: the leftovers it removed could not (as warnings),
/// and the entries in `layers/` that are not layers (never used, never removed).
pub fn gc_leftovers(store: &Store) -> Result<Vec<Warning>, StoreError> {
    let mut out = clean_leftovers(store);
    // Downloads into the package store (`debs/sha256/HEX.tmp.PID.N`) of a process killed
    // meanwhile; never through a symlink at `debs` or `debs/sha256`. Only here: the package
    // store holds thousands of files, and listing them on every apply would cost every apply;
    // a leftover download is only disk space until then.
    let debs = store.path().join("debs");
    let real_dir = |p: &Path| std::fs::symlink_metadata(p).is_ok_and(|m| m.is_dir());
    if real_dir(&debs) && real_dir(&debs.join("sha256")) {
        temporaries(&debs.join("sha256"), &mut out);
    }
    let mut warnings = out.warnings;
    for e in store.damaged_layers()? {
        if let StoreError::WrongType { path, .. } = &e {
            warnings.push(Warning::Damaged {
                path: path.clone(),
                message: e.to_string(),
            });
        }
    }
    Ok(warnings)
}

/// `meta/ID.json` of a layer that is not sealed, and its `logs/ID.log`.
fn orphan_records(store: &Store, out: &mut Leftovers) {
    let dir = store.path().join("meta");
    let entries = match record::entries(&dir) {
        Ok(e) => e,
        Err(e) => return out.keep(&dir, e),
    };
    for (path, name) in entries {
        let Some(id) = name
            .strip_suffix(".json")
            .and_then(|n| n.parse::<LayerId>().ok())
        else {
            continue;
        };
        // A layer of the wrong type keeps its record: it is reported, not cleaned.
        if !matches!(store.check_sealed(&id), Ok(false)) {
            continue;
        }
        let lock = match store.try_lock_layer(&id) {
            Ok(Some(l)) => l,
            Ok(None) => continue, // being built: its record comes before its layer
            Err(e) => {
                out.keep(&path, e);
                continue;
            }
        };
        if !matches!(store.check_sealed(&id), Ok(false)) {
            continue;
        }
        match record::remove_file(&path) {
            Ok(true) => out.records += 1,
            Ok(false) => {}
            Err(e) => out.keep(&path, e),
        }
        let log = store.log_path(&id);
        if let Err(e) = record::remove_file(&log) {
            out.keep(&log, e);
        }
        drop(lock);
    }
}

/// Record temporaries (`NAME.tmp.PID[.N]`) in `dir` whose writer is gone.
fn temporaries(dir: &Path, out: &mut Leftovers) {
    let entries = match record::entries(dir) {
        Ok(e) => e,
        Err(e) => return out.keep(dir, e),
    };
    for (path, name) in entries {
        let Some(pid) = record::tmp_pid(&name) else {
            continue;
        };
        match record::is_leftover_tmp(&path, pid).and_then(|dead| {
            if dead {
                record::remove_file(&path)
            } else {
                Ok(false)
            }
        }) {
            Ok(true) => out.temporaries += 1,
            Ok(false) => {}
            Err(e) => out.keep(&path, e),
        }
    }
}

/// The prefix of the store's `tmp` directories of locked builds and `envc lock`
/// (`lock-PID-...`): held by the process's run lock like `run-PID-*`, plain directories.
pub const LOCKED_TMP_PREFIX: &str = "lock-";

/// `tmp/run-PID-*` and `tmp/lock-PID-*` of processes that no longer hold their run lock.
fn runs(store: &Store, out: &mut Leftovers) {
    let dir = store.path().join("tmp");
    let entries = match record::entries(&dir) {
        Ok(e) => e,
        Err(e) => return out.keep(&dir, e),
    };
    // (path, whether it is a throwaway root of the backend or a plain directory of a locked
    // build: its repository, apt directories, the base `envc lock` resolves).
    let mut by_pid: BTreeMap<u32, Vec<(PathBuf, bool)>> = BTreeMap::new();
    for (path, name) in entries {
        for (prefix, scratch) in [("run-", true), (LOCKED_TMP_PREFIX, false)] {
            if let Some(pid) = name
                .strip_prefix(prefix)
                .and_then(|r| r.split(['-', '.']).next())
                .and_then(|p| p.parse::<u32>().ok())
            {
                by_pid.entry(pid).or_default().push((path.clone(), scratch));
            }
        }
    }
    let me = std::process::id();
    for (pid, dirs) in by_pid {
        // This process's own runs are its caller's to remove.
        if pid == me {
            continue;
        }
        let lock = match store.try_lock_run(pid) {
            Ok(Some(l)) => l,
            Ok(None) => continue, // a live run
            Err(e) => {
                out.keep(&store.run_lock_path(pid), e);
                continue;
            }
        };
        let mut all = true;
        for (d, scratch) in dirs {
            // Never through a symlink: only a real directory is a throwaway root.
            if !std::fs::symlink_metadata(&d).is_ok_and(|m| m.is_dir()) {
                continue;
            }
            let removed = if scratch {
                let scratch = Scratch::new(RootSource::Dir, d.clone(), d.clone());
                store
                    .backend()
                    .drop_scratch(scratch)
                    .map_err(|e| e.to_string())
            } else {
                crate::tree::remove_tree(crate::sys::kernel(), &d).map_err(|e| e.to_string())
            };
            match removed {
                Ok(()) => out.runs += 1,
                Err(e) => {
                    all = false;
                    out.keep(&d, e);
                }
            }
        }
        // The lock file goes too, while it is held (a new process of this pid that waits for it
        // takes a fresh one: see `Store::hold_run_lock`).
        if all {
            let path = store.run_lock_path(pid);
            if let Err(e) = record::remove_file(&path) {
                out.keep(&path, e);
            }
        }
        drop(lock);
    }
}
