//! apt in a root: the script of a `packages` step, and the apt caches it shares (package lists,
//! downloaded packages), keyed by the tree the step starts from ([`cache_key`]); base builds
//! fill the lists of the steps right after them.
#![forbid(unsafe_code)]

use std::ffi::OsStr;
use std::fs;
use std::io::Read;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use envc_plan::Plan;
use nix::fcntl::OFlag;
use nix::unistd::UnlinkatFlags;

use super::Runtime;
use super::inroot::{entries, is_file_at, open_dir, open_in_root};
use crate::tools::Tool;

/// How long package lists count as fresh: a `packages` step within this many minutes of the last
/// refresh (a base build's, or another step's `apt-get update`) skips `apt-get update`.
const LISTS_FRESH_MINUTES: u32 = 10;

/// The key of a plan's shared apt lists cache as its base build fills it: its base.
pub(super) fn lists_key(plan: &Plan) -> String {
    layer_short(plan)
}

/// The key of the apt caches (package lists and downloaded packages) the `packages` step `si` of
/// layer `index` shares: the exact tree and environment it starts from, i.e. the layer it builds
/// on and the steps before it in its own layer. A step writes into these caches (they are bound
/// read-write into it, and apt trusts lists once they are on disk), and a step is untrusted: two
/// steps share a cache only if everything that ran before them is the same, so a hostile step
/// can reach only the caches of steps that start from its own tree. The first step of the layer
/// right after the base shares the base build's lists.
pub(super) fn cache_key(plan: &Plan, index: usize, si: usize) -> String {
    let layer = &plan.layers[index];
    let parent = layer
        .parent
        .map_or_else(|| "none".to_owned(), |p| p.short(16));
    let before = &layer.steps[..si.min(layer.steps.len())];
    if before.is_empty() {
        return parent;
    }
    let mut h = blake3::Hasher::new_derive_key("envc 2026 apt cache key");
    h.update(parent.as_bytes());
    h.update(&serde_json::to_vec(before).unwrap_or_default());
    h.finalize().to_hex()[..16].to_owned()
}

/// The first 16 hex digits of a plan's base layer id.
pub(super) fn layer_short(plan: &Plan) -> String {
    plan.layers
        .first()
        .map_or_else(|| "none".to_owned(), |l| l.id.short(16))
}

/// Prints a checksum of the apt sources of the root in the current directory; run by a
/// `packages` step in `/`. [`sources_sum`] gives the same sum for a base being built, on the host.
const SOURCES_SUM: &str = "LC_ALL=C; cat etc/apt/sources.list etc/apt/sources.list.d/*.list etc/apt/sources.list.d/*.sources 2>/dev/null | md5sum";

/// The files [`SOURCES_SUM`] reads, in the order the shell's globs give them: `sources.list`, then
/// `sources.list.d/*.list` and `sources.list.d/*.sources`, each sorted bytewise, hidden files left
/// out.
fn sources_files(root: &OwnedFd) -> Vec<String> {
    let mut out = vec!["etc/apt/sources.list".to_owned()];
    let mut names: Vec<Vec<u8>> = Vec::new();
    if let Ok(dir) = open_in_root(
        root,
        "etc/apt/sources.list.d",
        OFlag::O_DIRECTORY | OFlag::O_RDONLY,
    ) {
        names = entries(&dir);
    }
    names.sort();
    for ext in [&b".list"[..], &b".sources"[..]] {
        for n in &names {
            if n.ends_with(ext) && !n.starts_with(b".") {
                out.push(format!(
                    "etc/apt/sources.list.d/{}",
                    OsStr::from_bytes(n).to_string_lossy()
                ));
            }
        }
    }
    out
}

/// The sum [`SOURCES_SUM`] prints for the root open at `root`, computed on the host with every
/// path resolved inside the root (a root's symlinks never reach the host's files).
fn sources_sum(root: &OwnedFd) -> Option<Vec<u8>> {
    let mut all = Vec::new();
    for rel in sources_files(root) {
        if let Ok(fd) = open_in_root(root, &rel, OFlag::O_RDONLY) {
            // A directory or unreadable file adds nothing, as `cat ... 2>/dev/null` does.
            let _ = fs::File::from(fd).read_to_end(&mut all);
        }
    }
    Tool::new("md5sum").ok()?.output_with_input(&all).ok()
}

impl Runtime {
    /// Moves the apt lists a base build downloaded out of the base (lists are not part of any
    /// layer) into the base's shared lists cache, marked fresh for the root's current sources, so
    /// the next `packages` step need not download them again. Every path in the base is resolved
    /// inside it.
    pub(super) fn adopt_apt_lists(&self, plan: &Plan, dir: &Path) {
        let Some(root) = open_dir(dir) else {
            return;
        };
        let Ok(lists) = open_in_root(
            &root,
            "var/lib/apt/lists",
            OFlag::O_DIRECTORY | OFlag::O_RDONLY,
        ) else {
            return;
        };
        let names: Vec<Vec<u8>> = entries(&lists)
            .into_iter()
            .filter(|n| n != b"lock" && n != b"partial")
            .filter(|n| is_file_at(&lists, OsStr::from_bytes(n)))
            .collect();
        let key = lists_key(plan);
        if let (Ok(cache), Some(sum)) = (
            self.store.cache_dir(&format!("apt-lists/{key}")),
            sources_sum(&root),
        ) && let Ok(_lock) = self.store.lock_cache(&format!("lists-{key}"))
            && let Some(cache_fd) = open_dir(&cache)
        {
            let mut moved = false;
            for n in &names {
                let n = OsStr::from_bytes(n);
                moved |= nix::fcntl::renameat(&lists, n, &cache_fd, n).is_ok();
            }
            if moved {
                // The cache is written by steps: a symlink there is replaced, never followed.
                let name = ".envc-sources";
                let _ = nix::unistd::unlinkat(&cache_fd, name, UnlinkatFlags::NoRemoveDir);
                if let Ok(fd) = nix::fcntl::openat(
                    &cache_fd,
                    name,
                    OFlag::O_CREAT
                        | OFlag::O_EXCL
                        | OFlag::O_WRONLY
                        | OFlag::O_NOFOLLOW
                        | OFlag::O_CLOEXEC,
                    nix::sys::stat::Mode::from_bits_truncate(0o644),
                ) {
                    let _ = std::io::Write::write_all(&mut fs::File::from(fd), &sum);
                }
            }
        }
        // Whatever could not be moved (another filesystem) is removed: the base layer holds no
        // lists either way.
        for n in &names {
            let _ = nix::unistd::unlinkat(&lists, OsStr::from_bytes(n), UnlinkatFlags::NoRemoveDir);
        }
    }
}

/// The apt options of every `packages` step.
pub(super) fn apt_opts() -> String {
    [
        "-o APT::Install-Recommends=false",
        "-o APT::Install-Suggests=false",
        "-o Dpkg::Options::=--force-unsafe-io",
        "-o Dpkg::Options::=--force-confdef",
        "-o Dpkg::Options::=--force-confold",
        "-o Acquire::Retries=3",
        // No build needs translated package descriptions.
        "-o Acquire::Languages=none",
        // apt's binary caches (~80 MB) are rebuilt on demand: keep them out of layers.
        "-o Dir::Cache::pkgcache=",
        "-o Dir::Cache::srcpkgcache=",
    ]
    .join(" ")
}

fn quoted(packages: &[String]) -> String {
    packages
        .iter()
        .map(|p| format!("'{}'", p.replace('\'', r"'\''")))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The shell script of a `packages` step. apt uses the root's own sources (for a debian base,
/// those mmdebstrap wrote; plus any a step added). The lists are refreshed unless they were made
/// from the same sources less than LISTS_FRESH_MINUTES ago (by the base build or an earlier step).
pub(super) fn apt_script(packages: &[String], satisfy: bool) -> String {
    let verb = if satisfy { "satisfy" } else { "install" };
    let opts = apt_opts();
    format!(
        "set -e\n\
         cd /\n\
         sum=$({SOURCES_SUM})\n\
         marker=/var/lib/apt/lists/.envc-sources\n\
         if [ \"$(cat $marker 2>/dev/null)\" != \"$sum\" ] || [ -z \"$(find $marker -mmin -{LISTS_FRESH_MINUTES} 2>/dev/null)\" ]; then\n\
         \tapt-get {opts} update\n\
         \techo \"$sum\" > $marker\n\
         fi\n\
         apt-get {opts} {verb} -y -- {}\n",
        quoted(packages)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apt_script_installs_with_the_roots_own_sources() {
        let script = apt_script(&["hello".into(), "gcc=4".into()], false);
        assert!(script.contains("install -y -- 'hello' 'gcc=4'"), "{script}");
        assert!(
            !script.contains("SourceList"),
            "the root's own sources are used: {script}"
        );
        assert!(
            script.contains(SOURCES_SUM),
            "lists are reused only for the same sources: {script}"
        );
    }
}
