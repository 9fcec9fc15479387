//! The helper process (`envc __envc-sandbox`): the order in which a spec becomes namespaces, an
//! init, a root, the action, an exit status.
#![forbid(unsafe_code)]

use std::ffi::OsString;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::Path;

use nix::mount::MntFlags;
use nix::sched::CloneFlags;
use nix::sys::signal::Signal;
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid};

use super::copy;
use super::exec;
use super::files;
use super::mounts;
use super::protocol::{Action, OrFail, Reporter, SandboxError, SandboxOp, Spec};
use super::users;
use crate::sys::{self, Syscall};

/// Entry point of the helper process: `envc __envc-sandbox [--report-fd N] --spec-fd M`. Returns the exit
/// status: the command's, or [`SETUP_FAILED`] after reporting a failure.
pub fn helper_main(args: &[OsString]) -> i32 {
    let (reporter, args) = Reporter::from_args(args);
    let json = match super::protocol::read_spec(args) {
        Ok(json) => json,
        Err(e) => return reporter.report(&e),
    };
    let spec: Spec = match serde_json::from_slice(&json) {
        Ok(spec) => spec,
        Err(e) => {
            return reporter.report(&SandboxError::new(SandboxOp::ReadSpec, "", e.to_string()));
        }
    };
    match helper(sys::kernel(), &spec, &reporter) {
        Ok(code) => code,
        Err(e) => reporter.report(&e),
    }
}

/// The helper: new namespaces, then init (PID 1 in the new PID namespace) does the work.
fn helper(sys: &dyn Syscall, spec: &Spec, reporter: &Reporter) -> Result<i32, SandboxError> {
    sys.set_parent_death_signal(Signal::SIGKILL)
        .or_fail(SandboxOp::ParentDeathSignal, "the sandbox helper")?;
    let mut flags = CloneFlags::CLONE_NEWNS
        | CloneFlags::CLONE_NEWPID
        | CloneFlags::CLONE_NEWUTS
        | CloneFlags::CLONE_NEWIPC;
    let mut which = "mount, PID, UTS, IPC".to_owned();
    if !spec.network {
        flags |= CloneFlags::CLONE_NEWNET;
        which.push_str(", network");
    }
    sys.unshare(flags).map_err(|e| {
        let mut e = SandboxError::io(SandboxOp::Unshare, format!("{which} namespaces"), &e);
        e.detail.push_str(" (envc needs root)");
        e
    })?;
    match sys.fork().or_fail(SandboxOp::Fork, "the sandbox init")? {
        ForkResult::Child => {
            let code = match init(sys, spec, reporter) {
                Ok(code) => code,
                Err(e) => reporter.report(&e),
            };
            std::process::exit(code);
        }
        ForkResult::Parent { child } => wait_for(child),
    }
}

fn wait_for(child: Pid) -> Result<i32, SandboxError> {
    loop {
        match waitpid(child, None) {
            Ok(WaitStatus::Exited(_, code)) => return Ok(code),
            Ok(WaitStatus::Signaled(_, sig, _)) => return Ok(128 + sig as i32),
            Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e).or_fail(SandboxOp::Wait, "the sandbox init"),
        }
    }
}

/// PID 1 of the sandbox: the root, the action, the cleanup.
fn init(sys: &dyn Syscall, spec: &Spec, reporter: &Reporter) -> Result<i32, SandboxError> {
    sys.set_parent_death_signal(Signal::SIGKILL)
        .or_fail(SandboxOp::ParentDeathSignal, "the sandbox init")?;
    match &spec.action {
        Action::Copy {
            source,
            dest,
            mode,
            owner,
            digest,
        } => {
            let root = enter_root(sys, spec)?;
            let owner = match owner {
                Some(o) => Some(users::resolve_owner(&root, o)?),
                None => None,
            };
            copy::copy_into_root(&root, source, dest, *mode, owner, digest)?;
            let _ = sys.syncfs(root.as_fd());
            Ok(0)
        }
        Action::Exec {
            argv,
            cwd,
            user,
            sync,
            ..
        } => {
            let prepared = prepare(sys, spec)?;
            let code = exec::run_command(
                sys,
                reporter,
                &exec::Invocation {
                    argv,
                    env: &prepared.env,
                    cwd,
                    user: user.as_deref(),
                    sync: *sync,
                },
            )?;
            // Whatever the command left running goes first: it must not see (or steer) the
            // cleanup, which undoes mounts and removes files as this process, with every
            // capability.
            exec::end_others(sys);
            for c in prepared.cleanups {
                c.undo(sys);
            }
            Ok(code)
        }
    }
}

/// Mounts the root and brings up loopback in a network namespace of the step's own.
fn enter_root(sys: &dyn Syscall, spec: &Spec) -> Result<OwnedFd, SandboxError> {
    let root = mounts::mount_root(sys, spec)?;
    if !spec.network {
        sys.loopback_up().or_fail(SandboxOp::LoopbackUp, "lo")?;
    }
    Ok(root)
}

/// What an `Exec` action needs after the pivot.
#[derive(Debug)]
pub(crate) struct Prepared {
    /// The command's environment (with the shim's LD_PRELOAD, if any).
    pub env: Vec<(String, String)>,
    /// What to undo after the command.
    pub cleanups: Vec<Cleanup>,
}

/// Everything of an `Exec` action before the command: the root, its mounts, the step's files,
/// the hostname, the pivot. Afterwards the process is inside the root.
pub(crate) fn prepare(sys: &dyn Syscall, spec: &Spec) -> Result<Prepared, SandboxError> {
    let Action::Exec {
        env,
        deny_services,
        sync,
        ..
    } = &spec.action
    else {
        return Err(SandboxError::new(
            SandboxOp::ReadSpec,
            "",
            "not a command to run",
        ));
    };
    let root = enter_root(sys, spec)?;
    mounts::mount_system(sys, &root, &spec.binds, !spec.network)?;
    let mut env = env.clone();
    if *sync == envc_plan::SyncMode::Shim {
        env = exec::install_shim(&root, env)?;
    }
    let mut cleanups = Vec::new();
    if spec.network {
        cleanups.extend(mounts::provide_resolv_conf(sys, &root)?);
    }
    if *deny_services && let Some(sbin) = files::deny_services(&root)? {
        cleanups.push(Cleanup::Remove {
            dir: sbin,
            name: "policy-rc.d",
        });
    }
    files::write_tmp_files(&root, &spec.tmp_files)?;
    let _ = sys.sethostname("envc");
    mounts::pivot(sys, &spec.mountpoint)?;
    Ok(Prepared { env, cleanups })
}

/// Something done to the root for one step only, undone after it (from inside the root, once
/// every other process of the sandbox is gone). Each names its object by a descriptor taken when
/// it was made, never by a path the step could have changed meanwhile.
#[derive(Debug)]
pub(crate) enum Cleanup {
    /// Detach the mount whose root this `O_PATH` descriptor is.
    Unmount(OwnedFd),
    /// Remove the file `name` from the directory `dir`.
    Remove { dir: OwnedFd, name: &'static str },
}

impl Cleanup {
    fn undo(self, sys: &dyn Syscall) {
        match self {
            Cleanup::Unmount(fd) => {
                let at = format!("/proc/self/fd/{}", fd.as_raw_fd());
                let _ = sys.umount2(Path::new(&at), MntFlags::MNT_DETACH);
            }
            Cleanup::Remove { dir, name } => {
                let _ = nix::unistd::unlinkat(&dir, name, nix::unistd::UnlinkatFlags::NoRemoveDir);
            }
        }
    }
}
