//! [`RecordingSyscall`]: a [`Syscall`] that records every call, changing nothing in the kernel.
#![forbid(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;
use nix::sys::signal::Signal;
use nix::sys::stat::{Mode, SFlag};
use nix::unistd::ForkResult;

use super::seccomp::SockFilter;
use super::syscall::{Caps, OverlayError, OverlayStage, Syscall};

/// One call, with its arguments as the caller passed them. A directory fd is recorded as the path
/// it names (read from `/proc/self/fd` at the time of the call).
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum Call {
    Mount {
        source: Option<String>,
        target: String,
        fstype: Option<String>,
        flags: MsFlags,
        data: Option<String>,
    },
    Umount2 {
        target: String,
        flags: MntFlags,
    },
    MountOverlay {
        lowers: Vec<String>,
        upper: String,
        work: String,
        target: String,
    },
    MountOverlayReadonly {
        lowers: Vec<String>,
        target: String,
    },
    PivotRoot {
        new_root: String,
        put_old: String,
    },
    Chdir {
        path: String,
    },
    Mknodat {
        dir: PathBuf,
        name: String,
        kind: SFlag,
        perm: Mode,
        dev: u64,
    },
    Symlinkat {
        target: String,
        dir: PathBuf,
        name: String,
    },
    Unshare {
        flags: CloneFlags,
    },
    DefaultSignals,
    SetParentDeathSignal {
        signal: Signal,
    },
    Sethostname {
        name: String,
    },
    Setgroups {
        gids: Vec<u32>,
    },
    Setgid {
        gid: u32,
    },
    Setuid {
        uid: u32,
    },
    Fork,
    LoopbackUp,
    Syncfs {
        fs: PathBuf,
    },
    Fitrim {
        fs: PathBuf,
    },
    FsType {
        path: String,
    },
    InstallSeccomp {
        program: Vec<SockFilter>,
    },
    SetNoNewPrivs,
    Capabilities,
    SetCapabilities {
        caps: Caps,
    },
    DropBoundingCapability {
        cap: u32,
    },
    ClearAmbientCapabilities,
    CloseFdsOnExec {
        from: u32,
    },
    JoinNewSessionKeyring,
    EndOthers,
}

/// A recorded call and, when its target was a `/proc/self/fd/N` path, what that path named when
/// the call was made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The call.
    pub call: Call,
    /// Where a `/proc/self/fd/N` target (mount, unmount, chdir, pivot) pointed; `None` for other
    /// targets.
    pub target_at: Option<PathBuf>,
}

type Matcher = Box<dyn Fn(&Call) -> bool + Send + Sync>;

/// Records every call; returns success (fork: "this is the child"; queries: zeros), or the
/// scripted errno for the calls chosen with [`RecordingSyscall::failing`].
#[derive(Default)]
pub struct RecordingSyscall {
    records: Mutex<Vec<Record>>,
    fail: Option<(Matcher, i32)>,
}

impl std::fmt::Debug for RecordingSyscall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordingSyscall")
            .field("records", &self.records)
            .finish_non_exhaustive()
    }
}

fn lossy(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

fn fd_path(fd: BorrowedFd<'_>) -> PathBuf {
    std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap_or_default()
}

/// Where `target` points if it names a file descriptor of this process.
fn target_at(target: &str) -> Option<PathBuf> {
    let rest = target.strip_prefix("/proc/self/fd/")?;
    let fd = rest.split('/').next()?;
    fd.parse::<u32>().ok()?;
    std::fs::read_link(target).ok()
}

impl RecordingSyscall {
    /// A recorder on which every call succeeds.
    pub fn new() -> RecordingSyscall {
        RecordingSyscall::default()
    }

    /// A recorder on which the calls `matches` picks fail with `errno` (after being recorded).
    pub fn failing(
        matches: impl Fn(&Call) -> bool + Send + Sync + 'static,
        errno: i32,
    ) -> RecordingSyscall {
        RecordingSyscall {
            records: Mutex::default(),
            fail: Some((Box::new(matches), errno)),
        }
    }

    /// The calls so far, in order.
    pub fn calls(&self) -> Vec<Call> {
        self.records().into_iter().map(|r| r.call).collect()
    }

    /// The calls so far with where their targets pointed.
    pub fn records(&self) -> Vec<Record> {
        self.records
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn record(&self, call: Call, target: Option<&str>) -> io::Result<()> {
        let failing = self
            .fail
            .as_ref()
            .and_then(|(m, errno)| m(&call).then_some(*errno));
        let rec = Record {
            call,
            target_at: target.and_then(target_at),
        };
        self.records
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(rec);
        match failing {
            Some(errno) => Err(io::Error::from_raw_os_error(errno)),
            None => Ok(()),
        }
    }
}

impl Syscall for RecordingSyscall {
    fn mount(
        &self,
        source: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> io::Result<()> {
        let target = lossy(target);
        self.record(
            Call::Mount {
                source: source.map(lossy),
                target: target.clone(),
                fstype: fstype.map(str::to_owned),
                flags,
                data: data.map(str::to_owned),
            },
            Some(&target),
        )
    }

    fn umount2(&self, target: &Path, flags: MntFlags) -> io::Result<()> {
        let target = lossy(target);
        self.record(
            Call::Umount2 {
                target: target.clone(),
                flags,
            },
            Some(&target),
        )
    }

    fn mount_overlay(
        &self,
        lowers: &[PathBuf],
        upper: &Path,
        work: &Path,
        target: &Path,
    ) -> Result<(), OverlayError> {
        let target = lossy(target);
        self.record(
            Call::MountOverlay {
                lowers: lowers.iter().map(|l| lossy(l)).collect(),
                upper: lossy(upper),
                work: lossy(work),
                target: target.clone(),
            },
            Some(&target),
        )
        .map_err(|source| OverlayError {
            stage: OverlayStage::Create,
            source,
        })
    }

    fn mount_overlay_readonly(
        &self,
        lowers: &[PathBuf],
        target: &Path,
    ) -> Result<(), OverlayError> {
        let target = lossy(target);
        self.record(
            Call::MountOverlayReadonly {
                lowers: lowers.iter().map(|l| lossy(l)).collect(),
                target: target.clone(),
            },
            Some(&target),
        )
        .map_err(|source| OverlayError {
            stage: OverlayStage::Create,
            source,
        })
    }

    fn pivot_root(&self, new_root: &Path, put_old: &Path) -> io::Result<()> {
        let new_root = lossy(new_root);
        self.record(
            Call::PivotRoot {
                new_root: new_root.clone(),
                put_old: lossy(put_old),
            },
            Some(&new_root),
        )
    }

    fn chdir(&self, path: &Path) -> io::Result<()> {
        let path = lossy(path);
        self.record(Call::Chdir { path: path.clone() }, Some(&path))
    }

    fn mknodat(
        &self,
        dir: BorrowedFd<'_>,
        name: &str,
        kind: SFlag,
        perm: Mode,
        dev: u64,
    ) -> io::Result<()> {
        self.record(
            Call::Mknodat {
                dir: fd_path(dir),
                name: name.to_owned(),
                kind,
                perm,
                dev,
            },
            None,
        )
    }

    fn symlinkat(&self, target: &str, dir: BorrowedFd<'_>, name: &str) -> io::Result<()> {
        self.record(
            Call::Symlinkat {
                target: target.to_owned(),
                dir: fd_path(dir),
                name: name.to_owned(),
            },
            None,
        )
    }

    fn unshare(&self, flags: CloneFlags) -> io::Result<()> {
        self.record(Call::Unshare { flags }, None)
    }

    fn set_parent_death_signal(&self, signal: Signal) -> io::Result<()> {
        self.record(Call::SetParentDeathSignal { signal }, None)
    }

    fn default_signals(&self) -> io::Result<()> {
        self.record(Call::DefaultSignals, None)
    }

    fn sethostname(&self, name: &str) -> io::Result<()> {
        self.record(
            Call::Sethostname {
                name: name.to_owned(),
            },
            None,
        )
    }

    fn setgroups(&self, gids: &[u32]) -> io::Result<()> {
        self.record(
            Call::Setgroups {
                gids: gids.to_vec(),
            },
            None,
        )
    }

    fn setgid(&self, gid: u32) -> io::Result<()> {
        self.record(Call::Setgid { gid }, None)
    }

    fn setuid(&self, uid: u32) -> io::Result<()> {
        self.record(Call::Setuid { uid }, None)
    }

    fn fork(&self) -> io::Result<ForkResult> {
        self.record(Call::Fork, None)?;
        Ok(ForkResult::Child)
    }

    fn loopback_up(&self) -> io::Result<()> {
        self.record(Call::LoopbackUp, None)
    }

    fn syncfs(&self, fd: BorrowedFd<'_>) -> io::Result<()> {
        self.record(Call::Syncfs { fs: fd_path(fd) }, None)
    }

    fn fitrim(&self, fd: BorrowedFd<'_>) -> io::Result<u64> {
        self.record(Call::Fitrim { fs: fd_path(fd) }, None)?;
        Ok(0)
    }

    fn fs_type(&self, path: &Path) -> io::Result<i64> {
        self.record(Call::FsType { path: lossy(path) }, None)?;
        Ok(0)
    }

    fn install_seccomp(&self, program: &[SockFilter]) -> io::Result<()> {
        self.record(
            Call::InstallSeccomp {
                program: program.to_vec(),
            },
            None,
        )
    }

    fn set_no_new_privs(&self) -> io::Result<()> {
        self.record(Call::SetNoNewPrivs, None)
    }

    fn capabilities(&self) -> io::Result<Caps> {
        self.record(Call::Capabilities, None)?;
        Ok(Caps::default())
    }

    fn set_capabilities(&self, caps: Caps) -> io::Result<()> {
        self.record(Call::SetCapabilities { caps }, None)
    }

    fn drop_bounding_capability(&self, cap: u32) -> io::Result<()> {
        self.record(Call::DropBoundingCapability { cap }, None)
    }

    fn clear_ambient_capabilities(&self) -> io::Result<()> {
        self.record(Call::ClearAmbientCapabilities, None)
    }

    fn close_fds_on_exec(&self, from: u32) -> io::Result<()> {
        self.record(Call::CloseFdsOnExec { from }, None)
    }

    fn join_new_session_keyring(&self) -> io::Result<()> {
        self.record(Call::JoinNewSessionKeyring, None)
    }

    fn end_others(&self) -> io::Result<()> {
        self.record(Call::EndOthers, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_calls_and_fails_only_the_chosen_ones() {
        let fake = RecordingSyscall::failing(
            |c| matches!(c, Call::Mount { fstype: Some(t), .. } if t == "sysfs"),
            libc::EPERM,
        );
        fake.mount(
            Some(Path::new("proc")),
            Path::new("/x"),
            Some("proc"),
            MsFlags::MS_NOSUID,
            None,
        )
        .unwrap();
        let e = fake
            .mount(None, Path::new("/y"), Some("sysfs"), MsFlags::empty(), None)
            .unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EPERM));
        fake.sethostname("h").unwrap();
        assert_eq!(
            fake.calls(),
            vec![
                Call::Mount {
                    source: Some("proc".into()),
                    target: "/x".into(),
                    fstype: Some("proc".into()),
                    flags: MsFlags::MS_NOSUID,
                    data: None,
                },
                Call::Mount {
                    source: None,
                    target: "/y".into(),
                    fstype: Some("sysfs".into()),
                    flags: MsFlags::empty(),
                    data: None,
                },
                Call::Sethostname { name: "h".into() },
            ]
        );
    }

    #[test]
    fn a_proc_fd_target_is_recorded_with_what_it_named() {
        let dir = std::fs::File::open(std::env::temp_dir()).unwrap();
        let target = format!("/proc/self/fd/{}", dir.as_raw_fd());
        let fake = RecordingSyscall::new();
        fake.umount2(Path::new(&target), MntFlags::MNT_DETACH)
            .unwrap();
        let rec = &fake.records()[0];
        assert_eq!(
            rec.target_at.as_deref(),
            Some(std::env::temp_dir().canonicalize().unwrap().as_path())
        );
    }
}
