//! Making a base layer: a Debian root by mmdebstrap (from the base's mirror or the host's apt
//! sources), a root filesystem tarball unpacked by tar, an OCI image's layers, or nothing.
#![forbid(unsafe_code)]

use std::ffi::OsStr;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use envc_plan::digest::ContentHasher;
use envc_plan::lock::BaseLocked;
use envc_plan::{Base, Plan, SyncMode};
use nix::fcntl::OFlag;
use nix::unistd::UnlinkatFlags;

use super::Runtime;
use super::inroot::{is_file_at, open_dir, open_in_root};
use super::normalize::{NormalizeError, normalize};
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
    /// A base tarball could not be read.
    #[error("cannot read base tarball {}: {source}", path.display())]
    Read {
        /// The tarball.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A base tarball is not what the spec was compiled with.
    #[error(
        "base tarball {} changed since the spec was compiled (read {read}, the plan has {planned}); nothing was sealed, run the apply again",
        path.display()
    )]
    Changed {
        /// The tarball.
        path: PathBuf,
        /// The digest of what was read.
        read: envc_plan::Digest,
        /// The digest the layer id was computed from.
        planned: envc_plan::Digest,
    },
    /// An OCI base's layers could not be unpacked.
    #[error(transparent)]
    Image(#[from] crate::oci::image::ImageError),
    /// A locked build could not be normalized.
    #[error(transparent)]
    Normalize(NormalizeError),
    /// A locked build failed (fetching its packages, its repository, or what it installed).
    #[error("{0}")]
    Locked(String),
}

/// Opens a base tarball: a regular file (never a FIFO or a device, which could block or never
/// end), following the path as the compiler did.
fn open_tarball(path: &Path) -> Result<fs::File, BaseError> {
    use std::os::unix::fs::OpenOptionsExt;
    let err = |source| BaseError::Read {
        path: path.to_owned(),
        source,
    };
    let file = fs::File::options()
        .read(true)
        .custom_flags((OFlag::O_NONBLOCK | OFlag::O_NOCTTY).bits())
        .open(path)
        .map_err(err)?;
    if !file.metadata().map_err(err)?.is_file() {
        return Err(err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file",
        )));
    }
    Ok(file)
}

/// tar's option for the compression whose magic number starts `head` (none for a plain tar).
fn compression(head: &[u8]) -> Option<&'static str> {
    const MAGIC: &[(&[u8], &str)] = &[
        (&[0x1f, 0x8b], "--gzip"),
        (b"BZh", "--bzip2"),
        (&[0xfd, b'7', b'z', b'X', b'Z', 0x00], "--xz"),
        (&[0x28, 0xb5, 0x2f, 0xfd], "--zstd"),
        (b"LZIP", "--lzip"),
        (&[0x89, b'L', b'Z', b'O'], "--lzop"),
        (&[0x1f, 0x9d], "--uncompress"),
    ];
    MAGIC
        .iter()
        .find(|(magic, _)| head.starts_with(magic))
        .map(|(_, opt)| *opt)
}

/// A reader that hashes what passes through it.
struct Hashing<R> {
    inner: R,
    hasher: ContentHasher,
}

impl<R: io::Read> io::Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
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
        locked: Option<&BaseLocked>,
        dir: &Path,
        on_line: &mut dyn FnMut(&str),
    ) -> Result<(), BaseError> {
        match base {
            Base::Scratch => Ok(()),
            Base::Tar { path, digest } => {
                // tar reads the bytes envc reads and hashes, so what is unpacked is what the id
                // names: a tarball changed since the spec was compiled is refused.
                let file = open_tarball(path)?;
                let mut input = Hashing {
                    inner: file,
                    hasher: ContentHasher::new(),
                };
                // tar recognises compression only in files it opens itself: the first bytes say.
                let mut head = [0u8; 6];
                let mut got = 0;
                while got < head.len() {
                    match io::Read::read(&mut input, &mut head[got..]) {
                        Ok(0) => break,
                        Ok(n) => got += n,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(source) => {
                            return Err(BaseError::Read {
                                path: path.clone(),
                                source,
                            });
                        }
                    }
                }
                let tar = Tool::new("tar")?
                    .via(self.exec.helper())
                    .args(compression(&head[..got]))
                    .arg("--extract")
                    .arg("--file")
                    .arg("-")
                    .arg("--directory")
                    .arg(dir)
                    .args([
                        "--preserve-permissions",
                        "--same-owner",
                        "--numeric-owner",
                        "--xattrs",
                        "--xattrs-include=*",
                    ]);
                let mut stream = io::Read::chain(&head[..got], &mut input);
                self.exec.tool_from(&tar, &mut stream, on_line)?;
                // tar may stop before the end (the zero blocks after the last entry).
                io::copy(&mut input, &mut io::sink()).map_err(|source| BaseError::Read {
                    path: path.clone(),
                    source,
                })?;
                let read = input.hasher.finish();
                if read != *digest {
                    return Err(BaseError::Changed {
                        path: path.clone(),
                        read,
                        planned: *digest,
                    });
                }
                Ok(())
            }
            Base::Oci { path, layers, .. } => {
                crate::oci::image::unpack_layers(path, layers, dir)?;
                Ok(())
            }
            Base::Debian { .. } => {
                let sources = base_sources(base)?;
                match locked {
                    // Never an unlocked build under a locked id (`Lock::parse` refuses such a
                    // lock already).
                    Some(l) if l.packages.is_empty() => {
                        return Err(BaseError::Locked(
                            "the lock has no packages for this Debian base; write it again with `envc lock`".into(),
                        ));
                    }
                    None => {
                        let mmdebstrap = self.mmdebstrap(base, sync, &sources, dir, false)?;
                        let r = self.exec.tool(&mmdebstrap.tool, on_line);
                        drop(mmdebstrap);
                        r?;
                        self.adopt_apt_lists(plan, dir);
                    }
                    Some(l) => {
                        self.make_locked_base(plan, base, sync, l, &sources, dir, on_line)?
                    }
                }
                // Nothing of the host may stay in a layer: mmdebstrap copies its resolver config and
                // hostname in.
                remove_host_files(dir);
                if let Some(l) = locked {
                    normalize(dir, l.source_date_epoch).map_err(BaseError::Normalize)?;
                }
                Ok(())
            }
        }
    }

    /// mmdebstrap for `base` into `dir`, from the (one-line) apt sources `sources`.
    /// `keep_downloads`: the package lists and the
    /// downloaded packages stay in the root (for `envc lock`, which reads them).
    pub(super) fn mmdebstrap(
        &self,
        base: &Base,
        sync: SyncMode,
        sources: &str,
        dir: &Path,
        keep_downloads: bool,
    ) -> Result<Mmdebstrap, BaseError> {
        let Base::Debian {
            variant,
            arch,
            components,
            include,
            exclude_docs,
            suite,
            ..
        } = base
        else {
            unreachable!("mmdebstrap is only for debian bases")
        };
        let mmdebstrap = tools::find("mmdebstrap")?;
        // Contained (its mounts of proc, sys and dev in the new root stay in a mount
        // namespace of its own, and it dies with envc), with the capabilities of contained
        // tools only. With sync suppression, mmdebstrap and everything it starts (dpkg in
        // the new root included) run under the seccomp filter. It reaches the new root
        // through a /tmp of its own (`root_arg`), so apt still downloads as `_apt`.
        let mut t = Tool::at(mmdebstrap)
            .via(self.exec.helper())
            .nosync(sync != SyncMode::Off)
            .arg(format!("--variant={variant}"))
            .arg(format!("--architectures={arch}"))
            .arg(format!("--components={}", components.join(",")))
            .arg("--mode=root")
            .arg("--aptopt=Acquire::Retries \"3\"")
            .arg("--aptopt=Acquire::Languages \"none\"")
            // The package lists mmdebstrap downloaded go to the shared lists cache (or to
            // `envc lock`) instead of being thrown away, so the next `packages` step only
            // re-checks them.
            .arg("--skip=cleanup/apt/lists")
            .arg("--dpkgopt=force-unsafe-io");
        if keep_downloads {
            // mmdebstrap deletes the essential packages' files once they are installed unless
            // told otherwise.
            t = t
                .arg("--skip=cleanup/apt/cache")
                .arg("--skip=essential/unlink");
        }
        if !include.is_empty() {
            t = t.arg(format!("--include={}", include.join(",")));
        }
        if *exclude_docs {
            for opt in EXCLUDE_DOCS {
                t = t.arg(format!("--dpkgopt={opt}"));
            }
        }
        // Each sources line is an argument of its own (mmdebstrap takes `deb ...` lines as
        // mirrors): a file would be out of the tool's sight when the store is under /tmp, which
        // the tool gets a tmpfs of its own for.
        let t = t.arg(suite).root_arg(dir).args(sources.lines());
        Ok(Mmdebstrap { tool: t })
    }
}

/// An mmdebstrap command.
pub(super) struct Mmdebstrap {
    pub tool: Tool,
}

/// The apt sources of a Debian base: its mirror, or the host's mirrors for its suite. mmdebstrap
/// writes these into the root, and later `packages` steps use them from there.
pub(super) fn base_sources(base: &Base) -> Result<String, BaseError> {
    let Base::Debian {
        suite,
        components,
        mirror,
        ..
    } = base
    else {
        return Ok(String::new());
    };
    match mirror {
        Some(m) => Ok(aptsrc::sources_for_mirror(m, suite, components)),
        None => aptsrc::sources_for(&aptsrc::host_entries(), suite, components).ok_or_else(|| {
            BaseError::NoMirror {
                suite: suite.clone(),
            }
        }),
    }
}

/// The archive URIs of one-line apt sources (`deb [options] URI suite components`).
pub(super) fn source_uris(sources: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for line in sources.lines() {
        let mut words = line.split_whitespace();
        if words.next() != Some("deb") {
            continue;
        }
        let mut w = words.next();
        if w.is_some_and(|x| x.starts_with('[')) {
            while let Some(x) = w {
                w = words.next();
                if x.ends_with(']') {
                    break;
                }
            }
        }
        if let Some(uri) = w {
            let uri = uri.trim_end_matches('/').to_owned();
            if !out.contains(&uri) {
                out.push(uri);
            }
        }
    }
    out
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

#[cfg(test)]
mod tests {
    use super::compression;

    /// The magic numbers are those the real compressors write (each one that is installed).
    #[test]
    fn compressed_tarballs_are_recognised_by_their_first_bytes() {
        for (tool, opt) in [
            ("gzip", "--gzip"),
            ("bzip2", "--bzip2"),
            ("xz", "--xz"),
            ("zstd", "--zstd"),
        ] {
            let Ok(out) = std::process::Command::new(tool)
                .args(["-c", "/etc/passwd"])
                .output()
            else {
                continue;
            };
            assert!(out.status.success(), "{tool}");
            assert_eq!(compression(&out.stdout[..6]), Some(opt), "{tool}");
        }
        assert_eq!(compression(b"./\0\0\0\0"), None);
        assert_eq!(compression(b""), None);
    }
}
