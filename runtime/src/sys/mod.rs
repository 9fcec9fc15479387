//! The syscall seam: every kernel call that changes a process's mounts, namespaces, identity,
//! capabilities or seccomp filter goes through [`Syscall`].
//!
//! `unsafe` code is allowed in `linux` alone: the crate denies `unsafe_code`; this file lifts
//! that for `mod linux` only; every other file of the crate forbids it. A test (`guard`) checks
//! all three.

mod fake;
#[cfg(test)]
mod guard;
#[allow(unsafe_code)]
mod linux;
pub mod seccomp;
mod syscall;

pub use fake::{Call, Record, RecordingSyscall};
pub use linux::{LinuxSyscall, kernel, pass_fd, take_fd};
pub use seccomp::SockFilter;
pub use syscall::{BTRFS_MAGIC, Caps, OverlayError, OverlayStage, Syscall};
