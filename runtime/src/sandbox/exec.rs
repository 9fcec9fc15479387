//! Running the step's command inside the pivoted root: the program found on the step's PATH, run
//! as its user in its working directory, with every orphan reaped by init (PID 1) meanwhile.
#![forbid(unsafe_code)]

use std::ffi::CString;
use std::fs;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::fcntl::OFlag;
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{ForkResult, Gid, Uid};

use super::confine;
use super::files::open_in_root;
use super::protocol::{OrFail, Reporter, SandboxError, SandboxOp};
use super::users;
use crate::sys::{self, Syscall};

/// Where the preload shim is placed inside the root: the step's own tmpfs `/tmp`, gone with it.
const SHIM_DIR: &str = "/tmp/.envc-nosync";

/// Installs the sync-suppressing preload library into the step's `/tmp` and adds it to
/// LD_PRELOAD.
pub(crate) fn install_shim(
    root: &OwnedFd,
    mut env: Vec<(String, String)>,
) -> Result<Vec<(String, String)>, SandboxError> {
    let tmp = open_in_root(root, "tmp", OFlag::O_DIRECTORY | OFlag::O_RDONLY)
        .or_fail(SandboxOp::Open, "/tmp")?;
    let host_dir = PathBuf::from(format!("/proc/self/fd/{}/.envc-nosync", tmp.as_raw_fd()));
    envc_shim::install(&host_dir).or_fail(SandboxOp::InstallShim, SHIM_DIR)?;
    let preload = envc_shim::preload(Path::new(SHIM_DIR));
    match env.iter_mut().find(|(k, _)| k == "LD_PRELOAD") {
        Some((_, v)) if !v.is_empty() => *v = format!("{preload}:{v}"),
        Some((_, v)) => *v = preload,
        None => env.push(("LD_PRELOAD".into(), preload)),
    }
    Ok(env)
}

fn c_strings(
    items: impl Iterator<Item = String>,
    what: &str,
) -> Result<Vec<CString>, SandboxError> {
    items
        .map(CString::new)
        .collect::<Result<_, _>>()
        .map_err(|_| SandboxError::new(SandboxOp::Encode, what, "contains a NUL byte"))
}

/// A command to run, as the spec and the root's preparation give it.
#[derive(Clone, Copy)]
pub(crate) struct Invocation<'a> {
    pub argv: &'a [String],
    /// The environment (with the shim's LD_PRELOAD, if any).
    pub env: &'a [(String, String)],
    pub cwd: &'a str,
    /// A user name or number of the root, or root.
    pub user: Option<&'a str>,
    pub sync: envc_plan::SyncMode,
}

/// Runs the command in the current (pivoted) root and waits for it, reaping every other process
/// that ends meanwhile (this process is PID 1). Returns its exit status (128 + N for signal N).
/// A failure before the program starts is reported by its own process through `reporter`.
pub(crate) fn run_command(
    sys: &dyn Syscall,
    reporter: &Reporter,
    cmd: &Invocation<'_>,
) -> Result<i32, SandboxError> {
    let Invocation {
        argv,
        env,
        cwd,
        user,
        sync,
    } = *cmd;
    let user = user.map(users::find_user).transpose()?;
    let mut env: Vec<(String, String)> = env.to_vec();
    if let Some(home) = user.as_ref().and_then(|u| u.home.clone()) {
        env.retain(|(k, _)| k != "HOME");
        env.push(("HOME".into(), home));
    }
    // Create the working directory as root, then hand it to the user if we made it.
    if !Path::new(cwd).is_dir() {
        fs::create_dir_all(cwd).or_fail(SandboxOp::CreateWorkdir, cwd)?;
        if let Some(u) = &user {
            let _ = nix::unistd::chown(cwd, Some(Uid::from_raw(u.uid)), Some(Gid::from_raw(u.gid)));
        }
    }
    let c_argv = c_strings(argv.iter().cloned(), "the command's arguments")?;
    let c_env = c_strings(
        env.iter().map(|(k, v)| format!("{k}={v}")),
        "the command's environment",
    )?;
    let Some(name) = argv.first() else {
        return Err(SandboxError::new(
            SandboxOp::FindProgram,
            "",
            "the command is empty",
        ));
    };
    if name.is_empty() {
        return Err(SandboxError::new(
            SandboxOp::FindProgram,
            "\"\"",
            "the program's name is empty",
        ));
    }
    let program = resolve_program(name, &env)
        .ok_or_else(|| SandboxError::new(SandboxOp::FindProgram, name, "not found in the root"))?;
    let c_program = CString::new(program.as_os_str().as_bytes()).map_err(|_| {
        SandboxError::new(
            SandboxOp::Encode,
            program.display().to_string(),
            "contains a NUL byte",
        )
    })?;
    match sys.fork().or_fail(SandboxOp::Fork, "the command")? {
        ForkResult::Child => {
            let err = (|| -> Result<std::convert::Infallible, SandboxError> {
                if sync == envc_plan::SyncMode::Seccomp {
                    sys.install_seccomp(&sys::seccomp::sync_filter())
                        .or_fail(SandboxOp::Seccomp, "the command")?;
                }
                // After the sync filter: installing one needs the CAP_SYS_ADMIN this drops.
                confine::confine(sys)?;
                if let Some(u) = &user {
                    sys.setgroups(&[u.gid])
                        .or_fail(SandboxOp::SetGroups, u.gid.to_string())?;
                    sys.setgid(u.gid)
                        .or_fail(SandboxOp::SetGid, u.gid.to_string())?;
                    sys.setuid(u.uid)
                        .or_fail(SandboxOp::SetUid, u.uid.to_string())?;
                }
                sys.chdir(Path::new(cwd)).or_fail(SandboxOp::Chdir, cwd)?;
                sys.default_signals()
                    .or_fail(SandboxOp::Exec, "default signal dispositions")?;
                nix::unistd::execve(&c_program, &c_argv, &c_env)
                    .or_fail(SandboxOp::Exec, program.display().to_string())
            })();
            let code = match err {
                Err(e) => reporter.report(&e),
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
                    Err(e) => return Err(e).or_fail(SandboxOp::Wait, "the command"),
                }
            }
        }
    }
}

/// Ends every other process of the sandbox (this process is its init) and reaps them; a failure
/// leaves them to the kernel, which kills them when init exits.
pub(crate) fn end_others(sys: &dyn Syscall) {
    let _ = sys.end_others();
}

/// Finds `name` on the PATH of `env` (the default PATH without one), as `execvp` would.
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
