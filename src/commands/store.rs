//! `envc store init`, `envc store recover`: set up or repair a store, listing what was recovered.

use std::io::Write;
use std::path::Path;

use envc_runtime::maintain::Recovered;

use crate::cli::{StoreCommand, StoreInit};
use crate::error::CliError;
use crate::human;
use crate::store::{self, Recovery};

/// Runs `envc store COMMAND` on the store at `path`.
pub fn store(path: &Path, command: &StoreCommand) -> Result<(), CliError> {
    match command {
        StoreCommand::Init(init) => self::init(path, init),
        StoreCommand::Recover => recover(path),
    }
}

fn init(path: &Path, init: &StoreInit) -> Result<(), CliError> {
    let (st, recovered) = store::init(path, init)?;
    print_recovered(&recovered);
    if let Some(l) = store::lvm_setting(&st) {
        let _ = writeln!(
            std::io::stderr(),
            "envc: store {} uses thin pool {}/{} ({} volumes of {}); {}",
            st.path().display(),
            l.vg,
            l.pool,
            l.fs,
            human::size(l.volume_size),
            store::capacity(&st)
                .map(|c| store::capacity_line(&c))
                .unwrap_or_default()
        );
    } else {
        let _ = writeln!(
            std::io::stderr(),
            "envc: store {} uses the {} backend",
            st.path().display(),
            st.backend().kind()
        );
    }
    Ok(())
}

fn recover(path: &Path) -> Result<(), CliError> {
    match store::recover(path)? {
        Recovery::Recovered(r) => print_recovered(&r),
        Recovery::NothingToRecover(kind) => {
            let _ = writeln!(
                std::io::stderr(),
                "envc: the {kind} backend keeps its layers as files in the store: nothing to recover"
            );
        }
    }
    Ok(())
}

/// One line per adopted or forgotten layer, per recovered root, then the interrupted builds.
fn print_recovered(r: &Recovered) {
    let mut out = std::io::stdout().lock();
    for id in &r.adopted {
        let _ = writeln!(out, "adopted layer {}", id.short(12));
    }
    for id in &r.forgotten {
        let _ = writeln!(out, "forgot layer {} (its volume is gone)", id.short(12));
    }
    for name in &r.roots {
        let _ = writeln!(out, "recovered working root {name}");
    }
    if r.removed_builds > 0 {
        let _ = writeln!(
            out,
            "removed {} interrupted build{}",
            r.removed_builds,
            if r.removed_builds == 1 { "" } else { "s" }
        );
    }
}
