//! The [`Syscall`] trait: every request the runtime makes of the kernel that changes mounts,
//! namespaces, identity, capabilities or seccomp state.
#![forbid(unsafe_code)]

use std::io;
use std::os::fd::BorrowedFd;
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;
use nix::sys::signal::Signal;
use nix::sys::stat::{Mode, SFlag};
use nix::unistd::ForkResult;

use super::seccomp::SockFilter;

/// The filesystem magic of btrfs (`statfs` f_type).
pub const BTRFS_MAGIC: i64 = 0x9123_683e;

/// The kernel, as the sandbox and the backends use it. [`super::LinuxSyscall`] makes the calls;
/// [`super::RecordingSyscall`] records them and changes nothing.
///
/// Paths are passed exactly as the caller built them (for a target inside a root, a
/// `/proc/self/fd/N` path naming a directory resolved inside that root).
pub trait Syscall {
    /// `mount(2)`.
    fn mount(
        &self,
        source: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> io::Result<()>;

    /// `umount2(2)`.
    fn umount2(&self, target: &Path, flags: MntFlags) -> io::Result<()>;

    /// Mounts an overlay of `lowers` (topmost first) with `upper` and `work` at `target`, with the
    /// new mount API (`fsopen`, `fsconfig` with one `lowerdir+` per layer, so the depth is not
    /// limited by the one-page option string, `fsmount`, `move_mount`).
    fn mount_overlay(
        &self,
        lowers: &[PathBuf],
        upper: &Path,
        work: &Path,
        target: &Path,
    ) -> Result<(), OverlayError>;

    /// Mounts a read-only overlay of `lowers` alone (topmost first; at least two), with no upper
    /// directory, at `target`, nosuid and nodev: a view of a layer chain that nothing can change
    /// (the tree digest reads it).
    fn mount_overlay_readonly(&self, lowers: &[PathBuf], target: &Path)
    -> Result<(), OverlayError>;

    /// `pivot_root(2)`.
    fn pivot_root(&self, new_root: &Path, put_old: &Path) -> io::Result<()>;

    /// `chdir(2)`.
    fn chdir(&self, path: &Path) -> io::Result<()>;

    /// Makes a device node `name` in `dir` whose permission bits are exactly `perm` (the umask
    /// does not apply).
    fn mknodat(
        &self,
        dir: BorrowedFd<'_>,
        name: &str,
        kind: SFlag,
        perm: Mode,
        dev: u64,
    ) -> io::Result<()>;

    /// `symlinkat(2)`: makes `name` in `dir` a symlink to `target`.
    fn symlinkat(&self, target: &str, dir: BorrowedFd<'_>, name: &str) -> io::Result<()>;

    /// `unshare(2)`.
    fn unshare(&self, flags: CloneFlags) -> io::Result<()>;

    /// `prctl(PR_SET_PDEATHSIG)`.
    fn set_parent_death_signal(&self, signal: Signal) -> io::Result<()>;

    /// Gives a program about to be executed the signal state programs expect: SIGPIPE back to
    /// its default action (the Rust runtime ignores it, and an ignored disposition survives
    /// execve: `yes | head` would then spin on EPIPE forever) and no signal blocked.
    fn default_signals(&self) -> io::Result<()>;

    /// `sethostname(2)`.
    fn sethostname(&self, name: &str) -> io::Result<()>;

    /// `setgroups(2)`.
    fn setgroups(&self, gids: &[u32]) -> io::Result<()>;

    /// `setgid(2)`.
    fn setgid(&self, gid: u32) -> io::Result<()>;

    /// `setuid(2)`.
    fn setuid(&self, uid: u32) -> io::Result<()>;

    /// `fork(2)`. Fails, without forking, unless the calling process has exactly one thread: the
    /// child of a multi-threaded process could find a lock held forever.
    fn fork(&self) -> io::Result<ForkResult>;

    /// Brings the loopback interface up in the current network namespace.
    fn loopback_up(&self) -> io::Result<()>;

    /// `syncfs(2)` on the filesystem holding `fd`.
    fn syncfs(&self, fd: BorrowedFd<'_>) -> io::Result<()>;

    /// `FITRIM` on the filesystem holding `fd`: tells the device which blocks are free (on a thin
    /// volume, this gives them back to the pool). Returns the bytes trimmed.
    fn fitrim(&self, fd: BorrowedFd<'_>) -> io::Result<u64>;

    /// `statfs(2)` f_type of the filesystem at `path`.
    fn fs_type(&self, path: &Path) -> io::Result<i64>;

    /// Installs a seccomp filter program on the calling thread (inherited by its children and
    /// across exec). Needs CAP_SYS_ADMIN or no_new_privs.
    fn install_seccomp(&self, program: &[SockFilter]) -> io::Result<()>;

    /// `prctl(PR_SET_NO_NEW_PRIVS, 1)`.
    fn set_no_new_privs(&self) -> io::Result<()>;

    /// `capget(2)` of the calling thread.
    fn capabilities(&self) -> io::Result<Caps>;

    /// `capset(2)` of the calling thread.
    fn set_capabilities(&self, caps: Caps) -> io::Result<()>;

    /// `prctl(PR_CAPBSET_DROP, cap)`: removes capability number `cap` from the bounding set.
    fn drop_bounding_capability(&self, cap: u32) -> io::Result<()>;

    /// `prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)`.
    fn clear_ambient_capabilities(&self) -> io::Result<()>;

    /// Marks every descriptor from `from` on close-on-exec (`close_range(2)` with
    /// `CLOSE_RANGE_CLOEXEC`), so that an exec keeps only those below it.
    fn close_fds_on_exec(&self, from: u32) -> io::Result<()>;

    /// `keyctl(KEYCTL_JOIN_SESSION_KEYRING, NULL)`: a new anonymous session keyring for the
    /// calling process.
    fn join_new_session_keyring(&self) -> io::Result<()>;

    /// For the init of a PID namespace (PID 1) only: SIGKILL to every other process of the
    /// namespace, then reaps them all. Refused (EPERM) in any process that is not PID 1, where
    /// `kill(-1)` would reach the whole machine.
    fn end_others(&self) -> io::Result<()>;
}

/// A thread's capability sets, one bit per capability number (`1 << CAP_SYS_ADMIN`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Caps {
    /// The effective set.
    pub effective: u64,
    /// The permitted set.
    pub permitted: u64,
    /// The inheritable set.
    pub inheritable: u64,
}

/// Which part of an overlay mount failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OverlayStage {
    /// Opening the filesystem context (`fsopen`).
    Open,
    /// Adding this lower layer.
    Lower(PathBuf),
    /// Setting this upper directory.
    Upper(PathBuf),
    /// Setting this work directory.
    Work(PathBuf),
    /// Creating the superblock (`FSCONFIG_CMD_CREATE`): the kernel checked the layers.
    Create,
    /// Mounting it (`fsmount`) and attaching it at the target (`move_mount`).
    Attach,
}

/// A failed overlay mount: the stage and the kernel's answer.
#[derive(Debug, thiserror::Error)]
#[error("{}: {source}", describe(stage))]
pub struct OverlayError {
    /// Where it failed.
    pub stage: OverlayStage,
    /// Why.
    #[source]
    pub source: io::Error,
}

fn describe(stage: &OverlayStage) -> String {
    match stage {
        OverlayStage::Open => "open an overlay filesystem context".into(),
        OverlayStage::Lower(p) => format!("add overlay lower layer {}", p.display()),
        OverlayStage::Upper(p) => format!("set overlay upper {}", p.display()),
        OverlayStage::Work(p) => format!("set overlay work dir {}", p.display()),
        OverlayStage::Create => "create the overlay".into(),
        OverlayStage::Attach => "attach the overlay".into(),
    }
}
