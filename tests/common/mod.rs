//! Shared fixtures of the runtime tests: privilege checks, a busybox root tarball, stores on each
//! backend (btrfs on a loop-file filesystem made by the test), and running the envc binary.
#![allow(dead_code)]

pub mod aptrepo;
pub mod crash;
pub mod hostile;
pub mod registry;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

pub const ENVC: &str = env!("CARGO_BIN_EXE_envc");

/// Whether privileged tests can run here. Without privileges (not root, or no busybox), or with
/// ENVC_SKIP_PRIVILEGED=1 (to run only the fast, unprivileged tests as root), they are skipped with
/// a SKIP line on stderr, unless ENVC_REQUIRE_PRIVILEGED=1 (as in CI), which makes that a failure.
pub fn privileged(test: &str) -> bool {
    let set = |name: &str| std::env::var(name).is_ok_and(|v| v == "1");
    let why = if set("ENVC_SKIP_PRIVILEGED") {
        "ENVC_SKIP_PRIVILEGED=1"
    } else if !nix::unistd::geteuid().is_root() {
        "not running as root"
    } else if !Path::new("/bin/busybox").exists() {
        "/bin/busybox is missing (apt-get install busybox-static)"
    } else {
        return true;
    };
    if set("ENVC_REQUIRE_PRIVILEGED") {
        panic!("{test}: privileged test cannot run: {why}, and ENVC_REQUIRE_PRIVILEGED=1");
    }
    // Straight to stderr: libtest hides what a passing test prints with eprintln!.
    let _ = writeln!(std::io::stderr(), "SKIP {test}: {why}");
    false
}

/// A fresh directory, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        let base = std::env::var_os("ENVC_TEST_DIR")
            .map_or_else(|| PathBuf::from("/var/tmp"), PathBuf::from);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let p = base.join(format!("envc-test-{name}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        // Unmount anything left below (working roots), then remove.
        unmount_below(&self.0);
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A root filesystem tarball with busybox and its applets, a passwd with `builder`, built once
/// per test process in `$TMPDIR/envc-busybox-PID` (those of processes that are gone are removed).
pub fn busybox_tarball() -> PathBuf {
    static TAR: OnceLock<PathBuf> = OnceLock::new();
    TAR.get_or_init(|| {
        let tmp = std::env::temp_dir();
        for e in std::fs::read_dir(&tmp).into_iter().flatten().flatten() {
            let name = e.file_name();
            let pid = name
                .to_str()
                .and_then(|n| n.strip_prefix("envc-busybox-"))
                .filter(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
            if pid.is_some_and(|p| !Path::new("/proc").join(p).exists()) {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
        let dir = tmp.join(format!("envc-busybox-{}", std::process::id()));
        let root = dir.join("root");
        let _ = std::fs::remove_dir_all(&dir);
        for d in ["bin", "etc", "root", "home/builder", "usr/sbin"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        std::fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
        let list = Command::new("/bin/busybox").arg("--list").output().unwrap();
        for applet in String::from_utf8_lossy(&list.stdout).lines() {
            if applet != "busybox" {
                std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
            }
        }
        std::fs::write(
            root.join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\nbuilder:x:1000:1000::/home/builder:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(root.join("etc/group"), "root:x:0:\nbuilder:x:1000:\n").unwrap();
        let status = Command::new("chown")
            .args(["1000:1000"])
            .arg(root.join("home/builder"))
            .status()
            .unwrap();
        assert!(status.success());
        let tar = dir.join("busybox.tar.gz");
        let status = Command::new("tar")
            .arg("-czf")
            .arg(&tar)
            .arg("-C")
            .arg(&root)
            .arg(".")
            .status()
            .unwrap();
        assert!(status.success(), "tar failed");
        let _ = std::fs::remove_dir_all(&root);
        tar
    })
    .clone()
}

/// Which backend a store uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Overlay,
    Btrfs,
    /// LVM thin: only inside the test VM (tests/lvm.rs), in the volume group [`TEST_VG`].
    Lvm,
}

/// The volume group tests/lvm.rs makes on the test VM's scratch disk.
pub const TEST_VG: &str = "envct";

/// An LVM command inside the test VM (no udev there).
pub fn lvm(args: &[&str]) -> Output {
    Command::new("lvm")
        .arg(args[0])
        .args(["--config", "activation{udev_sync=0 udev_rules=0}"])
        .args(&args[1..])
        .env("LVM_SUPPRESS_FD_WARNINGS", "1")
        .output()
        .expect("run lvm")
}

/// A thin pool made for one test; unmounts what is mounted below the test's directory and removes the pool
/// (with every volume in it) on drop.
pub struct LvmPool {
    pub vg: String,
    pub pool: String,
    pub store: PathBuf,
}

impl Drop for LvmPool {
    fn drop(&mut self) {
        unmount_below(&self.store);
        let _ = lvm(&[
            "lvremove",
            "-q",
            "-y",
            &format!("{}/{}", self.vg, self.pool),
        ]);
    }
}

/// Unmounts everything mounted at or below `dir`, deepest first.
pub fn unmount_below(dir: &Path) {
    if let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") {
        let mut mounts: Vec<&str> = info
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|m| m.starts_with(dir.to_str().unwrap()))
            .collect();
        mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in mounts {
            let _ = nix::mount::umount2(m, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

/// A store for one test, on a filesystem suited to its backend.
pub struct TestStore {
    pub kind: Kind,
    pub store: PathBuf,
    pub specs: PathBuf,
    pub pool: Option<LvmPool>,
    _mount: Option<LoopFs>,
    _dir: TempDir,
}

/// A loop-file filesystem, unmounted and detached on drop.
pub struct LoopFs {
    pub mountpoint: PathBuf,
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        unmount_below(&self.mountpoint);
    }
}

impl TestStore {
    pub fn new(kind: Kind, name: &str) -> TestStore {
        TestStore::with_lvm_args(kind, name, &[])
    }

    /// A store; an LVM one is made with these extra `envc store init lvm` arguments.
    pub fn with_lvm_args(kind: Kind, name: &str, lvm_args: &[&str]) -> TestStore {
        let dir = TempDir::new(name);
        let specs = dir.path().join("specs");
        std::fs::create_dir_all(&specs).unwrap();
        std::fs::copy(busybox_tarball(), specs.join("busybox.tar.gz")).unwrap();
        let mut pool = None;
        let (store, mount) = match kind {
            Kind::Overlay => (dir.path().join("store"), None),
            Kind::Lvm => {
                use std::sync::atomic::{AtomicU32, Ordering};
                static N: AtomicU32 = AtomicU32::new(0);
                assert!(
                    std::env::var_os("ENVC_IN_VM").is_some(),
                    "LVM tests run in the test VM (tests/lvm.rs)"
                );
                let vg = TEST_VG.to_owned();
                let name = format!("p{}", N.fetch_add(1, Ordering::Relaxed));
                let store = dir.path().join("store");
                let mut args = vec![
                    "store", "init", "lvm", "--vg", &vg, "--pool", &name, "--size", "512M",
                ];
                args.extend(lvm_args.iter().copied());
                let out = Command::new(ENVC)
                    .env("ENVC_STORE", &store)
                    .args(&args)
                    .output()
                    .unwrap();
                assert!(
                    out.status.success(),
                    "envc store init lvm: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                pool = Some(LvmPool {
                    vg,
                    pool: name,
                    store: dir.path().to_owned(),
                });
                (store, None)
            }
            Kind::Btrfs => {
                let img = dir.path().join("btrfs.img");
                let f = std::fs::File::create(&img).unwrap();
                f.set_len(1 << 30).unwrap();
                let out = Command::new("mkfs.btrfs")
                    .arg("-q")
                    .arg(&img)
                    .output()
                    .expect("mkfs.btrfs (apt-get install btrfs-progs)");
                assert!(
                    out.status.success(),
                    "mkfs.btrfs: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                let mnt = dir.path().join("mnt");
                std::fs::create_dir_all(&mnt).unwrap();
                let out = Command::new("mount")
                    .arg("-o")
                    .arg("loop")
                    .arg(&img)
                    .arg(&mnt)
                    .output()
                    .unwrap();
                assert!(
                    out.status.success(),
                    "mount btrfs loop: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                (mnt.join("store"), Some(LoopFs { mountpoint: mnt }))
            }
        };
        TestStore {
            kind,
            store,
            specs,
            pool,
            _mount: mount,
            _dir: dir,
        }
    }

    /// Writes a spec (and returns its path).
    pub fn spec(&self, name: &str, text: &str) -> PathBuf {
        let p = self.specs.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    pub fn cmd(&self) -> Command {
        let mut c = Command::new(ENVC);
        c.env("NO_COLOR", "1")
            .env("COLUMNS", "200")
            .env("ENVC_STORE", &self.store)
            .env_remove("ENVC_BACKEND");
        c.arg("--backend").arg(match self.kind {
            Kind::Overlay => "overlay",
            Kind::Btrfs => "btrfs",
            Kind::Lvm => "lvm",
        });
        c.stdin(Stdio::null());
        c
    }

    pub fn envc(&self, args: &[&str]) -> Run {
        Run::from(self.cmd().args(args).output().unwrap())
    }

    /// The layer ids `envc plan --json` gives, base first.
    pub fn plan_ids(&self, spec: &Path) -> Vec<String> {
        let r = self.envc(&["plan", "--json", spec.to_str().unwrap()]);
        assert_eq!(r.code, 0, "{}", r.stderr);
        let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
        v["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["id"].as_str().unwrap().to_owned())
            .collect()
    }

    pub fn apply(&self, spec: &Path) -> Run {
        let r = Run::from(self.cmd().arg("apply").arg(spec).output().unwrap());
        assert_eq!(r.code, 0, "apply {} failed:\n{}", spec.display(), r.stderr);
        r
    }

    /// Mount points below the store, other than working roots.
    pub fn stray_mounts(&self) -> Vec<String> {
        let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let roots = self.store.join("roots");
        info.lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|m| {
                m.starts_with(self.store.to_str().unwrap()) && !Path::new(m).starts_with(&roots)
            })
            .map(str::to_owned)
            .collect()
    }
}

/// The result of running envc.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Run {
    fn from(o: Output) -> Run {
        Run {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

impl Run {
    /// Names of the layers built (from the progress lines).
    pub fn built(&self) -> Vec<String> {
        self.stderr
            .lines()
            .filter(|l| l.contains("] built in "))
            .map(|l| l[1..l.find(']').unwrap()].to_owned())
            .collect()
    }
    pub fn cached(&self) -> Vec<String> {
        self.stderr
            .lines()
            .filter(|l| l.contains("] cached "))
            .map(|l| l[1..l.find(']').unwrap()].to_owned())
            .collect()
    }
    pub fn root(&self) -> PathBuf {
        PathBuf::from(self.stdout.trim())
    }
}

/// Compiles tests/common/euid.c (static, so it runs in the busybox root) to `dir/euid`.
pub fn euid_probe(dir: &Path) -> PathBuf {
    let out = dir.join("euid");
    let o = Command::new("gcc")
        .args(["-O2", "-static", "-o"])
        .arg(&out)
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/common/euid.c"))
        .output()
        .expect("gcc");
    assert!(
        o.status.success(),
        "gcc euid: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    out
}

/// Compiles tests/common/synccheck.c into `dir` (static or dynamic); returns the binary.
pub fn synccheck(dir: &Path, static_link: bool) -> PathBuf {
    synccheck_with(dir, static_link, false)
}

/// Like [`synccheck`], as a 32-bit (i386) program when `m32` is set (needs gcc-multilib).
pub fn synccheck_with(dir: &Path, static_link: bool, m32: bool) -> PathBuf {
    let out = dir.join(format!(
        "synccheck{}{}",
        if static_link { "-static" } else { "" },
        if m32 { "-32" } else { "" }
    ));
    let mut cmd = Command::new("gcc");
    if m32 {
        cmd.arg("-m32");
    }
    cmd.arg("-O2").arg("-o").arg(&out).arg(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/common/synccheck.c"
    ));
    if static_link {
        cmd.arg("-static");
    }
    let o = cmd.output().expect("gcc");
    assert!(
        o.status.success(),
        "gcc synccheck: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    out
}
