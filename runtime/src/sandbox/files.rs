//! Files inside a root, reached only through paths resolved inside that root.
//!
//! Build steps control the root's symlinks, so no path here is ever joined onto a host path:
//! every one goes through `openat2(RESOLVE_IN_ROOT)` or a directory fd found that way.
#![forbid(unsafe_code)]

use std::fs;
use std::io::{self, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use nix::fcntl::{OFlag, OpenHow, ResolveFlag, openat2};
use nix::sys::stat::{Mode, SFlag, fchmod, mkdirat};
use nix::unistd::{Gid, Uid, UnlinkatFlags, fchownat, symlinkat, unlinkat};

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

/// A failed copy: what failed, in words, and the errno if there was one.
struct Failed(String, Option<i32>);

fn ctx<T, E: Into<io::Error>>(r: Result<T, E>, what: impl FnOnce() -> String) -> Result<T, Failed> {
    r.map_err(|e| {
        let e = e.into();
        Failed(format!("{}: {e}", what()), e.raw_os_error())
    })
}

/// Copies a host file or tree to `dest` inside the root. Parent directories are created; an
/// existing file or symlink at a destination is replaced, never followed.
pub fn copy_into_root(
    root: &OwnedFd,
    source: &Path,
    dest: &str,
    mode: Option<u32>,
    owner: Option<(u32, u32)>,
) -> Result<(), SandboxError> {
    copy(root, source, dest, mode, owner).map_err(|Failed(detail, errno)| SandboxError {
        op: SandboxOp::Copy,
        object: format!("{} to {dest}", source.display()),
        errno,
        detail,
    })
}

fn copy(
    root: &OwnedFd,
    source: &Path,
    dest: &str,
    mode: Option<u32>,
    owner: Option<(u32, u32)>,
) -> Result<(), Failed> {
    let dest = dest.trim_matches('/');
    let (parent, name) = match dest.rsplit_once('/') {
        Some((p, n)) => (p, n),
        None => (".", dest),
    };
    let meta = ctx(fs::metadata(source), || {
        format!("stat {}", source.display())
    })?;
    if name.is_empty() {
        // Copying a directory onto `/`: merge its contents into the root.
        if !meta.is_dir() {
            return Err(Failed("cannot copy a file onto /".into(), None));
        }
        let dir = ctx(
            open_in_root(root, ".", OFlag::O_DIRECTORY | OFlag::O_RDONLY),
            || "open /".into(),
        )?;
        return copy_children(&dir, source, mode, owner);
    }
    let pfd = ctx(mkdir_in_root(root, parent, 0o755), || {
        format!("create /{parent}")
    })?;
    copy_entry(&pfd, name, source, &meta, mode, owner)
}

fn chown_at(dir: &OwnedFd, name: &str, owner: Option<(u32, u32)>) -> Result<(), Failed> {
    let (uid, gid) = owner.unwrap_or((0, 0));
    ctx(
        fchownat(
            dir,
            name,
            Some(Uid::from_raw(uid)),
            Some(Gid::from_raw(gid)),
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        ),
        || format!("chown {name}"),
    )
}

fn copy_entry(
    dir: &OwnedFd,
    name: &str,
    source: &Path,
    meta: &fs::Metadata,
    mode: Option<u32>,
    owner: Option<(u32, u32)>,
) -> Result<(), Failed> {
    let existing =
        nix::sys::stat::fstatat(dir, name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW).ok();
    let existing_is_dir = existing
        .is_some_and(|st| SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR);
    let ft = meta.file_type();
    if ft.is_dir() {
        if existing.is_some() && !existing_is_dir {
            ctx(unlinkat(dir, name, UnlinkatFlags::NoRemoveDir), || {
                format!("replace {name}")
            })?;
        }
        if !existing_is_dir {
            ctx(
                mkdirat(dir, name, Mode::from_bits_truncate(meta.mode() & 0o7777)),
                || format!("create directory {name}"),
            )?;
        }
        let sub = ctx(
            nix::fcntl::openat(
                dir,
                name,
                OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                Mode::empty(),
            ),
            || format!("open directory {name}"),
        )?;
        ctx(
            fchmod(&sub, Mode::from_bits_truncate(meta.mode() & 0o7777)),
            || format!("chmod {name}"),
        )?;
        chown_at(dir, name, owner)?;
        return copy_children(&sub, source, mode, owner);
    }
    if existing_is_dir {
        return Err(Failed(
            format!("{name} is an existing directory in the root; a file cannot replace it"),
            None,
        ));
    }
    if existing.is_some() {
        ctx(unlinkat(dir, name, UnlinkatFlags::NoRemoveDir), || {
            format!("replace {name}")
        })?;
    }
    if ft.is_symlink() {
        let target = ctx(fs::read_link(source), || {
            format!("read link {}", source.display())
        })?;
        ctx(symlinkat(target.as_path(), dir, name), || {
            format!("create symlink {name}")
        })?;
        return chown_at(dir, name, owner);
    }
    let bits = mode.unwrap_or(meta.mode() & 0o7777);
    let fd = ctx(
        nix::fcntl::openat(
            dir,
            name,
            OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_WRONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o600),
        ),
        || format!("create {name}"),
    )?;
    let mut out = fs::File::from(fd);
    let mut input = ctx(fs::File::open(source), || {
        format!("open {}", source.display())
    })?;
    ctx(io::copy(&mut input, &mut out), || {
        format!("copy {}", source.display())
    })?;
    let (uid, gid) = owner.unwrap_or((0, 0));
    ctx(
        nix::unistd::fchown(&out, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid))),
        || format!("chown {name}"),
    )?;
    ctx(fchmod(&out, Mode::from_bits_truncate(bits)), || {
        format!("chmod {name}")
    })
}

fn copy_children(
    dir: &OwnedFd,
    source: &Path,
    mode: Option<u32>,
    owner: Option<(u32, u32)>,
) -> Result<(), Failed> {
    // An entry that cannot be read fails the copy: a layer never silently lacks a file.
    let mut entries: Vec<_> = ctx(
        ctx(fs::read_dir(source), || {
            format!("list {}", source.display())
        })?
        .collect::<Result<Vec<_>, _>>(),
        || format!("list {}", source.display()),
    )?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let path = e.path();
        let meta = ctx(fs::symlink_metadata(&path), || {
            format!("stat {}", path.display())
        })?;
        let name = e.file_name();
        let name = name
            .to_str()
            .ok_or_else(|| Failed(format!("{} is not UTF-8", path.display()), None))?;
        copy_entry(dir, name, &path, &meta, mode, owner)?;
    }
    Ok(())
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
/// has no `/usr/sbin`). Returns whether it was installed.
pub(crate) fn deny_services(root: &OwnedFd) -> Result<bool, SandboxError> {
    let Ok(sbin) = open_in_root(root, "usr/sbin", OFlag::O_DIRECTORY | OFlag::O_RDONLY) else {
        return Ok(false);
    };
    let fd = match nix::fcntl::openat(
        &sbin,
        "policy-rc.d",
        OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_WRONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(0o755),
    ) {
        Ok(fd) => fd,
        Err(nix::errno::Errno::EEXIST) => return Ok(false),
        Err(e) => return Err(e).or_fail(SandboxOp::DenyServices, POLICY_RC_D),
    };
    let mut f = fs::File::from(fd);
    let _ =
        f.write_all(b"#!/bin/sh\n# installed by envc for the duration of a build step\nexit 101\n");
    let _ = fchmod(&f, Mode::from_bits_truncate(0o755));
    Ok(true)
}
