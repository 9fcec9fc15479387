//! What a step's command may do: the capabilities it keeps, the seccomp filter it runs under, the
//! descriptors and keyring it starts with. Applied in the command's own process, after the pivot
//! and before exec, in an order each step of which the previous one still allows: the keyring
//! (keyctl is refused afterwards), the descriptors, the filter (installed with CAP_SYS_ADMIN, so
//! no_new_privs stays off and setuid programs in the root keep working), then the capabilities.
#![forbid(unsafe_code)]

use super::protocol::{OrFail, SandboxError, SandboxOp};
use crate::sys::{self, Caps, Syscall};

/// The capabilities a step keeps (Docker's default set without MKNOD): CHOWN, DAC_OVERRIDE,
/// FOWNER, FSETID, KILL, SETGID, SETUID, SETPCAP, NET_BIND_SERVICE, NET_RAW, SYS_CHROOT,
/// AUDIT_WRITE, SETFCAP. Package managers and builds need these: dpkg changes owners and modes,
/// apt and su change users, postinst scripts set file capabilities. Device nodes cannot be made:
/// a step's `/dev` is a fresh tmpfs with the usual nodes, and a layer never holds one.
///
/// NET_RAW is kept in every step, with network or not: the kernel refuses to execute a program
/// whose file capabilities are outside the bounding set (Debian's `ping` carries
/// `cap_net_raw=ep`), so without it such programs cannot even start. A step without network
/// reaches only the loopback of its own network namespace with it.
pub(crate) const KEPT: &[u32] = &[0, 1, 3, 4, 5, 6, 7, 8, 10, 13, 18, 29, 31];

/// The capability mask a step keeps.
pub(crate) fn kept_mask() -> u64 {
    KEPT.iter().fold(0u64, |m, c| m | 1 << c)
}

/// The highest capability number tried when the bounding set is lowered (the kernel answers
/// EINVAL past its last one).
const MAX_CAP: u32 = 63;

/// Confines the calling process (the command's, about to exec).
pub(crate) fn confine(sys: &dyn Syscall) -> Result<(), SandboxError> {
    sys.join_new_session_keyring()
        .or_fail(SandboxOp::SessionKeyring, "the command")?;
    sys.close_fds_on_exec(3)
        .or_fail(SandboxOp::CloseDescriptors, "the command")?;
    sys.install_seccomp(&sys::seccomp::confine_filter())
        .or_fail(SandboxOp::Confine, "the command")?;
    lower_capabilities(sys, kept_mask(), "the command")
}

/// Lowers the calling process's capabilities to `keep`: every other one leaves the bounding set
/// (up to the kernel's last), the ambient and inheritable sets are emptied, and the permitted
/// and effective sets become `keep`. `who` names the process in an error (a command, a tool).
pub(crate) fn lower_capabilities(
    sys: &dyn Syscall,
    keep: u64,
    who: &str,
) -> Result<(), SandboxError> {
    let fail = |what: String, e: std::io::Error| {
        let mut err = SandboxError::io(SandboxOp::DropCapabilities, who, &e);
        err.detail = format!("{what}: {}", err.detail);
        err
    };
    for cap in 0..=MAX_CAP {
        if keep & (1 << cap) != 0 {
            continue;
        }
        match sys.drop_bounding_capability(cap) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(nix::libc::EINVAL) => break,
            Err(e) => return Err(fail(format!("bounding set, capability {cap}"), e)),
        }
    }
    sys.clear_ambient_capabilities()
        .map_err(|e| fail("ambient set".into(), e))?;
    sys.set_capabilities(Caps {
        effective: keep,
        permitted: keep,
        inheritable: 0,
    })
    .map_err(|e| fail("permitted and effective sets".into(), e))
}
