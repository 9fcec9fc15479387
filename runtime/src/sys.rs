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
    CString::new(s.as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
}

fn check(ret: libc::c_long) -> io::Result<libc::c_long> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
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
        Ok(FsContext {
            fd: unsafe { OwnedFd::from_raw_fd(fd as RawFd) },
        })
    }

    /// Sets a string option (`lowerdir+`, `upperdir`, ...).
    pub fn set_string(&self, key: &str, value: &OsStr) -> io::Result<()> {
        let key = cstr(OsStr::new(key))?;
        let value = cstr(value)?;
        // SAFETY: both pointers are valid NUL-terminated strings that outlive the call; the fd is
        // an open fs context.
        check(unsafe {
            libc::syscall(
                libc::SYS_fsconfig,
                self.fd.as_raw_fd(),
                FSCONFIG_SET_STRING,
                key.as_ptr(),
                value.as_ptr(),
                0,
            )
        })?;
        Ok(())
    }

    /// Sets a flag option (`volatile`, ...).
    pub fn set_flag(&self, key: &str) -> io::Result<()> {
        let key = cstr(OsStr::new(key))?;
        // SAFETY: `key` is a valid NUL-terminated string; the value pointer must be NULL for flags.
        check(unsafe {
            libc::syscall(
                libc::SYS_fsconfig,
                self.fd.as_raw_fd(),
                FSCONFIG_SET_FLAG,
                key.as_ptr(),
                std::ptr::null::<libc::c_char>(),
                0,
            )
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
        let mfd = check(unsafe {
            libc::syscall(libc::SYS_fsmount, self.fd.as_raw_fd(), FSMOUNT_CLOEXEC, 0)
        })?;
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

/// `FITRIM` on the filesystem holding `fd`: tells the device which blocks are free (on a thin
/// volume, this gives them back to the pool). Returns the bytes trimmed.
pub fn fitrim(fd: BorrowedFd<'_>) -> io::Result<u64> {
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

/// One classic-BPF instruction (`struct sock_filter`).
#[repr(C)]
#[derive(Clone, Copy)]
struct SockFilter {
    code: u16,
    jt: u8,
    jf: u8,
    k: u32,
}

/// `struct sock_fprog`.
#[repr(C)]
struct SockFprog {
    len: libc::c_ushort,
    filter: *const SockFilter,
}

const BPF_LD_W_ABS: u16 = 0x20;
const BPF_JEQ_K: u16 = 0x15;
const BPF_AND_K: u16 = 0x54;
const BPF_RET_K: u16 = 0x06;
const SECCOMP_RET_ALLOW: u32 = 0x7fff_0000;
const SECCOMP_RET_ERRNO: u32 = 0x0005_0000;
const OFFSET_NR: u32 = 0;
const OFFSET_ARCH: u32 = 4;

/// The sync syscalls of one architecture: (audit arch, mask applied to the number, numbers of
/// fsync, fdatasync, msync, sync, sync_file_range, syncfs).
const SYNC_SYSCALLS: &[(u32, u32, [u32; 6])] = &[
    // x86_64; the mask folds x32 numbers (bit 30) onto the x86_64 ones.
    (0xC000_003E, !0x4000_0000, [74, 75, 26, 162, 277, 306]),
    // i386 (32-bit processes on x86_64).
    (0x4000_0003, !0, [118, 148, 144, 36, 314, 344]),
    // aarch64.
    (0xC000_00B7, !0, [82, 83, 227, 81, 84, 267]),
    // arm (32-bit processes on aarch64); sync_file_range is arm_sync_file_range.
    (0x4000_0028, !0, [118, 148, 144, 36, 341, 373]),
];

/// The seccomp program that makes exactly the sync syscalls return 0 and allows everything else.
fn sync_filter() -> Vec<SockFilter> {
    let ins = |code, jt, jf, k| SockFilter { code, jt, jf, k };
    let mut prog = vec![ins(BPF_LD_W_ABS, 0, 0, OFFSET_ARCH)];
    // Per architecture block: load nr, mask, 6 compares, allow, return 0.
    const BLOCK: usize = 2 + 6 + 2;
    let n = SYNC_SYSCALLS.len();
    // Dispatch: one JEQ per arch jumping to its block; fall through to allow.
    for (i, (arch, _, _)) in SYNC_SYSCALLS.iter().enumerate() {
        // Distance from the instruction after this JEQ to the start of block i.
        let to_block = (n - 1 - i) + 1 + i * BLOCK;
        prog.push(ins(BPF_JEQ_K, to_block as u8, 0, *arch));
    }
    prog.push(ins(BPF_RET_K, 0, 0, SECCOMP_RET_ALLOW));
    for (_, mask, nrs) in SYNC_SYSCALLS {
        prog.push(ins(BPF_LD_W_ABS, 0, 0, OFFSET_NR));
        prog.push(ins(BPF_AND_K, 0, 0, *mask));
        for (j, nr) in nrs.iter().enumerate() {
            // Match: jump to the "return 0" after the block's allow.
            let to_errno = (nrs.len() - 1 - j) + 1;
            prog.push(ins(BPF_JEQ_K, to_errno as u8, 0, *nr));
        }
        prog.push(ins(BPF_RET_K, 0, 0, SECCOMP_RET_ALLOW));
        prog.push(ins(BPF_RET_K, 0, 0, SECCOMP_RET_ERRNO));
    }
    prog
}

/// Installs a seccomp filter on the calling thread (inherited by children and across exec) that
/// makes fsync, fdatasync, msync, sync, sync_file_range and syncfs return 0 without doing
/// anything, for native and 32-bit compat processes. Open flags are left alone. Needs
/// CAP_SYS_ADMIN (root) or no_new_privs.
pub fn suppress_sync_with_seccomp() -> io::Result<()> {
    let prog = sync_filter();
    let fprog = SockFprog {
        len: prog.len() as libc::c_ushort,
        filter: prog.as_ptr(),
    };
    // SAFETY: `fprog` points at `prog`, a valid filter array of `len` instructions, both alive for
    // the duration of the call; the kernel copies the program.
    let ret = unsafe {
        libc::prctl(
            libc::PR_SET_SECCOMP,
            libc::SECCOMP_MODE_FILTER,
            &fprog as *const SockFprog,
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs a classic-BPF seccomp program on (arch, nr), as the kernel would.
    fn run(prog: &[SockFilter], arch: u32, nr: u32) -> u32 {
        let (mut pc, mut a) = (0usize, 0u32);
        loop {
            let ins = prog[pc];
            match ins.code {
                BPF_LD_W_ABS => a = if ins.k == OFFSET_ARCH { arch } else { nr },
                BPF_AND_K => a &= ins.k,
                BPF_JEQ_K => {
                    pc += if a == ins.k {
                        ins.jt as usize
                    } else {
                        ins.jf as usize
                    };
                }
                BPF_RET_K => return ins.k,
                other => panic!("unexpected instruction {other:#x}"),
            }
            pc += 1;
            assert!(pc < prog.len(), "fell off the end of the program");
        }
    }

    #[test]
    fn filter_suppresses_exactly_the_sync_calls() {
        let prog = sync_filter();
        assert!(prog.len() < 256, "jump offsets must fit in u8");
        for (arch, _, nrs) in SYNC_SYSCALLS {
            for nr in nrs {
                assert_eq!(
                    run(&prog, *arch, *nr),
                    SECCOMP_RET_ERRNO,
                    "arch {arch:#x} nr {nr}"
                );
            }
            // Neighbours and common calls are allowed (x86_64 read/write/openat, i386 open...).
            for nr in [0, 1, 2, 3, 5, 56, 57, 59, 257, 322, 1000] {
                if !nrs.contains(&nr) {
                    assert_eq!(
                        run(&prog, *arch, nr),
                        SECCOMP_RET_ALLOW,
                        "arch {arch:#x} nr {nr}"
                    );
                }
            }
        }
        // x32 numbers carry bit 30 on the x86_64 audit arch.
        assert_eq!(run(&prog, 0xC000_003E, 74 | 0x4000_0000), SECCOMP_RET_ERRNO);
        // Unknown architectures are left alone.
        assert_eq!(run(&prog, 0x1234, 74), SECCOMP_RET_ALLOW);
    }
}
