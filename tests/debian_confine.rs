//! Real builds in a real Debian root, as build steps are confined (issue 11): maintainer scripts
//! that add users and groups and set file capabilities, `su` and `sudo` (setuid root), a compiler
//! run, ptrace by strace and gdb, ping without a network (as root and as a user), a 32-bit static
//! program, and `envc run` of the result.
//!
//! One environment, one apply. Every check after the `packages` step runs through a small
//! recorder (`record NAME CMD...`) that keeps the command's stdout, stderr and exit status in
//! `/out` and always succeeds, so one run reports every check that fails, each with its layer,
//! its command and what it printed, rather than stopping at the first. Slow like tests/debian.rs:
//! a bookworm minbase from the host's apt sources plus gcc, gdb and their libraries.

mod common;

use std::fmt::Write as _;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use common::{Kind, TestStore, privileged};

/// `record NAME CMD...`: runs CMD, keeps its stdout, stderr and exit status in /out, exits 0.
const RECORD: &str = r#"#!/bin/sh
name=$1
shift
"$@" >"/out/$name.out" 2>"/out/$name.err"
echo $? >"/out/$name.status"
exit 0
"#;

/// Compiled by gcc inside the root, then run directly and under gdb (a breakpoint in `work`).
const HELLO_C: &str = r#"#include <stdio.h>

int work(int n) { return n * 6; }

int main(void) {
    printf("hello from gcc: %d\n", work(7));
    return 0;
}
"#;

/// Compiled on the host with `cc -m32 -static`: fork, wait, a socketpair, the clock, a file
/// written and fsynced (the compat syscall table, under each seccomp filter of the step).
const HELLO32_C: &str = r#"#include <fcntl.h>
#include <stdio.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv) {
    int sv[2], st;
    char c = '?';
    struct timespec ts;
    if (argc != 2) return 2;
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv)) { perror("socketpair"); return 1; }
    pid_t p = fork();
    if (p < 0) { perror("fork"); return 1; }
    if (p == 0) { write(sv[1], "x", 1); _exit(7); }
    if (waitpid(p, &st, 0) != p) { perror("waitpid"); return 1; }
    if (read(sv[0], &c, 1) != 1) { perror("read"); return 1; }
    if (clock_gettime(CLOCK_REALTIME, &ts)) { perror("clock_gettime"); return 1; }
    int fd = open(argv[1], O_CREAT | O_WRONLY | O_TRUNC, 0644);
    if (fd < 0 || write(fd, "w", 1) != 1 || fsync(fd) || close(fd)) { perror(argv[1]); return 1; }
    printf("32-bit: pointer %zu bytes, child exited %d, read %c, wrote %s\n", sizeof(void *),
           WIFEXITED(st) ? WEXITSTATUS(st) : -1, c, argv[1]);
    return 0;
}
"#;

/// An environment whose `packages` step runs its own `apt-get`, which marks the caches.
const ATTACKER: &str = r##"name "attacker"
base "debian" suite="bookworm" variant="minbase"

layer "evil" {
    run "printf '#!/bin/sh\\ntouch /var/lib/apt/lists/POISON /var/cache/apt/archives/POISON\\n' > /usr/local/bin/apt-get && chmod 755 /usr/local/bin/apt-get"
    packages "hello"
}
"##;

const SPEC: &str = r##"name "confined"
base "debian" suite="bookworm" variant="minbase"

layer "packages" {
    copy "record" "/usr/local/bin/record" mode="0755"
    run "mkdir -m 1777 /out"
    // iputils-ping's postinst runs setcap; uuid-runtime's adds a system user and group.
    packages "gcc" "gdb" "iputils-ping" "libc6-dev" "strace" "sudo" "uuid-runtime"
    run "record ping-caps getcap /usr/bin/ping"
}

layer "users" {
    run "useradd -m builder"
    run #"echo 'builder ALL=(root) NOPASSWD: /usr/bin/id' > /etc/sudoers.d/builder && chmod 0440 /etc/sudoers.d/builder"#
    run #"record su su builder -c 'id -u; id -un; touch /tmp/x; stat -c %U /tmp/x'"#
    run #"record su-login su - builder -c 'pwd; echo $HOME'"#
    run "record sudo sudo -u builder id"
    run #"record sudo-setuid su builder -c 'sudo -n /usr/bin/id -u'"#
}

layer "compile" {
    copy "hello.c" "/src/hello.c"
    run "record gcc gcc -g -O0 -Wall -Werror -o /opt/hello /src/hello.c"
    run "record hello /opt/hello"
}

layer "trace" {
    run #"record strace strace -f -o /out/strace.trace sh -c '/bin/true; echo traced'"#
    run #"record gdb gdb -batch -ex 'break work' -ex run -ex bt -ex continue --args /opt/hello"#
    run "record gdb-true gdb -batch -ex run --args /bin/true"
}

layer "ping" {
    run "record ping-root ping -c1 -W5 127.0.0.1"
    run #"record ping-su su builder -c 'ping -c1 -W5 127.0.0.1'"#
    run "record ping-user ping -c1 -W5 127.0.0.1" user="builder"
    run #"record ping-su-net su builder -c 'ping -c1 -W5 127.0.0.1'"# network=#true
}

layer "compat32" {
    copy "hello32" "/usr/local/bin/hello32" mode="0755"
    run "record m32 hello32 /out/m32-off.file"
    run "record m32-seccomp hello32 /out/m32-seccomp.file" sync="seccomp"
}
"##;

/// What `record NAME` kept of a step's command.
struct Recorded {
    status: Option<String>,
    out: String,
    err: String,
}

fn recorded(root: &Path, name: &str) -> Recorded {
    let read = |ext: &str| std::fs::read_to_string(root.join(format!("out/{name}.{ext}"))).ok();
    Recorded {
        status: read("status").map(|s| s.trim().to_owned()),
        out: read("out").unwrap_or_default(),
        err: read("err").unwrap_or_default(),
    }
}

/// The checks' failures, each naming its layer and command with what the command printed.
#[derive(Default)]
struct Failures(Vec<String>);

impl Failures {
    /// Command `name` of `layer` exited 0 and its stdout passes `ok` (described by `want`).
    fn step(
        &mut self,
        root: &Path,
        layer: &str,
        name: &str,
        want: &str,
        ok: impl Fn(&str) -> bool,
    ) {
        let r = recorded(root, name);
        let problem = match r.status.as_deref() {
            None => "never ran (no /out/NAME.status: an earlier step of the layer failed?)".into(),
            Some("0") if ok(&r.out) => return,
            Some("0") => format!("exited 0, but stdout is not {want}"),
            Some(s) => match s.parse::<i32>() {
                Ok(n) if n > 128 => format!("killed by signal {} (status {n})", n - 128),
                _ => format!("exited {s}"),
            },
        };
        let mut m = format!("layer `{layer}`, `record {name}`: {problem}\n");
        let _ = write!(m, "  stdout: {:?}\n  stderr: {:?}", r.out, r.err);
        self.0.push(m);
    }

    fn host(&mut self, what: &str, ok: bool, detail: impl std::fmt::Display) {
        if !ok {
            self.0.push(format!("{what}: {detail}"));
        }
    }
}

#[test]
fn real_builds_work_in_a_debian_root() {
    if !privileged("real_builds_work_in_a_debian_root") {
        return;
    }
    assert!(
        Path::new("/usr/bin/mmdebstrap").exists(),
        "mmdebstrap is missing (apt-get install mmdebstrap)"
    );
    let t = TestStore::new(Kind::Overlay, "debian-confine");
    std::fs::write(t.specs.join("record"), RECORD).unwrap();
    std::fs::write(t.specs.join("hello.c"), HELLO_C).unwrap();
    std::fs::write(t.specs.join("hello32.c"), HELLO32_C).unwrap();
    let cc = Command::new("cc")
        .args(["-m32", "-static", "-O2", "-o"])
        .arg(t.specs.join("hello32"))
        .arg(t.specs.join("hello32.c"))
        .output()
        .expect("cc");
    assert!(
        cc.status.success(),
        "cc -m32 -static (apt-get install gcc-multilib): {}",
        String::from_utf8_lossy(&cc.stderr)
    );
    let spec = t.spec("env.kdl", SPEC);

    // Another environment on the same base whose `packages` step runs a hostile apt-get that
    // writes into the apt caches it is given (red-team finding: planted lists were installed by
    // every other environment).
    let attacker = t.spec("attacker.kdl", ATTACKER);
    let _ = t.envc(&["apply", attacker.to_str().unwrap()]);

    // A failing `packages` step (or a step outside the recorder) fails the apply, whose report
    // points at the step's line.
    let r = t.apply(&spec);
    assert_eq!(
        r.built(),
        // The base was built by the attacker's apply.
        ["packages", "users", "compile", "trace", "ping", "compat32"],
        "{}",
        r.stderr
    );
    let root = r.root();
    let mut f = Failures::default();

    // The attacker's marks are only in the caches of steps that start from its own tree.
    let mut marked = Vec::new();
    for cache in ["apt-lists", "debs"] {
        for key in std::fs::read_dir(t.store.join("cache").join(cache)).unwrap() {
            let key = key.unwrap().path();
            if key.join("POISON").exists() {
                marked.push(key);
            }
        }
    }
    assert_eq!(
        marked.len(),
        2,
        "the attacker's apt-get marked {marked:?}: want exactly its own lists and debs caches"
    );

    // Maintainer scripts: setcap on ping (it stays without the setuid bit), a system user and
    // group with a setgid directory of theirs.
    f.step(
        &root,
        "packages",
        "ping-caps",
        "`/usr/bin/ping cap_net_raw=ep`",
        |o| o == "/usr/bin/ping cap_net_raw=ep\n",
    );
    let file = |p: &str| std::fs::read_to_string(root.join(p)).unwrap_or_default();
    let meta = |p: &str| std::fs::symlink_metadata(root.join(p)).ok();
    let ping = meta("usr/bin/ping");
    f.host(
        "/usr/bin/ping is not setuid (setcap worked)",
        ping.as_ref().is_some_and(|m| m.mode() & 0o4000 == 0),
        format!("{:o}", ping.map_or(0, |m| m.mode())),
    );
    let passwd = file("etc/passwd");
    let group = file("etc/group");
    let uuidd_gid = group
        .lines()
        .find_map(|l| l.strip_prefix("uuidd:x:"))
        .and_then(|r| r.split(':').next()?.parse::<u32>().ok());
    f.host(
        "uuid-runtime's postinst added the uuidd user",
        passwd.lines().any(|l| l.starts_with("uuidd:")),
        &passwd,
    );
    f.host(
        "uuid-runtime's postinst added the uuidd group",
        uuidd_gid.is_some(),
        &group,
    );
    let libuuid = meta("var/lib/libuuid");
    f.host(
        "/var/lib/libuuid is mode 2775 and group uuidd",
        libuuid.as_ref().is_some_and(|m| {
            m.permissions().mode() & 0o7777 == 0o2775 && Some(m.gid()) == uuidd_gid
        }),
        format!(
            "{:?}",
            libuuid.map(|m| (format!("{:o}", m.mode()), m.gid()))
        ),
    );
    for setuid in ["usr/bin/su", "usr/bin/sudo"] {
        let m = meta(setuid);
        f.host(
            &format!("/{setuid} is setuid root"),
            m.as_ref()
                .is_some_and(|m| m.uid() == 0 && m.mode() & 0o4000 != 0),
            format!("{:?}", m.map(|m| (format!("{:o}", m.mode()), m.uid()))),
        );
    }

    // Users: useradd, util-linux su, sudo as root, and sudo's setuid bit used by the user.
    f.host(
        "useradd made builder with uid 1000",
        passwd
            .lines()
            .any(|l| l.starts_with("builder:x:1000:1000:") && l.contains(":/home/builder:")),
        &passwd,
    );
    f.step(&root, "users", "su", "`1000 builder builder`", |o| {
        o == "1000\nbuilder\nbuilder\n"
    });
    f.step(&root, "users", "su-login", "builder's home twice", |o| {
        o == "/home/builder\n/home/builder\n"
    });
    let id_builder = "uid=1000(builder) gid=1000(builder) groups=1000(builder)\n";
    f.step(&root, "users", "sudo", id_builder, |o| o == id_builder);
    f.step(
        &root,
        "users",
        "sudo-setuid",
        "`0` (uid 0 through setuid sudo)",
        |o| o == "0\n",
    );

    // The compiler.
    f.step(&root, "compile", "gcc", "empty", str::is_empty);
    f.step(&root, "compile", "hello", "`hello from gcc: 42`", |o| {
        o == "hello from gcc: 42\n"
    });

    // ptrace of a child: strace -f follows sh's fork; gdb stops at a breakpoint and unwinds.
    f.step(&root, "trace", "strace", "`traced`", |o| o == "traced\n");
    let trace = file("out/strace.trace");
    let pids: std::collections::BTreeSet<&str> = trace
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    f.host(
        "strace -f traced sh and its child running /bin/true, both to their exit",
        pids.len() >= 2
            && trace.contains("execve(\"/bin/true\"")
            && trace.matches("+++ exited with 0 +++").count() >= 2,
        &trace,
    );
    // (gdb may warn on stderr that it cannot disable address randomization; that is fine.)
    f.step(
        &root,
        "trace",
        "gdb",
        "a stop in work, a backtrace into main, the program's output and its normal exit",
        |o| {
            o.contains("Breakpoint 1, work (n=7) at /src/hello.c:3")
                && o.contains("#0  work (n=7) at /src/hello.c:3")
                && o.contains(" in main () at /src/hello.c:6")
                && o.contains("hello from gcc: 42\n")
                && o.contains("exited normally]")
        },
    );
    f.step(&root, "trace", "gdb-true", "a normal exit", |o| {
        o.contains("exited normally]")
    });

    // ping: as root and as a user, in the step's own network namespace and with the host's.
    let pinged = |o: &str| o.contains("1 packets transmitted, 1 received");
    f.step(&root, "ping", "ping-root", "one reply", pinged);
    f.step(&root, "ping", "ping-su", "one reply", pinged);
    f.step(
        &root,
        "ping",
        "ping-user",
        "one reply (run user=\"builder\")",
        pinged,
    );
    f.step(
        &root,
        "ping",
        "ping-su-net",
        "one reply (network=#true)",
        pinged,
    );

    // A 32-bit static program, with sync off and under the sync-suppressing filter.
    for (name, path) in [
        ("m32", "out/m32-off.file"),
        ("m32-seccomp", "out/m32-seccomp.file"),
    ] {
        let want = format!("32-bit: pointer 4 bytes, child exited 7, read x, wrote /{path}\n");
        f.step(&root, "compat32", name, &want, |o| o == want);
        f.host(
            &format!("{name} wrote /{path}"),
            file(path) == "w",
            file(path),
        );
    }

    // `envc run` in a throwaway snapshot of the environment: su, and ping as the user without
    // a network.
    let spec_arg = spec.to_str().unwrap();
    let run = t.envc(&["run", spec_arg, "--", "su", "builder", "-c", "id"]);
    f.host(
        "envc run -- su builder -c id",
        run.code == 0 && run.stdout == id_builder,
        format!(
            "exit {}, stdout {:?}, stderr {:?}",
            run.code, run.stdout, run.stderr
        ),
    );
    let run = t.envc(&[
        "run",
        "--no-network",
        spec_arg,
        "--",
        "su",
        "builder",
        "-c",
        "ping -c1 -W5 127.0.0.1",
    ]);
    f.host(
        "envc run --no-network -- su builder -c 'ping -c1 127.0.0.1'",
        run.code == 0 && pinged(&run.stdout),
        format!(
            "exit {}, stdout {:?}, stderr {:?}",
            run.code, run.stdout, run.stderr
        ),
    );

    assert!(
        f.0.is_empty(),
        "{} of the checks failed:\n\n{}",
        f.0.len(),
        f.0.join("\n\n")
    );
}
