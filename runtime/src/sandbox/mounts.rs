//! The mount sequence that makes a directory the step's root: private propagation, the root
//! itself (an overlay or a bind mount), `/proc`, `/sys`, `/tmp`, a minimal `/dev`, the spec's
//! binds, `/proc`'s and `/sys`'s sensitive paths read-only or masked, a read-only copy of the
//! host's resolv.conf for steps with network, then the pivot into it.
//!
//! Every target inside the root is a directory resolved inside the root and named to the kernel
//! as `/proc/self/fd/N`, never a host path joined from strings: build steps control the root's
//! symlinks.
#![forbid(unsafe_code)]

use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::Path;

use nix::fcntl::OFlag;
use nix::mount::{MntFlags, MsFlags};
use nix::sys::stat::{Mode, SFlag, makedev};

use super::files::{mkdir_in_root, open_dir, open_in_root, open_without_links};
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
    // Device nodes in the root (a tar base may carry any) open nothing: the step's devices are
    // those of its own `/dev`. Setuid programs keep working.
    sys.mount(
        None,
        mp,
        None,
        MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_NODEV,
        None,
    )
    .or_fail(SandboxOp::RemountNoDev, mp.display().to_string())?;
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

/// Paths of `/proc` a step may read but not change (Docker's read-only paths).
const PROC_READ_ONLY: &[&str] = &[
    "proc/sys",
    "proc/sysrq-trigger",
    "proc/irq",
    "proc/bus",
    "proc/fs",
];

/// Paths of `/proc` and `/sys` a step does not see: files read as `/dev/null`, directories as an
/// empty read-only tmpfs (Docker's masked paths).
const MASKED: &[&str] = &[
    "proc/kcore",
    "proc/keys",
    "proc/timer_list",
    "proc/timer_stats",
    "proc/sched_debug",
    "proc/latency_stats",
    "proc/acpi",
    "proc/asound",
    "proc/scsi",
    "sys/firmware",
    "sys/devices/virtual/powercap",
];

/// Who may open ICMP echo ("ping") sockets: every group. Written in the step's own network
/// namespace only, so `ping` works on loopback without CAP_NET_RAW.
const PING_GROUP_RANGE: &str = "proc/sys/net/ipv4/ping_group_range";

/// Mounts what a command expects inside the root: `/proc`, read-only `/sys`, a tmpfs `/tmp`, a
/// tmpfs `/dev` with the usual nodes, links, `devpts` and `/dev/shm`; then the binds; then
/// `/proc`'s and `/sys`'s sensitive paths made read-only or masked. `own_network`: the step runs
/// in a network namespace of its own, whose ping sockets are opened to every group.
pub(crate) fn mount_system(
    sys: &dyn Syscall,
    root: &OwnedFd,
    binds: &[Bind],
    own_network: bool,
) -> Result<(), SandboxError> {
    let nodev = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    let src = |s: &'static str| Some(Path::new(s));
    mount_on(sys, root, "proc", src("proc"), Some("proc"), nodev, None)?;
    if own_network {
        open_ping_sockets(root)?;
    }
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
        if b.exact {
            // Made if missing (following links inside the root, as always), then reached again
            // with no link allowed: a planted `/cache -> /tmp` is an error, not a mount on /tmp.
            let shown = format!("/{}", b.target.trim_start_matches('/'));
            mkdir_in_root(root, &b.target, 0o755).or_fail(SandboxOp::CreateMountPoint, &shown)?;
            open_without_links(root, &b.target).or_fail(
                SandboxOp::CreateMountPoint,
                format!("{shown} (reached without a symbolic link)"),
            )?;
        }
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
    protect_proc_and_sys(sys, root)
}

/// Writes [`PING_GROUP_RANGE`]; a kernel without it is left alone.
fn open_ping_sockets(root: &OwnedFd) -> Result<(), SandboxError> {
    let shown = format!("/{PING_GROUP_RANGE}");
    let file = match open_in_root(root, PING_GROUP_RANGE, OFlag::O_WRONLY | OFlag::O_TRUNC) {
        Ok(f) => f,
        Err(nix::errno::Errno::ENOENT) => return Ok(()),
        Err(e) => return Err(e).or_fail(SandboxOp::PingGroupRange, shown),
    };
    std::fs::File::from(file)
        .write_all(b"0 2147483647\n")
        .or_fail(SandboxOp::PingGroupRange, shown)
}

/// Makes [`PROC_READ_ONLY`] read-only and hides [`MASKED`] (paths the kernel does not have are
/// skipped). Without CAP_SYS_ADMIN and with mount calls refused, the step cannot undo either.
fn protect_proc_and_sys(sys: &dyn Syscall, root: &OwnedFd) -> Result<(), SandboxError> {
    let nodev = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    let open = |path: &str| match open_in_root(root, path, OFlag::O_PATH | OFlag::O_NOFOLLOW) {
        Ok(fd) => Ok(Some(fd)),
        Err(nix::errno::Errno::ENOENT) => Ok(None),
        Err(e) => Err(e).or_fail(SandboxOp::Open, format!("/{path}")),
    };
    for path in PROC_READ_ONLY {
        let Some(fd) = open(path)? else { continue };
        let at = fd_path(&fd);
        sys.mount(
            Some(Path::new(&at)),
            Path::new(&at),
            None,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None,
        )
        .or_fail(SandboxOp::RemountReadOnly, format!("/{path}"))?;
        // The bind is a new mount on the path: reopened, it is what gets remounted.
        let Some(fd) = open(path)? else { continue };
        sys.mount(
            None,
            Path::new(&fd_path(&fd)),
            None,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | nodev,
            None,
        )
        .or_fail(SandboxOp::RemountReadOnly, format!("/{path}"))?;
    }
    let null = open("dev/null")?;
    for path in MASKED {
        let Some(fd) = open(path)? else { continue };
        let is_dir = nix::sys::stat::fstat(&fd)
            .map(|st| SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR)
            .or_fail(SandboxOp::Mask, format!("/{path}"))?;
        let at = fd_path(&fd);
        let done = if is_dir {
            sys.mount(
                Some(Path::new("tmpfs")),
                Path::new(&at),
                Some("tmpfs"),
                nodev | MsFlags::MS_RDONLY,
                Some("mode=0555,size=4k"),
            )
        } else {
            let Some(null) = &null else {
                return Err(SandboxError::new(
                    SandboxOp::Mask,
                    format!("/{path}"),
                    "/dev/null is missing",
                ));
            };
            sys.mount(
                Some(Path::new(&fd_path(null))),
                Path::new(&at),
                None,
                MsFlags::MS_BIND,
                None,
            )
        };
        done.or_fail(SandboxOp::Mask, format!("/{path}"))?;
    }
    Ok(())
}

/// The root's resolver configuration.
pub(crate) const RESOLV_CONF: &str = "/etc/resolv.conf";

/// The longest host resolver configuration copied into a step.
const MAX_RESOLV_CONF: u64 = 64 * 1024;

/// Where the copy is made before it is mounted: the step's own `/dev` tmpfs; the name is removed
/// again once the copy is mounted.
const RESOLV_COPY: &str = ".envc-resolv.conf";

/// Gives a step with network a read-only copy of the host's resolv.conf (never the host's file
/// itself) at the root's `/etc/resolv.conf`, for the step only. A root whose resolv.conf is a
/// symlink (e.g. to a resolver stub) is left alone.
pub(crate) fn provide_resolv_conf(
    sys: &dyn Syscall,
    root: &OwnedFd,
) -> Result<Vec<Cleanup>, SandboxError> {
    let fail = |e: nix::errno::Errno| {
        SandboxError::io(SandboxOp::ProvideResolvConf, RESOLV_CONF, &e.into())
    };
    let content = match std::fs::File::open(RESOLV_CONF) {
        Ok(f) => {
            let mut content = Vec::new();
            std::io::Read::read_to_end(&mut std::io::Read::take(f, MAX_RESOLV_CONF), &mut content)
                .or_fail(SandboxOp::ProvideResolvConf, RESOLV_CONF)?;
            content
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
        Err(e) => return Err(e).or_fail(SandboxOp::ProvideResolvConf, RESOLV_CONF),
    };
    let etc = mkdir_in_root(root, "etc", 0o755).map_err(fail)?;
    let created = match nix::sys::stat::fstatat(
        &etc,
        "resolv.conf",
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    ) {
        Ok(st) if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFREG => false,
        Ok(_) => return Ok(vec![]),
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
    let dev = open_in_root(root, "dev", OFlag::O_DIRECTORY | OFlag::O_RDONLY)
        .or_fail(SandboxOp::Open, "/dev")?;
    let copy = nix::fcntl::openat(
        &dev,
        RESOLV_COPY,
        OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_WRONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(0o644),
    )
    .map_err(fail)?;
    std::fs::File::from(copy)
        .write_all(&content)
        .or_fail(SandboxOp::ProvideResolvConf, RESOLV_CONF)?;
    let copy = nix::fcntl::openat(
        &dev,
        RESOLV_COPY,
        OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(fail)?;
    let target = nix::fcntl::openat(
        &etc,
        "resolv.conf",
        OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(fail)?;
    let bind = MsFlags::MS_BIND;
    sys.mount(
        Some(Path::new(&fd_path(&copy))),
        Path::new(&fd_path(&target)),
        None,
        bind,
        None,
    )
    .or_fail(
        SandboxOp::Mount {
            fstype: "bind".into(),
        },
        RESOLV_CONF,
    )?;
    let mounted = nix::fcntl::openat(
        &etc,
        "resolv.conf",
        OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(fail)?;
    sys.mount(
        None,
        Path::new(&fd_path(&mounted)),
        None,
        bind | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        None,
    )
    .or_fail(SandboxOp::RemountReadOnly, RESOLV_CONF)?;
    nix::unistd::unlinkat(&dev, RESOLV_COPY, nix::unistd::UnlinkatFlags::NoRemoveDir)
        .map_err(fail)?;
    let mut cleanups = vec![Cleanup::Unmount(mounted)];
    if created {
        cleanups.push(Cleanup::Remove {
            dir: etc,
            name: "resolv.conf",
        });
    }
    Ok(cleanups)
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
