//! Every architecture assumption of the shim, in one table: which builds of the library a target
//! gets, how each is compiled, where ld.so's `$LIB` looks for it, and what its ELF header and glibc
//! symbol versions must be.
//!
//! `build.rs` includes this file (`#[path]`) to compile the builds, `lib.rs` installs them from
//! it, and the tests check the builds against it. Supporting another architecture means one more
//! [`ARCHES`] entry (and, for the seccomp alternative, the runtime's own syscall table).

/// One build of the library.
#[derive(Debug)]
pub struct Build {
    /// The build's name in messages, e.g. `x86_64` or `i386`.
    pub name: &'static str,
    /// Whether the target's C compiler makes this build, given [`cflags`](Build::cflags). When it
    /// does not (or cannot), [`cross_cc`](Build::cross_cc) is tried.
    pub target_cc: bool,
    /// Flags that select this build's machine when the target's C compiler makes it.
    pub cflags: &'static [&'static str],
    /// A GNU cross compiler for this build, looked up on PATH.
    pub cross_cc: &'static str,
    /// The Debian package that provides what this build needs, for messages.
    pub toolchain_package: &'static str,
    /// What ld.so's `$LIB` expands to for processes of this build: Debian/Ubuntu multiarch first,
    /// then other distribution families.
    pub lib_dirs: &'static [&'static str],
    /// `e_ident[EI_CLASS]`: 1 for 32-bit, 2 for 64-bit.
    pub elf_class: u8,
    /// `e_machine` (every architecture here is little-endian).
    pub elf_machine: u16,
    /// The glibc symbol version of `syscall`, the library's one libc import: the oldest version
    /// glibc has on this architecture.
    pub syscall_version: &'static str,
    /// The newest glibc symbol version the build may need.
    pub max_glibc: &'static str,
}

/// The builds for one target architecture.
#[derive(Debug)]
pub struct Arch {
    /// Rust's name of the architecture (`CARGO_CFG_TARGET_ARCH`, `std::env::consts::ARCH`).
    pub rust: &'static str,
    /// The build for the target's own processes. Required.
    pub native: Build,
    /// The build for 32-bit processes the target's kernel can also run, where one exists. Optional:
    /// skipped, with a warning, when no compiler for it is installed.
    pub compat: Option<Build>,
}

/// The architectures the shim can be built for.
pub const ARCHES: &[Arch] = &[
    Arch {
        rust: "x86_64",
        native: Build {
            name: "x86_64",
            target_cc: true,
            cflags: &["-m64"],
            cross_cc: "x86_64-linux-gnu-gcc",
            toolchain_package: "gcc-x86-64-linux-gnu",
            // Debian multiarch, Fedora/RHEL/SUSE.
            lib_dirs: &["lib/x86_64-linux-gnu", "lib64"],
            elf_class: 2,
            elf_machine: 62, // EM_X86_64
            syscall_version: "2.2.5",
            max_glibc: "2.3",
        },
        compat: Some(Build {
            name: "i386",
            target_cc: true,
            cflags: &["-m32"],
            cross_cc: "i686-linux-gnu-gcc",
            toolchain_package: "gcc-multilib",
            // Debian multiarch, Fedora/RHEL, Debian/Ubuntu biarch (libc6-i386).
            lib_dirs: &["lib/i386-linux-gnu", "lib", "lib32"],
            elf_class: 1,
            elf_machine: 3, // EM_386
            syscall_version: "2.0",
            max_glibc: "2.3",
        }),
    },
    Arch {
        rust: "aarch64",
        native: Build {
            name: "aarch64",
            target_cc: true,
            cflags: &[],
            cross_cc: "aarch64-linux-gnu-gcc",
            toolchain_package: "gcc-aarch64-linux-gnu",
            // Debian multiarch, Fedora/RHEL/SUSE.
            lib_dirs: &["lib/aarch64-linux-gnu", "lib64"],
            elf_class: 2,
            elf_machine: 183, // EM_AARCH64
            syscall_version: "2.17",
            max_glibc: "2.17",
        },
        // 32-bit ARM (hard-float, armhf) processes, on kernels and CPUs that run them. aarch64 gcc
        // has no -m32: only a cross compiler makes this build.
        compat: Some(Build {
            name: "armhf",
            target_cc: false,
            cflags: &[],
            cross_cc: "arm-linux-gnueabihf-gcc",
            toolchain_package: "gcc-arm-linux-gnueabihf",
            // Debian multiarch, Fedora armhfp.
            lib_dirs: &["lib/arm-linux-gnueabihf", "lib"],
            elf_class: 1,
            elf_machine: 40, // EM_ARM
            syscall_version: "2.4",
            max_glibc: "2.4",
        }),
    },
];

/// The table entry for Rust's architecture name `rust`.
pub fn find(rust: &str) -> Option<&'static Arch> {
    ARCHES.iter().find(|a| a.rust == rust)
}

/// Parses a glibc version (`2.2.5`, `2.17`) into comparable parts; `None` if it is not one.
pub fn parse_glibc_version(v: &str) -> Option<(u32, u32, u32)> {
    let mut parts = v.split('.').map(|p| p.parse::<u32>().ok());
    let major = parts.next()??;
    let minor = parts.next().unwrap_or(Some(0))?;
    let patch = parts.next().unwrap_or(Some(0))?;
    parts.next().is_none().then_some((major, minor, patch))
}

impl Build {
    /// Whether `bytes` start with an ELF header of this build's class and machine; `Err` says what
    /// they are instead.
    pub fn check_elf(&self, bytes: &[u8]) -> Result<(), String> {
        if bytes.len() < 20 || &bytes[..4] != b"\x7fELF" {
            return Err("not an ELF file".into());
        }
        let class = bytes[4];
        let machine = u16::from_le_bytes([bytes[18], bytes[19]]);
        if (class, machine) == (self.elf_class, self.elf_machine) {
            Ok(())
        } else {
            Err(format!(
                "an ELF file of class {class} for machine {machine}, not class {} machine {} ({})",
                self.elf_class, self.elf_machine, self.name
            ))
        }
    }
}
