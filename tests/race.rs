//! Races between gc and the commands that use layers, on overlayfs and btrfs (a loop-file
//! filesystem):
//!
//! - gc (`--keep-bytes 0`, in a loop) against applies that drop and re-create working roots of
//!   several environments sharing a prefix: afterwards every root is there (mounted, for overlay)
//!   and its tree equals a reference built without gc, and a plain apply keeps it so;
//! - gc against `envc run`: the command always sees its full root;
//! - two gcs at once: both succeed, and the store stays consistent;
//! - gc while an apply is stopped right after building a layer (failpoint `layer-held`): the
//!   layer stays, and the apply makes its root on it;
//! - gc while `envc run` stopped between its two looks at a layer (failpoint `layer-looked`): the
//!   vanished layer is built again, never reported as damaged.
//!
//! Each race runs a few seconds (`ENVC_RACE_SECS`, default 10) so that gc's window (it decides
//! what is in use, then removes layer after layer) is hit. Failures name the backend, the race
//! and what was wrong.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::crash::{Tree, run_limited, store_leftovers, tree, tree_diff};
use common::{Kind, Run, TestStore, privileged};

/// One race at a time: they load the machine.
static SERIAL: Mutex<()> = Mutex::new(());

const ENVS: usize = 4;

fn say(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

fn race_time() -> Duration {
    Duration::from_secs(
        std::env::var("ENVC_RACE_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(10),
    )
}

/// Environment `r{i}`: the busybox base, a shared layer, and one of its own.
fn env_spec(i: usize) -> String {
    format!(
        "name \"r{i}\"\nbase \"tar\" \"busybox.tar.gz\"\n\
         layer \"shared\" {{ run \"echo shared > /shared.txt; mkdir -p /opt/s; echo s > /opt/s/f\" }}\n\
         layer \"own{i}\" {{ run \"echo own {i} > /own.txt\" }}\n"
    )
}

fn fixture(kind: Kind, name: &str) -> (TestStore, Vec<PathBuf>) {
    let t = TestStore::new(kind, name);
    let specs = (0..ENVS)
        .map(|i| t.spec(&format!("r{i}.kdl"), &env_spec(i)))
        .collect();
    (t, specs)
}

/// The envs' trees, built in a store of their own without gc.
fn references(kind: Kind) -> Vec<Tree> {
    let (t, specs) = fixture(kind, "race-ref");
    specs.iter().map(|s| tree(&t.apply(s).root())).collect()
}

fn envc(t: &TestStore, args: &[&str]) -> Result<Run, String> {
    let mut cmd = t.cmd();
    cmd.args(args);
    let r = run_limited(cmd, Duration::from_secs(120))?;
    if r.code == 0 {
        Ok(r)
    } else {
        let lines: Vec<&str> = r.stderr.lines().collect();
        Err(format!(
            "envc {} exited {}: {}",
            args.join(" "),
            r.code,
            lines[lines.len().saturating_sub(8)..].join(" / ")
        ))
    }
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Runs `gc --keep-bytes 0` until `stop`; returns its failures and how many gcs ran.
fn gc_loop(t: &TestStore, stop: &AtomicBool) -> (Vec<String>, usize) {
    let mut fails = Vec::new();
    let mut n = 0;
    while !stop.load(Ordering::SeqCst) {
        if let Err(e) = envc(t, &["gc", "--keep-bytes", "0"]) {
            fails.push(e);
        }
        n += 1;
    }
    (fails, n)
}

fn race_gc_against_applies(kind: Kind) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let refs = references(kind);
    let (t, specs) = fixture(kind, "race-apply");
    for sp in &specs {
        t.apply(sp);
    }
    let stop = AtomicBool::new(false);
    let started = Instant::now();
    let (gc, appliers) = std::thread::scope(|sc| {
        let gc = sc.spawn(|| gc_loop(&t, &stop));
        // Two appliers, each dropping and re-creating the roots of its environments.
        let appliers: Vec<_> = (0..2)
            .map(|a| {
                let (t, specs, refs) = (&t, &specs, &refs);
                sc.spawn(move || {
                    let mut fails = Vec::new();
                    let mut n = 0;
                    while started.elapsed() < race_time() {
                        for i in (a..ENVS).step_by(2) {
                            let name = format!("r{i}");
                            if let Err(e) = envc(t, &["rm", &name]) {
                                fails.push(e);
                            }
                            match envc(t, &["apply", s(&specs[i])]) {
                                Err(e) => fails.push(e),
                                Ok(r) => {
                                    n += 1;
                                    // The root as the apply left it, while gc still runs.
                                    if let Some(d) = tree_diff(&refs[i], &tree(&r.root())) {
                                        fails.push(format!(
                                            "r{i}'s root right after its apply: {d}"
                                        ));
                                    }
                                }
                            }
                        }
                    }
                    (fails, n)
                })
            })
            .collect();
        let appliers: Vec<_> = appliers.into_iter().map(|h| h.join().unwrap()).collect();
        stop.store(true, Ordering::SeqCst);
        (gc.join().unwrap(), appliers)
    });
    let mut fails: Vec<String> = gc.0.iter().map(|e| format!("gc: {e}")).collect();
    let applies: usize = appliers.iter().map(|a| a.1).sum();
    for (f, _) in appliers {
        fails.extend(f.into_iter().map(|e| format!("apply: {e}")));
    }
    // Afterwards (gc stopped): every root is there with its full tree...
    for (i, want) in refs.iter().enumerate() {
        let root = t.store.join(format!("roots/r{i}/root"));
        if kind == Kind::Overlay && !common::crash::mounts().contains_key(s(&root)) {
            fails.push(format!("after the race: r{i}'s root is not mounted"));
        }
        if let Some(d) = tree_diff(want, &tree(&root)) {
            fails.push(format!("after the race: r{i}'s root: {d}"));
        }
        // ... and a plain apply keeps (or repairs) it.
        match envc(&t, &["apply", s(&specs[i])]) {
            Err(e) => fails.push(format!("after the race: {e}")),
            Ok(r) => {
                if let Some(d) = tree_diff(want, &tree(&r.root())) {
                    fails.push(format!(
                        "after the race and a plain apply: r{i}'s root: {d}"
                    ));
                }
            }
        }
    }
    let bad = store_leftovers(&t, Duration::from_secs(5));
    fails.extend(
        bad.into_iter()
            .map(|b| format!("store after the race: {b}")),
    );
    say(&format!(
        "race {kind:?} gc-against-applies: {} gcs, {applies} applies, {} failures",
        gc.1,
        fails.len()
    ));
    fails.dedup();
    assert!(
        fails.is_empty(),
        "[{kind:?} gc-against-applies] {} failures:\n{}",
        fails.len(),
        fails.join("\n")
    );
}

fn race_gc_against_run(kind: Kind) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (t, specs) = fixture(kind, "race-run");
    // r0 has no working root: only the runs use its layers.
    let stop = AtomicBool::new(false);
    let started = Instant::now();
    let want = "shared\ns\nown 0\n";
    let (gc, (mut fails, runs)) = std::thread::scope(|sc| {
        let gc = sc.spawn(|| gc_loop(&t, &stop));
        let mut fails = Vec::new();
        let mut runs = 0;
        while started.elapsed() < race_time() {
            let r = envc(
                &t,
                &[
                    "run",
                    s(&specs[0]),
                    "--",
                    "/bin/sh",
                    "-c",
                    "sleep 0.2; cat /shared.txt /opt/s/f /own.txt",
                ],
            );
            runs += 1;
            match r {
                Err(e) => fails.push(format!("run: {e}")),
                Ok(r) if r.stdout != want => fails.push(format!(
                    "run: the command saw {:?}, want {want:?}; stderr: {}",
                    r.stdout,
                    r.stderr.lines().last().unwrap_or("")
                )),
                Ok(_) => {}
            }
        }
        stop.store(true, Ordering::SeqCst);
        (gc.join().unwrap(), (fails, runs))
    });
    fails.extend(gc.0.iter().map(|e| format!("gc: {e}")));
    let bad = store_leftovers(&t, Duration::from_secs(5));
    fails.extend(
        bad.into_iter()
            .map(|b| format!("store after the race: {b}")),
    );
    say(&format!(
        "race {kind:?} gc-against-run: {} gcs, {runs} runs, {} failures",
        gc.1,
        fails.len()
    ));
    fails.dedup();
    assert!(
        fails.is_empty(),
        "[{kind:?} gc-against-run] {} failures:\n{}",
        fails.len(),
        fails.join("\n")
    );
}

fn race_two_gcs(kind: Kind) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let refs = references(kind);
    let (t, specs) = fixture(kind, "race-gcs");
    let mut fails = Vec::new();
    let started = Instant::now();
    let mut rounds = 0;
    while started.elapsed() < race_time() || rounds < 3 {
        rounds += 1;
        // r0 keeps its root; the others' layers (but the shared prefix) are unused.
        for (i, sp) in specs.iter().enumerate() {
            t.apply(sp);
            if i > 0 {
                let r = t.envc(&["rm", &format!("r{i}")]);
                assert_eq!(r.code, 0, "rm: {}", r.stderr);
            }
        }
        let (a, b) = std::thread::scope(|sc| {
            let a = sc.spawn(|| envc(&t, &["gc", "--keep-bytes", "0"]));
            let b = sc.spawn(|| envc(&t, &["gc", "--keep-bytes", "0"]));
            (a.join().unwrap(), b.join().unwrap())
        });
        for r in [a, b] {
            if let Err(e) = r {
                fails.push(format!("round {rounds}: gc: {e}"));
            }
        }
        let bad = store_leftovers(&t, Duration::from_secs(5));
        fails.extend(
            bad.into_iter()
                .map(|b| format!("round {rounds}: store: {b}")),
        );
        let layers = std::fs::read_dir(t.store.join("layers")).unwrap().count();
        if layers != 3 {
            fails.push(format!(
                "round {rounds}: {layers} layers left, want 3 (r0's chain: base, shared, own0)"
            ));
        }
        if let Some(d) = tree_diff(&refs[0], &tree(&t.store.join("roots/r0/root"))) {
            fails.push(format!("round {rounds}: r0's root: {d}"));
        }
    }
    say(&format!(
        "race {kind:?} two-gcs: {rounds} rounds, {} failures",
        fails.len()
    ));
    assert!(
        fails.is_empty(),
        "[{kind:?} two-gcs] {} failures:\n{}",
        fails.len(),
        fails.join("\n")
    );
}

/// Stops an apply once its last layer, just built, is held (the failpoint `layer-held`, hit once
/// per layer), runs gc meanwhile, then lets the apply go on: the layer is not removed under it.
fn race_gc_while_built_layer_waits(kind: Kind) {
    use std::process::Stdio;
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let refs = references(kind);
    let (t, specs) = fixture(kind, "race-held");
    let mut cmd = t.cmd();
    cmd.args(["apply", s(&specs[0])])
        .env("ENVC_TEST_STOP_AT", "layer-held#3")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = cmd.spawn().unwrap();
    let pid = child.id();
    let started = Instant::now();
    let stopped = || {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|st| st.rsplit_once(") ").map(|(_, rest)| rest.starts_with('T')))
            .unwrap_or(false)
    };
    while !stopped() {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "[{kind:?}] the apply did not stop at layer-held#3"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let gc = envc(&t, &["gc", "--keep-bytes", "0"]);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGCONT,
    )
    .unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    if let Err(e) = gc {
        panic!("[{kind:?}] gc during the apply: {e}");
    }
    assert!(
        out.status.success(),
        "[{kind:?}] the apply, after gc ran while it held its layers: {stderr}"
    );
    assert!(
        stderr.contains("stopped at layer-held"),
        "[{kind:?}] the apply never stopped: {stderr}"
    );
    let root = t.store.join("roots/r0/root");
    if let Some(d) = tree_diff(&refs[0], &tree(&root)) {
        panic!("[{kind:?}] r0's root after gc ran during its apply: {d}");
    }
}

/// Stops `envc run` at each of the first looks at a layer (the failpoint `layer-looked`: a
/// directory is at `layers/ID`, not yet checked to be a layer; the first looks are the apply's
/// sweep of leftover records, then each layer of the chain, before and under its shared lock),
/// runs gc meanwhile, which removes every layer not held, then lets the run go on: a layer that
/// vanished between the two looks is not there, so it is built again, never reported as damaged.
fn race_gc_between_the_looks_at_a_layer(kind: Kind) {
    use std::process::Stdio;
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (t, specs) = fixture(kind, "race-look");
    let want = "shared\ns\nown 0\n";
    let script = "cat /shared.txt /opt/s/f /own.txt";
    envc(&t, &["run", s(&specs[0]), "--", "/bin/true"]).unwrap();
    let mut stops = 0;
    for nth in 1..=9 {
        let mut cmd = t.cmd();
        cmd.args(["run", s(&specs[0]), "--", "/bin/sh", "-c", script])
            .env("ENVC_TEST_STOP_AT", format!("layer-looked#{nth}"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        let pid = child.id();
        let started = Instant::now();
        let stopped = || {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|st| st.rsplit_once(") ").map(|(_, rest)| rest.starts_with('T')))
                .unwrap_or(false)
        };
        // A run that looks fewer times than `nth` just ends.
        while !stopped() && child.try_wait().unwrap().is_none() {
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "[{kind:?}] the run neither stopped at layer-looked#{nth} nor ended"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        if stopped() {
            stops += 1;
            if let Err(e) = envc(&t, &["gc", "--keep-bytes", "0"]) {
                panic!("[{kind:?}] gc while the run stopped at layer-looked#{nth}: {e}");
            }
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGCONT,
            )
            .unwrap();
        }
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "[{kind:?}] the run, after gc ran while it stopped at layer-looked#{nth}: {stderr}"
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            want,
            "[{kind:?}] what the run saw after layer-looked#{nth}; stderr: {stderr}"
        );
    }
    // Three records swept, then each of the three layers looked at twice.
    assert!(
        stops >= 6,
        "[{kind:?}] the run stopped {stops} times, want 6 or more"
    );
}

macro_rules! on_each_backend {
    ($($name:ident => $body:ident),* $(,)?) => {
        mod overlay {
            $(#[test] fn $name() { if super::privileged(stringify!($name)) { super::$body(super::Kind::Overlay) } })*
        }
        mod btrfs {
            $(#[test] fn $name() { if super::privileged(stringify!($name)) { super::$body(super::Kind::Btrfs) } })*
        }
    };
}

on_each_backend!(
    gc_against_applies_creating_roots => race_gc_against_applies,
    gc_against_run => race_gc_against_run,
    two_gcs_at_once => race_two_gcs,
    gc_while_a_built_layer_waits_for_its_root => race_gc_while_built_layer_waits,
    gc_between_the_looks_at_a_layer => race_gc_between_the_looks_at_a_layer,
);
