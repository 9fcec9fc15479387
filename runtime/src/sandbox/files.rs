//! Files inside a root, reached only through paths resolved inside that root.
//!
//! Build steps control the root's symlinks, so no path here is ever joined onto a host path:
//! every one goes through `openat2(RESOLVE_IN_ROOT)` or a directory fd found that way.
#![forbid(unsafe_code)]

use std::fs;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::path::Path;

use nix::fcntl::{OFlag, OpenHow, ResolveFlag, openat2};
use nix::sys::stat::{Mode, fchmod, mkdirat};

use super::protocol::{OrFail, SandboxError, SandboxOp};

/// Opens a host directory (the root itself, before anything is resolved inside it).
pub(crate) fn open_dir(path: &Path) -> nix::Result<OwnedFd> {
    nix::fcntl::open(
        path,
        OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
}

/// Opens `rel` (relative to the root, no leading `/`) resolving every component inside the root.
pub fn open_in_root(root: &OwnedFd, rel: &str, flags: OFlag) -> nix::Result<OwnedFd> {
    let rel = rel.trim_start_matches('/');
    let rel = if rel.is_empty() { "." } else { rel };
    let how = OpenHow::new()
        .flags(flags | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    openat2(root, rel, how)
}

/// Opens the directory `rel` inside the root only if no component of it is a symbolic link.
pub(crate) fn open_without_links(root: &OwnedFd, rel: &str) -> nix::Result<OwnedFd> {
    let rel = rel.trim_start_matches('/');
    let rel = if rel.is_empty() { "." } else { rel };
    let how = OpenHow::new()
        .flags(OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC)
        .resolve(
            ResolveFlag::RESOLVE_IN_ROOT
                | ResolveFlag::RESOLVE_NO_SYMLINKS
                | ResolveFlag::RESOLVE_NO_MAGICLINKS,
        );
    openat2(root, rel, how)
}

/// `mkdir -p` inside the root; returns the directory. Symlinks met on the way are followed, but
/// inside the root: an absolute target is taken relative to the root, `..` stops at it.
pub fn mkdir_in_root(root: &OwnedFd, rel: &str, mode: u32) -> nix::Result<OwnedFd> {
    let mut path = rel.trim_matches('/').to_owned();
    for _ in 0..40 {
        match open_in_root(root, &path, OFlag::O_DIRECTORY | OFlag::O_RDONLY) {
            Err(nix::errno::Errno::ENOENT) => {}
            other => return other,
        }
        // Find the longest prefix that exists; the next component is missing or a dangling link.
        let parts: Vec<&str> = path
            .split('/')
            .filter(|p| !p.is_empty() && *p != ".")
            .collect();
        let mut parent = open_in_root(root, ".", OFlag::O_DIRECTORY | OFlag::O_RDONLY)?;
        let mut i = 0;
        while i < parts.len() {
            let prefix = parts[..=i].join("/");
            match open_in_root(root, &prefix, OFlag::O_DIRECTORY | OFlag::O_RDONLY) {
                Ok(fd) => {
                    parent = fd;
                    i += 1;
                }
                Err(nix::errno::Errno::ENOENT) => break,
                Err(e) => return Err(e),
            }
        }
        let name = parts.get(i).copied().ok_or(nix::errno::Errno::ENOENT)?;
        match nix::fcntl::readlinkat(&parent, name) {
            Ok(target) => {
                // A dangling symlink: continue from its target, inside the root.
                let target = target.to_string_lossy().into_owned();
                let rest = parts[i + 1..].join("/");
                let base = if target.starts_with('/') {
                    String::new()
                } else {
                    parts[..i].join("/")
                };
                path = [base.as_str(), target.trim_start_matches('/'), rest.as_str()]
                    .iter()
                    .filter(|s| !s.is_empty())
                    .copied()
                    .collect::<Vec<_>>()
                    .join("/");
                continue;
            }
            Err(nix::errno::Errno::ENOENT) => {}
            Err(nix::errno::Errno::EINVAL) => return Err(nix::errno::Errno::ENOTDIR),
            Err(e) => return Err(e),
        }
        match mkdirat(&parent, name, Mode::from_bits_truncate(mode)) {
            Ok(()) | Err(nix::errno::Errno::EEXIST) => {}
            Err(e) => return Err(e),
        }
    }
    Err(nix::errno::Errno::ELOOP)
}

/// Writes the spec's files into the root's `/tmp`: (name, content); a name ending in `/` is a
/// directory.
pub(crate) fn write_tmp_files(
    root: &OwnedFd,
    files: &[(String, String)],
) -> Result<(), SandboxError> {
    for (name, content) in files {
        let tmp = open_in_root(root, "tmp", OFlag::O_DIRECTORY | OFlag::O_RDONLY)
            .or_fail(SandboxOp::Open, "/tmp")?;
        if let Some(dir) = name.strip_suffix('/') {
            mkdirat(&tmp, dir, Mode::from_bits_truncate(0o755))
                .or_fail(SandboxOp::Write, format!("/tmp/{dir}"))?;
            continue;
        }
        let fd = nix::fcntl::openat(
            &tmp,
            name.as_str(),
            OFlag::O_CREAT
                | OFlag::O_WRONLY
                | OFlag::O_TRUNC
                | OFlag::O_NOFOLLOW
                | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o644),
        )
        .or_fail(SandboxOp::Write, format!("/tmp/{name}"))?;
        fs::File::from(fd)
            .write_all(content.as_bytes())
            .or_fail(SandboxOp::Write, format!("/tmp/{name}"))?;
    }
    Ok(())
}

/// Where the policy-rc.d that keeps services from starting goes.
pub(crate) const POLICY_RC_D: &str = "/usr/sbin/policy-rc.d";

/// Installs a `policy-rc.d` that forbids starting services, unless the root already has one (or
/// has no `/usr/sbin`). Returns the directory it was installed in, if it was.
pub(crate) fn deny_services(root: &OwnedFd) -> Result<Option<OwnedFd>, SandboxError> {
    let Ok(sbin) = open_in_root(root, "usr/sbin", OFlag::O_DIRECTORY | OFlag::O_RDONLY) else {
        return Ok(None);
    };
    let fd = match nix::fcntl::openat(
        &sbin,
        "policy-rc.d",
        OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_WRONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(0o755),
    ) {
        Ok(fd) => fd,
        Err(nix::errno::Errno::EEXIST) => return Ok(None),
        Err(e) => return Err(e).or_fail(SandboxOp::DenyServices, POLICY_RC_D),
    };
    let mut f = fs::File::from(fd);
    let _ =
        f.write_all(b"#!/bin/sh\n# installed by envc for the duration of a build step\nexit 101\n");
    let _ = fchmod(&f, Mode::from_bits_truncate(0o755));
    Ok(Some(sbin))
}
