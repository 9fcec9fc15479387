//! Locked builds: a base or a `packages` step that installs exactly the packages of the lock,
//! hermetically. The `.deb` files come from the store's content-addressed package store (by
//! sha256, verified when downloaded and before use; filled from the mirror when missing); the only
//! apt source during the installation is a local repository made of exactly those files, and the
//! network is off. Afterwards the installed set is compared with the lock: nothing extra, nothing
//! missing. Then the root is normalized ([`super::normalize`]).
#![forbid(unsafe_code)]

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::fs;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use envc_plan::lock::{BaseLocked, LockedPackage};
use envc_plan::{Base, LayerId, Plan};
use nix::fcntl::OFlag;

use super::Runtime;
use super::base::{BaseError, base_sources, source_uris};
use super::debindex::{Installed, as_installed, installed};
use super::inroot::{open_dir, open_in_root};
use crate::debs::DebStore;
use crate::sandbox::{EXPOSED_REPO, RootSource};

/// Where a locked step reaches its repository, inside the root: in the (bound) archives
/// directory, so nothing is created in the layer.
pub(super) const REPO_IN_ROOT: &str = "/var/cache/apt/archives/envc-repo";

/// The sources file a locked step's apt uses, in the step's own `/tmp`.
pub(super) const LOCKED_SOURCES: &str = "envc-locked.list";

/// A directory of the store's `tmp` (`lock-PID-TAG`), removed on drop. The process's run lock is
/// held while it lives (when it was taken): a process killed meanwhile leaves a directory that
/// the next apply or gc removes.
pub(super) struct TmpDir(
    pub PathBuf,
    #[allow(dead_code, reason = "held, not read: the run lock")] Option<crate::store::Lock>,
);

impl TmpDir {
    /// `tmp/lock-PID-TAG` of `store`, made empty, under the run lock.
    pub(super) fn new(store: &crate::store::Store, tag: &str) -> Result<TmpDir, String> {
        let run = store.hold_run_lock().map_err(|e| e.to_string())?;
        let path = store.path().join("tmp").join(format!(
            "{}{}-{tag}",
            crate::maintain::LOCKED_TMP_PREFIX,
            std::process::id()
        ));
        let dir = TmpDir(path, Some(run));
        let _ = crate::tree::remove_tree(crate::sys::kernel(), &dir.0);
        fs::create_dir_all(&dir.0)
            .map_err(|e| format!("cannot create {}: {e}", dir.0.display()))?;
        Ok(dir)
    }

    /// A sibling directory (`PATH.EXT`), made empty, removed on drop; the caller keeps `self`
    /// (and its run lock) alive longer.
    pub(super) fn sibling(&self, ext: &str) -> Result<TmpDir, String> {
        let dir = TmpDir(self.0.with_extension(ext), None);
        let _ = crate::tree::remove_tree(crate::sys::kernel(), &dir.0);
        fs::create_dir_all(&dir.0)
            .map_err(|e| format!("cannot create {}: {e}", dir.0.display()))?;
        Ok(dir)
    }
}

impl Drop for TmpDir {
    fn drop(&mut self) {
        let _ = crate::tree::remove_tree(crate::sys::kernel(), &self.0);
    }
}

/// The archive URIs a plan's packages are fetched from first: the base's mirror, or the host's
/// apt sources for its suite. A package's own recorded archive is tried after these.
pub(super) fn plan_mirrors(plan: &Plan) -> Vec<String> {
    match plan.base() {
        Some(b @ Base::Debian { .. }) => {
            base_sources(b).map(|s| source_uris(&s)).unwrap_or_default()
        }
        _ => {
            let mut out: Vec<String> = Vec::new();
            for e in crate::aptsrc::host_entries() {
                for u in e.uris {
                    let u = u.trim_end_matches('/').to_owned();
                    if !out.contains(&u) {
                        out.push(u);
                    }
                }
            }
            out
        }
    }
}

/// How the installed set differs from the lock, if it does: one line naming what is extra and what
/// is missing.
pub(super) fn compare(what: &str, got: &Installed, locked: &[LockedPackage]) -> Result<(), String> {
    let want = as_installed(locked);
    if *got == want {
        return Ok(());
    }
    let show = |s: &BTreeSet<(String, String, String)>| {
        let v: Vec<String> = s
            .iter()
            .take(20)
            .map(|(n, a, v)| format!("{n} {v} ({a})"))
            .collect();
        let more = s.len().saturating_sub(20);
        if more > 0 {
            format!("{} and {more} more", v.join(", "))
        } else {
            v.join(", ")
        }
    };
    let extra: BTreeSet<_> = got.difference(&want).cloned().collect();
    let missing: BTreeSet<_> = want.difference(got).cloned().collect();
    let mut msg = format!("{what} installed other packages than the lock has:");
    if !extra.is_empty() {
        let _ = write!(msg, " not in the lock: {};", show(&extra));
    }
    if !missing.is_empty() {
        let _ = write!(msg, " in the lock but not installed: {};", show(&missing));
    }
    msg.pop();
    Err(msg)
}

/// A file of a root being built, read through its layers: for an overlay build, the upper
/// directory first, then each lower layer, topmost first; for a directory root, the root.
pub(super) fn layered_root(source: &RootSource, mountpoint: &Path) -> Vec<PathBuf> {
    match source {
        RootSource::Dir => vec![mountpoint.to_owned()],
        RootSource::Overlay { lowers, upper, .. } => {
            let mut v = vec![upper.clone()];
            v.extend(lowers.iter().cloned());
            v
        }
    }
}

/// dpkg's installed set of a root given as its layers (see [`layered_root`]): from the topmost
/// layer that has dpkg's status file.
pub(super) fn installed_in(layers: &[PathBuf]) -> Installed {
    for dir in layers {
        let Some(root) = open_dir(dir) else { continue };
        if let Ok(fd) = open_in_root(
            &root,
            "var/lib/dpkg/status",
            OFlag::O_RDONLY | OFlag::O_NONBLOCK,
        ) && nix::sys::stat::fstat(&fd)
            .is_ok_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFREG)
        {
            drop(fd);
            return installed(&root);
        }
    }
    Installed::new()
}

impl Runtime {
    /// A local repository of exactly `pkgs` in the store's `tmp`, every file verified: fetched
    /// into the package store first when missing.
    pub(super) fn locked_repo(
        &self,
        id: &LayerId,
        tag: &str,
        pkgs: &[LockedPackage],
        mirrors: &[String],
        suite: Option<&str>,
        on_line: &mut dyn FnMut(&str),
    ) -> Result<TmpDir, String> {
        let debs = DebStore::open(&self.store).map_err(|e| e.to_string())?;
        let dir = TmpDir::new(&self.store, &format!("repo-{}-{tag}", id.short(12)))?;
        ensure_locked(&debs, pkgs, mirrors, on_line)?;
        debs.make_repo_for(pkgs, &dir.0, suite)
            .map_err(|e| e.to_string())?;
        Ok(dir)
    }

    /// Builds a locked Debian base: mmdebstrap from a local repository of exactly the locked
    /// files, without network, with the lock's source-date-epoch; then the root gets the real apt
    /// sources, and its installed set is checked against the lock.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn make_locked_base(
        &self,
        plan: &Plan,
        base: &Base,
        sync: envc_plan::SyncMode,
        locked: &BaseLocked,
        sources: &str,
        dir: &Path,
        on_line: &mut dyn FnMut(&str),
    ) -> Result<(), BaseError> {
        let id = plan.layers[0].id;
        let repo = self
            .locked_repo(
                &id,
                "base",
                &locked.packages,
                &source_uris(sources),
                match base {
                    Base::Debian { suite, .. } => Some(suite.as_str()),
                    _ => None,
                },
                on_line,
            )
            .map_err(BaseError::Locked)?;
        let repo_sources = format!("deb [trusted=yes] copy:{EXPOSED_REPO} ./\n");
        let mut m = self.mmdebstrap(base, sync, &repo_sources, dir, false)?;
        // Every locked package is named: mmdebstrap picks a variant's packages by their
        // `Priority`, and a `.deb`'s own control file may say another than the archive's index
        // (apt's says `important`, the archive `required`).
        let base_arch = match base {
            Base::Debian { arch, .. } => arch.as_str(),
            _ => "",
        };
        let names: BTreeSet<String> = locked
            .packages
            .iter()
            .map(|p| {
                if p.arch == base_arch || p.arch == "all" {
                    p.name.clone()
                } else {
                    format!("{}:{}", p.name, p.arch)
                }
            })
            .collect();
        m.tool = std::mem::replace(&mut m.tool, crate::tools::Tool::at(PathBuf::new()))
            .arg(format!(
                "--include={}",
                names.into_iter().collect::<Vec<_>>().join(",")
            ))
            .repo(&repo.0)
            .no_network(true)
            .env("SOURCE_DATE_EPOCH", locked.source_date_epoch.to_string());
        let r = self.exec.tool(&m.tool, on_line);
        drop(m);
        r?;
        drop(repo);
        let root = open_dir(dir).ok_or_else(|| {
            BaseError::Locked(format!("cannot open the new base {}", dir.display()))
        })?;
        drop_apt_lists(&root);
        write_sources(&root, sources).map_err(BaseError::Locked)?;
        compare("the base", &installed(&root), &locked.packages).map_err(BaseError::Locked)
    }
}

/// Removes the package lists a build left in the root (a locked build's are those of its local
/// repository: no use to anybody).
fn drop_apt_lists(root: &OwnedFd) {
    let Ok(lists) = open_in_root(
        root,
        "var/lib/apt/lists",
        OFlag::O_DIRECTORY | OFlag::O_RDONLY,
    ) else {
        return;
    };
    for n in super::inroot::entries(&lists) {
        if n == b"partial" || n == b"lock" {
            continue;
        }
        let _ = nix::unistd::unlinkat(
            &lists,
            std::ffi::OsStr::new(&*String::from_utf8_lossy(&n)),
            nix::unistd::UnlinkatFlags::NoRemoveDir,
        );
    }
}

/// Writes the root's `/etc/apt/sources.list` (the archive the root's later steps use), never
/// through a symlink; a `sources.list.d/0000*` file mmdebstrap wrote for the local repository
/// goes.
fn write_sources(root: &OwnedFd, sources: &str) -> Result<(), String> {
    let etc_apt = open_in_root(root, "etc/apt", OFlag::O_DIRECTORY | OFlag::O_RDONLY)
        .map_err(|e| format!("cannot open /etc/apt of the new base: {e}"))?;
    let _ = nix::unistd::unlinkat(
        &etc_apt,
        "sources.list",
        nix::unistd::UnlinkatFlags::NoRemoveDir,
    );
    let fd = nix::fcntl::openat(
        &etc_apt,
        "sources.list",
        OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_WRONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::from_bits_truncate(0o644),
    )
    .map_err(|e| format!("cannot write /etc/apt/sources.list of the new base: {e}"))?;
    std::io::Write::write_all(&mut fs::File::from(fd), sources.as_bytes())
        .map_err(|e| format!("cannot write /etc/apt/sources.list of the new base: {e}"))
}

impl Runtime {
    /// Puts every package of a locked plan into the package store, verified (`envc fetch`).
    /// Returns how many were fetched now and how many the lock has.
    pub fn fetch_locked(
        &self,
        plan: &Plan,
        on_line: &mut dyn FnMut(&str),
    ) -> Result<(usize, usize), String> {
        let mut all: Vec<LockedPackage> = Vec::new();
        for layer in &plan.layers {
            for step in &layer.steps {
                match step {
                    envc_plan::Step::Base {
                        locked: Some(l), ..
                    } => all.extend(l.packages.iter().cloned()),
                    envc_plan::Step::Packages {
                        locked: Some(l), ..
                    } => all.extend(l.iter().cloned()),
                    _ => {}
                }
            }
        }
        all.sort();
        all.dedup();
        let debs = DebStore::open(&self.store).map_err(|e| e.to_string())?;
        let missing = ensure_locked(&debs, &all, &plan_mirrors(plan), on_line)?;
        Ok((missing, all.len()))
    }
}

/// Puts `pkgs` into the package store, verified (fetching what is missing from `mirrors`, then each
/// package's own), saying how many are fetched and which stored files had to be replaced.
/// Returns how many were missing.
fn ensure_locked(
    debs: &DebStore,
    pkgs: &[LockedPackage],
    mirrors: &[String],
    on_line: &mut dyn FnMut(&str),
) -> Result<usize, String> {
    let missing = pkgs
        .iter()
        .filter(|p| !debs.path_of(&p.sha256).exists())
        .count();
    if missing > 0 {
        on_line(&format!(
            "envc: fetching {missing} of {} locked packages",
            pkgs.len()
        ));
    }
    let ensured = debs
        .ensure_all(pkgs, mirrors, false, &mut |_| {})
        .map_err(|e| e.to_string())?;
    for e in ensured {
        if let Some(what) = e.replaced {
            on_line(&format!(
                "envc: warning: {} was replaced in the package store: {what}",
                e.path.display()
            ));
        }
    }
    Ok(missing)
}
