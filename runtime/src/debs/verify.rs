//! Reading `.deb` files without surprises and checking them against their lock entry: open a
//! regular file only (never through a symlink at its name, never blocking on a FIFO), count and
//! hash the bytes as they pass, stop one byte past the locked size.
#![forbid(unsafe_code)]

use std::fs::{File, Metadata};
use std::io::{self, Read, Write};
use std::path::Path;

use envc_plan::lock::{LockedPackage, Sha256};
use rustix::fs::{Mode, OFlags};
use sha2::Digest as _;

use super::error::Failure;
use crate::store::record;

/// The size of the buffer files are copied and hashed through.
const BUF: usize = 256 * 1024;

/// What is at a path that should hold a regular file.
pub(super) enum Opened {
    /// A regular file, open for reading, and its metadata.
    File(File, Metadata),
    /// Nothing.
    Absent,
    /// Something else: what it is (`a symbolic link`, `a directory`, `a FIFO`).
    Other(&'static str),
}

/// Opens `path` for reading without following a symlink at its last component and without
/// blocking on a FIFO or a device.
pub(super) fn open_regular(path: &Path) -> io::Result<Opened> {
    let flags =
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC | OFlags::NOCTTY;
    let fd = match rustix::fs::open(path, flags, Mode::empty()) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::NOENT) => return Ok(Opened::Absent),
        Err(rustix::io::Errno::LOOP) => return Ok(Opened::Other("a symbolic link")),
        Err(rustix::io::Errno::NXIO) => return Ok(Opened::Other("a socket")),
        Err(e) => return Err(e.into()),
    };
    let file = File::from(fd);
    let meta = file.metadata()?;
    if meta.is_file() {
        Ok(Opened::File(file, meta))
    } else {
        Ok(Opened::Other(record::type_name(&meta)))
    }
}

/// Why a copy did not give the locked file.
#[derive(Debug)]
pub(super) enum CopyError {
    /// The source gave other bytes, too few or too many, or failed to give them.
    Source(Failure),
    /// A file of this machine's own could not be read or written (the store's disk, not a
    /// mirror).
    Local(io::Error),
}

/// Copies `src` to `sink` (when given), checking that it is exactly the locked file: at most
/// `size + 1` bytes are read, and the sha256 is computed on the way. `on_read` says what an
/// error reading the source is (a download's timeout, a failure of the store's disk).
pub(super) fn copy_verified(
    src: &mut dyn Read,
    mut sink: Option<&mut dyn Write>,
    p: &LockedPackage,
    on_read: &dyn Fn(io::Error) -> CopyError,
) -> Result<(), CopyError> {
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; BUF];
    let mut got: u64 = 0;
    let mut limited = src.take(p.size.saturating_add(1));
    loop {
        let n = match limited.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(on_read(e)),
        };
        got += n as u64;
        if got > p.size {
            return Err(CopyError::Source(Failure::TooLong { expected: p.size }));
        }
        hasher.update(&buf[..n]);
        if let Some(sink) = sink.as_mut() {
            sink.write_all(&buf[..n]).map_err(CopyError::Local)?;
        }
    }
    if got < p.size {
        return Err(CopyError::Source(Failure::TooShort {
            got,
            expected: p.size,
        }));
    }
    let digest = Sha256(hasher.finalize().into());
    if digest != p.sha256 {
        return Err(CopyError::Source(Failure::HashMismatch {
            got: digest.to_hex(),
            expected: p.sha256.to_hex(),
        }));
    }
    Ok(())
}

/// Checks the file at `path` against the lock entry (a symlink there is not followed: it is
/// something else than the file).
pub(super) fn check_file(path: &Path, p: &LockedPackage) -> io::Result<Check> {
    let (mut file, meta) = match open_regular(path)? {
        Opened::File(f, m) => (f, m),
        Opened::Absent => return Ok(Check::Absent),
        Opened::Other(what) => return Ok(Check::Wrong(format!("it is {what}"))),
    };
    if meta.len() != p.size {
        // The name is the file's sha256: a file that has it is the right file, and the lock
        // entry's size is what is wrong. Such a file is kept (other locks use it).
        let actual = LockedPackage {
            size: meta.len(),
            ..p.clone()
        };
        return match copy_verified(&mut file, None, &actual, &CopyError::Local) {
            Ok(()) => Ok(Check::LockSize(meta.len())),
            Err(CopyError::Source(_)) => Ok(Check::Wrong(format!(
                "it has {} bytes, the lock says {}",
                meta.len(),
                p.size
            ))),
            Err(CopyError::Local(e)) => Err(e),
        };
    }
    match copy_verified(&mut file, None, p, &CopyError::Local) {
        Ok(()) => Ok(Check::Good),
        Err(CopyError::Source(f)) => Ok(Check::Wrong(f.to_string())),
        Err(CopyError::Local(e)) => Err(e),
    }
}

/// What a stored file is, checked against its lock entry.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Check {
    /// Exactly the locked file.
    Good,
    /// Nothing there.
    Absent,
    /// Something else: what is wrong with it.
    Wrong(String),
    /// The file with the locked sha256, of another size than the lock entry says (this many
    /// bytes): the lock is wrong, not the file, which stays.
    LockSize(u64),
}
