//! The mount sequence that makes a directory the step's root: private propagation, the root
//! itself (an overlay or a bind mount), `/proc`, `/sys`, `/tmp`, a minimal `/dev`, the spec's
//! binds, the host's resolv.conf, then the pivot into it.
//!
//! Every target inside the root is a directory resolved inside the root and named to the kernel
//! as `/proc/self/fd/N`, never a host path joined from strings: build steps control the root's
//! symlinks.
#![forbid(unsafe_code)]

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::Path;

use nix::fcntl::OFlag;
use nix::mount::{MntFlags, MsFlags};
use nix::sys::stat::{Mode, SFlag, makedev};

use super::files::{mkdir_in_root, open_dir, open_in_root};
use super::helper::Cleanup;
use super::protocol::{Bind, OrFail, RootSource, SandboxError, SandboxOp, Spec};
use crate::sys::Syscall;

/// The `/proc/self/fd` path that names `fd` to the kernel.
fn fd_path(fd: &OwnedFd) -> String {
    format!("/proc/self/fd/{}", fd.as_raw_fd())
}

/// Makes every mount private, mounts the root at the spec's mountpoint and opens it.
pub(crate) fn mount_root(sys: &dyn Syscall, spec: &Spec) -> Result<OwnedFd, SandboxError> {
    sys.mount(
        None,
        Path::new("/"),
        None,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None,
    )
    .or_fail(SandboxOp::MakePrivate, "/")?;
    let mp = &spec.mountpoint;
    match &spec.source {
        RootSource::Overlay {
            lowers,
            upper,
            work,
        } => sys
            .mount_overlay(lowers, upper, work, mp)
            .map_err(|e| SandboxError {
                op: SandboxOp::MountOverlay,
                object: mp.display().to_string(),
                errno: e.source.raw_os_error(),
                detail: format!("{e} ({} layers)", lowers.len() + 1),
            })?,
        RootSource::Dir => sys
            .mount(Some(mp), mp, None, MsFlags::MS_BIND | MsFlags::MS_REC, None)
            .or_fail(SandboxOp::BindRoot, mp.display().to_string())?,
    }
    open_dir(mp).or_fail(SandboxOp::Open, mp.display().to_string())
}

/// Mounts onto a directory inside the root (`target`, relative to it), made if missing.
fn mount_on(
    sys: &dyn Syscall,
    root: &OwnedFd,
    target: &str,
    source: Option<&Path>,
    fstype: Option<&str>,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<(), SandboxError> {
    let shown = format!("/{}", target.trim_start_matches('/'));
    let dir = mkdir_in_root(root, target, 0o755).or_fail(SandboxOp::CreateMountPoint, &shown)?;
    sys.mount(source, Path::new(&fd_path(&dir)), fstype, flags, data)
        .or_fail(
            SandboxOp::Mount {
                fstype: fstype.unwrap_or("bind").to_owned(),
            },
            shown,
        )
}

/// The device nodes of `/dev`: (name, major, minor).
const NODES: &[(&str, u64, u64)] = &[
    ("null", 1, 3),
    ("zero", 1, 5),
    ("full", 1, 7),
    ("random", 1, 8),
    ("urandom", 1, 9),
    ("tty", 5, 0),
];

/// The symlinks of `/dev`: (name, target).
const LINKS: &[(&str, &str)] = &[
    ("ptmx", "pts/ptmx"),
    ("fd", "/proc/self/fd"),
    ("stdin", "/proc/self/fd/0"),
    ("stdout", "/proc/self/fd/1"),
    ("stderr", "/proc/self/fd/2"),
];

/// Mounts what a command expects inside the root: `/proc`, read-only `/sys`, a tmpfs `/tmp`, a
/// tmpfs `/dev` with the usual nodes, links, `devpts` and `/dev/shm`; then the binds.
pub(crate) fn mount_system(
    sys: &dyn Syscall,
    root: &OwnedFd,
    binds: &[Bind],
) -> Result<(), SandboxError> {
    let nodev = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    let src = |s: &'static str| Some(Path::new(s));
    mount_on(sys, root, "proc", src("proc"), Some("proc"), nodev, None)?;
    mount_on(
        sys,
        root,
        "sys",
        src("sysfs"),
        Some("sysfs"),
        nodev | MsFlags::MS_RDONLY,
        None,
    )?;
    mount_on(
        sys,
        root,
        "tmp",
        src("tmpfs"),
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=1777"),
    )?;
    mount_on(
        sys,
        root,
        "dev",
        src("tmpfs"),
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("mode=0755"),
    )?;
    let dev = open_in_root(root, "dev", OFlag::O_DIRECTORY | OFlag::O_RDONLY)
        .or_fail(SandboxOp::Open, "/dev")?;
    for (name, major, minor) in NODES {
        sys.mknodat(
            dev.as_fd(),
            name,
            SFlag::S_IFCHR,
            Mode::from_bits_truncate(0o666),
            makedev(*major, *minor),
        )
        .or_fail(SandboxOp::CreateNode, format!("/dev/{name}"))?;
    }
    for (name, target) in LINKS {
        sys.symlinkat(target, dev.as_fd(), name)
            .or_fail(SandboxOp::CreateLink, format!("/dev/{name}"))?;
    }
    mount_on(
        sys,
        root,
        "dev/pts",
        src("devpts"),
        Some("devpts"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=0620"),
    )?;
    mount_on(
        sys,
        root,
        "dev/shm",
        src("tmpfs"),
        Some("tmpfs"),
        nodev,
        Some("mode=1777"),
    )?;
    for b in binds {
        let flags = MsFlags::MS_BIND | MsFlags::MS_REC;
        mount_on(sys, root, &b.target, Some(&b.host), None, flags, None)?;
        if b.readonly {
            // A bind mount takes MS_RDONLY only on a remount.
            let dir = open_in_root(root, &b.target, OFlag::O_DIRECTORY | OFlag::O_RDONLY)
                .or_fail(SandboxOp::Open, &b.target)?;
            sys.mount(
                None,
                Path::new(&fd_path(&dir)),
                None,
                flags | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
                None,
            )
            .or_fail(SandboxOp::RemountReadOnly, &b.target)?;
        }
    }
    Ok(())
}

/// The root's resolver configuration.
pub(crate) const RESOLV_CONF: &str = "/etc/resolv.conf";

/// Bind-mounts the host's resolv.conf onto the root's for the step. A root whose resolv.conf is a
/// symlink (e.g. to a resolver stub) is left alone.
pub(crate) fn bind_resolv_conf(
    sys: &dyn Syscall,
    root: &OwnedFd,
) -> Result<Option<Cleanup>, SandboxError> {
    let host = Path::new(RESOLV_CONF);
    if !host.exists() {
        return Ok(None);
    }
    let fail = |e: nix::errno::Errno| {
        SandboxError::io(SandboxOp::ProvideResolvConf, RESOLV_CONF, &e.into())
    };
    let etc = mkdir_in_root(root, "etc", 0o755).map_err(fail)?;
    let created = match nix::sys::stat::fstatat(
        &etc,
        "resolv.conf",
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    ) {
        Ok(st) if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFREG => false,
        Ok(_) => return Ok(None),
        Err(nix::errno::Errno::ENOENT) => {
            nix::fcntl::openat(
                &etc,
                "resolv.conf",
                OFlag::O_CREAT | OFlag::O_WRONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                Mode::from_bits_truncate(0o644),
            )
            .map_err(fail)?;
            true
        }
        Err(e) => return Err(fail(e)),
    };
    let fd = nix::fcntl::openat(
        &etc,
        "resolv.conf",
        OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(fail)?;
    sys.mount(
        Some(host),
        Path::new(&fd_path(&fd)),
        None,
        MsFlags::MS_BIND,
        None,
    )
    .or_fail(
        SandboxOp::Mount {
            fstype: "bind".into(),
        },
        RESOLV_CONF,
    )?;
    Ok(Some(Cleanup {
        unmount: Some(RESOLV_CONF),
        remove: created.then_some(RESOLV_CONF),
    }))
}

/// Makes the root at `mp` the process's root and detaches the host's.
pub(crate) fn pivot(sys: &dyn Syscall, mp: &Path) -> Result<(), SandboxError> {
    sys.chdir(mp)
        .or_fail(SandboxOp::Chdir, mp.display().to_string())?;
    sys.pivot_root(Path::new("."), Path::new("."))
        .or_fail(SandboxOp::PivotRoot, mp.display().to_string())?;
    sys.umount2(Path::new("."), MntFlags::MNT_DETACH)
        .or_fail(SandboxOp::Unmount, "the host's root")?;
    sys.chdir(Path::new("/")).or_fail(SandboxOp::Chdir, "/")?;
    Ok(())
}
