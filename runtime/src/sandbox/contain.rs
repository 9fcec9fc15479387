//! Containment of host tools (`envc __envc-contain`): every external program envc runs for a build
//! (mmdebstrap, tar, btrfs, ...) runs as PID 2 of a PID namespace and in a mount namespace of its
//! own, so its mounts are never visible on the host and nothing it started outlives envc.
//!
//! The containing process asks for SIGKILL when envc dies, makes new mount and PID namespaces,
//! makes every mount a slave (it sees the host's mounts, the host never sees its own), and forks
//! the namespace's init. Init asks for SIGKILL when the containing process dies, forks and
//! executes the tool, reaps every process that ends in the namespace and exits with the tool's
//! status (128 + N when signal N ended it). When init exits, the kernel kills everything left in
//! its PID namespace, and the mount namespace goes with its last process: a `kill -9` of envc
//! (its pid alone) takes the containing process, init, the tool and its children with it, and
//! every mount the tool made.
//!
//! The tool keeps only the capabilities host tools need ([`TOOL_CAPABILITIES`]): they are dropped
//! from its bounding set, the ambient and inheritable sets are cleared, and the tool starts with
//! exactly those in its permitted and effective sets. A tool that works on a directory (mmdebstrap
//! on the base being built) can reach it through [`EXPOSED_ROOT`], in a `/tmp` of its own
//! (`--root DIR`): the store is root's alone, and apt's downloads run as the `_apt` user, who
//! could not enter the directory by its path in the store.
//!
//! Standard streams pass through. A failure to set this up is reported on the report channel
//! (`--report-fd N`, as for the sandbox helper), so envc tells it from the tool's own failure.
#![forbid(unsafe_code)]

use std::ffi::OsString;
use std::io::{self, Read};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

use nix::mount::MsFlags;
use nix::sched::CloneFlags;
use nix::sys::signal::Signal;
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid};

use super::protocol::{OrFail, Reporter, SETUP_FAILED, SandboxError, SandboxOp};
use crate::sys::{self, Syscall};

/// The hidden first argument under which envc runs a host tool contained:
/// `envc __envc-contain [--report-fd N] --parent PID [--nosync] [--no-network] [--root DIR] -- PROGRAM ARGS...`.
pub const CONTAIN_ARG: &str = "__envc-contain";

/// The option naming envc's pid: the containing process ends at once if its parent is another
/// (envc died before the parent-death signal was set).
pub const PARENT_OPT: &str = "--parent";

/// The option that runs the tool with sync calls suppressed (the seccomp filter of `sync=seccomp`
/// steps; for base builds).
pub const NOSYNC_OPT: &str = "--nosync";

/// The option that runs the tool in a network namespace of its own, with only a loopback that is
/// down: a locked base build installs from local files and must not reach any network.
pub const NO_NETWORK_OPT: &str = "--no-network";

/// The option naming the directory the tool works on, which it reaches as [`EXPOSED_ROOT`].
pub const ROOT_OPT: &str = "--root";

/// Where a tool run with `--root DIR` reaches DIR: a bind mount in a tmpfs `/tmp` of the tool's
/// own mount namespace, reachable by every user the tool switches to (`_apt`).
pub const EXPOSED_ROOT: &str = "/tmp/envc-root";

/// The option naming a directory of packages the tool reads (a locked base's local repository),
/// which it reaches, read-only, as [`EXPOSED_REPO`].
pub const REPO_OPT: &str = "--repo";

/// Where a tool run with `--repo DIR` reaches DIR (read-only), beside [`EXPOSED_ROOT`].
pub const EXPOSED_REPO: &str = "/tmp/envc-repo";

/// The capabilities a contained tool keeps, by number and name: Docker's default set without
/// NET_RAW, plus SYS_ADMIN. Every contained tool gets the same set; together they need
/// all of it and none of them more:
///
/// - SYS_ADMIN: mmdebstrap (`--mode=root`) mounts `/proc`, `/sys` and the host's device files
///   into the new root; `btrfs subvolume delete`; `dmsetup`'s device-mapper ioctls; tar restoring
///   `trusted.*` and `security.*` extended attributes.
/// - CHOWN, DAC_OVERRIDE, FOWNER, FSETID, SETFCAP: unpacking files with their owners, modes,
///   setuid bits and file capabilities (tar, dpkg; postinst scripts run `setcap`).
/// - SETUID, SETGID: apt's downloads as `_apt`, maintainer scripts that switch users.
/// - SYS_CHROOT: mmdebstrap runs dpkg and the maintainer scripts chrooted into the new root.
/// - MKNOD: a `tar` base may hold device nodes (mmdebstrap's own tarballs do, in `/dev`); they
///   are unpacked as they are and open nothing afterwards: every root a step or `envc run` sees is
///   mounted nodev, and so is a working root on the host.
/// - KILL, SETPCAP, NET_BIND_SERVICE, AUDIT_WRITE: what Docker keeps and package scripts may use.
///
/// Not kept: NET_RAW and NET_ADMIN (tools share the host's network), DAC_READ_SEARCH
/// (`open_by_handle_at`), SYS_MODULE, SYS_RAWIO, SYS_PTRACE, SYS_BOOT, SYS_TIME, SYS_NICE,
/// SYS_RESOURCE, SYS_PACCT, SYS_TTY_CONFIG, IPC_LOCK, IPC_OWNER, LINUX_IMMUTABLE, LEASE,
/// NET_BROADCAST, AUDIT_CONTROL, AUDIT_READ, MAC_ADMIN, MAC_OVERRIDE, SYSLOG, WAKE_ALARM,
/// BLOCK_SUSPEND, PERFMON, BPF, CHECKPOINT_RESTORE and whatever later kernels add.
pub const TOOL_CAPABILITY_NAMES: &[(u32, &str)] = &[
    (0, "CHOWN"),
    (1, "DAC_OVERRIDE"),
    (3, "FOWNER"),
    (4, "FSETID"),
    (5, "KILL"),
    (6, "SETGID"),
    (7, "SETUID"),
    (8, "SETPCAP"),
    (10, "NET_BIND_SERVICE"),
    (18, "SYS_CHROOT"),
    (21, "SYS_ADMIN"),
    (27, "MKNOD"),
    (29, "AUDIT_WRITE"),
    (31, "SETFCAP"),
];

/// [`TOOL_CAPABILITY_NAMES`] as a mask (bit N for capability N), as `/proc/PID/status` shows it.
pub const TOOL_CAPABILITIES: u64 = {
    let mut mask = 0u64;
    let mut i = 0;
    while i < TOOL_CAPABILITY_NAMES.len() {
        mask |= 1 << TOOL_CAPABILITY_NAMES[i].0;
        i += 1;
    }
    mask
};

/// What to run.
#[derive(Debug, PartialEq, Eq)]
struct Request<'a> {
    parent: Option<i32>,
    nosync: bool,
    no_network: bool,
    root: Option<&'a OsString>,
    repo: Option<&'a OsString>,
    program: &'a OsString,
    args: &'a [OsString],
}

fn parse(args: &[OsString]) -> Result<Request<'_>, SandboxError> {
    let bad = |what: &str| SandboxError::new(SandboxOp::ReadSpec, "", what);
    let mut parent = None;
    let mut nosync = false;
    let mut no_network = false;
    let mut root = None;
    let mut repo = None;
    let mut i = 0;
    loop {
        let a = args
            .get(i)
            .ok_or_else(|| bad("missing `--` before the program"))?;
        if a == "--" {
            i += 1;
            break;
        } else if a == NOSYNC_OPT {
            nosync = true;
            i += 1;
        } else if a == NO_NETWORK_OPT {
            no_network = true;
            i += 1;
        } else if a == REPO_OPT {
            let dir = args
                .get(i + 1)
                .filter(|d| Path::new(d).is_absolute())
                .ok_or_else(|| bad("--repo wants an absolute path"))?;
            repo = Some(dir);
            i += 2;
        } else if a == ROOT_OPT {
            let dir = args
                .get(i + 1)
                .filter(|d| Path::new(d).is_absolute())
                .ok_or_else(|| bad("--root wants an absolute path"))?;
            root = Some(dir);
            i += 2;
        } else if a == PARENT_OPT {
            let pid = args
                .get(i + 1)
                .and_then(|p| p.to_str()?.parse::<i32>().ok())
                .filter(|p| *p > 0)
                .ok_or_else(|| bad("--parent wants a pid"))?;
            parent = Some(pid);
            i += 2;
        } else {
            return Err(bad(&format!("unknown option {}", a.to_string_lossy())));
        }
    }
    let program = args.get(i).ok_or_else(|| bad("missing program"))?;
    Ok(Request {
        parent,
        nosync,
        no_network,
        root,
        repo,
        program,
        args: &args[i + 1..],
    })
}

/// Entry point of `envc __envc-contain`: returns the tool's exit status (128 + N if signal N
/// ended it), or [`SETUP_FAILED`] after reporting a failure.
pub fn contain_main(args: &[OsString]) -> i32 {
    let (reporter, args) = Reporter::from_args(args);
    let req = match parse(args) {
        Ok(r) => r,
        Err(e) => return reporter.report(&e),
    };
    match contain(sys::kernel(), &req, &reporter) {
        Ok(code) => code,
        Err(e) => reporter.report(&e),
    }
}

fn contain(sys: &dyn Syscall, req: &Request<'_>, reporter: &Reporter) -> Result<i32, SandboxError> {
    let shown = Path::new(req.program).display().to_string();
    sys.set_parent_death_signal(Signal::SIGKILL).or_fail(
        SandboxOp::ParentDeathSignal,
        format!("the containment of {shown}"),
    )?;
    // envc died before the signal was set: nobody waits for this tool.
    if req
        .parent
        .is_some_and(|p| nix::unistd::getppid() != Pid::from_raw(p))
    {
        return Ok(SETUP_FAILED);
    }
    let mut flags = CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWPID;
    if req.no_network {
        flags |= CloneFlags::CLONE_NEWNET;
    }
    sys.unshare(flags).map_err(|e| {
        let mut e = SandboxError::io(
            SandboxOp::Unshare,
            format!("mount and PID namespaces for {shown}"),
            &e,
        );
        e.detail.push_str(" (envc needs root)");
        e
    })?;
    sys.mount(
        None,
        Path::new("/"),
        None,
        MsFlags::MS_REC | MsFlags::MS_SLAVE,
        None,
    )
    .or_fail(SandboxOp::MakePrivate, "/")?;
    if req.root.is_some() || req.repo.is_some() {
        expose(sys, req.root.map(Path::new), req.repo.map(Path::new))?;
    }
    // Init learns from this pipe whether this process is still there once init's own
    // parent-death signal is set: its write end closes when this process dies.
    let (alive, alive_w) = io::pipe().or_fail(SandboxOp::Fork, format!("the init of {shown}"))?;
    match sys
        .fork()
        .or_fail(SandboxOp::Fork, format!("the init of {shown}"))?
    {
        ForkResult::Child => {
            drop(alive_w);
            let code = match init(sys, req, reporter, alive) {
                Ok(code) => code,
                Err(e) => reporter.report(&e),
            };
            std::process::exit(code);
        }
        ForkResult::Parent { child } => {
            drop(alive);
            let code = wait_for(child, &shown);
            drop(alive_w);
            code
        }
    }
}

/// Mounts a tmpfs of the tool's own on `/tmp` and binds `root` at [`EXPOSED_ROOT`] and `repo`
/// (read-only) at [`EXPOSED_REPO`] in it. Both are opened first and bound by their descriptors: a
/// directory under `/tmp` (a store there) is hidden once the tmpfs is mounted.
fn expose(sys: &dyn Syscall, root: Option<&Path>, repo: Option<&Path>) -> Result<(), SandboxError> {
    let hold = |dir: &Path| {
        nix::fcntl::open(
            dir,
            nix::fcntl::OFlag::O_PATH
                | nix::fcntl::OFlag::O_DIRECTORY
                | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .or_fail(SandboxOp::Open, dir.display().to_string())
    };
    let held: Vec<(std::os::fd::OwnedFd, &Path, &str, bool)> = [
        root.map(|d| (d, EXPOSED_ROOT, false)),
        repo.map(|d| (d, EXPOSED_REPO, true)),
    ]
    .into_iter()
    .flatten()
    .map(|(d, at, ro)| hold(d).map(|fd| (fd, d, at, ro)))
    .collect::<Result<_, _>>()?;
    let tmp = Path::new("/tmp");
    sys.mount(
        Some(Path::new("tmpfs")),
        tmp,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=1777"),
    )
    .or_fail(
        SandboxOp::Mount {
            fstype: "tmpfs".into(),
        },
        "/tmp",
    )?;
    for (fd, dir, at, readonly) in held {
        let source = std::path::PathBuf::from(format!(
            "/proc/self/fd/{}",
            std::os::fd::AsRawFd::as_raw_fd(&fd)
        ));
        let at_path = Path::new(at);
        // In the fresh tmpfs: nothing there to follow.
        std::os::unix::fs::DirBuilderExt::mode(&mut std::fs::DirBuilder::new(), 0o755)
            .create(at_path)
            .or_fail(SandboxOp::CreateMountPoint, at)?;
        let flags = MsFlags::MS_BIND | MsFlags::MS_REC;
        sys.mount(Some(&source), at_path, None, flags, None)
            .or_fail(
                SandboxOp::Mount {
                    fstype: "bind".into(),
                },
                format!("{} at {at}", dir.display()),
            )?;
        if readonly {
            sys.mount(
                None,
                at_path,
                None,
                flags | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
                None,
            )
            .or_fail(SandboxOp::RemountReadOnly, at)?;
        }
    }
    Ok(())
}

/// Lowers a tool's capabilities to [`TOOL_CAPABILITIES`].
fn restrict_capabilities(sys: &dyn Syscall, shown: &str) -> Result<(), SandboxError> {
    super::confine::lower_capabilities(sys, TOOL_CAPABILITIES, shown)
}

/// PID 1 of the tool's namespace.
fn init(
    sys: &dyn Syscall,
    req: &Request<'_>,
    reporter: &Reporter,
    alive: io::PipeReader,
) -> Result<i32, SandboxError> {
    let shown = Path::new(req.program).display().to_string();
    sys.set_parent_death_signal(Signal::SIGKILL)
        .or_fail(SandboxOp::ParentDeathSignal, format!("the init of {shown}"))?;
    if parent_gone(alive) {
        return Ok(SETUP_FAILED);
    }
    match sys.fork().or_fail(SandboxOp::Fork, &shown)? {
        ForkResult::Child => {
            let e = exec(sys, req);
            std::process::exit(reporter.report(&e));
        }
        ForkResult::Parent { child } => reap(child, &shown),
    }
}

/// Whether the write end of `alive` is closed everywhere (the containing process is gone).
fn parent_gone(alive: io::PipeReader) -> bool {
    use nix::fcntl::{FcntlArg, OFlag, fcntl};
    let mut alive = alive;
    if fcntl(&alive, FcntlArg::F_SETFL(OFlag::O_NONBLOCK)).is_err() {
        return false;
    }
    let mut byte = [0u8; 1];
    // Nothing is ever written: EOF means gone, "would block" means alive.
    matches!(alive.read(&mut byte), Ok(0))
}

/// PID 2: the tool itself. Returns only on failure.
fn exec(sys: &dyn Syscall, req: &Request<'_>) -> SandboxError {
    let shown = Path::new(req.program).display().to_string();
    if req.nosync
        && let Err(e) = sys
            .install_seccomp(&sys::seccomp::sync_filter())
            .or_fail(SandboxOp::Seccomp, &shown)
    {
        return e;
    }
    // After the filter: installing one without no_new_privs takes CAP_SYS_ADMIN (kept anyway).
    if let Err(e) = restrict_capabilities(sys, &shown) {
        return e;
    }
    let err = Command::new(req.program).args(req.args).exec();
    SandboxError::io(SandboxOp::Exec, shown, &err)
}

/// Reaps every process that ends in the namespace until `tool` does; returns its status.
fn reap(tool: Pid, shown: &str) -> Result<i32, SandboxError> {
    loop {
        match waitpid(Pid::from_raw(-1), None) {
            Ok(WaitStatus::Exited(pid, code)) if pid == tool => return Ok(code),
            Ok(WaitStatus::Signaled(pid, sig, _)) if pid == tool => return Ok(128 + sig as i32),
            Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e).or_fail(SandboxOp::Wait, shown),
        }
    }
}

fn wait_for(child: Pid, shown: &str) -> Result<i32, SandboxError> {
    loop {
        match waitpid(child, None) {
            Ok(WaitStatus::Exited(_, code)) => return Ok(code),
            Ok(WaitStatus::Signaled(_, sig, _)) => return Ok(128 + sig as i32),
            Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e).or_fail(SandboxOp::Wait, format!("the init of {shown}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    #[test]
    fn arguments_are_options_then_the_program() {
        let a = os(&["--parent", "42", "--nosync", "--", "/bin/tar", "--", "-x"]);
        let r = parse(&a).unwrap();
        assert_eq!(r.parent, Some(42));
        assert!(r.nosync);
        assert_eq!(r.program, "/bin/tar");
        assert_eq!(r.args, &os(&["--", "-x"])[..]);
        let a = os(&["--", "/bin/true"]);
        let r = parse(&a).unwrap();
        assert_eq!((r.parent, r.nosync, r.args.len()), (None, false, 0));
    }

    #[test]
    fn the_directory_a_tool_works_on_is_an_absolute_path() {
        let a = os(&["--root", "/store/staging/x", "--", "/usr/bin/mmdebstrap"]);
        let r = parse(&a).unwrap();
        assert_eq!(
            r.root.map(OsString::as_os_str),
            Some("/store/staging/x".as_ref())
        );
        for bad in [&["--root", "--"][..], &["--root", "rel", "--"][..]] {
            let mut a = os(bad);
            a.extend(os(&["--", "/bin/true"]));
            let e = parse(&a).unwrap_err();
            assert!(e.detail.contains("--root"), "{bad:?}: {e}");
        }
    }

    #[test]
    fn the_tool_keeps_its_capabilities_and_no_other() {
        use crate::sys::{Call, Caps, RecordingSyscall};
        let caps = |names: &[&str]| {
            names.iter().fold(0u64, |m, n| {
                let (c, _) = TOOL_CAPABILITY_NAMES.iter().find(|(_, x)| x == n).unwrap();
                m | 1 << c
            })
        };
        assert_eq!(
            TOOL_CAPABILITIES,
            caps(&[
                "CHOWN",
                "DAC_OVERRIDE",
                "FOWNER",
                "FSETID",
                "KILL",
                "SETGID",
                "SETUID",
                "SETPCAP",
                "NET_BIND_SERVICE",
                "SYS_CHROOT",
                "SYS_ADMIN",
                "MKNOD",
                "AUDIT_WRITE",
                "SETFCAP"
            ])
        );
        // Never kept (the numbers of capability.h).
        for (cap, name) in [
            (2, "DAC_READ_SEARCH"),
            (12, "NET_ADMIN"),
            (13, "NET_RAW"),
            (16, "SYS_MODULE"),
            (17, "SYS_RAWIO"),
            (19, "SYS_PTRACE"),
            (22, "SYS_BOOT"),
            (25, "SYS_TIME"),
            (38, "PERFMON"),
            (39, "BPF"),
        ] {
            assert_eq!(TOOL_CAPABILITIES & 1 << cap, 0, "{name}");
        }
        // Every other capability leaves the bounding set, up to the kernel's last one (EINVAL
        // past it), then the ambient set is cleared and the tool's own sets lowered.
        let fake = RecordingSyscall::failing(
            |c| matches!(c, Call::DropBoundingCapability { cap } if *cap > 40),
            nix::libc::EINVAL,
        );
        restrict_capabilities(&fake, "/usr/bin/mmdebstrap").unwrap();
        let mut want: Vec<Call> = (0..=41)
            .filter(|c| TOOL_CAPABILITIES & 1 << c == 0)
            .map(|cap| Call::DropBoundingCapability { cap })
            .collect();
        want.push(Call::ClearAmbientCapabilities);
        want.push(Call::SetCapabilities {
            caps: Caps {
                effective: TOOL_CAPABILITIES,
                permitted: TOOL_CAPABILITIES,
                inheritable: 0,
            },
        });
        assert_eq!(fake.calls(), want);
        // Any other refusal stops the tool, named.
        let fake = RecordingSyscall::failing(
            |c| matches!(c, Call::DropBoundingCapability { cap: 16 }),
            nix::libc::EPERM,
        );
        let e = restrict_capabilities(&fake, "/usr/bin/tar").unwrap_err();
        assert_eq!(e.op, SandboxOp::DropCapabilities);
        assert!(
            e.to_string().contains("/usr/bin/tar") && e.to_string().contains("capability 16"),
            "{e}"
        );
    }

    #[test]
    fn bad_arguments_are_named() {
        for (args, what) in [
            (&[][..], "missing `--`"),
            (&["--"][..], "missing program"),
            (&["--parent", "x", "--", "/bin/true"][..], "--parent"),
            (&["--parent", "0", "--", "/bin/true"][..], "--parent"),
            (
                &["--bogus", "--", "/bin/true"][..],
                "unknown option --bogus",
            ),
        ] {
            let e = parse(&os(args)).unwrap_err();
            assert_eq!(e.op, SandboxOp::ReadSpec);
            assert!(e.detail.contains(what), "{args:?}: {e}");
        }
    }
}
