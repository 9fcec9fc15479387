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
/// `BPF_JMP | BPF_JGE | BPF_K`.
pub const BPF_JGE_K: u16 = 0x35;
/// `BPF_JMP | BPF_JSET | BPF_K`.
pub const BPF_JSET_K: u16 = 0x45;
/// Offset of `nr` in `struct seccomp_data`.
pub const OFFSET_NR: u32 = 0;
/// Offset of `arch` in `struct seccomp_data`.
pub const OFFSET_ARCH: u32 = 4;
/// Offset of the low 32 bits of the first argument in `struct seccomp_data` (little endian).
pub const OFFSET_ARG0_LO: u32 = 16;
/// Offset of the low 32 bits of the second argument.
pub const OFFSET_ARG1_LO: u32 = 24;

/// The terminal ioctls a step may not make: `TIOCSTI` (push characters into a terminal's input,
/// which the user's shell then reads as typed) and `TIOCLINUX` (the same, and more, on a
/// virtual console).
const TTY_INJECT: [u32; 2] = [0x5412, 0x541C];

/// The btrfs ioctls that make a subvolume or a snapshot (`BTRFS_IOC_SNAP_CREATE`,
/// `SUBVOL_CREATE`, `SNAP_CREATE_V2`, `SUBVOL_CREATE_V2`; the same numbers for 32-bit processes).
/// Any user may make one where it can write, but a subvolume inside a layer is not part of the
/// layer's snapshot: the sealed layer would lack its files, and the layer's build could not be
/// deleted (removing a subvolume takes CAP_SYS_ADMIN).
const BTRFS_SUBVOL: [u32; 4] = [0x5000_9401, 0x5000_940E, 0x5000_9417, 0x5000_9418];

/// `EPERM`: what a refused call returns.
const EPERM: u32 = 1;
/// `ENOSYS`: what `clone3` returns, so that libc falls back to `clone`, whose flags the filter
/// can read (`clone3` passes them in memory).
const ENOSYS: u32 = 38;

/// The namespace flags of `unshare` (`CLONE_NEWNS`, `NEWCGROUP`, `NEWUTS`, `NEWIPC`, `NEWUSER`,
/// `NEWPID`, `NEWNET`, `NEWTIME`).
const NS_FLAGS_UNSHARE: u32 = 0x0002_0000
    | 0x0200_0000
    | 0x0400_0000
    | 0x0800_0000
    | 0x1000_0000
    | 0x2000_0000
    | 0x4000_0000
    | 0x80;
/// The namespace flags `clone` can take: those of `unshare` but `CLONE_NEWTIME` (0x80 is part of
/// the exit signal there).
const NS_FLAGS_CLONE: u32 = NS_FLAGS_UNSHARE & !0x80;

/// What a step may not call, per architecture the kernel runs processes of. Each list holds
/// the numbers of: kexec_load, kexec_file_load, init_module, finit_module, delete_module, bpf,
/// perf_event_open, keyctl, add_key, request_key, userfaultfd, open_by_handle_at,
/// io_uring_setup, io_uring_enter, io_uring_register, fanotify_init, syslog, acct, quotactl,
/// quotactl_fd, swapon, swapoff, reboot, settimeofday, clock_settime, clock_adjtime, adjtimex,
/// mount, umount2, pivot_root, setns, open_tree, move_mount, fsopen, fsconfig, fsmount, fspick,
/// mount_setattr, lookup_dcookie, nfsservctl; then the architecture's own (iopl and ioperm on
/// x86; stime, umount, vm86, vm86old and the 64-bit time calls on i386). From the kernel's
/// `unistd_64.h`, `unistd_32.h` and `asm-generic/unistd.h`.
struct ArchCalls {
    /// `AUDIT_ARCH_*`.
    arch: u32,
    /// Numbers at or above this are another ABI on the same audit arch (x32): refused.
    foreign_from: Option<u32>,
    denied: &'static [u32],
    unshare: u32,
    clone: u32,
    clone3: u32,
    ioctl: u32,
}

const CONFINED: &[ArchCalls] = &[
    ArchCalls {
        arch: 0xC000_003E,
        foreign_from: Some(0x4000_0000),
        denied: &[
            246, 320, 175, 313, 176, 321, 298, 250, 248, 249, 323, 304, 425, 426, 427, 300, 103,
            163, 179, 443, 167, 168, 169, 164, 227, 305, 159, 165, 166, 155, 308, 428, 429, 430,
            431, 432, 433, 442, 212, 180, // the common list
            172, 173, // iopl, ioperm
        ],
        unshare: 272,
        clone: 56,
        clone3: 435,
        ioctl: 16,
    },
    ArchCalls {
        arch: 0x4000_0003,
        foreign_from: None,
        denied: &[
            283, 128, 350, 129, 357, 336, 288, 286, 287, 374, 342, 425, 426, 427, 338, 103, 51,
            131, 443, 87, 115, 88, 79, 264, 343, 124, 21, 52, 217, 346, 428, 429, 430, 431, 432,
            433, 442, 253, 169, // the common list (without kexec_file_load, which i386 lacks)
            110, 101, // iopl, ioperm
            25, 22, 166, 113, // stime, umount, vm86, vm86old
            404, 405, // clock_settime64, clock_adjtime64
        ],
        unshare: 310,
        clone: 120,
        clone3: 435,
        ioctl: 54,
    },
    ArchCalls {
        arch: 0xC000_00B7,
        foreign_from: None,
        denied: &[
            104, 294, 105, 273, 106, 280, 241, 219, 217, 218, 282, 265, 425, 426, 427, 262, 116,
            89, 60, 443, 224, 225, 142, 170, 112, 266, 171, 40, 39, 41, 268, 428, 429, 430, 431,
            432, 433, 442, 18, 42, // the common list
        ],
        unshare: 97,
        clone: 220,
        clone3: 435,
        ioctl: 29,
    },
];

/// A jump target in [`Asm`].
#[derive(Clone, Copy)]
struct Label(usize);

/// A tiny assembler for classic BPF: jumps name labels, resolved into the forward offsets the
/// kernel wants (each at most 255 instructions).
#[derive(Default)]
struct Asm {
    prog: Vec<SockFilter>,
    /// (instruction, true target, false target) of each conditional jump.
    jumps: Vec<(usize, Option<Label>, Option<Label>)>,
    labels: Vec<Option<usize>>,
}

impl Asm {
    fn label(&mut self) -> Label {
        self.labels.push(None);
        Label(self.labels.len() - 1)
    }

    fn here(&mut self, l: Label) {
        self.labels[l.0] = Some(self.prog.len());
    }

    fn ins(&mut self, code: u16, k: u32) {
        self.prog.push(SockFilter {
            code,
            jt: 0,
            jf: 0,
            k,
        });
    }

    /// A conditional jump on `k`: to `yes` if it holds, to `no` (or the next instruction).
    fn jump(&mut self, code: u16, k: u32, yes: Option<Label>, no: Option<Label>) {
        self.jumps.push((self.prog.len(), yes, no));
        self.ins(code, k);
    }

    fn ret(&mut self, k: u32) {
        self.ins(BPF_RET_K, k);
    }

    fn finish(mut self) -> Vec<SockFilter> {
        for (at, yes, no) in std::mem::take(&mut self.jumps) {
            let offset = |l: Option<Label>| -> u8 {
                let Some(l) = l else { return 0 };
                let target = self.labels[l.0].expect("every label is placed");
                u8::try_from(target - at - 1).expect("a jump fits in 255 instructions")
            };
            self.prog[at].jt = offset(yes);
            self.prog[at].jf = offset(no);
        }
        self.prog
    }
}

/// The confinement program of build steps: for x86_64, i386 and aarch64 processes, the calls in
/// [`CONFINED`], `unshare`/`clone` with a namespace flag, the terminal ioctls of [`TTY_INJECT`]
/// and the btrfs ioctls of [`BTRFS_SUBVOL`] return EPERM, `clone3` returns ENOSYS
/// (libc then uses `clone`); x32 calls and processes of any other architecture return ENOSYS.
/// Everything else is allowed.
pub fn confine_filter() -> Vec<SockFilter> {
    let mut a = Asm::default();
    let blocks: Vec<Label> = CONFINED.iter().map(|_| a.label()).collect();
    a.ins(BPF_LD_W_ABS, OFFSET_ARCH);
    for (c, block) in CONFINED.iter().zip(&blocks) {
        a.jump(BPF_JEQ_K, c.arch, Some(*block), None);
    }
    a.ret(SECCOMP_RET_ERRNO | ENOSYS);
    for (c, block) in CONFINED.iter().zip(&blocks) {
        let (deny, nosys, allow) = (a.label(), a.label(), a.label());
        let (unshare, clone, ioctl) = (a.label(), a.label(), a.label());
        a.here(*block);
        a.ins(BPF_LD_W_ABS, OFFSET_NR);
        if let Some(from) = c.foreign_from {
            a.jump(BPF_JGE_K, from, Some(nosys), None);
        }
        a.jump(BPF_JEQ_K, c.clone3, Some(nosys), None);
        a.jump(BPF_JEQ_K, c.unshare, Some(unshare), None);
        a.jump(BPF_JEQ_K, c.clone, Some(clone), None);
        a.jump(BPF_JEQ_K, c.ioctl, Some(ioctl), None);
        for nr in c.denied {
            a.jump(BPF_JEQ_K, *nr, Some(deny), None);
        }
        a.ret(SECCOMP_RET_ALLOW);
        a.here(unshare);
        a.ins(BPF_LD_W_ABS, OFFSET_ARG0_LO);
        a.jump(BPF_JSET_K, NS_FLAGS_UNSHARE, Some(deny), Some(allow));
        a.here(clone);
        a.ins(BPF_LD_W_ABS, OFFSET_ARG0_LO);
        a.jump(BPF_JSET_K, NS_FLAGS_CLONE, Some(deny), Some(allow));
        a.here(ioctl);
        a.ins(BPF_LD_W_ABS, OFFSET_ARG1_LO);
        for req in TTY_INJECT.iter().chain(&BTRFS_SUBVOL) {
            a.jump(BPF_JEQ_K, *req, Some(deny), None);
        }
        a.ret(SECCOMP_RET_ALLOW);
        a.here(allow);
        a.ret(SECCOMP_RET_ALLOW);
        a.here(deny);
        a.ret(SECCOMP_RET_ERRNO | EPERM);
        a.here(nosys);
        a.ret(SECCOMP_RET_ERRNO | ENOSYS);
    }
    a.finish()
}

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
        run_with(prog, arch, nr, 0)
    }

    /// Runs a program on (arch, nr) with `arg0` as the low word of the first argument.
    fn run_with(prog: &[SockFilter], arch: u32, nr: u32, arg0: u32) -> u32 {
        let (mut pc, mut a) = (0usize, 0u32);
        loop {
            let ins = prog[pc];
            let jump = |cond: bool| if cond { ins.jt } else { ins.jf } as usize;
            match ins.code {
                BPF_LD_W_ABS => {
                    a = match ins.k {
                        OFFSET_ARCH => arch,
                        OFFSET_NR => nr,
                        OFFSET_ARG0_LO | OFFSET_ARG1_LO => arg0,
                        other => panic!("load of offset {other}"),
                    }
                }
                BPF_AND_K => a &= ins.k,
                BPF_JEQ_K => pc += jump(a == ins.k),
                BPF_JGE_K => pc += jump(a >= ins.k),
                BPF_JSET_K => pc += jump(a & ins.k != 0),
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

    const DENY: u32 = SECCOMP_RET_ERRNO | EPERM;
    const NOSYS: u32 = SECCOMP_RET_ERRNO | ENOSYS;

    #[test]
    fn confinement_refuses_exactly_its_calls() {
        let prog = confine_filter();
        assert!(prog.len() < 4096, "BPF_MAXINSNS");
        for c in CONFINED {
            for nr in c.denied {
                assert_eq!(run(&prog, c.arch, *nr), DENY, "arch {:#x} nr {nr}", c.arch);
            }
            assert_eq!(run(&prog, c.arch, c.clone3), NOSYS);
            // Namespaces: refused; other flags (CLONE_FILES, a fork's SIGCHLD) pass.
            for (nr, ns) in [(c.unshare, NS_FLAGS_UNSHARE), (c.clone, NS_FLAGS_CLONE)] {
                for bit in (0..32).map(|b| 1u32 << b).filter(|b| ns & b != 0) {
                    assert_eq!(run_with(&prog, c.arch, nr, bit | 17), DENY, "{nr} {bit:#x}");
                }
                assert_eq!(run_with(&prog, c.arch, nr, 0x400), SECCOMP_RET_ALLOW);
                assert_eq!(run_with(&prog, c.arch, nr, 0), SECCOMP_RET_ALLOW);
            }
            // Terminal input injection, not other ioctls (TCGETS, FIONREAD, TIOCGWINSZ).
            for req in TTY_INJECT.into_iter().chain(BTRFS_SUBVOL) {
                assert_eq!(run_with(&prog, c.arch, c.ioctl, req), DENY);
            }
            // Other btrfs ioctls (BTRFS_IOC_FS_INFO, INO_LOOKUP) pass.
            for req in [0x8400_941F, 0xD000_9412] {
                assert_eq!(run_with(&prog, c.arch, c.ioctl, req), SECCOMP_RET_ALLOW);
            }
            for req in [0x5401, 0x541B, 0x5413] {
                assert_eq!(run_with(&prog, c.arch, c.ioctl, req), SECCOMP_RET_ALLOW);
            }
            // clone's exit signal shares bit 0x80 with CLONE_NEWTIME.
            assert_eq!(run_with(&prog, c.arch, c.clone, 0x80), SECCOMP_RET_ALLOW);
            assert_eq!(run_with(&prog, c.arch, c.unshare, 0x80), DENY);
        }
        // Ordinary calls: x86_64 read, write, open, fork, execve, ptrace, chroot, personality;
        // i386 read, write, execve, ptrace, socketcall; aarch64 read, write, execve, ptrace.
        for nr in [0, 1, 2, 57, 59, 101, 161, 135] {
            assert_eq!(
                run(&prog, 0xC000_003E, nr),
                SECCOMP_RET_ALLOW,
                "x86_64 {nr}"
            );
        }
        for nr in [3, 4, 11, 26, 102] {
            assert_eq!(run(&prog, 0x4000_0003, nr), SECCOMP_RET_ALLOW, "i386 {nr}");
        }
        for nr in [63, 64, 221, 117] {
            assert_eq!(
                run(&prog, 0xC000_00B7, nr),
                SECCOMP_RET_ALLOW,
                "aarch64 {nr}"
            );
        }
        // x32 calls (bit 30 on the x86_64 audit arch) and unknown architectures: ENOSYS.
        assert_eq!(run(&prog, 0xC000_003E, 0x4000_0000), NOSYS);
        assert_eq!(run(&prog, 0xC000_003E, 0x4000_0000 | 165), NOSYS);
        assert_eq!(run(&prog, 0x4000_0028, 3), NOSYS);
    }
}
