//! Running a step inside a root, in namespaces of its own.
//!
//! A fresh single-threaded helper process (`envc __envc-sandbox`) makes new mount, PID, UTS and
//! IPC namespaces (and a network namespace with only loopback unless the step allows network),
//! mounts the root, and forks an init (PID 1) that sets up `/proc` (its sensitive paths read-only
//! or masked), a minimal `/dev`, read-only `/sys` and a tmpfs `/tmp`, pivots into the root and runs
//! the command as PID 2, confined: a reduced capability set, a seccomp filter, no inherited
//! descriptor, a keyring of its own (`confine`). The spec comes through a sealed memory file,
//! never the command line.
//!
//! Every mount lives in the helper's mount namespace and disappears with it, so a killed build
//! leaves no mount behind on the host. Every path inside the root is resolved inside the root
//! (`openat2` with `RESOLVE_IN_ROOT`): build steps control the root's symlinks, and a symlink must
//! never redirect a mount or a write to the host. Every kernel call that changes the sandbox goes
//! through [`crate::sys::Syscall`], so the sequence runs against a recording fake in tests.
//!
//! - [`protocol`]: what passes between envc and the helper (the spec, the typed error).
//! - `helper`: the order of the helper's work.
//! - `confine`: what the step's command may do (capabilities, seccomp, descriptors, keyring).
//! - `contain`: host tools (mmdebstrap, tar, ...) in mount and PID namespaces of their own
//!   (`envc __envc-contain`), so they never leave a mount on the host or outlive envc.
//! - `mounts`: the mount sequence.
//! - `files`: paths resolved inside the root.
//! - `copy`: a host source copied into the root, checked against the plan's digest.
//! - `users`: who a name is in the root.
//! - `exec`: the command itself.
#![forbid(unsafe_code)]

mod confine;
mod contain;
mod copy;
mod exec;
mod files;
mod helper;
mod mounts;
pub mod protocol;
#[cfg(test)]
mod tests;
mod users;

pub use contain::{
    CONTAIN_ARG, EXPOSED_REPO, EXPOSED_ROOT, NO_NETWORK_OPT, NOSYNC_OPT, PARENT_OPT, REPO_OPT,
    ROOT_OPT, TOOL_CAPABILITIES, TOOL_CAPABILITY_NAMES, contain_main,
};
pub use copy::copy_into_root;
pub use files::{mkdir_in_root, open_in_root};
pub use helper::helper_main;
pub use protocol::{
    Action, Bind, HELPER_ARG, REPORT_FD_ARG, RootSource, Running, SETUP_FAILED, SandboxError,
    SandboxOp, Spec, Stdio3, run_interactive, spawn,
};
