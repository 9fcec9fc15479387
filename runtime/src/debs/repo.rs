//! A flat apt repository of exactly the locked files, for an installation that must reach
//! nothing else: the files, a `Packages` index and a `Release` file, the same bytes for the same
//! set of files.
#![forbid(unsafe_code)]

use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use envc_plan::lock::{LockedPackage, Sha256};
use sha2::Digest as _;

use super::error::{PackageRef, RepoError};
use super::verify::{self, Check, CopyError};
use super::{DebStore, control_path};
use crate::store::record;
use crate::tools::Tool;

/// Index fields the repository writes itself; a control file that has them loses them.
const INDEX_FIELDS: &[&str] = &[
    "filename",
    "size",
    "md5sum",
    "sha1",
    "sha256",
    "sha512",
    "description-md5",
];

/// The largest control text envc accepts from `dpkg-deb --field` (real ones are a few KiB).
const MAX_CONTROL: usize = 1 << 20;

/// The `Date` of every `Release` envc writes: apt warns of a missing one, and a fixed one keeps
/// the file the same for the same set.
const RELEASE_DATE: &str = "Thu, 01 Jan 1970 00:00:00 UTC";

/// The name apt gives a package's file in its archives: `NAME_VERSION_ARCH.deb`, each part
/// with `_`, `:`, `%`, spaces, control and non-ASCII bytes written `%xx` (and `.` in the
/// architecture), as apt's `QuoteString` does; and `/`, which no Debian name, version or
/// architecture has (a lock entry is checked for Debian's syntax when it is read): the name is
/// always one file name in the repository, never a path out of it.
pub fn deb_file_name(p: &LockedPackage) -> String {
    format!(
        "{}_{}_{}.deb",
        quote(&p.name, b"_:/"),
        quote(&p.version, b"_:/"),
        quote(&p.arch, b"_:./")
    )
}

fn quote(s: &str, bad: &[u8]) -> String {
    let mut out = String::with_capacity(s.len());
    for &b in s.as_bytes() {
        if bad.contains(&b) || b == b'%' || b <= 0x20 || b >= 0x7f {
            let _ = write!(out, "%{b:02x}");
        } else {
            out.push(char::from(b));
        }
    }
    out
}

impl DebStore {
    /// Lays out a flat repository of the files of `pkgs` in `dir` (which exists, and holds no
    /// other repository's index): each file hard-linked from the store (copied if `dir` is on
    /// another filesystem) as [`deb_file_name`], checked against its lock entry first; a
    /// `Packages` index of their control fields, each stanza followed by `Filename`, `Size` and
    /// `SHA256`, sorted by name, architecture and version; and a `Release` file naming the
    /// index. The files must be in the store ([`DebStore::ensure_all`]). A package listed twice
    /// counts once; the same name, version and architecture with two different files is an
    /// error.
    pub fn make_repo(&self, pkgs: &[LockedPackage], dir: &Path) -> Result<(), RepoError> {
        self.make_repo_for(pkgs, dir, None)
    }

    /// [`DebStore::make_repo`], whose `Release` says it is `suite` (`Suite` and `Codename`):
    /// mmdebstrap picks a base's packages by their archive (`?archive(^SUITE$)`), so a locked
    /// base's repository must say it is the base's suite.
    pub fn make_repo_for(
        &self,
        pkgs: &[LockedPackage],
        dir: &Path,
        suite: Option<&str>,
    ) -> Result<(), RepoError> {
        let mut set: Vec<&LockedPackage> = pkgs.iter().collect();
        set.sort_by(|a, b| {
            (&a.name, &a.arch, &a.version, &a.sha256)
                .cmp(&(&b.name, &b.arch, &b.version, &b.sha256))
        });
        set.dedup_by(|b, a| {
            a.sha256 == b.sha256 && (&a.name, &a.arch, &a.version) == (&b.name, &b.arch, &b.version)
        });
        for w in set.windows(2) {
            if (&w[0].name, &w[0].arch, &w[0].version) == (&w[1].name, &w[1].arch, &w[1].version) {
                return Err(RepoError::Conflict {
                    label: w[0].label(),
                    first: w[0].sha256.to_hex(),
                    second: w[1].sha256.to_hex(),
                });
            }
        }
        let mut index = String::new();
        for p in set {
            let stored = self.path_of(&p.sha256);
            match self.check_stored(p)? {
                Check::Good => {}
                Check::Absent => {
                    return Err(RepoError::Missing {
                        package: PackageRef::of(p),
                        path: stored,
                    });
                }
                Check::LockSize(actual) => {
                    return Err(RepoError::LockSize {
                        package: PackageRef::of(p),
                        path: stored,
                        actual,
                    });
                }
                Check::Wrong(reason) => {
                    self.remove_stored(&stored)?;
                    return Err(RepoError::Corrupt {
                        package: PackageRef::of(p),
                        path: stored,
                        reason,
                    });
                }
            }
            let control = self.control(p)?;
            let name = deb_file_name(p);
            link_or_copy(&stored, &dir.join(&name), p)?;
            if !index.is_empty() {
                index.push('\n');
            }
            let _ = write!(
                index,
                "{control}\nFilename: ./{name}\nSize: {}\nSHA256: {}\n",
                p.size,
                p.sha256.to_hex()
            );
        }
        let packages = index.into_bytes();
        write_file(&dir.join("Packages"), &packages)?;
        let suite = suite
            .filter(|s| {
                s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
            })
            .map(|s| format!("Suite: {s}\nCodename: {s}\n"))
            .unwrap_or_default();
        let release = format!(
            "Origin: envc\nLabel: envc\n{suite}Date: {RELEASE_DATE}\nSHA256:\n {} {} Packages\n",
            Sha256(sha2::Sha256::digest(&packages).into()).to_hex(),
            packages.len()
        );
        write_file(&dir.join("Release"), release.as_bytes())?;
        Ok(())
    }

    /// The control fields of `p`'s stored file (checked already), without a trailing newline:
    /// from the cache beside it, or from `dpkg-deb --field` (then cached). Either way they must
    /// name the locked package, version and architecture.
    pub(crate) fn control(&self, p: &LockedPackage) -> Result<String, RepoError> {
        let stored = self.path_of(&p.sha256);
        let cache = control_path(&stored);
        let bad = |reason: String, path: &Path| RepoError::BadControl {
            package: PackageRef::of(p),
            path: path.to_owned(),
            reason,
        };
        if let Some(bytes) = record::read(&cache)? {
            // What the cache holds was checked when it was written and carries its own sha256;
            // checked again all the same (a few string comparisons). A cache that fails (disk
            // damage, a hand edit, cut short at a line: still fields of the package, but not all
            // of them) is only derived data: it goes, and the fields are read again from the
            // verified file.
            if let Some(control) = String::from_utf8(bytes)
                .ok()
                .and_then(|text| unseal(&text).map(str::to_owned))
                .and_then(|text| check_control(&text, p).ok())
            {
                return Ok(control);
            }
            record::remove_file(&cache)?;
        }
        let out = Tool::new("dpkg-deb")
            .and_then(|t| t.arg("--field").arg(&stored).output())
            .map_err(|source| RepoError::Control {
                package: PackageRef::of(p),
                path: stored.clone(),
                source: Box::new(source),
            })?;
        if out.len() > MAX_CONTROL {
            return Err(bad(format!("are longer than {MAX_CONTROL} bytes"), &stored));
        }
        let text = String::from_utf8(out).map_err(|_| bad("are not UTF-8".into(), &stored))?;
        let control = check_control(&text, p).map_err(|reason| bad(reason, &stored))?;
        record::write(&cache, seal(&control).as_bytes())?;
        Ok(control)
    }
}

/// The line that ends a control cache: its text's sha256.
const CACHE_SEAL: &str = "\n#envc-sha256 ";

/// A control cache's text: the fields, then their sha256.
fn seal(control: &str) -> String {
    format!(
        "{control}{CACHE_SEAL}{}\n",
        Sha256(sha2::Sha256::digest(control.as_bytes()).into()).to_hex()
    )
}

/// The fields of a control cache whose sha256 is right.
fn unseal(text: &str) -> Option<&str> {
    let (control, sum) = text.strip_suffix('\n')?.rsplit_once(CACHE_SEAL)?;
    let digest = Sha256(sha2::Sha256::digest(control.as_bytes()).into()).to_hex();
    (digest == sum).then_some(control)
}

/// Checks that `text` is one stanza of control fields for exactly the locked package, and gives
/// it without index fields and without trailing blank lines.
pub(super) fn check_control(text: &str, p: &LockedPackage) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut skipping = false;
    let mut fields: Vec<(String, String)> = Vec::new();
    for line in text.trim_end_matches(['\n', '\r']).split('\n') {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() {
            return Err("are not one stanza (they hold a blank line)".into());
        }
        if line.starts_with([' ', '\t']) {
            if fields.is_empty() {
                return Err("begin with a continuation line".into());
            }
            if !skipping {
                out.push_str(line);
                out.push('\n');
            }
            continue;
        }
        let Some((name, value)) = line.split_once(':') else {
            return Err(format!("hold a line that is not a field: `{line}`"));
        };
        if name.is_empty() || name.contains(char::is_whitespace) || name.starts_with(['#', '-']) {
            return Err(format!("hold a line that is not a field: `{line}`"));
        }
        let lower = name.to_ascii_lowercase();
        if fields.iter().any(|(n, _)| *n == lower) {
            return Err(format!("hold field {name} twice"));
        }
        fields.push((lower.clone(), value.trim().to_owned()));
        skipping = INDEX_FIELDS.contains(&lower.as_str());
        if !skipping {
            out.push_str(line);
            out.push('\n');
        }
    }
    let field = |n: &str| fields.iter().find(|(f, _)| f == n).map(|(_, v)| v.as_str());
    for (name, expected) in [
        ("package", &p.name),
        ("version", &p.version),
        ("architecture", &p.arch),
    ] {
        match field(name) {
            Some(v) if v == expected => {}
            Some(v) => return Err(format!("say {name} `{v}`, the lock says `{expected}`")),
            None => return Err(format!("have no {name} field")),
        }
    }
    out.pop();
    Ok(out)
}

/// Puts the stored file `src` (just checked) at `dst`: a hard link, or across filesystems a copy
/// checked against the lock entry as it is made. Whatever `dst` was is replaced.
fn link_or_copy(src: &Path, dst: &Path, p: &LockedPackage) -> Result<(), RepoError> {
    let io_err = |op, path: &Path| {
        let path = path.to_owned();
        move |source| RepoError::Io { op, path, source }
    };
    remove_existing(dst)?;
    match fs::hard_link(src, dst) {
        Ok(()) => return Ok(()),
        Err(e)
            if e.raw_os_error() == Some(libc::EXDEV)
                || e.kind() == io::ErrorKind::PermissionDenied => {}
        Err(e) => return Err(io_err("link", dst)(e)),
    }
    let mut from = match verify::open_regular(src).map_err(io_err("open", src))? {
        verify::Opened::File(f, _) => f,
        _ => {
            return Err(RepoError::Missing {
                package: PackageRef::of(p),
                path: src.to_owned(),
            });
        }
    };
    let mut to = create_new(dst).map_err(io_err("create", dst))?;
    // Reading the store's file or writing the copy: both this machine's files.
    let copied = verify::copy_verified(&mut from, Some(&mut to), p, &CopyError::Local);
    let done = match copied {
        Ok(()) => to.sync_all().map_err(io_err("sync", dst)),
        Err(CopyError::Local(e)) => Err(io_err("copy to", dst)(e)),
        Err(CopyError::Source(f)) => Err(RepoError::Corrupt {
            package: PackageRef::of(p),
            path: src.to_owned(),
            reason: f.to_string(),
        }),
    };
    if done.is_err() {
        let _ = fs::remove_file(dst);
    }
    done
}

/// Removes a file (or symlink) at `path`, if any; a directory is an error.
fn remove_existing(path: &Path) -> Result<(), RepoError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(RepoError::Io {
            op: "replace",
            path: path.to_owned(),
            source,
        }),
    }
}

/// Creates `path` afresh (never through a symlink), readable by all (apt reads the repository
/// as `_apt`).
fn create_new(path: &Path) -> io::Result<File> {
    let f = File::options()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)?;
    // Whatever the umask.
    f.set_permissions(fs::Permissions::from_mode(0o644))?;
    Ok(f)
}

/// Writes an index file of the repository, replacing whatever was there.
fn write_file(path: &Path, bytes: &[u8]) -> Result<(), RepoError> {
    remove_existing(path)?;
    let io_err = |op| {
        move |source| RepoError::Io {
            op,
            path: path.to_owned(),
            source,
        }
    };
    let mut f = create_new(path).map_err(io_err("create"))?;
    f.write_all(bytes).map_err(io_err("write"))?;
    f.sync_all().map_err(io_err("sync"))?;
    Ok(())
}
