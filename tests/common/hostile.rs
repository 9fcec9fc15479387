//! The hostile-step checks of issue 11 (confinement), for tests/confine.rs and, in the test VM,
//! the LVM suite: the probe (tests/common/probe.c, built for x86_64 and i386), the script a
//! hostile step runs, the capabilities a step may hold, the judgement of what the probe printed,
//! and the host-side checks (sealed layers unchanged, setuid files not executable by others,
//! mount options, host files untouched). Every check returns its failures as text; the caller
//! names the backend and the way the step ran, and [`Fails`] reports them all at once.
//!
//! On LVM, `STORE/layers/ID` is a record, not the layer's files: [`layer_trees`] and
//! [`setuid_files`] see only what is there, so that suite has to look into the volumes itself.

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::SystemTime;

use super::crash::{Tree, tree, tree_diff};
use super::{Kind, Run, TestStore};

/// Where the probes are inside a root.
pub const PROBE: &str = "/usr/bin/envc-probe";
pub const PROBE32: &str = "/usr/bin/envc-probe32";

/// The architectures the probe is built for, as it names them in its output.
pub const ARCHS: [&str; 2] = ["x86_64", "i386"];

/// The capabilities a step keeps (as root): Docker's default set without MKNOD. NET_RAW is kept
/// with or without network: the kernel refuses to execute a program whose file capabilities
/// exceed the bounding set (Debian's ping carries cap_net_raw=ep).
pub const STEP_CAPS: &[u32] = &[0, 1, 3, 4, 5, 6, 7, 8, 10, 13, 18, 29, 31];

/// Capability names by number (linux/capability.h).
pub const CAP_NAMES: [&str; 41] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

/// The bounding, permitted and effective set of a root step: [`STEP_CAPS`], with network or
/// without.
pub fn expected_caps() -> u64 {
    STEP_CAPS.iter().fold(0u64, |m, c| m | 1 << c)
}

/// The names of the capabilities in `mask`.
pub fn cap_names(mask: u64) -> String {
    let names: Vec<String> = (0..64)
        .filter(|b| mask & 1 << b != 0)
        .map(|b| {
            CAP_NAMES
                .get(b)
                .map_or_else(|| format!("cap{b}"), |n| (*n).to_owned())
        })
        .collect();
    names.join(" ")
}

/// Builds the probe once per test process (`cc -static`, and `cc -m32 -static` for i386, in
/// `$TMPDIR/envc-probe-PID`; those of processes that are gone are removed) and copies both into
/// `dir` as `envc-probe` and `envc-probe32`, the names [`probe_copy_steps`] copies from.
pub fn probes(dir: &Path) {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    let built = BUILT.get_or_init(|| {
        let tmp = std::env::temp_dir();
        for e in std::fs::read_dir(&tmp).into_iter().flatten().flatten() {
            let name = e.file_name();
            let pid = name
                .to_str()
                .and_then(|n| n.strip_prefix("envc-probe-"))
                .filter(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
            if pid.is_some_and(|p| !Path::new("/proc").join(p).exists()) {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
        let out = tmp.join(format!("envc-probe-{}", std::process::id()));
        std::fs::create_dir_all(&out).unwrap();
        let source = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/common/probe.c");
        for (name, m32) in [("envc-probe", false), ("envc-probe32", true)] {
            let mut cc = Command::new("cc");
            if m32 {
                cc.arg("-m32");
            }
            let o = cc
                .args(["-static", "-O1", "-o"])
                .arg(out.join(name))
                .arg(source)
                .output()
                .expect("cc (apt-get install gcc libc6-dev gcc-multilib)");
            assert!(
                o.status.success(),
                "cc {}probe.c: {}",
                if m32 { "-m32 " } else { "" },
                String::from_utf8_lossy(&o.stderr)
            );
        }
        out
    });
    for name in ["envc-probe", "envc-probe32"] {
        std::fs::copy(built.join(name), dir.join(name)).unwrap();
    }
}

/// The `copy` steps that put the probes (copied next to the spec by [`probes`]) into a root.
pub fn probe_copy_steps() -> String {
    format!(
        "  copy \"envc-probe\" \"{PROBE}\" mode=\"0755\"\n  copy \"envc-probe32\" \"{PROBE32}\" mode=\"0755\"\n"
    )
}

/// A text no step prints by chance: put into a step's command, PID 1 must not show it.
pub fn marker() -> String {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("envc-hostile-{}-{nanos}", std::process::id())
}

/// The shell script of a hostile step: both probes (`--net` for a step with network), then the
/// attempts busybox makes itself. With `out`, everything goes to that file in the root (a `run`
/// step, whose output the apply does not return); otherwise to stdout (`envc run`). The script
/// ends with status 0 whatever it found.
pub fn script(network: bool, marker: &str, out: Option<&str>) -> String {
    let net = if network { " --net" } else { "" };
    let mut s = String::new();
    if let Some(out) = out {
        s.push_str(&format!("exec > {out} 2>&1\n"));
    }
    s.push_str(&format!(
        "export ENVC_PROBE_IN_STEP=1\n\
         {PROBE} checks{net} --marker {marker}\n\
         {PROBE32} checks{net} --marker {marker}\n"
    ));
    s.push_str(
        r#"mkdir -p /mnt
if mount -t tmpfs none /mnt 2>/dev/null; then echo "sh.mount_tmpfs FAIL mount -t tmpfs none /mnt succeeded"; umount /mnt; else echo "sh.mount_tmpfs ok"; fi
for f in U n m p; do
  if unshare -$f true 2>/dev/null; then echo "sh.unshare_-$f FAIL unshare -$f true succeeded"; else echo "sh.unshare_-$f ok"; fi
done
if mknod /tmp/.envc-sh-c c 1 3 2>/dev/null; then echo "sh.mknod_c FAIL mknod c 1 3 succeeded"; else echo "sh.mknod_c ok"; fi
if mknod /tmp/.envc-sh-b b 7 0 2>/dev/null; then echo "sh.mknod_b FAIL mknod b 7 0 succeeded"; else echo "sh.mknod_b ok"; fi
rm -f /tmp/.envc-sh-c /tmp/.envc-sh-b
if mount -o remount,rw /sys 2>/dev/null; then echo "sh.remount_sys FAIL mount -o remount,rw /sys succeeded"; mount -o remount,bind,ro /sys; else echo "sh.remount_sys ok"; fi
if mount -o remount,bind,rw /sys 2>/dev/null; then echo "sh.remount_bind_sys FAIL mount -o remount,bind,rw /sys succeeded"; mount -o remount,bind,ro /sys; else echo "sh.remount_bind_sys ok"; fi
echo "sh.done ok"
true
"#,
    );
    s
}

/// `s` as a KDL string literal.
pub fn kdl_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The failures in what a hostile step printed ([`script`]'s output): every `FAIL` line, the
/// capability sets, no_new_privs and seccomp state of both probes against the contract, the
/// resolv.conf a network step reads against the host's (`host_resolv`: its bytes, if it has
/// one), and every part that did not finish.
pub fn judge(output: &str, network: bool, host_resolv: Option<&[u8]>) -> Vec<String> {
    let mut fails = Vec::new();
    let mut facts = BTreeMap::new();
    let mut passed = std::collections::BTreeSet::new();
    for line in output.lines() {
        let Some((name, rest)) = line.split_once(' ') else {
            continue;
        };
        if !(ARCHS.iter().any(|a| name.starts_with(&format!("{a}."))) || name.starts_with("sh.")) {
            continue;
        }
        if let Some(value) = rest.strip_prefix("= ") {
            facts.insert(name.to_owned(), value.to_owned());
        } else if rest == "ok" || rest.starts_with("ok ") {
            passed.insert(name.to_owned());
        } else if let Some(what) = rest.strip_prefix("FAIL") {
            fails.push(format!("{name}: {}", what.trim()));
        }
    }
    let tail: Vec<&str> = output.lines().rev().take(3).collect();
    for part in ARCHS.iter().copied().chain(["sh"]) {
        if !passed.contains(&format!("{part}.done")) {
            fails.push(format!(
                "{part}: did not finish; the output ends with: {:?}",
                tail.iter().rev().collect::<Vec<_>>()
            ));
        }
    }
    let caps = expected_caps();
    for arch in ARCHS {
        let fact = |k: &str| facts.get(&format!("{arch}.status.{k}")).map(String::as_str);
        // Sets with the same wrong value are one failure: "CapBnd/CapPrm/CapEff".
        let mut wrong: Vec<(String, String)> = Vec::new();
        for (key, want) in [
            ("CapBnd", caps),
            ("CapPrm", caps),
            ("CapEff", caps),
            ("CapInh", 0),
            ("CapAmb", 0),
        ] {
            let what = match fact(key).map(|v| u64::from_str_radix(v, 16)) {
                Some(Ok(got)) if got == want => continue,
                Some(Ok(got)) => {
                    let mut what = format!("{got:016x}, want {want:016x}");
                    if got & !want != 0 {
                        what.push_str(&format!("; extra: {}", cap_names(got & !want)));
                    }
                    if want & !got != 0 {
                        what.push_str(&format!("; missing: {}", cap_names(want & !got)));
                    }
                    what
                }
                _ => format!("not reported ({})", fact(key).unwrap_or("no line")),
            };
            match wrong.iter_mut().find(|(_, w)| *w == what) {
                Some((keys, _)) => keys.push_str(&format!("/{key}")),
                None => wrong.push((key.to_owned(), what)),
            }
        }
        for (keys, what) in wrong {
            fails.push(format!("{arch}.{keys}: {what}"));
        }
        for (key, want, why) in [
            ("NoNewPrivs", "0", "setuid programs must work"),
            ("Seccomp", "2", "a seccomp filter"),
        ] {
            if fact(key) != Some(want) {
                fails.push(format!(
                    "{arch}.{key}: {}, want {want} ({why})",
                    fact(key).unwrap_or("not reported")
                ));
            }
        }
        if let (true, Some(host)) = (network, host_resolv) {
            let want = if host.is_empty() {
                "empty".to_owned()
            } else {
                host.iter().map(|b| format!("{b:02x}")).collect()
            };
            let got = fact_raw(&facts, arch, "resolv");
            if got != Some(want.as_str()) {
                fails.push(format!(
                    "{arch}.resolv: the step reads /etc/resolv.conf as {:?}, not the host's {:?}",
                    got.map(unhex),
                    String::from_utf8_lossy(host)
                ));
            }
        }
    }
    fails
}

fn fact_raw<'a>(facts: &'a BTreeMap<String, String>, arch: &str, key: &str) -> Option<&'a str> {
    facts.get(&format!("{arch}.{key}")).map(String::as_str)
}

fn unhex(s: &str) -> String {
    let bytes: Vec<u8> = (0..s.len() / 2)
        .filter_map(|i| u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok())
        .collect();
    if bytes.is_empty() {
        s.to_owned()
    } else {
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

/// `cmd` (envc with its arguments and environment) started by a shell that first opens `dir` as
/// descriptor 7 without close-on-exec: a descriptor the step must not inherit.
pub fn with_fd7(cmd: &Command, dir: &Path) -> Command {
    let mut c = Command::new("/bin/sh");
    c.arg("-c")
        .arg("exec 7<\"$0\" && exec \"$@\"")
        .arg(dir)
        .arg(cmd.get_program())
        .args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => c.env(k, v),
            None => c.env_remove(k),
        };
    }
    c.stdin(Stdio::null());
    c
}

/// The trees of every sealed layer (`STORE/layers/ID`), by id.
pub fn layer_trees(store: &Path) -> BTreeMap<String, Tree> {
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir(store.join("layers"))
        .into_iter()
        .flatten()
        .flatten()
    {
        out.insert(
            e.file_name().to_string_lossy().into_owned(),
            tree(&e.path()),
        );
    }
    out
}

/// How the layers of `before` differ in `after` (layers only in `after` are new, not changes).
pub fn layers_changed(
    before: &BTreeMap<String, Tree>,
    after: &BTreeMap<String, Tree>,
) -> Vec<String> {
    let mut out = Vec::new();
    for (id, want) in before {
        match after.get(id) {
            None => out.push(format!("sealed layer {id} is gone")),
            Some(got) => {
                if let Some(d) = tree_diff(want, got) {
                    out.push(format!("sealed layer {id} changed: {d}"));
                }
            }
        }
    }
    out
}

/// The uid and gid an unprivileged host user runs as here.
pub const NOBODY: u32 = 65534;

/// Executes `path euid` (a setuid-root copy of the probe) as uid and gid [`NOBODY`] without
/// supplementary groups: the kernel must refuse with EACCES. An error names what happened
/// instead (above all: it ran with euid 0).
pub fn exec_as_nobody(path: &Path) -> Result<(), String> {
    let out = Command::new(path)
        .arg("euid")
        .uid(NOBODY)
        .gid(NOBODY)
        .env_clear()
        .stdin(Stdio::null())
        .output();
    match out {
        Err(e) if e.raw_os_error() == Some(nix::libc::EACCES) => Ok(()),
        Err(e) => Err(format!("executing it failed with {e} (want EACCES)")),
        Ok(o) => {
            let said = String::from_utf8_lossy(&o.stdout).trim().to_owned();
            if said == "euid 0" {
                Err("an unprivileged user ran it with euid 0".into())
            } else {
                Err(format!(
                    "an unprivileged user could execute it ({said:?}, {}); want EACCES",
                    o.status
                ))
            }
        }
    }
}

/// The setuid-root files named `name` in the working roots and sealed layers of `store`
/// (overlay: in the layer that made it; btrfs: in that layer and every later one).
pub fn setuid_files(store: &Path, name: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut dirs: Vec<PathBuf> = Vec::new();
    for (sub, inner) in [("roots", "root"), ("layers", "")] {
        for e in std::fs::read_dir(store.join(sub))
            .into_iter()
            .flatten()
            .flatten()
        {
            dirs.push(e.path().join(inner));
        }
    }
    for d in dirs {
        let p = d.join(name);
        if let Ok(m) = std::fs::symlink_metadata(&p)
            && m.is_file()
            && m.uid() == 0
            && m.permissions().mode() & 0o4000 != 0
        {
            out.push(p);
        }
    }
    out
}

/// The mounts at or below `dir` in this process's mount table: (mount point, per-mount
/// options).
pub fn mounts_below(dir: &Path) -> Vec<(String, String)> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    info.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            Some((f.get(4)?.to_string(), f.get(5)?.to_string()))
        })
        .filter(|(m, _)| Path::new(m).starts_with(dir))
        .collect()
}

/// Failures, each with where it was seen; identical ones seen in several places are reported
/// once.
#[derive(Default)]
pub struct Fails(Vec<(String, Vec<String>)>);

impl Fails {
    pub fn push(&mut self, place: &str, what: String) {
        match self.0.iter_mut().find(|(w, _)| *w == what) {
            Some((_, places)) => places.push(place.to_owned()),
            None => self.0.push((what, vec![place.to_owned()])),
        }
    }

    /// Panics with every failure, one line each: `[PLACE | PLACE...] WHAT`.
    #[track_caller]
    pub fn assert_none(&self, backend: &str) {
        let lines: Vec<String> = self
            .0
            .iter()
            .map(|(what, places)| format!("[{}] {what}", places.join(" | ")))
            .collect();
        assert!(
            lines.is_empty(),
            "{} confinement failures on {backend}:\n{}",
            lines.len(),
            lines.join("\n")
        );
    }
}

/// Held around every hostile envc command: a step with network could touch the host's
/// resolv.conf, which [`HostFile`] checks (and puts back) before and after each command.
pub static HOST_RESOLV: Mutex<()> = Mutex::new(());

/// A host file's bytes and modification time, to check that nothing changed them.
pub struct HostFile {
    pub path: PathBuf,
    pub bytes: Option<Vec<u8>>,
    pub mtime: Option<SystemTime>,
}

impl HostFile {
    pub fn read(path: &Path) -> HostFile {
        HostFile {
            path: path.to_owned(),
            bytes: std::fs::read(path).ok(),
            mtime: std::fs::metadata(path).and_then(|m| m.modified()).ok(),
        }
    }

    /// What changed since [`HostFile::read`], if anything; a change is undone (bytes, then
    /// modification time), so that one failing test leaves the host as it was.
    pub fn changed(&self) -> Option<String> {
        let now = HostFile::read(&self.path);
        let mut what = Vec::new();
        if now.bytes != self.bytes {
            what.push(format!(
                "its content became {:?}",
                now.bytes.as_deref().map(String::from_utf8_lossy)
            ));
            if let Some(b) = &self.bytes {
                let _ = std::fs::write(&self.path, b);
            }
        }
        if now.mtime != self.mtime {
            let show = |t: Option<SystemTime>| {
                t.and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
                    .map_or("none".to_owned(), |d| {
                        format!("{}.{:09}", d.as_secs(), d.subsec_nanos())
                    })
            };
            what.push(format!(
                "its modification time changed ({} -> {})",
                show(self.mtime),
                show(now.mtime)
            ));
        }
        if !what.is_empty()
            && let (Some(t), Ok(f)) = (
                self.mtime,
                std::fs::File::options().write(true).open(&self.path),
            )
        {
            let _ = f.set_modified(t);
        }
        (!what.is_empty()).then(|| format!("{}: {}", self.path.display(), what.join("; ")))
    }
}

// The whole suite, per backend (tests/confine.rs; tests/lvm.rs in the VM).

pub const BASE: &str = "base \"tar\" \"busybox.tar.gz\"\n";

/// The setuid-root file a step leaves in the root.
const SUID: &str = "suid";

pub fn backend(kind: Kind) -> &'static str {
    match kind {
        Kind::Overlay => "overlay",
        Kind::Btrfs => "btrfs",
        Kind::Lvm => "lvm",
    }
}

/// The layers of a spec in order: (name, id), from `envc plan --json`.
fn plan(t: &TestStore, spec: &Path) -> Vec<(String, String)> {
    let r = t.envc(&["plan", "--json", spec.to_str().unwrap()]);
    assert_eq!(r.code, 0, "plan: {}", r.stderr);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    v["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["name"].as_str().unwrap().to_owned(),
                l["id"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// The last `n` bytes of `s` (at a character boundary).
pub fn tail(s: &str, n: usize) -> &str {
    let mut start = s.len().saturating_sub(n);
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

/// The tools every hostile step uses: the probes, and a setuid-root copy of the probe that a
/// `run` step leaves at `/suid`.
fn tools_layer() -> String {
    format!(
        "layer \"tools\" {{\n{}  run \"cp {} /{SUID} && chmod 4755 /{SUID}\"\n}}\n",
        probe_copy_steps(),
        PROBE
    )
}

/// Where a hostile command runs: the store, and what must not change.
struct Scene<'a> {
    t: &'a TestStore,
    /// Opened as descriptor 7 of envc: a sealed layer's directory.
    fd7: PathBuf,
    /// The trees of the sealed layers, as they were before the command.
    sealed: BTreeMap<String, Tree>,
    fails: Fails,
}

impl Scene<'_> {
    /// Runs `cmd` (envc) with descriptor 7 open, under [`HOST_RESOLV`] (the other backend's
    /// test must not see this one's changes): the host's resolv.conf must not change, nor any
    /// sealed layer.
    fn run(&mut self, cmd: &std::process::Command, place: &str) -> Run {
        let lock = HOST_RESOLV.lock().unwrap_or_else(|e| e.into_inner());
        let resolv = HostFile::read(Path::new("/etc/resolv.conf"));
        let r = Run::from(with_fd7(cmd, &self.fd7).output().unwrap());
        if let Some(c) = resolv.changed() {
            self.fails.push(place, format!("the host's {c}"));
        }
        drop(lock);
        // Compared with the trees before this command; the next one is compared with now.
        let now = layer_trees(&self.t.store);
        for c in layers_changed(&self.sealed, &now) {
            self.fails.push(place, c);
        }
        for (id, tree) in self.sealed.iter_mut() {
            if let Some(t) = now.get(id) {
                *tree = t.clone();
            }
        }
        r
    }
}

/// Every check against one backend: the hostile `run` steps, the hostile `envc run` commands,
/// the sealed layers and the host side.
pub fn hostile_steps(kind: Kind) {
    let t = TestStore::new(kind, "confine");
    let b = backend(kind);
    probes(&t.specs);
    let host_resolv = std::fs::read("/etc/resolv.conf").ok();

    // The tools, built by an ordinary apply; their layers are sealed before any attack.
    let pre = t.spec("pre.kdl", &format!("name \"pre\"\n{BASE}{}", tools_layer()));
    t.apply(&pre);
    let sealed = layer_trees(&t.store);
    // On LVM a layer is a read-only thin volume and `layers/ID` its record: the trees are not
    // in the store's directory, and descriptor 7 is the layers directory itself.
    let fd7 = if kind == Kind::Lvm {
        t.store.join("layers")
    } else {
        assert_eq!(sealed.len(), 2, "{:?}", sealed.keys());
        t.store.join("layers").join(&plan(&t, &pre)[0].1)
    };
    let mut scene = Scene {
        t: &t,
        fd7,
        sealed,
        fails: Fails::default(),
    };

    // The attacks as `run` steps, their results written into the root; and a setuid-root
    // program run by `builder`, which must get euid 0.
    let marker = marker();
    let step = |network: bool, out: &str| kdl_string(&script(network, &marker, Some(out)));
    let spec = t.spec(
        "hostile.kdl",
        &format!(
            "name \"hostile\"\n{BASE}{}layer \"hostile\" {{\n  run {}\n  run {} network=#true\n  run \"/{SUID} euid > /home/builder/suid.out 2>&1; true\" user=\"builder\"\n}}\n",
            tools_layer(),
            step(false, "/hostile-nonet.out"),
            step(true, "/hostile-net.out"),
        ),
    );
    let mut apply = t.cmd();
    apply.arg("apply").arg(&spec);
    let r = scene.run(&apply, "run steps");
    let fails = &mut scene.fails;
    if r.code != 0 {
        fails.push(
            "run steps",
            format!("the apply failed ({}): {}", r.code, tail(&r.stderr, 3000)),
        );
    } else {
        let root = r.root();
        for (network, file, place) in [
            (false, "hostile-nonet.out", "run step"),
            (true, "hostile-net.out", "run step, network=#true"),
        ] {
            let out = std::fs::read_to_string(root.join(file)).unwrap_or_default();
            for f in judge(&out, network, host_resolv.as_deref()) {
                fails.push(place, f);
            }
        }
        let euid = std::fs::read_to_string(root.join("home/builder/suid.out")).unwrap_or_default();
        if euid.trim() != "euid 0" {
            fails.push(
                "run step, user=builder",
                format!(
                    "a setuid-root program said {:?}, want \"euid 0\" (setuid programs must \
                     work: NoNewPrivs 0, no nosuid inside the step)",
                    euid.trim()
                ),
            );
        }
        // The root had no resolv.conf: neither the sealed layer of the network step nor the
        // working root keeps one.
        let id = &plan(&t, &spec)[2].1;
        for dir in [t.store.join("layers").join(id), root.clone()] {
            let p = dir.join("etc/resolv.conf");
            if std::fs::symlink_metadata(&p).is_ok() {
                fails.push(
                    "run step, network=#true",
                    format!("{} exists after the step; the root had none", p.display()),
                );
            }
        }
    }

    // The same attacks through `envc run`, with the host's network (the default) and without.
    for network in [true, false] {
        let place = if network {
            "envc run"
        } else {
            "envc run --no-network"
        };
        let mut cmd = t.cmd();
        cmd.arg("run");
        if !network {
            cmd.arg("--no-network");
        }
        cmd.arg(&pre)
            .args(["--", "sh", "-c", &script(network, &marker, None)]);
        let r = scene.run(&cmd, place);
        let fails = &mut scene.fails;
        if r.code != 0 {
            fails.push(
                place,
                format!("exited with {}: {}", r.code, tail(&r.stderr, 2000)),
            );
        }
        for f in judge(&r.stdout, network, host_resolv.as_deref()) {
            fails.push(place, f);
        }
    }

    // The host side.
    let fails = &mut scene.fails;
    let mode = std::fs::metadata(&t.store).unwrap().permissions().mode() & 0o7777;
    if mode != 0o700 {
        fails.push(
            "host",
            format!(
                "the store {} has mode {mode:04o}, want 0700",
                t.store.display()
            ),
        );
    }
    let mounts = mounts_below(&t.store.join("roots"));
    if kind == Kind::Overlay {
        for name in ["pre", "hostile"] {
            let root = t.store.join("roots").join(name).join("root");
            if !mounts.iter().any(|(m, _)| Path::new(m) == root) {
                fails.push("host", format!("{} is not mounted", root.display()));
            }
        }
    }
    for (m, options) in &mounts {
        let opts: Vec<&str> = options.split(',').collect();
        let missing: Vec<&str> = ["nosuid", "nodev"]
            .into_iter()
            .filter(|o| !opts.contains(o))
            .collect();
        if !missing.is_empty() {
            fails.push(
                "host",
                format!(
                    "the working root {m} is mounted without {} ({options})",
                    missing.join(", ")
                ),
            );
        }
    }
    let suid: Vec<PathBuf> = setuid_files(&t.store, SUID);
    let holder = if kind == Kind::Lvm { "roots" } else { "layers" };
    if !suid.iter().any(|p| p.starts_with(t.store.join(holder))) {
        fails.push(
            "host",
            format!(
                "no setuid-root /{SUID} under {holder}/ (found {suid:?}): the test's own setup \
                 failed"
            ),
        );
    }
    for p in &suid {
        if let Err(e) = exec_as_nobody(p) {
            fails.push("host", format!("{}: {e}", p.display()));
        }
    }
    scene.fails.assert_none(b);
}
