//! Seccomp programs, built as plain data; [`super::Syscall::install_seccomp`] installs them.
#![forbid(unsafe_code)]

/// One classic-BPF instruction (`struct sock_filter`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SockFilter {
    /// The opcode.
    pub code: u16,
    /// Jump offset if true.
    pub jt: u8,
    /// Jump offset if false.
    pub jf: u8,
    /// The operand.
    pub k: u32,
}

/// `BPF_LD | BPF_W | BPF_ABS`: load a word of `struct seccomp_data`.
pub const BPF_LD_W_ABS: u16 = 0x20;
/// `BPF_JMP | BPF_JEQ | BPF_K`.
pub const BPF_JEQ_K: u16 = 0x15;
/// `BPF_ALU | BPF_AND | BPF_K`.
pub const BPF_AND_K: u16 = 0x54;
/// `BPF_RET | BPF_K`.
pub const BPF_RET_K: u16 = 0x06;
/// Let the call through.
pub const SECCOMP_RET_ALLOW: u32 = 0x7fff_0000;
/// Return the errno in the low 16 bits without making the call (0: pretend success).
pub const SECCOMP_RET_ERRNO: u32 = 0x0005_0000;
/// Offset of `nr` in `struct seccomp_data`.
pub const OFFSET_NR: u32 = 0;
/// Offset of `arch` in `struct seccomp_data`.
pub const OFFSET_ARCH: u32 = 4;

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

/// The program that makes fsync, fdatasync, msync, sync, sync_file_range and syncfs return 0
/// without doing anything, for native and 32-bit compat processes, and allows everything else.
/// Open flags are left alone.
pub fn sync_filter() -> Vec<SockFilter> {
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
