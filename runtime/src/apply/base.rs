//! Making a base layer: a Debian root by mmdebstrap (from the base's mirror or the host's apt
//! sources), a root filesystem tarball unpacked by tar, or nothing.
#![forbid(unsafe_code)]

use std::ffi::OsStr;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use envc_plan::{Base, Plan, SyncMode};
use nix::fcntl::OFlag;
use nix::unistd::UnlinkatFlags;

use super::Runtime;
use super::apt::layer_short;
use super::inroot::{is_file_at, open_dir, open_in_root};
use crate::aptsrc;
use crate::tools::{self, Tool, ToolError};

/// A failure to make a base.
#[derive(Debug, thiserror::Error)]
pub(super) enum BaseError {
    /// An external tool failed.
    #[error(transparent)]
    Tool(#[from] ToolError),
    /// Neither the base nor the host names a Debian mirror.
    #[error(
        "no Debian mirror for suite `{suite}`: the host's apt sources (/etc/apt/sources.list, /etc/apt/sources.list.d) have none; give the base a mirror="
    )]
    NoMirror {
        /// The base's suite.
        suite: String,
    },
    /// A file envc writes for the build could not be written.
    #[error("cannot write {}: {source}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// dpkg options of `exclude-docs`: written by mmdebstrap into the root's dpkg configuration, so
/// they hold for every later `packages` step too. Excluding man-db's `auto-update` flag keeps its
/// trigger from rebuilding the man page index.
const EXCLUDE_DOCS: &[&str] = &[
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/info/*",
    "path-exclude=/usr/share/lintian/*",
    "path-exclude=/var/lib/man-db/auto-update",
];

impl Runtime {
    pub(super) fn make_base(
        &self,
        plan: &Plan,
        base: &Base,
        sync: SyncMode,
        dir: &Path,
        on_line: &mut dyn FnMut(&str),
    ) -> Result<(), BaseError> {
        match base {
            Base::Scratch => Ok(()),
            Base::Tar { path, .. } => {
                let tar = Tool::new("tar")?
                    .via(self.exec.helper())
                    .arg("--extract")
                    .arg("--file")
                    .arg(path)
                    .arg("--directory")
                    .arg(dir)
                    .args([
                        "--preserve-permissions",
                        "--same-owner",
                        "--numeric-owner",
                        "--xattrs",
                        "--xattrs-include=*",
                    ]);
                Ok(self.exec.tool(&tar, on_line)?)
            }
            Base::Debian {
                suite,
                variant,
                arch,
                components,
                include,
                mirror,
                exclude_docs,
            } => {
                // The base's mirror, or the host's mirrors for its suite: mmdebstrap writes these into
                // the root, and later `packages` steps use them from there.
                let sources = match mirror {
                    Some(m) => aptsrc::sources_for_mirror(m, suite, components),
                    None => aptsrc::sources_for(&aptsrc::host_entries(), suite, components)
                        .ok_or_else(|| BaseError::NoMirror {
                            suite: suite.clone(),
                        })?,
                };
                let sources_file = self
                    .store
                    .path()
                    .join("tmp")
                    .join(format!("sources-{}.list", layer_short(plan)));
                fs::write(&sources_file, sources).map_err(|source| BaseError::Write {
                    path: sources_file.clone(),
                    source,
                })?;
                let mmdebstrap = tools::find("mmdebstrap")?;
                // Contained (its mounts of proc, sys and dev in the new root stay in a mount
                // namespace of its own, and it dies with envc). With sync suppression, mmdebstrap and
                // everything it starts (dpkg in the new root included) run under the seccomp filter.
                let mut t = Tool::at(mmdebstrap)
                    .via(self.exec.helper())
                    .nosync(sync != SyncMode::Off)
                    .arg(format!("--variant={variant}"))
                    .arg(format!("--architectures={arch}"))
                    .arg(format!("--components={}", components.join(",")))
                    .arg("--mode=root")
                    .arg("--aptopt=Acquire::Retries \"3\"")
                    .arg("--aptopt=Acquire::Languages \"none\"")
                    // The package lists mmdebstrap downloaded go to the shared lists cache (below)
                    // instead of being thrown away, so the next `packages` step only re-checks them.
                    .arg("--skip=cleanup/apt/lists")
                    .arg("--dpkgopt=force-unsafe-io");
                if !include.is_empty() {
                    t = t.arg(format!("--include={}", include.join(",")));
                }
                if *exclude_docs {
                    for opt in EXCLUDE_DOCS {
                        t = t.arg(format!("--dpkgopt={opt}"));
                    }
                }
                let t = t.arg(suite).arg(dir).arg(&sources_file);
                let r = self.exec.tool(&t, on_line);
                let _ = fs::remove_file(&sources_file);
                r?;
                self.adopt_apt_lists(plan, dir);
                // Nothing of the host may stay in a layer: mmdebstrap copies its resolver config and
                // hostname in.
                remove_host_files(dir);
                Ok(())
            }
        }
    }
}

/// Removes the host's resolver configuration and hostname that mmdebstrap copied into a base,
/// resolving the paths inside the base (a symlink there never leads to a host file).
fn remove_host_files(dir: &Path) {
    let Some(root) = open_dir(dir) else {
        return;
    };
    let Ok(etc) = open_in_root(&root, "etc", OFlag::O_DIRECTORY | OFlag::O_RDONLY) else {
        return;
    };
    for name in ["resolv.conf", "hostname"] {
        let name = OsStr::new(name);
        if is_file_at(&etc, name) {
            let _ = nix::unistd::unlinkat(&etc, name, UnlinkatFlags::NoRemoveDir);
        }
    }
}
