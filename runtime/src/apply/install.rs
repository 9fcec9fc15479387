//! envc's own installer of a locked set: the lock already says what to install, so apt's
//! resolver is not needed, and dpkg does the installing.
//!
//! - The order comes from the packages' own control fields: for a base, the essential packages
//!   (`Essential: yes` and what they depend on) first, as mmdebstrap does; then the rest in waves,
//!   a package in a later wave than everything its `Pre-Depends` (and what those need) lead to.
//! - While dpkg works, other threads give every `.deb` an uncompressed data member (its
//!   `control.tar` and every other member stay as they are; `dpkg-deb --fsys-tarfile` does the
//!   decompressing): dpkg, one package at a time, then spends no time decompressing, and the
//!   decompressing runs on the other cores, ahead of dpkg.
//! - For a base, the essential packages' files are first put into the empty root by envc
//!   (mmdebstrap uses tar), every path resolved inside the root, so that their maintainer scripts
//!   have a shell and dpkg to run; then `dpkg --install` installs them properly, and each wave
//!   after them, inside the step sandbox: no network, a step's capabilities and system-call
//!   filter. A hostile lock that names a hostile package reaches only the root being built.
#![forbid(unsafe_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};

use envc_plan::lock::LockedPackage;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{FchmodatFlags, Mode, SFlag, UtimensatFlags, fchmod, fstatat, utimensat};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid, UnlinkatFlags, fchown, fchownat, unlinkat};

use crate::debs::DebStore;
use crate::sandbox::mkdir_in_root;

/// What ordering needs of a package's control fields.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Relations {
    pub name: String,
    pub essential: bool,
    /// Each relation a list of alternatives, as package names (qualifiers and versions dropped).
    pub depends: Vec<Vec<String>>,
    pub pre_depends: Vec<Vec<String>>,
    pub provides: Vec<String>,
}

/// The relations in one stanza of control fields.
pub(super) fn relations(control: &str) -> Relations {
    let mut fields: BTreeMap<String, String> = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in control.lines() {
        if line.starts_with([' ', '\t']) {
            if let Some(v) = current.as_ref().and_then(|c| fields.get_mut(c)) {
                v.push(' ');
                v.push_str(line.trim());
            }
            continue;
        }
        if let Some((k, v)) = line.split_once(':') {
            let k = k.trim().to_ascii_lowercase();
            fields.insert(k.clone(), v.trim().to_owned());
            current = Some(k);
        }
    }
    let list = |f: &str| -> Vec<Vec<String>> {
        fields
            .get(f)
            .map(|v| {
                v.split(',')
                    .map(|rel| {
                        rel.split('|')
                            .filter_map(|alt| {
                                let n = alt.trim().split([' ', '(', '[', '<']).next()?;
                                let n = n.split(':').next()?;
                                (!n.is_empty()).then(|| n.to_owned())
                            })
                            .collect::<Vec<_>>()
                    })
                    .filter(|alts| !alts.is_empty())
                    .collect()
            })
            .unwrap_or_default()
    };
    Relations {
        name: fields.get("package").cloned().unwrap_or_default(),
        essential: fields
            .get("essential")
            .is_some_and(|v| v.eq_ignore_ascii_case("yes")),
        depends: list("depends"),
        pre_depends: list("pre-depends"),
        provides: list("provides").into_iter().flatten().collect(),
    }
}

/// The order of an installation, as indexes into the packages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Order {
    /// Put into the root by envc, then installed by one `dpkg --install --force-depends`.
    pub essential: Vec<usize>,
    /// Installed one `dpkg --install` after the other.
    pub waves: Vec<Vec<usize>>,
}

/// Orders `pkgs`. With `essential`, the essential packages and their dependencies come first
/// (a base); the rest go in waves: a package's wave is at least that of everything it depends on,
/// and later than that of everything its pre-dependencies need, so that each is configured
/// before it is unpacked. A dependency on a name outside the set counts as met (it is installed
/// already, or the lock's comparison afterwards says what is wrong). Within a wave, by name.
pub(super) fn order(pkgs: &[Relations], essential: bool) -> Order {
    let mut by_name: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, p) in pkgs.iter().enumerate() {
        by_name.entry(p.name.as_str()).or_default().push(i);
        for v in &p.provides {
            by_name.entry(v.as_str()).or_default().push(i);
        }
    }
    let targets = |rels: &[Vec<String>]| -> BTreeSet<usize> {
        rels.iter()
            .flatten()
            .flat_map(|n| by_name.get(n.as_str()).into_iter().flatten().copied())
            .collect()
    };
    let deps: Vec<BTreeSet<usize>> = pkgs
        .iter()
        .map(|p| {
            let mut d = targets(&p.depends);
            d.extend(targets(&p.pre_depends));
            d
        })
        .collect();
    let pre: Vec<BTreeSet<usize>> = pkgs.iter().map(|p| targets(&p.pre_depends)).collect();
    let closure = |start: &mut dyn Iterator<Item = usize>, within: &dyn Fn(usize) -> bool| {
        let mut seen = BTreeSet::new();
        let mut todo: Vec<usize> = start.filter(|&i| within(i)).collect();
        while let Some(i) = todo.pop() {
            if seen.insert(i) {
                todo.extend(deps[i].iter().copied().filter(|&d| within(d)));
            }
        }
        seen
    };
    let first: BTreeSet<usize> = if essential {
        closure(&mut (0..pkgs.len()).filter(|&i| pkgs[i].essential), &|_| {
            true
        })
    } else {
        BTreeSet::new()
    };
    let rest: Vec<usize> = (0..pkgs.len()).filter(|i| !first.contains(i)).collect();
    // A package's level is at least that of each dependency, and above that of each
    // pre-dependency (whose own level is at least that of everything it needs). The levels are
    // longest paths over the strongly connected components, dependencies first: linear, where
    // iterating to a fixed point took cubic time on a hostile chain of pre-dependencies. A
    // component with a pre-dependency inside is a cycle no order satisfies: the last level.
    let local: BTreeMap<usize, usize> = rest.iter().enumerate().map(|(k, &i)| (i, k)).collect();
    let needs: Vec<Vec<(usize, bool)>> = rest
        .iter()
        .map(|&i| {
            deps[i]
                .iter()
                .filter(|&&d| d != i)
                .filter_map(|d| local.get(d).map(|&k| (k, pre[i].contains(d))))
                .collect()
        })
        .collect();
    let top = rest.len();
    let mut lv = vec![0usize; rest.len()];
    let mut comp_of = vec![usize::MAX; rest.len()];
    for (c, comp) in components(&needs).into_iter().enumerate() {
        for &v in &comp {
            comp_of[v] = c;
        }
        let mut l = 0;
        for &v in &comp {
            for &(u, is_pre) in &needs[v] {
                if comp_of[u] == c {
                    if is_pre {
                        l = top;
                    }
                } else {
                    l = l.max(lv[u] + usize::from(is_pre));
                }
            }
        }
        for &v in &comp {
            lv[v] = l.min(top);
        }
    }
    let level: BTreeMap<usize, usize> = rest.iter().zip(lv).map(|(&i, l)| (i, l)).collect();
    let by_name_order =
        |v: &mut Vec<usize>| v.sort_by(|&a, &b| pkgs[a].name.cmp(&pkgs[b].name).then(a.cmp(&b)));
    let mut waves: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for (i, l) in level {
        waves.entry(l).or_default().push(i);
    }
    let mut essential: Vec<usize> = first.into_iter().collect();
    by_name_order(&mut essential);
    Order {
        essential,
        waves: waves
            .into_values()
            .map(|mut v| {
                by_name_order(&mut v);
                v
            })
            .collect(),
    }
}

/// The strongly connected components of the graph `edges` (each node's successors), each after
/// every component it reaches (Tarjan's algorithm, without recursion: a hostile graph can be
/// deep).
fn components(edges: &[Vec<(usize, bool)>]) -> Vec<Vec<usize>> {
    let n = edges.len();
    let (mut index, mut low) = (vec![usize::MAX; n], vec![0; n]);
    let mut on_stack = vec![false; n];
    let (mut stack, mut out, mut next) = (Vec::new(), Vec::new(), 0);
    for start in 0..n {
        if index[start] != usize::MAX {
            continue;
        }
        let mut calls = vec![(start, 0)];
        (index[start], low[start], next) = (next, next, next + 1);
        stack.push(start);
        on_stack[start] = true;
        while let Some(&(v, e)) = calls.last() {
            if let Some(&(w, _)) = edges[v].get(e) {
                if let Some(c) = calls.last_mut() {
                    c.1 += 1;
                }
                if index[w] == usize::MAX {
                    (index[w], low[w], next) = (next, next, next + 1);
                    stack.push(w);
                    on_stack[w] = true;
                    calls.push((w, 0));
                } else if on_stack[w] {
                    low[v] = low[v].min(index[w]);
                }
                continue;
            }
            calls.pop();
            if let Some(&(u, _)) = calls.last() {
                low[u] = low[u].min(low[v]);
            }
            if low[v] == index[v] {
                let mut comp = Vec::new();
                while let Some(w) = stack.pop() {
                    on_stack[w] = false;
                    comp.push(w);
                    if w == v {
                        break;
                    }
                }
                out.push(comp);
            }
        }
    }
    out
}

/// An ar member header's fields.
struct Member {
    name: Vec<u8>,
    header: [u8; 60],
    size: u64,
}

fn read_member(r: &mut impl Read) -> io::Result<Option<Member>> {
    let mut header = [0u8; 60];
    let mut got = 0;
    while got < 60 {
        let n = r.read(&mut header[got..])?;
        if n == 0 {
            return if got == 0 {
                Ok(None)
            } else {
                Err(bad("a member header is cut short"))
            };
        }
        got += n;
    }
    if &header[58..60] != b"`\n" {
        return Err(bad("a member header is damaged"));
    }
    let size = std::str::from_utf8(&header[48..58])
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .ok_or_else(|| bad("a member's size is not a number"))?;
    let name = header[..16]
        .iter()
        .copied()
        .take_while(|&b| b != b' ')
        .collect::<Vec<u8>>();
    let name = name.strip_suffix(b"/").map(<[u8]>::to_vec).unwrap_or(name);
    Ok(Some(Member { name, header, size }))
}

fn bad(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("not a .deb archive: {what}"),
    )
}

/// Where the data member's tar stream is in an unpacked `.deb`.
#[derive(Debug, Clone, Copy)]
pub(super) struct DataSpan {
    pub offset: u64,
    pub len: u64,
}

/// Writes `dst`: the `.deb` at `src` with its data member decompressed (`data.tar`), by
/// `dpkg-deb --fsys-tarfile`; every other member as it is, in the same order.
pub(super) fn uncompressed_deb(dpkg_deb: &Path, src: &Path, dst: &Path) -> io::Result<DataSpan> {
    let mut input = io::BufReader::new(File::open(src)?);
    let mut magic = [0u8; 8];
    input.read_exact(&mut magic)?;
    if &magic != b"!<arch>\n" {
        return Err(bad("no ar signature"));
    }
    let mut out = File::options().write(true).create_new(true).open(dst)?;
    out.write_all(&magic)?;
    let mut span = None;
    while let Some(m) = read_member(&mut input)? {
        let padded = m.size + (m.size & 1);
        if m.name.starts_with(b"data.tar") && span.is_none() {
            io::copy(&mut (&mut input).take(padded), &mut io::sink())?;
            // The header is written again once the size is known.
            let at = out.stream_position()?;
            out.write_all(&[b' '; 60])?;
            let status = Command::new(dpkg_deb)
                .arg("--fsys-tarfile")
                .arg(src)
                .stdin(Stdio::null())
                .stdout(out.try_clone()?)
                .stderr(Stdio::piped())
                .output()?;
            if !status.status.success() {
                return Err(io::Error::other(format!(
                    "dpkg-deb --fsys-tarfile failed: {}",
                    String::from_utf8_lossy(&status.stderr).trim()
                )));
            }
            let end = out.seek(SeekFrom::End(0))?;
            let len = end - at - 60;
            // An ar header has ten digits for the size: a bigger data member (a decompression
            // bomb) cannot be written as one.
            if len > 9_999_999_999 {
                return Err(bad("the data member is too big to be unpacked"));
            }
            if len & 1 == 1 {
                out.write_all(b"\n")?;
            }
            let mut header = m.header;
            header[..16].copy_from_slice(format!("{:<16}", "data.tar").as_bytes());
            header[48..58].copy_from_slice(format!("{len:<10}").as_bytes());
            out.seek(SeekFrom::Start(at))?;
            out.write_all(&header)?;
            out.seek(SeekFrom::End(0))?;
            span = Some(DataSpan {
                offset: at + 60,
                len,
            });
        } else {
            out.write_all(&m.header)?;
            let copied = io::copy(&mut (&mut input).take(padded), &mut out)?;
            if copied != padded {
                return Err(bad("a member is cut short"));
            }
        }
    }
    span.ok_or_else(|| bad("no data member"))
}

/// One entry's path inside the root, made relative; `None` for the root itself. `..` is refused.
fn entry_path(raw: &[u8]) -> Result<Option<String>, String> {
    let text = std::str::from_utf8(raw)
        .map_err(|_| format!("a path that is not UTF-8: {}", String::from_utf8_lossy(raw)))?;
    let mut parts = Vec::new();
    for part in text.split('/') {
        match part {
            "" | "." => {}
            ".." => return Err(format!("a path with `..`: {text}")),
            p => parts.push(p),
        }
    }
    Ok((!parts.is_empty()).then(|| parts.join("/")))
}

/// The parent directory of `rel` in the root (made when missing) and the last name.
fn parent_of<'a>(root: &OwnedFd, rel: &'a str) -> Result<(OwnedFd, &'a str), String> {
    let (dir, name) = rel.rsplit_once('/').unwrap_or(("", rel));
    let fd = mkdir_in_root(root, dir, 0o755).map_err(|e| format!("cannot make /{dir}: {e}"))?;
    Ok((fd, name))
}

/// Removes what is at `name` in `dir` unless it is a directory (or nothing); a directory is an
/// error unless `keep_dir`.
fn clear(dir: &OwnedFd, name: &str, rel: &str) -> Result<(), String> {
    match fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Err(nix::errno::Errno::ENOENT) => Ok(()),
        Err(e) => Err(format!("cannot look at /{rel}: {e}")),
        Ok(st) if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR => {
            Err(format!("/{rel} is a directory"))
        }
        Ok(_) => unlinkat(dir, name, UnlinkatFlags::NoRemoveDir)
            .map_err(|e| format!("cannot replace /{rel}: {e}")),
    }
}

/// The most a GNU long name or link, or a pax header, may hold (a path is at most 4096 bytes).
const META_MAX: u64 = 64 * 1024;

fn mtime(secs: u64) -> TimeSpec {
    TimeSpec::new(i64::try_from(secs).unwrap_or(i64::MAX), 0)
}

/// Puts the files of the data member at `span` of `deb` into the root open at `root`, as tar
/// would in a chroot: owners by number, modes with setuid bits, mtimes; an existing directory (or
/// symlink to one) is kept; every path resolved inside the root. Directories' mtimes are set
/// once everything is in. A device node is refused (no Debian package ships one).
pub(super) fn extract(root: &OwnedFd, deb: &Path, span: DataSpan) -> Result<(), String> {
    let mut file = File::open(deb).map_err(|e| format!("cannot open {}: {e}", deb.display()))?;
    file.seek(SeekFrom::Start(span.offset))
        .map_err(|e| format!("cannot read {}: {e}", deb.display()))?;
    let mut archive = tar::Archive::new(io::BufReader::new(file).take(span.len));
    let mut dirs: Vec<(String, u64)> = Vec::new();
    // Raw entries: the tar crate would read a GNU long name or link, or a pax header, into
    // memory whatever its size; envc reads them, up to a bound.
    let entries = archive
        .entries()
        .map_err(|e| format!("cannot read {}: {e}", deb.display()))?
        .raw(true);
    let (mut long_name, mut long_link, mut pax) = (None, None, None);
    for entry in entries {
        let mut entry = entry.map_err(|e| format!("cannot read {}: {e}", deb.display()))?;
        let kind = entry.header().entry_type();
        let slot: Option<&mut Option<Vec<u8>>> = if kind.is_gnu_longname() {
            Some(&mut long_name)
        } else if kind.is_gnu_longlink() {
            Some(&mut long_link)
        } else if kind.is_pax_local_extensions() {
            Some(&mut pax)
        } else {
            None
        };
        if let Some(slot) = slot {
            let size = entry.size();
            if size > META_MAX || slot.is_some() {
                return Err(format!(
                    "cannot read {}: a {kind:?} entry of {size} bytes (after another, or too big)",
                    deb.display()
                ));
            }
            let mut v = Vec::new();
            entry
                .read_to_end(&mut v)
                .map_err(|e| format!("cannot read {}: {e}", deb.display()))?;
            *slot = Some(v);
            continue;
        }
        let pax = pax.take();
        let pax_value = |key: &[u8]| {
            pax.as_deref().and_then(|p| {
                tar::PaxExtensions::new(p)
                    .filter_map(Result::ok)
                    .find(|e| e.key_bytes() == key)
                    .map(|e| e.value_bytes().to_vec())
            })
        };
        let strip = |mut v: Vec<u8>| {
            if v.last() == Some(&0) {
                v.pop();
            }
            v
        };
        let h = entry.header();
        let raw = long_name
            .take()
            .map(strip)
            .or_else(|| pax_value(b"path"))
            .unwrap_or_else(|| h.path_bytes().into_owned());
        let link = long_link
            .take()
            .map(strip)
            .or_else(|| pax_value(b"linkpath"))
            .or_else(|| h.link_name_bytes().map(std::borrow::Cow::into_owned));
        let Some(rel) = entry_path(&raw)? else {
            continue;
        };
        let number = |key: &[u8], header: io::Result<u64>| match pax_value(key) {
            Some(v) => std::str::from_utf8(&v)
                .ok()
                .and_then(|v| v.parse::<u64>().ok())
                .ok_or_else(|| {
                    format!("/{rel}: a pax {} that is not a number", key.escape_ascii())
                }),
            None => header.map_err(|e| format!("/{rel}: {e}")),
        };
        // The raw entries' sizes are the headers': a pax size that differs is not followed.
        if number(b"size", Ok(entry.size()))? != entry.size() {
            return Err(format!("/{rel}: a pax size other than the header's"));
        }
        let mode = h.mode().map_err(|e| format!("/{rel}: {e}"))? & 0o7777;
        let uid = number(b"uid", h.uid())?;
        let gid = number(b"gid", h.gid())?;
        let when = h.mtime().unwrap_or(0);
        let (uid, gid) = (
            Uid::from_raw(u32::try_from(uid).map_err(|_| format!("/{rel}: owner {uid}"))?),
            Gid::from_raw(u32::try_from(gid).map_err(|_| format!("/{rel}: group {gid}"))?),
        );
        let kind = h.entry_type();
        let (dir, name) = parent_of(root, &rel)?;
        let fail = |op: &str, e: nix::errno::Errno| format!("cannot {op} /{rel}: {e}");
        match kind {
            tar::EntryType::Directory => match fstatat(&dir, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
                Ok(st)
                    if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFLNK => {}
                Ok(st)
                    if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR =>
                {
                    set_dir(&dir, name, uid, gid, mode).map_err(|e| fail("set", e))?;
                    dirs.push((rel.clone(), when));
                }
                _ => {
                    clear(&dir, name, &rel)?;
                    nix::sys::stat::mkdirat(&dir, name, Mode::from_bits_truncate(0o700))
                        .map_err(|e| fail("make", e))?;
                    set_dir(&dir, name, uid, gid, mode).map_err(|e| fail("set", e))?;
                    dirs.push((rel.clone(), when));
                }
            },
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                clear(&dir, name, &rel)?;
                let fd = nix::fcntl::openat(
                    &dir,
                    name,
                    OFlag::O_CREAT
                        | OFlag::O_EXCL
                        | OFlag::O_WRONLY
                        | OFlag::O_NOFOLLOW
                        | OFlag::O_CLOEXEC,
                    Mode::from_bits_truncate(0o600),
                )
                .map_err(|e| fail("create", e))?;
                let mut f = File::from(fd);
                io::copy(&mut entry, &mut f).map_err(|e| format!("cannot write /{rel}: {e}"))?;
                fchown(f.as_fd(), Some(uid), Some(gid)).map_err(|e| fail("chown", e))?;
                fchmod(f.as_fd(), Mode::from_bits_truncate(mode)).map_err(|e| fail("chmod", e))?;
                nix::sys::stat::futimens(f.as_fd(), &mtime(when), &mtime(when))
                    .map_err(|e| fail("set the time of", e))?;
            }
            tar::EntryType::Symlink => {
                let target = link
                    .clone()
                    .ok_or_else(|| format!("/{rel}: a symlink without a target"))?;
                clear(&dir, name, &rel)?;
                nix::unistd::symlinkat(std::ffi::OsStr::from_bytes(&target), &dir, name)
                    .map_err(|e| fail("make", e))?;
                fchownat(
                    &dir,
                    name,
                    Some(uid),
                    Some(gid),
                    AtFlags::AT_SYMLINK_NOFOLLOW,
                )
                .map_err(|e| fail("chown", e))?;
                utimensat(
                    &dir,
                    name,
                    &mtime(when),
                    &mtime(when),
                    UtimensatFlags::NoFollowSymlink,
                )
                .map_err(|e| fail("set the time of", e))?;
            }
            tar::EntryType::Link => {
                let target = link
                    .clone()
                    .ok_or_else(|| format!("/{rel}: a hard link without a target"))?;
                let target = entry_path(&target)?
                    .ok_or_else(|| format!("/{rel}: a hard link to the root"))?;
                let (tdir, tname) = parent_of(root, &target)?;
                clear(&dir, name, &rel)?;
                nix::unistd::linkat(&tdir, tname, &dir, name, AtFlags::empty())
                    .map_err(|e| fail("link", e))?;
            }
            tar::EntryType::Fifo => {
                clear(&dir, name, &rel)?;
                nix::sys::stat::mknodat(
                    &dir,
                    name,
                    SFlag::S_IFIFO,
                    Mode::from_bits_truncate(mode),
                    0,
                )
                .map_err(|e| fail("make", e))?;
                fchownat(
                    &dir,
                    name,
                    Some(uid),
                    Some(gid),
                    AtFlags::AT_SYMLINK_NOFOLLOW,
                )
                .map_err(|e| fail("chown", e))?;
                nix::sys::stat::fchmodat(
                    &dir,
                    name,
                    Mode::from_bits_truncate(mode),
                    FchmodatFlags::FollowSymlink,
                )
                .map_err(|e| fail("chmod", e))?;
            }
            other => {
                return Err(format!(
                    "/{rel} is a {other:?} entry, which envc does not unpack"
                ));
            }
        }
    }
    if long_name.is_some() || long_link.is_some() || pax.is_some() {
        return Err(format!(
            "cannot read {}: a long name or pax header is the last entry",
            deb.display()
        ));
    }
    // Last, as tar does: putting files in changed them.
    for (rel, when) in dirs.into_iter().rev() {
        let (dir, name) = parent_of(root, &rel)?;
        utimensat(
            &dir,
            name,
            &mtime(when),
            &mtime(when),
            UtimensatFlags::NoFollowSymlink,
        )
        .map_err(|e| format!("cannot set the time of /{rel}: {e}"))?;
    }
    Ok(())
}

fn set_dir(dir: &OwnedFd, name: &str, uid: Uid, gid: Gid, mode: u32) -> nix::Result<()> {
    let fd = nix::fcntl::openat(
        dir,
        name,
        OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    fchown(fd.as_fd(), Some(uid), Some(gid))?;
    fchmod(fd.as_fd(), Mode::from_bits_truncate(mode))
}

/// The uncompressed copies of a set of packages, made by worker threads in a given order while
/// the caller installs those already made.
pub(super) struct Unpacker<'a> {
    debs: &'a DebStore,
    pkgs: &'a [LockedPackage],
    dpkg_deb: PathBuf,
    dir: &'a Path,
    order: Vec<usize>,
    next: AtomicUsize,
    stop: AtomicBool,
    /// dpkg is running: only the first worker goes on, so that dpkg keeps a core of its own.
    busy: AtomicBool,
    done: Mutex<BTreeMap<usize, Result<DataSpan, String>>>,
    ready: Condvar,
}

/// The file that exists while every worker is well ([`Unpacker::new`] makes it; a failing
/// worker removes it, which cannot fail for want of space): a dpkg run waiting for a file stops
/// when it is gone.
pub(super) const FAILED_MARK: &str = ".ok";

impl<'a> Unpacker<'a> {
    /// Unpacks `pkgs` (in the package store) into `dir`, in `order`, once [`Unpacker::work`]
    /// runs.
    pub(super) fn new(
        debs: &'a DebStore,
        pkgs: &'a [LockedPackage],
        dir: &'a Path,
        order: Vec<usize>,
    ) -> Result<Unpacker<'a>, String> {
        let dpkg_deb = crate::tools::find("dpkg-deb").map_err(|e| e.to_string())?;
        std::fs::write(dir.join(FAILED_MARK), b"")
            .map_err(|e| format!("cannot write {}: {e}", dir.join(FAILED_MARK).display()))?;
        Ok(Unpacker {
            debs,
            pkgs,
            dpkg_deb,
            dir,
            order,
            next: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
            busy: AtomicBool::new(false),
            done: Mutex::new(BTreeMap::new()),
            ready: Condvar::new(),
        })
    }

    /// The file of package `i` in the unpacked directory (its repository file name).
    pub(super) fn file_name(&self, i: usize) -> String {
        crate::debs::deb_file_name(&self.pkgs[i])
    }

    /// Worker `worker`: takes the next package in order until none is left or
    /// [`Unpacker::stop`]. Each file is written under a temporary name and renamed when whole, so
    /// that a dpkg run waiting for it (see [`wave_script`]) never reads half of it. Workers other
    /// than the first pause while dpkg runs ([`Unpacker::set_busy`]).
    pub(super) fn work(&self, worker: usize) {
        loop {
            while worker > 0
                && self.busy.load(Ordering::Relaxed)
                && !self.stop.load(Ordering::Relaxed)
            {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            if self.stop.load(Ordering::Relaxed) {
                return;
            }
            let n = self.next.fetch_add(1, Ordering::Relaxed);
            let Some(&i) = self.order.get(n) else { return };
            let p = &self.pkgs[i];
            let name = self.file_name(i);
            let (part, dst) = (self.dir.join(format!(".part.{name}")), self.dir.join(&name));
            // A panic is an error too: the caller waits for every package's result.
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                let span = uncompressed_deb(&self.dpkg_deb, &self.debs.path_of(&p.sha256), &part)?;
                std::fs::rename(&part, &dst)?;
                Ok(span)
            }))
            .unwrap_or_else(|_| Err(io::Error::other("envc panicked")))
            .map_err(|e| format!("cannot unpack {} {} ({}): {e}", p.name, p.version, p.arch));
            let failed = r.is_err();
            if failed {
                let _ = std::fs::remove_file(self.dir.join(FAILED_MARK));
            }
            self.done
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .insert(i, r);
            self.ready.notify_all();
            if failed {
                return;
            }
        }
    }

    /// Whether dpkg is running now.
    pub(super) fn set_busy(&self, busy: bool) {
        self.busy.store(busy, Ordering::Relaxed);
    }

    /// The first failure of a worker, if any.
    pub(super) fn failure(&self) -> Option<String> {
        self.done
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .values()
            .find_map(|r| r.as_ref().err().cloned())
    }

    /// Stops the workers after the package each is on.
    pub(super) fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
        self.ready.notify_all();
    }

    /// Waits until every package of `which` is unpacked; the first failure otherwise.
    pub(super) fn wait(&self, which: &[usize]) -> Result<Vec<DataSpan>, String> {
        let mut done = self
            .done
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        loop {
            if let Some(Err(e)) = done.values().find(|r| r.is_err()) {
                return Err(e.clone());
            }
            if which.iter().all(|i| done.contains_key(i)) {
                return Ok(which
                    .iter()
                    .filter_map(|i| done.get(i).and_then(|r| r.as_ref().ok()).copied())
                    .collect());
            }
            done = self
                .ready
                .wait(done)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
    }
}

/// The shell script that installs one wave (`files`, in order, in `dir` inside the root) as the
/// workers make them: it waits for the first missing file, unpacks every file that is there from
/// it on with one `dpkg --unpack`, and again until none is left; then one `dpkg --configure
/// --pending` configures the wave. Trigger processing waits for that last run (`--no-triggers`
/// before it), so where the unpacking was cut (which depends on timing) changes nothing in the
/// root. A worker's failure (the [`FAILED_MARK`] file gone) stops it. `force` adds
/// `--force-depends` (the essential packages, whose pre-dependencies dpkg does not order).
/// File names are repository names: Debian's characters only, no space or glob character.
pub(super) fn wave_script(dir: &str, files: &[String], force: bool) -> Result<String, String> {
    if let Some(bad) = files.iter().find(|f| {
        f.starts_with(['-', '.'])
            || !f
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"+-.~_%".contains(&b))
    }) {
        return Err(format!(
            "cannot install `{bad}`: not a repository file name"
        ));
    }
    let force = if force { " --force-depends" } else { "" };
    let opts = format!("--force-unsafe-io --force-confdef --force-confold{force}");
    Ok(format!(
        "set -e -f\n\
         d={dir}\n\
         pending='{}'\n\
         while [ -n \"$pending\" ]; do\n\
         \tset -- $pending\n\
         \tuntil [ -e \"$d/$1\" ]; do\n\
         \t\tif [ ! -e \"$d/{FAILED_MARK}\" ]; then exit 70; fi\n\
         \t\tsleep 0.05\n\
         \tdone\n\
         \tchunk=\n\
         \twhile [ $# -gt 0 ] && [ -e \"$d/$1\" ]; do chunk=\"$chunk $d/$1\"; shift; done\n\
         \tpending=\"$*\"\n\
         \tdpkg --unpack --no-triggers {opts} -- $chunk\n\
         done\n\
         dpkg --configure --pending {opts}\n",
        files.join(" ")
    ))
}

/// Single-quotes `s` for sh.
pub(super) fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rel(name: &str, essential: bool, depends: &[&[&str]], pre: &[&[&str]]) -> Relations {
        let l = |v: &[&[&str]]| {
            v.iter()
                .map(|a| a.iter().map(|s| (*s).to_owned()).collect())
                .collect()
        };
        Relations {
            name: name.into(),
            essential,
            depends: l(depends),
            pre_depends: l(pre),
            provides: vec![],
        }
    }

    #[test]
    fn relations_are_read_from_control_fields() {
        let r = relations(
            "Package: e2fsprogs\nEssential: yes\nPre-Depends: libc6 (>= 2.34), libext2fs2 (= 1.47.0-2+b2)\nDepends: awk | mawk:any,\n debconf [amd64]\nProvides: e2fs\n",
        );
        assert_eq!(r.name, "e2fsprogs");
        assert!(r.essential);
        assert_eq!(r.pre_depends, vec![vec!["libc6"], vec!["libext2fs2"]]);
        assert_eq!(r.depends, vec![vec!["awk", "mawk"], vec!["debconf"]]);
        assert_eq!(r.provides, vec!["e2fs"]);
    }

    #[test]
    fn essential_closure_first_then_waves_by_pre_depends() {
        let pkgs = vec![
            rel("libc6", false, &[], &[]),
            rel("dash", true, &[&["libc6"]], &[]),
            rel("libcom-err2", false, &[&["libc6"]], &[]),
            rel("e2fsprogs", false, &[&["tool"]], &[&["libcom-err2"]]),
            rel("tool", false, &[], &[]),
            rel("gcc", false, &[&["cpp"]], &[]),
            rel("cpp", false, &[], &[]),
        ];
        let o = order(&pkgs, true);
        assert_eq!(o.essential, vec![1, 0]);
        // e2fsprogs needs libcom-err2 configured first; tool only before e2fsprogs is configured.
        assert_eq!(o.waves, vec![vec![6, 5, 2, 4], vec![3]]);
        // Without a base, nothing is extracted.
        let o = order(&pkgs, false);
        assert!(o.essential.is_empty());
        assert_eq!(o.waves.concat().len(), pkgs.len());
    }

    #[test]
    fn a_dependency_of_a_pre_dependency_comes_before_too() {
        let pkgs = vec![
            rel("a", false, &[], &[&["b"]]),
            rel("b", false, &[&["c"]], &[]),
            rel("c", false, &[], &[]),
        ];
        let o = order(&pkgs, false);
        assert_eq!(o.waves, vec![vec![1, 2], vec![0]]);
    }

    #[test]
    fn a_pre_dependency_cycle_ends() {
        let pkgs = vec![
            rel("a", false, &[], &[&["b"]]),
            rel("b", false, &[], &[&["a"]]),
        ];
        let o = order(&pkgs, false);
        assert_eq!(o.waves.concat().len(), 2);
    }

    /// A hostile lock's long chain of pre-dependencies, and packages that depend on every
    /// other, are ordered in linear time (iterating to a fixed point took hours).
    #[test]
    fn a_long_pre_dependency_chain_is_ordered_quickly() {
        let n = 3000;
        let name = |i: usize| format!("p{i}");
        let mut pkgs: Vec<Relations> = (0..n)
            .map(|i| Relations {
                name: name(i),
                pre_depends: if i + 1 < n {
                    vec![vec![name(i + 1)]]
                } else {
                    vec![]
                },
                ..Relations::default()
            })
            .collect();
        let o = order(&pkgs, false);
        assert_eq!(o.waves.len(), n);
        assert_eq!(o.waves[0], vec![n - 1]);
        assert_eq!(o.waves[n - 1], vec![0]);
        let all: Vec<Vec<String>> = (0..n).map(|i| vec![name(i)]).collect();
        for p in pkgs.iter_mut().take(300) {
            p.depends = all.clone();
        }
        let o = order(&pkgs, true);
        assert_eq!(o.waves.concat().len(), n);
    }

    #[test]
    fn a_wave_script_unpacks_what_is_there_and_configures_once() {
        let files = vec!["a_1_all.deb".to_owned(), "b_1%3a2~x+y_amd64.deb".to_owned()];
        let s = wave_script("/tmp/envc-debs", &files, true).unwrap();
        assert!(
            s.contains("pending='a_1_all.deb b_1%3a2~x+y_amd64.deb'"),
            "{s}"
        );
        assert!(s.contains("dpkg --unpack --no-triggers --force-unsafe-io --force-confdef --force-confold --force-depends -- $chunk"), "{s}");
        assert_eq!(s.matches("dpkg --configure --pending").count(), 1);
        assert!(s.contains(FAILED_MARK));
        assert!(
            !wave_script("/d", &files, false)
                .unwrap()
                .contains("force-depends")
        );
        for bad in ["a b.deb", "x'y.deb", "-rf.deb", ".part.x.deb", "*.deb"] {
            assert!(
                wave_script("/d", &[bad.to_owned()], false).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn entry_paths_stay_in_the_root() {
        assert_eq!(
            entry_path(b"./usr/bin/x").unwrap().as_deref(),
            Some("usr/bin/x")
        );
        assert_eq!(entry_path(b"./").unwrap(), None);
        assert!(entry_path(b"./usr/../../etc/passwd").is_err());
        assert_eq!(sh_quote("a'b"), r"'a'\''b'");
    }
}

/// Hostile data members: whatever they hold, nothing outside the root changes.
#[cfg(test)]
mod hostile {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use tar::{EntryType, Header};

    /// A scratch directory: `root` (the root being built) and `outside` beside it, holding
    /// `keep` (`keep`, mode 0644); removed on drop.
    struct Scratch(PathBuf);

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    impl Scratch {
        fn new(tag: &str) -> Scratch {
            static N: AtomicUsize = AtomicUsize::new(0);
            let p = std::env::temp_dir().join(format!(
                "envc-install-{tag}-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir_all(p.join("root")).unwrap();
            std::fs::create_dir_all(p.join("outside")).unwrap();
            std::fs::write(p.join("outside/keep"), "keep").unwrap();
            std::fs::set_permissions(
                p.join("outside/keep"),
                std::fs::Permissions::from_mode(0o644),
            )
            .unwrap();
            std::fs::set_permissions(p.join("outside"), std::fs::Permissions::from_mode(0o755))
                .unwrap();
            Scratch(p)
        }

        fn root(&self) -> PathBuf {
            self.0.join("root")
        }

        /// Extracts the tar stream `bytes` into the root.
        fn extract(&self, bytes: &[u8]) -> Result<(), String> {
            let tar = self.0.join("data.tar");
            std::fs::write(&tar, bytes).unwrap();
            let root: OwnedFd = File::open(self.root()).unwrap().into();
            extract(
                &root,
                &tar,
                DataSpan {
                    offset: 0,
                    len: bytes.len() as u64,
                },
            )
        }

        /// Nothing outside the root changed: `outside` holds `keep` only, as it was, and the
        /// scratch directory holds nothing new.
        fn assert_outside_untouched(&self) {
            let names = |d: &Path| {
                let mut v: Vec<String> = std::fs::read_dir(d)
                    .unwrap()
                    .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .collect();
                v.sort();
                v
            };
            assert_eq!(names(&self.0.join("outside")), vec!["keep"]);
            assert_eq!(names(&self.0), vec!["data.tar", "outside", "root"]);
            let keep = self.0.join("outside/keep");
            assert_eq!(std::fs::read_to_string(&keep).unwrap(), "keep");
            let md = std::fs::symlink_metadata(&keep).unwrap();
            assert_eq!(md.permissions().mode() & 0o7777, 0o644);
            assert_eq!(std::os::unix::fs::MetadataExt::nlink(&md), 1);
            let md = std::fs::symlink_metadata(self.0.join("outside")).unwrap();
            assert_eq!(md.permissions().mode() & 0o7777, 0o755);
        }
    }

    fn me() -> (u64, u64) {
        (
            u64::from(nix::unistd::geteuid().as_raw()),
            u64::from(nix::unistd::getegid().as_raw()),
        )
    }

    /// Appends one entry, its path and link name as raw bytes (GNU long name and long link
    /// entries first when they do not fit).
    fn raw(b: &mut tar::Builder<Vec<u8>>, kind: EntryType, path: &[u8], link: &[u8], data: &[u8]) {
        let long = |b: &mut tar::Builder<Vec<u8>>, kind: EntryType, what: &[u8]| {
            let mut h = Header::new_gnu();
            h.as_mut_bytes()[..13].copy_from_slice(b"././@LongLink");
            h.set_entry_type(kind);
            h.set_size(what.len() as u64 + 1);
            h.set_mode(0o644);
            h.set_cksum();
            let mut d = what.to_vec();
            d.push(0);
            b.append(&h, &d[..]).unwrap();
        };
        if path.len() > 100 {
            long(b, EntryType::GNULongName, path);
        }
        if link.len() > 100 {
            long(b, EntryType::GNULongLink, link);
        }
        let mut h = Header::new_gnu();
        let n = path.len().min(100);
        h.as_mut_bytes()[..n].copy_from_slice(&path[..n]);
        let n = link.len().min(100);
        h.as_mut_bytes()[157..157 + n].copy_from_slice(&link[..n]);
        h.set_entry_type(kind);
        h.set_size(data.len() as u64);
        h.set_mode(if kind == EntryType::Directory {
            0o777
        } else {
            0o4777
        });
        let (uid, gid) = me();
        h.set_uid(uid);
        h.set_gid(gid);
        h.set_mtime(1);
        h.set_cksum();
        b.append(&h, data).unwrap();
    }

    /// Entries appended after the symlink `a`, given its target.
    type Case = dyn Fn(&mut tar::Builder<Vec<u8>>, &[u8]);

    fn stream(f: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        f(&mut b);
        b.into_inner().unwrap()
    }

    /// Every way at once to write, link, chmod or chown through a symlink pointing out of the
    /// root; each case in its own archive (the first failure ends an archive).
    #[test]
    fn symlinks_out_of_the_root_are_resolved_inside_it() {
        let s = Scratch::new("symlinks");
        let out_abs = s.0.join("outside");
        let out_abs = out_abs.as_os_str().as_bytes();
        let targets: [&[u8]; 5] = [b"../outside", b"../../outside", out_abs, b"/", b".."];
        let cases: Vec<Box<Case>> = vec![
            // A file written through the link.
            Box::new(|b, _| raw(b, EntryType::Regular, b"a/pwn", b"", b"pwned")),
            Box::new(|b, _| raw(b, EntryType::Regular, b"a/keep", b"", b"pwned")),
            // The link named as a directory (it is kept), then a file through it.
            Box::new(|b, _| {
                raw(b, EntryType::Directory, b"a/", b"", b"");
                raw(b, EntryType::Regular, b"a/keep", b"", b"pwned");
            }),
            Box::new(|b, _| raw(b, EntryType::Directory, b"a/d/", b"", b"")),
            Box::new(|b, _| raw(b, EntryType::Symlink, b"a/s", b"/etc/passwd", b"")),
            Box::new(|b, _| raw(b, EntryType::Symlink, b"a/keep", b"x", b"")),
            Box::new(|b, _| raw(b, EntryType::Fifo, b"a/fifo", b"", b"")),
            Box::new(|b, _| raw(b, EntryType::Fifo, b"a/keep", b"", b"")),
            Box::new(|b, _| raw(b, EntryType::Link, b"a/l", b"etc/x", b"")),
            // Hard links to what the link reaches, and to the link itself.
            Box::new(|b, _| raw(b, EntryType::Link, b"l", b"a/keep", b"")),
            Box::new(|b, _| {
                raw(b, EntryType::Link, b"l", b"a", b"");
                raw(b, EntryType::Regular, b"l/keep", b"", b"pwned");
            }),
            Box::new(|b, t| {
                // A symlink named at the very file's path, then written to by a hard link.
                raw(b, EntryType::Symlink, b"k", &[t, b"/keep"].concat(), b"");
                raw(b, EntryType::Regular, b"f", b"", b"pwned");
                raw(b, EntryType::Link, b"k", b"f", b"");
                raw(b, EntryType::Link, b"k2", b"k", b"");
                raw(b, EntryType::Regular, b"k2", b"", b"pwned");
            }),
            // Long names through the link.
            Box::new(|b, _| {
                let long = [b"a/".as_slice(), &[b'x'; 150]].concat();
                raw(b, EntryType::Regular, &long, b"", b"pwned");
            }),
            Box::new(|b, _| {
                let long = [b"a/".as_slice(), &[b'y'; 150], b"/keep"].concat();
                raw(
                    b,
                    EntryType::Directory,
                    &[b"a/".as_slice(), &[b'y'; 150]].concat(),
                    b"",
                    b"",
                );
                raw(b, EntryType::Regular, &long, b"", b"pwned");
            }),
        ];
        for t in targets {
            for (n, case) in cases.iter().enumerate() {
                let bytes = stream(|b| {
                    raw(b, EntryType::Symlink, b"a", t, b"");
                    case(b, t);
                });
                let r = s.extract(&bytes);
                eprintln!("{} case {n}: {r:?}", String::from_utf8_lossy(t));
                s.assert_outside_untouched();
                // The next case starts from an empty root.
                std::fs::remove_dir_all(s.root()).unwrap();
                std::fs::create_dir(s.root()).unwrap();
            }
        }
    }

    /// Paths with `..`, absolute paths, empty and non-UTF-8 names, a hard link out of the
    /// root or to a directory, devices and sparse files: refused or put inside the root.
    #[test]
    fn hostile_paths_and_kinds_stay_inside_or_are_refused() {
        let s = Scratch::new("paths");
        let abs = s.0.join("outside/keep");
        let abs = abs.as_os_str().as_bytes();
        let refused: Vec<Vec<u8>> = vec![
            stream(|b| raw(b, EntryType::Regular, b"../outside/keep", b"", b"pwned")),
            stream(|b| {
                raw(
                    b,
                    EntryType::Regular,
                    b"x/../../outside/keep",
                    b"",
                    b"pwned",
                )
            }),
            stream(|b| raw(b, EntryType::Regular, b"\xff\xfe", b"", b"x")),
            stream(|b| raw(b, EntryType::Link, b"l", b"../outside/keep", b"")),
            stream(|b| raw(b, EntryType::Link, b"l", abs, b"")),
            stream(|b| {
                raw(b, EntryType::Directory, b"d/", b"", b"");
                raw(b, EntryType::Link, b"l", b"d", b"");
            }),
            stream(|b| raw(b, EntryType::Link, b"l", b"", b"")),
            stream(|b| raw(b, EntryType::Link, b"l", b"./", b"")),
            stream(|b| raw(b, EntryType::Char, b"null", b"", b"")),
            stream(|b| raw(b, EntryType::Block, b"sda", b"", b"")),
            stream(|b| raw(b, EntryType::GNUSparse, b"sparse", b"", b"")),
            stream(|b| raw(b, EntryType::XGlobalHeader, b"g", b"", b"path=/x\n")),
            stream(|b| {
                raw(b, EntryType::Directory, b"d/", b"", b"");
                raw(b, EntryType::Regular, b"d", b"", b"x");
            }),
        ];
        for (n, bytes) in refused.iter().enumerate() {
            let r = s.extract(bytes);
            eprintln!("refused case {n}: {r:?}");
            assert!(r.is_err(), "case {n}");
            s.assert_outside_untouched();
            std::fs::remove_dir_all(s.root()).unwrap();
            std::fs::create_dir(s.root()).unwrap();
        }
        // An absolute path, empty names and `.` are inside the root.
        let bytes = stream(|b| {
            raw(b, EntryType::Regular, abs, b"", b"inside");
            raw(b, EntryType::Regular, b"", b"", b"");
            raw(b, EntryType::Directory, b"./", b"", b"");
            raw(b, EntryType::Directory, b"/", b"", b"");
            raw(b, EntryType::Regular, b"//x//./y", b"", b"y");
        });
        s.extract(&bytes).unwrap();
        s.assert_outside_untouched();
        let inside = s.root().join(
            abs.strip_prefix(b"/")
                .map(std::ffi::OsStr::from_bytes)
                .unwrap(),
        );
        assert_eq!(std::fs::read_to_string(inside).unwrap(), "inside");
        assert_eq!(std::fs::read_to_string(s.root().join("x/y")).unwrap(), "y");
        // The root's own mode was not set by `./` or `/`.
        let md = std::fs::symlink_metadata(s.root()).unwrap();
        assert_ne!(md.permissions().mode() & 0o7777, 0o777);
    }

    /// A stream cut short, in a header or in a file's data, is an error or a short file, never
    /// a panic or a hang.
    #[test]
    fn a_cut_stream_ends() {
        let s = Scratch::new("cut");
        let full = stream(|b| {
            raw(b, EntryType::Regular, b"f", b"", &[b'x'; 5000]);
            raw(b, EntryType::Regular, &[b'z'; 300], b"", b"z");
        });
        for cut in [
            1,
            100,
            511,
            512,
            513,
            3000,
            5632,
            5700,
            6200,
            6656,
            full.len() - 1,
        ] {
            let r = s.extract(&full[..cut]);
            eprintln!("cut at {cut}: {r:?}");
            s.assert_outside_untouched();
            std::fs::remove_dir_all(s.root()).unwrap();
            std::fs::create_dir(s.root()).unwrap();
        }
    }

    /// Owners and groups above 32 bits are refused (`u32::MAX` would mean "unchanged").
    #[test]
    fn owners_beyond_32_bits_are_refused() {
        let s = Scratch::new("owners");
        for (uid, gid) in [(1u64 << 32, 0u64), (0, 1 << 40)] {
            let bytes = stream(|b| {
                let mut h = Header::new_gnu();
                h.set_path("f").unwrap();
                h.set_size(0);
                h.set_mode(0o644);
                h.set_uid(uid);
                h.set_gid(gid);
                h.set_cksum();
                b.append(&h, &[][..]).unwrap();
            });
            assert!(s.extract(&bytes).is_err());
            s.assert_outside_untouched();
        }
    }

    /// An ar archive of `members` (name, content).
    fn ar(members: &[(&str, &[u8])]) -> Vec<u8> {
        let mut v = b"!<arch>\n".to_vec();
        for (name, data) in members {
            v.extend(
                format!(
                    "{name:<16}{:<12}{:<6}{:<6}{:<8}{:<10}`\n",
                    0,
                    0,
                    0,
                    100644,
                    data.len()
                )
                .as_bytes(),
            );
            v.extend(*data);
            if data.len() % 2 == 1 {
                v.push(b'\n');
            }
        }
        v
    }

    /// Runs `uncompressed_deb` on `deb` with `script` standing in for dpkg-deb.
    fn rewrite(s: &Scratch, deb: &[u8], script: &str) -> io::Result<DataSpan> {
        let tool = s.0.join("dpkg-deb");
        std::fs::write(&tool, format!("#!/bin/sh\n{script}\n")).unwrap();
        std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755)).unwrap();
        let src = s.0.join("in.deb");
        std::fs::write(&src, deb).unwrap();
        let dst = s.0.join("out.deb");
        let _ = std::fs::remove_file(&dst);
        uncompressed_deb(&tool, &src, &dst)
    }

    /// Damaged ar archives are errors, never a panic or a hang.
    #[test]
    fn damaged_ar_archives_are_refused() {
        let s = Scratch::new("ar");
        let good = ar(&[
            ("debian-binary", b"2.0\n"),
            ("control.tar", b"c"),
            ("data.tar.xz", b"d"),
        ]);
        let cat_tar = "printf 'tar!'";
        assert!(rewrite(&s, &good, cat_tar).is_ok());
        for cut in [0, 7, 8, 9, 67, 68, 69, 72, 73, 90, good.len() - 1] {
            let r = rewrite(&s, &good[..cut], cat_tar);
            eprintln!("cut at {cut}: {r:?}");
        }
        for size in ["-1", "99999999999", "9999999999", "0x10", "", "+1"] {
            let mut bad = good.clone();
            bad[8 + 48..8 + 58].copy_from_slice(format!("{size:<10}").as_bytes()[..10].as_ref());
            let r = rewrite(&s, &bad, cat_tar);
            eprintln!("size {size}: {r:?}");
        }
        // Two data members, none, a failing dpkg-deb.
        let two = ar(&[("data.tar", b"a"), ("data.tar.xz", b"d")]);
        assert!(rewrite(&s, &two, cat_tar).is_ok());
        let none = ar(&[("debian-binary", b"2.0\n")]);
        assert!(rewrite(&s, &none, cat_tar).is_err());
        assert!(rewrite(&s, &good, "exit 1").is_err());
    }

    /// A data member too big for an ar header (dpkg-deb's output of a decompression bomb; here
    /// a sparse file) is an error, not a panic.
    #[test]
    fn a_data_member_too_big_for_ar_is_an_error() {
        let s = Scratch::new("big");
        let good = ar(&[
            ("debian-binary", b"2.0\n"),
            ("control.tar", b"c"),
            ("data.tar.xz", b"d"),
        ]);
        let r = rewrite(
            &s,
            &good,
            "exec dd of=/proc/self/fd/1 bs=1 seek=10000001000 count=1 conv=notrunc status=none </dev/zero",
        );
        assert!(r.is_err(), "{r:?}");
    }

    /// A long name, long link or pax header is read only up to a bound; long names and pax
    /// paths and owners are followed.
    #[test]
    fn long_names_and_pax_headers_are_bounded() {
        let s = Scratch::new("meta");
        let huge = vec![b'x'; 1 << 20];
        for kind in [
            EntryType::GNULongName,
            EntryType::GNULongLink,
            EntryType::XHeader,
        ] {
            let bytes = stream(|b| {
                let mut h = Header::new_gnu();
                h.set_path("././@LongLink").unwrap();
                h.set_entry_type(kind);
                h.set_size(huge.len() as u64);
                h.set_cksum();
                b.append(&h, &huge[..]).unwrap();
                raw(b, EntryType::Regular, b"f", b"", b"f");
            });
            let r = s.extract(&bytes);
            assert!(r.as_ref().is_err_and(|e| e.contains("too big")), "{r:?}");
            s.assert_outside_untouched();
        }
        // A pax path, link and owner; a long name and link.
        let long = [b"d/".as_slice(), &[b'l'; 200]].concat();
        let (uid, gid) = me();
        let bytes = stream(|b| {
            b.append_pax_extensions([
                ("path", b"p/q".as_slice()),
                ("uid", uid.to_string().as_bytes()),
                ("gid", gid.to_string().as_bytes()),
            ])
            .unwrap();
            raw(b, EntryType::Regular, b"ignored", b"", b"pax");
            b.append_pax_extensions([("linkpath", b"p/q".as_slice())])
                .unwrap();
            raw(b, EntryType::Link, b"h", b"ignored", b"");
            raw(b, EntryType::Regular, &long, b"", b"long");
            raw(b, EntryType::Symlink, b"s", &long, b"");
        });
        s.extract(&bytes).unwrap();
        s.assert_outside_untouched();
        let root = s.root();
        assert_eq!(std::fs::read_to_string(root.join("p/q")).unwrap(), "pax");
        assert_eq!(std::fs::read_to_string(root.join("h")).unwrap(), "pax");
        assert_eq!(
            std::fs::read_to_string(root.join(std::ffi::OsStr::from_bytes(&long))).unwrap(),
            "long"
        );
        assert_eq!(
            std::fs::read_link(root.join("s"))
                .unwrap()
                .as_os_str()
                .as_bytes(),
            &long[..]
        );
        assert!(!root.join("ignored").exists());
        // A pax size the raw entries would not follow is refused.
        let bytes = stream(|b| {
            b.append_pax_extensions([("size", b"0".as_slice())])
                .unwrap();
            raw(b, EntryType::Regular, b"f", b"", b"f");
        });
        assert!(s.extract(&bytes).is_err());
    }
}
