//! Helpers shared by the shim's integration tests: temporary directories, tool checks that skip
//! (or fail under `ENVC_REQUIRE_PRIVILEGED=1`), compiling the C test program, and running it with
//! and without the library, optionally under strace.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

pub use envc_shim::arch::Build;

/// The C test program (see its header for the commands).
pub const PROG_SOURCE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/c/prog.c");

/// The sync system calls the library suppresses.
pub const SYNC_SYSCALLS: &[&str] = &[
    "fsync",
    "fdatasync",
    "sync_file_range",
    "syncfs",
    "msync",
    "sync",
];

/// Whether a missing tool must fail the test instead of skipping it (CI sets this).
pub fn required() -> bool {
    std::env::var("ENVC_REQUIRE_PRIVILEGED").is_ok_and(|v| v == "1")
}

/// `Some(())` when `available`; otherwise fails under `ENVC_REQUIRE_PRIVILEGED=1`, else prints a
/// SKIP line and returns `None` (use as `let Some(()) = need(..) else { return };`).
pub fn need(available: bool, test: &str, what: &str) -> Option<()> {
    if available {
        return Some(());
    }
    if required() {
        panic!("{test}: {what} is missing, and ENVC_REQUIRE_PRIVILEGED=1 requires it");
    }
    println!("SKIP {test}: {what} is missing");
    None
}

/// Requires the 32-bit build of the library (made when, say, gcc-multilib was installed at build
/// time).
pub fn need_lib32(test: &str) -> Option<()> {
    let what = match &envc_shim::target_arch().compat {
        Some(compat) => format!(
            "the 32-bit ({}) build of the library ({} when envc-shim was built)",
            compat.name, compat.toolchain_package
        ),
        None => "a 32-bit build of the library, which this architecture has none of".into(),
    };
    need(envc_shim::lib32().is_some(), test, &what)
}

/// The C compiler and flags that make programs for `build`: gcc with the build's flags, or the
/// build's cross compiler where gcc cannot target it.
pub fn prog_cc(build: &Build) -> (&'static str, &'static [&'static str]) {
    if build.target_cc {
        ("gcc", build.cflags)
    } else {
        (build.cross_cc, &[])
    }
}

/// A directory removed when dropped.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(label: &str) -> TempDir {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("envc-shim-test-{}-{n}-{label}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// A new empty subdirectory, named after `name` (made unique).
    pub fn subdir(&self, name: &str) -> PathBuf {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = self
            .0
            .join(format!("{name}-{}", N.fetch_add(1, Ordering::Relaxed)));
        fs::create_dir_all(&dir).unwrap();
        dir
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Whether `program --version` (or `-V`) runs.
pub fn have_tool(program: &str) -> bool {
    ["--version", "-V"].iter().any(|arg| {
        Command::new(program)
            .arg(arg)
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

/// Compiles the test program with `cc` and `flags` into `out`; `Err` with the compiler's output on
/// failure.
pub fn compile_prog(cc: &str, out: &Path, flags: &[&str]) -> Result<(), String> {
    let result = Command::new(cc)
        .args(flags)
        .args(["-Wall", "-o"])
        .arg(out)
        .arg(PROG_SOURCE)
        .env("LC_ALL", "C")
        .output()
        .map_err(|e| format!("cannot run {cc}: {e}"))?;
    if result.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&result.stderr).into_owned())
    }
}

/// Whether this machine can build and run programs for `build` (for i386: gcc-multilib; for
/// armhf: a cross gcc, the armhf libc and a kernel and CPU that run 32-bit ARM code).
pub fn can_build_and_run(build: &Build, scratch: &Path) -> bool {
    let src = scratch.join("probe.c");
    fs::write(&src, "int main(void) { return 0; }\n").unwrap();
    let out = scratch.join(format!("probe-{}", build.name));
    let (cc, flags) = prog_cc(build);
    Command::new(cc)
        .args(flags)
        .arg("-o")
        .arg(&out)
        .arg(&src)
        .output()
        .is_ok_and(|o| o.status.success())
        && Command::new(&out).status().is_ok_and(|s| s.success())
}

/// Writes the library build to `dir/libenvc-nosync.so`, for preloading it directly.
pub fn write_lib(dir: &Path, bytes: &[u8]) -> PathBuf {
    let path = dir.join(envc_shim::LIB_NAME);
    fs::write(&path, bytes).unwrap();
    path
}

/// A command for `prog` with `LD_PRELOAD` set to `preload` (or unset).
pub fn prog_command(prog: &Path, preload: Option<&str>, args: &[&str]) -> Command {
    let mut cmd = Command::new(prog);
    cmd.args(args).env("LC_ALL", "C");
    match preload {
        Some(value) => cmd.env("LD_PRELOAD", value),
        None => cmd.env_remove("LD_PRELOAD"),
    };
    cmd
}

/// Runs a command and returns its output, failing the test with its stderr when it fails.
pub fn run_ok(mut cmd: Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The program's `key=value` lines.
pub fn parse_kv(stdout: &[u8]) -> BTreeMap<String, String> {
    String::from_utf8_lossy(stdout)
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// What a run under strace gave: the program's output and the sync system calls per name.
pub struct Traced {
    pub output: Output,
    pub calls: BTreeMap<String, u64>,
}

impl Traced {
    pub fn total(&self) -> u64 {
        self.calls.values().sum()
    }

    pub fn get(&self, name: &str) -> u64 {
        self.calls.get(name).copied().unwrap_or(0)
    }
}

/// The name under which [`SYNC_SYSCALLS`] counts a system call strace reports, if it is one:
/// 32-bit ARM's sync_file_range is `sync_file_range2` (`arm_sync_file_range` in some strace
/// versions).
fn sync_syscall(name: &str) -> Option<&'static str> {
    let name = match name {
        "sync_file_range2" | "arm_sync_file_range" => "sync_file_range",
        other => other,
    };
    SYNC_SYSCALLS.iter().copied().find(|s| *s == name)
}

/// Runs `prog args` under `strace -f` tracing the sync system calls, with `LD_PRELOAD=preload`
/// passed to the traced program only (`strace -E`), and counts the calls the kernel saw.
pub fn strace_prog(prog: &Path, preload: Option<&str>, args: &[&str], scratch: &Path) -> Traced {
    let log = scratch.join(format!(
        "strace-{}.log",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    let mut cmd = Command::new("strace");
    cmd.args(["-f", "-qq", "-o"])
        .arg(&log)
        // A regular expression, so that names only some architectures have are no error.
        .arg(format!(
            "-etrace=/^({}|sync_file_range2|arm_sync_file_range)$",
            SYNC_SYSCALLS.join("|")
        ))
        .env("LC_ALL", "C")
        .env_remove("LD_PRELOAD");
    if let Some(value) = preload {
        cmd.arg("-E").arg(format!("LD_PRELOAD={value}"));
    }
    cmd.arg(prog).args(args);
    let output = run_ok(cmd);
    let trace = fs::read_to_string(&log).unwrap();
    let _ = fs::remove_file(&log);
    let mut calls = BTreeMap::new();
    for line in trace.lines() {
        // "1234  fsync(3) = 0", or "fsync(3) = 0" without a pid.
        let line = line.trim_start_matches(|c: char| c.is_ascii_digit() || c.is_whitespace());
        let Some((name, _)) = line.split_once('(') else {
            continue;
        };
        if let Some(name) = sync_syscall(name) {
            *calls.entry(name.to_string()).or_insert(0) += 1;
        }
    }
    Traced { output, calls }
}

/// Checks the `prog sync` output: every call succeeded, and whether the O_SYNC open kept its flags.
pub fn check_sync_output(out: &Output, n: u64, expect_osync: bool) {
    let kv = parse_kv(&out.stdout);
    assert_eq!(
        kv.get("fsync_ok").map(String::as_str),
        Some(n.to_string().as_str()),
        "{kv:?}"
    );
    let want = if expect_osync { "1" } else { "0" };
    assert_eq!(
        kv["open_osync.sync"], want,
        "O_SYNC read back with F_GETFL: {kv:?}"
    );
    assert_eq!(
        kv["open_osync.dsync"], want,
        "O_DSYNC read back with F_GETFL: {kv:?}"
    );
}

/// ld.so's complaints about LD_PRELOAD in a program's stderr, if any.
pub fn preload_errors(stderr: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(stderr);
    let bad = [
        "cannot be preloaded",
        "wrong ELF class",
        "ERROR: ld.so",
        "version `GLIBC_",
    ];
    bad.iter()
        .any(|b| text.contains(b))
        .then(|| text.into_owned())
}
