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
use crate::sandbox::RootSource;

/// Where envc's installer shows dpkg the packages it installs (bound read-only in the step's own
/// `/tmp`, a tmpfs: nothing is made in the layer).
const REPO_DIR: &str = "/tmp/envc-debs";

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
        // A spec's own `mirror=` is as untrusted as the spec: a `file:` one would have envc read
        // host files of its choosing (and say their size and sha256 when they differ). Only the
        // host's apt sources may be `file:`.
        Some(
            b @ Base::Debian {
                mirror: Some(_), ..
            },
        ) => base_sources(b)
            .map(|s| source_uris(&s))
            .unwrap_or_default()
            .into_iter()
            .filter(|u| u.starts_with("http://") || u.starts_with("https://"))
            .collect(),
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
    /// Builds a locked Debian base with envc's own installer ([`super::install`]): the essential
    /// packages put into the empty root, then every package installed by dpkg inside the step
    /// sandbox, without network, with the lock's source-date-epoch. Then the root gets the real
    /// apt sources, and its installed set is checked against the lock.
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
        let arch = match base {
            Base::Debian { arch, .. } => arch.as_str(),
            _ => "",
        };
        let mut env: Vec<(String, String)> = envc_plan::env::defaults().into_iter().collect();
        env.push((
            "SOURCE_DATE_EPOCH".into(),
            locked.source_date_epoch.to_string(),
        ));
        self.install_locked(
            &id,
            "base",
            &locked.packages,
            &source_uris(sources),
            Some(arch),
            &[],
            &RootSource::Dir,
            dir,
            env,
            sync,
            on_line,
        )
        .map_err(BaseError::Locked)?;
        let root = open_dir(dir).ok_or_else(|| {
            BaseError::Locked(format!("cannot open the new base {}", dir.display()))
        })?;
        drop_apt_lists(&root);
        write_sources(&root, sources).map_err(BaseError::Locked)?;
        compare("the base", &installed(&root), &locked.packages).map_err(BaseError::Locked)
    }

    /// Installs exactly `pkgs` into the root at `mountpoint` (made from `source`), with envc's own
    /// installer ([`super::install`]). `base_arch` is set for a base: the root is empty, and its
    /// essential packages are put in first. `auto` are marked automatically installed afterwards,
    /// as apt would have (`apt-mark`, when the root has apt). Every file comes from the package store (fetched from
    /// `mirrors` when missing), verified; dpkg runs in the step sandbox without network.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn install_locked(
        &self,
        id: &LayerId,
        tag: &str,
        pkgs: &[LockedPackage],
        mirrors: &[String],
        base_arch: Option<&str>,
        auto: &[String],
        source: &RootSource,
        mountpoint: &Path,
        env: Vec<(String, String)>,
        sync: envc_plan::SyncMode,
        on_line: &mut dyn FnMut(&str),
    ) -> Result<(), String> {
        use super::install::{
            Relations, Unpacker, extract, order, relations, sh_quote, wave_script,
        };
        let debs = DebStore::open(&self.store).map_err(|e| e.to_string())?;
        ensure_locked(&debs, pkgs, mirrors, on_line)?;
        let workers = std::thread::available_parallelism()
            .map_or(2, std::num::NonZeroUsize::get)
            .clamp(1, 4);
        // Each package's control fields (cached beside its file; they must name the package).
        let rels: Vec<Result<Relations, String>> = parallel(pkgs, workers, |p| {
            debs.control(p)
                .map(|c| relations(&c))
                .map_err(|e| e.to_string())
        });
        let rels = rels.into_iter().collect::<Result<Vec<_>, _>>()?;
        let order = order(&rels, base_arch.is_some());
        let tmp = TmpDir::new(&self.store, &format!("install-{}-{tag}", id.short(12)))?;
        let all: Vec<usize> = order
            .essential
            .iter()
            .chain(order.waves.iter().flatten())
            .copied()
            .collect();
        let unpacker = Unpacker::new(&debs, pkgs, &tmp.0, all)?;
        std::thread::scope(|s| {
            for k in 0..workers {
                let unpacker = &unpacker;
                s.spawn(move || unpacker.work(k));
            }
            let r = (|| {
                if let Some(arch) = base_arch {
                    let root = open_dir(mountpoint)
                        .ok_or_else(|| format!("cannot open {}", mountpoint.display()))?;
                    prepare_base(&root, arch, pkgs)?;
                    let spans = unpacker.wait(&order.essential)?;
                    on_line(&format!(
                        "envc: putting the files of {} essential packages in place",
                        order.essential.len()
                    ));
                    for (&i, span) in order.essential.iter().zip(spans) {
                        extract(&root, &tmp.0.join(unpacker.file_name(i)), span).map_err(|e| {
                            format!(
                                "cannot unpack {} {} ({}) into the new base: {e}",
                                pkgs[i].name, pkgs[i].version, pkgs[i].arch
                            )
                        })?;
                    }
                }
                let batches = std::iter::once((&order.essential, true))
                    .chain(order.waves.iter().map(|w| (w, false)))
                    .filter(|(b, _)| !b.is_empty());
                let batches: Vec<_> = batches.collect();
                let last = batches.len();
                for (n, (batch, force)) in batches.into_iter().enumerate() {
                    on_line(&if force {
                        format!("envc: installing {} essential packages", batch.len())
                    } else {
                        format!(
                            "envc: installing {} packages (wave {} of {})",
                            batch.len(),
                            n + 1 - usize::from(!order.essential.is_empty()),
                            order.waves.len()
                        )
                    });
                    let files: Vec<String> = batch.iter().map(|&i| unpacker.file_name(i)).collect();
                    let mut script = wave_script(REPO_DIR, &files, force)?;
                    if n + 1 == last && !auto.is_empty() {
                        let names: Vec<String> = auto.iter().map(|a| sh_quote(a)).collect();
                        script.push_str(&format!(
                            "if command -v apt-mark >/dev/null; then apt-mark auto -- {} >/dev/null; fi\n",
                            names.join(" ")
                        ));
                    }
                    let spec = crate::sandbox::Spec {
                        source: source.clone(),
                        mountpoint: mountpoint.to_owned(),
                        network: false,
                        binds: vec![crate::sandbox::Bind {
                            host: tmp.0.clone(),
                            target: REPO_DIR.into(),
                            readonly: true,
                            exact: false,
                        }],
                        tmp_files: vec![],
                        action: crate::sandbox::Action::Exec {
                            argv: vec!["/bin/sh".into(), "-c".into(), script],
                            env: env.clone(),
                            cwd: "/".into(),
                            user: None,
                            deny_services: true,
                            sync,
                        },
                    };
                    unpacker.set_busy(true);
                    let ran = self.exec.sandbox(&spec, on_line);
                    unpacker.set_busy(false);
                    match ran {
                        Ok(0) => {}
                        // 70: the script stopped waiting because a worker failed.
                        Ok(code) => {
                            let dpkg = || {
                                format!(
                                    "installing {} packages with dpkg failed (exit status {code})",
                                    batch.len()
                                )
                            };
                            return Err(if code == 70 {
                                unpacker.failure().unwrap_or_else(dpkg)
                            } else {
                                dpkg()
                            });
                        }
                        Err(e) => return Err(e.to_string()),
                    }
                }
                Ok(())
            })();
            unpacker.stop();
            r
        })
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
/// through a symlink.
fn write_sources(root: &OwnedFd, sources: &str) -> Result<(), String> {
    super::inroot::write_new(root, "etc/apt/sources.list", sources.as_bytes())
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
        // Each file's control fields, recorded beside it now: a build from the lock then reads
        // them from there (and checks them again), without running dpkg-deb.
        let workers = std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get);
        for r in parallel(&all, workers.clamp(1, 4), |p| debs.control(p)) {
            r.map_err(|e| e.to_string())?;
        }
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

/// `f` of every package, `workers` at a time, in the packages' order.
fn parallel<T: Send>(
    pkgs: &[LockedPackage],
    workers: usize,
    f: impl Fn(&LockedPackage) -> T + Sync,
) -> Vec<T> {
    let next = std::sync::atomic::AtomicUsize::new(0);
    let out: std::sync::Mutex<Vec<Option<T>>> =
        std::sync::Mutex::new((0..pkgs.len()).map(|_| None).collect());
    std::thread::scope(|s| {
        for _ in 0..workers.min(pkgs.len()).max(1) {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(p) = pkgs.get(i) else { return };
                    let r = f(p);
                    out.lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)[i] = Some(r);
                }
            });
        }
    });
    out.into_inner()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .into_iter()
        .flatten()
        .collect()
}

/// What dpkg needs in an empty root before the first package (what mmdebstrap makes too): its
/// database directories, an empty status file, the architectures; apt's and dpkg's
/// configuration directories, `/tmp`.
fn prepare_base(root: &OwnedFd, arch: &str, pkgs: &[LockedPackage]) -> Result<(), String> {
    use super::inroot::write_new;
    for dir in [
        "etc/apt/apt.conf.d",
        "etc/apt/sources.list.d",
        "etc/apt/preferences.d",
        "etc/dpkg/dpkg.cfg.d",
        "var/cache/apt/archives/partial",
        "var/lib/apt/lists/partial",
        "var/lib/dpkg/triggers",
        "var/lib/dpkg/info",
        "var/lib/dpkg/alternatives",
        "var/lib/dpkg/updates",
        "var/log/apt",
        "tmp",
    ] {
        crate::sandbox::mkdir_in_root(root, dir, 0o755)
            .map_err(|e| format!("cannot make /{dir} in the new base: {e}"))?;
    }
    let tmp = open_in_root(root, "tmp", OFlag::O_DIRECTORY | OFlag::O_RDONLY)
        .map_err(|e| format!("cannot open /tmp of the new base: {e}"))?;
    nix::sys::stat::fchmod(&tmp, nix::sys::stat::Mode::from_bits_truncate(0o1777))
        .map_err(|e| format!("cannot chmod /tmp of the new base: {e}"))?;
    let mut archs = vec![arch.to_owned()];
    for p in pkgs {
        if p.arch != "all" && !archs.contains(&p.arch) {
            archs.push(p.arch.clone());
        }
    }
    archs[1..].sort();
    let mut text = archs.join("\n");
    text.push('\n');
    write_new(root, "var/lib/dpkg/status", b"")?;
    write_new(root, "var/lib/dpkg/arch", text.as_bytes())?;
    Ok(())
}
