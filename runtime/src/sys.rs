//! The syscall seam: the only module of the runtime with `unsafe` code. Every block has a
//! `// SAFETY:` comment. Everything else goes through nix's safe wrappers or these functions.

use std::ffi::{CString, OsStr};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

const FSOPEN_CLOEXEC: libc::c_uint = 1;
const FSCONFIG_SET_FLAG: libc::c_uint = 0;
const FSCONFIG_SET_STRING: libc::c_uint = 1;
const FSCONFIG_CMD_CREATE: libc::c_uint = 6;
const FSMOUNT_CLOEXEC: libc::c_uint = 1;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x0000_0004;

fn cstr(s: &OsStr) -> io::Result<CString> {
    CString::new(s.as_bytes()).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
}

fn check(ret: libc::c_long) -> io::Result<libc::c_long> {
    if ret < 0 { Err(io::Error::last_os_error()) } else { Ok(ret) }
}

/// A filesystem context from `fsopen(2)`, configured with `fsconfig(2)`.
pub struct FsContext {
    fd: OwnedFd,
}

impl FsContext {
    /// Opens a context for filesystem type `fstype`.
    pub fn open(fstype: &str) -> io::Result<FsContext> {
        let name = cstr(OsStr::new(fstype))?;
        // SAFETY: `name` is a valid NUL-terminated string that outlives the call; fsopen takes no
        // other pointers and returns a new fd or -1.
        let fd = check(unsafe { libc::syscall(libc::SYS_fsopen, name.as_ptr(), FSOPEN_CLOEXEC) })?;
        // SAFETY: fsopen returned a fresh file descriptor that nothing else owns.
        Ok(FsContext { fd: unsafe { OwnedFd::from_raw_fd(fd as RawFd) } })
    }

    /// Sets a string option (`lowerdir+`, `upperdir`, ...).
    pub fn set_string(&self, key: &str, value: &OsStr) -> io::Result<()> {
        let key = cstr(OsStr::new(key))?;
        let value = cstr(value)?;
        // SAFETY: both pointers are valid NUL-terminated strings that outlive the call; the fd is
        // an open fs context.
        check(unsafe {
            libc::syscall(libc::SYS_fsconfig, self.fd.as_raw_fd(), FSCONFIG_SET_STRING, key.as_ptr(), value.as_ptr(), 0)
        })?;
        Ok(())
    }

    /// Sets a flag option (`volatile`, ...).
    pub fn set_flag(&self, key: &str) -> io::Result<()> {
        let key = cstr(OsStr::new(key))?;
        // SAFETY: `key` is a valid NUL-terminated string; the value pointer must be NULL for flags.
        check(unsafe {
            libc::syscall(libc::SYS_fsconfig, self.fd.as_raw_fd(), FSCONFIG_SET_FLAG, key.as_ptr(), std::ptr::null::<libc::c_char>(), 0)
        })?;
        Ok(())
    }

    /// Creates the superblock, mounts it detached and attaches it at `target`.
    pub fn mount_at(self, target: &Path) -> io::Result<()> {
        // SAFETY: null key/value with FSCONFIG_CMD_CREATE is the documented form.
        check(unsafe {
            libc::syscall(
                libc::SYS_fsconfig,
                self.fd.as_raw_fd(),
                FSCONFIG_CMD_CREATE,
                std::ptr::null::<libc::c_char>(),
                std::ptr::null::<libc::c_char>(),
                0,
            )
        })?;
        // SAFETY: fsmount takes the configured context fd and flags, and returns a new fd.
        let mfd = check(unsafe { libc::syscall(libc::SYS_fsmount, self.fd.as_raw_fd(), FSMOUNT_CLOEXEC, 0) })?;
        // SAFETY: fsmount returned a fresh fd that nothing else owns.
        let mfd = unsafe { OwnedFd::from_raw_fd(mfd as RawFd) };
        let empty = CString::default();
        let target = cstr(target.as_os_str())?;
        // SAFETY: all pointers are valid NUL-terminated strings that outlive the call.
        check(unsafe {
            libc::syscall(
                libc::SYS_move_mount,
                mfd.as_raw_fd(),
                empty.as_ptr(),
                libc::AT_FDCWD,
                target.as_ptr(),
                MOVE_MOUNT_F_EMPTY_PATH,
            )
        })?;
        Ok(())
    }
}

/// Brings the loopback interface up in the current network namespace.
pub fn loopback_up() -> io::Result<()> {
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
    // SAFETY: the kernel filled ifru_flags for SIOCGIFFLAGS; reading and updating the union field
    // it set is sound.
    unsafe {
        req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
    }
    // SAFETY: as above, for SIOCSIFFLAGS.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `syncfs(2)` on the filesystem holding `fd`.
pub fn syncfs(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: syncfs takes an open fd and no pointers.
    if unsafe { libc::syncfs(fd.as_raw_fd()) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `statfs(2)` f_type of the filesystem at `path`.
pub fn fs_type(path: &Path) -> io::Result<i64> {
    let p = cstr(path.as_os_str())?;
    // SAFETY: statfs is plain old data; zero is a valid bit pattern.
    let mut buf: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `p` is a valid NUL-terminated path and `buf` a valid out-pointer for the call.
    if unsafe { libc::statfs(p.as_ptr(), &mut buf) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(buf.f_type as i64)
}

/// The filesystem magic of btrfs.
pub const BTRFS_MAGIC: i64 = 0x9123_683e;

/// `fork(2)`, for the sandbox helper only.
///
/// The sandbox helper is a freshly exec'd, single-threaded process (`envc __sandbox`), so the child
/// may do anything the parent could: no other thread can hold a lock at the time of the fork.
pub fn fork_single_threaded() -> nix::Result<nix::unistd::ForkResult> {
    // SAFETY: only called from the sandbox helper and its init, which never start threads.
    unsafe { nix::unistd::fork() }
}
