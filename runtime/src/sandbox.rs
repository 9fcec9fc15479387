//! Running a step inside a root: a fresh single-threaded helper process (`envc __sandbox`) makes
//! new mount, PID, UTS and IPC namespaces (and a network namespace with only loopback unless the
//! step allows network), mounts the root, and forks an init (PID 1) that sets up `/proc`, a minimal
//! `/dev`, read-only `/sys` and a tmpfs `/tmp`, pivots into the root and runs the command as PID 2.
//!
//! Every mount lives in the helper's mount namespace and disappears with it, so a killed build
//! leaves no mount behind on the host. Every path inside the root is resolved inside the root
//! (`openat2` with `RESOLVE_IN_ROOT`): build steps control the root's symlinks, and a symlink must
//! never redirect a mount or a write to the host.

use std::ffi::{CString, OsString};
use std::fs;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};

use nix::fcntl::{OFlag, OpenHow, ResolveFlag, openat2};
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, unshare};
use nix::sys::signal::Signal;
use nix::sys::stat::{Mode, SFlag, fchmod, makedev, mkdirat, mknodat};
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{ForkResult, Gid, Pid, Uid, UnlinkatFlags, fchownat, symlinkat, unlinkat};
use serde::{Deserialize, Serialize};

use crate::sys;

/// The hidden first argument that makes the `envc` binary act as the sandbox helper.
pub const HELPER_ARG: &str = "__envc-sandbox";

/// Exit status the helper uses for its own failures (setting up the sandbox), distinct from any
/// status of the command.
pub const SETUP_FAILED: i32 = 125;

/// How the helper gets the root it works in.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum RootSource {
    /// An overlay of read-only lower layers (topmost first) and a writable upper directory.
    Overlay {
        /// Lower directories, topmost first.
        lowers: Vec<PathBuf>,
        /// The writable upper directory.
        upper: PathBuf,
        /// Overlay's work directory (same filesystem as `upper`).
        work: PathBuf,
    },
    /// A directory that is the root (a btrfs subvolume, a mounted LV, a base being built).
    Dir,
}

/// A host directory or file bind-mounted into the root for the step's duration.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Bind {
    /// The host path.
    pub host: PathBuf,
    /// The absolute path inside the root (created as a directory if missing).
    pub target: String,
    /// Mount read-only.
    pub readonly: bool,
}

/// What to do inside the root.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Action {
    /// Run a program.
    Exec {
        /// argv; `argv[0]` is resolved with the step's PATH inside the root.
        argv: Vec<String>,
        /// The complete environment.
        env: Vec<(String, String)>,
        /// Working directory inside the root (created if missing).
        cwd: String,
        /// `NAME` or `UID` from the root's /etc/passwd; `None` is root.
        user: Option<String>,
        /// Keep services from starting (a `policy-rc.d` that says no) while the step runs.
        deny_services: bool,
        /// How sync calls are handled.
        #[serde(default)]
        sync: envc_plan::SyncMode,
    },
    /// Copy a host file or directory into the root.
    Copy {
        /// The host path.
        source: PathBuf,
        /// Absolute destination inside the root.
        dest: String,
        /// Permission bits for copied files; `None` keeps the source's.
        mode: Option<u32>,
        /// `USER[:GROUP]` resolved in the root; `None` is root.
        owner: Option<String>,
    },
}

/// Everything the helper needs, passed as JSON on its command line.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Spec {
    /// How to make the root.
    pub source: RootSource,
    /// Where the root is (for `Dir`) or gets mounted (for `Overlay`); an existing directory.
    pub mountpoint: PathBuf,
    /// Give the step the host's network (and its resolv.conf for the step's duration).
    pub network: bool,
    /// Extra bind mounts.
    pub binds: Vec<Bind>,
    /// Files written into the root's (fresh, tmpfs) `/tmp` before the action: (name, content).
    pub tmp_files: Vec<(String, String)>,
    /// What to do.
    pub action: Action,
}

/// Starts the sandbox helper (`helper`, the envc binary) for `spec`.
pub fn spawn(helper: &Path, spec: &Spec, stdio: Stdio3) -> io::Result<std::process::Child> {
    let json = serde_json::to_string(spec).map_err(io::Error::other)?;
    let mut cmd = Command::new(helper);
    cmd.arg(HELPER_ARG).arg(json).env_clear();
    match stdio {
        Stdio3::Inherit => {}
        Stdio3::Pipe(out) => {
            let err = out.try_clone()?;
            cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        }
    }
    let child = cmd.spawn();
    drop(cmd);
    child
}

/// Runs `spec` with the caller's stdin, stdout and stderr and waits for it.
pub fn run_interactive(helper: &Path, spec: &Spec) -> io::Result<ExitStatus> {
    spawn(helper, spec, Stdio3::Inherit)?.wait()
}

/// Where the sandbox's standard streams go.
pub enum Stdio3 {
    /// The caller's stdin, stdout and stderr (interactive use).
    Inherit,
    /// stdin from /dev/null; stdout and stderr both to this pipe.
    Pipe(std::io::PipeWriter),
}

/// The hidden first argument that makes the `envc` binary run a host program with sync calls
/// suppressed by seccomp (for base builds): `envc __envc-nosync PROGRAM ARGS...`.
pub const NOSYNC_ARG: &str = "__envc-nosync";

/// Entry point of `envc __envc-nosync PROGRAM ARGS...`: installs the seccomp filter and executes
/// the program (an absolute path). Returns only on failure.
pub fn nosync_main(args: &[OsString]) -> i32 {
    let Some(program) = args.first() else {
        return fail("missing program");
    };
    if let Err(e) = sys::suppress_sync_with_seccomp() {
        return fail(&format!("install the sync-suppressing seccomp filter: {e}"));
    }
    let err = std::os::unix::process::CommandExt::exec(Command::new(program).args(&args[1..]));
    fail(&format!("execute {}: {err}", Path::new(program).display()))
}

/// Entry point of the helper process: `envc __envc-sandbox JSON`. Returns the exit status.
pub fn helper_main(args: &[OsString]) -> i32 {
    let spec: Spec = match args.first().map(|a| serde_json::from_slice(a.as_bytes())) {
        Some(Ok(spec)) => spec,
        Some(Err(e)) => return fail(&format!("bad sandbox spec: {e}")),
        None => return fail("missing sandbox spec"),
    };
    match helper(&spec) {
        Ok(code) => code,
        Err(e) => fail(&e),
    }
}

fn fail(msg: &str) -> i32 {
    let _ = writeln!(io::stderr(), "envc sandbox: {msg}");
    SETUP_FAILED
}

fn ctx<T, E: std::fmt::Display>(
    r: Result<T, E>,
    what: impl FnOnce() -> String,
) -> Result<T, String> {
    r.map_err(|e| format!("{}: {e}", what()))
}

fn helper(spec: &Spec) -> Result<i32, String> {
    ctx(nix::sys::prctl::set_pdeathsig(Signal::SIGKILL), || {
        "set parent-death signal".into()
    })?;
    let mut flags = CloneFlags::CLONE_NEWNS
        | CloneFlags::CLONE_NEWPID
        | CloneFlags::CLONE_NEWUTS
        | CloneFlags::CLONE_NEWIPC;
    if !spec.network {
        flags |= CloneFlags::CLONE_NEWNET;
    }
    ctx(unshare(flags), || {
        "unshare namespaces (envc needs root)".into()
    })?;
    match ctx(sys::fork_single_threaded(), || {
        "fork the sandbox init".into()
    })? {
        ForkResult::Child => {
            let code = match init(spec) {
                Ok(code) => code,
                Err(e) => fail(&e),
            };
            std::process::exit(code);
        }
        ForkResult::Parent { child } => Ok(wait_for(child)),
    }
}

fn wait_for(child: Pid) -> i32 {
    loop {
        match waitpid(child, None) {
            Ok(WaitStatus::Exited(_, code)) => return code,
            Ok(WaitStatus::Signaled(_, sig, _)) => return 128 + sig as i32,
            Ok(_) => continue,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return SETUP_FAILED,
        }
    }
}

/// PID 1 of the sandbox: mounts, runs the action, cleans up.
fn init(spec: &Spec) -> Result<i32, String> {
    ctx(nix::sys::prctl::set_pdeathsig(Signal::SIGKILL), || {
        "set parent-death signal".into()
    })?;
    ctx(
        mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_REC | MsFlags::MS_PRIVATE,
            None::<&str>,
        ),
        || "make mounts private".into(),
    )?;
    let mp = &spec.mountpoint;
    match &spec.source {
        RootSource::Overlay {
            lowers,
            upper,
            work,
        } => {
            let fs = ctx(sys::FsContext::open("overlay"), || {
                "open an overlay filesystem context".into()
            })?;
            for l in lowers {
                ctx(fs.set_string("lowerdir+", l.as_os_str()), || {
                    format!("add overlay lower layer {}", l.display())
                })?;
            }
            ctx(fs.set_string("upperdir", upper.as_os_str()), || {
                format!("set overlay upper {}", upper.display())
            })?;
            ctx(fs.set_string("workdir", work.as_os_str()), || {
                format!("set overlay work dir {}", work.display())
            })?;
            ctx(fs.mount_at(mp), || {
                format!(
                    "mount overlay of {} layers at {}",
                    lowers.len() + 1,
                    mp.display()
                )
            })?;
        }
        RootSource::Dir => {
            ctx(
                mount(
                    Some(mp),
                    mp,
                    None::<&str>,
                    MsFlags::MS_BIND | MsFlags::MS_REC,
                    None::<&str>,
                ),
                || format!("bind-mount root {}", mp.display()),
            )?;
        }
    }
    if !spec.network {
        ctx(sys::loopback_up(), || "bring up loopback".into())?;
    }
    let root = ctx(open_dir(mp), || format!("open root {}", mp.display()))?;
    match &spec.action {
        Action::Copy {
            source,
            dest,
            mode,
            owner,
        } => {
            let owner = match owner {
                Some(o) => Some(ctx(resolve_owner(&root, o), || {
                    format!("resolve owner `{o}` in the root")
                })?),
                None => None,
            };
            ctx(copy_into_root(&root, source, dest, *mode, owner), || {
                format!("copy {} to {dest}", source.display())
            })?;
            ctx(sys::syncfs(root.as_fd()), || "sync".into()).ok();
            Ok(0)
        }
        Action::Exec {
            argv,
            env,
            cwd,
            user,
            deny_services,
            sync,
        } => {
            setup_mounts(&root, spec)?;
            let mut env = env.clone();
            if *sync == envc_plan::SyncMode::Shim {
                env = install_shim(&root, env)?;
            }
            let mut cleanups = Vec::new();
            if spec.network {
                if let Some(c) = ctx(bind_resolv_conf(&root), || {
                    "provide /etc/resolv.conf".into()
                })? {
                    cleanups.push(c);
                }
            }
            if *deny_services {
                if let Some(c) = ctx(deny_services_file(&root), || "install policy-rc.d".into())? {
                    cleanups.push(c);
                }
            }
            for (name, content) in &spec.tmp_files {
                let tmp = ctx(
                    open_in_root(&root, "tmp", OFlag::O_DIRECTORY | OFlag::O_RDONLY),
                    || "open /tmp".into(),
                )?;
                if let Some(dir) = name.strip_suffix('/') {
                    ctx(mkdirat(&tmp, dir, Mode::from_bits_truncate(0o755)), || {
                        format!("create /tmp/{dir}")
                    })?;
                    continue;
                }
                let fd = ctx(
                    nix::fcntl::openat(
                        &tmp,
                        name.as_str(),
                        OFlag::O_CREAT
                            | OFlag::O_WRONLY
                            | OFlag::O_TRUNC
                            | OFlag::O_NOFOLLOW
                            | OFlag::O_CLOEXEC,
                        Mode::from_bits_truncate(0o644),
                    ),
                    || format!("create /tmp/{name}"),
                )?;
                ctx(fs::File::from(fd).write_all(content.as_bytes()), || {
                    format!("write /tmp/{name}")
                })?;
            }
            let _ = nix::unistd::sethostname("envc");
            pivot(mp)?;
            let code = run_command(argv, &env, cwd, user.as_deref(), *sync)?;
            for c in cleanups {
                c.undo();
            }
            Ok(code)
        }
    }
}

fn open_dir(path: &Path) -> nix::Result<OwnedFd> {
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

/// Mounts onto a directory inside the root, named through `/proc/self/fd` so that the target is
/// exactly the directory resolved inside the root.
fn mount_on(
    root: &OwnedFd,
    target: &str,
    source: Option<&Path>,
    fstype: Option<&str>,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<(), String> {
    let dir = ctx(mkdir_in_root(root, target, 0o755), || {
        format!("create mount point /{target}")
    })?;
    let path = format!("/proc/self/fd/{}", dir.as_raw_fd());
    ctx(mount(source, path.as_str(), fstype, flags, data), || {
        format!("mount {} on /{target}", fstype.unwrap_or("bind"))
    })
}

fn setup_mounts(root: &OwnedFd, spec: &Spec) -> Result<(), String> {
    let nodev = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mount_on(
        root,
        "proc",
        Some(Path::new("proc")),
        Some("proc"),
        nodev,
        None,
    )?;
    mount_on(
        root,
        "sys",
        Some(Path::new("sysfs")),
        Some("sysfs"),
        nodev | MsFlags::MS_RDONLY,
        None,
    )?;
    mount_on(
        root,
        "tmp",
        Some(Path::new("tmpfs")),
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=1777"),
    )?;
    mount_on(
        root,
        "dev",
        Some(Path::new("tmpfs")),
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("mode=0755"),
    )?;
    let dev = ctx(
        open_in_root(root, "dev", OFlag::O_DIRECTORY | OFlag::O_RDONLY),
        || "open /dev".into(),
    )?;
    for (name, major, minor) in [
        ("null", 1, 3),
        ("zero", 1, 5),
        ("full", 1, 7),
        ("random", 1, 8),
        ("urandom", 1, 9),
        ("tty", 5, 0),
    ] {
        ctx(
            mknodat(
                &dev,
                name,
                SFlag::S_IFCHR,
                Mode::from_bits_truncate(0o666),
                makedev(major, minor),
            ),
            || format!("create /dev/{name}"),
        )?;
        let fd = ctx(
            nix::fcntl::openat(
                &dev,
                name,
                OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                Mode::empty(),
            ),
            || format!("open /dev/{name}"),
        )?;
        let _ = fs::set_permissions(
            format!("/proc/self/fd/{}", fd.as_raw_fd()),
            fs::Permissions::from_mode(0o666),
        );
    }
    for (target, link) in [
        ("ptmx", "pts/ptmx"),
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        ctx(symlinkat(link, &dev, target), || {
            format!("create /dev/{target}")
        })?;
    }
    mount_on(
        root,
        "dev/pts",
        Some(Path::new("devpts")),
        Some("devpts"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=0620"),
    )?;
    mount_on(
        root,
        "dev/shm",
        Some(Path::new("tmpfs")),
        Some("tmpfs"),
        nodev,
        Some("mode=1777"),
    )?;
    for b in &spec.binds {
        let mut flags = MsFlags::MS_BIND | MsFlags::MS_REC;
        mount_on(root, &b.target, Some(&b.host), None, flags, None)?;
        if b.readonly {
            flags |= MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
            let dir = ctx(
                open_in_root(root, &b.target, OFlag::O_DIRECTORY | OFlag::O_RDONLY),
                || format!("open {}", b.target),
            )?;
            let path = format!("/proc/self/fd/{}", dir.as_raw_fd());
            ctx(
                mount(
                    None::<&str>,
                    path.as_str(),
                    None::<&str>,
                    flags,
                    None::<&str>,
                ),
                || format!("make {} read-only", b.target),
            )?;
        }
    }
    Ok(())
}

/// Something done to the root for one step only, undone after it (from inside the root).
struct Cleanup {
    unmount: Option<&'static str>,
    remove: Option<&'static str>,
}

impl Cleanup {
    fn undo(self) {
        if let Some(target) = self.unmount {
            let _ = umount2(target, MntFlags::MNT_DETACH);
        }
        if let Some(path) = self.remove {
            let _ = fs::remove_file(path);
        }
    }
}

/// Bind-mounts the host's resolv.conf onto the root's for the step. A root whose resolv.conf is a
/// symlink (e.g. to a resolver stub) is left alone.
fn bind_resolv_conf(root: &OwnedFd) -> nix::Result<Option<Cleanup>> {
    let host = Path::new("/etc/resolv.conf");
    if !host.exists() {
        return Ok(None);
    }
    let etc = mkdir_in_root(root, "etc", 0o755)?;
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
            )?;
            true
        }
        Err(e) => return Err(e),
    };
    let fd = nix::fcntl::openat(
        &etc,
        "resolv.conf",
        OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    let path = format!("/proc/self/fd/{}", fd.as_raw_fd());
    mount(
        Some(host),
        path.as_str(),
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )?;
    Ok(Some(Cleanup {
        unmount: Some("/etc/resolv.conf"),
        remove: created.then_some("/etc/resolv.conf"),
    }))
}

/// Installs a `policy-rc.d` that forbids starting services, unless the root already has one.
fn deny_services_file(root: &OwnedFd) -> nix::Result<Option<Cleanup>> {
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
        Err(e) => return Err(e),
    };
    let mut f = fs::File::from(fd);
    let _ =
        f.write_all(b"#!/bin/sh\n# installed by envc for the duration of a build step\nexit 101\n");
    let _ = fchmod(&f, Mode::from_bits_truncate(0o755));
    Ok(Some(Cleanup {
        unmount: None,
        remove: Some("/usr/sbin/policy-rc.d"),
    }))
}

fn pivot(mp: &Path) -> Result<(), String> {
    ctx(nix::unistd::chdir(mp), || format!("enter {}", mp.display()))?;
    ctx(nix::unistd::pivot_root(".", "."), || {
        "pivot_root into the root".into()
    })?;
    ctx(umount2(".", MntFlags::MNT_DETACH), || {
        "detach the host's root".into()
    })?;
    ctx(nix::unistd::chdir("/"), || "enter /".into())?;
    Ok(())
}

/// A user from the root's /etc/passwd (or a bare number).
struct User {
    uid: u32,
    gid: u32,
    home: Option<String>,
}

fn read_db(path: &str) -> Vec<Vec<String>> {
    fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| l.split(':').map(str::to_owned).collect())
        .collect()
}

/// Looks a user up in `passwd` rows.
fn lookup_user(passwd: &[Vec<String>], name: &str) -> Option<User> {
    let row = passwd
        .iter()
        .find(|r| r.len() >= 6 && (r[0] == name || r[2] == name));
    match row {
        Some(r) => Some(User {
            uid: r[2].parse().ok()?,
            gid: r[3].parse().ok()?,
            home: Some(r[5].clone()),
        }),
        None => name.parse().ok().map(|uid| User {
            uid,
            gid: uid,
            home: None,
        }),
    }
}

fn lookup_group(group: &[Vec<String>], name: &str) -> Option<u32> {
    group
        .iter()
        .find(|r| r.len() >= 3 && (r[0] == name || r[2] == name))
        .and_then(|r| r[2].parse().ok())
        .or_else(|| name.parse().ok())
}

/// Where the preload shim is placed inside the root: the step's own tmpfs `/tmp`, gone with it.
const SHIM_DIR: &str = "/tmp/.envc-nosync";

/// Installs the sync-suppressing preload library into the step's `/tmp` and adds it to
/// LD_PRELOAD.
fn install_shim(
    root: &OwnedFd,
    mut env: Vec<(String, String)>,
) -> Result<Vec<(String, String)>, String> {
    let tmp = ctx(
        open_in_root(root, "tmp", OFlag::O_DIRECTORY | OFlag::O_RDONLY),
        || "open /tmp".into(),
    )?;
    let host_dir = PathBuf::from(format!("/proc/self/fd/{}/.envc-nosync", tmp.as_raw_fd()));
    ctx(envc_shim::install(&host_dir), || {
        "install the preload shim".into()
    })?;
    let preload = envc_shim::preload(Path::new(SHIM_DIR));
    match env.iter_mut().find(|(k, _)| k == "LD_PRELOAD") {
        Some((_, v)) if !v.is_empty() => *v = format!("{preload}:{v}"),
        Some((_, v)) => *v = preload,
        None => env.push(("LD_PRELOAD".into(), preload)),
    }
    Ok(env)
}

fn run_command(
    argv: &[String],
    env: &[(String, String)],
    cwd: &str,
    user: Option<&str>,
    sync: envc_plan::SyncMode,
) -> Result<i32, String> {
    let user = match user {
        Some(name) => Some(
            lookup_user(&read_db("/etc/passwd"), name)
                .ok_or_else(|| format!("user `{name}` does not exist in the root's /etc/passwd"))?,
        ),
        None => None,
    };
    let mut env: Vec<(String, String)> = env.to_vec();
    if let Some(home) = user.as_ref().and_then(|u| u.home.clone()) {
        env.retain(|(k, _)| k != "HOME");
        env.push(("HOME".into(), home));
    }
    // Create the working directory as root, then hand it to the user if we made it.
    if !Path::new(cwd).is_dir() {
        ctx(fs::create_dir_all(cwd), || {
            format!("create working directory {cwd}")
        })?;
        if let Some(u) = &user {
            let _ = nix::unistd::chown(cwd, Some(Uid::from_raw(u.uid)), Some(Gid::from_raw(u.gid)));
        }
    }
    let c_argv: Vec<CString> = argv
        .iter()
        .map(|a| CString::new(a.as_bytes()))
        .collect::<Result<_, _>>()
        .map_err(|_| "argument contains a NUL byte".to_owned())?;
    let c_env: Vec<CString> = env
        .iter()
        .map(|(k, v)| CString::new(format!("{k}={v}")))
        .collect::<Result<_, _>>()
        .map_err(|_| "environment contains a NUL byte".to_owned())?;
    let program = resolve_program(&argv[0], &env)
        .ok_or_else(|| format!("`{}` not found in the root", argv[0]))?;
    let c_program = CString::new(program.as_os_str().as_bytes())
        .map_err(|_| "program path contains a NUL byte".to_owned())?;
    match ctx(sys::fork_single_threaded(), || "fork the command".into())? {
        ForkResult::Child => {
            let err = (|| -> Result<std::convert::Infallible, String> {
                if sync == envc_plan::SyncMode::Seccomp {
                    ctx(sys::suppress_sync_with_seccomp(), || {
                        "install the sync-suppressing seccomp filter".into()
                    })?;
                }
                if let Some(u) = &user {
                    ctx(nix::unistd::setgroups(&[Gid::from_raw(u.gid)]), || {
                        "set groups".into()
                    })?;
                    ctx(nix::unistd::setgid(Gid::from_raw(u.gid)), || {
                        "set gid".into()
                    })?;
                    ctx(nix::unistd::setuid(Uid::from_raw(u.uid)), || {
                        "set uid".into()
                    })?;
                }
                ctx(nix::unistd::chdir(cwd), || {
                    format!("enter working directory {cwd}")
                })?;
                ctx(nix::unistd::execve(&c_program, &c_argv, &c_env), || {
                    format!("execute {}", program.display())
                })
            })();
            let code = match err {
                Err(e) => fail(&e),
            };
            std::process::exit(code)
        }
        ForkResult::Parent { child } => {
            // As PID 1, reap every orphan until the command itself ends.
            loop {
                match waitpid(None, None) {
                    Ok(WaitStatus::Exited(pid, code)) if pid == child => return Ok(code),
                    Ok(WaitStatus::Signaled(pid, sig, _)) if pid == child => {
                        return Ok(128 + sig as i32);
                    }
                    Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
                    Err(e) => return Err(format!("wait for the command: {e}")),
                }
            }
        }
    }
}

fn resolve_program(name: &str, env: &[(String, String)]) -> Option<PathBuf> {
    if name.contains('/') {
        return Some(PathBuf::from(name));
    }
    let path = env
        .iter()
        .find(|(k, _)| k == "PATH")
        .map_or(envc_plan::env::DEFAULT_PATH, |(_, v)| v.as_str());
    path.split(':')
        .map(|d| Path::new(d).join(name))
        .find(|p| fs::metadata(p).is_ok_and(|m| m.is_file() && m.mode() & 0o111 != 0))
}

/// Resolves `USER[:GROUP]` against the root's passwd and group files.
fn resolve_owner(root: &OwnedFd, owner: &str) -> Result<(u32, u32), String> {
    let read = |rel: &str| -> Vec<Vec<String>> {
        let mut s = String::new();
        if let Ok(fd) = open_in_root(root, rel, OFlag::O_RDONLY) {
            let _ = fs::File::from(fd).read_to_string(&mut s);
        }
        s.lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| l.split(':').map(str::to_owned).collect())
            .collect()
    };
    let (user, group) = match owner.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (owner, None),
    };
    let u = lookup_user(&read("etc/passwd"), user)
        .ok_or_else(|| format!("user `{user}` does not exist in the root's /etc/passwd"))?;
    let gid = match group {
        Some(g) => lookup_group(&read("etc/group"), g)
            .ok_or_else(|| format!("group `{g}` does not exist in the root's /etc/group"))?,
        None => u.gid,
    };
    Ok((u.uid, gid))
}

/// Copies a host file or tree to `dest` inside the root. Parent directories are created; an
/// existing file or symlink at a destination is replaced, never followed.
pub fn copy_into_root(
    root: &OwnedFd,
    source: &Path,
    dest: &str,
    mode: Option<u32>,
    owner: Option<(u32, u32)>,
) -> Result<(), String> {
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
            return Err("cannot copy a file onto /".into());
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

fn chown_at(dir: &OwnedFd, name: &str, owner: Option<(u32, u32)>) -> Result<(), String> {
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
) -> Result<(), String> {
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
        return Err(format!(
            "{name} is an existing directory in the root; a file cannot replace it"
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
) -> Result<(), String> {
    let mut entries: Vec<_> = ctx(fs::read_dir(source), || {
        format!("list {}", source.display())
    })?
    .filter_map(Result::ok)
    .collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let path = e.path();
        let meta = ctx(fs::symlink_metadata(&path), || {
            format!("stat {}", path.display())
        })?;
        let name = e.file_name();
        let name = name
            .to_str()
            .ok_or_else(|| format!("{} is not UTF-8", path.display()))?;
        copy_entry(dir, name, &path, &meta, mode, owner)?;
    }
    Ok(())
}
