//! The fault-injection harness (tests/crash.rs, tests/race.rs, tests/lvm.rs): start envc, stop it
//! at a failpoint (`ENVC_TEST_STOP_AT`, see runtime/src/failpoint.rs) or at a line of its output,
//! kill it with SIGKILL (its pid alone or its whole process group), and the checks made after
//! each kill: leftover processes, leftover mounts, decoy files, trees compared by content, the
//! store's records. Every check returns its failure as text; the caller names the case.

use std::collections::BTreeMap;
use std::fmt;
use std::hash::Hasher;
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;

use super::{Run, TestStore};

/// What gets the SIGKILL.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// envc's pid alone: its children must not outlive it.
    Pid,
    /// envc's whole process group (as a terminal's ^C or a CI runner would).
    Group,
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Pid => "kill-pid",
            Mode::Group => "kill-group",
        })
    }
}

pub const MODES: [Mode; 2] = [Mode::Pid, Mode::Group];

/// When to kill.
#[derive(Clone, Copy, Debug)]
pub enum Trigger {
    /// When a process of envc's group stopped at this failpoint (`POINT` or `POINT#N`).
    Failpoint(&'static str),
    /// `delay` after envc's stdout (`stdout`) or stderr printed a line containing `text`.
    Output {
        stdout: bool,
        text: &'static str,
        delay: Duration,
    },
}

/// A killed envc: what it printed, and its process group.
pub struct Killed {
    pub pgid: i32,
    pub stderr: String,
}

/// Collects what a pipe gives, in a thread of its own (never joined: a surviving child may hold
/// the pipe open).
fn collect(mut r: impl Read + Send + 'static) -> Arc<Mutex<String>> {
    let out = Arc::new(Mutex::new(String::new()));
    let o = out.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 8192];
        while let Ok(n) = r.read(&mut buf) {
            if n == 0 {
                break;
            }
            o.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    out
}

/// The process groups and states of every process: pid -> (pgid, state).
fn process_table() -> BTreeMap<i32, (i32, char)> {
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ppid pgrp ...: comm may hold spaces and parentheses.
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 2..]) else {
            continue;
        };
        let f: Vec<&str> = rest.split(' ').collect();
        if let (Some(state), Some(pgrp)) = (
            f.first().and_then(|s| s.chars().next()),
            f.get(2).and_then(|s| s.parse().ok()),
        ) {
            out.insert(pid, (pgrp, state));
        }
    }
    out
}

fn cmdline(pid: i32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            String::from_utf8_lossy(&b)
                .replace('\0', " ")
                .trim()
                .to_owned()
        })
        .unwrap_or_default()
}

/// Starts `cmd` (an envc command) in a process group of its own, waits for `trigger`, and kills
/// it per `mode`. An error when envc ended before the trigger, or did not reach it in time.
pub fn kill_at(mut cmd: Command, trigger: Trigger, mode: Mode) -> Result<Killed, String> {
    if let Trigger::Failpoint(point) = trigger {
        cmd.env("ENVC_TEST_STOP_AT", point);
    }
    cmd.process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| format!("cannot start envc: {e}"))?;
    let pgid = child.id() as i32;
    let stdout = collect(child.stdout.take().unwrap());
    let stderr = collect(child.stderr.take().unwrap());
    let started = Instant::now();
    let mut seen_at: Option<Instant> = None;
    loop {
        let reached = match trigger {
            Trigger::Failpoint(_) => process_table()
                .values()
                .any(|&(g, state)| g == pgid && state == 'T'),
            Trigger::Output {
                stdout: out,
                text,
                delay,
            } => {
                let s = if out { &stdout } else { &stderr };
                if seen_at.is_none() && s.lock().unwrap().contains(text) {
                    seen_at = Some(Instant::now());
                }
                seen_at.is_some_and(|t| t.elapsed() >= delay)
            }
        };
        if reached {
            // The failpoint's line was written before the stop: let the reader thread catch up.
            let deadline = Instant::now() + Duration::from_secs(2);
            while matches!(trigger, Trigger::Failpoint(_))
                && !stderr.lock().unwrap().contains("envc: stopped at ")
                && Instant::now() < deadline
            {
                std::thread::sleep(Duration::from_millis(5));
            }
            break;
        }
        if let Ok(Some(status)) = child.try_wait() {
            std::thread::sleep(Duration::from_millis(50));
            return Err(format!(
                "envc ended ({status}) before the trigger {trigger:?}; stderr:\n{}",
                stderr.lock().unwrap()
            ));
        }
        if started.elapsed() > Duration::from_secs(300) {
            let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
            let _ = child.wait();
            return Err(format!(
                "trigger {trigger:?} not reached in 300 s; stderr:\n{}",
                stderr.lock().unwrap()
            ));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    match mode {
        Mode::Pid => kill(Pid::from_raw(pgid), Signal::SIGKILL),
        Mode::Group => killpg(Pid::from_raw(pgid), Signal::SIGKILL),
    }
    .map_err(|e| format!("kill: {e}"))?;
    child.wait().map_err(|e| format!("wait: {e}"))?;
    let stderr = stderr.lock().unwrap().clone();
    Ok(Killed { pgid, stderr })
}

/// Processes that are still there after the kill (waiting up to `grace` for them to go): those
/// of the killed process group, and any whose command line or working directory is in the
/// store. envc's designed background work (the removal of a discarded tree, `envc
/// __envc-remove` or `rm -rf --one-file-system`, and the root reaper) is not a builder and is
/// left alone. Whatever is found is then killed, so that the next case starts clean.
pub fn leftover_processes(store: &Path, pgid: i32, grace: Duration) -> Vec<String> {
    let store_s = store.to_string_lossy().into_owned();
    let me = std::process::id() as i32;
    let find = || -> Vec<(i32, String)> {
        process_table()
            .into_iter()
            .filter(|&(pid, (g, state))| {
                if pid == me || state == 'Z' || state == 'X' {
                    return false;
                }
                let cmd = cmdline(pid);
                let background_rm = (cmd.starts_with("/usr/bin/rm ") || cmd.starts_with("rm "))
                    && cmd.contains("--one-file-system");
                let designed = ["__envc-reap", "__envc-remove"];
                if designed.iter().any(|d| cmd.contains(d)) || background_rm {
                    return false;
                }
                let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).unwrap_or_default();
                g == pgid || cmd.contains(&store_s) || cwd.starts_with(store)
            })
            .map(|(pid, (_, state))| (pid, format!("pid {pid} [{state}] {:.200}", cmdline(pid))))
            .collect()
    };
    let started = Instant::now();
    let mut left = find();
    while !left.is_empty() && started.elapsed() < grace {
        std::thread::sleep(Duration::from_millis(50));
        left = find();
    }
    for (pid, _) in &left {
        let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while !find().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    left.into_iter().map(|(_, d)| d).collect()
}

/// Mount points in this mount namespace, with how many mounts each has.
pub fn mounts() -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for l in std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
    {
        if let Some(m) = l.split(' ').nth(4) {
            *out.entry(m.replace("\\040", " ")).or_default() += 1;
        }
    }
    out
}

/// Mounts made since `baseline`, except working roots (`STORE/roots/NAME/root`) and what other
/// processes' tests mount in their own directories (this machine is shared).
pub fn new_mounts(baseline: &BTreeMap<String, usize>, store: &Path) -> Vec<String> {
    let roots = store.join("roots");
    let mine = format!("-{}-", std::process::id());
    let test_base = std::env::var("ENVC_TEST_DIR").unwrap_or_else(|_| "/var/tmp".into());
    let others = format!("{test_base}/envc-test-");
    mounts()
        .into_iter()
        .filter(|(m, n)| *n > baseline.get(m).copied().unwrap_or(0))
        .map(|(m, _)| m)
        .filter(|m| {
            let p = Path::new(m);
            let is_root = p.starts_with(&roots)
                && p.strip_prefix(&roots)
                    .is_ok_and(|r| r.components().count() == 2 && r.ends_with("root"));
            let someone_elses = m.starts_with(&others) && !m.contains(&mine);
            !is_root && !someone_elses
        })
        .collect()
}

/// Waits up to `grace` for [`new_mounts`] to be empty; returns what is left.
pub fn wait_no_new_mounts(
    baseline: &BTreeMap<String, usize>,
    store: &Path,
    grace: Duration,
) -> Vec<String> {
    let started = Instant::now();
    loop {
        let left = new_mounts(baseline, store);
        if left.is_empty() || started.elapsed() >= grace {
            return left;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A decoy file in a directory a build bind-mounts from the host (`/dev/shm`, which mmdebstrap
/// binds into its chroot): it must survive every kill and every cleanup. Removed on drop.
pub struct Decoy {
    pub path: PathBuf,
    content: String,
}

impl Decoy {
    pub fn new(dir: &Path, name: &str) -> Decoy {
        let path = dir.join(format!("envc-crash-decoy-{name}-{}", std::process::id()));
        let content = format!("decoy {name}: must survive\n");
        std::fs::write(&path, &content).unwrap();
        Decoy { path, content }
    }

    /// The decoy's failure, if it was removed or changed.
    pub fn check(&self) -> Option<String> {
        match std::fs::read_to_string(&self.path) {
            Ok(c) if c == self.content => None,
            Ok(c) => Some(format!("{} changed: {c:?}", self.path.display())),
            Err(e) => Some(format!("{} is gone: {e}", self.path.display())),
        }
    }

    /// Puts the decoy back (after a failed check, so later cases test again).
    pub fn restore(&self) {
        let _ = std::fs::write(&self.path, &self.content);
    }
}

impl Drop for Decoy {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// A tree as compared: relative path -> type, mode, owner, and content digest or link target
/// (never times, never directory sizes).
pub type Tree = BTreeMap<PathBuf, String>;

/// Reads the tree at `root` without following symlinks.
pub fn tree(root: &Path) -> Tree {
    fn walk(root: &Path, rel: &Path, out: &mut Tree) {
        let p = root.join(rel);
        let Ok(m) = std::fs::symlink_metadata(&p) else {
            out.insert(rel.to_owned(), "unreadable".into());
            return;
        };
        let ft = m.file_type();
        let head = format!("{:o} {}:{}", m.mode() & 0o7777, m.uid(), m.gid());
        let desc = if ft.is_symlink() {
            format!(
                "symlink {head} -> {}",
                std::fs::read_link(&p).unwrap_or_default().display()
            )
        } else if ft.is_file() {
            format!("file {head} {} bytes {:016x}", m.len(), digest(&p))
        } else if ft.is_dir() {
            format!("dir {head}")
        } else if ft.is_char_device() || ft.is_block_device() {
            format!("device {head} {:x}", m.rdev())
        } else if ft.is_fifo() {
            format!("fifo {head}")
        } else {
            format!("socket {head}")
        };
        out.insert(rel.to_owned(), desc);
        if ft.is_dir() {
            let mut names: Vec<_> = std::fs::read_dir(&p)
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.file_name())
                .collect();
            names.sort();
            for n in names {
                walk(root, &rel.join(n), out);
            }
        }
    }
    let mut out = Tree::new();
    walk(root, Path::new(""), &mut out);
    out
}

fn digest(p: &Path) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    let Ok(mut f) = std::fs::File::open(p) else {
        return 0;
    };
    let mut buf = vec![0u8; 1 << 16];
    while let Ok(n) = f.read(&mut buf) {
        if n == 0 {
            break;
        }
        h.write(&buf[..n]);
    }
    h.finish()
}

/// The differences between two trees (at most 12 of them), or `None` when they are equal.
pub fn tree_diff(want: &Tree, got: &Tree) -> Option<String> {
    let mut diffs = Vec::new();
    for (p, w) in want {
        match got.get(p) {
            None => diffs.push(format!("/{}: missing (want {w})", p.display())),
            Some(g) if g != w => diffs.push(format!("/{}: {g} (want {w})", p.display())),
            _ => {}
        }
    }
    for (p, g) in got {
        if !want.contains_key(p) {
            diffs.push(format!("/{}: unexpected {g}", p.display()));
        }
    }
    if diffs.is_empty() {
        return None;
    }
    let n = diffs.len();
    diffs.truncate(12);
    Some(format!(
        "{n} differences from the reference tree: {}",
        diffs.join("; ")
    ))
}

/// Runs an envc command to its end, killing it (and its process group) after `limit`.
pub fn run_limited(mut cmd: Command, limit: Duration) -> Result<Run, String> {
    cmd.process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child: Child = cmd.spawn().map_err(|e| format!("cannot start envc: {e}"))?;
    let stdout = collect(child.stdout.take().unwrap());
    let stderr = collect(child.stderr.take().unwrap());
    let started = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().map_err(|e| e.to_string())? {
            break s;
        }
        if started.elapsed() > limit {
            let _ = killpg(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
            let _ = child.wait();
            return Err(format!(
                "did not finish in {} s (killed); stderr:\n{}",
                limit.as_secs(),
                stderr.lock().unwrap()
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    // The pipes close when envc and whatever inherited them are gone; give the readers a moment.
    let deadline = Instant::now() + Duration::from_millis(500);
    while Arc::strong_count(&stdout) + Arc::strong_count(&stderr) > 2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(Run {
        code: status.code().unwrap_or(-1),
        stdout: stdout.lock().unwrap().clone(),
        stderr: stderr.lock().unwrap().clone(),
    })
}

/// The store's records after a kill, a successful apply and a sweeping `gc`: no staging area or
/// build log left, nothing in `tmp/` (interrupted runs and removals, temporary files), no record
/// written half (`*.tmp.PID`), and every sealed layer with its `meta/ID.json` and every
/// `meta/ID.json` with its layer. Waits up to `grace` for background removals.
pub fn store_leftovers(t: &TestStore, grace: Duration) -> Vec<String> {
    let list = |d: &str| -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(t.store.join(d))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    let find = || {
        let mut bad = Vec::new();
        for s in list("staging") {
            bad.push(format!("staging/{s} is left"));
        }
        for s in list("tmp") {
            bad.push(format!("tmp/{s} is left"));
        }
        let layers: Vec<String> = list("layers");
        let metas: Vec<String> = list("meta");
        for m in &metas {
            match m.strip_suffix(".json") {
                Some(id) if layers.iter().any(|l| l == id) => {}
                Some(id) if id.len() == 64 => {
                    bad.push(format!("meta/{m} has no layer (layers/{id} is gone)"))
                }
                _ => bad.push(format!("meta/{m} is not a record")),
            }
        }
        for l in &layers {
            if !metas.contains(&format!("{l}.json")) {
                bad.push(format!(
                    "layers/{l} has no meta/{l}.json (a sealed layer without its record)"
                ));
            }
        }
        for r in list("roots") {
            for f in list(&format!("roots/{r}")) {
                if f.contains(".tmp") {
                    bad.push(format!("roots/{r}/{f} is a half-written record"));
                }
            }
        }
        bad
    };
    let started = Instant::now();
    loop {
        let bad = find();
        if bad.is_empty() || started.elapsed() >= grace {
            return bad;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
