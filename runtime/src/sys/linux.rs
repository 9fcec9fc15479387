//! The real [`Syscall`], the one module of the runtime allowed `unsafe` code.
//!
//! nix or rustix wrappers are used wherever they exist; each remaining `unsafe` block has a
//! `// SAFETY:` comment.

use std::fs;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use nix::fcntl::OFlag;
use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;
use nix::sys::signal::Signal;
use nix::sys::stat::{Mode, SFlag};
use nix::unistd::{ForkResult, Gid, Uid};
use rustix::mount::{FsMountFlags, FsOpenFlags, MountAttrFlags, MoveMountFlags};
use rustix::thread::{CapabilitySet, CapabilitySets};

use super::seccomp::SockFilter;
use super::syscall::{Caps, OverlayError, OverlayStage, Syscall};

/// The kernel itself.
#[derive(Debug, Clone, Copy, Default)]
pub struct LinuxSyscall;

/// The kernel, for code that is not handed a [`Syscall`] (the backends, the helper's entry).
pub fn kernel() -> &'static dyn Syscall {
    &LinuxSyscall
}

fn overlay_err(stage: OverlayStage) -> impl FnOnce(rustix::io::Errno) -> OverlayError {
    move |e| OverlayError {
        stage,
        source: e.into(),
    }
}

/// The number of threads of the calling process.
fn thread_count() -> io::Result<usize> {
    Ok(fs::read_dir("/proc/self/task")?.count())
}

impl Syscall for LinuxSyscall {
    fn mount(
        &self,
        source: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> io::Result<()> {
        Ok(nix::mount::mount(source, target, fstype, flags, data)?)
    }

    fn umount2(&self, target: &Path, flags: MntFlags) -> io::Result<()> {
        Ok(nix::mount::umount2(target, flags)?)
    }

    fn mount_overlay(
        &self,
        lowers: &[PathBuf],
        upper: &Path,
        work: &Path,
        target: &Path,
    ) -> Result<(), OverlayError> {
        let fs = rustix::mount::fsopen("overlay", FsOpenFlags::FSOPEN_CLOEXEC)
            .map_err(overlay_err(OverlayStage::Open))?;
        for l in lowers {
            rustix::mount::fsconfig_set_string(&fs, "lowerdir+", l)
                .map_err(overlay_err(OverlayStage::Lower(l.clone())))?;
        }
        rustix::mount::fsconfig_set_string(&fs, "upperdir", upper)
            .map_err(overlay_err(OverlayStage::Upper(upper.to_owned())))?;
        rustix::mount::fsconfig_set_string(&fs, "workdir", work)
            .map_err(overlay_err(OverlayStage::Work(work.to_owned())))?;
        rustix::mount::fsconfig_create(&fs).map_err(overlay_err(OverlayStage::Create))?;
        let mnt =
            rustix::mount::fsmount(&fs, FsMountFlags::FSMOUNT_CLOEXEC, MountAttrFlags::empty())
                .map_err(overlay_err(OverlayStage::Attach))?;
        rustix::mount::move_mount(
            &mnt,
            "",
            rustix::fs::CWD,
            target,
            MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
        )
        .map_err(overlay_err(OverlayStage::Attach))
    }

    fn mount_overlay_readonly(
        &self,
        lowers: &[PathBuf],
        target: &Path,
    ) -> Result<(), OverlayError> {
        let fs = rustix::mount::fsopen("overlay", FsOpenFlags::FSOPEN_CLOEXEC)
            .map_err(overlay_err(OverlayStage::Open))?;
        for l in lowers {
            rustix::mount::fsconfig_set_string(&fs, "lowerdir+", l)
                .map_err(overlay_err(OverlayStage::Lower(l.clone())))?;
        }
        rustix::mount::fsconfig_create(&fs).map_err(overlay_err(OverlayStage::Create))?;
        let mnt = rustix::mount::fsmount(
            &fs,
            FsMountFlags::FSMOUNT_CLOEXEC,
            MountAttrFlags::MOUNT_ATTR_RDONLY
                | MountAttrFlags::MOUNT_ATTR_NOSUID
                | MountAttrFlags::MOUNT_ATTR_NODEV,
        )
        .map_err(overlay_err(OverlayStage::Attach))?;
        rustix::mount::move_mount(
            &mnt,
            "",
            rustix::fs::CWD,
            target,
            MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
        )
        .map_err(overlay_err(OverlayStage::Attach))
    }

    fn pivot_root(&self, new_root: &Path, put_old: &Path) -> io::Result<()> {
        Ok(nix::unistd::pivot_root(new_root, put_old)?)
    }

    fn chdir(&self, path: &Path) -> io::Result<()> {
        Ok(nix::unistd::chdir(path)?)
    }

    fn mknodat(
        &self,
        dir: BorrowedFd<'_>,
        name: &str,
        kind: SFlag,
        perm: Mode,
        dev: u64,
    ) -> io::Result<()> {
        nix::sys::stat::mknodat(dir, name, kind, perm, dev)?;
        // The umask applied to mknod; set the bits through the node's own fd (fchmod does not
        // take an O_PATH fd, chmod through /proc/self/fd does, and never follows a link).
        let fd = nix::fcntl::openat(
            dir,
            name,
            OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?;
        let _ = fs::set_permissions(
            format!("/proc/self/fd/{}", fd.as_raw_fd()),
            fs::Permissions::from_mode(perm.bits()),
        );
        Ok(())
    }

    fn symlinkat(&self, target: &str, dir: BorrowedFd<'_>, name: &str) -> io::Result<()> {
        Ok(nix::unistd::symlinkat(target, dir, name)?)
    }

    fn unshare(&self, flags: CloneFlags) -> io::Result<()> {
        Ok(nix::sched::unshare(flags)?)
    }

    fn set_parent_death_signal(&self, signal: Signal) -> io::Result<()> {
        Ok(nix::sys::prctl::set_pdeathsig(signal)?)
    }

    fn default_signals(&self) -> io::Result<()> {
        use nix::sys::signal::{SigHandler, SigSet, SigmaskHow, signal, sigprocmask};
        // SAFETY: installing the default disposition runs no handler code in this process;
        // it is called between fork and execve of a single-threaded child.
        unsafe { signal(Signal::SIGPIPE, SigHandler::SigDfl) }?;
        sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None)?;
        Ok(())
    }

    fn sethostname(&self, name: &str) -> io::Result<()> {
        Ok(nix::unistd::sethostname(name)?)
    }

    fn setgroups(&self, gids: &[u32]) -> io::Result<()> {
        let gids: Vec<Gid> = gids.iter().copied().map(Gid::from_raw).collect();
        Ok(nix::unistd::setgroups(&gids)?)
    }

    fn setgid(&self, gid: u32) -> io::Result<()> {
        Ok(nix::unistd::setgid(Gid::from_raw(gid))?)
    }

    fn setuid(&self, uid: u32) -> io::Result<()> {
        Ok(nix::unistd::setuid(Uid::from_raw(uid))?)
    }

    fn fork(&self) -> io::Result<ForkResult> {
        let threads = thread_count()?;
        if threads != 1 {
            return Err(io::Error::other(format!(
                "refusing to fork a process with {threads} threads"
            )));
        }
        // SAFETY: the process has exactly one thread, the caller: no other thread can hold a lock
        // (allocator, stdio) at the time of the fork, and none can have started since the count,
        // because only this thread could have started it. The child may therefore do anything
        // the parent could.
        Ok(unsafe { nix::unistd::fork() }?)
    }

    fn loopback_up(&self) -> io::Result<()> {
        // SAFETY: socket(2) with constant arguments; returns a new fd or -1.
        let sock = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if sock < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the fd is fresh and owned here.
        let sock = unsafe { OwnedFd::from_raw_fd(sock) };
        // SAFETY: ifreq is plain old data; zero is a valid bit pattern for it.
        let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
        for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
            *dst = *src as libc::c_char;
        }
        // SAFETY: `req` is a valid ifreq for the lifetime of the call, as SIOCGIFFLAGS expects.
        if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) } < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the kernel filled ifru_flags for SIOCGIFFLAGS; reading and updating the union
        // field it set is sound.
        unsafe {
            req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
        }
        // SAFETY: as above, for SIOCSIFFLAGS.
        if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn syncfs(&self, fd: BorrowedFd<'_>) -> io::Result<()> {
        Ok(nix::unistd::syncfs(fd)?)
    }

    fn fitrim(&self, fd: BorrowedFd<'_>) -> io::Result<u64> {
        #[repr(C)]
        struct Range {
            start: u64,
            len: u64,
            minlen: u64,
        }
        // _IOWR('X', 121, struct fstrim_range)
        const FITRIM: libc::c_ulong = 0xc018_5879;
        let mut range = Range {
            start: 0,
            len: u64::MAX,
            minlen: 0,
        };
        // SAFETY: FITRIM reads and writes one fstrim_range, which `range` is (repr(C), 3 x u64).
        if unsafe { libc::ioctl(fd.as_raw_fd(), FITRIM, &mut range) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(range.len)
    }

    fn fs_type(&self, path: &Path) -> io::Result<i64> {
        Ok(nix::sys::statfs::statfs(path)?.filesystem_type().0 as i64)
    }

    fn install_seccomp(&self, program: &[SockFilter]) -> io::Result<()> {
        let filter: Vec<libc::sock_filter> = program
            .iter()
            .map(|i| libc::sock_filter {
                code: i.code,
                jt: i.jt,
                jf: i.jf,
                k: i.k,
            })
            .collect();
        let len = libc::c_ushort::try_from(filter.len())
            .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        let fprog = libc::sock_fprog {
            len,
            filter: filter.as_ptr().cast_mut(),
        };
        // SAFETY: `fprog` points at `filter`, `len` valid instructions, both alive for the duration
        // of the call; the kernel copies the program and does not write through the pointer.
        let ret = unsafe {
            libc::prctl(
                libc::PR_SET_SECCOMP,
                libc::SECCOMP_MODE_FILTER,
                &fprog as *const libc::sock_fprog,
            )
        };
        if ret < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn set_no_new_privs(&self) -> io::Result<()> {
        Ok(nix::sys::prctl::set_no_new_privs()?)
    }

    fn capabilities(&self) -> io::Result<Caps> {
        let sets = rustix::thread::capabilities(None)?;
        Ok(Caps {
            effective: sets.effective.bits(),
            permitted: sets.permitted.bits(),
            inheritable: sets.inheritable.bits(),
        })
    }

    fn set_capabilities(&self, caps: Caps) -> io::Result<()> {
        Ok(rustix::thread::set_capabilities(
            None,
            CapabilitySets {
                effective: CapabilitySet::from_bits_retain(caps.effective),
                permitted: CapabilitySet::from_bits_retain(caps.permitted),
                inheritable: CapabilitySet::from_bits_retain(caps.inheritable),
            },
        )?)
    }

    fn drop_bounding_capability(&self, cap: u32) -> io::Result<()> {
        let bit = 1u64
            .checked_shl(cap)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
        Ok(rustix::thread::remove_capability_from_bounding_set(
            CapabilitySet::from_bits_retain(bit),
        )?)
    }

    fn clear_ambient_capabilities(&self) -> io::Result<()> {
        Ok(rustix::thread::clear_ambient_capability_set()?)
    }

    fn close_fds_on_exec(&self, from: u32) -> io::Result<()> {
        const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;
        // SAFETY: close_range takes three integers and touches no memory of ours; with
        // CLOSE_RANGE_CLOEXEC it closes nothing, so no descriptor an owner still uses goes away.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_close_range,
                libc::c_uint::from(from),
                libc::c_uint::MAX,
                CLOSE_RANGE_CLOEXEC,
            )
        };
        if ret == 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        if !matches!(err.raw_os_error(), Some(libc::ENOSYS | libc::EINVAL)) {
            return Err(err);
        }
        // Kernels before 5.11: every open descriptor, one by one.
        let fds: Vec<i32> = std::fs::read_dir("/proc/self/fd")?
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .filter(|&fd: &i32| u32::try_from(fd).is_ok_and(|fd| fd >= from))
            .collect();
        for fd in fds {
            // SAFETY: F_SETFD on a number changes only that descriptor's flags; a number closed
            // meanwhile (the directory listing's own) gives EBADF, which is ignored.
            unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
        }
        Ok(())
    }

    fn end_others(&self) -> io::Result<()> {
        if nix::unistd::getpid().as_raw() != 1 {
            return Err(io::Error::from_raw_os_error(libc::EPERM));
        }
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(-1),
            nix::sys::signal::Signal::SIGKILL,
        )
        .or_else(|e| {
            if e == nix::errno::Errno::ESRCH {
                Ok(())
            } else {
                Err(e)
            }
        })?;
        loop {
            match nix::sys::wait::waitpid(None, None) {
                Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
                Err(nix::errno::Errno::ECHILD) => return Ok(()),
                Err(e) => return Err(e.into()),
            }
        }
    }

    fn join_new_session_keyring(&self) -> io::Result<()> {
        const KEYCTL_JOIN_SESSION_KEYRING: libc::c_long = 1;
        // SAFETY: a NULL name asks for a new anonymous keyring; the kernel reads no memory.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_keyctl,
                KEYCTL_JOIN_SESSION_KEYRING,
                std::ptr::null::<libc::c_char>(),
            )
        };
        if ret < 0 {
            let err = io::Error::last_os_error();
            // A kernel without keys has no keyring to share either.
            if err.raw_os_error() == Some(libc::ENOSYS) {
                return Ok(());
            }
            return Err(err);
        }
        Ok(())
    }
}

/// Hands `fd` to the process `cmd` starts, at the same number, which this returns: the hook run
/// between fork and exec clears its close-on-exec flag there. In this process `fd` stays
/// close-on-exec, so no other child inherits it; it is closed when `cmd` is dropped. The number
/// is one `fd` holds while `cmd` lives, so none of the descriptors std opens for the spawn can
/// take it; it is at least 3, so the child's stdio cannot replace it.
pub fn pass_fd(cmd: &mut Command, fd: OwnedFd) -> io::Result<RawFd> {
    let fd = if fd.as_raw_fd() < 3 {
        let raw = nix::fcntl::fcntl(fd.as_fd(), nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(3))?;
        // SAFETY: F_DUPFD_CLOEXEC returned a new descriptor that nothing else owns.
        unsafe { OwnedFd::from_raw_fd(raw) }
    } else {
        fd
    };
    let at = fd.as_raw_fd();
    let hook = move || -> io::Result<()> {
        // SAFETY: fcntl on the descriptor this closure owns; async-signal-safe, no allocation.
        if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, 0) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    };
    // SAFETY: the hook runs in the forked child before exec and only makes one async-signal-safe
    // call (fcntl) without allocating or taking locks; `io::Error::last_os_error` only reads
    // errno.
    unsafe {
        cmd.pre_exec(hook);
    }
    Ok(at)
}

/// The descriptors [`take_fd`] gave away.
static TAKEN: std::sync::Mutex<Vec<RawFd>> = std::sync::Mutex::new(Vec::new());

/// Takes ownership of the descriptor this process was given as `fd` (see [`pass_fd`]), which
/// must be of type `kind` (`S_IFIFO` for a pipe, `S_IFREG` for a file), and marks it
/// close-on-exec, so nothing this process executes inherits it. `None` if it is not open, of
/// another type, or was already taken.
pub fn take_fd(fd: RawFd, kind: SFlag) -> Option<OwnedFd> {
    let mut taken = TAKEN.lock().unwrap_or_else(|e| e.into_inner());
    if taken.contains(&fd) {
        return None;
    }
    // SAFETY: `fd` is only borrowed for the duration of the fstat; fstat fails cleanly (EBADF)
    // if it is not open.
    let st = nix::sys::stat::fstat(unsafe { BorrowedFd::borrow_raw(fd) }).ok()?;
    if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT != kind {
        return None;
    }
    taken.push(fd);
    // SAFETY: `fd` is open (fstat succeeded) and reserved by the protocol between this process and
    // its parent for this one use; TAKEN makes sure it is claimed only once, so no other owner
    // exists in this process.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    nix::fcntl::fcntl(
        owned.as_fd(),
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    )
    .ok()?;
    Some(owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `f` on a thread of its own: capabilities, no_new_privs and seccomp filters belong to
    /// a thread, and that thread ends with the test.
    fn on_own_thread<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        std::thread::spawn(f).join().expect("test thread panicked")
    }

    #[test]
    fn fork_refuses_a_multi_threaded_process() {
        // The test harness runs this on a thread of its own: there are at least two.
        let _other = std::thread::spawn(|| std::thread::sleep(std::time::Duration::from_secs(1)));
        let err = LinuxSyscall.fork().expect_err("must not fork");
        assert!(err.to_string().contains("threads"), "{err}");
    }

    #[test]
    fn no_new_privs_is_set_on_the_calling_thread() {
        let set = on_own_thread(|| {
            LinuxSyscall.set_no_new_privs().unwrap();
            rustix::thread::no_new_privs().unwrap()
        });
        assert!(set);
    }

    #[test]
    fn an_arbitrary_seccomp_program_is_installed() {
        use super::super::seccomp::*;
        // getcwd fails with EPERM; everything else is allowed.
        let nr = libc::SYS_getcwd as u32;
        let program = [
            SockFilter {
                code: BPF_LD_W_ABS,
                jt: 0,
                jf: 0,
                k: OFFSET_NR,
            },
            SockFilter {
                code: BPF_JEQ_K,
                jt: 0,
                jf: 1,
                k: nr,
            },
            SockFilter {
                code: BPF_RET_K,
                jt: 0,
                jf: 0,
                k: SECCOMP_RET_ERRNO | libc::EPERM as u32,
            },
            SockFilter {
                code: BPF_RET_K,
                jt: 0,
                jf: 0,
                k: SECCOMP_RET_ALLOW,
            },
        ];
        let errno = on_own_thread(move || {
            LinuxSyscall.set_no_new_privs().unwrap();
            LinuxSyscall.install_seccomp(&program).unwrap();
            std::env::current_dir().unwrap_err().raw_os_error()
        });
        assert_eq!(errno, Some(libc::EPERM));
        // Other threads are not filtered.
        assert!(std::env::current_dir().is_ok());
    }

    #[test]
    fn capabilities_are_read_set_and_dropped() {
        on_own_thread(|| {
            let k = LinuxSyscall;
            let caps = k.capabilities().unwrap();
            // Setting what we have is always allowed.
            k.set_capabilities(caps).unwrap();
            k.clear_ambient_capabilities().unwrap();
            const CAP_SETPCAP: u32 = 8;
            const CAP_MKNOD: u32 = 27;
            if caps.effective & (1 << CAP_SETPCAP) != 0 {
                k.drop_bounding_capability(CAP_MKNOD).unwrap();
                assert!(
                    !rustix::thread::capability_is_in_bounding_set(CapabilitySet::MKNOD).unwrap()
                );
            } else {
                let e = k.drop_bounding_capability(CAP_MKNOD).unwrap_err();
                assert_eq!(e.raw_os_error(), Some(libc::EPERM));
            }
            // Dropping the effective set leaves the permitted one.
            let lowered = Caps {
                effective: 0,
                ..caps
            };
            k.set_capabilities(lowered).unwrap();
            assert_eq!(k.capabilities().unwrap(), lowered);
            assert!(k.drop_bounding_capability(64).is_err());
        });
    }

    #[test]
    fn a_passed_pipe_arrives_at_the_number_given() {
        let (mut r, w) = io::pipe().unwrap();
        let mut cmd = Command::new("/bin/sh");
        let n = pass_fd(&mut cmd, w.into()).unwrap();
        // Not `>&{n}`: dash takes one digit there, and tests running in parallel hold fds.
        cmd.args(["-c", &format!("echo through >/dev/fd/{n}")]);
        let status = cmd.status().unwrap();
        drop(cmd);
        assert!(status.success());
        let mut out = String::new();
        io::Read::read_to_string(&mut r, &mut out).unwrap();
        assert_eq!(out, "through\n");
    }
}
