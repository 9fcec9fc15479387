//! The contract between envc and its sandbox helper: the spec that goes in, the exit status or
//! typed error that comes back.
//!
//! envc starts the helper as `envc __envc-sandbox --report-fd N --spec-fd M`. Descriptor M is a
//! sealed memory file holding the JSON [`Spec`]. File descriptor N is the
//! write end of a pipe only the helper and its own processes hold: the helper marks it
//! close-on-exec, so the command never inherits it. A setup failure is written there as one
//! JSON [`SandboxError`]; an empty pipe means the exit status is the command's, whatever it is
//! (a command that exits 125 is not mistaken for a setup failure).
#![forbid(unsafe_code)]

use std::ffi::OsString;
use std::fmt;
use std::fs::File;
use std::io::{self, Read, Seek, Write};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use nix::sys::stat::SFlag;
use serde::{Deserialize, Serialize};

use crate::sys;

/// The hidden first argument that makes the `envc` binary act as the sandbox helper.
pub const HELPER_ARG: &str = "__envc-sandbox";

/// The helper's option naming the file descriptor it reports a setup failure on.
pub const REPORT_FD_ARG: &str = "--report-fd";

/// The helper's option naming the file descriptor it reads its spec from: a sealed memory file,
/// so the spec is neither in the helper's (or the sandbox init's) command line nor bounded by
/// the kernel's argument limits.
pub const SPEC_FD_ARG: &str = "--spec-fd";

/// The longest spec the helper reads.
pub const MAX_SPEC_BYTES: u64 = 64 * 1024 * 1024;

/// Exit status of the helper when it fails (the report says why; without a report channel,
/// its stderr does).
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
    /// The target must be reached without a symbolic link: its path was checked by the
    /// compiler (a `cache` step's), and a symlink a step planted in the root must not move the
    /// mount onto something else (its `/tmp`, `/etc`, `/proc`).
    #[serde(default)]
    pub exact: bool,
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
        /// The tree digest the plan has for the source: what is copied must have it.
        digest: envc_plan::Digest,
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

/// Where the sandbox's standard streams go.
pub enum Stdio3 {
    /// The caller's stdin, stdout and stderr (interactive use).
    Inherit,
    /// stdin from /dev/null; stdout and stderr both to this pipe.
    Pipe(std::io::PipeWriter),
}

/// What the sandbox was doing when it failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SandboxOp {
    /// Start the helper process (in envc).
    StartHelper,
    /// Read the helper's report (in envc).
    ReadReport,
    /// Read the spec from the command line (in the helper).
    ReadSpec,
    /// Ask for SIGKILL when the parent dies.
    ParentDeathSignal,
    /// Make the sandbox's namespaces.
    Unshare,
    /// Fork a process.
    Fork,
    /// Wait for a process.
    Wait,
    /// Make every mount private.
    MakePrivate,
    /// Mount the overlay that is the root.
    MountOverlay,
    /// Bind-mount the directory that is the root onto itself.
    BindRoot,
    /// Open a directory or file.
    Open,
    /// Bring up the loopback interface.
    LoopbackUp,
    /// Make the directory a mount goes on.
    CreateMountPoint,
    /// Mount a filesystem (or a bind mount: fstype `bind`).
    Mount {
        /// The filesystem type.
        fstype: String,
    },
    /// Remount a bind mount read-only.
    RemountReadOnly,
    /// Make a device node.
    CreateNode,
    /// Make a symlink.
    CreateLink,
    /// Write a file.
    Write,
    /// Bind the host's resolv.conf into the root.
    ProvideResolvConf,
    /// Install the policy-rc.d that keeps services from starting.
    DenyServices,
    /// Install the sync-suppressing preload library.
    InstallShim,
    /// Change directory.
    Chdir,
    /// Make the root the process's root.
    PivotRoot,
    /// Unmount.
    Unmount,
    /// Copy a host file or tree into the root.
    Copy,
    /// Check that a copied source is the one the spec was compiled from.
    VerifyCopySource,
    /// Look a user up in the root.
    FindUser,
    /// Look a group up in the root.
    FindGroup,
    /// Create the command's working directory.
    CreateWorkdir,
    /// Find the program in the root.
    FindProgram,
    /// Turn an argument into a C string.
    Encode,
    /// Install the sync-suppressing seccomp filter.
    Seccomp,
    /// Set the supplementary groups.
    SetGroups,
    /// Set the group id.
    SetGid,
    /// Set the user id.
    SetUid,
    /// Execute the program.
    Exec,
    /// Install the confinement seccomp filter.
    Confine,
    /// Make the root's device nodes unusable.
    RemountNoDev,
    /// Lower the capability sets.
    DropCapabilities,
    /// Start a session keyring of the command's own.
    SessionKeyring,
    /// Keep inherited descriptors from the command.
    CloseDescriptors,
    /// Hide a path of /proc or /sys.
    Mask,
    /// Open ICMP echo sockets to every group in the step's network namespace.
    PingGroupRange,
}

impl fmt::Display for SandboxOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            SandboxOp::StartHelper => "start the sandbox helper",
            SandboxOp::ReadReport => "read the report of the sandbox helper",
            SandboxOp::ReadSpec => "read the sandbox spec",
            SandboxOp::ParentDeathSignal => "set the parent-death signal of",
            SandboxOp::Unshare => "unshare",
            SandboxOp::Fork => "fork",
            SandboxOp::Wait => "wait for",
            SandboxOp::MakePrivate => "make mounts private under",
            SandboxOp::MountOverlay => "mount the overlay root at",
            SandboxOp::BindRoot => "bind-mount the root",
            SandboxOp::Open => "open",
            SandboxOp::LoopbackUp => "bring up",
            SandboxOp::CreateMountPoint => "create mount point",
            SandboxOp::Mount { fstype } => return write!(f, "mount {fstype} on"),
            SandboxOp::RemountReadOnly => "make read-only",
            SandboxOp::CreateNode => "create device node",
            SandboxOp::CreateLink => "create symlink",
            SandboxOp::Write => "write",
            SandboxOp::ProvideResolvConf => "provide",
            SandboxOp::DenyServices => "install",
            SandboxOp::InstallShim => "install the preload shim in",
            SandboxOp::Chdir => "enter",
            SandboxOp::PivotRoot => "pivot_root into",
            SandboxOp::Unmount => "unmount",
            SandboxOp::Copy => "copy",
            SandboxOp::VerifyCopySource => "verify copy source",
            SandboxOp::FindUser => "find user",
            SandboxOp::FindGroup => "find group",
            SandboxOp::CreateWorkdir => "create working directory",
            SandboxOp::FindProgram => "find program",
            SandboxOp::Encode => "encode",
            SandboxOp::Seccomp => "install the sync-suppressing seccomp filter for",
            SandboxOp::SetGroups => "set groups to",
            SandboxOp::SetGid => "set gid to",
            SandboxOp::SetUid => "set uid to",
            SandboxOp::Exec => "execute",
            SandboxOp::Confine => "install the confinement seccomp filter for",
            SandboxOp::DropCapabilities => "lower the capabilities of",
            SandboxOp::SessionKeyring => "start a session keyring for",
            SandboxOp::CloseDescriptors => "close the inherited descriptors of",
            SandboxOp::Mask => "mask",
            SandboxOp::RemountNoDev => "ignore device nodes in the root at",
            SandboxOp::PingGroupRange => "allow ping sockets in",
        };
        f.write_str(s)
    }
}

/// A sandbox failure: the operation, what it was done to, and why. It crosses from the helper
/// (or from init, or from the command's process before exec) to envc as JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub struct SandboxError {
    /// The operation.
    pub op: SandboxOp,
    /// What it was done to: a path inside the root (`/proc`), a host path, a user or a process.
    pub object: String,
    /// The kernel's errno, when it said no.
    pub errno: Option<i32>,
    /// Why, in words.
    pub detail: String,
}

impl fmt::Display for SandboxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.object.is_empty() {
            write!(f, "{}: {}", self.op, self.detail)
        } else {
            write!(f, "{} {}: {}", self.op, self.object, self.detail)
        }
    }
}

impl SandboxError {
    /// A failure that is not an errno.
    pub fn new(op: SandboxOp, object: impl Into<String>, detail: impl Into<String>) -> Self {
        SandboxError {
            op,
            object: object.into(),
            errno: None,
            detail: detail.into(),
        }
    }

    /// A failure the kernel (or the standard library) reported.
    pub fn io(op: SandboxOp, object: impl Into<String>, e: &io::Error) -> Self {
        SandboxError {
            op,
            object: object.into(),
            errno: e.raw_os_error(),
            detail: e.to_string(),
        }
    }
}

/// Turns an io or nix error into a [`SandboxError`] naming the operation and object.
pub(crate) trait OrFail<T> {
    fn or_fail(self, op: SandboxOp, object: impl Into<String>) -> Result<T, SandboxError>;
}

impl<T> OrFail<T> for io::Result<T> {
    fn or_fail(self, op: SandboxOp, object: impl Into<String>) -> Result<T, SandboxError> {
        self.map_err(|e| SandboxError::io(op, object, &e))
    }
}

impl<T> OrFail<T> for nix::Result<T> {
    fn or_fail(self, op: SandboxOp, object: impl Into<String>) -> Result<T, SandboxError> {
        self.map_err(|e| SandboxError::io(op, object, &io::Error::from(e)))
    }
}

/// A running sandbox helper.
#[derive(Debug)]
pub struct Running {
    child: Child,
    report: io::PipeReader,
    helper: PathBuf,
}

impl Running {
    /// Waits for the helper. Gives the command's exit status (128 + N if a signal N ended it),
    /// or the sandbox's own failure.
    pub fn wait(mut self) -> Result<i32, SandboxError> {
        let helper = self.helper.display().to_string();
        // EOF comes when the helper and every process of its own are gone (the command does not
        // hold the pipe), so this never waits longer than the wait below.
        let mut report = Vec::new();
        let read = self.report.read_to_end(&mut report);
        let status = self
            .child
            .wait()
            .or_fail(SandboxOp::Wait, "the sandbox helper")?;
        read.or_fail(SandboxOp::ReadReport, &helper)?;
        check_report(&report, &helper)?;
        Ok(status.code().unwrap_or_else(|| {
            128 + std::os::unix::process::ExitStatusExt::signal(&status).unwrap_or(0)
        }))
    }
}

/// The failure a helper reported on its report channel (`report`, all it wrote), if any.
pub(crate) fn check_report(report: &[u8], helper: &str) -> Result<(), SandboxError> {
    if report.is_empty() {
        return Ok(());
    }
    Err(serde_json::from_slice(report).unwrap_or_else(|e| {
        SandboxError::new(
            SandboxOp::ReadReport,
            helper,
            format!(
                "unreadable report ({e}): {}",
                String::from_utf8_lossy(report)
            ),
        )
    }))
}

/// Starts the sandbox helper (`helper`, the envc binary) for `spec`.
pub fn spawn(helper: &Path, spec: &Spec, stdio: Stdio3) -> Result<Running, SandboxError> {
    let object = helper.display().to_string();
    let json = serde_json::to_string(spec)
        .map_err(|e| SandboxError::new(SandboxOp::StartHelper, &object, e.to_string()))?;
    let (report, writer) = io::pipe().or_fail(SandboxOp::StartHelper, &object)?;
    let spec_file = spec_file(&json).or_fail(SandboxOp::StartHelper, "the sandbox spec")?;
    let mut cmd = Command::new(helper);
    let fd = sys::pass_fd(&mut cmd, writer.into()).or_fail(SandboxOp::StartHelper, &object)?;
    let spec_fd = sys::pass_fd(&mut cmd, spec_file).or_fail(SandboxOp::StartHelper, &object)?;
    cmd.arg(HELPER_ARG)
        .arg(REPORT_FD_ARG)
        .arg(fd.to_string())
        .arg(SPEC_FD_ARG)
        .arg(spec_fd.to_string())
        .env_clear();
    match stdio {
        Stdio3::Inherit => {}
        Stdio3::Pipe(out) => {
            let err = out.try_clone().or_fail(SandboxOp::StartHelper, &object)?;
            cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        }
    }
    let child = cmd.spawn();
    // The pipes' write ends belong to the helper now; envc's copies close here.
    drop(cmd);
    Ok(Running {
        child: child.or_fail(SandboxOp::StartHelper, &object)?,
        report,
        helper: helper.to_owned(),
    })
}

/// A memory file holding `json`, sealed against change, read from its start.
fn spec_file(json: &str) -> io::Result<OwnedFd> {
    use rustix::fs::{MemfdFlags, SealFlags};
    let fd = rustix::fs::memfd_create(
        "envc-sandbox-spec",
        MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
    )?;
    let mut file = File::from(fd);
    file.write_all(json.as_bytes())?;
    file.seek(io::SeekFrom::Start(0))?;
    rustix::fs::fcntl_add_seals(
        &file,
        SealFlags::SEAL | SealFlags::SHRINK | SealFlags::GROW | SealFlags::WRITE,
    )?;
    Ok(file.into())
}

/// Reads the spec from the descriptor named by `--spec-fd N` at the start of `args`.
pub(crate) fn read_spec(args: &[OsString]) -> Result<Vec<u8>, SandboxError> {
    let fail = |why: &str| SandboxError::new(SandboxOp::ReadSpec, SPEC_FD_ARG, why);
    if args.first().is_none_or(|a| a != SPEC_FD_ARG) {
        return Err(fail("missing"));
    }
    let fd = args
        .get(1)
        .and_then(|n| std::str::from_utf8(n.as_bytes()).ok()?.parse().ok())
        .and_then(|fd| sys::take_fd(fd, SFlag::S_IFREG))
        .ok_or_else(|| fail("not a file descriptor of a spec file"))?;
    let mut json = Vec::new();
    File::from(fd)
        .take(MAX_SPEC_BYTES + 1)
        .read_to_end(&mut json)
        .or_fail(SandboxOp::ReadSpec, SPEC_FD_ARG)?;
    if json.len() as u64 > MAX_SPEC_BYTES {
        return Err(fail("longer than 64 MiB"));
    }
    Ok(json)
}

/// Runs `spec` with the caller's stdin, stdout and stderr and waits for it.
pub fn run_interactive(helper: &Path, spec: &Spec) -> Result<i32, SandboxError> {
    spawn(helper, spec, Stdio3::Inherit)?.wait()
}

/// The helper's side of the report channel.
#[derive(Debug)]
pub(crate) struct Reporter {
    channel: Option<File>,
}

impl Reporter {
    /// Takes the report channel named by `--report-fd N` at the start of the helper's
    /// arguments; returns the arguments after it.
    pub(crate) fn from_args(args: &[OsString]) -> (Reporter, &[OsString]) {
        if args.first().is_some_and(|a| a == REPORT_FD_ARG) {
            let channel = args
                .get(1)
                .and_then(|n| std::str::from_utf8(n.as_bytes()).ok()?.parse().ok())
                .and_then(|fd| sys::take_fd(fd, SFlag::S_IFIFO))
                .map(File::from);
            return (Reporter { channel }, args.get(2..).unwrap_or_default());
        }
        (Reporter { channel: None }, args)
    }

    /// A reporter that writes to `channel`.
    #[cfg(test)]
    pub(crate) fn to(channel: File) -> Reporter {
        Reporter {
            channel: Some(channel),
        }
    }

    /// Reports `e` to envc (on stderr when there is no channel); returns the exit status to end
    /// with.
    pub(crate) fn report(&self, e: &SandboxError) -> i32 {
        if let Some(mut channel) = self.channel.as_ref()
            && let Ok(json) = serde_json::to_vec(e)
            && channel.write_all(&json).is_ok()
        {
            return SETUP_FAILED;
        }
        let _ = writeln!(io::stderr(), "envc sandbox: {e}");
        SETUP_FAILED
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `script` (`$0` is the report fd) as if it were the helper. Scripts write to it as
    /// `/dev/fd/$0`: dash's `>&N` takes one digit only, and tests running in parallel hold fds.
    fn running(script: &str) -> Running {
        let (report, writer) = io::pipe().unwrap();
        let mut cmd = Command::new("/bin/sh");
        let fd = sys::pass_fd(&mut cmd, writer.into()).unwrap();
        cmd.args(["-c", script, &fd.to_string()]);
        let child = cmd.spawn().unwrap();
        drop(cmd);
        Running {
            child,
            report,
            helper: PathBuf::from("/bin/sh"),
        }
    }

    #[test]
    fn a_command_that_exits_125_is_not_a_setup_failure() {
        assert_eq!(running("exit 125").wait(), Ok(125));
        assert_eq!(running("kill -9 $$").wait(), Ok(137));
    }

    #[test]
    fn a_report_on_the_channel_is_the_error() {
        let e = SandboxError {
            op: SandboxOp::Mount {
                fstype: "proc".into(),
            },
            object: "/proc".into(),
            errno: Some(1),
            detail: "Operation not permitted (os error 1)".into(),
        };
        let json = serde_json::to_string(&e).unwrap();
        let got = running(&format!("printf '%s' '{json}' >/dev/fd/$0; exit 125")).wait();
        assert_eq!(got, Err(e.clone()));
        assert_eq!(
            got.unwrap_err().to_string(),
            "mount proc on /proc: Operation not permitted (os error 1)"
        );
    }

    #[test]
    fn the_spec_file_holds_the_spec_and_cannot_change() {
        let json = format!("\"{}\"", "é".repeat(100_000));
        let mut file = File::from(spec_file(&json).unwrap());
        let mut back = String::new();
        file.read_to_string(&mut back).unwrap();
        assert_eq!(back, json);
        assert!(file.write_all(b"x").is_err(), "the spec file is sealed");
        assert!(file.set_len(0).is_err(), "the spec file is sealed");
    }

    #[test]
    fn a_garbled_report_is_an_error_too() {
        let e = running("echo nonsense >/dev/fd/$0; exit 0")
            .wait()
            .unwrap_err();
        assert_eq!(e.op, SandboxOp::ReadReport);
        assert!(e.detail.contains("nonsense"), "{e}");
    }

    #[test]
    fn the_reporter_writes_one_json_error() {
        let (mut r, w) = io::pipe().unwrap();
        let reporter = Reporter::to(File::from(std::os::fd::OwnedFd::from(w)));
        let e = SandboxError::new(SandboxOp::FindUser, "bob", "not in /etc/passwd");
        assert_eq!(reporter.report(&e), SETUP_FAILED);
        drop(reporter);
        let mut buf = Vec::new();
        r.read_to_end(&mut buf).unwrap();
        assert_eq!(serde_json::from_slice::<SandboxError>(&buf).unwrap(), e);
    }

    #[test]
    fn without_report_fd_the_arguments_are_left_alone() {
        let args = vec![OsString::from("{}")];
        let (reporter, rest) = Reporter::from_args(&args);
        assert!(reporter.channel.is_none());
        assert_eq!(rest, &args[..]);
    }
}
