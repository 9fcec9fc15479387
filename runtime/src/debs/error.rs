//! What can go wrong getting a locked `.deb` file and making a repository of them: every error
//! names the package (name, version, architecture), its sha256, and the path or URL at fault.
#![forbid(unsafe_code)]

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

use crate::store::StoreError;
use crate::tools::ToolError;

/// What went wrong with one URL.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Failure {
    /// The server answered with an error status.
    #[error("HTTP {status}{}", if reason.is_empty() { String::new() } else { format!(" {reason}") })]
    Status {
        /// The status code.
        status: u16,
        /// Its reason phrase, as the server gave it.
        reason: String,
    },
    /// No connection could be made (refused, unreachable, unknown host, TLS handshake, proxy).
    #[error("cannot connect: {reason}")]
    Connect {
        /// Why.
        reason: String,
    },
    /// The server stopped answering for longer than the stall timeout.
    #[error("no answer for {} s", timeout.as_secs_f64())]
    Timeout {
        /// How long envc waited for the next bytes.
        #[serde(with = "millis")]
        timeout: Duration,
    },
    /// The transfer broke off or the answer was not HTTP envc understands.
    #[error("transfer failed: {reason}")]
    Transfer {
        /// Why.
        reason: String,
    },
    /// The server announced a length other than the locked size.
    #[error("the server announces {announced} bytes, the lock says {expected}")]
    Length {
        /// The length the server announced (Content-Length, or a local file's size).
        announced: u64,
        /// The locked size.
        expected: u64,
    },
    /// The body ended before the locked size.
    #[error("only {got} bytes came, the lock says {expected}")]
    TooShort {
        /// How many bytes came.
        got: u64,
        /// The locked size.
        expected: u64,
    },
    /// The body went on past the locked size.
    #[error("more bytes came than the {expected} the lock says")]
    TooLong {
        /// The locked size.
        expected: u64,
    },
    /// The bytes are not the locked file.
    #[error("sha256 mismatch: got {got}, the lock says {expected}")]
    HashMismatch {
        /// The sha256 of what came.
        got: String,
        /// The locked sha256.
        expected: String,
    },
    /// A `file:` URI names no file.
    #[error("no such file")]
    NoFile,
    /// A `file:` URI names something other than a regular file.
    #[error("not a regular file: it is {found}")]
    NotRegular {
        /// What it is.
        found: &'static str,
    },
    /// A `file:` URI's file could not be read.
    #[error("cannot read: {reason}")]
    Read {
        /// Why.
        reason: String,
    },
    /// The URI is of a kind envc does not download from.
    #[error("unsupported URI: {reason}")]
    Unsupported {
        /// Why.
        reason: String,
    },
}

impl Failure {
    /// Whether another try at the same URL may succeed: a connection or transfer that failed, a
    /// timeout, a server error (5xx), a request timeout or too many requests. A missing file
    /// (404) or other bytes than the locked ones are final.
    pub fn is_transient(&self) -> bool {
        match self {
            Failure::Connect { .. }
            | Failure::Timeout { .. }
            | Failure::Transfer { .. }
            | Failure::TooShort { .. } => true,
            Failure::Status { status, .. } => *status >= 500 || *status == 408 || *status == 429,
            _ => false,
        }
    }
}

mod millis {
    pub fn serialize<S: serde::Serializer>(
        d: &std::time::Duration,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }
}

/// One URL tried for a package, and how its last try failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Attempt {
    /// The URL.
    pub url: String,
    /// How many times it was tried.
    pub tries: u32,
    /// How the last try failed.
    pub failure: Failure,
}

impl fmt::Display for Attempt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.url, self.failure)?;
        if self.tries > 1 {
            write!(f, " ({} tries)", self.tries)?;
        }
        Ok(())
    }
}

/// A locked package, as errors name it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PackageRef {
    /// `name version (arch)`.
    pub label: String,
    /// The locked sha256, as 64 hex digits.
    pub sha256: String,
    /// The locked size.
    pub size: u64,
}

impl PackageRef {
    pub(super) fn of(p: &envc_plan::lock::LockedPackage) -> Box<PackageRef> {
        Box::new(PackageRef {
            label: p.label(),
            sha256: p.sha256.to_hex(),
            size: p.size,
        })
    }
}

impl fmt::Display for PackageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (sha256 {}, {} bytes)",
            self.label, self.sha256, self.size
        )
    }
}

fn list(attempts: &[Attempt]) -> String {
    if attempts.is_empty() {
        return "no URL to try".into();
    }
    let mut s = String::from("tried:");
    for a in attempts {
        s.push_str("\n  ");
        s.push_str(&a.to_string());
    }
    s
}

/// A locked package whose file could not be had. Never a fallback to another version.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// Every URL was tried and none gave the locked file.
    #[error(
        "cannot fetch {package}: it is not in the store at {}{} and no mirror gave it; {}",
        path.display(),
        replaced.as_ref().map(|r| format!(" (the file there was removed: {r})")).unwrap_or_default(),
        list(attempts)
    )]
    Unavailable {
        /// The package.
        package: Box<PackageRef>,
        /// Where the store keeps its file.
        path: PathBuf,
        /// What was wrong with a file the store had there, which was removed.
        replaced: Option<String>,
        /// Every URL tried, in order.
        attempts: Vec<Attempt>,
    },
    /// Downloads are off and the store does not have the file.
    #[error(
        "{package} is not in the store at {}{}, and downloads are off",
        path.display(),
        replaced.as_ref().map(|r| format!(" (the file there was removed: {r})")).unwrap_or_default()
    )]
    Offline {
        /// The package.
        package: Box<PackageRef>,
        /// Where the store keeps its file.
        path: PathBuf,
        /// What was wrong with a file the store had there, which was removed.
        replaced: Option<String>,
    },
    /// The store has the file with the locked sha256, but of another size than the lock entry
    /// says: the entry is wrong (its size and sha256 disagree). The file stays.
    #[error(
        "{package}: the file with that sha256 is in the store at {} and has {actual} bytes, so the lock entry's size is wrong; write the lock again with `envc lock`",
        path.display()
    )]
    LockSize {
        /// The package.
        package: Box<PackageRef>,
        /// The stored file.
        path: PathBuf,
        /// Its size.
        actual: u64,
    },
    /// The lock entry's path in the archive is not one envc fetches.
    #[error("{package} has path `{path}` in the lock, which {reason}")]
    BadPath {
        /// The package.
        package: Box<PackageRef>,
        /// The path.
        path: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The store could not be read or written.
    #[error("{package}: {source}")]
    Store {
        /// The package.
        package: Box<PackageRef>,
        /// What failed.
        #[source]
        source: StoreError,
    },
    /// Several packages failed ([`super::DebStore::ensure_all`]).
    #[error(
        "{} of {total} packages could not be had:\n{}",
        errors.len(),
        errors.iter().map(|e| format!("- {e}")).collect::<Vec<_>>().join("\n")
    )]
    Several {
        /// How many packages were asked for.
        total: usize,
        /// Each failure, in the order of the packages.
        errors: Vec<FetchError>,
    },
}

/// A failure to make a local repository of locked files.
#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    /// A package's file is not in the store.
    #[error("{package} is not in the store at {}: fetch it first", path.display())]
    Missing {
        /// The package.
        package: Box<PackageRef>,
        /// Where the store keeps its file.
        path: PathBuf,
    },
    /// A package's stored file is not the locked file; it was removed.
    #[error("the stored file of {package} at {} is not the locked file ({reason}); it was removed: fetch it again", path.display())]
    Corrupt {
        /// The package.
        package: Box<PackageRef>,
        /// The file.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// The store has the file with the locked sha256, but of another size than the lock entry
    /// says: the entry is wrong. The file stays.
    #[error(
        "{package}: the file with that sha256 is in the store at {} and has {actual} bytes, so the lock entry's size is wrong; write the lock again with `envc lock`",
        path.display()
    )]
    LockSize {
        /// The package.
        package: Box<PackageRef>,
        /// The stored file.
        path: PathBuf,
        /// Its size.
        actual: u64,
    },
    /// `dpkg-deb --field` failed.
    #[error("cannot read the control fields of {package} from {}: {source}", path.display())]
    Control {
        /// The package.
        package: Box<PackageRef>,
        /// The file.
        path: PathBuf,
        /// What failed.
        #[source]
        source: Box<ToolError>,
    },
    /// A file's control fields do not describe the locked package, or are not one stanza.
    #[error("the control fields of {} ({package}) {reason}", path.display())]
    BadControl {
        /// The package.
        package: Box<PackageRef>,
        /// The file the fields came from.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The same package, version and architecture is locked with two different files.
    #[error("{label} is locked with two different files: sha256 {first} and {second}")]
    Conflict {
        /// `name version (arch)`.
        label: String,
        /// One sha256.
        first: String,
        /// The other.
        second: String,
    },
    /// A file of the repository could not be written.
    #[error("cannot {op} {}: {source}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// To what.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The store could not be read or written.
    #[error(transparent)]
    Store(#[from] StoreError),
}
