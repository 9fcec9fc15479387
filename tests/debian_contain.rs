//! A real Debian base build killed while mmdebstrap has its mounts up (issue 12, item 1): none of
//! them is ever visible on the host, `kill -9` of envc's pid alone takes mmdebstrap and everything
//! it started along, the host's /dev/shm (which mmdebstrap binds into the root) keeps its files,
//! and the next apply builds the base. Slow (two essential-variant bases from the host's apt
//! sources, about a minute each here), like tests/debian.rs.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{ENVC, Kind, TestStore, privileged};
use envc_runtime::sandbox::EXPOSED_ROOT;

/// Every process descended from `pid`.
fn descendants(pid: u32) -> Vec<u32> {
    let mut pairs = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(p) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
            continue;
        };
        if let Some(pp) = stat
            .rsplit_once(')')
            .and_then(|(_, r)| r.split_whitespace().nth(1)?.parse::<u32>().ok())
        {
            pairs.push((p, pp));
        }
    }
    let mut out = vec![pid];
    let mut i = 0;
    while i < out.len() {
        let cur = out[i];
        out.extend(pairs.iter().filter(|(_, pp)| *pp == cur).map(|(p, _)| *p));
        i += 1;
    }
    out.remove(0);
    out
}

fn dead(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(s) => s
            .rsplit_once(')')
            .is_some_and(|(_, r)| r.trim_start().starts_with(['Z', 'X'])),
    }
}

/// Mount points under `dir` in the mount table of process `pid` (`self` for this one).
fn mounts_under(pid: &str, dir: &Path) -> Vec<String> {
    std::fs::read_to_string(format!("/proc/{pid}/mountinfo"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| Path::new(m).starts_with(dir))
        .map(str::to_owned)
        .collect()
}

#[test]
fn a_debian_base_build_killed_with_mmdebstrap_mounts_up_leaves_nothing() {
    if !privileged("a_debian_base_build_killed_with_mmdebstrap_mounts_up_leaves_nothing") {
        return;
    }
    assert!(
        Path::new("/usr/bin/mmdebstrap").exists(),
        "mmdebstrap is missing (apt-get install mmdebstrap)"
    );
    let t = TestStore::new(Kind::Overlay, "debian-kill");
    let spec = t.spec(
        "env.kdl",
        "name \"dk\"\nbase \"debian\" suite=\"bookworm\" variant=\"essential\"\n",
    );
    let decoy = Path::new("/dev/shm").join(format!("envc-decoy-{}", std::process::id()));
    std::fs::write(&decoy, "keep").unwrap();

    let mut envc = Command::new(ENVC)
        .env("ENVC_STORE", &t.store)
        .args(["--backend", "overlay", "apply"])
        .arg(&spec)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = envc.id();
    // Wait for a process of the build to see mounts in the new root (mmdebstrap's proc, sys,
    // dev), in its own mount namespace, where mmdebstrap reaches the root at EXPOSED_ROOT.
    let exposed = Path::new(EXPOSED_ROOT);
    let start = Instant::now();
    let (tree, seen) = loop {
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "mmdebstrap never mounted anything in the root"
        );
        assert!(
            envc.try_wait().unwrap().is_none(),
            "the apply ended before mmdebstrap mounted"
        );
        let tree = descendants(pid);
        let seen: Vec<String> = tree
            .iter()
            .flat_map(|p| {
                let mut m = mounts_under(&p.to_string(), &t.store);
                m.extend(mounts_under(&p.to_string(), exposed));
                m
            })
            .filter(|m| Path::new(m) != exposed)
            .collect();
        if !seen.is_empty() {
            break (tree, seen);
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    // mmdebstrap runs under the sync-suppressing seccomp filter (the default for base builds).
    let mmdebstrap: Vec<u32> = tree
        .iter()
        .copied()
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/comm"))
                .is_ok_and(|c| c.trim() == "mmdebstrap")
        })
        .collect();
    assert!(!mmdebstrap.is_empty(), "no mmdebstrap among {tree:?}");
    for p in &mmdebstrap {
        let status = std::fs::read_to_string(format!("/proc/{p}/status")).unwrap_or_default();
        assert!(
            status.is_empty() || status.contains("Seccomp:\t2"),
            "mmdebstrap {p} without the filter"
        );
    }
    // Never on the host.
    let on_host = || {
        let mut m = mounts_under("self", &t.store);
        m.extend(mounts_under("self", exposed));
        m
    };
    assert!(
        on_host().is_empty(),
        "build mounts visible on the host: {:?} (the build sees {seen:?})",
        on_host()
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    envc.wait().unwrap();
    let start = Instant::now();
    while !tree.iter().all(|p| dead(*p)) {
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "processes of the killed build still run: {:?}",
            tree.iter()
                .filter(|p| !dead(**p))
                .map(|p| std::fs::read_to_string(format!("/proc/{p}/cmdline")).unwrap_or_default())
                .collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(on_host().is_empty());
    assert_eq!(std::fs::read_to_string(&decoy).unwrap(), "keep");

    // The next apply cleans up and builds the base.
    let r = t.apply(&spec);
    assert!(
        r.stderr.contains("removed 1 interrupted build"),
        "{}",
        r.stderr
    );
    assert_eq!(r.built(), ["base"], "{}", r.stderr);
    assert!(r.root().join("usr/bin/dpkg").is_file());
    assert!(t.stray_mounts().is_empty(), "{:?}", t.stray_mounts());
    assert_eq!(std::fs::read_to_string(&decoy).unwrap(), "keep");
    std::fs::remove_file(&decoy).unwrap();
}
