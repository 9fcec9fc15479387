//! Record files on disk: durable writes, reads and lock files that never follow a symlink.
//!
//! A record (`store.json`, `meta/ID.json`, `roots/NAME/root.json`) is written to a temporary
//! `NAME.tmp.PID.N` beside it, created exclusively and without following a symlink, locked
//! (`flock`) for as long as it exists, fsynced, renamed over the record, and then the directory is
//! fsynced: after a crash or a power cut the record is the old one or the new one, never empty.
//! The lock tells `gc` that the temporary is still being written; one that is unlocked and whose
//! writer is gone is a leftover ([`is_leftover_tmp`]).
#![forbid(unsafe_code)]

use std::fs::{File, Metadata};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use rustix::fs::{AtFlags, FlockOperation, Mode, OFlags};

use super::StoreError;

/// The largest record envc reads (records are a few kilobytes).
pub const MAX_RECORD: u64 = 16 << 20;

/// How old an unlocked temporary of a live process must be to count as a leftover: writing a
/// record takes microseconds, so only a process that reused a dead writer's pid can be that slow.
pub const TMP_GRACE: Duration = Duration::from_secs(60);

/// What a file's type is called in messages.
pub fn type_name(m: &Metadata) -> &'static str {
    let t = m.file_type();
    if t.is_symlink() {
        "a symbolic link"
    } else if t.is_dir() {
        "a directory"
    } else if t.is_file() {
        "a regular file"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_block_device() || t.is_char_device() {
        "a device"
    } else {
        "a special file"
    }
}

/// The error for `path` being of the wrong type, read from the path itself (not followed).
pub fn wrong_type(path: &Path, expected: &'static str, repair: String) -> StoreError {
    let found = std::fs::symlink_metadata(path).map_or("unreadable", |m| type_name(&m));
    StoreError::WrongType {
        path: path.to_owned(),
        found,
        expected,
        repair,
    }
}

/// How to repair a record that is not a regular file.
fn record_repair(path: &Path) -> String {
    format!(
        "envc never follows a link or reads anything but a regular file in its store; remove it (`rm {}`) and run envc again",
        path.display()
    )
}

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> StoreError + 'a {
    move |source| StoreError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

/// Opens `path` without following a symlink and without blocking on a FIFO; anything but a
/// regular file is an error naming it. `None` if it does not exist.
fn open_regular(path: &Path, flags: OFlags) -> Result<Option<File>, StoreError> {
    let flags = flags | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC | OFlags::NOCTTY;
    let fd = match rustix::fs::open(path, flags, Mode::from_raw_mode(0o644)) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::NOENT) => return Ok(None),
        Err(rustix::io::Errno::LOOP | rustix::io::Errno::ISDIR | rustix::io::Errno::NXIO) => {
            return Err(wrong_type(path, "a regular file", record_repair(path)));
        }
        Err(e) => return Err(io("open", path)(e.into())),
    };
    let file = File::from(fd);
    let meta = file.metadata().map_err(io("inspect", path))?;
    if !meta.is_file() {
        return Err(StoreError::WrongType {
            path: path.to_owned(),
            found: type_name(&meta),
            expected: "a regular file",
            repair: record_repair(path),
        });
    }
    Ok(Some(file))
}

/// Reads a record's bytes: `None` if it does not exist. A symlink, a directory, a FIFO or a
/// device where the record should be is an error naming the path; so is a record larger than
/// [`MAX_RECORD`].
pub fn read(path: &Path) -> Result<Option<Vec<u8>>, StoreError> {
    let Some(file) = open_regular(path, OFlags::RDONLY)? else {
        return Ok(None);
    };
    let mut bytes = Vec::new();
    file.take(MAX_RECORD + 1)
        .read_to_end(&mut bytes)
        .map_err(io("read", path))?;
    if bytes.len() as u64 > MAX_RECORD {
        return Err(StoreError::Corrupt {
            path: path.to_owned(),
            reason: format!("larger than {MAX_RECORD} bytes, which no record is"),
        });
    }
    Ok(Some(bytes))
}

/// Opens (creating) a lock file without following a symlink: a link, a directory or anything
/// but a regular file there is an error naming the path, and nothing is created elsewhere.
pub fn open_lock(path: &Path) -> Result<File, StoreError> {
    let repair = || {
        format!(
            "envc never follows a link in its store; remove it (`rm {}`), envc makes a new lock file",
            path.display()
        )
    };
    let flags = OFlags::WRONLY | OFlags::CREATE;
    match open_regular(path, flags) {
        Ok(Some(f)) => Ok(f),
        // O_CREAT: only a race with a removal gets here.
        Ok(None) => Err(io("open lock", path)(io::ErrorKind::NotFound.into())),
        Err(StoreError::WrongType {
            path,
            found,
            expected,
            ..
        }) => Err(StoreError::WrongType {
            path,
            found,
            expected,
            repair: repair(),
        }),
        Err(StoreError::Io { path, source, .. }) => Err(StoreError::Io {
            op: "open lock",
            path,
            source,
        }),
        Err(e) => Err(e),
    }
}

/// Opens a directory that holds records, refusing a symlink in its place.
fn open_dir(dir: &Path) -> Result<OwnedFd, StoreError> {
    rustix::fs::open(
        dir,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| match e {
        rustix::io::Errno::LOOP | rustix::io::Errno::NOTDIR => wrong_type(
            dir,
            "a directory",
            format!(
                "envc never follows a link in its store; remove it (`rm {}`) and run envc again",
                dir.display()
            ),
        ),
        e => io("open", dir)(e.into()),
    })
}

/// The temporary name of a record write: `NAME.tmp.PID.N`, unique within the host.
fn tmp_name(name: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "{name}.tmp.{}.{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Writes `bytes` as the record at `path`, durably: exclusive temporary (never through a
/// symlink), locked while it exists, fsync, rename, fsync of the directory.
pub fn write(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name().and_then(|n| n.to_str())) else {
        return Err(io("write record", path)(io::ErrorKind::InvalidInput.into()));
    };
    write_in(dir, &[(name, bytes)])?.pop().unwrap_or(Ok(()))
}

/// Writes several records in one directory as [`write`] does, with one fsync of the directory
/// for all of them. An error of the directory fails them all; otherwise each has its own result.
pub fn write_in(
    dir: &Path,
    records: &[(&str, &[u8])],
) -> Result<Vec<Result<(), StoreError>>, StoreError> {
    let dirfd = open_dir(dir)?;
    // Each temporary stays open (and locked) until its rename: gc never takes it for a leftover.
    let mut staged: Vec<Result<(String, File), StoreError>> = Vec::with_capacity(records.len());
    for (name, bytes) in records {
        staged.push(stage(&dirfd, dir, name, bytes));
    }
    let mut results = Vec::with_capacity(records.len());
    for ((name, _), tmp) in records.iter().zip(staged) {
        results.push(tmp.and_then(|(tmp, file)| {
            let renamed = rustix::fs::renameat(&dirfd, tmp.as_str(), &dirfd, *name)
                .map_err(|e| io("publish", &dir.join(name))(e.into()));
            if renamed.is_err() {
                let _ = rustix::fs::unlinkat(&dirfd, tmp.as_str(), AtFlags::empty());
            }
            drop(file);
            renamed
        }));
    }
    rustix::fs::fsync(dirfd.as_fd()).map_err(|e| io("sync", dir)(e.into()))?;
    Ok(results)
}

/// Creates, locks, writes and fsyncs the temporary of record `name` in `dirfd`.
fn stage(
    dirfd: &OwnedFd,
    dir: &Path,
    name: &str,
    bytes: &[u8],
) -> Result<(String, File), StoreError> {
    let tmp = tmp_name(name);
    let tmp_path = dir.join(&tmp);
    let fd = rustix::fs::openat(
        dirfd,
        tmp.as_str(),
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o644),
    )
    .map_err(|e| io("create", &tmp_path)(e.into()))?;
    let mut file = File::from(fd);
    let written = rustix::fs::flock(&file, FlockOperation::LockExclusive)
        .map_err(|e| io("lock", &tmp_path)(e.into()))
        .and_then(|()| file.write_all(bytes).map_err(io("write", &tmp_path)))
        .and_then(|()| file.sync_all().map_err(io("sync", &tmp_path)));
    match written {
        Ok(()) => Ok((tmp, file)),
        Err(e) => {
            let _ = rustix::fs::unlinkat(dirfd, tmp.as_str(), AtFlags::empty());
            Err(e)
        }
    }
}

/// The pid in a record temporary's name (`NAME.tmp.PID` as older envc wrote it, or
/// `NAME.tmp.PID.N`), or `None` if `name` is not one.
pub fn tmp_pid(name: &str) -> Option<u32> {
    let (_, tail) = name.rsplit_once(".tmp.")?;
    let mut parts = tail.split('.');
    let pid = parts.next()?.parse::<u32>().ok()?;
    match (parts.next(), parts.next()) {
        (None, _) => Some(pid),
        (Some(n), None) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => Some(pid),
        _ => None,
    }
}

/// Whether a process with this pid exists (in this pid namespace).
pub fn pid_alive(pid: u32) -> bool {
    Path::new("/proc").join(pid.to_string()).exists()
}

/// Whether the record temporary at `path` is a leftover of a writer that is gone: it is a
/// regular file, nobody holds its lock, and its writer's pid no longer exists (or, with a pid
/// that may have been reused, it is older than [`TMP_GRACE`]). The lock is the proof a writer
/// is alive; the pid and age only close the moment between creating the file and locking it.
pub fn is_leftover_tmp(path: &Path, pid: u32) -> Result<bool, StoreError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(io("inspect", path)(e)),
    };
    if !meta.is_file() {
        return Ok(false);
    }
    let file = match open_regular(path, OFlags::RDONLY) {
        Ok(Some(f)) => f,
        Ok(None) | Err(StoreError::WrongType { .. }) => return Ok(false),
        Err(e) => return Err(e),
    };
    match rustix::fs::flock(&file, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => {}
        Err(rustix::io::Errno::WOULDBLOCK) => return Ok(false),
        Err(e) => return Err(io("lock", path)(e.into())),
    }
    let age = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
        .saturating_sub(u64::try_from(meta.mtime()).unwrap_or(0));
    Ok(!pid_alive(pid) || age >= TMP_GRACE.as_secs())
}

/// Removes `path` if it is not a directory (a leftover file or link); `true` if it was removed.
pub fn remove_file(path: &Path) -> Result<bool, StoreError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io("remove", path)(e)),
    }
}

/// The entries of a directory, as paths with their names (a missing directory has none).
pub fn entries(dir: &Path) -> Result<Vec<(PathBuf, String)>, StoreError> {
    let list = match std::fs::read_dir(dir) {
        Ok(l) => l,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io("list", dir)(e)),
    };
    let mut out = Vec::new();
    for e in list {
        let e = e.map_err(io("list", dir))?;
        if let Some(name) = e.file_name().to_str() {
            out.push((e.path(), name.to_owned()));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tempdir(name: &str) -> PathBuf {
        let p = std::env::temp_dir().join(format!(
            "envc-record-{name}-{}-{}",
            std::process::id(),
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap()
                .subsec_nanos()
        ));
        std::fs::create_dir_all(&p).unwrap();
        p
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = entries(dir).unwrap().into_iter().map(|(_, n)| n).collect();
        v.sort();
        v
    }

    #[test]
    fn a_write_replaces_the_record_and_leaves_no_temporary() {
        let dir = tempdir("write");
        let rec = dir.join("r.json");
        write(&rec, b"one").unwrap();
        write(&rec, b"two").unwrap();
        assert_eq!(std::fs::read(&rec).unwrap(), b"two");
        assert_eq!(names(&dir), ["r.json"]);
        assert_eq!(read(&rec).unwrap().as_deref(), Some(&b"two"[..]));
        assert_eq!(read(&dir.join("none.json")).unwrap(), None);
        // Several at once: each replaced, no temporary left.
        let results = write_in(&dir, &[("r.json", b"three"), ("s.json", b"four")]).unwrap();
        assert!(results.iter().all(Result::is_ok), "{results:?}");
        assert_eq!(std::fs::read(&rec).unwrap(), b"three");
        assert_eq!(names(&dir), ["r.json", "s.json"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_record_that_is_a_link_or_a_fifo_or_too_big_is_refused_by_name() {
        let dir = tempdir("types");
        let target = dir.join("target");
        std::fs::write(&target, "{}").unwrap();
        let link = dir.join("link.json");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let e = read(&link).unwrap_err().to_string();
        assert!(
            e.contains("link.json") && e.contains("a symbolic link"),
            "{e}"
        );
        let fifo = dir.join("fifo.json");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        // Returns at once: a FIFO is never opened for reading (which would block).
        let e = read(&fifo).unwrap_err().to_string();
        assert!(e.contains("fifo.json") && e.contains("a FIFO"), "{e}");
        let sub = dir.join("sub.json");
        std::fs::create_dir(&sub).unwrap();
        let e = read(&sub).unwrap_err().to_string();
        assert!(e.contains("a directory"), "{e}");
        let big = dir.join("big.json");
        File::create(&big).unwrap().set_len(MAX_RECORD + 1).unwrap();
        assert!(matches!(read(&big), Err(StoreError::Corrupt { .. })));
        // Writing through a directory link is refused; the link's target gets nothing.
        let real = dir.join("real");
        std::fs::create_dir(&real).unwrap();
        std::os::unix::fs::symlink(&real, dir.join("linked")).unwrap();
        let e = write(&dir.join("linked/r.json"), b"x")
            .unwrap_err()
            .to_string();
        assert!(e.contains("linked") && e.contains("a symbolic link"), "{e}");
        assert!(names(&real).is_empty());
        // Writing over a record that is a link replaces the link, never its target.
        write(&link, b"new").unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"{}");
        assert!(std::fs::symlink_metadata(&link).unwrap().is_file());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_lock_file_link_is_refused_and_its_target_not_created() {
        let dir = tempdir("lock");
        let target = dir.join("outside");
        let lock = dir.join("x.lock");
        std::os::unix::fs::symlink(&target, &lock).unwrap();
        let e = open_lock(&lock).unwrap_err().to_string();
        assert!(e.contains("x.lock") && e.contains("symbolic link"), "{e}");
        assert!(!target.exists());
        std::fs::remove_file(&lock).unwrap();
        open_lock(&lock).unwrap();
        assert!(std::fs::symlink_metadata(&lock).unwrap().is_file());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn temporaries_name_their_writer_and_count_as_leftovers_only_when_unlocked() {
        assert_eq!(tmp_pid("ab.json.tmp.123.4"), Some(123));
        assert_eq!(tmp_pid("ab.tmp.77"), Some(77));
        assert_eq!(tmp_pid("root.json"), None);
        assert_eq!(tmp_pid("x.tmp.12.a"), None);
        assert_eq!(tmp_pid("x.tmp."), None);
        let dir = tempdir("leftover");
        let tmp = dir.join("r.json.tmp.1.0");
        std::fs::write(&tmp, "half").unwrap();
        // A live writer (this process) that holds the lock: never a leftover.
        let held = File::open(&tmp).unwrap();
        rustix::fs::flock(&held, FlockOperation::LockExclusive).unwrap();
        let me = std::process::id();
        assert!(!is_leftover_tmp(&tmp, me).unwrap());
        drop(held);
        // Unlocked, its pid alive and the file fresh: the moment before the writer locks it.
        assert!(!is_leftover_tmp(&tmp, me).unwrap());
        // Unlocked and its pid gone: a leftover.
        assert!(is_leftover_tmp(&tmp, u32::MAX - 1).unwrap());
        // Unlocked, its pid alive (reused) but older than any write takes: a leftover.
        File::options()
            .write(true)
            .open(&tmp)
            .unwrap()
            .set_modified(SystemTime::now() - TMP_GRACE - Duration::from_secs(1))
            .unwrap();
        assert!(is_leftover_tmp(&tmp, me).unwrap());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
