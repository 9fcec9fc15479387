//! Fault injection: envc is killed with SIGKILL (its pid alone, and its whole process group) at
//! every failpoint of a build, a seal, a working root's creation and reset, a gc, and while
//! `envc run`'s command runs, on overlayfs and on btrfs (a loop-file filesystem). After each kill:
//!
//! - (c) no builder process is left (none of the killed process group, none whose command line or
//!   working directory is in the store);
//! - (b) no mount is left, in the store or anywhere else (only working roots may stay mounted);
//! - (d) a decoy file in the host's /dev/shm (which mmdebstrap binds into its chroot) is intact;
//! - (a) the next plain `envc apply` succeeds without help, and (b) and (d) hold after it too;
//! - (e) the working root's tree (names, types, modes, owners, content digests, symlink targets;
//!   not times) equals a reference root built without kills in a store of its own from the same
//!   spec, so every reused layer holds the content of its id;
//! - (f) after a sweeping `gc`, the store holds no staging area, nothing in tmp/, no half-written
//!   record, and every sealed layer has its meta record and every meta record its layer.
//!
//! Every case is a fresh store; the steps are deterministic (tar bases made by the test, `run`
//! steps writing fixed content), so the trees must be equal. A test collects every failing check
//! of every case, each named `[backend kill-pid|kill-group case] (check) what`, and fails at the
//! end with all of them. `ENVC_CRASH_CASES=seal,gc` runs only the cases whose names contain one
//! of the words. The Debian case (mmdebstrap killed mid-build, ~1 min per kill) is a test of its
//! own: `cargo test --test crash debian`.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use common::crash::{
    Decoy, MODES, Mode, Tree, Trigger, kill_at, leftover_processes, mounts, run_limited,
    store_leftovers, tree, tree_diff, wait_no_new_mounts,
};
use common::{Kind, TestStore, privileged};

/// Mount and process checks look at the whole machine: one case at a time.
static SERIAL: Mutex<()> = Mutex::new(());

/// How long a killed envc's processes may take to go: enough to die, too short for the 320 MiB
/// tar base (about 3 s when tar reads the tarball itself; stalled when envc, stopped, feeds it)
/// or mmdebstrap to finish.
const GRACE: Duration = Duration::from_secs(1);

const BASE: &str = "base \"tar\" \"busybox.tar.gz\"\n";

/// The spec every case kills and re-applies. Its steps, in failpoint count order: 1 the base,
/// 2 `one`'s run (prints `started`, then writes after a pause, so it is running when killed),
/// 3 and 4 the copies, 5 the env, 6 `two`'s run (which also deletes a file of `one`: a whiteout).
/// Seals: 1 base, 2 one, 3 files, 4 two.
fn main_spec() -> String {
    format!(
        "name \"crash\"\n{BASE}\
         layer \"one\" {{\n  run \"echo started; sleep 0.5; echo one > /one.txt; chmod 0640 /one.txt; ln -s one.txt /one.link; mkdir -p /opt/d; echo x > /opt/d/x; echo y > /opt/d/y\"\n}}\n\
         layer \"files\" {{\n  copy \"files/tree\" \"/opt/tree\"\n  copy \"files/greeting\" \"/etc/greeting\" mode=\"0600\" owner=\"builder\"\n}}\n\
         layer \"two\" {{\n  env GREETING=\"hi\"\n  run \"echo $GREETING > /two.txt; chown builder /two.txt; rm /opt/d/x\"\n}}\n"
    )
}

/// Layers gc removes (their root is dropped; the base is shared with the main spec, so it stays).
fn old_spec() -> String {
    format!(
        "name \"old\"\n{BASE}layer \"old1\" {{ run \"echo old1 > /old1\" }}\nlayer \"old2\" {{ run \"echo old2 > /old2\" }}\n"
    )
}

/// A tar base big enough (320 MiB to unpack) that tar is still running when envc is killed.
fn big_spec() -> String {
    "name \"big\"\nbase \"tar\" \"big.tar.gz\"\nlayer \"one\" { run \"echo one > /one.txt\" }\n"
        .to_owned()
}

/// The busybox root plus a 320 MiB file of zeros (tar needs about 3 s to unpack it), made once
/// per test process in `$TMPDIR/envc-bigtar-PID` (those of processes that are gone are removed).
fn big_tarball() -> PathBuf {
    static TAR: OnceLock<PathBuf> = OnceLock::new();
    TAR.get_or_init(|| {
        let tmp = std::env::temp_dir();
        for e in std::fs::read_dir(&tmp).into_iter().flatten().flatten() {
            let name = e.file_name();
            let pid = name.to_str().and_then(|n| n.strip_prefix("envc-bigtar-"));
            if pid.is_some_and(|p| !Path::new("/proc").join(p).exists()) {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
        let dir = tmp.join(format!("envc-bigtar-{}", std::process::id()));
        let root = dir.join("root");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&root).unwrap();
        let ok = |c: &mut Command| assert!(c.status().unwrap().success(), "{c:?}");
        ok(Command::new("tar")
            .arg("-xzf")
            .arg(common::busybox_tarball())
            .arg("-C")
            .arg(&root));
        let f = std::fs::File::create(root.join("big.bin")).unwrap();
        f.set_len(320 << 20).unwrap();
        let tar = dir.join("big.tar.gz");
        ok(Command::new("tar")
            .arg("-czf")
            .arg(&tar)
            .arg("-C")
            .arg(&root)
            .arg("."));
        std::fs::remove_dir_all(&root).unwrap();
        tar
    })
    .clone()
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Spec {
    Main,
    Big,
}

/// What the store holds before the killed command.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Setup {
    /// Nothing.
    Fresh,
    /// The main spec applied.
    Applied,
    /// The main spec applied, and a file written into its working root.
    Changed,
    /// The old spec applied and its root removed (its layers unused), then the main spec applied.
    OldUnused,
}

/// The command that is killed.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Action {
    Apply,
    Reset,
    Gc,
    Run,
}

struct Case {
    name: &'static str,
    spec: Spec,
    setup: Setup,
    action: Action,
    trigger: Trigger,
}

const fn fp(
    name: &'static str,
    spec: Spec,
    setup: Setup,
    action: Action,
    point: &'static str,
) -> Case {
    Case {
        name,
        spec,
        setup,
        action,
        trigger: Trigger::Failpoint(point),
    }
}

use Action::*;
use Setup::*;
use Spec::*;

const CASES: &[Case] = &[
    fp("tar-base-running", Big, Fresh, Apply, "tool-running"),
    fp("run-step-running", Main, Fresh, Apply, "step-output"),
    fp("copy-before", Main, Fresh, Apply, "step-before#3"),
    fp("copy-after", Main, Fresh, Apply, "step-after#3"),
    fp("seal-before", Main, Fresh, Apply, "seal-before#2"),
    fp("seal-recorded", Main, Fresh, Apply, "seal-recorded#2"),
    fp("seal-published", Main, Fresh, Apply, "seal-published#2"),
    fp("seal-base-recorded", Main, Fresh, Apply, "seal-recorded#1"),
    fp(
        "seal-base-published",
        Main,
        Fresh,
        Apply,
        "seal-published#1",
    ),
    fp("root-before", Main, Fresh, Apply, "root-before"),
    fp("root-recorded", Main, Fresh, Apply, "root-recorded"),
    fp("root-made", Main, Fresh, Apply, "root-made"),
    fp(
        "reset-old-root-dropped",
        Main,
        Changed,
        Reset,
        "root-dropped",
    ),
    fp(
        "gc-data-removed-no-meta",
        Main,
        OldUnused,
        Gc,
        "gc-removed#1",
    ),
    fp("gc-between-two-layers", Main, OldUnused, Gc, "gc-between#1"),
    Case {
        name: "run-command-running",
        spec: Main,
        setup: Applied,
        action: Run,
        trigger: Trigger::Output {
            stdout: true,
            text: "ready",
            delay: Duration::from_millis(100),
        },
    },
];

fn say(line: &str) {
    // Straight to stderr: libtest hides what a passing test prints with eprintln!.
    let _ = writeln!(std::io::stderr(), "{line}");
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n    ")
}

/// A store for one case with the specs and the files they copy.
fn fixture(kind: Kind, name: &str) -> TestStore {
    let t = TestStore::new(kind, name);
    std::fs::create_dir_all(t.specs.join("files/tree/sub")).unwrap();
    std::fs::write(t.specs.join("files/tree/sub/a.txt"), "a\n").unwrap();
    std::os::unix::fs::symlink("sub/a.txt", t.specs.join("files/tree/link")).unwrap();
    std::fs::write(t.specs.join("files/greeting"), "hello from the host\n").unwrap();
    std::fs::copy(big_tarball(), t.specs.join("big.tar.gz")).unwrap();
    t.spec("main.kdl", &main_spec());
    t.spec("old.kdl", &old_spec());
    t.spec("big.kdl", &big_spec());
    t
}

fn spec_path(t: &TestStore, spec: Spec) -> PathBuf {
    t.specs.join(match spec {
        Main => "main.kdl",
        Big => "big.kdl",
    })
}

/// The trees of the specs' roots, built without kills.
struct Reference {
    main: Tree,
    old: Tree,
    big: Tree,
}

fn reference(kind: Kind) -> Reference {
    let t = fixture(kind, "crash-ref");
    let get = |name: &str| {
        let r = t.apply(&t.specs.join(name));
        tree(&r.root())
    };
    Reference {
        main: get("main.kdl"),
        old: get("old.kdl"),
        big: get("big.kdl"),
    }
}

fn apply(t: &TestStore, spec: &Path, extra: &[&str]) -> Result<PathBuf, String> {
    let mut cmd = t.cmd();
    cmd.arg("apply").arg(spec).args(extra);
    match run_limited(cmd, Duration::from_secs(300)) {
        Err(e) => Err(e),
        Ok(r) if r.code != 0 => Err(format!(
            "exit {}; stderr:\n    {}",
            r.code,
            tail(&r.stderr, 15)
        )),
        Ok(r) => Ok(r.root()),
    }
}

/// One case: set up, kill, check. Returns the failing checks.
fn case(kind: Kind, mode: Mode, c: &Case, refs: &Reference, shm: &Decoy) -> Vec<String> {
    let label = format!("[{kind:?} {mode} {}]", c.name);
    let mut fails = Vec::new();
    let mut fail = |check: &str, what: String| fails.push(format!("{label} {check}: {what}"));
    let t = fixture(kind, "crash");
    let main = spec_path(&t, Main);
    let old = t.specs.join("old.kdl");
    // Set up (without kills: a failure here is the harness's).
    match c.setup {
        Fresh => {}
        Applied => {
            t.apply(&main);
        }
        Changed => {
            let r = t.apply(&main);
            std::fs::write(r.root().join("user-change"), "mine\n").unwrap();
        }
        OldUnused => {
            t.apply(&old);
            let r = t.envc(&["rm", "old"]);
            assert_eq!(r.code, 0, "{label} setup: rm old: {}", r.stderr);
            t.apply(&main);
        }
    }
    let baseline = mounts();
    let spec = spec_path(&t, c.spec);
    let mut cmd = t.cmd();
    match c.action {
        Apply => cmd.arg("apply").arg(&spec),
        Reset => cmd.arg("apply").arg(&spec).arg("--reset"),
        Gc => cmd.args(["gc", "--keep-bytes", "0"]),
        Run => {
            cmd.arg("run")
                .arg(&spec)
                .args(["--", "/bin/sh", "-c", "echo ready; exec sleep 120"])
        }
    };
    let killed = match kill_at(cmd, c.trigger, mode) {
        Ok(k) => k,
        Err(e) => {
            fail("harness", format!("the kill did not happen: {e}"));
            return fails;
        }
    };
    if let Trigger::Failpoint(p) = c.trigger {
        let point = p.split('#').next().unwrap();
        if !killed.stderr.contains(&format!("envc: stopped at {point}")) {
            // Stopped, but not by envc's failpoint: the harness's fault.
            fail(
                "harness",
                format!(
                    "a process stopped, but not at {p}: {}",
                    tail(&killed.stderr, 5)
                ),
            );
        }
    }
    // (c) No builder outlives the kill.
    let left = leftover_processes(&t.store, killed.pgid, GRACE);
    if !left.is_empty() {
        fail(
            "(c) processes",
            format!(
                "{} outlived the kill by 1 s (then killed by the test): {}",
                left.len(),
                left.join(" | ")
            ),
        );
    }
    // (b) No mount is left (working roots excepted).
    let m = wait_no_new_mounts(&baseline, &t.store, Duration::from_secs(2));
    if !m.is_empty() {
        fail("(b) mounts after the kill", m.join(", "));
    }
    // (d) The decoy in the host's /dev/shm.
    if let Some(e) = shm.check() {
        fail("(d) decoy after the kill", e);
        shm.restore();
    }
    // (a) The next plain apply succeeds without help.
    let root = match apply(&t, &spec, &[]) {
        Ok(r) => r,
        Err(e) => {
            fail("(a) the next apply", e);
            return fails;
        }
    };
    if let Some(e) = shm.check() {
        fail("(d) decoy after the next apply", e);
        shm.restore();
    }
    let m = new_mounts_after(&baseline, &t);
    if !m.is_empty() {
        fail("(b) mounts after the next apply", m.join(", "));
    }
    // (e) Every reused layer holds the content of its id.
    let want = if c.spec == Big { &refs.big } else { &refs.main };
    if let Some(d) = tree_diff(want, &tree(&root)) {
        fail("(e) tree", format!("{} root: {d}", spec.display()));
    }
    // (f) Records and leftovers, after a gc that only sweeps (for a killed gc: before the spec
    // whose layers it removed is applied again, which would rewrite their records).
    let mut sweep = t.cmd();
    sweep.args(["gc", "--older-than", "3650d"]);
    match run_limited(sweep, Duration::from_secs(120)) {
        Ok(r) if r.code == 0 => {
            let bad = store_leftovers(&t, Duration::from_secs(5));
            if !bad.is_empty() {
                fail("(f) store after apply and gc", bad.join("; "));
            }
        }
        Ok(r) => fail(
            "(f) gc after the kill",
            format!("exit {}: {}", r.code, tail(&r.stderr, 10)),
        ),
        Err(e) => fail("(f) gc after the kill", e),
    }
    if c.action == Gc {
        // The half-removed layers of the old spec: rebuilt or reused with their content.
        match apply(&t, &old, &[]) {
            Ok(root) => {
                if let Some(d) = tree_diff(&refs.old, &tree(&root)) {
                    fail("(e) tree", format!("old.kdl root: {d}"));
                }
            }
            Err(e) => fail("(a) apply of the spec whose layers gc removed", e),
        }
    }
    fails
}

/// Mounts left after the recovery apply: only the working roots may be mounted, and only the
/// roots' own mount points, once each.
fn new_mounts_after(
    baseline: &std::collections::BTreeMap<String, usize>,
    t: &TestStore,
) -> Vec<String> {
    let mut m = wait_no_new_mounts(baseline, &t.store, Duration::from_secs(2));
    let roots = t.store.join("roots");
    for (point, n) in mounts() {
        if Path::new(&point).starts_with(&roots) && n > 1 {
            m.push(format!("{point} is mounted {n} times"));
        }
    }
    m
}

fn selected(c: &Case) -> bool {
    match std::env::var("ENVC_CRASH_CASES") {
        Ok(v) if !v.is_empty() => v.split(',').any(|w| c.name.contains(w.trim())),
        _ => true,
    }
}

fn every_point(kind: Kind) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let started = Instant::now();
    let refs = reference(kind);
    let shm = Decoy::new(Path::new("/dev/shm"), &format!("{kind:?}"));
    let mut fails = Vec::new();
    let mut failed_cases = 0;
    let mut n = 0;
    for c in CASES.iter().filter(|c| selected(c)) {
        for mode in MODES {
            n += 1;
            let t0 = Instant::now();
            let f = case(kind, mode, c, &refs, &shm);
            say(&format!(
                "crash {kind:?} {mode} {}: {} ({:.1} s)",
                c.name,
                if f.is_empty() { "ok" } else { "FAILED" },
                t0.elapsed().as_secs_f64()
            ));
            for l in &f {
                say(&format!("    {l}"));
            }
            failed_cases += usize::from(!f.is_empty());
            fails.extend(f);
        }
    }
    say(&format!(
        "crash {kind:?}: {n} cases, {failed_cases} failed, {:.0} s",
        started.elapsed().as_secs_f64()
    ));
    assert!(
        fails.is_empty(),
        "{failed_cases} of {n} kill cases on {kind:?} failed:\n{}",
        fails.join("\n")
    );
}

#[test]
fn kill_9_at_every_point_overlay() {
    if privileged("kill_9_at_every_point_overlay") {
        every_point(Kind::Overlay);
    }
}

#[test]
fn kill_9_at_every_point_btrfs() {
    if privileged("kill_9_at_every_point_btrfs") {
        every_point(Kind::Btrfs);
    }
}

/// mmdebstrap killed while it installs the essential packages (its proc, sys, dev and /dev/shm
/// mounts are up), by pid and by process group, on overlay: checks (a) to (d) and (f). No tree
/// comparison: a Debian base is not bit-for-bit reproducible (logs, timestamps in files).
#[test]
fn kill_9_during_a_debian_base_build() {
    if !privileged("kill_9_during_a_debian_base_build") {
        return;
    }
    assert!(
        Path::new("/usr/bin/mmdebstrap").exists(),
        "mmdebstrap is missing (apt-get install mmdebstrap)"
    );
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let shm = Decoy::new(Path::new("/dev/shm"), "debian");
    let mut fails = Vec::new();
    for mode in MODES {
        let label = format!("[Overlay {mode} debian-base-running]");
        let mut fail = |check: &str, what: String| fails.push(format!("{label} {check}: {what}"));
        let t0 = Instant::now();
        let t = TestStore::new(Kind::Overlay, "crash-deb");
        let spec = t.spec(
            "deb.kdl",
            "name \"deb\"\nbase \"debian\" suite=\"bookworm\" variant=\"minbase\"\nlayer \"one\" {\n  run \"echo one > /one.txt\"\n}\n",
        );
        let baseline = mounts();
        let mut cmd = t.cmd();
        cmd.arg("apply").arg(&spec);
        let trigger = Trigger::Output {
            stdout: false,
            text: "installing essential packages",
            delay: Duration::from_secs(3),
        };
        match kill_at(cmd, trigger, mode) {
            Err(e) => fail("harness", format!("the kill did not happen: {e}")),
            Ok(killed) => {
                let left = leftover_processes(&t.store, killed.pgid, GRACE);
                if !left.is_empty() {
                    fail(
                        "(c) processes",
                        format!(
                            "{} outlived the kill by 1 s (then killed by the test): {}",
                            left.len(),
                            left.join(" | ")
                        ),
                    );
                }
                let m = wait_no_new_mounts(&baseline, &t.store, Duration::from_secs(2));
                if !m.is_empty() {
                    fail("(b) mounts after the kill", m.join(", "));
                }
                if let Some(e) = shm.check() {
                    fail("(d) decoy after the kill", e);
                    shm.restore();
                }
                match apply(&t, &spec, &[]) {
                    Err(e) => fail("(a) the next apply", e),
                    Ok(root) => {
                        if std::fs::read_to_string(root.join("one.txt"))
                            .ok()
                            .as_deref()
                            != Some("one\n")
                        {
                            fail("(e) tree", "the root lacks /one.txt".into());
                        }
                        let m = new_mounts_after(&baseline, &t);
                        if !m.is_empty() {
                            fail("(b) mounts after the next apply", m.join(", "));
                        }
                        let bad = store_leftovers(&t, Duration::from_secs(5));
                        if !bad.is_empty() {
                            fail("(f) store after the next apply", bad.join("; "));
                        }
                    }
                }
                if let Some(e) = shm.check() {
                    fail("(d) decoy after the next apply", e);
                    shm.restore();
                }
            }
        }
        say(&format!(
            "crash Overlay {mode} debian-base-running: done ({:.0} s)",
            t0.elapsed().as_secs_f64()
        ));
    }
    assert!(fails.is_empty(), "{}", fails.join("\n"));
}
