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
/// `envc __envc-contain [--report-fd N] --parent PID [--nosync] -- PROGRAM ARGS...`.
pub const CONTAIN_ARG: &str = "__envc-contain";

/// The option naming envc's pid: the containing process ends at once if its parent is another
/// (envc died before the parent-death signal was set).
pub const PARENT_OPT: &str = "--parent";

/// The option that runs the tool with sync calls suppressed (the seccomp filter of `sync=seccomp`
/// steps; for base builds).
pub const NOSYNC_OPT: &str = "--nosync";

/// What to run.
#[derive(Debug, PartialEq, Eq)]
struct Request<'a> {
    parent: Option<i32>,
    nosync: bool,
    program: &'a OsString,
    args: &'a [OsString],
}

fn parse(args: &[OsString]) -> Result<Request<'_>, SandboxError> {
    let bad = |what: &str| SandboxError::new(SandboxOp::ReadSpec, "", what);
    let mut parent = None;
    let mut nosync = false;
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
    sys.unshare(CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWPID)
        .map_err(|e| {
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
