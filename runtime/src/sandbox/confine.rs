//! What a step's command may do: the capabilities it keeps, the seccomp filter it runs under, the
//! descriptors and keyring it starts with. Applied in the command's own process, after the pivot
//! and before exec, in an order each step of which the previous one still allows: the keyring
//! (keyctl is refused afterwards), the descriptors, the filter (installed with CAP_SYS_ADMIN, so
//! no_new_privs stays off and setuid programs in the root keep working), then the capabilities.
#![forbid(unsafe_code)]

use super::protocol::{OrFail, SandboxError, SandboxOp};
use crate::sys::{self, Caps, Syscall};

/// CAP_NET_RAW: kept only by steps with network.
pub(crate) const CAP_NET_RAW: u32 = 13;

/// The capabilities a step keeps (Docker's default set without MKNOD and NET_RAW): CHOWN,
/// DAC_OVERRIDE, FOWNER, FSETID, KILL, SETGID, SETUID, SETPCAP, NET_BIND_SERVICE, SYS_CHROOT,
/// AUDIT_WRITE, SETFCAP. Package managers and builds need these: dpkg changes owners and modes,
/// apt and su change users, postinst scripts set file capabilities. Device nodes cannot be made:
/// a step's `/dev` is a fresh tmpfs with the usual nodes, and a layer never holds one.
pub(crate) const KEPT: &[u32] = &[0, 1, 3, 4, 5, 6, 7, 8, 10, 18, 29, 31];

/// The capability mask a step keeps, with or without network.
pub(crate) fn kept_mask(network: bool) -> u64 {
    let mut mask = KEPT.iter().fold(0u64, |m, c| m | 1 << c);
    if network {
        mask |= 1 << CAP_NET_RAW;
    }
    mask
}

/// The highest capability number tried when the bounding set is lowered (the kernel answers
/// EINVAL past its last one).
const MAX_CAP: u32 = 63;

/// Confines the calling process (the command's, about to exec).
pub(crate) fn confine(sys: &dyn Syscall, network: bool) -> Result<(), SandboxError> {
    sys.join_new_session_keyring()
        .or_fail(SandboxOp::SessionKeyring, "the command")?;
    sys.close_fds_on_exec(3)
        .or_fail(SandboxOp::CloseDescriptors, "the command")?;
    sys.install_seccomp(&sys::seccomp::confine_filter())
        .or_fail(SandboxOp::Confine, "the command")?;
    let keep = kept_mask(network);
    for cap in 0..=MAX_CAP {
        if keep & (1 << cap) != 0 {
            continue;
        }
        match sys.drop_bounding_capability(cap) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(nix::libc::EINVAL) => break,
            Err(e) => {
                return Err(e).or_fail(SandboxOp::DropCapabilities, format!("capability {cap}"));
            }
        }
    }
    sys.clear_ambient_capabilities()
        .or_fail(SandboxOp::DropCapabilities, "the ambient set")?;
    sys.set_capabilities(Caps {
        effective: keep,
        permitted: keep,
        inheritable: 0,
    })
    .or_fail(SandboxOp::DropCapabilities, "the command")?;
    Ok(())
}
